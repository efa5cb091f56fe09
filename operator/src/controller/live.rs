//! The mocked API server of [`fixtures`](super::fixtures) serving the *running*
//! controller ([`run`](super::run)): lists and watches as kube-apiserver serves them, so
//! that tests see what the controller's watches trigger, and when.
//!
//! [`Cluster`] answers every request with the same server as [`World`] (RBAC, validation,
//! defaults, server-side apply, Events and their series) and also serves
//! `GET …?watch=true` as a stream of `ADDED`, `MODIFIED` and `DELETED` events, from the
//! `resourceVersion` the watch starts at, for every change: the operator's own writes and
//! the changes a test makes as a user would ([`Cluster::delete`], [`Cluster::put`]).
//! Every change gets the next resource version of the cluster, and a list reports the
//! current one, so a watch started after a list misses nothing.
//!
//! Time is tokio's: tests run with `start_paused`, so waits cost no real time, and the
//! controller's clock ([`Context::clock`](super::Context)) follows tokio's.
//!
//! It owns no assertions.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::fixtures::{FakePodReports, NOW, Recorded, Server, World};
use super::metrics::Metrics;
use super::probe::ProbingDisabled;
use super::{Context, Settings};

type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

/// One change, as a watch reports it.
#[derive(Clone, Debug)]
struct Change {
    resource_version: u64,
    /// `group/resource` of the object (`/configmaps`, `apps/statefulsets`).
    collection: String,
    namespace: String,
    type_: &'static str,
    object: Value,
}

/// An open watch.
struct Watch {
    collection: String,
    labels: Vec<(String, String)>,
    send: mpsc::UnboundedSender<Bytes>,
}

struct State {
    server: Server,
    resource_version: u64,
    history: Vec<Change>,
    watches: Vec<Watch>,
}

/// A cluster whose API server serves the running controller.
#[derive(Clone)]
pub struct Cluster {
    state: Arc<Mutex<State>>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    /// A client of this API server (the controller's own).
    pub client: Client,
}

/// `(group, namespace, resource, name, subresource)` of a path, the namespace empty for a
/// request across all namespaces.
type Parts = (String, String, String, Option<String>, Option<String>);

fn parts(path: &str) -> Option<Parts> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match segments.as_slice() {
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
        [resource] => Some((group, String::new(), resource.to_string(), None, None)),
        _ => None,
    }
}

fn collection_of(path: &str) -> Option<(String, String)> {
    let (group, ns, resource, _, _) = parts(path)?;
    Some((format!("{group}/{resource}"), ns))
}

fn query_value(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

fn label_selector(query: &str) -> Vec<(String, String)> {
    query_value(query, "labelSelector")
        .map(|s| {
            s.split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn selected(object: &Value, labels: &[(String, String)]) -> bool {
    labels
        .iter()
        .all(|(k, v)| object["metadata"]["labels"][k].as_str() == Some(v.as_str()))
}

fn watch_line(type_: &str, object: &Value) -> Bytes {
    let mut line =
        serde_json::to_vec(&json!({"type": type_, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

impl State {
    /// Records a change of the object at `path` (from `before` to what is stored now) with
    /// the next resource version, and tells the watches that see it.
    fn changed(&mut self, path: &str, before: Option<Value>) {
        let after = self.server.objects.get(path).cloned();
        if before == after {
            return;
        }
        let Some((collection, namespace)) = collection_of(path) else {
            return;
        };
        self.resource_version += 1;
        let rv = json!(self.resource_version.to_string());
        let (type_, object) = match (before, after) {
            (None, Some(_)) => ("ADDED", None),
            (Some(_), Some(_)) => ("MODIFIED", None),
            (Some(old), None) => ("DELETED", Some(old)),
            (None, None) => return,
        };
        let object = match object {
            Some(mut gone) => {
                gone["metadata"]["resourceVersion"] = rv;
                gone
            }
            None => {
                let Some(stored) = self.server.objects.get_mut(path) else {
                    return;
                };
                stored["metadata"]["resourceVersion"] = rv;
                stored.clone()
            }
        };
        let change = Change {
            resource_version: self.resource_version,
            collection,
            namespace,
            type_,
            object,
        };
        self.watches.retain(|w| {
            if w.collection != change.collection || !selected(&change.object, &w.labels) {
                return true;
            }
            w.send
                .send(watch_line(change.type_, &change.object))
                .is_ok()
        });
        self.history.push(change);
    }

    fn list(&self, collection: &str, namespace: &str, labels: &[(String, String)]) -> Value {
        let items: Vec<Value> = self
            .server
            .objects
            .iter()
            .filter(|(path, object)| {
                collection_of(path).is_some_and(|(c, ns)| {
                    c == collection && (namespace.is_empty() || ns == namespace)
                }) && parts(path).is_some_and(|p| p.3.is_some())
                    && selected(object, labels)
            })
            .map(|(_, v)| v.clone())
            .collect();
        json!({"apiVersion": "v1", "kind": "List",
            "metadata": {"resourceVersion": self.resource_version.to_string()},
            "items": items})
    }

    fn serve(&mut self, recorded: &mut Recorded) -> (u16, ResponseBody) {
        let full = |v: &Value| {
            Full::new(Bytes::from(serde_json::to_vec(v).unwrap_or_default())).boxed_unsync()
        };
        let Some((group, namespace, resource, name, sub)) = parts(&recorded.path) else {
            return (404, full(&json!({"kind": "Status", "code": 404})));
        };
        let collection = format!("{group}/{resource}");
        let labels = label_selector(&recorded.query);
        if recorded.method == "GET" && name.is_none() {
            let watch = recorded.query.contains("watch=true");
            let verb = if watch { "watch" } else { "list" };
            if !self.server.allowed(&group, &resource, verb) {
                recorded.code = 403;
                return (
                    403,
                    full(
                        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "reason": "Forbidden", "code": 403,
                        "message": format!("{resource} is forbidden: cannot {verb} resource \"{resource}\" in API group \"{group}\"")}),
                    ),
                );
            }
            if watch {
                let since: u64 = query_value(&recorded.query, "resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(self.resource_version);
                let (send, mut receive) = mpsc::unbounded_channel();
                for c in &self.history {
                    if c.resource_version > since
                        && c.collection == collection
                        && (namespace.is_empty() || c.namespace == namespace)
                        && selected(&c.object, &labels)
                    {
                        let _ = send.send(watch_line(c.type_, &c.object));
                    }
                }
                self.watches.push(Watch {
                    collection,
                    labels,
                    send,
                });
                let stream = futures::stream::poll_fn(move |cx| {
                    receive
                        .poll_recv(cx)
                        .map(|b| b.map(|b| Ok::<_, Infallible>(Frame::data(b))))
                });
                recorded.code = 200;
                return (200, StreamBody::new(stream).boxed_unsync());
            }
            recorded.code = 200;
            return (200, full(&self.list(&collection, &namespace, &labels)));
        }
        let object_path = match (&sub, &name) {
            (Some(_), _) => recorded
                .path
                .rsplit_once('/')
                .map_or(recorded.path.clone(), |(p, _)| p.to_string()),
            // A create names the object in its body.
            (None, None) => format!(
                "{}/{}",
                recorded.path,
                recorded.body["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
            ),
            (None, Some(_)) => recorded.path.clone(),
        };
        let before = self.server.objects.get(&object_path).cloned();
        let (code, mut answer) = self.server.answer(recorded);
        recorded.code = code;
        if code < 300 && recorded.method != "GET" {
            self.changed(&object_path, before);
            if let Some(stored) = self.server.objects.get(&object_path)
                && resource != "events"
            {
                answer = stored.clone();
            }
        }
        (code, full(&answer))
    }
}

impl Cluster {
    /// A cluster holding what `world` holds, served to a controller [`run`](super::run)
    /// with `world.operator` as its settings (probing disabled, relay pods answering from
    /// `world.pod_answers`). The controller runs until the cluster is dropped.
    pub fn start(world: &World) -> Self {
        let mut world = world.clone();
        let server = world.server();
        let resource_version = 1;
        let (service, mut handle) =
            tower_test::mock::pair::<Request<Body>, Response<ResponseBody>>();
        let client = Client::new(service, "default");
        let cluster = Cluster {
            state: Arc::new(Mutex::new(State {
                server,
                resource_version,
                history: Vec::new(),
                watches: Vec::new(),
            })),
            tasks: Arc::new(Mutex::new(Vec::new())),
            client: client.clone(),
        };
        let state = cluster.state.clone();
        let serving = tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
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
                let (code, answer) = {
                    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                    let answer = s.serve(&mut recorded);
                    s.server.log.push(recorded);
                    answer
                };
                let response = Response::builder()
                    .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
                    .body(answer)
                    .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed_unsync()));
                send.send_response(response);
            }
        });
        let started = tokio::time::Instant::now();
        let mut ctx = Context::new(
            client,
            Settings {
                probe_ca_dir: None,
                ..world.operator.clone()
            },
            ProbingDisabled,
            Arc::new(Metrics::default()),
            Some("test".into()),
        );
        ctx.clock = Arc::new(move || {
            let elapsed =
                SignedDuration::try_from(started.elapsed()).unwrap_or(SignedDuration::ZERO);
            Timestamp::from_second(NOW)
                .ok()
                .and_then(|t| t.checked_add(elapsed).ok())
                .unwrap_or(Timestamp::UNIX_EPOCH)
        });
        ctx.pod_reports = Arc::new(FakePodReports(
            std::mem::take(&mut world.pod_answers),
            std::mem::take(&mut world.drain_answers),
        ));
        let controller = tokio::spawn(super::run(Arc::new(ctx), std::future::pending()));
        if let Ok(mut t) = cluster.tasks.lock() {
            t.push(serving);
            t.push(controller);
        }
        cluster
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s)
    }

    /// The object at `path`, as the API server holds it.
    pub fn get(&self, path: &str) -> Option<Value> {
        self.with(|s| s.server.objects.get(path).cloned())
    }

    /// Deletes the object at `path` as `kubectl delete` would (finalizers hold it, marked
    /// for deletion); the watches see it.
    pub fn delete(&self, path: &str) {
        self.with(|s| {
            let before = s.server.objects.get(path).cloned();
            let Some(object) = s.server.objects.get_mut(path) else {
                return;
            };
            if object["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|f| !f.is_empty())
            {
                object["metadata"]["deletionTimestamp"] = json!("2023-11-14T22:13:20Z");
            } else {
                s.server.objects.remove(path);
            }
            s.changed(path, before);
        })
    }

    /// Creates or replaces the object at `path`, as `kubectl apply` would; the watches see
    /// it (a change of `spec` is a new generation).
    pub fn put(&self, path: &str, mut object: Value) {
        self.with(|s| {
            let before = s.server.objects.get(path).cloned();
            if let Some(old) = &before {
                let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
                let changed = old["spec"] != object["spec"];
                object["metadata"]["generation"] =
                    json!(if changed { generation + 1 } else { generation });
                object["metadata"]["uid"] = old["metadata"]["uid"].clone();
            }
            s.server.objects.insert(path.to_string(), object);
            s.changed(path, before);
        })
    }

    /// Events as the API server holds them (a series is one Event).
    pub fn events(&self) -> Vec<Value> {
        self.with(|s| s.server.events.clone())
    }

    /// Every request so far.
    pub fn log(&self) -> Vec<Recorded> {
        self.with(|s| s.server.log.clone())
    }

    /// Waits (tokio time) until `check` holds, checking every 50 ms, for at most `limit`;
    /// returns how long it took, or `None`.
    pub async fn until(
        &self,
        limit: Duration,
        mut check: impl FnMut(&Cluster) -> bool,
    ) -> Option<Duration> {
        let started = tokio::time::Instant::now();
        loop {
            if check(self) {
                return Some(started.elapsed());
            }
            if started.elapsed() >= limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the controller made no request for `quiet` (tokio time).
    pub async fn settled(&self, quiet: Duration) {
        loop {
            let before = self.with(|s| s.server.log.len());
            tokio::time::sleep(quiet).await;
            if self.with(|s| s.server.log.len()) == before {
                return;
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if Arc::strong_count(&self.tasks) == 1
            && let Ok(tasks) = self.tasks.lock()
        {
            for t in tasks.iter() {
                t.abort();
            }
        }
    }
}
