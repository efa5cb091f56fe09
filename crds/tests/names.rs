//! Names the API server would refuse further down are refused by the CRD itself, so that
//! `kubectl apply` and `relayctl validate` say so before the operator meets them.

use crds::Organization;
use crds::manifest::validate_object;

fn org(name: &str, tls_secret: &str) -> Organization {
    yaml_serde::from_str(&format!(
        r#"
apiVersion: smtprelay.dev/v1alpha1
kind: Organization
metadata: {{name: "{name}", namespace: acme}}
spec:
  domains: [acme.example]
  licenses: 1
  relay: {{tlsSecretRef: {{name: "{tls_secret}"}}}}
"#
    ))
    .unwrap()
}

#[test]
fn organization_names_are_dns_labels() {
    assert_eq!(validate_object(&org("acme", "relay-tls")), Ok(()));
    assert_eq!(validate_object(&org("1acme", "relay-tls")), Ok(()));
    for bad in ["acme.example", &"a".repeat(64), "Acme"] {
        let errors = validate_object(&org(bad, "relay-tls")).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.contains("an Organization's name must be a DNS label")),
            "{bad}: {errors:?}"
        );
    }
}

#[test]
fn secret_references_are_valid_secret_names() {
    assert_eq!(validate_object(&org("acme", "partner.example-ca")), Ok(()));
    for bad in ["Relay_TLS", "-tls", &"s".repeat(254)] {
        let errors = validate_object(&org("acme", bad)).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.contains("secret name must be a valid Secret name")),
            "{bad}: {errors:?}"
        );
    }
}

fn with_store(store: &str) -> Organization {
    yaml_serde::from_str(&format!(
        r#"
apiVersion: smtprelay.dev/v1alpha1
kind: Organization
metadata: {{name: acme, namespace: acme}}
spec:
  domains: [acme.example]
  licenses: 1
  relay: {{replicas: 2, limitStore: {store}}}
"#
    ))
    .unwrap()
}

#[test]
fn a_redis_password_comes_from_a_secret_never_from_the_url() {
    let ok = "{type: Redis, url: 'redis://redis:6379/0', passwordSecretRef: {name: redis-auth}}";
    assert_eq!(validate_object(&with_store(ok)), Ok(()));
    let in_url = "{type: Redis, url: 'redis://:hunter2@redis:6379/0'}";
    let errors = validate_object(&with_store(in_url)).unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("limitStore.url must not carry credentials")),
        "{errors:?}"
    );
    let memory = "{type: Memory, passwordSecretRef: {name: redis-auth}}";
    let errors = validate_object(&with_store(memory)).unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("passwordSecretRef is only for type Redis")),
        "{errors:?}"
    );
}
