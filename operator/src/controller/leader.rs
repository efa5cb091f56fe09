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
        // A lease that would expire beyond the representable future never expires.
        Some(at) if at.checked_add(duration).map_or(true, |end| end > now) => Decision::Follow {
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
    /// Returns once leadership is lost: another replica holds the lease, or renewals kept
    /// failing for two thirds of the lease (stepping down before the lease can expire,
    /// so that two leaders never overlap).
    pub async fn run(self, leading: watch::Sender<bool>) {
        let deadline = self.lease_duration * 2 / 3;
        let mut last_renewed: Option<tokio::time::Instant> = None;
        loop {
            match self.try_once().await {
                Ok(true) => {
                    if last_renewed.is_none() {
                        tracing::info!(identity = %self.identity, lease = %self.lease_name, "elected leader");
                    }
                    last_renewed = Some(tokio::time::Instant::now());
                    let _ = leading.send(true);
                }
                Ok(false) if last_renewed.is_some() => {
                    tracing::warn!(identity = %self.identity, "another replica holds the lease");
                    let _ = leading.send(false);
                    return;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "lease round failed");
                    if last_renewed.is_some_and(|t| t.elapsed() >= deadline) {
                        tracing::warn!(identity = %self.identity, "could not renew the lease in time");
                        let _ = leading.send(false);
                        return;
                    }
                }
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

    /// Runs one election round against a mock API server that gives `answers` in order;
    /// returns the outcome and the `(method, path, body)` of each request.
    async fn round(
        identity: &str,
        answers: Vec<(u16, serde_json::Value)>,
    ) -> (
        Result<bool, kube::Error>,
        Vec<(String, String, serde_json::Value)>,
    ) {
        use http::{Request, Response};
        use kube::client::Body;
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut answers = answers.into_iter();
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap();
                let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
                seen.push((parts.method.to_string(), parts.uri.path().to_string(), body));
                let (code, answer) = answers.next().expect("unexpected request");
                send.send_response(
                    Response::builder()
                        .status(code)
                        .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                        .unwrap(),
                );
            }
            seen
        });
        let elector = LeaderElector {
            api: Api::namespaced(kube::Client::new(service, "ops"), "ops"),
            lease_name: "smtprelay-operator".into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        };
        let result = elector.try_once().await;
        drop(elector);
        (result, server.await.unwrap())
    }

    const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases";

    fn lease_json(holder: &str, renewed: Timestamp) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "smtprelay-operator", "namespace": "ops", "resourceVersion": "7"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                     "renewTime": MicroTime(renewed), "acquireTime": MicroTime(renewed)}
        })
    }

    #[tokio::test]
    async fn first_replica_creates_the_lease() {
        let not_found = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404});
        let created = lease_json("pod-a", Timestamp::now());
        let (held, requests) = round("pod-a", vec![(404, not_found), (201, created)]).await;
        assert!(held.unwrap());
        assert_eq!(requests.len(), 2);
        assert_eq!(
            (requests[0].0.as_str(), requests[0].1.clone()),
            ("GET", format!("{LEASE}/smtprelay-operator"))
        );
        assert_eq!(
            (requests[1].0.as_str(), requests[1].1.as_str()),
            ("POST", LEASE)
        );
        assert_eq!(requests[1].2["spec"]["holderIdentity"], "pod-a");
        assert_eq!(requests[1].2["spec"]["leaseDurationSeconds"], 15);
    }

    #[tokio::test]
    async fn a_follower_does_not_write_a_live_lease() {
        let (held, requests) =
            round("pod-b", vec![(200, lease_json("pod-a", Timestamp::now()))]).await;
        assert!(!held.unwrap());
        assert_eq!(requests.len(), 1, "{requests:?}");
    }

    #[tokio::test]
    async fn losing_the_race_for_an_expired_lease_is_not_an_error() {
        let expired = lease_json("pod-a", Timestamp::from_second(1_000).unwrap());
        let conflict = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409});
        let (held, requests) = round("pod-b", vec![(200, expired), (409, conflict)]).await;
        assert!(!held.unwrap());
        // The takeover was a replace carrying the resourceVersion read, so it could lose.
        assert_eq!(requests[1].0, "PUT");
        assert_eq!(requests[1].2["metadata"]["resourceVersion"], "7");
        assert_eq!(requests[1].2["spec"]["holderIdentity"], "pod-b");
    }
}
