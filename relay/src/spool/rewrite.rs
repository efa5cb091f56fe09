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

use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt};

use super::error::SpoolError;
use super::files::HEADER3;
use super::fsys::FileRef;
use super::store::{Incoming, Spool};

/// Bytes copied at a time when a file's body is carried into its rewrite.
const COPY_BLOCK: usize = 256 * 1024;

/// An async reader over a message's text.
pub type IncomingReader<'a> = Pin<Box<dyn AsyncRead + Send + 'a>>;

impl Incoming {
    /// A reader over the whole text received so far, from its first byte: the part in the
    /// file (every write to it has completed: the spool writes it synchronously, on a
    /// blocking thread), then the buffered tail.
    pub async fn reader(&mut self) -> Result<IncomingReader<'_>, SpoolError> {
        let tail = io::Cursor::new(&self.buf[..]);
        let Some((path, _)) = &self.file else {
            return Ok(Box::pin(tail));
        };
        let mut read = tokio::fs::File::open(path)
            .await
            .map_err(|e| SpoolError::io(path, e))?;
        read.seek(io::SeekFrom::Start(HEADER3.len() as u64))
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
        let result = self
            .rewrite_file(spool, path.clone(), prefix, skip, body)
            .await;
        if result.is_err() {
            let fs = spool.shared.fs.clone();
            let _ = tokio::task::spawn_blocking(move || fs.remove_file(&path)).await;
        }
        result
    }

    /// [`Incoming::rewrite`] of a message whose text is in a file: a new file at `new`
    /// (header line, `prefix`, then `body` or the old body copied in bounded blocks, then
    /// the buffered tail), renamed over the old one; the text's checksum starts again
    /// from the new text. On failure the old file and text stay as they were.
    async fn rewrite_file(
        &mut self,
        spool: &Spool,
        new: std::path::PathBuf,
        prefix: &[u8],
        skip: u64,
        body: Option<&[u8]>,
    ) -> Result<(), SpoolError> {
        let Some((old_path, old)) = self.file.take() else {
            return Err(SpoolError::WriterStopped);
        };
        let fs = spool.shared.fs.clone();
        let prefix = prefix.to_vec();
        let body = body.map(<[u8]>::to_vec);
        let old_len = self.len;
        let tail = std::mem::take(&mut self.buf);
        let target = old_path.clone();
        let work = move || {
            let write = || -> Result<(FileRef, u64, crc32fast::Hasher), SpoolError> {
                let io_err = |e| SpoolError::io(&new, e);
                let out = fs.create_new(&new).map_err(io_err)?;
                let mut crc = crc32fast::Hasher::new();
                let mut at = HEADER3.len() as u64;
                out.write_all_at(HEADER3, 0).map_err(io_err)?;
                let mut put = |bytes: &[u8], at: &mut u64| -> Result<(), SpoolError> {
                    out.write_all_at(bytes, *at).map_err(io_err)?;
                    crc.update(bytes);
                    *at += bytes.len() as u64;
                    Ok(())
                };
                put(&prefix, &mut at)?;
                match &body {
                    Some(body) => put(body, &mut at)?,
                    None => {
                        // Past the header block, in bounded blocks: the file's part, then
                        // the part still in memory.
                        let mut block = vec![0u8; COPY_BLOCK];
                        let mut from = skip.min(old_len);
                        while from < old_len {
                            let n = block.len().min((old_len - from) as usize);
                            let chunk = block.get_mut(..n).unwrap_or_default();
                            old.read_exact_at(chunk, HEADER3.len() as u64 + from)
                                .map_err(|e| SpoolError::io(&target, e))?;
                            put(chunk, &mut at)?;
                            from += n as u64;
                        }
                        let in_memory =
                            usize::try_from(skip.saturating_sub(old_len)).unwrap_or(usize::MAX);
                        put(tail.get(in_memory..).unwrap_or_default(), &mut at)?;
                    }
                }
                fs.rename(&new, &target)
                    .map_err(|e| SpoolError::io(&target, e))?;
                Ok((out, at - HEADER3.len() as u64, crc))
            };
            let result = write();
            (old, tail, result)
        };
        let (old, tail, result) = tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| SpoolError::io(&old_path, io::Error::other(e.to_string())))?;
        match result {
            Ok((out, written, crc)) => {
                drop(old);
                self.file = Some((old_path, out));
                self.len = written;
                self.crc = crc;
                self.buf.clear();
                Ok(())
            }
            Err(e) => {
                self.file = Some((old_path, old));
                self.buf = tail;
                Err(e)
            }
        }
    }
}
