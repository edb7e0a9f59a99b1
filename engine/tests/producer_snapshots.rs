//! Producer-state snapshot files through the partition shell, over the
//! fault-injecting in-memory storage: written only over durable data,
//! pruned to the newest few, passed over when damaged (falling back to an
//! older one), ignored below the log start, and removed when the log no
//! longer reaches them (recovery cut a tail, a truncation).

use std::path::Path;

use bytes::BytesMut;
use futures_lite::future::block_on;
use strom_engine::producer_snapshot::{
    producer_snapshot_file_name, ProducerSnapshot, SnapshotBatch, SnapshotProducer,
};
use strom_engine::storage::{FaultyStorage, Storage};
use strom_engine::{Durability, EngineError, FlushPolicy, LogConfig, Partition};
use strom_flatbuffers::{BatchBuilder, RecordIn};

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

const DIR: &str = "/p";

fn frame(i: i64) -> BytesMut {
    let mut b = BatchBuilder::new();
    b.set_producer(9, 0, i as i32);
    b.push(&RecordIn {
        timestamp_ms: 1_000 + i,
        value: Some(b"v"),
        ..Default::default()
    });
    BytesMut::from(&b.finish()[..])
}

/// A snapshot at `offset` naming the batch just below it.
fn snapshot(offset: u64) -> ProducerSnapshot {
    ProducerSnapshot {
        offset,
        producers: vec![SnapshotProducer {
            producer_id: 9,
            epoch: 0,
            last_timestamp_ms: 1_000 + offset as i64,
            batches: vec![SnapshotBatch {
                first_seq: offset as i32 - 1,
                last_seq: offset as i32 - 1,
                base_offset: offset - 1,
                last_offset: offset - 1,
            }],
        }],
        ..Default::default()
    }
}

async fn open(storage: &FaultyStorage) -> Partition<FaultyStorage> {
    Partition::open_on(storage.clone(), Path::new(DIR), cfg(), false)
        .await
        .expect("open")
}

async fn append(p: &Partition<FaultyStorage>, n: i64) {
    let from = p.offsets().high_watermark as i64;
    for i in from..from + n {
        p.append(frame(i), Durability::Buffered)
            .await
            .expect("append");
    }
}

async fn snapshot_files(storage: &FaultyStorage) -> Vec<String> {
    storage
        .list(Path::new(DIR))
        .await
        .expect("list")
        .into_iter()
        .filter(|n| n.ends_with(".snapshot"))
        .collect()
}

#[test]
fn snapshots_are_written_over_durable_data_only_and_the_newest_two_are_kept() {
    block_on(async {
        let storage = FaultyStorage::new(1);
        let p = open(&storage).await;
        append(&p, 10).await;
        // Appended, not durable: refused.
        match p.write_producer_snapshot(&snapshot(10)).await {
            Err(EngineError::NotDurable {
                offset: 10,
                durable_offset: 0,
            }) => {}
            r => panic!("{r:?}"),
        }
        assert!(snapshot_files(&storage).await.is_empty());
        p.flush().await.expect("flush");
        for at in [4, 7, 10] {
            p.write_producer_snapshot(&snapshot(at))
                .await
                .expect("write");
        }
        assert_eq!(
            snapshot_files(&storage).await,
            vec![
                producer_snapshot_file_name(7),
                producer_snapshot_file_name(10)
            ],
            "the two newest are kept"
        );
        let load = p.load_producer_snapshot().await;
        assert_eq!(load.snapshot, Some(snapshot(10)));
        assert!(load.passed_over.is_empty());
        // It survives a clean close and a power loss alike (it is durable).
        p.close().await.expect("close");
        storage.crash();
        let p = open(&storage).await;
        assert_eq!(
            p.load_producer_snapshot().await.snapshot,
            Some(snapshot(10))
        );
        p.close().await.expect("close");
        // A closed partition writes none.
        let p2 = open(&storage).await;
        let p3 = p2.clone();
        p2.close().await.expect("close");
        assert!(matches!(
            p3.write_producer_snapshot(&snapshot(10)).await,
            Err(EngineError::Closed)
        ));
    });
}

#[test]
fn a_damaged_newest_snapshot_falls_back_to_the_older_one_and_none_is_fatal() {
    block_on(async {
        let storage = FaultyStorage::new(2);
        let p = open(&storage).await;
        append(&p, 10).await;
        p.flush().await.expect("flush");
        p.write_producer_snapshot(&snapshot(5)).await.expect("5");
        p.write_producer_snapshot(&snapshot(10)).await.expect("10");
        p.close().await.expect("close");
        let newest = Path::new(DIR).join(producer_snapshot_file_name(10));
        storage.corrupt_byte(&newest, 40);
        let p = open(&storage).await;
        let load = p.load_producer_snapshot().await;
        assert_eq!(load.snapshot, Some(snapshot(5)), "{:?}", load.passed_over);
        assert_eq!(load.passed_over.len(), 1);
        assert_eq!(load.passed_over[0].0, newest);
        assert!(load.passed_over[0].1.contains("checksum"), "{load:?}");
        p.close().await.expect("close");
        // Both damaged (the older one cut short): no snapshot, no error.
        let older = Path::new(DIR).join(producer_snapshot_file_name(5));
        storage
            .write_atomic(&older, b"SPSN")
            .await
            .expect("overwrite");
        let p = open(&storage).await;
        let load = p.load_producer_snapshot().await;
        assert_eq!(load.snapshot, None);
        assert_eq!(load.passed_over.len(), 2);
        // The log itself is untouched by any of it.
        assert_eq!(p.offsets().high_watermark, 10);
        p.close().await.expect("close");
    });
}

/// The story: a snapshot written at offset 10, a log that came back
/// shorter (here: cut by a truncation, as recovery cuts a torn tail), and
/// new frames appended at offsets 8, 9, 10... again. Trusted, the old
/// snapshot would name batches at offsets now holding other records.
#[test]
fn snapshots_past_the_end_of_the_log_are_removed_by_open_and_by_truncation() {
    block_on(async {
        let storage = FaultyStorage::new(3);
        let p = open(&storage).await;
        append(&p, 10).await;
        p.flush().await.expect("flush");
        p.write_producer_snapshot(&snapshot(6)).await.expect("6");
        p.write_producer_snapshot(&snapshot(10)).await.expect("10");
        assert_eq!(p.truncate_to(8).await.expect("truncate"), 8);
        assert_eq!(
            snapshot_files(&storage).await,
            vec![producer_snapshot_file_name(6)]
        );
        p.close().await.expect("close");
        // A file past the end at open (as if a cut tail took its frames).
        let forged = Path::new(DIR).join(producer_snapshot_file_name(20));
        storage
            .write_atomic(&forged, &snapshot(20).encode(0))
            .await
            .expect("write");
        let p = open(&storage).await;
        assert_eq!(p.recovery_report().removed_producer_snapshots, 1);
        assert_eq!(
            snapshot_files(&storage).await,
            vec![producer_snapshot_file_name(6)]
        );
        assert_eq!(p.load_producer_snapshot().await.snapshot, Some(snapshot(6)));
        p.close().await.expect("close");
    });
}

#[test]
fn snapshots_below_the_log_start_are_not_offered() {
    block_on(async {
        let storage = FaultyStorage::new(4);
        let p = open(&storage).await;
        append(&p, 10).await;
        p.flush().await.expect("flush");
        p.write_producer_snapshot(&snapshot(4)).await.expect("4");
        assert_eq!(p.load_producer_snapshot().await.snapshot, Some(snapshot(4)));
        p.delete_records_before(5).await.expect("delete");
        let load = p.load_producer_snapshot().await;
        assert_eq!(load.snapshot, None);
        assert!(load.passed_over.is_empty(), "not even tried");
        p.close().await.expect("close");
    });
}
