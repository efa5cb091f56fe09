//! The CEL declaration type of an OpenAPI schema node, with the size bounds the cost
//! estimator reads: a port of `SchemaDeclType` (k8s.io/apiserver `pkg/cel/common/schemas.go`)
//! and the `DeclType` constructors and minimum serialized sizes of `pkg/cel/types.go` and
//! `pkg/cel/limits.go`.

use std::collections::BTreeMap;
use std::rc::Rc;

use serde_json::Value;

/// `DefaultMaxRequestSizeBytes`: the largest request the API server accepts, 3 MiB. Every
/// size without a declared bound is derived from it.
pub const MAX_REQUEST_SIZE_BYTES: i64 = 3 * 1024 * 1024;

// pkg/cel/limits.go
const MAX_DURATION_SIZE_JSON: i64 = 32;
const MAX_DATETIME_SIZE_JSON: i64 = 32;
const MIN_DURATION_SIZE_JSON: i64 = 3;
const JSON_DATE_SIZE: i64 = 12;
const MIN_DATETIME_SIZE_JSON: i64 = 21;
const MIN_STRING_SIZE: i64 = 2;
const MIN_BOOL_SIZE: i64 = 4;
const MIN_NUMBER_SIZE: i64 = 1;

/// What a value of a [`DeclType`] is.
#[derive(Clone, Debug)]
pub enum DeclKind {
    /// An object with a fixed set of (escaped) field names.
    Object(BTreeMap<String, Rc<DeclType>>),
    /// A list of `elem`.
    List(Rc<DeclType>),
    /// A map from strings to `elem` (an object with `additionalProperties`).
    Map(Rc<DeclType>, Rc<DeclType>),
    /// A scalar or a string-like value.
    Simple(Simple),
}

/// The scalar and string-like CEL types a schema maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Simple {
    Bool,
    Int,
    Double,
    String,
    Bytes,
    Duration,
    Timestamp,
    /// `x-kubernetes-int-or-string` (and the `dyn` element of untyped maps).
    Dyn,
}

/// A port of `apiservercel.DeclType`: the type plus `MaxElements` (the largest `size()`
/// a value can have: characters of a string, items of a list, entries of a map) and
/// `MinSerializedSize` (the fewest JSON bytes a value takes).
#[derive(Clone, Debug)]
pub struct DeclType {
    pub kind: DeclKind,
    pub max_elements: i64,
    pub min_serialized_size: i64,
}

impl DeclType {
    fn simple(kind: Simple, min_size: i64) -> Self {
        DeclType {
            kind: DeclKind::Simple(kind),
            max_elements: 0,
            min_serialized_size: min_size,
        }
    }

    /// `apiservercel.StringType`, as map keys are declared: a string with `MaxElements` 0.
    pub fn string_key() -> Self {
        Self::simple(Simple::String, MIN_STRING_SIZE)
    }

    /// The field `name` of an object type.
    pub fn field(&self, name: &str) -> Option<&Rc<DeclType>> {
        match &self.kind {
            DeclKind::Object(fields) => fields.get(name),
            _ => None,
        }
    }
}

/// Reads an integer keyword (`maxLength`, `maxItems`, ...) of a schema node.
fn int(schema: &Value, key: &str) -> Option<i64> {
    schema.get(key).and_then(Value::as_i64)
}

fn flag(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool) == Some(true)
}

fn zero_if_negative(v: i64) -> i64 {
    v.max(0)
}

/// `estimateMaxStringLengthPerRequest`.
fn max_string_length_per_request(schema: &Value) -> i64 {
    if flag(schema, "x-kubernetes-int-or-string") {
        return MAX_REQUEST_SIZE_BYTES - 2;
    }
    match schema.get("format").and_then(Value::as_str) {
        Some("duration") => MAX_DURATION_SIZE_JSON,
        Some("date") => JSON_DATE_SIZE,
        Some("date-time") => MAX_DATETIME_SIZE_JSON,
        // subtract 2 for the quotes
        _ => MAX_REQUEST_SIZE_BYTES - 2,
    }
}

/// `estimateMaxStringEnumLength`: the longest enum value, in bytes.
fn max_string_enum_length(schema: &Value) -> i64 {
    schema
        .get("enum")
        .and_then(Value::as_array)
        .map(|values| {
            values
                .iter()
                .filter_map(Value::as_str)
                .map(|s| s.len() as i64)
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// `estimateMaxArrayItemsFromMinSize`.
pub fn max_array_items_from_min_size(min_size: i64) -> i64 {
    (MAX_REQUEST_SIZE_BYTES - 2) / (min_size + 1)
}

/// `estimateMaxAdditionalPropertiesFromMinSize`.
pub fn max_additional_properties_from_min_size(min_size: i64) -> i64 {
    // key "" + colon + comma + the smallest value
    (MAX_REQUEST_SIZE_BYTES - 2) / (min_size + 6)
}

/// `estimateMaxElementsFromMaxLength`: `maxLength` counts code points, sizes count bytes,
/// and a code point takes up to 4 bytes.
fn max_elements_from_max_length(max_length: i64) -> i64 {
    zero_if_negative(max_length).saturating_mul(4)
}

/// `WithTypeAndObjectMeta`: at the root of a resource `apiVersion`, `kind`,
/// `metadata.name` and `metadata.generateName` are visible to rules even when the schema
/// does not declare them. A schema that declares all of them (as strings) is kept as it is;
/// otherwise the four are added as unbounded strings.
fn with_type_and_object_meta(schema: &Value) -> Value {
    let is_string =
        |v: Option<&Value>| v.and_then(|v| v.get("type")).and_then(Value::as_str) == Some("string");
    let props = schema.get("properties");
    let meta = props.and_then(|p| p.get("metadata"));
    let meta_props = meta.and_then(|m| m.get("properties"));
    if props.is_some()
        && is_string(props.and_then(|p| p.get("kind")))
        && is_string(props.and_then(|p| p.get("apiVersion")))
        && meta.and_then(|m| m.get("type")).and_then(Value::as_str) == Some("object")
        && is_string(meta_props.and_then(|p| p.get("name")))
        && is_string(meta_props.and_then(|p| p.get("generateName")))
    {
        return schema.clone();
    }
    let mut result = schema.clone();
    let string = serde_json::json!({"type": "string"});
    if let Some(obj) = result.as_object_mut() {
        let props = obj
            .entry("properties")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(props) = props.as_object_mut() {
            props.insert("kind".into(), string.clone());
            props.insert("apiVersion".into(), string.clone());
            props.insert(
                "metadata".into(),
                serde_json::json!({
                    "type": "object",
                    "properties": {"name": string.clone(), "generateName": string},
                }),
            );
        }
    }
    result
}

/// `SchemaDeclType`: the declaration type of a structural schema node, or `None` when the
/// node is not visible to CEL (no type, or items/values that are not).
pub fn schema_decl_type(schema: &Value, is_resource_root: bool) -> Option<Rc<DeclType>> {
    if flag(schema, "x-kubernetes-int-or-string") {
        let mut dyn_type = DeclType::simple(Simple::Dyn, 1);
        dyn_type.max_elements = match int(schema, "maxLength") {
            Some(max) => max_elements_from_max_length(max),
            None => max_string_length_per_request(schema),
        };
        return Some(Rc::new(dyn_type));
    }
    let rooted;
    let schema = if is_resource_root {
        rooted = with_type_and_object_meta(schema);
        &rooted
    } else {
        schema
    };
    let embedded = |s: &Value| flag(s, "x-kubernetes-embedded-resource");
    match schema.get("type").and_then(Value::as_str)? {
        "array" => {
            let items = schema.get("items")?;
            let item_type = schema_decl_type(items, embedded(items))?;
            let max_items = match int(schema, "maxItems") {
                Some(max) => zero_if_negative(max),
                None => max_array_items_from_min_size(item_type.min_serialized_size),
            };
            Some(Rc::new(DeclType {
                kind: DeclKind::List(item_type),
                max_elements: max_items,
                // a list can always be written as []
                min_serialized_size: 2,
            }))
        }
        "object" => {
            if let Some(additional) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                let value_type = schema_decl_type(additional, embedded(additional))?;
                let max_properties = match int(schema, "maxProperties") {
                    Some(max) => zero_if_negative(max),
                    None => max_additional_properties_from_min_size(value_type.min_serialized_size),
                };
                return Some(Rc::new(DeclType {
                    kind: DeclKind::Map(Rc::new(DeclType::string_key()), value_type),
                    max_elements: max_properties,
                    min_serialized_size: 2,
                }));
            }
            let required: Vec<&str> = schema
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut fields = BTreeMap::new();
            // an object is at least {}
            let mut min_size = 2i64;
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (name, prop) in props {
                    let Some(field_type) = schema_decl_type(prop, embedded(prop)) else {
                        continue;
                    };
                    // required properties without a default count towards the minimum size
                    if required.contains(&name.as_str()) && prop.get("default").is_none() {
                        min_size += name.len() as i64 + field_type.min_serialized_size + 4;
                    }
                    if let Some(escaped) = escape(name) {
                        fields.insert(escaped, field_type);
                    }
                }
            }
            Some(Rc::new(DeclType {
                kind: DeclKind::Object(fields),
                max_elements: 0,
                min_serialized_size: min_size,
            }))
        }
        "string" => {
            let format = schema.get("format").and_then(Value::as_str);
            let (kind, min_size) = match format {
                Some("byte") => {
                    let mut t = DeclType::simple(Simple::Bytes, MIN_STRING_SIZE);
                    t.max_elements = match int(schema, "maxLength") {
                        Some(max) => zero_if_negative(max),
                        None => max_string_length_per_request(schema),
                    };
                    return Some(Rc::new(t));
                }
                Some("duration") => (Simple::Duration, MIN_DURATION_SIZE_JSON),
                Some("date") => (Simple::Timestamp, JSON_DATE_SIZE),
                Some("date-time") => (Simple::Timestamp, MIN_DATETIME_SIZE_JSON),
                _ => (Simple::String, MIN_STRING_SIZE),
            };
            let mut t = DeclType::simple(kind, min_size);
            t.max_elements = if kind != Simple::String {
                max_string_length_per_request(schema)
            } else if let Some(max) = int(schema, "maxLength") {
                max_elements_from_max_length(max)
            } else if schema
                .get("enum")
                .and_then(Value::as_array)
                .is_some_and(|e| !e.is_empty())
            {
                max_string_enum_length(schema)
            } else {
                max_string_length_per_request(schema)
            };
            Some(Rc::new(t))
        }
        "boolean" => Some(Rc::new(DeclType::simple(Simple::Bool, MIN_BOOL_SIZE))),
        "number" => Some(Rc::new(DeclType::simple(Simple::Double, MIN_NUMBER_SIZE))),
        "integer" => Some(Rc::new(DeclType::simple(Simple::Int, MIN_NUMBER_SIZE))),
        _ => None,
    }
}

/// CEL's reserved words: a property named like one is written `__name__` in rules.
const RESERVED: &[&str] = &[
    "true",
    "false",
    "null",
    "in",
    "as",
    "break",
    "const",
    "continue",
    "else",
    "for",
    "function",
    "if",
    "import",
    "let",
    "loop",
    "package",
    "namespace",
    "return",
    "var",
    "void",
    "while",
];

/// `apiservercel.Escape`: the CEL identifier of a property name, or `None` when the name
/// cannot be written in CEL (such properties are invisible to rules).
pub fn escape(name: &str) -> Option<String> {
    if RESERVED.contains(&name) {
        return Some(format!("__{name}__"));
    }
    let mut chars = name.chars();
    let first = chars.next()?;
    let ok_first = first.is_ascii_alphabetic() || matches!(first, '_' | '.' | '-' | '/');
    let ok_rest = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/'));
    if !ok_first || !ok_rest {
        return None;
    }
    let mut out = String::with_capacity(name.len());
    let bytes: Vec<char> = name.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            '_' if bytes.get(i + 1) == Some(&'_') => {
                out.push_str("__underscores__");
                i += 2;
                continue;
            }
            '.' => out.push_str("__dot__"),
            '-' => out.push_str("__dash__"),
            '/' => out.push_str("__slash__"),
            c => out.push(c),
        }
        i += 1;
    }
    Some(out)
}

/// `maxCardinality` of `compilation.go`: how many times data of at least `min_size` bytes
/// fits in one request, the fallback when a list or map above a rule is unbounded.
pub fn max_cardinality(min_size: i64) -> u64 {
    // at least one comma between elements
    (MAX_REQUEST_SIZE_BYTES / (min_size + 1)) as u64
}
