//! Replays every committed fuzz corpus file (`fuzz/corpus/<target>/*`)
//! through the same checks the fuzz targets run, so that `cargo test`
//! exercises them without a fuzzer. `write_seed_corpus` (ignored) rebuilds
//! the hand-made seeds.

use std::path::{Path, PathBuf};
use strom_flatbuffers::fuzz_checks;
use strom_flatbuffers::protocol::*;
use strom_flatbuffers::{BatchBuilder, RecordIn};

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
fn request_decode_corpus_replays() {
    assert!(replay("request_decode", fuzz_checks::request_decode) >= 5);
}

#[test]
fn response_decode_corpus_replays() {
    assert!(replay("response_decode", fuzz_checks::response_decode) >= 5);
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
            read_committed: false,
        }),
        RequestBody::OffsetCommit(OffsetCommitRequest {
            group: "g".into(),
            partitions: vec![OffsetCommitPartition {
                topic: "t".into(),
                partition: 0,
                offset: 5,
                metadata: "m".into(),
            }],
            member_id: "m-1".into(),
            generation: 3,
        }),
        RequestBody::JoinGroup(JoinGroupRequest {
            group: "g".into(),
            client_id: "c".into(),
            protocol_type: "consumer".into(),
            topics: vec!["t".into()],
            session_timeout_ms: 10_000,
            ..Default::default()
        }),
        RequestBody::SyncGroup(SyncGroupRequest {
            group: "g".into(),
            ..Default::default()
        }),
        RequestBody::Heartbeat(HeartbeatRequest {
            group: "g".into(),
            ..Default::default()
        }),
        RequestBody::LeaveGroup(LeaveGroupRequest {
            group: "g".into(),
            ..Default::default()
        }),
        RequestBody::ListGroups,
        RequestBody::DescribeGroups(DescribeGroupsRequest::default()),
        RequestBody::ResetOffsets(ResetOffsetsRequest {
            group: "g".into(),
            topic: "t".into(),
            partitions: vec![0, 1],
            ..Default::default()
        }),
        RequestBody::InitProducerId(InitProducerIdRequest {
            producer_id: 1 << 20,
            producer_epoch: 2,
            ..Default::default()
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
    write_response_seeds(&batch);
    let dir = corpus("frame_validate");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("seed-one-record"), seed_batch(1)).expect("write");
    std::fs::write(dir.join("seed-three-records"), seed_batch(3)).expect("write");
    let mut bad = seed_batch(2);
    bad[20] ^= 1;
    std::fs::write(dir.join("seed-bad-crc"), bad).expect("write");
    let mut run = seed_batch(1);
    run.extend(seed_batch(2));
    std::fs::write(dir.join("seed-run-of-two"), run).expect("write");
}

fn write_response_seeds(batch: &[u8]) {
    let mut stored = batch.to_vec();
    strom_flatbuffers::stamp_base_offset(&mut stored, 40);
    let resps = [
        ResponseBody::ApiVersions(ApiVersionsResponse {
            min_version: 1,
            max_version: 1,
            message_bytes_max: 1 << 20,
            frame_bytes_max: 1 << 20,
            server_version: "seed".into(),
            shard_count: 2,
            ..Default::default()
        }),
        ResponseBody::CreateTopics(TopicResults {
            results: vec![TopicResult {
                name: "t".into(),
                error: ErrorCode::TopicAlreadyExists,
                message: "exists".into(),
            }],
        }),
        ResponseBody::ListTopics(ListTopicsResponse {
            topics: vec![TopicListing {
                name: "t".into(),
                partitions: 2,
            }],
        }),
        ResponseBody::DescribeTopics(DescribeTopicsResponse {
            topics: vec![TopicDescription {
                name: "t".into(),
                configs: vec![("retention.ms".into(), "1".into())],
                partitions: vec![PartitionDescription {
                    partition: 0,
                    high_watermark: 9,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }),
        ResponseBody::Produce(ProduceResponse {
            results: vec![ProduceResult {
                topic: "t".into(),
                base_offset: 40,
                last_offset: 41,
                ..Default::default()
            }],
        }),
        ResponseBody::ListOffsets(ListOffsetsResponse {
            results: vec![ListOffsetsResult {
                topic: "t".into(),
                offset: -1,
                ..Default::default()
            }],
        }),
        ResponseBody::OffsetFetch(OffsetFetchResponse {
            results: vec![OffsetFetchResult {
                topic: "t".into(),
                offset: 5,
                metadata: "m".into(),
                ..Default::default()
            }],
        }),
        ResponseBody::Error(ErrorResponse {
            error: ErrorCode::InvalidRequest,
            message: "bad".into(),
        }),
        ResponseBody::JoinGroup(JoinGroupResponse {
            generation: 1,
            leader_id: "m-1".into(),
            member_id: "m-1".into(),
            ..Default::default()
        }),
        ResponseBody::SyncGroup(SyncGroupResponse::default()),
        ResponseBody::Heartbeat(GroupStatus::default()),
        ResponseBody::LeaveGroup(GroupStatus::default()),
        ResponseBody::ListGroups(ListGroupsResponse::default()),
        ResponseBody::DescribeGroups(DescribeGroupsResponse::default()),
        ResponseBody::ResetOffsets(ResetOffsetsResponse::default()),
        ResponseBody::InitProducerId(InitProducerIdResponse {
            producer_id: 1 << 20,
            producer_epoch: 3,
            ..Default::default()
        }),
    ];
    let dir = corpus("response_decode");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for (i, r) in resps.iter().enumerate() {
        std::fs::write(
            dir.join(format!("seed-{i:02}")),
            encode_response(i as u64, r).expect("encode"),
        )
        .expect("write");
    }
    // A fetch carrying two results: two stored frames, then none.
    let fetch = ResponseBody::Fetch(FetchResponse {
        results: vec![
            FetchResult {
                topic: "t".into(),
                partition: 0,
                high_watermark: 42,
                bytes_len: 2 * stored.len() as u32,
                ..Default::default()
            },
            FetchResult {
                topic: "t".into(),
                partition: 1,
                error: ErrorCode::OffsetOutOfRange,
                ..Default::default()
            },
        ],
    });
    let mut m = encode_response(3, &fetch).expect("encode");
    m.extend_from_slice(&stored);
    m.extend_from_slice(&stored);
    std::fs::write(dir.join("seed-fetch"), &m).expect("write");
    let mut two = encode_response(1, &resps[7]).expect("encode");
    two.extend_from_slice(&m);
    std::fs::write(dir.join("seed-pipelined"), &two).expect("write");
}
