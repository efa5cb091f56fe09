//! MX lookup against an in-process DNS server (hickory-server, in-memory zone on
//! 127.0.0.1, UDP and TCP): preference order, falling back to the next MX, and
//! `host_overrides` consulted before DNS. The MX hosts here are on loopback, which MX
//! delivery dials only because the tests allow it (`allowedInternalNetworks`).

mod delivery_common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use delivery_common::dns::{Rec, dns};
use delivery_common::*;
use hickory_server::Server;
use hickory_server::zone_handler::Catalog;
use relay::config::RouteMatcher;
use relay::delivery::mx::MxResolver;
use relay::delivery::testing::{SinkConfig, TestSink};

/// `dest.test.` with the given MX (preference, host) and address records.
async fn dns_server(
    mx: &[(u16, &str)],
    addresses: &[(&str, IpAddr)],
) -> (SocketAddr, Server<Catalog>) {
    let records: Vec<Rec<'_>> = mx
        .iter()
        .map(|(pref, host)| Rec::Mx("dest.test.", *pref, host))
        .chain(addresses.iter().map(|(host, ip)| Rec::Addr(host, *ip)))
        .collect();
    dns(&records).await
}

#[tokio::test]
async fn mx_hosts_come_back_in_preference_order() {
    let (ns, _server) = dns_server(
        &[
            (30, "mx3.dest.test."),
            (10, "mx1.dest.test."),
            (20, "mx2.dest.test."),
        ],
        &[],
    )
    .await;
    let mut cfg = delivery_config(&[]);
    cfg.nameservers = vec![ns];
    let resolver = MxResolver::new(&cfg).unwrap();
    let hosts = bounded(resolver.mx_hosts("dest.test")).await.unwrap();
    assert_eq!(hosts, ["mx1.dest.test", "mx2.dest.test", "mx3.dest.test"]);
}

#[tokio::test]
async fn delivery_falls_back_to_the_next_mx_when_the_first_fails() {
    let sink = TestSink::start(SinkConfig::default()).await.unwrap();
    // mx1 (preferred) points where nothing listens on the sink's port; mx2 is the sink.
    let (ns, _server) = dns_server(
        &[(10, "mx1.dest.test."), (20, "mx2.dest.test.")],
        &[
            ("mx1.dest.test.", IpAddr::V6(Ipv6Addr::LOCALHOST)),
            ("mx2.dest.test.", IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ],
    )
    .await;
    let mut r = route(
        "mx",
        RouteMatcher::Default,
        "dest.test",
        sink.port(),
        no_tls(),
    );
    r.mx_lookup = true;
    let mut cfg = delivery_config(&[]);
    cfg.nameservers = vec![ns];
    allow_loopback_mx(&mut cfg);
    let h = Harness::new(vec![r], cfg);
    h.send(
        "alice@acme.test",
        &["bob@dest.test"],
        &message("alice@acme.test", "bob@dest.test", "mx"),
    );
    let report = bounded(h.manager.run_due()).await;
    assert_eq!(report.delivered, 1);
    assert_eq!(sink.messages().len(), 1);
    // The host label is the route's configured host, not the MX host that answered:
    // labels stay bounded by the configuration.
    let metrics = h.metrics_text();
    let line = format!(
        "smtprelay_deliveries_total{{route=\"mx\",host=\"dest.test:{}\",result=\"delivered\"}} 1",
        sink.port()
    );
    assert!(metrics.contains(&line), "{metrics}");
}

#[tokio::test]
async fn host_overrides_are_consulted_before_dns() {
    let sink = TestSink::start(SinkConfig::default()).await.unwrap();
    let (ns, _server) = dns_server(
        &[(10, "mx1.dest.test.")],
        &[("mx1.dest.test.", IpAddr::V6(Ipv6Addr::LOCALHOST))],
    )
    .await;
    let mut r = route(
        "mx",
        RouteMatcher::Default,
        "dest.test",
        sink.port(),
        no_tls(),
    );
    r.mx_lookup = true;
    let mut cfg = delivery_config(&[("mx1.dest.test", IpAddr::V4(Ipv4Addr::LOCALHOST))]);
    cfg.nameservers = vec![ns];
    allow_loopback_mx(&mut cfg);
    let h = Harness::new(vec![r], cfg);
    h.send(
        "alice@acme.test",
        &["bob@dest.test"],
        &message("alice@acme.test", "bob@dest.test", "override"),
    );
    let report = bounded(h.manager.run_due()).await;
    assert_eq!(report.delivered, 1);
    assert_eq!(sink.messages().len(), 1);
}

#[tokio::test]
async fn a_domain_without_mx_records_is_its_own_mail_host() {
    // NOERROR without MX records (unlike NXDOMAIN, which bounces): the A record is used.
    let sink = TestSink::start(SinkConfig::default()).await.unwrap();
    let (ns, _server) = dns_server(&[], &[("dest.test.", IpAddr::V4(Ipv4Addr::LOCALHOST))]).await;
    let mut r = route(
        "mx",
        RouteMatcher::Default,
        "dest.test",
        sink.port(),
        no_tls(),
    );
    r.mx_lookup = true;
    let mut cfg = delivery_config(&[]);
    cfg.nameservers = vec![ns];
    allow_loopback_mx(&mut cfg);
    let h = Harness::new(vec![r], cfg);
    h.send(
        "alice@acme.test",
        &["bob@dest.test"],
        &message("alice@acme.test", "bob@dest.test", "implicit-mx"),
    );
    let report = bounded(h.manager.run_due()).await;
    assert_eq!(report.delivered, 1);
    assert_eq!(sink.messages().len(), 1);
}
