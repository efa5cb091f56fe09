//! The limit store's contract: the [`LimitStore`] trait, the questions it answers
//! ([`RcptQuery`], [`Usage`], [`Release`]), the transaction that owns reservations
//! ([`TxId`]) and the limits' exact reply texts ([`LimitHit::reply`]).
//!
//! Not here: how counters are kept (`memory`, `redis`).

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use crate::config::LimitsConfig;
use crate::smtp::Reply;

/// A boxed future, for object-safe async traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which limit a recipient would exceed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitHit {
    UserMessagesPerDay,
    UserRecipientsPerDay,
    CustomerRecipientsPerDay,
    CustomerRecipientsPer10Minutes,
}

impl LimitHit {
    /// The exact reply of SPEC §3.6.
    pub fn reply(self) -> Reply {
        match self {
            LimitHit::UserMessagesPerDay | LimitHit::UserRecipientsPerDay => {
                Reply::new(550, "5.4.5 Daily SMTP relay limit exceeded for user.")
            }
            LimitHit::CustomerRecipientsPerDay => {
                Reply::new(550, "5.7.1 Daily SMTP relay limit exceeded for customer.")
            }
            LimitHit::CustomerRecipientsPer10Minutes => {
                Reply::new(450, "4.2.1 Peak SMTP relay limit exceeded for customer.")
            }
        }
    }

    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            LimitHit::UserMessagesPerDay => "user_messages_per_day",
            LimitHit::UserRecipientsPerDay => "user_recipients_per_day",
            LimitHit::CustomerRecipientsPerDay => "customer_recipients_per_day",
            LimitHit::CustomerRecipientsPer10Minutes => "customer_recipients_per_10_minutes",
        }
    }
}

/// One SMTP transaction (MAIL to end of DATA or RSET), the owner of its reservations.
/// Unique across processes with overwhelming probability: a random base per process plus
/// a counter, so replicas sharing a Redis store never mix their transactions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxId(pub u64);

impl TxId {
    /// A new transaction id.
    pub fn next() -> Self {
        static BASE: OnceLock<u64> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let base = *BASE.get_or_init(|| rand::random::<u64>() & !0xFFFF_FFFF);
        TxId(base.wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed)))
    }
}

impl std::fmt::Display for TxId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// "May `user` add recipient `rcpt` to transaction `tx`, which already has `pending`
/// recipients?" A yes reserves the recipient for `tx`.
#[derive(Clone, Copy, Debug)]
pub struct RcptQuery<'a> {
    pub now: SystemTime,
    pub limits: &'a LimitsConfig,
    pub tx: TxId,
    /// Lower-case AUTH identity, else the envelope sender as given.
    pub user: &'a str,
    /// The recipient address (domain lower-case).
    pub rcpt: &'a str,
    /// Recipients already reserved in this transaction.
    pub pending: &'a [String],
}

/// A message of transaction `tx` was spooled: commit its reservations as counts.
#[derive(Clone, Copy, Debug)]
pub struct Usage<'a> {
    pub now: SystemTime,
    pub tx: TxId,
    pub user: &'a str,
    pub rcpts: &'a [String],
}

/// Transaction `tx` ended without a message: give its reservations back.
#[derive(Clone, Copy, Debug)]
pub struct Release<'a> {
    pub now: SystemTime,
    pub tx: TxId,
    pub user: &'a str,
    pub rcpts: &'a [String],
}

/// The limit store cannot answer (e.g. Redis unreachable): the session replies 451.
#[derive(Debug, thiserror::Error)]
#[error("limit store unavailable: {0}")]
pub struct LimitStoreError(pub String);

/// Where counters live. Implementations must be safe to share between sessions.
pub trait LimitStore: Send + Sync {
    /// `Ok(None)` when the recipient is within every limit; it is then reserved for the
    /// query's transaction until [`LimitStore::record`] or [`LimitStore::release`].
    fn check<'a>(
        &'a self,
        query: RcptQuery<'a>,
    ) -> BoxFuture<'a, Result<Option<LimitHit>, LimitStoreError>>;

    /// Counts an accepted message, turning its transaction's reservations into counts.
    fn record<'a>(&'a self, usage: Usage<'a>) -> BoxFuture<'a, Result<(), LimitStoreError>>;

    /// Gives back the reservations of a transaction that ended without a message.
    fn release<'a>(&'a self, release: Release<'a>) -> BoxFuture<'a, Result<(), LimitStoreError>>;
}
