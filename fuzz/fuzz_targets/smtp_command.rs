//! The SMTP command parser on arbitrary bytes: it returns a command or an error, never
//! panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::smtp::parse_command;

fuzz_target!(|line: &[u8]| {
    let _ = parse_command(line);
});
