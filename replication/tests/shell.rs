//! Three real nodes in one process, each on its own glommio executor, with
//! the TCP transport over 127.0.0.1 and O_DIRECT stores in a temporary
//! directory: two groups elect leaders, take 200 acks=all proposals, lose
//! the leader of group 1 abruptly (its executor stops without closing
//! anything), elect a new one (the failover time is printed), take 100 more,
//! get the killed node back from its data directory, and end with every
//! node's applied log identical and holding every acknowledged payload at
//! its acknowledged index and term. Bounded to 60 s.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use strom_replication::shell::{ApplyEvent, NodeConfig, NodeThread, ShellProposeError, StartError};
use strom_replication::Acks;

mod common;
use common::{frame, tag};

const NODES: u64 = 3;
const GROUPS: [u64; 2] = [1, 2];
const TEST_BUDGET: Duration = Duration::from_secs(60);

/// Free loopback ports: bound, noted, released.
fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners.iter().map(|l| l.local_addr().unwrap()).collect()
}

type Applied = Arc<Mutex<Vec<ApplyEvent>>>;

struct Cluster {
    base: PathBuf,
    addrs: Vec<SocketAddr>,
    nodes: BTreeMap<u64, NodeThread>,
    /// Every apply event each node reported, across its incarnations.
    applied: BTreeMap<u64, Applied>,
}

impl Cluster {
    fn config(&self, id: u64) -> NodeConfig {
        let peers = (1..=NODES)
            .filter(|&p| p != id)
            .map(|p| (p, self.addrs[(p - 1) as usize]))
            .collect();
        NodeConfig::new(
            id,
            self.addrs[(id - 1) as usize],
            peers,
            self.base.join(format!("node-{id}")),
            GROUPS.to_vec(),
        )
    }

    fn start(&mut self, id: u64) -> Result<(), StartError> {
        let sink = self.applied.entry(id).or_default().clone();
        let node = NodeThread::spawn(self.config(id), move |e| sink.lock().unwrap().push(e))?;
        self.nodes.insert(id, node);
        Ok(())
    }

    /// The leader of `group` that every live node agrees on, if any.
    fn agreed_leader(&self, group: u64) -> Option<(u64, u64)> {
        let mut seen = None;
        for node in self.nodes.values() {
            let s = node.status().into_iter().find(|s| s.group == group)?;
            let l = (s.leader?, s.term);
            if seen.is_some_and(|x| x != l) {
                return None;
            }
            seen = Some(l);
        }
        let (leader, term) = seen?;
        self.nodes.contains_key(&leader).then_some((leader, term))
    }

    fn wait_leader(&self, group: u64, not: Option<u64>, deadline: Instant) -> (u64, u64) {
        loop {
            if let Some((l, t)) = self.agreed_leader(group) {
                if Some(l) != not {
                    return (l, t);
                }
            }
            assert!(Instant::now() < deadline, "no leader for group {group}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[derive(Debug, Clone)]
struct Ack {
    group: u64,
    tag: String,
    index: u64,
    term: u64,
}

/// Proposes every (group, tag) with acks=all, all in flight at once,
/// through each group's leader, following NotLeader hints and retrying
/// whatever is not acknowledged, until all are acknowledged.
fn propose_all(cluster: &Cluster, items: &[(u64, String)], deadline: Instant) -> Vec<Ack> {
    let (tx, rx) = mpsc::channel::<(u64, Result<(u64, u64), ShellProposeError>)>();
    let mut hints: HashMap<u64, u64> = HashMap::new();
    let send = |i: usize, hints: &mut HashMap<u64, u64>| {
        let (group, tag) = &items[i];
        let target = match hints.get(group) {
            Some(&l) if cluster.nodes.contains_key(&l) => l,
            _ => {
                let l = cluster.wait_leader(*group, None, deadline).0;
                hints.insert(*group, l);
                l
            }
        };
        cluster.nodes[&target].propose(*group, frame(tag, 1), Acks::All, i as u64, tx.clone());
    };
    for i in 0..items.len() {
        send(i, &mut hints);
    }
    let mut acks: Vec<Option<Ack>> = vec![None; items.len()];
    let mut left = items.len();
    let mut retries = 0;
    while left > 0 {
        let timeout = deadline.saturating_duration_since(Instant::now());
        let (i, result) = rx.recv_timeout(timeout).expect("proposals unanswered");
        let i = i as usize;
        match result {
            Ok((index, term)) => {
                assert!(acks[i].is_none());
                acks[i] = Some(Ack {
                    group: items[i].0,
                    tag: items[i].1.clone(),
                    index,
                    term,
                });
                left -= 1;
            }
            Err(e) => {
                assert!(e.is_retriable(), "{e}");
                retries += 1;
                let group = items[i].0;
                match e.leader_hint() {
                    Some(l) => {
                        hints.insert(group, l);
                    }
                    None => {
                        hints.remove(&group);
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                send(i, &mut hints);
            }
        }
    }
    if retries > 0 {
        println!("{retries} proposals retried");
    }
    acks.into_iter().map(Option::unwrap).collect()
}

fn items(from: usize, to: usize) -> Vec<(u64, String)> {
    (from..to)
        .map(|n| (GROUPS[n % GROUPS.len()], format!("frame-{n}")))
        .collect()
}

fn remove_dir(path: &Path) {
    let _ = std::fs::remove_dir_all(path);
}

#[test]
fn three_nodes_fail_over_and_catch_up_over_tcp() {
    let started = Instant::now();
    let deadline = started + TEST_BUDGET;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let base = std::env::temp_dir().join(format!("strom-shell-{}-{nanos}", std::process::id()));
    remove_dir(&base);
    std::fs::create_dir_all(&base).unwrap();
    let mut cluster = Cluster {
        base: base.clone(),
        addrs: free_addrs(NODES as usize),
        nodes: BTreeMap::new(),
        applied: BTreeMap::new(),
    };
    for id in 1..=NODES {
        cluster.start(id).unwrap();
    }
    let mut leaders = BTreeMap::new();
    for g in GROUPS {
        leaders.insert(g, cluster.wait_leader(g, None, deadline));
    }
    println!("leaders {leaders:?} after {:?}", started.elapsed());

    // 200 acks=all proposals.
    let t = Instant::now();
    let mut acked = propose_all(&cluster, &items(0, 200), deadline);
    println!("200 proposals acknowledged in {:?}", t.elapsed());

    // The leader of group 1 stops abruptly.
    let (victim, old_term) = cluster.wait_leader(1, None, deadline);
    let before_kill: BTreeMap<u64, u64> = cluster.nodes[&victim]
        .status()
        .into_iter()
        .map(|s| (s.group, s.applied))
        .collect();
    let killed_at = Instant::now();
    cluster.nodes.remove(&victim).unwrap().kill();
    let (new_leader, new_term) = cluster.wait_leader(1, Some(victim), deadline);
    let elected = killed_at.elapsed();
    // Its listener is really gone (no leaked task keeps the port).
    let refused = std::net::TcpStream::connect(cluster.addrs[(victim - 1) as usize]);
    assert!(refused.is_err(), "node {victim} still accepts connections");
    assert_ne!(new_leader, victim);
    assert!(new_term > old_term);
    // Kill to the next acknowledged produce on group 1.
    let probe = propose_all(&cluster, &[(1, "probe".to_string())], deadline);
    let first_ack = killed_at.elapsed();
    acked.extend(probe);
    println!(
        "FAILOVER: node {victim} (leader of group 1, term {old_term}) killed; node {new_leader} \
         leads term {new_term} after {elected:?}; first acknowledged produce after {first_ack:?}"
    );
    assert!(
        elected < Duration::from_secs(5),
        "failover took {elected:?}"
    );

    // 100 more through the two survivors.
    acked.extend(propose_all(&cluster, &items(200, 300), deadline));

    // The killed node comes back from its data directory and catches up.
    let restarted_at = Instant::now();
    cluster.start(victim).unwrap();
    let target: BTreeMap<u64, u64> = GROUPS
        .iter()
        .map(|&g| {
            let max = acked
                .iter()
                .filter(|a| a.group == g)
                .map(|a| a.index)
                .max()
                .unwrap();
            (g, max)
        })
        .collect();
    loop {
        let statuses: Vec<_> = cluster.nodes.values().map(|n| n.status()).collect();
        let caught_up = GROUPS.iter().all(|&g| {
            let applied: Vec<u64> = statuses
                .iter()
                .map(|s| s.iter().find(|x| x.group == g).unwrap().applied)
                .collect();
            applied.iter().all(|&a| a == applied[0] && a >= target[&g])
        });
        if caught_up {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no catch-up: {statuses:?}, targets {target:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "node {victim} restarted and caught up in {:?}",
        restarted_at.elapsed()
    );

    // Every node's applied log: identical, and holding every acknowledged
    // payload at its index and term.
    for g in GROUPS {
        let logs: BTreeMap<u64, Vec<(u64, u64, Bytes)>> = cluster
            .nodes
            .iter()
            .map(|(&id, n)| (id, n.applied_log(g)))
            .collect();
        let first = logs.values().next().unwrap();
        assert!(!first.is_empty());
        for (id, log) in &logs {
            assert_eq!(log, first, "group {g}: node {id}'s applied log differs");
        }
        let by_index: BTreeMap<u64, &(u64, u64, Bytes)> = first.iter().map(|e| (e.0, e)).collect();
        for a in acked.iter().filter(|a| a.group == g) {
            let (_, term, data) = by_index[&a.index];
            assert_eq!(*term, a.term, "group {g} index {}", a.index);
            assert_eq!(tag(data).as_deref(), Some(a.tag.as_str()));
        }
        // What each node reported through its apply callback agrees.
        for (id, events) in &cluster.applied {
            for e in events.lock().unwrap().iter() {
                if let ApplyEvent::Entry {
                    group,
                    index,
                    term,
                    data,
                } = e
                {
                    if *group != g {
                        continue;
                    }
                    let (_, t, d) = by_index[index];
                    assert_eq!((t, d), (term, data), "node {id} applied {index}");
                }
            }
        }
    }
    // The restarted node applied what it had missed.
    let victim_events = cluster.applied[&victim].lock().unwrap().clone();
    for g in GROUPS {
        let missed = victim_events.iter().any(|e| {
            matches!(e, ApplyEvent::Entry { group, index, .. }
                if *group == g && *index > before_kill[&g])
        });
        assert!(missed, "node {victim} applied nothing new in group {g}");
    }
    let acked_count = acked.len();
    assert_eq!(acked_count, 301);

    for (id, node) in std::mem::take(&mut cluster.nodes) {
        let stats = node.stats();
        println!("node {id}: {stats:?}");
        assert_eq!(stats.wire_errors, 0);
        assert_eq!(stats.refused_batches, 0);
        assert_eq!(stats.persist_errors, 0);
        node.shutdown().unwrap();
    }
    remove_dir(&base);
    let wall = started.elapsed();
    println!("WALL: {wall:?}");
    assert!(wall < TEST_BUDGET, "took {wall:?}");
}

/// A connection that names a node outside the cluster, or sends bytes that
/// are not a batch, is closed and counted; the node goes on.
#[test]
fn a_node_closes_connections_that_break_the_transport_rules() {
    use std::io::{Read, Write};
    let base = std::env::temp_dir().join(format!("strom-shell-refuse-{}", std::process::id()));
    remove_dir(&base);
    let addrs = free_addrs(3);
    let cfg = NodeConfig::new(
        1,
        addrs[0],
        vec![(2, addrs[1]), (3, addrs[2])],
        base.clone(),
        vec![1],
    );
    let node = NodeThread::spawn(cfg, |_| {}).unwrap();
    let closed = |bytes: &[u8]| {
        let mut s = std::net::TcpStream::connect(addrs[0]).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(bytes).unwrap();
        let mut b = [0u8; 1];
        // The node never writes on an inbound connection: EOF means closed.
        matches!(s.read(&mut b), Ok(0) | Err(_))
    };
    // An empty batch from node 9, which is not a peer.
    let mut hello = Vec::new();
    strom_replication::wire::BatchEncoder::new(&mut hello, 9, 1)
        .unwrap()
        .finish();
    assert!(closed(&hello));
    // A batch for node 4 from peer 2.
    let mut misdirected = Vec::new();
    strom_replication::wire::BatchEncoder::new(&mut misdirected, 2, 4)
        .unwrap()
        .finish();
    assert!(closed(&misdirected));
    // Not a batch at all.
    assert!(closed(&[0xAB; 64]));
    let stats = node.stats();
    assert_eq!(stats.refused_batches, 2, "{stats:?}");
    assert_eq!(stats.wire_errors, 1, "{stats:?}");
    node.shutdown().unwrap();
    remove_dir(&base);
}

/// The story: the server removed a group (its topic was deleted) while a
/// persist of that group was in flight, and closing the store panicked
/// ("close while a persist of this store is still held"), taking the
/// shard down. A removed group must wait for its persists, then close.
#[test]
fn removing_a_group_with_persists_in_flight_closes_it() {
    let dir = std::env::temp_dir().join(format!("strom-shell-remove-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let addr = free_addrs(1)[0];
    let data = dir.clone();
    let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(2 << 20)
        .spawn(move || async move {
            let cfg = NodeConfig::new(1, addr, Vec::new(), data.clone(), Vec::new());
            let node = strom_replication::shell::Node::start(cfg, |_| {})
                .await
                .expect("node starts");
            for round in 0..20u64 {
                let group = 100 + round;
                node.add_group(group, &data.join(format!("g{group}")))
                    .await
                    .expect("group added");
                // A single voter elects itself within its election timeout.
                let deadline = Instant::now() + Duration::from_secs(10);
                while !node.view(group).is_some_and(|v| v.is_leader) {
                    assert!(Instant::now() < deadline, "group {group} elected no leader");
                    glommio::timer::sleep(Duration::from_millis(5)).await;
                }
                // Proposals whose persists are in flight when the group goes.
                let pending: Vec<_> = (0..8)
                    .map(|i| node.propose(group, frame(&format!("r{round}-{i}"), 1), Acks::All))
                    .collect();
                glommio::timer::sleep(Duration::from_micros(200 * round)).await;
                node.remove_group(group).await.expect("removed and closed");
                assert!(node.view(group).is_none());
                for p in pending {
                    // Acknowledged before the removal, or answered Stopped.
                    match p.await {
                        Ok(_) | Err(ShellProposeError::Stopped { .. }) => {}
                        Err(e) => panic!("unexpected answer: {e}"),
                    }
                }
            }
            node.shutdown().await.expect("shutdown");
        })
        .expect("executor");
    handle.join().expect("no panic on the node's executor");
    let _ = std::fs::remove_dir_all(&dir);
}
