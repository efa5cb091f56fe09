//! Per-route TLS policy over real STARTTLS sessions on loopback (SPEC §3.5): each
//! combination of requireCaSigned × validateHostname against a CA-signed certificate for the
//! right name, a self-signed one and one for another name; requireTls with a server that
//! offers no STARTTLS; and `probe_route`.

mod delivery_common;

use std::net::{IpAddr, Ipv4Addr};

use delivery_common::*;
use relay::config::{RouteMatcher, RouteTlsConfig};
use relay::delivery::dsn::parse_dsn;
use relay::delivery::probe::probe_route;
use relay::delivery::testing::{SinkConfig, TestCa, TestCert, TestSink, self_signed};

const MX: &str = "mx.dest.test";
const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Delivered { tls: bool },
    Bounced { status: String, diagnostic: String },
}

struct Pki {
    _dir: tempfile::TempDir,
    ca_file: String,
    good: TestCert,
    wrong_name: TestCert,
    self_signed: TestCert,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Test Mail CA").unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    Pki {
        ca_file: ca_file.display().to_string(),
        good: ca.issue(&[MX]).unwrap(),
        wrong_name: ca.issue(&["other.example.test"]).unwrap(),
        self_signed: self_signed(&[MX]).unwrap(),
        _dir: dir,
    }
}

fn tls(require_tls: bool, ca: bool, hostname: bool, ca_file: &str) -> RouteTlsConfig {
    RouteTlsConfig {
        require_tls,
        require_ca_signed: ca,
        validate_hostname: hostname,
        extra_ca_file: Some(ca_file.to_string()),
        implicit: false,
    }
}

/// Sends one message over a route to `MX` whose server presents `cert` (no STARTTLS when
/// `None`) and reports what happened, reading the bounce DSN back when there is one.
async fn deliver(cert: Option<&TestCert>, policy: RouteTlsConfig) -> Outcome {
    let sink = TestSink::start(SinkConfig {
        tls: cert.map(|c| c.server_config().unwrap()),
        pipelining: true,
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let home = TestSink::start(SinkConfig::default()).await.unwrap();
    let routes = vec![
        route(
            "home",
            domains(&["acme.test"]),
            "127.0.0.1",
            home.port(),
            no_tls(),
        ),
        route("secure", RouteMatcher::Default, MX, sink.port(), policy),
    ];
    let h = Harness::new(routes, delivery_config(&[(MX, LOOPBACK)]));
    h.send(
        "alice@acme.test",
        &["bob@dest.test"],
        &message("alice@acme.test", "bob@dest.test", "tls"),
    );
    bounded(h.manager.run_due()).await;
    if let Some(m) = sink.messages().first() {
        return Outcome::Delivered { tls: m.tls };
    }
    bounded(h.manager.run_due()).await;
    let dsns = home.messages();
    assert_eq!(dsns.len(), 1, "neither delivered nor bounced");
    let dsn = parse_dsn(&dsns[0].data).unwrap();
    assert_eq!(dsn.recipients[0].final_recipient, "bob@dest.test");
    assert_eq!(dsn.recipients[0].action, "failed");
    Outcome::Bounced {
        status: dsn.recipients[0].status.clone(),
        diagnostic: dsn.recipients[0].diagnostic.clone(),
    }
}

fn assert_bounced(outcome: Outcome, status: &str, needle: &str) {
    match outcome {
        Outcome::Bounced {
            status: s,
            diagnostic,
        } => {
            assert_eq!(s, status, "{diagnostic}");
            assert!(
                diagnostic.contains(needle),
                "diagnostic {diagnostic:?} lacks {needle:?}"
            );
        }
        other => panic!("expected a bounce, got {other:?}"),
    }
}

#[tokio::test]
async fn ca_signed_certificate_for_the_right_name_passes_every_check() {
    let p = pki();
    for (ca, hostname) in [(true, true), (true, false), (false, true), (false, false)] {
        let got = deliver(Some(&p.good), tls(true, ca, hostname, &p.ca_file)).await;
        assert_eq!(
            got,
            Outcome::Delivered { tls: true },
            "ca={ca} hostname={hostname}"
        );
    }
}

#[tokio::test]
async fn self_signed_certificate_bounces_5_7_5_when_a_ca_signature_is_required() {
    let p = pki();
    for hostname in [true, false] {
        let got = deliver(Some(&p.self_signed), tls(true, true, hostname, &p.ca_file)).await;
        assert_bounced(got, "5.7.5", "invalid peer certificate: UnknownIssuer");
    }
    // Without the CA check the name alone decides, and it is right.
    let got = deliver(Some(&p.self_signed), tls(true, false, true, &p.ca_file)).await;
    assert_eq!(got, Outcome::Delivered { tls: true });
    let got = deliver(Some(&p.self_signed), tls(true, false, false, &p.ca_file)).await;
    assert_eq!(got, Outcome::Delivered { tls: true });
}

#[tokio::test]
async fn certificate_for_another_name_bounces_5_7_5_when_the_hostname_is_validated() {
    let p = pki();
    let got = deliver(Some(&p.wrong_name), tls(true, true, true, &p.ca_file)).await;
    assert_bounced(got, "5.7.5", "not valid for name");
    let got = deliver(Some(&p.wrong_name), tls(true, false, true, &p.ca_file)).await;
    assert_bounced(
        got,
        "5.7.5",
        "certificate not valid for name \"mx.dest.test\"; certificate is only valid for DnsName(\"other.example.test\")",
    );
    // Hostname check off: the CA signature is enough.
    let got = deliver(Some(&p.wrong_name), tls(true, true, false, &p.ca_file)).await;
    assert_eq!(got, Outcome::Delivered { tls: true });
}

#[tokio::test]
async fn the_route_ca_file_is_what_makes_a_private_ca_trusted() {
    let p = pki();
    let mut policy = tls(true, true, true, &p.ca_file);
    policy.extra_ca_file = None;
    let got = deliver(Some(&p.good), policy).await;
    assert_bounced(got, "5.7.5", "UnknownIssuer");
}

#[tokio::test]
async fn require_tls_without_starttls_bounces_and_opportunistic_sends_plaintext() {
    let p = pki();
    let got = deliver(None, tls(true, false, false, &p.ca_file)).await;
    assert_bounced(got, "5.7.10", "does not offer STARTTLS");
    let got = deliver(None, tls(false, true, true, &p.ca_file)).await;
    assert_eq!(got, Outcome::Delivered { tls: false });
    // Opportunistic still encrypts when it can.
    let got = deliver(Some(&p.good), tls(false, true, true, &p.ca_file)).await;
    assert_eq!(got, Outcome::Delivered { tls: true });
    // ... and still checks what it gets: a bad certificate is not a reason to go plaintext.
    let got = deliver(Some(&p.self_signed), tls(false, true, true, &p.ca_file)).await;
    assert_bounced(got, "5.7.5", "UnknownIssuer");
}

#[tokio::test]
async fn probe_route_reports_each_host_with_the_verifier_message() {
    let p = pki();
    let good = TestSink::start(SinkConfig {
        tls: Some(p.good.server_config().unwrap()),
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let bad = TestSink::start(SinkConfig {
        tls: Some(p.self_signed.server_config().unwrap()),
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let plain = TestSink::start(SinkConfig::default()).await.unwrap();
    let delivery = delivery_config(&[(MX, LOOPBACK)]);
    let policy = tls(true, true, true, &p.ca_file);

    let probes = bounded(probe_route(
        &route("r", RouteMatcher::Default, MX, good.port(), policy.clone()),
        &delivery,
    ))
    .await;
    assert_eq!(probes.len(), 1);
    assert_eq!((probes[0].host.as_str(), probes[0].port), (MX, good.port()));
    assert!(probes[0].verified, "{}", probes[0].message);
    assert_eq!(probes[0].message, "Verified");

    let probes = bounded(probe_route(
        &route("r", RouteMatcher::Default, MX, bad.port(), policy.clone()),
        &delivery,
    ))
    .await;
    assert!(!probes[0].verified);
    assert!(
        probes[0]
            .message
            .contains("invalid peer certificate: UnknownIssuer"),
        "{}",
        probes[0].message
    );

    let probes = bounded(probe_route(
        &route("r", RouteMatcher::Default, MX, plain.port(), policy),
        &delivery,
    ))
    .await;
    assert!(!probes[0].verified);
    assert!(
        probes[0].message.contains("does not offer STARTTLS"),
        "{}",
        probes[0].message
    );
    // The probe ends its sessions politely; it delivers nothing.
    assert!(good.messages().is_empty());
}

/// A private CA rotated in place (new content, same file, as a Secret update does) with a
/// server certificate from the new CA: the next delivery trusts the new roots. A cache of
/// TLS settings by the CA file's path kept the old roots and bounced the mail `5.7.5`.
#[tokio::test]
async fn a_private_ca_rotated_in_place_is_trusted_at_the_next_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.crt");
    let old_ca = TestCa::new("Old Mail CA").unwrap();
    std::fs::write(&ca_file, &old_ca.cert_pem).unwrap();
    let ca_path = ca_file.display().to_string();
    let serve = |cert: TestCert| async move {
        TestSink::start(SinkConfig {
            tls: Some(cert.server_config().unwrap()),
            pipelining: true,
            ..SinkConfig::default()
        })
        .await
        .unwrap()
    };
    let home = TestSink::start(SinkConfig::default()).await.unwrap();
    let routes = |port: u16| {
        vec![
            route(
                "home",
                domains(&["acme.test"]),
                "127.0.0.1",
                home.port(),
                no_tls(),
            ),
            route(
                "secure",
                RouteMatcher::Default,
                MX,
                port,
                tls(true, true, true, &ca_path),
            ),
        ]
    };
    let before = serve(old_ca.issue(&[MX]).unwrap()).await;
    let mut cfg = delivery_config(&[(MX, LOOPBACK)]);
    cfg.connection_idle_seconds = 0;
    let h = Harness::new(routes(before.port()), cfg);
    let mail = |subject: &str| message("alice@acme.test", "bob@dest.test", subject);
    h.send("alice@acme.test", &["bob@dest.test"], &mail("before"));
    bounded(h.manager.run_due()).await;
    assert_eq!(before.messages().len(), 1, "delivered under the old CA");

    // The Secret is rotated: a new CA in the same file, the server presents a
    // certificate of the new CA.
    let new_ca = TestCa::new("New Mail CA").unwrap();
    std::fs::write(&ca_file, &new_ca.cert_pem).unwrap();
    let after = serve(new_ca.issue(&[MX]).unwrap()).await;
    h.manager.set_routes(routes(after.port()));
    h.send("alice@acme.test", &["bob@dest.test"], &mail("after"));
    bounded(h.manager.run_due()).await;
    bounded(h.manager.run_due()).await;
    assert!(
        home.messages().is_empty(),
        "bounced: {:?}",
        home.messages()
            .first()
            .map(|m| String::from_utf8_lossy(&m.data).into_owned())
    );
    assert_eq!(after.messages().len(), 1, "delivered under the new CA");
}
