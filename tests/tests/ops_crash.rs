//! Crash under load: a producer with durable acks writes to several
//! partitions while the server is SIGKILLed at seeded pseudo-random moments
//! (at least [`KILLS_MIN`] times, with one shard and with two), and after
//! every restart the whole log is read back and checked against what the
//! producer was told:
//!
//! - every acknowledged record is present at the offset it was acknowledged
//!   with, byte for byte (key, value, headers, timestamp), and its hash
//!   matches the one recorded at acknowledgement;
//! - every record (acknowledged or not) appears at most once, so every
//!   acknowledged record appears exactly once;
//! - each partition's offsets are dense: 0, 1, 2, ... up to the high
//!   watermark, no gap and no repeat, across every crash;
//! - records whose outcome the producer could not know (in flight at the
//!   kill) may be present or absent, but if present they are intact.
//!
//! Records are generated from (seed, id), so a record read back is compared
//! with a regenerated copy, not only with its hash. The seed is printed;
//! `STROM_OPS_SEED=<n>` replays a run's choices (kill delays, shard counts,
//! record contents; the timing of the kills relative to the server's work
//! still varies).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use strom_client::{
    Acks, Client, ConnectionConfig, Consumer, ConsumerConfig, OffsetSpec, Producer, ProducerConfig,
    ProducerRecord,
};
use strom_tests::TestServer;

/// Kills (each followed by a restart and a full check) per run.
const KILLS_MIN: u32 = 32;
/// Partitions of the topic under test.
const PARTITIONS: u32 = 4;
/// Small segments, so that crashes also land on segment rolls.
const SEGMENT_BYTES: &str = "131072";
/// Longest a kill waits after the producer starts.
const KILL_DELAY_MAX_MS: u64 = 400;
/// Whole-test wall-clock bound (the brief: < 2 minutes on 2 shared cores).
const TEST_BUDGET_MS: u64 = 110_000;
/// Largest record value.
const VALUE_BYTES_MAX: u64 = 400;

/// splitmix64: a seeded stream without a dependency.
use strom_tests::SplitMix64 as Rng;

/// One record, owned, as generated from (seed, id).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
    timestamp_ms: i64,
}

const TIMESTAMP_BASE_MS: i64 = 1_800_000_000_000;

/// The record with id `id`: its key starts with the id, so a record read
/// back names itself.
fn make_record(seed: u64, id: u64) -> Rec {
    let mut rng = Rng(seed ^ id.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut key = id.to_le_bytes().to_vec();
    key.extend_from_slice(format!("-k{}", rng.below(1000)).as_bytes());
    let value = if id % 97 == 5 {
        None
    } else {
        let len = rng.below(VALUE_BYTES_MAX + 1) as usize;
        Some((0..len).map(|_| rng.next_u64() as u8).collect())
    };
    let headers = if id.is_multiple_of(3) {
        vec![
            ("id".to_owned(), id.to_be_bytes().to_vec()),
            ("empty".to_owned(), Vec::new()),
        ]
    } else {
        Vec::new()
    };
    Rec {
        key,
        value,
        headers,
        timestamp_ms: TIMESTAMP_BASE_MS + id as i64,
    }
}

fn partition_of(seed: u64, id: u64) -> u32 {
    (Rng(seed.rotate_left(17) ^ id).next_u64() % u64::from(PARTITIONS)) as u32
}

/// FNV-1a over every byte of the record, fields length-prefixed.
fn hash_record(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[(&str, &[u8])],
    timestamp_ms: i64,
) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    let mut field = |f: Option<&[u8]>| match f {
        None => eat(&u64::MAX.to_le_bytes()),
        Some(b) => {
            eat(&(b.len() as u64).to_le_bytes());
            eat(b);
        }
    };
    field(key);
    field(value);
    field(Some(&(headers.len() as u64).to_le_bytes()));
    for (k, v) in headers {
        field(Some(k.as_bytes()));
        field(Some(v));
    }
    field(Some(&timestamp_ms.to_le_bytes()));
    h
}

fn hash_rec(r: &Rec) -> u64 {
    let headers: Vec<(&str, &[u8])> = r
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    hash_record(Some(&r.key), r.value.as_deref(), &headers, r.timestamp_ms)
}

/// What the producer was told, across every round.
#[derive(Default)]
struct Model {
    /// (partition, offset) → (record id, record hash), for acknowledged records.
    acked: HashMap<(u32, u64), (u64, u64)>,
    /// Ids whose outcome is unknown (in flight at a kill).
    undetermined: HashSet<u64>,
    /// Ids that failed with a definite server error (must be absent).
    refused: HashSet<u64>,
}

fn conn_config() -> ConnectionConfig {
    ConnectionConfig {
        connect_timeout_ms: 1_000,
        request_timeout_ms: 15_000,
        // A kill must end the round's producer, not make it wait.
        reconnect_attempts_max: 0,
        ..Default::default()
    }
}

/// Produces records `first_id..` until the connection breaks (the kill) or
/// `stop` is set; records every outcome in `model`. Returns the next id.
fn produce_until_killed(
    addr: String,
    topic: String,
    seed: u64,
    first_id: u64,
    model: Arc<Mutex<Model>>,
    round: u32,
) -> u64 {
    let mut rng = Rng(seed ^ u64::from(round).wrapping_mul(0x1234_5678_9abc_def1));
    let client = match Client::connect_with(&addr, conn_config()) {
        Ok(c) => c,
        Err(_) => return first_id, // killed before we connected
    };
    let mut producer = Producer::new(
        client,
        ProducerConfig {
            acks: Acks::Durable,
            batch_bytes: 8 << 10,
            linger_ms: 1,
            inflight_requests_max: 4,
            timeout_ms: 10_000,
            ..Default::default()
        },
    );
    let mut next_id = first_id;
    loop {
        // A burst of sends, then a flush that collects every outcome.
        let burst = 1 + rng.below(60);
        let mut ids = Vec::with_capacity(burst as usize);
        let mut broken = false;
        for _ in 0..burst {
            let id = next_id;
            next_id += 1;
            let rec = make_record(seed, id);
            let headers: Vec<(&str, &[u8])> = rec
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_slice()))
                .collect();
            let sent = producer.send(&ProducerRecord {
                topic: &topic,
                partition: Some(partition_of(seed, id)),
                key: Some(&rec.key),
                value: rec.value.as_deref(),
                headers: &headers,
                timestamp_ms: Some(rec.timestamp_ms),
            });
            match sent {
                Ok(h) => {
                    assert_eq!(h.index(), ids.len(), "handles index the flush result");
                    ids.push(id);
                }
                Err(_) => {
                    // Not accepted, so never sent: but an earlier batch
                    // of this burst may have been. Its fate comes from flush.
                    model.lock().expect("model").undetermined.insert(id);
                    broken = true;
                    break;
                }
            }
        }
        let results = producer.flush();
        assert_eq!(results.len(), ids.len(), "one result per record sent");
        let mut m = model.lock().expect("model");
        for (id, r) in ids.iter().zip(results) {
            match r {
                Ok(offset) => {
                    let p = partition_of(seed, *id);
                    let h = hash_rec(&make_record(seed, *id));
                    if let Some(prev) = m.acked.insert((p, offset), (*id, h)) {
                        panic!(
                            "seed {seed}: offset {p}/{offset} acknowledged twice: \
                             for record {} and then for record {id}",
                            prev.0
                        );
                    }
                }
                Err(e) if e.is_connection_error() || e.code().is_none() => {
                    m.undetermined.insert(*id);
                    broken = true;
                }
                Err(e) => {
                    // A definite server error: the batch was refused.
                    m.refused.insert(*id);
                    eprintln!("round {round}: record {id} refused: {e}");
                }
            }
        }
        if broken {
            return next_id;
        }
    }
}

/// Reads every partition from its start to its high watermark and checks
/// the log against `model`. Returns the number of records read.
fn check_log(addr: &str, topic: &str, seed: u64, model: &Model, round: u32) -> u64 {
    let mut client = Client::connect_with(addr, conn_config()).expect("connect checker");
    let mut seen_ids: HashMap<u64, (u32, u64)> = HashMap::new();
    let mut acked_seen = 0usize;
    let mut total = 0u64;
    for p in 0..PARTITIONS {
        let start = client
            .list_offset(topic, p, OffsetSpec::Earliest)
            .expect("earliest")
            .unwrap_or(0);
        let end = client
            .list_offset(topic, p, OffsetSpec::Latest)
            .expect("latest")
            .unwrap_or(0);
        assert_eq!(
            start, 0,
            "seed {seed} round {round}: partition {p} lost its start"
        );
        let mut consumer = Consumer::new(
            Client::connect_with(addr, conn_config()).expect("connect consumer"),
            ConsumerConfig {
                max_wait_ms: 50,
                ..Default::default()
            },
        );
        consumer
            .assign(topic, p, OffsetSpec::At(start))
            .expect("assign");
        let mut next = start;
        let deadline = Instant::now() + Duration::from_secs(30);
        while next < end {
            assert!(
                Instant::now() < deadline,
                "seed {seed} round {round}: partition {p} read stuck at {next} of {end}"
            );
            for f in consumer.poll(Duration::from_millis(200)).expect("poll") {
                for r in f.records() {
                    if r.offset >= end {
                        break;
                    }
                    assert_eq!(
                        r.offset, next,
                        "seed {seed} round {round}: partition {p} offsets not dense"
                    );
                    next += 1;
                    total += 1;
                    let key = r.key.unwrap_or_else(|| {
                        panic!("seed {seed} round {round}: {p}/{} has no key", r.offset)
                    });
                    let id = u64::from_le_bytes(key[..8].try_into().unwrap_or_else(|_| {
                        panic!("seed {seed} round {round}: {p}/{} short key", r.offset)
                    }));
                    if let Some(prev) = seen_ids.insert(id, (p, r.offset)) {
                        panic!(
                            "seed {seed} round {round}: record {id} stored twice: at {}/{} and {p}/{}",
                            prev.0, prev.1, r.offset
                        );
                    }
                    let headers: Vec<(&str, &[u8])> = r.headers().collect();
                    let got_hash = hash_record(r.key, r.value, &headers, r.timestamp_ms);
                    let want = make_record(seed, id);
                    let got = Rec {
                        key: key.to_vec(),
                        value: r.value.map(<[u8]>::to_vec),
                        headers: headers
                            .iter()
                            .map(|(k, v)| ((*k).to_owned(), v.to_vec()))
                            .collect(),
                        timestamp_ms: r.timestamp_ms,
                    };
                    assert_eq!(
                        got, want,
                        "seed {seed} round {round}: record {id} at {p}/{} differs",
                        r.offset
                    );
                    assert_eq!(
                        partition_of(seed, id),
                        p,
                        "record {id} in the wrong partition"
                    );
                    match model.acked.get(&(p, r.offset)) {
                        Some(&(want_id, want_hash)) => {
                            assert_eq!(
                                want_id, id,
                                "seed {seed} round {round}: {p}/{} holds record {id}, \
                                 but record {want_id} was acknowledged there",
                                r.offset
                            );
                            assert_eq!(got_hash, want_hash, "hash of record {id}");
                            acked_seen += 1;
                        }
                        None => {
                            assert!(
                                model.undetermined.contains(&id),
                                "seed {seed} round {round}: record {id} at {p}/{} was neither \
                                 acknowledged nor in flight (refused: {})",
                                r.offset,
                                model.refused.contains(&id)
                            );
                        }
                    }
                }
            }
        }
    }
    if acked_seen != model.acked.len() {
        let missing: Vec<_> = model
            .acked
            .iter()
            .filter(|(_, (id, _))| !seen_ids.contains_key(id))
            .take(10)
            .collect();
        panic!(
            "seed {seed} round {round}: {} acknowledged records, {acked_seen} found; \
             missing (partition, offset) → (id, hash), first 10: {missing:?}",
            model.acked.len()
        );
    }
    total
}

#[test]
fn acknowledged_records_survive_repeated_sigkill() {
    let seed = std::env::var("STROM_OPS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    println!("ops_crash seed {seed} (replay with STROM_OPS_SEED={seed})");
    // Build (or find) the binaries first: the time bound is the test's own.
    strom_tests::server_bin();
    let began = Instant::now();
    let mut rng = Rng(seed);
    let topic = "crash".to_owned();
    let mut server = TestServer::start(1);
    Client::connect_with(server.addr(), conn_config())
        .expect("connect admin")
        .create_topic(
            &topic,
            PARTITIONS,
            &[
                ("segment.bytes".to_owned(), SEGMENT_BYTES.to_owned()),
                ("retention.ms".to_owned(), "-1".to_owned()),
            ],
        )
        .expect("create topic");
    let model = Arc::new(Mutex::new(Model::default()));
    let mut next_id = 0u64;
    let mut kills = 0u32;
    let mut two_shard_rounds = 0u32;
    let mut longest_check = Duration::ZERO;
    let mut total_read = 0;
    while kills < KILLS_MIN {
        assert!(
            began.elapsed() < Duration::from_millis(TEST_BUDGET_MS),
            "seed {seed}: only {kills} kills in {TEST_BUDGET_MS} ms"
        );
        let round = kills;
        let producer = {
            let (addr, topic, model) = (server.addr().to_owned(), topic.clone(), model.clone());
            std::thread::spawn(move || {
                produce_until_killed(addr, topic, seed, next_id, model, round)
            })
        };
        let delay = rng.below(KILL_DELAY_MAX_MS + 1);
        std::thread::sleep(Duration::from_millis(delay));
        server.kill();
        kills += 1;
        next_id = producer.join().expect("producer thread");
        // Every third restart runs with two shards (partition ownership
        // moves between shards and back).
        let cores = if round % 3 == 1 { 2 } else { 1 };
        two_shard_rounds += u32::from(cores == 2);
        server.set_cores(cores);
        server.start_again();
        let t = Instant::now();
        let m = model.lock().expect("model");
        total_read = check_log(server.addr(), &topic, seed, &m, round);
        longest_check = longest_check.max(t.elapsed());
        println!(
            "round {round}: killed after {delay} ms; restarted with {cores} shard(s); \
             {} acknowledged, {} undetermined, {} refused, {total_read} records in the log",
            m.acked.len(),
            m.undetermined.len(),
            m.refused.len()
        );
    }
    let m = model.lock().expect("model");
    println!(
        "ops_crash seed {seed}: {kills} SIGKILLs ({two_shard_rounds} restarts with 2 shards), \
         {} acknowledged records all intact, {total_read} records in the log, \
         longest check {longest_check:?}, total {:?}",
        m.acked.len(),
        began.elapsed()
    );
    assert!(kills >= KILLS_MIN);
    assert!(
        !m.acked.is_empty(),
        "the producer never got an acknowledgement"
    );
    assert!(
        two_shard_rounds > 0 && two_shard_rounds < kills,
        "seed {seed}: rounds should mix 1 and 2 shards"
    );
}
