//! `MailRoute.spec.auth` and `tls.implicit` (SPEC §2.4): the CEL rules of the schema and
//! their Rust mirror (`MailRouteSpec::tls_rule_violations`) refuse the same objects, with
//! messages that say why.

use crds::manifest::validate_object;
use crds::{
    AUTH_NEEDS_TLS_CHECKS, GRANT_NEEDS_XOAUTH2, MailRoute, ONE_GRANT, PORT_465_NEEDS_IMPLICIT,
};

fn route(hosts: &str, tls: &str, auth: bool) -> MailRoute {
    let auth = if auth {
        "  auth: {mechanism: Plain, secretRef: {name: smarthost}}\n"
    } else {
        ""
    };
    yaml_serde::from_str(&format!(
        "apiVersion: smtprelay.dev/v1alpha1
kind: MailRoute
metadata: {{name: smarthost, namespace: acme}}
spec:
  description: provider
  match: {{default: true}}
  {hosts}
  tls: {tls}
{auth}"
    ))
    .unwrap()
}

/// The messages of the two route-level TLS rules among the CEL errors of `r`.
fn cel_violations(r: &MailRoute) -> Vec<&'static str> {
    let errors = validate_object(r).err().unwrap_or_default();
    [PORT_465_NEEDS_IMPLICIT, AUTH_NEEDS_TLS_CHECKS]
        .into_iter()
        .filter(|m| errors.iter().any(|e| e.contains(m)))
        .collect()
}

#[test]
fn cel_and_rust_refuse_the_same_routes() {
    let hosts = [
        "singleHost: {host: smtp.example.com, port: 587}",
        "singleHost: {host: smtp.example.com, port: 465}",
        "multipleHosts: {primary: [{host: a.example.com, port: 587, loadPercent: 100}], secondary: [{host: b.example.com, port: 465, loadPercent: 100}]}",
    ];
    let mut refused = 0;
    let mut accepted = 0;
    for host in hosts {
        for bits in 0..16u8 {
            let flag = |i: u8| bits & (1 << i) != 0;
            let tls = format!(
                "{{requireTls: {}, requireCaSigned: {}, validateHostname: {}, implicit: {}}}",
                flag(0),
                flag(1),
                flag(2),
                flag(3)
            );
            for auth in [false, true] {
                let r = route(host, &tls, auth);
                let cel = cel_violations(&r);
                let rust = r.spec.tls_rule_violations();
                assert_eq!(cel, rust, "{host} tls={tls} auth={auth}");
                if cel.is_empty() {
                    accepted += 1;
                } else {
                    refused += 1;
                }
            }
        }
    }
    assert!(
        refused > 0 && accepted > 0,
        "{refused} refused, {accepted} accepted"
    );
}

#[test]
fn auth_needs_every_tls_check_and_says_why() {
    for tls in [
        "{requireTls: false}",
        "{requireCaSigned: false}",
        "{validateHostname: false}",
    ] {
        let errors = validate_object(&route(
            "singleHost: {host: smtp.example.com, port: 587}",
            tls,
            true,
        ))
        .unwrap_err();
        assert!(
            errors.iter().any(|e| e
                .contains("auth sends credentials, so it needs every TLS check of the route on")),
            "{tls}: {errors:?}"
        );
    }
    // The defaults are every check on.
    assert_eq!(
        validate_object(&route(
            "singleHost: {host: smtp.example.com, port: 587}",
            "{}",
            true
        )),
        Ok(())
    );
}

#[test]
fn port_465_needs_implicit_tls_and_points_to_it() {
    let errors = validate_object(&route(
        "singleHost: {host: smtp.example.com, port: 465}",
        "{}",
        false,
    ))
    .unwrap_err();
    assert!(
        errors.iter().any(|e| e.contains("set tls.implicit: true")),
        "{errors:?}"
    );
    assert_eq!(
        validate_object(&route(
            "singleHost: {host: smtp.example.com, port: 465}",
            "{implicit: true}",
            true
        )),
        Ok(())
    );
}

#[test]
fn only_the_three_mechanisms_are_accepted() {
    for (mechanism, ok) in [
        ("Plain", true),
        ("Login", true),
        ("XOAuth2", true),
        ("CRAM-MD5", false),
        ("plain", false),
    ] {
        let text = format!(
            "apiVersion: smtprelay.dev/v1alpha1
kind: MailRoute
metadata: {{name: smarthost, namespace: acme}}
spec:
  description: provider
  match: {{default: true}}
  singleHost: {{host: smtp.example.com, port: 587}}
  auth: {{mechanism: {mechanism}, secretRef: {{name: smarthost}}}}
"
        );
        let loaded = crds::manifest::load_sources(&[("route.yaml".into(), text)]);
        assert_eq!(loaded.is_ok(), ok, "{mechanism}");
    }
}

#[test]
fn the_rules_are_in_the_published_crd() {
    let yaml = crds::crds_yaml().unwrap();
    for needle in [
        "has(self.auth)",
        "self.tls.implicit",
        "XOAuth2",
        "secretRef",
        "TLS from the first byte",
    ] {
        assert!(yaml.contains(needle), "{needle} missing from the CRDs");
    }
}

/// `auth` with the given mechanism and grant fields, as a MailRoute manifest.
fn with_grants(mechanism: &str, grants: &str) -> String {
    format!(
        "apiVersion: smtprelay.dev/v1alpha1
kind: MailRoute
metadata: {{name: gmail, namespace: acme}}
spec:
  description: provider
  match: {{default: true}}
  singleHost: {{host: smtp.gmail.com, port: 587}}
  auth: {{mechanism: {mechanism}, secretRef: {{name: gmail}}{grants}}}
"
    )
}

const CLIENT_CREDENTIALS: &str =
    ", clientCredentials: {tokenEndpoint: 'https://login.example.com/token', clientId: app}";
const REFRESH_TOKEN: &str = ", refreshToken: {clientId: 1234-app.apps.googleusercontent.com}";
const SERVICE_ACCOUNT: &str = ", serviceAccount: {}";

/// Every mechanism with every set of grants: the CEL rules and their Rust mirror
/// (`RouteAuth::rule_violations`) agree, and each refusal says why.
#[test]
fn cel_and_rust_agree_on_the_grant_rules() {
    let grants = [CLIENT_CREDENTIALS, REFRESH_TOKEN, SERVICE_ACCOUNT];
    let (mut refused, mut accepted) = (0, 0);
    for mechanism in ["Plain", "Login", "XOAuth2"] {
        for bits in 0..8u8 {
            let chosen: String = (0..3)
                .filter(|i| bits & (1 << i) != 0)
                .map(|i| grants[i])
                .collect();
            let route: MailRoute = yaml_serde::from_str(&with_grants(mechanism, &chosen)).unwrap();
            let errors = validate_object(&route).err().unwrap_or_default();
            let cel: Vec<&str> = [GRANT_NEEDS_XOAUTH2, ONE_GRANT]
                .into_iter()
                .filter(|m| errors.iter().any(|e| e.contains(m)))
                .collect();
            let rust = route.spec.auth.as_ref().unwrap().rule_violations();
            assert_eq!(cel, rust, "{mechanism}{chosen}: {errors:?}");
            let expected_ok = bits == 0 || (mechanism == "XOAuth2" && bits.count_ones() == 1);
            assert_eq!(
                errors.is_empty(),
                expected_ok,
                "{mechanism}{chosen}: {errors:?}"
            );
            if expected_ok {
                accepted += 1;
            } else {
                refused += 1;
            }
        }
    }
    assert_eq!((accepted, refused), (6, 18));
}

#[test]
fn a_refresh_token_endpoint_must_be_https_and_defaults_to_googles() {
    let route: MailRoute = yaml_serde::from_str(&with_grants(
        "XOAuth2",
        ", refreshToken: {clientId: app, tokenEndpoint: 'http://oauth2.example.com/token'}",
    ))
    .unwrap();
    let errors = validate_object(&route).unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("tokenEndpoint must be an https:// URL")),
        "{errors:?}"
    );
    let route: MailRoute = yaml_serde::from_str(&with_grants("XOAuth2", REFRESH_TOKEN)).unwrap();
    let auth = route.spec.auth.unwrap();
    assert_eq!(
        auth.refresh_token.unwrap().endpoint(),
        "https://oauth2.googleapis.com/token"
    );
    let route: MailRoute = yaml_serde::from_str(&with_grants("XOAuth2", SERVICE_ACCOUNT)).unwrap();
    assert_eq!(
        route.spec.auth.unwrap().service_account.unwrap().scope(),
        "https://mail.google.com/"
    );
}
