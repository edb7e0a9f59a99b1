//! Real crashes: three `strom-replica` processes on 127.0.0.1 replicate one
//! group; a client proposes unique payloads with acks=all through the
//! leader, and the leader is SIGKILLed again and again (a proposal of its
//! own still in flight), then restarted from its data directory. Each
//! failover is timed from the kill to the next acknowledged proposal.
//!
//! At the end every node's applied log must hold every acknowledged payload
//! at its acknowledged index and term (0 lost), the logs must agree on
//! every index they share, no payload may appear twice (0 duplicates) and
//! none that was never proposed. Every attempt carries a fresh payload, so
//! a retry after an unknown outcome cannot make a duplicate: any duplicate
//! is the log's own.
//!
//! Kills: [`KILLS_DEFAULT`], or `STROM_CRASH_KILLS`. Bounded in time
//! ([`budget`]); every child is SIGKILLed when the cluster is dropped, and
//! a replica whose stdin closes ends itself, so a test that dies leaves no
//! process behind.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

const NODES: u64 = 3;
const GROUP: u64 = 1;
const KILLS_DEFAULT: usize = 20;
/// Acknowledged proposals between two kills.
const PROPOSALS_PER_ROUND: usize = 5;
/// A replica prints `ready` within this, or the test fails.
const READY_WAIT_MS: u64 = 10_000;
/// One request's answer, at most (a proposal answers within 2 s).
const REQUEST_WAIT_MS: u64 = 5_000;
/// Pause before retrying a proposal that found no leader.
const RETRY_PAUSE_MS: u64 = 10;

/// The whole test's bound: 60 s for the default kills (what CI runs),
/// 2.5 s per kill beyond.
fn budget(kills: usize) -> Duration {
    Duration::from_secs(60).max(Duration::from_millis(2_500 * kills as u64))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Free loopback ports: bound, noted, released.
fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners.iter().map(|l| l.local_addr().unwrap()).collect()
}

/// One running `strom-replica` process and its line protocol.
struct Replica {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    seq: u64,
}

impl Replica {
    /// Sends one request; its answer without the sequence number, or
    /// `None` if the process is gone or does not answer in time.
    fn request(&mut self, request: &str) -> Option<String> {
        self.send(request)?;
        let deadline = Instant::now() + Duration::from_millis(REQUEST_WAIT_MS);
        let prefix = format!("{} ", self.seq);
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(wait) {
                Ok(line) => {
                    if let Some(answer) = line.strip_prefix(&prefix) {
                        return Some(answer.to_string());
                    }
                    // The late answer of a request given up on.
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Sends one request without waiting for its answer.
    fn send(&mut self, request: &str) -> Option<()> {
        self.seq += 1;
        writeln!(self.stdin, "{} {request}", self.seq).ok()?;
        self.stdin.flush().ok()
    }

    fn sigkill(mut self) {
        // std's Child::kill sends SIGKILL.
        self.child.kill().expect("SIGKILL a replica");
        self.child.wait().expect("reap a replica");
    }
}

struct Cluster {
    bin: PathBuf,
    base: PathBuf,
    addrs: Vec<SocketAddr>,
    live: BTreeMap<u64, Replica>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, mut r) in std::mem::take(&mut self.live) {
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

impl Cluster {
    fn stderr_tail(&self, id: u64) -> String {
        let text = std::fs::read_to_string(self.base.join(format!("node-{id}.stderr")))
            .unwrap_or_default();
        let start = text.len().saturating_sub(2_000);
        text.get(start..).unwrap_or_default().to_string()
    }

    /// Starts node `id` from its data directory; panics (the test fails)
    /// unless it prints `ready` in time.
    fn start(&mut self, id: u64) {
        assert!(!self.live.contains_key(&id));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.base.join(format!("node-{id}.stderr")))
            .unwrap();
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--id")
            .arg(id.to_string())
            .arg("--listen")
            .arg(self.addrs[(id - 1) as usize].to_string())
            .arg("--data-dir")
            .arg(self.base.join(format!("node-{id}")))
            .arg("--groups")
            .arg("1");
        for p in (1..=NODES).filter(|&p| p != id) {
            cmd.arg("--peer")
                .arg(format!("{p}={}", self.addrs[(p - 1) as usize]));
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut replica = Replica {
            child,
            stdin,
            lines,
            seq: 0,
        };
        let first = replica
            .lines
            .recv_timeout(Duration::from_millis(READY_WAIT_MS));
        if first.as_deref() != Ok("ready") {
            let status = replica.child.try_wait();
            let _ = replica.child.kill();
            let _ = replica.child.wait();
            panic!(
                "node {id} did not start ({first:?}, exit {status:?}); stderr:\n{}",
                self.stderr_tail(id)
            );
        }
        self.live.insert(id, replica);
    }

    /// The leader of the group if a live node claims to be it.
    fn leader(&mut self) -> Option<u64> {
        let mut claims = Vec::new();
        for (&id, r) in self.live.iter_mut() {
            let answer = r.request(&format!("leader {GROUP}"))?;
            let l: u64 = answer.strip_prefix("leader ")?.parse().ok()?;
            claims.push((id, l));
        }
        claims.iter().find(|(id, l)| id == l).map(|&(id, _)| id)
    }

    fn wait_leader(&mut self, deadline: Instant) -> u64 {
        loop {
            if let Some(l) = self.leader() {
                return l;
            }
            assert!(Instant::now() < deadline, "no leader before the deadline");
            std::thread::sleep(Duration::from_millis(RETRY_PAUSE_MS));
        }
    }

    /// The applied log of a live node: index -> (term, payload hex or `-`).
    fn log(&mut self, id: u64) -> BTreeMap<u64, (u64, String)> {
        let answer = self
            .live
            .get_mut(&id)
            .unwrap()
            .request(&format!("log {GROUP}"))
            .unwrap_or_else(|| panic!("node {id} did not answer `log`"));
        let entries = answer
            .strip_prefix("log")
            .unwrap_or_else(|| panic!("node {id}: {answer}"));
        entries
            .split_ascii_whitespace()
            .map(|e| {
                let mut parts = e.splitn(3, ':');
                let index = parts.next().unwrap().parse().unwrap();
                let term = parts.next().unwrap().parse().unwrap();
                let payload = parts.next().unwrap().to_string();
                (index, (term, payload))
            })
            .collect()
    }
}

#[derive(Debug, Clone)]
struct Ack {
    payload: String,
    index: u64,
    term: u64,
}

/// The client: unique payloads, acks=all, following leader hints.
struct Client {
    next: u64,
    hint: Option<u64>,
    /// Every payload ever sent (hex).
    sent: HashSet<String>,
    acked: Vec<Ack>,
    attempts: u64,
}

impl Client {
    fn fresh_payload(&mut self) -> String {
        self.next += 1;
        let p = hex(format!("rec-{}", self.next).as_bytes());
        self.sent.insert(p.clone());
        p
    }

    /// Proposes fresh payloads until one is acknowledged.
    fn propose_until_acked(&mut self, cluster: &mut Cluster, deadline: Instant) -> Ack {
        loop {
            assert!(
                Instant::now() < deadline,
                "no acknowledged proposal before the deadline ({} attempts)",
                self.attempts
            );
            let target = match self.hint.filter(|h| cluster.live.contains_key(h)) {
                Some(l) => l,
                None => match cluster.leader() {
                    Some(l) => l,
                    None => {
                        std::thread::sleep(Duration::from_millis(RETRY_PAUSE_MS));
                        continue;
                    }
                },
            };
            self.hint = Some(target);
            let payload = self.fresh_payload();
            self.attempts += 1;
            let answer = cluster
                .live
                .get_mut(&target)
                .unwrap()
                .request(&format!("propose {GROUP} {payload}"));
            let words: Vec<&str> = answer.as_deref().unwrap_or("").split(' ').collect();
            match words.as_slice() {
                ["ok", index, term] => {
                    let ack = Ack {
                        payload,
                        index: index.parse().unwrap(),
                        term: term.parse().unwrap(),
                    };
                    self.acked.push(ack.clone());
                    return ack;
                }
                ["notleader", hint] => {
                    let hint: u64 = hint.parse().unwrap();
                    self.hint = (hint != 0 && hint != target).then_some(hint);
                    if self.hint.is_none() {
                        std::thread::sleep(Duration::from_millis(RETRY_PAUSE_MS));
                    }
                }
                _ => {
                    self.hint = None;
                    std::thread::sleep(Duration::from_millis(RETRY_PAUSE_MS));
                }
            }
        }
    }
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    assert!(!sorted.is_empty());
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted[rank - 1]
}

#[test]
fn leader_sigkilled_repeatedly_loses_and_duplicates_nothing() {
    let kills: usize = std::env::var("STROM_CRASH_KILLS")
        .ok()
        .map(|v| v.parse().expect("STROM_CRASH_KILLS: a number"))
        .unwrap_or(KILLS_DEFAULT);
    let started = Instant::now();
    let deadline = started + budget(kills);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let base =
        std::env::temp_dir().join(format!("strom-crash-kill-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&base).unwrap();
    let mut cluster = Cluster {
        bin: PathBuf::from(env!("CARGO_BIN_EXE_strom-replica")),
        base,
        addrs: free_addrs(NODES as usize),
        live: BTreeMap::new(),
    };
    for id in 1..=NODES {
        cluster.start(id);
    }
    let first = cluster.wait_leader(deadline);
    println!("leader {first} after {:?}", started.elapsed());

    let mut client = Client {
        next: 0,
        hint: None,
        sent: HashSet::new(),
        acked: Vec::new(),
        attempts: 0,
    };
    let mut failovers = Vec::with_capacity(kills);
    let mut victims: HashMap<u64, usize> = HashMap::new();
    for round in 0..kills {
        for _ in 0..PROPOSALS_PER_ROUND {
            client.propose_until_acked(&mut cluster, deadline);
        }
        let victim = cluster.wait_leader(deadline);
        // One proposal still in flight when the leader dies: its outcome
        // is unknown (it may or may not be in the logs, at most once).
        let payload = client.fresh_payload();
        let mut replica = cluster.live.remove(&victim).unwrap();
        let _ = replica.send(&format!("propose {GROUP} {payload}"));
        let killed_at = Instant::now();
        replica.sigkill();
        client.hint = None;
        let ack = client.propose_until_acked(&mut cluster, deadline);
        let failover = killed_at.elapsed();
        failovers.push(failover);
        *victims.entry(victim).or_default() += 1;
        println!(
            "kill {round}: node {victim} SIGKILLed; next ack at index {} term {} after {failover:?}",
            ack.index, ack.term
        );
        cluster.start(victim);
        // Ready again: it has heard from the current leader.
        loop {
            let r = cluster.live.get_mut(&victim).unwrap();
            let heard = r
                .request(&format!("leader {GROUP}"))
                .is_some_and(|a| a != "leader 0");
            if heard {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {victim} never heard from a leader after its restart"
            );
            std::thread::sleep(Duration::from_millis(RETRY_PAUSE_MS));
        }
    }
    // A last proposal so that the tail is committed in the current term.
    client.propose_until_acked(&mut cluster, deadline);
    let load_done = started.elapsed();

    // Every node catches up to the last acknowledged index (bounded), then
    // the logs are compared.
    let top = client.acked.iter().map(|a| a.index).max().unwrap();
    let ids: Vec<u64> = cluster.live.keys().copied().collect();
    let logs: BTreeMap<u64, BTreeMap<u64, (u64, String)>> = loop {
        let logs: BTreeMap<u64, _> = ids.iter().map(|&id| (id, cluster.log(id))).collect();
        let caught_up = logs
            .values()
            .all(|l| l.keys().next_back().is_some_and(|&last| last >= top));
        if caught_up || Instant::now() >= deadline {
            break logs;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let through_top = logs
        .values()
        .filter(|l| l.keys().next_back().is_some_and(|&last| last >= top))
        .count();
    assert!(
        through_top as u64 > NODES / 2,
        "only {through_top} nodes applied through {top}"
    );

    // 0 lost: every acknowledged payload at its index and term on every
    // node that applied that far.
    let mut lost = Vec::new();
    for a in &client.acked {
        for (id, log) in &logs {
            let Some(&last) = log.keys().next_back() else {
                continue;
            };
            if last < a.index {
                continue;
            }
            if log.get(&a.index) != Some(&(a.term, a.payload.clone())) {
                lost.push((id, a.clone(), log.get(&a.index).cloned()));
            }
        }
    }
    assert!(lost.is_empty(), "acknowledged records lost: {lost:?}");
    // The logs agree on every index they share.
    let (&first_id, first_log) = logs.iter().next().unwrap();
    for (id, log) in &logs {
        for (index, entry) in log {
            if let Some(other) = first_log.get(index) {
                assert_eq!(
                    entry, other,
                    "index {index}: node {id} and node {first_id} differ"
                );
            }
        }
    }
    // 0 duplicates, 0 records never proposed.
    let mut duplicates = 0;
    for (id, log) in &logs {
        let mut seen = HashSet::new();
        for (index, (_, payload)) in log {
            if payload == "-" {
                continue;
            }
            assert!(
                client.sent.contains(payload),
                "node {id} index {index}: a payload never proposed: {payload}"
            );
            if !seen.insert(payload) {
                duplicates += 1;
                eprintln!("node {id} index {index}: duplicate payload {payload}");
            }
        }
    }
    assert_eq!(duplicates, 0, "duplicate payloads in the logs");

    // Proposals whose outcome the client never learnt (in flight at a kill)
    // and that a leader committed all the same.
    let acked: HashSet<&String> = client.acked.iter().map(|a| &a.payload).collect();
    let committed_unacked = first_log
        .values()
        .filter(|(_, p)| p != "-" && !acked.contains(p))
        .count();
    let mut sorted = failovers.clone();
    sorted.sort_unstable();
    let wall = started.elapsed();
    if !sorted.is_empty() {
        println!(
            "FAILOVER (kill to next acknowledged proposal) over {} kills {victims:?}: \
             p50 {:?}, p99 {:?}, max {:?}",
            sorted.len(),
            percentile(&sorted, 50),
            percentile(&sorted, 99),
            sorted.last().unwrap()
        );
    }
    println!(
        "ACKNOWLEDGED {} records ({} attempts; {committed_unacked} unacknowledged ones \
         committed), log length {top}, lost 0, duplicates 0; load {load_done:?}, WALL {wall:?}",
        client.acked.len(),
        client.attempts + kills as u64
    );
    assert!(wall < budget(kills), "took {wall:?}");
}
