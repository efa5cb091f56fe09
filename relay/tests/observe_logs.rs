//! The `relay` binary's `--log-format json`: one JSON object per line on stderr, and the
//! message outcome events carry the field names the README ("Observe") promises.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

mod common;

use common::{config, connect};
use relay::delivery::testing::{SinkConfig, TestSink};
use serde_json::Value;

/// Kills the child on drop, so a failed assertion leaves no relay running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The next stderr object whose `message` is `message` and `result` is `result`, within
/// a few seconds; every line read on the way must be a JSON object.
fn next_event(lines: &mpsc::Receiver<String>, message: &str, result: &str) -> Value {
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no {message:?} event with result {result:?}"));
        let event: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("stderr line is not JSON ({e}): {line}"));
        assert!(event.is_object(), "{line}");
        if event["message"] == message && event["result"] == result {
            return event;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_one_object_per_message_outcome_with_stable_fields() {
    let dir = tempfile::tempdir().unwrap();
    let sink = TestSink::start(SinkConfig::default()).await.unwrap();
    let path = dir.path().join("relay.json");
    let cfg = config(&dir.path().join("spool"), sink.port());
    std::fs::write(&path, cfg.seal().to_json()).unwrap();
    let mut child = Running(
        Command::new(env!("CARGO_BIN_EXE_relay"))
            .arg("--config")
            .arg(&path)
            .args(["--log-format", "json"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let stderr = child.0.stderr.take().unwrap();
    let (tx, lines) = mpsc::channel();
    // Ends when the relay is killed and stderr closes.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let banner = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let smtp: SocketAddr = banner
        .split_whitespace()
        .find_map(|w| w.strip_prefix("smtp="))
        .unwrap_or_else(|| panic!("no smtp= in {banner:?}"))
        .parse()
        .unwrap();

    let mut client = connect(smtp).await;
    assert!(
        client
            .cmd("EHLO client.acme.example")
            .await
            .starts_with("250")
    );
    let rcpts = vec![
        "bob@example.net".to_string(),
        "carol@example.org".to_string(),
    ];
    let (accepted, _, done) = client
        .transaction("app@acme.example", &rcpts, "Subject: hi\r\n\r\nbody")
        .await;
    assert_eq!(accepted.len(), 2);
    let done = done.unwrap();
    assert!(done.starts_with("250 2.0.0"), "{done}");
    let queue_id = common::queue_id(&done);
    tokio::time::timeout(Duration::from_secs(10), sink.wait_for_messages(1))
        .await
        .unwrap();

    let accept = tokio::task::block_in_place(|| next_event(&lines, "message", "accepted"));
    assert_eq!(accept["level"], "INFO");
    assert_eq!(accept["queue_id"], queue_id.as_str());
    assert_eq!(accept["sender"], "app@acme.example");
    assert_eq!(accept["recipients"], "bob@example.net,carol@example.org");
    assert_eq!(accept["client"], "127.0.0.1");
    assert_eq!(accept["tls"], "none");
    assert!(accept["size"].as_u64().is_some_and(|n| n > 0), "{accept}");
    assert!(accept["timestamp"].is_string(), "{accept}");

    let mut delivered = Vec::new();
    for _ in 0..2 {
        let event = tokio::task::block_in_place(|| next_event(&lines, "delivery", "delivered"));
        assert_eq!(event["queue_id"], queue_id.as_str(), "{event}");
        assert_eq!(event["sender"], "app@acme.example");
        assert_eq!(event["route"], "acme/default", "{event}");
        assert_eq!(event["host"], format!("127.0.0.1:{}", sink.port()));
        assert_eq!(event["tls"], "opportunistic");
        let reply = event["reply"].as_str().unwrap_or_default();
        assert!(reply.starts_with("250"), "{event}");
        delivered.push(event["recipients"].as_str().unwrap_or_default().to_string());
    }
    delivered.sort();
    assert_eq!(delivered, rcpts);
}

/// Text logs: an AUTH identity carrying CR/LF (anything fits in `AUTH PLAIN`'s base64)
/// cannot start a log line of its own. Control characters in every field a client gives
/// are escaped, so the forged text stays inside the AUTH line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cr_lf_identity_cannot_forge_a_text_log_line() {
    use argon2::PasswordHasher;
    use base64::Engine;
    use rustls::pki_types::ServerName;

    let dir = tempfile::tempdir().unwrap();
    let (tls, cert_der) = common::tls_files(dir.path());
    let credentials = dir.path().join("credentials");
    let salt = argon2::password_hash::SaltString::from_b64("c29tZXNhbHRzb21lc2FsdA").unwrap();
    let phc = argon2::Argon2::default()
        .hash_password(b"alice's secret", &salt)
        .unwrap();
    std::fs::write(&credentials, format!("alice@acme.example:{phc}\n")).unwrap();
    let mut cfg = config(&dir.path().join("spool"), 9);
    cfg.tls = Some(tls);
    cfg.organization.credentials_file = Some(credentials.display().to_string());
    let path = dir.path().join("relay.json");
    std::fs::write(&path, cfg.seal().to_json()).unwrap();
    let mut child = Running(
        Command::new(env!("CARGO_BIN_EXE_relay"))
            .arg("--config")
            .arg(&path)
            .args(["--log-format", "text"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let stderr = child.0.stderr.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let banner = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let smtps: SocketAddr = banner
        .split_whitespace()
        .find_map(|w| w.strip_prefix("smtps="))
        .unwrap_or_else(|| panic!("no smtps= in {banner:?}"))
        .parse()
        .unwrap();

    const FORGED: &str = "2030-01-01t00:00:00.000000z  info relay: smtp auth";
    let tcp = tokio::net::TcpStream::connect(smtps).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = common::connector(&cert_der)
        .connect(name, tcp)
        .await
        .unwrap();
    let mut c = common::Client {
        io: tokio::io::BufReader::new(tls),
    };
    c.reply().await;
    c.cmd("EHLO client.acme.example").await;
    let identity =
        format!("mallory@acme.example\r\n{FORGED} identity=alice@acme.example result=\"ok\"");
    let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{identity}\0guess"));
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {token}")).await,
        "535 5.7.8 Authentication credentials invalid"
    );
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye");

    let mut seen = Vec::new();
    let auth_line = tokio::task::block_in_place(|| {
        loop {
            let line = lines
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("no SMTP AUTH line; saw {seen:#?}"));
            seen.push(line.clone());
            if line.contains("SMTP AUTH") && line.contains("mallory") {
                return line;
            }
        }
    });
    assert!(
        auth_line.contains(r"mallory@acme.example\r\n2030")
            && auth_line.contains("result=\"invalid\""),
        "{auth_line}"
    );
    // Whatever came before or comes right after, no line starts with the forged text.
    while let Ok(line) = lines.recv_timeout(Duration::from_millis(500)) {
        seen.push(line);
    }
    assert!(
        !seen.iter().any(|l| l.starts_with("2030-01-01")),
        "a forged line: {seen:#?}"
    );
}
