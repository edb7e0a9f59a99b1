//! [`AnyStorage`]: the O_DIRECT storage or the in-memory model, chosen when a
//! server starts, behind one concrete type.
//!
//! The server codes against one partition type (`Partition<AnyStorage>`), so
//! the same shards run over O_DIRECT files in production and over
//! [`MemoryStorage`] in in-process tests, without making every server module
//! generic over the storage.
//!
//! Invariants:
//! - A file, buffer or ticket is always of the same kind as the storage that
//!   made it; mixing kinds (a memory buffer written to a DMA file) is a
//!   programmer error and panics.
//! - Dispatch costs one branch per operation; nothing is copied.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;

use super::{
    DmaBuf, DmaStorage, DmaStorageFile, IoError, MemBuf, MemFile, MemoryStorage, Storage,
    StorageFile, WriteBuf,
};

/// O_DIRECT files or the in-memory model.
#[derive(Debug, Clone)]
pub enum AnyStorage {
    Dma(DmaStorage),
    Memory(MemoryStorage),
}

impl AnyStorage {
    /// Direct I/O on the local file system (what `strom-server` runs on).
    pub fn dma() -> Self {
        AnyStorage::Dma(DmaStorage::new())
    }

    /// A fresh in-memory file system (lost when the last clone is dropped).
    pub fn memory() -> Self {
        AnyStorage::Memory(MemoryStorage::new())
    }

    pub fn is_memory(&self) -> bool {
        matches!(self, AnyStorage::Memory(_))
    }
}

/// A file of an [`AnyStorage`]. The variants hold `Rc`s because the
/// background writes of [`StorageFile::spawn_write`] need a shared handle
/// of the inner kind.
#[derive(Debug)]
pub enum AnyFile {
    Dma(Rc<DmaStorageFile>),
    Memory(Rc<MemFile>),
}

/// A write buffer of an [`AnyFile`].
#[derive(Debug)]
pub enum AnyBuf {
    Dma(DmaBuf),
    Memory(MemBuf),
}

/// A background write of an [`AnyFile`].
pub enum AnyTicket {
    Dma(glommio::Task<Result<(), IoError>>),
    Memory(std::future::Ready<Result<(), IoError>>),
}

impl Future for AnyTicket {
    type Output = Result<(), IoError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Both variants are Unpin (a glommio task handle, a ready value).
        match self.get_mut() {
            AnyTicket::Dma(t) => Pin::new(t).poll(cx),
            AnyTicket::Memory(t) => Pin::new(t).poll(cx),
        }
    }
}

fn kinds_mixed() -> ! {
    panic!("a buffer of one storage kind used with a file of another")
}

impl WriteBuf for AnyBuf {
    fn as_slice(&self) -> &[u8] {
        match self {
            AnyBuf::Dma(b) => b.as_slice(),
            AnyBuf::Memory(b) => b.as_slice(),
        }
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        match self {
            AnyBuf::Dma(b) => b.as_mut_slice(),
            AnyBuf::Memory(b) => b.as_mut_slice(),
        }
    }
    fn len(&self) -> usize {
        match self {
            AnyBuf::Dma(b) => b.len(),
            AnyBuf::Memory(b) => b.len(),
        }
    }
    fn trim_to(&mut self, len: usize) {
        match self {
            AnyBuf::Dma(b) => b.trim_to(len),
            AnyBuf::Memory(b) => b.trim_to(len),
        }
    }
}

impl Storage for AnyStorage {
    type File = AnyFile;

    async fn create(&self, path: &Path) -> Result<AnyFile, IoError> {
        match self {
            AnyStorage::Dma(s) => Ok(AnyFile::Dma(Rc::new(s.create(path).await?))),
            AnyStorage::Memory(s) => Ok(AnyFile::Memory(Rc::new(s.create(path).await?))),
        }
    }

    async fn open(&self, path: &Path) -> Result<Option<AnyFile>, IoError> {
        match self {
            AnyStorage::Dma(s) => Ok(s.open(path).await?.map(|f| AnyFile::Dma(Rc::new(f)))),
            AnyStorage::Memory(s) => Ok(s.open(path).await?.map(|f| AnyFile::Memory(Rc::new(f)))),
        }
    }

    async fn remove(&self, path: &Path) -> Result<(), IoError> {
        match self {
            AnyStorage::Dma(s) => s.remove(path).await,
            AnyStorage::Memory(s) => s.remove(path).await,
        }
    }

    async fn rename(&self, from: &Path, to: &Path) -> Result<(), IoError> {
        match self {
            AnyStorage::Dma(s) => s.rename(from, to).await,
            AnyStorage::Memory(s) => s.rename(from, to).await,
        }
    }

    async fn list(&self, dir: &Path) -> Result<Vec<String>, IoError> {
        match self {
            AnyStorage::Dma(s) => s.list(dir).await,
            AnyStorage::Memory(s) => s.list(dir).await,
        }
    }

    async fn create_dir_all(&self, dir: &Path) -> Result<(), IoError> {
        match self {
            AnyStorage::Dma(s) => s.create_dir_all(dir).await,
            AnyStorage::Memory(s) => s.create_dir_all(dir).await,
        }
    }

    async fn remove_dir_all(&self, dir: &Path) -> Result<(), IoError> {
        match self {
            AnyStorage::Dma(s) => s.remove_dir_all(dir).await,
            AnyStorage::Memory(s) => s.remove_dir_all(dir).await,
        }
    }

    async fn write_atomic(&self, path: &Path, data: &[u8]) -> Result<(), IoError> {
        match self {
            AnyStorage::Dma(s) => s.write_atomic(path, data).await,
            AnyStorage::Memory(s) => s.write_atomic(path, data).await,
        }
    }

    async fn free_bytes(&self, dir: &Path) -> Result<Option<u64>, IoError> {
        match self {
            AnyStorage::Dma(s) => s.free_bytes(dir).await,
            AnyStorage::Memory(s) => s.free_bytes(dir).await,
        }
    }

    async fn read_all(&self, path: &Path, max_bytes: usize) -> Result<Option<Bytes>, IoError> {
        match self {
            AnyStorage::Dma(s) => s.read_all(path, max_bytes).await,
            AnyStorage::Memory(s) => s.read_all(path, max_bytes).await,
        }
    }
}

impl StorageFile for AnyFile {
    type Buf = AnyBuf;
    type WriteTicket = AnyTicket;

    fn spawn_write(self: Rc<Self>, buf: AnyBuf, pos: u64) -> AnyTicket {
        match (&*self, buf) {
            (AnyFile::Dma(f), AnyBuf::Dma(b)) => AnyTicket::Dma(f.clone().spawn_write(b, pos)),
            (AnyFile::Memory(f), AnyBuf::Memory(b)) => {
                AnyTicket::Memory(f.clone().spawn_write(b, pos))
            }
            _ => kinds_mixed(),
        }
    }

    fn spawn_pre_allocate(self: Rc<Self>, len_bytes: u64) -> AnyTicket {
        match &*self {
            AnyFile::Dma(f) => AnyTicket::Dma(f.clone().spawn_pre_allocate(len_bytes)),
            AnyFile::Memory(f) => AnyTicket::Memory(f.clone().spawn_pre_allocate(len_bytes)),
        }
    }

    fn alloc_buf(&self, len: usize) -> AnyBuf {
        match self {
            AnyFile::Dma(f) => AnyBuf::Dma(f.alloc_buf(len)),
            AnyFile::Memory(f) => AnyBuf::Memory(f.alloc_buf(len)),
        }
    }

    async fn write_at(&self, buf: AnyBuf, pos: u64) -> Result<(), IoError> {
        match (self, buf) {
            (AnyFile::Dma(f), AnyBuf::Dma(b)) => f.write_at(b, pos).await,
            (AnyFile::Memory(f), AnyBuf::Memory(b)) => f.write_at(b, pos).await,
            _ => kinds_mixed(),
        }
    }

    async fn read_at(&self, pos: u64, len: usize) -> Result<Bytes, IoError> {
        match self {
            AnyFile::Dma(f) => f.read_at(pos, len).await,
            AnyFile::Memory(f) => f.read_at(pos, len).await,
        }
    }

    async fn fdatasync(&self) -> Result<(), IoError> {
        match self {
            AnyFile::Dma(f) => f.fdatasync().await,
            AnyFile::Memory(f) => f.fdatasync().await,
        }
    }

    async fn pre_allocate(&self, len_bytes: u64) -> Result<(), IoError> {
        match self {
            AnyFile::Dma(f) => f.pre_allocate(len_bytes).await,
            AnyFile::Memory(f) => f.pre_allocate(len_bytes).await,
        }
    }

    async fn write_zeros(&self, from: u64, to: u64) -> Result<(), IoError> {
        match self {
            AnyFile::Dma(f) => f.write_zeros(from, to).await,
            AnyFile::Memory(f) => f.write_zeros(from, to).await,
        }
    }

    async fn truncate(&self, len_bytes: u64) -> Result<(), IoError> {
        match self {
            AnyFile::Dma(f) => f.truncate(len_bytes).await,
            AnyFile::Memory(f) => f.truncate(len_bytes).await,
        }
    }

    async fn size(&self) -> Result<u64, IoError> {
        match self {
            AnyFile::Dma(f) => f.size().await,
            AnyFile::Memory(f) => f.size().await,
        }
    }

    async fn close(self) -> Result<(), IoError> {
        // A background write still holding the handle keeps the file open
        // until it ends; the file is then closed when its last handle drops.
        match self {
            AnyFile::Dma(f) => match Rc::try_unwrap(f) {
                Ok(f) => f.close().await,
                Err(_still_writing) => Ok(()),
            },
            AnyFile::Memory(f) => match Rc::try_unwrap(f) {
                Ok(f) => f.close().await,
                Err(_still_writing) => Ok(()),
            },
        }
    }

    fn path(&self) -> &Path {
        match self {
            AnyFile::Dma(f) => f.path(),
            AnyFile::Memory(f) => f.path(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_kind_writes_reads_and_renames_through_the_enum() {
        futures_lite::future::block_on(async {
            let s = AnyStorage::memory();
            assert!(s.is_memory());
            s.create_dir_all(Path::new("/d")).await.unwrap();
            let f = Rc::new(s.create(Path::new("/d/a")).await.unwrap());
            let mut buf = f.alloc_buf(4096);
            buf.as_mut_slice().fill(7);
            f.clone().spawn_write(buf, 0).await.unwrap();
            f.fdatasync().await.unwrap();
            assert_eq!(f.size().await.unwrap(), 4096);
            assert_eq!(&f.read_at(10, 3).await.unwrap()[..], &[7, 7, 7]);
            let f = Rc::try_unwrap(f).unwrap();
            f.close().await.unwrap();
            s.rename(Path::new("/d/a"), Path::new("/d/b"))
                .await
                .unwrap();
            assert_eq!(
                s.list(Path::new("/d")).await.unwrap(),
                vec!["b".to_string()]
            );
            let data = s
                .read_all(Path::new("/d/b"), 1 << 20)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(data.len(), 4096);
        });
    }
}
