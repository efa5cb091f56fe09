//! XOAUTH2 access tokens (SPEC §2.4 `auth`): for each grant (client credentials, refresh
//! token, service account JWT bearer) the relay sends the token endpoint what the grant
//! says, keeps the token while it is valid, refreshes it before it expires, logs in with
//! it, and reports a refusal with the endpoint's answer, without its secrets.

mod delivery_common;
mod oauth_common;

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use delivery_common::*;
use oauth_common::{
    Answer, Endpoint, SERVICE_ACCOUNT, TEST_PUBLIC_KEY_DER, endpoint, service_account_json,
};
use relay::config::{
    AuthMechanism, ClientCredentialsConfig, OAuthGrant, RefreshTokenConfig, RouteAuthConfig,
    RouteMatcher, RouteTlsConfig, ServiceAccountConfig,
};
use relay::delivery::FakeClock;
use relay::delivery::oauth::TokenCache;
use relay::delivery::queue::{MessageStore, RecipientState};
use relay::delivery::testing::TestCa;
use relay::delivery::testing::{SinkAuth, SinkConfig, TestSink};

const CLIENT_SECRET: &str = "client-secret-never-printed";

fn settings(dir: &tempfile::TempDir, ca: &TestCa, port: u16) -> ClientCredentialsConfig {
    let secret = dir.path().join("clientSecret");
    std::fs::write(&secret, format!("{CLIENT_SECRET}\n")).unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    ClientCredentialsConfig {
        token_endpoint: format!("https://localhost:{port}/tenant/oauth2/v2.0/token"),
        client_id: "relay-app".into(),
        scope: Some("https://outlook.office365.com/.default".into()),
        client_secret_file: secret.display().to_string(),
        ca_file: Some(ca_file.display().to_string()),
    }
}

#[tokio::test]
async fn the_token_is_fetched_once_reused_and_refreshed_before_it_expires() {
    let ca = TestCa::new("Token CA").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ep = endpoint(&ca, Answer::Tokens(3600)).await;
    let cc = settings(&dir, &ca, ep.port);
    let clock = Arc::new(FakeClock::new(
        UNIX_EPOCH + Duration::from_secs(1_750_000_000),
    ));
    let cache = TokenCache::new(clock.clone());

    assert_eq!(
        cache
            .token(OAuthGrant::ClientCredentials(&cc), "relay@acme.test")
            .await
            .unwrap(),
        "token-1"
    );
    let body = ep.bodies.lock().unwrap()[0].clone();
    let form: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    assert_eq!(
        form,
        [
            ("grant_type".to_string(), "client_credentials".to_string()),
            ("client_id".into(), "relay-app".into()),
            ("client_secret".into(), CLIENT_SECRET.into()),
            (
                "scope".into(),
                "https://outlook.office365.com/.default".into()
            ),
        ]
    );

    // Still valid 50 minutes later: no request.
    clock.advance(Duration::from_secs(50 * 60));
    assert_eq!(
        cache
            .token(OAuthGrant::ClientCredentials(&cc), "relay@acme.test")
            .await
            .unwrap(),
        "token-1"
    );
    assert_eq!(ep.bodies.lock().unwrap().len(), 1);

    // Within the refresh margin of its expiry: a new token.
    clock.advance(Duration::from_secs(9 * 60));
    assert_eq!(
        cache
            .token(OAuthGrant::ClientCredentials(&cc), "relay@acme.test")
            .await
            .unwrap(),
        "token-2"
    );
    assert_eq!(ep.bodies.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_refused_client_is_an_error_naming_the_endpoint_not_the_secret() {
    let ca = TestCa::new("Token CA").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ep = endpoint(
        &ca,
        Answer::Fixed(
            401,
            "application/json",
            r#"{"error":"invalid_client","error_description":"bad secret"}"#.into(),
        ),
    )
    .await;
    let cc = settings(&dir, &ca, ep.port);
    let cache = TokenCache::new(Arc::new(FakeClock::new(UNIX_EPOCH)));
    let err = cache
        .token(OAuthGrant::ClientCredentials(&cc), "relay@acme.test")
        .await
        .unwrap_err();
    assert!(
        err.contains("401") && err.contains("invalid_client"),
        "{err}"
    );
    assert!(err.contains(&cc.token_endpoint), "{err}");
    assert!(!err.contains(CLIENT_SECRET), "{err}");
}

#[tokio::test]
async fn an_endpoint_with_an_untrusted_certificate_is_not_sent_the_secret() {
    let ca = TestCa::new("Token CA").unwrap();
    let other = TestCa::new("Someone else").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ep = endpoint(&other, Answer::Tokens(3600)).await;
    let cc = settings(&dir, &ca, ep.port);
    let cache = TokenCache::new(Arc::new(FakeClock::new(UNIX_EPOCH)));
    let err = cache
        .token(OAuthGrant::ClientCredentials(&cc), "relay@acme.test")
        .await
        .unwrap_err();
    assert!(err.contains("TLS failed"), "{err}");
    assert!(ep.bodies.lock().unwrap().is_empty());
}

/// A route with `clientCredentials` logs in with XOAUTH2 using the fetched token.
#[tokio::test]
async fn delivery_logs_in_with_the_fetched_token() {
    let ca = TestCa::new("Provider CA").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ep = endpoint(&ca, Answer::Tokens(3600)).await;
    let cc = settings(&dir, &ca, ep.port);
    let user = dir.path().join("username");
    std::fs::write(&user, "relay@acme.test").unwrap();
    let sink = TestSink::start(SinkConfig {
        tls: Some(
            ca.issue(&["smtp.provider.test"])
                .unwrap()
                .server_config()
                .unwrap(),
        ),
        pipelining: true,
        auth: Some(SinkAuth {
            mechanisms: vec!["XOAUTH2".into()],
            reply: None,
        }),
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let mut r = route(
        "acme/m365",
        RouteMatcher::Default,
        "smtp.provider.test",
        sink.port(),
        RouteTlsConfig {
            require_tls: true,
            require_ca_signed: true,
            validate_hostname: true,
            extra_ca_file: cc.ca_file.clone(),
            implicit: false,
        },
    );
    r.auth = Some(RouteAuthConfig {
        mechanism: AuthMechanism::XOAuth2,
        secret_name: "m365".into(),
        username_file: user.display().to_string(),
        secret_file: dir.path().join("token").display().to_string(),
        client_credentials: Some(cc),
        refresh_token: None,
        service_account: None,
    });
    let h = Harness::new(
        vec![r],
        delivery_config(&[("smtp.provider.test", "127.0.0.1".parse().unwrap())]),
    );
    h.send(
        "alice@acme.test",
        &["bob@dest.test"],
        &message("alice@acme.test", "bob@dest.test", "oauth"),
    );
    bounded(h.manager.run_due()).await;
    assert_eq!(sink.messages().len(), 1);
    use base64::Engine;
    let expected = base64::engine::general_purpose::STANDARD
        .encode("user=relay@acme.test\x01auth=Bearer token-1\x01\x01");
    assert_eq!(sink.auth_lines(), vec![format!("AUTH XOAUTH2 {expected}")]);
}

/// An `expires_in` beyond any real lifetime (here 2^64 - 1 seconds, past what a
/// `SystemTime` can hold) neither panics nor keeps the token for ever: it is used for at
/// most a day, then refreshed.
#[tokio::test]
async fn a_huge_expires_in_is_bounded_to_a_day() {
    let ca = TestCa::new("Token CA").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ep = endpoint(&ca, Answer::Tokens(u64::MAX)).await;
    let cc = settings(&dir, &ca, ep.port);
    let clock = Arc::new(FakeClock::new(
        UNIX_EPOCH + Duration::from_secs(1_750_000_000),
    ));
    let cache = TokenCache::new(clock.clone());
    assert_eq!(
        cache
            .token(OAuthGrant::ClientCredentials(&cc), "relay@acme.test")
            .await
            .unwrap(),
        "token-1"
    );
    clock.advance(Duration::from_secs(23 * 3600));
    assert_eq!(
        cache
            .token(OAuthGrant::ClientCredentials(&cc), "relay@acme.test")
            .await
            .unwrap(),
        "token-1"
    );
    clock.advance(Duration::from_secs(3600));
    assert_eq!(
        cache
            .token(OAuthGrant::ClientCredentials(&cc), "relay@acme.test")
            .await
            .unwrap(),
        "token-2"
    );
}

const REFRESH_TOKEN: &str = "1//refresh-token-never-printed";

/// Refresh-token settings against `ep`, with the Secret's files in `dir`.
fn refresh_settings(dir: &tempfile::TempDir, ca: &TestCa, ep: &Endpoint) -> RefreshTokenConfig {
    let secret = dir.path().join("clientSecret");
    std::fs::write(&secret, format!("{CLIENT_SECRET}\n")).unwrap();
    let refresh = dir.path().join("refreshToken");
    std::fs::write(&refresh, format!("{REFRESH_TOKEN}\n")).unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    RefreshTokenConfig {
        token_endpoint: ep.url(),
        client_id: "1234-relay.apps.googleusercontent.com".into(),
        client_secret_file: secret.display().to_string(),
        refresh_token_file: refresh.display().to_string(),
        ca_file: Some(ca_file.display().to_string()),
    }
}

/// Service-account settings: the JSON key (its `token_uri` is `ep`) in `dir`.
fn service_account_settings(
    dir: &tempfile::TempDir,
    ca: &TestCa,
    ep: &Endpoint,
) -> ServiceAccountConfig {
    let key = dir.path().join("serviceAccountKey");
    std::fs::write(&key, service_account_json(&ep.url())).unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    ServiceAccountConfig {
        key_file: key.display().to_string(),
        scope: "https://mail.google.com/".into(),
        ca_file: Some(ca_file.display().to_string()),
    }
}

fn sorted(mut form: Vec<(String, String)>) -> Vec<(String, String)> {
    form.sort();
    form
}

fn pair(k: &str, v: &str) -> (String, String) {
    (k.to_string(), v.to_string())
}

#[tokio::test]
async fn the_refresh_grant_sends_the_refresh_token_and_client_then_reuses_the_token() {
    let ca = TestCa::new("Token CA").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ep = endpoint(&ca, Answer::Tokens(3600)).await;
    let rt = refresh_settings(&dir, &ca, &ep);
    let clock = Arc::new(FakeClock::new(
        UNIX_EPOCH + Duration::from_secs(1_750_000_000),
    ));
    let cache = TokenCache::new(clock.clone());
    let grant = OAuthGrant::RefreshToken(&rt);

    assert_eq!(
        cache.token(grant, "relay@acme.test").await.unwrap(),
        "token-1"
    );
    assert_eq!(
        sorted(ep.form(0)),
        sorted(vec![
            pair("grant_type", "refresh_token"),
            pair("refresh_token", REFRESH_TOKEN),
            pair("client_id", "1234-relay.apps.googleusercontent.com"),
            pair("client_secret", CLIENT_SECRET),
        ])
    );

    clock.advance(Duration::from_secs(50 * 60));
    assert_eq!(
        cache.token(grant, "relay@acme.test").await.unwrap(),
        "token-1"
    );
    assert_eq!(ep.requests(), 1);

    clock.advance(Duration::from_secs(9 * 60));
    assert_eq!(
        cache.token(grant, "relay@acme.test").await.unwrap(),
        "token-2"
    );
    assert_eq!(ep.requests(), 2);
}

#[tokio::test]
async fn a_revoked_refresh_token_is_an_error_with_the_endpoints_answer_not_the_token() {
    let ca = TestCa::new("Token CA").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ep = endpoint(
        &ca,
        Answer::Fixed(
            400,
            "application/json",
            r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#
                .into(),
        ),
    )
    .await;
    let rt = refresh_settings(&dir, &ca, &ep);
    let cache = TokenCache::new(Arc::new(FakeClock::new(UNIX_EPOCH)));
    let err = cache
        .token(OAuthGrant::RefreshToken(&rt), "relay@acme.test")
        .await
        .unwrap_err();
    assert_eq!(
        err,
        format!(
            "token endpoint {}: HTTP 400 Bad Request: invalid_grant: Token has been expired or revoked.",
            ep.url()
        )
    );
}

/// Mail queued behind a refused grant does not ask the endpoint once per message: the
/// refusal is repeated from memory for 30 seconds, then the endpoint is asked again.
#[tokio::test]
async fn a_refusal_is_not_asked_again_for_thirty_seconds() {
    let ca = TestCa::new("Token CA").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ep = endpoint(
        &ca,
        Answer::Fixed(
            400,
            "application/json",
            r#"{"error":"invalid_grant"}"#.into(),
        ),
    )
    .await;
    let rt = refresh_settings(&dir, &ca, &ep);
    let clock = Arc::new(FakeClock::new(
        UNIX_EPOCH + Duration::from_secs(1_750_000_000),
    ));
    let cache = TokenCache::new(clock.clone());
    let grant = OAuthGrant::RefreshToken(&rt);
    let first = cache.token(grant, "relay@acme.test").await.unwrap_err();
    for _ in 0..5 {
        assert_eq!(
            cache.token(grant, "relay@acme.test").await.unwrap_err(),
            first
        );
    }
    assert_eq!(ep.requests(), 1);
    clock.advance(Duration::from_secs(29));
    assert!(cache.token(grant, "relay@acme.test").await.is_err());
    assert_eq!(ep.requests(), 1);
    clock.advance(Duration::from_secs(1));
    assert!(cache.token(grant, "relay@acme.test").await.is_err());
    assert_eq!(ep.requests(), 2);
}

/// A proxy or gateway in the way answers HTML, not OAuth JSON: its status and the start
/// of its body say so, on one line.
#[tokio::test]
async fn a_body_that_is_not_oauth_json_is_quoted_in_the_error() {
    let ca = TestCa::new("Token CA").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ep = endpoint(
        &ca,
        Answer::Fixed(
            503,
            "text/html",
            format!(
                "<html>\r\n<h1>down for maintenance</h1>{}</html>",
                "x".repeat(10_000)
            ),
        ),
    )
    .await;
    let rt = refresh_settings(&dir, &ca, &ep);
    let cache = TokenCache::new(Arc::new(FakeClock::new(UNIX_EPOCH)));
    let err = cache
        .token(OAuthGrant::RefreshToken(&rt), "relay@acme.test")
        .await
        .unwrap_err();
    assert!(err.contains("HTTP 503 Service Unavailable"), "{err}");
    assert!(err.contains("<h1>down for maintenance</h1>"), "{err}");
    assert!(err.len() < 600, "bounded: {} bytes", err.len());
    assert!(!err.contains(['\r', '\n']), "{err}");
}

#[tokio::test]
async fn a_service_account_posts_a_jwt_for_the_user_signed_with_its_key() {
    let ca = TestCa::new("Token CA").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ep = endpoint(&ca, Answer::Tokens(3600)).await;
    let sa = service_account_settings(&dir, &ca, &ep);
    let now = 1_750_000_000;
    let clock = Arc::new(FakeClock::new(UNIX_EPOCH + Duration::from_secs(now)));
    let cache = TokenCache::new(clock.clone());
    let grant = OAuthGrant::ServiceAccount(&sa);

    assert_eq!(
        cache.token(grant, "alice@acme.test").await.unwrap(),
        "token-1"
    );
    let form = ep.form(0);
    assert_eq!(form.len(), 2, "{form:?}");
    assert_eq!(
        form[0],
        pair("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer")
    );
    assert_eq!(form[1].0, "assertion");
    let jwt = &form[1].1;
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "{jwt}");
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let json = |part: &str| -> serde_json::Value {
        serde_json::from_slice(&b64.decode(part).unwrap()).unwrap()
    };
    assert_eq!(
        json(parts[0]),
        serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": "0123456789abcdef"})
    );
    assert_eq!(
        json(parts[1]),
        serde_json::json!({
            "iss": SERVICE_ACCOUNT,
            "sub": "alice@acme.test",
            "scope": "https://mail.google.com/",
            "aud": ep.url(),
            "iat": now,
            "exp": now + 3600,
        })
    );
    // The signature verifies with the key's public half, over header.claims.
    let public = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        TEST_PUBLIC_KEY_DER,
    );
    let signed = format!("{}.{}", parts[0], parts[1]);
    public
        .verify(signed.as_bytes(), &b64.decode(parts[2]).unwrap())
        .expect("RS256 signature verifies with the service account's public key");
    // ... and not over anything else.
    assert!(
        public
            .verify(b"other.claims", &b64.decode(parts[2]).unwrap())
            .is_err()
    );

    // Cached per user: the same user reuses it, another user gets their own.
    assert_eq!(
        cache.token(grant, "alice@acme.test").await.unwrap(),
        "token-1"
    );
    assert_eq!(ep.requests(), 1);
    assert_eq!(
        cache.token(grant, "bob@acme.test").await.unwrap(),
        "token-2"
    );
    let claims = json(ep.form(1)[1].1.split('.').nth(1).unwrap());
    assert_eq!(claims["sub"], "bob@acme.test");
    // Refreshed before it expires, with a new assertion.
    clock.advance(Duration::from_secs(59 * 60));
    assert_eq!(
        cache.token(grant, "alice@acme.test").await.unwrap(),
        "token-3"
    );
    let claims = json(ep.form(2)[1].1.split('.').nth(1).unwrap());
    assert_eq!(claims["iat"], now + 59 * 60);
}

/// The SMTP sink for the delivery tests: TLS with a certificate from `ca`, XOAUTH2 only.
async fn xoauth2_sink(ca: &TestCa) -> TestSink {
    TestSink::start(SinkConfig {
        tls: Some(
            ca.issue(&["smtp.gmail.test"])
                .unwrap()
                .server_config()
                .unwrap(),
        ),
        pipelining: true,
        auth: Some(SinkAuth {
            mechanisms: vec!["XOAUTH2".into()],
            reply: None,
        }),
        ..SinkConfig::default()
    })
    .await
    .unwrap()
}

/// A default route to `sink` logging in as `user` with `auth`'s grant; all TLS checks on.
fn gmail_harness(
    dir: &tempfile::TempDir,
    ca: &TestCa,
    sink: &TestSink,
    user: &str,
    grant: impl FnOnce(&mut RouteAuthConfig),
) -> Harness {
    let user_file = dir.path().join("username");
    std::fs::write(&user_file, format!("{user}\n")).unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    let mut r = route(
        "acme/gmail",
        RouteMatcher::Default,
        "smtp.gmail.test",
        sink.port(),
        RouteTlsConfig {
            require_tls: true,
            require_ca_signed: true,
            validate_hostname: true,
            extra_ca_file: Some(ca_file.display().to_string()),
            implicit: false,
        },
    );
    let mut auth = RouteAuthConfig {
        mechanism: AuthMechanism::XOAuth2,
        secret_name: "gmail".into(),
        username_file: user_file.display().to_string(),
        secret_file: dir.path().join("token").display().to_string(),
        client_credentials: None,
        refresh_token: None,
        service_account: None,
    };
    grant(&mut auth);
    r.auth = Some(auth);
    Harness::new(
        vec![r],
        delivery_config(&[("smtp.gmail.test", "127.0.0.1".parse().unwrap())]),
    )
}

fn xoauth2_line(user: &str, token: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD
        .encode(format!("user={user}\x01auth=Bearer {token}\x01\x01"));
    format!("AUTH XOAUTH2 {b64}")
}

#[tokio::test]
async fn delivery_with_a_refresh_token_logs_in_with_the_fetched_token() {
    let ca = TestCa::new("Google CA").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ep = endpoint(&ca, Answer::Tokens(3600)).await;
    let rt = refresh_settings(&dir, &ca, &ep);
    let sink = xoauth2_sink(&ca).await;
    let h = gmail_harness(&dir, &ca, &sink, "relay@acme.test", |a| {
        a.refresh_token = Some(rt)
    });
    for subject in ["one", "two"] {
        h.send(
            "alice@acme.test",
            &["bob@dest.test"],
            &message("alice@acme.test", "bob@dest.test", subject),
        );
    }
    bounded(h.manager.run_due()).await;
    assert_eq!(sink.messages().len(), 2);
    // One token for both messages.
    assert_eq!(ep.requests(), 1);
    assert!(
        sink.auth_lines()
            .iter()
            .all(|l| *l == xoauth2_line("relay@acme.test", "token-1")),
        "{:?}",
        sink.auth_lines()
    );
    assert!(!sink.auth_lines().is_empty());
}

#[tokio::test]
async fn delivery_with_a_service_account_logs_in_as_the_user_it_impersonates() {
    let ca = TestCa::new("Google CA").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ep = endpoint(&ca, Answer::Tokens(3600)).await;
    let sa = service_account_settings(&dir, &ca, &ep);
    let sink = xoauth2_sink(&ca).await;
    let h = gmail_harness(&dir, &ca, &sink, "mailer@acme.test", |a| {
        a.service_account = Some(sa)
    });
    h.send(
        "alice@acme.test",
        &["bob@dest.test"],
        &message("alice@acme.test", "bob@dest.test", "sa"),
    );
    bounded(h.manager.run_due()).await;
    assert_eq!(sink.messages().len(), 1);
    assert_eq!(
        sink.auth_lines(),
        vec![xoauth2_line("mailer@acme.test", "token-1")]
    );
}

/// A token endpoint that refuses leaves the mail queued (4xx, retried), with a reason
/// that carries the endpoint's answer, and nothing is sent to the SMTP host.
#[tokio::test]
async fn an_endpoint_refusal_defers_the_mail_with_the_endpoints_answer() {
    let ca = TestCa::new("Google CA").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ep = endpoint(
        &ca,
        Answer::Fixed(
            400,
            "application/json",
            r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#
                .into(),
        ),
    )
    .await;
    let rt = refresh_settings(&dir, &ca, &ep);
    let sink = xoauth2_sink(&ca).await;
    let h = gmail_harness(&dir, &ca, &sink, "relay@acme.test", |a| {
        a.refresh_token = Some(rt)
    });
    let id = h.send(
        "alice@acme.test",
        &["bob@dest.test"],
        &message("alice@acme.test", "bob@dest.test", "revoked"),
    );
    bounded(h.manager.run_due()).await;
    assert!(sink.messages().is_empty());
    assert!(sink.auth_lines().is_empty());
    assert!(h.store.list().unwrap().contains(&id), "still queued");
    let state = h.manager.state(&id).expect("deferred, with a state file");
    let Some(RecipientState::Pending {
        last_error: Some(reason),
    }) = state.recipients.get("bob@dest.test")
    else {
        panic!("not pending: {state:?}");
    };
    assert_eq!(
        reason,
        &format!(
            "4.7.0 route acme/gmail: no XOAUTH2 access token: token endpoint {}: HTTP 400 Bad Request: invalid_grant: Token has been expired or revoked.",
            ep.url()
        )
    );
    assert!(!reason.contains(REFRESH_TOKEN) && !reason.contains(CLIENT_SECRET));
}
