//! `relayctl queue -n NAMESPACE` against a mocked Kubernetes API server on loopback: the
//! kubeconfig points at it, it lists pods (applying the label selector), serves the admin
//! token Secret and port-forwards over WebSocket (`v4.channel.k8s.io`: a channel byte on
//! every frame, the port on the first frame of each channel) to two real in-process
//! relays, one per pod, holding different messages. RBAC is per user: the mock refuses
//! what a Role would not grant, with the API server's 403.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use futures::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

const NS: &str = "mail";
const TOKEN: &str = "admin-token-of-acme";
const ADMIN_PORT: u16 = 9090;

/// One pod the mock knows: its labels, phase and where its admin port really is.
struct MockPod {
    name: &'static str,
    app: &'static str,
    phase: &'static str,
    admin: Option<SocketAddr>,
    /// Mounts the admin token Secret (as every pod the operator makes does).
    mounts_token: bool,
}

/// What users may not do: (bearer token of the user, verb, resource).
const FORBIDDEN: [(&str, &str, &str); 2] = [
    ("bob", "create", "pods/portforward"),
    ("carol", "get", "secrets"),
];

struct Mock {
    pods: Vec<MockPod>,
    /// `METHOD path?query` of every request, in order.
    requests: Mutex<Vec<String>>,
}

fn status(code: StatusCode, reason: &str, message: String) -> Response<Full<Bytes>> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16()
    });
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = code;
    r
}

fn ok(body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn pod_json(p: &MockPod) -> Value {
    let mut volumes = vec![json!({"name": "config", "configMap": {"name": "acme-relay-config"}})];
    if p.mounts_token {
        volumes.push(
            json!({"name": "admin", "secret": {"secretName": "acme-relay-admin", "optional": true}}),
        );
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": p.name, "namespace": NS, "labels": {
            "app.kubernetes.io/name": p.app,
            "app.kubernetes.io/instance": "acme",
            "app.kubernetes.io/component": "relay",
        }},
        "spec": {
            "containers": [{"name": "relay", "ports": [
                {"name": "smtp", "containerPort": 25},
                {"name": "admin", "containerPort": ADMIN_PORT},
            ]}],
            "volumes": volumes,
        },
        "status": {"phase": p.phase},
    })
}

/// Whether `labels` match a `k=v,k=v` selector.
fn selected(pod: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        pod["metadata"]["labels"][k].as_str() == Some(v)
    })
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

impl Mock {
    fn handle(self: &Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        self.requests
            .lock()
            .unwrap()
            .push(format!("{} {path}?{query}", req.method()));
        let user = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("")
            .to_string();
        let Some(rest) = path.strip_prefix(&format!("/api/v1/namespaces/{NS}/")) else {
            return status(StatusCode::NOT_FOUND, "NotFound", format!("no {path}"));
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let (verb, resource, name) = match parts[..] {
            ["pods"] => ("list", "pods", ""),
            ["secrets", name] => ("get", "secrets", name),
            ["pods", name, "portforward"] => ("create", "pods/portforward", name),
            _ => return status(StatusCode::NOT_FOUND, "NotFound", format!("no {path}")),
        };
        if FORBIDDEN.contains(&(user.as_str(), verb, resource)) {
            let (res, sub) = resource.split_once('/').unwrap_or((resource, ""));
            let what = if name.is_empty() {
                res.to_string()
            } else {
                format!("{res} \"{name}\"")
            };
            let sub = if sub.is_empty() {
                String::new()
            } else {
                format!("/{sub}")
            };
            return status(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!(
                    "{what} is forbidden: User \"{user}\" cannot {verb} resource \"{res}{sub}\" in API group \"\" in the namespace \"{NS}\""
                ),
            );
        }
        match resource {
            "pods" => {
                let selector = query_param(&query, "labelSelector").unwrap_or_default();
                let items: Vec<Value> = self
                    .pods
                    .iter()
                    .map(pod_json)
                    .filter(|p| selected(p, &selector))
                    .collect();
                ok(json!({"apiVersion": "v1", "kind": "PodList",
                    "metadata": {"resourceVersion": "7"}, "items": items}))
            }
            "secrets" if name == "acme-relay-admin" => ok(json!({
                "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": name, "namespace": NS},
                "data": {"token": base64::engine::general_purpose::STANDARD.encode(format!("{TOKEN}\n"))},
            })),
            "secrets" => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("secrets \"{name}\" not found"),
            ),
            _ => self.portforward(req, name, &query),
        }
    }

    /// The WebSocket upgrade of a port-forward, bridged to the pod's admin endpoint.
    fn portforward(&self, req: Request<Incoming>, pod: &str, query: &str) -> Response<Full<Bytes>> {
        let Some(target) = self
            .pods
            .iter()
            .find(|p| p.name == pod)
            .and_then(|p| p.admin)
        else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("pods \"{pod}\" not found"),
            );
        };
        let port: u16 = query_param(query, "ports")
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let offered = req
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(offered.contains("v4.channel.k8s.io"), "{offered}");
        assert_eq!(
            req.headers().get("upgrade").and_then(|v| v.to_str().ok()),
            Some("websocket")
        );
        let key = req.headers().get("sec-websocket-key").cloned().unwrap();
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        tokio::spawn(async move {
            let upgraded = hyper::upgrade::on(req).await.unwrap();
            bridge(upgraded, target, port).await;
        });
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = r.headers_mut();
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("connection", "Upgrade".parse().unwrap());
        h.insert("sec-websocket-accept", accept.parse().unwrap());
        h.insert(
            "sec-websocket-protocol",
            "v4.channel.k8s.io".parse().unwrap(),
        );
        r
    }
}

/// Port-forward protocol v4: data on channel 0, errors on channel 1, the first frame of
/// each channel is the port (little endian); bytes go both ways until either side ends.
async fn bridge(upgraded: hyper::upgrade::Upgraded, target: SocketAddr, port: u16) {
    let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
    let (mut sink, mut stream) = ws.split();
    let [lo, hi] = port.to_le_bytes();
    sink.send(Message::binary(vec![0, lo, hi])).await.unwrap();
    sink.send(Message::binary(vec![1, lo, hi])).await.unwrap();
    let tcp = match TcpStream::connect(target).await {
        Ok(tcp) => tcp,
        Err(e) => {
            // As the kubelet reports it, on the port's error channel.
            let mut frame = vec![1];
            frame.extend_from_slice(
                format!("error forwarding port {port} to pod: dial tcp {target}: {e}").as_bytes(),
            );
            let _ = sink.send(Message::binary(frame)).await;
            let _ = sink.send(Message::Close(None)).await;
            return;
        }
    };
    let (mut from_pod, mut to_pod) = tcp.into_split();
    let up = async move {
        while let Some(Ok(msg)) = stream.next().await {
            if msg.is_close() {
                break;
            }
            let Message::Binary(b) = msg else { continue };
            if b.len() > 1 && b[0] == 0 && to_pod.write_all(&b[1..]).await.is_err() {
                break;
            }
        }
        let _ = to_pod.shutdown().await;
    };
    let down = async move {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = from_pod.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let mut frame = Vec::with_capacity(n + 1);
            frame.push(0);
            frame.extend_from_slice(&buf[..n]);
            if sink.send(Message::binary(frame)).await.is_err() {
                return;
            }
        }
        let _ = sink.send(Message::Close(None)).await;
    };
    tokio::join!(up, down);
}

async fn serve_mock(mock: Arc<Mock>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let mock = mock.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let mock = mock.clone();
                    async move { Ok::<_, Infallible>(mock.handle(req)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// A kubeconfig whose contexts `alice`, `bob` and `carol` reach the mock as those users;
/// `alice` is the current one.
fn kubeconfig(dir: &Path, server: SocketAddr) -> std::path::PathBuf {
    let users = ["alice", "bob", "carol"];
    let mut yaml = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: alice\nclusters:\n- name: mock\n  cluster:\n    server: http://{server}\ncontexts:\n"
    );
    for u in users {
        yaml.push_str(&format!(
            "- name: {u}\n  context:\n    cluster: mock\n    user: {u}\n    namespace: default\n"
        ));
    }
    yaml.push_str("users:\n");
    for u in users {
        yaml.push_str(&format!("- name: {u}\n  user:\n    token: {u}\n"));
    }
    let path = dir.join("kubeconfig");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// A downstream that closes every connection at once: mail to it is deferred. (A port
/// found free and let go could be taken by another relay's listener in the meantime,
/// which would then take the mail.)
async fn closing_downstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((connection, _)) = listener.accept().await {
            drop(connection);
        }
    });
    port
}

async fn start_relay(dir: &Path, name: &str) -> relay::RelayHandle {
    let token = dir.join(format!("{name}.token"));
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let mut config = relay::RelayConfig::loopback(
        &dir.join(name).to_string_lossy(),
        closing_downstream().await,
    );
    config.admin_token_file = Some(token.to_string_lossy().into_owned());
    relay::start(config, relay::StartOptions::default())
        .await
        .unwrap()
}

/// Reads one SMTP reply; its last line.
async fn reply(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> String {
    loop {
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            return line.trim_end().to_string();
        }
    }
}

/// Submits one message over SMTP; its queue id.
async fn submit(smtp: SocketAddr, to: &str, subject: &str) -> String {
    let (r, mut w) = TcpStream::connect(smtp).await.unwrap().into_split();
    let mut r = BufReader::new(r);
    assert!(reply(&mut r).await.starts_with("220"));
    for line in [
        "EHLO app.acme.example".to_string(),
        "MAIL FROM:<app@acme.example>".into(),
        format!("RCPT TO:<{to}>"),
        "DATA".into(),
    ] {
        w.write_all(format!("{line}\r\n").as_bytes()).await.unwrap();
        let answer = reply(&mut r).await;
        assert!(
            answer.starts_with('2') || answer.starts_with("354"),
            "{line}: {answer}"
        );
    }
    w.write_all(format!("Subject: {subject}\r\n\r\nbody\r\n.\r\n").as_bytes())
        .await
        .unwrap();
    let done = reply(&mut r).await;
    w.write_all(b"QUIT\r\n").await.unwrap();
    done.strip_prefix("250 2.0.0 OK queued as ")
        .unwrap_or_else(|| panic!("{done}"))
        .to_string()
}

/// The message as the relay itself reports it, once its first attempt has failed (so that
/// it is not being delivered when the test acts on it). Panics if that never happens.
async fn deferred(relay: &relay::RelayHandle, id: &str) -> Value {
    let url = format!("http://{}", relay.admin_addr());
    for _ in 0..200 {
        // Right after the `250` the message may not be in the delivery queue yet (404).
        let m = operator::queue_admin::request(&url, TOKEN, "GET", &format!("/queue/{id}"))
            .await
            .unwrap_or_default();
        if m["state"] != "delivering" && m["attempts"].as_u64().unwrap_or(0) >= 1 {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{id} was never deferred");
}

async fn relayctl(dir: &Path, args: &[&str]) -> Output {
    let dir = dir.to_path_buf();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_relayctl"))
            .current_dir(&dir)
            .args(&args)
            .env_remove("SMTPRELAY_ADMIN_TOKEN")
            .env_remove("KUBECONFIG")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_commands_reach_every_relay_pod_through_the_api_server() {
    let dir = tempfile::tempdir().unwrap();
    let zero = start_relay(dir.path(), "zero").await;
    let one = start_relay(dir.path(), "one").await;
    let id_zero = submit(zero.smtp_addr(), "ann@example.net", "on zero").await;
    let id_one = submit(one.smtp_addr(), "ben@example.net", "on one").await;
    deferred(&zero, &id_zero).await;
    deferred(&one, &id_one).await;

    let mock = Arc::new(Mock {
        pods: vec![
            MockPod {
                name: "acme-relay-0",
                app: "smtprelay",
                phase: "Running",
                admin: Some(zero.admin_addr()),
                mounts_token: true,
            },
            MockPod {
                name: "acme-relay-1",
                app: "smtprelay",
                phase: "Running",
                admin: Some(one.admin_addr()),
                mounts_token: true,
            },
            // Not yet running: named, not asked.
            MockPod {
                name: "acme-relay-2",
                app: "smtprelay",
                phase: "Pending",
                admin: None,
                mounts_token: true,
            },
            // A drain Job's pod: not a relay, never selected.
            MockPod {
                name: "acme-relay-drain-abc",
                app: "smtprelay-drain",
                phase: "Running",
                admin: None,
                mounts_token: true,
            },
        ],
        requests: Mutex::new(Vec::new()),
    });
    let server = serve_mock(mock.clone()).await;
    let kc = kubeconfig(dir.path(), server);
    let kc = kc.to_str().unwrap();
    let d = dir.path();

    // One table across both pods, with the pod of each message.
    let out = relayctl(d, &["queue", "list", "-n", NS, "--kubeconfig", kc]).await;
    let (table, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let header = table.lines().next().unwrap();
    assert!(header.starts_with("POD "), "{table}");
    assert!(header.contains("QUEUE ID"), "{table}");
    let row = |id: &str| {
        table
            .lines()
            .find(|l| l.contains(id))
            .unwrap_or_else(|| panic!("{id} not listed:\n{table}"))
            .to_string()
    };
    assert!(row(&id_zero).starts_with("acme-relay-0 "), "{table}");
    assert!(row(&id_zero).contains("ann@example.net"), "{table}");
    assert!(row(&id_one).starts_with("acme-relay-1 "), "{table}");
    assert!(row(&id_one).contains("ben@example.net"), "{table}");
    assert!(table.ends_with("2 messages queued on 2 pods\n"), "{table}");
    assert!(err.contains("acme-relay-2 is Pending"), "{err}");
    {
        let requests = mock.requests.lock().unwrap();
        assert!(
            requests
                .iter()
                .any(|r| r.starts_with("GET /api/v1/namespaces/mail/pods?")
                    && r.contains("labelSelector=app.kubernetes.io%2Fname%3Dsmtprelay")),
            "{requests:?}"
        );
        assert!(
            !requests.iter().any(|r| r.contains("drain")),
            "{requests:?}"
        );
    }

    // As JSON, every message says which pod holds it.
    let out = relayctl(
        d,
        &["queue", "list", "--json", "-n", NS, "--kubeconfig", kc],
    )
    .await;
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["total"], 2);
    let pods: BTreeMap<String, String> = list["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["queueId"].as_str().unwrap().to_string(),
                m["pod"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(pods[&id_zero], "acme-relay-0");
    assert_eq!(pods[&id_one], "acme-relay-1");

    // Hold reaches the pod that holds the message, and only it.
    let out = relayctl(d, &["queue", "hold", &id_one, "-n", NS, "--kubeconfig", kc]).await;
    let (said, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(said, format!("{id_one}: held (pod acme-relay-1)\n"));
    assert_eq!(deferred(&one, &id_one).await["state"], "held");
    assert_eq!(deferred(&zero, &id_zero).await["state"], "pending");

    // Show finds it on its pod.
    let out = relayctl(
        d,
        &["queue", "show", &id_zero, "-n", NS, "--kubeconfig", kc],
    )
    .await;
    let (shown, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(shown.starts_with("pod          acme-relay-0\n"), "{shown}");
    assert!(shown.contains("Subject: on zero"), "{shown}");

    // An id no pod holds.
    let out = relayctl(
        d,
        &[
            "queue",
            "delete",
            "00000000000000AB",
            "-n",
            NS,
            "--kubeconfig",
            kc,
        ],
    )
    .await;
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no relay pod in namespace mail holds message 00000000000000AB (asked acme-relay-0, acme-relay-1)"),
        "{err}"
    );
    assert_eq!(deferred(&zero, &id_zero).await["state"], "pending");

    // Flush asks every pod.
    let out = relayctl(d, &["queue", "flush", "-n", NS, "--kubeconfig", kc]).await;
    let (said, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        said.contains("acme-relay-0: 1 message(s) due now"),
        "{said}"
    );
    assert!(
        said.contains("acme-relay-1: 0 message(s) due now"),
        "{said}"
    );

    // A user without `create pods/portforward`: the verb and resource it lacks.
    let out = relayctl(
        d,
        &[
            "queue",
            "list",
            "-n",
            NS,
            "--kubeconfig",
            kc,
            "--context",
            "bob",
        ],
    )
    .await;
    let (table, err) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(table, "");
    assert!(
        err.contains("error: forbidden: the user may not create a port-forward to pod acme-relay-0 in namespace mail; it needs RBAC verb `create` on `pods/portforward` there"),
        "{err}"
    );
    assert!(err.contains("User \"bob\""), "{err}");
    // Without `get secrets`: nothing is port-forwarded.
    let before = mock.requests.lock().unwrap().len();
    let out = relayctl(
        d,
        &[
            "queue",
            "list",
            "-n",
            NS,
            "--kubeconfig",
            kc,
            "--context",
            "carol",
        ],
    )
    .await;
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("may not get secret acme-relay-admin in namespace mail; it needs RBAC verb `get` on `secrets`"),
        "{err}"
    );
    assert!(
        !mock.requests.lock().unwrap()[before..]
            .iter()
            .any(|r| r.contains("portforward")),
    );

    // Another Organization's relays: none here.
    let out = relayctl(
        d,
        &[
            "queue",
            "list",
            "-n",
            NS,
            "--kubeconfig",
            kc,
            "--org",
            "other",
        ],
    )
    .await;
    let (table, err) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(table, "");
    assert_eq!(
        err,
        "error: no running relay pod in namespace mail (pods labelled app.kubernetes.io/instance=other,app.kubernetes.io/name=smtprelay)\n"
    );

    // A context the kubeconfig lacks, or both --url and -n: invalid input.
    let out = relayctl(
        d,
        &[
            "queue",
            "list",
            "-n",
            NS,
            "--kubeconfig",
            kc,
            "--context",
            "dave",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out).1);
    let out = relayctl(
        d,
        &[
            "queue",
            "list",
            "-n",
            NS,
            "--url",
            &format!("http://{}", zero.admin_addr()),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out).1);

    zero.shutdown().await;
    one.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_is_silent_refuses_or_has_no_token_is_named_and_the_others_still_answer() {
    use operator::queue_admin::QueueAction;
    use operator::queue_cluster::{ClusterTarget, Relays};
    let dir = tempfile::tempdir().unwrap();
    let zero = start_relay(dir.path(), "zero").await;
    let id = submit(zero.smtp_addr(), "ann@example.net", "on zero").await;
    deferred(&zero, &id).await;
    // Accepts connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    // Port 1 (tcpmux): outside the ports the system hands out, nothing listens there.
    let closed = SocketAddr::from(([127, 0, 0, 1], 1));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let mock = Arc::new(Mock {
        pods: vec![
            MockPod {
                name: "acme-relay-0",
                app: "smtprelay",
                phase: "Running",
                admin: Some(zero.admin_addr()),
                mounts_token: true,
            },
            MockPod {
                name: "acme-relay-1",
                app: "smtprelay",
                phase: "Running",
                admin: Some(silent_addr),
                mounts_token: true,
            },
            // Its admin port refuses connections.
            MockPod {
                name: "acme-relay-3",
                app: "smtprelay",
                phase: "Running",
                admin: Some(closed),
                mounts_token: true,
            },
            // Its queue administration is off: named, the others still asked.
            MockPod {
                name: "acme-relay-2",
                app: "smtprelay",
                phase: "Running",
                admin: None,
                mounts_token: false,
            },
        ],
        requests: Mutex::new(Vec::new()),
    });
    let server = serve_mock(mock).await;
    let target = ClusterTarget {
        namespace: NS.into(),
        kubeconfig: Some(kubeconfig(dir.path(), server)),
        pod_timeout: Some(Duration::from_secs(1)),
        ..Default::default()
    };
    let relays = Relays::find(target.client().await.unwrap(), &target)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let answers = relays.ask_all(&QueueAction::List).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(answers.len(), 4);
    assert_eq!(answers[0].0, "acme-relay-0");
    let list = answers[0].1.as_ref().unwrap();
    assert_eq!(list["messages"][0]["queueId"], id.as_str());
    assert_eq!(answers[1].0, "acme-relay-1");
    let e = answers[1].1.as_ref().unwrap_err();
    assert_eq!(e.to_string(), "pod acme-relay-1: no answer within 1s");
    let e = answers[2].1.as_ref().unwrap_err();
    assert_eq!(
        e.to_string(),
        "pod acme-relay-2: it mounts no admin token Secret, so its queue administration is off"
    );
    let e = answers[3].1.as_ref().unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "pod acme-relay-3: the port-forward to port 9090 failed: error forwarding port 9090 to pod: dial tcp {closed}: "
        )),
        "{e}"
    );
    zero.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_on_two_pods_is_acted_on_only_once_a_pod_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let zero = start_relay(dir.path(), "zero").await;
    let id = submit(zero.smtp_addr(), "ann@example.net", "twice").await;
    deferred(&zero, &id).await;
    // Two pods answering with the same spool: the same id on both.
    let mock = Arc::new(Mock {
        pods: ["acme-relay-0", "acme-relay-1"]
            .into_iter()
            .map(|name| MockPod {
                name,
                app: "smtprelay",
                phase: "Running",
                admin: Some(zero.admin_addr()),
                mounts_token: true,
            })
            .collect(),
        requests: Mutex::new(Vec::new()),
    });
    let kc = kubeconfig(dir.path(), serve_mock(mock).await);
    let kc = kc.to_str().unwrap();
    let d = dir.path();
    let out = relayctl(d, &["queue", "hold", &id, "-n", NS, "--kubeconfig", kc]).await;
    let (said, err) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert_eq!(
        err,
        format!(
            "error: message {id} is queued on several pods (acme-relay-0, acme-relay-1); nothing was done: name one with --pod\n"
        )
    );
    assert_eq!(deferred(&zero, &id).await["state"], "pending");
    let out = relayctl(
        d,
        &[
            "queue",
            "hold",
            &id,
            "-n",
            NS,
            "--kubeconfig",
            kc,
            "--pod",
            "acme-relay-1",
        ],
    )
    .await;
    let (said, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(said, format!("{id}: held (pod acme-relay-1)\n"));
    assert_eq!(deferred(&zero, &id).await["state"], "held");
    zero.shutdown().await;
}
