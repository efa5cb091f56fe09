//! The admin endpoint under abuse (SPEC §3.8), over real TCP on loopback: a client that
//! never finishes its request headers is cut off, and clients beyond the connection cap
//! are closed at once while `/healthz` stays served once they are gone.

mod common;

use std::time::{Duration, Instant};

use common::config;
use relay::admin::AdminLimits;
use relay::{RelayHandle, StartOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(dir: &std::path::Path, limits: AdminLimits) -> RelayHandle {
    let cfg = config(&dir.join("spool"), 9);
    relay::start(
        cfg,
        StartOptions {
            admin: limits,
            ..StartOptions::default()
        },
    )
    .await
    .unwrap()
}

/// Reads until the server closes: `Some(bytes read)`, or `None` when it is still open
/// after `wait`.
async fn closed_within(tcp: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 1024];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| got)
}

async fn healthz(relay: &RelayHandle) -> String {
    let mut s = TcpStream::connect(relay.admin_addr()).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out)).await;
    out
}

/// Slowloris: headers that never end hold a connection only for the header timeout.
#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(
        dir.path(),
        AdminLimits {
            header_read_timeout: Duration::from_millis(500),
            ..AdminLimits::default()
        },
    )
    .await;
    let started = Instant::now();
    let mut slow = TcpStream::connect(relay.admin_addr()).await.unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert!(
        closed_within(&mut slow, Duration::from_secs(5))
            .await
            .is_some(),
        "the connection is still open after 5 s"
    );
    assert!(started.elapsed() >= Duration::from_millis(400));
    // A connection that sends nothing at all is cut off too.
    let mut silent = TcpStream::connect(relay.admin_addr()).await.unwrap();
    assert!(
        closed_within(&mut silent, Duration::from_secs(5))
            .await
            .is_some()
    );
    assert!(healthz(&relay).await.starts_with("HTTP/1.1 200"));
    relay.shutdown().await;
}

/// Beyond the cap a new connection is closed at once, without a byte; once the holders
/// go, the endpoint serves again.
#[tokio::test]
async fn connections_beyond_the_cap_are_closed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(
        dir.path(),
        AdminLimits {
            header_read_timeout: Duration::from_secs(60),
            max_connections: 4,
        },
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(relay.admin_addr()).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
        held.push(s);
    }
    // The holders' connections are accepted (and counted) before the next one.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut over = TcpStream::connect(relay.admin_addr()).await.unwrap();
    let _ = over
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert_eq!(
        closed_within(&mut over, Duration::from_secs(5)).await,
        Some(Vec::new()),
        "the fifth connection is closed without an answer"
    );
    drop(held);
    let mut served = String::new();
    for _ in 0..50 {
        served = healthz(&relay).await;
        if served.starts_with("HTTP/1.1 200") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served.starts_with("HTTP/1.1 200"), "{served:?}");
    relay.shutdown().await;
}
