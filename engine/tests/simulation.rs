//! Deterministic simulation of the partition log over the fault-injecting
//! storage: random schedules of appends, writes, flushes, reads, retention,
//! record deletion, truncation, crashes (losing and tearing unsynced writes),
//! injected EIO/ENOSPC, clean restarts and recoveries, checked after every
//! step against a simple model.
//!
//! The log is driven as the partition shell drives it: appends are
//! synchronous (`try_append`) and leave their I/O as jobs (writes of full
//! buffers and tail blocks, fallocate steps, the next segment file, a roll's
//! fdatasync and closing, checkpoints); the schedule completes pending jobs
//! in random order, a few at a time, and only when an append is blocked or
//! an operation that holds the log (flush, read, retention, truncation,
//! close) drains them. A crash lands a random subset of the pending jobs'
//! I/O, then tears or loses unsynced writes, so it can strike at any point
//! of a roll or between writes of one block.
//!
//! After an injected fault the schedule either crashes and recovers (as the
//! server would) or carries on with the same log: a failed fdatasync or
//! write leaves the log failed (the fault model loses the unsynced writes of
//! a failed sync for good, Linux's "fsyncgate"), and a failed log must refuse
//! every append, write and sync until a reopen recovers what is on disk.
//!
//! Invariants checked:
//! - no record whose durability was acknowledged is ever lost;
//! - a failed log acknowledges nothing: appends, writes, flushes and close
//!   return `EngineError::Failed`;
//! - no corrupt or partial frame is ever returned; what is returned at an
//!   offset is byte for byte what was appended at that offset;
//! - offsets stay dense and monotonic;
//! - an append blocked on the disk always has a job in flight to wait for;
//! - every index entry agrees with a full scan of its segment.
//!
//! `STROM_SIM_SCHEDULES` sets the number of schedules (default 10,000);
//! `STROM_SIM_SEED` replays one schedule. A failure prints the seed.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::{Bytes, BytesMut};
use futures_lite::future::block_on;
use strom_engine::log::{AppendStep, Job, ReadStep};
use strom_engine::storage::StorageFile;
use strom_engine::storage::{FaultKind, FaultyStorage};
use strom_engine::{AppendInfo, EngineError, FlushPolicy, Log, LogConfig, ReadBatch};
use strom_flatbuffers::{BatchBuilder, FrameHeader, RecordIn, FRAME_HEADER_BYTES};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

async fn block_on_list(storage: &FaultyStorage, dir: &Path) -> Vec<String> {
    use strom_engine::storage::Storage;
    storage.list(dir).await.unwrap_or_default()
}

fn trace() -> bool {
    std::env::var("STROM_SIM_TRACE").is_ok()
}

fn config(rng: &mut Rng) -> LogConfig {
    LogConfig {
        segment_bytes: 64 << 10,
        segment_ms: None,
        retention_bytes: Some(200 << 10),
        retention_ms: None,
        flush: FlushPolicy::Never,
        frame_bytes_max: 32 << 10,
        cache_bytes_max: [0, 4 << 10, 64 << 10][rng.below(3) as usize],
        index_interval_bytes: [256, 1024, 4096][rng.below(3) as usize],
        preallocate_bytes: 16 << 10,
        write_buffer_bytes: 64 << 10,
        unwritten_bytes_max: 128 << 10,
        read_ahead_bytes: 8 << 10,
        checkpoint_interval_bytes: [4 << 10, 32 << 10][rng.below(2) as usize],
        disk_reserve_bytes: 0,
    }
}

fn make_frame(rng: &mut Rng, now_ms: i64, tag: u64) -> BytesMut {
    let mut b = BatchBuilder::new();
    let n = 1 + rng.below(4);
    for i in 0..n {
        let len = [0, 1, 10, 100, 1000, 5000][rng.below(6) as usize];
        let mut v = vec![0u8; len];
        for (j, byte) in v.iter_mut().enumerate() {
            *byte = (tag as usize + i as usize + j) as u8;
        }
        let key = format!("k{tag}-{i}");
        b.push(&RecordIn {
            timestamp_ms: now_ms + rng.below(3) as i64,
            key: Some(key.as_bytes()),
            value: Some(&v),
            headers: &[],
        });
    }
    BytesMut::from(&b.finish()[..])
}

/// What the model knows: the payload bytes appended at each base offset.
#[derive(Default)]
struct Model {
    /// base offset -> (next offset, payload bytes after the header)
    frames: BTreeMap<u64, (u64, Bytes)>,
    /// offsets below this were acknowledged durable
    durable: u64,
    /// offsets below this may have been deleted by retention/delete_records
    start_floor: u64,
}

fn payload(frame: &[u8]) -> Bytes {
    Bytes::copy_from_slice(&frame[FRAME_HEADER_BYTES..])
}

fn check_frames_match(model: &Model, frames: &[Bytes], from: u64, seed: u64) {
    let mut expect_next: Option<u64> = None;
    for f in frames {
        let h = strom_flatbuffers::verify_stored(f)
            .unwrap_or_else(|e| panic!("seed {seed}: corrupt frame served: {e}"));
        let base = h.base_offset();
        if let Some(n) = expect_next {
            assert_eq!(base, n, "seed {seed}: offsets not dense in a read");
        } else {
            assert!(
                base <= from && from < h.next_offset(),
                "seed {seed}: first frame {base} does not hold {from}"
            );
        }
        expect_next = Some(h.next_offset());
        let (next, bytes) = model
            .frames
            .get(&base)
            .unwrap_or_else(|| panic!("seed {seed}: frame at {base} was never appended"));
        assert_eq!(
            *next,
            h.next_offset(),
            "seed {seed}: frame {base} length changed"
        );
        assert_eq!(
            &f[FRAME_HEADER_BYTES..],
            &bytes[..],
            "seed {seed}: frame {base} bytes changed"
        );
    }
}

async fn read_all(
    log: &mut Log<FaultyStorage>,
    model: &Model,
    seed: u64,
) -> Result<(), EngineError> {
    let o = log.offsets();
    let mut at = o.log_start_offset;
    // The first frame may start before the log start (deleted by offset, not by segment).
    while at < o.high_watermark {
        let batch = log.read(at, 16 << 10).await?;
        assert!(
            !batch.frames.is_empty(),
            "seed {seed}: empty read at {at} below hw {}",
            o.high_watermark
        );
        check_frames_match(model, &batch.frames, at, seed);
        let last = FrameHeader::ref_from(batch.frames.last().expect("non-empty")).expect("header");
        at = last.next_offset();
    }
    assert_eq!(
        at, o.high_watermark,
        "seed {seed}: read past the high watermark"
    );
    Ok(())
}

async fn reopen(
    storage: &FaultyStorage,
    dir: &Path,
    cfg: &LogConfig,
    model: &mut Model,
    seed: u64,
    now: i64,
) -> Log<FaultyStorage> {
    let (mut log, report) = Log::open(storage.clone(), dir, cfg.clone(), now)
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: reopen failed: {e}"));
    let o = log.offsets();
    if trace() {
        eprintln!(
            "reopen: {report:?} {o:?} files {:?}",
            block_on_list(storage, dir).await
        );
    }
    assert!(
        o.high_watermark >= model.durable,
        "seed {seed}: lost durable records: high watermark {} < acknowledged {}",
        o.high_watermark,
        model.durable
    );
    // Forget what did not survive (it was never acknowledged durable).
    model.frames.retain(|&base, _| base < o.high_watermark);
    if let Some((&base, &(next, _))) = model.frames.iter().next_back() {
        assert_eq!(
            next, o.high_watermark,
            "seed {seed}: recovered end {} is not a frame boundary (frame {base}..{next})",
            o.high_watermark
        );
    }
    assert!(
        o.log_start_offset >= model.start_floor.min(o.high_watermark)
            || o.log_start_offset <= model.start_floor
    );
    read_all(&mut log, model, seed)
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: read after recovery: {e}"));
    log.check_indexes_against_scan()
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: index disagrees with scan: {e}"));
    log
}

/// Jobs the log started (writes, fallocates, the next segment file, a
/// roll's sync and closing, checkpoints) that the schedule has not
/// completed yet, as the partition shell's tasks hold them. They complete
/// in random order, a few at a time; operations that hold the log across
/// awaits drain them first (as the shell's exclusive operations do); a crash
/// lands a random subset of them (then torn or lost by the crash) and drops
/// the rest.
#[derive(Default)]
struct Jobs(Vec<Job>);

impl Jobs {
    fn take(&mut self, log: &mut Log<FaultyStorage>) {
        self.0.extend(log.take_jobs());
    }

    /// Completes one job chosen at random; false if none is pending.
    async fn complete_one(&mut self, log: &mut Log<FaultyStorage>, rng: &mut Rng) -> bool {
        if self.0.is_empty() {
            return false;
        }
        let job = self.0.swap_remove(rng.below(self.0.len() as u64) as usize);
        let r = job.fut.await;
        log.complete_job(job.id, r);
        self.take(log);
        true
    }

    async fn drain(&mut self, log: &mut Log<FaultyStorage>, rng: &mut Rng) {
        while self.complete_one(log, rng).await {}
    }

    /// Before a crash: each pending job's I/O happens or not.
    async fn crash(&mut self, rng: &mut Rng) {
        for job in self.0.drain(..) {
            if rng.chance(50) {
                let _ = job.fut.await;
            }
        }
    }
}

/// An append as the shell makes it: synchronous, its jobs left pending;
/// when blocked, random pending jobs complete until it can go on.
async fn append(
    log: &mut Log<FaultyStorage>,
    jobs: &mut Jobs,
    rng: &mut Rng,
    mut frame: BytesMut,
    now: i64,
    seed: u64,
) -> Result<AppendInfo, EngineError> {
    loop {
        let step = log.try_append(frame, now);
        jobs.take(log);
        match step? {
            AppendStep::Done(info) => return Ok(info),
            AppendStep::Blocked(f, why) => {
                frame = f;
                assert!(
                    jobs.complete_one(log, rng).await,
                    "seed {seed}: append blocked ({why:?}) with no job in flight"
                );
            }
        }
    }
}

/// A read as the shell makes it: synchronous steps, the disk reads between
/// them holding nothing (pending jobs may complete meanwhile, rewriting the
/// tail block being read); the log is drained and held only if a step asks.
async fn read(
    log: &mut Log<FaultyStorage>,
    jobs: &mut Jobs,
    rng: &mut Rng,
    from: u64,
    max_bytes: usize,
) -> Result<ReadBatch, EngineError> {
    for _ in 0..4 {
        let step = log.read_now(from, max_bytes);
        if trace() {
            let what = match &step {
                ReadStep::Done(Ok(b)) => format!("done {} frames", b.frames.len()),
                ReadStep::Done(Err(e)) => format!("done {e}"),
                ReadStep::Fetch { position, len, .. } => format!("fetch {position}+{len}"),
                ReadStep::Exclusive => "exclusive".into(),
            };
            eprintln!("  read {from}: {what}");
        }
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
                if rng.chance(50) {
                    jobs.complete_one(log, rng).await;
                }
                let bytes = file.read_at(position, len).await?;
                if rng.chance(50) {
                    jobs.complete_one(log, rng).await;
                }
                log.offer_read_ahead(segment_base, position, bytes, epoch);
            }
        }
    }
    jobs.drain(log, rng).await;
    log.read(from, max_bytes).await
}

fn run_schedule(seed: u64, steps: usize) {
    let mut rng = Rng(seed);
    let storage = FaultyStorage::new(seed ^ 0xA5A5);
    let dir = Path::new("/sim/partition");
    let cfg = config(&mut rng);
    let mut model = Model::default();
    let mut now: i64 = 1_700_000_000_000;
    block_on(async {
        let mut log = reopen(&storage, dir, &cfg, &mut model, seed, now).await;
        let mut jobs = Jobs::default();
        let mut tag = 0u64;
        let mut faults_armed = false;
        // A fault was armed since the last reopen: a background operation
        // started then (a preallocation) may report it later.
        let mut faulted_since_reopen = false;
        for _ in 0..steps {
            now += rng.below(50) as i64;
            let op = rng.below(100);
            if trace() {
                eprintln!(
                    "op {op} offsets {:?} model.durable {}",
                    log.offsets(),
                    model.durable
                );
            }
            if !matches!(op, 0..=44 | 55..=74 | 81..=86 | 90..=99) {
                // Operations that hold the log across awaits run alone.
                jobs.drain(&mut log, &mut rng).await;
            }
            if (87..=89).contains(&op) {
                // clean shutdown and restart
                let hw = log.offsets().high_watermark;
                let was_failed = log.failed().is_some();
                let closed = log.close(now).await;
                match closed {
                    Ok(()) => {
                        assert!(!was_failed, "seed {seed}: a failed log closed cleanly");
                        model.durable = model.durable.max(hw);
                    }
                    Err(e) => assert!(
                        faulted_since_reopen || was_failed,
                        "seed {seed}: close failed without a fault: {e}"
                    ),
                }
                storage.crash();
                storage.clear_faults();
                faults_armed = false;
                faulted_since_reopen = false;
                log = reopen(&storage, dir, &cfg, &mut model, seed, now).await;
                continue;
            }
            let failed_before = log.failed().is_some();
            let result: Result<(), EngineError> = async {
                match op {
                    0..=44 => {
                        tag += 1;
                        let frame = make_frame(&mut rng, now, tag);
                        let p = payload(&frame);
                        let info = append(&mut log, &mut jobs, &mut rng, frame, now, seed).await?;
                        let o = log.offsets();
                        model
                            .frames
                            .insert(info.base_offset, (info.last_offset + 1, p));
                        assert_eq!(
                            info.last_offset + 1,
                            o.high_watermark,
                            "seed {seed}: append not at the end"
                        );
                    }
                    45..=54 => {
                        let d = log.flush(now).await?;
                        assert_eq!(
                            d,
                            log.offsets().high_watermark,
                            "seed {seed}: flush left data behind"
                        );
                        model.durable = model.durable.max(d);
                    }
                    58..=59 => {
                        // acks=all: ask the log's group commit for the end,
                        // complete a few jobs; whatever durable offset it
                        // publishes is acknowledged to its waiters.
                        if let Some(reason) = log.failed() {
                            return Err(EngineError::Failed {
                                reason: reason.to_owned(),
                            });
                        }
                        let hw = log.offsets().high_watermark;
                        log.request_sync(hw);
                        jobs.take(&mut log);
                        for _ in 0..rng.below(6) {
                            jobs.complete_one(&mut log, &mut rng).await;
                        }
                        if log.failed().is_none() {
                            model.durable = model.durable.max(log.offsets().durable_offset);
                        }
                    }
                    55..=57 => {
                        // acks=leader: ask for the writes, complete a few jobs.
                        if let Some(reason) = log.failed() {
                            return Err(EngineError::Failed {
                                reason: reason.to_owned(),
                            });
                        }
                        let hw = log.offsets().high_watermark;
                        log.request_write(hw);
                        jobs.take(&mut log);
                        for _ in 0..rng.below(4) {
                            jobs.complete_one(&mut log, &mut rng).await;
                        }
                    }
                    60..=74 => {
                        let o = log.offsets();
                        // A failed log serves only what is durable.
                        let end = if log.failed().is_some() {
                            o.durable_offset
                        } else {
                            o.high_watermark
                        };
                        if end > o.log_start_offset {
                            let at = o.log_start_offset + rng.below(end - o.log_start_offset);
                            let max = rng.below(20_000) as usize;
                            let b = read(&mut log, &mut jobs, &mut rng, at, max).await?;
                            // A job that failed during the read fails the log,
                            // which then serves only durable records.
                            assert!(
                                !b.frames.is_empty()
                                    || log.failed().is_some() && at >= log.offsets().durable_offset,
                                "seed {seed}: nothing at {at}"
                            );
                            check_frames_match(&model, &b.frames, at, seed);
                        }
                        let past =
                            read(&mut log, &mut jobs, &mut rng, o.high_watermark + 1, 100).await;
                        assert!(
                            matches!(past, Err(EngineError::OffsetOutOfRange { .. }))
                                || log.failed().is_some()
                                    && matches!(past, Err(EngineError::Failed { .. })),
                            "seed {seed}: read past end: {past:?}"
                        );
                    }
                    75..=77 => {
                        log.apply_retention(now).await?;
                        model.start_floor = model.start_floor.max(log.offsets().log_start_offset);
                    }
                    78..=79 => {
                        let o = log.offsets();
                        let to = o.log_start_offset
                            + rng.below(o.high_watermark - o.log_start_offset + 1);
                        log.delete_records_before(to).await?;
                        assert!(log.offsets().log_start_offset >= to.min(o.high_watermark));
                        model.start_floor = model.start_floor.max(log.offsets().log_start_offset);
                    }
                    80 => {
                        let o = log.offsets();
                        let to = o.log_start_offset
                            + rng.below(o.high_watermark - o.log_start_offset + 1);
                        // Truncation discards on purpose, even if it fails half-way:
                        // the frame holding `to` and everything after may go.
                        let cut = model
                            .frames
                            .range(..=to)
                            .next_back()
                            .map(|(&b, _)| b)
                            .unwrap_or(to);
                        model.durable = model.durable.min(cut);
                        let hw = log.truncate_to(to).await?;
                        assert!(
                            hw <= to.max(o.log_start_offset),
                            "seed {seed}: truncate kept data past {to}"
                        );
                        model.frames.retain(|&b, _| b < hw);
                        model.durable = model.durable.min(hw);
                    }
                    81..=86 => {
                        // crash: lose or tear unsynced writes, and jobs in flight
                        jobs.crash(&mut rng).await;
                        storage.crash();
                        storage.clear_faults();
                        faults_armed = false;
                        faulted_since_reopen = false;
                        log = reopen(&storage, dir, &cfg, &mut model, seed, now).await;
                    }
                    90..=93 if !faults_armed => {
                        let kind = if rng.chance(50) {
                            FaultKind::Eio
                        } else {
                            FaultKind::NoSpace
                        };
                        storage.fail_after(rng.below(20), kind);
                        faults_armed = true;
                        faulted_since_reopen = true;
                    }
                    _ => {
                        for _ in 0..rng.below(4) {
                            jobs.complete_one(&mut log, &mut rng).await;
                        }
                        let o = log.offsets();
                        // A group-commit sync may have completed: its
                        // waiters are told their records are durable. (A
                        // failed log publishes nothing new; what it shows
                        // after a truncation that failed half-way was cut on
                        // purpose, see op 80.)
                        if log.failed().is_none() {
                            model.durable = model.durable.max(o.durable_offset);
                        }
                        assert!(o.log_start_offset <= o.high_watermark);
                        assert!(
                            o.durable_offset <= o.written_offset
                                && o.written_offset <= o.high_watermark
                        );
                    }
                }
                Ok(())
            }
            .await;
            if failed_before {
                // A failed log acknowledges nothing (reads may go on).
                match (&result, op) {
                    (Err(EngineError::Failed { .. }), _) => {}
                    (Ok(()), 0..=59 | 80) => {
                        panic!("seed {seed}: op {op} succeeded on a failed log")
                    }
                    (r, _) => assert!(
                        r.is_ok() || faulted_since_reopen,
                        "seed {seed}: op {op} on a failed log: {r:?}"
                    ),
                }
            }
            if let Err(e) = result {
                if trace() {
                    eprintln!("  error {e} (failed: {:?})", log.failed());
                }
                assert!(
                    faulted_since_reopen || failed_before,
                    "seed {seed}: error without an injected fault: {e}"
                );
                storage.clear_faults();
                faults_armed = false;
                if rng.chance(50) {
                    // Crash and recover, as the server would.
                    jobs.crash(&mut rng).await;
                    storage.crash();
                    faulted_since_reopen = false;
                    log = reopen(&storage, dir, &cfg, &mut model, seed, now).await;
                }
                // Otherwise carry on with the same log: if the fault left it
                // failed, the next operations must say so.
            }
        }
        jobs.crash(&mut rng).await;
        storage.crash();
        storage.clear_faults();
        let _ = reopen(&storage, dir, &cfg, &mut model, seed, now).await;
    });
}

#[test]
fn simulation_schedules() {
    if let Ok(seed) = std::env::var("STROM_SIM_SEED") {
        let seed: u64 = seed.parse().expect("STROM_SIM_SEED is a number");
        let steps = std::env::var("STROM_SIM_STEPS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60);
        run_schedule(seed, steps);
        return;
    }
    let schedules: u64 = std::env::var("STROM_SIM_SCHEDULES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let steps: usize = std::env::var("STROM_SIM_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let base: u64 = std::env::var("STROM_SIM_BASE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    for i in 0..schedules {
        let seed = base.wrapping_add(i);
        let r = std::panic::catch_unwind(|| run_schedule(seed, steps));
        if r.is_err() {
            panic!("simulation failed; replay with STROM_SIM_SEED={seed} cargo test -p strom-engine --test simulation");
        }
    }
}
