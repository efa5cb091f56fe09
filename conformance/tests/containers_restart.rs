//! Must show — durability (SPEC §3.4, §3.5): mail the relay accepted while its downstream
//! server is stopped survives a SIGKILL of the relay container; a new relay container
//! started on the same spool volume (as a rescheduled pod on its claim), once the server
//! is back, delivers every message to it exactly once.

mod common;

use std::net::SocketAddr;

use common::*;
use conformance::docker::{self, Scenario, host};

#[test]
fn killed_relay_restarts_and_delivers_queued_mail_exactly_once() {
    if docker::skip_without_docker() {
        return;
    }
    const N: usize = 3;
    let mut scn = Scenario::new("restart").unwrap();
    let mut m = base_manifests();
    m.ranges = vec![range("office", &scn.subnet4(), true)];
    let spool = scn.volume("spool").unwrap();
    let (cert, delivery) = relay_with_deferred_mail(&mut scn, &m, &spool, N, "queued");
    let admin = SocketAddr::new(scn.ip4(host::RELAY).into(), 9090);

    scn.get("relay").kill().unwrap();
    scn.remove("relay");
    // A new container, not the old one restarted: only the volume carries the queue.
    // It delivers as soon as it starts, before the harness moves it to its fixed address,
    // so the server comes back only afterwards (a session opened from the first address
    // would be cut by the move and wait out its greeting timeout).
    scn.relay_on(
        "relay",
        host::RELAY,
        &m,
        Some(&cert),
        &[],
        delivery,
        Some(&spool),
    )
    .unwrap();
    // `start` returns once Postfix has logged that it is up again.
    scn.get("sink").start().unwrap();
    let relay = scn.get("relay");

    let drained = docker::poll(OUTCOME, || {
        docker::http_get(admin, "/metrics")
            .ok()
            .and_then(|t| docker::metric(&t, "spool_depth"))
            .filter(|d| *d == 0.0)
    });
    assert!(
        drained.is_some(),
        "spool did not drain after restart:\n{}",
        relay.logs()
    );
    // The spool is empty: nothing is left that could be delivered again.
    for i in 0..N {
        assert_eq!(
            count_subject(&scn, "sink", &format!("queued-{i}")),
            1,
            "queued-{i} delivered exactly once"
        );
    }
}
