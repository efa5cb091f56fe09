//! The SmtpRelay API (`smtprelay.dev/v1alpha1`): the four custom resource kinds users
//! write in Git (plus `RelayExpectation`, policy tests the operator ignores), their CRD schemas with CEL validation rules, and the offline loader that
//! turns a set of YAML files into typed, validated objects.
//!
//! The CEL rules and size bounds attached to the types are the single source of truth for
//! single-object validation: the API server evaluates them from the generated CRD, and
//! [`manifest::load_paths`] applies the very same schema offline ([`structural`] for the
//! bounds, kube's `cel` feature for the rules). [`cel_cost`] estimates the rules' cost as
//! the API server does when the CRDs are installed, and [`bounds`] holds the bounds that
//! keep that cost within its limits. Cross-object checks (a selector that matches nothing, a missing Secret) are not
//! validation errors; `render` and the operator report them as status conditions.

// kube's `printcolumn(...)` attributes repeat keys such as `type_ = "string"` by design.
#![allow(clippy::duplicated_attributes)]

pub mod bounds;
pub mod cel_cost;
pub mod common;
pub mod expectation;
pub mod manifest;
pub mod organization;
pub mod range;
pub mod reference;
pub mod route;
pub mod setting;
pub mod structural;

pub use common::{Condition, SecretRef};
pub use expectation::{
    ExpectationCase, ExpectationClient, Expected, RelayExpectation, RelayExpectationSpec,
};
pub use organization::{
    ArchiveSpec, Billing, ContentFilterSpec, DkimAlgorithm, DkimSpec, DrainingClaim,
    LimitOverrides, LimitStoreKind, LimitStoreSpec, ListenerPorts, MilterSpec, OnUnavailable,
    Organization, OrganizationSpec, OrganizationStatus, ProxyProtocolSpec, RelaySpec, ServiceType,
    SpoolSpec,
};
pub use range::{IpAllowRange, IpAllowRangeSpec, IpAllowRangeStatus};
pub use route::{
    AUTH_NEEDS_TLS_CHECKS, AuthMechanism, ClientCredentials, GMAIL_SCOPE, GOOGLE_TOKEN_ENDPOINT,
    GRANT_NEEDS_XOAUTH2, HostSpec, MailRoute, MailRouteSpec, MailRouteStatus, MultipleHosts,
    ONE_GRANT, PORT_465_NEEDS_IMPLICIT, RateLimit, RefreshTokenGrant, RouteAuth, RouteMatch,
    RouteTls, ServiceAccountGrant, WeightedHost,
};
pub use setting::{
    AllowedSenders, Authentication, Encryption, IpAllowRangeSelection, SmtpRelaySetting,
    SmtpRelaySettingSpec, SmtpRelaySettingStatus,
};

/// API group of every kind.
pub const GROUP: &str = "smtprelay.dev";
/// API version of every kind.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in manifests.
pub const API_VERSION: &str = "smtprelay.dev/v1alpha1";

/// The oldest Kubernetes version whose API server accepts these CRDs: their validation
/// rules use the CEL IP and CIDR libraries (`isIP`, `isCIDR`, `cidr`, `.ip()`, `.family()`,
/// `.prefixLength()`, `.masked()`). The libraries entered the API server's CEL environment
/// at compatibility version 1.30 (k8s.io/apiserver `pkg/cel/environment/base.go`), and new
/// or changed CRD rules are compiled against the previous version's environment, so rules
/// using them are accepted from 1.31 (the "Kubernetes IP address library" and "Kubernetes
/// CIDR library" rows of kubernetes.io "Common Expression Language in Kubernetes": "1.31+").
/// A 1.30 or older API server refuses the CRDs with "undeclared reference to 'isIP'".
pub const MIN_KUBERNETES_VERSION: &str = "1.31";

/// The CustomResourceDefinitions of every kind, in a fixed order.
pub fn all_crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    let mut organization = Organization::crd();
    // A root rule checks that the name is a DNS label; the bound keeps its estimated cost
    // (a regular expression over the name) small.
    bounds::bound_organization_name(&mut organization, bounds::ORGANIZATION_NAME_MAX);
    vec![
        organization,
        SmtpRelaySetting::crd(),
        IpAllowRange::crd(),
        MailRoute::crd(),
        RelayExpectation::crd(),
    ]
}

/// The `openAPIV3Schema` of the CRD of `kind` (as [`all_crds`] generates it).
pub fn crd_schema(kind: &str) -> Option<&'static serde_json::Value> {
    static SCHEMAS: std::sync::OnceLock<std::collections::HashMap<String, serde_json::Value>> =
        std::sync::OnceLock::new();
    SCHEMAS
        .get_or_init(|| {
            all_crds()
                .into_iter()
                .filter_map(|crd| {
                    let schema = crd
                        .spec
                        .versions
                        .first()?
                        .schema
                        .as_ref()?
                        .open_api_v3_schema
                        .as_ref()?;
                    Some((
                        crd.spec.names.kind.clone(),
                        serde_json::to_value(schema).ok()?,
                    ))
                })
                .collect()
        })
        .get(kind)
}

/// Checks an object of `kind` against its CRD's schema.
pub fn validate_object(kind: &str, object: &serde_json::Value) -> Vec<structural::FieldError> {
    match crd_schema(kind) {
        Some(schema) => structural::validate(schema, object, ""),
        None => Vec::new(),
    }
}

/// All CRDs as one multi-document YAML stream, as `relayctl crds` prints it and as
/// `crds/yaml/smtprelay.dev.yaml` commits it. A comment first states the Kubernetes
/// version they need.
pub fn crds_yaml() -> Result<String, yaml_serde::Error> {
    let mut out = format!(
        "# SmtpRelay CustomResourceDefinitions (smtprelay.dev/v1alpha1).\n\
         # They need Kubernetes {MIN_KUBERNETES_VERSION} or newer: their validation rules use the CEL IP/CIDR library.\n"
    );
    for crd in all_crds() {
        out.push_str("---\n");
        out.push_str(&yaml_serde::to_string(&crd)?);
    }
    Ok(out)
}
