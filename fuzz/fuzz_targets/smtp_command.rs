//! The SMTP command parser on arbitrary bytes: it returns a command or an error, never
//! panics; every accepted MAIL/RCPT path, written back as `<address>`, parses again to
//! the same path, with no control characters; a HELO/EHLO name cannot add trace fields
//! to the `Received:` header.
#![no_main]

use std::time::UNIX_EPOCH;

use libfuzzer_sys::fuzz_target;
use relay::ingress::received::{Trace, received_header};
use relay::smtp::{Command, parse_command};

fuzz_target!(|line: &[u8]| {
    match parse_command(line) {
        Ok(Command::Mail { from, .. }) => {
            assert!(!from.as_str().chars().any(char::is_control), "{from}");
            let again = parse_command(format!("MAIL FROM:{from} SMTPUTF8").as_bytes());
            assert!(
                matches!(&again, Ok(Command::Mail { from: f, .. }) if *f == from),
                "{from} parsed again as {again:?}"
            );
        }
        Ok(Command::Rcpt { to }) => {
            assert!(!to.as_str().chars().any(char::is_control), "{to}");
            let again = parse_command(format!("RCPT TO:{to}").as_bytes());
            assert_eq!(again, Ok(Command::Rcpt { to }));
        }
        Ok(Command::Helo(name) | Command::Ehlo(name)) => {
            let header = received_header(&Trace {
                helo: &name,
                ip: [192, 0, 2, 1].into(),
                tls: None,
                authenticated: false,
                smtputf8: false,
                hostname: "relay.example",
                queue_id: "00AB",
                at: UNIX_EPOCH,
                hide_ip: false,
            });
            assert!(header.is_ascii(), "{header:?}");
            assert_eq!(header.matches(['(', ')']).count(), 2, "{header:?}");
            assert_eq!(header.matches(';').count(), 1, "{header:?}");
            assert_eq!(header.matches("\r\n").count(), 3, "{header:?}");
            // Without the client's address: no comment at all, and no address literal.
            let hidden = received_header(&Trace {
                helo: &name,
                ip: [192, 0, 2, 1].into(),
                tls: None,
                authenticated: false,
                smtputf8: false,
                hostname: "relay.example",
                queue_id: "00AB",
                at: UNIX_EPOCH,
                hide_ip: true,
            });
            assert_eq!(hidden.matches(['(', ')', '[']).count(), 0, "{hidden:?}");
            assert_eq!(hidden.matches(';').count(), 1, "{hidden:?}");
            assert_eq!(hidden.matches("\r\n").count(), 3, "{hidden:?}");
        }
        _ => {}
    }
});
