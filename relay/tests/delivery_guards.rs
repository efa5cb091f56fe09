//! What happens inside one delivery attempt (SPEC §3.5), as the sender sees it in the DSN:
//! permanent DNS answers bounce at once (NXDOMAIN `5.1.2`, null MX `5.1.10`); MX hosts in
//! internal networks are not dialled (`5.4.4`) while routes that name an internal host
//! still deliver; loops bounce `5.4.6` (too many `Received:` headers, an MX that is this
//! relay); a 5xx ends the recipient or the message without asking another host or marking
//! the host down; at most N MX hosts and M addresses are tried; a failed STARTTLS
//! handshake is retried once in plaintext; DSN lines stay within 998 octets.
//!
//! DNS answers come from an in-process hickory-server zone `test.` on 127.0.0.1.

mod delivery_common;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use delivery_common::dns::{Rec, dns};
use delivery_common::*;
use hickory_server::Server;
use hickory_server::zone_handler::Catalog;
use relay::config::{DeliveryConfig, RouteConfig, RouteHosts, RouteMatcher, WeightedHostConfig};
use relay::delivery::dsn::{ParsedRecipient, parse_dsn};
use relay::delivery::queue::MessageStore;
use relay::delivery::testing::{SinkConfig, TestSink};

fn config(ns: Option<SocketAddr>) -> DeliveryConfig {
    let mut cfg = delivery_config(&[]);
    cfg.connect_timeout_seconds = 5;
    if let Some(ns) = ns {
        cfg.nameservers = vec![ns];
    }
    cfg
}

/// The route DSNs to `@acme.test` senders take.
fn home_route(home: &TestSink) -> RouteConfig {
    route(
        "home",
        domains(&["acme.test"]),
        "127.0.0.1",
        home.port(),
        no_tls(),
    )
}

fn mx_route(name: &str, domain: &str, port: u16) -> RouteConfig {
    let mut r = route(name, domains(&[domain]), domain, port, no_tls());
    r.mx_lookup = true;
    r
}

fn pool_route(name: &str, primary: u16, secondary: u16) -> RouteConfig {
    let mut r = route(name, domains(&["dest.test"]), "unused", 25, no_tls());
    r.hosts = RouteHosts::Pool {
        primary: vec![WeightedHostConfig {
            host: "127.0.0.1".into(),
            port: primary,
            load_percent: 100,
        }],
        secondary: vec![WeightedHostConfig {
            host: "127.0.0.1".into(),
            port: secondary,
            load_percent: 100,
        }],
    };
    r
}

/// Runs the queue until the DSN reached `home`, and returns its recipient blocks.
async fn bounce_seen_by_sender(h: &Harness, home: &TestSink) -> Vec<ParsedRecipient> {
    bounded(h.manager.run_due()).await;
    let dsns = home.messages();
    assert_eq!(dsns.len(), 1, "one DSN reached the sender");
    assert_eq!(dsns[0].mail_from, "");
    assert_eq!(dsns[0].rcpt_to, ["alice@acme.test"]);
    parse_dsn(&dsns[0].data)
        .expect("a delivery-status report")
        .recipients
}

#[tokio::test]
async fn nxdomain_bounces_5_1_2_on_the_first_attempt() {
    let home = TestSink::start(SinkConfig::default()).await.unwrap();
    let (ns, _server) = dns(&[Rec::Mx("dest.test.", 10, "mx.dest.test.")]).await;
    let h = Harness::new(vec![home_route(&home)], config(Some(ns)));
    h.send(
        "alice@acme.test",
        &["bob@gone.test"],
        &message("alice@acme.test", "bob@gone.test", "nx"),
    );
    let first = bounded(h.manager.run_due()).await;
    assert_eq!(
        (first.bounced, first.deferred, first.dsns_queued),
        (1, 0, 1)
    );
    let dsn = bounce_seen_by_sender(&h, &home).await;
    assert_eq!(dsn[0].final_recipient, "bob@gone.test");
    assert_eq!(dsn[0].status, "5.1.2");
    assert!(
        dsn[0].diagnostic.contains("gone.test does not exist"),
        "{dsn:?}"
    );
    assert!(h.store.list().unwrap().is_empty(), "nothing left to retry");
}

#[tokio::test]
async fn null_mx_bounces_5_1_10_on_the_first_attempt() {
    let home = TestSink::start(SinkConfig::default()).await.unwrap();
    let (ns, _server) = dns(&[
        Rec::Mx("nomail.test.", 0, "."),
        Rec::Addr("nomail.test.", IpAddr::V4(Ipv4Addr::LOCALHOST)),
    ])
    .await;
    let h = Harness::new(vec![home_route(&home)], config(Some(ns)));
    h.send(
        "alice@acme.test",
        &["bob@nomail.test"],
        &message("alice@acme.test", "bob@nomail.test", "nullmx"),
    );
    let first = bounded(h.manager.run_due()).await;
    assert_eq!((first.bounced, first.deferred), (1, 0));
    let dsn = bounce_seen_by_sender(&h, &home).await;
    assert_eq!(dsn[0].status, "5.1.10");
    assert!(dsn[0].diagnostic.contains("null MX"), "{dsn:?}");
}

#[tokio::test]
async fn mx_hosts_on_internal_addresses_are_not_dialled_and_bounce_5_4_4() {
    let home = TestSink::start(SinkConfig::default()).await.unwrap();
    // An internal service that would answer with its banner.
    let internal = TestSink::start(SinkConfig {
        greeting: Some("220 secret-db.cluster.internal ESMTP internal-only".into()),
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let (ns, _server) = dns(&[
        Rec::Mx("internal.test.", 10, "a.internal.test."),
        Rec::Mx("internal.test.", 20, "b.internal.test."),
        Rec::Mx("internal.test.", 30, "c.internal.test."),
        Rec::Addr("a.internal.test.", IpAddr::V4(Ipv4Addr::LOCALHOST)),
        Rec::Addr("b.internal.test.", IpAddr::V4(Ipv4Addr::new(127, 9, 9, 9))),
        Rec::Addr("c.internal.test.", IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ])
    .await;
    let routes = vec![
        home_route(&home),
        mx_route("mx", "internal.test", internal.port()),
    ];
    let h = Harness::new(routes, config(Some(ns)));
    h.send(
        "alice@acme.test",
        &["bob@internal.test"],
        &message("alice@acme.test", "bob@internal.test", "ssrf"),
    );
    let first = bounded(h.manager.run_due()).await;
    assert_eq!((first.bounced, first.deferred), (1, 0));
    assert_eq!(
        internal.connections(),
        0,
        "the internal host was never dialled"
    );
    let dsn = bounce_seen_by_sender(&h, &home).await;
    assert_eq!(dsn[0].status, "5.4.4");
    assert!(
        dsn[0]
            .diagnostic
            .contains("networks this relay does not deliver to"),
        "{dsn:?}"
    );
    let whole = String::from_utf8_lossy(&home.messages()[0].data).into_owned();
    assert!(!whole.contains("secret-db"), "no internal banner: {whole}");
    assert!(!whole.contains("127.9.9.9"), "no internal address: {whole}");
}

#[tokio::test]
async fn an_address_literal_domain_is_its_own_host_and_guarded() {
    // Ingress refuses `u@[10.0.0.5]` (501 5.1.3); a spooled one (an older relay, or a
    // bounce back to a sender who used a literal) still never reaches an internal host.
    let home = TestSink::start(SinkConfig::default()).await.unwrap();
    let h = Harness::new(vec![home_route(&home)], config(None));
    h.send(
        "alice@acme.test",
        &["u@[127.0.0.1]", "v@[IPv6:::1]"],
        &message("alice@acme.test", "u@[127.0.0.1]", "literal"),
    );
    let first = bounded(h.manager.run_due()).await;
    assert_eq!((first.bounced, first.deferred), (2, 0));
    let dsn = bounce_seen_by_sender(&h, &home).await;
    assert_eq!(dsn.len(), 2);
    assert!(dsn.iter().all(|r| r.status == "5.4.4"), "{dsn:?}");
}

#[tokio::test]
async fn a_route_that_names_an_internal_host_still_delivers() {
    let internal = TestSink::start(SinkConfig::default()).await.unwrap();
    // By address, and by a host name that resolves to loopback.
    let routes = vec![
        route(
            "by-address",
            domains(&["a.test"]),
            "127.0.0.1",
            internal.port(),
            no_tls(),
        ),
        route(
            "by-name",
            domains(&["b.test"]),
            "smarthost.internal",
            internal.port(),
            no_tls(),
        ),
    ];
    let cfg = delivery_config(&[("smarthost.internal", IpAddr::V4(Ipv4Addr::LOCALHOST))]);
    let h = Harness::new(routes, cfg);
    h.send(
        "alice@acme.test",
        &["x@a.test", "y@b.test"],
        &message("alice@acme.test", "x@a.test", "internal-route"),
    );
    let report = bounded(h.manager.run_due()).await;
    assert_eq!((report.delivered, report.bounced), (2, 0));
    assert_eq!(internal.messages().len(), 2);
}

#[tokio::test]
async fn more_than_fifty_received_headers_bounce_5_4_6_without_delivery() {
    let home = TestSink::start(SinkConfig::default()).await.unwrap();
    let dest = TestSink::start(SinkConfig::default()).await.unwrap();
    let routes = vec![
        home_route(&home),
        route(
            "out",
            RouteMatcher::Default,
            "127.0.0.1",
            dest.port(),
            no_tls(),
        ),
    ];
    let h = Harness::new(routes, config(None));
    let with_hops = |n: usize, subject: &str| {
        let mut m = String::new();
        for i in 0..n {
            m.push_str(&format!(
                "Received: from hop{i}.example by hop{}.example; Mon, 30 Nov 2026 10:00:00 +0000\r\n",
                i + 1
            ));
        }
        m.push_str(
            &String::from_utf8(message("alice@acme.test", "bob@dest.test", subject)).unwrap(),
        );
        m.into_bytes()
    };
    h.send(
        "alice@acme.test",
        &["bob@dest.test"],
        &with_hops(50, "fifty"),
    );
    h.send(
        "alice@acme.test",
        &["bob@dest.test"],
        &with_hops(51, "fifty-one"),
    );
    let first = bounded(h.manager.run_due()).await;
    assert_eq!((first.delivered, first.bounced), (1, 1));
    let got = dest.messages();
    assert_eq!(got.len(), 1);
    assert!(String::from_utf8_lossy(&got[0].data).contains("Subject: fifty\r\n"));
    let dsn = bounce_seen_by_sender(&h, &home).await;
    assert_eq!(dsn[0].status, "5.4.6");
    assert!(
        dsn[0].diagnostic.contains("51 Received: headers"),
        "{dsn:?}"
    );
}

#[tokio::test]
async fn an_mx_that_is_this_relay_bounces_5_4_6() {
    let home = TestSink::start(SinkConfig::default()).await.unwrap();
    let (ns, _server) = dns(&[
        Rec::Mx("loop.test.", 10, "relay.acme.test."),
        Rec::Addr("relay.acme.test.", IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
    ])
    .await;
    let h = Harness::new(vec![home_route(&home)], config(Some(ns)));
    h.send(
        "alice@acme.test",
        &["bob@loop.test"],
        &message("alice@acme.test", "bob@loop.test", "loop"),
    );
    let first = bounded(h.manager.run_due()).await;
    assert_eq!((first.bounced, first.deferred), (1, 0));
    let dsn = bounce_seen_by_sender(&h, &home).await;
    assert_eq!(dsn[0].status, "5.4.6");
    assert!(
        dsn[0].diagnostic.contains("loops back to myself"),
        "{dsn:?}"
    );
}

#[tokio::test]
async fn this_relay_as_a_backup_mx_leaves_the_better_mx_in_use() {
    let sink = TestSink::start(SinkConfig::default()).await.unwrap();
    let (ns, _server) = dns(&[
        Rec::Mx("backup.test.", 10, "mx.backup.test."),
        Rec::Mx("backup.test.", 20, "relay.acme.test."),
        Rec::Addr("mx.backup.test.", IpAddr::V4(Ipv4Addr::LOCALHOST)),
    ])
    .await;
    let mut cfg = config(Some(ns));
    allow_loopback_mx(&mut cfg);
    let h = Harness::new(vec![mx_route("mx", "backup.test", sink.port())], cfg);
    h.send(
        "alice@acme.test",
        &["bob@backup.test"],
        &message("alice@acme.test", "bob@backup.test", "backup"),
    );
    let report = bounded(h.manager.run_due()).await;
    assert_eq!((report.delivered, report.bounced), (1, 0));
    assert_eq!(sink.messages().len(), 1);
}

#[tokio::test]
async fn a_5xx_for_one_recipient_ends_it_there_and_keeps_the_host_in_rotation() {
    let home = TestSink::start(SinkConfig::default()).await.unwrap();
    let primary = TestSink::start(SinkConfig {
        rcpt_replies: HashMap::from([(
            "nobody@dest.test".to_string(),
            "550 5.1.1 <nobody@dest.test>: no such user".to_string(),
        )]),
        pipelining: true,
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let secondary = TestSink::start(SinkConfig::default()).await.unwrap();
    let routes = vec![
        home_route(&home),
        pool_route("pool", primary.port(), secondary.port()),
    ];
    let h = Harness::new(routes, config(None));
    h.send(
        "alice@acme.test",
        &["nobody@dest.test", "bob@dest.test"],
        &message("alice@acme.test", "bob@dest.test", "one"),
    );
    let first = bounded(h.manager.run_due()).await;
    assert_eq!((first.delivered, first.bounced), (1, 1));
    assert_eq!(primary.messages()[0].rcpt_to, ["bob@dest.test"]);
    assert_eq!(secondary.connections(), 0, "the secondary was never asked");
    let dsn = bounce_seen_by_sender(&h, &home).await;
    assert_eq!(dsn.len(), 1);
    assert_eq!(dsn[0].final_recipient, "nobody@dest.test");
    assert_eq!(dsn[0].status, "5.1.1");

    // The primary was not marked down: the next message goes to it again.
    h.send(
        "alice@acme.test",
        &["nobody@dest.test"],
        &message("alice@acme.test", "nobody@dest.test", "two"),
    );
    let again = bounded(h.manager.run_due()).await;
    assert_eq!(again.bounced, 1);
    h.send(
        "alice@acme.test",
        &["carol@dest.test"],
        &message("alice@acme.test", "carol@dest.test", "three"),
    );
    bounded(h.manager.run_due()).await;
    assert_eq!(secondary.connections(), 0);
    assert_eq!(primary.messages().len(), 2);
}

#[tokio::test]
async fn a_5xx_to_mail_ends_the_message_without_another_host() {
    let home = TestSink::start(SinkConfig::default()).await.unwrap();
    let primary = TestSink::start(SinkConfig {
        mail_reply: Some("550 5.7.1 sender refused by policy".into()),
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let secondary = TestSink::start(SinkConfig::default()).await.unwrap();
    let routes = vec![
        home_route(&home),
        pool_route("pool", primary.port(), secondary.port()),
    ];
    let h = Harness::new(routes, config(None));
    for subject in ["one", "two"] {
        h.send(
            "alice@acme.test",
            &["bob@dest.test"],
            &message("alice@acme.test", "bob@dest.test", subject),
        );
        let report = bounded(h.manager.run_due()).await;
        assert_eq!(report.bounced, 1, "{subject}");
    }
    assert_eq!(secondary.connections(), 0, "the secondary was never asked");
    assert_eq!(
        primary.connections(),
        2,
        "the primary stayed in rotation after its 5xx"
    );
    let dsns = home.messages();
    assert!(!dsns.is_empty());
    let dsn = parse_dsn(&dsns[0].data).unwrap();
    assert_eq!(dsn.recipients[0].status, "5.7.1");
}

#[tokio::test]
async fn a_5xx_at_the_final_dot_bounces_and_no_second_host_is_contacted() {
    let home = TestSink::start(SinkConfig::default()).await.unwrap();
    let primary = TestSink::start(SinkConfig {
        data_reply: Some("554 5.6.0 content rejected".into()),
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let secondary = TestSink::start(SinkConfig::default()).await.unwrap();
    let routes = vec![
        home_route(&home),
        pool_route("pool", primary.port(), secondary.port()),
    ];
    let h = Harness::new(routes, config(None));
    h.send(
        "alice@acme.test",
        &["bob@dest.test", "carol@dest.test"],
        &message("alice@acme.test", "bob@dest.test", "dot"),
    );
    let first = bounded(h.manager.run_due()).await;
    assert_eq!((first.delivered, first.bounced, first.deferred), (0, 2, 0));
    assert_eq!(primary.messages().len(), 1, "the primary saw the message");
    assert_eq!(secondary.connections(), 0, "no second host was contacted");
    let dsn = bounce_seen_by_sender(&h, &home).await;
    assert_eq!(dsn.len(), 2);
    assert!(dsn.iter().all(|r| r.status == "5.6.0"), "{dsn:?}");
    assert!(dsn[0].diagnostic.contains("554 5.6.0 content rejected"));
}

/// A zone of 50 MX hosts of `dest.test`, every one at 127.0.0.1.
async fn fifty_mx() -> (SocketAddr, Server<Catalog>) {
    let names: Vec<String> = (0..50).map(|i| format!("mx{i:02}.dest.test.")).collect();
    let mut records = Vec::new();
    for (i, n) in names.iter().enumerate() {
        records.push(Rec::Mx("dest.test.", 10 + i as u16, n));
        records.push(Rec::Addr(n, IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }
    dns(&records).await
}

/// Delivers one message to `dest.test` by MX over 50 busy (421) MX hosts and returns how
/// many sessions were opened.
async fn sessions_tried(max_mx_hosts: u32, max_addresses: u32) -> usize {
    let busy = TestSink::start(SinkConfig {
        greeting: Some("421 4.3.2 busy, try later".into()),
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let (ns, _server) = fifty_mx().await;
    let mut cfg = config(Some(ns));
    allow_loopback_mx(&mut cfg);
    cfg.max_mx_hosts = max_mx_hosts;
    cfg.max_addresses = max_addresses;
    let h = Harness::new(vec![mx_route("mx", "dest.test", busy.port())], cfg);
    h.send(
        "alice@acme.test",
        &["bob@dest.test"],
        &message("alice@acme.test", "bob@dest.test", "fifty"),
    );
    let report = bounded(h.manager.run_due()).await;
    assert_eq!(report.deferred, 1, "the attempt ended, to be retried");
    busy.connections()
}

#[tokio::test]
async fn fifty_mx_hosts_only_the_first_five_are_tried() {
    assert_eq!(
        sessions_tried(5, 5).await,
        5,
        "defaults: 5 MX hosts, 5 addresses"
    );
    assert_eq!(sessions_tried(3, 100).await, 3, "the MX host limit");
    assert_eq!(sessions_tried(100, 4).await, 4, "the address limit");
}

#[tokio::test]
async fn a_broken_starttls_handshake_is_retried_once_in_plaintext_and_counted() {
    let sink = TestSink::start(SinkConfig {
        broken_starttls: true,
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let routes = vec![route(
        "opportunistic",
        RouteMatcher::Default,
        "127.0.0.1",
        sink.port(),
        no_tls(),
    )];
    let h = Harness::new(routes, config(None));
    h.send(
        "alice@acme.test",
        &["bob@dest.test"],
        &message("alice@acme.test", "bob@dest.test", "fallback"),
    );
    let report = bounded(h.manager.run_due()).await;
    assert_eq!(report.delivered, 1);
    let got = sink.messages();
    assert_eq!(got.len(), 1);
    assert!(!got[0].tls, "delivered in plaintext");
    assert_eq!(sink.connections(), 2, "one TLS try, one plaintext retry");
    let metrics = h.metrics_text();
    assert!(
        metrics.contains("smtprelay_tls_plaintext_fallbacks_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_route_that_requires_tls_never_falls_back_to_plaintext() {
    let sink = TestSink::start(SinkConfig {
        broken_starttls: true,
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let mut tls = no_tls();
    tls.require_tls = true;
    let routes = vec![route(
        "required",
        RouteMatcher::Default,
        "127.0.0.1",
        sink.port(),
        tls,
    )];
    let h = Harness::new(routes, config(None));
    h.send(
        "alice@acme.test",
        &["bob@dest.test"],
        &message("alice@acme.test", "bob@dest.test", "no-fallback"),
    );
    let report = bounded(h.manager.run_due()).await;
    assert_eq!((report.delivered, report.deferred), (0, 1));
    assert!(sink.messages().is_empty());
    assert_eq!(sink.connections(), 1);
    let metrics = h.metrics_text();
    assert!(
        metrics.contains("smtprelay_tls_plaintext_fallbacks_total 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_dsn_with_a_5000_byte_diagnostic_keeps_every_line_within_998_octets() {
    let home = TestSink::start(SinkConfig::default()).await.unwrap();
    let long_word = "x".repeat(5000);
    let dest = TestSink::start(SinkConfig {
        rcpt_replies: HashMap::from([(
            "nobody@dest.test".to_string(),
            format!("550 5.1.1 {long_word}"),
        )]),
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let routes = vec![
        home_route(&home),
        route(
            "out",
            domains(&["dest.test"]),
            "127.0.0.1",
            dest.port(),
            no_tls(),
        ),
    ];
    let h = Harness::new(routes, config(None));
    h.send(
        "alice@acme.test",
        &["nobody@dest.test"],
        &message("alice@acme.test", "nobody@dest.test", "long"),
    );
    bounded(h.manager.run_due()).await;
    let dsn = bounce_seen_by_sender(&h, &home).await;
    assert_eq!(dsn[0].status, "5.1.1");
    assert!(dsn[0].diagnostic.contains("550 5.1.1 xxx"), "{dsn:?}");
    assert!(dsn[0].diagnostic.len() < 1000, "the diagnostic is bounded");
    let data = &home.messages()[0].data;
    for line in data.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(
            line.len() <= 998,
            "a DSN line of {} octets: {}",
            line.len(),
            String::from_utf8_lossy(&line[..80])
        );
    }
}
