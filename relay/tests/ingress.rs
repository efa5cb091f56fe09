//! End-to-end ingress behaviour over real TCP on loopback: policy replies of SPEC §3.2–3.4,
//! limits of §3.6 with a fake clock, the spool after SIGKILL, and hot reload.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use argon2::password_hash::SaltString;
use argon2::{Argon2, PasswordHasher};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use relay::config::*;
use relay::{FakeClock, RelayHandle, StartOptions};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

// ---------- fixtures ----------

struct Fixture {
    dir: tempfile::TempDir,
    cert_der: Vec<u8>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(dir.path().join("tls.crt"), ck.cert.pem()).unwrap();
        std::fs::write(dir.path().join("tls.key"), ck.signing_key.serialize_pem()).unwrap();
        let salt = SaltString::from_b64("c29tZXNhbHRzb21lc2FsdA").unwrap();
        let phc = Argon2::default()
            .hash_password(b"correct horse", &salt)
            .unwrap()
            .to_string();
        std::fs::write(
            dir.path().join("credentials"),
            format!("alice@acme.example:{phc}\n"),
        )
        .unwrap();
        Self {
            cert_der: ck.cert.der().to_vec(),
            dir,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    fn spool_dir(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// A config listening on `host` port 0 with TLS and credentials.
    fn config(&self, host: &str, settings: Vec<SettingConfig>) -> RelayConfig {
        let any: SocketAddr = format!("{host}:0").parse().unwrap();
        // The default route goes to a closed loopback port: accepted mail stays queued so
        // the tests can read the spool, and nothing leaves the machine.
        let mut cfg = RelayConfig::loopback(&self.spool_dir().to_string_lossy(), 9);
        cfg.organization.users = vec!["alice@acme.example".into()];
        cfg.organization.credentials_file = Some(self.path("credentials"));
        cfg.listeners = ListenerConfig {
            smtp: any,
            submission: any,
            smtps: any,
        };
        cfg.admin_listen = any;
        cfg.tls = Some(TlsFiles {
            cert_file: self.path("tls.crt"),
            key_file: self.path("tls.key"),
        });
        cfg.settings = settings;
        cfg.limits = LimitsConfig::for_customer(100, true);
        cfg
    }

    fn tls_connector(&self) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.cert_der.clone()))
            .unwrap();
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        TlsConnector::from(Arc::new(cfg))
    }
}

fn setting(
    senders: AllowedSenders,
    ranges: Option<&[&str]>,
    auth: bool,
    tls: bool,
) -> SettingConfig {
    SettingConfig {
        name: "acme/setting".into(),
        description: "test".into(),
        allowed_senders: senders,
        ip_ranges: ranges.map(|r| {
            r.iter()
                .map(|c| RangeConfig {
                    name: "acme/range".into(),
                    network: c.parse().unwrap(),
                })
                .collect()
        }),
        require_smtp_auth: auth,
        require_tls: tls,
    }
}

async fn start(cfg: RelayConfig) -> RelayHandle {
    relay::start(cfg, StartOptions::default()).await.unwrap()
}

// ---------- a tiny SMTP client ----------

struct Client<S> {
    io: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Reads one (possibly multi-line) reply; lines joined with `\n`, CRLF removed.
    async fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = self.io.read_line(&mut line).await.unwrap();
            assert!(n > 0, "connection closed; replies so far: {lines:?}");
            let line = line.trim_end_matches("\r\n").to_string();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return lines.join("\n");
            }
        }
    }

    async fn send(&mut self, line: &str) {
        self.io
            .get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.send(line).await;
        self.reply().await
    }

    /// True when the server closed the connection.
    async fn closed(&mut self) -> bool {
        let mut line = String::new();
        matches!(self.io.read_line(&mut line).await, Ok(0) | Err(_))
    }

    /// MAIL, RCPTs, DATA with a small body; returns the final reply.
    async fn send_mail(&mut self, from: &str, rcpts: &[&str]) -> String {
        let r = self.cmd(&format!("MAIL FROM:<{from}>")).await;
        if !r.starts_with("250") {
            return r;
        }
        for rcpt in rcpts {
            let r = self.cmd(&format!("RCPT TO:<{rcpt}>")).await;
            if !r.starts_with("250") {
                self.cmd("RSET").await;
                return r;
            }
        }
        let r = self.cmd("DATA").await;
        assert!(r.starts_with("354"), "{r}");
        self.cmd("Subject: test\r\n\r\nHello.\r\n.").await
    }
}

async fn connect(addr: SocketAddr) -> Client<TcpStream> {
    let mut c = Client {
        io: BufReader::new(TcpStream::connect(addr).await.unwrap()),
    };
    assert_eq!(c.reply().await, "220 relay.acme.example ESMTP");
    c
}

/// Connects from a chosen loopback source address (Linux routes all of 127/8 to lo).
async fn connect_from(src: &str, addr: SocketAddr) -> Client<TcpStream> {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
    let mut c = Client {
        io: BufReader::new(sock.connect(addr).await.unwrap()),
    };
    assert_eq!(c.reply().await, "220 relay.acme.example ESMTP");
    c
}

async fn starttls(fx: &Fixture, mut c: Client<TcpStream>) -> Client<TlsStream<TcpStream>> {
    assert_eq!(c.cmd("STARTTLS").await, "220 2.0.0 Ready to start TLS");
    let tcp = c.io.into_inner();
    let tls = fx
        .tls_connector()
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    Client {
        io: BufReader::new(tls),
    }
}

fn queue_id(reply: &str) -> relay::QueueId {
    let id = reply
        .strip_prefix("250 2.0.0 OK queued as ")
        .unwrap_or_else(|| panic!("not a queued reply: {reply}"));
    id.parse().unwrap()
}

fn plain(user: &str, pass: &str) -> String {
    STANDARD.encode(format!("\0{user}\0{pass}"))
}

// ---------- §3.2 who the client is ----------

#[tokio::test]
async fn ipv4_client_in_an_enabled_range_is_accepted_and_spooled() {
    let fx = Fixture::new();
    let relay = start(fx.config(
        "127.0.0.1",
        vec![setting(
            AllowedSenders::OrganizationDomains,
            Some(&["127.0.0.1/32"]),
            false,
            false,
        )],
    ))
    .await;
    let mut c = connect(relay.smtp_addr()).await;
    c.cmd("EHLO client.acme.example").await;
    let r = c
        .send_mail("bob@acme.example", &["carol@dest.example"])
        .await;
    let id = queue_id(&r);
    let (env, data) = relay.spool().read(id).unwrap();
    assert_eq!(env.mail_from, "bob@acme.example");
    assert_eq!(env.rcpts, vec!["carol@dest.example".to_string()]);
    assert_eq!(env.helo, "client.acme.example");
    let text = String::from_utf8(data).unwrap();
    assert!(
        text.starts_with("Received: from client.acme.example ([127.0.0.1])\r\n\tby relay.acme.example with ESMTP id "),
        "{text}"
    );
    assert!(text.contains(&format!(" id {id};")));
    assert!(text.ends_with("Subject: test\r\n\r\nHello.\r\n"));
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye");
    relay.shutdown().await;
}

#[tokio::test]
async fn with_hide_client_address_the_received_header_has_no_client_address() {
    let fx = Fixture::new();
    let mut cfg = fx.config(
        "127.0.0.1",
        vec![setting(
            AllowedSenders::OrganizationDomains,
            Some(&["127.0.0.1/32"]),
            false,
            false,
        )],
    );
    cfg.hide_client_address = true;
    let relay = start(cfg).await;
    let mut c = connect(relay.smtp_addr()).await;
    c.cmd("EHLO [127.0.0.1]").await;
    let r = c
        .send_mail("bob@acme.example", &["carol@dest.example"])
        .await;
    let id = queue_id(&r);
    let (env, data) = relay.spool().read(id).unwrap();
    let text = String::from_utf8(data).unwrap();
    assert!(
        text.starts_with("Received: from unknown\r\n\tby relay.acme.example with ESMTP id "),
        "{text}"
    );
    assert!(!text.contains("127.0.0.1"), "{text}");
    // The envelope keeps the facts (logs, policy, queue administration).
    assert_eq!(env.client_ip.to_string(), "127.0.0.1");
    relay.shutdown().await;
}

#[tokio::test]
async fn ipv4_client_outside_every_range_gets_550_naming_its_ip_and_is_disconnected() {
    let fx = Fixture::new();
    // 127.0.0.1 is allowed; the client connects from 127.0.0.2.
    let relay = start(fx.config(
        "127.0.0.1",
        vec![setting(
            AllowedSenders::OrganizationDomains,
            Some(&["127.0.0.1/32"]),
            false,
            false,
        )],
    ))
    .await;
    let mut c = connect_from("127.0.0.2", relay.smtp_addr()).await;
    c.cmd("EHLO client.acme.example").await;
    assert_eq!(
        c.cmd("MAIL FROM:<bob@acme.example>").await,
        "550 5.7.1 Client host [127.0.0.2] is not allowed to relay through this server"
    );
    assert!(c.closed().await);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_disabled_range_is_absent_from_the_config_and_refuses() {
    let fx = Fixture::new();
    // The only range selected by the setting was disabled, so render left the list empty.
    let relay = start(fx.config(
        "127.0.0.1",
        vec![setting(
            AllowedSenders::OrganizationDomains,
            Some(&[]),
            false,
            false,
        )],
    ))
    .await;
    let mut c = connect(relay.smtp_addr()).await;
    c.cmd("EHLO client.acme.example").await;
    assert_eq!(
        c.cmd("MAIL FROM:<bob@acme.example>").await,
        "550 5.7.1 Client host [127.0.0.1] is not allowed to relay through this server"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn ipv6_clients_are_matched_against_ipv6_ranges() {
    let fx = Fixture::new();
    let allowed = start(fx.config(
        "[::1]",
        vec![setting(
            AllowedSenders::OrganizationDomains,
            Some(&["::1/128"]),
            false,
            false,
        )],
    ))
    .await;
    let mut c = connect(allowed.smtp_addr()).await;
    c.cmd("EHLO client.acme.example").await;
    queue_id(&c.send_mail("bob@acme.example", &["x@dest.example"]).await);
    allowed.shutdown().await;

    let fx = Fixture::new();
    let refused = start(fx.config(
        "[::1]",
        vec![setting(
            AllowedSenders::OrganizationDomains,
            Some(&["2001:db8::/112", "127.0.0.1/32"]),
            false,
            false,
        )],
    ))
    .await;
    let mut c = connect(refused.smtp_addr()).await;
    c.cmd("EHLO client.acme.example").await;
    assert_eq!(
        c.cmd("MAIL FROM:<bob@acme.example>").await,
        "550 5.7.1 Client host [::1] is not allowed to relay through this server"
    );
    refused.shutdown().await;
}

#[tokio::test]
async fn tls_required_gets_530_before_starttls_and_250_after() {
    let fx = Fixture::new();
    let relay = start(fx.config(
        "127.0.0.1",
        vec![setting(
            AllowedSenders::OrganizationDomains,
            Some(&["127.0.0.0/16"]),
            false,
            true,
        )],
    ))
    .await;
    let mut c = connect(relay.submission_addr()).await;
    let ehlo = c.cmd("EHLO client.acme.example").await;
    assert_eq!(
        ehlo,
        "250-relay.acme.example\n250-PIPELINING\n250-SIZE 36700160\n250-8BITMIME\n250-ENHANCEDSTATUSCODES\n250-SMTPUTF8\n250 STARTTLS"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<bob@acme.example>").await,
        "530 5.7.0 Must issue a STARTTLS command first (submit on port 587 with STARTTLS)"
    );
    let mut c = starttls(&fx, c).await;
    let ehlo = c.cmd("EHLO client.acme.example").await;
    assert!(
        ehlo.ends_with("250-SMTPUTF8\n250 AUTH PLAIN LOGIN"),
        "{ehlo}"
    );
    let id = queue_id(&c.send_mail("bob@acme.example", &["x@dest.example"]).await);
    let (env, data) = relay.spool().read(id).unwrap();
    let tls = env.tls.unwrap();
    assert!(tls.starts_with("TLSv1_3 TLS13_"), "{tls}");
    let text = String::from_utf8(data).unwrap();
    assert!(text.contains("(using TLSv1_3 with cipher TLS13_"), "{text}");
    assert!(text.contains("with ESMTPS id"), "{text}");
    relay.shutdown().await;
}

#[tokio::test]
async fn starttls_discards_plaintext_pipelined_after_it() {
    let fx = Fixture::new();
    let relay = start(fx.config(
        "127.0.0.1",
        vec![setting(
            AllowedSenders::OrganizationDomains,
            Some(&["127.0.0.0/16"]),
            false,
            false,
        )],
    ))
    .await;
    let mut c = connect(relay.smtp_addr()).await;
    c.cmd("EHLO client.acme.example").await;
    // An injected command in the same packet as STARTTLS must not be executed under TLS.
    c.send("STARTTLS\r\nMAIL FROM:<bob@acme.example>").await;
    assert_eq!(c.reply().await, "220 2.0.0 Ready to start TLS");
    let tls = fx
        .tls_connector()
        .connect(
            ServerName::try_from("localhost").unwrap(),
            c.io.into_inner(),
        )
        .await
        .unwrap();
    let mut c = Client {
        io: BufReader::new(tls),
    };
    // Had the MAIL been kept, this would be "503 nested MAIL" or a 250 for EHLO only.
    assert!(
        c.cmd("EHLO client.acme.example")
            .await
            .starts_with("250-relay.acme.example")
    );
    assert_eq!(
        c.cmd("RCPT TO:<x@dest.example>").await,
        "503 5.5.1 Error: need MAIL command"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn auth_before_tls_gets_538_bad_password_535_and_good_password_relays() {
    let fx = Fixture::new();
    let relay = start(fx.config(
        "127.0.0.1",
        vec![setting(AllowedSenders::RegisteredUsers, None, true, true)],
    ))
    .await;
    let mut c = connect(relay.smtp_addr()).await;
    c.cmd("EHLO client.example").await;
    assert_eq!(
        c.cmd(&format!(
            "AUTH PLAIN {}",
            plain("alice@acme.example", "correct horse")
        ))
        .await,
        "538 5.7.11 Encryption required for requested authentication mechanism"
    );
    // Not authenticated and no IP range: no setting accepts this client.
    let mut c = starttls(&fx, c).await;
    c.cmd("EHLO client.example").await;
    assert_eq!(
        c.cmd(&format!(
            "AUTH PLAIN {}",
            plain("alice@acme.example", "wrong")
        ))
        .await,
        "535 5.7.8 Authentication credentials invalid"
    );
    // AUTH LOGIN with the right password.
    assert_eq!(c.cmd("AUTH LOGIN").await, "334 VXNlcm5hbWU6");
    assert_eq!(
        c.cmd(&STANDARD.encode("alice@acme.example")).await,
        "334 UGFzc3dvcmQ6"
    );
    assert_eq!(
        c.cmd(&STANDARD.encode("correct horse")).await,
        "235 2.7.0 Authentication successful"
    );
    let id = queue_id(&c.send_mail("alice@acme.example", &["x@dest.example"]).await);
    let (env, data) = relay.spool().read(id).unwrap();
    assert_eq!(env.auth_identity.as_deref(), Some("alice@acme.example"));
    assert!(String::from_utf8(data).unwrap().contains("with ESMTPSA id"));
    relay.shutdown().await;
}

#[tokio::test]
async fn auth_required_setting_refuses_an_unauthenticated_client_with_550() {
    let fx = Fixture::new();
    let relay = start(fx.config(
        "127.0.0.1",
        vec![setting(AllowedSenders::RegisteredUsers, None, true, true)],
    ))
    .await;
    let c = connect(relay.smtp_addr()).await;
    let mut c = starttls(&fx, c).await;
    c.cmd("EHLO client.example").await;
    assert_eq!(
        c.cmd("MAIL FROM:<alice@acme.example>").await,
        "550 5.7.1 Client host [127.0.0.1] is not allowed to relay through this server"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn implicit_tls_listener_serves_smtp_inside_tls() {
    let fx = Fixture::new();
    let relay = start(fx.config(
        "127.0.0.1",
        vec![setting(
            AllowedSenders::OrganizationDomains,
            Some(&["127.0.0.0/16"]),
            false,
            true,
        )],
    ))
    .await;
    let tcp = TcpStream::connect(relay.smtps_addr()).await.unwrap();
    let tls = fx
        .tls_connector()
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let mut c = Client {
        io: BufReader::new(tls),
    };
    assert_eq!(c.reply().await, "220 relay.acme.example ESMTP");
    let ehlo = c.cmd("EHLO client.acme.example").await;
    assert!(
        !ehlo.contains("STARTTLS") && ehlo.contains("AUTH PLAIN LOGIN"),
        "{ehlo}"
    );
    queue_id(&c.send_mail("bob@acme.example", &["x@dest.example"]).await);
    relay.shutdown().await;
}

// ---------- §3.3 allowed senders ----------

#[tokio::test]
async fn registered_users_mode_accepts_only_registered_senders() {
    let fx = Fixture::new();
    let relay = start(fx.config(
        "127.0.0.1",
        vec![setting(
            AllowedSenders::RegisteredUsers,
            Some(&["127.0.0.0/16"]),
            false,
            false,
        )],
    ))
    .await;
    let mut c = connect(relay.smtp_addr()).await;
    c.cmd("EHLO client.acme.example").await;
    queue_id(&c.send_mail("Alice@acme.example", &["x@dest.example"]).await);
    assert_eq!(
        c.cmd("MAIL FROM:<bob@acme.example>").await,
        "550 5.7.1 Sender address <bob@acme.example> is not a registered user"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn organization_domains_mode_accepts_subdomains_and_refuses_others() {
    let fx = Fixture::new();
    let relay = start(fx.config(
        "127.0.0.1",
        vec![setting(
            AllowedSenders::OrganizationDomains,
            Some(&["127.0.0.0/16"]),
            false,
            false,
        )],
    ))
    .await;
    let mut c = connect(relay.smtp_addr()).await;
    c.cmd("EHLO client.example").await;
    queue_id(&c.send_mail("x@eu.acme.example", &["y@dest.example"]).await);
    assert_eq!(
        c.cmd("MAIL FROM:<x@notacme.example>").await,
        "550 5.7.1 Sender domain notacme.example does not belong to the organization"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn any_address_mode_rewrites_foreign_senders_to_postmaster() {
    let fx = Fixture::new();
    let relay = start(fx.config(
        "127.0.0.1",
        vec![setting(
            AllowedSenders::AnyAddress,
            Some(&["127.0.0.0/16"]),
            false,
            false,
        )],
    ))
    .await;
    // A HELO outside the organization identifies nobody.
    let mut c = connect(relay.smtp_addr()).await;
    c.cmd("EHLO printer.example").await;
    assert_eq!(
        c.cmd("MAIL FROM:<scanner@yahoo.example>").await,
        "550 5.7.1 Sender rejected: authenticate or present a HELO name of the organization"
    );
    // An organization HELO: foreign sender rewritten, own sender kept.
    let mut c = connect(relay.smtp_addr()).await;
    c.cmd("EHLO mx1.acme.example").await;
    let id = queue_id(
        &c.send_mail("scanner@yahoo.example", &["x@dest.example"])
            .await,
    );
    let (env, data) = relay.spool().read(id).unwrap();
    assert_eq!(env.mail_from, "postmaster@acme.example");
    assert_eq!(
        env.original_mail_from.as_deref(),
        Some("scanner@yahoo.example")
    );
    assert!(String::from_utf8(data).unwrap().contains("Subject: test"));
    let id = queue_id(&c.send_mail("bob@acme.example", &["x@dest.example"]).await);
    let (env, _) = relay.spool().read(id).unwrap();
    assert_eq!(env.mail_from, "bob@acme.example");
    assert_eq!(env.original_mail_from, None);
    relay.shutdown().await;
}

#[tokio::test]
async fn any_address_mode_rewrites_to_the_auth_identity_domain() {
    let fx = Fixture::new();
    let relay = start(fx.config(
        "127.0.0.1",
        vec![setting(AllowedSenders::AnyAddress, None, true, true)],
    ))
    .await;
    let c = connect(relay.smtp_addr()).await;
    let mut c = starttls(&fx, c).await;
    c.cmd("EHLO printer.example").await;
    assert_eq!(
        c.cmd(&format!(
            "AUTH PLAIN {}",
            plain("alice@acme.example", "correct horse")
        ))
        .await,
        "235 2.7.0 Authentication successful"
    );
    let id = queue_id(
        &c.send_mail("noreply@saas.example", &["x@dest.example"])
            .await,
    );
    let (env, _) = relay.spool().read(id).unwrap();
    assert_eq!(env.mail_from, "postmaster@acme.example");
    assert_eq!(
        env.original_mail_from.as_deref(),
        Some("noreply@saas.example")
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn null_sender_takes_exactly_one_recipient() {
    let fx = Fixture::new();
    let relay = start(fx.config(
        "127.0.0.1",
        vec![setting(
            AllowedSenders::AnyAddress,
            Some(&["127.0.0.0/16"]),
            false,
            false,
        )],
    ))
    .await;
    let mut c = connect(relay.smtp_addr()).await;
    c.cmd("EHLO mx1.acme.example").await;
    assert_eq!(c.cmd("MAIL FROM:<>").await, "250 2.1.0 OK");
    assert_eq!(c.cmd("RCPT TO:<a@dest.example>").await, "250 2.1.5 OK");
    assert_eq!(
        c.cmd("RCPT TO:<b@dest.example>").await,
        "550 5.5.3 Null sender accepts exactly one recipient"
    );
    assert!(c.cmd("DATA").await.starts_with("354"));
    let id = queue_id(&c.cmd("Subject: out of office\r\n\r\nAway.\r\n.").await);
    let (env, _) = relay.spool().read(id).unwrap();
    assert_eq!(env.mail_from, "");
    assert_eq!(env.rcpts, vec!["a@dest.example".to_string()]);
    // Without identification (AUTH or an organization HELO), the null sender is refused.
    let mut c = connect(relay.smtp_addr()).await;
    c.cmd("EHLO printer.example").await;
    assert_eq!(
        c.cmd("MAIL FROM:<>").await,
        "550 5.7.1 Null sender rejected: authenticate or present a HELO name of the organization"
    );
    relay.shutdown().await;
}

// ---------- §3.4 accepting a message ----------

#[tokio::test]
async fn pipelined_commands_get_their_replies_in_order() {
    let fx = Fixture::new();
    let relay = start(fx.config(
        "127.0.0.1",
        vec![setting(
            AllowedSenders::OrganizationDomains,
            Some(&["127.0.0.0/16"]),
            false,
            false,
        )],
    ))
    .await;
    let mut c = connect(relay.smtp_addr()).await;
    c.cmd("EHLO client.acme.example").await;
    c.send("MAIL FROM:<bob@acme.example>\r\nRCPT TO:<a@dest.example>\r\nRCPT TO:<b@dest.example>\r\nDATA").await;
    assert_eq!(c.reply().await, "250 2.1.0 OK");
    assert_eq!(c.reply().await, "250 2.1.5 OK");
    assert_eq!(c.reply().await, "250 2.1.5 OK");
    assert_eq!(c.reply().await, "354 End data with <CR><LF>.<CR><LF>");
    c.send("..dot\r\n.\r\nQUIT").await;
    let id = queue_id(&c.reply().await);
    assert_eq!(c.reply().await, "221 2.0.0 Bye");
    let (env, data) = relay.spool().read(id).unwrap();
    assert_eq!(env.rcpts.len(), 2);
    assert!(data.ends_with(b"\r\n.dot\r\n"));
    relay.shutdown().await;
}

#[tokio::test]
async fn bare_lf_in_data_is_refused_and_nothing_is_smuggled() {
    let fx = Fixture::new();
    let relay = start(fx.config(
        "127.0.0.1",
        vec![setting(
            AllowedSenders::OrganizationDomains,
            Some(&["127.0.0.0/16"]),
            false,
            false,
        )],
    ))
    .await;
    let mut c = connect(relay.smtp_addr()).await;
    c.cmd("EHLO client.acme.example").await;
    c.cmd("MAIL FROM:<bob@acme.example>").await;
    c.cmd("RCPT TO:<a@dest.example>").await;
    c.cmd("DATA").await;
    c.send("Subject: a\r\n\r\nfirst\n.\nMAIL FROM:<evil@acme.example>\r\nRCPT TO:<victim@dest.example>\r\nDATA\r\nsmuggled\r\n.").await;
    assert_eq!(
        c.reply().await,
        "550 5.6.11 Message contains bare CR or LF characters; use CRLF line endings"
    );
    assert_eq!(relay.spool().depth(), 0);
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK");
    relay.shutdown().await;
}

#[tokio::test]
async fn long_command_lines_and_repeated_errors_end_the_session() {
    let fx = Fixture::new();
    let mut cfg = fx.config(
        "127.0.0.1",
        vec![setting(
            AllowedSenders::OrganizationDomains,
            Some(&["127.0.0.0/16"]),
            false,
            false,
        )],
    );
    cfg.limits.max_errors = 3;
    let relay = start(cfg).await;
    let mut c = connect(relay.smtp_addr()).await;
    assert_eq!(
        c.cmd(&format!("NOOP {}", "x".repeat(600))).await,
        "500 5.5.2 Line too long"
    );
    assert_eq!(
        c.cmd("FOO").await,
        "502 5.5.2 Error: command not recognized"
    );
    assert_eq!(
        c.cmd("BAR").await,
        "502 5.5.2 Error: command not recognized"
    );
    assert_eq!(
        c.reply().await,
        "421 4.7.0 relay.acme.example Error: too many errors, closing connection"
    );
    assert!(c.closed().await);
    relay.shutdown().await;
}

#[tokio::test]
async fn per_ip_connection_cap_refuses_with_421() {
    let fx = Fixture::new();
    let mut cfg = fx.config(
        "127.0.0.1",
        vec![setting(
            AllowedSenders::OrganizationDomains,
            Some(&["127.0.0.0/16"]),
            false,
            false,
        )],
    );
    cfg.limits.connections_per_ip = 2;
    let relay = start(cfg).await;
    let _a = connect(relay.smtp_addr()).await;
    let _b = connect(relay.submission_addr()).await;
    let mut c = Client {
        io: BufReader::new(TcpStream::connect(relay.smtp_addr()).await.unwrap()),
    };
    assert_eq!(
        c.reply().await,
        "421 4.7.0 Too many connections from 127.0.0.1"
    );
    // Another source address has its own allowance.
    let _d = connect_from("127.0.0.3", relay.smtp_addr()).await;
    drop((_a, _b, _d));
    relay.shutdown().await;
}

#[tokio::test]
async fn oversized_messages_are_refused() {
    let fx = Fixture::new();
    let mut cfg = fx.config(
        "127.0.0.1",
        vec![setting(
            AllowedSenders::OrganizationDomains,
            Some(&["127.0.0.0/16"]),
            false,
            false,
        )],
    );
    cfg.limits.max_message_bytes = 200;
    let relay = start(cfg).await;
    let mut c = connect(relay.smtp_addr()).await;
    c.cmd("EHLO client.acme.example").await;
    assert_eq!(
        c.cmd("MAIL FROM:<bob@acme.example> SIZE=201").await,
        "552 5.3.4 Message size exceeds fixed maximum message size"
    );
    c.cmd("MAIL FROM:<bob@acme.example>").await;
    c.cmd("RCPT TO:<a@dest.example>").await;
    c.cmd("DATA").await;
    let body = format!("{}\r\n.", "y".repeat(300));
    assert_eq!(
        c.cmd(&body).await,
        "552 5.3.4 Message size exceeds fixed maximum message size"
    );
    relay.shutdown().await;
}

// ---------- §3.6 limits ----------

async fn limited_relay(
    fx: &Fixture,
    set: impl FnOnce(&mut LimitsConfig),
) -> (RelayHandle, Arc<FakeClock>) {
    let mut cfg = fx.config(
        "127.0.0.1",
        vec![setting(
            AllowedSenders::OrganizationDomains,
            Some(&["127.0.0.0/16"]),
            false,
            false,
        )],
    );
    set(&mut cfg.limits);
    let clock = Arc::new(FakeClock::new(
        UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    ));
    let relay = relay::start(
        cfg,
        StartOptions {
            clock: clock.clone(),
            ..StartOptions::default()
        },
    )
    .await
    .unwrap();
    (relay, clock)
}

const DAY: Duration = Duration::from_secs(24 * 3600);

#[tokio::test]
async fn user_message_limit_allows_n_refuses_n_plus_one_and_rolls_after_24h() {
    let fx = Fixture::new();
    let (relay, clock) = limited_relay(&fx, |l| l.user_messages_per_day = 3).await;
    let mut c = connect(relay.smtp_addr()).await;
    c.cmd("EHLO client.acme.example").await;
    for _ in 0..3 {
        queue_id(&c.send_mail("bob@acme.example", &["a@dest.example"]).await);
    }
    assert_eq!(
        c.send_mail("bob@acme.example", &["a@dest.example"]).await,
        "550 5.4.5 Daily SMTP relay limit exceeded for user."
    );
    // Another user is not affected.
    queue_id(&c.send_mail("carol@acme.example", &["a@dest.example"]).await);
    clock.advance(DAY - Duration::from_secs(60));
    assert_eq!(
        c.send_mail("bob@acme.example", &["a@dest.example"]).await,
        "550 5.4.5 Daily SMTP relay limit exceeded for user."
    );
    clock.advance(Duration::from_secs(60));
    queue_id(&c.send_mail("bob@acme.example", &["a@dest.example"]).await);
    relay.shutdown().await;
}

#[tokio::test]
async fn user_unique_recipient_limit_counts_each_recipient_once() {
    let fx = Fixture::new();
    let (relay, clock) = limited_relay(&fx, |l| l.user_recipients_per_day = 3).await;
    let mut c = connect(relay.smtp_addr()).await;
    c.cmd("EHLO client.acme.example").await;
    queue_id(
        &c.send_mail("bob@acme.example", &["a@d.example", "b@d.example"])
            .await,
    );
    // Repeating known recipients is free.
    queue_id(
        &c.send_mail(
            "bob@acme.example",
            &["a@d.example", "b@d.example", "c@d.example"],
        )
        .await,
    );
    queue_id(&c.send_mail("bob@acme.example", &["a@d.example"]).await);
    assert_eq!(
        c.send_mail("bob@acme.example", &["e@d.example"]).await,
        "550 5.4.5 Daily SMTP relay limit exceeded for user."
    );
    clock.advance(DAY);
    queue_id(&c.send_mail("bob@acme.example", &["e@d.example"]).await);
    relay.shutdown().await;
}

#[tokio::test]
async fn customer_daily_limit_counts_every_recipient_of_every_user() {
    let fx = Fixture::new();
    let (relay, clock) = limited_relay(&fx, |l| l.customer_recipients_per_day = 4).await;
    let mut c = connect(relay.smtp_addr()).await;
    c.cmd("EHLO client.acme.example").await;
    queue_id(
        &c.send_mail("bob@acme.example", &["a@d.example", "b@d.example"])
            .await,
    );
    clock.advance(Duration::from_secs(3600));
    queue_id(
        &c.send_mail("carol@acme.example", &["a@d.example", "b@d.example"])
            .await,
    );
    assert_eq!(
        c.send_mail("dave@acme.example", &["a@d.example"]).await,
        "550 5.7.1 Daily SMTP relay limit exceeded for customer."
    );
    // The first message leaves the window 24 h after it was counted.
    clock.advance(DAY - Duration::from_secs(3600));
    queue_id(&c.send_mail("dave@acme.example", &["a@d.example"]).await);
    relay.shutdown().await;
}

#[tokio::test]
async fn customer_peak_limit_is_per_ten_minutes_and_temporary() {
    let fx = Fixture::new();
    let (relay, clock) = limited_relay(&fx, |l| l.customer_recipients_per10_minutes = 3).await;
    let mut c = connect(relay.smtp_addr()).await;
    c.cmd("EHLO client.acme.example").await;
    c.cmd("MAIL FROM:<bob@acme.example>").await;
    for r in ["a", "b", "c"] {
        assert_eq!(
            c.cmd(&format!("RCPT TO:<{r}@d.example>")).await,
            "250 2.1.5 OK"
        );
    }
    // Recipients pending in this very message count too.
    assert_eq!(
        c.cmd("RCPT TO:<d@d.example>").await,
        "450 4.2.1 Peak SMTP relay limit exceeded for customer."
    );
    c.cmd("DATA").await;
    queue_id(&c.cmd("Subject: x\r\n\r\nx\r\n.").await);
    clock.advance(Duration::from_secs(9 * 60));
    assert_eq!(
        c.send_mail("bob@acme.example", &["d@d.example"]).await,
        "450 4.2.1 Peak SMTP relay limit exceeded for customer."
    );
    clock.advance(Duration::from_secs(60));
    queue_id(&c.send_mail("bob@acme.example", &["d@d.example"]).await);
    relay.shutdown().await;
}

// ---------- §3.7 hot reload ----------

#[tokio::test]
async fn reload_lets_a_transaction_finish_and_judges_every_next_mail_by_the_new_policy() {
    let fx = Fixture::new();
    let open_cfg = fx.config(
        "127.0.0.1",
        vec![setting(
            AllowedSenders::OrganizationDomains,
            Some(&["127.0.0.0/16"]),
            false,
            false,
        )],
    );
    let relay = start(open_cfg.clone()).await;
    assert_eq!(relay.generation(), 1);
    let mut before = connect(relay.smtp_addr()).await;
    before.cmd("EHLO client.acme.example").await;
    assert_eq!(
        before.cmd("MAIL FROM:<bob@acme.example>").await,
        "250 2.1.0 OK"
    );

    let mut closed_cfg = open_cfg.clone();
    closed_cfg.settings[0].ip_ranges = Some(vec![RangeConfig {
        name: "acme/other".into(),
        network: "10.0.0.0/16".parse().unwrap(),
    }]);
    assert_eq!(relay.reload(closed_cfg.clone()).unwrap(), 2);
    assert_eq!(relay.generation(), 2);

    // The transaction open during the reload completes under the old policy...
    assert_eq!(before.cmd("RCPT TO:<a@d.example>").await, "250 2.1.5 OK");
    assert!(before.cmd("DATA").await.starts_with("354"));
    queue_id(&before.cmd("Subject: x\r\n\r\nx\r\n.").await);
    // ...and the session's next MAIL is judged by the policy in force now (SPEC §3.7).
    assert_eq!(
        before.cmd("MAIL FROM:<bob@acme.example>").await,
        "550 5.7.1 Client host [127.0.0.1] is not allowed to relay through this server"
    );
    // A new session sees the new one.
    let mut after = connect(relay.smtp_addr()).await;
    after.cmd("EHLO client.acme.example").await;
    assert_eq!(
        after.cmd("MAIL FROM:<bob@acme.example>").await,
        "550 5.7.1 Client host [127.0.0.1] is not allowed to relay through this server"
    );

    // An invalid config is refused and the one in force stays.
    let mut broken = closed_cfg;
    broken.tls = Some(TlsFiles {
        cert_file: fx.path("missing.crt"),
        key_file: fx.path("missing.key"),
    });
    assert!(relay.reload(broken.clone()).is_err());
    assert_eq!(relay.generation(), 2);
    // As the binary reloads (polling): the refusal is published for the operator, with
    // the refused document's hash and the reason, until a later config is in force.
    let broken = broken.seal();
    assert!(relay.reload_if_changed(broken.clone()).is_err());
    let metrics = http_get(relay.admin_addr(), "/metrics").await;
    let refused = metrics
        .lines()
        .find(|l| l.starts_with("smtprelay_config_refused{"))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(
        refused.contains(&format!("hash=\"{}\"", broken.hash)),
        "{refused}"
    );
    assert!(refused.contains("missing.crt"), "{refused}");

    let metrics = http_get(relay.admin_addr(), "/metrics").await;
    assert!(
        metrics.contains("smtprelay_config_generation 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("smtprelay_messages_accepted_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("reason=\"550 5.7.1\""), "{metrics}");
    assert!(
        http_get(relay.admin_addr(), "/readyz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    relay.shutdown().await;
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

// ---------- §3.4 durability across SIGKILL ----------

#[tokio::test]
async fn message_acknowledged_before_sigkill_is_in_the_spool_after_restart() {
    let fx = Fixture::new();
    let cfg = fx.config(
        "127.0.0.1",
        vec![setting(
            AllowedSenders::OrganizationDomains,
            Some(&["127.0.0.0/16"]),
            false,
            false,
        )],
    );
    let cfg_path = fx.dir.path().join("relay.json");
    std::fs::write(&cfg_path, cfg.seal().to_json()).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_relay"))
        .arg("--config")
        .arg(&cfg_path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
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
    let smtp: SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("smtp="))
        .unwrap_or_else(|| panic!("no smtp address in {line:?}"))
        .parse()
        .unwrap();
    let mut c = connect(smtp).await;
    c.cmd("EHLO client.acme.example").await;
    let id = queue_id(&c.send_mail("bob@acme.example", &["a@dest.example"]).await);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let spool = relay::Spool::open(fx.spool_dir()).unwrap();
    assert_eq!(spool.list(), vec![id]);
    let (env, data) = spool.read(id).unwrap();
    assert_eq!(env.rcpts, vec!["a@dest.example".to_string()]);
    assert!(
        String::from_utf8(data)
            .unwrap()
            .ends_with("Subject: test\r\n\r\nHello.\r\n")
    );
    assert!(
        std::fs::read_dir(spool.quarantine_dir())
            .unwrap()
            .next()
            .is_none()
    );
    let _ = Path::new("");
}

#[tokio::test]
async fn idle_client_gets_421_timeout_and_is_disconnected() {
    let fx = Fixture::new();
    let mut cfg = fx.config(
        "127.0.0.1",
        vec![setting(
            AllowedSenders::OrganizationDomains,
            Some(&["127.0.0.0/16"]),
            false,
            false,
        )],
    );
    // Zero seconds: the relay gives up as soon as it waits for a command.
    cfg.limits.idle_timeout_seconds = 0;
    let relay = start(cfg).await;
    let mut c = connect(relay.smtp_addr()).await;
    assert_eq!(
        c.reply().await,
        "421 4.4.2 relay.acme.example Error: timeout exceeded"
    );
    assert!(c.closed().await);
    relay.shutdown().await;
}

#[tokio::test]
async fn shutdown_tells_idle_sessions_421() {
    let fx = Fixture::new();
    let relay = start(fx.config(
        "127.0.0.1",
        vec![setting(
            AllowedSenders::OrganizationDomains,
            Some(&["127.0.0.0/16"]),
            false,
            false,
        )],
    ))
    .await;
    let mut c = connect(relay.smtp_addr()).await;
    c.cmd("EHLO client.acme.example").await;
    let stopping = tokio::spawn(relay.shutdown());
    assert_eq!(
        c.reply().await,
        "421 4.3.2 relay.acme.example Service shutting down"
    );
    assert!(c.closed().await);
    stopping.await.unwrap();
}

/// The binary reloads its config file when the content changes, keeps the old config when
/// the new file is invalid, and exits cleanly on SIGTERM.
#[tokio::test]
async fn relay_binary_reloads_its_file_and_stops_on_sigterm() {
    let fx = Fixture::new();
    let open_cfg = fx.config(
        "127.0.0.1",
        vec![setting(
            AllowedSenders::OrganizationDomains,
            Some(&["127.0.0.0/16"]),
            false,
            false,
        )],
    );
    let cfg_path = fx.dir.path().join("relay.json");
    std::fs::write(&cfg_path, open_cfg.clone().seal().to_json()).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_relay"))
        .arg("--config")
        .arg(&cfg_path)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (log_tx, log_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
            let Ok(line) = line else { break };
            // Stop reading once the test stops listening: the relay then logs into a
            // closed pipe, which must not crash it (checked by the exit status below).
            if log_tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_for_log = move |needle: &'static str| {
        // Bounded: the relay polls its file every second.
        while let Ok(line) = log_rx.recv_timeout(Duration::from_secs(30)) {
            if line.contains(needle) {
                return line;
            }
        }
        panic!("the relay never logged {needle:?}");
    };
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let addr = |key: &str| -> SocketAddr {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {line:?}"))
            .parse()
            .unwrap()
    };
    let (smtp, admin) = (addr("smtp="), addr("admin="));

    // An invalid file is logged and ignored: generation 1 stays and mail still flows.
    std::fs::write(&cfg_path, "{ not json").unwrap();
    let (logged, wait_for_log) =
        tokio::task::spawn_blocking(move || (wait_for_log("invalid configuration"), wait_for_log))
            .await
            .unwrap();
    assert!(logged.contains("keeping the one in force"), "{logged}");
    assert!(
        http_get(admin, "/metrics")
            .await
            .contains("smtprelay_config_generation 1")
    );
    let mut c = connect(smtp).await;
    c.cmd("EHLO client.acme.example").await;
    queue_id(&c.send_mail("bob@acme.example", &["a@d.example"]).await);

    // A valid file that no longer allows 127.0.0.0/16 takes effect for new sessions.
    let mut closed = open_cfg;
    closed.settings[0].ip_ranges = Some(vec![]);
    std::fs::write(&cfg_path, closed.seal().to_json()).unwrap();
    let logged = tokio::task::spawn_blocking(move || wait_for_log("new configuration in force"))
        .await
        .unwrap();
    assert!(logged.contains("generation=2"), "{logged}");
    assert!(
        http_get(admin, "/metrics")
            .await
            .contains("smtprelay_config_generation 2")
    );
    let mut c = connect(smtp).await;
    c.cmd("EHLO client.acme.example").await;
    assert_eq!(
        c.cmd("MAIL FROM:<bob@acme.example>").await,
        "550 5.7.1 Client host [127.0.0.1] is not allowed to relay through this server"
    );

    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(exit.success(), "relay exited with {exit:?} after SIGTERM");
}
