//! Deleting an Organization: the finalizer `smtprelay.dev/drain` holds the deletion while
//! the relay stops (the StatefulSet, and the Deployment of an earlier version if the move
//! to the StatefulSet had not finished, scaled to zero) and each spool claim is delivered
//! by a drain Job; then the finalizer goes.
//!
//! Every wait is said: the condition `Deleting` names what deletion waits for (relay pods
//! to stop, drains under way, a failed drain) and each new wait is an Event. When a
//! drain cannot happen, the finalizer goes only after an Event and the condition named
//! the claims left with their mail: a foreground cascade (the garbage collector removes
//! the relay and its config first) or a terminating namespace (nothing can be created
//! there). With the discard annotation the claims are deleted, and so is their mail.
//!
//! Not here: the drain Job itself (`drain`).

use std::time::Duration;

use crds::{DrainingClaim, Organization};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PodTemplateSpec, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};

use super::probe::TlsProber;
use super::status::{self, Problem, Want};
use super::{children, drain, identity};

use super::apply::{ensure, in_namespace, owned, publish, write_status};
use super::children::admin_port_of;
use super::context::{Context, Error, FIELD_MANAGER};
use super::identity::selected;

/// The finalizer the API server adds for `kubectl delete --cascade=foreground`.
const FOREGROUND_DELETION: &str = "foregroundDeletion";

/// Adds (`on`) or removes the drain finalizer, by server-side apply of that one field
/// under the operator's field manager: users' own fields and finalizers stay theirs.
pub(super) async fn set_finalizer(
    client: &Client,
    org: &Organization,
    on: bool,
) -> Result<(), Error> {
    let namespace = org.namespace().unwrap_or_default();
    let name = org.name_any();
    let finalizers: Vec<&str> = if on { vec![drain::FINALIZER] } else { vec![] };
    let body = serde_json::json!({
        "apiVersion": Organization::api_version(&()),
        "kind": Organization::kind(&()),
        "metadata": {"name": name, "namespace": namespace, "finalizers": finalizers},
    });
    let api: Api<Organization> = Api::namespaced(client.clone(), &namespace);
    match api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Already gone: nothing left to hold.
        Err(kube::Error::Api(e)) if e.code == 404 && !on => Ok(()),
        Err(source) => Err(Error::Apply {
            kind: "Organization".into(),
            namespace,
            name,
            source,
        }),
    }
}

/// What a deletion waits for: the `Deleting` condition and its Event.
struct Wait {
    reason: &'static str,
    severity: EventType,
    message: String,
}

impl Wait {
    fn new(reason: &'static str, severity: EventType, message: String) -> Self {
        Self {
            reason,
            severity,
            message,
        }
    }
}

/// Why the claims cannot be drained and are left as they are.
enum Left {
    Foreground,
    NamespaceTerminating,
}

/// An Organization being deleted: the relay stops, then every spool claim is drained by
/// delivery, then the finalizer goes and the garbage collector takes the children. With
/// [`drain::DISCARD_ANNOTATION`] the claims are deleted and the finalizer goes at once.
pub(super) async fn finalize<P: TlsProber>(
    org: &Organization,
    ctx: &Context<P>,
) -> Result<Action, Error> {
    if !org.finalizers().iter().any(|f| f == drain::FINALIZER) {
        return Ok(Action::await_change());
    }
    let name = org.name_any();
    let ns = org
        .namespace()
        .ok_or_else(|| Error::NoNamespace(name.clone()))?;
    if org
        .annotations()
        .get(drain::DISCARD_ANNOTATION)
        .is_some_and(|v| v == "true")
    {
        return discard(ctx, org, &ns).await;
    }
    if !ctx.stores.ready() {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    if org.finalizers().iter().any(|f| f == FOREGROUND_DELETION) {
        return leave_claims(org, ctx, &ns, Left::Foreground).await;
    }
    let set = ctx
        .stores
        .stateful_sets
        .get(&ObjectRef::new(&identity::stateful_set_name(&name)).within(&ns))
        .map(|s| s.as_ref().clone());
    // The relay of an earlier version, if the move to the StatefulSet had not finished.
    let deployment = ctx
        .stores
        .deployments
        .get(&ObjectRef::new(&identity::relay_name(&name)).within(&ns))
        .filter(|d| controlled_by(d.owner_references(), org))
        .map(|d| d.as_ref().clone());
    let mut stopped_now = false;
    if let Some(set) = &set
        && set.spec.replicas != Some(0)
    {
        let api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
        scale_to_zero(&api, &ns, &set.name_any(), "StatefulSet").await?;
        stopped_now = true;
    }
    if let Some(d) = &deployment
        && d.spec.replicas != Some(0)
    {
        let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
        scale_to_zero(&api, &ns, &d.name_any(), "Deployment").await?;
        stopped_now = true;
    }
    if stopped_now {
        publish(
            ctx,
            org,
            EventType::Normal,
            "Draining",
            "Organization deleted: the relay stops taking mail, then its spools are delivered before it goes",
        )
        .await;
    }
    let selector = identity::selector_labels(&name);
    let mut relay_pods: Vec<String> = in_namespace(&ctx.stores.pods, &ns)
        .iter()
        .filter(|p| selected(p.as_ref(), &selector))
        .map(|p| p.name_any())
        .collect();
    relay_pods.sort();
    let mut draining = Vec::new();
    let wait = if !relay_pods.is_empty() {
        Some(Wait::new(
            "WaitingForRelayToStop",
            EventType::Normal,
            format!(
                "waiting for relay pods {} to stop (they finish open sessions and deliveries under way first); then their spool claims are delivered",
                relay_pods.join(", ")
            ),
        ))
    } else {
        // Drain pods are made from the relay's pod template: the StatefulSet's, or the
        // old Deployment's when there is no StatefulSet.
        let template = set
            .as_ref()
            .map(|s| &s.spec.template)
            .or_else(|| deployment.as_ref().map(|d| &d.spec.template));
        let port = set
            .as_ref()
            .and_then(admin_port_of)
            .unwrap_or_else(|| ctx.settings.env.admin_listen.port());
        let mut problems = Vec::new();
        let drains = drain_claims(ctx, org, &ns, None, template, port, &mut problems).await;
        if drains.namespace_terminating {
            return leave_claims(org, ctx, &ns, Left::NamespaceTerminating).await;
        }
        draining = drains.draining;
        let failed: Vec<&Problem> = problems
            .iter()
            .filter(|p| p.reason == "DrainFailed")
            .collect();
        if !failed.is_empty() {
            Some(Wait::new(
                "DrainFailed",
                EventType::Warning,
                failed
                    .iter()
                    .map(|p| p.message.clone())
                    .collect::<Vec<_>>()
                    .join("; "),
            ))
        } else if !drains.undrainable.is_empty() {
            Some(Wait::new(
                "NoRelayToDrainWith",
                EventType::Warning,
                format!(
                    "spool claims {} cannot be drained: neither the StatefulSet nor a Deployment of the relay is left to make a drain pod from; recreate the Organization's relay, or annotate it {}=true to delete the claims and their mail",
                    drains.undrainable.join(", "),
                    drain::DISCARD_ANNOTATION
                ),
            ))
        } else if let Some(p) = problems.first() {
            Some(Wait::new(
                "DrainNotStarted",
                EventType::Warning,
                format!("{}: {}", p.reason, p.message),
            ))
        } else if !draining.is_empty() {
            Some(Wait::new(
                "DrainingSpools",
                EventType::Normal,
                format!(
                    "waiting for drain Jobs to deliver the mail on spool claims {}",
                    draining
                        .iter()
                        .map(|d| format!("{} (Job {}, {})", d.claim, d.job, d.phase))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ))
        } else {
            None
        }
    };
    let Some(wait) = wait else {
        set_finalizer(&ctx.client, org, false).await?;
        return Ok(Action::await_change());
    };
    say(ctx, org, &wait, draining).await?;
    Ok(Action::requeue(ctx.settings.rollout_requeue))
}

/// Writes the `Deleting` condition (and `SpoolClaimPending`, and the claims draining) of
/// a deletion that waits, and an Event when what it waits for changed.
async fn say<P: TlsProber>(
    ctx: &Context<P>,
    org: &Organization,
    wait: &Wait,
    draining: Vec<DrainingClaim>,
) -> Result<(), Error> {
    let now = Time((ctx.clock)());
    let old = org.status.clone().unwrap_or_default();
    let mut new = old.clone();
    let generation = org.metadata.generation;
    status::set_condition(
        &mut new.conditions,
        Want::new(status::DELETING, true, wait.reason, wait.message.clone()),
        generation,
        &now,
    );
    status::set_condition(
        &mut new.conditions,
        status::claims_pending(&draining),
        generation,
        &now,
    );
    new.draining = draining;
    if org.status.as_ref() != Some(&new) {
        write_status(&ctx.client, org, &new).await?;
    }
    let before = status::condition(&old.conditions, status::DELETING);
    if before.is_none_or(|b| (b.reason.as_str(), &b.message) != (wait.reason, &wait.message)) {
        publish(ctx, org, wait.severity, wait.reason, &wait.message).await;
    }
    tracing::info!(namespace = ?org.namespace(), organization = %org.name_any(), reason = wait.reason, "deletion waits: {}", wait.message);
    Ok(())
}

/// True when `owner_references` name `org` as controller.
fn controlled_by(
    owner_references: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference],
    org: &Organization,
) -> bool {
    owner_references
        .iter()
        .any(|r| r.controller == Some(true) && Some(&r.uid) == org.metadata.uid.as_ref())
}

/// Scales a StatefulSet or Deployment to zero through its `scale` subresource.
async fn scale_to_zero<K>(api: &Api<K>, ns: &str, name: &str, kind: &str) -> Result<(), Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let scaled = api
        .patch_scale(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 0}})),
        )
        .await;
    match scaled {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(Error::Apply {
            kind: kind.into(),
            namespace: ns.into(),
            name: name.into(),
            source,
        }),
    }
}

/// The claims of `org` (its StatefulSet's and its old Deployment's, not an earlier
/// Organization's), whatever mounts them.
fn own_claims<P: TlsProber>(ctx: &Context<P>, org: &Organization, ns: &str) -> Vec<String> {
    let claims = owned(&in_namespace(&ctx.stores.claims, ns));
    drain::claims_to_drain(org, None, &claims, &[])
        .into_iter()
        .map(|t| t.claim)
        .collect()
}

/// The discard annotation: the claims go (their mail with them, as the annotation says),
/// so that nothing is left for a later Organization of that name; then the finalizer.
async fn discard<P: TlsProber>(
    ctx: &Context<P>,
    org: &Organization,
    ns: &str,
) -> Result<Action, Error> {
    let claims = own_claims(ctx, org, ns);
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    for claim in &claims {
        match api.delete(claim, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(source) => {
                return Err(Error::Delete {
                    kind: "PersistentVolumeClaim",
                    namespace: ns.into(),
                    name: claim.clone(),
                    source,
                });
            }
        }
    }
    let deleted = if claims.is_empty() {
        "no spool claim was left".to_string()
    } else {
        format!("spool claims {} were deleted", claims.join(", "))
    };
    publish(
        ctx,
        org,
        EventType::Warning,
        "QueueDiscarded",
        &format!(
            "deleted without draining ({}): {deleted}, with any mail still queued on them",
            drain::DISCARD_ANNOTATION
        ),
    )
    .await;
    set_finalizer(&ctx.client, org, false).await?;
    Ok(Action::await_change())
}

/// A deletion whose claims cannot be drained: says which claims are left with their
/// mail (condition, Event, log), then lets the Organization go.
async fn leave_claims<P: TlsProber>(
    org: &Organization,
    ctx: &Context<P>,
    ns: &str,
    why: Left,
) -> Result<Action, Error> {
    let claims = own_claims(ctx, org, ns);
    if !claims.is_empty() {
        let list = claims.join(", ");
        let message = match why {
            Left::Foreground => format!(
                "deleted with a foreground cascade: the garbage collector removes the relay and its config before any spool can be drained; spool claims {list} are left as they are, with any mail they hold (labelled with this Organization's UID, so no later Organization takes them over: see deploy/README.md to deliver their mail)"
            ),
            Left::NamespaceTerminating => format!(
                "namespace {ns} is being deleted: no drain Job can be created there, and spool claims {list} go with the namespace, with any mail they hold"
            ),
        };
        tracing::warn!(namespace = %ns, organization = %org.name_any(), claims = %list, "deletion leaves spool claims undrained: {message}");
        let wait = Wait::new("SpoolClaimsLeft", EventType::Warning, message);
        say(ctx, org, &wait, Vec::new()).await?;
    }
    set_finalizer(&ctx.client, org, false).await?;
    Ok(Action::await_change())
}

/// What [`drain_claims`] found.
#[derive(Debug, Default)]
pub(super) struct Drains {
    /// Claims being drained, for status.
    pub draining: Vec<DrainingClaim>,
    /// Claims no drain Job could be made for (no relay template left).
    pub undrainable: Vec<String>,
    /// The namespace is being deleted: no Job can be created.
    pub namespace_terminating: bool,
}

/// True when the API server refused a create because the namespace is being deleted.
fn namespace_terminating(e: &Error) -> bool {
    matches!(e, Error::Apply { source: kube::Error::Api(s), .. }
        if s.code == 403 && s.message.contains("because it is being terminated"))
}

/// Drains the claims of `org` that no relay pod serves ([`drain::claims_to_drain`] with
/// `keep`): starts a Job for each from `template` (hand-over to the remaining relays when
/// `keep` is given, delivery when the Organization is being deleted), deletes a claim
/// once the Job made for it (its UID) succeeded, and the Job once the claim is gone. A
/// failed Job is a problem; a Job made for another claim of that name counts for nothing
/// and goes.
pub(super) async fn drain_claims<P: TlsProber>(
    ctx: &Context<P>,
    org: &Organization,
    ns: &str,
    keep: Option<u32>,
    template: Option<&PodTemplateSpec>,
    admin_port: u16,
    problems: &mut Vec<Problem>,
) -> Drains {
    let name = org.name_any();
    let claims = owned(&in_namespace(&ctx.stores.claims, ns));
    let pods = owned(&in_namespace(&ctx.stores.pods, ns));
    let target = keep.map(|_| drain::handover_target(&name, ns, admin_port));
    let to_drain = drain::claims_to_drain(org, keep, &claims, &pods);
    let mut out = Drains::default();
    let mut token: Option<Option<String>> = None;
    // One Event each for the drains started and the claims deleted by this reconcile.
    let (mut started, mut drained) = (Vec::new(), Vec::new());
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    for t in &to_drain {
        let existing = ctx.stores.jobs.get(&ObjectRef::new(&t.job).within(ns));
        let phase = match existing {
            Some(job) if drain::made_for(&job, org, t) => drain::phase(&job),
            Some(job) => {
                // Made for another claim of this name (or not by this Organization): it
                // says nothing about this claim. A finished one of ours goes, and the
                // next reconcile starts the right one.
                let finished = matches!(
                    drain::phase(&job),
                    drain::Phase::Succeeded | drain::Phase::Failed(_)
                );
                if finished && controlled_by(job.owner_references(), org) {
                    if let Err(e) = jobs.delete(&t.job, &DeleteParams::background()).await {
                        tracing::warn!(namespace = %ns, job = %t.job, "cannot delete a drain Job made for another claim: {e}");
                    }
                } else if !controlled_by(job.owner_references(), org) {
                    problems.push(Problem::new(
                        "DrainNotStarted",
                        format!(
                            "a Job named {} exists that this Organization did not make; claim {} cannot be drained until it is deleted",
                            t.job, t.claim
                        ),
                    ));
                }
                drain::Phase::Pending
            }
            None => {
                // Created once; a Job's pod template cannot change afterwards.
                let Some(job) =
                    template.and_then(|tp| drain::job(org, tp, t, target.as_deref(), admin_port))
                else {
                    out.undrainable.push(t.claim.clone());
                    continue;
                };
                match ensure(&ctx.client, &ctx.stores.jobs, &job).await {
                    Ok(_) => started.push(format!("{} (Job {})", t.claim, t.job)),
                    Err(e) if namespace_terminating(&e) => {
                        out.namespace_terminating = true;
                        return out;
                    }
                    Err(e) => {
                        problems.push(Problem::new("DrainNotStarted", e.to_string()));
                        continue;
                    }
                }
                drain::Phase::Pending
            }
        };
        let entry = |phase: &str, messages, message| DrainingClaim {
            claim: t.claim.clone(),
            job: t.job.clone(),
            phase: phase.into(),
            messages,
            message,
        };
        match phase {
            drain::Phase::Succeeded => {
                let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
                match api.delete(&t.claim, &DeleteParams::background()).await {
                    Ok(_) => drained.push(t.claim.clone()),
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => problems.push(Problem::new(
                        "DrainedClaimKept",
                        format!("deleting drained claim {}: {e}", t.claim),
                    )),
                }
            }
            drain::Phase::Failed(why) => {
                problems.push(Problem::new(
                    "DrainFailed",
                    format!(
                        "Job {} draining spool claim {} failed: {why}; the claim and its mail are kept: see the Job's logs, then delete the Job to try again",
                        t.job, t.claim
                    ),
                ));
                out.draining.push(entry("Failed", None, Some(why)));
            }
            drain::Phase::Pending => out.draining.push(entry("Pending", None, None)),
            drain::Phase::Running => {
                if token.is_none() {
                    token = Some(admin_token(ctx, &name, ns).await);
                }
                let messages =
                    drain_progress(ctx, ns, &t.job, admin_port, token.clone().flatten()).await;
                out.draining.push(entry("Running", messages, None));
            }
        }
    }
    if !started.is_empty() {
        let how = if target.is_some() {
            "hand their queues over to the remaining relay pods"
        } else {
            "deliver their queues"
        };
        let note = format!(
            "spool claims of relay pods that are gone are drained: {}; the Jobs {how}",
            started.join(", ")
        );
        publish(ctx, org, EventType::Normal, "DrainStarted", &note).await;
    }
    if !drained.is_empty() {
        let note = format!(
            "drained spool claims are empty and were deleted: {}",
            drained.join(", ")
        );
        publish(ctx, org, EventType::Normal, "SpoolDrained", &note).await;
    }
    // Jobs whose claim is gone (drained and deleted) or wanted back (scaled up again).
    let drain_labels = identity::drain_selector_labels(&name);
    for job in in_namespace(&ctx.stores.jobs, ns) {
        if !selected(job.as_ref(), &drain_labels)
            || !controlled_by(job.owner_references(), org)
            || to_drain.iter().any(|t| t.job == job.name_any())
            || !matches!(
                drain::phase(&job),
                drain::Phase::Succeeded | drain::Phase::Failed(_)
            )
        {
            continue;
        }
        match jobs
            .delete(&job.name_any(), &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                tracing::warn!(namespace = %ns, job = %job.name_any(), "cannot delete a finished drain Job: {e}")
            }
        }
    }
    out
}

/// The admin token of `org`'s relays (its Secret's `token`), which a drain pod's status
/// port asks for; `None` when it cannot be read (the progress is then unknown).
async fn admin_token<P: TlsProber>(ctx: &Context<P>, org: &str, ns: &str) -> Option<String> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let secret = api
        .get_opt(&children::admin_secret_name(org))
        .await
        .ok()
        .flatten()?;
    let token = crate::secrets::secret_value(&secret, "token")?;
    Some(String::from_utf8_lossy(&token).trim().to_string())
}

/// Messages the running pod of drain Job `job` still has, if it says. Only a pod that Job
/// owns is asked.
pub(super) async fn drain_progress<P: TlsProber>(
    ctx: &Context<P>,
    ns: &str,
    job: &str,
    port: u16,
    token: Option<String>,
) -> Option<u64> {
    let uid = ctx
        .stores
        .jobs
        .get(&ObjectRef::new(job).within(ns))?
        .uid()?;
    let pod = in_namespace(&ctx.stores.pods, ns).into_iter().find(|p| {
        p.labels().get("job-name").map(String::as_str) == Some(job)
            && p.metadata.deletion_timestamp.is_none()
            && p.owner_references()
                .iter()
                .any(|r| r.kind == "Job" && r.controller == Some(true) && r.uid == uid)
    })?;
    let ip = pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
    ctx.pod_reports.drain_remaining(ip, port, token).await.ok()
}
