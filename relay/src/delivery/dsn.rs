//! RFC 3464 delivery status notifications (bounces) and a parser for them.
//!
//! [`build_dsn`] writes a `multipart/report; report-type=delivery-status` message with
//! mail-builder: a human-readable part, a `message/delivery-status` part (Reporting-MTA,
//! Arrival-Date and, per failed recipient, Final-Recipient, Action: failed, Status,
//! Remote-MTA and Diagnostic-Code) and a `text/rfc822-headers` part holding the original
//! headers. Every header and status field is folded (no line over 998 octets, RFC 5322
//! §2.1.1), diagnostics are cut to [`MAX_DIAGNOSTIC_BYTES`], and the MIME boundary and
//! Message-ID are random, so nothing in a bounce can be predicted from the queue id.
//! A report about a UTF-8 address is an RFC 6533 one: `Final-Recipient: utf-8; …` in a
//! `message/global-delivery-status` part, and `message/global-headers` when the quoted
//! headers are not ASCII. [`parse_dsn`] reads both kinds back (used by tests and tools). Deciding *whether* to bounce
//! (never for a null sender) is the queue manager's job, not this module's.

use std::time::{SystemTime, UNIX_EPOCH};

use mail_builder::MessageBuilder;
use mail_builder::headers::Header;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::date::Date;
use mail_builder::headers::raw::Raw;
use mail_builder::mime::{BodyPart, MimePart};
use rand::RngExt;
use rand::rngs::StdRng;

/// Longest diagnostic quoted in a DSN, in bytes; longer ones are cut (a remote server's
/// reply may be up to 64 KiB).
pub const MAX_DIAGNOSTIC_BYTES: usize = 500;

/// One recipient that will not be delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRecipient {
    /// The recipient address.
    pub recipient: String,
    /// Enhanced status code, `5.x.x`.
    pub status: String,
    /// What the remote server or the relay said.
    pub diagnostic: String,
    /// The host that gave the answer, when one did.
    pub remote_mta: Option<String>,
}

/// What a bounce reports.
#[derive(Debug, Clone)]
pub struct BounceReport<'a> {
    /// Host name of this relay.
    pub reporting_mta: &'a str,
    /// Queue id of the original message.
    pub queue_id: &'a str,
    /// When the original message was received.
    pub arrival: SystemTime,
    /// When the bounce is written.
    pub now: SystemTime,
    /// Envelope sender of the original message, the bounce's recipient.
    pub original_sender: &'a str,
    /// The recipients that failed.
    pub failures: &'a [FailedRecipient],
    /// The original message (its headers are quoted).
    pub original: &'a [u8],
}

/// Builds the DSN message, CRLF line endings, ready to be queued from the null sender.
pub fn build_dsn(report: &BounceReport<'_>) -> Vec<u8> {
    let mut rng: StdRng = rand::make_rng();
    let host = clean(report.reporting_mta);
    let boundary = format!(
        "=_dsn_{:016x}{:016x}",
        rng.random::<u64>(),
        rng.random::<u64>()
    );
    let message_id = format!("dsn.{:016x}@{host}", rng.random::<u64>());

    let mut human = format!(
        "This is the mail system at host {host}.\r\n\r\nYour message could not be delivered to one or more recipients.\r\n\r\n"
    );
    for f in report.failures {
        human.push_str(&format!(
            "<{}>: {}\r\n",
            clean(&f.recipient),
            bounded(&f.diagnostic)
        ));
    }

    let status = delivery_status(report, &host);
    // RFC 6533: a report naming a UTF-8 address is a "global" one.
    let (status_type, status_encoding) = if status.is_ascii() {
        ("message/delivery-status", "7bit")
    } else {
        ("message/global-delivery-status", "8bit")
    };
    let headers = original_headers(report.original);
    let headers_type = if headers.is_ascii() {
        "text/rfc822-headers"
    } else {
        "message/global-headers"
    };
    let headers_part = {
        let part = MimePart::new(headers_type, BodyPart::Binary(headers.to_vec().into()));
        // Quoted as they are when they are valid lines; otherwise encoded by the library.
        if !quotable(headers) {
            part
        } else if headers.is_ascii() {
            part.transfer_encoding("7bit")
        } else {
            part.transfer_encoding("8bit")
        }
    };
    let body = MimePart::new(
        ContentType::new("multipart/report")
            .attribute("report-type", "delivery-status")
            .attribute("boundary", boundary),
        vec![
            MimePart::new("text/plain", human),
            MimePart::new(status_type, BodyPart::Binary(status.into_bytes().into()))
                .transfer_encoding(status_encoding),
            headers_part,
        ],
    );
    MessageBuilder::new()
        .from((
            "Mail Delivery System".to_string(),
            format!("MAILER-DAEMON@{host}"),
        ))
        .to(clean(report.original_sender))
        .subject("Undelivered Mail Returned to Sender")
        .date(Date::new(unix_secs(report.now) as i64))
        .message_id(message_id)
        .header("Auto-Submitted", Raw::new("auto-replied"))
        .body(body)
        .write_to_vec()
        .unwrap_or_default()
}

/// The `message/delivery-status` body: per-message fields, then one block per recipient,
/// each field folded.
fn delivery_status(report: &BounceReport<'_>, host: &str) -> String {
    let mut out: Vec<u8> = Vec::new();
    write_field(&mut out, "Reporting-MTA", &format!("dns; {host}"));
    write_field(&mut out, "X-Queue-ID", &clean(report.queue_id));
    write_field(
        &mut out,
        "Arrival-Date",
        &Date::new(unix_secs(report.arrival) as i64).to_rfc822(),
    );
    let now = Date::new(unix_secs(report.now) as i64).to_rfc822();
    for f in report.failures {
        out.extend_from_slice(b"\r\n");
        write_field(
            &mut out,
            "Final-Recipient",
            &format!("{}; {}", address_type(&f.recipient), clean(&f.recipient)),
        );
        write_field(&mut out, "Action", "failed");
        write_field(&mut out, "Status", &clean(&f.status));
        if let Some(mta) = &f.remote_mta {
            write_field(&mut out, "Remote-MTA", &format!("dns; {}", clean(mta)));
        }
        write_field(
            &mut out,
            "Diagnostic-Code",
            &format!("smtp; {}", bounded(&f.diagnostic)),
        );
        write_field(&mut out, "Last-Attempt-Date", &now);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The address type of a `Final-Recipient` field: `rfc822` for an ASCII address, `utf-8`
/// for an internationalised one (RFC 6533 §3).
fn address_type(address: &str) -> &'static str {
    if address.is_ascii() {
        "rfc822"
    } else {
        "utf-8"
    }
}

/// Writes one folded field, CRLF-terminated.
fn write_field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    Raw::new(value).write_header(out, name.len() + 2);
}

/// Lines of at most 998 octets, each ended by CRLF, no CR or LF elsewhere: safe to quote
/// as they are.
fn quotable(headers: &[u8]) -> bool {
    let Some(lines) = headers.strip_suffix(b"\n") else {
        return false;
    };
    lines
        .split(|b| *b == b'\n')
        .all(|line| match line.strip_suffix(b"\r") {
            Some(text) => text.len() <= 998 && !text.contains(&b'\r'),
            None => false,
        })
}

/// The header section of a message (up to, not including, the blank line).
fn original_headers(message: &[u8]) -> &[u8] {
    if let Some(pos) = find(message, b"\r\n\r\n") {
        return &message[..pos + 2];
    }
    if let Some(pos) = find(message, b"\n\n") {
        return &message[..pos + 1];
    }
    message
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Control characters (CR and LF among them) would break a field: they become spaces.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// [`clean`], cut to [`MAX_DIAGNOSTIC_BYTES`] on a character boundary.
fn bounded(diagnostic: &str) -> String {
    let text = clean(diagnostic);
    if text.len() <= MAX_DIAGNOSTIC_BYTES {
        return text;
    }
    let mut end = MAX_DIAGNOSTIC_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} [...]", &text[..end])
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A DSN read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedDsn {
    /// The `report-type` of the top-level `multipart/report`.
    pub report_type: String,
    /// `Reporting-MTA` value.
    pub reporting_mta: String,
    /// One entry per recipient block.
    pub recipients: Vec<ParsedRecipient>,
    /// The `text/rfc822-headers` part.
    pub original_headers: String,
}

/// One per-recipient block of a DSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedRecipient {
    /// Address from `Final-Recipient: rfc822; …`.
    pub final_recipient: String,
    /// `Action`.
    pub action: String,
    /// `Status`.
    pub status: String,
    /// Text after `smtp; ` in `Diagnostic-Code`.
    pub diagnostic: String,
}

/// Parses a DSN built by [`build_dsn`] or any RFC 3464 report with a quoted boundary or a
/// token boundary. `None` when it is not a delivery-status report.
pub fn parse_dsn(message: &[u8]) -> Option<ParsedDsn> {
    let text = String::from_utf8_lossy(message).replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n")?;
    let headers = unfold_fields(head);
    let content_type = field(&headers, "content-type")?;
    if !content_type
        .to_ascii_lowercase()
        .starts_with("multipart/report")
    {
        return None;
    }
    let report_type = param(content_type, "report-type")?;
    let boundary = param(content_type, "boundary")?;
    let delimiter = format!("--{boundary}");
    let mut parsed = ParsedDsn {
        report_type,
        reporting_mta: String::new(),
        recipients: Vec::new(),
        original_headers: String::new(),
    };
    let mut found = false;
    for part in body.split(&delimiter).skip(1) {
        if part.starts_with("--") {
            break;
        }
        let part = part.strip_prefix('\n').unwrap_or(part);
        let (phead, pbody) = part.split_once("\n\n").unwrap_or((part, ""));
        let pfields = unfold_fields(phead);
        let ptype = field(&pfields, "content-type")
            .unwrap_or("text/plain")
            .to_ascii_lowercase();
        if ptype.starts_with("message/delivery-status")
            || ptype.starts_with("message/global-delivery-status")
        {
            found = true;
            let mut groups = pbody.split("\n\n").filter(|g| !g.trim().is_empty());
            if let Some(per_message) = groups.next() {
                let f = unfold_fields(per_message);
                parsed.reporting_mta = after_type(field(&f, "reporting-mta").unwrap_or(""));
            }
            for group in groups {
                let f = unfold_fields(group);
                parsed.recipients.push(ParsedRecipient {
                    final_recipient: after_type(field(&f, "final-recipient").unwrap_or("")),
                    action: field(&f, "action").unwrap_or("").to_string(),
                    status: field(&f, "status").unwrap_or("").to_string(),
                    diagnostic: after_type(field(&f, "diagnostic-code").unwrap_or("")),
                });
            }
        } else if ptype.starts_with("text/rfc822-headers")
            || ptype.starts_with("message/global-headers")
        {
            parsed.original_headers = pbody.trim_end_matches('\n').to_string();
        }
    }
    found.then_some(parsed)
}

fn unfold_fields(block: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in block.lines() {
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            out.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    out
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn param(value: &str, name: &str) -> Option<String> {
    value.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim().trim_matches('"').to_string())
    })
}

/// `rfc822; a@b` gives `a@b`.
fn after_type(value: &str) -> String {
    match value.split_once(';') {
        Some((_, rest)) => rest.trim().to_string(),
        None => value.trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dsn_round_trips_status_diagnostic_and_headers() {
        let original = b"From: a@acme.test\r\nSubject: hello\r\n\r\nbody\r\n";
        let failures = vec![
            FailedRecipient {
                recipient: "x@dest.test".into(),
                status: "5.1.1".into(),
                diagnostic: "550 5.1.1 no such user".into(),
                remote_mta: Some("mx.dest.test".into()),
            },
            FailedRecipient {
                recipient: "y@dest.test".into(),
                status: "5.7.5".into(),
                diagnostic: "certificate rejected".into(),
                remote_mta: None,
            },
        ];
        let t = UNIX_EPOCH + Duration::from_secs(1_751_364_000);
        let msg = build_dsn(&BounceReport {
            reporting_mta: "relay.acme.test",
            queue_id: "Q1",
            arrival: t,
            now: t,
            original_sender: "a@acme.test",
            failures: &failures,
            original,
        });
        let text = String::from_utf8(msg.clone()).unwrap();
        assert!(
            text.contains("Date: Tue, 1 Jul 2025 10:00:00 +0000\r\n"),
            "{text}"
        );
        let parsed = parse_dsn(&msg).unwrap();
        assert_eq!(parsed.report_type, "delivery-status");
        assert_eq!(parsed.reporting_mta, "relay.acme.test");
        assert_eq!(parsed.recipients.len(), 2);
        assert_eq!(parsed.recipients[0].final_recipient, "x@dest.test");
        assert_eq!(parsed.recipients[0].action, "failed");
        assert_eq!(parsed.recipients[0].status, "5.1.1");
        assert_eq!(parsed.recipients[0].diagnostic, "550 5.1.1 no such user");
        assert_eq!(parsed.recipients[1].status, "5.7.5");
        assert_eq!(parsed.original_headers, "From: a@acme.test\nSubject: hello");
        assert!(!text.contains("body\r\n"));
    }

    #[test]
    fn a_utf8_recipient_gets_a_global_report() {
        let failures = vec![FailedRecipient {
            recipient: "jörg@xn--bcher-kva.example".into(),
            status: "5.6.7".into(),
            diagnostic: "host mx.dest.test does not offer SMTPUTF8".into(),
            remote_mta: Some("mx.dest.test".into()),
        }];
        let t = UNIX_EPOCH + Duration::from_secs(1_751_364_000);
        let msg = build_dsn(&BounceReport {
            reporting_mta: "relay.acme.test",
            queue_id: "Q1",
            arrival: t,
            now: t,
            original_sender: "a@acme.test",
            failures: &failures,
            original: "From: a@acme.test\r\nTo: jörg@bücher.example\r\n\r\nbody\r\n".as_bytes(),
        });
        let text = String::from_utf8(msg.clone()).unwrap();
        assert!(
            text.contains("Content-Type: message/global-delivery-status"),
            "{text}"
        );
        assert!(
            text.contains("Content-Type: message/global-headers"),
            "{text}"
        );
        assert!(
            text.contains("Final-Recipient: utf-8; jörg@xn--bcher-kva.example\r\n"),
            "{text}"
        );
        let parsed = parse_dsn(&msg).unwrap();
        assert_eq!(
            parsed.recipients[0].final_recipient,
            "jörg@xn--bcher-kva.example"
        );
        assert_eq!(parsed.recipients[0].status, "5.6.7");
        assert!(parsed.original_headers.contains("To: jörg@bücher.example"));
    }

    fn boundary(message: &[u8]) -> String {
        let text = String::from_utf8_lossy(message);
        let start = text.find("boundary=").expect("a boundary") + "boundary=".len();
        text[start..]
            .trim_start_matches('"')
            .split(['"', ';', '\r'])
            .next()
            .unwrap()
            .to_string()
    }

    #[test]
    fn two_dsns_of_one_message_have_different_boundaries_and_bounded_folded_lines() {
        let failures = vec![FailedRecipient {
            recipient: "x@dest.test".into(),
            status: "5.1.1".into(),
            diagnostic: format!(
                "550 5.1.1 {} and then {}",
                "y".repeat(5000),
                "word ".repeat(1000)
            ),
            remote_mta: Some("mx.dest.test".into()),
        }];
        let t = UNIX_EPOCH + Duration::from_secs(1_751_364_000);
        let report = BounceReport {
            reporting_mta: "relay.acme.test",
            queue_id: "Q1",
            arrival: t,
            now: t,
            original_sender: "a@acme.test",
            failures: &failures,
            original: b"Subject: s\r\n\r\nbody\r\n",
        };
        let a = build_dsn(&report);
        let b = build_dsn(&report);
        assert_ne!(boundary(&a), boundary(&b));
        assert!(
            !boundary(&a).contains("Q1"),
            "not derived from the queue id"
        );
        for line in a.split(|b| *b == b'\n') {
            assert!(line.len() <= 999, "{} octets", line.len());
        }
        let parsed = parse_dsn(&a).unwrap();
        let diagnostic = &parsed.recipients[0].diagnostic;
        assert!(diagnostic.starts_with("550 5.1.1 yyy"), "{diagnostic}");
        assert!(
            diagnostic.len() <= MAX_DIAGNOSTIC_BYTES + 10,
            "{}",
            diagnostic.len()
        );
    }
}
