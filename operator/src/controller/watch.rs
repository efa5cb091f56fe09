//! The controller's watches and [`run`]: which changes of which objects (inputs of an
//! Organization, children it owns) trigger a reconcile of which Organization, and the
//! controller loop with its error policy.
//!
//! Not here: what a reconcile does (`reconcile`).

use std::sync::Arc;

use crds::Organization;
use futures::StreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, Predicate, WatchStreamExt, predicates, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::identity::MANAGED_BY;
use super::probe::TlsProber;

use super::context::Context;
use super::reconcile::{error_policy, reconcile};

/// Every Organization of the namespace of a changed object: one namespace is one
/// organization, so a change to any of its objects reconciles it.
pub(super) fn organizations_in(
    store: &Store<Organization>,
    namespace: Option<String>,
) -> Vec<ObjectRef<Organization>> {
    store
        .state()
        .into_iter()
        .filter(|o| o.namespace() == namespace)
        .map(|o| ObjectRef::from_obj(o.as_ref()))
        .collect()
}

/// Inputs change the relay on a new generation (spec) or new labels (selectors match
/// IpAllowRanges by label); status writes, the operator's own included, do not.
pub(super) fn input_changed<K: Resource>(obj: &K) -> Option<u64> {
    predicates::generation::<K>
        .combine(predicates::labels::<K>)
        .hash_property(obj)
}

/// A watch of every `K` that feeds `writer` and yields the objects whose spec or labels
/// changed.
pub(super) fn inputs<K>(
    client: &Client,
    writer: reflector::store::Writer<K>,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    watcher(Api::<K>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(input_changed::<K>, Default::default())
}

/// A watch of the operator's children of kind `K` (by label) that feeds `writer`.
pub(super) fn children_of<K>(
    client: &Client,
    writer: reflector::store::Writer<K>,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let owned = watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
    watcher(Api::<K>::all(client.clone()), owned)
        .default_backoff()
        .reflect(writer)
        .applied_objects()
}

/// Runs the controller until `shutdown` resolves.
///
/// Every watched kind feeds a reflector store that reconciles read from. Organizations
/// and their inputs trigger a reconcile only when their spec or labels change, so the
/// operator's own status writes do not reconcile again; children trigger one on any
/// change (a StatefulSet's status is how a rollout is seen), and so do relay pods.
pub async fn run<P: TlsProber>(
    ctx: Arc<Context<P>>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let Some(w) = ctx.writers.lock().ok().and_then(|mut w| w.take()) else {
        tracing::error!("the controller of this context is already running");
        return;
    };
    let client = ctx.client.clone();
    let stores = ctx.stores.clone();
    let (s1, s2, s3, s4, s5) = (
        stores.organizations.clone(),
        stores.organizations.clone(),
        stores.organizations.clone(),
        stores.organizations.clone(),
        stores.organizations.clone(),
    );
    Controller::for_stream(
        inputs(&client, w.organizations),
        stores.organizations.clone(),
    )
    .owns_stream(children_of(&client, w.config_maps))
    .owns_stream(children_of(&client, w.deployments))
    .owns_stream(children_of(&client, w.stateful_sets))
    .owns_stream(children_of(&client, w.services))
    .owns_stream(children_of(&client, w.pdbs))
    .owns_stream(children_of(&client, w.network_policies))
    // A drain Job finishing lets its claim go.
    .owns_stream(children_of(&client, w.jobs))
    // A relay pod turning ready (or going) changes which pods must report the config.
    .watches_stream(children_of(&client, w.pods), move |p| {
        organizations_in(&s4, p.namespace())
    })
    // A spool claim left behind (a scale-down) is drained.
    .watches_stream(children_of(&client, w.claims), move |c| {
        organizations_in(&s5, c.namespace())
    })
    .watches_stream(inputs(&client, w.settings), move |o| {
        organizations_in(&s1, o.namespace())
    })
    .watches_stream(inputs(&client, w.ranges), move |o| {
        organizations_in(&s2, o.namespace())
    })
    .watches_stream(inputs(&client, w.routes), move |o| {
        organizations_in(&s3, o.namespace())
    })
    .graceful_shutdown_on(shutdown)
    .run(reconcile, error_policy, ctx)
    .for_each(|result| async move {
        match result {
            Ok((org, _)) => tracing::debug!(organization = %org.name, "reconciled"),
            Err(e) => tracing::warn!(error = %e, "reconcile error"),
        }
    })
    .await;
}
