//! OffsetForLeaderEpoch (KIP-101, KIP-320) over the Kafka wire, against real
//! servers: a single node (one leader epoch, 0, for a partition's life) and
//! a 3-node cluster whose epochs are Raft terms, through a leader kill.
//!
//! The story: Kafka consumers that remember the leader epoch of their
//! position ask, after a leader change, where that epoch ended, to learn
//! whether the log they read was truncated since; and a request naming an
//! older current epoch than the leader's is fenced. Strom did not serve the
//! API, so clients could not tell.

mod kafka_common;
mod kafka_wire;

use kafka_common::{temp_dir, KafkaServer};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_wire::{produce_request, produce_results, record_batch, WireClient};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use strom_tests::cluster::Cluster;

const VERSION: i16 = 4;
const NONE: i16 = 0;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const NOT_LEADER_OR_FOLLOWER: i16 = 6;
const FENCED_LEADER_EPOCH: i16 = 74;
const UNKNOWN_LEADER_EPOCH: i16 = 75;

/// (error, leader epoch, end offset) for one partition.
fn ask(
    c: &mut WireClient,
    version: i16,
    topic: &str,
    partition: i32,
    current: i32,
    epoch: i32,
) -> (i16, i32, i64) {
    let req = OffsetForLeaderEpochRequest::default()
        .with_replica_id((-1).into())
        .with_topics(vec![OffsetForLeaderTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.into())))
            .with_partitions(vec![OffsetForLeaderPartition::default()
                .with_partition(partition)
                .with_current_leader_epoch(current)
                .with_leader_epoch(epoch)])]);
    let r = c.call(version, &req);
    assert_eq!(r.topics.len(), 1);
    assert_eq!(r.topics[0].partitions.len(), 1);
    let p = &r.topics[0].partitions[0];
    assert_eq!(p.partition, partition);
    (p.error_code, p.leader_epoch, p.end_offset)
}

fn produce(c: &mut WireClient, topic: &str, tag: &str, n: usize) -> i64 {
    let r = c.call(
        9,
        &produce_request(-1, 10_000, &[(topic, 0, record_batch(tag, n, None))]),
    );
    let res = produce_results(&r);
    assert_eq!(res[0].2, NONE, "produce: {res:?}");
    res[0].3
}

#[test]
fn a_single_node_has_epoch_zero_and_fences_other_current_epochs() {
    let server = KafkaServer::start(1, temp_dir("kafka-epoch"));
    let mut c = WireClient::connect(server.kafka);
    let topic = "epochs";
    c.create_topic(topic, 1);
    produce(&mut c, topic, "a", 5);
    for v in 0..=VERSION {
        // Version 0 answers the end offset alone (no epoch field).
        let epoch = if v == 0 { -1 } else { 0 };
        assert_eq!(ask(&mut c, v, topic, 0, -1, 0), (NONE, epoch, 5), "v{v}");
        assert_eq!(
            ask(&mut c, v, topic, 0, -1, 3),
            (NONE, -1, -1),
            "v{v}: later"
        );
    }
    // The current epoch is checked from version 2 on (earlier versions do
    // not carry it).
    assert_eq!(ask(&mut c, VERSION, topic, 0, 0, 0), (NONE, 0, 5));
    assert_eq!(
        ask(&mut c, VERSION, topic, 0, 1, 0).0,
        UNKNOWN_LEADER_EPOCH,
        "a current epoch newer than the leader's"
    );
    assert_eq!(
        ask(&mut c, VERSION, "no-such-topic", 0, -1, 0).0,
        UNKNOWN_TOPIC_OR_PARTITION
    );
    assert_eq!(
        ask(&mut c, VERSION, topic, 7, -1, 0).0,
        UNKNOWN_TOPIC_OR_PARTITION
    );
    assert_eq!(
        ask(&mut c, VERSION, topic, -1, -1, 0).0,
        UNKNOWN_TOPIC_OR_PARTITION
    );
}

/// The partition's leader id and leader epoch as node `via` tells them.
fn leader(via: SocketAddr, topic: &str) -> Option<(i32, i32)> {
    let mut c = WireClient::connect(via);
    let req = MetadataRequest::default().with_topics(Some(vec![MetadataRequestTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(topic.into()))))]));
    let r = c.call_within(12, &req, Duration::from_secs(5)).ok()?;
    let p = r.topics.first()?.partitions.first()?;
    (p.error_code == NONE && p.leader_id.0 >= 0).then_some((p.leader_id.0, p.leader_epoch))
}

/// Waits (bounded) until a leader other than `not` is known with an epoch
/// above `above`; its node id and epoch.
fn wait_leader(cluster: &Cluster, topic: &str, not: Option<i32>, above: i32) -> (u64, i32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        for id in cluster.running() {
            if let Some((l, e)) = leader(cluster.addrs(id).kafka, topic) {
                if Some(l) != not && e > above && cluster.running().contains(&(l as u64)) {
                    return (l as u64, e);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no new leader of {topic} within 60 s");
}

#[test]
fn a_cluster_answers_from_its_terms_through_a_leader_kill() {
    let mut cluster = Cluster::start();
    let topic = "epochs";
    cluster.create_topic(topic, 1, Instant::now() + Duration::from_secs(60));
    let (first, e1) = wait_leader(&cluster, topic, None, 0);
    assert!(e1 >= 1, "Raft terms start at 1: {e1}");
    let mut c = WireClient::connect(cluster.addrs(first).kafka);
    let last_of_e1 = produce(&mut c, topic, "a", 5) + 4;
    let end_e1 = last_of_e1 + 1;
    let (err, epoch, end) = ask(&mut c, VERSION, topic, 0, e1, e1);
    assert_eq!((err, epoch), (NONE, e1));
    assert!(
        end >= end_e1,
        "epoch {e1} ends at {end}, before its record {last_of_e1}"
    );
    assert_eq!(
        ask(&mut c, VERSION, topic, 0, e1 - 1, e1).0,
        FENCED_LEADER_EPOCH
    );
    assert_eq!(
        ask(&mut c, VERSION, topic, 0, e1 + 1, e1).0,
        UNKNOWN_LEADER_EPOCH
    );
    assert_eq!(ask(&mut c, VERSION, topic, 0, e1, e1 + 1), (NONE, -1, -1));
    // A follower does not answer for the partition.
    let follower = cluster
        .running()
        .into_iter()
        .find(|&id| id != first)
        .expect("3 nodes");
    let mut f = WireClient::connect(cluster.addrs(follower).kafka);
    assert_eq!(
        ask(&mut f, VERSION, topic, 0, -1, e1).0,
        NOT_LEADER_OR_FOLLOWER
    );

    // A new leader in a later term: epoch e1 ended where e2 began, after
    // every record acknowledged in e1.
    cluster.kill(first);
    let (second, e2) = wait_leader(&cluster, topic, Some(first as i32), e1);
    let mut c = WireClient::connect(cluster.addrs(second).kafka);
    let deadline = Instant::now() + Duration::from_secs(60);
    let base_in_e2 = loop {
        let r = c.call(
            9,
            &produce_request(-1, 10_000, &[(topic, 0, record_batch("b", 3, None))]),
        );
        let res = produce_results(&r);
        if res[0].2 == NONE {
            break res[0].3;
        }
        assert!(
            Instant::now() < deadline,
            "no produce in epoch {e2}: {res:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let (err, epoch, e1_ended) = ask(&mut c, VERSION, topic, 0, e2, e1);
    assert_eq!((err, epoch), (NONE, e1), "epoch {e1} is held");
    assert!(
        e1_ended >= end_e1 && e1_ended <= base_in_e2,
        "epoch {e1} ended at {e1_ended}: after its records (..{end_e1}) and before e2's first record ({base_in_e2})"
    );
    let (err, epoch, end) = ask(&mut c, VERSION, topic, 0, e2, e2);
    assert_eq!((err, epoch), (NONE, e2));
    assert!(
        end >= base_in_e2 + 3,
        "the latest epoch ends at the high watermark: {end}"
    );
    assert_eq!(
        ask(&mut c, VERSION, topic, 0, e1, e1).0,
        FENCED_LEADER_EPOCH
    );
    // An epoch between the two that no leader wrote in: the floor's end.
    if e2 > e1 + 1 {
        let (err, epoch, end_between) = ask(&mut c, VERSION, topic, 0, e2, e1 + 1);
        assert_eq!((err, epoch), (NONE, e1));
        assert_eq!(end_between, e1_ended);
    }
}
