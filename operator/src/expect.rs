//! `relayctl test`: the cases of `RelayExpectation` documents, evaluated with
//! [`crate::explain`] against the rendered manifests, and the outcomes `relayctl plan`
//! compares between two revisions.
//!
//! A case passes when every field its `expect` states matches: `accepted`, the MAIL reply,
//! every RCPT reply (reply fields match the start of the reply, so `"550"` and
//! `"550 5.7.1"` both match `550 5.7.1 Client host ...`), the route every recipient
//! takes, and the envelope sender after any rewrite.

use std::fmt::Write as _;

use crds::manifest::{Loaded, ManifestSet};
use crds::{ExpectationCase, RelayExpectation};
use kube::ResourceExt;
use relay::config::RelayConfig;
use serde::Serialize;

use crate::explain::{Explanation, ManifestFacts, Query, explain, refusal};
use crate::plan::{Change, Severity};

/// A field of `expect` that did not match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Mismatch {
    /// `accepted`, `mailReply`, `rcptReply`, `route` or `sender`.
    pub field: &'static str,
    pub expected: String,
    pub got: String,
}

/// One evaluated case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CaseResult {
    /// `RelayExpectation namespace/name`.
    pub object: String,
    /// `file:line` of the document holding the case.
    pub location: String,
    pub case: String,
    /// What happened, in one line (compared by `relayctl plan`).
    pub outcome: String,
    /// Empty when the case passed.
    pub mismatches: Vec<Mismatch>,
}

impl CaseResult {
    pub fn passed(&self) -> bool {
        self.mismatches.is_empty()
    }
}

/// The session a case describes.
pub fn query_of(case: &ExpectationCase) -> Result<Query, String> {
    let client_ip = case
        .client
        .ip
        .trim()
        .parse()
        .map_err(|_| format!("client.ip {:?} is not an IP address", case.client.ip))?;
    Ok(Query {
        client_ip,
        helo: case.client.helo.clone(),
        tls: case.client.tls,
        auth: case.client.auth.clone(),
        from: case.from.clone(),
        to: case.to.clone(),
    })
}

/// What happened to a session, in one line: `accepted, sender S, route R` or
/// `refused at MAIL: reply`.
pub fn outcome(e: &Explanation, query: &Query) -> String {
    if !e.accepted {
        return format!("refused at {}", refusal(e));
    }
    let mut routes: Vec<String> = e
        .recipients
        .iter()
        .filter_map(|r| r.route.as_ref().map(|x| x.name.clone()))
        .collect();
    routes.dedup();
    format!(
        "accepted, sender <{}>, route {}",
        e.envelope_sender(query),
        routes.join(" + ")
    )
}

fn reply_matches(expected: &str, got: &str) -> bool {
    let expected = expected.trim();
    !expected.is_empty() && got.starts_with(expected)
}

fn route_matches(expected: &str, got: &str) -> bool {
    got == expected || got.rsplit('/').next() == Some(expected)
}

/// Compares an explanation with what a case expects.
pub fn check(case: &ExpectationCase, e: &Explanation, query: &Query) -> Vec<Mismatch> {
    let x = &case.expect;
    let mut out = Vec::new();
    if let Some(accepted) = x.accepted
        && accepted != e.accepted
    {
        out.push(Mismatch {
            field: "accepted",
            expected: accepted.to_string(),
            got: format!(
                "{} ({})",
                e.accepted,
                if e.accepted {
                    "MAIL and every RCPT got 250".to_string()
                } else {
                    refusal(e)
                }
            ),
        });
    }
    if let Some(reply) = &x.mail_reply
        && !reply_matches(reply, &e.mail_reply)
    {
        out.push(Mismatch {
            field: "mailReply",
            expected: reply.clone(),
            got: e.mail_reply.clone(),
        });
    }
    if let Some(reply) = &x.rcpt_reply {
        for r in &e.recipients {
            let got = r.reply.as_deref().unwrap_or("");
            if !reply_matches(reply, got) {
                out.push(Mismatch {
                    field: "rcptReply",
                    expected: reply.clone(),
                    got: match &r.reply {
                        Some(g) => format!("{g} (for {})", r.address),
                        None => format!("no RCPT sent for {}: MAIL was refused", r.address),
                    },
                });
                break;
            }
        }
    }
    if let Some(route) = &x.route {
        let got: Vec<String> = e
            .recipients
            .iter()
            .map(|r| match &r.route {
                Some(route) => route.name.clone(),
                None => format!("(not accepted: {})", r.address),
            })
            .collect();
        if got.is_empty() || !got.iter().all(|g| route_matches(route, g)) {
            let mut got = got;
            got.dedup();
            out.push(Mismatch {
                field: "route",
                expected: route.clone(),
                got: got.join(", "),
            });
        }
    }
    if let Some(sender) = &x.sender {
        let got = if e.mail_reply.starts_with('2') {
            e.envelope_sender(query).to_string()
        } else {
            format!("(MAIL refused: {})", e.mail_reply)
        };
        if !got.eq_ignore_ascii_case(sender) {
            out.push(Mismatch {
                field: "sender",
                expected: sender.clone(),
                got,
            });
        }
    }
    out
}

fn object_name(x: &RelayExpectation) -> String {
    format!(
        "RelayExpectation {}/{}",
        x.namespace().unwrap_or_else(|| "default".into()),
        x.name_any()
    )
}

/// Evaluates every case of `expectations` against `config`.
pub fn evaluate(
    config: &RelayConfig,
    facts: &ManifestFacts,
    expectations: &[Loaded<RelayExpectation>],
) -> Vec<CaseResult> {
    let mut out = Vec::new();
    for loaded in expectations {
        let object = object_name(&loaded.object);
        let location = format!("{}:{}", loaded.source.file, loaded.source.line);
        for case in &loaded.object.spec.cases {
            let (outcome, mismatches) = match query_of(case) {
                Ok(query) => {
                    let e = explain(config, facts, &query);
                    (outcome(&e, &query), check(case, &e, &query))
                }
                Err(message) => (
                    message.clone(),
                    vec![Mismatch {
                        field: "client.ip",
                        expected: "an IP address".into(),
                        got: message,
                    }],
                ),
            };
            out.push(CaseResult {
                object: object.clone(),
                location: location.clone(),
                case: case.name.clone(),
                outcome,
                mismatches,
            });
        }
    }
    out
}

/// The `relayctl test` report: one line per case, a diff under each failure, a total.
pub fn text(results: &[CaseResult]) -> String {
    let mut out = String::new();
    for r in results {
        let _ = writeln!(
            out,
            "{}  {} ({}): {}",
            if r.passed() { "pass" } else { "FAIL" },
            r.object,
            r.location,
            r.case
        );
        for m in &r.mismatches {
            let _ = writeln!(out, "        {}:", m.field);
            let _ = writeln!(out, "          - expected: {}", m.expected);
            let _ = writeln!(out, "          + got:      {}", m.got);
        }
    }
    let failed = results.iter().filter(|r| !r.passed()).count();
    let _ = writeln!(
        out,
        "{} case(s), {} passed, {} failed",
        results.len(),
        results.len() - failed,
        failed
    );
    out
}

/// Cases whose outcome differs between two revisions, as plan lines. The cases are the
/// head's, plus those only the base has; each runs against both configurations. A case
/// whose expectation fails at the head is a warning.
pub fn outcome_changes(
    base: (&RelayConfig, &ManifestSet),
    head: (&RelayConfig, &ManifestSet),
) -> Vec<Change> {
    let mut cases: Vec<Loaded<RelayExpectation>> = head.1.expectations.clone();
    for b in &base.1.expectations {
        if !cases
            .iter()
            .any(|h| object_name(&h.object) == object_name(&b.object))
        {
            cases.push(b.clone());
        }
    }
    let base_results = evaluate(base.0, &ManifestFacts::of(base.1), &cases);
    let head_results = evaluate(head.0, &ManifestFacts::of(head.1), &cases);
    base_results
        .iter()
        .zip(&head_results)
        .filter(|(b, h)| b.outcome != h.outcome)
        .map(|(b, h)| Change {
            severity: if h.passed() {
                Severity::Notice
            } else {
                Severity::Warning
            },
            object: h.object.clone(),
            change: format!(
                "case \"{}\": {} → {}{}",
                h.case,
                b.outcome,
                h.outcome,
                if h.passed() {
                    ""
                } else {
                    " (the expectation now fails)"
                }
            ),
            breaks_expectation: b.passed() && !h.passed(),
        })
        .collect()
}
