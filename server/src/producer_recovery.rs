//! Idempotent-producer state across restarts, single-node partitions: the
//! shell around the I/O-free [`crate::producers`]. At open, a partition's
//! state is rebuilt from its newest producer-state snapshot and a replay of
//! the frames after it ([`rebuild`]); afterwards snapshots are written as a
//! job ([`write_snapshot`]) when a segment rolled, when
//! [`PRODUCER_SNAPSHOT_INTERVAL_BYTES`] were appended since the last one,
//! and at a clean close ([`SnapshotMark`] decides), and expired producers
//! are dropped every [`PRODUCER_ID_EXPIRATION_CHECK_MS`] (`Shard::upkeep`).
//!
//! Invariants:
//! - A partition takes no produce request before its rebuild is installed:
//!   the shard inserts the slot (or clears `reopening`) only afterwards.
//! - A snapshot is taken under the partition's producer lane (no batch of
//!   an idempotent producer is between its append and its record), at the
//!   high watermark, in one synchronous section; the lane is released before
//!   any I/O. It is written only once that offset is durable, beside the log
//!   (`Partition::write_producer_snapshot`): appends never wait for it.
//! - Nothing here refuses to open a partition: an unreadable snapshot costs
//!   a longer replay, a replay that stops early (a log read failing) leaves
//!   the state of the frames replayed so far, and is said loudly.
//!
//! Cluster mode does not use this: a replicated partition's state follows
//! its Raft log (`cluster::record_producer`).
//!
//! [`PRODUCER_SNAPSHOT_INTERVAL_BYTES`]: crate::limits::PRODUCER_SNAPSHOT_INTERVAL_BYTES
//! [`PRODUCER_ID_EXPIRATION_CHECK_MS`]: crate::limits::PRODUCER_ID_EXPIRATION_CHECK_MS

use crate::engine::storage::Storage;
use crate::engine::EngineError;
use crate::limits::{
    PRODUCER_ID_EXPIRATION_MS, PRODUCER_REBUILD_READ_BYTES, PRODUCER_SNAPSHOT_INTERVAL_BYTES,
    PRODUCER_SNAPSHOT_RETRY_MS,
};
use crate::producers::{PartitionKey, ProducerStates, Producers, Rebuild};
use std::path::PathBuf;
use strom_engine::producer_snapshot::ProducerSnapshot;
use strom_engine::Partition;
use strom_flatbuffers::FrameHeader;

/// What a rebuild found and did (logged per partition).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebuildReport {
    /// The snapshot started from, if a valid one was found.
    pub snapshot_offset: Option<u64>,
    /// Snapshot files passed over (damaged, unreadable), and why.
    pub passed_over: Vec<(PathBuf, String)>,
    /// The replay: offsets `[from, to)`, frames and bytes read.
    pub from_offset: u64,
    pub to_offset: u64,
    pub frames: u64,
    pub producer_frames: u64,
    pub bytes: u64,
    /// Producers in the rebuilt state, and those dropped as expired.
    pub producers: usize,
    pub expired: usize,
    /// Why the replay stopped before the high watermark, if it did.
    pub stopped: Option<String>,
    pub took_ms: u64,
}

/// Rebuilds partition `key`'s producer state from `part` (just opened,
/// taking no produce request yet): the newest valid snapshot, then every
/// frame from it to the high watermark. The table it returns holds `key`
/// alone; the caller installs it (`Producers::install`).
pub async fn rebuild<S: Storage>(
    part: &Partition<S>,
    key: PartitionKey,
    capacity: usize,
    now_ms: i64,
) -> (ProducerStates, RebuildReport) {
    let started = std::time::Instant::now();
    let mut report = RebuildReport::default();
    let o = part.offsets();
    let load = part.load_producer_snapshot().await;
    report.passed_over = load.passed_over;
    let mut fold = match &load.snapshot {
        Some(s) => {
            report.snapshot_offset = Some(s.offset);
            Rebuild::from_snapshot(key, o.log_start_offset, capacity, s)
        }
        None => Rebuild::new(key, o.log_start_offset, capacity),
    };
    report.from_offset = fold.next_offset();
    let end = o.high_watermark;
    while fold.next_offset() < end {
        let at = fold.next_offset();
        let batch = match part.read(at, PRODUCER_REBUILD_READ_BYTES).await {
            Ok(b) => b,
            Err(e) => {
                report.stopped = Some(format!("reading offset {at}: {e}"));
                break;
            }
        };
        if batch.frames.is_empty() {
            report.stopped = Some(format!("no frame at offset {at} below {end}"));
            break;
        }
        let mut failed = None;
        for f in &batch.frames {
            // Frames the read path returns passed `verify_stored`.
            let Some(h) = FrameHeader::ref_from(f) else {
                failed = Some(format!("a frame of {} bytes at offset {at}", f.len()));
                break;
            };
            if h.base_offset() >= end {
                break;
            }
            if let Err(e) = fold.apply(h) {
                failed = Some(e.to_string());
                break;
            }
            report.bytes += f.len() as u64;
        }
        if let Some(why) = failed {
            report.stopped = Some(why);
            break;
        }
        debug_assert!(fold.next_offset() > at, "every round advances");
    }
    report.to_offset = fold.next_offset();
    report.frames = fold.frames;
    report.producer_frames = fold.producer_frames;
    let (states, expired) = fold.finish(now_ms, PRODUCER_ID_EXPIRATION_MS);
    report.producers = states.len();
    report.expired = expired;
    report.took_ms = started.elapsed().as_millis() as u64;
    (states, report)
}

/// Partition `key`'s producers as a snapshot at its high watermark, taken
/// under its lane (released before this returns), then written once that
/// offset is durable (forcing an fdatasync if it is not: for the clean
/// close, where the log is synced anyway). Returns the snapshot's offset.
pub async fn write_snapshot<S: Storage>(
    producers: &Producers,
    key: PartitionKey,
    part: &Partition<S>,
) -> Result<u64, EngineError> {
    let pending = take_snapshot(producers, key, part).await?;
    part.sync_to(pending.snapshot.offset).await?;
    write_pending(part, &pending).await
}

/// A snapshot taken in memory and not yet written: the running upkeep
/// writes it only once the log is durable past its offset by itself (a
/// roll, a durable produce, the flush policy), so that a snapshot never
/// forces an fdatasync that acks=leader traffic would not pay otherwise.
#[derive(Debug, Clone)]
pub struct PendingSnapshot {
    pub snapshot: ProducerSnapshot,
    /// The log's `truncations()` when it was taken: a truncation since
    /// makes it void (the tail it describes may have been replaced).
    pub truncations: u64,
    /// The log's `LogStats::appended_bytes` and `segments_rolled` then.
    pub appended_bytes: u64,
    pub segments_rolled: u64,
}

impl PendingSnapshot {
    /// Whether it can be written now without forcing a sync.
    pub fn writable(&self, durable_offset: u64) -> bool {
        durable_offset >= self.snapshot.offset
    }
}

/// Partition `key`'s producers as a snapshot at its high watermark, taken
/// under its lane (released before this returns; no I/O).
pub async fn take_snapshot<S: Storage>(
    producers: &Producers,
    key: PartitionKey,
    part: &Partition<S>,
) -> Result<PendingSnapshot, EngineError> {
    let lane = producers.lane(key);
    let Ok(_permit) = lane.acquire_permit(1).await else {
        return Err(EngineError::Closed);
    };
    let st = part.stats();
    Ok(PendingSnapshot {
        snapshot: producers.snapshot(key, part.offsets().high_watermark),
        truncations: part.truncations(),
        appended_bytes: st.appended_bytes,
        segments_rolled: st.segments_rolled,
    })
}

/// Writes `pending` (whose offset must be durable). Returns its offset.
pub async fn write_pending<S: Storage>(
    part: &Partition<S>,
    pending: &PendingSnapshot,
) -> Result<u64, EngineError> {
    let offset = pending.snapshot.offset;
    if part.truncations() != pending.truncations {
        return Err(EngineError::Truncated {
            offset,
            high_watermark: part.offsets().high_watermark,
        });
    }
    part.write_producer_snapshot(&pending.snapshot).await?;
    Ok(offset)
}

/// Where a partition instance stands with its snapshots: what decides
/// whether one is due.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotMark {
    /// Offset of the newest snapshot written or loaded for this instance.
    pub offset: Option<u64>,
    /// Bytes a rebuild would replay, as of `appended_bytes`.
    pub replay_bytes: u64,
    /// The instance's `LogStats::appended_bytes` when `replay_bytes` was
    /// measured.
    pub appended_bytes: u64,
    /// Its `LogStats::segments_rolled` then.
    pub segments_rolled: u64,
    /// After a failed snapshot: none is tried before this time.
    pub not_before_ms: i64,
}

impl SnapshotMark {
    /// After a rebuild that replayed `replayed_bytes` from `snapshot`.
    pub fn opened(snapshot: Option<u64>, replayed_bytes: u64) -> SnapshotMark {
        SnapshotMark {
            offset: snapshot,
            replay_bytes: replayed_bytes,
            appended_bytes: 0,
            segments_rolled: 0,
            not_before_ms: 0,
        }
    }

    /// After a snapshot at `offset`, with the instance's counters then.
    pub fn written(offset: u64, appended_bytes: u64, segments_rolled: u64) -> SnapshotMark {
        SnapshotMark {
            offset: Some(offset),
            replay_bytes: 0,
            appended_bytes,
            segments_rolled,
            not_before_ms: 0,
        }
    }

    /// After a failed snapshot at `now_ms`: the next try waits
    /// [`PRODUCER_SNAPSHOT_RETRY_MS`].
    pub fn postpone(&mut self, now_ms: i64) {
        self.not_before_ms = now_ms.saturating_add(PRODUCER_SNAPSHOT_RETRY_MS as i64);
    }

    /// Whether a snapshot is due while running: a segment rolled since the
    /// last one, or enough bytes to replay piled up; never when nothing
    /// was appended since (`high_watermark` is where the last one is).
    pub fn due(&self, high_watermark: u64, appended_bytes: u64, segments_rolled: u64) -> bool {
        if self.offset == Some(high_watermark) {
            return false;
        }
        let replay = self
            .replay_bytes
            .saturating_add(appended_bytes.saturating_sub(self.appended_bytes));
        segments_rolled > self.segments_rolled || replay >= PRODUCER_SNAPSHOT_INTERVAL_BYTES
    }

    /// Whether a clean close should write one: the log holds frames past
    /// the last snapshot (so that the next open replays nothing).
    pub fn due_at_close(&self, log_start: u64, high_watermark: u64) -> bool {
        match self.offset {
            Some(o) => o != high_watermark,
            None => high_watermark > log_start,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Durability, FlushPolicy, LogConfig};
    use crate::producers::{Check, ProducerBatch};
    use bytes::BytesMut;
    use futures_lite::future::block_on;
    use std::path::Path;
    use strom_engine::storage::FaultyStorage;

    const NOW_MS: i64 = 1_800_000_000_000;
    const K: PartitionKey = PartitionKey {
        topic_id: 5,
        partition: 0,
    };

    fn cfg() -> LogConfig {
        LogConfig {
            segment_bytes: 64 << 10,
            frame_bytes_max: 32 << 10,
            cache_bytes_max: 0,
            write_buffer_bytes: 64 << 10,
            unwritten_bytes_max: 256 << 10,
            checkpoint_interval_bytes: 64 << 10,
            preallocate_bytes: 16 << 10,
            flush: FlushPolicy::Never,
            retention_ms: None,
            ..LogConfig::default()
        }
    }

    fn frame(pid: i64, first_seq: i32, n: u32) -> BytesMut {
        let mut b = strom_flatbuffers::BatchBuilder::new();
        b.set_producer(pid, 0, first_seq);
        let v = vec![b'x'; 300];
        for _ in 0..n {
            b.push(&strom_flatbuffers::RecordIn {
                timestamp_ms: NOW_MS,
                value: Some(&v),
                ..Default::default()
            });
        }
        BytesMut::from(&b.finish()[..])
    }

    async fn open(storage: &FaultyStorage) -> Partition<FaultyStorage> {
        Partition::open_on(storage.clone(), Path::new("/t/0"), cfg(), false)
            .await
            .expect("open")
    }

    /// The produce path's part that matters here: check, append, record.
    async fn produce(
        live: &mut ProducerStates,
        part: &Partition<FaultyStorage>,
        (pid, seq, n): (i64, i32, u32),
        durability: Durability,
    ) -> Check {
        let b = ProducerBatch {
            producer_id: pid,
            epoch: 0,
            first_seq: seq,
            last_seq: seq + n as i32 - 1,
        };
        let c = live.check(K, &b);
        if c == Check::Append {
            let info = part
                .append(frame(pid, seq, n), durability)
                .await
                .expect("append");
            live.record(K, &b, info.base_offset, info.last_offset, NOW_MS);
        }
        c
    }

    /// A process crash (kill -9) with batches written and their answers
    /// lost: after the restart the rebuilt state answers each retried
    /// batch as a duplicate with its original offsets, from a snapshot plus
    /// a replay as from the log alone, and a damaged snapshot only makes
    /// the replay longer. Over the fault-injecting storage, segments rolled
    /// along the way.
    #[test]
    fn a_rebuild_after_a_crash_answers_every_retry_as_the_live_state_did() {
        block_on(async {
            let storage = FaultyStorage::new(7);
            let part = open(&storage).await;
            let producers = Producers::default();
            let mut live = ProducerStates::default();
            // 6 producers, 40 batches each, interleaved; about 240 KiB, so
            // the 64 KiB segments roll.
            for round in 0..40 {
                for pid in 0..6 {
                    let c = produce(&mut live, &part, (pid, round * 3, 3), Durability::Buffered);
                    assert_eq!(c.await, Check::Append);
                }
                if round == 25 {
                    part.flush().await.expect("flush");
                    let snap = live.snapshot(K, part.offsets().high_watermark);
                    part.write_producer_snapshot(&snap).await.expect("snapshot");
                }
            }
            assert!(part.stats().segments_rolled > 2, "{:?}", part.stats());
            // Written (kill -9 keeps it), not durable.
            part.flush().await.expect("flush");
            for pid in 0..6 {
                let c = produce(&mut live, &part, (pid, 120, 3), Durability::Written);
                assert_eq!(c.await, Check::Append);
            }
            let end = part.offsets().high_watermark;
            drop(part);
            storage.crash_process();
            let part = open(&storage).await;
            assert_eq!(
                part.offsets().high_watermark,
                end,
                "kill -9 keeps written data"
            );
            let (rebuilt, report) = rebuild(&part, K, producers.capacity(), NOW_MS).await;
            assert!(report.snapshot_offset.is_some(), "{report:?}");
            assert!(report.stopped.is_none(), "{report:?}");
            assert_eq!(report.to_offset, end);
            assert_eq!(report.producers, 6);
            assert!(live.same_partition(&rebuilt, K), "{report:?}");
            producers.install(K, rebuilt);
            for pid in 0..6 {
                for seq in [108, 111, 114, 117, 120] {
                    let b = ProducerBatch {
                        producer_id: pid,
                        epoch: 0,
                        first_seq: seq,
                        last_seq: seq + 2,
                    };
                    assert_eq!(producers.check(K, &b), live.check(K, &b), "{pid} {seq}");
                    assert!(matches!(producers.check(K, &b), Check::Duplicate { .. }));
                }
            }
            // The same from the log alone (every snapshot damaged).
            for name in storage.list(Path::new("/t/0")).await.expect("list") {
                if name.ends_with(".snapshot") {
                    storage.corrupt_byte(&Path::new("/t/0").join(name), 20);
                }
            }
            let (from_log, report) = rebuild(&part, K, producers.capacity(), NOW_MS).await;
            assert_eq!(report.snapshot_offset, None);
            assert_eq!(report.passed_over.len(), 1, "{report:?}");
            assert_eq!(report.from_offset, 0);
            assert!(live.same_partition(&from_log, K));
            part.close().await.expect("close");
        });
    }

    /// A snapshot written by the job is the state at the high watermark;
    /// a rebuild from it replays nothing after a clean close.
    #[test]
    fn a_snapshot_at_close_leaves_nothing_to_replay() {
        block_on(async {
            let storage = FaultyStorage::new(8);
            let part = open(&storage).await;
            let producers = Producers::default();
            let mut live = ProducerStates::default();
            for seq in 0..10 {
                produce(&mut live, &part, (3, seq, 1), Durability::Buffered).await;
            }
            producers.install(K, {
                let (s, _) = rebuild(&part, K, producers.capacity(), NOW_MS).await;
                s
            });
            let mark = SnapshotMark::opened(None, 0);
            assert!(mark.due_at_close(0, 10));
            let at = write_snapshot(&producers, K, &part).await.expect("written");
            assert_eq!(at, 10);
            let mark = SnapshotMark::written(at, 0, 0);
            assert!(!mark.due_at_close(0, 10));
            assert!(!mark.due(10, 1 << 30, 5), "nothing appended since");
            part.close().await.expect("close");
            let part = open(&storage).await;
            let (rebuilt, report) = rebuild(&part, K, producers.capacity(), NOW_MS).await;
            assert_eq!(report.snapshot_offset, Some(10));
            assert_eq!((report.frames, report.bytes), (0, 0));
            assert!(live.same_partition(&rebuilt, K));
            part.close().await.expect("close");
        });
    }

    /// What a rebuild costs, over the in-memory storage (CPU and the read
    /// path, no disk): a replay of one snapshot interval of frames from
    /// many producers, and a snapshot of the most producers a shard holds.
    /// Prints timings; run with `--release --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn rebuild_cost() {
        use strom_engine::storage::MemoryStorage;
        let producers_n = 10_000i64;
        block_on(async {
            let storage = MemoryStorage::new();
            let config = LogConfig {
                cache_bytes_max: 0,
                ..LogConfig::default()
            };
            let part =
                Partition::open_on(storage.clone(), Path::new("/m/0"), config.clone(), false)
                    .await
                    .expect("open");
            let v = vec![b'x'; 200];
            let mut seqs = vec![0i32; producers_n as usize];
            let mut appended = 0u64;
            let mut i = 0u64;
            while appended < PRODUCER_SNAPSHOT_INTERVAL_BYTES {
                let pid = (i % producers_n as u64) as i64;
                let mut b = strom_flatbuffers::BatchBuilder::new();
                b.set_producer(pid, 0, seqs[pid as usize]);
                for _ in 0..4 {
                    b.push(&strom_flatbuffers::RecordIn {
                        timestamp_ms: NOW_MS,
                        value: Some(&v),
                        ..Default::default()
                    });
                }
                seqs[pid as usize] += 4;
                let f = BytesMut::from(&b.finish()[..]);
                appended += f.len() as u64;
                part.append(f, Durability::Buffered).await.expect("append");
                i += 1;
            }
            part.close().await.expect("close");
            let part = Partition::open_on(storage.clone(), Path::new("/m/0"), config, false)
                .await
                .expect("reopen");
            let t = std::time::Instant::now();
            let (states, r) = rebuild(&part, K, 100_000, NOW_MS).await;
            let replay = t.elapsed();
            println!(
                "replay: {} frames, {} MiB, {} producers in {:?} ({:.0} MiB/s)",
                r.frames,
                r.bytes >> 20,
                states.len(),
                replay,
                (r.bytes as f64 / (1 << 20) as f64) / replay.as_secs_f64()
            );
            // The largest snapshot: 100,000 producers of 5 batches.
            let mut big = ProducerStates::default();
            for pid in 0..100_000i64 {
                for b in 0..5u64 {
                    let batch = ProducerBatch {
                        producer_id: pid,
                        epoch: 0,
                        first_seq: b as i32,
                        last_seq: b as i32,
                    };
                    let off = pid as u64 * 5 + b;
                    big.record(K, &batch, off, off, NOW_MS);
                }
            }
            let t = std::time::Instant::now();
            let snap = big.snapshot(K, 500_000);
            let bytes = snap.encode(0);
            let encode = t.elapsed();
            let t = std::time::Instant::now();
            let back = strom_engine::producer_snapshot::ProducerSnapshot::decode(&bytes, 500_000)
                .expect("decodes");
            let decode = t.elapsed();
            let t = std::time::Instant::now();
            let restored = Rebuild::from_snapshot(K, 0, 100_000, &back);
            let (restored, _) = restored.finish(NOW_MS, PRODUCER_ID_EXPIRATION_MS);
            let restore = t.elapsed();
            let t = std::time::Instant::now();
            let mut shard = ProducerStates::default();
            shard.install(K, restored);
            let install = t.elapsed();
            println!(
                "snapshot of 100,000 producers: {} bytes; take+encode {encode:?}, decode {decode:?}, restore {restore:?}, install {install:?}",
                bytes.len()
            );
            part.close().await.expect("close");
        });
    }

    #[test]
    fn snapshots_are_due_after_a_roll_or_enough_bytes() {
        let m = SnapshotMark::written(100, 1_000, 2);
        assert!(!m.due(150, 2_000, 2));
        assert!(m.due(150, 2_000, 3), "a roll");
        assert!(
            m.due(150, 1_000 + PRODUCER_SNAPSHOT_INTERVAL_BYTES, 2),
            "bytes"
        );
        let opened = SnapshotMark::opened(Some(5), PRODUCER_SNAPSHOT_INTERVAL_BYTES - 10);
        assert!(!opened.due(6, 9, 0));
        assert!(opened.due(6, 10, 0), "what the open replayed counts");
        assert!(
            !SnapshotMark::opened(None, 0).due_at_close(7, 7),
            "empty log"
        );
    }
}
