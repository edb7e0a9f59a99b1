//! Replays every committed fuzz corpus file (`fuzz/corpus/<target>/*`)
//! through the same checks the fuzz targets run, so that `cargo test`
//! exercises them without a fuzzer. `write_seed_corpus` (ignored) rebuilds
//! the hand-made seeds.

use std::path::{Path, PathBuf};
use strom_flatbuffers::fuzz_checks;
use strom_flatbuffers::protocol::*;
use strom_flatbuffers::{BatchBuilder, RecordIn};

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn replay(target: &str, check: fn(&[u8])) -> usize {
    let dir = corpus(target);
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.expect("entry").path();
        if p.is_file() {
            check(&std::fs::read(&p).expect("read"));
            n += 1;
        }
    }
    n
}

#[test]
fn request_decode_corpus_replays() {
    assert!(replay("request_decode", fuzz_checks::request_decode) >= 5);
}

#[test]
fn frame_validate_corpus_replays() {
    assert!(replay("frame_validate", fuzz_checks::frame_validate) >= 3);
}

fn seed_batch(n: usize) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    for i in 0..n {
        b.push(&RecordIn {
            timestamp_ms: 1000 + i as i64,
            key: Some(b"k"),
            value: Some(b"value"),
            headers: &[("h", b"v")],
        });
    }
    b.finish()
}

#[test]
#[ignore = "rewrites fuzz/corpus seeds"]
fn write_seed_corpus() {
    let batch = seed_batch(2);
    let reqs = [
        RequestBody::ApiVersions(ApiVersionsRequest {
            client_name: "seed".into(),
            min_version: 1,
            max_version: 1,
        }),
        RequestBody::CreateTopics(CreateTopicsRequest {
            topics: vec![CreateTopic {
                name: "t".into(),
                partitions: 2,
                configs: vec![("retention.ms".into(), "1000".into())],
            }],
        }),
        RequestBody::ListTopics,
        RequestBody::DescribeTopics(DescribeTopicsRequest {
            names: vec!["t".into()],
        }),
        RequestBody::Fetch(FetchRequest {
            max_wait_ms: 100,
            min_bytes: 1,
            max_bytes: 1 << 20,
            partitions: vec![FetchPartition {
                topic: "t".into(),
                partition: 0,
                offset: 0,
                partition_max_bytes: 0,
            }],
        }),
        RequestBody::OffsetCommit(OffsetCommitRequest {
            group: "g".into(),
            partitions: vec![OffsetCommitPartition {
                topic: "t".into(),
                partition: 0,
                offset: 5,
                metadata: "m".into(),
            }],
        }),
    ];
    let dir = corpus("request_decode");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for (i, r) in reqs.iter().enumerate() {
        std::fs::write(
            dir.join(format!("seed-{i:02}-{}", r.name())),
            encode_request(i as u64, r).expect("encode"),
        )
        .expect("write");
    }
    let produce = RequestBody::Produce(ProduceRequest {
        acks: Acks::Durable,
        timeout_ms: 1000,
        batches: vec![ProduceBatch {
            topic: "t".into(),
            partition: 1,
            batch_len: batch.len() as u32,
        }],
    });
    let mut m = encode_request(9, &produce).expect("encode");
    m.extend_from_slice(&batch);
    std::fs::write(dir.join("seed-produce"), &m).expect("write");
    // Two pipelined messages, and a truncated one.
    let mut two = encode_request(1, &RequestBody::ListTopics).expect("encode");
    two.extend_from_slice(&m);
    std::fs::write(dir.join("seed-pipelined"), &two).expect("write");
    std::fs::write(dir.join("seed-truncated"), &m[..m.len() / 2]).expect("write");
    let dir = corpus("frame_validate");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("seed-one-record"), seed_batch(1)).expect("write");
    std::fs::write(dir.join("seed-three-records"), seed_batch(3)).expect("write");
    let mut bad = seed_batch(2);
    bad[20] ^= 1;
    std::fs::write(dir.join("seed-bad-crc"), bad).expect("write");
}
