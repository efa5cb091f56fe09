//! RFC 3464 delivery status notifications (bounces) and a parser for them.
//!
//! [`build_dsn`] writes a `multipart/report; report-type=delivery-status` message with a
//! human-readable part, a `message/delivery-status` part (Reporting-MTA, Arrival-Date and,
//! per failed recipient, Final-Recipient, Action: failed, Status and Diagnostic-Code) and a
//! `text/rfc822-headers` part holding the original headers. [`parse_dsn`] reads one back
//! (used by tests and tools). Deciding *whether* to bounce (never for a null sender) is the
//! queue manager's job, not this module's.

use crate::received::rfc5322_date;
use std::time::{SystemTime, UNIX_EPOCH};

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
    let boundary = format!("=_dsn_{}_{}", clean(report.queue_id), unix_secs(report.now));
    let host = clean(report.reporting_mta);
    let mut m = String::new();
    let mut line = |s: &str| {
        m.push_str(s);
        m.push_str("\r\n");
    };
    line(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{host}>"
    ));
    line(&format!("To: <{}>", clean(report.original_sender)));
    line("Subject: Undelivered Mail Returned to Sender");
    line(&format!("Date: {}", rfc5322_date(report.now)));
    line(&format!(
        "Message-ID: <dsn.{}.{}@{host}>",
        clean(report.queue_id),
        unix_secs(report.now)
    ));
    line("Auto-Submitted: auto-replied");
    line("MIME-Version: 1.0");
    line(&format!(
        "Content-Type: multipart/report; report-type=delivery-status; boundary=\"{boundary}\""
    ));
    line("");
    line("This is a MIME-encapsulated message.");
    line("");
    line(&format!("--{boundary}"));
    line("Content-Type: text/plain; charset=utf-8");
    line("");
    line(&format!("This is the mail system at host {host}."));
    line("");
    line("Your message could not be delivered to one or more recipients.");
    line("");
    for f in report.failures {
        line(&format!(
            "<{}>: {}",
            clean(&f.recipient),
            clean(&f.diagnostic)
        ));
    }
    line("");
    line(&format!("--{boundary}"));
    line("Content-Type: message/delivery-status");
    line("");
    line(&format!("Reporting-MTA: dns; {host}"));
    line(&format!("X-Queue-ID: {}", clean(report.queue_id)));
    line(&format!("Arrival-Date: {}", rfc5322_date(report.arrival)));
    for f in report.failures {
        line("");
        line(&format!("Final-Recipient: rfc822; {}", clean(&f.recipient)));
        line("Action: failed");
        line(&format!("Status: {}", clean(&f.status)));
        if let Some(mta) = &f.remote_mta {
            line(&format!("Remote-MTA: dns; {}", clean(mta)));
        }
        line(&format!("Diagnostic-Code: smtp; {}", clean(&f.diagnostic)));
        line(&format!("Last-Attempt-Date: {}", rfc5322_date(report.now)));
    }
    line("");
    line(&format!("--{boundary}"));
    line("Content-Type: text/rfc822-headers");
    line("");
    let mut out = m.into_bytes();
    let headers = original_headers(report.original);
    out.extend_from_slice(headers);
    if !headers.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
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

/// Strips characters that would break a header line.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect()
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
        if ptype.starts_with("message/delivery-status") {
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
        } else if ptype.starts_with("text/rfc822-headers") {
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
            text.contains("Date: Tue, 01 Jul 2025 10:00:00 +0000\r\n"),
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
}
