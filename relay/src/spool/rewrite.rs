//! What a content filter needs of a message still being received ([`Incoming`]): reading
//! its text from the first byte, as often as there are filters, and replacing its header
//! block (and, when a filter sent one, its body) before it is committed.
//!
//! The text stays where it is: in memory for a message that fits there, in its file under
//! `incoming/` for a larger one. A reader streams it from there (memory stays bounded for
//! a 35 MB message). A rewrite of a message in memory rebuilds the buffer; one of a file
//! writes a new file (the new header block, then the old body copied in bounded blocks, or
//! the replacement body) and renames it over the old one, so the text is never held
//! whole. Nothing here is durable: the message is not acknowledged yet, and
//! [`Spool::commit`](super::Spool::commit) makes whatever the text is then durable.
//!
//! Not here: what the filters decide or edit (`crate::filter`, `crate::ingress::filtering`).

use std::io;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::error::SpoolError;
use super::files::HEADER2;
use super::store::{Incoming, Spool};

/// An async reader over a message's text.
pub type IncomingReader<'a> = Pin<Box<dyn AsyncRead + Send + 'a>>;

impl Incoming {
    /// A reader over the whole text received so far, from its first byte: the part in the
    /// file (flushed first, so the reader sees every byte), then the buffered tail.
    pub async fn reader(&mut self) -> Result<IncomingReader<'_>, SpoolError> {
        let tail = io::Cursor::new(&self.buf[..]);
        let Some((path, file)) = &mut self.file else {
            return Ok(Box::pin(tail));
        };
        file.flush().await.map_err(|e| SpoolError::io(path, e))?;
        let mut read = tokio::fs::File::open(&*path)
            .await
            .map_err(|e| SpoolError::io(path, e))?;
        read.seek(io::SeekFrom::Start(HEADER2.len() as u64))
            .await
            .map_err(|e| SpoolError::io(path, e))?;
        Ok(Box::pin(read.take(self.len).chain(tail)))
    }

    /// The first `max` bytes of the text (all of it when shorter): enough to find the
    /// header block without reading the body.
    pub async fn head(&mut self, max: usize) -> Result<Vec<u8>, SpoolError> {
        let want = self.len().min(max as u64);
        let mut out = Vec::with_capacity(want as usize);
        self.reader()
            .await?
            .take(want)
            .read_to_end(&mut out)
            .await
            .map_err(|e| SpoolError::io(std::path::Path::new("incoming"), e))?;
        Ok(out)
    }

    /// Replaces the first `skip` bytes of the text (the header block the filter was shown)
    /// with `prefix`, and the rest (the body) with `body` when one is given.
    pub async fn rewrite(
        &mut self,
        spool: &Spool,
        prefix: &[u8],
        skip: u64,
        body: Option<&[u8]>,
    ) -> Result<(), SpoolError> {
        let skip = skip.min(self.len());
        if self.file.is_none() {
            let start = usize::try_from(skip).unwrap_or(self.buf.len());
            let mut text = Vec::with_capacity(
                prefix.len() + body.map_or(self.buf.len().saturating_sub(start), <[u8]>::len),
            );
            text.extend_from_slice(prefix);
            match body {
                Some(body) => text.extend_from_slice(body),
                None => text.extend_from_slice(self.buf.get(start..).unwrap_or(&[])),
            }
            self.buf = text;
            return Ok(());
        }
        let path = spool.incoming_dir.join(format!("{}.rewrite", self.id));
        let result = self.rewrite_file(&path, prefix, skip, body).await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&path).await;
        }
        result
    }

    /// [`Incoming::rewrite`] of a message whose text is in a file: a new file at `new`,
    /// renamed over the old one.
    async fn rewrite_file(
        &mut self,
        new: &std::path::Path,
        prefix: &[u8],
        skip: u64,
        body: Option<&[u8]>,
    ) -> Result<(), SpoolError> {
        let io_err = |e| SpoolError::io(new, e);
        let mut out = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(new)
            .await
            .map_err(io_err)?;
        out.write_all(HEADER2).await.map_err(io_err)?;
        out.write_all(prefix).await.map_err(io_err)?;
        let mut written = prefix.len() as u64;
        match body {
            Some(body) => {
                out.write_all(body).await.map_err(io_err)?;
                written += body.len() as u64;
            }
            None => {
                let mut old = self.reader().await?;
                // Past the header block, in bounded blocks.
                tokio::io::copy(&mut (&mut old).take(skip), &mut tokio::io::sink())
                    .await
                    .map_err(io_err)?;
                written += tokio::io::copy(&mut old, &mut out).await.map_err(io_err)?;
            }
        }
        out.flush().await.map_err(io_err)?;
        let Some((old_path, _)) = self.file.take() else {
            return Err(SpoolError::WriterStopped);
        };
        tokio::fs::rename(new, &old_path)
            .await
            .map_err(|e| SpoolError::io(&old_path, e))?;
        self.file = Some((old_path, out));
        self.len = written;
        self.buf.clear();
        Ok(())
    }
}
