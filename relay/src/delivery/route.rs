//! Route choice: which [`RouteConfig`] carries mail for a recipient (SPEC §2.4, §3.5).
//!
//! Pure functions over the configured routes. Precedence, per recipient:
//!
//! 1. the most specific `recipientDomains` match (an exact domain beats any wildcard; a
//!    longer `*.` wildcard beats a shorter one);
//! 2. else the most specific `senderDomains` match of the envelope sender's domain, by the
//!    same rule (a null sender matches none);
//! 3. else the `default` route;
//! 4. else direct delivery to the recipient domain's MX hosts.
//!
//! [`choose_route`] states the rule over the route list; [`RouteTable`] is the same rule
//! compiled into hash maps once per config, so a choice costs a few lookups however many
//! routes there are. Domains and patterns are compared as A-labels ([`crate::idn`]),
//! case-insensitively: a route written for `bücher.example` or `xn--bcher-kva.example`
//! carries mail for either form. This module does not know about hosts, TLS or sockets.

use std::collections::HashMap;

use crate::config::{HostConfig, RouteConfig, RouteHosts, RouteMatcher, RouteTlsConfig};
use crate::idn;

use crate::envelope::domain_of;

/// Where one recipient's mail goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteChoice {
    /// A configured route, by its index in the route list.
    Configured(usize),
    /// No route matched and there is no default: the MX hosts of this domain.
    DirectMx(String),
}

/// How well a route matches; larger wins. Any recipient match beats any sender match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Specificity {
    Default,
    SenderWildcard(usize),
    SenderExact,
    Wildcard(usize),
    Exact,
}

impl Specificity {
    fn of_sender(self) -> Self {
        match self {
            Specificity::Wildcard(n) => Specificity::SenderWildcard(n),
            Specificity::Exact => Specificity::SenderExact,
            other => other,
        }
    }
}

/// A route pattern for comparison: `*.` and the A-label of the rest.
fn comparable_pattern(pattern: &str) -> String {
    match pattern.strip_prefix("*.") {
        Some(suffix) => format!("*.{}", idn::comparable_domain(suffix)),
        None => idn::comparable_domain(pattern),
    }
}

fn pattern_specificity(pattern: &str, domain: &str) -> Option<Specificity> {
    let pattern = comparable_pattern(pattern);
    if let Some(suffix) = pattern.strip_prefix("*.") {
        let matches = domain.len() > suffix.len()
            && domain.ends_with(suffix)
            && domain.as_bytes()[domain.len() - suffix.len() - 1] == b'.';
        return matches.then_some(Specificity::Wildcard(suffix.len()));
    }
    (pattern == domain).then_some(Specificity::Exact)
}

/// Chooses the route for a recipient domain (U-label or A-label, any case), for mail
/// whose sender matches no `senderDomains` route.
pub fn choose_route(routes: &[RouteConfig], domain: &str) -> RouteChoice {
    choose_route_for(routes, None, domain)
}

/// Chooses the route for a recipient domain of mail from `sender_domain` (`None`: the
/// null sender, or a sender without a domain).
pub fn choose_route_for(
    routes: &[RouteConfig],
    sender_domain: Option<&str>,
    domain: &str,
) -> RouteChoice {
    let domain = idn::comparable_domain(domain);
    let sender = sender_domain.map(idn::comparable_domain);
    let mut best: Option<(Specificity, usize)> = None;
    for (index, route) in routes.iter().enumerate() {
        let found = match &route.matcher {
            RouteMatcher::Default => Some(Specificity::Default),
            RouteMatcher::Domains(patterns) => patterns
                .iter()
                .filter_map(|p| pattern_specificity(p, &domain))
                .max(),
            RouteMatcher::SenderDomains(patterns) => sender.as_ref().and_then(|s| {
                patterns
                    .iter()
                    .filter_map(|p| pattern_specificity(p, s))
                    .max()
                    .map(Specificity::of_sender)
            }),
        };
        if let Some(spec) = found {
            // Ties keep the first route in the (render-sorted) list, so choice is stable.
            if best.is_none_or(|(b, _)| spec > b) {
                best = Some((spec, index));
            }
        }
    }
    match best {
        Some((_, index)) => RouteChoice::Configured(index),
        None => RouteChoice::DirectMx(domain),
    }
}

/// The routes' domain patterns in hash maps: [`RouteTable::choose`] gives the same answer
/// as [`choose_route`] over the same list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    /// Exact domain → first route listing it.
    exact: HashMap<String, usize>,
    /// Suffix of a `*.suffix` pattern → first route listing it.
    wildcard: HashMap<String, usize>,
    /// The same for `senderDomains` routes.
    sender_exact: HashMap<String, usize>,
    sender_wildcard: HashMap<String, usize>,
    /// First `default` route.
    default: Option<usize>,
}

impl RouteTable {
    /// Compiles the route list (indexes refer to it).
    pub fn new(routes: &[RouteConfig]) -> Self {
        let mut table = RouteTable::default();
        for (index, route) in routes.iter().enumerate() {
            match &route.matcher {
                RouteMatcher::Default => {
                    table.default.get_or_insert(index);
                }
                RouteMatcher::Domains(patterns) => {
                    Self::insert(&mut table.exact, &mut table.wildcard, patterns, index)
                }
                RouteMatcher::SenderDomains(patterns) => Self::insert(
                    &mut table.sender_exact,
                    &mut table.sender_wildcard,
                    patterns,
                    index,
                ),
            }
        }
        table
    }

    fn insert(
        exact: &mut HashMap<String, usize>,
        wildcard: &mut HashMap<String, usize>,
        patterns: &[String],
        index: usize,
    ) {
        for pattern in patterns {
            let pattern = comparable_pattern(pattern);
            // Ties keep the first route in the list, as `choose_route` does.
            match pattern.strip_prefix("*.") {
                Some(suffix) => wildcard.entry(suffix.to_string()),
                None => exact.entry(pattern),
            }
            .or_insert(index);
        }
    }

    /// The most specific match of `domain` (already comparable) in one pair of maps.
    fn lookup(
        exact: &HashMap<String, usize>,
        wildcard: &HashMap<String, usize>,
        domain: &str,
    ) -> Option<usize> {
        if let Some(&index) = exact.get(domain) {
            return Some(index);
        }
        // The text after each dot, longest first: the most specific wildcard wins.
        let mut rest = domain;
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            if let Some(&index) = wildcard.get(rest) {
                return Some(index);
            }
        }
        None
    }

    /// Chooses the route for a recipient domain (U-label or A-label, any case), for mail
    /// whose sender matches no `senderDomains` route.
    pub fn choose(&self, domain: &str) -> RouteChoice {
        self.choose_for(None, domain)
    }

    /// Chooses the route for a recipient domain of mail from `sender_domain`; the same
    /// answer as [`choose_route_for`].
    pub fn choose_for(&self, sender_domain: Option<&str>, domain: &str) -> RouteChoice {
        let domain = idn::comparable_domain(domain);
        if let Some(index) = Self::lookup(&self.exact, &self.wildcard, &domain) {
            return RouteChoice::Configured(index);
        }
        if let Some(sender) = sender_domain
            && (!self.sender_exact.is_empty() || !self.sender_wildcard.is_empty())
            && let Some(index) = Self::lookup(
                &self.sender_exact,
                &self.sender_wildcard,
                &idn::comparable_domain(sender),
            )
        {
            return RouteChoice::Configured(index);
        }
        match self.default {
            Some(index) => RouteChoice::Configured(index),
            None => RouteChoice::DirectMx(domain),
        }
    }
}

/// Groups the recipients of mail from `sender` by route, keeping the order in which each
/// route first appears. A recipient without a domain goes to a direct route for the empty
/// domain, which fails delivery permanently later with a clear message.
pub fn group_by_route(
    routes: &[RouteConfig],
    sender: &str,
    recipients: &[String],
) -> Vec<(RouteChoice, Vec<String>)> {
    group_by_table(&RouteTable::new(routes), sender, recipients)
}

/// [`group_by_route`] with the table compiled already.
pub fn group_by_table(
    table: &RouteTable,
    sender: &str,
    recipients: &[String],
) -> Vec<(RouteChoice, Vec<String>)> {
    let sender_domain = domain_of(sender);
    let mut groups: Vec<(RouteChoice, Vec<String>)> = Vec::new();
    for rcpt in recipients {
        let choice = match domain_of(rcpt) {
            Some(domain) => table.choose_for(sender_domain.as_deref(), &domain),
            None => RouteChoice::DirectMx(String::new()),
        };
        match groups.iter_mut().find(|(c, _)| *c == choice) {
            Some((_, list)) => list.push(rcpt.clone()),
            None => groups.push((choice, vec![rcpt.clone()])),
        }
    }
    groups
}

/// The route that direct MX delivery to `domain` behaves as: MX lookup of the domain on
/// port 25 with opportunistic, unauthenticated STARTTLS (what public MTAs do).
pub fn direct_route(domain: &str) -> RouteConfig {
    RouteConfig {
        rate_limit: None,
        name: "direct".to_string(),
        description: format!("direct delivery to the MX hosts of {domain}"),
        matcher: RouteMatcher::Default,
        hosts: RouteHosts::Single(HostConfig {
            host: domain.to_string(),
            port: 25,
        }),
        mx_lookup: true,
        tls: RouteTlsConfig {
            require_tls: false,
            require_ca_signed: false,
            validate_hostname: false,
            extra_ca_file: None,
            implicit: false,
        },
        auth: None,
    }
}

/// The route configuration a choice stands for.
pub fn resolve_choice(routes: &[RouteConfig], choice: &RouteChoice) -> RouteConfig {
    match choice {
        RouteChoice::Configured(index) => match routes.get(*index) {
            Some(route) => route.clone(),
            None => direct_route(""),
        },
        RouteChoice::DirectMx(domain) => direct_route(domain),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, matcher: RouteMatcher) -> RouteConfig {
        let mut r = direct_route("x");
        r.name = name.to_string();
        r.matcher = matcher;
        r
    }

    fn domains(list: &[&str]) -> RouteMatcher {
        RouteMatcher::Domains(list.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn exact_beats_wildcard_and_longer_wildcard_beats_shorter() {
        let routes = vec![
            route("wide", domains(&["*.example.com"])),
            route("narrow", domains(&["*.eu.example.com"])),
            route("exact", domains(&["mail.eu.example.com"])),
            route("default", RouteMatcher::Default),
        ];
        assert_eq!(
            choose_route(&routes, "mail.eu.example.com"),
            RouteChoice::Configured(2)
        );
        assert_eq!(
            choose_route(&routes, "x.eu.example.com"),
            RouteChoice::Configured(1)
        );
        assert_eq!(
            choose_route(&routes, "x.example.com"),
            RouteChoice::Configured(0)
        );
        // A wildcard does not match its own apex.
        assert_eq!(
            choose_route(&routes, "example.com"),
            RouteChoice::Configured(3)
        );
        assert_eq!(
            choose_route(&routes, "other.org"),
            RouteChoice::Configured(3)
        );
    }

    fn senders(list: &[&str]) -> RouteMatcher {
        RouteMatcher::SenderDomains(list.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn recipient_routes_beat_sender_routes_which_beat_the_default() {
        let routes = vec![
            route("billing", senders(&["billing.acme.example"])),
            route("acme", senders(&["*.acme.example", "acme.example"])),
            route("partner", domains(&["partner.example"])),
            route("default", RouteMatcher::Default),
        ];
        let table = RouteTable::new(&routes);
        for (sender, rcpt, want) in [
            // A recipient route wins whoever sends.
            (Some("billing.acme.example"), "partner.example", 2),
            // Then the most specific sender route.
            (Some("billing.acme.example"), "other.org", 0),
            (Some("eu.acme.example"), "other.org", 1),
            (Some("ACME.example"), "other.org", 1),
            // Then the default; the null sender matches no sender route.
            (Some("elsewhere.example"), "other.org", 3),
            (None, "other.org", 3),
        ] {
            assert_eq!(
                choose_route_for(&routes, sender, rcpt),
                RouteChoice::Configured(want),
                "{sender:?} -> {rcpt}"
            );
            assert_eq!(
                table.choose_for(sender, rcpt),
                RouteChoice::Configured(want)
            );
        }
        // Without a default, unmatched mail goes to the recipient's MX hosts.
        let no_default = &routes[..3];
        assert_eq!(
            RouteTable::new(no_default).choose_for(Some("elsewhere.example"), "Other.ORG"),
            RouteChoice::DirectMx("other.org".into())
        );
        // One message, recipients split by the rule.
        let groups = group_by_route(
            &routes,
            "invoices@billing.acme.example",
            &["a@partner.example".to_string(), "b@other.org".to_string()],
        );
        assert_eq!(
            groups,
            vec![
                (
                    RouteChoice::Configured(2),
                    vec!["a@partner.example".to_string()]
                ),
                (RouteChoice::Configured(0), vec!["b@other.org".to_string()]),
            ]
        );
    }

    #[test]
    fn no_match_and_no_default_means_direct_mx() {
        let routes = vec![route("a", domains(&["a.test"]))];
        assert_eq!(
            choose_route(&routes, "B.Test"),
            RouteChoice::DirectMx("b.test".to_string())
        );
    }

    #[test]
    fn the_table_chooses_as_the_list_does() {
        let routes = vec![
            route("a", domains(&["Example.COM.", "*.example.com"])),
            route("b", domains(&["*.eu.example.com", "example.com"])),
            route(
                "c",
                domains(&["*.eu.example.com", "*..b", "mail.eu.example.com"]),
            ),
            route("d", RouteMatcher::Default),
            route("e", RouteMatcher::Default),
        ];
        let probes = [
            "example.com",
            "EXAMPLE.com.",
            "x.example.com",
            "x.eu.example.com",
            "mail.eu.example.com",
            "eu.example.com",
            "a..b",
            ".b",
            "b",
            "other.org",
            "",
        ];
        for with_default in [true, false] {
            let list = if with_default {
                routes.clone()
            } else {
                routes[..3].to_vec()
            };
            let table = RouteTable::new(&list);
            for d in probes {
                assert_eq!(table.choose(d), choose_route(&list, d), "{d:?}");
            }
        }
        assert_eq!(
            RouteTable::new(&routes).choose("x.eu.example.com"),
            RouteChoice::Configured(1),
            "the longer wildcard, first route listing it"
        );
    }

    #[test]
    fn idn_domains_and_patterns_compare_as_a_labels() {
        let routes = vec![
            route("ascii", domains(&["xn--bcher-kva.example"])),
            route("unicode", domains(&["*.MÜNCHEN.example"])),
        ];
        let table = RouteTable::new(&routes);
        for (domain, want) in [
            ("bücher.example", RouteChoice::Configured(0)),
            ("BÜCHER.example.", RouteChoice::Configured(0)),
            ("xn--bcher-kva.example", RouteChoice::Configured(0)),
            ("mail.münchen.example", RouteChoice::Configured(1)),
            ("mail.xn--mnchen-3ya.example", RouteChoice::Configured(1)),
            (
                "bucher.example",
                RouteChoice::DirectMx("bucher.example".to_string()),
            ),
            (
                "mail.bücher.example",
                RouteChoice::DirectMx("mail.xn--bcher-kva.example".to_string()),
            ),
        ] {
            assert_eq!(table.choose(domain), want, "{domain}");
            assert_eq!(choose_route(&routes, domain), want, "{domain}");
        }
        let rcpts = vec![
            "a@bücher.example".to_string(),
            "b@xn--bcher-kva.example".to_string(),
        ];
        let groups = group_by_route(&routes, "app@acme.example", &rcpts);
        assert_eq!(groups, vec![(RouteChoice::Configured(0), rcpts)]);
    }

    #[test]
    fn recipients_sharing_a_route_are_grouped() {
        let routes = vec![route("a", domains(&["a.test", "*.b.test"]))];
        let rcpts: Vec<String> = ["x@a.test", "y@c.test", "z@q.b.test", "w@c.test"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let groups = group_by_route(&routes, "app@acme.example", &rcpts);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].0, RouteChoice::Configured(0));
        assert_eq!(groups[0].1, vec!["x@a.test", "z@q.b.test"]);
        assert_eq!(groups[1].0, RouteChoice::DirectMx("c.test".to_string()));
        assert_eq!(groups[1].1, vec!["y@c.test", "w@c.test"]);
    }
}
