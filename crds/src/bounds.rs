//! Size bounds of the API: how many entries a list may hold and how long a string may be.
//!
//! The API server estimates the cost of every CEL rule from these bounds and refuses a
//! CRD whose rules could cost too much ([`crate::cel_cost`]); without them it assumes the
//! 3 MiB request limit. Each bound is chosen far above real use and stated in the field's
//! description. This module owns:
//! - the bounds themselves (the constants below, used by the schema attributes of the
//!   types and by the Rust checks, so that both say the same number);
//! - [`item_rule`], which puts a CEL rule on the items of a list field (a rule per entry
//!   is evaluated once per entry: its cost stays that of one entry);
//! - [`bound_organization_name`], the `metadata.name` bound of the Organization CRD;
//! - [`Violations`], the Rust mirror of the bounds, worded like the API server's schema
//!   validation (`spec.users: Too many: 10001: must have at most 10000 items`), which the
//!   kinds' `bound_violations()` use. `tests/bounds.rs` proves that the mirror and the
//!   schema (as [`crate::structural`] applies it offline) refuse the same objects with the
//!   same messages.

use serde_json::{Value, json};

use crate::structural::{FieldError, pattern_mismatch, too_long, too_many};

/// Organization names are DNS labels: they name the relay's Service and label its pods.
pub const ORGANIZATION_NAME_MAX: usize = 63;
/// A DNS name (RFC 1035): mail domains, host names, Secret names.
pub const DNS_NAME_MAX: usize = 253;
/// A DNS label (RFC 1035): DKIM selectors.
pub const DNS_LABEL_MAX: usize = 63;
/// A mail address: the RFC 5321 path limit of 256 octets minus the angle brackets.
pub const ADDRESS_MAX: usize = 254;
/// An address or CIDR in text: the longest IPv6 form with an IPv4 tail and `/128`.
pub const CIDR_MAX: usize = 49;
/// An IP address in text: the longest IPv6 form with an IPv4 tail.
pub const IP_MAX: usize = 45;
/// Free-text descriptions.
pub const DESCRIPTION_MAX: usize = 1024;
/// URLs (the Redis URL, an OAuth 2.0 token endpoint).
pub const URL_MAX: usize = 2048;
/// A header field name (the longest registered ones are about 30 characters).
pub const HEADER_NAME_MAX: usize = 64;
/// A resource quantity in text (`1Gi`, `500Mi`, `10G`): the spool size.
pub const QUANTITY_MAX: usize = 64;
/// The name of a policy test case.
pub const CASE_NAME_MAX: usize = 256;

/// Registered users of an organization.
pub const USERS_MAX: usize = 10_000;
/// Mail domains of an organization.
pub const DOMAINS_MAX: usize = 1_000;
/// Networks of `relay.allowedClientCidrs` and `relay.proxyProtocol.trustedProxies`.
pub const NETWORKS_MAX: usize = 1_000;
/// DKIM keys of an organization.
pub const DKIM_KEYS_MAX: usize = 32;
/// Header fields a DKIM key signs.
pub const DKIM_HEADERS_MAX: usize = 64;
/// Domains of `match.recipientDomains` and `match.senderDomains` of one route.
pub const ROUTE_DOMAINS_MAX: usize = 1_000;
/// Hosts of a weighted pool (`multipleHosts.primary`, `multipleHosts.secondary`).
pub const POOL_HOSTS_MAX: usize = 100;
/// Cases of one RelayExpectation.
pub const CASES_MAX: usize = 1_000;
/// Content filters of an organization (SPEC §2.1: at most 8).
pub const CONTENT_FILTERS_MAX: usize = 8;

/// A registered user address: one or more characters other than `@` and white space, `@`,
/// and a domain name. An OpenAPI `pattern` rather than a CEL rule: a regular expression over
/// 10,000 addresses of up to 254 characters is estimated at about 25,000,000, over the API
/// server's limit of 10,000,000 for one rule, while a pattern costs nothing in that budget.
/// `\s` is spelled out as RE2 (the API server) defines it, so that Rust's `regex` agrees.
pub const USER_PATTERN: &str = r"^[^@\t\n\f\r ]+@([A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?$";

/// A schemars transform adding the CEL rule `rule` (with `message`) to the items of the
/// list a field holds: `#[schemars(transform = crate::bounds::item_rule("...", "..."))]`.
pub fn item_rule(rule: &'static str, message: &'static str) -> impl FnMut(&mut schemars::Schema) {
    move |schema: &mut schemars::Schema| {
        if let Some(items) = schema.get_mut("items").and_then(Value::as_object_mut) {
            let rules = items
                .entry("x-kubernetes-validations")
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Some(rules) = rules.as_array_mut() {
                rules.push(json!({ "message": message, "rule": rule }));
            }
        }
    }
}

/// Bounds `metadata.name` (and `generateName`) of a CRD's objects to `max` characters.
///
/// At the root of a resource the API server shows rules `apiVersion`, `kind` and
/// `metadata.name`/`generateName`; unless the schema declares all four as strings it
/// declares them itself, without a bound, and a rule on the name is estimated over a
/// 3 MiB string. Declaring them (the only restrictions a CRD may put on metadata) bounds
/// the name for the estimate and for the API server's own validation.
pub fn bound_organization_name(
    crd: &mut k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    max: usize,
) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps;
    let string = |description: &str, max: Option<usize>| JSONSchemaProps {
        type_: Some("string".into()),
        description: Some(description.into()),
        max_length: max.map(|m| m as i64),
        ..Default::default()
    };
    for version in &mut crd.spec.versions {
        let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        let props = schema.properties.get_or_insert_with(Default::default);
        props.insert(
            "apiVersion".into(),
            string("APIVersion of the object (smtprelay.dev/v1alpha1).", None),
        );
        props.insert("kind".into(), string("Kind of the object.", None));
        let mut meta_props = std::collections::BTreeMap::new();
        meta_props.insert(
            "name".into(),
            string(
                &format!("Name of the object: a DNS label of at most {max} characters."),
                Some(max),
            ),
        );
        meta_props.insert(
            "generateName".into(),
            string(
                &format!("Prefix of a generated name, at most {max} characters."),
                Some(max),
            ),
        );
        props.insert(
            "metadata".into(),
            JSONSchemaProps {
                type_: Some("object".into()),
                properties: Some(meta_props),
                ..Default::default()
            },
        );
    }
}

/// The Rust mirror of the schema's bounds: collects the bounds a value breaks, in the API
/// server's words.
#[derive(Debug, Default)]
pub struct Violations(pub Vec<FieldError>);

impl Violations {
    fn push(&mut self, field: &str, detail: String) {
        self.0.push(FieldError {
            field: field.to_string(),
            detail,
        });
    }

    /// A string of at most `max` characters (OpenAPI `maxLength` counts characters).
    pub fn len(&mut self, path: &str, value: &str, max: usize) {
        if value.chars().count() > max {
            self.push(path, too_long(max));
        }
    }

    /// An optional string of at most `max` characters.
    pub fn opt_len(&mut self, path: &str, value: Option<&str>, max: usize) {
        if let Some(v) = value {
            self.len(path, v, max);
        }
    }

    /// A list of at most `max` entries.
    pub fn items<T>(&mut self, path: &str, list: &[T], max: usize) {
        if list.len() > max {
            self.push(path, too_many(list.len(), max));
        }
    }

    /// Every entry of a list of strings at most `max` characters long.
    pub fn each_len(&mut self, path: &str, list: &[String], max: usize) {
        for (i, s) in list.iter().enumerate() {
            self.len(&format!("{path}[{i}]"), s, max);
        }
    }

    /// A string matching `pattern` (an anchored regular expression).
    pub fn pattern(&mut self, path: &str, value: &str, pattern: &'static str) {
        if !crate::structural::pattern_matches(pattern, value) {
            self.push(path, pattern_mismatch(path, value, pattern));
        }
    }
}
