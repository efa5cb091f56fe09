//! International domain names (RFC 5890, UTS #46): every domain the relay compares, routes
//! or counts on is an A-label, so `bücher.example`, `BÜCHER.example` and
//! `xn--bcher-kva.example` are one domain to routes, organization domains and limits.
//!
//! The envelope keeps a recipient's local part exactly as the client sent it (UTF-8 when
//! it declared SMTPUTF8) and its domain as an A-label: an address whose local part is ASCII
//! is then plain ASCII, which any downstream takes with or without SMTPUTF8 (RFC 6531 §3.2
//! allows this conversion of the domain part).
//!
//! Pure functions over strings; the UTS #46 processing is the `idna` crate's. Not here:
//! address syntax (that is `smtp::command`), when SMTPUTF8 is needed downstream (that is
//! `delivery::client`).

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};

/// The A-label form of a domain name, lower-cased, without a trailing dot; `None` when the
/// name is not a valid IDNA domain (bad Punycode, disallowed code points, a label over 63
/// octets once encoded, ...). ASCII names pass through lower-cased when valid.
pub fn domain_to_ascii(domain: &str) -> Option<String> {
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    if domain.is_empty() {
        return None;
    }
    Uts46::new()
        .to_ascii(
            domain.as_bytes(),
            AsciiDenyList::STD3,
            Hyphens::CheckFirstLast,
            DnsLength::Verify,
        )
        .ok()
        .map(|d| d.into_owned())
}

/// `address` with its domain as an A-label and its local part unchanged; an address
/// literal (`[192.0.2.1]`), the null path `""` and an address without `@` are returned as
/// they are. `None` when the domain is not a valid IDNA domain.
pub fn address_to_ascii_domain(address: &str) -> Option<String> {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return Some(address.to_string());
    };
    if domain.starts_with('[') {
        return Some(address.to_string());
    }
    Some(format!("{local}@{}", domain_to_ascii(domain)?))
}

/// A domain for comparison: its A-label when it has one, else lower-cased as it is (so a
/// configured name that is not a valid IDN still matches itself and nothing else).
pub fn comparable_domain(domain: &str) -> String {
    domain_to_ascii(domain).unwrap_or_else(|| domain.trim_end_matches('.').to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u_labels_become_a_labels_and_ascii_is_lower_cased() {
        assert_eq!(
            domain_to_ascii("bücher.example").as_deref(),
            Some("xn--bcher-kva.example")
        );
        assert_eq!(
            domain_to_ascii("BÜCHER.Example.").as_deref(),
            Some("xn--bcher-kva.example")
        );
        assert_eq!(
            domain_to_ascii("xn--bcher-kva.example").as_deref(),
            Some("xn--bcher-kva.example")
        );
        assert_eq!(
            domain_to_ascii("Dest.EXAMPLE").as_deref(),
            Some("dest.example")
        );
        assert_eq!(
            domain_to_ascii("ab--cd.example").as_deref(),
            Some("ab--cd.example")
        );
    }

    #[test]
    fn invalid_idn_domains_are_refused() {
        for bad in [
            "xn--ls8h-.example",                    // Punycode that does not decode
            "\u{301}bc.example",                    // a label starting with a combining mark
            "xn--a.example",                        // an A-label of nothing but ASCII
            &format!("{}.example", "ü".repeat(60)), // over 63 octets once encoded
            "",
        ] {
            assert_eq!(domain_to_ascii(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn addresses_keep_their_local_part() {
        assert_eq!(
            address_to_ascii_domain("Jörg.X@Bücher.example").as_deref(),
            Some("Jörg.X@xn--bcher-kva.example")
        );
        assert_eq!(
            address_to_ascii_domain("\"a@b\"@bücher.example").as_deref(),
            Some("\"a@b\"@xn--bcher-kva.example")
        );
        assert_eq!(address_to_ascii_domain("").as_deref(), Some(""));
        assert_eq!(
            address_to_ascii_domain("u@[192.0.2.1]").as_deref(),
            Some("u@[192.0.2.1]")
        );
        assert_eq!(address_to_ascii_domain("u@\u{301}bc.example"), None);
    }

    #[test]
    fn comparable_domains_fall_back_to_lower_case() {
        assert_eq!(comparable_domain("Bücher.Example"), "xn--bcher-kva.example");
        assert_eq!(comparable_domain("\u{301}BC.example"), "\u{301}bc.example");
    }
}
