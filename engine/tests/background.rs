//! The partition's background task (flush by policy, retention) runs with
//! nobody waiting for it, so its failures must not vanish.
//!
//! The story: the task dropped the results of its flushes and retention
//! runs (`let _ =`), so a partition whose disk failed under a time-based
//! flush policy said nothing until a client's next append. Now each failure
//! is counted in `SyncStats::background_errors` (exported by the server as
//! `strom_partition_background_errors_total`) and logged, rate-limited.
//!
//! Jobs run as glommio tasks here, as in the server, and glommio runs a
//! spawned task at once: a job can complete inside the action that started
//! it, and a waiter must still hear of it. A regression hangs, so such waits
//! race a timer and fail the test instead.

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

/// A preallocation refused by the disk reserve fails at its first poll,
/// inside the append that started it. The append must return that error at
/// once; it once waited for a notification that had already fired (with no
/// other I/O in flight, forever; a 10 ms re-check timer hid it).
#[test]
fn an_append_refused_by_the_disk_reserve_fails_at_once() {
    let dir = std::env::temp_dir().join(format!("strom-bg-reserve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let outcome: Result<(), String> = glommio::LocalExecutor::default().run(async {
        let config = LogConfig {
            segment_bytes: 1 << 20,
            frame_bytes_max: 64 << 10,
            preallocate_bytes: 64 << 10,
            flush: FlushPolicy::Never,
            retention_ms: None,
            ..LogConfig::default()
        };
        let p = Partition::open(&dir.join("p"), config.clone())
            .await
            .expect("open");
        // From now on every preallocation is refused: the disk has far less
        // free space than the reserve.
        let refusing = LogConfig {
            disk_reserve_bytes: u64::MAX / 4,
            ..config
        };
        p.set_config(refusing).await.expect("set_config");
        let mut refused = None;
        for i in 0..64 {
            let append = async { Some(p.append(frame(16 << 10), Durability::Written).await) };
            let timeout = async {
                glommio::timer::sleep(Duration::from_secs(5)).await;
                None
            };
            match futures_lite::future::or(append, timeout).await {
                None => return Err(format!("append {i} hung")),
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        let _ = p.close().await;
        match refused {
            Some(e) if e.is_no_space() => Ok(()),
            Some(e) => Err(format!("refused with {e}, not as no space")),
            None => Err("64 appends of 16 KiB all fit without a preallocation".into()),
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
    outcome.expect("the refused append returns its error");
}
