//! Must show — IP ranges (SPEC §2.3, §3.2): real Postfix clients on a private dual-stack
//! network relay when their address lies in an enabled range; outside every range, or
//! inside a disabled one, they get `550 5.7.1` naming their address (Postfix bounces the
//! message back to its sender); an IPv6 client relays over IPv6.

mod common;

use std::net::IpAddr;

use common::*;
use conformance::docker::{self, Scenario, host};

#[test]
fn ipv4_clients_inside_enabled_range_relay_outside_or_disabled_get_550_5_7_1() {
    if docker::skip_without_docker() {
        return;
    }
    let mut scn = Scenario::new("ip4").unwrap();
    let inside = host::CLIENT; // .20, in the enabled 10.a.b.16/28
    let outside = 60; // in no range
    let disabled = 35; // in the disabled 10.a.b.32/28
    let mut m = base_manifests();
    let net = |n: u8| format!("{}/28", scn.ip4(n));
    m.ranges = vec![
        range("office", &net(16), true),
        range("lab", &net(32), false),
    ];
    start_relay_and_sink(&mut scn, &m);
    for (role, n) in [("client", inside), ("outsider", outside), ("lab", disabled)] {
        scn.postfix_client(role, n, &client_opts(&scn, "may"))
            .unwrap();
    }
    for role in ["client", "outsider", "lab"] {
        docker::sendmail(
            scn.get(role),
            "sender@acme.example",
            &["bob@example.net"],
            &format!("from-{role}"),
        )
        .unwrap();
    }

    let msg = delivered(&scn, "sink", "from-client");
    assert!(
        msg.contains(&format!("[{}]", scn.ip4(inside))),
        "the relay's Received header names the client:\n{msg}"
    );
    for (role, n) in [("outsider", outside), ("lab", disabled)] {
        let expected = format!(
            "550 5.7.1 Client host [{}] is not allowed to relay",
            scn.ip4(n)
        );
        bounced(scn.get(role), &expected);
        assert_eq!(count_subject(&scn, "sink", &format!("from-{role}")), 0);
    }
}

#[test]
fn ipv6_client_in_an_enabled_ipv6_range_relays_over_ipv6() {
    if docker::skip_without_docker() {
        return;
    }
    let mut scn = Scenario::new("ip6").unwrap();
    let v6_client = 70; // its IPv4 address is in no range: only IPv6 can let it relay
    let mut m = base_manifests();
    m.ranges = vec![range(
        "v6-office",
        &format!("{}/128", scn.ip6(v6_client)),
        true,
    )];
    start_relay_and_sink(&mut scn, &m);
    let mut opts = client_opts(&scn, "may");
    opts.relay = IpAddr::V6(scn.ip6(host::RELAY));
    scn.postfix_client("client6", v6_client, &opts).unwrap();
    docker::sendmail(
        scn.get("client6"),
        "sender@acme.example",
        &["bob@example.net"],
        "over-ipv6",
    )
    .unwrap();
    let msg = delivered(&scn, "sink", "over-ipv6");
    assert!(
        msg.contains(&format!("{}", scn.ip6(v6_client))),
        "the relay's Received header names the IPv6 client:\n{msg}"
    );
}
