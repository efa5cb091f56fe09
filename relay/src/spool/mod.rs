//! The durable spool: every accepted message is on disk, flushed, before `250` is sent.
//!
//! Layout under the spool directory: `segments/` holds the append-only segment files that
//! keep every message received in memory (all but the largest) and `segments/next-seq`,
//! the durable ceiling of segment sequence numbers; `queue/<QUEUE-ID>` holds one message
//! that outgrew memory while it arrived (or was written by an older relay); `incoming/`
//! holds the text of such messages while they are still being received; `quarantine/`
//! receives what recovery cannot vouch for: whole files that are torn, damaged or
//! unparsable, and copies of damaged stretches of segments
//! (`<segment file>@<offset>.damaged`).
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
//! a checksum and the segment's sequence number (`scan`), so recovery tells a whole
//! record from a torn tail (never acknowledged), from damage (valid records follow it)
//! and from a record of the segment's previous use; sequence numbers are never handed out
//! twice, not even after a header torn by a crash (`sequence`). Segments whose messages
//! were all delivered are reused (a new header, flushed); little live mail pinning a
//! segment is compacted into a new one. A new segment file is made only while the disk
//! keeps a reserve free after it; below that, messages go to files of their own, which
//! take only the room they need (no spurious `452` on a nearly full disk). The
//! measurements that chose this are in `docs/src/benchmarks.md` ("Performance round 2").
//!
//! A message that went to `incoming/` (more than [`SPILL_BYTES`] of text, or a record
//! larger than a segment takes) keeps a file of its own (`files`): `RELAYSPOOL3\n`, the
//! message bytes, the envelope as JSON, and a fixed-size trailer with both lengths and a
//! CRC-32 of the text and envelope, which proves the file complete and intact; it is
//! checked at recovery and at every read. Such messages are large, so the metadata commit
//! per file is small next to writing them. Files of the older layouts (`RELAYSPOOL2`,
//! without the CRC, and `RELAYSPOOL1`) are still read.
//!
//! ## Recovery
//!
//! [`Spool::open`] checks every length with checked arithmetic or against the file's
//! size before it allocates. A segment is scanned past damage: a record that fails its
//! checks but is followed by valid records is copied to `quarantine/`, counted
//! ([`Spool::damaged_at_open`], `smtprelay_spool_damaged_records`) and logged naming the
//! segment and offset, and the records after it are kept; only a torn tail ends a
//! segment's records ([`Spool::torn_at_open`], `smtprelay_spool_torn_tails`). A segment is
//! never deleted or reused unscanned (an unreadable header, an unexpected size), nor
//! reused while it holds a live record. A queue file whose lengths, trailer or checksum
//! do not add up is moved to quarantine ([`Spool::quarantined_at_open`]); an I/O error is
//! retried and, if it persists, fails the open instead of quarantining mail that may be
//! intact. Files left in `incoming/` were never acknowledged and are removed.
//!
//! ## Removal, and what may come back after a power loss
//!
//! Removing a message (delivered, bounced, deleted) is deliberately not flushed: it marks
//! the record done in place (four bytes `DONE`, so no single flipped bit turns a live
//! record into a done one) or unlinks the file, without `fdatasync` or a directory
//! `fsync`. A flush per delivered message would cost as much as the write path saves;
//! instead a lost mark means one more delivery (at least once), never a lost message.
//! Precisely, after a power loss a message that was removed is queued again when, and
//! only when, one of these writes had not reached the disk: its record's done mark (not
//! yet covered by a later flush of that segment: the next batch appended to it, or its
//! recycling), the done mark of an older copy of it that compaction moved, or the unlink
//! of its file (not yet covered by a flush of `queue/`). A message whose `250` was never
//! sent may also come back (its record or file reached the disk before the crash cut its
//! acknowledgment): the client retries it, so it may be delivered twice. An acknowledged
//! message never goes missing. The power-loss simulator (`sim`, `powerloss`) checks these
//! exact rules over thousands of crash points; `docs/src/durability.md` has its numbers.
//!
//! ## Writing
//!
//! Group commit (`writer`): sessions hand their message to a writer thread (one of
//! `WRITERS`, which take turns, each with its own active segment), which takes every
//! message waiting at that moment as a batch, appends the batch's records in one write,
//! flushes them with one `fdatasync`, puts them in the index, and only then completes
//! every waiting session. Only the spool's own files are flushed: a whole-filesystem
//! `syncfs` would also wait for every other writer's dirty data on a shared volume.
//!
//! Every write, flush, name and removal goes through the file layer (`fsys`): `std::fs` in
//! production (the same system calls as without it, no allocation per write or flush), a
//! simulated disk that loses what was not flushed in the power-loss tests.
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
//! Modules: `store` (the [`Spool`] API, open), `writer` (group commit), `segments` (segment
//! files, their recovery, reuse, the free-space reserve), `scan` (the record format and
//! the scan past damage), `sequence` (sequence numbers), `files` (files of their own),
//! `index` (where each message is), `job` (what the writers take), `compaction`
//! (housekeeping), `rewrite` (what content filters read and rewrite of a message being
//! received), `fsys` (the file layer), `lock` (one process per spool), `error`.
//!
//! Not here: what happens to a message next (delivery takes it from the accepted-message
//! channel and [`Spool::list`]), limits or policy.

mod compaction;
mod error;
mod files;
pub(crate) mod fsys;
#[doc(hidden)]
pub mod fuzzing;
mod index;
mod job;
mod lock;
#[cfg(test)]
mod powerloss;
mod rewrite;
mod scan;
mod segments;
mod sequence;
#[cfg(test)]
mod sim;
mod store;
#[cfg(test)]
mod tests;
mod writer;

pub use crate::envelope::{BadQueueId, Envelope, QueueId};
pub use error::SpoolError;
pub use rewrite::IncomingReader;
#[cfg(test)]
pub(crate) use store::SpoolOptions;
pub use store::{Incoming, SPILL_BYTES, Spool};
