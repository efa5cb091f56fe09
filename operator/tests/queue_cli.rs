//! `relayctl queue` against a relay `relayctl run` started (its admin address and token
//! are found in the state directory), and `relayctl completions`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const QUICKSTART: &str = include_str!("../../examples/quickstart/relay.yaml");

struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    /// Waits (at most 20 s) for an output line containing `needle`.
    fn wait_for(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("relayctl run never printed {needle:?} ({e})"),
            }
        }
    }
}

fn relayctl(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_relayctl"))
        .current_dir(dir)
        .args(args)
        .env_remove("SMTPRELAY_ADMIN_TOKEN")
        .output()
        .unwrap()
}

/// A port nothing listens on: the downstream is down and mail is deferred.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One SMTP line exchange; the reply's first line.
fn cmd(r: &mut impl BufRead, w: &mut impl std::io::Write, line: &str) -> String {
    if !line.is_empty() {
        w.write_all(format!("{line}\r\n").as_bytes()).unwrap();
    }
    loop {
        let mut reply = String::new();
        r.read_line(&mut reply).unwrap();
        if reply.len() < 4 || reply.as_bytes()[3] != b'-' {
            return reply.trim_end().to_string();
        }
    }
}

#[test]
fn queue_list_shows_a_deferred_message_of_a_local_relay() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("manifests")).unwrap();
    std::fs::write(
        dir.path().join("manifests/relay.yaml"),
        QUICKSTART.replace("port: 2525", &format!("port: {}", free_port())),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_relayctl"))
        .current_dir(dir.path())
        .args([
            "run",
            "manifests",
            "--smtp-port",
            "0",
            "--submission-port",
            "0",
        ])
        .args(["--smtps-port", "0", "--admin-port", "0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let run = Running { child, lines };
    let smtp: SocketAddr = run
        .wait_for("  smtp ")
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let token_line = run.wait_for("admin token");
    assert!(token_line.contains(".relayctl/admin/token"), "{token_line}");
    run.wait_for("configuration generation 1 in force");
    let token = dir.path().join(".relayctl/admin/token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let tcp = std::net::TcpStream::connect(smtp).unwrap();
    let mut r = BufReader::new(tcp.try_clone().unwrap());
    let mut w = tcp;
    assert!(cmd(&mut r, &mut w, "").starts_with("220 "));
    cmd(&mut r, &mut w, "EHLO app.acme.example");
    assert_eq!(
        cmd(&mut r, &mut w, "MAIL FROM:<app@acme.example>"),
        "250 2.1.0 OK"
    );
    assert_eq!(
        cmd(&mut r, &mut w, "RCPT TO:<bob@example.net>"),
        "250 2.1.5 OK"
    );
    assert!(cmd(&mut r, &mut w, "DATA").starts_with("354 "));
    let done = cmd(&mut r, &mut w, "Subject: waiting\r\n\r\nbody\r\n.");
    let id = done
        .strip_prefix("250 2.0.0 OK queued as ")
        .unwrap_or_else(|| panic!("{done}"))
        .to_string();
    cmd(&mut r, &mut w, "QUIT");

    // Deferred once (the downstream refuses connections), then listed with its error.
    let mut table = String::new();
    for _ in 0..100 {
        let out = relayctl(dir.path(), &["queue", "list"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        table = String::from_utf8(out.stdout).unwrap();
        // Listed once its first attempt has ended (not while it is delivering).
        if table
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("pending") && l.contains("failed"))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let row = table
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} not listed:\n{table}"));
    assert!(row.contains("pending"), "{row}");
    assert!(row.contains("bob@example.net"), "{row}");
    assert!(row.contains("Connection re"), "{row}");
    assert!(
        table.lines().next().unwrap().starts_with("QUEUE ID"),
        "{table}"
    );
    assert!(table.ends_with("1 message queued\n"), "{table}");

    let out = relayctl(dir.path(), &["queue", "list", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["messages"][0]["queueId"], id.as_str());

    // A wrong token is refused.
    std::fs::write(dir.path().join("wrong"), "not-the-token").unwrap();
    let out = relayctl(dir.path(), &["queue", "list", "--token-file", "wrong"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));

    // Hold from the command line, shown as held.
    let out = relayctl(dir.path(), &["queue", "hold", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = relayctl(dir.path(), &["queue", "show", &id]);
    let shown = String::from_utf8(out.stdout).unwrap();
    assert!(shown.contains("held"), "{shown}");
    assert!(shown.contains("Subject: waiting"), "{shown}");
    drop(run);
}

#[test]
fn completions_for_bash_know_the_queue_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = relayctl(dir.path(), &["completions", "bash"]);
    assert!(out.status.success());
    let script = String::from_utf8(out.stdout).unwrap();
    assert!(script.contains("relayctl"), "{script}");
    assert!(script.contains("queue"), "{script}");
    for shell in ["zsh", "fish"] {
        let out = relayctl(dir.path(), &["completions", shell]);
        assert!(out.status.success() && !out.stdout.is_empty(), "{shell}");
    }
}

#[test]
fn version_names_the_crate_version_and_the_git_revision() {
    let dir = tempfile::tempdir().unwrap();
    let out = relayctl(dir.path(), &["--version"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with(&format!("relayctl {} (git ", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_commands_against_an_in_process_relay_with_url_and_token_flags() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "in-process-token\n").unwrap();
    let mut config =
        relay::RelayConfig::loopback(&dir.path().join("spool").to_string_lossy(), free_port());
    config.admin_token_file = Some(token.to_string_lossy().into_owned());
    let relay = relay::start(config, relay::StartOptions::default())
        .await
        .unwrap();
    let admin = format!("http://{}", relay.admin_addr());
    let d = dir.path().to_path_buf();
    let run = move |args: Vec<String>| {
        let d = d.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            relayctl(&d, &args)
        })
    };
    let flags = |cmd: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        v.extend([
            "--url".into(),
            admin.clone(),
            "--token-file".into(),
            "token".into(),
        ]);
        v
    };
    let out = run(flags(&["queue", "list"])).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.starts_with("QUEUE ID"), "{table}");
    assert!(table.ends_with("0 messages queued\n"), "{table}");
    let out = run(flags(&["queue", "flush", "--route", "acme/default"]))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(flags(&["queue", "show", "12345"])).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
    // `--admin`, the flag's earlier name, still works.
    let out = run(vec![
        "queue".into(),
        "list".into(),
        "--admin".into(),
        admin.clone(),
        "--token-file".into(),
        "token".into(),
    ])
    .await
    .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).ends_with("0 messages queued\n"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Both one endpoint and a namespace: a usage error.
    let out = run(flags(&["queue", "list", "-n", "mail"])).await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
    // Without any token source: a usage error, nothing sent.
    let out = run(vec![
        "queue".into(),
        "list".into(),
        "--url".into(),
        admin.clone(),
    ])
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    relay.shutdown().await;
}
