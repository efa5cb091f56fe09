//! AUTH throttling (SPEC §3.2): repeated failures per client IP or per user identity slow
//! down, then are refused with `454 4.7.0` for a lockout window.
//!
//! Owns the failure counters and the decision; it does not sleep, verify passwords (that is
//! `auth`), or count metrics. It is pure: the caller passes the time in, so tests move a
//! clock instead of sleeping. One [`AuthThrottle`] serves the whole process (every session
//! and config generation), because reconnecting must not reset the count.
//!
//! Use, around each AUTH verification:
//!
//! ```text
//! match throttle.check(ip, &identity, clock.now()) {
//!     Decision::LockedOut { scope, .. } => answer lockout_reply(), do not verify
//!     Decision::Delay(d) => sleep d, then verify
//!     Decision::Allow => verify
//! }
//! Verdict::Valid   => throttle.record_success(&identity)
//! Verdict::Invalid => throttle.record_failure(ip, &identity, clock.now()) returns the
//!                     lockouts this failure started (count them); answer 535 as before
//! Verdict::Busy    => not a failure: answer auth::busy_reply()
//! ```
//!
//! Counting, with the [`ThrottleConfig`] defaults: a key (a client IP, IPv6 by its /64, or
//! a lower-cased user identity) counts its failures until it has been quiet for `window`
//! (15 min). The first 2 failures cost nothing; after that each attempt waits 1 s, 2 s,
//! 4 s, then 8 s at most. The 10th failure from one IP, or the 5th for one user from any
//! IPs, locks that key out for 15 min; the lockout ends with a fresh count. A success
//! clears the user's count (not the IP's). Known and unknown users are counted alike, so
//! the throttle is no oracle either. At most 100,000 keys are tracked: expired ones go
//! first, then the oldest, keys under lockout last.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::smtp::Reply;

/// Throttling parameters; `Default` gives the documented values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// A key's failures are forgotten once it has had none for this long. Default 15 min.
    pub window: Duration,
    /// Failures that cost no delay. Default 2.
    pub free_failures: u32,
    /// Delay after the first failure beyond `free_failures`; it doubles with each further
    /// failure. Default 1 s.
    pub first_delay: Duration,
    /// The largest delay. Default 8 s.
    pub max_delay: Duration,
    /// Failures from one client IP (IPv6: its /64) that start a lockout. Default 10.
    pub ip_lockout_failures: u32,
    /// Failures for one user identity, from any IP, that start a lockout. Default 5.
    pub user_lockout_failures: u32,
    /// How long a lockout lasts. Default 15 min.
    pub lockout: Duration,
    /// Most keys (IPs and users together) tracked at once. Default 100,000.
    pub max_keys: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(15 * 60),
            free_failures: 2,
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(8),
            ip_lockout_failures: 10,
            user_lockout_failures: 5,
            lockout: Duration::from_secs(15 * 60),
            max_keys: 100_000,
        }
    }
}

/// Which key a lockout is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The client IP (IPv6: its /64).
    Ip,
    /// The user identity, whatever the IP.
    User,
}

impl Scope {
    /// The metrics label: `ip` or `user`.
    pub fn label(self) -> &'static str {
        match self {
            Scope::Ip => "ip",
            Scope::User => "user",
        }
    }
}

/// What to do with an AUTH attempt before verifying it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Verify now.
    Allow,
    /// Wait this long, then verify.
    Delay(Duration),
    /// Do not verify; answer [`lockout_reply`].
    LockedOut { scope: Scope, until: SystemTime },
}

/// The reply to [`Decision::LockedOut`].
pub fn lockout_reply() -> Reply {
    Reply::new(
        454,
        "4.7.0 Too many authentication failures, try again later",
    )
}

/// A tracked key. Users are kept as a digest, so an entry's size does not depend on what
/// the client sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    Ip(IpAddr),
    User([u8; 32]),
}

impl Key {
    fn ip(ip: IpAddr) -> Self {
        Key::Ip(match ip.to_canonical() {
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
            v4 => v4,
        })
    }

    fn user(identity: &str) -> Self {
        Key::User(Sha256::digest(identity.to_ascii_lowercase().as_bytes()).into())
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    failures: u32,
    last_failure: SystemTime,
    locked_until: Option<SystemTime>,
}

impl Entry {
    fn locked_at(&self, now: SystemTime) -> Option<SystemTime> {
        self.locked_until.filter(|until| *until > now)
    }

    fn expired(&self, now: SystemTime, window: Duration) -> bool {
        self.locked_at(now).is_none()
            && self
                .last_failure
                .checked_add(window)
                .is_some_and(|end| end <= now)
    }
}

/// Failure counters per client IP and per user identity. Shared by reference; every
/// method takes the time as an argument.
#[derive(Debug, Default)]
pub struct AuthThrottle {
    config: ThrottleConfig,
    keys: Mutex<HashMap<Key, Entry>>,
}

impl AuthThrottle {
    /// A throttle with `config`.
    pub fn new(config: ThrottleConfig) -> Self {
        Self {
            config,
            keys: Mutex::default(),
        }
    }

    /// The parameters in use.
    pub fn config(&self) -> &ThrottleConfig {
        &self.config
    }

    /// What to do with an attempt from `ip` for `identity` at `now`. A lockout of the IP
    /// is reported before one of the user; otherwise the longer of the two delays applies.
    pub fn check(&self, ip: IpAddr, identity: &str, now: SystemTime) -> Decision {
        let mut keys = self.lock();
        let mut delay = Duration::ZERO;
        for (key, scope) in [(Key::ip(ip), Scope::Ip), (Key::user(identity), Scope::User)] {
            let Some(entry) = keys.get(&key).copied() else {
                continue;
            };
            if entry.expired(now, self.config.window) {
                keys.remove(&key);
                continue;
            }
            if let Some(until) = entry.locked_at(now) {
                return Decision::LockedOut { scope, until };
            }
            delay = delay.max(self.delay_after(entry.failures));
        }
        if delay.is_zero() {
            Decision::Allow
        } else {
            Decision::Delay(delay)
        }
    }

    /// Counts a failed verification from `ip` for `identity` at `now`; returns the lockouts
    /// this failure started (none, one, or both scopes).
    pub fn record_failure(&self, ip: IpAddr, identity: &str, now: SystemTime) -> Vec<Scope> {
        let mut keys = self.lock();
        let mut started = Vec::new();
        for (key, scope, limit) in [
            (Key::ip(ip), Scope::Ip, self.config.ip_lockout_failures),
            (
                Key::user(identity),
                Scope::User,
                self.config.user_lockout_failures,
            ),
        ] {
            if !keys.contains_key(&key) {
                self.make_room(&mut keys, now);
            }
            let entry = keys.entry(key).or_insert(Entry {
                failures: 0,
                last_failure: now,
                locked_until: None,
            });
            if entry.expired(now, self.config.window) {
                entry.failures = 0;
                entry.locked_until = None;
            }
            entry.failures = entry.failures.saturating_add(1);
            entry.last_failure = now;
            if entry.failures >= limit.max(1) {
                // The count starts afresh when the lockout ends.
                entry.failures = 0;
                entry.locked_until = now.checked_add(self.config.lockout);
                started.push(scope);
            }
        }
        started
    }

    /// Counts a successful verification: the user's failures are forgotten. The IP's stay,
    /// so one valid account does not reset an IP that is guessing others.
    pub fn record_success(&self, identity: &str) {
        self.lock().remove(&Key::user(identity));
    }

    /// Keys tracked now (IPs and users).
    pub fn tracked(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The delay before the attempt that follows `failures` failures.
    fn delay_after(&self, failures: u32) -> Duration {
        let Some(beyond) = failures.checked_sub(self.config.free_failures + 1) else {
            return Duration::ZERO;
        };
        let factor = 1u32.checked_shl(beyond).unwrap_or(u32::MAX);
        self.config
            .first_delay
            .saturating_mul(factor)
            .min(self.config.max_delay)
    }

    /// Makes room for one more key: drops expired keys, and if that is not enough, the
    /// tenth of the keys that failed longest ago (keys under lockout last). Dropping a tenth
    /// at once keeps the scan rare under a flood of new keys.
    fn make_room(&self, keys: &mut HashMap<Key, Entry>, now: SystemTime) {
        let max = self.config.max_keys.max(2);
        if keys.len() < max {
            return;
        }
        keys.retain(|_, entry| !entry.expired(now, self.config.window));
        if keys.len() < max {
            return;
        }
        let mut ages: Vec<_> = keys
            .iter()
            .map(|(key, entry)| ((entry.locked_at(now).is_some(), entry.last_failure), *key))
            .collect();
        let evict = (max / 10).max(keys.len() + 1 - max);
        ages.select_nth_unstable_by_key(evict - 1, |(age, _)| *age);
        for (_, key) in &ages[..evict] {
            keys.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, FakeClock};

    const ALICE: &str = "alice@acme.example";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn clock() -> FakeClock {
        FakeClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000))
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn delays_grow_after_the_free_failures() {
        let t = AuthThrottle::default();
        let c = clock();
        let a = ip("192.0.2.1");
        let mut seen = vec![t.check(a, ALICE, c.now())];
        for _ in 0..6 {
            t.record_failure(a, "x@acme.example", c.now());
            c.advance(secs(1));
            seen.push(t.check(a, ALICE, c.now()));
        }
        assert_eq!(
            seen,
            [
                Decision::Allow,
                Decision::Allow,
                Decision::Allow,
                Decision::Delay(secs(1)),
                Decision::Delay(secs(2)),
                Decision::Delay(secs(4)),
                Decision::Delay(secs(8)),
            ]
        );
        t.record_failure(a, "x@acme.example", c.now());
        assert_eq!(t.check(a, ALICE, c.now()), Decision::Delay(secs(8)));
    }

    #[test]
    fn a_user_is_locked_out_across_ips_and_the_lockout_ends() {
        let t = AuthThrottle::default();
        let c = clock();
        for n in 1..=5u8 {
            let from = IpAddr::from([198, 51, 100, n]);
            let started = t.record_failure(from, ALICE, c.now());
            assert_eq!(started, if n == 5 { vec![Scope::User] } else { vec![] });
        }
        let until = c.now() + secs(15 * 60);
        let elsewhere = ip("203.0.113.9");
        assert_eq!(
            t.check(elsewhere, "Alice@ACME.example", c.now()),
            Decision::LockedOut {
                scope: Scope::User,
                until
            }
        );
        assert_eq!(
            t.check(elsewhere, "bob@acme.example", c.now()),
            Decision::Allow
        );
        assert_eq!(
            lockout_reply().to_string(),
            "454 4.7.0 Too many authentication failures, try again later\r\n"
        );
        c.advance(secs(15 * 60 - 1));
        assert!(matches!(
            t.check(elsewhere, ALICE, c.now()),
            Decision::LockedOut { .. }
        ));
        c.advance(secs(1));
        assert_eq!(t.check(elsewhere, ALICE, c.now()), Decision::Allow);
    }

    #[test]
    fn an_ip_is_locked_out_across_users() {
        let t = AuthThrottle::default();
        let c = clock();
        let a = ip("2001:db8::1");
        for n in 1..=10 {
            let started = t.record_failure(a, &format!("user{n}@acme.example"), c.now());
            assert_eq!(started, if n == 10 { vec![Scope::Ip] } else { vec![] });
        }
        // Another address of the same /64 is the same client.
        let same = ip("2001:db8::ffff");
        assert!(matches!(
            t.check(same, "new@acme.example", c.now()),
            Decision::LockedOut {
                scope: Scope::Ip,
                ..
            }
        ));
        assert_eq!(
            t.check(ip("2001:db8:0:1::1"), "new@acme.example", c.now()),
            Decision::Allow
        );
    }

    #[test]
    fn a_success_clears_the_user_but_not_the_ip() {
        let t = AuthThrottle::default();
        let c = clock();
        let a = ip("192.0.2.1");
        for _ in 0..4 {
            t.record_failure(a, ALICE, c.now());
        }
        t.record_success(ALICE);
        assert_eq!(
            t.check(ip("192.0.2.2"), ALICE, c.now()),
            Decision::Allow,
            "the user's count is gone"
        );
        assert_eq!(
            t.check(a, "bob@acme.example", c.now()),
            Decision::Delay(secs(2))
        );
    }

    #[test]
    fn failures_are_forgotten_after_a_quiet_window() {
        let t = AuthThrottle::default();
        let c = clock();
        let a = ip("192.0.2.1");
        for _ in 0..4 {
            t.record_failure(a, ALICE, c.now());
        }
        c.advance(secs(15 * 60 - 1));
        assert_eq!(t.check(a, ALICE, c.now()), Decision::Delay(secs(2)));
        c.advance(secs(1));
        assert_eq!(t.check(a, ALICE, c.now()), Decision::Allow);
        assert_eq!(t.tracked(), 0, "expired keys are dropped when seen");
        assert!(t.record_failure(a, ALICE, c.now()).is_empty());
    }

    #[test]
    fn memory_is_bounded_and_the_newest_keys_stay() {
        let t = AuthThrottle::new(ThrottleConfig {
            max_keys: 100,
            ..ThrottleConfig::default()
        });
        let c = clock();
        for n in 0..1_000u32 {
            let from = IpAddr::from(n.to_be_bytes());
            t.record_failure(from, &format!("u{n}@acme.example"), c.now());
            c.advance(secs(1));
            assert!(t.tracked() <= 100);
        }
        // The last user has 1 failure on record: 2 more and its next attempt is delayed.
        let last = IpAddr::from(999u32.to_be_bytes());
        t.record_failure(last, "u999@acme.example", c.now());
        t.record_failure(last, "u999@acme.example", c.now());
        assert_eq!(
            t.check(ip("192.0.2.200"), "u999@acme.example", c.now()),
            Decision::Delay(secs(1))
        );
        assert!(t.tracked() <= 100);
    }

    #[test]
    fn lockouts_are_evicted_last() {
        let t = AuthThrottle::new(ThrottleConfig {
            max_keys: 20,
            ..ThrottleConfig::default()
        });
        let c = clock();
        let attacker = ip("192.0.2.66");
        for n in 0..10 {
            t.record_failure(attacker, &format!("a{n}@acme.example"), c.now());
        }
        for n in 0..200u32 {
            c.advance(secs(1));
            t.record_failure(IpAddr::from(n.to_be_bytes()), "x@acme.example", c.now());
        }
        assert!(matches!(
            t.check(attacker, "y@acme.example", c.now()),
            Decision::LockedOut {
                scope: Scope::Ip,
                ..
            }
        ));
    }
}
