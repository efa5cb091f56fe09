//! Queue manager behaviour over real loopback sockets: delivery, grouping, bounces with
//! DSNs, retries on the schedule, connection reuse and restart without loss.

mod delivery_common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use delivery_common::*;
use relay::config::{RouteHosts, RouteMatcher, WeightedHostConfig};
use relay::delivery::dsn::parse_dsn;
use relay::delivery::queue::MessageStore;
use relay::delivery::testing::{SinkConfig, TestSink};

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

#[tokio::test]
async fn single_host_delivery_reaches_the_sink_and_leaves_the_queue() {
    let sink = TestSink::start(SinkConfig::default()).await.unwrap();
    let routes = vec![route(
        "all",
        RouteMatcher::Default,
        "127.0.0.1",
        sink.port(),
        no_tls(),
    )];
    let h = Harness::new(routes, delivery_config(&[]));
    let data = message("alice@acme.test", "bob@dest.test", "m1");
    let id = h.send("alice@acme.test", &["bob@dest.test"], &data);

    let report = bounded(h.manager.run_due()).await;
    assert_eq!((report.delivered, report.completed), (1, 1));

    let got = sink.messages();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].mail_from, "alice@acme.test");
    assert_eq!(got[0].rcpt_to, ["bob@dest.test"]);
    assert_eq!(
        got[0].data, data,
        "content arrives byte for byte (dot-stuffing undone)"
    );
    assert!(
        h.store.list().unwrap().is_empty(),
        "delivered message left the spool"
    );
    assert!(h.manager.state(&id).is_none(), "state file removed");
    let metrics = h.metrics_text();
    let line = format!(
        "smtprelay_deliveries_total{{route=\"all\",host=\"127.0.0.1:{}\",result=\"delivered\"}} 1",
        sink.port()
    );
    assert!(metrics.contains(&line), "{metrics}");
    assert!(metrics.contains("smtprelay_queue_depth 0"), "{metrics}");
}

#[tokio::test]
async fn run_delivers_submitted_messages_until_shutdown() {
    let sink = TestSink::start(SinkConfig::default()).await.unwrap();
    let routes = vec![route(
        "all",
        RouteMatcher::Default,
        "127.0.0.1",
        sink.port(),
        no_tls(),
    )];
    let h = Harness::new(routes, delivery_config(&[]));
    let Harness {
        store,
        clock,
        manager,
        dir: _dir,
        ..
    } = h;
    let manager = Arc::new(manager);
    let handle = manager.handle();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = {
        let m = manager.clone();
        tokio::spawn(async move {
            m.run(async {
                let _ = stopped.await;
            })
            .await
        })
    };
    for i in 0..3 {
        let data = message("alice@acme.test", "bob@dest.test", &format!("live{i}"));
        let id = store
            .enqueue(
                "alice@acme.test",
                &["bob@dest.test".to_string()],
                &data,
                clock.now_time(),
            )
            .unwrap();
        handle.submit(&id);
    }
    bounded(sink.wait_for_messages(3)).await;
    stop.send(()).unwrap();
    bounded(running).await.unwrap();
    assert_eq!(sink.messages().len(), 3);
    // A pass always finishes before shutdown: nothing half-done is left behind.
    assert!(store.list().unwrap().is_empty());
}

#[tokio::test]
async fn a_server_without_ehlo_gets_helo() {
    let sink = TestSink::start(SinkConfig {
        refuse_ehlo: true,
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let routes = vec![route(
        "all",
        RouteMatcher::Default,
        "127.0.0.1",
        sink.port(),
        no_tls(),
    )];
    let h = Harness::new(routes, delivery_config(&[]));
    h.send(
        "alice@acme.test",
        &["bob@dest.test"],
        &message("alice@acme.test", "bob@dest.test", "helo"),
    );
    let report = bounded(h.manager.run_due()).await;
    assert_eq!(report.delivered, 1);
    assert_eq!(sink.messages()[0].rcpt_to, ["bob@dest.test"]);
}

#[tokio::test]
async fn recipients_sharing_a_route_share_one_delivery() {
    let a = TestSink::start(SinkConfig::default()).await.unwrap();
    let b = TestSink::start(SinkConfig::default()).await.unwrap();
    let routes = vec![
        route(
            "a",
            domains(&["a.test", "*.a.test"]),
            "127.0.0.1",
            a.port(),
            no_tls(),
        ),
        route("b", RouteMatcher::Default, "127.0.0.1", b.port(), no_tls()),
    ];
    let h = Harness::new(routes, delivery_config(&[]));
    h.send(
        "alice@acme.test",
        &["x@a.test", "y@other.test", "z@sub.a.test"],
        &message("alice@acme.test", "x@a.test", "grouped"),
    );
    bounded(h.manager.run_due()).await;
    let got_a = a.messages();
    assert_eq!(
        got_a.len(),
        1,
        "one delivery for both recipients of route a"
    );
    assert_eq!(got_a[0].rcpt_to, ["x@a.test", "z@sub.a.test"]);
    let got_b = b.messages();
    assert_eq!(got_b.len(), 1);
    assert_eq!(got_b[0].rcpt_to, ["y@other.test"]);
}

#[tokio::test]
async fn five_xx_bounces_at_once_with_an_rfc3464_dsn_to_the_sender() {
    let dest = TestSink::start(SinkConfig {
        rcpt_replies: HashMap::from([(
            "nobody@dest.test".to_string(),
            "550 5.1.1 <nobody@dest.test>: no such user".to_string(),
        )]),
        pipelining: true,
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let home = TestSink::start(SinkConfig::default()).await.unwrap();
    let routes = vec![
        route(
            "home",
            domains(&["acme.test"]),
            "127.0.0.1",
            home.port(),
            no_tls(),
        ),
        route(
            "out",
            RouteMatcher::Default,
            "127.0.0.1",
            dest.port(),
            no_tls(),
        ),
    ];
    let h = Harness::new(routes, delivery_config(&[]));
    let original = message("alice@acme.test", "nobody@dest.test", "bounce-me");
    h.send(
        "alice@acme.test",
        &["nobody@dest.test", "bob@dest.test"],
        &original,
    );

    let first = bounded(h.manager.run_due()).await;
    assert_eq!(
        (first.delivered, first.bounced, first.dsns_queued),
        (1, 1, 1)
    );
    assert_eq!(dest.messages().len(), 1);
    assert_eq!(dest.messages()[0].rcpt_to, ["bob@dest.test"]);

    // The DSN is queued like any message and goes to the sender's route.
    let second = bounded(h.manager.run_due()).await;
    assert_eq!(second.delivered, 1);
    let dsns = home.messages();
    assert_eq!(dsns.len(), 1);
    assert_eq!(dsns[0].mail_from, "", "DSNs come from the null sender");
    assert_eq!(dsns[0].rcpt_to, ["alice@acme.test"]);
    let dsn = parse_dsn(&dsns[0].data).expect("a delivery-status report");
    assert_eq!(dsn.report_type, "delivery-status");
    assert_eq!(dsn.reporting_mta, "relay.acme.test");
    assert_eq!(dsn.recipients.len(), 1);
    assert_eq!(dsn.recipients[0].final_recipient, "nobody@dest.test");
    assert_eq!(dsn.recipients[0].action, "failed");
    assert_eq!(dsn.recipients[0].status, "5.1.1");
    assert!(
        dsn.recipients[0]
            .diagnostic
            .ends_with("550 5.1.1 <nobody@dest.test>: no such user"),
        "{}",
        dsn.recipients[0].diagnostic
    );
    assert!(dsn.original_headers.contains("Subject: bounce-me"));
    assert!(h.store.list().unwrap().is_empty());
}

#[tokio::test]
async fn null_sender_message_is_never_bounced() {
    let dest = TestSink::start(SinkConfig {
        rcpt_replies: HashMap::from([(
            "nobody@dest.test".to_string(),
            "550 5.1.1 no such user".to_string(),
        )]),
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let routes = vec![route(
        "out",
        RouteMatcher::Default,
        "127.0.0.1",
        dest.port(),
        no_tls(),
    )];
    let h = Harness::new(routes, delivery_config(&[]));
    h.send(
        "",
        &["nobody@dest.test"],
        &message("", "nobody@dest.test", "auto-reply"),
    );
    let report = bounded(h.manager.run_due()).await;
    assert_eq!(
        (report.bounced, report.dsns_queued, report.completed),
        (1, 0, 1)
    );
    assert!(
        h.store.list().unwrap().is_empty(),
        "no DSN was queued and the message is gone"
    );
    let again = bounded(h.manager.run_due()).await;
    assert_eq!(again.messages, 0);
    assert!(dest.messages().is_empty());
}

#[tokio::test]
async fn four_xx_is_retried_on_the_schedule_then_doubling() {
    let dest = TestSink::start(SinkConfig {
        rcpt_replies: HashMap::from([(
            "later@dest.test".to_string(),
            "451 4.2.0 mailbox busy".to_string(),
        )]),
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let routes = vec![route(
        "out",
        RouteMatcher::Default,
        "127.0.0.1",
        dest.port(),
        no_tls(),
    )];
    let h = Harness::new(routes, delivery_config(&[]));
    let id = h.send(
        "alice@acme.test",
        &["later@dest.test"],
        &message("alice@acme.test", "later@dest.test", "retry"),
    );

    let mut delays = Vec::new();
    for _ in 0..7 {
        let before = h.clock.now_time();
        let report = bounded(h.manager.run_due()).await;
        assert_eq!(report.deferred, 1);
        let next = h.manager.next_attempt(&id).expect("still queued");
        delays.push(next.duration_since(before).unwrap().as_secs());
        // Nothing is due before the next attempt time.
        h.clock.set(next - Duration::from_secs(1));
        assert_eq!(bounded(h.manager.run_due()).await.messages, 0);
        h.clock.set(next);
    }
    assert_eq!(delays, [60, 60, 180, 300, 600, 1200, 2400]);
    let metrics = h.metrics_text();
    // The last pass ran one second before the 8th attempt, 4800 s after arrival.
    assert!(
        metrics.contains("smtprelay_queue_oldest_message_age_seconds 4799"),
        "{metrics}"
    );
    assert!(metrics.contains("smtprelay_queue_depth 1"), "{metrics}");
    assert!(metrics.contains("result=\"deferred\"} 7"), "{metrics}");
    let state = h.manager.state(&id).unwrap();
    assert_eq!(state.attempts, 7);
    assert!(dest.messages().is_empty());
    assert!(h.store.list().unwrap().contains(&id));
}

#[tokio::test]
async fn temporary_failures_bounce_with_5_4_7_after_the_queue_lifetime() {
    let dest = TestSink::start(SinkConfig {
        rcpt_replies: HashMap::from([(
            "later@dest.test".to_string(),
            "451 4.2.0 mailbox busy".to_string(),
        )]),
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let home = TestSink::start(SinkConfig::default()).await.unwrap();
    let routes = vec![
        route(
            "home",
            domains(&["acme.test"]),
            "127.0.0.1",
            home.port(),
            no_tls(),
        ),
        route(
            "out",
            RouteMatcher::Default,
            "127.0.0.1",
            dest.port(),
            no_tls(),
        ),
    ];
    let mut cfg = delivery_config(&[]);
    cfg.max_queue_lifetime_seconds = 100;
    let h = Harness::new(routes, cfg);
    let id = h.send(
        "alice@acme.test",
        &["later@dest.test"],
        &message("alice@acme.test", "later@dest.test", "expire"),
    );
    bounded(h.manager.run_due()).await;
    assert_eq!(
        h.manager.next_attempt(&id),
        Some(t0() + Duration::from_secs(60))
    );
    h.clock.set(t0() + Duration::from_secs(60));
    bounded(h.manager.run_due()).await;
    // The second delay (60 s) would pass the lifetime: the last try is at expiry.
    assert_eq!(
        h.manager.next_attempt(&id),
        Some(t0() + Duration::from_secs(100))
    );
    h.clock.set(t0() + Duration::from_secs(100));
    let report = bounded(h.manager.run_due()).await;
    assert_eq!((report.bounced, report.dsns_queued), (1, 1));
    // The recipient left the queue bounced, 100 s after it arrived.
    let metrics = h.metrics_text();
    assert!(
        metrics.contains("smtprelay_queue_time_seconds_sum{result=\"bounced\"} 100.0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("smtprelay_queue_time_seconds_count{result=\"bounced\"} 1"),
        "{metrics}"
    );
    bounded(h.manager.run_due()).await;
    let dsn = parse_dsn(&home.messages()[0].data).unwrap();
    assert_eq!(dsn.recipients[0].status, "5.4.7");
    assert!(
        dsn.recipients[0]
            .diagnostic
            .contains("451 4.2.0 mailbox busy"),
        "{}",
        dsn.recipients[0].diagnostic
    );
}

#[tokio::test]
async fn messages_to_one_host_reuse_connections() {
    let sink = TestSink::start(SinkConfig {
        pipelining: true,
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let routes = vec![route(
        "all",
        RouteMatcher::Default,
        "127.0.0.1",
        sink.port(),
        no_tls(),
    )];
    let mut cfg = delivery_config(&[]);
    cfg.concurrency = 2;
    let h = Harness::new(routes, cfg);
    const N: usize = 12;
    for i in 0..N {
        h.send(
            "alice@acme.test",
            &["bob@dest.test"],
            &message("alice@acme.test", "bob@dest.test", &format!("m{i}")),
        );
    }
    let report = bounded(h.manager.run_due()).await;
    assert_eq!(report.delivered, N);
    // A second batch reuses the idle sessions too.
    for i in 0..N {
        h.send(
            "alice@acme.test",
            &["bob@dest.test"],
            &message("alice@acme.test", "bob@dest.test", &format!("n{i}")),
        );
    }
    bounded(h.manager.run_due()).await;
    assert_eq!(sink.messages().len(), 2 * N);
    assert!(
        sink.connections() <= 2,
        "{} connections for {} messages",
        sink.connections(),
        2 * N
    );
}

/// A server that ends each session after a message (a per-session limit) leaves closed
/// sessions in the cache. Reuse finds that out from the RSET that leads the next
/// transaction and moves the message to a new session: every message is delivered in its
/// first attempt, none deferred, with and without PIPELINING.
#[tokio::test]
async fn a_cached_session_the_server_closed_is_replaced_without_deferring() {
    for pipelining in [true, false] {
        let sink = TestSink::start(SinkConfig {
            pipelining,
            close_after: Some(1),
            ..SinkConfig::default()
        })
        .await
        .unwrap();
        let routes = vec![route(
            "all",
            RouteMatcher::Default,
            "127.0.0.1",
            sink.port(),
            no_tls(),
        )];
        let mut cfg = delivery_config(&[]);
        cfg.concurrency = 1;
        let h = Harness::new(routes, cfg);
        for round in 0..3 {
            h.send(
                "alice@acme.test",
                &["bob@dest.test"],
                &message("alice@acme.test", "bob@dest.test", &format!("r{round}")),
            );
            let report = bounded(h.manager.run_due()).await;
            assert_eq!(
                report.delivered, 1,
                "round {round}, pipelining {pipelining}"
            );
            assert_eq!(report.deferred, 0, "round {round}, pipelining {pipelining}");
        }
        assert_eq!(sink.messages().len(), 3, "pipelining {pipelining}");
        assert_eq!(sink.connections(), 3, "pipelining {pipelining}");
    }
}

#[tokio::test]
async fn both_primaries_down_sends_to_the_secondary() {
    let secondary = TestSink::start(SinkConfig::default()).await.unwrap();
    let mut r = route("pool", RouteMatcher::Default, "unused", 25, no_tls());
    r.hosts = RouteHosts::Pool {
        primary: vec![
            WeightedHostConfig {
                host: "127.0.0.1".into(),
                port: closed_port(),
                load_percent: 70,
            },
            WeightedHostConfig {
                host: "127.0.0.1".into(),
                port: closed_port(),
                load_percent: 30,
            },
        ],
        secondary: vec![WeightedHostConfig {
            host: "127.0.0.1".into(),
            port: secondary.port(),
            load_percent: 100,
        }],
    };
    let h = Harness::new(vec![r], delivery_config(&[]));
    h.send(
        "alice@acme.test",
        &["bob@dest.test"],
        &message("alice@acme.test", "bob@dest.test", "failover"),
    );
    let report = bounded(h.manager.run_due()).await;
    assert_eq!(report.delivered, 1);
    assert_eq!(secondary.messages().len(), 1);
}

#[tokio::test]
async fn a_primary_that_comes_back_gets_traffic_again_after_its_backoff() {
    let secondary = TestSink::start(SinkConfig::default()).await.unwrap();
    let primary_port = closed_port();
    let mut r = route("pool", RouteMatcher::Default, "unused", 25, no_tls());
    r.hosts = RouteHosts::Pool {
        primary: vec![WeightedHostConfig {
            host: "127.0.0.1".into(),
            port: primary_port,
            load_percent: 100,
        }],
        secondary: vec![WeightedHostConfig {
            host: "127.0.0.1".into(),
            port: secondary.port(),
            load_percent: 100,
        }],
    };
    let h = Harness::new(vec![r], delivery_config(&[]));
    h.send(
        "alice@acme.test",
        &["bob@dest.test"],
        &message("alice@acme.test", "bob@dest.test", "one"),
    );
    bounded(h.manager.run_due()).await;
    assert_eq!(
        secondary.messages().len(),
        1,
        "primary down: the secondary took it"
    );

    // The primary comes back, but it is in backoff (30 s): not tried yet.
    let primary = TestSink::start_on(
        format!("127.0.0.1:{primary_port}").parse().unwrap(),
        SinkConfig::default(),
    )
    .await
    .unwrap();
    h.send(
        "alice@acme.test",
        &["bob@dest.test"],
        &message("alice@acme.test", "bob@dest.test", "two"),
    );
    bounded(h.manager.run_due()).await;
    assert_eq!(secondary.messages().len(), 2);
    assert_eq!(primary.connections(), 0);

    // After the backoff it is probed again and takes the traffic.
    h.clock.advance(Duration::from_secs(30));
    h.send(
        "alice@acme.test",
        &["bob@dest.test"],
        &message("alice@acme.test", "bob@dest.test", "three"),
    );
    bounded(h.manager.run_due()).await;
    assert_eq!(primary.messages().len(), 1);
    assert_eq!(secondary.messages().len(), 2);
}

#[tokio::test]
async fn restart_in_the_middle_of_a_run_loses_nothing() {
    // The sink takes two messages, then keeps the third waiting for its reply.
    let sink = TestSink::start(SinkConfig {
        pipelining: true,
        hold_after: Some(2),
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let routes = vec![route(
        "all",
        RouteMatcher::Default,
        "127.0.0.1",
        sink.port(),
        no_tls(),
    )];
    let mut cfg = delivery_config(&[]);
    cfg.concurrency = 1;
    let h = Harness::new(routes.clone(), cfg.clone());
    let mut expected = BTreeSet::new();
    for i in 0..5 {
        let subject = format!("msg{i}");
        let rcpts = [format!("r{i}a@dest.test"), format!("r{i}b@dest.test")];
        h.send(
            "alice@acme.test",
            &[&rcpts[0], &rcpts[1]],
            &message("alice@acme.test", &rcpts[0], &subject),
        );
        for r in rcpts {
            expected.insert((subject.clone(), r));
        }
    }
    let Harness {
        dir,
        store,
        clock,
        manager,
        ..
    } = h;
    let manager = Arc::new(manager);
    let running = {
        let m = manager.clone();
        tokio::spawn(async move { m.run_due().await })
    };
    bounded(sink.wait_for_messages(3)).await;
    // Crash: the run stops mid-delivery and the manager goes away.
    running.abort();
    let _ = running.await;
    drop(manager);
    assert!(
        !store.list().unwrap().is_empty(),
        "undelivered messages are still spooled"
    );

    sink.release();
    let mut registry = prometheus_client::registry::Registry::with_prefix(relay::metrics::PREFIX);
    let restarted = Harness::manager(&dir, &store, &clock, routes, cfg, &mut registry);
    bounded(restarted.run_due()).await;

    let mut got = BTreeSet::new();
    for m in sink.messages() {
        let body = text(&m.data);
        let subject = body
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap()
            .to_string();
        for r in m.rcpt_to {
            got.insert((subject.clone(), r));
        }
    }
    let missing: Vec<_> = expected.difference(&got).collect();
    assert!(missing.is_empty(), "lost recipients: {missing:?}");
    assert!(
        store.list().unwrap().is_empty(),
        "everything delivered and removed"
    );
    assert!(restarted.queued().is_empty());
}

/// When the per-recipient state cannot be saved (a full disk, here a state directory that
/// refuses every write), the process keeps it in memory: a recipient it saw delivered is
/// never sent the message again (it used to be, every 60 s), the failure is counted, and
/// the save is tried again until it works.
#[tokio::test]
async fn a_state_that_cannot_be_saved_never_delivers_a_recipient_twice() {
    let dest = TestSink::start(SinkConfig {
        rcpt_replies: HashMap::from([(
            "later@dest.test".to_string(),
            "451 4.2.0 mailbox busy".to_string(),
        )]),
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let routes = vec![route(
        "out",
        RouteMatcher::Default,
        "127.0.0.1",
        dest.port(),
        no_tls(),
    )];
    let h = Harness::new(routes, delivery_config(&[]));
    // The state directory becomes a file: every save (and every load) fails.
    let state_dir = h.dir.path().join("state");
    std::fs::remove_dir_all(&state_dir).unwrap();
    std::fs::write(&state_dir, b"not a directory").unwrap();
    let id = h.send(
        "alice@acme.test",
        &["now@dest.test", "later@dest.test"],
        &message("alice@acme.test", "now@dest.test", "twice?"),
    );
    for _ in 0..4 {
        let report = bounded(h.manager.run_due()).await;
        assert_eq!(report.messages, 1);
        h.clock.advance(Duration::from_secs(61));
    }
    let to_now = dest
        .messages()
        .iter()
        .filter(|m| m.rcpt_to.iter().any(|r| r == "now@dest.test"))
        .count();
    assert_eq!(to_now, 1, "now@dest.test got the message {to_now} times");
    let metrics = h.metrics_text();
    assert!(
        metrics.contains("smtprelay_delivery_state_save_failures_total 4"),
        "{metrics}"
    );
    // The disk has room again: the state is saved at the next turn.
    std::fs::remove_file(&state_dir).unwrap();
    std::fs::create_dir(&state_dir).unwrap();
    bounded(h.manager.run_due()).await;
    let state = h.manager.state(&id).expect("saved once the disk takes it");
    assert!(matches!(
        state.recipients.get("now@dest.test"),
        Some(relay::delivery::queue::RecipientState::Delivered { .. })
    ));
    assert_eq!(dest.messages().len(), 1);
}
