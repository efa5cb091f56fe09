//! The load generator: `sessions` concurrent SMTP clients on loopback send `messages`
//! messages of `size` bytes to `recipients` recipients each, reusing a connection for up
//! to `per_connection` messages. MAIL, RCPT and DATA go in one write (PIPELINING, which
//! both relays offer). For every message it records the time from writing the final
//! `.` to reading the `250`, and when that `250` arrived.
//!
//! Every loop is bounded by its message count and the whole run by `timeout`.
//! Not here: starting the systems under test, the sink, the statistics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

/// What to send.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub addr: SocketAddr,
    pub sessions: usize,
    pub messages: usize,
    pub size: usize,
    pub recipients: usize,
    pub per_connection: usize,
    pub timeout: Duration,
}

/// What happened.
#[derive(Debug, Default)]
pub struct LoadResult {
    /// End of DATA (`.` written) to `250` read, one per accepted message.
    pub latencies: Vec<Duration>,
    /// MAIL, RCPT and DATA written to `354` read, one per accepted message.
    pub envelope_latencies: Vec<Duration>,
    /// When each `250` arrived.
    pub accepted_at: Vec<Instant>,
    pub errors: usize,
    /// Messages whose DATA was answered `4xx` (counted in `errors` too).
    pub tempfailed: usize,
    /// Messages whose DATA was answered `5xx` (counted in `errors` too).
    pub rejected: usize,
    pub first_error: Option<String>,
}

/// A message of about `size` bytes: a few headers and 76-column lines.
pub fn message_body(size: usize) -> Vec<u8> {
    let mut m = b"From: Bench <bench@acme.example>\r\nTo: <r@example.net>\r\nSubject: relay-bench\r\nMessage-ID: <relay-bench@acme.example>\r\n\r\n".to_vec();
    let line = [b'x'; 76];
    while m.len() < size {
        let take = (size - m.len()).saturating_sub(2).clamp(1, 76);
        m.extend_from_slice(&line[..take]);
        m.extend_from_slice(b"\r\n");
    }
    m.extend_from_slice(b".\r\n");
    m
}

async fn read_reply(
    r: &mut BufReader<OwnedReadHalf>,
    line: &mut String,
) -> Result<(u16, String), String> {
    let mut text = String::new();
    // A reply has at most a few dozen lines; bounded anyway.
    for _ in 0..100 {
        line.clear();
        let n = r.read_line(line).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed".into());
        }
        text.push_str(line);
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            let code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            return Ok((code, text.trim_end().to_string()));
        }
    }
    Err("reply longer than 100 lines".into())
}

struct Client {
    r: BufReader<OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
    line: String,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Result<Client, String> {
        let s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = s.set_nodelay(true);
        let (r, w) = s.into_split();
        let mut c = Client {
            r: BufReader::new(r),
            w,
            line: String::new(),
        };
        c.expect(220).await?;
        c.send(b"EHLO load.acme.example\r\n").await?;
        c.expect(250).await?;
        Ok(c)
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.w
            .write_all(bytes)
            .await
            .map_err(|e| format!("write: {e}"))
    }

    async fn expect(&mut self, code: u16) -> Result<(), String> {
        let (got, text) = read_reply(&mut self.r, &mut self.line).await?;
        if got != code {
            return Err(format!("expected {code}, got: {text}"));
        }
        Ok(())
    }

    /// The reply to the end of DATA: `Ok` on `250`; otherwise the code, if the server
    /// answered at all, and what it said.
    async fn expect_accepted(&mut self) -> Result<(), (Option<u16>, String)> {
        let (got, text) = read_reply(&mut self.r, &mut self.line)
            .await
            .map_err(|e| (None, e))?;
        if got != 250 {
            return Err((Some(got), format!("expected 250, got: {text}")));
        }
        Ok(())
    }
}

async fn session(spec: Arc<LoadSpec>, body: Arc<Vec<u8>>, n: usize, index: usize) -> LoadResult {
    let mut out = LoadResult::default();
    let mut client: Option<Client> = None;
    let mut on_connection = 0;
    for m in 0..n {
        if client.is_none() || on_connection >= spec.per_connection {
            if let Some(mut c) = client.take() {
                let _ = c.send(b"QUIT\r\n").await;
            }
            match Client::connect(spec.addr).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    out.errors += n - m;
                    out.first_error.get_or_insert(e);
                    return out;
                }
            }
            on_connection = 0;
        }
        let Some(c) = client.as_mut() else { break };
        let mut envelope = String::from("MAIL FROM:<bench@acme.example>\r\n");
        for r in 0..spec.recipients {
            envelope.push_str(&format!("RCPT TO:<s{index}m{m}r{r}@example.net>\r\n"));
        }
        envelope.push_str("DATA\r\n");
        let result: Result<(Duration, Duration, Instant), (Option<u16>, String)> = async {
            let start = Instant::now();
            let before_data = async {
                c.send(envelope.as_bytes()).await?;
                c.expect(250).await?;
                for _ in 0..spec.recipients {
                    c.expect(250).await?;
                }
                c.expect(354).await?;
                let envelope_done = Instant::now();
                c.send(&body).await?;
                Ok::<_, String>(envelope_done)
            };
            let envelope_done = before_data.await.map_err(|e| (None, e))?;
            let sent = Instant::now();
            c.expect_accepted().await?;
            let at = Instant::now();
            Ok((envelope_done - start, at - sent, at))
        }
        .await;
        on_connection += 1;
        match result {
            Ok((envelope, latency, at)) => {
                out.envelope_latencies.push(envelope);
                out.latencies.push(latency);
                out.accepted_at.push(at);
            }
            Err((code, e)) => {
                out.errors += 1;
                match code {
                    Some(400..=499) => out.tempfailed += 1,
                    Some(500..=599) => out.rejected += 1,
                    _ => {}
                }
                out.first_error.get_or_insert(e);
                client = None;
            }
        }
    }
    if let Some(mut c) = client {
        let _ = c.send(b"QUIT\r\n").await;
    }
    out
}

/// Runs the load; returns when every session is done or `timeout` passed.
pub async fn run(spec: LoadSpec) -> LoadResult {
    let spec = Arc::new(spec);
    let body = Arc::new(message_body(spec.size));
    let sessions = spec.sessions.max(1);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..sessions {
        let n = spec.messages / sessions + usize::from(i < spec.messages % sessions);
        tasks.spawn(session(spec.clone(), body.clone(), n, i));
    }
    let mut total = LoadResult::default();
    let deadline = tokio::time::Instant::now() + spec.timeout;
    loop {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(Some(Ok(r))) => {
                total.latencies.extend(r.latencies);
                total.envelope_latencies.extend(r.envelope_latencies);
                total.accepted_at.extend(r.accepted_at);
                total.errors += r.errors;
                total.tempfailed += r.tempfailed;
                total.rejected += r.rejected;
                if total.first_error.is_none() {
                    total.first_error = r.first_error;
                }
            }
            Ok(Some(Err(e))) => {
                total.errors += 1;
                total.first_error.get_or_insert(e.to_string());
            }
            Ok(None) => break,
            Err(_) => {
                tasks.abort_all();
                total.first_error.get_or_insert("load timed out".into());
                break;
            }
        }
    }
    total.accepted_at.sort_unstable();
    total
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    /// A loopback SMTP server that answers the end of DATA with `replies` in turn (then
    /// `250`), one connection at a time.
    async fn scripted_server(replies: Vec<&'static str>) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut replies = replies.into_iter();
            while let Ok((s, _)) = listener.accept().await {
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                let _ = w.write_all(b"220 test\r\n").await;
                let mut line = String::new();
                let mut in_data = false;
                loop {
                    line.clear();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        break;
                    }
                    let reply: &str = if in_data {
                        if line != ".\r\n" {
                            continue;
                        }
                        in_data = false;
                        replies.next().unwrap_or("250 ok")
                    } else if line.starts_with("DATA") {
                        in_data = true;
                        "354 go on"
                    } else if line.starts_with("QUIT") {
                        break;
                    } else {
                        "250 ok"
                    };
                    let _ = w.write_all(format!("{reply}\r\n").as_bytes()).await;
                }
            }
        });
        addr
    }

    #[tokio::test]
    async fn counts_tempfails_and_rejects_at_the_end_of_data_apart() {
        let addr = scripted_server(vec![
            "250 ok",
            "451 4.7.1 try later",
            "554 5.7.1 Gtube pattern",
            "250 ok",
        ])
        .await;
        let r = super::run(super::LoadSpec {
            addr,
            sessions: 1,
            messages: 4,
            size: 300,
            recipients: 1,
            per_connection: 100,
            timeout: Duration::from_secs(10),
        })
        .await;
        assert_eq!(r.latencies.len(), 2, "{:?}", r.first_error);
        assert_eq!((r.errors, r.tempfailed, r.rejected), (2, 1, 1));
        assert_eq!(
            r.first_error.as_deref(),
            Some("expected 250, got: 451 4.7.1 try later")
        );
    }

    #[test]
    fn message_body_has_the_requested_size_and_ends_with_the_dot() {
        for size in [200, 1024, 10_000] {
            let b = super::message_body(size);
            let without_dot = b.len() - 3;
            assert!(without_dot.abs_diff(size) <= 2, "{size}: {without_dot}");
            assert!(b.ends_with(b"\r\n.\r\n"));
            assert!(b.split(|&c| c == b'\n').all(|l| l.len() <= 1000));
        }
    }
}
