//! The envelope of a queued message: what the session learnt about it (sender,
//! recipients, client, HELO, AUTH, TLS) and its queue id. One type for every layer: the
//! session driver writes it, the spool stores it, delivery reads it.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// A queue id: microseconds since the epoch, bumped to stay unique, so ids sort in
/// arrival order. Printed as 16 upper-case hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct QueueId(pub u64);

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}

/// A string that is not a queue id.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0} is not a queue id")]
pub struct BadQueueId(pub String);

impl FromStr for QueueId {
    type Err = BadQueueId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BadQueueId(s.to_string()));
        }
        u64::from_str_radix(s, 16)
            .map(QueueId)
            .map_err(|_| BadQueueId(s.to_string()))
    }
}

impl From<QueueId> for String {
    fn from(id: QueueId) -> String {
        id.to_string()
    }
}

impl TryFrom<String> for QueueId {
    type Error = BadQueueId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// Everything about a message except its bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    pub queue_id: QueueId,
    /// Envelope sender after any rewrite; `""` is the null sender.
    pub mail_from: String,
    /// The sender the client gave, when it was rewritten to `postmaster@`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_mail_from: Option<String>,
    pub rcpts: Vec<String>,
    pub client_ip: IpAddr,
    /// HELO/EHLO name.
    pub helo: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_identity: Option<String>,
    /// `"TLSv1_3 TLS13_AES_256_GCM_SHA384"` style, when the client used TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    pub received_at: SystemTime,
    /// Message size in bytes (after the `Received:` header was added).
    pub size: u64,
}

impl QueueId {
    /// A new id later than every id `last` has given out: the current time in
    /// microseconds, bumped past `last` when ids are taken faster than the clock moves.
    pub fn next_after(last: &std::sync::atomic::AtomicU64) -> QueueId {
        use std::sync::atomic::Ordering;
        let now = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros() as u64;
        let mut prev = last.load(Ordering::Relaxed);
        loop {
            let next = now.max(prev + 1);
            match last.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return QueueId(next),
                Err(p) => prev = p,
            }
        }
    }
}

impl Envelope {
    /// The envelope of a message the relay generates itself (a DSN): no client, no HELO.
    pub fn generated(
        queue_id: QueueId,
        mail_from: &str,
        rcpts: &[String],
        received_at: SystemTime,
        size: u64,
    ) -> Self {
        Envelope {
            queue_id,
            mail_from: mail_from.to_string(),
            original_mail_from: None,
            rcpts: rcpts.to_vec(),
            client_ip: IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            helo: String::new(),
            auth_identity: None,
            tls: None,
            received_at,
            size,
        }
    }
}
