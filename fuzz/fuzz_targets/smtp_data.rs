//! The streamed DATA reader on arbitrary bytes fed in arbitrary chunks: it never panics,
//! never reports more consumed than it was given, never streams more than the size limit,
//! its accepted text never holds a bare CR or LF, and chunking never changes the outcome
//! (the same text and verdict as one read of everything).
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
    let mut body = Vec::new();
    let mut done = None;
    let mut at = 0;
    for piece in rest.chunks(chunk) {
        match reader.feed(piece, &mut body) {
            DataProgress::NeedMore => at += piece.len(),
            DataProgress::Done { consumed } => {
                assert!(consumed <= piece.len());
                done = Some(at + consumed);
                break;
            }
        }
    }
    assert!(body.len() <= 4096, "streamed past the size limit");
    let mut whole = DataReader::new(4096);
    let mut whole_body = Vec::new();
    let whole_done = match whole.feed(rest, &mut whole_body) {
        DataProgress::Done { consumed } => Some(consumed),
        DataProgress::NeedMore => None,
    };
    assert_eq!(done, whole_done, "chunking moved the end of the data");
    let verdict = reader.finish();
    assert_eq!(verdict, whole.finish(), "chunking changed the verdict");
    if done.is_some() {
        if verdict.is_ok() {
            assert_eq!(body, whole_body, "chunking changed the text");
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
