//! One process per spool (SPEC §3.9): a second `relay` started on a spool that a running
//! relay holds exits non-zero at once, with a message naming the holder, and leaves the
//! first one's queued mail alone.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{config, connect, queue_id};

fn spawn(config: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_relay"))
        .arg("--config")
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Kills the child on drop, so a failed assertion leaves no relay running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_second_relay_on_a_spool_in_use_exits_non_zero_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    // Mail is held: the default route goes to a closed port.
    let path = dir.path().join("relay.json");
    std::fs::write(&path, config(&spool, 9).seal().to_json()).unwrap();

    let mut first = Running(spawn(&path));
    let stdout = first.0.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let smtp = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("smtp="))
        .unwrap_or_else(|| panic!("the first relay did not start: {line:?}"))
        .parse()
        .unwrap();
    let mut c = connect(smtp).await;
    c.cmd("EHLO client.acme.example").await;
    let (_, _, done) = c
        .transaction(
            "app@acme.example",
            &["bob@dest.example".to_string()],
            "Subject: held\r\n\r\nheld",
        )
        .await;
    let id = queue_id(&done.unwrap());

    let mut second = spawn(&path);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = second.kill();
            panic!("the second relay kept running on a spool in use");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    second
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let mut stdout = String::new();
    second
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(!status.success(), "{status}");
    assert!(
        !stdout.contains("relay listening"),
        "the second relay must not listen: {stdout}"
    );
    assert!(
        stderr.contains("in use by another relay process")
            && stderr.contains(&format!("pid {} on host", first.0.id())),
        "{stderr}"
    );

    // The first relay still has its message and still serves.
    // The first relay still has its message: its text is in one of the spool's segment
    // files, which the second relay neither read nor changed.
    let held = std::fs::read_dir(spool.join("segments"))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .any(|bytes| bytes.windows(13).any(|w| w == b"Subject: held"));
    assert!(held, "message {id} is no longer in the spool");
    let mut c = connect(smtp).await;
    assert!(c.cmd("NOOP").await.starts_with("250"));
}
