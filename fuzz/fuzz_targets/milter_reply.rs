//! A content filter's replies on arbitrary bytes: framed, fed to the per-message reply
//! state machine for one event, the outcome applied to a header block and an envelope.
//! It never panics; a frame is never read past its length or [`MAX_FRAME`]; a verdict
//! that lets the message through never follows a refusal; a refusal carries a reply of
//! its class on one bounded line of printable ASCII; modifications stay within their
//! limits, a replacement body holds no bare CR or LF, and the edited header block, written
//! out, parses back to the same fields (a filter cannot inject a header or end the block).
#![no_main]

use std::time::SystemTime;

use libfuzzer_sys::fuzz_target;
use relay::envelope::{Envelope, QueueId};
use relay::filter::milter::protocol::{
    Actions, Limits, MAX_FRAME, MAX_REPLY_TEXT, MessageReplies, Negotiated, ProtocolFlags,
    Response, Stage, Step, Verdict, parse_optneg, parse_response, sanitize_reply_code, split_frame,
};
use relay::filter::milter::{apply, parse_header_block, write_header_block};

const STAGES: [Stage; 9] = [
    Stage::Connect,
    Stage::Helo,
    Stage::Mail,
    Stage::Rcpt,
    Stage::Data,
    Stage::Header,
    Stage::EndOfHeaders,
    Stage::Body,
    Stage::EndOfBody,
];

fn is_refusal(frame: &[u8]) -> bool {
    match parse_response(frame) {
        Ok(Response::Reject | Response::Tempfail | Response::Shutdown) => true,
        Ok(Response::ReplyCode(text)) => sanitize_reply_code(text).is_ok(),
        _ => false,
    }
}

fuzz_target!(|input: &[u8]| {
    // Two bytes pick what the filter negotiated, one the event it answers.
    let [a, b, s, rest @ ..] = input else {
        return;
    };
    let bits = u32::from(u16::from_be_bytes([*a, *b]));
    let negotiated = Negotiated {
        version: 6,
        actions: Actions(bits & Actions::OFFERED.0),
        protocol: if bits & 0x8000 != 0 {
            ProtocolFlags::HEADER_LEADING_SPACE
        } else {
            ProtocolFlags::default()
        },
        macros: Default::default(),
    };
    let stage = STAGES[usize::from(*s) % STAGES.len()];
    let limits = Limits {
        max_replacement_body: 4096,
        max_header_edits: 32,
        max_recipient_edits: 8,
        max_replies: 256,
        ..Limits::default()
    };

    let _ = parse_optneg(rest);
    if let Ok(reply) = sanitize_reply_code(rest) {
        assert!((400..600).contains(&reply.code));
    }

    let mut replies = MessageReplies::new(&negotiated, limits.clone());
    let mut buf = rest;
    let mut refused = false;
    let outcome = loop {
        let (frame, used) = match split_frame(buf, MAX_FRAME) {
            Ok(Some(f)) => f,
            Ok(None) | Err(_) => return,
        };
        assert!(used <= buf.len() && frame.len() + 4 == used && frame.len() <= MAX_FRAME);
        buf = &buf[used..];
        refused |= is_refusal(frame);
        match replies.on_reply(stage, frame) {
            Err(_) => return,
            Ok(Step::Wait | Step::Continue | Step::Skip) => {}
            Ok(Step::Decided(outcome)) => break outcome,
        }
    };

    match &outcome.verdict {
        Verdict::Accept | Verdict::Quarantine { .. } | Verdict::Discard => {
            assert!(!refused, "{:?} after a refusal", outcome.verdict);
        }
        Verdict::Reject(r) | Verdict::Tempfail(r) => {
            let permanent = matches!(outcome.verdict, Verdict::Reject(_));
            assert_eq!(r.code / 100, if permanent { 5 } else { 4 });
            assert_eq!(r.lines.len(), 1);
            let line = &r.lines[0];
            assert!(line.len() <= MAX_REPLY_TEXT + 12, "{line}");
            assert!(line.bytes().all(|b| (0x20..0x7f).contains(&b)), "{line:?}");
            assert!(outcome.modifications.is_empty());
        }
    }
    if let Verdict::Quarantine { reason } = &outcome.verdict {
        assert!(!reason.is_empty() && reason.bytes().all(|b| (0x20..0x7f).contains(&b)));
    }
    let mods = &outcome.modifications;
    assert!(mods.edits.len() <= limits.max_replies);
    if let Some(body) = &mods.replacement_body {
        assert!(body.len() <= limits.max_replacement_body + 2);
        for (i, &byte) in body.iter().enumerate() {
            match byte {
                b'\r' => assert_eq!(body.get(i + 1), Some(&b'\n'), "bare CR"),
                b'\n' => assert!(i > 0 && body[i - 1] == b'\r', "bare LF"),
                _ => {}
            }
        }
    }

    // Applied, the header block still parses to exactly its fields.
    let text =
        b"Received: from a by b\r\nSubject: hi\r\n\tthere\r\nTo: b@dest.example\r\n\r\nbody\r\n";
    let (mut headers, _) = parse_header_block(text, 64_000).unwrap();
    let mut envelope = Envelope::generated(
        QueueId(1),
        "a@acme.example",
        &["b@dest.example".to_string()],
        SystemTime::UNIX_EPOCH,
        0,
    );
    apply(mods, &mut headers, &mut envelope);
    let mut block = Vec::new();
    write_header_block(&headers, &mut block);
    let (again, at) = parse_header_block(&block, usize::MAX).unwrap();
    assert_eq!(
        again, headers,
        "the edited block does not parse back to itself"
    );
    assert_eq!(at, block.len());
    for rcpt in &envelope.rcpts {
        assert!(!rcpt.is_empty() && !rcpt.contains(['\r', '\n', '\0']));
    }
});
