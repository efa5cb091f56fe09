//! The [`QueueManager`]: its construction from the delivery settings, the handle sessions
//! submit accepted messages through, and continuous scheduling ([`QueueManager::run`]): a
//! wake starts the nominated messages that are due, and the whole queue is looked at once a
//! second for messages that came due by time.
//!
//! Not here: what a message's turn does (`turn`), queue administration (`admin`).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use prometheus_client::registry::Registry;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

use crate::config::{DeliveryConfig, RouteConfig};

use crate::clock::Clock;
use crate::delivery::attempt::Transport;
use crate::delivery::metrics::DeliveryMetrics;
use crate::delivery::retry::RetrySchedule;

use super::shared::{
    Candidates, DestinationSlot, Destinations, QueueEntry, RouteSet, RunReport, Shared,
};
use super::state::{MessageState, from_unix, hold_name, load_state};
use super::store::MessageStore;
use super::turn::Inner;

/// Settings of the queue manager that are not in [`DeliveryConfig`].
#[derive(Debug, Clone)]
pub struct QueueOptions {
    /// Our host name: EHLO name and Reporting-MTA of DSNs.
    pub hostname: String,
    /// Directory of the per-message state files (next to the spool; created if missing).
    pub state_dir: PathBuf,
}

/// The queue manager could not start.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("cannot prepare the delivery state directory {path}: {source}")]
    StateDir { path: String, source: io::Error },
    #[error("cannot list the spooled messages: {0}")]
    List(io::Error),
    #[error(transparent)]
    Resolver(#[from] crate::delivery::mx::ResolveError),
}

/// A cheap, cloneable way to hand newly spooled messages to the queue manager.
#[derive(Clone)]
pub struct QueueHandle {
    pub(super) shared: Arc<Shared>,
    pub(super) clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for QueueHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueHandle").finish()
    }
}

impl QueueHandle {
    /// A message is in the spool (fsync'd): deliver it as soon as possible.
    pub fn submit(&self, queue_id: &str) {
        let now = self.clock.now();
        // A message under way keeps its flag: it must not be started twice.
        self.shared
            .entries()
            .entry(queue_id.to_string())
            .and_modify(|e| e.next_attempt = now)
            .or_insert_with(|| QueueEntry::new(now, None));
        self.shared.nominate(queue_id);
    }

    /// A message is in the spool, held (a content filter quarantined it; its hold marker
    /// is on disk): listed for queue administration, never attempted until released;
    /// with `archive`, its archive copy is delivered all the same.
    pub fn submit_held(&self, queue_id: &str, archive: bool) {
        let now = self.clock.now();
        self.shared
            .entries()
            .entry(queue_id.to_string())
            .and_modify(|e| {
                e.held = true;
                e.archive_while_held = archive;
            })
            .or_insert_with(|| {
                let mut entry = QueueEntry::new(now, None);
                entry.held = true;
                entry.archive_while_held = archive;
                entry
            });
        if archive {
            self.shared.nominate(queue_id);
        }
    }
}

/// Delivers spooled messages. See the module documentation.
pub struct QueueManager<S: MessageStore> {
    pub(super) inner: Arc<Inner<S>>,
}

/// Another handle on the same manager (same queue, same schedule), e.g. to run it in a
/// task while keeping one to submit with.
impl<S: MessageStore> Clone for QueueManager<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S: MessageStore> std::fmt::Debug for QueueManager<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueManager")
            .field("state_dir", &self.inner.state_dir)
            .finish()
    }
}

impl<S: MessageStore> QueueManager<S> {
    /// Creates the manager and loads every message the store holds, each due at the time its
    /// state file says (now when it has none). Metrics are registered into `registry`.
    pub fn new(
        store: Arc<S>,
        routes: Vec<RouteConfig>,
        delivery: &DeliveryConfig,
        options: QueueOptions,
        clock: Arc<dyn Clock>,
        registry: &mut Registry,
    ) -> Result<Self, QueueError> {
        fs::create_dir_all(&options.state_dir).map_err(|source| QueueError::StateDir {
            path: options.state_dir.display().to_string(),
            source,
        })?;
        let metrics = DeliveryMetrics::register(registry);
        let dkim = crate::delivery::dkim::Dkim::new(registry);
        let transport = Transport::new(delivery, &options.hostname, clock.clone(), &metrics)?;
        let now = clock.now();
        let mut entries = BTreeMap::new();
        for id in store.list().map_err(QueueError::List)? {
            let next_attempt = load_state(&options.state_dir, &id)
                .ok()
                .flatten()
                .map(|s| from_unix(s.next_attempt_unix))
                .unwrap_or(now);
            let mut entry = QueueEntry::new(next_attempt, None);
            entry.held = options.state_dir.join(hold_name(&id)).exists();
            // Held mail is rare (quarantine, an operator's hold): its envelope is read to
            // know whether an archive copy is still owed.
            entry.archive_while_held =
                entry.held && archive_owed(store.as_ref(), &options.state_dir, &id);
            entries.insert(id, entry);
        }
        metrics.queue_depth.set(entries.len() as i64);
        let inner = Inner {
            store,
            routes: RwLock::new(Arc::new(RouteSet::new(routes))),
            schedule: RetrySchedule::from_config(delivery),
            concurrency: Arc::new(Semaphore::new(delivery.concurrency.max(1) as usize)),
            messages_in_flight: Arc::new(Semaphore::new(
                (delivery.concurrency.max(1) as usize).saturating_mul(2),
            )),
            attempt_timeout: Duration::from_secs(delivery.attempt_timeout_seconds.max(1)),
            idle_sweep: Duration::from_secs(delivery.connection_idle_seconds),
            hostname: options.hostname,
            state_dir: options.state_dir,
            unsaved: Mutex::new(HashMap::new()),
            clock: clock.clone(),
            transport,
            pools: Mutex::new(HashMap::new()),
            rng: Mutex::new(rand::make_rng()),
            metrics,
            dkim,
            archive: RwLock::new(None),
            shared: Arc::new(Shared {
                entries: Mutex::new(entries),
                wake: Notify::new(),
                destinations: Destinations {
                    active: Mutex::new(HashMap::new()),
                    limit: delivery.destination_concurrency.max(1) as usize,
                    limits: Mutex::new(HashMap::new()),
                    freed: Notify::new(),
                },
                candidates: Mutex::new(Candidates::default()),
            }),
            run_lock: tokio::sync::Mutex::new(()),
            age_at: Mutex::new(None),
        };
        inner
            .shared
            .destinations
            .set_limits(&inner.routes.read().unwrap_or_else(|e| e.into_inner()).list);
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Shares the send rate of rate-limited routes with the other replicas through
    /// `shared` (the Redis limit store).
    pub fn set_shared_turns(&self, shared: Arc<dyn crate::delivery::rate::SharedTurns>) {
        self.inner.transport.set_shared_turns(shared);
    }

    /// A handle for the spool to submit newly accepted messages.
    pub fn handle(&self) -> QueueHandle {
        QueueHandle {
            shared: self.inner.shared.clone(),
            clock: self.inner.clock.clone(),
        }
    }

    /// Same as [`QueueHandle::submit`].
    pub fn submit(&self, queue_id: &str) {
        self.handle().submit(queue_id);
    }

    /// Same as [`QueueHandle::submit_held`].
    pub fn submit_held(&self, queue_id: &str, archive: bool) {
        self.handle().submit_held(queue_id, archive);
    }

    /// Whether message `queue_id` still owes its archive copy.
    fn archive_owed(&self, queue_id: &str) -> bool {
        archive_owed(self.inner.store.as_ref(), &self.inner.state_dir, queue_id)
    }

    /// A message found in the spool whose notice was missed: submitted, held when its
    /// hold marker says so (a quarantined message must never slip through).
    pub fn resubmit(&self, queue_id: &str) {
        let known = self.inner.shared.entries().contains_key(queue_id);
        if !known && self.inner.state_dir.join(hold_name(queue_id)).exists() {
            let archive = self.archive_owed(queue_id);
            self.submit_held(queue_id, archive);
        } else {
            self.submit(queue_id);
        }
    }

    /// Replaces the routes (a new RelayConfig). Messages in flight finish on the old ones.
    pub fn set_routes(&self, routes: Vec<RouteConfig>) {
        self.inner.shared.destinations.set_limits(&routes);
        // Health of routes that are gone is forgotten with them.
        self.inner
            .pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|name, _| routes.iter().any(|r| r.name == *name));
        *self.inner.routes.write().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(RouteSet::new(routes));
    }

    /// Replaces where archive copies go and who hears of a failed one (a new RelayConfig);
    /// copies owed from before still go to the address they were owed to.
    pub fn set_archive(&self, archive: Option<crate::config::ArchiveConfig>) {
        let mut current = self
            .inner
            .archive
            .write()
            .unwrap_or_else(|e| e.into_inner());
        match (archive, current.as_mut()) {
            (Some(new), _) => *current = Some(new),
            // Turned off: the last postmaster stays known for the copies still owed.
            (None, Some(old)) => old.route = None,
            (None, None) => {}
        }
    }

    /// Replaces the DKIM signing keys (a new RelayConfig); the next attempt uses them.
    pub fn set_dkim(&self, keys: Vec<crate::config::DkimConfig>) {
        self.inner.dkim.set_keys(keys);
    }

    /// Queue ids waiting for delivery.
    pub fn queued(&self) -> Vec<String> {
        self.inner.shared.entries().keys().cloned().collect()
    }

    /// When a queued message is next tried.
    pub fn next_attempt(&self, queue_id: &str) -> Option<SystemTime> {
        self.inner
            .shared
            .entries()
            .get(queue_id)
            .map(|e| e.next_attempt)
    }

    /// The saved delivery state of a message, if it has one.
    pub fn state(&self, queue_id: &str) -> Option<MessageState> {
        load_state(&self.inner.state_dir, queue_id).ok().flatten()
    }

    /// Attempts every message that is due now, once, and returns when all are done. Route
    /// groups wait for a slot of their destination here instead of being left for later,
    /// so everything due is attempted (tests and tools drive the queue with this; the relay
    /// runs [`QueueManager::run`]).
    pub async fn run_due(&self) -> RunReport {
        let _running = self.inner.run_lock.lock().await;
        let now = self.inner.clock.now();
        let due: Vec<String> = {
            let mut entries = self.inner.shared.entries();
            entries
                .iter_mut()
                .filter(|(_, e)| e.startable() && e.next_attempt <= now)
                .map(|(id, e)| {
                    e.in_flight = true;
                    id.clone()
                })
                .collect()
        };
        let mut tasks = JoinSet::new();
        let mut report = RunReport::default();
        let mut results = Vec::new();
        for id in due {
            let Ok(permit) = self.inner.messages_in_flight.clone().acquire_owned().await else {
                break;
            };
            tasks.spawn(self.inner.clone().attempt(id, Vec::new(), true, permit));
            while let Some(done) = tasks.try_join_next() {
                results.push(done);
            }
        }
        while let Some(done) = tasks.join_next().await {
            results.push(done);
        }
        for done in results {
            match done {
                Ok(r) => report.add(&r),
                Err(e) => tracing::error!("a delivery task failed: {e}"),
            }
        }
        self.inner.transport.cache().sweep();
        self.inner.update_gauges();
        report
    }

    /// Delivers until `shutdown` completes: starts each message when it is due or
    /// submitted and its destinations have room, without waiting for the others. On
    /// shutdown no new attempt starts and the ones under way are finished (each lasts at
    /// most `attempt_timeout_seconds`); dropping the returned future instead cancels them
    /// (at least once: what was not recorded is attempted again by the next run).
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut tasks: JoinSet<RunReport> = JoinSet::new();
        let mut last_full: Option<std::time::Instant> = None;
        let mut wait = Duration::ZERO;
        loop {
            let scan = std::time::Instant::now();
            // A full scan (every message) once a second, for messages that came due by
            // time; otherwise only the nominated ones.
            let full = std::mem::take(&mut self.inner.shared.candidates().full_scan)
                || last_full.is_none_or(|t| t.elapsed() >= FULL_SCAN_EVERY);
            if full {
                wait = self.start_due(&mut tasks, None);
                last_full = Some(scan);
            } else {
                let ids = std::mem::take(&mut self.inner.shared.candidates().ids);
                self.start_due(&mut tasks, Some(ids));
            }
            // A full scan looks at every queued message; with a large backlog waiting for
            // full destinations it costs, so the loop spends at most a fifth of its time
            // scanning (with a small queue this pause is microseconds).
            let pause = scan.elapsed().saturating_mul(4);
            while let Some(done) = tasks.try_join_next() {
                if let Err(e) = done {
                    tracing::error!("a delivery task failed: {e}");
                }
            }
            self.inner.transport.cache().sweep();
            self.inner.update_gauges();
            // Wake up in time for the next full scan and to close idle cached sessions.
            let wait = wait
                .min(FULL_SCAN_EVERY)
                .min(self.inner.idle_sweep.max(Duration::from_secs(1)));
            tokio::select! {
                _ = &mut shutdown => break,
                _ = self.inner.shared.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            if pause >= Duration::from_millis(1) {
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done {
                tracing::error!("a delivery task failed: {e}");
            }
        }
        self.inner.update_gauges();
    }

    /// Starts every due message that may start now, of the whole queue (`only` is `None`)
    /// or of the nominated ones; returns how long until the next one not yet due (a
    /// finished attempt or a freed destination wakes the loop earlier). A due message all
    /// of whose destinations are full is parked until one of them frees a slot.
    pub(super) fn start_due(
        &self,
        tasks: &mut JoinSet<RunReport>,
        only: Option<Vec<String>>,
    ) -> Duration {
        let inner = &self.inner;
        let now = inner.clock.now();
        let mut next: Option<SystemTime> = None;
        let full = inner.shared.destinations.full();
        let mut parked: Vec<(String, String)> = Vec::new();
        let mut cut_short = false;
        let mut entries = inner.shared.entries();
        let ids: Vec<String> = match only {
            Some(mut ids) => {
                ids.sort();
                ids.dedup();
                ids
            }
            None => entries.keys().cloned().collect(),
        };
        for id in ids {
            let Some(e) = entries.get_mut(&id) else {
                continue;
            };
            if !e.startable() {
                continue;
            }
            if e.next_attempt > now {
                next = Some(next.map_or(e.next_attempt, |n| n.min(e.next_attempt)));
                continue;
            }
            // Known destinations: take their free slots now, so the next message for a
            // full destination is not started only to find it full.
            if !e.destinations.is_empty() && e.destinations.iter().all(|d| full.contains(d)) {
                parked.push((e.destinations[0].clone(), id));
                continue;
            }
            let Ok(permit) = inner.messages_in_flight.clone().try_acquire_owned() else {
                // As many messages held as allowed: one finishing wakes the loop, and
                // looks at the whole queue again.
                cut_short = true;
                break;
            };
            let slots = e
                .destinations
                .iter()
                .filter_map(|d| DestinationSlot::try_take(&inner.shared, d))
                .collect();
            e.in_flight = true;
            tasks.spawn(inner.clone().attempt(id.clone(), slots, false, permit));
        }
        drop(entries);
        let mut c = inner.shared.candidates();
        c.full_scan |= cut_short;
        for (destination, id) in parked {
            c.parked.entry(destination).or_default().insert(id);
        }
        drop(c);
        next.map(|t| t.duration_since(now).unwrap_or(Duration::ZERO))
            .unwrap_or(Duration::from_secs(60))
            .min(Duration::from_secs(60))
    }
}

/// How often the scheduler looks at every queued message, for those that came due by time.
pub(super) const FULL_SCAN_EVERY: Duration = Duration::from_secs(1);

/// Whether message `queue_id` still owes its archive copy: its envelope names one and its
/// state (if any) has not settled it.
fn archive_owed<S: MessageStore>(store: &S, state_dir: &std::path::Path, queue_id: &str) -> bool {
    let Ok(message) = store.read(queue_id) else {
        return false;
    };
    if message.envelope.archive.is_none() {
        return false;
    }
    match load_state(state_dir, queue_id) {
        Ok(Some(state)) => state.archive.as_ref().is_some_and(|a| !a.settled()),
        _ => true,
    }
}
