//! `relayctl run`: the quickstart relays to a local sink, and editing a manifest changes
//! the policy for new sessions without a restart while an open session finishes; editing
//! only a Secret (a user removed from the AUTH credentials) is a new configuration too.

use std::io::{BufRead, BufReader as StdBufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use relay::delivery::testing::{SinkConfig, TestSink};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const QUICKSTART: &str = include_str!("../../examples/quickstart/relay.yaml");
const SMTP_AUTH: &str = include_str!("../../examples/applications-smtp-auth/relay.yaml");

struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    /// Waits (at most 20 s) for an output line containing `needle` and returns it.
    fn wait_for(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => seen.push(line),
                Err(e) => panic!(
                    "relayctl run never printed {needle:?} ({e}); it printed:\n{}",
                    seen.join("\n")
                ),
            }
        }
    }
}

fn spawn_run(dir: &std::path::Path) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_relayctl"))
        .current_dir(dir)
        .args([
            "run",
            "manifests",
            "--smtp-port",
            "0",
            "--submission-port",
            "0",
            "--smtps-port",
            "0",
            "--admin-port",
            "0",
        ])
        .args(["--state-dir", "state"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let forward =
        |tx: mpsc::Sender<String>, reader: Box<dyn std::io::Read + Send>, prefix: &'static str| {
            std::thread::spawn(move || {
                for line in StdBufReader::new(reader).lines().map_while(Result::ok) {
                    if tx.send(format!("{prefix}{line}")).is_err() {
                        return;
                    }
                }
            });
        };
    forward(tx.clone(), Box::new(stdout), "");
    forward(tx, Box::new(stderr), "stderr: ");
    Running { child, lines }
}

/// One (possibly multi-line) reply, lines joined, trailing CRLF removed.
async fn read_reply<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        all.push_str(&line);
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            return all.trim_end().to_string();
        }
    }
}

/// The address `relayctl run` printed for listener `name` (`smtp`, `smtps`, ...).
fn listening(run: &Running, name: &str) -> SocketAddr {
    run.wait_for(&format!("  {name} "))
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

struct Session {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
}

impl Session {
    async fn open(addr: SocketAddr) -> Self {
        let (r, w) = TcpStream::connect(addr).await.unwrap().into_split();
        let mut s = Session {
            r: BufReader::new(r),
            w,
        };
        let greeting = s.reply().await;
        assert!(greeting.starts_with("220 "), "{greeting}");
        s
    }

    async fn reply(&mut self) -> String {
        read_reply(&mut self.r).await
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.w
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        self.reply().await
    }
}

#[tokio::test]
async fn quickstart_relays_to_the_sink_and_a_manifest_edit_applies_without_restart() {
    let sink = TestSink::start(SinkConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("manifests")).unwrap();
    let manifest = dir.path().join("manifests/relay.yaml");
    std::fs::write(
        &manifest,
        QUICKSTART.replace("port: 2525", &format!("port: {}", sink.port())),
    )
    .unwrap();

    let run = spawn_run(dir.path());
    let smtp = listening(&run, "smtp");
    run.wait_for("configuration generation 1 in force");

    // A session opened under the first configuration...
    let mut open = Session::open(smtp).await;
    assert!(
        open.cmd("EHLO app.acme.example")
            .await
            .starts_with("250-relay.acme.example")
    );
    assert_eq!(
        open.cmd("MAIL FROM:<app@acme.example>").await,
        "250 2.1.0 OK"
    );

    // ...while the IPv4 loopback range is switched off in the manifest.
    std::fs::write(
        &manifest,
        QUICKSTART
            .replace("port: 2525", &format!("port: {}", sink.port()))
            .replace(
                "  cidr: 127.0.0.1\n",
                "  cidr: 127.0.0.1\n  enabled: false\n",
            ),
    )
    .unwrap();
    run.wait_for("configuration generation 2 in force");

    // New sessions from 127.0.0.1 are refused at once...
    let mut late = Session::open(smtp).await;
    late.cmd("EHLO app.acme.example").await;
    assert_eq!(
        late.cmd("MAIL FROM:<app@acme.example>").await,
        "550 5.7.1 Client host [127.0.0.1] is not allowed to relay through this server"
    );

    // ...and the open one finishes under the configuration it started with.
    assert_eq!(open.cmd("RCPT TO:<bob@example.net>").await, "250 2.1.5 OK");
    assert!(open.cmd("DATA").await.starts_with("354 "));
    let done = open.cmd("Subject: before the edit\r\n\r\nhello\r\n.").await;
    assert!(done.starts_with("250 2.0.0 OK queued as "), "{done}");
    tokio::time::timeout(Duration::from_secs(10), sink.wait_for_messages(1))
        .await
        .unwrap();
    let got = sink.messages();
    assert_eq!(
        (got[0].mail_from.as_str(), got[0].rcpt_to.as_slice()),
        ("app@acme.example", &["bob@example.net".to_string()][..])
    );
    assert!(String::from_utf8_lossy(&got[0].data).contains("Subject: before the edit"));
}

#[tokio::test]
async fn an_invalid_edit_keeps_the_running_configuration() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("manifests")).unwrap();
    let manifest = dir.path().join("manifests/relay.yaml");
    std::fs::write(&manifest, QUICKSTART).unwrap();
    let run = spawn_run(dir.path());
    let smtp = listening(&run, "smtp");
    run.wait_for("configuration generation 1 in force");
    std::fs::write(&manifest, QUICKSTART.replace("licenses: 10", "licenses: 0")).unwrap();
    run.wait_for("spec.licenses: licenses must be at least 1");
    run.wait_for("the manifests changed but cannot be used; generation 1 stays in force");
    let mut s = Session::open(smtp).await;
    s.cmd("EHLO app.acme.example").await;
    assert_eq!(s.cmd("MAIL FROM:<app@acme.example>").await, "250 2.1.0 OK");
    std::fs::write(
        &manifest,
        QUICKSTART.replace(
            "allowedSenders: OrganizationDomains",
            "allowedSenders: RegisteredUsers",
        ),
    )
    .unwrap();
    run.wait_for("configuration generation 2 in force");
}

/// AUTH PLAIN on the implicit-TLS port, trusting the certificate `relayctl run` made.
async fn auth_plain(smtps: SocketAddr, cert_pem: &[u8], user: &str, password: &str) -> String {
    use base64::Engine;
    use std::sync::Arc;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &cert_pem[..]) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(smtps).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let (r, mut w) = tokio::io::split(tls);
    let mut r = BufReader::new(r);
    assert!(read_reply(&mut r).await.starts_with("220 "));
    w.write_all(b"EHLO app.acme.example\r\n").await.unwrap();
    assert!(read_reply(&mut r).await.starts_with("250"));
    let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
    w.write_all(format!("AUTH PLAIN {token}\r\n").as_bytes())
        .await
        .unwrap();
    read_reply(&mut r).await
}

#[tokio::test]
async fn a_user_removed_from_the_credentials_secret_cannot_log_in_after_the_next_poll() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("manifests")).unwrap();
    let manifest = dir.path().join("manifests/relay.yaml");
    std::fs::write(&manifest, SMTP_AUTH).unwrap();
    let run = spawn_run(dir.path());
    let smtps = listening(&run, "smtps");
    run.wait_for("configuration generation 1 in force");
    let cert = std::fs::read(dir.path().join("state/tls/self-signed.crt")).unwrap();
    assert_eq!(
        auth_plain(smtps, &cert, "ticketing@acme.example", "app-secret-2").await,
        "235 2.7.0 Authentication successful"
    );
    // The ticketing application's password leaked: its line goes from the Secret. No
    // other field of any manifest changes.
    let ticketing = SMTP_AUTH
        .lines()
        .find(|l| {
            l.trim_start()
                .starts_with("ticketing@acme.example:$argon2id")
        })
        .unwrap();
    std::fs::write(&manifest, SMTP_AUTH.replace(&format!("{ticketing}\n"), "")).unwrap();
    run.wait_for("credentials changed");
    let line = run.wait_for("configuration generation 2 in force");
    assert!(!line.contains("argon2"), "{line}");
    assert_eq!(
        auth_plain(smtps, &cert, "ticketing@acme.example", "app-secret-2").await,
        "535 5.7.8 Authentication credentials invalid"
    );
    assert_eq!(
        auth_plain(
            smtps,
            &cert,
            "alice@acme.example",
            "correct horse battery staple"
        )
        .await,
        "235 2.7.0 Authentication successful"
    );
}
