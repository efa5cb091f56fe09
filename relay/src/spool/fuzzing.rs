//! Recovery on damaged input, for the `spool_recovery` fuzz target and its proptest
//! twin: [`recovery_case`] writes a spool directory from arbitrary bytes (a segment of
//! valid records and two queue files, then bit flips and truncations anywhere in them),
//! opens it, and says what broke a promise:
//! - the open never panics, and never fails (damage is not an I/O error);
//! - every record whose bytes are intact is kept (or, when a damaged length claims it,
//!   copied whole to `quarantine/` inside the damaged stretch; never silently dropped);
//! - every queue file left intact is kept;
//! - whatever is kept reads back exactly as written (no damaged text is delivered).
//!
//! Not part of the relay's API: hidden from the docs, used by `fuzz/` and the tests.

use std::fs;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use super::files::single_file;
use super::scan::{HEADER_LEN, encode, header, set_seq};
use super::store::Spool;
use crate::envelope::{Envelope, QueueId};

const SEGMENT_LEN: usize = 64 * 1024;
const SEQ: u64 = 7;

fn envelope(id: u64, size: usize) -> Envelope {
    Envelope {
        queue_id: QueueId(id),
        mail_from: "sender@acme.example".into(),
        original_mail_from: None,
        rcpts: vec!["rcpt@dest.example".into()],
        client_ip: std::net::IpAddr::from([127, 0, 0, 1]),
        helo: "client.acme.example".into(),
        auth_identity: None,
        tls: None,
        received_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        size: size as u64,
        smtputf8: false,
        eight_bit_mime: false,
        quarantine: None,
        discarded: None,
        archive: None,
    }
}

fn text(id: u64, len: usize) -> Vec<u8> {
    let mut t = format!("Message-Id: <{id}@fuzz>\r\n").into_bytes();
    t.resize(len.max(t.len()), b'a' + (id % 26) as u8);
    t
}

/// Writes the spool described by `data` into the empty directory `dir`, opens it, and
/// checks the promises above; `Err` says which one broke.
pub fn recovery_case(data: &[u8], dir: &Path) -> Result<(), String> {
    let used = std::cell::Cell::new(0usize);
    let next = || {
        let b = data.get(used.get()).copied().unwrap_or(0);
        used.set(used.get() + 1);
        b
    };
    let records = usize::from(next() % 40) + 1;
    let mut segment = vec![0u8; SEGMENT_LEN];
    segment[..32].copy_from_slice(&header(SEQ, 2));
    let mut at = HEADER_LEN as usize;
    let mut written: Vec<(QueueId, usize, usize, Envelope, Vec<u8>)> = Vec::new();
    for i in 0..records {
        let id = 0x100 + i as u64;
        let len = usize::from(next()) * 7 + usize::from(next() % 4) * 300;
        let body = text(id, len);
        let env = envelope(id, body.len());
        let json = serde_json::to_vec(&env).map_err(|e| e.to_string())?;
        let mut record = encode(QueueId(id), &json, &body);
        set_seq(&mut record, SEQ);
        if at + record.len() > SEGMENT_LEN {
            break;
        }
        segment[at..at + record.len()].copy_from_slice(&record);
        written.push((QueueId(id), at, at + record.len(), env, body));
        at += record.len();
    }
    let mut files: Vec<(QueueId, Vec<u8>, Envelope, Vec<u8>)> = Vec::new();
    for k in 0..2u64 {
        let id = 0x900 + k;
        let body = text(id, 600 + usize::from(next()) * 3);
        let env = envelope(id, body.len());
        let json = serde_json::to_vec(&env).map_err(|e| e.to_string())?;
        files.push((QueueId(id), single_file(&json, &body), env, body));
    }
    let clean_segment = segment.clone();
    let clean_files: Vec<Vec<u8>> = files.iter().map(|f| f.1.clone()).collect();
    // Damage: 6 bytes each: what, where (u32), which bit.
    let rest: Vec<u8> = data.get(used.get()..).unwrap_or_default().to_vec();
    for op in rest.chunks_exact(6) {
        let pos = u32::from_le_bytes([op[1], op[2], op[3], op[4]]) as usize;
        let bit = 1u8 << (op[5] % 8);
        let target: &mut Vec<u8> = match op[0] % 3 {
            0 => &mut segment,
            1 => &mut files[0].1,
            _ => &mut files[1].1,
        };
        if op[0] % 2 == 0 {
            if !target.is_empty() {
                let i = pos % target.len();
                target[i] ^= bit;
            }
        } else {
            let cut = pos % (target.len() + 1);
            target.truncate(cut);
        }
    }
    let segments = dir.join("segments");
    let queue = dir.join("queue");
    fs::create_dir_all(&segments).map_err(|e| e.to_string())?;
    fs::create_dir_all(&queue).map_err(|e| e.to_string())?;
    fs::write(segments.join("00000000.seg"), &segment).map_err(|e| e.to_string())?;
    for (id, bytes, _, _) in &files {
        fs::write(queue.join(id.to_string()), bytes).map_err(|e| e.to_string())?;
    }

    let spool = Spool::open(dir).map_err(|e| format!("the open failed: {e}"))?;
    let listed = spool.list();
    let quarantined: Vec<Vec<u8>> = fs::read_dir(dir.join("quarantine"))
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok())
        .filter_map(|e| fs::read(e.path()).ok())
        .collect();
    for (id, start, end, env, body) in &written {
        let intact = segment.get(*start..*end) == clean_segment.get(*start..*end);
        let kept = listed.contains(id);
        if intact && !kept {
            let whole = clean_segment.get(*start..*end).unwrap_or_default();
            let in_quarantine = quarantined
                .iter()
                .any(|q| q.windows(whole.len()).any(|w| w == whole));
            if !in_quarantine {
                return Err(format!(
                    "intact record {id} at {start}..{end} dropped (neither kept nor quarantined)"
                ));
            }
        }
        if kept {
            let (got_env, got_text) = spool
                .read(*id)
                .map_err(|e| format!("record {id} listed but unreadable: {e}"))?;
            if got_env != *env || got_text != *body {
                return Err(format!("record {id} reads back other than written"));
            }
        }
    }
    for ((id, bytes, env, body), clean) in files.iter().zip(&clean_files) {
        let kept = listed.contains(id);
        if bytes == clean && !kept {
            return Err(format!("intact queue file {id} dropped"));
        }
        if kept {
            let (got_env, got_text) = spool
                .read(*id)
                .map_err(|e| format!("queue file {id} listed but unreadable: {e}"))?;
            if got_env != *env || got_text != *body {
                return Err(format!("queue file {id} reads back other than written"));
            }
        }
    }
    for id in &listed {
        if !written.iter().any(|w| w.0 == *id) && !files.iter().any(|f| f.0 == *id) {
            return Err(format!("unknown message {id} after recovery"));
        }
    }
    Ok(())
}
