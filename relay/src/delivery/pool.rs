//! `HostPool`: the hosts of one route with their weights and health (SPEC §3.5).
//!
//! Pure: the caller passes the time and the random source. [`HostPool::attempt_order`] gives
//! the order in which to try hosts for one delivery: one primary drawn at random by
//! `loadPercent` among the healthy primaries, then the other healthy primaries, then the
//! healthy secondaries (each tier drawn by weight without replacement), then hosts that are
//! still marked down, as a last resort. A failed host is marked down with exponential
//! backoff; once the backoff has passed it counts as healthy again, so it is probed by the
//! next delivery. This module does not open connections.

use std::time::{Duration, SystemTime};

use rand::{Rng, RngExt};

use crate::config::{HostConfig, RouteHosts};

/// Backoff of a host after its first failure; doubles per further failure.
pub const BASE_BACKOFF: Duration = Duration::from_secs(30);
/// Longest backoff of a failed host.
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Health {
    Up,
    Down { failures: u32, until: SystemTime },
}

#[derive(Debug, Clone)]
struct PoolHost {
    host: HostConfig,
    weight: u32,
    health: Health,
}

impl PoolHost {
    fn healthy(&self, now: SystemTime) -> bool {
        match self.health {
            Health::Up => true,
            Health::Down { until, .. } => now >= until,
        }
    }
}

/// Weighted primaries and secondaries with per-host health.
#[derive(Debug, Clone)]
pub struct HostPool {
    primary: Vec<PoolHost>,
    secondary: Vec<PoolHost>,
}

impl HostPool {
    /// The pool of a route's hosts. A single host is a primary of weight 100.
    pub fn from_route_hosts(hosts: &RouteHosts) -> Self {
        let up = |host: HostConfig, weight: u32| PoolHost {
            host,
            weight,
            health: Health::Up,
        };
        match hosts {
            RouteHosts::Single(h) => Self {
                primary: vec![up(h.clone(), 100)],
                secondary: Vec::new(),
            },
            RouteHosts::Pool { primary, secondary } => {
                let conv = |list: &Vec<crate::config::WeightedHostConfig>| {
                    list.iter()
                        .map(|w| {
                            up(
                                HostConfig {
                                    host: w.host.clone(),
                                    port: w.port,
                                },
                                u32::from(w.load_percent),
                            )
                        })
                        .collect()
                };
                Self {
                    primary: conv(primary),
                    secondary: conv(secondary),
                }
            }
        }
    }

    /// Every host of the pool in the order to try them now.
    pub fn attempt_order<R: Rng + ?Sized>(&self, now: SystemTime, rng: &mut R) -> Vec<HostConfig> {
        let mut order = Vec::with_capacity(self.primary.len() + self.secondary.len());
        let mut down = Vec::new();
        for tier in [&self.primary, &self.secondary] {
            let (healthy, sick): (Vec<&PoolHost>, Vec<&PoolHost>) =
                tier.iter().partition(|h| h.healthy(now));
            order.extend(weighted_shuffle(healthy, rng));
            down.extend(sick);
        }
        // Hosts still in backoff: soonest to recover first.
        down.sort_by_key(|h| match h.health {
            Health::Up => SystemTime::UNIX_EPOCH,
            Health::Down { until, .. } => until,
        });
        order.extend(down.into_iter().map(|h| h.host.clone()));
        order
    }

    /// Records a failed attempt (connect failure, timeout or 4xx) at `now`.
    pub fn mark_down(&mut self, host: &HostConfig, now: SystemTime) {
        for h in self.hosts_mut().filter(|h| h.host == *host) {
            let failures = match h.health {
                Health::Up => 1,
                Health::Down { failures, .. } => failures.saturating_add(1),
            };
            let backoff = backoff_for(failures);
            h.health = Health::Down {
                failures,
                until: now + backoff,
            };
        }
    }

    /// Records a successful attempt: the host takes its share of traffic again.
    pub fn mark_up(&mut self, host: &HostConfig) {
        for h in self.hosts_mut().filter(|h| h.host == *host) {
            h.health = Health::Up;
        }
    }

    /// Whether `host` is usable at `now` (up, or its backoff has passed).
    pub fn is_healthy(&self, host: &HostConfig, now: SystemTime) -> bool {
        self.primary
            .iter()
            .chain(self.secondary.iter())
            .any(|h| h.host == *host && h.healthy(now))
    }

    fn hosts_mut(&mut self) -> impl Iterator<Item = &mut PoolHost> {
        self.primary.iter_mut().chain(self.secondary.iter_mut())
    }
}

/// Backoff after `failures` consecutive failures: 30 s, 60 s, 120 s, … capped at 10 min.
pub fn backoff_for(failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(16);
    BASE_BACKOFF.saturating_mul(1u32 << shift).min(MAX_BACKOFF)
}

/// Draws hosts one by one with probability proportional to weight, without replacement.
/// Hosts of weight 0 come last, in configured order.
fn weighted_shuffle<R: Rng + ?Sized>(mut hosts: Vec<&PoolHost>, rng: &mut R) -> Vec<HostConfig> {
    let mut out = Vec::with_capacity(hosts.len());
    loop {
        let total: u64 = hosts.iter().map(|h| u64::from(h.weight)).sum();
        if total == 0 {
            break;
        }
        let mut pick = rng.random_range(0..total);
        let mut index = 0;
        for (i, h) in hosts.iter().enumerate() {
            let w = u64::from(h.weight);
            if pick < w {
                index = i;
                break;
            }
            pick -= w;
        }
        out.push(hosts.remove(index).host.clone());
    }
    out.extend(hosts.into_iter().map(|h| h.host.clone()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WeightedHostConfig;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn w(host: &str, load: u8) -> WeightedHostConfig {
        WeightedHostConfig {
            host: host.to_string(),
            port: 25,
            load_percent: load,
        }
    }

    fn h(host: &str) -> HostConfig {
        HostConfig {
            host: host.to_string(),
            port: 25,
        }
    }

    fn pool() -> HostPool {
        HostPool::from_route_hosts(&RouteHosts::Pool {
            primary: vec![w("a", 70), w("b", 30)],
            secondary: vec![w("s1", 50), w("s2", 50)],
        })
    }

    #[test]
    fn seventy_thirty_split_within_chi_square_bound() {
        let pool = pool();
        let mut rng = StdRng::seed_from_u64(7);
        let now = SystemTime::UNIX_EPOCH;
        let (mut a, mut b) = (0u32, 0u32);
        for _ in 0..10_000 {
            match pool.attempt_order(now, &mut rng)[0].host.as_str() {
                "a" => a += 1,
                "b" => b += 1,
                other => panic!("first choice {other} is not a primary"),
            }
        }
        let chi = |obs: u32, exp: f64| (f64::from(obs) - exp).powi(2) / exp;
        let statistic = chi(a, 7000.0) + chi(b, 3000.0);
        // 1 degree of freedom, p = 0.001.
        assert!(statistic < 10.83, "a={a} b={b} chi2={statistic}");
    }

    #[test]
    fn failover_goes_through_other_primary_then_secondaries() {
        let pool = pool();
        let mut rng = StdRng::seed_from_u64(1);
        let order = pool.attempt_order(SystemTime::UNIX_EPOCH, &mut rng);
        let names: Vec<&str> = order.iter().map(|h| h.host.as_str()).collect();
        assert_eq!(names.len(), 4);
        let mut primaries = names[..2].to_vec();
        primaries.sort();
        assert_eq!(primaries, ["a", "b"]);
        let mut secondaries = names[2..].to_vec();
        secondaries.sort();
        assert_eq!(secondaries, ["s1", "s2"]);
    }

    #[test]
    fn both_primaries_down_means_secondary_and_recovered_host_gets_traffic_again() {
        let mut pool = pool();
        let mut rng = StdRng::seed_from_u64(3);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        pool.mark_down(&h("a"), t0);
        pool.mark_down(&h("b"), t0);
        for _ in 0..100 {
            let first = pool.attempt_order(t0, &mut rng)[0].host.clone();
            assert!(first == "s1" || first == "s2", "got {first}");
        }
        // The down hosts are still listed last, soonest-recovering first.
        let order = pool.attempt_order(t0, &mut rng);
        assert_eq!(order.len(), 4);
        assert!(order[2..].iter().all(|x| x.host == "a" || x.host == "b"));

        // After the backoff, the primaries are probed again and take traffic.
        let later = t0 + backoff_for(1);
        let mut a_seen = false;
        for _ in 0..100 {
            let first = pool.attempt_order(later, &mut rng)[0].host.clone();
            assert!(first == "a" || first == "b", "got {first}");
            a_seen |= first == "a";
        }
        assert!(a_seen);
        pool.mark_up(&h("a"));
        assert!(pool.is_healthy(&h("a"), t0));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff_for(1), Duration::from_secs(30));
        assert_eq!(backoff_for(2), Duration::from_secs(60));
        assert_eq!(backoff_for(3), Duration::from_secs(120));
        assert_eq!(backoff_for(30), MAX_BACKOFF);
        let mut pool = pool();
        let t0 = SystemTime::UNIX_EPOCH;
        pool.mark_down(&h("a"), t0);
        pool.mark_down(&h("a"), t0);
        assert!(!pool.is_healthy(&h("a"), t0 + Duration::from_secs(59)));
        assert!(pool.is_healthy(&h("a"), t0 + Duration::from_secs(60)));
    }
}
