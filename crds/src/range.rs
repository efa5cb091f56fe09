//! `IpAllowRange`: one entry of an IP allow list, selected by settings through labels.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::Condition;

/// One address or CIDR block allowed to relay, IPv4 or IPv6, at most 65,536 addresses.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "smtprelay.dev",
    version = "v1alpha1",
    kind = "IpAllowRange",
    namespaced,
    cel,
    derive = "PartialEq",
    status = "IpAllowRangeStatus",
    shortname = "iprange",
    category = "smtprelay",
    doc = "One IP address or CIDR range of an SMTP relay allow list",
    printcolumn(name = "CIDR", type_ = "string", json_path = ".spec.cidr"),
    printcolumn(name = "Enabled", type_ = "boolean", json_path = ".spec.enabled"),
    printcolumn(
        name = "Description",
        type_ = "string",
        json_path = ".spec.description"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpAllowRangeSpec {
    /// What the range is (office, data centre, application); at most 1,024 characters.
    #[schemars(length(max = crate::bounds::DESCRIPTION_MAX))]
    #[x_kube(validation = kube::core::Rule::new("self.trim() != ''").message("description must not be empty"))]
    pub description: String,
    /// A single address (`192.0.2.10`, `2001:db8::1`) or a network (`192.0.2.0/24`).
    /// IPv6 may be written full, zero-suppressed or compressed. At most 49 characters.
    #[schemars(length(max = crate::bounds::CIDR_MAX))]
    #[x_kube(validation = kube::core::Rule::new("isIP(self) || isCIDR(self)").message("cidr must be an IPv4 or IPv6 address or CIDR range, such as 192.0.2.0/24 or 2001:db8::/120"))]
    #[x_kube(validation = kube::core::Rule::new("!isCIDR(self) || (cidr(self).ip().family() == 4 && cidr(self).prefixLength() >= 16) || (cidr(self).ip().family() == 6 && cidr(self).prefixLength() >= 112)").message("cidr covers more than 65,536 addresses: use an IPv4 prefix of /16 or longer, or an IPv6 prefix of /112 or longer"))]
    // The message names the network with format(): a concatenation with string() would be
    // estimated over a string of unknown length and refused by the API server.
    #[x_kube(validation = kube::core::Rule::new("!isCIDR(self) || cidr(self) == cidr(self).masked()").message(kube::core::cel::Message::Expression("'cidr has host bits set below the prefix; the network is %s'.format([string(cidr(self).masked())])".into())))]
    pub cidr: String,
    /// A disabled range stays in Git and does nothing.
    #[serde(default = "enabled_default")]
    pub enabled: bool,
}

fn enabled_default() -> bool {
    true
}

/// Observed state of a range.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct IpAllowRangeStatus {
    /// `Accepted`, with the reason when no setting selects the range.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Canonical network of `cidr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}

impl IpAllowRange {
    /// The size bounds of the IpAllowRange schema, checked in Rust (see
    /// `Organization::bound_violations`).
    pub fn bound_violations(&self) -> Vec<crate::structural::FieldError> {
        let mut v = crate::bounds::Violations::default();
        v.len(
            "spec.description",
            &self.spec.description,
            crate::bounds::DESCRIPTION_MAX,
        );
        v.len("spec.cidr", &self.spec.cidr, crate::bounds::CIDR_MAX);
        v.0
    }
}
