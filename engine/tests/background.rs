//! The partition's background task (flush by policy, retention) runs with
//! nobody waiting for it, so its failures must not vanish.
//!
//! The story: the task dropped the results of its flushes and retention
//! runs (`let _ =`), so a partition whose disk failed under a time-based
//! flush policy said nothing until a client's next append. Now each failure
//! is counted in `SyncStats::background_errors` (exported by the server as
//! `strom_partition_background_errors_total`) and logged, rate-limited.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use strom_engine::storage::{FaultKind, FaultyStorage};
use strom_engine::{Durability, FlushPolicy, LogConfig, Partition};
use strom_flatbuffers::{BatchBuilder, RecordIn};

fn frame(value_len: usize) -> BytesMut {
    let mut b = BatchBuilder::new();
    let v = vec![1u8; value_len];
    b.push(&RecordIn {
        timestamp_ms: 0,
        key: None,
        value: Some(&v),
        headers: &[],
    });
    BytesMut::from(&b.finish()[..])
}

#[test]
fn a_failing_background_flush_is_counted_not_dropped() {
    glommio::LocalExecutor::default().run(async {
        let storage = FaultyStorage::new(11);
        let config = LogConfig {
            segment_bytes: 1 << 20,
            frame_bytes_max: 64 << 10,
            flush: FlushPolicy::IntervalMs(5),
            retention_ms: None,
            ..LogConfig::default()
        };
        let p = Partition::open_on(storage.clone(), Path::new("/bg"), config, true)
            .await
            .expect("open");
        p.append(frame(100), Durability::Buffered)
            .await
            .expect("append");
        assert_eq!(p.sync_stats().background_errors, 0);
        // The disk fails: the next background flush cannot write or sync.
        storage.fail_after(0, FaultKind::Eio);
        let deadline = Instant::now() + Duration::from_secs(5);
        while p.sync_stats().background_errors == 0 {
            assert!(
                Instant::now() < deadline,
                "no background error counted within 5 s"
            );
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        // Nothing was acknowledged as durable.
        assert_eq!(p.offsets().durable_offset, 0);
        // A failed log refuses to close cleanly; closing stops the task.
        assert!(p.close().await.is_err());
    });
}
