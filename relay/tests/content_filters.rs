//! Content filters before the `250` (SPEC §3.4), end to end over loopback: a client relays
//! through the relay, a scripted milter judges each message, and the test checks what the
//! client was answered and what the downstream sink received.

mod common;

use std::time::Duration;

use common::{Client, config, connect, metrics};
use relay::config::{ContentFilterConfig, OnUnavailable, RelayConfig};
use relay::delivery::testing::{SinkConfig, TestSink};
use relay::filter::milter::fake::{Answer, FakeMilter, Received, at_eob, optneg, reply};
use relay::filter::milter::protocol::command;
use relay::{RelayHandle, StartOptions};
use tokio::net::TcpStream;

/// Every action and protocol step offered to us; no step skipped (the fake answers each).
const ALL_ACTIONS: u32 = 0x1ff;

fn filter(name: &str, milter: &FakeMilter, on_unavailable: OnUnavailable) -> ContentFilterConfig {
    ContentFilterConfig {
        name: name.into(),
        host: milter.addr.ip().to_string(),
        port: milter.addr.port(),
        timeout_seconds: 2,
        on_unavailable,
        max_message_bytes: None,
    }
}

async fn relay_with(
    dir: &std::path::Path,
    sink: &TestSink,
    filters: Vec<ContentFilterConfig>,
) -> RelayHandle {
    let mut cfg: RelayConfig = config(&dir.join("spool"), sink.port());
    cfg.content_filters = filters;
    relay::start(cfg, StartOptions::default()).await.unwrap()
}

async fn ehlo(relay: &RelayHandle) -> Client<TcpStream> {
    let mut c = connect(relay.smtp_addr()).await;
    assert!(c.cmd("EHLO client.acme.example").await.starts_with("250"));
    c
}

/// Sends one message to bob@dest.example; the reply to its final dot.
async fn send(c: &mut Client<TcpStream>, body: &str) -> String {
    let (_, _, done) = c
        .transaction(
            "app@acme.example",
            &["bob@dest.example".to_string()],
            &format!("From: app@acme.example\r\nSubject: hello\r\n\r\n{body}"),
        )
        .await;
    done.unwrap()
}

async fn accepting(eob: Vec<Vec<u8>>) -> FakeMilter {
    FakeMilter::start(optneg(6, ALL_ACTIONS, 0, &[]), at_eob(eob)).await
}

fn replycode(text: &str) -> Vec<u8> {
    let mut data = text.as_bytes().to_vec();
    data.push(0);
    reply(b'y', &data)
}

fn header(code: u8, name: &str, value: &str) -> Vec<u8> {
    let mut data = name.as_bytes().to_vec();
    data.push(0);
    data.extend_from_slice(value.as_bytes());
    data.push(0);
    reply(code, &data)
}

/// `SMFIR_INSHEADER`: index, name, value.
fn insert_header(index: u32, name: &str, value: &str) -> Vec<u8> {
    let mut frame = header(b'i', name, value);
    let index = index.to_be_bytes();
    frame.splice(1..1, index);
    frame
}

fn nul_terminated(code: u8, text: &str) -> Vec<u8> {
    let mut data = text.as_bytes().to_vec();
    data.push(0);
    reply(code, &data)
}

/// Whether the filter was shown a message (its reachability probes only negotiate).
fn shown_a_message(milter: &FakeMilter) -> bool {
    milter.received().iter().any(|r| r.code == command::MAIL)
}

async fn nothing_delivered(sink: &TestSink, relay: &RelayHandle) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sink.messages().is_empty(), "{:?}", sink.messages());
    assert_eq!(relay.spool().depth(), 0);
}

#[tokio::test]
async fn a_reject_is_550_with_the_filters_text_and_nothing_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let sink = TestSink::start(SinkConfig::default()).await.unwrap();
    let milter = accepting(vec![replycode("554 5.7.1 Gtube pattern")]).await;
    let relay = relay_with(
        dir.path(),
        &sink,
        vec![filter("rspamd", &milter, OnUnavailable::TempFail)],
    )
    .await;
    let mut c = ehlo(&relay).await;
    assert_eq!(send(&mut c, "spam").await, "550 5.7.1 Gtube pattern");
    // The session goes on: the next transaction starts cleanly.
    assert_eq!(c.cmd("RSET").await, "250 2.0.0 OK");
    nothing_delivered(&sink, &relay).await;
    let m = metrics(&relay).await;
    assert!(
        m.contains(r#"smtprelay_filter_verdicts_total{filter="rspamd",verdict="reject"} 1"#),
        "{m}"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn a_reject_without_text_and_a_tempfail_get_the_relays_words() {
    let dir = tempfile::tempdir().unwrap();
    let sink = TestSink::start(SinkConfig::default()).await.unwrap();
    let bare = accepting(vec![reply(b'r', b"")]).await;
    let relay = relay_with(
        dir.path(),
        &sink,
        vec![filter("clamav", &bare, OnUnavailable::TempFail)],
    )
    .await;
    let mut c = ehlo(&relay).await;
    assert_eq!(
        send(&mut c, "x").await,
        "550 5.7.1 Message rejected by content filter"
    );
    relay.shutdown().await;

    let dir = tempfile::tempdir().unwrap();
    let temp = accepting(vec![reply(b't', b"")]).await;
    let relay = relay_with(
        dir.path(),
        &sink,
        vec![filter("clamav", &temp, OnUnavailable::TempFail)],
    )
    .await;
    let mut c = ehlo(&relay).await;
    assert_eq!(
        send(&mut c, "x").await,
        "451 4.7.1 Message deferred by content filter, try again later"
    );
    nothing_delivered(&sink, &relay).await;
    relay.shutdown().await;
}

#[tokio::test]
async fn a_discarded_message_gets_250_and_is_never_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let sink = TestSink::start(SinkConfig::default()).await.unwrap();
    let milter = accepting(vec![reply(b'd', b"")]).await;
    let relay = relay_with(
        dir.path(),
        &sink,
        vec![filter("rspamd", &milter, OnUnavailable::TempFail)],
    )
    .await;
    let mut c = ehlo(&relay).await;
    assert!(
        send(&mut c, "x")
            .await
            .starts_with("250 2.0.0 OK queued as ")
    );
    nothing_delivered(&sink, &relay).await;
    let m = metrics(&relay).await;
    assert!(
        m.contains(r#"smtprelay_filter_verdicts_total{filter="rspamd",verdict="discard"} 1"#),
        "{m}"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn a_quarantined_message_is_held_with_the_reason_until_released() {
    let dir = tempfile::tempdir().unwrap();
    let sink = TestSink::start(SinkConfig::default()).await.unwrap();
    let milter = accepting(vec![
        nul_terminated(b'q', "suspicious attachment"),
        reply(b'c', b""),
    ])
    .await;
    let relay = relay_with(
        dir.path(),
        &sink,
        vec![filter("clamav", &milter, OnUnavailable::TempFail)],
    )
    .await;
    let mut c = ehlo(&relay).await;
    let done = send(&mut c, "x").await;
    let id = done
        .strip_prefix("250 2.0.0 OK queued as ")
        .unwrap()
        .to_string();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(sink.messages().is_empty());
    let queued = relay.queue().message(&id).expect("the message is queued");
    assert!(queued.held, "a quarantined message is held");
    let stored = relay.queue().stored(&id).unwrap();
    assert_eq!(
        stored.envelope.quarantine.as_deref(),
        Some("clamav: suspicious attachment")
    );
    // Held across a restart too.
    relay.shutdown().await;
    let relay = relay_with(dir.path(), &sink, vec![]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(sink.messages().is_empty(), "still held after a restart");
    assert!(relay.queue().message(&id).unwrap().held);
    relay.queue().release(&id).unwrap();
    sink.wait_for_messages(1).await;
    relay.shutdown().await;
}

#[tokio::test]
async fn header_and_recipient_changes_apply_to_what_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let sink = TestSink::start(SinkConfig::default()).await.unwrap();
    let milter = accepting(vec![
        header(b'h', "X-Spam-Status", "No, score=0.1"),
        insert_header(0, "Authentication-Results", "relay; auth=pass"),
        nul_terminated(b'+', "<archive@dest.example>"),
        nul_terminated(b'-', "<bob@dest.example>"),
        reply(b'a', b""),
    ])
    .await;
    let relay = relay_with(
        dir.path(),
        &sink,
        vec![filter("rspamd", &milter, OnUnavailable::TempFail)],
    )
    .await;
    let mut c = ehlo(&relay).await;
    assert!(
        send(&mut c, "the body\r\nsecond line")
            .await
            .starts_with("250 ")
    );
    sink.wait_for_messages(1).await;
    let m = &sink.messages()[0];
    assert_eq!(m.rcpt_to, vec!["archive@dest.example".to_string()]);
    let text = String::from_utf8_lossy(&m.data);
    assert!(
        text.starts_with("Authentication-Results: relay; auth=pass\r\nReceived: "),
        "{text}"
    );
    assert!(
        text.contains(
            "Subject: hello\r\nX-Spam-Status: No, score=0.1\r\n\r\nthe body\r\nsecond line"
        ),
        "{text}"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn edits_to_a_large_message_keep_its_body_whole() {
    let dir = tempfile::tempdir().unwrap();
    let sink = TestSink::start(SinkConfig::default()).await.unwrap();
    let milter = accepting(vec![
        header(b'h', "X-Virus-Scanned", "clamav-milter"),
        reply(b'a', b""),
    ])
    .await;
    let relay = relay_with(
        dir.path(),
        &sink,
        vec![filter("clamav", &milter, OnUnavailable::TempFail)],
    )
    .await;
    let mut c = ehlo(&relay).await;
    // 1 MB of body: more than the spool keeps in memory while a message arrives.
    let line = "0123456789".repeat(9);
    let body: Vec<String> = (0..11_000).map(|i| format!("{i:06} {line}")).collect();
    let body = body.join("\r\n");
    assert!(send(&mut c, &body).await.starts_with("250 "));
    sink.wait_for_messages(1).await;
    let text = String::from_utf8(sink.messages()[0].data.clone()).unwrap();
    let (head, delivered_body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.ends_with("X-Virus-Scanned: clamav-milter"), "{head}");
    assert_eq!(delivered_body.trim_end_matches("\r\n"), body);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_filter_that_is_down_applies_on_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let sink = TestSink::start(SinkConfig::default()).await.unwrap();
    // A port nothing listens on.
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut cfg = ContentFilterConfig {
        name: "rspamd".into(),
        host: "127.0.0.1".into(),
        port: down.port(),
        timeout_seconds: 2,
        on_unavailable: OnUnavailable::TempFail,
        max_message_bytes: None,
    };
    let relay = relay_with(dir.path(), &sink, vec![cfg.clone()]).await;
    let mut c = ehlo(&relay).await;
    assert_eq!(
        send(&mut c, "x").await,
        "451 4.7.1 Content filter unavailable, try again later"
    );
    nothing_delivered(&sink, &relay).await;
    relay.shutdown().await;

    let dir = tempfile::tempdir().unwrap();
    cfg.on_unavailable = OnUnavailable::Accept;
    let relay = relay_with(dir.path(), &sink, vec![cfg]).await;
    let mut c = ehlo(&relay).await;
    assert!(send(&mut c, "x").await.starts_with("250 "));
    sink.wait_for_messages(1).await;
    let m = metrics(&relay).await;
    assert!(
        m.contains(r#"smtprelay_filter_unavailable_total{filter="rspamd"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"smtprelay_filter_reachable{filter="rspamd"} 0"#),
        "{m}"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn a_filter_that_never_answers_times_out_and_the_session_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let sink = TestSink::start(SinkConfig::default()).await.unwrap();
    let script = Box::new(|r: &Received| {
        if r.code == command::END_OF_BODY {
            Answer::Hang
        } else {
            Answer::Reply(vec![reply(b'c', b"")])
        }
    });
    let milter = FakeMilter::start(optneg(6, ALL_ACTIONS, 0, &[]), script).await;
    let mut f = filter("slow", &milter, OnUnavailable::TempFail);
    f.timeout_seconds = 1;
    let relay = relay_with(dir.path(), &sink, vec![f]).await;
    let mut c = ehlo(&relay).await;
    let started = std::time::Instant::now();
    assert_eq!(
        send(&mut c, "x").await,
        "451 4.7.1 Content filter unavailable, try again later"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK");
    relay.shutdown().await;
}

#[tokio::test]
async fn filters_run_in_order_and_the_first_reject_ends_it() {
    let dir = tempfile::tempdir().unwrap();
    let sink = TestSink::start(SinkConfig::default()).await.unwrap();
    let first = accepting(vec![header(b'h', "X-First", "seen"), reply(b'a', b"")]).await;
    let second = accepting(vec![replycode("550 5.7.1 Virus found")]).await;
    let third = accepting(vec![reply(b'a', b"")]).await;
    let relay = relay_with(
        dir.path(),
        &sink,
        vec![
            filter("first", &first, OnUnavailable::TempFail),
            filter("second", &second, OnUnavailable::TempFail),
            filter("third", &third, OnUnavailable::TempFail),
        ],
    )
    .await;
    let mut c = ehlo(&relay).await;
    assert_eq!(send(&mut c, "x").await, "550 5.7.1 Virus found");
    // The second filter was shown the first one's header.
    let headers: Vec<String> = second
        .received()
        .iter()
        .filter(|r| r.code == command::HEADER)
        .map(|r| String::from_utf8_lossy(&r.data).into_owned())
        .collect();
    assert!(
        headers.iter().any(|h| h.starts_with("X-First\0")),
        "{headers:?}"
    );
    assert!(
        !shown_a_message(&third),
        "the chain ended at the reject: {}",
        third.codes()
    );
    nothing_delivered(&sink, &relay).await;
    relay.shutdown().await;
}

#[tokio::test]
async fn a_message_over_max_message_bytes_skips_the_filter() {
    let dir = tempfile::tempdir().unwrap();
    let sink = TestSink::start(SinkConfig::default()).await.unwrap();
    let milter = accepting(vec![replycode("550 5.7.1 no")]).await;
    let mut f = filter("rspamd", &milter, OnUnavailable::TempFail);
    f.max_message_bytes = Some(500);
    let relay = relay_with(dir.path(), &sink, vec![f]).await;
    let mut c = ehlo(&relay).await;
    assert!(send(&mut c, &"x".repeat(600)).await.starts_with("250 "));
    sink.wait_for_messages(1).await;
    assert!(!shown_a_message(&milter), "{}", milter.codes());
    let m = metrics(&relay).await;
    assert!(
        m.contains(r#"smtprelay_filter_verdicts_total{filter="rspamd",verdict="skipped"} 1"#),
        "{m}"
    );
    relay.shutdown().await;
}

mod never_a_250_for_a_refusal {
    //! Arbitrary replies at the end of the message (valid edits, then a final frame that
    //! may be anything, garbage included) never crash the relay and never turn a filter's
    //! refusal into a `250`.

    use super::*;
    use proptest::prelude::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Debug)]
    enum Last {
        Reject,
        Tempfail,
        ReplyCode(u16),
        Discard,
        Accept,
        Continue,
        Garbage(Vec<u8>),
    }

    fn last() -> impl Strategy<Value = Last> {
        prop_oneof![
            Just(Last::Reject),
            Just(Last::Tempfail),
            (400u16..600).prop_map(Last::ReplyCode),
            Just(Last::Discard),
            Just(Last::Accept),
            Just(Last::Continue),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Last::Garbage),
        ]
    }

    fn edits() -> impl Strategy<Value = Vec<Vec<u8>>> {
        proptest::collection::vec(
            prop_oneof![
                "[A-Za-z][A-Za-z0-9-]{0,20}".prop_map(|n| header(b'h', &n, "v")),
                "[a-z]{1,8}".prop_map(|l| nul_terminated(b'+', &format!("<{l}@dest.example>"))),
            ],
            0..4,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        #[test]
        fn arbitrary_filter_replies(edits in edits(), last in last()) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let sink = TestSink::start(SinkConfig::default()).await.unwrap();
                let frames = Arc::new(Mutex::new(Vec::new()));
                let mut eob = edits.clone();
                eob.push(match &last {
                    Last::Reject => reply(b'r', b""),
                    Last::Tempfail => reply(b't', b""),
                    Last::ReplyCode(code) => replycode(&format!("{code} x.y.z no")),
                    Last::Discard => reply(b'd', b""),
                    Last::Accept => reply(b'a', b""),
                    Last::Continue => reply(b'c', b""),
                    Last::Garbage(bytes) => bytes.clone(),
                });
                *frames.lock().unwrap() = eob;
                let shared = frames.clone();
                let script = Box::new(move |r: &Received| {
                    if r.code == command::END_OF_BODY {
                        Answer::ReplyAndClose(shared.lock().unwrap().clone())
                    } else {
                        Answer::Reply(vec![reply(b'c', b"")])
                    }
                });
                let milter = FakeMilter::start(optneg(6, ALL_ACTIONS, 0, &[]), script).await;
                let relay = relay_with(dir.path(), &sink, vec![filter("f", &milter, OnUnavailable::TempFail)]).await;
                let mut c = ehlo(&relay).await;
                let done = send(&mut c, "x").await;
                let refused = matches!(last, Last::Reject | Last::Tempfail)
                    || matches!(last, Last::ReplyCode(code) if (400..600).contains(&code));
                if refused {
                    assert!(!done.starts_with("250"), "{last:?} gave {done}");
                }
                assert!(
                    done.starts_with("250") || done.starts_with("451") || done.starts_with("550") || done.starts_with("554"),
                    "{done}"
                );
                // The relay and the session are still there.
                assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK");
                if !done.starts_with("250") || matches!(last, Last::Discard) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    assert!(sink.messages().is_empty());
                }
                relay.shutdown().await;
            });
        }
    }
}
