//! Shared scenario pieces of the container tests: the base organization, its relay and
//! the waits every scenario needs. Each test file uses part of it.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use conformance::docker::{self, ClientOptions, Container, RelayFiles, Scenario, host};
use conformance::manifests::*;
use conformance::pki::{self, Pem};

/// How long any one expected outcome may take in a container scenario.
pub const OUTCOME: Duration = Duration::from_secs(60);

/// Host name of the default downstream server.
pub const SINK: &str = "sink.partner.test";
/// Host name under which the relay reaches the client's own Postfix (bounces for
/// acme.example go back there, into /var/mail/sender).
pub const CLIENT_MX: &str = "client.acme.test";

/// The organization every scenario starts from: acme.example, Paid, one setting
/// "clients" (OrganizationDomains) whose ranges carry the label `clients`, a route for
/// acme.example back to the first client, and a default route to the sink. The caller adds
/// ranges.
pub fn base_manifests() -> Manifests {
    Manifests {
        org: OrgSpec {
            domains: vec!["acme.example".into()],
            users: vec!["alice@acme.example".into(), "app@acme.example".into()],
            tls: true,
            auth: true,
            licenses: 10,
            paid: true,
            limits: LimitOverrides::default(),
            proxy_protocol: None,
            dkim: vec![],
            content_filters: vec![],
            archive: None,
        },
        settings: vec![SettingSpec {
            name: "clients".into(),
            senders: Senders::OrganizationDomains,
            ip_ranges: Some(Some("clients".into())),
            require_auth: false,
            require_tls: false,
        }],
        ranges: vec![],
        routes: vec![
            RouteSpec::relaxed(
                "acme-mailboxes",
                RouteMatch::Domains(vec!["acme.example".into()]),
                RouteHostsSpec::Single(HostSpec {
                    host: CLIENT_MX.into(),
                    port: 25,
                    load_percent: 100,
                }),
            ),
            RouteSpec::relaxed(
                "default",
                RouteMatch::Default,
                RouteHostsSpec::Single(HostSpec {
                    host: SINK.into(),
                    port: 25,
                    load_percent: 100,
                }),
            ),
        ],
    }
}

/// A range labelled `clients`.
pub fn range(name: &str, cidr: &str, enabled: bool) -> RangeSpec {
    RangeSpec {
        name: name.into(),
        cidr: cidr.into(),
        enabled,
        label: "clients".into(),
    }
}

/// The relay's own certificate.
pub fn relay_cert() -> Pem {
    pki::self_signed(&["relay.acme.example"]).unwrap()
}

/// Host overrides for the sink (host SERVER) and the first client (host CLIENT).
pub fn overrides(scn: &Scenario) -> Vec<(&'static str, IpAddr)> {
    vec![
        (SINK, IpAddr::V4(scn.ip4(host::SERVER))),
        (CLIENT_MX, IpAddr::V4(scn.ip4(host::CLIENT))),
    ]
}

/// Starts the sink server and the relay for `m`.
pub fn start_relay_and_sink(scn: &mut Scenario, m: &Manifests) -> RelayFiles {
    scn.postfix_server("sink", host::SERVER, None).unwrap();
    let cert = relay_cert();
    let delivery = docker::quick_delivery(&overrides(scn));
    scn.relay(m, Some(&cert), &[], delivery).unwrap()
}

/// Options of a Postfix client relaying through the relay's port 2525.
pub fn client_opts(scn: &Scenario, tls_level: &'static str) -> ClientOptions {
    ClientOptions {
        relay: IpAddr::V4(scn.ip4(host::RELAY)),
        port: 2525,
        tls_level,
        sasl: None,
        hostname: "client.acme.example".into(),
    }
}

/// Waits until the sink holds a message whose Subject is `subject`, and returns it.
pub fn delivered(scn: &Scenario, sink: &str, subject: &str) -> String {
    let server = scn.get(sink);
    docker::poll(OUTCOME, || {
        docker::maildir(server)
            .into_iter()
            .find(|m| docker::header(m, "Subject") == Some(subject))
    })
    .unwrap_or_else(|| {
        panic!(
            "{subject} never reached {sink}; relay log:\n{}",
            scn.get("relay").logs()
        )
    })
}

/// Waits until the client's sender mailbox holds a bounce containing `needle`.
pub fn bounced(client: &Container, needle: &str) -> String {
    docker::poll(OUTCOME, || {
        // Postfix folds long lines of its bounce text; compare with whitespace collapsed.
        let mbox = squash(&docker::mailbox(client));
        mbox.contains(&squash(needle)).then_some(mbox)
    })
    .unwrap_or_else(|| {
        panic!(
            "no bounce containing {needle:?} for {}; mailbox:\n{}\nclient log:\n{}",
            client.name,
            docker::mailbox(client),
            client.logs()
        )
    })
}

/// Messages at `sink` with the given Subject.
pub fn count_subject(scn: &Scenario, sink: &str, subject: &str) -> usize {
    docker::maildir(scn.get(sink))
        .iter()
        .filter(|m| docker::header(m, "Subject") == Some(subject))
        .count()
}

/// `text` with every run of whitespace (line folds included) replaced by one space.
pub fn squash(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A relay whose spool is the named volume `spool`, with `n` messages (Subjects
/// `<prefix>-0`, …, Message-IDs `<<prefix>-i@conformance.test>`) accepted from the Postfix
/// client while the sink is stopped, so they all wait on that volume. The relay runs as
/// `relay` on [`host::RELAY`]; the sink is left stopped. Returns the relay's certificate
/// and delivery settings, to start the next relay with.
pub fn relay_with_deferred_mail(
    scn: &mut Scenario,
    m: &Manifests,
    spool: &str,
    n: usize,
    prefix: &str,
) -> (Pem, relay::config::DeliveryConfig) {
    scn.postfix_server("sink", host::SERVER, None).unwrap();
    let cert = relay_cert();
    let delivery = docker::quick_delivery(&overrides(scn));
    scn.relay_on(
        "relay",
        host::RELAY,
        m,
        Some(&cert),
        &[],
        delivery.clone(),
        Some(spool),
    )
    .unwrap();
    scn.postfix_client("client", host::CLIENT, &client_opts(scn, "may"))
        .unwrap();
    scn.get("sink").stop().unwrap();
    let client = scn.get("client");
    for i in 0..n {
        docker::sendmail(
            client,
            "sender@acme.example",
            &[&format!("u{i}@example.net")],
            &format!("{prefix}-{i}"),
        )
        .unwrap();
    }
    // The relay has accepted all of them once Postfix's queue is empty and its log says sent.
    let accepted = docker::poll(OUTCOME, || {
        let sent = client.logs().matches("status=sent").count();
        (sent >= n && docker::queue(client).is_empty()).then_some(())
    });
    assert!(
        accepted.is_some(),
        "relay did not accept:\n{}",
        client.logs()
    );
    let admin = SocketAddr::new(scn.ip4(host::RELAY).into(), 9090);
    let depth = docker::http_get(admin, "/metrics")
        .ok()
        .and_then(|t| docker::metric(&t, "spool_depth"));
    assert_eq!(depth, Some(n as f64), "all {n} messages wait in the spool");
    (cert, delivery)
}
