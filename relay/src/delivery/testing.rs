//! Test support behind the `testing` feature (this crate's tests enable it through a
//! dev-dependency on itself; `relayctl sink`, `operator` and `conformance` tests enable it
//! explicitly): an in-process SMTP sink and a test certificate authority.
//!
//! [`TestSink`] listens on `127.0.0.1:0`, optionally offers STARTTLS with a given rustls
//! `ServerConfig`, answers with configurable replies (for example 4xx or 5xx for some
//! recipients), records every envelope and message it received and counts connections. It
//! can hold back the reply to a message so a test can stop a sender mid-delivery. It can
//! speak TLS from the first byte (a port-465 smarthost) and require SMTP AUTH (PLAIN,
//! LOGIN, XOAUTH2) after TLS, recording every line of each AUTH exchange as received.
//! [`TestCa`] and [`self_signed`] make certificates with rcgen. [`dkim_keys`] holds fixed
//! RSA test keys (ring, which signs, cannot generate RSA keys). Nothing here is used by the
//! relay itself.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// How a [`TestSink`] behaves.
#[derive(Clone, Default)]
pub struct SinkConfig {
    /// STARTTLS is offered when set.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// STARTTLS is offered and answered `220`, then the sink sends bytes that are not TLS
    /// and closes (a server with a broken TLS stack). A session that does not say
    /// STARTTLS is served normally.
    pub broken_starttls: bool,
    /// PIPELINING is advertised.
    pub pipelining: bool,
    /// SMTPUTF8 is advertised (8BITMIME always is).
    pub smtputf8: bool,
    /// EHLO is refused with `502` (an old server that knows only HELO).
    pub refuse_ehlo: bool,
    /// Greeting line instead of `220 sink ESMTP` (e.g. `421 4.3.2 busy`).
    pub greeting: Option<String>,
    /// Reply to MAIL instead of `250 2.1.0 ok`.
    pub mail_reply: Option<String>,
    /// Replies to RCPT by lower-case address, instead of `250 2.1.5 ok`.
    pub rcpt_replies: HashMap<String, String>,
    /// Final reply to DATA instead of `250 2.0.0 queued`.
    pub data_reply: Option<String>,
    /// A line sent after the final reply to each message: one reply too many, as a broken
    /// server (or an LMTP server answering once per recipient) sends.
    pub extra_reply_after_data: Option<String>,
    /// After this many messages, the reply to each further message is withheld until
    /// [`TestSink::release`] (the message is recorded as received).
    pub hold_after: Option<usize>,
    /// Closes each session after answering this many messages in it (a server with a
    /// per-session message limit), without a reply to what comes next.
    pub close_after: Option<usize>,
    /// TLS from the first byte with `tls` (SMTPS), no STARTTLS.
    pub implicit_tls: bool,
    /// SMTP AUTH: advertised over TLS only, and MAIL is refused `530 5.7.0` until it
    /// succeeded.
    pub auth: Option<SinkAuth>,
}

/// The AUTH a [`TestSink`] asks for.
#[derive(Clone, Debug)]
pub struct SinkAuth {
    /// Mechanisms of the `250-AUTH` line, e.g. `["PLAIN", "LOGIN"]`.
    pub mechanisms: Vec<String>,
    /// Final reply to AUTH instead of `235 2.7.0 Authentication successful`
    /// (e.g. `535 5.7.8 Authentication credentials invalid`).
    pub reply: Option<String>,
}

impl std::fmt::Debug for SinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkConfig")
            .field("starttls", &self.tls.is_some())
            .field("broken_starttls", &self.broken_starttls)
            .field("pipelining", &self.pipelining)
            .finish()
    }
}

/// One message as the sink received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// MAIL FROM address (empty for `<>`).
    pub mail_from: String,
    /// The parameters of MAIL FROM after the address, as sent (`SIZE=42`, `SMTPUTF8`).
    pub mail_params: Vec<String>,
    /// Accepted RCPT TO addresses.
    pub rcpt_to: Vec<String>,
    /// Content with dot-stuffing undone, without the final `.` line.
    pub data: Vec<u8>,
    /// Whether it came over TLS.
    pub tls: bool,
    /// Which connection (1-based) carried it.
    pub connection: usize,
}

#[derive(Default)]
struct SinkState {
    messages: Mutex<Vec<ReceivedMessage>>,
    connections: AtomicUsize,
    received: Notify,
    released: Notify,
    release_flag: std::sync::atomic::AtomicBool,
    auth_lines: Mutex<Vec<String>>,
}

/// An in-process SMTP server for tests. Stops when dropped.
pub struct TestSink {
    addr: SocketAddr,
    state: Arc<SinkState>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for TestSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestSink")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Drop for TestSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestSink {
    /// Starts a sink on `127.0.0.1:0`.
    pub async fn start(config: SinkConfig) -> io::Result<Self> {
        Self::start_on("127.0.0.1:0".parse().map_err(io::Error::other)?, config).await
    }

    /// Starts a sink on a given loopback address (to bring a host "back" on a known port).
    pub async fn start_on(addr: SocketAddr, config: SinkConfig) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(SinkState::default());
        let config = Arc::new(config);
        let st = state.clone();
        let task = tokio::spawn(async move {
            let mut sessions = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let number = st.connections.fetch_add(1, Ordering::SeqCst) + 1;
                let (st, cfg) = (st.clone(), config.clone());
                sessions.spawn(async move {
                    let _ = serve(tcp, st, cfg, number).await;
                });
            }
        });
        Ok(Self { addr, state, task })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every message received so far.
    pub fn messages(&self) -> Vec<ReceivedMessage> {
        self.state
            .messages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every line of every AUTH exchange, as received (the `AUTH …` command and each
    /// response line), in order.
    pub fn auth_lines(&self) -> Vec<String> {
        self.state
            .auth_lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` messages were received (wrap in a timeout).
    pub async fn wait_for_messages(&self, n: usize) {
        loop {
            let notified = self.state.received.notified();
            if self.messages().len() >= n {
                return;
            }
            notified.await;
        }
    }

    /// Lets held replies go and stops holding.
    pub fn release(&self) {
        self.state.release_flag.store(true, Ordering::SeqCst);
        self.state.released.notify_waiters();
    }
}

enum Flow {
    Quit,
    StartTls,
}

async fn serve(
    tcp: TcpStream,
    state: Arc<SinkState>,
    config: Arc<SinkConfig>,
    number: usize,
) -> io::Result<()> {
    let mut io = BufReader::new(tcp);
    let greeting = config
        .greeting
        .clone()
        .unwrap_or_else(|| "220 sink.test ESMTP".into());
    if config.implicit_tls {
        let Some(tls) = config.tls.clone() else {
            return Ok(());
        };
        let stream = TlsAcceptor::from(tls).accept(io.into_inner()).await?;
        let mut io = BufReader::new(stream);
        reply(&mut io, &greeting).await?;
        if !greeting.starts_with('2') {
            return Ok(());
        }
        return commands(&mut io, &state, &config, number, true)
            .await
            .map(|_| ());
    }
    reply(&mut io, &greeting).await?;
    if !greeting.starts_with('2') {
        return Ok(());
    }
    match commands(&mut io, &state, &config, number, false).await? {
        Flow::Quit => Ok(()),
        Flow::StartTls => {
            if config.broken_starttls {
                let mut tcp = io.into_inner();
                tcp.write_all(b"this is not a TLS server hello\r\n").await?;
                return tcp.shutdown().await;
            }
            let Some(tls) = config.tls.clone() else {
                return Ok(());
            };
            let tcp = io.into_inner();
            let stream = TlsAcceptor::from(tls).accept(tcp).await?;
            let mut io = BufReader::new(stream);
            commands(&mut io, &state, &config, number, true)
                .await
                .map(|_| ())
        }
    }
}

async fn reply<S: AsyncWrite + Unpin>(io: &mut S, line: &str) -> io::Result<()> {
    io.write_all(format!("{line}\r\n").as_bytes()).await?;
    io.flush().await
}

fn address(arg: &str) -> String {
    let start = arg.find('<').map(|i| i + 1).unwrap_or(0);
    let end = arg[start..]
        .find('>')
        .map(|i| start + i)
        .unwrap_or(arg.len());
    arg[start..end].to_string()
}

async fn commands<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
    state: &SinkState,
    config: &SinkConfig,
    number: usize,
    tls: bool,
) -> io::Result<Flow> {
    let offers_tls = (config.tls.is_some() || config.broken_starttls) && !config.implicit_tls;
    let mut authenticated = false;
    let mut in_session = 0usize;
    let mut from: Option<String> = None;
    let mut mail_params: Vec<String> = Vec::new();
    let mut rcpts: Vec<String> = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if io.read_line(&mut line).await? == 0 {
            return Ok(Flow::Quit);
        }
        let cmd = line.trim_end();
        let upper = cmd.to_ascii_uppercase();
        if upper.starts_with("EHLO") && config.refuse_ehlo {
            reply(io, "502 5.5.2 EHLO not supported").await?;
        } else if upper.starts_with("EHLO") {
            let mut lines = vec!["250-sink.test".to_string()];
            if config.pipelining {
                lines.push("250-PIPELINING".into());
            }
            if offers_tls && !tls {
                lines.push("250-STARTTLS".into());
            }
            if config.smtputf8 {
                lines.push("250-SMTPUTF8".into());
            }
            if let Some(auth) = config.auth.as_ref().filter(|_| tls) {
                lines.push(format!("250-AUTH {}", auth.mechanisms.join(" ")));
            }
            lines.push("250 8BITMIME".into());
            reply(io, &lines.join("\r\n")).await?;
        } else if upper.starts_with("HELO") {
            reply(io, "250 sink.test").await?;
        } else if upper == "STARTTLS" && offers_tls && !tls {
            reply(io, "220 2.0.0 go ahead").await?;
            return Ok(Flow::StartTls);
        } else if upper.starts_with("AUTH ") && tls && config.auth.is_some() {
            let auth = config.auth.clone().unwrap_or(SinkAuth {
                mechanisms: Vec::new(),
                reply: None,
            });
            let record = |l: &str| {
                state
                    .auth_lines
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(l.to_string());
            };
            record(cmd);
            let mut words = cmd.split_whitespace().skip(1);
            let mechanism = words.next().unwrap_or("").to_ascii_uppercase();
            let initial = words.next();
            if !auth.mechanisms.contains(&mechanism) {
                reply(io, "504 5.5.4 Unrecognized authentication type").await?;
                continue;
            }
            let rounds: &[&str] = match (mechanism.as_str(), initial) {
                ("LOGIN", _) => &["334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6"],
                (_, None) => &["334 "],
                _ => &[],
            };
            for prompt in rounds {
                reply(io, prompt).await?;
                line.clear();
                if io.read_line(&mut line).await? == 0 {
                    return Ok(Flow::Quit);
                }
                record(line.trim_end());
            }
            let r = auth
                .reply
                .clone()
                .unwrap_or_else(|| "235 2.7.0 Authentication successful".into());
            if mechanism == "XOAUTH2" && !r.starts_with('2') {
                // Google's form: an error challenge, answered by an empty line.
                reply(io, "334 eyJzdGF0dXMiOiI0MDEifQ==").await?;
                line.clear();
                if io.read_line(&mut line).await? == 0 {
                    return Ok(Flow::Quit);
                }
                record(line.trim_end());
            }
            authenticated = r.starts_with('2');
            reply(io, &r).await?;
        } else if upper.starts_with("MAIL FROM:") && config.auth.is_some() && !authenticated {
            reply(io, "530 5.7.0 Authentication required").await?;
        } else if upper.starts_with("MAIL FROM:") {
            let r = config
                .mail_reply
                .clone()
                .unwrap_or_else(|| "250 2.1.0 ok".into());
            if r.starts_with('2') {
                from = Some(address(&cmd[10..]));
                mail_params = cmd[10..]
                    .split_once('>')
                    .map(|(_, p)| p.split_whitespace().map(str::to_string).collect())
                    .unwrap_or_default();
                rcpts.clear();
            }
            reply(io, &r).await?;
        } else if upper.starts_with("RCPT TO:") {
            if from.is_none() {
                reply(io, "503 5.5.1 MAIL first").await?;
                continue;
            }
            let addr = address(&cmd[8..]);
            let r = config
                .rcpt_replies
                .get(&addr.to_ascii_lowercase())
                .cloned()
                .unwrap_or_else(|| "250 2.1.5 ok".into());
            if r.starts_with('2') {
                rcpts.push(addr);
            }
            reply(io, &r).await?;
        } else if upper == "DATA" {
            if from.is_none() || rcpts.is_empty() {
                reply(io, "554 5.5.1 no valid recipients").await?;
                continue;
            }
            reply(io, "354 end with .").await?;
            let mut data = Vec::new();
            loop {
                let mut raw = Vec::new();
                if io.read_until(b'\n', &mut raw).await? == 0 {
                    return Ok(Flow::Quit);
                }
                if raw == b".\r\n" || raw == b".\n" {
                    break;
                }
                let content = raw.strip_prefix(b".").unwrap_or(&raw);
                data.extend_from_slice(content);
            }
            let count = {
                let mut messages = state.messages.lock().unwrap_or_else(|e| e.into_inner());
                messages.push(ReceivedMessage {
                    mail_from: from.take().unwrap_or_default(),
                    mail_params: std::mem::take(&mut mail_params),
                    rcpt_to: std::mem::take(&mut rcpts),
                    data,
                    tls,
                    connection: number,
                });
                messages.len()
            };
            state.received.notify_waiters();
            if config.hold_after.is_some_and(|n| count > n) {
                loop {
                    let released = state.released.notified();
                    if state.release_flag.load(Ordering::SeqCst) {
                        break;
                    }
                    released.await;
                }
            }
            let r = config
                .data_reply
                .clone()
                .unwrap_or_else(|| "250 2.0.0 queued".into());
            reply(io, &r).await?;
            if let Some(extra) = &config.extra_reply_after_data {
                reply(io, extra).await?;
            }
            in_session += 1;
            if config.close_after.is_some_and(|n| in_session >= n) {
                return Ok(Flow::Quit);
            }
        } else if upper == "RSET" {
            from = None;
            rcpts.clear();
            reply(io, "250 2.0.0 ok").await?;
        } else if upper == "NOOP" {
            reply(io, "250 2.0.0 ok").await?;
        } else if upper == "QUIT" {
            reply(io, "221 2.0.0 bye").await?;
            return Ok(Flow::Quit);
        } else {
            reply(io, "502 5.5.2 unknown command").await?;
        }
    }
}

/// Errors making test certificates.
#[derive(Debug, thiserror::Error)]
pub enum TestPkiError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A certificate chain and its key.
#[derive(Debug)]
pub struct TestCert {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// PKCS#8 key.
    pub key: PrivateKeyDer<'static>,
}

impl TestCert {
    /// A rustls server configuration presenting this certificate.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TestPkiError> {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        Ok(Arc::new(config))
    }
}

/// A private test certificate authority.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM (write it to a route's `extra_ca_file`).
    pub cert_pem: String,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish()
    }
}

impl TestCa {
    /// A new CA named `common_name`.
    pub fn new(common_name: &str) -> Result<Self, TestPkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
        })
    }

    /// A leaf certificate for `names` (DNS names or IP literals) signed by this CA.
    pub fn issue(&self, names: &[&str]) -> Result<TestCert, TestPkiError> {
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(TestCert {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }
}

/// A self-signed certificate for `names`.
pub fn self_signed(names: &[&str]) -> Result<TestCert, TestPkiError> {
    let params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(TestCert {
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    })
}

/// Fixed RSA DKIM test keys (made once with `openssl genpkey`; published here, so never
/// use them for real mail).
pub mod dkim_keys {
    /// A 2048-bit RSA key, PKCS#8 PEM (`BEGIN PRIVATE KEY`).
    pub const RSA_2048_PKCS8: &str = include_str!("testdata/dkim-rsa2048.pem");
    /// The same key, PKCS#1 PEM (`BEGIN RSA PRIVATE KEY`).
    pub const RSA_2048_PKCS1: &str = include_str!("testdata/dkim-rsa2048-pkcs1.pem");
    /// Its public half as `openssl pkey -pubout -outform DER | base64` prints it: the
    /// SubjectPublicKeyInfo a DKIM record's `p=` carries.
    pub const RSA_2048_SPKI_BASE64: &str = include_str!("testdata/dkim-rsa2048.spki.b64");
    /// A 1024-bit RSA key, PKCS#8 PEM: too small for ring to sign with.
    pub const RSA_1024_PKCS8: &str = include_str!("testdata/dkim-rsa1024.pem");
}
