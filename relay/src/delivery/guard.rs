//! Delivery guards (SPEC §3.5): where MX and direct delivery may not go, and when a message
//! is looping.
//!
//! Pure functions, no I/O. [`DestinationGuard`] says whether an address found through MX
//! or direct delivery may be dialled: loopback, private (RFC 1918), CGNAT, link-local,
//! unique-local, multicast, unspecified and broadcast addresses are refused, and so are
//! the configured `deniedNetworks` and `clusterNetworks`, unless the address lies in
//! `allowedInternalNetworks` (which never overrides the two configured lists). An IPv6
//! address that carries an IPv4 one is judged by the IPv4 address too: mapped
//! (`::ffff:10.0.0.1`) and compatible (`::10.0.0.1`) addresses, NAT64's well-known prefix
//! `64:ff9b::/96` (RFC 6052: the IPv4 address is the last 32 bits, and a DNS64 resolver
//! hands these out for every IPv4-only MX, so public ones must pass) and 6to4 `2002::/16`
//! (RFC 3056: bits 16 to 47). The local-use NAT64 prefix `64:ff9b:1::/48` (RFC 8215, where
//! the IPv4 address sits is the operator's choice), Teredo `2001::/32` (a tunnel endpoint)
//! and site-local `fec0::/10` are refused outright. The configured lists are matched
//! against both forms. It also knows this relay's own host name, so an MX host that is
//! this relay is a loop.
//! [`hop_refusal`] counts `Received:` headers: more than the configured number is a loop.
//!
//! The guard does not apply to the hosts a route names (`singleHost`, `multipleHosts`):
//! an operator who routes to an internal smarthost has said so. Which addresses are asked
//! about, and what happens to a refused one, is the delivery attempt's business
//! ([`super::attempt`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::config::DeliveryConfig;

/// Enhanced status of a destination the guard refuses ("unable to route").
pub const STATUS_REFUSED_NETWORK: &str = "5.4.4";
/// Enhanced status of a mail loop ("routing loop detected").
pub const STATUS_LOOP: &str = "5.4.6";

/// A permanent refusal: the recipients bounce with this status and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Enhanced status code, `5.x.x`.
    pub status: String,
    /// What the sender is told (never an internal host's banner or address).
    pub diagnostic: String,
}

/// Where MX and direct delivery may go, and who "this relay" is.
#[derive(Debug, Clone, Default)]
pub struct DestinationGuard {
    denied: Vec<IpNet>,
    allowed: Vec<IpNet>,
    own_hostname: String,
}

impl DestinationGuard {
    /// The guard of a relay called `hostname` with these delivery settings.
    pub fn new(delivery: &DeliveryConfig, hostname: &str) -> Self {
        Self {
            denied: delivery
                .denied_networks
                .iter()
                .chain(delivery.cluster_networks.iter())
                .copied()
                .collect(),
            allowed: delivery.allowed_internal_networks.clone(),
            own_hostname: normalize(hostname),
        }
    }

    /// Whether MX or direct delivery may dial `ip`.
    pub fn may_dial(&self, ip: IpAddr) -> bool {
        let judged = canonical(ip);
        let listed = |nets: &[IpNet]| nets.iter().any(|n| n.contains(&ip) || n.contains(&judged));
        if listed(&self.denied) {
            return false;
        }
        if !is_internal(ip) {
            return true;
        }
        listed(&self.allowed)
    }

    /// Whether `host` (an MX host name) is this relay.
    pub fn is_self(&self, host: &str) -> bool {
        !self.own_hostname.is_empty() && normalize(host) == self.own_hostname
    }

    /// The refusal for a destination whose every address the guard refused.
    pub fn refused_network(domain: &str) -> Refusal {
        Refusal {
            status: STATUS_REFUSED_NETWORK.into(),
            diagnostic: format!(
                "mail for {domain} is not delivered: its mail servers are in networks this relay does not deliver to"
            ),
        }
    }

    /// The refusal for a destination whose best MX host is this relay.
    pub fn loops_back(domain: &str) -> Refusal {
        Refusal {
            status: STATUS_LOOP.into(),
            diagnostic: format!("mail for {domain} loops back to myself"),
        }
    }
}

/// IPv4 addresses carried in IPv6 are judged as the IPv4 address they stand for or lead
/// to: mapped `::ffff:a.b.c.d`, deprecated compatible `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`
/// and 6to4 `2002:aabb:ccdd::/48`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match v6.segments() {
        [0, 0, 0, 0, 0, 0, hi, lo] if hi != 0 => Some(v4(hi, lo)),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(v4(hi, lo)),
        [0x2002, hi, lo, ..] => Some(v4(hi, lo)),
        _ => None,
    }
}

/// The built-in ranges: never a public mail server.
pub fn is_internal(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => is_internal_v6(v6),
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_unspecified()
        || a == 0 // "this network", 0.0.0.0/8
        || ip.is_loopback()
        || ip.is_private()
        || (a == 100 && (b & 0xc0) == 64) // CGNAT, 100.64.0.0/10
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || a >= 240 // reserved, 240.0.0.0/4
}

fn is_internal_v6(ip: Ipv6Addr) -> bool {
    let [first, second, third, ..] = ip.segments();
    ip.is_unspecified()
        || ip.is_loopback()
        || (first & 0xfe00) == 0xfc00 // unique local, fc00::/7
        || (first & 0xffc0) == 0xfe80 // link-local, fe80::/10
        || (first & 0xffc0) == 0xfec0 // site-local, fec0::/10
        || (first, second, third) == (0x64, 0xff9b, 1) // local-use NAT64, 64:ff9b:1::/48
        || (first, second) == (0x2001, 0) // Teredo, 2001::/32
        || ip.is_multicast()
}

/// How many `Received:` header fields the header section of `message` holds.
pub fn received_count(message: &[u8]) -> usize {
    let mut count = 0;
    for line in message.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break; // end of the header section
        }
        let is_received = line.len() >= 9 && line[..9].eq_ignore_ascii_case(b"received:");
        // "Received :" (space before the colon) is obsolete syntax, still a field.
        let obsolete = line.len() >= 8
            && line[..8].eq_ignore_ascii_case(b"received")
            && line[8..]
                .iter()
                .position(|b| !matches!(b, b' ' | b'\t'))
                .is_some_and(|i| line[8 + i] == b':');
        if is_received || obsolete {
            count += 1;
        }
    }
    count
}

/// The loop refusal for a message with more than `max` `Received:` headers.
pub fn hop_refusal(message: &[u8], max: u32) -> Option<Refusal> {
    let hops = received_count(message);
    (hops > max as usize).then(|| Refusal {
        status: STATUS_LOOP.into(),
        diagnostic: format!(
            "mail loop: the message carries {hops} Received: headers (at most {max} allowed)"
        ),
    })
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn built_in_ranges_are_refused_and_public_addresses_pass() {
        let guard = DestinationGuard::new(&DeliveryConfig::default(), "relay.acme.test");
        for internal in [
            "127.0.0.1",
            "127.9.9.9",
            "10.0.0.5",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.254",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fc00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "::10.0.0.1",
        ] {
            assert!(!guard.may_dial(ip(internal)), "{internal} must be refused");
        }
        for public in [
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "2001:db8::1",
            "2a00:1450:4001::1",
            "::ffff:93.184.216.34",
        ] {
            assert!(guard.may_dial(ip(public)), "{public} must pass");
        }
    }

    #[test]
    fn addresses_that_carry_an_ipv4_address_are_judged_by_it_and_site_local_is_refused() {
        let guard = DestinationGuard::new(&DeliveryConfig::default(), "relay.acme.test");
        for internal in [
            // NAT64, well-known prefix (RFC 6052): the IPv4 address is the last 32 bits.
            "64:ff9b::a00:1",
            "64:ff9b::10.0.0.1",
            "64:ff9b::127.0.0.1",
            "64:ff9b::169.254.169.254",
            // NAT64, local-use prefix (RFC 8215): where the IPv4 address sits is the
            // operator's choice, so none of it is dialled.
            "64:ff9b:1::1",
            "64:ff9b:1:ffff::5db8:d822",
            // 6to4 (RFC 3056): the IPv4 address is bits 16 to 47.
            "2002:a00:1::1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            // Teredo (RFC 4380): a tunnel endpoint, never a mail server.
            "2001:0:5db8:d822::1",
            // Site-local (deprecated by RFC 3879, still routed by some networks).
            "fec0::1",
            "feff:ffff::1",
        ] {
            assert!(!guard.may_dial(ip(internal)), "{internal} must be refused");
        }
        for public in [
            "64:ff9b::5db8:d822",
            "64:ff9b::93.184.216.34",
            "2002:5db8:d822::1",
        ] {
            assert!(guard.may_dial(ip(public)), "{public} must pass");
        }
        // The configured lists see the IPv4 address too.
        let cfg = DeliveryConfig {
            denied_networks: vec!["93.184.216.0/24".parse().unwrap()],
            ..DeliveryConfig::default()
        };
        let guard = DestinationGuard::new(&cfg, "relay.acme.test");
        assert!(!guard.may_dial(ip("64:ff9b::93.184.216.34")));
        assert!(!guard.may_dial(ip("2002:5db8:d822::1")));
    }

    #[test]
    fn configured_lists_deny_and_allow_with_deny_winning() {
        let cfg = DeliveryConfig {
            denied_networks: vec!["198.51.100.0/24".parse().unwrap()],
            cluster_networks: vec!["10.96.0.0/12".parse().unwrap()],
            allowed_internal_networks: vec![
                "10.0.0.0/8".parse().unwrap(),
                "127.0.0.0/8".parse().unwrap(),
            ],
            ..DeliveryConfig::default()
        };
        let guard = DestinationGuard::new(&cfg, "relay.acme.test");
        assert!(!guard.may_dial(ip("198.51.100.7")), "deny list");
        assert!(guard.may_dial(ip("10.1.2.3")), "allowed internal network");
        assert!(guard.may_dial(ip("127.0.0.1")), "allowed loopback");
        assert!(
            !guard.may_dial(ip("10.96.0.10")),
            "cluster range wins over the allow list"
        );
        assert!(!guard.may_dial(ip("192.168.0.1")), "not in the allow list");
    }

    #[test]
    fn own_hostname_is_self_in_any_case_and_with_a_trailing_dot() {
        let guard = DestinationGuard::new(&DeliveryConfig::default(), "Relay.Acme.Test");
        assert!(guard.is_self("relay.acme.test."));
        assert!(!guard.is_self("mx.acme.test"));
        assert!(!DestinationGuard::new(&DeliveryConfig::default(), "").is_self(""));
    }

    #[test]
    fn received_headers_are_counted_in_the_header_section_only() {
        let mut msg = String::new();
        for i in 0..3 {
            msg.push_str(&format!("Received: from h{i}\r\n\tby relay; date\r\n"));
        }
        msg.push_str("RECEIVED : obsolete form\r\nX-Received: not counted\r\nSubject: x\r\n");
        msg.push_str("\r\nReceived: in the body, not counted\r\n");
        assert_eq!(received_count(msg.as_bytes()), 4);
        assert_eq!(hop_refusal(msg.as_bytes(), 4), None);
        let refusal = hop_refusal(msg.as_bytes(), 3).unwrap();
        assert_eq!(refusal.status, "5.4.6");
        assert!(refusal.diagnostic.contains("4 Received: headers"));
    }
}
