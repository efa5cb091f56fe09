//! OAuth 2.0 client-credentials tokens for XOAUTH2 routes (RFC 6749 §4.4).
//!
//! [`TokenCache::token`] returns the access token of a route's
//! [`ClientCredentialsConfig`]: the cached one while it has more than
//! [`REFRESH_MARGIN`] left, else a new one from the token endpoint. The request is an
//! HTTPS POST (hyper over tokio-rustls; the endpoint's certificate is verified against the
//! public roots plus the route's CA file, and must name the endpoint's host) with the
//! form `grant_type=client_credentials`, `client_id`, `client_secret` (read from the
//! mounted Secret's file at each fetch, so a rotated secret is used at the next refresh)
//! and `scope`. Errors name the endpoint and the HTTP status or the OAuth `error` field,
//! never the secret or the token. A token's `expires_in` is trusted up to
//! [`MAX_TOKEN_LIFETIME`] (one day): an endpoint that answers a larger number, up to
//! 2^64 - 1 seconds, gets a token refreshed daily, not a panic on time arithmetic. This
//! module does not speak SMTP.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::tls::{CertificateCheck, TlsPolicy, TlsRequirement};
use crate::clock::Clock;
use crate::config::ClientCredentialsConfig;

/// A token is refreshed when less than this is left of its lifetime.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(120);

/// The longest a token is used, whatever `expires_in` says.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Longest token response read, in bytes.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// How long one token request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Endpoint, client id and scope.
type TokenKey = (String, String, String);
/// A token and when it expires.
type Tokens = HashMap<TokenKey, (String, SystemTime)>;

/// Access tokens by endpoint, client id and scope, each until its expiry.
pub struct TokenCache {
    tokens: Mutex<Tokens>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache").finish_non_exhaustive()
    }
}

impl TokenCache {
    /// An empty cache reading the time from `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            tokens: Mutex::new(HashMap::new()),
            clock,
        }
    }

    /// A valid access token for `cc`: cached, or fetched now.
    pub async fn token(&self, cc: &ClientCredentialsConfig) -> Result<String, String> {
        let key = (
            cc.token_endpoint.clone(),
            cc.client_id.clone(),
            cc.scope.clone().unwrap_or_default(),
        );
        let now = self.clock.now();
        if let Some((token, expires)) = self.lock().get(&key)
            && now
                .checked_add(REFRESH_MARGIN)
                .is_some_and(|soon| soon < *expires)
        {
            return Ok(token.clone());
        }
        let (token, lifetime) = fetch(cc).await?;
        let now = self.clock.now();
        let expires = now
            .checked_add(lifetime.min(MAX_TOKEN_LIFETIME))
            .unwrap_or(now);
        self.lock().insert(key, (token.clone(), expires));
        Ok(token)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tokens> {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One token request: the token and how long it lives.
async fn fetch(cc: &ClientCredentialsConfig) -> Result<(String, Duration), String> {
    let endpoint = &cc.token_endpoint;
    let fail = |what: String| format!("token endpoint {endpoint}: {what}");
    let secret = std::fs::read_to_string(&cc.client_secret_file)
        .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
        .map_err(|e| {
            format!(
                "cannot read the client secret ({}): {e}",
                cc.client_secret_file
            )
        })?;
    let uri: hyper::Uri = endpoint
        .parse()
        .map_err(|e| fail(format!("not a URL: {e}")))?;
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
    let body = {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials");
        form.append_pair("client_id", &cc.client_id);
        form.append_pair("client_secret", &secret);
        if let Some(scope) = &cc.scope {
            form.append_pair("scope", scope);
        }
        form.finish()
    };

    let policy = TlsPolicy {
        requirement: TlsRequirement::Required,
        check: CertificateCheck::CaSignedAndHostname,
        extra_ca_file: cc.ca_file.clone(),
        implicit: true,
    };
    let tls_config = policy.client_config().map_err(|e| fail(e.to_string()))?;
    let name = ServerName::try_from(host.clone()).map_err(|e| fail(e.to_string()))?;
    let request = async {
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| fail(format!("connect failed: {e}")))?;
        let tls = TlsConnector::from(tls_config)
            .connect(name, tcp)
            .await
            .map_err(|e| fail(format!("TLS failed: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| fail(e.to_string()))?;
        tokio::spawn(conn);
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let req = hyper::Request::post(path)
            .header(
                hyper::header::HOST,
                uri.authority().map_or("", |a| a.as_str()),
            )
            .header(
                hyper::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(hyper::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| fail(e.to_string()))?;
        let response = sender
            .send_request(req)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let status = response.status();
        let limited = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE_BYTES);
        let bytes = limited
            .collect()
            .await
            .map_err(|e| fail(format!("reading the response: {e}")))?
            .to_bytes();
        Ok::<_, String>((status, bytes))
    };
    let (status, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, request)
        .await
        .map_err(|_| fail(format!("no answer within {REQUEST_TIMEOUT:?}")))??;
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    if !status.is_success() {
        let error = json
            .get("error")
            .and_then(|e| e.as_str())
            .unwrap_or("no OAuth error given");
        return Err(fail(format!("HTTP {status}: {error}")));
    }
    let token = json
        .get("access_token")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| fail("the response has no access_token".into()))?;
    let lifetime = json
        .get("expires_in")
        .and_then(|e| {
            e.as_u64()
                .or_else(|| e.as_str().and_then(|s| s.parse().ok()))
        })
        .unwrap_or(3600);
    // Bounded here too, so no caller sees a lifetime beyond a day.
    let lifetime = Duration::from_secs(lifetime).min(MAX_TOKEN_LIFETIME);
    Ok((token.to_string(), lifetime))
}
