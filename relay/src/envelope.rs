//! The envelope of a queued message: what the session learnt about it (sender,
//! recipients, client, HELO, AUTH, TLS) and its queue id. One type for every layer: the
//! session driver writes it, the spool stores it, delivery reads it.
//!
//! Addresses are stored as the session normalised them: the local part exactly as the
//! client sent it (UTF-8 only when it declared SMTPUTF8), the domain as an A-label
//! (see [`crate::idn`]). Whether the client declared SMTPUTF8 and `BODY=8BITMIME` is kept
//! ([`MailParams`]) so delivery can carry both downstream; envelopes written before these
//! fields existed load with both off.

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
    /// The client declared SMTPUTF8 (RFC 6531) at MAIL.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub smtputf8: bool,
    /// The client declared `BODY=8BITMIME` (RFC 6152) at MAIL.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub eight_bit_mime: bool,
    /// A content filter quarantined the message: `filter: reason`. It is held in the
    /// queue until released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<String>,
    /// A content filter discarded the message (`filter`): it is kept only for its archive
    /// copy, and none of its recipients gets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discarded: Option<String>,
    /// A journal copy of the message is owed to this archive address (SPEC §3.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<String>,
}

/// The MAIL parameters the client declared that delivery carries downstream, where the
/// downstream host offers them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MailParams {
    /// SMTPUTF8 was declared: addresses (and headers) may be UTF-8.
    pub smtputf8: bool,
    /// `BODY=8BITMIME` was declared: the text may hold 8-bit octets.
    pub eight_bit_mime: bool,
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
    /// The MAIL parameters to carry downstream.
    pub fn mail_params(&self) -> MailParams {
        MailParams {
            smtputf8: self.smtputf8,
            eight_bit_mime: self.eight_bit_mime,
        }
    }

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
            smtputf8: false,
            eight_bit_mime: false,
            quarantine: None,
            discarded: None,
            archive: None,
        }
    }
}

/// The domain of an address (`user@Example.COM` gives `example.com`); `None` without `@`.
pub fn domain_of(address: &str) -> Option<String> {
    let (_, domain) = address.rsplit_once('@')?;
    let domain = domain.trim_end_matches('.');
    if domain.is_empty() {
        return None;
    }
    Some(domain.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_written_before_the_mail_parameters_existed_load_without_them() {
        let old = r#"{"queueId":"0000000000000001","mailFrom":"a@acme.example","rcpts":["b@dest.example"],"clientIp":"127.0.0.1","helo":"c","receivedAt":{"secs_since_epoch":1750000000,"nanos_since_epoch":0},"size":5}"#;
        let env: Envelope = serde_json::from_str(old).unwrap();
        assert_eq!(env.mail_params(), MailParams::default());
        // Written again, the flags appear only when set.
        assert!(!serde_json::to_string(&env).unwrap().contains("smtputf8"));
        let mut utf8 = env.clone();
        utf8.smtputf8 = true;
        utf8.eight_bit_mime = true;
        let json = serde_json::to_string(&utf8).unwrap();
        assert!(json.contains(r#""smtputf8":true"#), "{json}");
        assert!(json.contains(r#""eightBitMime":true"#), "{json}");
        let back: Envelope = serde_json::from_str(&json).unwrap();
        assert_eq!(
            back.mail_params(),
            MailParams {
                smtputf8: true,
                eight_bit_mime: true
            }
        );
    }
}
