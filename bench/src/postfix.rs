//! Postfix as the comparison relay: Debian's package, configured by
//! `bench/scripts/setup-postfix.sh` (loopback only, relay for 127.0.0.0/8, durable queue
//! as shipped). Here: point its relayhost at the sink, empty its queue, start it, find the
//! master's pid, and stop it again when the [`Postfix`] value is dropped, on error too.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Where Postfix's smtpd listens (`inet_interfaces = loopback-only`, service `smtp`).
pub const ADDR: &str = "127.0.0.1:25";

/// Largest message Postfix accepts in the bench: our relay's default (35 MiB), so the
/// 10 MiB scaling shape is not refused by Postfix's shipped 10,240,000 bytes.
pub const MESSAGE_SIZE_LIMIT: u64 = 35 * 1024 * 1024;

/// A running Postfix; stopped on drop.
pub struct Postfix {
    pub master_pid: u32,
}

fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Postfix and its tools are installed.
pub fn available() -> bool {
    run("postconf", &["-h", "mail_version"]).is_ok()
}

pub fn version() -> String {
    run("postconf", &["-h", "mail_version"])
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

/// Deliveries to the relayhost of one message to `recipients` recipients: Postfix's smtp
/// client sends at most `smtp_destination_recipient_limit` (default 50) per transaction.
pub fn transactions_per_message(recipients: usize) -> usize {
    let limit = run(
        "postconf",
        &["-x", "-h", "smtp_destination_recipient_limit"],
    )
    .ok()
    .and_then(|v| v.trim().parse::<usize>().ok())
    .filter(|&l| l > 0)
    .unwrap_or(50);
    recipients.max(1).div_ceil(limit)
}

pub fn addr() -> SocketAddr {
    ADDR.parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 25)))
}

impl Postfix {
    /// Starts Postfix with an empty queue, relaying to `127.0.0.1:sink_port`.
    pub fn start(sink_port: u16) -> Result<Postfix, String> {
        let _ = run("postfix", &["stop"]);
        run(
            "postconf",
            &[
                "-e",
                &format!("relayhost = [127.0.0.1]:{sink_port}"),
                &format!("message_size_limit = {MESSAGE_SIZE_LIMIT}"),
            ],
        )?;
        // Leftovers of an earlier run would be delivered into this one.
        let _ = run("postsuper", &["-d", "ALL"]);
        run("postfix", &["start"])?;
        // From here on the guard stops Postfix whatever happens next.
        let mut pf = Postfix { master_pid: 0 };
        for _ in 0..500 {
            if let Ok(pid) = std::fs::read_to_string("/var/spool/postfix/pid/master.pid")
                && let Ok(pid) = pid.trim().parse::<u32>()
                && std::path::Path::new(&format!("/proc/{pid}")).exists()
                && std::net::TcpStream::connect(ADDR).is_ok()
            {
                pf.master_pid = pid;
                return Ok(pf);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err("postfix did not come up within 10 s".into())
    }

    /// `postqueue -p` reports an empty queue.
    pub fn queue_empty(&self) -> bool {
        run("postqueue", &["-p"])
            .map(|out| out.contains("Mail queue is empty"))
            .unwrap_or(false)
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        if let Err(e) = run("postfix", &["stop"]) {
            eprintln!("warning: could not stop postfix: {e}");
        }
        // `postfix stop` returns once the master was signalled; wait (bounded) for it to go.
        for _ in 0..250 {
            if self.master_pid == 0
                || !std::path::Path::new(&format!("/proc/{}", self.master_pid)).exists()
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Postfix's milter settings for one run (`smtpd_milters` and friends, set with
/// `postconf -e`); what `main.cf` said before is put back on drop, on error too.
pub struct MilterSettings {
    /// Each parameter and its explicit value before, `None` when it was not set.
    saved: Vec<(&'static str, Option<String>)>,
}

impl MilterSettings {
    /// Every message Postfix receives goes through the milter at `127.0.0.1:port`;
    /// when it cannot answer, the message is tempfailed (as our relay's `TempFail`).
    pub fn apply(port: u16) -> Result<MilterSettings, String> {
        let wanted = [
            ("smtpd_milters", format!("inet:127.0.0.1:{port}")),
            ("milter_default_action", "tempfail".to_string()),
            ("milter_protocol", "6".to_string()),
        ];
        let mut settings = MilterSettings { saved: Vec::new() };
        for (name, _) in &wanted {
            // `-n`: only what main.cf sets explicitly; nothing when it is a default.
            let before = run("postconf", &["-n", "-h", name])?;
            let before = before.trim_end_matches('\n');
            settings
                .saved
                .push((name, (!before.is_empty()).then(|| before.to_string())));
        }
        let assignments: Vec<String> = wanted.iter().map(|(n, v)| format!("{n} = {v}")).collect();
        let mut argv = vec!["-e"];
        argv.extend(assignments.iter().map(String::as_str));
        run("postconf", &argv)?;
        Ok(settings)
    }
}

impl Drop for MilterSettings {
    fn drop(&mut self) {
        for (name, before) in &self.saved {
            let restored = match before {
                Some(v) => run("postconf", &["-e", &format!("{name} = {v}")]),
                None => run("postconf", &["-X", name]),
            };
            if let Err(e) = restored {
                eprintln!("warning: could not restore postfix's {name}: {e}");
            }
        }
    }
}
