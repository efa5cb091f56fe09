//! XOAUTH2 token requests through `HTTPS_PROXY` (SPEC §2.4 `auth`): the relay tunnels to
//! the token endpoint with `CONNECT host:port` and still checks the endpoint's certificate
//! through the tunnel. Its own test binary: it sets the process environment.

mod oauth_common;

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use oauth_common::{Answer, connect_proxy, endpoint, service_account_json};
use relay::config::{OAuthGrant, ServiceAccountConfig};
use relay::delivery::FakeClock;
use relay::delivery::oauth::TokenCache;
use relay::delivery::testing::TestCa;

#[tokio::test]
async fn token_requests_go_through_the_https_proxy_and_still_check_the_certificate() {
    let proxy = connect_proxy().await;
    // SAFETY: the only test of this binary, so no other thread reads the environment.
    unsafe {
        std::env::set_var("HTTPS_PROXY", format!("http://127.0.0.1:{}", proxy.port));
        std::env::remove_var("NO_PROXY");
        std::env::remove_var("no_proxy");
    }
    let ca = TestCa::new("Google CA").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ep = endpoint(&ca, Answer::Tokens(3600)).await;
    let key = dir.path().join("serviceAccountKey");
    std::fs::write(&key, service_account_json(&ep.url())).unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    let sa = ServiceAccountConfig {
        key_file: key.display().to_string(),
        scope: "https://mail.google.com/".into(),
        ca_file: Some(ca_file.display().to_string()),
    };
    let cache = TokenCache::new(Arc::new(FakeClock::new(UNIX_EPOCH)));
    let token = cache
        .token(OAuthGrant::ServiceAccount(&sa), "alice@acme.test")
        .await
        .unwrap();
    assert_eq!(token, "token-1");
    assert_eq!(
        *proxy.lines.lock().unwrap(),
        vec![format!("CONNECT localhost:{} HTTP/1.1", ep.port)]
    );
    assert_eq!(ep.requests(), 1);

    // An endpoint whose certificate the route does not trust gets nothing, proxy or not.
    let other = TestCa::new("Someone else").unwrap();
    let impostor = endpoint(&other, Answer::Tokens(3600)).await;
    std::fs::write(&key, service_account_json(&impostor.url())).unwrap();
    let err = cache
        .token(OAuthGrant::ServiceAccount(&sa), "bob@acme.test")
        .await
        .unwrap_err();
    assert!(err.contains("TLS failed"), "{err}");
    assert_eq!(proxy.lines.lock().unwrap().len(), 2);
    assert_eq!(impostor.requests(), 0);
}
