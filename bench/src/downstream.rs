//! In-process downstream servers for the delivery benchmarks, on loopback: a sink that
//! takes every message (any size, without keeping it) and notes when each arrived, by the
//! `X-Bench-Seq` header the sender put in (optionally holding every DATA until `n`
//! sessions are at DATA, so `n` messages stream at the same time), and a tarpit that accepts connections and
//! then drips its greeting one byte a second, or says nothing at all.
//!
//! Both stop when dropped. Not here: the relay, the senders, the statistics.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Longest command or text line the sink reads (the text lines of the bench are 1,000).
const MAX_LINE: usize = 4096;

#[derive(Default)]
struct SinkState {
    arrivals: Mutex<HashMap<u64, Instant>>,
    messages: AtomicUsize,
    bytes: AtomicUsize,
    /// DATA commands seen, and how many to wait for before the first `354`.
    at_data: AtomicUsize,
    barrier: usize,
    all_at_data: tokio::sync::Notify,
}

/// A sink that timestamps each message.
pub struct TimedSink {
    addr: SocketAddr,
    state: Arc<SinkState>,
    task: JoinHandle<()>,
}

impl Drop for TimedSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TimedSink {
    pub async fn start() -> Result<TimedSink, String> {
        Self::start_with_barrier(0).await
    }

    /// A sink that answers the first `n` DATA commands only once all `n` have come (at
    /// most 60 s), so their texts stream at the same time.
    pub async fn start_with_barrier(n: usize) -> Result<TimedSink, String> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("sink: {e}"))?;
        let addr = listener.local_addr().map_err(|e| format!("sink: {e}"))?;
        let state = Arc::new(SinkState {
            barrier: n,
            ..SinkState::default()
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            let mut sessions = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let st = st.clone();
                sessions.spawn(async move {
                    let _ = serve_sink(tcp, &st).await;
                });
                while sessions.try_join_next().is_some() {}
            }
        });
        Ok(TimedSink { addr, state, task })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Messages received so far.
    pub fn count(&self) -> usize {
        self.state.messages.load(Ordering::SeqCst)
    }

    /// Bytes of text received so far.
    pub fn bytes(&self) -> usize {
        self.state.bytes.load(Ordering::SeqCst)
    }

    /// When the message with sequence number `seq` arrived.
    pub fn arrival(&self, seq: u64) -> Option<Instant> {
        self.state
            .arrivals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&seq)
            .copied()
    }

    /// Waits until `target` messages arrived in all, at most until `deadline`.
    pub async fn wait_for(&self, target: usize, deadline: Instant) -> bool {
        while Instant::now() < deadline {
            if self.count() >= target {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.count() >= target
    }
}

/// Reads one line of at most [`MAX_LINE`] bytes into `line`; `false` at end of stream.
async fn read_line(io: &mut BufReader<TcpStream>, line: &mut Vec<u8>) -> std::io::Result<bool> {
    line.clear();
    let n = (&mut *io)
        .take(MAX_LINE as u64)
        .read_until(b'\n', line)
        .await?;
    Ok(n > 0)
}

async fn serve_sink(tcp: TcpStream, state: &SinkState) -> std::io::Result<()> {
    let _ = tcp.set_nodelay(true);
    let mut io = BufReader::with_capacity(64 * 1024, tcp);
    io.get_mut().write_all(b"220 sink.bench ESMTP\r\n").await?;
    let mut line = Vec::with_capacity(MAX_LINE);
    while read_line(&mut io, &mut line).await? {
        let cmd = String::from_utf8_lossy(&line)
            .trim_end()
            .to_ascii_uppercase();
        let reply: &[u8] = if cmd.starts_with("EHLO") {
            b"250-sink.bench\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
        } else if cmd == "DATA" {
            let seen = state.at_data.fetch_add(1, Ordering::SeqCst) + 1;
            if seen < state.barrier {
                let deadline = Instant::now() + Duration::from_secs(60);
                while state.at_data.load(Ordering::SeqCst) < state.barrier
                    && Instant::now() < deadline
                {
                    let all = state.all_at_data.notified();
                    let _ = tokio::time::timeout(Duration::from_millis(100), all).await;
                }
            } else if seen == state.barrier {
                state.all_at_data.notify_waiters();
            }
            io.get_mut().write_all(b"354 go ahead\r\n").await?;
            let mut seq = None;
            let mut in_headers = true;
            loop {
                if !read_line(&mut io, &mut line).await? {
                    return Ok(());
                }
                if line == b".\r\n" {
                    break;
                }
                state.bytes.fetch_add(line.len(), Ordering::Relaxed);
                if in_headers {
                    if line == b"\r\n" {
                        in_headers = false;
                    } else if let Some(v) = line.strip_prefix(b"X-Bench-Seq: ") {
                        seq = String::from_utf8_lossy(v).trim().parse::<u64>().ok();
                    }
                }
            }
            let now = Instant::now();
            if let Some(seq) = seq {
                state
                    .arrivals
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(seq, now);
            }
            state.messages.fetch_add(1, Ordering::SeqCst);
            b"250 2.0.0 queued\r\n"
        } else if cmd == "QUIT" {
            io.get_mut().write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(());
        } else {
            b"250 2.0.0 ok\r\n"
        };
        io.get_mut().write_all(reply).await?;
    }
    Ok(())
}

/// How a tarpit treats the connections it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TarpitMode {
    /// A greeting that never ends, one byte a second (`220-tarpit` lines).
    Drip,
    /// Not a byte.
    Silent,
}

impl TarpitMode {
    pub fn name(self) -> &'static str {
        match self {
            TarpitMode::Drip => "drip",
            TarpitMode::Silent => "silent",
        }
    }
}

/// A destination that holds every session it gets.
pub struct Tarpit {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Tarpit {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Tarpit {
    pub async fn start(mode: TarpitMode) -> Result<Tarpit, String> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("tarpit: {e}"))?;
        let addr = listener.local_addr().map_err(|e| format!("tarpit: {e}"))?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            let mut sessions = tokio::task::JoinSet::new();
            while let Ok((mut tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                sessions.spawn(async move {
                    if mode == TarpitMode::Drip {
                        for b in b"220-tarpit\r\n".iter().cycle() {
                            if tcp.write_all(&[*b]).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    } else {
                        let mut buf = [0u8; 512];
                        while let Ok(n) = tcp.read(&mut buf).await {
                            if n == 0 {
                                return;
                            }
                        }
                    }
                });
                while sessions.try_join_next().is_some() {}
            }
        });
        Ok(Tarpit {
            addr,
            accepted,
            task,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Sessions it has accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}
