//! Must show — outbound SMTP AUTH per route (SPEC §2.4 `auth`, `tls.implicit`; §3.5)
//! against a real Postfix smarthost that relays only for a Cyrus sasldb user and offers
//! AUTH only over TLS, with a certificate from the route's trusted CA: a route with
//! `auth: Plain` on 587 (STARTTLS) and a route with `tls.implicit: true` and `auth: Login`
//! on 465 (wrapper mode) both deliver, and the smarthost logs the mechanism and the user it
//! authenticated; a route whose Secret holds a wrong password bounces the message to the
//! sender at once with the smarthost's `535 5.7.8` text and status 5.7.8, and nothing of
//! it reaches the smarthost's mailbox.

mod common;

use std::net::IpAddr;

use common::*;
use conformance::docker::{self, Scenario, host};
use conformance::manifests::{HostSpec, RouteAuthSpec, RouteHostsSpec, RouteMatch, RouteSpec};
use conformance::pki;

/// The smarthost's name (its certificate's, and the routes' host).
const SMARTHOST: &str = "smtp.provider.test";
/// The one user the smarthost relays for (Cyrus sasldb user `relay` in realm
/// `provider.test`), and its password.
const USER: &str = "relay@provider.test";
const PASSWORD: &str = "provider-secret-7";

/// A route for `domain` to the smarthost on `port`, every TLS check on, logging in with
/// `mechanism` and the Secret `secret`.
fn smarthost_route(
    name: &str,
    domain: &str,
    port: u16,
    implicit: bool,
    mechanism: &'static str,
    secret: &str,
) -> RouteSpec {
    RouteSpec {
        name: name.into(),
        matcher: RouteMatch::Domains(vec![domain.into()]),
        hosts: RouteHostsSpec::Single(HostSpec {
            host: SMARTHOST.into(),
            port,
            load_percent: 100,
        }),
        mx_lookup: false,
        require_tls: true,
        require_ca_signed: true,
        validate_hostname: true,
        trusted_ca: Some("provider-ca".into()),
        implicit,
        auth: Some(RouteAuthSpec {
            mechanism,
            secret: secret.into(),
        }),
        rate_limit: None,
    }
}

/// Waits until the smarthost's log has a line naming `needle` and returns that line.
fn logged(scn: &Scenario, needle: &str) -> String {
    let upstream = scn.get("smarthost");
    docker::poll(OUTCOME, || {
        upstream
            .logs()
            .lines()
            .find(|l| l.contains(needle))
            .map(str::to_string)
    })
    .unwrap_or_else(|| {
        panic!(
            "the smarthost never logged {needle:?}; its log:\n{}\nrelay log:\n{}",
            upstream.logs(),
            scn.get("relay").logs()
        )
    })
}

#[test]
fn routes_log_in_to_a_smarthost_with_plain_and_login_and_a_wrong_password_bounces_5_7_8() {
    if docker::skip_without_docker() {
        return;
    }
    let mut scn = Scenario::new("smarthost").unwrap();
    let ca = pki::Ca::new("Provider Test CA").unwrap();
    let cert = ca.issue(&[SMARTHOST]).unwrap();

    let mut m = base_manifests();
    m.ranges = vec![range("office", &scn.subnet4(), true)];
    m.routes.push(smarthost_route(
        "provider-plain",
        "plain.example",
        587,
        false,
        "Plain",
        "provider-login",
    ));
    m.routes.push(smarthost_route(
        "provider-implicit",
        "implicit.example",
        465,
        true,
        "Login",
        "provider-login",
    ));
    m.routes.push(smarthost_route(
        "provider-wrong",
        "wrong.example",
        587,
        false,
        "Plain",
        "provider-stale",
    ));

    // The default sink (host SERVER) is not used; the smarthost is host SERVER + 1.
    let n = host::SERVER + 1;
    scn.postfix_server_env(
        "smarthost",
        n,
        Some(&cert),
        &[
            ("SASL_SERVER_USER", USER.to_string()),
            ("SASL_SERVER_PASSWORD", PASSWORD.to_string()),
        ],
    )
    .unwrap();
    let mut o = overrides(&scn);
    o.push((SMARTHOST, IpAddr::V4(scn.ip4(n))));
    scn.relay_with_route_auth(
        &m,
        Some(&relay_cert()),
        &[("provider-ca", ca.cert_pem.as_str())],
        &[
            ("provider-login", USER, PASSWORD),
            ("provider-stale", USER, "last-years-password"),
        ],
        docker::quick_delivery(&o),
    )
    .unwrap();
    scn.postfix_client("client", host::CLIENT, &client_opts(&scn, "may"))
        .unwrap();
    let client = scn.get("client");
    for (rcpt, subject) in [
        ("a@plain.example", "via-587-plain"),
        ("b@implicit.example", "via-465-login"),
        ("c@wrong.example", "via-wrong-password"),
    ] {
        docker::sendmail(client, "sender@acme.example", &[rcpt], subject).unwrap();
    }

    // (1) PLAIN after STARTTLS on 587.
    let msg = delivered(&scn, "smarthost", "via-587-plain");
    assert_eq!(
        docker::header(&msg, "X-Original-To"),
        Some("a@plain.example")
    );
    let line = logged(&scn, "sasl_method=PLAIN");
    assert!(
        line.contains("postfix/submission/smtpd")
            && line.contains(&format!("sasl_username={USER}")),
        "PLAIN login on the submission port as {USER}: {line}"
    );
    // (2) LOGIN over TLS from the first byte on 465.
    let msg = delivered(&scn, "smarthost", "via-465-login");
    assert_eq!(
        docker::header(&msg, "X-Original-To"),
        Some("b@implicit.example")
    );
    let line = logged(&scn, "sasl_method=LOGIN");
    assert!(
        line.contains("postfix/smtps/smtpd") && line.contains(&format!("sasl_username={USER}")),
        "LOGIN on the wrapper-mode port as {USER}: {line}"
    );
    // (3) A wrong password: the smarthost's refusal comes back as a bounce.
    let mbox = bounced(client, "Final-Recipient: rfc822; c@wrong.example");
    assert!(
        mbox.contains("535 5.7.8 Error: authentication failed"),
        "the bounce carries the smarthost's reply:\n{mbox}"
    );
    assert!(
        mbox.contains("Status: 5.7.8"),
        "the DSN has status 5.7.8:\n{mbox}"
    );
    logged(&scn, "authentication failed");
    assert_eq!(count_subject(&scn, "smarthost", "via-wrong-password"), 0);
    // Only the two good routes' messages reached the smarthost, each once.
    assert_eq!(count_subject(&scn, "smarthost", "via-587-plain"), 1);
    assert_eq!(count_subject(&scn, "smarthost", "via-465-login"), 1);
}
