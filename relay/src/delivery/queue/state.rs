//! Per-recipient delivery state: what happened to each recipient of a message
//! ([`RecipientState`], [`MessageState`]), the DSN still owed, and the small state file per
//! message (`<queue id>.delivery.json`, written atomically after each route group) and the
//! `<queue id>.hold` marker that keep it across restarts.
//!
//! Not here: deciding what happens next (`turn`).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;

/// Per-recipient delivery state, as saved in a message's state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum RecipientState {
    /// Not delivered yet.
    Pending {
        /// The last temporary failure, if any.
        #[serde(default)]
        last_error: Option<String>,
    },
    /// Handed to a downstream host.
    Delivered {
        /// `host:port` that took it.
        host: String,
    },
    /// Failed for good.
    Bounced {
        /// Enhanced status `5.x.x`.
        status: String,
        /// What happened.
        diagnostic: String,
    },
}

/// The state file of one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageState {
    /// Failed attempts so far.
    pub attempts: u32,
    /// When to try next (Unix seconds).
    pub next_attempt_unix: u64,
    /// State per recipient.
    pub recipients: BTreeMap<String, RecipientState>,
    /// Bounced recipients whose DSN is not queued yet.
    #[serde(default)]
    pub dsn_pending: Vec<DsnEntry>,
    /// The journal copy owed to the archive (SPEC §3.5), on a schedule of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveState>,
}

/// The journal copy of a message: delivered on its own, with its own failed attempts and
/// next try, so its failures never delay the recipients and theirs never drop it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveState {
    /// The archive address the copy is owed to.
    pub address: String,
    /// Pending, delivered or bounced, as for a recipient.
    pub state: RecipientState,
    /// Failed attempts of the copy so far.
    pub attempts: u32,
    /// When to try the copy next (Unix seconds).
    pub next_attempt_unix: u64,
    /// The copy bounced and its report to the postmaster is not queued yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_pending: Option<DsnEntry>,
}

impl ArchiveState {
    /// True while the copy is still to be delivered.
    pub fn pending(&self) -> bool {
        matches!(self.state, RecipientState::Pending { .. })
    }

    /// True once nothing is owed for it any more (delivered, or bounced and reported).
    pub fn settled(&self) -> bool {
        !self.pending() && self.report_pending.is_none()
    }
}

/// A bounced recipient waiting for its DSN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DsnEntry {
    /// Recipient.
    pub recipient: String,
    /// Status `5.x.x`.
    pub status: String,
    /// Diagnostic text.
    pub diagnostic: String,
    /// The host that answered, if one did.
    #[serde(default)]
    pub remote_mta: Option<String>,
}

impl MessageState {
    /// The state of a message nothing was tried for yet: every recipient pending (none
    /// when a content filter discarded it and it is kept for its archive copy only), and
    /// its archive copy owed.
    pub(super) fn new(envelope: &Envelope, now: SystemTime) -> Self {
        let recipients = if envelope.discarded.is_some() {
            BTreeMap::new()
        } else {
            envelope
                .rcpts
                .iter()
                .map(|r| (r.clone(), RecipientState::Pending { last_error: None }))
                .collect()
        };
        Self {
            attempts: 0,
            next_attempt_unix: unix(now),
            recipients,
            dsn_pending: Vec::new(),
            archive: envelope.archive.as_ref().map(|address| ArchiveState {
                address: address.clone(),
                state: RecipientState::Pending { last_error: None },
                attempts: 0,
                next_attempt_unix: unix(now),
                report_pending: None,
            }),
        }
    }

    /// True when nothing more is owed: every recipient delivered or bounced, every DSN
    /// queued, the archive copy delivered or bounced and reported.
    pub(super) fn finished(&self) -> bool {
        self.pending().is_empty()
            && self.dsn_pending.is_empty()
            && self.archive.as_ref().is_none_or(ArchiveState::settled)
    }

    /// The archive copy, when it is still to be delivered.
    pub(super) fn archive_pending(&self) -> Option<&ArchiveState> {
        self.archive.as_ref().filter(|a| a.pending())
    }

    pub(super) fn pending(&self) -> Vec<String> {
        self.recipients
            .iter()
            .filter(|(_, s)| matches!(s, RecipientState::Pending { .. }))
            .map(|(r, _)| r.clone())
            .collect()
    }
}

pub(super) fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(super) fn from_unix(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// A queue id is used as a file name: only letters, digits, `-`, `_` and `.` (not leading).
pub(super) fn valid_queue_id(id: &str) -> bool {
    !id.is_empty()
        && !id.starts_with('.')
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Writes a file atomically and durably: temporary file, fsync, rename, directory fsync.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    fs::File::open(dir)?.sync_all()
}

/// Where a spool in `spool_dir` keeps its messages' delivery state and hold markers.
pub fn state_dir(spool_dir: &Path) -> std::path::PathBuf {
    spool_dir.join("delivery")
}

/// Holds `queue_id` before it joins the queue (a content filter quarantined it): the hold
/// marker, with `reason`, written durably into `dir` (the spool's state directory). Written
/// before the message is committed, so a crash in between never lets it be delivered.
pub fn hold_before_commit(dir: &Path, queue_id: &str, reason: &str) -> io::Result<()> {
    if !valid_queue_id(queue_id) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad queue id"));
    }
    fs::create_dir_all(dir)?;
    let reason: String = reason
        .chars()
        .filter(|c| !c.is_control())
        .take(512)
        .collect();
    write_atomic(
        dir,
        &hold_name(queue_id),
        format!("held: {reason}\n").as_bytes(),
    )
}

/// Removes a hold marker written by [`hold_before_commit`] for a message that was not
/// committed after all.
pub fn forget_hold(dir: &Path, queue_id: &str) {
    if valid_queue_id(queue_id) {
        let _ = fs::remove_file(dir.join(hold_name(queue_id)));
    }
}

/// Why `queue_id` is held, when a reason was written with the hold.
pub fn hold_reason(dir: &Path, queue_id: &str) -> Option<String> {
    if !valid_queue_id(queue_id) {
        return None;
    }
    let text = fs::read_to_string(dir.join(hold_name(queue_id))).ok()?;
    let reason = text.trim().strip_prefix("held: ")?;
    Some(reason.to_string())
}

pub(super) fn hold_name(queue_id: &str) -> String {
    format!("{queue_id}.hold")
}

pub(super) fn state_name(queue_id: &str) -> String {
    format!("{queue_id}.delivery.json")
}

/// The delivery state of `queue_id` kept in `dir` (the spool's `delivery/` directory), if
/// any, and whether it is held: what a drain carries with the message.
pub fn stored_state(dir: &Path, queue_id: &str) -> io::Result<(Option<MessageState>, bool)> {
    let state = load_state(dir, queue_id)?;
    Ok((state, dir.join(hold_name(queue_id)).exists()))
}

/// Removes the delivery state and hold marker of `queue_id` from `dir` (a message that
/// left this spool): both are tried; the first failure other than a missing file is
/// returned.
pub fn forget_state(dir: &Path, queue_id: &str) -> io::Result<()> {
    if !valid_queue_id(queue_id) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad queue id"));
    }
    let mut first = Ok(());
    for name in [state_name(queue_id), hold_name(queue_id)] {
        match fs::remove_file(dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
    }
    first
}

impl MessageState {
    /// Recipients not yet delivered nor bounced.
    pub fn pending_recipients(&self) -> Vec<String> {
        self.pending()
    }
}

pub(super) fn load_state(dir: &Path, queue_id: &str) -> io::Result<Option<MessageState>> {
    if !valid_queue_id(queue_id) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad queue id {queue_id:?}"),
        ));
    }
    match fs::read(dir.join(state_name(queue_id))) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

pub(super) fn save_state(dir: &Path, queue_id: &str, state: &MessageState) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(state).map_err(io::Error::other)?;
    write_atomic(dir, &state_name(queue_id), &bytes)
}
