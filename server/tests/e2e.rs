//! End-to-end tests against the real `strom-server` binary on loopback.

mod common;

use common::*;
use std::io::Write;
use std::time::{Duration, Instant};
use strom_flatbuffers::protocol::*;
use strom_flatbuffers::FRAME_HEADER_BYTES;

#[test]
fn produce_all_acks_and_fetch_back_byte_for_byte() {
    let server = Server::start(2, temp_dir("acks"));
    let mut c = server.client();
    c.create_topic("t", 2);
    let b0 = batch("a", 10);
    let b1 = batch("b", 5);
    let r = c
        .produce("t", Acks::Leader, &[(0, b0.clone()), (1, b1.clone())])
        .expect("answer");
    assert_eq!(r.results.len(), 2);
    assert!(
        r.results.iter().all(|x| x.error == ErrorCode::None),
        "{r:?}"
    );
    assert_eq!((r.results[0].base_offset, r.results[0].last_offset), (0, 9));
    assert_eq!((r.results[1].base_offset, r.results[1].last_offset), (0, 4));
    let r = c
        .produce("t", Acks::Durable, &[(0, batch("c", 3))])
        .expect("answer");
    assert_eq!(r.results[0].error, ErrorCode::None);
    assert_eq!(r.results[0].base_offset, 10);
    assert!(c.produce("t", Acks::None, &[(0, batch("d", 2))]).is_none());
    // acks=None has no answer: the next request's answer comes first.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (res, trailer) = loop {
        let (res, trailer) = c.fetch("t", 0, 0, 0);
        if res.high_watermark == 15 || Instant::now() > deadline {
            break (res, trailer);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(res.error, ErrorCode::None, "{}", res.message);
    assert_eq!(res.high_watermark, 15);
    let got = values(&trailer);
    assert_eq!(got.len(), 15);
    assert_eq!(got[0], (0, "a-0".to_owned()));
    assert_eq!(got[10], (10, "c-0".to_owned()));
    assert_eq!(got[14], (14, "d-1".to_owned()));
    // The stored payload is the producer's, byte for byte.
    let first = frames(&trailer).next().expect("frame").expect("ok");
    assert_eq!(&first[FRAME_HEADER_BYTES..], &b0[FRAME_HEADER_BYTES..]);
    let (res, trailer) = c.fetch("t", 1, 0, 0);
    assert_eq!(res.high_watermark, 5);
    assert_eq!(&trailer[FRAME_HEADER_BYTES..], &b1[FRAME_HEADER_BYTES..]);
}

#[test]
fn long_poll_wakes_on_new_data() {
    let server = Server::start(2, temp_dir("poll"));
    let mut c = server.client();
    c.create_topic("lp", 2);
    let addr = server.native;
    let waiter = std::thread::spawn(move || {
        let mut c = Client::connect(addr);
        c.handshake();
        let t0 = Instant::now();
        let (res, trailer) = c.fetch("lp", 1, 0, 10_000);
        (t0.elapsed(), res, values(&trailer))
    });
    std::thread::sleep(Duration::from_millis(300));
    c.produce("lp", Acks::Leader, &[(1, batch("x", 2))])
        .expect("answer");
    let (elapsed, res, vals) = waiter.join().expect("waiter");
    assert_eq!(res.error, ErrorCode::None);
    assert_eq!(vals.len(), 2, "woke with the new records");
    assert!(
        elapsed < Duration::from_secs(5),
        "woke early, not at max_wait ({elapsed:?})"
    );
    // With no data the wait ends at max_wait_ms with nothing.
    let t0 = Instant::now();
    let (res, trailer) = c.fetch("lp", 0, 0, 300);
    assert!(t0.elapsed() >= Duration::from_millis(250));
    assert_eq!(res.error, ErrorCode::None);
    assert!(trailer.is_empty());
}

/// The sum over shards of the `strom_long_poll_waits` gauge.
fn live_waits(server: &Server) -> u64 {
    let page = server.http_get("/metrics");
    let found: Vec<u64> = page
        .lines()
        .filter(|l| l.starts_with("strom_long_poll_waits{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(
        !found.is_empty(),
        "no strom_long_poll_waits series:\n{page}"
    );
    found.iter().sum()
}

/// The story: a fetch over partitions of both shards long-polls on each
/// shard; once one shard's wait answered it, the other shard's wait used to
/// run on until its `max_wait_ms`, holding listeners that every append to
/// its partitions woke. Now the fetch cancels the waits it no longer needs.
#[test]
fn long_poll_waits_end_when_their_fetch_is_answered() {
    let server = Server::start(2, temp_dir("orphan"));
    let mut c = server.client();
    c.create_topic("o", 4);
    let addr = server.native;
    let waiter = std::thread::spawn(move || {
        let mut c = Client::connect(addr);
        c.handshake();
        let a = c.call_with(
            RequestBody::Fetch(FetchRequest {
                max_wait_ms: 20_000,
                min_bytes: 1,
                max_bytes: 1 << 20,
                partitions: (0..4)
                    .map(|p| FetchPartition {
                        topic: "o".into(),
                        partition: p,
                        offset: 0,
                        partition_max_bytes: 1 << 20,
                    })
                    .collect(),
                read_committed: false,
            }),
            &[],
        );
        match a.body {
            ResponseBody::Fetch(_) => values(&a.trailer),
            other => panic!("unexpected {other:?}"),
        }
    });
    // Both shards own partitions of "o" (placement spreads them): one wait
    // on each.
    let deadline = Instant::now() + Duration::from_secs(10);
    while live_waits(&server) < 2 {
        assert!(
            Instant::now() < deadline,
            "the fetch never waited on both shards"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    c.produce("o", Acks::Leader, &[(0, batch("w", 1))])
        .expect("answer");
    let got = waiter.join().expect("waiter");
    assert_eq!(got.len(), 1, "the fetch woke with the new record");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let live = live_waits(&server);
        if live == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{live} wait(s) still running 5 s after their fetch was answered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The story: deleting a topic removed its directory with a blocking call
/// on the shard's thread and ignored a failure, so a directory left behind
/// was never reported. Now the removal runs off the reactor and a failure
/// reaches the log and `strom_background_errors_total`.
#[test]
fn a_topic_directory_that_cannot_be_removed_is_reported() {
    let server = Server::start(1, temp_dir("rmdir"));
    let mut c = server.client();
    c.create_topic("gone", 1);
    // A stray file keeps the topic's directory from being removed.
    let stray = server.data_dir.join("topics").join("gone").join("stray");
    std::fs::write(&stray, b"not ours").expect("write stray file");
    match c.call(RequestBody::DeleteTopics(DeleteTopicsRequest {
        names: vec!["gone".into()],
    })) {
        ResponseBody::DeleteTopics(r) => assert_eq!(r.results[0].error, ErrorCode::None),
        other => panic!("unexpected {other:?}"),
    }
    let page = server.http_get("/metrics");
    let line = page
        .lines()
        .find(|l| {
            l.starts_with("strom_background_errors_total{")
                && l.contains("kind=\"remove_topic_dir\"")
        })
        .unwrap_or_else(|| panic!("no remove_topic_dir error counted:\n{page}"));
    assert!(line.ends_with(" 1"), "{line}");
    assert!(stray.exists(), "nothing of ours removed the stray file");
}

#[test]
fn errors_for_unknown_and_out_of_range() {
    let server = Server::start(1, temp_dir("errs"));
    let mut c = server.client();
    c.create_topic("e", 1);
    c.produce("e", Acks::Leader, &[(0, batch("v", 3))])
        .expect("answer");
    let (res, trailer) = c.fetch("e", 0, 100, 0);
    assert_eq!(res.error, ErrorCode::OffsetOutOfRange);
    assert!(!res.message.is_empty());
    assert!(trailer.is_empty());
    assert_eq!(res.high_watermark, 3);
    let (res, _) = c.fetch("nope", 0, 0, 0);
    assert_eq!(res.error, ErrorCode::UnknownTopic);
    let (res, _) = c.fetch("e", 5, 0, 0);
    assert_eq!(res.error, ErrorCode::UnknownPartition);
    let r = c
        .produce("e", Acks::Leader, &[(7, batch("v", 1))])
        .expect("answer");
    assert_eq!(r.results[0].error, ErrorCode::UnknownPartition);
    // A corrupt batch (payload flipped) is refused with CorruptBatch.
    let mut bad = batch("z", 2);
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    let r = c.produce("e", Acks::Leader, &[(0, bad)]).expect("answer");
    assert_eq!(
        r.results[0].error,
        ErrorCode::CorruptBatch,
        "{}",
        r.results[0].message
    );
    // Topic admin errors.
    match c.call(RequestBody::CreateTopics(CreateTopicsRequest {
        topics: vec![
            CreateTopic {
                name: "e".into(),
                partitions: 1,
                configs: vec![],
            },
            CreateTopic {
                name: "bad/name".into(),
                partitions: 1,
                configs: vec![],
            },
            CreateTopic {
                name: "cfg".into(),
                partitions: 1,
                configs: vec![("bogus".into(), "1".into())],
            },
            CreateTopic {
                name: "zero".into(),
                partitions: 0,
                configs: vec![],
            },
        ],
    })) {
        ResponseBody::CreateTopics(r) => {
            let codes: Vec<_> = r.results.iter().map(|x| x.error).collect();
            assert_eq!(
                codes,
                vec![
                    ErrorCode::TopicAlreadyExists,
                    ErrorCode::InvalidTopicName,
                    ErrorCode::InvalidConfig,
                    ErrorCode::InvalidPartitions
                ]
            );
            assert!(r.results.iter().all(|x| !x.message.is_empty()));
        }
        other => panic!("{other:?}"),
    }
    // ListOffsets earliest/latest/timestamp.
    match c.call(RequestBody::ListOffsets(ListOffsetsRequest {
        partitions: vec![
            ListOffsetsPartition {
                topic: "e".into(),
                partition: 0,
                timestamp: LIST_OFFSETS_EARLIEST,
            },
            ListOffsetsPartition {
                topic: "e".into(),
                partition: 0,
                timestamp: LIST_OFFSETS_LATEST,
            },
            ListOffsetsPartition {
                topic: "e".into(),
                partition: 0,
                timestamp: 1_700_000_000_001,
            },
            ListOffsetsPartition {
                topic: "e".into(),
                partition: 0,
                timestamp: 1_900_000_000_000,
            },
        ],
    })) {
        ResponseBody::ListOffsets(r) => {
            let offs: Vec<_> = r.results.iter().map(|x| x.offset).collect();
            assert_eq!(offs, vec![0, 3, 1, -1]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn wrong_shard_requests_are_forwarded() {
    let server = Server::start(2, temp_dir("fwd"));
    let mut c = server.client();
    c.create_topic("f", 4);
    let d = match c.call(RequestBody::DescribeTopics(DescribeTopicsRequest {
        names: vec!["f".into()],
    })) {
        ResponseBody::DescribeTopics(d) => d,
        other => panic!("{other:?}"),
    };
    let owners: Vec<u16> = d.topics[0]
        .partitions
        .iter()
        .map(|p| p.owner_shard)
        .collect();
    assert!(owners.contains(&0) && owners.contains(&1), "{owners:?}");
    // Several connections land on both shards; every one reaches every partition.
    for conn in 0..4 {
        let mut c = server.client();
        let batches: Vec<(u32, Vec<u8>)> = (0..4)
            .map(|p| (p, batch(&format!("c{conn}p{p}"), 2)))
            .collect();
        let r = c.produce("f", Acks::Leader, &batches).expect("answer");
        assert!(
            r.results.iter().all(|x| x.error == ErrorCode::None),
            "{r:?}"
        );
    }
    // One fetch over all four partitions (both shards).
    let a = c.call_with(
        RequestBody::Fetch(FetchRequest {
            max_wait_ms: 0,
            min_bytes: 1,
            max_bytes: 1 << 20,
            partitions: (0..4)
                .map(|p| FetchPartition {
                    topic: "f".into(),
                    partition: p,
                    offset: 0,
                    partition_max_bytes: 1 << 20,
                })
                .collect(),
            read_committed: false,
        }),
        &[],
    );
    let ResponseBody::Fetch(r) = a.body else {
        panic!("fetch")
    };
    let parts = r
        .split_trailer(bytes::Bytes::from(a.trailer))
        .expect("split");
    for (p, blob) in parts.iter().enumerate() {
        assert_eq!(r.results[p].high_watermark, 8);
        let vals = values(blob);
        assert_eq!(vals.len(), 8);
        assert_eq!(vals[0].1, format!("c0p{p}-0"));
    }
    // Pipelined requests may complete out of order; ids pair them.
    let mut ids = Vec::new();
    for p in 0..4 {
        ids.push(c.send(
            &RequestBody::ListOffsets(ListOffsetsRequest {
                partitions: vec![ListOffsetsPartition {
                    topic: "f".into(),
                    partition: p,
                    timestamp: -1,
                }],
            }),
            &[],
        ));
    }
    let mut got: Vec<u64> = (0..4).map(|_| c.recv().expect("answer").cid).collect();
    got.sort();
    assert_eq!(got, ids);
}

#[test]
fn bad_input_gets_errors_or_closes_and_others_keep_working() {
    let server = Server::start(2, temp_dir("bad"));
    let mut good = server.client();
    good.create_topic("g", 2);
    // Garbage bytes: a length of 3 is malformed; the server closes.
    let mut g = Client::connect(server.native);
    g.stream
        .write_all(&[3, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7])
        .expect("write");
    assert!(g.recv().is_none(), "closed after garbage");
    // Oversized: declared beyond the limit; closed without reading it all.
    let mut o = Client::connect(server.native);
    o.stream
        .write_all(&(u32::MAX - 1).to_le_bytes())
        .expect("write");
    o.stream.write_all(&[0u8; 64]).expect("write");
    assert!(o.recv().is_none(), "closed after oversized frame");
    // A well-framed message whose table does not verify: closed (no readable id).
    let mut v = Client::connect(server.native);
    let mut m = Vec::new();
    m.extend_from_slice(&20u32.to_le_bytes());
    m.extend_from_slice(&16u32.to_le_bytes());
    m.extend_from_slice(&[0xff; 16]);
    v.stream.write_all(&m).expect("write");
    assert!(v.recv().is_none());
    // Trailer lengths that do not add up: InvalidRequest with the id.
    let mut t = server.client();
    let body = RequestBody::Produce(ProduceRequest {
        acks: Acks::Leader,
        timeout_ms: 1000,
        batches: vec![ProduceBatch {
            topic: "g".into(),
            partition: 0,
            batch_len: 10,
        }],
    });
    let mut msg = encode_request(77, &body).expect("encode");
    let total = u32::from_le_bytes(msg[..4].try_into().expect("4")) - 5;
    msg[..4].copy_from_slice(&total.to_le_bytes());
    msg.extend_from_slice(&[0u8; 5]);
    t.stream.write_all(&msg).expect("write");
    let a = t.recv().expect("error answer");
    assert_eq!(a.cid, 77);
    match a.body {
        ResponseBody::Error(e) => assert_eq!(e.error, ErrorCode::InvalidRequest),
        other => panic!("{other:?}"),
    }
    // ... and that connection still works.
    t.create_topic("g2", 1);
    // Truncated frame then close: nothing breaks.
    let mut tr = Client::connect(server.native);
    let msg = encode_request(1, &RequestBody::ListTopics).expect("encode");
    tr.stream.write_all(&msg[..msg.len() - 2]).expect("write");
    drop(tr);
    // No handshake: HandshakeRequired.
    let mut nh = Client::connect(server.native);
    let a = nh.call_with(RequestBody::ListTopics, &[]);
    match a.body {
        ResponseBody::Error(e) => assert_eq!(e.error, ErrorCode::HandshakeRequired),
        other => panic!("{other:?}"),
    }
    // The well-behaved client never noticed.
    let r = good
        .produce(
            "g",
            Acks::Durable,
            &[(0, batch("ok", 3)), (1, batch("ok", 1))],
        )
        .expect("answer");
    assert!(r.results.iter().all(|x| x.error == ErrorCode::None));
    let (res, trailer) = good.fetch("g", 0, 0, 0);
    assert_eq!(res.error, ErrorCode::None);
    assert_eq!(values(&trailer).len(), 3);
    let health = server.http_get("/health");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let metrics = server.http_get("/metrics");
    assert!(
        metrics.contains("protocol=\"native\",api=\"produce\",error=\"None\"}"),
        "{metrics}"
    );
}

#[test]
fn restart_keeps_data_topics_and_offsets_and_sigterm_exits_zero() {
    let dir = temp_dir("restart");
    {
        let mut server = Server::start(2, dir.clone());
        let mut c = server.client();
        c.create_topic("r", 3);
        for p in 0..3 {
            let r = c
                .produce("r", Acks::Durable, &[(p, batch(&format!("p{p}"), 4))])
                .expect("answer");
            assert_eq!(r.results[0].error, ErrorCode::None);
        }
        match c.call(RequestBody::OffsetCommit(OffsetCommitRequest {
            group: "grp".into(),
            partitions: vec![OffsetCommitPartition {
                topic: "r".into(),
                partition: 1,
                offset: 2,
                metadata: "m".into(),
            }],
            ..OffsetCommitRequest::default()
        })) {
            ResponseBody::OffsetCommit(r) => assert_eq!(r.results[0].error, ErrorCode::None),
            other => panic!("{other:?}"),
        }
        assert!(server.http_get("/ready").starts_with("HTTP/1.1 200"));
        assert_eq!(server.stop(), Some(0));
    }
    let server = Server::start(2, dir);
    let mut c = server.client();
    match c.call(RequestBody::ListTopics) {
        ResponseBody::ListTopics(l) => assert_eq!(
            l.topics,
            vec![TopicListing {
                name: "r".into(),
                partitions: 3
            }]
        ),
        other => panic!("{other:?}"),
    }
    for p in 0..3 {
        let (res, trailer) = c.fetch("r", p, 0, 0);
        assert_eq!(res.high_watermark, 4);
        let vals = values(&trailer);
        assert_eq!(vals.len(), 4);
        assert_eq!(vals[3].1, format!("p{p}-3"));
    }
    match c.call(RequestBody::OffsetFetch(OffsetFetchRequest {
        group: "grp".into(),
        partitions: vec![],
    })) {
        ResponseBody::OffsetFetch(r) => {
            assert_eq!(r.results.len(), 1);
            assert_eq!(
                (r.results[0].offset, r.results[0].metadata.as_str()),
                (2, "m")
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn delete_and_add_partitions() {
    let server = Server::start(2, temp_dir("admin"));
    let mut c = server.client();
    c.create_topic("d", 1);
    c.produce("d", Acks::Leader, &[(0, batch("x", 1))])
        .expect("answer");
    match c.call(RequestBody::CreatePartitions(CreatePartitionsRequest {
        topics: vec![PartitionsIncrease {
            name: "d".into(),
            total: 3,
        }],
    })) {
        ResponseBody::CreatePartitions(r) => assert_eq!(r.results[0].error, ErrorCode::None),
        other => panic!("{other:?}"),
    }
    let r = c
        .produce("d", Acks::Leader, &[(2, batch("y", 1))])
        .expect("answer");
    assert_eq!(r.results[0].error, ErrorCode::None);
    match c.call(RequestBody::DeleteTopics(DeleteTopicsRequest {
        names: vec!["d".into(), "nope".into()],
    })) {
        ResponseBody::DeleteTopics(r) => {
            assert_eq!(r.results[0].error, ErrorCode::None);
            assert_eq!(r.results[1].error, ErrorCode::UnknownTopic);
        }
        other => panic!("{other:?}"),
    }
    let (res, _) = c.fetch("d", 0, 0, 0);
    assert_eq!(res.error, ErrorCode::UnknownTopic);
    assert!(!server.data_dir.join("topics").join("d").exists());
    // Re-created under the same name, it starts empty.
    c.create_topic("d", 1);
    let (res, _) = c.fetch("d", 0, 0, 0);
    assert_eq!((res.error, res.high_watermark), (ErrorCode::None, 0));
}
