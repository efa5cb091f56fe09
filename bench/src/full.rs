//! The full run: rounds side by side, then idle sessions, large messages, the tarpit
//! and a manifest reload, each printed as it finishes.

use std::time::Duration;

use crate::sink::Sink;
use crate::stats::median;

use crate::args::{Args, GeneratorChoice};
use crate::report::{order, print_run, print_source_table, print_table};
use crate::rounds::{Driver, Run, Shape, System, default_relayctl, loadavg, run_system};
use crate::{
    archive, big, downstream, filter, idle, ours, postfix, reload, scaling, source, tarpit,
};

pub(crate) async fn bench(args: Args) -> Result<(), String> {
    if args.postfix && !args.archive && !postfix::available() {
        return Err(
            "postfix is not installed: run bench/scripts/setup-postfix.sh (or pass --no-postfix)"
                .into(),
        );
    }
    if !args.scaling
        && !args.archive
        && !args.filter
        && args.generator != GeneratorChoice::Ours
        && !source::available()
    {
        return Err(
            "smtp-source is not installed: run bench/scripts/setup-postfix.sh (or pass --generator ours)"
                .into(),
        );
    }
    std::fs::create_dir_all(&args.work_dir)
        .map_err(|e| format!("cannot create {}: {e}", args.work_dir.display()))?;
    eprintln!(
        "relay-bench: {} CPUs, load average {}, postfix {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        loadavg(),
        if args.postfix {
            postfix::version()
        } else {
            "not run".into()
        }
    );
    if args.filter {
        return filter::run(&args).await;
    }
    if args.archive {
        let sink = Sink::start()?;
        archive::run(&args, &sink).await?;
        eprintln!("relay-bench: done, load average {}", loadavg());
        return Ok(());
    }
    if args.scaling {
        let sink = Sink::start()?;
        let rows = scaling::run(&args, &sink).await?;
        drop(sink);
        scaling::print_table(&rows, args.postfix);
        eprintln!("relay-bench: done, load average {}", loadavg());
        return Ok(());
    }
    let mut drivers = Vec::new();
    if args.generator != GeneratorChoice::SmtpSource {
        drivers.push(Driver::Ours);
    }
    if args.generator != GeneratorChoice::Ours {
        drivers.push(Driver::SmtpSource { reuse: false });
        drivers.push(Driver::SmtpSource { reuse: true });
    }
    // Per driver: our runs and Postfix's, one of each per round.
    let mut runs: Vec<(Driver, Vec<Run>, Vec<Run>)> = drivers
        .iter()
        .map(|&d| (d, Vec::new(), Vec::new()))
        .collect();
    let sink = if args.rounds > 0 {
        Some(Sink::start()?)
    } else {
        None
    };
    for round in (1..=args.rounds).filter(|_| sink.is_some()) {
        let Some(sink) = &sink else { break };
        for (driver, ours_runs, pf_runs) in &mut runs {
            let shape = Shape::from_args(&args, *driver);
            for system in order(args.postfix, round) {
                let run = run_system(system, &shape, &args, sink).await?;
                print_run(system.name(), *driver, round, &run);
                match system {
                    System::Ours => ours_runs.push(run),
                    System::Postfix => pf_runs.push(run),
                }
            }
        }
    }
    drop(sink);
    if args.rounds > 0 {
        for (driver, ours_runs, pf_runs) in &runs {
            if *driver == Driver::Ours {
                print_table(&args, ours_runs, pf_runs);
            }
        }
        let source: Vec<_> = runs.iter().filter(|(d, ..)| *d != Driver::Ours).collect();
        if !source.is_empty() {
            print_source_table(&args, &source);
        }
    }

    if args.idle_sessions > 0 {
        let spool = args.work_dir.join("spool-idle");
        let _ = std::fs::remove_dir_all(&spool);
        let cfg = ours::config(&spool, 9, (args.idle_sessions + 100) as u32);
        let relay = ours::OurRelay::start(
            &cfg,
            &args.work_dir.join("relay-idle.json"),
            &args.work_dir.join("relay-idle.log"),
        )?;
        let r = idle::measure(relay.smtp, relay.pid(), args.idle_sessions).await?;
        drop(relay);
        let delta = r.rss_with_sessions_kib.saturating_sub(r.rss_before_kib);
        println!();
        println!(
            "Idle sessions: {} open sessions (after greeting and EHLO): relay RSS {:.1} MiB (idle relay before: {:.1} MiB; {:.2} KiB per session). Target ≤ 64 MiB.",
            r.sessions,
            r.rss_with_sessions_kib as f64 / 1024.0,
            r.rss_before_kib as f64 / 1024.0,
            delta as f64 / r.sessions as f64
        );
    }

    if args.big_sessions > 0 {
        let spool = args.work_dir.join("spool-big");
        let _ = std::fs::remove_dir_all(&spool);
        // The relay delivers every message to this sink: ingress and delivery measured.
        // It holds DATA until all are there: the texts are delivered at the same time.
        let big_sink = downstream::TimedSink::start_with_barrier(args.big_sessions).await?;
        let mut cfg = ours::config(&spool, big_sink.port(), (args.big_sessions + 10) as u32);
        // All of them delivered at once, not `destination_concurrency` at a time.
        cfg.delivery.destination_concurrency = args.big_sessions as u32;
        cfg.delivery.concurrency = cfg.delivery.concurrency.max(args.big_sessions as u32);
        let cfg = cfg.seal();
        let relay = ours::OurRelay::start(
            &cfg,
            &args.work_dir.join("relay-big.json"),
            &args.work_dir.join("relay-big.log"),
        )?;
        let r = big::measure(
            relay.smtp,
            relay.pid(),
            args.big_sessions,
            args.big_size,
            args.timeout,
            &big_sink,
        )
        .await?;
        drop(relay);
        let _ = std::fs::remove_dir_all(&spool);
        println!();
        println!(
            "Large messages: {} concurrent messages of {:.1} MB accepted in {:.1} s, {} of them at the sink after {:.1} s ({:.1} MB of text received): relay RSS idle {:.1} MiB; while they stream in (until the first 250) peak {:.1} MiB, {:.1} MiB above idle; over the whole run, delivery to the sink included, peak {:.1} MiB, {:.1} MiB above idle (target ≤ 64 MiB above idle).",
            r.sessions,
            r.size as f64 / 1e6,
            r.elapsed.as_secs_f64(),
            r.delivered,
            r.delivered_after.as_secs_f64(),
            big_sink.bytes() as f64 / 1e6,
            r.rss_idle_kib as f64 / 1024.0,
            r.rss_ingress_peak_kib as f64 / 1024.0,
            r.rss_ingress_peak_kib.saturating_sub(r.rss_idle_kib) as f64 / 1024.0,
            r.rss_peak_kib as f64 / 1024.0,
            r.rss_peak_kib.saturating_sub(r.rss_idle_kib) as f64 / 1024.0
        );
    }

    if args.tarpit_messages > 0 {
        let spec = tarpit::TarpitSpec {
            sessions: args.sessions,
            messages: args.tarpit_messages,
            rate: args.tarpit_rate as f64,
            tarpit_every: args.tarpit_every,
            mode: args.tarpit_mode,
            timeout: Duration::from_secs(60),
        };
        let runs = tarpit::measure(spec, &args.work_dir, args.tarpit_rounds).await?;
        let pick = |with: bool, f: fn(&tarpit::TarpitRun) -> Option<Duration>| {
            median(
                &runs
                    .iter()
                    .filter(|r| r.with_tarpit == with)
                    .map(|r| tarpit::ms(f(r)))
                    .collect::<Vec<_>>(),
            )
        };
        let (p50_without, p50_with) = (pick(false, |r| r.p50), pick(true, |r| r.p50));
        let (p99_without, p99_with) = (pick(false, |r| r.p99), pick(true, |r| r.p99));
        let lost: usize = runs
            .iter()
            .map(|r| r.good_sent.saturating_sub(r.good_delivered))
            .sum();
        println!();
        println!(
            "### Delivery next to a tarpit ({} mode): {} messages to the good route at {}/s over {} sessions and one more to a second route after every {}th, the second route's host a tarpit or (without) a sink; median of {} round(s)",
            args.tarpit_mode.name(),
            args.tarpit_messages,
            args.tarpit_rate,
            args.sessions,
            args.tarpit_every,
            args.tarpit_rounds
        );
        println!();
        println!(
            "| good route, 250 → at the sink | without tarpit | with tarpit | with/without | target |"
        );
        println!("| --- | ---: | ---: | ---: | --- |");
        println!(
            "| p50 (ms) | {p50_without:.1} | {p50_with:.1} | {:.2} |  |",
            p50_with / p50_without
        );
        println!(
            "| p99 (ms) | {p99_without:.1} | {p99_with:.1} | {:.2} | ≤ 1.2 |",
            p99_with / p99_without
        );
        if lost > 0 {
            println!("\nWarning: {lost} good-route messages did not reach the sink within 60 s.");
        }
    }

    if args.reload_edits > 0 {
        match args.relayctl.clone().or_else(default_relayctl) {
            Some(relayctl) => {
                let t = reload::measure(&relayctl, &args.work_dir, args.reload_edits).await?;
                let max = t.iter().copied().fold(f64::NAN, f64::max);
                let min = t.iter().copied().fold(f64::NAN, f64::min);
                println!();
                println!(
                    "Manifest change in force (relayctl run, {} edits): median {:.0} ms, min {:.0} ms, max {:.0} ms. Target < 1,000 ms.",
                    t.len(),
                    median(&t),
                    min,
                    max
                );
            }
            None => eprintln!(
                "note: no relayctl next to relay-bench (cargo build --release -p operator --bin relayctl) and no --relayctl: manifest reload not measured"
            ),
        }
    }
    eprintln!("relay-bench: done, load average {}", loadavg());
    Ok(())
}
