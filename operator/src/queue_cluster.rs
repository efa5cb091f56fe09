//! `relayctl queue -n NAMESPACE`: queue administration of every relay pod of a namespace
//! through the Kubernetes API, with the user's own kubeconfig, credentials and RBAC.
//!
//! Owns the cluster side of `relayctl queue`: the API client from a kubeconfig and
//! context ([`ClusterTarget::client`]), finding the relay pods by the labels the operator
//! puts on them ([`identity::relay_pods_selector`]), the admin port and the admin token
//! Secret each pod mounts, reading that token, a port-forward to each pod through the API
//! server ([`Relays`]), and merging the pods' answers into what the command prints
//! ([`run`]): one list with the pod of each message, an id acted on by the pod that holds
//! it, a flush on every pod.
//!
//! Not here: what each request asks, HTTP over the forwarded stream and the tables
//! ([`crate::queue_admin`]), what the relay does with a request (`relay::admin::queue`).
//!
//! The user needs, in the namespace: `list` on `pods`, `get` on `secrets` (the token
//! Secret, `<organization>-relay-admin`), `create` on `pods/portforward`. A refusal names
//! the verb and resource it lacks. Each pod gets [`POD_TIMEOUT`] for its port-forward and
//! requests, so a silent pod costs that long and no more (the others are asked at the
//! same time); every answer is bounded as [`crate::queue_admin`] bounds it.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, ResourceExt};
use serde_json::Value;

use crate::controller::children::{admin_port_in, admin_token_secret_in};
use crate::controller::identity;
use crate::queue_admin::{
    AdminConnection, QueueAction, QueueClientError, action_request, pods_list_table, show_text,
};

/// How long one pod has for its port-forward and every request made to it.
pub const POD_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the API server has to answer the pod list and the Secret read.
pub const API_TIMEOUT: Duration = Duration::from_secs(30);

/// The answer to `call`, an API call that would `verb` `resource` (`what`, in words), or
/// why there is none; at most [`API_TIMEOUT`].
async fn within<T>(
    call: impl Future<Output = Result<T, kube::Error>>,
    verb: &'static str,
    resource: &'static str,
    what: String,
    namespace: &str,
) -> Result<T, ClusterError> {
    match tokio::time::timeout(API_TIMEOUT, call).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(ClusterError::api(e, verb, resource, what, namespace)),
        Err(_) => Err(ClusterError::Api {
            verb,
            what,
            namespace: namespace.into(),
            reason: format!("the API server did not answer within {API_TIMEOUT:?}"),
        }),
    }
}

/// How long a broken port-forward's reason is waited for.
const ERROR_GRACE: Duration = Duration::from_secs(1);

/// Key of the admin token in its Secret.
const TOKEN_KEY: &str = "token";

/// Which cluster, namespace and relays `relayctl queue -n` works on.
#[derive(Clone, Debug, Default)]
pub struct ClusterTarget {
    pub namespace: String,
    /// Context of the kubeconfig (default: its current context).
    pub context: Option<String>,
    /// Kubeconfig file (default: `KUBECONFIG`, then `~/.kube/config`, then in-cluster).
    pub kubeconfig: Option<PathBuf>,
    /// Only this Organization's relays (default: every relay pod of the namespace).
    pub organization: Option<String>,
    /// Only this pod (default: every relay pod found).
    pub pod: Option<String>,
    /// How long each pod has (default [`POD_TIMEOUT`]).
    pub pod_timeout: Option<Duration>,
}

/// Why `relayctl queue -n` could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot use the Kubernetes configuration: {0}")]
    Config(String),
    #[error(
        "forbidden: the user may not {verb} {what} in namespace {namespace}; it needs RBAC verb `{verb}` on `{resource}` there (the API server said: {message})"
    )]
    Forbidden {
        verb: &'static str,
        resource: &'static str,
        /// The resource, or the object, in words (`pods`, `secret acme-relay-admin`).
        what: String,
        namespace: String,
        message: String,
    },
    #[error("cannot {verb} {what} in namespace {namespace}: {reason}")]
    Api {
        verb: &'static str,
        what: String,
        namespace: String,
        reason: String,
    },
    #[error("no running relay pod in namespace {namespace} (pods labelled {selector}){more}")]
    NoPods {
        namespace: String,
        selector: String,
        /// What was found instead, for the user.
        more: String,
    },
    #[error(
        "Secret {secret} in namespace {namespace} has no key `token` (the queue administration token)"
    )]
    NoToken { secret: String, namespace: String },
    #[error("pod {pod}: {reason}")]
    Pod { pod: String, reason: String },
    #[error("pod {pod}: {source}")]
    Relay {
        pod: String,
        source: QueueClientError,
    },
    #[error("no relay pod in namespace {namespace} holds message {id} (asked {pods})")]
    NotQueued {
        id: String,
        namespace: String,
        pods: String,
    },
    #[error(
        "message {id} is queued on several pods ({pods}); nothing was done: name one with --pod"
    )]
    Ambiguous { id: String, pods: String },
}

impl ClusterError {
    /// The exit code of `relayctl queue` (SPEC §4): 2 for a kubeconfig or context that
    /// cannot be used (invalid input), 1 for everything the cluster or a relay refused.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) => 2,
            _ => 1,
        }
    }

    fn api(
        e: kube::Error,
        verb: &'static str,
        resource: &'static str,
        what: String,
        namespace: &str,
    ) -> Self {
        match e {
            kube::Error::Api(status) if status.code == 403 => Self::Forbidden {
                verb,
                resource,
                what,
                namespace: namespace.into(),
                message: status.message,
            },
            kube::Error::Api(status) => Self::Api {
                verb,
                what,
                namespace: namespace.into(),
                reason: format!("{} ({})", status.message, status.code),
            },
            other => Self::Api {
                verb,
                what,
                namespace: namespace.into(),
                reason: other.to_string(),
            },
        }
    }
}

impl ClusterTarget {
    /// An API client from the kubeconfig and context asked for.
    pub async fn client(&self) -> Result<Client, ClusterError> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let config = match &self.kubeconfig {
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(path)
                    .map_err(|e| ClusterError::Config(format!("{}: {e}", path.display())))?;
                Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(|e| ClusterError::Config(format!("{}: {e}", path.display())))?
            }
            None if self.context.is_some() => Config::from_kubeconfig(&options)
                .await
                .map_err(|e| ClusterError::Config(e.to_string()))?,
            None => Config::infer()
                .await
                .map_err(|e| ClusterError::Config(e.to_string()))?,
        };
        Client::try_from(config).map_err(|e| ClusterError::Config(e.to_string()))
    }
}

/// A relay pod and how to reach its admin endpoint.
#[derive(Clone, Debug)]
struct RelayPod {
    name: String,
    admin_port: u16,
    token: String,
    /// The Secret the token came from, for errors.
    token_secret: String,
    /// Why the pod cannot be asked (no admin port, no token Secret), if it cannot.
    unusable: Option<String>,
}

/// The relay pods of a namespace, found and ready to be asked.
pub struct Relays {
    pods_api: Api<Pod>,
    namespace: String,
    pods: Vec<RelayPod>,
    pod_timeout: Duration,
    /// Relay pods not asked because they are not running (`NAME is PHASE`).
    pub skipped: Vec<String>,
}

/// An open port-forward to one pod's admin port with HTTP/1.1 on it.
struct PodConnection {
    conn: AdminConnection,
    forwarder: kube::api::Portforwarder,
    /// Resolves with what the API server reports on the port's error channel (the pod
    /// refused the connection, the port-forward broke); `None` once it cannot any more.
    error: Option<Pin<Box<dyn Future<Output = Option<String>> + Send>>>,
}

impl Drop for PodConnection {
    fn drop(&mut self) {
        self.forwarder.abort();
    }
}

/// The answer of one pod, or why there is none.
pub type PodAnswer = (String, Result<Value, ClusterError>);

impl Relays {
    /// Lists the running relay pods of `target` and reads the admin token each mounts.
    pub async fn find(client: Client, target: &ClusterTarget) -> Result<Self, ClusterError> {
        let ns = target.namespace.as_str();
        let pods_api: Api<Pod> = Api::namespaced(client.clone(), ns);
        let selector = identity::relay_pods_selector(target.organization.as_deref());
        let listed = within(
            pods_api.list(&ListParams::default().labels(&selector)),
            "list",
            "pods",
            "pods".into(),
            ns,
        )
        .await?;
        let mut skipped = Vec::new();
        let mut found = Vec::new();
        for pod in listed.items {
            let name = pod.name_any();
            if target.pod.as_ref().is_some_and(|p| *p != name) {
                continue;
            }
            let phase = pod
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_else(|| "Unknown".into());
            if phase != "Running" {
                skipped.push(format!("{name} is {phase}"));
                continue;
            }
            let spec = pod.spec.as_ref();
            let port = spec.and_then(admin_port_in);
            let secret = spec.and_then(admin_token_secret_in);
            found.push((name, port, secret));
        }
        if found.is_empty() {
            let more = match (&target.pod, skipped.is_empty()) {
                (Some(p), true) => format!(" named {p}"),
                (_, false) => format!(": {}", skipped.join(", ")),
                (None, true) => String::new(),
            };
            return Err(ClusterError::NoPods {
                namespace: ns.into(),
                selector,
                more,
            });
        }
        let secrets: Api<Secret> = Api::namespaced(client, ns);
        let mut tokens: BTreeMap<String, String> = BTreeMap::new();
        for secret in found.iter().filter_map(|(_, _, s)| s.as_ref()) {
            if tokens.contains_key(secret) {
                continue;
            }
            let s = within(
                secrets.get(secret),
                "get",
                "secrets",
                format!("secret {secret}"),
                ns,
            )
            .await?;
            let token = s
                .data
                .as_ref()
                .and_then(|d| d.get(TOKEN_KEY))
                .map(|b| String::from_utf8_lossy(&b.0).trim().to_string())
                .or_else(|| {
                    s.string_data
                        .as_ref()
                        .and_then(|d| d.get(TOKEN_KEY))
                        .map(|t| t.trim().to_string())
                })
                .filter(|t| !t.is_empty())
                .ok_or_else(|| ClusterError::NoToken {
                    secret: secret.clone(),
                    namespace: ns.into(),
                })?;
            tokens.insert(secret.clone(), token);
        }
        let mut pods: Vec<RelayPod> = found
            .into_iter()
            .map(|(name, port, secret)| {
                let unusable = match (port, &secret) {
                    (None, _) => Some("its container has no port named `admin`".to_string()),
                    (_, None) => Some(
                        "it mounts no admin token Secret, so its queue administration is off"
                            .to_string(),
                    ),
                    _ => None,
                };
                let secret = secret.unwrap_or_default();
                RelayPod {
                    name,
                    admin_port: port.unwrap_or_default(),
                    token: tokens.get(&secret).cloned().unwrap_or_default(),
                    token_secret: secret,
                    unusable,
                }
            })
            .collect();
        pods.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self {
            pods_api,
            namespace: ns.into(),
            pods,
            pod_timeout: target.pod_timeout.unwrap_or(POD_TIMEOUT),
            skipped,
        })
    }

    /// The names of the pods asked, in order.
    pub fn pod_names(&self) -> Vec<&str> {
        self.pods.iter().map(|p| p.name.as_str()).collect()
    }

    /// Opens a port-forward to `pod`'s admin port and HTTP/1.1 on it.
    async fn connect(&self, pod: &RelayPod) -> Result<PodConnection, ClusterError> {
        let mut forwarder = self
            .pods_api
            .portforward(&pod.name, &[pod.admin_port])
            .await
            .map_err(|e| {
                ClusterError::api(
                    e,
                    "create",
                    "pods/portforward",
                    format!("a port-forward to pod {}", pod.name),
                    &self.namespace,
                )
            })?;
        let failed = |reason: String| ClusterError::Pod {
            pod: pod.name.clone(),
            reason,
        };
        let stream = forwarder
            .take_stream(pod.admin_port)
            .ok_or_else(|| failed("the port-forward gave no stream".into()))?;
        let error = forwarder
            .take_error(pod.admin_port)
            .map(|f| Box::pin(f) as Pin<Box<dyn Future<Output = Option<String>> + Send>>);
        let url = format!("pod {} port {}", pod.name, pod.admin_port);
        let conn = AdminConnection::handshake(stream, &url, "localhost", &pod.token)
            .await
            .map_err(|e| failed(e.to_string()))?;
        Ok(PodConnection {
            conn,
            forwarder,
            error,
        })
    }

    /// One request on an open connection; an error names the pod.
    async fn ask(
        pod: &RelayPod,
        c: &mut PodConnection,
        method: &str,
        path: &str,
    ) -> Result<Value, ClusterError> {
        let failed = |reason: String| ClusterError::Pod {
            pod: pod.name.clone(),
            reason,
        };
        let forward_failed = |message: String| {
            failed(format!(
                "the port-forward to port {} failed: {message}",
                pod.admin_port
            ))
        };
        let answer = match c.error.as_mut() {
            None => c.conn.request(method, path).await,
            Some(error) => tokio::select! {
                answer = c.conn.request(method, path) => answer,
                Some(message) = error => {
                    c.error = None;
                    return Err(forward_failed(message));
                }
            },
        };
        // The connection broke: the API server's reason may follow on the error channel
        // a moment after the stream closed.
        if let (Err(QueueClientError::Connect { .. }), Some(error)) = (&answer, c.error.as_mut())
            && let Ok(Some(message)) = tokio::time::timeout(ERROR_GRACE, error).await
        {
            c.error = None;
            return Err(forward_failed(message));
        }
        answer.map_err(|e| match e {
            QueueClientError::Unauthorized => failed(format!(
                "the relay refused the token of Secret {} (401)",
                pod.token_secret
            )),
            source => ClusterError::Relay {
                pod: pod.name.clone(),
                source,
            },
        })
    }

    /// `f` with a fresh connection to `pod`, within the pod time-out.
    async fn with_pod<T, F>(&self, pod: &RelayPod, f: F) -> Result<T, ClusterError>
    where
        F: AsyncFnOnce(&mut PodConnection) -> Result<T, ClusterError>,
    {
        if let Some(why) = &pod.unusable {
            return Err(ClusterError::Pod {
                pod: pod.name.clone(),
                reason: why.clone(),
            });
        }
        let work = async {
            let mut c = self.connect(pod).await?;
            f(&mut c).await
        };
        tokio::time::timeout(self.pod_timeout, work)
            .await
            .unwrap_or_else(|_| {
                Err(ClusterError::Pod {
                    pod: pod.name.clone(),
                    reason: format!("no answer within {:?}", self.pod_timeout),
                })
            })
    }

    /// Sends `action` (a list or a flush) to every pod at once; the answers in pod order.
    pub async fn ask_all(&self, action: &QueueAction) -> Vec<PodAnswer> {
        let (method, path) = action_request(action);
        let asks = self.pods.iter().map(|pod| {
            let path = path.clone();
            async move {
                let answer = self
                    .with_pod(pod, async |c| Self::ask(pod, c, method, &path).await)
                    .await;
                (pod.name.clone(), answer)
            }
        });
        futures::future::join_all(asks).await
    }

    /// Sends an action about one message (show, hold, release, delete) to the pod that
    /// holds it: every pod is asked for the message, then the one that has it is given
    /// the action (refused when several have it). A show answers from each that has it.
    pub async fn act_on_holder(
        &self,
        action: &QueueAction,
    ) -> Result<Vec<PodAnswer>, ClusterError> {
        let Some(id) = action.id() else {
            return Ok(self.ask_all(action).await);
        };
        let show = QueueAction::Show { id: id.to_string() };
        let (show_method, show_path) = action_request(&show);
        // Each pod: `Ok(None)` when it does not hold the id.
        let found = futures::future::join_all(self.pods.iter().map(|pod| {
            let show_path = show_path.clone();
            async move {
                let answer = self
                    .with_pod(pod, async |c| {
                        match Self::ask(pod, c, show_method, &show_path).await {
                            Err(ClusterError::Relay {
                                source: QueueClientError::Status { status: 404, .. },
                                ..
                            }) => Ok(None),
                            other => other.map(Some),
                        }
                    })
                    .await;
                (pod, answer)
            }
        }))
        .await;
        let mut holders = Vec::new();
        let mut errors = Vec::new();
        for (pod, answer) in found {
            match answer {
                Ok(Some(shown)) => holders.push((pod, shown)),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        if holders.is_empty() {
            return match errors.into_iter().next() {
                // A pod that could not be asked may hold it: say why.
                Some(e) => Err(e),
                None => Err(ClusterError::NotQueued {
                    id: id.into(),
                    namespace: self.namespace.clone(),
                    pods: self.pod_names().join(", "),
                }),
            };
        }
        if *action == show {
            return Ok(holders
                .into_iter()
                .map(|(pod, shown)| (pod.name.clone(), Ok(shown)))
                .collect());
        }
        if let [(pod, _)] = holders[..] {
            let (method, path) = action_request(action);
            let answer = self
                .with_pod(pod, async |c| Self::ask(pod, c, method, &path).await)
                .await;
            return Ok(vec![(pod.name.clone(), answer)]);
        }
        Err(ClusterError::Ambiguous {
            id: id.into(),
            pods: holders
                .iter()
                .map(|(p, _)| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}

/// What `relayctl queue -n` prints and its exit code.
#[derive(Debug, Default)]
pub struct Report {
    /// Standard output: the table, the message, the JSON.
    pub output: String,
    /// Standard error, one line each: skipped pods, what failed.
    pub notes: Vec<String>,
    /// SPEC §4: 0 done, 1 refused or unreachable (also when only some pods answered),
    /// 2 invalid input.
    pub exit_code: u8,
}

/// `relayctl queue ACTION -n NAMESPACE`: finds the relay pods, asks them, and says what
/// they answered (as JSON with `json`), what some pods answered even when others failed.
pub async fn run(action: &QueueAction, target: &ClusterTarget, json: bool) -> Report {
    let mut report = Report::default();
    let failed = |mut report: Report, e: ClusterError| {
        report.notes.push(format!("error: {e}"));
        report.exit_code = report.exit_code.max(e.exit_code());
        report
    };
    let relays = match target.client().await {
        Ok(client) => Relays::find(client, target).await,
        Err(e) => Err(e),
    };
    let relays = match relays {
        Ok(r) => r,
        Err(e) => return failed(report, e),
    };
    for skipped in &relays.skipped {
        report.notes.push(format!("note: pod {skipped}, not asked"));
    }
    let answers = match action {
        QueueAction::List | QueueAction::Flush { .. } => relays.ask_all(action).await,
        _ => match relays.act_on_holder(action).await {
            Ok(a) => a,
            Err(e) => return failed(report, e),
        },
    };
    let mut answered = Vec::new();
    for (pod, answer) in answers {
        match answer {
            Ok(v) => answered.push((pod, v)),
            Err(e) => report = failed(report, e),
        }
    }
    report.output = if json {
        format!(
            "{}\n",
            serde_json::to_string_pretty(&json_answer(action, answered)).unwrap_or_default()
        )
    } else {
        text_answer(action, &answered)
    };
    report
}

/// The answers as JSON: a list's messages merged, each naming its `pod`; a flush's answers
/// in a list; one message's answer as is (a list when several pods hold the id), with `pod`.
fn json_answer(action: &QueueAction, answered: Vec<(String, Value)>) -> Value {
    let with_pod = |pod: &str, mut v: Value| {
        if let Some(o) = v.as_object_mut() {
            o.insert("pod".into(), pod.into());
        }
        v
    };
    match action {
        QueueAction::List => {
            let total: u64 = answered
                .iter()
                .map(|(_, v)| v["total"].as_u64().unwrap_or(0))
                .sum();
            let messages: Vec<Value> = answered
                .iter()
                .flat_map(|(pod, v)| {
                    v["messages"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|m| with_pod(pod, m.clone()))
                })
                .collect();
            serde_json::json!({"total": total, "messages": messages})
        }
        QueueAction::Flush { .. } => answered
            .into_iter()
            .map(|(pod, v)| with_pod(&pod, v))
            .collect(),
        _ => match <[_; 1]>::try_from(answered) {
            Ok([(pod, v)]) => with_pod(&pod, v),
            Err(several) => several
                .into_iter()
                .map(|(pod, v)| with_pod(&pod, v))
                .collect(),
        },
    }
}

/// The answers for people: one table for a list (none when no pod answered), a line per
/// pod for the rest.
fn text_answer(action: &QueueAction, answered: &[(String, Value)]) -> String {
    let mut out = String::new();
    match action {
        QueueAction::List if answered.is_empty() => {}
        QueueAction::List => out = pods_list_table(answered),
        QueueAction::Show { .. } => {
            for (pod, v) in answered {
                out.push_str(&format!("{:<12} {pod}\n{}", "pod", show_text(v)));
            }
        }
        QueueAction::Flush { .. } => {
            for (pod, v) in answered {
                out.push_str(&format!(
                    "{pod}: {} message(s) due now (held messages stay held)\n",
                    v["flushed"]
                ));
            }
        }
        QueueAction::Hold { id } | QueueAction::Release { id } | QueueAction::Delete { id } => {
            for (pod, v) in answered {
                out.push_str(&format!(
                    "{id}: {} (pod {pod})\n",
                    v["result"].as_str().unwrap_or("done")
                ));
            }
        }
    }
    out
}
