//! Deleting an Organization: the finalizer `smtprelay.dev/drain` holds the deletion while
//! the relay is scaled to zero and each spool claim is delivered by a drain Job; then the
//! finalizer goes (or at once with the discard annotation).
//!
//! Not here: the drain Job itself (`drain`).

use std::time::Duration;

use crds::Organization;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};

use super::probe::TlsProber;
use super::status::Problem;
use super::{drain, identity};

use super::apply::{ensure, in_namespace, owned, publish, write_status};
use super::children::admin_port_of;
use super::context::{Context, Error, FIELD_MANAGER};
use super::identity::selected;

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

/// An Organization being deleted: the relay stops (StatefulSet scaled to zero, pods stop
/// gracefully), then every spool claim is drained by delivery, then the finalizer goes
/// and the garbage collector takes the children. With [`drain::DISCARD_ANNOTATION`] the
/// finalizer goes at once.
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
        publish(
            ctx,
            org,
            EventType::Warning,
            "QueueDiscarded",
            &format!(
                "deleted without draining ({}): mail still queued on the relay's spool claims is lost with them",
                drain::DISCARD_ANNOTATION
            ),
        )
        .await;
        set_finalizer(&ctx.client, org, false).await?;
        return Ok(Action::await_change());
    }
    if !ctx.stores.ready() {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let set = ctx
        .stores
        .stateful_sets
        .get(&ObjectRef::new(&identity::stateful_set_name(&name)).within(&ns))
        .map(|s| s.as_ref().clone());
    if let Some(set) = &set
        && set.spec.replicas != Some(0)
    {
        let api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
        api.patch_scale(
            &set.name_any(),
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 0}})),
        )
        .await
        .map_err(|source| Error::Apply {
            kind: "StatefulSet".into(),
            namespace: ns.clone(),
            name: set.name_any(),
            source,
        })?;
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
    let relay_pods = in_namespace(&ctx.stores.pods, &ns)
        .iter()
        .filter(|p| selected(p.as_ref(), &selector))
        .count();
    let mut problems = Vec::new();
    let draining = if relay_pods > 0 {
        Vec::new()
    } else {
        let port = set
            .as_ref()
            .and_then(admin_port_of)
            .unwrap_or_else(|| ctx.settings.env.admin_listen.port());
        drain_claims(ctx, org, &ns, None, set.as_ref(), port, &mut problems).await
    };
    if relay_pods == 0 && draining.is_empty() {
        set_finalizer(&ctx.client, org, false).await?;
        return Ok(Action::await_change());
    }
    let old = org.status.clone();
    let mut new = old.clone().unwrap_or_default();
    new.draining = draining;
    if old.as_ref() != Some(&new) {
        write_status(&ctx.client, org, &new).await?;
    }
    for p in &problems {
        tracing::warn!(namespace = %ns, organization = %name, reason = %p.reason, "{}", p.message);
    }
    Ok(Action::requeue(ctx.settings.rollout_requeue))
}

/// Drains the claims of `org` that no relay pod serves ([`drain::claims_to_drain`] with
/// `keep`): starts a Job for each (hand-over to the remaining relays when `keep` is
/// given, delivery when the Organization is being deleted), deletes a claim once its Job
/// succeeded and the Job once the claim is gone. What is still draining, for status; a
/// failed Job is also a problem.
pub(super) async fn drain_claims<P: TlsProber>(
    ctx: &Context<P>,
    org: &Organization,
    ns: &str,
    keep: Option<u32>,
    set: Option<&StatefulSet>,
    admin_port: u16,
    problems: &mut Vec<Problem>,
) -> Vec<crds::DrainingClaim> {
    let name = org.name_any();
    let claims = owned(&in_namespace(&ctx.stores.claims, ns));
    let pods = owned(&in_namespace(&ctx.stores.pods, ns));
    let target = keep.map(|_| drain::handover_target(&name, ns, admin_port));
    let to_drain = drain::claims_to_drain(&name, ns, keep, &claims, &pods);
    let mut out = Vec::new();
    // One Event each for the drains started and the claims deleted by this reconcile (the
    // recorder would fold Events of one reason into a series and keep the first note).
    let (mut started, mut drained) = (Vec::new(), Vec::new());
    for t in &to_drain {
        let phase = match ctx.stores.jobs.get(&ObjectRef::new(&t.job).within(ns)) {
            Some(job) => drain::phase(&job),
            None => {
                // Created once; a Job's pod template cannot change afterwards.
                let Some(job) =
                    set.and_then(|s| drain::job(org, s, t, target.as_deref(), admin_port))
                else {
                    continue;
                };
                match ensure(&ctx.client, &ctx.stores.jobs, &job).await {
                    Ok(_) => started.push(format!("{} (Job {})", t.claim, t.job)),
                    Err(e) => {
                        problems.push(Problem::new("DrainNotStarted", e.to_string()));
                        continue;
                    }
                }
                drain::Phase::Pending
            }
        };
        let entry = |phase: &str, messages, message| crds::DrainingClaim {
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
                out.push(entry("Failed", None, Some(why)));
            }
            drain::Phase::Pending => out.push(entry("Pending", None, None)),
            drain::Phase::Running => {
                let messages = drain_progress(ctx, ns, &t.job, admin_port).await;
                out.push(entry("Running", messages, None));
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
            || to_drain.iter().any(|t| t.job == job.name_any())
            || !matches!(
                drain::phase(&job),
                drain::Phase::Succeeded | drain::Phase::Failed(_)
            )
        {
            continue;
        }
        let api: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
        match api
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

/// Messages the running pod of drain Job `job` still has, if it says.
pub(super) async fn drain_progress<P: TlsProber>(
    ctx: &Context<P>,
    ns: &str,
    job: &str,
    port: u16,
) -> Option<u64> {
    let pod = in_namespace(&ctx.stores.pods, ns).into_iter().find(|p| {
        p.labels().get("job-name").map(String::as_str) == Some(job)
            && p.metadata.deletion_timestamp.is_none()
    })?;
    let ip = pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
    ctx.pod_reports.drain_remaining(ip, port).await.ok()
}
