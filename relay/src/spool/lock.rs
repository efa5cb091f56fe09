//! One process per spool: the exclusive lock on the file `lock` in the spool directory,
//! which names its holder (pid and host) to a second process refused it.
//!
//! Not here: anything the spool stores.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::error::SpoolError;

/// Takes the spool's lock and writes who holds it, or says who does.
pub(super) fn take_lock(dir: &Path) -> Result<File, SpoolError> {
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
pub(super) fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}
