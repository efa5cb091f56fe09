//! Messages that keep a file of their own in `queue/`: the two file layouts (the streamed
//! `RELAYSPOOL2` layout with its trailer, and the first layout, still read), writing a
//! batch of them with one flush of the files' data and one of the directory, checking a
//! file without reading its text, and recovering `queue/` on open (torn or unparsable files
//! go to `quarantine/`, persistent I/O errors fail the open).
//!
//! Not here: segment records (`segments`), deciding which form a message takes (`store`).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::error::SpoolError;
use super::index::Location;
use super::job::Content;
use crate::envelope::{Envelope, QueueId};

pub(super) const MAGIC: &str = "RELAYSPOOL1";
pub(super) const TRAILER: &[u8] = b"\nEND\n";
/// First line of the streamed layout.
pub(super) const HEADER2: &[u8] = b"RELAYSPOOL2\n";
/// `\nEND ` + 16 hex + ` ` + 16 hex + `\n`.
pub(super) const TRAILER2_LEN: usize = 39;
/// Tries of a file that fails to read during recovery before the open fails.
pub(super) const RECOVERY_TRIES: u32 = 3;
/// Most threads writing and flushing the files of one batch at once.
pub(super) const SYNC_THREADS: usize = 8;
/// A message file of the streamed layout: header line, text, envelope, trailer.
pub(super) fn single_file(json: &[u8], text: &[u8]) -> Vec<u8> {
    let trailer = format!("\nEND {:016x} {:016x}\n", text.len(), json.len());
    debug_assert_eq!(trailer.len(), TRAILER2_LEN);
    let mut bytes = Vec::with_capacity(HEADER2.len() + text.len() + json.len() + TRAILER2_LEN);
    bytes.extend_from_slice(HEADER2);
    bytes.extend_from_slice(text);
    bytes.extend_from_slice(json);
    bytes.extend_from_slice(trailer.as_bytes());
    bytes
}

pub(super) fn parse_envelope(json: &[u8], path: &Path) -> Result<Envelope, SpoolError> {
    serde_json::from_slice(json).map_err(|e| SpoolError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Writes every file of a batch (page cache only), then flushes the files' data and the
/// directory's new names at the same time: both must be durable before the `250`, and
/// neither has to wait for the other. File flushes run on up to [`SYNC_THREADS`] threads.
/// One result per job, in order.
pub(super) fn write_batch(
    dir: &Path,
    batch: &[(PathBuf, &Content)],
) -> Vec<Result<(), SpoolError>> {
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
pub(super) fn create_and_write(path: &Path, content: &Content) -> Result<File, SpoolError> {
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

pub(super) fn create_error(path: &Path, e: io::Error) -> SpoolError {
    if e.kind() == io::ErrorKind::AlreadyExists {
        SpoolError::Exists(path.to_path_buf())
    } else {
        SpoolError::io(path, e)
    }
}

/// Removes the text of messages that were being received when the last run ended: none
/// of them was acknowledged.
pub(super) fn discard_incoming(dir: &Path) -> Result<(), SpoolError> {
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
pub(super) fn verify_with_retries(path: &Path) -> Result<Result<(), String>, SpoolError> {
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

pub(super) fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SpoolError::io(dir, e))
}

/// Where the envelope JSON and the message bytes lie in a file of `len` bytes, given its
/// first bytes `head` (at least the header line) and its last [`TRAILER2_LEN`] bytes
/// `tail`. Every sum is checked: lengths from a torn or hostile file cannot overflow into a
/// huge allocation.
pub(super) fn layout(head: &[u8], tail: &[u8], len: u64) -> Result<(Range, Range), String> {
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

pub(super) type Range = std::ops::Range<u64>;

pub(super) fn slice<'a>(bytes: &'a [u8], r: &Range) -> &'a [u8] {
    // `layout` checked both ends against the length of `bytes`.
    &bytes[r.start as usize..r.end as usize]
}

/// Splits a spool file into envelope JSON and message bytes.
pub(super) fn parse(bytes: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let tail = &bytes[bytes.len().saturating_sub(TRAILER2_LEN)..];
    let (env, data) = layout(bytes, tail, bytes.len() as u64)?;
    Ok((slice(bytes, &env), slice(bytes, &data)))
}

pub(super) fn parse_header(line: &[u8]) -> Result<(u64, u64), String> {
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
pub(super) fn verify_file(path: &Path) -> Result<(), SpoolError> {
    locate(path).map(|_| ())
}

/// The envelope of a spool file and where its message bytes lie, read without reading
/// the message bytes. Either layout: both keep the text in one piece.
pub(super) fn locate(path: &Path) -> Result<(Envelope, Range), SpoolError> {
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

/// Indexes every intact file in `queue/` and moves the torn or unparsable ones to
/// `quarantine/`; returns how many were moved. An I/O error that persists fails the open
/// instead of quarantining mail that may be intact.
pub(super) fn recover_files(
    queue_dir: &Path,
    quarantine_dir: &Path,
    index: &mut BTreeMap<QueueId, Location>,
) -> Result<u64, SpoolError> {
    let mut quarantined = 0;
    let entries = fs::read_dir(queue_dir).map_err(|e| SpoolError::io(queue_dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| SpoolError::io(queue_dir, e))?;
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
    Ok(quarantined)
}
