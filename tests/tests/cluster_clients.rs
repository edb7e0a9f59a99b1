//! Clients through leader kills on a real 3-node cluster
//! ([`strom_tests::cluster`], Raft traffic through the harness's proxy only
//! so that `Cluster::kill` can reset a dead node's lingering connections).
//! Each test produces uniquely numbered records while the test SIGKILLs the
//! current leader of partition 0 [`KILLS`] times (restarting it each time
//! from its data directory), then reads the whole topic back and checks:
//!
//! - `strom_client_*`: strom-client's idempotent producer (acks=all) given
//!   every node's native address, or only a follower's
//!   (`..._given_a_follower`: it must find the leader itself; that
//!   follower is killed too, once, after the leader kills), and its
//!   consumer given the same bootstrap. The history checker
//!   ([`strom_tests::checker`]) judges each partition's log: every
//!   acknowledged record at its acknowledged offset, none twice, none never
//!   sent, none that was definitely refused; and each partition's records
//!   are in send order.
//! - `confluent_kafka_*`: librdkafka through confluent-kafka
//!   (`tests/kafka/ck_cluster_*.py`), `enable.idempotence=true`,
//!   `acks=all`, bootstrap = the three Kafka listeners: every acknowledged
//!   record read back at its acknowledged offset, no record twice, each
//!   partition in send order.
//! - `kafka_python_*`: kafka-python (`tests/kafka/kp_cluster_*.py`), acks=all
//!   with retries. Without idempotence (`..._at_least_once`) a resend can
//!   store a record twice: duplicates are allowed only of records whose
//!   first attempt was not acknowledged, i.e. records not acknowledged at
//!   all, or handed to the client before a kill (at most the moment the
//!   killed process was reaped) and acknowledged after it began. No
//!   acknowledged record may be lost. kafka-python 3.x also has an
//!   idempotent producer (its default): `..._idempotent` runs it and allows
//!   no duplicate.
//!
//! - `cli_follows_the_controller_and_the_leader`: the `strom` CLI with a
//!   bootstrap list (its first node not the controller, or dead) creates,
//!   produces with `--idempotent` before and after a leader kill, and
//!   consumes everything in order through a follower alone.
//!
//! Failover times (kill to the next [`ACKS_AFTER_KILL`] acknowledgements)
//! are printed. A missing Python module fails under `CI=true` and is
//! recorded as skipped elsewhere (`scripts/install-test-deps` installs
//! them). Every wait is bounded ([`BUDGET`]); every child process is
//! killed when the test ends. One cluster at a time in this binary.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use strom_client::{
    Acks, Client, ConnectionConfig, Consumer, ConsumerConfig, Error, OffsetSpec, Producer,
    ProducerConfig, ProducerRecord,
};
use strom_tests::checker::{self, FinalRead, History, Outcome, ReadEntry};
use strom_tests::cluster::Cluster;
use strom_tests::{server_bin, skip_test, workspace_root};

const TOPIC: &str = "clients";
/// Partitions of the topic (partition 0's leader is the one killed).
const PARTITIONS: u32 = 2;
/// Leader kills per test.
const KILLS: usize = 2;
/// Records of partition 0 acknowledged between two kills, and after the
/// last restart before the producer is stopped.
const ACKS_BETWEEN_KILLS: u64 = 150;
/// Acknowledgements of partition 0 after a kill that mark the failover as
/// done.
const ACKS_AFTER_KILL: u64 = 20;
/// One test's whole time, from the cluster's start.
const BUDGET: Duration = Duration::from_secs(150);
/// A Python script's own limit on producing (it stops earlier on "stop").
const SCRIPT_PRODUCE_LIMIT_S: u64 = 110;
/// Records strom-client's producer sends per flush.
const RECORDS_PER_FLUSH: u64 = 20;
/// Pause between two flushes of strom-client's producer, and between two
/// polls of a progress counter.
const PAUSE_MS: u64 = 2;

/// One cluster at a time in this binary (taken after the binaries are
/// built, so that no scenario clock runs during the build).
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    let _ = server_bin();
    guard
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The index `i` of a value `"{prefix}-{i}"`.
fn index_of(value: &str, prefix: &str) -> Option<u64> {
    value.strip_prefix(prefix)?.strip_prefix('-')?.parse().ok()
}

// ------------------------------------------------------------------ kills

/// One leader kill: the node, the wall-clock span of the kill (from just
/// before SIGKILL to the reaping of the process) and the failover time.
#[derive(Debug, Clone, Copy)]
struct Kill {
    node: u64,
    /// It led partition 0 (else: the extra kill of a bootstrap node).
    leader: bool,
    started_ms: u64,
    reaped_ms: u64,
    failover: Duration,
}

/// Waits until `acked()` reaches `target`; `Err` at `deadline`.
fn wait_acked(acked: &dyn Fn() -> u64, target: u64, deadline: Instant) -> Result<(), String> {
    while acked() < target {
        if Instant::now() >= deadline {
            return Err(format!(
                "only {} acknowledged, waiting for {target}",
                acked()
            ));
        }
        std::thread::sleep(Duration::from_millis(PAUSE_MS));
    }
    Ok(())
}

/// [`KILLS`] times: waits for [`ACKS_BETWEEN_KILLS`] more
/// acknowledgements, SIGKILLs partition 0's leader, waits for
/// [`ACKS_AFTER_KILL`] more (the failover), restarts the node. Then, with
/// `also`, the same for that node, whatever its role. Then waits for
/// [`ACKS_BETWEEN_KILLS`] more.
fn kill_leaders(
    cluster: &mut Cluster,
    acked: &dyn Fn() -> u64,
    also: Option<u64>,
    deadline: Instant,
) -> Result<Vec<Kill>, String> {
    let mut kills = Vec::new();
    let rounds = KILLS + usize::from(also.is_some());
    for round in 0..rounds {
        wait_acked(acked, acked() + ACKS_BETWEEN_KILLS, deadline)
            .map_err(|e| format!("before kill {round}: {e}"))?;
        let leader = match also.filter(|_| round == KILLS) {
            Some(node) => node,
            None => {
                cluster
                    .wait_leader(&cluster.running(), TOPIC, 0, deadline)
                    .ok_or_else(|| format!("kill {round}: no leader of {TOPIC}/0"))?
                    .0
            }
        };
        let before = acked();
        let started_ms = wall_ms();
        let killed_at = Instant::now();
        cluster.kill(leader);
        let reaped_ms = wall_ms();
        wait_acked(acked, before + ACKS_AFTER_KILL, deadline)
            .map_err(|e| format!("after kill {round} of node {leader}: {e}"))?;
        let failover = killed_at.elapsed();
        cluster.restart(leader);
        eprintln!("kill {round}: node {leader}, {ACKS_AFTER_KILL} acks again after {failover:?}");
        kills.push(Kill {
            node: leader,
            leader: round < KILLS,
            started_ms,
            reaped_ms,
            failover,
        });
    }
    wait_acked(acked, acked() + ACKS_BETWEEN_KILLS, deadline)
        .map_err(|e| format!("after the last restart: {e}"))?;
    Ok(kills)
}

fn failover_summary(kills: &[Kill]) -> String {
    let leader: Vec<Duration> = kills
        .iter()
        .filter(|k| k.leader)
        .map(|k| k.failover)
        .collect();
    format!(
        "{} kills (nodes {:?}), leader failovers (kill to {ACKS_AFTER_KILL} more acks) {:?}",
        kills.len(),
        kills.iter().map(|k| k.node).collect::<Vec<_>>(),
        leader
    )
}

// ------------------------------------------------------------ strom-client

fn client_config() -> ConnectionConfig {
    ConnectionConfig {
        connect_timeout_ms: 2_000,
        request_timeout_ms: 10_000,
        ..ConnectionConfig::default()
    }
}

/// What strom-client's producer thread did.
struct ProducerRun {
    /// Index = partition.
    histories: Vec<History>,
    stats: strom_client::ProducerStats,
    sent: u64,
    unknown: u64,
}

/// Produces `"sc-{i}"` to partition `i % PARTITIONS` through one
/// idempotent producer until `stop`, counting partition 0's
/// acknowledgements in `acked0`.
fn produce_with_strom_client(
    bootstrap: String,
    stop: Arc<AtomicBool>,
    acked0: Arc<AtomicU64>,
    deadline: Instant,
) -> Result<ProducerRun, String> {
    let client = Client::connect_with(&bootstrap, client_config())
        .map_err(|e| format!("connect the producer to {bootstrap}: {e}"))?;
    let mut producer = Producer::new(
        client,
        ProducerConfig {
            acks: Acks::Durable,
            idempotent: true,
            linger_ms: 2,
            timeout_ms: 5_000,
            delivery_timeout_ms: 60_000,
            retry_backoff_ms: 20,
            retry_backoff_max_ms: 500,
            ..ProducerConfig::default()
        },
    );
    let mut run = ProducerRun {
        histories: (0..PARTITIONS).map(|_| History::new()).collect(),
        stats: producer.stats(),
        sent: 0,
        unknown: 0,
    };
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        let mut pending = Vec::new();
        for _ in 0..RECORDS_PER_FLUSH {
            let i = run.sent;
            run.sent += 1;
            let p = (i % u64::from(PARTITIONS)) as u32;
            let value = format!("sc-{i}");
            let op = run.histories[p as usize].invoke(0, value.clone());
            let record = ProducerRecord::new(TOPIC, value.as_bytes()).partition(p);
            match producer.send(&record) {
                Ok(_) => pending.push((p, op)),
                // Not accepted: never sent.
                Err(_) => run.histories[p as usize].complete(op, Outcome::Failed),
            }
        }
        let results = producer.flush();
        if results.len() != pending.len() {
            return Err(format!(
                "{} results for {} records",
                results.len(),
                pending.len()
            ));
        }
        for ((p, op), r) in pending.into_iter().zip(results) {
            let outcome = match r {
                Ok(offset) => {
                    if p == 0 {
                        acked0.fetch_add(1, Ordering::SeqCst);
                    }
                    Outcome::Ok {
                        offset,
                        epoch: None,
                    }
                }
                // Definitely not stored (no attempt can have stored it).
                Err(Error::DeliveryTimeout { .. }) => Outcome::Failed,
                Err(_) => {
                    run.unknown += 1;
                    Outcome::Unknown
                }
            };
            run.histories[p as usize].complete(op, outcome);
        }
        std::thread::sleep(Duration::from_millis(PAUSE_MS));
    }
    run.stats = producer.stats();
    Ok(run)
}

/// Every committed record of every partition, read with strom-client's
/// consumer given `bootstrap`, as one checker read per partition.
fn read_with_strom_client(bootstrap: &str, deadline: Instant) -> Result<Vec<FinalRead>, String> {
    let client = Client::connect_with(bootstrap, client_config())
        .map_err(|e| format!("connect the consumer to {bootstrap}: {e}"))?;
    let mut consumer = Consumer::new(client, ConsumerConfig::default());
    let mut covered = Vec::new();
    for p in 0..PARTITIONS {
        let c = consumer.client();
        let start = c
            .list_offset(TOPIC, p, OffsetSpec::Earliest)
            .map_err(|e| format!("earliest of {TOPIC}/{p}: {e}"))?
            .unwrap_or(0);
        let end = c
            .list_offset(TOPIC, p, OffsetSpec::Latest)
            .map_err(|e| format!("latest of {TOPIC}/{p}: {e}"))?
            .unwrap_or(0);
        consumer
            .assign(TOPIC, p, OffsetSpec::At(start))
            .map_err(|e| format!("assign {TOPIC}/{p}: {e}"))?;
        covered.push(start..end);
    }
    let mut entries: Vec<BTreeMap<u64, String>> = vec![BTreeMap::new(); PARTITIONS as usize];
    let done = |c: &Consumer| {
        (0..PARTITIONS).all(|p| c.position(TOPIC, p).unwrap_or(0) >= covered[p as usize].end)
    };
    while !done(&consumer) {
        if Instant::now() >= deadline {
            return Err("the read did not reach the end offsets in time".into());
        }
        let frames = consumer
            .poll(Duration::from_millis(500))
            .map_err(|e| format!("poll: {e}"))?;
        for f in frames {
            for r in f.records() {
                let value = String::from_utf8_lossy(r.value.unwrap_or_default()).into_owned();
                if let Some(prev) = entries[f.partition as usize].insert(r.offset, value.clone()) {
                    return Err(format!(
                        "offset {} of {TOPIC}/{} handed out twice ({prev:?}, then {value:?})",
                        r.offset, f.partition
                    ));
                }
            }
        }
    }
    Ok((0..PARTITIONS as usize)
        .map(|p| FinalRead {
            source: format!("strom-client consumer via {bootstrap}, partition {p}"),
            covered: covered[p].clone(),
            entries: entries[p]
                .iter()
                .filter(|(o, _)| covered[p].contains(o))
                .map(|(&offset, value)| ReadEntry {
                    offset,
                    epoch: None,
                    value: value.clone(),
                })
                .collect(),
        })
        .collect())
}

/// Whether each read's values are in send order (their indices grow with
/// the offset); the first pair that is not, if any.
fn out_of_order(read: &FinalRead, prefix: &str) -> Option<String> {
    let mut last: Option<(u64, u64)> = None;
    for e in &read.entries {
        let Some(i) = index_of(&e.value, prefix) else {
            continue;
        };
        if let Some((at, j)) = last {
            if i <= j {
                return Some(format!(
                    "{}: {prefix}-{j} at offset {at} before {prefix}-{i} at offset {}",
                    read.source, e.offset
                ));
            }
        }
        last = Some((e.offset, i));
    }
    None
}

/// The strom-client scenario; `follower_only`: the producer and the
/// consumer are given one follower's address only.
fn strom_client_through_leader_kills(test: &str, follower_only: bool) {
    let _one = serial();
    let mut cluster = Cluster::start_proxied();
    let deadline = Instant::now() + BUDGET;
    cluster.create_topic(TOPIC, PARTITIONS, deadline);
    // Given a follower only, that node is also killed once at the end
    // (whatever it is by then): the client must move on from its
    // bootstrap node too.
    let (bootstrap, also) = if follower_only {
        let leader = cluster
            .wait_leader(&cluster.running(), TOPIC, 0, deadline)
            .expect("a leader of partition 0")
            .0;
        let follower = (1..=3).find(|&n| n != leader).expect("a follower");
        eprintln!("{test}: leader {leader}, bootstrap = follower {follower} only");
        (cluster.native(follower), Some(follower))
    } else {
        (cluster.native_bootstrap(), None)
    };
    let stop = Arc::new(AtomicBool::new(false));
    let acked0 = Arc::new(AtomicU64::new(0));
    let producer: JoinHandle<Result<ProducerRun, String>> = {
        let (bootstrap, stop, acked0) = (bootstrap.clone(), stop.clone(), acked0.clone());
        std::thread::spawn(move || produce_with_strom_client(bootstrap, stop, acked0, deadline))
    };
    let kills = {
        let acked = || acked0.load(Ordering::SeqCst);
        kill_leaders(&mut cluster, &acked, also, deadline)
    };
    stop.store(true, Ordering::SeqCst);
    let run = producer
        .join()
        .expect("the producer thread")
        .unwrap_or_else(|e| panic!("{test}: producer: {e}"));
    let kills = kills.unwrap_or_else(|e| {
        panic!(
            "{test}: {e}\nproducer stats {:?}\n{}",
            run.stats,
            cluster.stderr_excerpts()
        )
    });
    let reads = read_with_strom_client(&bootstrap, deadline)
        .unwrap_or_else(|e| panic!("{test}: read: {e}\n{}", cluster.stderr_excerpts()));
    let mut acked = 0;
    for (p, (history, read)) in run.histories.iter().zip(&reads).enumerate() {
        let report = checker::check(history.ops(), std::slice::from_ref(read))
            .expect("a well-formed history");
        eprintln!("{test}: partition {p}:\n{report}");
        assert!(report.is_valid(), "{test}: partition {p}:\n{report}");
        if let Some(bad) = out_of_order(read, "sc") {
            panic!("{test}: partition {p} out of send order: {bad}");
        }
        acked += report.ok;
    }
    eprintln!(
        "{test}: {} records sent, {acked} acknowledged, {} undetermined; {}; producer {:?}",
        run.sent,
        run.unknown,
        failover_summary(&kills),
        run.stats
    );
    assert!(
        acked as u64 >= (kills.len() as u64 + 1) * ACKS_BETWEEN_KILLS,
        "{test}: too few acknowledged: {acked}"
    );
    cluster.assert_no_panic(test);
}

#[test]
fn strom_client_produces_and_consumes_through_leader_kills() {
    strom_client_through_leader_kills(
        "strom_client_produces_and_consumes_through_leader_kills",
        false,
    );
}

#[test]
fn strom_client_given_a_follower_finds_the_leader_through_leader_kills() {
    strom_client_through_leader_kills(
        "strom_client_given_a_follower_finds_the_leader_through_leader_kills",
        true,
    );
}

// ------------------------------------------------------------- the CLI

/// Runs `strom ARGS --server SERVER` with `stdin`; (exit code, stdout,
/// stderr).
fn strom(server: &str, args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut cmd = Command::new(strom_tests::strom_bin());
    cmd.args(args).arg("--server").arg(server);
    let (code, out, err) =
        strom_tests::run_with_timeout(&mut cmd, stdin.as_bytes(), Duration::from_secs(60));
    (code, String::from_utf8_lossy(&out).into_owned(), err)
}

/// The CLI given a bootstrap list: creates the topic on the controller
/// whatever node comes first, produces with --idempotent, produces again
/// after the leader was killed with the dead node first in the list, and
/// reads everything back in order through a follower alone; `topic
/// describe` names the leader.
#[test]
fn cli_follows_the_controller_and_the_leader() {
    let test = "cli_follows_the_controller_and_the_leader";
    let _one = serial();
    let mut cluster = Cluster::start_proxied();
    let deadline = Instant::now() + BUDGET;
    let all = cluster.native_bootstrap();
    // Every node in turn first: whichever is not the controller passes
    // the create on (NotController), so the topic exists once.
    for (i, id) in (1..=3u64).enumerate() {
        let others: Vec<String> = (1..=3u64)
            .filter(|&n| n != id)
            .map(|n| cluster.native(n))
            .collect();
        let list = format!("{},{}", cluster.native(id), others.join(","));
        let (code, out, err) = strom(&list, &["topic", "create", &format!("cli-{i}")], "");
        assert_eq!(code, 0, "{test}: create via {list}: {err}");
        assert_eq!(out, format!("Created topic cli-{i}.\n"));
    }
    let lines = |tag: &str| -> String { (0..100).map(|i| format!("{tag}{i}\n")).collect() };
    let produce = |server: &str, input: &str| {
        let (code, _, err) = strom(
            server,
            &["produce", "cli-0", "--idempotent", "--acks", "durable"],
            input,
        );
        assert_eq!(code, 0, "{test}: produce via {server}: {err}");
    };
    produce(&all, &lines("a"));
    let leader = cluster
        .wait_leader(&cluster.running(), "cli-0", 0, deadline)
        .expect("a leader")
        .0;
    cluster.kill(leader);
    let rest: Vec<String> = (1..=3u64)
        .filter(|&n| n != leader)
        .map(|n| cluster.native(n))
        .collect();
    let dead_first = format!("{},{}", cluster.native(leader), rest.join(","));
    produce(&dead_first, &lines("b"));
    cluster.restart(leader);
    let now_leader = cluster
        .wait_leader(&cluster.running(), "cli-0", 0, deadline)
        .expect("a leader")
        .0;
    let follower = (1..=3u64).find(|&n| n != now_leader).expect("a follower");
    let (code, out, err) = strom(
        &cluster.native(follower),
        &[
            "consume",
            "cli-0",
            "--from-beginning",
            "--count",
            "200",
            "--idle-timeout-ms",
            "20000",
        ],
        "",
    );
    assert_eq!(code, 0, "{test}: consume via node {follower}: {err}");
    assert_eq!(
        out,
        lines("a") + &lines("b"),
        "{test}: every line once, in order"
    );
    let (code, out, err) = strom(
        &cluster.native(follower),
        &["topic", "describe", "cli-0"],
        "",
    );
    assert_eq!(code, 0, "{test}: describe: {err}");
    assert!(
        out.contains("HighWatermark: ") && out.contains(&format!("Leader: {now_leader}")),
        "{test}: {out}"
    );
    let hw: u64 = out
        .split("HighWatermark: ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(hw >= 200, "{test}: the leader's high watermark: {out}");
    cluster.assert_no_panic(test);
}

// ------------------------------------------------------------- Python

fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn script(name: &str) -> std::path::PathBuf {
    workspace_root().join("tests/kafka").join(name)
}

/// A Python producer script running beside the test: its "PROGRESS n"
/// lines are counted as they come, the rest kept for the end.
struct PyProducer {
    child: Child,
    stdin: Option<ChildStdin>,
    progress: Arc<AtomicU64>,
    lines: Arc<Mutex<Vec<String>>>,
    stdout: Option<JoinHandle<()>>,
    stderr: Option<JoinHandle<String>>,
}

impl PyProducer {
    fn spawn(name: &str, args: &[String]) -> PyProducer {
        let mut child = Command::new("python3")
            .arg(script(name))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let progress = Arc::new(AtomicU64::new(0));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("piped stdout");
        let stdout = {
            let (progress, lines) = (progress.clone(), lines.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { return };
                    match line.strip_prefix("PROGRESS ").and_then(|n| n.parse().ok()) {
                        Some(n) => progress.store(n, Ordering::SeqCst),
                        None => lines
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(line),
                    }
                }
            })
        };
        let mut err = child.stderr.take().expect("piped stderr");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        PyProducer {
            stdin: child.stdin.take(),
            child,
            progress,
            lines,
            stdout: Some(stdout),
            stderr: Some(stderr),
        }
    }

    fn acked(&self) -> u64 {
        self.progress.load(Ordering::SeqCst)
    }

    /// Says "stop", waits (at most `limit`) for the script to flush and
    /// exit, and returns its lines and stderr; `Err` with both if it did
    /// not exit in time or failed.
    fn stop(mut self, limit: Duration) -> Result<(Vec<String>, String), String> {
        if let Some(mut s) = self.stdin.take() {
            let _ = s.write_all(b"stop\n");
        }
        let deadline = Instant::now() + limit;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break None;
                }
            }
        };
        self.finish(status)
    }

    fn finish(
        &mut self,
        status: Option<std::process::ExitStatus>,
    ) -> Result<(Vec<String>, String), String> {
        if let Some(h) = self.stdout.take() {
            let _ = h.join();
        }
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let lines = std::mem::take(&mut *self.lines.lock().unwrap_or_else(PoisonError::into_inner));
        match status {
            Some(s) if s.success() => Ok((lines, stderr)),
            other => Err(format!(
                "exit {other:?}; stdout tail {:?}; stderr:\n{stderr}",
                lines.iter().rev().take(5).collect::<Vec<_>>()
            )),
        }
    }
}

impl Drop for PyProducer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a consumer script to its end (at most `limit`); its stdout lines.
fn run_consumer(name: &str, args: &[String], limit: Duration) -> Result<Vec<String>, String> {
    let mut cmd = Command::new("python3");
    cmd.arg(script(name)).args(args);
    let (code, out, err) = strom_tests::run_with_timeout(&mut cmd, b"", limit);
    let out = String::from_utf8_lossy(&out).into_owned();
    if code != 0 {
        return Err(format!("{name} exited {code}; stderr:\n{err}"));
    }
    Ok(out.lines().map(str::to_owned).collect())
}

/// One acknowledged record as a producer script reported it.
#[derive(Debug, Clone)]
struct Ack {
    partition: u32,
    offset: u64,
    sent_ms: u64,
    acked_ms: u64,
}

/// A producer script's report.
#[derive(Debug, Default)]
struct Produced {
    acked: HashMap<String, Ack>,
    failed: HashMap<String, String>,
    sent: u64,
    unflushed: u64,
}

fn parse_produced(lines: &[String]) -> Result<Produced, String> {
    let mut p = Produced::default();
    let mut done = false;
    for line in lines {
        let f: Vec<&str> = line.splitn(6, ' ').collect();
        let num = |i: usize| -> Result<u64, String> {
            f.get(i)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("bad line {line:?}"))
        };
        match f.first().copied() {
            Some("ACK") => {
                let value = f.get(1).ok_or_else(|| format!("bad line {line:?}"))?;
                let ack = Ack {
                    partition: num(2)? as u32,
                    offset: num(3)?,
                    sent_ms: num(4)?,
                    acked_ms: num(5)?,
                };
                if p.acked.insert((*value).to_owned(), ack).is_some() {
                    return Err(format!("{value} acknowledged twice"));
                }
            }
            Some("ERR") => {
                let value = f.get(1).ok_or_else(|| format!("bad line {line:?}"))?;
                p.failed.insert((*value).to_owned(), f[2..].join(" "));
            }
            Some("DONE") => {
                p.sent = num(1)?;
                p.unflushed = num(4)?;
                done = true;
            }
            _ => {}
        }
    }
    if !done {
        return Err("no DONE line".into());
    }
    Ok(p)
}

/// A consumer script's read: (partition, offset) -> value, and the end
/// offsets it read up to.
#[derive(Debug, Default)]
struct ScriptRead {
    records: BTreeMap<(u32, u64), String>,
    ends: BTreeMap<u32, u64>,
}

fn parse_read(lines: &[String]) -> Result<ScriptRead, String> {
    let mut r = ScriptRead::default();
    for line in lines {
        let f: Vec<&str> = line.splitn(4, ' ').collect();
        let num = |i: usize| -> Result<u64, String> {
            f.get(i)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("bad line {line:?}"))
        };
        match f.first().copied() {
            Some("REC") => {
                let value = f.get(3).ok_or_else(|| format!("bad line {line:?}"))?;
                let at = (num(1)? as u32, num(2)?);
                if r.records.insert(at, (*value).to_owned()).is_some() {
                    return Err(format!("offset {at:?} read twice"));
                }
            }
            Some("END") => {
                r.ends.insert(num(1)? as u32, num(2)?);
            }
            _ => {}
        }
    }
    Ok(r)
}

/// Which duplicates a Kafka client scenario tolerates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Duplicates {
    None,
    /// Only of records whose first attempt was not acknowledged (module
    /// docs).
    OfRetried,
}

/// What the read shows against what the producer was told.
#[derive(Debug, Default)]
struct Verdict {
    problems: Vec<String>,
    duplicated: usize,
    unacked_present: usize,
}

fn verify(
    produced: &Produced,
    read: &ScriptRead,
    prefix: &str,
    kills: &[Kill],
    duplicates: Duplicates,
    ordered: bool,
) -> Verdict {
    let mut v = Verdict::default();
    let mut at: HashMap<&str, Vec<(u32, u64)>> = HashMap::new();
    for ((p, o), value) in &read.records {
        match index_of(value, prefix) {
            Some(i) if i < produced.sent => at.entry(value.as_str()).or_default().push((*p, *o)),
            _ => v.problems.push(format!("unexpected {value:?} at {p}/{o}")),
        }
    }
    // No acknowledged record lost, each where it was acknowledged.
    let mut lost = 0;
    for (value, a) in &produced.acked {
        match read.records.get(&(a.partition, a.offset)) {
            Some(found) if found == value => {}
            other => {
                lost += 1;
                if lost <= 10 {
                    v.problems.push(format!(
                        "{value} acknowledged at {}/{} but the read has {other:?} there",
                        a.partition, a.offset
                    ));
                }
            }
        }
    }
    if lost > 10 {
        v.problems
            .push(format!("... {lost} acknowledged records lost in all"));
    }
    for (value, places) in &at {
        if !produced.acked.contains_key(*value) {
            v.unacked_present += 1;
        }
        if places.len() < 2 {
            continue;
        }
        v.duplicated += 1;
        let tolerated = match (duplicates, produced.acked.get(*value)) {
            (Duplicates::None, _) => false,
            (Duplicates::OfRetried, None) => true,
            (Duplicates::OfRetried, Some(a)) => kills
                .iter()
                .any(|k| a.sent_ms <= k.reaped_ms && a.acked_ms >= k.started_ms),
        };
        if !tolerated {
            v.problems.push(format!(
                "{value} stored {} times ({places:?}); acknowledged as {:?}",
                places.len(),
                produced.acked.get(*value)
            ));
        }
    }
    if ordered {
        for p in read.ends.keys() {
            let entries: Vec<ReadEntry> = read
                .records
                .range((*p, 0)..=(*p, u64::MAX))
                .map(|((_, o), value)| ReadEntry {
                    offset: *o,
                    epoch: None,
                    value: value.clone(),
                })
                .collect();
            let r = FinalRead::dense(&format!("partition {p}"), entries);
            if let Some(bad) = out_of_order(&r, prefix) {
                v.problems.push(format!("out of send order: {bad}"));
            }
        }
    }
    v
}

/// One Kafka client scenario: `producer` script (extra args after the
/// common ones) through leader kills, then `consumer` reads everything.
fn kafka_client_through_leader_kills(
    test: &str,
    module: &str,
    producer: &str,
    extra: &[&str],
    consumer: &str,
    duplicates: Duplicates,
    ordered: bool,
) {
    if !python_has(module) {
        skip_test(
            test,
            &format!("python3 module {module} is not installed (run scripts/install-test-deps)"),
        );
        return;
    }
    let _one = serial();
    let mut cluster = Cluster::start_proxied();
    let deadline = Instant::now() + BUDGET;
    cluster.create_topic(TOPIC, PARTITIONS, deadline);
    let bootstrap = cluster.bootstrap();
    let prefix = "kc";
    let mut args: Vec<String> = vec![
        bootstrap.clone(),
        TOPIC.into(),
        PARTITIONS.to_string(),
        prefix.into(),
        SCRIPT_PRODUCE_LIMIT_S.to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let py = PyProducer::spawn(producer, &args);
    let kills = kill_leaders(&mut cluster, &|| py.acked(), None, deadline);
    let left = deadline.saturating_duration_since(Instant::now());
    let stopped = py.stop(left.max(Duration::from_secs(70)));
    let kills = kills.unwrap_or_else(|e| {
        panic!(
            "{test}: {e}\nproducer: {:?}\n{}",
            stopped.as_ref().map(|(_, err)| err),
            cluster.stderr_excerpts()
        )
    });
    let (lines, stderr) = stopped
        .unwrap_or_else(|e| panic!("{test}: {producer}: {e}\n{}", cluster.stderr_excerpts()));
    let produced = parse_produced(&lines)
        .unwrap_or_else(|e| panic!("{test}: {producer}: {e}; stderr:\n{stderr}"));
    let read_lines = run_consumer(
        consumer,
        &[bootstrap, TOPIC.into(), PARTITIONS.to_string(), "60".into()],
        Duration::from_secs(90),
    )
    .unwrap_or_else(|e| panic!("{test}: {e}\n{}", cluster.stderr_excerpts()));
    let read = parse_read(&read_lines).unwrap_or_else(|e| panic!("{test}: {consumer}: {e}"));
    let verdict = verify(&produced, &read, prefix, &kills, duplicates, ordered);
    eprintln!(
        "{test}: {} sent, {} acknowledged, {} failed, {} unflushed; read {} records \
         (ends {:?}), {} duplicated, {} unacknowledged present; {}",
        produced.sent,
        produced.acked.len(),
        produced.failed.len(),
        produced.unflushed,
        read.records.len(),
        read.ends,
        verdict.duplicated,
        verdict.unacked_present,
        failover_summary(&kills)
    );
    if let Some((v, e)) = produced.failed.iter().next() {
        eprintln!("{test}: first failure: {v}: {e}");
    }
    if !verdict.problems.is_empty() {
        // The whole stderr (RDKAFKA_DEBUG=eos,msg makes librdkafka say
        // much) for a look afterwards.
        let path = std::env::temp_dir().join(format!("{test}.producer.stderr"));
        let saved = std::fs::write(&path, &stderr).map_or_else(
            |e| format!("(not saved: {e})"),
            |()| path.display().to_string(),
        );
        let mut tail = stderr.len().saturating_sub(3_000);
        while !stderr.is_char_boundary(tail) {
            tail += 1;
        }
        panic!(
            "{test}: {} problems:\n{}\nproducer stderr (all of it in {saved}), tail:\n{}",
            verdict.problems.len(),
            verdict.problems.join("\n"),
            &stderr[tail..]
        );
    }
    assert!(
        produced.acked.len() as u64 >= (KILLS as u64 + 1) * ACKS_BETWEEN_KILLS,
        "{test}: too few acknowledged: {}",
        produced.acked.len()
    );
    cluster.assert_no_panic(test);
}

#[test]
fn confluent_kafka_idempotent_produces_and_consumes_through_leader_kills() {
    kafka_client_through_leader_kills(
        "confluent_kafka_idempotent_produces_and_consumes_through_leader_kills",
        "confluent_kafka",
        "ck_cluster_produce.py",
        &[],
        "ck_cluster_consume.py",
        Duplicates::None,
        true,
    );
}

#[test]
fn kafka_python_at_least_once_produces_and_consumes_through_leader_kills() {
    kafka_client_through_leader_kills(
        "kafka_python_at_least_once_produces_and_consumes_through_leader_kills",
        "kafka",
        "kp_cluster_produce.py",
        &["0"],
        "kp_cluster_consume.py",
        Duplicates::OfRetried,
        false,
    );
}

#[test]
fn kafka_python_idempotent_produces_and_consumes_through_leader_kills() {
    kafka_client_through_leader_kills(
        "kafka_python_idempotent_produces_and_consumes_through_leader_kills",
        "kafka",
        "kp_cluster_produce.py",
        &["1"],
        "kp_cluster_consume.py",
        Duplicates::None,
        true,
    );
}
