//! For random valid configurations: plan(a, a) is empty, and plan(a, b) is empty exactly
//! when a and b render to the same RelayConfig.

use std::collections::{BTreeMap, BTreeSet};

use crds::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use operator::plan::plan;
use operator::render::{Objects, RenderEnv, render};
use proptest::prelude::*;
use relay::config::RelayConfig;

#[derive(Clone, Debug)]
struct World {
    org: Organization,
    settings: Vec<SmtpRelaySetting>,
    ranges: Vec<IpAllowRange>,
    routes: Vec<MailRoute>,
}

fn meta<K: kube::Resource>(mut k: K, name: String, labels: Option<BTreeMap<String, String>>) -> K {
    k.meta_mut().name = Some(name);
    k.meta_mut().namespace = Some("acme".into());
    k.meta_mut().labels = labels;
    k
}

fn org() -> impl Strategy<Value = Organization> {
    (1i64..500, any::<bool>(), proptest::option::of(1i64..50)).prop_map(
        |(licenses, paid, rcpts)| {
            let spec = OrganizationSpec {
                domains: vec!["acme.example".into()],
                users: vec!["alice@acme.example".into()],
                auth_secret_ref: None,
                licenses,
                billing: if paid { Billing::Paid } else { Billing::Unpaid },
                limits: rcpts.map(|r| LimitOverrides {
                    recipients_per_message: Some(r),
                    ..Default::default()
                }),
                relay: RelaySpec::default(),
                dkim: Vec::new(),
                content_filters: Vec::new(),
                archive: None,
            };
            meta(Organization::new("x", spec), "acme".into(), None)
        },
    )
}

fn setting(i: usize) -> impl Strategy<Value = SmtpRelaySetting> {
    (
        0..3u8,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        proptest::option::of(prop_oneof![Just("a"), Just("b")]),
    )
        .prop_map(move |(senders, ip, auth, tls, label)| {
            let ip = ip || !auth;
            let spec = SmtpRelaySettingSpec {
                description: format!("setting {i}"),
                allowed_senders: [
                    AllowedSenders::RegisteredUsers,
                    AllowedSenders::OrganizationDomains,
                    AllowedSenders::AnyAddress,
                ][usize::from(senders)],
                authentication: Authentication {
                    ip_allow_ranges: IpAllowRangeSelection {
                        enabled: ip,
                        selector: label.map(|l| LabelSelector {
                            match_labels: Some([("group".to_string(), l.to_string())].into()),
                            ..Default::default()
                        }),
                    },
                    require_smtp_auth: auth,
                },
                encryption: Encryption {
                    require_tls: tls || auth,
                },
            };
            meta(SmtpRelaySetting::new("x", spec), format!("s{i}"), None)
        })
}

fn range(i: usize) -> impl Strategy<Value = IpAllowRange> {
    (
        0u8..4,
        24u8..=32,
        any::<bool>(),
        prop_oneof![Just("a"), Just("b")],
    )
        .prop_map(move |(third, prefix, enabled, label)| {
            let net = ipnet::Ipv4Net::new(std::net::Ipv4Addr::new(192, 0, third, 0), prefix)
                .unwrap()
                .trunc();
            let spec = IpAllowRangeSpec {
                description: "r".into(),
                cidr: net.to_string(),
                enabled,
            };
            meta(
                IpAllowRange::new("x", spec),
                format!("r{i}"),
                Some([("group".to_string(), label.to_string())].into()),
            )
        })
}

fn route(i: usize) -> impl Strategy<Value = MailRoute> {
    (
        0u8..=100,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(move |(share, pool, mx, ca, name_check)| {
            let host = |n: &str| format!("{n}.route{i}.example");
            let (single_host, multiple_hosts) = if pool {
                let primary = vec![
                    WeightedHost {
                        host: host("a"),
                        port: 25,
                        load_percent: i32::from(share),
                    },
                    WeightedHost {
                        host: host("b"),
                        port: 25,
                        load_percent: 100 - i32::from(share),
                    },
                ];
                (
                    None,
                    Some(MultipleHosts {
                        primary,
                        secondary: vec![],
                    }),
                )
            } else {
                (
                    Some(HostSpec {
                        host: host("a"),
                        port: 25,
                    }),
                    None,
                )
            };
            let spec = MailRouteSpec {
                rate_limit: None,
                description: format!("route {i}"),
                matcher: if i == 0 {
                    RouteMatch {
                        recipient_domains: None,
                        sender_domains: None,
                        default: Some(true),
                    }
                } else {
                    RouteMatch {
                        recipient_domains: Some(vec![format!("d{i}.example")]),
                        sender_domains: None,
                        default: None,
                    }
                },
                single_host,
                multiple_hosts,
                mx_lookup: mx,
                tls: RouteTls {
                    require_tls: true,
                    require_ca_signed: ca,
                    validate_hostname: name_check,
                    trusted_ca_secret_ref: None,
                    implicit: false,
                },
                auth: None,
            };
            meta(MailRoute::new("x", spec), format!("m{i}"), None)
        })
}

fn indexed<T: std::fmt::Debug>(
    max: usize,
    f: fn(usize) -> BoxedStrategy<T>,
) -> impl Strategy<Value = Vec<T>> {
    (0..=max).prop_flat_map(move |n| (0..n).map(f).collect::<Vec<_>>())
}

fn world() -> impl Strategy<Value = World> {
    (
        org(),
        indexed(3, |i| setting(i).boxed()),
        indexed(4, |i| range(i).boxed()),
        indexed(3, |i| route(i).boxed()),
    )
        .prop_map(|(org, settings, ranges, routes)| World {
            org,
            settings,
            ranges,
            routes,
        })
}

fn rendered(w: &World) -> RelayConfig {
    let secrets = BTreeSet::new();
    let orgs = [w.org.clone()];
    let objects = Objects {
        organizations: &orgs,
        settings: &w.settings,
        ranges: &w.ranges,
        routes: &w.routes,
        secrets: &secrets,
    };
    render("acme", objects, &RenderEnv::pod()).unwrap().config
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn plan_is_empty_exactly_when_behaviour_is_equal(a in world(), b in world()) {
        let (ra, rb) = (rendered(&a), rendered(&b));
        prop_assert!(plan(&ra, &ra).is_empty());
        let changes = plan(&ra, &rb);
        prop_assert_eq!(changes.is_empty(), ra == rb, "{:#?}", changes);
    }

    #[test]
    fn a_single_edit_is_always_reported(a in world(), edit in 0u8..4) {
        let mut b = a.clone();
        match edit {
            0 => b.org.spec.licenses += 1,
            1 => if let Some(r) = b.ranges.first_mut() { r.spec.enabled = !r.spec.enabled },
            2 => if let Some(s) = b.settings.first_mut() { s.spec.encryption.require_tls = !s.spec.encryption.require_tls; s.spec.authentication.require_smtp_auth = false; s.spec.authentication.ip_allow_ranges.enabled = true },
            _ => if let Some(r) = b.routes.first_mut() { r.spec.mx_lookup = !r.spec.mx_lookup },
        }
        let (ra, rb) = (rendered(&a), rendered(&b));
        prop_assert_eq!(plan(&ra, &rb).is_empty(), ra == rb);
    }
}
