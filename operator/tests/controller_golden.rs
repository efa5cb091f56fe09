//! Golden files of the children the operator applies for every example (except
//! `invalid/` and `ci/`): ConfigMap, StatefulSet, headless and client Services,
//! PodDisruptionBudget and NetworkPolicy as YAML, and for variants of examples whose relay
//! settings no example uses (`tests/golden/variant-*.yaml`: LoadBalancer and NodePort
//! Services, several replicas, a sized claim, an ephemeral spool). A change in what the
//! operator deploys shows up as a reviewable diff of `tests/golden/<example>.yaml`.
//! Regenerate with `UPDATE_GOLDEN=1 cargo test -p operator --test controller_golden`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crds::manifest::load_paths;
use crds::{LimitStoreKind, LimitStoreSpec, Organization, ServiceType, SpoolSpec};
use kube::ResourceExt;
use operator::controller::children::{
    ChildDefaults, Children, build, content_hash_in_pods, mounted_secrets, secrets_hash,
};
use operator::manifests::{organization_namespace, render_set};
use operator::render::RenderEnv;

fn children_yaml(example: &Path) -> String {
    children_yaml_with(example, |_| {})
}

fn children_yaml_with(example: &Path, change: impl Fn(&mut Organization)) -> String {
    let (_, children) = rendered_children(example, change);
    children.to_yaml().unwrap()
}

/// The rendered config and the children of an example.
fn rendered_children(
    example: &Path,
    change: impl Fn(&mut Organization),
) -> (relay::config::RelayConfig, Children) {
    let mut set = load_paths(&[example.to_path_buf()]).unwrap();
    for org in &mut set.organizations {
        change(&mut org.object);
    }
    let rendered = render_set(&set, &RenderEnv::pod()).unwrap();
    let namespace = organization_namespace(&set).unwrap();
    let org = set
        .organizations
        .iter()
        .map(|l| l.object.clone())
        .find(|o| o.namespace().unwrap_or_else(|| "default".into()) == namespace)
        .unwrap();
    let routes: Vec<_> = set.routes.iter().map(|l| l.object.clone()).collect();
    let secrets: Vec<_> = set.secrets.iter().map(|l| l.object.clone()).collect();
    let names: BTreeSet<String> = secrets.iter().map(|s| s.name_any()).collect();
    let mounted = mounted_secrets(&org, &routes, &names);
    let children = build(
        &org,
        &rendered.config,
        &mounted,
        &secrets_hash(&mounted, &secrets),
        &ChildDefaults::default(),
    );
    (rendered.config, children)
}

/// Compares `actual` with the golden file `name`, or writes it under `UPDATE_GOLDEN`.
fn check(name: &str, actual: &str, stale: &mut Vec<String>) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let golden = root.join("tests/golden").join(format!("{name}.yaml"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&golden).unwrap_or_default();
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(expected.lines().count().min(actual.lines().count()));
        eprintln!(
            "{name}: children differ from {} from line {}:\n  golden: {:?}\n  actual: {:?}",
            golden.display(),
            first + 1,
            expected.lines().nth(first),
            actual.lines().nth(first)
        );
        stale.push(name.to_string());
    }
}

#[test]
fn children_of_relay_variants_match_their_golden_files() {
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut stale = Vec::new();
    // Three replicas behind a cloud load balancer, each with a 5Gi claim of class `fast`.
    let load_balanced = children_yaml_with(&examples.join("on-premise-ip-range"), |o| {
        o.spec.relay.service_type = Some(ServiceType::LoadBalancer);
        o.spec.relay.replicas = Some(3);
        o.spec.relay.limit_store = Some(LimitStoreSpec {
            kind: LimitStoreKind::Redis,
            url: Some("redis://redis:6379/0".into()),
            password_secret_ref: None,
        });
        o.spec.relay.spool = Some(SpoolSpec {
            size: Some("5Gi".into()),
            storage_class_name: Some("fast".into()),
            ephemeral: false,
        });
    });
    check(
        "variant-load-balancer-3-replicas",
        &load_balanced,
        &mut stale,
    );
    // A NodePort Service and an emptyDir spool chosen on purpose.
    let ephemeral = children_yaml_with(&examples.join("quickstart"), |o| {
        o.spec.relay.service_type = Some(ServiceType::NodePort);
        o.spec.relay.spool = Some(SpoolSpec {
            ephemeral: true,
            ..Default::default()
        });
    });
    check("variant-node-port-ephemeral-spool", &ephemeral, &mut stale);
    assert!(
        stale.is_empty(),
        "golden files out of date for {stale:?}; if the change is intended, regenerate with:\n  UPDATE_GOLDEN=1 cargo test -p operator --test controller_golden"
    );
}

#[test]
fn children_of_every_example_match_their_golden_file() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let examples = root.join("../examples");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&examples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n != "invalid" && n != "ci"))
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 6, "examples not found: {dirs:?}");
    let mut stale = Vec::new();
    for dir in &dirs {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let golden = root.join("tests/golden").join(format!("{name}.yaml"));
        let actual = children_yaml(dir);
        if update {
            std::fs::write(&golden, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&golden).unwrap_or_default();
        if expected != actual {
            let first = expected
                .lines()
                .zip(actual.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(expected.lines().count().min(actual.lines().count()));
            eprintln!(
                "{name}: children differ from {} from line {}:\n  golden: {:?}\n  actual: {:?}",
                golden.display(),
                first + 1,
                expected.lines().nth(first),
                actual.lines().nth(first)
            );
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "golden files out of date for {stale:?}; if the change is intended, regenerate with:\n  UPDATE_GOLDEN=1 cargo test -p operator --test controller_golden"
    );
}

/// Every file the rendered config names for a route's credentials is one a relay pod has:
/// the Secret's volume lists its key and is mounted at its directory. Checked for each
/// grant (client credentials, refresh token, service account) and for password routes.
#[test]
fn relay_pods_mount_every_credential_file_the_config_names() {
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for (example, keys) in [
        ("ses-plain-587", &["username", "password"][..]),
        ("microsoft-365-xoauth2", &["username", "clientSecret"][..]),
        (
            "gmail-xoauth2",
            &["username", "clientSecret", "refreshToken"][..],
        ),
        (
            "google-service-account",
            &["username", "serviceAccountKey"][..],
        ),
    ] {
        let (config, children) = rendered_children(&examples.join(example), |_| {});
        let pod = children.stateful_set.spec.template.spec.as_ref().unwrap();
        let container = &pod.containers[0];
        let auth = config.routes[0].auth.as_ref().unwrap();
        let mut files = vec![auth.username_file.as_str()];
        files.extend(auth.secret_files().into_iter().map(|(_, f)| f));
        let mut seen = Vec::new();
        for file in files {
            let (dir, key) = file.rsplit_once('/').unwrap();
            let mount = container
                .volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .find(|m| m.mount_path == dir)
                .unwrap_or_else(|| panic!("{example}: nothing mounted at {dir}"));
            let volume = pod
                .volumes
                .as_ref()
                .unwrap()
                .iter()
                .find(|v| v.name == mount.name)
                .unwrap();
            let secret = volume.secret.as_ref().unwrap();
            assert_eq!(
                secret.secret_name.as_deref(),
                Some(auth.secret_name.as_str())
            );
            let items: Vec<&str> = secret
                .items
                .iter()
                .flatten()
                .filter(|i| i.path == i.key)
                .map(|i| i.key.as_str())
                .collect();
            assert!(items.contains(&key), "{example}: {key} not in {items:?}");
            seen.push(key);
        }
        assert_eq!(seen, keys, "{example}");
    }
}

/// A rotated refresh token or service account key is a change of the content the relay
/// pods report (their hash covers the new keys' files), so the operator sees when every
/// pod has the new one.
#[test]
fn a_rotated_refresh_token_or_key_changes_the_pods_content_hash() {
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for (example, key) in [
        ("gmail-xoauth2", "refreshToken"),
        ("google-service-account", "serviceAccountKey"),
    ] {
        let set = load_paths(&[examples.join(example)]).unwrap();
        let rendered = render_set(&set, &RenderEnv::pod()).unwrap();
        let org = set.organizations[0].object.clone();
        let routes: Vec<_> = set.routes.iter().map(|l| l.object.clone()).collect();
        let mut secrets: Vec<_> = set.secrets.iter().map(|l| l.object.clone()).collect();
        let names: BTreeSet<String> = secrets.iter().map(|s| s.name_any()).collect();
        let mounted = mounted_secrets(&org, &routes, &names);
        let before = content_hash_in_pods(&rendered.config, &mounted, &secrets);
        let data = secrets[0].string_data.as_mut().unwrap();
        assert!(data.contains_key(key), "{example}: {data:?}");
        data.insert(key.to_string(), "rotated".to_string());
        let after = content_hash_in_pods(&rendered.config, &mounted, &secrets);
        assert_ne!(before, after, "{example}: {key}");
    }
}
