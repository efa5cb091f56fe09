//! A plain SMTP client over tokio for the in-process tier: one command, one reply, and a
//! transcript of both directions to print when a case fails.
//!
//! It connects from a chosen local address (any 127.0.0.0/8 address or ::1, so one host
//! can play many clients), upgrades with STARTTLS through rustls (ring provider, trusting
//! only the certificate the test gives it) and speaks AUTH PLAIN. It does not retry,
//! pipeline or interpret replies; the caller compares them with the model.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;
use tokio_rustls::TlsConnector;

/// How long to wait for any one reply before calling the relay stuck.
const REPLY_TIMEOUT: Duration = Duration::from_secs(20);

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// An SMTP client connection.
pub struct Client {
    io: Option<BufReader<Box<dyn Stream>>>,
    /// `C: ...` and `S: ...` lines, in order.
    pub transcript: Vec<String>,
}

/// Base64 without padding surprises (RFC 4648), for AUTH PLAIN.
pub fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A rustls client config that trusts exactly `root` (the relay's test certificate).
pub fn trusting(root: CertificateDer<'static>) -> io::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).map_err(io::Error::other)?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(io::Error::other)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

impl Client {
    /// Connects from `local` (port chosen by the OS) to `server` and reads the greeting.
    pub async fn connect(local: IpAddr, server: SocketAddr) -> io::Result<(Self, String)> {
        let socket = match local {
            IpAddr::V4(_) => TcpSocket::new_v4()?,
            IpAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(local, 0))?;
        let stream = socket.connect(server).await?;
        let mut client = Self {
            io: Some(BufReader::new(Box::new(stream))),
            transcript: vec![format!("-- connect from {local} to {server}")],
        };
        let greeting = client.read_reply().await?;
        Ok((client, greeting))
    }

    fn io(&mut self) -> io::Result<&mut BufReader<Box<dyn Stream>>> {
        self.io
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "connection lost"))
    }

    /// Reads one (possibly multi-line) reply; returns it without line endings, lines
    /// joined by `\n`.
    pub async fn read_reply(&mut self) -> io::Result<String> {
        let mut reply = Vec::new();
        loop {
            let mut line = String::new();
            let io = self.io()?;
            let n = tokio::time::timeout(REPLY_TIMEOUT, io.read_line(&mut line))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no reply"))??;
            if n == 0 {
                self.transcript.push("S: <connection closed>".into());
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ));
            }
            let line = line.trim_end().to_string();
            self.transcript.push(format!("S: {line}"));
            let more = line.as_bytes().get(3) == Some(&b'-');
            reply.push(line);
            if !more {
                return Ok(reply.join("\n"));
            }
        }
    }

    /// Sends one line (CRLF added) without reading.
    pub async fn send_line(&mut self, line: &str) -> io::Result<()> {
        self.transcript.push(format!("C: {line}"));
        let io = self.io()?;
        io.get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .await?;
        io.get_mut().flush().await
    }

    /// Sends a command and reads its reply.
    pub async fn command(&mut self, line: &str) -> io::Result<String> {
        self.send_line(line).await?;
        self.read_reply().await
    }

    /// `STARTTLS`; on `220` runs the handshake for `name` and returns the reply.
    pub async fn starttls(
        &mut self,
        tls: Arc<rustls::ClientConfig>,
        name: &str,
    ) -> io::Result<String> {
        let reply = self.command("STARTTLS").await?;
        if !reply.starts_with("220") {
            return Ok(reply);
        }
        let plain = self
            .io
            .take()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "connection lost"))?
            .into_inner();
        let name = ServerName::try_from(name.to_string()).map_err(io::Error::other)?;
        let stream = TlsConnector::from(tls).connect(name, plain).await?;
        self.transcript.push("-- TLS established".into());
        self.io = Some(BufReader::new(Box::new(stream)));
        Ok(reply)
    }

    /// `AUTH PLAIN` with an initial response.
    pub async fn auth_plain(&mut self, user: &str, password: &str) -> io::Result<String> {
        let token = base64(format!("\0{user}\0{password}").as_bytes());
        self.command(&format!("AUTH PLAIN {token}")).await
    }

    /// `DATA`; on `354` sends `text` (CRLF lines, no dot-stuffing needed) and the final dot,
    /// and returns the final reply; otherwise the reply to DATA.
    pub async fn data(&mut self, text: &str) -> io::Result<String> {
        let reply = self.command("DATA").await?;
        if !reply.starts_with("354") {
            return Ok(reply);
        }
        self.transcript.push("C: <message text>".into());
        let io = self.io()?;
        io.get_mut().write_all(text.as_bytes()).await?;
        io.get_mut().write_all(b".\r\n").await?;
        io.get_mut().flush().await?;
        self.read_reply().await
    }
}

#[cfg(test)]
mod tests {
    use super::base64;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}
