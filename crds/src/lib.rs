//! The SmtpRelay API (`smtprelay.dev/v1alpha1`): the four custom resource kinds users
//! write in Git (plus `RelayExpectation`, policy tests the operator ignores), their CRD schemas with CEL validation rules, and the offline loader that
//! turns a set of YAML files into typed, validated objects.
//!
//! The CEL rules attached to the types are the single source of truth for single-object
//! validation: the API server evaluates them from the generated CRD, and
//! [`manifest::load_paths`] evaluates the very same rules offline through kube's `cel`
//! feature. Cross-object checks (a selector that matches nothing, a missing Secret) are not
//! validation errors; `render` and the operator report them as status conditions.

// kube's `printcolumn(...)` attributes repeat keys such as `type_ = "string"` by design.
#![allow(clippy::duplicated_attributes)]

pub mod cel_cost;
pub mod common;
pub mod expectation;
pub mod manifest;
pub mod organization;
pub mod range;
pub mod route;
pub mod setting;

pub use common::{Condition, SecretRef};
pub use expectation::{
    ExpectationCase, ExpectationClient, Expected, RelayExpectation, RelayExpectationSpec,
};
pub use organization::{
    Billing, DkimAlgorithm, DkimSpec, DrainingClaim, LimitOverrides, LimitStoreKind,
    LimitStoreSpec, ListenerPorts, Organization, OrganizationSpec, OrganizationStatus,
    ProxyProtocolSpec, RelaySpec, ServiceType, SpoolSpec,
};
pub use range::{IpAllowRange, IpAllowRangeSpec, IpAllowRangeStatus};
pub use route::{
    AUTH_NEEDS_TLS_CHECKS, AuthMechanism, ClientCredentials, HostSpec, MailRoute, MailRouteSpec,
    MailRouteStatus, MultipleHosts, PORT_465_NEEDS_IMPLICIT, RateLimit, RouteAuth, RouteMatch,
    RouteTls, WeightedHost,
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

/// The CustomResourceDefinitions of every kind, in a fixed order.
pub fn all_crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![
        Organization::crd(),
        SmtpRelaySetting::crd(),
        IpAllowRange::crd(),
        MailRoute::crd(),
        RelayExpectation::crd(),
    ]
}

/// All CRDs as one multi-document YAML stream, as `relayctl crds` prints it and as
/// `crds/yaml/smtprelay.dev.yaml` commits it.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in all_crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}
