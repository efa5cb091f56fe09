//! SIGKILL under load (SPEC §3.4: `250` means on disk): the `relay` binary is loaded by
//! concurrent senders and killed mid-run; restarted on the same spool with a sink
//! downstream, it delivers every message it had acknowledged.
//!
//! Two tests: one kill while nothing can be delivered (every acknowledged message must come
//! back from the spool), and twenty kills at random points while a live sink takes
//! deliveries, so kills land in ingress (writing, syncing, acknowledging), in delivery
//! (sending, removing from the spool) and in recovery right after a start. The random
//! kill points come from a seed the test prints; `SIGKILL_SEED=N` replays one.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Client, config};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use relay::delivery::testing::{SinkConfig, TestSink};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// A relay binary just spawned: the process, its SMTP address once it printed its
/// listening line (`None` when it exited before), and the file its stderr goes to.
struct RelayProcess {
    child: Child,
    listening: oneshot::Receiver<Option<SocketAddr>>,
    stderr: Option<PathBuf>,
}

/// Spawns the relay binary on `cfg_path`, its stderr appended to `stderr` when given.
fn spawn_relay(cfg_path: &Path, stderr: Option<&Path>) -> RelayProcess {
    let err = match stderr {
        Some(path) => Stdio::from(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap(),
        ),
        None => Stdio::null(),
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_relay"))
        .arg("--config")
        .arg(cfg_path)
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, listening) = oneshot::channel();
    // Ends with the first line, or at EOF when the process dies before printing it.
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        let smtp = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("smtp="))
            .and_then(|a| a.parse().ok());
        let _ = tx.send(smtp);
    });
    RelayProcess {
        child,
        listening,
        stderr: stderr.map(Path::to_path_buf),
    }
}

impl RelayProcess {
    /// Waits (up to 60 s) for the listening line; panics with `context`, the exit status
    /// and the end of the log when it does not come.
    async fn listening(&mut self, context: &str) -> SocketAddr {
        let addr = tokio::time::timeout(Duration::from_secs(60), &mut self.listening).await;
        match addr {
            Ok(Ok(Some(addr))) => addr,
            Ok(_) => {
                let status = self.child.wait().unwrap();
                panic!(
                    "{context}: the relay exited without listening ({status}); its log ends:\n{}",
                    self.log_tail()
                );
            }
            Err(_) => panic!(
                "{context}: the relay did not print its listening line in 60 s; its log ends:\n{}",
                self.log_tail()
            ),
        }
    }

    /// SIGKILLs the relay and reaps it; panics with `context` when it had already exited
    /// by itself (a failed start or recovery) instead of dying of the signal.
    fn kill(&mut self, context: &str) {
        let exited = self.child.try_wait().unwrap();
        let _ = self.child.kill();
        let status = self.child.wait().unwrap();
        assert!(
            exited.is_none() && status.signal() == Some(9),
            "{context}: the relay exited by itself ({status}) before it was killed; its log \
             ends:\n{}",
            self.log_tail()
        );
    }

    /// The last 20 lines of the relay's stderr, when it is kept.
    fn log_tail(&self) -> String {
        let Some(path) = &self.stderr else {
            return "(not kept)".into();
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// What the senders know about each message they numbered, over every relay run.
#[derive(Default)]
struct Ledger {
    /// Text and final dot written, `250` read: the relay promised to deliver these.
    acked: BTreeSet<u64>,
    /// Text (perhaps partly) written, then no reply because the connection broke: the relay
    /// may or may not have kept them.
    in_flight: BTreeSet<u64>,
    /// Refused after the text, with the reply.
    refused: BTreeMap<u64, String>,
}

/// Shared by the senders of a test: the next message number and the ledger.
#[derive(Default)]
struct Load {
    next: AtomicU64,
    ledger: Mutex<Ledger>,
}

impl Load {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The Message-ID of message `num`.
fn message_id(num: u64) -> String {
    format!("<k{num}@acme.example>")
}

/// FNV-1a, to give every line of every message its own content.
fn fnv(num: u64, line: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in num.to_le_bytes().into_iter().chain(line.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The text of message `num`, as sent (CRLF lines, no line starts with a dot): a few
/// headers and 1–40 lines that name the message and line, each with a checksum of both;
/// every 150th message has 8000 lines (over 300 KiB, more than the spool keeps in
/// memory while receiving). A torn, truncated or mixed-up copy does not equal it.
fn message_text(num: u64) -> String {
    let lines = if num % 150 == 149 {
        8000
    } else {
        1 + fnv(num, u64::MAX) % 40
    };
    let mut text = format!(
        "Message-ID: {}\r\nSubject: load {num}\r\nX-Lines: {lines}\r\n\r\n",
        message_id(num)
    );
    for j in 0..lines {
        let _ = write!(
            text,
            "line {j} of message {num} check {:016x}\r\n",
            fnv(num, j)
        );
    }
    text
}

/// The number of the message whose Message-ID header is in `data`.
fn number_in(data: &str) -> Option<u64> {
    data.lines()
        .find_map(|l| l.strip_prefix("Message-ID: <k"))?
        .strip_suffix("@acme.example>")?
        .parse()
        .ok()
}

/// The recipient of message `num`: the envelope, kept apart from the text in the spool,
/// names the message too.
fn recipient(num: u64) -> String {
    format!("r{num}@dest.example")
}

/// One connection: sends numbered messages (up to `max`) until the connection breaks,
/// recording each outcome in `load`'s ledger.
async fn sender(addr: SocketAddr, max: usize, load: Arc<Load>) {
    let Ok(tcp) = TcpStream::connect(addr).await else {
        return;
    };
    let mut c = Client {
        io: BufReader::new(tcp),
    };
    if c.try_reply().await.is_none() {
        return;
    }
    let step = async |c: &mut Client<TcpStream>, text: &str| -> Option<String> {
        c.io.get_mut().write_all(text.as_bytes()).await.ok()?;
        c.try_reply().await
    };
    if step(&mut c, "EHLO load.acme.example\r\n").await.is_none() {
        return;
    }
    for _ in 0..max {
        let num = load.next.fetch_add(1, Ordering::SeqCst);
        for line in [
            "MAIL FROM:<load@acme.example>\r\n".to_string(),
            format!("RCPT TO:<{}>\r\n", recipient(num)),
            "DATA\r\n".to_string(),
        ] {
            match step(&mut c, &line).await {
                Some(r) if r.starts_with('2') || r.starts_with('3') => {}
                _ => return,
            }
        }
        // In flight from the first byte of the text until a reply says what became of it.
        load.ledger().in_flight.insert(num);
        let reply = step(&mut c, &format!("{}.\r\n", message_text(num))).await;
        let mut ledger = load.ledger();
        match reply {
            None => return,
            Some(r) => {
                ledger.in_flight.remove(&num);
                if r.starts_with("250 2.0.0 OK queued as ") {
                    ledger.acked.insert(num);
                } else {
                    ledger.refused.insert(num, r);
                    return;
                }
            }
        }
    }
}

/// Starts `count` senders on `addr`.
fn senders(
    addr: SocketAddr,
    count: usize,
    max: usize,
    load: &Arc<Load>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..count)
        .map(|_| tokio::spawn(sender(addr, max, load.clone())))
        .collect()
}

/// Waits (up to 30 s) for senders whose relay was killed to notice.
async fn join(senders: Vec<tokio::task::JoinHandle<()>>, context: &str) {
    for s in senders {
        tokio::time::timeout(Duration::from_secs(30), s)
            .await
            .unwrap_or_else(|_| panic!("{context}: a sender still waits 30 s after the kill"))
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let cfg_path = dir.path().join("relay.json");
    // First run: downstream is a closed port, so every acknowledged message can only
    // reach the sink through the spool of the restarted relay.
    std::fs::write(&cfg_path, config(&spool, 9).seal().to_json()).unwrap();

    let mut relay = spawn_relay(&cfg_path, None);
    let smtp = relay.listening("first run").await;
    let load = Arc::new(Load::default());
    let senders = senders(smtp, 6, 300, &load);
    // Kill once 60 messages were acknowledged (bounded wait: 60 s).
    for _ in 0..600 {
        if load.ledger().acked.len() >= 60 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    relay.kill("first run");
    join(senders, "first run").await;
    let acked = load.ledger().acked.clone();
    assert!(acked.len() >= 60, "only {} acknowledged", acked.len());

    let sink = TestSink::start(SinkConfig::default()).await.unwrap();
    std::fs::write(&cfg_path, config(&spool, sink.port()).seal().to_json()).unwrap();
    let mut relay = spawn_relay(&cfg_path, None);
    relay.listening("restart").await;
    let missing = wait_delivered(&sink, &acked).await;
    relay.kill("restart");
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged messages never reached the sink: {missing:?}",
        missing.len(),
        acked.len()
    );
    assert!(sink.messages().len() >= acked.len());
}

/// `config` with archiving on: a journal copy of every message to
/// `journal@archive.example`, through its own route to `archive_port`.
fn archiving(spool: &Path, main_port: u16, archive_port: u16) -> relay::RelayConfig {
    use relay::config::*;
    let mut cfg = config(spool, main_port);
    let mut route = cfg.routes[0].clone();
    route.name = "acme/archive".into();
    route.matcher = RouteMatcher::Domains(vec!["archive.example".into()]);
    route.hosts = RouteHosts::Single(HostConfig {
        host: "127.0.0.1".into(),
        port: archive_port,
    });
    cfg.routes.insert(0, route);
    cfg.archive = Some(ArchiveConfig {
        address: "journal@archive.example".into(),
        route: Some("acme/archive".into()),
        include_filtered_out: false,
        postmaster: "postmaster@acme.example".into(),
    });
    cfg
}

#[tokio::test]
async fn sigkill_with_archiving_loses_neither_the_delivery_nor_the_archive_copy() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let cfg_path = dir.path().join("relay.json");
    // First run: recipients and archive both unreachable, so both copies of every
    // acknowledged message can only come from the spool of the restarted relay.
    std::fs::write(&cfg_path, archiving(&spool, 9, 9).seal().to_json()).unwrap();
    let mut relay = spawn_relay(&cfg_path, None);
    let smtp = relay.listening("first run").await;
    let load = Arc::new(Load::default());
    let senders = senders(smtp, 6, 300, &load);
    for _ in 0..600 {
        if load.ledger().acked.len() >= 60 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    relay.kill("first run");
    join(senders, "first run").await;
    let acked = load.ledger().acked.clone();
    assert!(acked.len() >= 60, "only {} acknowledged", acked.len());

    let sink = TestSink::start(SinkConfig::default()).await.unwrap();
    let archive = TestSink::start(SinkConfig::default()).await.unwrap();
    std::fs::write(
        &cfg_path,
        archiving(&spool, sink.port(), archive.port())
            .seal()
            .to_json(),
    )
    .unwrap();
    let mut relay = spawn_relay(&cfg_path, None);
    relay.listening("restart").await;
    let missing = wait_delivered(&sink, &acked).await;
    let missing_copies = wait_delivered(&archive, &acked).await;
    relay.kill("restart");
    assert!(
        missing.is_empty() && missing_copies.is_empty(),
        "of {} acknowledged messages, {} never reached the recipients ({missing:?}) and {} never reached the archive ({missing_copies:?})",
        acked.len(),
        missing.len(),
        missing_copies.len()
    );
    assert!(
        archive
            .messages()
            .iter()
            .all(|m| String::from_utf8_lossy(&m.data).starts_with("X-Journal-Report: "))
    );
}

/// Copies at the sink per message number (messages without one are not counted).
fn delivered(sink: &TestSink) -> BTreeMap<u64, usize> {
    let mut copies = BTreeMap::new();
    for m in sink.messages() {
        if let Some(num) = number_in(&String::from_utf8_lossy(&m.data)) {
            *copies.entry(num).or_default() += 1;
        }
    }
    copies
}

/// Waits (up to 60 s) until every message of `acked` is at the sink; returns those that
/// are not.
async fn wait_delivered(sink: &TestSink, acked: &BTreeSet<u64>) -> BTreeSet<u64> {
    let mut missing = acked.clone();
    for _ in 0..600 {
        let got = delivered(sink);
        missing.retain(|num| !got.contains_key(num));
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    missing
}

/// Relay runs killed in [`twenty_sigkills_at_random_points_lose_no_acknowledged_message`].
const KILLS: usize = 20;
/// Concurrent senders in each run.
const SENDERS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_sigkills_at_random_points_lose_no_acknowledged_message() {
    let seed = match std::env::var("SIGKILL_SEED") {
        Ok(s) => s.parse().expect("SIGKILL_SEED is a number"),
        Err(_) => rand::random::<u64>(),
    };
    eprintln!("kill points from seed {seed} (replay: SIGKILL_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();

    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let cfg_path = dir.path().join("relay.json");
    let stderr = dir.path().join("relay.stderr");
    let sink = TestSink::start(SinkConfig::default()).await.unwrap();
    let cfg = config(&spool, sink.port());
    let destination_concurrency = cfg.delivery.destination_concurrency as usize;
    std::fs::write(&cfg_path, cfg.seal().to_json()).unwrap();
    let load = Arc::new(Load::default());

    // Runs whose kill came after the relay listened: (kill delay, messages acknowledged).
    let mut loaded_runs = Vec::new();
    for run in 0..KILLS {
        let context = format!("run {run} (SIGKILL_SEED={seed})");
        let acked_before = load.ledger().acked.len();
        let spawned = Instant::now();
        let mut relay = spawn_relay(&cfg_path, Some(&stderr));
        // Every fourth run is killed 0–60 ms after it was spawned: while it opens and
        // recovers the spool, or just after, while it delivers what it recovered.
        if run % 4 == 3 {
            let delay = rng.random_range(0..=60);
            tokio::time::sleep(Duration::from_millis(delay)).await;
            relay.kill(&context);
            eprintln!("{context}: killed {delay} ms after spawn");
            continue;
        }
        let smtp = relay.listening(&context).await;
        let start_ms = spawned.elapsed().as_millis();
        let running = senders(smtp, SENDERS, 5000, &load);
        let delay = rng.random_range(30..=400);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        relay.kill(&context);
        join(running, &context).await;
        let acked = load.ledger().acked.len() - acked_before;
        eprintln!(
            "{context}: listening after {start_ms} ms, killed {delay} ms later; {acked} \
             acknowledged, {} at the sink so far",
            sink.messages().len()
        );
        loaded_runs.push((delay, acked));
    }
    let at_sink_during_kills = sink.messages().len();

    // Final run, not killed until every acknowledged message is at the sink (60 s at most).
    let mut relay = spawn_relay(&cfg_path, Some(&stderr));
    relay.listening("final run").await;
    let (acked, in_flight, refused) = {
        let l = load.ledger();
        (l.acked.clone(), l.in_flight.clone(), l.refused.clone())
    };
    let missing = wait_delivered(&sink, &acked).await;
    // Then until the sink count holds still for a second (messages in flight at a kill
    // that the relay had kept arrive with the rest; bounded: 10 s).
    let mut last = sink.messages().len();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = sink.messages().len();
        if now == last {
            break;
        }
        last = now;
    }
    relay.kill("final run");

    let received = sink.messages();
    let copies = delivered(&sink);
    let sent = load.next.load(Ordering::SeqCst);
    let distinct = copies.len();
    let duplicates: usize = copies.values().map(|c| c - 1).sum();
    let beyond_acked: Vec<u64> = copies
        .keys()
        .copied()
        .filter(|n| !acked.contains(n))
        .collect();
    eprintln!(
        "seed {seed}: {KILLS} kills, {sent} messages begun, {} acknowledged, {} in flight at a \
         kill, {} refused; sink: {} messages, {distinct} distinct ({} beyond the acknowledged), \
         {duplicates} duplicates, {at_sink_during_kills} received while the kills went on; {:.1} s",
        acked.len(),
        in_flight.len(),
        refused.len(),
        received.len(),
        beyond_acked.len(),
        started.elapsed().as_secs_f64()
    );

    // Not vacuous: the relay took load in the runs, and delivered while being killed.
    let total_loaded: usize = loaded_runs.iter().map(|(_, a)| a).sum();
    assert!(
        total_loaded >= 10 * loaded_runs.len(),
        "only {total_loaded} messages acknowledged in {} loaded runs: {loaded_runs:?}",
        loaded_runs.len()
    );
    let idle: Vec<_> = loaded_runs
        .iter()
        .filter(|(delay, acked)| *delay >= 200 && *acked == 0)
        .collect();
    assert!(
        idle.is_empty(),
        "runs of 200 ms or more under load with nothing acknowledged (delay ms, acked): {idle:?}"
    );
    assert!(
        at_sink_during_kills > 0,
        "nothing was delivered while the kills went on, so no kill hit delivery"
    );

    // (a) No loss: every acknowledged message reached the sink.
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged messages never reached the sink (seed {seed}): {:?}",
        missing.len(),
        acked.len(),
        missing.iter().take(20).collect::<Vec<_>>()
    );
    // (b) Every message at the sink is one the senders sent, intact: same envelope, and the
    // relay only puts trace headers in front of the text.
    for m in &received {
        let data = String::from_utf8_lossy(&m.data);
        let num = number_in(&data).filter(|n| *n < sent);
        let Some(num) = num else {
            panic!("the sink received a message no sender sent (seed {seed}):\n{data:.300}");
        };
        assert!(
            m.mail_from == "load@acme.example" && m.rcpt_to == [recipient(num)],
            "message {num} arrived with another envelope (seed {seed}): from {:?} to {:?}",
            m.mail_from,
            m.rcpt_to
        );
        let text = message_text(num);
        let front = data.strip_suffix(text.as_str());
        assert!(
            front.is_some_and(|f| !f.contains("\r\n\r\n") && !f.contains("Message-ID")),
            "message {num} arrived torn or mixed up (seed {seed}): {} bytes instead of {} \
             plus trace headers; it begins:\n{data:.300}",
            data.len(),
            text.len()
        );
    }
    // (c) Beyond the acknowledged messages, only ones in flight at a kill were delivered
    // (never one the relay refused); copies only from kills between delivery and removal.
    let unexplained: Vec<_> = beyond_acked
        .iter()
        .filter(|n| !in_flight.contains(n))
        .collect();
    assert!(
        unexplained.is_empty(),
        "delivered although neither acknowledged nor in flight at a kill (seed {seed}): \
         {unexplained:?}; refused: {refused:?}"
    );
    assert!(
        duplicates <= KILLS * destination_concurrency,
        "{duplicates} duplicate deliveries, more than {KILLS} kills × {destination_concurrency} \
         deliveries at once (seed {seed})"
    );
}
