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
//! StatefulSet wants back, and only when it is this Organization's: a claim made for an
//! earlier Organization of the same name ([`foreign`]) is neither drained nor run on. A
//! Job counts only for the claim UID it was made for ([`made_for`]); one that fails keeps
//! its claim (status says why; delete the Job to try again). Drain pods have a
//! NetworkPolicy of their own ([`network_policy`]): only the operator reaches their status
//! port. This module is pure: [`claims_to_drain`], [`job`], [`phase`] and the rest are
//! decisions; the controller makes the requests.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
    VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::children::ORGANIZATION_UID_LABEL;
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

/// Annotation on a drain Job: the UID of the claim it drains. A Job counts only for that
/// claim: a claim deleted and made again under the same name is another claim, and the
/// Job's success says nothing about it.
pub const CLAIM_UID_ANNOTATION: &str = "smtprelay.dev/claim-uid";

/// One claim to drain and the name of its Job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToDrain {
    pub claim: String,
    /// The claim's UID (empty when the API server gave none).
    pub claim_uid: String,
    pub job: String,
}

/// True when `claim` is not `org`'s although it carries its name: made for an earlier
/// Organization of the same name (its UID label names another Organization, or, from
/// before claims carried the label, it is older than `org`). Its mail is not this
/// Organization's to deliver, and its relay must not run on it.
pub fn foreign(org: &Organization, claim: &PersistentVolumeClaim) -> bool {
    match claim.labels().get(ORGANIZATION_UID_LABEL) {
        Some(uid) => org.uid().as_ref() != Some(uid),
        None => match (
            &claim.metadata.creation_timestamp,
            &org.metadata.creation_timestamp,
        ) {
            (Some(made), Some(born)) => made.0 < born.0,
            _ => false,
        },
    }
}

/// The claims named like `org`'s spool claims (StatefulSet ordinals, the old
/// Deployment's) that are [`foreign`] to it, with their ordinal (`None`: the old
/// Deployment's).
pub fn foreign_claims(
    org: &Organization,
    claims: &[PersistentVolumeClaim],
) -> Vec<(Option<u32>, String)> {
    let name = org.name_any();
    let prefix = format!("{SPOOL_VOLUME}-{}-", identity::stateful_set_name(&name));
    let legacy = legacy_claim_name(&name);
    let mut out: Vec<(Option<u32>, String)> = claims
        .iter()
        .filter(|c| c.namespace() == org.namespace() && foreign(org, c))
        .filter_map(|c| {
            let claim = c.name_any();
            if claim == legacy {
                return Some((None, claim));
            }
            let ordinal = claim.strip_prefix(&prefix)?.parse().ok()?;
            Some((Some(ordinal), claim))
        })
        .collect();
    out.sort();
    out
}

/// The claims of `org` in its namespace that hold a spool no relay pod serves: those of
/// StatefulSet ordinals at or above `keep` (every ordinal when `keep` is `None`, the
/// Organization being deleted) and the old Deployment's, that no pod other than a drain
/// pod mounts, that are not being deleted and that are not [`foreign`].
pub fn claims_to_drain(
    org: &Organization,
    keep: Option<u32>,
    claims: &[PersistentVolumeClaim],
    pods: &[Pod],
) -> Vec<ToDrain> {
    let namespace = org.namespace().unwrap_or_default();
    let namespace = namespace.as_str();
    let org_name = org.name_any();
    let org = (&org_name, org);
    let set = identity::stateful_set_name(org.0);
    let legacy = legacy_claim_name(org.0);
    let instance = names::label_value(org.0);
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
                && !foreign(org.1, c)
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
                job: names::child_name("", org.0, &format!("-relay-drain-{suffix}")),
                claim_uid: c.uid().unwrap_or_default(),
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

/// The Job that drains `to_drain.claim`: the relay pod `template` (of the StatefulSet,
/// or of the Deployment a relay ran as before; image, config, Secrets, security context,
/// resources) with the claim as its spool, no probes, and the relay in drain mode,
/// serving its progress on the admin port (dual-stack; the admin token guards it, and
/// the drain pods' NetworkPolicy admits the operator only). `target` as
/// [`handover_target`] gives it, or `None` to deliver.
pub fn job(
    org: &Organization,
    template: &PodTemplateSpec,
    to_drain: &ToDrain,
    target: Option<&str>,
    admin_port: u16,
) -> Option<Job> {
    let name = org.name_any();
    let mut pod = template.spec.clone()?;
    let mut labels = drain_selector_labels(&name);
    labels.insert("app.kubernetes.io/component".into(), "drain".into());
    labels.insert(
        identity::MANAGED_BY.0.to_string(),
        identity::MANAGED_BY.1.to_string(),
    );
    let volumes = pod.volumes.get_or_insert_with(Vec::new);
    volumes.retain(|v| v.name != SPOOL_VOLUME && v.persistent_volume_claim.is_none());
    volumes.push(Volume {
        name: SPOOL_VOLUME.into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: to_drain.claim.clone(),
            read_only: Some(false),
        }),
        ..Default::default()
    });
    let container = pod.containers.first_mut()?;
    // The spool where the relay's config expects it (a template without the mount, such
    // as a Deployment's of an earlier version, gets it).
    let mounts = container.volume_mounts.get_or_insert_with(Vec::new);
    if !mounts.iter().any(|m| m.name == SPOOL_VOLUME) {
        mounts.push(VolumeMount {
            name: SPOOL_VOLUME.into(),
            mount_path: crate::render::RenderEnv::pod().spool_dir,
            ..Default::default()
        });
    }
    let mut command = vec![
        "relay".to_string(),
        "--log-format".into(),
        "json".into(),
        "--config".into(),
        format!("{}/{}", identity::CONFIG_DIR, identity::CONFIG_KEY),
        "--drain".into(),
        "--drain-status-listen".into(),
        std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, admin_port)).to_string(),
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
    // A drain pod is not a relay: no spreading among relays.
    pod.topology_spread_constraints = None;
    // Delivering a spool may take as long as its messages' retries: no deadline here.
    pod.termination_grace_period_seconds = Some(30);
    Some(Job {
        metadata: ObjectMeta {
            name: Some(to_drain.job.clone()),
            namespace: org.namespace(),
            labels: Some(labels.clone()),
            annotations: Some(BTreeMap::from([(
                CLAIM_UID_ANNOTATION.to_string(),
                to_drain.claim_uid.clone(),
            )])),
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

/// True when `job` was made by `org` for the claim `to_drain` names, as it is now (its
/// UID): only then does its outcome say anything about that claim.
pub fn made_for(job: &Job, org: &Organization, to_drain: &ToDrain) -> bool {
    let ours = job
        .owner_references()
        .iter()
        .any(|r| r.controller == Some(true) && Some(&r.uid) == org.metadata.uid.as_ref());
    let claim = job.annotations().get(CLAIM_UID_ANNOTATION);
    ours && claim.is_some_and(|uid| !uid.is_empty() && *uid == to_drain.claim_uid)
}

/// Ingress of `org`'s drain pods: nothing but the operator (`operator_namespace`) on the
/// status port. A drain pod serves no client; its egress (delivery, or the hand-over to
/// the relays' admin port) stays open.
pub fn network_policy(
    org: &Organization,
    status_port: u16,
    operator_namespace: &str,
) -> NetworkPolicy {
    let name = org.name_any();
    let mut labels = identity::selector_labels(&name);
    labels.insert("app.kubernetes.io/component".into(), "drain".into());
    labels.insert(
        identity::MANAGED_BY.0.to_string(),
        identity::MANAGED_BY.1.to_string(),
    );
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(names::child_name("", &name, "-relay-drain")),
            namespace: org.namespace(),
            labels: Some(labels),
            owner_references: Some(vec![identity::owner_reference(org)]),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(drain_selector_labels(&name)),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(i32::from(status_port))),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
                from: Some(vec![NetworkPolicyPeer {
                    namespace_selector: Some(LabelSelector {
                        match_labels: Some(BTreeMap::from([(
                            "kubernetes.io/metadata.name".to_string(),
                            operator_namespace.to_string(),
                        )])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
            }]),
            ..Default::default()
        }),
    }
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
        let org: Organization = serde_json::from_value(json!({
            "apiVersion": "smtprelay.dev/v1alpha1", "kind": "Organization",
            "metadata": {"name": "acme", "namespace": "acme", "uid": "uid-acme"},
            "spec": {"domains": ["acme.example"], "licenses": 1}
        }))
        .unwrap();
        let got = claims_to_drain(&org, Some(1), &claims, &pods);
        assert_eq!(
            got,
            vec![
                ToDrain {
                    claim: "acme-relay-spool".into(),
                    claim_uid: String::new(),
                    job: "acme-relay-drain-legacy".into()
                },
                ToDrain {
                    claim: "spool-acme-relay-1".into(),
                    claim_uid: String::new(),
                    job: "acme-relay-drain-1".into()
                },
                ToDrain {
                    claim: "spool-acme-relay-2".into(),
                    claim_uid: String::new(),
                    job: "acme-relay-drain-2".into()
                },
            ]
        );
        // Being deleted: every claim, once no relay pod mounts it.
        let got = claims_to_drain(&org, None, &claims, &pods[2..]);
        assert_eq!(got.len(), 5, "{got:?}");
        // A pod that is not created yet but whose ordinal is kept: not drained.
        let got = claims_to_drain(&org, Some(4), &claims, &[]);
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
