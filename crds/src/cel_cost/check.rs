//! The part of CEL's type checker the cost estimator depends on: the type of every
//! expression and the overload every call resolves to (cel-go `checker`, with the function
//! declarations of the CEL standard library, cel-go's `ext.Strings` and the Kubernetes
//! libraries that CRD rules can use).
//!
//! A function or overload that is not declared here is an error, so that a rule using it
//! is never estimated at a made-up cost.

use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};

use super::decl::{DeclKind, DeclType, Simple};

/// A CEL type, as far as cost estimation needs it.
#[derive(Clone, Debug)]
pub enum Ty {
    Bool,
    Int,
    Uint,
    Double,
    String,
    Bytes,
    Null,
    Duration,
    Timestamp,
    List(Box<Ty>),
    Map(Box<Ty>, Box<Ty>),
    /// An object of the schema (a struct type in cel-go).
    Object(Rc<DeclType>),
    Dyn,
    /// The opaque `net.IP` of the Kubernetes IP library.
    Ip,
    /// The opaque `net.IPPrefix` of the Kubernetes CIDR library.
    Cidr,
    /// The Kubernetes URL library's `URL`.
    Url,
    /// The Kubernetes quantity library's `Quantity`.
    Quantity,
    /// A type value (`type(x)`, `int`, ...).
    Type,
}

/// The kind of a type, as cel-go's `types.Kind` (only the distinctions the estimator makes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Int,
    Uint,
    Double,
    String,
    Bytes,
    Null,
    Duration,
    Timestamp,
    List,
    Map,
    Struct,
    Dyn,
    Opaque,
    Type,
}

impl Ty {
    pub fn kind(&self) -> Kind {
        match self {
            Ty::Bool => Kind::Bool,
            Ty::Int => Kind::Int,
            Ty::Uint => Kind::Uint,
            Ty::Double => Kind::Double,
            Ty::String => Kind::String,
            Ty::Bytes => Kind::Bytes,
            Ty::Null => Kind::Null,
            Ty::Duration => Kind::Duration,
            Ty::Timestamp => Kind::Timestamp,
            Ty::List(_) => Kind::List,
            Ty::Map(..) => Kind::Map,
            // Quantity and URL are object types in the Kubernetes libraries.
            Ty::Object(_) | Ty::Quantity | Ty::Url => Kind::Struct,
            Ty::Dyn => Kind::Dyn,
            Ty::Ip | Ty::Cidr => Kind::Opaque,
            Ty::Type => Kind::Type,
        }
    }

    /// The type of a schema declaration.
    pub fn of_decl(decl: &Rc<DeclType>) -> Ty {
        match &decl.kind {
            DeclKind::Object(_) => Ty::Object(decl.clone()),
            DeclKind::List(elem) => Ty::List(Box::new(Ty::of_decl(elem))),
            DeclKind::Map(key, elem) => {
                Ty::Map(Box::new(Ty::of_decl(key)), Box::new(Ty::of_decl(elem)))
            }
            DeclKind::Simple(s) => match s {
                Simple::Bool => Ty::Bool,
                Simple::Int => Ty::Int,
                Simple::Double => Ty::Double,
                Simple::String => Ty::String,
                Simple::Bytes => Ty::Bytes,
                Simple::Duration => Ty::Duration,
                Simple::Timestamp => Ty::Timestamp,
                Simple::Dyn => Ty::Dyn,
            },
        }
    }

    /// The first type parameter (element type of a list, key type of a map).
    pub fn first_param(&self) -> Option<Ty> {
        match self {
            Ty::List(e) => Some((**e).clone()),
            Ty::Map(k, _) => Some((**k).clone()),
            _ => None,
        }
    }

    fn is_dyn(&self) -> bool {
        matches!(self, Ty::Dyn)
    }

    /// Whether a value of `self` may be passed where `want` is declared (dyn matches all).
    fn fits(&self, want: &Ty) -> bool {
        match (self, want) {
            (Ty::Dyn, _) | (_, Ty::Dyn) => true,
            (Ty::List(a), Ty::List(b)) => a.fits(b),
            (Ty::Map(ak, av), Ty::Map(bk, bv)) => ak.fits(bk) && av.fits(bv),
            (Ty::Object(a), Ty::Object(b)) => Rc::ptr_eq(a, b),
            (a, b) => a.kind() == b.kind(),
        }
    }

    /// cel-go's type equality, as the Kubernetes estimator's `_==_` case uses it.
    pub fn same(&self, other: &Ty) -> bool {
        match (self, other) {
            (Ty::List(a), Ty::List(b)) => a.same(b),
            (Ty::Map(ak, av), Ty::Map(bk, bv)) => ak.same(bk) && av.same(bv),
            (Ty::Object(a), Ty::Object(b)) => Rc::ptr_eq(a, b),
            (a, b) => a.kind() == b.kind(),
        }
    }

    /// The more specific of two types (for list literals and accumulators).
    fn join(&self, other: &Ty) -> Ty {
        match (self, other) {
            (Ty::Dyn, t) | (t, Ty::Dyn) => t.clone(),
            (Ty::List(a), Ty::List(b)) => Ty::List(Box::new(a.join(b))),
            (a, _) => a.clone(),
        }
    }
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ty::Bool => write!(f, "bool"),
            Ty::Int => write!(f, "int"),
            Ty::Uint => write!(f, "uint"),
            Ty::Double => write!(f, "double"),
            Ty::String => write!(f, "string"),
            Ty::Bytes => write!(f, "bytes"),
            Ty::Null => write!(f, "null_type"),
            Ty::Duration => write!(f, "google.protobuf.Duration"),
            Ty::Timestamp => write!(f, "google.protobuf.Timestamp"),
            Ty::List(e) => write!(f, "list({e})"),
            Ty::Map(k, v) => write!(f, "map({k}, {v})"),
            Ty::Object(_) => write!(f, "object"),
            Ty::Dyn => write!(f, "dyn"),
            Ty::Ip => write!(f, "net.IP"),
            Ty::Cidr => write!(f, "net.CIDR"),
            Ty::Url => write!(f, "kubernetes.URL"),
            Ty::Quantity => write!(f, "kubernetes.Quantity"),
            Ty::Type => write!(f, "type"),
        }
    }
}

/// The result of checking an expression: the type of every node and the overload ids of
/// every call, by node id (cel-go's `checked.TypeMap` and reference map).
#[derive(Default)]
pub struct Checked {
    pub types: HashMap<u64, Ty>,
    pub overloads: HashMap<u64, Vec<&'static str>>,
}

/// A type-checking error: the rule would not compile on the API server, or uses a function
/// this estimator does not know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckError(pub String);

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The variables of a rule: `self` and `oldSelf`, both of the schema node's type.
pub struct Env {
    pub vars: HashMap<String, Ty>,
}

pub fn check(expr: &IdedExpr, env: &Env) -> Result<Checked, CheckError> {
    let mut checker = Checker {
        checked: Checked::default(),
        scopes: vec![env.vars.clone()],
    };
    checker.check(expr)?;
    Ok(checker.checked)
}

struct Checker {
    checked: Checked,
    scopes: Vec<HashMap<String, Ty>>,
}

fn err<T>(msg: impl Into<String>) -> Result<T, CheckError> {
    Err(CheckError(msg.into()))
}

impl Checker {
    fn lookup(&self, name: &str) -> Option<Ty> {
        self.scopes.iter().rev().find_map(|s| s.get(name).cloned())
    }

    fn set(&mut self, e: &IdedExpr, t: Ty) -> Ty {
        self.checked.types.insert(e.id, t.clone());
        t
    }

    /// Checks the loop condition and step of a comprehension with the accumulator and the
    /// iteration variable in scope; returns the type of the step.
    fn check_loop(
        &mut self,
        comp: &cel::common::ast::ComprehensionExpr,
        accu: &Ty,
        var_type: &Ty,
    ) -> Result<Ty, CheckError> {
        let mut scope = HashMap::new();
        scope.insert(comp.accu_var.clone(), accu.clone());
        scope.insert(comp.iter_var.clone(), var_type.clone());
        self.scopes.push(scope);
        let cond = self.check(&comp.loop_cond);
        let step = self.check(&comp.loop_step);
        self.scopes.pop();
        cond?;
        step
    }

    fn check(&mut self, e: &IdedExpr) -> Result<Ty, CheckError> {
        let t = match &e.expr {
            Expr::Literal(lit) => match lit {
                LiteralValue::Boolean(_) => Ty::Bool,
                LiteralValue::Bytes(_) => Ty::Bytes,
                LiteralValue::Double(_) => Ty::Double,
                LiteralValue::Int(_) => Ty::Int,
                LiteralValue::Null => Ty::Null,
                LiteralValue::String(_) => Ty::String,
                LiteralValue::UInt(_) => Ty::Uint,
            },
            Expr::Ident(name) => match self.lookup(name) {
                Some(t) => t,
                None => match name.as_str() {
                    "int" | "uint" | "double" | "string" | "bytes" | "bool" | "list" | "map"
                    | "null_type" | "type" => Ty::Type,
                    _ => return err(format!("undeclared reference to '{name}'")),
                },
            },
            Expr::Select(sel) => {
                let operand = self.check(&sel.operand)?;
                let field_type = match &operand {
                    Ty::Object(decl) => match decl.field(&sel.field) {
                        Some(f) => Ty::of_decl(f),
                        None => return err(format!("undefined field '{}'", sel.field)),
                    },
                    Ty::Map(_, v) => (**v).clone(),
                    Ty::Dyn => Ty::Dyn,
                    other => {
                        return err(format!("type '{other}' does not support field selection"));
                    }
                };
                if sel.test { Ty::Bool } else { field_type }
            }
            Expr::List(list) => {
                let mut elem = Ty::Dyn;
                for item in &list.elements {
                    let t = self.check(item)?;
                    elem = elem.join(&t);
                }
                Ty::List(Box::new(elem))
            }
            Expr::Map(map) => {
                let (mut key, mut value) = (Ty::Dyn, Ty::Dyn);
                for entry in &map.entries {
                    match &entry.expr {
                        EntryExpr::MapEntry(me) => {
                            key = key.join(&self.check(&me.key)?);
                            value = value.join(&self.check(&me.value)?);
                        }
                        EntryExpr::StructField(_) => return err("struct fields in a map literal"),
                    }
                }
                Ty::Map(Box::new(key), Box::new(value))
            }
            Expr::Struct(_) => return err("message construction is not supported in CRD rules"),
            Expr::Comprehension(comp) => {
                let range = self.check(&comp.iter_range)?;
                if comp.iter_var2.is_some() {
                    return err(
                        "two-variable comprehensions are not covered by the cost estimator",
                    );
                }
                let var_type = match &range {
                    Ty::List(e) => (**e).clone(),
                    Ty::Map(k, _) => (**k).clone(),
                    Ty::Dyn => Ty::Dyn,
                    other => {
                        return err(format!(
                            "expression of type '{other}' cannot be the range of a comprehension"
                        ));
                    }
                };
                let mut accu = self.check(&comp.accu_init)?;
                // The accumulator of map() and filter() starts as `[]`: its element type comes
                // from the loop step. Check the loop once to learn it, then again with it.
                let mut step = self.check_loop(comp, &accu, &var_type)?;
                if let (Ty::List(a), Ty::List(s)) = (&accu, &step)
                    && a.is_dyn()
                    && !s.is_dyn()
                {
                    accu = step.clone();
                    step = self.check_loop(comp, &accu, &var_type)?;
                }
                let _ = step;
                let mut scope = HashMap::new();
                scope.insert(comp.accu_var.clone(), accu);
                self.scopes.push(scope);
                let result = self.check(&comp.result);
                self.scopes.pop();
                result?
            }
            Expr::Call(call) => {
                let target = match &call.target {
                    Some(t) => Some(self.check(t)?),
                    None => None,
                };
                let mut args = Vec::with_capacity(call.args.len());
                for a in &call.args {
                    args.push(self.check(a)?);
                }
                let (ids, result) = resolve(&call.func_name, target.as_ref(), &args)?;
                self.checked.overloads.insert(e.id, ids);
                result
            }
            Expr::Unspecified => return err("empty expression"),
        };
        Ok(self.set(e, t))
    }
}

fn no_overload<T>(name: &str, target: Option<&Ty>, args: &[Ty]) -> Result<T, CheckError> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let receiver = target.map(|t| format!("{t}.")).unwrap_or_default();
    err(format!(
        "found no matching overload for '{receiver}{name}' applied to '({})'",
        args.join(", ")
    ))
}

/// Resolves a call: the overload ids it may dispatch to (more than one only for `dyn`
/// operands) and its result type.
fn resolve(
    name: &str,
    target: Option<&Ty>,
    args: &[Ty],
) -> Result<(Vec<&'static str>, Ty), CheckError> {
    use Ty as T;
    let one = |id: &'static str, t: Ty| Ok((vec![id], t));
    let arity = (target.is_some(), args.len());
    match (name, arity) {
        ("_&&_", (false, 2)) => one("logical_and", T::Bool),
        ("_||_", (false, 2)) => one("logical_or", T::Bool),
        ("!_", (false, 1)) => one("logical_not", T::Bool),
        ("@not_strictly_false", (false, 1)) => one("not_strictly_false", T::Bool),
        ("_?_:_", (false, 3)) => one("conditional", args[1].join(&args[2])),
        ("_==_", (false, 2)) => one("equals", T::Bool),
        ("_!=_", (false, 2)) => one("not_equals", T::Bool),
        ("_<_" | "_<=_" | "_>_" | "_>=_", (false, 2)) => {
            let op = match name {
                "_<_" => "less",
                "_<=_" => "less_equals",
                "_>_" => "greater",
                _ => "greater_equals",
            };
            let id = match (args[0].kind(), args[1].kind()) {
                (Kind::String, _) | (_, Kind::String) => match op {
                    "less" => "less_string",
                    "less_equals" => "less_equals_string",
                    "greater" => "greater_string",
                    _ => "greater_equals_string",
                },
                (Kind::Bytes, _) | (_, Kind::Bytes) => match op {
                    "less" => "less_bytes",
                    "less_equals" => "less_equals_bytes",
                    "greater" => "greater_bytes",
                    _ => "greater_equals_bytes",
                },
                (Kind::Dyn, Kind::Dyn) => {
                    // any overload may apply: the string ones dominate the cost
                    return Ok((
                        vec![
                            match op {
                                "less" => "less_string",
                                "less_equals" => "less_equals_string",
                                "greater" => "greater_string",
                                _ => "greater_equals_string",
                            },
                            "compare_scalar",
                        ],
                        T::Bool,
                    ));
                }
                _ => "compare_scalar",
            };
            one(id, T::Bool)
        }
        ("_+_", (false, 2)) => match (&args[0], &args[1]) {
            (T::String, _) | (_, T::String) => one("add_string", T::String),
            (T::Bytes, _) | (_, T::Bytes) => one("add_bytes", T::Bytes),
            (T::List(a), T::List(b)) => one("add_list", T::List(Box::new(a.join(b)))),
            (T::List(a), T::Dyn) | (T::Dyn, T::List(a)) => one("add_list", T::List(a.clone())),
            (T::Int, _) | (_, T::Int) => one("add_int64", T::Int),
            (T::Uint, _) | (_, T::Uint) => one("add_uint64", T::Uint),
            (T::Double, _) | (_, T::Double) => one("add_double", T::Double),
            (T::Timestamp, _) | (_, T::Timestamp) => one("add_timestamp", T::Timestamp),
            (T::Duration, T::Duration) => one("add_duration", T::Duration),
            (T::Dyn, T::Dyn) => Ok((
                vec!["add_int64", "add_string", "add_bytes", "add_list"],
                T::Dyn,
            )),
            _ => no_overload(name, target, args),
        },
        ("_-_" | "_*_" | "_/_" | "_%_", (false, 2)) => {
            let t = match (&args[0], &args[1]) {
                (T::Timestamp, T::Timestamp) => T::Duration,
                (T::Timestamp, _) => T::Timestamp,
                (T::Dyn, b) => b.clone(),
                (a, _) => a.clone(),
            };
            one("arithmetic", t)
        }
        ("-_", (false, 1)) => one("negate", args[0].clone()),
        ("_[_]", (false, 2)) => match &args[0] {
            T::List(e) => one("index_list", (**e).clone()),
            T::Map(_, v) => one("index_map", (**v).clone()),
            T::Dyn => Ok((vec!["index_list", "index_map"], T::Dyn)),
            _ => no_overload(name, target, args),
        },
        ("@in", (false, 2)) => match &args[1] {
            T::List(_) => one("in_list", T::Bool),
            T::Map(..) => one("in_map", T::Bool),
            T::Dyn => Ok((vec!["in_list", "in_map"], T::Bool)),
            _ => no_overload(name, target, args),
        },
        ("size", (false, 1)) | ("size", (true, 0)) => {
            let t = match target {
                Some(t) => t,
                None => &args[0],
            };
            match t.kind() {
                Kind::String | Kind::Bytes | Kind::List | Kind::Map | Kind::Dyn => {
                    one("size", T::Int)
                }
                _ => no_overload(name, target, args),
            }
        }
        ("matches", (true, 1)) => string_method(name, target, args, "matches_string", T::Bool),
        ("matches", (false, 2)) => one("matches", T::Bool),
        ("startsWith", (true, 1)) => {
            string_method(name, target, args, "starts_with_string", T::Bool)
        }
        ("endsWith", (true, 1)) => string_method(name, target, args, "ends_with_string", T::Bool),
        ("contains", (true, 1)) => string_method(name, target, args, "contains_string", T::Bool),
        // conversions
        ("int", (false, 1)) => one("to_int", T::Int),
        ("uint", (false, 1)) => one("to_uint", T::Uint),
        ("double", (false, 1)) => one("to_double", T::Double),
        ("bool", (false, 1)) => one("to_bool", T::Bool),
        ("string", (false, 1)) => match &args[0] {
            T::Bytes => one("bytes_to_string", T::String),
            _ => one("to_string", T::String),
        },
        ("bytes", (false, 1)) => match &args[0] {
            T::String => one("string_to_bytes", T::Bytes),
            _ => one("to_bytes", T::Bytes),
        },
        ("dyn", (false, 1)) => one("to_dyn", T::Dyn),
        ("type", (false, 1)) => one("type", T::Type),
        ("duration", (false, 1)) => one("string_to_duration", T::Duration),
        ("timestamp", (false, 1)) => one("string_to_timestamp", T::Timestamp),
        (
            "getFullYear" | "getMonth" | "getDayOfYear" | "getDayOfMonth" | "getDate"
            | "getDayOfWeek" | "getHours" | "getMinutes" | "getSeconds" | "getMilliseconds",
            (true, 0 | 1),
        ) => match target {
            Some(T::Timestamp) if name == "getFullYear" && args.is_empty() => {
                one("timestamp_to_year", T::Int)
            }
            Some(T::Timestamp | T::Duration | T::Dyn) => one("time_accessor", T::Int),
            _ => no_overload(name, target, args),
        },
        // cel-go ext.Strings
        ("charAt", (true, 1)) => string_method(name, target, args, "string_char_at_int", T::String),
        ("indexOf" | "lastIndexOf", (true, 1 | 2)) => match target {
            Some(T::String) => one("string_index_of", T::Int),
            Some(T::List(_)) => one("list_index_of", T::Int),
            Some(T::Dyn) => Ok((vec!["string_index_of", "list_index_of"], T::Int)),
            _ => no_overload(name, target, args),
        },
        ("lowerAscii" | "upperAscii" | "trim", (true, 0)) => {
            string_method(name, target, args, "string_transform", T::String)
        }
        ("replace", (true, 2 | 3)) => {
            string_method(name, target, args, "string_replace", T::String)
        }
        ("split", (true, 1 | 2)) => string_method(
            name,
            target,
            args,
            "string_split",
            T::List(Box::new(T::String)),
        ),
        ("substring", (true, 1 | 2)) => {
            string_method(name, target, args, "string_substring", T::String)
        }
        ("join", (true, 0 | 1)) => match target {
            Some(T::List(_) | T::Dyn) => one("list_join", T::String),
            _ => no_overload(name, target, args),
        },
        ("format", (true, 1)) => string_method(name, target, args, "string_format", T::String),
        // Kubernetes list library
        ("isSorted", (true, 0)) => list_method(name, target, args, "list_is_sorted", T::Bool),
        ("sum" | "min" | "max", (true, 0)) => match target {
            Some(T::List(e)) => one("list_fold", (**e).clone()),
            Some(T::Dyn) => one("list_fold", T::Dyn),
            _ => no_overload(name, target, args),
        },
        // Kubernetes regex library
        ("find", (true, 1)) => string_method(name, target, args, "string_find", T::String),
        ("findAll", (true, 1 | 2)) => string_method(
            name,
            target,
            args,
            "string_find_all",
            T::List(Box::new(T::String)),
        ),
        // Kubernetes URL library
        ("url", (false, 1)) => one("string_to_url", T::Url),
        ("isURL", (false, 1)) => one("is_url_string", T::Bool),
        ("getScheme" | "getHost" | "getHostname" | "getPort" | "getEscapedPath", (true, 0)) => {
            match target {
                Some(T::Url | T::Dyn) => one("url_accessor", T::String),
                _ => no_overload(name, target, args),
            }
        }
        ("getQuery", (true, 0)) => match target {
            Some(T::Url | T::Dyn) => one(
                "url_get_query",
                T::Map(Box::new(T::String), Box::new(T::List(Box::new(T::String)))),
            ),
            _ => no_overload(name, target, args),
        },
        // Kubernetes IP library
        ("isIP", (false, 1)) => one("is_ip", T::Bool),
        ("ip", (false, 1)) => one("string_to_ip", T::Ip),
        ("family", (true, 0)) => ip_method(name, target, args, "ip_family", T::Int),
        (
            "isUnspecified"
            | "isLoopback"
            | "isLinkLocalMulticast"
            | "isLinkLocalUnicast"
            | "isGlobalUnicast",
            (true, 0),
        ) => ip_method(name, target, args, "ip_predicate", T::Bool),
        // Kubernetes CIDR library
        ("isCIDR", (false, 1)) => one("is_cidr", T::Bool),
        ("cidr", (false, 1)) => one("string_to_cidr", T::Cidr),
        ("ip", (true, 0)) => cidr_method(name, target, args, "cidr_ip", T::Ip),
        ("masked", (true, 0)) => cidr_method(name, target, args, "cidr_masked", T::Cidr),
        ("prefixLength", (true, 0)) => {
            cidr_method(name, target, args, "cidr_prefix_length", T::Int)
        }
        ("containsIP", (true, 1)) => match (target, &args[0]) {
            (Some(T::Cidr | T::Dyn), T::String) => one("cidr_contains_ip_string", T::Bool),
            (Some(T::Cidr | T::Dyn), T::Ip) => one("cidr_contains_ip_ip", T::Bool),
            (Some(T::Cidr | T::Dyn), T::Dyn) => Ok((
                vec!["cidr_contains_ip_string", "cidr_contains_ip_ip"],
                T::Bool,
            )),
            _ => no_overload(name, target, args),
        },
        ("containsCIDR", (true, 1)) => match (target, &args[0]) {
            (Some(T::Cidr | T::Dyn), T::String) => one("cidr_contains_cidr_string", T::Bool),
            (Some(T::Cidr | T::Dyn), T::Cidr) => one("cidr_contains_cidr", T::Bool),
            (Some(T::Cidr | T::Dyn), T::Dyn) => Ok((
                vec!["cidr_contains_cidr_string", "cidr_contains_cidr"],
                T::Bool,
            )),
            _ => no_overload(name, target, args),
        },
        // Kubernetes quantity library
        ("quantity", (false, 1)) => one("string_to_quantity", T::Quantity),
        ("isQuantity", (false, 1)) => one("is_quantity_string", T::Bool),
        ("sign" | "asInteger" | "compareTo", (true, 0 | 1)) => {
            quantity_method(name, target, args, "quantity_accessor", T::Int)
        }
        ("isInteger" | "isGreaterThan" | "isLessThan", (true, 0 | 1)) => {
            quantity_method(name, target, args, "quantity_predicate", T::Bool)
        }
        ("asApproximateFloat", (true, 0)) => {
            quantity_method(name, target, args, "quantity_float", T::Double)
        }
        ("add" | "sub", (true, 1)) => {
            quantity_method(name, target, args, "quantity_arithmetic", T::Quantity)
        }
        _ => err(format!(
            "function '{name}' with {} argument(s){} is not covered by the CEL cost estimator (crds::cel_cost); \
             add its cost from cel-go checker/cost.go or Kubernetes library/cost.go before using it in a rule",
            args.len(),
            if target.is_some() {
                " on a receiver"
            } else {
                ""
            }
        )),
    }
}

fn string_method(
    name: &str,
    target: Option<&Ty>,
    args: &[Ty],
    id: &'static str,
    result: Ty,
) -> Result<(Vec<&'static str>, Ty), CheckError> {
    match target {
        Some(t) if t.fits(&Ty::String) => Ok((vec![id], result)),
        _ => no_overload(name, target, args),
    }
}

fn list_method(
    name: &str,
    target: Option<&Ty>,
    args: &[Ty],
    id: &'static str,
    result: Ty,
) -> Result<(Vec<&'static str>, Ty), CheckError> {
    match target {
        Some(Ty::List(_) | Ty::Dyn) => Ok((vec![id], result)),
        _ => no_overload(name, target, args),
    }
}

fn ip_method(
    name: &str,
    target: Option<&Ty>,
    args: &[Ty],
    id: &'static str,
    result: Ty,
) -> Result<(Vec<&'static str>, Ty), CheckError> {
    match target {
        Some(Ty::Ip | Ty::Dyn) => Ok((vec![id], result)),
        _ => no_overload(name, target, args),
    }
}

fn cidr_method(
    name: &str,
    target: Option<&Ty>,
    args: &[Ty],
    id: &'static str,
    result: Ty,
) -> Result<(Vec<&'static str>, Ty), CheckError> {
    match target {
        Some(Ty::Cidr | Ty::Dyn) => Ok((vec![id], result)),
        _ => no_overload(name, target, args),
    }
}

fn quantity_method(
    name: &str,
    target: Option<&Ty>,
    args: &[Ty],
    id: &'static str,
    result: Ty,
) -> Result<(Vec<&'static str>, Ty), CheckError> {
    match target {
        Some(Ty::Quantity | Ty::Dyn) => Ok((vec![id], result)),
        _ => no_overload(name, target, args),
    }
}
