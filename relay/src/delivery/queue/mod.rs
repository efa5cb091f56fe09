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
//! least once and never lost. A state that cannot be saved (a full disk) is kept in memory,
//! authoritative over the file until a later save succeeds (counted in
//! `smtprelay_delivery_state_save_failures_total`): this process never sends a message again
//! to a recipient it saw delivered; only a restart in that window can. 5xx bounces at once; 4xx and connect failures are retried on the
//! [`RetrySchedule`](crate::delivery::retry::RetrySchedule); a bounce queues an RFC 3464 DSN from the null sender back to the
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
//!
//! - [`manager`]: the manager, its handle and the scheduler;
//! - `turn`: one message's turn;
//! - `shared`: what the scheduler and turns share (schedule, destination slots);
//! - [`state`]: per-recipient state and its files;
//! - [`store`]: the [`MessageStore`] contract;
//! - `admin`: queue administration.

mod admin;
pub mod manager;
mod shared;
pub mod state;
pub mod store;
#[cfg(test)]
mod tests;
mod turn;

pub use super::text::MessageText;
pub use crate::envelope::{Envelope, QueueId};
pub use admin::{AdminError, QueuedMessage};
pub use manager::{QueueError, QueueHandle, QueueManager, QueueOptions};
pub use shared::RunReport;
pub use state::{DsnEntry, MessageState, RecipientState, forget_state, stored_state, write_atomic};
pub use store::{DirectoryStore, MessageStore, StoredMessage};
