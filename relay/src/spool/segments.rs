//! Segment files: the append-only log that holds every message small enough to have been
//! received in memory (see the parent module's doc for why and for the measurements), and
//! their recovery at open.
//!
//! A segment is a file under `segments/` of [`SEGMENT_BYTES`] when the housekeeping
//! thread makes it ahead of need (under load), or of [`FIRST_SEGMENT_BYTES`] when a
//! writer has to make one itself (a spool's first segments, or load outrunning the
//! housekeeping): a writer's batch then waits for a megabyte, not eight, and a spool that
//! holds a few messages does not write megabytes of zeros. It is written full of zeros and
//! flushed once when it is created, so that writing a record later changes no metadata
//! (no block allocation, no size change) and `fdatasync` flushes data only. Its first
//! [`HEADER_LEN`] bytes are a header: magic, a sequence number that is new every time the
//! segment is (re)used (never reused: `sequence`), and a checksum. Records follow back to
//! back; their format, and how a scan tells a record from damage and from a torn tail, is
//! in `scan`.
//!
//! Recovery reads each segment whole and scans it past any damage: a damaged stretch with
//! valid records after it is copied to `quarantine/` (named after the segment and the
//! offset), counted and logged, and the records after it are kept; only a torn tail (a
//! batch that was being written at a crash, never acknowledged) ends the records. A
//! segment whose header is unreadable is scanned with the sequence number of its latest
//! records; a segment of an unexpected size is scanned all the same (one too large to
//! read is moved to `quarantine/` whole): no segment is deleted or reused before it was
//! scanned, and none is reused while it holds a live record.
//!
//! A segment is sealed when a batch no longer fits (or at recovery); a sealed segment
//! whose records are all done is recycled: a new header with a new sequence number,
//! flushed, and it is ready again without rewriting its zeros. A sealed segment holding
//! little live data (deferred mail pinning it) is compacted: its live records are written
//! again through the writers and the old copies marked done. A new segment file is made
//! only while the disk keeps a reserve free after it ([`SegmentConfig::reserve`]): below
//! that, messages go to files of their own, which take only the room they need.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::error::SpoolError;
use super::fsys::{FileRef, SpoolFs};
use super::scan::{self, DONE_V1, DONE_V2, RecordHead, checksum, header, parse_header, set_seq};
pub(super) use super::scan::{HEADER_LEN, RECORD_HEADER, encode, split};
use super::sequence::{self, Sequence};
use crate::envelope::QueueId;

/// Size of a segment made ahead of need.
pub(super) const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
/// Size of a segment a writer makes while its batch waits.
pub(super) const FIRST_SEGMENT_BYTES: u64 = 1024 * 1024;
/// Largest record a segment takes; a larger message is kept in a file of its own.
pub(super) const MAX_RECORD: usize = 512 * 1024;
/// Largest segment file recovery reads into memory to scan; a larger file (no relay makes
/// one) is moved to `quarantine/` whole.
pub(super) const MAX_SCAN_BYTES: u64 = 64 * 1024 * 1024;
/// Segments kept ready or free beyond the active ones; more free segments are deleted.
const SPARES: usize = 4;
/// A sealed segment whose live bytes are at most this fraction of its records is
/// compacted, once it has been sealed for [`SegmentConfig::compact_after`].
const COMPACT_FRACTION: u64 = 4;
/// The free space a new segment must leave: at least this ...
const RESERVE_MIN: u64 = 2 * SEGMENT_BYTES;
/// ... or 1% of the filesystem, up to this.
const RESERVE_PERCENT_CAP: u64 = 128 * 1024 * 1024;

/// Sizes and thresholds of a spool's segments.
#[derive(Debug, Clone)]
pub(crate) struct SegmentConfig {
    /// Size of a segment made ahead of need.
    pub(crate) segment_bytes: u64,
    /// Size of a segment a writer makes itself.
    pub(crate) first_segment_bytes: u64,
    /// How long a segment stays sealed before compaction may move its live records.
    pub(crate) compact_after: Duration,
    /// Free bytes a new segment must leave on the disk; `None`: the larger of
    /// [`RESERVE_MIN`] and 1% of the filesystem (at most [`RESERVE_PERCENT_CAP`]).
    pub(crate) reserve: Option<u64>,
    /// The power-loss test's switch that removes the one `sync_data` of a batch append,
    /// to show that the simulator catches it.
    #[cfg(test)]
    pub(crate) skip_append_sync: bool,
}

impl Default for SegmentConfig {
    fn default() -> Self {
        Self {
            segment_bytes: SEGMENT_BYTES,
            first_segment_bytes: FIRST_SEGMENT_BYTES,
            compact_after: Duration::from_secs(30),
            reserve: None,
            #[cfg(test)]
            skip_append_sync: false,
        }
    }
}

impl SegmentConfig {
    /// Free bytes a new segment must leave on a filesystem of `total` bytes.
    pub(crate) fn reserve(&self, total: u64) -> u64 {
        self.reserve
            .unwrap_or_else(|| RESERVE_MIN.max((total / 100).min(RESERVE_PERCENT_CAP)))
    }

    /// Largest record these segments take.
    pub(crate) fn max_record(&self) -> usize {
        let room = self
            .first_segment_bytes
            .min(self.segment_bytes)
            .saturating_sub(HEADER_LEN);
        MAX_RECORD.min(usize::try_from(room).unwrap_or(MAX_RECORD))
    }
}

/// One segment file.
#[derive(Debug)]
pub(super) struct Segment {
    pub(super) path: PathBuf,
    /// The file's fixed size.
    pub(super) len: u64,
    file: FileRef,
    /// Sequence number of the current use.
    seq: AtomicU64,
    /// Header layout of the current use: 1 or 2, 0 when the header was unreadable.
    version: AtomicU8,
    state: Mutex<SegmentState>,
}

#[derive(Debug, Default)]
struct SegmentState {
    live: u64,
    live_bytes: u64,
    used_bytes: u64,
    sealed: Option<Instant>,
    /// Handed to the free list; set again to false when reused.
    free: bool,
}

/// A record as found by [`Segment::read_record`].
pub(super) struct Record {
    pub(super) id: QueueId,
    pub(super) envelope: Vec<u8>,
    pub(super) text: Vec<u8>,
}

impl Segment {
    pub(super) fn seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    /// Reads and checks the record at `offset`: it must be live, of this use of the
    /// segment, whole, and carry `id`.
    pub(super) fn read_record(&self, offset: u64, id: QueueId) -> Result<Record, String> {
        let mut head = [0u8; RECORD_HEADER];
        self.file
            .read_exact_at(&mut head, offset)
            .map_err(|e| format!("cannot read the record at {offset}: {e}"))?;
        let h = RecordHead::parse(&head).ok_or("no record")?;
        if h.seq != self.seq() || h.id != id.0 || h.is_done(self.version.load(Ordering::Acquire)) {
            return Err("the record is gone".into());
        }
        let end = offset
            .checked_add(RECORD_HEADER as u64 + h.payload_len())
            .filter(|&end| end <= self.len)
            .ok_or_else(|| format!("the record at {offset} runs past the segment's end"))?;
        let mut payload = vec![0u8; (end - offset) as usize - RECORD_HEADER];
        self.file
            .read_exact_at(&mut payload, offset + RECORD_HEADER as u64)
            .map_err(|e| format!("cannot read the record at {offset}: {e}"))?;
        if h.crc != checksum(&head, &payload) {
            return Err(format!("checksum mismatch in the record at {offset}"));
        }
        let text = payload.split_off(h.env_len as usize);
        Ok(Record {
            id,
            envelope: payload,
            text,
        })
    }

    /// The whole record of `id` at `offset` as bytes, checked, for compaction to write
    /// again.
    pub(super) fn raw_record(&self, offset: u64, id: QueueId) -> Option<Vec<u8>> {
        let record = self.read_record(offset, id).ok()?;
        Some(encode(record.id, &record.envelope, &record.text))
    }

    fn mark_done(&self, offset: u64) {
        // Not flushed: should the mark be lost, the message is delivered once more.
        let mark: &[u8] = match self.version.load(Ordering::Acquire) {
            1 => &DONE_V1[..1],
            _ => &DONE_V2,
        };
        if let Err(e) = self.file.write_all_at(mark, offset + 4) {
            tracing::warn!(segment = %self.path.display(), offset, error = %e, "cannot mark a delivered record done; it may be delivered again after a restart");
        }
    }
}

/// Every segment of a spool: the ready ones, the free ones, the sealed ones, and the
/// thread that prepares and compacts them.
#[derive(Debug)]
pub(super) struct Segments {
    fs: Arc<dyn SpoolFs>,
    dir: PathBuf,
    config: SegmentConfig,
    sequence: Sequence,
    next_slot: AtomicU64,
    /// Files made by this spool.
    made: AtomicU64,
    /// Free segments given a new header (tests count them).
    reused: AtomicU64,
    /// Set once a writer filled a segment: from then on spares are prepared ahead.
    busy: AtomicBool,
    /// Set while new segments are refused for want of free space (logged once a spell).
    low_space: AtomicBool,
    lists: Mutex<Lists>,
    wake: Condvar,
    stop: AtomicBool,
}

#[derive(Debug, Default)]
struct Lists {
    /// Header written and flushed with a fresh sequence number; no records.
    ready: Vec<Arc<Segment>>,
    /// Every record done; needs a new header before use.
    free: Vec<Arc<Segment>>,
    /// Written to no more; hold live records.
    sealed: Vec<Arc<Segment>>,
}

/// What recovery found in the segments.
pub(super) struct Recovered {
    pub(super) segments: Arc<Segments>,
    /// Segments that ended in a torn tail.
    pub(super) torn: u64,
    /// Damaged stretches (and unreadable headers of segments with live records, and
    /// segments too large to scan) moved to quarantine.
    pub(super) damaged: u64,
}

/// A live record found by recovery: `bytes` bytes at `offset` in `segment`.
#[derive(Debug)]
pub(super) struct LiveRecord {
    pub(super) segment: Arc<Segment>,
    pub(super) offset: u64,
    pub(super) bytes: u64,
}

/// Where recovery puts what it cannot read.
pub(super) struct Quarantine<'a> {
    pub(super) dir: &'a Path,
}

impl Quarantine<'_> {
    /// Copies `bytes` to `quarantine/<name>`, flushed; an existing copy (the same damage
    /// found at an earlier start) is kept.
    fn keep(&self, fs: &dyn SpoolFs, name: &str, bytes: &[u8]) -> Result<PathBuf, SpoolError> {
        let path = self.dir.join(name);
        let file = match fs.create_new(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(path),
            Err(e) => return Err(SpoolError::io(&path, e)),
        };
        file.write_all_at(bytes, 0)
            .and_then(|()| file.sync_data())
            .and_then(|()| fs.sync_dir(self.dir))
            .map_err(|e| SpoolError::io(&path, e))?;
        Ok(path)
    }
}

impl Segments {
    /// Reads every segment in `dir`: each live record goes to `live` (which says whether
    /// it took it: `false` for a message it already holds), damaged stretches go to
    /// `quarantine` (the records after them are kept), torn tails are skipped (logged),
    /// segments without live records made free.
    pub(super) fn recover(
        fs: Arc<dyn SpoolFs>,
        dir: &Path,
        quarantine: &Quarantine<'_>,
        config: SegmentConfig,
        live: &mut dyn FnMut(QueueId, LiveRecord) -> bool,
    ) -> Result<Recovered, SpoolError> {
        fs.create_dir_all(dir).map_err(|e| SpoolError::io(dir, e))?;
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        for path in fs.read_dir(dir).map_err(|e| SpoolError::io(dir, e))? {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name == sequence::FILE {
                continue;
            }
            let slot = name
                .strip_suffix(".seg")
                .and_then(|n| n.parse::<u64>().ok());
            match slot {
                Some(slot) => names.push((slot, path)),
                // Not ours (a leftover of a crash while creating one): leave it alone.
                None => {
                    tracing::warn!(file = %path.display(), "ignoring a file that is not a segment")
                }
            }
        }
        names.sort();
        let mut lists = Lists::default();
        let mut max_seq = 0;
        let mut torn = 0;
        let mut damaged = 0;
        for (_, path) in &names {
            let file = fs.open_rw(path).map_err(|e| SpoolError::io(path, e))?;
            let len = file.len().map_err(|e| SpoolError::io(path, e))?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if len > MAX_SCAN_BYTES {
                drop(file);
                let target = quarantine.dir.join(&name);
                tracing::error!(segment = %path.display(), len, quarantine = %target.display(), "a segment file too large to be one of ours: moved to quarantine unread");
                fs.rename(path, &target)
                    .and_then(|()| fs.sync_dir(quarantine.dir))
                    .and_then(|()| fs.sync_dir(dir))
                    .map_err(|e| SpoolError::io(path, e))?;
                damaged += 1;
                continue;
            }
            let mut bytes = vec![0u8; len as usize];
            file.read_exact_at(&mut bytes, 0)
                .map_err(|e| SpoolError::io(path, e))?;
            let (seq, version, header_ok) = match parse_header(&bytes) {
                Some((seq, version)) => (Some(seq), version, true),
                // A header torn while the segment was being recycled (every record done,
                // though the marks may not have reached the disk), or damaged: the
                // records say which use they are of.
                None => (scan::latest_seq(&bytes), 0, false),
            };
            let segment = Arc::new(Segment {
                path: path.clone(),
                len,
                file,
                seq: AtomicU64::new(seq.unwrap_or(0)),
                version: AtomicU8::new(version),
                state: Mutex::new(SegmentState::default()),
            });
            let mut live_records = 0;
            if let Some(seq) = seq {
                max_seq = max_seq.max(seq);
                let found = scan::scan(&bytes, seq, version);
                for range in &found.damaged {
                    let stretch = bytes
                        .get(range.start as usize..range.end as usize)
                        .unwrap_or_default();
                    let target = quarantine.keep(
                        &*fs,
                        &format!("{name}@{}.damaged", range.start),
                        stretch,
                    )?;
                    tracing::error!(segment = %path.display(), offset = range.start, bytes = range.end - range.start, quarantine = %target.display(), "a damaged record in the middle of a spool segment: copied to quarantine, the records after it kept");
                    damaged += 1;
                }
                if let Some(at) = found.torn {
                    tracing::warn!(segment = %path.display(), offset = at, "skipping the torn tail of a spool segment (never acknowledged)");
                    torn += 1;
                }
                let mut state = SegmentState::default();
                for f in &found.records {
                    state.used_bytes = f.offset + f.bytes - HEADER_LEN;
                    if f.done {
                        continue;
                    }
                    let record = LiveRecord {
                        segment: segment.clone(),
                        offset: f.offset,
                        bytes: f.bytes,
                    };
                    if live(f.id, record) {
                        state.live += 1;
                        state.live_bytes += f.bytes;
                    } else {
                        // A compacted record whose old copy's done mark was lost: one
                        // copy is enough.
                        segment.mark_done(f.offset);
                    }
                }
                live_records = state.live;
                state.sealed = Some(Instant::now());
                *segment.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
                if !header_ok && live_records > 0 {
                    let head = bytes.get(..HEADER_LEN as usize).unwrap_or(&bytes);
                    let target = quarantine.keep(&*fs, &format!("{name}@0.damaged"), head)?;
                    tracing::error!(segment = %path.display(), seq, live = live_records, quarantine = %target.display(), "a spool segment's header is unreadable but live records follow it: kept them (use {seq})");
                    damaged += 1;
                }
            }
            if live_records > 0 {
                lists.sealed.push(segment);
            } else if len >= config.first_segment_bytes.min(config.segment_bytes) {
                segment
                    .state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .sealed = Some(Instant::now());
                lists.free.push(segment);
            } else {
                // Scanned, no live record: a file cut short while it was made.
                tracing::warn!(segment = %path.display(), len, "removing a segment cut short while it was made (scanned: no live record)");
                drop(segment);
                fs.remove_file(path).map_err(|e| SpoolError::io(path, e))?;
            }
        }
        let next_slot = names.last().map_or(0, |(slot, _)| slot + 1);
        for s in &mut lists.free {
            s.state.lock().unwrap_or_else(|e| e.into_inner()).free = true;
        }
        let sequence = Sequence::open(&*fs, dir, max_seq, !names.is_empty());
        sequence.reserve(&*fs)?;
        let segments = Arc::new(Segments {
            fs,
            dir: dir.to_path_buf(),
            config,
            sequence,
            next_slot: AtomicU64::new(next_slot),
            made: AtomicU64::new(0),
            reused: AtomicU64::new(0),
            busy: AtomicBool::new(false),
            low_space: AtomicBool::new(false),
            lists: Mutex::new(lists),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        Ok(Recovered {
            segments,
            torn,
            damaged,
        })
    }

    /// Segment files this spool has made (not counting reuse).
    #[cfg(test)]
    pub(super) fn made(&self) -> u64 {
        self.made.load(Ordering::Acquire)
    }

    /// Whether `segment` is free (every record done, handed to the free list).
    #[cfg(test)]
    pub(super) fn is_free(&self, segment: &Segment) -> bool {
        segment.state.lock().unwrap_or_else(|e| e.into_inner()).free
    }

    /// Free segments this spool gave a new header.
    #[cfg(test)]
    pub(super) fn reused(&self) -> u64 {
        self.reused.load(Ordering::Acquire)
    }

    /// Largest record these segments take.
    pub(super) fn max_record(&self) -> usize {
        self.config.max_record()
    }

    /// Whether a batch append flushes (always, but for one power-loss test).
    pub(super) fn append_syncs(&self) -> bool {
        #[cfg(test)]
        if self.config.skip_append_sync {
            return false;
        }
        true
    }

    fn lists(&self) -> std::sync::MutexGuard<'_, Lists> {
        self.lists.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A segment with a fresh header and no records: a ready one, else one prepared now.
    pub(super) fn take_ready(&self) -> Result<Arc<Segment>, SpoolError> {
        let ready = self.lists().ready.pop();
        self.wake.notify_all();
        match ready {
            Some(s) => Ok(s),
            None => self.prepare(self.config.first_segment_bytes),
        }
    }

    /// A free segment with a new header, else a new file of `len` bytes.
    fn prepare(&self, len: u64) -> Result<Arc<Segment>, SpoolError> {
        let Some(s) = self.lists().free.pop() else {
            return self.create(len);
        };
        let seq = match self.sequence.take(&*self.fs) {
            Ok(seq) => seq,
            Err(e) => {
                self.lists().free.push(s);
                return Err(e);
            }
        };
        let written = s
            .file
            .write_all_at(&header(seq, 2), 0)
            .and_then(|()| s.file.sync_data());
        if let Err(e) = written {
            // Its header may be torn now: it holds nothing live, it stays free.
            self.lists().free.push(s.clone());
            return Err(SpoolError::io(&s.path, e));
        }
        s.seq.store(seq, Ordering::Release);
        s.version.store(2, Ordering::Release);
        self.reused.fetch_add(1, Ordering::Relaxed);
        *s.state.lock().unwrap_or_else(|e| e.into_inner()) = SegmentState::default();
        Ok(s)
    }

    /// A new segment file: written full, header included, flushed, and its name made
    /// durable, all before it takes a record. Refused ([`SpoolError::Full`]) when it
    /// would leave less than the reserve free.
    fn create(&self, len: u64) -> Result<Arc<Segment>, SpoolError> {
        if let Some((free, total)) = self.fs.space(&self.dir) {
            let reserve = self.config.reserve(total);
            if free < len.saturating_add(reserve) {
                if !self.low_space.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        free,
                        reserve,
                        "spool disk low: no new segment (messages go to files of their own until space is freed)"
                    );
                }
                return Err(SpoolError::Full);
            }
            if self.low_space.swap(false, Ordering::AcqRel) {
                tracing::info!(free, "spool disk has room for segments again");
            }
        }
        let seq = self.sequence.take(&*self.fs)?;
        let slot = self.next_slot.fetch_add(1, Ordering::AcqRel);
        self.made.fetch_add(1, Ordering::AcqRel);
        let path = self.dir.join(format!("{slot:08}.seg"));
        let file = self
            .fs
            .create_new(&path)
            .map_err(|e| SpoolError::io(&path, e))?;
        let fill = || -> io::Result<()> {
            let zeros = vec![0u8; 1024 * 1024];
            let mut at = 0;
            while at < len {
                let n = zeros.len().min((len - at) as usize);
                file.write_all_at(&zeros[..n], at)?;
                at += n as u64;
            }
            file.write_all_at(&header(seq, 2), 0)?;
            file.sync_all()?;
            self.fs.sync_dir(&self.dir)
        };
        if let Err(e) = fill() {
            let _ = self.fs.remove_file(&path);
            return Err(SpoolError::io(&path, e));
        }
        Ok(Arc::new(Segment {
            path,
            len,
            file,
            seq: AtomicU64::new(seq),
            version: AtomicU8::new(2),
            state: Mutex::new(SegmentState::default()),
        }))
    }

    /// Seals a segment a writer filled.
    pub(super) fn seal_full(&self, segment: &Arc<Segment>) {
        self.busy.store(true, Ordering::Release);
        self.seal(segment);
    }

    /// Seals a segment the writers are done with.
    pub(super) fn seal(&self, segment: &Arc<Segment>) {
        let mut state = segment.state.lock().unwrap_or_else(|e| e.into_inner());
        state.sealed = Some(Instant::now());
        let empty = state.live == 0;
        if empty {
            state.free = true;
        }
        // Lock order: a segment's state, then the lists.
        let mut lists = self.lists();
        if empty {
            lists.free.push(segment.clone());
        } else {
            lists.sealed.push(segment.clone());
        }
        drop(lists);
        drop(state);
        self.wake.notify_all();
    }

    /// Counts `bytes` of new live records in `segment` (before they are written, so the
    /// segment cannot be recycled under them).
    pub(super) fn add_live(&self, segment: &Segment, records: u64, bytes: u64) {
        let mut state = segment.state.lock().unwrap_or_else(|e| e.into_inner());
        state.live += records;
        state.live_bytes += bytes;
        state.used_bytes += bytes;
    }

    /// The record at `offset` is no longer needed: marks it done and frees its segment
    /// once nothing in it is live.
    pub(super) fn release(&self, segment: &Arc<Segment>, offset: u64, bytes: u64, mark: bool) {
        if mark {
            segment.mark_done(offset);
        }
        let mut state = segment.state.lock().unwrap_or_else(|e| e.into_inner());
        state.live = state.live.saturating_sub(1);
        state.live_bytes = state.live_bytes.saturating_sub(bytes);
        let now_free = state.live == 0 && state.sealed.is_some() && !state.free;
        if now_free {
            state.free = true;
            let mut lists = self.lists();
            lists.sealed.retain(|s| !Arc::ptr_eq(s, segment));
            lists.free.push(segment.clone());
            drop(lists);
            drop(state);
            self.wake.notify_all();
        }
    }

    /// Keeps [`SPARES`] segments ready, deletes free ones beyond that, and says which
    /// sealed segments are worth compacting. Called by the spool's housekeeping thread.
    pub(super) fn housekeep(&self) -> Vec<Arc<Segment>> {
        loop {
            let lists = self.lists();
            // Segments are made ahead only for a spool under load: most spools (and
            // every test's) never fill their first segments.
            let wanted = if self.busy.load(Ordering::Acquire) {
                SPARES
            } else {
                0
            };
            if lists.ready.len() >= wanted || self.stop.load(Ordering::Acquire) {
                break;
            }
            drop(lists);
            match self.prepare(self.config.segment_bytes) {
                Ok(s) => self.lists().ready.push(s),
                Err(SpoolError::Full) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot prepare a spool segment ahead of time");
                    break;
                }
            }
        }
        let mut lists = self.lists();
        let mut surplus = Vec::new();
        while lists.free.len() > SPARES {
            surplus.extend(lists.free.pop());
        }
        let sealed = lists.sealed.clone();
        drop(lists);
        for s in surplus {
            // Not flushed: a segment that comes back after a crash is free again.
            if let Err(e) = self.fs.remove_file(&s.path) {
                tracing::warn!(segment = %s.path.display(), error = %e, "cannot remove a spare spool segment");
            }
        }
        // The lists' lock is not held here: lock order is a segment's state, then lists.
        let after = self.config.compact_after;
        sealed
            .iter()
            .filter(|s| {
                let st = s.state.lock().unwrap_or_else(|e| e.into_inner());
                st.live > 0
                    && st.live_bytes * COMPACT_FRACTION <= st.used_bytes
                    && st.sealed.is_some_and(|at| at.elapsed() >= after)
            })
            .cloned()
            .collect()
    }

    /// Waits for work for the housekeeping thread; false once the spool is closing.
    pub(super) fn wait(&self, timeout: Duration) -> bool {
        let lists = self.lists();
        if self.stop.load(Ordering::Acquire) {
            return false;
        }
        let _ = self
            .wake
            .wait_timeout(lists, timeout)
            .unwrap_or_else(|e| e.into_inner());
        !self.stop.load(Ordering::Acquire)
    }

    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let _lists = self.lists();
        self.wake.notify_all();
    }
}

/// Appends `records` (each from [`encode`]) to `segment` from `offset`: stamps them
/// with its sequence number, writes them in one go and flushes the data. Returns the
/// offset of each record.
pub(super) fn append(
    segment: &Segment,
    offset: u64,
    records: &mut [Vec<u8>],
    sync: bool,
) -> Result<Vec<u64>, SpoolError> {
    let seq = segment.seq();
    let total: usize = records.iter().map(Vec::len).sum();
    let mut buf = Vec::with_capacity(total);
    let mut offsets = Vec::with_capacity(records.len());
    for r in records.iter_mut() {
        set_seq(r, seq);
        offsets.push(offset + buf.len() as u64);
        buf.extend_from_slice(r);
    }
    segment
        .file
        .write_all_at(&buf, offset)
        .and_then(|()| {
            if sync {
                segment.file.sync_data()
            } else {
                Ok(())
            }
        })
        .map_err(|e| SpoolError::io(&segment.path, e))?;
    Ok(offsets)
}
