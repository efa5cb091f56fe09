//! Ingress under attack (SPEC §3.2, §3.4, §3.6, §3.7), over real TCP on loopback: limits
//! that concurrent sessions cannot exceed, connection caps taken before any TLS handshake,
//! clients that never read, slots free again when a client reconnects on `221`, live
//! revocation of ranges and passwords, and message text streamed to the spool.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::SaltString;
use argon2::{Argon2, PasswordHasher};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::{
    Client, config, connect, connect_from, connector, metrics, queue_id, spooled_recipients,
    tls_files,
};
use relay::config::*;
use relay::{RelayHandle, StartOptions};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

async fn start(cfg: RelayConfig) -> RelayHandle {
    relay::start(cfg, StartOptions::default()).await.unwrap()
}

/// Waits (bounded: `tries` × 100 ms) until `f` holds.
async fn eventually(tries: u32, mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..tries {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f()
}

/// Held mail: the default route goes to a closed port.
fn held(dir: &Path) -> RelayConfig {
    config(&dir.join("spool"), 9)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_sessions_never_pass_the_customer_limit_by_one_recipient() {
    const LIMIT: u64 = 100;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = held(dir.path());
    cfg.limits = LimitsConfig::for_customer(1, false);
    assert_eq!(cfg.limits.customer_recipients_per_day, LIMIT);
    cfg.limits.customer_recipients_per10_minutes = 1_000;
    let relay = start(cfg).await;
    let addr = relay.smtp_addr();
    // Every session holds its recipients open at once, then all send DATA together: a
    // store that only checks at RCPT lets every one of them through.
    let barrier = Arc::new(tokio::sync::Barrier::new(20));
    let mut sessions = tokio::task::JoinSet::new();
    for s in 0..20 {
        let barrier = barrier.clone();
        sessions.spawn(async move {
            let mut c = connect(addr).await;
            c.cmd("EHLO client.acme.example").await;
            assert_eq!(
                c.cmd(&format!("MAIL FROM:<user{s}@acme.example>")).await,
                "250 2.1.0 OK"
            );
            let mut ok = 0;
            for r in 0..10 {
                if c.cmd(&format!("RCPT TO:<s{s}r{r}@dest.example>")).await == "250 2.1.5 OK" {
                    ok += 1;
                }
            }
            barrier.wait().await;
            if ok > 0 {
                assert!(c.cmd("DATA").await.starts_with("354"));
                queue_id(&c.cmd("Subject: x\r\n\r\nx\r\n.").await);
            }
            ok
        });
    }
    let mut accepted = 0;
    while let Some(n) = sessions.join_next().await {
        accepted += n.unwrap();
    }
    assert_eq!(accepted, LIMIT as usize);
    assert_eq!(spooled_recipients(&relay), LIMIT as usize);
    relay.shutdown().await;
}

#[tokio::test]
async fn rset_and_quit_give_reserved_recipients_back_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = held(dir.path());
    cfg.limits.customer_recipients_per_day = 2;
    let relay = start(cfg).await;
    let mut first = connect(relay.smtp_addr()).await;
    first.cmd("EHLO client.acme.example").await;
    first.cmd("MAIL FROM:<bob@acme.example>").await;
    assert_eq!(first.cmd("RCPT TO:<a@d.example>").await, "250 2.1.5 OK");
    assert_eq!(first.cmd("RCPT TO:<b@d.example>").await, "250 2.1.5 OK");
    let mut second = connect(relay.smtp_addr()).await;
    second.cmd("EHLO client.acme.example").await;
    second.cmd("MAIL FROM:<carol@acme.example>").await;
    assert_eq!(
        second.cmd("RCPT TO:<c@d.example>").await,
        "550 5.7.1 Daily SMTP relay limit exceeded for customer."
    );
    assert_eq!(first.cmd("QUIT").await, "221 2.0.0 Bye");
    // The QUIT is handled before its reply is written, so the capacity is back now.
    assert_eq!(second.cmd("RCPT TO:<c@d.example>").await, "250 2.1.5 OK");
    assert_eq!(second.cmd("RSET").await, "250 2.0.0 OK");
    second.cmd("MAIL FROM:<carol@acme.example>").await;
    assert_eq!(second.cmd("RCPT TO:<d@d.example>").await, "250 2.1.5 OK");
    assert_eq!(second.cmd("RCPT TO:<e@d.example>").await, "250 2.1.5 OK");
    relay.shutdown().await;
}

/// Postfix's `smtp-source -s N` at exactly the cap: one message per connection, a new
/// connection as soon as `221` is read. None may be refused.
async fn clients_at_exactly_the_cap(cap: u32) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = held(dir.path());
    cfg.limits.connections_per_ip = cap;
    let relay = start(cfg).await;
    let addr = relay.smtp_addr();
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..cap {
        clients.spawn(async move {
            let mut refused = Vec::new();
            for m in 0..5 {
                let stream = TcpStream::connect(addr).await.unwrap();
                let mut client = Client {
                    io: BufReader::new(stream),
                };
                let greeting = client.reply().await;
                if !greeting.starts_with("220") {
                    refused.push(greeting);
                    continue;
                }
                client.cmd("EHLO source.acme.example").await;
                let to = vec![format!("c{c}m{m}@dest.example")];
                let (_, _, done) = client
                    .transaction("app@acme.example", &to, "Subject: x\r\n\r\nx")
                    .await;
                queue_id(&done.unwrap());
                assert_eq!(client.cmd("QUIT").await, "221 2.0.0 Bye");
            }
            refused
        });
    }
    let mut refused = Vec::new();
    while let Some(r) = clients.join_next().await {
        refused.extend(r.unwrap());
    }
    assert!(
        refused.is_empty(),
        "refused at the cap of {cap}: {refused:?}"
    );
    assert_eq!(relay.spool().depth(), cap as usize * 5);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_parallel_one_message_connections_at_a_cap_of_twenty_are_all_served() {
    clients_at_exactly_the_cap(20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_parallel_one_message_connections_at_the_default_cap_are_all_served() {
    let defaults = LimitsConfig::for_customer(1, true);
    assert_eq!(defaults.connections_per_ip, 50, "Postfix's default");
    clients_at_exactly_the_cap(defaults.connections_per_ip).await;
}

async fn connect_tcp_from(src: &str, addr: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
    sock.connect(addr).await.unwrap()
}

/// Sockets that never start their TLS handshake: beyond the per-IP cap they are closed
/// at once (the cap comes before the handshake), and a client from another address is
/// served all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_silent_sockets_on_465_from_one_ip_leave_another_ip_served() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, cert_der) = tls_files(dir.path());
    let mut cfg = held(dir.path());
    cfg.tls = Some(tls);
    cfg.limits.idle_timeout_seconds = 300;
    let relay = start(cfg).await;
    let addr = relay.smtps_addr();
    let mut silent = Vec::new();
    for _ in 0..1000 {
        silent.push(connect_tcp_from("127.0.0.2", addr).await);
    }
    // All but the per-IP cap's worth are closed without a handshake.
    let mut closed = 0;
    for s in &mut silent {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(20), s.read(&mut byte)).await
        {
            closed += 1;
        }
    }
    assert_eq!(
        closed,
        1000 - 50,
        "the relay must close what is over the cap"
    );
    let tcp = connect_tcp_from("127.0.0.3", addr).await;
    let name = ServerName::try_from("localhost").unwrap();
    let tls = connector(&cert_der).connect(name, tcp).await.unwrap();
    let mut other = Client {
        io: BufReader::new(tls),
    };
    assert_eq!(other.reply().await, "220 relay.acme.example ESMTP");
    assert!(
        other
            .cmd("EHLO other.acme.example")
            .await
            .starts_with("250")
    );
    drop(silent);
    relay.shutdown().await;
}

#[tokio::test]
async fn beyond_the_global_cap_new_connections_get_421() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = held(dir.path());
    cfg.limits.max_connections = 3;
    let relay = start(cfg).await;
    let mut held_open = Vec::new();
    for src in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        held_open.push(connect_from(src, relay.smtp_addr()).await);
    }
    let mut c = Client {
        io: BufReader::new(connect_tcp_from("127.0.0.5", relay.smtp_addr()).await),
    };
    assert_eq!(
        c.reply().await,
        "421 4.7.0 Too many connections, try again later"
    );
    assert!(c.closed().await);
    drop(held_open);
    relay.shutdown().await;
}

async fn sessions_active(relay: &RelayHandle) -> String {
    metrics(relay)
        .await
        .lines()
        .find(|l| l.starts_with("smtprelay_sessions_active "))
        .unwrap_or("")
        .to_string()
}

/// A client pipelining commands and never reading its replies fills the socket buffers;
/// the relay's writes then time out and the session ends, well before the session timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_off_by_the_write_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = held(dir.path());
    cfg.limits.idle_timeout_seconds = 1;
    cfg.limits.session_timeout_seconds = 3600;
    let relay = start(cfg).await;
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut stream = sock.connect(relay.smtp_addr()).await.unwrap();
    let ehlo = "EHLO a-long-name-to-make-replies-bigger.acme.example\r\n".repeat(200);
    // Keep sending (bounded) until the relay stops reading us; never read a reply.
    for _ in 0..2_000 {
        match tokio::time::timeout(
            Duration::from_millis(200),
            stream.write_all(ehlo.as_bytes()),
        )
        .await
        {
            Ok(Ok(())) => {}
            _ => break,
        }
    }
    let cut = {
        let mut ok = false;
        for _ in 0..100 {
            if sessions_active(&relay).await == "smtprelay_sessions_active 0" {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ok
    };
    assert!(
        cut,
        "the session was still open: {}",
        sessions_active(&relay).await
    );
    drop(stream);
    relay.shutdown().await;
}

/// The range a session was accepted under is disabled while it stays open: its next
/// MAIL is judged by the configuration in force at that moment.
#[tokio::test]
async fn a_disabled_range_refuses_the_next_mail_of_an_open_session() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = held(dir.path());
    let relay = start(cfg.clone()).await;
    let mut c = connect(relay.smtp_addr()).await;
    c.cmd("EHLO client.acme.example").await;
    let (_, _, done) = c
        .transaction(
            "app@acme.example",
            &["a@dest.example".to_string()],
            "Subject: x\r\n\r\nx",
        )
        .await;
    queue_id(&done.unwrap());
    // The transaction in progress may finish under the old policy.
    assert_eq!(c.cmd("MAIL FROM:<app@acme.example>").await, "250 2.1.0 OK");
    let mut disabled = cfg;
    disabled.settings[0].ip_ranges = Some(vec![]);
    relay.reload(disabled).unwrap();
    assert_eq!(c.cmd("RCPT TO:<b@dest.example>").await, "250 2.1.5 OK");
    assert!(c.cmd("DATA").await.starts_with("354"));
    queue_id(&c.cmd("Subject: x\r\n\r\nx\r\n.").await);
    let refused = c.cmd("MAIL FROM:<app@acme.example>").await;
    assert_eq!(
        refused,
        "550 5.7.1 Client host [127.0.0.1] is not allowed to relay through this server"
    );
    relay.shutdown().await;
}

fn phc(password: &str) -> String {
    let salt = SaltString::from_b64("c29tZXNhbHRzb21lc2FsdA").unwrap();
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

async fn auth_plain(relay: &RelayHandle, cert_der: &[u8], user: &str, password: &str) -> String {
    auth_from(relay, cert_der, "127.0.0.1", user, password).await
}

/// A user's line deleted from the credentials Secret: the document is unchanged, yet the
/// next poll puts a new generation in force, and the old password gets `535`.
#[tokio::test]
async fn a_removed_user_gets_535_after_the_next_poll_without_any_edit_to_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, cert_der) = tls_files(dir.path());
    let credentials = dir.path().join("credentials");
    std::fs::write(
        &credentials,
        format!(
            "alice@acme.example:{}\nbob@acme.example:{}\n",
            phc("alice's secret"),
            phc("bob's secret")
        ),
    )
    .unwrap();
    let mut cfg = held(dir.path());
    cfg.tls = Some(tls);
    cfg.organization.credentials_file = Some(credentials.to_string_lossy().into_owned());
    let relay = start(cfg.clone()).await;
    assert_eq!(
        auth_plain(&relay, &cert_der, "bob@acme.example", "bob's secret").await,
        "235 2.7.0 Authentication successful"
    );
    let before = relay.content_hash();
    assert_eq!(
        relay.reload_if_changed(cfg.clone()).unwrap(),
        None,
        "nothing changed yet"
    );
    std::fs::write(
        &credentials,
        format!("alice@acme.example:{}\n", phc("alice's secret")),
    )
    .unwrap();
    let reload = relay
        .reload_if_changed(cfg)
        .unwrap()
        .expect("a new generation");
    assert!(reload.only_files, "only the Secret's content changed");
    assert_ne!(relay.content_hash(), before);
    assert_eq!(
        auth_plain(&relay, &cert_der, "bob@acme.example", "bob's secret").await,
        "535 5.7.8 Authentication credentials invalid"
    );
    assert_eq!(
        auth_plain(&relay, &cert_der, "alice@acme.example", "alice's secret").await,
        "235 2.7.0 Authentication successful"
    );
    relay.shutdown().await;
}

/// A 35 MB message goes to the spool as it arrives and reads back byte for byte; a
/// message over SIZE is refused with `552` while streaming and leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_35_mb_message_is_streamed_to_the_spool_and_an_oversized_one_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = held(dir.path());
    let max = cfg.limits.max_message_bytes;
    let relay = start(cfg).await;
    let mut c = connect(relay.smtp_addr()).await;
    c.cmd("EHLO client.acme.example").await;
    let line = format!("{}\r\n", "0123456789".repeat(99));
    let lines = (max as usize - 4096) / line.len();
    let mut text = b"Subject: big\r\n\r\n".to_vec();
    for _ in 0..lines {
        text.extend_from_slice(line.as_bytes());
    }
    assert_eq!(c.cmd("MAIL FROM:<app@acme.example>").await, "250 2.1.0 OK");
    assert_eq!(c.cmd("RCPT TO:<big@dest.example>").await, "250 2.1.5 OK");
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.io.get_mut().write_all(&text).await.unwrap();
    let id = queue_id(&c.cmd(".").await);
    let (_, data) = relay.spool().read(id.parse().unwrap()).unwrap();
    assert!(data.starts_with(b"Received: "));
    assert!(data.ends_with(&text), "the text arrived whole");
    // One byte over the limit, in a message that never declared its size.
    assert_eq!(c.cmd("MAIL FROM:<app@acme.example>").await, "250 2.1.0 OK");
    assert_eq!(c.cmd("RCPT TO:<big@dest.example>").await, "250 2.1.5 OK");
    assert!(c.cmd("DATA").await.starts_with("354"));
    let mut over = Vec::with_capacity(max as usize + 2000);
    while over.len() as u64 <= max {
        over.extend_from_slice(line.as_bytes());
    }
    c.io.get_mut().write_all(&over).await.unwrap();
    assert_eq!(
        c.cmd(".").await,
        "552 5.3.4 Message size exceeds fixed maximum message size"
    );
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK", "the session goes on");
    let incoming = dir.path().join("spool").join("incoming");
    assert!(
        eventually(50, || std::fs::read_dir(&incoming).unwrap().count() == 0).await,
        "the refused text was removed"
    );
    assert_eq!(relay.spool().depth(), 1);
    relay.shutdown().await;
}

async fn auth_from(
    relay: &RelayHandle,
    cert_der: &[u8],
    src: &str,
    user: &str,
    password: &str,
) -> String {
    login_from(relay, cert_der, src, user, password).await.1
}

/// Reconnecting does not reset the count: failures for one user, from any address, slow
/// down and then lock the user out (even with the right password), while another user is
/// served; an unknown user gets exactly the reply a wrong password gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_auth_failures_lock_the_user_out_across_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, cert_der) = tls_files(dir.path());
    let credentials = dir.path().join("credentials");
    std::fs::write(
        &credentials,
        format!(
            "alice@acme.example:{}\nbob@acme.example:{}\n",
            phc("alice's secret"),
            phc("bob's secret")
        ),
    )
    .unwrap();
    let mut cfg = held(dir.path());
    cfg.tls = Some(tls);
    cfg.organization.credentials_file = Some(credentials.to_string_lossy().into_owned());
    let throttle = relay::ingress::auth_throttle::ThrottleConfig {
        first_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(40),
        ..Default::default()
    };
    assert_eq!(throttle.user_lockout_failures, 5);
    let relay = relay::start(
        cfg,
        StartOptions {
            auth_throttle: throttle,
            ..StartOptions::default()
        },
    )
    .await
    .unwrap();
    const INVALID: &str = "535 5.7.8 Authentication credentials invalid";
    const LOCKED: &str = "454 4.7.0 Too many authentication failures, try again later";
    assert_eq!(
        auth_from(&relay, &cert_der, "127.0.0.2", "nobody@acme.example", "x").await,
        INVALID,
        "an unknown user is answered like a wrong password"
    );
    for (i, src) in [
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.4",
        "127.0.0.5",
        "127.0.0.6",
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(
            auth_from(&relay, &cert_der, src, "bob@acme.example", "guess").await,
            INVALID,
            "guess {i}"
        );
    }
    assert_eq!(
        auth_from(
            &relay,
            &cert_der,
            "127.0.0.7",
            "bob@acme.example",
            "bob's secret"
        )
        .await,
        LOCKED
    );
    assert_eq!(
        auth_from(
            &relay,
            &cert_der,
            "127.0.0.8",
            "alice@acme.example",
            "alice's secret"
        )
        .await,
        "235 2.7.0 Authentication successful"
    );
    let text = metrics(&relay).await;
    assert!(
        text.contains("smtprelay_auth_lockouts_total{scope=\"user\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("smtprelay_auth_failures_total{reason=\"locked_out\"} 1"),
        "{text}"
    );
    relay.shutdown().await;
}

/// A TLS session from `src` on the implicit-TLS port, after EHLO and `AUTH PLAIN`: the
/// client and the reply to AUTH. The password-check pool is shared by every test of this
/// binary: a `454 4.3.0` (busy, nothing checked) is tried again, as a client would.
async fn login_from(
    relay: &RelayHandle,
    cert_der: &[u8],
    src: &str,
    user: &str,
    password: &str,
) -> (Client<tokio_rustls::client::TlsStream<TcpStream>>, String) {
    let token = STANDARD.encode(format!("\0{user}\0{password}"));
    let mut tries = 0;
    loop {
        let tcp = connect_tcp_from(src, relay.smtps_addr()).await;
        let name = ServerName::try_from("localhost").unwrap();
        let tls = connector(cert_der).connect(name, tcp).await.unwrap();
        let mut c = Client {
            io: BufReader::new(tls),
        };
        c.reply().await;
        c.cmd("EHLO client.acme.example").await;
        let reply = c.cmd(&format!("AUTH PLAIN {token}")).await;
        tries += 1;
        if reply != AUTH_BUSY || tries == 50 {
            return (c, reply);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A relay whose one setting requires AUTH (no IP allow list), with these users.
async fn auth_only_relay(
    dir: &Path,
    users: &[(&str, &str)],
    throttle: relay::ingress::auth_throttle::ThrottleConfig,
) -> (RelayHandle, RelayConfig, Vec<u8>, std::path::PathBuf) {
    let (tls, cert_der) = tls_files(dir);
    let credentials = dir.join("credentials");
    write_credentials(&credentials, users);
    let mut cfg = held(dir);
    cfg.tls = Some(tls);
    cfg.organization.credentials_file = Some(credentials.to_string_lossy().into_owned());
    cfg.settings[0].ip_ranges = None;
    cfg.settings[0].require_smtp_auth = true;
    cfg.settings[0].require_tls = true;
    let relay = relay::start(
        cfg.clone(),
        StartOptions {
            auth_throttle: throttle,
            ..StartOptions::default()
        },
    )
    .await
    .unwrap();
    (relay, cfg, cert_der, credentials)
}

fn write_credentials(path: &Path, users: &[(&str, &str)]) {
    let lines: String = users
        .iter()
        .map(|(user, password)| format!("{user}:{}\n", phc(password)))
        .collect();
    std::fs::write(path, lines).unwrap();
}

/// Throttle delays short enough for a test.
fn quick_throttle() -> relay::ingress::auth_throttle::ThrottleConfig {
    relay::ingress::auth_throttle::ThrottleConfig {
        first_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(40),
        ..Default::default()
    }
}

const AUTH_OK: &str = "235 2.7.0 Authentication successful";
const AUTH_INVALID: &str = "535 5.7.8 Authentication credentials invalid";
const AUTH_LOCKED: &str = "454 4.7.0 Too many authentication failures, try again later";
const AUTH_REVOKED: &str = "535 5.7.8 Authentication credentials no longer valid";
const AUTH_BUSY: &str = "454 4.3.0 Authentication service busy, try again later";

/// SPEC §3.7: sessions logged in before the credentials Secret changed. The one whose
/// password changed and the one whose user was removed are refused at their next MAIL
/// (and may authenticate again); the one whose line did not change keeps relaying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_or_changed_credentials_are_refused_at_the_next_mail_of_a_live_session() {
    let dir = tempfile::tempdir().unwrap();
    let users = [
        ("alice@acme.example", "alice's secret"),
        ("bob@acme.example", "bob's secret"),
        ("carol@acme.example", "carol's secret"),
    ];
    let (relay, cfg, cert_der, credentials) =
        auth_only_relay(dir.path(), &users, quick_throttle()).await;
    let mut sessions = Vec::new();
    for (user, password) in users {
        let (mut c, reply) = login_from(&relay, &cert_der, "127.0.0.1", user, password).await;
        assert_eq!(reply, AUTH_OK, "{user}");
        let (_, refused, done) = c
            .transaction(user, &["x@dest.example".to_string()], "Subject: x\r\n\r\nx")
            .await;
        assert!(refused.is_empty(), "{refused:?}");
        queue_id(&done.unwrap());
        sessions.push(c);
    }
    // Alice's password changes, Bob's line goes, Carol's line stays as it was.
    let carol_line = std::fs::read_to_string(&credentials)
        .unwrap()
        .lines()
        .find(|l| l.starts_with("carol@"))
        .unwrap()
        .to_string();
    std::fs::write(
        &credentials,
        format!(
            "alice@acme.example:{}\n{carol_line}\n",
            phc("alice's new secret")
        ),
    )
    .unwrap();
    relay
        .reload_if_changed(cfg)
        .unwrap()
        .expect("a new generation");
    let [alice, bob, carol] = &mut sessions[..] else {
        unreachable!()
    };
    assert_eq!(
        carol.cmd("MAIL FROM:<carol@acme.example>").await,
        "250 2.1.0 OK"
    );
    assert_eq!(
        alice.cmd("MAIL FROM:<alice@acme.example>").await,
        AUTH_REVOKED
    );
    assert_eq!(bob.cmd("MAIL FROM:<bob@acme.example>").await, AUTH_REVOKED);
    // The session no longer counts as authenticated: the old password fails, the new
    // one works.
    let old = STANDARD.encode("\0alice@acme.example\0alice's secret");
    assert_eq!(alice.cmd(&format!("AUTH PLAIN {old}")).await, AUTH_INVALID);
    let new = STANDARD.encode("\0alice@acme.example\0alice's new secret");
    assert_eq!(alice.cmd(&format!("AUTH PLAIN {new}")).await, AUTH_OK);
    assert_eq!(
        alice.cmd("MAIL FROM:<alice@acme.example>").await,
        "250 2.1.0 OK"
    );
    relay.shutdown().await;
}

/// SPEC §3.2: five wrong passwords for Bob from other addresses lock Bob out of new
/// addresses, not out of the address he logged in from before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attackers_guesses_from_elsewhere_leave_the_user_its_usual_address() {
    let dir = tempfile::tempdir().unwrap();
    let users = [("bob@acme.example", "bob's secret")];
    let (relay, _, cert_der, _) = auth_only_relay(dir.path(), &users, quick_throttle()).await;
    let login = |src: &'static str, password: &'static str| {
        let (relay, cert_der) = (&relay, &cert_der);
        async move {
            let (_, reply) = login_from(relay, cert_der, src, "bob@acme.example", password).await;
            reply
        }
    };
    assert_eq!(login("127.0.0.1", "bob's secret").await, AUTH_OK);
    for src in [
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.4",
        "127.0.0.5",
        "127.0.0.6",
    ] {
        assert_eq!(login(src, "guess").await, AUTH_INVALID, "{src}");
    }
    assert_eq!(
        login("127.0.0.7", "bob's secret").await,
        AUTH_LOCKED,
        "a new address is locked out"
    );
    assert_eq!(
        login("127.0.0.1", "bob's secret").await,
        AUTH_OK,
        "the usual address is not"
    );
    relay.shutdown().await;
}

/// SPEC §3.2: twenty guesses sent at once get no more password checks than five guesses
/// sent one after another; the rest are answered as a lockout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_parallel_guesses_get_no_more_tries_than_the_lockout_allows() {
    let dir = tempfile::tempdir().unwrap();
    let users = [("bob@acme.example", "bob's secret")];
    let throttle = quick_throttle();
    let tries = throttle.user_lockout_failures as usize;
    let (relay, _, cert_der, _) = auth_only_relay(dir.path(), &users, throttle).await;
    let relay = Arc::new(relay);
    let cert_der = Arc::new(cert_der);
    // Every client has its TLS session up and its EHLO answered before any guesses.
    let barrier = Arc::new(tokio::sync::Barrier::new(20));
    let mut guesses = tokio::task::JoinSet::new();
    for n in 0..20 {
        let (relay, cert_der, barrier) = (relay.clone(), cert_der.clone(), barrier.clone());
        guesses.spawn(async move {
            let tcp = connect_tcp_from("127.0.0.2", relay.smtps_addr()).await;
            let name = ServerName::try_from("localhost").unwrap();
            let tls = connector(&cert_der).connect(name, tcp).await.unwrap();
            let mut c = Client {
                io: BufReader::new(tls),
            };
            c.reply().await;
            c.cmd("EHLO client.acme.example").await;
            barrier.wait().await;
            let token = STANDARD.encode(format!("\0bob@acme.example\0guess {n}"));
            c.cmd(&format!("AUTH PLAIN {token}")).await
        });
    }
    let mut replies = Vec::new();
    while let Some(reply) = guesses.join_next().await {
        replies.push(reply.unwrap());
    }
    let checked = replies.iter().filter(|r| *r == AUTH_INVALID).count();
    let locked = replies.iter().filter(|r| *r == AUTH_LOCKED).count();
    // The password-check pool is shared by the whole process (the other tests of this
    // binary too): a guess it has no room for is answered busy, unchecked.
    let busy = replies.iter().filter(|r| *r == AUTH_BUSY).count();
    assert!(
        checked <= tries,
        "{checked} guesses were checked, at most {tries} may be: {replies:?}"
    );
    assert_eq!(checked + locked + busy, 20, "{replies:?}");
    assert!(locked >= 20 - tries, "{replies:?}");
    // Guessing on one at a time: exactly `tries` checks in all before the lockout.
    let mut total = checked;
    for _ in 0..tries + 5 {
        let (_, reply) = login_from(&relay, &cert_der, "127.0.0.2", "bob@acme.example", "x").await;
        match reply.as_str() {
            AUTH_LOCKED => break,
            AUTH_INVALID => total += 1,
            AUTH_BUSY => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("{other}"),
        }
    }
    assert_eq!(total, tries, "password checks before the lockout");
    let (_, reply) = login_from(&relay, &cert_der, "127.0.0.2", "bob@acme.example", "x").await;
    assert_eq!(reply, AUTH_LOCKED);
    let relay = Arc::into_inner(relay).expect("every client is done");
    relay.shutdown().await;
}

/// A setting with neither an IP allow list nor AUTH required would relay for anyone: the
/// relay refuses such a config itself (the CRD schema refuses it too, but a ConfigMap can
/// be edited by hand), at start and at reload, and says so on `/metrics`.
#[tokio::test]
async fn a_setting_with_no_check_on_is_refused_at_start_and_at_reload() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = held(dir.path());
    let mut open = cfg.clone();
    open.settings[0].ip_ranges = None;
    open.settings[0].require_smtp_auth = false;
    let err = relay::start(open.clone(), StartOptions::default())
        .await
        .err()
        .expect("an open relay must not start");
    assert!(
        err.to_string().contains("acme/loopback")
            && err
                .to_string()
                .contains("neither an IP allow list nor SMTP AUTH"),
        "{err}"
    );
    let relay = start(cfg).await;
    let before = relay.generation();
    let err = relay.reload_if_changed(open).unwrap_err();
    assert!(err.to_string().contains("acme/loopback"), "{err}");
    assert_eq!(relay.generation(), before, "the old configuration stays");
    let text = metrics(&relay).await;
    assert!(
        text.contains("smtprelay_config_refused{") && text.contains("neither an IP allow list"),
        "{text}"
    );
    relay.shutdown().await;
}
