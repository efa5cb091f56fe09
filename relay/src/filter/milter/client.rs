//! The MTA side of one milter filter over TCP: [`MilterClient::check`] shows the filter
//! one message (envelope, headers, body) and returns its [`Outcome`], all within one
//! deadline.
//!
//! The exchange follows Postfix's `milter8.c`: option negotiation once per connection;
//! per message the macros of each stage, then CONNECT and HELO (once per SMTP
//! connection, HELO again when it or TLS changed), MAIL with its ESMTP arguments, one
//! RCPT per recipient, DATA, one HEADER per header field, EOH, the body in chunks of at
//! most 65,535 bytes, EOB. Events the filter declined (`SMFIP_NO*`) are not sent, events
//! it will not answer (`SMFIP_NR_*`) are not waited for, `SMFIR_SKIP` stops that kind of
//! event, `SMFIR_PROGRESS` is read and does not extend the deadline (the deadline is the
//! total per message the organization configured, `timeoutSeconds`).
//!
//! The message text streams from the caller's reader (the spool): it is read once,
//! header field by header field (one field held at a time, at most
//! [`ClientOptions::max_header_field`] bytes) and then in body chunks, so memory does not
//! grow with the message. When the filter decides before the body (or skips it) the rest
//! is not read.
//!
//! The connection is kept for the next message of the same SMTP connection:
//! `SMFIC_ABORT` resets the filter's message state (as Postfix does between
//! transactions). A message from another SMTP connection gets a new filter connection (as
//! in Postfix; libmilter does not take `SMFIC_QUIT_NC` after an ABORT). Any error, a
//! timeout, a decision about the whole SMTP connection (at CONNECT or HELO) or
//! `SMFIR_SHUTDOWN` closes it; the next check connects again. A kept connection that the filter closed while idle (or that
//! holds bytes nobody asked for) is noticed before use and replaced, and a reused
//! connection that fails before the filter said anything is retried once on a new one.
//! A check whose future is dropped midway (cancelled by its caller) leaves its connection
//! marked busy; the next check does not trust it and connects again.
//!
//! Not here: which filters a message passes through, `onUnavailable`, `maxMessageBytes`,
//! metrics and logs (the session's, which calls this), applying the edits
//! ([`super::message::apply`]).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::smtp::Reply;

use super::message::{HeaderField, HeaderTooLong, Line, classify_line};
use super::protocol::{
    Actions, Command, Limits, MAX_BODY_CHUNK, MacroStage, MessageReplies, Negotiated, Outcome,
    ProtocolError, ProtocolFlags, Stage, Step, VERSION, frame_len, parse_optneg,
};

/// Where a filter listens.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MilterEndpoint {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for MilterEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// How a client talks to its filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientOptions {
    /// Longest wait for the TCP connection and option negotiation (within the message's
    /// deadline).
    pub connect_timeout: Duration,
    /// Bounds on what the filter may send.
    pub limits: Limits,
    /// Longest header field (all its lines) shown to the filter; it has to fit one frame
    /// of libmilter's default 65,535 bytes. A longer field makes the message
    /// unfilterable ([`ErrorKind::HeaderTooLong`]).
    pub max_header_field: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            limits: Limits::default(),
            max_header_field: 64_000,
        }
    }
}

/// The SMTP connection a message came in on, as the filter is told at CONNECT.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConnectFacts {
    /// The client's address (after the PROXY protocol); `None` = unknown.
    pub client: Option<SocketAddr>,
    /// The client's verified host name, when known (`{client_name}`).
    pub client_name: Option<String>,
    /// Our host name (`j`).
    pub hostname: String,
    /// Which listener took the message (`{daemon_name}`: `smtp`, `submission`, `smtps`).
    pub daemon_name: String,
}

impl ConnectFacts {
    /// The host name sent at CONNECT: the verified name, else `[address]`, else
    /// `unknown` (Postfix's conversion to the form Sendmail uses).
    fn connect_hostname(&self) -> String {
        match (&self.client_name, &self.client) {
            (Some(name), _) if !name.is_empty() => name.clone(),
            (_, Some(addr)) => format!("[{}]", addr.ip()),
            _ => "unknown".to_string(),
        }
    }
}

/// TLS of the SMTP connection, as Postfix names it (`{tls_version}` `TLSv1.3`,
/// `{cipher}` `TLS_AES_256_GCM_SHA384`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TlsFacts {
    pub version: String,
    pub cipher: String,
}

/// SMTP AUTH of the session (`{auth_authen}`, `{auth_type}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthFacts {
    pub identity: String,
    pub mechanism: String,
}

/// One recipient and its ESMTP arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipient {
    pub address: String,
    pub args: Vec<String>,
}

/// Everything the filter is told about one message besides its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageFacts {
    pub connection: ConnectFacts,
    /// The HELO/EHLO name.
    pub helo: String,
    pub tls: Option<TlsFacts>,
    pub auth: Option<AuthFacts>,
    /// The queue id (`i`).
    pub queue_id: String,
    /// Envelope sender without angle brackets (`""` = null sender).
    pub mail_from: String,
    /// MAIL ESMTP arguments as sent (`SIZE=1234`, `BODY=8BITMIME`, `SMTPUTF8`).
    pub mail_args: Vec<String>,
    /// The recipients the relay accepted.
    pub recipients: Vec<Recipient>,
}

impl MessageFacts {
    /// The value of macro `name`, when we know it.
    fn macro_value(&self, name: &str, rcpt: Option<&Recipient>) -> Option<String> {
        let conn = &self.connection;
        Some(match name {
            "j" | "{j}" => conn.hostname.clone(),
            "{daemon_name}" => conn.daemon_name.clone(),
            "{client_addr}" => conn.client?.ip().to_string(),
            "{client_port}" => conn.client?.port().to_string(),
            "{client_name}" | "{client_ptr}" => conn
                .client_name
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "unknown".to_string()),
            "_" => format!(
                "{} [{}]",
                conn.client_name.as_deref().unwrap_or("unknown"),
                conn.client.map(|a| a.ip().to_string()).unwrap_or_default()
            ),
            "i" | "{i}" => self.queue_id.clone(),
            "{auth_type}" => self.auth.as_ref()?.mechanism.clone(),
            "{auth_authen}" => self.auth.as_ref()?.identity.clone(),
            "{mail_addr}" => self.mail_from.clone(),
            "{rcpt_addr}" => rcpt?.address.clone(),
            "{tls_version}" => self.tls.as_ref()?.version.clone(),
            "{cipher}" => self.tls.as_ref()?.cipher.clone(),
            _ => return None,
        })
    }
}

/// Why a check gave no verdict.
#[derive(Debug, thiserror::Error)]
#[error("content filter {endpoint}: {kind} (during {stage})")]
pub struct FilterError {
    pub endpoint: String,
    pub stage: Stage,
    pub kind: ErrorKind,
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    #[error("no verdict before the deadline")]
    Timeout,
    #[error("connection failed: {0}")]
    Io(io::Error),
    #[error("the filter closed the connection")]
    Closed,
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// Reading the message text failed (the spool's problem, not the filter's).
    #[error("cannot read the message text: {0}")]
    MessageText(io::Error),
    /// A header field too long to show the filter.
    #[error(transparent)]
    HeaderTooLong(#[from] HeaderTooLong),
}

impl FilterError {
    /// The filter could not be consulted: the organization's `onUnavailable` applies
    /// (`451 4.7.1`, or accept and count it). A protocol error counts here: a filter
    /// that speaks garbage is unavailable, never accepting.
    pub fn filter_unavailable(&self) -> bool {
        !matches!(
            self.kind,
            ErrorKind::MessageText(_) | ErrorKind::HeaderTooLong(_)
        )
    }

    /// The reply for failures that are not the filter's, where `onUnavailable` must not
    /// apply: a spool read error is ours (`451 4.3.0`); a message the filter cannot be
    /// shown is refused (`554 5.6.0`) — letting `Accept` deliver it would let anyone skip
    /// the filter with one oversized header. `None` for an unavailable filter.
    pub fn local_reply(&self) -> Option<Reply> {
        match self.kind {
            ErrorKind::MessageText(_) => Some(Reply::new(
                451,
                "4.3.0 Cannot read the message for content filtering, try again later",
            )),
            ErrorKind::HeaderTooLong(_) => Some(Reply::new(
                554,
                "5.6.0 Message header too long for content filtering",
            )),
            _ => None,
        }
    }
}

/// A client of one filter, holding at most one connection to it.
pub struct MilterClient {
    endpoint: MilterEndpoint,
    options: ClientOptions,
    conn: Option<Connection>,
    stage: Stage,
    /// The filter sent something during the current check.
    heard: bool,
}

/// What a `MilterClient` did, for its error values.
type Failure = (Stage, ErrorKind);

struct Connection {
    stream: TcpStream,
    negotiated: Negotiated,
    /// The SMTP connection this filter connection was told about.
    announced: Option<ConnectFacts>,
    /// HELO name and TLS last sent.
    helo: Option<(String, Option<TlsFacts>)>,
    /// MAIL was sent since the last reset.
    in_message: bool,
    /// An exchange is under way; still set when a check starts, the last one was
    /// cancelled midway (its caller dropped it) and replies may be in flight.
    busy: bool,
    out: Vec<u8>,
}

impl MilterClient {
    /// A client that connects when first used.
    pub fn new(endpoint: MilterEndpoint, options: ClientOptions) -> Self {
        Self {
            endpoint,
            options,
            conn: None,
            stage: Stage::Connecting,
            heard: false,
        }
    }

    /// A client connected now, with options negotiated (to probe a filter's
    /// reachability, or to fail early).
    pub async fn connect(
        endpoint: MilterEndpoint,
        options: ClientOptions,
        deadline: Instant,
    ) -> Result<Self, FilterError> {
        let mut client = Self::new(endpoint, options);
        match tokio::time::timeout_at(deadline, client.ensure_connection()).await {
            Ok(Ok(())) => Ok(client),
            Ok(Err((stage, kind))) => Err(client.error(stage, kind)),
            Err(_) => Err(client.error(client.stage, ErrorKind::Timeout)),
        }
    }

    pub fn endpoint(&self) -> &MilterEndpoint {
        &self.endpoint
    }

    /// What the filter negotiated on the open connection, if any.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.conn.as_ref().map(|c| &c.negotiated)
    }

    /// Shows the filter one message and returns its verdict and modifications.
    /// `text` is the message as spooled (header block, empty line, body; CRLF line ends;
    /// dot-unstuffed). Everything, connecting included, happens before `deadline`.
    pub async fn check<R: AsyncRead + Unpin>(
        &mut self,
        facts: &MessageFacts,
        text: R,
        deadline: Instant,
    ) -> Result<Outcome, FilterError> {
        let mut text = BufReader::with_capacity(64 * 1024, text);
        let mut text_touched = false;
        let mut retried = false;
        loop {
            let reused = self.conn.is_some();
            self.heard = false;
            let run = self.exchange(facts, &mut text, &mut text_touched);
            let result = tokio::time::timeout_at(deadline, run).await;
            let (stage, kind) = match result {
                Ok(Ok((outcome, keep))) => {
                    if !keep {
                        self.conn = None;
                    }
                    return Ok(outcome);
                }
                Ok(Err(failure)) => failure,
                Err(_) => (self.stage, ErrorKind::Timeout),
            };
            self.conn = None;
            let lost = matches!(kind, ErrorKind::Io(_) | ErrorKind::Closed);
            if lost && reused && !self.heard && !text_touched && !retried {
                // The filter dropped a connection we kept; one fresh attempt.
                retried = true;
                continue;
            }
            return Err(self.error(stage, kind));
        }
    }

    /// Says goodbye (`SMFIC_QUIT`) and closes the connection, waiting at most a second.
    pub async fn quit(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            conn.out.clear();
            Command::Quit.encode(&mut conn.out);
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.stream.write_all(&conn.out))
                .await;
        }
    }

    fn error(&self, stage: Stage, kind: ErrorKind) -> FilterError {
        FilterError {
            endpoint: self.endpoint.to_string(),
            stage,
            kind,
        }
    }

    /// Opens a connection unless a usable one is kept.
    async fn ensure_connection(&mut self) -> Result<(), Failure> {
        if let Some(conn) = &self.conn
            && (conn.busy || !conn.idle_and_open())
        {
            self.conn = None;
        }
        if self.conn.is_none() {
            self.conn = Some(self.open().await?);
        }
        Ok(())
    }

    async fn open(&mut self) -> Result<Connection, Failure> {
        self.stage = Stage::Connecting;
        let connect = TcpStream::connect((self.endpoint.host.as_str(), self.endpoint.port));
        let stream = match tokio::time::timeout(self.options.connect_timeout, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err((Stage::Connecting, ErrorKind::Connect(e))),
            Err(_) => {
                let e = io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
                return Err((Stage::Connecting, ErrorKind::Connect(e)));
            }
        };
        let _ = stream.set_nodelay(true);
        self.stage = Stage::Negotiating;
        let mut conn = Connection {
            stream,
            negotiated: Negotiated::default(),
            announced: None,
            helo: None,
            in_message: false,
            busy: false,
            out: Vec::with_capacity(MAX_BODY_CHUNK + 16),
        };
        Command::OptNeg {
            version: VERSION,
            actions: Actions::OFFERED,
            protocol: ProtocolFlags::OFFERED,
        }
        .encode(&mut conn.out);
        let negotiate = async {
            conn.flush().await?;
            let frame = conn.read_frame(self.options.limits.max_frame).await?;
            parse_optneg(&frame).map_err(ErrorKind::Protocol)
        };
        match tokio::time::timeout(self.options.connect_timeout, negotiate).await {
            Ok(Ok(negotiated)) => conn.negotiated = negotiated,
            Ok(Err(kind)) => return Err((Stage::Negotiating, kind)),
            Err(_) => return Err((Stage::Negotiating, ErrorKind::Timeout)),
        }
        Ok(conn)
    }

    /// One message's exchange; the outcome and whether the connection may be kept.
    async fn exchange<R: AsyncRead + Unpin>(
        &mut self,
        facts: &MessageFacts,
        text: &mut BufReader<R>,
        text_touched: &mut bool,
    ) -> Result<(Outcome, bool), Failure> {
        // One filter connection serves one SMTP connection, as in Postfix: a message from
        // another gets a new one. (`SMFIC_QUIT_NC` would reuse it, but libmilter takes it
        // only right after end of message, not after the ABORT we reset with, and then
        // silently ignores it and the CONNECT that follows: clamav-milter 1.4.6 hung.)
        let other_smtp = self.conn.as_ref().is_some_and(|c| {
            c.announced
                .as_ref()
                .is_some_and(|announced| announced != &facts.connection)
        });
        if other_smtp {
            self.quit().await;
        }
        self.ensure_connection().await?;
        self.stage = Stage::Reset;
        let Some(conn) = self.conn.as_mut() else {
            return Err((Stage::Connecting, ErrorKind::Closed));
        };
        conn.busy = true;
        // Reset the filter's message state (Postfix sends ABORT after every transaction;
        // libmilter ignores it after a completed message).
        if conn.in_message {
            conn.out.clear();
            Command::Abort.encode(&mut conn.out);
            conn.in_message = false;
            conn.flush().await.map_err(|k| (Stage::Reset, k))?;
        }
        let mut replies = MessageReplies::new(&conn.negotiated, self.options.limits.clone());
        let mut run = Run {
            conn,
            replies: &mut replies,
            facts,
            stage: &mut self.stage,
            heard: &mut self.heard,
            max_frame: self.options.limits.max_frame,
        };
        let decided = run
            .message(text, text_touched, self.options.max_header_field)
            .await?;
        let closing = replies.filter_closing();
        let outcome = match decided {
            Some(outcome) => outcome,
            None => replies.finish(Stage::EndOfBody),
        };
        let keep = !outcome.decided_at.is_connection_level() && !closing;
        if let Some(conn) = self.conn.as_mut() {
            conn.busy = false;
        }
        Ok((outcome, keep))
    }
}

/// One message's exchange over a connection.
struct Run<'a> {
    conn: &'a mut Connection,
    replies: &'a mut MessageReplies,
    facts: &'a MessageFacts,
    stage: &'a mut Stage,
    heard: &'a mut bool,
    max_frame: usize,
}

impl Run<'_> {
    /// Sends the message's events; `Some` when the filter decided.
    async fn message<R: AsyncRead + Unpin>(
        &mut self,
        text: &mut BufReader<R>,
        text_touched: &mut bool,
        max_header_field: usize,
    ) -> Result<Option<Outcome>, Failure> {
        let facts = self.facts;
        if self.conn.announced.is_none() {
            let hostname = facts.connection.connect_hostname();
            let connect = Command::Connect {
                hostname: &hostname,
                client: facts.connection.client,
            };
            let step = self
                .event(Stage::Connect, Some(MacroStage::Connect), None, connect)
                .await?;
            self.conn.announced = Some(facts.connection.clone());
            if let Step::Decided(o) = step {
                return Ok(Some(o));
            }
        }
        let helo = (facts.helo.clone(), facts.tls.clone());
        if self.conn.helo.as_ref() != Some(&helo) {
            let step = self
                .event(
                    Stage::Helo,
                    Some(MacroStage::Helo),
                    None,
                    Command::Helo(&facts.helo),
                )
                .await?;
            self.conn.helo = Some(helo);
            if let Step::Decided(o) = step {
                return Ok(Some(o));
            }
        }
        self.conn.in_message = true;
        let mail = Command::Mail {
            sender: &facts.mail_from,
            args: &facts.mail_args,
        };
        if let Step::Decided(o) = self
            .event(Stage::Mail, Some(MacroStage::Mail), None, mail)
            .await?
        {
            return Ok(Some(o));
        }
        for rcpt in &facts.recipients {
            let command = Command::Rcpt {
                recipient: &rcpt.address,
                args: &rcpt.args,
            };
            match self
                .event(Stage::Rcpt, Some(MacroStage::Rcpt), Some(rcpt), command)
                .await?
            {
                Step::Decided(o) => return Ok(Some(o)),
                Step::Skip => break,
                Step::Continue | Step::Wait => {}
            }
        }
        if let Step::Decided(o) = self
            .event(Stage::Data, Some(MacroStage::Data), None, Command::Data)
            .await?
        {
            return Ok(Some(o));
        }

        // Headers, one field at a time.
        *text_touched = true;
        let leading_space = self.conn.negotiated.leading_space();
        let mut send_headers = true;
        let mut field: Vec<u8> = Vec::new();
        let mut line: Vec<u8> = Vec::new();
        let mut body_start: Vec<u8> = Vec::new();
        let mut has_body = true;
        loop {
            *self.stage = Stage::Header;
            let first = text
                .fill_buf()
                .await
                .map_err(text_error(Stage::Header))?
                .first()
                .copied();
            let Some(first) = first else {
                has_body = false;
                break;
            };
            if !field.is_empty() && (first == b' ' || first == b'\t') {
                read_line(text, &mut field, max_header_field).await?;
                continue;
            }
            if !field.is_empty() {
                if send_headers {
                    match self.header(&field, leading_space).await? {
                        Step::Decided(o) => return Ok(Some(o)),
                        Step::Skip => send_headers = false,
                        Step::Continue | Step::Wait => {}
                    }
                }
                field.clear();
            }
            line.clear();
            read_line(text, &mut line, max_header_field).await?;
            match classify_line(&line, false) {
                Line::Field => std::mem::swap(&mut field, &mut line),
                Line::Blank => break,
                Line::Body | Line::Continuation => {
                    std::mem::swap(&mut body_start, &mut line);
                    break;
                }
            }
        }
        if !field.is_empty()
            && send_headers
            && let Step::Decided(o) = self.header(&field, leading_space).await?
        {
            return Ok(Some(o));
        }
        drop(field);
        drop(line);
        if let Step::Decided(o) = self
            .event(
                Stage::EndOfHeaders,
                Some(MacroStage::EndOfHeaders),
                None,
                Command::EndOfHeaders,
            )
            .await?
        {
            return Ok(Some(o));
        }

        // Body, in chunks.
        if self.conn.negotiated.sends(Stage::Body) {
            let mut chunk = body_start;
            chunk.reserve(MAX_BODY_CHUNK.saturating_sub(chunk.len()));
            let mut more = has_body;
            loop {
                *self.stage = Stage::Body;
                while more && chunk.len() < MAX_BODY_CHUNK {
                    let buf = text.fill_buf().await.map_err(text_error(Stage::Body))?;
                    if buf.is_empty() {
                        more = false;
                        break;
                    }
                    let take = buf.len().min(MAX_BODY_CHUNK - chunk.len());
                    chunk.extend_from_slice(buf.get(..take).unwrap_or(&[]));
                    text.consume(take);
                }
                if chunk.is_empty() {
                    break;
                }
                // A first line longer than a chunk (only possible without a blank line)
                // goes out in pieces.
                let split = chunk.len().min(MAX_BODY_CHUNK);
                let piece = chunk.get(..split).unwrap_or(&[]);
                let step = self
                    .event(Stage::Body, None, None, Command::Body(piece))
                    .await?;
                chunk.drain(..split);
                match step {
                    Step::Decided(o) => return Ok(Some(o)),
                    Step::Skip => break,
                    Step::Continue | Step::Wait => {}
                }
            }
        }
        match self
            .event(
                Stage::EndOfBody,
                Some(MacroStage::EndOfMessage),
                None,
                Command::EndOfBody,
            )
            .await?
        {
            Step::Decided(o) => Ok(Some(o)),
            _ => Ok(None),
        }
    }

    async fn header(&mut self, raw: &[u8], leading_space: bool) -> Result<Step, Failure> {
        let Some(field) = HeaderField::from_raw(raw) else {
            return Ok(Step::Continue);
        };
        let value = field.milter_value(leading_space);
        let command = Command::Header {
            name: field.name.as_bytes(),
            value: &value,
        };
        self.event(Stage::Header, None, None, command).await
    }

    /// Sends one event (after its macros) and reads the filter's replies to it, unless it
    /// declined the event or said it will not reply.
    async fn event(
        &mut self,
        stage: Stage,
        macros: Option<MacroStage>,
        rcpt: Option<&Recipient>,
        command: Command<'_>,
    ) -> Result<Step, Failure> {
        *self.stage = stage;
        let negotiated = &self.conn.negotiated;
        self.conn.out.clear();
        if let Some(macro_stage) = macros {
            let values: Vec<(&str, String)> = negotiated
                .macro_names(macro_stage)
                .into_iter()
                .filter_map(|name| Some((name, self.facts.macro_value(name, rcpt)?)))
                .collect();
            if !values.is_empty() {
                Command::Macro {
                    stage: macro_stage,
                    macros: &values,
                }
                .encode(&mut self.conn.out);
            }
        }
        let send = negotiated.sends(stage);
        let reply = send && negotiated.expects_reply(stage);
        if send {
            command.encode(&mut self.conn.out);
        }
        if !self.conn.out.is_empty() {
            self.conn.flush().await.map_err(|k| (stage, k))?;
        }
        if !reply {
            return Ok(Step::Continue);
        }
        loop {
            let frame = self
                .conn
                .read_frame(self.max_frame)
                .await
                .map_err(|k| (stage, k))?;
            *self.heard = true;
            match self.replies.on_reply(stage, &frame) {
                Ok(Step::Wait) => continue,
                Ok(step) => return Ok(step),
                Err(e) => return Err((stage, ErrorKind::Protocol(e))),
            }
        }
    }
}

impl Connection {
    async fn flush(&mut self) -> Result<(), ErrorKind> {
        self.stream.write_all(&self.out).await.map_err(io_error)?;
        self.out.clear();
        Ok(())
    }

    /// One reply frame (code byte and data), its length checked before it is read.
    async fn read_frame(&mut self, max: usize) -> Result<Vec<u8>, ErrorKind> {
        let mut header = [0u8; 4];
        self.stream
            .read_exact(&mut header)
            .await
            .map_err(io_error)?;
        let len = frame_len(header, max)?;
        let mut frame = vec![0; len];
        self.stream.read_exact(&mut frame).await.map_err(io_error)?;
        Ok(frame)
    }

    /// The filter has neither closed the connection nor sent anything since our last
    /// exchange (a stray reply would be taken as the answer to our next event).
    fn idle_and_open(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

fn io_error(e: io::Error) -> ErrorKind {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        ErrorKind::Closed
    } else {
        ErrorKind::Io(e)
    }
}

fn text_error(stage: Stage) -> impl Fn(io::Error) -> Failure {
    move |e| (stage, ErrorKind::MessageText(e))
}

/// Appends one line (through its LF, or to the end of the text) to `buf`, refusing to let
/// `buf` grow past `limit`.
async fn read_line<R: AsyncBufRead + Unpin>(
    text: &mut R,
    buf: &mut Vec<u8>,
    limit: usize,
) -> Result<(), Failure> {
    loop {
        let available = text.fill_buf().await.map_err(text_error(Stage::Header))?;
        if available.is_empty() {
            return Ok(());
        }
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        if buf.len() + take > limit {
            return Err((
                Stage::Header,
                ErrorKind::HeaderTooLong(HeaderTooLong { limit }),
            ));
        }
        buf.extend_from_slice(available.get(..take).unwrap_or(&[]));
        text.consume(take);
        if done {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use proptest::prelude::*;
    use tokio::io::ReadBuf;

    use super::super::fake::{Answer, FakeMilter, Received, Script, at_eob, framed, optneg, reply};
    use super::super::message::{apply, parse_header_block};
    use super::super::protocol::{Edit, Verdict, default_reject, default_tempfail};
    use super::*;
    use crate::envelope::{Envelope, QueueId};

    const ALL: u32 = Actions::OFFERED.0;
    /// What rspamd's proxy worker asks for: no reply to anything but end of body.
    const NO_REPLIES: u32 = 0xff000 | ProtocolFlags::NR_HEADER.0;

    fn facts() -> MessageFacts {
        MessageFacts {
            connection: ConnectFacts {
                client: Some("192.0.2.10:40000".parse().unwrap()),
                client_name: None,
                hostname: "relay.acme.example".into(),
                daemon_name: "smtp".into(),
            },
            helo: "app.acme.example".into(),
            tls: Some(TlsFacts {
                version: "TLSv1.3".into(),
                cipher: "TLS_AES_256_GCM_SHA384".into(),
            }),
            auth: Some(AuthFacts {
                identity: "app@acme.example".into(),
                mechanism: "PLAIN".into(),
            }),
            queue_id: QUEUE_ID.into(),
            mail_from: "app@acme.example".into(),
            mail_args: vec!["SIZE=100".into(), "BODY=8BITMIME".into()],
            recipients: vec![
                Recipient {
                    address: "b@dest.example".into(),
                    args: vec![],
                },
                Recipient {
                    address: "c@dest.example".into(),
                    args: vec!["NOTIFY=NEVER".into()],
                },
            ],
        }
    }

    const TEXT: &[u8] =
        b"Subject: hi\r\nFrom: App <app@acme.example>\r\n\tcontinued\r\n\r\nbody line\r\n.dot\r\n";

    const QUEUE_ID: &str = "00060F1E2D3C4B5A";

    /// NUL-terminated strings, as in a macro frame.
    fn nul(parts: &[&str]) -> Vec<u8> {
        parts
            .iter()
            .flat_map(|p| [p.as_bytes(), b"\0"].concat())
            .collect()
    }

    fn soon(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    async fn fake(protocol: u32, script: Script) -> FakeMilter {
        FakeMilter::start(optneg(6, ALL, protocol, &[]), script).await
    }

    async fn check_once(fake: &FakeMilter, text: &[u8]) -> Result<Outcome, FilterError> {
        let mut client = MilterClient::new(fake.endpoint(), ClientOptions::default());
        client.check(&facts(), text, soon(5_000)).await
    }

    async fn verdict_at_eob(eob: Vec<Vec<u8>>) -> Verdict {
        let fake = fake(0, at_eob(eob)).await;
        check_once(&fake, TEXT).await.unwrap().verdict
    }

    fn of(fake: &FakeMilter, code: u8) -> Vec<Vec<u8>> {
        fake.received()
            .into_iter()
            .filter(|r| r.code == code)
            .map(|r| r.data)
            .collect()
    }

    fn macros(fake: &FakeMilter, stage: u8) -> Vec<Vec<u8>> {
        of(fake, b'D')
            .into_iter()
            .filter(|d| d.first() == Some(&stage))
            .map(|d| d[1..].to_vec())
            .collect()
    }

    #[tokio::test]
    async fn a_clean_message_goes_through_every_stage_in_postfix_order_with_its_macros() {
        let fake = fake(
            0,
            at_eob(vec![
                reply(b'h', b"X-Spam-Status\0No, score=0.1\0"),
                b"c".to_vec(),
            ]),
        )
        .await;
        let outcome = check_once(&fake, TEXT).await.unwrap();
        assert_eq!(outcome.verdict, Verdict::Accept);
        assert_eq!(outcome.decided_at, Stage::EndOfBody);
        assert_eq!(
            outcome.modifications.edits,
            [Edit::AddHeader {
                name: "X-Spam-Status".into(),
                value: b" No, score=0.1".to_vec()
            }]
        );
        assert_eq!(fake.codes(), "ODCDHDMDRDRDTLLDNBDE");
        assert_eq!(
            of(&fake, b'C'),
            [b"[192.0.2.10]\x004\x9c\x40192.0.2.10\x00".to_vec()]
        );
        assert_eq!(of(&fake, b'H'), [b"app.acme.example\0".to_vec()]);
        assert_eq!(
            of(&fake, b'M'),
            [b"<app@acme.example>\0SIZE=100\0BODY=8BITMIME\0".to_vec()]
        );
        assert_eq!(
            of(&fake, b'R'),
            [
                b"<b@dest.example>\0".to_vec(),
                b"<c@dest.example>\0NOTIFY=NEVER\0".to_vec()
            ]
        );
        assert_eq!(
            of(&fake, b'L'),
            [
                b"Subject\0hi\0".to_vec(),
                b"From\0App <app@acme.example>\n\tcontinued\0".to_vec()
            ]
        );
        assert_eq!(of(&fake, b'B'), [b"body line\r\n.dot\r\n".to_vec()]);
        assert_eq!(
            macros(&fake, b'C'),
            [nul(&[
                "j",
                "relay.acme.example",
                "{daemon_name}",
                "smtp",
                "{client_addr}",
                "192.0.2.10",
                "{client_port}",
                "40000",
                "{client_name}",
                "unknown"
            ])]
        );
        assert_eq!(
            macros(&fake, b'H'),
            [b"{tls_version}\0TLSv1.3\0{cipher}\0TLS_AES_256_GCM_SHA384\0".to_vec()]
        );
        assert_eq!(
            macros(&fake, b'M'),
            [nul(&[
                "i",
                QUEUE_ID,
                "{auth_type}",
                "PLAIN",
                "{auth_authen}",
                "app@acme.example",
                "{mail_addr}",
                "app@acme.example"
            ])]
        );
        assert_eq!(
            macros(&fake, b'R'),
            [
                nul(&["i", QUEUE_ID, "{rcpt_addr}", "b@dest.example"]),
                nul(&["i", QUEUE_ID, "{rcpt_addr}", "c@dest.example"])
            ]
        );
        for stage in [b'T', b'N', b'E'] {
            assert_eq!(macros(&fake, stage), [nul(&["i", QUEUE_ID])]);
        }
    }

    #[tokio::test]
    async fn every_final_reply_becomes_its_verdict() {
        assert_eq!(
            verdict_at_eob(vec![reply(b'y', b"554 5.7.1 Gtube pattern\0")]).await,
            Verdict::Reject(Reply::new(554, "5.7.1 Gtube pattern"))
        );
        assert_eq!(
            verdict_at_eob(vec![b"r".to_vec()]).await,
            Verdict::Reject(default_reject())
        );
        assert_eq!(
            verdict_at_eob(vec![b"t".to_vec()]).await,
            Verdict::Tempfail(default_tempfail())
        );
        assert_eq!(
            verdict_at_eob(vec![reply(b'y', b"452 4.3.1 Scanner busy\0")]).await,
            Verdict::Tempfail(Reply::new(452, "4.3.1 Scanner busy"))
        );
        assert_eq!(verdict_at_eob(vec![b"d".to_vec()]).await, Verdict::Discard);
        assert_eq!(verdict_at_eob(vec![b"a".to_vec()]).await, Verdict::Accept);
        assert_eq!(
            verdict_at_eob(vec![
                b"p".to_vec(),
                reply(b'q', b"Virus found\0"),
                b"a".to_vec()
            ])
            .await,
            Verdict::Quarantine {
                reason: "Virus found".into()
            }
        );
    }

    #[tokio::test]
    async fn header_edits_apply_to_the_block_the_filter_was_shown() {
        let fake = fake(
            0,
            at_eob(vec![
                reply(b'h', b"X-Virus-Scanned\0ClamAV\0"),
                reply(
                    b'i',
                    b"\0\0\0\0DKIM-Signature\0v=1; a=rsa-sha256;\n\tb=xyz\0",
                ),
                reply(b'm', b"\0\0\0\x01Subject\0[SPAM] hi\0"),
                reply(b'm', b"\0\0\0\x01From\0\0"),
                b"c".to_vec(),
            ]),
        )
        .await;
        let outcome = check_once(&fake, TEXT).await.unwrap();
        let (mut headers, body_at) = parse_header_block(TEXT, 64_000).unwrap();
        let mut env = Envelope::generated(
            QueueId(1),
            "app@acme.example",
            &[],
            std::time::SystemTime::UNIX_EPOCH,
            0,
        );
        apply(&outcome.modifications, &mut headers, &mut env);
        let mut delivered = Vec::new();
        super::super::write_header_block(&headers, &mut delivered);
        delivered.extend_from_slice(&TEXT[body_at..]);
        assert_eq!(
            String::from_utf8(delivered).unwrap(),
            "DKIM-Signature: v=1; a=rsa-sha256;\r\n\tb=xyz\r\nSubject: [SPAM] hi\r\nX-Virus-Scanned: ClamAV\r\n\r\nbody line\r\n.dot\r\n"
        );
    }

    #[tokio::test]
    async fn recipient_and_sender_edits_apply_to_the_envelope() {
        let fake = fake(
            0,
            at_eob(vec![
                reply(b'+', b"<archive@acme.example>\0"),
                reply(b'2', b"<legal@acme.example>\0NOTIFY=NEVER\0"),
                reply(b'-', b"<c@dest.example>\0"),
                reply(b'e', b"<bounces@acme.example>\0"),
                b"a".to_vec(),
            ]),
        )
        .await;
        let outcome = check_once(&fake, TEXT).await.unwrap();
        assert_eq!(outcome.verdict, Verdict::Accept);
        let rcpts = vec!["b@dest.example".to_string(), "c@dest.example".to_string()];
        let mut env = Envelope::generated(
            QueueId(1),
            "app@acme.example",
            &rcpts,
            std::time::SystemTime::UNIX_EPOCH,
            0,
        );
        apply(&outcome.modifications, &mut Vec::new(), &mut env);
        assert_eq!(
            env.rcpts,
            [
                "b@dest.example",
                "archive@acme.example",
                "legal@acme.example"
            ]
        );
        assert_eq!(env.mail_from, "bounces@acme.example");
    }

    fn message_with_body(len: usize) -> (Vec<u8>, Vec<u8>) {
        let line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n";
        let body: Vec<u8> = line.iter().copied().cycle().take(len).collect();
        let mut text = b"Subject: big\r\n\r\n".to_vec();
        text.extend_from_slice(&body);
        (text, body)
    }

    #[tokio::test]
    async fn the_body_goes_in_chunks_of_at_most_65535_bytes() {
        let fake = fake(0, at_eob(vec![b"c".to_vec()])).await;
        let (text, body) = message_with_body(200_000);
        check_once(&fake, &text).await.unwrap();
        let chunks = of(&fake, b'B');
        assert_eq!(chunks.len(), 4);
        assert!(chunks.iter().all(|c| c.len() <= MAX_BODY_CHUNK));
        assert_eq!(chunks.concat(), body);
    }

    #[tokio::test]
    async fn skip_stops_the_body_and_goes_to_end_of_body() {
        let script: Script = Box::new(|r: &Received| match r.code {
            b'B' => Answer::Reply(vec![b"s".to_vec()]),
            b'E' => Answer::Reply(vec![b"c".to_vec()]),
            _ => Answer::Reply(vec![b"c".to_vec()]),
        });
        let fake = fake(ProtocolFlags::SKIP.0, script).await;
        let (text, _) = message_with_body(200_000);
        let outcome = check_once(&fake, &text).await.unwrap();
        assert_eq!(outcome.verdict, Verdict::Accept);
        assert_eq!(of(&fake, b'B').len(), 1);
        assert!(fake.codes().ends_with("BDE"), "{}", fake.codes());
    }

    #[tokio::test]
    async fn events_the_filter_declined_or_will_not_answer_are_handled_as_it_asked() {
        // rspamd's choice: every event but end of body unanswered.
        let script: Script = Box::new(|r: &Received| match r.code {
            b'E' => Answer::Reply(vec![reply(b'y', b"554 5.7.1 Gtube pattern\0")]),
            _ => Answer::Silent,
        });
        let fake = fake(NO_REPLIES, script).await;
        let outcome = check_once(&fake, TEXT).await.unwrap();
        assert_eq!(
            outcome.verdict,
            Verdict::Reject(Reply::new(554, "5.7.1 Gtube pattern"))
        );
        assert_eq!(fake.codes(), "ODCDHDMDRDRDTLLDNBDE");

        // No headers, no body wanted: neither is sent; EOH and EOB still are.
        let no_content =
            ProtocolFlags::NO_HEADERS.0 | ProtocolFlags::NO_BODY.0 | ProtocolFlags::NO_DATA.0;
        let fake = self::fake(no_content, at_eob(vec![b"c".to_vec()])).await;
        check_once(&fake, TEXT).await.unwrap();
        assert_eq!(fake.codes(), "ODCDHDMDRDRDDNDE");
    }

    #[tokio::test]
    async fn a_decision_before_the_body_ends_the_message_without_reading_it() {
        struct Unreadable;
        impl AsyncRead for Unreadable {
            fn poll_read(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                _: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                Poll::Ready(Err(io::Error::other("spool gone")))
            }
        }
        let script: Script = Box::new(|r: &Received| match r.code {
            b'R' => Answer::Reply(vec![b"a".to_vec()]),
            _ => Answer::Reply(vec![b"c".to_vec()]),
        });
        let fake = fake(0, script).await;
        let mut client = MilterClient::new(fake.endpoint(), ClientOptions::default());
        let outcome = client
            .check(&facts(), Unreadable, soon(5_000))
            .await
            .unwrap();
        assert_eq!(outcome.verdict, Verdict::Accept);
        assert_eq!(outcome.decided_at, Stage::Rcpt);
        assert_eq!(fake.codes(), "ODCDHDMDR");

        // Reading it fails: the spool's problem, not the filter's.
        let fake = self::fake(0, at_eob(vec![b"c".to_vec()])).await;
        let mut client = MilterClient::new(fake.endpoint(), ClientOptions::default());
        let err = client
            .check(&facts(), Unreadable, soon(5_000))
            .await
            .unwrap_err();
        assert!(matches!(err.kind, ErrorKind::MessageText(_)), "{err}");
        assert!(!err.filter_unavailable());
        assert_eq!(err.local_reply().unwrap().code, 451);
    }

    #[tokio::test]
    async fn a_filter_that_closes_mid_message_is_unavailable() {
        let script: Script = Box::new(|r: &Received| match r.code {
            b'B' => Answer::Close,
            _ => Answer::Reply(vec![b"c".to_vec()]),
        });
        let fake = fake(0, script).await;
        let err = check_once(&fake, TEXT).await.unwrap_err();
        assert!(
            matches!(err.kind, ErrorKind::Closed | ErrorKind::Io(_)),
            "{err}"
        );
        assert_eq!(err.stage, Stage::Body);
        assert!(err.filter_unavailable() && err.local_reply().is_none());
    }

    #[tokio::test]
    async fn a_filter_that_never_answers_meets_the_deadline() {
        let script: Script = Box::new(|r: &Received| match r.code {
            b'E' => Answer::Hang,
            _ => Answer::Reply(vec![b"c".to_vec()]),
        });
        let fake = fake(0, script).await;
        let mut client = MilterClient::new(fake.endpoint(), ClientOptions::default());
        let started = Instant::now();
        let err = client.check(&facts(), TEXT, soon(300)).await.unwrap_err();
        assert!(matches!(err.kind, ErrorKind::Timeout), "{err}");
        assert_eq!(err.stage, Stage::EndOfBody);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(client.negotiated().is_none(), "the connection is dropped");

        // Progress does not extend the deadline.
        let script: Script = Box::new(|r: &Received| match r.code {
            b'E' => Answer::Reply(vec![b"p".to_vec(); 3]),
            _ => Answer::Reply(vec![b"c".to_vec()]),
        });
        let fake = self::fake(0, script).await;
        let mut client = MilterClient::new(fake.endpoint(), ClientOptions::default());
        let err = client.check(&facts(), TEXT, soon(300)).await.unwrap_err();
        assert!(matches!(err.kind, ErrorKind::Timeout), "{err}");
    }

    async fn protocol_error(answer: Answer) -> ProtocolError {
        let mut answer = Some(answer);
        let script: Script = Box::new(move |r: &Received| match r.code {
            b'E' => answer.take().unwrap_or(Answer::Silent),
            _ => Answer::Reply(vec![b"c".to_vec()]),
        });
        let fake = fake(0, script).await;
        let err = check_once(&fake, TEXT).await.unwrap_err();
        assert!(err.filter_unavailable());
        match err.kind {
            ErrorKind::Protocol(e) => e,
            other => panic!("not a protocol error: {other}"),
        }
    }

    #[tokio::test]
    async fn malformed_and_oversized_replies_are_protocol_errors() {
        assert_eq!(
            protocol_error(Answer::Reply(vec![b"cX".to_vec()])).await,
            ProtocolError::TrailingData { code: 'c', len: 1 }
        );
        assert_eq!(
            protocol_error(Answer::Reply(vec![b"Z".to_vec()])).await,
            ProtocolError::UnknownCode(b'Z')
        );
        assert_eq!(
            protocol_error(Answer::Reply(vec![reply(b'y', b"250 2.0.0 fine\0")])).await,
            ProtocolError::BadReplyCode
        );
        assert!(matches!(
            protocol_error(Answer::Raw(vec![0x7f, 0xff, 0xff, 0xff])).await,
            ProtocolError::FrameTooLong { .. }
        ));
        assert_eq!(
            protocol_error(Answer::Raw(vec![0, 0, 0, 0])).await,
            ProtocolError::EmptyFrame(0)
        );
        assert!(matches!(
            protocol_error(Answer::Reply(vec![reply(b'h', b"Bad Name\0x\0")])).await,
            ProtocolError::BadHeaderName
        ));
        // A modification before end of body.
        let script: Script = Box::new(|r: &Received| match r.code {
            b'L' => Answer::Reply(vec![reply(b'h', b"X\0y\0")]),
            _ => Answer::Reply(vec![b"c".to_vec()]),
        });
        let fake = fake(0, script).await;
        let err = check_once(&fake, TEXT).await.unwrap_err();
        assert!(matches!(
            err.kind,
            ErrorKind::Protocol(ProtocolError::ModificationTooEarly { .. })
        ));
    }

    #[tokio::test]
    async fn a_connection_is_reset_between_messages_and_replaced_for_another_client() {
        let fake = fake(0, at_eob(vec![b"c".to_vec()])).await;
        let mut client = MilterClient::new(fake.endpoint(), ClientOptions::default());
        let f = facts();
        client.check(&f, TEXT, soon(5_000)).await.unwrap();
        client.check(&f, TEXT, soon(5_000)).await.unwrap();
        let mut other = facts();
        other.connection.client = Some("[2001:db8::7]:5000".parse().unwrap());
        other.connection.client_name = Some("app.example".into());
        client.check(&other, TEXT, soon(5_000)).await.unwrap();
        // After STARTTLS the client says EHLO again: HELO is sent again.
        let mut tls = other.clone();
        tls.tls = None;
        client.check(&tls, TEXT, soon(5_000)).await.unwrap();
        client.quit().await;
        let one = "DMDRDRDTLLDNBDE";
        fake.codes_ending("Q").await;
        assert_eq!(fake.codes_of(0), format!("ODCDH{one}A{one}Q"));
        // No TLS: no HELO macro has a value, so none is sent.
        assert_eq!(fake.codes_of(1), format!("ODCDH{one}AH{one}Q"));
        assert_eq!(
            of(&fake, b'C')[1],
            b"app.example\x006\x13\x882001:db8::7\0".to_vec()
        );
    }

    #[tokio::test]
    async fn a_decision_for_the_whole_connection_or_a_shutdown_closes_it() {
        let script: Script = Box::new(|r: &Received| match r.code {
            b'C' if r.conn == 0 => Answer::Reply(vec![b"a".to_vec()]),
            b'E' if r.conn == 1 => Answer::Reply(vec![b"4".to_vec()]),
            _ => Answer::Reply(vec![b"c".to_vec()]),
        });
        let fake = fake(0, script).await;
        let mut client = MilterClient::new(fake.endpoint(), ClientOptions::default());
        let o = client.check(&facts(), TEXT, soon(5_000)).await.unwrap();
        assert_eq!((o.verdict, o.decided_at), (Verdict::Accept, Stage::Connect));
        assert!(client.negotiated().is_none());
        let o = client.check(&facts(), TEXT, soon(5_000)).await.unwrap();
        assert_eq!(o.verdict, Verdict::Tempfail(default_tempfail()));
        assert!(client.negotiated().is_none());
        client.check(&facts(), TEXT, soon(5_000)).await.unwrap();
        assert_eq!(fake.connections(), 3);
    }

    #[tokio::test]
    async fn a_kept_connection_the_filter_closed_or_that_holds_stray_bytes_is_replaced() {
        // The filter closes after answering (as on its idle timeout).
        let script: Script = Box::new(|r: &Received| match r.code {
            b'E' if r.conn == 0 => Answer::ReplyAndClose(vec![b"c".to_vec()]),
            // Then it answers twice: the extra reply must not answer our next event.
            b'E' if r.conn == 1 => Answer::Reply(vec![b"c".to_vec(), b"r".to_vec()]),
            _ => Answer::Reply(vec![b"c".to_vec()]),
        });
        let fake = fake(0, script).await;
        let mut client = MilterClient::new(fake.endpoint(), ClientOptions::default());
        for _ in 0..3 {
            let o = client.check(&facts(), TEXT, soon(5_000)).await.unwrap();
            assert_eq!(o.verdict, Verdict::Accept);
        }
        assert_eq!(fake.connections(), 3, "{}", fake.codes());
    }

    #[tokio::test]
    async fn a_check_cancelled_midway_does_not_leave_its_connection_to_the_next() {
        // The first end of body is answered late: a cancelled check's reply in flight.
        let script: Script = Box::new(|r: &Received| match r.code {
            b'E' if r.conn == 0 => Answer::Hang,
            _ => Answer::Reply(vec![b"c".to_vec()]),
        });
        let fake = fake(0, script).await;
        let mut client = MilterClient::new(fake.endpoint(), ClientOptions::default());
        let cancelled = tokio::time::timeout(
            Duration::from_millis(200),
            client.check(&facts(), TEXT, soon(5_000)),
        )
        .await;
        assert!(cancelled.is_err());
        let o = client.check(&facts(), TEXT, soon(5_000)).await.unwrap();
        assert_eq!(o.verdict, Verdict::Accept);
        assert_eq!(fake.connections(), 2);
    }

    #[tokio::test]
    async fn the_filters_symbol_list_replaces_our_default_macros() {
        let negotiation = optneg(
            6,
            ALL,
            0,
            &[(2, "{auth_authen} {mail_addr} {unknown}"), (0, "")],
        );
        let fake = FakeMilter::start(negotiation, at_eob(vec![b"c".to_vec()])).await;
        check_once(&fake, TEXT).await.unwrap();
        assert_eq!(
            macros(&fake, b'M'),
            [b"{auth_authen}\0app@acme.example\0{mail_addr}\0app@acme.example\0".to_vec()]
        );
        assert!(macros(&fake, b'C').is_empty());
        assert_eq!(macros(&fake, b'R').len(), 2);
    }

    #[tokio::test]
    async fn an_unreachable_or_refusing_filter_is_unavailable() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let endpoint = MilterEndpoint {
            host: "127.0.0.1".into(),
            port,
        };
        let err = MilterClient::connect(endpoint, ClientOptions::default(), soon(5_000))
            .await
            .err()
            .unwrap();
        assert!(
            matches!(err.kind, ErrorKind::Connect(_)) && err.filter_unavailable(),
            "{err}"
        );
        // A filter speaking a protocol version we do not.
        let fake = FakeMilter::start(optneg(7, ALL, 0, &[]), at_eob(vec![b"c".to_vec()])).await;
        let err = check_once(&fake, TEXT).await.unwrap_err();
        assert_eq!(err.stage, Stage::Negotiating);
        assert!(matches!(
            err.kind,
            ErrorKind::Protocol(ProtocolError::UnsupportedVersion(7))
        ));
    }

    #[tokio::test]
    async fn a_header_too_long_to_show_is_refused_not_left_to_on_unavailable() {
        let fake = fake(0, at_eob(vec![b"c".to_vec()])).await;
        let mut text = b"X-Long: a".to_vec();
        for _ in 0..1_000 {
            text.extend_from_slice(
                b"\r\n\t0123456789012345678901234567890123456789012345678901234567890123456789",
            );
        }
        text.extend_from_slice(b"\r\n\r\nbody\r\n");
        let err = check_once(&fake, &text).await.unwrap_err();
        assert!(matches!(err.kind, ErrorKind::HeaderTooLong(_)), "{err}");
        assert!(!err.filter_unavailable());
        assert_eq!(err.local_reply().unwrap().code, 554);
    }

    /// A 35 MB message made on the fly, so the test itself holds none of it.
    struct Generated {
        left: usize,
        header_sent: bool,
    }
    impl AsyncRead for Generated {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if !self.header_sent {
                self.header_sent = true;
                buf.put_slice(b"Subject: large\r\n\r\n");
                return Poll::Ready(Ok(()));
            }
            let line =
                b"The quick brown fox jumps over the lazy dog 0123456789 ABCDEFGHIJKLMNOP\r\n";
            while self.left > 0 && buf.remaining() >= line.len() {
                let n = line.len().min(self.left);
                buf.put_slice(&line[..n]);
                self.left -= n;
            }
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_35_mb_message_streams_through() {
        let total = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = total.clone();
        let script: Script = Box::new(move |r: &Received| {
            if r.code == b'B' {
                assert!(r.data.len() <= MAX_BODY_CHUNK);
                seen.fetch_add(r.data.len(), std::sync::atomic::Ordering::Relaxed);
            }
            match r.code {
                b'E' => Answer::Reply(vec![b"c".to_vec()]),
                _ => Answer::Silent,
            }
        });
        let fake = fake(NO_REPLIES, script).await;
        let mut client = MilterClient::new(fake.endpoint(), ClientOptions::default());
        let size = 35 * 1_000_000;
        let text = Generated {
            left: size,
            header_sent: false,
        };
        let outcome = client.check(&facts(), text, soon(60_000)).await.unwrap();
        assert_eq!(outcome.verdict, Verdict::Accept);
        assert_eq!(total.load(std::sync::atomic::Ordering::Relaxed), size);
    }

    fn eob_frame() -> impl Strategy<Value = Vec<u8>> {
        let text = proptest::collection::vec(any::<u8>(), 0..24);
        prop_oneof![
            proptest::sample::select(b"acdrtsp4Z".to_vec()).prop_map(|c| vec![c]),
            text.clone()
                .prop_map(|t| [b"y5".as_slice(), &t, b"\0"].concat()),
            text.clone().prop_map(|t| [b"y4".as_slice(), &t].concat()),
            text.clone()
                .prop_map(|t| [b"hX-T\0".as_slice(), &t, b"\0"].concat()),
            text.clone()
                .prop_map(|t| [b"q".as_slice(), &t, b"\0"].concat()),
            proptest::collection::vec(any::<u8>(), 1..16),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn arbitrary_filter_replies_never_turn_a_refusal_into_an_accept(
            frames in proptest::collection::vec(eob_frame(), 1..8),
            junk in proptest::collection::vec(any::<u8>(), 0..12),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let mut bytes: Vec<u8> = frames.iter().flat_map(|f| framed(f)).collect();
            bytes.extend_from_slice(&junk);
            let answer = bytes.clone();
            let result = rt.block_on(async move {
                let mut once = Some(answer);
                let script: Script = Box::new(move |r: &Received| match r.code {
                    b'E' => match once.take() {
                        Some(b) => Answer::Raw(b),
                        None => Answer::Silent,
                    },
                    _ => Answer::Reply(vec![b"c".to_vec()]),
                });
                let fake = fake(0, script).await;
                let mut client = MilterClient::new(fake.endpoint(), ClientOptions::default());
                client.check(&facts(), TEXT, soon(500)).await
            });
            // The first frame that ends the exchange decides; a refusal before it forbids
            // every verdict that lets the message through.
            let mut refused = false;
            for f in &frames {
                refused |= matches!(f.first(), Some(b'r' | b't' | b'4'))
                    || (f.first() == Some(&b'y') && super::super::protocol::sanitize_reply_code(&f[1..]).is_ok());
                if matches!(f.first(), Some(b'a' | b'c' | b'd' | b's' | b'r' | b't' | b'4' | b'y')) {
                    break;
                }
            }
            if let Ok(outcome) = &result
                && refused
            {
                prop_assert!(
                    matches!(outcome.verdict, Verdict::Reject(_) | Verdict::Tempfail(_)),
                    "{:?} from {:?}", outcome.verdict, frames
                );
            }
        }
    }
}
