//! A graceful stop (SPEC §3.9), as the kubelet does it with SIGTERM: `/readyz` fails first
//! while the SMTP listeners still serve for the drain delay (so endpoints can be updated
//! before any connection is refused), then new connections are refused and the process
//! exits cleanly.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{config, connect};
use relay::StartOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The status code `/readyz` answers with; `None` when the admin endpoint is closed.
async fn readyz(admin: SocketAddr) -> Option<u16> {
    let mut s = TcpStream::connect(admin).await.ok()?;
    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).await.ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

/// One message through a new connection; the final reply.
async fn one_message(smtp: SocketAddr) -> String {
    let mut c = connect(smtp).await;
    c.cmd("EHLO client.acme.example").await;
    let (_, _, done) = c
        .transaction(
            "app@acme.example",
            &["bob@dest.example".to_string()],
            "Subject: during the drain\r\n\r\nx",
        )
        .await;
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye");
    done.unwrap()
}

/// Waits (bounded) until a new connection to `addr` is refused; how long that took.
async fn refused_within(addr: SocketAddr, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if TcpStream::connect(addr).await.is_err() {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test]
async fn during_the_drain_delay_readyz_fails_and_new_mail_is_still_accepted_then_connections_are_refused()
 {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay::start(
        config(&dir.path().join("spool"), 9),
        StartOptions::default(),
    )
    .await
    .unwrap();
    let (smtp, admin) = (relay.smtp_addr(), relay.admin_addr());
    assert_eq!(readyz(admin).await, Some(200));

    let delay = Duration::from_secs(6);
    let started = Instant::now();
    let stop = tokio::spawn(relay.stop(delay));
    assert_eq!(readyz(admin).await, Some(503));
    assert!(
        one_message(smtp)
            .await
            .starts_with("250 2.0.0 OK queued as ")
    );
    assert!(
        started.elapsed() < delay,
        "the check ran too late to mean anything"
    );

    let refused = refused_within(smtp, Duration::from_secs(10)).await;
    assert!(
        refused.is_some(),
        "the listener stayed open after the drain delay"
    );
    assert!(started.elapsed() >= delay);
    tokio::time::timeout(Duration::from_secs(10), stop)
        .await
        .unwrap()
        .unwrap();
    // The spool is free for the next relay.
    relay::Spool::open(dir.path().join("spool")).unwrap();
}

#[tokio::test]
async fn a_zero_drain_delay_refuses_new_connections_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay::start(
        config(&dir.path().join("spool"), 9),
        StartOptions::default(),
    )
    .await
    .unwrap();
    let smtp = relay.smtp_addr();
    relay.stop(Duration::ZERO).await;
    assert!(TcpStream::connect(smtp).await.is_err());
}

/// Kills the child on drop, so a failed assertion leaves no relay running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_relay_binary_on_sigterm_fails_readiness_serves_for_the_drain_delay_and_exits_cleanly()
{
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.json");
    let cfg = config(&dir.path().join("spool"), 9);
    std::fs::write(&path, cfg.seal().to_json()).unwrap();
    let mut child = Running(
        Command::new(env!("CARGO_BIN_EXE_relay"))
            .arg("--config")
            .arg(&path)
            .args(["--drain-delay-seconds", "8"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let addr = |name: &str| -> SocketAddr {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
            .parse()
            .unwrap()
    };
    let (smtp, admin) = (addr("smtp="), addr("admin="));
    assert_eq!(readyz(admin).await, Some(200));

    let started = Instant::now();
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.0.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    // Readiness fails first; the listener still takes mail.
    let mut ready = readyz(admin).await;
    // Generous bounds: a loaded machine may take a while to deliver the signal, and an
    // answer cut short by it (None) is asked again.
    while ready != Some(503) && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        ready = readyz(admin).await;
    }
    assert_eq!(ready, Some(503));
    assert!(
        one_message(smtp)
            .await
            .starts_with("250 2.0.0 OK queued as ")
    );
    assert!(started.elapsed() < Duration::from_secs(8));

    assert!(
        refused_within(smtp, Duration::from_secs(15))
            .await
            .is_some()
    );
    assert!(started.elapsed() >= Duration::from_secs(8));
    let mut child = child;
    let exit = tokio::task::spawn_blocking(move || child.0.wait().unwrap())
        .await
        .unwrap();
    assert!(exit.success(), "relay exited with {exit:?} after SIGTERM");
}
