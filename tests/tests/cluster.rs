//! A real 3-node cluster: three `strom-server` processes on 127.0.0.1
//! (`--node-id`, `--raft-listen`, `--peer`), one shard each.
//!
//! - `leader_kills_lose_no_acknowledged_record`: unique records are
//!   produced with acks=all (durable) through whichever node leads the
//!   partition, the leader is SIGKILLed again and again (a produce of its
//!   own in flight) and restarted from its data directory. Each failover
//!   is timed from the kill to the next acknowledged produce. At the end
//!   the leader's committed log must hold every acknowledged record at its
//!   acknowledged offset, no record twice, and none never sent.
//! - `kafka_clients_see_three_brokers_and_follow_the_leader`: kcat (librdkafka)
//!   lists the three brokers with each partition's leader, and produces
//!   and consumes through a leader kill.
//!
//! Kills: [`KILLS_DEFAULT`] in CI, `STROM_CLUSTER_KILLS` by hand. Bounded
//! in time; every child is SIGKILLed when the test ends.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use strom_client::{
    Acks, Client, ConnectionConfig, Consumer, ConsumerConfig, ErrorCode, OffsetSpec, Producer,
    ProducerConfig, ProducerRecord,
};
use strom_tests::{server_bin, TempDir};

const NODES: u64 = 3;
const KILLS_DEFAULT: usize = 5;
const PRODUCES_PER_ROUND: usize = 5;
const READY_WAIT_MS: u64 = 20_000;
/// One request's wait; a killed node's socket fails at once, a live one
/// answers within the produce timeout.
const REQUEST_WAIT_MS: u64 = 5_000;
const TOPIC: &str = "replicated";

fn budget(kills: usize) -> Duration {
    Duration::from_secs(90).max(Duration::from_millis(5_000 * kills as u64))
}

fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("addr"))
        .collect()
}

struct NodeAddrs {
    native: SocketAddr,
    kafka: SocketAddr,
    raft: SocketAddr,
    http: SocketAddr,
}

/// One `strom-server` of the cluster.
struct Node {
    id: u64,
    child: Option<Child>,
    data: TempDir,
    args: Vec<String>,
    stderr_path: std::path::PathBuf,
}

impl Node {
    fn start(&mut self) {
        assert!(self.child.is_none());
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .expect("stderr file");
        let mut child = Command::new(server_bin())
            .arg("--data-dir")
            .arg(self.data.path().join("data"))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn strom-server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if line.starts_with("ready") {
                    let _ = tx.send(());
                }
            }
        });
        self.child = Some(child);
        if rx
            .recv_timeout(Duration::from_millis(READY_WAIT_MS))
            .is_err()
        {
            self.kill();
            panic!(
                "node {} not ready within {READY_WAIT_MS} ms; stderr:\n{}",
                self.id,
                std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
            );
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Cluster {
    nodes: Vec<Node>,
    addrs: Vec<NodeAddrs>,
}

impl Cluster {
    fn start() -> Cluster {
        let free = free_addrs(4 * NODES as usize);
        let addrs: Vec<NodeAddrs> = (0..NODES as usize)
            .map(|i| NodeAddrs {
                native: free[4 * i],
                kafka: free[4 * i + 1],
                raft: free[4 * i + 2],
                http: free[4 * i + 3],
            })
            .collect();
        let mut nodes = Vec::new();
        for i in 0..NODES as usize {
            let id = i as u64 + 1;
            let a = &addrs[i];
            let mut args: Vec<String> = vec![
                "--cores".into(),
                "1".into(),
                "--node-id".into(),
                id.to_string(),
                "--listen".into(),
                a.native.to_string(),
                "--shard-ports".into(),
                "off".into(),
                "--http".into(),
                a.http.to_string(),
                "--kafka-listen".into(),
                a.kafka.to_string(),
                "--raft-listen".into(),
                a.raft.to_string(),
            ];
            for (j, b) in addrs.iter().enumerate() {
                if j != i {
                    args.push("--peer".into());
                    args.push(format!(
                        "{},raft={},kafka={},native={}",
                        j + 1,
                        b.raft,
                        b.kafka,
                        b.native
                    ));
                }
            }
            let data = TempDir::new("strom-cluster");
            let stderr_path = data.path().join("server.stderr");
            nodes.push(Node {
                id,
                child: None,
                data,
                args,
                stderr_path,
            });
        }
        for n in &mut nodes {
            n.start();
        }
        Cluster { nodes, addrs }
    }

    fn native(&self, id: u64) -> String {
        self.addrs[(id - 1) as usize].native.to_string()
    }

    /// The Kafka bootstrap list of every node.
    fn bootstrap(&self) -> String {
        self.addrs
            .iter()
            .map(|a| a.kafka.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn client(&self, id: u64) -> Option<Client> {
        let cfg = ConnectionConfig {
            request_timeout_ms: REQUEST_WAIT_MS,
            ..ConnectionConfig::default()
        };
        Client::connect_with(&self.native(id), cfg).ok()
    }

    /// Creates the topic through whichever node is the controller.
    fn create_topic(&self, name: &str, partitions: u32, deadline: Instant) {
        let mut last = String::new();
        while Instant::now() < deadline {
            for id in 1..=NODES {
                let Some(mut c) = self.client(id) else {
                    continue;
                };
                match c.create_topic(name, partitions, &[]) {
                    Ok(()) => return,
                    Err(strom_client::Error::Server {
                        code: ErrorCode::TopicAlreadyExists,
                        ..
                    }) => return,
                    Err(e) => last = format!("node {id}: {e}"),
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no node created topic {name} in time; last error: {last}");
    }

    /// The leader of partition `p` as the live nodes report it (a node
    /// that reports itself), if any.
    fn leader(&self, p: u32) -> Option<u64> {
        for n in &self.nodes {
            if n.child.is_none() {
                continue;
            }
            let Some(mut c) = self.client(n.id) else {
                continue;
            };
            let Ok(d) = c.describe_topic(TOPIC) else {
                continue;
            };
            if let Some(part) = d.partitions.iter().find(|x| x.partition == p) {
                if part.leader_node == n.id {
                    return Some(n.id);
                }
            }
        }
        None
    }
}

/// The outcome of one produce attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Acked(u64),
    /// Refused before anything was written (this node does not lead).
    Refused,
    /// Anything else: maybe written.
    Unknown,
}

/// Produces `value` to partition 0 through node `id`, acks=all.
fn produce_one(cluster: &Cluster, id: u64, value: &[u8]) -> Outcome {
    let Some(client) = cluster.client(id) else {
        return Outcome::Refused;
    };
    let cfg = ProducerConfig {
        acks: Acks::Durable,
        linger_ms: 0,
        timeout_ms: REQUEST_WAIT_MS as u32,
        ..ProducerConfig::default()
    };
    let mut p = Producer::new(client, cfg);
    if p.send(&ProducerRecord::new(TOPIC, value).partition(0))
        .is_err()
    {
        return Outcome::Unknown;
    }
    match p.flush().pop() {
        Some(Ok(offset)) => Outcome::Acked(offset),
        Some(Err(strom_client::Error::Server { code, message, .. }))
            if (code == ErrorCode::NotLeader && message.contains("is not the leader"))
                || code == ErrorCode::LeaderNotAvailable =>
        {
            Outcome::Refused
        }
        _ => Outcome::Unknown,
    }
}

/// Produces `value` until some node acknowledges it, trying the leader
/// first. Returns the acknowledging node and offset, and every attempt's
/// outcome (for the history).
fn produce_acked(
    cluster: &Cluster,
    value: &[u8],
    deadline: Instant,
    history: &mut Vec<(Vec<u8>, Outcome)>,
) -> (u64, u64) {
    let mut value = value.to_vec();
    let mut attempt = 0u32;
    while Instant::now() < deadline {
        let mut ids: Vec<u64> = (1..=NODES)
            .filter(|&id| cluster.nodes[(id - 1) as usize].child.is_some())
            .collect();
        if let Some(l) = cluster.leader(0) {
            ids.retain(|&x| x != l);
            ids.insert(0, l);
        }
        for id in ids {
            // Every attempt carries a fresh value: a retry after an unknown
            // outcome cannot make a duplicate, so any duplicate is the log's.
            attempt += 1;
            let v = [value.as_slice(), format!("#{attempt}").as_bytes()].concat();
            let o = produce_one(cluster, id, &v);
            history.push((v, o));
            if let Outcome::Acked(offset) = o {
                return (id, offset);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
        value.truncate(value.len());
    }
    panic!("no node acknowledged a produce in time");
}

/// Every committed record of partition 0, read from the leader.
fn read_all(cluster: &Cluster, deadline: Instant) -> BTreeMap<u64, Vec<u8>> {
    while Instant::now() < deadline {
        let Some(l) = cluster.leader(0) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let Some(mut c) = cluster.client(l) else {
            continue;
        };
        let Ok(Some(end)) = c.list_offset(TOPIC, 0, OffsetSpec::Latest) else {
            continue;
        };
        let mut consumer = Consumer::new(c, ConsumerConfig::default());
        if consumer.assign(TOPIC, 0, OffsetSpec::Earliest).is_err() {
            continue;
        }
        let mut out = BTreeMap::new();
        let mut ok = true;
        while consumer.position(TOPIC, 0).unwrap_or(0) < end && Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(500)) {
                Ok(frames) => {
                    for f in frames {
                        let base = f.header().base_offset();
                        for (i, r) in f.records().enumerate() {
                            let prev =
                                out.insert(base + i as u64, r.value.unwrap_or_default().to_vec());
                            assert!(prev.is_none(), "offset {} read twice", base + i as u64);
                        }
                    }
                }
                Err(_) => {
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            return out;
        }
    }
    panic!("could not read the partition from its leader in time");
}

/// The checks: every acknowledged record at its offset, none twice, none
/// never sent. Returns a description of each violation.
fn check(history: &[(Vec<u8>, Outcome)], log: &BTreeMap<u64, Vec<u8>>) -> Vec<String> {
    let mut bad = Vec::new();
    let sent: HashSet<&[u8]> = history.iter().map(|(v, _)| v.as_slice()).collect();
    let mut seen: HashMap<&[u8], u64> = HashMap::new();
    for (offset, v) in log {
        if let Some(first) = seen.insert(v.as_slice(), *offset) {
            bad.push(format!(
                "duplicate: {:?} at {first} and {offset}",
                String::from_utf8_lossy(v)
            ));
        }
        if !sent.contains(v.as_slice()) {
            bad.push(format!(
                "never sent: {:?} at {offset}",
                String::from_utf8_lossy(v)
            ));
        }
    }
    for (v, o) in history {
        match o {
            Outcome::Acked(offset) => match log.get(offset) {
                Some(got) if got == v => {}
                got => bad.push(format!(
                    "lost: {:?} acknowledged at {offset}, the log holds {:?}",
                    String::from_utf8_lossy(v),
                    got.map(|g| String::from_utf8_lossy(g).into_owned())
                )),
            },
            Outcome::Refused => {
                if seen.contains_key(v.as_slice()) {
                    bad.push(format!(
                        "refused but written: {:?}",
                        String::from_utf8_lossy(v)
                    ));
                }
            }
            Outcome::Unknown => {}
        }
    }
    bad
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
    let mut cluster = Cluster::start();
    // After the start: the first start may build the binaries.
    let deadline = Instant::now() + budget(kills);
    cluster.create_topic(TOPIC, 1, deadline);
    let mut history = Vec::new();
    let mut failovers = Vec::new();
    let mut n = 0u64;
    for round in 0..kills {
        let mut leader = 0;
        for _ in 0..PRODUCES_PER_ROUND {
            n += 1;
            let (id, _) = produce_acked(
                &cluster,
                format!("r{round}-v{n}").as_bytes(),
                deadline,
                &mut history,
            );
            leader = id;
        }
        // A produce of the leader's own in flight when it dies.
        let in_flight = {
            let native = cluster.native(leader);
            let value = format!("r{round}-inflight").into_bytes();
            std::thread::spawn(move || {
                let cfg = ConnectionConfig {
                    request_timeout_ms: REQUEST_WAIT_MS,
                    ..ConnectionConfig::default()
                };
                let Ok(client) = Client::connect_with(&native, cfg) else {
                    return (value, Outcome::Refused);
                };
                let mut p = Producer::new(
                    client,
                    ProducerConfig {
                        acks: Acks::Durable,
                        linger_ms: 0,
                        ..ProducerConfig::default()
                    },
                );
                if p.send(&ProducerRecord::new(TOPIC, &value).partition(0))
                    .is_err()
                {
                    return (value, Outcome::Unknown);
                }
                let o = match p.flush().pop() {
                    Some(Ok(off)) => Outcome::Acked(off),
                    _ => Outcome::Unknown,
                };
                (value, o)
            })
        };
        std::thread::sleep(Duration::from_millis(2));
        let killed_at = Instant::now();
        cluster.nodes[(leader - 1) as usize].kill();
        history.push(in_flight.join().expect("in-flight producer"));
        n += 1;
        produce_acked(
            &cluster,
            format!("r{round}-after{n}").as_bytes(),
            deadline,
            &mut history,
        );
        failovers.push(killed_at.elapsed());
        cluster.nodes[(leader - 1) as usize].start();
    }
    let log = read_all(&cluster, deadline);
    let bad = check(&history, &log);
    let acked = history
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Acked(_)))
        .count();
    failovers.sort();
    eprintln!(
        "cluster: {kills} leader kills, {acked} acknowledged, {} in the log, failover p50 {:?} p99 {:?} max {:?}",
        log.len(),
        percentile(&failovers, 0.5),
        percentile(&failovers, 0.99),
        failovers.last().copied().unwrap_or_default()
    );
    assert!(
        bad.is_empty(),
        "{} violations:\n{}",
        bad.len(),
        bad.join("\n")
    );
    assert!(
        acked >= kills * PRODUCES_PER_ROUND,
        "too few acknowledged: {acked}"
    );
}

#[test]
fn the_checker_catches_a_lost_and_a_duplicated_record() {
    let history = vec![
        (b"a".to_vec(), Outcome::Acked(0)),
        (b"b".to_vec(), Outcome::Acked(1)),
        (b"c".to_vec(), Outcome::Refused),
    ];
    let mut log = BTreeMap::new();
    log.insert(0, b"a".to_vec());
    log.insert(2, b"a".to_vec());
    log.insert(3, b"c".to_vec());
    let bad = check(&history, &log);
    assert!(bad.iter().any(|b| b.starts_with("lost")), "{bad:?}");
    assert!(bad.iter().any(|b| b.starts_with("duplicate")), "{bad:?}");
    assert!(
        bad.iter().any(|b| b.starts_with("refused but written")),
        "{bad:?}"
    );
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
    let mut cluster = Cluster::start();
    let deadline = Instant::now() + Duration::from_secs(90);
    cluster.create_topic(TOPIC, 1, deadline);
    let bootstrap = cluster.bootstrap();
    let leader = loop {
        if let Some(l) = cluster.leader(0) {
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
    cluster.nodes[(leader - 1) as usize].kill();
    let (ok, out) = produce(50);
    assert!(ok, "kcat produce through the leader kill failed: {out}");
    cluster.nodes[(leader - 1) as usize].start();
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
