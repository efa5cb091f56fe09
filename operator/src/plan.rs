//! `relayctl plan`: what changes in relay behaviour between two rendered configurations.
//!
//! The diff is over [`RelayConfig`], not over YAML, so reordering or reformatting manifests
//! is "no behavioural change". Each line has a [`Severity`]: a loosening (a sender policy
//! widened to `AnyAddress`, a TLS check turned off, IP coverage gained) is a warning,
//! everything else a notice. The diff is complete: whenever two configurations differ,
//! at least one line says where, falling back to a field-by-field JSON comparison for
//! anything without a dedicated sentence.
//!
//! Reading the two revisions from Git lives in [`crate::git`]; printing in [`format`](mod@format).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use ipnet::IpNet;
use relay::config::{AllowedSenders, RelayConfig, RouteConfig, RouteHosts, SettingConfig};
use serde::Serialize;

/// Changes of content in the Secrets the organizations and routes reference (AUTH
/// credentials, TLS certificate and key, CA roots). A rendered config names these only by
/// file, so [`plan`] cannot see them; this says "credentials changed" for each, never what
/// changed. A Secret that appears or disappears is reported the same way.
pub fn secret_changes(
    base: &crds::manifest::ManifestSet,
    head: &crds::manifest::ManifestSet,
) -> Vec<Change> {
    use kube::ResourceExt;
    use sha2::{Digest, Sha256};
    let referenced = |set: &crds::manifest::ManifestSet| {
        let mut names = std::collections::BTreeSet::new();
        for org in &set.organizations {
            let ns = org.object.namespace().unwrap_or_default();
            if let Some(r) = &org.object.spec.auth_secret_ref {
                names.insert((ns.clone(), r.name.clone(), "AUTH credentials"));
            }
            if let Some(r) = &org.object.spec.relay.tls_secret_ref {
                names.insert((ns.clone(), r.name.clone(), "TLS certificate and key"));
            }
        }
        for route in &set.routes {
            let ns = route.object.namespace().unwrap_or_default();
            if let Some(r) = &route.object.spec.tls.trusted_ca_secret_ref {
                names.insert((ns.clone(), r.name.clone(), "CA roots"));
            }
            if let Some(a) = &route.object.spec.auth {
                names.insert((ns, a.secret_ref.name.clone(), "route AUTH credentials"));
            }
        }
        names
    };
    // A digest of the data the relay would see (stringData wins over data, as the API
    // server merges them); the digest itself is never printed.
    let digest = |set: &crds::manifest::ManifestSet, ns: &str, name: &str| {
        set.secrets
            .iter()
            .find(|s| s.object.name_any() == name && s.object.namespace().unwrap_or_default() == ns)
            .map(|s| {
                let mut values: BTreeMap<String, Vec<u8>> = BTreeMap::new();
                for (k, v) in s.object.data.iter().flatten() {
                    values.insert(k.clone(), v.0.clone());
                }
                for (k, v) in s.object.string_data.iter().flatten() {
                    values.insert(k.clone(), v.as_bytes().to_vec());
                }
                let mut h = Sha256::new();
                for (k, v) in &values {
                    h.update(k.as_bytes());
                    h.update([0]);
                    h.update((v.len() as u64).to_be_bytes());
                    h.update(v);
                }
                h.finalize().to_vec()
            })
    };
    let mut names = referenced(base);
    names.extend(referenced(head));
    let mut out = Vec::new();
    for (ns, name, what) in names {
        if digest(base, &ns, &name) != digest(head, &ns, &name) {
            push(
                &mut out,
                Severity::Notice,
                &format!("Secret {ns}/{name}"),
                format!("credentials changed ({what}; content not shown)"),
            );
        }
    }
    out
}

/// How much a reviewer should care.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// A change that keeps or tightens the policy.
    Notice,
    /// A loosening: more clients, more senders, fewer checks.
    Warning,
}

/// One behavioural change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    pub severity: Severity,
    /// `Kind namespace/name` of the object the change is about.
    pub object: String,
    /// The change in words.
    pub change: String,
    /// A RelayExpectation case that passed at the base fails at the head: the change
    /// breaks a behaviour the repository states (`relayctl plan --fail-on breaking`).
    #[serde(
        rename = "breaksExpectation",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub breaks_expectation: bool,
}

/// What `relayctl plan --fail-on` turns into exit code 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FailOn {
    /// Any behavioural change.
    Change,
    /// A warning: a loosened policy, or an expectation that now fails.
    Warning,
    /// A RelayExpectation case that passed at the base and fails at the head.
    Breaking,
}

impl FailOn {
    /// Whether `changes` trip this gate.
    pub fn tripped(self, changes: &[Change]) -> bool {
        changes.iter().any(|c| match self {
            FailOn::Change => true,
            FailOn::Warning => c.severity == Severity::Warning,
            FailOn::Breaking => c.breaks_expectation,
        })
    }
}

/// The changes from `base` to `head`, in a stable order (by object, then as found).
pub fn plan(base: &RelayConfig, head: &RelayConfig) -> Vec<Change> {
    let mut out = Vec::new();
    if base.compute_hash() == head.compute_hash() {
        return out;
    }
    organization(base, head, &mut out);
    settings(base, head, &mut out);
    routes(base, head, &mut out);
    limits(base, head, &mut out);
    rest(base, head, &mut out);
    out
}

fn push(out: &mut Vec<Change>, severity: Severity, object: &str, change: String) {
    out.push(Change {
        severity,
        object: object.to_string(),
        change,
        breaks_expectation: false,
    });
}

fn organization(base: &RelayConfig, head: &RelayConfig, out: &mut Vec<Change>) {
    let object = format!("Organization {}", head.organization.name);
    let (b, h) = (&base.organization, &head.organization);
    for d in h.domains.iter().filter(|d| !b.domains.contains(d)) {
        push(
            out,
            Severity::Warning,
            &object,
            format!("domain {d} added: its addresses and subdomains become organization senders"),
        );
    }
    for d in b.domains.iter().filter(|d| !h.domains.contains(d)) {
        push(
            out,
            Severity::Notice,
            &object,
            format!("domain {d} removed"),
        );
    }
    for u in h.users.iter().filter(|u| !b.users.contains(u)) {
        push(
            out,
            Severity::Warning,
            &object,
            format!("registered user {u} added"),
        );
    }
    for u in b.users.iter().filter(|u| !h.users.contains(u)) {
        push(
            out,
            Severity::Notice,
            &object,
            format!("registered user {u} removed"),
        );
    }
    match (&b.credentials_file, &h.credentials_file) {
        (None, Some(_)) => push(
            out,
            Severity::Notice,
            &object,
            "SMTP AUTH credentials now available".into(),
        ),
        (Some(_), None) => push(
            out,
            Severity::Notice,
            &object,
            "SMTP AUTH credentials no longer available: AUTH fails".into(),
        ),
        _ => {}
    }
    match (&base.tls, &head.tls) {
        (None, Some(_)) => push(
            out,
            Severity::Notice,
            &object,
            "relay certificate added: STARTTLS and port 465 offered".into(),
        ),
        (Some(_), None) => push(
            out,
            Severity::Warning,
            &object,
            "relay certificate removed: no STARTTLS, settings requiring TLS refuse mail".into(),
        ),
        _ => {}
    }
    proxy_protocol(base, head, &object, out);
    dkim(base, head, &object, out);
    content_filters(base, head, &object, out);
    archive(base, head, &object, out);
    if base.hostname != head.hostname {
        push(
            out,
            Severity::Notice,
            &object,
            format!("hostname {} → {}", base.hostname, head.hostname),
        );
    }
}

fn senders_rank(s: AllowedSenders) -> u8 {
    match s {
        AllowedSenders::RegisteredUsers => 0,
        AllowedSenders::OrganizationDomains => 1,
        AllowedSenders::AnyAddress => 2,
    }
}

fn describe_setting(s: &SettingConfig) -> String {
    let ip = match &s.ip_ranges {
        None => "any IP".to_string(),
        Some(r) => {
            let (count, _) = coverage(r.iter().map(|r| r.network));
            format!("{} range(s), {} address(es)", r.len(), count)
        }
    };
    format!(
        "allowedSenders {}, {ip}, SMTP AUTH {}, TLS {}",
        s.allowed_senders,
        if s.require_smtp_auth {
            "required"
        } else {
            "not required"
        },
        if s.require_tls {
            "required"
        } else {
            "not required"
        }
    )
}

fn settings(base: &RelayConfig, head: &RelayConfig, out: &mut Vec<Change>) {
    let b: BTreeMap<&str, &SettingConfig> =
        base.settings.iter().map(|s| (s.name.as_str(), s)).collect();
    let h: BTreeMap<&str, &SettingConfig> =
        head.settings.iter().map(|s| (s.name.as_str(), s)).collect();
    let names: std::collections::BTreeSet<&str> = b.keys().chain(h.keys()).copied().collect();
    for name in names {
        let object = format!("SmtpRelaySetting {name}");
        match (b.get(name), h.get(name)) {
            (None, Some(s)) => push(
                out,
                Severity::Warning,
                &object,
                format!("added: {}", describe_setting(s)),
            ),
            (Some(s), None) => push(
                out,
                Severity::Notice,
                &object,
                format!(
                    "removed (was: {}); clients it allowed lose the right to relay unless another setting allows them",
                    describe_setting(s)
                ),
            ),
            (Some(bs), Some(hs)) if bs != hs => setting_changes(&object, bs, hs, out),
            _ => {}
        }
    }
}

fn setting_changes(object: &str, b: &SettingConfig, h: &SettingConfig, out: &mut Vec<Change>) {
    let before = out.len();
    if b.allowed_senders != h.allowed_senders {
        let loosened = senders_rank(h.allowed_senders) > senders_rank(b.allowed_senders);
        push(
            out,
            if loosened {
                Severity::Warning
            } else {
                Severity::Notice
            },
            object,
            format!(
                "allowedSenders {} → {}{}",
                b.allowed_senders,
                h.allowed_senders,
                if loosened {
                    " (sender policy loosened)"
                } else {
                    " (sender policy tightened)"
                }
            ),
        );
    }
    for (label, was, now) in [
        ("requireSmtpAuth", b.require_smtp_auth, h.require_smtp_auth),
        ("requireTls", b.require_tls, h.require_tls),
    ] {
        if was != now {
            let sev = if was {
                Severity::Warning
            } else {
                Severity::Notice
            };
            let words = if was { "turned off" } else { "turned on" };
            push(out, sev, object, format!("{label} {words}"));
        }
    }
    match (&b.ip_ranges, &h.ip_ranges) {
        (Some(_), None) => push(
            out,
            Severity::Warning,
            object,
            "IP allow list turned off: clients are no longer checked by address".into(),
        ),
        (None, Some(r)) => {
            let (count, _) = coverage(r.iter().map(|r| r.network));
            push(
                out,
                Severity::Notice,
                object,
                format!(
                    "IP allow list turned on: {count} address(es) in {} range(s)",
                    r.len()
                ),
            );
        }
        (Some(br), Some(hr)) => {
            let bn: Vec<IpNet> = br.iter().map(|r| r.network).collect();
            let hn: Vec<IpNet> = hr.iter().map(|r| r.network).collect();
            let (gained_count, gained) = difference(&hn, &bn);
            let (lost_count, lost) = difference(&bn, &hn);
            if gained_count > 0 {
                push(
                    out,
                    Severity::Warning,
                    object,
                    format!(
                        "IP coverage gained {gained_count} address(es): {}",
                        join_nets(&gained)
                    ),
                );
            }
            if lost_count > 0 {
                push(
                    out,
                    Severity::Notice,
                    object,
                    format!(
                        "IP coverage lost {lost_count} address(es): {}",
                        join_nets(&lost)
                    ),
                );
            }
        }
        (None, None) => {}
    }
    if b.description != h.description {
        push(
            out,
            Severity::Notice,
            object,
            format!("description {:?} → {:?}", b.description, h.description),
        );
    }
    if out.len() == before {
        json_diff(object, &to_value(b), &to_value(h), "", out);
    }
}

fn join_nets(nets: &[IpNet]) -> String {
    const SHOWN: usize = 8;
    let mut s = nets
        .iter()
        .take(SHOWN)
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if nets.len() > SHOWN {
        let _ = write!(s, " and {} more", nets.len() - SHOWN);
    }
    s
}

fn host_shares(route: &RouteConfig) -> (BTreeMap<String, u8>, BTreeMap<String, u8>) {
    match &route.hosts {
        RouteHosts::Single(h) => (
            [(format!("{}:{}", h.host, h.port), 100)].into(),
            BTreeMap::new(),
        ),
        RouteHosts::Pool { primary, secondary } => {
            let m = |hs: &[relay::config::WeightedHostConfig]| {
                hs.iter()
                    .map(|h| (format!("{}:{}", h.host, h.port), h.load_percent))
                    .collect()
            };
            (m(primary), m(secondary))
        }
    }
}

fn describe_route(r: &RouteConfig) -> String {
    let (p, s) = host_shares(r);
    let fmt = |m: &BTreeMap<String, u8>| {
        m.iter()
            .map(|(h, w)| format!("{h} {w}%"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut d = format!("{} → {}", matcher_words(r), fmt(&p));
    if !s.is_empty() {
        let _ = write!(d, "; secondary {}", fmt(&s));
    }
    if r.mx_lookup {
        d.push_str(" (MX lookup)");
    }
    d
}

fn matcher_words(r: &RouteConfig) -> String {
    match &r.matcher {
        relay::config::RouteMatcher::Default => "all other recipients".into(),
        relay::config::RouteMatcher::Domains(d) => d.join(", "),
        relay::config::RouteMatcher::SenderDomains(d) => format!("mail from {}", d.join(", ")),
    }
}

fn routes(base: &RelayConfig, head: &RelayConfig, out: &mut Vec<Change>) {
    let b: BTreeMap<&str, &RouteConfig> =
        base.routes.iter().map(|r| (r.name.as_str(), r)).collect();
    let h: BTreeMap<&str, &RouteConfig> =
        head.routes.iter().map(|r| (r.name.as_str(), r)).collect();
    let names: std::collections::BTreeSet<&str> = b.keys().chain(h.keys()).copied().collect();
    for name in names {
        let object = format!("MailRoute {name}");
        match (b.get(name), h.get(name)) {
            (None, Some(r)) => {
                push(
                    out,
                    Severity::Notice,
                    &object,
                    format!("added: {}", describe_route(r)),
                );
                tls_lines(&object, None, r, out);
            }
            (Some(r), None) => push(
                out,
                Severity::Notice,
                &object,
                format!(
                    "removed (was: {}); its mail now takes the default route or MX",
                    describe_route(r)
                ),
            ),
            (Some(br), Some(hr)) if br != hr => route_changes(&object, br, hr, out),
            _ => {}
        }
    }
}

fn route_changes(object: &str, b: &RouteConfig, h: &RouteConfig, out: &mut Vec<Change>) {
    let before = out.len();
    if b.matcher != h.matcher {
        push(
            out,
            Severity::Notice,
            object,
            format!(
                "now matches {} (was {})",
                matcher_words(h),
                matcher_words(b)
            ),
        );
    }
    let (bp, bs) = host_shares(b);
    let (hp, hs) = host_shares(h);
    for (tier, bm, hm) in [("primary", &bp, &hp), ("secondary", &bs, &hs)] {
        let hosts: std::collections::BTreeSet<&String> = bm.keys().chain(hm.keys()).collect();
        for host in hosts {
            match (bm.get(host), hm.get(host)) {
                (None, Some(w)) => push(
                    out,
                    Severity::Notice,
                    object,
                    format!("{tier} host {host} added with {w}% of the traffic"),
                ),
                (Some(w), None) => push(
                    out,
                    Severity::Notice,
                    object,
                    format!("{tier} host {host} removed (had {w}%)"),
                ),
                (Some(bw), Some(hw)) if bw != hw => push(
                    out,
                    Severity::Notice,
                    object,
                    format!("{tier} host {host} load share {bw}% → {hw}%"),
                ),
                _ => {}
            }
        }
    }
    if b.mx_lookup != h.mx_lookup {
        let words = if h.mx_lookup {
            "turned on: mail goes to the MX hosts of the route's host"
        } else {
            "turned off"
        };
        push(out, Severity::Notice, object, format!("MX lookup {words}"));
    }
    tls_lines(object, Some(b), h, out);
    if out.len() == before {
        json_diff(object, &to_value(b), &to_value(h), "", out);
    }
}

fn tls_lines(object: &str, b: Option<&RouteConfig>, h: &RouteConfig, out: &mut Vec<Change>) {
    let checks = |r: &RouteConfig| {
        [
            ("requireTls", r.tls.require_tls),
            ("requireCaSigned", r.tls.require_ca_signed),
            ("validateHostname", r.tls.validate_hostname),
        ]
    };
    let before = b.map(checks).unwrap_or([
        ("requireTls", true),
        ("requireCaSigned", true),
        ("validateHostname", true),
    ]);
    for ((label, was), (_, now)) in before.into_iter().zip(checks(h)) {
        if was && !now {
            push(
                out,
                Severity::Warning,
                object,
                format!("TLS check {label} turned off"),
            );
        } else if !was && now {
            push(
                out,
                Severity::Notice,
                object,
                format!("TLS check {label} turned on"),
            );
        }
    }
    if b.is_some_and(|b| b.tls.implicit) != h.tls.implicit {
        push(
            out,
            Severity::Notice,
            object,
            if h.tls.implicit {
                "implicit TLS turned on: TLS from the first byte (port 465 style)".into()
            } else {
                "implicit TLS turned off: STARTTLS".into()
            },
        );
    }
    auth_lines(object, b, h, out);
    if let Some(b) = b
        && b.tls.extra_ca_file != h.tls.extra_ca_file
    {
        push(
            out,
            Severity::Notice,
            object,
            "trusted CA roots changed".into(),
        );
    }
}

/// Outbound AUTH of a route: named by mechanism and Secret, never by content.
fn auth_lines(object: &str, b: Option<&RouteConfig>, h: &RouteConfig, out: &mut Vec<Change>) {
    let before = b.and_then(|b| b.auth.as_ref());
    match (before, h.auth.as_ref()) {
        (None, None) => {}
        (None, Some(a)) => push(
            out,
            Severity::Notice,
            object,
            format!(
                "credentials changed: outbound AUTH {} with Secret {} turned on",
                a.mechanism.sasl_name(),
                a.secret_name
            ),
        ),
        (Some(a), None) => push(
            out,
            Severity::Warning,
            object,
            format!(
                "credentials changed: outbound AUTH {} with Secret {} turned off",
                a.mechanism.sasl_name(),
                a.secret_name
            ),
        ),
        (Some(a), Some(n)) if a != n => push(
            out,
            Severity::Notice,
            object,
            format!(
                "credentials changed: outbound AUTH {} with Secret {} → {} with Secret {}",
                a.mechanism.sasl_name(),
                a.secret_name,
                n.mechanism.sasl_name(),
                n.secret_name
            ),
        ),
        _ => {}
    }
}

fn limits(base: &RelayConfig, head: &RelayConfig, out: &mut Vec<Change>) {
    if base.limits == head.limits {
        return;
    }
    let object = format!("Organization {}", head.organization.name);
    let b = to_value(&base.limits);
    let h = to_value(&head.limits);
    if let (Some(b), Some(h)) = (b.as_object(), h.as_object()) {
        for (k, hv) in h {
            let bv = b.get(k).cloned().unwrap_or_default();
            if &bv != hv {
                let raised = hv.as_u64().unwrap_or(0) > bv.as_u64().unwrap_or(0);
                push(
                    out,
                    if raised {
                        Severity::Warning
                    } else {
                        Severity::Notice
                    },
                    &object,
                    format!(
                        "limit {k} {bv} → {hv}{}",
                        if raised { " (raised)" } else { " (lowered)" }
                    ),
                );
            }
        }
    }
}

/// DKIM: a domain that loses its key sends unsigned mail (receivers with a DMARC policy
/// may then refuse it); a new or changed key must have its DNS record published first.
fn dkim(base: &RelayConfig, head: &RelayConfig, object: &str, out: &mut Vec<Change>) {
    for h in &head.dkim {
        match base.dkim.iter().find(|b| b.domain == h.domain) {
            None => push(
                out,
                Severity::Notice,
                object,
                format!(
                    "DKIM signing added for {} (selector {}, {}): publish its record first (relayctl dkim-record)",
                    h.domain,
                    h.selector,
                    h.algorithm.as_str()
                ),
            ),
            Some(b) if b != h => push(
                out,
                Severity::Notice,
                object,
                format!(
                    "DKIM key of {} changed: selector {} → {}, {} → {}, headers [{}] → [{}]",
                    h.domain,
                    b.selector,
                    h.selector,
                    b.algorithm.as_str(),
                    h.algorithm.as_str(),
                    b.headers.join(", "),
                    h.headers.join(", ")
                ),
            ),
            Some(_) => {}
        }
    }
    for b in &base.dkim {
        if !head.dkim.iter().any(|h| h.domain == b.domain) {
            push(
                out,
                Severity::Warning,
                object,
                format!(
                    "DKIM signing removed for {}: its mail is sent unsigned",
                    b.domain
                ),
            );
        }
    }
}

/// Archive: turning it off, or sending the copies elsewhere, changes what compliance
/// receives: both warn.
fn archive(base: &RelayConfig, head: &RelayConfig, object: &str, out: &mut Vec<Change>) {
    let route = |a: &relay::config::ArchiveConfig| {
        a.route
            .clone()
            .map(|r| format!("through route {r}"))
            .unwrap_or_else(|| "routed like any recipient".into())
    };
    match (&base.archive, &head.archive) {
        (None, Some(h)) => push(
            out,
            Severity::Notice,
            object,
            format!(
                "archiving turned on: a journal copy of every accepted message goes to {} ({})",
                h.address,
                route(h)
            ),
        ),
        (Some(b), None) => push(
            out,
            Severity::Warning,
            object,
            format!(
                "archiving turned off: messages accepted from now on are no longer copied to {}",
                b.address
            ),
        ),
        (Some(b), Some(h)) => {
            if b.address != h.address {
                push(
                    out,
                    Severity::Warning,
                    object,
                    format!(
                        "archive address changed: {} → {} (copies already queued still go to {})",
                        b.address, h.address, b.address
                    ),
                );
            }
            if b.route != h.route {
                push(
                    out,
                    Severity::Notice,
                    object,
                    format!("archive copies now go {} (were {})", route(h), route(b)),
                );
            }
            if b.include_filtered_out != h.include_filtered_out {
                push(
                    out,
                    if h.include_filtered_out {
                        Severity::Notice
                    } else {
                        Severity::Warning
                    },
                    object,
                    if h.include_filtered_out {
                        "messages a content filter discards or quarantines are archived too".into()
                    } else {
                        "messages a content filter discards or quarantines are no longer archived"
                            .into()
                    },
                );
            }
        }
        (None, None) => {}
    }
}

/// Content filters: removing one, or letting mail through unfiltered when one is down
/// (`onUnavailable: Accept`), lets mail leave unexamined; adding one can refuse mail.
fn content_filters(base: &RelayConfig, head: &RelayConfig, object: &str, out: &mut Vec<Change>) {
    use relay::config::OnUnavailable;
    let endpoint = |f: &relay::config::ContentFilterConfig| format!("{}:{}", f.host, f.port);
    for h in &head.content_filters {
        let Some(b) = base.content_filters.iter().find(|b| b.name == h.name) else {
            push(
                out,
                Severity::Notice,
                object,
                format!(
                    "content filter {} added at {}: every message passes it before the 250 (its rejects refuse mail; when it is down, {})",
                    h.name,
                    endpoint(h),
                    match h.on_unavailable {
                        OnUnavailable::TempFail => "mail is refused with 451 4.7.1",
                        OnUnavailable::Accept => "mail goes on unfiltered",
                    }
                ),
            );
            continue;
        };
        if b.host != h.host || b.port != h.port {
            push(
                out,
                Severity::Notice,
                object,
                format!(
                    "content filter {} moved: {} → {}",
                    h.name,
                    endpoint(b),
                    endpoint(h)
                ),
            );
        }
        match (b.on_unavailable, h.on_unavailable) {
            (OnUnavailable::TempFail, OnUnavailable::Accept) => push(
                out,
                Severity::Warning,
                object,
                format!(
                    "content filter {}: when it is down, mail now goes on unfiltered (onUnavailable: Accept) instead of being refused for later",
                    h.name
                ),
            ),
            (OnUnavailable::Accept, OnUnavailable::TempFail) => push(
                out,
                Severity::Notice,
                object,
                format!(
                    "content filter {}: when it is down, mail is now refused with 451 4.7.1 (onUnavailable: TempFail)",
                    h.name
                ),
            ),
            _ => {}
        }
        if b.timeout_seconds != h.timeout_seconds {
            push(
                out,
                Severity::Notice,
                object,
                format!(
                    "content filter {}: timeout {} s → {} s",
                    h.name, b.timeout_seconds, h.timeout_seconds
                ),
            );
        }
        if b.max_message_bytes != h.max_message_bytes {
            let words = |m: Option<u64>| {
                m.map(|n| format!("messages over {n} bytes skip it"))
                    .unwrap_or_else(|| "every message is filtered".into())
            };
            let looser = match (b.max_message_bytes, h.max_message_bytes) {
                (None, Some(_)) => true,
                (Some(b), Some(h)) => h < b,
                _ => false,
            };
            push(
                out,
                if looser {
                    Severity::Warning
                } else {
                    Severity::Notice
                },
                object,
                format!(
                    "content filter {}: {} → {}",
                    h.name,
                    words(b.max_message_bytes),
                    words(h.max_message_bytes)
                ),
            );
        }
    }
    for b in &base.content_filters {
        if !head.content_filters.iter().any(|h| h.name == b.name) {
            push(
                out,
                Severity::Warning,
                object,
                format!(
                    "content filter {} removed: mail leaves without its check",
                    b.name
                ),
            );
        }
    }
    let order = |c: &RelayConfig| -> Vec<String> {
        c.content_filters
            .iter()
            .filter(|f| {
                base.content_filters.iter().any(|b| b.name == f.name)
                    && head.content_filters.iter().any(|h| h.name == f.name)
            })
            .map(|f| f.name.clone())
            .collect()
    };
    if order(base) != order(head) {
        push(
            out,
            Severity::Notice,
            object,
            format!(
                "content filters reordered: {} → {}",
                order(base).join(", "),
                order(head).join(", ")
            ),
        );
    }
}

/// Everything without a dedicated sentence: listeners, limit store, delivery, spool.
/// PROXY protocol: a trusted proxy may report any client address, so trusting more
/// addresses, or no longer requiring the header, loosens who the relay believes a client is.
fn proxy_protocol(base: &RelayConfig, head: &RelayConfig, object: &str, out: &mut Vec<Change>) {
    let trusted = |c: &RelayConfig| -> Vec<IpNet> {
        c.proxy_protocol
            .as_ref()
            .map(|p| p.trusted_proxies.clone())
            .unwrap_or_default()
    };
    match (&base.proxy_protocol, &head.proxy_protocol) {
        (None, None) => {}
        (None, Some(h)) => push(
            out,
            Severity::Warning,
            object,
            format!(
                "PROXY protocol turned on: {} may report any client address{}",
                join_nets(&h.trusted_proxies),
                if h.required { " (header required)" } else { "" }
            ),
        ),
        (Some(_), None) => push(
            out,
            Severity::Warning,
            object,
            "PROXY protocol turned off: connections through a load balancer now show the balancer's address".into(),
        ),
        (Some(b), Some(h)) => {
            let (gained_count, gained) = difference(&trusted(head), &trusted(base));
            let (lost_count, lost) = difference(&trusted(base), &trusted(head));
            if gained_count > 0 {
                push(
                    out,
                    Severity::Warning,
                    object,
                    format!(
                        "trusted proxies gained {gained_count} address(es): {} (each may report any client address)",
                        join_nets(&gained)
                    ),
                );
            }
            if lost_count > 0 {
                push(
                    out,
                    Severity::Notice,
                    object,
                    format!(
                        "trusted proxies lost {lost_count} address(es): {}",
                        join_nets(&lost)
                    ),
                );
            }
            match (b.required, h.required) {
                (true, false) => push(
                    out,
                    Severity::Warning,
                    object,
                    "PROXY header no longer required: connections without one are taken as direct clients".into(),
                ),
                (false, true) => push(
                    out,
                    Severity::Notice,
                    object,
                    "PROXY header now required: connections without one are closed".into(),
                ),
                _ => {}
            }
        }
    }
}

fn rest(base: &RelayConfig, head: &RelayConfig, out: &mut Vec<Change>) {
    let strip = |c: &RelayConfig| {
        let mut v = to_value(c);
        if let Some(o) = v.as_object_mut() {
            for k in [
                "hash",
                "organization",
                "settings",
                "routes",
                "limits",
                "tls",
                "hostname",
                "proxyProtocol",
                "dkim",
                "contentFilters",
                "archive",
            ] {
                o.remove(k);
            }
        }
        v
    };
    let object = format!("Organization {}", head.organization.name);
    json_diff(&object, &strip(base), &strip(head), "", out);
    if base.organization.name != head.organization.name {
        push(
            out,
            Severity::Notice,
            &object,
            format!(
                "organization {} → {}",
                base.organization.name, head.organization.name
            ),
        );
    }
    if base.tls != head.tls && base.tls.is_some() && head.tls.is_some() {
        push(
            out,
            Severity::Notice,
            &object,
            "relay certificate location changed".into(),
        );
    }
}

fn to_value<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_default()
}

/// Field-by-field comparison of two JSON values, one notice per differing leaf.
fn json_diff(
    object: &str,
    b: &serde_json::Value,
    h: &serde_json::Value,
    path: &str,
    out: &mut Vec<Change>,
) {
    use serde_json::Value;
    match (b, h) {
        (Value::Object(bo), Value::Object(ho)) => {
            let keys: std::collections::BTreeSet<&String> = bo.keys().chain(ho.keys()).collect();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                json_diff(
                    object,
                    bo.get(k).unwrap_or(&Value::Null),
                    ho.get(k).unwrap_or(&Value::Null),
                    &p,
                    out,
                );
            }
        }
        _ if b != h => push(out, Severity::Notice, object, format!("{path}: {b} → {h}")),
        _ => {}
    }
}

// ---- IP coverage as interval arithmetic --------------------------------------------------

/// An inclusive interval of addresses of one family (4 or 6), as u128.
type Interval = (u8, u128, u128);

fn interval(net: IpNet) -> Interval {
    match net {
        IpNet::V4(n) => (
            4,
            u128::from(u32::from(n.network())),
            u128::from(u32::from(n.broadcast())),
        ),
        IpNet::V6(n) => (6, u128::from(n.network()), u128::from(n.broadcast())),
    }
}

fn merged(nets: impl IntoIterator<Item = IpNet>) -> Vec<Interval> {
    let mut v: Vec<Interval> = nets.into_iter().map(interval).collect();
    v.sort();
    let mut out: Vec<Interval> = Vec::with_capacity(v.len());
    for (f, s, e) in v {
        match out.last_mut() {
            Some((lf, _, le)) if *lf == f && s <= le.saturating_add(1) => *le = (*le).max(e),
            _ => out.push((f, s, e)),
        }
    }
    out
}

/// Number of addresses covered and the merged networks.
pub fn coverage(nets: impl IntoIterator<Item = IpNet>) -> (u128, Vec<IpNet>) {
    let m = merged(nets);
    let count = m.iter().map(|(_, s, e)| e - s + 1).sum();
    (count, m.into_iter().flat_map(to_networks).collect())
}

/// Addresses in `a` but not in `b`: count and minimal networks.
pub fn difference(a: &[IpNet], b: &[IpNet]) -> (u128, Vec<IpNet>) {
    let a = merged(a.iter().copied());
    let b = merged(b.iter().copied());
    let mut result = Vec::new();
    for (f, s, e) in a {
        let mut pieces = vec![(s, e)];
        for &(_, bs, be) in b.iter().filter(|x| x.0 == f) {
            pieces = pieces
                .into_iter()
                .flat_map(|(ps, pe)| {
                    let mut keep = Vec::new();
                    if be < ps || bs > pe {
                        keep.push((ps, pe));
                    } else {
                        if bs > ps {
                            keep.push((ps, bs - 1));
                        }
                        if be < pe {
                            keep.push((be + 1, pe));
                        }
                    }
                    keep
                })
                .collect();
        }
        result.extend(pieces.into_iter().map(|(s, e)| (f, s, e)));
    }
    let count = result.iter().map(|(_, s, e)| e - s + 1).sum();
    (count, result.into_iter().flat_map(to_networks).collect())
}

/// The last address of the aligned block of `2^size` addresses starting at `start`.
fn block_last(start: u128, size: u32) -> Option<u128> {
    if size >= 128 {
        (start == 0).then_some(u128::MAX)
    } else {
        start.checked_add((1u128 << size) - 1)
    }
}

/// The fewest CIDR blocks covering an interval exactly.
fn to_networks((family, mut start, end): Interval) -> Vec<IpNet> {
    let bits: u32 = if family == 4 { 32 } else { 128 };
    let mut out = Vec::new();
    loop {
        // The largest block aligned at `start` that ends at or before `end`.
        let mut size = if start == 0 {
            bits
        } else {
            start.trailing_zeros().min(bits)
        };
        while size > 0 && block_last(start, size).is_none_or(|last| last > end) {
            size -= 1;
        }
        let last = block_last(start, size).unwrap_or(start);
        let prefix = u8::try_from(bits - size).unwrap_or(0);
        let net = if family == 4 {
            let addr = std::net::Ipv4Addr::from(u32::try_from(start).unwrap_or(0));
            ipnet::Ipv4Net::new(addr, prefix).map(IpNet::V4).ok()
        } else {
            ipnet::Ipv6Net::new(std::net::Ipv6Addr::from(start), prefix)
                .map(IpNet::V6)
                .ok()
        };
        out.extend(net);
        if last >= end {
            break;
        }
        start = last + 1;
    }
    out
}

// ---- output ------------------------------------------------------------------------------

/// Output formats of `relayctl plan`.
pub mod format {
    use super::{Change, Severity};

    fn counts(changes: &[Change]) -> (usize, usize) {
        let warnings = changes
            .iter()
            .filter(|c| c.severity == Severity::Warning)
            .count();
        (changes.len(), warnings)
    }

    /// Plain text, one line per change.
    pub fn text(changes: &[Change]) -> String {
        if changes.is_empty() {
            return "No behavioural change.\n".into();
        }
        let (n, w) = counts(changes);
        let mut s = format!("{n} behavioural change(s), {w} warning(s):\n");
        for c in changes {
            let tag = match c.severity {
                Severity::Warning => "warning",
                Severity::Notice => "notice ",
            };
            s.push_str(&format!("  {tag}  {}: {}\n", c.object, c.change));
        }
        s
    }

    /// Markdown for a pull-request comment.
    pub fn markdown(changes: &[Change]) -> String {
        if changes.is_empty() {
            return "### relayctl plan\n\nNo behavioural change.\n".into();
        }
        let (n, w) = counts(changes);
        let mut s = format!(
            "### relayctl plan\n\n**{n} behavioural change(s), {w} warning(s)**\n\n| | Object | Change |\n| --- | --- | --- |\n"
        );
        for c in changes {
            let tag = match c.severity {
                Severity::Warning => "⚠️ warning",
                Severity::Notice => "notice",
            };
            let esc = |t: &str| t.replace('|', "\\|");
            s.push_str(&format!(
                "| {tag} | `{}` | {} |\n",
                esc(&c.object),
                esc(&c.change)
            ));
        }
        s
    }

    /// JSON array of changes.
    pub fn json(changes: &[Change]) -> String {
        serde_json::to_string_pretty(changes).unwrap_or_else(|_| "[]".into()) + "\n"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn coverage_merges_overlaps_and_counts() {
        let (count, merged) = coverage(nets(&["10.0.0.0/25", "10.0.0.128/25", "10.0.0.7/32"]));
        assert_eq!(count, 256);
        assert_eq!(merged, nets(&["10.0.0.0/24"]));
    }

    #[test]
    fn difference_splits_into_minimal_blocks() {
        let (count, gained) = difference(&nets(&["10.0.0.0/24"]), &nets(&["10.0.0.0/25"]));
        assert_eq!((count, gained), (128, nets(&["10.0.0.128/25"])));
        let (count, lost) = difference(&nets(&["10.0.0.0/24"]), &nets(&["10.0.0.1/32"]));
        assert_eq!(count, 255);
        assert_eq!(
            lost,
            nets(&[
                "10.0.0.0/32",
                "10.0.0.2/31",
                "10.0.0.4/30",
                "10.0.0.8/29",
                "10.0.0.16/28",
                "10.0.0.32/27",
                "10.0.0.64/26",
                "10.0.0.128/25"
            ])
        );
        let (count, _) = difference(&nets(&["2001:db8::/112"]), &nets(&["10.0.0.0/16"]));
        assert_eq!(count, 65_536, "families never cancel out");
    }

    #[test]
    fn trusting_more_proxies_or_dropping_the_required_header_is_a_warning() {
        use relay::config::ProxyProtocolConfig;
        let base = RelayConfig::loopback("spool", 25);
        let mut on = base.clone();
        on.proxy_protocol = Some(ProxyProtocolConfig {
            trusted_proxies: vec!["10.0.0.0/24".parse().unwrap()],
            required: true,
        });
        let turned_on = plan(&base, &on);
        assert_eq!(turned_on.len(), 1, "{turned_on:?}");
        assert_eq!(turned_on[0].severity, Severity::Warning);
        assert_eq!(
            turned_on[0].change,
            "PROXY protocol turned on: 10.0.0.0/24 may report any client address (header required)"
        );
        let mut wider = on.clone();
        if let Some(p) = &mut wider.proxy_protocol {
            p.trusted_proxies = vec!["10.0.0.0/23".parse().unwrap()];
            p.required = false;
        }
        let changes: Vec<(Severity, String)> = plan(&on, &wider)
            .into_iter()
            .map(|c| (c.severity, c.change))
            .collect();
        assert_eq!(
            changes,
            [
                (
                    Severity::Warning,
                    "trusted proxies gained 256 address(es): 10.0.1.0/24 (each may report any client address)".to_string()
                ),
                (
                    Severity::Warning,
                    "PROXY header no longer required: connections without one are taken as direct clients".to_string()
                ),
            ]
        );
    }

    #[test]
    fn content_filter_changes_are_told_in_words_and_loosening_warns() {
        use relay::config::{ContentFilterConfig, OnUnavailable};
        let base = RelayConfig::loopback("/spool", 2525);
        let rspamd = ContentFilterConfig {
            name: "rspamd".into(),
            host: "rspamd.filters.svc".into(),
            port: 11332,
            timeout_seconds: 30,
            on_unavailable: OnUnavailable::TempFail,
            max_message_bytes: None,
        };
        let mut on = base.clone();
        on.content_filters = vec![rspamd.clone()];
        let words = |b: &RelayConfig, h: &RelayConfig| -> Vec<(Severity, String)> {
            plan(b, h)
                .into_iter()
                .map(|c| (c.severity, c.change))
                .collect()
        };
        assert_eq!(
            words(&base, &on),
            [(
                Severity::Notice,
                "content filter rspamd added at rspamd.filters.svc:11332: every message passes it before the 250 (its rejects refuse mail; when it is down, mail is refused with 451 4.7.1)".to_string()
            )]
        );
        assert_eq!(
            words(&on, &base),
            [(
                Severity::Warning,
                "content filter rspamd removed: mail leaves without its check".to_string()
            )]
        );
        let mut lax = on.clone();
        lax.content_filters[0].on_unavailable = OnUnavailable::Accept;
        lax.content_filters[0].max_message_bytes = Some(10_000_000);
        assert_eq!(
            words(&on, &lax),
            [
                (
                    Severity::Warning,
                    "content filter rspamd: when it is down, mail now goes on unfiltered (onUnavailable: Accept) instead of being refused for later".to_string()
                ),
                (
                    Severity::Warning,
                    "content filter rspamd: every message is filtered → messages over 10000000 bytes skip it".to_string()
                ),
            ]
        );
    }

    #[test]
    fn archiving_off_or_elsewhere_warns() {
        use relay::config::ArchiveConfig;
        let base = RelayConfig::loopback("/spool", 2525);
        let mut on = base.clone();
        on.archive = Some(ArchiveConfig {
            address: "journal@archive.example".into(),
            route: None,
            include_filtered_out: false,
            postmaster: "postmaster@acme.example".into(),
        });
        let words = |b: &RelayConfig, h: &RelayConfig| -> Vec<(Severity, String)> {
            plan(b, h)
                .into_iter()
                .map(|c| (c.severity, c.change))
                .collect()
        };
        assert_eq!(
            words(&base, &on),
            [(
                Severity::Notice,
                "archiving turned on: a journal copy of every accepted message goes to journal@archive.example (routed like any recipient)".to_string()
            )]
        );
        assert_eq!(
            words(&on, &base),
            [(
                Severity::Warning,
                "archiving turned off: messages accepted from now on are no longer copied to journal@archive.example".to_string()
            )]
        );
        let mut moved = on.clone();
        if let Some(a) = moved.archive.as_mut() {
            a.address = "vault@archive.example".into();
        }
        assert_eq!(
            words(&on, &moved),
            [(
                Severity::Warning,
                "archive address changed: journal@archive.example → vault@archive.example (copies already queued still go to journal@archive.example)".to_string()
            )]
        );
    }

    #[test]
    fn dkim_keys_added_changed_and_removed_are_told_in_words() {
        use relay::config::{DkimAlgorithm, DkimConfig};
        let base = RelayConfig::loopback("spool", 25);
        let key = DkimConfig {
            domain: "acme.example".into(),
            selector: "s1".into(),
            algorithm: DkimAlgorithm::RsaSha256,
            key_file: "/k".into(),
            headers: vec!["From".into()],
        };
        let mut on = base.clone();
        on.dkim = vec![key.clone()];
        let mut rotated = on.clone();
        rotated.dkim[0].selector = "s2".into();
        let said = |a: &RelayConfig, b: &RelayConfig| -> Vec<(Severity, String)> {
            plan(a, b)
                .into_iter()
                .map(|c| (c.severity, c.change))
                .collect()
        };
        assert_eq!(
            said(&base, &on),
            [(
                Severity::Notice,
                "DKIM signing added for acme.example (selector s1, rsa-sha256): publish its record first (relayctl dkim-record)".to_string()
            )]
        );
        assert_eq!(
            said(&on, &rotated),
            [(
                Severity::Notice,
                "DKIM key of acme.example changed: selector s1 → s2, rsa-sha256 → rsa-sha256, headers [From] → [From]".to_string()
            )]
        );
        assert_eq!(
            said(&on, &base),
            [(
                Severity::Warning,
                "DKIM signing removed for acme.example: its mail is sent unsigned".to_string()
            )]
        );
    }
}
