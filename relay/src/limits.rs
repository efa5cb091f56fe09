//! Relay limits of SPEC §3.6: per-user and per-customer counters over rolling windows.
//!
//! Counters live behind [`LimitStore`], an object-safe trait whose methods return boxed
//! futures, so a shared (Redis) store can be added without touching the session. The
//! in-memory store keeps one-minute buckets: an event at minute `m` counts in the 24-hour
//! window until minute `m + 1440` and in the 10-minute window until minute `m + 10`.
//! Time comes in as a value taken from an injected [`Clock`], so tests move it freely.
//!
//! Limits are checked at RCPT ("would this recipient exceed?", counting the recipients
//! already accepted in the same transaction) and recorded once the message is spooled.
//! This module does not know about SMTP sequencing; it owns the limit reply texts.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::LimitsConfig;
use crate::smtp::Reply;

pub use crate::clock::{Clock, FakeClock, SystemClock};

/// A boxed future, for object-safe async traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which limit a recipient would exceed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitHit {
    UserMessagesPerDay,
    UserRecipientsPerDay,
    CustomerRecipientsPerDay,
    CustomerRecipientsPer10Minutes,
}

impl LimitHit {
    /// The exact reply of SPEC §3.6.
    pub fn reply(self) -> Reply {
        match self {
            LimitHit::UserMessagesPerDay | LimitHit::UserRecipientsPerDay => {
                Reply::new(550, "5.4.5 Daily SMTP relay limit exceeded for user.")
            }
            LimitHit::CustomerRecipientsPerDay => {
                Reply::new(550, "5.7.1 Daily SMTP relay limit exceeded for customer.")
            }
            LimitHit::CustomerRecipientsPer10Minutes => {
                Reply::new(450, "4.2.1 Peak SMTP relay limit exceeded for customer.")
            }
        }
    }

    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            LimitHit::UserMessagesPerDay => "user_messages_per_day",
            LimitHit::UserRecipientsPerDay => "user_recipients_per_day",
            LimitHit::CustomerRecipientsPerDay => "customer_recipients_per_day",
            LimitHit::CustomerRecipientsPer10Minutes => "customer_recipients_per_10_minutes",
        }
    }
}

/// "May `user` add recipient `rcpt` to a message that already has `pending` recipients?"
#[derive(Clone, Copy, Debug)]
pub struct RcptQuery<'a> {
    pub now: SystemTime,
    pub limits: &'a LimitsConfig,
    /// Lower-case AUTH identity, else the envelope sender as given.
    pub user: &'a str,
    /// Lower-case recipient address.
    pub rcpt: &'a str,
    /// Recipients already accepted in this transaction (lower-case).
    pub pending: &'a [String],
}

/// A message that was spooled: count it.
#[derive(Clone, Copy, Debug)]
pub struct Usage<'a> {
    pub now: SystemTime,
    pub user: &'a str,
    pub rcpts: &'a [String],
}

/// The limit store cannot answer (e.g. Redis unreachable): the session replies 451.
#[derive(Debug, thiserror::Error)]
#[error("limit store unavailable: {0}")]
pub struct LimitStoreError(pub String);

/// Where counters live. Implementations must be safe to share between sessions.
pub trait LimitStore: Send + Sync {
    /// `Ok(None)` when the recipient is within every limit.
    fn check<'a>(
        &'a self,
        query: RcptQuery<'a>,
    ) -> BoxFuture<'a, Result<Option<LimitHit>, LimitStoreError>>;

    /// Counts an accepted message.
    fn record<'a>(&'a self, usage: Usage<'a>) -> BoxFuture<'a, Result<(), LimitStoreError>>;
}

const DAY_MINUTES: u64 = 24 * 60;
const PEAK_MINUTES: u64 = 10;

fn minute(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / 60
}

/// Counts per one-minute bucket, oldest first.
#[derive(Debug, Default)]
struct Buckets(VecDeque<(u64, u64)>);

impl Buckets {
    fn add(&mut self, now_min: u64, n: u64) {
        match self.0.back_mut() {
            Some((m, c)) if *m == now_min => *c += n,
            _ => self.0.push_back((now_min, n)),
        }
    }

    /// Drops buckets that left a `window`-minute window ending at `now_min`.
    fn expire(&mut self, now_min: u64, window: u64) {
        while self.0.front().is_some_and(|(m, _)| m + window <= now_min) {
            self.0.pop_front();
        }
    }

    fn sum_within(&self, now_min: u64, window: u64) -> u64 {
        self.0
            .iter()
            .rev()
            .take_while(|(m, _)| m + window > now_min)
            .map(|(_, c)| c)
            .sum()
    }
}

#[derive(Debug, Default)]
struct UserUsage {
    messages: Buckets,
    /// Recipient → minute it was last sent to.
    recipients: HashMap<String, u64>,
    oldest_recipient_minute: u64,
}

impl UserUsage {
    fn expire(&mut self, now_min: u64) {
        self.messages.expire(now_min, DAY_MINUTES);
        if self.oldest_recipient_minute + DAY_MINUTES <= now_min {
            self.recipients.retain(|_, m| *m + DAY_MINUTES > now_min);
            self.oldest_recipient_minute =
                self.recipients.values().copied().min().unwrap_or(now_min);
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    customer: Buckets,
    users: HashMap<String, UserUsage>,
}

/// Counters in this process (one replica).
#[derive(Debug, Default)]
pub struct MemoryLimitStore {
    counters: Mutex<Counters>,
}

impl MemoryLimitStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn check_now(&self, q: &RcptQuery<'_>) -> Option<LimitHit> {
        let now_min = minute(q.now);
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let user = counters.users.get_mut(q.user);
        let (user_messages, known_rcpt, unique) = match user {
            Some(u) => {
                u.expire(now_min);
                (
                    u.messages.sum_within(now_min, DAY_MINUTES),
                    u.recipients.contains_key(q.rcpt),
                    u.recipients.len() as u64,
                )
            }
            None => (0, false, 0),
        };
        if user_messages + 1 > q.limits.user_messages_per_day {
            return Some(LimitHit::UserMessagesPerDay);
        }
        let new_in_pending: HashSet<&str> = q
            .pending
            .iter()
            .map(String::as_str)
            .filter(|r| {
                counters
                    .users
                    .get(q.user)
                    .is_none_or(|u| !u.recipients.contains_key(*r))
            })
            .collect();
        let rcpt_is_new = !known_rcpt && !new_in_pending.contains(q.rcpt);
        if rcpt_is_new
            && unique + new_in_pending.len() as u64 + 1 > q.limits.user_recipients_per_day
        {
            return Some(LimitHit::UserRecipientsPerDay);
        }
        counters.customer.expire(now_min, DAY_MINUTES);
        let pending = q.pending.len() as u64;
        if counters.customer.sum_within(now_min, DAY_MINUTES) + pending + 1
            > q.limits.customer_recipients_per_day
        {
            return Some(LimitHit::CustomerRecipientsPerDay);
        }
        if counters.customer.sum_within(now_min, PEAK_MINUTES) + pending + 1
            > q.limits.customer_recipients_per10_minutes
        {
            return Some(LimitHit::CustomerRecipientsPer10Minutes);
        }
        None
    }

    fn record_now(&self, u: &Usage<'_>) {
        let now_min = minute(u.now);
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        counters.customer.add(now_min, u.rcpts.len() as u64);
        let user = counters.users.entry(u.user.to_string()).or_default();
        user.expire(now_min);
        if user.recipients.is_empty() {
            user.oldest_recipient_minute = now_min;
        }
        user.messages.add(now_min, 1);
        for r in u.rcpts {
            user.recipients.insert(r.clone(), now_min);
        }
    }
}

impl LimitStore for MemoryLimitStore {
    fn check<'a>(
        &'a self,
        query: RcptQuery<'a>,
    ) -> BoxFuture<'a, Result<Option<LimitHit>, LimitStoreError>> {
        Box::pin(async move { Ok(self.check_now(&query)) })
    }

    fn record<'a>(&'a self, usage: Usage<'a>) -> BoxFuture<'a, Result<(), LimitStoreError>> {
        Box::pin(async move {
            self.record_now(&usage);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(msgs: u64, uniq: u64, day: u64, peak: u64) -> LimitsConfig {
        LimitsConfig {
            user_messages_per_day: msgs,
            user_recipients_per_day: uniq,
            customer_recipients_per_day: day,
            customer_recipients_per10_minutes: peak,
            ..LimitsConfig::for_customer(1, true)
        }
    }

    fn check(
        s: &MemoryLimitStore,
        now: SystemTime,
        l: &LimitsConfig,
        user: &str,
        rcpt: &str,
        pending: &[String],
    ) -> Option<LimitHit> {
        s.check_now(&RcptQuery {
            now,
            limits: l,
            user,
            rcpt,
            pending,
        })
    }

    #[test]
    fn unique_recipients_repeat_for_free_and_the_window_rolls() {
        let s = MemoryLimitStore::new();
        let l = limits(100, 2, 100, 100);
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000 * 60);
        s.record_now(&Usage {
            now: t0,
            user: "u",
            rcpts: &["a@x".into(), "b@x".into()],
        });
        assert_eq!(check(&s, t0, &l, "u", "a@x", &[]), None);
        assert_eq!(
            check(&s, t0, &l, "u", "c@x", &[]),
            Some(LimitHit::UserRecipientsPerDay)
        );
        let almost = t0 + Duration::from_secs(DAY_MINUTES * 60 - 60);
        assert_eq!(
            check(&s, almost, &l, "u", "c@x", &[]),
            Some(LimitHit::UserRecipientsPerDay)
        );
        let day = t0 + Duration::from_secs(DAY_MINUTES * 60);
        assert_eq!(check(&s, day, &l, "u", "c@x", &[]), None);
    }

    #[test]
    fn pending_recipients_count_toward_customer_limits() {
        let s = MemoryLimitStore::new();
        let l = limits(100, 100, 100, 3);
        let t0 = UNIX_EPOCH + Duration::from_secs(60_000);
        s.record_now(&Usage {
            now: t0,
            user: "u",
            rcpts: &["a@x".into()],
        });
        let pending = vec!["b@x".to_string()];
        assert_eq!(check(&s, t0, &l, "v", "c@x", &pending), None);
        let pending = vec!["b@x".to_string(), "c@x".to_string()];
        assert_eq!(
            check(&s, t0, &l, "v", "d@x", &pending),
            Some(LimitHit::CustomerRecipientsPer10Minutes)
        );
        let later = t0 + Duration::from_secs(10 * 60);
        assert_eq!(check(&s, later, &l, "v", "d@x", &pending), None);
    }
}
