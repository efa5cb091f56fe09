//! The DATA reader on arbitrary bytes fed in arbitrary chunks: it never panics, never
//! reports more consumed than it was given, and its result never holds a bare CR or LF.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::smtp::{DataProgress, DataReader};

fuzz_target!(|input: &[u8]| {
    // The first byte picks the chunk size.
    let Some((&chunk, rest)) = input.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut reader = DataReader::new(4096);
    let mut done = false;
    for piece in rest.chunks(chunk) {
        match reader.feed(piece) {
            DataProgress::NeedMore => {}
            DataProgress::Done { consumed } => {
                assert!(consumed <= piece.len());
                done = true;
                break;
            }
        }
    }
    if done {
        if let Ok(body) = reader.finish() {
            for (i, b) in body.iter().enumerate() {
                match b {
                    b'\n' => assert!(i > 0 && body[i - 1] == b'\r', "bare LF accepted"),
                    b'\r' => assert!(body.get(i + 1) == Some(&b'\n'), "bare CR accepted"),
                    _ => {}
                }
            }
        }
    }
});
