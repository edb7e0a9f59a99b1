//! The operations layer run in-process: two shards on glommio executors of
//! this test process, partitions in each shard's in-memory file system, no
//! socket. Produce, fetch (local and across the mesh), long poll, offsets
//! and topic deletion are driven through `strom_server::ops` exactly as the
//! protocol edges drive them.

use bytes::BytesMut;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};
use strom_flatbuffers::frame::{records, BatchBuilder, RecordIn};
use strom_flatbuffers::protocol::{
    CreateTopic, CreateTopicsRequest, DeleteTopicsRequest, ErrorCode, OffsetCommitPartition,
    OffsetCommitRequest, OffsetFetchRequest, TopicPartition,
};
use strom_server::engine::Durability;
use strom_server::node::run_in_process;
use strom_server::ops::{self, FetchPart, FetchSpec};
use strom_server::router::{AdminOp, Op, ProduceItem, Reply};
use strom_server::shard::Shard;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("strom-inproc-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn frame(values: &[&[u8]]) -> BytesMut {
    let mut b = BatchBuilder::new();
    for v in values {
        b.push(&RecordIn {
            timestamp_ms: 1_700_000_000_000,
            key: None,
            value: Some(v),
            headers: &[],
        });
    }
    BytesMut::from(&b.finish()[..])
}

async fn create_topic(shard: &Rc<Shard>, name: &str, partitions: u32) {
    let req = CreateTopicsRequest {
        topics: vec![CreateTopic {
            name: name.into(),
            partitions,
            configs: Vec::new(),
        }],
    };
    match ops::call(shard, 0, Op::Admin(AdminOp::CreateTopics(req))).await {
        Reply::Topics(t) => {
            assert_eq!(t.results.len(), 1);
            assert_eq!(t.results[0].error, ErrorCode::None, "{:?}", t.results[0]);
        }
        _ => panic!("create topic: unexpected reply"),
    }
}

/// Produces one frame to `topic/partition` on its owner; the base offset.
async fn produce(shard: &Rc<Shard>, topic: &str, partition: u32, values: &[&[u8]]) -> u64 {
    let owner = shard.owner(topic, partition).expect("owner");
    let op = Op::Produce {
        items: vec![ProduceItem {
            index: 0,
            topic: topic.into(),
            partition,
            frame: frame(values),
            producer: None,
        }],
        durability: Durability::Written,
    };
    match ops::call(shard, owner, op).await {
        Reply::Produce(mut out) => {
            let (_, produced) = out.pop().expect("one result");
            match produced {
                Ok(a) => {
                    assert_eq!(a.last_offset - a.base_offset + 1, values.len() as u64);
                    a.base_offset
                }
                Err(e) => panic!("produce to {topic}/{partition}: {e:?}"),
            }
        }
        _ => panic!("produce: unexpected reply"),
    }
}

/// Every record value in a fetch's frames, in order, with its offset.
fn values_of(frames: &[bytes::Bytes]) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    for f in frames {
        for r in records(f).expect("a stored frame") {
            out.push((r.offset, r.value.unwrap_or_default().to_vec()));
        }
    }
    out
}

fn segment_files_under(dir: &Path) -> usize {
    let mut n = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            n += segment_files_under(&p);
        } else if p.extension().is_some_and(|x| x == "log" || x == "segment") {
            n += 1;
        }
    }
    n
}

#[test]
fn produce_and_fetch_across_two_in_process_shards_touch_no_disk() {
    let dir = temp_dir("produce-fetch");
    let topics_dir = dir.join("topics");
    let checked = run_in_process(2, &dir, |shard| async move {
        create_topic(&shard, "t", 4).await;
        let owners: Vec<usize> = (0..4).map(|p| shard.owner("t", p).unwrap()).collect();
        assert!(
            owners.contains(&0) && owners.contains(&1),
            "both shards own partitions: {owners:?}"
        );
        for p in 0..4u32 {
            for round in 0..3u64 {
                let a = format!("p{p}-r{round}-a");
                let b = format!("p{p}-r{round}-b");
                let base = produce(&shard, "t", p, &[a.as_bytes(), b.as_bytes()]).await;
                assert_eq!(base, round * 2, "offsets are dense per partition");
            }
        }
        // One fetch of all four partitions from shard 0: two are read over
        // the mesh.
        let spec = FetchSpec {
            parts: (0..4)
                .map(|p| FetchPart {
                    topic: "t".into(),
                    partition: p,
                    offset: 0,
                    max_bytes: 1 << 20,
                    read_committed: false,
                })
                .collect(),
            max_bytes: 4 << 20,
            min_bytes: 1,
            max_wait_ms: 0,
        };
        let outs = ops::fetch(&shard, &spec).await;
        assert_eq!(outs.len(), 4);
        for (p, o) in outs.iter().enumerate() {
            assert!(o.error.is_none(), "partition {p}: {:?}", o.error);
            assert_eq!(o.high_watermark, 6);
            let got = values_of(&o.frames);
            let want: Vec<(u64, Vec<u8>)> = (0..3)
                .flat_map(|r| {
                    [
                        (r * 2, format!("p{p}-r{r}-a").into_bytes()),
                        (r * 2 + 1, format!("p{p}-r{r}-b").into_bytes()),
                    ]
                })
                .collect();
            assert_eq!(got, want, "partition {p}");
        }
        // A fetch from the middle starts at the frame holding the offset.
        let mid = FetchSpec {
            parts: vec![FetchPart {
                topic: "t".into(),
                partition: 3,
                offset: 4,
                max_bytes: 1 << 20,
                read_committed: false,
            }],
            ..spec.clone()
        };
        let got = values_of(&ops::fetch(&shard, &mid).await[0].frames);
        assert_eq!(got.first().map(|r| r.0), Some(4));
        segment_files_under(&topics_dir)
    })
    .expect("in-process node");
    assert_eq!(
        checked,
        0,
        "partitions lived in memory, not under {}",
        dir.display()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_long_poll_on_another_shard_ends_when_a_record_arrives() {
    let dir = temp_dir("long-poll");
    let (waited, got) = run_in_process(2, &dir, |shard| async move {
        create_topic(&shard, "lp", 2).await;
        // The partition shard 1 owns: the wait crosses the mesh.
        let p = (0..2)
            .find(|&p| shard.owner("lp", p).unwrap() == 1)
            .unwrap();
        let producer = {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                glommio::timer::sleep(Duration::from_millis(100)).await;
                produce(&shard, "lp", p, &[b"late"]).await
            })
        };
        let spec = FetchSpec {
            parts: vec![FetchPart {
                topic: "lp".into(),
                partition: p,
                offset: 0,
                max_bytes: 1 << 20,
                read_committed: false,
            }],
            max_bytes: 1 << 20,
            min_bytes: 1,
            max_wait_ms: 10_000,
        };
        let start = Instant::now();
        let outs = ops::fetch(&shard, &spec).await;
        let waited = start.elapsed();
        assert_eq!(producer.await, 0);
        (waited, values_of(&outs[0].frames))
    })
    .expect("in-process node");
    assert_eq!(got, vec![(0, b"late".to_vec())]);
    assert!(
        waited >= Duration::from_millis(90) && waited < Duration::from_secs(5),
        "the long poll ended {waited:?} after it began: it must wait for the record and no longer"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn committed_offsets_read_back_and_deleted_topics_refuse_produce() {
    let dir = temp_dir("offsets");
    run_in_process(2, &dir, |shard| async move {
        create_topic(&shard, "o", 2).await;
        produce(&shard, "o", 1, &[b"x"]).await;
        let group = "g1".to_string();
        let coordinator = strom_server::group::group_shard(&group, &shard.placement());
        let commit = OffsetCommitRequest {
            group: group.clone(),
            partitions: vec![OffsetCommitPartition {
                topic: "o".into(),
                partition: 1,
                offset: 1,
                metadata: "m".into(),
            }],
            member_id: String::new(),
            generation: -1,
        };
        match ops::call(&shard, coordinator, Op::OffsetCommit(commit)).await {
            Reply::OffsetCommit(r) => {
                assert!(
                    r.results.iter().all(|x| x.error == ErrorCode::None),
                    "{r:?}"
                )
            }
            _ => panic!("commit: unexpected reply"),
        }
        let fetch = OffsetFetchRequest {
            group,
            partitions: vec![TopicPartition {
                topic: "o".into(),
                partition: 1,
            }],
        };
        match ops::call(&shard, coordinator, Op::OffsetFetch(fetch)).await {
            Reply::OffsetFetch(r) => {
                assert_eq!(r.results.len(), 1);
                assert_eq!(r.results[0].offset, 1);
                assert_eq!(r.results[0].metadata, "m");
            }
            _ => panic!("offset fetch: unexpected reply"),
        }
        let delete = DeleteTopicsRequest {
            names: vec!["o".into()],
        };
        match ops::call(&shard, 0, Op::Admin(AdminOp::DeleteTopics(delete))).await {
            Reply::Topics(t) => assert_eq!(t.results[0].error, ErrorCode::None),
            _ => panic!("delete: unexpected reply"),
        }
        assert!(shard.owner("o", 1).is_err(), "a deleted topic has no owner");
    })
    .expect("in-process node");
    let _ = std::fs::remove_dir_all(&dir);
}
