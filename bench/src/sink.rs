//! The downstream both relays forward to: Postfix's `smtp-sink`, run as a child process.
//!
//! `smtp-sink -c` prints `sess=N quit=N mesg=N` (separated by `\r`) each time a message
//! arrives; a reader thread parses it and timestamps every new message, which gives the
//! end-to-end completion time and the delivery lag. The sink is killed when dropped.
//! Not here: the relays, the load.

use std::io::Read;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `smtp-sink`.
pub struct Sink {
    child: Child,
    port: u16,
    arrivals: Arc<Mutex<Vec<Instant>>>,
}

/// A free loopback port (the OS picks it; it is released for the caller to bind).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Sink {
    pub fn start() -> Result<Sink, String> {
        let port = free_port().map_err(|e| format!("no free port for the sink: {e}"))?;
        let mut cmd = Command::new("smtp-sink");
        cmd.arg("-c");
        if rustix::process::geteuid().is_root() {
            // smtp-sink refuses to run as root.
            cmd.args(["-u", "postfix"]);
        }
        cmd.arg(format!("127.0.0.1:{port}"))
            .arg("1000")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().map_err(|e| {
            format!("cannot run smtp-sink ({e}); run bench/scripts/setup-postfix.sh first")
        })?;
        let Some(mut out) = child.stdout.take() else {
            let _ = child.kill();
            return Err("smtp-sink has no stdout".into());
        };
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        {
            let arrivals = arrivals.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut pending = Vec::new();
                let mut seen: u64 = 0;
                while let Ok(n) = out.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    let now = Instant::now();
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(end) = pending.iter().position(|&b| b == b'\r' || b == b'\n') {
                        let line: Vec<u8> = pending.drain(..=end).collect();
                        let Some(count) = mesg_count(&line) else {
                            continue;
                        };
                        if count > seen {
                            let mut a = arrivals.lock().unwrap_or_else(|e| e.into_inner());
                            a.extend(std::iter::repeat_n(now, (count - seen) as usize));
                            seen = count;
                        }
                    }
                }
            });
        }
        let sink = Sink {
            child,
            port,
            arrivals,
        };
        // Wait until it listens (bounded).
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(sink);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(format!(
            "smtp-sink did not listen on 127.0.0.1:{port} within 2 s"
        ))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Messages received so far.
    pub fn count(&self) -> usize {
        self.arrivals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Arrival times of messages `from..` (in arrival order).
    pub fn arrivals_since(&self, from: usize) -> Vec<Instant> {
        let a = self.arrivals.lock().unwrap_or_else(|e| e.into_inner());
        a.get(from..).map(<[Instant]>::to_vec).unwrap_or_default()
    }

    /// Waits until the sink has `target` messages in all, at most until `deadline`.
    pub async fn wait_for(&self, target: usize, deadline: Instant) -> bool {
        while Instant::now() < deadline {
            if self.count() >= target {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.count() >= target
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mesg_count(line: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(line).ok()?;
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("mesg="))
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_the_message_counter() {
        assert_eq!(super::mesg_count(b"sess=2 quit=1 mesg=17\r"), Some(17));
        assert_eq!(super::mesg_count(b"garbage\r"), None);
    }
}
