//! One HTTPS exchange with a token endpoint, directly or through the proxy that
//! `HTTPS_PROXY` names.
//!
//! [`Transport::send`] takes a request with an absolute `https://` URI and returns the
//! response with its body read (at most [`MAX_RESPONSE_BYTES`]), within
//! [`REQUEST_TIMEOUT`]. The endpoint's certificate is verified against the public roots
//! plus the route's CA file and must name the endpoint's host, proxy or not: the proxy
//! only ever sees a `CONNECT host:port` tunnel (hyper-util's `Tunnel`), never the request.
//! Which proxy, if any, follows curl's reading of `HTTPS_PROXY`/`https_proxy`,
//! `ALL_PROXY` and `NO_PROXY` (hyper-util's `Matcher`), read once when the relay starts.
//! The OAuth grants (`super`) build the requests and read the answers; this module knows
//! nothing of OAuth.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tower_service::Service;

use super::super::tls::{CertificateCheck, TlsPolicy, TlsRequirement};

/// Longest token response read, in bytes.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// How long one token request may take, proxy included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why no answer came back: what failed, without the request's content.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(pub String);

/// HTTPS to token endpoints, through a proxy where the environment asks for one.
pub struct Transport {
    proxy: Matcher,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The proxy URI may carry credentials: not printed.
        f.debug_struct("Transport").finish_non_exhaustive()
    }
}

impl Transport {
    /// Proxies as the process environment names them (`HTTPS_PROXY`, `NO_PROXY`, …).
    pub fn from_env() -> Self {
        Self {
            proxy: Matcher::from_env(),
        }
    }

    /// Sends `request` to the `https://` URI it names; `ca_file` adds trusted roots.
    pub async fn send(
        &self,
        request: http::Request<Vec<u8>>,
        ca_file: Option<&str>,
    ) -> Result<http::Response<Vec<u8>>, TransportError> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(request, ca_file))
            .await
            .map_err(|_| TransportError(format!("no answer within {REQUEST_TIMEOUT:?}")))?
    }

    async fn exchange(
        &self,
        request: http::Request<Vec<u8>>,
        ca_file: Option<&str>,
    ) -> Result<http::Response<Vec<u8>>, TransportError> {
        let fail = |what: String| TransportError(what);
        let uri = request.uri().clone();
        if uri.scheme_str() != Some("https") {
            return Err(fail("only https:// endpoints are used".into()));
        }
        let host = uri
            .host()
            .ok_or_else(|| fail("no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let policy = TlsPolicy {
            requirement: TlsRequirement::Required,
            check: CertificateCheck::CaSignedAndHostname,
            extra_ca_file: ca_file.map(str::to_string),
            implicit: true,
        };
        let tls_config = policy.client_config().map_err(|e| fail(e.to_string()))?;
        let name = ServerName::try_from(host.clone()).map_err(|e| fail(e.to_string()))?;

        let tcp = match self.proxy.intercept(&uri) {
            Some(proxy) => {
                // Spoken to in plain HTTP; a TLS or SOCKS proxy would fail less clearly.
                if proxy.uri().scheme_str() != Some("http") {
                    return Err(fail(format!(
                        "the proxy must be an http:// URL (HTTPS_PROXY or ALL_PROXY), not {}://",
                        proxy.uri().scheme_str().unwrap_or("")
                    )));
                }
                let mut tunnel = Tunnel::new(proxy.uri().clone(), HttpConnector::new());
                if let Some(auth) = proxy.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                // Named without its user info, which may hold a password.
                let via = format!(
                    "proxy {}",
                    proxy.uri().host().unwrap_or("(no host)").to_owned()
                        + &proxy
                            .uri()
                            .port_u16()
                            .map(|p| format!(":{p}"))
                            .unwrap_or_default()
                );
                std::future::poll_fn(|cx| tunnel.poll_ready(cx))
                    .await
                    .map_err(|e| fail(format!("{via}: {}", chain(&e))))?;
                tunnel
                    .call(uri.clone())
                    .await
                    .map_err(|e| fail(format!("{via}: CONNECT failed: {}", chain(&e))))?
                    .into_inner()
            }
            None => TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| fail(format!("connect failed: {e}")))?,
        };
        let tls = TlsConnector::from(tls_config)
            .connect(name, tcp)
            .await
            .map_err(|e| fail(format!("TLS failed: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| fail(e.to_string()))?;
        tokio::spawn(conn);

        // Origin form on the wire; the authority goes in `Host`.
        let (parts, body) = request.into_parts();
        let mut outgoing = hyper::Request::builder()
            .method(parts.method)
            .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(
                hyper::header::HOST,
                uri.authority().map_or("", |a| a.as_str()),
            );
        for (name, value) in &parts.headers {
            outgoing = outgoing.header(name, value);
        }
        let outgoing = outgoing
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| fail(e.to_string()))?;
        let response = sender
            .send_request(outgoing)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let (parts, body) = response.into_parts();
        let bytes = http_body_util::Limited::new(body, MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| fail(format!("reading the response: {e}")))?
            .to_bytes();
        Ok(http::Response::from_parts(parts, bytes.to_vec()))
    }
}

/// An error and its causes, `: `-separated.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_proxy_other_than_http_is_refused_by_name() {
        let transport = Transport {
            proxy: Matcher::builder()
                .all("socks5://user:password@127.0.0.1:1080")
                .build(),
        };
        let request = http::Request::post("https://oauth2.example/token")
            .body(Vec::new())
            .unwrap();
        let err = transport.send(request, None).await.unwrap_err().to_string();
        assert!(err.contains("must be an http:// URL"), "{err}");
        assert!(!err.contains("password"), "{err}");
    }
}
