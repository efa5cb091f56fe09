//! The queue manager: from spooled message to delivered or bounced recipients (SPEC §3.5).
//!
//! [`QueueManager`] takes messages by queue id (from [`QueueHandle::submit`] when the spool
//! accepted one, and from [`MessageStore::list`] at startup), groups each message's pending
//! recipients by route (recipients sharing a route share one delivery), and delivers them.
//!
//! Scheduling is continuous ([`QueueManager::run`]): a message is started as soon as it is
//! due or submitted, not when other messages finish. Each route group is one attempt at one
//! *destination* (a configured route, or the recipient domain for direct MX delivery); at
//! most `destination_concurrency` attempts per destination and `concurrency` in all run at
//! once, and one attempt lasts at most `attempt_timeout_seconds` (then it is deferred). A
//! group whose destination is full is not waited for: it stays pending, the message is
//! parked on that destination and started again when it has a free slot, so a slow or
//! hostile destination ties up its own slots and nothing else. A scheduler wake looks only
//! at nominated messages (submitted, just attempted, unparked); the whole queue is looked
//! at once a second, for messages that came due by time. At most twice `concurrency` messages are held at
//! once; a held message is its envelope, its state and where its text is ([`MessageText`]),
//! never the text itself: the text is streamed from the store to the socket.
//!
//! Per-recipient state lives in a small state file per
//! message (`<queue id>.delivery.json` in the state directory), written atomically after each
//! route group, so a restart resumes where the last run stopped: a recipient is delivered at
//! least once and never lost. 5xx bounces at once; 4xx and connect failures are retried on the
//! [`RetrySchedule`]; a bounce queues an RFC 3464 DSN from the null sender back to the
//! original sender (never for a null sender). A message leaves the store only when every
//! recipient is delivered or bounced and its DSN is queued.
//!
//! Queue administration ([`QueueManager::hold`], [`QueueManager::release`],
//! [`QueueManager::flush`], [`QueueManager::delete`]) works on the same entries: a held
//! message is never started (a `<queue id>.hold` marker next to its state file keeps it held
//! across restarts); a flush makes messages due now (held ones stay held); a delete removes
//! the message and its state without delivery and without a DSN.
//!
//! The spool is not built here: the manager sees it through [`MessageStore`].
//! [`DirectoryStore`] is a plain directory implementation for tests and tools.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::registry::Registry;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

use crate::config::{DeliveryConfig, RouteConfig, RouteHosts, RouteTlsConfig};

use super::Clock;
use super::attempt::{GroupResult, Transport, defer_all};
use super::client::RecipientOutcome;
use super::dsn::{BounceReport, FailedRecipient, build_dsn};
use super::metrics::DeliveryMetrics;
use super::pool::HostPool;
use super::retry::{RetryDecision, RetrySchedule};
use super::route::{RouteChoice, RouteTable, group_by_table, resolve_choice};
pub use super::text::MessageText;

pub use crate::envelope::{Envelope, QueueId};

/// A spooled message as delivery holds it: the envelope, and where the content is (CRLF
/// lines, as received after DATA), read only while it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// The envelope.
    pub envelope: Envelope,
    /// The message as received, headers and body.
    pub text: MessageText,
}

/// What the queue manager needs from the spool.
///
/// Every method may block on disk I/O; the manager calls them from blocking threads.
/// A spool implements it by mapping each method onto its own files:
///
/// ```text
/// impl MessageStore for Spool {
///     fn list(&self) -> io::Result<Vec<String>> { self.queue_ids() }
///     fn read(&self, id: &str) -> io::Result<StoredMessage> {
///         let (envelope, path, offset, len) = self.locate(id)?;
///         Ok(StoredMessage { envelope, text: MessageText::file(path, offset, len) })
///     }
///     fn enqueue(&self, from: &str, rcpt: &[String], data: &[u8], at: SystemTime)
///         -> io::Result<String> { self.store_fsynced(from, rcpt, data, at) }
///     fn remove(&self, id: &str) -> io::Result<()> { self.delete(id) }
/// }
/// ```
pub trait MessageStore: Send + Sync + 'static {
    /// Queue ids of every message held (called once, at startup).
    fn list(&self) -> io::Result<Vec<String>>;
    /// The envelope of a message and where its content is; the content itself is read
    /// later, through [`MessageText::open`], once per attempt. `ErrorKind::NotFound` when
    /// the message is gone.
    fn read(&self, queue_id: &str) -> io::Result<StoredMessage>;
    /// Stores a new message (a DSN) durably (on disk when this returns) and returns its id.
    fn enqueue(
        &self,
        mail_from: &str,
        rcpt_to: &[String],
        data: &[u8],
        received_at: SystemTime,
    ) -> io::Result<String>;
    /// Deletes a message whose recipients are all delivered or bounced.
    fn remove(&self, queue_id: &str) -> io::Result<()>;
}

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
    Resolver(#[from] super::mx::ResolveError),
}

/// Per-recipient delivery state, as saved in a message's state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum RecipientState {
    /// Not delivered yet.
    Pending {
        /// The last temporary failure, if any.
        #[serde(default)]
        last_error: Option<String>,
    },
    /// Handed to a downstream host.
    Delivered {
        /// `host:port` that took it.
        host: String,
    },
    /// Failed for good.
    Bounced {
        /// Enhanced status `5.x.x`.
        status: String,
        /// What happened.
        diagnostic: String,
    },
}

/// The state file of one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageState {
    /// Failed attempts so far.
    pub attempts: u32,
    /// When to try next (Unix seconds).
    pub next_attempt_unix: u64,
    /// State per recipient.
    pub recipients: BTreeMap<String, RecipientState>,
    /// Bounced recipients whose DSN is not queued yet.
    #[serde(default)]
    pub dsn_pending: Vec<DsnEntry>,
}

/// A bounced recipient waiting for its DSN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DsnEntry {
    /// Recipient.
    pub recipient: String,
    /// Status `5.x.x`.
    pub status: String,
    /// Diagnostic text.
    pub diagnostic: String,
    /// The host that answered, if one did.
    #[serde(default)]
    pub remote_mta: Option<String>,
}

impl MessageState {
    fn new(envelope: &Envelope, now: SystemTime) -> Self {
        Self {
            attempts: 0,
            next_attempt_unix: unix(now),
            recipients: envelope
                .rcpts
                .iter()
                .map(|r| (r.clone(), RecipientState::Pending { last_error: None }))
                .collect(),
            dsn_pending: Vec::new(),
        }
    }

    fn pending(&self) -> Vec<String> {
        self.recipients
            .iter()
            .filter(|(_, s)| matches!(s, RecipientState::Pending { .. }))
            .map(|(r, _)| r.clone())
            .collect()
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn from_unix(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// A queue id is used as a file name: only letters, digits, `-`, `_` and `.` (not leading).
fn valid_queue_id(id: &str) -> bool {
    !id.is_empty()
        && !id.starts_with('.')
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Writes a file atomically and durably: temporary file, fsync, rename, directory fsync.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    fs::File::open(dir)?.sync_all()
}

#[derive(Debug, Clone)]
struct QueueEntry {
    next_attempt: SystemTime,
    received_at: Option<SystemTime>,
    /// An attempt is under way: not to be started again until it ends.
    in_flight: bool,
    /// Destinations of the pending recipients, as the last attempt found them; empty when
    /// not known yet. A due message none of whose destinations has a free slot waits.
    destinations: Vec<String>,
    /// Held by an operator: not attempted until released (a `<queue id>.hold` marker in
    /// the state directory keeps it held across restarts).
    held: bool,
}

impl QueueEntry {
    fn new(next_attempt: SystemTime, received_at: Option<SystemTime>) -> Self {
        Self {
            next_attempt,
            received_at,
            in_flight: false,
            destinations: Vec::new(),
            held: false,
        }
    }
}

/// Attempts under way per destination, at most `limit` each. A destination is in the
/// table only while it has one, so the table does not grow with the domains ever seen.
#[derive(Debug)]
struct Destinations {
    active: Mutex<HashMap<String, usize>>,
    limit: usize,
    /// Lower limits of some destinations (a route's `rateLimit.maxConnections`).
    limits: Mutex<HashMap<String, usize>>,
    freed: Notify,
}

impl Destinations {
    fn active(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The slots of destination `key`.
    fn limit_of(&self, key: &str) -> usize {
        self.limits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
            .unwrap_or(self.limit)
    }

    /// The per-route limits of `routes` (a new config).
    fn set_limits(&self, routes: &[RouteConfig]) {
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

    fn try_take(&self, key: &str) -> bool {
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

    fn give_back(&self, key: &str) {
        let mut active = self.active();
        if let Some(n) = active.get_mut(key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                active.remove(key);
            }
        }
    }

    /// The destinations without a free slot.
    fn full(&self) -> std::collections::HashSet<String> {
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
struct DestinationSlot {
    shared: Arc<Shared>,
    key: String,
}

impl DestinationSlot {
    fn try_take(shared: &Arc<Shared>, key: &str) -> Option<Self> {
        shared.destinations.try_take(key).then(|| Self {
            shared: shared.clone(),
            key: key.to_string(),
        })
    }

    async fn take(shared: &Arc<Shared>, key: &str) -> Self {
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
fn destination_of(choice: &RouteChoice, route_name: &str) -> String {
    match choice {
        RouteChoice::Configured(_) => route_destination(route_name),
        RouteChoice::DirectMx(domain) => format!("mx:{domain}"),
    }
}

/// The destination of the configured route `name`.
fn route_destination(name: &str) -> String {
    format!("route:{name}")
}

/// The routes in force and their compiled table, swapped as one on reload; a message
/// takes a reference for its whole attempt.
#[derive(Debug)]
struct RouteSet {
    list: Vec<RouteConfig>,
    table: RouteTable,
}

impl RouteSet {
    fn new(list: Vec<RouteConfig>) -> Self {
        let table = RouteTable::new(&list);
        Self { list, table }
    }
}

/// The part of the queue shared with [`QueueHandle`]s.
#[derive(Debug)]
struct Shared {
    entries: Mutex<BTreeMap<String, QueueEntry>>,
    wake: Notify,
    destinations: Destinations,
    /// Messages the scheduler looks at on its next wake (submitted, just attempted, or
    /// waiting for a destination that has room again), so that a wake does not scan the
    /// whole queue; a full scan runs at most once a second and when this list overflowed.
    candidates: Mutex<Candidates>,
}

/// See [`Shared::candidates`].
#[derive(Debug, Default)]
struct Candidates {
    ids: Vec<String>,
    /// Due messages waiting for a full destination, by the destination they wait for.
    parked: HashMap<String, std::collections::BTreeSet<String>>,
    /// Something was not recorded here (the held-message bound cut a pass short).
    full_scan: bool,
}

impl Shared {
    fn candidates(&self) -> std::sync::MutexGuard<'_, Candidates> {
        self.candidates.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the scheduler to look at `id`.
    fn nominate(&self, id: &str) {
        self.candidates().ids.push(id.to_string());
        self.wake.notify_one();
    }
}

impl Shared {
    fn entries(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, QueueEntry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A cheap, cloneable way to hand newly spooled messages to the queue manager.
#[derive(Clone)]
pub struct QueueHandle {
    shared: Arc<Shared>,
    clock: Arc<dyn Clock>,
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
}

/// What one [`QueueManager::run_due`] pass did, counted in recipients and messages.
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

struct Inner<S: MessageStore> {
    store: Arc<S>,
    routes: RwLock<Arc<RouteSet>>,
    schedule: RetrySchedule,
    concurrency: Arc<Semaphore>,
    messages_in_flight: Arc<Semaphore>,
    attempt_timeout: Duration,
    idle_sweep: Duration,
    hostname: String,
    state_dir: PathBuf,
    clock: Arc<dyn Clock>,
    transport: Transport,
    /// Host health per configured route, by route name (direct MX delivery has no pool).
    pools: Mutex<HashMap<String, (RouteHosts, HostPool)>>,
    rng: Mutex<StdRng>,
    metrics: DeliveryMetrics,
    /// DKIM keys; messages are signed before each attempt.
    dkim: crate::dkim::Dkim,
    shared: Arc<Shared>,
    run_lock: tokio::sync::Mutex<()>,
    /// When the oldest message's age was last worked out (it takes a pass over the queue).
    age_at: Mutex<Option<SystemTime>>,
}

/// Delivers spooled messages. See the module documentation.
pub struct QueueManager<S: MessageStore> {
    inner: Arc<Inner<S>>,
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
        let dkim = crate::dkim::Dkim::new(registry);
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
            clock: clock.clone(),
            transport,
            pools: Mutex::new(HashMap::new()),
            rng: Mutex::new(rand::make_rng()),
            metrics,
            dkim,
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
    pub fn set_shared_turns(&self, shared: Arc<dyn super::rate::SharedTurns>) {
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
                .filter(|(_, e)| !e.in_flight && !e.held && e.next_attempt <= now)
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
    fn start_due(&self, tasks: &mut JoinSet<RunReport>, only: Option<Vec<String>>) -> Duration {
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
            if e.in_flight || e.held {
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

/// One queued message as the scheduler sees it (for queue administration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    /// Queue id.
    pub queue_id: String,
    /// When it is tried next (a held message: once released).
    pub next_attempt: SystemTime,
    /// Held by an operator.
    pub held: bool,
    /// An attempt is under way.
    pub in_flight: bool,
    /// Destinations of its pending recipients (`route:NAME`, `mx:DOMAIN`) as the last
    /// attempt found them; empty before the first attempt.
    pub destinations: Vec<String>,
}

/// Why a queue administration request was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no such message in the queue")]
    NotFound,
    #[error("a delivery attempt is under way; try again when it has finished")]
    InFlight,
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl<S: MessageStore> QueueManager<S> {
    /// Every queued message, by queue id.
    pub fn messages(&self) -> Vec<QueuedMessage> {
        self.inner
            .shared
            .entries()
            .iter()
            .map(|(id, e)| QueuedMessage {
                queue_id: id.clone(),
                next_attempt: e.next_attempt,
                held: e.held,
                in_flight: e.in_flight,
                destinations: e.destinations.clone(),
            })
            .collect()
    }

    /// One queued message; `None` when it is not queued.
    pub fn message(&self, queue_id: &str) -> Option<QueuedMessage> {
        self.messages().into_iter().find(|m| m.queue_id == queue_id)
    }

    /// The spooled envelope and text location of a queued message.
    pub fn stored(&self, queue_id: &str) -> io::Result<StoredMessage> {
        self.inner.store.read(queue_id)
    }

    /// Holds a message: it is not attempted until [`QueueManager::release`] (an attempt
    /// under way finishes). The hold is written to disk (fsync'd) before this returns, so
    /// it survives a restart. Holding a held message changes nothing.
    pub fn hold(&self, queue_id: &str) -> Result<(), AdminError> {
        if !valid_queue_id(queue_id) || !self.inner.shared.entries().contains_key(queue_id) {
            return Err(AdminError::NotFound);
        }
        write_atomic(&self.inner.state_dir, &hold_name(queue_id), b"held\n")?;
        match self.inner.shared.entries().get_mut(queue_id) {
            Some(e) => e.held = true,
            None => {
                // Finished meanwhile: no marker left behind.
                let _ = fs::remove_file(self.inner.state_dir.join(hold_name(queue_id)));
                return Err(AdminError::NotFound);
            }
        }
        Ok(())
    }

    /// Releases a held message: it is attempted on its schedule again (at once when it is
    /// due). Releasing a message that is not held changes nothing.
    pub fn release(&self, queue_id: &str) -> Result<(), AdminError> {
        if !valid_queue_id(queue_id) || !self.inner.shared.entries().contains_key(queue_id) {
            return Err(AdminError::NotFound);
        }
        match fs::remove_file(self.inner.state_dir.join(hold_name(queue_id))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(e) = self.inner.shared.entries().get_mut(queue_id) {
            e.held = false;
        }
        self.inner.shared.nominate(queue_id);
        Ok(())
    }

    /// Makes queued messages due now, without waiting for their retry schedule: all of
    /// them, or those whose pending recipients go through the configured route `route`.
    /// Held messages stay held (they are due at once when released). Returns the number
    /// of messages that will be attempted now.
    pub fn flush(&self, route: Option<&str>) -> usize {
        let now = self.inner.clock.now();
        let wanted = route.map(|r| format!("route:{r}"));
        let mut flushed = Vec::new();
        {
            let mut entries = self.inner.shared.entries();
            for (id, e) in entries.iter_mut() {
                if let Some(w) = &wanted
                    && !e.destinations.contains(w)
                {
                    continue;
                }
                if e.next_attempt > now {
                    e.next_attempt = now;
                }
                if !e.held && !e.in_flight {
                    flushed.push(id.clone());
                }
            }
        }
        let n = flushed.len();
        {
            let mut c = self.inner.shared.candidates();
            c.ids.extend(flushed);
        }
        self.inner.shared.wake.notify_one();
        n
    }

    /// Takes over a message another relay's spool held (a drain, see [`crate::drain`]):
    /// its text is already in this store as `queue_id`; its delivery state (recipients
    /// delivered or bounced there, DSNs still owed, failed attempts) and hold are written
    /// before it joins the queue, due now. Nothing already done is done again.
    pub fn adopt(
        &self,
        queue_id: &str,
        state: Option<&MessageState>,
        held: bool,
    ) -> Result<(), AdminError> {
        if !valid_queue_id(queue_id) {
            return Err(AdminError::NotFound);
        }
        let now = self.inner.clock.now();
        if let Some(state) = state {
            let mut state = state.clone();
            state.next_attempt_unix = unix(now);
            save_state(&self.inner.state_dir, queue_id, &state)?;
        }
        if held {
            write_atomic(&self.inner.state_dir, &hold_name(queue_id), b"held\n")?;
        }
        {
            let mut entries = self.inner.shared.entries();
            let entry = entries
                .entry(queue_id.to_string())
                .or_insert_with(|| QueueEntry::new(now, None));
            entry.held = held;
            entry.next_attempt = now;
            self.inner.metrics.queue_depth.set(entries.len() as i64);
        }
        self.inner.shared.nominate(queue_id);
        Ok(())
    }

    /// Deletes a queued message: it leaves the queue and the spool with its delivery
    /// state, without delivery and without a DSN. Refused while an attempt is under way.
    pub fn delete(&self, queue_id: &str) -> Result<(), AdminError> {
        if !valid_queue_id(queue_id) {
            return Err(AdminError::NotFound);
        }
        {
            let mut entries = self.inner.shared.entries();
            match entries.get(queue_id) {
                None => return Err(AdminError::NotFound),
                Some(e) if e.in_flight => return Err(AdminError::InFlight),
                Some(_) => {
                    entries.remove(queue_id);
                }
            }
        }
        let removed = self.inner.store.remove(queue_id);
        if let Err(e) = forget_state(&self.inner.state_dir, queue_id) {
            tracing::warn!(queue_id, "cannot remove the delivery state: {e}");
        }
        self.inner.update_gauges();
        match removed {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

fn hold_name(queue_id: &str) -> String {
    format!("{queue_id}.hold")
}

/// How often the scheduler looks at every queued message, for those that came due by time.
const FULL_SCAN_EVERY: Duration = Duration::from_secs(1);

fn state_name(queue_id: &str) -> String {
    format!("{queue_id}.delivery.json")
}

/// The delivery state of `queue_id` kept in `dir` (the spool's `delivery/` directory), if
/// any, and whether it is held: what a drain carries with the message.
pub fn stored_state(dir: &Path, queue_id: &str) -> io::Result<(Option<MessageState>, bool)> {
    let state = load_state(dir, queue_id)?;
    Ok((state, dir.join(hold_name(queue_id)).exists()))
}

/// Removes the delivery state and hold marker of `queue_id` from `dir` (a message that
/// left this spool): both are tried; the first failure other than a missing file is
/// returned.
pub fn forget_state(dir: &Path, queue_id: &str) -> io::Result<()> {
    if !valid_queue_id(queue_id) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad queue id"));
    }
    let mut first = Ok(());
    for name in [state_name(queue_id), hold_name(queue_id)] {
        match fs::remove_file(dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
    }
    first
}

impl MessageState {
    /// Recipients not yet delivered nor bounced.
    pub fn pending_recipients(&self) -> Vec<String> {
        self.pending()
    }
}

fn load_state(dir: &Path, queue_id: &str) -> io::Result<Option<MessageState>> {
    if !valid_queue_id(queue_id) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad queue id {queue_id:?}"),
        ));
    }
    match fs::read(dir.join(state_name(queue_id))) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn save_state(dir: &Path, queue_id: &str, state: &MessageState) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(state).map_err(io::Error::other)?;
    write_atomic(dir, &state_name(queue_id), &bytes)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(e.to_string()))?
}

impl RunReport {
    fn add(&mut self, r: &RunReport) {
        self.messages += r.messages;
        self.delivered += r.delivered;
        self.deferred += r.deferred;
        self.bounced += r.bounced;
        self.completed += r.completed;
        self.dsns_queued += r.dsns_queued;
    }
}

impl<S: MessageStore> Inner<S> {
    /// One attempt at one message, holding one of the held-message places; marks the
    /// message free to be started again when it ends.
    async fn attempt(
        self: Arc<Self>,
        queue_id: String,
        reserved: Vec<DestinationSlot>,
        wait: bool,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> RunReport {
        struct Done<'a>(&'a Shared, &'a str);
        impl Drop for Done<'_> {
            // Also when the task is cancelled: the message must not stay "in flight".
            fn drop(&mut self) {
                if let Some(e) = self.0.entries().get_mut(self.1) {
                    e.in_flight = false;
                }
                // Due again at once when its destination was full.
                self.0.nominate(self.1);
            }
        }
        let shared = self.shared.clone();
        let _done = Done(&shared, &queue_id);
        let report = self.clone().process(queue_id.clone(), reserved, wait).await;
        drop(permit);
        report
    }

    /// Queue depth, every time; the oldest message's age, which takes a pass over the
    /// whole queue, at most once a second (by the manager's clock) or when the queue
    /// empties. The loop calls this on every wake: with a deep queue a pass per wake made
    /// delivery slower the more mail waited.
    fn update_gauges(&self) {
        let now = self.clock.now();
        let entries = self.shared.entries();
        self.metrics.queue_depth.set(entries.len() as i64);
        {
            let mut at = self.age_at.lock().unwrap_or_else(|e| e.into_inner());
            let fresh = at.is_some_and(|t| {
                now.duration_since(t)
                    .is_ok_and(|d| d < Duration::from_secs(1))
            });
            if fresh && !entries.is_empty() {
                return;
            }
            *at = Some(now);
        }
        let oldest = entries.values().filter_map(|e| e.received_at).min();
        let age = oldest
            .and_then(|t| now.duration_since(t).ok())
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        self.metrics.oldest_message_age_seconds.set(age);
    }

    fn reschedule(&self, queue_id: &str, next: SystemTime, received_at: Option<SystemTime>) {
        if let Some(e) = self.shared.entries().get_mut(queue_id) {
            e.next_attempt = next;
            if received_at.is_some() {
                e.received_at = received_at;
            }
        }
    }

    fn set_destinations(&self, queue_id: &str, destinations: Vec<String>) {
        if let Some(e) = self.shared.entries().get_mut(queue_id) {
            e.destinations = destinations;
        }
    }

    fn forget(&self, queue_id: &str) {
        self.shared.entries().remove(queue_id);
    }

    /// Saves a message's state file (fsync'd) on a blocking thread, so the flush never
    /// stalls the runtime threads that serve SMTP sessions.
    async fn persist(&self, queue_id: &str, state: &MessageState) -> bool {
        let dir = self.state_dir.clone();
        let id = queue_id.to_string();
        let state = state.clone();
        match blocking(move || save_state(&dir, &id, &state)).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(queue_id, "cannot save delivery state: {e}");
                false
            }
        }
    }

    /// One attempt at one message. `reserved` are destination slots taken for it already;
    /// with `wait`, a group waits for a slot of its destination, otherwise a group whose
    /// destination is full is left pending for when it has room.
    async fn process(
        self: Arc<Self>,
        queue_id: String,
        reserved: Vec<DestinationSlot>,
        wait: bool,
    ) -> RunReport {
        let mut report = RunReport {
            messages: 1,
            ..RunReport::default()
        };
        let now = self.clock.now();
        let retry_soon = now + Duration::from_secs(60);
        if !valid_queue_id(&queue_id) {
            tracing::error!(
                queue_id,
                "queue id is not usable as a file name; message skipped"
            );
            self.forget(&queue_id);
            return report;
        }
        let store = self.store.clone();
        let id = queue_id.clone();
        let dir = self.state_dir.clone();
        let read = blocking(move || Ok((store.read(&id)?, load_state(&dir, &id)))).await;
        let (message, saved) = match read {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.forget(&queue_id);
                return report;
            }
            Err(e) => {
                tracing::error!(queue_id, "cannot read message: {e}");
                self.reschedule(&queue_id, retry_soon, None);
                return report;
            }
        };
        let envelope = message.envelope;
        let text = message.text;
        // The header section (bounded) is all that is read before the text is sent: for
        // the loop guard (SPEC §3.5: too many `Received:` headers bounces without
        // delivery) and for a DSN.
        let headers = match text.header_section().await {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(queue_id, "cannot read message: {e}");
                self.reschedule(&queue_id, retry_soon, None);
                return report;
            }
        };
        let looping = self.transport.loop_refusal(&headers);
        // DKIM (SPEC §2.1): signed from the stored text before each attempt; a key that
        // cannot be used defers the message rather than sending it unsigned.
        let (text, unsigned) = if looping.is_some() {
            (text, None)
        } else {
            match self.dkim.sign(&headers, &text).await {
                Ok(crate::dkim::Signing::Signed(signed)) => (signed, None),
                Ok(crate::dkim::Signing::NotConfigured) => (text, None),
                Err(e) => {
                    tracing::warn!(queue_id, domain = %e.domain, "DKIM signing failed, delivery deferred: {}", e.reason);
                    (text, Some(e.to_string()))
                }
            }
        };
        // A state file exists only for a message that needed more than one attempt or
        // route group; it is removed with the message.
        let mut state_on_disk = !matches!(saved, Ok(None));
        let mut state = match saved {
            Ok(Some(s)) => s,
            Ok(None) => MessageState::new(&envelope, now),
            Err(e) => {
                // An unreadable state file: start over (at-least-once, never lost).
                tracing::warn!(queue_id, "delivery state unreadable, starting over: {e}");
                MessageState::new(&envelope, now)
            }
        };

        let pending = state.pending();
        let route_set = self
            .routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let routes = &route_set.list;
        let mut groups = JoinSet::new();
        let route_groups = group_by_table(&route_set.table, &envelope.mail_from, &pending);
        // With several route groups, each finished group is saved, so a restart does not
        // deliver it again; a single group needs no intermediate save.
        let save_each_group = route_groups.len() > 1;
        let mut reserved = reserved;
        // Destinations that were full: their recipients wait for a free slot.
        let mut busy: Vec<String> = Vec::new();
        let mut attempted = false;
        for (choice, rcpts) in route_groups {
            let route = resolve_choice(routes, &choice);
            let destination = destination_of(&choice, &route.name);
            let slot = match reserved.iter().position(|s| s.key == destination) {
                Some(i) => Some(reserved.swap_remove(i)),
                None if wait => None,
                None => match DestinationSlot::try_take(&self.shared, &destination) {
                    Some(slot) => Some(slot),
                    None => {
                        busy.push(destination);
                        continue;
                    }
                },
            };
            let this = self.clone();
            let text = text.clone();
            let from = envelope.mail_from.clone();
            attempted = true;
            let params = envelope.mail_params();
            let looping = looping.clone();
            let unsigned = unsigned.clone();
            groups.spawn(async move {
                let _slot = match slot {
                    Some(slot) => slot,
                    None => DestinationSlot::take(&this.shared, &destination).await,
                };
                let _permit = this.concurrency.clone().acquire_owned().await;
                let hosts = this.host_order(&choice, &route);
                let started = std::time::Instant::now();
                let result = match (looping, unsigned) {
                    (Some(refusal), _) => GroupResult::refused(&rcpts, &refusal),
                    (None, Some(reason)) => GroupResult {
                        outcomes: defer_all(&rcpts, &reason),
                        host: None,
                        failed_hosts: Vec::new(),
                        succeeded_host: None,
                    },
                    (None, None) => {
                        let attempt = this
                            .transport
                            .deliver(&route, &hosts, &from, &rcpts, &text, params);
                        match tokio::time::timeout(this.attempt_timeout, attempt).await {
                            Ok(result) => result,
                            Err(_) => GroupResult {
                                outcomes: defer_all(
                                    &rcpts,
                                    &format!(
                                        "attempt timeout: route {} did not finish within {:?}",
                                        route.name, this.attempt_timeout
                                    ),
                                ),
                                host: None,
                                failed_hosts: Vec::new(),
                                succeeded_host: None,
                            },
                        }
                    }
                };
                this.metrics
                    .attempt_took(&route.name, started.elapsed().as_secs_f64());
                this.record_health(&choice, &route, &result);
                let tls = tls_policy(&route.tls);
                (
                    route.name.clone(),
                    metric_host(&choice, &result),
                    tls,
                    result,
                )
            });
        }
        // Slots taken for destinations this message no longer has.
        drop(reserved);

        while let Some(done) = groups.join_next().await {
            let Ok((route_name, metric_host, tls, result)) = done else {
                continue;
            };
            let in_queue = now
                .duration_since(envelope.received_at)
                .unwrap_or_default()
                .as_secs_f64();
            for (rcpt, outcome) in &result.outcomes {
                let host = result.host.as_deref();
                let new_state = match outcome {
                    RecipientOutcome::Delivered { reply } => {
                        tracing::info!(queue_id, sender = %envelope.mail_from, recipients = %rcpt, route = %route_name, host = host.unwrap_or("none"), tls, result = "delivered", %reply, "delivery");
                        report.delivered += 1;
                        self.metrics.count(&route_name, &metric_host, "delivered");
                        self.metrics.left_queue("delivered", in_queue);
                        RecipientState::Delivered {
                            host: host.unwrap_or("none").to_string(),
                        }
                    }
                    RecipientOutcome::Deferred { reason } => {
                        tracing::info!(queue_id, sender = %envelope.mail_from, recipients = %rcpt, route = %route_name, host = host.unwrap_or("none"), tls, result = "deferred", reply = %reason, "delivery");
                        report.deferred += 1;
                        self.metrics.count(&route_name, &metric_host, "deferred");
                        RecipientState::Pending {
                            last_error: Some(reason.clone()),
                        }
                    }
                    RecipientOutcome::Failed { status, diagnostic } => {
                        tracing::info!(queue_id, sender = %envelope.mail_from, recipients = %rcpt, route = %route_name, host = host.unwrap_or("none"), tls, result = "bounced", status = %status, reply = %diagnostic, "delivery");
                        report.bounced += 1;
                        self.metrics.count(&route_name, &metric_host, "bounced");
                        self.metrics.left_queue("bounced", in_queue);
                        if !envelope.mail_from.is_empty() {
                            state.dsn_pending.push(DsnEntry {
                                recipient: rcpt.clone(),
                                status: status.clone(),
                                diagnostic: diagnostic.clone(),
                                remote_mta: host.map(str::to_string),
                            });
                        }
                        RecipientState::Bounced {
                            status: status.clone(),
                            diagnostic: diagnostic.clone(),
                        }
                    }
                };
                state.recipients.insert(rcpt.clone(), new_state);
            }
            if save_each_group {
                state_on_disk |= self.persist(&queue_id, &state).await;
            }
        }

        // Temporary failures: retry on the schedule, or bounce once the lifetime is over.
        // Recipients left for a full destination were not attempted: they do not count as
        // a failed attempt and are started again as soon as their destination has room.
        let still_pending = state.pending();
        let now = self.clock.now();
        let attempted_and_pending = !still_pending.is_empty() && report.deferred > 0;
        if !still_pending.is_empty() {
            if attempted_and_pending {
                state.attempts = state.attempts.saturating_add(1);
            }
            match self
                .schedule
                .decide(envelope.received_at, now, state.attempts.max(1))
            {
                RetryDecision::RetryAt(t) => {
                    state.next_attempt_unix = if busy.is_empty() { unix(t) } else { unix(now) };
                }
                RetryDecision::Expired => {
                    attempted = true;
                    for rcpt in still_pending {
                        let last = match state.recipients.get(&rcpt) {
                            Some(RecipientState::Pending {
                                last_error: Some(e),
                            }) => e.clone(),
                            _ => "no delivery attempt succeeded".to_string(),
                        };
                        let diagnostic = format!("delivery time expired; last error: {last}");
                        report.bounced += 1;
                        let route_name = match super::domain_of(&rcpt) {
                            Some(d) => {
                                let sender = super::domain_of(&envelope.mail_from);
                                let choice = route_set.table.choose_for(sender.as_deref(), &d);
                                resolve_choice(routes, &choice).name
                            }
                            None => "direct".to_string(),
                        };
                        tracing::info!(queue_id, sender = %envelope.mail_from, recipients = %rcpt, route = %route_name, host = "none", tls = "none", result = "bounced", status = "5.4.7", reply = %diagnostic, "delivery");
                        self.metrics.count(&route_name, "none", "bounced");
                        self.metrics.left_queue(
                            "bounced",
                            now.duration_since(envelope.received_at)
                                .unwrap_or_default()
                                .as_secs_f64(),
                        );
                        if !envelope.mail_from.is_empty() {
                            state.dsn_pending.push(DsnEntry {
                                recipient: rcpt.clone(),
                                status: "5.4.7".into(),
                                diagnostic: diagnostic.clone(),
                                remote_mta: None,
                            });
                        }
                        state.recipients.insert(
                            rcpt,
                            RecipientState::Bounced {
                                status: "5.4.7".into(),
                                diagnostic,
                            },
                        );
                    }
                }
            }
        }
        // Where the recipients still pending go, for the scheduler.
        let destinations = group_by_table(&route_set.table, &envelope.mail_from, &state.pending())
            .into_iter()
            .map(|(choice, _)| destination_of(&choice, &resolve_choice(routes, &choice).name))
            .collect();
        self.set_destinations(&queue_id, destinations);
        // A message finished in this attempt goes straight to removal: if the relay stops
        // before the removal, the next run delivers it again (at least once, never lost).
        let finished = state.pending().is_empty() && state.dsn_pending.is_empty();
        if !attempted && !finished && state.dsn_pending.is_empty() {
            // Nothing tried, nothing changed: only the time of the next try, which a
            // restart sets to "now" anyway. No disk write for a message that waits.
            self.reschedule(
                &queue_id,
                from_unix(state.next_attempt_unix),
                Some(envelope.received_at),
            );
            return report;
        }
        if !finished {
            if !self.persist(&queue_id, &state).await {
                self.reschedule(&queue_id, retry_soon, Some(envelope.received_at));
                return report;
            }
            state_on_disk = true;
        }

        if !state.dsn_pending.is_empty() {
            match self
                .queue_dsn(&envelope, &headers, &state.dsn_pending, now)
                .await
            {
                Ok(dsn_id) => {
                    report.dsns_queued += 1;
                    state.dsn_pending.clear();
                    self.persist(&queue_id, &state).await;
                    self.shared
                        .entries()
                        .insert(dsn_id.clone(), QueueEntry::new(now, Some(now)));
                    self.shared.nominate(&dsn_id);
                }
                Err(e) => {
                    tracing::error!(queue_id, "cannot queue the bounce: {e}");
                    self.reschedule(&queue_id, retry_soon, Some(envelope.received_at));
                    return report;
                }
            }
        }
        if state.pending().is_empty() && state.dsn_pending.is_empty() {
            let store = self.store.clone();
            let id = queue_id.clone();
            match blocking(move || store.remove(&id)).await {
                Ok(()) => {
                    if state_on_disk {
                        let path = self.state_dir.join(state_name(&queue_id));
                        let _ = blocking(move || fs::remove_file(path)).await;
                    }
                    // Held while its last attempt was under way: no marker left behind.
                    let held = self.shared.entries().get(&queue_id).is_some_and(|e| e.held);
                    if held {
                        let hold = self.state_dir.join(hold_name(&queue_id));
                        let _ = blocking(move || fs::remove_file(hold)).await;
                    }
                    self.forget(&queue_id);
                    report.completed += 1;
                }
                Err(e) => {
                    tracing::error!(queue_id, "cannot remove delivered message: {e}");
                    self.reschedule(&queue_id, retry_soon, Some(envelope.received_at));
                }
            }
        } else {
            self.reschedule(
                &queue_id,
                from_unix(state.next_attempt_unix),
                Some(envelope.received_at),
            );
        }
        report
    }

    /// Queues the DSN of `entries`; it quotes `headers`, the original's header section.
    async fn queue_dsn(
        &self,
        envelope: &Envelope,
        headers: &[u8],
        entries: &[DsnEntry],
        now: SystemTime,
    ) -> io::Result<String> {
        let failures: Vec<FailedRecipient> = entries
            .iter()
            .map(|e| FailedRecipient {
                recipient: e.recipient.clone(),
                status: e.status.clone(),
                diagnostic: e.diagnostic.clone(),
                remote_mta: e.remote_mta.clone(),
            })
            .collect();
        let dsn = build_dsn(&BounceReport {
            reporting_mta: &self.hostname,
            queue_id: &envelope.queue_id.to_string(),
            arrival: envelope.received_at,
            now,
            original_sender: &envelope.mail_from,
            failures: &failures,
            original: headers,
        });
        let store = self.store.clone();
        let to = vec![envelope.mail_from.clone()];
        blocking(move || store.enqueue("", &to, &dsn, now)).await
    }

    /// The order to try a group's hosts in: a configured route's pool by health and
    /// weight; for direct MX delivery the one domain (it has no pool to keep).
    fn host_order(
        &self,
        choice: &RouteChoice,
        route: &RouteConfig,
    ) -> Vec<crate::config::HostConfig> {
        let now = self.clock.now();
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(choice, RouteChoice::DirectMx(_)) {
            return HostPool::from_route_hosts(&route.hosts).attempt_order(now, &mut *rng);
        }
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let entry = pools.entry(route.name.clone()).or_insert_with(|| {
            (
                route.hosts.clone(),
                HostPool::from_route_hosts(&route.hosts),
            )
        });
        if entry.0 != route.hosts {
            *entry = (
                route.hosts.clone(),
                HostPool::from_route_hosts(&route.hosts),
            );
        }
        entry.1.attempt_order(now, &mut *rng)
    }

    fn record_health(&self, choice: &RouteChoice, route: &RouteConfig, result: &GroupResult) {
        if matches!(choice, RouteChoice::DirectMx(_)) {
            return;
        }
        let now = self.clock.now();
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, pool)) = pools.get_mut(&route.name) {
            for h in &result.failed_hosts {
                pool.mark_down(h, now);
            }
            if let Some(h) = &result.succeeded_host {
                pool.mark_up(h);
            }
        }
    }
}

/// The `host` label of a group's outcome: the configured pool host that took it (or the
/// last that failed), `mx` for direct delivery, `none` when no host was tried. Never an
/// MX or recipient domain, so the label set is bounded by the configuration.
/// The route's TLS policy as delivery events name it: `verified` (TLS required, chain and
/// host name checked), `required` (TLS required, certificate checks relaxed) or
/// `opportunistic` (STARTTLS when offered).
fn tls_policy(tls: &RouteTlsConfig) -> &'static str {
    match (
        tls.require_tls,
        tls.require_ca_signed && tls.validate_hostname,
    ) {
        (true, true) => "verified",
        (true, false) => "required",
        (false, _) => "opportunistic",
    }
}

fn metric_host(choice: &RouteChoice, result: &GroupResult) -> String {
    if matches!(choice, RouteChoice::DirectMx(_)) {
        return "mx".to_string();
    }
    match result
        .succeeded_host
        .as_ref()
        .or(result.failed_hosts.last())
    {
        Some(h) => format!("{}:{}", h.host, h.port),
        None => "none".to_string(),
    }
}

/// A [`MessageStore`] over a plain directory: `<id>.env` (JSON envelope) and `<id>.eml`
/// (content), each written atomically. For tests and tools; the relay's spool replaces it.
#[derive(Debug)]
pub struct DirectoryStore {
    dir: PathBuf,
    counter: AtomicU64,
}

impl DirectoryStore {
    /// A store in `dir` (created if missing).
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            counter: AtomicU64::new(0),
        })
    }

    fn new_id(&self) -> QueueId {
        QueueId::next_after(&self.counter)
    }
}

impl MessageStore for DirectoryStore {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".env")
                && !id.starts_with('.')
            {
                ids.push(id.to_string());
            }
        }
        ids.sort();
        Ok(ids)
    }

    fn read(&self, queue_id: &str) -> io::Result<StoredMessage> {
        if !valid_queue_id(queue_id) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad queue id"));
        }
        let env = fs::read(self.dir.join(format!("{queue_id}.env")))?;
        let envelope: Envelope = serde_json::from_slice(&env)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let path = self.dir.join(format!("{queue_id}.eml"));
        let len = fs::metadata(&path)?.len();
        Ok(StoredMessage {
            envelope,
            text: MessageText::file(path, 0, len),
        })
    }

    fn enqueue(
        &self,
        mail_from: &str,
        rcpt_to: &[String],
        data: &[u8],
        received_at: SystemTime,
    ) -> io::Result<String> {
        let envelope = Envelope::generated(
            self.new_id(),
            mail_from,
            rcpt_to,
            received_at,
            data.len() as u64,
        );
        let queue_id = envelope.queue_id.to_string();
        write_atomic(&self.dir, &format!("{queue_id}.eml"), data)?;
        let env = serde_json::to_vec(&envelope).map_err(io::Error::other)?;
        // The envelope is written last: a message without one is not listed.
        write_atomic(&self.dir, &format!("{queue_id}.env"), &env)?;
        Ok(queue_id)
    }

    fn remove(&self, queue_id: &str) -> io::Result<()> {
        if !valid_queue_id(queue_id) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad queue id"));
        }
        match fs::remove_file(self.dir.join(format!("{queue_id}.env"))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let _ = fs::remove_file(self.dir.join(format!("{queue_id}.eml")));
        fs::File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HostConfig;

    #[test]
    fn the_destination_table_holds_only_destinations_under_way() {
        let table = Destinations {
            active: Mutex::new(HashMap::new()),
            limit: 2,
            limits: Mutex::new(HashMap::new()),
            freed: Notify::new(),
        };
        for i in 0..1000 {
            let key = format!("mx:d{i}.example");
            assert!(table.try_take(&key));
            table.give_back(&key);
        }
        assert!(table.active().is_empty(), "no entry per domain left behind");
        assert!(table.try_take("route:a") && table.try_take("route:a"));
        assert!(!table.try_take("route:a"), "the third is refused");
        assert_eq!(table.full().into_iter().collect::<Vec<_>>(), ["route:a"]);
        table.give_back("route:a");
        assert!(table.try_take("route:a"));
    }

    #[test]
    fn metric_hosts_are_configured_hosts_or_mx() {
        let pool_host = HostConfig {
            host: "smarthost.example".into(),
            port: 587,
        };
        let result = GroupResult {
            outcomes: Vec::new(),
            host: Some("mx7.attacker.example:25".into()),
            failed_hosts: Vec::new(),
            succeeded_host: Some(pool_host.clone()),
        };
        assert_eq!(
            metric_host(&RouteChoice::DirectMx("attacker.example".into()), &result),
            "mx"
        );
        assert_eq!(
            metric_host(&RouteChoice::Configured(0), &result),
            "smarthost.example:587"
        );
        let failed = GroupResult {
            succeeded_host: None,
            failed_hosts: vec![pool_host],
            ..result
        };
        assert_eq!(
            metric_host(&RouteChoice::Configured(0), &failed),
            "smarthost.example:587"
        );
    }
}
