//! The storage trait: the only way the partition log touches files.
//!
//! Owns the contract between the log and a file system, and three implementations:
//! [`DmaStorage`] (glommio, O_DIRECT, io_uring), [`MemoryStorage`] (deterministic, in
//! memory, futures complete immediately) and [`FaultyStorage`] (the memory model plus
//! torn writes, lost unsynced writes, crashes and errors after N operations); and
//! [`AnyStorage`], the first or the second chosen at run time (what the server uses).
//!
//! Invariants of the contract:
//! - Writes are whole blocks: position and length are multiples of [`BLOCK_BYTES`]
//!   (asserted; a misaligned write is a programmer error). Reads may be unaligned.
//! - File content is durable only after [`StorageFile::fdatasync`]. Metadata operations
//!   (`create`, `remove`, `rename`, `truncate`, `create_dir_all`, `remove_dir_all`) are
//!   durable when they return: the real implementation syncs the parent directory (and
//!   the file, for `truncate`), the fault model treats them as immediately durable.
//! - I/O failures are `Err(IoError)` with the operation and path, never panics.
//! - Futures are `!Send`: everything runs on one thread (glommio thread-per-core).
//!
//! Deviations from the original sketch of this API:
//! - `write_atomic` and `read_all` are provided methods built on the other operations,
//!   for every implementation including `DmaStorage` (a padded block write, `truncate` to
//!   the real length, `fdatasync`, `rename`), so there is one code path to test and no
//!   blocking `std::fs` writes on the reactor thread.
//! - `list` returns the names of all entries directly inside `dir`, files and
//!   directories alike (the log lists partition directories as well as segment files).
//! - `remove_dir_all` on a missing directory is `Ok(())`, like `remove`.
//! - `create` and `rename` fail with `ENOENT` if the parent directory does not exist, in
//!   the memory model too, so a missing `create_dir_all` shows up in simulation.
//! - `WriteBuf` has a provided `is_empty`; `alloc_buf` also asserts `len > 0`, and
//!   `read_at` asserts `len <= READ_BYTES_MAX`.
//! - `truncate` is durable on return (`DmaStorage` fdatasyncs after it), to match the
//!   fault model's "metadata is durable immediately".
//! - `DmaStorage` opens a one-block probe file in a directory before its first open on
//!   a device, working around a glommio 0.9 iopoll-probe bug (see `dma::probe_iopoll`).

use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;

pub use crate::io_error::IoError;

mod dma;
mod either;
mod faulty;
mod memory;

pub use dma::{DmaBuf, DmaStorage, DmaStorageFile};
pub use either::{AnyBuf, AnyFile, AnyStorage, AnyTicket};
pub use faulty::{FaultKind, FaultyFile, FaultyStorage};
pub use memory::{MemBuf, MemFile, MemoryStorage};

/// Alignment of write positions and lengths (O_DIRECT), and of buffers.
pub const BLOCK_BYTES: usize = 4096;

/// Largest file `write_atomic` accepts: it is meant for small metadata files.
/// Index files of a full segment are the largest (`INDEX_ENTRIES_MAX` 12-byte
/// entries, 12 MiB), so the cap sits above them.
pub const ATOMIC_FILE_BYTES_MAX: usize = 16 << 20;

/// Largest single `read_at` (asserted): callers read records in bounded chunks.
pub const READ_BYTES_MAX: usize = 64 << 20;

/// Suffix of the temporary file `write_atomic` writes before renaming it into place.
pub const TMP_SUFFIX: &str = ".tmp";

/// Rounds `n` up to a multiple of [`BLOCK_BYTES`].
pub fn align_up(n: u64) -> u64 {
    n.div_ceil(BLOCK_BYTES as u64) * BLOCK_BYTES as u64
}

/// Rounds `n` down to a multiple of [`BLOCK_BYTES`].
pub fn align_down(n: u64) -> u64 {
    n - n % BLOCK_BYTES as u64
}

/// The temporary path `write_atomic` uses for `path`: `path` with [`TMP_SUFFIX`] appended.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(TMP_SUFFIX);
    PathBuf::from(name)
}

/// True if `n` is a multiple of `d` (`u64::is_multiple_of` needs Rust 1.87; the
/// workspace's rust-version is 1.85).
#[allow(clippy::manual_is_multiple_of)]
pub(crate) fn is_multiple(n: u64, d: u64) -> bool {
    n % d == 0
}

/// True if `n` is a multiple of [`BLOCK_BYTES`].
pub fn is_block_aligned(n: u64) -> bool {
    is_multiple(n, BLOCK_BYTES as u64)
}

/// Asserts the O_DIRECT write contract (a programmer error if violated).
pub(crate) fn assert_write_aligned(pos: u64, len: usize) {
    assert!(is_block_aligned(pos), "write position {pos} not aligned");
    assert!(
        is_block_aligned(len as u64),
        "write length {len} not aligned"
    );
}

/// Asserts the buffer contract of `alloc_buf`.
pub(crate) fn assert_buf_len(len: usize) {
    assert!(
        len > 0 && is_block_aligned(len as u64),
        "buffer length {len} not aligned"
    );
}

/// An aligned, writable buffer (DMA memory for the real implementation).
pub trait WriteBuf {
    fn as_slice(&self) -> &[u8];
    fn as_mut_slice(&mut self) -> &mut [u8];
    fn len(&self) -> usize;
    /// Shrinks the buffer to its first `len` bytes; `len` must be a positive
    /// multiple of [`BLOCK_BYTES`] no larger than the current length (asserted).
    fn trim_to(&mut self, len: usize);
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A file system: create, open, remove and rename files; list and manage directories.
#[allow(async_fn_in_trait)]
pub trait Storage: Clone + 'static {
    type File: StorageFile;

    /// Create the file (truncating if it exists) and open it read-write.
    async fn create(&self, path: &Path) -> Result<Self::File, IoError>;

    /// Open an existing file read-write; `Ok(None)` if it does not exist.
    async fn open(&self, path: &Path) -> Result<Option<Self::File>, IoError>;

    /// Remove a file; a missing file is `Ok(())`.
    async fn remove(&self, path: &Path) -> Result<(), IoError>;

    /// Atomically replace `to` with `from`, durably (rename + fsync of the parent dir).
    async fn rename(&self, from: &Path, to: &Path) -> Result<(), IoError>;

    /// Names (not paths) of the entries directly inside `dir`, sorted. Missing dir: empty.
    async fn list(&self, dir: &Path) -> Result<Vec<String>, IoError>;

    async fn create_dir_all(&self, dir: &Path) -> Result<(), IoError>;

    /// Remove `dir` and everything below it; a missing dir is `Ok(())`.
    async fn remove_dir_all(&self, dir: &Path) -> Result<(), IoError>;

    /// Write a small file atomically and durably: write `path.tmp`, fdatasync, rename
    /// over `path` (which syncs the directory). After a crash `path` holds either the old
    /// or the new content; a leftover `path.tmp` may remain and can be removed.
    async fn write_atomic(&self, path: &Path, data: &[u8]) -> Result<(), IoError> {
        assert!(
            data.len() <= ATOMIC_FILE_BYTES_MAX,
            "write_atomic of {} bytes",
            data.len()
        );
        let tmp = tmp_path(path);
        let file = self.create(&tmp).await?;
        if !data.is_empty() {
            let mut buf = file.alloc_buf(align_up(data.len() as u64) as usize);
            buf.as_mut_slice()[..data.len()].copy_from_slice(data);
            file.write_at(buf, 0).await?;
            file.truncate(data.len() as u64).await?;
        }
        file.fdatasync().await?;
        file.close().await?;
        self.rename(&tmp, path).await
    }

    /// Bytes free for an unprivileged writer on the file system holding
    /// `dir`, or `Ok(None)` where the storage has no such notion (the
    /// in-memory models).
    async fn free_bytes(&self, dir: &Path) -> Result<Option<u64>, IoError> {
        let _ = dir;
        Ok(None)
    }

    /// Read a whole small file (at most `max_bytes`), or `Ok(None)` if it is missing.
    /// A larger file is an `InvalidData` error.
    async fn read_all(&self, path: &Path, max_bytes: usize) -> Result<Option<Bytes>, IoError> {
        let Some(file) = self.open(path).await? else {
            return Ok(None);
        };
        let size = file.size().await?;
        if size > max_bytes as u64 {
            let msg = format!("file is {size} bytes, more than the {max_bytes} allowed");
            let source = io::Error::new(io::ErrorKind::InvalidData, msg);
            return Err(IoError::new("read_all", path, source));
        }
        let data = file.read_at(0, size as usize).await?;
        file.close().await?;
        if data.len() as u64 != size {
            let msg = format!("read {} of {size} bytes", data.len());
            let source = io::Error::new(io::ErrorKind::UnexpectedEof, msg);
            return Err(IoError::new("read_all", path, source));
        }
        Ok(Some(data))
    }
}

/// An open file. Writes are whole aligned blocks; reads are any range.
#[allow(async_fn_in_trait)]
pub trait StorageFile: Sized + 'static {
    type Buf: WriteBuf;
    /// A write started by [`StorageFile::spawn_write`]: resolves when it is done.
    type WriteTicket: std::future::Future<Output = Result<(), IoError>> + 'static;

    /// Starts writing `buf` at `pos` now, in the background, and returns a
    /// ticket to await its end (the real implementation spawns a task on the
    /// current executor; the memory models write at once). Lets the log copy
    /// the next buffer while the previous ones are on their way to the disk.
    /// Same alignment rules as `write_at`; the caller must not start another
    /// write that overlaps this one before the ticket resolves.
    fn spawn_write(self: std::rc::Rc<Self>, buf: Self::Buf, pos: u64) -> Self::WriteTicket;

    /// Starts `pre_allocate(len_bytes)` in the background (same ticket rules
    /// as `spawn_write`): the log reserves the next step of its segment
    /// while it keeps appending below the current one.
    fn spawn_pre_allocate(self: std::rc::Rc<Self>, len_bytes: u64) -> Self::WriteTicket;

    /// An aligned buffer with unspecified contents (callers write every byte
    /// they hand to the disk); `len` must be a positive multiple of [`BLOCK_BYTES`]
    /// (asserted).
    fn alloc_buf(&self, len: usize) -> Self::Buf;

    /// Write the whole buffer at `pos`. `pos` and `buf.len()` must be multiples of
    /// [`BLOCK_BYTES`] (asserted). Short writes are retried or reported as errors.
    async fn write_at(&self, buf: Self::Buf, pos: u64) -> Result<(), IoError>;

    /// Read up to `len` bytes at `pos` (any alignment; `len` at most [`READ_BYTES_MAX`],
    /// asserted). Returns fewer bytes only at the end of the file.
    async fn read_at(&self, pos: u64, len: usize) -> Result<Bytes, IoError>;

    /// Make the content written so far durable.
    async fn fdatasync(&self) -> Result<(), IoError>;

    /// Reserve space up to `len_bytes` and extend the file to that size with
    /// zeros (fallocate mode 0); a file already larger is unchanged. Extending
    /// the size is metadata, durable when this returns.
    async fn pre_allocate(&self, len_bytes: u64) -> Result<(), IoError>;

    /// Writes zeros over the whole blocks of `[from, to)` of a preallocated
    /// range that holds no data yet, so that later writes there overwrite
    /// written blocks. On ext4 an O_DIRECT write into fallocated (unwritten)
    /// blocks cannot be issued without blocking: io_uring hands it to a
    /// worker thread, and the write converts extents in the journal; into
    /// written blocks it is a plain overwrite (fio on this machine's disk:
    /// 4 KiB writes 5.9k vs 20.6k IOPS, 1 MiB writes 0.44 vs 0.73 GB/s,
    /// write+fdatasync 2.9k vs 5.3k/s). Contents do not change (both read
    /// as zeros), so the in-memory models need not do anything.
    async fn write_zeros(&self, from: u64, to: u64) -> Result<(), IoError> {
        let _ = (from, to);
        Ok(())
    }

    /// Set the file size to `len_bytes` (shrinking or zero-extending), durably.
    async fn truncate(&self, len_bytes: u64) -> Result<(), IoError>;

    async fn size(&self) -> Result<u64, IoError>;

    async fn close(self) -> Result<(), IoError>;

    /// The path the file was opened with (a later rename does not change it).
    fn path(&self) -> &Path;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_helpers() {
        assert_eq!(align_up(0), 0);
        assert_eq!(align_up(1), 4096);
        assert_eq!(align_up(4096), 4096);
        assert_eq!(align_down(8191), 4096);
        assert_eq!(tmp_path(Path::new("/a/meta")), Path::new("/a/meta.tmp"));
    }
}
