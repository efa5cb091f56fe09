//! The Markdown tables a run prints: medians of every measured row per system, the ratio
//! ours/Postfix, and this round's goals beside the numbers.

use crate::stats::median;

use crate::args::Args;
use crate::rounds::{Driver, Run, System, loadavg};

pub(crate) struct Row {
    pub(crate) metric: &'static str,
    pub(crate) pick: fn(&Run) -> f64,
    pub(crate) digits: usize,
    pub(crate) target: &'static str,
}

pub(crate) const ROWS: &[Row] = &[
    Row {
        metric: "end-to-end throughput (msgs/s, accepted and at the sink)",
        pick: |r| r.e2e_rate,
        digits: 0,
        target: "ours/Postfix ≥ 6 (every round)",
    },
    Row {
        metric: "accept throughput (msgs/s, 250 after DATA)",
        pick: |r| r.accept_rate,
        digits: 0,
        target: "",
    },
    Row {
        metric: "end of DATA → 250, p50 (ms)",
        pick: |r| r.p50_ms,
        digits: 2,
        target: "ours/Postfix ≤ 1",
    },
    Row {
        metric: "end of DATA → 250, p99 (ms)",
        pick: |r| r.p99_ms,
        digits: 2,
        target: "ours/Postfix ≤ 0.25",
    },
    Row {
        metric: "250 → at the sink, p99 (ms, rank-matched)",
        pick: |r| r.lag_p99_ms,
        digits: 1,
        target: "",
    },
    Row {
        metric: "CPU seconds per 1,000 messages",
        pick: |r| r.cpu_per_1000,
        digits: 3,
        target: "ours/Postfix ≤ 0.15",
    },
    Row {
        metric: "peak RSS (MiB, all processes)",
        pick: |r| r.peak_rss_mib,
        digits: 1,
        target: "",
    },
];

pub(crate) fn print_table(args: &Args, ours: &[Run], pf: &[Run]) {
    println!();
    println!(
        "### {} sessions, {} messages of {} bytes, {} recipient(s) each, {} per connection; median of {} round(s)",
        args.sessions, args.messages, args.size, args.recipients, args.per_connection, args.rounds
    );
    println!();
    println!("| metric | ours | Postfix | ours/Postfix | target |");
    println!("| --- | ---: | ---: | ---: | --- |");
    for row in ROWS {
        let o = median(&ours.iter().map(row.pick).collect::<Vec<_>>());
        let p = median(&pf.iter().map(row.pick).collect::<Vec<_>>());
        let ratio = if pf.is_empty() { f64::NAN } else { o / p };
        let d = row.digits;
        let pcol = if pf.is_empty() {
            "–".to_string()
        } else {
            format!("{p:.d$}")
        };
        println!(
            "| {} | {o:.d$} | {pcol} | {ratio:.2} | {} |",
            row.metric, row.target
        );
    }
}

/// The rows of the `smtp-source` table: it gives no per-message times.
pub(crate) const SOURCE_ROWS: &[Row] = &[
    Row {
        metric: "end-to-end throughput (msgs/s, first sent → last at the sink)",
        pick: |r| r.e2e_rate,
        digits: 0,
        target: "",
    },
    Row {
        metric: "CPU seconds per 1,000 messages",
        pick: |r| r.cpu_per_1000,
        digits: 3,
        target: "",
    },
];

/// The systems in the order they run in `round`: who goes first alternates, so neither
/// always gets the quieter half.
pub(crate) fn order(postfix: bool, round: usize) -> Vec<System> {
    match (postfix, round.is_multiple_of(2)) {
        (false, _) => vec![System::Ours],
        (true, false) => vec![System::Ours, System::Postfix],
        (true, true) => vec![System::Postfix, System::Ours],
    }
}

/// End-to-end throughput and CPU per message under `smtp-source`, both shapes, with the
/// load average after every run.
pub(crate) fn print_source_table(args: &Args, runs: &[&(Driver, Vec<Run>, Vec<Run>)]) {
    println!();
    println!(
        "### smtp-source: {} sessions, {} messages of {} bytes of body, {} recipient(s) each; median of {} round(s)",
        args.sessions, args.messages, args.size, args.recipients, args.rounds
    );
    println!();
    println!("| load | metric | ours | Postfix | ours/Postfix |");
    println!("| --- | --- | ---: | ---: | ---: |");
    let cell = |v: f64, d: usize, have: bool| {
        if have {
            format!("{v:.d$}")
        } else {
            "–".to_string()
        }
    };
    for (driver, ours_runs, pf_runs) in runs {
        let have_pf = !pf_runs.is_empty();
        for row in SOURCE_ROWS {
            let (metric, d) = (row.metric, row.digits);
            let o = median(&ours_runs.iter().map(row.pick).collect::<Vec<_>>());
            let p = median(&pf_runs.iter().map(row.pick).collect::<Vec<_>>());
            println!(
                "| {} | {metric} | {} | {} | {} |",
                driver.name(),
                cell(o, d, true),
                cell(p, d, have_pf),
                cell(o / p, 2, have_pf)
            );
        }
        let fewest = |rs: &[Run]| rs.iter().map(|r| r.delivered).min().unwrap_or(0);
        println!(
            "| {} | at the sink, fewest of the rounds (of {}) | {} | {} | |",
            driver.name(),
            args.messages,
            fewest(ours_runs),
            cell(fewest(pf_runs) as f64, 0, have_pf)
        );
    }
    println!();
    for (driver, ours_runs, pf_runs) in runs {
        let list = |rs: &[Run]| {
            rs.iter()
                .map(|r| format!("{:.2}", r.load1))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "Load average (1 min) after each round, {}: ours {}; Postfix {}.",
            driver.name(),
            list(ours_runs),
            if pf_runs.is_empty() {
                "not run".to_string()
            } else {
                list(pf_runs)
            }
        );
    }
}

pub(crate) fn print_run(system: &str, driver: Driver, round: usize, r: &Run) {
    eprintln!(
        "round {round} {system:7} ({}): accepted {} delivered {} errors {} | e2e {:.0}/s accept {:.0}/s | p50 {:.2} ms p99 {:.2} ms mean {:.2} ms envelope p50 {:.2} ms | lag p99 {:.1} ms | cpu {:.3} s/1000 | rss {:.1} MiB | load {}",
        driver.name(),
        r.accepted,
        r.delivered,
        r.errors,
        r.e2e_rate,
        r.accept_rate,
        r.p50_ms,
        r.p99_ms,
        r.mean_ms,
        r.envelope_p50_ms,
        r.lag_p99_ms,
        r.cpu_per_1000,
        r.peak_rss_mib,
        loadavg()
    );
}
