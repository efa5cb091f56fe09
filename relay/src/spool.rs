//! The durable spool: every accepted message is on disk, fsync'd, before `250` is sent.
//!
//! Layout under the spool directory: `queue/<QUEUE-ID>` holds one message (a header line,
//! the envelope as JSON, the message bytes, and an `END` trailer that proves the file is
//! complete); `quarantine/` receives files that fail to parse on recovery.
//!
//! Group commit: sessions hand their message to a writer thread (one of [`WRITERS`], which
//! take turns), which takes every message waiting at that moment as a batch, writes the
//! batch's files, then `fdatasync`s them on up to [`SYNC_THREADS`] threads side by side
//! (so the filesystem folds their flushes into shared journal commits) while one more
//! thread fsyncs the directory, and only then completes every waiting session. Only the
//! spool's own files are flushed: a whole-filesystem `syncfs` would also wait for every
//! other writer's dirty data on a shared volume.
//!
//! Not here: what happens to a message next (delivery takes it from the accepted-message
//! channel and [`Spool::list`]), limits or policy.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::smtp::Reply;

const MAGIC: &str = "RELAYSPOOL1";
const TRAILER: &[u8] = b"\nEND\n";
/// Most messages written per group commit.
const MAX_BATCH: usize = 512;
/// Most threads writing and flushing the files of one batch at once.
const SYNC_THREADS: usize = 8;
/// Writer threads: while one batch is being flushed, the next one starts its own flush
/// instead of waiting, so a message waits for about one flush, not up to two.
const WRITERS: usize = 4;

/// A queue id: microseconds since the epoch, bumped to stay unique, so ids sort in
/// arrival order. Printed as 16 upper-case hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct QueueId(u64);

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}

impl FromStr for QueueId {
    type Err = SpoolError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 16 {
            return Err(SpoolError::BadId(s.to_string()));
        }
        u64::from_str_radix(s, 16)
            .map(QueueId)
            .map_err(|_| SpoolError::BadId(s.to_string()))
    }
}

impl From<QueueId> for String {
    fn from(id: QueueId) -> String {
        id.to_string()
    }
}

impl TryFrom<String> for QueueId {
    type Error = SpoolError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// Everything about a message except its bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    pub queue_id: QueueId,
    /// Envelope sender after any rewrite; `""` is the null sender.
    pub mail_from: String,
    /// The sender the client gave, when it was rewritten to `postmaster@`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_mail_from: Option<String>,
    pub rcpts: Vec<String>,
    pub client_ip: IpAddr,
    /// HELO/EHLO name.
    pub helo: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_identity: Option<String>,
    /// `"TLSv1_3 TLS13_AES_256_GCM_SHA384"` style, when the client used TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    pub received_at: SystemTime,
    /// Message size in bytes (after the `Received:` header was added).
    pub size: u64,
}

/// Spool failures; each maps to one SMTP reply through [`SpoolError::reply`].
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool disk is full")]
    Full,
    #[error("spool I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("spool file {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{0} is not a queue id")]
    BadId(String),
    #[error("no message {0} in the spool")]
    NotFound(QueueId),
    #[error("the spool writer has stopped")]
    WriterStopped,
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

struct Job {
    path: PathBuf,
    bytes: Vec<u8>,
    done: oneshot::Sender<Result<(), SpoolError>>,
}

/// The on-disk queue.
pub struct Spool {
    queue_dir: PathBuf,
    quarantine_dir: PathBuf,
    writer: Mutex<mpsc::Sender<Job>>,
    last_id: AtomicU64,
    index: Mutex<BTreeSet<QueueId>>,
}

impl fmt::Debug for Spool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spool")
            .field("queue_dir", &self.queue_dir)
            .finish_non_exhaustive()
    }
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir` and recovers the messages queued
    /// there. Files that cannot be parsed are moved to `quarantine/` with a warning.
    pub fn open(dir: impl AsRef<Path>) -> Result<Spool, SpoolError> {
        let dir = dir.as_ref();
        let queue_dir = dir.join("queue");
        let quarantine_dir = dir.join("quarantine");
        for d in [&queue_dir, &quarantine_dir] {
            fs::create_dir_all(d).map_err(|e| SpoolError::io(d, e))?;
        }
        let mut index = BTreeSet::new();
        let entries = fs::read_dir(&queue_dir).map_err(|e| SpoolError::io(&queue_dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| SpoolError::io(&queue_dir, e))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let verdict = name
                .parse::<QueueId>()
                .map_err(|e| e.to_string())
                .and_then(|id| verify_file(&path).map(|()| id).map_err(|e| e.to_string()));
            match verdict {
                Ok(id) => {
                    index.insert(id);
                }
                Err(reason) => {
                    let target = quarantine_dir.join(&name);
                    tracing::warn!(file = %path.display(), %reason, quarantine = %target.display(), "corrupt spool file moved to quarantine");
                    fs::rename(&path, &target).map_err(|e| SpoolError::io(&path, e))?;
                }
            }
        }
        let last = index.iter().next_back().map(|id| id.0).unwrap_or(0);
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = std::sync::Arc::new(Mutex::new(rx));
        for _ in 0..WRITERS {
            let sync_dir = queue_dir.clone();
            let rx = rx.clone();
            std::thread::Builder::new()
                .name("spool-writer".into())
                .spawn(move || writer_loop(&sync_dir, &rx))
                .map_err(|e| SpoolError::io(dir, e))?;
        }
        Ok(Spool {
            queue_dir,
            quarantine_dir,
            writer: Mutex::new(tx),
            last_id: AtomicU64::new(last),
            index: Mutex::new(index),
        })
    }

    /// A new unique, time-ordered queue id.
    pub fn new_id(&self) -> QueueId {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros() as u64;
        let mut prev = self.last_id.load(Ordering::Relaxed);
        loop {
            let next = now.max(prev + 1);
            match self.last_id.compare_exchange_weak(
                prev,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return QueueId(next),
                Err(p) => prev = p,
            }
        }
    }

    /// Writes the message and waits until it is durable (file and directory fsync'd).
    pub async fn accept(&self, envelope: &Envelope, data: &[u8]) -> Result<QueueId, SpoolError> {
        let id = envelope.queue_id;
        let json = serde_json::to_vec(envelope).map_err(|e| SpoolError::Corrupt {
            path: self.path_of(id),
            reason: e.to_string(),
        })?;
        let mut bytes = Vec::with_capacity(json.len() + data.len() + 64);
        bytes.extend_from_slice(format!("{MAGIC} {} {}\n", json.len(), data.len()).as_bytes());
        bytes.extend_from_slice(&json);
        bytes.extend_from_slice(data);
        bytes.extend_from_slice(TRAILER);
        let (done, wait) = oneshot::channel();
        let job = Job {
            path: self.path_of(id),
            bytes,
            done,
        };
        self.writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job)
            .map_err(|_| SpoolError::WriterStopped)?;
        wait.await.map_err(|_| SpoolError::WriterStopped)??;
        self.index
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id);
        Ok(id)
    }

    /// Reads a queued message back.
    pub fn read(&self, id: QueueId) -> Result<(Envelope, Vec<u8>), SpoolError> {
        let path = self.path_of(id);
        let bytes = match fs::read(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(SpoolError::NotFound(id)),
            other => other.map_err(|e| SpoolError::io(&path, e))?,
        };
        let (env, data) = parse(&bytes).map_err(|reason| SpoolError::Corrupt {
            path: path.clone(),
            reason,
        })?;
        let env: Envelope = serde_json::from_slice(env).map_err(|e| SpoolError::Corrupt {
            path,
            reason: e.to_string(),
        })?;
        Ok((env, data.to_vec()))
    }

    /// Removes a message (delivered or bounced). The removal is not fsync'd: should the
    /// machine fail before the filesystem commits it, the message is delivered once more
    /// (at least once), which costs less than a disk flush per delivered message.
    pub fn remove(&self, id: QueueId) -> Result<(), SpoolError> {
        let path = self.path_of(id);
        match fs::remove_file(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(SpoolError::NotFound(id)),
            other => other.map_err(|e| SpoolError::io(&path, e))?,
        }
        self.index
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        Ok(())
    }

    /// Queued messages, oldest first.
    pub fn list(&self) -> Vec<QueueId> {
        self.index
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect()
    }

    /// Number of queued messages.
    pub fn depth(&self) -> usize {
        self.index.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Where unreadable files go.
    pub fn quarantine_dir(&self) -> &Path {
        &self.quarantine_dir
    }

    fn path_of(&self, id: QueueId) -> PathBuf {
        self.queue_dir.join(id.to_string())
    }
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

fn writer_loop(dir: &Path, rx: &Mutex<mpsc::Receiver<Job>>) {
    while let Some(batch) = next_batch(rx) {
        let results = write_batch(dir, &batch);
        for (job, result) in batch.into_iter().zip(results) {
            if result.is_err() {
                let _ = fs::remove_file(&job.path);
            }
            // The session may have gone away; the message then stays queued regardless.
            let _ = job.done.send(result);
        }
    }
}

/// Writes every file of a batch (page cache only), then flushes the files' data and the
/// directory's new names at the same time: both must be durable before the `250`, and
/// neither has to wait for the other. File flushes run on up to [`SYNC_THREADS`] threads.
/// One result per job, in order.
fn write_batch(dir: &Path, batch: &[Job]) -> Vec<Result<(), SpoolError>> {
    let mut results: Vec<Result<(), SpoolError>> = Vec::with_capacity(batch.len());
    let mut to_sync: Vec<(usize, File)> = Vec::with_capacity(batch.len());
    for (index, job) in batch.iter().enumerate() {
        match create_and_write(job) {
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
                let path = &batch[*index].path;
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
                    let path = &batch[*index].path;
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

/// Creates a message file and writes it (not flushed yet).
fn create_and_write(job: &Job) -> Result<File, SpoolError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&job.path)
        .map_err(|e| SpoolError::io(&job.path, e))?;
    file.write_all(&job.bytes)
        .map_err(|e| SpoolError::io(&job.path, e))?;
    Ok(file)
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SpoolError::io(dir, e))
}

/// Splits a spool file into envelope JSON and message bytes.
fn parse(bytes: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let nl = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no header line")?;
    let (env_len, data_len) = parse_header(&bytes[..nl])?;
    let body = &bytes[nl + 1..];
    if body.len() != env_len + data_len + TRAILER.len() || !body.ends_with(TRAILER) {
        return Err(format!(
            "truncated: expected {} bytes after the header, found {}",
            env_len + data_len + TRAILER.len(),
            body.len()
        ));
    }
    Ok((&body[..env_len], &body[env_len..env_len + data_len]))
}

fn parse_header(line: &[u8]) -> Result<(usize, usize), String> {
    let text = std::str::from_utf8(line).map_err(|_| "header is not text")?;
    let mut parts = text.split(' ');
    if parts.next() != Some(MAGIC) {
        return Err("not a spool file".into());
    }
    let mut num = || -> Result<usize, String> {
        parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| "bad header lengths".to_string())
    };
    Ok((num()?, num()?))
}

/// Checks a spool file without reading the message bytes into memory.
fn verify_file(path: &Path) -> Result<(), SpoolError> {
    let corrupt = |reason: String| SpoolError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = File::open(path).map_err(|e| SpoolError::io(path, e))?;
    let len = file.metadata().map_err(|e| SpoolError::io(path, e))?.len();
    let mut head = vec![0u8; 128.min(len as usize)];
    file.read_exact(&mut head)
        .map_err(|e| SpoolError::io(path, e))?;
    let nl = head
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| corrupt("no header line".into()))?;
    let (env_len, data_len) = parse_header(&head[..nl]).map_err(corrupt)?;
    let expected = (nl + 1 + env_len + data_len + TRAILER.len()) as u64;
    if len != expected {
        return Err(corrupt(format!(
            "truncated: {len} bytes, expected {expected}"
        )));
    }
    let mut env = vec![0u8; env_len];
    file.seek(SeekFrom::Start(nl as u64 + 1))
        .and_then(|_| file.read_exact(&mut env))
        .map_err(|e| SpoolError::io(path, e))?;
    serde_json::from_slice::<Envelope>(&env).map_err(|e| corrupt(e.to_string()))?;
    let mut tail = [0u8; TRAILER.len()];
    file.seek(SeekFrom::End(-(TRAILER.len() as i64)))
        .and_then(|_| file.read_exact(&mut tail))
        .map_err(|e| SpoolError::io(path, e))?;
    if tail != TRAILER {
        return Err(corrupt("missing END trailer".into()));
    }
    Ok(())
}

/// Delivery reads, re-queues (DSNs) and removes messages through the spool. The queue
/// manager calls these on blocking threads, so the async group-commit write is driven to
/// completion on the current runtime.
impl crate::delivery::queue::MessageStore for Spool {
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(Spool::list(self).iter().map(|id| id.to_string()).collect())
    }

    fn read(&self, queue_id: &str) -> io::Result<crate::delivery::queue::StoredMessage> {
        let id = parse_id(queue_id)?;
        let (envelope, data) = Spool::read(self, id).map_err(into_io)?;
        Ok(crate::delivery::queue::StoredMessage {
            envelope: crate::delivery::queue::Envelope {
                queue_id: queue_id.to_string(),
                mail_from: envelope.mail_from,
                rcpt_to: envelope.rcpts,
                received_at: envelope.received_at,
            },
            data,
        })
    }

    fn enqueue(
        &self,
        mail_from: &str,
        rcpt_to: &[String],
        data: &[u8],
        received_at: SystemTime,
    ) -> io::Result<String> {
        let envelope = Envelope {
            queue_id: self.new_id(),
            mail_from: mail_from.to_string(),
            original_mail_from: None,
            rcpts: rcpt_to.to_vec(),
            // Generated here (a DSN), not received from a client.
            client_ip: IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            helo: String::new(),
            auth_identity: None,
            tls: None,
            received_at,
            size: data.len() as u64,
        };
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
}
