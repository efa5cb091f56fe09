//! The `relay` binary: `relay --config FILE.json [--drain-delay-seconds N]
//! [--log-format text|json|auto]`, or `relay --config FILE.json --drain [--drain-to URL]…
//! [--drain-token-file FILE]` to empty a spool no relay serves any more
//! ([`relay::admin::drain`]; exit status 0 once it is empty).
//!
//! Loads the RelayConfig document, starts the relay, prints one line with the listening
//! addresses (`relay listening smtp=… submission=… smtps=… admin=…`) on stdout, polls the
//! file every second and reloads when its content changes (an invalid new document is
//! logged and the old config stays in force), and stops gracefully on SIGTERM or SIGINT
//! (not ready at once, listeners open for the drain delay, then open sessions and
//! deliveries under way finish), so it behaves as PID 1 in a container. A spool that
//! another process holds, like any other start failure, exits non-zero with the reason.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use relay::{RelayConfig, StartOptions};
use tokio::signal::unix::{SignalKind, signal};

/// The SMTP relay of one organization.
#[derive(Parser, Debug)]
#[command(name = "relay", version = concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("SMTPRELAY_GIT_REVISION"), ")"))]
struct Args {
    /// The RelayConfig document (JSON), re-read every second.
    #[arg(long, value_name = "FILE.json")]
    config: PathBuf,
    /// Seconds between failing readiness and closing the listeners on SIGTERM, so
    /// Service endpoints and load balancers stop sending new connections first.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    drain_delay_seconds: u64,
    /// Log output: `text` lines, `json` objects (one per line), or `auto` (text on a
    /// terminal, JSON otherwise).
    #[arg(long, value_enum, default_value_t = relay::logging::LogFormat::Text)]
    log_format: relay::logging::LogFormat,
    /// Empty the configuration's spool instead of serving: hand every message over to
    /// the relays of `--drain-to`, or deliver them all when none is given. Exits 0 once
    /// the spool is empty.
    #[arg(long)]
    drain: bool,
    /// A relay's admin endpoint (`http://HOST:PORT`) to hand drained messages to; may be
    /// repeated (tried in turn).
    #[arg(long, value_name = "URL", requires = "drain")]
    drain_to: Vec<String>,
    /// The bearer token of the receiving relays' queue administration (a file, re-read
    /// on every retry). Defaults to the configuration's `adminTokenFile`.
    #[arg(long, value_name = "FILE", requires = "drain")]
    drain_token_file: Option<PathBuf>,
    /// Serve the number of messages still to drain (`/metrics`) on this address.
    #[arg(long, value_name = "ADDR", requires = "drain")]
    drain_status_listen: Option<std::net::SocketAddr>,
}

fn load(path: &str) -> Result<(String, RelayConfig), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let config = RelayConfig::from_json(&text).map_err(|e| format!("{path}: {e}"))?;
    Ok((text, config))
}

fn main() -> ExitCode {
    let args = Args::parse();
    relay::logging::init(args.log_format);
    let path = args.config.to_string_lossy().into_owned();
    let drain_delay = Duration::from_secs(args.drain_delay_seconds);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("relay: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = if args.drain {
        runtime.block_on(drain(&path, &args))
    } else {
        runtime.block_on(run(&path, drain_delay))
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("relay: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn drain(path: &str, args: &Args) -> Result<(), String> {
    let (_, config) = load(path)?;
    let handover = if args.drain_to.is_empty() {
        None
    } else {
        let token_file = args
            .drain_token_file
            .clone()
            .or_else(|| config.admin_token_file.as_ref().map(PathBuf::from))
            .ok_or(
                "--drain-to needs --drain-token-file or an adminTokenFile in the configuration",
            )?;
        Some(relay::admin::drain::Handover {
            targets: args.drain_to.clone(),
            token_file,
        })
    };
    let work = relay::admin::drain::drain(&config, handover.as_ref(), args.drain_status_listen);
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    tokio::select! {
        r = work => {
            let report = r.map_err(|e| e.to_string())?;
            println!(
                "drained handed_over={} delivered={} finished={}",
                report.handed_over, report.delivered, report.finished
            );
            Ok(())
        }
        // What was handed over is gone from this spool; the rest stays for the next run.
        _ = term.recv() => Err("stopped by SIGTERM before the spool was empty".into()),
    }
}

async fn run(path: &str, drain_delay: Duration) -> Result<(), String> {
    let (mut text, config) = load(path)?;
    let handle = relay::start(config, StartOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "relay listening smtp={} submission={} smtps={} admin={}",
        handle.smtp_addr(),
        handle.submission_addr(),
        handle.smtps_addr(),
        handle.admin_addr()
    );
    let _ = std::io::stdout().flush();
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tick.tick() => {}
        }
        let new_text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(%path, error = %e, "cannot read config; keeping the one in force");
                continue;
            }
        };
        // The document, or a Secret file it names (rotated certificate, changed
        // credentials): either is a new generation.
        let config = match RelayConfig::from_json(&new_text) {
            Ok(c) => c,
            Err(e) => {
                if new_text != text {
                    tracing::error!(%path, error = %e, "invalid configuration; keeping the one in force");
                    // The hash the document states, when it has one: what the operator
                    // expects this relay to run.
                    let stated = serde_json::from_str::<serde_json::Value>(&new_text)
                        .ok()
                        .and_then(|v| v["hash"].as_str().map(str::to_string))
                        .unwrap_or_default();
                    handle.report_refused(&stated, &e.to_string());
                }
                text = new_text;
                continue;
            }
        };
        text = new_text;
        match handle.reload_if_changed(config) {
            Ok(None) => {}
            Ok(Some(reload)) => tracing::info!(
                generation = reload.generation,
                hash = %handle.config_hash(),
                content_hash = %handle.content_hash(),
                credentials_changed = reload.only_files,
                "new configuration in force"
            ),
            Err(e) => {
                tracing::error!(%path, error = %e, "invalid configuration; keeping the one in force")
            }
        }
    }
    tracing::info!("signal received, stopping");
    handle.stop(drain_delay).await;
    Ok(())
}
