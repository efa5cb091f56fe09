//! XOAUTH2 client credentials (issue scope of SPEC §2.4 `auth`): the relay fetches the
//! access token from a local HTTPS token endpoint, keeps it while it is valid, refreshes it
//! before it expires, and reports a refused client without its secret.

mod delivery_common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use delivery_common::*;
use relay::config::{
    AuthMechanism, ClientCredentialsConfig, OAuthGrant, RouteAuthConfig, RouteMatcher,
    RouteTlsConfig,
};
use relay::delivery::FakeClock;
use relay::delivery::oauth::TokenCache;
use relay::delivery::testing::TestCa;
use relay::delivery::testing::{SinkAuth, SinkConfig, TestSink};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const CLIENT_SECRET: &str = "client-secret-never-printed";

/// A one-route HTTPS token endpoint: answers each POST with the next token (`token-1`,
/// `token-2`, …) living `expires_in` seconds, or `status` with an OAuth error; records
/// every request body.
struct Endpoint {
    port: u16,
    bodies: Arc<Mutex<Vec<String>>>,
    _task: tokio::task::JoinHandle<()>,
}

async fn endpoint(ca: &TestCa, status: u16, expires_in: u64) -> Endpoint {
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
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Headers, then Content-Length bytes of body.
            let body = loop {
                let n = tls.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break None;
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
                        break Some(body.to_string());
                    }
                }
            };
            let Some(body) = body else { continue };
            let n = {
                let mut b = seen.lock().unwrap();
                b.push(body);
                b.len()
            };
            let json = if status == 200 {
                format!(
                    r#"{{"access_token":"token-{n}","token_type":"Bearer","expires_in":{expires_in}}}"#
                )
            } else {
                r#"{"error":"invalid_client","error_description":"bad secret"}"#.to_string()
            };
            let reason = if status == 200 { "OK" } else { "Unauthorized" };
            let response = format!(
                "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
                json.len()
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
    let ep = endpoint(&ca, 200, 3600).await;
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
    let ep = endpoint(&ca, 401, 3600).await;
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
    let ep = endpoint(&other, 200, 3600).await;
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
    let ep = endpoint(&ca, 200, 3600).await;
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
    let ep = endpoint(&ca, 200, u64::MAX).await;
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
