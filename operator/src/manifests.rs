//! Rendering straight from manifest files: picks the one organization of a manifest set and
//! hands its objects to [`crate::render::render`]. Used by `relayctl render`, `run` and `plan`.

use std::collections::BTreeSet;

use crds::manifest::ManifestSet;
use kube::ResourceExt;

use crate::render::{Objects, RenderEnv, RenderError, Rendered, render};

/// The namespace of the single Organization in `set`.
pub fn organization_namespace(set: &ManifestSet) -> Result<String, RenderError> {
    let namespaces: BTreeSet<String> = set
        .organizations
        .iter()
        .map(|o| o.object.namespace().unwrap_or_else(|| "default".into()))
        .collect();
    match namespaces.len() {
        0 => Err(RenderError::NoOrganization {
            namespace: "(any)".into(),
        }),
        1 => Ok(namespaces.into_iter().next().unwrap_or_default()),
        n => Err(RenderError::SeveralOrganizations {
            namespace: "(several namespaces)".into(),
            count: n,
            names: namespaces.into_iter().collect::<Vec<_>>().join(", "),
        }),
    }
}

/// Renders the organization of a manifest set (exactly one namespace with an Organization).
pub fn render_set(set: &ManifestSet, env: &RenderEnv) -> Result<Rendered, RenderError> {
    render_with(set, env, false).map(|(r, _)| r)
}

/// Renders as [`render_set`] does, but as if every Secret the objects reference existed:
/// a TLS certificate or credentials Secret usually comes from cert-manager or a secret
/// store, not from Git. Returns the names of the Secrets assumed, for `relayctl explain`
/// and `test` to say so.
pub fn render_set_assuming_secrets(
    set: &ManifestSet,
    env: &RenderEnv,
) -> Result<(Rendered, Vec<String>), RenderError> {
    render_with(set, env, true)
}

fn render_with(
    set: &ManifestSet,
    env: &RenderEnv,
    assume_referenced: bool,
) -> Result<(Rendered, Vec<String>), RenderError> {
    let namespace = organization_namespace(set)?;
    let organizations: Vec<_> = set.organizations.iter().map(|l| l.object.clone()).collect();
    let settings: Vec<_> = set.settings.iter().map(|l| l.object.clone()).collect();
    let ranges: Vec<_> = set.ranges.iter().map(|l| l.object.clone()).collect();
    let routes: Vec<_> = set.routes.iter().map(|l| l.object.clone()).collect();
    let secrets: BTreeSet<String> = set
        .secrets
        .iter()
        .filter(|s| s.object.namespace().unwrap_or_else(|| "default".into()) == namespace)
        .map(|s| s.object.name_any())
        .collect();
    let mut secrets = secrets;
    let mut assumed = Vec::new();
    if assume_referenced {
        let in_namespace = |ns: Option<String>| ns.unwrap_or_else(|| "default".into()) == namespace;
        let mut referenced = BTreeSet::new();
        for org in set
            .organizations
            .iter()
            .filter(|o| in_namespace(o.object.namespace()))
        {
            let spec = &org.object.spec;
            referenced.extend(spec.auth_secret_ref.iter().map(|r| r.name.clone()));
            referenced.extend(spec.relay.tls_secret_ref.iter().map(|r| r.name.clone()));
        }
        for route in set
            .routes
            .iter()
            .filter(|r| in_namespace(r.object.namespace()))
        {
            referenced.extend(
                route
                    .object
                    .spec
                    .tls
                    .trusted_ca_secret_ref
                    .iter()
                    .map(|r| r.name.clone()),
            );
        }
        for name in referenced {
            if secrets.insert(name.clone()) {
                assumed.push(format!("{namespace}/{name}"));
            }
        }
    }
    let mut rendered = render(
        &namespace,
        Objects {
            organizations: &organizations,
            settings: &settings,
            ranges: &ranges,
            routes: &routes,
            secrets: &secrets,
        },
        env,
    )?;
    // DKIM keys the manifests hold are read, as the controller reads them from the
    // cluster: an unusable one (not a key, an RSA key under 2048 bits) is said offline.
    let held: Vec<_> = set
        .secrets
        .iter()
        .filter(|s| s.object.namespace().unwrap_or_else(|| "default".into()) == namespace)
        .map(|s| s.object.clone())
        .collect();
    for org in organizations
        .iter()
        .filter(|o| o.namespace().unwrap_or_else(|| "default".into()) == namespace)
    {
        rendered
            .findings
            .extend(crate::render::dkim_key_findings(org, &held));
    }
    Ok((rendered, assumed))
}
