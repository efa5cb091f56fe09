//! The message as a filter sees it and as it is delivered, as pure functions: the header
//! block split into fields the way the filter is shown them, and [`apply`], which turns a
//! filter's [`Modifications`] into the delivered header block and envelope.
//!
//! The header block ends at the first empty line, or at the first line that is neither a
//! header field nor a continuation (as Postfix's MIME parser does): that line is the
//! first line of the body. The client streams the block line by line with
//! [`classify_line`] and never holds more than one field; [`parse_header_block`] does the
//! same over a buffer, for whoever applies the edits, so header indices mean the same
//! fields on both sides.
//!
//! Not here: the body (streamed by `client`, replaced whole by the caller when the
//! filter sent one), the spool format, DKIM signing (which runs after this, so signatures
//! cover the filter's edits).

use crate::envelope::Envelope;

use super::protocol::{Edit, Modifications};

/// One header field of the message. `value` is every byte after the colon up to the
/// field's final line end (folded lines joined by their CRLF), so `name`, `:`, `value`,
/// CRLF is the field as it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderField {
    pub name: String,
    pub value: Vec<u8>,
}

impl HeaderField {
    /// Builds a field from its raw lines (`Name: value` and continuations, line ends
    /// included or not); `None` when the first line is not a header field.
    pub fn from_raw(raw: &[u8]) -> Option<HeaderField> {
        let name_len = field_name_len(raw)?;
        let colon = raw.iter().position(|&b| b == b':')?;
        let value = raw.get(colon + 1..).unwrap_or(&[]);
        let value = value
            .strip_suffix(b"\r\n")
            .or_else(|| value.strip_suffix(b"\n"))
            .unwrap_or(value);
        Some(HeaderField {
            name: String::from_utf8_lossy(raw.get(..name_len).unwrap_or(&[])).into_owned(),
            value: value.to_vec(),
        })
    }

    /// The value as `SMFIC_HEADER` carries it: folded lines separated by a bare LF (as
    /// Sendmail and Postfix send them) and, unless the filter asked for
    /// `SMFIP_HDR_LEADSPC`, without the one space after the colon.
    pub fn milter_value(&self, leading_space: bool) -> Vec<u8> {
        let value = if leading_space {
            &self.value[..]
        } else {
            self.value.strip_prefix(b" ").unwrap_or(&self.value)
        };
        let mut out = Vec::with_capacity(value.len());
        let mut it = value.iter().copied().peekable();
        while let Some(b) = it.next() {
            if b == b'\r' && it.peek() == Some(&b'\n') {
                continue;
            }
            out.push(b);
        }
        out
    }

    /// Appends `Name:value` CRLF.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.name.as_bytes());
        out.push(b':');
        out.extend_from_slice(&self.value);
        out.extend_from_slice(b"\r\n");
    }

    fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }
}

/// What one line of the header block is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Line {
    /// `Name: ...`: starts a field.
    Field,
    /// Starts with white space right after a field: continues it.
    Continuation,
    /// The empty line that ends the header block (not part of the body).
    Blank,
    /// Anything else: the header block ends and this line is the first of the body.
    Body,
}

/// Classifies `line` (its line end included or not); `in_field` = a field is open.
pub fn classify_line(line: &[u8], in_field: bool) -> Line {
    match line {
        b"\r\n" | b"\n" | b"" => Line::Blank,
        [b' ' | b'\t', ..] if in_field => Line::Continuation,
        _ if field_name_len(line).is_some() => Line::Field,
        _ => Line::Body,
    }
}

/// The length of the field name when `line` starts `name:` (RFC 5322 `ftext`, white
/// space before the colon tolerated as the obsolete syntax allows).
fn field_name_len(line: &[u8]) -> Option<usize> {
    let colon = line.iter().position(|&b| b == b':' || b == b'\n')?;
    if line.get(colon) != Some(&b':') {
        return None;
    }
    let head = line.get(..colon)?;
    let name_len = head
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(0, |i| i + 1);
    let name = head.get(..name_len)?;
    let ok = !name.is_empty() && name.iter().all(|&b| (0x21..=0x7e).contains(&b));
    ok.then_some(name_len)
}

/// A header field longer than the limit: the filter cannot be shown it whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a header field is longer than {limit} bytes")]
pub struct HeaderTooLong {
    pub limit: usize,
}

/// Splits a message's text into its header fields and the offset where its body starts
/// (after the empty line, or at the first line that is not a header; `text.len()` when
/// there is no body). Fields longer than `max_field` are refused, as the client refuses
/// to stream them.
pub fn parse_header_block(
    text: &[u8],
    max_field: usize,
) -> Result<(Vec<HeaderField>, usize), HeaderTooLong> {
    let mut fields = Vec::new();
    let mut open: Option<(usize, usize)> = None; // start, end of the open field
    let mut pos = 0;
    let close = |open: &mut Option<(usize, usize)>, fields: &mut Vec<HeaderField>| {
        if let Some((start, end)) = open.take()
            && let Some(field) = text.get(start..end).and_then(HeaderField::from_raw)
        {
            fields.push(field);
        }
    };
    while pos < text.len() {
        let rest = text.get(pos..).unwrap_or(&[]);
        let len = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |i| i + 1);
        let line = rest.get(..len).unwrap_or(&[]);
        match classify_line(line, open.is_some()) {
            Line::Continuation => {
                if let Some((_, end)) = open.as_mut() {
                    *end = pos + len;
                }
            }
            Line::Field => {
                close(&mut open, &mut fields);
                open = Some((pos, pos + len));
            }
            Line::Blank => {
                close(&mut open, &mut fields);
                return Ok((fields, pos + len));
            }
            Line::Body => {
                close(&mut open, &mut fields);
                return Ok((fields, pos));
            }
        }
        if let Some((start, end)) = open
            && end - start > max_field
        {
            return Err(HeaderTooLong { limit: max_field });
        }
        pos += len;
    }
    close(&mut open, &mut fields);
    Ok((fields, text.len()))
}

/// Appends the header block: every field, then the empty line that separates it from
/// the body.
pub fn write_header_block(fields: &[HeaderField], out: &mut Vec<u8>) {
    for field in fields {
        field.write(out);
    }
    out.extend_from_slice(b"\r\n");
}

/// Applies a filter's edits, in the order it sent them, to the header block it was shown
/// and to the envelope. Header indices follow libmilter: `InsertHeader` counts every
/// field from 0 (past the end appends), `ChangeHeader`/`DeleteHeader` count the fields of
/// that name from 1 (a change past the last appends, a deletion past the last does
/// nothing). Names compare case-insensitively, as do recipient addresses (an added
/// recipient already present is not added twice; a deleted one is removed wherever it
/// appears). ESMTP arguments of `AddRecipient`/`ChangeSender` are not carried: the
/// envelope keeps none per recipient. The replacement body, when there is one, is the
/// caller's to write. After this, an envelope without recipients means the message goes
/// nowhere (the caller treats it as discarded).
pub fn apply(mods: &Modifications, headers: &mut Vec<HeaderField>, envelope: &mut Envelope) {
    for edit in &mods.edits {
        match edit {
            Edit::AddHeader { name, value } => headers.push(HeaderField {
                name: name.clone(),
                value: value.clone(),
            }),
            Edit::InsertHeader { index, name, value } => {
                let at = usize::try_from(*index)
                    .unwrap_or(usize::MAX)
                    .min(headers.len());
                headers.insert(
                    at,
                    HeaderField {
                        name: name.clone(),
                        value: value.clone(),
                    },
                );
            }
            Edit::ChangeHeader { index, name, value } => match nth_named(headers, name, *index) {
                Some(i) => {
                    if let Some(field) = headers.get_mut(i) {
                        field.value = value.clone();
                    }
                }
                None => headers.push(HeaderField {
                    name: name.clone(),
                    value: value.clone(),
                }),
            },
            Edit::DeleteHeader { index, name } => {
                if let Some(i) = nth_named(headers, name, *index) {
                    headers.remove(i);
                }
            }
            Edit::AddRecipient { address, .. } => {
                if !envelope
                    .rcpts
                    .iter()
                    .any(|r| r.eq_ignore_ascii_case(address))
                {
                    envelope.rcpts.push(address.clone());
                }
            }
            Edit::DeleteRecipient { address } => {
                envelope.rcpts.retain(|r| !r.eq_ignore_ascii_case(address));
            }
            Edit::ChangeSender { address, .. } => envelope.mail_from = address.clone(),
        }
    }
}

/// Position of the `index`-th (1-based) field called `name`.
fn nth_named(headers: &[HeaderField], name: &str, index: u32) -> Option<usize> {
    let nth = usize::try_from(index.max(1) - 1).ok()?;
    headers
        .iter()
        .enumerate()
        .filter(|(_, f)| f.is(name))
        .nth(nth)
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::QueueId;
    use proptest::prelude::*;
    use std::time::SystemTime;

    fn field(name: &str, value: &str) -> HeaderField {
        HeaderField {
            name: name.into(),
            value: value.as_bytes().to_vec(),
        }
    }

    #[test]
    fn the_header_block_ends_at_the_empty_line_or_the_first_line_that_is_not_a_field() {
        let text = b"Received: from a\r\n\tby b\r\nSubject : hi\r\nX-Empty:\r\n\r\nbody\r\n";
        let (fields, body) = parse_header_block(text, 1000).unwrap();
        assert_eq!(
            fields,
            [
                field("Received", " from a\r\n\tby b"),
                field("Subject", " hi"),
                field("X-Empty", "")
            ]
        );
        assert_eq!(&text[body..], b"body\r\n");
        assert_eq!(fields[0].milter_value(false), b"from a\n\tby b");
        assert_eq!(fields[0].milter_value(true), b" from a\n\tby b");

        // A line that is not a field starts the body; so does white space first.
        let text = b"A: 1\r\nnot a header\r\nB: 2\r\n";
        let (fields, body) = parse_header_block(text, 1000).unwrap();
        assert_eq!(fields, [field("A", " 1")]);
        assert_eq!(&text[body..], b"not a header\r\nB: 2\r\n");
        let (fields, body) = parse_header_block(b" folded\r\nA: 1\r\n", 1000).unwrap();
        assert!(fields.is_empty());
        assert_eq!(body, 0);
        // No body at all.
        let (fields, body) = parse_header_block(b"A: 1\r\n\tmore", 1000).unwrap();
        assert_eq!(fields, [field("A", " 1\r\n\tmore")]);
        assert_eq!(body, 11);
        assert_eq!(
            parse_header_block(b"A: 1\r\n\t2222222\r\n\r\n", 10),
            Err(HeaderTooLong { limit: 10 })
        );
    }

    fn envelope(rcpts: &[&str]) -> Envelope {
        Envelope::generated(
            QueueId(1),
            "a@acme.example",
            &rcpts.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
            SystemTime::UNIX_EPOCH,
            0,
        )
    }

    #[test]
    fn edits_apply_in_order_with_libmilter_indices() {
        let mut headers = vec![
            field("Received", " one"),
            field("Subject", " hi"),
            field("Received", " two"),
            field("X-Spam", " maybe"),
        ];
        let mut env = envelope(&["b@dest.example", "c@dest.example"]);
        let mods = Modifications {
            edits: vec![
                Edit::InsertHeader {
                    index: 0,
                    name: "DKIM-Signature".into(),
                    value: b" v=1".to_vec(),
                },
                Edit::InsertHeader {
                    index: 99,
                    name: "X-Last".into(),
                    value: b" l".to_vec(),
                },
                Edit::ChangeHeader {
                    index: 1,
                    name: "subject".into(),
                    value: b" [SPAM] hi".to_vec(),
                },
                Edit::DeleteHeader {
                    index: 2,
                    name: "RECEIVED".into(),
                },
                Edit::DeleteHeader {
                    index: 3,
                    name: "Received".into(),
                },
                Edit::ChangeHeader {
                    index: 2,
                    name: "X-Spam".into(),
                    value: b" yes".to_vec(),
                },
                Edit::AddHeader {
                    name: "X-Virus-Scanned".into(),
                    value: b" ClamAV".to_vec(),
                },
                Edit::AddRecipient {
                    address: "archive@acme.example".into(),
                    args: Some("NOTIFY=NEVER".into()),
                },
                Edit::AddRecipient {
                    address: "B@DEST.example".into(),
                    args: None,
                },
                Edit::DeleteRecipient {
                    address: "c@dest.example".into(),
                },
                Edit::ChangeSender {
                    address: "bounces@acme.example".into(),
                    args: None,
                },
            ],
            replacement_body: None,
        };
        apply(&mods, &mut headers, &mut env);
        assert_eq!(
            headers,
            [
                field("DKIM-Signature", " v=1"),
                field("Received", " one"),
                field("Subject", " [SPAM] hi"),
                field("X-Spam", " maybe"),
                field("X-Last", " l"),
                field("X-Spam", " yes"),
                field("X-Virus-Scanned", " ClamAV"),
            ]
        );
        assert_eq!(env.rcpts, ["b@dest.example", "archive@acme.example"]);
        assert_eq!(env.mail_from, "bounces@acme.example");
        let mut out = Vec::new();
        write_header_block(&headers[..2], &mut out);
        assert_eq!(out, b"DKIM-Signature: v=1\r\nReceived: one\r\n\r\n");

        // Deleting every recipient leaves an envelope that goes nowhere.
        let mut env = envelope(&["b@dest.example"]);
        let mods = Modifications {
            edits: vec![Edit::DeleteRecipient {
                address: "b@dest.example".into(),
            }],
            replacement_body: None,
        };
        apply(&mods, &mut Vec::new(), &mut env);
        assert!(env.rcpts.is_empty());
    }

    /// A header block of well-formed fields, some folded.
    fn header_block() -> impl Strategy<Value = Vec<u8>> {
        let name = "[A-Za-z][A-Za-z0-9-]{0,15}";
        let line = "[ -~]{0,30}";
        let fields =
            proptest::collection::vec((name, line, proptest::collection::vec(line, 0..3)), 0..8);
        fields.prop_map(|fields| {
            let mut out = Vec::new();
            for (name, first, more) in fields {
                out.extend_from_slice(format!("{name}:{first}\r\n").as_bytes());
                for m in more {
                    out.extend_from_slice(format!("\t{m}\r\n").as_bytes());
                }
            }
            out
        })
    }

    proptest! {
        #[test]
        fn a_header_block_writes_back_to_its_own_bytes(block in header_block(), body in "[ -~\r\n]{0,40}") {
            let mut text = block.clone();
            text.extend_from_slice(b"\r\n");
            text.extend_from_slice(body.as_bytes());
            let (fields, at) = parse_header_block(&text, 10_000).unwrap();
            prop_assert_eq!(at, block.len() + 2);
            let mut out = Vec::new();
            write_header_block(&fields, &mut out);
            prop_assert_eq!(out, &text[..at]);
        }

        #[test]
        fn arbitrary_text_never_panics_the_header_parser(text in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok((fields, at)) = parse_header_block(&text, 100) {
                prop_assert!(at <= text.len());
                for f in fields {
                    prop_assert!(!f.name.is_empty() && f.value.len() <= 100);
                }
            }
        }
    }
}
