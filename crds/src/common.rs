//! Types shared by several kinds: references to Secrets and status conditions.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// A reference to a Secret in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    /// Name of the Secret (at most 253 characters).
    #[schemars(length(max = crate::bounds::DNS_NAME_MAX))]
    #[x_kube(validation = kube::core::Rule::new("self != ''").message("secret name must not be empty"))]
    #[x_kube(validation = kube::core::Rule::new(r"size(self) <= 253 && self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("secret name must be a valid Secret name: lowercase letters, digits, '-' and '.', at most 253 characters"))]
    pub name: String,
}

impl SecretRef {
    /// The bound of the name (the Rust mirror of the schema, see `crate::bounds`).
    pub(crate) fn bounds(&self, v: &mut crate::bounds::Violations, path: &str) {
        v.len(
            &format!("{path}.name"),
            &self.name,
            crate::bounds::DNS_NAME_MAX,
        );
    }
}
