//! Must show — international mail (SPEC §3.4, §3.5) between real Postfix peers: a Postfix
//! client with `smtputf8_enable = yes` sends to UTF-8 addresses through the relay, which
//! carries SMTPUTF8 to a downstream Postfix that offers it (the downstream's `Received:`
//! says `with UTF8SMTP`; an IDN domain arrives as its A-label, the UTF-8 local part as
//! sent); a downstream without SMTPUTF8 makes the relay
//! bounce with `5.6.7` into the sender's mailbox.

mod common;

use common::*;
use conformance::docker::{self, Scenario, host};

fn smtputf8() -> [(&'static str, String); 1] {
    [("SMTPUTF8", "yes".to_string())]
}

#[test]
fn utf8_addresses_reach_a_postfix_downstream_that_offers_smtputf8() {
    if docker::skip_without_docker() {
        return;
    }
    let mut scn = Scenario::new("utf8").unwrap();
    let mut m = base_manifests();
    m.ranges = vec![range("office", &scn.subnet4(), true)];
    scn.postfix_server_env("sink", host::SERVER, None, &smtputf8())
        .unwrap();
    scn.relay(
        &m,
        Some(&relay_cert()),
        &[],
        docker::quick_delivery(&overrides(&scn)),
    )
    .unwrap();
    scn.postfix_client_env(
        "client",
        host::CLIENT,
        &client_opts(&scn, "may"),
        &smtputf8(),
    )
    .unwrap();
    docker::sendmail(
        scn.get("client"),
        "sender@acme.example",
        &["jörg@example.net", "müller@bücher.example"],
        "utf8-end-to-end",
    )
    .unwrap();

    let sink = scn.get("sink");
    let copies = docker::poll(OUTCOME, || {
        let copies: Vec<String> = docker::maildir(sink)
            .into_iter()
            .filter(|m| docker::header(m, "Subject") == Some("utf8-end-to-end"))
            .collect();
        (copies.len() >= 2).then_some(copies)
    })
    .unwrap_or_else(|| {
        panic!(
            "the UTF-8 message never reached the sink twice; relay log:\n{}\nsink log:\n{}",
            scn.get("relay").logs(),
            sink.logs()
        )
    });
    let mut to: Vec<&str> = copies
        .iter()
        .filter_map(|m| docker::header(m, "X-Original-To"))
        .collect();
    to.sort();
    assert_eq!(to, ["jörg@example.net", "müller@xn--bcher-kva.example"]);
    // The downstream's own Received: names the SMTPUTF8 protocol (RFC 6531 §4.3): the
    // relay declared SMTPUTF8 (Postfix would take the addresses without it).
    for copy in &copies {
        assert!(copy.contains(" with UTF8SMTP"), "{copy}");
    }
    assert_eq!(
        docker::header(&copies[0], "Return-Path"),
        Some("<sender@acme.example>")
    );
}

#[test]
fn a_postfix_downstream_without_smtputf8_gets_no_utf8_mail_and_the_sender_a_5_6_7_bounce() {
    if docker::skip_without_docker() {
        return;
    }
    let mut scn = Scenario::new("noutf8").unwrap();
    let mut m = base_manifests();
    m.ranges = vec![range("office", &scn.subnet4(), true)];
    // The image's default: smtputf8_enable = no.
    start_relay_and_sink(&mut scn, &m);
    scn.postfix_client_env(
        "client",
        host::CLIENT,
        &client_opts(&scn, "may"),
        &smtputf8(),
    )
    .unwrap();
    let client = scn.get("client");
    docker::sendmail(
        client,
        "sender@acme.example",
        &["jörg@example.net"],
        "utf8-no-smtputf8",
    )
    .unwrap();
    let bounce = bounced(client, "5.6.7");
    assert!(bounce.contains("SMTPUTF8"), "{bounce}");
    assert_eq!(count_subject(&scn, "sink", "utf8-no-smtputf8"), 0);
}
