//! Who may relay: the pure sender-policy decision of SPEC §3.2–3.3.
//!
//! A [`Policy`] is compiled once per config generation (IP ranges become sorted, merged
//! interval tables, so a lookup is a binary search even with 10,000 ranges) and shared
//! through an `Arc`. It answers one question, at `MAIL FROM`: given what we know about
//! the client (IP, TLS, AUTH identity, HELO name) and the envelope sender, which reply?
//! Settings are OR-ed: the message is accepted when any setting accepts it.
//!
//! Where each check happens (the session calls this at MAIL, not at the greeting, so a
//! client that can still authenticate gets the chance to):
//! 1. no setting's authentication boxes are satisfied ⇒ `550 5.7.1` naming the client IP,
//!    and the session closes after the reply;
//! 2. every satisfied setting requires TLS and TLS is not active ⇒ `530 5.7.0`;
//! 3. no satisfied setting allows the sender ⇒ `550 5.7.1 <reason>`.
//!
//! Sender modes: `RegisteredUsers` (a listed user; the AUTH identity when authenticated),
//! `OrganizationDomains` (the domain is, or is under, an organization domain),
//! `AnyAddress` (the client authenticated or said HELO with an organization name; a
//! foreign sender becomes `postmaster@` the AUTH identity's domain, else the organization
//! domain the HELO name belongs to). The null sender needs that same identification in
//! every mode and is never rewritten; its one-recipient rule is enforced by `session`.
//!
//! [`Policy::explain_mail`] answers the same question box by box for every setting (IP
//! allow list, AUTH, TLS, sender), for `relayctl explain`. [`Policy::decide_mail`], which
//! the session calls, reaches the same decision without a verdict per setting, through
//! the policy index (`policy::index`): one interval table, across all settings, from a
//! client address to a summary of the settings whose allow list holds it (settings without
//! one hold every address) — per kind of client (AUTH, TLS), whether one identifies it,
//! whether one of those also has its TLS box satisfied, and the sender modes of those
//! usable and of the first. A decision is then a binary search plus one sender check per
//! mode (at most three), however many settings there are, where a verdict per setting
//! costs microseconds with 10,000 ranges over 1,000 settings. Both share the sender
//! checks, and a property test holds `decide_mail` to `explain_mail`'s decision.
//!
//! The index stores summaries, not lists of settings, so overlapping ranges cannot make it
//! grow as ranges × settings: at most 2R + 1 stretches per address family for R merged
//! ranges, 8 bytes each for IPv4 and 20 for IPv6, plus each distinct summary once (8
//! bytes). The 10,000 /24 ranges of the benchmark, 10 adjacent ones in each of 1,000
//! settings, leave 3 IPv4 stretches (all those settings summarise alike), 1 IPv6 stretch
//! and 2 summaries: 60 bytes. Interleaved so that neighbouring ranges belong to settings
//! of different kinds, they leave 9,993 IPv4 stretches and 13 summaries: 80 KB.
//!
//! Domains are compared as A-labels ([`crate::idn`]): organization domains and the
//! domains of registered users are normalised when the policy is compiled, and a sender's
//! domain when it is checked, so `bücher.example` and `xn--bcher-kva.example` are one
//! organization domain whichever form the config or the client uses.
//!
//! Not here: SMTP sequencing (`session`), credentials (`auth`), counters (`limits`).

use std::collections::HashSet;
use std::net::IpAddr;

use crate::config::{AllowedSenders, RelayConfig};
use crate::idn;
use crate::smtp::Reply;

mod compiled;
mod index;

use compiled::CompiledSetting;
pub use compiled::IpSet;
pub use index::IndexSize;
use index::{PolicyIndex, Reach};

/// What the session knows about the client when MAIL arrives.
#[derive(Clone, Copy, Debug)]
pub struct ClientFacts<'a> {
    pub ip: IpAddr,
    pub tls: bool,
    /// Lower-case AUTH identity, when authenticated.
    pub auth: Option<&'a str>,
    /// Lower-case HELO/EHLO name.
    pub helo: Option<&'a str>,
}

/// The answer to MAIL FROM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MailDecision {
    /// Accepted. `mail_from` is the envelope sender to use (`""` for the null sender);
    /// `original` is the sender the client gave when it was rewritten.
    Accept {
        mail_from: String,
        original: Option<String>,
    },
    /// No setting's authentication boxes are satisfied.
    ClientNotAllowed,
    /// A setting would accept the client, but only over TLS.
    TlsRequired,
    /// The client is allowed but not this sender.
    SenderRejected(String),
}

impl MailDecision {
    /// The reply for a refusal; `None` for `Accept`.
    pub fn reply(&self, ip: IpAddr) -> Option<Reply> {
        match self {
            MailDecision::Accept { .. } => None,
            MailDecision::ClientNotAllowed => Some(Reply::new(
                550,
                format!(
                    "5.7.1 Client host [{}] is not allowed to relay through this server",
                    ip.to_canonical()
                ),
            )),
            MailDecision::TlsRequired => Some(Reply::new(
                530,
                "5.7.0 Must issue a STARTTLS command first (submit on port 587 with STARTTLS)",
            )),
            MailDecision::SenderRejected(reason) => {
                Some(Reply::new(550, format!("5.7.1 {reason}")))
            }
        }
    }
}

/// The state of one box of a setting (SPEC §3.2): off, on and satisfied, or on and not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum BoxCheck {
    /// The setting does not ask for it.
    NotRequired,
    /// Asked for and satisfied.
    Satisfied,
    /// Asked for and not satisfied.
    Failed,
}

impl BoxCheck {
    /// True unless the box is on and unsatisfied.
    pub fn passes(self) -> bool {
        self != BoxCheck::Failed
    }
}

/// What one setting says of the envelope sender (SPEC §3.3).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum SenderCheck {
    /// Accepted as the client gave it.
    Allowed,
    /// Not accepted as given (`reason`), but `AnyAddress` rewrites it to `to`.
    Rewritten { to: String, reason: String },
    /// Refused, with the reason the client is told.
    Rejected(String),
}

/// One setting's verdict on a client and sender, box by box.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SettingVerdict {
    /// The setting's sender mode.
    pub senders: AllowedSenders,
    /// The IP allow list: the client IP lies in an enabled range the setting selects.
    pub ip: BoxCheck,
    /// SMTP AUTH: the client authenticated.
    pub auth: BoxCheck,
    /// TLS: the connection is encrypted when MAIL arrives.
    pub tls: BoxCheck,
    /// The sender check (evaluated whatever the other boxes say).
    pub sender: SenderCheck,
}

impl SettingVerdict {
    /// Every authentication box the setting has on is satisfied (SPEC §3.2).
    pub fn identifies_client(&self) -> bool {
        self.ip.passes() && self.auth.passes()
    }

    /// The setting accepts this client, over this transport, with this sender.
    pub fn accepts(&self) -> bool {
        self.identifies_client()
            && self.tls.passes()
            && !matches!(self.sender, SenderCheck::Rejected(_))
    }
}

/// [`Policy::explain_mail`]'s answer: every setting's verdict and their combination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailExplanation {
    /// One verdict per setting, in the config's order.
    pub settings: Vec<SettingVerdict>,
    /// What the relay decides (the same as [`Policy::decide_mail`]).
    pub decision: MailDecision,
}

/// Combines the settings' verdicts (settings are OR-ed, SPEC §2.2): a client no setting
/// identifies is refused; then one whose identifying settings all need TLS it lacks; then
/// the first setting taking the sender as given wins, else an `AnyAddress` rewrite, else
/// the first refusal reason.
fn combine(settings: &[SettingVerdict], sender: &str) -> MailDecision {
    let identified: Vec<&SettingVerdict> =
        settings.iter().filter(|v| v.identifies_client()).collect();
    if identified.is_empty() {
        return MailDecision::ClientNotAllowed;
    }
    let usable: Vec<&SettingVerdict> = identified.into_iter().filter(|v| v.tls.passes()).collect();
    if usable.is_empty() {
        return MailDecision::TlsRequired;
    }
    if usable.iter().any(|v| v.sender == SenderCheck::Allowed) {
        return MailDecision::Accept {
            mail_from: sender.to_string(),
            original: None,
        };
    }
    if let Some(to) = usable.iter().find_map(|v| match &v.sender {
        SenderCheck::Rewritten { to, .. } => Some(to.clone()),
        _ => None,
    }) {
        return MailDecision::Accept {
            mail_from: to,
            original: Some(sender.to_string()),
        };
    }
    let reason = usable
        .iter()
        .find_map(|v| match &v.sender {
            SenderCheck::Rejected(r) | SenderCheck::Rewritten { reason: r, .. } => Some(r.clone()),
            SenderCheck::Allowed => None,
        })
        .unwrap_or_default();
    MailDecision::SenderRejected(reason)
}

/// The compiled policy of one config generation.
#[derive(Clone, Debug)]
pub struct Policy {
    settings: Vec<CompiledSetting>,
    index: PolicyIndex,
    domains: Vec<String>,
    users: HashSet<String>,
}

/// Why a setting's sender mode does not take a sender as given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    /// The null sender from a client neither authenticated nor of an organization HELO.
    UnidentifiedNullSender,
    /// `RegisteredUsers`: the sender is not a listed user.
    NotRegistered,
    /// `RegisteredUsers`: the sender is not the authenticated identity.
    NotTheAuthenticatedUser,
    /// `OrganizationDomains`, `AnyAddress`: a foreign domain.
    ForeignDomain,
    /// `AnyAddress`: neither authenticated nor of an organization HELO.
    UnidentifiedClient,
}

/// What the sender checks need of one MAIL FROM, worked out once for all settings.
struct SenderFacts<'a> {
    /// The sender as the client gave it (`""` for the null sender).
    given: &'a str,
    /// The sender as it is compared ([`comparable_address`]).
    comparable: String,
    /// The domain that identifies the client ([`Policy::identifying_domain`]).
    client_domain: Option<String>,
}

impl Refusal {
    /// The reason the client is told.
    fn reason(self, client: &ClientFacts<'_>, sender: &SenderFacts<'_>) -> String {
        let given = sender.given;
        match self {
            Refusal::UnidentifiedNullSender => {
                "Null sender rejected: authenticate or present a HELO name of the organization"
                    .to_string()
            }
            Refusal::NotRegistered => format!("Sender address <{given}> is not a registered user"),
            Refusal::NotTheAuthenticatedUser => format!(
                "Sender address <{given}> does not match the authenticated user {}",
                client.auth.unwrap_or_default()
            ),
            Refusal::ForeignDomain => format!(
                "Sender domain {} does not belong to the organization",
                domain_of(&sender.comparable)
            ),
            Refusal::UnidentifiedClient => {
                "Sender rejected: authenticate or present a HELO name of the organization"
                    .to_string()
            }
        }
    }
}

impl Policy {
    /// Compiles the settings, domains and users of a config.
    pub fn new(config: &RelayConfig) -> Self {
        let settings: Vec<CompiledSetting> = config
            .settings
            .iter()
            .map(|s| CompiledSetting {
                senders: s.allowed_senders,
                ips: s
                    .ip_ranges
                    .as_ref()
                    .map(|ranges| IpSet::new(ranges.iter().map(|r| &r.network))),
                require_auth: s.require_smtp_auth,
                require_tls: s.require_tls,
            })
            .collect();
        Self {
            index: PolicyIndex::new(&settings),
            settings,
            domains: config
                .organization
                .domains
                .iter()
                .map(|d| idn::comparable_domain(d))
                .collect(),
            users: config
                .organization
                .users
                .iter()
                .map(|u| comparable_address(u))
                .collect(),
        }
    }

    /// The size of the policy index [`Policy::decide_mail`] looks clients up in.
    pub fn index_size(&self) -> IndexSize {
        self.index.size()
    }

    /// True when `domain` equals an organization domain or is a subdomain of one.
    pub fn domain_belongs(&self, domain: &str) -> bool {
        let domain = idn::comparable_domain(domain);
        self.domains.iter().any(|d| {
            domain == *d
                || (domain.len() > d.len()
                    && domain.ends_with(d.as_str())
                    && domain.as_bytes()[domain.len() - d.len() - 1] == b'.')
        })
    }

    /// Decides MAIL FROM; `sender` is `""` for the null sender. Always the decision of
    /// [`Policy::explain_mail`], reached through the policy index: one lookup of the
    /// client address, then one sender check per sender mode of the usable settings.
    pub fn decide_mail(&self, client: &ClientFacts<'_>, sender: &str) -> MailDecision {
        let (first, modes) = match self
            .index
            .reach(client.ip, client.auth.is_some(), client.tls)
        {
            Reach::NotIdentified => return MailDecision::ClientNotAllowed,
            Reach::TlsRequired => return MailDecision::TlsRequired,
            Reach::Usable { first, modes } => (first, modes),
        };
        let facts = self.sender_facts(client, sender);
        // As `combine`: a mode taking the sender as given accepts it; else an AnyAddress
        // setting rewrites it; else the first usable setting's reason refuses it.
        let mut refusal = None;
        for mode in modes.iter() {
            match self.sender_as_is(mode, client, &facts) {
                Ok(()) => {
                    return MailDecision::Accept {
                        mail_from: sender.to_string(),
                        original: None,
                    };
                }
                Err(r) if mode == first => refusal = Some(r),
                Err(_) => {}
            }
        }
        if modes.contains(AllowedSenders::AnyAddress)
            && let Some(domain) = &facts.client_domain
        {
            return MailDecision::Accept {
                mail_from: format!("postmaster@{domain}"),
                original: Some(sender.to_string()),
            };
        }
        MailDecision::SenderRejected(
            refusal
                .map(|r| r.reason(client, &facts))
                .unwrap_or_default(),
        )
    }

    /// Decides MAIL FROM and says why: the verdict of every setting, box by box, in the
    /// order of the config, and the decision they combine to. [`Policy::decide_mail`]
    /// reaches the same decision through the index without a verdict per setting.
    pub fn explain_mail(&self, client: &ClientFacts<'_>, sender: &str) -> MailExplanation {
        let facts = self.sender_facts(client, sender);
        let settings: Vec<SettingVerdict> = self
            .settings
            .iter()
            .map(|s| self.evaluate_setting(s, client, &facts))
            .collect();
        let decision = combine(&settings, sender);
        MailExplanation { settings, decision }
    }

    fn sender_facts<'a>(&self, client: &ClientFacts<'_>, sender: &'a str) -> SenderFacts<'a> {
        SenderFacts {
            given: sender,
            comparable: comparable_address(sender),
            client_domain: self.identifying_domain(client),
        }
    }

    /// One setting's boxes for this client and sender.
    fn evaluate_setting(
        &self,
        s: &CompiledSetting,
        client: &ClientFacts<'_>,
        sender: &SenderFacts<'_>,
    ) -> SettingVerdict {
        let ip = match &s.ips {
            None => BoxCheck::NotRequired,
            Some(set) if set.contains(client.ip) => BoxCheck::Satisfied,
            Some(_) => BoxCheck::Failed,
        };
        let auth = match (s.require_auth, client.auth) {
            (false, _) => BoxCheck::NotRequired,
            (true, Some(_)) => BoxCheck::Satisfied,
            (true, None) => BoxCheck::Failed,
        };
        let tls = match (s.require_tls, client.tls) {
            (false, _) => BoxCheck::NotRequired,
            (true, true) => BoxCheck::Satisfied,
            (true, false) => BoxCheck::Failed,
        };
        let check = match self.sender_as_is(s.senders, client, sender) {
            Ok(()) => SenderCheck::Allowed,
            Err(refusal) => {
                let reason = refusal.reason(client, sender);
                match (s.senders, &sender.client_domain) {
                    (AllowedSenders::AnyAddress, Some(domain)) => SenderCheck::Rewritten {
                        to: format!("postmaster@{domain}"),
                        reason,
                    },
                    _ => SenderCheck::Rejected(reason),
                }
            }
        };
        SettingVerdict {
            senders: s.senders,
            ip,
            auth,
            tls,
            sender: check,
        }
    }

    /// Whether a setting of mode `mode` accepts the sender without rewriting it.
    fn sender_as_is(
        &self,
        mode: AllowedSenders,
        client: &ClientFacts<'_>,
        sender: &SenderFacts<'_>,
    ) -> Result<(), Refusal> {
        let lower = sender.comparable.as_str();
        match mode {
            // The null sender (bounces, out-of-office) needs the identification AnyAddress
            // needs, whatever the mode: AUTH, or a HELO name of the organization.
            _ if sender.given.is_empty() => match sender.client_domain {
                Some(_) => Ok(()),
                None => Err(Refusal::UnidentifiedNullSender),
            },
            AllowedSenders::RegisteredUsers => {
                if !self.users.contains(lower) {
                    return Err(Refusal::NotRegistered);
                }
                match client.auth {
                    Some(id) if comparable_address(id) != lower => {
                        Err(Refusal::NotTheAuthenticatedUser)
                    }
                    _ => Ok(()),
                }
            }
            AllowedSenders::OrganizationDomains => {
                if self.domain_belongs(domain_of(lower)) {
                    Ok(())
                } else {
                    Err(Refusal::ForeignDomain)
                }
            }
            AllowedSenders::AnyAddress => {
                if sender.client_domain.is_none() {
                    Err(Refusal::UnidentifiedClient)
                } else if self.domain_belongs(domain_of(lower)) {
                    Ok(())
                } else {
                    Err(Refusal::ForeignDomain)
                }
            }
        }
    }

    /// For AnyAddress: the domain that identifies the client, or `None`. With AUTH it is
    /// the identity's domain; otherwise the organization domain the HELO name belongs to
    /// (HELO `mx1.acme.example` gives `acme.example`: `postmaster@` a host name is often
    /// undeliverable, `postmaster@` the organization domain is not).
    fn identifying_domain(&self, client: &ClientFacts<'_>) -> Option<String> {
        if let Some(id) = client.auth {
            return Some(domain_of(id))
                .filter(|d| !d.is_empty())
                .map(idn::comparable_domain);
        }
        let helo = client.helo?.trim_end_matches('.').to_ascii_lowercase();
        self.domains
            .iter()
            .filter(|d| {
                helo == **d
                    || (helo.ends_with(d.as_str()) && helo[..helo.len() - d.len()].ends_with('.'))
            })
            .max_by_key(|d| d.len())
            .cloned()
    }
}

/// An address for comparison: lower-cased, its domain as an A-label when it has one.
fn comparable_address(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) if !domain.starts_with('[') => {
            format!(
                "{}@{}",
                local.to_ascii_lowercase(),
                idn::comparable_domain(domain)
            )
        }
        _ => address.to_ascii_lowercase(),
    }
}

/// The domain of an address (`""` when it has none).
pub fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map(|(_, d)| d).unwrap_or("")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{LimitsConfig, RangeConfig, SettingConfig};
    use ipnet::IpNet;
    use proptest::prelude::*;

    pub(crate) fn config_with(settings: Vec<SettingConfig>) -> RelayConfig {
        let mut cfg = RelayConfig::loopback("", 25);
        cfg.organization.users = vec!["alice@acme.example".into()];
        cfg.settings = settings;
        cfg.routes.clear();
        cfg.limits = LimitsConfig::for_customer(10, true);
        cfg
    }

    fn setting(
        senders: AllowedSenders,
        ranges: Option<Vec<&str>>,
        auth: bool,
        tls: bool,
    ) -> SettingConfig {
        SettingConfig {
            name: "acme/s".into(),
            description: String::new(),
            allowed_senders: senders,
            ip_ranges: ranges.map(|r| {
                r.iter()
                    .map(|c| RangeConfig {
                        name: "acme/r".into(),
                        network: c.parse().unwrap(),
                    })
                    .collect()
            }),
            require_smtp_auth: auth,
            require_tls: tls,
        }
    }

    fn facts(ip: &str) -> ClientFacts<'static> {
        ClientFacts {
            ip: ip.parse().unwrap(),
            tls: false,
            auth: None,
            helo: None,
        }
    }

    #[test]
    fn ip_sets_match_v4_v6_and_mapped_addresses() {
        let nets: Vec<IpNet> = [
            "10.0.0.0/16",
            "10.1.0.0/16",
            "2001:db8::/112",
            "192.0.2.7/32",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let set = IpSet::new(&nets);
        for ip in [
            "10.0.0.0",
            "10.1.255.255",
            "2001:db8::ffff",
            "192.0.2.7",
            "::ffff:10.0.3.4",
        ] {
            assert!(set.contains(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "10.2.0.0",
            "9.255.255.255",
            "2001:db8::1:0",
            "192.0.2.8",
            "::",
        ] {
            assert!(!set.contains(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn domains_belong_when_equal_or_subdomain() {
        let p = Policy::new(&config_with(vec![]));
        assert!(p.domain_belongs("acme.example"));
        assert!(p.domain_belongs("mail.ACME.example"));
        assert!(!p.domain_belongs("notacme.example"));
        assert!(!p.domain_belongs("example"));
    }

    #[test]
    fn organization_domains_and_users_compare_as_a_labels() {
        let mut cfg = config_with(vec![setting(
            AllowedSenders::OrganizationDomains,
            Some(vec!["127.0.0.0/16"]),
            false,
            false,
        )]);
        // One domain configured as a U-label, one as an A-label.
        cfg.organization.domains = vec!["Bücher.example".into(), "xn--mnchen-3ya.example".into()];
        cfg.organization.users = vec!["Jörg@bücher.example".into()];
        let p = Policy::new(&cfg);
        for d in [
            "bücher.example",
            "xn--bcher-kva.example",
            "shop.BÜCHER.example",
            "münchen.example",
            "mail.xn--mnchen-3ya.example",
        ] {
            assert!(p.domain_belongs(d), "{d}");
        }
        assert!(!p.domain_belongs("xn--bcher-kva.example.evil"));
        assert!(!p.domain_belongs("bucher.example"));
        let c = facts("127.0.0.1");
        assert!(matches!(
            p.decide_mail(&c, "a@xn--mnchen-3ya.example"),
            MailDecision::Accept { .. }
        ));
        assert!(matches!(
            p.decide_mail(&c, "a@bucher.example"),
            MailDecision::SenderRejected(_)
        ));
        // Registered users: the user's domain in either form.
        let mut cfg = cfg.clone();
        cfg.settings[0].allowed_senders = AllowedSenders::RegisteredUsers;
        let p = Policy::new(&cfg);
        assert!(matches!(
            p.decide_mail(&c, "Jörg@xn--bcher-kva.example"),
            MailDecision::Accept { .. }
        ));
    }

    #[test]
    fn any_address_rewrites_foreign_senders_to_postmaster() {
        let p = Policy::new(&config_with(vec![setting(
            AllowedSenders::AnyAddress,
            Some(vec!["127.0.0.0/16"]),
            false,
            false,
        )]));
        let mut c = facts("127.0.0.1");
        // Neither authenticated nor an organization HELO: refused.
        assert!(matches!(
            p.decide_mail(&c, "x@other.example"),
            MailDecision::SenderRejected(_)
        ));
        c.helo = Some("host.acme.example");
        assert_eq!(
            p.decide_mail(&c, "x@other.example"),
            MailDecision::Accept {
                mail_from: "postmaster@acme.example".into(),
                original: Some("x@other.example".into())
            }
        );
        assert_eq!(
            p.decide_mail(&c, "x@acme.example"),
            MailDecision::Accept {
                mail_from: "x@acme.example".into(),
                original: None
            }
        );
    }

    #[test]
    fn null_sender_needs_auth_or_an_organization_helo_in_every_mode() {
        let p = Policy::new(&config_with(vec![setting(
            AllowedSenders::OrganizationDomains,
            Some(vec!["127.0.0.0/16"]),
            false,
            false,
        )]));
        let mut c = facts("127.0.0.1");
        c.helo = Some("printer.example");
        assert_eq!(
            p.decide_mail(&c, ""),
            MailDecision::SenderRejected(
                "Null sender rejected: authenticate or present a HELO name of the organization"
                    .into()
            )
        );
        c.helo = Some("mx.acme.example");
        assert_eq!(
            p.decide_mail(&c, ""),
            MailDecision::Accept {
                mail_from: String::new(),
                original: None
            }
        );
    }

    #[test]
    fn explanations_name_each_failing_box_and_agree_with_the_decision() {
        let p = Policy::new(&config_with(vec![
            setting(
                AllowedSenders::OrganizationDomains,
                Some(vec!["192.0.2.0/24"]),
                false,
                true,
            ),
            setting(AllowedSenders::AnyAddress, None, true, true),
        ]));
        let mut c = facts("192.0.2.1");
        let e = p.explain_mail(&c, "x@other.example");
        assert_eq!(e.decision, MailDecision::TlsRequired);
        assert_eq!(
            (e.settings[0].ip, e.settings[0].tls),
            (BoxCheck::Satisfied, BoxCheck::Failed)
        );
        assert_eq!(
            e.settings[0].sender,
            SenderCheck::Rejected(
                "Sender domain other.example does not belong to the organization".into()
            )
        );
        assert_eq!(e.settings[1].auth, BoxCheck::Failed);
        c.tls = true;
        c.auth = Some("app@acme.example");
        let e = p.explain_mail(&c, "x@other.example");
        assert!(!e.settings[0].accepts());
        assert!(e.settings[1].accepts());
        assert!(matches!(
            &e.settings[1].sender,
            SenderCheck::Rewritten { to, .. } if to == "postmaster@acme.example"
        ));
        assert_eq!(e.decision, p.decide_mail(&c, "x@other.example"));
    }

    /// A network for the index property test: small nested and overlapping v4 and v6
    /// ranges, IPv4-mapped ones, and the ends of both families.
    fn overlapping_net() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            (0u8..4, any::<u8>(), 20u8..=32).prop_map(|(c, d, len)| IpNet::new(
                [10, 0, c, d].into(),
                len
            )
            .unwrap()
            .trunc()),
            (0u16..4, any::<u8>(), 116u8..=128).prop_map(|(c, d, len)| {
                let a = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, c, d.into());
                IpNet::new(a.into(), len).unwrap().trunc()
            }),
            prop_oneof![
                Just("0.0.0.0/0"),
                Just("255.255.255.255/32"),
                Just("::/0"),
                Just("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"),
                Just("::ffff:10.0.1.0/120"),
            ]
            .prop_map(|n| n.parse().unwrap()),
        ]
    }

    fn client_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            (0u8..4, any::<u8>()).prop_map(|(c, d)| IpAddr::from([10, 0, c, d])),
            (0u16..4, any::<u8>()).prop_map(|(c, d)| {
                std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, c, d.into()).into()
            }),
            (0u8..4, any::<u8>())
                .prop_map(|(c, d)| std::net::Ipv4Addr::new(10, 0, c, d).to_ipv6_mapped().into()),
            prop_oneof![
                Just("0.0.0.0"),
                Just("255.255.255.255"),
                Just("::"),
                Just("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            ]
            .prop_map(|ip| ip.parse().unwrap()),
        ]
    }

    proptest! {
        #[test]
        fn the_index_decides_as_the_explanation(
            raw in proptest::collection::vec(
                (0usize..3, proptest::option::of(proptest::collection::vec(overlapping_net(), 0..6)), any::<bool>(), any::<bool>()),
                0..10),
            clients in proptest::collection::vec((client_ip(), any::<bool>()), 1..8),
            auth in proptest::option::of(prop_oneof![Just("alice@acme.example"), Just("Alice@ACME.example"), Just("bob@other.example"), Just("app")]),
            helo in proptest::option::of(prop_oneof![Just("mx.acme.example"), Just("evil.example")]),
            sender in prop_oneof![Just(""), Just("alice@acme.example"), Just("ALICE@Acme.Example"), Just("carol@sub.acme.example"), Just("x@other.example"), Just("nodomain")],
        ) {
            let modes = [AllowedSenders::RegisteredUsers, AllowedSenders::OrganizationDomains, AllowedSenders::AnyAddress];
            let settings: Vec<SettingConfig> = raw.iter().map(|(m, nets, a, t)| SettingConfig {
                name: "acme/s".into(),
                description: String::new(),
                allowed_senders: modes[*m],
                ip_ranges: nets.as_ref().map(|nets| nets.iter().map(|n| RangeConfig { name: "acme/r".into(), network: *n }).collect()),
                require_smtp_auth: *a,
                require_tls: *t,
            }).collect();
            let ranges: usize = settings.iter().filter_map(|s| s.ip_ranges.as_ref()).map(Vec::len).sum();
            let p = Policy::new(&config_with(settings));
            for (ip, tls) in clients {
                let client = ClientFacts { ip, tls, auth, helo };
                prop_assert_eq!(p.decide_mail(&client, sender), p.explain_mail(&client, sender).decision, "client {:?}", client);
            }
            // At most 2R + 1 stretches per family, however the ranges overlap.
            prop_assert!(p.index_size().stretches <= 2 * ranges + 2);
        }
    }

    #[test]
    fn the_index_stays_small_when_every_range_overlaps_others() {
        // 1,000 settings of every kind, each of 10 /24 ranges, setting s starting at the
        // s-th /24: every address is in up to 10 settings' ranges, so lists of settings
        // per stretch would hold about 10,000 entries; the index holds one per stretch.
        let modes = [
            AllowedSenders::RegisteredUsers,
            AllowedSenders::OrganizationDomains,
            AllowedSenders::AnyAddress,
        ];
        let settings = (0..1000u32)
            .map(|s| SettingConfig {
                name: format!("acme/s{s}"),
                description: String::new(),
                allowed_senders: modes[(s % 3) as usize],
                ip_ranges: Some(
                    (s..s + 10)
                        .map(|n| RangeConfig {
                            name: format!("acme/r{n}"),
                            network: format!("10.{}.{}.0/24", n / 256, n % 256).parse().unwrap(),
                        })
                        .collect(),
                ),
                require_smtp_auth: s % 7 == 0,
                require_tls: s % 5 == 0,
            })
            .collect();
        let p = Policy::new(&config_with(settings));
        let size = p.index_size();
        assert!(size.stretches <= 1012, "{size:?}");
        assert!(size.bytes < 20_000, "{size:?}");
        let mut c = facts("10.0.5.1");
        c.auth = Some("alice@acme.example");
        c.tls = true;
        assert_eq!(
            p.decide_mail(&c, "x@other.example"),
            p.explain_mail(&c, "x@other.example").decision
        );
    }

    /// An independent, deliberately naive model of SPEC §3.2–3.3 for the property test.
    fn model(
        settings: &[(u8, Option<Vec<IpNet>>, bool, bool)],
        ip: IpAddr,
        tls: bool,
        auth: Option<&str>,
        helo: &str,
        sender: &str,
    ) -> &'static str {
        let belongs = |d: &str| d == "acme.example" || d.ends_with(".acme.example");
        let ids: Vec<_> = settings
            .iter()
            .filter(|(_, r, a, _)| {
                r.as_ref().is_none_or(|r| r.iter().any(|n| n.contains(&ip)))
                    && (!a || auth.is_some())
            })
            .collect();
        if ids.is_empty() {
            return "not-allowed";
        }
        let ids: Vec<_> = ids.into_iter().filter(|(_, _, _, t)| !t || tls).collect();
        if ids.is_empty() {
            return "tls";
        }
        let sdom = sender.rsplit('@').next().unwrap_or("");
        let identified = auth.is_some() || belongs(helo);
        for (mode, ..) in &ids {
            let ok = match mode {
                _ if sender.is_empty() => identified,
                0 => sender == "alice@acme.example" && auth.is_none_or(|a| a == sender),
                1 => belongs(sdom),
                _ => identified && belongs(sdom),
            };
            if ok {
                return "accept";
            }
        }
        if ids.iter().any(|(m, ..)| *m == 2) && identified {
            return "rewrite";
        }
        "sender-rejected"
    }

    proptest! {
        #[test]
        fn decisions_match_an_independent_model(
            raw in proptest::collection::vec(
                (0u8..3, proptest::option::of(proptest::collection::vec((0u8..4, 8u8..=32), 0..4)), any::<bool>(), any::<bool>()),
                0..4),
            host in 0u8..4, low in any::<u8>(), v6 in any::<bool>(), tls in any::<bool>(),
            auth in proptest::option::of(prop_oneof![Just("alice@acme.example"), Just("bob@other.example")]),
            helo in prop_oneof![Just("mx.acme.example"), Just("evil.example")],
            sender in prop_oneof![Just(""), Just("alice@acme.example"), Just("carol@sub.acme.example"), Just("x@other.example")],
        ) {
            let to_net = |(o, len): (u8, u8)| -> IpNet {
                if v6 {
                    IpNet::new(format!("2001:db8::{o}:0").parse().unwrap(), 96 + len).unwrap().trunc()
                } else {
                    IpNet::new(format!("10.{o}.0.0").parse().unwrap(), len).unwrap().trunc()
                }
            };
            let settings: Vec<(u8, Option<Vec<IpNet>>, bool, bool)> = raw
                .iter()
                .map(|(m, r, a, t)| (*m, r.as_ref().map(|r| r.iter().map(|x| to_net(*x)).collect()), *a, *t))
                .collect();
            let cfg = config_with(settings.iter().map(|(m, r, a, t)| SettingConfig {
                name: "acme/s".into(),
                description: String::new(),
                allowed_senders: [AllowedSenders::RegisteredUsers, AllowedSenders::OrganizationDomains, AllowedSenders::AnyAddress][*m as usize],
                ip_ranges: r.as_ref().map(|r| r.iter().map(|n| RangeConfig { name: "acme/r".into(), network: *n }).collect()),
                require_smtp_auth: *a,
                require_tls: *t,
            }).collect());
            let ip: IpAddr = if v6 {
                format!("2001:db8::{host}:{low}").parse().unwrap()
            } else {
                format!("10.{host}.0.{low}").parse().unwrap()
            };
            let client = ClientFacts { ip, tls, auth, helo: Some(helo) };
            let got = match Policy::new(&cfg).decide_mail(&client, sender) {
                MailDecision::Accept { original: None, .. } => "accept",
                MailDecision::Accept { original: Some(_), .. } => "rewrite",
                MailDecision::ClientNotAllowed => "not-allowed",
                MailDecision::TlsRequired => "tls",
                MailDecision::SenderRejected(_) => "sender-rejected",
            };
            prop_assert_eq!(got, model(&settings, ip, tls, auth, helo, sender));
        }
    }
}
