//! A partition whose log failed recovers by itself, without a restart.
//!
//! The story: since the engine learned fsyncgate (a failed fdatasync or
//! write fails the log, which then refuses writes "until it is reopened"),
//! nothing in the server reopened it. One transient disk error made a
//! partition refuse every produce until the whole server was restarted.
//!
//! The failure is injected with `STROM_TEST_PARTITION_FAULT` (see
//! `shard::PartitionFault`): once the partition has taken
//! [`RECORDS_BEFORE_FAULT`] records its log fails, as after a failed
//! fdatasync, and the first [`FAILED_REOPENS`] attempts to reopen it fail
//! too (a disk still broken), so the back-off between attempts runs. The
//! test, against a real two-shard server, over the native protocol:
//!
//! 1. produces durably to both partitions of a topic, one record per request;
//! 2. sees the faulty partition answer a retriable error (`PartitionFailed`
//!    once, then only `PartitionUnavailable` while it is reopened: no
//!    produce reaches the failed log), while the other
//!    partition keeps taking writes;
//! 3. sees produce to the faulty partition succeed again within
//!    [`RECOVERY_BUDGET_MS`], with no restart, and keep succeeding;
//! 4. reads every acknowledged record back, each exactly once, at the offset
//!    it was acknowledged at, before and after a clean restart; and finds the
//!    reopen counted in `/metrics` and each attempt in the log.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use strom_client::{
    Acks, Client, ConnectionConfig, Consumer, ConsumerConfig, Error, ErrorCode, OffsetSpec,
    Producer, ProducerConfig, ProducerRecord,
};
use strom_tests::{unique_name, TestServer};

const FAULT_ENV: &str = "STROM_TEST_PARTITION_FAULT";
/// Records the faulty partition takes before its log fails.
const RECORDS_BEFORE_FAULT: u64 = 20;
/// Attempts to reopen it that fail before one succeeds.
const FAILED_REOPENS: u32 = 2;
/// From the first error to the first success again. The server waits
/// 100 + 200 ms between the three attempts (`PARTITION_REOPEN_BACKOFF_MIN_MS`
/// doubling); the rest is slack for a loaded machine.
const RECOVERY_BUDGET_MS: u64 = 15_000;
/// Records produced to each partition after the recovery.
const RECORDS_AFTER: u64 = 20;

fn conn_config() -> ConnectionConfig {
    ConnectionConfig {
        connect_timeout_ms: 2_000,
        request_timeout_ms: 30_000,
        ..Default::default()
    }
}

fn value(partition: u32, id: u64) -> Vec<u8> {
    format!("p{partition}-record-{id:06}").into_bytes()
}

/// Produces one record in its own request, durably; the offset or the error.
fn produce_one(p: &mut Producer, topic: &str, partition: u32, id: u64) -> Result<u64, Error> {
    let v = value(partition, id);
    p.send(&ProducerRecord::new(topic, &v).partition(partition))?;
    p.flush().pop().expect("one result per record sent")
}

fn code_of(e: &Error) -> Option<ErrorCode> {
    match e {
        Error::Server { code, .. } => Some(*code),
        _ => None,
    }
}

/// Every record of `topic`/`partition` from its start to its end, as
/// (offset, value).
fn read_all(addr: &str, topic: &str, partition: u32) -> Vec<(u64, Vec<u8>)> {
    let mut consumer = Consumer::new(
        Client::connect_with(addr, conn_config()).expect("connect consumer"),
        ConsumerConfig {
            max_wait_ms: 50,
            ..Default::default()
        },
    );
    let end = consumer
        .client()
        .list_offset(topic, partition, OffsetSpec::Latest)
        .expect("latest offset")
        .unwrap_or(0);
    consumer
        .assign(topic, partition, OffsetSpec::Earliest)
        .expect("assign");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while out.len() < end as usize {
        assert!(
            Instant::now() < deadline,
            "{topic}/{partition}: read {} of {end}",
            out.len()
        );
        for f in consumer.poll(Duration::from_millis(200)).expect("poll") {
            for r in f.records() {
                out.push((r.offset, r.value.unwrap_or_default().to_vec()));
            }
        }
    }
    out
}

/// Each acknowledged record is in the log exactly once, at its offset.
fn check_acked(addr: &str, topic: &str, partition: u32, acked: &HashMap<u64, u64>, what: &str) {
    let records = read_all(addr, topic, partition);
    for (i, (offset, _)) in records.iter().enumerate() {
        assert_eq!(
            *offset, i as u64,
            "{what}: {topic}/{partition} offsets dense"
        );
    }
    for (&id, &offset) in acked {
        let want = value(partition, id);
        let copies = records.iter().filter(|(_, v)| *v == want).count();
        assert_eq!(
            copies, 1,
            "{what}: record {id} of {topic}/{partition} (acknowledged at {offset}) is there {copies} times"
        );
        assert_eq!(
            records.get(offset as usize).map(|(_, v)| v),
            Some(&want),
            "{what}: record {id} of {topic}/{partition} not at its offset {offset}"
        );
    }
}

/// The sum of `name`'s samples in the server's /metrics.
fn metric_sum(http: &str, name: &str) -> f64 {
    let mut s = TcpStream::connect(http).expect("connect http");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .expect("request");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn a_failed_partition_reopens_by_itself_and_keeps_every_acknowledged_record() {
    let topic = unique_name("reopen");
    let faulty = 0u32;
    let healthy = 1u32;
    // This file's only test: no other server of this process takes the
    // variable (the child reads its environment at spawn).
    std::env::set_var(
        FAULT_ENV,
        format!("{topic}:{faulty}:{RECORDS_BEFORE_FAULT}:{FAILED_REOPENS}"),
    );
    let mut server = TestServer::start(2);
    std::env::remove_var(FAULT_ENV);
    let addr = server.addr().to_owned();
    let mut admin = Client::connect_with(&addr, conn_config()).expect("connect");
    admin
        .create_topic(&topic, 2, &[])
        .expect("create the topic");
    let mut p = Producer::new(
        Client::connect_with(&addr, conn_config()).expect("connect producer"),
        ProducerConfig {
            acks: Acks::Durable,
            ..Default::default()
        },
    );
    // id -> acknowledged offset, per partition.
    let mut acked: [HashMap<u64, u64>; 2] = [HashMap::new(), HashMap::new()];
    let mut next_id = [0u64; 2];
    let mut produce = |p: &mut Producer, part: u32| -> Result<u64, Error> {
        let id = next_id[part as usize];
        let r = produce_one(p, &topic, part, id);
        if let Ok(offset) = r {
            assert!(
                acked[part as usize].insert(id, offset).is_none(),
                "record {id} acknowledged twice"
            );
            next_id[part as usize] += 1;
        }
        r
    };

    // 1. Healthy: every record of both partitions is acknowledged.
    for _ in 0..RECORDS_BEFORE_FAULT {
        for part in [faulty, healthy] {
            produce(&mut p, part).unwrap_or_else(|e| panic!("before the fault: {e}"));
        }
    }

    // 2. The log fails: retriable errors on it, the other partition works.
    let first = produce(&mut p, faulty).expect_err("the failed partition refuses writes");
    let failed_at = Instant::now();
    assert_eq!(
        code_of(&first),
        Some(ErrorCode::PartitionFailed),
        "the first refusal says the log failed: {first}"
    );
    produce(&mut p, healthy).unwrap_or_else(|e| panic!("the other partition: {e}"));

    // 3. It comes back by itself; the same record is sent again until it is
    // acknowledged (what a producer retrying a retriable error does).
    let mut refusals = vec![first.to_string()];
    loop {
        match produce(&mut p, faulty) {
            Ok(_) => break,
            Err(e) => {
                // The first refusal started the reopen: from then on the
                // partition is unavailable (no append reaches the failed log).
                assert_eq!(
                    code_of(&e),
                    Some(ErrorCode::PartitionUnavailable),
                    "a retriable error while the partition is reopened: {e}"
                );
                refusals.push(e.to_string());
            }
        }
        assert!(
            failed_at.elapsed() < Duration::from_millis(RECOVERY_BUDGET_MS),
            "the partition did not take writes again within {RECOVERY_BUDGET_MS} ms \
             ({} refusals, the last: {}); server log:\n{}",
            refusals.len(),
            refusals.last().expect("one"),
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "writable again after {:?} and {} refusals",
        failed_at.elapsed(),
        refusals.len()
    );
    for _ in 0..RECORDS_AFTER {
        for part in [faulty, healthy] {
            produce(&mut p, part).unwrap_or_else(|e| panic!("after the recovery: {e}"));
        }
    }

    // 4. Everything acknowledged is there once; the reopen is counted and
    // every attempt logged.
    for part in [faulty, healthy] {
        check_acked(
            &addr,
            &topic,
            part,
            &acked[part as usize],
            "after the reopen",
        );
    }
    let http = server.http_addr().expect("http address").to_owned();
    assert_eq!(
        metric_sum(&http, "strom_partition_reopens_total"),
        1.0,
        "one reopen counted"
    );
    let log = server.stderr();
    let attempts = log.matches(" reopening partition shard=").count();
    let failures = log.matches(" reopening partition failed shard=").count();
    assert_eq!(
        (attempts, failures),
        (FAILED_REOPENS as usize + 1, FAILED_REOPENS as usize),
        "each attempt and each failed one is logged:\n{log}"
    );
    drop(p);
    drop(admin);
    assert!(server.stop(), "clean shutdown:\n{}", server.stderr());
    server.start_again();
    let addr = server.addr().to_owned();
    for part in [faulty, healthy] {
        check_acked(
            &addr,
            &topic,
            part,
            &acked[part as usize],
            "after a restart",
        );
    }
}
