//! The controller: reconciles each Organization into a running relay.
//!
//! One namespace is one organization. A reconcile lists the namespace's objects, calls
//! [`render`] (the same function `relayctl` calls), applies the children built by
//! [`children::build`] with server-side apply under one field manager, and writes the
//! status of every kind. Every change it makes is also a Kubernetes Event on the object
//! concerned (the audit log); a reconcile that changes nothing writes nothing but the
//! idempotent applies.
//!
//! Render errors leave the children as they are (the previous config stays in force) and
//! mark the Organization Degraded. Deletion needs no finalizer: every child carries a
//! controller owner reference, so the garbage collector removes the relay with its
//! Organization.
//!
//! Pure parts live in submodules: [`children`] (what to apply), [`status`] (what to
//! report), [`leader`] (the election rule). [`metrics`] and [`probe`] are the edges.

pub mod children;
#[cfg(test)]
mod fixtures;
pub mod leader;
pub mod metrics;
pub mod probe;
pub mod status;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crds::{Condition, IpAllowRange, MailRoute, Organization, SmtpRelaySetting};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use relay::config::RouteConfig;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::render::{Finding, ObjectKind, Objects, RenderEnv, render};
use children::{ChildDefaults, MANAGED_BY};
use metrics::Metrics;
use probe::TlsProber;
use status::{ACCEPTED, DEGRADED, TLS_VERIFIED};

/// The one field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "smtprelay-operator";

/// Why a reconcile failed. Each variant names the object and the API call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Organization {0} has no namespace; Organizations are namespaced")]
    NoNamespace(String),
    #[error("listing {kind} in namespace {namespace}: {source}")]
    List {
        kind: &'static str,
        namespace: String,
        #[source]
        source: kube::Error,
    },
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
    #[error("writing the status of {kind} {namespace}/{name}: {source}")]
    Status {
        kind: String,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("publishing Event {reason} on {namespace}/{name}: {source}")]
    Event {
        reason: String,
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
            Error::List { .. } => "list",
            Error::Get { .. } => "get",
            Error::Apply { .. } => "apply",
            Error::Status { .. } => "status",
            Error::Event { .. } => "event",
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
    /// Requeue of a settled Organization (drift and probe schedule).
    pub settled_requeue: Duration,
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
        }
    }
}

/// The clock of status times and probe scheduling (injectable for tests).
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// Shared state of all reconciles.
pub struct Context<P> {
    pub client: Client,
    pub recorder: Recorder,
    pub settings: Settings,
    pub prober: P,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
}

impl<P: TlsProber> Context<P> {
    /// A context with the system clock and the reporter `smtprelay-operator`.
    pub fn new(
        client: Client,
        settings: Settings,
        prober: P,
        metrics: Arc<Metrics>,
        instance: Option<String>,
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
            metrics,
            clock: Arc::new(Timestamp::now),
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
    result
}

/// Failed reconciles are retried soon; the error is logged and counted.
pub fn error_policy<P: TlsProber>(
    org: Arc<Organization>,
    error: &Error,
    ctx: Arc<Context<P>>,
) -> Action {
    tracing::warn!(organization = %org.name_any(), %error, "reconcile failed");
    ctx.metrics.failed(error.metric_label());
    Action::requeue(Duration::from_secs(30))
}

async fn list<K>(client: &Client, namespace: &str, kind: &'static str) -> Result<Vec<K>, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    api.list(&ListParams::default())
        .await
        .map(|l| l.items)
        .map_err(|source| Error::List {
            kind,
            namespace: namespace.into(),
            source,
        })
}

async fn apply<K>(client: &Client, object: &K) -> Result<K, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let namespace = object.namespace().unwrap_or_default();
    let name = object.name_any();
    let api: Api<K> = Api::namespaced(client.clone(), &namespace);
    // Server-side apply needs apiVersion and kind in the body.
    let mut body = serde_json::to_value(object).unwrap_or_default();
    body["apiVersion"] = K::api_version(&()).into();
    body["kind"] = K::kind(&()).into();
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

/// Writes `status` (merge patch of the status subresource).
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
    let patch = serde_json::json!({ "status": new });
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| Error::Status {
            kind: K::kind(&()).into_owned(),
            namespace,
            name,
            source,
        })?;
    Ok(())
}

async fn publish<P, K>(
    ctx: &Context<P>,
    object: &K,
    type_: EventType,
    reason: &str,
    note: String,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()>,
{
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    ctx.recorder
        .publish(&event, &object.object_ref(&()))
        .await
        .map_err(|source| Error::Event {
            reason: reason.into(),
            namespace: object.meta().namespace.clone().unwrap_or_default(),
            name: object.meta().name.clone().unwrap_or_default(),
            source,
        })
}

/// Publishes an Event when condition `type_` changed between `old` and `new`.
async fn publish_if_changed<P, K>(
    ctx: &Context<P>,
    object: &K,
    old: &[Condition],
    new: &[Condition],
    type_: &str,
    bad_when: &str,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()>,
{
    let Some(now) = status::condition(new, type_) else {
        return Ok(());
    };
    let before = status::condition(old, type_);
    let same = before.is_some_and(|b| {
        (&b.status, &b.reason, &b.message) == (&now.status, &now.reason, &now.message)
    });
    if same {
        return Ok(());
    }
    let severity = if now.status == bad_when {
        EventType::Warning
    } else {
        EventType::Normal
    };
    publish(ctx, object, severity, &now.reason, now.message.clone()).await
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

/// When the status changed: one Event per condition of `watched` (`(type, status that
/// warns)`) that changed, then the status write. Events go first so that a failed Event
/// fails the reconcile before the status hides the change, and is retried with it.
async fn record<P, K, S>(
    ctx: &Context<P>,
    object: &K,
    old: Option<&S>,
    new: &S,
    watched: &[(&str, &str)],
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
    let before = old.map(|o| o.conditions()).unwrap_or_default();
    for (type_, warn_when) in watched {
        publish_if_changed(ctx, object, before, new.conditions(), type_, warn_when).await?;
    }
    write_status(&ctx.client, object, new).await?;
    Ok(())
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

async fn reconcile_org<P: TlsProber>(
    org: &Organization,
    ctx: &Context<P>,
) -> Result<Action, Error> {
    if org.meta().deletion_timestamp.is_some() {
        // Children go with their owner (owner references); nothing to undo here.
        return Ok(Action::await_change());
    }
    let name = org.name_any();
    let ns = org
        .namespace()
        .ok_or_else(|| Error::NoNamespace(name.clone()))?;
    let client = &ctx.client;
    let organizations: Vec<Organization> = list(client, &ns, "Organization").await?;
    let settings: Vec<SmtpRelaySetting> = list(client, &ns, "SmtpRelaySetting").await?;
    let ranges: Vec<IpAllowRange> = list(client, &ns, "IpAllowRange").await?;
    let routes: Vec<MailRoute> = list(client, &ns, "MailRoute").await?;
    let secrets: Vec<Secret> = list(client, &ns, "Secret").await?;
    let secret_names: BTreeSet<String> = secrets.iter().map(|s| s.name_any()).collect();
    let now = Time((ctx.clock)());

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
    let old_conditions = old_status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let rendered = match rendered {
        Ok(r) => r,
        Err(e) => {
            // Children stay as they are: the config in force keeps working.
            let new = status::organization_failed(org, &e.to_string(), &now);
            record(ctx, org, old_status.as_ref(), &new, &[(DEGRADED, "True")]).await?;
            return Ok(Action::requeue(ctx.settings.settled_requeue));
        }
    };

    // Children.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let relay_name = children::relay_name(&name);
    let existing = deployments
        .get_opt(&relay_name)
        .await
        .map_err(|source| Error::Get {
            kind: "Deployment",
            namespace: ns.clone(),
            name: relay_name.clone(),
            source,
        })?;
    let mounted = children::mounted_secrets(org, &routes, &secret_names);
    let secrets_hash = children::secrets_hash(&mounted, &secrets);
    let built = children::build(
        org,
        &rendered.config,
        &mounted,
        &secrets_hash,
        &ctx.settings.defaults,
    );
    apply::<ConfigMap>(client, &built.config_map).await?;
    if let Some(pvc) = &built.spool_claim {
        apply::<PersistentVolumeClaim>(client, pvc).await?;
    }
    let deployment = apply::<Deployment>(client, &built.deployment).await?;
    apply::<Service>(client, &built.service).await?;
    apply::<PodDisruptionBudget>(client, &built.pdb).await?;

    // Audit log of what changed.
    let new_hash = &rendered.config.hash;
    match old_status.as_ref().and_then(|s| s.config_hash.as_deref()) {
        Some(old) if old == new_hash => {}
        Some(old) => {
            publish(
                ctx,
                org,
                EventType::Normal,
                "ConfigUpdated",
                format!(
                    "relay config changed from {} to {}; relays reload it without restarting",
                    short(old),
                    short(new_hash)
                ),
            )
            .await?
        }
        None => {
            publish(
                ctx,
                org,
                EventType::Normal,
                "ConfigUpdated",
                format!("relay config {} applied (first version)", short(new_hash)),
            )
            .await?
        }
    }
    let old_secrets_hash = existing.as_ref().and_then(|d| {
        d.spec
            .template
            .metadata
            .as_ref()?
            .annotations
            .as_ref()?
            .get(children::SECRETS_HASH_ANNOTATION)
            .cloned()
    });
    match (&existing, old_secrets_hash) {
        (None, _) => {
            publish(
                ctx,
                org,
                EventType::Normal,
                "RelayCreated",
                format!(
                    "created Deployment {relay_name} with {} replica(s)",
                    org.spec.relay.replicas.unwrap_or(1).max(1)
                ),
            )
            .await?
        }
        (Some(_), Some(old)) if old == secrets_hash => {}
        (Some(_), old) => {
            let names: Vec<&str> = mounted.iter().map(|m| m.name.as_str()).collect();
            publish(
                ctx,
                org,
                EventType::Normal,
                "SecretsChanged",
                format!(
                    "mounted Secrets [{}] changed (hash {} to {}): relay pods restart to load them",
                    names.join(", "),
                    short(old.as_deref().unwrap_or("none")),
                    short(&secrets_hash)
                ),
            )
            .await?
        }
    }

    // Status of the Organization.
    let new = status::organization_rendered(
        org,
        &rendered.config,
        &rendered.findings,
        deployment.status.as_ref(),
        &now,
    );
    announce_findings(ctx, org, &old_conditions, &rendered.findings).await?;
    record(
        ctx,
        org,
        old_status.as_ref(),
        &new,
        &[(status::READY, "False")],
    )
    .await?;
    let ready =
        status::condition(&new.conditions, status::READY).is_some_and(|c| c.status == "True");

    // Status of the other kinds.
    for s in settings
        .iter()
        .filter(|s| s.namespace().as_deref() == Some(&ns))
    {
        let new = status::setting(s, &rendered.config, &rendered.findings, &now);
        let old = s.status.as_ref();
        record(ctx, s, old, &new, &[(ACCEPTED, "False")]).await?;
    }
    for r in ranges
        .iter()
        .filter(|r| r.namespace().as_deref() == Some(&ns))
    {
        let new = status::range(r, &rendered.findings, &now);
        let old = r.status.as_ref();
        record(ctx, r, old, &new, &[(ACCEPTED, "False")]).await?;
    }
    let interval =
        SignedDuration::try_from(ctx.settings.probe_interval).unwrap_or(SignedDuration::MAX);
    for route in routes
        .iter()
        .filter(|r| r.namespace().as_deref() == Some(&ns))
    {
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
                (!results.is_empty()).then_some(results)
            }
            _ => None,
        };
        let new = status::route(route, &rendered.findings, probe.as_ref(), &now);
        record(
            ctx,
            route,
            old,
            &new,
            &[(ACCEPTED, "False"), (TLS_VERIFIED, "False")],
        )
        .await?;
    }

    Ok(Action::requeue(if ready {
        ctx.settings
            .settled_requeue
            .min(ctx.settings.probe_interval)
    } else {
        ctx.settings.rollout_requeue
    }))
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

/// One Warning Event per Organization finding that is new since the last status.
async fn announce_findings<P: TlsProber>(
    ctx: &Context<P>,
    org: &Organization,
    old_conditions: &[Condition],
    findings: &[Finding],
) -> Result<(), Error> {
    let before = status::condition(old_conditions, DEGRADED)
        .filter(|c| c.status == "True")
        .map(|c| c.message.as_str())
        .unwrap_or_default();
    for f in findings
        .iter()
        .filter(|f| f.kind == ObjectKind::Organization)
    {
        if !before.contains(&f.message) {
            publish(ctx, org, EventType::Warning, f.reason, f.message.clone()).await?;
        }
    }
    if !before.is_empty() && !findings.iter().any(|f| f.kind == ObjectKind::Organization) {
        publish(
            ctx,
            org,
            EventType::Normal,
            "Recovered",
            "the problems reported earlier are resolved".into(),
        )
        .await?;
    }
    Ok(())
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

/// Runs the controller until `shutdown` resolves.
pub async fn run<P: TlsProber>(
    ctx: Arc<Context<P>>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let owned = watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
    let controller = Controller::new(
        Api::<Organization>::all(client.clone()),
        watcher::Config::default(),
    );
    let store = controller.store();
    let (s1, s2, s3, s4) = (store.clone(), store.clone(), store.clone(), store);
    controller
        .owns(Api::<ConfigMap>::all(client.clone()), owned.clone())
        .owns(Api::<Deployment>::all(client.clone()), owned.clone())
        .owns(Api::<Service>::all(client.clone()), owned.clone())
        .owns(Api::<PodDisruptionBudget>::all(client.clone()), owned)
        .watches(
            Api::<SmtpRelaySetting>::all(client.clone()),
            watcher::Config::default(),
            move |o| organizations_in(&s1, o.namespace()),
        )
        .watches(
            Api::<IpAllowRange>::all(client.clone()),
            watcher::Config::default(),
            move |o| organizations_in(&s2, o.namespace()),
        )
        .watches(
            Api::<MailRoute>::all(client.clone()),
            watcher::Config::default(),
            move |o| organizations_in(&s3, o.namespace()),
        )
        .watches(
            Api::<PartialObjectMeta<Secret>>::all(client.clone()),
            watcher::Config::default(),
            move |o| organizations_in(&s4, o.namespace()),
        )
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
