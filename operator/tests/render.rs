//! `render`: every example renders, the result does not depend on object order, limits
//! follow licences, billing and overrides, and impossible configurations name the objects.

use std::collections::BTreeSet;
use std::path::Path;

use crds::manifest::{ManifestSet, load_paths};
use operator::manifests::render_set;
use operator::render::{Objects, RenderEnv, RenderError, render};
use relay::config::{AllowedSenders, RouteMatcher};

fn example(name: &str) -> ManifestSet {
    load_paths(&[Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)])
    .unwrap()
}

#[test]
fn quickstart_renders_loopback_ranges_and_one_default_route() {
    let r = render_set(&example("quickstart"), &RenderEnv::pod()).unwrap();
    let c = &r.config;
    let reasons: Vec<&str> = r.findings.iter().map(|f| f.reason).collect();
    assert_eq!(
        reasons,
        ["TlsChecksRelaxed"],
        "the local sink has no certificate"
    );
    assert_eq!(c.organization.domains, ["acme.example"]);
    assert_eq!(c.settings.len(), 1);
    let nets: Vec<String> = c.settings[0]
        .ip_ranges
        .as_ref()
        .unwrap()
        .iter()
        .map(|r| r.network.to_string())
        .collect();
    assert_eq!(nets, ["127.0.0.1/32", "::1/128"]);
    assert_eq!(
        c.settings[0].allowed_senders,
        AllowedSenders::OrganizationDomains
    );
    assert_eq!(c.routes.len(), 1);
    assert_eq!(c.routes[0].matcher, RouteMatcher::Default);
    assert_eq!(c.limits.customer_recipients_per_day, 1300);
    assert_eq!(c.limits.customer_recipients_per10_minutes, 90);
    assert_eq!(c.hash, c.compute_hash());
}

#[test]
fn every_example_renders_with_the_expected_findings() {
    let cases: [(&str, &[&str]); 10] = [
        (
            "on-premise-ip-range",
            &["TlsSecretMissing", "NoRelayCertificate"],
        ),
        (
            "applications-smtp-auth",
            &["TlsSecretMissing", "NoRelayCertificate"],
        ),
        ("multi-host-route", &[]),
        ("mx-lookup-route", &[]),
        ("tls-relaxed-route", &["TlsChecksRelaxed"]),
        ("ses-plain-587", &[]),
        ("smarthost-implicit-tls-465", &[]),
        ("microsoft-365-xoauth2", &[]),
        ("gmail-xoauth2", &[]),
        ("google-service-account", &[]),
    ];
    for (name, expected) in cases {
        let r =
            render_set(&example(name), &RenderEnv::pod()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let reasons: BTreeSet<&str> = r.findings.iter().map(|f| f.reason).collect();
        let expected: BTreeSet<&str> = expected.iter().copied().collect();
        assert_eq!(reasons, expected, "{name}: {:#?}", r.findings);
    }
}

/// A route's `auth` renders as the mounted Secret's file paths: the RelayConfig (the
/// ConfigMap, `relayctl render`) names the Secret, never a value of it.
#[test]
fn route_auth_renders_file_paths_never_the_secret_values() {
    let r = render_set(&example("ses-plain-587"), &RenderEnv::pod()).unwrap();
    let auth = r.config.routes[0].auth.clone().unwrap();
    assert_eq!(auth.mechanism, relay::config::AuthMechanism::Plain);
    assert_eq!(auth.secret_name, "ses-smtp");
    assert_eq!(
        auth.username_file,
        "/etc/smtprelay/route-auth/ses-smtp/username"
    );
    assert_eq!(
        auth.secret_file,
        "/etc/smtprelay/route-auth/ses-smtp/password"
    );
    let json = r.config.to_json();
    assert!(!json.contains("AKIAEXAMPLEEXAMPLE"), "{json}");
    assert!(
        !json.contains("replace-with-the-ses-smtp-password"),
        "{json}"
    );

    let r = render_set(&example("smarthost-implicit-tls-465"), &RenderEnv::pod()).unwrap();
    let route = &r.config.routes[0];
    assert!(route.tls.implicit);
    assert_eq!(
        route.auth.as_ref().map(|a| a.mechanism),
        Some(relay::config::AuthMechanism::Login)
    );

    // A Secret that does not exist is a finding; the route keeps its auth (its mail waits).
    let mut set = example("ses-plain-587");
    set.secrets.clear();
    let r = render_set(&set, &RenderEnv::pod()).unwrap();
    let reasons: Vec<&str> = r.findings.iter().map(|f| f.reason).collect();
    assert_eq!(reasons, ["AuthSecretMissing"]);
    assert!(r.config.routes[0].auth.is_some());
}

#[test]
fn disabled_ranges_are_left_out() {
    let r = render_set(&example("on-premise-ip-range"), &RenderEnv::pod()).unwrap();
    let nets: Vec<String> = r.config.settings[0]
        .ip_ranges
        .as_ref()
        .unwrap()
        .iter()
        .map(|r| r.network.to_string())
        .collect();
    assert_eq!(
        nets,
        ["203.0.113.0/24", "2001:db8:0:10::/120"],
        "198.51.100.7 is disabled"
    );
}

#[test]
fn object_order_does_not_change_the_hash() {
    let set = example("multi-host-route");
    let a = render_set(&set, &RenderEnv::pod()).unwrap().config;
    let mut reversed = set.clone();
    reversed.settings.reverse();
    reversed.ranges.reverse();
    reversed.routes.reverse();
    let b = render_set(&reversed, &RenderEnv::pod()).unwrap().config;
    assert_eq!(a.hash, b.hash);
}

fn objects_of(
    set: &ManifestSet,
) -> (
    Vec<crds::Organization>,
    Vec<crds::SmtpRelaySetting>,
    Vec<crds::IpAllowRange>,
    Vec<crds::MailRoute>,
) {
    (
        set.organizations.iter().map(|l| l.object.clone()).collect(),
        set.settings.iter().map(|l| l.object.clone()).collect(),
        set.ranges.iter().map(|l| l.object.clone()).collect(),
        set.routes.iter().map(|l| l.object.clone()).collect(),
    )
}

#[test]
fn limits_from_licences_billing_and_overrides() {
    let set = example("quickstart");
    let (mut orgs, settings, ranges, routes) = objects_of(&set);
    let secrets = BTreeSet::new();
    let limits = |orgs: &[crds::Organization]| {
        render(
            "acme",
            Objects {
                organizations: orgs,
                settings: &settings,
                ranges: &ranges,
                routes: &routes,
                secrets: &secrets,
            },
            &RenderEnv::pod(),
        )
        .unwrap()
        .config
        .limits
    };
    orgs[0].spec.licenses = 1_000_000;
    let big = limits(&orgs);
    assert_eq!(
        (
            big.customer_recipients_per_day,
            big.customer_recipients_per10_minutes
        ),
        (4_600_000, 319_444)
    );
    orgs[0].spec.billing = crds::Billing::Unpaid;
    let unpaid = limits(&orgs);
    assert_eq!(
        (
            unpaid.customer_recipients_per_day,
            unpaid.customer_recipients_per10_minutes
        ),
        (100, 50)
    );
    orgs[0].spec.limits = Some(crds::LimitOverrides {
        user_messages_per_day: Some(3),
        recipients_per_message: Some(2),
        ..Default::default()
    });
    let over = limits(&orgs);
    assert_eq!(
        (
            over.user_messages_per_day,
            over.recipients_per_message,
            over.user_recipients_per_day
        ),
        (3, 2, 10_000)
    );
}

#[test]
fn two_default_routes_and_a_domain_on_two_routes_are_errors() {
    let set = example("multi-host-route");
    let (orgs, settings, ranges, mut routes) = objects_of(&set);
    let secrets = BTreeSet::new();
    let mut second = routes[0].clone();
    second.metadata.name = Some("partner-copy".into());
    routes.push(second);
    let err = render(
        "acme",
        Objects {
            organizations: &orgs,
            settings: &settings,
            ranges: &ranges,
            routes: &routes,
            secrets: &secrets,
        },
        &RenderEnv::pod(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "MailRoute partner and MailRoute partner-copy both match recipient domain *.partner.example; a domain belongs to one route"
    );

    for r in &mut routes {
        r.spec.matcher = crds::RouteMatch {
            recipient_domains: None,
            sender_domains: None,
            default: Some(true),
        };
    }
    let err = render(
        "acme",
        Objects {
            organizations: &orgs,
            settings: &settings,
            ranges: &ranges,
            routes: &routes,
            secrets: &secrets,
        },
        &RenderEnv::pod(),
    )
    .unwrap_err();
    assert_eq!(
        err,
        RenderError::TwoDefaultRoutes {
            first: "partner".into(),
            second: "partner-copy".into()
        }
    );
}

#[test]
fn sender_routes_render_apart_from_recipient_routes_and_a_sender_domain_has_one_route() {
    let set = example("multi-host-route");
    let (orgs, settings, ranges, mut routes) = objects_of(&set);
    let secrets = BTreeSet::new();
    let mut by_sender = routes[0].clone();
    by_sender.metadata.name = Some("billing".into());
    by_sender.spec.matcher = crds::RouteMatch {
        recipient_domains: None,
        // The same name as a recipient domain of another route: a different kind.
        sender_domains: Some(vec![
            "Billing.Acme.Example".into(),
            "*.partner.example".into(),
        ]),
        default: None,
    };
    routes.push(by_sender.clone());
    let objects = |routes: &[crds::MailRoute]| {
        render(
            "acme",
            Objects {
                organizations: &orgs,
                settings: &settings,
                ranges: &ranges,
                routes,
                secrets: &secrets,
            },
            &RenderEnv::pod(),
        )
    };
    let r = objects(&routes).unwrap();
    let billing = r
        .config
        .routes
        .iter()
        .find(|r| r.name == "acme/billing")
        .unwrap();
    assert_eq!(
        billing.matcher,
        RouteMatcher::SenderDomains(vec![
            "*.partner.example".into(),
            "billing.acme.example".into()
        ])
    );
    let mut again = by_sender;
    again.metadata.name = Some("billing-copy".into());
    routes.push(again);
    assert_eq!(
        objects(&routes).unwrap_err().to_string(),
        "MailRoute billing and MailRoute billing-copy both match sender domain *.partner.example; a domain belongs to one route"
    );
}

#[test]
fn a_namespace_without_organization_is_an_error() {
    let set = example("quickstart");
    let (_, settings, ranges, routes) = objects_of(&set);
    let secrets = BTreeSet::new();
    let err = render(
        "acme",
        Objects {
            organizations: &[],
            settings: &settings,
            ranges: &ranges,
            routes: &routes,
            secrets: &secrets,
        },
        &RenderEnv::pod(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "no Organization in namespace acme: every relay needs exactly one"
    );
}

#[test]
fn proxy_protocol_renders_canonical_networks_and_stays_out_of_the_config_when_unset() {
    let set = example("quickstart");
    let (mut orgs, settings, ranges, routes) = objects_of(&set);
    let secrets = BTreeSet::new();
    let rendered = |orgs: &[crds::Organization]| {
        render(
            "acme",
            Objects {
                organizations: orgs,
                settings: &settings,
                ranges: &ranges,
                routes: &routes,
                secrets: &secrets,
            },
            &RenderEnv::pod(),
        )
        .unwrap()
        .config
    };
    let plain = rendered(&orgs);
    assert_eq!(plain.proxy_protocol, None);
    assert!(!plain.to_json().contains("proxyProtocol"));
    orgs[0].spec.relay.proxy_protocol = Some(crds::ProxyProtocolSpec {
        trusted_proxies: vec![
            "10.0.0.7".into(),
            "2001:DB8:0:0::/64".into(),
            "10.0.0.7".into(),
        ],
        required: true,
    });
    let behind = rendered(&orgs);
    let proxy = behind.proxy_protocol.clone().unwrap();
    let nets: Vec<String> = proxy
        .trusted_proxies
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(nets, ["10.0.0.7/32", "2001:db8::/64"]);
    assert!(proxy.required);
    assert_ne!(behind.hash, plain.hash);
}

#[test]
fn dkim_keys_render_as_mounted_file_paths_and_a_missing_secret_is_a_finding() {
    use operator::controller::children::{SecretUse, mounted_secrets};
    use relay::config::DkimAlgorithm;
    let set = example("quickstart");
    let (mut orgs, settings, ranges, routes) = objects_of(&set);
    orgs[0].spec.dkim = yaml_serde::from_str(
        "[{domain: acme.example, selector: s1, secretRef: {name: dkim-acme}},
          {domain: eu.acme.example, selector: ed1, secretRef: {name: dkim-eu}, algorithm: ed25519-sha256, headers: [From, Subject]}]",
    )
    .unwrap();
    let secrets = BTreeSet::from(["dkim-acme".to_string()]);
    let r = render(
        "acme",
        Objects {
            organizations: &orgs,
            settings: &settings,
            ranges: &ranges,
            routes: &routes,
            secrets: &secrets,
        },
        &RenderEnv::pod(),
    )
    .unwrap();
    let dkim = &r.config.dkim;
    assert_eq!(dkim.len(), 2);
    assert_eq!(dkim[0].domain, "acme.example");
    assert_eq!(dkim[0].algorithm, DkimAlgorithm::RsaSha256);
    assert_eq!(
        dkim[0].key_file,
        "/etc/smtprelay/dkim/dkim-acme/private.key"
    );
    assert_eq!(dkim[0].headers, relay::delivery::dkim::DEFAULT_HEADERS);
    assert_eq!(dkim[1].domain, "eu.acme.example");
    assert_eq!(dkim[1].algorithm, DkimAlgorithm::Ed25519Sha256);
    assert_eq!(dkim[1].headers, ["From", "Subject"]);
    // The missing Secret keeps its entry (the relay defers that mail) and is reported.
    assert_eq!(dkim[1].key_file, "/etc/smtprelay/dkim/dkim-eu/private.key");
    let missing: Vec<&str> = r
        .findings
        .iter()
        .filter(|f| f.reason == "DkimKeySecretMissing")
        .map(|f| f.message.as_str())
        .collect();
    assert_eq!(
        missing,
        [
            "dkim for eu.acme.example names Secret dkim-eu which does not exist: mail from eu.acme.example is deferred, not sent unsigned, until the Secret (key private.key) is created"
        ]
    );
    let json = r.config.to_json();
    assert!(
        json.contains("\"keyFile\": \"/etc/smtprelay/dkim/dkim-acme/private.key\""),
        "{json}"
    );
    assert!(!json.contains("BEGIN"), "never a key in the config");
    // Only the existing Secret is mounted into pods.
    let mounted = mounted_secrets(&orgs[0], &[], &secrets);
    let dkim_mounts: Vec<&str> = mounted
        .iter()
        .filter(|m| m.usage == SecretUse::Dkim)
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(dkim_mounts, ["dkim-acme"]);
}

/// Gmail's grants render as the Secret's files and Google's defaults: the refresh token
/// goes to Google's token endpoint, the service account asks for Gmail's scope; no value
/// of the Secrets is in the config.
#[test]
fn google_grants_render_file_paths_and_googles_defaults() {
    let r = render_set(&example("gmail-xoauth2"), &RenderEnv::pod()).unwrap();
    let auth = r.config.routes[0].auth.clone().unwrap();
    assert_eq!(auth.client_credentials, None);
    assert_eq!(auth.service_account, None);
    assert_eq!(
        auth.refresh_token,
        Some(relay::config::RefreshTokenConfig {
            token_endpoint: "https://oauth2.googleapis.com/token".into(),
            client_id: "1234567890-abcdefghijklmnopqrstuvwxyz012345.apps.googleusercontent.com"
                .into(),
            client_secret_file: "/etc/smtprelay/route-auth/gmail-oauth/clientSecret".into(),
            refresh_token_file: "/etc/smtprelay/route-auth/gmail-oauth/refreshToken".into(),
            ca_file: None,
        })
    );
    let json = r.config.to_json();
    assert!(!json.contains("replace-with-the-refresh-token"), "{json}");

    let r = render_set(&example("google-service-account"), &RenderEnv::pod()).unwrap();
    let auth = r.config.routes[0].auth.clone().unwrap();
    assert_eq!(auth.refresh_token, None);
    assert_eq!(
        auth.service_account,
        Some(relay::config::ServiceAccountConfig {
            key_file: "/etc/smtprelay/route-auth/google-service-account/serviceAccountKey".into(),
            scope: "https://mail.google.com/".into(),
            ca_file: None,
        })
    );
    assert_eq!(
        auth.username_file,
        "/etc/smtprelay/route-auth/google-service-account/username"
    );
    let json = r.config.to_json();
    assert!(!json.contains("PRIVATE KEY"), "{json}");
}
