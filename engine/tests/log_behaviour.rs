//! Targeted behaviours of the partition log over the in-memory and
//! fault-injecting storages (no io_uring needed): corruption is never served,
//! recovery scans only the tail, timestamp look-ups, format versioning,
//! retention, frames larger than a read chunk.

use std::path::Path;

use bytes::BytesMut;
use futures_lite::future::block_on;
use strom_engine::storage::{FaultKind, FaultyStorage, MemoryStorage, Storage};
use strom_engine::{EngineError, FlushPolicy, Log, LogConfig};
use strom_flatbuffers::{BatchBuilder, FrameHeader, RecordIn};

fn cfg() -> LogConfig {
    LogConfig {
        segment_bytes: 256 << 10,
        frame_bytes_max: 128 << 10,
        cache_bytes_max: 0,
        write_buffer_bytes: 64 << 10,
        unwritten_bytes_max: 256 << 10,
        checkpoint_interval_bytes: 64 << 10,
        preallocate_bytes: 64 << 10,
        flush: FlushPolicy::Never,
        retention_ms: None,
        ..LogConfig::default()
    }
}

/// Whether a result is the error of a failed log.
fn is_failed<T>(r: &Result<T, EngineError>) -> bool {
    matches!(r, Err(EngineError::Failed { .. }))
}

fn frame(ts: i64, records: usize, value_len: usize) -> BytesMut {
    let mut b = BatchBuilder::new();
    let v = vec![7u8; value_len];
    for i in 0..records {
        b.push(&RecordIn {
            timestamp_ms: ts + i as i64,
            key: None,
            value: Some(&v),
            headers: &[],
        });
    }
    BytesMut::from(&b.finish()[..])
}

#[test]
fn a_flipped_bit_on_disk_is_an_error_never_data() {
    block_on(async {
        let storage = FaultyStorage::new(1);
        let dir = Path::new("/p");
        let (mut log, _) = Log::open(storage.clone(), dir, cfg(), 0)
            .await
            .expect("open");
        for i in 0..200 {
            log.append(frame(i, 2, 1000), i).await.expect("append");
        }
        log.close(0).await.expect("close");
        // Flip one payload byte of the first frame of the first segment.
        storage.corrupt_byte(&dir.join("00000000000000000000.log"), 500);
        let (mut log, _) = Log::open(storage.clone(), dir, cfg(), 0)
            .await
            .expect("reopen");
        match log.read(0, 1 << 20).await {
            Err(EngineError::Corrupt { position, .. }) => assert_eq!(position, 0),
            other => panic!("corrupt frame served or wrong error: {other:?}"),
        }
        // Data in later segments is still served.
        let hw = log.offsets().high_watermark;
        let b = log
            .read(hw - 2, 1 << 20)
            .await
            .expect("later data readable");
        assert_eq!(b.frames.len(), 1);
    });
}

#[test]
fn recovery_scans_only_past_the_checkpoint() {
    block_on(async {
        let storage = FaultyStorage::new(2);
        let dir = Path::new("/p");
        let mut config = cfg();
        config.segment_bytes = 64 << 20;
        config.frame_bytes_max = 1 << 20;
        config.checkpoint_interval_bytes = 256 << 10;
        let (mut log, _) = Log::open(storage.clone(), dir, config.clone(), 0)
            .await
            .expect("open");
        let mut total = 0u64;
        while total < 16 << 20 {
            let f = frame(0, 4, 4000);
            total += f.len() as u64;
            log.append(f, 0).await.expect("append");
            log.flush(0).await.expect("flush");
        }
        let hw = log.offsets().high_watermark;
        storage.crash_lose_all_unsynced();
        drop(log);
        let (log, report) = Log::open(storage.clone(), dir, config, 0)
            .await
            .expect("recover");
        assert_eq!(log.offsets().high_watermark, hw, "durable data lost");
        assert!(!report.clean_shutdown);
        assert!(
            report.scanned_bytes <= 512 << 10,
            "scanned {} bytes of a {} byte log",
            report.scanned_bytes,
            total
        );
    });
}

#[test]
fn offset_for_timestamp_matches_brute_force() {
    block_on(async {
        let storage = MemoryStorage::new();
        let (mut log, _) = Log::open(storage, Path::new("/p"), cfg(), 0)
            .await
            .expect("open");
        // Non-monotonic timestamps across batches, as Kafka allows.
        let mut all: Vec<(u64, i64)> = Vec::new();
        for i in 0..300i64 {
            let ts = (i * 37) % 500 + i;
            let info = log.append(frame(ts, 3, 300), 0).await.expect("append");
            for r in 0..3 {
                all.push((info.base_offset + r, ts + r as i64));
            }
        }
        for target in [-5, 0, 10, 250, 499, 700, 797, 798, 10_000] {
            let expected = all.iter().find(|(_, ts)| *ts >= target).map(|(o, _)| *o);
            let got = log.offset_for_timestamp(target).await.expect("lookup");
            assert_eq!(got, expected, "timestamp {target}");
        }
    });
}

#[test]
fn a_newer_checkpoint_version_is_refused_not_misread() {
    block_on(async {
        let storage = MemoryStorage::new();
        let dir = Path::new("/p");
        let (log, _) = Log::open(storage.clone(), dir, cfg(), 0)
            .await
            .expect("open");
        log.close(0).await.expect("close");
        let cp = dir.join("checkpoint");
        let mut bytes = storage
            .read_all(&cp, 1 << 10)
            .await
            .expect("read")
            .expect("exists")
            .to_vec();
        bytes[4] = 9; // version field
        storage.write_atomic(&cp, &bytes).await.expect("write");
        match Log::open(storage, dir, cfg(), 0).await {
            Err(EngineError::UnsupportedFormat { found: 9, .. }) => {}
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("a newer format was opened"),
        }
    });
}

#[test]
fn retention_deletes_closed_segments_only_and_advances_the_start() {
    block_on(async {
        let storage = MemoryStorage::new();
        let dir = Path::new("/p");
        let mut config = cfg();
        config.retention_ms = Some(1_000);
        let (mut log, _) = Log::open(storage.clone(), dir, config.clone(), 0)
            .await
            .expect("open");
        for i in 0..600 {
            log.append(frame(i, 1, 2000), i).await.expect("append");
        }
        let before = storage
            .list(dir)
            .await
            .expect("list")
            .iter()
            .filter(|n| n.ends_with(".log"))
            .count();
        assert!(before >= 3, "expected several segments, got {before}");
        // Everything is older than the retention: all closed segments go.
        let deleted = log.apply_retention(1_000_000).await.expect("retention");
        assert_eq!(deleted, before - 1);
        let after = storage
            .list(dir)
            .await
            .expect("list")
            .iter()
            .filter(|n| n.ends_with(".log"))
            .count();
        assert_eq!(after, 1, "the active segment stays");
        let o = log.offsets();
        assert!(o.log_start_offset > 0);
        assert!(matches!(
            log.read(0, 100).await,
            Err(EngineError::OffsetOutOfRange { .. })
        ));
        let b = log
            .read(o.log_start_offset, 100)
            .await
            .expect("start readable");
        let h = FrameHeader::ref_from(&b.frames[0]).expect("header");
        assert_eq!(h.base_offset(), o.log_start_offset);
        // The new start survives a restart.
        log.close(0).await.expect("close");
        let (log, _) = Log::open(storage, dir, config, 0).await.expect("reopen");
        assert_eq!(log.offsets().log_start_offset, o.log_start_offset);
    });
}

#[test]
fn a_frame_larger_than_a_read_chunk_is_read_whole_from_disk() {
    block_on(async {
        let storage = MemoryStorage::new();
        let dir = Path::new("/p");
        let (mut log, _) = Log::open(storage, dir, cfg(), 0).await.expect("open");
        log.append(frame(0, 1, 10), 0).await.expect("small");
        let big = frame(0, 1, 100_000);
        let big_len = big.len();
        log.append(big, 0).await.expect("big");
        log.flush(0).await.expect("flush");
        let b = log.read(1, 10).await.expect("read");
        assert_eq!(
            b.frames.len(),
            1,
            "at least one whole frame even past max_bytes"
        );
        assert_eq!(b.frames[0].len(), big_len);
        strom_flatbuffers::verify_stored(&b.frames[0]).expect("whole and valid");
    });
}

/// A frame written by a newer Strom (a higher frame version) in the tail
/// that recovery scans must stop start-up with a clear error: truncating it
/// as if it were damage would destroy a newer writer's data.
#[test]
fn a_newer_frame_version_in_the_tail_is_refused_not_truncated() {
    use strom_engine::storage::{StorageFile, WriteBuf};
    block_on(async {
        let storage = FaultyStorage::new(3);
        let dir = Path::new("/p");
        let (mut log, _) = Log::open(storage.clone(), dir, cfg(), 0)
            .await
            .expect("open");
        for i in 0..3 {
            log.append(frame(i, 1, 100), 0).await.expect("append");
        }
        log.flush(0).await.expect("flush");
        storage.crash_lose_all_unsynced();
        drop(log);
        let seg = dir.join("00000000000000000000.log");
        let file = storage.open(&seg).await.expect("open").expect("exists");
        let size = file.size().await.expect("size") as usize;
        let old = file.read_at(0, size).await.expect("read");
        // The file is padded to a block: the log ends after the last frame.
        let (frames, _) = strom_engine::scan::scan(&old, 0, 0);
        assert_eq!(frames.len(), 3);
        let len = frames
            .last()
            .map(|f| (f.position + f.len_bytes) as usize)
            .expect("frames");
        let old = old.slice(..len);
        let mut newer = frame(9, 1, 100).to_vec();
        strom_flatbuffers::stamp_base_offset(&mut newer, 3);
        newer[4] = 2; // frame version
        let total = len + newer.len();
        let mut buf = file.alloc_buf(total.div_ceil(4096) * 4096);
        buf.as_mut_slice()[..len].copy_from_slice(&old);
        buf.as_mut_slice()[len..total].copy_from_slice(&newer);
        file.write_at(buf, 0).await.expect("write");
        file.fdatasync().await.expect("sync");
        match Log::open(storage.clone(), dir, cfg(), 0).await {
            Err(EngineError::UnsupportedFormat { found: 2, .. }) => {}
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("a newer frame was truncated or misread"),
        }
    });
}

/// The tail caches of all logs on one shard share one budget: however many
/// partitions a shard holds, cached bytes stay within it.
#[test]
fn tail_caches_share_the_shard_budget() {
    block_on(async {
        strom_engine::log::set_shard_cache_bytes_max(256 << 10);
        let storage = MemoryStorage::new();
        let mut config = cfg();
        config.cache_bytes_max = 1 << 20;
        let mut logs = Vec::new();
        for i in 0..8 {
            let dir = format!("/p{i}");
            let (log, _) = Log::open(storage.clone(), Path::new(&dir), config.clone(), 0)
                .await
                .expect("open");
            logs.push(log);
        }
        for round in 0..50 {
            for log in logs.iter_mut() {
                log.append(frame(round, 1, 2000), 0).await.expect("append");
                assert!(strom_engine::log::shard_cache_bytes() <= 256 << 10);
            }
        }
        // Reads past the cache still work (from disk).
        let b = logs[0].read(0, 1 << 20).await.expect("read");
        assert!(!b.frames.is_empty());
        drop(logs);
        assert_eq!(
            strom_engine::log::shard_cache_bytes(),
            0,
            "dropped logs give their bytes back"
        );
    });
}

/// fsyncgate: a failed fdatasync may have dropped the dirty data, and a
/// retried fdatasync then succeeds without writing it. The log used to return
/// the error and stay open, so the next flush (or the next append, retrying
/// a segment roll) synced again and acknowledged records that were gone.
/// A failed sync must fail the log until a reopen recovers from the disk.
#[test]
fn a_failed_fdatasync_fails_the_log_until_reopen() {
    block_on(async {
        let storage = FaultyStorage::new(5);
        let dir = Path::new("/p");
        let (mut log, _) = Log::open(storage.clone(), dir, cfg(), 0)
            .await
            .expect("open");
        log.append(frame(0, 1, 100), 0).await.expect("append");
        assert_eq!(log.flush(0).await.expect("flush"), 1);
        log.append(frame(1, 1, 100), 1).await.expect("append");
        log.write_pending().await.expect("write");
        // The next operation, the flush's fdatasync, fails.
        storage.fail_after(0, FaultKind::Eio);
        log.flush(1).await.expect_err("fdatasync fails");
        storage.clear_faults();
        assert!(log.failed().is_some(), "a failed sync fails the log");
        let r = log.flush(2).await;
        assert!(is_failed(&r), "retried flush after a failed sync: {r:?}");
        let r = log.append(frame(2, 1, 100), 2).await;
        assert!(is_failed(&r), "append after a failed sync: {r:?}");
        let r = log.write_pending().await;
        assert!(is_failed(&r), "write after a failed sync: {r:?}");
        assert_eq!(log.offsets().durable_offset, 1);
        // What was durable before the failure can still be read.
        let b = log.read(0, 1 << 20).await.expect("read durable data");
        assert!(!b.frames.is_empty());
        drop(log);
        // Reopening recovers from what is on disk, and takes appends again.
        let (mut log, _) = Log::open(storage.clone(), dir, cfg(), 0)
            .await
            .expect("reopen");
        assert!(log.offsets().high_watermark >= 1);
        log.append(frame(3, 1, 100), 3)
            .await
            .expect("append after reopen");
    });
}

/// The same failure reached through a segment roll: the roll's flush fails
/// its fdatasync; the next append used to retry the roll, whose fdatasync
/// succeeded and closed the segment as if every byte were on disk.
#[test]
fn a_failed_fdatasync_in_a_segment_roll_fails_the_log() {
    block_on(async {
        let storage = FaultyStorage::new(6);
        let dir = Path::new("/p");
        let (mut log, _) = Log::open(storage.clone(), dir, cfg(), 0)
            .await
            .expect("open");
        // Fill the first segment (256 KiB) without syncing.
        let mut i = 0;
        while log.stats().log_bytes < 250 << 10 {
            log.append(frame(i, 1, 2000), i).await.expect("append");
            i += 1;
        }
        log.write_pending().await.expect("write");
        assert_eq!(log.stats().segments_rolled, 0);
        storage.fail_after(0, FaultKind::Eio);
        // This append rolls: it switches to the prepared next segment and
        // is accepted (buffered); the closed segment's fdatasync runs as a
        // job after it, and fails.
        log.append(frame(i, 1, 8000), i)
            .await
            .expect("the rolling append is buffered");
        assert_eq!(log.stats().segments_rolled, 1);
        assert!(log.failed().is_some(), "the closed segment's sync failed");
        storage.clear_faults();
        let r = log.append(frame(i, 1, 8000), i).await;
        assert!(
            matches!(r, Err(EngineError::Failed { .. })),
            "append after a failed roll: {r:?}"
        );
        assert!(matches!(
            log.flush(i).await,
            Err(EngineError::Failed { .. })
        ));
    });
}

/// Produce frames are views into a connection's read buffer. The tail cache
/// used to keep those views and charge only the frame's length, so a 100-byte
/// frame of a cold partition pinned its whole read buffer (64 KiB to 1 MiB)
/// and the cache budget did not bound memory. Small frames must be copied
/// into memory the cache owns.
#[test]
fn tail_cache_does_not_pin_large_read_buffers() {
    const READ_BUFFER_BYTES: usize = 1 << 20;
    const FRAMES: usize = 64;
    block_on(async {
        let budget = 1 << 20;
        strom_engine::log::set_shard_cache_bytes_max(budget);
        let mut config = cfg();
        config.cache_bytes_max = budget;
        let (mut log, _) = Log::open(MemoryStorage::new(), Path::new("/p"), config, 0)
            .await
            .expect("open");
        // Address ranges of the read buffers the frames were cut from. The
        // rest of each buffer is kept (as a connection keeps reading into
        // it), so that no later allocation can reuse its addresses and be
        // mistaken for a frame pinning it.
        let mut buffers = Vec::new();
        let mut rests = Vec::new();
        for i in 0..FRAMES {
            let f = frame(i as i64, 1, 100);
            let mut read_buf = BytesMut::with_capacity(READ_BUFFER_BYTES);
            let start = read_buf.as_ptr() as usize;
            buffers.push(start..start + READ_BUFFER_BYTES);
            read_buf.extend_from_slice(&f);
            read_buf.extend_from_slice(&[0u8; 4096]); // the next request
            let view = read_buf.split_to(f.len());
            rests.push(read_buf);
            log.append(view, 0).await.expect("append");
        }
        let b = log.read(0, 1 << 20).await.expect("read");
        assert_eq!(b.frames.len(), FRAMES, "every frame is cached");
        assert_eq!(log.stats().cache_hits, 1);
        // Memory the cached frames hold: their own bytes, plus every read
        // buffer one of them still points into.
        let pinned: std::collections::BTreeSet<usize> = b
            .frames
            .iter()
            .filter_map(|f| {
                let p = f.as_ptr() as usize;
                buffers.iter().position(|r| r.contains(&p))
            })
            .collect();
        let held = b.bytes() + pinned.len() * READ_BUFFER_BYTES;
        assert!(
            held <= budget,
            "the cache holds {held} bytes ({} read buffers pinned) over a {budget}-byte budget",
            pinned.len()
        );
        assert!(strom_engine::log::shard_cache_bytes() <= budget);
    });
}

/// A group-commit sync takes its target (offset and length of the active
/// segment), releases the log and runs its fdatasync. A truncation that ran
/// meanwhile cut the log below that target; the sync then published a durable
/// offset above the new end, and a later `sync_to` returned at once without
/// syncing records appended after the truncation.
#[test]
fn a_sync_racing_a_truncation_does_not_publish_past_the_end() {
    // (Written when the fdatasync ran in the caller's task and a truncation
    // could run inside it; see the comment at the check.)
    use futures_lite::future::{yield_now, zip};
    use strom_engine::{Durability, Partition};
    block_on(async {
        let storage = FaultyStorage::new(11);
        // Each fdatasync yields once, so the truncation runs inside it.
        storage.set_sync_yields(1);
        let dir = Path::new("/p");
        let p = Partition::open_on(storage.clone(), dir, cfg(), false)
            .await
            .expect("open");
        for i in 0..3 {
            p.append(frame(i, 1, 100), Durability::Buffered)
                .await
                .expect("append");
        }
        let sync = p.sync_to(3);
        let truncate = async {
            // Once the sync has written everything and is in its fdatasync:
            while p.offsets().written_offset < 3 {
                yield_now().await;
            }
            p.truncate_to(1).await
        };
        let (synced, truncated) = zip(sync, truncate).await;
        assert_eq!(truncated.expect("truncate"), 1);
        let o = p.offsets();
        assert!(
            o.durable_offset <= o.written_offset && o.written_offset <= o.high_watermark,
            "{o:?}"
        );
        // The fdatasync is a job of the log, and a truncation takes the log
        // only once the jobs in flight drained: it cannot cut under a sync
        // any more. The sync either finished first (its caller was told the
        // truth at the time: 0..3 were durable) or was asked after the cut
        // and refused; either way nothing past the end is durable (above).
        if let Err(e) = &synced {
            assert!(
                matches!(e, strom_engine::EngineError::Truncated { .. }),
                "{e:?}"
            );
        }
        assert_eq!(o.high_watermark, 1);
        assert_eq!(o.durable_offset, 1, "the cut lowers the durable offset");
        // Records appended after the truncation are synced for real.
        for i in 3..5 {
            p.append(frame(i, 1, 100), Durability::Buffered)
                .await
                .expect("append");
        }
        p.sync_to(3).await.expect("sync");
        drop(p);
        storage.crash_lose_all_unsynced();
        let (log, _) = Log::open(storage.clone(), dir, cfg(), 0)
            .await
            .expect("reopen");
        assert_eq!(log.offsets().high_watermark, 3, "acknowledged records lost");
    });
}

/// A roll switches to the prepared next segment at once; the closed
/// segment's fdatasync, its truncation and index files, the rename of the
/// new file from `next.segment` to its name and the checkpoint follow as
/// jobs. A crash may come between any two of them: recovery must find every
/// written record (process crash) or every durable one (power loss), with
/// dense offsets and indexes that agree with a scan, whichever jobs ran.
#[test]
fn a_crash_at_any_point_of_a_roll_recovers() {
    use strom_engine::log::{AppendStep, Job};
    let dir = Path::new("/p");
    let cfg = LogConfig {
        segment_bytes: 64 << 10,
        frame_bytes_max: 32 << 10,
        preallocate_bytes: 16 << 10,
        ..cfg()
    };
    fn run(log: &mut Log<FaultyStorage>, job: Job) {
        let r = block_on(job.fut);
        log.complete_job(job.id, r);
    }
    fn append(log: &mut Log<FaultyStorage>, i: i64) -> u64 {
        let mut f = frame(i, 1, 3000);
        loop {
            match log.try_append(f, i).expect("append") {
                AppendStep::Done(info) => return info.last_offset + 1,
                AppendStep::Blocked(back, _) => {
                    f = back;
                    // Run what the roll waits for (writes, the next file),
                    // but never a closed segment's jobs: those stay pending.
                    for job in log.take_jobs() {
                        run(log, job);
                    }
                }
            }
        }
    }
    for jobs_run in 0..=2 {
        for power_loss in [false, true] {
            let storage = FaultyStorage::new(20 + jobs_run);
            let (mut log, _) =
                block_on(Log::open(storage.clone(), dir, cfg.clone(), 0)).expect("open");
            let mut i = 0;
            while log.stats().segments_rolled == 0 {
                append(&mut log, i);
                i += 1;
                if log.stats().segments_rolled == 0 {
                    // Keep everything of the first segment durable.
                    block_on(log.flush(i)).expect("flush");
                }
            }
            let durable = log.offsets().durable_offset;
            // The closed segment's jobs, then frames in the new segment.
            let mut closing: Vec<Job> = log.take_jobs();
            let mut end = 0;
            for _ in 0..3 {
                end = append(&mut log, i);
                i += 1;
            }
            log.request_write(end);
            let mut pending = Vec::new();
            for job in log.take_jobs() {
                if format!("{:?}", job.id).starts_with("Write") {
                    run(&mut log, job);
                } else {
                    pending.push(job);
                }
            }
            closing.extend(pending);
            assert_eq!(log.offsets().written_offset, end);
            // Run the first `jobs_run` of the roll's jobs (sync, then finish).
            for _ in 0..jobs_run {
                let Some(pos) = closing
                    .iter()
                    .position(|j| format!("{:?}", j.id).starts_with("Close"))
                else {
                    break;
                };
                let job = closing.remove(pos);
                run(&mut log, job);
                closing.extend(log.take_jobs());
            }
            drop(closing);
            drop(log);
            // Before the closing job, the new segment still has its
            // prepared name (recovery must adopt it).
            let names = block_on(storage.list(dir)).expect("list");
            assert_eq!(
                names.iter().any(|n| n == "next.segment"),
                jobs_run < 2,
                "jobs {jobs_run}: {names:?}"
            );
            if power_loss {
                storage.crash_lose_all_unsynced();
            } else {
                storage.crash_process();
            }
            let (mut log, report) = block_on(Log::open(storage.clone(), dir, cfg.clone(), 0))
                .unwrap_or_else(|e| panic!("jobs {jobs_run}: reopen: {e}"));
            let hw = log.offsets().high_watermark;
            if power_loss {
                assert!(
                    hw >= durable,
                    "jobs {jobs_run}: lost durable records: {hw} < {durable} ({report:?})"
                );
            } else {
                assert_eq!(
                    hw, end,
                    "jobs {jobs_run}: lost written records ({report:?})"
                );
            }
            block_on(log.check_indexes_against_scan())
                .unwrap_or_else(|e| panic!("jobs {jobs_run}: {e}"));
            let mut at = log.offsets().log_start_offset;
            while at < hw {
                let b = block_on(log.read(at, 1 << 20)).expect("read");
                assert!(!b.frames.is_empty());
                at = FrameHeader::ref_from(b.frames.last().expect("frame"))
                    .expect("header")
                    .next_offset();
            }
            assert_eq!(at, hw);
            // The log goes on: appends, a flush, another crash.
            for _ in 0..3 {
                block_on(log.append(frame(i, 1, 3000), i)).expect("append after recovery");
                i += 1;
            }
            let d = block_on(log.flush(i)).expect("flush");
            drop(log);
            storage.crash_lose_all_unsynced();
            let (log, _) =
                block_on(Log::open(storage.clone(), dir, cfg.clone(), 0)).expect("reopen");
            assert_eq!(log.offsets().high_watermark, d);
            let names = block_on(storage.list(dir)).expect("list");
            assert!(
                names.iter().filter(|n| n.ends_with(".log")).count() >= 2,
                "jobs {jobs_run}: {names:?}"
            );
        }
    }
}

/// A checkpoint writes the active segment's index files, then the
/// checkpoint file. Checkpoints became background jobs that run back to
/// back under load, and a SIGKILL between the two writes left index files
/// past the recovery point: recovery rebuilt the index by scanning the whole
/// segment (2 GiB in `strom-bench engine`) instead of the tail. The index is
/// now cut back to the recovery point.
#[test]
fn an_index_newer_than_the_checkpoint_is_cut_back_not_rebuilt() {
    block_on(async {
        let storage = FaultyStorage::new(30);
        let dir = Path::new("/p");
        let (mut log, _) = Log::open(storage.clone(), dir, cfg(), 0)
            .await
            .expect("open");
        for i in 0..40 {
            log.append(frame(i, 1, 2000), i).await.expect("append");
        }
        log.flush(40).await.expect("flush");
        let cp_path = dir.join("checkpoint");
        let old_cp = storage
            .read_all(&cp_path, 1 << 20)
            .await
            .expect("read")
            .expect("checkpoint");
        for i in 40..80 {
            log.append(frame(i, 1, 2000), i).await.expect("append");
        }
        let end = log.flush(80).await.expect("flush");
        let log_bytes = log.stats().log_bytes;
        drop(log);
        // The crash came after the index files, before the checkpoint.
        storage
            .write_atomic(&cp_path, &old_cp)
            .await
            .expect("restore the older checkpoint");
        storage.crash();
        let (mut log, report) = Log::open(storage.clone(), dir, cfg(), 0)
            .await
            .expect("reopen");
        assert_eq!(log.offsets().high_watermark, end);
        assert_eq!(report.rebuilt_indexes, 0, "{report:?}");
        // Only past the older recovery point, not the whole file.
        assert!(
            report.scanned_bytes < log_bytes + report.trimmed_zero_bytes,
            "{report:?}"
        );
        log.check_indexes_against_scan()
            .await
            .expect("index agrees");
    });
}

/// The story: a freshly created partition logged `clean_shutdown=false`, as
/// if it had crashed (no checkpoint file looked like a lost one). A new log
/// now reports `created` and a clean state; a damaged or missing checkpoint
/// beside existing segments is still unclean.
#[test]
fn a_new_log_reports_created_and_clean_a_crashed_one_does_not() {
    block_on(async {
        let storage = FaultyStorage::new(3);
        let dir = Path::new("/fresh");
        let (mut log, report) = Log::open(storage.clone(), dir, cfg(), 0)
            .await
            .expect("open");
        assert!(report.created, "{report:?}");
        assert!(report.clean_shutdown, "{report:?}");
        log.append(frame(0, 2, 100), 0).await.expect("append");
        log.close(0).await.expect("close");
        let (mut log, report) = Log::open(storage.clone(), dir, cfg(), 0)
            .await
            .expect("reopen");
        assert!(!report.created && report.clean_shutdown, "{report:?}");
        log.append(frame(1, 2, 100), 1).await.expect("append");
        log.flush(1).await.expect("flush");
        storage.crash_lose_all_unsynced();
        drop(log);
        let (_, report) = Log::open(storage.clone(), dir, cfg(), 0)
            .await
            .expect("recover");
        assert!(!report.created && !report.clean_shutdown, "{report:?}");
        // Segments without any checkpoint file: not new, not clean.
        storage
            .remove(&dir.join("checkpoint"))
            .await
            .expect("remove checkpoint");
        let (_, report) = Log::open(storage, dir, cfg(), 0)
            .await
            .expect("recover without checkpoint");
        assert!(!report.created && !report.clean_shutdown, "{report:?}");
    });
}
