//! The spool's file layer: the few file operations the spool makes on its own files
//! ([`SpoolFs`] for names and directories, [`SpoolFile`] for one open file), and the
//! production implementation [`StdFs`] on `std::fs`.
//!
//! Every byte the spool writes and every flush it relies on goes through this layer, so a
//! test can put a simulated disk under it (`sim`, in the unit tests) that keeps what was
//! not yet flushed in a volatile buffer and throws it away, or tears it, at a simulated
//! power loss. Production pays nothing for it: [`StdFs`] makes exactly the system calls
//! the spool made before (`pwrite`, `fdatasync`, ...), no more, and allocates only when a
//! file is opened (one box per open file), never per write or flush.
//!
//! Not here: what the spool writes (`segments`, `files`), the spool's lock (`lock`, which
//! stays on `std::fs`: it is no data).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// One open file of the spool.
pub(crate) trait SpoolFile: Send + Sync + fmt::Debug {
    /// Reads up to `buf.len()` bytes at `offset`; fewer at the end of the file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset` (extending the file when it goes past its end).
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// The file's size.
    fn len(&self) -> io::Result<u64>;
    /// `fdatasync`: the file's data (and the size needed to read it) is durable.
    fn sync_data(&self) -> io::Result<()>;
    /// `fsync`: the file's data and metadata are durable.
    fn sync_all(&self) -> io::Result<()>;

    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "failed to fill whole buffer",
                    ));
                }
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// An open spool file.
pub(crate) type FileRef = Box<dyn SpoolFile>;

/// Names, directories and opening files: what the spool does besides reading and writing
/// an open file. A new name (create, rename) or a removal is durable only once its
/// directory is flushed ([`SpoolFs::sync_dir`]).
pub(crate) trait SpoolFs: Send + Sync + fmt::Debug {
    /// `mkdir -p`.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Opens an existing file for reading and writing.
    fn open_rw(&self, path: &Path) -> io::Result<FileRef>;
    /// Opens an existing file for reading.
    fn open_read(&self, path: &Path) -> io::Result<FileRef>;
    /// Creates a new, empty file for reading and writing; fails if the name exists.
    fn create_new(&self, path: &Path) -> io::Result<FileRef>;
    /// Whether a name exists.
    fn exists(&self, path: &Path) -> bool;
    /// Renames, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// The paths in a directory (any order).
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    /// `fsync` of a directory: its entries (new names, renames, removals) are durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Bytes free to an unprivileged writer and the size of the filesystem holding `dir`,
    /// or `None` when it cannot be told.
    fn space(&self, dir: &Path) -> Option<(u64, u64)>;
}

/// The spool's files on the real filesystem.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StdFs;

impl SpoolFile for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }
    fn sync_all(&self) -> io::Result<()> {
        File::sync_all(self)
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

impl SpoolFs for StdFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }
    fn open_rw(&self, path: &Path) -> io::Result<FileRef> {
        let f = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Box::new(f))
    }
    fn open_read(&self, path: &Path) -> io::Result<FileRef> {
        Ok(Box::new(File::open(path)?))
    }
    fn create_new(&self, path: &Path) -> io::Result<FileRef> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(Box::new(f))
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect()
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
    fn space(&self, dir: &Path) -> Option<(u64, u64)> {
        statvfs(dir)
    }
}

/// Free bytes (for an unprivileged writer) and total bytes of the filesystem of `dir`.
fn statvfs(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string and `st` a buffer of the right type,
    // which `statvfs` fills when it returns 0.
    let rc = unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: `statvfs` returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    // The field types differ between platforms (u32 on some, u64 here).
    #[allow(clippy::unnecessary_cast)]
    let frsize = st.f_frsize as u64;
    #[allow(clippy::unnecessary_cast)]
    Some((
        (st.f_bavail as u64).saturating_mul(frsize),
        (st.f_blocks as u64).saturating_mul(frsize),
    ))
}
