//! Outbound SMTP AUTH and implicit TLS towards a smarthost (SPEC §2.4 `auth`,
//! `tls.implicit`): PLAIN, LOGIN and XOAUTH2 through a sink that requires them (the exact
//! base64 it received), TLS from the first byte on a port-465-style listener, a refused
//! password bouncing once with the upstream's text, no credentials over a session that
//! skipped a TLS check, a mechanism the host does not offer, and no password in the logs.

mod delivery_common;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use delivery_common::*;
use relay::config::{AuthMechanism, RouteAuthConfig, RouteConfig, RouteMatcher, RouteTlsConfig};
use relay::delivery::dsn::parse_dsn;
use relay::delivery::probe::probe_route;
use relay::delivery::testing::{SinkAuth, SinkConfig, TestCa, TestCert, TestSink};

const SMARTHOST: &str = "smtp.provider.test";
const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const USER: &str = "AKIAEXAMPLEUSER";
const PASSWORD: &str = "s3cr3t-Pa55word-never-logged";
const TOKEN: &str = "ya29.a0-access-token-never-logged";

struct Pki {
    dir: tempfile::TempDir,
    ca_file: String,
    good: TestCert,
    wrong_name: TestCert,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Test Provider CA").unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    Pki {
        ca_file: ca_file.display().to_string(),
        good: ca.issue(&[SMARTHOST]).unwrap(),
        wrong_name: ca.issue(&["other.provider.test"]).unwrap(),
        dir,
    }
}

impl Pki {
    /// The route's `auth`: files as the mounted Secret would hold them.
    fn auth(&self, mechanism: AuthMechanism, secret: &str) -> RouteAuthConfig {
        let folder = self.dir.path().join("smarthost");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("username"), format!("{USER}\n")).unwrap();
        let key = if mechanism == AuthMechanism::XOAuth2 {
            "token"
        } else {
            "password"
        };
        std::fs::write(folder.join(key), secret).unwrap();
        RouteAuthConfig {
            mechanism,
            secret_name: "smarthost".into(),
            username_file: folder.join("username").display().to_string(),
            secret_file: folder.join(key).display().to_string(),
            client_credentials: None,
            refresh_token: None,
            service_account: None,
        }
    }

    fn tls(&self, implicit: bool) -> RouteTlsConfig {
        RouteTlsConfig {
            require_tls: true,
            require_ca_signed: true,
            validate_hostname: true,
            extra_ca_file: Some(self.ca_file.clone()),
            implicit,
        }
    }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn smarthost(
    cert: &TestCert,
    implicit: bool,
    mechanisms: &[&str],
    reply: Option<&str>,
) -> TestSink {
    TestSink::start(SinkConfig {
        tls: Some(cert.server_config().unwrap()),
        implicit_tls: implicit,
        pipelining: true,
        auth: Some(SinkAuth {
            mechanisms: mechanisms.iter().map(|m| m.to_string()).collect(),
            reply: reply.map(str::to_string),
        }),
        ..SinkConfig::default()
    })
    .await
    .unwrap()
}

struct Run {
    h: Harness,
    home: TestSink,
}

/// Queues one message for `bob@dest.test` over `route` (bounces go to `home`) and runs
/// one delivery pass.
async fn run(route_cfg: RouteConfig) -> Run {
    let home = TestSink::start(SinkConfig::default()).await.unwrap();
    let routes = vec![
        route(
            "home",
            domains(&["acme.test"]),
            "127.0.0.1",
            home.port(),
            no_tls(),
        ),
        route_cfg,
    ];
    let h = Harness::new(routes, delivery_config(&[(SMARTHOST, LOOPBACK)]));
    h.send(
        "alice@acme.test",
        &["bob@dest.test"],
        &message("alice@acme.test", "bob@dest.test", "auth"),
    );
    bounded(h.manager.run_due()).await;
    Run { h, home }
}

fn smarthost_route(port: u16, tls: RouteTlsConfig, auth: RouteAuthConfig) -> RouteConfig {
    let mut r = route(
        "acme/smarthost",
        RouteMatcher::Default,
        SMARTHOST,
        port,
        tls,
    );
    r.auth = Some(auth);
    r
}

/// The one DSN `home` received: status and diagnostic of its recipient.
async fn bounce(run: &Run) -> (String, String) {
    bounded(run.h.manager.run_due()).await;
    let dsns = run.home.messages();
    assert_eq!(dsns.len(), 1, "expected one bounce");
    let dsn = parse_dsn(&dsns[0].data).unwrap();
    assert_eq!(dsn.recipients[0].action, "failed");
    (
        dsn.recipients[0].status.clone(),
        dsn.recipients[0].diagnostic.clone(),
    )
}

#[tokio::test]
async fn plain_on_587_sends_the_rfc_4616_response_after_starttls() {
    let p = pki();
    let sink = smarthost(&p.good, false, &["PLAIN", "LOGIN"], None).await;
    let auth = p.auth(AuthMechanism::Plain, PASSWORD);
    let r = run(smarthost_route(sink.port(), p.tls(false), auth)).await;
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 1, "delivered through the smarthost");
    assert!(msgs[0].tls);
    let expected = b64(format!("\0{USER}\0{PASSWORD}").as_bytes());
    assert_eq!(sink.auth_lines(), vec![format!("AUTH PLAIN {expected}")]);
    assert!(
        r.h.metrics_text()
            .contains("smtprelay_route_auth_refused{route=\"acme/smarthost\"} 0"),
        "a login that went through"
    );
}

#[tokio::test]
async fn login_answers_both_prompts_with_base64() {
    let p = pki();
    let sink = smarthost(&p.good, false, &["LOGIN"], None).await;
    let auth = p.auth(AuthMechanism::Login, PASSWORD);
    let _r = run(smarthost_route(sink.port(), p.tls(false), auth)).await;
    assert_eq!(sink.messages().len(), 1);
    assert_eq!(
        sink.auth_lines(),
        vec![
            "AUTH LOGIN".to_string(),
            b64(USER.as_bytes()),
            b64(PASSWORD.as_bytes())
        ]
    );
}

#[tokio::test]
async fn xoauth2_sends_user_and_bearer_token() {
    let p = pki();
    let sink = smarthost(&p.good, false, &["LOGIN", "XOAUTH2"], None).await;
    let auth = p.auth(AuthMechanism::XOAuth2, TOKEN);
    let _r = run(smarthost_route(sink.port(), p.tls(false), auth)).await;
    assert_eq!(sink.messages().len(), 1);
    let expected = b64(format!("user={USER}\x01auth=Bearer {TOKEN}\x01\x01").as_bytes());
    assert_eq!(sink.auth_lines(), vec![format!("AUTH XOAUTH2 {expected}")]);
}

#[tokio::test]
async fn implicit_tls_speaks_tls_from_the_first_byte_and_authenticates() {
    let p = pki();
    let sink = smarthost(&p.good, true, &["PLAIN"], None).await;
    let auth = p.auth(AuthMechanism::Plain, PASSWORD);
    let _r = run(smarthost_route(sink.port(), p.tls(true), auth)).await;
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 1, "delivered over implicit TLS");
    assert!(msgs[0].tls);
    assert_eq!(sink.auth_lines().len(), 1);

    // The probe (relayctl test-tls, the operator) handles implicit TLS too.
    let mut probed = route(
        "acme/smarthost",
        RouteMatcher::Default,
        SMARTHOST,
        sink.port(),
        p.tls(true),
    );
    probed.auth = None;
    let results = probe_route(&probed, &delivery_config(&[(SMARTHOST, LOOPBACK)])).await;
    assert_eq!(results.len(), 1);
    assert!(results[0].verified, "{}", results[0].message);
}

#[tokio::test]
async fn a_refused_password_bounces_5_7_8_with_the_upstream_text_and_is_not_retried() {
    let p = pki();
    let upstream = "535 5.7.8 Authentication credentials invalid (provider says: bad key)";
    let sink = smarthost(&p.good, false, &["PLAIN"], Some(upstream)).await;
    let auth = p.auth(AuthMechanism::Plain, PASSWORD);
    let r = run(smarthost_route(sink.port(), p.tls(false), auth)).await;
    assert!(sink.messages().is_empty());
    let (status, diagnostic) = bounce(&r).await;
    assert_eq!(status, "5.7.8");
    assert!(
        diagnostic.contains("Authentication credentials invalid (provider says: bad key)"),
        "{diagnostic}"
    );
    assert!(!diagnostic.contains(PASSWORD), "{diagnostic}");
    // No retry storm: the queue is empty and an hour later nobody dials the host again.
    let connections = sink.connections();
    assert_eq!(connections, 1, "one session, one AUTH");
    r.h.clock.set(t0() + Duration::from_secs(3600));
    bounded(r.h.manager.run_due()).await;
    assert_eq!(sink.connections(), connections);
    assert!(r.h.manager.queued().is_empty());
    let metrics = r.h.metrics_text();
    assert!(
        metrics.contains("smtprelay_delivery_auth_failures_total{route=\"acme/smarthost\"} 1"),
        "{metrics}"
    );
    // What the operator reads for the route's CredentialsAccepted condition.
    assert!(
        metrics.contains("smtprelay_route_auth_refused{route=\"acme/smarthost\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_temporary_auth_failure_defers() {
    let p = pki();
    let sink = smarthost(
        &p.good,
        false,
        &["PLAIN"],
        Some("454 4.7.0 Temporary authentication failure"),
    )
    .await;
    let auth = p.auth(AuthMechanism::Plain, PASSWORD);
    let r = run(smarthost_route(sink.port(), p.tls(false), auth)).await;
    assert!(sink.messages().is_empty());
    assert!(r.home.messages().is_empty(), "no bounce for a 4xx");
    assert_eq!(r.h.manager.queued().len(), 1, "still queued for a retry");
}

#[tokio::test]
async fn credentials_are_never_sent_over_tls_that_skipped_a_check() {
    let p = pki();
    // The certificate names another host; the route (written by hand, as CEL would refuse
    // it) turned validateHostname off, so the handshake passes but the session may be an
    // impostor's.
    let sink = smarthost(&p.wrong_name, false, &["PLAIN"], None).await;
    let mut tls = p.tls(false);
    tls.validate_hostname = false;
    let auth = p.auth(AuthMechanism::Plain, PASSWORD);
    let r = run(smarthost_route(sink.port(), tls, auth)).await;
    assert!(
        sink.auth_lines().is_empty(),
        "no AUTH line reached the host"
    );
    assert!(sink.messages().is_empty());
    let (status, diagnostic) = bounce(&r).await;
    assert_eq!(status, "5.7.10");
    assert!(diagnostic.contains("credentials"), "{diagnostic}");
}

#[tokio::test]
async fn a_mechanism_the_host_does_not_offer_fails_with_that_reason() {
    let p = pki();
    let sink = smarthost(&p.good, false, &["LOGIN"], None).await;
    let auth = p.auth(AuthMechanism::XOAuth2, TOKEN);
    let r = run(smarthost_route(sink.port(), p.tls(false), auth)).await;
    assert!(sink.auth_lines().is_empty());
    let (_, diagnostic) = bounce(&r).await;
    assert!(
        diagnostic.contains("does not offer AUTH XOAUTH2 (it offers: LOGIN)"),
        "{diagnostic}"
    );
}

#[tokio::test]
async fn a_rotated_secret_takes_effect_at_the_next_session() {
    let p = pki();
    let sink = smarthost(&p.good, false, &["PLAIN"], None).await;
    let auth = p.auth(AuthMechanism::Plain, "old-password");
    let file = auth.secret_file.clone();
    let r = run(smarthost_route(sink.port(), p.tls(false), auth)).await;
    assert_eq!(sink.messages().len(), 1);
    std::fs::write(&file, "new-password\n").unwrap();
    // An hour later the cached session has expired: a new one logs in with what the
    // Secret holds now, without any reload.
    r.h.clock.set(t0() + Duration::from_secs(3600));
    r.h.send(
        "alice@acme.test",
        &["carol@dest.test"],
        &message("alice@acme.test", "carol@dest.test", "rotated"),
    );
    bounded(r.h.manager.run_due()).await;
    assert_eq!(sink.messages().len(), 2);
    let lines = sink.auth_lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(
        lines[1],
        format!(
            "AUTH PLAIN {}",
            b64(format!("\0{USER}\0new-password").as_bytes())
        )
    );
}

/// A `MakeWriter` collecting every formatted log line.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn the_password_and_token_never_reach_the_logs() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(captured.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let p = pki();
    // A success, a refusal and a mechanism mismatch: every path that logs.
    for (mechanisms, reply, mechanism, secret) in [
        (&["PLAIN"][..], None, AuthMechanism::Plain, PASSWORD),
        (
            &["LOGIN"][..],
            Some("535 5.7.8 no"),
            AuthMechanism::Login,
            PASSWORD,
        ),
        (
            &["XOAUTH2"][..],
            Some("535 5.7.8 no"),
            AuthMechanism::XOAuth2,
            TOKEN,
        ),
        (&["LOGIN"][..], None, AuthMechanism::Plain, PASSWORD),
    ] {
        let sink = smarthost(&p.good, false, mechanisms, reply).await;
        let auth = p.auth(mechanism, secret);
        let r = run(smarthost_route(sink.port(), p.tls(false), auth)).await;
        bounded(r.h.manager.run_due()).await;
    }
    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(
        logs.contains("acme/smarthost"),
        "logs were captured: {logs}"
    );
    for needle in [
        PASSWORD.to_string(),
        TOKEN.to_string(),
        b64(PASSWORD.as_bytes()),
        b64(format!("\0{USER}\0{PASSWORD}").as_bytes()),
    ] {
        assert!(!logs.contains(&needle), "{needle} in the logs:\n{logs}");
    }
}
