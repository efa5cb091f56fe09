//! Queue administration on the manager: list and show messages, hold, release, flush,
//! delete, and adopt a message drained from another spool. Every operation works on the
//! same entries the scheduler uses.
//!
//! Not here: the HTTP surface (`crate::admin::queue`).

use std::fs;
use std::io;
use std::time::SystemTime;

use super::manager::QueueManager;
use super::shared::QueueEntry;
use super::state::{
    MessageState, forget_state, hold_name, save_state, unix, valid_queue_id, write_atomic,
};
use super::store::{MessageStore, StoredMessage};

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

    /// Takes over a message another relay's spool held (a drain, see [`crate::admin::drain`]):
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
        self.inner.unsaved().remove(queue_id);
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
