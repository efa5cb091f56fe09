//! A simulated disk under the spool's file layer, for the power-loss tests: it keeps
//! every write not yet covered by a flush in a volatile buffer, and at a chosen crash
//! point throws that buffer away, or keeps a prefix of it, or keeps random 4 KiB pages of
//! it (torn writes).
//!
//! The model, after Linux on ext4 with `data=ordered` seen from an application that
//! cannot rely on the journal's ordering:
//! - file data written with `write_all_at` is volatile until `sync_data`/`sync_all` of
//!   that file (every earlier write to the file, from any handle, becomes durable);
//! - a name made by `create_new` or `rename`, or removed by `remove_file`, is volatile
//!   until `sync_dir` of its directory (a rename: of the target's directory);
//! - at a crash, what survives is the durable state plus: nothing
//!   ([`CrashMode::DropAll`]), the first `k` volatile operations in order
//!   ([`CrashMode::Prefix`]), or a prefix of the name operations and, of each volatile
//!   write, a random subset of its 4 KiB pages ([`CrashMode::Pages`]).
//!
//! Every mutating call and every flush is one numbered operation; the crash happens when
//! the operation numbered `crash_at` is attempted: it and every later call fail with an
//! I/O error, as the process would have stopped there. A capacity makes writes past it
//! fail with `StorageFull`, as a full disk does.
//!
//! Not here: the workloads and the checks (`powerloss`).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::fsys::{FileRef, SpoolFile, SpoolFs};

/// Page size of torn writes.
pub(crate) const PAGE: u64 = 4096;

/// What survives of the volatile buffer at the crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CrashMode {
    DropAll,
    Prefix,
    Pages,
}

/// A volatile operation.
#[derive(Debug, Clone)]
enum Volatile {
    Write {
        inode: u64,
        path: PathBuf,
        offset: u64,
        bytes: Vec<u8>,
    },
    Link {
        dir: PathBuf,
        path: PathBuf,
        inode: u64,
    },
    Unlink {
        dir: PathBuf,
        path: PathBuf,
        inode: u64,
    },
    Rename {
        dir: PathBuf,
        from: PathBuf,
        to: PathBuf,
        inode: u64,
    },
}

/// An operation whose effect did not survive the crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lost {
    /// A write of `len` bytes at `offset` of the file then named `path` (some or all of
    /// its pages lost).
    Write {
        path: PathBuf,
        offset: u64,
        len: u64,
    },
    /// A removal of `path`.
    Unlink { path: PathBuf },
    /// A new name or a rename to `path`.
    Name { path: PathBuf },
}

/// A disk's contents: names to inodes, inodes to bytes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Image {
    names: BTreeMap<PathBuf, u64>,
    data: BTreeMap<u64, Vec<u8>>,
    dirs: BTreeSet<PathBuf>,
    next_inode: u64,
}

impl Image {
    fn apply_write(&mut self, inode: u64, offset: u64, bytes: &[u8]) {
        let data = self.data.entry(inode).or_default();
        let end = offset as usize + bytes.len();
        if data.len() < end {
            data.resize(end, 0);
        }
        data[offset as usize..end].copy_from_slice(bytes);
    }

    fn apply_name(&mut self, op: &Volatile) {
        match op {
            Volatile::Link { path, inode, .. } => {
                self.names.insert(path.clone(), *inode);
                self.data.entry(*inode).or_default();
            }
            Volatile::Unlink { path, inode, .. } => {
                if self.names.get(path) == Some(inode) {
                    self.names.remove(path);
                }
            }
            Volatile::Rename {
                from, to, inode, ..
            } => {
                if self.names.get(from) == Some(inode) {
                    self.names.remove(from);
                }
                self.names.insert(to.clone(), *inode);
                self.data.entry(*inode).or_default();
            }
            Volatile::Write { .. } => {}
        }
    }

    /// Bytes held by files with a name.
    fn used(&self) -> u64 {
        let live: BTreeSet<u64> = self.names.values().copied().collect();
        live.iter()
            .filter_map(|i| self.data.get(i))
            .map(|d| d.len() as u64)
            .sum()
    }
}

/// What a crash left.
#[derive(Debug, Clone)]
pub(crate) struct Crashed {
    pub(crate) image: Image,
    pub(crate) lost: Vec<Lost>,
}

#[derive(Debug)]
struct State {
    /// What a reader sees now.
    now: Image,
    /// What survives a crash for sure.
    durable: Image,
    volatile: Vec<Volatile>,
    ops: u64,
    crash_at: Option<u64>,
    mode: CrashMode,
    rng: StdRng,
    crashed: Option<Crashed>,
    capacity: Option<u64>,
}

/// The simulated disk.
#[derive(Debug, Clone)]
pub(crate) struct SimFs {
    state: Arc<Mutex<State>>,
}

fn eio() -> io::Error {
    io::Error::other("simulated power loss: the machine is off")
}

fn parent(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

impl SimFs {
    /// A disk holding `image` (empty for a new one), that crashes at operation `crash_at`
    /// (never with `None`) keeping what `mode` says, chosen with `seed`.
    pub(crate) fn new(
        image: Image,
        crash_at: Option<u64>,
        mode: CrashMode,
        seed: u64,
        capacity: Option<u64>,
    ) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                now: image.clone(),
                durable: image,
                volatile: Vec::new(),
                ops: 0,
                crash_at,
                mode,
                rng: StdRng::seed_from_u64(seed),
                crashed: None,
                capacity,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Operations attempted so far.
    pub(crate) fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// The crash's result, once it happened.
    pub(crate) fn crashed(&self) -> Option<Crashed> {
        self.lock().crashed.clone()
    }

    /// Crashes now (at the end of a workload that did not reach its crash point).
    pub(crate) fn crash_now(&self) -> Crashed {
        let mut st = self.lock();
        if st.crashed.is_none() {
            st.crash();
        }
        st.crashed.clone().unwrap_or_else(|| Crashed {
            image: Image::default(),
            lost: Vec::new(),
        })
    }

    /// Counts one operation: `Err` once the machine is off. The operation the crash
    /// stops (`attempt`) is lost with the volatile ones.
    fn op(st: &mut State, attempt: impl FnOnce() -> Option<Lost>) -> io::Result<()> {
        if st.crashed.is_some() {
            return Err(eio());
        }
        st.ops += 1;
        if st.crash_at.is_some_and(|at| st.ops >= at) {
            st.crash();
            if let (Some(c), Some(l)) = (st.crashed.as_mut(), attempt()) {
                c.lost.push(l);
            }
            return Err(eio());
        }
        Ok(())
    }
}

impl State {
    fn crash(&mut self) {
        let mut image = self.durable.clone();
        let mut lost = Vec::new();
        let volatile = std::mem::take(&mut self.volatile);
        let names = volatile
            .iter()
            .filter(|v| !matches!(v, Volatile::Write { .. }))
            .count();
        let (keep_ops, keep_names) = match self.mode {
            CrashMode::DropAll => (0, 0),
            CrashMode::Prefix => (self.rng.random_range(0..=volatile.len()), usize::MAX),
            CrashMode::Pages => (usize::MAX, self.rng.random_range(0..=names)),
        };
        let mut name_index = 0;
        for (i, v) in volatile.iter().enumerate() {
            let in_prefix = i < keep_ops;
            match v {
                Volatile::Write {
                    inode,
                    path,
                    offset,
                    bytes,
                    ..
                } => {
                    let mut all = true;
                    if self.mode == CrashMode::Pages {
                        // Page by page (pages of the file, not of the write).
                        let end = offset + bytes.len() as u64;
                        let mut at = *offset;
                        while at < end {
                            let page_end = ((at / PAGE) + 1) * PAGE;
                            let to = page_end.min(end);
                            if self.rng.random_bool(0.5) {
                                let from = (at - offset) as usize;
                                let until = (to - offset) as usize;
                                image.apply_write(*inode, at, &bytes[from..until]);
                            } else {
                                all = false;
                            }
                            at = to;
                        }
                    } else if in_prefix {
                        image.apply_write(*inode, *offset, bytes);
                    } else {
                        all = false;
                    }
                    if !all {
                        lost.push(Lost::Write {
                            path: path.clone(),
                            offset: *offset,
                            len: bytes.len() as u64,
                        });
                    }
                }
                other => {
                    let kept = in_prefix && (self.mode != CrashMode::Pages)
                        || (self.mode == CrashMode::Pages && name_index < keep_names);
                    name_index += 1;
                    if kept {
                        image.apply_name(other);
                    } else {
                        lost.push(match other {
                            Volatile::Unlink { path, .. } => Lost::Unlink { path: path.clone() },
                            Volatile::Link { path, .. } => Lost::Name { path: path.clone() },
                            Volatile::Rename { to, .. } => Lost::Name { path: to.clone() },
                            Volatile::Write { .. } => continue,
                        });
                    }
                }
            }
        }
        // Inodes without a name are gone.
        let named: BTreeSet<u64> = image.names.values().copied().collect();
        image.data.retain(|i, _| named.contains(i));
        self.crashed = Some(Crashed { image, lost });
    }

    fn flush_file(&mut self, inode: u64) {
        let mut rest = Vec::with_capacity(self.volatile.len());
        for v in std::mem::take(&mut self.volatile) {
            match &v {
                Volatile::Write {
                    inode: i,
                    offset,
                    bytes,
                    ..
                } if *i == inode => self.durable.apply_write(*i, *offset, bytes),
                _ => rest.push(v),
            }
        }
        self.volatile = rest;
    }

    fn flush_dir(&mut self, dir: &Path) {
        let mut rest = Vec::with_capacity(self.volatile.len());
        for v in std::mem::take(&mut self.volatile) {
            let ours = match &v {
                Volatile::Link { dir: d, .. }
                | Volatile::Unlink { dir: d, .. }
                | Volatile::Rename { dir: d, .. } => d == dir,
                Volatile::Write { .. } => false,
            };
            if ours {
                // The inode's data written before is not made durable by this: only
                // the name.
                self.durable.apply_name(&v);
            } else {
                rest.push(v);
            }
        }
        self.volatile = rest;
    }
}

/// An open file on the simulated disk.
#[derive(Debug)]
struct SimFile {
    fs: SimFs,
    inode: u64,
    path: PathBuf,
}

impl SpoolFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let st = self.fs.lock();
        let data = st
            .now
            .data
            .get(&self.inode)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let Some(from) = usize::try_from(offset).ok().filter(|&o| o < data.len()) else {
            return Ok(0);
        };
        let n = buf.len().min(data.len() - from);
        buf[..n].copy_from_slice(&data[from..from + n]);
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut st = self.fs.lock();
        SimFs::op(&mut st, || {
            Some(Lost::Write {
                path: self.path.clone(),
                offset,
                len: buf.len() as u64,
            })
        })?;
        let old_len = st.now.data.get(&self.inode).map_or(0, |d| d.len() as u64);
        let new_end = offset + buf.len() as u64;
        if let Some(cap) = st.capacity
            && new_end > old_len
            && st.now.used() + (new_end - old_len) > cap
        {
            return Err(io::Error::from(io::ErrorKind::StorageFull));
        }
        st.now.apply_write(self.inode, offset, buf);
        st.volatile.push(Volatile::Write {
            inode: self.inode,
            path: self.path.clone(),
            offset,
            bytes: buf.to_vec(),
        });
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let st = self.fs.lock();
        Ok(st.now.data.get(&self.inode).map_or(0, |d| d.len() as u64))
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut st = self.fs.lock();
        SimFs::op(&mut st, || None)?;
        st.flush_file(self.inode);
        Ok(())
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync_data()
    }
}

impl SpoolFs for SimFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        // Directories are made once, before any crash point matters: durable at once.
        let mut st = self.lock();
        if st.crashed.is_some() {
            return Err(eio());
        }
        for d in dir.ancestors() {
            st.now.dirs.insert(d.to_path_buf());
            st.durable.dirs.insert(d.to_path_buf());
        }
        Ok(())
    }

    fn open_rw(&self, path: &Path) -> io::Result<FileRef> {
        self.open_read(path)
    }

    fn open_read(&self, path: &Path) -> io::Result<FileRef> {
        let st = self.lock();
        if st.crashed.is_some() {
            return Err(eio());
        }
        if st.now.dirs.contains(path) {
            return Err(io::Error::other("is a directory"));
        }
        let inode = *st.now.names.get(path).ok_or(io::ErrorKind::NotFound)?;
        Ok(Box::new(SimFile {
            fs: self.clone(),
            inode,
            path: path.to_path_buf(),
        }))
    }

    fn create_new(&self, path: &Path) -> io::Result<FileRef> {
        let mut st = self.lock();
        SimFs::op(&mut st, || {
            Some(Lost::Name {
                path: path.to_path_buf(),
            })
        })?;
        if st.now.names.contains_key(path) || st.now.dirs.contains(path) {
            return Err(io::ErrorKind::AlreadyExists.into());
        }
        if !st.now.dirs.contains(&parent(path)) {
            return Err(io::ErrorKind::NotFound.into());
        }
        st.now.next_inode += 1;
        let inode = st.now.next_inode.max(st.durable.next_inode + 1);
        st.now.next_inode = inode;
        st.durable.next_inode = inode;
        let op = Volatile::Link {
            dir: parent(path),
            path: path.to_path_buf(),
            inode,
        };
        st.now.apply_name(&op);
        st.volatile.push(op);
        Ok(Box::new(SimFile {
            fs: self.clone(),
            inode,
            path: path.to_path_buf(),
        }))
    }

    fn exists(&self, path: &Path) -> bool {
        let st = self.lock();
        st.now.names.contains_key(path) || st.now.dirs.contains(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.lock();
        SimFs::op(&mut st, || {
            Some(Lost::Name {
                path: to.to_path_buf(),
            })
        })?;
        let inode = *st.now.names.get(from).ok_or(io::ErrorKind::NotFound)?;
        let op = Volatile::Rename {
            dir: parent(to),
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            inode,
        };
        st.now.apply_name(&op);
        st.volatile.push(op);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock();
        SimFs::op(&mut st, || {
            Some(Lost::Unlink {
                path: path.to_path_buf(),
            })
        })?;
        let inode = *st.now.names.get(path).ok_or(io::ErrorKind::NotFound)?;
        let op = Volatile::Unlink {
            dir: parent(path),
            path: path.to_path_buf(),
            inode,
        };
        st.now.apply_name(&op);
        st.volatile.push(op);
        Ok(())
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let st = self.lock();
        if st.crashed.is_some() {
            return Err(eio());
        }
        Ok(st
            .now
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.lock();
        SimFs::op(&mut st, || None)?;
        st.flush_dir(dir);
        Ok(())
    }

    fn space(&self, _dir: &Path) -> Option<(u64, u64)> {
        let st = self.lock();
        let cap = st.capacity?;
        Some((cap.saturating_sub(st.now.used()), cap))
    }
}
