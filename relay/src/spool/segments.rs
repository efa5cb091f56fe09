//! Segment files: the append-only log that holds every message small enough to have been
//! received in memory (see the parent module's doc for why and for the measurements).
//!
//! A segment is a file under `segments/` of [`SEGMENT_BYTES`] when the housekeeping
//! thread makes it ahead of need (under load), or of [`FIRST_SEGMENT_BYTES`] when a
//! writer has to make one itself (a spool's first segments, or load outrunning the
//! housekeeping): a writer's batch then waits for a megabyte, not eight, and a spool that
//! holds a few messages does not write megabytes of zeros. It is written full of zeros and
//! flushed once when it is created, so that writing a record later changes no metadata
//! (no block allocation, no size change) and `fdatasync` flushes data only. Its first
//! [`HEADER_LEN`] bytes are a header: magic, a sequence number that is new every time the
//! segment is (re)used, and a checksum. Records follow back to back:
//!
//! ```text
//! 0  magic u32 | 4 state u8 ('L' live, 'D' done) | 5 zero[3] | 8 segment seq u64
//! 16 queue id u64 | 24 envelope length u32 | 28 text length u32 | 32 crc32 u32 | 36 zero[4]
//! 40 envelope JSON | text
//! ```
//!
//! The checksum covers bytes 16..32 and the payload; the sequence number must equal the
//! header's, so a record left over from the segment's previous use never passes as one
//! of this use. The state byte is outside the checksum: removing a message writes `D`
//! over it in place (one byte, not flushed: a lost mark means one more delivery).
//!
//! Recovery reads each segment from the start and stops at the first record that is not
//! whole and valid. A writer appends a batch only after the previous one is flushed, and
//! acknowledges none of a batch before the flush, so whatever follows an invalid record
//! was never acknowledged: a torn tail is skipped, never an acknowledged record.
//!
//! A segment is sealed when a batch no longer fits (or at recovery); a sealed segment
//! whose records are all done is recycled: a new header with a new sequence number,
//! flushed, and it is ready again without rewriting its zeros. A sealed segment holding
//! little live data (deferred mail pinning it) is compacted: its live records are written
//! again through the writers and the old copies marked done.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::error::SpoolError;
use crate::envelope::QueueId;

/// Size of every segment file.
pub(super) const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
/// Size of a segment a writer makes while its batch waits.
pub(super) const FIRST_SEGMENT_BYTES: u64 = 1024 * 1024;
/// The header block; records start here.
pub(super) const HEADER_LEN: u64 = 4096;
/// Fixed part of a record.
pub(super) const RECORD_HEADER: usize = 40;
/// Largest record a segment takes; a larger message is kept in a file of its own.
pub(super) const MAX_RECORD: usize = 512 * 1024;

const SEGMENT_MAGIC: &[u8; 8] = b"RLYSEG01";
const RECORD_MAGIC: u32 = 0x5253_4731;
const LIVE: u8 = b'L';
const DONE: u8 = b'D';
/// Segments kept ready or free beyond the active ones; more free segments are deleted.
const SPARES: usize = 4;
/// A sealed segment whose live bytes are at most this fraction of its records is
/// compacted, once it has been sealed for [`COMPACT_AFTER`].
const COMPACT_FRACTION: u64 = 4;
const COMPACT_AFTER: Duration = Duration::from_secs(30);

/// One segment file.
#[derive(Debug)]
pub(super) struct Segment {
    pub(super) path: PathBuf,
    /// The file's fixed size.
    pub(super) len: u64,
    file: File,
    /// Sequence number of the current use.
    seq: AtomicU64,
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
        if h.seq != self.seq() || h.id != id.0 || h.state != LIVE {
            return Err("the record is gone".into());
        }
        if offset + (RECORD_HEADER + h.payload_len()) as u64 > self.len {
            return Err(format!(
                "the record at {offset} runs past the segment's end"
            ));
        }
        let mut payload = vec![0u8; h.payload_len()];
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
        if let Err(e) = self.file.write_all_at(&[DONE], offset + 4) {
            tracing::warn!(segment = %self.path.display(), offset, error = %e, "cannot mark a delivered record done; it may be delivered again after a restart");
        }
    }
}

/// The fixed part of a record, decoded.
struct RecordHead {
    state: u8,
    seq: u64,
    id: u64,
    env_len: u32,
    text_len: u32,
    crc: u32,
}

impl RecordHead {
    fn parse(b: &[u8; RECORD_HEADER]) -> Option<Self> {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(x)
        };
        if u32_at(0) != RECORD_MAGIC || !matches!(b[4], LIVE | DONE) {
            return None;
        }
        Some(Self {
            state: b[4],
            seq: u64_at(8),
            id: u64_at(16),
            env_len: u32_at(24),
            text_len: u32_at(28),
            crc: u32_at(32),
        })
    }

    fn payload_len(&self) -> usize {
        self.env_len as usize + self.text_len as usize
    }
}

fn checksum(head: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&head[16..32]);
    h.update(payload);
    h.finalize()
}

/// A live record of message `id`, its sequence number still zero (the writer sets it).
pub(super) fn encode(id: QueueId, envelope: &[u8], text: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(RECORD_HEADER + envelope.len() + text.len());
    r.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
    r.extend_from_slice(&[LIVE, 0, 0, 0]);
    r.extend_from_slice(&0u64.to_le_bytes());
    r.extend_from_slice(&id.0.to_le_bytes());
    // Callers keep records under MAX_RECORD, far below u32::MAX.
    r.extend_from_slice(&(envelope.len() as u32).to_le_bytes());
    r.extend_from_slice(&(text.len() as u32).to_le_bytes());
    r.extend_from_slice(&[0u8; 8]);
    r.extend_from_slice(envelope);
    r.extend_from_slice(text);
    let crc = checksum(&r[..RECORD_HEADER], &r[RECORD_HEADER..]);
    r[32..36].copy_from_slice(&crc.to_le_bytes());
    r
}

/// The envelope JSON and the text of a record from [`encode`].
pub(super) fn split(record: &[u8]) -> (&[u8], &[u8]) {
    let env_len = u32::from_le_bytes([record[24], record[25], record[26], record[27]]) as usize;
    record[RECORD_HEADER..].split_at(env_len)
}

fn set_seq(record: &mut [u8], seq: u64) {
    record[8..16].copy_from_slice(&seq.to_le_bytes());
}

/// Every segment of a spool: the ready ones, the free ones, the sealed ones, and the
/// thread that prepares and compacts them.
#[derive(Debug)]
pub(super) struct Segments {
    dir: PathBuf,
    next_seq: AtomicU64,
    next_slot: AtomicU64,
    /// Files made by this spool.
    made: AtomicU64,
    /// Set once a writer filled a segment: from then on spares are prepared ahead.
    busy: AtomicBool,
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
    pub(super) torn: u64,
}

/// A live record found by recovery: `bytes` bytes at `offset` in `segment`.
#[derive(Debug)]
pub(super) struct LiveRecord {
    pub(super) segment: Arc<Segment>,
    pub(super) offset: u64,
    pub(super) bytes: u64,
}

impl Segments {
    /// Reads every segment in `dir`: each live record goes to `live` (which says whether
    /// it took it: `false` for a message it already holds), torn tails are skipped
    /// (logged), segments without live records made free.
    pub(super) fn recover(
        dir: &Path,
        live: &mut dyn FnMut(QueueId, LiveRecord) -> bool,
    ) -> Result<Recovered, SpoolError> {
        fs::create_dir_all(dir).map_err(|e| SpoolError::io(dir, e))?;
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| SpoolError::io(dir, e))? {
            let path = entry.map_err(|e| SpoolError::io(dir, e))?.path();
            let slot = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".seg"))
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
        for (_, path) in &names {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| SpoolError::io(path, e))?;
            let len = file.metadata().map_err(|e| SpoolError::io(path, e))?.len();
            let seq = read_header(&file).map_err(|e| SpoolError::io(path, e))?;
            let segment = Arc::new(Segment {
                path: path.clone(),
                len,
                file,
                seq: AtomicU64::new(seq.unwrap_or(0)),
                state: Mutex::new(SegmentState {
                    sealed: Some(Instant::now()),
                    ..SegmentState::default()
                }),
            });
            let whole = is_segment_size(len);
            let Some(seq) = seq.filter(|_| whole) else {
                // A header torn while it was being recycled, or a file cut short while
                // it was being created: no acknowledged record was ever written to it.
                if whole {
                    lists.free.push(segment);
                } else {
                    tracing::warn!(segment = %path.display(), len, "removing a segment cut short while it was created");
                    fs::remove_file(path).map_err(|e| SpoolError::io(path, e))?;
                }
                continue;
            };
            max_seq = max_seq.max(seq);
            torn += scan(&segment, seq, live)?;
            let state = segment.state.lock().unwrap_or_else(|e| e.into_inner());
            let live = state.live;
            drop(state);
            if live == 0 {
                lists.free.push(segment);
            } else {
                lists.sealed.push(segment);
            }
        }
        let next_slot = names.last().map_or(0, |(slot, _)| slot + 1);
        for s in &mut lists.free {
            s.state.lock().unwrap_or_else(|e| e.into_inner()).free = true;
        }
        let segments = Arc::new(Segments {
            dir: dir.to_path_buf(),
            next_seq: AtomicU64::new(max_seq + 1),
            next_slot: AtomicU64::new(next_slot),
            made: AtomicU64::new(0),
            busy: AtomicBool::new(false),
            lists: Mutex::new(lists),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        Ok(Recovered { segments, torn })
    }

    /// Segment files this spool has made (not counting reuse).
    #[cfg(test)]
    pub(super) fn made(&self) -> u64 {
        self.made.load(Ordering::Acquire)
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
            None => self.prepare(FIRST_SEGMENT_BYTES),
        }
    }

    /// A free segment with a new header, else a new file of `len` bytes.
    fn prepare(&self, len: u64) -> Result<Arc<Segment>, SpoolError> {
        let free = self.lists().free.pop();
        let seq = self.next_seq.fetch_add(1, Ordering::AcqRel);
        let segment = match free {
            Some(s) => {
                write_header(&s.file, seq)
                    .and_then(|()| s.file.sync_data())
                    .map_err(|e| SpoolError::io(&s.path, e))?;
                s.seq.store(seq, Ordering::Release);
                *s.state.lock().unwrap_or_else(|e| e.into_inner()) = SegmentState::default();
                s
            }
            None => self.create(seq, len)?,
        };
        Ok(segment)
    }

    /// A new segment file: written full, header included, flushed, and its name made
    /// durable, all before it takes a record.
    fn create(&self, seq: u64, len: u64) -> Result<Arc<Segment>, SpoolError> {
        let slot = self.next_slot.fetch_add(1, Ordering::AcqRel);
        self.made.fetch_add(1, Ordering::AcqRel);
        let path = self.dir.join(format!("{slot:08}.seg"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| SpoolError::io(&path, e))?;
        let fill = || -> io::Result<()> {
            let zeros = vec![0u8; 1024 * 1024];
            let mut at = 0;
            while at < len {
                let n = zeros.len().min((len - at) as usize);
                file.write_all_at(&zeros[..n], at)?;
                at += n as u64;
            }
            write_header(&file, seq)?;
            file.sync_all()?;
            File::open(&self.dir)?.sync_all()
        };
        if let Err(e) = fill() {
            let _ = fs::remove_file(&path);
            return Err(SpoolError::io(&path, e));
        }
        Ok(Arc::new(Segment {
            path,
            len,
            file,
            seq: AtomicU64::new(seq),
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
            match self.prepare(SEGMENT_BYTES) {
                Ok(s) => self.lists().ready.push(s),
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
            if let Err(e) = fs::remove_file(&s.path) {
                tracing::warn!(segment = %s.path.display(), error = %e, "cannot remove a spare spool segment");
            }
        }
        // The lists' lock is not held here: lock order is a segment's state, then lists.
        sealed
            .iter()
            .filter(|s| {
                let st = s.state.lock().unwrap_or_else(|e| e.into_inner());
                st.live > 0
                    && st.live_bytes * COMPACT_FRACTION <= st.used_bytes
                    && st.sealed.is_some_and(|at| at.elapsed() >= COMPACT_AFTER)
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
        .and_then(|()| segment.file.sync_data())
        .map_err(|e| SpoolError::io(&segment.path, e))?;
    Ok(offsets)
}

/// A size [`Segments::create`] makes: a whole segment, not one cut short.
fn is_segment_size(len: u64) -> bool {
    len.is_power_of_two() && (FIRST_SEGMENT_BYTES..=SEGMENT_BYTES).contains(&len)
}

fn write_header(file: &File, seq: u64) -> io::Result<()> {
    let mut h = [0u8; 24];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&h[..16]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    file.write_all_at(&h, 0)
}

/// The header's sequence number, or `None` when the header is not whole.
fn read_header(file: &File) -> io::Result<Option<u64>> {
    let mut h = [0u8; 24];
    match file.read_exact_at(&mut h, 0) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        other => other?,
    }
    let crc = u32::from_le_bytes([h[16], h[17], h[18], h[19]]);
    if &h[..8] != SEGMENT_MAGIC || crc != crc32fast::hash(&h[..16]) {
        return Ok(None);
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&h[8..16]);
    Ok(Some(u64::from_le_bytes(seq)))
}

/// Hands the live records of one segment to `live`; returns 1 when it ended in a torn
/// record (of this use: magic and sequence number right, the rest not), else 0.
fn scan(
    segment: &Arc<Segment>,
    seq: u64,
    live: &mut dyn FnMut(QueueId, LiveRecord) -> bool,
) -> Result<u64, SpoolError> {
    let path = &segment.path;
    let mut reader = io::BufReader::with_capacity(
        1024 * 1024,
        (&segment.file).take(segment.len), // bounded by the file's fixed size
    );
    io::copy(&mut (&mut reader).take(HEADER_LEN), &mut io::sink())
        .map_err(|e| SpoolError::io(path, e))?;
    let mut offset = HEADER_LEN;
    let mut state = SegmentState::default();
    let mut torn = 0;
    loop {
        let mut head = [0u8; RECORD_HEADER];
        if offset + RECORD_HEADER as u64 > segment.len {
            break;
        }
        reader
            .read_exact(&mut head)
            .map_err(|e| SpoolError::io(path, e))?;
        let Some(h) = RecordHead::parse(&head).filter(|h| h.seq == seq) else {
            break;
        };
        let end = offset + RECORD_HEADER as u64 + h.payload_len() as u64;
        let tear = |why: &str| {
            tracing::warn!(segment = %path.display(), offset, reason = why, "skipping the torn tail of a spool segment (never acknowledged)");
        };
        if end > segment.len {
            tear("record runs past the end");
            torn = 1;
            break;
        }
        let mut payload = vec![0u8; h.payload_len()];
        reader
            .read_exact(&mut payload)
            .map_err(|e| SpoolError::io(path, e))?;
        if h.crc != checksum(&head, &payload) {
            tear("checksum mismatch");
            torn = 1;
            break;
        }
        let bytes = end - offset;
        state.used_bytes += bytes;
        if h.state == LIVE {
            let id = QueueId(h.id);
            let record = LiveRecord {
                segment: segment.clone(),
                offset,
                bytes,
            };
            if live(id, record) {
                state.live += 1;
                state.live_bytes += bytes;
            } else {
                // A compacted record whose old copy's done mark was lost: one copy is
                // enough.
                segment.mark_done(offset);
            }
        }
        offset = end;
    }
    state.sealed = Some(Instant::now());
    *segment.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
    Ok(torn)
}
