//! The `Received:` trace header the relay prepends to each accepted message (RFC 5321
//! §4.4): client name and IP, TLS version and cipher, protocol, queue id, date.
//! Pure formatting; the date is passed in.
//!
//! The HELO/EHLO name is the client's word, so it is written verbatim only when it is a
//! domain name or an address literal ([`is_helo_name`]); anything else is written as
//! `unknown`, which keeps `(`, `)`, `;`, spaces and non-ASCII text out of the header so a
//! client cannot forge trace fields. The name as sent stays in the spool envelope.
//!
//! With [`Trace::hide_ip`] (the Organization's `hideClientAddress`) the client's address
//! is left out, and so is a HELO name that is an address literal: `Received: from
//! laptop.example\r\n\tby relay… with ESMTPSA id …; date`.

use std::net::IpAddr;
use std::time::SystemTime;

use crate::clock::rfc5322_date;
use crate::smtp::command::is_helo_name;

/// What the header records.
#[derive(Clone, Copy, Debug)]
pub struct Trace<'a> {
    /// The HELO/EHLO name as the client sent it.
    pub helo: &'a str,
    pub ip: IpAddr,
    /// `"TLSv1_3 TLS13_AES_256_GCM_SHA384"` when TLS was used.
    pub tls: Option<&'a str>,
    pub authenticated: bool,
    /// The transaction declared SMTPUTF8 (RFC 6531 §4.3 names the protocol `UTF8SMTP…`).
    pub smtputf8: bool,
    pub hostname: &'a str,
    pub queue_id: &'a str,
    pub at: SystemTime,
    /// Leave the client's address out.
    pub hide_ip: bool,
}

/// The header, folded, CRLF-terminated.
pub fn received_header(t: &Trace<'_>) -> String {
    let base = if t.smtputf8 { "UTF8SMTP" } else { "ESMTP" };
    let suffix = match (t.tls.is_some(), t.authenticated) {
        (true, true) => "SA",
        (true, false) => "S",
        (false, true) => "A",
        (false, false) => "",
    };
    let proto = format!("{base}{suffix}");
    let tls = match t.tls.and_then(|s| s.split_once(' ')) {
        Some((version, cipher)) => format!("\r\n\t(using {version} with cipher {cipher})"),
        None => String::new(),
    };
    let helo = if is_helo_name(t.helo) && !(t.hide_ip && t.helo.starts_with('[')) {
        t.helo
    } else {
        "unknown"
    };
    let address = if t.hide_ip {
        String::new()
    } else {
        format!(" ([{}])", t.ip.to_canonical())
    };
    format!(
        "Received: from {}{}{}\r\n\tby {} with {} id {};\r\n\t{}\r\n",
        helo,
        address,
        tls,
        t.hostname,
        proto,
        t.queue_id,
        rfc5322_date(t.at)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use std::time::UNIX_EPOCH;

    #[test]
    fn dates_are_rfc5322() {
        assert_eq!(rfc5322_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 +0000");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096); // 2024-02-29 12:34:56
        assert_eq!(rfc5322_date(t), "Thu, 29 Feb 2024 12:34:56 +0000");
    }

    #[test]
    fn dates_are_utc_with_two_digit_days() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_615_389);
        assert_eq!(rfc5322_date(t), "Wed, 25 Nov 2026 14:03:09 +0000");
        let t = UNIX_EPOCH + Duration::from_secs(1_775_000_000); // 2026-03-31 23:33:20
        assert_eq!(rfc5322_date(t), "Tue, 31 Mar 2026 23:33:20 +0000");
    }

    fn from_line(helo: &str) -> String {
        let h = received_header(&Trace {
            helo,
            ip: "192.0.2.1".parse().unwrap(),
            tls: None,
            authenticated: false,
            smtputf8: false,
            hostname: "relay.acme.example",
            queue_id: "00AB",
            at: UNIX_EPOCH,
            hide_ip: false,
        });
        assert!(h.is_ascii(), "{h:?}");
        assert_eq!(h.matches('(').count(), 1, "{h:?}");
        assert_eq!(h.matches(')').count(), 1, "{h:?}");
        assert_eq!(h.matches(';').count(), 1, "{h:?}");
        assert_eq!(h.matches("\r\n").count(), 3, "{h:?}");
        h.lines().next().unwrap_or_default().to_string()
    }

    #[test]
    fn a_helo_name_that_is_a_domain_or_literal_is_written_verbatim() {
        for helo in [
            "client.acme.example",
            "localhost",
            "desktop_7",
            "[192.0.2.1]",
            "[IPv6:2001:db8::1]",
        ] {
            assert_eq!(
                from_line(helo),
                format!("Received: from {helo} ([192.0.2.1])")
            );
        }
    }

    #[test]
    fn any_other_helo_name_is_written_as_unknown() {
        for helo in [
            "evil.example (forged by relay.acme.example with ESMTPS id 1; Thu, 01 Jan 1970)",
            "x;y",
            "a(b",
            "a)b",
            "two words",
            "m\u{fc}nchen.example",
            "x\r\nX-Injected: 1",
            "tab\there",
            "[10.0.0.1",
            "[IPv6:zz]",
            "-lead.example",
            "a..b",
            "",
        ] {
            assert_eq!(
                from_line(helo),
                "Received: from unknown ([192.0.2.1])",
                "{helo:?}"
            );
        }
    }

    #[test]
    fn header_names_client_tls_and_queue_id() {
        let h = received_header(&Trace {
            helo: "client.acme.example",
            ip: "::ffff:192.0.2.1".parse().unwrap(),
            tls: Some("TLSv1_3 TLS13_AES_128_GCM_SHA256"),
            authenticated: true,
            smtputf8: false,
            hostname: "relay.acme.example",
            queue_id: "0123456789ABCDEF",
            at: UNIX_EPOCH,
            hide_ip: false,
        });
        assert_eq!(
            h,
            "Received: from client.acme.example ([192.0.2.1])\r\n\t(using TLSv1_3 with cipher TLS13_AES_128_GCM_SHA256)\r\n\tby relay.acme.example with ESMTPSA id 0123456789ABCDEF;\r\n\tThu, 01 Jan 1970 00:00:00 +0000\r\n"
        );
    }

    #[test]
    fn a_hidden_client_leaves_no_address_and_the_relays_hop_stays() {
        let hidden = |helo: &str| {
            received_header(&Trace {
                helo,
                ip: "192.0.2.77".parse().unwrap(),
                tls: Some("TLSv1_3 TLS13_AES_128_GCM_SHA256"),
                authenticated: true,
                smtputf8: false,
                hostname: "relay.acme.example",
                queue_id: "0123456789ABCDEF",
                at: UNIX_EPOCH,
                hide_ip: true,
            })
        };
        assert_eq!(
            hidden("laptop.acme.example"),
            "Received: from laptop.acme.example\r\n\t(using TLSv1_3 with cipher TLS13_AES_128_GCM_SHA256)\r\n\tby relay.acme.example with ESMTPSA id 0123456789ABCDEF;\r\n\tThu, 01 Jan 1970 00:00:00 +0000\r\n"
        );
        // An address literal as HELO would give the address away too.
        for helo in ["[192.0.2.77]", "[IPv6:2001:db8::77]"] {
            let h = hidden(helo);
            assert!(h.starts_with("Received: from unknown\r\n"), "{h:?}");
            assert!(
                !h.contains("192.0.2.77") && !h.contains("2001:db8"),
                "{h:?}"
            );
        }
    }

    #[test]
    fn an_smtputf8_transaction_is_named_utf8smtp() {
        let proto = |tls: Option<&str>, authenticated: bool| {
            let h = received_header(&Trace {
                helo: "client.acme.example",
                ip: "192.0.2.1".parse().unwrap(),
                tls,
                authenticated,
                smtputf8: true,
                hostname: "relay.acme.example",
                queue_id: "00AB",
                at: UNIX_EPOCH,
                hide_ip: false,
            });
            h.split("by relay.acme.example with ")
                .nth(1)
                .unwrap_or("")
                .split(' ')
                .next()
                .unwrap_or("")
                .to_string()
        };
        let tls = Some("TLSv1_3 TLS13_AES_128_GCM_SHA256");
        assert_eq!(proto(None, false), "UTF8SMTP");
        assert_eq!(proto(None, true), "UTF8SMTPA");
        assert_eq!(proto(tls, false), "UTF8SMTPS");
        assert_eq!(proto(tls, true), "UTF8SMTPSA");
    }
}
