//! Exactly-once consume-transform-produce (issue 13, "Transactions") with
//! confluent-kafka: `tests/kafka/ck_eos.py process` reads an input topic of
//! seeded numbers, writes `7 * v + 3` for each to an output topic and
//! commits its input offsets in the same transaction
//! (`send_offsets_to_transaction`). The test SIGKILLs the processor at
//! [`KILLS`] seeded random points and starts it again (its init fences and
//! aborts the killed one's transaction; it resumes from the committed
//! offsets); after every second processor kill the server is SIGKILLed
//! and restarted too (transactions open or being committed in it: the
//! coordinator's log and the partitions' transaction state are rebuilt
//! from disk). Then it reads the output with read_committed and compares it
//! with a reference computed here: every input exactly once, no duplicate,
//! no gap. `STROM_OPS_SEED=<n>` replays a run.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use strom_tests::{run_with_timeout, skip_test, workspace_root, TempDir, TestServer};

/// Input records.
const RECORDS: u64 = 5_000;
/// Processor SIGKILLs per run.
const KILLS: u32 = 6;
/// Delay before each kill (the processor needs about a second to start).
const RUN_MS_MIN: u64 = 1_000;
const RUN_MS_MAX: u64 = 3_000;
/// Pause after each transaction of the processor (10 records): about 10 s
/// of pacing for the whole input, so that at least the first two kills
/// (each within 3 s of a start) land before it can finish, however fast the
/// machine (a CI run finished the input before the second kill).
const PACE_MS: u64 = 20;
/// Bound on the last run of the processor, to the end of the input.
const FINISH_TIMEOUT: Duration = Duration::from_secs(180);

use strom_tests::SplitMix64 as Rng;

fn script() -> std::path::PathBuf {
    workspace_root().join("tests/kafka/ck_eos.py")
}

fn run(args: &[&str], timeout: Duration) -> String {
    let mut cmd = Command::new("python3");
    cmd.arg(script()).args(args);
    let (code, out, err) = run_with_timeout(&mut cmd, b"", timeout);
    let out = String::from_utf8_lossy(&out).into_owned();
    assert_eq!(code, 0, "ck_eos.py {args:?} failed:\n{out}\n{err}");
    out
}

fn spawn_processor(bootstrap: &str, log: &std::path::Path) -> Child {
    Command::new("python3")
        .arg(script())
        .args(["process", bootstrap, "eos-in", "eos-out", "eos-group"])
        .env("STROM_EOS_PACE_MS", PACE_MS.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("spawn python3")
}

#[test]
fn consume_transform_produce_is_exactly_once_across_processor_sigkills() {
    const TEST: &str = "kafka_eos";
    let has = Command::new("python3")
        .args(["-c", "import confluent_kafka"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !has {
        skip_test(
            TEST,
            "python3 cannot import confluent_kafka (run scripts/install-test-deps)",
        );
        return;
    }
    let seed = std::env::var("STROM_OPS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    println!("{TEST}: seed {seed} (STROM_OPS_SEED={seed} replays it)");
    let mut rng = Rng(seed);
    let work = TempDir::new("strom-eos");
    let inputs: Vec<u64> = (0..RECORDS).map(|_| rng.next_u64() % 1_000_000).collect();
    let values_file = work.path().join("values");
    let text: String = inputs.iter().map(|v| format!("{v}\n")).collect();
    std::fs::write(&values_file, text).expect("values file");
    let mut server = TestServer::start(1);
    server.keep_kafka_port();
    let bootstrap = server.kafka_addr().expect("kafka").to_owned();
    run(
        &[
            "setup",
            &bootstrap,
            "eos-in",
            "eos-out",
            values_file.to_str().expect("utf-8 path"),
        ],
        Duration::from_secs(120),
    );
    let log = work.path().join("processor.err");
    let mut killed = 0;
    for kill in 1..=KILLS {
        let mut p = spawn_processor(&bootstrap, &log);
        let delay = RUN_MS_MIN + rng.next_u64() % (RUN_MS_MAX - RUN_MS_MIN + 1);
        std::thread::sleep(Duration::from_millis(delay));
        match p.try_wait() {
            Ok(Some(status)) => {
                let err = std::fs::read_to_string(&log).unwrap_or_default();
                assert!(status.success(), "processor failed: {status}\n{err}");
                println!("{TEST}: the processor finished before kill {kill}");
                break;
            }
            _ => {
                // SIGKILL: no abort, no close.
                let _ = p.kill();
                let _ = p.wait();
                killed += 1;
                println!("{TEST}: processor killed after {delay} ms");
                if kill % 2 == 0 {
                    server.kill();
                    server.start_again();
                    assert_eq!(server.kafka_addr(), Some(bootstrap.as_str()));
                    println!("{TEST}: server killed and restarted");
                }
            }
        }
    }
    assert!(
        killed >= 2,
        "only {killed} kills landed before the processor finished: the run proves little"
    );
    // The last run to the end of the input.
    let mut p = spawn_processor(&bootstrap, &log);
    let deadline = Instant::now() + FINISH_TIMEOUT;
    let status = loop {
        match p.try_wait().expect("wait") {
            Some(s) => break s,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            None => {
                let _ = p.kill();
                let _ = p.wait();
                panic!(
                    "the processor did not finish:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        }
    };
    assert!(
        status.success(),
        "processor failed: {status}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let out = run(&["read", &bootstrap, "eos-out"], Duration::from_secs(120));
    let line = |k: &str| -> Vec<String> {
        out.lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or("")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let progress = line("values=");
    let uncommitted: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("uncommitted="))
        .and_then(|n| n.parse().ok())
        .expect("uncommitted count");
    println!(
        "{TEST}: {killed} kills, {} outputs read committed, {uncommitted} data records in the log",
        progress.len()
    );
    let values = progress;
    let keys = line("keys=");
    assert_eq!(values.len(), keys.len());
    // The reference: input i went to partition i % 2 at offset i / 2 (the
    // setup produced them in order, one producer, round robin).
    let mut expected: BTreeMap<String, String> = BTreeMap::new();
    for (i, v) in inputs.iter().enumerate() {
        let i = i as u64;
        expected.insert(format!("{}:{}", i % 2, i / 2), (7 * v + 3).to_string());
    }
    let mut got: BTreeMap<String, String> = BTreeMap::new();
    let mut duplicates = 0;
    for (k, v) in keys.into_iter().zip(values) {
        if got.insert(k, v).is_some() {
            duplicates += 1;
        }
    }
    assert_eq!(duplicates, 0, "an input was reflected twice");
    let missing: Vec<&String> = expected.keys().filter(|k| !got.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "{} inputs missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(got, expected, "the output equals the reference");
    println!("{TEST}: {RECORDS} inputs, each reflected exactly once");
}
