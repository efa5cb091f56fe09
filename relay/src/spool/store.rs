//! The spool as the rest of the relay sees it: [`Spool::open`] (lock, recovery, writer
//! and housekeeping threads), the text of a message being received ([`Incoming`]),
//! [`Spool::commit`] (the `250` waits on it), reading, listing and removing messages, and
//! the [`MessageStore`](crate::delivery::queue::MessageStore) that delivery reads through.
//!
//! Not here: the on-disk forms (`segments`, `files`), group commit (`writer`).

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, mpsc};
use std::time::SystemTime;

use tokio::sync::oneshot;

use super::compaction::housekeeping_loop;
use super::error::SpoolError;
use super::files::{
    HEADER3, discard_incoming, locate, parse, parse_envelope, recover_files, single_file, trailer3,
};
use super::fsys::{FileRef, SpoolFs, StdFs};
use super::index::{Location, Shared};
use super::job::{Content, Job};
use super::lock::take_lock;
use super::segments::{self, Quarantine, SegmentConfig, Segments};
use super::writer::{WRITERS, writer_loop};
use crate::envelope::{Envelope, QueueId};

/// Message text kept in memory before it goes to a file in `incoming/`.
pub const SPILL_BYTES: usize = 256 * 1024;
/// The text of a message being received: in memory up to [`SPILL_BYTES`], then in a file
/// under `incoming/`. [`Spool::commit`] makes it a queued message;
/// [`Spool::discard`] throws it away.
#[derive(Debug)]
pub struct Incoming {
    pub(super) id: QueueId,
    pub(super) buf: Vec<u8>,
    /// The file in `incoming/` once the text outgrew memory.
    pub(super) file: Option<(PathBuf, FileRef)>,
    /// Bytes of text in the file.
    pub(super) len: u64,
    /// CRC-32 of the text in the file so far (the trailer's checksum starts from it).
    pub(super) crc: crc32fast::Hasher,
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

    pub(super) async fn spill(&mut self, spool: &Spool) -> Result<(), SpoolError> {
        let fs = spool.shared.fs.clone();
        let (path, file) = match self.file.take() {
            Some(f) => f,
            None => {
                let path = spool.incoming_dir.join(self.id.to_string());
                let fs = fs.clone();
                blocking(move || {
                    let file = fs.create_new(&path).map_err(|e| SpoolError::io(&path, e))?;
                    if let Err(e) = file.write_all_at(HEADER3, 0) {
                        let _ = fs.remove_file(&path);
                        return Err(SpoolError::io(&path, e));
                    }
                    Ok((path, file))
                })
                .await?
            }
        };
        // Written on a blocking thread, as tokio's files do, but without copying the text.
        let buf = std::mem::take(&mut self.buf);
        let at = HEADER3.len() as u64 + self.len;
        let (path, file, buf, written) = tokio::task::spawn_blocking(move || {
            let written = file.write_all_at(&buf, at);
            (path, file, buf, written)
        })
        .await
        .map_err(|e| SpoolError::io(&spool.incoming_dir, io::Error::other(e.to_string())))?;
        // Kept on failure too: a refused message's text is removed by `discard`.
        let failed = written.err().map(|e| SpoolError::io(&path, e));
        self.file = Some((path, file));
        if let Some(e) = failed {
            self.buf = buf;
            return Err(e);
        }
        self.crc.update(&buf);
        self.len += buf.len() as u64;
        self.buf = buf;
        self.buf.clear();
        if self.buf.capacity() > 2 * SPILL_BYTES {
            self.buf.shrink_to(SPILL_BYTES);
        }
        Ok(())
    }
}

/// Runs `f` on a blocking thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SpoolError> + Send + 'static,
) -> Result<T, SpoolError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SpoolError::Io {
            path: PathBuf::new(),
            source: io::Error::other(e.to_string()),
        })?
}

/// How a spool is opened: the defaults for a relay; tests change the file layer (a
/// simulated disk), the segment sizes, the writers and the housekeeping.
#[derive(Debug, Clone)]
pub(crate) struct SpoolOptions {
    /// The file layer every write goes through.
    pub(crate) fs: Arc<dyn SpoolFs>,
    pub(crate) segments: SegmentConfig,
    /// Writer threads.
    pub(crate) writers: usize,
    /// Run the housekeeping thread (ready segments, spares, compaction); without it, a
    /// test runs passes by hand ([`Spool::housekeep_now`]).
    pub(crate) housekeeping: bool,
    /// Take the spool's lock (a simulated disk has no real directory to lock).
    pub(crate) lock: bool,
    /// Flush a file batch's files and directory at once on threads of their own (off:
    /// one after the other, in one order, for a deterministic simulation).
    pub(crate) parallel_sync: bool,
}

impl Default for SpoolOptions {
    fn default() -> Self {
        Self {
            fs: Arc::new(StdFs),
            segments: SegmentConfig::default(),
            writers: WRITERS,
            housekeeping: true,
            lock: true,
            parallel_sync: true,
        }
    }
}

/// The on-disk queue.
pub struct Spool {
    /// The open, locked `lock` file; `None` once unlocked.
    pub(super) lock: Mutex<Option<File>>,
    pub(super) shared: Arc<Shared>,
    pub(super) incoming_dir: PathBuf,
    pub(super) quarantine_dir: PathBuf,
    pub(super) quarantined: u64,
    pub(super) torn: u64,
    pub(super) damaged: u64,
    pub(super) writer: Mutex<mpsc::Sender<Job>>,
    pub(super) housekeeper: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The writer threads: they end once every sender of jobs is gone (on drop).
    pub(super) writers: Mutex<Vec<std::thread::JoinHandle<()>>>,
    pub(super) last_id: AtomicU64,
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
        Self::open_with(dir, SpoolOptions::default())
    }

    /// [`Spool::open`] with other than the defaults.
    pub(crate) fn open_with(
        dir: impl AsRef<Path>,
        options: SpoolOptions,
    ) -> Result<Spool, SpoolError> {
        let dir = dir.as_ref();
        let fs = options.fs.clone();
        // Before anything is read or removed: `incoming/` of a running relay is its
        // sessions' unacknowledged text, not leftovers.
        let lock = if options.lock {
            Some(take_lock(dir)?)
        } else {
            None
        };
        let queue_dir = dir.join("queue");
        let incoming_dir = dir.join("incoming");
        let quarantine_dir = dir.join("quarantine");
        for d in [&queue_dir, &incoming_dir, &quarantine_dir] {
            fs.create_dir_all(d).map_err(|e| SpoolError::io(d, e))?;
        }
        discard_incoming(&*fs, &incoming_dir)?;
        let mut index = BTreeMap::new();
        let quarantined = recover_files(&*fs, &queue_dir, &quarantine_dir, &mut index)?;
        let quarantine = Quarantine {
            dir: &quarantine_dir,
        };
        let recovered = Segments::recover(
            fs.clone(),
            &dir.join("segments"),
            &quarantine,
            options.segments.clone(),
            &mut |id, record| match index.entry(id) {
                std::collections::btree_map::Entry::Occupied(_) => false,
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(Location::Segment {
                        segment: record.segment,
                        offset: record.offset,
                        bytes: record.bytes,
                    });
                    true
                }
            },
        )?;
        let last = index.keys().next_back().map(|id| id.0).unwrap_or(0);
        let shared = Arc::new(Shared {
            fs,
            parallel_sync: options.parallel_sync,
            queue_dir,
            index: Mutex::new(index),
            segments: recovered.segments,
        });
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut writers = Vec::with_capacity(options.writers.max(1));
        for _ in 0..options.writers.max(1) {
            let shared = shared.clone();
            let rx = rx.clone();
            writers.push(
                std::thread::Builder::new()
                    .name("spool-writer".into())
                    .spawn(move || writer_loop(&shared, &rx))
                    .map_err(|e| SpoolError::io(dir, e))?,
            );
        }
        let housekeeper = if options.housekeeping {
            let shared = shared.clone();
            let tx = tx.clone();
            Some(
                std::thread::Builder::new()
                    .name("spool-segments".into())
                    .spawn(move || housekeeping_loop(&shared, &tx))
                    .map_err(|e| SpoolError::io(dir, e))?,
            )
        } else {
            None
        };
        Ok(Spool {
            lock: Mutex::new(lock),
            shared,
            incoming_dir,
            quarantine_dir,
            quarantined,
            torn: recovered.torn,
            damaged: recovered.damaged,
            writer: Mutex::new(tx),
            housekeeper: Mutex::new(housekeeper),
            writers: Mutex::new(writers),
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
    pub(super) fn stop_housekeeping(&self) {
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

    /// One housekeeping pass (ready segments, spares, compaction), for a spool opened
    /// without its housekeeping thread. Blocks on the writers: call it outside an async
    /// context.
    #[cfg(test)]
    pub(crate) fn housekeep_now(&self) {
        let tx = self
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        super::compaction::housekeep_once(&self.shared, &tx);
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
            crc: crc32fast::Hasher::new(),
        }
    }

    /// Throws away a message whose text was refused.
    pub async fn discard(&self, incoming: Incoming) {
        if let Some((path, file)) = incoming.file {
            drop(file);
            let fs = self.shared.fs.clone();
            let removed =
                blocking(move || fs.remove_file(&path).map_err(|e| SpoolError::io(&path, e))).await;
            if let Err(e) = removed {
                tracing::warn!(error = %e, "cannot remove a refused message's text");
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
            && segments::RECORD_HEADER + json.len() + incoming.buf.len()
                <= self.shared.segments.max_record()
        {
            Content::Record(segments::encode(id, &json, &incoming.buf))
        } else if incoming.file.is_none() {
            Content::Bytes(single_file(&json, &incoming.buf))
        } else {
            if let Err(e) = incoming.spill(self).await {
                self.discard(incoming).await;
                return Err(e);
            }
            let Some((path, file)) = incoming.file.take() else {
                return Err(SpoolError::WriterStopped);
            };
            drop(file);
            let mut crc = incoming.crc.clone();
            crc.update(&json);
            let trailer = trailer3(data_len, json.len() as u64, crc.finalize());
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
    pub(super) fn location(&self, id: QueueId) -> Result<Location, SpoolError> {
        self.shared
            .index()
            .get(&id)
            .cloned()
            .ok_or(SpoolError::NotFound(id))
    }

    /// The envelope (JSON) and text of a message in a segment. Compaction may move it
    /// between the look-up and the read; the record's checks then fail and the look-up is
    /// made again.
    pub(super) fn read_record(&self, id: QueueId) -> Result<Option<segments::Record>, SpoolError> {
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
        let bytes = match read_whole(&*self.shared.fs, &path) {
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
                match self.shared.fs.remove_file(&path) {
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

    /// Damaged stretches of segments (records that failed their checks with valid records
    /// after them, unreadable headers before live records, segments too large to scan)
    /// copied to quarantine when the spool was opened; the records around them were kept.
    pub fn damaged_at_open(&self) -> u64 {
        self.damaged
    }
}

impl Drop for Spool {
    /// Stops the housekeeping thread, then lets the writers finish the batch they hold
    /// and end: nothing of the spool runs once it is dropped.
    fn drop(&mut self) {
        self.stop_housekeeping();
        let (closed, _) = mpsc::channel();
        drop(std::mem::replace(
            &mut *self.writer.lock().unwrap_or_else(|e| e.into_inner()),
            closed,
        ));
        let writers = std::mem::take(&mut *self.writers.lock().unwrap_or_else(|e| e.into_inner()));
        for w in writers {
            let _ = w.join();
        }
    }
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
        let (envelope, data) = match locate(&*self.shared.fs, &path) {
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

/// A whole file, read through the file layer.
fn read_whole(fs: &dyn SpoolFs, path: &Path) -> io::Result<Vec<u8>> {
    let file = fs.open_read(path)?;
    let len = usize::try_from(file.len()?).map_err(io::Error::other)?;
    let mut bytes = vec![0u8; len];
    file.read_exact_at(&mut bytes, 0)?;
    Ok(bytes)
}

pub(super) fn parse_id(queue_id: &str) -> io::Result<QueueId> {
    queue_id.parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{queue_id:?} is not a queue id"),
        )
    })
}

pub(super) fn into_io(e: SpoolError) -> io::Error {
    match e {
        SpoolError::NotFound(id) => io::Error::new(
            io::ErrorKind::NotFound,
            format!("no message {id} in the spool"),
        ),
        SpoolError::Io { source, .. } => source,
        other => io::Error::other(other.to_string()),
    }
}
