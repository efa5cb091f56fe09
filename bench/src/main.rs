//! `relay-bench`: drives the same SMTP load through our relay and through Postfix on this
//! machine, both forwarding to one `smtp-sink`, and prints a Markdown table of medians with
//! the ratio ours/Postfix per row; then measures our relay's memory with many idle
//! sessions and with concurrent large messages delivered to a sink, the delivery time of a
//! route while another route's destination is a tarpit, and the time a manifest edit
//! takes to be in force under `relayctl run`.
//!
//! ```text
//! relay-bench [--sessions 20] [--messages 10000] [--size 1024] [--recipients 1]
//!             [--rounds 3] [--per-connection 100] [--idle-sessions 10000]
//!             [--reload-edits 10] [--big-sessions 20] [--big-size 35000000]
//!             [--tarpit-messages 3000] [--tarpit-rate 200] [--tarpit-every 4]
//!             [--tarpit-mode drip|silent] [--tarpit-rounds 3]
//!             [--relayctl PATH] [--no-postfix] [--generator ours|smtp-source|both]
//!             [--work-dir /var/tmp/relay-bench] [--timeout-secs 600]
//! relay-bench --scaling [--scaling-messages 5000] [--no-postfix] [--work-dir DIR]
//! relay-bench serve-relay CONFIG.json      (internal: our relay as a child process)
//! ```
//!
//! `--generator smtp-source` (or `both`) drives the side-by-side rounds with Postfix's
//! `smtp-source` too, one message per connection and reused connections. `--scaling`
//! runs only the scaling table: one axis at a time away from 20 sessions × 1 KiB × 1
//! recipient (sessions, message size, recipients per message), ours next to Postfix.
//!
//! Postfix comes from `bench/scripts/setup-postfix.sh`. Everything runs on loopback; every
//! child (sink, our relay, relayctl) and Postfix itself are stopped when the run ends,
//! on error and on Ctrl-C too. The policy-decision micro benchmark is
//! `cargo bench -p relay --bench ingress`.

mod big;
mod downstream;
mod idle;
mod load;
mod ours;
mod postfix;
mod procfs;
mod reload;
mod scaling;
mod sink;
mod source;
mod stats;
mod tarpit;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use sink::Sink;
use stats::{median, percentile};

#[derive(Clone, Debug)]
struct Args {
    sessions: usize,
    messages: usize,
    size: usize,
    recipients: usize,
    rounds: usize,
    per_connection: usize,
    idle_sessions: usize,
    big_sessions: usize,
    big_size: usize,
    tarpit_messages: usize,
    tarpit_rate: usize,
    tarpit_every: usize,
    tarpit_mode: downstream::TarpitMode,
    tarpit_rounds: usize,
    reload_edits: usize,
    relayctl: Option<PathBuf>,
    postfix: bool,
    generator: GeneratorChoice,
    scaling: bool,
    scaling_messages: usize,
    work_dir: PathBuf,
    timeout: Duration,
}

/// Which load generator drives the side-by-side rounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GeneratorChoice {
    Ours,
    SmtpSource,
    Both,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            sessions: 20,
            messages: 10_000,
            size: 1024,
            recipients: 1,
            rounds: 3,
            per_connection: 100,
            idle_sessions: 10_000,
            big_sessions: 20,
            big_size: 35_000_000,
            tarpit_messages: 3000,
            tarpit_rate: 200,
            tarpit_every: 4,
            tarpit_mode: downstream::TarpitMode::Drip,
            tarpit_rounds: 3,
            reload_edits: 10,
            relayctl: None,
            postfix: true,
            generator: GeneratorChoice::Ours,
            scaling: false,
            scaling_messages: 5000,
            work_dir: PathBuf::from("/var/tmp/relay-bench"),
            timeout: Duration::from_secs(600),
        }
    }
}

fn parse_args(argv: &[String]) -> Result<Args, String> {
    let mut a = Args::default();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        let num = |v: String| {
            v.parse::<usize>()
                .map_err(|_| format!("{flag}: {v:?} is not a number"))
        };
        match flag.as_str() {
            "--sessions" => a.sessions = num(value()?)?.max(1),
            "--messages" => a.messages = num(value()?)?.max(1),
            "--size" => a.size = num(value()?)?.max(1),
            "--recipients" => a.recipients = num(value()?)?.clamp(1, 100),
            // 0 skips the side-by-side throughput rounds (memory and reload only).
            "--rounds" => a.rounds = num(value()?)?,
            "--per-connection" => a.per_connection = num(value()?)?.max(1),
            "--idle-sessions" => a.idle_sessions = num(value()?)?,
            "--big-sessions" => a.big_sessions = num(value()?)?,
            "--big-size" => a.big_size = num(value()?)?.max(1024),
            "--reload-edits" => a.reload_edits = num(value()?)?,
            // 0 skips the tarpit runs.
            "--tarpit-messages" => a.tarpit_messages = num(value()?)?,
            "--tarpit-rate" => a.tarpit_rate = num(value()?)?.max(1),
            "--tarpit-every" => a.tarpit_every = num(value()?)?.max(1),
            "--tarpit-rounds" => a.tarpit_rounds = num(value()?)?.max(1),
            "--tarpit-mode" => {
                a.tarpit_mode = match value()?.as_str() {
                    "drip" => downstream::TarpitMode::Drip,
                    "silent" => downstream::TarpitMode::Silent,
                    other => return Err(format!("--tarpit-mode: {other:?} is not drip or silent")),
                }
            }
            "--relayctl" => a.relayctl = Some(PathBuf::from(value()?)),
            "--no-postfix" => a.postfix = false,
            "--generator" => {
                a.generator = match value()?.as_str() {
                    "ours" => GeneratorChoice::Ours,
                    "smtp-source" => GeneratorChoice::SmtpSource,
                    "both" => GeneratorChoice::Both,
                    other => {
                        return Err(format!(
                            "--generator: {other:?} is not ours, smtp-source or both"
                        ));
                    }
                }
            }
            "--scaling" => a.scaling = true,
            "--scaling-messages" => a.scaling_messages = num(value()?)?.max(1),
            "--work-dir" => a.work_dir = PathBuf::from(value()?),
            "--timeout-secs" => a.timeout = Duration::from_secs(num(value()?)? as u64),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(a)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum System {
    Ours,
    Postfix,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Ours => "ours",
            System::Postfix => "postfix",
        }
    }
}

/// One measured run of one system.
#[derive(Debug, Clone)]
struct Run {
    accepted: usize,
    delivered: usize,
    errors: usize,
    accept_rate: f64,
    e2e_rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    envelope_p50_ms: f64,
    mean_ms: f64,
    lag_p99_ms: f64,
    cpu_per_1000: f64,
    peak_rss_mib: f64,
    /// Load average over 1 minute when the run ended.
    load1: f64,
}

/// How the load is generated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Driver {
    /// Our generator (`load`): PIPELINING, `per_connection` messages per connection.
    Ours,
    /// `smtp-source`: no PIPELINING; a connection per message, or one per session (`-d`).
    SmtpSource { reuse: bool },
}

impl Driver {
    fn name(self) -> &'static str {
        match self {
            Driver::Ours => "our generator",
            Driver::SmtpSource { reuse: false } => "smtp-source, a connection per message",
            Driver::SmtpSource { reuse: true } => "smtp-source -d, connections reused",
        }
    }
}

/// One load: how many, how big, to how many, by whom.
#[derive(Clone, Copy, Debug)]
struct Shape {
    sessions: usize,
    messages: usize,
    size: usize,
    recipients: usize,
    per_connection: usize,
    driver: Driver,
}

impl Shape {
    /// The shape of the side-by-side rounds, as the flags give it.
    fn from_args(args: &Args, driver: Driver) -> Shape {
        Shape {
            sessions: args.sessions,
            messages: args.messages,
            size: args.size,
            recipients: args.recipients,
            per_connection: args.per_connection,
            driver,
        }
    }

    /// A short warm-up of the same shape: processes spawned, connections cached, pages
    /// touched; a few messages per session, at most 1,000 and about 64 MiB.
    fn warm_up(self) -> Shape {
        let by_bytes = ((64usize << 20) / self.size.max(1)).max(2);
        Shape {
            messages: (self.sessions * 5).min(1000).min(by_bytes),
            ..self
        }
    }
}

/// Whichever system is running; dropping it stops it.
enum Running {
    Ours(ours::OurRelay),
    Postfix(postfix::Postfix),
}

fn ms(d: Option<Duration>) -> f64 {
    d.map(|d| d.as_secs_f64() * 1000.0).unwrap_or(f64::NAN)
}

fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Runs `shape`'s load through the generator it names; the number of accepted messages.
async fn drive(
    shape: &Shape,
    addr: SocketAddr,
    args: &Args,
    timeout: Duration,
) -> (usize, load::LoadResult) {
    let spec = load::LoadSpec {
        addr,
        sessions: shape.sessions,
        messages: shape.messages,
        size: shape.size,
        recipients: shape.recipients,
        per_connection: shape.per_connection,
        timeout,
    };
    match shape.driver {
        Driver::Ours => {
            let r = load::run(spec).await;
            (r.latencies.len(), r)
        }
        Driver::SmtpSource { reuse } => source::run(&spec, reuse, &args.work_dir).await,
    }
}

/// Starts `system`, warms it up with a little of `shape`, then measures `shape` from the
/// first message sent to the last one at the sink; `system` is stopped before returning.
async fn run_system(
    system: System,
    shape: &Shape,
    args: &Args,
    sink: &Sink,
) -> Result<Run, String> {
    let work = &args.work_dir;
    let running = match system {
        System::Ours => {
            let spool = work.join("spool");
            let _ = std::fs::remove_dir_all(&spool);
            let connections = (shape.sessions + 100).max(1000) as u32;
            let cfg = ours::config(&spool, sink.port(), connections);
            Running::Ours(ours::OurRelay::start(
                &cfg,
                &work.join("relay.json"),
                &work.join("relay.log"),
            )?)
        }
        System::Postfix => Running::Postfix(postfix::Postfix::start(sink.port())?),
    };
    let (pid, addr) = match &running {
        Running::Ours(r) => (r.pid(), r.smtp),
        Running::Postfix(p) => (p.master_pid, postfix::addr()),
    };
    // Postfix hands the relayhost at most `smtp_destination_recipient_limit` recipients
    // per transaction; the sink counts transactions.
    let per_message = match system {
        System::Ours => 1,
        System::Postfix => postfix::transactions_per_message(shape.recipients),
    };
    let base = sink.count();
    let (warm, warm_result) = drive(&shape.warm_up(), addr, args, Duration::from_secs(120)).await;
    if warm_result.errors > 0 {
        return Err(format!(
            "{}: warm-up failed: {}",
            system.name(),
            warm_result.first_error.unwrap_or_default()
        ));
    }
    if !sink
        .wait_for(
            base + warm * per_message,
            Instant::now() + Duration::from_secs(120),
        )
        .await
    {
        return Err(format!(
            "{}: warm-up mail not delivered in 120 s",
            system.name()
        ));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let base = sink.count();
    let cpu0 = procfs::tree_cpu_seconds(pid);
    let rss = procfs::PeakRss::start(pid);
    let t0 = Instant::now();
    let (accepted, result) = drive(shape, addr, args, args.timeout).await;
    let t_load = Instant::now();
    sink.wait_for(base + accepted * per_message, t0 + args.timeout)
        .await;
    let mut arrivals = sink.arrivals_since(base);
    arrivals.truncate(accepted * per_message);
    let cpu1 = procfs::tree_cpu_seconds(pid);
    let peak_kib = rss.finish();
    let t_end = arrivals.last().copied().unwrap_or_else(Instant::now);
    let delivered = arrivals.len() / per_message;
    // The arrival that completes each message, matched by rank to the 250s.
    let lags: Vec<Duration> = arrivals
        .iter()
        .skip(per_message - 1)
        .step_by(per_message)
        .zip(&result.accepted_at)
        .map(|(d, a)| d.saturating_duration_since(*a))
        .collect();
    if let Running::Postfix(p) = &running
        && delivered >= accepted
        && !p.queue_empty()
    {
        eprintln!("warning: the sink has every message but postqueue -p is not empty");
    }
    drop(running);
    let n = accepted.max(1) as f64;
    Ok(Run {
        accepted,
        delivered,
        errors: result.errors,
        accept_rate: accepted as f64 / (t_load - t0).as_secs_f64(),
        e2e_rate: delivered.min(accepted) as f64 / (t_end - t0).as_secs_f64(),
        p50_ms: ms(percentile(&result.latencies, 50.0)),
        p99_ms: ms(percentile(&result.latencies, 99.0)),
        envelope_p50_ms: ms(percentile(&result.envelope_latencies, 50.0)),
        mean_ms: ms(result
            .latencies
            .iter()
            .sum::<Duration>()
            .checked_div(result.latencies.len() as u32)),
        lag_p99_ms: ms(percentile(&lags, 99.0)),
        cpu_per_1000: (cpu1 - cpu0) / n * 1000.0,
        peak_rss_mib: peak_kib as f64 / 1024.0,
        load1: load1(),
    })
    .inspect(|r: &Run| {
        if r.errors > 0 {
            eprintln!(
                "warning: {}: {} messages failed: {}",
                system.name(),
                r.errors,
                result.first_error.as_deref().unwrap_or("")
            );
        }
    })
}

fn default_relayctl() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.join("relayctl");
    p.exists().then_some(p)
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

fn print_table(args: &Args, ours: &[Run], pf: &[Run]) {
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
const SOURCE_ROWS: &[Row] = &[
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
fn order(postfix: bool, round: usize) -> Vec<System> {
    match (postfix, round.is_multiple_of(2)) {
        (false, _) => vec![System::Ours],
        (true, false) => vec![System::Ours, System::Postfix],
        (true, true) => vec![System::Postfix, System::Ours],
    }
}

/// End-to-end throughput and CPU per message under `smtp-source`, both shapes, with the
/// load average after every run.
fn print_source_table(args: &Args, runs: &[&(Driver, Vec<Run>, Vec<Run>)]) {
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

fn print_run(system: System, driver: Driver, round: usize, r: &Run) {
    eprintln!(
        "round {round} {:7} ({}): accepted {} delivered {} errors {} | e2e {:.0}/s accept {:.0}/s | p50 {:.2} ms p99 {:.2} ms mean {:.2} ms envelope p50 {:.2} ms | lag p99 {:.1} ms | cpu {:.3} s/1000 | rss {:.1} MiB | load {}",
        system.name(),
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

async fn bench(args: Args) -> Result<(), String> {
    if args.postfix && !postfix::available() {
        return Err(
            "postfix is not installed: run bench/scripts/setup-postfix.sh (or pass --no-postfix)"
                .into(),
        );
    }
    if !args.scaling && args.generator != GeneratorChoice::Ours && !source::available() {
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
                print_run(system, *driver, round, &run);
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

/// Sockets for thousands of idle sessions: the soft open-file limit up to the hard one.
fn raise_nofile() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        l.current = l.maximum;
        let _ = setrlimit(Resource::Nofile, l);
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("serve-relay") {
        let Some(path) = argv.get(1) else {
            eprintln!("usage: relay-bench serve-relay CONFIG.json");
            return ExitCode::from(2);
        };
        return match ours::serve(path) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("relay: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let args = match parse_args(&argv) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("relay-bench: {e}");
            }
            eprintln!(
                "usage: relay-bench [--sessions N] [--messages N] [--size BYTES] [--recipients N] [--rounds N] [--per-connection N] [--idle-sessions N] [--big-sessions N] [--big-size BYTES] [--tarpit-messages N] [--tarpit-rate N] [--tarpit-every N] [--tarpit-mode drip|silent] [--tarpit-rounds N] [--reload-edits N] [--relayctl PATH] [--no-postfix] [--generator ours|smtp-source|both] [--scaling] [--scaling-messages N] [--work-dir DIR] [--timeout-secs N]"
            );
            return ExitCode::from(2);
        }
    };
    raise_nofile();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("relay-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = rt.block_on(async {
        tokio::select! {
            r = bench(args) => r,
            _ = tokio::signal::ctrl_c() => Err("interrupted".to_string()),
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
