//! Shared by the end-to-end, fault and Redis tests: a relay config on loopback, a small SMTP client,
//! and a private `redis-server` process for the tests that need one.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use relay::RelayHandle;
use relay::config::*;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

/// A relay config: loopback listeners on port 0, loopback clients allowed
/// (OrganizationDomains), default route to `127.0.0.1:route_port`, quick retries.
pub fn config(spool: &Path, route_port: u16) -> RelayConfig {
    let mut cfg = RelayConfig::loopback(&spool.to_string_lossy(), route_port);
    cfg.delivery = DeliveryConfig {
        retry_schedule_seconds: vec![1],
        max_retry_delay_seconds: 1,
        ..DeliveryConfig::default()
    };
    cfg
}

/// A small SMTP client.
pub struct Client<S> {
    pub io: BufReader<S>,
}

impl<S: AsyncRead + Unpin> Client<S> {
    /// One (possibly multi-line) reply, lines joined with `\n`; `None` when the server
    /// closed the connection.
    pub async fn try_reply(&mut self) -> Option<String> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            match self.io.read_line(&mut line).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            let line = line.trim_end_matches("\r\n").to_string();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return Some(lines.join("\n"));
            }
        }
    }

    pub async fn reply(&mut self) -> String {
        self.try_reply()
            .await
            .expect("the server closed the connection")
    }

    /// True when the server closed the connection.
    pub async fn closed(&mut self) -> bool {
        let mut line = String::new();
        matches!(self.io.read_line(&mut line).await, Ok(0) | Err(_))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub async fn send(&mut self, line: &str) {
        self.io
            .get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
    }

    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(line).await;
        self.reply().await
    }

    /// MAIL, RCPTs, and DATA when at least one recipient was accepted. Returns the
    /// recipients accepted, every refusal reply, and the final reply (`None` when no
    /// recipient was accepted and the transaction was reset).
    pub async fn transaction(
        &mut self,
        from: &str,
        rcpts: &[String],
        body: &str,
    ) -> (Vec<String>, Vec<String>, Option<String>) {
        let r = self.cmd(&format!("MAIL FROM:<{from}>")).await;
        assert_eq!(r, "250 2.1.0 OK");
        let mut accepted = Vec::new();
        let mut refused = Vec::new();
        for rcpt in rcpts {
            let r = self.cmd(&format!("RCPT TO:<{rcpt}>")).await;
            if r == "250 2.1.5 OK" {
                accepted.push(rcpt.clone());
            } else {
                refused.push(r);
            }
        }
        if accepted.is_empty() {
            assert_eq!(self.cmd("RSET").await, "250 2.0.0 OK");
            return (accepted, refused, None);
        }
        let r = self.cmd("DATA").await;
        assert_eq!(r, "354 End data with <CR><LF>.<CR><LF>");
        let done = self.cmd(&format!("{body}\r\n.")).await;
        (accepted, refused, Some(done))
    }
}

/// Connects and reads the greeting.
pub async fn connect(addr: SocketAddr) -> Client<TcpStream> {
    let mut c = Client {
        io: BufReader::new(TcpStream::connect(addr).await.unwrap()),
    };
    assert_eq!(c.reply().await, "220 relay.acme.example ESMTP");
    c
}

/// Connects from a chosen loopback source address (Linux routes all of 127/8 to lo).
pub async fn connect_from(src: &str, addr: SocketAddr) -> Client<TcpStream> {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
    let mut c = Client {
        io: BufReader::new(sock.connect(addr).await.unwrap()),
    };
    assert_eq!(c.reply().await, "220 relay.acme.example ESMTP");
    c
}

/// The queue id of a `250 2.0.0 OK queued as ID` reply.
pub fn queue_id(reply: &str) -> String {
    reply
        .strip_prefix("250 2.0.0 OK queued as ")
        .unwrap_or_else(|| panic!("not a queued reply: {reply}"))
        .to_string()
}

/// A private `redis-server` on 127.0.0.1, without persistence; killed on drop.
pub struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    /// Starts one on a free port.
    pub fn start() -> Self {
        let port = {
            let l = StdListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        Self::start_on(port)
    }

    /// Starts one on `port` (to bring Redis back where the relay expects it).
    pub fn start_on(port: u16) -> Self {
        ensure_redis_server();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run redis-server ({e}); it could not be installed either \
                     (Debian package `redis-server`)"
                )
            });
        let mut server = Self { child, port };
        // Bounded: up to 10 s for the server to answer PING.
        for _ in 0..200 {
            if server.ping() {
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("redis-server exited at start ({status}); is port {port} taken?");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server on port {port} did not answer PING");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// `GET key` over RESP: the string value, `None` when the key is absent.
    pub fn get(&self, key: &str) -> Option<String> {
        use std::io::{BufRead, Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()).unwrap();
        let mut r = std::io::BufReader::new(s);
        let mut header = String::new();
        r.read_line(&mut header).unwrap();
        let len: i64 = header
            .trim_end()
            .strip_prefix('$')
            .unwrap()
            .parse()
            .unwrap();
        if len < 0 {
            return None;
        }
        let mut value = vec![0u8; len as usize + 2];
        r.read_exact(&mut value).unwrap();
        value.truncate(len as usize);
        Some(String::from_utf8(value).unwrap())
    }

    /// Kills the server and waits for it to exit.
    pub fn stop(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

/// Makes sure `redis-server` is on the PATH, installing Debian's package when it is not
/// (as the container tests install debootstrap), once per test binary. A machine where that
/// is impossible (not root, no package index) gets a clear panic naming the package.
fn ensure_redis_server() {
    static INSTALLED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let result = INSTALLED.get_or_init(|| {
        let present = || {
            Command::new("redis-server")
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if present() {
            return Ok(());
        }
        // One installer at a time across test binaries running in parallel.
        let lock =
            std::fs::File::create(std::env::temp_dir().join("relay-tests-redis-install.lock"))
                .map_err(|e| e.to_string())?;
        lock.lock().map_err(|e| e.to_string())?;
        if present() {
            return Ok(());
        }
        eprintln!("redis-server is missing: installing Debian's redis-server package");
        let run = |args: &[&str]| {
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null())
                .status()
                .map_err(|e| format!("apt-get: {e}"))
                .and_then(|s| {
                    if s.success() {
                        Ok(())
                    } else {
                        Err(format!("apt-get {args:?}: {s}"))
                    }
                })
        };
        run(&["update", "-qq"])?;
        run(&[
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "redis-server",
        ])?;
        // The package starts a system instance on 6379; the tests use their own.
        let _ = Command::new("sh")
            .args(["-c", "service redis-server stop || true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if present() {
            Ok(())
        } else {
            Err("installed, but still not runnable".into())
        }
    });
    if let Err(e) = result {
        panic!(
            "redis-server is needed by the Redis limit-store tests and could not be installed: {e}"
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A self-signed certificate for `localhost` written to `dir`: the relay's TLS files and
/// the certificate (DER) for a client to trust.
pub fn tls_files(dir: &Path) -> (TlsFiles, Vec<u8>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.join("tls.crt");
    let key = dir.join("tls.key");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (
        TlsFiles {
            cert_file: cert.to_string_lossy().into_owned(),
            key_file: key.to_string_lossy().into_owned(),
        },
        ck.cert.der().to_vec(),
    )
}

/// A TLS client trusting only `cert_der`.
pub fn connector(cert_der: &[u8]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(cert_der.to_vec()))
        .unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
}

/// Recipients of every message in a relay's spool.
pub fn spooled_recipients(relay: &RelayHandle) -> usize {
    let spool = relay.spool();
    spool
        .list()
        .into_iter()
        .map(|id| spool.read(id).unwrap().0.rcpts.len())
        .sum()
}

/// The relay's `/metrics` page, headers included.
pub async fn metrics(relay: &RelayHandle) -> String {
    use tokio::io::AsyncReadExt;
    let mut s = TcpStream::connect(relay.admin_addr()).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
