//! Issue 13's proof for the native protocol: an idempotent strom-client
//! producer whose resends span a SIGKILL and restart of the server stores
//! no record twice, across [`KILLS`] kills.
//!
//! A real `strom-server` (`--cores 1`) runs on one data directory; the
//! producer reaches it through a [`FaultProxy`] link, so its address stays
//! the same while the server restarts on new ports (the link is pointed at
//! each new process). A producer thread sends uniquely numbered records
//! continuously (acks=leader: a record acknowledged was written with
//! O_DIRECT and survives the kill) while the test SIGKILLs the server at
//! seeded moments and starts it again on the same directory, [`KILLS`]
//! times. Then every partition is read back and checked: no record id
//! appears twice, and every acknowledged record is present at the offset
//! it was acknowledged with. The producer's counters show that resends
//! crossed kills (`resends_after_connection_loss`).
//!
//! The same run with `idempotent: false` and resends on (a producer that
//! retries at least once) is the evidence that the check can fail: it
//! reports the duplicates such a producer stores. And the same runs with
//! the connections reset instead of the server killed (the server keeps
//! its producer state) show the resend path against a real server today.
//!
//! The idempotent run needs the server to remember producers across a
//! restart (their state rebuilt from the log when a partition opens):
//! without that, a batch written just before a kill and resent after the
//! restart is taken for a new producer's first batch and stored again.
//! `STROM_OPS_SEED=<n>` replays a run's kill schedule.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use strom_client::{
    Acks, Client, ConnectionConfig, Consumer, ConsumerConfig, OffsetSpec, Producer, ProducerConfig,
    ProducerRecord, ProducerStats,
};
use strom_tests::faultproxy::{Fault, FaultProxy};
use strom_tests::{TempDir, TestServer};

/// SIGKILLs (each followed by a restart on the same directory) per run.
const KILLS: u32 = 20;
const PARTITIONS: u32 = 2;
/// Time the server runs before a kill: seeded in [MIN, MAX).
const UP_MS_MIN: u64 = 150;
const UP_MS_MAX: u64 = 700;
/// Time the server stays dead: seeded in [0, MAX).
const DOWN_MS_MAX: u64 = 300;
/// Whole-run wall-clock bound (one run; the brief: a few minutes at most).
const RUN_BUDGET_MS: u64 = 240_000;
/// Records the producer sends before it sleeps a little (pacing, so the
/// log stays small enough to read back quickly).
const BURST_RECORDS: u64 = 40;
const BURST_PAUSE_MS: u64 = 2;
/// Records between two flushes (a flush collects the outcomes).
const FLUSH_EVERY: u64 = 400;
const TOPIC: &str = "crash";

use strom_tests::SplitMix64 as Rng;

fn seed() -> u64 {
    std::env::var("STROM_OPS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

/// A record's value: its id, so that a record read back names itself.
fn value_of(id: u64) -> Vec<u8> {
    format!("record-{id:012}").into_bytes()
}

fn id_of(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value)
        .ok()?
        .strip_prefix("record-")?
        .parse()
        .ok()
}

fn conn_config() -> ConnectionConfig {
    ConnectionConfig {
        connect_timeout_ms: 1_000,
        request_timeout_ms: 10_000,
        reconnect_attempts_max: 3,
        reconnect_backoff_ms: 20,
        reconnect_backoff_max_ms: 200,
        ..Default::default()
    }
}

/// What the producer was told.
#[derive(Default)]
struct Told {
    /// id -> (partition, offset) of every acknowledged record.
    acked: HashMap<u64, (u32, u64)>,
    /// Records whose outcome the producer reported as an error, by kind.
    failed: u64,
    /// Records `send` did not accept.
    not_accepted: u64,
    sent: u64,
    first_failure: Option<String>,
}

/// Sends records 0.. until `stop`, flushing every [`FLUSH_EVERY`];
/// records what each outcome was.
fn produce(addr: String, idempotent: bool, stop: Arc<AtomicBool>) -> (Told, ProducerStats) {
    let client = Client::connect_with(&addr, conn_config()).expect("connect the producer");
    let mut producer = Producer::new(
        client,
        ProducerConfig {
            acks: Acks::Leader,
            batch_bytes: 4 << 10,
            linger_ms: 1,
            timeout_ms: 10_000,
            idempotent,
            retries: true,
            delivery_timeout_ms: 60_000,
            retry_backoff_ms: 20,
            retry_backoff_max_ms: 200,
            ..Default::default()
        },
    );
    let mut told = Told::default();
    let mut ids = Vec::new();
    let mut id = 0u64;
    let settle = |producer: &mut Producer, ids: &mut Vec<u64>, told: &mut Told| {
        let results = producer.flush();
        assert_eq!(results.len(), ids.len(), "one result per record sent");
        for (id, r) in ids.drain(..).zip(results) {
            match r {
                Ok(offset) => {
                    let p = (id % u64::from(PARTITIONS)) as u32;
                    told.acked.insert(id, (p, offset));
                }
                Err(e) => {
                    told.failed += 1;
                    told.first_failure.get_or_insert_with(|| e.to_string());
                }
            }
        }
    };
    while !stop.load(Ordering::Acquire) {
        let value = value_of(id);
        let p = (id % u64::from(PARTITIONS)) as u32;
        match producer.send(&ProducerRecord::new(TOPIC, &value).partition(p)) {
            Ok(h) => {
                assert_eq!(h.index(), ids.len());
                ids.push(id);
                told.sent += 1;
            }
            Err(e) => {
                told.not_accepted += 1;
                told.first_failure.get_or_insert_with(|| e.to_string());
            }
        }
        id += 1;
        if id.is_multiple_of(BURST_RECORDS) {
            std::thread::sleep(Duration::from_millis(BURST_PAUSE_MS));
        }
        if ids.len() as u64 >= FLUSH_EVERY {
            settle(&mut producer, &mut ids, &mut told);
        }
    }
    settle(&mut producer, &mut ids, &mut told);
    (told, producer.stats())
}

/// Where a record is stored and the producer fields of its frame
/// (producer id, epoch, the record's own sequence).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct At {
    partition: u32,
    offset: u64,
    producer: (i64, i16, i64),
}

/// Every record id stored, with where: id -> every copy.
fn read_back(addr: &str) -> HashMap<u64, Vec<At>> {
    let mut seen: HashMap<u64, Vec<At>> = HashMap::new();
    for p in 0..PARTITIONS {
        let mut client = Client::connect_with(addr, conn_config()).expect("connect the reader");
        let end = client
            .list_offset(TOPIC, p, OffsetSpec::Latest)
            .expect("latest")
            .unwrap_or(0);
        let mut consumer = Consumer::new(
            client,
            ConsumerConfig {
                max_wait_ms: 50,
                ..Default::default()
            },
        );
        consumer
            .assign(TOPIC, p, OffsetSpec::Earliest)
            .expect("assign");
        let deadline = Instant::now() + Duration::from_secs(60);
        while consumer.position(TOPIC, p).unwrap_or(0) < end {
            assert!(Instant::now() < deadline, "partition {p} read stuck");
            for f in consumer.poll(Duration::from_millis(200)).expect("poll") {
                let h = f.header();
                let base = h.base_offset();
                let (pid, epoch, seq) = (
                    h.producer_id.get(),
                    h.producer_epoch.get(),
                    h.base_sequence.get(),
                );
                for r in f.records() {
                    let id = id_of(r.value.unwrap_or_default())
                        .unwrap_or_else(|| panic!("{p}/{}: not a test record", r.offset));
                    let record_seq = if pid < 0 {
                        -1
                    } else {
                        i64::from(seq) + (r.offset - base) as i64
                    };
                    seen.entry(id).or_default().push(At {
                        partition: p,
                        offset: r.offset,
                        producer: (pid, epoch, record_seq),
                    });
                }
            }
        }
    }
    seen
}

/// What interrupts the producer's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disruption {
    /// SIGKILL the server, start it again on the same directory.
    Kill,
    /// Reset every connection through the proxy (the server keeps running,
    /// and its producer state).
    ConnectionReset,
}

/// What one run saw.
struct Run {
    seed: u64,
    kills: u32,
    told: Told,
    stats: ProducerStats,
    /// id -> every copy, for ids stored more than once.
    duplicates: Vec<(u64, Vec<At>)>,
    /// Of `duplicates`, those whose copies carry the same producer id,
    /// epoch and sequence: one batch resent and not recognised.
    same_sequence: usize,
    /// Acknowledged ids absent, or present elsewhere than acknowledged.
    missing: Vec<(u64, (u32, u64))>,
    stored: usize,
    elapsed: Duration,
}

impl Run {
    fn report(&self, name: &str) -> String {
        format!(
            "{name}: seed {} disruptions {} in {:.1} s; sent {} acked {} failed {} not \
             accepted {}; stored {} distinct ids, {} stored twice or more ({} of them with \
             the same producer sequence twice), {} acknowledged missing; producer {:?}; \
             first failure {:?}",
            self.seed,
            self.kills,
            self.elapsed.as_secs_f64(),
            self.told.sent,
            self.told.acked.len(),
            self.told.failed,
            self.told.not_accepted,
            self.stored,
            self.duplicates.len(),
            self.same_sequence,
            self.missing.len(),
            self.stats,
            self.told.first_failure,
        )
    }
}

/// The runs of this file one at a time: each restarts a server 20 times
/// under a continuous produce, and three at once on a 2-core machine
/// overran their time budget.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run(idempotent: bool, disruption: Disruption) -> Run {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let seed = seed();
    let mut rng = Rng(seed);
    let started = Instant::now();
    let data = TempDir::new("strom-native-idem-crash");
    let args = ["--shard-ports", "off"];
    let mut server = TestServer::start_in(1, &data.path().join("data"), &args);
    Client::connect_with(server.addr(), conn_config())
        .expect("connect")
        .create_topic(TOPIC, PARTITIONS, &[])
        .expect("create the topic");
    let upstream = server.addr().parse().expect("server address");
    let proxy = FaultProxy::start(&[("native", upstream)]).expect("proxy");
    let via = proxy.addr("native").expect("link").to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let stop = stop.clone();
        std::thread::spawn(move || produce(via, idempotent, stop))
    };
    let mut kills = 0;
    while kills < KILLS {
        assert!(
            started.elapsed() < Duration::from_millis(RUN_BUDGET_MS),
            "seed {seed}: {kills} kills in {RUN_BUDGET_MS} ms"
        );
        std::thread::sleep(Duration::from_millis(rng.between(UP_MS_MIN, UP_MS_MAX)));
        let down = Duration::from_millis(rng.between(0, DOWN_MS_MAX));
        kills += 1;
        match disruption {
            Disruption::Kill => {
                server.kill();
                std::thread::sleep(down);
                server.start_again();
                let moved = server.addr().parse().expect("server address");
                proxy.set_upstream("native", moved).expect("move the link");
            }
            Disruption::ConnectionReset => {
                proxy.set("native", Fault::Reset).expect("reset");
                std::thread::sleep(down);
                proxy.set("native", Fault::Heal).expect("heal");
            }
        }
    }
    // Let the last resends through, then stop and collect.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Release);
    let (told, stats) = producer.join().expect("the producer thread");
    let seen = read_back(server.addr());
    let mut duplicates: Vec<(u64, Vec<At>)> = seen
        .iter()
        .filter(|(_, at)| at.len() > 1)
        .map(|(id, at)| (*id, at.clone()))
        .collect();
    duplicates.sort();
    let same_sequence = duplicates
        .iter()
        .filter(|(_, at)| {
            at.iter()
                .all(|a| a.producer == at[0].producer && a.producer.0 >= 0)
        })
        .count();
    let mut missing: Vec<(u64, (u32, u64))> = told
        .acked
        .iter()
        .filter(|(id, (p, o))| {
            !seen
                .get(id)
                .is_some_and(|s| s.iter().any(|a| (a.partition, a.offset) == (*p, *o)))
        })
        .map(|(id, at)| (*id, *at))
        .collect();
    missing.sort();
    Run {
        seed,
        kills,
        stored: seen.len(),
        told,
        stats,
        duplicates,
        same_sequence,
        missing,
        elapsed: started.elapsed(),
    }
}

fn check_no_duplicates(r: &Run, name: &str) {
    let report = r.report(name);
    println!("{report}");
    assert_eq!(r.kills, KILLS, "{report}");
    assert!(
        r.stats.resends_after_connection_loss > 0,
        "no resend crossed a disruption, the path was not exercised: {report}"
    );
    assert!(
        r.missing.is_empty(),
        "acknowledged records missing: {:?}; {report}",
        &r.missing[..r.missing.len().min(10)]
    );
    assert!(
        r.duplicates.is_empty(),
        "records stored twice: {:?}; {report}",
        &r.duplicates[..r.duplicates.len().min(5)]
    );
}

/// Issue 13's proof. On a server that forgets producers at a restart it
/// fails: a batch written just before a kill and resent after the restart
/// is stored again (observed: 80 records of 4 batches in one run, each
/// copy with the same producer id and sequence).
#[test]
fn an_idempotent_producer_stores_nothing_twice_across_20_kills() {
    check_no_duplicates(&run(true, Disruption::Kill), "idempotent, kills");
}

/// The resend path against a real server that keeps its producer state:
/// connections reset under batches in flight, 20 times. (How many resends
/// the server found stored, and so answered as duplicates, is printed in
/// the producer's counters: `resends_found_stored`.)
#[test]
fn an_idempotent_producer_stores_nothing_twice_across_20_connection_resets() {
    let r = run(true, Disruption::ConnectionReset);
    check_no_duplicates(&r, "idempotent, connection resets");
    // Else no reset fell between a write and its answer, and nothing was
    // shown (observed: 14 of 56 resends in one run).
    assert!(
        r.stats.resends_found_stored > 0,
        "no resend found its batch stored: {}",
        r.report("idempotent, connection resets")
    );
}

/// The evidence that the checks above can fail: the same kills with a
/// producer that resends without idempotence. It asserts only what holds
/// for any producer (acknowledged records present) and prints how many
/// records were stored twice (observed: 222 in one run).
#[test]
fn a_resending_producer_without_idempotence_is_checked_the_same_way() {
    let r = run(false, Disruption::Kill);
    let report = r.report("not idempotent, resends on, kills");
    println!("{report}");
    assert_eq!(r.kills, KILLS, "{report}");
    assert!(r.stats.resends_after_connection_loss > 0, "{report}");
    assert!(
        r.missing.is_empty(),
        "acknowledged records missing: {:?}; {report}",
        &r.missing[..r.missing.len().min(10)]
    );
    if r.duplicates.is_empty() {
        println!("no duplicates this time: no kill fell between a write and its answer");
    } else {
        println!(
            "stored twice (first 5): {:?}",
            &r.duplicates[..r.duplicates.len().min(5)]
        );
    }
}
