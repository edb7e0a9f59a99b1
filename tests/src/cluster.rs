//! A real 3-node cluster for end-to-end tests: three `strom-server`
//! processes on 127.0.0.1 (`--node-id`, `--raft-listen`, `--peer`), one
//! shard each, each with its own data directory, optionally with every
//! node's Raft traffic routed through a [`FaultProxy`].
//!
//! # What it owns
//! - [`Cluster`]: the nodes, their addresses ([`free_addrs`]: noted and
//!   released before the nodes bind them) and, when started with
//!   [`Cluster::start_proxied`], the proxy. Node `i`'s `--peer j,raft=...`
//!   then points at link `"i->j"` ([`link`]), whose upstream is node `j`'s
//!   real Raft address. The Raft shell dials each peer for its outgoing
//!   direction and reads only on the connections it accepts, so link
//!   `"i->j"`'s client-to-upstream direction carries all of node i's Raft
//!   traffic to node j: cutting [`links_from`] a node silences it, cutting
//!   [`links_to`] it deafens it. Client ports (native, Kafka, HTTP) are
//!   never proxied.
//! - [`Node`]: one `strom-server` child, restartable on its data
//!   directory (same ports), signalable (SIGSTOP/SIGCONT).
//! - [`Recorder`]: one producer's attempts, each a unique value produced
//!   with acks=all (Durable) through `strom_client` and recorded in a
//!   shared [`History`] for [`crate::checker`]; [`read_final`] turns the
//!   leader's committed log into the checker's [`FinalRead`].
//!
//! # Outcomes ([`classify`])
//! `Ok(offset)`; `Failed` only for refusals made before anything was
//! written (`NotLeader` "...this node is not the leader; node N is", and
//! `LeaderNotAvailable`); everything else (`NotLeader` "...not
//! acknowledged, outcome unknown...", timeouts, a broken connection) is
//! `Unknown`. A value is recorded only once its produce request may have
//! left the client (the connection and the topic's partition count are
//! obtained first), so a value the checker finds but no attempt recorded
//! is a real anomaly.
//!
//! # Invariants
//! - Every wait is bounded: a node prints `ready` within
//!   [`READY_WAIT_MS`], a request is answered or abandoned within
//!   [`REQUEST_WAIT_MS`] (plus the producer's own server-side timeout),
//!   every retry loop ends at a deadline its caller gives.
//! - Every child is SIGKILLed when its [`Node`] is dropped (a stopped one
//!   too), and the nodes are dropped before the proxy, so a failing test
//!   leaves no process behind.
//! - Values are unique per history: `"{prefix}/p{producer}/{n}"`, and a
//!   producer never reuses `n` (a retry is a new value), so any duplicate
//!   in the log is the log's own.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering as AtomicOrdering};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use strom_client::{
    Acks, Client, ConnectionConfig, Consumer, ConsumerConfig, ErrorCode, OffsetSpec, Producer,
    ProducerConfig, ProducerRecord,
};
use strom_flatbuffers::protocol::TopicDescription;

use crate::checker::{FinalRead, History, Outcome, ReadEntry};
use crate::faultproxy::{Fault, FaultProxy};
use crate::{server_bin, TempDir};

/// Nodes of a cluster (node ids are 1..=NODES).
pub const NODES: u64 = 3;
/// A node prints `ready` within this after it is spawned.
pub const READY_WAIT_MS: u64 = 20_000;
/// One request's wait for its answer (on top of the producer's
/// server-side timeout for a produce). A killed node's socket fails at
/// once; a live one answers a produce within [`PRODUCE_TIMEOUT_MS`].
pub const REQUEST_WAIT_MS: u64 = 5_000;
/// A TCP connect to a node, at most.
pub const CONNECT_WAIT_MS: u64 = 2_000;
/// The server-side timeout a produce asks for.
pub const PRODUCE_TIMEOUT_MS: u32 = 5_000;
/// How long a start refused with "raft address ... is in use" is retried.
/// A server bug: strom-server checks its Raft port with a plain
/// (SO_REUSEADDR) bind before glommio's SO_REUSEPORT one, and the sockets
/// glommio accepted have no SO_REUSEADDR, so while any socket of the
/// killed process lingers on that port (FIN-WAIT-2 until the peer writes
/// or closes its end, up to 60 s; TIME-WAIT for 60 s after a graceful
/// close) that bind fails and the server exits. A supervisor would
/// restart it; so does the harness, for a short while ([`Cluster::kill`]
/// and [`Cluster::kill_all`] avoid the long cases through the proxy).
pub const RAFT_ADDR_IN_USE_WAIT_MS: u64 = 10_000;
/// Pause before such a retry.
pub const RAFT_ADDR_IN_USE_PAUSE_MS: u64 = 100;
/// How often a starting node's process is checked for an early exit.
pub const READY_POLL_MS: u64 = 100;
/// Pause between two polls or before a retry.
pub const RETRY_PAUSE_MS: u64 = 20;
/// Bytes of a node's stderr quoted in a failure message, at most.
pub const STDERR_TAIL_BYTES: usize = 2_000;

/// The name of the proxy link carrying node `from`'s Raft traffic to `to`.
pub fn link(from: u64, to: u64) -> String {
    format!("{from}->{to}")
}

/// The links `node` sends its Raft traffic on.
pub fn links_from(node: u64) -> Vec<String> {
    (1..=NODES)
        .filter(|&p| p != node)
        .map(|p| link(node, p))
        .collect()
}

/// The links the other nodes send their Raft traffic to `node` on.
pub fn links_to(node: u64) -> Vec<String> {
    (1..=NODES)
        .filter(|&p| p != node)
        .map(|p| link(p, node))
        .collect()
}

/// Lowest port [`free_addrs`] hands out.
pub const RESERVED_PORT_MIN: u16 = 10_000;
/// Ports [`free_addrs`] needs between [`RESERVED_PORT_MIN`] and the
/// kernel's ephemeral range to use that gap (else it falls back to
/// ephemeral ports).
pub const RESERVED_PORTS_MIN_SPAN: u16 = 1_000;

/// `[RESERVED_PORT_MIN, first ephemeral port)`, if wide enough.
fn reserved_port_range() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let low: u16 = text.split_whitespace().next()?.parse().ok()?;
    (low >= RESERVED_PORT_MIN + RESERVED_PORTS_MIN_SPAN).then_some((RESERVED_PORT_MIN, low))
}

/// `n` free loopback addresses for servers to bind later: bound, noted,
/// released. They come from below the kernel's ephemeral range when there
/// is room (so that no outgoing connection, of the proxy or a client, can
/// take one between the release and the server's bind), in a sequence
/// that starts at a per-process random point and never hands out a port
/// twice in one process; else from the ephemeral range (port 0).
pub fn free_addrs(n: usize) -> Vec<SocketAddr> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static BASE: OnceLock<u32> = OnceLock::new();
    let bind = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port));
    let mut held = Vec::with_capacity(n);
    if let Some((lo, hi)) = reserved_port_range() {
        let span = u32::from(hi - lo);
        let base = *BASE.get_or_init(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            (std::process::id().wrapping_mul(7919) ^ nanos) % span
        });
        for _ in 0..span {
            if held.len() == n {
                break;
            }
            let offset = NEXT.fetch_add(1, AtomicOrdering::Relaxed);
            let port = u32::from(lo) + (base + offset) % span;
            if let Ok(l) = bind(port as u16) {
                held.push(l);
            }
        }
    }
    while held.len() < n {
        held.push(bind(0).expect("bind a free port"));
    }
    held.iter()
        .map(|l| l.local_addr().expect("local addr"))
        .collect()
}

/// Where one node listens.
#[derive(Debug, Clone, Copy)]
pub struct NodeAddrs {
    pub native: SocketAddr,
    pub kafka: SocketAddr,
    /// The node's real Raft listener (the proxy's links point here).
    pub raft: SocketAddr,
    pub http: SocketAddr,
}

// ------------------------------------------------------------------ node

/// Why one start of a node failed.
enum StartFailure {
    /// The server refused to start: its Raft address "is in use" (the
    /// stderr line).
    RaftAddrInUse(String),
    /// Anything else: the whole failure message.
    Other(String),
}

/// One `strom-server` of the cluster.
pub struct Node {
    id: u64,
    child: Option<Child>,
    args: Vec<String>,
    stderr_path: PathBuf,
    // Dropped last: the data outlives the process.
    data: TempDir,
}

impl Node {
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data.path().join("data")
    }

    /// Spawns the node on its data directory and waits (at most
    /// [`READY_WAIT_MS`]) for its `ready` line; panics otherwise, or if
    /// the process exits first. One exception: a start refused because the
    /// Raft address "is in use" is tried again, for at most
    /// [`RAFT_ADDR_IN_USE_WAIT_MS`] (see that constant), and the retries
    /// are printed.
    pub fn start(&mut self) {
        let first = Instant::now();
        let mut refused = 0u32;
        loop {
            match self.try_start() {
                Ok(()) => break,
                Err(StartFailure::RaftAddrInUse(line))
                    if first.elapsed() < Duration::from_millis(RAFT_ADDR_IN_USE_WAIT_MS) =>
                {
                    refused += 1;
                    std::thread::sleep(Duration::from_millis(RAFT_ADDR_IN_USE_PAUSE_MS));
                    if refused == 1 {
                        println!("node {}: start refused ({line}); retrying", self.id);
                    }
                }
                Err(StartFailure::RaftAddrInUse(line)) => {
                    let port = self
                        .args
                        .windows(2)
                        .find(|w| w[0] == "--raft-listen")
                        .map(|w| w[1].rsplit(':').next().unwrap_or("").to_owned())
                        .unwrap_or_default();
                    let sockets = Command::new("ss")
                        .args(["-tanoe", &format!("( sport = :{port} or dport = :{port} )")])
                        .output()
                        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                        .unwrap_or_else(|e| format!("(ss: {e})"));
                    panic!(
                        "node {}: start refused for {RAFT_ADDR_IN_USE_WAIT_MS} ms: {line}\n\
                         sockets on its raft port {port} (ss):\n{sockets}",
                        self.id
                    )
                }
                Err(StartFailure::Other(why)) => panic!("{why}"),
            }
        }
        if refused > 0 {
            println!(
                "node {}: started after {refused} refusals (raft address in use), {:?} after \
                 the first try",
                self.id,
                first.elapsed()
            );
        }
    }

    fn try_start(&mut self) -> Result<(), StartFailure> {
        assert!(self.child.is_none(), "node {} is running", self.id);
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .expect("stderr file");
        let stderr_from = stderr.metadata().map_or(0, |m| m.len() as usize);
        let mut child = Command::new(server_bin())
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn strom-server");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        // Drains stdout for the life of the process (so it never blocks on
        // a full pipe); ends when the process does.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if line.starts_with("ready") {
                    let _ = tx.send(());
                }
            }
        });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_millis(READY_WAIT_MS);
        loop {
            // Disconnected: stdout closed, the process is exiting; its
            // status is collected below (within a poll or two).
            let stdout_closed = match rx.recv_timeout(Duration::from_millis(READY_POLL_MS)) {
                Ok(()) => return Ok(()),
                Err(mpsc::RecvTimeoutError::Timeout) => false,
                Err(mpsc::RecvTimeoutError::Disconnected) => true,
            };
            if Instant::now() >= deadline {
                self.kill();
                return Err(StartFailure::Other(format!(
                    "node {} not ready within {READY_WAIT_MS} ms; stderr:\n{}",
                    self.id,
                    self.stderr_excerpt()
                )));
            }
            if stdout_closed {
                std::thread::sleep(Duration::from_millis(READY_POLL_MS));
            }
            // A panic while starting (a server bug): said at once, not after
            // READY_WAIT_MS.
            let text = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
            if text
                .get(stderr_from..)
                .is_some_and(|t| t.contains("panicked at"))
            {
                self.kill();
                return Err(StartFailure::Other(format!(
                    "node {} panicked while starting; stderr:\n{}",
                    self.id,
                    self.stderr_excerpt()
                )));
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                let text = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
                let this_run = text.get(stderr_from..).unwrap_or_default();
                if let Some(line) = this_run
                    .lines()
                    .find(|l| l.contains("raft address") && l.contains("is in use"))
                {
                    return Err(StartFailure::RaftAddrInUse(line.trim().to_owned()));
                }
                return Err(StartFailure::Other(format!(
                    "node {} exited ({status}) before it was ready; stderr:\n{}",
                    self.id,
                    self.stderr_excerpt()
                )));
            }
        }
    }

    /// SIGKILL (a crash; a stopped process dies too), then reaped.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `sig` (SIGSTOP, SIGCONT, ...) to the running process; panics
    /// if it is not running or the signal cannot be sent.
    pub fn signal(&self, sig: libc::c_int) {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("signal {sig} to node {}: not running", self.id));
        // SAFETY: kill(2) on our own child's pid, not yet reaped (the Node
        // owns the Child until `kill` waits for it).
        let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
        assert_eq!(
            rc,
            0,
            "signal {sig} to node {}: {}",
            self.id,
            std::io::Error::last_os_error()
        );
    }

    /// The node's stderr for a failure message: every line that reports
    /// a panic (with the line after it, the message), then the last
    /// [`STDERR_TAIL_BYTES`].
    pub fn stderr_excerpt(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let mut panics = String::new();
        for (i, line) in lines.iter().enumerate() {
            if line.contains("panicked at") {
                panics.push_str(&format!(
                    "  PANIC: {line} {}\n",
                    lines.get(i + 1).copied().unwrap_or("")
                ));
            }
        }
        let mut start = text.len().saturating_sub(STDERR_TAIL_BYTES);
        while !text.is_char_boundary(start) {
            start += 1;
        }
        format!("{panics}  (tail)\n{}", &text[start..])
    }

    /// Bytes of stderr so far (a mark for [`Node::stderr_since`]).
    pub fn stderr_len(&self) -> usize {
        std::fs::metadata(&self.stderr_path).map_or(0, |m| m.len() as usize)
    }

    /// The node's stderr from byte `mark` on.
    pub fn stderr_since(&self, mark: usize) -> String {
        let text = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        text.get(mark..).unwrap_or_default().to_owned()
    }

    /// Whether the node's stderr reports a panic (of any thread, ever).
    pub fn has_panicked(&self) -> bool {
        std::fs::read_to_string(&self.stderr_path).is_ok_and(|t| t.contains("panicked at"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

// ------------------------------------------------------------------ cluster

/// Three nodes (see the module documentation).
pub struct Cluster {
    // Dropped first: no node outlives the proxy it talks through.
    nodes: Vec<Node>,
    addrs: Vec<NodeAddrs>,
    proxy: Option<FaultProxy>,
}

impl Cluster {
    /// Starts three nodes whose Raft connections go straight to each other.
    pub fn start() -> Cluster {
        Cluster::start_with(false)
    }

    /// Starts three nodes whose Raft connections go through a
    /// [`FaultProxy`], one link per directed pair (see [`link`]).
    pub fn start_proxied() -> Cluster {
        Cluster::start_with(true)
    }

    fn start_with(proxied: bool) -> Cluster {
        let free = free_addrs(4 * NODES as usize);
        let addrs: Vec<NodeAddrs> = (0..NODES as usize)
            .map(|i| NodeAddrs {
                native: free[4 * i],
                kafka: free[4 * i + 1],
                raft: free[4 * i + 2],
                http: free[4 * i + 3],
            })
            .collect();
        let proxy = proxied.then(|| {
            let mut links = Vec::new();
            for from in 1..=NODES {
                for to in (1..=NODES).filter(|&t| t != from) {
                    links.push((link(from, to), addrs[(to - 1) as usize].raft));
                }
            }
            FaultProxy::start(&links).expect("start the fault proxy")
        });
        let mut nodes = Vec::new();
        for (i, a) in addrs.iter().enumerate() {
            let id = i as u64 + 1;
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
            for (j, b) in addrs.iter().enumerate().filter(|&(j, _)| j != i) {
                let peer = j as u64 + 1;
                let raft = match &proxy {
                    Some(p) => p.addr(&link(id, peer)).expect("a link of the proxy"),
                    None => b.raft,
                };
                args.push("--peer".into());
                args.push(format!(
                    "{peer},raft={raft},kafka={},native={}",
                    b.kafka, b.native
                ));
            }
            let data = TempDir::new("strom-cluster");
            let stderr_path = data.path().join("server.stderr");
            nodes.push(Node {
                id,
                child: None,
                args,
                stderr_path,
                data,
            });
        }
        for n in &mut nodes {
            n.start();
        }
        Cluster {
            nodes,
            addrs,
            proxy,
        }
    }

    /// The proxy; panics for a cluster started without one.
    pub fn proxy(&self) -> &FaultProxy {
        self.proxy
            .as_ref()
            .expect("this cluster was started without a fault proxy")
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[(id - 1) as usize]
    }

    pub fn node_mut(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    /// Ids of the nodes whose process runs (a stopped one included).
    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.id)
            .collect()
    }

    /// SIGKILLs node `id`. Through a proxy, every link to it is then reset
    /// and healed (an RST to each Raft connection the dead process had
    /// accepted), a workaround for a server bug: strom-server refuses to
    /// start while any socket of its killed predecessor lingers on its Raft
    /// port (see [`RAFT_ADDR_IN_USE_WAIT_MS`]), and a live peer that has
    /// nothing to send keeps its end open, so the dead side lingers in
    /// FIN-WAIT-2 for 60 s. `cluster_faults` shows the bug on its own
    /// (`killed_node_restarts_while_a_peer_link_to_it_is_down`); without a
    /// proxy the bug can make [`Cluster::restart`] fail.
    pub fn kill(&mut self, id: u64) {
        self.node_mut(id).kill();
        if let Some(proxy) = &self.proxy {
            let links = links_to(id);
            let before: Vec<Fault> = links
                .iter()
                .map(|l| proxy.fault(l).expect("a link of the cluster"))
                .collect();
            proxy
                .set_many(&links, Fault::Reset)
                .expect("the cluster's links");
            for (l, f) in links.iter().zip(before) {
                proxy.set(l, f).expect("a link of the cluster");
            }
        }
    }

    /// SIGKILLs every node at once. Through a proxy, every link is first
    /// reset ([`Fault::Reset`]: an RST on both sides of each Raft
    /// connection) and healed after the kills. Without that, the proxy
    /// would pass on each dead node's FIN gracefully once both ends are
    /// dead, leaving each node's Raft port with TIME-WAIT sockets of the
    /// old process for 60 s, and strom-server refuses to start while they
    /// last (see [`RAFT_ADDR_IN_USE_WAIT_MS`]).
    pub fn kill_all(&mut self) {
        if let Some(proxy) = &self.proxy {
            proxy
                .set_many(&proxy.link_names(), Fault::Reset)
                .expect("the cluster's links");
        }
        for n in &mut self.nodes {
            n.kill();
        }
        if let Some(proxy) = &self.proxy {
            proxy.heal_all();
        }
    }

    /// Starts node `id` again on its data directory and ports.
    pub fn restart(&mut self, id: u64) {
        self.node_mut(id).start();
    }

    pub fn addrs(&self, id: u64) -> NodeAddrs {
        self.addrs[(id - 1) as usize]
    }

    pub fn native(&self, id: u64) -> String {
        self.addrs(id).native.to_string()
    }

    /// The Kafka bootstrap list of every node.
    pub fn bootstrap(&self) -> String {
        self.addrs
            .iter()
            .map(|a| a.kafka.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every node's stderr excerpt ([`Node::stderr_excerpt`]), for a
    /// failure message.
    pub fn stderr_excerpts(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- node {} stderr:\n{}", n.id, n.stderr_excerpt()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Panics if any node's stderr reports a panic (a server bug even when
    /// the cluster recovered from it), quoting it.
    pub fn assert_no_panic(&self, context: &str) {
        let panicked: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.has_panicked())
            .map(|n| format!("--- node {} stderr:\n{}", n.id, n.stderr_excerpt()))
            .collect();
        assert!(
            panicked.is_empty(),
            "{context}: a node panicked:\n{}",
            panicked.join("\n")
        );
    }

    /// A client of node `id` alone (leader following off: it asks only
    /// that node, which refuses what it cannot serve) whose requests wait
    /// at most `request_wait_ms`, or `None` if it cannot connect (and
    /// complete the handshake).
    pub fn client_with(&self, id: u64, request_wait_ms: u64) -> Option<Client> {
        let cfg = ConnectionConfig {
            connect_timeout_ms: CONNECT_WAIT_MS,
            request_timeout_ms: request_wait_ms,
            reconnect_attempts_max: 0,
            ..ConnectionConfig::default()
        };
        let mut c = Client::connect_with(&self.native(id), cfg).ok()?;
        c.set_follow_leaders(false);
        Some(c)
    }

    /// Every node's native address, comma separated (a bootstrap list for
    /// strom-client and the CLI).
    pub fn native_bootstrap(&self) -> String {
        self.addrs
            .iter()
            .map(|a| a.native.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// [`Cluster::client_with`] [`REQUEST_WAIT_MS`].
    pub fn client(&self, id: u64) -> Option<Client> {
        self.client_with(id, REQUEST_WAIT_MS)
    }

    /// Node `id`'s description of `topic`.
    pub fn describe(&self, id: u64, topic: &str) -> Result<TopicDescription, String> {
        let mut c = self
            .client(id)
            .ok_or_else(|| format!("node {id}: cannot connect"))?;
        c.describe_topic(topic)
            .map_err(|e| format!("node {id}: {e}"))
    }

    /// Creates `topic` through whichever node is the controller, retrying
    /// (every node in turn) until `deadline`; returns the node that
    /// created it (or said it already exists). Panics at the deadline.
    pub fn create_topic(&self, topic: &str, partitions: u32, deadline: Instant) -> u64 {
        let mut last = String::new();
        while Instant::now() < deadline {
            for id in self.running() {
                let Some(mut c) = self.client(id) else {
                    continue;
                };
                match c.create_topic(topic, partitions, &[]) {
                    Ok(()) => return id,
                    Err(strom_client::Error::Server {
                        code: ErrorCode::TopicAlreadyExists,
                        ..
                    }) => return id,
                    Err(e) => last = format!("node {id}: {e}"),
                }
            }
            std::thread::sleep(Duration::from_millis(RETRY_PAUSE_MS));
        }
        panic!("no node created topic {topic} in time; last error: {last}");
    }

    /// The leader of `topic`/`p` among `among`: a node that names itself
    /// leader, with its epoch. When two do (an old leader that has not yet
    /// noticed), the one of the higher epoch.
    pub fn leader_among(&self, among: &[u64], topic: &str, p: u32) -> Option<(u64, u64)> {
        let mut best: Option<(u64, u64)> = None;
        for &id in among {
            let Ok(d) = self.describe(id, topic) else {
                continue;
            };
            let Some(part) = d.partitions.iter().find(|x| x.partition == p) else {
                continue;
            };
            if part.leader_node == id && best.is_none_or(|(_, e)| e < part.leader_epoch) {
                best = Some((id, part.leader_epoch));
            }
        }
        best
    }

    /// [`Cluster::leader_among`] every running node.
    pub fn leader(&self, topic: &str, p: u32) -> Option<u64> {
        self.leader_among(&self.running(), topic, p)
            .map(|(id, _)| id)
    }

    /// Waits until some node of `among` leads `topic`/`p`, at most until
    /// `deadline`: (leader, epoch).
    pub fn wait_leader(
        &self,
        among: &[u64],
        topic: &str,
        p: u32,
        deadline: Instant,
    ) -> Option<(u64, u64)> {
        loop {
            if let Some(l) = self.leader_among(among, topic, p) {
                return Some(l);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(RETRY_PAUSE_MS));
        }
    }

    /// Waits until every running node reports the same leader (which names
    /// itself), leader epoch and high watermark for `topic`/`p`, at most
    /// until `deadline`. The views of the last poll on failure.
    pub fn wait_agreement(
        &self,
        topic: &str,
        p: u32,
        deadline: Instant,
    ) -> Result<Agreement, Vec<(u64, PartitionView)>> {
        loop {
            let views: Vec<(u64, PartitionView)> = self
                .running()
                .into_iter()
                .map(|id| {
                    let view = self.describe(id, topic).and_then(|d| {
                        d.partitions
                            .iter()
                            .find(|x| x.partition == p)
                            .map(|x| (x.leader_node, x.leader_epoch, x.high_watermark))
                            .ok_or_else(|| format!("node {id}: no partition {p}"))
                    });
                    (id, view)
                })
                .collect();
            let first = views.first().and_then(|(_, v)| v.as_ref().ok()).copied();
            if let Some((leader, epoch, high_watermark)) = first {
                let agreed = leader != 0
                    && views.iter().any(|(id, _)| *id == leader)
                    && views
                        .iter()
                        .all(|(_, v)| v.as_ref().ok() == Some(&(leader, epoch, high_watermark)));
                if agreed {
                    return Ok(Agreement {
                        leader,
                        epoch,
                        high_watermark,
                    });
                }
            }
            if Instant::now() >= deadline {
                return Err(views);
            }
            std::thread::sleep(Duration::from_millis(RETRY_PAUSE_MS));
        }
    }
}

/// What one node says of one partition: (leader, leader epoch, high
/// watermark), or why it did not answer.
pub type PartitionView = Result<(u64, u64, u64), String>;

/// What every node said alike about one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreement {
    pub leader: u64,
    pub epoch: u64,
    pub high_watermark: u64,
}

// ------------------------------------------------------------------ produce

/// True for the answers that say a produce was refused before anything
/// was written: `LeaderNotAvailable`, and `NotLeader` naming the leader
/// ("...this node is not the leader; node N is"), as opposed to `NotLeader`
/// "...not acknowledged, outcome unknown...".
pub fn is_refusal(code: ErrorCode, message: &str) -> bool {
    code == ErrorCode::LeaderNotAvailable
        || (code == ErrorCode::NotLeader
            && message.contains("is not the leader")
            && !message.contains("outcome unknown"))
}

/// What a producer may conclude from a produce's result (see the module
/// documentation).
pub fn classify(result: &Result<u64, strom_client::Error>) -> Outcome {
    match result {
        Ok(offset) => Outcome::Ok {
            offset: *offset,
            epoch: None,
        },
        Err(strom_client::Error::Server { code, message, .. }) if is_refusal(*code, message) => {
            Outcome::Failed
        }
        Err(_) => Outcome::Unknown,
    }
}

/// One recorded produce attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The node asked.
    pub node: u64,
    pub value: String,
    pub outcome: Outcome,
    /// The error's text, when not `Ok`.
    pub error: Option<String>,
    /// When the request was handed to the client (just before it was
    /// written to the socket).
    pub sent_at: Instant,
    pub answered_at: Instant,
}

/// A connected producer of one node, its topic's partition count known,
/// so that [`Recorder::produce_on`] sends at once (to a SIGSTOPped node,
/// say).
pub struct Connected {
    node: u64,
    producer: Producer,
}

/// One producer's attempts, recorded in a shared [`History`].
pub struct Recorder {
    history: Arc<Mutex<History>>,
    producer: u64,
    prefix: String,
    topic: String,
    partition: u32,
    sent: u64,
}

impl Recorder {
    /// Producer `producer` of `history`, producing to `topic`/`partition`
    /// values `"{prefix}/p{producer}/{n}"`.
    pub fn new(
        history: &Arc<Mutex<History>>,
        producer: u64,
        prefix: &str,
        topic: &str,
        partition: u32,
    ) -> Recorder {
        Recorder {
            history: history.clone(),
            producer,
            prefix: prefix.to_owned(),
            topic: topic.to_owned(),
            partition,
            sent: 0,
        }
    }

    fn history(&self) -> MutexGuard<'_, History> {
        lock_history(&self.history)
    }

    /// Connects a producer to node `id` and learns the topic's partition
    /// count (no value is sent); why not, if the node cannot be reached.
    pub fn connect(&self, cluster: &Cluster, id: u64) -> Result<Connected, String> {
        let cfg = ConnectionConfig {
            connect_timeout_ms: CONNECT_WAIT_MS,
            request_timeout_ms: REQUEST_WAIT_MS,
            reconnect_attempts_max: 0,
            ..ConnectionConfig::default()
        };
        let mut client = Client::connect_with(&cluster.native(id), cfg)
            .map_err(|e| format!("node {id}: connect: {e}"))?;
        // This producer asks node `id` alone (module docs: the node asked).
        client.set_follow_leaders(false);
        client
            .partition_count(&self.topic)
            .map_err(|e| format!("node {id}: partition count of {}: {e}", self.topic))?;
        let cfg = ProducerConfig {
            acks: Acks::Durable,
            linger_ms: 0,
            timeout_ms: PRODUCE_TIMEOUT_MS,
            ..ProducerConfig::default()
        };
        Ok(Connected {
            node: id,
            producer: Producer::new(client, cfg),
        })
    }

    /// Produces one fresh value on `conn` and records the attempt.
    pub fn produce_on(&mut self, conn: &mut Connected) -> Attempt {
        self.sent += 1;
        let value = format!("{}/p{}/{}", self.prefix, self.producer, self.sent);
        let op = self.history().invoke(self.producer, value.clone());
        let sent_at = Instant::now();
        let record = ProducerRecord::new(&self.topic, value.as_bytes()).partition(self.partition);
        let result = match conn.producer.send(&record) {
            Err(e) => Err(e),
            Ok(_) => conn.producer.flush().pop().unwrap_or_else(|| {
                Err(strom_client::Error::InvalidArgument(
                    "flush returned no result".into(),
                ))
            }),
        };
        let answered_at = Instant::now();
        let outcome = classify(&result);
        self.history().complete(op, outcome);
        Attempt {
            node: conn.node,
            value,
            outcome,
            error: result.err().map(|e| e.to_string()),
            sent_at,
            answered_at,
        }
    }

    /// Produces one fresh value through node `id` (a new connection);
    /// an error when the node could not be reached (nothing was sent or
    /// recorded).
    pub fn produce_to(&mut self, cluster: &Cluster, id: u64) -> Result<Attempt, String> {
        let mut conn = self.connect(cluster, id)?;
        Ok(self.produce_on(&mut conn))
    }

    /// Produces fresh values through the nodes of `among`, the leader
    /// first, until one is acknowledged; panics at `deadline`. Returns the
    /// acknowledged attempt.
    pub fn produce_acked(
        &mut self,
        cluster: &Cluster,
        among: &[u64],
        deadline: Instant,
    ) -> Attempt {
        let mut tries = 0u64;
        let mut last = String::from("none");
        while Instant::now() < deadline {
            let mut ids: Vec<u64> = among.to_vec();
            if let Some((l, _)) = cluster.leader_among(among, &self.topic, self.partition) {
                ids.retain(|&x| x != l);
                ids.insert(0, l);
            }
            for id in ids {
                if Instant::now() >= deadline {
                    break;
                }
                tries += 1;
                match self.produce_to(cluster, id) {
                    Ok(a) if matches!(a.outcome, Outcome::Ok { .. }) => return a,
                    Ok(a) => last = format!("node {id}: {:?}", a.error),
                    Err(e) => last = e,
                }
            }
            std::thread::sleep(Duration::from_millis(RETRY_PAUSE_MS));
        }
        panic!(
            "producer {} of {}: no node of {among:?} acknowledged a produce in time \
             ({tries} tries; last: {last})",
            self.producer, self.prefix
        );
    }

    /// [`Recorder::produce_acked`] `n` times; the attempts acknowledged.
    pub fn produce_n_acked(
        &mut self,
        cluster: &Cluster,
        among: &[u64],
        n: usize,
        deadline: Instant,
    ) -> Vec<Attempt> {
        (0..n)
            .map(|_| self.produce_acked(cluster, among, deadline))
            .collect()
    }
}

/// The history, even if a thread that held it panicked (the panic is
/// reported by its own join).
pub fn lock_history(h: &Mutex<History>) -> MutexGuard<'_, History> {
    h.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The highest acknowledged offset of a history, if any.
pub fn top_acked(history: &History) -> Option<u64> {
    history
        .ops()
        .iter()
        .filter_map(|p| match p.outcome {
            Outcome::Ok { offset, .. } => Some(offset),
            _ => None,
        })
        .max()
}

// ------------------------------------------------------------------ read

/// Every committed record of `topic`/`p`, read from its leader among
/// `among` (retrying, e.g. across a leader change, until `deadline`), as
/// the checker's final read: it covers the log start through the high
/// watermark; offsets without a record are gaps (Raft no-ops and
/// configuration entries). Returns the node read from and the read.
/// Panics at the deadline, or if the leader returns one offset twice.
pub fn read_final(
    cluster: &Cluster,
    among: &[u64],
    topic: &str,
    p: u32,
    deadline: Instant,
) -> (u64, FinalRead) {
    let mut last = String::from("no leader");
    while Instant::now() < deadline {
        let Some((l, _)) = cluster.leader_among(among, topic, p) else {
            std::thread::sleep(Duration::from_millis(RETRY_PAUSE_MS));
            continue;
        };
        match read_from(cluster, l, topic, p, deadline) {
            Ok(read) => return (l, read),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(RETRY_PAUSE_MS));
    }
    panic!("could not read {topic}/{p} from its leader in time; last: {last}");
}

fn read_from(
    cluster: &Cluster,
    id: u64,
    topic: &str,
    p: u32,
    deadline: Instant,
) -> Result<FinalRead, String> {
    let mut c = cluster
        .client(id)
        .ok_or_else(|| format!("node {id}: cannot connect"))?;
    let start = c
        .list_offset(topic, p, OffsetSpec::Earliest)
        .map_err(|e| format!("node {id}: earliest: {e}"))?
        .unwrap_or(0);
    let end = c
        .list_offset(topic, p, OffsetSpec::Latest)
        .map_err(|e| format!("node {id}: latest: {e}"))?
        .unwrap_or(0);
    let mut consumer = Consumer::new(c, ConsumerConfig::default());
    consumer
        .assign(topic, p, OffsetSpec::At(start))
        .map_err(|e| format!("node {id}: assign: {e}"))?;
    let mut at: BTreeMap<u64, String> = BTreeMap::new();
    while consumer.position(topic, p).unwrap_or(0) < end {
        if Instant::now() >= deadline {
            return Err(format!("node {id}: read not done by the deadline"));
        }
        let frames = consumer
            .poll(Duration::from_millis(500))
            .map_err(|e| format!("node {id}: fetch: {e}"))?;
        for f in frames {
            let base = f.header().base_offset();
            for (i, r) in f.records().enumerate() {
                let offset = base + i as u64;
                let value = String::from_utf8_lossy(r.value.unwrap_or_default()).into_owned();
                if let Some(prev) = at.insert(offset, value.clone()) {
                    panic!(
                        "node {id} returned offset {offset} of {topic}/{p} twice \
                         ({prev:?}, then {value:?})"
                    );
                }
            }
        }
    }
    Ok(FinalRead {
        source: format!("node {id}"),
        covered: start..end,
        entries: at
            .into_iter()
            .filter(|(offset, _)| (start..end).contains(offset))
            .map(|(offset, value)| ReadEntry {
                offset,
                epoch: None,
                value,
            })
            .collect(),
    })
}
