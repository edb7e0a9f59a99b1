//! "Nothing waits on a lock across I/O": the partition shell over a storage
//! whose writes and fdatasyncs can be held (a stalled disk). Each test holds
//! one kind of I/O and shows what must still complete meanwhile; a
//! regression would hang, so each bounded wait is a race against a count of
//! executor yields, after which the test fails instead.

use std::path::Path;

use bytes::BytesMut;
use futures_lite::future::{block_on, or, yield_now, zip};
use strom_engine::storage::FaultyStorage;
use strom_engine::{Durability, FlushPolicy, Log, LogConfig, Partition};
use strom_flatbuffers::{BatchBuilder, RecordIn};

/// Executor yields a bounded wait allows before it counts as blocked.
const YIELDS_MAX: usize = 1_000;

fn cfg() -> LogConfig {
    LogConfig {
        segment_bytes: 64 << 10,
        frame_bytes_max: 32 << 10,
        cache_bytes_max: 1 << 20,
        write_buffer_bytes: 64 << 10,
        unwritten_bytes_max: 256 << 10,
        checkpoint_interval_bytes: 64 << 10,
        preallocate_bytes: 16 << 10,
        flush: FlushPolicy::Never,
        retention_ms: None,
        ..LogConfig::default()
    }
}

fn frame(ts: i64, value_len: usize) -> BytesMut {
    let mut b = BatchBuilder::new();
    let v = vec![7u8; value_len];
    b.push(&RecordIn {
        timestamp_ms: ts,
        key: None,
        value: Some(&v),
        headers: &[],
    });
    BytesMut::from(&b.finish()[..])
}

/// Runs `fut` to completion unless it needs more than `YIELDS_MAX` yields
/// of the other futures to get there (then None: it was blocked).
async fn within_yields<T>(fut: impl std::future::Future<Output = T>) -> Option<T> {
    or(async { Some(fut.await) }, async {
        for _ in 0..YIELDS_MAX {
            yield_now().await;
        }
        None
    })
    .await
}

async fn open(storage: &FaultyStorage) -> Partition<FaultyStorage> {
    Partition::open_on(storage.clone(), Path::new("/p"), cfg(), false)
        .await
        .expect("open")
}

/// A cached read completes while an acks=leader append waits for its write
/// (it used to wait for the log lock, held across the write).
#[test]
fn a_cached_read_does_not_wait_for_a_held_write() {
    block_on(async {
        let storage = FaultyStorage::new(1);
        let p = open(&storage).await;
        for i in 0..3 {
            p.append(frame(i, 100), Durability::Buffered)
                .await
                .expect("append");
        }
        storage.hold_writes(true);
        let writer = p.append(frame(3, 100), Durability::Written);
        let reader = async {
            yield_now().await; // the writer is now in its write
            let r = within_yields(p.read(0, 1 << 20)).await;
            storage.hold_writes(false);
            r
        };
        let (written, read) = zip(writer, reader).await;
        written.expect("written append");
        let batch = read.expect("the cached read waited for a held write");
        assert_eq!(batch.expect("read").frames.len(), 4);
    });
}

/// A cached read completes while a segment roll waits for its fdatasync.
#[test]
fn a_cached_read_does_not_wait_for_a_roll() {
    block_on(async {
        let storage = FaultyStorage::new(2);
        let p = open(&storage).await;
        // Fill the first segment to just below its size.
        let mut n = 0;
        while p.stats().log_bytes + 2 * 10_100 < cfg().segment_bytes {
            p.append(frame(n, 10_000), Durability::Buffered)
                .await
                .expect("append");
            n += 1;
        }
        storage.hold_syncs(true);
        let appender = async {
            // The second of these rolls the segment.
            for i in 0..3 {
                p.append(frame(n + i, 10_000), Durability::Buffered)
                    .await
                    .expect("append");
            }
        };
        let reader = async {
            for _ in 0..3 {
                yield_now().await;
            }
            let r = within_yields(p.read(0, 1 << 20)).await;
            storage.hold_syncs(false);
            r
        };
        let ((), read) = zip(appender, reader).await;
        let batch = read.expect("the cached read waited for a roll");
        assert!(!batch.expect("read").frames.is_empty());
        drop(p);
        let (log, _) = Log::open(storage.clone(), Path::new("/p"), cfg(), 0)
            .await
            .expect("reopen");
        assert!(log.offsets().high_watermark <= n as u64 + 3);
    });
}

/// Appends complete while an acks=leader append waits for its held write:
/// the writer waits for its own bytes, holding nothing (it used to hold the
/// log lock across the write, and every append queued behind it).
#[test]
fn appends_do_not_wait_for_a_held_write() {
    block_on(async {
        let storage = FaultyStorage::new(3);
        let p = open(&storage).await;
        p.append(frame(0, 100), Durability::Buffered)
            .await
            .expect("append");
        storage.hold_writes(true);
        let writer = p.append(frame(1, 100), Durability::Written);
        let others = async {
            yield_now().await; // the writer is now waiting for its write
            let r = within_yields(async {
                for i in 2..10 {
                    p.append(frame(i, 100), Durability::Buffered)
                        .await
                        .expect("append");
                }
            })
            .await;
            assert!(
                p.offsets().written_offset < 2,
                "the held write completed early"
            );
            storage.hold_writes(false);
            r
        };
        let (written, appended) = zip(writer, others).await;
        appended.expect("buffered appends waited for a held write");
        written.expect("written append");
        assert!(p.offsets().written_offset >= 2);
        p.flush().await.expect("flush");
        assert_eq!(p.offsets().durable_offset, 10);
    });
}

/// A durable append waits for the fdatasync; a concurrent acks=leader
/// append and a cached read do not.
#[test]
fn written_appends_and_reads_do_not_wait_for_a_held_fdatasync() {
    block_on(async {
        let storage = FaultyStorage::new(4);
        let p = open(&storage).await;
        storage.hold_syncs(true);
        let durable = p.append(frame(0, 100), Durability::Durable);
        let others = async {
            for _ in 0..3 {
                yield_now().await;
            }
            let r = within_yields(async {
                let info = p
                    .append(frame(1, 100), Durability::Written)
                    .await
                    .expect("written append");
                let batch = p.read(0, 1 << 20).await.expect("read");
                (info, batch)
            })
            .await;
            assert_eq!(p.offsets().durable_offset, 0, "the held sync completed");
            storage.hold_syncs(false);
            r
        };
        let (d, r) = zip(durable, others).await;
        d.expect("durable append");
        let (info, batch) = r.expect("waited for a held fdatasync");
        assert_eq!(info.base_offset, 1);
        assert_eq!(batch.frames.len(), 2);
    });
}

/// A roll costs the append path nothing synchronous: with the closed
/// segment's fdatasync held, appends go on into the new segment (the next
/// segment file was prepared in the background), and a durable append in
/// the new segment is acknowledged only once the closed one is synced.
#[test]
fn a_roll_does_not_block_appends() {
    block_on(async {
        let storage = FaultyStorage::new(5);
        let p = open(&storage).await;
        let mut n = 0;
        // Past half the segment: the next segment file is being prepared.
        while p.stats().log_bytes < cfg().segment_bytes * 3 / 4 {
            p.append(frame(n, 5_000), Durability::Buffered)
                .await
                .expect("append");
            n += 1;
        }
        p.flush().await.expect("flush"); // runs the queued jobs
        storage.hold_syncs(true);
        let appended = within_yields(async {
            for i in 0..12 {
                p.append(frame(n + i, 5_000), Durability::Written)
                    .await
                    .expect("append");
            }
        })
        .await;
        assert!(appended.is_some(), "appends waited for a roll's fdatasync");
        assert_eq!(p.stats().segments_rolled, 1);
        let o = p.offsets();
        assert!(o.durable_offset < o.written_offset, "{o:?}");
        let durable = p.append(frame(0, 10), Durability::Durable);
        let release = async {
            for _ in 0..10 {
                yield_now().await;
            }
            assert!(
                p.offsets().durable_offset < p.offsets().high_watermark,
                "acknowledged durable before the closed segment's sync"
            );
            storage.hold_syncs(false);
        };
        let (d, ()) = zip(durable, release).await;
        let info = d.expect("durable append");
        assert!(p.offsets().durable_offset > info.last_offset);
        let high_watermark = p.offsets().high_watermark;
        drop(p);
        storage.crash_lose_all_unsynced();
        let (log, _) = Log::open(storage.clone(), Path::new("/p"), cfg(), 0)
            .await
            .expect("reopen");
        assert_eq!(log.offsets().high_watermark, high_watermark);
    });
}

/// A read past the tail cache reads the disk holding nothing: appends and
/// acks=leader writes go on while its disk read is stalled (it used to take
/// the log for the whole read).
#[test]
fn appends_do_not_wait_for_a_held_disk_read() {
    block_on(async {
        let storage = FaultyStorage::new(6);
        let config = LogConfig {
            cache_bytes_max: 0,
            ..cfg()
        };
        let p = Partition::open_on(storage.clone(), Path::new("/p"), config, false)
            .await
            .expect("open");
        for i in 0..5 {
            p.append(frame(i, 1_000), Durability::Written)
                .await
                .expect("append");
        }
        storage.hold_reads(true);
        let reader = p.read(0, 1 << 20);
        let others = async {
            yield_now().await; // the reader is now in its disk read
            let r = within_yields(async {
                for i in 5..10 {
                    p.append(frame(i, 1_000), Durability::Written)
                        .await
                        .expect("append");
                }
            })
            .await;
            storage.hold_reads(false);
            r
        };
        let (read, appended) = zip(reader, others).await;
        appended.expect("appends waited for a held disk read");
        let batch = read.expect("read");
        assert!(!batch.frames.is_empty());
        assert_eq!(p.offsets().written_offset, 10);
        // Reads after the appends see every frame, through the read-ahead.
        let mut at = 0;
        while at < 10 {
            let b = p.read(at, 1 << 20).await.expect("read");
            at = strom_flatbuffers::FrameHeader::ref_from(b.frames.last().expect("frame"))
                .expect("header")
                .next_offset();
        }
    });
}

/// Appends are placed in the order they were called: a large frame blocked
/// on buffer space keeps its place, and a small one called after it does
/// not slip in ahead when it would fit (a Kafka producer's pipelined
/// requests were stored out of order this way, found by a compaction test
/// where the tombstones sent last landed in the middle of the log).
#[test]
fn a_blocked_append_keeps_its_place_in_line() {
    block_on(async {
        let storage = FaultyStorage::new(3);
        let p = open(&storage).await;
        storage.hold_writes(true);
        // Fill the unwritten buffer until the next large frame blocks.
        let mut placed = 0;
        while let Some(r) =
            within_yields(p.append(frame(placed, 30_000), Durability::Buffered)).await
        {
            r.expect("append");
            placed += 1;
            assert!(placed < 100, "never blocked on unwritten bytes");
        }
        let small_done = std::cell::Cell::new(false);
        let big = p.append(frame(1_000, 30_000), Durability::Buffered);
        let small = async {
            yield_now().await; // the big one has its place and is blocked
            let r = p.append(frame(1_001, 10), Durability::Buffered).await;
            small_done.set(true);
            r
        };
        let release = async {
            for _ in 0..YIELDS_MAX {
                yield_now().await;
            }
            let overtook = small_done.get();
            storage.hold_writes(false);
            overtook
        };
        let ((big, small), overtook) = zip(zip(big, small), release).await;
        let (big, small) = (big.expect("big"), small.expect("small"));
        assert!(
            !overtook,
            "the small append was placed while the big one waited"
        );
        assert!(
            big.last_offset < small.last_offset,
            "placed out of call order: big at {}, small at {}",
            big.last_offset,
            small.last_offset
        );
    });
}
