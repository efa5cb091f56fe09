//! The controller's watches and [`run`]: which changes of which objects (inputs of an
//! Organization, children it owns) trigger a reconcile of which Organization, and the
//! controller loop with its error policy. Creates, changes and deletes all count: a
//! deleted IpAllowRange leaves the config at once, a deleted child is put back at once.
//!
//! Not here: what a reconcile does (`reconcile`).

use std::collections::{HashMap, HashSet};
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

/// Which watch events of inputs are worth a reconcile: an object created, one whose spec
/// or labels changed ([`input_changed`]), and one deleted. kube's `predicate_filter`
/// cannot be used for this: a Deleted event carries the object as it was, so its
/// generation and labels are unchanged and the filter would drop it; and a re-list after
/// a broken watch reports objects deleted meanwhile by leaving them out, not by an event.
/// Both are deletes here: the last known state of each object is kept, and an object
/// missing from a re-list is reported as it was last seen.
pub struct InputChanges<K: Resource<DynamicType = ()>> {
    /// Deleted objects are reported too (inputs); Organizations are not: their deletion
    /// is a deletion timestamp first (a new generation), their disappearance the end.
    report_deletes: bool,
    seen: HashMap<ObjectRef<K>, (Option<u64>, K)>,
    /// Objects listed by the re-list under way.
    relisted: Option<HashSet<ObjectRef<K>>>,
}

impl<K> InputChanges<K>
where
    K: Resource<DynamicType = ()> + Clone,
{
    pub fn new(report_deletes: bool) -> Self {
        Self {
            report_deletes,
            seen: HashMap::new(),
            relisted: None,
        }
    }

    /// The objects `event` asks to reconcile for.
    pub fn on_event(&mut self, event: &watcher::Event<K>) -> Vec<K> {
        match event {
            watcher::Event::Apply(o) => self.applied(o).into_iter().collect(),
            watcher::Event::Delete(o) => {
                self.seen.remove(&ObjectRef::from_obj(o));
                if self.report_deletes {
                    vec![o.clone()]
                } else {
                    Vec::new()
                }
            }
            watcher::Event::Init => {
                self.relisted = Some(HashSet::new());
                Vec::new()
            }
            watcher::Event::InitApply(o) => {
                if let Some(listed) = self.relisted.as_mut() {
                    listed.insert(ObjectRef::from_obj(o));
                }
                self.applied(o).into_iter().collect()
            }
            watcher::Event::InitDone => {
                let Some(listed) = self.relisted.take() else {
                    return Vec::new();
                };
                let gone: Vec<ObjectRef<K>> = self
                    .seen
                    .keys()
                    .filter(|k| !listed.contains(k))
                    .cloned()
                    .collect();
                let mut out = Vec::new();
                for key in gone {
                    if let Some((_, last)) = self.seen.remove(&key)
                        && self.report_deletes
                    {
                        out.push(last);
                    }
                }
                out
            }
        }
    }

    fn applied(&mut self, o: &K) -> Option<K> {
        let hash = input_changed(o);
        let key = ObjectRef::from_obj(o);
        let same = self
            .seen
            .get(&key)
            .is_some_and(|(h, last)| *h == hash && last.meta().uid == o.meta().uid);
        self.seen.insert(key, (hash, o.clone()));
        (!same).then(|| o.clone())
    }
}

/// A watch of every `K` that feeds `writer` and yields the objects created, deleted, or
/// whose spec or labels changed ([`InputChanges`]).
pub(super) fn inputs<K>(
    client: &Client,
    writer: reflector::store::Writer<K>,
    report_deletes: bool,
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
    let mut changes = InputChanges::new(report_deletes);
    watcher(Api::<K>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .map(move |event| match event {
            Ok(event) => {
                futures::stream::iter(changes.on_event(&event).into_iter().map(Ok)).left_stream()
            }
            Err(e) => futures::stream::iter(vec![Err(e)]).right_stream(),
        })
        .flatten()
}

/// A watch of the operator's children of kind `K` (by label) that feeds `writer` and
/// yields every child created, changed or deleted: a child deleted by someone is put
/// back at once, not at the next periodic reconcile.
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
        .touched_objects()
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
        inputs(&client, w.organizations, false),
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
    .watches_stream(inputs(&client, w.settings, true), move |o| {
        organizations_in(&s1, o.namespace())
    })
    .watches_stream(inputs(&client, w.ranges, true), move |o| {
        organizations_in(&s2, o.namespace())
    })
    .watches_stream(inputs(&client, w.routes, true), move |o| {
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
