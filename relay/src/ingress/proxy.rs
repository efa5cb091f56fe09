//! The PROXY protocol (HAProxy's, versions 1 and 2): how a load balancer in front of the
//! relay tells it the address of the client it is relaying for.
//!
//! A pure parser over bytes, with no I/O: [`parse`] looks at the start of a connection and
//! answers [`Parsed::Incomplete`] (read on, at most `needed` more bytes: never past the
//! end of a header, so what follows it, a TLS ClientHello on port 465, stays unread),
//! [`Parsed::Header`] (the client's address and the header's length), [`Parsed::Local`]
//! (a header that carries no client address: a health check, `UNKNOWN`, or a v2 `LOCAL`
//! command; the connection's own peer address counts) or [`Parsed::Invalid`].
//!
//! Bounded: a v1 header is at most [`V1_MAX`] bytes; a v2 header may announce up to
//! 65,535 bytes after its 16-byte prefix, but more than [`V2_MAX_TLV`] bytes of TLVs
//! after the address block are refused, so the reader never holds more than
//! [`MAX_HEADER`] bytes. The parser allocates nothing.
//!
//! Who may send a header, and what happens when one is missing, is the server's business
//! (`server`, driven by `RelayConfig::proxy_protocol`), not this module's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The 12 bytes every v2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header, CRLF included (the specification's figure).
pub const V1_MAX: usize = 107;
/// Shortest v1 header: `PROXY UNKNOWN\r\n`.
const V1_MIN: usize = 15;
/// Most bytes of TLVs accepted after a v2 address block.
pub const V2_MAX_TLV: usize = 1024;
/// Size of a v2 address block for AF_UNIX, the largest.
const V2_UNIX_BLOCK: usize = 216;
/// Longest header this parser accepts, of either version.
pub const MAX_HEADER: usize = 16 + V2_UNIX_BLOCK + V2_MAX_TLV;

/// What the bytes at the start of a connection are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Possibly the start of a header: read at least one and at most `needed` more bytes
    /// (all of them belong to the header if it is valid).
    Incomplete { needed: usize },
    /// A header naming the client: `source` is its address, `consumed` the header's
    /// length.
    Header { source: SocketAddr, consumed: usize },
    /// A valid header without a client address (v1 `UNKNOWN`, v2 `LOCAL`, v2 unspecified
    /// or UNIX family): the connection's peer is the client.
    Local { consumed: usize },
    /// Not a valid header.
    Invalid(&'static str),
}

/// Whether a connection whose first byte is `b` may be starting a header (`P` of v1,
/// `\r` of v2). SMTP clients wait for the greeting and TLS clients start with a
/// handshake record (0x16), so a direct client never sends either first.
pub fn may_start_header(b: u8) -> bool {
    b == b'P' || b == V2_SIGNATURE[0]
}

/// Whether `buf` plainly begins with a header of either version (a v1 prefix, or the
/// whole v2 signature).
pub fn looks_like_header(buf: &[u8]) -> bool {
    buf.starts_with(b"PROXY ") || buf.starts_with(&V2_SIGNATURE)
}

/// Parses the start of a connection. See [`Parsed`].
pub fn parse(buf: &[u8]) -> Parsed {
    match buf.first() {
        None => Parsed::Incomplete { needed: V1_MIN },
        Some(b'P') => parse_v1(buf),
        Some(_) => parse_v2(buf),
    }
}

fn parse_v1(buf: &[u8]) -> Parsed {
    const PREFIX: &[u8] = b"PROXY ";
    let head = &buf[..buf.len().min(PREFIX.len())];
    if !PREFIX.starts_with(head) {
        return Parsed::Invalid("not a PROXY header");
    }
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        if buf.len() >= V1_MAX {
            return Parsed::Invalid("v1 header longer than 107 bytes");
        }
        if window.contains(&b'\r') && !window.ends_with(b"\r") {
            return Parsed::Invalid("v1 header has a CR that does not end it");
        }
        return Parsed::Incomplete {
            needed: V1_MIN.saturating_sub(buf.len()).max(1),
        };
    };
    let consumed = lf + 1;
    let Some(line) = window[..lf].strip_suffix(b"\r") else {
        return Parsed::Invalid("v1 header does not end with CRLF");
    };
    if line.len() < PREFIX.len() {
        return Parsed::Invalid("v1 header too short");
    }
    let Ok(rest) = std::str::from_utf8(&line[PREFIX.len()..]) else {
        return Parsed::Invalid("v1 header is not ASCII");
    };
    // UNKNOWN: the receiver must ignore everything after it.
    if rest == "UNKNOWN" || rest.starts_with("UNKNOWN ") {
        return Parsed::Local { consumed };
    }
    let mut fields = rest.split(' ');
    let (Some(proto), Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Parsed::Invalid("v1 header does not have five fields");
    };
    // The destination is checked for form only: the relay knows its own address.
    let src: IpAddr = match proto {
        "TCP4" => match (src.parse::<Ipv4Addr>(), dst.parse::<Ipv4Addr>()) {
            (Ok(s), Ok(_)) => s.into(),
            _ => return Parsed::Invalid("v1 TCP4 header with an address that is not IPv4"),
        },
        "TCP6" => match (src.parse::<Ipv6Addr>(), dst.parse::<Ipv6Addr>()) {
            (Ok(s), Ok(_)) => s.into(),
            _ => return Parsed::Invalid("v1 TCP6 header with an address that is not IPv6"),
        },
        _ => return Parsed::Invalid("v1 header protocol is not TCP4, TCP6 or UNKNOWN"),
    };
    let (Some(sport), Some(_)) = (port(sport), port(dport)) else {
        return Parsed::Invalid("v1 header port is not a number from 0 to 65535");
    };
    Parsed::Header {
        source: SocketAddr::new(src, sport),
        consumed,
    }
}

/// A decimal port without sign or leading zeros.
fn port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if s.len() > 1 && s.starts_with('0') {
        return None;
    }
    s.parse().ok()
}

fn parse_v2(buf: &[u8]) -> Parsed {
    let head = &buf[..buf.len().min(V2_SIGNATURE.len())];
    if !V2_SIGNATURE.starts_with(head) {
        return Parsed::Invalid("not a PROXY header");
    }
    if buf.len() < 16 {
        return Parsed::Incomplete {
            needed: 16 - buf.len(),
        };
    }
    let (version, command) = (buf[12] >> 4, buf[12] & 0x0f);
    if version != 2 {
        return Parsed::Invalid("v2 header with a version other than 2");
    }
    let (family, transport) = (buf[13] >> 4, buf[13] & 0x0f);
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let block = match family {
        0 => 0,
        1 => 12,
        2 => 36,
        3 => V2_UNIX_BLOCK,
        _ => return Parsed::Invalid("v2 header with an unknown address family"),
    };
    if transport > 2 {
        return Parsed::Invalid("v2 header with an unknown transport protocol");
    }
    if command > 1 {
        return Parsed::Invalid("v2 header with a command other than LOCAL or PROXY");
    }
    // A LOCAL header's address block is ignored, so only PROXY needs a full one.
    if command == 1 && len < block {
        return Parsed::Invalid("v2 header shorter than its address block");
    }
    if len.saturating_sub(block) > V2_MAX_TLV {
        return Parsed::Invalid("v2 header carries more than 1 KiB of TLVs");
    }
    let consumed = 16 + len;
    if buf.len() < consumed {
        return Parsed::Incomplete {
            needed: consumed - buf.len(),
        };
    }
    let body = &buf[16..consumed];
    if command == 0 {
        return Parsed::Local { consumed };
    }
    let source = match family {
        1 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            SocketAddr::new(ip.into(), u16::from_be_bytes([body[8], body[9]]))
        }
        2 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            let ip = Ipv6Addr::from(octets);
            SocketAddr::new(ip.into(), u16::from_be_bytes([body[32], body[33]]))
        }
        // Unspecified or UNIX: no client address to take.
        _ => return Parsed::Local { consumed },
    };
    Parsed::Header { source, consumed }
}

/// A v1 header for a TCP connection from `source` to `dest` (both of one family).
pub fn v1_header(source: SocketAddr, dest: SocketAddr) -> String {
    let proto = if source.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {proto} {} {} {} {}\r\n",
        source.ip(),
        dest.ip(),
        source.port(),
        dest.port()
    )
}

/// A v2 `PROXY` header for a TCP connection from `source` to `dest` (both of one
/// family), followed by `tlv` (raw TLV bytes).
pub fn v2_header(source: SocketAddr, dest: SocketAddr, tlv: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x21);
    let mut block = Vec::with_capacity(36);
    match (source, dest) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x11);
            block.extend(s.ip().octets());
            block.extend(d.ip().octets());
        }
        _ => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(ip) => ip.to_ipv6_mapped().octets(),
                IpAddr::V6(ip) => ip.octets(),
            };
            out.push(0x21);
            block.extend(v6(source));
            block.extend(v6(dest));
        }
    }
    block.extend(source.port().to_be_bytes());
    block.extend(dest.port().to_be_bytes());
    block.extend_from_slice(tlv);
    let len = u16::try_from(block.len()).unwrap_or(u16::MAX);
    out.extend(len.to_be_bytes());
    out.extend(block);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_tcp4_names_the_client() {
        let h = b"PROXY TCP4 192.0.2.10 10.0.0.5 56324 25\r\nEHLO";
        assert_eq!(
            parse(h),
            Parsed::Header {
                source: addr("192.0.2.10:56324"),
                consumed: h.len() - 4
            }
        );
    }

    #[test]
    fn v1_tcp6_and_unknown() {
        let h = b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 587\r\n";
        assert_eq!(
            parse(h),
            Parsed::Header {
                source: addr("[2001:db8::7]:4000"),
                consumed: h.len()
            }
        );
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Parsed::Local { consumed: 15 });
        assert_eq!(
            parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"),
            Parsed::Local { consumed: 35 }
        );
    }

    #[test]
    fn v1_refuses_what_the_specification_does_not_allow() {
        for bad in [
            &b"PROXY TCP4 192.0.2.10 10.0.0.5 56324\r\n"[..],
            b"PROXY TCP4 192.0.2.10 10.0.0.5 56324 25 9\r\n",
            b"PROXY TCP4 2001:db8::1 10.0.0.5 1 25\r\n",
            b"PROXY TCP6 192.0.2.10 2001:db8::1 1 25\r\n",
            b"PROXY TCP4 192.0.2.10 10.0.0.5 65536 25\r\n",
            b"PROXY TCP4 192.0.2.10 10.0.0.5 080 25\r\n",
            b"PROXY TCP4  192.0.2.10 10.0.0.5 80 25\r\n",
            b"PROXY UDP4 192.0.2.10 10.0.0.5 80 25\r\n",
            b"PROXY TCP4 192.0.2.10 10.0.0.5 80 25\n",
            b"PROXY TCP4 192.0.2.010 10.0.0.5 80 25\r\n",
            b"PROXX TCP4",
            b"EHLO client.example\r\n",
        ] {
            assert!(
                matches!(parse(bad), Parsed::Invalid(_)),
                "{:?}: {:?}",
                String::from_utf8_lossy(bad),
                parse(bad)
            );
        }
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 100]].concat();
        assert_eq!(
            parse(&long),
            Parsed::Invalid("v1 header longer than 107 bytes")
        );
    }

    #[test]
    fn v2_local_and_unspecified_use_the_peer() {
        let mut local = V2_SIGNATURE.to_vec();
        local.extend([0x20, 0x00, 0x00, 0x00]);
        assert_eq!(parse(&local), Parsed::Local { consumed: 16 });
        let mut unspec = V2_SIGNATURE.to_vec();
        unspec.extend([0x21, 0x00, 0x00, 0x03, 1, 2, 3]);
        assert_eq!(parse(&unspec), Parsed::Local { consumed: 19 });
    }

    #[test]
    fn v2_refuses_bad_versions_short_blocks_and_large_tlvs() {
        let with = |b12: u8, b13: u8, len: u16| {
            let mut h = V2_SIGNATURE.to_vec();
            h.push(b12);
            h.push(b13);
            h.extend(len.to_be_bytes());
            h
        };
        assert!(matches!(parse(&with(0x11, 0x11, 12)), Parsed::Invalid(_)));
        assert!(matches!(parse(&with(0x22, 0x11, 12)), Parsed::Invalid(_)));
        assert!(matches!(parse(&with(0x21, 0x11, 11)), Parsed::Invalid(_)));
        assert!(matches!(parse(&with(0x21, 0x41, 12)), Parsed::Invalid(_)));
        assert!(matches!(
            parse(&with(0x21, 0x11, 12 + 1025)),
            Parsed::Invalid("v2 header carries more than 1 KiB of TLVs")
        ));
        // The largest accepted header is announced, and read no further.
        assert_eq!(
            parse(&with(0x21, 0x31, 216 + 1024)),
            Parsed::Incomplete { needed: 216 + 1024 }
        );
    }

    #[test]
    fn v2_with_tlvs_still_names_the_client() {
        let tlv = [0x04, 0x00, 0x03, b'a', b'b', b'c'];
        let h = v2_header(addr("192.0.2.10:1234"), addr("10.0.0.1:25"), &tlv);
        assert_eq!(
            parse(&h),
            Parsed::Header {
                source: addr("192.0.2.10:1234"),
                consumed: h.len()
            }
        );
    }

    fn socket() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(Ipv4Addr::from(ip).into(), port)),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(Ipv6Addr::from(ip).into(), port)),
        ]
    }

    /// A header of either version for `source`, towards an address of its family.
    fn header(source: SocketAddr, v2: bool) -> Vec<u8> {
        let dest = if source.is_ipv4() {
            addr("10.0.0.1:25")
        } else {
            addr("[2001:db8::1]:25")
        };
        if v2 {
            v2_header(source, dest, &[])
        } else {
            v1_header(source, dest).into_bytes()
        }
    }

    proptest! {
        #[test]
        fn a_header_parses_back_to_its_client(source in socket(), v2 in any::<bool>(), tail in proptest::collection::vec(any::<u8>(), 0..64)) {
            let h = header(source, v2);
            let mut bytes = h.clone();
            bytes.extend(&tail);
            prop_assert_eq!(parse(&bytes), Parsed::Header { source, consumed: h.len() });
            let max = if v2 { MAX_HEADER } else { V1_MAX };
            prop_assert!(h.len() <= max);
        }

        #[test]
        fn every_prefix_of_a_header_is_incomplete_and_never_asks_past_its_end(source in socket(), v2 in any::<bool>()) {
            let h = header(source, v2);
            for n in 0..h.len() {
                match parse(&h[..n]) {
                    Parsed::Incomplete { needed } => {
                        prop_assert!(needed >= 1 && n + needed <= h.len(), "prefix {}: needed {}", n, needed);
                    }
                    other => prop_assert!(false, "prefix {} of {:?}: {:?}", n, h, other),
                }
            }
        }

        #[test]
        fn garbage_is_refused_or_incomplete_and_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            match parse(&bytes) {
                Parsed::Header { consumed, .. } | Parsed::Local { consumed } => {
                    prop_assert!(consumed <= bytes.len() && consumed <= MAX_HEADER);
                }
                Parsed::Incomplete { needed } => {
                    prop_assert!(needed >= 1 && bytes.len() + needed <= MAX_HEADER);
                }
                Parsed::Invalid(_) => {}
            }
        }

        #[test]
        fn smtp_commands_and_tls_hellos_are_not_headers(line in "[A-Z]{4} [ -~]{0,40}\r\n", tls in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assume!(!line.starts_with("PROX"));
            prop_assert!(matches!(parse(line.as_bytes()), Parsed::Invalid(_)));
            let mut hello = vec![0x16, 0x03, 0x01];
            hello.extend(tls);
            prop_assert!(matches!(parse(&hello), Parsed::Invalid(_)));
        }
    }
}
