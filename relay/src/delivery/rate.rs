//! Per-route send rate (`MailRoute.spec.rateLimit.messagesPerSecond`, SPEC §2.4).
//!
//! A [`RouteRate`] hands out one start time per message transaction, spaced `1/rate`
//! apart: a transaction waits for its turn (in its delivery attempt, holding the
//! destination slot it already has) instead of being sent and refused by the provider.
//! Turns are given in the order they are asked for, so no message starves.
//!
//! A provider that still answers a transaction with a 4xx (throttling, such as SES's
//! `454 Throttling failure`) slows the route down: each such answer halves the rate the
//! route is sent at (down to 1/64 of the configured one), and each transaction answered
//! without one gives back an eighth of what is missing. Additive increase would take
//! minutes at low rates; this recovers within a few dozen messages and stays below the
//! provider's limit when it keeps refusing. The recipients of the refused transaction are
//! deferred as any 4xx is, not bounced.
//!
//! With the Redis limit store, turns come from Redis ([`SharedTurns`]): all the replicas
//! of a relay share one budget per route, so the provider sees the configured rate
//! whatever the number of pods. Should Redis not answer, a pod falls back to its own
//! turns (logged), which keeps mail moving at no more than the rate per pod.
//!
//! The number of connections (`maxConnections`) is not here: it is the route's
//! destination slot limit in the scheduler ([`super::queue`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Turns shared by the relays of one organization (the Redis limit store).
pub trait SharedTurns: Send + Sync {
    /// Takes the next turn of `route`, the turns being `interval` apart; how long to wait
    /// for it.
    fn turn<'a>(
        &'a self,
        route: &'a str,
        interval: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<Duration, String>> + Send + 'a>>;
}

/// The slowest a throttled route goes, as a fraction of its configured rate.
const MIN_FACTOR: f64 = 1.0 / 64.0;

#[derive(Debug)]
struct State {
    /// Configured messages per second.
    rate: f64,
    /// Fraction of `rate` in force (1 unless the provider throttled).
    factor: f64,
    /// The earliest start of the next transaction.
    next: Option<Instant>,
}

/// The send rate of one route.
#[derive(Debug)]
pub struct RouteRate {
    state: Mutex<State>,
}

impl RouteRate {
    /// A route sending at most `messages_per_second`.
    pub fn new(messages_per_second: f64) -> Self {
        Self {
            state: Mutex::new(State {
                rate: messages_per_second.max(0.001),
                factor: 1.0,
                next: None,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the configured rate (a new config); the throttling state stays.
    pub fn set_rate(&self, messages_per_second: f64) {
        self.state().rate = messages_per_second.max(0.001);
    }

    /// The rate in force now, in messages per second.
    pub fn current(&self) -> f64 {
        let s = self.state();
        s.rate * s.factor
    }

    /// Waits for this transaction's turn of `route`: from `shared` when given (every
    /// replica's), else from this pod's own turns.
    pub async fn acquire_for(&self, route: &str, shared: Option<&dyn SharedTurns>) {
        if let Some(shared) = shared {
            let interval = {
                let s = self.state();
                Duration::from_secs_f64(1.0 / (s.rate * s.factor))
            };
            match shared.turn(route, interval).await {
                Ok(wait) => {
                    tokio::time::sleep(wait).await;
                    return;
                }
                Err(e) => {
                    tracing::warn!(route, error = %e, "shared send rate unavailable; this pod keeps to the rate on its own");
                }
            }
        }
        self.acquire().await;
    }

    /// Waits for this transaction's turn.
    pub async fn acquire(&self) {
        let at = {
            let mut s = self.state();
            let now = Instant::now();
            let at = s.next.map_or(now, |n| n.max(now));
            s.next = Some(at + Duration::from_secs_f64(1.0 / (s.rate * s.factor)));
            at
        };
        tokio::time::sleep_until(at).await;
    }

    /// The provider answered a transaction with a 4xx: send slower.
    pub fn throttled(&self) {
        let mut s = self.state();
        s.factor = (s.factor / 2.0).max(MIN_FACTOR);
    }

    /// A transaction went through without a 4xx: recover some of the rate.
    pub fn answered(&self) {
        let mut s = self.state();
        s.factor = (s.factor + (1.0 - s.factor) / 8.0).min(1.0);
        if 1.0 - s.factor < 1e-3 {
            s.factor = 1.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real time, asserted from below only: a slow machine cannot make these fail.

    #[tokio::test]
    async fn turns_are_spaced_by_the_rate() {
        let rate = std::sync::Arc::new(RouteRate::new(50.0));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let rate = rate.clone();
            tasks.push(tokio::spawn(async move {
                rate.acquire().await;
                Instant::now()
            }));
        }
        let mut times = Vec::new();
        for t in tasks {
            times.push(t.await.unwrap() - start);
        }
        times.sort();
        // The tenth turn is nine intervals of 20 ms after the first.
        assert!(times[9] >= Duration::from_millis(180), "{times:?}");
        assert!(
            times[9] - times[0] >= Duration::from_millis(180),
            "{times:?}"
        );
    }

    #[tokio::test]
    async fn throttling_halves_the_rate_and_answers_win_it_back() {
        let rate = RouteRate::new(8.0);
        rate.throttled();
        rate.throttled();
        assert_eq!(rate.current(), 2.0);
        for _ in 0..20 {
            rate.throttled();
        }
        assert_eq!(rate.current(), 8.0 / 64.0, "never below 1/64");
        for _ in 0..200 {
            rate.answered();
        }
        assert_eq!(rate.current(), 8.0);
        // A throttled route really waits longer between transactions.
        let fast = RouteRate::new(40.0);
        for _ in 0..3 {
            fast.throttled();
        }
        fast.acquire().await;
        let before = Instant::now();
        fast.acquire().await;
        assert!(Instant::now() - before >= Duration::from_millis(195));
    }
}
