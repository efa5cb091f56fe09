//! The `Received:` trace header the relay prepends to each accepted message (RFC 5321
//! §4.4): client name and IP, TLS version and cipher, protocol, queue id, date.
//! Pure formatting; the date is passed in.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

/// What the header records.
#[derive(Clone, Copy, Debug)]
pub struct Trace<'a> {
    pub helo: &'a str,
    pub ip: IpAddr,
    /// `"TLSv1_3 TLS13_AES_256_GCM_SHA384"` when TLS was used.
    pub tls: Option<&'a str>,
    pub authenticated: bool,
    pub hostname: &'a str,
    pub queue_id: &'a str,
    pub at: SystemTime,
}

/// The header, folded, CRLF-terminated.
pub fn received_header(t: &Trace<'_>) -> String {
    let proto = match (t.tls.is_some(), t.authenticated) {
        (true, true) => "ESMTPSA",
        (true, false) => "ESMTPS",
        (false, true) => "ESMTPA",
        (false, false) => "ESMTP",
    };
    let tls = match t.tls.and_then(|s| s.split_once(' ')) {
        Some((version, cipher)) => format!("\r\n\t(using {version} with cipher {cipher})"),
        None => String::new(),
    };
    format!(
        "Received: from {} ([{}]){}\r\n\tby {} with {} id {};\r\n\t{}\r\n",
        t.helo,
        t.ip.to_canonical(),
        tls,
        t.hostname,
        proto,
        t.queue_id,
        rfc5322_date(t.at)
    )
}

/// `Tue, 25 Nov 2026 14:03:09 +0000`.
pub fn rfc5322_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        WEEKDAYS[(days % 7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates_are_rfc5322() {
        assert_eq!(rfc5322_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 +0000");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096); // 2024-02-29 12:34:56
        assert_eq!(rfc5322_date(t), "Thu, 29 Feb 2024 12:34:56 +0000");
    }

    #[test]
    fn header_names_client_tls_and_queue_id() {
        let h = received_header(&Trace {
            helo: "client.acme.example",
            ip: "::ffff:192.0.2.1".parse().unwrap(),
            tls: Some("TLSv1_3 TLS13_AES_128_GCM_SHA256"),
            authenticated: true,
            hostname: "relay.acme.example",
            queue_id: "0123456789ABCDEF",
            at: UNIX_EPOCH,
        });
        assert_eq!(
            h,
            "Received: from client.acme.example ([192.0.2.1])\r\n\t(using TLSv1_3 with cipher TLS13_AES_128_GCM_SHA256)\r\n\tby relay.acme.example with ESMTPSA id 0123456789ABCDEF;\r\n\tThu, 01 Jan 1970 00:00:00 +0000\r\n"
        );
    }
}
