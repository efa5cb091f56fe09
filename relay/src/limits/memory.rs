//! The in-memory [`LimitStore`]: counters of one replica in one-minute buckets.
//!
//! An event at minute `m` counts in the 24-hour window until minute `m + 1440` and in the
//! 10-minute window until minute `m + 10`. Users with neither counts nor reservations are
//! dropped (swept once a minute), so memory is bounded by the senders active in the last
//! 24 hours, not by every sender ever seen.
//!
//! Not here: the trait and reply texts (`store`), the shared store (`redis`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::limits::store::{
    BoxFuture, LimitHit, LimitStore, LimitStoreError, RcptQuery, Release, TxId, Usage,
};

const DAY_MINUTES: u64 = 24 * 60;
const PEAK_MINUTES: u64 = 10;

fn minute(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / 60
}

/// Counts per one-minute bucket, oldest first.
#[derive(Debug, Default)]
struct Buckets(std::collections::VecDeque<(u64, u64)>);

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

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Debug, Default)]
struct UserUsage {
    messages: Buckets,
    /// Recipient → minute it was last sent to.
    recipients: HashMap<String, u64>,
    oldest_recipient_minute: u64,
    /// Open transactions of this user holding a message reservation.
    reserved_messages: u64,
    /// New (not yet counted) recipients reserved by open transactions → how many hold it.
    reserved_recipients: HashMap<String, u32>,
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

    /// Nothing counted in the window and nothing reserved: the entry can go.
    fn is_idle(&self) -> bool {
        self.messages.is_empty()
            && self.recipients.is_empty()
            && self.reserved_messages == 0
            && self.reserved_recipients.is_empty()
    }
}

/// What one open transaction holds.
#[derive(Debug, Default)]
struct Reservation {
    user: String,
    /// Recipients reserved (each holds one customer reservation).
    rcpts: u64,
    /// Holds one user-message reservation.
    message: bool,
    /// Recipients not yet counted for the user when reserved (each holds one reference).
    new_rcpts: Vec<String>,
}

#[derive(Debug, Default)]
struct Counters {
    customer: Buckets,
    customer_reserved: u64,
    users: HashMap<String, UserUsage>,
    open: HashMap<TxId, Reservation>,
    last_sweep_minute: u64,
}

impl Counters {
    /// Once a minute: drops users with nothing in the window and nothing reserved.
    fn sweep(&mut self, now_min: u64) {
        if self.last_sweep_minute == now_min {
            return;
        }
        self.last_sweep_minute = now_min;
        self.customer.expire(now_min, DAY_MINUTES);
        self.users.retain(|_, u| {
            u.expire(now_min);
            !u.is_idle()
        });
    }

    /// Takes a transaction's reservations out of the totals.
    fn unreserve(&mut self, tx: TxId) {
        let Some(r) = self.open.remove(&tx) else {
            return;
        };
        self.customer_reserved = self.customer_reserved.saturating_sub(r.rcpts);
        if let Some(u) = self.users.get_mut(&r.user) {
            if r.message {
                u.reserved_messages = u.reserved_messages.saturating_sub(1);
            }
            for rcpt in &r.new_rcpts {
                if let Some(n) = u.reserved_recipients.get_mut(rcpt) {
                    *n -= 1;
                    if *n == 0 {
                        u.reserved_recipients.remove(rcpt);
                    }
                }
            }
        }
    }
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

    /// Users tracked now (counted in the window or holding reservations).
    pub fn tracked_users(&self) -> usize {
        self.counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .users
            .len()
    }

    /// Transactions holding reservations now.
    pub fn open_transactions(&self) -> usize {
        self.counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .open
            .len()
    }

    fn check_now(&self, q: &RcptQuery<'_>) -> Option<LimitHit> {
        let now_min = minute(q.now);
        let mut guard = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let counters = &mut *guard;
        counters.sweep(now_min);
        let first = !counters.open.contains_key(&q.tx);
        let user = counters.users.entry(q.user.to_string()).or_default();
        user.expire(now_min);
        let messages = user.messages.sum_within(now_min, DAY_MINUTES) + user.reserved_messages;
        let counted = user.recipients.contains_key(q.rcpt);
        let known = counted || user.reserved_recipients.contains_key(q.rcpt);
        let unique = (user.recipients.len() + user.reserved_recipients.len()) as u64;
        let hit = if first && messages + 1 > q.limits.user_messages_per_day {
            Some(LimitHit::UserMessagesPerDay)
        } else if !known && unique + 1 > q.limits.user_recipients_per_day {
            Some(LimitHit::UserRecipientsPerDay)
        } else {
            counters.customer.expire(now_min, DAY_MINUTES);
            let reserved = counters.customer_reserved;
            if counters.customer.sum_within(now_min, DAY_MINUTES) + reserved + 1
                > q.limits.customer_recipients_per_day
            {
                Some(LimitHit::CustomerRecipientsPerDay)
            } else if counters.customer.sum_within(now_min, PEAK_MINUTES) + reserved + 1
                > q.limits.customer_recipients_per10_minutes
            {
                Some(LimitHit::CustomerRecipientsPer10Minutes)
            } else {
                None
            }
        };
        if hit.is_some() {
            if user.is_idle() {
                counters.users.remove(q.user);
            }
            return hit;
        }
        if first {
            user.reserved_messages += 1;
        }
        // Every open transaction holding a not-yet-counted address holds it, so the
        // address stays reserved until the last of them ends.
        if !counted {
            *user
                .reserved_recipients
                .entry(q.rcpt.to_string())
                .or_insert(0) += 1;
        }
        counters.customer_reserved += 1;
        let r = counters.open.entry(q.tx).or_insert_with(|| Reservation {
            user: q.user.to_string(),
            ..Reservation::default()
        });
        r.rcpts += 1;
        r.message |= first;
        if !counted {
            r.new_rcpts.push(q.rcpt.to_string());
        }
        None
    }

    fn record_now(&self, u: &Usage<'_>) {
        let now_min = minute(u.now);
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        counters.unreserve(u.tx);
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
        counters.sweep(now_min);
    }

    fn release_now(&self, r: &Release<'_>) {
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        counters.unreserve(r.tx);
        if counters.users.get(r.user).is_some_and(UserUsage::is_idle) {
            counters.users.remove(r.user);
        }
        counters.sweep(minute(r.now));
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

    fn release<'a>(&'a self, release: Release<'a>) -> BoxFuture<'a, Result<(), LimitStoreError>> {
        Box::pin(async move {
            self.release_now(&release);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LimitsConfig;
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
        tx: TxId,
        user: &str,
        rcpt: &str,
        pending: &[String],
    ) -> Option<LimitHit> {
        s.check_now(&RcptQuery {
            now,
            limits: l,
            tx,
            user,
            rcpt,
            pending,
        })
    }

    fn commit(s: &MemoryLimitStore, now: SystemTime, tx: TxId, user: &str, rcpts: &[String]) {
        s.record_now(&Usage {
            now,
            tx,
            user,
            rcpts,
        });
    }

    #[test]
    fn unique_recipients_repeat_for_free_and_the_window_rolls() {
        let s = MemoryLimitStore::new();
        let l = limits(100, 2, 100, 100);
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000 * 60);
        commit(&s, t0, TxId(1), "u", &["a@x".into(), "b@x".into()]);
        assert_eq!(check(&s, t0, &l, TxId(2), "u", "a@x", &[]), None);
        assert_eq!(
            check(&s, t0, &l, TxId(2), "u", "c@x", &["a@x".into()]),
            Some(LimitHit::UserRecipientsPerDay)
        );
        let almost = t0 + Duration::from_secs(DAY_MINUTES * 60 - 60);
        assert_eq!(
            check(&s, almost, &l, TxId(2), "u", "c@x", &["a@x".into()]),
            Some(LimitHit::UserRecipientsPerDay)
        );
        let day = t0 + Duration::from_secs(DAY_MINUTES * 60);
        assert_eq!(
            check(&s, day, &l, TxId(2), "u", "c@x", &["a@x".into()]),
            None
        );
    }

    #[test]
    fn reserved_recipients_count_toward_customer_limits() {
        let s = MemoryLimitStore::new();
        let l = limits(100, 100, 100, 3);
        let t0 = UNIX_EPOCH + Duration::from_secs(60_000);
        commit(&s, t0, TxId(1), "u", &["a@x".into()]);
        assert_eq!(check(&s, t0, &l, TxId(2), "v", "b@x", &[]), None);
        assert_eq!(
            check(&s, t0, &l, TxId(2), "v", "c@x", &["b@x".into()]),
            None
        );
        assert_eq!(
            check(
                &s,
                t0,
                &l,
                TxId(2),
                "v",
                "d@x",
                &["b@x".into(), "c@x".into()]
            ),
            Some(LimitHit::CustomerRecipientsPer10Minutes)
        );
        let later = t0 + Duration::from_secs(10 * 60);
        assert_eq!(
            check(
                &s,
                later,
                &l,
                TxId(2),
                "v",
                "d@x",
                &["b@x".into(), "c@x".into()]
            ),
            None
        );
    }

    /// The fault of the check-then-count store: two open transactions both passed the
    /// check for the last unit of a limit, and both messages were counted.
    #[test]
    fn concurrent_transactions_cannot_share_the_last_recipient() {
        let s = MemoryLimitStore::new();
        let l = limits(100, 100, 100, 1);
        let t0 = UNIX_EPOCH + Duration::from_secs(60_000);
        assert_eq!(check(&s, t0, &l, TxId(1), "u", "a@x", &[]), None);
        assert_eq!(
            check(&s, t0, &l, TxId(2), "v", "b@x", &[]),
            Some(LimitHit::CustomerRecipientsPer10Minutes)
        );
    }

    #[test]
    fn a_released_transaction_gives_its_recipients_back() {
        let s = MemoryLimitStore::new();
        let l = limits(1, 1, 100, 100);
        let t0 = UNIX_EPOCH + Duration::from_secs(60_000);
        assert_eq!(check(&s, t0, &l, TxId(1), "u", "a@x", &[]), None);
        assert_eq!(
            check(&s, t0, &l, TxId(2), "u", "b@x", &[]),
            Some(LimitHit::UserMessagesPerDay)
        );
        s.release_now(&Release {
            now: t0,
            tx: TxId(1),
            user: "u",
            rcpts: &["a@x".into()],
        });
        assert_eq!(s.open_transactions(), 0);
        assert_eq!(check(&s, t0, &l, TxId(2), "u", "b@x", &[]), None);
    }

    #[test]
    fn senders_are_forgotten_a_day_after_their_last_message() {
        let s = MemoryLimitStore::new();
        let l = limits(100, 100, 1_000_000, 1_000_000);
        let t0 = UNIX_EPOCH + Duration::from_secs(60_000);
        for i in 0..1000 {
            let user = format!("random{i}@acme.example");
            let tx = TxId(i);
            assert_eq!(check(&s, t0, &l, tx, &user, "r@x", &[]), None);
            commit(&s, t0, tx, &user, &["r@x".into()]);
        }
        // A refused or released sender leaves nothing behind.
        assert_eq!(
            check(&s, t0, &limits(0, 0, 9, 9), TxId(5000), "x@y", "r@x", &[]),
            Some(LimitHit::UserMessagesPerDay)
        );
        assert_eq!(s.tracked_users(), 1000);
        let next_day = t0 + Duration::from_secs(DAY_MINUTES * 60);
        assert_eq!(
            check(&s, next_day, &l, TxId(6000), "new@acme.example", "r@x", &[]),
            None
        );
        assert_eq!(
            s.tracked_users(),
            1,
            "only the sender with a reservation is kept"
        );
    }
}
