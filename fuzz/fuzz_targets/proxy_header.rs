//! The PROXY protocol header parser on arbitrary bytes (it is the first thing the relay
//! reads from a load balancer's connection): it never panics, never asks to read past
//! [`MAX_HEADER`], decides on the header's own bytes alone (what follows it, a TLS
//! handshake on port 465, changes nothing), and a client address it returns, written
//! back as a header of either version, parses again to the same address.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::ingress::proxy::{MAX_HEADER, Parsed, parse, v1_header, v2_header};

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Parsed::Incomplete { needed } => {
            assert!(needed >= 1 && data.len() + needed <= MAX_HEADER, "{needed}");
        }
        Parsed::Invalid(_) => {}
        done @ (Parsed::Header { consumed, .. } | Parsed::Local { consumed }) => {
            assert!(consumed <= data.len() && consumed <= MAX_HEADER);
            assert_eq!(parse(&data[..consumed]), done);
            if let Parsed::Header { source, .. } = done {
                let dest = if source.is_ipv4() {
                    "10.0.0.1:25".parse().unwrap()
                } else {
                    "[2001:db8::1]:25".parse().unwrap()
                };
                let v1 = v1_header(source, dest);
                assert_eq!(
                    parse(v1.as_bytes()),
                    Parsed::Header {
                        source,
                        consumed: v1.len()
                    }
                );
                let v2 = v2_header(source, dest, &[]);
                assert_eq!(
                    parse(&v2),
                    Parsed::Header {
                        source,
                        consumed: v2.len()
                    }
                );
            }
        }
    }
});
