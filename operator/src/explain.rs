//! `relayctl explain`: what the relay would answer to one hypothetical session, and why.
//!
//! The session is played through the relay's own pure state machine
//! ([`relay::ingress::session::Session`], built with [`SessionConfig::for_config`] as a config
//! generation builds it), so the replies are the relay's replies: EHLO, STARTTLS when the
//! client has TLS, AUTH when it has an identity, MAIL, then RCPT per recipient. Three
//! answers the relay gets from outside the state machine are assumed, and said so: the
//! TLS handshake succeeds, the AUTH password is right (we cannot know it; without an
//! `authSecretRef`, or for a user missing from the credentials Secret when the manifests
//! hold it, the relay refuses the login, and so does the explanation), and
//! every recipient is within the limits (they are counted at runtime, SPEC §3.6).
//!
//! Why the MAIL reply is what it is comes from [`relay::policy::Policy::explain_mail`],
//! the function whose decision the session acts on, with the facts the session holds;
//! this module only adds names (which range holds the address, which disabled range
//! would have) from the manifests. Routes come from [`RouteTable`], as delivery chooses.
//!
//! Not here: parsing arguments (`relayctl`), expectation files ([`crate::expect`]).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;

use base64::Engine as _;
use crds::manifest::ManifestSet;
use ipnet::IpNet;
use kube::ResourceExt;
use relay::config::{AllowedSenders, RelayConfig, RouteConfig, RouteHosts};
use relay::delivery::route::{RouteChoice, RouteTable, resolve_choice};
use relay::ingress::session::{Action, Session, SessionConfig};
use relay::policy::{BoxCheck, SenderCheck, SettingVerdict};
use relay::smtp::{Command, Reply, parse_command};
use serde::Serialize;

use crate::render::{parse_network, selector_matches};

/// One hypothetical session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub client_ip: IpAddr,
    /// HELO/EHLO name; the address literal of the IP when `None`.
    pub helo: Option<String>,
    /// The client uses TLS (STARTTLS, or port 465).
    pub tls: bool,
    /// The identity the client logs in as (the password is assumed right).
    pub auth: Option<String>,
    /// Envelope sender, `""` for the null sender.
    pub from: String,
    pub to: Vec<String>,
}

/// An IpAllowRange as written in the manifests (disabled ones included), with the
/// settings whose selector picks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeFact {
    /// `namespace/name`.
    pub name: String,
    pub network: IpNet,
    pub enabled: bool,
    /// `namespace/name` of every setting with ipAllowRanges on whose selector matches it.
    pub selected_by: Vec<String>,
}

/// What the manifests say beyond the rendered config, for naming things in an explanation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManifestFacts {
    /// Every IpAllowRange, disabled ones included.
    pub ranges: Vec<RangeFact>,
    /// When the Organization's credentials Secret is among the manifests: its name and
    /// the users it holds. `None`: the Secret lives only on the cluster, so any user is
    /// assumed to log in.
    pub auth_users: Option<(String, BTreeSet<String>)>,
}

impl ManifestFacts {
    /// The facts of a manifest set.
    pub fn of(set: &ManifestSet) -> Self {
        Self {
            ranges: range_facts(set),
            auth_users: auth_users(set),
        }
    }
}

/// The users of the Organization's credentials Secret, when the manifests hold it. The
/// file is one `address:PHC` line per user (see `relay::ingress::auth::Credentials`).
fn auth_users(set: &ManifestSet) -> Option<(String, BTreeSet<String>)> {
    let org = set.organizations.first()?;
    let ns = org.object.namespace().unwrap_or_else(|| "default".into());
    let name = &org.object.spec.auth_secret_ref.as_ref()?.name;
    let secret = set.secrets.iter().find(|s| {
        s.object.name_any() == *name
            && s.object.namespace().unwrap_or_else(|| "default".into()) == ns
    })?;
    let text = crate::secrets::secret_value(&secret.object, "credentials")?;
    let text = String::from_utf8_lossy(&text);
    let users = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            l.split_once(':')
                .map(|(u, _)| u.trim().to_ascii_lowercase())
        })
        .collect();
    Some((format!("{ns}/{name}"), users))
}

/// The ranges of a manifest set, for naming the range behind an IP box's verdict.
pub fn range_facts(set: &ManifestSet) -> Vec<RangeFact> {
    set.ranges
        .iter()
        .filter_map(|r| {
            let range = &r.object;
            let ns = range.namespace().unwrap_or_else(|| "default".into());
            let network = parse_network(&range.spec.cidr)?;
            let selected_by = set
                .settings
                .iter()
                .filter(|s| {
                    s.object.namespace().unwrap_or_else(|| "default".into()) == ns
                        && s.object.spec.authentication.ip_allow_ranges.enabled
                        && selector_matches(
                            s.object
                                .spec
                                .authentication
                                .ip_allow_ranges
                                .selector
                                .as_ref(),
                            range.labels(),
                        )
                })
                .map(|s| format!("{ns}/{}", s.object.name_any()))
                .collect();
            Some(RangeFact {
                name: format!("{ns}/{}", range.name_any()),
                network,
                enabled: range.spec.enabled,
                selected_by,
            })
        })
        .collect()
}

/// One command and the relay's reply (or what happened instead).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Exchange {
    pub command: String,
    /// Reply code.
    pub code: u16,
    /// Reply text lines (without the code).
    pub lines: Vec<String>,
}

impl Exchange {
    /// `code first-line`, as a person reads a reply.
    pub fn reply(&self) -> String {
        match self.lines.first() {
            Some(l) if l.is_empty() => self.code.to_string(),
            Some(l) => format!("{} {l}", self.code),
            None => self.code.to_string(),
        }
    }

    /// 2xx or 3xx.
    pub fn positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
}

/// One box of one setting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BoxLine {
    /// `ip`, `auth`, `tls` or `sender`.
    #[serde(rename = "box")]
    pub name: &'static str,
    /// `ok`, `off` (the setting does not ask for it) or `failed`.
    pub state: &'static str,
    /// Which box failed and why, or what satisfied it.
    pub detail: String,
}

/// One SmtpRelaySetting's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SettingExplanation {
    /// `namespace/name`.
    pub name: String,
    pub description: String,
    pub allowed_senders: AllowedSenders,
    /// The setting accepts this client, transport and sender.
    pub accepts: bool,
    pub boxes: Vec<BoxLine>,
}

/// Where one recipient's mail goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteExplanation {
    /// `namespace/name` of the MailRoute, or `direct`.
    pub name: String,
    pub description: String,
    /// `single`, `primary` and `secondary` hosts with their shares.
    pub hosts: Vec<HostLine>,
    /// The hosts are domains whose MX records give the real hosts.
    pub mx_lookup: bool,
    pub require_tls: bool,
    pub require_ca_signed: bool,
    pub validate_hostname: bool,
}

/// A host of a route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostLine {
    pub role: &'static str,
    pub host: String,
    pub port: u16,
    /// Share of its table in percent (100 for a single host).
    pub load_percent: u8,
}

/// One recipient.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecipientExplanation {
    pub address: String,
    /// The reply to its RCPT; `None` when RCPT was never sent (MAIL refused).
    pub reply: Option<String>,
    pub accepted: bool,
    /// The route, for an accepted recipient.
    pub route: Option<RouteExplanation>,
}

/// The whole answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    pub client_ip: IpAddr,
    pub helo: String,
    /// TLS was active at MAIL.
    pub tls: bool,
    /// The AUTH identity in force at MAIL.
    pub auth: Option<String>,
    pub settings: Vec<SettingExplanation>,
    /// False when MAIL was refused before the policy was asked (bad syntax, no EHLO).
    pub policy_consulted: bool,
    /// Every command played and its reply.
    pub transcript: Vec<Exchange>,
    /// The reply to MAIL FROM.
    pub mail_reply: String,
    /// The envelope sender after rewrite, when it was rewritten.
    pub rewritten_sender: Option<String>,
    pub recipients: Vec<RecipientExplanation>,
    /// MAIL and every RCPT were accepted.
    pub accepted: bool,
    /// The content filters an accepted message passes before the `250`, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub content_filters: Vec<FilterLine>,
    /// Where the journal copy of an accepted message goes, when the organization archives.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveLine>,
    /// What was assumed.
    pub notes: Vec<String>,
}

/// The journal copy of an accepted message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveLine {
    pub address: String,
    /// Its route, as for a recipient.
    pub route: RouteExplanation,
    /// Envelope sender of the copy, who hears of a copy that cannot be delivered.
    pub postmaster: String,
}

/// One content filter a message passes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FilterLine {
    pub name: String,
    /// `host:port` of its milter socket.
    pub milter: String,
    pub timeout_seconds: u64,
    /// `TempFail` or `Accept`.
    pub on_unavailable: &'static str,
    /// Larger messages skip the filter.
    pub max_message_bytes: Option<u64>,
}

impl FilterLine {
    fn of(f: &relay::config::ContentFilterConfig) -> Self {
        Self {
            name: f.name.clone(),
            milter: if f.host.contains(':') {
                format!("[{}]:{}", f.host, f.port)
            } else {
                format!("{}:{}", f.host, f.port)
            },
            timeout_seconds: f.timeout_seconds,
            on_unavailable: match f.on_unavailable {
                relay::config::OnUnavailable::TempFail => "TempFail",
                relay::config::OnUnavailable::Accept => "Accept",
            },
            max_message_bytes: f.max_message_bytes,
        }
    }

    /// `rspamd at rspamd.filters.svc:11332 (30 s; unavailable: 451 4.7.1)`.
    pub fn summary(&self) -> String {
        let unavailable = match self.on_unavailable {
            "Accept" => "unavailable: accepted unfiltered",
            _ => "unavailable: 451 4.7.1",
        };
        let skip = self
            .max_message_bytes
            .map(|n| format!("; messages over {n} bytes skip it"))
            .unwrap_or_default();
        format!(
            "{} at {} ({} s; {unavailable}{skip})",
            self.name, self.milter, self.timeout_seconds
        )
    }
}

impl Explanation {
    /// The envelope sender the relay would deliver with.
    pub fn envelope_sender<'a>(&'a self, query: &'a Query) -> &'a str {
        self.rewritten_sender.as_deref().unwrap_or(&query.from)
    }
}

/// Plays `query` through the relay's session state machine under `config`.
pub fn explain(config: &RelayConfig, facts: &ManifestFacts, query: &Query) -> Explanation {
    let ranges = facts.ranges.as_slice();
    let mut notes = Vec::new();
    let tls_available = config.tls.is_some();
    let mut session = Session::new(
        SessionConfig::for_config(config, tls_available),
        query.client_ip,
        None,
    );
    let mut transcript = Vec::new();
    let helo = query
        .helo
        .clone()
        .unwrap_or_else(|| address_literal(query.client_ip));
    let ehlo = format!("EHLO {helo}");
    play(&mut session, &ehlo, &mut transcript);
    if query.tls {
        let actions = session.on_line(b"STARTTLS");
        let started = actions.contains(&Action::StartTls);
        record(&mut transcript, "STARTTLS", &actions);
        if started {
            session.tls_started("TLS (handshake assumed to succeed)".into());
            play(&mut session, &ehlo, &mut transcript);
        } else {
            notes.push(
                "the relay has no certificate (Organization spec.relay.tlsSecretRef), so the \
                 session stays unencrypted"
                    .into(),
            );
        }
    }
    if let Some(user) = &query.auth {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0-"));
        let line = format!("AUTH PLAIN {token}");
        let actions = session.on_line(line.as_bytes());
        let shown = "AUTH PLAIN (credentials)";
        match actions.last() {
            Some(Action::VerifyAuth { identity, .. }) => {
                let identity = identity.clone();
                let unknown = facts
                    .auth_users
                    .as_ref()
                    .filter(|(_, users)| !users.contains(&identity));
                let ok = match (&config.organization.credentials_file, unknown) {
                    (None, _) => {
                        notes.push(
                            "the Organization has no authSecretRef: every AUTH fails with 535"
                                .into(),
                        );
                        false
                    }
                    (Some(_), Some((secret, _))) => {
                        notes.push(format!(
                            "{identity} has no credentials in Secret {secret}: AUTH fails with 535"
                        ));
                        false
                    }
                    (Some(_), None) => {
                        notes.push(format!("assumed the password of {identity} is right"));
                        true
                    }
                };
                let result = session.auth_result(identity, ok);
                record(&mut transcript, shown, &result);
            }
            _ => {
                record(&mut transcript, shown, &actions);
            }
        }
    }

    let mut mail_line = format!("MAIL FROM:<{}>", query.from);
    if !query.from.is_ascii() {
        mail_line.push_str(" SMTPUTF8");
    }
    // The sender exactly as the session will hand it to the policy.
    let parsed_sender = match parse_command(mail_line.as_bytes()) {
        Ok(Command::Mail { from, .. }) => Some(from.as_str().to_string()),
        _ => None,
    };
    let facts = session.client_facts();
    let (tls_at_mail, auth_at_mail) = (facts.tls, facts.auth.map(str::to_string));
    let verdict = parsed_sender
        .as_deref()
        .map(|sender| session.config().policy.explain_mail(&facts, sender));
    let settings = match &verdict {
        Some(v) => config
            .settings
            .iter()
            .zip(&v.settings)
            .map(|(s, v)| describe_setting(s, v, query.client_ip, ranges))
            .collect(),
        None => Vec::new(),
    };
    let mail = play(&mut session, &mail_line, &mut transcript);
    // The policy answers 250, 530 or 550 5.7.1; anything else came before it.
    let policy_consulted = verdict.is_some()
        && mail.as_ref().is_some_and(|m| {
            m.code == 250
                || m.code == 530
                || (m.code == 550 && m.lines.first().is_some_and(|l| l.starts_with("5.7.1")))
        });
    let mail_ok = mail.as_ref().is_some_and(Exchange::positive);
    // The decision the session just acted on (same policy, same facts).
    let rewritten_sender = match verdict.map(|v| v.decision) {
        Some(relay::policy::MailDecision::Accept {
            mail_from,
            original: Some(_),
        }) if mail_ok => Some(mail_from),
        _ => None,
    };

    let table = RouteTable::new(&config.routes);
    // Routes by sender see the envelope sender delivery will use (after a rewrite).
    let sender_domain =
        relay::envelope::domain_of(rewritten_sender.as_deref().unwrap_or(&query.from));
    let mut recipients = Vec::new();
    let mut limits_assumed = false;
    for rcpt in &query.to {
        if !mail_ok || session.is_closed() {
            recipients.push(RecipientExplanation {
                address: rcpt.clone(),
                reply: None,
                accepted: false,
                route: None,
            });
            continue;
        }
        let line = format!("RCPT TO:<{rcpt}>");
        let mut actions = session.on_line(line.as_bytes());
        if let Some(Action::CheckRcpt { rcpt, .. }) = actions.last() {
            let rcpt = rcpt.clone();
            limits_assumed = true;
            actions = session.rcpt_result(rcpt, Ok(None));
        }
        let exchange = record(&mut transcript, &line, &actions);
        let accepted = exchange.as_ref().is_some_and(Exchange::positive);
        let route = accepted.then(|| {
            let choice = match relay::envelope::domain_of(rcpt) {
                Some(domain) => table.choose_for(sender_domain.as_deref(), &domain),
                None => RouteChoice::DirectMx(String::new()),
            };
            describe_route(&resolve_choice(&config.routes, &choice), &choice)
        });
        recipients.push(RecipientExplanation {
            address: rcpt.clone(),
            reply: exchange.map(|e| e.reply()),
            accepted,
            route,
        });
    }
    if limits_assumed {
        notes.push(
            "limits are counted at runtime: this assumes every recipient is within them".into(),
        );
    }
    let accepted = mail_ok && !recipients.is_empty() && recipients.iter().all(|r| r.accepted);
    if accepted && !config.content_filters.is_empty() {
        notes.push(
            "content filters judge the message's text at runtime: this assumes they accept it"
                .into(),
        );
    }
    Explanation {
        client_ip: query.client_ip,
        helo,
        tls: tls_at_mail,
        auth: auth_at_mail,
        settings,
        policy_consulted,
        transcript,
        mail_reply: mail.map(|e| e.reply()).unwrap_or_default(),
        rewritten_sender,
        recipients,
        accepted,
        content_filters: if accepted {
            config.content_filters.iter().map(FilterLine::of).collect()
        } else {
            Vec::new()
        },
        archive: config.archive.as_ref().filter(|_| accepted).map(|a| {
            let named = a
                .route
                .as_ref()
                .and_then(|name| config.routes.iter().position(|r| r.name == *name));
            let choice = match named {
                Some(index) => RouteChoice::Configured(index),
                None => match relay::envelope::domain_of(&a.address) {
                    Some(domain) => table.choose_for(None, &domain),
                    None => RouteChoice::DirectMx(String::new()),
                },
            };
            ArchiveLine {
                address: a.address.clone(),
                route: describe_route(&resolve_choice(&config.routes, &choice), &choice),
                postmaster: a.postmaster.clone(),
            }
        }),
        notes,
    }
}

fn address_literal(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(a) => format!("[{a}]"),
        IpAddr::V6(a) => format!("[IPv6:{a}]"),
    }
}

/// Feeds one line and records its reply.
fn play(session: &mut Session, line: &str, transcript: &mut Vec<Exchange>) -> Option<Exchange> {
    let actions = session.on_line(line.as_bytes());
    record(transcript, line, &actions)
}

fn record(transcript: &mut Vec<Exchange>, command: &str, actions: &[Action]) -> Option<Exchange> {
    let replies: Vec<&Reply> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Reply(r) => Some(r),
            _ => None,
        })
        .collect();
    let first = replies.first()?;
    let exchange = Exchange {
        command: command.to_string(),
        code: first.code,
        lines: first.lines.clone(),
    };
    transcript.push(exchange.clone());
    Some(exchange)
}

fn describe_setting(
    s: &relay::config::SettingConfig,
    v: &SettingVerdict,
    ip: IpAddr,
    ranges: &[RangeFact],
) -> SettingExplanation {
    let state = |b: BoxCheck| match b {
        BoxCheck::NotRequired => "off",
        BoxCheck::Satisfied => "ok",
        BoxCheck::Failed => "failed",
    };
    let ip_detail = match (&s.ip_ranges, v.ip) {
        (None, _) => "IP allow list not used".to_string(),
        (Some(list), BoxCheck::Satisfied) => {
            let holder = list.iter().find(|r| r.network.contains(&ip.to_canonical()));
            match holder {
                Some(r) => format!("{ip} is in range {} ({})", r.name, r.network),
                None => format!("{ip} is in a selected range"),
            }
        }
        (Some(list), _) => ip_failure(&s.name, list.len(), ip, ranges),
    };
    let auth_detail = match v.auth {
        BoxCheck::NotRequired => "SMTP AUTH not required".to_string(),
        BoxCheck::Satisfied => "the client authenticated".to_string(),
        BoxCheck::Failed => "AUTH missing: the setting requires SMTP AUTH".to_string(),
    };
    let tls_detail = match v.tls {
        BoxCheck::NotRequired => "TLS not required".to_string(),
        BoxCheck::Satisfied => "the connection is encrypted".to_string(),
        BoxCheck::Failed => "TLS missing: the setting requires STARTTLS before MAIL".to_string(),
    };
    let (sender_state, sender_detail) = match &v.sender {
        SenderCheck::Allowed => ("ok", format!("allowed by {}", s.allowed_senders)),
        SenderCheck::Rewritten { to, reason } => (
            "ok",
            format!("{reason}: AnyAddress rewrites the envelope sender to {to}"),
        ),
        SenderCheck::Rejected(reason) => ("failed", reason.clone()),
    };
    SettingExplanation {
        name: s.name.clone(),
        description: s.description.clone(),
        allowed_senders: s.allowed_senders,
        accepts: v.accepts(),
        boxes: vec![
            BoxLine {
                name: "ip",
                state: state(v.ip),
                detail: ip_detail,
            },
            BoxLine {
                name: "auth",
                state: state(v.auth),
                detail: auth_detail,
            },
            BoxLine {
                name: "tls",
                state: state(v.tls),
                detail: tls_detail,
            },
            BoxLine {
                name: "sender",
                state: sender_state,
                detail: sender_detail,
            },
        ],
    }
}

/// Why the client IP is outside a setting's allow list: a range holding it that is
/// disabled, one this setting does not select, or none at all.
fn ip_failure(setting: &str, selected: usize, ip: IpAddr, ranges: &[RangeFact]) -> String {
    let ip = ip.to_canonical();
    let holding: Vec<&RangeFact> = ranges.iter().filter(|r| r.network.contains(&ip)).collect();
    if let Some(r) = holding
        .iter()
        .find(|r| !r.enabled && r.selected_by.iter().any(|s| s == setting))
    {
        return format!(
            "range disabled: {ip} is in range {} ({}), which has enabled: false",
            r.name, r.network
        );
    }
    if let Some(r) = holding.iter().find(|r| r.enabled) {
        return format!(
            "range not selected: {ip} is in range {} ({}), but this setting's selector does not pick it",
            r.name, r.network
        );
    }
    format!(
        "range not selected: {ip} is in none of the {selected} enabled range(s) this setting selects"
    )
}

fn describe_route(route: &RouteConfig, choice: &RouteChoice) -> RouteExplanation {
    let hosts = match &route.hosts {
        RouteHosts::Single(h) => vec![HostLine {
            role: "single",
            host: h.host.clone(),
            port: h.port,
            load_percent: 100,
        }],
        RouteHosts::Pool { primary, secondary } => primary
            .iter()
            .map(|h| ("primary", h))
            .chain(secondary.iter().map(|h| ("secondary", h)))
            .map(|(role, h)| HostLine {
                role,
                host: h.host.clone(),
                port: h.port,
                load_percent: h.load_percent,
            })
            .collect(),
    };
    RouteExplanation {
        name: match choice {
            RouteChoice::Configured(_) => route.name.clone(),
            RouteChoice::DirectMx(_) => "direct".into(),
        },
        description: route.description.clone(),
        hosts,
        mx_lookup: route.mx_lookup,
        require_tls: route.tls.require_tls,
        require_ca_signed: route.tls.require_ca_signed,
        validate_hostname: route.tls.validate_hostname,
    }
}

impl RouteExplanation {
    /// One line: name, hosts and TLS checks.
    pub fn summary(&self) -> String {
        let hosts: Vec<String> = self
            .hosts
            .iter()
            .map(|h| match h.role {
                "single" => format!("{}:{}", h.host, h.port),
                role => format!("{role} {}:{} {}%", h.host, h.port, h.load_percent),
            })
            .collect();
        let mx = if self.mx_lookup {
            if self.name == "direct" {
                " (MX delivery)"
            } else {
                " (MX lookup)"
            }
        } else {
            ""
        };
        let tls = if !self.require_tls {
            "TLS opportunistic".to_string()
        } else {
            format!(
                "TLS required, {}, {}",
                if self.require_ca_signed {
                    "CA-signed certificate"
                } else {
                    "any certificate"
                },
                if self.validate_hostname {
                    "hostname checked"
                } else {
                    "hostname not checked"
                }
            )
        };
        format!("{}: {}{mx}; {tls}", self.name, hosts.join(", "))
    }
}

/// The explanation as text, for a person.
pub fn text(e: &Explanation) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Client {} (EHLO {}), {}, {}",
        e.client_ip,
        e.helo,
        if e.tls { "TLS" } else { "no TLS" },
        match &e.auth {
            Some(id) => format!("authenticated as {id}"),
            None => "not authenticated".into(),
        }
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "SmtpRelaySettings (mail is accepted when one of them accepts it):"
    );
    if !e.policy_consulted {
        let _ = writeln!(
            out,
            "  (not consulted: MAIL was refused before the sender policy was asked)"
        );
    } else if e.settings.is_empty() {
        let _ = writeln!(out, "  (none: no client may relay)");
    }
    for s in e.settings.iter().filter(|_| e.policy_consulted) {
        let _ = writeln!(
            out,
            "  {}: {}",
            s.name,
            if s.accepts {
                "accepts this client and sender"
            } else {
                "does not accept"
            }
        );
        for b in &s.boxes {
            let label = match b.name {
                "ip" => "IP allow list",
                "auth" => "SMTP AUTH",
                "tls" => "TLS",
                _ => "sender",
            };
            let _ = writeln!(out, "    {label:<14} {:<6} {}", b.state, b.detail);
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Session:");
    let width = e
        .transcript
        .iter()
        .map(|x| x.command.len())
        .max()
        .unwrap_or(0);
    for x in &e.transcript {
        let _ = writeln!(out, "  {:<width$}  → {}", x.command, x.reply());
    }
    if let Some(to) = &e.rewritten_sender {
        let _ = writeln!(out);
        let _ = writeln!(out, "Envelope sender rewritten to {to}");
    }
    let routed: Vec<&RecipientExplanation> =
        e.recipients.iter().filter(|r| r.route.is_some()).collect();
    if !routed.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "Routes:");
        for r in routed {
            if let Some(route) = &r.route {
                let _ = writeln!(out, "  {} → {}", r.address, route.summary());
            }
        }
    }
    if let Some(a) = &e.archive {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Archive: a journal copy (envelope in its headers, Bcc included) goes to {} → {}; a copy that cannot be delivered is reported to {}",
            a.address,
            a.route.summary(),
            a.postmaster
        );
    }
    if !e.content_filters.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Content filters (each judges the message before the 250, in this order):"
        );
        for f in &e.content_filters {
            let _ = writeln!(out, "  {}", f.summary());
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Result: {}",
        if e.accepted {
            "accepted".to_string()
        } else {
            let taken = e.recipients.iter().filter(|r| r.accepted).count();
            if taken > 0 {
                format!(
                    "partly accepted: {taken} of {} recipient(s) ({})",
                    e.recipients.len(),
                    refusal(e)
                )
            } else {
                format!("refused ({})", refusal(e))
            }
        }
    );
    for n in &e.notes {
        let _ = writeln!(out, "note: {n}");
    }
    out
}

/// The first refusal of a refused session.
pub fn refusal(e: &Explanation) -> String {
    let mail_ok = e.mail_reply.starts_with('2');
    if !mail_ok {
        return format!("MAIL: {}", e.mail_reply);
    }
    e.recipients
        .iter()
        .find(|r| !r.accepted)
        .map(|r| {
            format!(
                "RCPT {}: {}",
                r.address,
                r.reply.as_deref().unwrap_or("not sent")
            )
        })
        .unwrap_or_else(|| "no recipient".into())
}

/// The explanation as JSON, for tools.
pub fn json(e: &Explanation) -> String {
    serde_json::to_string_pretty(e).unwrap_or_default() + "\n"
}

/// The explanation as a Markdown section, for a pull-request comment: the verdict in bold,
/// then the text report in a code block.
pub fn markdown(e: &Explanation) -> String {
    let verdict = if e.accepted {
        "Accepted".to_string()
    } else {
        format!("Refused: {}", refusal(e))
    };
    format!(
        "### relayctl explain\n\n**{}**\n\n```text\n{}```\n",
        verdict.replace('*', "\\*"),
        text(e).replace("```", "'''")
    )
}
