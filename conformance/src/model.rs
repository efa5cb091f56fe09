//! A model of the relay's ingress behaviour, written from SPEC §3.2–3.4 and §3.6 alone.
//!
//! Given [`Manifests`] it predicts, step by step, the reply to every client command of any
//! number of sessions (who the client is, STARTTLS, AUTH, MAIL, RCPT, DATA), and for every
//! accepted message where it lands: the route each recipient takes (SPEC §2.4) and the
//! envelope sender after the `AnyAddress` rewrite. Limit counters (SPEC §3.6) carry across
//! sessions over rolling windows; time moves only through [`Model::advance`].
//!
//! It deliberately shares no code with `relay::policy` or `relay::limits`: it reads the
//! manifests, resolves label selectors itself and keeps its own counters, so a relay that
//! drifts from the spec disagrees with it. It does not model delivery outcomes (TLS checks,
//! retries), only the route chosen.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::manifests::{Manifests, PASSWORDS, RouteMatch, Senders};

/// What the model says a reply must look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// The reply code.
    pub code: u16,
    /// What the spec fixes about the text after the code.
    pub text: Text,
}

/// The part of a reply text the spec fixes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Text {
    /// The whole text after the code (for example `5.7.0 Must issue a STARTTLS command first`).
    Exact(String),
    /// The text starts with this (an enhanced status code, say).
    Prefix(String),
    /// The text starts with `prefix` and contains `needle` (`550 5.7.1` naming the client IP).
    PrefixContaining { prefix: String, needle: String },
    /// Anything.
    Any,
}

impl Expected {
    fn code(code: u16) -> Self {
        Self {
            code,
            text: Text::Any,
        }
    }
    fn exact(code: u16, text: &str) -> Self {
        Self {
            code,
            text: Text::Exact(text.into()),
        }
    }
    fn prefix(code: u16, text: &str) -> Self {
        Self {
            code,
            text: Text::Prefix(text.into()),
        }
    }

    /// True when the final line of `reply` (`"550 5.7.1 ..."`) fits.
    pub fn matches(&self, reply: &str) -> bool {
        let last = reply.lines().last().unwrap_or("");
        let Some((code, text)) = last.split_at_checked(3) else {
            return false;
        };
        if code.parse::<u16>().ok() != Some(self.code) {
            return false;
        }
        let text = text.trim_start_matches([' ', '-']);
        match &self.text {
            Text::Exact(t) => text == t,
            Text::Prefix(p) => text.starts_with(p.as_str()),
            Text::PrefixContaining { prefix, needle } => {
                text.starts_with(prefix.as_str()) && text.contains(needle.as_str())
            }
            Text::Any => true,
        }
    }
}

/// The exact limit replies of SPEC §3.6.
pub const USER_LIMIT: &str = "5.4.5 Daily SMTP relay limit exceeded for user.";
pub const CUSTOMER_DAILY: &str = "5.7.1 Daily SMTP relay limit exceeded for customer.";
pub const CUSTOMER_PEAK: &str = "4.2.1 Peak SMTP relay limit exceeded for customer.";
/// SPEC §3.2.
pub const STARTTLS_FIRST: &str =
    "5.7.0 Must issue a STARTTLS command first (submit on port 587 with STARTTLS)";

/// One client command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Ehlo(String),
    StartTls,
    /// AUTH PLAIN with these credentials.
    Auth {
        user: String,
        password: String,
    },
    /// MAIL FROM; `""` is the null sender.
    Mail(String),
    Rcpt(String),
    /// DATA and a small message.
    Data,
    Rset,
}

/// Where a recipient's mail goes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Destination {
    /// The named MailRoute.
    Route(String),
    /// No route and no default: the recipient domain's MX hosts.
    Mx(String),
}

/// A message the model expects the relay to deliver.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Delivery {
    pub destination: Destination,
    /// Envelope sender after any rewrite (`""` for the null sender).
    pub mail_from: String,
    /// Lower-case recipients that take this destination, in RCPT order.
    pub rcpts: Vec<String>,
}

#[derive(Clone, Debug)]
struct Setting {
    senders: Senders,
    /// `None`: no IP check; `Some(nets)`: the client IP must lie in one.
    ips: Option<Vec<IpNet>>,
    require_auth: bool,
    require_tls: bool,
}

/// One accepted message, as the limits count it.
#[derive(Clone, Debug)]
struct Record {
    /// Seconds since the model started.
    at: u64,
    user: String,
    rcpts: Vec<String>,
}

const DAY: u64 = 24 * 3600;
const PEAK: u64 = 10 * 60;

/// The model of one organization's relay.
#[derive(Clone, Debug)]
pub struct Model {
    manifests: Manifests,
    settings: Vec<Setting>,
    records: Vec<Record>,
    /// Seconds since the model started.
    now: u64,
    limits: Limits,
    /// Every message accepted so far, split by destination.
    pub deliveries: Vec<Delivery>,
}

#[derive(Clone, Copy, Debug)]
struct Limits {
    user_messages: u64,
    user_rcpts: u64,
    customer_day: u64,
    customer_peak: u64,
    per_message: u64,
}

/// One session's state in the model.
#[derive(Clone, Debug)]
pub struct SessionModel {
    ip: IpAddr,
    helo: Option<String>,
    tls: bool,
    auth: Option<String>,
    /// Envelope sender after rewrite, the sender given, accepted recipients.
    tx: Option<(String, String, Vec<String>)>,
    closed: bool,
}

impl SessionModel {
    /// True when MAIL was accepted and the transaction is open.
    pub fn has_transaction(&self) -> bool {
        self.tx.is_some()
    }

    /// Recipients accepted in the open transaction.
    pub fn accepted_rcpts(&self) -> usize {
        self.tx.as_ref().map_or(0, |(_, _, r)| r.len())
    }
}

fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map(|(_, d)| d).unwrap_or("")
}

impl Model {
    /// The model of the relay the manifests describe.
    pub fn new(manifests: &Manifests) -> Self {
        let o = &manifests.org;
        let (day, peak) = if o.paid {
            (
                (130 * o.licenses).min(4_600_000),
                (9 * o.licenses).min(319_444),
            )
        } else {
            (100, 50)
        };
        let l = &o.limits;
        let limits = Limits {
            user_messages: l.user_messages_per_day.unwrap_or(10_000),
            user_rcpts: l.user_recipients_per_day.unwrap_or(10_000),
            customer_day: l.customer_recipients_per_day.unwrap_or(day),
            customer_peak: l.customer_recipients_per10_minutes.unwrap_or(peak),
            per_message: l.recipients_per_message.unwrap_or(100),
        };
        let settings = manifests
            .settings
            .iter()
            .map(|s| Setting {
                senders: s.senders,
                ips: s.ip_ranges.as_ref().map(|selector| {
                    manifests
                        .ranges
                        .iter()
                        .filter(|r| r.enabled)
                        .filter(|r| selector.as_ref().is_none_or(|label| *label == r.label))
                        .filter_map(|r| parse_cidr(&r.cidr))
                        .collect()
                }),
                require_auth: s.require_auth,
                // SPEC §2.2: requireSmtpAuth forces requireTls.
                require_tls: s.require_tls || s.require_auth,
            })
            .collect();
        Self {
            manifests: manifests.clone(),
            settings,
            records: Vec::new(),
            now: 0,
            limits,
            deliveries: Vec::new(),
        }
    }

    /// Moves time forward by `seconds`.
    pub fn advance(&mut self, seconds: u64) {
        self.now += seconds;
    }

    /// Messages accepted within the last `window` seconds.
    fn within(&self, window: u64) -> impl Iterator<Item = &Record> {
        self.records
            .iter()
            .filter(move |r| self.now - r.at < window)
    }

    /// A new session from `ip` (the greeting is `220`).
    pub fn connect(&self, ip: IpAddr) -> SessionModel {
        SessionModel {
            ip,
            helo: None,
            tls: false,
            auth: None,
            tx: None,
            closed: false,
        }
    }

    /// Whether the relay offers STARTTLS.
    pub fn tls_available(&self) -> bool {
        self.manifests.org.tls
    }

    /// True when `domain` is, or is under, an organization domain.
    pub fn belongs(&self, domain: &str) -> bool {
        let domain = domain.to_ascii_lowercase();
        self.manifests
            .org
            .domains
            .iter()
            .any(|d| domain == *d || domain.ends_with(&format!(".{d}")))
    }

    /// The domain identifying a client for `AnyAddress`: the AUTH identity's, else the
    /// organization domain its HELO name belongs to.
    fn identifying_domain(&self, s: &SessionModel) -> Option<String> {
        if let Some(id) = &s.auth {
            return Some(domain_of(id).to_string());
        }
        let helo = s.helo.as_deref()?.to_ascii_lowercase();
        self.manifests
            .org
            .domains
            .iter()
            .filter(|d| helo == **d || helo.ends_with(&format!(".{d}")))
            .max_by_key(|d| d.len())
            .cloned()
    }

    /// The route a recipient domain takes (SPEC §2.4: most specific match wins).
    pub fn destination(&self, domain: &str) -> Destination {
        let domain = domain.to_ascii_lowercase();
        let mut best: Option<(usize, &str)> = None;
        let mut default = None;
        for r in &self.manifests.routes {
            match &r.matcher {
                RouteMatch::Default => default = Some(r.name.as_str()),
                RouteMatch::Domains(patterns) => {
                    for p in patterns {
                        let p = p.to_ascii_lowercase();
                        let score = if p == domain {
                            Some(usize::MAX)
                        } else {
                            p.strip_prefix("*.")
                                .filter(|suffix| domain.ends_with(&format!(".{suffix}")))
                                .map(str::len)
                        };
                        if let Some(score) = score
                            && best.is_none_or(|(b, _)| score > b)
                        {
                            best = Some((score, r.name.as_str()));
                        }
                    }
                }
            }
        }
        match best.map(|(_, n)| n).or(default) {
            Some(name) => Destination::Route(name.to_string()),
            None => Destination::Mx(domain),
        }
    }

    /// The reply to `step` in session `s`, updating both.
    pub fn step(&mut self, s: &mut SessionModel, step: &Step) -> Expected {
        match step {
            Step::Ehlo(name) => {
                s.helo = Some(name.to_ascii_lowercase());
                s.tx = None;
                Expected::code(250)
            }
            Step::StartTls => {
                s.tls = true;
                s.helo = None;
                s.tx = None;
                Expected::code(220)
            }
            Step::Auth { user, password } => {
                if !s.tls {
                    return Expected::prefix(538, "5.7.11");
                }
                let ok = self.manifests.org.auth
                    && PASSWORDS
                        .iter()
                        .any(|(u, p)| u.eq_ignore_ascii_case(user) && p == password);
                if ok {
                    s.auth = Some(user.to_ascii_lowercase());
                    Expected::prefix(235, "2.7.0")
                } else {
                    Expected::prefix(535, "5.7.8")
                }
            }
            Step::Mail(from) => self.mail(s, from),
            Step::Rcpt(to) => self.rcpt(s, to),
            Step::Data => self.data(s),
            Step::Rset => {
                s.tx = None;
                Expected::code(250)
            }
        }
    }

    /// True once the model says the relay has closed the session.
    pub fn closed(s: &SessionModel) -> bool {
        s.closed
    }

    fn mail(&mut self, s: &mut SessionModel, from: &str) -> Expected {
        // SPEC §3.2: a setting accepts a client when every box it has on is satisfied.
        let identified: Vec<&Setting> = self
            .settings
            .iter()
            .filter(|st| {
                let ip_ok = st
                    .ips
                    .as_ref()
                    .is_none_or(|nets| nets.iter().any(|n| n.contains(&s.ip)));
                ip_ok && (!st.require_auth || s.auth.is_some())
            })
            .collect();
        if identified.is_empty() {
            s.closed = true;
            return Expected {
                code: 550,
                text: Text::PrefixContaining {
                    prefix: "5.7.1".into(),
                    needle: s.ip.to_string(),
                },
            };
        }
        let usable: Vec<&Setting> = identified
            .into_iter()
            .filter(|st| !st.require_tls || s.tls)
            .collect();
        if usable.is_empty() {
            return Expected::exact(530, STARTTLS_FIRST);
        }
        let lower = from.to_ascii_lowercase();
        let id_domain = self.identifying_domain(s);
        // SPEC §3.3: the null sender needs the AnyAddress identification in every mode.
        let as_is = usable.iter().any(|st| {
            if from.is_empty() {
                return id_domain.is_some();
            }
            match st.senders {
                Senders::RegisteredUsers => {
                    self.manifests.org.users.contains(&lower)
                        && s.auth.as_ref().is_none_or(|id| *id == lower)
                }
                Senders::OrganizationDomains => self.belongs(domain_of(&lower)),
                Senders::AnyAddress => id_domain.is_some() && self.belongs(domain_of(&lower)),
            }
        });
        let envelope = if as_is {
            from.to_string()
        } else if !from.is_empty()
            && usable.iter().any(|st| st.senders == Senders::AnyAddress)
            && let Some(d) = id_domain
        {
            format!("postmaster@{d}")
        } else {
            return Expected::prefix(550, "5.7.1");
        };
        s.tx = Some((envelope, lower, Vec::new()));
        Expected::code(250)
    }

    fn user(s: &SessionModel) -> String {
        match (&s.auth, &s.tx) {
            (Some(id), _) => id.clone(),
            (None, Some((_, given, _))) => given.clone(),
            (None, None) => String::new(),
        }
    }

    fn rcpt(&mut self, s: &mut SessionModel, to: &str) -> Expected {
        let user = Self::user(s);
        let Some((from, _, rcpts)) = &mut s.tx else {
            return Expected::code(503);
        };
        // SPEC §3.4: the local part keeps its case, the domain compares case-insensitively.
        let to = match to.rsplit_once('@') {
            Some((local, domain)) => format!("{local}@{}", domain.to_ascii_lowercase()),
            None => to.to_string(),
        };
        if from.is_empty() && !rcpts.is_empty() {
            return Expected::prefix(550, "5.5.3");
        }
        if rcpts.contains(&to) {
            return Expected::code(250);
        }
        if rcpts.len() as u64 >= self.limits.per_message {
            return Expected::prefix(452, "4.5.3");
        }
        let l = self.limits;
        let mine = || self.within(DAY).filter(|r| r.user == user);
        if mine().count() as u64 + 1 > l.user_messages {
            return Expected::exact(550, USER_LIMIT);
        }
        let mut unique: BTreeSet<&String> = mine().flat_map(|r| r.rcpts.iter()).collect();
        let is_new = !unique.contains(&to) && !rcpts.contains(&to);
        unique.extend(rcpts.iter());
        if is_new && unique.len() as u64 + 1 > l.user_rcpts {
            return Expected::exact(550, USER_LIMIT);
        }
        let counted = |window| {
            self.within(window)
                .map(|r| r.rcpts.len() as u64)
                .sum::<u64>()
                + rcpts.len() as u64
                + 1
        };
        if counted(DAY) > l.customer_day {
            return Expected::exact(550, CUSTOMER_DAILY);
        }
        if counted(PEAK) > l.customer_peak {
            return Expected::exact(450, CUSTOMER_PEAK);
        }
        rcpts.push(to);
        Expected::prefix(250, "2.1.5")
    }

    fn data(&mut self, s: &mut SessionModel) -> Expected {
        let user = Self::user(s);
        let Some((from, _, rcpts)) = s.tx.take() else {
            return Expected::code(503);
        };
        if rcpts.is_empty() {
            return Expected::code(554);
        }
        // Counted when accepted (SPEC §3.6).
        self.records.push(Record {
            at: self.now,
            user,
            rcpts: rcpts.clone(),
        });
        let mut by_destination: BTreeMap<Destination, Vec<String>> = BTreeMap::new();
        for r in rcpts {
            by_destination
                .entry(self.destination(domain_of(&r)))
                .or_default()
                .push(r);
        }
        for (destination, rcpts) in by_destination {
            self.deliveries.push(Delivery {
                destination,
                mail_from: from.clone(),
                rcpts,
            });
        }
        Expected::prefix(250, "2.0.0")
    }
}

fn parse_cidr(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>()
        .map(|n| n.trunc())
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::*;

    fn org() -> Manifests {
        Manifests {
            org: OrgSpec {
                domains: vec!["acme.example".into()],
                users: vec!["alice@acme.example".into()],
                tls: true,
                auth: true,
                licenses: 10,
                paid: true,
                limits: LimitOverrides {
                    customer_recipients_per10_minutes: Some(2),
                    ..Default::default()
                },
                proxy_protocol: None,
                dkim: vec![],
                content_filters: vec![],
                archive: None,
            },
            settings: vec![SettingSpec {
                name: "office".into(),
                senders: Senders::AnyAddress,
                ip_ranges: Some(Some("office".into())),
                require_auth: false,
                require_tls: false,
            }],
            ranges: vec![RangeSpec {
                name: "office".into(),
                cidr: "10.0.0.0/24".into(),
                enabled: true,
                label: "office".into(),
            }],
            routes: vec![],
        }
    }

    #[test]
    fn outside_client_is_refused_naming_its_ip_and_the_session_ends() {
        let mut m = Model::new(&org());
        let mut s = m.connect("10.0.1.1".parse().unwrap());
        m.step(&mut s, &Step::Ehlo("x.acme.example".into()));
        let e = m.step(&mut s, &Step::Mail("a@acme.example".into()));
        assert!(e.matches(
            "550 5.7.1 Client host [10.0.1.1] is not allowed to relay through this server"
        ));
        assert!(!e.matches("550 5.7.1 Client host [10.0.1.2] is not allowed"));
        assert!(Model::closed(&s));
    }

    #[test]
    fn any_address_rewrites_foreign_sender_to_postmaster_of_the_helo_domain() {
        let mut m = Model::new(&org());
        let mut s = m.connect("10.0.0.9".parse().unwrap());
        m.step(&mut s, &Step::Ehlo("host.acme.example".into()));
        assert!(
            m.step(&mut s, &Step::Mail("x@other.test".into()))
                .matches("250 2.1.0 OK")
        );
        m.step(&mut s, &Step::Rcpt("bob@example.net".into()));
        m.step(&mut s, &Step::Data);
        assert_eq!(m.deliveries[0].mail_from, "postmaster@acme.example");
        assert_eq!(
            m.deliveries[0].destination,
            Destination::Mx("example.net".into())
        );
    }

    #[test]
    fn peak_limit_counts_pending_recipients() {
        let mut m = Model::new(&org());
        let mut s = m.connect("10.0.0.9".parse().unwrap());
        m.step(&mut s, &Step::Ehlo("host.acme.example".into()));
        m.step(&mut s, &Step::Mail("a@acme.example".into()));
        assert_eq!(m.step(&mut s, &Step::Rcpt("b@x.test".into())).code, 250);
        assert_eq!(m.step(&mut s, &Step::Rcpt("c@x.test".into())).code, 250);
        let e = m.step(&mut s, &Step::Rcpt("d@x.test".into()));
        assert!(e.matches("450 4.2.1 Peak SMTP relay limit exceeded for customer."));
    }

    #[test]
    fn peak_window_rolls_after_ten_minutes() {
        let mut m = Model::new(&org());
        let mut s = m.connect("10.0.0.9".parse().unwrap());
        m.step(&mut s, &Step::Ehlo("host.acme.example".into()));
        m.step(&mut s, &Step::Mail("a@acme.example".into()));
        m.step(&mut s, &Step::Rcpt("b@x.test".into()));
        m.step(&mut s, &Step::Rcpt("c@x.test".into()));
        assert_eq!(m.step(&mut s, &Step::Data).code, 250);
        m.step(&mut s, &Step::Mail("a@acme.example".into()));
        assert_eq!(m.step(&mut s, &Step::Rcpt("d@x.test".into())).code, 450);
        m.advance(11 * 60);
        assert_eq!(m.step(&mut s, &Step::Rcpt("d@x.test".into())).code, 250);
    }
}
