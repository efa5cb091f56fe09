//! The unit of work the writer threads take: a message to make durable ([`Job`]) in one of
//! the forms it can take on disk ([`Content`]), and the channel its outcome goes back on.
//!
//! Not here: writing any of them (`writer`, `files`, `segments`).

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::error::SpoolError;
use super::segments::Segment;
use crate::envelope::QueueId;

pub(super) struct Job {
    pub(super) id: QueueId,
    pub(super) content: Content,
    pub(super) done: oneshot::Sender<Result<(), SpoolError>>,
}

/// What a writer makes durable for a [`Job`].
pub(super) enum Content {
    /// A record for a segment (from [`segments::encode`]).
    Record(Vec<u8>),
    /// A whole file in `queue/`: a message too large for a segment record.
    Bytes(Vec<u8>),
    /// Append `tail` to the streamed file at `incoming`, then move it into `queue/`.
    Spilled { incoming: PathBuf, tail: Vec<u8> },
    /// Compaction: the record of a message that lies at `from` in a sealed segment,
    /// written again; the old copy is released once the new one is durable.
    Relocate {
        record: Vec<u8>,
        from: Arc<Segment>,
        offset: u64,
        bytes: u64,
    },
}

impl Job {
    /// Compaction's job for `id`, whose `record` lies at `offset` in `from`, and the
    /// receiver of its outcome.
    pub(super) fn relocate(
        id: QueueId,
        record: Vec<u8>,
        from: &Arc<Segment>,
        offset: u64,
        bytes: u64,
    ) -> (Job, oneshot::Receiver<Result<(), SpoolError>>) {
        let (done, wait) = oneshot::channel();
        let content = Content::Relocate {
            record,
            from: from.clone(),
            offset,
            bytes,
        };
        (Job { id, content, done }, wait)
    }
}

impl Content {
    pub(super) fn is_file(&self) -> bool {
        matches!(self, Content::Bytes(_) | Content::Spilled { .. })
    }
}
