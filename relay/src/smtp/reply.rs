//! SMTP replies as values: a code, an enhanced status and text lines, formatted to the
//! wire in one place. The exact texts of the relay's replies live in the modules that
//! decide them (`session`, `policy`, `limits`); this module only formats.

use std::fmt;

/// One SMTP reply, possibly multi-line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Three-digit reply code.
    pub code: u16,
    /// Lines of text; each line already carries its enhanced status code when it has one.
    pub lines: Vec<String>,
}

impl Reply {
    /// A single-line reply: `code text`.
    pub fn new(code: u16, text: impl Into<String>) -> Self {
        Self {
            code,
            lines: vec![text.into()],
        }
    }

    /// A multi-line reply (EHLO).
    pub fn multi(code: u16, lines: Vec<String>) -> Self {
        Self { code, lines }
    }

    /// True for 4xx and 5xx replies.
    pub fn is_error(&self) -> bool {
        self.code >= 400
    }

    /// The reply as it goes on the wire, CRLF terminated.
    pub fn to_wire(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let last = self.lines.len().saturating_sub(1);
        if self.lines.is_empty() {
            return write!(f, "{}\r\n", self.code);
        }
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            write!(f, "{}{}{}\r\n", self.code, sep, line)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_multi_line_wire_format() {
        assert_eq!(Reply::new(250, "2.0.0 OK").to_string(), "250 2.0.0 OK\r\n");
        let r = Reply::multi(250, vec!["relay.example".into(), "PIPELINING".into()]);
        assert_eq!(r.to_string(), "250-relay.example\r\n250 PIPELINING\r\n");
    }
}
