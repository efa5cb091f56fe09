//! Names and label values the API server accepts, derived from user-chosen names.
//!
//! An Organization's children are named after it, and a route's CA Secret names a volume.
//! The API server checks each kind of name with its own rule: Service names are DNS-1035
//! labels (a letter first, at most 63 characters), volume names DNS-1123 labels, object
//! names DNS-1123 subdomains, label values at most 63 characters. [`child_name`] and
//! [`label_value`] keep the readable name when it is valid and otherwise fall back to a
//! shortened, sanitised name with a hash suffix, so that every input gives a valid name and
//! two inputs never share one. The `is_*` checks are the API server's rules (the mocked API
//! server in the tests applies them too).

use sha2::{Digest, Sha256};

/// Longest DNS label (RFC 1123), and so of a Service name or label value.
pub const MAX_LABEL: usize = 63;
/// Longest DNS-1123 subdomain (the name of most objects).
pub const MAX_SUBDOMAIN: usize = 253;
/// Longest StatefulSet name whose pods can start: each pod carries the label
/// `controller-revision-hash: <name>-<10-character hash>`, a label value (at most 63).
pub const MAX_STATEFUL_SET: usize = 52;

fn alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// A DNS-1123 label: lowercase letters, digits and `-`, alphanumeric at both ends, at most
/// 63 characters (volume names, Organization names).
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_LABEL
        && s.chars().all(|c| alnum(c) || c == '-')
        && s.starts_with(alnum)
        && s.ends_with(alnum)
}

/// A DNS-1035 label: a DNS-1123 label that starts with a letter (Service names).
pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

/// A DNS-1123 subdomain: dot-separated DNS-1123 labels, at most 253 characters (names of
/// ConfigMaps, Deployments, Secrets, PersistentVolumeClaims, ...).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= MAX_SUBDOMAIN && s.split('.').all(is_dns1123_label)
}

/// A label value: empty, or at most 63 characters of alphanumerics, `-`, `_` and `.` with
/// an alphanumeric at both ends.
pub fn is_label_value(s: &str) -> bool {
    let an = |c: char| c.is_ascii_alphanumeric();
    s.is_empty()
        || (s.len() <= MAX_LABEL
            && s.chars().all(|c| an(c) || matches!(c, '-' | '_' | '.'))
            && s.starts_with(an)
            && s.ends_with(an))
}

/// First `n` hex digits of the SHA-256 of `s`.
fn hash(s: &str, n: usize) -> String {
    let digest = hex::encode(Sha256::digest(s.as_bytes()));
    digest[..n].to_string()
}

/// `s` lowercased with every character outside `[a-z0-9-]` replaced by `-`, runs of `-`
/// collapsed, and without leading or trailing `-`.
fn sanitised(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        let c = if alnum(c) { c } else { '-' };
        if !(c == '-' && (out.is_empty() || out.ends_with('-'))) {
            out.push(c);
        }
    }
    out.trim_end_matches('-').to_string()
}

/// The name of a child of `base` (an Organization's or Secret's name): `{prefix}{base}{suffix}`
/// when that is a DNS-1035 label, else `{prefix}{sanitised base, shortened}-{hash}{suffix}`,
/// which always is (given a `prefix` that is empty or starts with a letter, and a `suffix`
/// of at most 40 characters of `[a-z0-9-]`). The hash is over `base`, so distinct bases
/// keep distinct names.
pub fn child_name(prefix: &str, base: &str, suffix: &str) -> String {
    child_name_within(prefix, base, suffix, MAX_LABEL)
}

/// [`child_name`] of at most `max` (at most [`MAX_LABEL`]) characters.
pub fn child_name_within(prefix: &str, base: &str, suffix: &str, max: usize) -> String {
    let max = max.min(MAX_LABEL);
    let plain = format!("{prefix}{base}{suffix}");
    if is_dns1035_label(&plain) && plain.len() <= max {
        return plain;
    }
    let digest = hash(base, 10);
    let mut stem = sanitised(base);
    // A letter first, as DNS-1035 asks.
    if prefix.is_empty() && !stem.starts_with(|c: char| c.is_ascii_lowercase()) {
        stem.insert_str(0, "o-");
    }
    let room = max.saturating_sub(prefix.len() + 1 + digest.len() + suffix.len());
    stem.truncate(room);
    let stem = stem.trim_end_matches('-');
    if stem.is_empty() {
        format!("{prefix}o-{digest}{suffix}")
    } else {
        format!("{prefix}{stem}-{digest}{suffix}")
    }
}

/// `value` when it is a valid label value, else a shortened form with a hash suffix that is.
pub fn label_value(value: &str) -> String {
    if is_label_value(value) {
        return value.to_string();
    }
    let digest = hash(value, 10);
    let keep: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(MAX_LABEL - 1 - digest.len())
        .collect();
    let keep = keep.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if keep.is_empty() {
        digest
    } else {
        format!("{keep}-{digest}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn readable_names_stay_readable() {
        assert_eq!(child_name("", "acme", "-relay"), "acme-relay");
        assert_eq!(child_name("ca-", "partner-ca", ""), "ca-partner-ca");
        assert_eq!(label_value("acme"), "acme");
    }

    #[test]
    fn names_the_api_server_rejects_get_a_hash_suffix() {
        // A dot, a leading digit and a long name: all valid Organization or Secret names,
        // none a valid Service or volume name as such.
        let dotted = child_name("ca-", "partner.example-ca", "");
        assert!(is_dns1035_label(&dotted), "{dotted}");
        assert!(dotted.starts_with("ca-partner-example-ca-"), "{dotted}");
        let digit = child_name("", "1acme", "-relay");
        assert!(
            is_dns1035_label(&digit) && digit.ends_with("-relay"),
            "{digit}"
        );
        let long = "a".repeat(60);
        let named = child_name("", &long, "-relay-config");
        assert!(is_dns1035_label(&named) && named.len() <= 63, "{named}");
        assert_ne!(
            child_name("", &format!("{long}x"), "-relay"),
            child_name("", &format!("{long}y"), "-relay")
        );
        let value = label_value(&"b".repeat(70));
        assert!(is_label_value(&value) && value.len() <= 63, "{value}");
    }

    proptest! {
        #[test]
        fn every_object_name_gives_valid_child_names(
            name in "[a-z0-9]([-a-z0-9.]{0,120}[a-z0-9])?",
            suffix in prop::sample::select(vec!["-relay", "-relay-config", "-relay-spool", ""]),
        ) {
            let n = child_name("", &name, suffix);
            prop_assert!(is_dns1035_label(&n), "{n}");
            let v = child_name("ca-", &name, "");
            prop_assert!(is_dns1123_label(&v), "{v}");
            let l = label_value(&name);
            prop_assert!(is_label_value(&l), "{l}");
        }
    }
}
