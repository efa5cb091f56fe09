//! The CRD YAML committed under `crds/yaml/` is exactly what the types generate, parses back
//! as `apiextensions.k8s.io/v1` CustomResourceDefinitions and is a structural schema.

use std::path::Path;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Deserialize;

const COMMITTED: &str = "yaml/smtprelay.dev.yaml";
const REGENERATE: &str =
    "cargo run -p operator --bin relayctl -- crds > crds/yaml/smtprelay.dev.yaml";

#[test]
fn committed_crd_yaml_matches_the_types() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(COMMITTED);
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = crds::crds_yaml().unwrap();
    assert!(
        committed == generated,
        "crds/{COMMITTED} is out of date with the Rust types. Regenerate it with:\n    {REGENERATE}"
    );
}

fn parsed() -> Vec<CustomResourceDefinition> {
    let yaml = crds::crds_yaml().unwrap();
    yaml_serde::Deserializer::from_str(&yaml)
        .map(|doc| CustomResourceDefinition::deserialize(doc).unwrap())
        .collect()
}

#[test]
fn crds_parse_back_with_names_scope_subresources_and_columns() {
    let crds = parsed();
    let names: Vec<_> = crds
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "organizations.smtprelay.dev",
            "smtprelaysettings.smtprelay.dev",
            "ipallowranges.smtprelay.dev",
            "mailroutes.smtprelay.dev",
            "relayexpectations.smtprelay.dev"
        ]
    );
    for crd in &crds {
        // RelayExpectation documents are tests kept beside the manifests: no controller
        // writes a status for them.
        let has_status = crd.spec.names.kind != "RelayExpectation";
        assert_eq!(crd.spec.group, "smtprelay.dev");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert!(
            crd.spec
                .names
                .short_names
                .as_ref()
                .is_some_and(|s| !s.is_empty())
        );
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(v.served && v.storage);
        assert_eq!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            has_status,
            "status subresource of {}",
            crd.spec.names.kind
        );
        assert!(
            v.additional_printer_columns
                .as_ref()
                .is_some_and(|c| c.len() >= if has_status { 2 } else { 1 })
        );
    }
}

#[test]
fn every_rule_of_the_spec_is_a_cel_rule_in_the_schema() {
    let yaml = crds::crds_yaml().unwrap();
    for needle in [
        "self == 25 || self == 587 || self == 465 || (self >= 1024 && self <= 65535)",
        "(has(self.tls) && has(self.tls.implicit) && self.tls.implicit)",
        "!has(self.auth) || !has(self.tls)",
        "has(self.singleHost) != has(self.multipleHosts)",
        "self.primary.map(h, h.loadPercent).sum() == 100",
        "isIP(self) || isCIDR(self)",
        "cidr(self) == cidr(self).masked()",
        "!self.authentication.requireSmtpAuth || self.encryption.requireTls",
        "self.authentication.ipAllowRanges.enabled || self.authentication.requireSmtpAuth",
        "self.trim() != ''",
        "self >= 1",
    ] {
        assert!(
            yaml.contains(needle),
            "rule missing from the CRDs: {needle}"
        );
    }
}

/// Checks the rules of a structural schema (Kubernetes "Specifying a structural schema"):
/// every node has a type (unless it preserves unknown fields or is int-or-string), no
/// `$ref`, and `properties` and `additionalProperties` never on the same node; value
/// validations inside anyOf/allOf/oneOf/not carry no types, defaults or descriptions.
fn check_structural(path: &str, node: &serde_json::Value, errors: &mut Vec<String>) {
    let Some(obj) = node.as_object() else { return };
    let preserves =
        obj.get("x-kubernetes-preserve-unknown-fields") == Some(&serde_json::Value::Bool(true));
    let int_or_string =
        obj.get("x-kubernetes-int-or-string") == Some(&serde_json::Value::Bool(true));
    if !obj.contains_key("type") && !preserves && !int_or_string {
        errors.push(format!("{path}: no type"));
    }
    if obj.contains_key("$ref") {
        errors.push(format!("{path}: $ref"));
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        errors.push(format!(
            "{path}: properties together with additionalProperties"
        ));
    }
    for junction in ["anyOf", "allOf", "oneOf"] {
        if let Some(branches) = obj.get(junction).and_then(|b| b.as_array()) {
            for b in branches {
                for forbidden in ["type", "default", "description", "nullable"] {
                    if b.get(forbidden).is_some() {
                        errors.push(format!("{path}.{junction}: {forbidden} inside a junction"));
                    }
                }
            }
        }
    }
    if let Some(props) = obj.get("properties").and_then(|p| p.as_object()) {
        for (k, v) in props {
            check_structural(&format!("{path}.{k}"), v, errors);
        }
    }
    if let Some(items) = obj.get("items") {
        check_structural(&format!("{path}[]"), items, errors);
    }
    if let Some(extra) = obj.get("additionalProperties").filter(|a| a.is_object()) {
        check_structural(&format!("{path}{{}}"), extra, errors);
    }
}

#[test]
fn schemas_are_structural() {
    for crd in parsed() {
        let schema = crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap();
        let value = serde_json::to_value(schema).unwrap();
        let mut errors = Vec::new();
        check_structural(&crd.spec.names.kind, &value, &mut errors);
        assert!(
            errors.is_empty(),
            "{} is not structural:\n{}",
            crd.spec.names.kind,
            errors.join("\n")
        );
    }
}
