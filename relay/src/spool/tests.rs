//! The spool's unit tests: durability, recovery, layouts, segments and compaction.

use super::error::SpoolError;
use super::files::{HEADER2, MAGIC, TRAILER};
use super::index::Location;
use super::job::Job;
use super::segments;
use super::store::{SPILL_BYTES, Spool};
use crate::envelope::{Envelope, QueueId};
use std::fs::{self, OpenOptions};
use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

fn envelope(spool: &Spool) -> Envelope {
    Envelope {
        queue_id: spool.new_id(),
        mail_from: "postmaster@acme.example".into(),
        original_mail_from: Some("x@other.example".into()),
        rcpts: vec!["a@dest.example".into(), "b@dest.example".into()],
        client_ip: "127.0.0.1".parse().unwrap(),
        helo: "client.acme.example".into(),
        auth_identity: None,
        tls: None,
        received_at: UNIX_EPOCH,
        size: 5,
        smtputf8: true,
        eight_bit_mime: true,
        quarantine: None,
    }
}

#[tokio::test]
async fn accepted_messages_survive_reopen_and_corrupt_files_are_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let env = envelope(&spool);
    let id = spool.accept(&env, b"hello").await.unwrap();
    let second = envelope(&spool);
    spool.accept(&second, b"world").await.unwrap();
    assert!(id < second.queue_id, "queue ids are time ordered");
    // A truncated file, as a crash in the middle of a write leaves it.
    let broken = QueueId(1);
    fs::write(
        dir.path().join("queue").join(broken.to_string()),
        b"RELAYSPOOL1 10 10\n{",
    )
    .unwrap();
    drop(spool);

    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(spool.list(), vec![id, second.queue_id]);
    assert_eq!(spool.read(id).unwrap(), (env, b"hello".to_vec()));
    assert!(
        dir.path()
            .join("quarantine")
            .join(broken.to_string())
            .exists()
    );
    spool.remove(id).unwrap();
    assert_eq!(spool.list(), vec![second.queue_id]);
    assert!(matches!(spool.read(id), Err(SpoolError::NotFound(_))));
}

#[test]
fn disk_full_maps_to_452() {
    let e = SpoolError::io(Path::new("q"), io::Error::from_raw_os_error(28));
    assert!(matches!(e, SpoolError::Full));
    assert_eq!(
        e.reply().to_string(),
        "452 4.3.1 Insufficient system storage\r\n"
    );
    let other = SpoolError::io(Path::new("q"), io::Error::from_raw_os_error(5));
    assert_eq!(
        other.reply().to_string(),
        "451 4.3.0 Local error in processing: message not queued\r\n"
    );
}

#[tokio::test]
async fn concurrent_accepts_all_become_durable() {
    let dir = tempfile::tempdir().unwrap();
    let spool = std::sync::Arc::new(Spool::open(dir.path()).unwrap());
    let mut tasks = Vec::new();
    for i in 0..50u32 {
        let spool = spool.clone();
        tasks.push(tokio::spawn(async move {
            let env = envelope(&spool);
            spool
                .accept(&env, format!("m{i}").as_bytes())
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    drop(spool);
    assert_eq!(Spool::open(dir.path()).unwrap().list().len(), 50);
}

#[tokio::test]
async fn a_large_message_is_streamed_through_a_file_and_reads_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let mut env = envelope(&spool);
    let mut incoming = spool.begin(env.queue_id);
    let mut expected = Vec::new();
    for i in 0..40u32 {
        let chunk = format!("line {i:04} {}\r\n", "x".repeat(20_000)).into_bytes();
        expected.extend_from_slice(&chunk);
        incoming.buffer().extend_from_slice(&chunk);
        incoming.settle(&spool).await.unwrap();
        assert!(
            incoming.buffer().len() < SPILL_BYTES,
            "memory stays bounded"
        );
    }
    assert!(
        fs::read_dir(dir.path().join("incoming")).unwrap().count() == 1,
        "the text went to a file while it arrived"
    );
    env.size = incoming.len();
    spool.commit(&env, incoming).await.unwrap();
    assert_eq!(
        fs::read_dir(dir.path().join("incoming")).unwrap().count(),
        0
    );
    drop(spool);
    let spool = Spool::open(dir.path()).unwrap();
    let (read_env, data) = spool.read(env.queue_id).unwrap();
    assert_eq!(read_env, env);
    assert_eq!(data, expected);
}

#[tokio::test]
async fn a_refused_message_leaves_nothing_and_leftovers_of_a_crash_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let mut incoming = spool.begin(spool.new_id());
    incoming
        .buffer()
        .extend_from_slice(&vec![b'x'; SPILL_BYTES + 1]);
    incoming.settle(&spool).await.unwrap();
    spool.discard(incoming).await;
    assert_eq!(
        fs::read_dir(dir.path().join("incoming")).unwrap().count(),
        0
    );
    // A crash while a message was arriving leaves its partial text behind.
    fs::write(
        dir.path().join("incoming").join("00000000000000AA"),
        b"partial",
    )
    .unwrap();
    drop(spool);
    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(
        fs::read_dir(dir.path().join("incoming")).unwrap().count(),
        0
    );
    assert!(spool.list().is_empty());
    assert_eq!(spool.quarantined_at_open(), 0);
}

#[tokio::test]
async fn files_of_the_first_layout_are_still_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let env = envelope(&spool);
    let json = serde_json::to_vec(&env).unwrap();
    let mut old = format!("{MAGIC} {} 5\n", json.len()).into_bytes();
    old.extend_from_slice(&json);
    old.extend_from_slice(b"hello");
    old.extend_from_slice(TRAILER);
    fs::write(
        dir.path().join("queue").join(env.queue_id.to_string()),
        &old,
    )
    .unwrap();
    drop(spool);
    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(spool.read(env.queue_id).unwrap(), (env, b"hello".to_vec()));
}

/// Delivery reads the text from its place in the file, for both layouts.
#[tokio::test]
async fn delivery_streams_the_text_of_either_layout_from_the_file() {
    use crate::delivery::queue::MessageStore;
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let env = envelope(&spool);
    spool
        .accept(&env, b"Subject: new\r\n\r\nhello")
        .await
        .unwrap();
    let old_env = envelope(&spool);
    drop(spool);
    let json = serde_json::to_vec(&old_env).unwrap();
    let mut old = format!("{MAGIC} {} 5\n", json.len()).into_bytes();
    old.extend_from_slice(&json);
    old.extend_from_slice(b"older");
    old.extend_from_slice(TRAILER);
    fs::write(
        dir.path().join("queue").join(old_env.queue_id.to_string()),
        &old,
    )
    .unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    for (e, want) in [
        (&env, &b"Subject: new\r\n\r\nhello"[..]),
        (&old_env, &b"older"[..]),
    ] {
        let stored = MessageStore::read(&spool, &e.queue_id.to_string()).unwrap();
        assert_eq!(stored.envelope, *e);
        assert_eq!(stored.text.len(), want.len() as u64);
        let mut got = Vec::new();
        stored
            .text
            .open()
            .await
            .unwrap()
            .read_to_end(&mut got)
            .await
            .unwrap();
        assert_eq!(got, want);
    }
    spool.remove(env.queue_id).unwrap();
    let gone = MessageStore::read(&spool, &env.queue_id.to_string()).unwrap_err();
    assert_eq!(gone.kind(), io::ErrorKind::NotFound);
}

/// Lengths chosen so that their sum wraps around to the file's real length: an
/// unchecked sum passes the length check and then allocates exabytes (abort).
#[test]
fn lengths_that_overflow_are_a_torn_file_not_an_abort() {
    let dir = tempfile::tempdir().unwrap();
    let queue = dir.path().join("queue");
    fs::create_dir_all(&queue).unwrap();
    let header_for = |env: u64, data: u64| format!("{MAGIC} {env} {data}\n");
    // File length L = header + 5 (trailer); want header_len + env + data + 5 ≡ L (mod 2^64).
    let data = 1u64;
    let probe = header_for(u64::MAX, data);
    let env = (u64::MAX - data).wrapping_add(1); // env + data = 2^64 → 0 after wrap
    let header = header_for(env, data);
    assert_eq!(probe.len(), header.len(), "same digits, same length");
    let mut bytes = header.into_bytes();
    bytes.extend_from_slice(TRAILER);
    fs::write(queue.join("0000000000000001"), &bytes).unwrap();
    // A streamed-layout file whose trailer lengths overflow likewise.
    let mut v2 = HEADER2.to_vec();
    v2.extend_from_slice(format!("\nEND {:016x} {:016x}\n", u64::MAX, 2u64).as_bytes());
    fs::write(queue.join("0000000000000002"), &v2).unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    assert!(spool.list().is_empty());
    assert_eq!(spool.quarantined_at_open(), 2);
    assert!(dir.path().join("quarantine/0000000000000001").exists());
}

/// An entry that cannot be read (here a directory where a file should be) is not
/// proof of a torn message: the open fails instead of quarantining it.
#[test]
fn an_io_error_during_recovery_fails_the_open_and_quarantines_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let queue = dir.path().join("queue");
    fs::create_dir_all(queue.join("0000000000000003")).unwrap();
    let e = Spool::open(dir.path()).unwrap_err();
    assert!(matches!(e, SpoolError::Io { .. }), "{e}");
    assert!(queue.join("0000000000000003").exists());
    assert_eq!(
        fs::read_dir(dir.path().join("quarantine")).unwrap().count(),
        0
    );
}

#[test]
fn a_second_open_of_a_spool_in_use_fails_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let first = Spool::open(dir.path()).unwrap();
    let e = Spool::open(dir.path()).unwrap_err();
    let SpoolError::Locked { holder, .. } = &e else {
        panic!("{e}");
    };
    assert!(
        holder.starts_with(&format!("pid {} on host ", std::process::id())),
        "{holder}"
    );
    let message = e.to_string();
    assert!(
        message.contains("in use by another relay process"),
        "{message}"
    );
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );
    // Once the first lets go (unlocked, or dropped), the spool opens again.
    first.unlock();
    let second = Spool::open(dir.path()).unwrap();
    drop(first);
    drop(second);
    Spool::open(dir.path()).unwrap();
}

/// Two writers with one queue id: the second fails, and the first's acknowledged
/// message is left alone (the old clean-up deleted it).
#[tokio::test]
async fn a_queue_id_collision_never_deletes_the_other_message() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let env = envelope(&spool);
    spool.accept(&env, b"first").await.unwrap();
    let e = spool.accept(&env, b"second").await.unwrap_err();
    assert!(matches!(e, SpoolError::Exists(_)), "{e}");
    assert_eq!(spool.read(env.queue_id).unwrap().1, b"first");
}

/// Where the last record written to a segment ends, and that segment's file.
fn tail_of(spool: &Spool, id: QueueId) -> (PathBuf, u64, u64) {
    match spool.location(id).unwrap() {
        Location::Segment {
            segment,
            offset,
            bytes,
        } => (segment.path.clone(), segment.seq(), offset + bytes),
        Location::File => panic!("{id} is not in a segment"),
    }
}

/// A crash in the middle of a batch leaves part of a record after the last flushed
/// one (its header whole, its text cut short, or its checksum wrong). Recovery skips
/// that tail, keeps every record before it, and the spool goes on taking mail.
#[tokio::test]
async fn a_torn_segment_tail_is_skipped_and_no_acknowledged_record_is_lost() {
    use std::os::unix::fs::FileExt;
    for tear in ["cut short", "bad checksum", "half a header"] {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut acked = Vec::new();
        for i in 0..3u32 {
            let env = envelope(&spool);
            spool
                .accept(&env, format!("message {i}").as_bytes())
                .await
                .unwrap();
            acked.push(env);
        }
        // One writer at a time here, so every record went to the same segment only
        // when the same writer took it: tear the tail of the last one's segment.
        let last = acked[2].queue_id;
        let (path, seq, end) = tail_of(&spool, last);
        drop(spool);
        let unacked = envelope(&Spool::open(dir.path()).unwrap());
        let json = serde_json::to_vec(&unacked).unwrap();
        let mut record = segments::encode(unacked.queue_id, &json, b"never acknowledged");
        record[8..16].copy_from_slice(&seq.to_le_bytes());
        let torn: Vec<u8> = match tear {
            "cut short" => record[..record.len() - 7].to_vec(),
            "bad checksum" => {
                let n = record.len();
                record[n - 1] ^= 0xff;
                record
            }
            _ => record[..20].to_vec(),
        };
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&torn, end).unwrap();
        drop(file);

        let spool = Spool::open(dir.path()).unwrap();
        let want: Vec<QueueId> = acked.iter().map(|e| e.queue_id).collect();
        assert_eq!(spool.list(), want, "{tear}");
        for (i, env) in acked.iter().enumerate() {
            let (got, text) = spool.read(env.queue_id).unwrap();
            assert_eq!(&got, env, "{tear}");
            assert_eq!(text, format!("message {i}").into_bytes(), "{tear}");
        }
        assert_eq!(spool.torn_at_open(), 1, "{tear}");
        // New mail after the recovery goes to another segment and survives too.
        let after = envelope(&spool);
        spool.accept(&after, b"after the crash").await.unwrap();
        drop(spool);
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.depth(), 4, "{tear}");
        assert_eq!(spool.read(after.queue_id).unwrap().1, b"after the crash");
        assert!(matches!(
            spool.read(unacked.queue_id),
            Err(SpoolError::NotFound(_))
        ));
    }
}

/// A record damaged after its checks were written (a bit flip on the disk) is
/// reported as corrupt on read, not delivered as other text.
#[tokio::test]
async fn a_damaged_record_reads_as_corrupt() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let env = envelope(&spool);
    spool.accept(&env, b"intact text").await.unwrap();
    let (path, _, end) = tail_of(&spool, env.queue_id);
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(b"X", end - 3).unwrap();
    let e = spool.read(env.queue_id).unwrap_err();
    assert!(matches!(e, SpoolError::Corrupt { .. }), "{e}");
}

/// Segments whose every message was delivered are used again (a new header, no new
/// file): a spool that keeps delivering what it takes keeps a bounded set of files.
#[tokio::test]
async fn delivered_segments_are_reused_and_files_stay_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let spool = std::sync::Arc::new(Spool::open(dir.path()).unwrap());
    let text = vec![b'x'; 200 * 1024];
    let bytes = || -> u64 {
        fs::read_dir(dir.path().join("segments"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    };
    let mut made = Vec::new();
    let mut most = 0;
    for round in 0..4 {
        let mut tasks = Vec::new();
        for _ in 0..120 {
            let spool = spool.clone();
            let text = text.clone();
            tasks.push(tokio::spawn(async move {
                let env = envelope(&spool);
                spool.accept(&env, &text).await.unwrap()
            }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.unwrap());
        }
        for id in ids {
            spool.remove(id).unwrap();
        }
        assert_eq!(spool.depth(), 0, "round {round}");
        made.push(spool.shared.segments.made());
        most = most.max(bytes());
    }
    // Round 1 made the files for 24 MiB; rounds 2 to 4 mostly reuse them.
    assert!(
        made[3] - made[0] < made[0],
        "segment files made per round (cumulative): {made:?}"
    );
    // 24 MiB in flight, plus the writers' active segments and the spares.
    assert!(most <= 100 << 20, "{most} bytes of segments");
    drop(spool);
    assert!(Spool::open(dir.path()).unwrap().list().is_empty());
}

/// Compaction writes a live record again and lets the old copy go: the message reads
/// back the same from its new place, and after a restart exists once.
#[tokio::test]
async fn a_relocated_record_replaces_the_old_copy() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let env = envelope(&spool);
    spool.accept(&env, b"keep me").await.unwrap();
    let Location::Segment {
        segment,
        offset,
        bytes,
    } = spool.location(env.queue_id).unwrap()
    else {
        panic!("not in a segment");
    };
    let record = segment.raw_record(offset, env.queue_id).unwrap();
    let (job, wait) = Job::relocate(env.queue_id, record, &segment, offset, bytes);
    spool.writer.lock().unwrap().send(job).unwrap();
    wait.await.unwrap().unwrap();
    let Location::Segment {
        offset: moved,
        segment: to,
        ..
    } = spool.location(env.queue_id).unwrap()
    else {
        panic!("not in a segment");
    };
    assert!(!(Arc::ptr_eq(&to, &segment) && moved == offset), "it moved");
    assert!(
        segment.read_record(offset, env.queue_id).is_err(),
        "old copy done"
    );
    assert_eq!(
        spool.read(env.queue_id).unwrap(),
        (env.clone(), b"keep me".to_vec())
    );
    drop((segment, to));
    drop(spool);
    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(spool.list(), vec![env.queue_id]);
    spool.remove(env.queue_id).unwrap();
    drop(spool);
    assert!(Spool::open(dir.path()).unwrap().list().is_empty());
}
