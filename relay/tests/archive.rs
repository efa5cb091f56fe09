//! Comprehensive mail storage (SPEC §3.5 `archive`), end to end over loopback: every
//! accepted message yields one journal copy to the archive, with its envelope in headers
//! on that copy only, delivered on its own.

mod common;

use std::time::Duration;

use common::{Client, config, connect, metrics};
use relay::config::{
    ArchiveConfig, ContentFilterConfig, HostConfig, OnUnavailable, RelayConfig, RouteConfig,
    RouteHosts, RouteMatcher, RouteTlsConfig,
};
use relay::delivery::testing::{ReceivedMessage, SinkConfig, TestSink};
use relay::filter::milter::fake::{FakeMilter, at_eob, optneg, reply};
use relay::{RelayHandle, StartOptions};
use tokio::net::TcpStream;

const ARCHIVE: &str = "journal@archive.example";

fn archive_route(port: u16) -> RouteConfig {
    RouteConfig {
        rate_limit: None,
        name: "acme/archive".into(),
        description: "the archive".into(),
        matcher: RouteMatcher::Domains(vec!["archive.example".into()]),
        hosts: RouteHosts::Single(HostConfig {
            host: "127.0.0.1".into(),
            port,
        }),
        mx_lookup: false,
        tls: RouteTlsConfig {
            require_tls: false,
            require_ca_signed: false,
            validate_hostname: false,
            extra_ca_file: None,
            implicit: false,
        },
        auth: None,
    }
}

/// A relay whose default route goes to `main` and whose archive (through its own route)
/// to `archive_port`, retrying every second.
fn archiving(dir: &std::path::Path, main: &TestSink, archive_port: u16) -> RelayConfig {
    let mut cfg = config(&dir.join("spool"), main.port());
    cfg.routes.insert(0, archive_route(archive_port));
    cfg.archive = Some(ArchiveConfig {
        address: ARCHIVE.into(),
        route: Some("acme/archive".into()),
        include_filtered_out: false,
        postmaster: "postmaster@acme.example".into(),
    });
    cfg
}

async fn ehlo(relay: &RelayHandle) -> Client<TcpStream> {
    let mut c = connect(relay.smtp_addr()).await;
    assert!(c.cmd("EHLO client.acme.example").await.starts_with("250"));
    c
}

/// Sends a message with `To`/`Cc` headers, plus a Bcc recipient no header names.
async fn send(c: &mut Client<TcpStream>, from: &str, subject: &str) -> String {
    let rcpts = [
        "to@partner.example".to_string(),
        "cc@partner.example".to_string(),
        "hidden@partner.example".to_string(),
    ];
    let (_, _, done) = c
        .transaction(
            from,
            &rcpts,
            &format!(
                "From: app@acme.example\r\nTo: to@partner.example\r\nCc: cc@partner.example\r\nSubject: {subject}\r\n\r\nbody of {subject}"
            ),
        )
        .await;
    let done = done.unwrap();
    assert!(done.starts_with("250 "), "{done}");
    done.trim_start_matches("250 2.0.0 OK queued as ")
        .to_string()
}

fn text(m: &ReceivedMessage) -> String {
    String::from_utf8_lossy(&m.data).into_owned()
}

fn with_subject(sink: &TestSink, subject: &str) -> Vec<ReceivedMessage> {
    sink.messages()
        .into_iter()
        .filter(|m| text(m).contains(&format!("Subject: {subject}\r\n")))
        .collect()
}

async fn wait_for(sink: &TestSink, subject: &str) -> ReceivedMessage {
    for _ in 0..200 {
        if let Some(m) = with_subject(sink, subject).pop() {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{subject} never arrived: {:?}", sink.messages());
}

#[tokio::test]
async fn the_archive_gets_one_journal_copy_with_every_recipient_and_recipients_none() {
    let dir = tempfile::tempdir().unwrap();
    let main = TestSink::start(SinkConfig::default()).await.unwrap();
    let archive = TestSink::start(SinkConfig::default()).await.unwrap();
    let relay = relay::start(
        archiving(dir.path(), &main, archive.port()),
        StartOptions::default(),
    )
    .await
    .unwrap();
    let mut c = ehlo(&relay).await;
    let id = send(&mut c, "app@acme.example", "hello").await;
    let copy = wait_for(&archive, "hello").await;
    let delivered = wait_for(&main, "hello").await;
    assert_eq!(copy.rcpt_to, vec![ARCHIVE.to_string()]);
    assert_eq!(copy.mail_from, "postmaster@acme.example");
    let journal = text(&copy);
    assert!(
        journal.starts_with(&format!(
            "X-Journal-Report: relay.acme.example; queue-id={id};"
        )),
        "{journal}"
    );
    for needle in [
        "X-Journal-Sender: <app@acme.example>\r\n",
        "<to@partner.example>, <cc@partner.example>,\r\n <hidden@partner.example>",
        "X-Journal-Client: [127.0.0.1] helo=client.acme.example\r\n",
    ] {
        assert!(journal.contains(needle), "{needle} not in\n{journal}");
    }
    // Below the journal headers, the message exactly as the recipients got it.
    let (_, original) = journal.split_once("\r\nReceived: ").unwrap();
    assert_eq!(format!("Received: {original}"), text(&delivered));
    assert!(
        !text(&delivered).contains("X-Journal"),
        "{}",
        text(&delivered)
    );
    assert_eq!(
        delivered.rcpt_to.len(),
        3,
        "the Bcc recipient got the message too"
    );
    // One copy, not one per recipient or per attempt.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(with_subject(&archive, "hello").len(), 1);
    let m = metrics(&relay).await;
    assert!(m.contains("smtprelay_archive_queued_total 1\n"), "{m}");
    assert!(m.contains("smtprelay_archive_delivered_total 1\n"), "{m}");
    relay.shutdown().await;
}

#[tokio::test]
async fn the_archive_down_never_delays_the_recipients_and_its_copy_arrives_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let main = TestSink::start(SinkConfig::default()).await.unwrap();
    // The archive is down: its port is free.
    let archive_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let relay = relay::start(
        archiving(dir.path(), &main, archive_addr.port()),
        StartOptions::default(),
    )
    .await
    .unwrap();
    let mut c = ehlo(&relay).await;
    let id = send(&mut c, "app@acme.example", "while-down").await;
    wait_for(&main, "while-down").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The recipients are done; the message waits for its archive copy alone.
    let state = relay.queue().state(&id).expect("kept for its archive copy");
    assert!(state.pending_recipients().is_empty());
    assert!(state.archive.as_ref().is_some_and(|a| a.pending()));
    // The gauge is worked out at most once a second.
    let mut m = String::new();
    for _ in 0..60 {
        m = metrics(&relay).await;
        if m.contains("smtprelay_archive_pending 1\n") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(m.contains("smtprelay_archive_pending 1\n"), "{m}");
    // The archive comes back.
    let archive = TestSink::start_on(archive_addr, SinkConfig::default())
        .await
        .unwrap();
    relay.queue().flush(None);
    wait_for(&archive, "while-down").await;
    assert_eq!(
        with_subject(&main, "while-down").len(),
        1,
        "no second delivery"
    );
    for _ in 0..100 {
        if relay.queue().message(&id).is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(relay.queue().message(&id).is_none(), "finished and removed");
    relay.shutdown().await;
}

#[tokio::test]
async fn a_refused_recipient_never_drops_the_archive_copy_and_a_refused_copy_goes_to_the_postmaster()
 {
    let dir = tempfile::tempdir().unwrap();
    // The recipients' host refuses every recipient for good.
    let main = TestSink::start(SinkConfig {
        rcpt_replies: [
            ("to@partner.example", "550 5.1.1 no such user"),
            ("cc@partner.example", "550 5.1.1 no such user"),
            ("hidden@partner.example", "550 5.1.1 no such user"),
        ]
        .into_iter()
        .map(|(a, r)| (a.to_string(), r.to_string()))
        .collect(),
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let archive = TestSink::start(SinkConfig::default()).await.unwrap();
    let relay = relay::start(
        archiving(dir.path(), &main, archive.port()),
        StartOptions::default(),
    )
    .await
    .unwrap();
    let mut c = ehlo(&relay).await;
    send(&mut c, "app@acme.example", "refused").await;
    wait_for(&archive, "refused").await;
    relay.shutdown().await;

    // Now the archive refuses: the recipients get the message, and the postmaster (not
    // the sender) hears of the failed copy.
    let dir = tempfile::tempdir().unwrap();
    let main = TestSink::start(SinkConfig::default()).await.unwrap();
    let archive = TestSink::start(SinkConfig {
        rcpt_replies: [(ARCHIVE.to_string(), "550 5.7.1 archive full".to_string())]
            .into_iter()
            .collect(),
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let relay = relay::start(
        archiving(dir.path(), &main, archive.port()),
        StartOptions::default(),
    )
    .await
    .unwrap();
    let mut c = ehlo(&relay).await;
    send(&mut c, "app@acme.example", "copy-refused").await;
    wait_for(&main, "copy-refused").await;
    let mut report = None;
    for _ in 0..200 {
        report = main
            .messages()
            .into_iter()
            .find(|m| m.rcpt_to == ["postmaster@acme.example".to_string()]);
        if report.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let report = report.expect("the postmaster is told");
    assert_eq!(report.mail_from, "", "a report comes from the null sender");
    let body = text(&report);
    assert!(
        body.contains(ARCHIVE) && body.contains("archive full"),
        "{body}"
    );
    assert!(
        !main
            .messages()
            .iter()
            .any(|m| m.rcpt_to.contains(&"app@acme.example".to_string())),
        "the sender is never told of the archive copy"
    );
    let m = metrics(&relay).await;
    assert!(m.contains("smtprelay_archive_failed_total 1\n"), "{m}");
    relay.shutdown().await;
}

#[tokio::test]
async fn null_sender_mail_is_archived_too() {
    let dir = tempfile::tempdir().unwrap();
    let main = TestSink::start(SinkConfig::default()).await.unwrap();
    let archive = TestSink::start(SinkConfig::default()).await.unwrap();
    let relay = relay::start(
        archiving(dir.path(), &main, archive.port()),
        StartOptions::default(),
    )
    .await
    .unwrap();
    let mut c = ehlo(&relay).await;
    let (_, _, done) = c
        .transaction(
            "",
            &["to@partner.example".to_string()],
            "From: mailer-daemon@acme.example\r\nSubject: bounce\r\n\r\nbody",
        )
        .await;
    assert!(done.unwrap().starts_with("250 "));
    let copy = wait_for(&archive, "bounce").await;
    assert!(
        text(&copy).contains("X-Journal-Sender: <>\r\n"),
        "{}",
        text(&copy)
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn filtered_out_mail_is_archived_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let main = TestSink::start(SinkConfig::default()).await.unwrap();
    let archive = TestSink::start(SinkConfig::default()).await.unwrap();
    let discarding =
        FakeMilter::start(optneg(6, 0x1ff, 0, &[]), at_eob(vec![reply(b'd', b"")])).await;
    let filter = ContentFilterConfig {
        name: "rspamd".into(),
        host: discarding.addr.ip().to_string(),
        port: discarding.addr.port(),
        timeout_seconds: 5,
        on_unavailable: OnUnavailable::TempFail,
        max_message_bytes: None,
    };
    let mut cfg = archiving(dir.path(), &main, archive.port());
    cfg.content_filters = vec![filter.clone()];
    let relay = relay::start(cfg, StartOptions::default()).await.unwrap();
    let mut c = ehlo(&relay).await;
    send(&mut c, "app@acme.example", "dropped").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(with_subject(&archive, "dropped").is_empty());
    assert!(with_subject(&main, "dropped").is_empty());
    relay.shutdown().await;

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = archiving(dir.path(), &main, archive.port());
    cfg.content_filters = vec![filter];
    if let Some(a) = cfg.archive.as_mut() {
        a.include_filtered_out = true;
    }
    let relay = relay::start(cfg, StartOptions::default()).await.unwrap();
    let mut c = ehlo(&relay).await;
    send(&mut c, "app@acme.example", "dropped-kept").await;
    let copy = wait_for(&archive, "dropped-kept").await;
    assert!(
        text(&copy).contains("X-Journal-Filtered: discarded by rspamd\r\n"),
        "{}",
        text(&copy)
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        with_subject(&main, "dropped-kept").is_empty(),
        "no recipient gets a discarded message"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn a_quarantined_message_s_copy_leaves_while_it_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let main = TestSink::start(SinkConfig::default()).await.unwrap();
    let archive = TestSink::start(SinkConfig::default()).await.unwrap();
    let mut quarantine = b"q".to_vec();
    quarantine.extend_from_slice(b"suspicious\0");
    let holding = FakeMilter::start(
        optneg(6, 0x1ff, 0, &[]),
        at_eob(vec![quarantine, reply(b'c', b"")]),
    )
    .await;
    let mut cfg = archiving(dir.path(), &main, archive.port());
    cfg.content_filters = vec![ContentFilterConfig {
        name: "clamav".into(),
        host: holding.addr.ip().to_string(),
        port: holding.addr.port(),
        timeout_seconds: 5,
        on_unavailable: OnUnavailable::TempFail,
        max_message_bytes: None,
    }];
    if let Some(a) = cfg.archive.as_mut() {
        a.include_filtered_out = true;
    }
    let relay = relay::start(cfg, StartOptions::default()).await.unwrap();
    let mut c = ehlo(&relay).await;
    let id = send(&mut c, "app@acme.example", "held").await;
    let copy = wait_for(&archive, "held").await;
    assert!(
        text(&copy).contains("X-Journal-Filtered: quarantined by clamav: suspicious\r\n"),
        "{}",
        text(&copy)
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(with_subject(&main, "held").is_empty(), "still held");
    assert!(relay.queue().message(&id).unwrap().held);
    relay.queue().release(&id).unwrap();
    wait_for(&main, "held").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(with_subject(&archive, "held").len(), 1, "one copy only");
    relay.shutdown().await;
}
