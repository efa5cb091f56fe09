//! The journal headers of an archive copy (SPEC §3.5, "comprehensive mail storage"): the
//! envelope of a relayed message, which its own headers do not carry (a Bcc recipient is
//! in no header), written above the message as the archive receives it.
//!
//! ```text
//! X-Journal-Report: relay.acme.example; queue-id=00062A1B3C4D5E6F;
//!  received=Mon, 07 Dec 2026 12:00:00 +0000
//! X-Journal-Sender: <app@acme.example>
//! X-Journal-Recipients: <to@partner.example>, <cc@partner.example>,
//!  <bcc@partner.example>
//! X-Journal-Client: [10.0.0.7] helo=app.acme.example
//! X-Journal-Authenticated: app@acme.example
//! ```
//!
//! plus `X-Journal-Original-Sender` when the relay rewrote the sender, and
//! `X-Journal-Filtered` when a content filter discarded or quarantined the message. The
//! copy's other bytes are the message exactly as delivered to its recipients (a DKIM
//! signature the relay added stays below these headers, so it still verifies). Values
//! that came from a client are stripped of control characters, so no header can be
//! forged through them; long lists are folded.
//!
//! Pure: no I/O. Not here: when the copy is sent (`queue`).

use std::fmt::Write;

use crate::clock::rfc5322_date;
use crate::envelope::Envelope;

/// Longest line written before folding (RFC 5322 §2.1.1 recommends 78).
const FOLD_AT: usize = 78;

/// The journal headers of `envelope`'s archive copy, CRLF terminated, relayed by
/// `hostname`.
pub fn journal_headers(envelope: &Envelope, hostname: &str) -> Vec<u8> {
    let mut out = String::new();
    field(
        &mut out,
        "X-Journal-Report",
        &[
            format!("{};", clean(hostname)),
            format!("queue-id={};", envelope.queue_id),
            format!("received={}", rfc5322_date(envelope.received_at)),
        ],
    );
    field(
        &mut out,
        "X-Journal-Sender",
        &[format!("<{}>", clean(&envelope.mail_from))],
    );
    if let Some(original) = &envelope.original_mail_from {
        field(
            &mut out,
            "X-Journal-Original-Sender",
            &[format!("<{}>", clean(original))],
        );
    }
    let last = envelope.rcpts.len().saturating_sub(1);
    let rcpts: Vec<String> = envelope
        .rcpts
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let sep = if i == last { "" } else { "," };
            format!("<{}>{sep}", clean(r))
        })
        .collect();
    field(&mut out, "X-Journal-Recipients", &rcpts);
    let mut client = vec![format!("[{}]", envelope.client_ip)];
    if !envelope.helo.is_empty() {
        client.push(format!("helo={}", clean(&envelope.helo)));
    }
    if let Some(tls) = &envelope.tls {
        client.push(format!("tls={}", clean(tls).replace(' ', "/")));
    }
    field(&mut out, "X-Journal-Client", &client);
    if let Some(identity) = &envelope.auth_identity {
        field(&mut out, "X-Journal-Authenticated", &[clean(identity)]);
    }
    let filtered = match (&envelope.discarded, &envelope.quarantine) {
        (Some(filter), _) => Some(format!("discarded by {filter}")),
        (None, Some(why)) => Some(format!("quarantined by {why}")),
        (None, None) => None,
    };
    if let Some(filtered) = filtered {
        let words: Vec<String> = clean(&filtered).split(' ').map(str::to_string).collect();
        field(&mut out, "X-Journal-Filtered", &words);
    }
    out.into_bytes()
}

/// `name: word word ...` folded before a word that would pass [`FOLD_AT`].
fn field(out: &mut String, name: &str, words: &[String]) {
    let mut line = name.len() + 1;
    let _ = write!(out, "{name}:");
    for word in words {
        if line + 1 + word.len() > FOLD_AT && line > name.len() + 1 {
            out.push_str("\r\n");
            line = 0;
        }
        out.push(' ');
        out.push_str(word);
        line += 1 + word.len();
    }
    out.push_str("\r\n");
}

/// `s` without control characters (CR and LF above all).
fn clean(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::QueueId;
    use std::time::{Duration, UNIX_EPOCH};

    fn envelope() -> Envelope {
        Envelope {
            queue_id: QueueId(0x62A1B3C4D5E6F),
            mail_from: "app@acme.example".into(),
            original_mail_from: None,
            rcpts: vec![
                "to@partner.example".into(),
                "cc@partner.example".into(),
                "bcc@partner.example".into(),
            ],
            client_ip: "10.0.0.7".parse().unwrap(),
            helo: "app.acme.example".into(),
            auth_identity: Some("app@acme.example".into()),
            tls: None,
            received_at: UNIX_EPOCH + Duration::from_secs(1_796_644_800),
            size: 10,
            smtputf8: false,
            eight_bit_mime: false,
            quarantine: None,
            discarded: None,
            archive: Some("journal@archive.example".into()),
        }
    }

    #[test]
    fn the_envelope_is_written_with_every_recipient_and_folded() {
        let text = String::from_utf8(journal_headers(&envelope(), "relay.acme.example")).unwrap();
        assert_eq!(
            text,
            "X-Journal-Report: relay.acme.example; queue-id=00062A1B3C4D5E6F;\r\n received=Mon, 07 Dec 2026 12:00:00 +0000\r\n\
             X-Journal-Sender: <app@acme.example>\r\n\
             X-Journal-Recipients: <to@partner.example>, <cc@partner.example>,\r\n <bcc@partner.example>\r\n\
             X-Journal-Client: [10.0.0.7] helo=app.acme.example\r\n\
             X-Journal-Authenticated: app@acme.example\r\n"
        );
        for line in text.split("\r\n") {
            assert!(line.len() <= FOLD_AT, "{line}");
        }
    }

    #[test]
    fn a_null_sender_filtered_message_and_forged_line_ends() {
        let mut e = envelope();
        e.mail_from = String::new();
        e.auth_identity = Some("evil\r\nX-Injected: yes".into());
        e.discarded = Some("rspamd".into());
        let text = String::from_utf8(journal_headers(&e, "relay.acme.example")).unwrap();
        assert!(text.contains("X-Journal-Sender: <>\r\n"), "{text}");
        assert!(
            text.contains("X-Journal-Filtered: discarded by rspamd\r\n"),
            "{text}"
        );
        assert!(
            text.contains("X-Journal-Authenticated: evilX-Injected: yes\r\n"),
            "{text}"
        );
        assert!(!text.contains("\r\nX-Injected"), "{text}");
    }
}
