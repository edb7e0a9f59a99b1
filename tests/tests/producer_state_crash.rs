//! An idempotent Kafka producer (confluent-kafka, i.e. librdkafka) whose
//! retries span SIGKILLs of the server: issue 13, "Persisted producer
//! state". The producer writes uniquely numbered values continuously with
//! `enable.idempotence`, `acks=all` and a message timeout longer than the
//! test, while the server (`--cores 1`) is killed with SIGKILL and started
//! again on the same data directory and Kafka port [`KILLS`] times, at
//! seeded pseudo-random moments. Batches whose write reached the disk but
//! whose answer did not reach the producer are retried by librdkafka with
//! the same producer id, epoch and sequence; the restarted server must know
//! them (producer state rebuilt from the log and its snapshots) and answer
//! them as duplicates.
//!
//! Afterwards every partition is read back and the test asserts: no value
//! is stored twice; every value the producer got a delivery report for is
//! stored, at the offset the report named; no delivery failed. It also
//! asserts that the kills hit batches in flight (values produced before a
//! kill and delivered after it, and librdkafka's resent requests), so a
//! green run shows the path was exercised.
//!
//! It can fail: run once against a server whose restart forgets producer
//! state (the rebuilt table thrown away in `Shard::install_producers`), it
//! found 826 values stored twice (20 kills, 156k values); with the rebuild,
//! runs find none and 20-30 retried batches answered as duplicates.
//! `STROM_OPS_SEED=<n>` replays a run's kill delays.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use strom_tests::{skip_test, workspace_root, TempDir, TestServer};

/// SIGKILLs (each followed by a restart) per run.
const KILLS: u32 = 20;
/// Partitions of the topic under test.
const PARTITIONS: u32 = 3;
/// Values produced per second.
const RATE_PER_SEC: u32 = 4_000;
/// How long the server runs between a restart and the next kill.
const RUN_MS_MIN: u64 = 300;
const RUN_MS_MAX: u64 = 1_500;
/// How long it stays down after a kill (librdkafka keeps retrying).
const DOWN_MS_MAX: u64 = 300;
/// The Python side's bound after the last restart (flush, then read back).
const PYTHON_TAIL_MS: u64 = 150_000;

use strom_tests::SplitMix64 as Rng;

fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn json_u64(v: &str, key: &str) -> u64 {
    field(v, key)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no number {key:?} in {v}"))
}

/// The raw text of `"key": <value>` in a flat JSON line (numbers, or a
/// bracketed list of numbers), enough for the script's summary.
fn field<'a>(v: &'a str, key: &str) -> Option<&'a str> {
    let at = v.find(&format!("\"{key}\": "))? + key.len() + 4;
    let rest = &v[at..];
    let end = if rest.starts_with('[') {
        rest.find(']')? + 1
    } else {
        rest.find([',', '}'])?
    };
    Some(rest[..end].trim())
}

fn json_list(v: &str, key: &str) -> Vec<u64> {
    let raw = field(v, key).unwrap_or_else(|| panic!("no list {key:?} in {v}"));
    raw.trim_matches(['[', ']'])
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().expect("a number"))
        .collect()
}

#[test]
fn an_idempotent_librdkafka_producer_stores_nothing_twice_across_20_sigkills() {
    const TEST: &str = "producer_state_crash";
    if !python_has("confluent_kafka") {
        skip_test(
            TEST,
            "python3 cannot import confluent_kafka (run scripts/install-test-deps)",
        );
        return;
    }
    let seed = std::env::var("STROM_OPS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| now_secs().to_bits());
    println!("{TEST}: seed {seed} (STROM_OPS_SEED={seed} replays the kill delays)");
    let mut rng = Rng(seed);
    // The server logs each batch it answers as a duplicate at debug level
    // (`ops::owner`): how many retries the rebuilt state caught. This
    // test is alone in its binary: no other server takes the variable.
    std::env::set_var("STROM_LOG", "info,strom_server::ops::owner=debug");
    let work = TempDir::new("strom-producer-crash");
    let stop_file = work.path().join("stop");
    let kills_file = work.path().join("kills");
    let mut server = TestServer::start(1);
    server.keep_kafka_port();
    let bootstrap = server.kafka_addr().expect("a Kafka listener").to_owned();
    let script = workspace_root().join("tests/kafka/ck_producer_crash.py");
    let out_path = work.path().join("python.out");
    let err_path = work.path().join("python.err");
    let mut python = Command::new("python3")
        .arg(&script)
        .args([&bootstrap, "crash", &PARTITIONS.to_string()])
        .arg(&stop_file)
        .arg(&kills_file)
        .arg(RATE_PER_SEC.to_string())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("spawn python3");
    let python_err = || std::fs::read_to_string(&err_path).unwrap_or_default();
    let started = Instant::now();
    let mut kills = std::fs::File::create(&kills_file).expect("kills file");
    for kill in 1..=KILLS {
        std::thread::sleep(Duration::from_millis(rng.between(RUN_MS_MIN, RUN_MS_MAX)));
        if let Ok(Some(status)) = python.try_wait() {
            panic!(
                "the producer exited early ({status}) before kill {kill}:\n{}",
                python_err()
            );
        }
        writeln!(kills, "{:.6}", now_secs()).expect("record the kill");
        server.kill();
        std::thread::sleep(Duration::from_millis(rng.between(0, DOWN_MS_MAX)));
        server.start_again();
        assert_eq!(
            server.kafka_addr(),
            Some(bootstrap.as_str()),
            "restart {kill} kept the Kafka port"
        );
    }
    let killed_in = started.elapsed();
    // Let the producer catch up with the last restart, then stop it.
    std::thread::sleep(Duration::from_millis(1_000));
    std::fs::write(&stop_file, b"stop").expect("stop file");
    let deadline = Instant::now() + Duration::from_millis(PYTHON_TAIL_MS);
    let status = loop {
        match python.try_wait().expect("wait for python") {
            Some(s) => break s,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            None => {
                let _ = python.kill();
                let _ = python.wait();
                panic!(
                    "the producer did not finish within {PYTHON_TAIL_MS} ms:\n{}",
                    python_err()
                );
            }
        }
    };
    let out = std::fs::read_to_string(&out_path).unwrap_or_default();
    assert!(
        status.success(),
        "producer failed: {status}\n{out}\n{}",
        python_err()
    );
    let summary = out
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no summary:\n{}", python_err()));
    println!("{TEST}: {KILLS} kills in {killed_in:?}; {summary}");
    let stderr = server.stderr();
    let rebuilt = stderr.matches("producer state rebuilt").count();
    let from_snapshot = stderr
        .lines()
        .filter(|l| l.contains("producer state rebuilt") && !l.contains("snapshot_offset=-1"))
        .count();
    let duplicates_answered = stderr
        .matches("idempotent batch answered as a duplicate")
        .count();
    println!(
        "{TEST}: producer state rebuilt {rebuilt} times ({from_snapshot} from a snapshot); \
         {duplicates_answered} retried batches answered as duplicates"
    );

    assert_eq!(
        json_u64(summary, "duplicates"),
        0,
        "values stored twice: {summary}"
    );
    assert_eq!(
        json_u64(summary, "missing"),
        0,
        "delivered values not stored: {summary}"
    );
    assert_eq!(
        json_u64(summary, "misplaced"),
        0,
        "delivered values stored elsewhere than reported: {summary}"
    );
    assert_eq!(
        json_u64(summary, "error_count"),
        0,
        "delivery errors: {summary}"
    );
    assert_eq!(json_u64(summary, "unflushed"), 0, "{summary}");
    assert!(field(summary, "fatal") == Some("[]"), "{summary}");
    let delivered = json_u64(summary, "delivered");
    assert_eq!(delivered, json_u64(summary, "produced"), "{summary}");
    assert_eq!(delivered, json_u64(summary, "stored"), "{summary}");
    // The kills hit batches in flight, and librdkafka resent requests.
    let spans = json_list(summary, "kills");
    assert_eq!(spans.len(), KILLS as usize, "{summary}");
    let spanned = spans.iter().filter(|&&n| n > 0).count();
    assert!(
        spanned * 2 >= KILLS as usize,
        "only {spanned} of {KILLS} kills had deliveries spanning them: {summary}"
    );
    assert!(
        json_u64(summary, "resent") > 0,
        "librdkafka resent nothing: {summary}"
    );
    assert!(rebuilt > 0, "no partition's producer state was rebuilt");
    assert!(
        from_snapshot > 0,
        "no rebuild started from a snapshot (segments of 64 KiB roll often)"
    );
    assert!(
        duplicates_answered > 0,
        "no retry across a kill was answered as a duplicate"
    );
    assert!(
        !stderr.contains("panicked"),
        "the server panicked:\n{stderr}"
    );
}
