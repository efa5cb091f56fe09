//! Spool failures ([`SpoolError`]) and the one SMTP reply each maps to.
//!
//! Not here: where they come from.

use std::io;
use std::path::{Path, PathBuf};

use crate::envelope::{BadQueueId, QueueId};
use crate::smtp::Reply;

/// Spool failures; each maps to one SMTP reply through [`SpoolError::reply`].
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool disk is full")]
    Full,
    #[error("spool I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("spool file {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(transparent)]
    BadId(#[from] BadQueueId),
    #[error("no message {0} in the spool")]
    NotFound(QueueId),
    #[error("the spool writer has stopped")]
    WriterStopped,
    #[error("{0} already exists; another process may be writing this spool")]
    Exists(PathBuf),
    #[error(
        "the spool {dir} is in use by another relay process ({holder}); a spool belongs to one process: stop that one, or give this one its own spool directory"
    )]
    Locked { dir: PathBuf, holder: String },
}

impl SpoolError {
    pub(super) fn io(path: &Path, source: io::Error) -> Self {
        if source.kind() == io::ErrorKind::StorageFull {
            return SpoolError::Full;
        }
        SpoolError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// The reply a client gets when its message could not be spooled.
    pub fn reply(&self) -> Reply {
        match self {
            SpoolError::Full => Reply::new(452, "4.3.1 Insufficient system storage"),
            _ => Reply::new(451, "4.3.0 Local error in processing: message not queued"),
        }
    }
}

/// The same error again, for every job of a batch that failed as one.
pub(super) fn again(e: &SpoolError) -> SpoolError {
    match e {
        SpoolError::Full => SpoolError::Full,
        SpoolError::Io { path, source } => SpoolError::Io {
            path: path.clone(),
            source: io::Error::new(source.kind(), source.to_string()),
        },
        other => SpoolError::Io {
            path: PathBuf::new(),
            source: io::Error::other(other.to_string()),
        },
    }
}
