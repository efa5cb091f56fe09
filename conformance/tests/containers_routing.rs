//! Must show — routing (SPEC §2.4, §3.5) to real Postfix servers: a single-host route, two
//! primaries sharing load 50/50 (each share within a binomial bound), the secondary when
//! both primaries are stopped, and MX lookup through the scenario's DNS server.

mod common;

use std::net::IpAddr;

use common::*;
use conformance::docker::{self, Scenario, host};
use conformance::manifests::{HostSpec, RouteHostsSpec, RouteMatch, RouteSpec};

fn weighted(host: &str, load_percent: u8) -> HostSpec {
    HostSpec {
        host: host.into(),
        port: 25,
        load_percent,
    }
}

#[test]
fn single_host_route_takes_its_domains_and_the_default_route_the_rest() {
    if docker::skip_without_docker() {
        return;
    }
    let mut scn = Scenario::new("single").unwrap();
    let mut m = base_manifests();
    m.ranges = vec![range("office", &scn.subnet4(), true)];
    m.routes.push(RouteSpec::relaxed(
        "partner",
        RouteMatch::Domains(vec!["partner.example".into(), "*.partner.example".into()]),
        RouteHostsSpec::Single(weighted("hub.partner.test", 100)),
    ));
    scn.postfix_server("sink", host::SERVER, None).unwrap();
    scn.postfix_server("hub", host::SERVER + 1, None).unwrap();
    let mut o = overrides(&scn);
    o.push(("hub.partner.test", IpAddr::V4(scn.ip4(host::SERVER + 1))));
    scn.relay(&m, Some(&relay_cert()), &[], docker::quick_delivery(&o))
        .unwrap();
    scn.postfix_client("client", host::CLIENT, &client_opts(&scn, "may"))
        .unwrap();
    let client = scn.get("client");
    docker::sendmail(
        client,
        "sender@acme.example",
        &["a@eu.partner.example"],
        "to-partner",
    )
    .unwrap();
    docker::sendmail(
        client,
        "sender@acme.example",
        &["b@example.net"],
        "to-default",
    )
    .unwrap();
    let msg = delivered(&scn, "hub", "to-partner");
    assert_eq!(
        docker::header(&msg, "X-Original-To"),
        Some("a@eu.partner.example")
    );
    delivered(&scn, "sink", "to-default");
    assert_eq!(count_subject(&scn, "sink", "to-partner"), 0);
    assert_eq!(count_subject(&scn, "hub", "to-default"), 0);
}

#[test]
fn two_primaries_share_load_and_the_secondary_takes_over_when_both_stop() {
    if docker::skip_without_docker() {
        return;
    }
    const N: usize = 40;
    let mut scn = Scenario::new("pool").unwrap();
    let mut m = base_manifests();
    m.ranges = vec![range("office", &scn.subnet4(), true)];
    m.routes.push(RouteSpec::relaxed(
        "partner",
        RouteMatch::Domains(vec!["partner.example".into()]),
        RouteHostsSpec::Pool {
            primary: vec![
                weighted("mx1.partner.test", 50),
                weighted("mx2.partner.test", 50),
            ],
            secondary: vec![weighted("backup.partner.test", 100)],
        },
    ));
    scn.postfix_server("sink", host::SERVER, None).unwrap();
    let mut o = overrides(&scn);
    for (i, (role, name)) in [
        ("mx1", "mx1.partner.test"),
        ("mx2", "mx2.partner.test"),
        ("backup", "backup.partner.test"),
    ]
    .into_iter()
    .enumerate()
    {
        let n = host::SERVER + 1 + i as u8;
        scn.postfix_server(role, n, None).unwrap();
        o.push((name, IpAddr::V4(scn.ip4(n))));
    }
    scn.relay(&m, Some(&relay_cert()), &[], docker::quick_delivery(&o))
        .unwrap();
    scn.postfix_client("client", host::CLIENT, &client_opts(&scn, "may"))
        .unwrap();
    let client = scn.get("client");
    for i in 0..N {
        docker::sendmail(
            client,
            "sender@acme.example",
            &[&format!("u{i}@partner.example")],
            "share",
        )
        .unwrap();
    }
    let counts = docker::poll(OUTCOME, || {
        let c = (
            count_subject(&scn, "mx1", "share"),
            count_subject(&scn, "mx2", "share"),
        );
        (c.0 + c.1 == N).then_some(c)
    })
    .unwrap_or_else(|| {
        panic!(
            "not all {N} delivered to the primaries; relay log:\n{}",
            scn.get("relay").logs()
        )
    });
    // Binomial(40, 0.5): P(X < 8) + P(X > 32) is below 3e-5.
    assert!(
        (8..=32).contains(&counts.0),
        "50/50 split out of bounds: mx1={} mx2={}",
        counts.0,
        counts.1
    );
    assert_eq!(count_subject(&scn, "backup", "share"), 0);

    scn.get("mx1").stop().unwrap();
    scn.get("mx2").stop().unwrap();
    docker::sendmail(
        client,
        "sender@acme.example",
        &["late@partner.example"],
        "failover",
    )
    .unwrap();
    delivered(&scn, "backup", "failover");
}

#[test]
fn mx_lookup_route_delivers_to_the_mx_host_the_dns_server_names() {
    if docker::skip_without_docker() {
        return;
    }
    let mut scn = Scenario::new("mx").unwrap();
    let mx_host = host::SERVER + 1;
    let mut m = base_manifests();
    m.ranges = vec![range("office", &scn.subnet4(), true)];
    let mut route = RouteSpec::relaxed(
        "partner-mx",
        RouteMatch::Domains(vec!["partner.example".into()]),
        RouteHostsSpec::Single(weighted("partner.example", 25)),
    );
    route.mx_lookup = true;
    m.routes.push(route);
    let records = format!(
        "mx-host=partner.example,mail.partner.example,10\nhost-record=mail.partner.example,{}\n",
        scn.ip4(mx_host)
    );
    let dns = scn.dns(&records).unwrap();
    scn.postfix_server("sink", host::SERVER, None).unwrap();
    scn.postfix_server("mail", mx_host, None).unwrap();
    let mut delivery = docker::quick_delivery(&overrides(&scn));
    delivery.nameservers = vec![dns];
    // The scenario network is private (10.x): MX delivery may dial it only when allowed.
    delivery.allowed_internal_networks = vec![scn.subnet4().parse().unwrap()];
    scn.relay(&m, Some(&relay_cert()), &[], delivery).unwrap();
    scn.postfix_client("client", host::CLIENT, &client_opts(&scn, "may"))
        .unwrap();
    docker::sendmail(
        scn.get("client"),
        "sender@acme.example",
        &["x@partner.example"],
        "via-mx",
    )
    .unwrap();
    delivered(&scn, "mail", "via-mx");
    assert_eq!(count_subject(&scn, "sink", "via-mx"), 0);
}
