//! `RelayExpectation`: policy tests written down in Git beside the manifests.
//!
//! Each case is a hypothetical session (client address, HELO name, TLS, AUTH identity,
//! sender, recipients) and what must happen to it (accepted or not, the reply codes, the
//! route each recipient takes, the rewritten sender). `relayctl test` evaluates the cases
//! against the manifests and `relayctl plan` reports cases whose outcome a change alters.
//! The operator never reads them: they describe behaviour, they do not configure it. The
//! kind has a CRD only so that `kubectl apply -f` of a manifest directory accepts the file.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Cases a relay's policy must pass.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "smtprelay.dev",
    version = "v1alpha1",
    kind = "RelayExpectation",
    namespaced,
    cel,
    derive = "PartialEq",
    shortname = "relayexpect",
    category = "smtprelay",
    doc = "Policy test cases checked by relayctl test; ignored by the operator",
    printcolumn(
        name = "Description",
        type_ = "string",
        json_path = ".spec.description"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RelayExpectationSpec {
    /// What the cases guard.
    #[serde(default)]
    pub description: String,
    /// The cases, each evaluated on its own session (at most 1,000). Names are unique
    /// (checked by the loader, not by CEL: a pairwise rule over 1,000 names would cost
    /// far more than the API server allows).
    #[schemars(length(max = crate::bounds::CASES_MAX))]
    #[x_kube(validation = kube::core::Rule::new("self.size() > 0").message("cases must list at least one case"))]
    pub cases: Vec<ExpectationCase>,
}

/// One hypothetical session and what must happen to it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExpectationCase {
    /// Names the case in reports (at most 256 characters).
    #[schemars(length(max = crate::bounds::CASE_NAME_MAX))]
    #[x_kube(validation = kube::core::Rule::new("self.trim() != ''").message("name must not be empty"))]
    pub name: String,
    /// Who the client is.
    pub client: ExpectationClient,
    /// Envelope sender (`""` for the null sender `MAIL FROM:<>`).
    pub from: String,
    /// Envelope recipients.
    #[x_kube(validation = kube::core::Rule::new("self.size() > 0").message("to must list at least one recipient"))]
    pub to: Vec<String>,
    /// What must happen; only the fields given are checked.
    pub expect: Expected,
}

/// The client of a case (SPEC §3.2).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExpectationClient {
    /// Client IP address (at most 45 characters).
    #[schemars(length(max = crate::bounds::IP_MAX))]
    #[x_kube(validation = kube::core::Rule::new("isIP(self)").message("client.ip must be an IPv4 or IPv6 address, such as 192.0.2.10"))]
    pub ip: String,
    /// HELO/EHLO name; the address literal of `ip` when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helo: Option<String>,
    /// The client issued STARTTLS (or used port 465).
    #[serde(default)]
    pub tls: bool,
    /// The AUTH identity the client logged in as (the password is assumed right).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
}

/// What must happen to a case. Reply fields match the start of the reply
/// (`"550"`, `"550 5.7.1"` or the whole line).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = kube::core::Rule::new("has(self.accepted) || has(self.mailReply) || has(self.rcptReply) || has(self.route) || has(self.sender)").message("expect must state at least one of accepted, mailReply, rcptReply, route, sender"))]
pub struct Expected {
    /// True: MAIL and every RCPT get a 2xx reply. False: one of them does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted: Option<bool>,
    /// The reply to MAIL FROM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail_reply: Option<String>,
    /// The reply to every RCPT TO (checked when MAIL was accepted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rcpt_reply: Option<String>,
    /// The MailRoute every recipient takes (`name` or `namespace/name`), or `direct` for
    /// delivery to the recipient domain's MX hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// The envelope sender after any rewrite (SPEC §3.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
}

impl RelayExpectation {
    /// The size bounds of the RelayExpectation schema, checked in Rust (see
    /// `Organization::bound_violations`).
    pub fn bound_violations(&self) -> Vec<crate::structural::FieldError> {
        use crate::bounds::{self, Violations};
        let mut v = Violations::default();
        v.items("spec.cases", &self.spec.cases, bounds::CASES_MAX);
        for (i, case) in self.spec.cases.iter().enumerate() {
            v.len(
                &format!("spec.cases[{i}].name"),
                &case.name,
                bounds::CASE_NAME_MAX,
            );
            v.len(
                &format!("spec.cases[{i}].client.ip"),
                &case.client.ip,
                bounds::IP_MAX,
            );
        }
        v.0
    }
}
