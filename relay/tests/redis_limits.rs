//! The Redis limit store against a real `redis-server` (SPEC §3.6): two relays sharing one
//! Redis accept exactly the customer limit under concurrent sessions, the rolling windows
//! behave as with the in-memory store, abandoned reservations come back after the session
//! timeout, and an unreachable Redis gives `451 4.3.0` at RCPT rather than no limits.

mod common;

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use common::{Client, RedisServer, config, connect, metrics, queue_id, spooled_recipients};
use relay::config::{LimitStoreConfig, LimitsConfig, RelayConfig};
use relay::{FakeClock, RelayHandle, StartOptions};
use tokio::net::TcpStream;

const DAY: Duration = Duration::from_secs(24 * 3600);
const CUSTOMER_DAY: &str = "550 5.7.1 Daily SMTP relay limit exceeded for customer.";
const CUSTOMER_PEAK: &str = "450 4.2.1 Peak SMTP relay limit exceeded for customer.";
const USER_DAY: &str = "550 5.4.5 Daily SMTP relay limit exceeded for user.";
const UNAVAILABLE: &str = "451 4.3.0 Limit service unavailable, try again later";

fn redis_config(
    dir: &std::path::Path,
    redis: &RedisServer,
    set: impl FnOnce(&mut LimitsConfig),
) -> RelayConfig {
    // Delivery goes to a closed port: accepted mail stays in the spool to be counted.
    let mut cfg = config(dir, 9);
    cfg.limit_store = LimitStoreConfig::Redis {
        url: redis.url(),
        password_file: None,
    };
    set(&mut cfg.limits);
    cfg
}

async fn start(cfg: RelayConfig, clock: &Arc<FakeClock>) -> RelayHandle {
    relay::start(
        cfg,
        StartOptions {
            clock: clock.clone(),
            ..StartOptions::default()
        },
    )
    .await
    .unwrap()
}

fn fake_clock() -> Arc<FakeClock> {
    Arc::new(FakeClock::new(
        UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    ))
}

fn rcpts(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{prefix}-{i}@dest.example"))
        .collect()
}

async fn ehlo(addr: std::net::SocketAddr) -> Client<TcpStream> {
    let mut c = connect(addr).await;
    c.cmd("EHLO client.acme.example").await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_sharing_redis_accept_exactly_the_customer_limit_under_concurrent_sessions() {
    const LIMIT: usize = 37;
    let redis = RedisServer::start();
    let clock = fake_clock();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let set = |l: &mut LimitsConfig| {
        l.customer_recipients_per_day = LIMIT as u64;
        l.customer_recipients_per10_minutes = 1_000;
    };
    let a = start(
        redis_config(&dir_a.path().join("spool"), &redis, set),
        &clock,
    )
    .await;
    let b = start(
        redis_config(&dir_b.path().join("spool"), &redis, set),
        &clock,
    )
    .await;

    // 12 concurrent sessions, half on each relay, each sending 3-recipient messages until
    // a whole message is refused (bounded: 20 messages per session).
    let mut sessions = tokio::task::JoinSet::new();
    for s in 0..12 {
        let addr = if s % 2 == 0 {
            a.smtp_addr()
        } else {
            b.smtp_addr()
        };
        sessions.spawn(async move {
            let mut c = ehlo(addr).await;
            let mut accepted = 0;
            let mut refusals = Vec::new();
            for m in 0..20 {
                let to = rcpts(&format!("s{s}m{m}"), 3);
                let (ok, refused, done) = c
                    .transaction(&format!("user{s}@acme.example"), &to, "Subject: x\r\n\r\nx")
                    .await;
                refusals.extend(refused);
                match done {
                    Some(reply) => {
                        queue_id(&reply);
                        accepted += ok.len();
                    }
                    None => break,
                }
            }
            (accepted, refusals)
        });
    }
    let mut accepted = 0;
    let mut refusals = Vec::new();
    while let Some(r) = sessions.join_next().await {
        let (n, refused) = r.unwrap();
        accepted += n;
        refusals.extend(refused);
    }
    assert_eq!(
        accepted, LIMIT,
        "recipients acknowledged by both relays together"
    );
    assert_eq!(spooled_recipients(&a) + spooled_recipients(&b), LIMIT);
    assert!(!refusals.is_empty());
    assert!(
        refusals.iter().all(|r| r == CUSTOMER_DAY),
        "unexpected refusals: {refusals:?}"
    );
    // A new session on either relay is refused too.
    let mut c = ehlo(b.smtp_addr()).await;
    let (_, refused, done) = c
        .transaction("late@acme.example", &rcpts("late", 1), "x")
        .await;
    assert_eq!((refused, done), (vec![CUSTOMER_DAY.to_string()], None));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn windows_and_unique_recipients_behave_as_in_memory() {
    let redis = RedisServer::start();
    let clock = fake_clock();
    let dir = tempfile::tempdir().unwrap();
    let relay = start(
        redis_config(&dir.path().join("spool"), &redis, |l| {
            l.user_messages_per_day = 3;
            l.user_recipients_per_day = 3;
            l.customer_recipients_per10_minutes = 6;
        }),
        &clock,
    )
    .await;
    let mut c = ehlo(relay.smtp_addr()).await;
    let to = |names: &[&str]| -> Vec<String> {
        names.iter().map(|n| format!("{n}@d.example")).collect()
    };

    // Unique recipients: repeats are free, a fourth address is refused.
    let (ok, _, done) = c
        .transaction("bob@acme.example", &to(&["a", "b"]), "x")
        .await;
    queue_id(&done.unwrap());
    assert_eq!(ok.len(), 2);
    let (ok, refused, done) = c
        .transaction("bob@acme.example", &to(&["a", "b", "c", "e"]), "x")
        .await;
    queue_id(&done.unwrap());
    assert_eq!(
        (ok, refused),
        (to(&["a", "b", "c"]), vec![USER_DAY.to_string()])
    );
    // Third message of the day is fine, the fourth is refused at its first RCPT.
    queue_id(
        &c.transaction("bob@acme.example", &to(&["a"]), "x")
            .await
            .2
            .unwrap(),
    );
    let (_, refused, done) = c.transaction("bob@acme.example", &to(&["a"]), "x").await;
    assert_eq!((refused, done), (vec![USER_DAY.to_string()], None));

    // The customer peak window: 6 recipients counted within 10 minutes.
    assert_eq!(
        c.transaction("carol@acme.example", &to(&["p"]), "x")
            .await
            .1,
        vec![CUSTOMER_PEAK.to_string()]
    );
    clock.advance(Duration::from_secs(9 * 60));
    assert_eq!(
        c.transaction("carol@acme.example", &to(&["p"]), "x")
            .await
            .1,
        vec![CUSTOMER_PEAK.to_string()]
    );
    clock.advance(Duration::from_secs(60));
    queue_id(
        &c.transaction("carol@acme.example", &to(&["p"]), "x")
            .await
            .2
            .unwrap(),
    );

    // Bob's day rolls 24 h after his first message.
    clock.advance(DAY - Duration::from_secs(10 * 60 + 60));
    assert_eq!(
        c.transaction("bob@acme.example", &to(&["z"]), "x").await.1,
        vec![USER_DAY.to_string()]
    );
    clock.advance(Duration::from_secs(60));
    queue_id(
        &c.transaction("bob@acme.example", &to(&["z"]), "x")
            .await
            .2
            .unwrap(),
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn an_ended_transaction_gives_its_recipients_back_at_once() {
    let redis = RedisServer::start();
    let clock = fake_clock();
    let dir = tempfile::tempdir().unwrap();
    let relay = start(
        redis_config(&dir.path().join("spool"), &redis, |l| {
            l.customer_recipients_per_day = 2;
            l.session_timeout_seconds = 600;
        }),
        &clock,
    )
    .await;
    let mut first = ehlo(relay.smtp_addr()).await;
    first.cmd("MAIL FROM:<bob@acme.example>").await;
    assert_eq!(first.cmd("RCPT TO:<a@d.example>").await, "250 2.1.5 OK");
    assert_eq!(first.cmd("RCPT TO:<b@d.example>").await, "250 2.1.5 OK");
    // While the transaction is open its recipients are reserved.
    let mut c = ehlo(relay.smtp_addr()).await;
    let (_, refused, _) = c
        .transaction("carol@acme.example", &rcpts("c", 1), "x")
        .await;
    assert_eq!(refused, vec![CUSTOMER_DAY.to_string()]);
    // RSET ends it: both come back at once, without waiting for any timeout.
    assert_eq!(first.cmd("RSET").await, "250 2.0.0 OK");
    let (ok, _, done) = c
        .transaction("carol@acme.example", &rcpts("c", 2), "x")
        .await;
    queue_id(&done.unwrap());
    assert_eq!(ok.len(), 2);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_reservation_whose_relay_died_expires_after_the_session_timeout() {
    use relay::limits::{LimitStore, RcptQuery, TxId};
    let redis = RedisServer::start();
    let clock = fake_clock();
    let mut limits = LimitsConfig::for_customer(1, true);
    limits.customer_recipients_per_day = 1;
    limits.session_timeout_seconds = 600;
    let store = relay::RedisLimitStore::new(&redis.url(), "acme/org").unwrap();
    let ask = |tx, rcpt: &'static str| RcptQuery {
        now: relay::Clock::now(&*clock),
        limits: &limits,
        tx: TxId(tx),
        user: "bob@acme.example",
        rcpt,
        pending: &[],
    };
    // A relay reserved and then vanished without ending its transaction.
    assert_eq!(store.check(ask(1, "a@d.example")).await.unwrap(), None);
    assert!(store.check(ask(2, "b@d.example")).await.unwrap().is_some());
    clock.advance(Duration::from_secs(600 + 61));
    assert_eq!(store.check(ask(2, "b@d.example")).await.unwrap(), None);
}

#[tokio::test]
async fn unreachable_redis_gives_451_at_rcpt_and_limits_return_with_redis() {
    let redis = RedisServer::start();
    let clock = fake_clock();
    let dir = tempfile::tempdir().unwrap();
    let relay = start(
        redis_config(&dir.path().join("spool"), &redis, |l| {
            l.customer_recipients_per_day = 1;
        }),
        &clock,
    )
    .await;
    let mut c = ehlo(relay.smtp_addr()).await;
    queue_id(
        &c.transaction("bob@acme.example", &rcpts("a", 1), "x")
            .await
            .2
            .unwrap(),
    );

    let port = redis.stop();
    c.cmd("MAIL FROM:<bob@acme.example>").await;
    assert_eq!(c.cmd("RCPT TO:<b@d.example>").await, UNAVAILABLE);
    assert_eq!(c.cmd("RSET").await, "250 2.0.0 OK");
    let text = metrics(&relay).await;
    assert!(
        text.lines()
            .any(|l| l.starts_with("smtprelay_limit_store_errors_total ") && !l.ends_with(" 0")),
        "{text}"
    );

    // Redis comes back (empty: it kept nothing). The relay reconnects on its own; bounded
    // retries, each one RCPT, until the store answers again.
    let _redis = RedisServer::start_on(port);
    let mut last = String::new();
    for _ in 0..100 {
        c.cmd("MAIL FROM:<bob@acme.example>").await;
        last = c.cmd("RCPT TO:<b@d.example>").await;
        if last != UNAVAILABLE {
            break;
        }
        c.cmd("RSET").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Redis kept nothing, so the single recipient allowed is free again; it is counted
    // when the message is accepted.
    assert_eq!(last, "250 2.1.5 OK");
    assert!(c.cmd("DATA").await.starts_with("354"));
    queue_id(&c.cmd("x\r\n.").await);
    let (_, refused, _) = c.transaction("bob@acme.example", &rcpts("c", 1), "x").await;
    assert_eq!(refused, vec![CUSTOMER_DAY.to_string()]);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_relay_starts_while_redis_is_down_and_answers_451() {
    let port = RedisServer::start().stop();
    let clock = fake_clock();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir.path().join("spool"), 9);
    cfg.limit_store = LimitStoreConfig::Redis {
        url: format!("redis://127.0.0.1:{port}/"),
        password_file: None,
    };
    let relay = start(cfg, &clock).await;
    let mut c = ehlo(relay.smtp_addr()).await;
    let (_, refused, done) = c.transaction("bob@acme.example", &rcpts("a", 2), "x").await;
    assert_eq!(
        (refused, done),
        (vec![UNAVAILABLE.to_string(), UNAVAILABLE.to_string()], None)
    );
    assert_eq!(relay.spool().depth(), 0);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_message_accepted_while_redis_is_down_is_counted_when_it_returns() {
    let redis = RedisServer::start();
    let clock = fake_clock();
    let dir = tempfile::tempdir().unwrap();
    let relay = start(
        redis_config(&dir.path().join("spool"), &redis, |l| {
            l.customer_recipients_per_day = 2;
        }),
        &clock,
    )
    .await;
    let mut c = ehlo(relay.smtp_addr()).await;
    c.cmd("MAIL FROM:<bob@acme.example>").await;
    assert_eq!(c.cmd("RCPT TO:<a@d.example>").await, "250 2.1.5 OK");
    assert_eq!(c.cmd("DATA").await, "354 End data with <CR><LF>.<CR><LF>");
    // Redis goes away between RCPT and the final dot: the message is on disk, so it is
    // acknowledged, and its count waits for Redis.
    let port = redis.stop();
    queue_id(&c.cmd("Subject: x\r\n\r\nx\r\n.").await);
    let redis = RedisServer::start_on(port);
    // Bounded: the first retries come after 1 s and 2 s.
    let counted = "relay:{acme/acme}:cs";
    for _ in 0..100 {
        if redis.get(counted).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(redis.get(counted).as_deref(), Some("1"));
    // One recipient of the two allowed is left.
    let (ok, refused, done) = c
        .transaction("carol@acme.example", &rcpts("c", 2), "x")
        .await;
    queue_id(&done.unwrap());
    assert_eq!((ok.len(), refused), (1, vec![CUSTOMER_DAY.to_string()]));
    relay.shutdown().await;
}

/// A `redis-server` that requires `password`, killed on drop.
struct PasswordRedis(std::process::Child, u16);

impl PasswordRedis {
    fn start(password: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--requirepass", password])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server");
        // Owned at once: killed and reaped on drop, also when it never starts.
        let server = Self(child, port);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server on port {port} did not start");
    }
}

impl Drop for PasswordRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_redis_password_is_read_from_its_file_and_never_needed_in_the_url() {
    let redis = PasswordRedis::start("s3cret-from-a-secret");
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, "s3cret-from-a-secret\n").unwrap();
    let url = format!("redis://127.0.0.1:{}/", redis.1);
    for (password_file, accepted) in [
        (Some(password_file.to_string_lossy().into_owned()), true),
        (None, false),
    ] {
        let clock = fake_clock();
        let spool = tempfile::tempdir().unwrap();
        let mut cfg = config(&spool.path().join("spool"), 9);
        cfg.limit_store = LimitStoreConfig::Redis {
            url: url.clone(),
            password_file,
        };
        let relay = start(cfg, &clock).await;
        let mut c = ehlo(relay.smtp_addr()).await;
        let (_, refused, _) = c.transaction("bob@acme.example", &rcpts("p", 1), "x").await;
        // Without the password Redis answers NOAUTH: the limit check cannot be made.
        assert_eq!(refused.is_empty(), accepted, "{refused:?}");
        relay.shutdown().await;
    }
}
