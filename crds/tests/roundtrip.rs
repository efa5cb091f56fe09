//! Every kind survives a trip through YAML unchanged, whatever its field values.

use std::collections::BTreeMap;

use crds::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use proptest::prelude::*;

fn domain() -> impl Strategy<Value = String> {
    "[a-z]{1,10}(\\.[a-z]{1,8}){0,2}\\.(example|test|com)"
}

fn opt<T: std::fmt::Debug + Clone>(
    s: impl Strategy<Value = T>,
) -> impl Strategy<Value = Option<T>> {
    proptest::option::of(s)
}

fn labels() -> impl Strategy<Value = Option<BTreeMap<String, String>>> {
    opt(proptest::collection::btree_map(
        "[a-z]{1,6}",
        "[a-z0-9]{0,6}",
        0..3,
    ))
}

fn named<K: kube::Resource>(
    mut obj: K,
    name: String,
    labels: Option<BTreeMap<String, String>>,
) -> K {
    let meta = obj.meta_mut();
    meta.name = Some(name);
    meta.namespace = Some("acme".into());
    meta.labels = labels;
    obj
}

fn limits() -> impl Strategy<Value = LimitOverrides> {
    (
        opt(0i64..100_000),
        opt(0i64..100_000),
        opt(0i64..5_000_000),
        opt(0i64..400_000),
        opt(1i64..1000),
        opt(1024i64..100_000_000),
    )
        .prop_map(|(a, b, c, d, e, f)| LimitOverrides {
            user_messages_per_day: a,
            user_recipients_per_day: b,
            customer_recipients_per_day: c,
            customer_recipients_per10_minutes: d,
            recipients_per_message: e,
            max_message_bytes: f,
            ..Default::default()
        })
}

fn organization() -> impl Strategy<Value = Organization> {
    (
        proptest::collection::vec(domain(), 1..4),
        proptest::collection::vec(
            ("[a-z]{1,8}", domain()).prop_map(|(u, d)| format!("{u}@{d}")),
            0..3,
        ),
        1i64..100_000,
        prop_oneof![Just(Billing::Paid), Just(Billing::Unpaid)],
        opt(limits()),
        opt(1i32..10),
        opt("[a-z]{1,8}"),
        opt(prop_oneof![
            Just(LimitStoreSpec {
                kind: LimitStoreKind::Memory,
                url: None,
                password_secret_ref: None,
            }),
            "[a-z]{1,8}".prop_map(|h| LimitStoreSpec {
                kind: LimitStoreKind::Redis,
                url: Some(format!("redis://{h}:6379")),
                password_secret_ref: Some(SecretRef {
                    name: format!("{h}-auth")
                }),
            }),
        ]),
        labels(),
    )
        .prop_map(
            |(domains, users, licenses, billing, limits, replicas, tls, store, labels)| {
                let spec = OrganizationSpec {
                    domains,
                    users,
                    auth_secret_ref: tls.clone().map(|name| SecretRef {
                        name: format!("{name}-auth"),
                    }),
                    licenses,
                    billing,
                    limits,
                    relay: RelaySpec {
                        replicas,
                        tls_secret_ref: tls.map(|name| SecretRef { name }),
                        limit_store: store,
                        ports: replicas.map(|_| ListenerPorts::default()),
                        ..Default::default()
                    },
                    dkim: Vec::new(),
                    content_filters: Vec::new(),
                    archive: None,
                };
                named(Organization::new("x", spec), "acme".into(), labels)
            },
        )
}

fn setting() -> impl Strategy<Value = SmtpRelaySetting> {
    (
        "[A-Za-z ]{1,30}",
        prop_oneof![
            Just(AllowedSenders::RegisteredUsers),
            Just(AllowedSenders::OrganizationDomains),
            Just(AllowedSenders::AnyAddress)
        ],
        any::<(bool, bool, bool)>(),
        labels(),
        "[a-z]{1,10}",
    )
        .prop_map(
            |(description, allowed_senders, (ip, auth, tls), selector, name)| {
                let spec = SmtpRelaySettingSpec {
                    description,
                    allowed_senders,
                    authentication: Authentication {
                        ip_allow_ranges: IpAllowRangeSelection {
                            enabled: ip,
                            selector: selector.map(|m| LabelSelector {
                                match_labels: Some(m),
                                ..Default::default()
                            }),
                        },
                        require_smtp_auth: auth,
                    },
                    encryption: Encryption { require_tls: tls },
                };
                named(SmtpRelaySetting::new("x", spec), name, None)
            },
        )
}

fn range() -> impl Strategy<Value = IpAllowRange> {
    (
        prop_oneof![
            (any::<[u8; 4]>(), 16u8..=32).prop_map(|(a, p)| format!("{}/{p}", ipnet_v4(a, p))),
            any::<[u16; 8]>().prop_map(|s| std::net::Ipv6Addr::from(s).to_string()),
        ],
        any::<bool>(),
        labels(),
        "[a-z]{1,10}",
    )
        .prop_map(|(cidr, enabled, labels, name)| {
            named(
                IpAllowRange::new(
                    "x",
                    IpAllowRangeSpec {
                        description: "r".into(),
                        cidr,
                        enabled,
                    },
                ),
                name,
                labels,
            )
        })
}

fn ipnet_v4(a: [u8; 4], prefix: u8) -> std::net::Ipv4Addr {
    let bits = u32::from_be_bytes(a) & (u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0));
    std::net::Ipv4Addr::from(bits)
}

fn weighted() -> impl Strategy<Value = WeightedHost> {
    (
        domain(),
        prop_oneof![Just(25), Just(587), 1024i32..65535],
        0i32..=100,
    )
        .prop_map(|(host, port, load_percent)| WeightedHost {
            host,
            port,
            load_percent,
        })
}

fn route() -> impl Strategy<Value = MailRoute> {
    (
        "[A-Za-z ]{1,30}",
        opt(proptest::collection::vec(domain(), 1..3)),
        prop_oneof![
            (domain(), 1024i32..65535)
                .prop_map(|(host, port)| (Some(HostSpec { host, port }), None)),
            (
                proptest::collection::vec(weighted(), 1..3),
                proptest::collection::vec(weighted(), 0..3)
            )
                .prop_map(|(primary, secondary)| (
                    None,
                    Some(MultipleHosts { primary, secondary })
                )),
        ],
        any::<(bool, bool, bool, bool)>(),
        "[a-z]{1,10}",
    )
        .prop_map(
            |(description, domains, (single, multiple), (mx, t1, t2, t3), name)| {
                let matcher = match domains {
                    Some(d) => RouteMatch {
                        recipient_domains: Some(d),
                        sender_domains: None,
                        default: None,
                    },
                    None => RouteMatch {
                        recipient_domains: None,
                        sender_domains: None,
                        default: Some(true),
                    },
                };
                let spec = MailRouteSpec {
                    rate_limit: None,
                    description,
                    matcher,
                    single_host: single,
                    multiple_hosts: multiple,
                    mx_lookup: mx,
                    tls: RouteTls {
                        require_tls: t1,
                        require_ca_signed: t2,
                        validate_hostname: t3,
                        trusted_ca_secret_ref: t3.then(|| SecretRef { name: "ca".into() }),
                        implicit: mx,
                    },
                    auth: (t1 && t2 && t3).then(|| RouteAuth {
                        secret_ref: SecretRef {
                            name: "smarthost".into(),
                        },
                        mechanism: if mx {
                            AuthMechanism::XOAuth2
                        } else {
                            AuthMechanism::Login
                        },
                        client_credentials: mx.then(|| ClientCredentials {
                            token_endpoint: "https://login.example.com/token".into(),
                            client_id: "relay".into(),
                            scope: t1.then(|| "smtp".into()),
                        }),
                        refresh_token: None,
                        service_account: None,
                    }),
                };
                named(MailRoute::new("x", spec), name, None)
            },
        )
}

fn roundtrip<T>(value: &T) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let yaml = yaml_serde::to_string(value).unwrap();
    yaml_serde::from_str(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

proptest! {
    #[test]
    fn organizations_roundtrip(o in organization()) { prop_assert_eq!(roundtrip(&o), o); }
    #[test]
    fn settings_roundtrip(s in setting()) { prop_assert_eq!(roundtrip(&s), s); }
    #[test]
    fn ranges_roundtrip(r in range()) { prop_assert_eq!(roundtrip(&r), r); }
    #[test]
    fn routes_roundtrip(r in route()) { prop_assert_eq!(roundtrip(&r), r); }
}
