//! `Organization.spec.dkim`: the API refuses signing keys whose domain is not a domain
//! name, whose selector is not one DNS label, whose header list leaves out From, and a
//! domain listed twice. The offline check (`relayctl validate`) runs the same CEL rules.

use crds::manifest::validate_object;
use crds::{DkimAlgorithm, Organization};

fn with_dkim(dkim: &str) -> Organization {
    yaml_serde::from_str(&format!(
        r#"
apiVersion: smtprelay.dev/v1alpha1
kind: Organization
metadata: {{name: acme, namespace: acme}}
spec:
  domains: [acme.example]
  licenses: 1
  dkim: {dkim}
"#
    ))
    .unwrap()
}

fn refused_with(dkim: &str, message: &str) {
    let errors = validate_object(&with_dkim(dkim)).unwrap_err();
    assert!(
        errors.iter().any(|e| e.contains(message)),
        "{dkim}: {errors:?}"
    );
}

#[test]
fn well_formed_keys_are_accepted_and_rsa_is_the_default_algorithm() {
    for ok in [
        "[{domain: acme.example, selector: s1, secretRef: {name: dkim-acme}}]",
        "[{domain: acme.example, selector: mail-2025, secretRef: {name: a}, algorithm: ed25519-sha256, headers: [from, Subject]},
          {domain: eu.acme.example, selector: S2, secretRef: {name: b}, algorithm: rsa-sha256, headers: [To, From]}]",
    ] {
        assert_eq!(validate_object(&with_dkim(ok)), Ok(()), "{ok}");
    }
    let org = with_dkim("[{domain: acme.example, selector: s1, secretRef: {name: k}}]");
    assert_eq!(org.spec.dkim[0].algorithm, DkimAlgorithm::RsaSha256);
    assert_eq!(org.spec.dkim[0].headers, None);
}

#[test]
fn a_domain_must_be_a_lower_case_domain_name() {
    for bad in [
        "acme",
        "*.acme.example",
        "Acme.example",
        "acme..example",
        "acme.example.",
    ] {
        refused_with(
            &format!("[{{domain: '{bad}', selector: s1, secretRef: {{name: k}}}}]"),
            "dkim.domain must be a lower-case domain name",
        );
    }
}

#[test]
fn a_selector_must_be_one_dns_label() {
    for bad in ["s1.eu", "", "-s1", "s_1"] {
        refused_with(
            &format!("[{{domain: acme.example, selector: '{bad}', secretRef: {{name: k}}}}]"),
            "dkim.selector must be a single DNS label",
        );
    }
}

#[test]
fn headers_must_include_from_and_be_field_names() {
    refused_with(
        "[{domain: acme.example, selector: s1, secretRef: {name: k}, headers: [To, Subject]}]",
        "dkim.headers must include From",
    );
    refused_with(
        "[{domain: acme.example, selector: s1, secretRef: {name: k}, headers: []}]",
        "dkim.headers must include From",
    );
    refused_with(
        "[{domain: acme.example, selector: s1, secretRef: {name: k}, headers: [From, 'Subject:']}]",
        "every entry of dkim.headers must be a header field name",
    );
}

#[test]
fn a_domain_listed_twice_is_refused() {
    refused_with(
        "[{domain: acme.example, selector: s1, secretRef: {name: a}},
          {domain: acme.example, selector: s2, secretRef: {name: b}}]",
        "every dkim domain must be listed once",
    );
}

#[test]
fn an_unknown_algorithm_or_field_is_refused() {
    let bad: Result<Organization, _> = yaml_serde::from_str(
        "apiVersion: smtprelay.dev/v1alpha1\nkind: Organization\nmetadata: {name: acme}\nspec:\n  domains: [acme.example]\n  licenses: 1\n  dkim: [{domain: acme.example, selector: s1, secretRef: {name: k}, algorithm: rsa-sha1}]\n",
    );
    assert!(bad.is_err());
    let bad: Result<Organization, _> = yaml_serde::from_str(
        "apiVersion: smtprelay.dev/v1alpha1\nkind: Organization\nmetadata: {name: acme}\nspec:\n  domains: [acme.example]\n  licenses: 1\n  dkim: [{domain: acme.example, selector: s1, secretRef: {name: k}, key: x}]\n",
    );
    assert!(bad.is_err());
}
