//! Must show — sender modes (SPEC §3.3) with real Postfix clients: `AnyAddress` rewrites a
//! foreign envelope sender to `postmaster@` the AUTH identity's domain, which the
//! downstream server records as Return-Path while the header From is untouched;
//! `RegisteredUsers` refuses an unregistered sender with `550 5.7.1`; a null-sender message
//! with two recipients gets one delivered and the second refused with `550 5.5.3`.

mod common;

use common::*;
use conformance::docker::{self, Scenario, host};
use conformance::manifests::{PASSWORDS, Senders, SettingSpec};

#[test]
fn any_address_rewrites_foreign_sender_to_postmaster_in_the_envelope() {
    if docker::skip_without_docker() {
        return;
    }
    let mut scn = Scenario::new("anyaddr").unwrap();
    let mut m = base_manifests();
    m.settings = vec![SettingSpec {
        name: "applications".into(),
        senders: Senders::AnyAddress,
        ip_ranges: None,
        require_auth: true,
        require_tls: true,
    }];
    start_relay_and_sink(&mut scn, &m);
    let (user, password) = PASSWORDS[1];
    let mut opts = client_opts(&scn, "may");
    opts.sasl = Some((user.to_string(), password.to_string()));
    scn.postfix_client("client", host::CLIENT, &opts).unwrap();
    docker::sendmail(
        scn.get("client"),
        "noreply@vendor.example",
        &["bob@example.net"],
        "rewritten",
    )
    .unwrap();
    docker::sendmail(
        scn.get("client"),
        "alerts@acme.example",
        &["bob@example.net"],
        "kept",
    )
    .unwrap();

    let msg = delivered(&scn, "sink", "rewritten");
    assert_eq!(
        docker::header(&msg, "Return-Path"),
        Some("<postmaster@acme.example>"),
        "{msg}"
    );
    assert_eq!(
        docker::header(&msg, "From"),
        Some("<noreply@vendor.example>"),
        "{msg}"
    );
    let msg = delivered(&scn, "sink", "kept");
    assert_eq!(
        docker::header(&msg, "Return-Path"),
        Some("<alerts@acme.example>"),
        "{msg}"
    );
}

#[test]
fn registered_users_refuses_an_unregistered_sender() {
    if docker::skip_without_docker() {
        return;
    }
    let mut scn = Scenario::new("regusers").unwrap();
    let mut m = base_manifests();
    m.settings[0].senders = Senders::RegisteredUsers;
    m.ranges = vec![range("office", &scn.subnet4(), true)];
    start_relay_and_sink(&mut scn, &m);
    scn.postfix_client("client", host::CLIENT, &client_opts(&scn, "may"))
        .unwrap();
    docker::sendmail(
        scn.get("client"),
        "alice@acme.example",
        &["bob@example.net"],
        "registered",
    )
    .unwrap();
    docker::sendmail(
        scn.get("client"),
        "sender@acme.example",
        &["bob@example.net"],
        "unregistered",
    )
    .unwrap();
    let msg = delivered(&scn, "sink", "registered");
    assert_eq!(
        docker::header(&msg, "Return-Path"),
        Some("<alice@acme.example>")
    );
    bounced(
        scn.get("client"),
        "550 5.7.1 Sender address <sender@acme.example> is not a registered user",
    );
    assert_eq!(count_subject(&scn, "sink", "unregistered"), 0);
}

#[test]
fn null_sender_with_two_recipients_gets_the_second_refused_550_5_5_3() {
    if docker::skip_without_docker() {
        return;
    }
    let mut scn = Scenario::new("nullsender").unwrap();
    let mut m = base_manifests();
    m.ranges = vec![range("office", &scn.subnet4(), true)];
    start_relay_and_sink(&mut scn, &m);
    // HELO client.acme.example is a name of the organization: the null sender is allowed.
    scn.postfix_client("client", host::CLIENT, &client_opts(&scn, "may"))
        .unwrap();
    let client = scn.get("client");
    docker::sendmail(
        client,
        "",
        &["first@example.net", "second@example.net"],
        "null-sender",
    )
    .unwrap();
    let msg = delivered(&scn, "sink", "null-sender");
    assert_eq!(docker::header(&msg, "Return-Path"), Some("<>"), "{msg}");
    assert_eq!(
        docker::header(&msg, "X-Original-To"),
        Some("first@example.net"),
        "{msg}"
    );
    let log = docker::poll(OUTCOME, || {
        let log = client.logs();
        log.contains("to=<second@example.net>").then_some(log)
    })
    .unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("to=<second@example.net>"))
        .unwrap();
    assert!(
        line.contains("status=bounced") && line.contains("550 5.5.3"),
        "{line}"
    );
    assert_eq!(count_subject(&scn, "sink", "null-sender"), 1);
}

#[test]
fn any_address_by_helo_rewrites_to_postmaster_of_the_helo_domain() {
    if docker::skip_without_docker() {
        return;
    }
    let mut scn = Scenario::new("anyhelo").unwrap();
    let mut m = base_manifests();
    m.settings[0].senders = Senders::AnyAddress;
    m.ranges = vec![range("office", &scn.subnet4(), true)];
    start_relay_and_sink(&mut scn, &m);
    let mut opts = client_opts(&scn, "may");
    opts.hostname = "scanner.branch.acme.example".into();
    scn.postfix_client("client", host::CLIENT, &opts).unwrap();
    docker::sendmail(
        scn.get("client"),
        "scanner@devices.example",
        &["bob@example.net"],
        "by-helo",
    )
    .unwrap();
    let msg = delivered(&scn, "sink", "by-helo");
    assert_eq!(
        docker::header(&msg, "Return-Path"),
        Some("<postmaster@acme.example>"),
        "{msg}"
    );
    assert_eq!(
        docker::header(&msg, "From"),
        Some("<scanner@devices.example>")
    );
}

#[test]
fn organization_domains_refuses_a_foreign_sender_and_its_bounce_is_relayed() {
    if docker::skip_without_docker() {
        return;
    }
    let mut scn = Scenario::new("orgdomains").unwrap();
    let mut m = base_manifests();
    m.ranges = vec![range("office", &scn.subnet4(), true)];
    start_relay_and_sink(&mut scn, &m);
    scn.postfix_client("client", host::CLIENT, &client_opts(&scn, "may"))
        .unwrap();
    docker::sendmail(
        scn.get("client"),
        "someone@vendor.example",
        &["bob@example.net"],
        "foreign",
    )
    .unwrap();
    // Postfix bounces to someone@vendor.example through the relay: a null-sender message
    // from a HELO name of the organization, which the relay accepts and delivers.
    let bounce = docker::poll(OUTCOME, || {
        docker::maildir(scn.get("sink"))
            .into_iter()
            .find(|m| docker::header(m, "X-Original-To") == Some("someone@vendor.example"))
    })
    .unwrap_or_else(|| panic!("no bounce at the sink:\n{}", scn.get("client").logs()));
    assert_eq!(docker::header(&bounce, "Return-Path"), Some("<>"));
    assert!(
        squash(&bounce)
            .contains("550 5.7.1 Sender domain vendor.example does not belong to the organization"),
        "{bounce}"
    );
    assert_eq!(count_subject(&scn, "sink", "foreign"), 0);
}
