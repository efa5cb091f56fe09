//! Must show — comprehensive mail storage (SPEC §3.5 `archive`) with a real Postfix as the
//! archive host: every message a Postfix client relays yields one journal copy there,
//! whose headers list the envelope's To, Cc and Bcc recipients, while the recipients'
//! copies carry none of them; the archive host down for a while delays nothing and gets
//! its copies once it is back; the recipients' host refusing still leaves the archive its
//! copy.

mod common;

use common::*;
use conformance::docker::{self, Container, Scenario, host};
use conformance::manifests::{HostSpec, RouteHostsSpec, RouteMatch, RouteSpec};

const ARCHIVE_HOST: &str = "archive.partner.test";

fn message(subject: &str) -> String {
    format!(
        "From: <sender@acme.example>\nTo: to@partner.example\nCc: cc@partner.example\nSubject: {subject}\nMessage-ID: <{subject}@conformance.test>\n\nbody of {subject}\n"
    )
}

/// Sends `subject` to To, Cc and a Bcc recipient no header names.
fn send(client: &Container, subject: &str) {
    docker::sendmail_text(
        client,
        "sender@acme.example",
        &[
            "to@partner.example",
            "cc@partner.example",
            "bcc@partner.example",
        ],
        &message(subject),
    )
    .unwrap();
}

/// The journal copies of `subject` at the archive host.
fn copies(scn: &Scenario, subject: &str) -> Vec<String> {
    docker::maildir(scn.get("archive"))
        .into_iter()
        .filter(|m| docker::header(m, "Subject") == Some(subject))
        .collect()
}

/// `header`'s value with its folded lines joined.
fn unfolded(message: &str, header: &str) -> String {
    let prefix = format!("{}:", header.to_ascii_lowercase());
    let mut lines = message.lines().take_while(|l| !l.is_empty());
    let Some(first) = lines.find(|l| l.to_ascii_lowercase().starts_with(&prefix)) else {
        return String::new();
    };
    let mut value = first[prefix.len()..].trim().to_string();
    for l in lines.take_while(|l| l.starts_with([' ', '\t'])) {
        value.push(' ');
        value.push_str(l.trim());
    }
    value
}

#[test]
fn every_relayed_message_leaves_one_journal_copy_with_its_whole_envelope() {
    if docker::skip_without_docker() {
        return;
    }
    let mut scn = Scenario::new("archive").unwrap();
    scn.postfix_server_env(
        "archive",
        host::SERVER + 1,
        None,
        &[("MYHOSTNAME", ARCHIVE_HOST.to_string())],
    )
    .unwrap();
    let mut m = base_manifests();
    m.ranges = vec![range("office", &scn.subnet4(), true)];
    m.routes.insert(
        0,
        RouteSpec::relaxed(
            "archive",
            RouteMatch::Domains(vec!["archive.example".into()]),
            RouteHostsSpec::Single(HostSpec {
                host: ARCHIVE_HOST.into(),
                port: 25,
                load_percent: 100,
            }),
        ),
    );
    m.org.archive = Some(crds::ArchiveSpec {
        address: "journal@archive.example".into(),
        route: Some("archive".into()),
        include_filtered_out: false,
    });
    scn.postfix_server("sink", host::SERVER, None).unwrap();
    let mut hosts = overrides(&scn);
    hosts.push((
        ARCHIVE_HOST,
        std::net::IpAddr::V4(scn.ip4(host::SERVER + 1)),
    ));
    scn.relay(&m, Some(&relay_cert()), &[], docker::quick_delivery(&hosts))
        .unwrap();
    scn.postfix_client("client", host::CLIENT, &client_opts(&scn, "may"))
        .unwrap();

    // One copy at the archive, naming To, Cc and Bcc; the recipients' copies name none.
    send(scn.get("client"), "journaled");
    let to_recipients = delivered(&scn, "sink", "journaled");
    let copy = docker::poll(OUTCOME, || copies(&scn, "journaled").pop())
        .unwrap_or_else(|| panic!("no journal copy; relay log:\n{}", scn.get("relay").logs()));
    let recipients = unfolded(&copy, "X-Journal-Recipients");
    for r in [
        "<to@partner.example>",
        "<cc@partner.example>",
        "<bcc@partner.example>",
    ] {
        assert!(
            recipients.contains(r),
            "{r} missing from {recipients:?}\n{copy}"
        );
    }
    assert_eq!(
        unfolded(&copy, "X-Journal-Sender"),
        "<sender@acme.example>",
        "{copy}"
    );
    assert!(!to_recipients.contains("X-Journal"), "{to_recipients}");
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(copies(&scn, "journaled").len(), 1, "one copy per message");

    // The archive host down: the recipients get theirs on time, the copy arrives once the
    // archive is back.
    scn.get("archive").stop().unwrap();
    send(scn.get("client"), "archive-down");
    delivered(&scn, "sink", "archive-down");
    scn.get("archive").start().unwrap();
    docker::poll(OUTCOME, || copies(&scn, "archive-down").pop()).unwrap_or_else(|| {
        panic!(
            "the copy never arrived after the archive came back; relay log:\n{}",
            scn.get("relay").logs()
        )
    });

    // The recipients' host refusing everything: the sender gets its bounce, the archive
    // its copy all the same.
    let sink = scn.get("sink");
    sink.exec(&[
        "sh",
        "-c",
        "postconf -e 'smtpd_recipient_restrictions = reject' && postfix reload",
    ])
    .unwrap();
    send(scn.get("client"), "refused");
    bounced(scn.get("client"), "refused");
    docker::poll(OUTCOME, || copies(&scn, "refused").pop()).unwrap_or_else(|| {
        panic!(
            "no copy of a refused message; relay log:\n{}",
            scn.get("relay").logs()
        )
    });
    assert_eq!(count_subject(&scn, "sink", "refused"), 0);
}
