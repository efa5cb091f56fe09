//! The I/O edge of ingress: accept loops for the three listeners, per-IP and global
//! connection caps, timeouts, STARTTLS and implicit TLS, and the driver that feeds a
//! [`Session`] and carries out its actions (credential checks, limit checks, streaming the
//! message text to the spool).
//!
//! Connection caps are taken at accept, before any TLS handshake: the per-IP cap counts a
//! client by [`crate::ingress::client_source`] (an IPv4 address, an IPv6 /64, so one /64
//! cannot take every slot with a new address per connection). A connection over a cap
//! gets `421 4.7.0` and is closed (on the implicit-TLS port, where no plaintext reply is
//! possible, it is closed at once). A slot is released just before the session's last
//! reply is written, so a client that reconnects on reading `221` finds it free. Every
//! read and every write has a deadline (the idle timeout, within the session timeout).
//!
//! Behind a load balancer (`RelayConfig::proxy_protocol`), the PROXY protocol header
//! ([`crate::ingress::proxy`]) is read first, before any TLS (port 465 too) and before the
//! client's per-IP slot is charged: a connection takes a global slot at accept and the
//! per-IP slot of the address the header names. A header from a peer outside the trusted
//! proxies, an invalid one, or none where one is required closes the connection with a
//! log line. Allow ranges, per-IP caps, limits and `Received:` all see the address the
//! proxy reports.
//!
//! Before each command outside a transaction, the driver puts the configuration in force
//! at that moment into the session: a disabled range or a deleted setting refuses the
//! next MAIL of a session that was already open, a removed user cannot authenticate, and
//! a session logged in as a user whose password changed or who was removed is refused at
//! its next MAIL (the session compares credential fingerprints).
//!
//! AUTH: the throttle is asked first and reserves the attempt (a lockout is answered
//! without a check), then the password is checked on the bounded argon2 pool against the
//! credentials in force, and the reservation is settled with the outcome
//! ([`crate::ingress::auth_throttle`]).
//!
//! Replies are buffered and flushed when no further complete command is buffered, so a
//! pipelining client gets its replies in order in one write. After STARTTLS any plaintext
//! the client sent ahead is discarded (RFC 3207 §5, the command-injection fix).
//! Shutdown: accept loops stop; idle sessions get `421` at once; a session inside DATA may
//! finish its message first.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::config::ProxyProtocolConfig;
use crate::ingress::filtering::{Client, Decision, Filters};
use crate::ingress::generation::Generation;
use crate::ingress::received::{Trace, received_header};
use crate::ingress::session::{Action, Message, Session};
use crate::ingress::{client_source, proxy};
use crate::limits::{Clock, LimitStore, RcptQuery, Release, Usage};
use crate::metrics::Metrics;
use crate::smtp::{MAX_COMMAND_LINE, Reply};
use crate::spool::{Envelope, Incoming, Spool};

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

impl ListenerKind {
    /// The listener's name in logs and for content filters (`{daemon_name}`).
    pub fn name(self) -> &'static str {
        match self {
            ListenerKind::Smtp => "smtp",
            ListenerKind::Submission => "submission",
            ListenerKind::Smtps => "smtps",
        }
    }
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
    total: AtomicU32,
    /// AUTH failures per client and per user, across sessions and generations.
    pub auth_throttle: crate::ingress::auth_throttle::AuthThrottle,
}

impl Shared {
    pub fn new(
        generation: Generation,
        spool: Arc<Spool>,
        limits: Arc<dyn LimitStore>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        accepted: broadcast::Sender<Envelope>,
        auth_throttle: crate::ingress::auth_throttle::AuthThrottle,
    ) -> Self {
        Self {
            current: ArcSwap::from_pointee(generation),
            spool,
            limits,
            clock,
            metrics,
            accepted,
            per_ip: Mutex::new(HashMap::new()),
            total: AtomicU32::new(0),
            auth_throttle,
        }
    }

    /// Connections open now, on every listener.
    pub fn connections(&self) -> u32 {
        self.total.load(Ordering::Relaxed)
    }
}

/// A held connection slot: one of the global cap and, once the client's address is known,
/// one of its source's ([`client_source`]); released on drop.
struct Slot {
    shared: Arc<Shared>,
    /// The client's source, once charged.
    ip: Option<IpAddr>,
}

/// Which cap refused a connection.
enum Refusal {
    PerIp,
    Global,
}

impl Slot {
    /// Both slots at once, for a connection whose peer is its client.
    fn acquire(
        shared: &Arc<Shared>,
        ip: IpAddr,
        per_ip: u32,
        global: u32,
    ) -> Result<Self, Refusal> {
        let ip = client_source(ip);
        let mut map = shared.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= per_ip {
            return Err(Refusal::PerIp);
        }
        // Under the map's lock, so two acquirers cannot both take the last global slot.
        if shared.total.load(Ordering::Relaxed) >= global {
            if *n == 0 {
                map.remove(&ip);
            }
            return Err(Refusal::Global);
        }
        *n += 1;
        shared.total.fetch_add(1, Ordering::Relaxed);
        Ok(Self {
            shared: shared.clone(),
            ip: Some(ip),
        })
    }

    /// A global slot only, for a connection whose client a PROXY header may still name.
    fn global(shared: &Arc<Shared>, global: u32) -> Result<Self, Refusal> {
        let _map = shared.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if shared.total.load(Ordering::Relaxed) >= global {
            return Err(Refusal::Global);
        }
        shared.total.fetch_add(1, Ordering::Relaxed);
        Ok(Self {
            shared: shared.clone(),
            ip: None,
        })
    }

    /// Adds the client's own slot to a global one.
    fn charge(&mut self, ip: IpAddr, per_ip: u32) -> Result<(), Refusal> {
        let ip = client_source(ip);
        let mut map = self.shared.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= per_ip {
            if *n == 0 {
                map.remove(&ip);
            }
            return Err(Refusal::PerIp);
        }
        *n += 1;
        self.ip = Some(ip);
        Ok(())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.shared.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        self.shared.total.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.ip
            && let Some(n) = map.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }
}

/// The `421` of a connection over a cap, counted.
fn refusal_reply(shared: &Shared, refusal: Refusal, ip: IpAddr) -> Reply {
    let text = match refusal {
        Refusal::PerIp => match client_source(ip) {
            IpAddr::V6(net) => format!("4.7.0 Too many connections from {net}/64"),
            v4 => format!("4.7.0 Too many connections from {v4}"),
        },
        Refusal::Global => "4.7.0 Too many connections, try again later".to_string(),
    };
    let r = Reply::new(421, text);
    shared
        .metrics
        .rejected(r.code, r.lines.first().map(String::as_str).unwrap_or(""));
    r
}

/// Writes a refusal and closes, best effort and bounded: a client that does not read
/// loses the reply. On the implicit-TLS port no plaintext reply is possible: it is closed
/// at once.
async fn refuse(mut stream: TcpStream, kind: ListenerKind, r: Reply, idle: Duration) {
    if kind == ListenerKind::Smtps {
        return;
    }
    let _ = tokio::time::timeout(idle.min(Duration::from_secs(10)), async {
        stream.write_all(&r.to_wire()).await?;
        stream.shutdown().await
    })
    .await;
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
        let ip = peer.ip().to_canonical();
        let (per_ip, global, idle, proxy) = {
            let current = shared.current.load();
            let l = &current.config.limits;
            (
                l.connections_per_ip,
                l.max_connections,
                Duration::from_secs(l.idle_timeout_seconds),
                current.config.proxy_protocol.clone(),
            )
        };
        // Behind a proxy the client's own cap waits for its address (from the header).
        let slot = match &proxy {
            None => Slot::acquire(&shared, ip, per_ip, global),
            Some(_) => Slot::global(&shared, global),
        };
        let mut slot = match slot {
            Ok(slot) => slot,
            Err(refusal) => {
                let r = refusal_reply(&shared, refusal, ip);
                if kind != ListenerKind::Smtps {
                    tokio::spawn(refuse(stream, kind, r, idle));
                }
                continue;
            }
        };
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        let guard = tasks.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let mut stream = stream;
            let (client, watch_for_header) = match proxy {
                None => (ip, false),
                // Boxed, like the session below: the task keeps only what is live at
                // each await, not room for the largest stage (10,000 idle sessions).
                Some(proxy) => {
                    match Box::pin(proxied_client(&mut stream, ip, kind, &proxy)).await {
                        Origin::Client {
                            ip: client,
                            watch_for_header,
                        } => {
                            if let Err(refusal) = slot.charge(client, per_ip) {
                                let r = refusal_reply(&shared, refusal, client);
                                drop(slot);
                                Box::pin(refuse(stream, kind, r, idle)).await;
                                return;
                            }
                            // TLS clients speak first: a forged header comes before the
                            // handshake (looked at once the peer's own cap is charged).
                            if watch_for_header
                                && kind == ListenerKind::Smtps
                                && Box::pin(forged_before_tls(&stream, client, idle)).await
                            {
                                return;
                            }
                            // SMTP clients wait for the greeting: a forged header shows as
                            // the first line.
                            (client, watch_for_header && kind != ListenerKind::Smtps)
                        }
                        Origin::Refused => return,
                    }
                }
            };
            shared.metrics.sessions.inc();
            shared.metrics.sessions_active.inc();
            let session = Box::pin(connection(
                stream,
                client,
                kind,
                &shared,
                shutdown,
                slot,
                watch_for_header,
            ));
            if let Err(e) = session.await {
                tracing::debug!(%peer, %client, error = %e, "session ended with an I/O error");
            }
            shared.metrics.sessions_active.dec();
        });
    }
}

/// Room for one read while a message's text arrives.
const DATA_READ: usize = 32 * 1024;
/// Capacity above which a session's read buffer is shrunk once it is out of DATA.
const COMMAND_READ: usize = 4 * 1024;

/// How long a trusted proxy has to send its whole header.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a trusted proxy's connection may stay silent before, when headers are not
/// required, it is taken for a direct client (which waits for the greeting).
const UNANNOUNCED_WAIT: Duration = Duration::from_secs(1);

/// Who a connection is for, as the PROXY protocol stage decided.
enum Origin {
    /// The client is at `ip`. `watch_for_header`: the peer is not a trusted proxy, so
    /// a header from it is a forgery.
    Client { ip: IpAddr, watch_for_header: bool },
    /// Closed (the reason is logged).
    Refused,
}

/// What arrived first on a connection.
enum FirstByte {
    Byte(u8),
    Silent,
    Closed,
}

/// Looks at the first byte without taking it.
async fn first_byte(stream: &TcpStream, wait: Duration) -> FirstByte {
    let mut b = [0u8; 1];
    match tokio::time::timeout(wait, stream.peek(&mut b)).await {
        Err(_) => FirstByte::Silent,
        Ok(Ok(1)) => FirstByte::Byte(b[0]),
        Ok(_) => FirstByte::Closed,
    }
}

/// Reads a PROXY header, never past its end (on port 465 the TLS handshake follows).
/// `None` when it did not arrive in time or the peer closed.
async fn read_proxy_header(stream: &mut TcpStream, until: Instant) -> Option<proxy::Parsed> {
    let mut buf = vec![0u8; proxy::MAX_HEADER];
    let mut len = 0;
    let read = async {
        loop {
            match proxy::parse(&buf[..len]) {
                proxy::Parsed::Incomplete { needed } => {
                    let end = (len + needed).min(buf.len());
                    if end == len {
                        return Some(proxy::Parsed::Invalid("PROXY header too long"));
                    }
                    match stream.read(&mut buf[len..end]).await {
                        Ok(0) | Err(_) => return None,
                        Ok(n) => len += n,
                    }
                }
                done => return Some(done),
            }
        }
    };
    tokio::time::timeout_at(until, read).await.ok().flatten()
}

/// Whether a direct client of the implicit-TLS port starts with a PROXY header instead of
/// a TLS handshake (closed, with a log line), or says nothing within `idle` (closed, as
/// the handshake would be).
async fn forged_before_tls(stream: &TcpStream, peer: IpAddr, idle: Duration) -> bool {
    match first_byte(stream, idle).await {
        FirstByte::Byte(b) if proxy::may_start_header(b) => {
            tracing::warn!(%peer, listener = ?ListenerKind::Smtps, "connection closed: PROXY header from a peer that is not a trusted proxy");
            true
        }
        FirstByte::Byte(_) => false,
        FirstByte::Silent | FirstByte::Closed => true,
    }
}

/// The PROXY protocol stage of a connection from `peer` (SPEC §3.2): a trusted proxy's
/// header names the client; a header from anyone else, or none when one is required,
/// closes the connection with a log line.
async fn proxied_client(
    stream: &mut TcpStream,
    peer: IpAddr,
    kind: ListenerKind,
    config: &ProxyProtocolConfig,
) -> Origin {
    let until = Instant::now() + PROXY_HEADER_TIMEOUT;
    let trusted = config.trusted_proxies.iter().any(|net| net.contains(&peer));
    let direct = |watch_for_header| Origin::Client {
        ip: peer,
        watch_for_header,
    };
    if !trusted {
        if config.required {
            tracing::warn!(%peer, listener = ?kind, "connection closed: the PROXY protocol is required and the peer is not a trusted proxy");
            return Origin::Refused;
        }
        return direct(true);
    }
    let wait = if config.required {
        PROXY_HEADER_TIMEOUT
    } else {
        UNANNOUNCED_WAIT
    };
    match first_byte(stream, wait).await {
        FirstByte::Closed => return Origin::Refused,
        FirstByte::Byte(b) if proxy::may_start_header(b) => {}
        _ if config.required => {
            tracing::warn!(%peer, listener = ?kind, "connection closed: no PROXY header from a trusted proxy, and one is required");
            return Origin::Refused;
        }
        _ => return direct(false),
    }
    match read_proxy_header(stream, until).await {
        Some(proxy::Parsed::Header { source, .. }) => Origin::Client {
            ip: source.ip().to_canonical(),
            watch_for_header: false,
        },
        Some(proxy::Parsed::Local { .. }) => direct(false),
        Some(proxy::Parsed::Invalid(reason)) => {
            tracing::warn!(%peer, listener = ?kind, %reason, "connection closed: invalid PROXY header");
            Origin::Refused
        }
        Some(proxy::Parsed::Incomplete { .. }) | None => {
            tracing::warn!(%peer, listener = ?kind, "connection closed: the PROXY header did not arrive complete within 5 s");
            Origin::Refused
        }
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
    ip: IpAddr,
    kind: ListenerKind,
    shared: &Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    slot: Slot,
    watch_for_header: bool,
) -> io::Result<()> {
    let generation = shared.current.load_full();
    let limits = &generation.config.limits;
    let deadline = Instant::now() + Duration::from_secs(limits.session_timeout_seconds);
    let idle = Duration::from_secs(limits.idle_timeout_seconds);
    let mut conn = Conn {
        shared,
        generation: generation.clone(),
        shutdown,
        deadline,
        idle,
        buf: Vec::new(),
        out: Vec::new(),
        shutting_down: false,
        slot: Some(slot),
        incoming: None,
        spool_failure: None,
        watch_for_header,
        listener: kind,
        filters: Filters::default(),
    };
    let mut session;
    let result = if kind == ListenerKind::Smtps {
        let Some(tls) = generation.tls.clone() else {
            return Ok(());
        };
        let Some(stream) = Box::pin(handshake(tls, stream, idle, deadline)).await? else {
            return Ok(());
        };
        let desc = tls_description(stream.get_ref().1);
        session = Session::new(generation.session.clone(), ip, Some(desc));
        conn.out.extend(session.greeting().to_wire());
        Box::pin(conn.drive(stream, &mut session)).await.map(drop)
    } else {
        session = Session::new(generation.session.clone(), ip, None);
        conn.out.extend(session.greeting().to_wire());
        match conn.drive(stream, &mut session).await {
            Ok(Some(stream)) => match conn.generation.tls.clone() {
                Some(tls) => match Box::pin(handshake(tls, stream, idle, deadline)).await {
                    Ok(Some(stream)) => {
                        session.tls_started(tls_description(stream.get_ref().1));
                        Box::pin(conn.drive(stream, &mut session)).await.map(drop)
                    }
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                },
                None => Ok(()),
            },
            other => other.map(drop),
        }
    };
    // However the session ended, its open transaction gives its reservations back and
    // the text of an unfinished message goes.
    conn.slot = None;
    if let Some(incoming) = conn.incoming.take() {
        shared.spool.discard(incoming).await;
    }
    conn.filters.close().await;
    if let Some(Action::Release { tx, user, rcpts }) = session.abandon() {
        conn.release(tx, &user, &rcpts).await;
    }
    result
}

/// Writes with the idle timeout (bounded by the session deadline): a client that stops
/// reading cannot hold a session open.
async fn write_within<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
    idle: Duration,
    deadline: Instant,
) -> io::Result<()> {
    let until = (Instant::now() + idle).min(deadline);
    match tokio::time::timeout_at(until, async {
        stream.write_all(bytes).await?;
        stream.flush().await
    })
    .await
    {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "client did not read its replies",
        )),
    }
}

/// Shuts a stream down, within a short bound.
async fn close<S: AsyncWrite + Unpin>(stream: &mut S) {
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.shutdown()).await;
}

enum Flow {
    Continue,
    Close,
    StartTls,
}

struct Conn<'a> {
    shared: &'a Arc<Shared>,
    /// The configuration the session works under now (refreshed between transactions).
    generation: Arc<Generation>,
    shutdown: watch::Receiver<bool>,
    deadline: Instant,
    idle: Duration,
    buf: Vec<u8>,
    out: Vec<u8>,
    shutting_down: bool,
    /// The connection's slot, dropped as soon as the last reply is written.
    slot: Option<Slot>,
    /// The text of the message being received.
    incoming: Option<Incoming>,
    /// Why the text of the message being received could not be kept.
    spool_failure: Option<crate::spool::SpoolError>,
    /// The peer is not a trusted proxy: a PROXY header as its first line is a forgery.
    watch_for_header: bool,
    /// The listener the connection came in on.
    listener: ListenerKind,
    /// The content filters' connections, kept for the session's next message.
    filters: Filters,
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
        let (idle, deadline) = (self.idle, self.deadline);
        let mut discarding = false;
        loop {
            // Handle everything complete in the buffer.
            loop {
                let actions = if session.in_data() {
                    if self.buf.is_empty() {
                        break;
                    }
                    if self.spool_failure.is_some() {
                        // The text cannot be kept: read on to the end, then refuse.
                        let mut scratch = Vec::new();
                        let (used, actions) = session.on_data(&self.buf, &mut scratch);
                        self.buf.drain(..used);
                        actions
                    } else {
                        let incoming = self.incoming.get_or_insert_with(|| {
                            let spool = &self.shared.spool;
                            let mut incoming = spool.begin(spool.new_id());
                            let header = trace_header(
                                self.shared,
                                &self.generation,
                                session,
                                &incoming.id().to_string(),
                            );
                            incoming.buffer().extend_from_slice(header.as_bytes());
                            incoming
                        });
                        let (used, actions) = session.on_data(&self.buf, incoming.buffer());
                        self.buf.drain(..used);
                        if let Err(e) = Box::pin(incoming.settle(&self.shared.spool)).await {
                            tracing::error!(error = %e, "cannot write a message's text to the spool");
                            Box::pin(self.fail_incoming(e)).await;
                        }
                        actions
                    }
                } else if let Some(end) = line_end(&self.buf) {
                    if std::mem::take(&mut self.watch_for_header)
                        && proxy::looks_like_header(&self.buf)
                    {
                        tracing::warn!(peer = %session.client_ip(), "connection closed: PROXY header from a peer that is not a trusted proxy");
                        self.slot = None;
                        close(&mut stream).await;
                        return Ok(None);
                    }
                    let line: Vec<u8> = self.buf.drain(..end).collect();
                    if discarding {
                        discarding = false;
                        continue;
                    }
                    self.refresh(session);
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
                // Boxed (as are the spool calls above): an idle session's future then
                // holds only the read and its timers, not room for the largest command
                // (a spool commit, an AUTH check): 2.7 instead of 4.8 KiB per idle
                // session, measured with 10,000.
                match Box::pin(self.run(actions, session)).await {
                    Flow::Continue => {}
                    Flow::Close => {
                        // Freed before the last reply goes out: a client that reconnects
                        // on reading it must find the slot free.
                        self.slot = None;
                        write_within(&mut stream, &self.out, idle, deadline).await?;
                        close(&mut stream).await;
                        return Ok(None);
                    }
                    Flow::StartTls => {
                        write_within(&mut stream, &self.out, idle, deadline).await?;
                        self.out.clear();
                        self.buf.clear();
                        return Ok(Some(stream));
                    }
                }
            }
            if !self.out.is_empty() {
                write_within(&mut stream, &self.out, idle, deadline).await?;
                self.out.clear();
            }
            if self.shutting_down && !session.in_data() {
                self.slot = None;
                write_within(
                    &mut stream,
                    &session.shutdown_reply().to_wire(),
                    idle,
                    deadline,
                )
                .await?;
                close(&mut stream).await;
                return Ok(None);
            }
            // In DATA, a read takes up to DATA_READ bytes at once: a message's text then
            // arrives in a few large reads instead of thousands of small ones (with a timer
            // each). Outside DATA the buffer goes back to small, for idle sessions.
            if session.in_data() {
                self.buf.reserve(DATA_READ);
            } else if self.buf.capacity() > COMMAND_READ && self.buf.len() <= COMMAND_READ / 2 {
                self.buf.shrink_to(COMMAND_READ / 2);
            }
            let wake = (Instant::now() + idle).min(deadline);
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
                    self.slot = None;
                    write_within(
                        &mut stream,
                        &session.timeout_reply().to_wire(),
                        idle,
                        deadline,
                    )
                    .await?;
                    close(&mut stream).await;
                    return Ok(None);
                }
            }
        }
    }

    /// One AUTH attempt: the throttle first (delay or lockout), then the password check
    /// on the bounded pool, against the credentials in force now.
    async fn authenticate(
        &mut self,
        session: &mut Session,
        identity: String,
        password: String,
    ) -> Vec<Action> {
        use crate::ingress::auth::Verdict;
        use crate::ingress::auth_throttle::{Decision, lockout_reply};
        let shared = self.shared;
        let ip = session.client_ip();
        // The attempt is reserved from here until it is settled (or dropped: not counted).
        let attempt = match shared
            .auth_throttle
            .check(ip, &identity, shared.clock.now())
        {
            Decision::LockedOut { scope, .. } => {
                shared.metrics.auth_failure("locked_out");
                tracing::info!(client = %ip, %identity, scope = scope.label(), result = "locked out", "SMTP AUTH");
                return session.auth_not_checked(lockout_reply());
            }
            Decision::Verify { delay, attempt } => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                attempt
            }
        };
        let credentials = self.shared.current.load().credentials.clone();
        match credentials.verify(&identity, password).await {
            Verdict::Valid(fingerprint) => {
                attempt.succeeded(shared.clock.now());
                tracing::info!(client = %ip, %identity, result = "ok", "SMTP AUTH");
                session.auth_verified(identity, fingerprint)
            }
            Verdict::Invalid => {
                shared.metrics.auth_failure("invalid");
                for scope in attempt.failed(shared.clock.now()) {
                    shared.metrics.auth_lockout(scope.label());
                    tracing::warn!(client = %ip, %identity, scope = scope.label(), "AUTH lockout started");
                }
                tracing::info!(client = %ip, %identity, result = "invalid", "SMTP AUTH");
                session.auth_result(identity, false)
            }
            Verdict::Busy => {
                // Nothing was checked: the reservation goes back uncounted.
                drop(attempt);
                shared.metrics.auth_busy.inc();
                tracing::warn!(client = %ip, "AUTH refused: the password check pool is full");
                session.auth_not_checked(crate::ingress::auth::busy_reply())
            }
        }
    }

    /// Puts the configuration in force now into the session, between transactions.
    fn refresh(&mut self, session: &mut Session) {
        let current = self.shared.current.load();
        if current.id != self.generation.id && session.reconfigure(current.session.clone()) {
            self.generation = arc_swap::Guard::into_inner(current);
        }
    }

    /// The text of the message being received could not be written: drop it; the message
    /// is refused when its end arrives.
    async fn fail_incoming(&mut self, e: crate::spool::SpoolError) {
        if let Some(incoming) = self.incoming.take() {
            self.shared.spool.discard(incoming).await;
        }
        self.spool_failure = Some(e);
    }

    async fn release(&self, tx: crate::limits::TxId, user: &str, rcpts: &[String]) {
        let result = self
            .shared
            .limits
            .release(Release {
                now: self.shared.clock.now(),
                tx,
                user,
                rcpts,
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "limit reservations not released; they expire instead");
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
                    queue.extend(self.authenticate(session, identity, password).await);
                }
                Action::CheckRcpt {
                    tx,
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
                            tx,
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
                Action::Release { tx, user, rcpts } => {
                    self.release(tx, &user, &rcpts).await;
                }
                Action::DiscardData => {
                    if let Some(incoming) = self.incoming.take() {
                        self.shared.spool.discard(incoming).await;
                    }
                    self.spool_failure = None;
                    tracing::info!(client = %session.client_ip(), result = "rejected", "message");
                }
                Action::Spool(message) => {
                    // The end of DATA has been read: time until the reply is ready.
                    let started = std::time::Instant::now();
                    let result = self.spool(session.client_ip(), *message).await;
                    if result.is_ok() {
                        self.shared
                            .metrics
                            .data_reply_seconds
                            .observe(started.elapsed().as_secs_f64());
                    }
                    queue.extend(session.spooled(result));
                }
            }
        }
        Flow::Continue
    }

    /// Commits the streamed message to the spool, counts and announces it. On failure the
    /// transaction's reservations go back.
    async fn spool(&mut self, ip: IpAddr, m: Message) -> Result<String, Reply> {
        let shared = self.shared;
        let incoming = self.incoming.take();
        let failure = self.spool_failure.take();
        let incoming = match (incoming, failure) {
            (Some(incoming), None) => incoming,
            (incoming, failure) => {
                if let Some(incoming) = incoming {
                    shared.spool.discard(incoming).await;
                }
                self.release(m.tx, &m.user, &m.rcpts).await;
                let e = failure.unwrap_or(crate::spool::SpoolError::WriterStopped);
                tracing::error!(sender = %m.mail_from, recipients = %m.rcpts.join(","), client = %ip, error = %e, result = "rejected", reply = %reply_text(&e.reply()), "message");
                return Err(e.reply());
            }
        };
        let now = shared.clock.now();
        let queue_id = incoming.id();
        let id_text = queue_id.to_string();
        let mut envelope = Envelope {
            queue_id,
            mail_from: m.mail_from,
            original_mail_from: m.original_mail_from,
            rcpts: m.rcpts,
            client_ip: ip,
            helo: m.helo,
            auth_identity: m.auth_identity,
            tls: m.tls,
            received_at: now,
            size: incoming.len(),
            smtputf8: m.smtputf8,
            eight_bit_mime: m.eight_bit_mime,
            quarantine: None,
            discarded: None,
            archive: None,
        };
        let archive = self.generation.config.archive.as_ref();
        let mut incoming = incoming;
        // The recipients the limits reserved (a filter may change the envelope's).
        let mut reserved: Option<Vec<String>> = None;
        let mut quarantined = false;
        let filters = &self.generation.config.content_filters;
        if !filters.is_empty() {
            reserved = Some(envelope.rcpts.clone());
            let (helo, tls, auth) = (
                envelope.helo.clone(),
                envelope.tls.clone(),
                envelope.auth_identity.clone(),
            );
            let client = Client {
                ip,
                listener: self.listener.name(),
                helo: &helo,
                tls: tls.as_deref(),
                auth_identity: auth.as_deref(),
                hostname: &self.generation.config.hostname,
            };
            let decision = self
                .filters
                .run(
                    filters,
                    &client,
                    &mut envelope,
                    &mut incoming,
                    &shared.spool,
                    &shared.metrics.filters,
                )
                .await;
            let reserved = reserved.as_deref().unwrap_or(&[]);
            match decision {
                Decision::Deliver => {}
                Decision::Refuse { filter, reply } => {
                    shared.spool.discard(incoming).await;
                    self.release(m.tx, &m.user, reserved).await;
                    tracing::info!(queue_id = %id_text, sender = %envelope.mail_from, recipients = %reserved.join(","), client = %ip, filter, result = "rejected", reply = %reply_text(&reply), "message");
                    return Err(reply);
                }
                Decision::Discard { filter } => {
                    self.release(m.tx, &m.user, reserved).await;
                    let keep = archive.filter(|a| a.include_filtered_out);
                    let Some(archive) = keep else {
                        shared.spool.discard(incoming).await;
                        tracing::info!(queue_id = %id_text, sender = %envelope.mail_from, recipients = %reserved.join(","), client = %ip, filter, result = "discarded", "message");
                        return Ok(id_text);
                    };
                    // Kept for its journal copy only: no recipient gets it.
                    envelope.discarded = Some(filter.clone());
                    envelope.archive = Some(archive.address.clone());
                    if let Err(e) = shared.spool.commit(&envelope, incoming).await {
                        tracing::error!(queue_id = %id_text, client = %ip, filter, error = %e, result = "rejected", reply = %reply_text(&e.reply()), "message: discarded, and its journal copy cannot be queued");
                        return Err(e.reply());
                    }
                    shared.metrics.archive_queued.inc();
                    tracing::info!(queue_id = %id_text, sender = %envelope.mail_from, recipients = %reserved.join(","), client = %ip, filter, result = "discarded", archive = %archive.address, "message");
                    let _ = shared.accepted.send(envelope);
                    return Ok(id_text);
                }
                Decision::Quarantine { filter, reason } => {
                    let why = format!("{filter}: {reason}");
                    let dir = crate::delivery::queue::state::state_dir(std::path::Path::new(
                        &self.generation.config.spool_dir,
                    ));
                    if let Err(e) =
                        crate::delivery::queue::state::hold_before_commit(&dir, &id_text, &why)
                    {
                        shared.spool.discard(incoming).await;
                        self.release(m.tx, &m.user, reserved).await;
                        let reply = if e.kind() == io::ErrorKind::StorageFull {
                            crate::spool::SpoolError::Full
                        } else {
                            crate::spool::SpoolError::Io {
                                path: dir.clone(),
                                source: e,
                            }
                        }
                        .reply();
                        tracing::error!(queue_id = %id_text, client = %ip, filter, result = "rejected", reply = %reply_text(&reply), "message: cannot hold it as the content filter asked");
                        return Err(reply);
                    }
                    envelope.quarantine = Some(why);
                    quarantined = true;
                }
            }
        }
        if let Some(archive) = archive
            && (!quarantined || archive.include_filtered_out)
        {
            envelope.archive = Some(archive.address.clone());
        }
        if let Err(e) = shared.spool.commit(&envelope, incoming).await {
            if quarantined {
                crate::delivery::queue::state::forget_hold(
                    &crate::delivery::queue::state::state_dir(std::path::Path::new(
                        &self.generation.config.spool_dir,
                    )),
                    &id_text,
                );
            }
            let rcpts = reserved.as_deref().unwrap_or(&envelope.rcpts);
            self.release(m.tx, &m.user, rcpts).await;
            tracing::error!(queue_id = %id_text, sender = %envelope.mail_from, recipients = %envelope.rcpts.join(","), client = %ip, error = %e, result = "rejected", reply = %reply_text(&e.reply()), "message");
            return Err(e.reply());
        }
        if let Err(e) = shared
            .limits
            .record(Usage {
                now,
                tx: m.tx,
                user: &m.user,
                rcpts: reserved.as_deref().unwrap_or(&envelope.rcpts),
            })
            .await
        {
            tracing::warn!(queue_id = %id_text, error = %e, "message queued but not counted toward limits");
        }
        shared.metrics.accepted.inc();
        if envelope.archive.is_some() {
            shared.metrics.archive_queued.inc();
        }
        shared
            .metrics
            .accepted_recipients
            .inc_by(envelope.rcpts.len() as u64);
        tracing::info!(
            queue_id = %id_text,
            sender = %envelope.mail_from,
            original_sender = envelope.original_mail_from.as_deref().unwrap_or(""),
            recipients = %envelope.rcpts.join(","),
            client = %ip,
            tls = envelope.tls.as_deref().unwrap_or("none"),
            size = envelope.size,
            result = if quarantined { "quarantined" } else { "accepted" },
            quarantine = envelope.quarantine.as_deref().unwrap_or(""),
            archive = envelope.archive.as_deref().unwrap_or(""),
            "message"
        );
        // No receiver is fine: delivery rescans the spool when it starts.
        let _ = shared.accepted.send(envelope);
        Ok(id_text)
    }
}

/// A reply as one log field: `451 4.3.0 Local error in processing: message not queued`.
fn reply_text(reply: &Reply) -> String {
    format!("{} {}", reply.code, reply.lines.join(" "))
}

/// The `Received:` header written before a message's text, from what the session knows
/// when DATA starts.
fn trace_header(
    shared: &Shared,
    generation: &Generation,
    session: &Session,
    queue_id: &str,
) -> String {
    let (helo, auth, tls) = session.trace_facts();
    received_header(&Trace {
        helo,
        ip: session.client_ip(),
        tls,
        authenticated: auth.is_some(),
        smtputf8: session.smtputf8_declared(),
        hostname: &generation.config.hostname,
        queue_id,
        at: shared.clock.now(),
        hide_ip: generation.config.hide_client_address,
    })
}
