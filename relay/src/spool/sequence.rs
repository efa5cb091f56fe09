//! Segment sequence numbers that are never used twice, across crashes included.
//!
//! A segment's header carries the sequence number of its current use, and each record the
//! number of the use it was written in, so a record left from an earlier use never passes
//! for one of this use. Deriving the next number from the headers alone is not enough: a
//! header torn while a segment was being recycled hides the highest number in use, and
//! the next start would hand that number out again, so the records of the earlier use
//! would read as records of the new one (messages delivered long ago would come back, and
//! the scan past damage would take them for live mail).
//!
//! So a ceiling is kept in `segments/next-seq`: every number handed out is below it, and
//! the ceiling is raised durably (written to a temporary file, flushed, renamed over, the
//! directory flushed) before any number at or above it is used, a block of
//! [`BLOCK`] numbers at a time. At open the next number is the larger of the ceiling and
//! one past the highest header; a spool without the file (made by an older relay) skips
//! [`LEGACY_GAP`] numbers past the highest header, beyond anything a torn header could
//! have hidden.
//!
//! Not here: headers and records (`scan`), segments (`segments`).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::error::SpoolError;
use super::fsys::SpoolFs;

/// Numbers reserved by one durable write of the ceiling.
pub(super) const BLOCK: u64 = 1024;
/// Numbers skipped when a spool that has segments has no ceiling file yet (or an
/// unreadable one).
pub(super) const LEGACY_GAP: u64 = 1 << 32;
/// The ceiling file's name in the segments directory.
pub(super) const FILE: &str = "next-seq";
const MAGIC: &[u8; 8] = b"RLYSEQ01";

/// The source of segment sequence numbers.
#[derive(Debug)]
pub(super) struct Sequence {
    dir: PathBuf,
    state: Mutex<(u64, u64)>,
}

impl Sequence {
    /// Starts after `max_header` (the highest sequence number of any readable header, 0
    /// when none) and the ceiling kept in `dir`; `had_segments` says whether any segment
    /// file was found.
    pub(super) fn open(fs: &dyn SpoolFs, dir: &Path, max_header: u64, had_segments: bool) -> Self {
        let ceiling = read_ceiling(fs, &dir.join(FILE));
        let next = match ceiling {
            Some(c) => c.max(max_header.saturating_add(1)),
            None if had_segments => max_header.saturating_add(1).saturating_add(LEGACY_GAP),
            None => max_header.saturating_add(1),
        };
        Self {
            dir: dir.to_path_buf(),
            // Nothing reserved yet: `reserve` (at open) or the first `take` writes one.
            state: Mutex::new((next, next)),
        }
    }

    /// Makes a ceiling durable now (at open), so the first segment does not wait for it.
    pub(super) fn reserve(&self, fs: &dyn SpoolFs) -> Result<(), SpoolError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.0 >= st.1 {
            let raised = st.0.saturating_add(BLOCK);
            write_ceiling(fs, &self.dir, raised)?;
            st.1 = raised;
        }
        Ok(())
    }

    /// The next sequence number, its ceiling made durable first when needed.
    pub(super) fn take(&self, fs: &dyn SpoolFs) -> Result<u64, SpoolError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (next, ceiling) = *st;
        if next >= ceiling {
            let raised = next.saturating_add(BLOCK);
            write_ceiling(fs, &self.dir, raised)?;
            st.1 = raised;
        }
        st.0 = next.saturating_add(1);
        Ok(next)
    }
}

fn encode(ceiling: u64) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[..8].copy_from_slice(MAGIC);
    b[8..16].copy_from_slice(&ceiling.to_le_bytes());
    let crc = crc32fast::hash(&b[..16]);
    b[16..20].copy_from_slice(&crc.to_le_bytes());
    b
}

fn read_ceiling(fs: &dyn SpoolFs, path: &Path) -> Option<u64> {
    let file = fs.open_read(path).ok()?;
    let mut b = [0u8; 20];
    file.read_exact_at(&mut b, 0).ok()?;
    let crc = u32::from_le_bytes([b[16], b[17], b[18], b[19]]);
    if &b[..8] != MAGIC || crc != crc32fast::hash(&b[..16]) {
        tracing::warn!(file = %path.display(), "the segment sequence ceiling is unreadable; skipping far ahead");
        return None;
    }
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[8..16]);
    Some(u64::from_le_bytes(x))
}

fn write_ceiling(fs: &dyn SpoolFs, dir: &Path, ceiling: u64) -> Result<(), SpoolError> {
    let tmp = dir.join(format!("{FILE}.tmp"));
    let path = dir.join(FILE);
    let _ = fs.remove_file(&tmp);
    let file = fs.create_new(&tmp).map_err(|e| SpoolError::io(&tmp, e))?;
    file.write_all_at(&encode(ceiling), 0)
        .and_then(|()| file.sync_data())
        .map_err(|e| SpoolError::io(&tmp, e))?;
    drop(file);
    fs.rename(&tmp, &path)
        .and_then(|()| fs.sync_dir(dir))
        .map_err(|e| SpoolError::io(&path, e))
}
