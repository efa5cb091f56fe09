//! One side-by-side round: a system (ours or Postfix) under one load shape, driven by our
//! generator or `smtp-source`, timed end to end with the sink's count, CPU and load read
//! from `/proc`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::sink::Sink;
use crate::stats::percentile;

use crate::args::Args;
use crate::{load, ours, postfix, procfs, source};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum System {
    Ours,
    Postfix,
}

impl System {
    pub(crate) fn name(self) -> &'static str {
        match self {
            System::Ours => "ours",
            System::Postfix => "postfix",
        }
    }
}

/// One measured run of one system.
#[derive(Debug, Clone)]
pub(crate) struct Run {
    pub(crate) accepted: usize,
    pub(crate) delivered: usize,
    pub(crate) errors: usize,
    /// DATA answered `4xx` / `5xx` (among `errors`).
    pub(crate) tempfailed: usize,
    pub(crate) rejected: usize,
    pub(crate) accept_rate: f64,
    pub(crate) e2e_rate: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) envelope_p50_ms: f64,
    pub(crate) mean_ms: f64,
    pub(crate) lag_p99_ms: f64,
    pub(crate) cpu_per_1000: f64,
    /// CPU seconds per 1,000 messages of a process the system uses but does not own (the
    /// content filter), over the same window; NaN when there is none.
    pub(crate) companion_cpu_per_1000: f64,
    pub(crate) peak_rss_mib: f64,
    /// Load average over 1 minute when the run ended.
    pub(crate) load1: f64,
}

/// How the load is generated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Driver {
    /// Our generator (`load`): PIPELINING, `per_connection` messages per connection.
    Ours,
    /// `smtp-source`: no PIPELINING; a connection per message, or one per session (`-d`).
    SmtpSource { reuse: bool },
}

impl Driver {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Driver::Ours => "our generator",
            Driver::SmtpSource { reuse: false } => "smtp-source, a connection per message",
            Driver::SmtpSource { reuse: true } => "smtp-source -d, connections reused",
        }
    }
}

/// One load: how many, how big, to how many, by whom.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    pub(crate) sessions: usize,
    pub(crate) messages: usize,
    pub(crate) size: usize,
    pub(crate) recipients: usize,
    pub(crate) per_connection: usize,
    pub(crate) driver: Driver,
}

impl Shape {
    /// The shape of the side-by-side rounds, as the flags give it.
    pub(crate) fn from_args(args: &Args, driver: Driver) -> Shape {
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
    pub(crate) fn warm_up(self) -> Shape {
        let by_bytes = ((64usize << 20) / self.size.max(1)).max(2);
        Shape {
            messages: (self.sessions * 5).min(1000).min(by_bytes),
            ..self
        }
    }
}

/// Whichever system is running; dropping it stops it.
pub(crate) enum Running {
    Ours(ours::OurRelay),
    Postfix(postfix::Postfix),
}

pub(crate) fn ms(d: Option<Duration>) -> f64 {
    d.map(|d| d.as_secs_f64() * 1000.0).unwrap_or(f64::NAN)
}

pub(crate) fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Runs `shape`'s load through the generator it names; the number of accepted messages.
pub(crate) async fn drive(
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
pub(crate) async fn run_system(
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
    measure(running, system.name(), shape, args, sink, None).await
}

/// Warms `running` up with a little of `shape`, then measures `shape` from the first
/// message sent to the last one at the sink (CPU of `companion` too, if given); `running`
/// is stopped before returning. `name` names it in errors.
pub(crate) async fn measure(
    running: Running,
    name: &str,
    shape: &Shape,
    args: &Args,
    sink: &Sink,
    companion: Option<u32>,
) -> Result<Run, String> {
    let (pid, addr) = match &running {
        Running::Ours(r) => (r.pid(), r.smtp),
        Running::Postfix(p) => (p.master_pid, postfix::addr()),
    };
    // Postfix hands the relayhost at most `smtp_destination_recipient_limit` recipients
    // per transaction; the sink counts transactions.
    let per_message = match &running {
        Running::Ours(_) => 1,
        Running::Postfix(_) => postfix::transactions_per_message(shape.recipients),
    };
    let base = sink.count();
    let (warm, warm_result) = drive(&shape.warm_up(), addr, args, Duration::from_secs(120)).await;
    if warm_result.errors > 0 {
        return Err(format!(
            "{}: warm-up failed: {}",
            name,
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
        return Err(format!("{}: warm-up mail not delivered in 120 s", name));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let base = sink.count();
    let cpu0 = procfs::tree_cpu_seconds(pid);
    let companion0 = companion.map(procfs::tree_cpu_seconds);
    let rss = procfs::PeakRss::start(pid);
    let t0 = Instant::now();
    let (accepted, result) = drive(shape, addr, args, args.timeout).await;
    let t_load = Instant::now();
    sink.wait_for(base + accepted * per_message, t0 + args.timeout)
        .await;
    let mut arrivals = sink.arrivals_since(base);
    arrivals.truncate(accepted * per_message);
    let cpu1 = procfs::tree_cpu_seconds(pid);
    let companion_cpu = companion
        .zip(companion0)
        .map(|(c, before)| procfs::tree_cpu_seconds(c) - before);
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
        tempfailed: result.tempfailed,
        rejected: result.rejected,
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
        companion_cpu_per_1000: companion_cpu.map_or(f64::NAN, |c| c / n * 1000.0),
        peak_rss_mib: peak_kib as f64 / 1024.0,
        load1: load1(),
    })
    .inspect(|r: &Run| {
        if r.errors > 0 {
            eprintln!(
                "warning: {}: {} messages failed: {}",
                name,
                r.errors,
                result.first_error.as_deref().unwrap_or("")
            );
        }
    })
}

pub(crate) fn default_relayctl() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.join("relayctl");
    p.exists().then_some(p)
}
