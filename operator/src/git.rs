//! Reading manifests at a Git revision, for `relayctl plan`. Uses the `git` command line, so
//! the user's repository configuration (worktrees, alternates, safe.directory) applies as
//! it does to their own git commands.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Why files could not be read from Git.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot run git: {0}")]
    Spawn(#[from] std::io::Error),
    #[error("git {args} failed: {stderr}")]
    Failed { args: String, stderr: String },
}

fn git(repo: &Path, args: &[&str]) -> Result<Vec<u8>, GitError> {
    let output = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .output()?;
    if !output.status.success() {
        return Err(GitError::Failed {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(output.stdout)
}

/// The top directory of the repository holding `dir`.
pub fn toplevel(dir: &Path) -> Result<PathBuf, GitError> {
    let out = git(dir, &["rev-parse", "--show-toplevel"])?;
    Ok(PathBuf::from(String::from_utf8_lossy(&out).trim()))
}

/// `(path, text)` of every `*.yaml`/`*.yml` file under `paths` (relative to the repository
/// top) at revision `rev`. An empty `paths` means the whole tree.
pub fn yaml_files_at(
    repo: &Path,
    rev: &str,
    paths: &[String],
) -> Result<Vec<(String, String)>, GitError> {
    let mut args = vec!["ls-tree", "-r", "--name-only", "-z", rev, "--"];
    args.extend(paths.iter().map(String::as_str));
    let listing = git(repo, &args)?;
    let mut files = Vec::new();
    for name in listing.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).to_string();
        if !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            continue;
        }
        let text = git(repo, &["show", &format!("{rev}:{name}")])?;
        files.push((name, String::from_utf8_lossy(&text).to_string()));
    }
    files.sort();
    Ok(files)
}
