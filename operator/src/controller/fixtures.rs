//! A mocked API server for reconcile tests, in the manner of controller-rs, as strict as
//! the real one where the operator could go wrong.
//!
//! [`World`] holds the objects of a cluster as an API server would return them.
//! [`World::reconcile`] runs real reconciles against a `tower-test` mock service that
//! answers from the world, changes it as the API server would, and records every request
//! (method, path, query, content type, JSON body), so tests assert what reconcile asked of
//! the cluster and what the cluster then holds. The server:
//!
//! - authorises every request with the ClusterRole of `deploy/base/rbac.yaml`, including the
//!   `OwnerReferencesPermissionEnforcement` check on `blockOwnerDeletion` and the `create`
//!   a server-side apply needs to create an object;
//! - rejects invalid object names (Service names are DNS-1035 labels), label values and
//!   volume names, Event notes over 1 KiB, changes to a Deployment's selector, to the
//!   fields of a StatefulSet other than replicas, template, update strategy and claim
//!   retention policy, and to a PersistentVolumeClaim's spec (a claim never shrinks), and
//!   a StatefulSet whose `serviceName` names no Service;
//! - applies a merge patch of status with merge-patch semantics (a field the patch omits
//!   stays) and a server-side apply of status as the sole manager of status (a field the
//!   apply omits goes);
//! - adds defaults to what is applied, and reports a StatefulSet's old status (a lagging
//!   `observedGeneration`) until [`World::settle`] plays the StatefulSet controller and
//!   the kubelet (ready pods whose relays answer with the config their ConfigMap holds).
//!
//! Relay pods answer through [`FakePodReports`], from [`World::pod_answers`].
//!
//! It owns no assertions.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crds::manifest::load_paths;
use crds::{IpAllowRange, MailRoute, Organization, SmtpRelaySetting};
use http::{Request, Response, StatusCode};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::metrics::Metrics;
use super::names::{is_dns1035_label, is_dns1123_label, is_dns1123_subdomain, is_label_value};
use super::pod_reports::{PodReports, Running};
use super::probe::TlsProber;
use super::{Context, Error, FIELD_MANAGER, Settings, Stores, reconcile};
use relay::config::{DeliveryConfig, RouteConfig};

/// The fixed time of every fixture reconcile.
pub const NOW: i64 = 1_700_000_000;

/// One request the reconcile made.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
    /// The status code the mock answered with.
    pub code: u16,
}

impl Recorded {
    /// `METHOD path` as tests list them.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    /// True for a server-side apply with the operator's one field manager, forced.
    pub fn is_forced_apply(&self) -> bool {
        self.method == "PATCH"
            && self.content_type == "application/apply-patch+yaml"
            && self
                .query
                .contains(&format!("fieldManager={FIELD_MANAGER}"))
            && self.query.contains("force=true")
    }

    /// True for a request that changes something in the cluster.
    pub fn is_write(&self) -> bool {
        matches!(self.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE")
    }
}

/// One rule of a ClusterRole.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(default)]
    pub api_groups: Vec<String>,
    #[serde(default)]
    pub resources: Vec<String>,
    #[serde(default)]
    pub verbs: Vec<String>,
    #[serde(default)]
    pub resource_names: Vec<String>,
}

/// The rules of the operator's ClusterRole as `deploy/base/rbac.yaml` ships them.
pub fn shipped_rules() -> Vec<Rule> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/base/rbac.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    for doc in yaml_serde::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        if v["kind"] == "ClusterRole" {
            return serde_json::from_value(v["rules"].clone()).unwrap();
        }
    }
    panic!("no ClusterRole in {}", path.display())
}

/// A request the mock refuses on purpose (a quota, an admission webhook).
#[derive(Clone, Debug)]
pub struct Refusal {
    pub method: &'static str,
    pub path_suffix: String,
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

/// The objects of a cluster in the fake API server.
#[derive(Clone, Debug)]
pub struct World {
    pub organizations: Vec<Organization>,
    pub settings: Vec<SmtpRelaySetting>,
    pub ranges: Vec<IpAllowRange>,
    pub routes: Vec<MailRoute>,
    pub secrets: Vec<Secret>,
    /// Everything else the API server holds (the operator's children), by object path.
    pub children: BTreeMap<String, Value>,
    /// Events as the API server holds them, in the order they were created (a series
    /// PATCH updates the Event it continues).
    pub events: Vec<Value>,
    /// `status` the StatefulSet controller writes once it observes a generation; its
    /// `readyReplicas` is how many ready pods [`World::settle`] runs.
    pub stateful_set_status: Value,
    /// What each relay pod (by IP) answers when asked for its config; a pod not listed
    /// does not answer.
    pub pod_answers: BTreeMap<String, Result<Running, String>>,
    /// Messages each drain pod (by IP) says it still has.
    pub drain_answers: BTreeMap<String, u64>,
    /// The operator's ClusterRole; `None` authorises everything.
    pub rules: Option<Vec<Rule>>,
    pub refusals: Vec<Refusal>,
    /// Namespaces being deleted (NamespaceLifecycle refuses every create in them).
    pub terminating: BTreeSet<String>,
    /// Claims the StatefulSet controller made so far (each gets a UID of its own).
    pub claims_made: u64,
    /// The operator's Event recorder, which lives as long as the operator: a repeat of
    /// an Event within six minutes is a series, also across reconciles.
    pub recorder: super::events::Recorder,
    /// Settings of the reconciles' context.
    pub operator: Settings,
}

/// Relay pods that answer from a fixed table (by pod IP); drain pods answer with the
/// number of messages of [`World::drain_answers`].
pub struct FakePodReports(
    pub BTreeMap<String, Result<Running, String>>,
    pub BTreeMap<String, u64>,
);

impl PodReports for FakePodReports {
    fn drain_remaining(
        &self,
        ip: std::net::IpAddr,
        _port: u16,
        _token: Option<String>,
    ) -> futures::future::BoxFuture<'_, Result<u64, String>> {
        let answer = self
            .1
            .get(&ip.to_string())
            .copied()
            .ok_or_else(|| format!("{ip}: connection refused"));
        Box::pin(async move { answer })
    }

    fn running(
        &self,
        ip: std::net::IpAddr,
        _port: u16,
    ) -> futures::future::BoxFuture<'_, Result<Running, String>> {
        let answer = self
            .0
            .get(&ip.to_string())
            .cloned()
            .unwrap_or_else(|| Err(format!("{ip}: connection refused")));
        Box::pin(async move { answer })
    }
}

/// A prober that answers from a fixed table and remembers which routes it probed.
#[derive(Default)]
pub struct FakeProber {
    pub answers: Vec<(String, Result<(), String>)>,
    pub probed: Mutex<Vec<String>>,
    /// Contents of the route's CA file at probe time, when it has one.
    pub ca_seen: Mutex<Vec<String>>,
}

impl TlsProber for Arc<FakeProber> {
    async fn probe(
        &self,
        route: &RouteConfig,
        _delivery: &DeliveryConfig,
    ) -> Vec<(String, Result<(), String>)> {
        if let Ok(mut p) = self.probed.lock() {
            p.push(route.name.clone());
        }
        if let Some(file) = &route.tls.extra_ca_file {
            let text = std::fs::read_to_string(file).unwrap_or_else(|e| format!("{file}: {e}"));
            if let Ok(mut seen) = self.ca_seen.lock() {
                seen.push(text);
            }
        }
        self.answers.clone()
    }
}

fn stamp<K: kube::Resource>(mut object: K) -> K {
    let name = object.meta().name.clone().unwrap_or_default();
    let meta = object.meta_mut();
    meta.uid.get_or_insert_with(|| format!("uid-{name}"));
    meta.generation.get_or_insert(1);
    meta.resource_version.get_or_insert_with(|| "1".into());
    object
}

/// The path of an object of kind `K`.
pub fn path_of<K: Resource<DynamicType = ()>>(namespace: &str, name: &str) -> String {
    format!("{}/{name}", K::url_path(&(), Some(namespace)))
}

fn typed_path<K: Resource<DynamicType = ()>>(object: &K) -> String {
    path_of::<K>(
        object.meta().namespace.as_deref().unwrap_or("default"),
        object.meta().name.as_deref().unwrap_or_default(),
    )
}

fn store_of<K>(items: impl IntoIterator<Item = K>) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    // As a watch fills it: an initial list, then ready.
    let (reader, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for item in items {
        writer.apply_watcher_event(&watcher::Event::InitApply(item));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    reader
}

/// The parts of an API path: `(group, namespace, resource, name, subresource)`.
type PathParts = (String, String, String, Option<String>, Option<String>);

fn parse(path: &str) -> Option<PathParts> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => (String::new(), rest),
        ["apis", group, _version, rest @ ..] => (group.to_string(), rest),
        _ => return None,
    };
    match rest {
        ["namespaces", ns, resource, tail @ ..] => Some((
            group,
            ns.to_string(),
            resource.to_string(),
            tail.first().map(|s| s.to_string()),
            tail.get(1).map(|s| s.to_string()),
        )),
        _ => None,
    }
}

fn status_body(code: u16, reason: &str, message: String) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code, "message": message})
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Bytes of a quantity such as `10Gi` (enough of the grammar for storage requests).
fn quantity(q: &str) -> Option<f64> {
    let split = q.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(q.len());
    let (n, unit) = q.split_at(split);
    let factor = match unit {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        _ => return None,
    };
    n.parse::<f64>().ok().map(|n| n * factor)
}

/// Writes every quantity of `object` as the API server stores it (resource requests and
/// limits, claim sizes, emptyDir size limits): apimachinery parses and re-serializes each
/// `resource.Quantity`, so `1024Mi` comes back as `1Gi` and `1000m` as `1`.
pub(super) fn canonical_quantities(object: &mut Value) {
    match object {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match (key.as_str(), child) {
                    ("requests" | "limits" | "capacity" | "overhead", Value::Object(q)) => {
                        for v in q.values_mut() {
                            if let Some(text) = v.as_str() {
                                *v = json!(crate::quantity::canonical_or_same(text));
                            }
                        }
                    }
                    ("sizeLimit", v) => {
                        if let Some(text) = v.as_str() {
                            *v = json!(crate::quantity::canonical_or_same(text));
                        }
                    }
                    (_, child) => canonical_quantities(child),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(canonical_quantities),
        _ => {}
    }
}

/// What the API server's validation says about `body` (a child of kind `kind`), if wrong.
fn invalid(kind: &str, name: &str, body: &Value, old: Option<&Value>) -> Option<String> {
    let mut errors = Vec::new();
    let name_ok = if kind == "Service" {
        is_dns1035_label(name)
    } else {
        is_dns1123_subdomain(name)
    };
    if !name_ok {
        errors.push(format!(
            "metadata.name: Invalid value: \"{name}\": must be a {}",
            if kind == "Service" {
                "DNS-1035 label"
            } else {
                "DNS-1123 subdomain"
            }
        ));
    }
    // The API server takes a longer StatefulSet, but none of its pods could start: their
    // `controller-revision-hash` label would exceed 63 characters.
    if kind == "StatefulSet" && name.len() > super::names::MAX_STATEFUL_SET {
        errors.push(format!("metadata.name: Invalid value: \"{name}\": a StatefulSet name longer than {} characters gives its pods an invalid controller-revision-hash label", super::names::MAX_STATEFUL_SET));
    }
    let mut label_maps = vec![
        ("metadata.labels", &body["metadata"]["labels"]),
        ("spec.selector", &body["spec"]["selector"]),
        (
            "spec.selector.matchLabels",
            &body["spec"]["selector"]["matchLabels"],
        ),
        (
            "spec.podSelector.matchLabels",
            &body["spec"]["podSelector"]["matchLabels"],
        ),
        (
            "spec.template.metadata.labels",
            &body["spec"]["template"]["metadata"]["labels"],
        ),
    ];
    if kind != "Service" {
        label_maps.retain(|(f, _)| *f != "spec.selector");
    }
    for (field, map) in label_maps {
        for (k, v) in map.as_object().into_iter().flatten() {
            let v = v.as_str().unwrap_or_default();
            if !is_label_value(v) {
                errors.push(format!("{field}: Invalid value: \"{v}\": a valid label value must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character, at most 63 characters (label {k})"));
            }
        }
    }
    if kind == "Deployment" || kind == "StatefulSet" {
        let pod = &body["spec"]["template"]["spec"];
        let mut volumes: Vec<&str> = pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["name"].as_str())
            .collect();
        let claims: Vec<&str> = body["spec"]["volumeClaimTemplates"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["metadata"]["name"].as_str())
            .collect();
        for c in &claims {
            if volumes.contains(c) {
                errors.push(format!("spec.template.spec.volumes.name: Duplicate value: \"{c}\" (also a volumeClaimTemplate)"));
            }
        }
        volumes.extend(claims);
        for v in &volumes {
            if !is_dns1123_label(v) {
                errors.push(format!("spec.template.spec.volumes.name: Invalid value: \"{v}\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"));
            }
        }
        for c in pod["containers"].as_array().into_iter().flatten() {
            for m in c["volumeMounts"].as_array().into_iter().flatten() {
                let n = m["name"].as_str().unwrap_or_default();
                if !volumes.contains(&n) {
                    errors.push(format!(
                        "spec.template.spec.containers.volumeMounts.name: Not found: \"{n}\""
                    ));
                }
            }
            for p in c["ports"].as_array().into_iter().flatten() {
                let n = p["name"].as_str().unwrap_or_default();
                if n.len() > 15 {
                    errors.push(format!("spec.template.spec.containers.ports.name: Invalid value: \"{n}\": must be no more than 15 characters"));
                }
            }
        }
        if let Some(old) = old
            && old["spec"]["selector"] != body["spec"]["selector"]
        {
            errors.push("spec.selector: Invalid value: field is immutable".into());
        }
    }
    if kind == "StatefulSet"
        && let Some(old) = old
    {
        let fixed = |v: &Value| {
            let mut s = v["spec"].clone();
            if let Some(o) = s.as_object_mut() {
                for free in [
                    "replicas",
                    "ordinals",
                    "template",
                    "updateStrategy",
                    "persistentVolumeClaimRetentionPolicy",
                    "minReadySeconds",
                ] {
                    o.remove(free);
                }
            }
            s
        };
        if fixed(old) != fixed(&defaulted(kind, body.clone())) {
            errors.push("spec: Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden".into());
        }
    }
    if kind == "PersistentVolumeClaim"
        && let Some(old) = old
    {
        let strip = |v: &Value| {
            let mut s = v["spec"].clone();
            if let Some(o) = s.as_object_mut() {
                o.remove("resources");
                o.remove("volumeName");
                o.remove("volumeMode");
            }
            s
        };
        if strip(old) != strip(body) {
            errors.push("spec: Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims".into());
        }
        let storage = |v: &Value| {
            v["spec"]["resources"]["requests"]["storage"]
                .as_str()
                .and_then(quantity)
        };
        if let (Some(before), Some(after)) = (storage(old), storage(body))
            && after < before
        {
            errors.push(
                "spec.resources.requests.storage: Forbidden: field can not be less than previous value"
                    .into(),
            );
        }
    }
    if kind == "Job"
        && let Some(old) = old
        && old["spec"]["template"] != body["spec"]["template"]
    {
        errors.push("spec.template: Invalid value: field is immutable".into());
    }
    (!errors.is_empty()).then(|| format!("{kind} \"{name}\" is invalid: [{}]", errors.join(", ")))
}

/// Defaults the API server adds to what is applied (so that comparisons with stored
/// objects meet fields the operator never set).
fn defaulted(kind: &str, mut body: Value) -> Value {
    match kind {
        "Deployment" => {
            body["spec"]["progressDeadlineSeconds"] = json!(600);
            body["spec"]["revisionHistoryLimit"] = json!(10);
            if let Some(cs) = body["spec"]["template"]["spec"]["containers"].as_array_mut() {
                for c in cs {
                    c["terminationMessagePath"] = json!("/dev/termination-log");
                }
            }
        }
        "Service" => {
            if body["spec"]["clusterIP"].is_null() {
                body["spec"]["clusterIP"] = json!("10.96.0.10");
            }
            body["spec"]["sessionAffinity"] = json!("None");
        }
        "PersistentVolumeClaim" => {
            body["spec"]["volumeMode"] = json!("Filesystem");
        }
        "StatefulSet" => {
            body["spec"]["revisionHistoryLimit"] = json!(10);
            for c in body["spec"]["volumeClaimTemplates"]
                .as_array_mut()
                .into_iter()
                .flatten()
            {
                c["spec"]["volumeMode"] = json!("Filesystem");
            }
            if let Some(cs) = body["spec"]["template"]["spec"]["containers"].as_array_mut() {
                for c in cs {
                    c["terminationMessagePath"] = json!("/dev/termination-log");
                }
            }
        }
        _ => {}
    }
    body
}

pub(super) struct Server {
    pub(super) objects: BTreeMap<String, Value>,
    pub(super) events: Vec<Value>,
    /// Namespaces being deleted: creating anything in them is forbidden.
    pub(super) terminating: BTreeSet<String>,
    pub(super) rules: Option<Vec<Rule>>,
    pub(super) refusals: Vec<Refusal>,
    pub(super) log: Vec<Recorded>,
}

impl Server {
    pub(super) fn allowed(&self, group: &str, resource: &str, verb: &str) -> bool {
        let Some(rules) = &self.rules else {
            return true;
        };
        rules.iter().any(|r| {
            r.resource_names.is_empty()
                && r.api_groups.iter().any(|g| g == group || g == "*")
                && r.resources.iter().any(|x| x == resource || x == "*")
                && r.verbs.iter().any(|v| v == verb || v == "*")
        })
    }

    fn forbidden(group: &str, resource: &str, verb: &str, ns: &str) -> (u16, Value) {
        (
            403,
            status_body(
                403,
                "Forbidden",
                format!(
                    "{resource} is forbidden: User \"system:serviceaccount:smtprelay-system:smtprelay-operator\" cannot {verb} resource \"{resource}\" in API group \"{group}\" in the namespace \"{ns}\""
                ),
            ),
        )
    }

    pub(super) fn answer(&mut self, r: &Recorded) -> (u16, Value) {
        let Some((group, ns, resource, name, sub)) = parse(&r.path) else {
            return (404, status_body(404, "NotFound", r.path.clone()));
        };
        let watch = r.query.contains("watch=true");
        let object_path = match &sub {
            Some(_) => r.path.rsplit_once('/').map_or(r.path.as_str(), |(p, _)| p),
            None => r.path.as_str(),
        };
        let exists = self.objects.contains_key(object_path);
        let verb = match (r.method.as_str(), &name) {
            ("GET", None) if watch => "watch",
            ("GET", None) => "list",
            ("GET", Some(_)) => "get",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", _) => "delete",
            _ => "unknown",
        };
        let full_resource = match &sub {
            Some(s) => format!("{resource}/{s}"),
            None => resource.clone(),
        };
        if !self.allowed(&group, &full_resource, verb) {
            return Self::forbidden(&group, &full_resource, verb, &ns);
        }
        // Creating through an apply needs `create` as well.
        if verb == "patch" && !exists && sub.is_none() && !self.allowed(&group, &resource, "create")
        {
            return Self::forbidden(&group, &resource, "create", &ns);
        }
        // OwnerReferencesPermissionEnforcement: blockOwnerDeletion needs `update` on the
        // owner's finalizers.
        let blocks = r.body["metadata"]["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|o| o["blockOwnerDeletion"] == true);
        if blocks && !exists && !self.allowed("smtprelay.dev", "organizations/finalizers", "update")
        {
            return (
                403,
                status_body(
                    403,
                    "Forbidden",
                    format!(
                        "{resource} \"{}\" is forbidden: cannot set blockOwnerDeletion if an ownerReference refers to a resource you can't set finalizers on: , <nil>",
                        name.clone().unwrap_or_default()
                    ),
                ),
            );
        }
        // NamespaceLifecycle admission: nothing new in a namespace being deleted.
        let creates = r.method == "POST" || (verb == "patch" && !exists && sub.is_none());
        if creates && self.terminating.contains(&ns) {
            return (
                403,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "Forbidden", "code": 403,
                    "message": format!("{resource} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated", name.clone().unwrap_or_default()),
                    "details": {"name": name.clone().unwrap_or_default(), "kind": resource,
                        "causes": [{"reason": "NamespaceTerminating",
                            "message": format!("namespace {ns} is being terminated"),
                            "field": "metadata.namespace"}]}}),
            );
        }
        if let Some(f) = self
            .refusals
            .iter()
            .find(|f| f.method == r.method && r.path.ends_with(&f.path_suffix))
        {
            return (f.code, status_body(f.code, f.reason, f.message.clone()));
        }

        let not_found = || {
            (
                404,
                status_body(
                    404,
                    "NotFound",
                    format!(
                        "{resource} \"{}\" not found",
                        name.clone().unwrap_or_default()
                    ),
                ),
            )
        };
        match (r.method.as_str(), &name, &sub) {
            ("GET", None, None) => {
                let prefix = format!("{}/", r.path);
                let items: Vec<Value> = self
                    .objects
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .filter(|(k, _)| !k[prefix.len()..].contains('/'))
                    .map(|(_, v)| v.clone())
                    .collect();
                (
                    200,
                    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}),
                )
            }
            ("GET", Some(_), None) => match self.objects.get(&r.path) {
                Some(v) => (200, v.clone()),
                None => not_found(),
            },
            ("POST", None, None) if resource == "events" => {
                let note = r.body["note"].as_str().unwrap_or_default();
                let event_name = r.body["metadata"]["name"].as_str().unwrap_or_default();
                let mut errors = Vec::new();
                if note.len() > 1024 {
                    errors.push("note: Too long: may not be more than 1024 bytes".to_string());
                }
                // events.k8s.io/v1 validation of a new Event.
                for field in [
                    "eventTime",
                    "reportingController",
                    "reportingInstance",
                    "action",
                    "reason",
                ] {
                    if r.body[field].as_str().is_none_or(str::is_empty) {
                        errors.push(format!("{field}: Required value"));
                    }
                }
                if !errors.is_empty() {
                    return (
                        422,
                        status_body(
                            422,
                            "Invalid",
                            format!(
                                "Event.events.k8s.io \"{event_name}\" is invalid: {}",
                                errors.join(", ")
                            ),
                        ),
                    );
                }
                if self
                    .events
                    .iter()
                    .any(|e| e["metadata"]["name"] == r.body["metadata"]["name"])
                {
                    return (
                        409,
                        status_body(
                            409,
                            "AlreadyExists",
                            format!("events.events.k8s.io \"{event_name}\" already exists"),
                        ),
                    );
                }
                let mut stored = r.body.clone();
                stored["metadata"]["namespace"] = json!(ns.clone());
                self.events.push(stored.clone());
                (201, stored)
            }
            // A create: the object at the collection's path and its name.
            ("POST", None, None) => {
                let Some(n) = r.body["metadata"]["name"].as_str().map(str::to_string) else {
                    return (
                        422,
                        status_body(422, "Invalid", "metadata.name: Required value".into()),
                    );
                };
                let path = format!("{}/{n}", r.path);
                if self.objects.contains_key(&path) {
                    return (
                        409,
                        status_body(
                            409,
                            "AlreadyExists",
                            format!("{resource} \"{n}\" already exists"),
                        ),
                    );
                }
                let mut new = r.body.clone();
                new["metadata"]["namespace"] = json!(ns.clone());
                new["metadata"]["uid"] = json!(format!("uid-{n}"));
                new["metadata"]["generation"] = json!(1);
                new["metadata"]["resourceVersion"] = json!("1");
                // The API server folds a Secret's stringData into data.
                if let Some(strings) = new
                    .as_object_mut()
                    .and_then(|o| o.remove("stringData"))
                    .and_then(|v| v.as_object().cloned())
                {
                    use base64::Engine;
                    for (k, v) in strings {
                        let text = v.as_str().unwrap_or_default();
                        new["data"][k] =
                            json!(base64::engine::general_purpose::STANDARD.encode(text));
                    }
                }
                canonical_quantities(&mut new);
                self.objects.insert(path, new.clone());
                (201, new)
            }
            // A repeated Event: the recorder patches the series (count, last seen) of the
            // Event it posted first, as client-go's recorder does.
            ("PATCH", Some(n), None) if resource == "events" => {
                if r.content_type != "application/merge-patch+json"
                    && r.content_type != "application/strategic-merge-patch+json"
                {
                    return (
                        415,
                        status_body(415, "UnsupportedMediaType", r.content_type.clone()),
                    );
                }
                let Some(event) = self
                    .events
                    .iter_mut()
                    .find(|e| e["metadata"]["name"].as_str() == Some(n.as_str()))
                else {
                    return not_found();
                };
                let count = r.body["series"]["count"].as_i64().unwrap_or(0);
                if count < 2 || r.body["series"]["lastObservedTime"].is_null() {
                    return (
                        422,
                        status_body(
                            422,
                            "Invalid",
                            format!(
                                "Event.events.k8s.io \"{n}\" is invalid: series.count: Invalid value: {count}: should be at least 2"
                            ),
                        ),
                    );
                }
                merge_patch(event, &r.body);
                (200, event.clone())
            }
            ("PATCH", Some(_), Some(s)) if s == "scale" => {
                if r.content_type != "application/merge-patch+json" {
                    return (
                        415,
                        status_body(415, "UnsupportedMediaType", r.content_type.clone()),
                    );
                }
                let target = r.path.trim_end_matches("/scale").to_string();
                let Some(object) = self.objects.get_mut(&target) else {
                    return not_found();
                };
                let Some(replicas) = r.body["spec"]["replicas"].as_i64() else {
                    return (
                        422,
                        status_body(422, "Invalid", "spec.replicas: Required value".into()),
                    );
                };
                if object["spec"]["replicas"] != json!(replicas) {
                    object["spec"]["replicas"] = json!(replicas);
                    let g = object["metadata"]["generation"].as_i64().unwrap_or(1);
                    object["metadata"]["generation"] = json!(g + 1);
                }
                bump(object);
                (
                    200,
                    json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
                        "metadata": {"name": name.clone().unwrap_or_default(), "namespace": ns.clone()},
                        "spec": {"replicas": replicas}}),
                )
            }
            // Users own an Organization; the operator applies its finalizer and nothing
            // else (an apply of any other field would fight `kubectl apply`).
            ("PATCH", Some(n), None)
                if resource == "organizations"
                    && r.content_type == "application/apply-patch+yaml" =>
            {
                let extra: Vec<String> = r.body["metadata"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| k.clone())
                    .filter(|k| !matches!(k.as_str(), "name" | "namespace" | "finalizers"))
                    .chain(
                        r.body
                            .as_object()
                            .into_iter()
                            .flatten()
                            .map(|(k, _)| k.clone())
                            .filter(|k| !matches!(k.as_str(), "apiVersion" | "kind" | "metadata")),
                    )
                    .collect();
                if !extra.is_empty() {
                    panic!(
                        "the operator applied {extra:?} to Organization {n}: it may apply its finalizer only"
                    );
                }
                let Some(object) = self.objects.get_mut(&r.path) else {
                    return not_found();
                };
                object["metadata"]["finalizers"] = r.body["metadata"]["finalizers"].clone();
                bump(object);
                let answer = object.clone();
                let done = answer["metadata"]["finalizers"]
                    .as_array()
                    .is_none_or(|f| f.is_empty());
                if done && !answer["metadata"]["deletionTimestamp"].is_null() {
                    self.objects.remove(&r.path);
                }
                (200, answer)
            }
            // A relay pod belongs to its StatefulSet; the operator applies one annotation
            // to it and nothing else (any other field would fight the StatefulSet
            // controller, and most of a pod's spec cannot change).
            ("PATCH", Some(n), None)
                if resource == "pods" && r.content_type == "application/apply-patch+yaml" =>
            {
                let meta_keys: Vec<&String> = r.body["metadata"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| k)
                    .filter(|k| !matches!(k.as_str(), "name" | "namespace" | "annotations"))
                    .collect();
                let top_keys: Vec<&String> = r
                    .body
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| k)
                    .filter(|k| !matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
                    .collect();
                if !meta_keys.is_empty() || !top_keys.is_empty() {
                    panic!(
                        "the operator applied {meta_keys:?} {top_keys:?} to pod {n}: it may apply an annotation only"
                    );
                }
                let Some(object) = self.objects.get_mut(&r.path) else {
                    return not_found();
                };
                for (k, v) in r.body["metadata"]["annotations"]
                    .as_object()
                    .into_iter()
                    .flatten()
                {
                    object["metadata"]["annotations"][k] = v.clone();
                }
                bump(object);
                (200, object.clone())
            }
            ("PATCH", Some(_), Some(s)) if s == "status" => {
                let target = r.path.trim_end_matches("/status").to_string();
                let Some(object) = self.objects.get_mut(&target) else {
                    return not_found();
                };
                match r.content_type.as_str() {
                    "application/merge-patch+json" => {
                        merge_patch(&mut object["status"], &r.body["status"]);
                    }
                    "application/apply-patch+yaml" => {
                        if r.body["apiVersion"].is_null() || r.body["kind"].is_null() {
                            return (
                                400,
                                status_body(
                                    400,
                                    "BadRequest",
                                    "apiVersion and kind must be set in an apply patch".into(),
                                ),
                            );
                        }
                        // The operator is the only manager of status: what it omits goes.
                        object["status"] = r.body["status"].clone();
                    }
                    other => {
                        return (
                            415,
                            status_body(
                                415,
                                "UnsupportedMediaType",
                                format!("unsupported patch type {other}"),
                            ),
                        );
                    }
                }
                bump(object);
                (200, object.clone())
            }
            ("PATCH", Some(n), None) if r.content_type == "application/apply-patch+yaml" => {
                let kind = r.body["kind"].as_str().unwrap_or_default().to_string();
                if kind.is_empty() || r.body["apiVersion"].is_null() {
                    return (
                        400,
                        status_body(
                            400,
                            "BadRequest",
                            "apiVersion and kind must be set in an apply patch".into(),
                        ),
                    );
                }
                let old = self.objects.get(&r.path).cloned();
                if let Some(message) = invalid(&kind, n, &r.body, old.as_ref()) {
                    return (422, status_body(422, "Invalid", message));
                }
                // Not the API server's rule, but the StatefulSet controller's: without its
                // governing Service the pods get no stable names. Apply the Service first.
                if kind == "StatefulSet" {
                    let governing = format!(
                        "/api/v1/namespaces/{ns}/services/{}",
                        r.body["spec"]["serviceName"].as_str().unwrap_or_default()
                    );
                    if !self.objects.contains_key(&governing) {
                        return (
                            422,
                            status_body(
                                422,
                                "Invalid",
                                format!(
                                    "StatefulSet \"{n}\": the governing Service {governing} does not exist"
                                ),
                            ),
                        );
                    }
                }
                let mut new = defaulted(&kind, r.body.clone());
                // Quantities are stored as the API server writes them: `1024Mi` is `1Gi`.
                canonical_quantities(&mut new);
                new["metadata"]["namespace"] = json!(ns.clone());
                match &old {
                    Some(old) => {
                        for keep in ["uid", "creationTimestamp", "generation", "resourceVersion"] {
                            if !old["metadata"][keep].is_null() {
                                new["metadata"][keep] = old["metadata"][keep].clone();
                            }
                        }
                        new["status"] = old["status"].clone();
                        if old["spec"] != new["spec"] {
                            let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
                            new["metadata"]["generation"] = json!(g + 1);
                        }
                    }
                    None => {
                        new["metadata"]["uid"] = json!(format!("uid-{n}"));
                        new["metadata"]["generation"] = json!(1);
                        new["metadata"]["resourceVersion"] = json!("1");
                        if kind == "Deployment" || kind == "StatefulSet" {
                            // Nothing observed yet.
                            new["status"] = json!({});
                        }
                    }
                }
                if new["status"].is_null()
                    && let Some(o) = new.as_object_mut()
                {
                    o.remove("status");
                }
                bump(&mut new);
                self.objects.insert(r.path.clone(), new.clone());
                (200, new)
            }
            ("DELETE", Some(_), None) => match self.objects.get_mut(&r.path) {
                // Finalizers hold the object, marked for deletion, until they are gone.
                Some(v)
                    if v["metadata"]["finalizers"]
                        .as_array()
                        .is_some_and(|f| !f.is_empty()) =>
                {
                    if v["metadata"]["deletionTimestamp"].is_null() {
                        v["metadata"]["deletionTimestamp"] = json!("2023-11-14T22:13:20Z");
                        bump(v);
                    }
                    (200, v.clone())
                }
                Some(_) => match self.objects.remove(&r.path) {
                    Some(v) => (200, v),
                    None => not_found(),
                },
                None => not_found(),
            },
            ("PATCH", _, _) => (
                415,
                status_body(
                    415,
                    "UnsupportedMediaType",
                    format!("the operator must apply, not {}", r.content_type),
                ),
            ),
            _ => not_found(),
        }
    }
}

fn bump(object: &mut Value) {
    let rv: u64 = object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    object["metadata"]["resourceVersion"] = json!((rv + 1).to_string());
}

/// The objects of kind `K` among `objects` (keyed by path), in path order.
fn typed_from<K: DeserializeOwned + Resource<DynamicType = ()>>(
    objects: &BTreeMap<String, Value>,
) -> Vec<K> {
    // `/api/v1/namespaces/{ns}/secrets/{name}`: the group and version before the
    // namespace, the plural after it.
    let collection = K::url_path(&(), Some("ns"));
    let (prefix, plural) = collection.split_once("/namespaces/ns/").unwrap_or_default();
    objects
        .iter()
        .filter(|(path, _)| {
            path.starts_with(&format!("{prefix}/namespaces/"))
                && path.rsplit('/').nth(1) == Some(plural)
        })
        .map(|(path, v)| {
            serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{path}: {e}"))
        })
        .collect()
}

impl World {
    /// An empty cluster that authorises requests with the shipped ClusterRole.
    pub fn empty() -> Self {
        Self {
            organizations: Vec::new(),
            settings: Vec::new(),
            ranges: Vec::new(),
            routes: Vec::new(),
            secrets: Vec::new(),
            children: BTreeMap::new(),
            events: Vec::new(),
            stateful_set_status: json!({"replicas": 1, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1}),
            pod_answers: BTreeMap::new(),
            drain_answers: BTreeMap::new(),
            rules: Some(shipped_rules()),
            refusals: Vec::new(),
            terminating: BTreeSet::new(),
            claims_made: 0,
            recorder: super::events::Recorder::new(FIELD_MANAGER, Some("test".into())),
            operator: Settings::default(),
        }
    }

    /// The objects of an example folder, as if applied to a cluster.
    pub fn example(name: &str) -> Self {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("examples")
            .join(name);
        let set = load_paths(&[dir]).unwrap();
        Self {
            organizations: set
                .organizations
                .into_iter()
                .map(|l| stamp(l.object))
                .collect(),
            settings: set.settings.into_iter().map(|l| stamp(l.object)).collect(),
            ranges: set.ranges.into_iter().map(|l| stamp(l.object)).collect(),
            routes: set.routes.into_iter().map(|l| stamp(l.object)).collect(),
            secrets: set
                .secrets
                .into_iter()
                .map(|l| {
                    // The API server folds stringData into data.
                    let mut s = stamp(l.object);
                    for (k, v) in s.string_data.take().into_iter().flatten() {
                        s.data
                            .get_or_insert_with(Default::default)
                            .insert(k, k8s_openapi::ByteString(v.into_bytes()));
                    }
                    s
                })
                .collect(),
            ..Self::empty()
        }
    }

    /// The world's first Organization.
    pub fn org(&self) -> Organization {
        self.organizations[0].clone()
    }

    /// A child the operator applied, as the API server holds it.
    pub fn child<K: Resource<DynamicType = ()>>(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<&Value> {
        self.children.get(&path_of::<K>(namespace, name))
    }

    /// Plays the StatefulSet controller and the kubelet: every StatefulSet's status now
    /// describes its current generation, with the counts of
    /// [`World::stateful_set_status`]; it runs `readyReplicas` pods
    /// (`<name>-0`, `<name>-1`, … at `10.0.0.1`, `10.0.0.2`, … for the first StatefulSet,
    /// `10.0.1.1`, … for the next), each owned by its StatefulSet, whose relays have the
    /// config of the Organization's ConfigMap in force.
    ///
    /// A pod runs the template it was made from (label `controller-revision-hash`). When
    /// the template changes, pods are replaced one at a time from the highest ordinal, as
    /// a RollingUpdate does, and the rollout stops at a new pod that does not become ready.
    /// The kubelet starts a pod only once it can mount every volume
    /// ([`World::cannot_mount`]): a Secret that is missing, or lacks a key an item names,
    /// keeps a pod that does not mark it optional in `ContainerCreating` forever. A pod
    /// that already runs keeps running whatever happens to its Secrets.
    pub fn settle(&mut self) {
        let mut sets = Vec::new();
        for (path, d) in self.children.iter_mut() {
            if path.contains("/statefulsets/") {
                let mut status = self.stateful_set_status.clone();
                status["observedGeneration"] = d["metadata"]["generation"].clone();
                d["status"] = status;
                sets.push((path.clone(), d.clone()));
            }
        }
        // The Deployment controller: the pods of a Deployment that is gone or scaled to
        // zero stop (their ReplicaSet is `<deployment>-<hash>`).
        let deployments: BTreeMap<String, i64> = self
            .children
            .iter()
            .filter(|(p, _)| p.contains("/deployments/"))
            .map(|(p, d)| (p.clone(), d["spec"]["replicas"].as_i64().unwrap_or(1)))
            .collect();
        self.children.retain(|p, v| {
            let owner = &v["metadata"]["ownerReferences"][0];
            if !p.contains("/pods/") || owner["kind"] != "ReplicaSet" {
                return true;
            }
            let ns = v["metadata"]["namespace"].as_str().unwrap_or_default();
            let rs = owner["name"].as_str().unwrap_or_default();
            let deployment = rs.rsplit_once('-').map_or(rs, |(d, _)| d);
            deployments
                .get(&format!(
                    "/apis/apps/v1/namespaces/{ns}/deployments/{deployment}"
                ))
                .is_some_and(|replicas| *replicas > 0)
        });
        // Pods of StatefulSets as they ran before (drain pods are the Job controller's,
        // other pods nobody's here).
        let is_relay_pod = |p: &String, v: &Value| {
            p.contains("/pods/") && v["metadata"]["ownerReferences"][0]["kind"] == "StatefulSet"
        };
        let before: BTreeMap<String, Value> = self
            .children
            .iter()
            .filter(|(p, v)| is_relay_pod(p, v))
            .map(|(p, v)| (p.clone(), v.clone()))
            .collect();
        self.children.retain(|p, v| !is_relay_pod(p, v));
        self.pod_answers.clear();
        for (k, (set_path, set)) in sets.into_iter().enumerate() {
            let ns = set["metadata"]["namespace"].as_str().unwrap_or_default();
            let name = set["metadata"]["name"].as_str().unwrap_or_default();
            let uid = set["metadata"]["uid"].clone();
            // One Organization per namespace: its ConfigMap is the one with a config, and
            // its relays load the Secrets as they are now.
            let prefix = format!("/api/v1/namespaces/{ns}/configmaps/");
            let config = self
                .children
                .iter()
                .filter(|(p, _)| p.starts_with(&prefix))
                .find_map(|(_, c)| c["data"]["config.json"].as_str())
                .and_then(|text| relay::config::RelayConfig::from_json(text).ok());
            let running = config.map(|config| {
                let in_ns = |o: Option<String>| o.as_deref() == Some(ns);
                let secrets: Vec<Secret> = self
                    .secrets
                    .iter()
                    .filter(|s| in_ns(s.metadata.namespace.clone()))
                    .cloned()
                    .collect();
                let names = secrets
                    .iter()
                    .filter_map(|s| s.metadata.name.clone())
                    .collect();
                let mounted = self
                    .organizations
                    .iter()
                    .find(|o| in_ns(o.metadata.namespace.clone()))
                    .map(|o| super::children::mounted_secrets(o, &self.routes, &names))
                    .unwrap_or_default();
                Running {
                    content_hash: Some(super::children::content_hash_in_pods(
                        &config, &mounted, &secrets,
                    )),
                    hash: config.hash,
                    ..Default::default()
                }
            });
            let wanted = set["spec"]["replicas"].as_i64().unwrap_or(1);
            let ready = self.stateful_set_status["readyReplicas"]
                .as_i64()
                .unwrap_or(0)
                .min(wanted);
            // Each pod's claim, from the claim templates, made once and retained.
            for i in 0..wanted {
                for template in set["spec"]["volumeClaimTemplates"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    let claim = format!(
                        "{}-{name}-{i}",
                        template["metadata"]["name"].as_str().unwrap_or_default()
                    );
                    let path = format!("/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}");
                    if !self.children.contains_key(&path) {
                        let mut made = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                            "metadata": {"name": claim, "namespace": ns,
                                "uid": format!("uid-{claim}-{}", self.claims_made),
                                "labels": template["metadata"]["labels"].clone()},
                            "spec": template["spec"].clone()});
                        canonical_quantities(&mut made);
                        self.children.insert(path, made);
                        self.claims_made += 1;
                    }
                }
            }
            let template = &set["spec"]["template"];
            let revision = format!(
                "{name}-{}",
                &hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                    template.to_string().as_bytes()
                ))[..10]
            );
            let (mut halted, mut blocked, mut updated) = (false, 0, 0);
            // A RollingUpdate replaces the highest ordinal first.
            for i in (0..ready).rev() {
                let pod = format!("{name}-{i}");
                let path = format!("/api/v1/namespaces/{ns}/pods/{pod}");
                let old = before
                    .get(&path)
                    .filter(|p| p["metadata"]["ownerReferences"][0]["uid"] == uid);
                let old_revision = old
                    .map(|p| p["metadata"]["labels"]["controller-revision-hash"].clone())
                    .unwrap_or(Value::Null);
                let running_before = old.is_some_and(|p| p["status"]["phase"] == "Running");
                // The previous pod stays while the rollout is stopped; else this one is
                // (re)made from the current template.
                let mut object = match old {
                    Some(p) if old_revision == json!(revision) || halted => p.clone(),
                    _ => {
                        let mut labels = template["metadata"]["labels"].clone();
                        labels["controller-revision-hash"] = json!(revision);
                        json!({
                            "apiVersion": "v1", "kind": "Pod",
                            "metadata": {"name": pod, "namespace": ns, "labels": labels,
                                "uid": format!("uid-{pod}-{revision}"),
                                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet",
                                    "name": name, "uid": uid, "controller": true,
                                    "blockOwnerDeletion": true}]},
                            "spec": template["spec"].clone(),
                        })
                    }
                };
                let fresh =
                    object["metadata"]["labels"]["controller-revision-hash"] == json!(revision);
                if fresh {
                    updated += 1;
                }
                let started = running_before && object.get("status").is_some();
                let mount = if started {
                    None
                } else {
                    self.cannot_mount(ns, &object["spec"])
                };
                // One /24 per StatefulSet, in path order.
                let ip = format!("10.{}.{}.{}", k / 256, k % 256, i + 1);
                match mount {
                    None => {
                        object["status"] = json!({"podIP": ip, "phase": "Running",
                            "conditions": [{"type": "Ready", "status": "True"}],
                            "containerStatuses": [{"name": "relay", "ready": true,
                                "state": {"running": {}}}]});
                        if let Some(running) = &running {
                            self.pod_answers.insert(ip, Ok(running.clone()));
                        }
                    }
                    Some(why) => {
                        blocked += 1;
                        if fresh {
                            halted = true;
                        }
                        object["status"] = json!({"podIP": ip, "phase": "Pending",
                            "conditions": [{"type": "Ready", "status": "False",
                                "reason": "ContainersNotReady"}],
                            "containerStatuses": [{"name": "relay", "ready": false,
                                "state": {"waiting": {"reason": "ContainerCreating",
                                    "message": format!("MountVolume.SetUp failed: {why}")}}}]});
                    }
                }
                self.children.insert(path, object);
            }
            if blocked > 0 || halted {
                let minus = |v: &Value| json!((v.as_i64().unwrap_or(0) - blocked).max(0));
                if let Some(d) = self.children.get_mut(&set_path) {
                    d["status"]["readyReplicas"] = minus(&d["status"]["readyReplicas"]);
                    d["status"]["availableReplicas"] = minus(&d["status"]["availableReplicas"]);
                    d["status"]["updatedReplicas"] = json!(updated);
                }
            }
            if let Some(d) = self.children.get_mut(&set_path) {
                d["status"]["updateRevision"] = json!(revision);
            }
        }
    }

    /// Why the kubelet cannot mount the volumes of `pod_spec` in `namespace` (and so never
    /// starts the pod), if it cannot: a Secret or ConfigMap that does not exist, or an item
    /// naming a key it lacks, unless the volume is `optional`.
    pub fn cannot_mount(&self, namespace: &str, pod_spec: &Value) -> Option<String> {
        for volume in pod_spec["volumes"].as_array().into_iter().flatten() {
            let v = volume["name"].as_str().unwrap_or_default();
            if let Some(source) = volume.get("secret") {
                let optional = source["optional"] == true;
                let name = source["secretName"].as_str().unwrap_or_default();
                let secret = self.secrets.iter().find(|s| {
                    s.metadata.namespace.as_deref() == Some(namespace)
                        && s.metadata.name.as_deref() == Some(name)
                });
                let Some(secret) = secret else {
                    if optional {
                        continue;
                    }
                    return Some(format!("volume \"{v}\": secret \"{name}\" not found"));
                };
                for item in source["items"].as_array().into_iter().flatten() {
                    let key = item["key"].as_str().unwrap_or_default();
                    if crate::secrets::secret_value(secret, key).is_none() && !optional {
                        return Some(format!(
                            "volume \"{v}\": secret \"{name}\" references non-existent secret key: {key}"
                        ));
                    }
                }
            }
            if let Some(source) = volume.get("configMap") {
                let name = source["name"].as_str().unwrap_or_default();
                let path = format!("/api/v1/namespaces/{namespace}/configmaps/{name}");
                if !self.children.contains_key(&path) && source["optional"] != true {
                    return Some(format!("volume \"{v}\": configmap \"{name}\" not found"));
                }
            }
        }
        None
    }

    /// Plays the Job controller and the kubelet for drain Jobs: each Job not finished
    /// runs one pod (`<job>-run` at `10.9.0.N`) that says `remaining` messages are left.
    pub fn run_drains(&mut self, remaining: u64) {
        let jobs: Vec<(String, Value)> = self
            .children
            .iter()
            .filter(|(p, _)| p.contains("/jobs/"))
            .map(|(p, v)| (p.clone(), v.clone()))
            .collect();
        for (n, (path, job)) in jobs.into_iter().enumerate() {
            if job["status"]["succeeded"].as_i64().unwrap_or(0) > 0 {
                continue;
            }
            let ns = job["metadata"]["namespace"].as_str().unwrap_or_default();
            let name = job["metadata"]["name"].as_str().unwrap_or_default();
            let ip = format!("10.9.0.{}", n + 1);
            let mut labels = job["spec"]["template"]["metadata"]["labels"].clone();
            labels["job-name"] = json!(name);
            self.children.insert(
                format!("/api/v1/namespaces/{ns}/pods/{name}-run"),
                json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": format!("{name}-run"), "namespace": ns, "labels": labels,
                        "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name,
                            "uid": job["metadata"]["uid"].clone(), "controller": true}]},
                    "spec": job["spec"]["template"]["spec"].clone(),
                    "status": {"podIP": ip, "phase": "Running"}}),
            );
            self.drain_answers.insert(ip, remaining);
            if let Some(j) = self.children.get_mut(&path) {
                j["status"] = json!({"active": 1});
            }
        }
    }

    /// Every drain Job ends: `succeeded` (the spool is empty), or failed for good.
    pub fn finish_drains(&mut self, succeeded: bool) {
        self.children.retain(|p, v| {
            !(p.contains("/pods/")
                && v["metadata"]["labels"]["app.kubernetes.io/name"] == super::identity::DRAIN_APP)
        });
        self.drain_answers.clear();
        for (path, job) in self.children.iter_mut() {
            if path.contains("/jobs/") {
                job["status"] = if succeeded {
                    json!({"succeeded": 1})
                } else {
                    json!({"failed": 7, "conditions": [{"type": "Failed", "status": "True",
                        "reason": "BackoffLimitExceeded",
                        "message": "Job has reached the specified backoff limit"}]})
                };
            }
        }
    }

    fn objects(&self) -> BTreeMap<String, Value> {
        let mut objects = self.children.clone();
        fn put<K: Resource<DynamicType = ()> + serde::Serialize>(
            objects: &mut BTreeMap<String, Value>,
            items: &[K],
        ) {
            for i in items {
                objects.insert(typed_path(i), serde_json::to_value(i).unwrap());
            }
        }
        put(&mut objects, &self.organizations);
        put(&mut objects, &self.settings);
        put(&mut objects, &self.ranges);
        put(&mut objects, &self.routes);
        put(&mut objects, &self.secrets);
        objects
    }

    fn absorb(&mut self, mut objects: BTreeMap<String, Value>) {
        self.organizations = typed_from(&objects);
        self.settings = typed_from(&objects);
        self.ranges = typed_from(&objects);
        self.routes = typed_from(&objects);
        self.secrets = typed_from(&objects);
        objects.retain(|k, _| {
            ![
                "/organizations/",
                "/smtprelaysettings/",
                "/ipallowranges/",
                "/mailroutes/",
                "/secrets/",
            ]
            .iter()
            .any(|m| k.contains(m))
        });
        self.children = objects;
    }

    /// The API server holding what the world holds.
    pub(super) fn server(&self) -> Server {
        Server {
            objects: self.objects(),
            // Events stay between reconciles, as in a cluster (a repeated one is a series).
            events: self.events.clone(),
            terminating: self.terminating.clone(),
            rules: self.rules.clone(),
            refusals: self.refusals.clone(),
            log: Vec::new(),
        }
    }

    /// The reflector stores as the controller's watches would hold the world.
    fn stores(&self) -> Stores {
        fn kids<K: DeserializeOwned + Resource<DynamicType = ()> + Clone + 'static>(
            w: &World,
        ) -> Store<K> {
            store_of(typed_from::<K>(&w.children))
        }
        Stores {
            organizations: store_of(self.organizations.clone()),
            settings: store_of(self.settings.clone()),
            ranges: store_of(self.ranges.clone()),
            routes: store_of(self.routes.clone()),
            config_maps: kids::<ConfigMap>(self),
            deployments: kids::<Deployment>(self),
            stateful_sets: kids::<StatefulSet>(self),
            services: kids::<Service>(self),
            pdbs: kids::<PodDisruptionBudget>(self),
            network_policies: kids::<NetworkPolicy>(self),
            pods: kids::<Pod>(self),
            claims: kids::<PersistentVolumeClaim>(self),
            jobs: kids::<Job>(self),
        }
    }

    /// Runs one reconcile of the world's first Organization; the world then holds what the
    /// API server holds afterwards.
    pub async fn reconcile<P: TlsProber>(
        &mut self,
        prober: P,
    ) -> (Result<Action, Error>, Vec<Recorded>) {
        let org = self.org();
        self.reconcile_object(org, prober).await
    }

    /// Runs one reconcile of `org`.
    pub async fn reconcile_object<P: TlsProber>(
        &mut self,
        org: Organization,
        prober: P,
    ) -> (Result<Action, Error>, Vec<Recorded>) {
        let (mut results, log) = self.reconcile_all(vec![org], prober).await;
        (results.remove(0), log)
    }

    /// Runs one reconcile of each of `orgs`, in order, with one context (one controller)
    /// and the stores as they were at the start.
    pub async fn reconcile_all<P: TlsProber>(
        &mut self,
        orgs: Vec<Organization>,
        prober: P,
    ) -> (Vec<Result<Action, Error>>, Vec<Recorded>) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = Arc::new(Mutex::new(self.server()));
        let serving = server.clone();
        let task = tokio::spawn(async move {
            // Ends when the last client is dropped.
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap();
                let body = if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).unwrap()
                };
                let mut recorded = Recorded {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_string(),
                    query: parts.uri.query().unwrap_or_default().to_string(),
                    content_type: parts
                        .headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string(),
                    body,
                    code: 0,
                };
                let mut s = serving.lock().unwrap();
                let (code, answer) = s.answer(&recorded);
                recorded.code = code;
                s.log.push(recorded);
                drop(s);
                let response = Response::builder()
                    .status(StatusCode::from_u16(code).unwrap())
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap();
                send.send_response(response);
            }
        });
        static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let ca_dir = std::env::temp_dir().join(format!(
            "smtprelay-operator-test-{}-{}",
            std::process::id(),
            RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let client = Client::new(service, "default");
        let mut ctx = Context::with_stores(
            client,
            Settings {
                probe_ca_dir: Some(ca_dir.clone()),
                ..self.operator.clone()
            },
            prober,
            Arc::new(Metrics::default()),
            Some("test".into()),
            self.stores(),
        );
        ctx.clock = Arc::new(|| Timestamp::from_second(NOW).unwrap());
        ctx.recorder = self.recorder.clone();
        ctx.pod_reports = Arc::new(FakePodReports(
            self.pod_answers.clone(),
            self.drain_answers.clone(),
        ));
        let ctx = Arc::new(ctx);
        let mut results = Vec::new();
        for org in orgs {
            results.push(reconcile(Arc::new(org), ctx.clone()).await);
        }
        drop(ctx);
        task.await.unwrap();
        let _ = std::fs::remove_dir_all(&ca_dir);
        let server = Arc::try_unwrap(server)
            .map_err(|_| "server still shared")
            .unwrap()
            .into_inner()
            .unwrap();
        self.absorb(server.objects);
        self.events = server.events;
        (results, server.log)
    }
}
