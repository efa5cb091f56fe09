//! Ingress, the first stage: everything between a client's TCP connection and a message
//! handed to the spool, as Postfix's `smtpd` is.
//!
//! - [`server`]: listeners, connection caps, timeouts, TLS, and the driver that feeds a
//!   session and carries out its actions;
//! - [`session`]: the SMTP session as a pure state machine;
//! - [`generation`]: one configuration in force, compiled for sessions (policy,
//!   credentials, TLS certificate), swapped in between transactions;
//! - [`proxy`]: the PROXY protocol header (v1 and v2) a load balancer puts first;
//! - [`auth`]: SASL decoding and password verification (argon2id, on a bounded pool that
//!   leaves a core free), and the fingerprints that let a session notice revocation;
//! - [`auth_throttle`]: delays and lockouts after AUTH failures, per source, per (user,
//!   source) and per user, sparing the sources a user recently logged in from;
//! - [`source`]: the unit a client is counted by (IPv4 address, IPv6 /64), for
//!   connection caps and the AUTH throttle;
//! - [`received`]: the `Received:` trace header;
//! - [`filtering`]: the organization's content filters, consulted before the `250`.
//!
//! Not here: who may relay (`policy`), how much (`limits`), how a message is stored
//! (`spool`).

pub mod auth;
pub mod auth_throttle;
pub mod filtering;
pub mod generation;
pub mod proxy;
pub mod received;
pub mod server;
pub mod session;
pub mod source;

pub use source::client_source;
