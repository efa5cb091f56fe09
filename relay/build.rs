// Puts the Git revision of the source into `SMTPRELAY_GIT_REVISION` for `--version`;
// "unknown" when git or the repository is not there (a source tarball, a container build).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let revision = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SMTPRELAY_GIT_REVISION={revision}");
    println!("cargo:rerun-if-changed=build.rs");
    // A checkout or a commit changes HEAD or the branch it points to.
    if let Some(git) = git_dir() {
        let head = git.join("HEAD");
        if head.exists() {
            println!("cargo:rerun-if-changed={}", head.display());
            if let Some(branch) = std::fs::read_to_string(&head)
                .ok()
                .and_then(|h| h.strip_prefix("ref: ").map(|r| r.trim().to_string()))
            {
                let common = common_dir(&git);
                for dir in [&git, &common] {
                    let r = dir.join(&branch);
                    if r.exists() {
                        println!("cargo:rerun-if-changed={}", r.display());
                    }
                }
            }
        }
    }
}

/// The `.git` directory of the repository holding this crate (a worktree's `.git` file
/// names it).
fn git_dir() -> Option<PathBuf> {
    let mut dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    loop {
        let git = dir.join(".git");
        if git.is_dir() {
            return Some(git);
        }
        if git.is_file() {
            let text = std::fs::read_to_string(&git).ok()?;
            let path = text.strip_prefix("gitdir:")?.trim();
            return Some(dir.join(path));
        }
        if !dir.pop() {
            return None;
        }
    }
}

/// Where branch refs live for a worktree's git directory.
fn common_dir(git: &Path) -> PathBuf {
    std::fs::read_to_string(git.join("commondir"))
        .map(|c| git.join(c.trim()))
        .unwrap_or_else(|_| git.to_path_buf())
}
