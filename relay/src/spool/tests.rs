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
        discarded: None,
        archive: None,
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

/// The records of `ids` that went to the same segment as the first, with their offsets.
fn same_segment(spool: &Spool, ids: &[QueueId]) -> (PathBuf, Vec<(QueueId, u64, u64)>) {
    let Location::Segment { segment, .. } = spool.location(ids[0]).unwrap() else {
        panic!("not in a segment");
    };
    let mut members = Vec::new();
    for id in ids {
        if let Location::Segment {
            segment: s,
            offset,
            bytes,
        } = spool.location(*id).unwrap()
            && Arc::ptr_eq(&s, &segment)
        {
            members.push((*id, offset, bytes));
        }
    }
    members.sort_by_key(|m| m.1);
    (segment.path.clone(), members)
}

/// One flipped bit in a record in the middle of a segment (in its text, or in its
/// length field) costs that record only: recovery scans on, keeps every later record of
/// the segment, and copies the damaged one to quarantine, counted. (It used to stop at
/// the damage and drop the rest of the segment, then reuse it.)
#[tokio::test]
async fn a_flipped_bit_mid_segment_keeps_every_later_record() {
    use std::os::unix::fs::FileExt;
    for (what, at) in [("text", 60u64), ("length", 29)] {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut ids = Vec::new();
        for i in 0..40u32 {
            let env = envelope(&spool);
            spool
                .accept(&env, format!("message number {i:04}").as_bytes())
                .await
                .unwrap();
            ids.push(env.queue_id);
        }
        let (path, members) = same_segment(&spool, &ids);
        assert!(members.len() >= 4, "{members:?}");
        let (victim, offset, _) = members[1];
        let later: Vec<QueueId> = members[2..].iter().map(|m| m.0).collect();
        drop(spool);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut b = [0u8; 1];
        file.read_exact_at(&mut b, offset + at).unwrap();
        file.write_all_at(&[b[0] ^ 0x02], offset + at).unwrap();
        drop(file);

        let spool = Spool::open(dir.path()).unwrap();
        let listed = spool.list();
        for id in &later {
            assert!(listed.contains(id), "{what}: later record {id} dropped");
            spool.read(*id).unwrap();
        }
        assert!(!listed.contains(&victim), "{what}");
        assert_eq!(listed.len(), ids.len() - 1, "{what}");
        assert_eq!(spool.damaged_at_open(), 1, "{what}");
        assert_eq!(spool.torn_at_open(), 0, "{what}");
        let name = format!(
            "{}@{offset}.damaged",
            path.file_name().unwrap().to_string_lossy()
        );
        assert!(
            dir.path().join("quarantine").join(&name).exists(),
            "{what}: {name}"
        );
        // The segment still holds live records: new mail goes elsewhere, and a second
        // start finds the same.
        let after = envelope(&spool);
        spool.accept(&after, b"after").await.unwrap();
        drop(spool);
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.depth(), ids.len(), "{what}");
        for id in &later {
            spool.read(*id).unwrap();
        }
    }
}

/// A header torn while its segment was recycled hid the highest sequence number in use;
/// the next start handed it out again, so records of the earlier use could pass for
/// records of the new one. Sequence numbers now come from a durable ceiling.
#[tokio::test]
async fn a_torn_header_never_lets_a_sequence_number_be_used_again() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let mut seen = Vec::new();
    let mut ids = Vec::new();
    for i in 0..8u32 {
        let env = envelope(&spool);
        spool
            .accept(&env, format!("m{i}").as_bytes())
            .await
            .unwrap();
        seen.push(tail_of(&spool, env.queue_id).1);
        ids.push(env.queue_id);
    }
    for id in ids {
        spool.remove(id).unwrap();
    }
    drop(spool);
    // Every header torn (as by a crash while each was rewritten for reuse).
    for e in fs::read_dir(dir.path().join("segments")).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "seg") {
            let f = OpenOptions::new().write(true).open(&path).unwrap();
            f.write_all_at(b"RLYSEG\0\0\0\0\0\0", 0).unwrap();
        }
    }
    let spool = Spool::open(dir.path()).unwrap();
    assert!(spool.list().is_empty());
    let env = envelope(&spool);
    spool.accept(&env, b"new").await.unwrap();
    let seq = tail_of(&spool, env.queue_id).1;
    let highest = seen.iter().copied().max().unwrap();
    assert!(
        seq > highest,
        "sequence number {seq} handed out again (used before: {seen:?})"
    );
    drop(spool);
    // And after another start, still above everything handed out.
    let spool = Spool::open(dir.path()).unwrap();
    let env2 = envelope(&spool);
    spool.accept(&env2, b"newer").await.unwrap();
    let seq2 = tail_of(&spool, env2.queue_id).1;
    assert!(seq2 > highest && seq2 != seq, "{seq2}");
}

/// A message kept in a file of its own carries a checksum: a flipped bit in its text is
/// refused on read and quarantined at the next start, not delivered as other text.
#[tokio::test]
async fn a_flipped_bit_in_a_queue_file_is_caught_at_read_and_at_recovery() {
    use crate::delivery::queue::MessageStore;
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let env = envelope(&spool);
    // Larger than a segment record: a file of its own.
    let text = vec![b'q'; 600 * 1024];
    spool.accept(&env, &text).await.unwrap();
    let path = dir.path().join("queue").join(env.queue_id.to_string());
    assert!(path.exists());
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(b"Q", 5000).unwrap();
    drop(f);
    let e = spool.read(env.queue_id).unwrap_err();
    assert!(matches!(e, SpoolError::Corrupt { .. }), "{e}");
    assert!(MessageStore::read(&spool, &env.queue_id.to_string()).is_err());
    drop(spool);
    let spool = Spool::open(dir.path()).unwrap();
    assert!(spool.list().is_empty());
    assert_eq!(spool.quarantined_at_open(), 1);
}

/// Files of the `RELAYSPOOL2` layout (no checksum) are still read.
#[tokio::test]
async fn files_of_the_second_layout_are_still_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let env = envelope(&spool);
    let json = serde_json::to_vec(&env).unwrap();
    let mut v2 = HEADER2.to_vec();
    v2.extend_from_slice(b"hello");
    v2.extend_from_slice(&json);
    v2.extend_from_slice(format!("\nEND {:016x} {:016x}\n", 5, json.len()).as_bytes());
    fs::write(dir.path().join("queue").join(env.queue_id.to_string()), &v2).unwrap();
    drop(spool);
    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(spool.read(env.queue_id).unwrap(), (env, b"hello".to_vec()));
}

/// A segment whose size is not one the spool makes (cut short, or grown) is scanned,
/// not deleted unread: its acknowledged records are kept.
#[tokio::test]
async fn a_segment_of_an_unexpected_size_is_scanned_not_deleted() {
    for change in ["cut", "grown"] {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut ids = Vec::new();
        for i in 0..6u32 {
            let env = envelope(&spool);
            spool
                .accept(&env, format!("m{i}").as_bytes())
                .await
                .unwrap();
            ids.push(env.queue_id);
        }
        drop(spool);
        for e in fs::read_dir(dir.path().join("segments")).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_some_and(|x| x == "seg") {
                let f = OpenOptions::new().write(true).open(&path).unwrap();
                let len = f.metadata().unwrap().len();
                f.set_len(if change == "cut" {
                    len - 300_000
                } else {
                    len + 4096
                })
                .unwrap();
            }
        }
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.list(), ids, "{change}");
        for id in &ids {
            spool.read(*id).unwrap();
        }
    }
}

/// A file layer that reports a chosen amount of free space.
#[derive(Debug)]
struct LowSpace {
    free: std::sync::atomic::AtomicU64,
}

impl super::fsys::SpoolFs for LowSpace {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        super::fsys::StdFs.create_dir_all(dir)
    }
    fn open_rw(&self, path: &Path) -> io::Result<super::fsys::FileRef> {
        super::fsys::StdFs.open_rw(path)
    }
    fn open_read(&self, path: &Path) -> io::Result<super::fsys::FileRef> {
        super::fsys::StdFs.open_read(path)
    }
    fn create_new(&self, path: &Path) -> io::Result<super::fsys::FileRef> {
        super::fsys::StdFs.create_new(path)
    }
    fn exists(&self, path: &Path) -> bool {
        super::fsys::StdFs.exists(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        super::fsys::StdFs.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        super::fsys::StdFs.remove_file(path)
    }
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        super::fsys::StdFs.read_dir(dir)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        super::fsys::StdFs.sync_dir(dir)
    }
    fn space(&self, _dir: &Path) -> Option<(u64, u64)> {
        Some((
            self.free.load(std::sync::atomic::Ordering::Acquire),
            100 << 30,
        ))
    }
}

/// Below the reserve (here 128 MiB on a 100 GiB disk) no segment is made: mail goes to
/// files of their own, which take only the room they need, and segments come back once
/// space is freed.
#[tokio::test]
async fn no_new_segment_below_the_free_space_reserve() {
    use super::fsys::SpoolFs;
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(LowSpace {
        free: (100 << 20).into(),
    });
    let options = super::SpoolOptions {
        fs: fs.clone() as Arc<dyn SpoolFs>,
        ..super::SpoolOptions::default()
    };
    let spool = Spool::open_with(dir.path(), options).unwrap();
    let env = envelope(&spool);
    spool.accept(&env, b"small").await.unwrap();
    assert!(matches!(
        spool.location(env.queue_id).unwrap(),
        Location::File
    ));
    assert_eq!(spool.shared.segments.made(), 0);
    fs.free
        .store(10 << 30, std::sync::atomic::Ordering::Release);
    let env2 = envelope(&spool);
    spool.accept(&env2, b"small").await.unwrap();
    assert!(matches!(
        spool.location(env2.queue_id).unwrap(),
        Location::Segment { .. }
    ));
    assert_eq!(spool.read(env.queue_id).unwrap().1, b"small");
}

/// Compaction's trigger, end to end with the housekeeping thread (its 30 s wait made
/// short): a sealed segment mostly delivered gets its live records moved; they read back
/// the same, exist once (also after a restart), and the segment is free again.
#[tokio::test]
async fn a_mostly_delivered_sealed_segment_is_compacted_and_freed() {
    let dir = tempfile::tempdir().unwrap();
    let options = || super::SpoolOptions {
        segments: super::segments::SegmentConfig {
            first_segment_bytes: 64 * 1024,
            segment_bytes: 64 * 1024,
            compact_after: std::time::Duration::from_millis(50),
            ..Default::default()
        },
        writers: 1,
        ..super::SpoolOptions::default()
    };
    let spool = Spool::open_with(dir.path(), options()).unwrap();
    let mut ids = Vec::new();
    // About 40 records of 2 kB: the first segment fills and is sealed.
    for i in 0..40u32 {
        let env = envelope(&spool);
        let text = format!("{i:04}{}", "c".repeat(2000));
        spool.accept(&env, text.as_bytes()).await.unwrap();
        ids.push((env, text));
    }
    let Location::Segment { segment: first, .. } = spool.location(ids[0].0.queue_id).unwrap()
    else {
        panic!("not in a segment");
    };
    let members: Vec<usize> = (0..ids.len())
        .filter(|&i| {
            matches!(spool.location(ids[i].0.queue_id).unwrap(),
                Location::Segment { segment, .. } if Arc::ptr_eq(&segment, &first))
        })
        .collect();
    assert!(members.len() > 20, "{}", members.len());
    assert!(
        members.len() < ids.len(),
        "the first segment is full and sealed"
    );
    // Deliver all but three of the first segment's messages.
    let keep: Vec<usize> = members.iter().copied().step_by(10).take(3).collect();
    for &i in &members {
        if !keep.contains(&i) {
            spool.remove(ids[i].0.queue_id).unwrap();
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let moved = keep.iter().all(|&i| {
            !matches!(spool.location(ids[i].0.queue_id).unwrap(),
                Location::Segment { segment, .. } if Arc::ptr_eq(&segment, &first))
        });
        if moved && spool.shared.segments.is_free(&first) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not compacted in time"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for &i in &keep {
        let (env, text) = &ids[i];
        assert_eq!(
            spool.read(env.queue_id).unwrap(),
            (env.clone(), text.clone().into_bytes())
        );
    }
    let live: Vec<QueueId> = spool.list();
    drop(first);
    drop(spool);
    let spool = Spool::open_with(dir.path(), options()).unwrap();
    assert_eq!(
        spool.list(),
        live,
        "each message exactly once after a restart"
    );
    for &i in &keep {
        assert_eq!(
            spool.read(ids[i].0.queue_id).unwrap().1,
            ids[i].1.as_bytes()
        );
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    /// The fuzz target `spool_recovery` in the normal suite: a spool directory written
    /// from arbitrary bytes (valid records and queue files, then bit flips and
    /// truncations anywhere), opened: no panic, no failed open, no intact record or file
    /// dropped, nothing kept that reads back other than written.
    #[test]
    fn recovery_of_damaged_spools_keeps_every_intact_message(
        data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let verdict = super::fuzzing::recovery_case(&data, dir.path());
        proptest::prop_assert!(verdict.is_ok(), "{:?}", verdict);
    }
}
