//! Golden files of the children the operator applies for every example (except
//! `invalid/` and `ci/`): ConfigMap, Deployment, Service and PodDisruptionBudget as YAML. A change in
//! what the operator deploys shows up as a reviewable diff of `tests/golden/<example>.yaml`.
//! Regenerate with `UPDATE_GOLDEN=1 cargo test -p operator --test controller_golden`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crds::manifest::load_paths;
use kube::ResourceExt;
use operator::controller::children::{ChildDefaults, build, mounted_secrets, secrets_hash};
use operator::manifests::{organization_namespace, render_set};
use operator::render::RenderEnv;

fn children_yaml(example: &Path) -> String {
    let set = load_paths(&[example.to_path_buf()]).unwrap();
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
    children.to_yaml().unwrap()
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
