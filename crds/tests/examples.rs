//! Every example manifest validates, and every manifest in `examples/invalid/` is refused
//! with the message written in its `# expect:` header.

use std::path::{Path, PathBuf};

use crds::manifest::{load_paths, load_sources};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

#[test]
fn every_valid_example_is_accepted() {
    let mut checked = 0;
    for entry in std::fs::read_dir(examples_dir()).unwrap() {
        let path = entry.unwrap().path();
        if !path.is_dir() || path.ends_with("invalid") || path.ends_with("ci") {
            continue;
        }
        let set = load_paths(std::slice::from_ref(&path))
            .unwrap_or_else(|e| panic!("{} should validate, got:\n{e}", path.display()));
        assert_eq!(
            set.organizations.len(),
            1,
            "{} has one Organization",
            path.display()
        );
        assert!(
            !set.settings.is_empty() && !set.routes.is_empty(),
            "{}",
            path.display()
        );
        checked += 1;
    }
    assert!(
        checked >= 6,
        "quickstart and five scenarios, found {checked}"
    );
}

#[test]
fn every_invalid_example_is_refused_with_its_message() {
    let dir = examples_dir().join("invalid");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} lacks an `# expect:` line", path.display()));
        let errors = load_paths(std::slice::from_ref(&path))
            .expect_err(&format!("{} must be refused", path.display()));
        let printed = errors.to_string();
        assert!(
            printed.contains(expect),
            "{}: expected the message\n  {expect}\ngot\n  {printed}",
            path.display()
        );
        assert!(
            printed.starts_with(&path.display().to_string()),
            "names the file: {printed}"
        );
        assert!(
            printed.contains("document 1"),
            "names the document: {printed}"
        );
        checked += 1;
    }
    assert!(checked >= 15, "one manifest per rule, found {checked}");
}

#[test]
fn errors_name_file_line_document_object_and_field() {
    let text = "\
apiVersion: smtprelay.dev/v1alpha1
kind: IpAllowRange
metadata: {name: ok, namespace: acme}
spec: {description: fine, cidr: 192.0.2.0/24}
---
# the second document
apiVersion: smtprelay.dev/v1alpha1
kind: IpAllowRange
metadata:
  name: wide
  namespace: acme
spec:
  description: Too wide
  cidr: 10.0.0.0/15
";
    let errors = load_sources(&[("ranges.yaml".into(), text.into())]).unwrap_err();
    assert_eq!(errors.0.len(), 1);
    let e = &errors.0[0];
    assert_eq!(
        (
            e.file.as_str(),
            e.document,
            e.line,
            e.object.as_deref(),
            e.field.as_deref()
        ),
        (
            "ranges.yaml",
            2,
            14,
            Some("IpAllowRange acme/wide"),
            Some("spec.cidr")
        )
    );
    assert_eq!(
        e.to_string(),
        "ranges.yaml:14: document 2 (IpAllowRange acme/wide): spec.cidr: cidr covers more than \
         65,536 addresses: use an IPv4 prefix of /16 or longer, or an IPv6 prefix of /112 or longer"
    );
}

#[test]
fn type_errors_and_malformed_yaml_name_the_line() {
    let text = "\
apiVersion: smtprelay.dev/v1alpha1
kind: Organization
metadata: {name: acme, namespace: acme}
spec:
  domains: [acme.example]
  licenses: lots
";
    let errors = load_sources(&[("org.yaml".into(), text.into())]).unwrap_err();
    let printed = errors.to_string();
    assert!(
        printed.starts_with(
            "org.yaml:6: document 1 (Organization acme/acme): spec.licenses: invalid type"
        ),
        "{printed}"
    );

    let broken = "apiVersion: v1\nkind: [unclosed\n";
    let printed = load_sources(&[("broken.yaml".into(), broken.into())])
        .unwrap_err()
        .to_string();
    assert!(printed.starts_with("broken.yaml:"), "{printed}");
    assert!(printed.contains("not valid YAML"), "{printed}");
}

#[test]
fn all_errors_are_reported_not_just_the_first() {
    let errors = load_paths(&[examples_dir().join("invalid")]).unwrap_err();
    let files = std::fs::read_dir(examples_dir().join("invalid"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "yaml")
        })
        .count();
    assert_eq!(errors.0.len(), files);
}

#[test]
fn duplicate_objects_are_refused() {
    let doc = "apiVersion: smtprelay.dev/v1alpha1\nkind: IpAllowRange\nmetadata: {name: a, namespace: acme}\nspec: {description: d, cidr: 192.0.2.1}\n";
    let errors = load_sources(&[
        ("one.yaml".into(), doc.into()),
        ("two.yaml".into(), doc.into()),
    ])
    .unwrap_err();
    assert!(
        errors
            .to_string()
            .contains("duplicate object: also defined at one.yaml: document 1"),
        "{errors}"
    );
}
