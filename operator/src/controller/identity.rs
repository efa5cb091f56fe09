//! How an Organization's children are named and tied together, for every part of the
//! controller that makes or finds them: object names, the relay's and the drain's labels
//! and selectors, the config and spool volume names and mount path, and the owner
//! reference every child carries.
//!
//! Not here: building the children (`children`, `drain`), making names valid (`names`).

use std::collections::BTreeMap;

use crds::Organization;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};

use super::names;

/// Key of the RelayConfig document in the ConfigMap.
pub const CONFIG_KEY: &str = "config.json";

/// Where the ConfigMap is mounted in relay pods.
pub const CONFIG_DIR: &str = "/etc/smtprelay/config";

/// Label every child carries, and the label selector of the operator's watches.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "smtprelay-operator");

/// Name of the spool volume and of the StatefulSet's claim template: pod `N` gets the
/// claim `spool-<relay>-N`.
pub const SPOOL_VOLUME: &str = "spool";

/// Name of the Service, PodDisruptionBudget, NetworkPolicy and of the Deployment that ran
/// the relay before StatefulSets (and of the StatefulSet unless too long, see
/// [`stateful_set_name`]): a DNS-1035 label (as a Service name must be) whatever the
/// Organization is called.
pub fn relay_name(org: &str) -> String {
    names::child_name("", org, "-relay")
}

/// Name of the StatefulSet: the same as [`relay_name`] unless that is too long for the
/// StatefulSet's pods to start (see [`names::MAX_STATEFUL_SET`]).
pub fn stateful_set_name(org: &str) -> String {
    names::child_name_within("", org, "-relay", names::MAX_STATEFUL_SET)
}

/// Name of the headless Service that governs the StatefulSet.
pub fn pods_service_name(org: &str) -> String {
    names::child_name("", org, "-relay-pods")
}

/// Labels selecting the relay pods of one Organization.
pub fn selector_labels(org: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "smtprelay".to_string(),
        ),
        (
            "app.kubernetes.io/instance".to_string(),
            names::label_value(org),
        ),
    ])
}

/// The label selector (`key=value,…`) of the relay pods of one Organization, or of every
/// Organization of the namespace when `org` is `None`. Drain pods are not selected.
pub fn relay_pods_selector(org: Option<&str>) -> String {
    let mut labels = selector_labels(org.unwrap_or_default());
    if org.is_none() {
        labels.remove("app.kubernetes.io/instance");
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The controller owner reference every child carries, so that deleting the Organization
/// garbage-collects its relay.
pub fn owner_reference(org: &Organization) -> OwnerReference {
    OwnerReference {
        api_version: Organization::api_version(&()).into_owned(),
        kind: Organization::kind(&()).into_owned(),
        name: org.name_any(),
        uid: org.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Value of `app.kubernetes.io/name` on drain pods: not the relay's, so the relay's
/// Service, PodDisruptionBudget and StatefulSet never select them.
pub const DRAIN_APP: &str = "smtprelay-drain";

/// Labels of an Organization's drain Jobs and their pods.
pub fn drain_selector_labels(org: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), DRAIN_APP.to_string()),
        (
            "app.kubernetes.io/instance".to_string(),
            names::label_value(org),
        ),
    ])
}

/// Whether `object` carries every label of `selector` (a `matchLabels` selector).
pub fn selected<K: Resource>(
    object: &K,
    selector: &std::collections::BTreeMap<String, String>,
) -> bool {
    let labels = object.labels();
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}
