//! What the scheduler and every message's turn share: the schedule of queued messages
//! ([`QueueEntry`]), the messages nominated for the next wake, the routes in force, and the
//! per-destination slots that cap concurrent attempts ([`DestinationSlot`], released on
//! drop).
//!
//! Not here: when messages are started (`manager`), what a turn does (`turn`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::Notify;

use crate::config::RouteConfig;

use crate::delivery::route::{RouteChoice, RouteTable};

#[derive(Debug, Clone)]
pub(super) struct QueueEntry {
    pub(super) next_attempt: SystemTime,
    pub(super) received_at: Option<SystemTime>,
    /// An attempt is under way: not to be started again until it ends.
    pub(super) in_flight: bool,
    /// Destinations of the pending recipients, as the last attempt found them; empty when
    /// not known yet. A due message none of whose destinations has a free slot waits.
    pub(super) destinations: Vec<String>,
    /// Held by an operator: not attempted until released (a `<queue id>.hold` marker in
    /// the state directory keeps it held across restarts).
    pub(super) held: bool,
    /// Held, and its archive copy is owed all the same (a quarantined message of an
    /// organization that archives what filters keep back): attempted for that copy only.
    pub(super) archive_while_held: bool,
    /// When the message whose archive copy is still owed was received, as its last turn
    /// found it (for the archive gauges).
    pub(super) archive_since: Option<SystemTime>,
}

impl QueueEntry {
    pub(super) fn new(next_attempt: SystemTime, received_at: Option<SystemTime>) -> Self {
        Self {
            next_attempt,
            received_at,
            in_flight: false,
            destinations: Vec::new(),
            held: false,
            archive_while_held: false,
            archive_since: None,
        }
    }

    /// Whether the scheduler may give it a turn (its time aside).
    pub(super) fn startable(&self) -> bool {
        !self.in_flight && (!self.held || self.archive_while_held)
    }
}

/// Attempts under way per destination, at most `limit` each. A destination is in the
/// table only while it has one, so the table does not grow with the domains ever seen.
#[derive(Debug)]
pub(super) struct Destinations {
    pub(super) active: Mutex<HashMap<String, usize>>,
    pub(super) limit: usize,
    /// Lower limits of some destinations (a route's `rateLimit.maxConnections`).
    pub(super) limits: Mutex<HashMap<String, usize>>,
    pub(super) freed: Notify,
}

impl Destinations {
    pub(super) fn active(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The slots of destination `key`.
    pub(super) fn limit_of(&self, key: &str) -> usize {
        self.limits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
            .unwrap_or(self.limit)
    }

    /// The per-route limits of `routes` (a new config).
    pub(super) fn set_limits(&self, routes: &[RouteConfig]) {
        let limits = routes
            .iter()
            .filter_map(|r| {
                let max = r.rate_limit?.max_connections?;
                Some((
                    route_destination(&r.name),
                    (max.max(1) as usize).min(self.limit),
                ))
            })
            .collect();
        *self.limits.lock().unwrap_or_else(|e| e.into_inner()) = limits;
        self.freed.notify_waiters();
    }

    pub(super) fn try_take(&self, key: &str) -> bool {
        let limit = self.limit_of(key);
        let mut active = self.active();
        let n = active.entry(key.to_string()).or_insert(0);
        if *n < limit {
            *n += 1;
            true
        } else {
            false
        }
    }

    pub(super) fn give_back(&self, key: &str) {
        let mut active = self.active();
        if let Some(n) = active.get_mut(key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                active.remove(key);
            }
        }
    }

    /// The destinations without a free slot.
    pub(super) fn full(&self) -> std::collections::HashSet<String> {
        // One lock at a time (`try_take` takes them in the other order).
        let limits = self
            .limits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.active()
            .iter()
            .filter(|(k, n)| **n >= limits.get(*k).copied().unwrap_or(self.limit))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// One slot of one destination, given back when dropped.
pub(super) struct DestinationSlot {
    pub(super) shared: Arc<Shared>,
    pub(super) key: String,
}

impl DestinationSlot {
    pub(super) fn try_take(shared: &Arc<Shared>, key: &str) -> Option<Self> {
        shared.destinations.try_take(key).then(|| Self {
            shared: shared.clone(),
            key: key.to_string(),
        })
    }

    pub(super) async fn take(shared: &Arc<Shared>, key: &str) -> Self {
        loop {
            let freed = shared.destinations.freed.notified();
            if let Some(slot) = Self::try_take(shared, key) {
                return slot;
            }
            freed.await;
        }
    }
}

impl Drop for DestinationSlot {
    fn drop(&mut self) {
        self.shared.destinations.give_back(&self.key);
        self.shared.destinations.freed.notify_waiters();
        // Messages waiting for this destination may start now.
        {
            let mut c = self.shared.candidates();
            if let Some(waiting) = c.parked.remove(&self.key) {
                c.ids.extend(waiting);
            }
        }
        self.shared.wake.notify_one();
    }
}

/// The destination of a route group: what its concurrency is limited by.
pub(super) fn destination_of(choice: &RouteChoice, route_name: &str) -> String {
    match choice {
        RouteChoice::Configured(_) => route_destination(route_name),
        RouteChoice::DirectMx(domain) => format!("mx:{domain}"),
    }
}

/// The destination of the configured route `name`.
pub(super) fn route_destination(name: &str) -> String {
    format!("route:{name}")
}

/// The routes in force and their compiled table, swapped as one on reload; a message
/// takes a reference for its whole attempt.
#[derive(Debug)]
pub(super) struct RouteSet {
    pub(super) list: Vec<RouteConfig>,
    pub(super) table: RouteTable,
}

impl RouteSet {
    pub(super) fn new(list: Vec<RouteConfig>) -> Self {
        let table = RouteTable::new(&list);
        Self { list, table }
    }
}

/// The part of the queue shared with [`QueueHandle`]s.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) entries: Mutex<BTreeMap<String, QueueEntry>>,
    pub(super) wake: Notify,
    pub(super) destinations: Destinations,
    /// Messages the scheduler looks at on its next wake (submitted, just attempted, or
    /// waiting for a destination that has room again), so that a wake does not scan the
    /// whole queue; a full scan runs at most once a second and when this list overflowed.
    pub(super) candidates: Mutex<Candidates>,
}

/// See [`Shared::candidates`].
#[derive(Debug, Default)]
pub(super) struct Candidates {
    pub(super) ids: Vec<String>,
    /// Due messages waiting for a full destination, by the destination they wait for.
    pub(super) parked: HashMap<String, std::collections::BTreeSet<String>>,
    /// Something was not recorded here (the held-message bound cut a pass short).
    pub(super) full_scan: bool,
}

impl Shared {
    pub(super) fn candidates(&self) -> std::sync::MutexGuard<'_, Candidates> {
        self.candidates.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the scheduler to look at `id`.
    pub(super) fn nominate(&self, id: &str) {
        self.candidates().ids.push(id.to_string());
        self.wake.notify_one();
    }
}

impl Shared {
    pub(super) fn entries(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, QueueEntry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What one [`QueueManager::run_due`](super::QueueManager::run_due) pass did, counted in recipients and messages.
/// Recipients whose destination had no free slot are in none of the counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Messages attempted.
    pub messages: usize,
    /// Recipients delivered.
    pub delivered: usize,
    /// Recipients deferred (to be retried).
    pub deferred: usize,
    /// Recipients bounced.
    pub bounced: usize,
    /// Messages finished and removed from the store.
    pub completed: usize,
    /// DSN messages queued.
    pub dsns_queued: usize,
}

impl RunReport {
    pub(super) fn add(&mut self, r: &RunReport) {
        self.messages += r.messages;
        self.delivered += r.delivered;
        self.deferred += r.deferred;
        self.bounced += r.bounced;
        self.completed += r.completed;
        self.dsns_queued += r.dsns_queued;
    }
}
