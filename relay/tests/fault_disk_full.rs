//! A full spool disk (SPEC §3.4): the relay answers `452 4.3.1` for a message it cannot
//! store and loses nothing it had already acknowledged. The disk is a small tmpfs mounted
//! by the test, which needs root (CAP_SYS_ADMIN); elsewhere the test says why it skipped.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{config, connect, queue_id};

/// A mounted tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Self, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Self(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_spool_answers_452_and_keeps_what_it_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let disk = match Tmpfs::mount(&dir.path().join("disk"), "512k") {
        Ok(d) => d,
        Err(reason) => {
            eprintln!("SKIPPED: cannot mount a small tmpfs for the spool ({reason}); run as root");
            return;
        }
    };
    let spool_dir = disk.0.join("spool");
    // Delivery goes to a closed port: accepted mail stays in the spool.
    let relay = relay::start(config(&spool_dir, 9), relay::StartOptions::default())
        .await
        .unwrap();
    let mut c = connect(relay.smtp_addr()).await;
    c.cmd("EHLO client.acme.example").await;
    let rcpt = ["a@dest.example".to_string()];
    let mut acked = Vec::new();
    for i in 0..3 {
        let (_, _, done) = c
            .transaction(
                "bob@acme.example",
                &rcpt,
                &format!("Subject: {i}\r\n\r\nsmall {i}"),
            )
            .await;
        acked.push(queue_id(&done.unwrap()));
    }
    // A message larger than the disk: 800 lines of 900 octets.
    let big = format!(
        "Subject: big\r\n\r\n{}",
        format!("{}\r\n", "z".repeat(900)).repeat(800)
    );
    let (_, _, done) = c.transaction("bob@acme.example", &rcpt, &big).await;
    assert_eq!(
        done.as_deref(),
        Some("452 4.3.1 Insufficient system storage")
    );
    // The session goes on, and a small message still fits.
    let (_, _, done) = c
        .transaction("bob@acme.example", &rcpt, "Subject: after\r\n\r\nafter")
        .await;
    acked.push(queue_id(&done.unwrap()));
    relay.shutdown().await;

    // Everything acknowledged is on disk, intact, after a reopen; nothing else is.
    let spool = relay::Spool::open(&spool_dir).unwrap();
    let mut listed: Vec<String> = spool.list().iter().map(|id| id.to_string()).collect();
    listed.sort();
    let mut want = acked.clone();
    want.sort();
    assert_eq!(listed, want);
    for (i, id) in acked.iter().enumerate() {
        let (env, data) = spool.read(id.parse().unwrap()).unwrap();
        assert_eq!(env.rcpts, rcpt.to_vec());
        let text = String::from_utf8(data).unwrap();
        let expected = if i < 3 {
            format!("small {i}\r\n")
        } else {
            "after\r\n".into()
        };
        assert!(text.ends_with(&expected), "{text}");
    }
    drop(spool);
    drop(disk);
}

/// A nearly full disk (SPEC §3.4): the spool makes no new segment that would leave the
/// disk without a reserve, and keeps taking messages in files of their own. It used to
/// make a 1 MiB segment on a 1.6 MB disk, filling it, and then answer `452` to a
/// 700 kB message that fits.
#[tokio::test]
async fn a_nearly_full_disk_keeps_room_for_a_message_that_fits() {
    let dir = tempfile::tempdir().unwrap();
    let disk = match Tmpfs::mount(&dir.path().join("disk"), "1600k") {
        Ok(d) => d,
        Err(reason) => {
            eprintln!("SKIPPED: cannot mount a small tmpfs for the spool ({reason}); run as root");
            return;
        }
    };
    let spool_dir = disk.0.join("spool");
    let relay = relay::start(config(&spool_dir, 9), relay::StartOptions::default())
        .await
        .unwrap();
    let mut c = connect(relay.smtp_addr()).await;
    c.cmd("EHLO client.acme.example").await;
    let rcpt = ["a@dest.example".to_string()];
    let mut acked = Vec::new();
    for i in 0..3 {
        let (_, _, done) = c
            .transaction(
                "bob@acme.example",
                &rcpt,
                &format!("Subject: {i}\r\n\r\nsmall {i}"),
            )
            .await;
        acked.push(queue_id(&done.unwrap()));
    }
    // 700 kB: fits on the disk, unless a segment took a megabyte of it.
    let medium = format!(
        "Subject: medium\r\n\r\n{}",
        format!("{}\r\n", "m".repeat(900)).repeat(770)
    );
    let (_, _, done) = c.transaction("bob@acme.example", &rcpt, &medium).await;
    let done = done.unwrap();
    assert!(done.starts_with("250"), "{done}");
    acked.push(queue_id(&done));
    relay.shutdown().await;
    let spool = relay::Spool::open(&spool_dir).unwrap();
    assert_eq!(spool.depth(), acked.len());
    assert!(
        std::fs::read_dir(spool_dir.join("segments"))
            .map(|d| d
                .filter_map(Result::ok)
                .all(|e| !e.file_name().to_string_lossy().ends_with(".seg")))
            .unwrap_or(true),
        "no segment on a disk this small"
    );
    drop(spool);
    drop(disk);
}
