//! OAuth 2.0 access tokens for XOAUTH2 routes, by the route's grant.
//!
//! [`TokenCache::token`] returns the access token of a route's [`OAuthGrant`]: the cached
//! one while it has more than [`REFRESH_MARGIN`] left, else a new one from the token
//! endpoint, one request per token at a time; a failure is answered from memory for
//! [`FAILURE_HOLD`] before the endpoint is asked again. Three grants, each for the providers that offer it:
//!
//! - client credentials (RFC 6749 §4.4; Microsoft 365): the form
//!   `grant_type=client_credentials`, `client_id`, `client_secret`, `scope`;
//! - refresh token (RFC 6749 §6; Gmail through an OAuth client): `grant_type=refresh_token`,
//!   `refresh_token`, `client_id`, `client_secret`, built and read by the `oauth2` crate,
//!   which is given the relay's own HTTP client (no `reqwest`, no second TLS stack);
//! - JWT bearer (RFC 7523; Google service accounts with domain-wide delegation):
//!   `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` and an `assertion` signed
//!   with the account's key for the route's user ([`service_account`]), posted to the key's
//!   `token_uri`. `oauth2` has no such grant, so the form is built here.
//!
//! Client credentials keep their hand-built form and lenient reading (an `expires_in` sent
//! as a string, as Azure AD v1 endpoints do, is understood; `oauth2` refuses it), shared
//! with the JWT bearer grant. Secrets, refresh tokens and keys are read from the mounted
//! Secret's files at each fetch, so a rotated Secret is used at the next refresh. Every
//! request goes through [`transport`]: HTTPS with the endpoint's certificate checked,
//! through `HTTPS_PROXY` when set. Errors name the endpoint and what it answered (HTTP
//! status, OAuth `error` and `error_description`, or the start of a body that is not
//! OAuth JSON; at most [`MAX_ANSWER_CHARS`] characters of it), never a secret or a token.
//! A token's `expires_in` is trusted up to [`MAX_TOKEN_LIFETIME`] (one day): an endpoint
//! that answers a larger number, up to 2^64 - 1 seconds, gets a token refreshed daily, not
//! a panic on time arithmetic. This module does not speak SMTP.

pub mod service_account;
pub mod transport;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use oauth2::basic::{BasicClient, BasicRequestTokenError};
use oauth2::{AuthType, ClientId, ClientSecret, RefreshToken, TokenResponse, TokenUrl};

use crate::clock::Clock;
use crate::config::{
    ClientCredentialsConfig, OAuthGrant, RefreshTokenConfig, ServiceAccountConfig,
};
use service_account::ServiceAccountKey;
use transport::{Transport, TransportError};

/// A token is refreshed when less than this is left of its lifetime.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(120);

/// The longest a token is used, whatever `expires_in` says.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// After a failed fetch, deliveries needing that token get the same error for this long
/// instead of each asking the endpoint again (a queue of mail to a route whose refresh
/// token was revoked does not hammer the provider).
pub const FAILURE_HOLD: Duration = Duration::from_secs(30);

/// The lifetime assumed when an endpoint gives no `expires_in`.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// Most characters of an endpoint's answer quoted in an error.
pub const MAX_ANSWER_CHARS: usize = 300;

/// The JWT bearer grant type (RFC 7523 §2.1).
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// What a token is cached under: the grant's kind and what identifies its token.
type TokenKey = (&'static str, String, String, String);
/// Tokens with when they expire, and the lock each fetch holds.
#[derive(Default)]
struct CacheState {
    tokens: HashMap<TokenKey, (String, SystemTime)>,
    fetching: HashMap<TokenKey, Arc<tokio::sync::Mutex<()>>>,
    /// The last failed fetch's error and when it happened.
    failures: HashMap<TokenKey, (String, SystemTime)>,
}

/// Access tokens by grant, each until its expiry.
pub struct TokenCache {
    state: Mutex<CacheState>,
    clock: Arc<dyn Clock>,
    transport: Transport,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache").finish_non_exhaustive()
    }
}

impl TokenCache {
    /// An empty cache reading the time from `clock`; requests go through the proxy the
    /// environment names (`HTTPS_PROXY`, `NO_PROXY`), as read now.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            state: Mutex::new(CacheState::default()),
            clock,
            transport: Transport::from_env(),
        }
    }

    /// A valid access token for `grant` on behalf of `user` (the route's SMTP user name,
    /// which a service account impersonates): cached, or fetched now.
    pub async fn token(&self, grant: OAuthGrant<'_>, user: &str) -> Result<String, String> {
        let key: TokenKey = match grant {
            OAuthGrant::ClientCredentials(cc) => (
                "client_credentials",
                cc.token_endpoint.clone(),
                cc.client_id.clone(),
                cc.scope.clone().unwrap_or_default(),
            ),
            OAuthGrant::RefreshToken(rt) => (
                "refresh_token",
                rt.token_endpoint.clone(),
                rt.client_id.clone(),
                rt.refresh_token_file.clone(),
            ),
            OAuthGrant::ServiceAccount(sa) => (
                "jwt_bearer",
                sa.key_file.clone(),
                user.to_string(),
                sa.scope.clone(),
            ),
        };
        if let Some(token) = self.cached(&key) {
            return Ok(token);
        }
        // One fetch per token at a time: deliveries that find it expired together wait
        // for the first one's answer instead of each asking the endpoint.
        let fetching = self.lock().fetching.entry(key.clone()).or_default().clone();
        let _fetching = fetching.lock().await;
        if let Some(token) = self.cached(&key) {
            return Ok(token);
        }
        if let Some(error) = self.recent_failure(&key) {
            return Err(error);
        }
        let fetched = match grant {
            OAuthGrant::ClientCredentials(cc) => self.client_credentials(cc).await,
            OAuthGrant::RefreshToken(rt) => self.refresh_token(rt).await,
            OAuthGrant::ServiceAccount(sa) => self.service_account(sa, user).await,
        };
        let now = self.clock.now();
        let mut state = self.lock();
        match fetched {
            Ok((token, lifetime)) => {
                let expires = now
                    .checked_add(lifetime.min(MAX_TOKEN_LIFETIME))
                    .unwrap_or(now);
                state.failures.remove(&key);
                state.tokens.insert(key, (token.clone(), expires));
                Ok(token)
            }
            Err(error) => {
                state.failures.insert(key, (error.clone(), now));
                Err(error)
            }
        }
    }

    /// The error of a fetch less than [`FAILURE_HOLD`] ago.
    fn recent_failure(&self, key: &TokenKey) -> Option<String> {
        let now = self.clock.now();
        let state = self.lock();
        let (error, at) = state.failures.get(key)?;
        at.checked_add(FAILURE_HOLD)
            .is_some_and(|until| now < until)
            .then(|| error.clone())
    }

    /// The token under `key` while it has more than [`REFRESH_MARGIN`] left.
    fn cached(&self, key: &TokenKey) -> Option<String> {
        let now = self.clock.now();
        let state = self.lock();
        let (token, expires) = state.tokens.get(key)?;
        now.checked_add(REFRESH_MARGIN)
            .is_some_and(|soon| soon < *expires)
            .then(|| token.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn client_credentials(
        &self,
        cc: &ClientCredentialsConfig,
    ) -> Result<(String, Duration), String> {
        let secret = read_secret(&cc.client_secret_file, "the client secret")?;
        let form = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "client_credentials");
            form.append_pair("client_id", &cc.client_id);
            form.append_pair("client_secret", &secret);
            if let Some(scope) = &cc.scope {
                form.append_pair("scope", scope);
            }
            form.finish()
        };
        self.post_form(&cc.token_endpoint, form, cc.ca_file.as_deref())
            .await
    }

    async fn service_account(
        &self,
        sa: &ServiceAccountConfig,
        user: &str,
    ) -> Result<(String, Duration), String> {
        let key = ServiceAccountKey::read(&sa.key_file)?;
        let assertion = key.assertion(user, &sa.scope, self.clock.now())?;
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", JWT_BEARER_GRANT)
            .append_pair("assertion", &assertion)
            .finish();
        self.post_form(&key.token_uri, form, sa.ca_file.as_deref())
            .await
    }

    /// POSTs a form to `endpoint` and reads a token response (RFC 6749 §5).
    async fn post_form(
        &self,
        endpoint: &str,
        form: String,
        ca_file: Option<&str>,
    ) -> Result<(String, Duration), String> {
        let fail = |what: String| format!("token endpoint {endpoint}: {what}");
        let request = http::Request::post(endpoint)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json")
            .body(form.into_bytes())
            .map_err(|e| fail(format!("not a URL: {e}")))?;
        let response = self
            .transport
            .send(request, ca_file)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let status = response.status();
        let json: Option<serde_json::Value> = serde_json::from_slice(response.body()).ok();
        if !status.is_success() {
            return Err(fail(answer(status, response.body())));
        }
        let Some(json) = json else {
            return Err(fail(answer(status, response.body())));
        };
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
            .map_or(DEFAULT_LIFETIME, Duration::from_secs);
        // Bounded here too, so no caller sees a lifetime beyond a day.
        Ok((token.to_string(), lifetime.min(MAX_TOKEN_LIFETIME)))
    }

    async fn refresh_token(&self, rt: &RefreshTokenConfig) -> Result<(String, Duration), String> {
        let endpoint = &rt.token_endpoint;
        let fail = |what: String| format!("token endpoint {endpoint}: {what}");
        let secret = read_secret(&rt.client_secret_file, "the client secret")?;
        let refresh = read_secret(&rt.refresh_token_file, "the refresh token")?;
        let client = BasicClient::new(ClientId::new(rt.client_id.clone()))
            .set_client_secret(ClientSecret::new(secret))
            // In the form, as Google documents it (and every provider accepts).
            .set_auth_type(AuthType::RequestBody)
            .set_token_uri(
                TokenUrl::new(endpoint.clone()).map_err(|e| fail(format!("not a URL: {e}")))?,
            );
        let http_client = OAuth2Client {
            transport: &self.transport,
            ca_file: rt.ca_file.as_deref(),
            last_status: Mutex::new(None),
        };
        let refresh = RefreshToken::new(refresh);
        let result = client
            .exchange_refresh_token(&refresh)
            .request_async(&http_client)
            .await;
        let status = *http_client
            .last_status
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(response) => {
                let lifetime = response.expires_in().unwrap_or(DEFAULT_LIFETIME);
                let token = response.access_token().secret();
                if token.is_empty() {
                    return Err(fail("the response has no access_token".into()));
                }
                Ok((token.clone(), lifetime.min(MAX_TOKEN_LIFETIME)))
            }
            Err(e) => Err(fail(refresh_error(e, status))),
        }
    }
}

/// The relay's HTTP client as `oauth2` calls it, keeping the status of the last answer for
/// errors `oauth2` reports without it.
struct OAuth2Client<'a> {
    transport: &'a Transport,
    ca_file: Option<&'a str>,
    last_status: Mutex<Option<http::StatusCode>>,
}

impl<'c> oauth2::AsyncHttpClient<'c> for OAuth2Client<'_> {
    type Error = TransportError;
    // Boxed and `Send`, so a delivery task holding it can move between threads.
    type Future =
        Pin<Box<dyn Future<Output = Result<oauth2::HttpResponse, TransportError>> + Send + 'c>>;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(async move {
            let response = self.transport.send(request, self.ca_file).await?;
            *self.last_status.lock().unwrap_or_else(|e| e.into_inner()) = Some(response.status());
            Ok(response)
        })
    }
}

/// A mounted Secret file's content, without its final line break.
fn read_secret(path: &str, what: &str) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
        .map_err(|e| format!("cannot read {what} ({path}): {e}"))
}

/// What `oauth2` reports of a failed refresh, in the words of [`answer`].
fn refresh_error(
    e: BasicRequestTokenError<TransportError>,
    status: Option<http::StatusCode>,
) -> String {
    let status = status.map_or_else(|| "HTTP answer".to_string(), |s| format!("HTTP {s}"));
    match e {
        oauth2::RequestTokenError::ServerResponse(r) => {
            let mut out = format!("{status}: {}", r.error());
            if let Some(d) = r.error_description() {
                out.push_str(": ");
                out.push_str(d);
            }
            bounded(&out)
        }
        oauth2::RequestTokenError::Request(e) => e.to_string(),
        oauth2::RequestTokenError::Parse(_, body) => format!(
            "{status}: not an OAuth token response: {}",
            quote(&String::from_utf8_lossy(&body))
        ),
        oauth2::RequestTokenError::Other(what) => bounded(&format!("{status}: {what}")),
    }
}

/// An endpoint's answer that carries no token: the HTTP status, then the OAuth `error`
/// and `error_description`, or else the start of the body.
fn answer(status: http::StatusCode, body: &[u8]) -> String {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| {
        json.as_ref()
            .and_then(|j| j.get(name))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    match (field("error"), field("error_description")) {
        (Some(error), Some(description)) => {
            bounded(&format!("HTTP {status}: {error}: {description}"))
        }
        (Some(error), None) => bounded(&format!("HTTP {status}: {error}")),
        _ if body.is_empty() => format!("HTTP {status} with an empty body"),
        _ if status.is_success() => format!(
            "HTTP {status} but not an OAuth token response: {}",
            quote(&String::from_utf8_lossy(body))
        ),
        _ => format!("HTTP {status}: {}", quote(&String::from_utf8_lossy(body))),
    }
}

/// `text` quoted, control characters escaped, at most [`MAX_ANSWER_CHARS`] characters.
fn quote(text: &str) -> String {
    format!("{:?}", bounded(text.trim()))
}

/// At most [`MAX_ANSWER_CHARS`] characters of `text`, line breaks and other control
/// characters as spaces (the text ends up in a log line and an SMTP-style reason).
fn bounded(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_ANSWER_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > MAX_ANSWER_CHARS {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_bounded_and_on_one_line() {
        let body = format!(
            r#"{{"error":"invalid_grant","error_description":"line one\r\n{}"}}"#,
            "x".repeat(5000)
        );
        let text = answer(http::StatusCode::BAD_REQUEST, body.as_bytes());
        assert!(
            text.starts_with("HTTP 400 Bad Request: invalid_grant: line one  x"),
            "{text}"
        );
        assert!(
            text.chars().count() <= MAX_ANSWER_CHARS + 1,
            "{}",
            text.len()
        );
        assert!(!text.contains(['\r', '\n']));
    }

    #[test]
    fn a_body_that_is_not_oauth_json_is_quoted() {
        let text = answer(
            http::StatusCode::BAD_GATEWAY,
            b"<html>upstream down</html>\n",
        );
        assert_eq!(
            text,
            r#"HTTP 502 Bad Gateway: "<html>upstream down</html>""#
        );
    }
}
