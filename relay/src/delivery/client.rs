//! The outbound SMTP client: one session with one downstream host, and the connection cache.
//!
//! [`SmtpConnection::open`] connects, reads the greeting, says EHLO (HELO when EHLO is
//! refused), starts TLS as the [`TlsPolicy`] says and says EHLO again (or, for an
//! implicit-TLS route, port 465, does the TLS handshake before reading the greeting), then
//! authenticates with the route's [`AuthCredentials`] when it has any; a handshake that
//! fails for a reason other than the certificate is [`SessionError::TlsHandshake`], so the
//! caller can retry in plaintext where the policy allows ([`SessionParams::plaintext`]).
//! [`SmtpConnection::send`] sends one message: with PIPELINING, MAIL, every RCPT and DATA
//! go in one write; the text is streamed from its [`MessageText`] and dot-stuffed on the
//! fly in blocks of [`DATA_BLOCK_BYTES`] ([`DotStuffer`]), so memory per session does not
//! grow with the message. It returns one [`RecipientOutcome`] per recipient. The MAIL line
//! (`mail_command`) carries SMTPUTF8 and `BODY=8BITMIME` when the message has them and
//! the host offers them; a message whose envelope holds a UTF-8 address cannot go to a
//! host without SMTPUTF8 and fails with `5.6.7` before MAIL is sent (RFC 6531 §3.5).
//! Every stage has its own deadline ([`StageTimeouts`], RFC 5321 §4.5.3.2), a total from
//! the command to the complete reply, not a limit per read. [`ConnectionCache`] keeps
//! sessions open for `connection_idle_seconds`, keyed by host, port, TLS policy and the
//! CA roots the certificate was checked against, and resets them (RSET) before reuse. A
//! session in step has nothing left to read between transactions: one with unread input
//! (a reply line too many, sent by a broken server or an LMTP server answering per
//! recipient; a notice sent while idle; the connection closed) is closed when it is
//! returned or taken, never reused, since every later reply would be read one command late. Reply parsing ([`parse_reply`]) is a pure function
//! over bytes.
//!
//! Outbound AUTH (PLAIN, LOGIN, XOAUTH2) is sent only over a TLS session whose policy
//! checked everything a route can check ([`TlsPolicy::fully_verified`]); otherwise the
//! session fails before a byte of the credentials is written. A 5xx to AUTH is
//! [`SessionError::AuthRejected`] (the message bounces with the upstream's text), a 4xx is
//! temporary. Credentials appear in no error, log line or `Debug` output: errors carry the
//! server's reply, never what was sent. This module does not choose hosts or decide about
//! retries.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::text::MessageText;
use super::tls::{TlsPolicy, TlsRequirement};
use crate::clock::Clock;
use crate::config::{AuthMechanism, DeliveryConfig};
use crate::envelope::MailParams;

/// Longest reply accepted from a server, in bytes.
const MAX_REPLY_BYTES: usize = 64 * 1024;

/// Message text read from the store per block written to the socket.
pub const DATA_BLOCK_BYTES: usize = 64 * 1024;

/// How long each stage of a session may take, in total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageTimeouts {
    /// TCP connect.
    pub connect: Duration,
    /// The greeting; also each of EHLO/HELO, STARTTLS and the TLS handshake.
    pub greeting: Duration,
    /// The reply to MAIL.
    pub mail: Duration,
    /// The reply to each RCPT.
    pub rcpt: Duration,
    /// The `354` reply to DATA.
    pub data: Duration,
    /// Writing one block of text.
    pub data_block: Duration,
    /// The reply to the final dot.
    pub final_dot: Duration,
    /// RSET and QUIT (the connect timeout).
    pub short: Duration,
}

impl StageTimeouts {
    /// The timeouts a delivery config declares (each at least one millisecond).
    pub fn from_config(cfg: &DeliveryConfig) -> Self {
        let secs = |s: u64| Duration::from_secs(s).max(Duration::from_millis(1));
        let t = &cfg.stage_timeouts;
        Self {
            connect: secs(cfg.connect_timeout_seconds),
            greeting: secs(t.greeting_seconds),
            mail: secs(t.mail_seconds),
            rcpt: secs(t.rcpt_seconds),
            data: secs(t.data_seconds),
            data_block: secs(t.data_block_seconds),
            final_dot: secs(t.final_dot_seconds),
            short: secs(cfg.connect_timeout_seconds),
        }
    }

    /// Every stage `d` (tests and probes).
    pub fn uniform(d: Duration) -> Self {
        Self {
            connect: d,
            greeting: d,
            mail: d,
            rcpt: d,
            data: d,
            data_block: d,
            final_dot: d,
            short: d,
        }
    }

    fn of(&self, stage: Stage) -> Duration {
        match stage {
            Stage::Greeting
            | Stage::Hello
            | Stage::StartTls
            | Stage::TlsHandshake
            | Stage::Auth => self.greeting,
            Stage::Mail => self.mail,
            Stage::Rcpt => self.rcpt,
            Stage::Data => self.data,
            Stage::DataBlock => self.data_block,
            Stage::FinalDot => self.final_dot,
            Stage::Rset | Stage::Quit => self.short,
        }
    }
}

impl Default for StageTimeouts {
    fn default() -> Self {
        Self::from_config(&DeliveryConfig::default())
    }
}

/// A step of a session, for its deadline and for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Greeting,
    Hello,
    StartTls,
    TlsHandshake,
    Auth,
    Mail,
    Rcpt,
    Data,
    DataBlock,
    FinalDot,
    Rset,
    Quit,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Greeting => "greeting",
            Stage::Hello => "EHLO",
            Stage::StartTls => "STARTTLS",
            Stage::TlsHandshake => "TLS handshake",
            Stage::Auth => "AUTH",
            Stage::Mail => "MAIL",
            Stage::Rcpt => "RCPT",
            Stage::Data => "DATA",
            Stage::DataBlock => "data block",
            Stage::FinalDot => "final dot",
            Stage::Rset => "RSET",
            Stage::Quit => "QUIT",
        })
    }
}

/// One SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The text of each line, without the code and separator.
    pub lines: Vec<String>,
}

impl Reply {
    /// The whole reply as one line: `550 5.1.1 no such user`.
    pub fn text(&self) -> String {
        format!("{} {}", self.code, self.lines.join(" "))
            .trim_end()
            .to_string()
    }

    /// The enhanced status code of the first line, if it has one.
    pub fn enhanced_status(&self) -> Option<String> {
        let first = self.lines.first()?.split_whitespace().next()?;
        let parts: Vec<&str> = first.split('.').collect();
        let ok = parts.len() == 3
            && matches!(parts[0], "2" | "4" | "5")
            && parts[1..]
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
        ok.then(|| first.to_string())
    }

    /// The enhanced status, or a generic one from the class of the code.
    pub fn status_or(&self, fallback_detail: &str) -> String {
        self.enhanced_status()
            .unwrap_or_else(|| format!("{}.{fallback_detail}", self.code / 100))
    }

    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 5xx.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }
}

/// Parses one complete reply at the start of `buf`. `Ok(None)` when more bytes are needed;
/// otherwise the reply and how many bytes it took.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    let mut pos = 0;
    let mut lines = Vec::new();
    let mut code = None;
    loop {
        let Some(nl) = buf[pos..].iter().position(|b| *b == b'\n') else {
            return Ok(None);
        };
        let raw = &buf[pos..pos + nl];
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        pos += nl + 1;
        if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
            return Err(format!(
                "malformed reply line {:?}",
                String::from_utf8_lossy(line)
            ));
        }
        let this_code = u16::from(line[0] - b'0') * 100
            + u16::from(line[1] - b'0') * 10
            + u16::from(line[2] - b'0');
        if *code.get_or_insert(this_code) != this_code {
            return Err("reply lines carry different codes".into());
        }
        let sep = line.get(3).copied();
        let text = line.get(4..).unwrap_or(&[]);
        lines.push(String::from_utf8_lossy(text).into_owned());
        match sep {
            Some(b'-') => continue,
            None | Some(b' ') => {
                return Ok(Some((
                    Reply {
                        code: this_code,
                        lines,
                    },
                    pos,
                )));
            }
            Some(_) => return Err("malformed reply separator".into()),
        }
    }
}

/// Dot-stuffing over a text that arrives in pieces: the state of the line in progress
/// carries from one piece to the next.
#[derive(Debug, Clone)]
pub struct DotStuffer {
    at_line_start: bool,
    last_two: [u8; 2],
    empty: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        Self {
            at_line_start: true,
            last_two: [0, 0],
            empty: true,
        }
    }
}

impl DotStuffer {
    /// Appends `input`, dot-stuffed, to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            if self.at_line_start && b == b'.' {
                out.push(b'.');
            }
            out.push(b);
            self.at_line_start = b == b'\n';
            self.last_two = [self.last_two[1], b];
        }
        self.empty &= input.is_empty();
    }

    /// Appends the end of the text (a CRLF when the text does not end with one) and the
    /// terminating `.CRLF`.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.empty && self.last_two != *b"\r\n" {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

/// Dot-stuffs a whole message and ends it with `CRLF.CRLF`.
pub fn dot_stuff(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    let mut stuffer = DotStuffer::default();
    stuffer.push(data, &mut out);
    stuffer.finish(&mut out);
    out
}

/// Why a session with a host failed as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionError {
    /// Worth another host or a later retry: connect failure, timeout, 4xx, broken protocol.
    Temporary(String),
    /// The STARTTLS handshake failed for a reason other than the certificate (protocol
    /// error, handshake failure, closed connection, timeout). Temporary; a route that does
    /// not require TLS retries the host once in plaintext ([`SessionParams::plaintext`]).
    /// A certificate that fails the route's checks is [`SessionError::Permanent`] instead.
    TlsHandshake(String),
    /// The host refused our credentials for good (5xx to AUTH): every host of the route
    /// would, so the message bounces with the host's text instead of trying the next one.
    AuthRejected {
        /// Enhanced status code: `5.7.8` (RFC 4954), the host's own code is in the text.
        status: String,
        /// The host's reply, for the DSN.
        diagnostic: String,
    },
    /// The host refused for good (5xx), or TLS policy forbids it (certificate, no STARTTLS).
    Permanent {
        /// Enhanced status code, `5.x.x`.
        status: String,
        /// What happened, for the DSN.
        diagnostic: String,
    },
}

impl SessionError {
    fn from_reply(reply: &Reply, host: &str) -> Self {
        if reply.is_permanent() {
            SessionError::Permanent {
                status: reply.status_or("0.0"),
                diagnostic: format!("host {host} said: {}", reply.text()),
            }
        } else {
            SessionError::Temporary(format!("host {host} said: {}", reply.text()))
        }
    }
}

/// Credentials for outbound AUTH, read from the route's mounted Secret just before a
/// session opens. `Debug` shows the mechanism only.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthCredentials {
    /// SASL mechanism.
    pub mechanism: AuthMechanism,
    /// User name (authorization and authentication identity).
    pub username: String,
    /// Password (PLAIN, LOGIN) or OAuth 2.0 access token (XOAUTH2).
    pub secret: String,
}

impl std::fmt::Debug for AuthCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthCredentials")
            .field("mechanism", &self.mechanism)
            .finish_non_exhaustive()
    }
}

impl AuthCredentials {
    /// The base64 initial response of PLAIN (RFC 4616: `\0user\0password`).
    pub fn plain_response(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .encode(format!("\0{}\0{}", self.username, self.secret))
    }

    /// The base64 initial response of XOAUTH2 (`user=…^Aauth=Bearer …^A^A`).
    pub fn xoauth2_response(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!(
            "user={}\x01auth=Bearer {}\x01\x01",
            self.username, self.secret
        ))
    }
}

fn b64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// What happened to one recipient in one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientOutcome {
    /// The host took responsibility for the message.
    Delivered {
        /// The final reply to DATA.
        reply: String,
    },
    /// Try again later.
    Deferred {
        /// Why.
        reason: String,
    },
    /// Will never be delivered.
    Failed {
        /// Enhanced status code, `5.x.x`.
        status: String,
        /// What happened, for the DSN.
        diagnostic: String,
    },
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Only while the TCP stream is inside the TLS handshake.
    Detached,
}

fn detached() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "session has no stream")
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }
}

/// What the server said it supports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Capabilities {
    pipelining: bool,
    starttls: bool,
    size: bool,
    smtputf8: bool,
    eight_bit_mime: bool,
    /// SASL mechanisms of the `AUTH` keyword (upper case).
    auth: Vec<String>,
}

impl Capabilities {
    fn from_ehlo(reply: &Reply) -> Self {
        let mut caps = Self::default();
        for line in reply.lines.iter().skip(1) {
            let upper = line.to_ascii_uppercase();
            let mut words = upper.split(|c: char| c.is_whitespace() || c == '=');
            let keyword = words.next().unwrap_or("");
            match keyword {
                "AUTH" => caps
                    .auth
                    .extend(words.filter(|w| !w.is_empty()).map(str::to_string)),
                "PIPELINING" => caps.pipelining = true,
                "STARTTLS" => caps.starttls = true,
                "SIZE" => caps.size = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "8BITMIME" => caps.eight_bit_mime = true,
                _ => {}
            }
        }
        caps
    }
}

/// Everything needed to open a session with one host.
#[derive(Clone)]
pub struct SessionParams {
    /// Host name (as in the route or the MX record) or IP literal; the TLS name.
    pub host: String,
    /// Address to connect to.
    pub addr: SocketAddr,
    /// Our name for EHLO.
    pub helo_name: String,
    /// The route's policy.
    pub policy: TlsPolicy,
    /// The rustls configuration built from the policy.
    pub tls_config: Arc<ClientConfig>,
    /// Deadline of each stage.
    pub timeouts: StageTimeouts,
    /// Do not start TLS even when offered: the one plaintext retry after a failed
    /// handshake. Ignored when the policy requires TLS or is implicit TLS.
    pub plaintext: bool,
    /// Authenticate with these after TLS (the route's `auth`); `None`: no AUTH.
    pub auth: Option<AuthCredentials>,
}

/// One open SMTP session.
pub struct SmtpConnection {
    stream: Stream,
    buf: Vec<u8>,
    host: String,
    caps: Capabilities,
    tls: bool,
    timeouts: StageTimeouts,
    /// Taken from the cache: the next transaction starts with RSET, sent in the same
    /// pipelined write as MAIL (RFC 2920 allows RSET anywhere in a group), so reuse costs
    /// no round trip of its own.
    reused: bool,
    /// The RSET of a reused session failed: the session was gone before this transaction
    /// started, so nothing of it reached the server and it may be tried on a new session.
    stale: bool,
}

impl std::fmt::Debug for SmtpConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpConnection")
            .field("host", &self.host)
            .field("tls", &self.tls)
            .finish()
    }
}

impl SmtpConnection {
    /// Connects and gets the session ready for MAIL (greeting, EHLO, STARTTLS as the policy
    /// says).
    pub async fn open(params: &SessionParams) -> Result<Self, SessionError> {
        let label = format!("{}[{}]", params.host, params.addr);
        let tcp =
            match tokio::time::timeout(params.timeouts.connect, TcpStream::connect(params.addr))
                .await
            {
                Ok(Ok(tcp)) => tcp,
                Ok(Err(e)) => {
                    return Err(SessionError::Temporary(format!(
                        "connect to {label} failed: {e}"
                    )));
                }
                Err(_) => {
                    return Err(SessionError::Temporary(format!(
                        "connect to {label} timed out"
                    )));
                }
            };
        let _ = tcp.set_nodelay(true);
        let mut conn = SmtpConnection {
            stream: Stream::Plain(tcp),
            buf: Vec::new(),
            host: label.clone(),
            caps: Capabilities::default(),
            tls: false,
            timeouts: params.timeouts,
            reused: false,
            stale: false,
        };
        if params.policy.implicit {
            // Port 465: the handshake comes first; there is no plaintext to fall back to.
            conn.start_tls(params).await.map_err(|e| match e {
                SessionError::TlsHandshake(m) => SessionError::Temporary(m),
                other => other,
            })?;
        }
        let greeting = conn.read_reply(Stage::Greeting).await?;
        if !greeting.is_positive() {
            return Err(SessionError::from_reply(&greeting, &label));
        }
        conn.hello(&params.helo_name).await?;
        if !conn.tls {
            conn.negotiate_starttls(params).await?;
        }
        if let Some(auth) = &params.auth {
            conn.authenticate(auth, &params.policy).await?;
        }
        Ok(conn)
    }

    /// STARTTLS and the second EHLO, as the policy says.
    async fn negotiate_starttls(&mut self, params: &SessionParams) -> Result<(), SessionError> {
        let label = self.host.clone();
        let skip_tls =
            params.plaintext && params.policy.requirement == TlsRequirement::Opportunistic;
        if self.caps.starttls && !skip_tls {
            self.write(b"STARTTLS\r\n", Stage::StartTls).await?;
            let reply = self.read_reply(Stage::StartTls).await?;
            if reply.code == 220 {
                self.start_tls(params).await?;
                self.hello(&params.helo_name).await?;
                return Ok(());
            }
            if params.policy.requirement == TlsRequirement::Required {
                return Err(SessionError::Temporary(format!(
                    "host {label} refused STARTTLS: {}",
                    reply.text()
                )));
            }
        } else if params.policy.requirement == TlsRequirement::Required {
            return Err(SessionError::Permanent {
                status: "5.7.10".into(),
                diagnostic: format!(
                    "host {label} does not offer STARTTLS and the route requires TLS"
                ),
            });
        }
        Ok(())
    }

    /// SMTP AUTH (RFC 4954) with `auth`, only over TLS that passed every check of the
    /// route. The error names the mechanism and the server's reply, never the credentials.
    async fn authenticate(
        &mut self,
        auth: &AuthCredentials,
        policy: &TlsPolicy,
    ) -> Result<(), SessionError> {
        let host = self.host.clone();
        let name = auth.mechanism.sasl_name();
        if !self.tls || !policy.fully_verified() {
            return Err(SessionError::Permanent {
                status: "5.7.10".into(),
                diagnostic: format!(
                    "credentials for {host} not sent: AUTH needs TLS with requireTls, requireCaSigned and validateHostname all on, and this session {}",
                    if self.tls {
                        "skipped some of those checks"
                    } else {
                        "is not encrypted"
                    }
                ),
            });
        }
        if !self.caps.auth.iter().any(|m| m == name) {
            return Err(SessionError::Permanent {
                status: "5.7.0".into(),
                diagnostic: format!(
                    "host {host} does not offer AUTH {name} (it offers: {})",
                    if self.caps.auth.is_empty() {
                        "no AUTH at all".to_string()
                    } else {
                        self.caps.auth.join(" ")
                    }
                ),
            });
        }
        let mut reply = match auth.mechanism {
            AuthMechanism::Plain => {
                let line = format!("AUTH PLAIN {}\r\n", auth.plain_response());
                self.write(line.as_bytes(), Stage::Auth).await?;
                self.read_reply(Stage::Auth).await?
            }
            AuthMechanism::Login => {
                self.write(b"AUTH LOGIN\r\n", Stage::Auth).await?;
                let mut reply = self.read_reply(Stage::Auth).await?;
                for part in [&auth.username, &auth.secret] {
                    if reply.code != 334 {
                        break;
                    }
                    self.write(format!("{}\r\n", b64(part)).as_bytes(), Stage::Auth)
                        .await?;
                    reply = self.read_reply(Stage::Auth).await?;
                }
                reply
            }
            AuthMechanism::XOAuth2 => {
                let line = format!("AUTH XOAUTH2 {}\r\n", auth.xoauth2_response());
                self.write(line.as_bytes(), Stage::Auth).await?;
                self.read_reply(Stage::Auth).await?
            }
        };
        if reply.code == 334 {
            // A challenge after the whole response (XOAUTH2's error details): an empty
            // line asks for the final reply.
            self.write(b"\r\n", Stage::Auth).await?;
            reply = self.read_reply(Stage::Auth).await?;
        }
        match reply.code {
            235 => Ok(()),
            500..=599 => Err(SessionError::AuthRejected {
                status: "5.7.8".into(),
                diagnostic: format!("host {host} refused AUTH {name}: {}", reply.text()),
            }),
            _ => Err(SessionError::Temporary(format!(
                "host {host} did not accept AUTH {name}: {}",
                reply.text()
            ))),
        }
    }

    /// Whether the session runs over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    async fn hello(&mut self, name: &str) -> Result<(), SessionError> {
        self.write(format!("EHLO {name}\r\n").as_bytes(), Stage::Hello)
            .await?;
        let reply = self.read_reply(Stage::Hello).await?;
        if reply.is_positive() {
            self.caps = Capabilities::from_ehlo(&reply);
            return Ok(());
        }
        self.write(format!("HELO {name}\r\n").as_bytes(), Stage::Hello)
            .await?;
        let reply = self.read_reply(Stage::Hello).await?;
        if !reply.is_positive() {
            return Err(SessionError::from_reply(&reply, &self.host));
        }
        self.caps = Capabilities::default();
        Ok(())
    }

    async fn start_tls(&mut self, params: &SessionParams) -> Result<(), SessionError> {
        let name = ServerName::try_from(
            params
                .host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
        )
        .map_err(|e| SessionError::Permanent {
            status: "5.7.5".into(),
            diagnostic: format!("{} is not a valid TLS server name: {e}", params.host),
        })?;
        let plain = std::mem::replace(&mut self.stream, Stream::Detached);
        let Stream::Plain(tcp) = plain else {
            return Err(SessionError::Temporary("TLS already started".into()));
        };
        self.buf.clear();
        let connector = TlsConnector::from(params.tls_config.clone());
        let handshake = tokio::time::timeout(
            self.timeouts.of(Stage::TlsHandshake),
            connector.connect(name, tcp),
        )
        .await;
        match handshake {
            Ok(Ok(tls)) => {
                self.stream = Stream::Tls(Box::new(tls));
                self.tls = true;
                Ok(())
            }
            Ok(Err(e)) => {
                let rustls_error = e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>());
                match rustls_error {
                    Some(err @ rustls::Error::InvalidCertificate(_)) => {
                        Err(SessionError::Permanent {
                            status: "5.7.5".into(),
                            diagnostic: format!(
                                "TLS certificate of {} could not be validated: {err}",
                                self.host
                            ),
                        })
                    }
                    _ => Err(SessionError::TlsHandshake(format!(
                        "TLS handshake with {} failed: {e}",
                        self.host
                    ))),
                }
            }
            Err(_) => match self.timed_out(Stage::TlsHandshake) {
                SessionError::Temporary(m) => Err(SessionError::TlsHandshake(m)),
                other => Err(other),
            },
        }
    }

    fn timed_out(&self, stage: Stage) -> SessionError {
        SessionError::Temporary(format!(
            "{stage} timeout: host {} did not complete the {stage} stage within {:?}",
            self.host,
            self.timeouts.of(stage)
        ))
    }

    async fn write(&mut self, bytes: &[u8], stage: Stage) -> Result<(), SessionError> {
        let limit = self.timeouts.of(stage);
        let fut = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(limit, fut).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(SessionError::Temporary(format!(
                "write to {} failed ({stage}): {e}",
                self.host
            ))),
            Err(_) => Err(self.timed_out(stage)),
        }
    }

    /// Reads one complete reply; the whole reply must arrive within the stage's limit,
    /// however the server splits it.
    async fn read_reply(&mut self, stage: Stage) -> Result<Reply, SessionError> {
        let deadline = tokio::time::Instant::now() + self.timeouts.of(stage);
        loop {
            match parse_reply(&self.buf) {
                Ok(Some((reply, used))) => {
                    self.buf.drain(..used);
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(SessionError::Temporary(format!("host {}: {e}", self.host)));
                }
            }
            if self.buf.len() > MAX_REPLY_BYTES {
                return Err(SessionError::Temporary(format!(
                    "host {} sent an over-long reply",
                    self.host
                )));
            }
            let mut chunk = [0u8; 4096];
            let read = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await;
            match read {
                Ok(Ok(0)) => {
                    return Err(SessionError::Temporary(format!(
                        "host {} closed the connection ({stage})",
                        self.host
                    )));
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => {
                    return Err(SessionError::Temporary(format!(
                        "read from {} failed ({stage}): {e}",
                        self.host
                    )));
                }
                Err(_) => return Err(self.timed_out(stage)),
            }
        }
    }

    /// Streams the text, dot-stuffed, and the final dot; each block has its own deadline.
    async fn write_text(&mut self, text: &MessageText) -> Result<(), SessionError> {
        let local = |e: io::Error| {
            SessionError::Temporary(format!("cannot read the message text from the spool: {e}"))
        };
        let mut reader = text.open().await.map_err(local)?;
        let mut input = vec![0u8; DATA_BLOCK_BYTES];
        let mut out = Vec::with_capacity(DATA_BLOCK_BYTES + DATA_BLOCK_BYTES / 8);
        let mut stuffer = DotStuffer::default();
        loop {
            let n = reader.read(&mut input).await.map_err(local)?;
            if n == 0 {
                break;
            }
            out.clear();
            stuffer.push(&input[..n], &mut out);
            self.write(&out, Stage::DataBlock).await?;
        }
        out.clear();
        stuffer.finish(&mut out);
        self.write(&out, Stage::DataBlock).await
    }

    /// Sends one message whose client declared `params`. `Err` means the session failed for
    /// every recipient (try another host or later); `Ok` holds one outcome per recipient,
    /// in order.
    pub async fn send(
        &mut self,
        mail_from: &str,
        rcpt_to: &[String],
        text: &MessageText,
        params: MailParams,
    ) -> Result<Vec<RecipientOutcome>, SessionError> {
        let mail = mail_command(&self.caps, mail_from, rcpt_to, text.len(), params).map_err(
            |diagnostic| SessionError::Permanent {
                status: "5.6.7".into(),
                diagnostic: format!("host {} {diagnostic}", self.host),
            },
        )?;
        let rcpts: Vec<String> = rcpt_to
            .iter()
            .map(|r| format!("RCPT TO:<{r}>\r\n"))
            .collect();

        let reused = std::mem::take(&mut self.reused);
        if reused && !self.caps.pipelining {
            self.stale = self.reset().await.is_err();
            if self.stale {
                return Err(SessionError::Temporary(format!(
                    "host {}: the cached session was closed",
                    self.host
                )));
            }
        }
        let (mail_reply, rcpt_replies, data_reply) = if self.caps.pipelining {
            let mut batch = Vec::with_capacity(64 * (rcpts.len() + 2));
            if reused {
                batch.extend_from_slice(b"RSET\r\n");
            }
            batch.extend_from_slice(mail.as_bytes());
            for r in &rcpts {
                batch.extend_from_slice(r.as_bytes());
            }
            batch.extend_from_slice(b"DATA\r\n");
            if reused {
                // Any failure up to the RSET reply means the cached session had gone:
                // the server processed nothing of this transaction.
                let first = match self.write(&batch, Stage::Rset).await {
                    Ok(()) => self.read_reply(Stage::Rset).await,
                    Err(e) => Err(e),
                };
                match first {
                    Ok(reply) if reply.is_positive() => {}
                    Ok(reply) => {
                        self.stale = true;
                        return Err(SessionError::from_reply(&reply, &self.host));
                    }
                    Err(e) => {
                        self.stale = true;
                        return Err(e);
                    }
                }
            } else {
                self.write(&batch, Stage::Mail).await?;
            }
            let mail_reply = self.read_reply(Stage::Mail).await?;
            let mut rcpt_replies = Vec::with_capacity(rcpts.len());
            for _ in &rcpts {
                rcpt_replies.push(self.read_reply(Stage::Rcpt).await?);
            }
            let data_reply = self.read_reply(Stage::Data).await?;
            (mail_reply, rcpt_replies, Some(data_reply))
        } else {
            self.write(mail.as_bytes(), Stage::Mail).await?;
            let mail_reply = self.read_reply(Stage::Mail).await?;
            let mut rcpt_replies = Vec::with_capacity(rcpts.len());
            if mail_reply.is_positive() {
                for r in &rcpts {
                    self.write(r.as_bytes(), Stage::Rcpt).await?;
                    rcpt_replies.push(self.read_reply(Stage::Rcpt).await?);
                }
            }
            (mail_reply, rcpt_replies, None)
        };

        let any_accepted = rcpt_replies.iter().any(Reply::is_positive);
        if !mail_reply.is_positive() || !any_accepted {
            if data_reply.as_ref().is_some_and(|r| r.code == 354) {
                // Pipelined DATA was accepted although nothing can be sent: end it empty.
                self.write(b".\r\n", Stage::DataBlock).await?;
                let _ = self.read_reply(Stage::FinalDot).await?;
            }
            self.reset().await?;
            if !mail_reply.is_positive() {
                return Err(SessionError::from_reply(&mail_reply, &self.host));
            }
            return Ok(rcpt_outcomes(&rcpt_replies, &self.host, None));
        }

        let data_reply = match data_reply {
            Some(r) => r,
            None => {
                self.write(b"DATA\r\n", Stage::Data).await?;
                self.read_reply(Stage::Data).await?
            }
        };
        if data_reply.code != 354 {
            self.reset().await?;
            return Err(SessionError::from_reply(&data_reply, &self.host));
        }
        self.write_text(text).await?;
        let final_reply = self.read_reply(Stage::FinalDot).await?;
        if !final_reply.is_positive() {
            return Err(SessionError::from_reply(&final_reply, &self.host));
        }
        Ok(rcpt_outcomes(&rcpt_replies, &self.host, Some(&final_reply)))
    }

    /// Whether the server sent anything not read yet (buffered here or waiting on the
    /// socket), or closed the connection. Never waits: a session in step has nothing to
    /// say between transactions.
    fn has_unread_input(&mut self) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        let mut probe = [0u8; 1];
        let mut read = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // Ready with data, at end of stream or with an error: not reusable either way.
        !matches!(
            Pin::new(&mut self.stream).poll_read(&mut cx, &mut read),
            Poll::Pending
        )
    }

    /// True when this session, taken from the cache, turned out closed before the
    /// transaction began (see [`SmtpConnection::send`]): the caller may open a new one.
    pub fn is_stale(&self) -> bool {
        self.stale
    }

    /// RSET: forget any transaction; the session is ready for the next message.
    pub async fn reset(&mut self) -> Result<(), SessionError> {
        self.write(b"RSET\r\n", Stage::Rset).await?;
        let reply = self.read_reply(Stage::Rset).await?;
        if reply.is_positive() {
            Ok(())
        } else {
            Err(SessionError::from_reply(&reply, &self.host))
        }
    }

    /// QUIT, best effort.
    pub async fn quit(mut self) {
        if self.write(b"QUIT\r\n", Stage::Quit).await.is_ok() {
            let _ = self.read_reply(Stage::Quit).await;
        }
        let _ = self.stream.shutdown().await;
    }
}

/// The MAIL command (with CRLF) for a message of `size` bytes to `rcpt_to`, given what the
/// host offers: `SIZE=` when it announced SIZE; `SMTPUTF8` when the client declared it, or
/// an address needs it, and the host offers it; `BODY=8BITMIME` when declared and offered
/// (without 8BITMIME the text goes as it is, as Postfix sends it). `Err` with the reason
/// when an address is UTF-8 and the host does not offer SMTPUTF8: the message cannot be
/// delivered there without changing its addresses (RFC 6531 §3.5, status `5.6.7`).
fn mail_command(
    caps: &Capabilities,
    mail_from: &str,
    rcpt_to: &[String],
    size: u64,
    params: MailParams,
) -> Result<String, String> {
    let needs_smtputf8 = !mail_from.is_ascii() || rcpt_to.iter().any(|r| !r.is_ascii());
    if needs_smtputf8 && !caps.smtputf8 {
        return Err(
            "does not offer SMTPUTF8 and the message has a UTF-8 address (SMTPUTF8 required)"
                .into(),
        );
    }
    let mut mail = format!("MAIL FROM:<{mail_from}>");
    if caps.size {
        mail.push_str(&format!(" SIZE={size}"));
    }
    if params.eight_bit_mime && caps.eight_bit_mime {
        mail.push_str(" BODY=8BITMIME");
    }
    if (params.smtputf8 || needs_smtputf8) && caps.smtputf8 {
        mail.push_str(" SMTPUTF8");
    }
    mail.push_str("\r\n");
    Ok(mail)
}

fn rcpt_outcomes(
    replies: &[Reply],
    host: &str,
    final_reply: Option<&Reply>,
) -> Vec<RecipientOutcome> {
    replies
        .iter()
        .map(|r| {
            if r.is_positive() {
                match final_reply {
                    Some(f) => RecipientOutcome::Delivered { reply: f.text() },
                    None => RecipientOutcome::Deferred {
                        reason: "no recipient of the transaction was accepted".into(),
                    },
                }
            } else if r.is_permanent() {
                RecipientOutcome::Failed {
                    status: r.status_or("0.0"),
                    diagnostic: format!("host {host} said: {}", r.text()),
                }
            } else {
                RecipientOutcome::Deferred {
                    reason: format!("host {host} said: {}", r.text()),
                }
            }
        })
        .collect()
}

/// Which sessions may be shared: same host, port and TLS policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// Host name or IP literal.
    pub host: String,
    /// Address connected to.
    pub addr: SocketAddr,
    /// The route's policy.
    pub policy: TlsPolicy,
    /// Digest of the CA file content the session's certificate was checked against: after
    /// a CA rotation, sessions checked against the old roots are not reused.
    pub roots: Option<[u8; 32]>,
    /// The Secret whose credentials authenticated the session (`None`: no AUTH); sessions
    /// of different credentials are never shared.
    pub auth: Option<String>,
}

/// Idle sessions kept for reuse, each for at most `idle` time.
pub struct ConnectionCache {
    idle: Mutex<HashMap<CacheKey, Vec<(SmtpConnection, SystemTime)>>>,
    max_idle: Duration,
    clock: Arc<dyn Clock>,
}

impl ConnectionCache {
    /// A cache keeping idle sessions for `max_idle`.
    pub fn new(max_idle: Duration, clock: Arc<dyn Clock>) -> Self {
        Self {
            idle: Mutex::new(HashMap::new()),
            max_idle,
            clock,
        }
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<CacheKey, Vec<(SmtpConnection, SystemTime)>>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A cached session for `key` (its next transaction starts with RSET, see
    /// [`SmtpConnection::send`]), or a new one.
    pub async fn checkout(
        &self,
        key: &CacheKey,
        params: &SessionParams,
    ) -> Result<SmtpConnection, SessionError> {
        let cached = {
            let now = self.clock.now();
            let mut idle = self.lock();
            let list = idle.entry(key.clone()).or_default();
            let mut found = None;
            while let Some((mut conn, since)) = list.pop() {
                if !fresh(since, now, self.max_idle) {
                    continue;
                }
                // Something arrived while it sat idle (a late reply line, a `421` before
                // the server closed): its next replies would be out of step.
                if conn.has_unread_input() {
                    tracing::info!(host = %conn.host, "cached session not reused: the server sent something unasked while idle, or closed it");
                    continue;
                }
                found = Some(conn);
                break;
            }
            found
        };
        match cached {
            Some(mut conn) => {
                conn.reused = true;
                conn.stale = false;
                Ok(conn)
            }
            None => SmtpConnection::open(params).await,
        }
    }

    /// Returns a session that finished a transaction cleanly. One with unread input is
    /// closed instead (see the module doc).
    pub fn checkin(&self, key: CacheKey, mut conn: SmtpConnection) {
        if self.max_idle.is_zero() {
            return;
        }
        if conn.has_unread_input() {
            tracing::warn!(host = %conn.host, "session closed, not cached: the server sent more replies than it was asked for");
            return;
        }
        let now = self.clock.now();
        self.lock().entry(key).or_default().push((conn, now));
    }

    /// Closes sessions idle for longer than the limit.
    pub fn sweep(&self) {
        let now = self.clock.now();
        let mut idle = self.lock();
        for list in idle.values_mut() {
            list.retain(|(_, since)| fresh(*since, now, self.max_idle));
        }
        idle.retain(|_, list| !list.is_empty());
    }

    /// Number of idle sessions held.
    pub fn idle_count(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }
}

fn fresh(since: SystemTime, now: SystemTime, max_idle: Duration) -> bool {
    now.duration_since(since)
        .map(|d| d < max_idle)
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiline_reply_parses_with_enhanced_status() {
        let buf = b"250-mx.test hello\r\n250-PIPELINING\r\n250 STARTTLS\r\nextra";
        let (reply, used) = parse_reply(buf).unwrap().unwrap();
        assert_eq!(reply.code, 250);
        assert_eq!(reply.lines, ["mx.test hello", "PIPELINING", "STARTTLS"]);
        assert_eq!(used, buf.len() - 5);
        let caps = Capabilities::from_ehlo(&reply);
        assert!(caps.pipelining && caps.starttls && !caps.size);

        let (r, _) = parse_reply(b"550 5.1.1 no such user\r\n").unwrap().unwrap();
        assert_eq!(r.enhanced_status().as_deref(), Some("5.1.1"));
        assert_eq!(r.text(), "550 5.1.1 no such user");
        let (r, _) = parse_reply(b"451 try later\r\n").unwrap().unwrap();
        assert_eq!(r.enhanced_status(), None);
        assert_eq!(r.status_or("0.0"), "4.0.0");
    }

    #[test]
    fn the_mail_line_carries_what_was_declared_and_is_offered() {
        let (reply, _) = parse_reply(
            b"250-mx.test\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 PIPELINING\r\n",
        )
        .unwrap()
        .unwrap();
        let all = Capabilities::from_ehlo(&reply);
        assert!(all.smtputf8 && all.eight_bit_mime && all.size);
        let none = Capabilities::default();
        let declared = MailParams {
            smtputf8: true,
            eight_bit_mime: true,
        };
        let ascii = ["b@dest.example".to_string()];
        let utf8 = ["jörg@dest.example".to_string()];
        let mail =
            |caps, from, rcpts: &[String], params| mail_command(caps, from, rcpts, 42, params);
        assert_eq!(
            mail(&all, "a@acme.example", &ascii, declared).as_deref(),
            Ok("MAIL FROM:<a@acme.example> SIZE=42 BODY=8BITMIME SMTPUTF8\r\n")
        );
        assert_eq!(
            mail(&all, "a@acme.example", &ascii, MailParams::default()).as_deref(),
            Ok("MAIL FROM:<a@acme.example> SIZE=42\r\n")
        );
        // Declared but not offered, and every address ASCII: sent without the parameters.
        assert_eq!(
            mail(&none, "a@acme.example", &ascii, declared).as_deref(),
            Ok("MAIL FROM:<a@acme.example>\r\n")
        );
        // A UTF-8 address needs SMTPUTF8: carried when offered, refused when not.
        assert_eq!(
            mail(&all, "a@acme.example", &utf8, declared).as_deref(),
            Ok("MAIL FROM:<a@acme.example> SIZE=42 BODY=8BITMIME SMTPUTF8\r\n")
        );
        assert!(mail(&none, "a@acme.example", &utf8, declared).is_err());
        assert!(mail(&none, "jörg@acme.example", &ascii, declared).is_err());
    }

    #[test]
    fn auth_mechanisms_come_from_ehlo_and_credentials_do_not_debug_print() {
        let reply = Reply {
            code: 250,
            lines: vec![
                "mx.test".into(),
                "AUTH PLAIN login".into(),
                "AUTH=XOAUTH2".into(),
            ],
        };
        assert_eq!(
            Capabilities::from_ehlo(&reply).auth,
            ["PLAIN", "LOGIN", "XOAUTH2"]
        );
        let c = AuthCredentials {
            mechanism: AuthMechanism::Plain,
            username: "user@acme.test".into(),
            secret: "hunter2".into(),
        };
        let printed = format!("{c:?}");
        assert!(
            !printed.contains("hunter2") && !printed.contains("user@"),
            "{printed}"
        );
        // RFC 4616's example: "\0tim\0tanstaaftanstaaf".
        let tim = AuthCredentials {
            mechanism: AuthMechanism::Plain,
            username: "tim".into(),
            secret: "tanstaaftanstaaf".into(),
        };
        assert_eq!(tim.plain_response(), "AHRpbQB0YW5zdGFhZnRhbnN0YWFm");
    }

    #[test]
    fn partial_and_malformed_replies() {
        assert_eq!(parse_reply(b"250-a\r\n250 b").unwrap(), None);
        assert!(parse_reply(b"hello\r\n").is_err());
        assert!(parse_reply(b"250-a\r\n251 b\r\n").is_err());
    }

    #[test]
    fn dot_stuffing_and_terminator() {
        assert_eq!(
            dot_stuff(b"a\r\n.b\r\n..c\r\n"),
            b"a\r\n..b\r\n...c\r\n.\r\n"
        );
        assert_eq!(dot_stuff(b".x"), b"..x\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b".\r\n");
    }

    /// A config written before the stage timeouts existed loads with RFC 5321's values,
    /// and a config that keeps them serializes as before (its hash does not change).
    #[test]
    fn stage_timeouts_default_to_rfc_5321_and_old_configs_keep_their_form() {
        let old = r#"{"retryScheduleSeconds":[60],"maxRetryDelaySeconds":3600,
            "maxQueueLifetimeSeconds":432000,"concurrency":64,"connectTimeoutSeconds":30,
            "connectionIdleSeconds":30}"#;
        let cfg: DeliveryConfig = serde_json::from_str(old).unwrap();
        let t = StageTimeouts::from_config(&cfg);
        let min = |m: u64| Duration::from_secs(m * 60);
        assert_eq!(
            (
                t.greeting,
                t.mail,
                t.rcpt,
                t.data,
                t.data_block,
                t.final_dot
            ),
            (min(5), min(5), min(5), min(2), min(3), min(10))
        );
        assert_eq!((t.connect, t.short), (min(1) / 2, min(1) / 2));
        assert_eq!(cfg.destination_concurrency, 10);
        assert_eq!(cfg.attempt_timeout_seconds, 1800);
        let json = serde_json::to_string(&cfg).unwrap();
        for field in [
            "stageTimeouts",
            "destinationConcurrency",
            "attemptTimeoutSeconds",
        ] {
            assert!(!json.contains(field), "{json}");
        }
        let mut small = cfg.clone();
        small.stage_timeouts.final_dot_seconds = 2;
        let json = serde_json::to_string(&small).unwrap();
        assert!(json.contains(r#""stageTimeouts":{"#), "{json}");
        let back: DeliveryConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(
            StageTimeouts::from_config(&back).final_dot,
            Duration::from_secs(2)
        );
    }

    /// Any split of the text into pieces stuffs exactly like the whole.
    #[test]
    fn dot_stuffing_in_pieces_matches_the_whole() {
        let text: &[u8] = b".a\r\n..b\r\nc.\r\n.\r\nend";
        let whole = dot_stuff(text);
        for size in 1..text.len() {
            let mut out = Vec::new();
            let mut s = DotStuffer::default();
            for piece in text.chunks(size) {
                s.push(piece, &mut out);
            }
            s.finish(&mut out);
            assert_eq!(out, whole, "pieces of {size}");
        }
        let mut out = Vec::new();
        let mut s = DotStuffer::default();
        s.push(b"a\r", &mut out);
        s.push(b"\n", &mut out);
        s.finish(&mut out);
        assert_eq!(out, b"a\r\n.\r\n");
    }
}
