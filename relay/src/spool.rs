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
//! the volume. A segment ([`segments`]) is made once, written full of zeros and flushed,
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
//! Group commit: sessions hand their message to a writer thread (one of [`WRITERS`], which
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

mod segments;

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, SystemTime};

use segments::{Segment, Segments};

use tokio::sync::oneshot;

pub use crate::envelope::{BadQueueId, Envelope, QueueId};
use crate::smtp::Reply;

const MAGIC: &str = "RELAYSPOOL1";
const TRAILER: &[u8] = b"\nEND\n";
/// First line of the streamed layout.
const HEADER2: &[u8] = b"RELAYSPOOL2\n";
/// `\nEND ` + 16 hex + ` ` + 16 hex + `\n`.
const TRAILER2_LEN: usize = 39;
/// Message text kept in memory before it goes to a file in `incoming/`.
pub const SPILL_BYTES: usize = 256 * 1024;
/// Tries of a file that fails to read during recovery before the open fails.
const RECOVERY_TRIES: u32 = 3;
/// Most messages written per group commit.
const MAX_BATCH: usize = 512;
/// Most threads writing and flushing the files of one batch at once.
const SYNC_THREADS: usize = 8;
/// Writer threads, each with its own active segment: while one batch is being flushed,
/// the next one starts its own flush instead of waiting, so a message waits for about one
/// flush, not up to two.
const WRITERS: usize = 4;
/// Most records one compaction pass moves out of one segment.
const COMPACT_BATCH: usize = 1024;

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
    fn io(path: &Path, source: io::Error) -> Self {
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

/// Takes the spool's lock and writes who holds it, or says who does.
fn take_lock(dir: &Path) -> Result<File, SpoolError> {
    fs::create_dir_all(dir).map_err(|e| SpoolError::io(dir, e))?;
    let path = dir.join("lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| SpoolError::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            // Bounded: the holder writes one short line.
            let _ = (&file).take(256).read_to_string(&mut text);
            let holder = match text.trim() {
                "" => "holder unknown".to_string(),
                t => t.to_string(),
            };
            return Err(SpoolError::Locked {
                dir: dir.to_path_buf(),
                holder,
            });
        }
        Err(fs::TryLockError::Error(e)) => return Err(SpoolError::io(&path, e)),
    }
    let holder = format!("pid {} on host {}\n", std::process::id(), hostname());
    file.set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| file.write_all(holder.as_bytes()))
        .map_err(|e| SpoolError::io(&path, e))?;
    Ok(file)
}

/// This machine's (in a pod: the pod's) host name, for the lock file.
fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

struct Job {
    id: QueueId,
    content: Content,
    done: oneshot::Sender<Result<(), SpoolError>>,
}

/// What a writer makes durable for a [`Job`].
enum Content {
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
    fn relocate(
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
    fn is_file(&self) -> bool {
        matches!(self, Content::Bytes(_) | Content::Spilled { .. })
    }
}

/// Where a queued message is.
#[derive(Debug, Clone)]
enum Location {
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
struct Shared {
    queue_dir: PathBuf,
    index: Mutex<BTreeMap<QueueId, Location>>,
    segments: Arc<Segments>,
}

impl Shared {
    fn index(&self) -> std::sync::MutexGuard<'_, BTreeMap<QueueId, Location>> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path_of(&self, id: QueueId) -> PathBuf {
        self.queue_dir.join(id.to_string())
    }
}

/// The text of a message being received: in memory up to [`SPILL_BYTES`], then in a file
/// under `incoming/`. [`Spool::commit`] makes it a queued message;
/// [`Spool::discard`] throws it away.
#[derive(Debug)]
pub struct Incoming {
    id: QueueId,
    buf: Vec<u8>,
    file: Option<(PathBuf, tokio::fs::File)>,
    len: u64,
}

impl Incoming {
    /// The queue id the message will have.
    pub fn id(&self) -> QueueId {
        self.id
    }

    /// The buffer to append text to; call [`Incoming::settle`] after appending.
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Bytes of text so far.
    pub fn len(&self) -> u64 {
        self.len + self.buf.len() as u64
    }

    /// True when no text has been written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Moves the buffered text to the file once it is large enough.
    pub async fn settle(&mut self, spool: &Spool) -> Result<(), SpoolError> {
        if self.buf.len() < SPILL_BYTES {
            return Ok(());
        }
        self.spill(spool).await
    }

    async fn spill(&mut self, spool: &Spool) -> Result<(), SpoolError> {
        use tokio::io::AsyncWriteExt;
        if self.file.is_none() {
            let path = spool.incoming_dir.join(self.id.to_string());
            let mut file = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .await
                .map_err(|e| SpoolError::io(&path, e))?;
            file.write_all(HEADER2)
                .await
                .map_err(|e| SpoolError::io(&path, e))?;
            self.file = Some((path, file));
        }
        if let Some((path, file)) = &mut self.file {
            file.write_all(&self.buf)
                .await
                .map_err(|e| SpoolError::io(path, e))?;
            self.len += self.buf.len() as u64;
            self.buf.clear();
            if self.buf.capacity() > 2 * SPILL_BYTES {
                self.buf.shrink_to(SPILL_BYTES);
            }
        }
        Ok(())
    }
}

/// The on-disk queue.
pub struct Spool {
    /// The open, locked `lock` file; `None` once unlocked.
    lock: Mutex<Option<File>>,
    shared: Arc<Shared>,
    incoming_dir: PathBuf,
    quarantine_dir: PathBuf,
    quarantined: u64,
    torn: u64,
    writer: Mutex<mpsc::Sender<Job>>,
    housekeeper: Mutex<Option<std::thread::JoinHandle<()>>>,
    last_id: AtomicU64,
}

impl fmt::Debug for Spool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spool")
            .field("queue_dir", &self.shared.queue_dir)
            .finish_non_exhaustive()
    }
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir` and recovers the messages queued
    /// there. Files that cannot be parsed are moved to `quarantine/` with a warning; the
    /// torn tail of a segment (never acknowledged) is skipped with a warning.
    pub fn open(dir: impl AsRef<Path>) -> Result<Spool, SpoolError> {
        let dir = dir.as_ref();
        // Before anything is read or removed: `incoming/` of a running relay is its
        // sessions' unacknowledged text, not leftovers.
        let lock = take_lock(dir)?;
        let queue_dir = dir.join("queue");
        let incoming_dir = dir.join("incoming");
        let quarantine_dir = dir.join("quarantine");
        for d in [&queue_dir, &incoming_dir, &quarantine_dir] {
            fs::create_dir_all(d).map_err(|e| SpoolError::io(d, e))?;
        }
        discard_incoming(&incoming_dir)?;
        let mut index = BTreeMap::new();
        let mut quarantined = 0;
        let entries = fs::read_dir(&queue_dir).map_err(|e| SpoolError::io(&queue_dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| SpoolError::io(&queue_dir, e))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let verdict = match name.parse::<QueueId>() {
                Err(e) => Err(e.to_string()),
                Ok(id) => match verify_with_retries(&path)? {
                    Ok(()) => Ok(id),
                    Err(reason) => Err(reason),
                },
            };
            match verdict {
                Ok(id) => {
                    index.insert(id, Location::File);
                }
                Err(reason) => {
                    let target = quarantine_dir.join(&name);
                    tracing::warn!(file = %path.display(), %reason, quarantine = %target.display(), "torn or unreadable spool file moved to quarantine");
                    fs::rename(&path, &target).map_err(|e| SpoolError::io(&path, e))?;
                    quarantined += 1;
                }
            }
        }
        let recovered = Segments::recover(&dir.join("segments"), &mut index)?;
        let last = index.keys().next_back().map(|id| id.0).unwrap_or(0);
        let shared = Arc::new(Shared {
            queue_dir,
            index: Mutex::new(index),
            segments: recovered.segments,
        });
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..WRITERS {
            let shared = shared.clone();
            let rx = rx.clone();
            std::thread::Builder::new()
                .name("spool-writer".into())
                .spawn(move || writer_loop(&shared, &rx))
                .map_err(|e| SpoolError::io(dir, e))?;
        }
        let housekeeper = {
            let shared = shared.clone();
            let tx = tx.clone();
            std::thread::Builder::new()
                .name("spool-segments".into())
                .spawn(move || housekeeping_loop(&shared, &tx))
                .map_err(|e| SpoolError::io(dir, e))?
        };
        Ok(Spool {
            lock: Mutex::new(Some(lock)),
            shared,
            incoming_dir,
            quarantine_dir,
            quarantined,
            torn: recovered.torn,
            writer: Mutex::new(tx),
            housekeeper: Mutex::new(Some(housekeeper)),
            last_id: AtomicU64::new(last),
        })
    }

    /// Releases the spool's lock, so another [`Spool::open`] of the directory (a relay
    /// started next in this process) succeeds while tasks of this one still let go of it.
    /// Call only once nothing writes through this spool any more.
    pub fn unlock(&self) {
        self.stop_housekeeping();
        let file = self.lock.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(file) = file {
            let _ = file.unlock();
        }
    }

    /// Stops the thread that prepares and compacts segments (it writes to them).
    fn stop_housekeeping(&self) {
        self.shared.segments.stop();
        let handle = self
            .housekeeper
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }

    /// A new unique, time-ordered queue id.
    pub fn new_id(&self) -> QueueId {
        QueueId::next_after(&self.last_id)
    }

    /// Writes the message and waits until it is durable.
    pub async fn accept(&self, envelope: &Envelope, data: &[u8]) -> Result<QueueId, SpoolError> {
        let mut incoming = self.begin(envelope.queue_id);
        incoming.buf.extend_from_slice(data);
        self.commit(envelope, incoming).await
    }

    /// Starts the text of message `id` (from [`Spool::new_id`]).
    pub fn begin(&self, id: QueueId) -> Incoming {
        Incoming {
            id,
            buf: Vec::new(),
            file: None,
            len: 0,
        }
    }

    /// Throws away a message whose text was refused.
    pub async fn discard(&self, incoming: Incoming) {
        if let Some((path, file)) = incoming.file {
            drop(file);
            if let Err(e) = tokio::fs::remove_file(&path).await {
                tracing::warn!(file = %path.display(), error = %e, "cannot remove a refused message's text");
            }
        }
    }

    /// Makes the streamed message durable with `envelope` (whose `queue_id` must be the
    /// incoming id) and waits until it is: a record in a segment, flushed, for a message
    /// that stayed in memory; a file in `queue/`, flushed with its directory, for one that
    /// went to `incoming/`.
    pub async fn commit(
        &self,
        envelope: &Envelope,
        mut incoming: Incoming,
    ) -> Result<QueueId, SpoolError> {
        let id = envelope.queue_id;
        let json = serde_json::to_vec(envelope).map_err(|e| SpoolError::Corrupt {
            path: self.shared.path_of(id),
            reason: e.to_string(),
        })?;
        let data_len = incoming.len();
        let content = if incoming.file.is_none()
            && segments::RECORD_HEADER + json.len() + incoming.buf.len() <= segments::MAX_RECORD
        {
            Content::Record(segments::encode(id, &json, &incoming.buf))
        } else if incoming.file.is_none() {
            Content::Bytes(single_file(&json, &incoming.buf))
        } else {
            use tokio::io::AsyncWriteExt;
            let trailer = format!("\nEND {data_len:016x} {:016x}\n", json.len());
            if let Err(e) = incoming.spill(self).await {
                self.discard(incoming).await;
                return Err(e);
            }
            let Some((path, mut file)) = incoming.file.take() else {
                return Err(SpoolError::WriterStopped);
            };
            // tokio writes in the background: flush so the writer thread sees every byte.
            let flushed = file.flush().await.map_err(|e| SpoolError::io(&path, e));
            drop(file);
            if let Err(e) = flushed {
                let _ = tokio::fs::remove_file(&path).await;
                return Err(e);
            }
            let mut tail = json;
            tail.extend_from_slice(trailer.as_bytes());
            Content::Spilled {
                incoming: path,
                tail,
            }
        };
        let (done, wait) = oneshot::channel();
        let job = Job { id, content, done };
        self.writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job)
            .map_err(|_| SpoolError::WriterStopped)?;
        // The writer puts the message in the index before it answers: should this
        // session go away now, the message is queued all the same.
        wait.await.map_err(|_| SpoolError::WriterStopped)??;
        Ok(id)
    }

    /// Where message `id` is now.
    fn location(&self, id: QueueId) -> Result<Location, SpoolError> {
        self.shared
            .index()
            .get(&id)
            .cloned()
            .ok_or(SpoolError::NotFound(id))
    }

    /// The envelope (JSON) and text of a message in a segment. Compaction may move it
    /// between the look-up and the read; the record's checks then fail and the look-up is
    /// made again.
    fn read_record(&self, id: QueueId) -> Result<Option<segments::Record>, SpoolError> {
        let mut last = String::new();
        for _ in 0..3 {
            let Location::Segment {
                segment, offset, ..
            } = self.location(id)?
            else {
                return Ok(None);
            };
            match segment.read_record(offset, id) {
                Ok(record) => return Ok(Some(record)),
                Err(reason) => last = reason,
            }
        }
        // Still in the index, still not readable: a damaged record.
        match self.location(id)? {
            Location::Segment { segment, .. } => Err(SpoolError::Corrupt {
                path: segment.path.clone(),
                reason: last,
            }),
            Location::File => Ok(None),
        }
    }

    /// Reads a queued message back.
    pub fn read(&self, id: QueueId) -> Result<(Envelope, Vec<u8>), SpoolError> {
        if let Some(record) = self.read_record(id)? {
            let env = parse_envelope(&record.envelope, &self.shared.segments_path(id))?;
            debug_assert_eq!(record.id, id);
            return Ok((env, record.text));
        }
        let path = self.shared.path_of(id);
        let bytes = match fs::read(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(SpoolError::NotFound(id)),
            other => other.map_err(|e| SpoolError::io(&path, e))?,
        };
        let (env, data) = parse(&bytes).map_err(|reason| SpoolError::Corrupt {
            path: path.clone(),
            reason,
        })?;
        let env = parse_envelope(env, &path)?;
        Ok((env, data.to_vec()))
    }

    /// Removes a message (delivered or bounced). The removal is not flushed: should the
    /// machine fail before it reaches the disk, the message is delivered once more (at
    /// least once), which costs less than a disk flush per delivered message.
    pub fn remove(&self, id: QueueId) -> Result<(), SpoolError> {
        let location = self
            .shared
            .index()
            .remove(&id)
            .ok_or(SpoolError::NotFound(id))?;
        match location {
            Location::Segment {
                segment,
                offset,
                bytes,
            } => {
                self.shared.segments.release(&segment, offset, bytes, true);
                Ok(())
            }
            Location::File => {
                let path = self.shared.path_of(id);
                match fs::remove_file(&path) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Err(SpoolError::NotFound(id)),
                    other => other.map_err(|e| SpoolError::io(&path, e)),
                }
            }
        }
    }

    /// Queued messages, oldest first.
    pub fn list(&self) -> Vec<QueueId> {
        self.shared.index().keys().copied().collect()
    }

    /// Number of queued messages.
    pub fn depth(&self) -> usize {
        self.shared.index().len()
    }

    /// Where unreadable files go.
    pub fn quarantine_dir(&self) -> &Path {
        &self.quarantine_dir
    }

    /// Files moved to quarantine when the spool was opened.
    pub fn quarantined_at_open(&self) -> u64 {
        self.quarantined
    }

    /// Segments whose torn tail was skipped when the spool was opened.
    pub fn torn_at_open(&self) -> u64 {
        self.torn
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.stop_housekeeping();
    }
}

impl Shared {
    /// Names the segments directory in errors about a record of `id`.
    fn segments_path(&self, id: QueueId) -> PathBuf {
        self.queue_dir
            .with_file_name("segments")
            .join(id.to_string())
    }
}

/// A message file of the streamed layout: header line, text, envelope, trailer.
fn single_file(json: &[u8], text: &[u8]) -> Vec<u8> {
    let trailer = format!("\nEND {:016x} {:016x}\n", text.len(), json.len());
    debug_assert_eq!(trailer.len(), TRAILER2_LEN);
    let mut bytes = Vec::with_capacity(HEADER2.len() + text.len() + json.len() + TRAILER2_LEN);
    bytes.extend_from_slice(HEADER2);
    bytes.extend_from_slice(text);
    bytes.extend_from_slice(json);
    bytes.extend_from_slice(trailer.as_bytes());
    bytes
}

fn parse_envelope(json: &[u8], path: &Path) -> Result<Envelope, SpoolError> {
    serde_json::from_slice(json).map_err(|e| SpoolError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Takes the next batch: waits for one job, then adds every job already waiting.
fn next_batch(rx: &Mutex<mpsc::Receiver<Job>>) -> Option<Vec<Job>> {
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

fn writer_loop(shared: &Shared, rx: &Mutex<mpsc::Receiver<Job>>) {
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

/// The same error again, for every job of a batch that failed as one.
fn again(e: &SpoolError) -> SpoolError {
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

/// Writes whole files into `queue/` and indexes them once durable.
fn write_file_jobs(shared: &Shared, jobs: Vec<Job>) {
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
    let written = write_batch(&shared.queue_dir, &to_write);
    for (i, result) in positions.into_iter().zip(written) {
        results[i] = Some(result);
    }
    for (job, result) in jobs.into_iter().zip(results) {
        let result = result.unwrap_or(Err(SpoolError::WriterStopped));
        if result.is_err() {
            // Only a file this job created or moved in: `create_new` refused any other,
            // so an existing message of the same name is never touched.
            if !matches!(result, Err(SpoolError::Exists(_))) {
                let _ = fs::remove_file(shared.path_of(job.id));
            }
        } else {
            shared.index().insert(job.id, Location::File);
        }
        if let (Content::Spilled { incoming, .. }, Err(_)) = (&job.content, &result) {
            let _ = fs::remove_file(incoming);
        }
        // The session may have gone away; the message then stays queued regardless.
        let _ = job.done.send(result);
    }
}

/// Appends a batch of records to this writer's active segment (sealing it and taking a
/// ready one when the batch does not fit), flushes once per segment written, then
/// indexes every record and answers its session.
fn write_records(shared: &Shared, active: &mut Option<(Arc<Segment>, u64)>, jobs: Vec<Job>) {
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
            match shared.segments.take_ready() {
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
        match segments::append(&g.segment, g.start, &mut g.records) {
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
fn relocated(
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

/// Keeps ready segments at hand, deletes surplus free ones, and compacts sealed segments
/// that little live mail pins (each pass moves at most [`COMPACT_BATCH`] records).
fn housekeeping_loop(shared: &Shared, tx: &mpsc::Sender<Job>) {
    while shared.segments.wait(Duration::from_secs(2)) {
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
                    return;
                }
            }
        }
    }
}

/// Writes every file of a batch (page cache only), then flushes the files' data and the
/// directory's new names at the same time: both must be durable before the `250`, and
/// neither has to wait for the other. File flushes run on up to [`SYNC_THREADS`] threads.
/// One result per job, in order.
fn write_batch(dir: &Path, batch: &[(PathBuf, &Content)]) -> Vec<Result<(), SpoolError>> {
    let mut results: Vec<Result<(), SpoolError>> = Vec::with_capacity(batch.len());
    let mut to_sync: Vec<(usize, File)> = Vec::with_capacity(batch.len());
    for (index, (path, content)) in batch.iter().enumerate() {
        match create_and_write(path, content) {
            Ok(file) => {
                to_sync.push((index, file));
                results.push(Ok(()));
            }
            Err(e) => results.push(Err(e)),
        }
    }
    if to_sync.is_empty() {
        return results;
    }
    let per_thread = to_sync.len().div_ceil(SYNC_THREADS);
    let sync_chunk = |chunk: &[(usize, File)]| -> Vec<(usize, Result<(), SpoolError>)> {
        chunk
            .iter()
            .map(|(index, file)| {
                let path = &batch[*index].0;
                (
                    *index,
                    file.sync_data().map_err(|e| SpoolError::io(path, e)),
                )
            })
            .collect()
    };
    let (synced, dir_synced) = std::thread::scope(|scope| {
        let spawn = |name: &str| std::thread::Builder::new().name(name.into());
        // One directory fsync makes every new name of the batch durable.
        let dir_thread = spawn("spool-dirsync").spawn_scoped(scope, || sync_dir(dir));
        let mut synced = Vec::with_capacity(to_sync.len());
        let mut threads = Vec::new();
        let mut chunks = to_sync.chunks(per_thread);
        // The first share runs here; the others on their own threads.
        let first = chunks.next();
        for chunk in chunks {
            match spawn("spool-sync").spawn_scoped(scope, move || sync_chunk(chunk)) {
                Ok(t) => threads.push((chunk, t)),
                Err(_) => synced.extend(sync_chunk(chunk)),
            }
        }
        if let Some(chunk) = first {
            synced.extend(sync_chunk(chunk));
        }
        for (chunk, t) in threads {
            match t.join() {
                Ok(r) => synced.extend(r),
                Err(_) => synced.extend(chunk.iter().map(|(index, _)| {
                    let path = &batch[*index].0;
                    (
                        *index,
                        Err(SpoolError::io(
                            path,
                            io::Error::other("spool sync thread panicked"),
                        )),
                    )
                })),
            }
        }
        let dir_synced = match dir_thread {
            Ok(t) => t.join().unwrap_or_else(|_| {
                Err(SpoolError::io(
                    dir,
                    io::Error::other("spool sync thread panicked"),
                ))
            }),
            Err(_) => sync_dir(dir),
        };
        (synced, dir_synced)
    });
    for (index, result) in synced {
        results[index] = result;
    }
    if let Err(e) = dir_synced {
        for (index, _) in &to_sync {
            if results[*index].is_ok() {
                results[*index] = Err(match &e {
                    SpoolError::Full => SpoolError::Full,
                    other => SpoolError::Io {
                        path: dir.to_path_buf(),
                        source: io::Error::other(other.to_string()),
                    },
                });
            }
        }
    }
    results
}

/// Creates a message file and writes it, or completes a streamed one and moves it into
/// the queue (not flushed yet).
fn create_and_write(path: &Path, content: &Content) -> Result<File, SpoolError> {
    match content {
        Content::Bytes(bytes) => {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(|e| create_error(path, e))?;
            file.write_all(bytes).map_err(|e| SpoolError::io(path, e))?;
            Ok(file)
        }
        Content::Spilled { incoming, tail } => {
            let mut file = OpenOptions::new()
                .append(true)
                .open(incoming)
                .map_err(|e| SpoolError::io(incoming, e))?;
            file.write_all(tail)
                .map_err(|e| SpoolError::io(incoming, e))?;
            // No replace: a name already in the queue belongs to another message.
            if path.exists() {
                return Err(SpoolError::Exists(path.to_path_buf()));
            }
            fs::rename(incoming, path).map_err(|e| SpoolError::io(path, e))?;
            Ok(file)
        }
        Content::Record(_) | Content::Relocate { .. } => Err(SpoolError::WriterStopped),
    }
}

fn create_error(path: &Path, e: io::Error) -> SpoolError {
    if e.kind() == io::ErrorKind::AlreadyExists {
        SpoolError::Exists(path.to_path_buf())
    } else {
        SpoolError::io(path, e)
    }
}

/// Removes the text of messages that were being received when the last run ended: none
/// of them was acknowledged.
fn discard_incoming(dir: &Path) -> Result<(), SpoolError> {
    let mut removed = 0;
    for entry in fs::read_dir(dir).map_err(|e| SpoolError::io(dir, e))? {
        let path = entry.map_err(|e| SpoolError::io(dir, e))?.path();
        fs::remove_file(&path).map_err(|e| SpoolError::io(&path, e))?;
        removed += 1;
    }
    if removed > 0 {
        tracing::info!(
            removed,
            "discarded the partial text of messages never acknowledged"
        );
    }
    Ok(())
}

/// Verifies a queued file: `Ok(Ok(()))` intact, `Ok(Err(reason))` provably torn or
/// unparsable, `Err` an I/O error that persisted over [`RECOVERY_TRIES`] tries.
fn verify_with_retries(path: &Path) -> Result<Result<(), String>, SpoolError> {
    let mut tries = 0;
    loop {
        match verify_file(path) {
            Ok(()) => return Ok(Ok(())),
            Err(SpoolError::Corrupt { reason, .. }) => return Ok(Err(reason)),
            Err(e) => {
                tries += 1;
                if tries >= RECOVERY_TRIES {
                    return Err(e);
                }
                tracing::warn!(file = %path.display(), error = %e, "cannot read a spool file; trying again");
                std::thread::sleep(std::time::Duration::from_millis(100 * u64::from(tries)));
            }
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SpoolError::io(dir, e))
}

/// Where the envelope JSON and the message bytes lie in a file of `len` bytes, given its
/// first bytes `head` (at least the header line) and its last [`TRAILER2_LEN`] bytes
/// `tail`. Every sum is checked: lengths from a torn or hostile file cannot overflow into a
/// huge allocation.
fn layout(head: &[u8], tail: &[u8], len: u64) -> Result<(Range, Range), String> {
    if head.starts_with(HEADER2) {
        let text = std::str::from_utf8(tail).map_err(|_| "trailer is not text")?;
        let rest = text
            .strip_prefix("\nEND ")
            .and_then(|r| r.strip_suffix('\n'))
            .ok_or("missing END trailer")?;
        let (data, env) = rest.split_once(' ').ok_or("bad trailer")?;
        let hex = |s: &str| {
            (s.len() == 16)
                .then(|| u64::from_str_radix(s, 16).ok())
                .flatten()
                .ok_or_else(|| "bad trailer lengths".to_string())
        };
        let (data_len, env_len) = (hex(data)?, hex(env)?);
        let start = HEADER2.len() as u64;
        let expected = start
            .checked_add(data_len)
            .and_then(|n| n.checked_add(env_len))
            .and_then(|n| n.checked_add(TRAILER2_LEN as u64))
            .ok_or("lengths overflow")?;
        if expected != len {
            return Err(format!("truncated: {len} bytes, expected {expected}"));
        }
        let env_start = start + data_len;
        return Ok((env_start..env_start + env_len, start..start + data_len));
    }
    let nl = head
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no header line")?;
    let (env_len, data_len) = parse_header(&head[..nl])?;
    let start = nl as u64 + 1;
    let expected = start
        .checked_add(env_len)
        .and_then(|n| n.checked_add(data_len))
        .and_then(|n| n.checked_add(TRAILER.len() as u64))
        .ok_or("lengths overflow")?;
    if expected != len {
        return Err(format!("truncated: {len} bytes, expected {expected}"));
    }
    if !tail.ends_with(TRAILER) {
        return Err("missing END trailer".into());
    }
    Ok((
        start..start + env_len,
        start + env_len..start + env_len + data_len,
    ))
}

type Range = std::ops::Range<u64>;

fn slice<'a>(bytes: &'a [u8], r: &Range) -> &'a [u8] {
    // `layout` checked both ends against the length of `bytes`.
    &bytes[r.start as usize..r.end as usize]
}

/// Splits a spool file into envelope JSON and message bytes.
fn parse(bytes: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let tail = &bytes[bytes.len().saturating_sub(TRAILER2_LEN)..];
    let (env, data) = layout(bytes, tail, bytes.len() as u64)?;
    Ok((slice(bytes, &env), slice(bytes, &data)))
}

fn parse_header(line: &[u8]) -> Result<(u64, u64), String> {
    let text = std::str::from_utf8(line).map_err(|_| "header is not text")?;
    let mut parts = text.split(' ');
    if parts.next() != Some(MAGIC) {
        return Err("not a spool file".into());
    }
    let mut num = || -> Result<u64, String> {
        parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| "bad header lengths".to_string())
    };
    Ok((num()?, num()?))
}

/// Checks a spool file without reading the message bytes into memory.
fn verify_file(path: &Path) -> Result<(), SpoolError> {
    locate(path).map(|_| ())
}

/// The envelope of a spool file and where its message bytes lie, read without reading
/// the message bytes. Either layout: both keep the text in one piece.
fn locate(path: &Path) -> Result<(Envelope, Range), SpoolError> {
    let corrupt = |reason: String| SpoolError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = File::open(path).map_err(|e| SpoolError::io(path, e))?;
    let len = file.metadata().map_err(|e| SpoolError::io(path, e))?.len();
    let mut head = vec![0u8; 128.min(len) as usize];
    file.read_exact(&mut head)
        .map_err(|e| SpoolError::io(path, e))?;
    let mut tail = vec![0u8; (TRAILER2_LEN as u64).min(len) as usize];
    file.seek(SeekFrom::Start(len - tail.len() as u64))
        .and_then(|_| file.read_exact(&mut tail))
        .map_err(|e| SpoolError::io(path, e))?;
    let (env, data) = layout(&head, &tail, len).map_err(corrupt)?;
    // `layout` proved the envelope lies inside the file.
    let mut json = vec![0u8; (env.end - env.start) as usize];
    file.seek(SeekFrom::Start(env.start))
        .and_then(|_| file.read_exact(&mut json))
        .map_err(|e| SpoolError::io(path, e))?;
    let envelope = serde_json::from_slice::<Envelope>(&json).map_err(|e| corrupt(e.to_string()))?;
    Ok((envelope, data))
}

/// Delivery reads, re-queues (DSNs) and removes messages through the spool. The queue
/// manager calls these on blocking threads, so the async group-commit write is driven to
/// completion on the current runtime. `read` gives the envelope and the byte range of the
/// text in the message file: delivery streams the text from there, never holding it whole.
impl crate::delivery::queue::MessageStore for Spool {
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(Spool::list(self).iter().map(|id| id.to_string()).collect())
    }

    fn read(&self, queue_id: &str) -> io::Result<crate::delivery::queue::StoredMessage> {
        let id = parse_id(queue_id)?;
        // A record is small (it was received in memory): read whole, checked.
        if let Some(record) = self.read_record(id).map_err(into_io)? {
            let envelope = parse_envelope(&record.envelope, &self.shared.segments_path(id))
                .map_err(into_io)?;
            return Ok(crate::delivery::queue::StoredMessage {
                envelope,
                text: crate::delivery::text::MessageText::bytes(record.text),
            });
        }
        let path = self.shared.path_of(id);
        let (envelope, data) = match locate(&path) {
            Err(SpoolError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Err(into_io(SpoolError::NotFound(id)));
            }
            other => other.map_err(into_io)?,
        };
        Ok(crate::delivery::queue::StoredMessage {
            envelope,
            text: crate::delivery::text::MessageText::file(path, data.start, data.end - data.start),
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
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| io::Error::other(format!("no runtime to write the spool: {e}")))?;
        let id = runtime
            .block_on(self.accept(&envelope, data))
            .map_err(into_io)?;
        Ok(id.to_string())
    }

    fn remove(&self, queue_id: &str) -> io::Result<()> {
        Spool::remove(self, parse_id(queue_id)?).map_err(into_io)
    }
}

fn parse_id(queue_id: &str) -> io::Result<QueueId> {
    queue_id.parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{queue_id:?} is not a queue id"),
        )
    })
}

fn into_io(e: SpoolError) -> io::Error {
    match e {
        SpoolError::NotFound(id) => io::Error::new(
            io::ErrorKind::NotFound,
            format!("no message {id} in the spool"),
        ),
        SpoolError::Io { source, .. } => source,
        other => io::Error::other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn envelope(spool: &Spool) -> Envelope {
        Envelope {
            queue_id: spool.new_id(),
            mail_from: "postmaster@acme.example".into(),
            original_mail_from: Some("x@other.example".into()),
            rcpts: vec!["a@dest.example".into(), "b@dest.example".into()],
            client_ip: "127.0.0.1".parse().unwrap(),
            helo: "client.acme.example".into(),
            auth_identity: None,
            tls: None,
            received_at: UNIX_EPOCH,
            size: 5,
            smtputf8: true,
            eight_bit_mime: true,
        }
    }

    #[tokio::test]
    async fn accepted_messages_survive_reopen_and_corrupt_files_are_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let env = envelope(&spool);
        let id = spool.accept(&env, b"hello").await.unwrap();
        let second = envelope(&spool);
        spool.accept(&second, b"world").await.unwrap();
        assert!(id < second.queue_id, "queue ids are time ordered");
        // A truncated file, as a crash in the middle of a write leaves it.
        let broken = QueueId(1);
        fs::write(
            dir.path().join("queue").join(broken.to_string()),
            b"RELAYSPOOL1 10 10\n{",
        )
        .unwrap();
        drop(spool);

        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.list(), vec![id, second.queue_id]);
        assert_eq!(spool.read(id).unwrap(), (env, b"hello".to_vec()));
        assert!(
            dir.path()
                .join("quarantine")
                .join(broken.to_string())
                .exists()
        );
        spool.remove(id).unwrap();
        assert_eq!(spool.list(), vec![second.queue_id]);
        assert!(matches!(spool.read(id), Err(SpoolError::NotFound(_))));
    }

    #[test]
    fn disk_full_maps_to_452() {
        let e = SpoolError::io(Path::new("q"), io::Error::from_raw_os_error(28));
        assert!(matches!(e, SpoolError::Full));
        assert_eq!(
            e.reply().to_string(),
            "452 4.3.1 Insufficient system storage\r\n"
        );
        let other = SpoolError::io(Path::new("q"), io::Error::from_raw_os_error(5));
        assert_eq!(
            other.reply().to_string(),
            "451 4.3.0 Local error in processing: message not queued\r\n"
        );
    }

    #[tokio::test]
    async fn concurrent_accepts_all_become_durable() {
        let dir = tempfile::tempdir().unwrap();
        let spool = std::sync::Arc::new(Spool::open(dir.path()).unwrap());
        let mut tasks = Vec::new();
        for i in 0..50u32 {
            let spool = spool.clone();
            tasks.push(tokio::spawn(async move {
                let env = envelope(&spool);
                spool
                    .accept(&env, format!("m{i}").as_bytes())
                    .await
                    .unwrap()
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        drop(spool);
        assert_eq!(Spool::open(dir.path()).unwrap().list().len(), 50);
    }

    #[tokio::test]
    async fn a_large_message_is_streamed_through_a_file_and_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut env = envelope(&spool);
        let mut incoming = spool.begin(env.queue_id);
        let mut expected = Vec::new();
        for i in 0..40u32 {
            let chunk = format!("line {i:04} {}\r\n", "x".repeat(20_000)).into_bytes();
            expected.extend_from_slice(&chunk);
            incoming.buffer().extend_from_slice(&chunk);
            incoming.settle(&spool).await.unwrap();
            assert!(
                incoming.buffer().len() < SPILL_BYTES,
                "memory stays bounded"
            );
        }
        assert!(
            fs::read_dir(dir.path().join("incoming")).unwrap().count() == 1,
            "the text went to a file while it arrived"
        );
        env.size = incoming.len();
        spool.commit(&env, incoming).await.unwrap();
        assert_eq!(
            fs::read_dir(dir.path().join("incoming")).unwrap().count(),
            0
        );
        drop(spool);
        let spool = Spool::open(dir.path()).unwrap();
        let (read_env, data) = spool.read(env.queue_id).unwrap();
        assert_eq!(read_env, env);
        assert_eq!(data, expected);
    }

    #[tokio::test]
    async fn a_refused_message_leaves_nothing_and_leftovers_of_a_crash_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut incoming = spool.begin(spool.new_id());
        incoming
            .buffer()
            .extend_from_slice(&vec![b'x'; SPILL_BYTES + 1]);
        incoming.settle(&spool).await.unwrap();
        spool.discard(incoming).await;
        assert_eq!(
            fs::read_dir(dir.path().join("incoming")).unwrap().count(),
            0
        );
        // A crash while a message was arriving leaves its partial text behind.
        fs::write(
            dir.path().join("incoming").join("00000000000000AA"),
            b"partial",
        )
        .unwrap();
        drop(spool);
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(
            fs::read_dir(dir.path().join("incoming")).unwrap().count(),
            0
        );
        assert!(spool.list().is_empty());
        assert_eq!(spool.quarantined_at_open(), 0);
    }

    #[tokio::test]
    async fn files_of_the_first_layout_are_still_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let env = envelope(&spool);
        let json = serde_json::to_vec(&env).unwrap();
        let mut old = format!("{MAGIC} {} 5\n", json.len()).into_bytes();
        old.extend_from_slice(&json);
        old.extend_from_slice(b"hello");
        old.extend_from_slice(TRAILER);
        fs::write(
            dir.path().join("queue").join(env.queue_id.to_string()),
            &old,
        )
        .unwrap();
        drop(spool);
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.read(env.queue_id).unwrap(), (env, b"hello".to_vec()));
    }

    /// Delivery reads the text from its place in the file, for both layouts.
    #[tokio::test]
    async fn delivery_streams_the_text_of_either_layout_from_the_file() {
        use crate::delivery::queue::MessageStore;
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let env = envelope(&spool);
        spool
            .accept(&env, b"Subject: new\r\n\r\nhello")
            .await
            .unwrap();
        let old_env = envelope(&spool);
        drop(spool);
        let json = serde_json::to_vec(&old_env).unwrap();
        let mut old = format!("{MAGIC} {} 5\n", json.len()).into_bytes();
        old.extend_from_slice(&json);
        old.extend_from_slice(b"older");
        old.extend_from_slice(TRAILER);
        fs::write(
            dir.path().join("queue").join(old_env.queue_id.to_string()),
            &old,
        )
        .unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        for (e, want) in [
            (&env, &b"Subject: new\r\n\r\nhello"[..]),
            (&old_env, &b"older"[..]),
        ] {
            let stored = MessageStore::read(&spool, &e.queue_id.to_string()).unwrap();
            assert_eq!(stored.envelope, *e);
            assert_eq!(stored.text.len(), want.len() as u64);
            let mut got = Vec::new();
            stored
                .text
                .open()
                .await
                .unwrap()
                .read_to_end(&mut got)
                .await
                .unwrap();
            assert_eq!(got, want);
        }
        spool.remove(env.queue_id).unwrap();
        let gone = MessageStore::read(&spool, &env.queue_id.to_string()).unwrap_err();
        assert_eq!(gone.kind(), io::ErrorKind::NotFound);
    }

    /// Lengths chosen so that their sum wraps around to the file's real length: an
    /// unchecked sum passes the length check and then allocates exabytes (abort).
    #[test]
    fn lengths_that_overflow_are_a_torn_file_not_an_abort() {
        let dir = tempfile::tempdir().unwrap();
        let queue = dir.path().join("queue");
        fs::create_dir_all(&queue).unwrap();
        let header_for = |env: u64, data: u64| format!("{MAGIC} {env} {data}\n");
        // File length L = header + 5 (trailer); want header_len + env + data + 5 ≡ L (mod 2^64).
        let data = 1u64;
        let probe = header_for(u64::MAX, data);
        let env = (u64::MAX - data).wrapping_add(1); // env + data = 2^64 → 0 after wrap
        let header = header_for(env, data);
        assert_eq!(probe.len(), header.len(), "same digits, same length");
        let mut bytes = header.into_bytes();
        bytes.extend_from_slice(TRAILER);
        fs::write(queue.join("0000000000000001"), &bytes).unwrap();
        // A streamed-layout file whose trailer lengths overflow likewise.
        let mut v2 = HEADER2.to_vec();
        v2.extend_from_slice(format!("\nEND {:016x} {:016x}\n", u64::MAX, 2u64).as_bytes());
        fs::write(queue.join("0000000000000002"), &v2).unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        assert!(spool.list().is_empty());
        assert_eq!(spool.quarantined_at_open(), 2);
        assert!(dir.path().join("quarantine/0000000000000001").exists());
    }

    /// An entry that cannot be read (here a directory where a file should be) is not
    /// proof of a torn message: the open fails instead of quarantining it.
    #[test]
    fn an_io_error_during_recovery_fails_the_open_and_quarantines_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let queue = dir.path().join("queue");
        fs::create_dir_all(queue.join("0000000000000003")).unwrap();
        let e = Spool::open(dir.path()).unwrap_err();
        assert!(matches!(e, SpoolError::Io { .. }), "{e}");
        assert!(queue.join("0000000000000003").exists());
        assert_eq!(
            fs::read_dir(dir.path().join("quarantine")).unwrap().count(),
            0
        );
    }

    #[test]
    fn a_second_open_of_a_spool_in_use_fails_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = Spool::open(dir.path()).unwrap();
        let e = Spool::open(dir.path()).unwrap_err();
        let SpoolError::Locked { holder, .. } = &e else {
            panic!("{e}");
        };
        assert!(
            holder.starts_with(&format!("pid {} on host ", std::process::id())),
            "{holder}"
        );
        let message = e.to_string();
        assert!(
            message.contains("in use by another relay process"),
            "{message}"
        );
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );
        // Once the first lets go (unlocked, or dropped), the spool opens again.
        first.unlock();
        let second = Spool::open(dir.path()).unwrap();
        drop(first);
        drop(second);
        Spool::open(dir.path()).unwrap();
    }

    /// Two writers with one queue id: the second fails, and the first's acknowledged
    /// message is left alone (the old clean-up deleted it).
    #[tokio::test]
    async fn a_queue_id_collision_never_deletes_the_other_message() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let env = envelope(&spool);
        spool.accept(&env, b"first").await.unwrap();
        let e = spool.accept(&env, b"second").await.unwrap_err();
        assert!(matches!(e, SpoolError::Exists(_)), "{e}");
        assert_eq!(spool.read(env.queue_id).unwrap().1, b"first");
    }

    /// Where the last record written to a segment ends, and that segment's file.
    fn tail_of(spool: &Spool, id: QueueId) -> (PathBuf, u64, u64) {
        match spool.location(id).unwrap() {
            Location::Segment {
                segment,
                offset,
                bytes,
            } => (segment.path.clone(), segment.seq(), offset + bytes),
            Location::File => panic!("{id} is not in a segment"),
        }
    }

    /// A crash in the middle of a batch leaves part of a record after the last flushed
    /// one (its header whole, its text cut short, or its checksum wrong). Recovery skips
    /// that tail, keeps every record before it, and the spool goes on taking mail.
    #[tokio::test]
    async fn a_torn_segment_tail_is_skipped_and_no_acknowledged_record_is_lost() {
        use std::os::unix::fs::FileExt;
        for tear in ["cut short", "bad checksum", "half a header"] {
            let dir = tempfile::tempdir().unwrap();
            let spool = Spool::open(dir.path()).unwrap();
            let mut acked = Vec::new();
            for i in 0..3u32 {
                let env = envelope(&spool);
                spool
                    .accept(&env, format!("message {i}").as_bytes())
                    .await
                    .unwrap();
                acked.push(env);
            }
            // One writer at a time here, so every record went to the same segment only
            // when the same writer took it: tear the tail of the last one's segment.
            let last = acked[2].queue_id;
            let (path, seq, end) = tail_of(&spool, last);
            drop(spool);
            let unacked = envelope(&Spool::open(dir.path()).unwrap());
            let json = serde_json::to_vec(&unacked).unwrap();
            let mut record = segments::encode(unacked.queue_id, &json, b"never acknowledged");
            record[8..16].copy_from_slice(&seq.to_le_bytes());
            let torn: Vec<u8> = match tear {
                "cut short" => record[..record.len() - 7].to_vec(),
                "bad checksum" => {
                    let n = record.len();
                    record[n - 1] ^= 0xff;
                    record
                }
                _ => record[..20].to_vec(),
            };
            let file = OpenOptions::new().write(true).open(&path).unwrap();
            file.write_all_at(&torn, end).unwrap();
            drop(file);

            let spool = Spool::open(dir.path()).unwrap();
            let want: Vec<QueueId> = acked.iter().map(|e| e.queue_id).collect();
            assert_eq!(spool.list(), want, "{tear}");
            for (i, env) in acked.iter().enumerate() {
                let (got, text) = spool.read(env.queue_id).unwrap();
                assert_eq!(&got, env, "{tear}");
                assert_eq!(text, format!("message {i}").into_bytes(), "{tear}");
            }
            assert_eq!(spool.torn_at_open(), 1, "{tear}");
            // New mail after the recovery goes to another segment and survives too.
            let after = envelope(&spool);
            spool.accept(&after, b"after the crash").await.unwrap();
            drop(spool);
            let spool = Spool::open(dir.path()).unwrap();
            assert_eq!(spool.depth(), 4, "{tear}");
            assert_eq!(spool.read(after.queue_id).unwrap().1, b"after the crash");
            assert!(matches!(
                spool.read(unacked.queue_id),
                Err(SpoolError::NotFound(_))
            ));
        }
    }

    /// A record damaged after its checks were written (a bit flip on the disk) is
    /// reported as corrupt on read, not delivered as other text.
    #[tokio::test]
    async fn a_damaged_record_reads_as_corrupt() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let env = envelope(&spool);
        spool.accept(&env, b"intact text").await.unwrap();
        let (path, _, end) = tail_of(&spool, env.queue_id);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(b"X", end - 3).unwrap();
        let e = spool.read(env.queue_id).unwrap_err();
        assert!(matches!(e, SpoolError::Corrupt { .. }), "{e}");
    }

    /// Segments whose every message was delivered are used again (a new header, no new
    /// file): a spool that keeps delivering what it takes keeps a bounded set of files.
    #[tokio::test]
    async fn delivered_segments_are_reused_and_files_stay_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let spool = std::sync::Arc::new(Spool::open(dir.path()).unwrap());
        let text = vec![b'x'; 200 * 1024];
        let bytes = || -> u64 {
            fs::read_dir(dir.path().join("segments"))
                .unwrap()
                .map(|e| e.unwrap().metadata().unwrap().len())
                .sum()
        };
        let mut made = Vec::new();
        let mut most = 0;
        for round in 0..4 {
            let mut tasks = Vec::new();
            for _ in 0..120 {
                let spool = spool.clone();
                let text = text.clone();
                tasks.push(tokio::spawn(async move {
                    let env = envelope(&spool);
                    spool.accept(&env, &text).await.unwrap()
                }));
            }
            let mut ids = Vec::new();
            for t in tasks {
                ids.push(t.await.unwrap());
            }
            for id in ids {
                spool.remove(id).unwrap();
            }
            assert_eq!(spool.depth(), 0, "round {round}");
            made.push(spool.shared.segments.made());
            most = most.max(bytes());
        }
        // Round 1 made the files for 24 MiB; rounds 2 to 4 mostly reuse them.
        assert!(
            made[3] - made[0] < made[0],
            "segment files made per round (cumulative): {made:?}"
        );
        // 24 MiB in flight, plus the writers' active segments and the spares.
        assert!(most <= 100 << 20, "{most} bytes of segments");
        drop(spool);
        assert!(Spool::open(dir.path()).unwrap().list().is_empty());
    }

    /// Compaction writes a live record again and lets the old copy go: the message reads
    /// back the same from its new place, and after a restart exists once.
    #[tokio::test]
    async fn a_relocated_record_replaces_the_old_copy() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let env = envelope(&spool);
        spool.accept(&env, b"keep me").await.unwrap();
        let Location::Segment {
            segment,
            offset,
            bytes,
        } = spool.location(env.queue_id).unwrap()
        else {
            panic!("not in a segment");
        };
        let record = segment.raw_record(offset, env.queue_id).unwrap();
        let (job, wait) = Job::relocate(env.queue_id, record, &segment, offset, bytes);
        spool.writer.lock().unwrap().send(job).unwrap();
        wait.await.unwrap().unwrap();
        let Location::Segment {
            offset: moved,
            segment: to,
            ..
        } = spool.location(env.queue_id).unwrap()
        else {
            panic!("not in a segment");
        };
        assert!(!(Arc::ptr_eq(&to, &segment) && moved == offset), "it moved");
        assert!(
            segment.read_record(offset, env.queue_id).is_err(),
            "old copy done"
        );
        assert_eq!(
            spool.read(env.queue_id).unwrap(),
            (env.clone(), b"keep me".to_vec())
        );
        drop((segment, to));
        drop(spool);
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.list(), vec![env.queue_id]);
        spool.remove(env.queue_id).unwrap();
        drop(spool);
        assert!(Spool::open(dir.path()).unwrap().list().is_empty());
    }
}
