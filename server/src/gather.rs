//! Gathered sends for the connection writers of every protocol: parts
//! shorter than `WRITE_COPY_BYTES_MAX` are copied into one reused buffer and
//! leave in one send; a longer part (fetched data) flushes what is gathered
//! and is sent from its own buffer, never copied.
//!
//! Invariant: bytes leave in the order they were pushed.

use crate::limits::WRITE_COPY_BYTES_MAX;
use futures_lite::io::{AsyncWrite, AsyncWriteExt};

#[derive(Default)]
pub struct Gather {
    batch: Vec<u8>,
}

impl Gather {
    /// Queues `part`, or sends it at once if it is long.
    pub async fn push<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        part: &[u8],
    ) -> std::io::Result<()> {
        if part.len() < WRITE_COPY_BYTES_MAX {
            self.batch.extend_from_slice(part);
            return Ok(());
        }
        self.flush(w).await?;
        w.write_all(part).await
    }

    /// Sends what is gathered.
    pub async fn flush<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> std::io::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let r = w.write_all(&self.batch).await;
        self.batch.clear();
        r
    }

    /// Bytes gathered and not yet sent.
    pub fn gathered_bytes(&self) -> usize {
        self.batch.len()
    }

    /// Forgets what is gathered (the connection is broken).
    pub fn clear(&mut self) {
        self.batch.clear();
    }
}
