//! What the queue manager needs from the spool ([`MessageStore`]), the message it reads
//! back ([`StoredMessage`]: envelope and where the text is), and [`DirectoryStore`], a
//! plain directory implementation for tests and tools.
//!
//! Not here: the spool itself (`crate::spool` implements the trait).

use std::fs;
use std::io::{self};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

use crate::delivery::text::MessageText;

use crate::envelope::{Envelope, QueueId};

use super::state::{valid_queue_id, write_atomic};

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

/// A [`MessageStore`] over a plain directory: `<id>.env` (JSON envelope) and `<id>.eml`
/// (content), each written atomically. For tests and tools; the relay's spool replaces it.
#[derive(Debug)]
pub struct DirectoryStore {
    pub(super) dir: PathBuf,
    pub(super) counter: AtomicU64,
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

    pub(super) fn new_id(&self) -> QueueId {
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
