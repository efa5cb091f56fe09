//! The second load generator: Postfix's own `smtp-source`, run as a child process
//! against either relay, so the comparison does not rest on our generator alone.
//!
//! `smtp-source` speaks plain SMTP without PIPELINING (HELO, then MAIL, each RCPT and
//! DATA one reply at a time). By default it opens a connection per message; with
//! `reuse` (`-d`) each session sends its messages over one connection. `-c` prints a
//! running count of completed DATA commands, which gives the number of accepted messages
//! even when it stops early. It gives no per-message timing: the caller measures
//! end-to-end at the sink. The child is killed when the run ends, on timeout too.
//!
//! Not here: starting the systems under test, the sink, the statistics.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::load::{LoadResult, LoadSpec};

/// Where Debian's postfix package installs it.
const PROGRAM: &str = "smtp-source";

/// `smtp-source` is installed.
pub fn available() -> bool {
    Command::new(PROGRAM)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// The command line for `spec`: `sessions` parallel sessions, `messages` messages in all,
/// `size` bytes of body (headers not counted) to `recipients` recipients each.
pub fn arguments(spec: &LoadSpec, reuse: bool) -> Vec<String> {
    let mut a: Vec<String> = vec!["-c".into()];
    if reuse {
        a.push("-d".into());
    }
    a.extend([
        "-s".into(),
        spec.sessions.to_string(),
        "-m".into(),
        spec.messages.to_string(),
        "-l".into(),
        spec.size.to_string(),
        "-r".into(),
        spec.recipients.to_string(),
        "-M".into(),
        "load.acme.example".into(),
        "-f".into(),
        "bench@acme.example".into(),
        "-t".into(),
        "rcpt@example.net".into(),
        spec.addr.to_string(),
    ]);
    a
}

/// The last count `-c` printed (`1\r2\r…N\n`).
fn completed(stdout: &str) -> usize {
    stdout
        .split(['\r', '\n'])
        .filter_map(|s| s.trim().parse::<usize>().ok())
        .max()
        .unwrap_or(0)
}

/// Runs `smtp-source` for `spec`; returns the number of accepted messages when it exits
/// or `spec.timeout` passed. Only the error count and first error of the result are
/// filled in: `smtp-source` reports no per-message times.
pub async fn run(spec: &LoadSpec, reuse: bool, work: &Path) -> (usize, LoadResult) {
    let mut out = LoadResult::default();
    let out_path = work.join("smtp-source.out");
    let err_path = work.join("smtp-source.err");
    let files =
        std::fs::File::create(&out_path).and_then(|o| Ok((o, std::fs::File::create(&err_path)?)));
    let (stdout, stderr) = match files {
        Ok(f) => f,
        Err(e) => {
            out.errors = spec.messages;
            out.first_error = Some(format!("cannot create {}: {e}", out_path.display()));
            return (0, out);
        }
    };
    let child = Command::new(PROGRAM)
        .args(arguments(spec, reuse))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            out.errors = spec.messages;
            out.first_error = Some(format!("cannot run {PROGRAM}: {e}"));
            return (0, out);
        }
    };
    let deadline = Instant::now() + spec.timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let accepted =
        completed(&std::fs::read_to_string(&out_path).unwrap_or_default()).min(spec.messages);
    out.errors = spec.messages - accepted;
    match status {
        None => out.first_error = Some(format!("{PROGRAM} timed out")),
        Some(s) if !s.success() => {
            let err = std::fs::read_to_string(&err_path).unwrap_or_default();
            out.first_error = Some(format!(
                "{PROGRAM} exited with {s}: {}",
                err.lines().last().unwrap_or("")
            ));
        }
        Some(_) if out.errors > 0 => {
            out.first_error = Some(format!(
                "{PROGRAM} completed {accepted} of {}",
                spec.messages
            ));
        }
        Some(_) => {}
    }
    (accepted, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_count_is_the_number_of_completed_messages() {
        assert_eq!(completed("1\r2\r3\r\n"), 3);
        assert_eq!(completed(""), 0);
        assert_eq!(completed("1\r2\rsmtp-source: fatal: x\n"), 2);
    }

    #[test]
    fn reuse_adds_dash_d_and_the_envelope_is_what_the_bench_relay_accepts() {
        let spec = LoadSpec {
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 2525)),
            sessions: 20,
            messages: 100,
            size: 1024,
            recipients: 10,
            per_connection: 100,
            timeout: Duration::from_secs(1),
        };
        let once = arguments(&spec, false).join(" ");
        let reused = arguments(&spec, true).join(" ");
        assert!(!once.contains("-d"));
        assert!(reused.starts_with("-c -d "));
        assert!(once.contains("-s 20 -m 100 -l 1024 -r 10"));
        assert!(once.contains("-f bench@acme.example"));
        assert!(once.ends_with("127.0.0.1:2525"));
    }
}
