//! What every reconcile works with: the operator's [`Settings`], the reflector stores of
//! the objects it watches ([`Stores`]), the [`Context`] (client, stores, Event recorder,
//! prober, pod reports, metrics, clock), and the controller's [`Error`] type.
//!
//! Not here: what a reconcile does with them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crds::{IpAllowRange, MailRoute, Organization, SmtpRelaySetting};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::{Client, Resource};

use super::children::ChildDefaults;
use super::events::Recorder;
use super::metrics::Metrics;
use super::pod_reports::{HttpPodReports, PodReports};
use super::probe::TlsProber;
use crate::render::RenderEnv;

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
    /// are gone are drained ([`drain`](super::drain)).
    pub claims: Store<PersistentVolumeClaim>,
    /// The Jobs that drain them.
    pub jobs: Store<Job>,
}

/// The writing ends of [`Stores`], fed by the watches of [`run`].
pub struct Writers {
    pub(super) organizations: reflector::store::Writer<Organization>,
    pub(super) settings: reflector::store::Writer<SmtpRelaySetting>,
    pub(super) ranges: reflector::store::Writer<IpAllowRange>,
    pub(super) routes: reflector::store::Writer<MailRoute>,
    pub(super) config_maps: reflector::store::Writer<ConfigMap>,
    pub(super) deployments: reflector::store::Writer<Deployment>,
    pub(super) stateful_sets: reflector::store::Writer<StatefulSet>,
    pub(super) services: reflector::store::Writer<Service>,
    pub(super) pdbs: reflector::store::Writer<PodDisruptionBudget>,
    pub(super) network_policies: reflector::store::Writer<NetworkPolicy>,
    pub(super) pods: reflector::store::Writer<Pod>,
    pub(super) claims: reflector::store::Writer<PersistentVolumeClaim>,
    pub(super) jobs: reflector::store::Writer<Job>,
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
    pub(super) writers: Mutex<Option<Writers>>,
    /// Consecutive failed reconciles per Organization (the backoff of [`error_policy`]).
    pub(super) failures: Mutex<HashMap<ObjectRef<Organization>, u32>>,
}

impl<P: TlsProber> Context<P> {
    /// A context with the system clock, the reporter `smtprelay-operator` and empty stores
    /// that [`run`](super::run) fills.
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
        Self {
            recorder: Recorder::new(FIELD_MANAGER, instance),
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
