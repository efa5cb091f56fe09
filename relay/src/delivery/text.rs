//! The text of a queued message as delivery reads it: where it lies, not the bytes.
//!
//! [`MessageText`] is a byte range of a file (the spool's message file, a test store's
//! `.eml` file), opened anew as an async reader for each attempt, or bytes already in
//! memory (small messages, files of an old spool layout). Delivery streams it to the socket
//! in bounded blocks ([`MessageText::open`]), so memory per attempt does not grow with the
//! message, and a DSN takes only the header section ([`MessageText::header_section`]).
//! The store decides which form a message has; this module does not know the spool's
//! layout. A header made at delivery time (a DKIM signature) is prepended with
//! [`MessageText::with_prefix`], without touching the stored text.

use std::io::{self, SeekFrom};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt};

/// Longest header section a DSN quotes; a longer one is cut at a line end.
pub const MAX_HEADER_SECTION: usize = 64 * 1024;

/// An async reader over a message's text.
pub type TextReader = Pin<Box<dyn AsyncRead + Send>>;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    File {
        path: PathBuf,
        offset: u64,
        len: u64,
    },
    Memory(Arc<[u8]>),
}

/// Where a message's text is. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageText {
    source: Source,
    /// Bytes sent before the stored text (header fields added at delivery time).
    prefix: Option<Arc<[u8]>>,
}

impl MessageText {
    /// `len` bytes of the file at `path`, from `offset`.
    pub fn file(path: impl Into<PathBuf>, offset: u64, len: u64) -> Self {
        Self {
            source: Source::File {
                path: path.into(),
                offset,
                len,
            },
            prefix: None,
        }
    }

    /// Text held in memory.
    pub fn bytes(data: impl Into<Arc<[u8]>>) -> Self {
        Self {
            source: Source::Memory(data.into()),
            prefix: None,
        }
    }

    /// The same text with `prefix` (whole header lines, CRLF-terminated) sent before it.
    /// Replaces an earlier prefix.
    pub fn with_prefix(&self, prefix: impl Into<Arc<[u8]>>) -> Self {
        Self {
            source: self.source.clone(),
            prefix: Some(prefix.into()),
        }
    }

    /// The same text with `bytes` (whole header lines) sent before everything it sends
    /// now, its prefix included.
    pub fn prepend(&self, bytes: &[u8]) -> Self {
        let mut prefix = bytes.to_vec();
        if let Some(old) = &self.prefix {
            prefix.extend_from_slice(old);
        }
        Self {
            source: self.source.clone(),
            prefix: Some(prefix.into()),
        }
    }

    /// The stored text alone, without a prefix.
    pub fn stored(&self) -> Self {
        Self {
            source: self.source.clone(),
            prefix: None,
        }
    }

    /// Length in bytes, prefix included.
    pub fn len(&self) -> u64 {
        let stored = match &self.source {
            Source::File { len, .. } => *len,
            Source::Memory(b) => b.len() as u64,
        };
        stored + self.prefix.as_ref().map_or(0, |p| p.len() as u64)
    }

    /// True for an empty text.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A new reader from the first byte. A file that has become shorter than the stated
    /// length gives an `UnexpectedEof` error at the end instead of a short text.
    pub async fn open(&self) -> io::Result<TextReader> {
        let stored = self.open_stored().await?;
        Ok(match &self.prefix {
            Some(prefix) => Box::pin(io::Cursor::new(prefix.clone()).chain(stored)),
            None => stored,
        })
    }

    async fn open_stored(&self) -> io::Result<TextReader> {
        match &self.source {
            Source::Memory(b) => Ok(Box::pin(io::Cursor::new(b.clone()))),
            Source::File { path, offset, len } => {
                let mut file = tokio::fs::File::open(path).await?;
                file.seek(SeekFrom::Start(*offset)).await?;
                Ok(Box::pin(Exact {
                    inner: file.take(*len),
                    left: *len,
                }))
            }
        }
    }

    /// The header section (up to and including the blank line that ends it), at most
    /// [`MAX_HEADER_SECTION`] bytes, cut at a line end when longer.
    pub async fn header_section(&self) -> io::Result<Vec<u8>> {
        let mut reader = self.open().await?.take(MAX_HEADER_SECTION as u64);
        let mut head = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            let n = reader.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            let from = head.len().saturating_sub(3);
            head.extend_from_slice(&chunk[..n]);
            if let Some(end) = blank_line_end(&head, from) {
                head.truncate(end);
                return Ok(head);
            }
        }
        if head.len() >= MAX_HEADER_SECTION
            && let Some(nl) = head.iter().rposition(|b| *b == b'\n')
        {
            head.truncate(nl + 1);
        }
        Ok(head)
    }
}

/// The end of the first `CRLF CRLF` (or `LF LF`) at or after `from`.
fn blank_line_end(buf: &[u8], from: usize) -> Option<usize> {
    let tail = &buf[from..];
    if let Some(p) = tail.windows(4).position(|w| w == b"\r\n\r\n") {
        return Some(from + p + 4);
    }
    tail.windows(2)
        .position(|w| w == b"\n\n")
        .map(|p| from + p + 2)
}

/// A reader that must give exactly `left` more bytes.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: AsyncRead + Unpin> AsyncRead for Exact<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            std::task::Poll::Ready(Ok(())) => {
                let got = (buf.filled().len() - before) as u64;
                if got == 0 && this.left > 0 && buf.remaining() > 0 {
                    return std::task::Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "message text is shorter than its stated length",
                    )));
                }
                this.left = this.left.saturating_sub(got);
                std::task::Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(text: &MessageText) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        text.open().await?.read_to_end(&mut out).await?;
        Ok(out)
    }

    #[tokio::test]
    async fn a_file_range_reads_back_and_a_short_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        std::fs::write(&path, b"HEADSubject: x\r\n\r\nbody\r\nTRAILER").unwrap();
        let text = MessageText::file(&path, 4, 20);
        assert_eq!(
            read_all(&text).await.unwrap(),
            b"Subject: x\r\n\r\nbody\r\n"
        );
        assert_eq!(text.header_section().await.unwrap(), b"Subject: x\r\n\r\n");
        let short = MessageText::file(&path, 4, 1000);
        let e = read_all(&short).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn the_header_section_is_bounded_and_cut_at_a_line_end() {
        let mut m = Vec::new();
        for i in 0..10_000 {
            m.extend_from_slice(format!("X-H{i}: value\r\n").as_bytes());
        }
        let head = MessageText::bytes(m).header_section().await.unwrap();
        assert!(head.len() <= MAX_HEADER_SECTION);
        assert!(head.ends_with(b"\r\n"));
        let plain = MessageText::bytes(b"A: b\n\nbody".to_vec());
        assert_eq!(plain.header_section().await.unwrap(), b"A: b\n\n");
    }

    #[tokio::test]
    async fn a_prefix_is_sent_first_and_the_stored_text_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        std::fs::write(&path, b"Subject: x\r\n\r\nbody\r\n").unwrap();
        let stored = MessageText::file(&path, 0, 20);
        let signed = stored.with_prefix(b"DKIM-Signature: v=1\r\n".to_vec());
        assert_eq!(
            read_all(&signed).await.unwrap(),
            b"DKIM-Signature: v=1\r\nSubject: x\r\n\r\nbody\r\n"
        );
        assert_eq!(signed.len(), 41);
        assert_eq!(
            read_all(&signed.stored()).await.unwrap(),
            b"Subject: x\r\n\r\nbody\r\n"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"Subject: x\r\n\r\nbody\r\n");
    }
}
