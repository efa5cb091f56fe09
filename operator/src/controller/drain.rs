//! Which spool claims to drain, and the Job that drains one (SPEC §3.4).
//!
//! A relay pod's claim outlives the pod: the StatefulSet retains claims when it scales
//! down or is deleted, and the Deployment of earlier versions left its claim behind. Mail
//! acknowledged on such a claim and not yet delivered must not be forgotten, so the
//! operator drains it: a Job runs the relay image in drain mode (`relay --drain`, see the
//! relay's `drain` module) on the claim, and the claim is deleted only once the Job
//! succeeded, that is once the spool is empty.
//!
//! - After a scale-down (or once the old Deployment is gone) the Job hands every message
//!   over, envelope and delivery state included, to the remaining relay pods through
//!   their admin endpoint (`POST /queue/import`, reached by the headless Service), so
//!   mail deferred for hours does not keep a claim and a Job alive.
//! - When the Organization is deleted no relay remains: the StatefulSet is scaled to zero
//!   (its pods stop gracefully) and the Jobs deliver the spools themselves. Deletion waits
//!   for them through the finalizer [`FINALIZER`], the only one the operator sets. The
//!   annotation [`DISCARD_ANNOTATION`]` = "true"` on the Organization skips that wait and
//!   loses the queued mail, for a namespace that must go now.
//!
//! A claim is drained only while no relay pod mounts it and its ordinal is not one the
//! StatefulSet wants back; a Job that fails keeps its claim (status says why; delete the
//! Job to try again). This module is pure: [`claims_to_drain`], [`job`] and [`phase`] are
//! decisions; the controller makes the requests.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use super::identity::{self, DRAIN_APP, SPOOL_VOLUME, drain_selector_labels};
use super::names;
use crds::Organization;

/// The finalizer that makes an Organization's deletion wait for its spools to drain.
pub const FINALIZER: &str = "smtprelay.dev/drain";

/// `"true"` on an Organization: delete it without draining (queued mail is lost).
pub const DISCARD_ANNOTATION: &str = "smtprelay.dev/discard-queue-on-delete";

/// The claim of pod `ordinal` of the StatefulSet `set`.
pub fn claim_name(set: &str, ordinal: u32) -> String {
    format!("{SPOOL_VOLUME}-{set}-{ordinal}")
}

/// The claim the Deployment of earlier versions used.
pub fn legacy_claim_name(org: &str) -> String {
    names::child_name("", org, "-relay-spool")
}

/// One claim to drain and the name of its Job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToDrain {
    pub claim: String,
    pub job: String,
}

/// The claims of `org` in `namespace` that hold a spool no relay pod serves: those of
/// StatefulSet ordinals at or above `keep` (every ordinal when `keep` is `None`, the
/// Organization being deleted) and the old Deployment's, that no pod other than a drain
/// pod mounts and that are not being deleted.
pub fn claims_to_drain(
    org: &str,
    namespace: &str,
    keep: Option<u32>,
    claims: &[PersistentVolumeClaim],
    pods: &[Pod],
) -> Vec<ToDrain> {
    let set = identity::stateful_set_name(org);
    let legacy = legacy_claim_name(org);
    let instance = names::label_value(org);
    let prefix = format!("{SPOOL_VOLUME}-{set}-");
    let mounted = |claim: &str| {
        pods.iter().any(|p| {
            let relay_pod = p.namespace().as_deref() == Some(namespace)
                && p.labels().get("app.kubernetes.io/name").map(String::as_str) != Some(DRAIN_APP);
            let by_volume = p
                .spec
                .as_ref()
                .and_then(|s| s.volumes.as_ref())
                .into_iter()
                .flatten()
                .any(|v| {
                    v.persistent_volume_claim
                        .as_ref()
                        .is_some_and(|c| c.claim_name == claim)
                });
            // A StatefulSet pod mounts the claim of its ordinal.
            let by_ordinal = p
                .name_any()
                .strip_prefix(&format!("{set}-"))
                .is_some_and(|ordinal| claim.strip_prefix(&prefix) == Some(ordinal));
            relay_pod && (by_volume || by_ordinal)
        })
    };
    let mut out: Vec<ToDrain> = claims
        .iter()
        .filter(|c| {
            c.namespace().as_deref() == Some(namespace)
                && c.metadata.deletion_timestamp.is_none()
                && c.labels().get("app.kubernetes.io/instance") == Some(&instance)
        })
        .filter_map(|c| {
            let claim = c.name_any();
            let suffix = if claim == legacy {
                "legacy".to_string()
            } else {
                let ordinal: u32 = claim.strip_prefix(&prefix)?.parse().ok()?;
                if keep.is_some_and(|k| ordinal < k) {
                    return None;
                }
                ordinal.to_string()
            };
            (!mounted(&claim)).then(|| ToDrain {
                job: names::child_name("", org, &format!("-relay-drain-{suffix}")),
                claim,
            })
        })
        .collect();
    out.sort_by(|a, b| a.claim.cmp(&b.claim));
    out
}

/// Where a drain Job sends its messages: the admin endpoint of the remaining relay pods
/// (through the headless Service, which lists ready pods only), or nowhere (`None`: it
/// delivers them itself).
pub fn handover_target(org: &str, namespace: &str, admin_port: u16) -> String {
    format!(
        "http://{}.{namespace}.svc:{admin_port}",
        identity::pods_service_name(org)
    )
}

/// The Job that drains `claim`: the relay pod template of `set` (image, config, Secrets,
/// security context, resources) with the claim as its spool, no probes, and the relay in
/// drain mode. `target` as [`handover_target`] gives it, or `None` to deliver.
pub fn job(
    org: &Organization,
    set: &StatefulSet,
    to_drain: &ToDrain,
    target: Option<&str>,
    admin_port: u16,
) -> Option<Job> {
    let name = org.name_any();
    let template = set.spec.template.clone();
    let mut pod = template.spec?;
    let mut labels = drain_selector_labels(&name);
    labels.insert("app.kubernetes.io/component".into(), "drain".into());
    labels.insert(
        identity::MANAGED_BY.0.to_string(),
        identity::MANAGED_BY.1.to_string(),
    );
    let volumes = pod.volumes.get_or_insert_with(Vec::new);
    volumes.retain(|v| v.name != SPOOL_VOLUME);
    volumes.push(Volume {
        name: SPOOL_VOLUME.into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: to_drain.claim.clone(),
            read_only: Some(false),
        }),
        ..Default::default()
    });
    let container = pod.containers.first_mut()?;
    let mut command = vec![
        "relay".to_string(),
        "--log-format".into(),
        "json".into(),
        "--config".into(),
        format!("{}/{}", identity::CONFIG_DIR, identity::CONFIG_KEY),
        "--drain".into(),
        "--drain-status-listen".into(),
        format!("0.0.0.0:{admin_port}"),
    ];
    if let Some(target) = target {
        command.extend(["--drain-to".to_string(), target.to_string()]);
    }
    container.name = "drain".into();
    container.command = Some(command);
    container.args = None;
    container.startup_probe = None;
    container.liveness_probe = None;
    container.readiness_probe = None;
    container.ports = None;
    pod.restart_policy = Some("OnFailure".into());
    // Delivering a spool may take as long as its messages' retries: no deadline here.
    pod.termination_grace_period_seconds = Some(30);
    Some(Job {
        metadata: ObjectMeta {
            name: Some(to_drain.job.clone()),
            namespace: org.namespace(),
            labels: Some(labels.clone()),
            owner_references: Some(vec![identity::owner_reference(org)]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(6),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Where a drain Job stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Created; no pod runs yet.
    Pending,
    Running,
    /// The spool is empty: the claim may go.
    Succeeded,
    /// Gave up (its reason): the claim stays.
    Failed(String),
}

/// The phase of a drain Job from its status.
pub fn phase(job: &Job) -> Phase {
    let Some(status) = job.status.as_ref() else {
        return Phase::Pending;
    };
    if status.succeeded.unwrap_or(0) > 0 {
        return Phase::Succeeded;
    }
    if let Some(failed) = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Failed" && c.status == "True")
    {
        return Phase::Failed(
            failed
                .message
                .clone()
                .or_else(|| failed.reason.clone())
                .unwrap_or_else(|| "the Job failed".into()),
        );
    }
    if status.active.unwrap_or(0) > 0 {
        Phase::Running
    } else {
        Phase::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claim(name: &str, instance: &str) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "acme",
                "labels": {"app.kubernetes.io/instance": instance}}
        }))
        .unwrap()
    }

    fn pod(name: &str, app: &str, claim: Option<&str>) -> Pod {
        let volumes: Vec<serde_json::Value> = claim
            .map(|c| json!({"name": "spool", "persistentVolumeClaim": {"claimName": c}}))
            .into_iter()
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "acme",
                "labels": {"app.kubernetes.io/name": app}},
            "spec": {"containers": [{"name": "relay"}], "volumes": volumes}
        }))
        .unwrap()
    }

    #[test]
    fn only_claims_of_gone_ordinals_and_the_old_deployment_that_nobody_mounts() {
        let claims = [
            claim("spool-acme-relay-0", "acme"),
            claim("spool-acme-relay-1", "acme"),
            claim("spool-acme-relay-2", "acme"),
            claim("spool-acme-relay-3", "acme"),
            claim("acme-relay-spool", "acme"),
            claim("spool-other-relay-5", "other"),
            claim("data-acme-relay-4", "acme"),
        ];
        // Scaled from 4 to 1; pod 3 is still stopping; pod 2 is gone.
        let pods = [
            pod("acme-relay-0", "smtprelay", Some("spool-acme-relay-0")),
            pod("acme-relay-3", "smtprelay", Some("spool-acme-relay-3")),
            // A drain pod does not count as a user of its claim.
            pod(
                "acme-relay-drain-1-x",
                DRAIN_APP,
                Some("spool-acme-relay-1"),
            ),
        ];
        let got = claims_to_drain("acme", "acme", Some(1), &claims, &pods);
        assert_eq!(
            got,
            vec![
                ToDrain {
                    claim: "acme-relay-spool".into(),
                    job: "acme-relay-drain-legacy".into()
                },
                ToDrain {
                    claim: "spool-acme-relay-1".into(),
                    job: "acme-relay-drain-1".into()
                },
                ToDrain {
                    claim: "spool-acme-relay-2".into(),
                    job: "acme-relay-drain-2".into()
                },
            ]
        );
        // Being deleted: every claim, once no relay pod mounts it.
        let got = claims_to_drain("acme", "acme", None, &claims, &pods[2..]);
        assert_eq!(got.len(), 5, "{got:?}");
        // A pod that is not created yet but whose ordinal is kept: not drained.
        let got = claims_to_drain("acme", "acme", Some(4), &claims, &[]);
        assert_eq!(
            got.iter().map(|t| t.claim.as_str()).collect::<Vec<_>>(),
            vec!["acme-relay-spool"]
        );
    }

    #[test]
    fn a_job_phase_follows_its_status() {
        let job = |status: serde_json::Value| -> Job {
            serde_json::from_value(json!({"metadata": {"name": "j"}, "status": status})).unwrap()
        };
        assert_eq!(phase(&job(json!({}))), Phase::Pending);
        assert_eq!(phase(&job(json!({"active": 1}))), Phase::Running);
        assert_eq!(phase(&job(json!({"succeeded": 1}))), Phase::Succeeded);
        assert_eq!(
            phase(&job(
                json!({"conditions": [{"type": "Failed", "status": "True",
                "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]})
            )),
            Phase::Failed("Job has reached the specified backoff limit".into())
        );
    }
}
