//! The SMTP relay, in three stages a message meets in order, as Postfix's `smtpd`, `qmgr`
//! and `smtp` are:
//!
//! 1. [`ingress`] receives it: listeners, the SMTP session, PROXY protocol, AUTH, the
//!    `Received:` trace. It asks [`policy`] who may relay and [`limits`] how much.
//! 2. [`spool`] makes it durable before the `250`.
//! 3. [`delivery`] schedules, routes, signs and delivers it, and bounces what fails.
//!
//! [`admin`] is the side door: the HTTP endpoint for metrics, health and queue
//! administration, and the drain that empties a spool into another relay. What the stages
//! share (the [`config::RelayConfig`] document, the
//! [`envelope`], pure [`smtp`] parsing, [`idn`], [`clock`], [`metrics`], [`logging`],
//! dual-stack listeners in [`net`]) sits
//! beside them. The relay's only input is a `RelayConfig` document; it never talks to
//! Kubernetes.
//!
//! [`start`] binds the listeners and returns a [`RelayHandle`] to reload, observe and stop
//! the relay; the `relay` binary and `relayctl run` both go through it. A graceful stop
//! ([`RelayHandle::stop`]) fails readiness first, keeps the listeners open for a drain
//! delay, then closes them and waits for open sessions and deliveries under way.

// The stages, in the order a message meets them.
// 1. Receive: listeners, sessions, AUTH; who may relay and how much.
pub mod ingress;

pub mod policy;

pub mod limits;

// Content filters (milter) consulted before the `250`.
pub mod filter;

// 2. Make durable before the `250`.
pub mod spool;

// 3. Deliver, sign, bounce.
pub mod delivery;

// Beside the stages: metrics, health, queue administration, drain.
pub mod admin;

// What the stages share.
pub mod clock;
pub mod config;
pub mod envelope;
pub mod idn;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod smtp;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use std::sync::Mutex;
use tokio::net::TcpListener;

use tokio::sync::{broadcast, mpsc, watch};

pub use clock::{Clock, FakeClock, SystemClock};
pub use config::RelayConfig;
pub use ingress::generation::GenerationError;
pub use limits::redis::RedisLimitStore;
pub use limits::{LimitStore, MemoryLimitStore};
pub use spool::{Envelope, QueueId, Spool, SpoolError};

use admin::AdminState;
use config::LimitStoreConfig;
use delivery::queue::{QueueError, QueueManager, QueueOptions};
use ingress::generation::{self, Generation};
use ingress::server::{ListenerKind, Shared};
use metrics::Metrics;

/// How many accepted-message notices may wait for a slow subscriber before it lags.
const ACCEPTED_CHANNEL: usize = 65_536;

/// Things a caller may inject; `Default` gives the production choices.
#[derive(Clone)]
pub struct StartOptions {
    /// Time source for limits and `Received:` dates.
    pub clock: Arc<dyn Clock>,
    /// Limit counters; `None` builds the store named by `config.limit_store`.
    pub limit_store: Option<Arc<dyn LimitStore>>,
    /// AUTH throttling (delays and lockouts after failures).
    pub auth_throttle: ingress::auth_throttle::ThrottleConfig,
    /// Header timeout and connection cap of the admin endpoint.
    pub admin: admin::AdminLimits,
}

impl Default for StartOptions {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            limit_store: None,
            auth_throttle: ingress::auth_throttle::ThrottleConfig::default(),
            admin: admin::AdminLimits::default(),
        }
    }
}

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(#[from] GenerationError),
    #[error("cannot open the spool: {0}")]
    Spool(#[from] SpoolError),
    #[error("cannot start delivery: {0}")]
    Delivery(#[from] QueueError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot set up the Redis limit store: {0}")]
    Redis(#[from] limits::redis::RedisUrlError),
}

/// A reload that happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reload {
    /// The generation now in force.
    pub generation: u64,
    /// The document was the same: only a file it names changed (say "credentials
    /// changed", never what).
    pub only_files: bool,
}

/// Why a new config was not put in force (the old one stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("invalid configuration: {0}")]
    Config(#[from] GenerationError),
}

/// A running relay.
pub struct RelayHandle {
    shared: Arc<Shared>,
    admin: Arc<AdminState>,
    smtp: SocketAddr,
    submission: SocketAddr,
    smtps: SocketAddr,
    admin_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: mpsc::Sender<()>,
    tasks_done: mpsc::Receiver<()>,
    reload_lock: Mutex<()>,
    /// Content hash of the last config a reload refused.
    refused: Mutex<Option<String>>,
    queue: Arc<QueueManager<Spool>>,
    delivery: tokio::task::JoinHandle<()>,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    // `[::]` is dual-stack, or `0.0.0.0` where there is no IPv6 (SPEC §3.9).
    net::listen(addr).map_err(|source| StartError::Bind { what, addr, source })
}

fn local(l: &TcpListener, what: &'static str) -> Result<SocketAddr, StartError> {
    l.local_addr().map_err(|source| StartError::Bind {
        what,
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })
}

/// Starts the relay: opens the spool (recovering queued mail), binds the SMTP, submission,
/// SMTPS and admin listeners (port 0 picks a free port; see the `*_addr` methods) and
/// serves until [`RelayHandle::shutdown`].
pub async fn start(config: RelayConfig, opts: StartOptions) -> Result<RelayHandle, StartError> {
    let mut metrics = Metrics::new();
    // With Redis, the replicas share each route's send rate too.
    let mut shared_turns: Option<Arc<dyn delivery::rate::SharedTurns>> = None;
    let limits: Arc<dyn LimitStore> = match (&opts.limit_store, &config.limit_store) {
        (Some(store), _) => store.clone(),
        (None, LimitStoreConfig::Memory) => Arc::new(MemoryLimitStore::new()),
        (None, LimitStoreConfig::Redis { url, password_file }) => {
            let password = match password_file {
                Some(file) => Some(limits::redis::read_password(file)?),
                None => None,
            };
            let store = RedisLimitStore::with_password(
                url,
                password.as_deref(),
                &config.organization.name,
            )?;
            metrics.registry_mut().register(
                "limit_store_errors",
                "Limit checks (answered 451) and counts that failed because Redis did not answer",
                store.errors(),
            );
            let store = Arc::new(store);
            shared_turns = Some(store.clone());
            store
        }
    };
    let spool = Arc::new(Spool::open(&config.spool_dir)?);
    let listeners = config.listeners.clone();
    let admin_listen = config.admin_listen;
    let queue = Arc::new(QueueManager::new(
        spool.clone(),
        config.routes.clone(),
        &config.delivery,
        QueueOptions {
            hostname: config.hostname.clone(),
            state_dir: delivery::queue::state::state_dir(Path::new(&config.spool_dir)),
        },
        opts.clock.clone(),
        metrics.registry_mut(),
    )?);
    queue.set_dkim(config.dkim.clone());
    queue.set_archive(config.archive.clone());
    if let Some(shared) = shared_turns {
        queue.set_shared_turns(shared);
    }
    let generation = Generation::build(1, config)?;
    let metrics = Arc::new(metrics);
    metrics
        .spool_quarantined
        .set(spool.quarantined_at_open() as i64);
    metrics.spool_torn_tails.set(spool.torn_at_open() as i64);
    metrics
        .spool_damaged_records
        .set(spool.damaged_at_open() as i64);
    metrics.set_config(generation.id, &generation.hash, &generation.content_hash);
    let (accepted, accepted_rx) = broadcast::channel(ACCEPTED_CHANNEL);
    let shared = Arc::new(Shared::new(
        generation,
        spool.clone(),
        limits,
        opts.clock,
        metrics.clone(),
        accepted,
        ingress::auth_throttle::AuthThrottle::new(opts.auth_throttle.clone()),
    ));

    let smtp = bind("smtp", listeners.smtp).await?;
    let submission = bind("submission", listeners.submission).await?;
    let smtps = bind("smtps", listeners.smtps).await?;
    let admin_listener = bind("admin", admin_listen).await?;
    let addrs = (
        local(&smtp, "smtp")?,
        local(&submission, "submission")?,
        local(&smtps, "smtps")?,
        local(&admin_listener, "admin")?,
    );

    let (shutdown, shutdown_rx) = watch::channel(false);
    let (tasks, tasks_done) = mpsc::channel(1);
    for (listener, kind) in [
        (smtp, ListenerKind::Smtp),
        (submission, ListenerKind::Submission),
        (smtps, ListenerKind::Smtps),
    ] {
        tokio::spawn(ingress::server::accept_loop(
            listener,
            kind,
            shared.clone(),
            shutdown_rx.clone(),
            tasks.clone(),
        ));
    }
    let admin = Arc::new(AdminState {
        metrics,
        spool: spool.clone(),
        ready: AtomicBool::new(true),
        queue: Arc::new(admin::queue::QueueAdmin {
            queue: queue.clone(),
            shared: shared.clone(),
        }),
    });
    tokio::spawn(admin::serve(
        admin_listener,
        admin.clone(),
        shutdown_rx.clone(),
        opts.admin.clone(),
    ));
    tokio::spawn(feed_delivery(accepted_rx, queue.clone(), spool.clone()));
    {
        let shared = shared.clone();
        tokio::spawn(filter::probe::probe_loop(
            move || shared.current.load().config.content_filters.clone(),
            admin.metrics.filters.clone(),
            shutdown_rx.clone(),
        ));
    }
    let delivery = {
        let queue = queue.clone();
        let mut stop = shutdown_rx;
        tokio::spawn(async move {
            queue
                .run(async move {
                    let _ = stop.wait_for(|stop| *stop).await;
                })
                .await;
        })
    };
    let current = shared.current.load();
    tracing::info!(
        smtp = %addrs.0, submission = %addrs.1, smtps = %addrs.2, admin = %addrs.3,
        generation = current.id, hash = %current.hash, queued = shared.spool.depth(),
        "relay started"
    );
    drop(current);
    Ok(RelayHandle {
        shared,
        admin,
        smtp: addrs.0,
        submission: addrs.1,
        smtps: addrs.2,
        admin_addr: addrs.3,
        shutdown,
        tasks,
        tasks_done,
        reload_lock: Mutex::new(()),
        refused: Mutex::new(None),
        queue,
        delivery,
    })
}

/// Hands every message the spool has made durable to the queue manager. A lagging
/// subscription falls back to the spool's own list, so nothing accepted is left behind.
async fn feed_delivery(
    mut accepted: broadcast::Receiver<Envelope>,
    queue: Arc<QueueManager<Spool>>,
    spool: Arc<Spool>,
) {
    loop {
        match accepted.recv().await {
            Ok(envelope) if envelope.quarantine.is_some() => {
                queue.submit_held(&envelope.queue_id.to_string(), envelope.archive.is_some())
            }
            Ok(envelope) => queue.submit(&envelope.queue_id.to_string()),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "delivery fell behind the accept notices; rescanning the spool"
                );
                for id in spool.list() {
                    queue.resubmit(&id.to_string());
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

impl RelayHandle {
    /// Address of the plain SMTP listener (STARTTLS offered).
    pub fn smtp_addr(&self) -> SocketAddr {
        self.smtp
    }

    /// Address of the submission listener (STARTTLS offered).
    pub fn submission_addr(&self) -> SocketAddr {
        self.submission
    }

    /// Address of the implicit-TLS listener.
    pub fn smtps_addr(&self) -> SocketAddr {
        self.smtps
    }

    /// Address of the HTTP admin endpoint.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Puts a new config in force and returns its generation. Re-reads the TLS and
    /// credential files. Open sessions take it up between transactions (their next MAIL
    /// is judged by it). Listener, admin and spool addresses are fixed at start; changes
    /// to them are logged and take effect on restart.
    pub fn reload(&self, config: RelayConfig) -> Result<u64, ReloadError> {
        // Serialize reloads so generations stay strictly increasing.
        let _lock = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.shared.current.load_full();
        if config.listeners != old.config.listeners
            || config.admin_listen != old.config.admin_listen
            || config.spool_dir != old.config.spool_dir
        {
            tracing::warn!(
                "listener, admin or spool addresses changed; they take effect on restart"
            );
        }
        if config.delivery != old.config.delivery {
            tracing::warn!(
                "delivery settings changed; they take effect on restart (routes apply now)"
            );
        }
        let routes = config.routes.clone();
        let dkim = config.dkim.clone();
        let archive = config.archive.clone();
        let next = Generation::build(old.id + 1, config)?;
        self.queue.set_routes(routes);
        self.queue.set_dkim(dkim);
        self.queue.set_archive(archive);
        let id = next.id;
        self.shared
            .metrics
            .set_config(id, &next.hash, &next.content_hash);
        tracing::info!(generation = id, hash = %next.hash, "configuration reloaded");
        self.shared.current.store(Arc::new(next));
        Ok(id)
    }

    /// Reloads when `config`, or the content of a file it names (credentials, TLS
    /// certificate and key, CA roots), differs from what is in force; `Ok(None)` when
    /// nothing changed. Callers poll with it, so a rotated or revoked Secret is in force
    /// within one poll without any edit to the document.
    pub fn reload_if_changed(&self, config: RelayConfig) -> Result<Option<Reload>, ReloadError> {
        let current = self.shared.current.load_full();
        let content = generation::content_hash(&config);
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        // Unchanged, or the same content already refused (reported once, not every poll).
        if content == current.content_hash || refused.as_deref() == Some(content.as_str()) {
            return Ok(None);
        }
        *refused = Some(content);
        drop(refused);
        let document = if config.hash.is_empty() {
            config.compute_hash()
        } else {
            config.hash.clone()
        };
        let only_files = document == current.hash;
        let generation = match self.reload(config) {
            Ok(g) => g,
            Err(e) => {
                self.report_refused(&document, &e.to_string());
                return Err(e);
            }
        };
        *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if only_files {
            tracing::info!(
                generation,
                "a file the configuration names changed (credentials, certificate or CA roots)"
            );
        }
        Ok(Some(Reload {
            generation,
            only_files,
        }))
    }

    /// Publishes on `/metrics` that the config document `hash` was refused and why
    /// (empty `hash`: the document could not be read); cleared by the next config put
    /// in force. [`RelayHandle::reload_if_changed`] does this itself.
    pub fn report_refused(&self, hash: &str, reason: &str) {
        self.shared.metrics.set_config_refused(hash, reason);
    }

    /// Hash of the config document and the content of every file it names.
    pub fn content_hash(&self) -> String {
        self.shared.current.load().content_hash.clone()
    }

    /// The generation in force for new sessions.
    pub fn generation(&self) -> u64 {
        self.shared.current.load().id
    }

    /// Hash of the config in force.
    pub fn config_hash(&self) -> String {
        self.shared.current.load().hash.clone()
    }

    /// The spool (delivery reads and removes messages through it).
    pub fn spool(&self) -> Arc<Spool> {
        self.shared.spool.clone()
    }

    /// A new subscription to accepted messages: every message is announced once it is
    /// durable in the spool. This is a broadcast channel: a subscriber that falls more
    /// than 65,536 messages behind gets `RecvError::Lagged` and must rescan
    /// [`Spool::list`]; messages spooled before subscribing are only found that way too.
    pub fn accepted_messages(&self) -> broadcast::Receiver<Envelope> {
        self.shared.accepted.subscribe()
    }

    /// The delivery queue manager (tests inspect and drive it).
    pub fn queue(&self) -> Arc<QueueManager<Spool>> {
        self.queue.clone()
    }

    /// A graceful stop, as on SIGTERM in a pod: `/readyz` fails at once, the listeners
    /// stay open and keep serving for `drain_delay` (so load balancers and the Service's
    /// endpoints stop sending new connections before any is refused), then
    /// [`RelayHandle::shutdown`].
    pub async fn stop(self, drain_delay: Duration) {
        self.admin.ready.store(false, Ordering::Relaxed);
        if !drain_delay.is_zero() {
            tracing::info!(
                seconds = drain_delay.as_secs_f64(),
                "not ready; the listeners stay open while endpoints are updated"
            );
            tokio::time::sleep(drain_delay).await;
        }
        self.shutdown().await;
    }

    /// Stops accepting, tells idle sessions `421`, lets messages in DATA finish, and
    /// returns when every session has ended (or after the session timeout) and the
    /// delivery attempts under way have finished (bounded by the connect timeout), so no
    /// delivery of this relay races a relay started next on the same spool.
    pub async fn shutdown(self) {
        let RelayHandle {
            shared,
            admin,
            shutdown,
            tasks,
            mut tasks_done,
            mut delivery,
            ..
        } = self;
        admin.ready.store(false, Ordering::Relaxed);
        let _ = shutdown.send(true);
        drop(tasks);
        let limit =
            Duration::from_secs(shared.current.load().config.limits.session_timeout_seconds);
        if tokio::time::timeout(limit, tasks_done.recv())
            .await
            .is_err()
        {
            tracing::warn!("sessions still open at the end of the shutdown grace period");
        }
        let config = &shared.current.load().config;
        // An attempt waits at most the connect timeout per step; a few steps, then give up.
        let delivery_limit = Duration::from_secs(config.delivery.connect_timeout_seconds)
            .saturating_mul(4)
            .max(Duration::from_secs(1));
        if tokio::time::timeout(delivery_limit, &mut delivery)
            .await
            .is_err()
        {
            // Cancelled, not left running against a spool another relay may take next:
            // what they had not recorded is attempted again (at least once).
            delivery.abort();
            let _ = delivery.await;
            tracing::warn!(
                "deliveries still under way at the end of the shutdown grace period were cancelled"
            );
        }
        // Nothing of this relay writes any more: a relay started next may take the spool.
        shared.spool.unlock();
        tracing::info!("relay stopped");
    }
}
