//! Must show — spam and virus filtering before mail leaves (SPEC §3.4 `contentFilters`),
//! with the real daemons from Debian's packages: rspamd's proxy worker and clamav-milter
//! (clamd knowing only the EICAR test signature) judge every message a Postfix client
//! relays through the relay, before its `250`.
//!
//! - a clean message reaches the sink with both filters' headers;
//! - the GTUBE test string is refused `550 5.7.1 Gtube pattern` (rspamd's text) and never
//!   reaches the sink; the Postfix client bounces it to its sender, as Postfix does;
//! - the EICAR test file, attached, is refused naming the virus; likewise bounced;
//! - rspamd stopped: `451 4.7.1` under `onUnavailable: TempFail` (the client keeps the
//!   message and retries), delivered once it is `Accept`;
//! - rspamd frozen (connections open, no answer): its `timeoutSeconds` applies.

mod common;

use common::*;
use conformance::docker::{self, Container, Scenario, host};
use conformance::manifests::Manifests;

/// The GTUBE test string: any rspamd rejects a message holding it.
const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";
/// The EICAR test file, base64 (68 bytes decoded).
const EICAR_BASE64: &str =
    "WDVPIVAlQEFQWzRcUFpYNTQoUF4pN0NDKTd9JEVJQ0FSLVNUQU5EQVJELUFOVElWSVJVUy1URVNULUZJTEUhJEgrSCo=";

fn filter(
    name: &str,
    scn: &Scenario,
    n: u8,
    port: i32,
    on_unavailable: crds::OnUnavailable,
    timeout_seconds: i32,
) -> crds::ContentFilterSpec {
    crds::ContentFilterSpec {
        name: name.into(),
        milter: crds::MilterSpec {
            host: scn.ip4(host::FILTER + n).to_string(),
            port,
        },
        timeout_seconds: Some(timeout_seconds),
        on_unavailable,
        max_message_bytes: None,
    }
}

fn manifests(scn: &Scenario, rspamd: crds::OnUnavailable, rspamd_timeout: i32) -> Manifests {
    let mut m = base_manifests();
    m.ranges = vec![range("office", &scn.subnet4(), true)];
    m.org.content_filters = vec![
        filter("rspamd", scn, 0, 11332, rspamd, rspamd_timeout),
        filter("clamav", scn, 1, 7357, crds::OnUnavailable::TempFail, 30),
    ];
    m
}

fn message(subject: &str, body: &str) -> String {
    format!(
        "From: <sender@acme.example>\nTo: bob@partner.example\nSubject: {subject}\nMessage-ID: <{subject}@conformance.test>\nDate: Mon, 07 Dec 2026 12:00:00 +0000\n\n{body}\n"
    )
}

fn with_eicar(subject: &str) -> String {
    format!(
        "From: <sender@acme.example>\nTo: bob@partner.example\nSubject: {subject}\nMessage-ID: <{subject}@conformance.test>\nDate: Mon, 07 Dec 2026 12:00:00 +0000\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"b1\"\n\n--b1\nContent-Type: text/plain\n\nSee the attachment.\n--b1\nContent-Type: application/octet-stream; name=\"eicar.com\"\nContent-Disposition: attachment; filename=\"eicar.com\"\nContent-Transfer-Encoding: base64\n\n{EICAR_BASE64}\n--b1--\n"
    )
}

fn send(client: &Container, text: &str) {
    docker::sendmail_text(
        client,
        "sender@acme.example",
        &["bob@partner.example"],
        text,
    )
    .unwrap();
}

/// Waits until the client's queue holds a message deferred with `needle` in its reason.
fn deferred(client: &Container, needle: &str) -> String {
    docker::poll(OUTCOME, || {
        docker::queue(client)
            .into_iter()
            .find(|q| q.delay_reason.contains(needle))
            .map(|q| q.delay_reason)
    })
    .unwrap_or_else(|| {
        panic!(
            "nothing deferred with {needle:?}; queue: {:?}\nclient log:\n{}",
            docker::queue(client),
            client.logs()
        )
    })
}

#[test]
fn rspamd_and_clamav_judge_every_message_before_the_250() {
    if docker::skip_without_docker() {
        return;
    }
    let mut scn = Scenario::new("filters").unwrap();
    scn.content_filter("rspamd", host::FILTER, "rspamd")
        .unwrap();
    scn.content_filter("clamav", host::FILTER + 1, "clamav")
        .unwrap();
    let mut m = manifests(&scn, crds::OnUnavailable::TempFail, 5);
    let relay = start_relay_and_sink(&mut scn, &m);
    scn.postfix_client("client", host::CLIENT, &client_opts(&scn, "may"))
        .unwrap();
    let client = scn.get("client");

    // A clean message passes both and carries their headers.
    send(
        client,
        &message("clean", "Hello Bob, the report is attached."),
    );
    let clean = delivered(&scn, "sink", "clean");
    assert!(
        docker::header(&clean, "X-Spamd-Result").is_some(),
        "no rspamd header:\n{clean}"
    );
    assert_eq!(
        docker::header(&clean, "X-Virus-Status"),
        Some("Clean"),
        "{clean}"
    );
    assert!(
        docker::header(&clean, "X-Virus-Scanned").is_some(),
        "{clean}"
    );

    // GTUBE: refused with rspamd's text at SMTP time; Postfix bounces it to its sender.
    send(client, &message("gtube", &format!("Buy now!\n{GTUBE}")));
    bounced(client, "550 5.7.1 Gtube pattern");
    // EICAR attached: refused naming the virus.
    send(client, &with_eicar("eicar"));
    bounced(client, "550 5.7.1 Virus Eicar-Test-Signature");
    assert_eq!(count_subject(&scn, "sink", "gtube"), 0);
    assert_eq!(count_subject(&scn, "sink", "eicar"), 0);

    // rspamd stopped: TempFail makes the client keep the message and retry.
    scn.get("rspamd").stop().unwrap();
    let client = scn.get("client");
    send(client, &message("while-down", "Hello again."));
    let reason = deferred(client, "4.7.1");
    assert!(
        reason.contains("451 4.7.1 Content filter unavailable"),
        "{reason}"
    );
    assert_eq!(count_subject(&scn, "sink", "while-down"), 0);
    // Under Accept the same message goes on unfiltered at the client's next try.
    m = manifests(&scn, crds::OnUnavailable::Accept, 5);
    relay.write(&m).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    client.exec(&["postqueue", "-f"]).unwrap();
    let passed = delivered(&scn, "sink", "while-down");
    assert!(
        docker::header(&passed, "X-Spamd-Result").is_none(),
        "rspamd was down, yet its header is there:\n{passed}"
    );
    assert!(
        docker::header(&passed, "X-Virus-Scanned").is_some(),
        "{passed}"
    );

    // rspamd back but frozen: connections open, no answer; TempFail again after its
    // timeout, and the client's session goes on (its next message is judged).
    let rspamd = scn.get("rspamd");
    rspamd.start().unwrap();
    rspamd.pause().unwrap();
    m = manifests(&scn, crds::OnUnavailable::TempFail, 3);
    relay.write(&m).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let client = scn.get("client");
    send(client, &message("frozen", "Anyone there?"));
    let reason = deferred(client, "Content filter unavailable");
    assert!(reason.contains("451 4.7.1"), "{reason}");
    scn.get("rspamd").unpause().unwrap();
    client.exec(&["postqueue", "-f"]).unwrap();
    let late = delivered(&scn, "sink", "frozen");
    assert!(docker::header(&late, "X-Spamd-Result").is_some(), "{late}");
}
