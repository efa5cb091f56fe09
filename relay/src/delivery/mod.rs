//! Delivery: takes spooled messages and hands them to downstream SMTP servers (SPEC §3.5).
//!
//! It owns route choice ([`route`]), weighted host pools with health ([`pool`]), MX lookup
//! ([`mx`]), the network and loop guards ([`guard`]), the per-route TLS policy and its
//! certificate verifiers ([`tls`]), the outbound SMTP client with its stage timeouts, its
//! outbound AUTH and its connection cache ([`client`]), OAuth 2.0 access tokens for XOAUTH2
//! routes by client credentials, refresh token or service account ([`oauth`]), one
//! delivery attempt over a route ([`attempt`]), the
//! route TLS probe ([`probe`]), the retry schedule ([`retry`]), RFC 3464 bounces ([`dsn`])
//! and the queue manager that schedules attempts per destination and ties them together
//! ([`queue`]), and DKIM signing of what leaves ([`dkim`]). Layers read top-down: queue →
//! dkim, attempt and probe → client, oauth, mx, tls, guard.
//!
//! It does not own the spool: the queue manager reads and writes messages through the
//! [`queue::MessageStore`] trait, which the spool implements; a message's text is a
//! [`text::MessageText`], streamed from the store while it is sent. With the `testing`
//! feature, `testing` holds an in-process SMTP sink and a test certificate authority for
//! tests of this crate and others (`relayctl sink` enables it too).
//!
//! Wiring, in a relay process:
//!
//! ```text
//! let manager = QueueManager::new(Arc::new(spool), cfg.routes.clone(), &cfg.delivery,
//!     QueueOptions { hostname: cfg.hostname.clone(), state_dir: spool_dir.join("delivery") },
//!     Arc::new(SystemClock), &mut registry)?;
//! let handle = manager.handle();          // give to the SMTP sessions:
//! handle.submit(&queue_id);               //   after the message is fsync'd, before 250
//! manager.set_routes(new_cfg.routes);     // on config reload
//! manager.run(shutdown_signal).await;     // delivers until shutdown
//! ```

pub mod attempt;
pub mod client;
pub mod dkim;
pub mod dsn;
pub mod guard;
pub mod journal;
pub mod metrics;
pub mod mx;
pub mod oauth;
pub mod pool;
pub mod probe;
pub mod queue;
pub mod rate;
pub mod retry;
pub mod route;
#[cfg(feature = "testing")]
pub mod testing;
pub mod text;
pub mod tls;

pub use crate::clock::{Clock, FakeClock, SystemClock};
