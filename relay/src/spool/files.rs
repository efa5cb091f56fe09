//! Messages that keep a file of their own in `queue/`: the file layouts (the checked
//! `RELAYSPOOL3` layout written now, and the `RELAYSPOOL2` and first layouts, still read),
//! writing a batch of them with one flush of the files' data and one of the directory,
//! checking a file without holding its text, and recovering `queue/` on open (torn,
//! damaged or unparsable files go to `quarantine/`, persistent I/O errors fail the open).
//!
//! `RELAYSPOOL3\n`, the text, the envelope JSON, and a fixed-size trailer
//! `\nEND <text length> <envelope length> <crc>\n` (16, 16 and 8 hex digits): the lengths
//! prove the file complete, the CRC-32 over the text and the envelope (the bytes between
//! the header line and the trailer) proves them intact. It is checked at recovery and at
//! every read. `RELAYSPOOL2` is the same without the CRC; the first layout is
//! `RELAYSPOOL1 <env> <data>\n`, envelope first, then `\nEND\n`.
//!
//! Not here: segment records (`segments`), deciding which form a message takes (`store`).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use super::error::SpoolError;
use super::fsys::{FileRef, SpoolFs};
use super::index::Location;
use super::job::Content;
use crate::envelope::{Envelope, QueueId};

pub(super) const MAGIC: &str = "RELAYSPOOL1";
pub(super) const TRAILER: &[u8] = b"\nEND\n";
/// First line of the streamed layout without a checksum (still read).
pub(super) const HEADER2: &[u8] = b"RELAYSPOOL2\n";
/// `\nEND ` + 16 hex + ` ` + 16 hex + `\n`.
pub(super) const TRAILER2_LEN: usize = 39;
/// First line of the layout written now.
pub(super) const HEADER3: &[u8] = b"RELAYSPOOL3\n";
/// `\nEND ` + 16 hex + ` ` + 16 hex + ` ` + 8 hex + `\n`.
pub(super) const TRAILER3_LEN: usize = 48;
/// Tries of a file that fails to read during recovery before the open fails.
pub(super) const RECOVERY_TRIES: u32 = 3;
/// Most threads writing and flushing the files of one batch at once.
pub(super) const SYNC_THREADS: usize = 8;
/// Chunk in which a file's checksum is computed (memory stays bounded).
const CHECK_CHUNK: usize = 256 * 1024;

/// The trailer of a `RELAYSPOOL3` file with `text` bytes of text, `env` bytes of envelope
/// and checksum `crc` (over the text, then the envelope).
pub(super) fn trailer3(text: u64, env: u64, crc: u32) -> String {
    let t = format!("\nEND {text:016x} {env:016x} {crc:08x}\n");
    debug_assert_eq!(t.len(), TRAILER3_LEN);
    t
}

/// A message file of the current layout: header line, text, envelope, trailer.
pub(super) fn single_file(json: &[u8], text: &[u8]) -> Vec<u8> {
    let mut crc = crc32fast::Hasher::new();
    crc.update(text);
    crc.update(json);
    let trailer = trailer3(text.len() as u64, json.len() as u64, crc.finalize());
    let mut bytes = Vec::with_capacity(HEADER3.len() + text.len() + json.len() + TRAILER3_LEN);
    bytes.extend_from_slice(HEADER3);
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
    fs: &dyn SpoolFs,
    dir: &Path,
    batch: &[(PathBuf, &Content)],
    parallel: bool,
) -> Vec<Result<(), SpoolError>> {
    let mut results: Vec<Result<(), SpoolError>> = Vec::with_capacity(batch.len());
    let mut to_sync: Vec<(usize, FileRef)> = Vec::with_capacity(batch.len());
    for (index, (path, content)) in batch.iter().enumerate() {
        match create_and_write(fs, path, content) {
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
    let path_of = |index: usize| batch.get(index).map(|b| b.0.as_path()).unwrap_or(dir);
    let sync_chunk = |chunk: &[(usize, FileRef)]| -> Vec<(usize, Result<(), SpoolError>)> {
        chunk
            .iter()
            .map(|(index, file)| {
                (
                    *index,
                    file.sync_data()
                        .map_err(|e| SpoolError::io(path_of(*index), e)),
                )
            })
            .collect()
    };
    if !parallel {
        let synced = sync_chunk(&to_sync);
        let dir_synced = sync_dir(fs, dir);
        return finish(results, synced, dir_synced, &to_sync, dir);
    }
    let (synced, dir_synced) = std::thread::scope(|scope| {
        let spawn = |name: &str| std::thread::Builder::new().name(name.into());
        // One directory fsync makes every new name of the batch durable.
        let dir_thread = spawn("spool-dirsync").spawn_scoped(scope, || sync_dir(fs, dir));
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
                    (
                        *index,
                        Err(SpoolError::io(
                            path_of(*index),
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
            Err(_) => sync_dir(fs, dir),
        };
        (synced, dir_synced)
    });
    finish(results, synced, dir_synced, &to_sync, dir)
}

/// Each job's result: its file's flush, then the directory's.
fn finish(
    mut results: Vec<Result<(), SpoolError>>,
    synced: Vec<(usize, Result<(), SpoolError>)>,
    dir_synced: Result<(), SpoolError>,
    to_sync: &[(usize, FileRef)],
    dir: &Path,
) -> Vec<Result<(), SpoolError>> {
    for (index, result) in synced {
        if let Some(slot) = results.get_mut(index) {
            *slot = result;
        }
    }
    if let Err(e) = dir_synced {
        for (index, _) in to_sync {
            if let Some(slot) = results.get_mut(*index)
                && slot.is_ok()
            {
                *slot = Err(match &e {
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
pub(super) fn create_and_write(
    fs: &dyn SpoolFs,
    path: &Path,
    content: &Content,
) -> Result<FileRef, SpoolError> {
    match content {
        Content::Bytes(bytes) => {
            let file = fs.create_new(path).map_err(|e| create_error(path, e))?;
            file.write_all_at(bytes, 0)
                .map_err(|e| SpoolError::io(path, e))?;
            Ok(file)
        }
        Content::Spilled { incoming, tail } => {
            let file = fs
                .open_rw(incoming)
                .map_err(|e| SpoolError::io(incoming, e))?;
            let end = file.len().map_err(|e| SpoolError::io(incoming, e))?;
            file.write_all_at(tail, end)
                .map_err(|e| SpoolError::io(incoming, e))?;
            // No replace: a name already in the queue belongs to another message.
            if fs.exists(path) {
                return Err(SpoolError::Exists(path.to_path_buf()));
            }
            fs.rename(incoming, path)
                .map_err(|e| SpoolError::io(path, e))?;
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
pub(super) fn discard_incoming(fs: &dyn SpoolFs, dir: &Path) -> Result<(), SpoolError> {
    let mut removed = 0;
    for path in fs.read_dir(dir).map_err(|e| SpoolError::io(dir, e))? {
        fs.remove_file(&path)
            .map_err(|e| SpoolError::io(&path, e))?;
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

/// Verifies a queued file: `Ok(Ok(()))` intact, `Ok(Err(reason))` provably torn, damaged
/// or unparsable, `Err` an I/O error that persisted over [`RECOVERY_TRIES`] tries.
pub(super) fn verify_with_retries(
    fs: &dyn SpoolFs,
    path: &Path,
) -> Result<Result<(), String>, SpoolError> {
    let mut tries = 0;
    loop {
        match verify_file(fs, path) {
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

pub(super) fn sync_dir(fs: &dyn SpoolFs, dir: &Path) -> Result<(), SpoolError> {
    fs.sync_dir(dir).map_err(|e| SpoolError::io(dir, e))
}

/// Where a file's parts lie, from [`layout`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Layout {
    pub(super) envelope: Range,
    pub(super) text: Range,
    /// `RELAYSPOOL3`: the CRC-32 of the bytes in `checked`.
    pub(super) crc: Option<(u32, Range)>,
}

/// The trailer of the streamed layouts: text length, envelope length and, with `crc`, the
/// checksum.
fn parse_trailer(tail: &[u8], crc: bool) -> Result<(u64, u64, Option<u32>), String> {
    let text = std::str::from_utf8(tail).map_err(|_| "trailer is not text")?;
    let rest = text
        .strip_prefix("\nEND ")
        .and_then(|r| r.strip_suffix('\n'))
        .ok_or("missing END trailer")?;
    let mut parts = rest.split(' ');
    let hex = |s: Option<&str>, digits: usize| {
        s.filter(|s| s.len() == digits)
            .and_then(|s| u64::from_str_radix(s, 16).ok())
            .ok_or_else(|| "bad trailer lengths".to_string())
    };
    let data = hex(parts.next(), 16)?;
    let env = hex(parts.next(), 16)?;
    let sum = if crc {
        Some(hex(parts.next(), 8)? as u32)
    } else {
        None
    };
    if parts.next().is_some() {
        return Err("bad trailer".into());
    }
    Ok((data, env, sum))
}

/// Where the envelope JSON and the message bytes lie in a file of `len` bytes, given its
/// first bytes `head` (at least the header line) and its last bytes `tail` (up to
/// [`TRAILER3_LEN`]). Every sum is checked: lengths from a torn or hostile file cannot
/// overflow into a huge allocation.
pub(super) fn layout(head: &[u8], tail: &[u8], len: u64) -> Result<Layout, String> {
    let streamed = if head.starts_with(HEADER3) {
        Some((HEADER3.len() as u64, TRAILER3_LEN, true))
    } else if head.starts_with(HEADER2) {
        Some((HEADER2.len() as u64, TRAILER2_LEN, false))
    } else {
        None
    };
    if let Some((start, trailer_len, with_crc)) = streamed {
        let tail = tail
            .get(tail.len().saturating_sub(trailer_len)..)
            .filter(|t| t.len() == trailer_len)
            .ok_or("missing END trailer")?;
        let (data_len, env_len, crc) = parse_trailer(tail, with_crc)?;
        let expected = start
            .checked_add(data_len)
            .and_then(|n| n.checked_add(env_len))
            .and_then(|n| n.checked_add(trailer_len as u64))
            .ok_or("lengths overflow")?;
        if expected != len {
            return Err(format!("truncated: {len} bytes, expected {expected}"));
        }
        let env_start = start + data_len;
        let env_end = env_start + env_len;
        return Ok(Layout {
            envelope: env_start..env_end,
            text: start..env_start,
            crc: crc.map(|c| (c, start..env_end)),
        });
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
    Ok(Layout {
        envelope: start..start + env_len,
        text: start + env_len..start + env_len + data_len,
        crc: None,
    })
}

pub(super) type Range = std::ops::Range<u64>;

pub(super) fn slice<'a>(bytes: &'a [u8], r: &Range) -> &'a [u8] {
    let (Ok(start), Ok(end)) = (usize::try_from(r.start), usize::try_from(r.end)) else {
        return &[];
    };
    bytes.get(start..end).unwrap_or_default()
}

fn checksum_mismatch(want: u32, got: u32) -> String {
    format!("checksum mismatch: the trailer says {want:08x}, the text and envelope give {got:08x}")
}

/// Splits a spool file into envelope JSON and message bytes, checking its checksum.
pub(super) fn parse(bytes: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let tail = bytes
        .get(bytes.len().saturating_sub(TRAILER3_LEN)..)
        .unwrap_or_default();
    let l = layout(bytes, tail, bytes.len() as u64)?;
    if let Some((want, range)) = &l.crc {
        let got = crc32fast::hash(slice(bytes, range));
        if got != *want {
            return Err(checksum_mismatch(*want, got));
        }
    }
    Ok((slice(bytes, &l.envelope), slice(bytes, &l.text)))
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

/// Checks a spool file (its checksum included) without holding its text in memory.
pub(super) fn verify_file(fs: &dyn SpoolFs, path: &Path) -> Result<(), SpoolError> {
    locate(fs, path).map(|_| ())
}

/// The envelope of a spool file and where its message bytes lie, its checksum checked
/// (reading the text in chunks, never whole). Any layout: all keep the text in one piece.
pub(super) fn locate(fs: &dyn SpoolFs, path: &Path) -> Result<(Envelope, Range), SpoolError> {
    let corrupt = |reason: String| SpoolError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let file = fs.open_read(path).map_err(|e| SpoolError::io(path, e))?;
    let len = file.len().map_err(|e| SpoolError::io(path, e))?;
    let mut head = vec![0u8; 128.min(len) as usize];
    file.read_exact_at(&mut head, 0)
        .map_err(|e| SpoolError::io(path, e))?;
    let mut tail = vec![0u8; (TRAILER3_LEN as u64).min(len) as usize];
    let tail_at = len - tail.len() as u64;
    file.read_exact_at(&mut tail, tail_at)
        .map_err(|e| SpoolError::io(path, e))?;
    let l = layout(&head, &tail, len).map_err(corrupt)?;
    if let Some((want, range)) = &l.crc {
        let mut crc = crc32fast::Hasher::new();
        let mut buf = vec![0u8; CHECK_CHUNK.min((range.end - range.start) as usize)];
        let mut at = range.start;
        while at < range.end {
            let n = buf.len().min((range.end - at) as usize);
            let chunk = buf.get_mut(..n).unwrap_or_default();
            file.read_exact_at(chunk, at)
                .map_err(|e| SpoolError::io(path, e))?;
            crc.update(chunk);
            at += n as u64;
        }
        let got = crc.finalize();
        if got != *want {
            return Err(corrupt(checksum_mismatch(*want, got)));
        }
    }
    // `layout` proved the envelope lies inside the file.
    let mut json = vec![0u8; (l.envelope.end - l.envelope.start) as usize];
    file.read_exact_at(&mut json, l.envelope.start)
        .map_err(|e| SpoolError::io(path, e))?;
    let envelope = serde_json::from_slice::<Envelope>(&json).map_err(|e| corrupt(e.to_string()))?;
    Ok((envelope, l.text))
}

/// Indexes every intact file in `queue/` and moves the torn, damaged or unparsable ones
/// to `quarantine/`; returns how many were moved. An I/O error that persists fails the
/// open instead of quarantining mail that may be intact.
pub(super) fn recover_files(
    fs: &dyn SpoolFs,
    queue_dir: &Path,
    quarantine_dir: &Path,
    index: &mut BTreeMap<QueueId, Location>,
) -> Result<u64, SpoolError> {
    let mut quarantined = 0;
    let entries = fs
        .read_dir(queue_dir)
        .map_err(|e| SpoolError::io(queue_dir, e))?;
    for path in entries {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let verdict = match name.parse::<QueueId>() {
            Err(e) => Err(e.to_string()),
            Ok(id) => match verify_with_retries(fs, &path)? {
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
                tracing::warn!(file = %path.display(), %reason, quarantine = %target.display(), "torn, damaged or unreadable spool file moved to quarantine");
                fs.rename(&path, &target)
                    .map_err(|e| SpoolError::io(&path, e))?;
                quarantined += 1;
            }
        }
    }
    Ok(quarantined)
}
