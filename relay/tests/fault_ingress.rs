//! Ingress under hostile clients, in-process on loopback (SPEC §3.4): a slowloris client is
//! cut off by the session timeout, 1,000 idle connections from one IP get `421` past the
//! per-IP cap without starving other clients, and a flood of bad commands ends in `421`.

mod common;

use std::time::Duration;

use common::{Client, config, connect, connect_from, queue_id};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const TIMEOUT: &str = "421 4.4.2 relay.acme.example Error: timeout exceeded";
const TOO_MANY_ERRORS: &str =
    "421 4.7.0 relay.acme.example Error: too many errors, closing connection";

/// One message from a well-behaved client; returns the final reply.
async fn relay_one(c: &mut Client<TcpStream>) -> String {
    c.cmd("EHLO good.acme.example").await;
    let (_, refused, done) = c
        .transaction(
            "bob@acme.example",
            &["a@dest.example".to_string()],
            "Subject: hi\r\n\r\nhello",
        )
        .await;
    assert!(refused.is_empty(), "{refused:?}");
    done.unwrap()
}

#[tokio::test]
async fn a_slowloris_client_is_cut_off_by_the_session_timeout_and_others_still_relay() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir.path().join("spool"), 9);
    // Each byte arrives well within the idle timeout; only the total timeout ends it.
    cfg.limits.idle_timeout_seconds = 2;
    cfg.limits.session_timeout_seconds = 3;
    let relay = relay::start(cfg, relay::StartOptions::default())
        .await
        .unwrap();

    let slow = connect(relay.smtp_addr()).await;
    let (mut reader, mut writer) = tokio::io::split(slow.io.into_inner());
    let dribble = tokio::spawn(async move {
        // At most 60 bytes, one every 500 ms, of a command line that never ends.
        for b in b"NOOP ".iter().chain([b'x'; 55].iter()) {
            if writer.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    // Meanwhile another client is served normally.
    let mut good = connect(relay.smtp_addr()).await;
    queue_id(&relay_one(&mut good).await);

    let mut slow = Client {
        io: BufReader::new(&mut reader),
    };
    assert_eq!(slow.try_reply().await.as_deref(), Some(TIMEOUT));
    assert!(slow.closed().await);
    dribble.abort();
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_from_one_ip_get_421_past_the_cap_and_others_relay() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir.path().join("spool"), 9);
    let cap = cfg.limits.connections_per_ip as usize;
    let relay = relay::start(cfg, relay::StartOptions::default())
        .await
        .unwrap();

    let mut idle = Vec::new();
    let mut greeted = 0;
    let mut refused = 0;
    for _ in 0..1000 {
        let mut c = Client {
            io: BufReader::new(TcpStream::connect(relay.smtp_addr()).await.unwrap()),
        };
        match c.try_reply().await.as_deref() {
            Some("220 relay.acme.example ESMTP") => greeted += 1,
            Some("421 4.7.0 Too many connections from 127.0.0.1") => {
                refused += 1;
                assert!(c.closed().await);
            }
            other => panic!("unexpected greeting {other:?}"),
        }
        // Left open and silent.
        idle.push(c);
    }
    assert_eq!((greeted, refused), (cap, 1000 - cap));

    // Clients from other addresses are still greeted and relay.
    for src in ["127.0.0.2", "127.0.0.3"] {
        let mut c = connect_from(src, relay.smtp_addr()).await;
        queue_id(&relay_one(&mut c).await);
    }
    // The flooding address gets its slots back as its connections close.
    idle.truncate(cap - 1);
    let mut c = connect_from("127.0.0.1", relay.smtp_addr()).await;
    queue_id(&relay_one(&mut c).await);
    drop(idle);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_flood_of_bad_commands_ends_in_421_and_close() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir.path().join("spool"), 9);
    cfg.limits.max_errors = 10;
    let relay = relay::start(cfg, relay::StartOptions::default())
        .await
        .unwrap();
    let mut c = connect(relay.smtp_addr()).await;
    let garbage: [&[u8]; 5] = [
        b"BOGUS",
        b"\x00\xff\xfe binary",
        b"MAIL FROM:<unterminated",
        b"RCPT TO:<x@y.example>",
        b"DATA",
    ];
    let mut replies = Vec::new();
    // Bounded: at most 1,000 commands; the relay must hang up long before.
    for i in 0..1000 {
        let mut line = garbage[i % garbage.len()].to_vec();
        line.extend_from_slice(b"\r\n");
        if c.io.get_mut().write_all(&line).await.is_err() {
            break;
        }
        match c.try_reply().await {
            Some(r) => replies.push(r),
            None => break,
        }
        // The closing 421 comes in the same write as the last error reply.
        if !c.io.buffer().is_empty() {
            replies.extend(c.try_reply().await);
        }
        if replies.last().is_some_and(|r| r == TOO_MANY_ERRORS) {
            break;
        }
    }
    assert_eq!(replies.len(), 11, "{replies:?}");
    assert!(
        replies[..10].iter().all(|r| r.starts_with('5')),
        "{replies:?}"
    );
    assert_eq!(replies[10], TOO_MANY_ERRORS);
    assert!(c.closed().await);
    // The relay still serves others.
    let mut good = connect(relay.smtp_addr()).await;
    queue_id(&relay_one(&mut good).await);
    relay.shutdown().await;
}
