//! The install manifests: `relayctl install` prints what `deploy/install.yaml` commits, the
//! Kustomize base in `deploy/base` holds the same objects, the committed CRDs are what the
//! types generate, and every object is a valid Kubernetes object of its kind (deserialised
//! into its k8s-openapi type with no field dropped, so a misspelt field fails).

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use operator::install::{VERSION, install_yaml};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

const REGENERATE: &str = "cargo run -p operator --bin relayctl -- install > deploy/install.yaml";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn relayctl(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_relayctl"))
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "relayctl {args:?} failed");
    String::from_utf8(out.stdout).unwrap()
}

fn documents(yaml: &str) -> Vec<Value> {
    yaml_serde::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// The JSON path of the first place where `a` and `b` differ.
fn first_difference(a: &Value, b: &Value, path: String) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            x.keys()
                .chain(y.keys())
                .find_map(|k| match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => first_difference(p, q, format!("{path}.{k}")),
                    _ => Some(format!("{path}.{k}")),
                })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(p, q, format!("{path}[{i}]"))),
        _ if a == b => None,
        _ => Some(path),
    }
}

/// Deserialises `object` as `T` and serialises it back: a field `T` does not know (a typo,
/// a wrong nesting) is dropped on the way and shows as a difference.
fn strictly<T: DeserializeOwned + serde::Serialize>(object: &Value) -> Result<(), String> {
    let typed: T = serde_json::from_value(object.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    match first_difference(object, &back, String::new()) {
        None => Ok(()),
        Some(path) => Err(format!("field {path} is not part of the type")),
    }
}

fn validate(object: &Value) -> Result<(), String> {
    match object["kind"].as_str().unwrap_or_default() {
        "CustomResourceDefinition" => strictly::<CustomResourceDefinition>(object),
        "Namespace" => strictly::<Namespace>(object),
        "ServiceAccount" => strictly::<ServiceAccount>(object),
        "ClusterRole" => strictly::<ClusterRole>(object),
        "ClusterRoleBinding" => strictly::<ClusterRoleBinding>(object),
        "Role" => strictly::<Role>(object),
        "RoleBinding" => strictly::<RoleBinding>(object),
        "Deployment" => strictly::<Deployment>(object),
        other => Err(format!("unexpected kind {other:?}")),
    }
}

fn name_of(object: &Value) -> String {
    format!(
        "{} {}",
        object["kind"].as_str().unwrap_or("?"),
        object["metadata"]["name"].as_str().unwrap_or("?")
    )
}

#[test]
fn committed_install_yaml_is_what_relayctl_install_prints() {
    let committed = std::fs::read_to_string(root().join("deploy/install.yaml")).unwrap_or_default();
    let printed = relayctl(&["install"]);
    assert!(
        committed == printed,
        "deploy/install.yaml is out of date. Regenerate it with:\n    {REGENERATE}"
    );
}

#[test]
fn committed_crds_of_the_base_are_what_relayctl_crds_prints() {
    let committed = std::fs::read_to_string(root().join("deploy/base/crds/smtprelay.dev.yaml"))
        .unwrap_or_default();
    assert!(
        committed == relayctl(&["crds"]),
        "deploy/base/crds/smtprelay.dev.yaml is out of date. Regenerate it with:\n    \
         cargo run -p operator --bin relayctl -- crds > deploy/base/crds/smtprelay.dev.yaml"
    );
}

#[test]
fn every_installed_object_is_a_valid_object_of_its_kind() {
    let objects = documents(&install_yaml(VERSION).unwrap());
    let errors: Vec<String> = objects
        .iter()
        .filter_map(|o| validate(o).err().map(|e| format!("{}: {e}", name_of(o))))
        .collect();
    assert!(errors.is_empty(), "invalid objects:\n{}", errors.join("\n"));

    let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    for kind in [
        "CustomResourceDefinition",
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
    ] {
        assert!(kinds.contains(&kind), "no {kind} in the install: {kinds:?}");
    }
    // CRDs come first and the namespace before anything namespaced, so a plain
    // `kubectl apply` of the stream works in order too.
    let first_other = kinds
        .iter()
        .position(|k| *k != "CustomResourceDefinition")
        .unwrap();
    assert_eq!(kinds[first_other], "Namespace");
    assert!(
        kinds[first_other..]
            .iter()
            .all(|k| *k != "CustomResourceDefinition")
    );
}

#[test]
fn a_misspelt_field_is_refused() {
    let mut objects = documents(&install_yaml(VERSION).unwrap());
    let deployment = objects
        .iter_mut()
        .find(|o| o["kind"] == "Deployment")
        .unwrap();
    let container = &mut deployment["spec"]["template"]["spec"]["containers"][0];
    let policy = container["imagePullPolicy"].take();
    container.as_object_mut().unwrap().remove("imagePullPolicy");
    container["imagePulPolicy"] = policy;
    let err = validate(deployment).unwrap_err();
    assert!(err.contains("imagePulPolicy"), "{err}");
}

#[test]
fn the_kustomize_base_holds_the_same_objects_as_the_install() {
    let base = root().join("deploy/base");
    let kustomization: Value =
        yaml_serde::from_str(&std::fs::read_to_string(base.join("kustomization.yaml")).unwrap())
            .unwrap();
    let mut from_base = Vec::new();
    for resource in kustomization["resources"].as_array().unwrap() {
        let text = std::fs::read_to_string(base.join(resource.as_str().unwrap())).unwrap();
        from_base.extend(documents(&text));
    }
    let installed = documents(&install_yaml(VERSION).unwrap());
    let names = |objects: &[Value]| {
        let mut n: Vec<String> = objects.iter().map(name_of).collect();
        n.sort();
        n
    };
    assert_eq!(names(&from_base), names(&installed));
    for object in &installed {
        assert!(
            from_base.contains(object),
            "{} differs between deploy/base and the install",
            name_of(object)
        );
    }
}

#[test]
fn install_names_the_crate_version_and_image_changes_both_tags() {
    let images = |yaml: &str| -> Vec<String> {
        let deployment = documents(yaml)
            .into_iter()
            .find(|o| o["kind"] == "Deployment")
            .unwrap();
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        let mut found = vec![container["image"].as_str().unwrap().to_string()];
        found.extend(
            container["args"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|a| a.as_str()?.strip_prefix("--relay-image="))
                .map(str::to_string),
        );
        found
    };
    assert_eq!(
        images(&relayctl(&["install"])),
        [
            format!("smtprelay-operator:{VERSION}"),
            format!("smtprelay-relay:{VERSION}")
        ]
    );
    assert_eq!(
        images(&relayctl(&["install", "--image", "0.1.0-abc"])),
        ["smtprelay-operator:0.1.0-abc", "smtprelay-relay:0.1.0-abc"]
    );
    for file in ["deploy/base/operator.yaml", "deploy/install.yaml"] {
        let text = std::fs::read_to_string(root().join(file)).unwrap_or_default();
        assert!(!text.contains(":dev"), "{file} names a :dev image");
    }
}
