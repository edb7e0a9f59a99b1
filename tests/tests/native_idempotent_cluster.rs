//! Native idempotent producing in cluster mode ([`strom_tests::cluster`]:
//! three real `strom-server` nodes): a native frame stamped with a
//! producer id goes the way a Kafka idempotent batch goes there (proposed
//! under the partition's producer lane, recorded by the apply hook on
//! every replica), so a resend to a new leader after the old one was
//! SIGKILLed is answered with the original offsets and stored once; and a
//! leader that loses office with batches of one producer queued behind an
//! unfinished one refuses them as not leader, never as out of order.

use std::time::{Duration, Instant};
use strom_client::{Acks, Consumer, ConsumerConfig, ErrorCode, OffsetSpec};
use strom_flatbuffers::protocol::{
    ProduceBatch, ProduceRequest, ProduceResult, RequestBody, ResponseBody,
};
use strom_flatbuffers::{stamp_producer, BatchBuilder, RecordIn};
use strom_tests::cluster::{links_from, links_to, Cluster};
use strom_tests::faultproxy::Fault;

const TOPIC: &str = "idem";
const BUDGET: Duration = Duration::from_secs(90);
const RETRY_PAUSE_MS: u64 = 50;

/// A frame of `n` records `{tag}-{i}` stamped with the producer fields.
fn frame(tag: &str, n: usize, id: i64, epoch: i16, seq: i32) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    for i in 0..n {
        let v = format!("{tag}-{i}");
        b.push(&RecordIn {
            timestamp_ms: 1_700_000_000_000,
            key: None,
            value: Some(v.as_bytes()),
            headers: &[],
        });
    }
    let mut f = b.finish();
    stamp_producer(&mut f, id, epoch, seq);
    f
}

/// Sends `frame` (acks=all) to the leader among `among` until an answer
/// that is not "not the leader / no leader / not open", or the deadline;
/// the same bytes every time, as an idempotent producer resends.
fn produce(cluster: &Cluster, among: &[u64], frame: &[u8], deadline: Instant) -> ProduceResult {
    let body = RequestBody::Produce(ProduceRequest {
        acks: Acks::Durable,
        timeout_ms: 10_000,
        batches: vec![ProduceBatch {
            topic: TOPIC.into(),
            partition: 0,
            batch_len: frame.len() as u32,
        }],
    });
    let mut last = String::from("no leader");
    while Instant::now() < deadline {
        let answer = cluster
            .leader_among(among, TOPIC, 0)
            .and_then(|(leader, _)| cluster.client(leader))
            .map(|mut c| c.connection().call(&body, &[frame], 0));
        match answer {
            Some(Ok(r)) => match r.body {
                ResponseBody::Produce(mut p) => {
                    let res = p.results.remove(0);
                    let moving = matches!(
                        res.error,
                        ErrorCode::NotLeader
                            | ErrorCode::LeaderNotAvailable
                            | ErrorCode::PartitionUnavailable
                    );
                    if !moving {
                        return res;
                    }
                    last = format!("{:?}: {}", res.error, res.message);
                }
                other => panic!("unexpected {other:?}"),
            },
            Some(Err(e)) => last = e.to_string(),
            None => {}
        }
        std::thread::sleep(Duration::from_millis(RETRY_PAUSE_MS));
    }
    panic!("no answer to a produce before the deadline; last: {last}");
}

fn ok(r: &ProduceResult) -> (u64, u64) {
    assert_eq!(r.error, ErrorCode::None, "{}", r.message);
    (r.base_offset, r.last_offset)
}

#[test]
fn a_resend_to_a_new_leader_gets_the_original_offsets() {
    let mut cluster = Cluster::start_proxied();
    let deadline = Instant::now() + BUDGET;
    cluster.create_topic(TOPIC, 1, deadline);
    let all = cluster.running();
    let (leader, _) = cluster
        .wait_leader(&all, TOPIC, 0, deadline)
        .expect("a leader");
    let (id, epoch) = cluster
        .client(leader)
        .expect("connect")
        .init_producer_id(None)
        .expect("a producer id");
    let a = frame("a", 3, id, epoch, 0);
    let b = frame("b", 2, id, epoch, 3);
    let first = ok(&produce(&cluster, &all, &a, deadline));
    assert_eq!(ok(&produce(&cluster, &all, &a, deadline)), first, "resent");
    let second = ok(&produce(&cluster, &all, &b, deadline));
    assert!(second.0 > first.1);

    // The leader dies; the new one knows the producer from its log.
    let killed = cluster
        .leader_among(&all, TOPIC, 0)
        .map(|(l, _)| l)
        .expect("a leader");
    cluster.kill(killed);
    let rest: Vec<u64> = all.iter().copied().filter(|&n| n != killed).collect();
    assert_eq!(ok(&produce(&cluster, &rest, &b, deadline)), second);
    assert_eq!(ok(&produce(&cluster, &rest, &a, deadline)), first);
    let gap = produce(&cluster, &rest, &frame("gap", 1, id, epoch, 9), deadline);
    assert_eq!(gap.error, ErrorCode::OutOfOrderSequence, "{}", gap.message);
    let third = ok(&produce(
        &cluster,
        &rest,
        &frame("c", 1, id, epoch, 5),
        deadline,
    ));
    assert!(third.0 > second.1);

    // Each record once in the new leader's log.
    let (leader, _) = cluster
        .wait_leader(&rest, TOPIC, 0, deadline)
        .expect("leader");
    let mut consumer = Consumer::new(
        cluster.client(leader).expect("connect"),
        ConsumerConfig {
            max_wait_ms: 50,
            ..Default::default()
        },
    );
    consumer
        .assign(TOPIC, 0, OffsetSpec::Earliest)
        .expect("assign");
    let mut values = Vec::new();
    while consumer.position(TOPIC, 0).unwrap_or(0) <= third.1 {
        assert!(Instant::now() < deadline, "read stuck at {values:?}");
        for f in consumer.poll(Duration::from_millis(200)).expect("poll") {
            for r in f.records() {
                values.push(String::from_utf8_lossy(r.value.unwrap_or_default()).into_owned());
            }
        }
    }
    assert_eq!(values, ["a-0", "a-1", "a-2", "b-0", "b-1", "c-0"]);
    cluster.assert_no_panic("native idempotent cluster");
}

/// The story (`cluster_clients.rs`, librdkafka with its debug log): a
/// leader lost office with three batches of one idempotent producer in
/// flight. The first was answered `NotLeader` "outcome unknown" (its entry
/// was later committed by the next leader); the two queued behind it in
/// the producer's lane were then checked against state without it and
/// refused `OutOfOrderSequence`. librdkafka took that for a gap, bumped its
/// epoch and resent the first batch under the new epoch: stored twice. Now
/// a batch's leadership is checked again when its turn comes, so a deposed
/// leader refuses the queued ones as not leader (nothing written), which
/// librdkafka resends under the same epoch.
#[test]
fn a_deposed_leader_refuses_queued_batches_as_not_leader_not_out_of_order() {
    let cluster = Cluster::start_proxied();
    let deadline = Instant::now() + BUDGET;
    cluster.create_topic(TOPIC, 1, deadline);
    let all = cluster.running();
    let (leader, _) = cluster
        .wait_leader(&all, TOPIC, 0, deadline)
        .expect("a leader");
    let mut client = cluster.client_with(leader, 30_000).expect("connect");
    let (id, epoch) = client.init_producer_id(None).expect("a producer id");
    // Known to the leader (the first batch of an unknown producer is
    // accepted whatever its sequence).
    ok(&produce(
        &cluster,
        &all,
        &frame("a", 1, id, epoch, 0),
        deadline,
    ));
    // The leader is cut off: its proposals cannot commit, and it steps
    // down once it has not heard from a majority for an election timeout.
    let proxy = cluster.proxy();
    let links: Vec<String> = links_from(leader)
        .into_iter()
        .chain(links_to(leader))
        .collect();
    proxy.set_many(&links, Fault::Blackhole).expect("links");
    let conn = client.connection();
    let mut sent = Vec::new();
    for (i, tag) in ["b", "c", "d"].into_iter().enumerate() {
        let f = frame(tag, 1, id, epoch, 1 + i as i32);
        let body = RequestBody::Produce(ProduceRequest {
            acks: Acks::Durable,
            timeout_ms: 20_000,
            batches: vec![ProduceBatch {
                topic: TOPIC.into(),
                partition: 0,
                batch_len: f.len() as u32,
            }],
        });
        sent.push(conn.send(&body, &[&f]).expect("send"));
        if i == 0 {
            // "b" holds the lane (proposed, waiting) before the others come.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let answers: Vec<ProduceResult> = sent
        .into_iter()
        .map(
            |cid| match conn.recv(cid, 20_000).expect("an answer").body {
                ResponseBody::Produce(mut p) => p.results.remove(0),
                other => panic!("unexpected {other:?}"),
            },
        )
        .collect();
    proxy.heal_all();
    let first = &answers[0];
    assert!(
        matches!(first.error, ErrorCode::NotLeader | ErrorCode::Timeout),
        "the batch in flight: {:?} {}",
        first.error,
        first.message
    );
    for (tag, r) in ["c", "d"].into_iter().zip(&answers[1..]) {
        assert!(
            matches!(
                r.error,
                ErrorCode::NotLeader | ErrorCode::LeaderNotAvailable
            ),
            "{tag}, queued behind b on a leader that lost office: {:?} {}",
            r.error,
            r.message
        );
    }
    cluster.assert_no_panic("deposed leader");
}
