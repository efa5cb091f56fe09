//! Writing to the API server: server-side apply of children and status under one field
//! manager (skipped when the stored object already holds what the operator wants), and
//! Events, the audit log (bounded notes, one per change, never retried; see `events`).
//!
//! Not here: what to apply (`children`, `status`), when (`reconcile`).

use std::sync::Arc;

use crds::Condition;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::Digest;

use super::status;
use super::status::Problem;

use super::context::{Context, Error, FIELD_MANAGER, MAX_EVENT_NOTE};

/// Annotation on every child: the hash of the apply that produced it. A field the
/// operator stops setting changes the hash, so the child is applied again (and server-side
/// apply removes the field), although what is left is still all in the stored object.
pub const APPLIED_HASH_ANNOTATION: &str = "smtprelay.dev/applied-hash";

pub(super) fn apply_body<K>(object: &K) -> serde_json::Value
where
    K: Resource<DynamicType = ()> + Serialize,
{
    // Server-side apply needs apiVersion and kind in the body.
    let mut body = serde_json::to_value(object).unwrap_or_default();
    body["apiVersion"] = K::api_version(&()).into();
    body["kind"] = K::kind(&()).into();
    let hash = hex::encode(sha2::Sha256::digest(body.to_string().as_bytes()));
    if !body["metadata"]["annotations"].is_object() {
        body["metadata"]["annotations"] = serde_json::json!({});
    }
    body["metadata"]["annotations"][APPLIED_HASH_ANNOTATION] = hash.into();
    body
}

/// Server-side applies `desired` unless `store` shows the API server already holds it
/// (the same applied hash, and every field still as applied: a change by someone else is
/// put back). Returns the object as the API server has it.
pub(super) async fn ensure<K>(client: &Client, store: &Store<K>, desired: &K) -> Result<K, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let namespace = desired.namespace().unwrap_or_default();
    let name = desired.name_any();
    let body = apply_body(desired);
    let key = ObjectRef::<K>::new(&name).within(&namespace);
    if let Some(current) = store.get(&key) {
        let stored = serde_json::to_value(current.as_ref()).unwrap_or_default();
        if holds(&stored, &body) {
            return Ok(current.as_ref().clone());
        }
    }
    let api: Api<K> = Api::namespaced(client.clone(), &namespace);
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|source| Error::Apply {
        kind: K::kind(&()).into_owned(),
        namespace,
        name,
        source,
    })
}

/// Writes `status` with server-side apply on the status subresource: the operator owns
/// every status field it sets, so a field it no longer sends is removed.
pub(super) async fn write_status<K, S>(client: &Client, object: &K, new: &S) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    S: Serialize,
{
    let namespace = object.namespace().unwrap_or_default();
    let name = object.name_any();
    let api: Api<K> = Api::namespaced(client.clone(), &namespace);
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": {"name": name, "namespace": namespace},
        "status": new,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|source| Error::Status {
        kind: K::kind(&()).into_owned(),
        namespace,
        name,
        source,
    })?;
    Ok(())
}

/// `note` cut to at most `max` bytes on a character boundary, marked with `…` when cut.
pub fn truncate_note(note: &str, max: usize) -> String {
    if note.len() <= max {
        return note.to_string();
    }
    const MORE: &str = "…";
    let mut end = max.saturating_sub(MORE.len());
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MORE}", &note[..end])
}

/// Publishes an Event (note cut to what the API server accepts). A refused Event is logged
/// and counted; it does not fail the reconcile, whose state is already in status.
pub(super) async fn publish<P, K>(
    ctx: &Context<P>,
    object: &K,
    type_: EventType,
    reason: &str,
    note: &str,
) where
    K: Resource<DynamicType = ()>,
{
    let note = truncate_note(note, MAX_EVENT_NOTE);
    let published = ctx
        .recorder
        .publish(
            &ctx.client,
            (ctx.clock)(),
            type_,
            reason,
            &note,
            &object.object_ref(&()),
            object.meta().generation,
        )
        .await;
    if let Err(error) = published {
        ctx.metrics.failed("event");
        tracing::warn!(
            reason,
            kind = %K::kind(&()),
            namespace = ?object.meta().namespace,
            name = ?object.meta().name,
            %error,
            "could not publish Event"
        );
    }
}

/// A condition type to announce with an Event when it changes: the status that warns,
/// and whether its first appearance in the good state is worth an Event too.
pub(super) struct Watched {
    pub(super) type_: &'static str,
    pub(super) bad_when: &'static str,
    pub(super) announce_first_good: bool,
}

pub(super) const fn watched(type_: &'static str, bad_when: &'static str, first: bool) -> Watched {
    Watched {
        type_,
        bad_when,
        announce_first_good: first,
    }
}

/// Publishes an Event when condition `w.type_` changed between `old` and `new`.
pub(super) async fn publish_if_changed<P, K>(
    ctx: &Context<P>,
    object: &K,
    old: &[Condition],
    new: &[Condition],
    w: &Watched,
) where
    K: Resource<DynamicType = ()>,
{
    let Some(now) = status::condition(new, w.type_) else {
        return;
    };
    let before = status::condition(old, w.type_);
    let same = before.is_some_and(|b| {
        (&b.status, &b.reason, &b.message) == (&now.status, &now.reason, &now.message)
    });
    let bad = now.status == w.bad_when;
    let first_good = before.is_none() && !bad;
    if same || (first_good && !(w.announce_first_good && now.status == "True")) {
        return;
    }
    let severity = if bad {
        EventType::Warning
    } else {
        EventType::Normal
    };
    publish(ctx, object, severity, &now.reason, &now.message).await
}

/// Status types that carry conditions.
pub(super) trait Conditions {
    fn conditions(&self) -> &[Condition];
}

impl Conditions for crds::OrganizationStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

impl Conditions for crds::SmtpRelaySettingStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

impl Conditions for crds::IpAllowRangeStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

impl Conditions for crds::MailRouteStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

/// When the status changed: the status write, then one Event per watched condition that
/// changed. Status goes first: it is what the next reconcile compares with, so a refused
/// Event cannot make a probe or a rollout repeat.
pub(super) async fn record<P, K, S>(
    ctx: &Context<P>,
    object: &K,
    old: Option<&S>,
    new: &S,
    watched: &[Watched],
) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    S: Serialize + PartialEq + Conditions,
{
    if old == Some(new) {
        return Ok(());
    }
    write_status(&ctx.client, object, new).await?;
    let before = old.map(|o| o.conditions()).unwrap_or_default();
    for w in watched {
        publish_if_changed(ctx, object, before, new.conditions(), w).await;
    }
    Ok(())
}

pub(super) fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

pub(super) fn in_namespace<K: Resource<DynamicType = ()> + Clone>(
    store: &Store<K>,
    namespace: &str,
) -> Vec<Arc<K>> {
    let mut items: Vec<Arc<K>> = store
        .state()
        .into_iter()
        .filter(|o| o.meta().namespace.as_deref() == Some(namespace))
        .collect();
    items.sort_by(|a, b| a.meta().name.cmp(&b.meta().name));
    items
}

pub(super) fn owned<K: Clone>(items: &[Arc<K>]) -> Vec<K> {
    items.iter().map(|i| i.as_ref().clone()).collect()
}

/// Applies `desired` and records a refusal as a [`Problem`] (the API server's message)
/// instead of stopping: one refused child must not keep the others from being applied.
pub(super) async fn ensure_or_note<K>(
    client: &Client,
    store: &Store<K>,
    desired: &K,
    problems: &mut Vec<Problem>,
    failed: &mut Option<Error>,
) -> Option<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    match ensure(client, store, desired).await {
        Ok(k) => Some(k),
        Err(e) => {
            let server_message = match &e {
                Error::Apply {
                    source: kube::Error::Api(s),
                    ..
                } => s.message.clone(),
                Error::Apply { source, .. } => source.to_string(),
                other => other.to_string(),
            };
            problems.push(Problem::new(
                "ApplyFailed",
                format!(
                    "the API server refused {} {}: {server_message}",
                    K::kind(&()),
                    desired.name_any()
                ),
            ));
            tracing::warn!(error = %e, "apply failed");
            failed.get_or_insert(e);
            store
                .get(&ObjectRef::from_obj(desired))
                .map(|k| k.as_ref().clone())
        }
    }
}

/// True when every field of `desired` is in `actual` with the same value: the API server
/// already holds what an apply would send (it may hold more: defaults, status, other
/// managers' fields). Lists must have the same length and match element by element.
pub fn holds(actual: &serde_json::Value, desired: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (desired, actual) {
        (Value::Object(d), Value::Object(a)) => d
            .iter()
            .all(|(k, dv)| a.get(k).is_some_and(|av| holds(av, dv))),
        (Value::Array(d), Value::Array(a)) => {
            d.len() == a.len() && d.iter().zip(a).all(|(dv, av)| holds(av, dv))
        }
        (d, a) => d == a,
    }
}
