//! A real 3-node cluster ([`strom_tests::cluster`]): three `strom-server`
//! processes on 127.0.0.1 (`--node-id`, `--raft-listen`, `--peer`), one
//! shard each. Their Raft traffic goes through the harness's fault proxy,
//! never faulted here: only so that `Cluster::kill` can reset the dead
//! node's lingering Raft connections (a workaround for a server bug that
//! refuses a restart while they linger; see `Cluster::kill`).
//!
//! - `leader_kills_lose_no_acknowledged_record`: unique records are
//!   produced with acks=all (durable) through whichever node leads the
//!   partition, the leader is SIGKILLed again and again (a produce of its
//!   own in flight) and restarted from its data directory. Each failover
//!   is timed from the kill to the next acknowledged produce. At the end
//!   the history checker ([`strom_tests::checker`]) judges the leader's
//!   committed log: every acknowledged record at its acknowledged offset,
//!   no record twice, none never sent, no refused one present, each
//!   producer's acknowledged records in order.
//! - `kafka_clients_see_three_brokers_and_follow_the_leader`: kcat (librdkafka)
//!   lists the three brokers with each partition's leader, and produces
//!   and consumes through a leader kill.
//! - `produce_answers_are_classified_conservatively`: the harness calls an
//!   answer `Failed` only when the server says nothing was written.
//!
//! Kills: [`KILLS_DEFAULT`] in CI, `STROM_CLUSTER_KILLS` by hand. Bounded
//! in time; every child is SIGKILLed when the test ends.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use strom_client::ErrorCode;
use strom_tests::checker::{self, History, Outcome};
use strom_tests::cluster::{classify, lock_history, read_final, Cluster, Recorder};

const KILLS_DEFAULT: usize = 5;
const PRODUCES_PER_ROUND: usize = 5;
const TOPIC: &str = "replicated";

fn budget(kills: usize) -> Duration {
    Duration::from_secs(90).max(Duration::from_millis(5_000 * kills as u64))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[test]
fn leader_kills_lose_no_acknowledged_record() {
    let kills: usize = std::env::var("STROM_CLUSTER_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(KILLS_DEFAULT);
    let mut cluster = Cluster::start_proxied();
    // After the start: the first start may build the binaries.
    let deadline = Instant::now() + budget(kills);
    cluster.create_topic(TOPIC, 1, deadline);
    let history = Arc::new(Mutex::new(History::new()));
    let mut producer = Recorder::new(&history, 1, "kills", TOPIC, 0);
    let mut failovers = Vec::new();
    for round in 0..kills {
        let all = cluster.running();
        let mut leader = 0;
        for _ in 0..PRODUCES_PER_ROUND {
            leader = producer.produce_acked(&cluster, &all, deadline).node;
        }
        // A produce of the leader's own in flight when it dies: connected
        // first, so that the kill lands on the produce itself.
        let mut in_flight = Recorder::new(&history, 100 + round as u64, "kills", TOPIC, 0);
        let conn = in_flight.connect(&cluster, leader);
        let in_flight = conn
            .ok()
            .map(|mut c| std::thread::spawn(move || in_flight.produce_on(&mut c)));
        std::thread::sleep(Duration::from_millis(2));
        let killed_at = Instant::now();
        cluster.kill(leader);
        if let Some(h) = in_flight {
            let a = h.join().expect("in-flight producer");
            eprintln!(
                "round {round}: the produce in flight at the kill of node {leader}: {:?} {:?}",
                a.outcome, a.error
            );
        }
        producer.produce_acked(&cluster, &cluster.running(), deadline);
        failovers.push(killed_at.elapsed());
        cluster.restart(leader);
    }
    let (from, read) = read_final(&cluster, &cluster.running(), TOPIC, 0, deadline);
    let history = lock_history(&history).clone();
    let report = checker::check(history.ops(), &[read]).expect("a well-formed history");
    failovers.sort();
    eprintln!(
        "cluster: {kills} leader kills, read from node {from}; failover p50 {:?} p99 {:?} max {:?}\n{report}",
        percentile(&failovers, 0.5),
        percentile(&failovers, 0.99),
        failovers.last().copied().unwrap_or_default()
    );
    assert!(report.is_valid(), "the history is not valid:\n{report}");
    assert!(
        report.ok >= kills * (PRODUCES_PER_ROUND + 1),
        "too few acknowledged: {}",
        report.ok
    );
}

#[test]
fn produce_answers_are_classified_conservatively() {
    let server = |code, message: &str| {
        Err(strom_client::Error::Server {
            code,
            message: message.to_owned(),
            context: "produce replicated/0".into(),
        })
    };
    assert_eq!(
        classify(&Ok(7)),
        Outcome::Ok {
            offset: 7,
            epoch: None
        }
    );
    for refused in [
        server(
            ErrorCode::NotLeader,
            "replicated/0: this node is not the leader; node 2 is",
        ),
        server(
            ErrorCode::LeaderNotAvailable,
            "replicated/0: no leader at this moment (an election is running); retry",
        ),
    ] {
        assert_eq!(classify(&refused), Outcome::Failed, "{refused:?}");
    }
    for unknown in [
        server(
            ErrorCode::NotLeader,
            "replicated/0: not acknowledged, outcome unknown: group 4294967296: leadership \
             lost in term 3 before entry 9 was known committed (outcome unknown); leader hint None",
        ),
        server(ErrorCode::PartitionUnavailable, "its replica is not open"),
        server(ErrorCode::Timeout, "timed out"),
        Err(strom_client::Error::Closed {
            addr: "127.0.0.1:1".parse().expect("an address"),
        }),
    ] {
        assert_eq!(classify(&unknown), Outcome::Unknown, "{unknown:?}");
    }
}

/// The kcat binary, if installed (`scripts/install-test-deps` installs it).
fn kcat() -> Option<String> {
    let ok = Command::new("kcat")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| "kcat".to_owned())
}

/// Runs kcat with `args`, feeding `input`, killed after `limit`.
fn run_kcat(bin: &str, args: &[&str], input: &str, limit: Duration) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kcat");
    let mut stdin = child.stdin.take().expect("stdin");
    let _ = stdin.write_all(input.as_bytes());
    drop(stdin);
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                break;
            }
        }
    }
    let out = child.wait_with_output().expect("kcat output");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn kafka_clients_see_three_brokers_and_follow_the_leader() {
    let Some(bin) = kcat() else {
        strom_tests::skip_test(
            "kafka_clients_see_three_brokers_and_follow_the_leader",
            "kcat",
        );
        return;
    };
    let mut cluster = Cluster::start_proxied();
    let deadline = Instant::now() + Duration::from_secs(90);
    cluster.create_topic(TOPIC, 1, deadline);
    let bootstrap = cluster.bootstrap();
    let leader = loop {
        if let Some(l) = cluster.leader(TOPIC, 0) {
            break l;
        }
        assert!(Instant::now() < deadline, "no leader elected");
        std::thread::sleep(Duration::from_millis(50));
    };
    // Metadata: three brokers, the partition led by the node that says so.
    let (ok, meta) = run_kcat(
        &bin,
        &["-b", &bootstrap, "-L", "-t", TOPIC],
        "",
        Duration::from_secs(20),
    );
    assert!(ok, "kcat -L failed: {meta}");
    assert!(meta.contains(" 3 brokers:"), "{meta}");
    assert!(
        meta.contains(&format!("partition 0, leader {leader}, replicas: 1,2,3")),
        "{meta}"
    );
    // Produce 50, kill the leader, produce 50 more: librdkafka finds the
    // new leader through Metadata (NOT_LEADER_OR_FOLLOWER, LEADER_NOT_AVAILABLE).
    let produce = |first: usize| -> (bool, String) {
        let lines: String = (first..first + 50).map(|i| format!("m{i}\n")).collect();
        run_kcat(
            &bin,
            &[
                "-b",
                &bootstrap,
                "-P",
                "-t",
                TOPIC,
                "-p",
                "0",
                "-X",
                "acks=all",
                "-X",
                "enable.idempotence=true",
                "-X",
                "message.timeout.ms=30000",
            ],
            &lines,
            Duration::from_secs(40),
        )
    };
    let (ok, out) = produce(0);
    assert!(ok, "first kcat produce failed: {out}");
    cluster.kill(leader);
    let (ok, out) = produce(50);
    assert!(ok, "kcat produce through the leader kill failed: {out}");
    cluster.restart(leader);
    let (ok, out) = run_kcat(
        &bin,
        &[
            "-b",
            &bootstrap,
            "-C",
            "-t",
            TOPIC,
            "-p",
            "0",
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "%s\n",
        ],
        "",
        Duration::from_secs(40),
    );
    assert!(ok, "kcat consume failed: {out}");
    let got: Vec<&str> = out.lines().filter(|l| l.starts_with('m')).collect();
    let unique: HashSet<&str> = got.iter().copied().collect();
    assert_eq!(unique.len(), got.len(), "duplicates in {got:?}");
    for i in 0..100 {
        assert!(
            unique.contains(format!("m{i}").as_str()),
            "m{i} acknowledged but not read: {got:?}"
        );
    }
}
