//! Large messages: `n` sessions each send one message of `size` bytes at the same time,
//! and the relay delivers them, all `n` at the same time, to a [`TimedSink`], while the relay's resident memory is
//! sampled every 10 ms; reports the idle RSS, the peak while the messages stream in
//! (until the first `250`: ingress alone), the peak over the whole run (delivery of all
//! `n` to the sink included: it starts on each message as soon as it is acknowledged),
//! how long the messages took to be accepted and to arrive. With message text streamed
//! to the spool and from the spool to the socket, both peaks above idle stay near `n` ×
//! a buffer, not `n` × the message size. Every step has a timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::downstream::TimedSink;
use crate::procfs;

pub struct BigResult {
    pub sessions: usize,
    pub size: usize,
    pub rss_idle_kib: u64,
    /// Peak until the first message was acknowledged.
    pub rss_ingress_peak_kib: u64,
    /// Peak over the whole run.
    pub rss_peak_kib: u64,
    /// Until the last `250`.
    pub elapsed: Duration,
    /// Messages that arrived at the sink, and when the last did.
    pub delivered: usize,
    pub delivered_after: Duration,
}

/// Reads one reply (bounded) and checks its code.
async fn expect(s: &mut TcpStream, code: &str) -> Result<(), String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    for _ in 0..64 {
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(last) = text.lines().last()
            && text.ends_with('\n')
            && last.len() >= 4
            && last.as_bytes()[3] == b' '
        {
            return if last.starts_with(code) {
                Ok(())
            } else {
                Err(format!("expected {code}, got {last}"))
            };
        }
    }
    Err("reply too long".into())
}

async fn send_one(
    addr: SocketAddr,
    i: usize,
    text: Arc<Vec<u8>>,
    acked: Arc<AtomicBool>,
) -> Result<(), String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    expect(&mut s, "220").await?;
    for (line, code) in [
        ("EHLO big.acme.example\r\n".to_string(), "250"),
        ("MAIL FROM:<big@acme.example>\r\n".to_string(), "250"),
        (format!("RCPT TO:<big{i}@example.net>\r\n"), "250"),
        ("DATA\r\n".to_string(), "354"),
    ] {
        s.write_all(line.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        expect(&mut s, code).await?;
    }
    s.write_all(&text).await.map_err(|e| e.to_string())?;
    s.write_all(b".\r\n").await.map_err(|e| e.to_string())?;
    expect(&mut s, "250").await?;
    acked.store(true, Ordering::Relaxed);
    s.write_all(b"QUIT\r\n").await.map_err(|e| e.to_string())?;
    Ok(())
}

/// The message text: 998-octet lines (the longest allowed) up to `size` bytes.
fn message(size: usize) -> Vec<u8> {
    let mut m = b"From: <big@acme.example>\r\nSubject: relay-bench big\r\n\r\n".to_vec();
    let line = [b"x".repeat(998), b"\r\n".to_vec()].concat();
    while m.len() + line.len() <= size {
        m.extend_from_slice(&line);
    }
    m
}

/// Sends `n` messages of `size` bytes at once to `addr`, waits until the relay has
/// delivered them to `sink`, and samples `pid`'s RSS all along.
pub async fn measure(
    addr: SocketAddr,
    pid: u32,
    n: usize,
    size: usize,
    timeout: Duration,
    sink: &TimedSink,
) -> Result<BigResult, String> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle_kib = procfs::rss_kib(pid);
    let text = Arc::new(message(size));
    let peak = Arc::new(AtomicU64::new(rss_idle_kib));
    let ingress_peak = Arc::new(AtomicU64::new(rss_idle_kib));
    let done = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, ingress_peak, done, acked) = (
            peak.clone(),
            ingress_peak.clone(),
            done.clone(),
            acked.clone(),
        );
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let rss = procfs::rss_kib(pid);
                peak.fetch_max(rss, Ordering::Relaxed);
                if !acked.load(Ordering::Relaxed) {
                    ingress_peak.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let text = text.clone();
        let acked = acked.clone();
        tasks.spawn(async move {
            tokio::time::timeout(timeout, send_one(addr, i, text, acked))
                .await
                .map_err(|_| "timed out".to_string())?
        });
    }
    let mut first_error = None;
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    let elapsed = start.elapsed();
    sink.wait_for(n, start + timeout).await;
    let delivered = sink.count();
    let delivered_after = start.elapsed();
    // A last sample once every message is in.
    tokio::time::sleep(Duration::from_millis(50)).await;
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    if let Some(e) = first_error {
        return Err(format!("large messages: {e}"));
    }
    Ok(BigResult {
        sessions: n,
        size: text.len(),
        rss_idle_kib,
        rss_ingress_peak_kib: ingress_peak.load(Ordering::Relaxed),
        rss_peak_kib: peak.load(Ordering::Relaxed),
        elapsed,
        delivered,
        delivered_after,
    })
}
