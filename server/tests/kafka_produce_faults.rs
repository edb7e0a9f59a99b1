//! Kafka produce when one shard fails or stalls, against a real two-shard
//! server with a fault injected on shard 1 (`STROM_TEST_PRODUCE_FAULT`,
//! see `kafka::ProduceFault`), spoken to over TCP with the `kafka-protocol`
//! crate's codecs.
//!
//! The bug these guard against: the Kafka produce coordinator fanned a
//! request out to every owning shard and, when one shard's reply was a
//! failure, marked every partition still waiting as failed, including the
//! partitions another shard was about to report as appended; that later
//! success could not overwrite the error. A plain (non-idempotent) producer
//! then retried batches that were already stored and duplicated them. And it
//! waited for every shard without a deadline, so one stalled shard held the
//! answer (and every later answer on the connection) forever, where the
//! native produce answers Timeout at the request's deadline.

mod kafka_common;
mod kafka_wire;

use kafka_common::*;
use kafka_wire::*;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const FAULT_ENV: &str = "STROM_TEST_PRODUCE_FAULT";
const PARTITIONS: i32 = 4;
const SHARDS: u64 = 2;
/// Kafka's error codes the tests expect.
const REQUEST_TIMED_OUT: i16 = 7;

/// Serializes "set the variable, spawn the server" across this file's
/// tests (the child takes the environment at spawn).
static ENV_LOCK: Mutex<()> = Mutex::new(());

fn start_with_fault(tag: &str, fault: &str) -> KafkaServer {
    let _g = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_var(FAULT_ENV, fault);
    let server = KafkaServer::start(SHARDS as usize, temp_dir(tag));
    std::env::remove_var(FAULT_ENV);
    server
}

/// The shard owning `partition` of the topic with `topic_id`
/// (`metadata::owner_shard`).
fn owner(topic_id: u64, partition: i32) -> u64 {
    (topic_id + partition as u64) % SHARDS
}

#[test]
fn kafka_produce_failed_shard_fails_only_its_own_partitions() {
    let server = start_with_fault("fault-fail", "fail:1");
    let mut c = WireClient::connect(server.kafka);
    let topic = "fanout";
    let id = c.create_topic(topic, PARTITIONS);
    let healthy: Vec<i32> = (0..PARTITIONS).filter(|&p| owner(id, p) == 0).collect();
    let faulty: Vec<i32> = (0..PARTITIONS).filter(|&p| owner(id, p) == 1).collect();
    assert!(
        !healthy.is_empty() && !faulty.is_empty(),
        "both shards own partitions"
    );
    let rounds = 5i64;
    let per_batch = 3usize;
    for round in 0..rounds {
        let parts: Vec<(&str, i32, bytes::Bytes)> = (0..PARTITIONS)
            .map(|p| {
                (
                    topic,
                    p,
                    record_batch(&format!("r{round}"), per_batch, None),
                )
            })
            .collect();
        // acks=all: the healthy shard's answer waits for fdatasync, so the
        // faulty shard's failure arrives first (the order that exposed the bug).
        let resp = c.call(PRODUCE_VERSION, &produce_request(-1, 10_000, &parts));
        let results = produce_results(&resp);
        assert_eq!(results.len(), PARTITIONS as usize, "{results:?}");
        for (t, p, code, base, msg) in &results {
            assert_eq!(t, topic);
            if owner(id, *p) == 0 {
                assert_eq!(
                    (*code, *base),
                    (0, round * per_batch as i64),
                    "round {round}: partition {p} was appended on the healthy shard and must \
                     say so with its offset: {results:?}"
                );
            } else {
                assert_ne!(*code, 0, "round {round}: partition {p}: {results:?}");
                assert_eq!(*base, -1, "round {round}: partition {p}: {results:?}");
                assert!(
                    msg.contains("injected fault"),
                    "round {round}: partition {p} reports its own shard's error: {results:?}"
                );
            }
        }
    }
    // What the answers said is what is stored: nothing on the failed shard,
    // every batch exactly once on the healthy one.
    let ends = c.end_offsets(topic, PARTITIONS);
    for p in healthy {
        assert_eq!(ends[p as usize], rounds * per_batch as i64, "{ends:?}");
    }
    for p in faulty {
        assert_eq!(ends[p as usize], 0, "{ends:?}");
    }
}

#[test]
fn kafka_produce_answers_request_timed_out_when_a_shard_stalls() {
    // Shard 1 starts each produce 20 s late; the request allows 1 s.
    let server = start_with_fault("fault-stall", "delay:1:20000");
    let mut c = WireClient::connect(server.kafka);
    let topic = "stall";
    let id = c.create_topic(topic, PARTITIONS);
    let parts: Vec<(&str, i32, bytes::Bytes)> = (0..PARTITIONS)
        .map(|p| (topic, p, record_batch("s", 2, None)))
        .collect();
    let timeout_ms = 1_000;
    let started = Instant::now();
    let resp = c
        .call_within(
            PRODUCE_VERSION,
            &produce_request(-1, timeout_ms, &parts),
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| {
            panic!("a produce with timeout_ms={timeout_ms} must be answered by its deadline: {e}")
        });
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "answered before the deadline: {took:?}"
    );
    let results = produce_results(&resp);
    assert_eq!(results.len(), PARTITIONS as usize, "{results:?}");
    for (_, p, code, base, _) in &results {
        if owner(id, *p) == 0 {
            assert_eq!((*code, *base), (0, 0), "partition {p}: {results:?}");
        } else {
            assert_eq!(*code, REQUEST_TIMED_OUT, "partition {p}: {results:?}");
            assert_eq!(*base, -1, "partition {p}: {results:?}");
        }
    }
    // The connection still answers (nothing behind the stalled request is
    // stuck): the healthy partitions' offsets.
    let ends = c.end_offsets(topic, PARTITIONS);
    for p in (0..PARTITIONS).filter(|&p| owner(id, p) == 0) {
        assert_eq!(ends[p as usize], 2, "{ends:?}");
    }
}
