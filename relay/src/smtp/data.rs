//! Reads the message text after `DATA`: finds the end marker `CRLF.CRLF`, removes dot
//! stuffing, and enforces the text-line and size limits.
//!
//! Bare LF and bare CR are errors (`550 5.6.11`): only `CRLF.CRLF` ends the data, so a
//! `LF.LF` or `LF.CRLF` sequence cannot smuggle a second message past a downstream
//! server that reads line ends differently. An error does not stop the reader: it keeps
//! consuming until the real end marker so the session stays in step with the client.
//! Pure and streaming: bytes in, unstuffed text appended to the caller's buffer, progress
//! out. The reader keeps no message text itself (only a byte count for the size limit),
//! so memory does not grow with the message; the session decides what to do with the
//! result.

/// Longest text line in DATA, including the trailing CRLF (RFC 5321 §4.5.3.1.6).
pub const MAX_TEXT_LINE: usize = 1000;

/// Why the received text cannot be accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataError {
    /// A CR not followed by LF, or an LF not preceded by CR.
    BareLineEnding,
    /// A text line longer than 1000 octets including CRLF.
    LineTooLong,
    /// The message exceeds the size limit.
    TooBig,
}

/// Result of feeding bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum DataProgress {
    /// All input consumed; the end marker has not been seen.
    NeedMore,
    /// The end marker was seen after `consumed` bytes of the input; the rest belongs to
    /// the next command (pipelining).
    Done { consumed: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At the start of a line.
    LineStart,
    /// The line so far is `.`.
    Dot,
    /// The line so far is `.` CR.
    DotCr,
    /// Inside a line.
    Text,
    /// Inside a line, just after a CR.
    Cr,
}

/// Incremental DATA reader.
#[derive(Debug)]
pub struct DataReader {
    state: State,
    /// Unstuffed bytes of the message so far.
    size: u64,
    line_len: usize,
    max_bytes: u64,
    error: Option<DataError>,
}

impl DataReader {
    /// A reader that refuses messages larger than `max_bytes`.
    pub fn new(max_bytes: u64) -> Self {
        Self {
            state: State::LineStart,
            size: 0,
            line_len: 0,
            max_bytes,
            error: None,
        }
    }

    /// Feeds bytes, appending the unstuffed text to `out` (nothing more once an error was
    /// seen); stops right after the end marker.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> DataProgress {
        let mut i = 0;
        while i < input.len() {
            // The bytes of a line up to its next CR or LF go in one piece, with the same
            // checks and errors as one at a time (most of a message is such runs).
            let ordinary = match self.state {
                State::Text => true,
                State::LineStart => input[i] != b'.',
                _ => false,
            };
            if ordinary {
                let end = input[i..]
                    .iter()
                    .position(|&b| b == b'\r' || b == b'\n')
                    .map_or(input.len(), |p| i + p);
                if end > i {
                    self.text_run(&input[i..end], out);
                    i = end;
                    continue;
                }
            }
            if self.step(input[i], out) {
                return DataProgress::Done { consumed: i + 1 };
            }
            i += 1;
        }
        DataProgress::NeedMore
    }

    /// [`DataReader::text`] for each byte of `run`, none of them CR or LF.
    fn text_run(&mut self, run: &[u8], out: &mut Vec<u8>) {
        let room = (MAX_TEXT_LINE - 2).saturating_sub(self.line_len);
        if run.len() <= room {
            self.line_len += run.len();
            self.push(run, out);
        } else {
            // The byte that makes the line too long fails it, and nothing after it is kept.
            self.push(&run[..room], out);
            self.line_len += run.len();
            self.fail(DataError::LineTooLong);
        }
        self.state = State::Text;
    }

    /// After `Done`: the size of the unstuffed message, or the first error seen (what was
    /// appended to the caller's buffer must then be thrown away).
    pub fn finish(self) -> Result<u64, DataError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.size),
        }
    }

    fn fail(&mut self, e: DataError) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if self.error.is_some() {
            return;
        }
        let size = self.size.saturating_add(bytes.len() as u64);
        if size > self.max_bytes {
            self.fail(DataError::TooBig);
            return;
        }
        self.size = size;
        out.extend_from_slice(bytes);
    }

    /// Returns true at the end marker.
    fn step(&mut self, b: u8, out: &mut Vec<u8>) -> bool {
        match self.state {
            State::LineStart => match b {
                b'.' => self.state = State::Dot,
                _ => self.text(b, out),
            },
            State::Dot => match b {
                b'\r' => self.state = State::DotCr,
                // Dot stuffing: the leading dot is dropped.
                _ => self.text(b, out),
            },
            State::DotCr => {
                if b == b'\n' {
                    return true;
                }
                self.fail(DataError::BareLineEnding);
                self.push(b"\r", out);
                self.line_len += 1;
                self.text(b, out);
            }
            State::Text => self.text(b, out),
            State::Cr => {
                if b == b'\n' {
                    self.push(b"\r\n", out);
                    self.line_len = 0;
                    self.state = State::LineStart;
                } else {
                    self.fail(DataError::BareLineEnding);
                    self.push(b"\r", out);
                    self.text(b, out);
                }
            }
        }
        false
    }

    /// A byte inside a line.
    fn text(&mut self, b: u8, out: &mut Vec<u8>) {
        match b {
            b'\r' => self.state = State::Cr,
            b'\n' => {
                // Not a line end: only CRLF starts a new line, so `LF.CRLF` cannot end
                // the data.
                self.fail(DataError::BareLineEnding);
                self.state = State::Text;
            }
            _ => {
                self.line_len += 1;
                if self.line_len > MAX_TEXT_LINE - 2 {
                    self.fail(DataError::LineTooLong);
                }
                self.push(&[b], out);
                self.state = State::Text;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read_all(input: &[u8], max: u64) -> (Result<Vec<u8>, DataError>, Option<usize>) {
        let mut r = DataReader::new(max);
        let mut out = Vec::new();
        let progress = r.feed(input, &mut out);
        let result = r.finish().map(|size| {
            assert_eq!(size, out.len() as u64);
            out
        });
        match progress {
            DataProgress::Done { consumed } => (result, Some(consumed)),
            DataProgress::NeedMore => (result, None),
        }
    }

    #[test]
    fn unstuffs_dots_and_stops_at_the_end_marker() {
        let (body, consumed) = read_all(b"Subject: x\r\n\r\n..leading dot\r\n.\r\nQUIT\r\n", 1000);
        assert_eq!(body.unwrap(), b"Subject: x\r\n\r\n.leading dot\r\n");
        assert_eq!(
            consumed,
            Some(b"Subject: x\r\n\r\n..leading dot\r\n.\r\n".len())
        );
    }

    #[test]
    fn empty_message_ends_at_once() {
        let (body, consumed) = read_all(b".\r\n", 10);
        assert_eq!(body.unwrap(), b"");
        assert_eq!(consumed, Some(3));
    }

    #[test]
    fn end_marker_split_across_reads() {
        let mut r = DataReader::new(1000);
        let mut out = Vec::new();
        assert_eq!(r.feed(b"hello\r", &mut out), DataProgress::NeedMore);
        assert_eq!(r.feed(b"\n.", &mut out), DataProgress::NeedMore);
        assert_eq!(r.feed(b"\r", &mut out), DataProgress::NeedMore);
        assert_eq!(r.feed(b"\n", &mut out), DataProgress::Done { consumed: 1 });
        assert_eq!(r.finish().unwrap(), 7);
        assert_eq!(out, b"hello\r\n");
    }

    #[test]
    fn bare_lf_does_not_end_data_and_is_rejected() {
        // The classic smuggling sequence: `\n.\n` and `\n.\r\n` must not end the data.
        let input = b"a\n.\nMAIL FROM:<x@y>\r\nb\n.\r\nmore\r\n.\r\n";
        let (body, consumed) = read_all(input, 1000);
        assert_eq!(body, Err(DataError::BareLineEnding));
        assert_eq!(consumed, Some(input.len()));
    }

    #[test]
    fn bare_cr_is_rejected() {
        let (body, _) = read_all(b"a\rb\r\n.\r\n", 1000);
        assert_eq!(body, Err(DataError::BareLineEnding));
    }

    #[test]
    fn line_of_998_octets_passes_and_999_fails() {
        let mut ok = vec![b'x'; 998];
        ok.extend_from_slice(b"\r\n.\r\n");
        assert!(read_all(&ok, 10_000).0.is_ok());
        let mut long = vec![b'x'; 999];
        long.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(read_all(&long, 10_000).0, Err(DataError::LineTooLong));
    }

    #[test]
    fn size_limit_is_exact() {
        assert!(read_all(b"12345678\r\n.\r\n", 10).0.is_ok());
        assert_eq!(
            read_all(b"123456789\r\n.\r\n", 10).0,
            Err(DataError::TooBig)
        );
    }

    /// The reader one byte at a time, as `feed` was before it took runs of a line at once.
    fn byte_at_a_time(input: &[u8], max: u64) -> (Vec<u8>, Option<usize>, Result<u64, DataError>) {
        let mut r = DataReader::new(max);
        let mut out = Vec::new();
        let mut consumed = None;
        for (i, &b) in input.iter().enumerate() {
            if r.step(b, &mut out) {
                consumed = Some(i + 1);
                break;
            }
        }
        (out, consumed, r.finish())
    }

    proptest! {
        /// Runs of a line taken at once give exactly what one byte at a time gives: text,
        /// where the data ends, size and the first error (too big, line too long, bare
        /// CR or LF), over inputs with long lines and every special byte.
        #[test]
        fn runs_equal_one_byte_at_a_time(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just(b"\r\n".to_vec()),
                    Just(b"\r\n.".to_vec()),
                    Just(b"\r".to_vec()),
                    Just(b"\n".to_vec()),
                    Just(b".".to_vec()),
                    Just(b"\r\n.\r\n".to_vec()),
                    proptest::collection::vec(b'a'..=b'z', 1..1200),
                ],
                0..12,
            ),
            max in 0u64..4000,
            split in 1usize..64,
        ) {
            let input: Vec<u8> = parts.concat();
            let (want_out, want_consumed, want) = byte_at_a_time(&input, max);
            let mut r = DataReader::new(max);
            let mut out = Vec::new();
            let mut consumed = None;
            let mut at = 0;
            for chunk in input.chunks(split) {
                if let DataProgress::Done { consumed: c } = r.feed(chunk, &mut out) {
                    consumed = Some(at + c);
                    break;
                }
                at += chunk.len();
            }
            let got = r.finish();
            prop_assert_eq!(consumed, want_consumed);
            prop_assert_eq!(format!("{got:?}"), format!("{want:?}"));
            if want.is_ok() {
                prop_assert_eq!(out, want_out);
            }
        }

        #[test]
        fn never_panics_and_never_over_consumes(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut r = DataReader::new(500);
            let mut out = Vec::new();
            if let DataProgress::Done { consumed } = r.feed(&bytes, &mut out) {
                prop_assert!(consumed <= bytes.len());
                prop_assert!(bytes[..consumed].ends_with(b"\r\n.\r\n") || consumed == 3);
            }
            prop_assert!(out.len() <= 500);
        }

        /// Streaming: any split of the input into reads gives the same text, the same
        /// verdict and the same end as one read.
        #[test]
        fn chunked_feeding_equals_one_read(
            bytes in proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), Just(b'x')], 0..600),
            cuts in proptest::collection::vec(1..50usize, 0..40),
        ) {
            let (whole, whole_end) = read_all(&bytes, 300);
            let mut r = DataReader::new(300);
            let mut out = Vec::new();
            let mut at: usize = 0;
            let mut end = None;
            for cut in cuts.into_iter().chain(std::iter::once(usize::MAX)) {
                let to = at.saturating_add(cut).min(bytes.len());
                if let DataProgress::Done { consumed } = r.feed(&bytes[at..to], &mut out) {
                    end = Some(at + consumed);
                    break;
                }
                at = to;
                if at == bytes.len() { break; }
            }
            prop_assert_eq!(end, whole_end);
            prop_assert_eq!(r.finish().map(|_| out), whole);
        }
    }
}
