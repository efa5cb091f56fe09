//! Must show — drain (SPEC §3.4, §3.9): a relay that is scaled away with mail deferred on
//! its spool loses nothing. Relay A accepts mail while the downstream server is down and
//! stops; `relay --drain` runs on A's spool volume and hands every message over to relay
//! B's admin endpoint; once the server is back, B delivers every message exactly once
//! (counted, and by Message-ID), and A's spool is empty.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use common::*;
use conformance::docker::{self, Scenario};

#[test]
fn a_drained_spool_is_delivered_by_the_other_relay_exactly_once() {
    if docker::skip_without_docker() {
        return;
    }
    const N: usize = 8;
    const RELAY_B: u8 = 12;
    const DRAIN: u8 = 13;
    let mut scn = Scenario::new("drain").unwrap();
    let mut m = base_manifests();
    m.ranges = vec![range("office", &scn.subnet4(), true)];
    let spool_a = scn.volume("spool-a").unwrap();
    let (cert, delivery) = relay_with_deferred_mail(&mut scn, &m, &spool_a, N, "drained");

    // A is scaled away (graceful stop); its spool volume stays. B runs; the server is back.
    scn.get("relay").stop().unwrap();
    scn.remove("relay");
    scn.get("sink").start().unwrap();
    scn.relay_on(
        "relay-b",
        RELAY_B,
        &m,
        Some(&cert),
        &[],
        delivery.clone(),
        None,
    )
    .unwrap();
    let admin_b = SocketAddr::new(scn.ip4(RELAY_B).into(), 9090);
    let log = scn
        .drain("drain", DRAIN, &m, delivery, &spool_a, &[admin_b])
        .unwrap();
    assert!(
        log.contains(&format!("drained handed_over={N} ")),
        "every message is handed over:\n{log}"
    );

    let all = docker::poll(OUTCOME, || {
        let n = (0..N)
            .filter(|i| count_subject(&scn, "sink", &format!("drained-{i}")) >= 1)
            .count();
        (n == N).then_some(())
    });
    assert!(
        all.is_some(),
        "not every drained message arrived; relay B log:\n{}",
        scn.get("relay-b").logs()
    );
    let empty = docker::poll(OUTCOME, || {
        docker::http_get(admin_b, "/metrics")
            .ok()
            .and_then(|t| docker::metric(&t, "spool_depth"))
            .filter(|d| *d == 0.0)
    });
    assert!(empty.is_some(), "relay B still holds mail");
    // B's spool is empty, so nothing more can arrive: count what did.
    let messages = docker::maildir(scn.get("sink"));
    let ids: Vec<&str> = messages
        .iter()
        .filter(|m| docker::header(m, "Subject").is_some_and(|s| s.starts_with("drained-")))
        .filter_map(|m| docker::header(m, "Message-ID"))
        .collect();
    assert_eq!(ids.len(), N, "each message exactly once: {ids:?}");
    let expected: BTreeSet<String> = (0..N)
        .map(|i| format!("<drained-{i}@conformance.test>"))
        .collect();
    assert_eq!(
        ids.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>(),
        expected
    );
    // The drained spool is empty: a drain on it again hands nothing over.
    let again = scn
        .drain(
            "drain-again",
            DRAIN + 1,
            &m,
            docker::quick_delivery(&overrides(&scn)),
            &spool_a,
            &[admin_b],
        )
        .unwrap();
    assert!(again.contains("drained handed_over=0 "), "{again}");
}
