//! Client unit tests against the in-process mock server (real sockets, real
//! codec; no strom-server needed). End-to-end tests live in `tests/`.

use crate::mock::{Mock, MockCluster};
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

// ------------------------------------------------------ resends, idempotence

/// One batch per flush (records linger until it).
fn idempotent(retries_only: bool) -> ProducerConfig {
    ProducerConfig {
        linger_ms: 60_000,
        idempotent: !retries_only,
        retries: true,
        retry_backoff_ms: 5,
        retry_backoff_max_ms: 20,
        delivery_timeout_ms: 10_000,
        ..Default::default()
    }
}

/// `n` records `{tag}-{i}` to partition 0 of `t`, flushed.
fn send_flush(p: &mut Producer, tag: &str, n: usize) -> Vec<Result<u64>> {
    for i in 0..n {
        let v = format!("{tag}-{i}");
        p.send(&ProducerRecord::new("t", v.as_bytes()).partition(0))
            .expect("send");
    }
    p.flush()
}

fn offsets(results: &[Result<u64>]) -> Vec<u64> {
    results
        .iter()
        .map(|r| *r.as_ref().expect("stored"))
        .collect()
}

/// Every value stored on the mock's partition 0 of `t`, with the producer
/// fields of its frame.
fn stored(mock: &Mock) -> Vec<(String, i64, i16, i32)> {
    let st = mock.state.lock().expect("lock");
    let mut out = Vec::new();
    for f in &st.topics["t"][0] {
        let h = strom_flatbuffers::FrameHeader::ref_from(f).expect("header");
        for r in strom_flatbuffers::records(f).expect("records") {
            out.push((
                String::from_utf8_lossy(r.value.unwrap_or(b"")).into_owned(),
                h.producer_id.get(),
                h.producer_epoch.get(),
                h.base_sequence.get(),
            ));
        }
    }
    out
}

fn mock_producer(config: ProducerConfig) -> (Mock, Producer) {
    let mock = Mock::start(0);
    let client = Client::connect_with(&mock.addr, quick()).expect("connect");
    let mut p = Producer::new(client, config);
    p.client().create_topic("t", 1, &[]).expect("create");
    (mock, p)
}

/// The story: a native producer whose answer was lost (the server wrote the
/// batch, then the connection broke) could only report "undetermined"; an
/// application resending stored the records twice. Idempotent, the producer
/// resends the same frame and the server answers it as a duplicate.
#[test]
fn an_idempotent_resend_after_a_lost_answer_is_stored_once() {
    let (mock, mut p) = mock_producer(idempotent(false));
    assert_eq!(
        offsets(&send_flush(&mut p, "a", 10)),
        (0..10).collect::<Vec<_>>()
    );
    let id = p.stats().producer_id;
    assert!(id >= 0);
    mock.state.lock().expect("lock").lose_answers = 1;
    assert_eq!(
        offsets(&send_flush(&mut p, "b", 5)),
        (10..15).collect::<Vec<_>>(),
        "the original offsets"
    );
    let s = p.stats();
    assert_eq!(s.resends, 1, "{s:?}");
    assert_eq!(s.resends_after_connection_loss, 1, "{s:?}");
    assert_eq!(s.resends_found_stored, 1, "{s:?}");
    assert_eq!(s.epoch_bumps, 0);
    let all = stored(&mock);
    assert_eq!(all.len(), 15, "stored once: {all:?}");
    assert!(all
        .iter()
        .all(|(_, pid, epoch, _)| *pid == id && *epoch == 0));
    assert_eq!(
        (all[0].3, all[10].3),
        (0, 10),
        "sequences per partition from 0"
    );
}

/// The same lost answer without idempotence, with resends on: stored twice.
/// (What idempotence buys; the crash test shows it against a real server.)
#[test]
fn a_resend_without_idempotence_can_store_a_batch_twice() {
    let (mock, mut p) = mock_producer(idempotent(true));
    send_flush(&mut p, "a", 10);
    mock.state.lock().expect("lock").lose_answers = 1;
    let r = send_flush(&mut p, "b", 5);
    assert_eq!(offsets(&r), (15..20).collect::<Vec<_>>(), "the second copy");
    let all = stored(&mock);
    assert_eq!(all.len(), 20);
    assert_eq!(all.iter().filter(|(v, ..)| v == "b-0").count(), 2);
    assert!(
        all.iter().all(|(_, pid, ..)| *pid == -1),
        "no producer fields"
    );
}

/// Without resends (the default) a lost answer is undetermined and the
/// batch is not sent again.
#[test]
fn without_resends_a_lost_answer_is_undetermined() {
    let (mock, mut p) = mock_producer(ProducerConfig {
        linger_ms: 60_000,
        ..Default::default()
    });
    mock.state.lock().expect("lock").lose_answers = 1;
    let r = send_flush(&mut p, "a", 3);
    assert!(r
        .iter()
        .all(|r| matches!(r, Err(Error::Undetermined { .. }))));
    assert_eq!(p.stats().resends, 0);
    assert_eq!(mock.state.lock().expect("lock").produce_requests, 1);
}

#[test]
fn retriable_refusals_are_resent_and_definite_ones_give_their_sequences_back() {
    let (mock, mut p) = mock_producer(idempotent(false));
    mock.state.lock().expect("lock").refuse.extend([
        ErrorCode::PartitionUnavailable,
        ErrorCode::LeaderNotAvailable,
    ]);
    assert_eq!(offsets(&send_flush(&mut p, "a", 4)), vec![0, 1, 2, 3]);
    assert_eq!(p.stats().resends, 2);
    // A definite refusal stores nothing: its sequences go to the next batch
    // (else the mock would refuse that one as out of order).
    mock.state
        .lock()
        .expect("lock")
        .refuse
        .push_back(ErrorCode::MessageTooLarge);
    let r = send_flush(&mut p, "b", 2);
    assert!(r
        .iter()
        .all(|r| r.as_ref().err().and_then(Error::code) == Some(ErrorCode::MessageTooLarge)));
    assert_eq!(offsets(&send_flush(&mut p, "c", 2)), vec![4, 5]);
    let all = stored(&mock);
    assert_eq!(
        all.iter().map(|a| a.3).collect::<Vec<_>>(),
        [0, 0, 0, 0, 4, 4]
    );
    assert_eq!(p.stats().epoch_bumps, 0);
}

/// librdkafka's rule: an out-of-order refusal of a batch that no attempt
/// can have stored means the server lost track of the producer; bump the
/// epoch and send it again from sequence 0.
#[test]
fn out_of_order_for_a_batch_never_stored_bumps_the_epoch_and_resends_it() {
    let (mock, mut p) = mock_producer(idempotent(false));
    send_flush(&mut p, "a", 5);
    let id = p.stats().producer_id;
    // The server forgets the last two records' batch... as if it held 0..2.
    {
        let mut st = mock.state.lock().expect("lock");
        let e = st
            .producers
            .get_mut(&("t".to_owned(), 0, id))
            .expect("known");
        e.2 -= 2;
    }
    assert_eq!(offsets(&send_flush(&mut p, "b", 3)), vec![5, 6, 7]);
    let s = p.stats();
    assert_eq!((s.producer_id, s.producer_epoch, s.epoch_bumps), (id, 1, 1));
    let all = stored(&mock);
    assert_eq!(
        &all[5],
        &("b-0".to_owned(), id, 1, 0),
        "resent under epoch 1 from 0"
    );
}

/// An out-of-order refusal after an attempt that may have stored the batch
/// (here a timeout) cannot be resent safely: its records fail as
/// undetermined, and the producer bumps its epoch and goes on.
#[test]
fn out_of_order_after_a_possibly_stored_attempt_fails_the_batch_instead_of_duplicating() {
    let (mock, mut p) = mock_producer(idempotent(false));
    send_flush(&mut p, "a", 2);
    mock.state
        .lock()
        .expect("lock")
        .refuse
        .extend([ErrorCode::Timeout, ErrorCode::OutOfOrderSequence]);
    let r = send_flush(&mut p, "b", 2);
    for r in &r {
        let e = r.as_ref().expect_err("not resent");
        assert!(matches!(e, Error::Undetermined { .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.contains("may have stored it"), "{text}");
        assert_eq!(text.matches("outcome unknown").count(), 1, "{text}");
    }
    assert_eq!(p.stats().epoch_bumps, 1);
    assert_eq!(p.stats().batches_given_up, 1);
    assert_eq!(offsets(&send_flush(&mut p, "c", 2)), vec![2, 3]);
    let all = stored(&mock);
    assert_eq!((all[2].2, all[2].3), (1, 0), "epoch 1 from sequence 0");
}

#[test]
fn a_fenced_producer_fails_the_batch_and_takes_a_new_id() {
    let (mock, mut p) = mock_producer(idempotent(false));
    send_flush(&mut p, "a", 1);
    let first = p.stats().producer_id;
    mock.state
        .lock()
        .expect("lock")
        .refuse
        .push_back(ErrorCode::InvalidProducerEpoch);
    let r = send_flush(&mut p, "b", 1);
    assert_eq!(
        r[0].as_ref().err().and_then(Error::code),
        Some(ErrorCode::InvalidProducerEpoch)
    );
    assert_eq!(offsets(&send_flush(&mut p, "c", 1)), vec![1]);
    let s = p.stats();
    assert_ne!(s.producer_id, first);
    assert_eq!((s.producer_epoch, s.epoch_bumps), (0, 1));
}

#[test]
fn the_delivery_timeout_bounds_resends() {
    let (mock, mut p) = mock_producer(ProducerConfig {
        delivery_timeout_ms: 300,
        ..idempotent(false)
    });
    mock.state
        .lock()
        .expect("lock")
        .refuse
        .extend(std::iter::repeat_n(ErrorCode::PartitionUnavailable, 1000));
    let started = std::time::Instant::now();
    let r = send_flush(&mut p, "a", 3);
    assert!(started.elapsed() < Duration::from_secs(3));
    for r in &r {
        let e = r.as_ref().expect_err("not delivered");
        assert_eq!(e.code(), Some(ErrorCode::PartitionUnavailable), "{e}");
        assert!(e.to_string().contains("not stored"), "{e}");
    }
    mock.state.lock().expect("lock").refuse.clear();
    assert_eq!(
        offsets(&send_flush(&mut p, "b", 1)),
        vec![0],
        "sequences given back"
    );
}

#[test]
fn idempotence_needs_an_acknowledgement() {
    let (_mock, mut p) = mock_producer(ProducerConfig {
        acks: Acks::None,
        ..idempotent(false)
    });
    let e = p
        .send(&ProducerRecord::new("t", b"x"))
        .expect_err("acks=none");
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
}

// ---------------------------------------------------------- cluster mode

/// Values stored on partition 0 of `t` in a mock cluster, in offset order.
fn cluster_values(c: &MockCluster) -> Vec<String> {
    let st = c.state.lock().expect("lock");
    let mut out = Vec::new();
    for f in &st.topics["t"][0] {
        for r in strom_flatbuffers::records(f).expect("records") {
            out.push(String::from_utf8_lossy(r.value.unwrap_or(b"")).into_owned());
        }
    }
    out
}

/// Every value of partition 0 of `t`, read with a consumer given `addrs`.
fn consume_all(addrs: &str, expected: usize) -> Vec<String> {
    let client = Client::connect_with(addrs, quick()).expect("connect consumer");
    let mut c = Consumer::new(client, ConsumerConfig::default());
    c.assign("t", 0, OffsetSpec::Earliest).expect("assign");
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while out.len() < expected && std::time::Instant::now() < deadline {
        for f in c.poll(Duration::from_millis(200)).expect("poll") {
            for r in f.records() {
                out.push(String::from_utf8_lossy(r.value.unwrap_or(b"")).into_owned());
            }
        }
    }
    out
}

fn tags(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{tag}-{i}")).collect()
}

/// Given only a follower, the client learns the nodes from the handshake,
/// creates the topic on the controller (after `NotController`), and sends
/// produce, list-offsets and fetch to the leader.
#[test]
fn a_client_given_a_follower_finds_the_controller_and_the_leader() {
    let cluster = MockCluster::start(3, 2);
    let client = Client::connect_with(&cluster.addrs[0], quick()).expect("connect");
    assert!(client.follows_leaders());
    assert_eq!(client.node_id(), 1);
    assert_eq!(client.cluster_view().node_ids(), vec![1, 2, 3]);
    let mut p = Producer::new(
        client,
        ProducerConfig {
            linger_ms: 60_000,
            ..Default::default()
        },
    );
    p.client()
        .create_topic("t", 1, &[])
        .expect("create on the controller");
    assert_eq!(p.client().node_id(), 2, "the main connection moved there");
    assert_eq!(offsets(&send_flush(&mut p, "a", 5)), vec![0, 1, 2, 3, 4]);
    assert_eq!(
        p.client()
            .list_offset("t", 0, OffsetSpec::Latest)
            .expect("latest"),
        Some(5)
    );
    assert_eq!(consume_all(&cluster.addrs[2], 5), tags("a", 5));
    let d = p.client().describe_topic_at_leaders("t").expect("describe");
    assert_eq!(
        (d.partitions[0].leader_node, d.partitions[0].high_watermark),
        (2, 5)
    );
}

/// The leader moves, then dies: an idempotent producer resends each
/// refused or lost batch to the new leader; every record stored once, in
/// order.
#[test]
fn an_idempotent_producer_follows_the_leader_through_a_move_and_a_death() {
    let cluster = MockCluster::start(3, 1);
    let client = Client::connect_with(&cluster.bootstrap(), quick()).expect("connect");
    let mut p = Producer::new(client, idempotent(false));
    p.client().create_topic("t", 1, &[]).expect("create");
    assert_eq!(offsets(&send_flush(&mut p, "a", 5)), vec![0, 1, 2, 3, 4]);
    cluster.set_leader(3);
    assert_eq!(offsets(&send_flush(&mut p, "b", 5)), vec![5, 6, 7, 8, 9]);
    assert!(p.stats().resends >= 1, "refused by node 1: {:?}", p.stats());
    // Node 3 dies with the next batch's answer lost; node 2 takes over.
    {
        let mut st = cluster.state.lock().expect("lock");
        st.lose_answers = 1;
    }
    let stopper = {
        let state = cluster.state.clone();
        std::thread::spawn(move || {
            // Once the lost answer is lost, the node is gone and, a moment
            // later, node 2 leads.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while state.lock().expect("lock").lose_answers > 0 {
                assert!(std::time::Instant::now() < deadline, "no produce came");
                std::thread::sleep(Duration::from_millis(1));
            }
            let mut st = state.lock().expect("lock");
            st.down.insert(3);
            st.leader = 0;
            st.epoch += 1;
            drop(st);
            std::thread::sleep(Duration::from_millis(100));
            let mut st = state.lock().expect("lock");
            st.leader = 2;
            st.epoch += 1;
        })
    };
    assert_eq!(
        offsets(&send_flush(&mut p, "c", 5)),
        vec![10, 11, 12, 13, 14],
        "the original offsets of the batch node 3 stored"
    );
    stopper.join().expect("stopper");
    assert!(p.stats().resends_found_stored >= 1, "{:?}", p.stats());
    assert_eq!(offsets(&send_flush(&mut p, "d", 2)), vec![15, 16]);
    let mut want = tags("a", 5);
    want.extend(tags("b", 5));
    want.extend(tags("c", 5));
    want.extend(tags("d", 2));
    assert_eq!(cluster_values(&cluster), want, "each record once, in order");
    assert_eq!(consume_all(&cluster.bootstrap(), want.len()), want);
}

/// Without resends a refused batch fails (nothing stored, not sent
/// again), and the producer's next batch goes to the new leader.
#[test]
fn a_plain_producer_reports_not_leader_once_and_then_follows() {
    let cluster = MockCluster::start(3, 1);
    let client = Client::connect_with(&cluster.bootstrap(), quick()).expect("connect");
    let mut p = Producer::new(
        client,
        ProducerConfig {
            linger_ms: 60_000,
            ..Default::default()
        },
    );
    p.client().create_topic("t", 1, &[]).expect("create");
    assert_eq!(offsets(&send_flush(&mut p, "a", 2)), vec![0, 1]);
    cluster.set_leader(2);
    for r in send_flush(&mut p, "b", 2) {
        let e = r.expect_err("refused");
        assert_eq!(e.code(), Some(ErrorCode::NotLeader), "{e}");
    }
    assert_eq!(offsets(&send_flush(&mut p, "c", 2)), vec![2, 3]);
    assert_eq!(p.stats().resends, 0);
    let mut want = tags("a", 2);
    want.extend(tags("c", 2));
    assert_eq!(cluster_values(&cluster), want);
}

/// A fetch and a list-offsets during an election wait for the new leader
/// instead of failing; a poll with no leader for `leader_wait_ms` fails.
#[test]
fn fetch_and_list_offsets_wait_out_an_election() {
    let cluster = MockCluster::start(3, 1);
    let client = Client::connect_with(&cluster.bootstrap(), quick()).expect("connect");
    let mut p = Producer::new(client, ProducerConfig::default());
    p.client().create_topic("t", 1, &[]).expect("create");
    assert_eq!(offsets(&send_flush(&mut p, "a", 3)), vec![0, 1, 2]);
    let mut c = Consumer::new(
        Client::connect_with(&cluster.bootstrap(), quick()).expect("connect"),
        ConsumerConfig {
            leader_wait_ms: 300,
            ..Default::default()
        },
    );
    c.assign("t", 0, OffsetSpec::Earliest).expect("assign");
    cluster.set_leader(0);
    let state = cluster.state.clone();
    let elect = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(150));
        let mut st = state.lock().expect("lock");
        st.leader = 3;
        st.epoch += 1;
    });
    let frames = c
        .poll(Duration::from_secs(2))
        .expect("poll through the election");
    elect.join().expect("elect");
    let got: usize = frames.iter().map(|f| f.records().count()).sum();
    assert_eq!(got, 3);
    assert_eq!(
        c.client()
            .list_offset("t", 0, OffsetSpec::Latest)
            .expect("latest"),
        Some(3)
    );
    // No leader at all: a poll reports it once leader_wait_ms has passed.
    cluster.set_leader(0);
    let started = std::time::Instant::now();
    let mut failed = None;
    while started.elapsed() < Duration::from_secs(3) {
        match c.poll(Duration::from_millis(100)) {
            Ok(f) => assert!(f.is_empty()),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let e = failed.expect("an error after leader_wait_ms");
    assert_eq!(e.code(), Some(ErrorCode::LeaderNotAvailable), "{e}");
    assert!(started.elapsed() >= Duration::from_millis(300));
}

/// The main connection's node dies: metadata calls move to another node.
#[test]
fn metadata_calls_move_to_a_live_node() {
    let cluster = MockCluster::start(3, 2);
    let mut client = Client::connect_with(&cluster.bootstrap(), quick()).expect("connect");
    assert_eq!(client.node_id(), 1);
    client.create_topic("t", 1, &[]).expect("create");
    cluster.state.lock().expect("lock").down.insert(2);
    cluster.state.lock().expect("lock").down.insert(1);
    let d = client.describe_topic("t").expect("described by node 3");
    assert_eq!(d.partitions.len(), 1);
    assert_eq!(client.node_id(), 3);
    // Pinned to one node, a client does not move.
    let mut pinned = Client::connect_with(&cluster.addrs[2], quick()).expect("connect");
    pinned.set_follow_leaders(false);
    let e = pinned
        .create_topic("u", 1, &[])
        .expect_err("node 3 is no controller");
    assert_eq!(e.code(), Some(ErrorCode::NotController), "{e}");
    assert!(Client::connect_with(
        &format!("{},{}", cluster.addrs[0], cluster.addrs[1]),
        quick()
    )
    .is_err());
}
