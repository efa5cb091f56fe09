//! Idle sessions: open `n` SMTP sessions to our relay from several loopback source
//! addresses (127.0.0.1 … 127.0.0.k, so no single source runs out of ports), each past
//! its greeting and EHLO, then read the relay's resident memory while they all sit idle.
//! Connections are opened at most 256 at a time and every step has a timeout.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

use crate::procfs;

pub struct IdleResult {
    pub sessions: usize,
    pub rss_before_kib: u64,
    pub rss_with_sessions_kib: u64,
}

/// Reads until `want` is seen at the start of a line that ends a reply (bounded).
async fn read_until_final(s: &mut TcpStream, code: &[u8; 3]) -> Result<(), String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
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
            return if last.as_bytes()[..3] == code[..] {
                Ok(())
            } else {
                Err(format!("unexpected reply: {last}"))
            };
        }
    }
    Err("reply too long".into())
}

async fn open(addr: SocketAddr, source: IpAddr) -> Result<TcpStream, String> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind(SocketAddr::new(source, 0))
        .map_err(|e| format!("bind {source}: {e}"))?;
    let mut s = socket
        .connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    read_until_final(&mut s, b"220").await?;
    s.write_all(b"EHLO idle.acme.example\r\n")
        .await
        .map_err(|e| e.to_string())?;
    read_until_final(&mut s, b"250").await?;
    Ok(s)
}

/// Opens `n` idle sessions to `addr` and measures `pid`'s RSS before and with them.
pub async fn measure(addr: SocketAddr, pid: u32, n: usize) -> Result<IdleResult, String> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before_kib = procfs::rss_kib(pid);
    let gate = Arc::new(Semaphore::new(256));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let gate = gate.clone();
        // 2,000 sessions per source address at most.
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i / 2000) as u8));
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await.map_err(|e| e.to_string())?;
            tokio::time::timeout(Duration::from_secs(30), open(addr, source))
                .await
                .map_err(|_| "timed out".to_string())?
        });
    }
    let mut open_sessions = Vec::with_capacity(n);
    let mut first_error = None;
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(s)) => open_sessions.push(s),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    if open_sessions.len() < n {
        return Err(format!(
            "only {} of {n} idle sessions opened: {}",
            open_sessions.len(),
            first_error.unwrap_or_default()
        ));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_with_sessions_kib = procfs::rss_kib(pid);
    drop(open_sessions);
    Ok(IdleResult {
        sessions: n,
        rss_before_kib,
        rss_with_sessions_kib,
    })
}
