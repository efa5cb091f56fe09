//! `SmtpRelaySetting`: one rule of who may relay. A message is accepted when at least one
//! setting of the namespace accepts it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::Condition;

/// Who may relay: which senders, identified how, over what transport.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "smtprelay.dev",
    version = "v1alpha1",
    kind = "SmtpRelaySetting",
    namespaced,
    cel,
    derive = "PartialEq",
    status = "SmtpRelaySettingStatus",
    shortname = "relaysetting",
    category = "smtprelay",
    doc = "Who may relay mail: allowed senders, IP allow list and/or SMTP AUTH, TLS",
    printcolumn(name = "Senders", type_ = "string", json_path = ".spec.allowedSenders"),
    printcolumn(
        name = "IP",
        type_ = "boolean",
        json_path = ".spec.authentication.ipAllowRanges.enabled"
    ),
    printcolumn(
        name = "Auth",
        type_ = "boolean",
        json_path = ".spec.authentication.requireSmtpAuth"
    ),
    printcolumn(
        name = "TLS",
        type_ = "boolean",
        json_path = ".spec.encryption.requireTls"
    ),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = kube::core::Rule::new("self.authentication.ipAllowRanges.enabled || self.authentication.requireSmtpAuth").message("at least one authentication method must be on: set authentication.ipAllowRanges.enabled or authentication.requireSmtpAuth to true"))]
#[x_kube(validation = kube::core::Rule::new("!self.authentication.requireSmtpAuth || self.encryption.requireTls").message("authentication.requireSmtpAuth needs encryption.requireTls: true, so that credentials never cross the network unencrypted"))]
pub struct SmtpRelaySettingSpec {
    /// What the setting is for, shown to reviewers and in logs (at most 1,024 characters).
    #[schemars(length(max = crate::bounds::DESCRIPTION_MAX))]
    #[x_kube(validation = kube::core::Rule::new("self.trim() != ''").message("description must not be empty"))]
    pub description: String,
    /// Which envelope senders this setting allows.
    pub allowed_senders: AllowedSenders,
    /// How clients are identified.
    pub authentication: Authentication,
    /// Transport security required of clients.
    #[serde(default)]
    pub encryption: Encryption,
}

/// Which envelope senders a setting allows (SPEC §3.3).
#[derive(
    schemars::JsonSchema,
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
)]
pub enum AllowedSenders {
    /// Only registered user addresses.
    RegisteredUsers,
    /// Any address in a domain of the organization.
    OrganizationDomains,
    /// Any address, from an authenticated client or one presenting an organization
    /// domain in HELO/EHLO; foreign senders are rewritten to postmaster@.
    AnyAddress,
}

/// How a setting identifies clients; at least one method must be on.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Authentication {
    /// Allow clients whose IP lies in an enabled IpAllowRange chosen by the selector.
    #[serde(default)]
    pub ip_allow_ranges: IpAllowRangeSelection,
    /// Require SMTP AUTH (only offered over TLS).
    #[serde(default)]
    pub require_smtp_auth: bool,
}

/// The IP allow list of a setting: a label selector over the namespace's IpAllowRanges.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpAllowRangeSelection {
    /// Whether the client IP must lie in a selected, enabled range.
    #[serde(default)]
    pub enabled: bool,
    /// Which IpAllowRange objects form the list; empty or unset selects all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// Transport security required of clients.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Encryption {
    /// Refuse MAIL FROM until the client has started TLS.
    #[serde(default)]
    pub require_tls: bool,
}

/// Observed state of a setting.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SmtpRelaySettingStatus {
    /// `Accepted`, with reasons such as a selector that matches no range.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Number of enabled ranges the selector matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched_ranges: Option<i32>,
}

impl SmtpRelaySetting {
    /// The size bounds of the SmtpRelaySetting schema, checked in Rust (see
    /// `Organization::bound_violations`).
    pub fn bound_violations(&self) -> Vec<crate::structural::FieldError> {
        let mut v = crate::bounds::Violations::default();
        v.len(
            "spec.description",
            &self.spec.description,
            crate::bounds::DESCRIPTION_MAX,
        );
        v.0
    }
}
