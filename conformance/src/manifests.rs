//! One organization's objects, as a test describes them: a typed [`Manifests`] value that
//! is written out as the YAML a user keeps in Git ([`Manifests::to_yaml`]) and rendered
//! through `crds::manifest::load_sources` and `operator::manifests::render_set`, exactly as
//! `relayctl render` and the operator do.
//!
//! The [`crate::model`] reads the same value, so a relay rendered from the YAML and the
//! model's predictions start from one description. This module does not decide behaviour.

use std::fmt::Write as _;

use operator::render::RenderEnv;
use relay::RelayConfig;

/// Namespace of every generated organization.
pub const NAMESPACE: &str = "acme";

/// Users with SMTP AUTH credentials in [`CREDENTIALS`], and their passwords.
pub const PASSWORDS: [(&str, &str); 2] = [
    ("alice@acme.example", "correct horse battery staple"),
    ("ticketing@acme.example", "app-secret-2"),
];

/// The credentials file of the auth Secret: argon2id PHC strings of [`PASSWORDS`].
pub const CREDENTIALS: &str = "alice@acme.example:$argon2id$v=19$m=32768,t=2,p=1$YzJGc2RITmhiSFJ6WVd4ME1USXo$uB9I9PjgnSjjXtlc4cLrreuv4WYM60VPG7mmpXSbKis\n\
ticketing@acme.example:$argon2id$v=19$m=32768,t=2,p=1$WVc1dmRHaGxjbk5oYkhReE1qTTA$2P6x3zXT70nCKFc5TCRRzf7s/R+60hZ0IhKci2nKdSQ\n";

/// Sender modes of SPEC §3.3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Senders {
    RegisteredUsers,
    OrganizationDomains,
    AnyAddress,
}

impl Senders {
    fn as_str(self) -> &'static str {
        match self {
            Senders::RegisteredUsers => "RegisteredUsers",
            Senders::OrganizationDomains => "OrganizationDomains",
            Senders::AnyAddress => "AnyAddress",
        }
    }
}

/// `Organization.spec.limits` overrides; `None` keeps the default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LimitOverrides {
    pub user_messages_per_day: Option<u64>,
    pub user_recipients_per_day: Option<u64>,
    pub customer_recipients_per_day: Option<u64>,
    pub customer_recipients_per10_minutes: Option<u64>,
    pub recipients_per_message: Option<u64>,
}

/// The Organization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrgSpec {
    /// Lower-case mail domains.
    pub domains: Vec<String>,
    /// Registered users.
    pub users: Vec<String>,
    /// The relay has a TLS Secret (STARTTLS offered).
    pub tls: bool,
    /// The auth Secret exists (credentials of [`PASSWORDS`]).
    pub auth: bool,
    pub licenses: u64,
    pub paid: bool,
    pub limits: LimitOverrides,
    /// `spec.relay.proxyProtocol`: load balancers that name the client with a PROXY
    /// protocol header.
    pub proxy_protocol: Option<crds::ProxyProtocolSpec>,
    /// `spec.dkim`: signing keys; each Secret is stubbed here, its `private.key` is copied
    /// into the relay container.
    pub dkim: Vec<DkimKeySpec>,
    /// `spec.contentFilters`, in order.
    pub content_filters: Vec<crds::ContentFilterSpec>,
    /// `spec.archive`.
    pub archive: Option<crds::ArchiveSpec>,
}

/// One `Organization.spec.dkim` key: the domain it signs for, its selector, the Secret
/// holding `private.key`, and the algorithm as the manifest spells it (`rsa-sha256`,
/// `ed25519-sha256`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DkimKeySpec {
    pub domain: String,
    pub selector: String,
    pub secret: String,
    pub algorithm: &'static str,
}

/// A route's `rateLimit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimitSpec {
    pub messages_per_second: u32,
    pub max_connections: u32,
}

/// An SmtpRelaySetting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettingSpec {
    pub name: String,
    pub senders: Senders,
    /// `Some(selector)` when `ipAllowRanges.enabled`; the selector is a value of the label
    /// `smtprelay.dev/allow`, or `None` for no selector (every range of the namespace).
    pub ip_ranges: Option<Option<String>>,
    pub require_auth: bool,
    pub require_tls: bool,
}

/// An IpAllowRange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeSpec {
    pub name: String,
    /// Address or CIDR, as the user wrote it.
    pub cidr: String,
    pub enabled: bool,
    /// Value of the `smtprelay.dev/allow` label.
    pub label: String,
}

/// How a route matches recipients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteMatch {
    /// Exact domains or `*.` wildcards.
    Domains(Vec<String>),
    Default,
}

/// A destination host: name or IP literal, port, and share in a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostSpec {
    pub host: String,
    pub port: u16,
    pub load_percent: u8,
}

/// Where a route sends mail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteHostsSpec {
    Single(HostSpec),
    Pool {
        primary: Vec<HostSpec>,
        secondary: Vec<HostSpec>,
    },
}

/// A MailRoute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteSpec {
    pub name: String,
    pub matcher: RouteMatch,
    pub hosts: RouteHostsSpec,
    pub mx_lookup: bool,
    pub require_tls: bool,
    pub require_ca_signed: bool,
    pub validate_hostname: bool,
    /// Name of a Secret with `ca.crt` trusted for this route.
    pub trusted_ca: Option<String>,
    /// `tls.implicit`: TLS from the first byte (port 465).
    pub implicit: bool,
    /// `auth`: outbound SMTP AUTH to the route's hosts.
    pub auth: Option<RouteAuthSpec>,
    /// `rateLimit`: how often transactions on the route start, and its session cap.
    pub rate_limit: Option<RateLimitSpec>,
}

/// A route's `auth`: the mechanism as the manifest spells it (`Plain`, `Login`,
/// `XOAuth2`) and the name of the Secret holding `username` and `password`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteAuthSpec {
    pub mechanism: &'static str,
    pub secret: String,
}

impl RouteSpec {
    /// A route with every TLS check off (plain delivery to a local sink).
    pub fn relaxed(name: &str, matcher: RouteMatch, hosts: RouteHostsSpec) -> Self {
        Self {
            name: name.into(),
            matcher,
            hosts,
            mx_lookup: false,
            require_tls: false,
            require_ca_signed: false,
            validate_hostname: false,
            trusted_ca: None,
            implicit: false,
            auth: None,
            rate_limit: None,
        }
    }
}

/// All objects of one organization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifests {
    pub org: OrgSpec,
    pub settings: Vec<SettingSpec>,
    pub ranges: Vec<RangeSpec>,
    pub routes: Vec<RouteSpec>,
}

/// Names of the Secrets the manifests refer to.
pub const TLS_SECRET: &str = "relay-tls";
pub const AUTH_SECRET: &str = "smtp-credentials";

fn header(out: &mut String, kind: &str, name: &str) {
    let _ = write!(
        out,
        "---\napiVersion: smtprelay.dev/v1alpha1\nkind: {kind}\nmetadata:\n  name: {name}\n  namespace: {NAMESPACE}\n"
    );
}

fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

fn hosts_yaml(hosts: &[HostSpec]) -> String {
    if hosts.is_empty() {
        return "[]".into();
    }
    let mut out = String::new();
    for h in hosts {
        let _ = write!(
            out,
            "\n      - {{host: {:?}, port: {}, loadPercent: {}}}",
            h.host, h.port, h.load_percent
        );
    }
    out
}

impl Manifests {
    /// The manifests as one multi-document YAML file.
    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        let o = &self.org;
        header(&mut out, "Organization", NAMESPACE);
        let _ = writeln!(
            out,
            "spec:\n  domains: {}\n  users: {}\n  licenses: {}\n  billing: {}",
            list(&o.domains),
            list(&o.users),
            o.licenses,
            if o.paid { "Paid" } else { "Unpaid" }
        );
        if o.auth {
            let _ = writeln!(out, "  authSecretRef:\n    name: {AUTH_SECRET}");
        }
        let l = &o.limits;
        let overrides: Vec<(&str, Option<u64>)> = vec![
            ("userMessagesPerDay", l.user_messages_per_day),
            ("userRecipientsPerDay", l.user_recipients_per_day),
            ("customerRecipientsPerDay", l.customer_recipients_per_day),
            (
                "customerRecipientsPer10Minutes",
                l.customer_recipients_per10_minutes,
            ),
            ("recipientsPerMessage", l.recipients_per_message),
        ];
        if overrides.iter().any(|(_, v)| v.is_some()) {
            out.push_str("  limits:\n");
            for (k, v) in overrides {
                if let Some(v) = v {
                    let _ = writeln!(out, "    {k}: {v}");
                }
            }
        }
        if !o.dkim.is_empty() {
            out.push_str("  dkim:\n");
            for k in &o.dkim {
                let _ = writeln!(
                    out,
                    "    - domain: {:?}\n      selector: {:?}\n      secretRef: {{name: {}}}\n      algorithm: {}",
                    k.domain, k.selector, k.secret, k.algorithm
                );
            }
        }
        if !o.content_filters.is_empty() {
            out.push_str("  contentFilters:\n");
            for f in &o.content_filters {
                let _ = writeln!(
                    out,
                    "    - name: {}\n      milter: {{host: {:?}, port: {}}}\n      onUnavailable: {}",
                    f.name,
                    f.milter.host,
                    f.milter.port,
                    match f.on_unavailable {
                        crds::OnUnavailable::TempFail => "TempFail",
                        crds::OnUnavailable::Accept => "Accept",
                    }
                );
                if let Some(t) = f.timeout_seconds {
                    let _ = writeln!(out, "      timeoutSeconds: {t}");
                }
                if let Some(m) = f.max_message_bytes {
                    let _ = writeln!(out, "      maxMessageBytes: {m}");
                }
            }
        }
        if let Some(a) = &o.archive {
            let _ = writeln!(
                out,
                "  archive:\n    address: {:?}\n    includeFilteredOut: {}",
                a.address, a.include_filtered_out
            );
            if let Some(route) = &a.route {
                let _ = writeln!(out, "    route: {route}");
            }
        }
        out.push_str("  relay:\n    hostname: relay.acme.example\n");
        if o.tls {
            let _ = writeln!(out, "    tlsSecretRef:\n      name: {TLS_SECRET}");
        }
        if let Some(p) = &o.proxy_protocol {
            let _ = writeln!(
                out,
                "    proxyProtocol:\n      trustedProxies: {}\n      required: {}",
                list(&p.trusted_proxies),
                p.required
            );
        }
        if o.tls {
            let _ = write!(
                out,
                "---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: {TLS_SECRET}\n  namespace: {NAMESPACE}\ntype: kubernetes.io/tls\n"
            );
        }
        if o.auth {
            let _ = write!(
                out,
                "---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: {AUTH_SECRET}\n  namespace: {NAMESPACE}\ntype: Opaque\n"
            );
        }
        for s in &self.settings {
            header(&mut out, "SmtpRelaySetting", &s.name);
            let _ = writeln!(
                out,
                "spec:\n  description: setting {}\n  allowedSenders: {}\n  authentication:",
                s.name,
                s.senders.as_str()
            );
            match &s.ip_ranges {
                None => out.push_str("    ipAllowRanges:\n      enabled: false\n"),
                Some(None) => out.push_str("    ipAllowRanges:\n      enabled: true\n"),
                Some(Some(label)) => {
                    let _ = writeln!(
                        out,
                        "    ipAllowRanges:\n      enabled: true\n      selector:\n        matchLabels:\n          smtprelay.dev/allow: {label:?}"
                    );
                }
            }
            let _ = writeln!(
                out,
                "    requireSmtpAuth: {}\n  encryption:\n    requireTls: {}",
                s.require_auth, s.require_tls
            );
        }
        for r in &self.ranges {
            header(&mut out, "IpAllowRange", &r.name);
            let _ = writeln!(
                out,
                "  labels:\n    smtprelay.dev/allow: {:?}\nspec:\n  description: range {}\n  cidr: {:?}\n  enabled: {}",
                r.label, r.name, r.cidr, r.enabled
            );
        }
        let mut secrets: Vec<&str> = Vec::new();
        for r in &self.routes {
            header(&mut out, "MailRoute", &r.name);
            let _ = writeln!(out, "spec:\n  description: route {}\n  match:", r.name);
            match &r.matcher {
                RouteMatch::Domains(d) => {
                    let _ = writeln!(out, "    recipientDomains: {}", list(d));
                }
                RouteMatch::Default => out.push_str("    default: true\n"),
            }
            match &r.hosts {
                RouteHostsSpec::Single(h) => {
                    let _ = writeln!(
                        out,
                        "  singleHost:\n    host: {:?}\n    port: {}",
                        h.host, h.port
                    );
                }
                RouteHostsSpec::Pool { primary, secondary } => {
                    let _ = writeln!(
                        out,
                        "  multipleHosts:\n    primary: {}\n    secondary: {}",
                        hosts_yaml(primary),
                        hosts_yaml(secondary)
                    );
                }
            }
            let _ = writeln!(
                out,
                "  mxLookup: {}\n  tls:\n    requireTls: {}\n    requireCaSigned: {}\n    validateHostname: {}",
                r.mx_lookup, r.require_tls, r.require_ca_signed, r.validate_hostname
            );
            if let Some(ca) = &r.trusted_ca {
                let _ = writeln!(out, "    trustedCaSecretRef:\n      name: {ca}");
                secrets.push(ca);
            }
            if r.implicit {
                out.push_str("    implicit: true\n");
            }
            if let Some(a) = &r.auth {
                let _ = writeln!(
                    out,
                    "  auth:\n    mechanism: {}\n    secretRef:\n      name: {}",
                    a.mechanism, a.secret
                );
                secrets.push(&a.secret);
            }
            if let Some(l) = &r.rate_limit {
                let _ = writeln!(
                    out,
                    "  rateLimit:\n    messagesPerSecond: {}\n    maxConnections: {}",
                    l.messages_per_second, l.max_connections
                );
            }
        }
        for k in &self.org.dkim {
            secrets.push(&k.secret);
        }
        // Route Secrets (trusted CAs, AUTH credentials) and DKIM key Secrets exist; their data is copied into
        // the relay container, not written here.
        secrets.sort();
        secrets.dedup();
        for secret in secrets {
            let _ = write!(
                out,
                "---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: {secret}\n  namespace: {NAMESPACE}\ntype: Opaque\n"
            );
        }
        out
    }

    /// Loads the YAML as `relayctl` does and renders it for `env`.
    pub fn render(&self, env: &RenderEnv) -> Result<RelayConfig, String> {
        render_yaml(&self.to_yaml(), env)
    }
}

/// Loads manifest text and renders it for `env`; errors are the loader's or render's text.
pub fn render_yaml(yaml: &str, env: &RenderEnv) -> Result<RelayConfig, String> {
    let set = crds::manifest::load_sources(&[("relay.yaml".to_string(), yaml.to_string())])
        .map_err(|e| e.to_string())?;
    operator::manifests::render_set(&set, env)
        .map(|r| r.config)
        .map_err(|e| e.to_string())
}
