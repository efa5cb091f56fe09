//! Must show — TLS and SMTP AUTH (SPEC §3.1, §3.2): with `requireTls`, a Postfix client
//! with `smtp_tls_security_level=encrypt` relays and one with TLS off is refused with
//! `530 5.7.0 Must issue a STARTTLS command first`; Postfix's SASL client authenticates
//! only over TLS (AUTH is not offered before STARTTLS), and a wrong password is `535 5.7.8`.

mod common;

use common::*;
use conformance::docker::{self, Scenario, host};
use conformance::manifests::{PASSWORDS, Senders, SettingSpec};

#[test]
fn require_tls_encrypting_postfix_relays_and_plain_postfix_gets_530() {
    if docker::skip_without_docker() {
        return;
    }
    let mut scn = Scenario::new("tls").unwrap();
    let mut m = base_manifests();
    m.settings[0].require_tls = true;
    m.ranges = vec![range("office", &scn.subnet4(), true)];
    start_relay_and_sink(&mut scn, &m);
    scn.postfix_client("client", host::CLIENT, &client_opts(&scn, "encrypt"))
        .unwrap();
    scn.postfix_client("plain", host::CLIENT + 1, &client_opts(&scn, "none"))
        .unwrap();
    docker::sendmail(
        scn.get("client"),
        "sender@acme.example",
        &["bob@example.net"],
        "tls-encrypt",
    )
    .unwrap();
    docker::sendmail(
        scn.get("plain"),
        "sender@acme.example",
        &["bob@example.net"],
        "tls-none",
    )
    .unwrap();

    let msg = delivered(&scn, "sink", "tls-encrypt");
    let flat = squash(&msg);
    assert!(
        flat.contains("(using TLS") && flat.contains("by relay.acme.example with ESMTPS"),
        "the relay's Received header records TLS:\n{msg}"
    );
    bounced(
        scn.get("plain"),
        "530 5.7.0 Must issue a STARTTLS command first (submit on port 587 with STARTTLS)",
    );
    assert_eq!(count_subject(&scn, "sink", "tls-none"), 0);
}

#[test]
fn postfix_sasl_authenticates_only_over_tls() {
    if docker::skip_without_docker() {
        return;
    }
    let mut scn = Scenario::new("sasl").unwrap();
    let mut m = base_manifests();
    m.settings = vec![SettingSpec {
        name: "applications".into(),
        senders: Senders::RegisteredUsers,
        ip_ranges: None,
        require_auth: true,
        require_tls: true,
    }];
    start_relay_and_sink(&mut scn, &m);
    let (user, password) = PASSWORDS[0];
    let sasl = |tls| {
        let mut o = client_opts(&scn, tls);
        o.sasl = Some((user.to_string(), password.to_string()));
        o
    };
    let over_tls = sasl("may");
    let plain = sasl("none");
    let mut wrong = sasl("may");
    wrong.sasl = Some((user.to_string(), "not the password".to_string()));
    // The first client's mailbox receives bounces for acme.example (route acme-mailboxes).
    scn.postfix_client("client", host::CLIENT, &plain).unwrap();
    scn.postfix_client("app", host::CLIENT + 1, &over_tls)
        .unwrap();
    scn.postfix_client("wrongpw", host::CLIENT + 2, &wrong)
        .unwrap();
    docker::sendmail(scn.get("app"), user, &["bob@example.net"], "sasl-tls").unwrap();
    docker::sendmail(
        scn.get("client"),
        "sender@acme.example",
        &["bob@example.net"],
        "sasl-plain",
    )
    .unwrap();
    docker::sendmail(scn.get("wrongpw"), user, &["bob@example.net"], "sasl-wrong").unwrap();

    let msg = delivered(&scn, "sink", "sasl-tls");
    assert_eq!(
        docker::header(&msg, "Return-Path"),
        Some(format!("<{user}>").as_str())
    );
    // Without TLS the relay offers no AUTH, so Postfix sends unauthenticated and this
    // setting does not identify it.
    bounced(
        scn.get("client"),
        &format!(
            "550 5.7.1 Client host [{}] is not allowed",
            scn.ip4(host::CLIENT)
        ),
    );
    // A wrong password: Postfix keeps the message and reports the relay's 535.
    let wrong = scn.get("wrongpw");
    let reason = docker::poll(OUTCOME, || {
        docker::queue(wrong)
            .into_iter()
            .map(|q| q.delay_reason)
            .find(|r| r.contains("535"))
    })
    .unwrap_or_else(|| panic!("no 535 in the queue of wrongpw:\n{}", wrong.logs()));
    assert!(squash(&reason).contains("535 5.7.8"), "{reason}");
    assert_eq!(count_subject(&scn, "sink", "sasl-plain"), 0);
    assert_eq!(count_subject(&scn, "sink", "sasl-wrong"), 0);
}
