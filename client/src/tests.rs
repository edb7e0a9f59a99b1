//! Client unit tests against the in-process mock server (real sockets, real
//! codec; no strom-server needed). End-to-end tests live in `tests/`.

use crate::mock::Mock;
use crate::*;
use std::time::Duration;
use strom_flatbuffers::protocol::{
    ListOffsetsPartition, ListOffsetsRequest, RequestBody, ResponseBody,
};

fn quick() -> ConnectionConfig {
    ConnectionConfig {
        connect_timeout_ms: 500,
        request_timeout_ms: 2_000,
        reconnect_attempts_max: 2,
        reconnect_backoff_ms: 5,
        ..Default::default()
    }
}

#[test]
fn pipelined_responses_are_matched_by_correlation_id() {
    let mock = Mock::start(0);
    let mut client = Client::connect_with(&mock.addr, quick()).expect("connect");
    client.create_topic("t", 4, &[]).expect("create");
    mock.state.lock().expect("lock").reverse_batch = 4;
    // The mock now answers in bursts of 4, reversed.
    let conn = client.connection();
    let ids: Vec<u64> = (0..4u32)
        .map(|p| {
            let body = RequestBody::ListOffsets(ListOffsetsRequest {
                partitions: vec![ListOffsetsPartition {
                    topic: "t".into(),
                    partition: p,
                    timestamp: -1,
                }],
            });
            conn.send(&body, &[]).expect("send")
        })
        .collect();
    for (p, id) in ids.iter().enumerate() {
        let r = conn.recv(*id, 0).expect("recv");
        assert_eq!(r.correlation_id, *id);
        match r.body {
            ResponseBody::ListOffsets(l) => assert_eq!(l.results[0].partition, p as u32),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn produce_reports_dense_offsets_and_consume_reads_them_back() {
    let mock = Mock::start(0);
    let client = Client::connect_with(&mock.addr, quick()).expect("connect");
    let mut producer = Producer::new(
        client,
        ProducerConfig {
            batch_bytes: 2_000,
            linger_ms: 1_000,
            ..Default::default()
        },
    );
    producer.client().create_topic("t", 3, &[]).expect("create");
    let mut handles = Vec::new();
    for i in 0..500u32 {
        let key = format!("k{}", i % 7);
        let value = format!("value-{i}");
        let hv = i.to_le_bytes();
        let headers = [("i", &hv[..])];
        let rec = ProducerRecord::new("t", value.as_bytes())
            .key(key.as_bytes())
            .headers(&headers)
            .timestamp_ms(1_000 + i64::from(i));
        handles.push(producer.send(&rec).expect("send"));
    }
    let results = producer.flush();
    assert_eq!(results.len(), 500);
    let mut next = [0u64; 3];
    for (h, r) in handles.iter().zip(&results) {
        let off = *r.as_ref().expect("offset");
        assert_eq!(off, next[h.partition() as usize], "dense per partition");
        next[h.partition() as usize] += 1;
        let key = format!("k{}", h.index() % 7);
        assert_eq!(h.partition(), partition_for_key(key.as_bytes(), 3));
    }

    let mut consumer = Consumer::new(
        Client::connect_with(&mock.addr, quick()).expect("c"),
        ConsumerConfig::default(),
    );
    consumer
        .assign_topic("t", OffsetSpec::Earliest)
        .expect("assign");
    let mut seen = 0;
    while seen < 500 {
        let frames = consumer.poll(Duration::from_secs(2)).expect("poll");
        assert!(!frames.is_empty(), "data is there");
        for f in &frames {
            for r in f.records() {
                let i = u32::from_le_bytes(
                    r.headers().next().expect("header").1.try_into().expect("4"),
                );
                let (h, res) = (&handles[i as usize], &results[i as usize]);
                assert_eq!(h.partition(), f.partition);
                assert_eq!(*res.as_ref().expect("ok"), r.offset);
                assert_eq!(r.value, Some(format!("value-{i}").as_bytes()));
                assert_eq!(r.timestamp_ms, 1_000 + i64::from(i));
                seen += 1;
            }
        }
    }
    assert_eq!(seen, 500);
    assert!(consumer
        .poll(Duration::from_millis(50))
        .expect("poll")
        .is_empty());

    // Seeking into the middle of a frame skips the records before it.
    let mid = results[10].as_ref().expect("ok") + 1;
    let p = handles[10].partition();
    consumer.seek("t", p, OffsetSpec::At(mid)).expect("seek");
    let frames = consumer.poll(Duration::from_secs(1)).expect("poll");
    let first = frames
        .iter()
        .find(|f| f.partition == p)
        .and_then(|f| f.records().next())
        .expect("a record");
    assert_eq!(first.offset, mid);

    consumer.commit("g").expect("commit");
    let pos = consumer.position("t", p).expect("assigned");
    assert_eq!(
        consumer.client().committed("g", "t", p).expect("committed"),
        Some(pos)
    );
    assert_eq!(
        consumer
            .client()
            .committed("other", "t", p)
            .expect("committed"),
        None
    );
}

#[test]
fn server_error_codes_come_through() {
    let mock = Mock::start(0);
    let mut client = Client::connect_with(&mock.addr, quick()).expect("connect");
    client.create_topic("t", 1, &[]).expect("create");
    let e = client.create_topic("t", 1, &[]).expect_err("exists");
    assert_eq!(e.code(), Some(ErrorCode::TopicAlreadyExists));
    let e = client.describe_topic("nope").expect_err("unknown");
    assert_eq!(e.code(), Some(ErrorCode::UnknownTopic));
    let mut consumer = Consumer::new(client, ConsumerConfig::default());
    consumer.assign("t", 0, OffsetSpec::At(42)).expect("assign");
    let e = consumer
        .poll(Duration::from_millis(100))
        .expect_err("out of range");
    assert_eq!(e.code(), Some(ErrorCode::OffsetOutOfRange), "{e}");
    assert_eq!(consumer.position("t", 0), Some(42), "position unchanged");
}

#[test]
fn reconnects_after_the_socket_is_dropped_and_gives_up_when_nobody_listens() {
    let mock = Mock::start(0);
    let mut client = Client::connect_with(&mock.addr, quick()).expect("connect");
    let g = client.connection().generation();
    client.connection().disconnect();
    client
        .list_topics()
        .expect_err("mock does not list; but it reconnected first");
    assert_eq!(client.connection().generation(), g + 1);

    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").to_string()
    };
    let started = std::time::Instant::now();
    let e = Client::connect_with(&dead, quick()).expect_err("nobody listens");
    assert!(e.is_connection_error(), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn acks_none_reports_not_acknowledged() {
    let mock = Mock::start(0);
    let client = Client::connect_with(&mock.addr, quick()).expect("connect");
    let mut producer = Producer::new(
        client,
        ProducerConfig {
            acks: Acks::None,
            ..Default::default()
        },
    );
    producer.client().create_topic("t", 1, &[]).expect("create");
    producer
        .send(&ProducerRecord::new("t", b"x"))
        .expect("send");
    let r = producer.flush();
    assert!(matches!(r[0], Err(Error::NotAcknowledged)));
    // The record still arrived.
    let mut c = Consumer::new(
        Client::connect_with(&mock.addr, quick()).expect("c"),
        ConsumerConfig::default(),
    );
    c.assign("t", 0, OffsetSpec::Earliest).expect("assign");
    let frames = c.poll(Duration::from_secs(1)).expect("poll");
    assert_eq!(
        frames[0].records().next().expect("one").value,
        Some(&b"x"[..])
    );
}
