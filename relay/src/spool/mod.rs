//! The durable spool: every accepted message is on disk, flushed, before `250` is sent.
//!
//! Layout under the spool directory: `segments/` holds the append-only segment files that
//! keep every message received in memory (all but the largest); `queue/<QUEUE-ID>` holds
//! one message that outgrew memory while it arrived (or was written by an older relay);
//! `incoming/` holds the text of such messages while they are still being received;
//! `quarantine/` receives files that are provably torn or unparsable on recovery.
//!
//! ## Why segments (the write path of a `250`)
//!
//! A `250` may be sent only once the message survives power loss. With one file per
//! message that costs a metadata commit per batch: the new file's blocks and size and its
//! directory entry go through the filesystem journal (`fdatasync` of the file, `fsync` of
//! the directory), two or more disk flushes, and the journal serializes every writer on
//! the volume. A segment (`segments`) is made once, written full of zeros and flushed,
//! so appending a record to it later allocates nothing and changes no size: one
//! `fdatasync` per batch flushes only data, and no directory changes at all. Records carry
//! a checksum and the segment's sequence number, so recovery tells a whole record from a
//! torn tail (never acknowledged) and from a record of the segment's previous use.
//! Segments whose messages were all delivered are reused (a new header, flushed); little
//! live mail pinning a segment is compacted into a new one. Removing a message writes one
//! byte in place, not flushed (a lost mark means one more delivery, never a lost one).
//! The measurements that chose this are in `docs/benchmarks.md` ("Performance round 2").
//!
//! A message that went to `incoming/` (more than [`SPILL_BYTES`] of text, or a record
//! larger than a segment takes) keeps a file of its own: `RELAYSPOOL2\n`, the message
//! bytes, the envelope as JSON, and a fixed-size trailer `\nEND <data length> <envelope
//! length>\n` (16 hex digits each) that proves the file complete. Such messages are large,
//! so the metadata commit per file is small next to writing them. Files of the first
//! layout (`RELAYSPOOL1 <env> <data>\n`, envelope first) are still read, so a spool
//! written by an older relay is delivered.
//!
//! Recovery ([`Spool::open`]) checks every length with checked arithmetic or against the
//! segment's size before it allocates; a file whose lengths or trailer do not add up is
//! torn and is quarantined (counted, logged); an I/O error is retried and, if it
//! persists, fails the open instead of quarantining mail that may be intact. Files left
//! in `incoming/` were never acknowledged and are removed.
//!
//! Group commit: sessions hand their message to a writer thread (one of `WRITERS`, which
//! take turns, each with its own active segment), which takes every message waiting at
//! that moment as a batch, appends the batch's records in one write, flushes them with
//! one `fdatasync`, puts them in the index, and only then completes every waiting session.
//! Only the spool's own files are flushed: a whole-filesystem `syncfs` would also wait for
//! every other writer's dirty data on a shared volume.
//!
//! One process per spool: [`Spool::open`] takes an exclusive lock (`flock`) on the file
//! `lock` in the spool directory, and writes the holder's pid and host name into it. A
//! second process (two pods on one volume, a relay started twice) gets
//! [`SpoolError::Locked`] naming the holder, before it reads or removes anything. The lock
//! goes with the process (the kernel releases it on exit, even on SIGKILL), or earlier
//! through [`Spool::unlock`] at the end of a graceful stop.
//!
//! The envelope type ([`Envelope`], [`QueueId`]) lives in `envelope`, shared with the
//! session driver and delivery.
//!
//! Not here: what happens to a message next (delivery takes it from the accepted-message
//! channel and [`Spool::list`]), limits or policy.

mod compaction;
mod error;
mod files;
mod index;
mod job;
mod lock;
mod rewrite;
mod segments;
mod store;
#[cfg(test)]
mod tests;
mod writer;

pub use crate::envelope::{BadQueueId, Envelope, QueueId};
pub use error::SpoolError;
pub use rewrite::IncomingReader;
pub use store::{Incoming, SPILL_BYTES, Spool};
