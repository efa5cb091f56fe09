//! `relayctl plan` against throwaway Git repositories: one commit per kind of change, the
//! printed lines and the exit code checked for each.

mod common;

use std::path::Path;
use std::process::Command;

const QUICKSTART: &str = include_str!("../../examples/quickstart/relay.yaml");
const MULTI_HOST: &str = include_str!("../../examples/multi-host-route/relay.yaml");

struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    fn new(manifest: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo { dir };
        repo.git(&["init", "-q", "-b", "main"]);
        repo.git(&["config", "user.email", "test@example.com"]);
        repo.git(&["config", "user.name", "test"]);
        repo.commit(manifest, "base");
        repo
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn git(&self, args: &[&str]) {
        common::ensure_git();
        let status = Command::new("git")
            .arg("-C")
            .arg(self.path())
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    }

    fn write(&self, manifest: &str) {
        std::fs::create_dir_all(self.path().join("relay")).unwrap();
        std::fs::write(self.path().join("relay/manifests.yaml"), manifest).unwrap();
    }

    fn commit(&self, manifest: &str, message: &str) {
        self.write(manifest);
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
    }

    /// Runs `relayctl plan --base HEAD~1 --head HEAD relay` (or against the working tree).
    fn plan(&self, extra: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_relayctl"))
            .current_dir(self.path())
            .args(["plan", "--base", "HEAD~1", "--head", "HEAD"])
            .args(extra)
            .arg("relay")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }
}

/// `relayctl plan` gated on any change, so the exit code says whether there was one.
fn change(base: &str, head: &str) -> (i32, String, String) {
    let repo = Repo::new(base);
    repo.commit(head, "change");
    repo.plan(&["--fail-on", "change"])
}

const SMTP_AUTH: &str = include_str!("../../examples/applications-smtp-auth/relay.yaml");

/// A user's line removed from the credentials Secret changes no rendered field, yet it
/// revokes a password: plan says so, without printing any of the Secret.
#[test]
fn a_credentials_secret_edit_is_reported_without_its_content() {
    let ticketing = SMTP_AUTH
        .lines()
        .find(|l| {
            l.trim_start()
                .starts_with("ticketing@acme.example:$argon2id")
        })
        .unwrap();
    let head = SMTP_AUTH.replace(&format!("{ticketing}\n"), "");
    assert_ne!(head, SMTP_AUTH);
    let (code, out, err) = change(SMTP_AUTH, &head);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("Secret acme/smtp-credentials") && out.contains("credentials changed"),
        "{out}"
    );
    assert!(
        !out.contains("argon2id") && !out.contains("ticketing"),
        "{out}"
    );
}

const SES: &str = include_str!("../../examples/ses-plain-587/relay.yaml");

/// A route's smarthost password rotated, and the route pointed at another Secret: plan
/// says "credentials changed" for both, and prints neither password.
#[test]
fn route_credentials_changes_are_reported_without_their_content() {
    let rotated = SES.replace(
        "password: replace-with-the-ses-smtp-password",
        "password: rotated-ses-password-value",
    );
    assert_ne!(rotated, SES);
    let (code, out, err) = change(SES, &rotated);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("Secret acme/ses-smtp") && out.contains("credentials changed"),
        "{out}"
    );
    assert!(
        !out.contains("rotated-ses-password-value") && !out.contains("replace-with"),
        "{out}"
    );

    let moved = SES.replace("name: ses-smtp", "name: ses-smtp-2");
    let (code, out, err) = change(SES, &moved);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("MailRoute acme/ses")
            && out.contains("credentials changed: outbound AUTH PLAIN with Secret ses-smtp → PLAIN with Secret ses-smtp-2"),
        "{out}"
    );
    assert!(!out.contains("replace-with"), "{out}");
}

#[test]
fn reordering_and_reformatting_is_no_behavioural_change() {
    // Documents in reverse order, flow style, comments dropped, keys reordered.
    let mut docs: Vec<&str> = QUICKSTART.split("\n---\n").collect();
    docs.reverse();
    let reordered = docs
        .join("\n---\n")
        .replace("domains: [acme.example]", "domains:\n    - ACME.example");
    let (code, out, err) = change(QUICKSTART, &reordered);
    assert_eq!(
        (code, out.as_str()),
        (0, "No behavioural change.\n"),
        "{err}"
    );
}

#[test]
fn a_disabled_range_loses_ip_coverage() {
    let head = QUICKSTART.replace(
        "  cidr: 127.0.0.1\n",
        "  cidr: 127.0.0.1\n  enabled: false\n",
    );
    let (code, out, err) = change(QUICKSTART, &head);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        out,
        "1 behavioural change(s), 0 warning(s):\n  notice   SmtpRelaySetting acme/loopback-clients: IP coverage lost 1 address(es): 127.0.0.1/32\n"
    );
}

#[test]
fn a_widened_range_is_a_warning_with_the_addresses_gained() {
    let base = MULTI_HOST.replace("192.0.2.0/24", "198.51.100.0/25");
    let head = MULTI_HOST.replace("192.0.2.0/24", "198.51.100.0/24");
    let (code, out, err) = change(&base, &head);
    assert_eq!(code, 1, "{err}");
    assert!(
        out.contains("warning  SmtpRelaySetting acme/office: IP coverage gained 128 address(es): 198.51.100.128/25"),
        "{out}"
    );
}

#[test]
fn any_address_is_a_loosened_sender_policy() {
    let head = QUICKSTART.replace(
        "allowedSenders: OrganizationDomains",
        "allowedSenders: AnyAddress",
    );
    let (code, out, _) = change(QUICKSTART, &head);
    assert_eq!(code, 1);
    assert!(out.contains("warning  SmtpRelaySetting acme/loopback-clients: allowedSenders OrganizationDomains → AnyAddress (sender policy loosened)"), "{out}");
    let (_, back, _) = change(&head, QUICKSTART);
    assert!(back.contains("notice   SmtpRelaySetting acme/loopback-clients: allowedSenders AnyAddress → OrganizationDomains (sender policy tightened)"), "{back}");
}

#[test]
fn a_moved_load_share_names_both_hosts() {
    let head = MULTI_HOST
        .replace(
            "host: mx1.partner.example, port: 25, loadPercent: 50",
            "host: mx1.partner.example, port: 25, loadPercent: 70",
        )
        .replace(
            "host: mx2.partner.example, port: 25, loadPercent: 50",
            "host: mx2.partner.example, port: 25, loadPercent: 30",
        );
    let (code, out, _) = change(MULTI_HOST, &head);
    assert_eq!(code, 1);
    assert!(out.contains("notice   MailRoute acme/partner: primary host mx1.partner.example:25 load share 50% → 70%"), "{out}");
    assert!(out.contains("notice   MailRoute acme/partner: primary host mx2.partner.example:25 load share 50% → 30%"), "{out}");
}

#[test]
fn a_tls_check_turned_off_is_a_warning() {
    let head = MULTI_HOST.replace(
        "      - {host: backup.partner.example, port: 2525, loadPercent: 100}\n",
        "      - {host: backup.partner.example, port: 2525, loadPercent: 100}\n  tls:\n    validateHostname: false\n",
    );
    let (code, out, _) = change(MULTI_HOST, &head);
    assert_eq!(code, 1);
    assert_eq!(
        out,
        "1 behavioural change(s), 1 warning(s):\n  warning  MailRoute acme/partner: TLS check validateHostname turned off\n"
    );
}

#[test]
fn limits_follow_billing_and_overrides() {
    let head = QUICKSTART.replace("billing: Paid", "billing: Unpaid");
    let (code, out, _) = change(QUICKSTART, &head);
    assert_eq!(code, 1);
    assert!(
        out.contains(
            "notice   Organization acme/acme: limit customerRecipientsPerDay 1300 → 100 (lowered)"
        ),
        "{out}"
    );
    assert!(out.contains("notice   Organization acme/acme: limit customerRecipientsPer10Minutes 90 → 50 (lowered)"), "{out}");
}

#[test]
fn settings_added_and_removed() {
    let extra = "---\napiVersion: smtprelay.dev/v1alpha1\nkind: SmtpRelaySetting\nmetadata: {name: apps, namespace: acme}\nspec:\n  description: Apps\n  allowedSenders: RegisteredUsers\n  authentication: {ipAllowRanges: {enabled: true}}\n";
    let head = format!("{QUICKSTART}{extra}");
    let (code, out, _) = change(QUICKSTART, &head);
    assert_eq!(code, 1);
    assert!(out.contains("warning  SmtpRelaySetting acme/apps: added: allowedSenders RegisteredUsers, 2 range(s), 2 address(es), SMTP AUTH not required, TLS not required"), "{out}");
    let (_, out, _) = change(&head, QUICKSTART);
    assert!(
        out.contains("notice   SmtpRelaySetting acme/apps: removed"),
        "{out}"
    );
}

#[test]
fn invalid_manifests_exit_2_with_the_validation_message() {
    let head = QUICKSTART.replace("licenses: 10", "licenses: 0");
    let (code, out, err) = change(QUICKSTART, &head);
    assert_eq!(code, 2, "{out}");
    assert!(err.contains("manifests at HEAD are invalid"), "{err}");
    assert!(err.contains("relay/manifests.yaml:11: document 1 (Organization acme/acme): spec.licenses: licenses must be at least 1"), "{err}");
}

#[test]
fn working_tree_markdown_and_json() {
    let repo = Repo::new(QUICKSTART);
    repo.write(&QUICKSTART.replace(
        "allowedSenders: OrganizationDomains",
        "allowedSenders: AnyAddress",
    ));
    let out = Command::new(env!("CARGO_BIN_EXE_relayctl"))
        .current_dir(repo.path())
        .args(["plan", "--base", "HEAD", "-o", "markdown", "relay"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "no --fail-on: the plan is the answer"
    );
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(
        md.starts_with("### relayctl plan\n\n**1 behavioural change(s), 1 warning(s)**"),
        "{md}"
    );
    assert!(md.contains("| ⚠️ warning | `SmtpRelaySetting acme/loopback-clients` | allowedSenders OrganizationDomains → AnyAddress (sender policy loosened) |"), "{md}");

    let out = Command::new(env!("CARGO_BIN_EXE_relayctl"))
        .current_dir(repo.path())
        .args(["plan", "--base", "HEAD", "-o", "json", "relay"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["severity"], "warning");
    assert_eq!(v[0]["object"], "SmtpRelaySetting acme/loopback-clients");
}
