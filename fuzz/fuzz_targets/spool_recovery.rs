//! Spool recovery on damaged input: a spool directory written from the fuzz input (a
//! segment of valid records and two queue files, then bit flips and truncations anywhere
//! in them) is opened. It never panics, never fails to open, never drops a record or file
//! left intact (a record a damaged length claims is copied whole to quarantine), and
//! whatever it keeps reads back exactly as written. The case itself is
//! `relay::spool::fuzzing::recovery_case`, which the normal suite also runs as a proptest.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// A scratch directory of this process, in memory where the machine has one.
fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        base.join(format!("spool-recovery-fuzz-{}", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = scratch();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    if let Err(broken) = relay::spool::fuzzing::recovery_case(data, dir) {
        panic!("{broken}");
    }
});
