//! `FaultyStorage`: the memory model plus the faults a real disk produces, all chosen
//! deterministically from a `u64` seed so that a failing simulation replays exactly.
//!
//! Owns, for each file (inode): `current` content (what reads see), `durable` content
//! (as of the last `fdatasync`) and the writes issued since, in order.
//!
//! Invariants:
//! - After `fdatasync`, `durable == current` and the unsynced list is empty.
//! - `crash` keeps, per file, the durable content plus the first k unsynced writes
//!   (k drawn from 0..=n), plus possibly a random prefix of write k+1 (a torn write).
//!   Handles opened before a crash fail every later operation with `EIO`.
//! - Simplification: metadata operations (`create`, `remove`, `rename`, `truncate`,
//!   `pre_allocate`, `create_dir_all`, `remove_dir_all`) are durable immediately;
//!   `truncate` also clips the unsynced writes so a crash cannot resurrect cut data.
//! - A failed operation is not assumed to have had no effect:
//!   - a failed `fdatasync` (injected fault) settles the file's unsynced writes as a
//!     crash would (a random prefix reaches the device, the next may be torn, the rest
//!     is lost for good), yet reads keep seeing them (the page cache) and a later
//!     `fdatasync` succeeds without bringing them back: Linux's "fsyncgate". Until
//!     the next crash `current` may differ from `durable` after a sync;
//!   - a failed `write_at` (injected fault) may have written a random prefix of its
//!     buffer (an unsynced, torn write);
//!   - other failed operations, and every operation on a stale handle, have no effect.
//! - `fdatasync` takes effect when it starts; [`FaultyStorage::set_sync_yields`] makes
//!   it yield to the executor before returning, so other tasks run while a sync is
//!   in flight (as they do during a real fdatasync).
//! - A stalled disk: [`FaultyStorage::hold_writes`], [`FaultyStorage::hold_syncs`] and
//!   [`FaultyStorage::hold_reads`] make those operations wait (yielding) until released;
//!   a held write or sync takes effect when released. Spawned writes run when their
//!   ticket is first polled.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;

use super::memory::{check_size, read_from, write_into, MemBuf, Namespace};
use super::{assert_write_aligned, Storage, StorageFile, WriteBuf};
use crate::io_error::IoError;

/// The error every operation returns once a fault is armed and due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// `EIO`: the device failed.
    Eio,
    /// `ENOSPC`: the device is full.
    NoSpace,
}

impl FaultKind {
    fn errno(self) -> i32 {
        match self {
            FaultKind::Eio => libc::EIO,
            FaultKind::NoSpace => libc::ENOSPC,
        }
    }
}

/// SplitMix64: a tiny, good-enough deterministic PRNG.
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`); the modulo bias is irrelevant here.
    fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        self.next_u64() % n
    }
}

#[derive(Debug, Default)]
struct Inode {
    current: Vec<u8>,
    durable: Vec<u8>,
    unsynced: Vec<(u64, Vec<u8>)>,
    /// A failed fdatasync dropped writes that reads still see: `current` and
    /// `durable` may differ after a sync until the next crash.
    lost_writes: bool,
}

impl Inode {
    fn truncate(&mut self, len: u64) {
        self.current.resize(len as usize, 0);
        self.durable.resize(len as usize, 0);
        self.unsynced.retain_mut(|(pos, data)| {
            data.truncate(len.saturating_sub(*pos).min(data.len() as u64) as usize);
            !data.is_empty()
        });
    }

    fn sync(&mut self) {
        for (pos, data) in self.unsynced.drain(..) {
            write_into(&mut self.durable, pos, &data);
        }
        debug_assert!(self.lost_writes || self.durable == self.current);
    }

    /// The device keeps the first `keep` unsynced writes and `torn` bytes of
    /// the next; the others never reach it.
    fn settle_unsynced(&mut self, keep: usize, torn: usize) {
        let mut unsynced = std::mem::take(&mut self.unsynced).into_iter();
        for (pos, data) in unsynced.by_ref().take(keep) {
            write_into(&mut self.durable, pos, &data);
        }
        if let Some((pos, data)) = unsynced.next() {
            write_into(&mut self.durable, pos, &data[..torn]);
        }
    }

    /// Power loss: unsynced writes settle as drawn, reads see the device.
    fn crash(&mut self, keep: usize, torn: usize) {
        self.settle_unsynced(keep, torn);
        self.current.clone_from(&self.durable);
        self.lost_writes = false;
    }

    /// A failed fdatasync: unsynced writes settle as in a crash, but reads
    /// still see them (fsyncgate).
    fn fail_sync(&mut self, keep: usize, torn: usize) {
        let had_unsynced = !self.unsynced.is_empty();
        self.settle_unsynced(keep, torn);
        self.lost_writes |= had_unsynced;
    }
}

#[derive(Debug)]
struct State {
    seed: u64,
    ns: Namespace<Inode>,
    rng: SplitMix64,
    /// Incremented by every crash; handles from older generations are dead.
    generation: u64,
    op_count: u64,
    /// Operations numbered above this fail with this kind.
    fault: Option<(u64, FaultKind)>,
    /// Times each `fdatasync` yields to the executor before it returns.
    sync_yields: u32,
    /// While set, writes (and syncs) wait before they take effect.
    writes_held: bool,
    syncs_held: bool,
    reads_held: bool,
}

impl State {
    /// Counts an operation and decides whether it fails.
    fn begin(
        &mut self,
        op: &'static str,
        path: &Path,
        generation: Option<u64>,
    ) -> Result<(), IoError> {
        self.op_count += 1;
        if generation.is_some_and(|g| g != self.generation) {
            return Err(IoError::from_errno(op, path, libc::EIO));
        }
        match self.fault {
            Some((after, kind)) if self.op_count > after => {
                Err(IoError::from_errno(op, path, kind.errno()))
            }
            _ => Ok(()),
        }
    }

    /// Draws how many of `unsynced` writes reach the device (`keep`) and how
    /// many bytes of the next one (`torn`, may be 0).
    fn draw_survivors(rng: &mut SplitMix64, unsynced: &[(u64, Vec<u8>)]) -> (usize, usize) {
        if unsynced.is_empty() {
            return (0, 0);
        }
        let keep = rng.below(unsynced.len() as u64 + 1) as usize;
        let torn = match unsynced.get(keep) {
            Some((_, data)) if rng.below(2) == 0 => rng.below(data.len() as u64) as usize,
            _ => 0,
        };
        (keep, torn)
    }

    fn crash(&mut self, lose_all: bool) {
        self.generation += 1;
        for (_, inode) in self.ns.files() {
            let mut inode = inode.borrow_mut();
            let (keep, torn) = if lose_all {
                (0, 0)
            } else {
                Self::draw_survivors(&mut self.rng, &inode.unsynced)
            };
            inode.crash(keep, torn);
        }
    }
}

/// A handle to a fault-injecting in-memory file system; clones share it.
#[derive(Debug, Clone)]
pub struct FaultyStorage {
    state: Rc<RefCell<State>>,
}

impl FaultyStorage {
    pub fn new(seed: u64) -> Self {
        let state = State {
            seed,
            ns: Namespace::default(),
            rng: SplitMix64(seed),
            generation: 0,
            op_count: 0,
            fault: None,
            sync_yields: 0,
            writes_held: false,
            syncs_held: false,
            reads_held: false,
        };
        Self {
            state: Rc::new(RefCell::new(state)),
        }
    }

    /// The seed this storage was created with (print it when a test fails).
    pub fn seed(&self) -> u64 {
        self.state.borrow().seed
    }

    /// After `ops` more operations, every operation fails with `kind` until
    /// [`Self::clear_faults`].
    pub fn fail_after(&self, ops: u64, kind: FaultKind) {
        let mut state = self.state.borrow_mut();
        state.fault = Some((state.op_count + ops, kind));
    }

    pub fn clear_faults(&self) {
        self.state.borrow_mut().fault = None;
    }

    /// Every later `fdatasync` yields to the executor `n` times before it
    /// returns (it takes effect when it starts), so tests can interleave other
    /// operations with a sync in flight.
    pub fn set_sync_yields(&self, n: u32) {
        self.state.borrow_mut().sync_yields = n;
    }

    /// While `held`, every `write_at` (and spawned write) waits, yielding to
    /// the executor, before it takes effect: a disk that stalls. Tests use it
    /// to show what does not wait for a write.
    pub fn hold_writes(&self, held: bool) {
        self.state.borrow_mut().writes_held = held;
    }

    /// While `held`, every `read_at` waits before it reads.
    pub fn hold_reads(&self, held: bool) {
        self.state.borrow_mut().reads_held = held;
    }

    /// While `held`, every `fdatasync` waits before it takes effect.
    pub fn hold_syncs(&self, held: bool) {
        self.state.borrow_mut().syncs_held = held;
    }

    /// Simulates power loss: unsynced writes are kept up to a random point, the next
    /// one may be torn, and every open handle becomes invalid.
    pub fn crash(&self) {
        self.state.borrow_mut().crash(false);
    }

    /// Power loss that loses every unsynced write, with no tearing.
    pub fn crash_lose_all_unsynced(&self) {
        self.state.borrow_mut().crash(true);
    }

    /// A process crash (kill -9): every completed write stays, synced or
    /// not (O_DIRECT writes are on the device); open handles die.
    pub fn crash_process(&self) {
        let mut state = self.state.borrow_mut();
        state.generation += 1;
        for (_, inode) in state.ns.files() {
            let mut inode = inode.borrow_mut();
            let n = inode.unsynced.len();
            inode.crash(n, 0);
        }
    }

    /// Flips one bit of the byte at `pos` in both the durable and the current content.
    /// Panics if the file does not exist or is shorter than `pos` (a test bug).
    pub fn corrupt_byte(&self, path: &Path, pos: u64) {
        let mut state = self.state.borrow_mut();
        let bit = 1u8 << state.rng.below(8);
        let inode = state
            .ns
            .open(path)
            .ok()
            .flatten()
            .expect("corrupt_byte: no such file");
        let inode = &mut *inode.borrow_mut();
        let pos = pos as usize;
        assert!(
            pos < inode.current.len().max(inode.durable.len()),
            "corrupt_byte past end"
        );
        for content in [&mut inode.current, &mut inode.durable] {
            if let Some(byte) = content.get_mut(pos) {
                *byte ^= bit;
            }
        }
    }

    /// Operations counted so far (storage and file operations, failed ones included).
    pub fn op_count(&self) -> u64 {
        self.state.borrow().op_count
    }

    fn begin(&self, op: &'static str, path: &Path) -> Result<(), IoError> {
        self.state.borrow_mut().begin(op, path, None)
    }

    fn file(&self, path: &Path, inode: Rc<RefCell<Inode>>) -> FaultyFile {
        FaultyFile {
            state: self.state.clone(),
            inode,
            path: path.to_path_buf(),
            generation: self.state.borrow().generation,
        }
    }
}

/// An open file of a [`FaultyStorage`]; dead after a crash.
#[derive(Debug)]
pub struct FaultyFile {
    state: Rc<RefCell<State>>,
    inode: Rc<RefCell<Inode>>,
    path: PathBuf,
    generation: u64,
}

impl FaultyFile {
    fn begin(&self, op: &'static str) -> Result<(), IoError> {
        self.state
            .borrow_mut()
            .begin(op, &self.path, Some(self.generation))
    }

    /// True while no crash has invalidated this handle: only then can a
    /// failed operation still touch the file.
    fn is_live(&self) -> bool {
        self.state.borrow().generation == self.generation
    }
}

impl Storage for FaultyStorage {
    type File = FaultyFile;

    async fn create(&self, path: &Path) -> Result<FaultyFile, IoError> {
        self.begin("create", path)?;
        let inode = self.state.borrow_mut().ns.create(path)?;
        Ok(self.file(path, inode))
    }

    async fn open(&self, path: &Path) -> Result<Option<FaultyFile>, IoError> {
        self.begin("open", path)?;
        let inode = self.state.borrow().ns.open(path)?;
        Ok(inode.map(|inode| self.file(path, inode)))
    }

    async fn remove(&self, path: &Path) -> Result<(), IoError> {
        self.begin("remove", path)?;
        self.state.borrow_mut().ns.remove(path)
    }

    async fn rename(&self, from: &Path, to: &Path) -> Result<(), IoError> {
        self.begin("rename", from)?;
        self.state.borrow_mut().ns.rename(from, to)
    }

    async fn list(&self, dir: &Path) -> Result<Vec<String>, IoError> {
        self.begin("list", dir)?;
        self.state.borrow().ns.list(dir)
    }

    async fn create_dir_all(&self, dir: &Path) -> Result<(), IoError> {
        self.begin("create_dir_all", dir)?;
        self.state.borrow_mut().ns.create_dir_all(dir)
    }

    async fn remove_dir_all(&self, dir: &Path) -> Result<(), IoError> {
        self.begin("remove_dir_all", dir)?;
        self.state.borrow_mut().ns.remove_dir_all(dir)
    }
}

impl StorageFile for FaultyFile {
    type Buf = MemBuf;
    type WriteTicket = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), IoError>>>>;

    fn spawn_write(self: std::rc::Rc<Self>, buf: MemBuf, pos: u64) -> Self::WriteTicket {
        assert_write_aligned(pos, buf.len());
        // The model's write runs when its ticket is polled (at once unless
        // writes are held), deterministically.
        Box::pin(async move { self.write_at(buf, pos).await })
    }

    fn spawn_pre_allocate(self: std::rc::Rc<Self>, len_bytes: u64) -> Self::WriteTicket {
        Box::pin(async move { self.pre_allocate(len_bytes).await })
    }

    fn alloc_buf(&self, len: usize) -> MemBuf {
        MemBuf::filled(len, 0xA5)
    }

    async fn write_at(&self, buf: MemBuf, pos: u64) -> Result<(), IoError> {
        assert_write_aligned(pos, buf.len());
        while self.state.borrow().writes_held {
            futures_lite::future::yield_now().await;
        }
        let began = self.begin("write_at");
        check_size("write_at", &self.path, pos + buf.len() as u64)?;
        let mut data = buf.0;
        if let Err(e) = began {
            if !self.is_live() {
                return Err(e);
            }
            // An injected fault: a prefix of the write may have landed.
            let landed = {
                let rng = &mut self.state.borrow_mut().rng;
                if rng.below(2) == 0 {
                    0
                } else {
                    rng.below(data.len() as u64 + 1) as usize
                }
            };
            data.truncate(landed);
            if !data.is_empty() {
                let mut inode = self.inode.borrow_mut();
                write_into(&mut inode.current, pos, &data);
                inode.unsynced.push((pos, data));
            }
            return Err(e);
        }
        let mut inode = self.inode.borrow_mut();
        write_into(&mut inode.current, pos, &data);
        inode.unsynced.push((pos, data));
        Ok(())
    }

    async fn read_at(&self, pos: u64, len: usize) -> Result<Bytes, IoError> {
        while self.state.borrow().reads_held {
            futures_lite::future::yield_now().await;
        }
        self.begin("read_at")?;
        Ok(read_from(&self.inode.borrow().current, pos, len))
    }

    async fn fdatasync(&self) -> Result<(), IoError> {
        while self.state.borrow().syncs_held {
            futures_lite::future::yield_now().await;
        }
        let began = self.begin("fdatasync");
        match &began {
            Ok(()) => self.inode.borrow_mut().sync(),
            Err(_) if self.is_live() => {
                let mut inode = self.inode.borrow_mut();
                let (keep, torn) =
                    State::draw_survivors(&mut self.state.borrow_mut().rng, &inode.unsynced);
                inode.fail_sync(keep, torn);
            }
            Err(_) => {}
        }
        let yields = self.state.borrow().sync_yields;
        for _ in 0..yields {
            futures_lite::future::yield_now().await;
        }
        began
    }

    async fn pre_allocate(&self, len_bytes: u64) -> Result<(), IoError> {
        self.begin("pre_allocate")?;
        check_size("pre_allocate", &self.path, len_bytes)?;
        // Zero-extending the size is metadata: durable at once in this model.
        let mut inode = self.inode.borrow_mut();
        if (inode.current.len() as u64) < len_bytes {
            inode.truncate(len_bytes);
        }
        Ok(())
    }

    async fn truncate(&self, len_bytes: u64) -> Result<(), IoError> {
        self.begin("truncate")?;
        check_size("truncate", &self.path, len_bytes)?;
        self.inode.borrow_mut().truncate(len_bytes);
        Ok(())
    }

    async fn size(&self) -> Result<u64, IoError> {
        self.begin("size")?;
        Ok(self.inode.borrow().current.len() as u64)
    }

    async fn close(self) -> Result<(), IoError> {
        self.begin("close")
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

    const B: u64 = BLOCK_BYTES as u64;

    fn block(byte: u8) -> MemBuf {
        MemBuf(vec![byte; BLOCK_BYTES])
    }

    async fn content(storage: &FaultyStorage, path: &str) -> Vec<u8> {
        let file = storage.open(Path::new(path)).await.unwrap().unwrap();
        let size = file.size().await.unwrap() as usize;
        file.read_at(0, size).await.unwrap().to_vec()
    }

    #[test]
    fn synced_data_survives_crash_and_old_handles_die() {
        block_on(async {
            let storage = FaultyStorage::new(1);
            let file = storage.create(Path::new("f")).await.unwrap();
            file.write_at(block(1), 0).await.unwrap();
            file.fdatasync().await.unwrap();
            file.write_at(block(2), B).await.unwrap();
            storage.crash_lose_all_unsynced();
            assert_eq!(content(&storage, "f").await, vec![1; BLOCK_BYTES]);
            let stale = file.read_at(0, 1).await.unwrap_err();
            assert_eq!(stale.source.raw_os_error(), Some(libc::EIO));
        });
    }

    #[test]
    fn crash_keeps_a_prefix_of_unsynced_writes_and_may_tear_the_next() {
        let (mut lost, mut kept, mut torn) = (0, 0, 0);
        for seed in 0..200 {
            block_on(async {
                let storage = FaultyStorage::new(seed);
                let file = storage.create(Path::new("f")).await.unwrap();
                file.write_at(block(1), 0).await.unwrap();
                file.fdatasync().await.unwrap();
                file.write_at(block(2), 0).await.unwrap();
                file.write_at(block(3), B).await.unwrap();
                storage.crash();
                let data = content(&storage, "f").await;
                let (first, second) = data.split_at(BLOCK_BYTES);
                // Write 1 lands whole, torn (a prefix of 2s) or not at all.
                let twos = first.iter().take_while(|&&b| b == 2).count();
                assert!(first[twos..].iter().all(|&b| b == 1), "seed {seed}");
                // Write 2 lands only if write 1 landed whole, and then as a prefix.
                assert!(second.iter().all(|&b| b == 3), "seed {seed}");
                assert!(second.is_empty() || twos == BLOCK_BYTES, "seed {seed}");
                let partial = |n: usize| n > 0 && n < BLOCK_BYTES;
                if twos == 0 {
                    lost += 1;
                } else if second.len() == BLOCK_BYTES {
                    kept += 1;
                } else if partial(twos) || partial(second.len()) {
                    torn += 1;
                }
            });
        }
        assert!(lost > 0 && kept > 0 && torn > 0, "{lost} {kept} {torn}");
    }

    #[test]
    fn truncate_is_durable_and_clips_unsynced_writes() {
        block_on(async {
            let storage = FaultyStorage::new(7);
            let file = storage.create(Path::new("f")).await.unwrap();
            file.write_at(block(5), 0).await.unwrap();
            file.write_at(block(6), B).await.unwrap();
            file.truncate(100).await.unwrap();
            file.fdatasync().await.unwrap();
            storage.crash();
            assert_eq!(content(&storage, "f").await, vec![5; 100]);
        });
    }

    #[test]
    fn fail_after_injects_errors_until_cleared() {
        block_on(async {
            let storage = FaultyStorage::new(3);
            let file = storage.create(Path::new("f")).await.unwrap();
            storage.fail_after(1, FaultKind::NoSpace);
            file.write_at(block(1), 0).await.unwrap();
            let err = file.write_at(block(2), B).await.unwrap_err();
            assert!(err.is_no_space());
            assert_eq!(err.op, "write_at");
            assert_eq!(
                file.size().await.unwrap_err().source.raw_os_error(),
                Some(libc::ENOSPC)
            );

            storage.fail_after(0, FaultKind::Eio);
            let err = storage.list(Path::new("")).await.unwrap_err();
            assert!(!err.is_no_space());
            assert_eq!(err.source.raw_os_error(), Some(libc::EIO));

            storage.clear_faults();
            // At most a prefix of the failed write landed.
            let size = file.size().await.unwrap();
            assert!((B..=2 * B).contains(&size), "{size}");
            assert_eq!(storage.op_count(), 6);
        });
    }

    #[test]
    fn a_failed_fdatasync_loses_unsynced_writes_that_a_later_sync_cannot_save() {
        let (mut lost, mut kept) = (0, 0);
        for seed in 0..100 {
            block_on(async {
                let storage = FaultyStorage::new(seed);
                let file = storage.create(Path::new("f")).await.unwrap();
                file.write_at(block(1), 0).await.unwrap();
                file.fdatasync().await.unwrap();
                file.write_at(block(2), B).await.unwrap();
                storage.fail_after(0, FaultKind::Eio);
                file.fdatasync().await.unwrap_err();
                storage.clear_faults();
                // Reads still see the write (the page cache), and a retried
                // sync reports success...
                assert_eq!(content(&storage, "f").await[B as usize], 2);
                file.fdatasync().await.unwrap();
                // ...but what the failed sync dropped stays dropped.
                storage.crash_lose_all_unsynced();
                let data = content(&storage, "f").await;
                assert!(data[..BLOCK_BYTES].iter().all(|&b| b == 1), "seed {seed}");
                if data[BLOCK_BYTES..].iter().all(|&b| b == 2) && data.len() == 2 * BLOCK_BYTES {
                    kept += 1;
                } else {
                    lost += 1;
                }
            });
        }
        assert!(lost > 0 && kept > 0, "{lost} {kept}");
    }

    #[test]
    fn a_failed_write_may_land_a_prefix_and_a_sync_may_yield() {
        let mut landed = 0;
        for seed in 0..50 {
            block_on(async {
                let storage = FaultyStorage::new(seed);
                let file = storage.create(Path::new("f")).await.unwrap();
                storage.fail_after(0, FaultKind::NoSpace);
                file.write_at(block(3), 0).await.unwrap_err();
                storage.clear_faults();
                let data = content(&storage, "f").await;
                assert!(data.iter().all(|&b| b == 3), "seed {seed}");
                landed += usize::from(!data.is_empty());
            });
        }
        assert!(landed > 0 && landed < 50, "{landed}");
        block_on(async {
            let storage = FaultyStorage::new(1);
            storage.set_sync_yields(2);
            let file = storage.create(Path::new("f")).await.unwrap();
            let mut polls = 0;
            use std::future::Future;
            let mut sync = std::pin::pin!(file.fdatasync());
            let waker = std::task::Waker::noop();
            let mut cx = std::task::Context::from_waker(waker);
            while sync.as_mut().poll(&mut cx).is_pending() {
                polls += 1;
            }
            assert_eq!(polls, 2);
        });
    }

    #[test]
    fn corrupt_byte_flips_one_bit_durably() {
        block_on(async {
            let storage = FaultyStorage::new(9);
            storage
                .write_atomic(Path::new("meta"), b"abc")
                .await
                .unwrap();
            storage.corrupt_byte(Path::new("meta"), 1);
            storage.crash();
            let data = storage
                .read_all(Path::new("meta"), 10)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(data[0], b'a');
            assert_eq!((data[1] ^ b'b').count_ones(), 1);
        });
    }
}
