//! Kafka transactions (issue 13, "Transactions") with a real librdkafka
//! transactional producer (confluent-kafka) against a real strom-server
//! (`--cores 1`); the client side is `tests/kafka/ck_txn.py`.
//!
//! 1. commit, abort, commit: a read_committed consumer sees exactly the
//!    committed values, read_uncommitted every data value, neither a marker.
//! 2. zombie fencing: a second producer with the same transactional.id
//!    aborts the first's open transaction and fences it.
//! 3. a transaction left open is aborted by its timeout; the LSO advances
//!    and a plain record behind it becomes visible to read_committed.
//! 4. SIGKILL of the server with one transaction committed and one open:
//!    after the restart the committed one is visible to read_committed and
//!    the open one never is (its producer's successor aborts it).
//! 5. cluster mode refuses transactions (COORDINATOR_NOT_AVAILABLE: the
//!    markers and the coordinator's log are not replicated).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use strom_tests::{run_with_timeout, skip_test, workspace_root, TestServer};

/// Bound on one script run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn script() -> std::path::PathBuf {
    workspace_root().join("tests/kafka/ck_txn.py")
}

/// Runs one mode to completion; its `key=value` lines.
fn run(mode: &str, bootstrap: &str, topic: &str, extra: &[&str]) -> Vec<(String, String)> {
    let mut cmd = Command::new("python3");
    cmd.arg(script()).args([mode, bootstrap, topic]).args(extra);
    let (code, out, err) = run_with_timeout(&mut cmd, b"", SCRIPT_TIMEOUT);
    let out = String::from_utf8_lossy(&out).into_owned();
    assert_eq!(code, 0, "ck_txn.py {mode} failed:\n{out}\n{err}");
    println!("ck_txn.py {mode}: {}", out.lines().last().unwrap_or(""));
    parse(&out)
}

fn parse(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn get<'a>(kv: &'a [(String, String)], key: &str) -> &'a str {
    kv.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {key} in {kv:?}"))
}

fn set(kv: &[(String, String)], key: &str) -> BTreeSet<String> {
    get(kv, key)
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn count(kv: &[(String, String)], key: &str) -> usize {
    get(kv, key).split(',').filter(|s| !s.is_empty()).count()
}

fn values(prefix: &str, range: std::ops::Range<u32>) -> BTreeSet<String> {
    range.map(|i| format!("{prefix}-{i}")).collect()
}

fn skip_without_client(test: &str) -> bool {
    if python_has("confluent_kafka") {
        return false;
    }
    skip_test(
        test,
        "python3 cannot import confluent_kafka (run scripts/install-test-deps)",
    );
    true
}

#[test]
fn read_committed_sees_exactly_the_committed_values() {
    if skip_without_client("kafka_txn_basic") {
        return;
    }
    let server = TestServer::start(1);
    let kv = run(
        "basic",
        server.kafka_addr().expect("kafka"),
        "txn-basic",
        &[],
    );
    let committed: BTreeSet<String> = values("c", 0..20);
    let aborted = values("a", 0..10);
    assert_eq!(set(&kv, "committed"), committed, "read_committed");
    assert_eq!(count(&kv, "committed"), 20, "no duplicate");
    let all: BTreeSet<String> = committed.union(&aborted).cloned().collect();
    assert_eq!(set(&kv, "uncommitted"), all, "read_uncommitted");
    assert_eq!(count(&kv, "uncommitted"), 30, "no marker read as data");
    // A native consumer (strom-client, through the CLI) reads every data
    // record and no marker: it stops after the 30 values for lack of a
    // 31st.
    let mut cmd = Command::new(strom_tests::strom_bin());
    cmd.args(["consume", "txn-basic", "--from-beginning", "--count", "31"])
        .args(["--idle-timeout-ms", "3000", "--server", server.addr()]);
    let (code, out, err) = run_with_timeout(&mut cmd, b"", SCRIPT_TIMEOUT);
    let out = String::from_utf8_lossy(&out);
    let native: BTreeSet<String> = out.lines().map(str::to_owned).collect();
    assert_ne!(code, 0, "a 31st record was printed:\n{out}");
    assert!(err.contains("after 30 records"), "{err}");
    assert_eq!(out.lines().count(), 30, "{out}");
    assert_eq!(native, all, "native consumer");
    // read_committed over the native protocol: the server leaves out the
    // aborted transaction (between the two committed ones) and the markers;
    // the consumer still moves past them, to the second committed one.
    let mut cmd = Command::new(strom_tests::strom_bin());
    cmd.args(["consume", "txn-basic", "--from-beginning", "--count", "21"])
        .args(["--read-committed", "--idle-timeout-ms", "3000"])
        .args(["--server", server.addr()]);
    let (code, out, err) = run_with_timeout(&mut cmd, b"", SCRIPT_TIMEOUT);
    let out = String::from_utf8_lossy(&out);
    let native: BTreeSet<String> = out.lines().map(str::to_owned).collect();
    assert_ne!(code, 0, "a 21st record was printed:\n{out}");
    assert!(err.contains("after 20 records"), "{err}");
    assert_eq!(out.lines().count(), 20, "{out}");
    assert_eq!(native, committed, "native read_committed consumer");
}

#[test]
fn a_second_producer_with_the_same_id_fences_the_first() {
    if skip_without_client("kafka_txn_fence") {
        return;
    }
    let server = TestServer::start(1);
    let kv = run(
        "fence",
        server.kafka_addr().expect("kafka"),
        "txn-fence",
        &[],
    );
    let fenced = get(&kv, "fenced");
    assert!(
        fenced.contains("FENCED") || fenced.contains("INVALID_PRODUCER_EPOCH"),
        "the first producer was not fenced: {fenced}"
    );
    assert_eq!(set(&kv, "committed"), values("ok", 0..5));
    assert_eq!(count(&kv, "committed"), 5);
}

#[test]
fn an_abandoned_transaction_is_aborted_by_its_timeout() {
    if skip_without_client("kafka_txn_timeout") {
        return;
    }
    let server = TestServer::start(1);
    let timeout_ms = 3_000u64;
    let kv = run(
        "timeout",
        server.kafka_addr().expect("kafka"),
        "txn-timeout",
        &[&timeout_ms.to_string()],
    );
    assert!(
        set(&kv, "early").is_empty(),
        "nothing is stable while the transaction is open"
    );
    assert_eq!(
        set(&kv, "late"),
        ["plain".to_owned()].into_iter().collect(),
        "the plain record became visible, the aborted values never"
    );
    let after: f64 = get(&kv, "seen_after_s").parse().expect("seen_after_s");
    assert!(
        after < (timeout_ms as f64) / 1000.0 + 10.0,
        "visible only after {after} s"
    );
    let all = set(&kv, "uncommitted");
    assert!(all.contains("plain") && values("open", 0..4).is_subset(&all));
    // A warning (scripts/test runs servers with STROM_LOG=warn).
    assert!(server.stderr().contains("transaction timed out"));
}

#[test]
fn after_a_sigkill_committed_data_stays_visible_and_open_data_never_is() {
    if skip_without_client("kafka_txn_crash") {
        return;
    }
    let mut server = TestServer::start(1);
    server.keep_kafka_port();
    let bootstrap = server.kafka_addr().expect("kafka").to_owned();
    let mut prepare = Command::new("python3")
        .arg(script())
        .args(["prepare", &bootstrap, "txn-crash"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    let stdout = prepare.stdout.take().expect("stdout");
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let mut ready = false;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read");
        if line.starts_with("ready=") {
            ready = true;
            break;
        }
        assert!(Instant::now() < deadline, "prepare did not get ready");
    }
    assert!(ready, "prepare ended before it was ready");
    // Txn A's EndTxn answered (durable); txn B open with flushed data.
    server.kill();
    let _ = prepare.kill();
    let _ = prepare.wait();
    server.start_again();
    assert_eq!(server.kafka_addr(), Some(bootstrap.as_str()));
    let kv = run("check", &bootstrap, "txn-crash", &[]);
    let a = values("A", 0..10);
    let b = values("B", 0..10);
    let c = values("C", 0..10);
    let committed: BTreeSet<String> = a.union(&c).cloned().collect();
    assert_eq!(
        set(&kv, "committed"),
        committed,
        "read_committed after restart"
    );
    assert_eq!(count(&kv, "committed"), 20);
    let all: BTreeSet<String> = committed.union(&b).cloned().collect();
    assert_eq!(
        set(&kv, "uncommitted"),
        all,
        "B's data is in the log, aborted"
    );
}

#[test]
fn cluster_mode_refuses_transactions() {
    if skip_without_client("kafka_txn_cluster") {
        return;
    }
    let cluster = strom_tests::cluster::Cluster::start();
    let kv = run("refused", &cluster.bootstrap(), "unused", &[]);
    assert_eq!(get(&kv, "brokers"), "3", "the cluster answers metadata");
    let outcome = get(&kv, "outcome");
    assert_ne!(
        outcome, "\"initialized\"",
        "a transactional producer started"
    );
    assert!(
        outcome.contains("COORDINATOR_NOT_AVAILABLE") || outcome.contains("TIMED_OUT"),
        "{outcome}"
    );
}
