//! The book's field reference (`docs/src/reference/fields.md`), generated from the CRDs
//! [`crate::all_crds`] produces, so that what the book says a field accepts is what the API
//! server enforces: type, whether it is required, its default, its bounds, its enumerated
//! values and the messages of the validation rules (CEL) on it and on the objects holding
//! it.
//!
//! This module only formats; the schema is the CRDs'. `crds/tests/reference.rs` fails when
//! the committed page differs from what this prints (`UPDATE_GOLDEN=1` rewrites it).

use std::fmt::Write as _;

use serde_json::Value;

/// The whole page, in Markdown.
pub fn markdown() -> String {
    let mut out = String::new();
    out.push_str(
        "# Field reference\n\n\
         <!-- Generated from the CustomResourceDefinitions by crds/src/reference.rs; do not \
         edit. `UPDATE_GOLDEN=1 cargo test -p crds --test reference` rewrites it. -->\n\n",
    );
    let _ = writeln!(
        out,
        "Every field of every kind of `smtprelay.dev/v1alpha1`, as the API server validates \
         it (Kubernetes {} or newer). `relayctl validate` applies the same schema and rules \
         offline. A path like `spec.hosts[].address` names the `address` of each item of the \
         list `spec.hosts`. *Rules* are the CustomResourceDefinition's validation rules (CEL); \
         the text shown is the message the API server answers with when the rule fails.\n",
        crate::MIN_KUBERNETES_VERSION
    );
    for crd in crate::all_crds() {
        let names = &crd.spec.names;
        let Some(version) = crd.spec.versions.first() else {
            continue;
        };
        let Some(schema) = version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .and_then(|s| serde_json::to_value(s).ok())
        else {
            continue;
        };
        let _ = writeln!(out, "## {}\n", names.kind);
        let short = names.short_names.clone().unwrap_or_default();
        let _ = write!(
            out,
            "`{}.{}`, {} scope, version `{}`",
            names.plural, crd.spec.group, crd.spec.scope, version.name
        );
        if !short.is_empty() {
            let _ = write!(
                out,
                ", short name{} {}",
                if short.len() > 1 { "s" } else { "" },
                short
                    .iter()
                    .map(|s| format!("`{s}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        out.push_str(".\n\n");
        if let Some(d) = schema.get("description").and_then(Value::as_str) {
            let _ = writeln!(out, "{}\n", one_paragraph(d));
        }
        let rules = rules_of(&schema);
        if !rules.is_empty() {
            out.push_str("Rules on the whole object:\n\n");
            for r in rules {
                let _ = writeln!(out, "- {r}");
            }
            out.push('\n');
        }
        for part in ["spec", "status"] {
            let Some(node) = schema.pointer(&format!("/properties/{part}")) else {
                continue;
            };
            let mut rows = Vec::new();
            walk(node, part, is_required(&schema, part), &mut rows);
            let _ = writeln!(out, "### {} `{part}`\n", names.kind,);
            if part == "status" {
                out.push_str("Written by the operator; read-only for users.\n\n");
            }
            out.push_str("| Field | Type | Constraints | Description |\n");
            out.push_str("| --- | --- | --- | --- |\n");
            for row in rows {
                let _ = writeln!(
                    out,
                    "| `{}` | {} | {} | {} |",
                    row.path,
                    cell(&row.ty),
                    cell(&row.constraints.join("; ")),
                    cell(&row.description)
                );
            }
            out.push('\n');
        }
    }
    out
}

struct Row {
    path: String,
    ty: String,
    constraints: Vec<String>,
    description: String,
}

fn walk(node: &Value, path: &str, required: bool, rows: &mut Vec<Row>) {
    let mut constraints = Vec::new();
    if required {
        constraints.push("required".to_string());
    }
    constraints.extend(bounds_of(node));
    for r in rules_of(node) {
        constraints.push(format!("rule: {r}"));
    }
    // A list's item rules and bounds belong to the list's row when its items are scalars.
    let items = node.get("items");
    let scalar_items = items.is_some_and(|i| i.get("properties").is_none());
    if let (Some(i), true) = (items, scalar_items) {
        for b in bounds_of(i) {
            constraints.push(format!("each item: {b}"));
        }
        for r in rules_of(i) {
            constraints.push(format!("each item, rule: {r}"));
        }
    }
    rows.push(Row {
        path: path.to_string(),
        ty: type_of(node),
        constraints,
        description: node
            .get("description")
            .and_then(Value::as_str)
            .map(one_paragraph)
            .unwrap_or_default(),
    });
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            walk(
                child,
                &format!("{path}.{name}"),
                is_required(node, name),
                rows,
            );
        }
    }
    if let (Some(i), false) = (items, scalar_items) {
        let item_path = format!("{path}[]");
        let mut item_constraints: Vec<String> = bounds_of(i);
        item_constraints.extend(rules_of(i).into_iter().map(|r| format!("rule: {r}")));
        if !item_constraints.is_empty() {
            rows.push(Row {
                path: item_path.clone(),
                ty: "object".into(),
                constraints: item_constraints,
                description: String::new(),
            });
        }
        if let Some(props) = i.get("properties").and_then(Value::as_object) {
            for (name, child) in props {
                walk(
                    child,
                    &format!("{item_path}.{name}"),
                    is_required(i, name),
                    rows,
                );
            }
        }
    }
    if let Some(extra) = node.get("additionalProperties").filter(|v| v.is_object()) {
        let map_path = format!("{path}.<key>");
        if let Some(props) = extra.get("properties").and_then(Value::as_object) {
            for (name, child) in props {
                walk(
                    child,
                    &format!("{map_path}.{name}"),
                    is_required(extra, name),
                    rows,
                );
            }
        }
    }
}

fn is_required(parent: &Value, name: &str) -> bool {
    parent
        .get("required")
        .and_then(Value::as_array)
        .is_some_and(|r| r.iter().any(|v| v.as_str() == Some(name)))
}

fn type_of(node: &Value) -> String {
    if node
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true)
    {
        return "integer or string".into();
    }
    let ty = node.get("type").and_then(Value::as_str).unwrap_or("any");
    let with_format = |t: &str, n: &Value| match n.get("format").and_then(Value::as_str) {
        Some(f) => format!("{t} ({f})"),
        None => t.to_string(),
    };
    match ty {
        "array" => {
            let item = node
                .get("items")
                .map(type_of)
                .unwrap_or_else(|| "any".into());
            format!("list of {item}")
        }
        "object" => match node.get("additionalProperties") {
            Some(v) if v.is_object() => format!("map of string to {}", type_of(v)),
            _ => "object".into(),
        },
        t => with_format(t, node),
    }
}

fn bounds_of(node: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let num = |k: &str| node.get(k).and_then(Value::as_f64);
    let fmt = |v: f64| {
        if v.fract() == 0.0 {
            format!("{}", v as i64)
        } else {
            format!("{v}")
        }
    };
    if let Some(v) = node.get("default") {
        out.push(format!("default `{}`", compact(v)));
    }
    if let Some(values) = node.get("enum").and_then(Value::as_array) {
        out.push(format!(
            "one of {}",
            values
                .iter()
                .map(|v| format!("`{}`", compact(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    match (num("minimum"), num("maximum")) {
        (Some(a), Some(b)) => out.push(format!("{} to {}", fmt(a), fmt(b))),
        (Some(a), None) => out.push(format!("at least {}", fmt(a))),
        (None, Some(b)) => out.push(format!("at most {}", fmt(b))),
        (None, None) => {}
    }
    for (min, max, unit) in [
        ("minLength", "maxLength", "characters"),
        ("minItems", "maxItems", "items"),
        ("minProperties", "maxProperties", "entries"),
    ] {
        match (num(min), num(max)) {
            (Some(a), Some(b)) => out.push(format!("{} to {} {unit}", fmt(a), fmt(b))),
            (Some(a), None) => out.push(format!("at least {} {unit}", fmt(a))),
            (None, Some(b)) => out.push(format!("at most {} {unit}", fmt(b))),
            (None, None) => {}
        }
    }
    if let Some(p) = node.get("pattern").and_then(Value::as_str) {
        out.push(format!("matches `{p}`"));
    }
    if let Some(t) = node.get("x-kubernetes-list-type").and_then(Value::as_str) {
        match t {
            "set" => out.push("items unique".into()),
            "map" => {
                let keys = node
                    .get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .map(|k| {
                        k.iter()
                            .filter_map(Value::as_str)
                            .map(|s| format!("`{s}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                out.push(format!("items keyed by {keys}"));
            }
            _ => {}
        }
    }
    if node.get("nullable").and_then(Value::as_bool) == Some(true) {
        out.push("may be null".into());
    }
    out
}

fn rules_of(node: &Value) -> Vec<String> {
    node.get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .map(|rules| {
            rules
                .iter()
                .map(|r| {
                    let message = r
                        .get("message")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .or_else(|| {
                            r.get("rule")
                                .and_then(Value::as_str)
                                .map(|rule| format!("`{rule}` must hold"))
                        })
                        .unwrap_or_default();
                    match r.get("reason").and_then(Value::as_str) {
                        Some(reason) if reason != "FieldValueInvalid" => {
                            format!("{message} ({reason})")
                        }
                        _ => message,
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

fn compact(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A description on one line: the schema's text keeps the doc comments' line breaks.
fn one_paragraph(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A table cell: no line breaks, no bare `|`.
fn cell(s: &str) -> String {
    one_paragraph(s).replace('|', "\\|")
}
