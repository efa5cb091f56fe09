//! The objects the operator owns for one Organization, built by pure functions.
//!
//! [`build`] turns an Organization, its rendered [`RelayConfig`]
//! and the hash of its mounted Secrets into the ConfigMap, StatefulSet, its headless
//! Service, the client Service, PodDisruptionBudget and NetworkPolicy that run its relay.
//! Names come from [`names`], so they are valid whatever the Organization
//! and its Secrets are called.
//! The same inputs always give the same objects, so server-side apply with one field manager
//! is idempotent, and golden files pin the output.
//!
//! Each relay pod owns its spool: a claim from the StatefulSet's `volumeClaimTemplates`
//! (an emptyDir only when `spool.ephemeral` says so), kept when a pod is replaced or the
//! StatefulSet scaled down, so mail acknowledged by a pod waits on its claim for the next
//! pod with that ordinal.
//!
//! Secrets are mounted key by key ([`secret_mounts`]): a Secret enters the pod template
//! only with every key its volume needs, since a pod naming a missing key never starts,
//! and every Secret volume is optional, so a Secret deleted later stops no pod.
//!
//! Neither the config hash nor the Secrets' hash is in the pod template: relays reload
//! the ConfigMap and every file it names (TLS keys, credentials, CA roots) when their
//! content changes, so no change of configuration or Secret restarts a pod. The Secrets'
//! hash sits on the ConfigMap ([`SECRETS_HASH_ANNOTATION`]) for the audit log only.
//!
//! Nothing here talks to the API server; `controller` applies what this module builds.

use std::collections::{BTreeMap, BTreeSet};

use crds::{MailRoute, Organization, ServiceType};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    HTTPGetAction, KeyToPath, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, Secret,
    SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec,
    TopologySpreadConstraint, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use relay::config::RelayConfig;
use sha2::{Digest, Sha256};

use super::identity::{
    CONFIG_DIR, CONFIG_KEY, MANAGED_BY, SPOOL_VOLUME, drain_selector_labels, owner_reference,
    pods_service_name, relay_name, selector_labels, stateful_set_name,
};
use super::names;

/// ConfigMap annotation holding the hash of the mounted Secrets' data (the audit log's
/// `SecretsChanged` Event; it restarts nothing).
pub const SECRETS_HASH_ANNOTATION: &str = "smtprelay.dev/secrets-hash";
/// ConfigMap annotation holding the hash of the RelayConfig it carries.
pub const CONFIG_HASH_ANNOTATION: &str = "smtprelay.dev/config-hash";
/// Port of the relay's `/metrics`, `/healthz` and `/readyz`.
const ADMIN_PORT_NAME: &str = "admin";
/// Non-root user the relay runs as (the distroless `nonroot` user).
const RELAY_UID: i64 = 65532;
/// Spool claim (or emptyDir size limit) when `spool.size` is unset.
pub const DEFAULT_SPOOL_SIZE: &str = "1Gi";
/// Seconds a stopping relay keeps its listeners open after turning unready, so that
/// endpoints and load balancers stop sending it new connections first, unless
/// `relay.drainDelaySeconds` says otherwise.
pub const DRAIN_DELAY_SECONDS: i64 = 10;
/// Most seconds of the stop budget given to open sessions (a message in DATA finishing);
/// a session still open after that is cut by the kubelet and its unacknowledged message
/// retried by the client.
pub const SESSION_FINISH_CAP_SECONDS: i64 = 300;
/// Seconds of the stop budget given to delivery attempts under way (four connect
/// timeouts of the default 30 s); one still running after that is cut, and its message
/// stays on the spool for the next attempt.
pub const DELIVERY_FINISH_SECONDS: i64 = 120;
/// Seconds a probe waits for `/healthz` or `/readyz`: a relay busy for a moment (a large
/// spool being indexed, a burst of sessions) is not dead.
pub const PROBE_TIMEOUT_SECONDS: i32 = 3;
/// Label on spool claims (through the claim template): the UID of the Organization whose
/// relay made them, so that a later Organization of the same name never takes them over.
pub const ORGANIZATION_UID_LABEL: &str = "smtprelay.dev/organization-uid";
/// Seconds the startup probe waits for a relay to recover its spool (a large queue is
/// read and indexed before the relay listens): 360 checks 5 s apart.
pub const STARTUP_BUDGET_SECONDS: i32 = 1800;

/// Settings of the operator that shape children but are not part of the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildDefaults {
    /// Relay image when `spec.relay.image` is unset.
    pub relay_image: String,
    /// Namespaces whose pods may reach the relay's admin port (`/metrics`, queue
    /// administration): the operator's own and the monitoring namespace.
    pub admin_namespaces: Vec<String>,
    /// The operator's namespace: the only one that reaches a drain pod's status port.
    pub operator_namespace: String,
}

/// The relay image of this operator's release (what `images/build.sh` tags).
pub const DEFAULT_RELAY_IMAGE: &str = concat!("smtprelay-relay:", env!("CARGO_PKG_VERSION"));

impl Default for ChildDefaults {
    fn default() -> Self {
        Self {
            relay_image: DEFAULT_RELAY_IMAGE.into(),
            admin_namespaces: vec!["smtprelay-system".into(), "monitoring".into()],
            operator_namespace: "smtprelay-system".into(),
        }
    }
}

/// Why a Secret is mounted into relay pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SecretUse {
    /// `relay.tlsSecretRef`: `tls.crt` and `tls.key`.
    Tls,
    /// `authSecretRef`: the `credentials` file.
    Auth,
    /// A route's `tls.trustedCaSecretRef`: `ca.crt`.
    Ca,
    /// A route's `auth.secretRef`: `username`, and `password` or `token`.
    RouteAuth,
    /// `relay.limitStore.passwordSecretRef`: `password`.
    RedisPassword,
    /// An entry of `dkim`: `private.key`, the PEM private key.
    Dkim,
    /// `<org>-relay-admin`, made by the operator: the `token` queue administration needs.
    Admin,
}

/// A Secret the relay pods mount.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MountedSecret {
    pub usage: SecretUse,
    pub name: String,
}

/// Every Secret the Organization and its routes name, with why, whether it exists or not.
pub fn referenced_secrets(org: &Organization, routes: &[MailRoute]) -> Vec<MountedSecret> {
    let mut out = BTreeSet::new();
    let mut add = |usage, name: &str| {
        out.insert(MountedSecret {
            usage,
            name: name.to_string(),
        });
    };
    if let Some(r) = &org.spec.relay.tls_secret_ref {
        add(SecretUse::Tls, &r.name);
    }
    if let Some(r) = &org.spec.auth_secret_ref {
        add(SecretUse::Auth, &r.name);
    }
    if let Some(r) = org
        .spec
        .relay
        .limit_store
        .as_ref()
        .and_then(|s| s.password_secret_ref.as_ref())
    {
        add(SecretUse::RedisPassword, &r.name);
    }
    for k in &org.spec.dkim {
        add(SecretUse::Dkim, &k.secret_ref.name);
    }
    for route in routes {
        if route.namespace() != org.namespace() {
            continue;
        }
        if let Some(r) = &route.spec.tls.trusted_ca_secret_ref {
            add(SecretUse::Ca, &r.name);
        }
        if let Some(a) = &route.spec.auth {
            add(SecretUse::RouteAuth, &a.secret_ref.name);
        }
    }
    add(SecretUse::Admin, &admin_secret_name(&org.name_any()));
    out.into_iter().collect()
}

/// Secrets the pods mount: those the Organization and its routes name *and* that exist
/// (a missing Secret is a render finding). `relayctl run` writes these files; the
/// controller chooses with [`secret_mounts`], which also looks at keys and at the pods
/// running now.
pub fn mounted_secrets(
    org: &Organization,
    routes: &[MailRoute],
    existing: &BTreeSet<String>,
) -> Vec<MountedSecret> {
    referenced_secrets(org, routes)
        .into_iter()
        .filter(|m| existing.contains(&m.name))
        .collect()
}

/// The keys of a Secret its volume's items name and a relay needs: a Secret without
/// one of them is not put into a pod template. A route's auth Secret holds only the keys of
/// its mechanism and grant (`password`, `token`, `clientSecret`, …): it needs none in
/// particular.
pub fn required_keys(usage: SecretUse) -> &'static [&'static str] {
    match usage {
        SecretUse::Tls => &["tls.crt", "tls.key"],
        SecretUse::Auth => &["credentials"],
        SecretUse::Ca => &["ca.crt"],
        SecretUse::RouteAuth => &[],
        SecretUse::RedisPassword => &["password"],
        SecretUse::Dkim => &[crate::render::DKIM_SECRET_KEY],
        SecretUse::Admin => &["token"],
    }
}

/// A key a Secret lacks that the relay needs from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingKey {
    pub usage: SecretUse,
    pub secret: String,
    pub key: String,
    /// The running pods already mount the Secret (it stays mounted; the relay reports the
    /// missing file); otherwise it was not added to the pod template.
    pub mounted: bool,
}

impl MissingKey {
    /// The Degraded message: which Secret, which key, what it is for, what happens.
    pub fn message(&self) -> String {
        let what = match self.usage {
            SecretUse::Tls => "the relay's TLS certificate (relay.tlsSecretRef)",
            SecretUse::Auth => "SMTP AUTH credentials (authSecretRef)",
            SecretUse::Ca => "a route's private CA roots (tls.trustedCaSecretRef)",
            SecretUse::RouteAuth => "a route's credentials (auth.secretRef)",
            SecretUse::RedisPassword => "the Redis password (limitStore.passwordSecretRef)",
            SecretUse::Dkim => "a DKIM signing key (dkim[].secretRef)",
            SecretUse::Admin => "the queue administration token",
        };
        let then = if self.mounted {
            "the running relay pods keep the Secret mounted and report the missing file"
        } else {
            "the Secret is not mounted, so the relay pods keep running as they are"
        };
        format!(
            "Secret {} has no key {} ({what}): {then}; add the key to the Secret",
            self.secret, self.key
        )
    }
}

/// The Secrets relay pods mount, as the kubelet will see them, and the keys missing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretMounts {
    pub mounted: Vec<MountedSecret>,
    pub missing: Vec<MissingKey>,
}

/// Which Secrets go into the pod template. A pod whose template names a Secret key that
/// does not exist never starts (the kubelet keeps it in `ContainerCreating`), and a
/// rollout replaces running pods with such pods one by one; so the template changes only
/// towards Secrets that hold every key their volume needs ([`required_keys`]):
///
/// - a Secret the pods of `previous` (the StatefulSet as it is) mount stays mounted,
///   whatever happened to it: deleted to revoke it, or a key removed (every Secret volume
///   is optional, so such pods still start, and the relay reports the missing file);
/// - a Secret not yet mounted is added once it exists with every key; one that lacks a
///   key is left out and reported in `missing`;
/// - a Secret no longer named goes.
pub fn secret_mounts(
    org: &Organization,
    routes: &[MailRoute],
    secrets: &[Secret],
    previous: Option<&StatefulSet>,
) -> SecretMounts {
    let running: BTreeSet<(String, String)> = previous
        .and_then(|s| s.spec.template.spec.as_ref())
        .and_then(|p| p.volumes.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|v| Some((v.name.clone(), v.secret.as_ref()?.secret_name.clone()?)))
        .collect();
    let mut out = SecretMounts::default();
    for m in referenced_secrets(org, routes) {
        let (volume, _, _) = secret_mount(&m);
        let mounted_now = running.contains(&(volume, m.name.clone()));
        let secret = secrets.iter().find(|s| s.name_any() == m.name);
        let lacking: Vec<&str> = secret
            .map(|s| {
                required_keys(m.usage)
                    .iter()
                    .copied()
                    .filter(|k| crate::secrets::secret_value(s, k).is_none())
                    .collect()
            })
            .unwrap_or_default();
        for key in &lacking {
            out.missing.push(MissingKey {
                usage: m.usage,
                secret: m.name.clone(),
                key: (*key).to_string(),
                mounted: mounted_now,
            });
        }
        if mounted_now || (secret.is_some() && lacking.is_empty()) {
            out.mounted.push(m);
        }
    }
    out
}

/// True when the pod template of `sts` mounts the admin token Secret.
pub fn mounts_admin_token(sts: &StatefulSet) -> bool {
    sts.spec
        .template
        .spec
        .as_ref()
        .and_then(|p| p.volumes.as_ref())
        .is_some_and(|v| v.iter().any(|v| v.name == ADMIN_VOLUME))
}

/// Volume of the admin token Secret in relay pods.
const ADMIN_VOLUME: &str = "admin";

/// Name of the Secret holding the admin token of an Organization's relays (key `token`).
pub fn admin_secret_name(org: &str) -> String {
    names::child_name("", org, "-relay-admin")
}

/// The admin token Secret the operator creates when it is missing (never replaced: an
/// operator may rotate the token by editing it). Owned by the Organization.
pub fn admin_secret(org: &Organization, token: &str) -> Secret {
    Secret {
        metadata: meta(org, admin_secret_name(&org.name_any())),
        type_: Some("Opaque".into()),
        string_data: Some(BTreeMap::from([("token".to_string(), token.to_string())])),
        ..Default::default()
    }
}

/// SHA-256 over the names and data of the mounted Secrets, in a fixed order. `stringData`
/// counts as data (manifests loaded from files carry it; the API server folds it into
/// `data`), so both spellings of one Secret hash the same.
pub fn secrets_hash(mounted: &[MountedSecret], secrets: &[Secret]) -> String {
    let mut hasher = Sha256::new();
    for m in mounted {
        // The admin token is read on every queue request: changing it reloads nothing.
        if m.usage == SecretUse::Admin {
            continue;
        }
        let Some(secret) = secrets.iter().find(|s| s.name_any() == m.name) else {
            continue;
        };
        let mut data: BTreeMap<&str, &[u8]> = BTreeMap::new();
        for (k, ByteString(v)) in secret.data.iter().flatten() {
            data.insert(k, v);
        }
        for (k, v) in secret.string_data.iter().flatten() {
            data.insert(k, v.as_bytes());
        }
        hasher.update(format!("{:?}\0{}\0", m.usage, m.name).as_bytes());
        for (k, v) in data {
            hasher.update(k.as_bytes());
            hasher.update([0]);
            hasher.update((v.len() as u64).to_be_bytes());
            hasher.update(v);
        }
    }
    hex::encode(hasher.finalize())
}

/// The volume, mount directory and keys of a mounted Secret in relay pods.
fn secret_mount(m: &MountedSecret) -> (String, String, &'static [&'static str]) {
    let env = crate::render::RenderEnv::pod();
    match m.usage {
        SecretUse::Tls => ("tls".into(), env.tls_dir.clone(), &["tls.crt", "tls.key"]),
        SecretUse::Auth => ("auth".into(), env.credentials_dir.clone(), &["credentials"]),
        SecretUse::Ca => (
            ca_volume_name(&m.name),
            format!("{}/{}", env.ca_dir, m.name),
            &["ca.crt"],
        ),
        SecretUse::RouteAuth => (
            route_auth_volume_name(&m.name),
            format!("{}/{}", env.route_auth_dir(), m.name),
            crate::render::ROUTE_AUTH_KEYS,
        ),
        SecretUse::Dkim => {
            let file = env.dkim_key_file(&m.name);
            let dir = file.rsplit_once('/').map_or(file.as_str(), |(d, _)| d);
            (
                dkim_volume_name(&m.name),
                dir.to_string(),
                &[crate::render::DKIM_SECRET_KEY],
            )
        }
        SecretUse::RedisPassword => {
            let file = env.redis_password_file();
            let dir = file.rsplit_once('/').map_or(file.as_str(), |(d, _)| d);
            ("redis".into(), dir.to_string(), &["password"])
        }
        SecretUse::Admin => {
            let file = env.admin_token_file();
            let dir = file.rsplit_once('/').map_or(file.as_str(), |(d, _)| d);
            (ADMIN_VOLUME.into(), dir.to_string(), &["token"])
        }
    }
}

/// The content hash a relay pod reports once its kubelet has written the current data
/// of the mounted Secrets: [`relay::ingress::generation::content_hash`] over the files as they
/// appear in the pod. A key a Secret lacks is a missing file there too.
pub fn content_hash_in_pods(
    config: &RelayConfig,
    mounted: &[MountedSecret],
    secrets: &[Secret],
) -> String {
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for m in mounted {
        let Some(secret) = secrets.iter().find(|s| s.name_any() == m.name) else {
            continue;
        };
        let (_, dir, keys) = secret_mount(m);
        for key in keys {
            let value = secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(*key))
                .map(|v| v.as_bytes().to_vec())
                .or_else(|| {
                    secret
                        .data
                        .as_ref()
                        .and_then(|d| d.get(*key))
                        .map(|ByteString(v)| v.clone())
                });
            if let Some(value) = value {
                files.insert(format!("{dir}/{key}"), value);
            }
        }
    }
    relay::ingress::generation::content_hash_with(config, |path| {
        files
            .get(path)
            .cloned()
            .ok_or_else(|| std::io::ErrorKind::NotFound.into())
    })
}

/// Everything applied for one Organization.
#[derive(Clone, Debug, PartialEq)]
pub struct Children {
    pub config_map: ConfigMap,
    pub stateful_set: StatefulSet,
    /// The headless Service of the StatefulSet (stable pod names).
    pub pods_service: Service,
    /// The Service clients connect to.
    pub service: Service,
    pub pdb: PodDisruptionBudget,
    pub network_policy: NetworkPolicy,
    /// Ingress of the Organization's drain pods: their status port, from the operator.
    pub drain_network_policy: NetworkPolicy,
}

impl Children {
    /// All children as one multi-document YAML stream (golden files, `kubectl diff`).
    pub fn to_yaml(&self) -> Result<String, yaml_serde::Error> {
        let mut out = String::new();
        let mut push = |doc: String| {
            out.push_str("---\n");
            out.push_str(&doc);
        };
        push(yaml_serde::to_string(&self.config_map)?);
        push(yaml_serde::to_string(&self.stateful_set)?);
        push(yaml_serde::to_string(&self.pods_service)?);
        push(yaml_serde::to_string(&self.service)?);
        push(yaml_serde::to_string(&self.pdb)?);
        push(yaml_serde::to_string(&self.network_policy)?);
        push(yaml_serde::to_string(&self.drain_network_policy)?);
        Ok(out)
    }
}

/// Name of the ConfigMap holding the RelayConfig.
pub fn config_map_name(org: &str) -> String {
    names::child_name("", org, "-relay-config")
}

/// Name of the volume of a route's CA Secret: a DNS-1123 label even when the Secret's
/// name has dots or is long.
pub fn ca_volume_name(secret: &str) -> String {
    names::child_name("ca-", secret, "")
}

/// Name of the volume of a route's auth Secret (a DNS-1123 label, like
/// [`ca_volume_name`]).
pub fn route_auth_volume_name(secret: &str) -> String {
    names::child_name("route-auth-", secret, "")
}

/// Volume of a DKIM key Secret in relay pods.
pub fn dkim_volume_name(secret: &str) -> String {
    names::child_name("dkim-", secret, "")
}

fn labels(org: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(org);
    l.insert("app.kubernetes.io/component".into(), "relay".into());
    l.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
    l
}

fn meta(org: &Organization, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: org.namespace(),
        labels: Some(labels(&org.name_any())),
        owner_references: Some(vec![owner_reference(org)]),
        ..Default::default()
    }
}

/// True when the Organization asked for an emptyDir spool.
pub fn ephemeral_spool(org: &Organization) -> bool {
    org.spec.relay.spool.as_ref().is_some_and(|s| s.ephemeral)
}

/// `terminationGracePeriodSeconds` of relay pods: the budget of a relay's stop. After
/// SIGTERM the relay turns unready and keeps listening for `drain_delay` seconds, then
/// closes its listeners and waits for open sessions (at most
/// [`SESSION_FINISH_CAP_SECONDS`] of this budget), then for delivery attempts under way
/// (at most [`DELIVERY_FINISH_SECONDS`]). With the default delay: 10 + 300 + 120 = 430 s.
///
/// The budget is an upper bound (a relay exits as soon as it is done) and depends on no
/// timeout of the configuration: a timeout changed in the Organization reloads the relays
/// and restarts no pod. A relay whose timeouts are longer than these caps is cut when the
/// budget ends; what it had not acknowledged is retried by its client, what it had is on
/// the spool.
pub fn termination_grace_seconds(drain_delay: i64) -> i64 {
    drain_delay
        .saturating_add(SESSION_FINISH_CAP_SECONDS)
        .saturating_add(DELIVERY_FINISH_SECONDS)
}

/// The drain delay of `org`'s relay pods.
pub fn drain_delay_seconds(org: &Organization) -> i64 {
    org.spec
        .relay
        .drain_delay_seconds
        .unwrap_or(DRAIN_DELAY_SECONDS)
        .clamp(0, 300)
}

/// `resources` with every quantity as the API server stores it (`1000m` is `1`), so that
/// an apply equals what the cluster holds.
pub fn canonical_resources(resources: &ResourceRequirements) -> ResourceRequirements {
    let canonical = |m: &Option<BTreeMap<String, Quantity>>| {
        m.as_ref().map(|m| {
            m.iter()
                .map(|(k, q)| {
                    (
                        k.clone(),
                        Quantity(crate::quantity::canonical_or_same(&q.0)),
                    )
                })
                .collect()
        })
    };
    ResourceRequirements {
        requests: canonical(&resources.requests),
        limits: canonical(&resources.limits),
        ..resources.clone()
    }
}

/// Requests of the relay container when `relay.resources` is unset: enough to be
/// scheduled as Burstable rather than evicted first as BestEffort. No limits: a relay
/// under load should not be throttled or killed for a short burst.
pub fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("100m".into())),
            ("memory".to_string(), Quantity("128Mi".into())),
        ])),
        ..Default::default()
    }
}

/// Builds the children of `org` from its rendered config and the hash of its mounted
/// Secrets (see [`secrets_hash`]).
pub fn build(
    org: &Organization,
    config: &RelayConfig,
    mounted: &[MountedSecret],
    secrets_hash: &str,
    defaults: &ChildDefaults,
) -> Children {
    let name = org.name_any();
    let relay = &org.spec.relay;
    let replicas = relay.replicas.unwrap_or(1).max(1);

    let mut cm_meta = meta(org, config_map_name(&name));
    cm_meta.annotations = Some(BTreeMap::from([
        (CONFIG_HASH_ANNOTATION.to_string(), config.hash.clone()),
        (
            SECRETS_HASH_ANNOTATION.to_string(),
            secrets_hash.to_string(),
        ),
    ]));
    let config_map = ConfigMap {
        metadata: cm_meta,
        data: Some(BTreeMap::from([(CONFIG_KEY.to_string(), config.to_json())])),
        ..Default::default()
    };

    let pdb = PodDisruptionBudget {
        metadata: meta(org, relay_name(&name)),
        spec: Some(PodDisruptionBudgetSpec {
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..Default::default()
            }),
            // A node drain takes one relay pod at a time; with one replica it may take
            // that one (its claim waits for it on the new node).
            max_unavailable: Some(IntOrString::Int(1)),
            // A pod that is not ready serves nobody: evicting it must never block a
            // node drain (the default, IfHealthyBudget, would while another is down).
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    Children {
        config_map,
        network_policy: network_policy(org, config, defaults),
        drain_network_policy: super::drain::network_policy(
            org,
            config.admin_listen.port(),
            &defaults.operator_namespace,
        ),
        stateful_set: stateful_set(org, config, mounted, defaults, replicas),
        pods_service: pods_service(org, config),
        service: service(org),
        pdb,
    }
}
/// Ingress to the relay pods: the SMTP ports from `relay.allowedClientCidrs` (anywhere
/// when empty), the admin port only from the operator's and the monitoring namespaces.
/// Egress is left open: the relay delivers to whatever MX hosts mail is addressed to.
fn network_policy(
    org: &Organization,
    config: &RelayConfig,
    defaults: &ChildDefaults,
) -> NetworkPolicy {
    let name = org.name_any();
    let port = |p: u16| NetworkPolicyPort {
        port: Some(IntOrString::Int(i32::from(p))),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    let cidrs = &org.spec.relay.allowed_client_cidrs;
    let smtp = NetworkPolicyIngressRule {
        ports: Some(vec![
            port(config.listeners.smtp.port()),
            port(config.listeners.submission.port()),
            port(config.listeners.smtps.port()),
        ]),
        from: (!cidrs.is_empty()).then(|| {
            cidrs
                .iter()
                .map(|c| NetworkPolicyPeer {
                    ip_block: Some(IPBlock {
                        cidr: c.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect()
        }),
    };
    let admin = NetworkPolicyIngressRule {
        ports: Some(vec![port(config.admin_listen.port())]),
        from: Some(
            defaults
                .admin_namespaces
                .iter()
                .map(|ns| NetworkPolicyPeer {
                    namespace_selector: Some(LabelSelector {
                        match_labels: Some(BTreeMap::from([(
                            "kubernetes.io/metadata.name".to_string(),
                            ns.clone(),
                        )])),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                // The Organization's drain Jobs hand queued mail over to its relays.
                .chain(std::iter::once(NetworkPolicyPeer {
                    pod_selector: Some(LabelSelector {
                        match_labels: Some(drain_selector_labels(&name)),
                        ..Default::default()
                    }),
                    ..Default::default()
                }))
                .collect(),
        ),
    };
    NetworkPolicy {
        metadata: meta(org, relay_name(&name)),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![smtp, admin]),
            ..Default::default()
        }),
    }
}

fn stateful_set(
    org: &Organization,
    config: &RelayConfig,
    mounted: &[MountedSecret],
    defaults: &ChildDefaults,
    replicas: i32,
) -> StatefulSet {
    let name = org.name_any();
    let relay = &org.spec.relay;
    let port = |name: &str, port: u16| ContainerPort {
        name: Some(name.into()),
        container_port: i32::from(port),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    let admin_port = config.admin_listen.port();
    let http_probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(ADMIN_PORT_NAME.into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(PROBE_TIMEOUT_SECONDS),
        ..Default::default()
    };
    let ephemeral = relay.spool.as_ref().is_some_and(|s| s.ephemeral);
    // As the API server stores it, so that an apply equals what it holds.
    let spool_size = Quantity(crate::quantity::canonical_or_same(
        &relay
            .spool
            .as_ref()
            .and_then(|s| s.size.clone())
            .unwrap_or_else(|| DEFAULT_SPOOL_SIZE.into()),
    ));
    let drain_delay = drain_delay_seconds(org);

    let mut volumes = vec![Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map_name(&name),
            ..Default::default()
        }),
        ..Default::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: "config".into(),
        mount_path: CONFIG_DIR.into(),
        read_only: Some(true),
        ..Default::default()
    }];
    for m in mounted {
        let (volume, path, keys) = secret_mount(m);
        volumes.push(Volume {
            name: volume.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(m.name.clone()),
                // Optional: a pod starts whatever happens to the Secret later (deleted to
                // revoke it, a key removed), and a running pod's files follow it; the
                // relay reports a missing file. Keys are checked before a Secret enters
                // the template (`secret_mounts`). A route's auth Secret holds only some of
                // `ROUTE_AUTH_KEYS`: the missing ones are skipped.
                optional: Some(true),
                items: Some(
                    keys.iter()
                        .map(|k| KeyToPath {
                            key: (*k).into(),
                            path: (*k).into(),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: volume,
            mount_path: path,
            read_only: Some(true),
            ..Default::default()
        });
    }
    if ephemeral {
        volumes.push(Volume {
            name: SPOOL_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(spool_size.clone()),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    mounts.push(VolumeMount {
        name: SPOOL_VOLUME.into(),
        mount_path: config.spool_dir.clone(),
        ..Default::default()
    });

    let container = Container {
        name: "relay".into(),
        image: Some(
            relay
                .image
                .clone()
                .unwrap_or_else(|| defaults.relay_image.clone()),
        ),
        command: Some(vec![
            "relay".into(),
            // One JSON object per line for the cluster's log collector.
            "--log-format".into(),
            "json".into(),
            "--config".into(),
            format!("{CONFIG_DIR}/{CONFIG_KEY}"),
            "--drain-delay-seconds".into(),
            drain_delay.to_string(),
        ]),
        ports: Some(vec![
            port("smtp", config.listeners.smtp.port()),
            port("submission", config.listeners.submission.port()),
            port("smtps", config.listeners.smtps.port()),
            port(ADMIN_PORT_NAME, admin_port),
        ]),
        // Started once `/healthz` answers (after spool recovery); restarted when it stops
        // answering; in the Service only while `/readyz` says the listeners take mail.
        startup_probe: Some(http_probe("/healthz", 5, STARTUP_BUDGET_SECONDS / 5)),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        readiness_probe: Some(http_probe("/readyz", 5, 2)),
        resources: Some(canonical_resources(
            &relay.resources.clone().unwrap_or_else(default_resources),
        )),
        volume_mounts: Some(mounts),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RELAY_UID),
            run_as_group: Some(RELAY_UID),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };

    let pod_annotations = BTreeMap::from([
        ("prometheus.io/scrape".to_string(), "true".to_string()),
        ("prometheus.io/port".to_string(), admin_port.to_string()),
        ("prometheus.io/path".to_string(), "/metrics".to_string()),
    ]);
    let mut claim_labels = labels(&name);
    if let Some(uid) = org.uid() {
        claim_labels.insert(ORGANIZATION_UID_LABEL.into(), uid);
    }
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(SPOOL_VOLUME.into()),
            labels: Some(claim_labels),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: relay
                .spool
                .as_ref()
                .and_then(|s| s.storage_class_name.clone()),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), spool_size)])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    StatefulSet {
        metadata: meta(org, stateful_set_name(&name)),
        spec: StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(pods_service_name(&name)),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..Default::default()
            },
            // Pods need no start order; a rollout replaces one pod at a time, each new
            // pod on the claim of the pod it replaces.
            pod_management_policy: Some("Parallel".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                ..Default::default()
            }),
            // Claims stay when pods go: a scaled-down or deleted relay's queue is kept
            // until it is drained.
            persistent_volume_claim_retention_policy: (!ephemeral).then(|| {
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Retain".into()),
                    when_scaled: Some("Retain".into()),
                }
            }),
            volume_claim_templates: (!ephemeral).then(|| vec![claim]),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(&name)),
                    annotations: Some(pod_annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(volumes),
                    termination_grace_period_seconds: Some(termination_grace_seconds(drain_delay)),
                    automount_service_account_token: Some(false),
                    topology_spread_constraints: (replicas > 1).then(|| spread(&name)),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        fs_group: Some(RELAY_UID),
                        // A large spool is not walked to chown it at every pod start.
                        fs_group_change_policy: Some("OnRootMismatch".into()),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Relay pods of one Organization spread over nodes, then zones: one node or zone going
/// down takes as few of them as it can. A preference (`ScheduleAnyway`), not a rule: a
/// cluster with fewer nodes than replicas still runs them all, and a claim bound to a
/// zone still gets its pod.
fn spread(org: &str) -> Vec<TopologySpreadConstraint> {
    ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
        .into_iter()
        .map(|key| TopologySpreadConstraint {
            max_skew: 1,
            topology_key: key.into(),
            when_unsatisfiable: "ScheduleAnyway".into(),
            label_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(org)),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect()
}

/// The headless Service that governs the StatefulSet: stable DNS names per pod
/// (`<relay>-N.<relay>-pods`), no load balancing. Not-ready pods are left out.
fn pods_service(org: &Organization, config: &RelayConfig) -> Service {
    let name = org.name_any();
    Service {
        metadata: meta(org, pods_service_name(&name)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector_labels(&name)),
            ports: Some(vec![ServicePort {
                name: Some(ADMIN_PORT_NAME.into()),
                port: i32::from(config.admin_listen.port()),
                target_port: Some(IntOrString::String(ADMIN_PORT_NAME.into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn service(org: &Organization) -> Service {
    let name = org.name_any();
    let ports = org.spec.relay.ports.clone().unwrap_or_default();
    let port = |name: &str, port: i32| ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    let service_type = match org
        .spec
        .relay
        .service_type
        .unwrap_or(ServiceType::ClusterIP)
    {
        ServiceType::ClusterIP => "ClusterIP",
        ServiceType::NodePort => "NodePort",
        ServiceType::LoadBalancer => "LoadBalancer",
    };
    // Traffic from outside the cluster goes only to relays on the node it reaches, so the
    // relay sees the client's own address (allow ranges, per-IP caps, `Received:`), not
    // a node's.
    let external = service_type != "ClusterIP";
    Service {
        metadata: meta(org, relay_name(&name)),
        spec: Some(ServiceSpec {
            type_: Some(service_type.into()),
            external_traffic_policy: external.then(|| "Local".into()),
            selector: Some(selector_labels(&name)),
            ports: Some(vec![
                port("smtp", ports.smtp),
                port("submission", ports.submission),
                port("smtps", ports.smtps),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The admin port of the relay pods of `set` (their container port `admin`).
pub fn admin_port_of(set: &StatefulSet) -> Option<u16> {
    admin_port_in(set.spec.template.spec.as_ref()?)
}

/// The admin port of a relay pod (or pod template): its container port named `admin`.
pub fn admin_port_in(spec: &PodSpec) -> Option<u16> {
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(ADMIN_PORT_NAME))
        .and_then(|p| u16::try_from(p.container_port).ok())
}

/// The Secret a relay pod (or pod template) mounts its admin token from, if it mounts one.
pub fn admin_token_secret_in(spec: &PodSpec) -> Option<String> {
    spec.volumes
        .iter()
        .flatten()
        .find(|v| v.name == ADMIN_VOLUME)
        .and_then(|v| v.secret.as_ref()?.secret_name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{Objects, RenderEnv, render};

    fn org(yaml: &str) -> Organization {
        yaml_serde::from_str(yaml).unwrap()
    }

    const ORG: &str = r#"
apiVersion: smtprelay.dev/v1alpha1
kind: Organization
metadata: {name: acme, namespace: acme, uid: 1234}
spec:
  domains: [acme.example]
  licenses: 1
  relay:
    replicas: 3
    tlsSecretRef: {name: relay-tls}
    limitStore: {type: Redis, url: "redis://redis:6379"}
"#;

    fn children_for(org: &Organization, secrets: &[Secret]) -> Children {
        let names: BTreeSet<String> = secrets.iter().map(|s| s.name_any()).collect();
        let rendered = render(
            "acme",
            Objects {
                organizations: std::slice::from_ref(org),
                settings: &[],
                ranges: &[],
                routes: &[],
                secrets: &names,
            },
            &RenderEnv::pod(),
        )
        .unwrap();
        let mounted = mounted_secrets(org, &[], &names);
        build(
            org,
            &rendered.config,
            &mounted,
            &secrets_hash(&mounted, secrets),
            &ChildDefaults::default(),
        )
    }

    fn tls_secret(cert: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("relay-tls".into()),
                namespace: Some("acme".into()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([
                ("tls.crt".into(), ByteString(cert.as_bytes().to_vec())),
                ("tls.key".into(), ByteString(b"key".to_vec())),
            ])),
            ..Default::default()
        }
    }

    fn pod_spec(c: &Children) -> PodSpec {
        c.stateful_set.spec.clone().template.spec.unwrap()
    }

    fn sts(c: &Children) -> StatefulSetSpec {
        c.stateful_set.spec.clone()
    }

    #[test]
    fn neither_secret_rotation_nor_config_changes_touch_the_pod_template() {
        let o = org(ORG);
        let before = children_for(&o, &[tls_secret("cert-1")]);
        let rotated = children_for(&o, &[tls_secret("cert-2")]);
        // The relay reloads the rotated files itself: no new pods.
        assert_eq!(sts(&before).template, sts(&rotated).template);
        let annotation = |c: &Children| {
            c.config_map.metadata.annotations.clone().unwrap()[SECRETS_HASH_ANNOTATION].clone()
        };
        assert_ne!(annotation(&before), annotation(&rotated));
        let mut more = o.clone();
        more.spec.licenses = 50;
        let reconfigured = children_for(&more, &[tls_secret("cert-1")]);
        assert_ne!(before.config_map, reconfigured.config_map);
        assert_eq!(sts(&before).template, sts(&reconfigured).template);
    }

    #[test]
    fn the_content_hash_pods_should_report_follows_each_mounted_file() {
        let o = org(ORG);
        let names = BTreeSet::from(["relay-tls".to_string()]);
        let config = render(
            "acme",
            Objects {
                organizations: std::slice::from_ref(&o),
                settings: &[],
                ranges: &[],
                routes: &[],
                secrets: &names,
            },
            &RenderEnv::pod(),
        )
        .unwrap()
        .config;
        let mounted = mounted_secrets(&o, &[], &names);
        let hash = |secret: Secret| content_hash_in_pods(&config, &mounted, &[secret]);
        let before = hash(tls_secret("cert-1"));
        assert_eq!(before, hash(tls_secret("cert-1")));
        assert_ne!(before, hash(tls_secret("cert-2")));
        let mut new_key = tls_secret("cert-1");
        new_key
            .data
            .as_mut()
            .unwrap()
            .insert("tls.key".into(), ByteString(b"key-2".to_vec()));
        assert_ne!(before, hash(new_key));
        // The document alone (no file readable) is another hash again.
        assert_ne!(before, content_hash_in_pods(&config, &[], &[]));
    }

    #[test]
    fn string_data_and_data_hash_alike() {
        let o = org(ORG);
        let mut as_string = tls_secret("x");
        as_string.data = None;
        as_string.string_data = Some(BTreeMap::from([
            ("tls.crt".into(), "cert-1".into()),
            ("tls.key".into(), "key".into()),
        ]));
        let mounted = mounted_secrets(&o, &[], &BTreeSet::from(["relay-tls".to_string()]));
        assert_eq!(
            secrets_hash(&mounted, &[as_string]),
            secrets_hash(&mounted, &[tls_secret("cert-1")])
        );
    }

    #[test]
    fn missing_tls_secret_is_not_mounted_and_the_spool_is_a_claim_per_pod() {
        let c = children_for(&org(ORG), &[]);
        let volumes = pod_spec(&c).volumes.unwrap();
        let names: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["config"]);
        let spec = sts(&c);
        let claim = &spec.volume_claim_templates.unwrap()[0];
        assert_eq!(claim.metadata.name.as_deref(), Some(SPOOL_VOLUME));
        let claim = claim.spec.clone().unwrap();
        assert_eq!(claim.access_modes.unwrap(), ["ReadWriteOnce"]);
        assert_eq!(
            claim.resources.unwrap().requests.unwrap()["storage"],
            Quantity(DEFAULT_SPOOL_SIZE.into())
        );
        let retain = spec.persistent_volume_claim_retention_policy.unwrap();
        assert_eq!(retain.when_scaled.as_deref(), Some("Retain"));
        assert_eq!(retain.when_deleted.as_deref(), Some("Retain"));
        assert_eq!(spec.service_name.as_deref(), Some("acme-relay-pods"));
        let headless = c.pods_service.spec.unwrap();
        assert_eq!(headless.cluster_ip.as_deref(), Some("None"));
        assert_eq!(
            c.pods_service.metadata.name.as_deref(),
            Some("acme-relay-pods")
        );
    }

    #[test]
    fn relayctl_queue_finds_the_relay_pods_their_admin_port_and_token_secret() {
        let admin = Secret {
            metadata: ObjectMeta {
                name: Some(admin_secret_name("acme")),
                namespace: Some("acme".into()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                "token".into(),
                ByteString(b"t".to_vec()),
            )])),
            ..Default::default()
        };
        let c = children_for(&org(ORG), &[admin]);
        let spec = pod_spec(&c);
        assert_eq!(
            admin_token_secret_in(&spec).as_deref(),
            Some("acme-relay-admin")
        );
        assert_eq!(admin_port_in(&spec), Some(9090));
        let labels = c
            .stateful_set
            .spec
            .template
            .metadata
            .and_then(|m| m.labels)
            .unwrap();
        let selects = |selector: String| {
            selector.split(',').all(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                labels.get(k).map(String::as_str) == Some(v)
            })
        };
        assert!(selects(crate::controller::identity::relay_pods_selector(
            Some("acme")
        )));
        assert!(selects(crate::controller::identity::relay_pods_selector(
            None
        )));
        assert!(!selects(crate::controller::identity::relay_pods_selector(
            Some("other")
        )));
        let drain = crate::controller::identity::drain_selector_labels("acme");
        assert_ne!(
            drain.get("app.kubernetes.io/name"),
            labels.get("app.kubernetes.io/name")
        );
        // Without the Secret there is no token to read, and relayctl says so.
        let bare = children_for(&org(ORG), &[]);
        assert_eq!(admin_token_secret_in(&pod_spec(&bare)), None);
    }

    #[test]
    fn an_ephemeral_spool_is_a_size_limited_empty_dir_and_no_claim() {
        let mut o = org(ORG);
        o.spec.relay.spool = Some(crds::SpoolSpec {
            size: Some("2Gi".into()),
            storage_class_name: None,
            ephemeral: true,
        });
        let c = children_for(&o, &[]);
        assert!(ephemeral_spool(&o));
        assert_eq!(sts(&c).volume_claim_templates, None);
        assert_eq!(sts(&c).persistent_volume_claim_retention_policy, None);
        let spool = pod_spec(&c)
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == SPOOL_VOLUME)
            .unwrap();
        assert_eq!(
            spool.empty_dir.unwrap().size_limit,
            Some(Quantity("2Gi".into()))
        );
    }

    #[test]
    fn pods_stop_within_one_budget_with_probes_and_default_requests() {
        let o = org(ORG);
        let c = children_for(&o, &[]);
        let pod = pod_spec(&c);
        // 10 s drain delay + 300 s for open sessions + 4 x 30 s connect timeout.
        assert_eq!(pod.termination_grace_period_seconds, Some(430));
        let relay = &pod.containers[0];
        let command = relay.command.clone().unwrap();
        assert_eq!(
            command[command.len() - 2..],
            ["--drain-delay-seconds".to_string(), "10".to_string()]
        );
        let path = |p: &Option<Probe>| p.clone().unwrap().http_get.unwrap().path.unwrap();
        assert_eq!(path(&relay.readiness_probe), "/readyz");
        assert_eq!(path(&relay.liveness_probe), "/healthz");
        let startup = relay.startup_probe.clone().unwrap();
        assert_eq!(
            startup.period_seconds.unwrap() * startup.failure_threshold.unwrap(),
            STARTUP_BUDGET_SECONDS
        );
        assert_eq!(relay.resources, Some(default_resources()));
        let mut sized = o.clone();
        let own = ResourceRequirements {
            requests: Some(BTreeMap::from([("cpu".into(), Quantity("2".into()))])),
            ..Default::default()
        };
        sized.spec.relay.resources = Some(own.clone());
        let c = children_for(&sized, &[]);
        assert_eq!(pod_spec(&c).containers[0].resources, Some(own));
    }

    #[test]
    fn a_stateful_set_name_leaves_room_for_its_pods_labels() {
        assert_eq!(stateful_set_name("acme"), relay_name("acme"));
        let long = format!("acme-{}", "x".repeat(58));
        let name = stateful_set_name(&long);
        assert!(name.len() <= names::MAX_STATEFUL_SET, "{name}");
        assert!(names::is_dns1035_label(&name));
        assert_ne!(name, stateful_set_name(&format!("acme-{}", "y".repeat(58))));
    }

    #[test]
    fn a_drain_takes_at_most_one_relay_pod_at_a_time() {
        let three = children_for(&org(ORG), &[]).pdb.spec.unwrap();
        assert_eq!(three.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(three.min_available, None);
        let mut single = org(ORG);
        single.spec.relay.replicas = None;
        let one = children_for(&single, &[]).pdb.spec.unwrap();
        assert_eq!(one.max_unavailable, Some(IntOrString::Int(1)));
    }

    #[test]
    fn children_are_owned_by_the_organization() {
        let c = children_for(&org(ORG), &[]);
        for refs in [
            &c.config_map.metadata.owner_references,
            &c.stateful_set.metadata.owner_references,
            &c.pods_service.metadata.owner_references,
            &c.service.metadata.owner_references,
            &c.pdb.metadata.owner_references,
        ] {
            let r = &refs.as_ref().unwrap()[0];
            assert_eq!(
                (r.kind.as_str(), r.name.as_str(), r.uid.as_str()),
                ("Organization", "acme", "1234")
            );
            assert_eq!(r.controller, Some(true));
        }
    }

    #[test]
    fn service_ports_type_traffic_policy_and_spool_claim_follow_the_spec() {
        let mut o = org(ORG);
        let internal = children_for(&o, &[]).service.spec.unwrap();
        assert_eq!(internal.external_traffic_policy, None);
        o.spec.relay.ports = Some(crds::ListenerPorts {
            smtp: 2025,
            submission: 2587,
            smtps: 2465,
        });
        o.spec.relay.spool = Some(crds::SpoolSpec {
            size: Some("10Gi".into()),
            storage_class_name: Some("fast".into()),
            ephemeral: false,
        });
        for (kind, name) in [
            (ServiceType::LoadBalancer, "LoadBalancer"),
            (ServiceType::NodePort, "NodePort"),
        ] {
            o.spec.relay.service_type = Some(kind);
            let svc = children_for(&o, &[]).service.spec.unwrap();
            assert_eq!(svc.type_.as_deref(), Some(name));
            // The relay sees the client's address, not a node's.
            assert_eq!(svc.external_traffic_policy.as_deref(), Some("Local"));
        }
        let c = children_for(&o, &[]);
        let svc = c.service.spec.clone().unwrap();
        let ports: Vec<(i32, String)> = svc
            .ports
            .unwrap()
            .into_iter()
            .map(|p| {
                let target = match p.target_port.unwrap() {
                    IntOrString::String(s) => s,
                    IntOrString::Int(i) => i.to_string(),
                };
                (p.port, target)
            })
            .collect();
        assert_eq!(
            ports,
            [
                (2025, "smtp".to_string()),
                (2587, "submission".to_string()),
                (2465, "smtps".to_string())
            ]
        );
        let claim = sts(&c).volume_claim_templates.unwrap()[0]
            .spec
            .clone()
            .unwrap();
        assert_eq!(claim.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            claim.resources.unwrap().requests.unwrap()["storage"],
            Quantity("10Gi".into())
        );
    }

    #[test]
    fn probes_wait_longer_than_a_second_and_volumes_keep_their_group_on_restart() {
        let pod = pod_spec(&children_for(&org(ORG), &[]));
        let relay = &pod.containers[0];
        for probe in [
            &relay.startup_probe,
            &relay.liveness_probe,
            &relay.readiness_probe,
        ] {
            let timeout = probe.as_ref().unwrap().timeout_seconds.unwrap_or(1);
            assert!(
                timeout > 1,
                "a relay busy for a second is not dead: {timeout}"
            );
        }
        let security = pod.security_context.unwrap();
        assert_eq!(
            security.fs_group_change_policy.as_deref(),
            Some("OnRootMismatch")
        );
    }

    #[test]
    fn several_replicas_spread_over_nodes_and_zones_and_one_does_not() {
        let three = pod_spec(&children_for(&org(ORG), &[]));
        let spread = three.topology_spread_constraints.unwrap();
        let keys: Vec<&str> = spread.iter().map(|c| c.topology_key.as_str()).collect();
        assert_eq!(
            keys,
            ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
        );
        for c in &spread {
            assert_eq!(c.max_skew, 1);
            assert_eq!(
                c.label_selector.as_ref().unwrap().match_labels,
                Some(selector_labels("acme"))
            );
        }
        let mut single = org(ORG);
        single.spec.relay.replicas = None;
        assert_eq!(
            pod_spec(&children_for(&single, &[])).topology_spread_constraints,
            None
        );
    }

    #[test]
    fn an_unhealthy_pod_never_blocks_a_node_drain() {
        let pdb = children_for(&org(ORG), &[]).pdb.spec.unwrap();
        assert_eq!(
            pdb.unhealthy_pod_eviction_policy.as_deref(),
            Some("AlwaysAllow")
        );
    }

    #[test]
    fn a_timeout_change_restarts_no_pod() {
        let o = org(ORG);
        let before = sts(&children_for(&o, &[])).template;
        let mut slower = o.clone();
        slower.spec.limits = Some(crds::LimitOverrides {
            session_timeout_seconds: Some(60),
            ..Default::default()
        });
        assert_eq!(sts(&children_for(&slower, &[])).template, before);
    }
}
