//! Head-of-line blocking: how long a well-behaved route's mail takes from the spool to the
//! sink while another route's destination is a tarpit, against the same run without it.
//!
//! The relay gets two routes: `good` (`example.net`) to a [`TimedSink`], `tarpit`
//! (`tarpit.example`) to a [`Tarpit`]. `sessions` clients send `messages` messages to the
//! good route at a steady `rate`, each stamped with a sequence number, and one more to the
//! second route after every `tarpit_every`-th. In the run "with tarpit" the second route
//! leads to the tarpit (its mail never arrives); in the run "without", to a second,
//! well-behaved sink: the load is the same in both runs, only the destination's behaviour
//! differs. A
//! message's delivery time is its arrival at the sink minus the moment its `250` came back
//! (it was in the spool then). A fresh relay and spool for each run; every wait is bounded.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay::RelayConfig;
use relay::config::{RouteConfig, RouteMatcher};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::downstream::{Tarpit, TarpitMode, TimedSink};
use crate::ours;
use crate::stats::percentile;

#[derive(Clone, Debug)]
pub struct TarpitSpec {
    pub sessions: usize,
    pub messages: usize,
    /// Messages per second, all sessions together.
    pub rate: f64,
    /// With the tarpit: one more message to it after this many good ones.
    pub tarpit_every: usize,
    pub mode: TarpitMode,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct TarpitRun {
    pub with_tarpit: bool,
    pub good_sent: usize,
    pub good_delivered: usize,
    pub tarpit_sent: usize,
    pub tarpit_sessions: usize,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
    pub max: Option<Duration>,
}

/// The bench relay with the two routes.
fn config(spool: &Path, sink_port: u16, tarpit_port: u16, sessions: usize) -> RelayConfig {
    let mut cfg = ours::config(spool, sink_port, (sessions + 10) as u32);
    let Some(template) = cfg.routes.first().cloned() else {
        return cfg;
    };
    let route = |name: &str, domain: &str, port: u16| {
        let mut r: RouteConfig = template.clone();
        r.name = name.into();
        r.matcher = RouteMatcher::Domains(vec![domain.into()]);
        if let relay::config::RouteHosts::Single(h) = &mut r.hosts {
            h.port = port;
        }
        r
    };
    cfg.routes = vec![
        route("bench/good", "example.net", sink_port),
        route("bench/tarpit", "tarpit.example", tarpit_port),
    ];
    cfg.seal()
}

async fn reply(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Result<String, String> {
    let mut text = String::new();
    for _ in 0..50 {
        let mut line = String::new();
        let n = r.read_line(&mut line).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed".into());
        }
        text.push_str(&line);
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            return Ok(text);
        }
    }
    Err("reply too long".into())
}

async fn expect(
    r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    code: &str,
) -> Result<(), String> {
    let got = reply(r).await?;
    if got.starts_with(code) {
        Ok(())
    } else {
        Err(format!("expected {code}, got {}", got.trim_end()))
    }
}

/// One session: sends the messages `seqs` at their planned times; returns for each good
/// message its sequence number and when its `250` came.
async fn session(
    addr: SocketAddr,
    seqs: Vec<(u64, bool, Instant)>,
) -> Result<Vec<(u64, Instant)>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let (r, mut w) = tcp.into_split();
    let mut r = BufReader::new(r);
    expect(&mut r, "220").await?;
    w.write_all(b"EHLO bench.acme.example\r\n")
        .await
        .map_err(|e| e.to_string())?;
    expect(&mut r, "250").await?;
    let body = "x".repeat(76);
    let mut accepted = Vec::with_capacity(seqs.len());
    for (seq, to_tarpit, at) in seqs {
        tokio::time::sleep_until(at.into()).await;
        let rcpt = if to_tarpit {
            format!("t{seq}@tarpit.example")
        } else {
            format!("r{seq}@example.net")
        };
        let mut m = format!("MAIL FROM:<bench@acme.example>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n");
        w.write_all(m.as_bytes()).await.map_err(|e| e.to_string())?;
        expect(&mut r, "250").await?;
        expect(&mut r, "250").await?;
        expect(&mut r, "354").await?;
        m.clear();
        m.push_str(&format!(
            "From: <bench@acme.example>\r\nTo: <{rcpt}>\r\nSubject: relay-bench tarpit\r\nX-Bench-Seq: {seq}\r\n\r\n"
        ));
        for _ in 0..12 {
            m.push_str(&body);
            m.push_str("\r\n");
        }
        m.push_str(".\r\n");
        w.write_all(m.as_bytes()).await.map_err(|e| e.to_string())?;
        expect(&mut r, "250").await?;
        if !to_tarpit {
            accepted.push((seq, Instant::now()));
        }
    }
    let _ = w.write_all(b"QUIT\r\n").await;
    Ok(accepted)
}

/// One run on a fresh relay.
pub async fn run(spec: &TarpitSpec, work: &Path, with_tarpit: bool) -> Result<TarpitRun, String> {
    let sink = TimedSink::start().await?;
    let tarpit = Tarpit::start(spec.mode).await?;
    let other = TimedSink::start().await?;
    let second = if with_tarpit {
        tarpit.port()
    } else {
        other.port()
    };
    let spool = work.join("spool-tarpit");
    let _ = std::fs::remove_dir_all(&spool);
    let cfg = config(&spool, sink.port(), second, spec.sessions);
    let relay = ours::OurRelay::start(
        &cfg,
        &work.join("relay-tarpit.json"),
        &work.join("relay-tarpit.log"),
    )?;
    let interval = Duration::from_secs_f64(1.0 / spec.rate.max(1.0));
    let start = Instant::now() + Duration::from_millis(200);
    let mut plans: Vec<Vec<(u64, bool, Instant)>> = vec![Vec::new(); spec.sessions.max(1)];
    let mut tarpit_sent = 0;
    let sessions = spec.sessions.max(1);
    for i in 0..spec.messages {
        let at = start + interval * i as u32;
        plans[i % sessions].push((i as u64, false, at));
        if spec.tarpit_every > 0 && i % spec.tarpit_every == 0 {
            let seq = (spec.messages + tarpit_sent) as u64;
            plans[(i + sessions / 2) % sessions].push((seq, true, at + interval / 2));
            tarpit_sent += 1;
        }
    }
    for plan in &mut plans {
        plan.sort_by_key(|(_, _, at)| *at);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for plan in plans {
        let addr = relay.smtp;
        tasks.spawn(async move {
            tokio::time::timeout(Duration::from_secs(600), session(addr, plan))
                .await
                .map_err(|_| "session timed out".to_string())?
        });
    }
    let mut accepted: Vec<(u64, Instant)> = Vec::new();
    while let Some(r) = tasks.join_next().await {
        accepted.extend(r.map_err(|e| e.to_string())??);
    }
    let good_sent = accepted.len();
    sink.wait_for(good_sent, Instant::now() + spec.timeout)
        .await;
    let tarpit_sessions = tarpit.accepted();
    drop(relay);
    let _ = std::fs::remove_dir_all(&spool);
    let times: Vec<Duration> = accepted
        .iter()
        .filter_map(|(seq, at)| sink.arrival(*seq).map(|d| d.saturating_duration_since(*at)))
        .collect();
    Ok(TarpitRun {
        with_tarpit,
        good_sent,
        good_delivered: times.len(),
        tarpit_sent,
        tarpit_sessions,
        p50: percentile(&times, 50.0),
        p99: percentile(&times, 99.0),
        max: percentile(&times, 100.0),
    })
}

/// Runs without and with the tarpit, `rounds` times each, alternating.
pub async fn measure(
    spec: TarpitSpec,
    work: &Path,
    rounds: usize,
) -> Result<Vec<TarpitRun>, String> {
    let spec = Arc::new(spec);
    let mut runs = Vec::new();
    for round in 0..rounds.max(1) {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for with in order {
            let r = run(&spec, work, with).await?;
            eprintln!(
                "tarpit round {} {}: good sent {} delivered {} | tarpit sent {} sessions {} | p50 {:.1} ms p99 {:.1} ms max {:.1} ms",
                round + 1,
                if with { "with   " } else { "without" },
                r.good_sent,
                r.good_delivered,
                r.tarpit_sent,
                r.tarpit_sessions,
                ms(r.p50),
                ms(r.p99),
                ms(r.max)
            );
            runs.push(r);
        }
    }
    Ok(runs)
}

pub fn ms(d: Option<Duration>) -> f64 {
    d.map(|d| d.as_secs_f64() * 1000.0).unwrap_or(f64::NAN)
}
