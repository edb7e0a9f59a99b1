//! The glommio shell around one partition log on DMA files: the log in a
//! `RefCell`, I/O jobs run as tasks, group commit, background flushing and
//! retention, long-poll waiters. A `Partition` lives on the shard (executor)
//! that opened it and is never sent to another thread (`Rc` inside).
//!
//! Nothing waits on a lock across I/O: every use of the log is a
//! synchronous section (`with_log`: borrow, call, publish the offsets, start
//! the jobs it queued) and the borrow never crosses an await. Jobs (writes,
//! fallocate, the next segment file, a roll's closing, checkpoints) run as
//! tasks of their own and feed their results back in another section, which
//! wakes the waiters (`progress`). An acks=leader append waits for its own
//! bytes' write; a cached read never waits at all; a read from disk holds
//! nothing while the disk reads. Operations that hold the log across awaits
//! (truncation, retention, DeleteRecords, timestamp look-ups, close, a read
//! that must open a segment) take it out exclusively once the jobs in flight
//! have drained; appends wait for them meanwhile.
//!
//! Group commit is the log's decision (`Log::request_sync`): a caller that
//! needs durability asks for it in a synchronous section and waits for job
//! completions; the log starts an fdatasync job whenever something written
//! is neither durable nor covered by a sync in flight, up to
//! `SYNCS_IN_FLIGHT_MAX` at once, so callers arriving during a sync are
//! committed together by the next one: N concurrent durable appends cost a
//! few fdatasyncs, not N, and each waits about one round, not two.
//!
//! Producer-state snapshot files (`producer_snapshot`) are written and read
//! beside the log, through the same storage, never through the log: a
//! snapshot write holds only `snapshot_lock` (which `close` also takes, so
//! a close waits for one in progress), and appends never wait for it.
//!
//! Invariants: `offsets` mirrors the log after every section; the
//! published durable offset only grows, except that a truncation lowers it
//! with the high watermark; an fdatasync failure fails the log (fsyncgate:
//! the kernel may have dropped the dirty data), so nothing is ever
//! acknowledged as durable after a failed sync until a reopen recovers from
//! what is really on disk; a sync overtaken by a truncation publishes
//! nothing (`Log::complete_sync`), and its waiters get `Truncated` or ask
//! again; an
//! exclusive operation takes the log only with no job in flight
//! (`jobs_in_flight`), so every completion finds the log in place; frames
//! are placed in the order `append` was called (`append_line`: one blocked
//! on buffer space or a roll keeps its place; the line holds no I/O, a
//! place is left as soon as the frame is in the buffer).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use event_listener::Event;

use crate::cache::TailCache;
use crate::config::{FlushPolicy, LogConfig};
use crate::error::EngineError;
use crate::log::{
    AppendInfo, AppendStep, Blocked, Job, JobId, Log, LogStats, Offsets, ReadBatch, ReadStep,
    RecoveryReport, SyncOutcome,
};
use crate::producer_snapshot::ProducerSnapshot;
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

pub use crate::log::SYNCS_IN_FLIGHT_MAX;

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
    /// Background flushes and retention runs that failed (each is logged).
    pub background_errors: u64,
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
    fn observe(&mut self, outcome: SyncOutcome) {
        let (us, records) = match outcome {
            SyncOutcome::Synced { took_us, records } => (took_us, records),
            SyncOutcome::Failed => {
                self.failures += 1;
                return;
            }
        };
        self.fdatasyncs += 1;
        self.latency_us_sum = self.latency_us_sum.saturating_add(us);
        self.latency_buckets[bucket_of(&SYNC_LATENCY_BOUNDS_US, us)] += 1;
        self.records_sum += records;
        self.records_buckets[bucket_of(&GROUP_COMMIT_BOUNDS_RECORDS, records)] += 1;
    }
}

/// Disk-read rounds of one read without holding the log before it takes
/// the log exclusively (each round installs what the next one parses).
const READ_ROUNDS_MAX: usize = 4;

/// How often the background task looks at retention.
pub const RETENTION_CHECK_MS: u64 = 10_000;
/// Least time between two log lines about failed background work of one
/// partition (every failure is counted).
const BACKGROUND_ERROR_LOG_INTERVAL_MS: i64 = 10_000;
/// Longest background sleep (bounds shutdown and policy reaction time).
const BACKGROUND_TICK_MS_MAX: u64 = 1_000;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

struct Inner<S: Storage> {
    /// The log, borrowed only in synchronous sections (never across an
    /// await); `None` while an exclusive operation holds it, and after close.
    log: RefCell<Option<Log<S>>>,
    /// Serializes exclusive operations (roll, truncation, retention, record
    /// deletion, reads from disk, timestamp look-ups, close).
    exclusive: async_lock::Mutex<()>,
    /// An exclusive operation waits for the log: new appends and writes
    /// wait until it is done, so that jobs in flight drain.
    exclusive_wanted: Cell<bool>,
    /// Jobs taken from the log and not yet completed.
    jobs_in_flight: Cell<usize>,
    /// Jobs waiting for a task to run them when there is no executor to
    /// spawn on (`open_on` without background): run by whoever waits.
    inline_jobs: RefCell<VecDeque<Job>>,
    spawn_jobs: bool,
    /// Notified whenever a job completes or the log comes back.
    progress: Event,
    /// The log's tail cache: reads it can serve never wait for the log.
    cache: Rc<RefCell<TailCache>>,
    offsets: Cell<Offsets>,
    stats: Cell<LogStats>,
    sync_stats: RefCell<SyncStats>,
    flush_policy: Cell<FlushPolicy>,
    data_event: Event,
    closed: Cell<bool>,
    dir: PathBuf,
    recovery: RefCell<RecoveryReport>,
    /// The storage the log lives on, for producer-state snapshot files
    /// (written beside the log, never through it).
    storage: S,
    /// Serializes producer-state snapshot writes and `close` (which waits
    /// for one in progress). Appends never take it.
    snapshot_lock: async_lock::Mutex<()>,
    /// Bumped by every truncation: a snapshot written across one is removed.
    truncations: Cell<u64>,
    /// Appends in the order they were called (see [`Partition::append`]):
    /// the tickets of the appends not yet placed, oldest first; only the
    /// front one may try. Holds no I/O: a ticket is released as soon as its
    /// frame is in the log's buffer (or failed), before any write is
    /// awaited.
    append_line: RefCell<VecDeque<u64>>,
    next_append_ticket: Cell<u64>,
    /// Notified when the front of `append_line` changes.
    append_turn: Event,
    /// One compaction pass at a time (`compact`); appends never take it.
    cleaner_lock: async_lock::Mutex<()>,
    cleaner_stats: Cell<Option<CleanerStats>>,
}

/// The cleaner's counters of one partition since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CleanerStats {
    /// Passes started (a plan was due).
    pub runs: u64,
    /// Passes that swapped everything and moved the checkpoint.
    pub completed_runs: u64,
    pub failed_runs: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub records_removed: u64,
    pub segments_swapped: u64,
    /// Time spent reading and writing (throttle sleeps included).
    pub busy_us: u64,
    /// Dirty bytes / closed bytes at the last check.
    pub dirty_ratio: f64,
}

/// Paces the cleaner: `bytes_per_sec` of reads and writes together, and a
/// yield to the other tasks of the shard after every chunk (glommio's
/// scheduler only switches at awaits), so produce and fetch on the same
/// shard keep their latency while a pass runs.
pub struct RateThrottle {
    bytes_per_sec: u64,
    started: std::time::Instant,
    bytes: u64,
}

impl RateThrottle {
    pub fn new(bytes_per_sec: u64) -> Self {
        assert!(bytes_per_sec > 0);
        RateThrottle {
            bytes_per_sec,
            started: std::time::Instant::now(),
            bytes: 0,
        }
    }
}

impl crate::compaction::Throttle for RateThrottle {
    async fn consumed(&mut self, bytes: u64) {
        self.bytes += bytes;
        let due = Duration::from_secs_f64(self.bytes as f64 / self.bytes_per_sec as f64);
        let elapsed = self.started.elapsed();
        if due > elapsed {
            glommio::timer::sleep(due - elapsed).await;
        } else {
            glommio::yield_if_needed().await;
        }
    }
}

/// What one compaction pass did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompactionRun {
    pub dirty_ratio: f64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub records_removed: u64,
    pub segments_swapped: u64,
    /// Every cleaned segment was swapped in and the checkpoint moved.
    pub completed: bool,
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

/// The log, taken out for an exclusive operation (no job in flight); put
/// back, published, and its new jobs started when dropped.
struct Exclusive<'a, S: Storage> {
    partition: &'a Partition<S>,
    log: Option<Log<S>>,
    _lock: async_lock::MutexGuard<'a, ()>,
}

impl<S: Storage> Exclusive<'_, S> {
    fn log(&mut self) -> &mut Log<S> {
        self.log.as_mut().expect("held")
    }
}

impl<S: Storage> Drop for Exclusive<'_, S> {
    fn drop(&mut self) {
        let inner = &self.partition.inner;
        if let Some(log) = self.log.take() {
            *inner.log.borrow_mut() = Some(log);
            self.partition.with_log(|_| ());
        }
        inner.exclusive_wanted.set(false);
        inner.progress.notify(usize::MAX);
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
    /// and runs I/O jobs as tasks of their own (needs a glommio executor);
    /// without it, jobs run in the tasks that wait for them.
    pub async fn open_on(
        storage: S,
        dir: &Path,
        config: LogConfig,
        background: bool,
    ) -> Result<Self, EngineError> {
        let policy = config.flush;
        let (log, report) = Log::open(storage.clone(), dir, config, now_ms()).await?;
        let inner = Rc::new(Inner {
            cache: log.tail_cache(),
            offsets: Cell::new(log.offsets()),
            stats: Cell::new(log.stats()),
            sync_stats: RefCell::new(SyncStats::default()),
            flush_policy: Cell::new(policy),
            log: RefCell::new(Some(log)),
            exclusive: async_lock::Mutex::new(()),
            exclusive_wanted: Cell::new(false),
            jobs_in_flight: Cell::new(0),
            inline_jobs: RefCell::new(VecDeque::new()),
            spawn_jobs: background,
            progress: Event::new(),
            data_event: Event::new(),
            closed: Cell::new(false),
            dir: dir.to_path_buf(),
            recovery: RefCell::new(report),
            storage,
            snapshot_lock: async_lock::Mutex::new(()),
            truncations: Cell::new(0),
            append_line: RefCell::new(VecDeque::new()),
            next_append_ticket: Cell::new(0),
            append_turn: Event::new(),
            cleaner_lock: async_lock::Mutex::new(()),
            cleaner_stats: Cell::new(None),
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

    /// Runs `f` on the log in a synchronous section (the borrow never
    /// crosses an await), then publishes its offsets and starts the jobs it
    /// queued. None if an exclusive operation holds the log, or it is closed.
    fn with_log<R>(&self, f: impl FnOnce(&mut Log<S>) -> R) -> Option<R> {
        let (r, jobs) = {
            let mut slot = self.inner.log.borrow_mut();
            let log = slot.as_mut()?;
            let r = f(log);
            self.publish(log);
            for outcome in log.take_sync_outcomes() {
                self.inner.sync_stats.borrow_mut().observe(outcome);
            }
            (r, log.take_jobs())
        };
        self.start_jobs(jobs);
        Some(r)
    }

    /// Hands jobs to tasks of their own (or to the inline queue); each
    /// feeds its result back to the log in a synchronous section.
    fn start_jobs(&self, jobs: Vec<Job>) {
        for job in jobs {
            self.inner
                .jobs_in_flight
                .set(self.inner.jobs_in_flight.get() + 1);
            if self.inner.spawn_jobs {
                let p = self.clone();
                glommio::spawn_local(async move {
                    let r = job.fut.await;
                    p.finish_job(job.id, r);
                })
                .detach();
            } else {
                self.inner.inline_jobs.borrow_mut().push_back(job);
            }
        }
    }

    fn finish_job(&self, id: JobId, result: Result<(), EngineError>) {
        // Exclusive operations wait for every job before they take the log.
        let done = self.with_log(|log| log.complete_job(id, result));
        assert!(done.is_some(), "a job completed while the log was taken");
        let n = self.inner.jobs_in_flight.get();
        assert!(n > 0);
        self.inner.jobs_in_flight.set(n - 1);
        self.inner.progress.notify(usize::MAX);
    }

    /// Polls every job of the inline queue (jobs run as tasks leave it
    /// empty) until one completes, and feeds its result back: true, or
    /// false at once if the queue is empty. Jobs progress concurrently, as
    /// tasks would: one held job does not hold the others back.
    async fn drive_inline(&self) -> bool {
        let done = std::future::poll_fn(|cx| {
            let mut queue = self.inner.inline_jobs.borrow_mut();
            if queue.is_empty() {
                return std::task::Poll::Ready(None);
            }
            for i in 0..queue.len() {
                if let std::task::Poll::Ready(r) = queue[i].fut.as_mut().poll(cx) {
                    let job = queue.remove(i).expect("polled");
                    return std::task::Poll::Ready(Some((job.id, r)));
                }
            }
            std::task::Poll::Pending
        })
        .await;
        match done {
            Some((id, r)) => {
                self.finish_job(id, r);
                true
            }
            None => false,
        }
    }

    /// Waits for the next job completion (or the log's return).
    async fn wait_progress(&self) {
        self.wait_progress_since(self.inner.progress.listen()).await;
    }

    /// Waits for a job completion after `listener` was made. A caller that
    /// acts on the log and then waits must listen *before* it acts: glommio
    /// runs a spawned task at once, so a job the action starts may complete
    /// (an I/O refused at once, a disk-reserve check on a full disk) and
    /// notify before the action returns; a listener made afterwards would
    /// miss it and wait for an unrelated completion, or forever (found on a
    /// full disk). There is no timed re-check behind this: a lost
    /// notification is a stall, and the tests that found them would say so.
    async fn wait_progress_since(&self, listener: event_listener::EventListener) {
        if !self.drive_inline().await {
            listener.await;
        }
    }

    /// Waits until the log is available for a synchronous section: not held
    /// by an exclusive operation, nor wanted by one.
    async fn log_ready(&self) -> Result<(), EngineError> {
        loop {
            if self.inner.closed.get() {
                return Err(EngineError::Closed);
            }
            if !self.inner.exclusive_wanted.get() && self.inner.log.borrow().is_some() {
                return Ok(());
            }
            let listener = self.inner.progress.listen();
            if !self.inner.exclusive_wanted.get() && self.inner.log.borrow().is_some() {
                continue;
            }
            if !self.drive_inline().await {
                listener.await;
            }
        }
    }

    /// Takes the log for an operation that holds it across awaits, once
    /// every job in flight completed (their results go to the log first).
    async fn exclusive(&self) -> Result<Exclusive<'_, S>, EngineError> {
        let lock = self.inner.exclusive.lock().await;
        self.inner.exclusive_wanted.set(true);
        let mut guard = Exclusive {
            partition: self,
            log: None,
            _lock: lock,
        };
        loop {
            if self.inner.jobs_in_flight.get() == 0 {
                break;
            }
            let listener = self.inner.progress.listen();
            if !self.drive_inline().await {
                listener.await;
            }
        }
        guard.log = self.inner.log.borrow_mut().take();
        if guard.log.is_none() {
            return Err(EngineError::Closed);
        }
        Ok(guard)
    }

    /// Runs an exclusive operation and publishes the log afterwards.
    async fn run_exclusive<R>(
        &self,
        op: impl AsyncFnOnce(&mut Log<S>) -> Result<R, EngineError>,
    ) -> Result<R, EngineError> {
        let mut guard = self.exclusive().await?;
        let r = op(guard.log()).await;
        drop(guard);
        r
    }

    /// Appends one producer frame and waits until it reached `durability`
    /// (or the flush policy's stronger requirement). The append itself is a
    /// synchronous section: it copies the frame and returns; it waits only
    /// for back-pressure (a write), preallocated space, or a segment roll.
    pub async fn append(
        &self,
        frame: BytesMut,
        durability: Durability,
    ) -> Result<AppendInfo, EngineError> {
        let mut slot = Some(frame);
        // Frames are placed in the order appends are called: one blocked on
        // buffer space or a roll keeps its place, and a later call never
        // overtakes it when space frees (a Kafka producer's pipelined
        // requests to one partition are stored in the order it sent them).
        let _turn = self.wait_append_turn().await;
        let info = loop {
            self.log_ready().await?;
            // Before the attempt: the jobs it starts may complete within it.
            let listener = self.inner.progress.listen();
            let Some(step) = self.with_log(|log| {
                let frame = slot.take().expect("frame");
                log.try_append(frame, now_ms())
            }) else {
                continue;
            };
            match step? {
                AppendStep::Done(info) => break info,
                AppendStep::Blocked(frame, why) => {
                    slot = Some(frame);
                    // A write, a fallocate, the next segment file or a
                    // roll's jobs: all complete as jobs.
                    let (Blocked::Write | Blocked::Space) = why;
                    self.wait_progress_since(listener).await;
                }
            }
        };
        drop(_turn);
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

    /// Takes a place in the line of appends and waits until it is at the
    /// front. The returned guard leaves the line when dropped (placed,
    /// failed, or the append's future dropped), letting the next one go.
    async fn wait_append_turn(&self) -> AppendTurn<'_, S> {
        let ticket = self.inner.next_append_ticket.get();
        self.inner.next_append_ticket.set(ticket.wrapping_add(1));
        self.inner.append_line.borrow_mut().push_back(ticket);
        let turn = AppendTurn { part: self, ticket };
        let at_front = || self.inner.append_line.borrow().front() == Some(&ticket);
        // The common case: nobody ahead, no listener allocated.
        if at_front() {
            return turn;
        }
        loop {
            // Before the check: a turn that changes after it still wakes us.
            let listener = self.inner.append_turn.listen();
            if at_front() {
                return turn;
            }
            listener.await;
        }
    }

    /// Waits until every offset below `target` is written: asks the log for
    /// the writes, then waits for their completions, never for a lock.
    pub async fn write_to(&self, target: u64) -> Result<(), EngineError> {
        self.reach(target, Reach::Written).await
    }

    /// Waits until every offset below `target` is durable. Group commit
    /// is the log's decision ([`Log::request_sync`]): this asks, and waits
    /// for job completions until the durable offset passes `target`.
    pub async fn sync_to(&self, target: u64) -> Result<(), EngineError> {
        self.reach(target, Reach::Durable).await
    }

    /// Asks the log for `target` to be written or durable and waits for job
    /// completions until it is; a failed log or a truncation below `target`
    /// ends the wait with their error.
    async fn reach(&self, target: u64, reach: Reach) -> Result<(), EngineError> {
        let reached = |o: Offsets| match reach {
            Reach::Written => o.written_offset,
            Reach::Durable => o.durable_offset,
        };
        loop {
            if reached(self.inner.offsets.get()) >= target {
                return Ok(());
            }
            self.log_ready().await?;
            // Before the section: the jobs it starts may complete at once.
            let listener = self.inner.progress.listen();
            let Some(r) = self.with_log(|log| {
                if let Some(reason) = log.failed() {
                    return Err(EngineError::Failed {
                        reason: reason.to_owned(),
                    });
                }
                let o = log.offsets();
                if o.high_watermark < target {
                    return Err(EngineError::Truncated {
                        offset: target,
                        high_watermark: o.high_watermark,
                    });
                }
                match reach {
                    Reach::Written => log.request_write(target),
                    Reach::Durable => log.request_sync(target),
                }
                Ok(reached(log.offsets()))
            }) else {
                continue;
            };
            if r? >= target {
                return Ok(());
            }
            self.wait_progress_since(listener).await;
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
        // From the disk: each step is synchronous, the disk read between
        // steps holds nothing (appends go on). A few rounds at most: each
        // installs the bytes the next one parses.
        for _ in 0..READ_ROUNDS_MAX {
            let step = loop {
                if self.inner.closed.get() {
                    return Err(EngineError::Closed);
                }
                if let Some(step) = self.with_log(|log| log.read_now(from_offset, max_bytes)) {
                    break step;
                }
                self.wait_progress().await;
            };
            match step {
                ReadStep::Done(r) => return r,
                ReadStep::Exclusive => break,
                ReadStep::Fetch {
                    file,
                    segment_base,
                    position,
                    len,
                    epoch,
                } => {
                    let bytes = file.read_at(position, len).await?;
                    self.with_log(|log| log.offer_read_ahead(segment_base, position, bytes, epoch));
                }
            }
        }
        self.run_exclusive(async |log| log.read(from_offset, max_bytes).await)
            .await
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
        if from_offset >= o.high_watermark {
            // A consumer at the end (a long poll): nothing to read, and no
            // reason to take the log (the log answers past the end with
            // OffsetOutOfRange, so that one still goes through it).
            return (from_offset == o.high_watermark).then(|| ReadBatch {
                frames: Vec::new(),
                high_watermark: o.high_watermark,
                log_start_offset: o.log_start_offset,
            });
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
        self.run_exclusive(async |log| log.offset_for_timestamp(ts_ms).await)
            .await
    }

    pub async fn delete_records_before(&self, offset: u64) -> Result<u64, EngineError> {
        self.run_exclusive(async |log| log.delete_records_before(offset).await)
            .await
    }

    /// How many tail truncations this instance has begun: a value taken
    /// before some work and compared after tells whether the log's tail
    /// may have been replaced in between.
    pub fn truncations(&self) -> u64 {
        self.inner.truncations.get()
    }

    pub async fn truncate_to(&self, offset: u64) -> Result<u64, EngineError> {
        self.inner.truncations.set(self.inner.truncations.get() + 1);
        self.run_exclusive(async |log| log.truncate_to(offset).await)
            .await
    }

    /// The newest producer-state snapshot of this partition that decodes
    /// and lies within `[log start, high watermark]` (see
    /// `producer_snapshot::snapshot_candidates`), trying at most
    /// `PRODUCER_SNAPSHOT_CANDIDATES_MAX` files newest first; with the
    /// ones passed over and why. Never fails: a snapshot that cannot be
    /// read is passed over like a damaged one (the caller replays more of
    /// the log instead). Holds nothing: appends go on meanwhile.
    pub async fn load_producer_snapshot(&self) -> SnapshotLoad {
        use crate::limits::PRODUCER_SNAPSHOT_CANDIDATES_MAX;
        use crate::producer_snapshot::*;
        let mut load = SnapshotLoad::default();
        let dir = &self.inner.dir;
        let storage = &self.inner.storage;
        let o = self.offsets();
        let names = match storage.list(dir).await {
            Ok(n) => n,
            Err(e) => {
                load.passed_over.push((dir.clone(), e.to_string()));
                return load;
            }
        };
        let candidates = snapshot_candidates(
            &names,
            o.log_start_offset,
            o.high_watermark,
            PRODUCER_SNAPSHOT_CANDIDATES_MAX,
        );
        for offset in candidates {
            let path = dir.join(producer_snapshot_file_name(offset));
            let why = match storage.read_all(&path, PRODUCER_SNAPSHOT_BYTES_MAX).await {
                Ok(Some(bytes)) => match ProducerSnapshot::decode(&bytes, offset) {
                    Ok(s) => {
                        load.snapshot = Some(s);
                        return load;
                    }
                    Err(e) => e.to_string(),
                },
                Ok(None) => "vanished while listed".to_owned(),
                Err(e) => e.to_string(),
            };
            load.passed_over.push((path, why));
        }
        load
    }

    /// Writes `snapshot` as `<offset>.snapshot` by atomic replace, then
    /// removes all but the `PRODUCER_SNAPSHOTS_KEPT` newest. Its offset must
    /// be durable (so that no crash can leave the log shorter than a
    /// snapshot): `NotDurable` otherwise. A truncation while it is written
    /// removes it again (`Truncated`). Runs beside the log: appends, reads
    /// and jobs go on; only `close` waits for it.
    pub async fn write_producer_snapshot(
        &self,
        snapshot: &ProducerSnapshot,
    ) -> Result<(), EngineError> {
        use crate::limits::PRODUCER_SNAPSHOTS_KEPT;
        use crate::producer_snapshot::*;
        let _writing = self.inner.snapshot_lock.lock().await;
        if self.inner.closed.get() {
            return Err(EngineError::Closed);
        }
        let o = self.offsets();
        if snapshot.offset > o.durable_offset {
            return Err(EngineError::NotDurable {
                offset: snapshot.offset,
                durable_offset: o.durable_offset,
            });
        }
        let truncations = self.inner.truncations.get();
        let storage = &self.inner.storage;
        let dir = &self.inner.dir;
        let path = dir.join(producer_snapshot_file_name(snapshot.offset));
        storage
            .write_atomic(&path, &snapshot.encode(now_ms()))
            .await?;
        let high_watermark = self.offsets().high_watermark;
        if self.inner.truncations.get() != truncations || high_watermark < snapshot.offset {
            storage.remove(&path).await?;
            return Err(EngineError::Truncated {
                offset: snapshot.offset,
                high_watermark,
            });
        }
        let names = storage.list(dir).await?;
        for old in snapshots_to_prune(&names, snapshot.offset, PRODUCER_SNAPSHOTS_KEPT) {
            storage
                .remove(&dir.join(producer_snapshot_file_name(old)))
                .await?;
        }
        Ok(())
    }

    /// Deletes the segments retention has expired. Takes the log exclusively
    /// (waiting for the writes in flight) only when something may be due:
    /// on the 10 s tick of a partition with nothing to delete it used to
    /// hold every append behind the disk's writes in flight.
    pub async fn apply_retention(&self) -> Result<usize, EngineError> {
        let now = now_ms();
        if self.with_log(|log| log.retention_may_delete(now)) == Some(false) {
            return Ok(0);
        }
        self.run_exclusive(async |log| log.apply_retention(now_ms()).await)
            .await
    }

    /// Runs one compaction pass if one is due (`compaction::plan`). The
    /// cleaner reads closed segments and writes their cleaned versions
    /// holding nothing (closed segments do not change under it; the swap
    /// checks that they did not), paced by `throttle`; then it swaps them
    /// in one at a time, each in a short exclusive section, oldest first,
    /// and moves the cleaner checkpoint once all are in. `Ok(None)`: nothing
    /// was due.
    pub async fn compact<T: crate::compaction::Throttle>(
        &self,
        cfg: &crate::compaction::CompactionConfig,
        throttle: &mut T,
    ) -> Result<Option<CompactionRun>, EngineError> {
        use crate::compaction;
        let _one_pass = self.inner.cleaner_lock.lock().await;
        self.log_ready().await?;
        let Some((segments, interval)) =
            self.with_log(|log| (log.compaction_segments(), log.config().index_interval_bytes))
        else {
            return Ok(None);
        };
        let storage = &self.inner.storage;
        let dir = &self.inner.dir;
        let first_dirty = compaction::read_cleaner_checkpoint(storage, dir).await;
        let now = now_ms();
        let mut stats = self.inner.cleaner_stats.get().unwrap_or_default();
        stats.dirty_ratio = compaction::dirty_ratio(&segments, first_dirty);
        self.inner.cleaner_stats.set(Some(stats));
        let Some(plan) = compaction::plan(&segments, first_dirty, now, cfg) else {
            return Ok(None);
        };
        let started = std::time::Instant::now();
        stats.runs += 1;
        self.inner.cleaner_stats.set(Some(stats));
        let outcome = compaction::clean(storage, dir, &plan, cfg, now, interval, throttle).await;
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                stats.failed_runs += 1;
                self.inner.cleaner_stats.set(Some(stats));
                return Err(e);
            }
        };
        stats.bytes_read += outcome.bytes_read;
        stats.bytes_written += outcome.bytes_written;
        stats.records_removed += outcome.records_removed;
        stats.busy_us += started.elapsed().as_micros() as u64;
        self.inner.cleaner_stats.set(Some(stats));
        let mut run = CompactionRun {
            dirty_ratio: plan.dirty_ratio,
            bytes_read: outcome.bytes_read,
            bytes_written: outcome.bytes_written,
            records_removed: outcome.records_removed,
            segments_swapped: 0,
            completed: false,
        };
        let mut cleaned = outcome.cleaned.iter();
        let mut all_in = true;
        for c in cleaned.by_ref() {
            let installed = self
                .run_exclusive(async |log| log.install_cleaned(c).await)
                .await;
            match installed {
                Ok(true) => run.segments_swapped += 1,
                Ok(false) => {
                    all_in = false;
                    break;
                }
                Err(e) => {
                    for rest in cleaned.by_ref() {
                        let name = compaction::cleaned_file_name(rest.base_offset);
                        let _ = storage.remove(&dir.join(name)).await;
                    }
                    return Err(e);
                }
            }
        }
        // A segment that changed under the pass stops it: the later ones
        // are not swapped (older first keeps tombstones safe).
        for rest in cleaned {
            let name = compaction::cleaned_file_name(rest.base_offset);
            storage.remove(&dir.join(name)).await?;
        }
        if all_in && outcome.map_end > plan.first_dirty {
            compaction::write_cleaner_checkpoint(storage, dir, outcome.map_end).await?;
            run.completed = true;
        }
        let mut stats = self.inner.cleaner_stats.get().unwrap_or_default();
        stats.segments_swapped += run.segments_swapped;
        if run.completed {
            stats.completed_runs += 1;
            let segments = self
                .with_log(|log| log.compaction_segments())
                .unwrap_or_default();
            stats.dirty_ratio = compaction::dirty_ratio(&segments, outcome.map_end);
        }
        self.inner.cleaner_stats.set(Some(stats));
        Ok(Some(run))
    }

    /// The cleaner's counters; `None` until the cleaner first looked at
    /// this partition (a topic that is not compacted).
    pub fn cleaner_stats(&self) -> Option<CleanerStats> {
        self.inner.cleaner_stats.get()
    }

    /// The dirty ratio the cleaner would see now (for metrics).
    pub async fn dirty_ratio(&self) -> Option<f64> {
        let segments = self.with_log(|log| log.compaction_segments())?;
        let first_dirty =
            crate::compaction::read_cleaner_checkpoint(&self.inner.storage, &self.inner.dir).await;
        Some(crate::compaction::dirty_ratio(&segments, first_dirty))
    }

    /// Applies a new configuration (validated first).
    pub async fn set_config(&self, config: LogConfig) -> Result<(), EngineError> {
        loop {
            self.log_ready().await?;
            let flush = config.flush;
            if let Some(r) = self.with_log(|log| log.set_config(config.clone())) {
                if r.is_ok() {
                    self.inner.flush_policy.set(flush);
                }
                return r;
            }
        }
    }

    /// Tests only: fails the log as a failed write or fdatasync does (it
    /// refuses writes until it is reopened), so that a server's recovery
    /// from a failed partition can be tested end to end. The server calls
    /// it only under a test-only environment variable.
    #[doc(hidden)]
    pub async fn fail_for_tests(&self, reason: &str) {
        let _ = self
            .run_exclusive(async |log| {
                log.fail(format!("injected for tests: {reason}"));
                Ok(())
            })
            .await;
    }

    /// Flushes, writes a clean checkpoint and closes the files (after a
    /// producer-state snapshot being written, if any).
    pub async fn close(self) -> Result<(), EngineError> {
        let _no_snapshot = self.inner.snapshot_lock.lock().await;
        let mut guard = self.exclusive().await?;
        let log = guard.log.take().expect("held");
        self.inner.closed.set(true);
        self.inner.data_event.notify(usize::MAX);
        self.inner.progress.notify(usize::MAX);
        drop(guard);
        log.close(now_ms()).await
    }
}

async fn background_task<S: Storage>(weak: Weak<Inner<S>>) {
    let mut since_retention_ms = 0u64;
    let mut last_error_log_ms = i64::MIN;
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
        let due = p.with_log(|log| log.flush_due(now_ms())).unwrap_or(false);
        if due {
            if let Err(e) = p.flush().await {
                p.background_failed("flush", &e, &mut last_error_log_ms);
            }
        }
        if since_retention_ms >= RETENTION_CHECK_MS {
            since_retention_ms = 0;
            if let Err(e) = p.apply_retention().await {
                p.background_failed("retention", &e, &mut last_error_log_ms);
            }
        }
    }
}

impl<S: Storage> Partition<S> {
    /// A background flush or retention run failed: counted in
    /// `SyncStats::background_errors` (the server exports it) and logged,
    /// at most once per `BACKGROUND_ERROR_LOG_INTERVAL_MS` per partition (a
    /// failed log fails every tick until it is reopened).
    fn background_failed(&self, what: &'static str, e: &EngineError, last_log_ms: &mut i64) {
        self.inner.sync_stats.borrow_mut().background_errors += 1;
        let now = now_ms();
        if now.saturating_sub(*last_log_ms) >= BACKGROUND_ERROR_LOG_INTERVAL_MS {
            *last_log_ms = now;
            tracing::error!(
                dir = %self.inner.dir.display(),
                work = what,
                error = %e,
                "background work of a partition failed"
            );
        }
    }
}

/// What [`Partition::load_producer_snapshot`] found.
#[derive(Debug, Default)]
pub struct SnapshotLoad {
    /// The newest valid snapshot, if any.
    pub snapshot: Option<ProducerSnapshot>,
    /// Files (or the directory) passed over, newest first, and why.
    pub passed_over: Vec<(PathBuf, String)>,
}

/// What [`Partition::reach`] waits for.
#[derive(Clone, Copy)]
enum Reach {
    Written,
    Durable,
}

/// A place in a partition's line of appends ([`Partition::append`]).
struct AppendTurn<'a, S: Storage> {
    part: &'a Partition<S>,
    ticket: u64,
}

impl<S: Storage> Drop for AppendTurn<'_, S> {
    fn drop(&mut self) {
        let mut line = self.part.inner.append_line.borrow_mut();
        let was_front = line.front() == Some(&self.ticket);
        if let Some(i) = line.iter().position(|&t| t == self.ticket) {
            line.remove(i);
        }
        drop(line);
        if was_front {
            self.part.inner.append_turn.notify(usize::MAX);
        }
    }
}

/// Removes a partition's directory (after `close`), for topic deletion.
pub async fn remove_partition_dir(dir: &Path) -> Result<(), EngineError> {
    remove_partition_dir_on(&DmaStorage::new(), dir).await
}

/// [`remove_partition_dir`] on any storage.
pub async fn remove_partition_dir_on<S: Storage>(
    storage: &S,
    dir: &Path,
) -> Result<(), EngineError> {
    crate::log::remove_log_dir(storage, dir).await
}
