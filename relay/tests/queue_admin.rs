//! Queue administration on the admin endpoint (SPEC §3.8): refused without the token,
//! disabled without a configured one; list and show a deferred message with its last
//! error; a hold survives a restart; flush delivers now; delete removes without a DSN.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::{connect, queue_id};
use relay::delivery::testing::{SinkConfig, TestSink};
use relay::{RelayConfig, RelayHandle, StartOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "s3cret-token-for-tests";

/// One HTTP/1.1 request; the status and the body.
async fn http(admin: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(admin).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    s.write_all(
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

async fn call(relay: &RelayHandle, method: &str, path: &str) -> (u16, serde_json::Value) {
    let (status, body) = http(relay.admin_addr(), method, path, Some(TOKEN)).await;
    let value = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    (status, value)
}

/// A port nothing listens on (yet): the downstream is down.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback relay with the default retry schedule (a minute before the first retry), a
/// token file, and the spool in `dir/spool`.
fn config(dir: &Path, route_port: u16) -> RelayConfig {
    let token = dir.join("admin-token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let mut cfg = RelayConfig::loopback(&dir.join("spool").to_string_lossy(), route_port);
    cfg.delivery.connect_timeout_seconds = 2;
    cfg.admin_token_file = Some(token.to_string_lossy().into_owned());
    cfg
}

/// Sends one message; its queue id.
async fn send(relay: &RelayHandle) -> String {
    let mut c = connect(relay.smtp_addr()).await;
    c.cmd("EHLO client.acme.example").await;
    let (_, _, done) = c
        .transaction(
            "app@acme.example",
            &["bob@dest.example".to_string()],
            "Subject: queued for the operator\r\nX-Trace: 42\r\n\r\nthe secret body",
        )
        .await;
    c.cmd("QUIT").await;
    queue_id(&done.unwrap())
}

/// Waits (bounded) until the message has had a failed attempt.
async fn deferred(relay: &RelayHandle, id: &str) {
    for _ in 0..200 {
        if relay.queue().state(id).is_some_and(|s| s.attempts >= 1) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("message {id} was never deferred");
}

async fn deferred_message(dir: &Path) -> (RelayHandle, String, u16) {
    let port = free_port();
    let relay = relay::start(config(dir, port), StartOptions::default())
        .await
        .unwrap();
    let id = send(&relay).await;
    deferred(&relay, &id).await;
    (relay, id, port)
}

async fn sink_on(port: u16) -> TestSink {
    TestSink::start_on(
        SocketAddr::from(([127, 0, 0, 1], port)),
        SinkConfig::default(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn queue_operations_need_the_token_and_are_disabled_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay::start(config(dir.path(), 9), StartOptions::default())
        .await
        .unwrap();
    let admin = relay.admin_addr();
    for (method, path) in [
        ("GET", "/queue"),
        ("GET", "/queue/1"),
        ("POST", "/queue/1/hold"),
        ("POST", "/queue/flush"),
        ("DELETE", "/queue/1"),
    ] {
        let (status, body) = http(admin, method, path, None).await;
        assert_eq!(status, 401, "{method} {path} without a token");
        assert_eq!(body, "unauthorized\n", "no detail");
        let (status, _) = http(admin, method, path, Some("wrong-token")).await;
        assert_eq!(status, 401, "{method} {path} with a wrong token");
        let (status, _) = http(admin, method, path, Some(&TOKEN[..TOKEN.len() - 1])).await;
        assert_eq!(status, 401, "{method} {path} with a prefix of the token");
    }
    assert_eq!(http(admin, "GET", "/queue", Some(TOKEN)).await.0, 200);
    // The open endpoints stay open.
    assert_eq!(http(admin, "GET", "/healthz", None).await.0, 200);
    assert_eq!(http(admin, "GET", "/readyz", None).await.0, 200);
    assert_eq!(http(admin, "GET", "/metrics", None).await.0, 200);
    relay.shutdown().await;

    // No token file configured: disabled, whatever is presented.
    let mut cfg = config(dir.path(), 9);
    cfg.admin_token_file = None;
    let relay = relay::start(cfg, StartOptions::default()).await.unwrap();
    let (status, body) = http(relay.admin_addr(), "GET", "/queue", Some(TOKEN)).await;
    assert_eq!(status, 403);
    assert!(body.contains("disabled"), "{body}");
    assert_eq!(
        http(relay.admin_addr(), "GET", "/metrics", None).await.0,
        200
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn list_and_show_a_deferred_message_with_its_last_error_but_not_its_body() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, id, _) = deferred_message(dir.path()).await;

    let (status, list) = call(&relay, "GET", "/queue").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["total"], 1);
    let m = &list["messages"][0];
    assert_eq!(m["queueId"], id.as_str());
    assert_eq!(m["sender"], "app@acme.example");
    assert_eq!(m["recipients"][0], "bob@dest.example");
    assert_eq!(m["state"], "pending");
    assert_eq!(m["attempts"], 1);
    let error = m["lastError"].as_str().unwrap_or_default();
    assert!(!error.is_empty(), "no last error: {m}");
    assert!(m["size"].as_u64().unwrap() > 0);

    let (status, shown) = call(&relay, "GET", &format!("/queue/{id}")).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["recipientStates"][0]["recipient"], "bob@dest.example");
    assert_eq!(shown["recipientStates"][0]["state"], "pending");
    assert_eq!(shown["recipientStates"][0]["lastError"], error);
    let headers = shown["headers"].as_str().unwrap();
    assert!(
        headers.contains("Subject: queued for the operator"),
        "{headers}"
    );
    assert!(headers.contains("X-Trace: 42"), "{headers}");
    assert!(!shown.to_string().contains("the secret body"), "{shown}");

    assert_eq!(call(&relay, "GET", "/queue/999999").await.0, 404);
    assert_eq!(call(&relay, "GET", "/queue/..%2Fx").await.0, 404);
    relay.shutdown().await;
}

#[tokio::test]
async fn flush_delivers_a_deferred_message_now() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, id, port) = deferred_message(dir.path()).await;
    let sink = sink_on(port).await;
    // A flush of another route leaves it waiting.
    let (_, other) = call(&relay, "POST", "/queue/flush?route=acme%2Fother").await;
    assert_eq!(other["flushed"], 0);
    // The next retry is a minute away: only the flush makes it go now.
    let (status, body) = call(&relay, "POST", "/queue/flush?route=acme%2Fdefault").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["flushed"], 1);
    tokio::time::timeout(Duration::from_secs(20), sink.wait_for_messages(1))
        .await
        .expect("the flushed message was not delivered");
    assert_eq!(sink.messages()[0].rcpt_to, vec!["bob@dest.example"]);
    let _ = id;
    relay.shutdown().await;
}

#[tokio::test]
async fn a_hold_survives_a_restart_and_release_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, id, port) = deferred_message(dir.path()).await;
    let (status, body) = call(&relay, "POST", &format!("/queue/{id}/hold")).await;
    assert_eq!(status, 200, "{body}");
    relay.shutdown().await;

    // Downstream up, relay restarted on the same spool: still held.
    let sink = sink_on(port).await;
    let relay = relay::start(config(dir.path(), port), StartOptions::default())
        .await
        .unwrap();
    let (_, list) = call(&relay, "GET", "/queue").await;
    assert_eq!(list["messages"][0]["queueId"], id.as_str());
    assert_eq!(list["messages"][0]["state"], "held");
    // Due now, and still not attempted.
    let (_, flushed) = call(&relay, "POST", "/queue/flush").await;
    assert_eq!(flushed["flushed"], 0);
    let report = relay.queue().run_due().await;
    assert_eq!(report.messages, 0);
    assert!(sink.messages().is_empty());

    let (status, body) = call(&relay, "POST", &format!("/queue/{id}/release")).await;
    assert_eq!(status, 200, "{body}");
    tokio::time::timeout(Duration::from_secs(20), sink.wait_for_messages(1))
        .await
        .expect("the released message was not delivered");
    relay.shutdown().await;
}

#[tokio::test]
async fn delete_removes_a_message_without_delivery_or_dsn() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, id, port) = deferred_message(dir.path()).await;
    let (status, body) = call(&relay, "DELETE", &format!("/queue/{id}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(call(&relay, "GET", &format!("/queue/{id}")).await.0, 404);
    assert_eq!(call(&relay, "DELETE", &format!("/queue/{id}")).await.0, 404);
    assert_eq!(relay.spool().depth(), 0);

    // Downstream up and everything flushed: nothing arrives (no message, no DSN).
    let sink = sink_on(port).await;
    call(&relay, "POST", "/queue/flush").await;
    relay.queue().run_due().await;
    assert!(sink.messages().is_empty());
    relay.shutdown().await;

    // Not back after a restart either.
    let relay = relay::start(config(dir.path(), port), StartOptions::default())
        .await
        .unwrap();
    assert_eq!(call(&relay, "GET", "/queue").await.1["total"], 0);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_message_under_way_is_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    // The sink takes the message but withholds its reply: the attempt stays under way.
    let sink = TestSink::start(SinkConfig {
        hold_after: Some(0),
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let relay = relay::start(config(dir.path(), sink.port()), StartOptions::default())
        .await
        .unwrap();
    let id = send(&relay).await;
    tokio::time::timeout(Duration::from_secs(20), sink.wait_for_messages(1))
        .await
        .expect("the attempt never reached the sink");
    let (_, list) = call(&relay, "GET", "/queue").await;
    assert_eq!(list["messages"][0]["state"], "delivering");
    let (status, body) = call(&relay, "DELETE", &format!("/queue/{id}")).await;
    assert_eq!(status, 409, "{body}");
    sink.release();
    for _ in 0..200 {
        if relay.queue().queued().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        relay.queue().queued().is_empty(),
        "the message was not delivered"
    );
    relay.shutdown().await;
}
