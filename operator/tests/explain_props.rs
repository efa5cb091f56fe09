//! Property: for random manifests and sessions, `relayctl explain` answers exactly what the
//! relay answers over SMTP. One relay runs in this process on loopback (with a
//! certificate and real AUTH credentials); each case renders generated manifests
//! (settings with label selectors, ranges enabled or not) as `relayctl` does, puts the
//! configuration in force, plays the session over TCP (implicit TLS when the session has TLS, from
//! 127.0.0.1 or 127.0.0.2) and compares the MAIL and RCPT replies with the explanation's.
//!
//! `PROPTEST_CASES` sets the number of cases (default 48).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use base64::Engine as _;
use operator::explain::{ManifestFacts, Query, explain};
use operator::manifests::render_set;
use operator::render::RenderEnv;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use relay::config::RelayConfig;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;

/// Passwords of the two users in the applications example's credentials Secret.
const CREDENTIALS: &str = "alice@acme.example:$argon2id$v=19$m=32768,t=2,p=1$YzJGc2RITmhiSFJ6WVd4ME1USXo$uB9I9PjgnSjjXtlc4cLrreuv4WYM60VPG7mmpXSbKis
ticketing@acme.example:$argon2id$v=19$m=32768,t=2,p=1$WVc1dmRHaGxjbk5oYkhReE1qTTA$2P6x3zXT70nCKFc5TCRRzf7s/R+60hZ0IhKci2nKdSQ
";
const USERS: [(&str, &str); 2] = [
    ("alice@acme.example", "correct horse battery staple"),
    ("ticketing@acme.example", "app-secret-2"),
];
const NETWORKS: [&str; 4] = ["127.0.0.1", "127.0.0.2/32", "127.0.0.0/30", "10.0.0.0/16"];

#[derive(Clone, Debug)]
struct GenRange {
    network: usize,
    enabled: bool,
    site: &'static str,
}

#[derive(Clone, Debug)]
struct GenSetting {
    senders: &'static str,
    /// `None`: the IP allow list is off; `Some(None)`: on, selecting every range;
    /// `Some(Some(site))`: on, selecting ranges labelled `site`.
    ip: Option<Option<&'static str>>,
    auth: bool,
    tls: bool,
}

#[derive(Clone, Debug)]
struct GenSession {
    octet: u8,
    helo: &'static str,
    tls: bool,
    user: Option<usize>,
    from: &'static str,
    to: Vec<&'static str>,
}

fn site() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("hq"), Just("branch")]
}

fn range() -> impl Strategy<Value = GenRange> {
    (0..NETWORKS.len(), any::<bool>(), site()).prop_map(|(network, enabled, site)| GenRange {
        network,
        enabled,
        site,
    })
}

fn setting() -> impl Strategy<Value = GenSetting> {
    (
        prop_oneof![
            Just("RegisteredUsers"),
            Just("OrganizationDomains"),
            Just("AnyAddress")
        ],
        proptest::option::of(proptest::option::of(site())),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(senders, ip, auth, tls)| GenSetting {
            senders,
            // The API's rules: one authentication method at least; AUTH needs TLS.
            auth: auth || ip.is_none(),
            tls: tls || auth || ip.is_none(),
            ip,
        })
}

/// The manifests of one case: the Organization with its Secrets, the settings and ranges.
fn manifests(settings: &[GenSetting], ranges: &[GenRange]) -> String {
    let mut out = String::from(
        "apiVersion: smtprelay.dev/v1alpha1
kind: Organization
metadata: {name: acme, namespace: acme}
spec:
  domains: [acme.example]
  users: [alice@acme.example, ticketing@acme.example]
  authSecretRef: {name: smtp-credentials}
  licenses: 100
  billing: Paid
  relay:
    hostname: relay.acme.example
    tlsSecretRef: {name: relay-tls}
---
apiVersion: v1
kind: Secret
metadata: {name: smtp-credentials, namespace: acme}
stringData:
  credentials: |
CREDENTIALS---
apiVersion: v1
kind: Secret
metadata: {name: relay-tls, namespace: acme}
type: kubernetes.io/tls
stringData: {tls.crt: x, tls.key: x}
---
apiVersion: smtprelay.dev/v1alpha1
kind: MailRoute
metadata: {name: default, namespace: acme}
spec:
  description: everything
  match: {default: true}
  singleHost: {host: 127.0.0.1, port: 2525}
",
    );
    // The Secret holds what the relay's credentials file holds.
    let indented: String = CREDENTIALS.lines().map(|l| format!("    {l}\n")).collect();
    out = out.replace("CREDENTIALS", &indented);
    for (i, s) in settings.iter().enumerate() {
        let ip = match s.ip {
            None => "{enabled: false}".to_string(),
            Some(None) => "{enabled: true}".to_string(),
            Some(Some(site)) => {
                format!("{{enabled: true, selector: {{matchLabels: {{site: {site}}}}}}}")
            }
        };
        out.push_str(&format!(
            "---
apiVersion: smtprelay.dev/v1alpha1
kind: SmtpRelaySetting
metadata: {{name: s{i}, namespace: acme}}
spec:
  description: setting {i}
  allowedSenders: {}
  authentication:
    ipAllowRanges: {ip}
    requireSmtpAuth: {}
  encryption: {{requireTls: {}}}
",
            s.senders, s.auth, s.tls
        ));
    }
    for (i, r) in ranges.iter().enumerate() {
        out.push_str(&format!(
            "---
apiVersion: smtprelay.dev/v1alpha1
kind: IpAllowRange
metadata: {{name: r{i}, namespace: acme, labels: {{site: {}}}}}
spec:
  description: range {i}
  cidr: {}
  enabled: {}
",
            r.site, NETWORKS[r.network], r.enabled
        ));
    }
    out
}

fn session() -> impl Strategy<Value = GenSession> {
    (
        1u8..3,
        prop_oneof![Just("mx.acme.example"), Just("host.other.example")],
        any::<bool>(),
        proptest::option::of(0..USERS.len()),
        prop_oneof![
            Just(""),
            Just("alice@acme.example"),
            Just("ticketing@acme.example"),
            Just("x@sub.acme.example"),
            Just("y@other.example"),
        ],
        proptest::collection::vec(
            prop_oneof![
                Just("a@example.net"),
                Just("b@partner.example"),
                Just("c@example.net")
            ],
            1..4,
        ),
    )
        .prop_map(|(octet, helo, tls, user, from, to)| GenSession {
            octet,
            helo,
            tls,
            user,
            from,
            to,
        })
}

async fn reply<R: AsyncBufRead + Unpin>(r: &mut R) -> Option<String> {
    let mut first = None;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let line = line.trim_end().to_string();
        let last = line.as_bytes().get(3) != Some(&b'-');
        first.get_or_insert_with(|| line.replacen('-', " ", 1));
        if last {
            return first;
        }
    }
}

/// Plays the session; returns the MAIL reply and the RCPT replies (RCPT only after a
/// positive MAIL).
async fn play<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    s: &GenSession,
) -> (String, Vec<String>) {
    let (r, mut w) = tokio::io::split(stream);
    let mut r = BufReader::new(r);
    let cmd = async |w: &mut tokio::io::WriteHalf<S>, r: &mut BufReader<_>, line: String| {
        w.write_all(format!("{line}\r\n").as_bytes()).await.unwrap();
        reply(r).await.unwrap_or_default()
    };
    assert!(reply(&mut r).await.unwrap_or_default().starts_with("220"));
    cmd(&mut w, &mut r, format!("EHLO {}", s.helo)).await;
    if let Some(u) = s.user {
        let (user, password) = USERS[u];
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        cmd(&mut w, &mut r, format!("AUTH PLAIN {token}")).await;
    }
    let mail = cmd(&mut w, &mut r, format!("MAIL FROM:<{}>", s.from)).await;
    let mut rcpts = Vec::new();
    if mail.starts_with('2') {
        for to in &s.to {
            rcpts.push(cmd(&mut w, &mut r, format!("RCPT TO:<{to}>")).await);
        }
    }
    (mail, rcpts)
}

async fn over_smtp(
    smtp: SocketAddr,
    smtps: SocketAddr,
    tls: &tokio_rustls::TlsConnector,
    s: &GenSession,
) -> (String, Vec<String>) {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::from(([127, 0, 0, s.octet], 0)))
        .unwrap();
    if s.tls {
        let tcp = sock.connect(smtps).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        play(tls.connect(name, tcp).await.unwrap(), s).await
    } else {
        play(sock.connect(smtp).await.unwrap(), s).await
    }
}

#[test]
fn explain_answers_what_the_relay_answers_over_smtp() {
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key, creds) = (
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
        dir.path().join("credentials"),
    );
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    std::fs::write(&creds, CREDENTIALS).unwrap();
    let base = RelayConfig::loopback(&dir.path().join("spool").to_string_lossy(), 9);
    // Rendered configs name the files above and keep the relay's addresses.
    let env = RenderEnv {
        listeners: base.listeners.clone(),
        admin_listen: base.admin_listen,
        spool_dir: base.spool_dir.clone(),
        tls_dir: dir.path().to_string_lossy().into_owned(),
        credentials_dir: dir.path().to_string_lossy().into_owned(),
        ca_dir: dir.path().to_string_lossy().into_owned(),
        delivery: base.delivery.clone(),
    };

    let mut roots = rustls::RootCertStore::empty();
    roots.add(made.cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));

    let rt = tokio::runtime::Runtime::new().unwrap();
    let handle = rt
        .block_on(relay::start(base.clone(), relay::StartOptions::default()))
        .unwrap();
    let (smtp, smtps) = (handle.smtp_addr(), handle.smtps_addr());

    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        proptest::collection::vec(setting(), 0..4),
        proptest::collection::vec(range(), 0..4),
        session(),
    );
    let result = runner.run(&strategy, |(settings, ranges, s)| {
        let text = manifests(&settings, &ranges);
        let set = crds::manifest::load_sources(&[("case.yaml".to_string(), text)])
            .map_err(|e| TestCaseError::fail(format!("manifests: {e}")))?;
        let cfg = render_set(&set, &env)
            .map_err(|e| TestCaseError::fail(format!("render: {e}")))?
            .config;
        handle
            .reload(cfg.clone())
            .map_err(|e| TestCaseError::fail(format!("reload: {e}")))?;
        let (mail, rcpts) = rt.block_on(over_smtp(smtp, smtps, &connector, &s));
        let query = Query {
            client_ip: IpAddr::from([127, 0, 0, s.octet]),
            helo: Some(s.helo.to_string()),
            tls: s.tls,
            auth: s.user.map(|u| USERS[u].0.to_string()),
            from: s.from.to_string(),
            to: s.to.iter().map(|t| t.to_string()).collect(),
        };
        let e = explain(&cfg, &ManifestFacts::of(&set), &query);
        prop_assert_eq!(&e.mail_reply, &mail, "MAIL reply");
        let explained: Vec<String> = e
            .recipients
            .iter()
            .filter_map(|r| r.reply.clone())
            .collect();
        prop_assert_eq!(&explained, &rcpts, "RCPT replies");
        let relay_accepted = mail.starts_with('2') && rcpts.iter().all(|r| r.starts_with('2'));
        prop_assert_eq!(e.accepted, relay_accepted, "verdict");
        // Every setting said to accept is one the relay's decision agrees with.
        if e.settings.iter().any(|x| x.accepts) {
            prop_assert!(
                mail.starts_with('2'),
                "a setting accepts but MAIL got {}",
                mail
            );
        }
        Ok(())
    });
    rt.block_on(handle.shutdown());
    if let Err(e) = result {
        panic!("{e}");
    }
}
