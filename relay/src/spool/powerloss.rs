//! The power-loss simulator's tests: random workloads on the simulated disk (`sim`)
//! under the spool, a crash at a random operation, a restart on what survived, and the
//! spool's promises checked against it.
//!
//! A workload (from a seed) accepts small messages (segment records), larger ones (files
//! of their own, written whole) and large ones (streamed through `incoming/`), delivers
//! (removes) and defers (reads) random queued ones, runs housekeeping passes
//! (compaction, spares, reuse of freed segments), on a disk that is sometimes nearly full.
//! Segments are small (16 and 32 KiB) so that they fill, seal, get compacted and reused
//! within a few dozen steps. A first run without a crash counts the workload's
//! operations; the crash point is drawn among them, and the crash keeps nothing of the
//! volatile buffer, a prefix of it, or random pages of it.
//!
//! After the restart:
//! - every acknowledged message (its accept returned `Ok`) that was not removed is there,
//!   its envelope and text intact ("lost" otherwise, which must be 0);
//! - a removed message may be there again only when a write that removed one of its
//!   copies was lost in the crash: its done mark in a segment (removal is not flushed, by
//!   design: at least once), the done mark of an older copy that compaction moved, or the
//!   unlink of its file; it is counted by that cause, and any other reappearance fails;
//! - a message whose accept failed (the crash came before its `250`) may be there (its
//!   data had reached the disk), intact, and is counted: the client retries it;
//! - nothing else is there, and the recovered spool takes and reads new mail.
//!
//! `POWERLOSS_SEED` and `POWERLOSS_CRASHES` set the ignored long run's seed and number of
//! crash points.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::index::Location;
use super::segments::SegmentConfig;
use super::sim::{CrashMode, Image, Lost, SimFs};
use super::store::{SPILL_BYTES, Spool, SpoolOptions};
use crate::envelope::{Envelope, QueueId};

const DIR: &str = "/sim/spool";

fn options(fs: &SimFs, skip_append_sync: bool) -> SpoolOptions {
    SpoolOptions {
        fs: Arc::new(fs.clone()),
        segments: SegmentConfig {
            segment_bytes: 32 * 1024,
            first_segment_bytes: 16 * 1024,
            compact_after: Duration::ZERO,
            reserve: Some(0),
            skip_append_sync,
        },
        writers: 1,
        housekeeping: false,
        lock: false,
        parallel_sync: false,
    }
}

fn envelope(id: QueueId, size: u64) -> Envelope {
    Envelope {
        queue_id: id,
        mail_from: "sender@acme.example".into(),
        original_mail_from: None,
        rcpts: vec!["rcpt@dest.example".into()],
        client_ip: std::net::IpAddr::from([127, 0, 0, 1]),
        helo: "client.acme.example".into(),
        auth_identity: None,
        tls: None,
        received_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        size,
        smtputf8: false,
        eight_bit_mime: false,
        quarantine: None,
        discarded: None,
        archive: None,
    }
}

/// One message of a workload and what happened to it.
struct Msg {
    env: Envelope,
    text: Vec<u8>,
    acked: bool,
    /// Its removal was asked for (returned, or failed at the crash).
    removed: bool,
    /// Every place a copy of it was seen in a segment: (segment file, record offset).
    copies: Vec<(PathBuf, u64)>,
}

/// Counts over many crash points.
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub(super) crash_points: u64,
    pub(super) by_mode: BTreeMap<&'static str, u64>,
    pub(super) operations: u64,
    pub(super) accepted: u64,
    pub(super) acknowledged: u64,
    pub(super) delivered: u64,
    pub(super) housekeeping_passes: u64,
    pub(super) relocated: u64,
    pub(super) segments_reused: u64,
    pub(super) disk_full_refusals: u64,
    pub(super) surviving: u64,
    pub(super) lost: u64,
    pub(super) again_removal_mark_lost: u64,
    pub(super) again_old_copy_mark_lost: u64,
    pub(super) again_unlink_lost: u64,
    pub(super) unacknowledged_kept: u64,
    pub(super) failures: Vec<String>,
}

/// Runs the workload of `seed` on `fs`; stops early once the disk crashed.
fn workload(seed: u64, fs: &SimFs, skip_sync: bool, tally: &mut Tally) -> Vec<Msg> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut msgs: Vec<Msg> = Vec::new();
    let Ok(spool) = Spool::open_with(DIR, options(fs, skip_sync)) else {
        return msgs;
    };
    let steps = rng.random_range(20..70);
    for step in 0..steps {
        if fs.crashed().is_some() {
            break;
        }
        let roll = rng.random_range(0..100);
        let live: Vec<usize> = (0..msgs.len())
            .filter(|&i| msgs[i].acked && !msgs[i].removed)
            .collect();
        if roll < 55 || live.is_empty() {
            let kind = rng.random_range(0..10);
            let len = match kind {
                0 => rng.random_range(70_000..120_000), // a file of its own
                1 => SPILL_BYTES + rng.random_range(1..50_000), // streamed
                _ => rng.random_range(1..3_000),        // a record
            };
            let id = QueueId(0x1000 + (seed % 1000) * 0x10000 + step as u64);
            let fill = b'a' + (step % 26) as u8;
            let mut text = vec![fill; len];
            // A distinct first line, so no two texts are alike.
            let tag = format!("Message-Id: <{seed}.{step}>\r\n");
            let n = tag.len().min(len);
            text[..n].copy_from_slice(&tag.as_bytes()[..n]);
            let env = envelope(id, len as u64);
            tally.accepted += 1;
            let result = if kind == 1 {
                rt.block_on(async {
                    let mut incoming = spool.begin(id);
                    for chunk in text.chunks(64 * 1024) {
                        incoming.buffer().extend_from_slice(chunk);
                        incoming.settle(&spool).await?;
                    }
                    spool.commit(&env, incoming).await
                })
            } else {
                rt.block_on(spool.accept(&env, &text))
            };
            let acked = result.is_ok();
            if matches!(result, Err(super::SpoolError::Full)) {
                tally.disk_full_refusals += 1;
            }
            msgs.push(Msg {
                env,
                text,
                acked,
                removed: false,
                copies: Vec::new(),
            });
        } else if roll < 80 {
            let i = live[rng.random_range(0..live.len())];
            let _ = spool.remove(msgs[i].env.queue_id);
            msgs[i].removed = true;
            tally.delivered += 1;
        } else if roll < 90 {
            let i = live[rng.random_range(0..live.len())];
            let read = spool.read(msgs[i].env.queue_id);
            if fs.crashed().is_none() {
                match read {
                    Ok((env, text)) if env == msgs[i].env && text == msgs[i].text => {}
                    other => tally.failures.push(format!(
                        "seed {seed}: a queued message read back wrong before any crash: {:?}",
                        other.map(|(e, t)| (e.queue_id, t.len()))
                    )),
                }
            }
        } else {
            spool.housekeep_now();
            tally.housekeeping_passes += 1;
        }
        // Where every queued message's copies are now.
        for m in msgs.iter_mut().filter(|m| m.acked && !m.removed) {
            if let Ok(Location::Segment {
                segment, offset, ..
            }) = spool.location(m.env.queue_id)
            {
                let copy = (segment.path.clone(), offset);
                if !m.copies.contains(&copy) {
                    m.copies.push(copy);
                }
            }
        }
    }
    tally.acknowledged += msgs.iter().filter(|m| m.acked).count() as u64;
    tally.relocated += msgs
        .iter()
        .map(|m| m.copies.len().saturating_sub(1) as u64)
        .sum::<u64>();
    tally.segments_reused += spool.shared.segments.reused();
    drop(spool);
    msgs
}

/// Whether `lost` lost the done mark of a record at `offset` of `path`.
fn mark_lost(lost: &[Lost], path: &Path, offset: u64) -> bool {
    let mark = offset + 4;
    lost.iter().any(|l| match l {
        Lost::Write {
            path: p,
            offset: o,
            len,
        } => p == path && *o <= mark && mark < o + len,
        _ => false,
    })
}

/// One crash point: the workload of `seed`, crashed at a point drawn from it, restarted
/// and checked.
pub(super) fn crash_point(seed: u64, skip_sync: bool, tally: &mut Tally) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
    let capacity = if rng.random_range(0..4) == 0 {
        Some(rng.random_range(300_000..1_200_000))
    } else {
        None
    };
    // A run without a crash counts the operations.
    let mut scratch = Tally::default();
    let calibration = SimFs::new(Image::default(), None, CrashMode::DropAll, 0, capacity);
    workload(seed, &calibration, skip_sync, &mut scratch);
    let total = calibration.ops().max(1);
    let crash_at = rng.random_range(1..=total);
    let mode = match rng.random_range(0..3) {
        0 => CrashMode::DropAll,
        1 => CrashMode::Prefix,
        _ => CrashMode::Pages,
    };
    let fs = SimFs::new(Image::default(), Some(crash_at), mode, seed, capacity);
    let msgs = workload(seed, &fs, skip_sync, tally);
    let crashed = fs.crashed().unwrap_or_else(|| fs.crash_now());
    tally.crash_points += 1;
    tally.operations += crash_at;
    *tally
        .by_mode
        .entry(match mode {
            CrashMode::DropAll => "drop all",
            CrashMode::Prefix => "keep a prefix",
            CrashMode::Pages => "keep random pages",
        })
        .or_default() += 1;

    let rebooted = SimFs::new(crashed.image.clone(), None, CrashMode::DropAll, 0, None);
    let spool = match Spool::open_with(DIR, options(&rebooted, false)) {
        Ok(s) => s,
        Err(e) => {
            tally.failures.push(format!(
                "seed {seed} ({mode:?} at {crash_at}/{total}): recovery failed: {e}"
            ));
            return;
        }
    };
    let listed: BTreeSet<QueueId> = spool.list().into_iter().collect();
    let known: BTreeSet<QueueId> = msgs.iter().map(|m| m.env.queue_id).collect();
    let queue = Path::new(DIR).join("queue");
    let what = format!("seed {seed} ({mode:?}, crash at op {crash_at} of {total})");
    for m in &msgs {
        let id = m.env.queue_id;
        let present = listed.contains(&id);
        if present {
            match spool.read(id) {
                Ok((env, text)) if env == m.env && text == m.text => {}
                Ok((_, text)) => tally.failures.push(format!(
                    "{what}: {id} came back with other text ({} bytes, wanted {})",
                    text.len(),
                    m.text.len()
                )),
                Err(e) => tally
                    .failures
                    .push(format!("{what}: {id} is listed but unreadable: {e}")),
            }
        }
        match (m.acked, m.removed, present) {
            (true, false, true) => tally.surviving += 1,
            (true, false, false) => {
                tally.lost += 1;
                tally
                    .failures
                    .push(format!("{what}: acknowledged message {id} lost"));
            }
            (true, true, true) => {
                let last = m.copies.last();
                if crashed.lost.iter().any(
                    |l| matches!(l, Lost::Unlink { path } if *path == queue.join(id.to_string())),
                ) {
                    tally.again_unlink_lost += 1;
                } else if last.is_some_and(|(p, o)| mark_lost(&crashed.lost, p, *o)) {
                    tally.again_removal_mark_lost += 1;
                } else if m
                    .copies
                    .iter()
                    .any(|(p, o)| mark_lost(&crashed.lost, p, *o))
                {
                    tally.again_old_copy_mark_lost += 1;
                } else {
                    tally.failures.push(format!(
                        "{what}: removed message {id} came back though no write removing it was lost (copies {:?})",
                        m.copies
                    ));
                }
            }
            (false, _, true) => tally.unacknowledged_kept += 1,
            _ => {}
        }
    }
    for id in listed.difference(&known) {
        tally
            .failures
            .push(format!("{what}: unknown message {id} after recovery"));
    }
    // The recovered spool takes new mail.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let env = envelope(QueueId(0xffff_0000_0000), 5);
    match rt.block_on(spool.accept(&env, b"after")) {
        Ok(_) if spool.read(env.queue_id).is_ok() => {}
        other => tally.failures.push(format!(
            "{what}: the recovered spool does not take new mail: {:?}",
            other.err()
        )),
    }
}

/// Runs `count` crash points from `seed`.
pub(super) fn run(seed: u64, count: u64, skip_sync: bool) -> Tally {
    let mut tally = Tally::default();
    for i in 0..count {
        crash_point(
            seed.wrapping_mul(1_000_003).wrapping_add(i),
            skip_sync,
            &mut tally,
        );
    }
    tally
}

#[test]
fn a_thousand_power_losses_lose_no_acknowledged_message() {
    let tally = run(28, 1000, false);
    eprintln!("{tally:#?}");
    assert!(tally.failures.is_empty(), "{:#?}", tally.failures);
    assert_eq!(tally.lost, 0);
    assert_eq!(tally.crash_points, 1000);
    assert!(tally.acknowledged > 5_000, "{tally:?}");
    assert!(
        tally.relocated > 0 && tally.segments_reused > 0 && tally.disk_full_refusals > 0,
        "{tally:?}"
    );
}

/// The switch that removes the `sync_data` of a batch append: acknowledged messages are
/// lost, and the simulator says so.
#[test]
fn without_the_batch_flush_power_loss_loses_acknowledged_mail() {
    let tally = run(28, 200, true);
    eprintln!(
        "lost without the flush: {} of {}",
        tally.lost, tally.acknowledged
    );
    assert!(tally.lost > 0, "{tally:#?}");
}

/// The long run: `POWERLOSS_SEED`, `POWERLOSS_CRASHES` (default 20,000).
#[test]
#[ignore = "long: cargo test -p relay --lib powerloss -- --ignored"]
fn power_loss_long_run() {
    let seed = std::env::var("POWERLOSS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let count = std::env::var("POWERLOSS_CRASHES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let started = std::time::Instant::now();
    let tally = run(seed, count, false);
    eprintln!("seed {seed}, {:?}: {tally:#?}", started.elapsed());
    assert!(tally.failures.is_empty(), "{:#?}", tally.failures);
}
