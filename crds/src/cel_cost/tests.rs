//! Ported estimate tables that need the estimator's internals (variables of any type, other
//! size estimators): cel-go `checker/cost_test.go` `TestCost` and Kubernetes
//! `pkg/cel/library/cost_test.go` (`TestListsCost`, `TestIndexOfCost`, `TestURLsCost`,
//! `TestIPCost`, `TestCIDRCost`, `TestStringLibrary`, `TestQuantityCost`). Expected numbers
//! are copied from those tables. The apiextensions `TestCostEstimation` table, which goes
//! through schemas, is in `tests/cel_cost.rs`.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use super::check::{Env, Ty, check};
use super::decl::{DeclKind, DeclType, Simple};
use super::estimate::{Calls, Est, Sizes, estimate_with};

fn est(min: u64, max: u64) -> Est {
    Est { min, max }
}

/// `google.expr.proto3.test.TestAllTypes`, as far as the table uses it.
fn all_types() -> Ty {
    let int = Rc::new(DeclType {
        kind: DeclKind::Simple(Simple::Int),
        max_elements: 0,
        min_serialized_size: 1,
    });
    let mut fields = BTreeMap::new();
    fields.insert("single_int32".to_string(), int);
    Ty::Object(Rc::new(DeclType {
        kind: DeclKind::Object(fields),
        max_elements: 0,
        min_serialized_size: 2,
    }))
}

fn list(t: Ty) -> Ty {
    Ty::List(Box::new(t))
}

fn map(k: Ty, v: Ty) -> Ty {
    Ty::Map(Box::new(k), Box::new(v))
}

fn run(expr: &str, vars: &[(&str, Ty)], sizes: Sizes, calls: Calls, presence: bool) -> Est {
    let ast = cel::parser::Parser::new()
        .parse(expr)
        .unwrap_or_else(|e| panic!("{expr}: {e}"));
    let env = Env {
        vars: vars
            .iter()
            .map(|(n, t)| (n.to_string(), t.clone()))
            .collect(),
    };
    let checked = check(&ast, &env).unwrap_or_else(|e| panic!("{expr}: {e}"));
    estimate_with(&ast, &checked, sizes, calls, presence)
}

/// cel-go's `TestCost`: its test estimator sizes values by path hints and prices only
/// `getFullYear` (7); presence tests cost one unless the row says otherwise.
fn celgo(expr: &str, vars: &[(&str, Ty)], hints: &[(&str, u64)], presence: bool) -> Est {
    let hints: HashMap<String, u64> = hints.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    run(expr, vars, Sizes::Hints(hints), Calls::CelGoTest, presence)
}

/// A row of cel-go's `TestCost`: name, expression, variables, size hints, whether presence
/// tests cost one, expected cost.
type Row = (
    &'static str,
    &'static str,
    Vec<(&'static str, Ty)>,
    Vec<(&'static str, u64)>,
    bool,
    Est,
);

#[test]
fn cel_go_test_cost_table() {
    let all_list = list(all_types());
    let int_list = list(Ty::Int);
    let nested_list = list(all_list.clone());
    let all_map = map(Ty::String, all_types());
    let nested_map = map(Ty::String, all_map.clone());
    let bools: Vec<(&str, Ty)> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| (*n, Ty::Bool))
        .collect();
    #[rustfmt::skip]
    let rows: Vec<Row> = vec![
        ("const", r#""Hello World!""#, vec![], vec![], true, est(0, 0)),
        ("identity", "input", vec![("input", int_list.clone())], vec![], true, est(1, 1)),
        ("select: map", "input['key']", vec![("input", map(Ty::String, Ty::String))], vec![], true, est(2, 2)),
        ("select: field", "input.single_int32", vec![("input", all_types())], vec![], true, est(2, 2)),
        ("select: field test only no has() cost", "has(input.single_int32)", vec![("input", all_types())], vec![], false, est(1, 1)),
        ("select: field test only", "has(input.single_int32)", vec![("input", all_types())], vec![], true, est(2, 2)),
        ("select: non-proto field test has() cost", "has(input.testAttr.nestedAttr)", vec![("input", nested_map.clone())], vec![], true, est(3, 3)),
        ("select: non-proto field test no has() cost", "has(input.testAttr.nestedAttr)", vec![("input", nested_map.clone())], vec![], false, est(2, 2)),
        ("estimated function call", "input.getFullYear()", vec![("input", Ty::Timestamp)], vec![], true, est(8, 8)),
        ("create list", "[1, 2, 3]", vec![], vec![], true, est(10, 10)),
        ("create map", r#"{"a": 1, "b": 2, "c": 3}"#, vec![], vec![], true, est(30, 30)),
        ("all comprehension", "input.all(x, true)", vec![("input", all_list.clone())], vec![("input", 100)], true, est(2, 302)),
        ("nested all comprehension", "input.all(x, x.all(y, true))", vec![("input", nested_list)], vec![("input", 50), ("input.@items", 10)], true, est(2, 1752)),
        ("all comprehension on literal", "[1, 2, 3].all(x, true)", vec![], vec![], true, est(20, 20)),
        ("variable cost function", "input.matches('[0-9]')", vec![("input", Ty::String)], vec![("input", 500)], true, est(3, 103)),
        ("variable cost function with constant", "'123'.matches('[0-9]')", vec![], vec![], true, est(2, 2)),
        ("or", "true || false", vec![], vec![], true, est(0, 0)),
        ("or accumulated branch cost", "a || b || c || d", bools.clone(), vec![], true, est(1, 4)),
        ("and", "true && false", vec![], vec![], true, est(0, 0)),
        ("and accumulated branch cost", "a && b && c && d", bools, vec![], true, est(1, 4)),
        ("lt", "1 < 2", vec![], vec![], true, est(1, 1)),
        ("lte", "1 <= 2", vec![], vec![], true, est(1, 1)),
        ("eq", "1 == 2", vec![], vec![], true, est(1, 1)),
        ("gt", "2 > 1", vec![], vec![], true, est(1, 1)),
        ("gte", "2 >= 1", vec![], vec![], true, est(1, 1)),
        ("in", "2 in [1, 2, 3]", vec![], vec![], true, est(13, 13)),
        ("plus", "1 + 1", vec![], vec![], true, est(1, 1)),
        ("minus", "1 - 1", vec![], vec![], true, est(1, 1)),
        ("/", "1 / 1", vec![], vec![], true, est(1, 1)),
        ("*", "1 * 1", vec![], vec![], true, est(1, 1)),
        ("%", "1 % 1", vec![], vec![], true, est(1, 1)),
        ("ternary", "true ? 1 : 2", vec![], vec![], true, est(0, 0)),
        ("string size", r#"size("123")"#, vec![], vec![], true, est(1, 1)),
        ("bytes to string conversion", "string(input)", vec![("input", Ty::Bytes)], vec![("input", 500)], true, est(1, 51)),
        ("bytes to string conversion equality", "string(input) == string(input)", vec![("input", Ty::Bytes)], vec![("input", 500)], true, est(3, 152)),
        ("string to bytes conversion", "bytes(input)", vec![("input", Ty::String)], vec![("input", 500)], true, est(1, 51)),
        ("string to bytes conversion equality", "bytes(input) == bytes(input)", vec![("input", Ty::String)], vec![("input", 500)], true, est(3, 302)),
        ("int to string conversion", "string(1)", vec![], vec![], true, est(1, 1)),
        ("contains", "input.contains(arg1)", vec![("input", Ty::String), ("arg1", Ty::String)], vec![("input", 500), ("arg1", 500)], true, est(2, 2502)),
        ("matches", r"input.matches('\\d+a\\d+b')", vec![("input", Ty::String)], vec![("input", 500)], true, est(3, 103)),
        ("startsWith", "input.startsWith(arg1)", vec![("input", Ty::String), ("arg1", Ty::String)], vec![("arg1", 500)], true, est(2, 52)),
        ("endsWith", "input.endsWith(arg1)", vec![("input", Ty::String), ("arg1", Ty::String)], vec![("arg1", 500)], true, est(2, 52)),
        ("size receiver", "input.size()", vec![("input", Ty::String)], vec![], true, est(2, 2)),
        ("size", "size(input)", vec![("input", Ty::String)], vec![], true, est(2, 2)),
        ("ternary eval", "(x > 2 ? input1 : input2).all(y, true)", vec![("x", Ty::Int), ("input1", all_list.clone()), ("input2", all_list)], vec![("input1", 1), ("input2", 1)], true, est(4, 7)),
        ("comprehension over map", "input.all(k, input[k].single_int32 > 3)", vec![("input", all_map)], vec![("input", 10)], true, est(2, 82)),
        ("comprehension over nested map of maps", "input.all(k, input[k].all(x, true))", vec![("input", nested_map.clone())], vec![("input", 5), ("input.@values", 10)], true, est(2, 187)),
        ("string size of map keys", "input.all(k, k.contains(k))", vec![("input", nested_map.clone())], vec![("input", 5), ("input.@keys", 10)], true, est(2, 32)),
        ("comprehension variable shadowing", "input.all(k, input[k].all(k, true) && k.contains(k))", vec![("input", nested_map)], vec![("input", 2), ("input.@values", 2), ("input.@keys", 5)], true, est(2, 34)),
        ("list concat", "(list1 + list2).all(x, true)", vec![("list1", int_list.clone()), ("list2", int_list.clone())], vec![("list1", 10), ("list2", 10)], true, est(4, 64)),
        ("str concat", r#""abcdefg".contains(str1 + str2)"#, vec![("str1", Ty::String), ("str2", Ty::String)], vec![("str1", 10), ("str2", 10)], true, est(2, 6)),
        ("list size comparison", "list1.size() == list2.size()", vec![("list1", int_list.clone()), ("list2", int_list.clone())], vec![], true, est(5, 5)),
        ("list size from ternary", "x > y ? list1.size() : list2.size()", vec![("x", Ty::Int), ("y", Ty::Int), ("list1", int_list.clone()), ("list2", int_list)], vec![], true, est(5, 5)),
        ("str endsWith equality", r#"str1.endsWith("abcdefghijklmnopqrstuvwxyz") == str2.endsWith("abcdefghijklmnopqrstuvwxyz")"#, vec![("str1", Ty::String), ("str2", Ty::String)], vec![], true, est(9, 9)),
        ("nested subexpression operators", "((5 != 6) == (1 == 2)) == ((3 <= 4) == (9 != 9))", vec![], vec![], true, est(7, 7)),
        ("str size estimate", "string(timestamp1) == string(timestamp2)", vec![("timestamp1", Ty::Timestamp), ("timestamp2", Ty::Timestamp)], vec![], true, est(5, 1844674407370955268)),
        ("timestamp equality check", "timestamp1 == timestamp2", vec![("timestamp1", Ty::Timestamp), ("timestamp2", Ty::Timestamp)], vec![], true, est(3, 3)),
        ("duration inequality check", "duration1 != duration2", vec![("duration1", Ty::Duration), ("duration2", Ty::Duration)], vec![], true, est(3, 3)),
    ];
    let mut failures = Vec::new();
    for (name, expr, vars, hints, presence, want) in &rows {
        let got = celgo(expr, vars, hints, *presence);
        if got != *want {
            failures.push(format!("{name}: {expr}: got {got:?}, want {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(rows.len(), 58);
}

/// Kubernetes' library `testCost`: the Kubernetes estimator over a size estimator that
/// bounds every string and bytes value at 12, presence tests free.
fn k8s(expr: &str) -> Est {
    run(expr, &[], Sizes::ByType, Calls::Kubernetes, false)
}

const INT_LIST: &str = "[1, 2, 3, 4, 5]";
const UINT_LIST: &str = "[uint(1), uint(2), uint(3), uint(4), uint(5)]";
const DOUBLE_LIST: &str = "[1.0, 2.0, 3.0, 4.0, 5.0]";
const BOOL_LIST: &str = "[false, true, false, true, false]";
const STRING_LIST: &str =
    "['012345678901', '012345678901', '012345678901', '012345678901', '012345678901']";
const BYTES_LIST: &str = "[bytes('012345678901'), bytes('012345678901'), bytes('012345678901'), bytes('012345678901'), bytes('012345678901')]";
const DURATION_LIST: &str =
    "[duration('1s'), duration('2s'), duration('3s'), duration('4s'), duration('5s')]";
const TIMESTAMP_LIST: &str = "[timestamp('2011-01-01T00:00:00.000+01:00'), timestamp('2011-01-02T00:00:00.000+01:00'), timestamp('2011-01-03T00:00:00.000+01:00'), timestamp('2011-01-04T00:00:00.000+01:00'), timestamp('2011-01-05T00:00:00.000+01:00')]";
const STRING_LITERAL: &str = "'01234567890123456789012345678901234567890123456789'";

#[test]
fn kubernetes_library_cost_tables() {
    let mut rows: Vec<(String, Est)> = Vec::new();
    // TestListsCost
    for (list, want) in [
        (INT_LIST, est(15, 15)),
        (UINT_LIST, est(20, 20)),
        (DOUBLE_LIST, est(15, 15)),
        (DURATION_LIST, est(20, 20)),
    ] {
        rows.push((format!("{list}.sum()"), want));
    }
    for op in [".isSorted()", ".max()", ".min()"] {
        for (list, want) in [
            (INT_LIST, est(15, 15)),
            (UINT_LIST, est(20, 20)),
            (DOUBLE_LIST, est(15, 15)),
            (BOOL_LIST, est(15, 15)),
            (STRING_LIST, est(15, 25)),
            (BYTES_LIST, est(25, 35)),
            (DURATION_LIST, est(20, 20)),
            (TIMESTAMP_LIST, est(20, 20)),
        ] {
            rows.push((format!("{list}{op}"), want));
        }
    }
    // TestIndexOfCost
    for op in ["indexOf", "lastIndexOf"] {
        for (list, param, want) in [
            (INT_LIST, "3", est(15, 15)),
            (UINT_LIST, "uint(3)", est(21, 21)),
            (DOUBLE_LIST, "3.0", est(15, 15)),
            (BOOL_LIST, "true", est(15, 15)),
            (STRING_LIST, "'x'", est(15, 25)),
            (BYTES_LIST, "bytes('x')", est(26, 36)),
            (DURATION_LIST, "duration('3s')", est(21, 21)),
            (
                TIMESTAMP_LIST,
                "timestamp('2011-01-03T00:00:00.000+01:00')",
                est(21, 21),
            ),
            (STRING_LITERAL, "'123'", est(5, 5)),
        ] {
            rows.push((format!("{list}.{op}({param})"), want));
        }
    }
    // TestURLsCost
    for op in [
        ".getScheme()",
        ".getHostname()",
        ".getHost()",
        ".getPort()",
        ".getEscapedPath()",
        ".getQuery()",
    ] {
        rows.push((format!("url('https:://kubernetes.io/'){op}"), est(4, 4)));
    }
    rows.push((
        "url('https:://kubernetes.io/') == url('https:://kubernetes.io/')".into(),
        est(7, 9),
    ));
    rows.push((
        "url('https:://kubernetes.io/') == url('http://x.b')".into(),
        est(5, 5),
    ));
    // TestIPCost
    for (ip, base) in [
        ("ip('192.168.0.1')", 2),
        ("ip('2001:db8:3333:4444:5555:6666:7777:8888')", 4),
    ] {
        rows.push((ip.to_string(), est(base, base)));
        for op in [
            ".family()",
            ".isUnspecified()",
            ".isLoopback()",
            ".isLinkLocalMulticast()",
            ".isLinkLocalUnicast()",
            ".isGlobalUnicast()",
        ] {
            rows.push((format!("{ip}{op}"), est(base + 1, base + 1)));
        }
        rows.push((
            format!("{ip} == ip('192.168.0.1')"),
            est(base + 3, base + 3),
        ));
    }
    // TestCIDRCost (both bases are 2)
    for cidr in ["cidr('192.168.0.0/16')", "cidr('2001:db8::/32')"] {
        rows.push((cidr.to_string(), est(2, 2)));
        for op in [".ip()", ".prefixLength()", ".masked()"] {
            rows.push((format!("{cidr}{op}"), est(3, 3)));
        }
        rows.push((format!("{cidr} == cidr('2001:db8::/32')"), est(5, 5)));
    }
    let v4 = "cidr('192.168.0.0/16')";
    for (op, add_min, add_max) in [
        (".containsCIDR(cidr('192.0.0.0/30'))", 5, 9),
        (".containsCIDR(cidr('192.168.0.0/16'))", 5, 9),
        (".containsCIDR('192.0.0.0/30')", 5, 9),
        (".containsCIDR('192.168.0.0/16')", 5, 9),
        (".containsIP(ip('192.0.0.1'))", 2, 5),
        (".containsIP(ip('192.169.0.1'))", 3, 6),
        (".containsIP(ip('192.169.169.250'))", 3, 6),
        (".containsIP('192.0.0.1')", 2, 5),
        (".containsIP('192.169.0.1')", 3, 6),
    ] {
        rows.push((format!("{v4}{op}"), est(2 + add_min, 2 + add_max)));
    }
    let v6 = "cidr('2001:db8::/32')";
    for (op, add_min, add_max) in [
        (".containsCIDR(cidr('2001:db8::/126'))", 5, 9),
        (".containsCIDR(cidr('2001:db8::/32'))", 5, 9),
        (".containsCIDR('2001:db8::/126')", 5, 9),
        (".containsCIDR('2001:db8::/32')", 5, 9),
        (
            ".containsIP(ip('2001:db8:3333:4444:5555:6666:7777:8888'))",
            5,
            8,
        ),
        (".containsIP(ip('2001:db8::1'))", 3, 6),
        (
            ".containsIP('2001:db8:3333:4444:5555:6666:7777:8888')",
            5,
            8,
        ),
        (".containsIP('2001:db8::1')", 3, 6),
    ] {
        rows.push((format!("{v6}{op}"), est(2 + add_min, 2 + add_max)));
    }
    // TestStringLibrary (without strings.quote and jsonpatch.escapeKey, not covered)
    for (expr, want) in [
        ("'ABCDEFGHIJ abcdefghij'.lowerAscii()", est(3, 3)),
        (
            "'ABCDEFGHIJ abcdefghij'.lowerAscii() == 'abcdefghij ABCDEFGHIJ'.lowerAscii()",
            est(7, 9),
        ),
        ("'ABCDEFGHIJ abcdefghij'.upperAscii()", est(3, 3)),
        (
            "'ABCDEFGHIJ abcdefghij'.upperAscii() == 'abcdefghij ABCDEFGHIJ'.upperAscii()",
            est(7, 9),
        ),
        ("'abc 123 def 123'.replace('123', '456')", est(3, 3)),
        ("'abc 123 def 123'.replace('', 'x')", est(3, 3)),
        ("'abc 123 def 123'.replace('123', '')", est(3, 3)),
        ("'abc 123 def 123'.replace('123', '456', 1)", est(3, 3)),
        ("'abc 123 def 123'.split(' ')", est(3, 3)),
        ("'abc 123 def 123'.split(' ', 1)", est(3, 3)),
        ("'abc 123 def 123'.substring(5)", est(2, 2)),
        ("'abc 123 def 123'.substring(5, 8)", est(2, 2)),
        ("'  abc 123 def 123  '.trim()", est(2, 2)),
        (
            "['aa', 'bb', 'cc', 'd', 'e', 'f', 'g', 'h', 'i', 'j'].join(' ')",
            est(11, 23),
        ),
        (
            "['aa', 'bb', 'cc', 'd', 'e', 'f', 'g', 'h', 'i', 'j'].join()",
            est(10, 22),
        ),
        ("'abc 123 def 123'.find('123')", est(2, 2)),
        ("'abc 123 def 123'.findAll('123')", est(2, 2)),
        ("'abc 123 def 123'.findAll('123', 1)", est(2, 2)),
    ] {
        rows.push((expr.to_string(), want));
    }
    // TestQuantityCost
    for (expr, want) in [
        (r#"quantity("12Mi")"#, est(1, 1)),
        (r#"isQuantity("20")"#, est(1, 1)),
        (r#"isQuantity("20M")"#, est(1, 1)),
        (r#"quantity("200M") == quantity("200M")"#, est(3, 3)),
        (
            r#"quantity("200M") == quantity("0.2G") && quantity("0.2G") == quantity("200M")"#,
            est(3, 6),
        ),
        (
            r#"quantity("2M") == quantity("0.002G") && quantity("2000k") == quantity("2M") && quantity("0.002G") == quantity("2000k")"#,
            est(3, 9),
        ),
        (r#"quantity("50M").isLessThan(quantity("50Mi"))"#, est(3, 3)),
        (
            r#"quantity("50Mi").isGreaterThan(quantity("50M"))"#,
            est(3, 3),
        ),
        (
            r#"quantity("200M").compareTo(quantity("0.2G")) > 0"#,
            est(4, 4),
        ),
        (
            r#"quantity("50k").add(quantity("20")) == quantity("50.02k")"#,
            est(5, 5),
        ),
        (
            r#"quantity("50k").sub(quantity("20")) == quantity("49.98k")"#,
            est(5, 5),
        ),
        (r#"quantity("50k").sub(20) == quantity("49980")"#, est(4, 4)),
        (
            r#"quantity("50k").add(20).sub(quantity("100k")).asInteger() > 0"#,
            est(6, 6),
        ),
        (
            r#"quantity("50k").add(20).sub(quantity("100k")).sub(-50000).asInteger() > 0"#,
            est(7, 7),
        ),
        (r#"quantity("50k").asInteger() > 0"#, est(3, 3)),
        (r#"quantity("50").isInteger()"#, est(2, 2)),
        (
            r#"quantity("50.703k").asApproximateFloat() > 0.0"#,
            est(3, 3),
        ),
    ] {
        rows.push((expr.to_string(), want));
    }

    let mut failures = Vec::new();
    for (expr, want) in &rows {
        let got = k8s(expr);
        if got != *want {
            failures.push(format!("{expr}: got {got:?}, want {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(rows.len(), 132);
}

#[test]
fn an_unknown_function_is_an_error_not_a_free_call() {
    let ast = cel::parser::Parser::new()
        .parse("self.frobnicate() == 1")
        .unwrap();
    let env = Env {
        vars: [("self".to_string(), Ty::String)].into_iter().collect(),
    };
    let err = check(&ast, &env).err().map(|e| e.0).unwrap_or_default();
    assert!(
        err.contains("function 'frobnicate'")
            && err.contains("not covered by the CEL cost estimator"),
        "{err}"
    );
}
