//! A route's `rateLimit` (SPEC §2.4): delivery never sends faster than
//! `messagesPerSecond` nor holds more than `maxConnections` connections to the route's
//! hosts; mail waits in the queue. A provider's throttling 4xx defers, never bounces.
//! (Durations are asserted only from below: a slow machine cannot make them fail.)

mod common;

use std::time::{Duration, Instant};

use common::connect;
use relay::config::RouteRateLimit;
use relay::delivery::testing::{SinkConfig, TestSink};
use relay::{RelayConfig, RelayHandle, StartOptions};

async fn relay_to(sink: &TestSink, dir: &std::path::Path, limit: RouteRateLimit) -> RelayHandle {
    let mut cfg = RelayConfig::loopback(&dir.join("spool").to_string_lossy(), sink.port());
    cfg.routes[0].rate_limit = Some(limit);
    relay::start(cfg, StartOptions::default()).await.unwrap()
}

async fn send(relay: &RelayHandle, n: usize) {
    let mut c = connect(relay.smtp_addr()).await;
    c.cmd("EHLO client.acme.example").await;
    for i in 0..n {
        let (_, _, done) = c
            .transaction(
                "app@acme.example",
                &[format!("user{i}@provider.example")],
                &format!("Subject: rate {i}\r\n\r\nbody {i}"),
            )
            .await;
        assert!(done.unwrap().starts_with("250 "));
    }
    c.cmd("QUIT").await;
}

#[tokio::test]
async fn messages_per_second_spaces_the_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let sink = TestSink::start(SinkConfig::default()).await.unwrap();
    let relay = relay_to(
        &sink,
        dir.path(),
        RouteRateLimit {
            messages_per_second: Some(5),
            max_connections: None,
        },
    )
    .await;
    let started = Instant::now();
    send(&relay, 12).await;
    tokio::time::timeout(Duration::from_secs(60), sink.wait_for_messages(12))
        .await
        .expect("every message is delivered");
    // 12 transactions at 5 per second: the last starts 11 × 200 ms after the first.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2150),
        "12 messages in {took:?}"
    );
    assert_eq!(sink.messages().len(), 12);
    relay.shutdown().await;
}

#[tokio::test]
async fn max_connections_caps_the_sessions_to_the_route() {
    let dir = tempfile::tempdir().unwrap();
    // The sink withholds every final reply: each session stays busy with one message.
    let sink = TestSink::start(SinkConfig {
        hold_after: Some(0),
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let relay = relay_to(
        &sink,
        dir.path(),
        RouteRateLimit {
            messages_per_second: None,
            max_connections: Some(2),
        },
    )
    .await;
    send(&relay, 6).await;
    tokio::time::timeout(Duration::from_secs(30), sink.wait_for_messages(2))
        .await
        .unwrap();
    // Given time, no third session opens while two are busy.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(sink.connections(), 2);
    assert_eq!(sink.messages().len(), 2);
    sink.release();
    tokio::time::timeout(Duration::from_secs(30), sink.wait_for_messages(6))
        .await
        .expect("the rest goes once sessions are free");
    assert!(sink.connections() <= 2, "{} sessions", sink.connections());
    relay.shutdown().await;
}

#[tokio::test]
async fn a_throttling_reply_defers_and_bounces_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sink = TestSink::start(SinkConfig {
        mail_reply: Some("454 4.7.0 Throttling failure: Maximum sending rate exceeded.".into()),
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let relay = relay_to(
        &sink,
        dir.path(),
        RouteRateLimit {
            messages_per_second: Some(50),
            max_connections: None,
        },
    )
    .await;
    send(&relay, 3).await;
    let queue = relay.queue();
    let deferred = async {
        loop {
            let ids = queue.queued();
            if ids.len() == 3
                && ids
                    .iter()
                    .all(|id| queue.state(id).is_some_and(|s| s.attempts >= 1))
            {
                return ids;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let ids = tokio::time::timeout(Duration::from_secs(30), deferred)
        .await
        .expect("every message is deferred");
    for id in ids {
        let state = queue.state(&id).unwrap();
        let reasons: Vec<String> = state
            .recipients
            .values()
            .map(|r| format!("{r:?}"))
            .collect();
        assert!(
            reasons.iter().all(|r| r.contains("Throttling failure")),
            "{reasons:?}"
        );
    }
    // Nothing bounced: no DSN went out (it would reach this sink's MAIL too).
    assert!(sink.messages().is_empty());
    relay.shutdown().await;
}

#[tokio::test]
async fn replicas_sharing_redis_share_one_send_rate() {
    let redis = common::RedisServer::start();
    let sink = TestSink::start(SinkConfig::default()).await.unwrap();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut relays = Vec::new();
    for dir in &dirs {
        let mut cfg =
            RelayConfig::loopback(&dir.path().join("spool").to_string_lossy(), sink.port());
        cfg.routes[0].rate_limit = Some(RouteRateLimit {
            messages_per_second: Some(5),
            max_connections: None,
        });
        cfg.limit_store = relay::config::LimitStoreConfig::Redis {
            url: redis.url(),
            password_file: None,
        };
        relays.push(relay::start(cfg, StartOptions::default()).await.unwrap());
    }
    let started = Instant::now();
    tokio::join!(send(&relays[0], 6), send(&relays[1], 6));
    tokio::time::timeout(Duration::from_secs(60), sink.wait_for_messages(12))
        .await
        .expect("every message is delivered");
    // One budget of 5 per second for both: 12 turns, the last 11 × 200 ms after the
    // first (each relay on its own would be done after 5 × 200 ms).
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2150),
        "12 messages in {took:?}"
    );
    for r in relays {
        r.shutdown().await;
    }
}
