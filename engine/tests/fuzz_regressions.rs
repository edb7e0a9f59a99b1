//! Regression tests for bugs the fuzz campaign (`fuzz/`, target `log_open`)
//! found in the engine. Each test opens with the story of its bug. They build
//! the damaged partition directory by hand over `MemoryStorage`, so they need
//! no fuzzer.

use std::path::Path;

use bytes::BytesMut;
use futures_lite::future::block_on;
use strom_engine::checkpoint::Checkpoint;
use strom_engine::fuzz_checks::{self, DirFile};
use strom_engine::Log;
use strom_flatbuffers::{stamp_base_offset, BatchBuilder, RecordIn};

fn frame(base: u64, value: &[u8]) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    b.push(&RecordIn {
        timestamp_ms: 10,
        key: None,
        value: Some(value),
        headers: &[],
    });
    let mut f = b.finish();
    stamp_base_offset(&mut f, base);
    f
}

fn file(name: &str, bytes: Vec<u8>) -> DirFile {
    DirFile {
        name: name.into(),
        bytes,
    }
}

/// The story: recovery trusts the checkpoint for everything before the
/// recovery point and does not rescan it. When a later segment does not
/// continue the offsets, recovery stops at the segment before it, which then
/// becomes the active segment and gets its index rebuilt by a scan from byte
/// 0. If that segment holds a damaged frame below the recovery point (a bit
/// flipped on disk after it was synced), the rebuild scan stops at the damage
/// but its result is ignored: the segment keeps its full length, its rebuilt
/// index covers only the bytes before the damage, and `next_offset` comes
/// from the checkpoint. `Log::open` succeeds, and the first `append` panics on
/// `SegmentIndex::observe`'s "frames observed out of order" assertion, in
/// release builds too: one damaged byte plus a stray segment crash the shard.
/// Found by the fuzz target `log_open` (repaired checkpoint, raw segment).
#[test]
fn damage_below_the_recovery_point_of_the_stop_segment_does_not_crash_append() {
    let mut seg0 = frame(0, b"first");
    seg0.extend(frame(1, b"second"));
    let len0 = seg0.len() as u64;
    // Bit rot in the payload of the first frame, after the checkpoint vouched for it.
    seg0[80] ^= 0x01;
    // A segment that does not continue at offset 2.
    let stray = frame(5, b"stray");
    let cp = Checkpoint {
        log_start_offset: 0,
        recovery_segment_base: 0,
        recovery_position: len0,
        recovery_offset: 2,
        clean: true,
    };
    let storage = fuzz_checks::populate(&[
        file("00000000000000000000.log", seg0),
        file("00000000000000000005.log", stray),
        file("checkpoint", cp.encode().to_vec()),
    ]);
    block_on(async {
        let dir = Path::new(fuzz_checks::log_dir());
        let opened = Log::open(storage.clone(), dir, fuzz_checks::log_config(), 0).await;
        // Refusing to open, or truncating at the damage, are both acceptable;
        // panicking on the next append is not.
        let Ok((mut log, _report)) = opened else {
            return;
        };
        let mut b = BatchBuilder::new();
        b.push(&RecordIn {
            timestamp_ms: 20,
            key: None,
            value: Some(b"after"),
            headers: &[],
        });
        let appended = log.append(BytesMut::from(&b.finish()[..]), 1).await;
        if let Ok(info) = appended {
            let batch = log
                .read(info.base_offset, 1 << 20)
                .await
                .expect("read back");
            assert!(!batch.frames.is_empty());
        }
    });
}
