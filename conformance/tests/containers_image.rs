//! The production images are minimal: the relay image the scenarios run and the operator
//! image hold a statically linked binary, the CA roots, `/etc/passwd` and `/etc/group`,
//! and the directories the programs write to; nothing else. No shell (running one fails),
//! no package manager, no setuid file, no mail software; a numeric non-root user; the
//! binary started directly; the crate version in the tag and label; the size printed.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use conformance::docker;

fn docker_cli(args: &[&str]) -> (bool, String) {
    let out = Command::new("docker").args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

/// One entry of an image's file system: its mode (`ls -l` style) and owner `uid/gid`.
#[derive(Debug)]
struct Entry {
    mode: String,
    owner: String,
}

/// Every path in `image` (without the leading `/`; directories end in `/`), read from an
/// export of a container created from it, never started: nothing in the image runs.
fn files(image: &str) -> BTreeMap<String, Entry> {
    let (ok, id) = docker_cli(&["create", image]);
    assert!(ok, "cannot create a container of {image}");
    let mut export = Command::new("docker")
        .args(["export", &id])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut tar = Vec::new();
    export.stdout.take().unwrap().read_to_end(&mut tar).unwrap();
    export.wait().unwrap();
    docker_cli(&["rm", &id]);
    let mut listing = Command::new("tar")
        .args(["-tv", "--numeric-owner", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        listing.stdin.take().unwrap().write_all(&tar).unwrap();
    }
    let out = listing.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let path = fields.get(5)?.trim_start_matches("./").to_string();
            Some((
                path,
                Entry {
                    mode: fields.first()?.to_string(),
                    owner: fields.get(1)?.to_string(),
                },
            ))
        })
        .collect()
}

/// What Docker itself puts into every container it creates.
fn docker_made(path: &str) -> bool {
    path == ".dockerenv"
        || matches!(
            path,
            "etc/hosts" | "etc/hostname" | "etc/resolv.conf" | "etc/mtab"
        )
        || ["dev/", "proc/", "sys/"]
            .iter()
            .any(|d| path.starts_with(d))
}

/// Checks what every production image must be; `extra` lists the paths besides the
/// common ones (binary, CA roots, passwd, group, /tmp) that `binary`'s image holds.
fn assert_minimal(image: &str, binary: &str, extra: &[(&str, &str, &str)]) {
    let (ok, config) = docker_cli(&["image", "inspect", "--format", "{{json .Config}}", image]);
    assert!(ok, "cannot inspect {image}");
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["User"], "65532:65532");
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!([format!("/usr/local/bin/{binary}")])
    );
    assert_eq!(
        config["Labels"]["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    let (_, size) = docker_cli(&["image", "inspect", "--format", "{{.Size}}", image]);
    println!("{image}: {size} bytes");

    // No shell: running one fails, whichever way it is named.
    for shell in ["sh", "/bin/sh", "/bin/bash", "/usr/bin/env"] {
        let (ran, _) = docker_cli(&["run", "--rm", "--entrypoint", shell, image, "-c", "true"]);
        assert!(!ran, "{shell} runs in {image}");
    }
    // The binary itself runs, as the non-root user.
    let (ran, out) = docker_cli(&["run", "--rm", image, "--version"]);
    assert!(ran, "{binary} --version does not run in {image}");
    assert!(out.contains(env!("CARGO_PKG_VERSION")), "{out}");

    let files = files(image);
    let bin = format!("usr/local/bin/{binary}");
    let mut expected: Vec<(String, &str, &str)> = vec![
        (bin.clone(), "-rwxr-xr-x", "0/0"),
        (
            "etc/ssl/certs/ca-certificates.crt".into(),
            "-rw-r--r--",
            "0/0",
        ),
        ("etc/passwd".into(), "-rw-r--r--", "0/0"),
        ("etc/group".into(), "-rw-r--r--", "0/0"),
        ("tmp/".into(), "drwxrwxrwt", "0/0"),
    ];
    expected.extend(extra.iter().map(|(p, m, o)| (p.to_string(), *m, *o)));
    for (path, mode, owner) in &expected {
        let e = files
            .get(path)
            .unwrap_or_else(|| panic!("{path} is not in {image}: {:#?}", files.keys()));
        assert_eq!(
            (e.mode.as_str(), e.owner.as_str()),
            (*mode, *owner),
            "{path}"
        );
    }
    // Nothing else: every file is one of those (directories on their way excepted).
    let others: Vec<&String> = files
        .keys()
        .filter(|p| !docker_made(p) && !p.ends_with('/'))
        .filter(|p| !expected.iter().any(|(e, _, _)| e == *p))
        .collect();
    assert_eq!(
        others,
        Vec::<&String>::new(),
        "more than the binary in {image}"
    );
    for (path, e) in &files {
        assert!(
            !e.mode.contains('s') && !e.mode.contains('S'),
            "{path} is setuid or setgid in {image}: {}",
            e.mode
        );
    }
    let passwd = files.keys().any(|p| p == "etc/passwd");
    assert!(passwd);
}

#[test]
fn relay_image_is_the_minimal_production_image() {
    if docker::skip_without_docker() {
        return;
    }
    let image = &docker::images().unwrap().relay;
    assert!(
        image.starts_with(&format!("smtprelay-relay:{}-", env!("CARGO_PKG_VERSION"))),
        "{image} is not tagged with the crate version and a content hash"
    );
    assert_minimal(
        image,
        "relay",
        &[
            ("var/spool/smtprelay/", "drwxr-x---", "65532/65532"),
            ("etc/smtprelay/", "drwxr-xr-x", "0/0"),
        ],
    );
}

#[test]
fn operator_image_is_the_minimal_production_image() {
    if docker::skip_without_docker() {
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/build.sh");
    let mut cmd = Command::new("bash");
    // The release build inside must not see the variables cargo sets for this test binary.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_TARGET_DIR" {
            cmd.env_remove(&key);
        }
    }
    let out = cmd
        .arg(&script)
        .arg("operator")
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "{} operator failed", script.display());
    let text = String::from_utf8_lossy(&out.stdout);
    let image = text
        .lines()
        .find_map(|l| l.strip_prefix("operator="))
        .expect("an operator= line")
        .to_string();
    assert!(
        image.starts_with(&format!(
            "smtprelay-operator:{}-",
            env!("CARGO_PKG_VERSION")
        )),
        "{image}"
    );
    assert_minimal(&image, "operator", &[]);
}
