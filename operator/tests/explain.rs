//! `relayctl explain`, `relayctl test` and the expectation cases in `relayctl plan`, run as
//! a user runs them: the printed lines and the exit codes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// Runs relayctl in `dir` and returns (exit code, stdout, stderr).
fn relayctl_in(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_relayctl"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn relayctl(args: &[&str]) -> (i32, String, String) {
    relayctl_in(&examples(), args)
}

fn explain(scenario: &str, args: &[&str]) -> String {
    let mut all = vec!["explain", scenario];
    all.extend_from_slice(args);
    let (code, out, err) = relayctl(&all);
    assert_eq!(code, 0, "relayctl explain {args:?} failed:\n{out}\n{err}");
    out
}

fn has_line(out: &str, parts: &[&str]) -> bool {
    out.lines().any(|l| parts.iter().all(|p| l.contains(p)))
}

#[track_caller]
fn assert_line(out: &str, parts: &[&str]) {
    assert!(
        has_line(out, parts),
        "no line with all of {parts:?} in:\n{out}"
    );
}

#[test]
fn quickstart_loopback_mail_is_accepted_and_routed_to_the_sink() {
    let out = explain(
        "quickstart",
        &[
            "--client-ip",
            "127.0.0.1",
            "--from",
            "app@acme.example",
            "--to",
            "bob@example.net",
        ],
    );
    assert_line(
        &out,
        &[
            "IP allow list",
            "ok",
            "127.0.0.1 is in range acme/loopback-v4",
        ],
    );
    assert_line(&out, &["MAIL FROM:<app@acme.example>", "→ 250 2.1.0 OK"]);
    assert_line(&out, &["RCPT TO:<bob@example.net>", "→ 250 2.1.5 OK"]);
    assert_line(
        &out,
        &["bob@example.net → acme/default: 127.0.0.1:2525; TLS opportunistic"],
    );
    assert_line(&out, &["Result: accepted"]);
    assert_line(&out, &["note: limits are counted at runtime"]);

    // Syntax comes before policy, as in the relay.
    let bad = explain(
        "quickstart",
        &[
            "--client-ip",
            "127.0.0.1",
            "--from",
            "a b@acme.example",
            "--to",
            "bob@example.net",
        ],
    );
    assert_line(
        &bad,
        &["(not consulted: MAIL was refused before the sender policy was asked)"],
    );
    assert_line(&bad, &["→ 501 5.1.3 Bad sender address syntax"]);

    // A bounce takes one recipient: the second is refused, the first still goes.
    let bounce = explain(
        "quickstart",
        &[
            "--client-ip",
            "127.0.0.1",
            "--helo",
            "mx.acme.example",
            "--from",
            "",
            "--to",
            "a@example.net",
            "--to",
            "b@example.net",
        ],
    );
    assert_line(
        &bounce,
        &[
            "RCPT TO:<b@example.net>",
            "→ 550 5.5.3 Null sender accepts exactly one recipient",
        ],
    );
    assert_line(
        &bounce,
        &["Result: partly accepted: 1 of 2 recipient(s) (RCPT b@example.net: 550 5.5.3"],
    );
}

#[test]
fn on_premise_names_the_disabled_range_the_unselected_range_and_missing_tls() {
    let disabled = explain(
        "on-premise-ip-range",
        &[
            "--client-ip",
            "198.51.100.7",
            "--tls",
            "--from",
            "a@acme.example",
            "--to",
            "b@example.net",
        ],
    );
    assert_line(
        &disabled,
        &[
            "IP allow list",
            "failed",
            "range disabled: 198.51.100.7 is in range acme/old-mail-server",
        ],
    );
    assert_line(
        &disabled,
        &[
            "MAIL FROM:<a@acme.example>",
            "→ 550 5.7.1 Client host [198.51.100.7] is not allowed to relay through this server",
        ],
    );
    assert_line(&disabled, &["acme/head-office: does not accept"]);

    let outside = explain(
        "on-premise-ip-range",
        &[
            "--client-ip",
            "192.0.2.1",
            "--from",
            "a@acme.example",
            "--to",
            "b@example.net",
        ],
    );
    assert_line(
        &outside,
        &[
            "failed",
            "range not selected: 192.0.2.1 is in none of the 2 enabled range(s)",
        ],
    );

    let plain = explain(
        "on-premise-ip-range",
        &[
            "--client-ip",
            "203.0.113.25",
            "--from",
            "a@acme.example",
            "--to",
            "b@example.net",
        ],
    );
    assert_line(
        &plain,
        &[
            "TLS",
            "failed",
            "TLS missing: the setting requires STARTTLS",
        ],
    );
    assert_line(&plain, &["→ 530 5.7.0 Must issue a STARTTLS command first"]);

    let foreign = explain(
        "on-premise-ip-range",
        &[
            "--client-ip",
            "203.0.113.25",
            "--tls",
            "--from",
            "a@other.example",
            "--to",
            "b@example.net",
        ],
    );
    assert_line(&foreign, &["STARTTLS", "→ 220 2.0.0 Ready to start TLS"]);
    assert_line(
        &foreign,
        &[
            "sender",
            "failed",
            "Sender domain other.example does not belong to the organization",
        ],
    );
    assert_line(
        &foreign,
        &["Result: refused (MAIL: 550 5.7.1 Sender domain other.example"],
    );
}

#[test]
fn applications_name_missing_auth_and_show_the_sender_rewrite() {
    let anonymous = explain(
        "applications-smtp-auth",
        &[
            "--client-ip",
            "198.51.100.20",
            "--tls",
            "--from",
            "noreply@tickets.example",
            "--to",
            "c@example.net",
        ],
    );
    assert_line(
        &anonymous,
        &[
            "SMTP AUTH",
            "failed",
            "AUTH missing: the setting requires SMTP AUTH",
        ],
    );

    let out = explain(
        "applications-smtp-auth",
        &[
            "--client-ip",
            "198.51.100.20",
            "--tls",
            "--auth",
            "ticketing@acme.example",
            "--from",
            "noreply@tickets.example",
            "--to",
            "c@example.net",
        ],
    );
    assert_line(&out, &["AUTH PLAIN (credentials)", "→ 235 2.7.0"]);
    assert_line(
        &out,
        &["Envelope sender rewritten to postmaster@acme.example"],
    );
    assert_line(
        &out,
        &[
            "c@example.net → acme/default: outbound-gateway.acme.example:587; TLS required, CA-signed certificate, hostname checked",
        ],
    );
    assert_line(
        &out,
        &["note: assumed the password of ticketing@acme.example is right"],
    );

    // AUTH without TLS: the relay refuses it, and so does the explanation.
    let plain = explain(
        "applications-smtp-auth",
        &[
            "--client-ip",
            "198.51.100.20",
            "--auth",
            "ticketing@acme.example",
            "--from",
            "a@acme.example",
            "--to",
            "c@example.net",
        ],
    );
    assert_line(&plain, &["AUTH PLAIN (credentials)", "→ 538 5.7.11"]);

    // A user the credentials Secret beside the manifests does not hold cannot log in.
    let unknown = explain(
        "applications-smtp-auth",
        &[
            "--client-ip",
            "198.51.100.20",
            "--tls",
            "--auth",
            "bob@acme.example",
            "--from",
            "bob@acme.example",
            "--to",
            "c@example.net",
        ],
    );
    assert_line(&unknown, &["AUTH PLAIN (credentials)", "→ 535 5.7.8"]);
    assert_line(
        &unknown,
        &["note: bob@acme.example has no credentials in Secret acme/smtp-credentials"],
    );
}

#[test]
fn routes_show_weights_mx_lookup_direct_delivery_and_relaxed_tls() {
    let partner = explain(
        "multi-host-route",
        &[
            "--client-ip",
            "192.0.2.10",
            "--from",
            "a@acme.example",
            "--to",
            "x@partner.example",
            "--to",
            "y@example.net",
        ],
    );
    assert_line(
        &partner,
        &[
            "x@partner.example → acme/partner: primary mx1.partner.example:25 50%, primary mx2.partner.example:25 50%, secondary backup.partner.example:2525 100%; TLS required, CA-signed certificate, hostname checked",
        ],
    );
    assert_line(
        &partner,
        &["y@example.net → direct: example.net:25 (MX delivery); TLS opportunistic"],
    );
    let mx = explain(
        "mx-lookup-route",
        &[
            "--client-ip",
            "192.0.2.10",
            "--from",
            "a@acme.example",
            "--to",
            "b@subsidiary.example",
        ],
    );
    assert_line(
        &mx,
        &["acme/subsidiary: subsidiary.example:25 (MX lookup); TLS required"],
    );
    let archive = explain(
        "tls-relaxed-route",
        &[
            "--client-ip",
            "192.0.2.10",
            "--from",
            "a@acme.example",
            "--to",
            "j@archive.acme.example",
        ],
    );
    assert_line(
        &archive,
        &["acme/archive: 10.20.0.15:25; TLS required, any certificate, hostname not checked"],
    );
}

#[test]
fn explain_speaks_json_for_tools() {
    let out = explain(
        "applications-smtp-auth",
        &[
            "--client-ip",
            "198.51.100.20",
            "--tls",
            "--auth",
            "ticketing@acme.example",
            "--from",
            "noreply@tickets.example",
            "--to",
            "c@example.net",
            "--format",
            "json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["accepted"], true);
    assert_eq!(v["mailReply"], "250 2.1.0 OK");
    assert_eq!(v["rewrittenSender"], "postmaster@acme.example");
    assert_eq!(v["settings"][0]["name"], "acme/applications");
    assert_eq!(v["settings"][0]["boxes"][1]["box"], "auth");
    assert_eq!(v["settings"][0]["boxes"][1]["state"], "ok");
    assert_eq!(v["recipients"][0]["route"]["name"], "acme/default");
    assert_eq!(v["recipients"][0]["route"]["hosts"][0]["port"], 587);
}

#[test]
fn every_example_passes_its_expectations() {
    for scenario in [
        "quickstart",
        "on-premise-ip-range",
        "applications-smtp-auth",
        "multi-host-route",
        "mx-lookup-route",
        "tls-relaxed-route",
        "ses-plain-587",
        "smarthost-implicit-tls-465",
        "microsoft-365-xoauth2",
        "gmail-xoauth2",
        "google-service-account",
    ] {
        let (code, out, err) = relayctl(&["test", scenario]);
        assert_eq!(code, 0, "{scenario}:\n{out}\n{err}");
        assert!(out.contains(" passed, 0 failed"), "{out}");
        assert!(out.lines().all(|l| !l.starts_with("FAIL")), "{out}");
    }
}

const EXPECTATION: &str = "apiVersion: smtprelay.dev/v1alpha1
kind: RelayExpectation
metadata:
  name: policy
  namespace: acme
spec:
  cases:
    - name: loopback sends
      client: {ip: 127.0.0.1}
      from: app@acme.example
      to: [bob@example.net]
      expect: {accepted: true, route: default}
";

/// A directory holding the quickstart manifests and `expectations`.
fn scenario(expectations: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        examples().join("quickstart/relay.yaml"),
        dir.path().join("relay.yaml"),
    )
    .unwrap();
    std::fs::write(dir.path().join("expectations.yaml"), expectations).unwrap();
    dir
}

#[test]
fn a_failing_case_prints_a_diff_and_exits_1() {
    let wrong = EXPECTATION.replace(
        "expect: {accepted: true, route: default}",
        "expect: {accepted: true, route: partner, sender: other@acme.example}",
    );
    let dir = scenario(&wrong);
    let (code, out, _) = relayctl_in(dir.path(), &["test", "."]);
    assert_eq!(code, 1, "{out}");
    assert_line(
        &out,
        &["FAIL  RelayExpectation acme/policy (./expectations.yaml:1): loopback sends"],
    );
    assert!(
        out.contains(
            "        route:\n          - expected: partner\n          + got:      acme/default\n"
        ),
        "{out}"
    );
    assert!(
        out.contains("        sender:\n          - expected: other@acme.example\n          + got:      app@acme.example\n"),
        "{out}"
    );
    assert_line(&out, &["1 case(s), 0 passed, 1 failed"]);

    let dir = scenario(EXPECTATION);
    let (code, out, _) = relayctl_in(dir.path(), &["test", "."]);
    assert_eq!(code, 0, "{out}");
    assert_line(
        &out,
        &["pass  RelayExpectation acme/policy", "loopback sends"],
    );
}

#[test]
fn malformed_expectations_are_invalid_input_with_file_line_and_field() {
    let bad_ip = EXPECTATION.replace("ip: 127.0.0.1", "ip: 127.0.0.300");
    let dir = scenario(&bad_ip);
    for command in ["test", "validate"] {
        let (code, _, err) = relayctl_in(dir.path(), &[command, "."]);
        assert_eq!(code, 2, "{command}: {err}");
        assert_line(
            &err,
            &[
                "expectations.yaml:",
                "(RelayExpectation acme/policy)",
                "client.ip must be an IPv4 or IPv6 address",
            ],
        );
    }
    let unknown = EXPECTATION.replace("accepted: true,", "acepted: true,");
    let dir = scenario(&unknown);
    let (code, _, err) = relayctl_in(dir.path(), &["test", "."]);
    assert_eq!(code, 2, "{err}");
    assert_line(
        &err,
        &["expectations.yaml:12", "spec.cases[0].expect", "acepted"],
    );

    let twice = format!(
        "{EXPECTATION}    - name: loopback sends\n      client: {{ip: 127.0.0.1}}\n      from: a@acme.example\n      to: [b@example.net]\n      expect: {{accepted: true}}\n"
    );
    let dir = scenario(&twice);
    let (code, _, err) = relayctl_in(dir.path(), &["validate", "."]);
    assert_eq!(code, 2, "{err}");
    assert_line(
        &err,
        &[
            "expectations.yaml:13",
            "spec.cases[1].name",
            "duplicate case name",
        ],
    );

    let (code, _, err) = relayctl(&["test", "invalid/range-host-bits.yaml"]);
    assert_eq!(code, 2, "{err}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        examples().join("quickstart/relay.yaml"),
        dir.path().join("relay.yaml"),
    )
    .unwrap();
    let (code, _, err) = relayctl_in(dir.path(), &["test", "."]);
    assert_eq!(code, 2, "{err}");
    assert_line(&err, &["no RelayExpectation found", "nothing to test"]);
}

#[test]
fn validate_accepts_expectation_files_beside_the_manifests() {
    let (code, out, err) = relayctl(&["validate", "quickstart"]);
    assert_eq!(code, 0, "{err}");
    assert_line(&out, &["5 objects valid, 4 expectation case(s)"]);
}

fn git(dir: &Path, args: &[&str]) {
    common::ensure_git();
    let status = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "git {args:?}");
}

#[test]
fn plan_reports_cases_whose_outcome_changed() {
    let dir = scenario(EXPECTATION);
    let repo = dir.path();
    git(repo, &["init", "-q", "-b", "main"]);
    git(repo, &["config", "user.email", "test@example.com"]);
    git(repo, &["config", "user.name", "test"]);
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", "base"]);
    let manifest = std::fs::read_to_string(repo.join("relay.yaml")).unwrap();
    let edited = manifest.replace(
        "  description: IPv4 loopback\n  cidr: 127.0.0.1\n",
        "  description: IPv4 loopback\n  cidr: 127.0.0.1\n  enabled: false\n",
    );
    assert_ne!(edited, manifest);
    std::fs::write(repo.join("relay.yaml"), edited).unwrap();
    let (code, out, err) = relayctl_in(repo, &["plan", "--base", "HEAD", "."]);
    assert_eq!(code, 0, "no --fail-on: {out}\n{err}");
    let (gated, _, _) = relayctl_in(
        repo,
        &["plan", "--base", "HEAD", "--fail-on", "breaking", "."],
    );
    assert_eq!(gated, 1, "a case that passed at the base fails now");
    assert_line(
        &out,
        &[
            "warning  RelayExpectation acme/policy: case \"loopback sends\": accepted, sender <app@acme.example>, route acme/default → refused at MAIL: 550 5.7.1 Client host [127.0.0.1] is not allowed to relay through this server (the expectation now fails)",
        ],
    );
}
