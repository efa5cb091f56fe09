//! Draining a spool no relay serves any more (SPEC §3.4): every queued message is handed
//! over, with its envelope and delivery state, to a running relay's `POST /queue/import`,
//! or delivered by the drain itself when no relay remains. Messages in = messages out:
//! the sink gets every Message-ID once, recipients already delivered are not sent again,
//! and nothing leaves the drained spool that the receiving relay did not make durable.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::connect;
use relay::admin::drain::{DrainError, Handover, drain};
use relay::config::{HostConfig, RouteConfig, RouteHosts, RouteMatcher};
use relay::delivery::testing::{SinkConfig, TestSink};
use relay::{RelayConfig, RelayHandle, StartOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "drain-token-for-tests";

/// A port nothing listens on: the downstream is down.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(dir: &Path, name: &str, route_port: u16) -> RelayConfig {
    let token = dir.join(format!("{name}-token"));
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let mut cfg = RelayConfig::loopback(&dir.join(name).to_string_lossy(), route_port);
    cfg.delivery.connect_timeout_seconds = 2;
    cfg.admin_token_file = Some(token.to_string_lossy().into_owned());
    cfg
}

/// Sends one message with Message-ID `<n@acme.example>` to `rcpts`.
async fn send(relay: &RelayHandle, n: usize, rcpts: &[&str]) {
    let mut c = connect(relay.smtp_addr()).await;
    c.cmd("EHLO client.acme.example").await;
    let rcpts: Vec<String> = rcpts.iter().map(|r| r.to_string()).collect();
    let (accepted, _, done) = c
        .transaction(
            "app@acme.example",
            &rcpts,
            &format!("Message-ID: <{n}@acme.example>\r\nSubject: drained {n}\r\n\r\nbody {n}"),
        )
        .await;
    assert_eq!(accepted.len(), rcpts.len());
    assert!(done.unwrap().starts_with("250 "));
    c.cmd("QUIT").await;
}

/// Waits (bounded) until every queued message of `relay` had a failed attempt.
async fn all_deferred(relay: &RelayHandle, n: usize) {
    for _ in 0..400 {
        let q = relay.queue();
        let ids = q.queued();
        if ids.len() == n
            && ids
                .iter()
                .all(|id| q.state(id).is_some_and(|s| s.attempts >= 1))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the messages were never all deferred");
}

fn message_ids(sink: &TestSink) -> Vec<String> {
    sink.messages()
        .iter()
        .map(|m| {
            let text = String::from_utf8_lossy(&m.data);
            text.lines()
                .find_map(|l| l.strip_prefix("Message-ID: ").map(str::to_string))
                .unwrap_or_default()
        })
        .collect()
}

/// Waits until `relay`'s queue is empty (bounded).
async fn queue_empty(relay: &RelayHandle) {
    for _ in 0..400 {
        if relay.queue().queued().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the receiving relay's queue never emptied");
}

fn handover_to(relay: &RelayHandle, dir: &Path) -> Handover {
    Handover {
        targets: vec![format!("http://{}", relay.admin_addr())],
        token_file: dir.join("b-token"),
    }
}

/// Relay A, whose downstream at `route_port` is down, accepts `n` messages (Message-IDs
/// `<0@acme.example>`…) to bob@dest.example, defers them all and stops: its spool is
/// what the tests drain. Returns A's config.
async fn stopped_with_deferred_mail(dir: &Path, route_port: u16, n: usize) -> RelayConfig {
    let a_config = config(dir, "a", route_port);
    let a = relay::start(a_config.clone(), StartOptions::default())
        .await
        .unwrap();
    for i in 0..n {
        send(&a, i, &["bob@dest.example"]).await;
    }
    all_deferred(&a, n).await;
    a.shutdown().await;
    a_config
}

/// Relay B, delivering to `sink`: the one drains hand over to.
async fn relay_b(dir: &Path, sink: &TestSink) -> RelayHandle {
    relay::start(config(dir, "b", sink.port()), StartOptions::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_drained_spool_reaches_the_sink_through_another_relay_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    // Relay A defers everything, then is scaled away (its spool unlocked).
    const N: usize = 25;
    let a_config = stopped_with_deferred_mail(dir.path(), free_port(), N).await;
    let sink = TestSink::start(SinkConfig::default()).await.unwrap();
    let b = relay_b(dir.path(), &sink).await;
    let report = drain(&a_config, Some(&handover_to(&b, dir.path())), None)
        .await
        .unwrap();
    assert_eq!(report.handed_over, N as u64);

    tokio::time::timeout(Duration::from_secs(30), sink.wait_for_messages(N))
        .await
        .expect("every drained message is delivered");
    queue_empty(&b).await;
    let ids = message_ids(&sink);
    assert_eq!(ids.len(), N, "no message twice: {ids:?}");
    let expected: BTreeSet<String> = (0..N).map(|n| format!("<{n}@acme.example>")).collect();
    assert_eq!(ids.into_iter().collect::<BTreeSet<_>>(), expected);
    for m in sink.messages() {
        assert_eq!(
            m.mail_from, "app@acme.example",
            "the original envelope sender"
        );
        assert_eq!(m.rcpt_to, vec!["bob@dest.example".to_string()]);
        // One Received: line, A's: the hand-over is not a hop.
        let text = String::from_utf8_lossy(&m.data);
        assert_eq!(text.matches("Received: ").count(), 1, "{text}");
    }
    // A's spool is empty: a relay starting on it has nothing to deliver.
    let again = relay::start(a_config, StartOptions::default())
        .await
        .unwrap();
    assert!(again.queue().queued().is_empty());
    assert_eq!(again.spool().depth(), 0);
    again.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn recipients_delivered_before_the_drain_are_not_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let sink = TestSink::start(SinkConfig::default()).await.unwrap();
    // A delivers `up.example` to the sink; `down.example` goes to a port nobody answers.
    let mut a_config = config(dir.path(), "a", sink.port());
    a_config.routes.insert(
        0,
        RouteConfig {
            name: "acme/down".into(),
            description: "down".into(),
            matcher: RouteMatcher::Domains(vec!["down.example".into()]),
            hosts: RouteHosts::Single(HostConfig {
                host: "127.0.0.1".into(),
                port: free_port(),
            }),
            ..a_config.routes[0].clone()
        },
    );
    let a = relay::start(a_config.clone(), StartOptions::default())
        .await
        .unwrap();
    send(&a, 1, &["ann@up.example", "dan@down.example"]).await;
    all_deferred(&a, 1).await;
    assert_eq!(sink.messages().len(), 1);
    assert_eq!(sink.messages()[0].rcpt_to, vec!["ann@up.example"]);
    a.shutdown().await;

    let b = relay::start(
        config(dir.path(), "b", sink.port()),
        StartOptions::default(),
    )
    .await
    .unwrap();
    let report = drain(&a_config, Some(&handover_to(&b, dir.path())), None)
        .await
        .unwrap();
    assert_eq!(report.handed_over, 1);
    tokio::time::timeout(Duration::from_secs(30), sink.wait_for_messages(2))
        .await
        .expect("the pending recipient is delivered by the receiving relay");
    queue_empty(&b).await;
    let got: Vec<Vec<String>> = sink.messages().iter().map(|m| m.rcpt_to.clone()).collect();
    assert_eq!(
        got,
        vec![
            vec!["ann@up.example".to_string()],
            vec!["dan@down.example".to_string()]
        ],
        "ann was delivered by A and is not sent again"
    );
    b.shutdown().await;
}

#[tokio::test]
async fn a_refused_hand_over_leaves_the_spool_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let a_config = stopped_with_deferred_mail(dir.path(), free_port(), 3).await;
    let sink = TestSink::start(SinkConfig::default()).await.unwrap();
    let b = relay_b(dir.path(), &sink).await;
    let wrong = dir.path().join("wrong-token");
    std::fs::write(&wrong, "not-the-token\n").unwrap();
    let handover = Handover {
        targets: vec![format!("http://{}", b.admin_addr())],
        token_file: wrong,
    };
    let err = drain(&a_config, Some(&handover), None).await.unwrap_err();
    assert!(
        matches!(err, DrainError::Refused { status: 401, .. }),
        "{err}"
    );
    assert!(b.queue().queued().is_empty(), "nothing was imported");
    // The drain holds the spool lock only while it runs; A's messages are all still there.
    let again = relay::start(a_config, StartOptions::default())
        .await
        .unwrap();
    assert_eq!(again.spool().depth(), 3);
    again.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_drain_does_not_run_on_a_spool_a_relay_still_serves() {
    let dir = tempfile::tempdir().unwrap();
    let a_config = config(dir.path(), "a", free_port());
    let a = relay::start(a_config.clone(), StartOptions::default())
        .await
        .unwrap();
    let err = drain(&a_config, None, None).await.unwrap_err();
    assert!(
        err.to_string().contains("in use by another relay process"),
        "{err}"
    );
    a.shutdown().await;
}

#[tokio::test]
async fn with_no_relay_left_the_drain_delivers_the_spool_itself() {
    let dir = tempfile::tempdir().unwrap();
    let down = free_port();
    let a_config = stopped_with_deferred_mail(dir.path(), down, 5).await;

    // The downstream is back (on the port the route names).
    let sink = TestSink::start_on(
        SocketAddr::from(([127, 0, 0, 1], down)),
        SinkConfig::default(),
    )
    .await
    .unwrap();
    // Deferred messages are not due for a minute; a drain delivers them now.
    let report = tokio::time::timeout(Duration::from_secs(60), drain(&a_config, None, None))
        .await
        .expect("the drain ends once the spool is empty")
        .unwrap();
    assert_eq!(report.delivered, 5);
    assert_eq!(sink.messages().len(), 5);
    let ids: BTreeSet<String> = message_ids(&sink).into_iter().collect();
    assert_eq!(ids.len(), 5);
}

/// One raw HTTP/1.1 request with a body; the status and the body of the answer.
async fn post_raw(admin: SocketAddr, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(admin).await.unwrap();
    s.write_all(
        format!(
            "POST /queue/import HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    s.write_all(body).await.unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    (
        status,
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    )
}

#[tokio::test]
async fn an_import_shorter_or_longer_than_announced_queues_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sink = TestSink::start(SinkConfig::default()).await.unwrap();
    let b = relay::start(
        config(dir.path(), "b", sink.port()),
        StartOptions::default(),
    )
    .await
    .unwrap();
    let text = b"Subject: x\r\n\r\nhello\r\n";
    // Received a minute ago (an import must lie within the queue lifetime).
    let received = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 60;
    let head = |size: usize| {
        serde_json::json!({
            "envelope": {
                "queueId": "0000000000000001",
                "mailFrom": "app@acme.example",
                "rcpts": ["bob@dest.example"],
                "clientIp": "127.0.0.1",
                "helo": "client",
                "receivedAt": {"secs_since_epoch": received, "nanos_since_epoch": 0},
                "size": size,
            }
        })
        .to_string()
    };
    for (announced, why) in [(text.len() + 5, "shorter"), (text.len() - 5, "longer")] {
        let mut body = head(announced).into_bytes();
        body.push(b'\n');
        body.extend_from_slice(text);
        let (status, answer) = post_raw(b.admin_addr(), &body).await;
        assert_eq!(status, 400, "a text {why} than announced: {answer}");
    }
    let (status, answer) = post_raw(b.admin_addr(), b"{not json}\nSubject: x\r\n").await;
    assert_eq!(status, 400, "{answer}");
    assert!(b.queue().queued().is_empty());
    assert_eq!(b.spool().depth(), 0);
    // The same text, announced right, is queued and delivered.
    let mut body = head(text.len()).into_bytes();
    body.push(b'\n');
    body.extend_from_slice(text);
    let (status, answer) = post_raw(b.admin_addr(), &body).await;
    assert_eq!(status, 200, "{answer}");
    tokio::time::timeout(Duration::from_secs(30), sink.wait_for_messages(1))
        .await
        .unwrap();
    assert_eq!(sink.messages()[0].data, text.to_vec());
    b.shutdown().await;
}

/// A target that answers `200` without naming the message it took (here `{}`, as a
/// stray server or a proxy might) must not make the drain delete it: the drain stops,
/// every message still in its spool.
#[tokio::test]
async fn a_200_that_does_not_echo_the_queue_id_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a_config = stopped_with_deferred_mail(dir.path(), free_port(), 2).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                // Headers and body are small: one read or two, then the answer.
                let _ = tokio::time::timeout(Duration::from_millis(300), async {
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                })
                .await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
                    )
                    .await;
            });
        }
    });
    std::fs::write(dir.path().join("b-token"), TOKEN).unwrap();
    let handover = Handover {
        targets: vec![format!("http://{addr}")],
        token_file: dir.path().join("b-token"),
    };
    let e = tokio::time::timeout(
        Duration::from_secs(30),
        drain(&a_config, Some(&handover), None),
    )
    .await
    .expect("the drain stops")
    .unwrap_err();
    assert!(matches!(e, DrainError::Unconfirmed { .. }), "{e}");
    let spool = relay::Spool::open(&a_config.spool_dir).unwrap();
    assert_eq!(spool.depth(), 2, "nothing deleted on an unconfirmed 200");
}

/// An import's envelope is checked as ingress checks one: CR/LF in a recipient or the
/// sender, a recipient that is no path, and a `receivedAt` far in the future or before
/// the queue lifetime are refused with `400` and the reason; nothing is queued.
#[tokio::test]
async fn an_import_with_cr_lf_in_an_address_or_a_wild_received_at_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sink = TestSink::start(SinkConfig::default()).await.unwrap();
    let b = relay_b(dir.path(), &sink).await;
    let text = b"Subject: x\r\n\r\nhello\r\n";
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let head = |from: &str, rcpt: &str, at: u64| {
        serde_json::json!({
            "envelope": {
                "queueId": "0000000000000001",
                "mailFrom": from,
                "rcpts": [rcpt],
                "clientIp": "127.0.0.1",
                "helo": "client",
                "receivedAt": {"secs_since_epoch": at, "nanos_since_epoch": 0},
                "size": text.len(),
            }
        })
        .to_string()
    };
    let cases = [
        (
            "app@acme.example",
            "bob@dest.example\r\nRCPT TO:<evil@x.example>",
            now,
            "recipient",
        ),
        (
            "app@acme.example\r\nX: y",
            "bob@dest.example",
            now,
            "sender",
        ),
        ("app@acme.example", "not an address", now, "recipient"),
        (
            "app@acme.example",
            "bob@dest.example",
            now + 365 * 24 * 3600,
            "future",
        ),
        ("app@acme.example", "bob@dest.example", 0, "older"),
    ];
    for (from, rcpt, at, why) in cases {
        let mut body = head(from, rcpt, at).into_bytes();
        body.push(b'\n');
        body.extend_from_slice(text);
        let (status, answer) = post_raw(b.admin_addr(), &body).await;
        assert_eq!(status, 400, "{why}: {answer}");
        assert!(answer.contains(why), "{why}: {answer}");
    }
    assert_eq!(b.spool().depth(), 0);
    // A sound one is taken, and the answer names it.
    let mut body = head("app@acme.example", "bob@dest.example", now).into_bytes();
    body.push(b'\n');
    body.extend_from_slice(text);
    let (status, answer) = post_raw(b.admin_addr(), &body).await;
    assert_eq!(status, 200, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["sourceQueueId"], "0000000000000001");
    assert_eq!(answer["size"], text.len());
    assert!(answer["queueId"].as_str().is_some_and(|q| q.len() == 16));
    b.shutdown().await;
}
