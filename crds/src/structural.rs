//! The OpenAPI value validations of a CRD schema, applied offline as the API server applies
//! them before CEL rules: `maxItems`, `minItems`, `maxLength`, `minLength`,
//! `maxProperties`, `minProperties`, `pattern`, `enum`, `minimum`, `maximum` (and their
//! exclusive forms), with the API server's wording (apiextensions
//! `kubeOpenAPIResultToFieldErrors`: `Too long`, `Too many`, `Unsupported value`, and
//! `Invalid value` with the OpenAPI validator's message).
//!
//! kube's offline validation (`kube::core::cel::validate_cel`) evaluates only the CEL
//! rules, so without this a manifest past a bound would pass `relayctl validate` and fail
//! at `kubectl apply`. The walk is generic: it follows the object through the CRD's
//! `openAPIV3Schema` (`properties`, `items`, `additionalProperties`), so a bound added to a
//! type is enforced without code here. Types themselves are not checked: the manifest
//! loader deserializes into the Rust types first.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};

use serde_json::Value;

/// One schema violation: the field's path and the API server's text for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path such as `spec.users` or `spec.domains[3]`.
    pub field: String,
    /// `Too long: ...`, `Too many: ...`, `Invalid value: ...`.
    pub detail: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.detail)
    }
}

/// Checks `value` against `schema`; returns the violations in document order. `path` is
/// the path of `value` (empty for an object's root).
pub fn validate(schema: &Value, value: &Value, path: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    walk(schema, value, path, &mut errors);
    errors
}

fn child(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// The API server's name of a path in its messages: the object's root is `body`'s own.
fn shown(path: &str) -> &str {
    if path.is_empty() { "body" } else { path }
}

fn walk(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let mut push = |detail: String| {
        errors.push(FieldError {
            field: shown(path).to_string(),
            detail,
        })
    };
    if value.is_null() {
        return;
    }
    let int = |key: &str| schema.get(key).and_then(Value::as_u64);
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let supported: Vec<String> = allowed
            .iter()
            .map(|v| match v.as_str() {
                Some(s) => format!("{s:?}"),
                None => format!("{:?}", v.to_string()),
            })
            .collect();
        push(format!(
            "Unsupported value: {}: supported values: {}",
            go_value(value),
            supported.join(", ")
        ));
    }
    match value {
        Value::String(s) => {
            let chars = s.chars().count() as u64;
            if let Some(max) = int("maxLength")
                && chars > max
            {
                push(too_long(max as usize));
            }
            if let Some(min) = int("minLength")
                && chars < min
            {
                push(format!(
                    "Invalid value: {s:?}: {} in body should be at least {min} chars long",
                    shown(path)
                ));
            }
            if let Some(pattern) = schema.get("pattern").and_then(Value::as_str)
                && !pattern_matches(pattern, s)
            {
                push(pattern_mismatch(shown(path), s, pattern));
            }
        }
        Value::Number(n) => {
            let Some(x) = n.as_f64() else { return };
            let bound = |key: &str| schema.get(key).and_then(Value::as_f64);
            let exclusive = |key: &str| schema.get(key).and_then(Value::as_bool) == Some(true);
            if let Some(min) = bound("minimum") {
                let (bad, words) = if exclusive("exclusiveMinimum") {
                    (x <= min, "greater than")
                } else {
                    (x < min, "greater than or equal to")
                };
                if bad {
                    push(format!(
                        "Invalid value: {n}: {} in body should be {words} {}",
                        shown(path),
                        go_number(min)
                    ));
                }
            }
            if let Some(max) = bound("maximum") {
                let (bad, words) = if exclusive("exclusiveMaximum") {
                    (x >= max, "less than")
                } else {
                    (x > max, "less than or equal to")
                };
                if bad {
                    push(format!(
                        "Invalid value: {n}: {} in body should be {words} {}",
                        shown(path),
                        go_number(max)
                    ));
                }
            }
        }
        Value::Array(items) => {
            if let Some(max) = int("maxItems")
                && items.len() as u64 > max
            {
                push(too_many(items.len(), max as usize));
            }
            if let Some(min) = int("minItems")
                && (items.len() as u64) < min
            {
                push(format!(
                    "Invalid value: {}: {} in body should have at least {min} items",
                    items.len(),
                    shown(path)
                ));
            }
            if let Some(item_schema) = schema.get("items").filter(|i| i.is_object()) {
                for (i, item) in items.iter().enumerate() {
                    walk(item_schema, item, &format!("{path}[{i}]"), errors);
                }
            }
        }
        Value::Object(map) => {
            if let Some(max) = int("maxProperties")
                && map.len() as u64 > max
            {
                push(too_many(map.len(), max as usize));
            }
            if let Some(min) = int("minProperties")
                && (map.len() as u64) < min
            {
                push(format!(
                    "Invalid value: {}: {} in body should have at least {min} properties",
                    map.len(),
                    shown(path)
                ));
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let extra = schema.get("additionalProperties").filter(|a| a.is_object());
            for (key, v) in map {
                if let Some(prop) = props.and_then(|p| p.get(key)) {
                    walk(prop, v, &child(path, key), errors);
                } else if let Some(extra) = extra {
                    walk(extra, v, &child(path, key), errors);
                }
            }
        }
        _ => {}
    }
}

/// A value as Go's `%v` prints it in `field.Error` (strings quoted).
fn go_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// A bound as Go's `%v` prints a float64: no `.0` on whole numbers.
fn go_number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        x.to_string()
    }
}

/// Whether `value` matches the schema pattern `pattern` (Go RE2 syntax, which the patterns
/// of these CRDs share with Rust's `regex`). A pattern that does not compile matches
/// nothing, so that it cannot be silently ignored.
pub fn pattern_matches(pattern: &str, value: &str) -> bool {
    static CACHE: OnceLock<Mutex<HashMap<String, Option<regex::Regex>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = match cache.lock() {
        Ok(c) => c,
        Err(poisoned) => poisoned.into_inner(),
    };
    cache
        .entry(pattern.to_string())
        .or_insert_with(|| regex::Regex::new(pattern).ok())
        .as_ref()
        .is_some_and(|re| re.is_match(value))
}

/// `field.TooLong` of the API server, for a string over `maxLength`.
pub fn too_long(max: usize) -> String {
    let unit = if max == 1 { "byte" } else { "bytes" };
    format!("Too long: may not be more than {max} {unit}")
}

/// `field.TooMany` of the API server, for a list over `maxItems` (or a map over
/// `maxProperties`).
pub fn too_many(actual: usize, max: usize) -> String {
    let unit = if max == 1 { "item" } else { "items" };
    format!("Too many: {actual}: must have at most {max} {unit}")
}

/// `field.Invalid` with the OpenAPI validator's message for a `pattern`.
pub fn pattern_mismatch(path: &str, value: &str, pattern: &str) -> String {
    format!("Invalid value: {value:?}: {path} in body should match '{pattern}'")
}
