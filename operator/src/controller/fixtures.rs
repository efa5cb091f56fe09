//! A mocked API server for reconcile tests, in the manner of controller-rs.
//!
//! [`World`] holds the objects of one namespace as an API server would return them.
//! [`World::reconcile`] runs one real reconcile against a `tower-test` mock service that
//! answers from the world and records every request (method, path, query, JSON body), so
//! tests assert exactly what reconcile asked of the cluster. It owns no assertions.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crds::manifest::load_paths;
use crds::{IpAllowRange, MailRoute, Organization, SmtpRelaySetting};
use http::{Request, Response, StatusCode};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use super::metrics::Metrics;
use super::probe::TlsProber;
use super::{Context, Error, FIELD_MANAGER, Settings, reconcile};
use relay::config::{DeliveryConfig, RouteConfig};

/// The fixed time of every fixture reconcile.
pub const NOW: i64 = 1_700_000_000;

/// One request the reconcile made.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Value,
}

impl Recorded {
    /// `METHOD path` as tests list them.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    /// True for a server-side apply with the operator's one field manager, forced.
    pub fn is_forced_apply(&self) -> bool {
        self.method == "PATCH"
            && self
                .query
                .contains(&format!("fieldManager={FIELD_MANAGER}"))
            && self.query.contains("force=true")
    }
}

/// The objects of one namespace in the fake API server.
#[derive(Clone, Debug, Default)]
pub struct World {
    pub organizations: Vec<Organization>,
    pub settings: Vec<SmtpRelaySetting>,
    pub ranges: Vec<IpAllowRange>,
    pub routes: Vec<MailRoute>,
    pub secrets: Vec<Secret>,
    /// The relay Deployment as it exists before the reconcile (`None`: not yet created).
    pub deployment: Option<Value>,
    /// `status` the API server reports for the Deployment after apply.
    pub deployment_status: Value,
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

impl World {
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
            secrets: set.secrets.into_iter().map(|l| stamp(l.object)).collect(),
            deployment: None,
            deployment_status: json!({"replicas": 1, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1}),
        }
    }

    /// The world's (only) Organization.
    pub fn org(&self) -> Organization {
        self.organizations[0].clone()
    }

    /// Applies the status writes of a previous reconcile, as the API server would have.
    pub fn absorb(&mut self, log: &[Recorded]) {
        for r in log.iter().filter(|r| r.path.ends_with("/status")) {
            let status = r.body["status"].clone();
            let name = r.path.rsplit('/').nth(1).unwrap_or_default().to_string();
            let set = |v: &mut Value| {
                v["status"] = status.clone();
            };
            fn update<K>(items: &mut [K], name: &str, f: impl Fn(&mut Value))
            where
                K: serde::Serialize + serde::de::DeserializeOwned + ResourceExt,
            {
                for item in items.iter_mut().filter(|i| i.name_any() == name) {
                    let mut v = serde_json::to_value(&*item).unwrap();
                    f(&mut v);
                    *item = serde_json::from_value(v).unwrap();
                }
            }
            if r.path.contains("/organizations/") {
                update(&mut self.organizations, &name, set);
            } else if r.path.contains("/smtprelaysettings/") {
                update(&mut self.settings, &name, set);
            } else if r.path.contains("/ipallowranges/") {
                update(&mut self.ranges, &name, set);
            } else if r.path.contains("/mailroutes/") {
                update(&mut self.routes, &name, set);
            }
        }
        if let Some(d) = log
            .iter()
            .find(|r| r.is_forced_apply() && r.path.contains("/deployments/"))
        {
            self.deployment = Some(d.body.clone());
        }
    }

    fn list(items: Vec<Value>) -> Value {
        json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items})
    }

    fn values<K: serde::Serialize>(items: &[K]) -> Vec<Value> {
        items
            .iter()
            .map(|i| serde_json::to_value(i).unwrap())
            .collect()
    }

    fn object_named(&self, path: &str) -> Option<Value> {
        let name = path.rsplit('/').nth(1)?;
        let find = |items: Vec<Value>| {
            items
                .into_iter()
                .find(|v| v["metadata"]["name"].as_str() == Some(name))
        };
        if path.contains("/organizations/") {
            find(Self::values(&self.organizations))
        } else if path.contains("/smtprelaysettings/") {
            find(Self::values(&self.settings))
        } else if path.contains("/ipallowranges/") {
            find(Self::values(&self.ranges))
        } else if path.contains("/mailroutes/") {
            find(Self::values(&self.routes))
        } else {
            None
        }
    }

    fn answer(&self, r: &Recorded) -> (StatusCode, Value) {
        let not_found = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": format!("{} not found", r.path)});
        let ns = "/namespaces/acme/";
        let p = r.path.as_str();
        match r.method.as_str() {
            "GET" if p.ends_with(&format!("{ns}organizations")) => (
                StatusCode::OK,
                Self::list(Self::values(&self.organizations)),
            ),
            "GET" if p.ends_with(&format!("{ns}smtprelaysettings")) => {
                (StatusCode::OK, Self::list(Self::values(&self.settings)))
            }
            "GET" if p.ends_with(&format!("{ns}ipallowranges")) => {
                (StatusCode::OK, Self::list(Self::values(&self.ranges)))
            }
            "GET" if p.ends_with(&format!("{ns}mailroutes")) => {
                (StatusCode::OK, Self::list(Self::values(&self.routes)))
            }
            "GET" if p.ends_with(&format!("{ns}secrets")) => {
                (StatusCode::OK, Self::list(Self::values(&self.secrets)))
            }
            "GET" if p.contains("/deployments/") => match &self.deployment {
                Some(d) => (StatusCode::OK, d.clone()),
                None => (StatusCode::NOT_FOUND, not_found),
            },
            "PATCH" if p.ends_with("/status") => match self.object_named(p) {
                Some(mut v) => {
                    v["status"] = r.body["status"].clone();
                    (StatusCode::OK, v)
                }
                None => (StatusCode::NOT_FOUND, not_found),
            },
            "PATCH" if r.is_forced_apply() => {
                let mut v = r.body.clone();
                v["metadata"]["uid"] = json!("uid-child");
                v["metadata"]["resourceVersion"] = json!("2");
                if p.contains("/deployments/") {
                    v["status"] = self.deployment_status.clone();
                }
                (StatusCode::OK, v)
            }
            "POST" if p.contains("/events") => (StatusCode::CREATED, r.body.clone()),
            _ => (StatusCode::NOT_FOUND, not_found),
        }
    }

    /// Runs one reconcile of the world's Organization against the mock API server.
    pub async fn reconcile<P: TlsProber>(
        &self,
        prober: P,
    ) -> (Result<Action, Error>, Vec<Recorded>) {
        self.reconcile_object(self.org(), prober).await
    }

    /// Runs one reconcile of `org` against the mock API server.
    pub async fn reconcile_object<P: TlsProber>(
        &self,
        org: Organization,
        prober: P,
    ) -> (Result<Action, Error>, Vec<Recorded>) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let world = self.clone();
        let log = Arc::new(Mutex::new(Vec::new()));
        let server_log = log.clone();
        let server = tokio::spawn(async move {
            // Ends when the last client is dropped.
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap();
                let body = if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).unwrap()
                };
                let recorded = Recorded {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_string(),
                    query: parts.uri.query().unwrap_or_default().to_string(),
                    body,
                };
                let (status, answer) = world.answer(&recorded);
                server_log.lock().unwrap().push(recorded);
                let response = Response::builder()
                    .status(status)
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
        let ctx = Arc::new(Context {
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: FIELD_MANAGER.into(),
                    instance: Some("test".into()),
                },
            ),
            client,
            settings: Settings {
                probe_ca_dir: Some(
                    std::env::temp_dir()
                        .join(format!("smtprelay-operator-test-{}", std::process::id())),
                ),
                ..Settings::default()
            },
            prober,
            metrics: Arc::new(Metrics::default()),
            clock: Arc::new(|| Timestamp::from_second(NOW).unwrap()),
        });
        let result = reconcile(Arc::new(org), ctx.clone()).await;
        drop(ctx);
        server.await.unwrap();
        let _ = std::fs::remove_dir_all(&ca_dir);
        let log = log.lock().unwrap().clone();
        (result, log)
    }
}
