//! Group commit: the writer threads. Each takes every job waiting at that moment as a
//! batch, appends the batch's records to its active segment in one write (or writes whole
//! files), flushes once, puts them in the index, and only then answers every waiting
//! session. Compaction's relocations go through the same path.
//!
//! Not here: the on-disk forms (`segments`, `files`), choosing what to compact
//! (`compaction`).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, mpsc};

use super::error::{SpoolError, again};
use super::files::{single_file, write_batch};
use super::index::{Location, Shared};
use super::job::{Content, Job};
use super::segments::{self, Segment};
use crate::envelope::QueueId;

/// Most messages written per group commit.
pub(super) const MAX_BATCH: usize = 512;
/// Writer threads, each with its own active segment: while one batch is being flushed,
/// the next one starts its own flush instead of waiting, so a message waits for about one
/// flush, not up to two.
pub(super) const WRITERS: usize = 4;
/// Takes the next batch: waits for one job, then adds every job already waiting.
pub(super) fn next_batch(rx: &Mutex<mpsc::Receiver<Job>>) -> Option<Vec<Job>> {
    let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
    let first = rx.recv().ok()?;
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
    Some(batch)
}

pub(super) fn writer_loop(shared: &Shared, rx: &Mutex<mpsc::Receiver<Job>>) {
    let mut active: Option<(Arc<Segment>, u64)> = None;
    while let Some(batch) = next_batch(rx) {
        let (files, records): (Vec<Job>, Vec<Job>) =
            batch.into_iter().partition(|j| j.content.is_file());
        if !files.is_empty() {
            write_file_jobs(shared, files);
        }
        if !records.is_empty() {
            write_records(shared, &mut active, records);
        }
    }
    if let Some((segment, _)) = active {
        shared.segments.seal(&segment);
    }
}

/// Writes whole files into `queue/` and indexes them once durable.
pub(super) fn write_file_jobs(shared: &Shared, jobs: Vec<Job>) {
    let mut results: Vec<Option<Result<(), SpoolError>>> = Vec::with_capacity(jobs.len());
    let mut to_write: Vec<(PathBuf, &Content)> = Vec::new();
    let mut positions = Vec::new();
    {
        let index = shared.index();
        for (i, job) in jobs.iter().enumerate() {
            let path = shared.path_of(job.id);
            if index.contains_key(&job.id) {
                results.push(Some(Err(SpoolError::Exists(path))));
            } else {
                results.push(None);
                positions.push(i);
                to_write.push((path, &job.content));
            }
        }
    }
    let written = write_batch(
        &*shared.fs,
        &shared.queue_dir,
        &to_write,
        shared.parallel_sync,
    );
    for (i, result) in positions.into_iter().zip(written) {
        results[i] = Some(result);
    }
    for (job, result) in jobs.into_iter().zip(results) {
        let result = result.unwrap_or(Err(SpoolError::WriterStopped));
        if result.is_err() {
            // Only a file this job created or moved in: `create_new` refused any other,
            // so an existing message of the same name is never touched.
            if !matches!(result, Err(SpoolError::Exists(_))) {
                let _ = shared.fs.remove_file(&shared.path_of(job.id));
            }
        } else {
            shared.index().insert(job.id, Location::File);
        }
        if let (Content::Spilled { incoming, .. }, Err(_)) = (&job.content, &result) {
            let _ = shared.fs.remove_file(incoming);
        }
        // The session may have gone away; the message then stays queued regardless.
        let _ = job.done.send(result);
    }
}

/// Appends a batch of records to this writer's active segment (sealing it and taking a
/// ready one when the batch does not fit), flushes once per segment written, then
/// indexes every record and answers its session.
pub(super) fn write_records(
    shared: &Shared,
    active: &mut Option<(Arc<Segment>, u64)>,
    jobs: Vec<Job>,
) {
    struct Group {
        segment: Arc<Segment>,
        start: u64,
        members: Vec<usize>,
        records: Vec<Vec<u8>>,
    }
    let mut results: Vec<Option<Result<Location, SpoolError>>> =
        std::iter::repeat_with(|| None).take(jobs.len()).collect();
    let mut groups: Vec<Group> = Vec::new();
    let mut retired: Vec<Arc<Segment>> = Vec::new();
    let mut full: Vec<Arc<Segment>> = Vec::new();
    let mut fallback: Vec<usize> = Vec::new();
    let mut jobs: Vec<Option<Job>> = jobs.into_iter().map(Some).collect();
    {
        let index = shared.index();
        let mut seen = std::collections::HashSet::new();
        for (i, slot) in jobs.iter().enumerate() {
            let Some(job) = slot else { continue };
            if matches!(job.content, Content::Record(_))
                && (index.contains_key(&job.id) || !seen.insert(job.id))
            {
                results[i] = Some(Err(SpoolError::Exists(shared.segments_path(job.id))));
            }
        }
    }
    for i in 0..jobs.len() {
        if results[i].is_some() {
            continue;
        }
        let record = match jobs[i].as_mut().map(|j| &mut j.content) {
            Some(Content::Record(r)) | Some(Content::Relocate { record: r, .. }) => {
                std::mem::take(r)
            }
            _ => continue,
        };
        let len = record.len() as u64;
        let fits = matches!(active, Some((s, at)) if *at + len <= s.len);
        if !fits {
            if let Some((old, _)) = active.take() {
                full.push(old);
            }
            let fresh = shared.segments.take_ready().and_then(|s| {
                if segments::HEADER_LEN + len <= s.len {
                    Ok(s)
                } else {
                    // Larger than a whole segment: kept, unused, for the next record.
                    shared.segments.seal(&s);
                    Err(SpoolError::Full)
                }
            });
            match fresh {
                Ok(s) => *active = Some((s, segments::HEADER_LEN)),
                Err(SpoolError::Full) => {
                    // No room for a new segment (it takes a megabyte or more at once):
                    // a message still fits in a file of its own while the disk has room.
                    if let Some(job) = jobs[i].as_mut()
                        && matches!(job.content, Content::Record(_))
                    {
                        let (json, text) = segments::split(&record);
                        job.content = Content::Bytes(single_file(json, text));
                        fallback.push(i);
                        continue;
                    }
                    results[i] = Some(Err(SpoolError::Full));
                    continue;
                }
                Err(e) => {
                    results[i] = Some(Err(e));
                    continue;
                }
            }
        }
        let Some((segment, at)) = active.as_mut() else {
            continue;
        };
        shared.segments.add_live(segment, 1, len);
        match groups.last_mut() {
            Some(g) if Arc::ptr_eq(&g.segment, segment) => {
                g.members.push(i);
                g.records.push(record);
            }
            _ => groups.push(Group {
                segment: segment.clone(),
                start: *at,
                members: vec![i],
                records: vec![record],
            }),
        }
        *at += len;
    }
    for mut g in groups {
        let sync = shared.segments.append_syncs();
        match segments::append(&g.segment, g.start, &mut g.records, sync) {
            Ok(offsets) => {
                for ((i, offset), record) in g.members.into_iter().zip(offsets).zip(&g.records) {
                    results[i] = Some(Ok(Location::Segment {
                        segment: g.segment.clone(),
                        offset,
                        bytes: record.len() as u64,
                    }));
                }
            }
            Err(e) => {
                tracing::error!(segment = %g.segment.path.display(), error = %e, "cannot write the spool segment; no longer writing to it");
                let mut offset = g.start;
                for (i, record) in g.members.into_iter().zip(&g.records) {
                    let bytes = record.len() as u64;
                    shared.segments.release(&g.segment, offset, bytes, true);
                    offset += bytes;
                    results[i] = Some(Err(again(&e)));
                }
                if matches!(active, Some((s, _)) if Arc::ptr_eq(s, &g.segment)) {
                    *active = None;
                    retired.push(g.segment.clone());
                }
            }
        }
    }
    if !fallback.is_empty() {
        let files = fallback.iter().filter_map(|&i| jobs[i].take()).collect();
        write_file_jobs(shared, files);
    }
    for segment in full {
        shared.segments.seal_full(&segment);
    }
    for segment in retired {
        shared.segments.seal(&segment);
    }
    for (slot, result) in jobs.iter_mut().zip(results) {
        let Some(job) = slot.take() else { continue };
        let result = result.unwrap_or(Err(SpoolError::WriterStopped));
        let answer = match (result, job.content) {
            (
                Ok(location),
                Content::Relocate {
                    from,
                    offset,
                    bytes,
                    ..
                },
            ) => {
                relocated(shared, job.id, location, &from, offset, bytes);
                Ok(())
            }
            (Ok(location), _) => {
                shared.index().insert(job.id, location);
                Ok(())
            }
            (Err(e), _) => Err(e),
        };
        let _ = job.done.send(answer);
    }
}

/// Compaction's new copy of `id` is durable: it takes the old copy's place in the index,
/// unless the message was removed (or moved) meanwhile, and then the new copy goes.
pub(super) fn relocated(
    shared: &Shared,
    id: QueueId,
    new: Location,
    from: &Arc<Segment>,
    from_offset: u64,
    from_bytes: u64,
) {
    let mut index = shared.index();
    let still_there = matches!(
        index.get(&id),
        Some(Location::Segment { segment, offset, .. })
            if Arc::ptr_eq(segment, from) && *offset == from_offset
    );
    if still_there {
        index.insert(id, new);
        drop(index);
        shared.segments.release(from, from_offset, from_bytes, true);
    } else {
        drop(index);
        if let Location::Segment {
            segment,
            offset,
            bytes,
        } = new
        {
            shared.segments.release(&segment, offset, bytes, true);
        }
    }
}
