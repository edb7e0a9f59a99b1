//! A topic deleted and created again under the same name, written by the
//! same idempotent producer before and after, on a real two-shard server.
//!
//! The bug these guard against: idempotent-producer state (and the lanes
//! ordering its appends) was keyed by topic name and never dropped. A
//! producer whose sequences start again at 0 on the re-created topic (it is
//! a new partition log) had its first batches answered as duplicates of the
//! deleted topic's batches, with the deleted topic's offsets, and nothing
//! was stored; and the tables grew with every topic ever written.
//!
//! Topic ids are allocated in order and partition p of topic id t lives on
//! shard (t + p) % shards, so each test creates a spacer topic between the
//! two incarnations: the new partition lands on the shard that held the old
//! one, where name-keyed state would be found.

mod kafka_common;
mod kafka_wire;

use kafka_common::*;
use kafka_wire::*;
use std::time::Duration;

const SHARDS: u64 = 2;

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad JSON {s:?}: {e}"))
}

#[test]
fn kafka_recreated_topic_starts_without_the_deleted_topics_producer_state() {
    let server = KafkaServer::start(SHARDS as usize, temp_dir("recreate-wire"));
    let mut c = WireClient::connect(server.kafka);
    let topic = "again";
    let producer = |first_seq| {
        Some(Idempotent {
            producer_id: 4242,
            epoch: 0,
            first_seq,
        })
    };
    let produce = |c: &mut WireClient, tag: &str, first_seq: i32| {
        let batch = record_batch(tag, 5, producer(first_seq));
        let resp = c.call(
            PRODUCE_VERSION,
            &produce_request(-1, 10_000, &[(topic, 0, batch)]),
        );
        let r = produce_results(&resp);
        assert_eq!(r.len(), 1, "{r:?}");
        let (_, _, code, base, msg) = r[0].clone();
        (code, base, msg)
    };

    let old_id = c.create_topic(topic, 1);
    assert_eq!(produce(&mut c, "old", 0).0, 0);
    assert_eq!(produce(&mut c, "old", 5).0, 0);
    assert_eq!(c.end_offsets(topic, 1), vec![10]);
    c.delete_topic(topic);
    c.create_topic("again-spacer", 1);
    let new_id = c.create_topic(topic, 1);
    assert_ne!(old_id, new_id);
    assert_eq!(
        old_id % SHARDS,
        new_id % SHARDS,
        "precondition: both incarnations on one shard"
    );

    // The same producer, sequences from 0 again: new batches, stored at
    // fresh offsets from 0.
    assert_eq!(produce(&mut c, "new", 0), (0, 0, String::new()));
    assert_eq!(produce(&mut c, "new", 5), (0, 5, String::new()));
    assert_eq!(
        c.end_offsets(topic, 1),
        vec![10],
        "both batches stored in the new topic, none taken for a duplicate of the old one"
    );
    // Idempotence still holds on the new topic: a retry is a duplicate of
    // the new batch, with its offset, and stores nothing.
    assert_eq!(produce(&mut c, "new", 5), (0, 5, String::new()));
    assert_eq!(c.end_offsets(topic, 1), vec![10]);
}

#[test]
fn confluent_kafka_idempotent_producer_across_topic_recreation() {
    if !python_has("confluent_kafka") {
        skip("confluent_kafka_recreate_topic", "confluent-kafka");
        return;
    }
    let server = KafkaServer::start(SHARDS as usize, temp_dir("recreate-ck"));
    let n = 10u64;
    let out = json(&python(
        "ck_recreate.py",
        &[&server.bootstrap(), "recreated", &n.to_string()],
        Duration::from_secs(180),
    ));
    assert_eq!(out["errors"], serde_json::json!([]), "{out}");
    assert_eq!(out["unflushed"], 0, "{out}");
    // Reported offsets after re-creation start at 0 and are what is stored.
    let reported = out["after_reported"].as_array().expect("after_reported");
    assert_eq!(reported.len() as u64, 2 * n, "{out}");
    for (i, r) in reported.iter().enumerate() {
        assert_eq!(r[1], i as u64, "fresh offsets from 0: {out}");
    }
    assert_eq!(out["low"], 0, "{out}");
    assert_eq!(out["high"], 2 * n, "{out}");
    assert_eq!(out["stored"], out["after_reported"], "{out}");
}
