//! The I/O edge of ingress: accept loops for the three listeners, per-IP connection caps,
//! timeouts, STARTTLS and implicit TLS, and the driver that feeds a [`Session`] and
//! carries out its actions (credential checks, limit checks, spooling).
//!
//! Replies are buffered and flushed when no further complete command is buffered, so a
//! pipelining client gets its replies in order in one write. After STARTTLS any plaintext
//! the client sent ahead is discarded (RFC 3207 §5, the command-injection fix).
//! Shutdown: accept loops stop; idle sessions get `421` at once; a session inside DATA may
//! finish its message first.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::generation::Generation;
use crate::limits::{Clock, LimitStore, RcptQuery, Usage};
use crate::metrics::Metrics;
use crate::received::{Trace, received_header};
use crate::session::{Action, Message, Session};
use crate::smtp::{MAX_COMMAND_LINE, Reply};
use crate::spool::{Envelope, Spool};

/// Which listener a connection came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    /// Port 25: plain, STARTTLS offered.
    Smtp,
    /// Port 587: plain, STARTTLS offered.
    Submission,
    /// Port 465: TLS from the first byte.
    Smtps,
}

/// State shared by every connection.
pub struct Shared {
    pub current: ArcSwap<Generation>,
    pub spool: Arc<Spool>,
    pub limits: Arc<dyn LimitStore>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    pub accepted: broadcast::Sender<Envelope>,
    per_ip: Mutex<HashMap<IpAddr, u32>>,
}

impl Shared {
    pub fn new(
        generation: Generation,
        spool: Arc<Spool>,
        limits: Arc<dyn LimitStore>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        accepted: broadcast::Sender<Envelope>,
    ) -> Self {
        Self {
            current: ArcSwap::from_pointee(generation),
            spool,
            limits,
            clock,
            metrics,
            accepted,
            per_ip: Mutex::new(HashMap::new()),
        }
    }
}

/// A held per-IP connection slot; released on drop.
struct IpSlot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl IpSlot {
    fn acquire(shared: &Arc<Shared>, ip: IpAddr, cap: u32) -> Option<Self> {
        let mut map = shared.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(Self {
            shared: shared.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = self.shared.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Accepts connections until shutdown. `tasks` is cloned into every session so the
/// caller can wait for all sessions to end.
pub async fn accept_loop(
    listener: TcpListener,
    kind: ListenerKind,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    tasks: mpsc::Sender<()>,
) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, ?kind, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Replies are already written one batch at a time; Nagle's algorithm would hold a
        // batch back until the client's delayed ACK (tens of milliseconds per message).
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        let guard = tasks.clone();
        tokio::spawn(async move {
            let _guard = guard;
            shared.metrics.sessions.inc();
            shared.metrics.sessions_active.inc();
            if let Err(e) = connection(stream, peer, kind, &shared, shutdown).await {
                tracing::debug!(%peer, error = %e, "session ended with an I/O error");
            }
            shared.metrics.sessions_active.dec();
        });
    }
}

fn tls_description(conn: &rustls::ServerConnection) -> String {
    let version = conn
        .protocol_version()
        .map(|v| format!("{v:?}"))
        .unwrap_or_else(|| "TLS".into());
    let cipher = conn
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_else(|| "unknown".into());
    format!("{version} {cipher}")
}

/// A server TLS handshake that gets the idle timeout (within the session deadline), so a
/// silent client cannot hold a connection slot long; `None` when it ran out of time. The
/// TLS state is large: boxed, so a plain session's task does not carry its size.
async fn handshake<S>(
    tls: Arc<rustls::ServerConfig>,
    stream: S,
    idle: Duration,
    deadline: Instant,
) -> io::Result<Option<Box<tokio_rustls::server::TlsStream<S>>>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let until = (Instant::now() + idle).min(deadline);
    match tokio::time::timeout_at(until, Box::pin(TlsAcceptor::from(tls).accept(stream))).await {
        Ok(stream) => Ok(Some(Box::new(stream?))),
        Err(_) => Ok(None),
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    kind: ListenerKind,
    shared: &Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let generation = shared.current.load_full();
    let ip = peer.ip().to_canonical();
    let limits = &generation.config.limits;
    let slot = IpSlot::acquire(shared, ip, limits.connections_per_ip);
    let too_many = Reply::new(421, format!("4.7.0 Too many connections from {ip}"));
    let deadline = Instant::now() + Duration::from_secs(limits.session_timeout_seconds);
    let idle = Duration::from_secs(limits.idle_timeout_seconds);
    let mut conn = Conn {
        shared,
        generation: &generation,
        shutdown,
        deadline,
        buf: Vec::new(),
        out: Vec::new(),
        shutting_down: false,
    };
    if kind == ListenerKind::Smtps {
        let Some(tls) = generation.tls.clone() else {
            return Ok(());
        };
        let Some(stream) = handshake(tls, stream, idle, deadline).await? else {
            return Ok(());
        };
        if slot.is_none() {
            return Box::pin(refuse(stream, &too_many, shared)).await;
        }
        let desc = tls_description(stream.get_ref().1);
        let mut session = Session::new(generation.session.clone(), ip, Some(desc));
        conn.out.extend(session.greeting().to_wire());
        Box::pin(conn.drive(stream, &mut session)).await?;
        return Ok(());
    }
    if slot.is_none() {
        return refuse(stream, &too_many, shared).await;
    }
    let mut session = Session::new(generation.session.clone(), ip, None);
    conn.out.extend(session.greeting().to_wire());
    let Some(stream) = conn.drive(stream, &mut session).await? else {
        return Ok(());
    };
    let Some(tls) = generation.tls.clone() else {
        return Ok(());
    };
    let Some(stream) = handshake(tls, stream, idle, deadline).await? else {
        return Ok(());
    };
    session.tls_started(tls_description(stream.get_ref().1));
    Box::pin(conn.drive(stream, &mut session)).await?;
    drop(slot);
    Ok(())
}

async fn refuse<S: AsyncWrite + Unpin>(
    mut stream: S,
    r: &Reply,
    shared: &Shared,
) -> io::Result<()> {
    shared
        .metrics
        .rejected(r.code, r.lines.first().map(String::as_str).unwrap_or(""));
    stream.write_all(&r.to_wire()).await?;
    stream.shutdown().await
}

enum Flow {
    Continue,
    Close,
    StartTls,
}

struct Conn<'a> {
    shared: &'a Arc<Shared>,
    generation: &'a Arc<Generation>,
    shutdown: watch::Receiver<bool>,
    deadline: Instant,
    buf: Vec<u8>,
    out: Vec<u8>,
    shutting_down: bool,
}

/// Position just past the next LF, if a full line is buffered.
fn line_end(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == b'\n').map(|i| i + 1)
}

impl Conn<'_> {
    /// Runs the session over `stream`. Returns the stream when the session asked for
    /// STARTTLS (replies flushed, buffered input discarded), `None` when it ended.
    async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        mut stream: S,
        session: &mut Session,
    ) -> io::Result<Option<S>> {
        let idle = Duration::from_secs(self.generation.config.limits.idle_timeout_seconds);
        let mut discarding = false;
        loop {
            // Handle everything complete in the buffer.
            loop {
                let actions = if session.in_data() {
                    if self.buf.is_empty() {
                        break;
                    }
                    let (used, actions) = session.on_data(&self.buf);
                    self.buf.drain(..used);
                    if let Some(Action::Reply(r)) = actions.first() {
                        // DATA ended without a spool action: the text was refused.
                        tracing::info!(
                            client = %session.client_ip(),
                            result = %r.to_string().trim_end(),
                            "message refused"
                        );
                    }
                    actions
                } else if let Some(end) = line_end(&self.buf) {
                    let line: Vec<u8> = self.buf.drain(..end).collect();
                    if discarding {
                        discarding = false;
                        continue;
                    }
                    if line.len() > MAX_COMMAND_LINE {
                        session.line_too_long()
                    } else {
                        let text = line.strip_suffix(b"\n").unwrap_or(&line);
                        let text = text.strip_suffix(b"\r").unwrap_or(text);
                        session.on_line(text)
                    }
                } else if self.buf.len() > MAX_COMMAND_LINE {
                    self.buf.clear();
                    let first = !discarding;
                    discarding = true;
                    if first {
                        session.line_too_long()
                    } else {
                        continue;
                    }
                } else {
                    break;
                };
                match self.run(actions, session).await {
                    Flow::Continue => {}
                    Flow::Close => {
                        stream.write_all(&self.out).await?;
                        stream.shutdown().await.ok();
                        return Ok(None);
                    }
                    Flow::StartTls => {
                        stream.write_all(&self.out).await?;
                        stream.flush().await?;
                        self.out.clear();
                        self.buf.clear();
                        return Ok(Some(stream));
                    }
                }
            }
            if !self.out.is_empty() {
                stream.write_all(&self.out).await?;
                stream.flush().await?;
                self.out.clear();
            }
            if self.shutting_down && !session.in_data() {
                stream
                    .write_all(&session.shutdown_reply().to_wire())
                    .await?;
                stream.shutdown().await.ok();
                return Ok(None);
            }
            let wake = (Instant::now() + idle).min(self.deadline);
            let read = tokio::select! {
                r = tokio::time::timeout_at(wake, stream.read_buf(&mut self.buf)) => r,
                _ = self.shutdown.changed(), if !self.shutting_down => {
                    self.shutting_down = true;
                    continue;
                }
            };
            match read {
                Ok(Ok(0)) => return Ok(None),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    stream.write_all(&session.timeout_reply().to_wire()).await?;
                    stream.shutdown().await.ok();
                    return Ok(None);
                }
            }
        }
    }

    /// Carries out actions, feeding answers back into the session.
    async fn run(&mut self, actions: Vec<Action>, session: &mut Session) -> Flow {
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Reply(r) => {
                    if r.is_error() {
                        let first = r.lines.first().map(String::as_str).unwrap_or("");
                        self.shared.metrics.rejected(r.code, first);
                    }
                    self.out.extend(r.to_wire());
                }
                Action::Close => return Flow::Close,
                Action::StartTls => return Flow::StartTls,
                Action::VerifyAuth { identity, password } => {
                    let ok = self
                        .generation
                        .credentials
                        .verify(&identity, password)
                        .await
                        == crate::auth::Verdict::Valid;
                    tracing::info!(client = %session.client_ip(), %identity, ok, "SMTP AUTH");
                    queue.extend(session.auth_result(identity, ok));
                }
                Action::CheckRcpt {
                    user,
                    rcpt,
                    pending,
                } => {
                    let result = self
                        .shared
                        .limits
                        .check(RcptQuery {
                            now: self.shared.clock.now(),
                            limits: &self.generation.config.limits,
                            user: &user,
                            rcpt: &rcpt,
                            pending: &pending,
                        })
                        .await;
                    if let Ok(Some(hit)) = &result {
                        self.shared.metrics.limit_hit(hit.label());
                        tracing::info!(%user, %rcpt, limit = hit.label(), "relay limit reached");
                    }
                    queue.extend(session.rcpt_result(rcpt, result));
                }
                Action::Spool(message) => {
                    let result = self.spool(session.client_ip(), *message).await;
                    queue.extend(session.spooled(result));
                }
            }
        }
        Flow::Continue
    }

    /// Adds the `Received:` header, spools, counts and announces one message.
    async fn spool(&self, ip: IpAddr, m: Message) -> Result<String, Reply> {
        let shared = self.shared;
        let now = shared.clock.now();
        let queue_id = shared.spool.new_id();
        let id_text = queue_id.to_string();
        let header = received_header(&Trace {
            helo: &m.helo,
            ip,
            tls: m.tls.as_deref(),
            authenticated: m.auth_identity.is_some(),
            hostname: &self.generation.config.hostname,
            queue_id: &id_text,
            at: now,
        });
        let mut data = Vec::with_capacity(header.len() + m.body.len());
        data.extend_from_slice(header.as_bytes());
        data.extend_from_slice(&m.body);
        let envelope = Envelope {
            queue_id,
            mail_from: m.mail_from,
            original_mail_from: m.original_mail_from,
            rcpts: m.rcpts,
            client_ip: ip,
            helo: m.helo,
            auth_identity: m.auth_identity,
            tls: m.tls,
            received_at: now,
            size: data.len() as u64,
        };
        if let Err(e) = shared.spool.accept(&envelope, &data).await {
            tracing::error!(queue_id = %id_text, sender = %envelope.mail_from, recipients = ?envelope.rcpts, error = %e, result = "not queued", "message");
            return Err(e.reply());
        }
        if let Err(e) = shared
            .limits
            .record(Usage {
                now,
                user: &m.user,
                rcpts: &envelope.rcpts,
            })
            .await
        {
            tracing::warn!(queue_id = %id_text, error = %e, "message queued but not counted toward limits");
        }
        shared.metrics.accepted.inc();
        shared
            .metrics
            .accepted_recipients
            .inc_by(envelope.rcpts.len() as u64);
        tracing::info!(
            queue_id = %id_text,
            sender = %envelope.mail_from,
            original_sender = envelope.original_mail_from.as_deref().unwrap_or(""),
            recipients = ?envelope.rcpts,
            client = %ip,
            result = "queued",
            "message"
        );
        // No receiver is fine: delivery rescans the spool when it starts.
        let _ = shared.accepted.send(envelope);
        Ok(id_text)
    }
}
