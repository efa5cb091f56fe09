//! Leader election with a `coordination.k8s.io/v1` Lease, so that of several operator
//! replicas exactly one reconciles.
//!
//! [`decide`] is the pure rule (take a free or expired lease, renew our own, otherwise
//! follow); [`LeaderElector`] applies it in a loop with optimistic concurrency (a lost
//! update race simply means another replica won this round).
//!
//! Expiry is judged as client-go judges it: by how long *this* replica has seen the same
//! lease record unchanged, on its own monotonic clock, never by comparing the holder's
//! `renewTime` with the local wall clock (the two nodes' clocks may disagree by more than
//! a lease). Every round is bounded by a timeout shorter than the lease, so a hung
//! request cannot keep a leader believing in a lease that has run out. When the holder
//! loses the lease it must stop reconciling at once: [`LeaderElector::run`] returns, and the
//! binary exits so that its Deployment restarts it as a follower. On shutdown the leader
//! [releases](LeaderElector::release) the lease so that a follower takes over at once.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio::time::Instant;

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

/// The election rule, given the current lease spec (if any) and for how long this replica
/// has observed that very record unchanged.
pub fn decide(lease: Option<&LeaseSpec>, me: &str, unchanged_for: Duration) -> Decision {
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
    let duration =
        Duration::from_secs(u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0));
    if unchanged_for >= duration {
        Decision::Acquire
    } else {
        Decision::Follow {
            holder: holder.to_string(),
        }
    }
}

/// The lease as this replica writes it after `decision`. Times are written for people
/// and tools; the election never reads them back.
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

/// The lease as its holder leaves it on shutdown: no holder, so any follower takes it at
/// its next round instead of waiting for the lease to run out.
pub fn released(old: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        lease_transitions: old.lease_transitions,
        ..Default::default()
    }
}

/// Why a lease round failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("lease {lease}: {source}")]
    Api {
        lease: String,
        #[source]
        source: kube::Error,
    },
    #[error("lease {lease}: no answer within {timeout:?}")]
    Timeout { lease: String, timeout: Duration },
}

/// Runs the election for one identity on one Lease.
pub struct LeaderElector {
    pub api: Api<Lease>,
    pub lease_name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
    /// The longest a round (read and write) may take, and the longest the leader keeps
    /// leading without a successful renewal. Shorter than `lease_duration`.
    pub renew_deadline: Duration,
    /// The lease record last seen and when it was first seen (this replica's clock).
    observed: Option<(String, Instant)>,
}

impl LeaderElector {
    pub fn new(
        api: Api<Lease>,
        lease_name: &str,
        identity: &str,
        lease_duration: Duration,
    ) -> Self {
        Self {
            api,
            lease_name: lease_name.into(),
            identity: identity.into(),
            lease_duration,
            renew_every: (lease_duration / 3).max(Duration::from_millis(100)),
            renew_deadline: lease_duration * 2 / 3,
            observed: None,
        }
    }

    fn api_error(&self, source: kube::Error) -> LeaseError {
        LeaseError::Api {
            lease: self.lease_name.clone(),
            source,
        }
    }

    /// For how long the record `lease` has been seen unchanged.
    fn unchanged_for(&mut self, lease: Option<&Lease>) -> Duration {
        let record = lease
            .map(|l| {
                format!(
                    "{:?}/{:?}",
                    l.metadata.resource_version,
                    serde_json::to_string(&l.spec).unwrap_or_default()
                )
            })
            .unwrap_or_default();
        let now = Instant::now();
        match &self.observed {
            Some((seen, since)) if *seen == record => now.duration_since(*since),
            _ => {
                self.observed = Some((record, now));
                Duration::ZERO
            }
        }
    }

    /// One round, bounded by `renew_deadline`: read the lease, decide, write. Returns
    /// whether we hold the lease now.
    pub async fn try_once(&mut self) -> Result<bool, LeaseError> {
        self.try_within(self.renew_deadline).await
    }

    async fn try_within(&mut self, timeout: Duration) -> Result<bool, LeaseError> {
        let lease = self.lease_name.clone();
        tokio::time::timeout(timeout, self.round())
            .await
            .unwrap_or(Err(LeaseError::Timeout { lease, timeout }))
    }

    async fn round(&mut self) -> Result<bool, LeaseError> {
        let current = self
            .api
            .get_opt(&self.lease_name)
            .await
            .map_err(|e| self.api_error(e))?;
        let unchanged_for = self.unchanged_for(current.as_ref());
        let spec = current.as_ref().and_then(|l| l.spec.as_ref());
        let decision = decide(spec, &self.identity, unchanged_for);
        let Some(new_spec) = next_spec(
            spec,
            &decision,
            &self.identity,
            self.lease_duration,
            Timestamp::now(),
        ) else {
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
            Err(e) => Err(self.api_error(e)),
        }
    }

    /// Gives the lease up if we hold it (on shutdown, after reconciling stopped).
    pub async fn release(&self) -> Result<(), LeaseError> {
        let timeout = self.renew_deadline;
        let lease_name = self.lease_name.clone();
        let release = async {
            let Some(mut lease) = self
                .api
                .get_opt(&self.lease_name)
                .await
                .map_err(|e| self.api_error(e))?
            else {
                return Ok(());
            };
            let Some(spec) = lease.spec.as_ref() else {
                return Ok(());
            };
            if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                return Ok(());
            }
            lease.spec = Some(released(spec, Timestamp::now()));
            self.api
                .replace(&self.lease_name, &PostParams::default(), &lease)
                .await
                .map(|_| ())
                .map_err(|e| self.api_error(e))
        };
        tokio::time::timeout(timeout, release)
            .await
            .unwrap_or(Err(LeaseError::Timeout {
                lease: lease_name,
                timeout,
            }))
    }

    /// Campaigns until elected, then keeps renewing; `leading` follows the outcome.
    /// Returns the elector once leadership is lost (another replica holds the lease, or
    /// no renewal succeeded within `renew_deadline`, which is shorter than the lease, so
    /// two leaders never overlap) or `stop` resolves.
    pub async fn run(
        mut self,
        leading: watch::Sender<bool>,
        stop: impl std::future::Future<Output = ()>,
    ) -> Self {
        tokio::pin!(stop);
        let mut last_renewed: Option<Instant> = None;
        loop {
            // A leader's round may last only until its renew deadline runs out.
            let budget = last_renewed.map_or(self.renew_deadline, |t| {
                (t + self.renew_deadline).saturating_duration_since(Instant::now())
            });
            match self.try_within(budget).await {
                Ok(true) => {
                    if last_renewed.is_none() {
                        tracing::info!(identity = %self.identity, lease = %self.lease_name, "elected leader");
                    }
                    last_renewed = Some(Instant::now());
                    let _ = leading.send(true);
                }
                Ok(false) if last_renewed.is_some() => {
                    tracing::warn!(identity = %self.identity, "another replica holds the lease");
                    let _ = leading.send(false);
                    return self;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "lease round failed");
                    if last_renewed.is_some_and(|t| t.elapsed() >= self.renew_deadline) {
                        tracing::warn!(identity = %self.identity, "could not renew the lease in time");
                        let _ = leading.send(false);
                        return self;
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(self.renew_every) => {}
                () = &mut stop => return self,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::{Value, json};

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

    const SECS: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn a_lease_is_followed_until_seen_unchanged_for_its_duration() {
        let lease = held_by("pod-a", 100);
        let follow = Decision::Follow {
            holder: "pod-a".into(),
        };
        assert_eq!(decide(Some(&lease), "pod-b", SECS(14)), follow);
        assert_eq!(decide(Some(&lease), "pod-b", SECS(15)), Decision::Acquire);
        assert_eq!(
            next_spec(Some(&lease), &follow, "pod-b", SECS(15), t(110)),
            None
        );
    }

    #[test]
    fn an_expired_lease_is_taken_over_as_a_new_term() {
        let lease = held_by("pod-a", 100);
        let d = decide(Some(&lease), "pod-b", SECS(16));
        assert_eq!(d, Decision::Acquire);
        let spec = next_spec(Some(&lease), &d, "pod-b", SECS(15), t(116)).unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("pod-b"));
        assert_eq!(spec.lease_transitions, Some(3));
        assert_eq!(spec.acquire_time, Some(MicroTime(t(116))));
    }

    #[test]
    fn the_holder_renews_and_keeps_its_term() {
        let lease = held_by("pod-a", 100);
        let d = decide(Some(&lease), "pod-a", SECS(100));
        assert_eq!(d, Decision::Renew);
        let spec = next_spec(Some(&lease), &d, "pod-a", SECS(15), t(200)).unwrap();
        assert_eq!(spec.acquire_time, Some(MicroTime(t(100))));
        assert_eq!(spec.renew_time, Some(MicroTime(t(200))));
        assert_eq!(spec.lease_transitions, Some(2));
    }

    #[test]
    fn a_missing_or_released_lease_is_acquired() {
        assert_eq!(decide(None, "pod-a", Duration::ZERO), Decision::Acquire);
        let released = released(&held_by("pod-b", 100), t(120));
        assert_eq!(released.holder_identity, None);
        assert_eq!(released.lease_transitions, Some(2));
        assert_eq!(
            decide(Some(&released), "pod-a", Duration::ZERO),
            Decision::Acquire
        );
        let first = next_spec(None, &Decision::Acquire, "pod-a", SECS(15), t(0)).unwrap();
        assert_eq!(first.lease_transitions, Some(0));
    }

    /// A mock API server for the Lease: answers from `answers` in order (`None`: never
    /// answer, a hung request); returns the `(method, path, body)` of each request.
    type Seen = tokio::task::JoinHandle<Vec<(String, String, Value)>>;

    fn server(answers: Vec<Option<(u16, Value)>>) -> (kube::Client, Seen) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut hung = Vec::new();
            let mut answers = answers.into_iter();
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap();
                let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                seen.push((parts.method.to_string(), parts.uri.path().to_string(), body));
                match answers.next().expect("unexpected request") {
                    Some((code, answer)) => send.send_response(
                        Response::builder()
                            .status(code)
                            .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                            .unwrap(),
                    ),
                    None => hung.push(send),
                }
            }
            seen
        });
        (kube::Client::new(service, "ops"), task)
    }

    fn elector(client: kube::Client, identity: &str) -> LeaderElector {
        LeaderElector::new(
            Api::namespaced(client, "ops"),
            "smtprelay-operator",
            identity,
            SECS(15),
        )
    }

    const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases";

    /// A lease as the API server returns it; `renewed` is the holder's wall clock, which
    /// the election must not compare with its own.
    fn lease_json(holder: &str, renewed: Timestamp, version: &str) -> Value {
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "smtprelay-operator", "namespace": "ops", "resourceVersion": version},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                     "renewTime": MicroTime(renewed), "acquireTime": MicroTime(renewed)}
        })
    }

    fn not_found() -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404})
    }

    #[tokio::test]
    async fn first_replica_creates_the_lease() {
        let created = lease_json("pod-a", Timestamp::now(), "1");
        let (client, requests) = server(vec![Some((404, not_found())), Some((201, created))]);
        let mut e = elector(client, "pod-a");
        assert!(e.try_once().await.unwrap());
        drop(e);
        let requests = requests.await.unwrap();
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

    /// The holder's clock runs an hour behind: its renewTime looks long expired to us,
    /// yet it keeps renewing (a new record each time), so it is followed.
    #[tokio::test(start_paused = true)]
    async fn a_holder_with_a_skewed_clock_that_keeps_renewing_is_followed() {
        let behind = Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_hours(1);
        let answers = (1..=4)
            .map(|v| Some((200, lease_json("pod-a", behind, &v.to_string()))))
            .collect();
        let (client, requests) = server(answers);
        let mut e = elector(client, "pod-b");
        for _ in 0..4 {
            assert!(!e.try_once().await.unwrap());
            tokio::time::sleep(SECS(10)).await;
        }
        drop(e);
        assert!(requests.await.unwrap().iter().all(|r| r.0 == "GET"));
    }

    /// The holder's clock runs an hour ahead: its renewTime looks valid for an hour, but
    /// it stopped renewing, so the lease is taken once seen unchanged for 15 s.
    #[tokio::test(start_paused = true)]
    async fn a_dead_holder_with_a_clock_ahead_is_replaced_after_one_lease() {
        let ahead = Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_hours(1);
        let same = || Some((200, lease_json("pod-a", ahead, "7")));
        let taken = lease_json("pod-b", Timestamp::now(), "8");
        let (client, requests) = server(vec![same(), same(), same(), Some((200, taken))]);
        let mut e = elector(client, "pod-b");
        assert!(!e.try_once().await.unwrap());
        tokio::time::sleep(SECS(10)).await;
        assert!(!e.try_once().await.unwrap(), "still within the lease");
        tokio::time::sleep(SECS(6)).await;
        assert!(e.try_once().await.unwrap());
        drop(e);
        let requests = requests.await.unwrap();
        assert_eq!(requests[3].0, "PUT");
        assert_eq!(requests[3].2["metadata"]["resourceVersion"], "7");
        assert_eq!(requests[3].2["spec"]["holderIdentity"], "pod-b");
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_whose_renewal_hangs_steps_down_before_its_lease_runs_out() {
        let mine = lease_json("pod-a", Timestamp::now(), "3");
        let renewed = lease_json("pod-a", Timestamp::now(), "4");
        let (client, _requests) = server(vec![Some((200, mine)), Some((200, renewed)), None]);
        let e = elector(client, "pod-a");
        let (tx, mut rx) = watch::channel(false);
        let started = Instant::now();
        let run = tokio::spawn(e.run(tx, std::future::pending()));
        rx.wait_for(|l| *l).await.unwrap();
        rx.wait_for(|l| !*l).await.unwrap();
        let stepped_down = started.elapsed();
        run.await.unwrap();
        // Renewed at 0 s; the next round (at 5 s) hangs; stepped down by the 10 s deadline.
        assert!(stepped_down <= SECS(10), "{stepped_down:?}");
        assert!(stepped_down < SECS(15));
    }

    #[tokio::test]
    async fn losing_the_race_for_an_expired_lease_is_not_an_error() {
        let conflict = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409});
        let released = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "smtprelay-operator", "namespace": "ops", "resourceVersion": "7"},
            "spec": {"leaseDurationSeconds": 1}
        });
        let (client, requests) = server(vec![Some((200, released)), Some((409, conflict))]);
        let mut e = elector(client, "pod-b");
        assert!(!e.try_once().await.unwrap());
        drop(e);
        let requests = requests.await.unwrap();
        // The takeover was a replace carrying the resourceVersion read, so it could lose.
        assert_eq!(requests[1].0, "PUT");
        assert_eq!(requests[1].2["metadata"]["resourceVersion"], "7");
        assert_eq!(requests[1].2["spec"]["holderIdentity"], "pod-b");
    }

    #[tokio::test]
    async fn the_leader_releases_its_lease_on_shutdown_and_only_its_own() {
        let mine = lease_json("pod-a", Timestamp::now(), "5");
        let (client, requests) = server(vec![Some((200, mine.clone())), Some((200, mine))]);
        let e = elector(client, "pod-a");
        e.release().await.unwrap();
        drop(e);
        let requests = requests.await.unwrap();
        assert_eq!(requests[1].0, "PUT");
        assert_eq!(requests[1].2["spec"]["holderIdentity"], Value::Null);
        assert_eq!(requests[1].2["spec"]["leaseDurationSeconds"], 1);

        let theirs = lease_json("pod-b", Timestamp::now(), "6");
        let (client, requests) = server(vec![Some((200, theirs))]);
        let e = elector(client, "pod-a");
        e.release().await.unwrap();
        drop(e);
        assert_eq!(
            requests.await.unwrap().len(),
            1,
            "someone else's lease is left alone"
        );
    }
}
