//! Replays every committed fuzz corpus file of the engine's targets
//! (`fuzz/corpus/<target>/*`) through the same checks the fuzz targets run
//! (`strom_engine::fuzz_checks`), so that `cargo test` exercises them without
//! a fuzzer. `write_seed_corpus` (ignored) rebuilds the hand-made seeds.

use std::path::{Path, PathBuf};

use bytes::BytesMut;
use futures_lite::future::block_on;
use strom_engine::checkpoint::Checkpoint;
use strom_engine::fuzz_checks::{self, DirFile};
use strom_engine::index::SegmentIndex;
use strom_engine::Log;
use strom_flatbuffers::{stamp_base_offset, BatchBuilder, FrameHeader, RecordIn};

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
}

fn corpus(target: &str) -> PathBuf {
    corpus_root().join(target)
}

fn replay(target: &str, check: fn(&[u8])) -> usize {
    strom_flatbuffers::fuzz_checks::replay_corpus(&corpus_root(), target, check)
}

#[test]
fn segment_scan_corpus_replays() {
    assert!(replay("segment_scan", fuzz_checks::segment_scan) >= 4);
}

#[test]
fn index_decode_corpus_replays() {
    assert!(replay("index_decode", fuzz_checks::index_decode) >= 2);
}

#[test]
fn checkpoint_decode_corpus_replays() {
    assert!(replay("checkpoint_decode", fuzz_checks::checkpoint_decode) >= 2);
}

#[test]
fn producer_snapshot_decode_corpus_replays() {
    assert!(
        replay(
            "producer_snapshot_decode",
            fuzz_checks::producer_snapshot_decode
        ) >= 3
    );
}

#[test]
fn log_open_corpus_replays() {
    assert!(replay("log_open", fuzz_checks::log_open) >= 4);
}

// ------------------------------------------------------------------ seeds

fn frame(base: u64, records: usize, ts: i64, value_len: usize) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    let v = vec![b'v'; value_len];
    for i in 0..records {
        b.push(&RecordIn {
            timestamp_ms: ts + i as i64,
            key: Some(b"k"),
            value: Some(&v),
            headers: &[("h", b"x")],
        });
    }
    let mut f = b.finish();
    stamp_base_offset(&mut f, base);
    f
}

/// A segment of `frames` (records per frame) from `base`, with its index.
fn segment(base: u64, frames: &[usize], value_len: usize) -> (Vec<u8>, SegmentIndex, u64) {
    let mut bytes = Vec::new();
    let mut ix = SegmentIndex::new();
    let mut next = base;
    for (i, &n) in frames.iter().enumerate() {
        let f = frame(next, n, 100 + i as i64 * 10, value_len);
        ix.observe(
            (next - base) as u32,
            bytes.len() as u64,
            f.len() as u64,
            {
                let h = FrameHeader::ref_from(&f).expect("header");
                h.max_timestamp_ms.get()
            },
            256,
        );
        bytes.extend_from_slice(&f);
        next += n as u64;
    }
    (bytes, ix, next)
}

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = corpus(target);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join(name), data).expect("write");
}

fn index_input(ix: &SegmentIndex, base: u64, len: u64) -> Vec<u8> {
    let o = ix.encode_offsets(base, len);
    let t = ix.encode_times(base, len, u32::MAX);
    let mut out = (len as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&(o.len() as u16).to_le_bytes());
    out.extend(o);
    out.extend(t);
    out
}

fn index_files(base: u64, ix: &SegmentIndex, len: u64) -> [DirFile; 2] {
    [
        DirFile {
            name: format!("{base:020}.index"),
            bytes: ix.encode_offsets(base, len),
        },
        DirFile {
            name: format!("{base:020}.timeindex"),
            bytes: ix.encode_times(base, len, u32::MAX),
        },
    ]
}

fn probe(ts: i64, value_len: usize) -> BytesMut {
    BytesMut::from(&frame(0, 2, ts, value_len)[..])
}

/// Directories written by the real log: clean, crashed and rolled.
fn real_log_seeds() -> Vec<(&'static str, Vec<DirFile>)> {
    let mut out = Vec::new();
    block_on(async {
        let storage = fuzz_checks::populate(&[]);
        let cfg = fuzz_checks::log_config();
        let (mut log, _) = Log::open(storage.clone(), fuzz_checks::log_dir(), cfg.clone(), 0)
            .await
            .expect("open");
        for i in 0..12 {
            log.append(probe(i, 100 + 37 * i as usize), i)
                .await
                .expect("append");
        }
        log.close(20).await.expect("close");
        out.push(("seed-log-clean", fuzz_checks::dump(&storage)));

        let storage = fuzz_checks::populate(&[]);
        let (mut log, _) = Log::open(storage.clone(), fuzz_checks::log_dir(), cfg.clone(), 0)
            .await
            .expect("open");
        for i in 0..12 {
            log.append(probe(i, 300), i).await.expect("append");
        }
        log.flush(12).await.expect("flush");
        for i in 12..16 {
            log.append(probe(i, 300), i).await.expect("append");
        }
        log.write_pending().await.expect("write");
        drop(log); // a crash: no clean checkpoint
        out.push(("seed-log-crashed", fuzz_checks::dump(&storage)));

        let storage = fuzz_checks::populate(&[]);
        let (mut log, _) = Log::open(storage.clone(), fuzz_checks::log_dir(), cfg.clone(), 0)
            .await
            .expect("open");
        for i in 0..10 {
            log.append(probe(i, 4000), i).await.expect("append");
        }
        log.close(20).await.expect("close");
        out.push(("seed-log-rolled", fuzz_checks::dump(&storage)));
    });
    out
}

#[test]
#[ignore = "rewrites fuzz/corpus seeds"]
fn write_seed_corpus() {
    // segment_scan
    let (seg, ix, _) = segment(0, &[1, 3, 2], 20);
    write("segment_scan", "seed-three-frames", &seg);
    let mut padded = seg.clone();
    padded.extend(vec![0u8; 4096 - padded.len() % 4096]);
    write("segment_scan", "seed-zero-padded", &padded);
    write("segment_scan", "seed-torn", &seg[..seg.len() - 9]);
    let mut gap = seg.clone();
    gap.extend(frame(99, 1, 5, 3));
    write("segment_scan", "seed-offset-gap", &gap);
    let mut bad = seg.clone();
    bad[FrameHeader::ref_from(&seg).expect("h").frame_len() + 80] ^= 1;
    write("segment_scan", "seed-corrupt", &bad);

    // index_decode
    write(
        "index_decode",
        "seed-small",
        &index_input(&ix, 0, seg.len() as u64),
    );
    let (seg2, ix2, _) = segment(1000, &[1; 40], 30);
    write(
        "index_decode",
        "seed-sparse",
        &index_input(&ix2, 1000, seg2.len() as u64),
    );
    write(
        "index_decode",
        "seed-empty",
        &index_input(&SegmentIndex::new(), 7, 0),
    );

    // checkpoint_decode
    let cp = Checkpoint {
        log_start_offset: 3,
        recovery_segment_base: 10,
        recovery_position: 4096,
        recovery_offset: 42,
        clean: true,
    };
    write("checkpoint_decode", "seed-clean", &cp.encode());
    let unclean = Checkpoint { clean: false, ..cp };
    write("checkpoint_decode", "seed-unclean", &unclean.encode());
    let mut newer = cp.encode();
    newer[4] = 2;
    write("checkpoint_decode", "seed-newer-version", &newer);

    // producer_snapshot_decode
    use strom_engine::producer_snapshot::{ProducerSnapshot, SnapshotBatch, SnapshotProducer};
    let snap = ProducerSnapshot {
        offset: 500,
        producers: (0..3)
            .map(|i| SnapshotProducer {
                producer_id: 1_000 + i,
                epoch: i as i16,
                last_timestamp_ms: 1_700_000_000_000 + i,
                batches: (0..=i as u64)
                    .map(|b| SnapshotBatch {
                        first_seq: b as i32 * 10,
                        last_seq: b as i32 * 10 + 9,
                        base_offset: 100 * b + i as u64,
                        last_offset: 100 * b + i as u64 + 9,
                    })
                    .collect(),
            })
            .collect(),
        txns: vec![strom_engine::producer_snapshot::SnapshotTxn {
            producer_id: 1_001,
            marker_epoch: 1,
            ongoing_first_offset: Some(400),
            last_offset: 450,
        }],
        aborted: vec![strom_engine::producer_snapshot::SnapshotAborted {
            producer_id: 1_002,
            first_offset: 10,
            last_offset: 20,
        }],
    };
    write(
        "producer_snapshot_decode",
        "seed-three-producers",
        &snap.encode(1_700_000_000_000),
    );
    let empty = ProducerSnapshot {
        offset: 0,
        ..Default::default()
    };
    write("producer_snapshot_decode", "seed-empty", &empty.encode(0));
    let mut newer = snap.encode(0);
    newer[4] = 3;
    write("producer_snapshot_decode", "seed-newer-version", &newer);

    // log_open: hand-made three-segment directory, then real logs
    let mut files = Vec::new();
    let mut base = 0;
    for (i, frames) in [&[1usize, 2][..], &[3, 1, 1], &[2]].iter().enumerate() {
        let (bytes, ix, next) = segment(base, frames, 10 + i);
        files.extend(index_files(base, &ix, bytes.len() as u64));
        files.push(DirFile {
            name: format!("{base:020}.log"),
            bytes,
        });
        base = next;
    }
    let last = files.last().expect("segment");
    let last_base: u64 = last.name[..20].parse().expect("base");
    let cp = Checkpoint {
        log_start_offset: 0,
        recovery_segment_base: last_base,
        recovery_position: last.bytes.len() as u64,
        recovery_offset: base,
        clean: true,
    };
    files.push(DirFile {
        name: "checkpoint".into(),
        bytes: cp.encode().to_vec(),
    });
    write(
        "log_open",
        "seed-three-segments",
        &fuzz_checks::encode_log_dir(&files, 1),
    );
    let no_cp: Vec<DirFile> = files
        .iter()
        .filter(|f| f.name != "checkpoint")
        .cloned()
        .collect();
    write(
        "log_open",
        "seed-no-checkpoint",
        &fuzz_checks::encode_log_dir(&no_cp, 1),
    );
    let segments_only: Vec<DirFile> = files
        .iter()
        .filter(|f| f.name.ends_with(".log"))
        .cloned()
        .collect();
    write(
        "log_open",
        "seed-segments-only",
        &fuzz_checks::encode_log_dir(&segments_only, 1),
    );
    for (name, files) in real_log_seeds() {
        write("log_open", name, &fuzz_checks::encode_log_dir(&files, 1));
    }
}

/// The seeds are what they claim: the real-log seeds open and serve data.
#[test]
fn log_seeds_parse_back() {
    for (_, files) in real_log_seeds() {
        let data = fuzz_checks::encode_log_dir(&files, 1);
        assert_eq!(fuzz_checks::parse_log_dir(&data), files);
    }
}
