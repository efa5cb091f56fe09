//! Must show — route TLS (SPEC §2.4, §3.5) against real Postfix servers: a self-signed
//! downstream certificate under `requireCaSigned` and a certificate for another name under
//! `validateHostname` both make the relay bounce the message with a DSN (status 5.7.5)
//! that arrives in the sender's mailbox on the Postfix client; with the checks relaxed the
//! same self-signed server receives the message; a certificate from the route's trusted CA
//! for the right name is delivered with every check on.

mod common;

use std::net::IpAddr;

use common::*;
use conformance::docker::{self, Scenario, host};
use conformance::manifests::{HostSpec, RouteHostsSpec, RouteMatch, RouteSpec};
use conformance::pki;

fn strict(name: &str, domain: &str, host: &str, ca: Option<&str>) -> RouteSpec {
    RouteSpec {
        name: name.into(),
        matcher: RouteMatch::Domains(vec![domain.into()]),
        hosts: RouteHostsSpec::Single(HostSpec {
            host: host.into(),
            port: 25,
            load_percent: 100,
        }),
        mx_lookup: false,
        require_tls: true,
        require_ca_signed: true,
        validate_hostname: true,
        trusted_ca: ca.map(str::to_string),
        implicit: false,
        auth: None,
        rate_limit: None,
    }
}

#[test]
fn unverifiable_downstream_certificates_bounce_with_5_7_5_and_relaxed_checks_deliver() {
    if docker::skip_without_docker() {
        return;
    }
    let mut scn = Scenario::new("routetls").unwrap();
    let ca = pki::Ca::new("Partner Test CA").unwrap();
    let selfsigned = pki::self_signed(&["selfsigned.partner.test"]).unwrap();
    let wrong_name = ca.issue(&["other.partner.test"]).unwrap();
    let right_name = ca.issue(&["good.partner.test"]).unwrap();

    let mut m = base_manifests();
    m.ranges = vec![range("office", &scn.subnet4(), true)];
    m.routes.push(strict(
        "selfsigned",
        "selfsigned.example",
        "selfsigned.partner.test",
        None,
    ));
    m.routes.push(strict(
        "wrongname",
        "wrongname.example",
        "wrongname.partner.test",
        Some("partner-ca"),
    ));
    m.routes.push(strict(
        "good",
        "good.example",
        "good.partner.test",
        Some("partner-ca"),
    ));
    m.routes.push(RouteSpec::relaxed(
        "relaxed",
        RouteMatch::Domains(vec!["relaxed.example".into()]),
        RouteHostsSpec::Single(HostSpec {
            host: "selfsigned.partner.test".into(),
            port: 25,
            load_percent: 100,
        }),
    ));
    scn.postfix_server("sink", host::SERVER, None).unwrap();
    let mut o = overrides(&scn);
    for (i, (role, name, cert)) in [
        ("selfsigned", "selfsigned.partner.test", &selfsigned),
        ("wrongname", "wrongname.partner.test", &wrong_name),
        ("good", "good.partner.test", &right_name),
    ]
    .into_iter()
    .enumerate()
    {
        let n = host::SERVER + 1 + i as u8;
        scn.postfix_server(role, n, Some(cert)).unwrap();
        o.push((name, IpAddr::V4(scn.ip4(n))));
    }
    scn.relay(
        &m,
        Some(&relay_cert()),
        &[("partner-ca", ca.cert_pem.as_str())],
        docker::quick_delivery(&o),
    )
    .unwrap();
    scn.postfix_client("client", host::CLIENT, &client_opts(&scn, "may"))
        .unwrap();
    let client = scn.get("client");
    for (rcpt, subject) in [
        ("a@selfsigned.example", "to-selfsigned"),
        ("b@wrongname.example", "to-wrongname"),
        ("c@good.example", "to-good"),
        ("d@relaxed.example", "to-relaxed"),
    ] {
        docker::sendmail(client, "sender@acme.example", &[rcpt], subject).unwrap();
    }

    delivered(&scn, "good", "to-good");
    delivered(&scn, "selfsigned", "to-relaxed");
    let mbox = bounced(client, "Final-Recipient: rfc822; a@selfsigned.example");
    let mbox = if mbox.contains("b@wrongname.example") {
        mbox
    } else {
        bounced(client, "Final-Recipient: rfc822; b@wrongname.example")
    };
    assert!(
        mbox.matches("Status: 5.7.5").count() >= 2,
        "both DSNs carry status 5.7.5:\n{mbox}"
    );
    assert_eq!(count_subject(&scn, "selfsigned", "to-selfsigned"), 0);
    assert_eq!(count_subject(&scn, "wrongname", "to-wrongname"), 0);
}
