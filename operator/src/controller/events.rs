//! The audit log's Events (`events.k8s.io/v1`), recorded as client-go's event recorder
//! records them: a new Event per change, and a repeat of the same Event within six
//! minutes counted as a series on the first one (`series.count`, `lastObservedTime`)
//! instead of a new object.
//!
//! kube-runtime's `Recorder` keys a series by type, reason and object only, and patches
//! the series with the first Event's note: the second configuration change within six
//! minutes would be counted on the first one and its note lost. Here an Event's identity
//! is its type, reason, note and the object *at its generation*, so each change is its
//! own Event and only a true repeat is a series. The clock is the controller's (tests
//! inject theirs), and the recorder does not hold a client, so one recorder serves a
//! controller for its whole life.
//!
//! Not here: what is worth an Event (`apply`, `reconcile`, `finalize`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;
use kube::{Api, Client};

/// How long a repeat is counted on the Event it repeats (client-go's and kube's window).
pub const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(6);

/// What makes two Events one: the same thing said again about the same object as it was.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Identity {
    type_: &'static str,
    reason: String,
    note: String,
    /// `apiVersion`, kind, namespace, name and UID of the object.
    regarding: (String, String, String, String, String),
    /// The object's `metadata.generation` when the Event was recorded.
    generation: Option<i64>,
}

/// An Event already posted: its name, and the series so far.
#[derive(Clone, Debug)]
struct Posted {
    name: String,
    count: i32,
    last: Timestamp,
}

/// Records Events for one controller (`reportingController`/`reportingInstance`).
#[derive(Clone, Debug)]
pub struct Recorder {
    controller: String,
    instance: String,
    posted: Arc<Mutex<HashMap<Identity, Posted>>>,
    /// Makes names unique when the clock repeats a nanosecond (a fixed test clock).
    sequence: Arc<AtomicU64>,
}

impl Recorder {
    pub fn new(controller: &str, instance: Option<String>) -> Self {
        Self {
            controller: controller.into(),
            instance: instance.unwrap_or_else(|| controller.into()),
            posted: Arc::default(),
            sequence: Arc::default(),
        }
    }

    /// Posts `note` about `regarding` (at `generation`), or counts it on the Event that
    /// said the same within [`SERIES_WINDOW`] of `now`.
    #[allow(clippy::too_many_arguments)]
    pub async fn publish(
        &self,
        client: &Client,
        now: Timestamp,
        type_: EventType,
        reason: &str,
        note: &str,
        regarding: &ObjectReference,
        generation: Option<i64>,
    ) -> Result<(), kube::Error> {
        let type_ = match type_ {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        };
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let identity = Identity {
            type_,
            reason: reason.into(),
            note: note.into(),
            regarding: (
                regarding.api_version.clone().unwrap_or_default(),
                regarding.kind.clone().unwrap_or_default(),
                namespace.clone(),
                regarding.name.clone().unwrap_or_default(),
                regarding.uid.clone().unwrap_or_default(),
            ),
            generation,
        };
        let repeat = {
            let mut posted = self.posted.lock().unwrap_or_else(|e| e.into_inner());
            posted.retain(|_, p| {
                p.last
                    .checked_add(SERIES_WINDOW)
                    .is_ok_and(|until| until > now)
            });
            posted.get(&identity).cloned()
        };
        let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
        if let Some(p) = repeat {
            let count = p.count.saturating_add(1);
            let series = serde_json::json!({"series": EventSeries {
                count,
                last_observed_time: MicroTime(now),
            }});
            match api
                .patch(&p.name, &PatchParams::default(), &Patch::Merge(&series))
                .await
            {
                Ok(_) => {
                    self.remember(identity, p.name, count, now);
                    return Ok(());
                }
                // Gone (expired, or deleted): a new Event then.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "{}.{:x}",
            regarding.name.as_deref().unwrap_or(&self.controller),
            u128::try_from(now.as_nanosecond()).unwrap_or_default() + u128::from(sequence)
        );
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            action: Some("Reconcile".into()),
            reason: Some(reason.into()),
            note: Some(note.into()),
            type_: Some(type_.into()),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        };
        api.create(&PostParams::default(), &event).await?;
        self.remember(identity, name, 1, now);
        Ok(())
    }

    fn remember(&self, identity: Identity, name: String, count: i32, last: Timestamp) {
        let mut posted = self.posted.lock().unwrap_or_else(|e| e.into_inner());
        posted.insert(identity, Posted { name, count, last });
    }
}
