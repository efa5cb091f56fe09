//! One grammar for every `relayctl` command, run as a user runs the binary: each command
//! with each `-o` format prints one document that parses as the format claimed (and only
//! that on stdout), and exits 0 when done, 1 when the answer is no, 2 on invalid input.
//! Objects of other API groups are skipped with a note unless `--strict`; the old flags
//! still work with a deprecation note; `--help` states the exit codes; `relayctl man`
//! writes one page per command.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// What one run printed and how it ended.
struct Run {
    code: i32,
    out: String,
    err: String,
}

fn relayctl_in(dir: &Path, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_relayctl"))
        .current_dir(dir)
        .args(args)
        .env_remove("SMTPRELAY_ADMIN_TOKEN")
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn relayctl(args: &[&str]) -> Run {
    relayctl_in(&examples(), args)
}

/// Runs `args` with `-o format` and checks the exit code and that stdout is a document
/// of that format (JSON and YAML parse, and are the same value); returns it as JSON.
fn check(args: &[&str], format: &str, code: i32) -> Value {
    check_in(&examples(), args, format, code)
}

fn check_in(dir: &Path, args: &[&str], format: &str, code: i32) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", format]);
    let run = relayctl_in(dir, &all);
    assert_eq!(
        run.code, code,
        "relayctl {all:?}\nstdout:\n{}\nstderr:\n{}",
        run.out, run.err
    );
    assert!(
        !run.err.contains("Some(") && !run.err.contains("{ "),
        "no debug form in messages: {}",
        run.err
    );
    parse(format, &run.out, &all)
}

fn parse(format: &str, out: &str, args: &[&str]) -> Value {
    match format {
        "json" => serde_json::from_str(out)
            .unwrap_or_else(|e| panic!("relayctl {args:?}: not JSON ({e}):\n{out}")),
        "yaml" => {
            let v: Value = yaml_serde::from_str(out)
                .unwrap_or_else(|e| panic!("relayctl {args:?}: not YAML ({e}):\n{out}"));
            assert!(
                serde_json::from_str::<Value>(out).is_err(),
                "relayctl {args:?}: -o yaml printed JSON:\n{out}"
            );
            v
        }
        _ => {
            assert!(
                serde_json::from_str::<Value>(out).is_err(),
                "relayctl {args:?}: -o {format} printed JSON:\n{out}"
            );
            Value::String(out.to_string())
        }
    }
}

/// `validate`, `render`, `test` and `explain` refuse invalid manifests with exit 2 and
/// nothing but errors (on stderr) — `validate` also as its JSON/YAML result.
const INVALID: &str = "invalid/range-host-bits.yaml";

const EXPLAIN: &[&str] = &[
    "--client-ip",
    "127.0.0.1",
    "--from",
    "app@acme.example",
    "--to",
    "bob@example.net",
];

#[test]
fn validate_in_every_format_with_every_exit_code() {
    for format in ["text", "json", "yaml"] {
        let v = check(&["validate", "quickstart"], format, 0);
        match format {
            "text" => assert_eq!(
                v,
                "5 objects valid, 4 expectation case(s) (check them with relayctl test)\n"
            ),
            _ => {
                assert_eq!(v["valid"], true);
                assert_eq!(v["objects"], 5);
                assert_eq!(v["expectationCases"], 4);
                assert_eq!(v["errors"], serde_json::json!([]));
            }
        }
        let run = relayctl(&["validate", INVALID, "-o", format]);
        assert_eq!(run.code, 2, "{}", run.err);
        assert!(
            run.err.contains("range-host-bits.yaml:"),
            "the problem names the file and line on stderr: {}",
            run.err
        );
        if format == "text" {
            assert!(run.out.is_empty(), "{}", run.out);
        } else {
            let v = parse(format, &run.out, &["validate", INVALID]);
            assert_eq!(v["valid"], false);
            let e = &v["errors"][0];
            assert!(
                e["file"]
                    .as_str()
                    .unwrap()
                    .ends_with("range-host-bits.yaml")
            );
            assert!(e["line"].as_u64().unwrap() > 0, "{e}");
            assert_eq!(e["field"], "spec.cidr");
            assert!(e["message"].as_str().unwrap().contains("host bits"), "{e}");
        }
    }
}

#[test]
fn render_prints_the_same_document_as_json_and_yaml() {
    let json = check(&["render", "quickstart"], "json", 0);
    let yaml = check(&["render", "quickstart"], "yaml", 0);
    assert_eq!(json, yaml);
    assert_eq!(json["organization"]["name"], "acme/acme");
    // JSON is the default, as the ConfigMap holds it.
    let run = relayctl(&["render", "quickstart"]);
    assert_eq!(serde_json::from_str::<Value>(&run.out).unwrap(), json);
    let text = check(&["render", "quickstart"], "text", 0);
    let text = text.as_str().unwrap();
    assert!(
        text.starts_with("RelayConfig of Organization acme/acme (hash "),
        "{text}"
    );
    assert!(text.contains("routes     acme/default"), "{text}");
    for format in ["text", "json", "yaml"] {
        let run = relayctl(&["render", INVALID, "-o", format]);
        assert_eq!((run.code, run.out.as_str()), (2, ""), "{}", run.err);
    }
}

#[test]
fn explain_in_every_format() {
    let mut args = vec!["explain", "quickstart"];
    args.extend_from_slice(EXPLAIN);
    let json = check(&args, "json", 0);
    assert_eq!(json["accepted"], true);
    assert_eq!(check(&args, "yaml", 0), json);
    let text = check(&args, "text", 0);
    assert!(text.as_str().unwrap().starts_with("Client 127.0.0.1"));
    let md = check(&args, "markdown", 0);
    let md = md.as_str().unwrap();
    assert!(
        md.starts_with("### relayctl explain\n\n**Accepted**\n\n```text\nClient 127.0.0.1"),
        "{md}"
    );
    assert!(md.ends_with("```\n"), "{md}");

    let mut refused = vec!["explain", "quickstart", "--client-ip", "192.0.2.1"];
    refused.extend_from_slice(&EXPLAIN[2..]);
    let v = check(&refused, "json", 0);
    assert_eq!(v["accepted"], false, "a refusal is an answer: exit 0");

    let mut invalid = vec!["explain", INVALID];
    invalid.extend_from_slice(EXPLAIN);
    for format in ["text", "markdown", "json", "yaml"] {
        let mut a = invalid.clone();
        a.extend(["-o", format]);
        let run = relayctl(&a);
        assert_eq!((run.code, run.out.as_str()), (2, ""), "{}", run.err);
    }
}

/// The quickstart and an expectation that does not hold.
fn failing_case_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        examples().join("quickstart/relay.yaml"),
        dir.path().join("relay.yaml"),
    )
    .unwrap();
    let expectations = std::fs::read_to_string(examples().join("quickstart/expectations.yaml"))
        .unwrap()
        .replacen("accepted: true", "accepted: false", 1);
    std::fs::write(dir.path().join("expectations.yaml"), expectations).unwrap();
    dir
}

#[test]
fn test_in_every_format_with_every_exit_code() {
    let failing = failing_case_dir();
    for format in ["text", "json", "yaml"] {
        let pass = check(&["test", "quickstart"], format, 0);
        let fail = check_in(failing.path(), &["test", "."], format, 1);
        if format == "text" {
            assert!(
                pass.as_str()
                    .unwrap()
                    .ends_with("4 case(s), 4 passed, 0 failed\n"),
                "{pass}"
            );
            assert!(
                fail.as_str()
                    .unwrap()
                    .ends_with("4 case(s), 3 passed, 1 failed\n"),
                "{fail}"
            );
        } else {
            assert_eq!(
                (&pass["passed"], &pass["cases"], &pass["failed"]),
                (&Value::Bool(true), &Value::from(4), &Value::from(0))
            );
            assert_eq!(
                (&fail["passed"], &fail["failed"]),
                (&Value::Bool(false), &Value::from(1))
            );
            let failed = &fail["results"][0];
            assert_eq!(failed["mismatches"][0]["field"], "accepted", "{failed}");
        }
        let run = relayctl(&["test", INVALID, "-o", format]);
        assert_eq!((run.code, run.out.as_str()), (2, ""), "{}", run.err);
    }
}

/// A Git repository holding the quickstart, committed, with `edit` applied to the working
/// tree.
fn plan_repo(edit: impl Fn(&str) -> String) -> tempfile::TempDir {
    common::ensure_git();
    let dir = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        let ok = Command::new("git")
            .current_dir(dir.path())
            .args(args)
            .output()
            .unwrap()
            .status
            .success();
        assert!(ok, "git {args:?}");
    };
    let relay = std::fs::read_to_string(examples().join("quickstart/relay.yaml")).unwrap();
    std::fs::write(dir.path().join("relay.yaml"), &relay).unwrap();
    std::fs::copy(
        examples().join("quickstart/expectations.yaml"),
        dir.path().join("expectations.yaml"),
    )
    .unwrap();
    git(&["init", "-q", "-b", "main"]);
    git(&["config", "user.email", "test@example.com"]);
    git(&["config", "user.name", "test"]);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "base"]);
    std::fs::write(dir.path().join("relay.yaml"), edit(&relay)).unwrap();
    dir
}

#[test]
fn plan_in_every_format_and_its_gates() {
    // A widened range: a warning, and every expectation case still passes.
    let widened = plan_repo(|r| r.replacen("cidr: 127.0.0.1", "cidr: 127.0.0.0/24", 1));
    let dir = widened.path();
    let base = ["plan", "--base", "HEAD", "."];
    let json = check_in(dir, &base, "json", 0);
    assert_eq!(json[0]["severity"], "warning", "{json}");
    assert!(json[0].get("breaksExpectation").is_none(), "{json}");
    assert_eq!(check_in(dir, &base, "yaml", 0), json);
    let text = check_in(dir, &base, "text", 0);
    assert!(
        text.as_str()
            .unwrap()
            .starts_with("1 behavioural change(s), 1 warning(s):"),
        "{text}"
    );
    let md = check_in(dir, &base, "markdown", 0);
    assert!(md.as_str().unwrap().starts_with("### relayctl plan\n"));
    let gated = |dir: &Path, gate: &str, code: i32| {
        let mut a = base.to_vec();
        a.extend(["--fail-on", gate]);
        check_in(dir, &a, "json", code)
    };
    assert_eq!(
        gated(dir, "change", 1),
        json,
        "the plan is printed either way"
    );
    gated(dir, "warning", 1);
    gated(dir, "breaking", 0);

    // Any sender address: the quickstart's case "a sender outside the organization's
    // domains is refused" passed at the base and fails now.
    let broken = plan_repo(|r| {
        r.replace(
            "allowedSenders: OrganizationDomains",
            "allowedSenders: AnyAddress",
        )
    });
    let v = gated(broken.path(), "breaking", 1);
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .any(|c| c["breaksExpectation"] == true
                && c["object"] == "RelayExpectation acme/quickstart"),
        "{v}"
    );

    // No behavioural change: 0 under every gate.
    let same = plan_repo(|r| format!("# a comment\n{r}"));
    let mut a = base.to_vec();
    a.extend(["--fail-on", "change"]);
    assert_eq!(check_in(same.path(), &a, "json", 0), serde_json::json!([]));

    // Invalid manifests in the working tree.
    let invalid = plan_repo(|r| r.replace("licenses: ", "licenses: 0 #"));
    for format in ["text", "markdown", "json", "yaml"] {
        let mut a = base.to_vec();
        a.extend(["-o", format]);
        let run = relayctl_in(invalid.path(), &a);
        assert_eq!((run.code, run.out.as_str()), (2, ""), "{}", run.err);
    }
}

/// A one-shot HTTP server answering every request with `status` and `body`.
fn admin_stub(status: &'static str, body: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}")
}

#[test]
fn queue_in_every_format_with_every_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "t").unwrap();
    let ok = admin_stub("200 OK", r#"{"messages": []}"#);
    let refused = admin_stub("404 Not Found", r#"{"error": "no message 1"}"#);
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    for format in ["text", "json", "yaml"] {
        let args = |admin: &str| -> Vec<String> {
            ["queue", "list", "--token-file", "token", "--url", admin]
                .iter()
                .map(|s| s.to_string())
                .collect()
        };
        let a = args(&ok);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let v = check_in(dir.path(), &a, format, 0);
        match format {
            "text" => assert!(v.as_str().unwrap().contains("0 messages queued"), "{v}"),
            _ => assert_eq!(v, serde_json::json!({"messages": []})),
        }
        for admin in [&refused, &closed] {
            let a = args(admin);
            let mut a: Vec<&str> = a.iter().map(String::as_str).collect();
            a.extend(["-o", format]);
            let run = relayctl_in(dir.path(), &a);
            assert_eq!((run.code, run.out.as_str()), (1, ""), "{}", run.err);
        }
        // No admin address recorded and none given: invalid input.
        let run = relayctl_in(dir.path(), &["queue", "list", "-o", format]);
        assert_eq!((run.code, run.out.as_str()), (2, ""), "{}", run.err);
        assert!(
            run.err.contains("no --url or -n NAMESPACE given"),
            "{}",
            run.err
        );
    }
}

/// The quickstart with its route pointed at `127.0.0.1:port`, TLS required and checked
/// against a CA Secret holding `ca_pem`.
fn tls_route_dir(port: u16, ca_pem: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let relay = std::fs::read_to_string(examples().join("quickstart/relay.yaml")).unwrap();
    let route_at = relay.find("kind: MailRoute").unwrap();
    let (head, _) = relay.split_at(route_at);
    let head = head
        .trim_end()
        .trim_end_matches("apiVersion: smtprelay.dev/v1alpha1");
    let ca: String = ca_pem.lines().map(|l| format!("    {l}\n")).collect();
    let manifests = format!(
        "{head}apiVersion: smtprelay.dev/v1alpha1
kind: MailRoute
metadata:
  name: default
  namespace: acme
spec:
  description: A TLS smarthost on loopback
  match:
    default: true
  singleHost:
    host: 127.0.0.1
    port: {port}
  tls:
    requireTls: true
    trustedCaSecretRef:
      name: sink-ca
---
apiVersion: v1
kind: Secret
metadata:
  name: sink-ca
  namespace: acme
stringData:
  ca.crt: |
{ca}"
    );
    std::fs::write(dir.path().join("relay.yaml"), manifests).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_tls_in_every_format_with_every_exit_code() {
    use relay::delivery::testing::{SinkConfig, TestCa, TestSink};
    let ca = TestCa::new("cli grammar CA").unwrap();
    let cert = ca.issue(&["127.0.0.1"]).unwrap();
    let sink = TestSink::start(SinkConfig {
        tls: Some(cert.server_config().unwrap()),
        ..Default::default()
    })
    .await
    .unwrap();
    let good = tls_route_dir(sink.port(), &ca.cert_pem);
    // Another CA: the certificate does not verify.
    let other = TestCa::new("another CA").unwrap();
    let bad = tls_route_dir(sink.port(), &other.cert_pem);
    let (good_path, bad_path) = (good.path().to_path_buf(), bad.path().to_path_buf());
    tokio::task::spawn_blocking(move || {
        for format in ["text", "json", "yaml"] {
            let args = ["test-tls", ".", "--route", "default"];
            let v = check_in(&good_path, &args, format, 0);
            let w = check_in(&bad_path, &args, format, 1);
            match format {
                "text" => {
                    assert!(v.as_str().unwrap().contains("  verified: "), "{v}");
                    assert!(w.as_str().unwrap().contains("NOT VERIFIED"), "{w}");
                }
                _ => {
                    assert_eq!(v["route"], "acme/default");
                    assert_eq!(
                        (&v["verified"], &v["hosts"][0]["verified"]),
                        (&Value::Bool(true), &Value::Bool(true)),
                        "{v}"
                    );
                    assert_eq!(w["verified"], false, "{w}");
                    assert_eq!(w["hosts"][0]["port"], v["hosts"][0]["port"]);
                }
            }
            let run = relayctl_in(
                &good_path,
                &["test-tls", ".", "--route", "nope", "-o", format],
            );
            assert_eq!((run.code, run.out.as_str()), (2, ""), "{}", run.err);
            assert!(run.err.contains("no MailRoute nope"), "{}", run.err);
        }
    })
    .await
    .unwrap();
}

#[test]
fn dkim_record_in_every_format_and_a_fixed_algorithm_list() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    std::fs::write(&key, relay::delivery::testing::dkim_keys::RSA_2048_PKCS8).unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a key").unwrap();
    let args = |k: &Path| {
        vec![
            "dkim-record".to_string(),
            "--key".into(),
            k.display().to_string(),
            "--selector".into(),
            "s1".into(),
            "--domain".into(),
            "Acme.Example".into(),
        ]
    };
    let a = args(&key);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let text = check(&a, "text", 0);
    let line = text.as_str().unwrap().trim_end().to_string();
    for format in ["json", "yaml"] {
        let v = check(&a, format, 0);
        assert_eq!(v["name"], "s1._domainkey.acme.example.");
        assert_eq!(v["type"], "TXT");
        assert_eq!(v["algorithm"], "rsa-sha256");
        assert_eq!(v["zoneLine"], line.as_str());
        let value = v["value"].as_str().unwrap();
        assert!(value.starts_with("v=DKIM1; k=rsa; p="));
        let strings: Vec<&str> = v["strings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert_eq!(strings.concat(), value);
        assert!(strings.iter().all(|s| s.len() <= 255));
    }
    let j = args(&junk);
    let j: Vec<&str> = j.iter().map(String::as_str).collect();
    for format in ["text", "json", "yaml"] {
        let mut a = j.clone();
        a.extend(["-o", format]);
        let run = relayctl(&a);
        assert_eq!((run.code, run.out.as_str()), (2, ""), "{}", run.err);
    }
    // --algorithm takes only the two DKIM algorithms; anything else is a usage error.
    let mut wrong = a.clone();
    wrong.extend(["--algorithm", "rsa-sha1"]);
    let run = relayctl(&wrong);
    assert_eq!(run.code, 2);
    assert!(
        run.err
            .contains("[possible values: rsa-sha256, ed25519-sha256]"),
        "{}",
        run.err
    );
}

#[test]
fn crds_and_install_print_yaml_or_one_json_list() {
    for command in ["crds", "install"] {
        let yaml = relayctl(&[command]);
        assert_eq!(yaml.code, 0, "{}", yaml.err);
        let docs: Vec<Value> = yaml_serde::Deserializer::from_str(&yaml.out)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .filter(|v: &Value| !v.is_null())
            .collect();
        assert!(docs.len() >= 5, "{command}: {}", docs.len());
        let explicit = relayctl(&[command, "-o", "yaml"]);
        assert_eq!(explicit.out, yaml.out, "-o yaml is the default");
        let list = check(&[command], "json", 0);
        assert_eq!(list["kind"], "List");
        assert_eq!(list["items"].as_array().unwrap(), &docs);
    }
}

/// A GitOps folder: the quickstart beside a kustomization.yaml, a Namespace and a
/// SealedSecret.
fn gitops_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["relay.yaml", "expectations.yaml"] {
        std::fs::copy(examples().join("quickstart").join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        "resources:\n  - namespace.yaml\n  - relay.yaml\n  - sealed.yaml\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("namespace.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: acme\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("sealed.yaml"),
        "apiVersion: bitnami.com/v1alpha1\nkind: SealedSecret\nmetadata:\n  name: smtp-users\n  namespace: acme\nspec:\n  encryptedData:\n    users: AgBy...\n",
    )
    .unwrap();
    dir
}

#[test]
fn objects_of_other_api_groups_are_skipped_with_a_note_unless_strict() {
    let dir = gitops_dir();
    let run = relayctl_in(dir.path(), &["validate", "."]);
    assert_eq!(run.code, 0, "{}", run.err);
    assert_eq!(
        run.out,
        "5 objects valid, 4 expectation case(s) (check them with relayctl test)\n"
    );
    let notes: Vec<&str> = run.err.lines().collect();
    assert_eq!(
        notes,
        [
            "note: skipped ./kustomization.yaml: a Kustomization file: not an smtprelay.dev object (--strict refuses it)",
            "note: skipped ./namespace.yaml: document 1 (line 1): Namespace default/acme (v1): not an smtprelay.dev object (--strict refuses it)",
            "note: skipped ./sealed.yaml: document 1 (line 1): SealedSecret acme/smtp-users (bitnami.com/v1alpha1): not an smtprelay.dev object (--strict refuses it)",
        ]
    );
    let v = check_in(dir.path(), &["validate", "."], "json", 0);
    assert_eq!(v["skipped"].as_array().unwrap().len(), 3, "{v}");
    assert_eq!(v["skipped"][2]["source"]["file"], "./sealed.yaml");

    // The other commands that read manifests skip them too.
    for args in [
        vec!["render", "."],
        vec!["test", "."],
        [vec!["explain", "."], EXPLAIN.to_vec()].concat(),
    ] {
        let run = relayctl_in(dir.path(), &args);
        assert_eq!(run.code, 0, "{args:?}: {}", run.err);
        assert_eq!(
            run.err.matches("note: skipped").count(),
            3,
            "{args:?}: {}",
            run.err
        );
    }

    // --strict keeps the old refusal.
    let run = relayctl_in(dir.path(), &["validate", "--strict", "."]);
    assert_eq!(run.code, 2, "{}", run.err);
    assert!(
        run.err.contains("unknown kind Namespace of apiVersion v1"),
        "{}",
        run.err
    );
    // A typo in our own group is never skipped.
    std::fs::write(
        dir.path().join("typo.yaml"),
        "apiVersion: smtprelay.dev/v1alpha1\nkind: MailRout\nmetadata:\n  name: x\n  namespace: acme\nspec: {}\n",
    )
    .unwrap();
    let run = relayctl_in(dir.path(), &["validate", "."]);
    assert_eq!(run.code, 2, "{}", run.err);
    assert!(run.err.contains("unknown kind MailRout"), "{}", run.err);
}

#[test]
fn plan_skips_objects_of_other_api_groups_at_both_revisions() {
    let repo = plan_repo(|r| r.to_string());
    std::fs::write(
        repo.path().join("namespace.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: acme\n",
    )
    .unwrap();
    for args in [
        vec!["add", "namespace.yaml"],
        vec!["commit", "-qm", "a Namespace beside the manifests"],
    ] {
        let ok = Command::new("git")
            .current_dir(repo.path())
            .args(&args)
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    }
    let run = relayctl_in(
        repo.path(),
        &["plan", "--base", "HEAD", "--fail-on", "change", "."],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.out, run.err);
    assert!(
        run.err.contains("note: skipped ./namespace.yaml"),
        "{}",
        run.err
    );
    let run = relayctl_in(repo.path(), &["plan", "--base", "HEAD", "--strict", "."]);
    assert_eq!(run.code, 2, "{}", run.err);
}

#[test]
fn old_flags_still_work_with_a_deprecation_note() {
    let mut args = vec!["explain", "quickstart"];
    args.extend_from_slice(EXPLAIN);
    args.extend(["--format", "json"]);
    let run = relayctl(&args);
    assert_eq!(run.code, 0, "{}", run.err);
    assert_eq!(
        serde_json::from_str::<Value>(&run.out).unwrap()["accepted"],
        true
    );
    assert!(
        run.err
            .contains("note: --format is deprecated and will be removed; use -o/--output"),
        "{}",
        run.err
    );

    let repo = plan_repo(|r| {
        r.replace(
            "allowedSenders: OrganizationDomains",
            "allowedSenders: AnyAddress",
        )
    });
    let run = relayctl_in(
        repo.path(),
        &["plan", "--base", "HEAD", "--format", "markdown", "."],
    );
    assert_eq!(run.code, 0, "{}", run.err);
    assert!(run.out.starts_with("### relayctl plan"), "{}", run.out);
    assert!(run.err.contains("--format is deprecated"), "{}", run.err);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "t").unwrap();
    let ok = admin_stub("200 OK", r#"{"messages": []}"#);
    let run = relayctl_in(
        dir.path(),
        &[
            "queue",
            "list",
            "--json",
            "--token-file",
            "token",
            "--admin",
            &ok,
        ],
    );
    assert_eq!(run.code, 0, "{}", run.err);
    assert_eq!(
        serde_json::from_str::<Value>(&run.out).unwrap()["messages"],
        serde_json::json!([])
    );
    assert!(run.err.contains("--json is deprecated"), "{}", run.err);
}

#[test]
fn every_command_documents_its_exit_codes_and_usage_errors_exit_2() {
    let top = relayctl(&["--help"]);
    assert!(
        top.out.contains("Exit status, for every command")
            && top.out.contains("\n  2  invalid input"),
        "{}",
        top.out
    );
    for command in [
        "crds",
        "install",
        "validate",
        "render",
        "run",
        "test-tls",
        "explain",
        "test",
        "plan",
        "queue",
        "dkim-record",
        "man",
    ] {
        let run = relayctl(&[command, "--help"]);
        assert_eq!(run.code, 0, "{command}");
        assert!(
            run.out.contains("Exit status:\n  0  "),
            "{command}:\n{}",
            run.out
        );
    }
    for command in [
        "validate",
        "render",
        "explain",
        "test",
        "test-tls",
        "dkim-record",
    ] {
        let run = relayctl(&[command, "--help"]);
        assert!(
            run.out.contains("-o, --output <OUTPUT>"),
            "{command}:\n{}",
            run.out
        );
        assert!(
            !run.out.contains("--format"),
            "the old flag is hidden: {}",
            run.out
        );
    }
    for args in [
        vec!["validate"],
        vec!["validate", "quickstart", "-o", "xml"],
        vec!["render", "quickstart", "-o", "markdown"],
        vec!["nonsense"],
    ] {
        assert_eq!(relayctl(&args).code, 2, "{args:?}");
    }
}

#[test]
fn man_writes_one_page_per_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man1");
    let run = relayctl(&["man", out.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.err);
    for page in [
        "relayctl",
        "relayctl-validate",
        "relayctl-plan",
        "relayctl-queue",
        "relayctl-dkim-record",
    ] {
        let text = std::fs::read_to_string(out.join(format!("{page}.1")))
            .unwrap_or_else(|e| panic!("{page}.1: {e}"));
        assert!(text.starts_with(".ie \\n(.g .ds Aq"), "a roff page: {page}");
        assert!(text.contains(".TH "), "{page}");
    }
    let plan = std::fs::read_to_string(out.join("relayctl-plan.1")).unwrap();
    assert!(plan.contains("fail\\-on"), "{plan}");
    assert!(plan.contains("Exit status:"), "{plan}");
    let listed = run.out.lines().count();
    assert_eq!(listed, std::fs::read_dir(&out).unwrap().count());
}

#[test]
fn spool_size_is_checked_as_the_api_server_checks_a_quantity() {
    let dir = tempfile::tempdir().unwrap();
    let relay = std::fs::read_to_string(examples().join("quickstart/relay.yaml")).unwrap();
    let with_size = |size: &str| {
        let org_end = relay.find("\n---").unwrap();
        let (org, rest) = relay.split_at(org_end);
        assert!(org.contains("\n  relay:\n"), "{org}");
        format!(
            "{}{rest}",
            org.replacen(
                "\n  relay:\n",
                &format!("\n  relay:\n    spool:\n      size: \"{size}\"\n"),
                1
            )
        )
    };
    for (size, code, message) in [
        ("20Gi", 0, ""),
        ("1e3", 0, ""),
        (
            "2 gigabytes",
            2,
            "relay.spool.size must be a Kubernetes quantity such as 1Gi, 500Mi or 10G",
        ),
        ("-1Gi", 2, "relay.spool.size must be larger than zero"),
    ] {
        std::fs::write(dir.path().join("relay.yaml"), with_size(size)).unwrap();
        let run = relayctl_in(dir.path(), &["validate", "."]);
        assert_eq!(run.code, code, "{size}: {}", run.err);
        assert!(run.err.contains(message), "{size}: {}", run.err);
        if code == 2 {
            assert!(run.err.contains("spec.relay.spool"), "{size}: {}", run.err);
        }
    }
}

/// A 1024-bit RSA DKIM key cannot sign (ring needs 2048 bits or more): render still
/// renders, and says so in one human-readable warning; the relay defers that domain's
/// mail (relay/tests/delivery_dkim.rs).
#[test]
fn a_1024_bit_dkim_key_is_a_readable_warning_not_a_debug_dump() {
    let dir = tempfile::tempdir().unwrap();
    let relay = std::fs::read_to_string(examples().join("quickstart/relay.yaml")).unwrap();
    let key: String = relay::delivery::testing::dkim_keys::RSA_1024_PKCS8
        .lines()
        .map(|l| format!("    {l}\n"))
        .collect();
    let manifests = relay.replacen(
        "  relay:\n",
        "  dkim:\n    - {domain: acme.example, selector: s1, secretRef: {name: dkim-acme}}\n  relay:\n",
        1,
    ) + &format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: dkim-acme\n  namespace: acme\nstringData:\n  private.key: |\n{key}"
    );
    std::fs::write(dir.path().join("relay.yaml"), manifests).unwrap();
    let run = relayctl_in(dir.path(), &["render", ".", "-o", "yaml"]);
    assert_eq!(run.code, 0, "{}", run.err);
    let warning = run
        .err
        .lines()
        .find(|l| l.contains("dkim for acme.example"))
        .unwrap_or_else(|| panic!("{}", run.err));
    assert!(
        warning.starts_with(
            "warning: Organization acme: dkim for acme.example: Secret dkim-acme key private.key is not a usable rsa-sha256 private key (the RSA key is smaller than 2048 bits"
        ),
        "{warning}"
    );
    assert!(warning.ends_with("until the key is fixed"), "{warning}");
    assert!(!run.err.contains("BEGIN"), "never the key");
    let v = parse("yaml", &run.out, &["render"]);
    assert_eq!(v["dkim"][0]["domain"], "acme.example");
}
