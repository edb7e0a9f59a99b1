//! `MemoryStorage`: a deterministic in-memory file system for tests and simulation.
//!
//! Owns the in-memory namespace ([`Namespace`], shared with the fault model) and the
//! content helpers. Files are inodes (`Rc<RefCell<..>>`): an open handle keeps reading
//! and writing the same inode after a rename or remove, as on Linux. Directories are a
//! set of paths recorded by `create_dir_all`; `create` and `rename` need the parent
//! directory to exist (or the path to have no parent). Every future completes on its
//! first poll, so callers may drive it with `futures_lite::future::block_on`.
//! Writes beyond the end extend the file with zeros; no file grows past
//! [`MEMORY_FILE_BYTES_MAX`] (`EFBIG`).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;

use super::BLOCK_BYTES;

use super::{assert_buf_len, assert_write_aligned, Storage, StorageFile, WriteBuf, READ_BYTES_MAX};
use crate::io_error::IoError;

/// Largest file the memory model holds.
pub const MEMORY_FILE_BYTES_MAX: u64 = 1 << 32;

/// A heap buffer; the memory model needs no real alignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemBuf(pub(crate) Vec<u8>);

impl MemBuf {
    pub(crate) fn filled(len: usize, byte: u8) -> Self {
        assert_buf_len(len);
        MemBuf(vec![byte; len])
    }
}

impl WriteBuf for MemBuf {
    fn as_slice(&self) -> &[u8] {
        &self.0
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.0
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn trim_to(&mut self, len: usize) {
        assert!(
            len > 0 && len <= self.0.len() && len.is_multiple_of(BLOCK_BYTES),
            "trim_to {len}"
        );
        self.0.truncate(len);
    }
}

/// Copies `src` into `data` at `pos`, zero-filling any gap.
pub(crate) fn write_into(data: &mut Vec<u8>, pos: u64, src: &[u8]) {
    let start = pos as usize;
    let end = start + src.len();
    if data.len() < end {
        data.resize(end, 0);
    }
    data[start..end].copy_from_slice(src);
}

/// Up to `len` bytes of `data` from `pos`, fewer at the end.
pub(crate) fn read_from(data: &[u8], pos: u64, len: usize) -> Bytes {
    assert!(len <= READ_BYTES_MAX, "read of {len} bytes");
    let start = (pos.min(data.len() as u64)) as usize;
    let end = start + len.min(data.len() - start);
    Bytes::copy_from_slice(&data[start..end])
}

/// `EFBIG` if a file would grow past [`MEMORY_FILE_BYTES_MAX`].
pub(crate) fn check_size(op: &'static str, path: &Path, end: u64) -> Result<(), IoError> {
    if end > MEMORY_FILE_BYTES_MAX {
        return Err(IoError::from_errno(op, path, libc::EFBIG));
    }
    Ok(())
}

/// Paths to inodes plus a set of directories, generic over the inode type.
#[derive(Debug)]
pub(crate) struct Namespace<N> {
    files: BTreeMap<PathBuf, Rc<RefCell<N>>>,
    dirs: BTreeSet<PathBuf>,
}

impl<N> Default for Namespace<N> {
    fn default() -> Self {
        Self {
            files: BTreeMap::new(),
            dirs: BTreeSet::new(),
        }
    }
}

fn is_root(path: &Path) -> bool {
    path.as_os_str().is_empty() || path == Path::new("/")
}

impl<N: Default> Namespace<N> {
    fn parent_exists(&self, path: &Path) -> bool {
        path.parent()
            .is_none_or(|p| is_root(p) || self.dirs.contains(p))
    }

    /// Creates the file, or truncates the existing inode in place (as `O_TRUNC` does).
    pub(crate) fn create(&mut self, path: &Path) -> Result<Rc<RefCell<N>>, IoError> {
        if self.dirs.contains(path) || is_root(path) {
            return Err(IoError::from_errno("create", path, libc::EISDIR));
        }
        if !self.parent_exists(path) {
            return Err(IoError::from_errno("create", path, libc::ENOENT));
        }
        let inode = self.files.entry(path.to_path_buf()).or_default();
        *inode.borrow_mut() = N::default();
        Ok(inode.clone())
    }

    pub(crate) fn open(&self, path: &Path) -> Result<Option<Rc<RefCell<N>>>, IoError> {
        if self.dirs.contains(path) {
            return Err(IoError::from_errno("open", path, libc::EISDIR));
        }
        Ok(self.files.get(path).cloned())
    }

    pub(crate) fn remove(&mut self, path: &Path) -> Result<(), IoError> {
        if self.dirs.contains(path) {
            return Err(IoError::from_errno("remove", path, libc::EISDIR));
        }
        self.files.remove(path);
        Ok(())
    }

    pub(crate) fn rename(&mut self, from: &Path, to: &Path) -> Result<(), IoError> {
        if self.dirs.contains(to) {
            return Err(IoError::from_errno("rename", to, libc::EISDIR));
        }
        if !self.parent_exists(to) {
            return Err(IoError::from_errno("rename", to, libc::ENOENT));
        }
        let Some(inode) = self.files.remove(from) else {
            return Err(IoError::from_errno("rename", from, libc::ENOENT));
        };
        self.files.insert(to.to_path_buf(), inode);
        Ok(())
    }

    pub(crate) fn list(&self, dir: &Path) -> Result<Vec<String>, IoError> {
        if self.files.contains_key(dir) {
            return Err(IoError::from_errno("list", dir, libc::ENOTDIR));
        }
        let children = self.files.keys().chain(self.dirs.iter());
        let names: BTreeSet<String> = children
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name())
            .map(|name| name.to_string_lossy().into_owned())
            .collect();
        Ok(names.into_iter().collect())
    }

    pub(crate) fn create_dir_all(&mut self, dir: &Path) -> Result<(), IoError> {
        for ancestor in dir.ancestors().filter(|a| !is_root(a)) {
            if self.files.contains_key(ancestor) {
                return Err(IoError::from_errno(
                    "create_dir_all",
                    ancestor,
                    libc::ENOTDIR,
                ));
            }
        }
        for ancestor in dir.ancestors().filter(|a| !is_root(a)) {
            self.dirs.insert(ancestor.to_path_buf());
        }
        Ok(())
    }

    pub(crate) fn remove_dir_all(&mut self, dir: &Path) -> Result<(), IoError> {
        if self.files.contains_key(dir) {
            return Err(IoError::from_errno("remove_dir_all", dir, libc::ENOTDIR));
        }
        self.files.retain(|p, _| !p.starts_with(dir));
        self.dirs.retain(|p| !p.starts_with(dir));
        Ok(())
    }

    /// Every named file, in path order.
    pub(crate) fn files(&self) -> impl Iterator<Item = (&PathBuf, &Rc<RefCell<N>>)> {
        self.files.iter()
    }
}

/// A cheap handle to one in-memory file system; clones share it.
#[derive(Debug, Clone, Default)]
pub struct MemoryStorage {
    fs: Rc<RefCell<Namespace<Vec<u8>>>>,
}

impl MemoryStorage {
    pub fn new() -> Self {
        Self::default()
    }
}

/// An open in-memory file.
#[derive(Debug)]
pub struct MemFile {
    path: PathBuf,
    data: Rc<RefCell<Vec<u8>>>,
}

impl Storage for MemoryStorage {
    type File = MemFile;

    async fn create(&self, path: &Path) -> Result<MemFile, IoError> {
        let data = self.fs.borrow_mut().create(path)?;
        Ok(MemFile {
            path: path.to_path_buf(),
            data,
        })
    }

    async fn open(&self, path: &Path) -> Result<Option<MemFile>, IoError> {
        let data = self.fs.borrow().open(path)?;
        Ok(data.map(|data| MemFile {
            path: path.to_path_buf(),
            data,
        }))
    }

    async fn remove(&self, path: &Path) -> Result<(), IoError> {
        self.fs.borrow_mut().remove(path)
    }

    async fn rename(&self, from: &Path, to: &Path) -> Result<(), IoError> {
        self.fs.borrow_mut().rename(from, to)
    }

    async fn list(&self, dir: &Path) -> Result<Vec<String>, IoError> {
        self.fs.borrow().list(dir)
    }

    async fn create_dir_all(&self, dir: &Path) -> Result<(), IoError> {
        self.fs.borrow_mut().create_dir_all(dir)
    }

    async fn remove_dir_all(&self, dir: &Path) -> Result<(), IoError> {
        self.fs.borrow_mut().remove_dir_all(dir)
    }
}

impl StorageFile for MemFile {
    type Buf = MemBuf;
    type WriteTicket = std::future::Ready<Result<(), IoError>>;

    fn spawn_write(self: std::rc::Rc<Self>, buf: MemBuf, pos: u64) -> Self::WriteTicket {
        // The model's writes complete at once: do it now, deterministically.
        std::future::ready(futures_lite::future::block_on(self.write_at(buf, pos)))
    }

    fn spawn_pre_allocate(self: std::rc::Rc<Self>, len_bytes: u64) -> Self::WriteTicket {
        std::future::ready(futures_lite::future::block_on(self.pre_allocate(len_bytes)))
    }

    fn alloc_buf(&self, len: usize) -> MemBuf {
        // Garbage, not zeros: the real DMA buffers are not zeroed either, and
        // the simulation must catch a caller that relies on it.
        MemBuf::filled(len, 0xA5)
    }

    async fn write_at(&self, buf: MemBuf, pos: u64) -> Result<(), IoError> {
        assert_write_aligned(pos, buf.len());
        check_size("write_at", &self.path, pos + buf.len() as u64)?;
        write_into(&mut self.data.borrow_mut(), pos, &buf.0);
        Ok(())
    }

    async fn read_at(&self, pos: u64, len: usize) -> Result<Bytes, IoError> {
        Ok(read_from(&self.data.borrow(), pos, len))
    }

    async fn fdatasync(&self) -> Result<(), IoError> {
        Ok(())
    }

    async fn pre_allocate(&self, len_bytes: u64) -> Result<(), IoError> {
        check_size("pre_allocate", &self.path, len_bytes)?;
        let mut data = self.data.borrow_mut();
        if (data.len() as u64) < len_bytes {
            data.resize(len_bytes as usize, 0);
        }
        Ok(())
    }

    async fn truncate(&self, len_bytes: u64) -> Result<(), IoError> {
        check_size("truncate", &self.path, len_bytes)?;
        self.data.borrow_mut().resize(len_bytes as usize, 0);
        Ok(())
    }

    async fn size(&self) -> Result<u64, IoError> {
        Ok(self.data.borrow().len() as u64)
    }

    async fn close(self) -> Result<(), IoError> {
        Ok(())
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::BLOCK_BYTES;
    use futures_lite::future::block_on;

    fn block(byte: u8) -> MemBuf {
        MemBuf(vec![byte; BLOCK_BYTES])
    }

    #[test]
    fn write_read_extend_truncate() {
        block_on(async {
            let storage = MemoryStorage::new();
            storage.create_dir_all(Path::new("/d")).await.unwrap();
            let file = storage.create(Path::new("/d/f")).await.unwrap();
            file.write_at(block(7), 2 * BLOCK_BYTES as u64)
                .await
                .unwrap();
            assert_eq!(file.size().await.unwrap(), 3 * BLOCK_BYTES as u64);
            let gap = file.read_at(10, 20).await.unwrap();
            assert_eq!(&gap[..], &[0u8; 20][..]);
            let tail = file.read_at(3 * BLOCK_BYTES as u64 - 5, 100).await.unwrap();
            assert_eq!(&tail[..], &[7u8; 5][..]);
            assert!(file.read_at(1 << 20, 10).await.unwrap().is_empty());
            file.pre_allocate(1 << 20).await.unwrap();
            assert_eq!(file.size().await.unwrap(), 1 << 20, "zero-extended");
            file.truncate(100).await.unwrap();
            assert_eq!(file.size().await.unwrap(), 100);
        });
    }

    #[test]
    fn namespace_operations() {
        block_on(async {
            let storage = MemoryStorage::new();
            let missing = storage.create(Path::new("/nodir/f")).await.unwrap_err();
            assert!(missing.is_not_found());
            storage.create_dir_all(Path::new("/d/sub")).await.unwrap();
            storage.create(Path::new("/d/b")).await.unwrap();
            storage.create(Path::new("/d/a")).await.unwrap();
            assert_eq!(
                storage.list(Path::new("/d")).await.unwrap(),
                ["a", "b", "sub"]
            );
            assert!(storage.list(Path::new("/nope")).await.unwrap().is_empty());

            storage
                .write_atomic(Path::new("/d/a"), b"hello")
                .await
                .unwrap();
            let read = storage
                .read_all(Path::new("/d/a"), 5)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&read[..], b"hello");
            assert!(storage.read_all(Path::new("/d/a"), 4).await.is_err());
            assert!(storage
                .read_all(Path::new("/d/zz"), 4)
                .await
                .unwrap()
                .is_none());

            // A handle follows its inode across a rename that replaces the target.
            let b = storage.open(Path::new("/d/b")).await.unwrap().unwrap();
            storage
                .rename(Path::new("/d/a"), Path::new("/d/b"))
                .await
                .unwrap();
            assert_eq!(b.size().await.unwrap(), 0);
            assert_eq!(storage.list(Path::new("/d")).await.unwrap(), ["b", "sub"]);

            storage.remove(Path::new("/d/b")).await.unwrap();
            storage.remove(Path::new("/d/b")).await.unwrap();
            storage.remove_dir_all(Path::new("/d")).await.unwrap();
            assert!(storage.list(Path::new("/")).await.unwrap().is_empty());
        });
    }

    #[test]
    #[should_panic(expected = "not aligned")]
    fn unaligned_write_panics() {
        block_on(async {
            let storage = MemoryStorage::new();
            let file = storage.create(Path::new("f")).await.unwrap();
            let _ = file.write_at(block(1), 100).await;
        });
    }
}
