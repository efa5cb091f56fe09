//! What `relayctl install` prints: every object a cluster needs to run the operator (the
//! CustomResourceDefinitions, the `smtprelay-system` namespace, the operator's RBAC and its
//! Deployment) as one YAML stream for `kubectl apply --server-side -f -`.
//!
//! The objects other than the CRDs are the Kustomize base `deploy/base/` (compiled in), so
//! `kubectl apply -k deploy/base` and `relayctl install` install the same thing; only the image
//! tag can differ. `deploy/install.yaml` commits the output for the crate's version.

/// The version the images built by `images/build.sh` are tagged with, and the tag
/// `deploy/` names.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The images the operator Deployment runs and lets relays run.
pub const IMAGES: [&str; 2] = ["smtprelay-operator", "smtprelay-relay"];

/// The Kustomize base's files, in the order they are applied.
const BASE: [(&str, &str); 2] = [
    (
        "deploy/base/rbac.yaml",
        include_str!("../../deploy/base/rbac.yaml"),
    ),
    (
        "deploy/base/operator.yaml",
        include_str!("../../deploy/base/operator.yaml"),
    ),
];

/// The whole install as one multi-document YAML stream, with both images tagged `tag`.
pub fn install_yaml(tag: &str) -> Result<String, yaml_serde::Error> {
    let mut out = String::from(
        "# SmtpRelay: CRDs, namespace, RBAC and operator.\n\
         # kubectl apply --server-side -f install.yaml\n",
    );
    out.push_str(&crds::crds_yaml()?);
    for (file, text) in BASE {
        out.push_str(&format!("---\n# {file}\n"));
        let mut text = text.to_string();
        for image in IMAGES {
            text = text.replace(&format!("{image}:{VERSION}"), &format!("{image}:{tag}"));
        }
        out.push_str(text.strip_prefix("---\n").unwrap_or(&text));
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}
