//! A Kafka idempotent producer across a partition's failed log and its
//! reopen, on a real two-shard server.
//!
//! The failure is injected with `STROM_TEST_PARTITION_FAULT` (see
//! `shard::PartitionFault`): after [`RECORDS_BEFORE_FAULT`] records the
//! partition's log fails, as after a failed fdatasync, and the server
//! reopens it in the background. What must hold, with librdkafka as the
//! client: the errors the Kafka edge answers meanwhile
//! (`KAFKA_STORAGE_ERROR`, `NOT_LEADER_OR_FOLLOWER`) are ones it retries,
//! so every record is delivered without an error; and the retried batch is
//! stored exactly once (the producer state is rebuilt from the reopened
//! log: batches it lost are appended again, those it holds are duplicates).

mod kafka_common;

use kafka_common::*;
use std::collections::HashMap;
use std::time::Duration;

const FAULT_ENV: &str = "STROM_TEST_PARTITION_FAULT";
const RECORDS: u64 = 40;
const RECORDS_BEFORE_FAULT: u64 = 10;

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad JSON {s:?}: {e}"))
}

#[test]
fn confluent_kafka_idempotent_producer_across_a_partition_reopen() {
    if !python_has("confluent_kafka") {
        skip("confluent_kafka_partition_reopen", "confluent-kafka");
        return;
    }
    let topic = "reopened";
    // This file's only test: no other server of this process takes the
    // variable (the child reads its environment at spawn).
    std::env::set_var(FAULT_ENV, format!("{topic}:0:{RECORDS_BEFORE_FAULT}"));
    let server = KafkaServer::start(2, temp_dir("reopen-ck"));
    std::env::remove_var(FAULT_ENV);
    let out = json(&python(
        "ck_reopen.py",
        &[&server.bootstrap(), topic, &RECORDS.to_string()],
        Duration::from_secs(180),
    ));
    assert_eq!(out["errors"], serde_json::json!([]), "{out}");
    assert_eq!(out["unflushed"], 0, "{out}");
    let delivered = out["delivered"].as_array().expect("delivered");
    assert_eq!(delivered.len() as u64, RECORDS, "{out}");
    let stored: Vec<(String, u64)> = out["stored"]
        .as_array()
        .expect("stored")
        .iter()
        .map(|r| {
            (
                r[0].as_str().expect("value").to_owned(),
                r[1].as_u64().expect("offset"),
            )
        })
        .collect();
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for (v, _) in &stored {
        *copies.entry(v.as_str()).or_default() += 1;
    }
    for d in delivered {
        let (v, offset) = (
            d[0].as_str().expect("value"),
            d[1].as_u64().expect("offset"),
        );
        assert_eq!(copies.get(v), Some(&1), "{v} stored once: {out}");
        assert_eq!(
            stored.get(offset as usize).map(|s| s.0.as_str()),
            Some(v),
            "{v} at the offset reported ({offset}): {out}"
        );
    }
    assert_eq!(out["high"], RECORDS, "nothing stored twice: {out}");
}
