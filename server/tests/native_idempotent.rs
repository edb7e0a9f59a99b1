//! Idempotent producing over the native protocol, by hand, against a real
//! server: frames carry a producer id, epoch and base sequence in their
//! header (`docs/format.md`), InitProducerId hands out ids, and the owner
//! checks every batch with the same rules as Kafka's (`producers.rs`):
//! a resent batch is answered with its original offsets and stored once,
//! a gap is refused as out of order, an old epoch is fenced. Kafka and
//! native producers share one allocator and one producer state per
//! partition.
//!
//! The story: native frames always had the header fields, but the native
//! edge passed every batch on as "not idempotent", so a native client that
//! resent a batch after a lost answer stored it twice.

mod common;
mod kafka_common;
mod kafka_wire;

use common::{batch, values, Client};
use kafka_common::{temp_dir, KafkaServer};
use kafka_wire::{produce_request, produce_results, record_batch, Idempotent, WireClient};
use strom_flatbuffers::protocol::*;
use strom_flatbuffers::stamp_producer;

const INIT_PRODUCER_ID_VERSION: i16 = 4;
const PRODUCE_VERSION: i16 = kafka_wire::PRODUCE_VERSION;

fn native(server: &KafkaServer) -> Client {
    let mut c = Client::connect(server.native);
    c.handshake();
    c
}

fn init(c: &mut Client, producer_id: i64, producer_epoch: i16) -> InitProducerIdResponse {
    match c.call(RequestBody::InitProducerId(InitProducerIdRequest {
        producer_id,
        producer_epoch,
        ..Default::default()
    })) {
        ResponseBody::InitProducerId(r) => r,
        other => panic!("unexpected {other:?}"),
    }
}

/// A frame of `n` records `{tag}-{i}` stamped with the producer fields.
fn frame(tag: &str, n: usize, id: i64, epoch: i16, seq: i32) -> Vec<u8> {
    let mut f = batch(tag, n);
    stamp_producer(&mut f, id, epoch, seq);
    f
}

/// One batch on partition 0 of `topic`; its result.
fn produce_one(c: &mut Client, topic: &str, acks: Acks, f: Vec<u8>) -> ProduceResult {
    let mut r = c.produce(topic, acks, &[(0, f)]).expect("answered");
    assert_eq!(r.results.len(), 1);
    r.results.remove(0)
}

fn ok(r: &ProduceResult) -> (u64, u64) {
    assert_eq!(r.error, ErrorCode::None, "{}", r.message);
    (r.base_offset, r.last_offset)
}

/// Every value stored on partition 0, in offset order.
fn stored(c: &mut Client, topic: &str) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    loop {
        let (res, trailer) = c.fetch(topic, 0, out.len() as u64, 0);
        assert_eq!(res.error, ErrorCode::None, "{}", res.message);
        let got = values(&trailer);
        let before = out.len();
        out.extend(got.into_iter().filter(|(o, _)| *o >= before as u64));
        if out.len() as u64 >= res.high_watermark || out.len() == before {
            return out;
        }
    }
}

#[test]
fn init_producer_id_allocates_bumps_and_refuses_transactions() {
    let server = KafkaServer::start(1, temp_dir("nidem-init"));
    let mut c = native(&server);
    let a = init(&mut c, -1, -1);
    let b = init(&mut c, -1, -1);
    assert_eq!(a.error, ErrorCode::None, "{}", a.message);
    assert!(a.producer_id >= 0 && b.producer_id >= 0);
    assert_ne!(a.producer_id, b.producer_id);
    assert_eq!((a.producer_epoch, b.producer_epoch), (0, 0));
    // An epoch bump keeps the id.
    let bumped = init(&mut c, a.producer_id, 0);
    assert_eq!(
        (bumped.producer_id, bumped.producer_epoch),
        (a.producer_id, 1)
    );
    // Transactions are refused with a clear message, and no id.
    let tx = match c.call(RequestBody::InitProducerId(InitProducerIdRequest {
        transactional_id: "tx-1".into(),
        ..Default::default()
    })) {
        ResponseBody::InitProducerId(r) => r,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(tx.error, ErrorCode::InvalidRequest);
    assert!(tx.message.contains("transactions"), "{}", tx.message);
    assert_eq!(tx.producer_id, -1);
    // Kafka's InitProducerId draws from the same allocator.
    let mut k = WireClient::connect(server.kafka);
    let kr = k.call(
        INIT_PRODUCER_ID_VERSION,
        &kafka_protocol::messages::InitProducerIdRequest::default()
            .with_producer_id(kafka_protocol::messages::ProducerId(-1))
            .with_producer_epoch(-1),
    );
    assert_eq!(kr.error_code, 0);
    let kid = kr.producer_id.0;
    assert!(kid >= 0 && kid != a.producer_id && kid != b.producer_id);
    let c2 = init(&mut c, -1, -1);
    assert_ne!(c2.producer_id, kid);
}

#[test]
fn a_resent_batch_gets_its_original_offsets_and_is_stored_once() {
    let server = KafkaServer::start(1, temp_dir("nidem-dup"));
    let mut c = native(&server);
    let topic = "dups";
    c.create_topic(topic, 1);
    let p = init(&mut c, -1, -1);
    let (id, epoch) = (p.producer_id, p.producer_epoch);
    let mut seq = 0;
    for acks in [Acks::Leader, Acks::Durable] {
        let start = stored(&mut c, topic).len() as u64;
        let first = frame("a", 5, id, epoch, seq);
        let (base, last) = ok(&produce_one(&mut c, topic, acks, first.clone()));
        assert_eq!((base, last), (start, start + 4));
        // A plain producer's batch in between.
        ok(&produce_one(&mut c, topic, acks, batch("plain", 3)));
        // The same frame again, byte for byte: the original offsets.
        let again = produce_one(&mut c, topic, acks, first.clone());
        assert_eq!(ok(&again), (base, last), "{acks:?}");
        // Twice in one request: both answered with the original offsets.
        let r = c
            .produce(topic, acks, &[(0, first.clone()), (0, first)])
            .expect("answered");
        for res in &r.results {
            assert_eq!(ok(res), (base, last));
        }
        // The next batch continues the sequence.
        let next = frame("b", 2, id, epoch, seq + 5);
        assert_eq!(
            ok(&produce_one(&mut c, topic, acks, next)),
            (start + 8, start + 9)
        );
        seq += 7;
    }
    let all = stored(&mut c, topic);
    assert_eq!(all.len(), 20, "two rounds of 5 + 3 + 2 records, once each");
    let firsts = all.iter().filter(|(_, v)| v == "a-0").count();
    assert_eq!(firsts, 2, "one a-0 per round: {all:?}");
}

#[test]
fn gaps_are_refused_old_epochs_fenced_and_bad_fields_refused() {
    let server = KafkaServer::start(1, temp_dir("nidem-refuse"));
    let mut c = native(&server);
    let topic = "refusals";
    c.create_topic(topic, 1);
    let p = init(&mut c, -1, -1);
    let id = p.producer_id;
    ok(&produce_one(
        &mut c,
        topic,
        Acks::Leader,
        frame("a", 5, id, 0, 0),
    ));
    // A gap: sequence 10 where 5 is next. Nothing is written.
    let gap = produce_one(&mut c, topic, Acks::Leader, frame("gap", 1, id, 0, 10));
    assert_eq!(gap.error, ErrorCode::OutOfOrderSequence, "{}", gap.message);
    assert!(
        gap.message.contains("expected sequence 5"),
        "{}",
        gap.message
    );
    assert_eq!(
        ok(&produce_one(
            &mut c,
            topic,
            Acks::Leader,
            frame("b", 1, id, 0, 5)
        )),
        (5, 5)
    );
    // A bump: the new epoch starts at 0, and the old one is fenced.
    let bumped = init(&mut c, id, 0);
    assert_eq!(bumped.producer_epoch, 1);
    let late = produce_one(&mut c, topic, Acks::Leader, frame("c", 1, id, 1, 3));
    assert_eq!(
        late.error,
        ErrorCode::OutOfOrderSequence,
        "{}",
        late.message
    );
    assert_eq!(
        ok(&produce_one(
            &mut c,
            topic,
            Acks::Leader,
            frame("c", 1, id, 1, 0)
        )),
        (6, 6)
    );
    let old = produce_one(&mut c, topic, Acks::Leader, frame("old", 1, id, 0, 6));
    assert_eq!(
        old.error,
        ErrorCode::InvalidProducerEpoch,
        "{}",
        old.message
    );
    // Fields a producer may not send: refused with a clear message.
    for (pid, epoch, seq, what) in [
        (id, -1, 0, "epoch"),
        (id, 1, -1, "sequence"),
        (-7, 0, 0, "producer id"),
    ] {
        let r = produce_one(
            &mut c,
            topic,
            Acks::Leader,
            frame("bad", 1, pid, epoch, seq),
        );
        assert_eq!(r.error, ErrorCode::InvalidRequest, "{what}: {}", r.message);
        assert!(r.message.contains(what), "{what}: {}", r.message);
    }
    // A damaged header is never taken for a duplicate: it is corrupt.
    let mut damaged = frame("c", 1, id, 1, 0);
    damaged[60] ^= 1;
    let r = produce_one(&mut c, topic, Acks::Leader, damaged);
    assert_eq!(r.error, ErrorCode::CorruptBatch, "{}", r.message);
    let values: Vec<String> = stored(&mut c, topic).into_iter().map(|(_, v)| v).collect();
    assert_eq!(values, ["a-0", "a-1", "a-2", "a-3", "a-4", "b-0", "c-0"]);
}

#[test]
fn native_and_kafka_producers_share_one_partition_and_one_set_of_rules() {
    let server = KafkaServer::start(1, temp_dir("nidem-kafka"));
    let mut c = native(&server);
    let mut k = WireClient::connect(server.kafka);
    let topic = "mixed";
    c.create_topic(topic, 1);
    let native_id = init(&mut c, -1, -1).producer_id;
    let kafka_id = k
        .call(
            INIT_PRODUCER_ID_VERSION,
            &kafka_protocol::messages::InitProducerIdRequest::default()
                .with_producer_id(kafka_protocol::messages::ProducerId(-1))
                .with_producer_epoch(-1),
        )
        .producer_id
        .0;
    assert_ne!(native_id, kafka_id);
    let kafka_send = |k: &mut WireClient, tag: &str, n: usize, id: i64, seq: i32| {
        let b = record_batch(
            tag,
            n,
            Some(Idempotent {
                producer_id: id,
                epoch: 0,
                first_seq: seq,
            }),
        );
        let resp = k.call(
            PRODUCE_VERSION,
            &produce_request(-1, 10_000, &[(topic, 0, b)]),
        );
        let r = produce_results(&resp);
        assert_eq!(r.len(), 1);
        (r[0].2, r[0].3)
    };
    // Interleaved: native 0..4, Kafka 0..3, native 5..9, Kafka 4..7.
    let n1 = frame("n1", 5, native_id, 0, 0);
    assert_eq!(
        ok(&produce_one(&mut c, topic, Acks::Durable, n1.clone())),
        (0, 4)
    );
    assert_eq!(kafka_send(&mut k, "k1", 4, kafka_id, 0), (0, 5));
    let n2 = frame("n2", 5, native_id, 0, 5);
    assert_eq!(
        ok(&produce_one(&mut c, topic, Acks::Durable, n2.clone())),
        (9, 13)
    );
    assert_eq!(kafka_send(&mut k, "k2", 4, kafka_id, 4), (0, 14));
    // Each one's retry is a duplicate with its own offsets.
    assert_eq!(ok(&produce_one(&mut c, topic, Acks::Durable, n2)), (9, 13));
    assert_eq!(kafka_send(&mut k, "k2", 4, kafka_id, 4), (0, 14));
    assert_eq!(ok(&produce_one(&mut c, topic, Acks::Durable, n1)), (0, 4));
    // One state per producer id whatever the protocol: a Kafka batch that
    // repeats the native producer's first batch is its duplicate, and one
    // that continues its sequence is appended.
    assert_eq!(kafka_send(&mut k, "n1", 5, native_id, 0), (0, 0));
    assert_eq!(kafka_send(&mut k, "n3", 4, native_id, 10), (0, 18));
    let gap = kafka_send(&mut k, "gap", 1, native_id, 40);
    assert_eq!(gap.0, 45, "Kafka's OUT_OF_ORDER_SEQUENCE_NUMBER");
    let all = stored(&mut c, topic);
    assert_eq!(
        all.len(),
        22,
        "5 + 4 + 5 + 4 + 4 records, once each: {all:?}"
    );
}

/// Like [`frame`], with records stamped now (a producer whose last batch
/// is a day old expires at the next rebuild, as in Kafka).
fn fresh_frame(tag: &str, n: usize, id: i64, epoch: i16, seq: i32) -> Vec<u8> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64;
    let mut b = strom_flatbuffers::BatchBuilder::new();
    for i in 0..n {
        let (k, v) = (format!("k{i}"), format!("{tag}-{i}"));
        b.push(&strom_flatbuffers::RecordIn {
            timestamp_ms: now_ms,
            key: Some(k.as_bytes()),
            value: Some(v.as_bytes()),
            headers: &[("h", b"1")],
        });
    }
    let mut f = b.finish();
    stamp_producer(&mut f, id, epoch, seq);
    f
}

/// Offsets of the producer-state snapshot files of `topic`'s partition 0.
fn snapshot_offsets(server: &KafkaServer, topic: &str) -> Vec<u64> {
    let dir = server.data_dir.join("topics").join(topic).join("0");
    let mut out: Vec<u64> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".snapshot")?.parse().ok()
        })
        .collect();
    out.sort_unstable();
    out
}

/// Polls (bounded) until `topic` has a snapshot file, or gives up.
fn wait_for_snapshot(server: &KafkaServer, topic: &str, within: std::time::Duration) -> Vec<u64> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let got = snapshot_offsets(server, topic);
        if !got.is_empty() || std::time::Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Under acks=leader load the running server never forces an fdatasync to
/// write a producer-state snapshot (one per snapshot put the disk's flush
/// into acks=leader tails): a snapshot that falls due is taken in memory
/// and written once a roll has made the log durable past it. It then
/// bounds the replay of an unclean restart, after which a resent batch is
/// still answered with its original offsets.
#[test]
fn acks_leader_snapshots_wait_for_a_roll_and_survive_a_kill() {
    let mut server = KafkaServer::start(1, temp_dir("nidem-snap"));
    let mut c = native(&server);
    let topic = "snaps";
    match c.call(RequestBody::CreateTopics(CreateTopicsRequest {
        topics: vec![CreateTopic {
            name: topic.into(),
            partitions: 1,
            configs: vec![("segment.bytes".into(), (64u32 << 10).to_string())],
        }],
    })) {
        ResponseBody::CreateTopics(r) => assert_eq!(r.results[0].error, ErrorCode::None),
        other => panic!("unexpected {other:?}"),
    }
    let p = init(&mut c, -1, -1);
    let (id, epoch) = (p.producer_id, p.producer_epoch);
    const RECORDS: usize = 200;
    let mut seq = 0;
    let mut last: (Vec<u8>, (u64, u64)) = (Vec::new(), (0, 0));
    // 200 records of about 80 bytes: a frame is over a fifth of a segment,
    // so at most four fit in one and ten roll the 64 KiB segment twice.
    let produce = |c: &mut Client, seq: &mut i32, last: &mut (Vec<u8>, (u64, u64))| {
        for _ in 0..10 {
            let f = fresh_frame("s", RECORDS, id, epoch, *seq);
            assert!(f.len() > 13_200, "frame of {} bytes", f.len());
            let offsets = ok(&produce_one(c, topic, Acks::Leader, f.clone()));
            *last = (f, offsets);
            *seq += RECORDS as i32;
        }
    };
    // The rolls make a snapshot due; it is taken at the high watermark
    // (the end of these batches), which nothing has made durable: none may
    // be written.
    produce(&mut c, &mut seq, &mut last);
    let taken_at = last.1 .1 + 1;
    let early = wait_for_snapshot(&server, topic, std::time::Duration::from_millis(2_500));
    assert!(early.is_empty(), "a snapshot was forced durable: {early:?}");
    // The next rolls sync closed segments past it: now it is written.
    produce(&mut c, &mut seq, &mut last);
    let written = wait_for_snapshot(&server, topic, std::time::Duration::from_secs(10));
    assert_eq!(
        written,
        vec![taken_at],
        "the snapshot taken after the first batches, once rolls made it durable"
    );
    // An unclean restart: the resent last batch is still a duplicate.
    let (frame_again, offsets) = last.clone();
    server.kill_and_restart();
    let mut c = native(&server);
    let again = produce_one(&mut c, topic, Acks::Durable, frame_again);
    assert_eq!(ok(&again), offsets, "the resent batch after kill -9");
    let next = fresh_frame("t", 1, id, epoch, seq);
    assert_eq!(
        ok(&produce_one(&mut c, topic, Acks::Durable, next)).0,
        offsets.1 + 1
    );
}
