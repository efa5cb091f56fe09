//! SIGKILL under load (SPEC §3.4: `250` means on disk): the `relay` binary is loaded by
//! concurrent senders and killed mid-run; restarted on the same spool with a sink
//! downstream, it delivers every message it had acknowledged.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Client, config};
use relay::delivery::testing::{SinkConfig, TestSink};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Starts the relay binary on `cfg_path`; returns it and its SMTP address.
async fn spawn_relay(cfg_path: &Path) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_relay"))
        .arg("--config")
        .arg(cfg_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let smtp = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("smtp="))
        .unwrap_or_else(|| panic!("no smtp address in {line:?}"))
        .parse()
        .unwrap();
    (child, smtp)
}

/// Sends messages until the connection breaks (or 300 messages); returns the Message-IDs
/// the relay acknowledged with 250.
async fn sender(addr: SocketAddr, n: usize, sent: Arc<AtomicUsize>) -> Vec<String> {
    let mut acked = Vec::new();
    let Ok(tcp) = TcpStream::connect(addr).await else {
        return acked;
    };
    let mut c = Client {
        io: BufReader::new(tcp),
    };
    if c.try_reply().await.is_none() {
        return acked;
    }
    let step = async |c: &mut Client<TcpStream>, line: String| -> Option<String> {
        c.io.get_mut().write_all(line.as_bytes()).await.ok()?;
        c.try_reply().await
    };
    step(&mut c, "EHLO load.acme.example\r\n".into()).await;
    for m in 0..300 {
        let id = format!("<s{n}-m{m}@acme.example>");
        let mut ok = true;
        for line in [
            "MAIL FROM:<load@acme.example>\r\n".to_string(),
            format!("RCPT TO:<r{n}@dest.example>\r\n"),
            "DATA\r\n".to_string(),
        ] {
            match step(&mut c, line).await {
                Some(r) if r.starts_with('2') || r.starts_with('3') => {}
                _ => ok = false,
            }
            if !ok {
                break;
            }
        }
        if !ok {
            return acked;
        }
        let body = format!("Message-ID: {id}\r\nSubject: load\r\n\r\nmessage {m}\r\n.\r\n");
        match step(&mut c, body).await {
            Some(r) if r.starts_with("250 2.0.0 OK queued as ") => {
                acked.push(id);
                sent.fetch_add(1, Ordering::SeqCst);
            }
            _ => return acked,
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let cfg_path = dir.path().join("relay.json");
    // First run: downstream is a closed port, so every acknowledged message can only
    // reach the sink through the spool of the restarted relay.
    std::fs::write(&cfg_path, config(&spool, 9).seal().to_json()).unwrap();

    let (mut child, smtp) = spawn_relay(&cfg_path).await;
    let sent = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = (0..6)
        .map(|n| tokio::spawn(sender(smtp, n, sent.clone())))
        .collect();
    // Kill once 60 messages were acknowledged (bounded wait: 60 s).
    for _ in 0..600 {
        if sent.load(Ordering::SeqCst) >= 60 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let mut acked = Vec::new();
    for s in senders {
        acked.extend(s.await.unwrap());
    }
    assert!(acked.len() >= 60, "only {} acknowledged", acked.len());

    let sink = TestSink::start(SinkConfig::default()).await.unwrap();
    std::fs::write(&cfg_path, config(&spool, sink.port()).seal().to_json()).unwrap();
    let (mut child, _) = spawn_relay(&cfg_path).await;
    let delivered = |sink: &TestSink| -> HashSet<String> {
        sink.messages()
            .iter()
            .filter_map(|m| {
                String::from_utf8_lossy(&m.data)
                    .lines()
                    .find_map(|l| l.strip_prefix("Message-ID: ").map(str::to_string))
            })
            .collect()
    };
    // Bounded: up to 60 s for the restarted relay to deliver the queue.
    let mut missing: Vec<String> = acked.clone();
    for _ in 0..600 {
        let got = delivered(&sink);
        missing.retain(|id| !got.contains(id));
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged messages never reached the sink: {missing:?}",
        missing.len(),
        acked.len()
    );
    assert!(sink.messages().len() >= acked.len());
}
