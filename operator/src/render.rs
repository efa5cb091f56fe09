//! `render`: the one place where SmtpRelay objects become relay behaviour.
//!
//! A pure, deterministic function from the objects of one namespace (one Organization and
//! its settings, ranges and routes) plus a [`RenderEnv`] (where the relay listens and where
//! its Secrets are mounted) to a sealed [`RelayConfig`]. Lists are sorted and names are
//! lower-cased, so reordering or reformatting manifests never changes the hash.
//!
//! Problems that make a configuration impossible (two default routes, two routes claiming
//! one domain, no Organization) are [`RenderError`]s naming the objects. Problems that leave
//! a working but surprising configuration (a selector that matches no range, a missing
//! Secret) are [`Finding`]s, which the operator turns into status conditions and Events
//! and `relayctl` prints as warnings. The operator, `relayctl` and the conformance harness
//! all call this function.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use crds::{
    AllowedSenders as CrdSenders, Billing, IpAllowRange, LimitStoreKind, MailRoute, Organization,
    SmtpRelaySetting,
};
use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use relay::config::{
    AllowedSenders, CONFIG_FORMAT, DeliveryConfig, DkimAlgorithm, DkimConfig, HostConfig,
    LimitStoreConfig, LimitsConfig, ListenerConfig, OrganizationConfig, ProxyProtocolConfig,
    RangeConfig, RelayConfig, RouteAuthConfig, RouteConfig, RouteHosts, RouteMatcher,
    RouteTlsConfig, SettingConfig, TlsFiles, WeightedHostConfig,
};

/// Where the rendered relay runs: listeners and the paths at which Secrets are mounted.
/// Part of the rendered document, so the same objects under two environments hash
/// differently, and the same environment makes `render` comparable across revisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderEnv {
    pub listeners: ListenerConfig,
    pub admin_listen: SocketAddr,
    pub spool_dir: String,
    /// Directory holding `tls.crt` and `tls.key` of the Organization's TLS Secret.
    pub tls_dir: String,
    /// Directory holding the `credentials` key of the Organization's auth Secret.
    pub credentials_dir: String,
    /// Directory under which each route's CA Secret is mounted as `<secret>/ca.crt`.
    pub ca_dir: String,
    /// Delivery settings that are not part of the API (nameservers, schedule).
    pub delivery: DeliveryConfig,
}

impl RenderEnv {
    /// The layout of a relay pod, as the operator's StatefulSet mounts it.
    pub fn pod() -> Self {
        // Every address family the pod has: `[::]` takes IPv4 too (a dual-stack socket),
        // and the relay falls back to `0.0.0.0` where the pod has no IPv6 (SPEC §3.9).
        let any = |port| SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
        Self {
            listeners: ListenerConfig {
                smtp: any(2525),
                submission: any(5587),
                smtps: any(4465),
            },
            admin_listen: any(9090),
            spool_dir: "/var/spool/smtprelay".into(),
            tls_dir: "/etc/smtprelay/tls".into(),
            credentials_dir: "/etc/smtprelay/auth".into(),
            ca_dir: "/etc/smtprelay/ca".into(),
            delivery: DeliveryConfig::default(),
        }
    }

    /// Where the admin token Secret's `token` key is mounted: `admin/token` next to the
    /// TLS directory (`/etc/smtprelay/admin/token` in a pod; `relayctl run` writes a local
    /// one there). Queue administration on the admin endpoint needs this token.
    pub fn admin_token_file(&self) -> String {
        let tls = std::path::Path::new(&self.tls_dir);
        tls.parent()
            .unwrap_or(tls)
            .join("admin")
            .join("token")
            .to_string_lossy()
            .into_owned()
    }

    /// Directory under which each route's `auth.secretRef` Secret is mounted as
    /// `<secret>/<key>` for each of [`ROUTE_AUTH_KEYS`] it has: `route-auth` next to the TLS
    /// directory (`/etc/smtprelay/route-auth` in a pod).
    pub fn route_auth_dir(&self) -> String {
        let tls = std::path::Path::new(&self.tls_dir);
        tls.parent()
            .unwrap_or(tls)
            .join("route-auth")
            .to_string_lossy()
            .into_owned()
    }

    /// Where the `private.key` of a DKIM key Secret is mounted: `dkim/<secret>/private.key`
    /// next to the TLS directory (`/etc/smtprelay/dkim/<secret>/private.key` in a pod).
    pub fn dkim_key_file(&self, secret: &str) -> String {
        let tls = std::path::Path::new(&self.tls_dir);
        tls.parent()
            .unwrap_or(tls)
            .join("dkim")
            .join(secret)
            .join(DKIM_SECRET_KEY)
            .to_string_lossy()
            .into_owned()
    }

    /// Where the Redis password Secret's `password` key is mounted: `redis/password` next
    /// to the TLS directory (`/etc/smtprelay/redis/password` in a pod).
    pub fn redis_password_file(&self) -> String {
        let tls = std::path::Path::new(&self.tls_dir);
        tls.parent()
            .unwrap_or(tls)
            .join("redis")
            .join("password")
            .to_string_lossy()
            .into_owned()
    }
}

/// The key of a DKIM Secret that holds the PEM private key.
pub const DKIM_SECRET_KEY: &str = "private.key";

/// The keys of a route's `auth.secretRef` Secret that render names files for.
pub mod route_auth_key {
    /// The SMTP user name (every mechanism; the impersonated user of a service account).
    pub const USERNAME: &str = "username";
    /// `Plain` and `Login`.
    pub const PASSWORD: &str = "password";
    /// `XOAuth2` with an access token kept fresh outside the relay.
    pub const TOKEN: &str = "token";
    /// `XOAuth2` with `clientCredentials` or `refreshToken`.
    pub const CLIENT_SECRET: &str = "clientSecret";
    /// `XOAuth2` with `refreshToken`.
    pub const REFRESH_TOKEN: &str = "refreshToken";
    /// `XOAuth2` with `serviceAccount`: the service account's JSON key.
    pub const SERVICE_ACCOUNT_KEY: &str = "serviceAccountKey";
}

/// Every key of a route's auth Secret a relay may read: what relay pods mount (each
/// optional, as a Secret holds only those of its mechanism and grant) and what `relayctl
/// run` copies. One list, so a key render names is a key pods mount.
pub const ROUTE_AUTH_KEYS: &[&str] = &[
    route_auth_key::USERNAME,
    route_auth_key::PASSWORD,
    route_auth_key::TOKEN,
    route_auth_key::CLIENT_SECRET,
    route_auth_key::REFRESH_TOKEN,
    route_auth_key::SERVICE_ACCOUNT_KEY,
];

/// The kind of object a [`Finding`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    Organization,
    SmtpRelaySetting,
    IpAllowRange,
    MailRoute,
}

impl std::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ObjectKind::Organization => "Organization",
            ObjectKind::SmtpRelaySetting => "SmtpRelaySetting",
            ObjectKind::IpAllowRange => "IpAllowRange",
            ObjectKind::MailRoute => "MailRoute",
        })
    }
}

/// A cross-object problem that leaves a working configuration: reported, not fatal.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Finding {
    pub kind: ObjectKind,
    /// Object name (the namespace is the Organization's).
    pub name: String,
    /// Machine-readable reason, used as a condition reason.
    pub reason: &'static str,
    /// What happens and what to do.
    pub message: String,
}

/// `MailRoute partner: message`, as `relayctl` prints it after `warning: `.
impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.kind, self.name, self.message)
    }
}

/// A rendered configuration and what render noticed on the way.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    pub config: RelayConfig,
    pub findings: Vec<Finding>,
}

/// Why objects could not be rendered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    #[error("no Organization in namespace {namespace}: every relay needs exactly one")]
    NoOrganization { namespace: String },
    #[error(
        "namespace {namespace} has {count} Organizations ({names}); a namespace is one organization"
    )]
    SeveralOrganizations {
        namespace: String,
        count: usize,
        names: String,
    },
    #[error(
        "MailRoute {first} and MailRoute {second} are both default routes; keep one `default: true`"
    )]
    TwoDefaultRoutes { first: String, second: String },
    #[error(
        "MailRoute {first} and MailRoute {second} both match {kind} domain {domain}; a domain belongs to one route"
    )]
    DomainClaimedTwice {
        kind: &'static str,
        domain: String,
        first: String,
        second: String,
    },
    #[error("{kind:?} {name}: {message}")]
    Invalid {
        kind: ObjectKind,
        name: String,
        message: String,
    },
}

/// The objects of one namespace.
#[derive(Clone, Copy, Debug)]
pub struct Objects<'a> {
    pub organizations: &'a [Organization],
    pub settings: &'a [SmtpRelaySetting],
    pub ranges: &'a [IpAllowRange],
    pub routes: &'a [MailRoute],
    /// Names of the Secrets that exist in the namespace.
    pub secrets: &'a BTreeSet<String>,
}

/// Renders the objects of `namespace` into a sealed RelayConfig.
pub fn render(
    namespace: &str,
    objects: Objects<'_>,
    env: &RenderEnv,
) -> Result<Rendered, RenderError> {
    let in_ns = |ns: Option<String>| ns.as_deref().unwrap_or("default") == namespace;
    let orgs: Vec<&Organization> = objects
        .organizations
        .iter()
        .filter(|o| in_ns(o.namespace()))
        .collect();
    let org = match orgs.as_slice() {
        [] => {
            return Err(RenderError::NoOrganization {
                namespace: namespace.into(),
            });
        }
        [one] => *one,
        many => {
            let mut names: Vec<String> = many.iter().map(|o| o.name_any()).collect();
            names.sort();
            return Err(RenderError::SeveralOrganizations {
                namespace: namespace.into(),
                count: many.len(),
                names: names.join(", "),
            });
        }
    };
    let mut settings: Vec<&SmtpRelaySetting> = objects
        .settings
        .iter()
        .filter(|o| in_ns(o.namespace()))
        .collect();
    let mut ranges: Vec<&IpAllowRange> = objects
        .ranges
        .iter()
        .filter(|o| in_ns(o.namespace()))
        .collect();
    let mut routes: Vec<&MailRoute> = objects
        .routes
        .iter()
        .filter(|o| in_ns(o.namespace()))
        .collect();
    settings.sort_by_key(|s| s.name_any());
    ranges.sort_by_key(|r| r.name_any());
    routes.sort_by_key(|r| r.name_any());

    let mut findings = Vec::new();
    let qualified = |name: String| format!("{namespace}/{name}");
    let secret_exists = |name: &str| objects.secrets.contains(name);

    // Organization.
    let spec = &org.spec;
    let mut domains: Vec<String> = spec
        .domains
        .iter()
        .map(|d| d.to_ascii_lowercase())
        .collect();
    domains.sort();
    domains.dedup();
    let mut users: Vec<String> = spec.users.iter().map(|u| u.to_ascii_lowercase()).collect();
    users.sort();
    users.dedup();
    let org_finding = |reason, message: String| Finding {
        kind: ObjectKind::Organization,
        name: org.name_any(),
        reason,
        message,
    };
    let credentials_file = match &spec.auth_secret_ref {
        Some(r) if secret_exists(&r.name) => Some(format!("{}/credentials", env.credentials_dir)),
        Some(r) => {
            findings.push(org_finding(
                "AuthSecretMissing",
                format!("authSecretRef names Secret {} which does not exist: SMTP AUTH fails for every user until it is created", r.name),
            ));
            None
        }
        None => None,
    };
    let tls = match &spec.relay.tls_secret_ref {
        Some(r) if secret_exists(&r.name) => Some(TlsFiles {
            cert_file: format!("{}/tls.crt", env.tls_dir),
            key_file: format!("{}/tls.key", env.tls_dir),
        }),
        Some(r) => {
            findings.push(org_finding(
                "TlsSecretMissing",
                format!("relay.tlsSecretRef names Secret {} which does not exist: STARTTLS is not offered and settings that require TLS refuse mail", r.name),
            ));
            None
        }
        None => None,
    };
    let limit_store = match &spec.relay.limit_store {
        Some(s) if s.kind == LimitStoreKind::Redis => LimitStoreConfig::Redis {
            url: s.url.clone().unwrap_or_default(),
            // Only the path of the mounted Secret: the password itself never enters the
            // config (or the ConfigMap that carries it).
            password_file: match &s.password_secret_ref {
                Some(r) if secret_exists(&r.name) => Some(env.redis_password_file()),
                Some(r) => {
                    findings.push(org_finding(
                        "RedisPasswordSecretMissing",
                        format!("relay.limitStore.passwordSecretRef names Secret {} which does not exist: the relays connect to Redis without a password", r.name),
                    ));
                    None
                }
                None => None,
            },
        },
        _ => LimitStoreConfig::Memory,
    };
    if spec.relay.replicas.unwrap_or(1) > 1 && limit_store == LimitStoreConfig::Memory {
        findings.push(org_finding(
            "RedisRequired",
            format!(
                "relay.replicas is {} but limitStore is Memory: each replica would count limits on its own; set relay.limitStore to type Redis",
                spec.relay.replicas.unwrap_or(1)
            ),
        ));
    }
    let limits = resolve_limits(org);
    // DKIM: only the path of each mounted key, never the key. A missing Secret still
    // yields its entry, so the relay defers that domain's mail instead of sending it
    // unsigned, and is reported.
    let mut dkim: Vec<DkimConfig> = Vec::with_capacity(spec.dkim.len());
    for k in &spec.dkim {
        if !secret_exists(&k.secret_ref.name) {
            findings.push(org_finding(
                "DkimKeySecretMissing",
                format!("dkim for {} names Secret {} which does not exist: mail from {} is deferred, not sent unsigned, until the Secret (key {DKIM_SECRET_KEY}) is created", k.domain, k.secret_ref.name, k.domain),
            ));
        }
        let headers = match &k.headers {
            Some(h) => h.clone(),
            None => relay::delivery::dkim::DEFAULT_HEADERS
                .iter()
                .map(|h| h.to_string())
                .collect(),
        };
        dkim.push(DkimConfig {
            domain: k.domain.to_ascii_lowercase(),
            selector: k.selector.clone(),
            algorithm: match k.algorithm {
                crds::DkimAlgorithm::RsaSha256 => DkimAlgorithm::RsaSha256,
                crds::DkimAlgorithm::Ed25519Sha256 => DkimAlgorithm::Ed25519Sha256,
            },
            key_file: env.dkim_key_file(&k.secret_ref.name),
            headers,
        });
    }
    dkim.sort_by(|a, b| a.domain.cmp(&b.domain));
    let proxy_protocol = match &spec.relay.proxy_protocol {
        Some(p) => {
            let mut trusted_proxies = Vec::with_capacity(p.trusted_proxies.len());
            for text in &p.trusted_proxies {
                trusted_proxies.push(parse_network(text).ok_or_else(|| RenderError::Invalid {
                    kind: ObjectKind::Organization,
                    name: org.name_any(),
                    message: format!(
                        "relay.proxyProtocol.trustedProxies entry {text:?} is not an address or network"
                    ),
                })?);
            }
            trusted_proxies.sort();
            trusted_proxies.dedup();
            Some(ProxyProtocolConfig {
                trusted_proxies,
                required: p.required,
            })
        }
        None => None,
    };

    // Ranges: canonical networks of enabled ranges.
    let mut networks: BTreeMap<String, IpNet> = BTreeMap::new();
    for range in &ranges {
        let net = parse_network(&range.spec.cidr).ok_or_else(|| RenderError::Invalid {
            kind: ObjectKind::IpAllowRange,
            name: range.name_any(),
            message: format!("cidr {:?} is not an address or network", range.spec.cidr),
        })?;
        if range.spec.enabled {
            networks.insert(range.name_any(), net);
        }
    }

    // Settings.
    let mut selected_ranges = BTreeSet::new();
    let mut setting_configs = Vec::with_capacity(settings.len());
    for setting in &settings {
        let s = &setting.spec;
        let ip_ranges = if s.authentication.ip_allow_ranges.enabled {
            let selector = s.authentication.ip_allow_ranges.selector.as_ref();
            let mut chosen: Vec<RangeConfig> = Vec::new();
            for range in &ranges {
                if !selector_matches(selector, range.labels()) {
                    continue;
                }
                selected_ranges.insert(range.name_any());
                if let Some(net) = networks.get(&range.name_any()) {
                    chosen.push(RangeConfig {
                        name: qualified(range.name_any()),
                        network: *net,
                    });
                }
            }
            chosen.sort_by(|a, b| (a.network, &a.name).cmp(&(b.network, &b.name)));
            if chosen.is_empty() {
                findings.push(Finding {
                    kind: ObjectKind::SmtpRelaySetting,
                    name: setting.name_any(),
                    reason: "NoRangesSelected",
                    message: "authentication.ipAllowRanges is enabled but its selector matches no enabled IpAllowRange: this setting accepts no client".into(),
                });
            }
            Some(chosen)
        } else {
            None
        };
        if s.authentication.require_smtp_auth && spec.auth_secret_ref.is_none() {
            findings.push(Finding {
                kind: ObjectKind::SmtpRelaySetting,
                name: setting.name_any(),
                reason: "NoCredentials",
                message: "requireSmtpAuth is on but the Organization has no authSecretRef: no client can authenticate".into(),
            });
        }
        if s.encryption.require_tls && tls.is_none() {
            findings.push(Finding {
                kind: ObjectKind::SmtpRelaySetting,
                name: setting.name_any(),
                reason: "NoRelayCertificate",
                message: "encryption.requireTls is on but the relay has no TLS certificate (relay.tlsSecretRef): this setting accepts no mail".into(),
            });
        }
        setting_configs.push(SettingConfig {
            name: qualified(setting.name_any()),
            description: s.description.trim().to_string(),
            allowed_senders: match s.allowed_senders {
                CrdSenders::RegisteredUsers => AllowedSenders::RegisteredUsers,
                CrdSenders::OrganizationDomains => AllowedSenders::OrganizationDomains,
                CrdSenders::AnyAddress => AllowedSenders::AnyAddress,
            },
            ip_ranges,
            require_smtp_auth: s.authentication.require_smtp_auth,
            require_tls: s.encryption.require_tls || s.authentication.require_smtp_auth,
        });
    }
    for range in &ranges {
        if !selected_ranges.contains(&range.name_any()) {
            findings.push(Finding {
                kind: ObjectKind::IpAllowRange,
                name: range.name_any(),
                reason: "NotSelected",
                message: "no SmtpRelaySetting with ipAllowRanges enabled selects this range: it allows nothing".into(),
            });
        }
    }

    // Routes.
    let mut route_configs = Vec::with_capacity(routes.len());
    let mut default_route: Option<String> = None;
    let mut claimed: BTreeMap<String, String> = BTreeMap::new();
    let mut claimed_senders: BTreeMap<String, String> = BTreeMap::new();
    for route in &routes {
        let r = &route.spec;
        let name = route.name_any();
        let invalid = |message: String| RenderError::Invalid {
            kind: ObjectKind::MailRoute,
            name: name.clone(),
            message,
        };
        // Lower-cased, sorted, each domain claimed by one route of its kind.
        let claim = |domains: &Vec<String>,
                     claimed: &mut BTreeMap<String, String>,
                     kind: &'static str|
         -> Result<Vec<String>, RenderError> {
            let mut domains: Vec<String> = domains.iter().map(|d| d.to_ascii_lowercase()).collect();
            domains.sort();
            domains.dedup();
            for d in &domains {
                if let Some(first) = claimed.insert(d.clone(), name.clone()) {
                    return Err(RenderError::DomainClaimedTwice {
                        kind,
                        domain: d.clone(),
                        first,
                        second: name.clone(),
                    });
                }
            }
            Ok(domains)
        };
        let matcher = match (
            &r.matcher.recipient_domains,
            &r.matcher.sender_domains,
            r.matcher.default,
        ) {
            (Some(domains), _, _) if !domains.is_empty() => {
                RouteMatcher::Domains(claim(domains, &mut claimed, "recipient")?)
            }
            (_, Some(domains), _) if !domains.is_empty() => {
                RouteMatcher::SenderDomains(claim(domains, &mut claimed_senders, "sender")?)
            }
            (_, _, Some(true)) => {
                if let Some(first) = default_route.replace(name.clone()) {
                    return Err(RenderError::TwoDefaultRoutes {
                        first,
                        second: name,
                    });
                }
                RouteMatcher::Default
            }
            _ => {
                return Err(invalid(
                    "match needs recipientDomains, senderDomains or default: true".into(),
                ));
            }
        };
        let port =
            |p: i32| u16::try_from(p).map_err(|_| invalid(format!("port {p} is out of range")));
        let weighted =
            |hosts: &[crds::WeightedHost]| -> Result<Vec<WeightedHostConfig>, RenderError> {
                let mut out = hosts
                    .iter()
                    .map(|h| {
                        Ok(WeightedHostConfig {
                            host: h.host.to_ascii_lowercase(),
                            port: port(h.port)?,
                            load_percent: u8::try_from(h.load_percent.clamp(0, 100)).unwrap_or(100),
                        })
                    })
                    .collect::<Result<Vec<_>, RenderError>>()?;
                out.sort_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port)));
                Ok(out)
            };
        let hosts = match (&r.single_host, &r.multiple_hosts) {
            (Some(h), None) => RouteHosts::Single(HostConfig {
                host: h.host.to_ascii_lowercase(),
                port: port(h.port)?,
            }),
            (None, Some(m)) => RouteHosts::Pool {
                primary: weighted(&m.primary)?,
                secondary: weighted(&m.secondary)?,
            },
            _ => {
                return Err(invalid(
                    "set exactly one of singleHost and multipleHosts".into(),
                ));
            }
        };
        let extra_ca_file = match &r.tls.trusted_ca_secret_ref {
            Some(s) if secret_exists(&s.name) => Some(format!("{}/{}/ca.crt", env.ca_dir, s.name)),
            Some(s) => {
                findings.push(Finding {
                    kind: ObjectKind::MailRoute,
                    name: name.clone(),
                    reason: "CaSecretMissing",
                    message: format!("tls.trustedCaSecretRef names Secret {} which does not exist: only public roots are trusted", s.name),
                });
                None
            }
            None => None,
        };
        // The route's credentials are named by file, never inlined: the relay reads them at
        // each delivery, and the config (ConfigMap, `relayctl render`, plan) never holds them.
        let auth = r.auth.as_ref().map(|a| {
            if !secret_exists(&a.secret_ref.name) {
                findings.push(Finding {
                    kind: ObjectKind::MailRoute,
                    name: name.clone(),
                    reason: "AuthSecretMissing",
                    message: format!(
                        "auth.secretRef names Secret {} which does not exist: mail on this route waits in the queue until it does",
                        a.secret_ref.name
                    ),
                });
            }
            let dir = format!("{}/{}", env.route_auth_dir(), a.secret_ref.name);
            let file = |key: &str| format!("{dir}/{key}");
            RouteAuthConfig {
                mechanism: match a.mechanism {
                    crds::AuthMechanism::Plain => relay::config::AuthMechanism::Plain,
                    crds::AuthMechanism::Login => relay::config::AuthMechanism::Login,
                    crds::AuthMechanism::XOAuth2 => relay::config::AuthMechanism::XOAuth2,
                },
                secret_name: a.secret_ref.name.clone(),
                username_file: file(route_auth_key::USERNAME),
                secret_file: match a.mechanism {
                    crds::AuthMechanism::XOAuth2 => file(route_auth_key::TOKEN),
                    _ => file(route_auth_key::PASSWORD),
                },
                client_credentials: a.client_credentials.as_ref().map(|cc| {
                    relay::config::ClientCredentialsConfig {
                        token_endpoint: cc.token_endpoint.clone(),
                        client_id: cc.client_id.clone(),
                        scope: cc.scope.clone(),
                        client_secret_file: file(route_auth_key::CLIENT_SECRET),
                        ca_file: extra_ca_file.clone(),
                    }
                }),
                refresh_token: a.refresh_token.as_ref().map(|rt| {
                    relay::config::RefreshTokenConfig {
                        token_endpoint: rt.endpoint().to_string(),
                        client_id: rt.client_id.clone(),
                        client_secret_file: file(route_auth_key::CLIENT_SECRET),
                        refresh_token_file: file(route_auth_key::REFRESH_TOKEN),
                        ca_file: extra_ca_file.clone(),
                    }
                }),
                service_account: a.service_account.as_ref().map(|sa| {
                    relay::config::ServiceAccountConfig {
                        key_file: file(route_auth_key::SERVICE_ACCOUNT_KEY),
                        scope: sa.scope().to_string(),
                        ca_file: extra_ca_file.clone(),
                    }
                }),
            }
        });
        if !r.tls.require_ca_signed || !r.tls.validate_hostname || !r.tls.require_tls {
            findings.push(Finding {
                kind: ObjectKind::MailRoute,
                name: name.clone(),
                reason: "TlsChecksRelaxed",
                message: format!(
                    "TLS checks relaxed: requireTls={}, requireCaSigned={}, validateHostname={}",
                    r.tls.require_tls, r.tls.require_ca_signed, r.tls.validate_hostname
                ),
            });
        }
        route_configs.push(RouteConfig {
            rate_limit: r
                .rate_limit
                .as_ref()
                .map(|l| relay::config::RouteRateLimit {
                    messages_per_second: l.messages_per_second.and_then(|n| u32::try_from(n).ok()),
                    max_connections: l.max_connections.and_then(|n| u32::try_from(n).ok()),
                }),
            name: qualified(name.clone()),
            description: r.description.trim().to_string(),
            matcher,
            hosts,
            mx_lookup: r.mx_lookup,
            tls: RouteTlsConfig {
                require_tls: r.tls.require_tls,
                require_ca_signed: r.tls.require_ca_signed,
                validate_hostname: r.tls.validate_hostname,
                extra_ca_file,
                implicit: r.tls.implicit,
            },
            auth,
        });
    }

    let archive = spec.archive.as_ref().map(|a| {
        let route = a.route.as_ref().map(|r| {
            if !objects.routes.iter().any(|m| m.name_any() == *r) {
                findings.push(Finding {
                    kind: ObjectKind::Organization,
                    name: org.name_any(),
                    reason: "ArchiveRouteMissing",
                    message: format!(
                        "archive.route names MailRoute {r}, which does not exist: journal copies wait in the queue until it does"
                    ),
                });
            }
            qualified(r.clone())
        });
        let (local, domain) = a.address.rsplit_once('@').unwrap_or((a.address.as_str(), ""));
        relay::config::ArchiveConfig {
            address: format!("{local}@{}", domain.to_ascii_lowercase()),
            route,
            include_filtered_out: a.include_filtered_out,
            postmaster: format!(
                "postmaster@{}",
                domains.first().map(String::as_str).unwrap_or("localhost")
            ),
        }
    });
    let hostname = spec
        .relay
        .hostname
        .clone()
        .map(|h| h.to_ascii_lowercase())
        .or_else(|| domains.first().map(|d| format!("relay.{d}")))
        .unwrap_or_else(|| "relay".into());
    let config = RelayConfig {
        format: CONFIG_FORMAT,
        hash: String::new(),
        organization: OrganizationConfig {
            name: qualified(org.name_any()),
            domains,
            users,
            credentials_file,
        },
        hostname,
        listeners: env.listeners.clone(),
        tls,
        settings: setting_configs,
        routes: route_configs,
        limits,
        limit_store,
        delivery: env.delivery.clone(),
        spool_dir: env.spool_dir.clone(),
        admin_listen: env.admin_listen,
        admin_token_file: Some(env.admin_token_file()),
        proxy_protocol,
        hide_client_address: spec.relay.hide_client_address,
        dkim,
        content_filters: content_filters(&spec.content_filters),
        archive,
    }
    .seal();
    findings.sort();
    Ok(Rendered { config, findings })
}

/// The content filters, in the order the Organization lists them, with the defaults of
/// SPEC §2.1 filled in (30 s, `TempFail`). The schema bounds every value; a value out of
/// range (only a hand-made object can hold one) takes the nearest bound.
fn content_filters(filters: &[crds::ContentFilterSpec]) -> Vec<relay::config::ContentFilterConfig> {
    filters
        .iter()
        .map(|f| relay::config::ContentFilterConfig {
            name: f.name.clone(),
            host: f.milter.host.to_ascii_lowercase(),
            port: u16::try_from(f.milter.port.clamp(1, 65_535)).unwrap_or(u16::MAX),
            timeout_seconds: u64::try_from(f.timeout_seconds.unwrap_or(30).clamp(1, 600))
                .unwrap_or(30),
            on_unavailable: match f.on_unavailable {
                crds::OnUnavailable::TempFail => relay::config::OnUnavailable::TempFail,
                crds::OnUnavailable::Accept => relay::config::OnUnavailable::Accept,
            },
            max_message_bytes: f.max_message_bytes.and_then(|n| u64::try_from(n).ok()),
        })
        .collect()
}

/// DKIM keys whose Secret exists but holds no usable private key under `private.key`
/// (render sees only which Secrets exist; the controller, which reads them, adds these).
/// The relay defers that domain's mail, so each is a finding. Never quotes the key.
pub fn dkim_key_findings(
    org: &Organization,
    secrets: &[k8s_openapi::api::core::v1::Secret],
) -> Vec<Finding> {
    let mut out = Vec::new();
    for k in &org.spec.dkim {
        let Some(secret) = secrets.iter().find(|s| s.name_any() == k.secret_ref.name) else {
            continue; // DkimKeySecretMissing, from render.
        };
        let algorithm = match k.algorithm {
            crds::DkimAlgorithm::RsaSha256 => DkimAlgorithm::RsaSha256,
            crds::DkimAlgorithm::Ed25519Sha256 => DkimAlgorithm::Ed25519Sha256,
        };
        let problem = match crate::secrets::secret_value(secret, DKIM_SECRET_KEY) {
            // SecretKeyMissing, from the controller's check of the keys pods mount.
            None => continue,
            Some(pem) => match relay::delivery::dkim::public_key(&pem, algorithm) {
                Ok(_) => continue,
                Err(e) => format!(
                    "key {DKIM_SECRET_KEY} is not a usable {} private key ({e})",
                    algorithm.as_str()
                ),
            },
        };
        out.push(Finding {
            kind: ObjectKind::Organization,
            name: org.name_any(),
            reason: "DkimKeyUnreadable",
            message: format!(
                "dkim for {}: Secret {} {problem}: mail from {} is deferred, not sent unsigned, until the key is fixed",
                k.domain, k.secret_ref.name, k.domain
            ),
        });
    }
    out
}

/// Customer limits from licences and billing, then the Organization's overrides.
fn resolve_limits(org: &Organization) -> LimitsConfig {
    let spec = &org.spec;
    let mut limits = LimitsConfig::for_customer(
        u64::try_from(spec.licenses.max(1)).unwrap_or(1),
        spec.billing == Billing::Paid,
    );
    if let Some(o) = &spec.limits {
        let u64_of = |v: Option<i64>, into: &mut u64| {
            if let Some(v) = v.and_then(|v| u64::try_from(v).ok()) {
                *into = v;
            }
        };
        let u32_of = |v: Option<i64>, into: &mut u32| {
            if let Some(v) = v.and_then(|v| u32::try_from(v).ok()) {
                *into = v;
            }
        };
        u64_of(o.user_messages_per_day, &mut limits.user_messages_per_day);
        u64_of(
            o.user_recipients_per_day,
            &mut limits.user_recipients_per_day,
        );
        u64_of(
            o.customer_recipients_per_day,
            &mut limits.customer_recipients_per_day,
        );
        u64_of(
            o.customer_recipients_per10_minutes,
            &mut limits.customer_recipients_per10_minutes,
        );
        u32_of(o.recipients_per_message, &mut limits.recipients_per_message);
        u64_of(o.max_message_bytes, &mut limits.max_message_bytes);
        u32_of(o.connections_per_ip, &mut limits.connections_per_ip);
        u64_of(o.idle_timeout_seconds, &mut limits.idle_timeout_seconds);
        u64_of(
            o.session_timeout_seconds,
            &mut limits.session_timeout_seconds,
        );
        u32_of(o.max_errors, &mut limits.max_errors);
    }
    limits
}

/// Parses an address or CIDR in any textual form into its canonical network.
pub fn parse_network(text: &str) -> Option<IpNet> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Some(net.trunc());
    }
    text.parse::<IpAddr>().ok().map(IpNet::from)
}

/// Kubernetes label-selector semantics; no selector (or an empty one) selects everything.
pub fn selector_matches(
    selector: Option<&LabelSelector>,
    labels: &BTreeMap<String, String>,
) -> bool {
    let Some(selector) = selector else {
        return true;
    };
    let labels_ok = selector
        .match_labels
        .as_ref()
        .is_none_or(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let expressions_ok = selector.match_expressions.as_ref().is_none_or(|exprs| {
        exprs.iter().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            let value = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
    });
    labels_ok && expressions_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    #[test]
    fn ipv6_spellings_render_to_one_network() {
        let a = parse_network("1050:0000:0000:0000:0005:0600:300c:326b").unwrap();
        let b = parse_network("1050:0:0:0:5:600:300c:326b").unwrap();
        let c = parse_network("1050::5:600:300c:326b/128").unwrap();
        assert_eq!(a, b);
        assert_eq!(b, c);
        assert_eq!(a.to_string(), "1050::5:600:300c:326b/128");
    }

    #[test]
    fn selectors_follow_kubernetes_semantics() {
        let labels: BTreeMap<String, String> = [("site".to_string(), "hq".to_string())].into();
        let req = |op: &str, values: &[&str]| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "site".into(),
                operator: op.into(),
                values: Some(values.iter().map(|v| v.to_string()).collect()),
            }]),
            ..Default::default()
        };
        assert!(selector_matches(None, &labels));
        assert!(selector_matches(Some(&LabelSelector::default()), &labels));
        assert!(selector_matches(
            Some(&req("In", &["hq", "branch"])),
            &labels
        ));
        assert!(!selector_matches(Some(&req("NotIn", &["hq"])), &labels));
        assert!(selector_matches(Some(&req("Exists", &[])), &labels));
        assert!(!selector_matches(Some(&req("DoesNotExist", &[])), &labels));
        let by_label = LabelSelector {
            match_labels: Some([("site".into(), "branch".into())].into()),
            ..Default::default()
        };
        assert!(!selector_matches(Some(&by_label), &labels));
    }
}
