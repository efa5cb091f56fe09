//! Hostile and slow downstreams: a server that drips its reply, one that accepts TCP and
//! never speaks (also behind 50 MX records), one that answers the final dot late. Each ties up only its own
//! destination: mail for another route is delivered while it still hangs, and its own
//! message is deferred with a reason naming the stage, neither lost nor sent twice.

mod delivery_common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use delivery_common::dns::{Rec, dns};
use delivery_common::*;
use relay::config::{DeliveryConfig, HostConfig, RouteConfig, RouteHosts};
use relay::delivery::queue::{DirectoryStore, MessageStore, QueueManager, RecipientState};
use relay::delivery::testing::{SinkConfig, TestSink};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// What the hostile server does.
#[derive(Clone, Copy, Debug)]
enum Behaviour {
    /// Accepts the connection and never sends a byte.
    BlackHole,
    /// A normal session until MAIL; the reply to MAIL is a multi-line reply dripped one
    /// byte every `every`, never finished.
    DripMail { every: Duration },
    /// A normal session; the reply to the final dot comes after `after`.
    SlowDot { after: Duration },
}

#[derive(Default)]
struct Seen {
    accepted: AtomicUsize,
    open: AtomicUsize,
    max_open: AtomicUsize,
    closed: AtomicUsize,
    /// Messages whose final dot arrived.
    messages: AtomicUsize,
    changed: Notify,
}

struct Hostile {
    port: u16,
    seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Hostile {
    async fn start(behaviour: Behaviour) -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Seen::default());
        let s = seen.clone();
        let task = tokio::spawn(async move {
            let mut sessions = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                s.accepted.fetch_add(1, Ordering::SeqCst);
                let open = s.open.fetch_add(1, Ordering::SeqCst) + 1;
                s.max_open.fetch_max(open, Ordering::SeqCst);
                s.changed.notify_waiters();
                let s = s.clone();
                sessions.spawn(async move {
                    let _ = serve(tcp, behaviour, &s).await;
                    s.open.fetch_sub(1, Ordering::SeqCst);
                    s.closed.fetch_add(1, Ordering::SeqCst);
                    s.changed.notify_waiters();
                });
            }
        });
        Hostile { port, seen, task }
    }

    /// Waits (bounded by the caller) until `f` holds.
    async fn until(&self, f: impl Fn(&Seen) -> bool) {
        loop {
            let changed = self.seen.changed.notified();
            if f(&self.seen) {
                return;
            }
            changed.await;
        }
    }
}

/// Serves one connection until the client goes away.
async fn serve(tcp: TcpStream, behaviour: Behaviour, seen: &Seen) -> std::io::Result<()> {
    let mut io = BufReader::new(tcp);
    let mut line = String::new();
    if let Behaviour::BlackHole = behaviour {
        // Reads (and ignores) until the client closes.
        while io.read_line(&mut line).await? > 0 {}
        return Ok(());
    }
    io.write_all(b"220 hostile.test ESMTP\r\n").await?;
    loop {
        line.clear();
        if io.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_ascii_uppercase();
        let reply: &[u8] = if cmd.starts_with("EHLO") {
            b"250 hostile.test\r\n"
        } else if cmd.starts_with("MAIL") {
            if let Behaviour::DripMail { every } = behaviour {
                // One byte at a time, well inside any per-read limit, and the reply never
                // ends: every line is a continuation line.
                for b in b"250-dripping\r\n".iter().cycle() {
                    io.write_all(&[*b]).await?;
                    io.flush().await?;
                    tokio::time::sleep(every).await;
                }
            }
            b"250 2.1.0 ok\r\n"
        } else if cmd.starts_with("RCPT") {
            b"250 2.1.5 ok\r\n"
        } else if cmd == "DATA" {
            io.write_all(b"354 go ahead\r\n").await?;
            loop {
                line.clear();
                if io.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" {
                    break;
                }
            }
            seen.messages.fetch_add(1, Ordering::SeqCst);
            seen.changed.notify_waiters();
            if let Behaviour::SlowDot { after } = behaviour {
                // Notices a client that gives up while it waits.
                line.clear();
                tokio::select! {
                    _ = tokio::time::sleep(after) => {}
                    read = io.read_line(&mut line) => {
                        if read? == 0 {
                            return Ok(());
                        }
                    }
                }
            }
            b"250 2.0.0 queued\r\n"
        } else if cmd == "QUIT" {
            io.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            b"250 2.0.0 ok\r\n"
        };
        io.write_all(reply).await?;
    }
}

/// Small limits: every stage 2 s, connect (the old per-read limit) 1 s.
fn quick(configure: impl FnOnce(&mut DeliveryConfig)) -> DeliveryConfig {
    let mut cfg = delivery_config(&[]);
    cfg.connect_timeout_seconds = 1;
    cfg.connection_idle_seconds = 0;
    let t = &mut cfg.stage_timeouts;
    t.greeting_seconds = 2;
    t.mail_seconds = 2;
    t.rcpt_seconds = 2;
    t.data_seconds = 2;
    t.data_block_seconds = 2;
    t.final_dot_seconds = 2;
    cfg.attempt_timeout_seconds = 30;
    configure(&mut cfg);
    cfg
}

fn two_routes(good: u16, bad: u16) -> Vec<RouteConfig> {
    vec![
        route("good", domains(&["good.test"]), "127.0.0.1", good, no_tls()),
        route("bad", domains(&["bad.test"]), "127.0.0.1", bad, no_tls()),
    ]
}

/// The queue manager delivering continuously, as the relay runs it.
struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Shuts the manager down and waits for the attempts under way.
    async fn stop(self) {
        let _ = self.stop.send(());
        bounded(self.task).await.unwrap();
    }
}

fn run(manager: &QueueManager<DirectoryStore>) -> Running {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let m = manager.clone();
    let task = tokio::spawn(async move {
        m.run(async {
            let _ = stopped.await;
        })
        .await
    });
    Running { stop, task }
}

/// Waits until the recipient of `id` is pending again with a reason, and returns it.
async fn deferral_reason(h: &Harness, id: &str, rcpt: &str) -> String {
    for _ in 0..200 {
        if let Some(state) = h.manager.state(id)
            && let Some(RecipientState::Pending {
                last_error: Some(e),
            }) = state.recipients.get(rcpt)
        {
            return e.clone();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{id} was not deferred");
}

/// The common shape: the hostile route's message goes first and hangs; a message for the
/// good route submitted after it arrives while the hostile attempt is still open; then
/// the hostile attempt ends at its stage limit and its message is deferred, still queued.
async fn other_mail_flows_while(behaviour: Behaviour, cfg: DeliveryConfig) -> String {
    let hostile = Hostile::start(behaviour).await;
    let sink = TestSink::start(SinkConfig::default()).await.unwrap();
    let h = Harness::new(two_routes(sink.port(), hostile.port), cfg);
    let running = run(&h.manager);

    let bad = h.send(
        "alice@acme.test",
        &["victim@bad.test"],
        &message("alice@acme.test", "victim@bad.test", "stuck"),
    );
    bounded(hostile.until(|s| s.accepted.load(Ordering::SeqCst) >= 1)).await;
    h.send(
        "alice@acme.test",
        &["bob@good.test"],
        &message("alice@acme.test", "bob@good.test", "flows"),
    );
    bounded(sink.wait_for_messages(1)).await;
    assert_eq!(
        hostile.seen.closed.load(Ordering::SeqCst),
        0,
        "the good route's mail arrived only after the hostile attempt ended"
    );
    assert_eq!(sink.messages()[0].rcpt_to, ["bob@good.test"]);

    bounded(hostile.until(|s| s.closed.load(Ordering::SeqCst) >= 1)).await;
    let reason = bounded(deferral_reason(&h, &bad, "victim@bad.test")).await;
    assert!(
        h.store.list().unwrap().contains(&bad),
        "the deferred message is still spooled"
    );
    assert_eq!(
        hostile.seen.accepted.load(Ordering::SeqCst),
        1,
        "one attempt, no second connection"
    );
    running.stop().await;
    assert_eq!(sink.messages().len(), 1, "the good message went once");
    reason
}

#[tokio::test]
async fn a_drip_fed_reply_ends_at_the_stage_total_while_other_mail_flows() {
    // One byte every 300 ms: each read is well inside the old per-read limit (1 s), so a
    // limit per read would wait for ever; the MAIL stage has 2 s in all.
    let reason = other_mail_flows_while(
        Behaviour::DripMail {
            every: Duration::from_millis(300),
        },
        quick(|_| {}),
    )
    .await;
    assert!(reason.starts_with("MAIL timeout"), "{reason}");
}

#[tokio::test]
async fn a_black_holed_destination_ends_at_the_greeting_limit_while_other_mail_flows() {
    let reason = other_mail_flows_while(Behaviour::BlackHole, quick(|_| {})).await;
    assert!(reason.starts_with("greeting timeout"), "{reason}");
}

#[tokio::test]
async fn a_final_dot_answered_too_late_is_deferred_while_other_mail_flows() {
    let reason = other_mail_flows_while(
        Behaviour::SlowDot {
            after: Duration::from_secs(4),
        },
        quick(|_| {}),
    )
    .await;
    assert!(reason.starts_with("final dot timeout"), "{reason}");
}

#[tokio::test]
async fn the_attempt_limit_defers_a_group_whose_stages_each_stay_in_time() {
    // Every stage may take 20 s, but one attempt only 1 s in all.
    let reason = other_mail_flows_while(
        Behaviour::BlackHole,
        quick(|c| {
            c.stage_timeouts.greeting_seconds = 20;
            c.attempt_timeout_seconds = 1;
        }),
    )
    .await;
    assert!(reason.starts_with("attempt timeout"), "{reason}");
}

/// A downstream that scans content for longer than the old per-read limit (1 s here, as
/// 30 s was) but within the final-dot limit: delivered once, not failed and sent again.
#[tokio::test]
async fn a_slow_final_dot_within_its_limit_is_delivered_exactly_once() {
    let hostile = Hostile::start(Behaviour::SlowDot {
        after: Duration::from_millis(2500),
    })
    .await;
    let sink = TestSink::start(SinkConfig::default()).await.unwrap();
    let cfg = quick(|c| c.stage_timeouts.final_dot_seconds = 10);
    let h = Harness::new(two_routes(sink.port(), hostile.port), cfg);
    let id = h.send(
        "alice@acme.test",
        &["scanned@bad.test"],
        &message("alice@acme.test", "scanned@bad.test", "scan"),
    );
    let report = bounded(h.manager.run_due()).await;
    assert_eq!((report.delivered, report.deferred), (1, 0));
    assert_eq!(hostile.seen.messages.load(Ordering::SeqCst), 1);
    assert!(!h.store.list().unwrap().contains(&id), "done and removed");
    // Nothing left to send again.
    h.clock.advance(Duration::from_secs(3600));
    assert_eq!(bounded(h.manager.run_due()).await.messages, 0);
    assert_eq!(hostile.seen.messages.load(Ordering::SeqCst), 1);
    assert_eq!(hostile.seen.accepted.load(Ordering::SeqCst), 1);
}

/// A destination gets at most `destination_concurrency` of the `concurrency` slots: with
/// 3 slots, 2 per destination and 5 messages for a black hole, the good route still has
/// a slot and its mail goes at once; the black hole never sees more than 2 sessions.
#[tokio::test]
async fn a_hostile_destination_holds_only_its_own_slots() {
    let hostile = Hostile::start(Behaviour::BlackHole).await;
    let sink = TestSink::start(SinkConfig::default()).await.unwrap();
    let cfg = quick(|c| {
        c.concurrency = 3;
        c.destination_concurrency = 2;
    });
    let h = Harness::new(two_routes(sink.port(), hostile.port), cfg);
    let running = run(&h.manager);
    let mut stuck = Vec::new();
    for i in 0..5 {
        let rcpt = format!("v{i}@bad.test");
        stuck.push(h.send(
            "alice@acme.test",
            &[&rcpt],
            &message("alice@acme.test", &rcpt, &format!("stuck{i}")),
        ));
    }
    bounded(hostile.until(|s| s.accepted.load(Ordering::SeqCst) >= 2)).await;
    h.send(
        "alice@acme.test",
        &["bob@good.test"],
        &message("alice@acme.test", "bob@good.test", "flows"),
    );
    bounded(sink.wait_for_messages(1)).await;
    assert_eq!(hostile.seen.closed.load(Ordering::SeqCst), 0);
    // Every stuck message gets its attempt, two at a time.
    bounded(hostile.until(|s| s.closed.load(Ordering::SeqCst) >= 5)).await;
    running.stop().await;
    assert_eq!(hostile.seen.max_open.load(Ordering::SeqCst), 2);
    assert_eq!(hostile.seen.accepted.load(Ordering::SeqCst), 5);
    for id in &stuck {
        let state = h.manager.state(id).expect("deferred, with a state file");
        assert!(
            state.recipients.values().all(|r| matches!(
                r,
                RecipientState::Pending { last_error: Some(e) } if e.starts_with("greeting timeout")
            )),
            "{state:?}"
        );
    }
    assert_eq!(
        h.store.list().unwrap().len(),
        5,
        "the stuck messages are kept"
    );
    let metrics = h.metrics_text();
    let line = format!(
        "smtprelay_deliveries_total{{route=\"bad\",host=\"127.0.0.1:{}\",result=\"deferred\"}} 5",
        hostile.port
    );
    assert!(metrics.contains(&line), "{metrics}");
}

/// Messages waiting for a full destination do not hold the places of others: 30 messages
/// for a black hole with one slot, at most 2 × 2 messages held at once, and mail for the
/// good route still goes at once.
#[tokio::test]
async fn a_backlog_for_a_full_destination_does_not_hold_the_queue() {
    let hostile = Hostile::start(Behaviour::BlackHole).await;
    let sink = TestSink::start(SinkConfig::default()).await.unwrap();
    let cfg = quick(|c| {
        c.concurrency = 2;
        c.destination_concurrency = 1;
    });
    let h = Harness::new(two_routes(sink.port(), hostile.port), cfg);
    for i in 0..30 {
        let rcpt = format!("v{i}@bad.test");
        h.send(
            "alice@acme.test",
            &[&rcpt],
            &message("alice@acme.test", &rcpt, &format!("stuck{i}")),
        );
    }
    let running = run(&h.manager);
    bounded(hostile.until(|s| s.accepted.load(Ordering::SeqCst) >= 1)).await;
    h.send(
        "alice@acme.test",
        &["bob@good.test"],
        &message("alice@acme.test", "bob@good.test", "flows"),
    );
    bounded(sink.wait_for_messages(1)).await;
    assert_eq!(
        hostile.seen.closed.load(Ordering::SeqCst),
        0,
        "the good message waited for the black hole"
    );
    assert_eq!(hostile.seen.max_open.load(Ordering::SeqCst), 1);
    running.stop().await;
    // Nothing was lost on the way: the 30 are still queued, the good one is gone.
    assert_eq!(h.store.list().unwrap().len(), 30);
}

/// A recipient domain that publishes 50 MX hosts, every one black-holed: one attempt
/// dials at most 5 of them (each ends at the greeting limit), mail for another route is
/// delivered while they hang, and the message is deferred, still spooled.
#[tokio::test]
async fn fifty_black_holed_mx_hosts_cost_five_sessions_while_other_mail_flows() {
    let hostile = Hostile::start(Behaviour::BlackHole).await;
    let sink = TestSink::start(SinkConfig::default()).await.unwrap();
    let names: Vec<String> = (0..50).map(|i| format!("mx{i:02}.bad.test.")).collect();
    let mut records = Vec::new();
    for (i, n) in names.iter().enumerate() {
        records.push(Rec::Mx("bad.test.", 10 + i as u16, n));
        records.push(Rec::Addr(n, IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }
    let (ns, _server) = dns(&records).await;
    let cfg = quick(|c| {
        c.nameservers = vec![ns];
        c.stage_timeouts.greeting_seconds = 1;
        allow_loopback_mx(c);
    });
    let mut routes = two_routes(sink.port(), hostile.port);
    routes[1].hosts = RouteHosts::Single(HostConfig {
        host: "bad.test".into(),
        port: hostile.port,
    });
    routes[1].mx_lookup = true;
    let h = Harness::new(routes, cfg);
    let running = run(&h.manager);

    let bad = h.send(
        "alice@acme.test",
        &["victim@bad.test"],
        &message("alice@acme.test", "victim@bad.test", "fifty"),
    );
    bounded(hostile.until(|s| s.accepted.load(Ordering::SeqCst) >= 1)).await;
    h.send(
        "alice@acme.test",
        &["bob@good.test"],
        &message("alice@acme.test", "bob@good.test", "flows"),
    );
    bounded(sink.wait_for_messages(1)).await;
    assert!(
        hostile.seen.closed.load(Ordering::SeqCst) < 5,
        "the good route's mail waited for every MX host of the hostile domain"
    );

    let reason = bounded(deferral_reason(&h, &bad, "victim@bad.test")).await;
    assert!(reason.starts_with("greeting timeout"), "{reason}");
    running.stop().await;
    assert_eq!(
        hostile.seen.accepted.load(Ordering::SeqCst),
        5,
        "at most 5 MX hosts per attempt"
    );
    assert!(h.store.list().unwrap().contains(&bad), "still spooled");
    assert_eq!(sink.messages().len(), 1);
}

/// A downstream that sends one reply line too many after each message (a broken server,
/// or an LMTP server answering once per recipient). Were its connection cached with that
/// line unread, the next transaction would read every reply one command late: a refusal
/// taken for the acceptance before it. The connection is closed instead, and each
/// recipient of the next message gets the answer the server gave it.
#[tokio::test]
async fn a_connection_with_an_unread_reply_line_is_closed_not_reused() {
    let sink = TestSink::start(SinkConfig {
        pipelining: true,
        extra_reply_after_data: Some("250 2.0.0 one reply too many".into()),
        rcpt_replies: [
            ("later@good.test", "451 4.2.0 try again later"),
            ("never@good.test", "550 5.1.1 no such user"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let home = TestSink::start(SinkConfig::default()).await.unwrap();
    let mut cfg = delivery_config(&[]);
    cfg.connection_idle_seconds = 300;
    let routes = vec![
        route(
            "good",
            domains(&["good.test"]),
            "127.0.0.1",
            sink.port(),
            no_tls(),
        ),
        route(
            "home",
            domains(&["acme.test"]),
            "127.0.0.1",
            home.port(),
            no_tls(),
        ),
    ];
    let h = Harness::new(routes, cfg);
    h.send(
        "alice@acme.test",
        &["first@good.test"],
        &message("alice@acme.test", "first@good.test", "first"),
    );
    let report = bounded(h.manager.run_due()).await;
    assert_eq!(report.delivered, 1);
    // The extra line has surely arrived by now.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rcpts = ["later@good.test", "never@good.test", "ok@good.test"];
    let second = h.send(
        "alice@acme.test",
        &rcpts,
        &message("alice@acme.test", "ok@good.test", "second"),
    );
    bounded(h.manager.run_due()).await;
    let state = h.manager.state(&second).expect("later@ is still pending");
    let of = |rcpt: &str| state.recipients.get(rcpt).cloned();
    assert!(
        matches!(of("later@good.test"), Some(RecipientState::Pending { last_error: Some(e) }) if e.contains("451 4.2.0")),
        "{state:?}"
    );
    assert!(
        matches!(of("never@good.test"), Some(RecipientState::Bounced { status, .. }) if status == "5.1.1"),
        "{state:?}"
    );
    assert!(
        matches!(of("ok@good.test"), Some(RecipientState::Delivered { .. })),
        "{state:?}"
    );
    let messages = sink.messages();
    assert_eq!(messages.len(), 2, "each message once");
    assert_eq!(messages[1].rcpt_to, ["ok@good.test"]);
}
