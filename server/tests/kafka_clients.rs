//! Kafka client libraries against the Kafka listener: confluent-kafka
//! (librdkafka) admin, idempotent produce with every compression codec, a
//! consumer group that resumes from committed offsets after a restart, and
//! reading natively produced records; kafka-python produce/consume, admin
//! and a consumer group.

mod common;
mod kafka_common;

use kafka_common::*;
use std::time::Duration;
use strom_flatbuffers::protocol::{Acks, ErrorCode};
use strom_flatbuffers::{BatchBuilder, RecordIn};

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad JSON {s:?}: {e}"))
}

#[test]
fn confluent_kafka_idempotent_produce_with_every_codec() {
    if !python_has("confluent_kafka") {
        skip("confluent_kafka_idempotent_produce", "confluent-kafka");
        return;
    }
    let server = KafkaServer::start(2, temp_dir("ck-idem"));
    let n = 100_000u64;
    let out = json(&python(
        "ck_produce.py",
        &[&server.bootstrap(), &n.to_string()],
        Duration::from_secs(600),
    ));
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let r = &out[codec];
        assert_eq!(r["errors"], 0, "{codec}: {r}");
        assert_eq!(r["unflushed"], 0, "{codec}: {r}");
        assert_eq!(
            r["end_offsets"], n,
            "{codec}: exactly n records stored: {r}"
        );
        assert_eq!(r["consumed"], n, "{codec}: {r}");
        assert_eq!(r["distinct"], n, "{codec}: {r}");
        assert_eq!(r["bad"], 0, "{codec}: values and headers intact: {r}");
    }
}

#[test]
fn confluent_kafka_group_consumes_once_commits_and_resumes_after_restart() {
    if !python_has("confluent_kafka") {
        skip("confluent_kafka_group", "confluent-kafka");
        return;
    }
    let mut server = KafkaServer::start(2, temp_dir("ck-group"));
    let limit = Duration::from_secs(180);
    let b = server.bootstrap();
    let p = json(&python(
        "ck_group.py",
        &[&b, "produce", "grp", "0", "20000"],
        limit,
    ));
    assert_eq!(p["unflushed"], 0);
    let first = json(&python(
        "ck_group.py",
        &[&b, "consume", "grp", "20000"],
        limit,
    ));
    assert_eq!(first["distinct"], 20000, "{first}");
    assert_eq!(first["duplicates"], 0, "{first}");
    // Both members took part (4 partitions split between them).
    let per = &first["per_member"];
    assert!(
        per["m0"].as_u64().unwrap_or(0) > 0 && per["m1"].as_u64().unwrap_or(0) > 0,
        "{first}"
    );

    server.restart();
    let b = server.bootstrap();
    let p = json(&python(
        "ck_group.py",
        &[&b, "produce", "grp", "20000", "5000"],
        limit,
    ));
    assert_eq!(p["unflushed"], 0);
    let second = json(&python(
        "ck_group.py",
        &[&b, "consume", "grp", "5000"],
        limit,
    ));
    // Only the new records: the committed offsets survived the restart.
    assert_eq!(second["distinct"], 5000, "{second}");
    assert_eq!(second["duplicates"], 0, "{second}");
    assert_eq!(second["min"], 20000, "{second}");
    assert_eq!(second["max"], 24999, "{second}");
}

#[test]
fn confluent_kafka_reads_natively_produced_records() {
    if !python_has("confluent_kafka") {
        skip("confluent_kafka_reads_native", "confluent-kafka");
        return;
    }
    let server = KafkaServer::start(2, temp_dir("ck-native"));
    let mut c = common::Client::connect(server.native);
    c.handshake();
    c.create_topic("mixed", 2);
    let mut expected = Vec::new();
    for p in 0..2u32 {
        let mut b = BatchBuilder::new();
        for i in 0..30u8 {
            let key = [p as u8, i, 0xff, 0];
            let value: Vec<u8> = (0..=i).collect();
            b.push(&RecordIn {
                timestamp_ms: 1_600_000_000_000 + i64::from(i),
                key: (i % 5 != 0).then_some(&key[..]),
                value: Some(&value),
                headers: &[("bin", &[0u8, 1, 2, 255]), ("n", &[i])],
            });
            expected.push((p, u64::from(i), i));
        }
        let r = c
            .produce("mixed", Acks::Durable, &[(p, b.finish())])
            .expect("answer");
        assert!(r.results.iter().all(|x| x.error == ErrorCode::None));
    }
    let out = json(&python(
        "ck_consume.py",
        &[&server.bootstrap(), "mixed", "2", "60"],
        Duration::from_secs(60),
    ));
    let recs = out.as_array().expect("array");
    assert_eq!(recs.len(), 60, "{out}");
    use base64_lite::decode;
    for (r, (p, off, i)) in recs.iter().zip(&expected) {
        assert_eq!(r[0], *p);
        assert_eq!(r[1], *off);
        let key = r[2].as_str().map(decode);
        if i % 5 == 0 {
            assert_eq!(key, None);
        } else {
            assert_eq!(key, Some(vec![*p as u8, *i, 0xff, 0]));
        }
        assert_eq!(
            decode(r[3].as_str().expect("value")),
            (0..=*i).collect::<Vec<u8>>()
        );
        let hs = r[4].as_array().expect("headers");
        assert_eq!(hs[0][0], "bin");
        assert_eq!(decode(hs[0][1].as_str().expect("h")), vec![0u8, 1, 2, 255]);
        assert_eq!(decode(hs[1][1].as_str().expect("h")), vec![*i]);
        assert_eq!(r[5], 1_600_000_000_000u64 + u64::from(*i));
    }
}

#[test]
fn kafka_python_produce_consume_admin_and_group() {
    if !python_has("kafka") {
        skip("kafka_python", "kafka-python");
        return;
    }
    let server = KafkaServer::start(2, temp_dir("kp"));
    let out = json(&python(
        "kp_basic.py",
        &[&server.bootstrap(), "kp"],
        Duration::from_secs(120),
    ));
    assert_eq!(out["created"], true, "{out}");
    assert_eq!(out["consumed"], 1000, "{out}");
    assert_eq!(out["intact"], true, "{out}");
    assert_eq!(out["group_first"], 600, "{out}");
    assert_eq!(out["group_rest"], 400, "{out}");
    assert_eq!(out["group_union"], 1000, "{out}");
    assert!(out["groups"].to_string().contains("kpg"), "{out}");
    assert_eq!(out["deleted"], true, "{out}");
}

/// Standard base64 decoding, enough for the scripts' output.
mod base64_lite {
    pub fn decode(s: &str) -> Vec<u8> {
        let val = |c: u8| -> u32 {
            match c {
                b'A'..=b'Z' => u32::from(c - b'A'),
                b'a'..=b'z' => u32::from(c - b'a') + 26,
                b'0'..=b'9' => u32::from(c - b'0') + 52,
                b'+' => 62,
                b'/' => 63,
                _ => panic!("bad base64 {c}"),
            }
        };
        let bytes: Vec<u8> = s.bytes().filter(|c| *c != b'=').collect();
        let mut out = Vec::new();
        for chunk in bytes.chunks(4) {
            let mut n = 0u32;
            for (i, c) in chunk.iter().enumerate() {
                n |= val(*c) << (18 - 6 * i);
            }
            for i in 0..chunk.len().saturating_sub(1) {
                out.push((n >> (16 - 8 * i)) as u8);
            }
        }
        out
    }
}
