//! The Kubernetes API server's static CEL cost estimate, ported, so that a CRD the API
//! server would refuse at install time ("estimated rule cost exceeds budget ...") is
//! refused here first, by a test and by `relayctl validate`.
//!
//! This module owns:
//! - the estimate of one rule (`x-kubernetes-validations[i].rule`) and of its
//!   `messageExpression`, as `cel.Env.EstimateCost` computes it on the API server: a port
//!   of cel-go's `checker/cost.go` (the `coster`: comprehensions, string functions,
//!   comparisons, list creation and concatenation, `in`, index, select, presence tests),
//!   of the Kubernetes `library.CostEstimator.EstimateCallCost` (k8s.io/apiserver
//!   `pkg/cel/library/cost.go`: list, regex, URL, IP, CIDR, quantity functions and the
//!   `ext.Strings` functions it prices) and of the apiextensions `sizeEstimator`
//!   (`pkg/apiserver/schema/cel/compilation.go`), which bounds a value by the
//!   `maxLength`/`maxItems`/`maxProperties`/`enum`/`format` of its schema node, with the
//!   3 MiB request-size fallbacks of `SchemaDeclType` (`pkg/cel/common/schemas.go`);
//! - how many times a rule runs per object (`MaxCardinality`: the product of the
//!   `maxItems`/`maxProperties` of the lists and maps above it, apiextensions
//!   `CELSchemaContext`, or `maxRequestSize / (minSerializedSize + 1)` when one is
//!   unbounded), the per-rule limit (cost × cardinality ≤ 10,000,000,
//!   `StaticEstimatedCostLimit`), the per-CRD limit (sum ≤ 100,000,000,
//!   `StaticEstimatedCRDCostLimit`; a `messageExpression` counts once, not per
//!   cardinality) and the API server's error wording (apiextensions `validation.go`:
//!   `getCostErrorMessage`, `TotalCost` and its four most expensive contributors);
//! - this project's stricter budget: no rule above 1,000,000 for one evaluation (a tenth of
//!   the per-expression limit, and the runtime per-call limit, so no object can make a
//!   rule fail at runtime for cost), no CRD above 100,000,000 in total (rule cost × how
//!   many times it runs per object, summed).
//!
//! It does not evaluate rules (kube's `cel` feature does, in [`crate::manifest`]) and it
//! type-checks only as far as costs need: the type of each expression and the overload of
//! each call.
//!
//! Version notes. Kubernetes sets `PresenceTestHasCost(false)`, so `has(x.f)` costs what
//! `x` costs. The Kubernetes estimator guards its cases with `target != nil`; cel-go hands
//! it a pointer to a nil target for global calls, so `isIP(s)`, `isCIDR(s)`, `cidr(s)` and
//! `ip(s)` are priced as a traversal of `s` (as Kubernetes' own `TestIPCost` expects:
//! `ip('192.168.0.1')` costs 2). A `maxLength` is multiplied by 4 (bytes per code point)
//! before it bounds a string.
//!
//! Functions covered: the standard macros (`has`, `all`, `exists`, `exists_one`, `map`,
//! `filter`), operators, `size`, `matches`, `startsWith`, `endsWith`, `contains`,
//! conversions, timestamp/duration accessors; `ext.Strings` (`charAt`, `indexOf`,
//! `lastIndexOf`, `lowerAscii`, `upperAscii`, `replace`, `split`, `substring`, `trim`,
//! `join`, `format`); the Kubernetes list (`isSorted`, `sum`, `min`, `max`, `indexOf`,
//! `lastIndexOf`), regex (`find`, `findAll`), URL, IP (`isIP`, `ip`, `family`, the
//! `is...` predicates), CIDR (`isCIDR`, `cidr`, `ip`, `masked`, `prefixLength`,
//! `containsIP`, `containsCIDR`) and quantity libraries. Any other function (and
//! `cel.bind`, two-variable comprehensions, `oldSelf.optional...`) is an estimation error
//! naming it: a rule is never priced at a guessed cost.
//!
//! Ported test tables, with the numbers of the Go tables:
//! - Kubernetes apiextensions `compilation_test.go` `TestCostEstimation`: all 67 rows, each
//!   in its "calc maxLength" and "set maxLength" variant (114 checked values; the Go test
//!   skips expected costs of 0, and so does the port) — `tests/cel_cost.rs`;
//! - the cost case of the CRD validation tests ("cost total exceeds total limit": cost ×
//!   cardinality, the 1% rule for contributors, the four messages) — `tests/cel_cost.rs`;
//! - cel-go `checker/cost_test.go` `TestCost`: 58 rows (all but struct creation, which CRD
//!   rules cannot write) — `cel_cost::tests`;
//! - Kubernetes `pkg/cel/library/cost_test.go`: `TestListsCost`, `TestIndexOfCost`,
//!   `TestURLsCost`, `TestIPCost`, `TestCIDRCost`, `TestStringLibrary` (without
//!   `strings.quote` and `jsonpatch.escapeKey`) and `TestQuantityCost`, 132 estimates —
//!   `cel_cost::tests`.

mod check;
mod decl;
mod estimate;
#[cfg(test)]
mod tests;

use std::fmt;
use std::rc::Rc;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

pub use estimate::Est;

/// `StaticEstimatedCostLimit`: the API server refuses a rule whose estimated cost times its
/// cardinality exceeds this.
pub const STATIC_ESTIMATED_COST_LIMIT: u64 = 10_000_000;
/// `StaticEstimatedCRDCostLimit`: the API server refuses a CRD whose rules (and message
/// expressions) add up to more than this.
pub const STATIC_ESTIMATED_CRD_COST_LIMIT: u64 = 100_000_000;
/// This project's budget for one evaluation of one rule: a tenth of the per-expression
/// limit, and the API server's runtime per-call limit (`celconfig.PerCallLimit`), so no
/// object can make a rule fail at runtime for cost.
pub const RULE_BUDGET: u64 = 1_000_000;
/// This project's budget for a CRD: the API server's own limit.
pub const CRD_BUDGET: u64 = 100_000_000;

/// Parses, type-checks and estimates an expression whose `self` (and `oldSelf`) is a value
/// of the schema node `schema`. `is_resource_root` adds `apiVersion`, `kind` and
/// `metadata.name`/`generateName` as the API server does at the root of a resource.
/// Returns the `[min, max]` cost; the API server uses the max.
pub fn estimate_expression(
    schema: &Value,
    is_resource_root: bool,
    expression: &str,
    result: ResultType,
) -> Result<Est, String> {
    let decl = decl::schema_decl_type(schema, is_resource_root).ok_or_else(|| {
        "rule declared on a schema that does not support validation rules".to_string()
    })?;
    estimate_with_decl(&decl, expression, result)
}

/// What an expression must evaluate to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResultType {
    /// A rule.
    Bool,
    /// A message expression.
    String,
}

fn estimate_with_decl(
    decl: &Rc<decl::DeclType>,
    expression: &str,
    result: ResultType,
) -> Result<Est, String> {
    let ast = cel::parser::Parser::new()
        .parse(expression)
        .map_err(|e| format!("compilation failed: {e}"))?;
    let self_type = check::Ty::of_decl(decl);
    let env = check::Env {
        vars: [
            ("self".to_string(), self_type.clone()),
            ("oldSelf".to_string(), self_type),
        ]
        .into_iter()
        .collect(),
    };
    let checked = check::check(&ast, &env).map_err(|e| format!("compilation failed: {e}"))?;
    let out = checked
        .types
        .get(&ast.id)
        .cloned()
        .unwrap_or(check::Ty::Dyn);
    match (result, out.kind()) {
        (ResultType::Bool, check::Kind::Bool | check::Kind::Dyn) => {}
        (ResultType::String, check::Kind::String | check::Kind::Dyn) => {}
        (ResultType::String, check::Kind::List) => {}
        (ResultType::Bool, _) => return Err("cel expression must evaluate to a bool".into()),
        (ResultType::String, _) => {
            return Err("messageExpression must evaluate to a string".into());
        }
    }
    Ok(estimate::estimate(&ast, &checked, decl))
}

/// The estimate of one rule of a CRD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleCost {
    /// Kind of the CRD.
    pub kind: String,
    /// Where the rule sits in the object, such as `spec.domains` or `spec.dkim[].domain`
    /// (`(root)` for the resource itself).
    pub schema_path: String,
    /// The rule's path in the CRD as the API server names it
    /// (`spec.validation.openAPIV3Schema.properties[spec]...x-kubernetes-validations[0].rule`).
    pub field: String,
    /// The rule's text.
    pub rule: String,
    /// Estimated cost of one evaluation.
    pub cost: u64,
    /// How many times the rule can run per object.
    pub cardinality: u64,
    /// Whether `cardinality` comes from `maxItems`/`maxProperties` all the way up (false:
    /// the API server's request-size fallback).
    pub bounded: bool,
    /// `cost × cardinality`: what the API server compares to the per-rule limit and adds to
    /// the CRD's total.
    pub total: u64,
    /// The rule's `messageExpression`, if any: its field and estimated cost (added to the
    /// total once, not per cardinality, as the API server does).
    pub message_expression: Option<(String, u64)>,
}

/// The estimates of every rule of one CRD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrdCost {
    pub kind: String,
    pub name: String,
    pub rules: Vec<RuleCost>,
    /// Sum of the rules' totals and message expressions' costs.
    pub total: u64,
}

/// Estimates of every rule of a set of CRDs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub crds: Vec<CrdCost>,
}

impl Report {
    /// The most expensive rule by `cost × cardinality`.
    pub fn highest(&self) -> Option<&RuleCost> {
        self.crds
            .iter()
            .flat_map(|c| &c.rules)
            .max_by_key(|r| r.total)
    }
}

/// Who refuses a CRD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The API server would refuse it at install (or could not compile the rule).
    ApiServer,
    /// It fits the API server's limits but not this project's budget.
    ProjectBudget,
}

/// A rule, message expression or CRD over a limit, or a rule that cannot be estimated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CostError {
    /// `kind` of the CRD.
    pub crd: String,
    /// The path the error is reported at.
    pub field: String,
    /// `Forbidden: ...` or `Invalid value: ...`, as the API server prints it.
    pub detail: String,
    pub refusal: Refusal,
}

impl fmt::Display for CostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.refusal {
            Refusal::ApiServer => write!(f, "CustomResourceDefinition {}: ", self.crd)?,
            Refusal::ProjectBudget => write!(
                f,
                "CustomResourceDefinition {} (project CEL cost budget): ",
                self.crd
            )?,
        }
        write!(f, "{}: {}", self.field, self.detail)
    }
}

/// `getCostErrorMessage` of apiextensions `validation.go`.
pub fn cost_error_message(cost_name: &str, cost: u64, limit: u64) -> String {
    let factor = cost as f64 / limit as f64;
    let factor = if factor > 100.0 {
        // likely O(n^2) or worse; the number would say nothing more
        "more than 100x".to_string()
    } else if factor < 1.5 {
        // Go's %f: six decimals, so that 1.0x is never printed
        format!("{factor:.6}x")
    } else {
        format!("{factor:.1}x")
    };
    format!(
        "{cost_name} exceeds budget by factor of {factor} (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)"
    )
}

/// The text of `field.Forbidden`.
fn forbidden(detail: impl fmt::Display) -> String {
    format!("Forbidden: {detail}")
}

/// Estimates every rule of `crd`. Rules that cannot be estimated (they would not compile,
/// or use a function this module does not know) are returned as errors.
pub fn estimate_crd(crd: &CustomResourceDefinition) -> (CrdCost, Vec<CostError>) {
    let kind = crd.spec.names.kind.clone();
    let mut out = CrdCost {
        kind: kind.clone(),
        name: crd.metadata.name.clone().unwrap_or_default(),
        rules: Vec::new(),
        total: 0,
    };
    let mut errors = Vec::new();
    let schemas: Vec<Value> = crd
        .spec
        .versions
        .iter()
        .filter_map(|v| v.schema.as_ref()?.open_api_v3_schema.as_ref())
        .filter_map(|s| serde_json::to_value(s).ok())
        .collect();
    // The API server moves a schema all versions share to `spec.validation`.
    let shared = schemas.windows(2).all(|w| w[0] == w[1]);
    for (i, schema) in schemas.iter().enumerate() {
        if shared && i > 0 {
            break;
        }
        let root = if shared {
            "spec.validation.openAPIV3Schema".to_string()
        } else {
            format!("spec.versions[{i}].schema.openAPIV3Schema")
        };
        let mut walk = Walk {
            kind: &kind,
            rules: &mut out.rules,
            errors: &mut errors,
        };
        walk.node(schema, true, &root, "", Some(1));
    }
    out.total = out.rules.iter().fold(0u64, |acc, r| {
        acc.saturating_add(r.total)
            .saturating_add(r.message_expression.as_ref().map_or(0, |m| m.1))
    });
    (out, errors)
}

struct Walk<'a> {
    kind: &'a str,
    rules: &'a mut Vec<RuleCost>,
    errors: &'a mut Vec<CostError>,
}

/// `extractMaxElements`: by how much a node multiplies the occurrences of its children.
fn max_elements(schema: &Value) -> Option<u64> {
    let bound = |key: &str| {
        schema
            .get(key)
            .and_then(Value::as_i64)
            .map(|v| v.max(0) as u64)
    };
    match schema.get("type").and_then(Value::as_str) {
        Some("object") if schema.get("additionalProperties").is_some() => bound("maxProperties"),
        Some("array") => bound("maxItems"),
        _ => Some(1),
    }
}

impl Walk<'_> {
    fn node(
        &mut self,
        schema: &Value,
        is_root: bool,
        path: &str,
        schema_path: &str,
        cardinality: Option<u64>,
    ) {
        if let Some(rules) = schema
            .get("x-kubernetes-validations")
            .and_then(Value::as_array)
        {
            self.rules(schema, is_root, path, schema_path, cardinality, rules);
        }
        let child_card = match (cardinality, max_elements(schema)) {
            (Some(c), Some(m)) => Some(c.saturating_mul(m)),
            _ => None,
        };
        let embedded = |s: &Value| {
            s.get("x-kubernetes-embedded-resource")
                .and_then(Value::as_bool)
                == Some(true)
        };
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (name, prop) in props {
                let sp = if schema_path.is_empty() {
                    name.clone()
                } else {
                    format!("{schema_path}.{name}")
                };
                self.node(
                    prop,
                    embedded(prop),
                    &format!("{path}.properties[{name}]"),
                    &sp,
                    child_card,
                );
            }
        }
        if let Some(items) = schema.get("items").filter(|i| i.is_object()) {
            self.node(
                items,
                embedded(items),
                &format!("{path}.items"),
                &format!("{schema_path}[]"),
                child_card,
            );
        }
        if let Some(extra) = schema.get("additionalProperties").filter(|a| a.is_object()) {
            self.node(
                extra,
                embedded(extra),
                &format!("{path}.additionalProperties"),
                &format!("{schema_path}{{}}"),
                child_card,
            );
        }
    }

    fn rules(
        &mut self,
        schema: &Value,
        is_root: bool,
        path: &str,
        schema_path: &str,
        cardinality: Option<u64>,
        rules: &[Value],
    ) {
        let Some(decl) = decl::schema_decl_type(schema, is_root) else {
            self.errors.push(CostError {
                crd: self.kind.to_string(),
                field: format!("{path}.x-kubernetes-validations"),
                detail: "InternalError: rule declared on a schema that does not support validation rules"
                    .into(),
                refusal: Refusal::ApiServer,
            });
            return;
        };
        let (cardinality, bounded) = match cardinality {
            Some(c) => (c, true),
            None => (decl::max_cardinality(decl.min_serialized_size), false),
        };
        for (i, rule) in rules.iter().enumerate() {
            let text = rule.get("rule").and_then(Value::as_str).unwrap_or_default();
            if text.trim().is_empty() {
                continue;
            }
            let field = format!("{path}.x-kubernetes-validations[{i}].rule");
            let cost = match estimate_with_decl(&decl, text, ResultType::Bool) {
                Ok(c) => c.max,
                Err(e) => {
                    self.errors.push(CostError {
                        crd: self.kind.to_string(),
                        field,
                        detail: format!("Invalid value: {text:?}: {e}"),
                        refusal: Refusal::ApiServer,
                    });
                    continue;
                }
            };
            let message_expression = match rule
                .get("messageExpression")
                .and_then(Value::as_str)
                .filter(|m| !m.trim().is_empty())
            {
                None => None,
                Some(m) => {
                    let mfield = format!("{path}.x-kubernetes-validations[{i}].messageExpression");
                    match estimate_with_decl(&decl, m, ResultType::String) {
                        Ok(c) => Some((mfield, c.max)),
                        Err(e) => {
                            self.errors.push(CostError {
                                crd: self.kind.to_string(),
                                field: mfield,
                                detail: format!("Invalid value: {m:?}: messageExpression {e}"),
                                refusal: Refusal::ApiServer,
                            });
                            None
                        }
                    }
                }
            };
            self.rules.push(RuleCost {
                kind: self.kind.to_string(),
                schema_path: if schema_path.is_empty() {
                    "(root)".into()
                } else {
                    schema_path.to_string()
                },
                field,
                rule: text.to_string(),
                cost,
                cardinality,
                bounded,
                total: multiply_with_overflow_guard(cost, cardinality),
                message_expression,
            });
        }
    }
}

/// `multiplyWithOverflowGuard`.
fn multiply_with_overflow_guard(cost: u64, cardinality: u64) -> u64 {
    cost.saturating_mul(cardinality)
}

/// What the API server says about `crd`'s costs: per-rule and per-message-expression
/// limits, then (when the total is over) the up to four rules contributing at least 1% of
/// the CRD limit, most expensive first, and the total.
pub fn api_server_errors(crd: &CrdCost) -> Vec<CostError> {
    let err = |field: &str, detail: String| CostError {
        crd: crd.kind.clone(),
        field: field.to_string(),
        detail,
        refusal: Refusal::ApiServer,
    };
    let mut errors = Vec::new();
    // TotalCost.MostExpensive: (field, cost) of expressions costing at least 1% of the limit
    let mut expensive: Vec<(&str, u64)> = Vec::new();
    for r in &crd.rules {
        if r.total > STATIC_ESTIMATED_COST_LIMIT {
            errors.push(err(
                &r.field,
                forbidden(cost_error_message(
                    "estimated rule cost",
                    r.total,
                    STATIC_ESTIMATED_COST_LIMIT,
                )),
            ));
        }
        expensive.push((&r.field, r.total));
        if let Some((field, cost)) = &r.message_expression {
            if *cost > STATIC_ESTIMATED_COST_LIMIT {
                errors.push(err(
                    field,
                    forbidden(cost_error_message(
                        "estimated messageExpression cost",
                        *cost,
                        STATIC_ESTIMATED_COST_LIMIT,
                    )),
                ));
            }
            expensive.push((field, *cost));
        }
    }
    if crd.total > STATIC_ESTIMATED_CRD_COST_LIMIT {
        expensive.retain(|(_, c)| *c >= STATIC_ESTIMATED_CRD_COST_LIMIT / 100);
        expensive.sort_by_key(|e| std::cmp::Reverse(e.1));
        expensive.truncate(4);
        for (field, _) in &expensive {
            errors.push(err(
                field,
                forbidden("contributed to estimated rule & messageExpression cost total exceeding cost limit for entire OpenAPIv3 schema"),
            ));
        }
        let root = crd
            .rules
            .first()
            .map(|r| schema_root(&r.field))
            .unwrap_or("spec.validation.openAPIV3Schema");
        errors.push(err(
            root,
            forbidden(cost_error_message(
                "x-kubernetes-validations estimated rule & messageExpression cost total for entire OpenAPIv3 schema",
                crd.total,
                STATIC_ESTIMATED_CRD_COST_LIMIT,
            )),
        ));
    }
    errors
}

/// The `...openAPIV3Schema` prefix of a rule's field path.
fn schema_root(field: &str) -> &str {
    match field.find(".openAPIV3Schema") {
        Some(i) => &field[..i + ".openAPIV3Schema".len()],
        None => field,
    }
}

/// This project's budget, beyond the API server's limits: no rule (or message expression)
/// above [`RULE_BUDGET`] per evaluation. (A CRD above [`CRD_BUDGET`], the API server's
/// own limit, is one of [`api_server_errors`].)
pub fn budget_errors(crd: &CrdCost) -> Vec<CostError> {
    let err = |field: &str, detail: String| CostError {
        crd: crd.kind.clone(),
        field: field.to_string(),
        detail,
        refusal: Refusal::ProjectBudget,
    };
    let mut errors = Vec::new();
    for r in &crd.rules {
        if r.cost > RULE_BUDGET {
            errors.push(err(
                &r.field,
                forbidden(format!(
                    "estimated cost of one evaluation {} exceeds the budget of {RULE_BUDGET} per rule (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)",
                    r.cost
                )),
            ));
        }
        if let Some((field, cost)) = &r.message_expression
            && *cost > RULE_BUDGET
        {
            errors.push(err(
                field,
                forbidden(format!(
                    "estimated messageExpression cost {cost} exceeds the budget of {RULE_BUDGET} per expression"
                )),
            ));
        }
    }
    // The CRD budget is the API server's own limit: `api_server_errors` reports a total
    // over it.
    errors
}

/// Estimates `crds` and checks them against the API server's limits and this project's
/// budget: the report, or every problem found.
pub fn check_crd_list(crds: &[CustomResourceDefinition]) -> Result<Report, Vec<CostError>> {
    let mut report = Report { crds: Vec::new() };
    let mut errors = Vec::new();
    for crd in crds {
        let (cost, estimate_errors) = estimate_crd(crd);
        errors.extend(estimate_errors);
        errors.extend(api_server_errors(&cost));
        errors.extend(budget_errors(&cost));
        report.crds.push(cost);
    }
    if errors.is_empty() {
        Ok(report)
    } else {
        Err(errors)
    }
}

/// [`check_crd_list`] over [`crate::all_crds`]: the CRDs `relayctl crds` prints and
/// `relayctl install` installs.
pub fn check_crds() -> Result<Report, Vec<CostError>> {
    check_crd_list(&crate::all_crds())
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for crd in &self.crds {
            writeln!(f, "{} ({})", crd.kind, crd.name)?;
            writeln!(
                f,
                "  {:>10} {:>8} {:>12}  {:<44} rule",
                "cost", "× times", "= total", "path"
            )?;
            for r in &crd.rules {
                let mut rule: String = r.rule.chars().take(70).collect();
                if rule.len() < r.rule.len() {
                    rule.push('…');
                }
                writeln!(
                    f,
                    "  {:>10} {:>7}{} {:>12}  {:<44} {}",
                    r.cost,
                    r.cardinality,
                    if r.bounded { " " } else { "*" },
                    r.total,
                    r.schema_path,
                    rule
                )?;
                if let Some((_, cost)) = &r.message_expression {
                    writeln!(
                        f,
                        "  {:>10} {:>7}  {:>12}  {:<44} (its messageExpression)",
                        cost, 1, cost, r.schema_path
                    )?;
                }
            }
            writeln!(
                f,
                "  total {} of {} ({:.2}%)",
                crd.total,
                STATIC_ESTIMATED_CRD_COST_LIMIT,
                crd.total as f64 * 100.0 / STATIC_ESTIMATED_CRD_COST_LIMIT as f64
            )?;
        }
        if self.crds.iter().any(|c| c.rules.iter().any(|r| !r.bounded)) {
            writeln!(
                f,
                "  * no maxItems/maxProperties above the rule: the API server's request-size fallback"
            )?;
        }
        Ok(())
    }
}
