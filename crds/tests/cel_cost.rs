//! The CEL cost estimator against the API server's own numbers, and the CRDs of this
//! project against the API server's limits and the project's budget.
//!
//! - `kubernetes_test_cost_estimation_table`: Kubernetes apiextensions
//!   `pkg/apiserver/schema/cel/compilation_test.go` `TestCostEstimation`, every row, each in
//!   its "calc maxLength" (no bounds) and "set maxLength" variant, with the schemas its
//!   generators build. Rows whose expected cost is 0 are not checked, as in the Go test.
//! - `crd_cost_total_over_the_limit_is_refused_like_the_api_server`: the CRD validation
//!   case "cost total exceeds total limit" (cost × cardinality, the 1% rule for
//!   contributors, the messages).
//! - `our_crds_fit_the_api_server_and_the_project_budget`: the estimate of every rule of
//!   `crds::all_crds()`, printed, and the budget checks.

use crds::cel_cost::{self, ResultType, estimate_expression};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Value, json};

type Gen = Box<dyn Fn(Option<i64>) -> Value>;

fn with_rule(mut schema: Value, rule: &str) -> Value {
    schema["x-kubernetes-validations"] = json!([{ "rule": rule }]);
    schema
}

fn set(schema: &mut Value, key: &str, value: Option<i64>) {
    if let Some(v) = value {
        schema[key] = json!(v);
    }
}

/// `parseRuleType`: the schema of a scalar rule type.
fn scalar(t: &str) -> Value {
    match t {
        "duration" | "date" | "date-time" => json!({"type": "string", "format": t}),
        "int-or-string" => json!({"x-kubernetes-int-or-string": true}),
        _ => json!({ "type": t }),
    }
}

fn array_with_rule(item: &'static str, rule: &'static str) -> Gen {
    Box::new(move |max| {
        let mut s = json!({"type": "array", "items": scalar(item)});
        set(&mut s, "maxItems", max);
        with_rule(s, rule)
    })
}

fn array_of_arrays_with_rule(item: &'static str, rule: &'static str) -> Gen {
    Box::new(move |max| {
        let mut s = json!({"type": "array", "items": {"type": "array", "items": {"type": item}}});
        set(&mut s, "maxItems", max);
        with_rule(s, rule)
    })
}

fn object_for_map() -> Value {
    json!({
        "type": "object",
        "required": ["required"],
        "properties": {"required": {"type": "string"}, "optional": {"type": "string"}},
    })
}

fn object_array_with_rule(rule: &'static str) -> Gen {
    Box::new(move |max| {
        let mut s = json!({"type": "array", "items": object_for_map()});
        set(&mut s, "maxItems", max);
        with_rule(s, rule)
    })
}

fn map_array_with_rule(value: &'static str, rule: &'static str) -> Gen {
    Box::new(move |max| {
        let mut s = json!({
            "type": "array",
            "items": {"type": "object", "additionalProperties": {"type": value}},
        });
        set(&mut s, "maxItems", max);
        with_rule(s, rule)
    })
}

fn map_with_rule(value: &'static str, rule: &'static str) -> Gen {
    Box::new(move |max| {
        let mut s = json!({"type": "object", "additionalProperties": scalar(value)});
        set(&mut s, "maxProperties", max);
        with_rule(s, rule)
    })
}

fn map_with_custom_item_rule(item: Value, rule: &'static str) -> Gen {
    Box::new(move |max| {
        let mut s = json!({"type": "object", "additionalProperties": item.clone()});
        set(&mut s, "maxProperties", max);
        with_rule(s, rule)
    })
}

fn string_with_rule(rule: &'static str) -> Gen {
    Box::new(move |max| {
        let mut s = json!({"type": "string"});
        set(&mut s, "maxLength", max);
        with_rule(s, rule)
    })
}

fn bytes_with_rule(rule: &'static str) -> Gen {
    Box::new(move |max| {
        let mut s = json!({"type": "string", "format": "byte"});
        set(&mut s, "maxLength", max);
        with_rule(s, rule)
    })
}

fn enum_with_rule(rule: &'static str, values: &'static [&'static str]) -> Gen {
    Box::new(move |max| {
        let mut s = json!({"type": "string", "enum": values});
        set(&mut s, "maxLength", max);
        with_rule(s, rule)
    })
}

fn nested_spec_with_rule(rule: &'static str) -> Gen {
    Box::new(move |max| {
        let mut value = json!({"type": "string"});
        set(&mut value, "maxLength", max);
        let mut s = json!({"type": "object", "additionalProperties": value});
        set(&mut s, "maxProperties", max);
        with_rule(s, rule)
    })
}

fn nested_root_rule(rule: &'static str, all_bounded: bool) -> Gen {
    Box::new(move |max| {
        let mut inner = object_for_map();
        if all_bounded {
            set(&mut inner, "maxProperties", max);
        }
        let mut items = json!({"type": "object", "additionalProperties": inner});
        set(&mut items, "maxProperties", max);
        let mut s = json!({"type": "array", "items": items});
        if all_bounded {
            set(&mut s, "maxItems", max);
        }
        with_rule(s, rule)
    })
}

fn string_list_with_rule(rule: &'static str) -> Gen {
    Box::new(move |max| {
        let mut item = json!({"type": "string"});
        set(&mut item, "maxLength", max);
        let mut s = json!({"type": "array", "items": item});
        set(&mut s, "maxItems", max);
        with_rule(s, rule)
    })
}

fn object_with_rule(props: &'static [(&'static str, Option<i64>)], rule: &'static str) -> Gen {
    Box::new(move |max| {
        let mut properties = serde_json::Map::new();
        for (name, fixed) in props {
            let mut p = json!({"type": "string"});
            set(&mut p, "maxLength", fixed.or(max));
            properties.insert(name.to_string(), p);
        }
        with_rule(json!({"type": "object", "properties": properties}), rule)
    })
}

/// `costLimit` of the Go test (`expectCalcCostExceedsLimit`).
const COST_LIMIT: u64 = 100_000_000;

/// Expected cost: exact, at least the limit, or not checked (0 in the Go table).
#[derive(Clone, Copy)]
enum Want {
    Exactly(u64),
    AtLeastLimit,
    Unchecked,
}
use Want::*;

fn want(v: u64) -> Want {
    if v == 0 { Unchecked } else { Exactly(v) }
}

#[test]
fn kubernetes_test_cost_estimation_table() {
    let rows: Vec<(&str, Gen, Want, i64, Want)> = vec![
        (
            "number array with all",
            array_with_rule("number", "self.all(x, true)"),
            want(4718591),
            10,
            want(32),
        ),
        (
            "string array with all",
            array_with_rule("string", "self.all(x, true)"),
            want(3145727),
            20,
            want(62),
        ),
        (
            "boolean array with all",
            array_with_rule("boolean", "self.all(x, true)"),
            want(1887437),
            5,
            want(17),
        ),
        (
            "array of number arrays with all",
            array_of_arrays_with_rule("number", "self.all(x, true)"),
            want(3145727),
            100,
            want(302),
        ),
        (
            "array of objects with all",
            object_array_with_rule("self.all(x, true)"),
            want(555128),
            50,
            want(152),
        ),
        (
            "map of numbers with all",
            map_with_rule("number", "self.all(x, true)"),
            want(1348169),
            10,
            want(32),
        ),
        (
            "map of numbers with has",
            map_with_rule("number", "has(self.x)"),
            want(0),
            100,
            want(0),
        ),
        (
            "map of strings with all",
            map_with_rule("string", "self.all(x, true)"),
            want(1179647),
            3,
            want(11),
        ),
        (
            "map of strings with has",
            map_with_rule("string", "has(self.x)"),
            want(0),
            550,
            want(0),
        ),
        (
            "map of booleans with all",
            map_with_rule("boolean", "self.all(x, true)"),
            want(943718),
            100,
            want(302),
        ),
        (
            "map of booleans with has",
            map_with_rule("boolean", "has(self.x)"),
            want(0),
            1024,
            want(0),
        ),
        (
            "string with contains",
            string_with_rule("self.contains('test')"),
            want(314574),
            10,
            want(5),
        ),
        (
            "string with startsWith",
            string_with_rule("self.startsWith('test')"),
            want(2),
            15,
            want(2),
        ),
        (
            "string with endsWith",
            string_with_rule("self.endsWith('test')"),
            want(2),
            30,
            want(2),
        ),
        (
            "concat string",
            string_with_rule(r#"size(self + "hello") > size("hello")"#),
            want(314578),
            4,
            want(7),
        ),
        (
            "index of array with numbers",
            array_with_rule("number", "self[1] == 0.0"),
            want(2),
            5000,
            want(2),
        ),
        (
            "index of array with strings",
            array_with_rule("string", "self[1] == self[1]"),
            want(314577),
            8,
            want(314577),
        ),
        (
            "O(n^2) loop with numbers",
            array_with_rule("number", "self.all(x, self.all(y, true))"),
            AtLeastLimit,
            10,
            want(352),
        ),
        (
            "O(n^3) loop with numbers",
            array_with_rule("number", "self.all(x, self.all(y, self.all(z, true)))"),
            AtLeastLimit,
            10,
            want(3552),
        ),
        (
            "regex matches simple",
            string_with_rule(r#"self.matches("x")"#),
            want(314574),
            50,
            want(22),
        ),
        (
            "regex matches empty string",
            string_with_rule(r#""".matches("(((((((((())))))))))[0-9]")"#),
            want(7),
            10,
            want(7),
        ),
        (
            "regex matches empty regex",
            string_with_rule(r#"self.matches("")"#),
            want(1),
            100,
            want(1),
        ),
        (
            "map of strings with value length",
            nested_spec_with_rule("self.all(x, x.contains(self[x]))"),
            want(2752507),
            10,
            want(72),
        ),
        (
            "set array maxLength to zero",
            array_with_rule("number", "self[3] == 0.0"),
            want(2),
            0,
            want(2),
        ),
        (
            "set map maxLength to zero",
            map_with_rule("number", r#"self["x"] == 0.0"#),
            want(2),
            0,
            want(2),
        ),
        (
            "set string maxLength to zero",
            string_with_rule(r#"self == "x""#),
            want(2),
            0,
            want(1),
        ),
        (
            "set bytes maxLength to zero",
            bytes_with_rule(r#"self == b"x""#),
            want(2),
            0,
            want(1),
        ),
        (
            "set maxLength greater than estimated maxLength",
            array_with_rule("number", "self.all(x, x == 0.0)"),
            want(6291454),
            3 * 1024 * 2048,
            want(25165826),
        ),
        (
            "nested types with root rule with all supporting maxLength",
            nested_root_rule(r#"self.all(x, x["y"].required == "z")"#, true),
            want(7340027),
            10,
            want(72),
        ),
        (
            "nested types with root rule with one supporting maxLength",
            nested_root_rule(r#"self.all(x, x["y"].required == "z")"#, false),
            want(7340027),
            10,
            want(7340027),
        ),
        (
            "int-or-string array with all",
            array_with_rule("int-or-string", "self.all(x, true)"),
            want(4718591),
            10,
            want(32),
        ),
        (
            "index of array with int-or-strings",
            array_with_rule("int-or-string", "self[0] == 5"),
            want(3),
            10,
            want(3),
        ),
        (
            "index of array with booleans",
            array_with_rule("boolean", "self[0] == false"),
            want(2),
            25,
            want(2),
        ),
        (
            "index of array of objects",
            object_array_with_rule("self[0] == null"),
            want(2),
            422,
            want(2),
        ),
        (
            "index of array of array of numnbers",
            array_of_arrays_with_rule("number", "self[0][0] == -1.0"),
            want(3),
            51,
            want(3),
        ),
        (
            "array of number maps with all",
            map_array_with_rule("number", "self.all(x, x.y == 25.2)"),
            want(6291452),
            12,
            want(74),
        ),
        (
            "index of array of number maps",
            map_array_with_rule("number", "self[0].x > 2.0"),
            want(4),
            3000,
            want(4),
        ),
        (
            "duration array with all",
            array_with_rule("duration", "self.all(x, true)"),
            want(2359295),
            5,
            want(17),
        ),
        (
            "index of duration array",
            array_with_rule("duration", "self[0].getHours() == 2"),
            want(4),
            525,
            want(4),
        ),
        (
            "date array with all",
            array_with_rule("date", "self.all(x, true)"),
            want(725936),
            15,
            want(47),
        ),
        (
            "index of date array",
            array_with_rule("date", "self[2].getDayOfMonth() == 13"),
            want(4),
            42,
            want(4),
        ),
        (
            "date-time array with all",
            array_with_rule("date-time", "self.all(x, true)"),
            want(428963),
            25,
            want(77),
        ),
        (
            "index of date-time array",
            array_with_rule("date-time", "self[2].getMinutes() == 45"),
            want(4),
            99,
            want(4),
        ),
        (
            "map of int-or-strings with all",
            map_with_rule("int-or-string", "self.all(x, true)"),
            want(1348169),
            15,
            want(47),
        ),
        (
            "map of int-or-strings with has",
            map_with_rule("int-or-string", "has(self.x)"),
            want(0),
            5000,
            want(0),
        ),
        (
            "map of objects with all",
            map_with_custom_item_rule(object_for_map(), "self.all(x, true)"),
            want(428963),
            20,
            want(62),
        ),
        (
            "map of objects with has",
            map_with_custom_item_rule(object_for_map(), "has(self.x)"),
            want(0),
            9001,
            want(0),
        ),
        (
            "map of number maps with all",
            map_with_custom_item_rule(
                json!({"type": "object", "additionalProperties": {"type": "number"}}),
                "self.all(x, true)",
            ),
            want(1179647),
            10,
            want(32),
        ),
        (
            "map of number maps with has",
            map_with_custom_item_rule(
                json!({"type": "object", "additionalProperties": {"type": "number"}}),
                "has(self.x)",
            ),
            want(0),
            101,
            want(0),
        ),
        (
            "map of number arrays with all",
            map_with_custom_item_rule(
                json!({"type": "array", "items": {"type": "number"}}),
                "self.all(x, true)",
            ),
            want(1179647),
            25,
            want(77),
        ),
        (
            "map of number arrays with has",
            map_with_custom_item_rule(
                json!({"type": "array", "items": {"type": "number"}}),
                "has(self.x)",
            ),
            want(0),
            40000,
            want(0),
        ),
        (
            "map of durations with all",
            map_with_rule("duration", "self.all(x, true)"),
            want(1048577),
            5,
            want(17),
        ),
        (
            "map of durations with has",
            map_with_rule("duration", "has(self.x)"),
            want(0),
            256,
            want(0),
        ),
        (
            "map of dates with all",
            map_with_rule("date", "self.all(x, true)"),
            want(524288),
            10,
            want(32),
        ),
        (
            "map of dates with has",
            map_with_rule("date", "has(self.x)"),
            want(0),
            65536,
            want(0),
        ),
        (
            "map of date-times with all",
            map_with_rule("date-time", "self.all(x, true)"),
            want(349526),
            25,
            want(77),
        ),
        (
            "map of date-times with has",
            map_with_rule("date-time", "has(self.x)"),
            want(0),
            490,
            want(0),
        ),
        (
            "extended library regex find",
            string_with_rule("self.find('[0-9]+') == ''"),
            want(629147),
            10,
            want(11),
        ),
        (
            "extended library join",
            string_list_with_rule("self.join(' ') == 'aa bb'"),
            want(329853068905),
            10,
            want(43),
        ),
        (
            "extended library isSorted",
            string_list_with_rule("self.isSorted() == true"),
            want(329854432052),
            10,
            want(52),
        ),
        (
            "extended library replace",
            object_with_rule(
                &[("str", None), ("before", Some(2)), ("after", Some(4))],
                "self.str.replace(self.before, self.after) == 'does not matter'",
            ),
            want(629154),
            4,
            want(12),
        ),
        (
            "extended library split",
            object_with_rule(
                &[("str", None), ("separator", None)],
                "self.str.split(self.separator) == []",
            ),
            want(629160),
            10,
            want(22),
        ),
        (
            "extended library lowerAscii",
            string_with_rule("self.lowerAscii() == 'lower!'"),
            want(314575),
            10,
            want(6),
        ),
        (
            "check cost of size call",
            map_with_rule("integer", "oldSelf.size() == self.size()"),
            want(5),
            10,
            want(5),
        ),
        (
            "check cost of timestamp comparison",
            map_with_rule("date-time", r#"self["a"] == self["b"]"#),
            want(8),
            7,
            want(8),
        ),
        (
            "check cost of duration comparison",
            map_with_rule("duration", r#"self["c"] == self["d"]"#),
            want(8),
            42,
            want(8),
        ),
        (
            "enums with maxLength equals to the longest possible value",
            enum_with_rule("self.contains('A')", &["A", "B", "C", "LongValue"]),
            want(2),
            1000,
            want(401),
        ),
    ];
    assert_eq!(rows.len(), 67, "every row of TestCostEstimation");
    let mut failures = Vec::new();
    let mut checked = 0;
    for (name, generator, calc, set_max, set_want) in &rows {
        for (variant, schema, expected) in [
            ("calc maxLength", generator(None), *calc),
            ("set maxLength", generator(Some(*set_max)), *set_want),
        ] {
            let rule = schema["x-kubernetes-validations"][0]["rule"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let got = match estimate_expression(&schema, false, &rule, ResultType::Bool) {
                Ok(est) => est.max,
                Err(e) => {
                    failures.push(format!("{name} ({variant}): {e}"));
                    continue;
                }
            };
            match expected {
                Exactly(v) if got != v => {
                    failures.push(format!("{name} ({variant}): got {got}, want {v}"))
                }
                AtLeastLimit if got < COST_LIMIT => failures.push(format!(
                    "{name} ({variant}): got {got}, want at least {COST_LIMIT}"
                )),
                Unchecked => continue,
                _ => {}
            }
            checked += 1;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(checked, 114);
}

fn crd_with(schema: Value) -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "names": {"kind": "Widget", "plural": "widgets"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1",
                "served": true,
                "storage": true,
                "schema": {"openAPIV3Schema": schema},
            }],
        },
    }))
    .expect("a valid CRD")
}

#[test]
fn crd_cost_total_over_the_limit_is_refused_like_the_api_server() {
    // The CRD validation case "cost total exceeds total limit": a list without maxItems
    // (worst-case cardinality), a bounded map under the per-rule limit but over 1% of the
    // CRD limit, and a cheap rule that does not contribute.
    let crd = crd_with(json!({
        "type": "object",
        "properties": {
            "array": {
                "type": "array",
                "items": {
                    "type": "string",
                    "maxLength": 500000,
                    "x-kubernetes-validations": [{"rule": "self.contains('keyword')"}],
                },
            },
            "map": {
                "type": "object",
                "maxProperties": 10000,
                "additionalProperties": {
                    "type": "string",
                    "maxLength": 2048,
                    "x-kubernetes-validations": [{"rule": "self.contains('keyword')"}],
                },
            },
            "field": {
                "type": "integer",
                "x-kubernetes-validations": [{"rule": "self > 50 && self < 100"}],
            },
        },
    }));
    let (cost, errors) = cel_cost::estimate_crd(&crd);
    assert!(errors.is_empty(), "{errors:?}");
    let array = &cost
        .rules
        .iter()
        .find(|r| r.schema_path == "array[]")
        .unwrap();
    // 2,000,000 bytes × 0.1, times 3 MiB / (2 + 1) items
    assert_eq!(
        (array.cost, array.cardinality, array.bounded),
        (200_001, 1_048_576, false)
    );
    let map = &cost
        .rules
        .iter()
        .find(|r| r.schema_path == "map{}")
        .unwrap();
    assert_eq!(
        (map.cost, map.cardinality, map.total),
        (821, 10_000, 8_210_000)
    );
    let errors: Vec<String> = cel_cost::api_server_errors(&cost)
        .iter()
        .map(|e| format!("{}: {}", e.field, e.detail))
        .collect();
    let root = "spec.validation.openAPIV3Schema";
    assert_eq!(
        errors,
        [
            format!(
                "{root}.properties[array].items.x-kubernetes-validations[0].rule: Forbidden: estimated rule cost exceeds budget by factor of more than 100x (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)"
            ),
            format!(
                "{root}.properties[array].items.x-kubernetes-validations[0].rule: Forbidden: contributed to estimated rule & messageExpression cost total exceeding cost limit for entire OpenAPIv3 schema"
            ),
            format!(
                "{root}.properties[map].additionalProperties.x-kubernetes-validations[0].rule: Forbidden: contributed to estimated rule & messageExpression cost total exceeding cost limit for entire OpenAPIv3 schema"
            ),
            format!(
                "{root}: Forbidden: x-kubernetes-validations estimated rule & messageExpression cost total for entire OpenAPIv3 schema exceeds budget by factor of more than 100x (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)"
            ),
        ]
    );
}

#[test]
fn the_factor_is_printed_as_go_prints_it() {
    let limit = cel_cost::STATIC_ESTIMATED_COST_LIMIT;
    let msg = |cost| cel_cost::cost_error_message("estimated rule cost", cost, limit);
    assert!(msg(25_000_000).contains("exceeds budget by factor of 2.5x (try"));
    assert!(msg(12_000_000).contains("exceeds budget by factor of 1.200000x (try"));
    assert!(msg(1_000_000_001).contains("exceeds budget by factor of more than 100x (try"));
}

#[test]
fn cardinality_is_the_product_of_the_bounds_above_a_rule() {
    // items of a list (maxItems 10) of maps (maxProperties 3) of lists (maxItems 7)
    let crd = crd_with(json!({
        "type": "object",
        "properties": {
            "outer": {
                "type": "array",
                "maxItems": 10,
                "items": {
                    "type": "object",
                    "maxProperties": 3,
                    "additionalProperties": {
                        "type": "array",
                        "maxItems": 7,
                        "items": {
                            "type": "integer",
                            "x-kubernetes-validations": [{"rule": "self >= 0"}],
                        },
                    },
                },
            },
            "unbounded": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string", "maxLength": 10}},
                    "x-kubernetes-validations": [{"rule": "self.name != ''"}],
                },
            },
        },
    }));
    let (cost, errors) = cel_cost::estimate_crd(&crd);
    assert!(errors.is_empty(), "{errors:?}");
    let rule = |p: &str| {
        cost.rules
            .iter()
            .find(|r| r.schema_path == p)
            .unwrap()
            .clone()
    };
    let nested = rule("outer[]{}[]");
    assert_eq!((nested.cardinality, nested.bounded), (210, true));
    // an unbounded list above: 3 MiB / (minimum size of the item + 1); the item is at
    // least {"name":""}: 2 + len("name") + 2 + 4 = 12 bytes
    let fallback = rule("unbounded[]");
    assert_eq!(
        (fallback.cardinality, fallback.bounded),
        (3 * 1024 * 1024 / 13, false)
    );
}

#[test]
fn a_rule_the_estimator_cannot_price_is_an_error() {
    let crd = crd_with(json!({
        "type": "object",
        "properties": {"s": {
            "type": "string",
            "maxLength": 10,
            "x-kubernetes-validations": [{"rule": "self.frobnicate()"}],
        }},
    }));
    let (_, errors) = cel_cost::estimate_crd(&crd);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0]
            .detail
            .contains("function 'frobnicate' with 0 argument(s) on a receiver is not covered"),
        "{}",
        errors[0]
    );
}

#[test]
fn our_crds_fit_the_api_server_and_the_project_budget() {
    // Print every rule's estimate first, so that a failure shows the whole picture.
    let report = cel_cost::Report {
        crds: crds::all_crds()
            .iter()
            .map(|crd| cel_cost::estimate_crd(crd).0)
            .collect(),
    };
    println!("{report}");
    if let Some(h) = report.highest() {
        println!(
            "highest cost × times: {} {}: {} × {} = {} ({})",
            h.kind, h.schema_path, h.cost, h.cardinality, h.total, h.rule
        );
    }
    if let Some(h) = report
        .crds
        .iter()
        .flat_map(|c| &c.rules)
        .max_by_key(|r| r.cost)
    {
        println!(
            "highest cost of one evaluation: {} {}: {} ({})",
            h.kind, h.schema_path, h.cost, h.rule
        );
    }
    match cel_cost::check_crds() {
        Ok(checked) => {
            assert_eq!(checked, report);
            for crd in &report.crds {
                assert!(crd.total <= cel_cost::CRD_BUDGET, "{}", crd.kind);
                for r in &crd.rules {
                    assert!(r.cost <= cel_cost::RULE_BUDGET, "{r:?}");
                    assert!(r.total <= cel_cost::STATIC_ESTIMATED_COST_LIMIT, "{r:?}");
                }
            }
        }
        Err(errors) => {
            let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            panic!("{}", text.join("\n"));
        }
    }
}
