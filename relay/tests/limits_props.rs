//! SPEC §3.6 under concurrency, for both limit stores: any interleaving of many open
//! transactions (recipients reserved, messages committed, transactions ended without a
//! message) never lets what is committed exceed any limit by even one recipient, and once
//! every transaction has ended the store answers exactly as the committed counts say (no
//! reservation leaks). The in-memory store runs many cases; the Redis store, against a real
//! `redis-server`, fewer (each step is a round trip).

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, UNIX_EPOCH};

use proptest::prelude::*;
use relay::config::LimitsConfig;
use relay::limits::{LimitHit, LimitStore, RcptQuery, Release, TxId, Usage};
use relay::{MemoryLimitStore, RedisLimitStore};

#[derive(Clone, Debug)]
enum Op {
    /// Transaction slot `tx` (of user `user`, when it opens) asks for recipient `rcpt`.
    Rcpt { tx: u8, user: u8, rcpt: u8 },
    /// The message of slot `tx` is spooled.
    Commit { tx: u8 },
    /// Slot `tx` ends without a message (RSET, QUIT, a dropped connection).
    Release { tx: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..8u8, 0..3u8, 0..12u8).prop_map(|(tx, user, rcpt)| Op::Rcpt { tx, user, rcpt }),
        1 => (0..8u8).prop_map(|tx| Op::Commit { tx }),
        1 => (0..8u8).prop_map(|tx| Op::Release { tx }),
    ]
}

#[derive(Clone, Debug)]
struct Limits {
    msgs: u64,
    uniq: u64,
    day: u64,
    peak: u64,
}

fn limits() -> impl Strategy<Value = Limits> {
    (1..6u64, 1..8u64, 1..20u64, 1..15u64).prop_map(|(msgs, uniq, day, peak)| Limits {
        msgs,
        uniq,
        day,
        peak,
    })
}

/// Runs `ops` against `store`; `Err` names the first limit exceeded.
async fn run(store: &dyn LimitStore, l: &Limits, ops: &[Op]) -> Result<(), String> {
    let config = LimitsConfig {
        user_messages_per_day: l.msgs,
        user_recipients_per_day: l.uniq,
        customer_recipients_per_day: l.day,
        customer_recipients_per10_minutes: l.peak,
        ..LimitsConfig::for_customer(1, true)
    };
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    // slot -> (transaction, user, recipients reserved so far)
    let mut open: HashMap<u8, (TxId, String, Vec<String>)> = HashMap::new();
    let mut customer = 0u64;
    let mut user_msgs: HashMap<String, u64> = HashMap::new();
    let mut user_rcpts: HashMap<String, HashSet<String>> = HashMap::new();
    let err = |e: relay::limits::LimitStoreError| e.to_string();
    for op in ops {
        match *op {
            Op::Rcpt { tx, user, rcpt } => {
                let (id, user, rcpts) = open
                    .entry(tx)
                    .or_insert_with(|| (TxId::next(), format!("u{user}@acme.example"), Vec::new()));
                let rcpt = format!("r{rcpt}@dest.example");
                if rcpts.contains(&rcpt) {
                    continue;
                }
                let hit: Option<LimitHit> = store
                    .check(RcptQuery {
                        now,
                        limits: &config,
                        tx: *id,
                        user,
                        rcpt: &rcpt,
                        pending: rcpts,
                    })
                    .await
                    .map_err(err)?;
                if hit.is_none() {
                    rcpts.push(rcpt);
                }
            }
            Op::Commit { tx } => {
                if let Some((id, user, rcpts)) = open.remove(&tx) {
                    if rcpts.is_empty() {
                        continue;
                    }
                    store
                        .record(Usage {
                            now,
                            tx: id,
                            user: &user,
                            rcpts: &rcpts,
                        })
                        .await
                        .map_err(err)?;
                    customer += rcpts.len() as u64;
                    *user_msgs.entry(user.clone()).or_default() += 1;
                    user_rcpts.entry(user).or_default().extend(rcpts);
                }
            }
            Op::Release { tx } => {
                if let Some((id, user, rcpts)) = open.remove(&tx) {
                    store
                        .release(Release {
                            now,
                            tx: id,
                            user: &user,
                            rcpts: &rcpts,
                        })
                        .await
                        .map_err(err)?;
                }
            }
        }
        if customer > l.day.min(l.peak) {
            return Err(format!(
                "customer reached {customer} > {}",
                l.day.min(l.peak)
            ));
        }
        for (u, n) in &user_msgs {
            if *n > l.msgs {
                return Err(format!("{u} sent {n} messages > {}", l.msgs));
            }
        }
        for (u, r) in &user_rcpts {
            if r.len() as u64 > l.uniq {
                return Err(format!("{u} reached {} recipients > {}", r.len(), l.uniq));
            }
        }
    }
    for (_, (id, user, rcpts)) in open.drain() {
        store
            .release(Release {
                now,
                tx: id,
                user: &user,
                rcpts: &rcpts,
            })
            .await
            .map_err(err)?;
    }
    // No leaked reservation: a new user's first recipient passes iff the customer has room.
    let fresh = store
        .check(RcptQuery {
            now,
            limits: &config,
            tx: TxId::next(),
            user: "fresh@acme.example",
            rcpt: "new@dest.example",
            pending: &[],
        })
        .await
        .map_err(err)?;
    if fresh.is_none() != (customer < l.day.min(l.peak)) {
        return Err(format!(
            "after every transaction ended, a fresh recipient got {fresh:?} with {customer} of {} used",
            l.day.min(l.peak)
        ));
    }
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn memory_store_no_interleaving_exceeds_a_limit(
        ops in proptest::collection::vec(op(), 1..200),
        l in limits(),
    ) {
        let store = MemoryLimitStore::new();
        let result = runtime().block_on(run(&store, &l, &ops));
        prop_assert!(result.is_ok(), "{}", result.unwrap_err());
    }
}

#[test]
fn redis_store_no_interleaving_exceeds_a_limit() {
    let redis = common::RedisServer::start();
    let rt = runtime();
    let case = std::sync::atomic::AtomicU32::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(24));
    let result = runner.run(
        &(proptest::collection::vec(op(), 1..120), limits()),
        |(ops, l)| {
            let case = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // A fresh organization per case: its keys start empty.
            let result = rt.block_on(async {
                let store = RedisLimitStore::new(&redis.url(), &format!("props/case{case}"))
                    .map_err(|e| e.to_string())?;
                run(&store, &l, &ops).await
            });
            prop_assert!(result.is_ok(), "{}", result.unwrap_err());
            Ok(())
        },
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}
