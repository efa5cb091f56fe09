//! One SMTP session as a pure state machine.
//!
//! The I/O layer (`server`) feeds it command lines and DATA bytes and carries out the
//! [`Action`]s it returns: send replies (in order; the caller batches them and flushes
//! when its input buffer has no further complete command, which is what PIPELINING
//! needs), upgrade to TLS, verify credentials, check limits, spool a message, close.
//! Actions that need an answer (`VerifyAuth`, `CheckRcpt`, `Spool`) are always last in
//! their list; the caller answers through the matching method before feeding more input.
//!
//! Message text is streamed: [`Session::on_data`] appends the unstuffed text to a buffer
//! the caller owns and drains (to the spool file), so a session never holds a whole
//! message. Every transaction has a [`TxId`] owning its limit reservations; a transaction
//! that ends without a message yields [`Action::Release`] (RSET, a new EHLO, a refused
//! message), and [`Session::abandon`] does the same when the connection ends.
//!
//! Domains are normalised to A-labels ([`crate::idn`]) at MAIL and RCPT, before policy,
//! limits and the envelope see them: a recipient is kept as its local part exactly as sent
//! and its domain as an A-label, so routes, organization domains and limits compare one
//! form. A domain that is not a valid IDN gets `501 5.1.3`. The transaction remembers
//! whether the client declared SMTPUTF8 and `BODY=8BITMIME`, for delivery to carry on.
//!
//! Configuration is swapped in between transactions ([`Session::reconfigure`]), so each
//! MAIL is judged by the policy in force at that moment; the session itself keeps only
//! what it learnt from the client (HELO, TLS, AUTH). An authenticated session keeps the
//! [`CredentialFingerprint`] of the line its password matched, and each MAIL checks it
//! against the credentials in force (SPEC §3.7): once that user's password changed or the
//! user was removed, MAIL gets `535 5.7.8 Authentication credentials no longer valid`, the
//! session is no longer authenticated (the client may AUTH again) and the refusal counts
//! as an error. The check is a map lookup, no password hash.
//!
//! Errors count toward `max_errors` (then `421` and close): bad commands and syntax, and
//! refusals a client could use to probe, such as a refused sender at MAIL (an allowed
//! client must not enumerate users for free) and a recipient domain that is an IP address,
//! also once IDNA mapping made it one (`10.0.0.５`).
//!
//! Not here: sockets, timeouts, TLS handshakes, the spool format, metrics.

use std::net::IpAddr;
use std::sync::Arc;

use crate::config::{LimitsConfig, RelayConfig};
use crate::idn;
use crate::ingress::auth::{self, CredentialFingerprint, Credentials, SaslError};
use crate::limits::{LimitHit, LimitStoreError, TxId};
use crate::policy::{ClientFacts, MailDecision, Policy};
use crate::smtp::{
    AuthMechanism, Command, CommandError, DataError, DataProgress, DataReader, Path, Reply,
    parse_command,
};

/// What a session needs from its config generation.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Name in the greeting and EHLO reply.
    pub hostname: String,
    pub limits: LimitsConfig,
    pub policy: Arc<Policy>,
    /// STARTTLS can be offered (the relay has a certificate).
    pub tls_available: bool,
    /// The AUTH credentials in force, against which an authenticated session is checked
    /// at each MAIL.
    pub credentials: Credentials,
}

impl SessionConfig {
    /// What sessions need from `config`, compiled; `tls_available` says whether the relay
    /// holds a certificate (loading it and the credentials is the caller's business: the
    /// credentials are empty here). Pure: reads no file, so `relayctl explain` builds
    /// sessions exactly as a config generation does.
    pub fn for_config(config: &RelayConfig, tls_available: bool) -> Self {
        Self {
            hostname: config.hostname.clone(),
            limits: config.limits.clone(),
            policy: Arc::new(Policy::new(config)),
            tls_available,
            credentials: Credentials::default(),
        }
    }
}

/// A message whose text has been streamed: its envelope, ready to be committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The transaction whose limit reservations the message commits.
    pub tx: TxId,
    /// Envelope sender after rewrite (`""` for the null sender).
    pub mail_from: String,
    /// The sender the client gave, when rewritten.
    pub original_mail_from: Option<String>,
    pub rcpts: Vec<String>,
    pub helo: String,
    pub auth_identity: Option<String>,
    pub tls: Option<String>,
    /// The limits user (AUTH identity, else the sender the client gave).
    pub user: String,
    /// MAIL carried SMTPUTF8.
    pub smtputf8: bool,
    /// MAIL carried `BODY=8BITMIME`.
    pub eight_bit_mime: bool,
}

/// What the I/O layer must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Reply(Reply),
    /// Flush replies, then run the TLS handshake; discard any input already buffered.
    /// Then call [`Session::tls_started`].
    StartTls,
    /// Check the password, then call [`Session::auth_result`].
    VerifyAuth {
        identity: String,
        password: String,
    },
    /// Ask the limit store (which reserves the recipient for `tx` when it fits), then
    /// call [`Session::rcpt_result`].
    CheckRcpt {
        tx: TxId,
        user: String,
        rcpt: String,
        pending: Vec<String>,
    },
    /// Give back the limit reservations of a transaction that ended without a message.
    /// Needs no answer.
    Release {
        tx: TxId,
        user: String,
        rcpts: Vec<String>,
    },
    /// The message text is complete (all of it went to the caller's buffer): make it
    /// durable with this envelope and count it, then call [`Session::spooled`].
    Spool(Box<Message>),
    /// The message text was refused (the reply follows): throw away what was streamed.
    DiscardData,
    /// Flush replies and close the connection.
    Close,
}

#[derive(Debug)]
enum Mode {
    Command,
    AuthPlain,
    AuthLoginUser,
    AuthLoginPassword(String),
    Data(DataReader),
    /// Waiting for the answer to an action.
    Waiting,
    Closed,
}

#[derive(Debug, Clone)]
struct Transaction {
    id: TxId,
    mail_from: String,
    original: Option<String>,
    rcpts: Vec<String>,
    /// MAIL carried SMTPUTF8: recipients may be UTF-8 addresses (RFC 6531).
    smtputf8: bool,
    /// MAIL carried `BODY=8BITMIME` (RFC 6152).
    eight_bit_mime: bool,
}

/// The state of one SMTP session.
#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    ip: IpAddr,
    tls: Option<String>,
    helo: Option<String>,
    auth: Option<String>,
    /// The line the AUTH password matched; `None` for an identity accepted without a
    /// check against credentials ([`Session::auth_result`]).
    auth_fingerprint: Option<CredentialFingerprint>,
    tx: Option<Transaction>,
    mode: Mode,
    errors: u32,
}

fn reply(code: u16, text: impl Into<String>) -> Action {
    Action::Reply(Reply::new(code, text))
}

/// SPEC §3.4: a recipient domain that is an IP address.
fn recipient_domain_is_ip() -> Reply {
    Reply::new(
        501,
        "5.1.3 Recipient domain must be a domain name, not an IP address",
    )
}

/// RFC 6531 §3.7.1, in Postfix's words.
fn utf8_without_smtputf8() -> Reply {
    Reply::new(553, "5.6.7 Must declare SMTPUTF8 to send unicode address")
}

impl Session {
    /// A session from `ip`; `tls` describes the connection when it is implicit TLS.
    pub fn new(cfg: SessionConfig, ip: IpAddr, tls: Option<String>) -> Self {
        Self {
            cfg,
            ip,
            tls,
            helo: None,
            auth: None,
            auth_fingerprint: None,
            tx: None,
            mode: Mode::Command,
            errors: 0,
        }
    }

    /// The `220` greeting.
    pub fn greeting(&self) -> Reply {
        Reply::new(220, format!("{} ESMTP", self.cfg.hostname))
    }

    /// True while the session reads message text rather than commands.
    pub fn in_data(&self) -> bool {
        matches!(self.mode, Mode::Data(_))
    }

    /// True once the session has decided to close.
    pub fn is_closed(&self) -> bool {
        matches!(self.mode, Mode::Closed)
    }

    /// The client IP.
    pub fn client_ip(&self) -> IpAddr {
        self.ip
    }

    /// What the session knows about the client, as the policy is asked at MAIL.
    pub fn client_facts(&self) -> ClientFacts<'_> {
        ClientFacts {
            ip: self.ip,
            tls: self.tls.is_some(),
            auth: self.auth.as_deref(),
            helo: self.helo.as_deref(),
        }
    }

    /// The configuration in force (its policy answers [`Policy::explain_mail`]).
    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// Puts a new configuration in force for what follows. Only between transactions: a
    /// transaction in progress finishes under the policy that accepted its sender.
    /// Returns false (and changes nothing) while a transaction or exchange is open.
    pub fn reconfigure(&mut self, cfg: SessionConfig) -> bool {
        if self.tx.is_some() || !matches!(self.mode, Mode::Command) {
            return false;
        }
        self.cfg = cfg;
        true
    }

    /// The connection ended: the release of the open transaction's reservations, if any.
    pub fn abandon(&mut self) -> Option<Action> {
        self.mode = Mode::Closed;
        self.drop_transaction()
    }

    /// Ends the open transaction; its reservations go back.
    fn drop_transaction(&mut self) -> Option<Action> {
        let user = self.user();
        let tx = self.tx.take()?;
        (!tx.rcpts.is_empty()).then_some(Action::Release {
            tx: tx.id,
            user,
            rcpts: tx.rcpts,
        })
    }

    /// A command line longer than 512 octets was received (and discarded).
    pub fn line_too_long(&mut self) -> Vec<Action> {
        self.error(Reply::new(500, "5.5.2 Line too long"))
    }

    /// The reply sent when the idle or session timeout expires.
    pub fn timeout_reply(&self) -> Reply {
        Reply::new(
            421,
            format!("4.4.2 {} Error: timeout exceeded", self.cfg.hostname),
        )
    }

    /// The reply sent when the relay shuts down.
    pub fn shutdown_reply(&self) -> Reply {
        Reply::new(
            421,
            format!("4.3.2 {} Service shutting down", self.cfg.hostname),
        )
    }

    fn error(&mut self, r: Reply) -> Vec<Action> {
        self.errors += 1;
        let mut out = vec![Action::Reply(r)];
        if self.errors >= self.cfg.limits.max_errors {
            out.push(reply(
                421,
                format!(
                    "4.7.0 {} Error: too many errors, closing connection",
                    self.cfg.hostname
                ),
            ));
            out.push(Action::Close);
            self.mode = Mode::Closed;
        }
        out
    }

    /// One line received outside DATA, without its line ending.
    pub fn on_line(&mut self, line: &[u8]) -> Vec<Action> {
        match std::mem::replace(&mut self.mode, Mode::Command) {
            Mode::Command => self.on_command(line),
            Mode::AuthPlain => self.auth_plain(line),
            Mode::AuthLoginUser => self.auth_login_user(line),
            Mode::AuthLoginPassword(user) => self.auth_login_password(user, line),
            other => {
                // Data, Waiting or Closed: the caller should not feed lines now.
                self.mode = other;
                Vec::new()
            }
        }
    }

    fn on_command(&mut self, line: &[u8]) -> Vec<Action> {
        let cmd = match parse_command(line) {
            Ok(cmd) => cmd,
            Err(e) => {
                let r = match e {
                    CommandError::Unrecognized => {
                        Reply::new(502, "5.5.2 Error: command not recognized")
                    }
                    CommandError::Syntax(s) => Reply::new(501, format!("5.5.4 {s}")),
                    CommandError::BadSenderAddress => {
                        Reply::new(501, "5.1.3 Bad sender address syntax")
                    }
                    CommandError::BadRecipientAddress => {
                        Reply::new(501, "5.1.3 Bad recipient address syntax")
                    }
                    CommandError::RecipientDomainIsIp => recipient_domain_is_ip(),
                    CommandError::Utf8WithoutSmtputf8 => utf8_without_smtputf8(),
                    CommandError::UnsupportedParameter(p) => {
                        Reply::new(555, format!("5.5.4 Unsupported option: {p}"))
                    }
                    CommandError::UnsupportedMechanism => {
                        Reply::new(504, "5.5.4 Unrecognized authentication type")
                    }
                    CommandError::BadCharacters => Reply::new(500, "5.5.2 Error: bad syntax"),
                };
                return self.error(r);
            }
        };
        match cmd {
            Command::Helo(name) => {
                self.helo = Some(name);
                let release = self.drop_transaction();
                release
                    .into_iter()
                    .chain([reply(250, self.cfg.hostname.clone())])
                    .collect()
            }
            Command::Ehlo(name) => {
                self.helo = Some(name);
                let release = self.drop_transaction();
                release
                    .into_iter()
                    .chain([Action::Reply(self.ehlo_reply())])
                    .collect()
            }
            Command::Mail {
                from,
                size,
                smtputf8,
                eight_bit_mime,
            } => self.mail(from, size, smtputf8, eight_bit_mime),
            Command::Rcpt { to } => self.rcpt(to),
            Command::Data => self.data(),
            Command::Rset => {
                let release = self.drop_transaction();
                release
                    .into_iter()
                    .chain([reply(250, "2.0.0 OK")])
                    .collect()
            }
            Command::Noop => vec![reply(250, "2.0.0 OK")],
            Command::Quit => {
                self.mode = Mode::Closed;
                vec![reply(221, "2.0.0 Bye"), Action::Close]
            }
            Command::StartTls => self.starttls(),
            Command::Auth { mechanism, initial } => self.auth_start(mechanism, initial),
            Command::Vrfy => vec![reply(
                252,
                "2.5.2 Cannot VRFY user, but will accept message",
            )],
            Command::Help => vec![reply(214, "2.0.0 See RFC 5321")],
        }
    }

    fn ehlo_reply(&self) -> Reply {
        let mut lines = vec![
            self.cfg.hostname.clone(),
            "PIPELINING".to_string(),
            format!("SIZE {}", self.cfg.limits.max_message_bytes),
            "8BITMIME".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
            "SMTPUTF8".to_string(),
        ];
        if self.tls.is_none() && self.cfg.tls_available {
            lines.push("STARTTLS".to_string());
        }
        if self.tls.is_some() {
            lines.push("AUTH PLAIN LOGIN".to_string());
        }
        Reply::multi(250, lines)
    }

    fn mail(
        &mut self,
        from: Path,
        size: Option<u64>,
        smtputf8: bool,
        eight_bit_mime: bool,
    ) -> Vec<Action> {
        if self.helo.is_none() {
            return self.error(Reply::new(503, "5.5.1 Error: send HELO/EHLO first"));
        }
        if self.tx.is_some() {
            return self.error(Reply::new(503, "5.5.1 Error: nested MAIL command"));
        }
        if let (Some(identity), Some(fingerprint)) = (&self.auth, self.auth_fingerprint)
            && !self.cfg.credentials.still_valid(identity, fingerprint)
        {
            // Revoked or changed since the login: the session is no longer authenticated.
            self.auth = None;
            self.auth_fingerprint = None;
            return self.error(Reply::new(
                535,
                "5.7.8 Authentication credentials no longer valid",
            ));
        }
        if size.is_some_and(|s| s > self.cfg.limits.max_message_bytes) {
            return vec![reply(
                552,
                "5.3.4 Message size exceeds fixed maximum message size",
            )];
        }
        let Some(from) = idn::address_to_ascii_domain(from.as_str()) else {
            return self.error(Reply::new(
                501,
                "5.1.3 Bad sender address syntax: invalid international domain name",
            ));
        };
        let decision = self.cfg.policy.decide_mail(&self.client_facts(), &from);
        match decision {
            MailDecision::Accept {
                mail_from,
                original,
            } => {
                self.tx = Some(Transaction {
                    id: TxId::next(),
                    mail_from,
                    original,
                    rcpts: Vec::new(),
                    smtputf8,
                    eight_bit_mime,
                });
                vec![reply(250, "2.1.0 OK")]
            }
            MailDecision::ClientNotAllowed => {
                // The client cannot relay at all: say why, then end the session.
                self.mode = Mode::Closed;
                let r = decision
                    .reply(self.ip)
                    .unwrap_or_else(|| Reply::new(550, "5.7.1"));
                vec![Action::Reply(r), Action::Close]
            }
            // A refused sender (or TLS required first) counts as an error, so an allowed
            // client cannot probe senders without end.
            other => match other.reply(self.ip) {
                Some(r) => self.error(r),
                None => Vec::new(),
            },
        }
    }

    /// The limits user: AUTH identity, else the sender the client gave.
    fn user(&self) -> String {
        match (&self.auth, &self.tx) {
            (Some(id), _) => id.clone(),
            (None, Some(tx)) => tx
                .original
                .clone()
                .unwrap_or_else(|| tx.mail_from.clone())
                .to_ascii_lowercase(),
            (None, None) => String::new(),
        }
    }

    fn rcpt(&mut self, to: Path) -> Vec<Action> {
        let Some(smtputf8) = self.tx.as_ref().map(|tx| tx.smtputf8) else {
            return self.error(Reply::new(503, "5.5.1 Error: need MAIL command"));
        };
        if !smtputf8 && !to.is_ascii() {
            return self.error(utf8_without_smtputf8());
        }
        // The local part is the recipient's own; the domain becomes its A-label.
        let Some(rcpt) = idn::address_to_ascii_domain(to.as_str()) else {
            return self.error(Reply::new(
                501,
                "5.1.3 Bad recipient address syntax: invalid international domain name",
            ));
        };
        // Checked again on the mapped form: `10.0.0.５` is `10.0.0.5` once mapped.
        if crate::smtp::domain_is_ip(&rcpt) {
            return self.error(recipient_domain_is_ip());
        }
        let Some(tx) = &self.tx else {
            return Vec::new();
        };
        if tx.mail_from.is_empty() && !tx.rcpts.is_empty() {
            return vec![reply(
                550,
                "5.5.3 Null sender accepts exactly one recipient",
            )];
        }
        if tx.rcpts.contains(&rcpt) {
            return vec![reply(250, "2.1.5 OK")];
        }
        if tx.rcpts.len() >= self.cfg.limits.recipients_per_message as usize {
            return vec![reply(452, "4.5.3 Error: too many recipients")];
        }
        let pending = tx.rcpts.clone();
        let id = tx.id;
        self.mode = Mode::Waiting;
        vec![Action::CheckRcpt {
            tx: id,
            user: self.user(),
            rcpt,
            pending,
        }]
    }

    /// The limit store's answer for a recipient.
    pub fn rcpt_result(
        &mut self,
        rcpt: String,
        result: Result<Option<LimitHit>, LimitStoreError>,
    ) -> Vec<Action> {
        self.mode = Mode::Command;
        match result {
            Ok(None) => {
                if let Some(tx) = &mut self.tx {
                    tx.rcpts.push(rcpt);
                }
                vec![reply(250, "2.1.5 OK")]
            }
            Ok(Some(hit)) => vec![Action::Reply(hit.reply())],
            Err(_) => vec![reply(
                451,
                "4.3.0 Limit service unavailable, try again later",
            )],
        }
    }

    fn data(&mut self) -> Vec<Action> {
        let Some(tx) = &self.tx else {
            return self.error(Reply::new(503, "5.5.1 Error: need MAIL command"));
        };
        if tx.rcpts.is_empty() {
            return self.error(Reply::new(554, "5.5.1 Error: no valid recipients"));
        }
        self.mode = Mode::Data(DataReader::new(self.cfg.limits.max_message_bytes));
        vec![reply(354, "End data with <CR><LF>.<CR><LF>")]
    }

    /// Message text: appends the unstuffed text to `out` (the caller drains it to the
    /// spool as it likes) and returns how many input bytes were consumed (the rest is the
    /// next command).
    pub fn on_data(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, Vec<Action>) {
        let Mode::Data(reader) = &mut self.mode else {
            return (0, Vec::new());
        };
        let consumed = match reader.feed(input, out) {
            DataProgress::NeedMore => return (input.len(), Vec::new()),
            DataProgress::Done { consumed } => consumed,
        };
        let Mode::Data(reader) = std::mem::replace(&mut self.mode, Mode::Command) else {
            return (consumed, Vec::new());
        };
        if let Err(e) = reader.finish() {
            let r = match e {
                DataError::BareLineEnding => Reply::new(
                    550,
                    "5.6.11 Message contains bare CR or LF characters; use CRLF line endings",
                ),
                DataError::LineTooLong => Reply::new(500, "5.5.2 Line too long"),
                DataError::TooBig => {
                    Reply::new(552, "5.3.4 Message size exceeds fixed maximum message size")
                }
            };
            let mut actions = vec![Action::DiscardData];
            actions.extend(self.drop_transaction());
            actions.push(Action::Reply(r));
            return (consumed, actions);
        }
        let user = self.user();
        let Some(tx) = self.tx.take() else {
            return (consumed, Vec::new());
        };
        self.mode = Mode::Waiting;
        let message = Message {
            tx: tx.id,
            mail_from: tx.mail_from,
            original_mail_from: tx.original,
            rcpts: tx.rcpts,
            helo: self.helo.clone().unwrap_or_default(),
            auth_identity: self.auth.clone(),
            tls: self.tls.clone(),
            user,
            smtputf8: tx.smtputf8,
            eight_bit_mime: tx.eight_bit_mime,
        };
        (consumed, vec![Action::Spool(Box::new(message))])
    }

    /// Whether the open transaction declared SMTPUTF8 (for the `Received:` protocol name).
    pub fn smtputf8_declared(&self) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.smtputf8)
    }

    /// The envelope facts known when DATA starts (for the `Received:` header the caller
    /// writes before the text): HELO name, AUTH identity and TLS description.
    pub fn trace_facts(&self) -> (&str, Option<&str>, Option<&str>) {
        (
            self.helo.as_deref().unwrap_or(""),
            self.auth.as_deref(),
            self.tls.as_deref(),
        )
    }

    /// The spool's answer: the queue id, or the reply explaining the failure (the caller
    /// has then released the message's reservations itself, since the session no longer
    /// holds its transaction).
    pub fn spooled(&mut self, result: Result<String, Reply>) -> Vec<Action> {
        self.mode = Mode::Command;
        match result {
            Ok(id) => vec![reply(250, format!("2.0.0 OK queued as {id}"))],
            Err(r) => vec![Action::Reply(r)],
        }
    }

    fn starttls(&mut self) -> Vec<Action> {
        if self.tls.is_some() {
            return self.error(Reply::new(503, "5.5.1 Error: TLS already active"));
        }
        if !self.cfg.tls_available {
            return vec![reply(454, "4.7.0 TLS not available")];
        }
        if self.tx.is_some() {
            return self.error(Reply::new(503, "5.5.1 Error: MAIL transaction in progress"));
        }
        self.mode = Mode::Waiting;
        vec![reply(220, "2.0.0 Ready to start TLS"), Action::StartTls]
    }

    /// The TLS handshake succeeded; `description` names version and cipher. The SMTP
    /// state starts over (RFC 3207 §4.2): the client must say EHLO again.
    pub fn tls_started(&mut self, description: String) {
        self.tls = Some(description);
        self.helo = None;
        self.auth = None;
        self.auth_fingerprint = None;
        // STARTTLS is refused inside a transaction, so none is open here.
        self.tx = None;
        self.mode = Mode::Command;
    }

    fn auth_start(&mut self, mechanism: AuthMechanism, initial: Option<String>) -> Vec<Action> {
        if self.tls.is_none() {
            return vec![reply(
                538,
                "5.7.11 Encryption required for requested authentication mechanism",
            )];
        }
        if self.helo.is_none() {
            return self.error(Reply::new(503, "5.5.1 Error: send HELO/EHLO first"));
        }
        if self.auth.is_some() {
            return self.error(Reply::new(503, "5.5.1 Error: already authenticated"));
        }
        if self.tx.is_some() {
            return self.error(Reply::new(503, "5.5.1 Error: MAIL transaction in progress"));
        }
        match (mechanism, initial) {
            (AuthMechanism::Plain, Some(i)) if i == "=" => self.auth_plain(b""),
            (AuthMechanism::Plain, Some(i)) => self.auth_plain(i.as_bytes()),
            (AuthMechanism::Plain, None) => {
                self.mode = Mode::AuthPlain;
                vec![reply(334, "")]
            }
            (AuthMechanism::Login, Some(i)) => self.auth_login_user(i.as_bytes()),
            (AuthMechanism::Login, None) => {
                self.mode = Mode::AuthLoginUser;
                vec![reply(334, "VXNlcm5hbWU6")]
            }
        }
    }

    fn sasl_failed(&mut self, line: &[u8], e: SaslError) -> Vec<Action> {
        let _ = e;
        if line == b"*" {
            return self.error(Reply::new(501, "5.7.0 Authentication aborted"));
        }
        self.error(Reply::new(501, "5.5.2 Cannot decode response"))
    }

    fn auth_plain(&mut self, line: &[u8]) -> Vec<Action> {
        match auth::decode_plain(&String::from_utf8_lossy(line)) {
            Ok((identity, password)) => {
                self.mode = Mode::Waiting;
                vec![Action::VerifyAuth { identity, password }]
            }
            Err(e) => self.sasl_failed(line, e),
        }
    }

    fn auth_login_user(&mut self, line: &[u8]) -> Vec<Action> {
        match auth::decode_login_step(&String::from_utf8_lossy(line)) {
            Ok(user) if line != b"*" => {
                self.mode = Mode::AuthLoginPassword(user.to_ascii_lowercase());
                vec![reply(334, "UGFzc3dvcmQ6")]
            }
            Ok(_) => self.sasl_failed(line, SaslError::Base64),
            Err(e) => self.sasl_failed(line, e),
        }
    }

    fn auth_login_password(&mut self, user: String, line: &[u8]) -> Vec<Action> {
        match auth::decode_login_step(&String::from_utf8_lossy(line)) {
            Ok(password) if line != b"*" => {
                self.mode = Mode::Waiting;
                vec![Action::VerifyAuth {
                    identity: user,
                    password,
                }]
            }
            Ok(_) => self.sasl_failed(line, SaslError::Base64),
            Err(e) => self.sasl_failed(line, e),
        }
    }

    /// The credentials were not checked (a lockout, or the check pool is full): `r` says
    /// why. Counts as an error, so a client cannot loop on it.
    pub fn auth_not_checked(&mut self, r: Reply) -> Vec<Action> {
        self.mode = Mode::Command;
        self.error(r)
    }

    /// The credential check's answer, from a caller that checks no credentials file (a
    /// simulation such as `relayctl explain`): an identity accepted here is never checked
    /// again at MAIL. The relay answers with [`Session::auth_verified`] instead.
    pub fn auth_result(&mut self, identity: String, ok: bool) -> Vec<Action> {
        self.mode = Mode::Command;
        if ok {
            self.auth = Some(identity);
            self.auth_fingerprint = None;
            vec![reply(235, "2.7.0 Authentication successful")]
        } else {
            self.error(Reply::new(535, "5.7.8 Authentication credentials invalid"))
        }
    }

    /// The password matched the credential line `fingerprint` identifies: the session is
    /// authenticated as long as that line is in force (checked at each MAIL).
    pub fn auth_verified(
        &mut self,
        identity: String,
        fingerprint: CredentialFingerprint,
    ) -> Vec<Action> {
        let actions = self.auth_result(identity, true);
        self.auth_fingerprint = Some(fingerprint);
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AllowedSenders, RangeConfig, SettingConfig};
    use crate::policy::tests::config_with;

    fn session(tls_available: bool) -> Session {
        let cfg = config_with(vec![SettingConfig {
            name: "acme/s".into(),
            description: String::new(),
            allowed_senders: AllowedSenders::OrganizationDomains,
            ip_ranges: Some(vec![RangeConfig {
                name: "acme/r".into(),
                network: "192.0.2.0/24".parse().unwrap(),
            }]),
            require_smtp_auth: false,
            require_tls: false,
        }]);
        let mut limits = cfg.limits.clone();
        limits.max_errors = 3;
        limits.recipients_per_message = 2;
        Session::new(
            SessionConfig {
                hostname: cfg.hostname.clone(),
                limits,
                policy: Arc::new(Policy::new(&cfg)),
                tls_available,
                credentials: Credentials::default(),
            },
            "192.0.2.9".parse().unwrap(),
            None,
        )
    }

    fn texts(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                Action::Reply(r) => r.to_string(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    /// Runs a line and answers a pending limit check with "within limits".
    fn line(s: &mut Session, l: &str) -> Vec<String> {
        let actions = s.on_line(l.as_bytes());
        if let Some(Action::CheckRcpt { rcpt, .. }) = actions.last() {
            let rcpt = rcpt.clone();
            return texts(&s.rcpt_result(rcpt, Ok(None)));
        }
        texts(&actions)
    }

    #[test]
    fn ehlo_advertises_starttls_only_before_tls_and_auth_only_after() {
        let mut s = session(true);
        let ehlo = line(&mut s, "EHLO c.acme.example").concat();
        assert_eq!(
            ehlo,
            "250-relay.acme.example\r\n250-PIPELINING\r\n250-SIZE 36700160\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250 STARTTLS\r\n"
        );
        assert_eq!(
            texts(&s.on_line(b"STARTTLS")),
            vec![
                "220 2.0.0 Ready to start TLS\r\n".to_string(),
                "StartTls".into()
            ]
        );
        s.tls_started("TLSv1_3".into());
        let ehlo = line(&mut s, "EHLO c.acme.example").concat();
        assert!(
            ehlo.ends_with("250-SMTPUTF8\r\n250 AUTH PLAIN LOGIN\r\n"),
            "{ehlo}"
        );
        assert!(!ehlo.contains("STARTTLS"));
        let mut plain = session(false);
        assert!(!line(&mut plain, "EHLO x").concat().contains("STARTTLS"));
    }

    #[test]
    fn a_full_transaction_ends_in_a_spool_action() {
        let mut s = session(false);
        line(&mut s, "EHLO c.acme.example");
        assert_eq!(
            line(&mut s, "MAIL FROM:<a@acme.example>"),
            ["250 2.1.0 OK\r\n"]
        );
        assert_eq!(
            line(&mut s, "RCPT TO:<b@dest.example>"),
            ["250 2.1.5 OK\r\n"]
        );
        assert_eq!(
            line(&mut s, "DATA"),
            ["354 End data with <CR><LF>.<CR><LF>\r\n"]
        );
        let mut text = Vec::new();
        let (used, actions) = s.on_data(b"Subject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n", &mut text);
        assert_eq!(used, b"Subject: hi\r\n\r\nbody\r\n.\r\n".len());
        let Some(Action::Spool(m)) = actions.last() else {
            panic!("expected a spool action, got {actions:?}");
        };
        assert_eq!(text, b"Subject: hi\r\n\r\nbody\r\n");
        assert_eq!(m.rcpts, vec!["b@dest.example".to_string()]);
        assert_eq!(m.user, "a@acme.example");
        assert_eq!(
            texts(&s.spooled(Ok("00AB".into()))),
            ["250 2.0.0 OK queued as 00AB\r\n"]
        );
    }

    #[test]
    fn sequencing_errors_count_and_close_at_the_limit() {
        let mut s = session(false);
        assert_eq!(
            line(&mut s, "MAIL FROM:<a@acme.example>"),
            ["503 5.5.1 Error: send HELO/EHLO first\r\n"]
        );
        assert_eq!(
            line(&mut s, "BOGUS"),
            ["502 5.5.2 Error: command not recognized\r\n"]
        );
        assert_eq!(
            line(&mut s, "RCPT TO:<x@y.example>"),
            [
                "503 5.5.1 Error: need MAIL command\r\n",
                "421 4.7.0 relay.acme.example Error: too many errors, closing connection\r\n",
                "Close"
            ]
        );
        assert!(s.is_closed());
    }

    #[test]
    fn recipients_per_message_is_enforced() {
        let mut s = session(false);
        line(&mut s, "HELO c");
        line(&mut s, "MAIL FROM:<a@acme.example>");
        line(&mut s, "RCPT TO:<1@d.example>");
        line(&mut s, "RCPT TO:<2@d.example>");
        assert_eq!(
            line(&mut s, "RCPT TO:<3@d.example>"),
            ["452 4.5.3 Error: too many recipients\r\n"]
        );
    }

    #[test]
    fn a_transaction_that_ends_without_a_message_releases_its_recipients() {
        let mut s = session(false);
        line(&mut s, "HELO c");
        line(&mut s, "MAIL FROM:<a@acme.example>");
        line(&mut s, "RCPT TO:<1@d.example>");
        let actions = s.on_line(b"RSET");
        assert!(
            matches!(&actions[0], Action::Release { rcpts, .. } if rcpts == &["1@d.example".to_string()]),
            "{actions:?}"
        );
        // A refused message text releases too.
        line(&mut s, "MAIL FROM:<a@acme.example>");
        line(&mut s, "RCPT TO:<2@d.example>");
        line(&mut s, "DATA");
        let (_, actions) = s.on_data(b"bare\nLF\r\n.\r\n", &mut Vec::new());
        assert!(matches!(actions[0], Action::DiscardData), "{actions:?}");
        assert!(matches!(&actions[1], Action::Release { .. }), "{actions:?}");
        // And a connection that goes away mid-transaction.
        line(&mut s, "MAIL FROM:<a@acme.example>");
        line(&mut s, "RCPT TO:<3@d.example>");
        assert!(matches!(s.abandon(), Some(Action::Release { .. })));
    }

    #[test]
    fn a_new_configuration_applies_between_transactions_only() {
        let mut s = session(false);
        let closed = config_with(vec![]);
        let cfg = |c: &crate::config::RelayConfig| SessionConfig {
            hostname: c.hostname.clone(),
            limits: c.limits.clone(),
            policy: Arc::new(Policy::new(c)),
            tls_available: false,
            credentials: Credentials::default(),
        };
        line(&mut s, "HELO c");
        line(&mut s, "MAIL FROM:<a@acme.example>");
        assert!(!s.reconfigure(cfg(&closed)), "not inside a transaction");
        assert_eq!(line(&mut s, "RCPT TO:<1@d.example>"), ["250 2.1.5 OK\r\n"]);
        line(&mut s, "RSET");
        assert!(s.reconfigure(cfg(&closed)));
        let refused = line(&mut s, "MAIL FROM:<a@acme.example>").concat();
        assert!(refused.starts_with("550 5.7.1"), "{refused}");
    }

    /// SPEC §3.7 without sockets: the MAIL after a reload that changed the session's
    /// credential line is refused, with no password check (no `VerifyAuth` action).
    #[test]
    fn an_authenticated_session_is_refused_at_mail_once_its_credential_line_changes() {
        const PHC_A: &str = "$argon2id$v=19$m=64,t=1,p=1$c29tZXNhbHRzb21lc2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        const PHC_B: &str = "$argon2id$v=19$m=64,t=1,p=1$c29tZXNhbHRzb21lc2FsdA$BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBA";
        let creds = |text: &str| Credentials::parse("creds", text).unwrap();
        let with = |s: &Session, credentials: Credentials| SessionConfig {
            credentials,
            ..s.cfg.clone()
        };
        let mut s = session(true);
        s.cfg.credentials = creds(&format!(
            "alice@acme.example:{PHC_A}\nbob@acme.example:{PHC_B}\n"
        ));
        s.cfg.limits.max_errors = 10;
        s.tls_started("TLSv1_3".into());
        line(&mut s, "EHLO c.acme.example");
        let fingerprint = s.cfg.credentials.fingerprint("alice@acme.example").unwrap();
        assert!(matches!(
            s.on_line(b"AUTH PLAIN AGFsaWNlQGFjbWUuZXhhbXBsZQBz").last(),
            Some(Action::VerifyAuth { .. })
        ));
        s.auth_verified("alice@acme.example".into(), fingerprint);
        assert_eq!(
            line(&mut s, "MAIL FROM:<a@acme.example>"),
            ["250 2.1.0 OK\r\n"]
        );
        line(&mut s, "RSET");
        // The same line in a new generation (Bob removed): still valid.
        assert!(s.reconfigure(with(&s, creds(&format!("alice@acme.example:{PHC_A}\n")))));
        assert_eq!(
            line(&mut s, "MAIL FROM:<a@acme.example>"),
            ["250 2.1.0 OK\r\n"]
        );
        line(&mut s, "RSET");
        // Alice's password changed.
        assert!(s.reconfigure(with(&s, creds(&format!("alice@acme.example:{PHC_B}\n")))));
        let actions = s.on_line(b"MAIL FROM:<a@acme.example>");
        assert_eq!(
            texts(&actions),
            ["535 5.7.8 Authentication credentials no longer valid\r\n"]
        );
        assert_eq!(s.client_facts().auth, None, "no longer authenticated");
        // She may authenticate again.
        assert!(matches!(
            s.on_line(b"AUTH PLAIN AGFsaWNlQGFjbWUuZXhhbXBsZQBz").last(),
            Some(Action::VerifyAuth { .. })
        ));
    }

    #[test]
    fn auth_before_tls_is_refused_with_538() {
        let mut s = session(true);
        line(&mut s, "EHLO c");
        assert_eq!(
            line(&mut s, "AUTH PLAIN AGFAYgBj"),
            ["538 5.7.11 Encryption required for requested authentication mechanism\r\n"]
        );
    }

    #[test]
    fn an_unquoted_at_in_the_local_part_is_a_bad_address() {
        let mut s = session(false);
        line(&mut s, "EHLO c.acme.example");
        assert_eq!(
            line(&mut s, "MAIL FROM:<x@evil.example@acme.example>"),
            ["501 5.1.3 Bad sender address syntax\r\n"]
        );
        line(&mut s, "MAIL FROM:<a@acme.example>");
        assert_eq!(
            line(&mut s, "RCPT TO:<x@evil.example@dest.example>"),
            ["501 5.1.3 Bad recipient address syntax\r\n"]
        );
    }

    #[test]
    fn control_characters_in_an_address_are_a_bad_address() {
        let mut s = session(false);
        line(&mut s, "EHLO c.acme.example");
        assert_eq!(
            line(&mut s, "MAIL FROM:<a\x01b@acme.example>"),
            ["501 5.1.3 Bad sender address syntax\r\n"]
        );
        line(&mut s, "MAIL FROM:<a@acme.example>");
        assert_eq!(
            line(&mut s, "RCPT TO:<\"a\tb\"@dest.example>"),
            ["501 5.1.3 Bad recipient address syntax\r\n"]
        );
    }

    #[test]
    fn a_recipient_domain_that_is_an_ip_address_is_refused() {
        let mut s = session(false);
        s.cfg.limits.max_errors = 10;
        line(&mut s, "EHLO c.acme.example");
        line(&mut s, "MAIL FROM:<a@acme.example>");
        for rcpt in ["u@[10.0.0.5]", "u@[IPv6:2001:db8::5]", "u@10.0.0.5"] {
            assert_eq!(
                line(&mut s, &format!("RCPT TO:<{rcpt}>")),
                ["501 5.1.3 Recipient domain must be a domain name, not an IP address\r\n"],
                "{rcpt}"
            );
        }
    }

    #[test]
    fn a_recipient_domain_that_is_an_ip_address_once_mapped_is_refused() {
        let mut s = session(false);
        s.cfg.limits.max_errors = 10;
        line(&mut s, "EHLO c.acme.example");
        line(&mut s, "MAIL FROM:<a@acme.example> SMTPUTF8");
        // Fullwidth digits and ideographic full stops map to an IPv4 address (UTS #46).
        for rcpt in [
            "u@10.0.0.\u{ff15}",
            "u@10\u{3002}0\u{3002}0\u{3002}5",
            "u@\u{ff11}\u{ff10}.5",
        ] {
            assert_eq!(
                line(&mut s, &format!("RCPT TO:<{rcpt}>")),
                ["501 5.1.3 Recipient domain must be a domain name, not an IP address\r\n"],
                "{rcpt}"
            );
        }
        assert_eq!(
            line(&mut s, "RCPT TO:<u@\u{ff11}0.example>"),
            ["250 2.1.5 OK\r\n"],
            "a name that maps to a domain name is fine"
        );
    }

    #[test]
    fn refused_senders_count_as_errors_and_end_the_session_at_the_limit() {
        // An allowed client probing which senders pass gets as many tries as the error
        // limit allows, like any other client making errors.
        let mut s = session(false);
        line(&mut s, "EHLO c.acme.example");
        let refused =
            "550 5.7.1 Sender domain other.example does not belong to the organization\r\n";
        for n in 1..3 {
            assert_eq!(
                line(&mut s, &format!("MAIL FROM:<u{n}@other.example>")),
                [refused],
                "try {n}"
            );
        }
        assert_eq!(
            line(&mut s, "MAIL FROM:<u3@other.example>"),
            [
                refused,
                "421 4.7.0 relay.acme.example Error: too many errors, closing connection\r\n",
                "Close"
            ]
        );
        assert!(s.is_closed());
    }

    #[test]
    fn a_utf8_address_needs_the_smtputf8_parameter() {
        let mut s = session(false);
        s.cfg.limits.max_errors = 10;
        line(&mut s, "EHLO c.acme.example");
        assert_eq!(
            line(&mut s, "MAIL FROM:<jörg@acme.example>"),
            ["553 5.6.7 Must declare SMTPUTF8 to send unicode address\r\n"]
        );
        line(&mut s, "MAIL FROM:<a@acme.example>");
        assert_eq!(
            line(&mut s, "RCPT TO:<jörg@bücher.example>"),
            ["553 5.6.7 Must declare SMTPUTF8 to send unicode address\r\n"]
        );
        line(&mut s, "RSET");
        assert_eq!(
            line(
                &mut s,
                "MAIL FROM:<jörg@acme.example> SMTPUTF8 BODY=8BITMIME"
            ),
            ["250 2.1.0 OK\r\n"]
        );
        assert_eq!(
            line(&mut s, "RCPT TO:<jörg@Bücher.example>"),
            ["250 2.1.5 OK\r\n"]
        );
        line(&mut s, "DATA");
        let (_, actions) = s.on_data(b"\r\n.\r\n", &mut Vec::new());
        let Some(Action::Spool(m)) = actions.last() else {
            panic!("expected a spool action, got {actions:?}");
        };
        assert_eq!(m.mail_from, "jörg@acme.example");
        // The domain is kept as its A-label, the local part as sent.
        assert_eq!(m.rcpts, ["jörg@xn--bcher-kva.example"]);
        assert!(m.smtputf8 && m.eight_bit_mime);
        // SMTPUTF8 belongs to one transaction.
        s.spooled(Ok("00AB".into()));
        line(&mut s, "MAIL FROM:<a@acme.example>");
        assert_eq!(
            line(&mut s, "RCPT TO:<jörg@bücher.example>"),
            ["553 5.6.7 Must declare SMTPUTF8 to send unicode address\r\n"]
        );
    }

    #[test]
    fn idn_domains_are_normalised_to_a_labels_at_mail_and_rcpt() {
        let mut s = session(false);
        line(&mut s, "EHLO c.acme.example");
        assert_eq!(
            line(&mut s, "MAIL FROM:<App@ACME.example> SMTPUTF8"),
            ["250 2.1.0 OK\r\n"]
        );
        // The limit check sees the A-label: one recipient whichever form the client used.
        let actions = s.on_line("RCPT TO:<Jörg@BÜCHER.example>".as_bytes());
        let Some(Action::CheckRcpt { rcpt, .. }) = actions.last() else {
            panic!("expected a limit check, got {actions:?}");
        };
        assert_eq!(rcpt, "Jörg@xn--bcher-kva.example");
        let rcpt = rcpt.clone();
        assert_eq!(texts(&s.rcpt_result(rcpt, Ok(None))), ["250 2.1.5 OK\r\n"]);
        assert_eq!(
            texts(&s.on_line("RCPT TO:<Jörg@xn--bcher-kva.example>".as_bytes())),
            ["250 2.1.5 OK\r\n"],
            "the same mailbox: no second recipient, no second limit check"
        );
        assert_eq!(
            line(&mut s, "RCPT TO:<u@bücher.example>"),
            ["250 2.1.5 OK\r\n"]
        );
        line(&mut s, "DATA");
        let (_, actions) = s.on_data(b"\r\n.\r\n", &mut Vec::new());
        let Some(Action::Spool(m)) = actions.last() else {
            panic!("expected a spool action, got {actions:?}");
        };
        assert_eq!(m.mail_from, "App@acme.example");
        assert_eq!(
            m.rcpts,
            ["Jörg@xn--bcher-kva.example", "u@xn--bcher-kva.example"]
        );
        assert!(m.smtputf8);
        assert!(!m.eight_bit_mime);
    }

    #[test]
    fn an_invalid_idn_domain_gets_501_5_1_3() {
        let mut s = session(false);
        s.cfg.limits.max_errors = 10;
        line(&mut s, "EHLO c.acme.example");
        assert_eq!(
            line(&mut s, "MAIL FROM:<a@xn--zz.example> SMTPUTF8"),
            ["501 5.1.3 Bad sender address syntax: invalid international domain name\r\n"]
        );
        line(&mut s, "MAIL FROM:<a@acme.example> SMTPUTF8");
        for rcpt in ["u@xn--zz.example", "u@\u{301}bc.example", "u@xn--a.example"] {
            assert_eq!(
                line(&mut s, &format!("RCPT TO:<{rcpt}>")),
                ["501 5.1.3 Bad recipient address syntax: invalid international domain name\r\n"],
                "{rcpt}"
            );
        }
        // The transaction is still open for good recipients.
        assert_eq!(
            line(&mut s, "RCPT TO:<u@bücher.example>"),
            ["250 2.1.5 OK\r\n"]
        );
    }

    #[test]
    fn recipient_local_part_keeps_its_case_and_the_domain_is_lower_cased() {
        let mut s = session(false);
        line(&mut s, "EHLO c.acme.example");
        line(&mut s, "MAIL FROM:<a@acme.example>");
        assert_eq!(
            line(&mut s, "RCPT TO:<Bob.Smith@Dest.EXAMPLE>"),
            ["250 2.1.5 OK\r\n"]
        );
        // The same mailbox again: no second recipient, no second limit check.
        assert_eq!(
            texts(&s.on_line(b"RCPT TO:<Bob.Smith@dest.example>")),
            ["250 2.1.5 OK\r\n"]
        );
        // Another local part by case is another mailbox.
        assert_eq!(
            line(&mut s, "RCPT TO:<bob.smith@dest.example>"),
            ["250 2.1.5 OK\r\n"]
        );
        line(&mut s, "DATA");
        let (_, actions) = s.on_data(b"\r\n.\r\n", &mut Vec::new());
        let Some(Action::Spool(m)) = actions.last() else {
            panic!("expected a spool action, got {actions:?}");
        };
        assert_eq!(
            m.rcpts,
            ["Bob.Smith@dest.example", "bob.smith@dest.example"]
        );
    }

    #[test]
    fn helo_names_must_be_printable_ascii() {
        let mut s = session(false);
        assert_eq!(
            line(&mut s, "EHLO bad\x7fname"),
            ["501 5.5.4 Syntax: EHLO hostname (a domain name or address literal)\r\n"]
        );
        assert_eq!(
            line(&mut s, "HELO münchen.example"),
            ["501 5.5.4 Syntax: EHLO hostname (a domain name or address literal)\r\n"]
        );
        // Printable but not a domain: accepted here, sanitised in `Received:`.
        assert_eq!(
            line(&mut s, "HELO evil;by(forged)"),
            ["250 relay.acme.example\r\n"]
        );
    }

    #[test]
    fn bad_parameters_are_argument_syntax_errors() {
        let mut s = session(false);
        line(&mut s, "EHLO c.acme.example");
        assert_eq!(
            line(&mut s, "MAIL FROM:<a@acme.example> SIZE=big"),
            ["501 5.5.4 Syntax: SIZE=<number>\r\n"]
        );
        assert_eq!(
            line(&mut s, "MAIL FROM:a@acme.example"),
            ["501 5.5.4 Syntax: MAIL FROM:<address>\r\n"]
        );
    }
}
