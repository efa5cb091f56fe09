//! Leader election with a `coordination.k8s.io/v1` Lease, so that of several operator
//! replicas exactly one reconciles.
//!
//! [`decide`] is the pure rule (take a free or expired lease, renew our own, otherwise
//! follow); [`LeaderElector`] applies it in a loop with optimistic concurrency (a lost
//! update race simply means another replica won this round). When the holder loses the
//! lease it must stop reconciling at once: [`LeaderElector::run`] returns, and the binary
//! exits so that its Deployment restarts it as a follower.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;

/// What this replica should do with the lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The lease is free or expired: take it (a new term).
    Acquire,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds a live lease.
    Follow { holder: String },
}

/// The election rule, given the current lease spec (if any).
pub fn decide(lease: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Decision {
    let Some(spec) = lease else {
        return Decision::Acquire;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder == me {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::Acquire;
    }
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    let renewed = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map(|t| t.0);
    match renewed {
        Some(at) if at + duration > now => Decision::Follow {
            holder: holder.to_string(),
        },
        _ => Decision::Acquire,
    }
}

/// The lease as this replica writes it after `decision`.
pub fn next_spec(
    old: Option<&LeaseSpec>,
    decision: &Decision,
    me: &str,
    lease_duration: Duration,
    now: Timestamp,
) -> Option<LeaseSpec> {
    let seconds = i32::try_from(lease_duration.as_secs()).unwrap_or(i32::MAX);
    match decision {
        Decision::Follow { .. } => None,
        Decision::Renew => Some(LeaseSpec {
            renew_time: Some(MicroTime(now)),
            lease_duration_seconds: Some(seconds),
            ..old.cloned().unwrap_or_default()
        }),
        Decision::Acquire => Some(LeaseSpec {
            holder_identity: Some(me.to_string()),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_duration_seconds: Some(seconds),
            lease_transitions: Some(
                old.and_then(|o| o.lease_transitions).unwrap_or(0) + i32::from(old.is_some()),
            ),
            ..Default::default()
        }),
    }
}

/// Runs the election for one identity on one Lease.
pub struct LeaderElector {
    pub api: Api<Lease>,
    pub lease_name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
}

impl LeaderElector {
    /// One round: read the lease, decide, write. Returns whether we hold the lease now.
    pub async fn try_once(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.lease_name).await?;
        let spec = current.as_ref().and_then(|l| l.spec.as_ref());
        let decision = decide(spec, &self.identity, now);
        let Some(new_spec) = next_spec(spec, &decision, &self.identity, self.lease_duration, now)
        else {
            return Ok(false);
        };
        let result = match current {
            Some(mut lease) => {
                // resourceVersion is kept: a concurrent writer makes this a 409 Conflict.
                lease.spec = Some(new_spec);
                self.api
                    .replace(&self.lease_name, &PostParams::default(), &lease)
                    .await
            }
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.lease_name.clone()),
                        ..Default::default()
                    },
                    spec: Some(new_spec),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
        };
        match result {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Campaigns until elected, then keeps renewing; `leading` follows the outcome.
    /// Returns once leadership is lost (a renewal failed for longer than the lease lasts).
    pub async fn run(self, leading: watch::Sender<bool>) {
        let mut last_renewed: Option<tokio::time::Instant> = None;
        loop {
            let held = match self.try_once().await {
                Ok(held) => held,
                Err(e) => {
                    tracing::warn!(error = %e, "lease round failed");
                    // Keep leading until the lease we hold could have expired.
                    last_renewed.is_some_and(|t| t.elapsed() < self.lease_duration)
                }
            };
            if held {
                if last_renewed.is_none() {
                    tracing::info!(identity = %self.identity, lease = %self.lease_name, "elected leader");
                }
                if self.lease_duration > Duration::ZERO {
                    last_renewed = Some(tokio::time::Instant::now());
                }
                let _ = leading.send(true);
            } else if last_renewed.is_some() {
                tracing::warn!(identity = %self.identity, "lost the lease");
                let _ = leading.send(false);
                return;
            }
            tokio::time::sleep(self.renew_every).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    fn held_by(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(t(renewed))),
            acquire_time: Some(MicroTime(t(renewed))),
            lease_duration_seconds: Some(15),
            lease_transitions: Some(2),
            ..Default::default()
        }
    }

    #[test]
    fn a_live_lease_of_another_replica_is_followed() {
        let lease = held_by("pod-a", 100);
        assert_eq!(
            decide(Some(&lease), "pod-b", t(110)),
            Decision::Follow {
                holder: "pod-a".into()
            }
        );
        assert_eq!(
            next_spec(
                Some(&lease),
                &Decision::Follow {
                    holder: "pod-a".into()
                },
                "pod-b",
                Duration::from_secs(15),
                t(110)
            ),
            None
        );
    }

    #[test]
    fn an_expired_lease_is_taken_over_as_a_new_term() {
        let lease = held_by("pod-a", 100);
        let d = decide(Some(&lease), "pod-b", t(116));
        assert_eq!(d, Decision::Acquire);
        let spec = next_spec(Some(&lease), &d, "pod-b", Duration::from_secs(15), t(116)).unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("pod-b"));
        assert_eq!(spec.lease_transitions, Some(3));
        assert_eq!(spec.acquire_time, Some(MicroTime(t(116))));
    }

    #[test]
    fn the_holder_renews_and_keeps_its_term() {
        let lease = held_by("pod-a", 100);
        let d = decide(Some(&lease), "pod-a", t(200));
        assert_eq!(d, Decision::Renew);
        let spec = next_spec(Some(&lease), &d, "pod-a", Duration::from_secs(15), t(200)).unwrap();
        assert_eq!(spec.acquire_time, Some(MicroTime(t(100))));
        assert_eq!(spec.renew_time, Some(MicroTime(t(200))));
        assert_eq!(spec.lease_transitions, Some(2));
    }

    #[test]
    fn a_missing_or_released_lease_is_acquired() {
        assert_eq!(decide(None, "pod-a", t(0)), Decision::Acquire);
        let released = LeaseSpec::default();
        assert_eq!(decide(Some(&released), "pod-a", t(0)), Decision::Acquire);
        let first = next_spec(
            None,
            &Decision::Acquire,
            "pod-a",
            Duration::from_secs(15),
            t(0),
        )
        .unwrap();
        assert_eq!(first.lease_transitions, Some(0));
    }
}
