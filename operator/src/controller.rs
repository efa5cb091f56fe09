//! The controller: reconciles each Organization into a running relay.
//!
//! One namespace is one organization. A reconcile reads the namespace's objects from the
//! controller's reflector stores (no LIST per reconcile), GETs only the Secrets the
//! objects name, calls [`render`] (the same function `relayctl` calls), applies the
//! children built by [`children::build`] with server-side apply under one field manager,
//! and writes the status of every kind, also with server-side apply, so that a field that
//! becomes empty is removed. A child whose stored state already holds everything the
//! operator wants is not applied again, and a status equal to the one stored is not
//! written: a reconcile of an unchanged Organization writes nothing.
//!
//! Status is written before the Events that announce it: Events are the audit log, but
//! status is the state, and a lost Event must never cost a repeated probe or rollout. An
//! Event the API server refuses is logged and counted, not retried.
//!
//! The relay runs as a StatefulSet, one spool claim per pod. An Organization whose relay
//! still runs as the Deployment of earlier versions gets its StatefulSet next to it; the
//! Deployment is deleted only once every StatefulSet pod is ready, so clients are served
//! throughout. A claim no relay pod serves any more (a scale-down, the old Deployment's)
//! is drained by a Job and deleted only once empty ([`drain`]).
//!
//! "In force" is what the pods say: each ready relay pod is asked ([`pod_reports`]) which
//! config hash it runs, and `InForce` is True only when all of them run the latest.
//!
//! Render errors leave the children as they are (the previous config stays in force) and
//! mark the Organization Degraded. A child the API server refuses (an immutable field, a
//! quota) is a Degraded condition with the server's message; the other children are
//! still applied and the reconcile is retried with exponential backoff. Every child
//! carries a controller owner reference, so the garbage collector removes the relay with
//! its Organization; but first the finalizer `smtprelay.dev/drain` holds the deletion
//! while the relay is scaled to zero and its spool claims are delivered ([`drain`]).
//!
//! Pure parts live in submodules: [`children`] (what to apply), [`names`] (names the API
//! server accepts), [`status`] (what to report), [`leader`] (the election rule). [`metrics`]
//! and [`probe`] are the edges.

pub mod children;
pub mod drain;
#[cfg(test)]
mod fixtures;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod pod_reports;
pub mod probe;
pub mod status;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crds::{Condition, IpAllowRange, MailRoute, Organization, SmtpRelaySetting};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, Predicate, WatchStreamExt, predicates, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use relay::config::RouteConfig;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::Digest;

use crate::render::{Objects, RenderEnv, render};
use children::{ChildDefaults, MANAGED_BY};
use metrics::Metrics;
use pod_reports::{HttpPodReports, PodReports};
use probe::TlsProber;
use status::{ACCEPTED, DEGRADED, PodReport, Problem, TLS_VERIFIED};

/// The one field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "smtprelay-operator";

/// Largest Event note `events.k8s.io/v1` accepts, in bytes.
pub const MAX_EVENT_NOTE: usize = 1024;

/// Why a reconcile failed. Each variant names the object and the API call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Organization {0} has no namespace; Organizations are namespaced")]
    NoNamespace(String),
    #[error("reading {kind} {namespace}/{name}: {source}")]
    Get {
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("applying {kind} {namespace}/{name}: {source}")]
    Apply {
        kind: String,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting {kind} {namespace}/{name}: {source}")]
    Delete {
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing the status of {kind} {namespace}/{name}: {source}")]
    Status {
        kind: String,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// Label of the failure metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::NoNamespace(_) => "no_namespace",
            Error::Get { .. } => "get",
            Error::Apply { .. } => "apply",
            Error::Delete { .. } => "delete",
            Error::Status { .. } => "status",
        }
    }
}

/// Operator settings that are not part of the API.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where relay pods listen and mount things (normally [`RenderEnv::pod`]).
    pub env: RenderEnv,
    pub defaults: ChildDefaults,
    /// How often each MailRoute's hosts are probed for TLS.
    pub probe_interval: Duration,
    /// Where a route's CA Secret is written for probing (the operator does not mount
    /// route Secrets as the relay pods do); `None` probes with the path render chose.
    pub probe_ca_dir: Option<std::path::PathBuf>,
    /// Requeue while the relay rolls out.
    pub rollout_requeue: Duration,
    /// Requeue of a settled Organization (drift, Secret rotation and probe schedule).
    pub settled_requeue: Duration,
    /// First retry after a failed reconcile; doubles with each further failure.
    pub error_backoff: Duration,
    /// Longest wait between retries of a failing reconcile.
    pub error_backoff_cap: Duration,
    /// Images an Organization may name in `spec.relay.image` (the default image is always
    /// allowed). Tenants must not run arbitrary images with the relay's identity.
    pub allowed_images: Vec<String>,
    /// Refuse `serviceType: LoadBalancer` (a cluster that must not expose tenants' relays).
    pub forbid_load_balancer: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            env: RenderEnv::pod(),
            defaults: ChildDefaults::default(),
            probe_interval: Duration::from_secs(600),
            probe_ca_dir: Some(std::env::temp_dir().join("smtprelay-operator-ca")),
            rollout_requeue: Duration::from_secs(15),
            settled_requeue: Duration::from_secs(300),
            error_backoff: Duration::from_secs(5),
            error_backoff_cap: Duration::from_secs(300),
            allowed_images: Vec::new(),
            forbid_load_balancer: false,
        }
    }
}

/// The clock of status times and probe scheduling (injectable for tests).
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// What the watches have seen: the inputs of every reconcile and the children as they are.
#[derive(Clone)]
pub struct Stores {
    pub organizations: Store<Organization>,
    pub settings: Store<SmtpRelaySetting>,
    pub ranges: Store<IpAllowRange>,
    pub routes: Store<MailRoute>,
    pub config_maps: Store<ConfigMap>,
    /// Deployments of relays from before StatefulSets, until they are replaced.
    pub deployments: Store<Deployment>,
    pub stateful_sets: Store<StatefulSet>,
    pub services: Store<Service>,
    pub pdbs: Store<PodDisruptionBudget>,
    pub network_policies: Store<NetworkPolicy>,
    /// Relay pods (by the label of their template): which are ready, and where to ask
    /// them for the config in force; drain pods likewise, for their progress.
    pub pods: Store<Pod>,
    /// Spool claims (by the label of the StatefulSet's claim template): those of pods that
    /// are gone are drained ([`drain`]).
    pub claims: Store<PersistentVolumeClaim>,
    /// The Jobs that drain them.
    pub jobs: Store<Job>,
}

/// The writing ends of [`Stores`], fed by the watches of [`run`].
pub struct Writers {
    organizations: reflector::store::Writer<Organization>,
    settings: reflector::store::Writer<SmtpRelaySetting>,
    ranges: reflector::store::Writer<IpAllowRange>,
    routes: reflector::store::Writer<MailRoute>,
    config_maps: reflector::store::Writer<ConfigMap>,
    deployments: reflector::store::Writer<Deployment>,
    stateful_sets: reflector::store::Writer<StatefulSet>,
    services: reflector::store::Writer<Service>,
    pdbs: reflector::store::Writer<PodDisruptionBudget>,
    network_policies: reflector::store::Writer<NetworkPolicy>,
    pods: reflector::store::Writer<Pod>,
    claims: reflector::store::Writer<PersistentVolumeClaim>,
    jobs: reflector::store::Writer<Job>,
}

impl Stores {
    /// True once every store holds its watch's initial list. Before that a reconcile
    /// would render an Organization without its settings and routes and apply a config
    /// that refuses all mail.
    pub fn ready(&self) -> bool {
        use futures::FutureExt;
        fn one<K: Resource<DynamicType = ()> + Clone + 'static>(s: &Store<K>) -> bool {
            matches!(s.wait_until_ready().now_or_never(), Some(Ok(())))
        }
        one(&self.organizations)
            && one(&self.settings)
            && one(&self.ranges)
            && one(&self.routes)
            && one(&self.config_maps)
            && one(&self.deployments)
            && one(&self.stateful_sets)
            && one(&self.services)
            && one(&self.pdbs)
            && one(&self.network_policies)
            && one(&self.pods)
            && one(&self.claims)
            && one(&self.jobs)
    }

    /// Empty stores and their writers.
    pub fn new() -> (Self, Writers) {
        let (organizations, w_organizations) = reflector::store();
        let (settings, w_settings) = reflector::store();
        let (ranges, w_ranges) = reflector::store();
        let (routes, w_routes) = reflector::store();
        let (config_maps, w_config_maps) = reflector::store();
        let (deployments, w_deployments) = reflector::store();
        let (stateful_sets, w_stateful_sets) = reflector::store();
        let (services, w_services) = reflector::store();
        let (pdbs, w_pdbs) = reflector::store();
        let (network_policies, w_network_policies) = reflector::store();
        let (pods, w_pods) = reflector::store();
        let (claims, w_claims) = reflector::store();
        let (jobs, w_jobs) = reflector::store();
        (
            Self {
                organizations,
                settings,
                ranges,
                routes,
                config_maps,
                deployments,
                stateful_sets,
                services,
                pdbs,
                network_policies,
                pods,
                claims,
                jobs,
            },
            Writers {
                organizations: w_organizations,
                settings: w_settings,
                ranges: w_ranges,
                routes: w_routes,
                config_maps: w_config_maps,
                deployments: w_deployments,
                stateful_sets: w_stateful_sets,
                services: w_services,
                pdbs: w_pdbs,
                network_policies: w_network_policies,
                pods: w_pods,
                claims: w_claims,
                jobs: w_jobs,
            },
        )
    }
}

/// Shared state of all reconciles.
pub struct Context<P> {
    pub client: Client,
    pub recorder: Recorder,
    pub settings: Settings,
    pub prober: P,
    /// Asks relay pods which config they run (replaceable for tests).
    pub pod_reports: Arc<dyn PodReports>,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
    /// Source of the backoff jitter: a number in `[0, 1)` (injectable for tests).
    pub jitter: Arc<dyn Fn() -> f64 + Send + Sync>,
    pub stores: Stores,
    /// Taken by [`run`], which feeds the stores.
    writers: Mutex<Option<Writers>>,
    /// Consecutive failed reconciles per Organization (the backoff of [`error_policy`]).
    failures: Mutex<HashMap<ObjectRef<Organization>, u32>>,
}

impl<P: TlsProber> Context<P> {
    /// A context with the system clock, the reporter `smtprelay-operator` and empty stores
    /// that [`run`] fills.
    pub fn new(
        client: Client,
        settings: Settings,
        prober: P,
        metrics: Arc<Metrics>,
        instance: Option<String>,
    ) -> Self {
        let (stores, writers) = Stores::new();
        let mut ctx = Self::with_stores(client, settings, prober, metrics, instance, stores);
        ctx.writers = Mutex::new(Some(writers));
        ctx
    }

    /// A context reading from `stores` that someone else keeps current (tests).
    pub fn with_stores(
        client: Client,
        settings: Settings,
        prober: P,
        metrics: Arc<Metrics>,
        instance: Option<String>,
        stores: Stores,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings,
            prober,
            pod_reports: Arc::new(HttpPodReports::default()),
            metrics,
            clock: Arc::new(Timestamp::now),
            jitter: Arc::new(fastrand::f64),
            stores,
            writers: Mutex::new(None),
            failures: Mutex::new(HashMap::new()),
        }
    }
}

/// Reconciles one Organization (the controller's entry point).
pub async fn reconcile<P: TlsProber>(
    org: Arc<Organization>,
    ctx: Arc<Context<P>>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_org(&org, &ctx).await;
    ctx.metrics.reconciled(started.elapsed());
    if result.is_ok()
        && let Ok(mut failures) = ctx.failures.lock()
    {
        failures.remove(&ObjectRef::from_obj(org.as_ref()));
    }
    result
}

/// Failed reconciles are retried after an exponential backoff with jitter, capped (see
/// [`backoff`]); the error is logged and counted.
pub fn error_policy<P: TlsProber>(
    org: Arc<Organization>,
    error: &Error,
    ctx: Arc<Context<P>>,
) -> Action {
    ctx.metrics.failed(error.metric_label());
    let failures = match ctx.failures.lock() {
        Ok(mut f) => {
            let n = f.entry(ObjectRef::from_obj(org.as_ref())).or_insert(0);
            *n = n.saturating_add(1);
            *n
        }
        Err(_) => 1,
    };
    let wait = backoff(
        failures,
        ctx.settings.error_backoff,
        ctx.settings.error_backoff_cap,
        (ctx.jitter)(),
    );
    tracing::warn!(organization = %org.name_any(), namespace = ?org.namespace(), %error, failures, retry_in = ?wait, "reconcile failed");
    Action::requeue(wait)
}

/// The wait before retry number `failures` (1 for the first): `base` doubled per failure
/// and capped at `cap`, then "equal jitter": half of it fixed, half scaled by `unit` (a
/// random number in `[0, 1)`), so that Organizations failing together do not retry in step.
pub fn backoff(failures: u32, base: Duration, cap: Duration, unit: f64) -> Duration {
    let exponent = failures.saturating_sub(1).min(30);
    let full = base.saturating_mul(1 << exponent).min(cap);
    full / 2 + full.div_f64(2.0).mul_f64(unit.clamp(0.0, 1.0))
}

/// The Secrets `org` and its routes name, each fetched with one GET (the operator lists no
/// Secrets: it may read only those it is pointed at). Missing ones are left out.
async fn referenced_secrets(
    client: &Client,
    namespace: &str,
    org: &Organization,
    routes: &[Arc<MailRoute>],
) -> Result<Vec<Secret>, Error> {
    let mut names = BTreeSet::new();
    names.extend(org.spec.relay.tls_secret_ref.iter().map(|r| r.name.clone()));
    names.extend(org.spec.auth_secret_ref.iter().map(|r| r.name.clone()));
    names.extend(
        org.spec
            .relay
            .limit_store
            .iter()
            .filter_map(|s| s.password_secret_ref.as_ref())
            .map(|r| r.name.clone()),
    );
    names.extend(org.spec.dkim.iter().map(|k| k.secret_ref.name.clone()));
    for r in routes {
        names.extend(
            r.spec
                .tls
                .trusted_ca_secret_ref
                .iter()
                .map(|r| r.name.clone()),
        );
        names.extend(r.spec.auth.iter().map(|a| a.secret_ref.name.clone()));
    }
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut secrets = Vec::new();
    for name in names {
        match api.get_opt(&name).await {
            Ok(Some(s)) => secrets.push(s),
            Ok(None) => {}
            Err(source) => {
                return Err(Error::Get {
                    kind: "Secret",
                    namespace: namespace.into(),
                    name,
                    source,
                });
            }
        }
    }
    Ok(secrets)
}

/// The Organization's admin token Secret (`<org>-relay-admin`, key `token`): read with
/// one GET, or created with a new random token when there is none. An existing one is
/// never overwritten (an operator may rotate the token by editing it); the create is an
/// apply that is not forced, so a Secret someone made meanwhile wins (the apply conflicts).
async fn ensure_admin_secret(client: &Client, org: &Organization) -> Result<Secret, Error> {
    let namespace = org.namespace().unwrap_or_default();
    let name = children::admin_secret_name(&org.name_any());
    let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    match api.get_opt(&name).await {
        Ok(Some(s)) => return Ok(s),
        Ok(None) => {}
        Err(source) => {
            return Err(Error::Get {
                kind: "Secret",
                namespace,
                name,
                source,
            });
        }
    }
    let apply = |source| Error::Apply {
        kind: "Secret".into(),
        namespace: namespace.clone(),
        name: name.clone(),
        source,
    };
    let token = crate::local::new_admin_token()
        .map_err(|e| apply(kube::Error::Service(e.to_string().into())))?;
    let secret = children::admin_secret(org, &token);
    let mut body = serde_json::to_value(&secret).unwrap_or_default();
    body["apiVersion"] = "v1".into();
    body["kind"] = "Secret".into();
    let made = api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&body),
        )
        .await
        .map_err(apply)?;
    tracing::info!(namespace, name, "created the relay admin token Secret");
    Ok(made)
}

/// True when every field of `desired` is in `actual` with the same value: the API server
/// already holds what an apply would send (it may hold more: defaults, status, other
/// managers' fields). Lists must have the same length and match element by element.
pub fn holds(actual: &serde_json::Value, desired: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (desired, actual) {
        (Value::Object(d), Value::Object(a)) => d
            .iter()
            .all(|(k, dv)| a.get(k).is_some_and(|av| holds(av, dv))),
        (Value::Array(d), Value::Array(a)) => {
            d.len() == a.len() && d.iter().zip(a).all(|(dv, av)| holds(av, dv))
        }
        (d, a) => d == a,
    }
}

/// Annotation on every child: the hash of the apply that produced it. A field the
/// operator stops setting changes the hash, so the child is applied again (and server-side
/// apply removes the field), although what is left is still all in the stored object.
pub const APPLIED_HASH_ANNOTATION: &str = "smtprelay.dev/applied-hash";

fn apply_body<K>(object: &K) -> serde_json::Value
where
    K: Resource<DynamicType = ()> + Serialize,
{
    // Server-side apply needs apiVersion and kind in the body.
    let mut body = serde_json::to_value(object).unwrap_or_default();
    body["apiVersion"] = K::api_version(&()).into();
    body["kind"] = K::kind(&()).into();
    let hash = hex::encode(sha2::Sha256::digest(body.to_string().as_bytes()));
    if !body["metadata"]["annotations"].is_object() {
        body["metadata"]["annotations"] = serde_json::json!({});
    }
    body["metadata"]["annotations"][APPLIED_HASH_ANNOTATION] = hash.into();
    body
}

/// Server-side applies `desired` unless `store` shows the API server already holds it
/// (the same applied hash, and every field still as applied: a change by someone else is
/// put back). Returns the object as the API server has it.
async fn ensure<K>(client: &Client, store: &Store<K>, desired: &K) -> Result<K, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let namespace = desired.namespace().unwrap_or_default();
    let name = desired.name_any();
    let body = apply_body(desired);
    let key = ObjectRef::<K>::new(&name).within(&namespace);
    if let Some(current) = store.get(&key) {
        let stored = serde_json::to_value(current.as_ref()).unwrap_or_default();
        if holds(&stored, &body) {
            return Ok(current.as_ref().clone());
        }
    }
    let api: Api<K> = Api::namespaced(client.clone(), &namespace);
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|source| Error::Apply {
        kind: K::kind(&()).into_owned(),
        namespace,
        name,
        source,
    })
}

/// Writes `status` with server-side apply on the status subresource: the operator owns
/// every status field it sets, so a field it no longer sends is removed.
async fn write_status<K, S>(client: &Client, object: &K, new: &S) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    S: Serialize,
{
    let namespace = object.namespace().unwrap_or_default();
    let name = object.name_any();
    let api: Api<K> = Api::namespaced(client.clone(), &namespace);
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": {"name": name, "namespace": namespace},
        "status": new,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|source| Error::Status {
        kind: K::kind(&()).into_owned(),
        namespace,
        name,
        source,
    })?;
    Ok(())
}

/// `note` cut to at most `max` bytes on a character boundary, marked with `…` when cut.
pub fn truncate_note(note: &str, max: usize) -> String {
    if note.len() <= max {
        return note.to_string();
    }
    const MORE: &str = "…";
    let mut end = max.saturating_sub(MORE.len());
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MORE}", &note[..end])
}

/// Publishes an Event (note cut to what the API server accepts). A refused Event is logged
/// and counted; it does not fail the reconcile, whose state is already in status.
async fn publish<P, K>(ctx: &Context<P>, object: &K, type_: EventType, reason: &str, note: &str)
where
    K: Resource<DynamicType = ()>,
{
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(truncate_note(note, MAX_EVENT_NOTE)),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &object.object_ref(&())).await {
        ctx.metrics.failed("event");
        tracing::warn!(
            reason,
            kind = %K::kind(&()),
            namespace = ?object.meta().namespace,
            name = ?object.meta().name,
            %error,
            "could not publish Event"
        );
    }
}

/// A condition type to announce with an Event when it changes: the status that warns,
/// and whether its first appearance in the good state is worth an Event too.
struct Watched {
    type_: &'static str,
    bad_when: &'static str,
    announce_first_good: bool,
}

const fn watched(type_: &'static str, bad_when: &'static str, first: bool) -> Watched {
    Watched {
        type_,
        bad_when,
        announce_first_good: first,
    }
}

/// Publishes an Event when condition `w.type_` changed between `old` and `new`.
async fn publish_if_changed<P, K>(
    ctx: &Context<P>,
    object: &K,
    old: &[Condition],
    new: &[Condition],
    w: &Watched,
) where
    K: Resource<DynamicType = ()>,
{
    let Some(now) = status::condition(new, w.type_) else {
        return;
    };
    let before = status::condition(old, w.type_);
    let same = before.is_some_and(|b| {
        (&b.status, &b.reason, &b.message) == (&now.status, &now.reason, &now.message)
    });
    let bad = now.status == w.bad_when;
    let first_good = before.is_none() && !bad;
    if same || (first_good && !(w.announce_first_good && now.status == "True")) {
        return;
    }
    let severity = if bad {
        EventType::Warning
    } else {
        EventType::Normal
    };
    publish(ctx, object, severity, &now.reason, &now.message).await
}

/// Status types that carry conditions.
trait Conditions {
    fn conditions(&self) -> &[Condition];
}

impl Conditions for crds::OrganizationStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}
impl Conditions for crds::SmtpRelaySettingStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}
impl Conditions for crds::IpAllowRangeStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}
impl Conditions for crds::MailRouteStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

/// When the status changed: the status write, then one Event per watched condition that
/// changed. Status goes first: it is what the next reconcile compares with, so a refused
/// Event cannot make a probe or a rollout repeat.
async fn record<P, K, S>(
    ctx: &Context<P>,
    object: &K,
    old: Option<&S>,
    new: &S,
    watched: &[Watched],
) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    S: Serialize + PartialEq + Conditions,
{
    if old == Some(new) {
        return Ok(());
    }
    write_status(&ctx.client, object, new).await?;
    let before = old.map(|o| o.conditions()).unwrap_or_default();
    for w in watched {
        publish_if_changed(ctx, object, before, new.conditions(), w).await;
    }
    Ok(())
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

fn in_namespace<K: Resource<DynamicType = ()> + Clone>(
    store: &Store<K>,
    namespace: &str,
) -> Vec<Arc<K>> {
    let mut items: Vec<Arc<K>> = store
        .state()
        .into_iter()
        .filter(|o| o.meta().namespace.as_deref() == Some(namespace))
        .collect();
    items.sort_by(|a, b| a.meta().name.cmp(&b.meta().name));
    items
}

fn owned<K: Clone>(items: &[Arc<K>]) -> Vec<K> {
    items.iter().map(|i| i.as_ref().clone()).collect()
}

/// Why the operator refuses to run what `org` asks for (tenant boundaries set by flags).
fn refusals(org: &Organization, settings: &Settings) -> Vec<Problem> {
    let mut out = Vec::new();
    if let Some(image) = &org.spec.relay.image
        && *image != settings.defaults.relay_image
        && !settings.allowed_images.contains(image)
    {
        out.push(Problem::new(
            "ImageNotAllowed",
            format!(
                "relay.image {image} is not in the operator's list of allowed images; the relay keeps its current image"
            ),
        ));
    }
    if settings.forbid_load_balancer
        && org.spec.relay.service_type == Some(crds::ServiceType::LoadBalancer)
    {
        out.push(Problem::new(
            "LoadBalancerForbidden",
            "relay.serviceType LoadBalancer is forbidden by the operator; the Service keeps its current type (ClusterIP for a new one)".into(),
        ));
    }
    out
}

/// The spool a StatefulSet was created with: its claim template, or its emptyDir.
fn spool_of(stateful_set: &StatefulSet) -> Option<crds::SpoolSpec> {
    let spec = &stateful_set.spec;
    if let Some(claim) = spec
        .volume_claim_templates
        .iter()
        .flatten()
        .find(|c| c.metadata.name.as_deref() == Some(children::SPOOL_VOLUME))
    {
        let claim = claim.spec.as_ref()?;
        return Some(crds::SpoolSpec {
            size: claim
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("storage"))
                .map(|q| q.0.clone()),
            storage_class_name: claim.storage_class_name.clone(),
            ephemeral: false,
        });
    }
    let empty_dir = spec
        .template
        .spec
        .as_ref()?
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == children::SPOOL_VOLUME)?
        .empty_dir
        .as_ref()?;
    Some(crds::SpoolSpec {
        size: empty_dir.size_limit.as_ref().map(|q| q.0.clone()),
        storage_class_name: None,
        ephemeral: true,
    })
}

/// A spool spec with its defaults filled in, for comparison.
fn spool_with_defaults(spool: Option<&crds::SpoolSpec>) -> crds::SpoolSpec {
    let mut s = spool.cloned().unwrap_or_default();
    s.size
        .get_or_insert_with(|| children::DEFAULT_SPOOL_SIZE.into());
    s
}

/// `org` as the operator runs it: a refused image is replaced by the one the relay runs
/// now (or the default), a refused Service type by the current one (or ClusterIP), and a
/// spool change by the spool the StatefulSet has (its claim templates cannot change: the
/// API server refuses the update), so that everything else the Organization asks for
/// still takes effect. A kept spool is added to `problems`.
fn within_bounds(
    org: &Organization,
    problems: &mut Vec<Problem>,
    stateful_set: Option<&StatefulSet>,
    services: &Store<Service>,
) -> Organization {
    let mut allowed = org.clone();
    let refused = |reason: &str| problems.iter().any(|p| p.reason == reason);
    if refused("ImageNotAllowed") {
        allowed.spec.relay.image = stateful_set.and_then(|d| {
            d.spec
                .template
                .spec
                .as_ref()?
                .containers
                .first()?
                .image
                .clone()
        });
    }
    if refused("LoadBalancerForbidden") {
        let current = org.namespace().and_then(|ns| {
            services.get(&ObjectRef::new(&children::relay_name(&org.name_any())).within(&ns))
        });
        allowed.spec.relay.service_type = Some(
            match current
                .as_ref()
                .and_then(|s| s.spec.as_ref()?.type_.as_deref())
            {
                Some("NodePort") => crds::ServiceType::NodePort,
                _ => crds::ServiceType::ClusterIP,
            },
        );
    }
    if let Some(current) = stateful_set.and_then(spool_of)
        && spool_with_defaults(Some(&current)) != spool_with_defaults(org.spec.relay.spool.as_ref())
    {
        let describe = |s: &crds::SpoolSpec| {
            let s = spool_with_defaults(Some(s));
            let size = s.size.unwrap_or_default();
            match (s.ephemeral, s.storage_class_name) {
                (true, _) => format!("an emptyDir of at most {size}"),
                (false, Some(class)) => format!("a {size} claim of class {class} per pod"),
                (false, None) => format!("a {size} claim per pod"),
            }
        };
        problems.push(Problem::new(
            "SpoolUnchangeable",
            format!(
                "relay.spool asks for {} but the relay's StatefulSet was created with {}, and a StatefulSet's claim templates cannot change; the relay keeps its spool (grow claims by editing them; to change the kind, drain and recreate the relay)",
                describe(org.spec.relay.spool.as_ref().unwrap_or(&Default::default())),
                describe(&current)
            ),
        ));
        allowed.spec.relay.spool = Some(current);
    }
    allowed
}

/// Applies `desired` and records a refusal as a [`Problem`] (the API server's message)
/// instead of stopping: one refused child must not keep the others from being applied.
async fn ensure_or_note<K>(
    client: &Client,
    store: &Store<K>,
    desired: &K,
    problems: &mut Vec<Problem>,
    failed: &mut Option<Error>,
) -> Option<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    match ensure(client, store, desired).await {
        Ok(k) => Some(k),
        Err(e) => {
            let server_message = match &e {
                Error::Apply {
                    source: kube::Error::Api(s),
                    ..
                } => s.message.clone(),
                Error::Apply { source, .. } => source.to_string(),
                other => other.to_string(),
            };
            problems.push(Problem::new(
                "ApplyFailed",
                format!(
                    "the API server refused {} {}: {server_message}",
                    K::kind(&()),
                    desired.name_any()
                ),
            ));
            tracing::warn!(error = %e, "apply failed");
            failed.get_or_insert(e);
            store
                .get(&ObjectRef::from_obj(desired))
                .map(|k| k.as_ref().clone())
        }
    }
}

async fn reconcile_org<P: TlsProber>(
    org: &Organization,
    ctx: &Context<P>,
) -> Result<Action, Error> {
    if org.meta().deletion_timestamp.is_some() {
        return finalize(org, ctx).await;
    }
    let stores = &ctx.stores;
    if !stores.ready() {
        // The watches are still listing: come back when the caches are whole.
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    if !org.finalizers().iter().any(|f| f == drain::FINALIZER) {
        set_finalizer(&ctx.client, org, true).await?;
    }
    let name = org.name_any();
    let ns = org
        .namespace()
        .ok_or_else(|| Error::NoNamespace(name.clone()))?;
    let client = &ctx.client;
    let organizations = in_namespace(&stores.organizations, &ns);
    let settings = in_namespace(&stores.settings, &ns);
    let ranges = in_namespace(&stores.ranges, &ns);
    let routes = in_namespace(&stores.routes, &ns);
    let mut secrets = referenced_secrets(client, &ns, org, &routes).await?;
    let mut secret_names: BTreeSet<String> = secrets.iter().map(|s| s.name_any()).collect();
    // The admin token Secret: looked for (and made when missing) only until the relay pods
    // mount it, so a settled reconcile still makes no request.
    let admin_secret = children::admin_secret_name(&name);
    let admin_mounted = stores
        .stateful_sets
        .get(&ObjectRef::new(&children::stateful_set_name(&name)).within(&ns))
        .is_some_and(|s| children::mounts_admin_token(&s));
    if admin_mounted {
        secret_names.insert(admin_secret);
    } else {
        match ensure_admin_secret(client, org).await {
            Ok(secret) => {
                secret_names.insert(admin_secret);
                secrets.push(secret);
            }
            // Queue administration stays unavailable; mail flows. Tried again next time.
            Err(e) => {
                tracing::warn!(namespace = %ns, organization = %name, "no admin token Secret: {e}")
            }
        }
    }
    let now = Time((ctx.clock)());

    // The store may lag behind the object that triggered this reconcile.
    let mut organizations = owned(&organizations);
    match organizations.iter_mut().find(|o| o.name_any() == name) {
        Some(o) => *o = org.clone(),
        None => organizations.push(org.clone()),
    }
    let (settings, ranges, routes) = (owned(&settings), owned(&ranges), owned(&routes));
    let rendered = render(
        &ns,
        Objects {
            organizations: &organizations,
            settings: &settings,
            ranges: &ranges,
            routes: &routes,
            secrets: &secret_names,
        },
        &ctx.settings.env,
    );
    let old_status = org.status.clone();
    let rendered = match rendered {
        Ok(mut r) => {
            r.findings
                .extend(crate::render::dkim_key_findings(org, &secrets));
            r.findings.sort();
            r
        }
        Err(e) => {
            // Children stay as they are: the config in force keeps working.
            let new = status::organization_failed(org, &e.to_string(), &now);
            record(
                ctx,
                org,
                old_status.as_ref(),
                &new,
                &[watched(DEGRADED, "True", false)],
            )
            .await?;
            return Ok(Action::requeue(ctx.settings.settled_requeue));
        }
    };

    // Children.
    let relay_name = children::relay_name(&name);
    let existing = stores
        .stateful_sets
        .get(&ObjectRef::new(&children::stateful_set_name(&name)).within(&ns))
        .map(|d| d.as_ref().clone());
    let old_config_map = stores
        .config_maps
        .get(&ObjectRef::new(&children::config_map_name(&name)).within(&ns))
        .map(|c| c.as_ref().clone());
    let mounted = children::mounted_secrets(org, &routes, &secret_names);
    let secrets_hash = children::secrets_hash(&mounted, &secrets);
    let mut problems = refusals(org, &ctx.settings);
    let allowed = within_bounds(org, &mut problems, existing.as_ref(), &stores.services);
    let built = children::build(
        &allowed,
        &rendered.config,
        &mounted,
        &secrets_hash,
        &ctx.settings.defaults,
    );
    let mut failed = None;
    ensure_or_note(
        client,
        &stores.config_maps,
        &built.config_map,
        &mut problems,
        &mut failed,
    )
    .await;
    // The headless Service first: the StatefulSet names it.
    ensure_or_note(
        client,
        &stores.services,
        &built.pods_service,
        &mut problems,
        &mut failed,
    )
    .await;
    let stateful_set = ensure_or_note(
        client,
        &stores.stateful_sets,
        &built.stateful_set,
        &mut problems,
        &mut failed,
    )
    .await;
    ensure_or_note(
        client,
        &stores.services,
        &built.service,
        &mut problems,
        &mut failed,
    )
    .await;
    ensure_or_note(client, &stores.pdbs, &built.pdb, &mut problems, &mut failed).await;
    ensure_or_note(
        client,
        &stores.network_policies,
        &built.network_policy,
        &mut problems,
        &mut failed,
    )
    .await;
    let desired = allowed.spec.relay.replicas.unwrap_or(1).max(1);
    let rollout = status::Rollout::of(stateful_set.as_ref());
    let replaced = replace_deployment(ctx, org, &ns, &relay_name, &rollout, desired).await;
    if let Err(e) = replaced {
        problems.push(Problem::new("DeploymentNotReplaced", e.to_string()));
        failed.get_or_insert(e);
    }
    let reports = pod_reports(ctx, &ns, &name, rendered.config.admin_listen.port()).await;
    let wanted_content = children::content_hash_in_pods(&rendered.config, &mounted, &secrets);
    nudge_pods(ctx, &ns, &reports, &rendered.config.hash, &wanted_content).await;
    let draining = drain_claims(
        ctx,
        org,
        &ns,
        Some(u32::try_from(desired).unwrap_or(1)),
        stateful_set.as_ref(),
        rendered.config.admin_listen.port(),
        &mut problems,
    )
    .await;

    // Status of the Organization, then the Events that announce it.
    let mut new = status::organization_rendered(
        org,
        &rendered.config,
        &rendered.findings,
        status::Relay {
            stateful_set: stateful_set.as_ref(),
            ephemeral_spool: children::ephemeral_spool(&allowed),
            reports: &reports,
            content_hash: Some(&wanted_content),
        },
        &problems,
        &now,
    );
    new.draining = draining;
    let changed = old_status.as_ref() != Some(&new);
    if changed {
        write_status(client, org, &new).await?;
    }
    // The audit log: what changed first, then what it did to the conditions.
    announce_changes(
        ctx,
        org,
        old_status.as_ref(),
        &rendered.config.hash,
        existing.as_ref(),
        stateful_set.is_some(),
        old_config_map.as_ref(),
        &mounted,
        &secrets_hash,
    )
    .await;
    if changed {
        let before = old_status
            .as_ref()
            .map(|s| s.conditions.as_slice())
            .unwrap_or_default();
        for w in [
            watched(status::READY, "False", true),
            watched(DEGRADED, "True", false),
            watched(status::SPOOL_EPHEMERAL, "True", false),
        ] {
            publish_if_changed(ctx, org, before, &new.conditions, &w).await;
        }
        // The audit log's last word on a config: when every relay runs it. The steps on
        // the way (pods still on the old hash) are status only: they are expected.
        if let Some(now) = status::condition(&new.conditions, status::IN_FORCE)
            && now.status == "True"
            && status::condition(before, status::IN_FORCE)
                .is_none_or(|b| (&b.status, &b.message) != (&now.status, &now.message))
        {
            publish(ctx, org, EventType::Normal, "ConfigInForce", &now.message).await;
        }
    }
    ctx.metrics.config_in_force(
        &ns,
        &name,
        status::condition(&new.conditions, status::IN_FORCE).is_some_and(|c| c.status == "True"),
    );
    // Settled once rolled out and in force on every ready pod (the kubelet refreshes
    // ConfigMap volumes within a minute or two; until then come back soon).
    let settled = new.draining.is_empty()
        && status::condition(&new.conditions, status::PROGRESSING)
            .is_some_and(|c| c.status == "False")
        && status::condition(&new.conditions, status::IN_FORCE).is_some_and(|c| c.status == "True");

    // Status of the other kinds.
    for s in &settings {
        let new = status::setting(s, &rendered.config, &rendered.findings, &now);
        record(
            ctx,
            s,
            s.status.as_ref(),
            &new,
            &[watched(ACCEPTED, "False", true)],
        )
        .await?;
    }
    for r in &ranges {
        let new = status::range(r, &rendered.findings, &now);
        record(
            ctx,
            r,
            r.status.as_ref(),
            &new,
            &[watched(ACCEPTED, "False", true)],
        )
        .await?;
    }
    let interval =
        SignedDuration::try_from(ctx.settings.probe_interval).unwrap_or(SignedDuration::MAX);
    for route in &routes {
        let old = route.status.as_ref();
        let due = old.is_none_or(|s| {
            s.observed_generation != route.metadata.generation
                || s.last_probe_time
                    .as_ref()
                    .is_none_or(|t| t.0.checked_add(interval).is_ok_and(|due| due <= now.0))
        });
        let qualified = format!("{ns}/{}", route.name_any());
        let probe = match rendered.config.routes.iter().find(|r| r.name == qualified) {
            Some(cfg) if due => {
                let cfg =
                    with_local_ca(cfg, route, &secrets, ctx.settings.probe_ca_dir.as_deref()).await;
                let results = ctx.prober.probe(&cfg, &rendered.config.delivery).await;
                if !results.is_empty() {
                    let verified = results.iter().all(|(_, r)| r.is_ok());
                    ctx.metrics.route_tls(&ns, &qualified, verified);
                }
                (!results.is_empty()).then_some(results)
            }
            _ => None,
        };
        let refused_by: Vec<String> = reports
            .iter()
            .filter(|r| {
                r.running
                    .as_ref()
                    .is_ok_and(|run| run.auth_refused.contains(&qualified))
            })
            .map(|r| r.pod.clone())
            .collect();
        let new = status::route(route, &rendered.findings, probe.as_ref(), &refused_by, &now);
        record(
            ctx,
            route,
            old,
            &new,
            &[
                watched(ACCEPTED, "False", true),
                watched(TLS_VERIFIED, "False", true),
                watched(status::CREDENTIALS_ACCEPTED, "False", true),
            ],
        )
        .await?;
    }

    if let Some(e) = failed {
        // Status says what the API server refused; retry with backoff.
        return Err(e);
    }
    Ok(Action::requeue(if settled {
        ctx.settings
            .settled_requeue
            .min(ctx.settings.probe_interval)
    } else {
        ctx.settings.rollout_requeue
    }))
}

/// The audit log of what the reconcile changed: a new config, a new relay, new Secrets.
#[allow(clippy::too_many_arguments)]
async fn announce_changes<P: TlsProber>(
    ctx: &Context<P>,
    org: &Organization,
    old_status: Option<&crds::OrganizationStatus>,
    new_hash: &str,
    existing: Option<&StatefulSet>,
    deployed: bool,
    old_config_map: Option<&ConfigMap>,
    mounted: &[children::MountedSecret],
    secrets_hash: &str,
) {
    match old_status.and_then(|s| s.config_hash.as_deref()) {
        Some(old) if old == new_hash => {}
        Some(old) => {
            let note = format!(
                "relay config changed from {} to {}; relays reload it without restarting",
                short(old),
                short(new_hash)
            );
            publish(ctx, org, EventType::Normal, "ConfigUpdated", &note).await
        }
        None => {
            let note = format!("relay config {} applied (first version)", short(new_hash));
            publish(ctx, org, EventType::Normal, "ConfigUpdated", &note).await
        }
    }
    if existing.is_none() && deployed {
        let note = format!(
            "created StatefulSet {} with {} replica(s), each with its own spool",
            children::stateful_set_name(&org.name_any()),
            org.spec.relay.replicas.unwrap_or(1).max(1)
        );
        publish(ctx, org, EventType::Normal, "RelayCreated", &note).await
    }
    let old_secrets_hash = old_config_map
        .and_then(|c| c.metadata.annotations.as_ref())
        .and_then(|a| a.get(children::SECRETS_HASH_ANNOTATION));
    if let Some(old) = old_secrets_hash
        && old != secrets_hash
    {
        // The admin token is not in the hash (see `children::secrets_hash`).
        let names: Vec<&str> = mounted
            .iter()
            .filter(|m| m.usage != children::SecretUse::Admin)
            .map(|m| m.name.as_str())
            .collect();
        let note = format!(
            "mounted Secrets [{}] changed (hash {} to {}): relays reload the files without restarting once the kubelet has refreshed them",
            names.join(", "),
            short(old),
            short(secrets_hash)
        );
        publish(ctx, org, EventType::Normal, "SecretsChanged", &note).await
    }
}

/// Deletes the Deployment that ran this relay before StatefulSets, once the StatefulSet
/// has every desired pod ready (so clients are served throughout). Only a Deployment
/// this Organization controls is touched. Its spool claim, if it had one, stays: it may
/// hold queued mail (see `deploy/README.md`).
async fn replace_deployment<P: TlsProber>(
    ctx: &Context<P>,
    org: &Organization,
    ns: &str,
    name: &str,
    rollout: &status::Rollout,
    desired: i32,
) -> Result<(), Error> {
    let Some(old) = ctx.stores.deployments.get(&ObjectRef::new(name).within(ns)) else {
        return Ok(());
    };
    let ours = old
        .owner_references()
        .iter()
        .any(|r| r.controller == Some(true) && Some(&r.uid) == org.metadata.uid.as_ref());
    if !ours || old.metadata.deletion_timestamp.is_some() || !rollout.complete(desired) {
        return Ok(());
    }
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
        Err(source) => {
            return Err(Error::Delete {
                kind: "Deployment",
                namespace: ns.into(),
                name: name.into(),
                source,
            });
        }
    }
    let claim = old
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|p| p.volumes.as_ref())
        .into_iter()
        .flatten()
        .find_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| c.claim_name.clone());
    let set = children::stateful_set_name(&org.name_any());
    let (kind, note) = match claim {
        Some(claim) => (
            EventType::Warning,
            format!(
                "replaced Deployment {name} by StatefulSet {set}; its spool claim {claim} is kept: drain its queue before deleting it"
            ),
        ),
        None => (
            EventType::Normal,
            format!("replaced Deployment {name} by StatefulSet {set}"),
        ),
    };
    publish(ctx, org, kind, "DeploymentReplaced", &note).await;
    Ok(())
}

/// Adds (`on`) or removes the drain finalizer, by server-side apply of that one field
/// under the operator's field manager: users' own fields and finalizers stay theirs.
async fn set_finalizer(client: &Client, org: &Organization, on: bool) -> Result<(), Error> {
    let namespace = org.namespace().unwrap_or_default();
    let name = org.name_any();
    let finalizers: Vec<&str> = if on { vec![drain::FINALIZER] } else { vec![] };
    let body = serde_json::json!({
        "apiVersion": Organization::api_version(&()),
        "kind": Organization::kind(&()),
        "metadata": {"name": name, "namespace": namespace, "finalizers": finalizers},
    });
    let api: Api<Organization> = Api::namespaced(client.clone(), &namespace);
    match api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Already gone: nothing left to hold.
        Err(kube::Error::Api(e)) if e.code == 404 && !on => Ok(()),
        Err(source) => Err(Error::Apply {
            kind: "Organization".into(),
            namespace,
            name,
            source,
        }),
    }
}

/// The admin port of the relay pods of `set` (their container port `admin`).
fn admin_port_of(set: &StatefulSet) -> Option<u16> {
    set.spec
        .template
        .spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some("admin"))
        .and_then(|p| u16::try_from(p.container_port).ok())
}

/// An Organization being deleted: the relay stops (StatefulSet scaled to zero, pods stop
/// gracefully), then every spool claim is drained by delivery, then the finalizer goes
/// and the garbage collector takes the children. With [`drain::DISCARD_ANNOTATION`] the
/// finalizer goes at once.
async fn finalize<P: TlsProber>(org: &Organization, ctx: &Context<P>) -> Result<Action, Error> {
    if !org.finalizers().iter().any(|f| f == drain::FINALIZER) {
        return Ok(Action::await_change());
    }
    let name = org.name_any();
    let ns = org
        .namespace()
        .ok_or_else(|| Error::NoNamespace(name.clone()))?;
    if org
        .annotations()
        .get(drain::DISCARD_ANNOTATION)
        .is_some_and(|v| v == "true")
    {
        publish(
            ctx,
            org,
            EventType::Warning,
            "QueueDiscarded",
            &format!(
                "deleted without draining ({}): mail still queued on the relay's spool claims is lost with them",
                drain::DISCARD_ANNOTATION
            ),
        )
        .await;
        set_finalizer(&ctx.client, org, false).await?;
        return Ok(Action::await_change());
    }
    if !ctx.stores.ready() {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let set = ctx
        .stores
        .stateful_sets
        .get(&ObjectRef::new(&children::stateful_set_name(&name)).within(&ns))
        .map(|s| s.as_ref().clone());
    if let Some(set) = &set
        && set.spec.replicas != Some(0)
    {
        let api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
        api.patch_scale(
            &set.name_any(),
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 0}})),
        )
        .await
        .map_err(|source| Error::Apply {
            kind: "StatefulSet".into(),
            namespace: ns.clone(),
            name: set.name_any(),
            source,
        })?;
        publish(
            ctx,
            org,
            EventType::Normal,
            "Draining",
            "Organization deleted: the relay stops taking mail, then its spools are delivered before it goes",
        )
        .await;
    }
    let selector = children::selector_labels(&name);
    let relay_pods = in_namespace(&ctx.stores.pods, &ns)
        .iter()
        .filter(|p| selected(p.as_ref(), &selector))
        .count();
    let mut problems = Vec::new();
    let draining = if relay_pods > 0 {
        Vec::new()
    } else {
        let port = set
            .as_ref()
            .and_then(admin_port_of)
            .unwrap_or_else(|| ctx.settings.env.admin_listen.port());
        drain_claims(ctx, org, &ns, None, set.as_ref(), port, &mut problems).await
    };
    if relay_pods == 0 && draining.is_empty() {
        set_finalizer(&ctx.client, org, false).await?;
        return Ok(Action::await_change());
    }
    let old = org.status.clone();
    let mut new = old.clone().unwrap_or_default();
    new.draining = draining;
    if old.as_ref() != Some(&new) {
        write_status(&ctx.client, org, &new).await?;
    }
    for p in &problems {
        tracing::warn!(namespace = %ns, organization = %name, reason = %p.reason, "{}", p.message);
    }
    Ok(Action::requeue(ctx.settings.rollout_requeue))
}

/// Drains the claims of `org` that no relay pod serves ([`drain::claims_to_drain`] with
/// `keep`): starts a Job for each (hand-over to the remaining relays when `keep` is
/// given, delivery when the Organization is being deleted), deletes a claim once its Job
/// succeeded and the Job once the claim is gone. What is still draining, for status; a
/// failed Job is also a problem.
async fn drain_claims<P: TlsProber>(
    ctx: &Context<P>,
    org: &Organization,
    ns: &str,
    keep: Option<u32>,
    set: Option<&StatefulSet>,
    admin_port: u16,
    problems: &mut Vec<Problem>,
) -> Vec<crds::DrainingClaim> {
    let name = org.name_any();
    let claims = owned(&in_namespace(&ctx.stores.claims, ns));
    let pods = owned(&in_namespace(&ctx.stores.pods, ns));
    let target = keep.map(|_| drain::handover_target(&name, ns, admin_port));
    let to_drain = drain::claims_to_drain(&name, ns, keep, &claims, &pods);
    let mut out = Vec::new();
    // One Event each for the drains started and the claims deleted by this reconcile (the
    // recorder would fold Events of one reason into a series and keep the first note).
    let (mut started, mut drained) = (Vec::new(), Vec::new());
    for t in &to_drain {
        let phase = match ctx.stores.jobs.get(&ObjectRef::new(&t.job).within(ns)) {
            Some(job) => drain::phase(&job),
            None => {
                // Created once; a Job's pod template cannot change afterwards.
                let Some(job) =
                    set.and_then(|s| drain::job(org, s, t, target.as_deref(), admin_port))
                else {
                    continue;
                };
                match ensure(&ctx.client, &ctx.stores.jobs, &job).await {
                    Ok(_) => started.push(format!("{} (Job {})", t.claim, t.job)),
                    Err(e) => {
                        problems.push(Problem::new("DrainNotStarted", e.to_string()));
                        continue;
                    }
                }
                drain::Phase::Pending
            }
        };
        let entry = |phase: &str, messages, message| crds::DrainingClaim {
            claim: t.claim.clone(),
            job: t.job.clone(),
            phase: phase.into(),
            messages,
            message,
        };
        match phase {
            drain::Phase::Succeeded => {
                let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
                match api.delete(&t.claim, &DeleteParams::background()).await {
                    Ok(_) => drained.push(t.claim.clone()),
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => problems.push(Problem::new(
                        "DrainedClaimKept",
                        format!("deleting drained claim {}: {e}", t.claim),
                    )),
                }
            }
            drain::Phase::Failed(why) => {
                problems.push(Problem::new(
                    "DrainFailed",
                    format!(
                        "Job {} draining spool claim {} failed: {why}; the claim and its mail are kept: see the Job's logs, then delete the Job to try again",
                        t.job, t.claim
                    ),
                ));
                out.push(entry("Failed", None, Some(why)));
            }
            drain::Phase::Pending => out.push(entry("Pending", None, None)),
            drain::Phase::Running => {
                let messages = drain_progress(ctx, ns, &t.job, admin_port).await;
                out.push(entry("Running", messages, None));
            }
        }
    }
    if !started.is_empty() {
        let how = if target.is_some() {
            "hand their queues over to the remaining relay pods"
        } else {
            "deliver their queues"
        };
        let note = format!(
            "spool claims of relay pods that are gone are drained: {}; the Jobs {how}",
            started.join(", ")
        );
        publish(ctx, org, EventType::Normal, "DrainStarted", &note).await;
    }
    if !drained.is_empty() {
        let note = format!(
            "drained spool claims are empty and were deleted: {}",
            drained.join(", ")
        );
        publish(ctx, org, EventType::Normal, "SpoolDrained", &note).await;
    }
    // Jobs whose claim is gone (drained and deleted) or wanted back (scaled up again).
    let drain_labels = drain::selector_labels(&name);
    for job in in_namespace(&ctx.stores.jobs, ns) {
        if !selected(job.as_ref(), &drain_labels)
            || to_drain.iter().any(|t| t.job == job.name_any())
            || !matches!(
                drain::phase(&job),
                drain::Phase::Succeeded | drain::Phase::Failed(_)
            )
        {
            continue;
        }
        let api: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
        match api
            .delete(&job.name_any(), &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                tracing::warn!(namespace = %ns, job = %job.name_any(), "cannot delete a finished drain Job: {e}")
            }
        }
    }
    out
}

/// Messages the running pod of drain Job `job` still has, if it says.
async fn drain_progress<P: TlsProber>(
    ctx: &Context<P>,
    ns: &str,
    job: &str,
    port: u16,
) -> Option<u64> {
    let pod = in_namespace(&ctx.stores.pods, ns).into_iter().find(|p| {
        p.labels().get("job-name").map(String::as_str) == Some(job)
            && p.metadata.deletion_timestamp.is_none()
    })?;
    let ip = pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
    ctx.pod_reports.drain_remaining(ip, port).await.ok()
}

/// Annotation on a relay pod: the content hash of the config and files it should load.
/// Writing it makes the kubelet sync the pod at once, and a sync refreshes the pod's
/// ConfigMap and Secret volumes: a change is in force within seconds, instead of after
/// the kubelet's periodic sync (a minute or more). The pod template is not touched, so
/// nothing restarts.
pub const WANTS_ANNOTATION: &str = "smtprelay.dev/wants-content-hash";

/// Annotates each ready relay pod that reports another config (or older Secret files)
/// than `hash` / `content_hash` with [`WANTS_ANNOTATION`], once per content hash. Only
/// that annotation is applied (server-side, the operator's field manager). A pod that
/// refuses the annotation is logged: its kubelet will still refresh the files later.
async fn nudge_pods<P: TlsProber>(
    ctx: &Context<P>,
    ns: &str,
    reports: &[PodReport],
    hash: &str,
    content_hash: &str,
) {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    for r in reports {
        let Ok(run) = &r.running else { continue };
        let behind = run.hash != hash
            || run
                .content_hash
                .as_deref()
                .is_some_and(|c| c != content_hash);
        if !behind {
            continue;
        }
        let nudged = ctx
            .stores
            .pods
            .get(&ObjectRef::new(&r.pod).within(ns))
            .is_some_and(|p| {
                p.annotations().get(WANTS_ANNOTATION).map(String::as_str) == Some(content_hash)
            });
        if nudged {
            continue;
        }
        let body = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": r.pod, "namespace": ns,
                "annotations": {WANTS_ANNOTATION: content_hash}},
        });
        if let Err(e) = api
            .patch(
                &r.pod,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
        {
            tracing::warn!(namespace = %ns, pod = %r.pod, "cannot annotate the relay pod to refresh its config now: {e}");
        }
    }
}

/// Whether `object` carries every label of `selector` (a `matchLabels` selector).
fn selected<K: Resource>(
    object: &K,
    selector: &std::collections::BTreeMap<String, String>,
) -> bool {
    let labels = object.labels();
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// What every ready relay pod of `org` says about its config, asked concurrently.
async fn pod_reports<P: TlsProber>(
    ctx: &Context<P>,
    ns: &str,
    org: &str,
    admin_port: u16,
) -> Vec<PodReport> {
    let selector = children::selector_labels(org);
    let ready: Vec<(String, std::net::IpAddr)> = in_namespace(&ctx.stores.pods, ns)
        .into_iter()
        .filter(|p| selected(p.as_ref(), &selector) && p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let status = p.status.as_ref()?;
            let ready = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let ip = status.pod_ip.as_deref()?.parse().ok()?;
            ready.then(|| (p.name_any(), ip))
        })
        .collect();
    let asks = ready.into_iter().map(|(pod, ip)| async move {
        let running = ctx.pod_reports.running(ip, admin_port).await;
        PodReport { pod, running }
    });
    futures::future::join_all(asks).await
}

/// The route as the operator probes it: its CA file (a Secret mount path in relay pods) is
/// written from the Secret's `ca.crt` under `dir`. If that fails the path stays as it is
/// and the probe reports the unreadable file, which is what the relay would hit too.
async fn with_local_ca(
    cfg: &RouteConfig,
    route: &MailRoute,
    secrets: &[Secret],
    dir: Option<&std::path::Path>,
) -> RouteConfig {
    let mut cfg = cfg.clone();
    let (Some(dir), Some(secret_ref)) = (dir, route.spec.tls.trusted_ca_secret_ref.as_ref()) else {
        return cfg;
    };
    if cfg.tls.extra_ca_file.is_none() {
        return cfg;
    }
    let Some(ca) = secrets
        .iter()
        .find(|s| s.name_any() == secret_ref.name)
        .and_then(|s| crate::local::secret_value(s, "ca.crt"))
    else {
        return cfg;
    };
    let folder = dir
        .join(route.namespace().unwrap_or_default())
        .join(&secret_ref.name);
    let file = folder.join("ca.crt");
    let written = async {
        tokio::fs::create_dir_all(&folder).await?;
        tokio::fs::write(&file, ca).await
    }
    .await;
    match written {
        Ok(()) => cfg.tls.extra_ca_file = Some(file.to_string_lossy().into_owned()),
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "could not write CA file for probing")
        }
    }
    cfg
}

/// Every Organization of the namespace of a changed object: one namespace is one
/// organization, so a change to any of its objects reconciles it.
fn organizations_in(
    store: &Store<Organization>,
    namespace: Option<String>,
) -> Vec<ObjectRef<Organization>> {
    store
        .state()
        .into_iter()
        .filter(|o| o.namespace() == namespace)
        .map(|o| ObjectRef::from_obj(o.as_ref()))
        .collect()
}

/// Inputs change the relay on a new generation (spec) or new labels (selectors match
/// IpAllowRanges by label); status writes, the operator's own included, do not.
fn input_changed<K: Resource>(obj: &K) -> Option<u64> {
    predicates::generation::<K>
        .combine(predicates::labels::<K>)
        .hash_property(obj)
}

/// A watch of every `K` that feeds `writer` and yields the objects whose spec or labels
/// changed.
fn inputs<K>(
    client: &Client,
    writer: reflector::store::Writer<K>,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    watcher(Api::<K>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(input_changed::<K>, Default::default())
}

/// A watch of the operator's children of kind `K` (by label) that feeds `writer`.
fn children_of<K>(
    client: &Client,
    writer: reflector::store::Writer<K>,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let owned = watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
    watcher(Api::<K>::all(client.clone()), owned)
        .default_backoff()
        .reflect(writer)
        .applied_objects()
}

/// Runs the controller until `shutdown` resolves.
///
/// Every watched kind feeds a reflector store that reconciles read from. Organizations
/// and their inputs trigger a reconcile only when their spec or labels change, so the
/// operator's own status writes do not reconcile again; children trigger one on any
/// change (a StatefulSet's status is how a rollout is seen), and so do relay pods.
pub async fn run<P: TlsProber>(
    ctx: Arc<Context<P>>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let Some(w) = ctx.writers.lock().ok().and_then(|mut w| w.take()) else {
        tracing::error!("the controller of this context is already running");
        return;
    };
    let client = ctx.client.clone();
    let stores = ctx.stores.clone();
    let (s1, s2, s3, s4, s5) = (
        stores.organizations.clone(),
        stores.organizations.clone(),
        stores.organizations.clone(),
        stores.organizations.clone(),
        stores.organizations.clone(),
    );
    Controller::for_stream(
        inputs(&client, w.organizations),
        stores.organizations.clone(),
    )
    .owns_stream(children_of(&client, w.config_maps))
    .owns_stream(children_of(&client, w.deployments))
    .owns_stream(children_of(&client, w.stateful_sets))
    .owns_stream(children_of(&client, w.services))
    .owns_stream(children_of(&client, w.pdbs))
    .owns_stream(children_of(&client, w.network_policies))
    // A drain Job finishing lets its claim go.
    .owns_stream(children_of(&client, w.jobs))
    // A relay pod turning ready (or going) changes which pods must report the config.
    .watches_stream(children_of(&client, w.pods), move |p| {
        organizations_in(&s4, p.namespace())
    })
    // A spool claim left behind (a scale-down) is drained.
    .watches_stream(children_of(&client, w.claims), move |c| {
        organizations_in(&s5, c.namespace())
    })
    .watches_stream(inputs(&client, w.settings), move |o| {
        organizations_in(&s1, o.namespace())
    })
    .watches_stream(inputs(&client, w.ranges), move |o| {
        organizations_in(&s2, o.namespace())
    })
    .watches_stream(inputs(&client, w.routes), move |o| {
        organizations_in(&s3, o.namespace())
    })
    .graceful_shutdown_on(shutdown)
    .run(reconcile, error_policy, ctx)
    .for_each(|result| async move {
        match result {
            Ok((org, _)) => tracing::debug!(organization = %org.name, "reconciled"),
            Err(e) => tracing::warn!(error = %e, "reconcile error"),
        }
    })
    .await;
}
