//! Relay limits of SPEC §3.6: per-user and per-customer counters over rolling windows.
//!
//! Counters live behind [`LimitStore`], an object-safe trait whose methods return boxed
//! futures, so a shared (Redis) store can be added without touching the session. The
//! in-memory store keeps one-minute buckets: an event at minute `m` counts in the 24-hour
//! window until minute `m + 1440` and in the 10-minute window until minute `m + 10`.
//! Time comes in as a value taken from an injected [`Clock`], so tests move it freely.
//!
//! Limits are exact under concurrency: a recipient that passes the check at RCPT is
//! **reserved** for its transaction ([`TxId`]), and every check compares
//! `counted + reserved + 1` with the limit. The reservations of a transaction are
//! committed when its message is spooled ([`LimitStore::record`]) and released when it
//! ends any other way ([`LimitStore::release`]: RSET, a new EHLO, a refused message, QUIT,
//! a timeout, a dropped connection). So sessions that interleave between RCPT and DATA can
//! never together pass a limit, not even by one recipient.
//!
//! The in-memory store forgets what left the 24-hour window: a user with neither counts
//! nor reservations is dropped (swept once a minute), so memory is bounded by the senders
//! active in the last 24 hours, not by every sender ever seen.
//!
//! This module does not know about SMTP sequencing; it owns the limit reply texts.
//!
//! - [`store`]: the trait, its queries and the reply texts;
//! - [`memory`]: the in-memory store (one replica);
//! - [`redis`]: the shared store (every replica of an organization).

pub mod memory;
pub mod redis;
pub mod store;

pub use crate::clock::{Clock, FakeClock, SystemClock};
pub use memory::MemoryLimitStore;
pub use store::{
    BoxFuture, LimitHit, LimitStore, LimitStoreError, RcptQuery, Release, TxId, Usage,
};
