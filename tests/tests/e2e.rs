//! End-to-end scenarios against real `strom-server` processes on loopback,
//! driven by the Rust client. Each test starts its own server (port 0, its
//! own data directory), so they run in parallel.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strom_client::{
    Acks, Client, ConnectionConfig, Consumer, ConsumerConfig, ErrorCode, OffsetSpec, Producer,
    ProducerConfig, ProducerRecord,
};
use strom_flatbuffers::protocol::{
    encode_request, ProduceBatch, ProduceRequest, RequestBody, ResponseBody,
};
use strom_flatbuffers::{BatchBuilder, RecordIn};
use strom_tests::TestServer;

/// One record as sent, owned, for byte-for-byte comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
    timestamp_ms: i64,
}

/// xorshift64*: deterministic test data without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn make_records(n: usize, seed: u64) -> Vec<Rec> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|i| {
            let key = match i % 10 {
                0 => None,
                1 => Some(Vec::new()),
                _ => Some(format!("key-{}", rng.next() % 997).into_bytes()),
            };
            let value = match i % 50 {
                0 => None,
                1 => Some(Vec::new()),
                _ => {
                    let len = (rng.next() % 300) as usize;
                    Some(rng.bytes(len))
                }
            };
            let headers = if i % 3 == 0 {
                vec![
                    ("seq".to_owned(), (i as u64).to_le_bytes().to_vec()),
                    ("empty".to_owned(), Vec::new()),
                ]
            } else {
                Vec::new()
            };
            // Not monotonic: later records may be earlier, as in Kafka.
            let timestamp_ms = 1_700_000_000_000 + i as i64 - (rng.next() % 5) as i64;
            Rec {
                key,
                value,
                headers,
                timestamp_ms,
            }
        })
        .collect()
}

fn quick_config() -> ConnectionConfig {
    ConnectionConfig {
        connect_timeout_ms: 2_000,
        request_timeout_ms: 20_000,
        ..Default::default()
    }
}

/// Produces `recs` to `topic`; returns (partition, offset) per record.
fn produce_all(addr: &str, topic: &str, recs: &[Rec], config: ProducerConfig) -> Vec<(u32, u64)> {
    let client = Client::connect_with(addr, quick_config()).expect("connect producer");
    let mut producer = Producer::new(client, config);
    let mut partitions = Vec::with_capacity(recs.len());
    let mut offsets = Vec::with_capacity(recs.len());
    for chunk in recs.chunks(10_000) {
        for r in chunk {
            let headers: Vec<(&str, &[u8])> = r
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_slice()))
                .collect();
            let h = producer
                .send(&ProducerRecord {
                    topic,
                    partition: None,
                    key: r.key.as_deref(),
                    value: r.value.as_deref(),
                    headers: &headers,
                    timestamp_ms: Some(r.timestamp_ms),
                })
                .expect("send");
            partitions.push(h.partition());
        }
        for r in producer.flush() {
            offsets.push(r.expect("every record acknowledged"));
        }
    }
    partitions.into_iter().zip(offsets).collect()
}

/// Reads every partition of `topic` from the start and checks that it holds
/// exactly `recs` at the offsets `placed` says, byte for byte.
fn read_and_compare(addr: &str, topic: &str, recs: &[Rec], placed: &[(u32, u64)]) {
    let at: HashMap<(u32, u64), usize> = placed.iter().enumerate().map(|(i, p)| (*p, i)).collect();
    assert_eq!(at.len(), recs.len(), "every record has its own offset");
    let client = Client::connect_with(addr, quick_config()).expect("connect consumer");
    let mut consumer = Consumer::new(client, ConsumerConfig::default());
    consumer
        .assign_topic(topic, OffsetSpec::Earliest)
        .expect("assign");
    let mut seen = vec![false; recs.len()];
    let mut count = 0usize;
    let deadline = Instant::now() + Duration::from_secs(120);
    while count < recs.len() {
        assert!(
            Instant::now() < deadline,
            "read only {count} of {} records",
            recs.len()
        );
        let frames = consumer.poll(Duration::from_millis(500)).expect("poll");
        for f in &frames {
            for r in f.records() {
                let i = *at
                    .get(&(f.partition, r.offset))
                    .unwrap_or_else(|| panic!("unexpected record at {}/{}", f.partition, r.offset));
                assert!(!seen[i], "record {i} delivered twice");
                seen[i] = true;
                count += 1;
                let want = &recs[i];
                let got = Rec {
                    key: r.key.map(<[u8]>::to_vec),
                    value: r.value.map(<[u8]>::to_vec),
                    headers: r
                        .headers()
                        .map(|(k, v)| (k.to_owned(), v.to_vec()))
                        .collect(),
                    timestamp_ms: r.timestamp_ms,
                };
                assert_eq!(&got, want, "record {i} at {}/{}", f.partition, r.offset);
            }
        }
    }
    // Nothing more than what was written.
    assert!(consumer
        .poll(Duration::from_millis(200))
        .expect("poll")
        .is_empty());
}

#[test]
fn hundred_thousand_records_across_partitions_and_shards_survive_a_restart() {
    let mut server = TestServer::start(2);
    let topic = "big";
    let partitions = 6;
    let mut admin = Client::connect_with(server.addr(), quick_config()).expect("connect");
    admin.create_topic(topic, partitions, &[]).expect("create");
    let d = admin.describe_topic(topic).expect("describe");
    let shards: std::collections::HashSet<u16> =
        d.partitions.iter().map(|p| p.owner_shard).collect();
    assert_eq!(shards.len(), 2, "partitions spread over both shards: {d:?}");

    let recs = make_records(100_000, 0x5eed);
    let placed = produce_all(server.addr(), topic, &recs, ProducerConfig::default());
    // Offsets are dense per partition.
    let mut per: HashMap<u32, Vec<u64>> = HashMap::new();
    for (p, o) in &placed {
        per.entry(*p).or_default().push(*o);
    }
    assert!(per.len() >= 4, "keys spread over partitions");
    for (p, mut offs) in per.clone() {
        offs.sort_unstable();
        assert_eq!(
            offs,
            (0..offs.len() as u64).collect::<Vec<_>>(),
            "partition {p}"
        );
    }
    read_and_compare(server.addr(), topic, &recs, &placed);

    // A consumer group's committed offsets and the data survive a restart.
    admin
        .commit_offsets("g1", &[(topic.to_owned(), 0, 17)])
        .expect("commit");
    drop(admin);
    server.restart();
    read_and_compare(server.addr(), topic, &recs, &placed);
    let mut admin = Client::connect_with(server.addr(), quick_config()).expect("connect");
    let d = admin.describe_topic(topic).expect("describe");
    for p in &d.partitions {
        let n = per.get(&p.partition).map_or(0, Vec::len) as u64;
        assert_eq!(
            p.high_watermark, n,
            "partition {} after restart",
            p.partition
        );
    }
    assert_eq!(
        admin.committed("g1", topic, 0).expect("committed"),
        Some(17)
    );
}

#[test]
fn long_poll_waits_and_wakes_on_new_data() {
    let server = TestServer::start(2);
    let mut admin = Client::connect_with(server.addr(), quick_config()).expect("connect");
    admin.create_topic("lp", 2, &[]).expect("create");
    let mut consumer = Consumer::new(
        Client::connect_with(server.addr(), quick_config()).expect("connect"),
        ConsumerConfig {
            max_wait_ms: 10_000,
            ..Default::default()
        },
    );
    consumer
        .assign_topic("lp", OffsetSpec::Latest)
        .expect("assign");

    // Nothing arrives: the fetch is held for about the wait asked for.
    let started = Instant::now();
    let frames = consumer.poll(Duration::from_millis(400)).expect("poll");
    let waited = started.elapsed();
    assert!(frames.is_empty());
    assert!(
        waited >= Duration::from_millis(300),
        "long poll returned after {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "long poll overslept: {waited:?}"
    );

    // A record produced while a fetch waits wakes it well before max wait.
    let addr = server.addr().to_owned();
    let producer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let mut p = Producer::connect(&addr, ProducerConfig::default()).expect("producer");
        p.send(&ProducerRecord::new("lp", b"wake up").partition(1))
            .expect("send");
        p.flush().pop().expect("one").expect("acked")
    });
    let started = Instant::now();
    let frames = consumer.poll(Duration::from_secs(10)).expect("poll");
    let waited = started.elapsed();
    let offset = producer.join().expect("producer thread");
    assert!(
        waited < Duration::from_secs(5),
        "fetch woke only after {waited:?}"
    );
    let recs: Vec<_> = frames
        .iter()
        .flat_map(|f| f.records().map(move |r| (f.partition, r.offset, r.value)))
        .collect();
    assert_eq!(recs, vec![(1, offset, Some(&b"wake up"[..]))]);
}

#[test]
fn out_of_range_offsets_and_unknown_names_give_their_error_codes() {
    let server = TestServer::start(1);
    let mut client = Client::connect_with(server.addr(), quick_config()).expect("connect");
    client.create_topic("oor", 1, &[]).expect("create");
    let mut p = Producer::new(
        Client::connect_with(server.addr(), quick_config()).expect("connect"),
        ProducerConfig::default(),
    );
    for i in 0..10u8 {
        p.send(&ProducerRecord::new("oor", &[i])).expect("send");
    }
    assert!(p.flush().iter().all(Result::is_ok));

    let mut c = Consumer::new(client, ConsumerConfig::default());
    c.assign("oor", 0, OffsetSpec::At(11)).expect("assign");
    let e = c
        .poll(Duration::from_millis(200))
        .expect_err("past the end");
    assert_eq!(e.code(), Some(ErrorCode::OffsetOutOfRange), "{e}");
    assert_eq!(c.position("oor", 0), Some(11), "position kept");
    // The high watermark itself is a valid place to wait.
    c.seek("oor", 0, OffsetSpec::At(10)).expect("seek");
    assert!(c
        .poll(Duration::from_millis(100))
        .expect("at the end")
        .is_empty());
    c.seek("oor", 0, OffsetSpec::At(3)).expect("seek");
    let frames = c.poll(Duration::from_secs(2)).expect("poll");
    let first = frames[0].records().next().expect("a record");
    assert_eq!((first.offset, first.value), (3, Some(&[3u8][..])));
    assert_eq!(
        c.client()
            .list_offset("oor", 0, OffsetSpec::Earliest)
            .expect("earliest"),
        Some(0)
    );
    assert_eq!(
        c.client()
            .list_offset("oor", 0, OffsetSpec::Latest)
            .expect("latest"),
        Some(10)
    );

    let e = c
        .client()
        .describe_topic("no-such-topic")
        .expect_err("unknown");
    assert_eq!(e.code(), Some(ErrorCode::UnknownTopic), "{e}");
    let e = c
        .client()
        .list_offset("oor", 5, OffsetSpec::Latest)
        .expect_err("unknown partition");
    assert_eq!(e.code(), Some(ErrorCode::UnknownPartition), "{e}");
    let e = c.client().create_topic("oor", 1, &[]).expect_err("exists");
    assert_eq!(e.code(), Some(ErrorCode::TopicAlreadyExists), "{e}");
}

#[test]
fn concurrent_producers_get_distinct_dense_offsets() {
    let server = TestServer::start(2);
    let mut admin = Client::connect_with(server.addr(), quick_config()).expect("connect");
    admin.create_topic("conc", 2, &[]).expect("create");
    let threads = 8u32;
    let per_thread = 2_000u32;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let addr = server.addr().to_owned();
            std::thread::spawn(move || {
                let mut p = Producer::new(
                    Client::connect_with(&addr, quick_config()).expect("connect"),
                    ProducerConfig {
                        batch_bytes: 4 << 10,
                        acks: if t % 2 == 0 {
                            Acks::Leader
                        } else {
                            Acks::Durable
                        },
                        ..Default::default()
                    },
                );
                let mut parts = Vec::new();
                for i in 0..per_thread {
                    let v = format!("{t}:{i}");
                    let h = p
                        .send(&ProducerRecord::new("conc", v.as_bytes()).partition(i % 2))
                        .expect("send");
                    parts.push((h.partition(), v));
                }
                let offs: Vec<u64> = p.flush().into_iter().map(|r| r.expect("acked")).collect();
                parts
                    .into_iter()
                    .zip(offs)
                    .map(|((p, v), o)| (p, o, v))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: HashMap<(u32, u64), String> = HashMap::new();
    for h in handles {
        for (p, o, v) in h.join().expect("producer thread") {
            assert!(
                all.insert((p, o), v).is_none(),
                "offset {p}/{o} given twice"
            );
        }
    }
    let total = (threads * per_thread) as usize;
    assert_eq!(all.len(), total);
    for p in 0..2u32 {
        let mut offs: Vec<u64> = all.keys().filter(|k| k.0 == p).map(|k| k.1).collect();
        offs.sort_unstable();
        assert_eq!(
            offs,
            (0..total as u64 / 2).collect::<Vec<_>>(),
            "partition {p} dense"
        );
    }
    // And the log holds what each producer was told.
    let mut c = Consumer::new(admin, ConsumerConfig::default());
    c.assign_topic("conc", OffsetSpec::Earliest)
        .expect("assign");
    let mut read = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while read < total {
        assert!(Instant::now() < deadline);
        for f in c.poll(Duration::from_millis(500)).expect("poll") {
            for r in f.records() {
                let want = &all[&(f.partition, r.offset)];
                assert_eq!(r.value, Some(want.as_bytes()));
                read += 1;
            }
        }
    }
}

/// Reads until the server answers or closes; true if it did either within
/// `timeout` (as opposed to hanging).
fn answered_or_closed(s: &mut TcpStream, timeout: Duration) -> bool {
    s.set_read_timeout(Some(timeout)).expect("timeout");
    let mut buf = [0u8; 4096];
    match s.read(&mut buf) {
        // 0: closed; more: an (error) answer arrived.
        Ok(n) => n <= buf.len(),
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Idle connections held open beside the well-behaved client.
const IDLE_CONNECTIONS: usize = 2_000;

fn raise_open_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: the calls only read/write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[test]
fn a_well_behaved_client_keeps_working_beside_garbage() {
    let server = TestServer::start(2);
    let addr = server.addr().to_owned();
    let mut admin = Client::connect_with(&addr, quick_config()).expect("connect");
    admin.create_topic("good", 2, &[]).expect("create");

    let stop = Arc::new(AtomicBool::new(false));
    let good = {
        let addr = addr.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut p = Producer::new(
                Client::connect_with(&addr, quick_config()).expect("connect"),
                ProducerConfig {
                    linger_ms: 0,
                    ..Default::default()
                },
            );
            let mut c = Consumer::new(
                Client::connect_with(&addr, quick_config()).expect("connect"),
                ConsumerConfig::default(),
            );
            c.assign_topic("good", OffsetSpec::Earliest)
                .expect("assign");
            let mut rounds = 0u32;
            while rounds < 50 || !stop.load(Ordering::Relaxed) {
                let v = format!("round-{rounds}");
                p.send(&ProducerRecord::new("good", v.as_bytes()).partition(rounds % 2))
                    .expect("send");
                let off = p.flush().pop().expect("one").expect("acked");
                let mut got = None;
                let deadline = Instant::now() + Duration::from_secs(10);
                while got.is_none() && Instant::now() < deadline {
                    for f in c.poll(Duration::from_millis(500)).expect("poll") {
                        for r in f.records() {
                            if f.partition == rounds % 2 && r.offset == off {
                                got = r.value.map(<[u8]>::to_vec);
                            }
                        }
                    }
                }
                assert_eq!(got.as_deref(), Some(v.as_bytes()), "round {rounds}");
                rounds += 1;
                assert!(rounds < 100_000);
            }
            rounds
        })
    };

    // Thousands of idle connections, held open for the whole test (the
    // test process's own open-file limit is raised to its hard limit first;
    // the server raises its own at start-up).
    raise_open_file_limit();
    let idle: Vec<TcpStream> = (0..IDLE_CONNECTIONS)
        .map(|_| TcpStream::connect(&addr).expect("idle connect"))
        .collect();

    let mut rng = Rng(42);
    for round in 0..20 {
        // 1. Random bytes.
        let mut s = TcpStream::connect(&addr).expect("connect");
        let len = 1 + (rng.next() % 2000) as usize;
        let _ = s.write_all(&rng.bytes(len));
        drop(s);
        // 2. An oversized length prefix: refused (error or close), not read.
        let mut s = TcpStream::connect(&addr).expect("connect");
        let _ = s.write_all(&u32::MAX.to_le_bytes());
        let _ = s.write_all(&[0u8; 64]);
        assert!(
            answered_or_closed(&mut s, Duration::from_secs(10)),
            "oversized message left hanging"
        );
        // 3. A complete message whose table is not a flatbuffer.
        let mut s = TcpStream::connect(&addr).expect("connect");
        let mut m = Vec::new();
        m.extend_from_slice(&(4u32 + 16).to_le_bytes());
        m.extend_from_slice(&16u32.to_le_bytes());
        m.extend_from_slice(&rng.bytes(16));
        let _ = s.write_all(&m);
        assert!(
            answered_or_closed(&mut s, Duration::from_secs(10)),
            "invalid flatbuffer left hanging"
        );
        // 4. A truncated request, then close.
        let body = RequestBody::ListTopics;
        let full = encode_request(7, &body).expect("encode");
        let mut s = TcpStream::connect(&addr).expect("connect");
        let _ = s.write_all(&full[..full.len() / 2]);
        drop(s);
        // 5. A produce batch with a bad checksum, after a proper handshake.
        if round % 5 == 0 {
            let mut conn =
                strom_client::Connection::connect(&addr, quick_config()).expect("connect");
            let mut b = BatchBuilder::new();
            b.push(&RecordIn {
                timestamp_ms: 1,
                key: None,
                value: Some(b"bad"),
                headers: &[],
            });
            let mut frame = b.finish();
            let last = frame.len() - 1;
            frame[last] ^= 0xff;
            let body = RequestBody::Produce(ProduceRequest {
                acks: Acks::Leader,
                timeout_ms: 5_000,
                batches: vec![ProduceBatch {
                    topic: "good".into(),
                    partition: 0,
                    batch_len: frame.len() as u32,
                }],
            });
            let r = conn.call(&body, &[&frame], 0).expect("an answer");
            match r.body {
                ResponseBody::Produce(p) => {
                    assert_eq!(p.results[0].error, ErrorCode::CorruptBatch, "{p:?}")
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let rounds = good.join().expect("the good client never failed");
    assert!(rounds >= 50);
    drop(idle);
    // The corrupt batches were not appended: only the good client's records.
    let d = admin.describe_topic("good").expect("describe");
    let total: u64 = d.partitions.iter().map(|p| p.high_watermark).sum();
    assert_eq!(total, u64::from(rounds));
}

#[test]
fn many_connections_reach_partitions_on_every_shard() {
    // SO_REUSEPORT spreads connections over shards; each connection
    // produces to and reads from every partition, so most requests must be
    // forwarded to the owning shard and back.
    let server = TestServer::start(2);
    let mut admin = Client::connect_with(server.addr(), quick_config()).expect("connect");
    admin.create_topic("fwd", 4, &[]).expect("create");
    let mut expected: HashMap<(u32, u64), String> = HashMap::new();
    for conn in 0..8 {
        let mut p = Producer::new(
            Client::connect_with(server.addr(), quick_config()).expect("connect"),
            ProducerConfig::default(),
        );
        let mut sent = Vec::new();
        for part in 0..4u32 {
            let v = format!("conn{conn}-p{part}");
            let h = p
                .send(&ProducerRecord::new("fwd", v.as_bytes()).partition(part))
                .expect("send");
            sent.push((h.partition(), v));
        }
        for ((part, v), r) in sent.into_iter().zip(p.flush()) {
            expected.insert((part, r.expect("acked")), v);
        }
    }
    for _ in 0..4 {
        let mut c = Consumer::new(
            Client::connect_with(server.addr(), quick_config()).expect("connect"),
            ConsumerConfig::default(),
        );
        c.assign_topic("fwd", OffsetSpec::Earliest).expect("assign");
        let mut got = HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while got.len() < expected.len() {
            assert!(Instant::now() < deadline);
            for f in c.poll(Duration::from_millis(300)).expect("poll") {
                for r in f.records() {
                    got.insert(
                        (f.partition, r.offset),
                        String::from_utf8(r.value.expect("value").to_vec()).expect("utf8"),
                    );
                }
            }
        }
        assert_eq!(got, expected);
    }
}

#[test]
fn records_of_one_key_keep_their_order_under_pipelining() {
    // Tiny batches and many requests in flight: the server runs a
    // connection's requests concurrently, so only the producer's
    // one-batch-in-flight-per-partition rule keeps them in order.
    let server = TestServer::start(2);
    let mut admin = Client::connect_with(server.addr(), quick_config()).expect("connect");
    admin.create_topic("order", 2, &[]).expect("create");
    let mut p = Producer::new(
        Client::connect_with(server.addr(), quick_config()).expect("connect"),
        ProducerConfig {
            batch_bytes: 256,
            linger_ms: 0,
            inflight_requests_max: 16,
            ..Default::default()
        },
    );
    for i in 0..5_000u32 {
        let key = if i % 2 == 0 {
            &b"even"[..]
        } else {
            &b"odd"[..]
        };
        p.send(&ProducerRecord::new("order", &i.to_le_bytes()).key(key))
            .expect("send");
    }
    let offsets: Vec<u64> = p.flush().into_iter().map(|r| r.expect("acked")).collect();
    for parity in 0..2 {
        let mine: Vec<u64> = offsets.iter().skip(parity).step_by(2).copied().collect();
        assert!(mine.windows(2).all(|w| w[0] < w[1]), "send order kept");
    }
}

#[test]
fn durable_acks_survive_a_crash() {
    let mut server = TestServer::start(2);
    let mut admin = Client::connect_with(server.addr(), quick_config()).expect("connect");
    admin.create_topic("crash", 3, &[]).expect("create");
    drop(admin);
    let recs = make_records(3_000, 7);
    let placed = produce_all(
        server.addr(),
        "crash",
        &recs,
        ProducerConfig {
            acks: Acks::Durable,
            ..Default::default()
        },
    );
    server.kill(); // SIGKILL: no clean shutdown
    server.start_again();
    read_and_compare(server.addr(), "crash", &recs, &placed);
}

/// The sum of `strom_forwarded_requests_total` over every shard and target.
fn forwarded_total(server: &TestServer) -> u64 {
    let http = server.http_addr().expect("http address");
    let mut s = TcpStream::connect(http).expect("connect http");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    let mut page = String::new();
    let _ = s.read_to_string(&mut page);
    assert!(
        page.contains("strom_shard_records_in_total"),
        "no metrics page"
    );
    page.lines()
        .filter(|l| l.starts_with("strom_forwarded_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Produces `n` records over every partition of `topic` one request at a
/// time per record batch, then reads them back; returns how many requests
/// the servers forwarded between shards meanwhile.
fn produce_and_consume_counting_forwards(
    server: &TestServer,
    topic: &str,
    direct: bool,
    n: usize,
) -> u64 {
    let mut client = Client::connect(server.addr()).expect("connect");
    client.set_direct(direct);
    client.describe_topic(topic).expect("describe");
    let mut producer = Producer::new(
        client,
        ProducerConfig {
            acks: Acks::Leader,
            linger_ms: 0,
            ..ProducerConfig::default()
        },
    );
    let before = forwarded_total(server);
    for i in 0..n {
        let value = format!("v{i}");
        producer
            .send(&ProducerRecord::new(topic, value.as_bytes()).partition((i % 4) as u32))
            .expect("send");
        if i % 50 == 49 {
            for r in producer.flush() {
                r.expect("acknowledged");
            }
        }
    }
    for r in producer.flush() {
        r.expect("acknowledged");
    }
    for p in 0..4u32 {
        // One partition per consumer: it lives on one shard.
        let mut client = Client::connect(server.addr()).expect("connect");
        client.set_direct(direct);
        let mut c = Consumer::new(client, ConsumerConfig::default());
        c.assign(topic, p, OffsetSpec::Earliest).expect("assign");
        let mut got = 0;
        let deadline = Instant::now() + Duration::from_secs(20);
        while got < n / 4 {
            assert!(
                Instant::now() < deadline,
                "{topic}/{p}: read {got} of {}",
                n / 4
            );
            for f in c.poll(Duration::from_millis(200)).expect("poll") {
                got += f.records().count();
            }
        }
        assert_eq!(got, n / 4, "{topic}/{p}: exactly what was produced");
    }
    forwarded_total(server) - before
}

/// The story: a native client's produce and fetch landed on whichever shard
/// accepted its connection, and half of them crossed cores to the owning
/// shard (a mesh hop, a wake-up and a copy each). The server now tells
/// clients each shard's own port in the handshake and strom-client sends a
/// partition's requests there, so nothing crosses cores.
#[test]
fn direct_routing_sends_every_request_to_the_owning_shard() {
    let server = TestServer::start(2);
    let mut admin = Client::connect(server.addr()).expect("connect");
    let info = admin.server_info().clone();
    assert_eq!(
        info.shard_ports.len(),
        2,
        "one direct port per shard: {info:?}"
    );
    admin.create_topic("via-any", 4, &[]).expect("create");
    admin.create_topic("direct", 4, &[]).expect("create");
    let owners: Vec<u16> = admin
        .describe_topic("direct")
        .expect("describe")
        .partitions
        .iter()
        .map(|p| p.owner_shard)
        .collect();
    assert!(owners.contains(&0) && owners.contains(&1), "{owners:?}");
    let n = 400;
    // Through the bootstrap connection the other shard's partitions are
    // forwarded: the measurement can see forwarding.
    let via_any = produce_and_consume_counting_forwards(&server, "via-any", false, n);
    assert!(
        via_any >= 8,
        "with direct routing off some requests must cross shards ({via_any})"
    );
    // Direct: no produce, fetch or offset look-up crosses; what remains are
    // the metadata look-ups (a DescribeTopics asks every shard: one per
    // client, five clients) and the metrics scrapes (one call per scrape).
    let direct = produce_and_consume_counting_forwards(&server, "direct", true, n);
    assert!(
        direct <= 5 + 2,
        "{direct} requests crossed shards with direct routing (via any shard: {via_any})"
    );
}
