//! AUTH throttling (SPEC §3.2): repeated failures slow down, then are refused with
//! `454 4.7.0` for a lockout window, in a way an attacker cannot turn against a user:
//! guesses from other addresses never lock a user out of the addresses it recently logged
//! in from, and guesses sent in parallel count like guesses sent one after another.
//!
//! Owns the failure counters, the addresses each user logged in from, and the decision; it
//! does not sleep, verify passwords (that is `auth`), or count metrics. It is pure: the
//! caller passes the time in, so tests move a clock instead of sleeping. One
//! [`AuthThrottle`] serves the whole process (every session and config generation),
//! because reconnecting must not reset the count.
//!
//! Use, around each AUTH verification:
//!
//! ```text
//! match throttle.check(ip, &identity, clock.now()) {
//!     Decision::LockedOut { scope, .. } => answer lockout_reply(), do not verify
//!     Decision::Verify { delay, attempt } => sleep delay, verify, then
//!         Verdict::Valid   => attempt.succeeded(clock.now())
//!         Verdict::Invalid => attempt.failed(clock.now()) returns the lockouts this failure
//!                             started (count them); answer 535 as before
//!         Verdict::Busy    => drop(attempt): not a failure; answer auth::busy_reply()
//! }
//! ```
//!
//! **Check and record are one step.** [`AuthThrottle::check`] reserves the attempt on
//! every counter it touches, and the [`Attempt`] it hands out settles that reservation
//! (as a failure, a success, or nothing when dropped unsettled). Limits and delays count
//! the failures on record plus the attempts under way, so twenty guesses sent at once are
//! judged like twenty sent in a row: the sixth is refused before any of the first five
//! has been checked, instead of all twenty passing the check while argon2 runs.
//!
//! **Counters**, with the [`ThrottleConfig`] defaults. A *source* is a client IPv4
//! address, or the /64 of an IPv6 one ([`crate::ingress::client_source`]); the /32 for
//! IPv4 because one address is one client or one NAT, and a /24 would let neighbours
//! share an exemption. Three counters apply to each attempt:
//! - the source, for any users: the 10th failure locks the source out for 15 min;
//! - the pair (user, source): the 5th failure locks that user out from that source;
//! - the user, from any sources: the 5th failure locks the user out from every source
//!   it has **not** logged in from in the last 30 days. The user's *known sources* (the
//!   last 4 sources of successful logins, each remembered 30 days) are exempt from the
//!   user-wide lockout and delay, so an attacker elsewhere can lock a user out of new
//!   places, never out of its usual ones; from a known source only the pair and source
//!   counters apply, and an attacker elsewhere cannot move those.
//!
//! A counter forgets its failures once it has had none for `window` (15 min); a lockout
//! ends with a fresh count. The first 2 failures of a counter cost nothing; after that
//! each attempt waits 1 s, 2 s, 4 s, then 8 s at most (the longest delay of the counters
//! that apply). A success forgives the pair and makes the source known for the user; it
//! does not clear the source's count (one valid account must not reset an address guessing
//! others) nor the user-wide count (a user that logs in every minute would otherwise hand
//! an attacker elsewhere a fresh budget every minute). Known and unknown users are
//! counted alike, so the throttle is no oracle either.
//!
//! **Memory** is bounded: at most 100,000 counters (expired ones go first, then those
//! that failed longest ago; counters under lockout or with attempts under way last), and
//! known sources for at most 50,000 users (4 each; the users whose last login is oldest go
//! first). Users are kept as a SHA-256 digest, so an entry's size does not depend on what
//! the client sent, and only a successful login creates a known source.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::ingress::client_source;
use crate::smtp::Reply;

/// Throttling parameters; `Default` gives the documented values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// A counter's failures are forgotten once it has had none for this long. Default
    /// 15 min.
    pub window: Duration,
    /// Failures that cost no delay. Default 2.
    pub free_failures: u32,
    /// Delay after the first failure beyond `free_failures`; it doubles with each further
    /// failure. Default 1 s.
    pub first_delay: Duration,
    /// The largest delay. Default 8 s.
    pub max_delay: Duration,
    /// Failures from one source (an IPv4 address, an IPv6 /64), for any users, that start
    /// a lockout of the source. Default 10.
    pub ip_lockout_failures: u32,
    /// Failures for one user from one source that start a lockout of that user from that
    /// source. Default 5.
    pub pair_lockout_failures: u32,
    /// Failures for one user, from any sources, that start a lockout of that user from
    /// every source it has not logged in from recently. Default 5.
    pub user_lockout_failures: u32,
    /// How long a lockout lasts. Default 15 min.
    pub lockout: Duration,
    /// Most counters (sources, pairs and users together) tracked at once. Default 100,000.
    pub max_keys: usize,
    /// How long a source a user logged in from stays exempt from the user-wide lockout.
    /// Default 30 days.
    pub known_source_ttl: Duration,
    /// Sources remembered per user (the most recent). Default 4.
    pub known_sources_per_user: usize,
    /// Users whose known sources are remembered. Default 50,000.
    pub max_known_users: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(15 * 60),
            free_failures: 2,
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(8),
            ip_lockout_failures: 10,
            pair_lockout_failures: 5,
            user_lockout_failures: 5,
            lockout: Duration::from_secs(15 * 60),
            max_keys: 100_000,
            known_source_ttl: Duration::from_secs(30 * 24 * 3600),
            known_sources_per_user: 4,
            max_known_users: 50_000,
        }
    }
}

/// Which counter a lockout is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The source (IPv4 address, IPv6 /64), for any users.
    Ip,
    /// One user from one source.
    UserIp,
    /// The user, from the sources it has not logged in from recently.
    User,
}

impl Scope {
    /// The metrics label: `ip`, `user_ip` or `user`.
    pub fn label(self) -> &'static str {
        match self {
            Scope::Ip => "ip",
            Scope::UserIp => "user_ip",
            Scope::User => "user",
        }
    }
}

/// What to do with an AUTH attempt before verifying it.
#[derive(Debug)]
pub enum Decision<'a> {
    /// Wait `delay` (zero: none), verify, then settle `attempt` with the outcome.
    Verify {
        delay: Duration,
        attempt: Attempt<'a>,
    },
    /// Do not verify; answer [`lockout_reply`]. `until` is when the lockout ends; it is
    /// the present when the attempts already under way would reach the limit (they decide
    /// whether a lockout starts).
    LockedOut { scope: Scope, until: SystemTime },
}

/// The reply to [`Decision::LockedOut`].
pub fn lockout_reply() -> Reply {
    Reply::new(
        454,
        "4.7.0 Too many authentication failures, try again later",
    )
}

/// A user, as a digest: an entry's size does not depend on what the client sent.
type UserDigest = [u8; 32];

/// A tracked counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    Source(IpAddr),
    Pair(UserDigest, IpAddr),
    User(UserDigest),
}

fn user_digest(identity: &str) -> UserDigest {
    Sha256::digest(identity.to_ascii_lowercase().as_bytes()).into()
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    failures: u32,
    /// Attempts checked and not yet settled.
    in_flight: u32,
    /// The last failure (or, before any, when the counter was made).
    last_failure: SystemTime,
    locked_until: Option<SystemTime>,
}

impl Entry {
    fn new(now: SystemTime) -> Self {
        Self {
            failures: 0,
            in_flight: 0,
            last_failure: now,
            locked_until: None,
        }
    }

    fn locked_at(&self, now: SystemTime) -> Option<SystemTime> {
        self.locked_until.filter(|until| *until > now)
    }

    /// The failures have been quiet for `window`: they no longer count.
    fn quiet(&self, now: SystemTime, window: Duration) -> bool {
        self.last_failure
            .checked_add(window)
            .is_some_and(|end| end <= now)
    }

    /// Failures on record that still count at `now`.
    fn live_failures(&self, now: SystemTime, window: Duration) -> u32 {
        if self.quiet(now, window) {
            0
        } else {
            self.failures
        }
    }

    /// Nothing to remember: no live failure, no lockout, nothing under way.
    fn expired(&self, now: SystemTime, window: Duration) -> bool {
        self.in_flight == 0
            && self.locked_at(now).is_none()
            && (self.failures == 0 || self.quiet(now, window))
    }

    /// Kept when memory runs short: under lockout, or with attempts under way.
    fn pinned(&self, now: SystemTime) -> bool {
        self.in_flight > 0 || self.locked_at(now).is_some()
    }
}

#[derive(Debug, Default)]
struct State {
    keys: HashMap<Key, Entry>,
    /// Per user, the sources of its recent successful logins and when each was last used.
    known: HashMap<UserDigest, Vec<(IpAddr, SystemTime)>>,
}

/// Failure counters per source, per (user, source) and per user, and the sources each
/// user logged in from. Shared by reference; every method takes the time as an argument.
#[derive(Debug, Default)]
pub struct AuthThrottle {
    config: ThrottleConfig,
    state: Mutex<State>,
}

/// One attempt checked by [`AuthThrottle::check`] and not yet settled: its reservation
/// counts on every counter until [`Attempt::succeeded`] or [`Attempt::failed`] settles it,
/// or it is dropped (nothing was checked: the reservation goes back uncounted).
#[derive(Debug)]
pub struct Attempt<'a> {
    throttle: &'a AuthThrottle,
    source: IpAddr,
    user: UserDigest,
    /// When it was checked: an unsettled attempt is given back as of then.
    checked_at: SystemTime,
    settled: bool,
}

impl Attempt<'_> {
    fn keys(&self) -> [Key; 3] {
        [
            Key::Source(self.source),
            Key::Pair(self.user, self.source),
            Key::User(self.user),
        ]
    }

    /// The password was right: the pair's failures are forgiven and the source becomes
    /// known for the user (exempt from the user-wide lockout for `known_source_ttl`).
    pub fn succeeded(mut self, now: SystemTime) {
        self.settled = true;
        let throttle = self.throttle;
        let mut state = throttle.lock();
        let [source, pair, user] = self.keys();
        state.keys.remove(&pair);
        for key in [source, user] {
            throttle.release(&mut state, key, now);
        }
        throttle.remember(&mut state, self.user, self.source, now);
    }

    /// The password was wrong: counts a failure on every counter; returns the lockouts
    /// this failure started (none, or one or more scopes).
    pub fn failed(mut self, now: SystemTime) -> Vec<Scope> {
        self.settled = true;
        let throttle = self.throttle;
        let config = &throttle.config;
        let mut state = throttle.lock();
        let [source, pair, user] = self.keys();
        let mut started = Vec::new();
        for (key, scope, limit) in [
            (source, Scope::Ip, config.ip_lockout_failures),
            (pair, Scope::UserIp, config.pair_lockout_failures),
            (user, Scope::User, config.user_lockout_failures),
        ] {
            if !state.keys.contains_key(&key) {
                throttle.make_room(&mut state.keys, now);
            }
            let entry = state.keys.entry(key).or_insert_with(|| Entry::new(now));
            entry.in_flight = entry.in_flight.saturating_sub(1);
            entry.failures = entry.live_failures(now, config.window).saturating_add(1);
            entry.last_failure = now;
            if entry.failures >= limit.max(1) {
                // The count starts afresh when the lockout ends.
                entry.failures = 0;
                if entry.locked_at(now).is_none() {
                    started.push(scope);
                }
                entry.locked_until = now.checked_add(config.lockout);
            }
        }
        started
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let throttle = self.throttle;
        let mut state = throttle.lock();
        for key in self.keys() {
            throttle.release(&mut state, key, self.checked_at);
        }
    }
}

impl AuthThrottle {
    /// A throttle with `config`.
    pub fn new(config: ThrottleConfig) -> Self {
        Self {
            config,
            state: Mutex::default(),
        }
    }

    /// The parameters in use.
    pub fn config(&self) -> &ThrottleConfig {
        &self.config
    }

    /// What to do with an attempt from `ip` for `identity` at `now`; an attempt that may
    /// go ahead is reserved on every counter at once (see the module doc). A lockout of
    /// the source is reported before one of the pair, and that before one of the user;
    /// otherwise the longest delay of the counters that apply is asked for.
    pub fn check(&self, ip: IpAddr, identity: &str, now: SystemTime) -> Decision<'_> {
        let source = client_source(ip);
        let user = user_digest(identity);
        let mut state = self.lock();
        let known = self.is_known(&mut state, user, source, now);
        let mut delay = Duration::ZERO;
        for (key, scope, limit, applies) in [
            (
                Key::Source(source),
                Scope::Ip,
                self.config.ip_lockout_failures,
                true,
            ),
            (
                Key::Pair(user, source),
                Scope::UserIp,
                self.config.pair_lockout_failures,
                true,
            ),
            (
                Key::User(user),
                Scope::User,
                self.config.user_lockout_failures,
                !known,
            ),
        ] {
            let Some(entry) = state.keys.get(&key).copied() else {
                continue;
            };
            if entry.expired(now, self.config.window) {
                state.keys.remove(&key);
                continue;
            }
            if !applies {
                continue;
            }
            if let Some(until) = entry.locked_at(now) {
                return Decision::LockedOut { scope, until };
            }
            let pending = entry
                .live_failures(now, self.config.window)
                .saturating_add(entry.in_flight);
            if pending >= limit.max(1) {
                return Decision::LockedOut { scope, until: now };
            }
            delay = delay.max(self.delay_after(pending));
        }
        for key in [
            Key::Source(source),
            Key::Pair(user, source),
            Key::User(user),
        ] {
            if !state.keys.contains_key(&key) {
                self.make_room(&mut state.keys, now);
            }
            let entry = state.keys.entry(key).or_insert_with(|| Entry::new(now));
            entry.in_flight = entry.in_flight.saturating_add(1);
        }
        Decision::Verify {
            delay,
            attempt: Attempt {
                throttle: self,
                source,
                user,
                checked_at: now,
                settled: false,
            },
        }
    }

    /// Counters tracked now (sources, pairs and users).
    pub fn tracked(&self) -> usize {
        self.lock().keys.len()
    }

    /// Users whose known sources are remembered now.
    pub fn known_users(&self) -> usize {
        self.lock().known.len()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives back one reservation of `key`; drops the counter when nothing is left in it.
    fn release(&self, state: &mut State, key: Key, now: SystemTime) {
        if let Some(entry) = state.keys.get_mut(&key) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
            if entry.expired(now, self.config.window) {
                state.keys.remove(&key);
            }
        }
    }

    /// Whether `user` logged in from `source` within `known_source_ttl`; forgets the
    /// user's sources that are older.
    fn is_known(
        &self,
        state: &mut State,
        user: UserDigest,
        source: IpAddr,
        now: SystemTime,
    ) -> bool {
        let Some(sources) = state.known.get_mut(&user) else {
            return false;
        };
        let ttl = self.config.known_source_ttl;
        sources.retain(|(_, at)| at.checked_add(ttl).is_some_and(|end| end > now));
        if sources.is_empty() {
            state.known.remove(&user);
            return false;
        }
        sources.iter().any(|(s, _)| *s == source)
    }

    /// Remembers a successful login of `user` from `source`: the most recent
    /// `known_sources_per_user` sources are kept, for at most `max_known_users` users.
    fn remember(&self, state: &mut State, user: UserDigest, source: IpAddr, now: SystemTime) {
        let per_user = self.config.known_sources_per_user;
        if per_user == 0 || self.config.max_known_users == 0 {
            return;
        }
        if !state.known.contains_key(&user) && state.known.len() >= self.config.max_known_users {
            self.make_room_for_a_user(&mut state.known, now);
        }
        let sources = state.known.entry(user).or_default();
        match sources.iter_mut().find(|(s, _)| *s == source) {
            Some((_, at)) => *at = now,
            None => sources.push((source, now)),
        }
        if sources.len() > per_user {
            sources.sort_by_key(|(_, at)| std::cmp::Reverse(*at));
            sources.truncate(per_user);
        }
    }

    /// Makes room for one more user's known sources: drops users whose sources all
    /// expired, and if that is not enough, the tenth whose last login is oldest.
    fn make_room_for_a_user(
        &self,
        known: &mut HashMap<UserDigest, Vec<(IpAddr, SystemTime)>>,
        now: SystemTime,
    ) {
        let max = self.config.max_known_users;
        let ttl = self.config.known_source_ttl;
        let latest = |sources: &[(IpAddr, SystemTime)]| {
            sources
                .iter()
                .map(|(_, at)| *at)
                .max()
                .unwrap_or(SystemTime::UNIX_EPOCH)
        };
        known.retain(|_, sources| {
            latest(sources)
                .checked_add(ttl)
                .is_some_and(|end| end > now)
        });
        if known.len() < max {
            return;
        }
        let mut ages: Vec<_> = known
            .iter()
            .map(|(user, sources)| (latest(sources), *user))
            .collect();
        let evict = (max / 10).max(known.len() + 1 - max).min(ages.len());
        if evict == 0 {
            return;
        }
        ages.select_nth_unstable_by_key(evict - 1, |(age, _)| *age);
        for (_, user) in &ages[..evict] {
            known.remove(user);
        }
    }

    /// The delay before the attempt that follows `failures` failures (on record or under
    /// way).
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

    /// Makes room for one more counter: drops expired counters, and if that is not
    /// enough, the tenth that failed longest ago (counters under lockout or with attempts
    /// under way last). Dropping a tenth at once keeps the scan rare under a flood of new
    /// keys.
    fn make_room(&self, keys: &mut HashMap<Key, Entry>, now: SystemTime) {
        let max = self.config.max_keys.max(3);
        if keys.len() < max {
            return;
        }
        keys.retain(|_, entry| !entry.expired(now, self.config.window));
        if keys.len() < max {
            return;
        }
        let mut ages: Vec<_> = keys
            .iter()
            .map(|(key, entry)| ((entry.pinned(now), entry.last_failure), *key))
            .collect();
        let evict = (max / 10).max(keys.len() + 1 - max).min(ages.len());
        if evict == 0 {
            return;
        }
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

    /// What `check` decided, without the attempt (which is dropped: nothing counted).
    #[derive(Debug, PartialEq, Eq)]
    enum Seen {
        Verify(Duration),
        LockedOut(Scope),
    }

    fn peek(t: &AuthThrottle, from: IpAddr, user: &str, now: SystemTime) -> Seen {
        match t.check(from, user, now) {
            Decision::Verify { delay, .. } => Seen::Verify(delay),
            Decision::LockedOut { scope, .. } => Seen::LockedOut(scope),
        }
    }

    /// One wrong password from `from` for `user`: the lockouts it started.
    fn fail(t: &AuthThrottle, from: IpAddr, user: &str, now: SystemTime) -> Vec<Scope> {
        match t.check(from, user, now) {
            Decision::Verify { attempt, .. } => attempt.failed(now),
            Decision::LockedOut { scope, .. } => {
                panic!("{user} from {from} is locked out ({scope:?})")
            }
        }
    }

    fn succeed(t: &AuthThrottle, from: IpAddr, user: &str, now: SystemTime) {
        match t.check(from, user, now) {
            Decision::Verify { attempt, .. } => attempt.succeeded(now),
            Decision::LockedOut { scope, .. } => {
                panic!("{user} from {from} is locked out ({scope:?})")
            }
        }
    }

    #[test]
    fn delays_grow_after_the_free_failures() {
        let t = AuthThrottle::default();
        let c = clock();
        let a = ip("192.0.2.1");
        let mut seen = vec![peek(&t, a, ALICE, c.now())];
        for n in 0..6 {
            fail(&t, a, &format!("x{n}@acme.example"), c.now());
            c.advance(secs(1));
            seen.push(peek(&t, a, ALICE, c.now()));
        }
        assert_eq!(
            seen,
            [
                Seen::Verify(secs(0)),
                Seen::Verify(secs(0)),
                Seen::Verify(secs(0)),
                Seen::Verify(secs(1)),
                Seen::Verify(secs(2)),
                Seen::Verify(secs(4)),
                Seen::Verify(secs(8)),
            ]
        );
        fail(&t, a, "y@acme.example", c.now());
        assert_eq!(peek(&t, a, ALICE, c.now()), Seen::Verify(secs(8)));
    }

    #[test]
    fn a_user_is_locked_out_of_new_sources_and_the_lockout_ends() {
        let t = AuthThrottle::default();
        let c = clock();
        for n in 1..=5u8 {
            let from = IpAddr::from([198, 51, 100, n]);
            let started = fail(&t, from, ALICE, c.now());
            assert_eq!(started, if n == 5 { vec![Scope::User] } else { vec![] });
        }
        let until = c.now() + secs(15 * 60);
        let elsewhere = ip("203.0.113.9");
        assert!(matches!(
            t.check(elsewhere, "Alice@ACME.example", c.now()),
            Decision::LockedOut { scope: Scope::User, until: u } if u == until
        ));
        assert_eq!(
            peek(&t, elsewhere, "bob@acme.example", c.now()),
            Seen::Verify(secs(0))
        );
        assert_eq!(
            lockout_reply().to_string(),
            "454 4.7.0 Too many authentication failures, try again later\r\n"
        );
        c.advance(secs(15 * 60 - 1));
        assert_eq!(
            peek(&t, elsewhere, ALICE, c.now()),
            Seen::LockedOut(Scope::User)
        );
        c.advance(secs(1));
        assert_eq!(peek(&t, elsewhere, ALICE, c.now()), Seen::Verify(secs(0)));
    }

    /// The attack of SPEC §3.2: five guesses from elsewhere lock Alice out of new
    /// sources, not out of the one she logs in from, where no delay applies either.
    #[test]
    fn guesses_from_elsewhere_never_lock_a_user_out_of_a_source_it_logged_in_from() {
        let t = AuthThrottle::default();
        let c = clock();
        let home = ip("2001:db8:aa::10");
        succeed(&t, home, ALICE, c.now());
        c.advance(secs(3600));
        for n in 1..=5u8 {
            fail(&t, IpAddr::from([198, 51, 100, n]), ALICE, c.now());
        }
        assert_eq!(
            peek(&t, ip("203.0.113.9"), ALICE, c.now()),
            Seen::LockedOut(Scope::User)
        );
        // Another address of the same /64 is the same source.
        assert_eq!(
            peek(&t, ip("2001:db8:aa::99"), ALICE, c.now()),
            Seen::Verify(secs(0))
        );
        succeed(&t, home, ALICE, c.now());
        // An attacker sharing the source still meets the pair's and the source's limits.
        for _ in 0..5 {
            fail(&t, home, ALICE, c.now());
        }
        assert_eq!(
            peek(&t, home, ALICE, c.now()),
            Seen::LockedOut(Scope::UserIp)
        );
        // A known source is remembered for 30 days after its last login.
        let t = AuthThrottle::default();
        succeed(&t, home, ALICE, c.now());
        c.advance(secs(30 * 24 * 3600 - 1));
        for n in 1..=5u8 {
            fail(&t, IpAddr::from([198, 51, 100, n]), ALICE, c.now());
        }
        assert_eq!(peek(&t, home, ALICE, c.now()), Seen::Verify(secs(0)));
        c.advance(secs(1));
        assert_eq!(peek(&t, home, ALICE, c.now()), Seen::LockedOut(Scope::User));
    }

    #[test]
    fn parallel_guesses_count_like_sequential_ones() {
        let t = AuthThrottle::new(ThrottleConfig {
            first_delay: Duration::from_millis(10),
            ..ThrottleConfig::default()
        });
        let c = clock();
        let a = ip("192.0.2.1");
        // Twenty checks before any verification ends: five may go ahead, and they wait as
        // they would one after another.
        let mut attempts = Vec::new();
        let mut refused = 0;
        for _ in 0..20 {
            match t.check(a, ALICE, c.now()) {
                Decision::Verify { delay, attempt } => attempts.push((delay, attempt)),
                Decision::LockedOut { scope, .. } => {
                    assert_eq!(scope, Scope::UserIp);
                    refused += 1;
                }
            }
        }
        let delays: Vec<_> = attempts.iter().map(|(d, _)| d.as_millis()).collect();
        assert_eq!(delays, [0, 0, 0, 10, 20]);
        assert_eq!(refused, 15);
        let started: Vec<_> = attempts
            .into_iter()
            .flat_map(|(_, attempt)| attempt.failed(c.now()))
            .collect();
        assert_eq!(started, [Scope::UserIp, Scope::User]);
        assert_eq!(peek(&t, a, ALICE, c.now()), Seen::LockedOut(Scope::UserIp));
    }

    #[test]
    fn an_attempt_that_is_not_settled_counts_nothing() {
        let t = AuthThrottle::default();
        let c = clock();
        let a = ip("192.0.2.1");
        for _ in 0..50 {
            // Checked, then the pool was busy or the client went away.
            let decision = t.check(a, ALICE, c.now());
            assert!(matches!(decision, Decision::Verify { delay, .. } if delay.is_zero()));
        }
        assert_eq!(t.tracked(), 0, "nothing left behind");
    }

    #[test]
    fn an_ip_is_locked_out_across_users() {
        let t = AuthThrottle::default();
        let c = clock();
        let a = ip("2001:db8::1");
        for n in 1..=10 {
            let started = fail(&t, a, &format!("user{n}@acme.example"), c.now());
            assert_eq!(started, if n == 10 { vec![Scope::Ip] } else { vec![] });
        }
        // Another address of the same /64 is the same client.
        assert_eq!(
            peek(&t, ip("2001:db8::ffff"), "new@acme.example", c.now()),
            Seen::LockedOut(Scope::Ip)
        );
        assert_eq!(
            peek(&t, ip("2001:db8:0:1::1"), "new@acme.example", c.now()),
            Seen::Verify(secs(0))
        );
    }

    #[test]
    fn a_success_forgives_the_pair_but_not_the_ip_nor_the_user() {
        let t = AuthThrottle::default();
        let c = clock();
        let a = ip("192.0.2.1");
        for _ in 0..4 {
            fail(&t, a, ALICE, c.now());
        }
        succeed(&t, a, ALICE, c.now());
        assert_eq!(
            peek(&t, a, ALICE, c.now()),
            Seen::Verify(secs(2)),
            "the pair's count is gone, the source's (4 failures) stays"
        );
        assert_eq!(
            peek(&t, ip("192.0.2.2"), ALICE, c.now()),
            Seen::Verify(secs(2)),
            "from elsewhere the user-wide count (4 failures) stays"
        );
        fail(&t, ip("192.0.2.2"), ALICE, c.now());
        assert_eq!(
            peek(&t, ip("192.0.2.3"), ALICE, c.now()),
            Seen::LockedOut(Scope::User)
        );
        assert_eq!(
            peek(&t, ip("192.0.2.5"), "bob@acme.example", c.now()),
            Seen::Verify(secs(0))
        );
    }

    #[test]
    fn failures_are_forgotten_after_a_quiet_window() {
        let t = AuthThrottle::default();
        let c = clock();
        let a = ip("192.0.2.1");
        for _ in 0..4 {
            fail(&t, a, ALICE, c.now());
        }
        c.advance(secs(15 * 60 - 1));
        assert_eq!(peek(&t, a, ALICE, c.now()), Seen::Verify(secs(2)));
        c.advance(secs(1));
        assert_eq!(peek(&t, a, ALICE, c.now()), Seen::Verify(secs(0)));
        assert_eq!(t.tracked(), 0, "expired counters are dropped when seen");
        assert!(fail(&t, a, ALICE, c.now()).is_empty());
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
            fail(&t, from, &format!("u{n}@acme.example"), c.now());
            c.advance(secs(1));
            assert!(t.tracked() <= 100);
        }
        // The last user has 1 failure on record: 2 more and its next attempt is delayed.
        let last = IpAddr::from(999u32.to_be_bytes());
        fail(&t, last, "u999@acme.example", c.now());
        fail(&t, last, "u999@acme.example", c.now());
        assert_eq!(
            peek(&t, ip("192.0.2.200"), "u999@acme.example", c.now()),
            Seen::Verify(secs(1))
        );
        assert!(t.tracked() <= 100);
    }

    #[test]
    fn known_sources_are_bounded_per_user_and_in_users() {
        let t = AuthThrottle::new(ThrottleConfig {
            max_known_users: 50,
            ..ThrottleConfig::default()
        });
        let c = clock();
        // Six sources for Alice: the four most recent are known.
        for n in 1..=6u8 {
            succeed(&t, IpAddr::from([192, 0, 2, n]), ALICE, c.now());
            c.advance(secs(1));
        }
        for n in 1..=5u8 {
            fail(&t, IpAddr::from([198, 51, 100, n]), ALICE, c.now());
        }
        for n in 1..=6u8 {
            let expected = if n <= 2 {
                Seen::LockedOut(Scope::User)
            } else {
                Seen::Verify(secs(0))
            };
            assert_eq!(
                peek(&t, IpAddr::from([192, 0, 2, n]), ALICE, c.now()),
                expected,
                "192.0.2.{n}"
            );
        }
        // A thousand users log in: at most 50 are remembered, the most recent.
        for n in 0..1_000u32 {
            succeed(
                &t,
                IpAddr::from(n.to_be_bytes()),
                &format!("u{n}@acme.example"),
                c.now(),
            );
            c.advance(secs(1));
            assert!(t.known_users() <= 50);
        }
        for n in 1..=5u8 {
            fail(
                &t,
                IpAddr::from([198, 51, 100, n]),
                "u999@acme.example",
                c.now(),
            );
        }
        assert_eq!(
            peek(
                &t,
                IpAddr::from(999u32.to_be_bytes()),
                "u999@acme.example",
                c.now()
            ),
            Seen::Verify(secs(0))
        );
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
            fail(&t, attacker, &format!("a{n}@acme.example"), c.now());
        }
        for n in 0..200u32 {
            c.advance(secs(1));
            fail(
                &t,
                IpAddr::from(n.to_be_bytes()),
                &format!("x{n}@acme.example"),
                c.now(),
            );
        }
        assert_eq!(
            peek(&t, attacker, "y@acme.example", c.now()),
            Seen::LockedOut(Scope::Ip)
        );
    }
}
