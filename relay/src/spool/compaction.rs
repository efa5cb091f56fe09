//! Segment housekeeping: keeps ready segments at hand, deletes surplus free ones, and
//! compacts sealed segments that little live mail pins, by writing their live records
//! again through the writers ([`writer`](super::writer)) and releasing the old copies.
//!
//! Not here: deciding when a segment is worth compacting (`segments`).

use std::sync::{Arc, mpsc};
use std::time::Duration;

use super::index::{Location, Shared};
use super::job::Job;
use crate::envelope::QueueId;

/// Most records one compaction pass moves out of one segment.
pub(super) const COMPACT_BATCH: usize = 1024;

/// Keeps ready segments at hand, deletes surplus free ones, and compacts sealed segments
/// that little live mail pins (each pass moves at most [`COMPACT_BATCH`] records).
pub(super) fn housekeeping_loop(shared: &Shared, tx: &mpsc::Sender<Job>) {
    while shared.segments.wait(Duration::from_secs(2)) {
        if !housekeep_once(shared, tx) {
            return;
        }
    }
}

/// One pass of housekeeping; false once the writers have stopped. Blocks on the writers:
/// not for an async context.
pub(super) fn housekeep_once(shared: &Shared, tx: &mpsc::Sender<Job>) -> bool {
    {
        for segment in shared.segments.housekeep() {
            let members: Vec<(QueueId, u64, u64)> = shared
                .index()
                .iter()
                .filter_map(|(id, loc)| match loc {
                    Location::Segment {
                        segment: s,
                        offset,
                        bytes,
                    } if Arc::ptr_eq(s, &segment) => Some((*id, *offset, *bytes)),
                    _ => None,
                })
                .take(COMPACT_BATCH)
                .collect();
            for (id, offset, bytes) in members {
                let Some(record) = segment.raw_record(offset, id) else {
                    continue;
                };
                let (job, wait) = Job::relocate(id, record, &segment, offset, bytes);
                if tx.send(job).is_err() || wait.blocking_recv().is_err() {
                    return false;
                }
            }
        }
    }
    true
}
