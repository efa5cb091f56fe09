//! `Organization.spec.relay.proxyProtocol`: the API refuses trusted proxies that are not
//! addresses or networks, before any relay sees them.

use crds::Organization;
use crds::manifest::validate_object;

fn with_proxy(proxy: &str) -> Organization {
    yaml_serde::from_str(&format!(
        r#"
apiVersion: smtprelay.dev/v1alpha1
kind: Organization
metadata: {{name: acme, namespace: acme}}
spec:
  domains: [acme.example]
  licenses: 1
  relay: {{proxyProtocol: {proxy}}}
"#
    ))
    .unwrap()
}

fn refused_with(proxy: &str, message: &str) {
    let errors = validate_object(&with_proxy(proxy)).unwrap_err();
    assert!(
        errors.iter().any(|e| e.contains(message)),
        "{proxy}: {errors:?}"
    );
}

#[test]
fn addresses_and_networks_of_either_family_are_trusted_proxies() {
    for ok in [
        "{trustedProxies: [10.0.0.0/8]}",
        "{trustedProxies: [10.1.2.3, '2001:db8::/64', '2001:db8::7'], required: true}",
    ] {
        assert_eq!(validate_object(&with_proxy(ok)), Ok(()), "{ok}");
    }
}

#[test]
fn anything_else_is_refused_with_a_message_saying_what_to_write() {
    refused_with(
        "{trustedProxies: [lb.example.com]}",
        "every entry of proxyProtocol.trustedProxies must be an IPv4 or IPv6 address or CIDR",
    );
    refused_with(
        "{trustedProxies: [10.0.0.0/33]}",
        "every entry of proxyProtocol.trustedProxies must be an IPv4 or IPv6 address or CIDR",
    );
    refused_with(
        "{trustedProxies: [10.0.0.1/8]}",
        "has host bits set below its prefix",
    );
    refused_with(
        "{trustedProxies: [], required: true}",
        "proxyProtocol.trustedProxies must list at least one",
    );
}

#[test]
fn an_unknown_field_is_refused() {
    let parsed: Result<Organization, _> = yaml_serde::from_str(
        r#"
apiVersion: smtprelay.dev/v1alpha1
kind: Organization
metadata: {name: acme, namespace: acme}
spec:
  domains: [acme.example]
  licenses: 1
  relay: {proxyProtocol: {trustedProxies: [10.0.0.0/8], trusted: [10.0.0.0/8]}}
"#,
    );
    assert!(parsed.is_err());
}
