//! The partition shell with its jobs run as glommio tasks (as in the
//! server), on real O_DIRECT files. glommio runs a spawned task at once, so
//! a job can complete inside the action that started it; these tests show
//! that a waiter still hears of it. A regression hangs, so every wait is
//! raced against a timer and fails the test instead.

use std::time::Duration;

use bytes::BytesMut;
use futures_lite::future::or;
use glommio::{LocalExecutorBuilder, Placement};
use strom_engine::{Durability, FlushPolicy, LogConfig, Partition};
use strom_flatbuffers::{BatchBuilder, RecordIn};

fn frame(value_len: usize) -> BytesMut {
    let mut b = BatchBuilder::new();
    let v = vec![3u8; value_len];
    b.push(&RecordIn {
        timestamp_ms: 1,
        key: None,
        value: Some(&v),
        headers: &[],
    });
    BytesMut::from(&b.finish()[..])
}

/// A preallocation refused by the disk reserve fails at its first poll,
/// inside the append that started it. The append must return that error at
/// once; it once waited for a notification that had already fired (and, with
/// no other I/O in flight, forever; a 10 ms re-check timer hid it).
#[test]
fn an_append_refused_by_the_disk_reserve_fails_at_once() {
    let dir = std::env::temp_dir().join(format!("strom-spawned-jobs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let d = dir.clone();
    let outcome = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(1 << 20)
        .spawn(move || async move {
            let config = LogConfig {
                segment_bytes: 1 << 20,
                frame_bytes_max: 64 << 10,
                preallocate_bytes: 64 << 10,
                flush: FlushPolicy::Never,
                retention_ms: None,
                ..LogConfig::default()
            };
            let p = Partition::open(&d.join("p"), config.clone())
                .await
                .expect("open");
            // From now on every preallocation is refused: the disk has far
            // less free space than the reserve.
            p.set_config(LogConfig {
                disk_reserve_bytes: u64::MAX / 4,
                ..config
            })
            .await
            .expect("set_config");
            let mut refused = None;
            for i in 0..64 {
                let append = async { Some(p.append(frame(16 << 10), Durability::Written).await) };
                let timeout = async {
                    glommio::timer::sleep(Duration::from_secs(5)).await;
                    None
                };
                match or(append, timeout).await {
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
        })
        .expect("executor")
        .join()
        .expect("join");
    let _ = std::fs::remove_dir_all(&dir);
    outcome.expect("the refused append returns its error");
}
