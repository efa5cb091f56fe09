//! The retry schedule of temporary failures (SPEC §3.5).
//!
//! Pure: given how many attempts have failed, when to try again, and when a message has
//! been queued long enough to bounce. The delays come from `retry_schedule_seconds`
//! (default 60, 60, 180, 300); after the last one each delay doubles, capped by
//! `max_retry_delay_seconds`. This module does not know about messages or the clock source.

use std::time::{Duration, SystemTime};

use crate::config::DeliveryConfig;

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again at this time.
    RetryAt(SystemTime),
    /// The message has been queued for the maximum lifetime: bounce what is left.
    Expired,
}

/// Delays between attempts and the maximum queue lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    steps: Vec<Duration>,
    max_delay: Duration,
    lifetime: Duration,
}

impl RetrySchedule {
    /// The schedule a delivery config declares.
    pub fn from_config(cfg: &DeliveryConfig) -> Self {
        Self {
            steps: cfg
                .retry_schedule_seconds
                .iter()
                .map(|s| Duration::from_secs(*s))
                .collect(),
            max_delay: Duration::from_secs(cfg.max_retry_delay_seconds.max(1)),
            lifetime: Duration::from_secs(cfg.max_queue_lifetime_seconds),
        }
    }

    /// The delay after the `failed`-th failed attempt (1-based).
    pub fn delay_after(&self, failed: u32) -> Duration {
        let index = failed.max(1) as usize - 1;
        let delay = match self.steps.get(index) {
            Some(d) => *d,
            None => {
                let last = self
                    .steps
                    .last()
                    .copied()
                    .unwrap_or(Duration::from_secs(60));
                let doublings = (index + 1 - self.steps.len()).min(32) as u32;
                last.saturating_mul(2u32.saturating_pow(doublings))
            }
        };
        delay.min(self.max_delay)
    }

    /// When to try again after the `failed`-th failed attempt at `now`, for a message
    /// received at `received_at`.
    pub fn decide(&self, received_at: SystemTime, now: SystemTime, failed: u32) -> RetryDecision {
        let expires = received_at + self.lifetime;
        if now >= expires {
            return RetryDecision::Expired;
        }
        // The last attempt happens at the expiry time at the latest.
        RetryDecision::RetryAt((now + self.delay_after(failed)).min(expires))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_schedule_then_doubling_capped() {
        let s = RetrySchedule::from_config(&DeliveryConfig::default());
        let got: Vec<u64> = (1..=10).map(|n| s.delay_after(n).as_secs()).collect();
        assert_eq!(got, [60, 60, 180, 300, 600, 1200, 2400, 4800, 9600, 14400]);
        assert_eq!(s.delay_after(40).as_secs(), 14400);
    }

    #[test]
    fn expiry_bounces_and_last_retry_lands_on_expiry() {
        let cfg = DeliveryConfig {
            max_queue_lifetime_seconds: 100,
            ..DeliveryConfig::default()
        };
        let s = RetrySchedule::from_config(&cfg);
        let t0 = SystemTime::UNIX_EPOCH;
        assert_eq!(
            s.decide(t0, t0 + Duration::from_secs(70), 2),
            RetryDecision::RetryAt(t0 + Duration::from_secs(100))
        );
        assert_eq!(
            s.decide(t0, t0 + Duration::from_secs(100), 3),
            RetryDecision::Expired
        );
    }
}
