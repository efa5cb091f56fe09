//! Our relay as a system under test: a `RelayConfig` for the bench (loopback clients may
//! relay anything from `acme.example`; one default route to the sink; limits raised so
//! the load is not refused; a durable spool on disk), run in a child process
//! (`relay-bench serve-relay CONFIG`, the same `relay::start` the `relay` binary runs), so
//! its CPU time and memory are its own. The child gets SIGTERM, then SIGKILL, on drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use relay::RelayConfig;
use relay::config::*;

/// The bench's relay configuration.
pub fn config(spool_dir: &Path, sink_port: u16, connections_per_ip: u32) -> RelayConfig {
    let mut limits = LimitsConfig::for_customer(1_000_000, true);
    limits.user_messages_per_day = u64::MAX / 4;
    limits.user_recipients_per_day = u64::MAX / 4;
    limits.customer_recipients_per_day = u64::MAX / 4;
    limits.customer_recipients_per10_minutes = u64::MAX / 4;
    limits.connections_per_ip = connections_per_ip;
    let mut cfg = RelayConfig::loopback(&spool_dir.to_string_lossy(), sink_port);
    cfg.organization.name = "bench/acme".into();
    cfg.hostname = "relay.bench.example".into();
    cfg.limits = limits;
    // Postfix's default_destination_concurrency_limit: both systems deliver to the sink
    // over at most 20 connections.
    cfg.delivery.destination_concurrency = 20;
    cfg.seal()
}

/// Our relay in a child process.
pub struct OurRelay {
    child: Child,
    pub smtp: SocketAddr,
}

impl OurRelay {
    /// Writes `config` next to `log` and starts the relay on it; logs go to `log`.
    pub fn start(config: &RelayConfig, config_path: &Path, log: &Path) -> Result<OurRelay, String> {
        std::fs::write(config_path, config.to_json())
            .map_err(|e| format!("cannot write {}: {e}", config_path.display()))?;
        let exe = std::env::current_exe().map_err(|e| format!("cannot find myself: {e}"))?;
        let log_file = std::fs::File::create(log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let mut child = Command::new(exe)
            .arg("serve-relay")
            .arg(config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("cannot start the relay: {e}"))?;
        let Some(out) = child.stdout.take() else {
            let _ = child.kill();
            return Err("relay child has no stdout".into());
        };
        let mut guard = OurRelay {
            child,
            smtp: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let mut line = String::new();
        BufReader::new(out)
            .read_line(&mut line)
            .map_err(|e| format!("relay did not start: {e}"))?;
        let smtp = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("smtp="))
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("relay did not start (see {}): {line:?}", log.display()))?;
        guard.smtp = smtp;
        Ok(guard)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for OurRelay {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `relay-bench serve-relay CONFIG`: the relay, as the `relay` binary runs it, until SIGTERM.
pub fn serve(config_path: &str) -> Result<(), String> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .log_internal_errors(false)
        .init();
    let text = std::fs::read_to_string(config_path)
        .map_err(|e| format!("cannot read {config_path}: {e}"))?;
    let config = RelayConfig::from_json(&text).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let handle = relay::start(config, relay::StartOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        println!("relay listening smtp={}", handle.smtp_addr());
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| e.to_string())?;
        term.recv().await;
        handle.shutdown().await;
        Ok(())
    })
}
