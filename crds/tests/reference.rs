//! The book's field reference is generated from the CRDs: this test fails when the page in
//! `docs/src/reference/fields.md` no longer says what the schema enforces (a field added, a
//! bound or a rule message changed). `UPDATE_GOLDEN=1` rewrites the page.

use std::path::PathBuf;

#[test]
fn the_books_field_reference_matches_the_crds() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/src/reference/fields.md");
    let generated = crds::reference::markdown();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &generated).expect("write the field reference");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is stale: the CRDs changed. Run `UPDATE_GOLDEN=1 cargo test -p crds --test reference` \
         and commit the page.",
        path.display()
    );
}

#[test]
fn every_field_of_every_kind_is_in_the_reference() {
    // Each leaf property of each CRD's spec appears as a row: a field missing from the page
    // is a field users cannot look up.
    let page = crds::reference::markdown();
    for crd in crds::all_crds() {
        let kind = crd.spec.names.kind.clone();
        let schema = crds::crd_schema(&kind).expect("schema");
        let mut paths = Vec::new();
        collect(&schema["properties"]["spec"], "spec", &mut paths);
        assert!(!paths.is_empty(), "{kind} has no spec fields?");
        for p in paths {
            assert!(
                page.contains(&format!("| `{p}` |")),
                "{kind}: `{p}` is missing from the field reference"
            );
        }
    }
}

fn collect(node: &serde_json::Value, path: &str, out: &mut Vec<String>) {
    out.push(path.to_string());
    if let Some(props) = node.get("properties").and_then(|p| p.as_object()) {
        for (k, v) in props {
            collect(v, &format!("{path}.{k}"), out);
        }
    }
    if let Some(props) = node
        .get("items")
        .and_then(|i| i.get("properties"))
        .and_then(|p| p.as_object())
    {
        for (k, v) in props {
            collect(v, &format!("{path}[].{k}"), out);
        }
    }
}
