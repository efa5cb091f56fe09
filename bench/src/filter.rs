//! `relay-bench --filter`: the cost of a content filter, side by side in one run. One
//! rspamd (see [`crate::rspamd`]), warmed up once, serves both systems as a milter:
//! Postfix with `smtpd_milters`, and our relay with it as a content filter
//! (`onUnavailable: TempFail`, Postfix's `milter_default_action = tempfail`); our relay
//! without a filter runs too, for the latency and CPU a filter adds. The same load (our
//! generator, the default bench shape) and the same sink for all three; who runs first
//! rotates per round. rspamd's DNS questions are answered at once by the bench's
//! resolver (`dns`): what the systems tell rspamd must not turn into DNS timeouts.
//!
//! Not here: the load, the measurement of one run (`rounds`), the container (`rspamd`).

use std::path::Path;
use std::time::{Duration, Instant};

use relay::RelayConfig;
use relay::config::{ContentFilterConfig, OnUnavailable};

use crate::args::Args;
use crate::dns::NxResolver;
use crate::report::print_run;
use crate::rounds::{Driver, Run, Running, Shape, drive, loadavg, measure};
use crate::rspamd::{MILTER_PORT, Rspamd};
use crate::sink::Sink;
use crate::stats::median;
use crate::{load, ours, postfix};

/// One of the three systems of the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Contender {
    OursFiltered,
    OursPlain,
    PostfixFiltered,
}

impl Contender {
    fn name(self) -> &'static str {
        match self {
            Contender::OursFiltered => "ours+rspamd",
            Contender::OursPlain => "ours",
            Contender::PostfixFiltered => "postfix+rspamd",
        }
    }
}

/// Who runs in `round` (from 1), in order: rotated each round, so none always gets the
/// quieter start.
pub(crate) fn order(postfix: bool, round: usize) -> Vec<Contender> {
    let mut all = vec![
        Contender::OursFiltered,
        Contender::PostfixFiltered,
        Contender::OursPlain,
    ];
    if !postfix {
        all.retain(|c| *c != Contender::PostfixFiltered);
    }
    let n = all.len();
    all.rotate_left(round.saturating_sub(1) % n);
    all
}

/// The bench's relay configuration with rspamd as its one content filter, as an
/// Organization's `contentFilters` renders it (`timeoutSeconds` at its default, 30).
pub(crate) fn filtered_config(spool_dir: &Path, sink_port: u16, connections: u32) -> RelayConfig {
    let mut cfg = ours::config(spool_dir, sink_port, connections);
    cfg.content_filters = vec![ContentFilterConfig {
        name: "rspamd".into(),
        host: "127.0.0.1".into(),
        port: MILTER_PORT,
        timeout_seconds: 30,
        on_unavailable: OnUnavailable::TempFail,
        max_message_bytes: None,
    }];
    cfg.seal()
}

fn start_ours(args: &Args, shape: &Shape, sink: &Sink, filtered: bool) -> Result<Running, String> {
    let work = &args.work_dir;
    let spool = work.join("spool-filter");
    let _ = std::fs::remove_dir_all(&spool);
    let connections = (shape.sessions + 100).max(1000) as u32;
    let cfg = if filtered {
        filtered_config(&spool, sink.port(), connections)
    } else {
        ours::config(&spool, sink.port(), connections)
    };
    Ok(Running::Ours(ours::OurRelay::start(
        &cfg,
        &work.join("relay-filter.json"),
        &work.join("relay-filter.log"),
    )?))
}

async fn run_one(
    who: Contender,
    args: &Args,
    shape: &Shape,
    sink: &Sink,
    rspamd: &Rspamd,
) -> Result<Run, String> {
    let companion = Some(rspamd.pid).filter(|&p| p != 0);
    match who {
        Contender::OursFiltered => {
            let running = start_ours(args, shape, sink, true)?;
            measure(running, who.name(), shape, args, sink, companion).await
        }
        Contender::OursPlain => {
            let running = start_ours(args, shape, sink, false)?;
            measure(running, who.name(), shape, args, sink, companion).await
        }
        Contender::PostfixFiltered => {
            // Dropped after Postfix is stopped (inside `measure`): main.cf as it was.
            let _milter = postfix::MilterSettings::apply(MILTER_PORT)?;
            let running = Running::Postfix(postfix::Postfix::start(sink.port())?);
            measure(running, who.name(), shape, args, sink, companion).await
        }
    }
}

/// The whole `--filter` run: rspamd up, its verdict on the bench message, a warm-up,
/// `args.rounds` rounds of the three systems, the table.
pub(crate) async fn run(args: &Args) -> Result<(), String> {
    let image = match &args.filter_image {
        Some(i) => i.clone(),
        None => crate::rspamd::image()?,
    };
    let shape = Shape {
        messages: args.filter_messages.unwrap_or(args.messages),
        ..Shape::from_args(args, Driver::Ours)
    };
    let sink = Sink::start()?;
    let resolver = NxResolver::start()?;
    let rspamd = Rspamd::start(&image, &args.work_dir, resolver.addr)?;
    let version = rspamd.version();
    eprintln!("relay-bench: {version} from {image}, milter on 127.0.0.1:{MILTER_PORT}");
    // What the relays show rspamd: the bench's message behind one `Received:` line.
    let mut message = b"Received: from load.acme.example ([127.0.0.1]) by relay.bench.example with ESMTP; Tue, 8 Dec 2026 00:00:00 +0000\r\n".to_vec();
    let body = load::message_body(shape.size);
    message.extend_from_slice(body.strip_suffix(b".\r\n").unwrap_or(&body));
    let verdict = rspamd.scan(&message, "bench@acme.example", "s0m0r0@example.net", 1)?;
    eprintln!(
        "relay-bench: rspamd on the bench message: {} ({}): {}",
        verdict.action,
        verdict.score,
        verdict.symbols.join(", ")
    );

    // Once, for both systems: rspamd's proxy worker scans the warm-up through a milter.
    {
        let Running::Ours(relay) = start_ours(args, &shape, &sink, true)? else {
            return Err("the warm-up relay is not ours".into());
        };
        let warm = Shape {
            messages: shape.warm_up().messages * 5,
            ..shape
        };
        let base = sink.count();
        let (accepted, r) = drive(&warm, relay.smtp, args, Duration::from_secs(300)).await;
        if r.errors > 0 {
            return Err(format!(
                "rspamd warm-up: {} of {} messages refused ({} 4xx, {} 5xx): {}",
                r.errors,
                warm.messages,
                r.tempfailed,
                r.rejected,
                r.first_error.unwrap_or_default()
            ));
        }
        sink.wait_for(base + accepted, Instant::now() + Duration::from_secs(120))
            .await;
        eprintln!("relay-bench: rspamd warmed up with {accepted} messages through our relay");
    }

    let mut runs: Vec<(Contender, Vec<Run>)> = order(args.postfix, 1)
        .into_iter()
        .map(|c| (c, Vec::new()))
        .collect();
    for round in 1..=args.rounds.max(1) {
        for who in order(args.postfix, round) {
            let run = run_one(who, args, &shape, &sink, &rspamd).await?;
            print_run(who.name(), Driver::Ours, round, &run);
            eprintln!(
                "round {round} {:7} replies to DATA: 250 {} | 4xx {} | 5xx {} | other failures {} | rspamd cpu {:.3} s/1000",
                who.name(),
                run.accepted,
                run.tempfailed,
                run.rejected,
                run.errors - run.tempfailed - run.rejected,
                run.companion_cpu_per_1000
            );
            if let Some((_, rs)) = runs.iter_mut().find(|(c, _)| *c == who) {
                rs.push(run);
            }
        }
    }
    let dns = format!(
        "{} answered NXDOMAIN by the bench's resolver, {} timed out",
        resolver.answered(),
        rspamd.dns_timeouts()
    );
    eprintln!("relay-bench: rspamd's DNS questions: {dns}");
    rspamd.save_log(&args.work_dir.join("rspamd.log"));
    drop(rspamd);
    drop(resolver);
    drop(sink);
    let of = |who: Contender| -> &[Run] {
        runs.iter()
            .find(|(c, _)| *c == who)
            .map(|(_, r)| r.as_slice())
            .unwrap_or(&[])
    };
    print_table(
        args,
        &shape,
        &version,
        &verdict.action,
        &verdict.score,
        &dns,
        of(Contender::OursFiltered),
        of(Contender::OursPlain),
        of(Contender::PostfixFiltered),
    );
    eprintln!("relay-bench: done, load average {}", loadavg());
    Ok(())
}

struct Row {
    metric: &'static str,
    pick: fn(&Run) -> f64,
    digits: usize,
    target: &'static str,
}

const ROWS: &[Row] = &[
    Row {
        metric: "end-to-end throughput (msgs/s, accepted and at the sink)",
        pick: |r| r.e2e_rate,
        digits: 0,
        target: "ours+rspamd/Postfix+rspamd ≥ 1",
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
        target: "",
    },
    Row {
        metric: "end of DATA → 250, p99 (ms)",
        pick: |r| r.p99_ms,
        digits: 2,
        target: "",
    },
    Row {
        metric: "250 → at the sink, p99 (ms, rank-matched)",
        pick: |r| r.lag_p99_ms,
        digits: 1,
        target: "",
    },
    Row {
        metric: "the relay's CPU seconds per 1,000 messages (rspamd not counted)",
        pick: |r| r.cpu_per_1000,
        digits: 3,
        target: "",
    },
    Row {
        metric: "rspamd's CPU seconds per 1,000 messages",
        pick: |r| r.companion_cpu_per_1000,
        digits: 3,
        target: "",
    },
    Row {
        metric: "peak RSS (MiB, the relay's processes)",
        pick: |r| r.peak_rss_mib,
        digits: 1,
        target: "",
    },
];

/// `250 / 4xx / 5xx / other` replies to DATA over all rounds.
fn replies(runs: &[Run]) -> String {
    let sum = |f: fn(&Run) -> usize| runs.iter().map(f).sum::<usize>();
    format!(
        "{} / {} / {} / {}",
        sum(|r| r.accepted),
        sum(|r| r.tempfailed),
        sum(|r| r.rejected),
        sum(|r| r.errors - r.tempfailed - r.rejected)
    )
}

#[allow(clippy::too_many_arguments)]
fn print_table(
    args: &Args,
    shape: &Shape,
    version: &str,
    action: &str,
    score: &str,
    dns: &str,
    filtered: &[Run],
    plain: &[Run],
    pf: &[Run],
) {
    let med =
        |runs: &[Run], pick: fn(&Run) -> f64| median(&runs.iter().map(pick).collect::<Vec<_>>());
    println!();
    println!(
        "### Content filter ({version} as a milter): {} sessions, {} messages of {} bytes, {} recipient(s) each, {} per connection; median of {} round(s)",
        shape.sessions,
        shape.messages,
        shape.size,
        shape.recipients,
        shape.per_connection,
        args.rounds.max(1)
    );
    println!();
    println!(
        "rspamd's verdict on the bench message (rspamc): {action}, score {score}. rspamd's DNS questions: {dns}."
    );
    println!();
    println!(
        "| metric | ours, rspamd | ours, no filter | Postfix, rspamd | ours/Postfix, both with rspamd | target |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | --- |");
    let have_pf = !pf.is_empty();
    for row in ROWS {
        let d = row.digits;
        let (f, p, x) = (
            med(filtered, row.pick),
            med(plain, row.pick),
            med(pf, row.pick),
        );
        let (pcol, ratio) = if have_pf {
            (format!("{x:.d$}"), format!("{:.2}", f / x))
        } else {
            ("–".to_string(), "–".to_string())
        };
        println!(
            "| {} | {f:.d$} | {p:.d$} | {pcol} | {ratio} | {} |",
            row.metric, row.target
        );
    }
    println!(
        "| replies to DATA, all rounds: 250 / 4xx / 5xx / no reply | {} | {} | {} | | all 250 |",
        replies(filtered),
        replies(plain),
        if have_pf { replies(pf) } else { "–".into() }
    );
    println!();
    let (p50f, p50p) = (med(filtered, |r| r.p50_ms), med(plain, |r| r.p50_ms));
    let (p99f, p99p) = (med(filtered, |r| r.p99_ms), med(plain, |r| r.p99_ms));
    let (cpuf, cpup) = (
        med(filtered, |r| r.cpu_per_1000),
        med(plain, |r| r.cpu_per_1000),
    );
    println!(
        "Added by the filter (ours with rspamd − ours without): end of DATA → 250 p50 {:+.2} ms, p99 {:+.2} ms; the relay's own CPU {:+.3} s per 1,000 messages ({:+.0} %).",
        p50f - p50p,
        p99f - p99p,
        cpuf - cpup,
        (cpuf / cpup - 1.0) * 100.0
    );
    if have_pf {
        let (o, p) = (med(filtered, |r| r.e2e_rate), med(pf, |r| r.e2e_rate));
        println!();
        println!(
            "Goal: with a content filter, at least Postfix's throughput: ours {o:.0} msgs/s, Postfix {p:.0} msgs/s end to end, ratio {:.2}: {}.",
            o / p,
            if o >= p { "met" } else { "not met" }
        );
    }
    println!();
    let loads = |rs: &[Run]| {
        rs.iter()
            .map(|r| format!("{:.2}", r.load1))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "Load average (1 min) after each run: ours with rspamd {}; ours without {}; Postfix with rspamd {}.",
        loads(filtered),
        loads(plain),
        if have_pf { loads(pf) } else { "not run".into() }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_system_leads_one_round_in_three() {
        use Contender::*;
        assert_eq!(
            order(true, 1),
            vec![OursFiltered, PostfixFiltered, OursPlain]
        );
        assert_eq!(
            order(true, 2),
            vec![PostfixFiltered, OursPlain, OursFiltered]
        );
        assert_eq!(
            order(true, 3),
            vec![OursPlain, OursFiltered, PostfixFiltered]
        );
        assert_eq!(order(true, 4), order(true, 1));
        assert_eq!(order(false, 2), vec![OursPlain, OursFiltered]);
    }

    #[test]
    fn the_filtered_relay_asks_rspamd_on_loopback_and_tempfails_without_it() {
        let cfg = filtered_config(Path::new("/nonexistent/spool"), 2525, 1000);
        let text = cfg.to_json();
        let back = RelayConfig::from_json(&text).expect("the relay reads it");
        assert_eq!(back.content_filters.len(), 1);
        let f = &back.content_filters[0];
        assert_eq!((f.host.as_str(), f.port), ("127.0.0.1", 11332));
        assert_eq!(f.on_unavailable, OnUnavailable::TempFail);
        // Everything else is the existing bench's relay.
        let plain = ours::config(Path::new("/nonexistent/spool"), 2525, 1000);
        assert_eq!(
            RelayConfig {
                content_filters: Vec::new(),
                hash: String::new(),
                ..back
            },
            RelayConfig {
                hash: String::new(),
                ..plain
            }
        );
    }
}
