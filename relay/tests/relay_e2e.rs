//! Accept and deliver in one process: a client relays through the in-process relay, the
//! message reaches a sink over loopback, and leaves the spool only once delivered. A relay
//! restarted with mail still queued delivers it.

use std::net::SocketAddr;
use std::time::Duration;

mod common;

use common::config;
use relay::config::RelayConfig;
use relay::delivery::testing::{SinkConfig, TestSink};
use relay::{RelayHandle, StartOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Sends one message and returns the final reply to DATA.
async fn send(addr: SocketAddr, from: &str, to: &[&str]) -> String {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    let mut read_reply = async |r: &mut BufReader<_>| {
        let mut reply = String::new();
        loop {
            line.clear();
            r.read_line(&mut line).await.unwrap();
            reply.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return reply.trim_end().to_string();
            }
        }
    };
    read_reply(&mut r).await;
    let mut script = format!("EHLO client.acme.example\r\nMAIL FROM:<{from}>\r\n");
    for rcpt in to {
        script.push_str(&format!("RCPT TO:<{rcpt}>\r\n"));
    }
    script.push_str("DATA\r\n");
    w.write_all(script.as_bytes()).await.unwrap();
    for _ in 0..(3 + to.len()) {
        let reply = read_reply(&mut r).await;
        assert!(reply.starts_with('2') || reply.starts_with('3'), "{reply}");
    }
    w.write_all(b"Subject: hello\r\nFrom: a@acme.example\r\n\r\nbody line\r\n.\r\nQUIT\r\n")
        .await
        .unwrap();
    read_reply(&mut r).await
}

async fn wait_until(mut done: impl FnMut() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not reached within 10 s");
}

async fn start(cfg: RelayConfig) -> RelayHandle {
    relay::start(cfg, StartOptions::default()).await.unwrap()
}

#[tokio::test]
async fn accepted_mail_is_delivered_to_the_route_and_leaves_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let sink = TestSink::start(SinkConfig::default()).await.unwrap();
    let relay = start(config(dir.path(), sink.port())).await;
    let reply = send(
        relay.smtp_addr(),
        "app@acme.example",
        &["bob@example.net", "carol@example.org"],
    )
    .await;
    assert!(reply.starts_with("250 2.0.0 "), "{reply}");
    tokio::time::timeout(Duration::from_secs(10), sink.wait_for_messages(1))
        .await
        .unwrap();
    let got = sink.messages();
    assert_eq!(
        got.len(),
        1,
        "two recipients on one route share one delivery"
    );
    assert_eq!(got[0].mail_from, "app@acme.example");
    assert_eq!(got[0].rcpt_to, ["bob@example.net", "carol@example.org"]);
    let data = String::from_utf8_lossy(&got[0].data);
    assert!(
        data.starts_with("Received: from client.acme.example"),
        "{data}"
    );
    assert!(data.contains("\r\nSubject: hello\r\n"), "{data}");
    let spool = relay.spool();
    wait_until(|| spool.depth() == 0).await;
    relay.shutdown().await;
}

#[tokio::test]
async fn mail_queued_when_the_relay_stopped_is_delivered_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    // Downstream is down: a port with nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let relay = start(config(dir.path(), closed_port)).await;
    for i in 0..3 {
        let reply = send(
            relay.smtp_addr(),
            "app@acme.example",
            &[&format!("user{i}@example.net")],
        )
        .await;
        assert!(reply.starts_with("250 "), "{reply}");
    }
    assert_eq!(relay.spool().depth(), 3);
    relay.shutdown().await;

    // Downstream is back, on the port the route names; the relay restarts on the same spool.
    let sink = TestSink::start_on(
        format!("127.0.0.1:{closed_port}").parse().unwrap(),
        SinkConfig::default(),
    )
    .await
    .unwrap();
    let relay = start(config(dir.path(), closed_port)).await;
    tokio::time::timeout(Duration::from_secs(10), sink.wait_for_messages(3))
        .await
        .unwrap();
    let mut rcpts: Vec<String> = sink
        .messages()
        .into_iter()
        .flat_map(|m| m.rcpt_to)
        .collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        [
            "user0@example.net",
            "user1@example.net",
            "user2@example.net"
        ]
    );
    let spool = relay.spool();
    wait_until(|| spool.depth() == 0).await;
    relay.shutdown().await;
}

#[tokio::test]
async fn dkim_keys_of_the_config_sign_from_start_and_a_reload_replaces_them() {
    let dir = tempfile::tempdir().unwrap();
    let sink = TestSink::start(SinkConfig::default()).await.unwrap();
    let key = dir.path().join("dkim.key");
    std::fs::write(
        &key,
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .unwrap()
            .serialize_pem(),
    )
    .unwrap();
    let mut cfg = config(dir.path(), sink.port());
    cfg.dkim = vec![relay::config::DkimConfig {
        domain: "acme.example".into(),
        selector: "s1".into(),
        algorithm: relay::config::DkimAlgorithm::Ed25519Sha256,
        key_file: key.display().to_string(),
        headers: vec!["From".into(), "Subject".into()],
    }];
    let relay = start(cfg.clone()).await;
    let reply = send(relay.smtp_addr(), "app@acme.example", &["bob@example.net"]).await;
    assert!(reply.starts_with("250 "), "{reply}");
    tokio::time::timeout(Duration::from_secs(10), sink.wait_for_messages(1))
        .await
        .unwrap();
    let data = String::from_utf8_lossy(&sink.messages()[0].data).into_owned();
    assert!(data.starts_with("DKIM-Signature: "), "{data}");
    assert!(data.contains("d=acme.example"), "{data}");
    assert!(data.contains("s=s1"), "{data}");

    // Without keys, the next message goes out as accepted.
    let mut unsigned = cfg;
    unsigned.dkim.clear();
    relay.reload(unsigned.seal()).unwrap();
    let reply = send(relay.smtp_addr(), "app@acme.example", &["bob@example.net"]).await;
    assert!(reply.starts_with("250 "), "{reply}");
    tokio::time::timeout(Duration::from_secs(10), sink.wait_for_messages(2))
        .await
        .unwrap();
    let data = String::from_utf8_lossy(&sink.messages()[1].data).into_owned();
    assert!(data.starts_with("Received: "), "{data}");
    relay.shutdown().await;
}
