//! Archiving's cost (`relay-bench --archive`): the same load through our relay without and
//! with an archive address, alternating within each round, on one sink. With archiving on,
//! every message is delivered twice (the recipients' copy and the journal copy, both to the
//! sink): the goal is on what clients see, accepted messages per second with archiving at
//! least 90% of without; the table also gives end-to-end rates (both copies arrived) and
//! the relay's CPU per message.

use std::time::{Duration, Instant};

use relay::config::ArchiveConfig;

use crate::args::Args;
use crate::rounds::{Driver, Shape, drive, ms};
use crate::sink::Sink;
use crate::stats::{median, percentile};
use crate::{ours, procfs};

/// The archive goal: accepted messages/s with archiving on, as a share of without.
const GOAL: f64 = 0.90;

struct ArchiveRun {
    accept_rate: f64,
    e2e_rate: f64,
    p99_ms: f64,
    cpu_ms_per_message: f64,
    errors: usize,
}

async fn one(args: &Args, sink: &Sink, archive: bool) -> Result<ArchiveRun, String> {
    let shape = Shape::from_args(args, Driver::Ours);
    let spool = args.work_dir.join("spool-archive");
    let _ = std::fs::remove_dir_all(&spool);
    let connections = (shape.sessions + 100).max(1000) as u32;
    let mut cfg = ours::config(&spool, sink.port(), connections);
    if archive {
        cfg.archive = Some(ArchiveConfig {
            address: "journal@archive.example".into(),
            route: None,
            include_filtered_out: false,
            postmaster: "postmaster@acme.example".into(),
        });
        cfg = cfg.seal();
    }
    let relay = ours::OurRelay::start(
        &cfg,
        &args.work_dir.join("relay-archive.json"),
        &args.work_dir.join("relay-archive.log"),
    )?;
    let copies = if archive { 2 } else { 1 };
    let base = sink.count();
    let (warm, _) = drive(&shape.warm_up(), relay.smtp, args, Duration::from_secs(120)).await;
    if !sink
        .wait_for(
            base + warm * copies,
            Instant::now() + Duration::from_secs(120),
        )
        .await
    {
        return Err("archive bench: warm-up mail not delivered in 120 s".into());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = sink.count();
    let cpu0 = procfs::tree_cpu_seconds(relay.pid());
    let t0 = Instant::now();
    let (accepted, result) = drive(&shape, relay.smtp, args, args.timeout).await;
    let t_load = Instant::now();
    sink.wait_for(base + accepted * copies, t0 + args.timeout)
        .await;
    let arrivals = sink.arrivals_since(base);
    let t_end = arrivals
        .get(accepted * copies - 1)
        .copied()
        .unwrap_or_else(Instant::now);
    let cpu1 = procfs::tree_cpu_seconds(relay.pid());
    drop(relay);
    let delivered = (arrivals.len() / copies).min(accepted);
    Ok(ArchiveRun {
        accept_rate: accepted as f64 / (t_load - t0).as_secs_f64(),
        e2e_rate: delivered as f64 / (t_end - t0).as_secs_f64(),
        p99_ms: ms(percentile(&result.latencies, 99.0)),
        cpu_ms_per_message: (cpu1 - cpu0) / accepted.max(1) as f64 * 1000.0,
        errors: result.errors,
    })
}

/// Runs `args.rounds` rounds of (without, with) and prints the table and the goal.
pub(crate) async fn run(args: &Args, sink: &Sink) -> Result<(), String> {
    let mut without = Vec::new();
    let mut with = Vec::new();
    for round in 1..=args.rounds.max(1) {
        // Alternate which goes first, so neither always meets a warmer machine.
        let order = if round % 2 == 1 {
            [false, true]
        } else {
            [true, false]
        };
        for archive in order {
            let r = one(args, sink, archive).await?;
            eprintln!(
                "archive round {round}, archiving {}: accepted {:.0}/s, end to end {:.0}/s (every copy), p99 {:.1} ms, CPU {:.3} ms/message{}",
                if archive { "on " } else { "off" },
                r.accept_rate,
                r.e2e_rate,
                r.p99_ms,
                r.cpu_ms_per_message,
                if r.errors > 0 {
                    format!(", {} errors", r.errors)
                } else {
                    String::new()
                }
            );
            if archive {
                with.push(r);
            } else {
                without.push(r);
            }
        }
    }
    let med = |runs: &[ArchiveRun], f: fn(&ArchiveRun) -> f64| {
        median(&runs.iter().map(f).collect::<Vec<_>>())
    };
    println!();
    println!(
        "Archiving, median of {} rounds ({} messages of {} bytes, {} sessions, our generator)",
        without.len(),
        args.messages,
        args.size,
        args.sessions
    );
    println!(
        "| archiving | accepted msgs/s | end-to-end msgs/s (all copies) | p99 DATA→250 ms | CPU ms/message |"
    );
    println!("|---|---|---|---|---|");
    for (name, runs) in [("off", &without), ("on", &with)] {
        println!(
            "| {name} | {:.0} | {:.0} | {:.1} | {:.3} |",
            med(runs, |r| r.accept_rate),
            med(runs, |r| r.e2e_rate),
            med(runs, |r| r.p99_ms),
            med(runs, |r| r.cpu_ms_per_message),
        );
    }
    let ratio = med(&with, |r| r.accept_rate) / med(&without, |r| r.accept_rate);
    println!(
        "goal: accepted msgs/s with archiving ≥ {:.0}% of without: {:.0}% — {}",
        GOAL * 100.0,
        ratio * 100.0,
        if ratio >= GOAL { "met" } else { "NOT met" }
    );
    Ok(())
}
