//! Shared by the tests that drive `relayctl plan` and `relayctl explain` against a git
//! repository: they need the `git` program, which a source tarball's machine may lack.

use std::process::{Command, Stdio};

/// Makes sure `git` is on the PATH, installing Debian's package when it is not (as the
/// container tests install debootstrap and the Redis tests redis-server), once per test
/// binary. A machine where that is impossible gets a clear panic naming the package.
pub fn ensure_git() {
    static INSTALLED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let result = INSTALLED.get_or_init(|| {
        let present = || {
            Command::new("git")
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if present() {
            return Ok(());
        }
        // One installer at a time across test binaries running in parallel.
        let lock = std::fs::File::create(std::env::temp_dir().join("relayctl-tests-git.lock"))
            .map_err(|e| e.to_string())?;
        lock.lock().map_err(|e| e.to_string())?;
        if present() {
            return Ok(());
        }
        eprintln!("git is missing: installing Debian's git package");
        let run = |args: &[&str]| {
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null())
                .status()
                .map_err(|e| format!("apt-get: {e}"))
                .and_then(|s| {
                    if s.success() {
                        Ok(())
                    } else {
                        Err(format!("apt-get {args:?}: {s}"))
                    }
                })
        };
        run(&["update", "-qq"])?;
        run(&["install", "-y", "-qq", "--no-install-recommends", "git"])?;
        if present() {
            Ok(())
        } else {
            Err("installed, but still not runnable".into())
        }
    });
    if let Err(e) = result {
        panic!("git is needed by the plan and explain tests and could not be installed: {e}");
    }
}
