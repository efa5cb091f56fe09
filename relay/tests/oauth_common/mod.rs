//! Shared by the XOAUTH2 token tests: a loopback HTTPS token endpoint that records what it
//! is sent, a loopback CONNECT proxy that records its CONNECT lines, and a test service
//! account key (an RSA key made for these tests only, with its public half in PKCS#1 DER
//! as `openssl rsa -RSAPublicKey_out` wrote it).

#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use relay::delivery::testing::TestCa;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// PKCS#8 PEM of the test service account's RSA key.
pub const TEST_KEY_PEM: &str = include_str!("test-service-account.key.pem");

/// The public half of [`TEST_KEY_PEM`] (PKCS#1 `RSAPublicKey`, DER).
pub const TEST_PUBLIC_KEY_DER: &[u8] = include_bytes!("test-service-account.pub.der");

/// The test service account's address.
pub const SERVICE_ACCOUNT: &str = "relay@acme-mail.iam.gserviceaccount.com";

/// A service account JSON key as Google's console writes it, for `token_uri`.
pub fn service_account_json(token_uri: &str) -> String {
    serde_json::json!({
        "type": "service_account",
        "project_id": "acme-mail",
        "private_key_id": "0123456789abcdef",
        "private_key": TEST_KEY_PEM,
        "client_email": SERVICE_ACCOUNT,
        "client_id": "100000000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    })
    .to_string()
}

/// A one-route HTTPS token endpoint on 127.0.0.1 (certificate for `localhost` from the
/// test CA): answers each POST with the next token (`token-1`, `token-2`, …) living
/// `expires_in` seconds, or with a fixed status and body; records every request body.
pub struct Endpoint {
    pub port: u16,
    pub bodies: Arc<Mutex<Vec<String>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Endpoint {
    /// `https://localhost:<port>/token`.
    pub fn url(&self) -> String {
        format!("https://localhost:{}/token", self.port)
    }

    /// The form fields of the `i`th request, in order.
    pub fn form(&self, i: usize) -> Vec<(String, String)> {
        let body = self.bodies.lock().unwrap()[i].clone();
        form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect()
    }

    pub fn requests(&self) -> usize {
        self.bodies.lock().unwrap().len()
    }
}

/// What the endpoint answers.
#[derive(Clone)]
pub enum Answer {
    /// 200 with `token-<n>` living this many seconds.
    Tokens(u64),
    /// This status, content type and body.
    Fixed(u16, &'static str, String),
}

pub async fn endpoint(ca: &TestCa, answer: Answer) -> Endpoint {
    let cert = ca.issue(&["localhost"]).unwrap();
    let acceptor = TlsAcceptor::from(cert.server_config().unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = bodies.clone();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let Some(body) = read_request(&mut tls).await else {
                continue;
            };
            let n = {
                let mut b = seen.lock().unwrap();
                b.push(body);
                b.len()
            };
            let (status, content_type, body) = match &answer {
                Answer::Tokens(expires_in) => (
                    200,
                    "application/json",
                    format!(
                        r#"{{"access_token":"token-{n}","token_type":"Bearer","expires_in":{expires_in}}}"#
                    ),
                ),
                Answer::Fixed(status, content_type, body) => (*status, *content_type, body.clone()),
            };
            let response = format!(
                "HTTP/1.1 {status} Answer\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tls.write_all(response.as_bytes()).await;
            let _ = tls.shutdown().await;
        }
    });
    Endpoint {
        port,
        bodies,
        _task: task,
    }
}

/// Headers, then Content-Length bytes of body: the body.
async fn read_request<S: AsyncReadExt + Unpin>(s: &mut S) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if body.len() >= len {
                return Some(body.to_string());
            }
        }
    }
}

/// A loopback HTTP proxy that only tunnels (`CONNECT`), always to 127.0.0.1 at the port
/// asked for, and records each request line.
pub struct ConnectProxy {
    pub port: u16,
    pub lines: Arc<Mutex<Vec<String>>>,
    _task: tokio::task::JoinHandle<()>,
}

pub async fn connect_proxy() -> ConnectProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let seen = lines.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let line = head.lines().next().unwrap_or_default().to_string();
                seen.lock().unwrap().push(line.clone());
                let target_port = line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|t| t.rsplit_once(':'))
                    .and_then(|(_, p)| p.parse::<u16>().ok());
                let (true, Some(target_port)) = (line.starts_with("CONNECT "), target_port) else {
                    let _ = client
                        .write_all(b"HTTP/1.1 405 Only CONNECT\r\nContent-Length: 0\r\n\r\n")
                        .await;
                    return;
                };
                let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", target_port)).await else {
                    let _ = client
                        .write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                        .await;
                    return;
                };
                let _ = client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    ConnectProxy {
        port,
        lines,
        _task: task,
    }
}
