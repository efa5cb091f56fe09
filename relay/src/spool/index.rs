//! The spool's index: where each queued message is (a file in `queue/`, or a record in a
//! segment), shared by the spool, its writer threads and compaction.
//!
//! Not here: reading or writing either form (`files`, `segments`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::fsys::SpoolFs;
use super::segments::{Segment, Segments};
use crate::envelope::QueueId;

/// Where a queued message is.
#[derive(Debug, Clone)]
pub(super) enum Location {
    /// `queue/<id>`: streamed, too large, or written by an older relay.
    File,
    /// A record of `bytes` bytes at `offset` in a segment.
    Segment {
        segment: Arc<Segment>,
        offset: u64,
        bytes: u64,
    },
}

/// What the spool's writer and housekeeping threads share with it.
#[derive(Debug)]
pub(super) struct Shared {
    /// The file layer every write of the spool goes through.
    pub(super) fs: Arc<dyn SpoolFs>,
    pub(super) queue_dir: PathBuf,
    /// Flush a file batch's files and directory on threads of their own, at once (off
    /// only in tests that need the flushes in one order).
    pub(super) parallel_sync: bool,
    pub(super) index: Mutex<BTreeMap<QueueId, Location>>,
    pub(super) segments: Arc<Segments>,
}

impl Shared {
    pub(super) fn index(&self) -> std::sync::MutexGuard<'_, BTreeMap<QueueId, Location>> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn path_of(&self, id: QueueId) -> PathBuf {
        self.queue_dir.join(id.to_string())
    }
}

impl Shared {
    /// Names the segments directory in errors about a record of `id`.
    pub(super) fn segments_path(&self, id: QueueId) -> PathBuf {
        self.queue_dir
            .with_file_name("segments")
            .join(id.to_string())
    }
}
