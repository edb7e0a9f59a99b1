//! The glommio shell around one partition log on DMA files: serialized
//! access, group commit, background flushing and retention, long-poll
//! waiters. A `Partition` lives on the shard (executor) that opened it and is
//! never sent to another thread (`Rc` inside).
//!
//! Group commit: appends go into the log under a lock; a caller that needs
//! durability and is not covered by a sync already in flight becomes a
//! syncer: it writes everything pending, releases the lock, and runs one
//! fdatasync that covers every append made before it. Up to
//! `SYNCS_IN_FLIGHT_MAX` syncs overlap, so callers arriving during a sync
//! start the next one at once instead of waiting a whole round: N concurrent
//! durable appends cost a few fdatasyncs, not N, and each waits about one
//! round, not two.
//!
//! Invariants: `offsets` mirrors the log after every operation; the
//! published durable offset only grows, except that a truncation lowers it
//! with the high watermark; an fdatasync failure fails the log (fsyncgate:
//! the kernel may have dropped the dirty data), so nothing is ever
//! acknowledged as durable after a failed sync until a reopen recovers from
//! what is really on disk; a sync overtaken by a truncation publishes
//! nothing (`Log::complete_sync`), and its waiters get `Truncated`.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use event_listener::Event;

use crate::cache::TailCache;
use crate::config::{FlushPolicy, LogConfig};
use crate::error::EngineError;
use crate::log::{AppendInfo, Log, LogStats, Offsets, ReadBatch, RecoveryReport};
use crate::storage::{DmaStorage, Storage, StorageFile};

/// How far an append must get before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Accepted into memory (acks=0): lost on a process crash.
    Buffered,
    /// Handed to the disk with O_DIRECT (acks=1): survives a process crash.
    Written,
    /// fdatasync'd (acks=all): survives a power loss.
    Durable,
}

/// Overlapping fdatasyncs of one partition (pipelined group commit).
pub const SYNCS_IN_FLIGHT_MAX: usize = 2;

/// Upper bounds (µs, inclusive) of the fdatasync latency buckets; one more
/// bucket counts everything slower.
pub const SYNC_LATENCY_BOUNDS_US: [u64; 17] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];
/// Upper bounds (records, inclusive) of the group-commit size buckets: how
/// many records one fdatasync made durable.
pub const GROUP_COMMIT_BOUNDS_RECORDS: [u64; 14] = [
    1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1_024, 4_096, 16_384, 65_536,
];

/// The group-commit fdatasyncs of one partition since it was opened (the
/// ones `sync_to` runs; syncs inside a segment roll or close are counted in
/// `LogStats::fdatasyncs` only). Buckets are per bucket, not cumulative.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub fdatasyncs: u64,
    pub failures: u64,
    pub latency_us_sum: u64,
    pub latency_buckets: [u64; SYNC_LATENCY_BOUNDS_US.len() + 1],
    /// Records made durable by these fdatasyncs.
    pub records_sum: u64,
    pub records_buckets: [u64; GROUP_COMMIT_BOUNDS_RECORDS.len() + 1],
}

fn bucket_of(bounds: &[u64], v: u64) -> usize {
    bounds.iter().position(|&b| v <= b).unwrap_or(bounds.len())
}

impl SyncStats {
    fn observe(&mut self, latency: Duration, records: u64) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.fdatasyncs += 1;
        self.latency_us_sum = self.latency_us_sum.saturating_add(us);
        self.latency_buckets[bucket_of(&SYNC_LATENCY_BOUNDS_US, us)] += 1;
        self.records_sum += records;
        self.records_buckets[bucket_of(&GROUP_COMMIT_BOUNDS_RECORDS, records)] += 1;
    }
}

/// How often the background task looks at retention.
pub const RETENTION_CHECK_MS: u64 = 10_000;
/// Longest background sleep (bounds shutdown and policy reaction time).
const BACKGROUND_TICK_MS_MAX: u64 = 1_000;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

struct Inner<S: Storage> {
    log: async_lock::Mutex<Option<Log<S>>>,
    /// The log's tail cache: reads it can serve never wait for the log.
    cache: Rc<RefCell<TailCache>>,
    offsets: Cell<Offsets>,
    stats: Cell<LogStats>,
    sync_stats: RefCell<SyncStats>,
    flush_policy: Cell<FlushPolicy>,
    data_event: Event,
    sync_event: Event,
    syncs_in_flight: Cell<usize>,
    /// The highest offset that a sync in flight (or done) covers.
    sync_covered: Cell<u64>,
    closed: Cell<bool>,
    dir: PathBuf,
    recovery: RefCell<RecoveryReport>,
}

/// One partition, owned by one shard.
pub struct Partition<S: Storage = DmaStorage> {
    inner: Rc<Inner<S>>,
}

impl<S: Storage> Clone for Partition<S> {
    fn clone(&self) -> Self {
        Partition {
            inner: self.inner.clone(),
        }
    }
}

/// Counts a sync in flight and wakes waiters however it ends.
struct SyncGuard<'a, S: Storage>(&'a Inner<S>);

impl<'a, S: Storage> SyncGuard<'a, S> {
    fn new(inner: &'a Inner<S>) -> Self {
        inner.syncs_in_flight.set(inner.syncs_in_flight.get() + 1);
        SyncGuard(inner)
    }
}

impl<S: Storage> Drop for SyncGuard<'_, S> {
    fn drop(&mut self) {
        let n = self.0.syncs_in_flight.get();
        debug_assert!(n > 0);
        self.0.syncs_in_flight.set(n - 1);
        self.0.sync_event.notify(usize::MAX);
    }
}

impl Partition<DmaStorage> {
    /// Opens the partition in `dir` on O_DIRECT files, recovering if needed,
    /// and starts its background task on the current glommio executor.
    pub async fn open(dir: &Path, config: LogConfig) -> Result<Self, EngineError> {
        Self::open_on(DmaStorage::new(), dir, config, true).await
    }
}

impl<S: Storage> Partition<S> {
    /// Opens on any storage. `background` spawns the flush/retention task
    /// (needs a glommio executor).
    pub async fn open_on(
        storage: S,
        dir: &Path,
        config: LogConfig,
        background: bool,
    ) -> Result<Self, EngineError> {
        let policy = config.flush;
        let (log, report) = Log::open(storage, dir, config, now_ms()).await?;
        let inner = Rc::new(Inner {
            cache: log.tail_cache(),
            offsets: Cell::new(log.offsets()),
            stats: Cell::new(log.stats()),
            sync_stats: RefCell::new(SyncStats::default()),
            flush_policy: Cell::new(policy),
            log: async_lock::Mutex::new(Some(log)),
            data_event: Event::new(),
            sync_event: Event::new(),
            syncs_in_flight: Cell::new(0),
            sync_covered: Cell::new(0),
            closed: Cell::new(false),
            dir: dir.to_path_buf(),
            recovery: RefCell::new(report),
        });
        if background {
            let weak = Rc::downgrade(&inner);
            glommio::spawn_local(background_task(weak)).detach();
        }
        Ok(Partition { inner })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn recovery_report(&self) -> RecoveryReport {
        self.inner.recovery.borrow().clone()
    }

    pub fn offsets(&self) -> Offsets {
        self.inner.offsets.get()
    }

    pub fn stats(&self) -> LogStats {
        let mut s = self.inner.stats.get();
        // Reads served by the cache alone count there.
        let cache = self.inner.cache.borrow();
        s.cache_hits = cache.hits;
        s.cache_misses = cache.misses;
        s
    }

    /// Group-commit fdatasync counts, latencies and sizes.
    pub fn sync_stats(&self) -> SyncStats {
        self.inner.sync_stats.borrow().clone()
    }

    fn publish(&self, log: &Log<S>) {
        let before = self.inner.offsets.get();
        let now = log.offsets();
        debug_assert!(
            now.durable_offset >= before.durable_offset
                || now.high_watermark < before.high_watermark
        );
        self.inner.offsets.set(now);
        self.inner.stats.set(log.stats());
        if now.high_watermark != before.high_watermark {
            self.inner.data_event.notify(usize::MAX);
        }
    }

    /// Appends one producer frame and waits until it reached `durability`
    /// (or the flush policy's stronger requirement).
    pub async fn append(
        &self,
        frame: BytesMut,
        durability: Durability,
    ) -> Result<AppendInfo, EngineError> {
        let info = {
            let mut guard = self.inner.log.lock().await;
            let log = guard.as_mut().ok_or(EngineError::Closed)?;
            let info = log.append(frame, now_ms()).await?;
            self.publish(log);
            info
        };
        let target = info.last_offset + 1;
        let durable = durability == Durability::Durable
            || self.inner.flush_policy.get() == FlushPolicy::EveryAppend;
        if durable {
            self.sync_to(target).await?;
        } else if durability == Durability::Written {
            self.write_to(target).await?;
        }
        Ok(info)
    }

    async fn write_to(&self, target: u64) -> Result<(), EngineError> {
        if self.inner.offsets.get().written_offset >= target {
            return Ok(());
        }
        let mut guard = self.inner.log.lock().await;
        let log = guard.as_mut().ok_or(EngineError::Closed)?;
        let r = log.write_pending().await;
        self.publish(log);
        r
    }

    /// Waits until every offset below `target` is durable (group commit).
    pub async fn sync_to(&self, target: u64) -> Result<(), EngineError> {
        let mut yielded = false;
        loop {
            if self.inner.offsets.get().durable_offset >= target {
                return Ok(());
            }
            let in_flight = self.inner.syncs_in_flight.get();
            let covered = in_flight > 0 && self.inner.sync_covered.get() >= target;
            if covered || in_flight >= SYNCS_IN_FLIGHT_MAX {
                // A sync in flight covers us, or the pipeline is full: wait
                // for one to finish and look again.
                let listener = self.inner.sync_event.listen();
                if self.inner.syncs_in_flight.get() != in_flight {
                    continue;
                }
                listener.await;
                continue;
            }
            if !yielded {
                // Let the other appenders that are ready to run append first,
                // so this sync covers them too: woken together by the last
                // sync, they would otherwise trickle into one sync each.
                yielded = true;
                futures_lite::future::yield_now().await;
                continue;
            }
            let _guard = SyncGuard::new(&self.inner);
            let sync = {
                let mut guard = self.inner.log.lock().await;
                let log = guard.as_mut().ok_or(EngineError::Closed)?;
                let r = log.write_pending().await;
                self.publish(log);
                r?;
                log.sync_target()
            };
            self.inner
                .sync_covered
                .set(self.inner.sync_covered.get().max(sync.offset));
            let high_watermark = self.inner.offsets.get().high_watermark;
            if sync.offset < target && high_watermark < target {
                // The log was truncated below the target meanwhile.
                return Err(EngineError::Truncated {
                    offset: target,
                    high_watermark,
                });
            }
            let durable_before = self.inner.offsets.get().durable_offset;
            let started = std::time::Instant::now();
            let synced = sync.file.fdatasync().await;
            let took = started.elapsed();
            let mut guard = self.inner.log.lock().await;
            let log = guard.as_mut().ok_or(EngineError::Closed)?;
            if synced.is_ok() {
                self.inner
                    .sync_stats
                    .borrow_mut()
                    .observe(took, sync.offset.saturating_sub(durable_before));
            } else {
                self.inner.sync_stats.borrow_mut().failures += 1;
            }
            // A failure fails the log; a sync that a truncation or roll
            // overtook publishes nothing (the loop looks again).
            let r = log.complete_sync(&sync, synced);
            self.publish(log);
            r?;
            let r = log.maybe_checkpoint().await;
            self.publish(log);
            r?;
        }
    }

    /// Writes and fdatasyncs everything appended so far.
    pub async fn flush(&self) -> Result<u64, EngineError> {
        let target = self.inner.offsets.get().high_watermark;
        self.sync_to(target).await?;
        Ok(self.inner.offsets.get().durable_offset)
    }

    /// Whole frames from the one holding `from_offset`, up to `max_bytes`.
    /// A read the tail cache can serve is answered at once, whatever the log
    /// is doing (a write, an fdatasync, a roll); others go through the log.
    pub async fn read(&self, from_offset: u64, max_bytes: usize) -> Result<ReadBatch, EngineError> {
        if let Some(batch) = self.read_cached(from_offset, max_bytes) {
            return Ok(batch);
        }
        let mut guard = self.inner.log.lock().await;
        let log = guard.as_mut().ok_or(EngineError::Closed)?;
        let r = log.read(from_offset, max_bytes).await;
        self.publish(log);
        r
    }

    /// A read served by the tail cache alone (synchronous: no borrow crosses
    /// an await), or None. The published offsets bound it: frames are
    /// cached when appended, before their offsets are published.
    fn read_cached(&self, from_offset: u64, max_bytes: usize) -> Option<ReadBatch> {
        let o = self.inner.offsets.get();
        if self.inner.closed.get() || from_offset < o.log_start_offset {
            return None;
        }
        let mut cache = self.inner.cache.borrow_mut();
        if cache.failed {
            return None;
        }
        let frames = cache.read(from_offset, o.high_watermark, max_bytes)?;
        Some(ReadBatch {
            frames,
            high_watermark: o.high_watermark,
            log_start_offset: o.log_start_offset,
        })
    }

    /// Resolves once the high watermark is above `offset` (or the partition closes).
    pub async fn wait_for(&self, offset: u64) {
        loop {
            if self.inner.offsets.get().high_watermark > offset || self.inner.closed.get() {
                return;
            }
            let listener = self.inner.data_event.listen();
            if self.inner.offsets.get().high_watermark > offset || self.inner.closed.get() {
                return;
            }
            listener.await;
        }
    }

    pub async fn offset_for_timestamp(&self, ts_ms: i64) -> Result<Option<u64>, EngineError> {
        let mut guard = self.inner.log.lock().await;
        let log = guard.as_mut().ok_or(EngineError::Closed)?;
        let r = log.offset_for_timestamp(ts_ms).await;
        self.publish(log);
        r
    }

    pub async fn delete_records_before(&self, offset: u64) -> Result<u64, EngineError> {
        let mut guard = self.inner.log.lock().await;
        let log = guard.as_mut().ok_or(EngineError::Closed)?;
        let r = log.delete_records_before(offset).await;
        self.publish(log);
        r
    }

    pub async fn truncate_to(&self, offset: u64) -> Result<u64, EngineError> {
        let mut guard = self.inner.log.lock().await;
        let log = guard.as_mut().ok_or(EngineError::Closed)?;
        let r = log.truncate_to(offset).await;
        self.publish(log);
        r
    }

    pub async fn apply_retention(&self) -> Result<usize, EngineError> {
        let mut guard = self.inner.log.lock().await;
        let log = guard.as_mut().ok_or(EngineError::Closed)?;
        let r = log.apply_retention(now_ms()).await;
        self.publish(log);
        r
    }

    /// Applies a new configuration (validated first).
    pub async fn set_config(&self, config: LogConfig) -> Result<(), EngineError> {
        let mut guard = self.inner.log.lock().await;
        let log = guard.as_mut().ok_or(EngineError::Closed)?;
        self.inner.flush_policy.set(config.flush);
        log.set_config(config)
    }

    /// Tests only: fails the log as a failed write or fdatasync does (it
    /// refuses writes until it is reopened), so that a server's recovery
    /// from a failed partition can be tested end to end. The server calls
    /// it only under a test-only environment variable.
    #[doc(hidden)]
    pub async fn fail_for_tests(&self, reason: &str) {
        let mut guard = self.inner.log.lock().await;
        if let Some(log) = guard.as_mut() {
            log.fail(format!("injected for tests: {reason}"));
        }
    }

    /// Flushes, writes a clean checkpoint and closes the files.
    pub async fn close(self) -> Result<(), EngineError> {
        self.inner.closed.set(true);
        self.inner.data_event.notify(usize::MAX);
        let mut guard = self.inner.log.lock().await;
        match guard.take() {
            Some(log) => log.close(now_ms()).await,
            None => Ok(()),
        }
    }
}

async fn background_task<S: Storage>(weak: Weak<Inner<S>>) {
    let mut since_retention_ms = 0u64;
    loop {
        let tick_ms = match weak.upgrade() {
            Some(inner) => match inner.flush_policy.get() {
                FlushPolicy::IntervalMs(ms) => ms.clamp(1, BACKGROUND_TICK_MS_MAX),
                _ => BACKGROUND_TICK_MS_MAX,
            },
            None => return,
        };
        glommio::timer::sleep(Duration::from_millis(tick_ms)).await;
        since_retention_ms += tick_ms;
        let Some(inner) = weak.upgrade() else { return };
        if inner.closed.get() {
            return;
        }
        let p = Partition { inner };
        let due = {
            let guard = p.inner.log.lock().await;
            guard.as_ref().is_some_and(|log| log.flush_due(now_ms()))
        };
        if due {
            let _ = p.flush().await;
        }
        if since_retention_ms >= RETENTION_CHECK_MS {
            since_retention_ms = 0;
            let _ = p.apply_retention().await;
        }
    }
}

/// Removes a partition's directory (after `close`), for topic deletion.
pub async fn remove_partition_dir(dir: &Path) -> Result<(), EngineError> {
    crate::log::remove_log_dir(&DmaStorage::new(), dir).await
}
