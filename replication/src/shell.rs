//! The glommio shell: runs a node's replicas for real. One [`Node`] is one
//! shard of one node (one glommio executor); it owns every Raft group the
//! shard replicates and the TCP transport to the other nodes.
//!
//! # What it owns
//! - One [`ReplicaCore`] over an [`EngineStore`] per group (directory
//!   `data_dir/group-<id>`), with the reply channels of its pending
//!   proposals.
//! - One tick timer for all groups ([`NodeConfig::tick_ms`]): every tick,
//!   each group is ticked, then its actions are carried out.
//! - The transport: a listener that accepts one inbound connection per peer
//!   (read only), and per peer one writer task that dials it, with back-off,
//!   and writes its [`Outbox`] (write only). So there is one connection per
//!   (this node, peer) direction.
//!
//! # Carrying out actions ([`Action`]), in the order the core gives them
//! After every input (tick, message, proposal, persist completion) the
//! group's actions are drained at once (`pump`):
//! - `Persist`: a task runs `EngineStore::persist(upto)` then
//!   `on_persisted(upto)`. At most one persist per group is in flight; a
//!   later request raises its target and is run when the current one ends
//!   (syncs coalesce). Groups persist independently.
//! - `Send`: queued in the peer's outbox, which the peer's writer drains
//!   when it next runs: every message queued in one executor turn (a tick of
//!   all groups, a batch of inbound messages) leaves as one wire batch.
//!   A `MsgSnapshot` is reported delivered when queued (a simplification:
//!   no end-to-end confirmation; raft-rs retries a failed snapshot).
//! - `Apply` / `InstallSnapshot`: handed to the node's apply callback.
//! - `Acknowledged` / `ProposalFailed`: answer the proposal's future.
//!
//! # Transport invariants
//! - Every batch read is framed with [`peek_batch_len`] (so a read buffer
//!   never holds more than [`BATCH_BYTES_MAX`] plus one read chunk) and
//!   decoded with [`decode_batch`] (bytes from the network never reach
//!   raft-rs's protobuf decoder).
//! - A connection's first batch (an empty "hello" batch from the dialer)
//!   names the peer; a batch whose `to_node` is not this node, whose
//!   `from_node` is not that peer (or not a configured peer), or a message
//!   whose `from` is not that peer, closes the connection and is counted.
//! - Outboxes are bounded ([`OUTBOX_MESSAGES_MAX`]): a message to a full
//!   outbox or to a peer that is not connected is dropped and counted. Raft
//!   tolerates loss (it retries appends and votes).
//!
//! # Stopping
//! [`Node::kill`] stops the node abruptly (the test's crash): every network
//! and timer task is cancelled, persist completions are ignored, nothing is
//! closed; the files keep what was written. [`Node::shutdown`] stops the
//! tasks, waits for the persists in flight and closes every store.
//!
//! `kill` still lets the persists in flight finish (bounded) before the
//! executor ends, but never reports them to the cores: the state is that of
//! a crash just after those writes, not in the middle of one (the
//! fault-injecting storage tests of `engine_store` cover torn persists).
//!
//! # Not built
//! Membership changes, compaction/retention driving (`wants_compaction`),
//! reopening a group whose store failed (it stops; counted), a quiescent
//! mode for idle groups (every group ticks), TLS/authentication of peers,
//! multiple shards per node (a shard's peer is a node), reporting
//! unreachable peers to raft-rs (`report_unreachable`), pruning the handles
//! of finished inbound-connection tasks (they accumulate, one per accepted
//! connection, until the node stops), a memory budget across inbound
//! connections (each may buffer up to one [`BATCH_BYTES_MAX`] batch).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use glommio::Task;
use raft::eraftpb::{Message, MessageType};
use strom_engine::{AnyStorage, LogConfig};

use crate::core::{Acks, Action, ProposalId, ReplicaConfig, ReplicaCore};
use crate::engine_store::{EngineStore, StoreOpenError, StorePersistError};
use crate::error::{OpenError, ProposalError, ProposeError};
use crate::limits;
use crate::wire::{
    decode_batch, peek_batch_len, Batch, BatchEncoder, WireError, BATCH_BYTES_MAX,
    BATCH_HEADER_BYTES,
};

// ----------------------------------------------------------------- limits

/// Length of one tick, for all groups of a node.
pub const DEFAULT_TICK_MS: u64 = 10;
/// Messages queued for one peer, at most; past this, new ones are dropped.
pub const OUTBOX_MESSAGES_MAX: usize = 16 * 1024;
/// Bytes asked of one socket read.
pub const READ_CHUNK_BYTES: usize = 64 << 10;
/// First and largest pause between two connection attempts to a peer.
pub const CONNECT_BACKOFF_MIN_MS: u64 = 20;
pub const CONNECT_BACKOFF_MAX_MS: u64 = 500;
/// A connection attempt that takes longer fails.
pub const CONNECT_TIMEOUT_MS: u64 = 500;
/// Inbound connections open at once; more are closed at accept.
pub const INBOUND_CONNECTIONS_MAX: usize = 64;
/// Groups on one node.
pub const GROUPS_MAX: usize = 4096;
/// Peers of one node (a group's voters are the node and its peers).
pub const PEERS_MAX: usize = limits::VOTERS_MAX - 1;
/// [`Node::shutdown`] waits at most this long for persists in flight.
pub const SHUTDOWN_WAIT_MS: u64 = 10_000;
/// [`NodeThread`]: pause between two polls of its command channel.
pub const COMMAND_POLL_MS: u64 = 2;
/// How long start-up waits to learn whether its Raft address is taken.
pub const LISTEN_PROBE_MS: u64 = 200;
/// [`NodeThread`]: DMA memory of the node's executor.
pub const NODE_IO_MEMORY_BYTES: usize = 2 << 20;
const _: () = assert!(READ_CHUNK_BYTES >= BATCH_HEADER_BYTES);
const _: () = assert!(CONNECT_BACKOFF_MIN_MS <= CONNECT_BACKOFF_MAX_MS);

// ----------------------------------------------------------------- config

/// One node (one shard) and the groups it replicates. Every group's voters
/// are this node and all its peers.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id (>= 1, never reused).
    pub id: u64,
    /// Where peers connect.
    pub listen: SocketAddr,
    /// Every other node: id and address.
    pub peers: Vec<(u64, SocketAddr)>,
    /// Groups live in `data_dir/group-<id>`.
    pub data_dir: PathBuf,
    pub groups: Vec<u64>,
    pub tick_ms: u64,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// The engine log of every group (its `frame_bytes_max` caps proposals).
    pub log: LogConfig,
    /// Every group opened re-applies its entries after its snapshot point
    /// (`ReplicaConfig::replay_applied`), for an apply callback whose state
    /// is not durable (the server's producer state).
    pub replay_on_open: bool,
}

impl NodeConfig {
    pub fn new(
        id: u64,
        listen: SocketAddr,
        peers: Vec<(u64, SocketAddr)>,
        data_dir: PathBuf,
        groups: Vec<u64>,
    ) -> Self {
        NodeConfig {
            id,
            listen,
            peers,
            data_dir,
            groups,
            tick_ms: DEFAULT_TICK_MS,
            election_ticks: limits::DEFAULT_ELECTION_TICKS,
            heartbeat_ticks: limits::DEFAULT_HEARTBEAT_TICKS,
            log: small_log_config(),
            replay_on_open: false,
        }
    }

    /// Every voter of every group, sorted.
    pub fn voters(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.peers.iter().map(|(id, _)| *id).collect();
        v.push(self.id);
        v.sort_unstable();
        v
    }

    pub fn validate(&self) -> Result<(), StartError> {
        let bad = |reason: String| Err(StartError::Config { reason });
        if self.id == 0 {
            return bad("node id 0 is reserved".into());
        }
        if self.peers.len() > PEERS_MAX {
            return bad(format!("{} peers exceed {PEERS_MAX}", self.peers.len()));
        }
        let voters = self.voters();
        if voters.windows(2).any(|w| w[0] == w[1]) || voters.contains(&0) {
            return bad(format!(
                "node ids must be distinct and non-zero: {voters:?}"
            ));
        }
        let groups: BTreeSet<u64> = self.groups.iter().copied().collect();
        if groups.len() != self.groups.len() || groups.len() > GROUPS_MAX {
            return bad(format!(
                "{} groups: must be distinct and at most {GROUPS_MAX}",
                self.groups.len()
            ));
        }
        if self.tick_ms == 0 {
            return bad("tick_ms is 0".into());
        }
        self.log.validate().map_err(|e| StartError::Config {
            reason: e.to_string(),
        })
    }
}

/// A log configuration sized for many small replicated partitions.
pub fn small_log_config() -> LogConfig {
    LogConfig {
        segment_bytes: 8 << 20,
        segment_ms: None,
        retention_bytes: None,
        retention_ms: None,
        frame_bytes_max: 1 << 20,
        cache_bytes_max: 1 << 20,
        index_interval_bytes: 4096,
        preallocate_bytes: 1 << 20,
        write_buffer_bytes: 256 << 10,
        unwritten_bytes_max: 1 << 20,
        read_ahead_bytes: 64 << 10,
        checkpoint_interval_bytes: 1 << 20,
        disk_reserve_bytes: 0,
        ..LogConfig::default()
    }
}

// ----------------------------------------------------------------- errors

/// Starting a node failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("invalid node configuration: {reason}")]
    Config { reason: String },
    #[error("bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: glommio::GlommioError<()>,
    },
    #[error("group {group}: open its store: {source}")]
    Store {
        group: u64,
        #[source]
        source: StoreOpenError,
    },
    #[error("group {group}: open its replica: {source}")]
    Replica {
        group: u64,
        #[source]
        source: OpenError,
    },
    #[error("the node's executor: {reason}")]
    Executor { reason: String },
}

/// A clean shutdown that did not close everything.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShutdownError {
    #[error("{count} persists still in flight after {SHUTDOWN_WAIT_MS} ms: stores left unclosed")]
    PersistsInFlight { count: usize },
    #[error("group {group}: close its store: {source}")]
    Close {
        group: u64,
        #[source]
        source: StorePersistError,
    },
}

/// A proposal through [`Node::propose`] that was not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShellProposeError {
    #[error("group {group} is not on this node")]
    UnknownGroup { group: u64 },
    /// Refused at once: nothing was appended (see `NotLeader`'s hint).
    #[error("group {group}: {source}")]
    Refused {
        group: u64,
        #[source]
        source: ProposeError,
    },
    /// Accepted, then not acknowledged (outcome per [`ProposalError`]).
    #[error("group {group}: {source}")]
    Failed {
        group: u64,
        #[source]
        source: ProposalError,
    },
    /// The group's store failed: the replica must be reopened.
    #[error("group {group}: its store failed: {reason}")]
    StoreFailed { group: u64, reason: String },
    /// The node stopped before the proposal was answered (outcome unknown).
    #[error("group {group}: the node stopped (outcome unknown)")]
    Stopped { group: u64 },
}

impl ShellProposeError {
    /// The leader to try instead, when this node is not the leader.
    pub fn leader_hint(&self) -> Option<u64> {
        match self {
            ShellProposeError::Refused {
                source: ProposeError::NotLeader { leader_hint, .. },
                ..
            }
            | ShellProposeError::Failed {
                source: ProposalError::NotLeader { leader_hint, .. },
                ..
            } => *leader_hint,
            _ => None,
        }
    }

    /// Whether the same proposal may succeed later or elsewhere.
    pub fn is_retriable(&self) -> bool {
        match self {
            ShellProposeError::Refused { source, .. } => source.is_retriable(),
            ShellProposeError::UnknownGroup { .. } => false,
            _ => true,
        }
    }
}

// ----------------------------------------------------------------- outbox

/// The messages waiting for one peer (I/O-free). Bounded; drained into as
/// few wire batches as the batch limits allow, all groups together.
#[derive(Debug)]
pub struct Outbox {
    queue: VecDeque<(u64, Message)>,
    max: usize,
}

impl Outbox {
    pub fn new(max: usize) -> Self {
        assert!(max > 0);
        Outbox {
            queue: VecDeque::new(),
            max,
        }
    }

    /// Queues `msg` of group `group`; false (dropped) when full.
    pub fn push(&mut self, group: u64, msg: Message) -> bool {
        if self.queue.len() >= self.max {
            return false;
        }
        self.queue.push_back((group, msg));
        true
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Drops everything queued; returns how many.
    pub fn clear(&mut self) -> usize {
        let n = self.queue.len();
        self.queue.clear();
        n
    }

    /// Moves every queued message into batches from `from` to `to` at the
    /// end of `out`, in order; a new batch starts only when one is full.
    /// A message that no batch can carry is dropped. Returns (batches,
    /// messages encoded, messages dropped).
    pub fn encode(&mut self, from: u64, to: u64, out: &mut Vec<u8>) -> (usize, usize, usize) {
        let (mut batches, mut sent, mut dropped) = (0, 0, 0);
        while !self.queue.is_empty() {
            let mut enc = BatchEncoder::new(out, from, to).expect("node ids are non-zero");
            while let Some((group, msg)) = self.queue.front() {
                match enc.push(*group, msg) {
                    Ok(()) => {
                        self.queue.pop_front();
                        sent += 1;
                    }
                    Err(WireError::BatchFull { .. }) => break,
                    Err(WireError::TooMany { .. }) if enc.message_count() > 0 => break,
                    Err(_) => {
                        self.queue.pop_front();
                        dropped += 1;
                    }
                }
            }
            if enc.message_count() > 0 {
                enc.finish();
                batches += 1;
            }
        }
        (batches, sent, dropped)
    }
}

/// Why an inbound batch closes its connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchRefusal {
    #[error("batch for node {to_node} received by node {us}")]
    WrongRecipient { to_node: u64, us: u64 },
    #[error("batch from node {from_node}, which is not a peer")]
    UnknownPeer { from_node: u64 },
    #[error("batch from node {from_node} on the connection of peer {peer}")]
    PeerMismatch { from_node: u64, peer: u64 },
    #[error("message from {from} in a batch from node {from_node}")]
    SenderMismatch { from: u64, from_node: u64 },
}

/// Checks a decoded inbound batch against this node (`us`), its peers and
/// the connection's peer (set by the first batch). I/O-free.
pub fn check_inbound(
    batch: &Batch,
    us: u64,
    peers: &BTreeSet<u64>,
    conn_peer: &mut Option<u64>,
) -> Result<(), BatchRefusal> {
    if batch.to_node != us {
        return Err(BatchRefusal::WrongRecipient {
            to_node: batch.to_node,
            us,
        });
    }
    let from_node = batch.from_node;
    match *conn_peer {
        None if !peers.contains(&from_node) => {
            return Err(BatchRefusal::UnknownPeer { from_node });
        }
        None => *conn_peer = Some(from_node),
        Some(peer) if peer != from_node => {
            return Err(BatchRefusal::PeerMismatch { from_node, peer });
        }
        Some(_) => {}
    }
    if let Some((_, m)) = batch.messages.iter().find(|(_, m)| m.from != from_node) {
        return Err(BatchRefusal::SenderMismatch {
            from: m.from,
            from_node,
        });
    }
    Ok(())
}

// ----------------------------------------------------------------- node

/// What the apply callback receives, in log order per group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyEvent {
    /// A committed entry, durable here. `data` is the stored frame (base
    /// offset and leader epoch stamped); empty for a leader's no-op.
    Entry {
        group: u64,
        index: u64,
        term: u64,
        data: Bytes,
    },
    /// The log now starts after `index` (a snapshot from the leader).
    Snapshot { group: u64, index: u64, term: u64 },
}

/// Counters of one node (a snapshot of them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeStats {
    pub batches_sent: u64,
    pub messages_sent: u64,
    pub batches_received: u64,
    pub messages_received: u64,
    /// Dropped: outbox full.
    pub dropped_full: u64,
    /// Dropped: the peer was not connected.
    pub dropped_disconnected: u64,
    /// Dropped: no batch could carry it (over a wire limit).
    pub dropped_unencodable: u64,
    /// Connections closed for bytes that do not decode.
    pub wire_errors: u64,
    /// Connections closed by [`check_inbound`].
    pub refused_batches: u64,
    /// Inbound connections closed at accept (over the limit).
    pub refused_connections: u64,
    /// Messages the replica refused, or of groups not on this node.
    pub step_errors: u64,
    pub connects: u64,
    pub connect_failures: u64,
    pub persists: u64,
    pub persist_errors: u64,
    /// Wall time of the completed persists, from start to completion
    /// (waiting for the store's one-at-a-time lock included).
    pub persist_micros: u64,
    pub ticks: u64,
}

/// Shared per-group status for tests and metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    pub group: u64,
    pub leader: Option<u64>,
    pub term: u64,
    pub is_leader: bool,
    pub commit: u64,
    pub applied: u64,
    pub last_index: u64,
    pub failed: Option<String>,
}

type Store = EngineStore<AnyStorage>;
type Reply = Result<(u64, u64), ShellProposeError>;

struct Group {
    core: ReplicaCore<Store>,
    waiters: HashMap<ProposalId, LocalSender<Reply>>,
    /// Highest write sequence number asked to be durable.
    persist_target: u64,
    persist_running: bool,
    failed: Option<String>,
    /// The end of the committed log this node has announced to readers
    /// (see [`Committed`]); raised in `pump`, never lowered.
    announced: Committed,
    /// Notified whenever `announced` moves, or the group goes away.
    commit_event: Rc<event_listener::Event>,
}

/// The committed log of a group as this node knows it, in Kafka offsets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Committed {
    /// The first offset held (the snapshot point's offset).
    pub log_start_offset: u64,
    /// The offset after the last committed entry (Kafka's high watermark).
    pub high_watermark: u64,
    /// The offset after the last committed entry that holds records (not a
    /// control frame): a consumer at or past it has nothing to read yet.
    pub data_end_offset: u64,
}

/// What [`Node::view`] tells of one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupView {
    pub leader: Option<u64>,
    pub is_leader: bool,
    /// This node leads and has applied an entry of its own term (its
    /// first, a no-op): every entry of earlier terms that survives is then
    /// committed and applied here, so state built by the apply callback is
    /// complete. A new leader is not ready until then.
    pub leader_ready: bool,
    /// The current term (Kafka's leader epoch).
    pub term: u64,
    pub committed: Committed,
}

/// A read of a group's committed log ([`Node::read_committed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedRead {
    /// Whole producer frames, in offset order, stamped (base offset and
    /// leader epoch); control frames are left out (their offsets are gaps).
    pub frames: Vec<Bytes>,
    pub committed: Committed,
}

/// A read that could not be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    #[error("group {group} is not on this node")]
    UnknownGroup { group: u64 },
    #[error("group {group}: offset {offset} is outside [{log_start_offset}, {high_watermark}]")]
    OutOfRange {
        group: u64,
        offset: u64,
        log_start_offset: u64,
        high_watermark: u64,
    },
}

struct Peer {
    outbox: RefCell<Outbox>,
    connected: Cell<bool>,
    doorbell: LocalSender<()>,
}

struct Inner {
    id: u64,
    /// Every group's voters: this node and its peers, sorted.
    voters: Vec<u64>,
    election_ticks: usize,
    heartbeat_ticks: usize,
    log: LogConfig,
    replay_on_open: bool,
    storage: AnyStorage,
    peer_ids: BTreeSet<u64>,
    groups: RefCell<BTreeMap<u64, Group>>,
    peers: BTreeMap<u64, Peer>,
    on_apply: RefCell<Box<dyn FnMut(ApplyEvent)>>,
    stats: Cell<NodeStats>,
    /// Set by kill and shutdown: no input reaches a core any more.
    stopped: Cell<bool>,
    tasks: RefCell<Vec<Task<()>>>,
    persists_running: Cell<usize>,
    inbound: Cell<usize>,
}

/// One shard of one node running its replicas (see the module
/// documentation). Lives on one glommio executor (`!Send`).
pub struct Node {
    inner: Rc<Inner>,
    listen: SocketAddr,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What opening one group needs (from the node's configuration).
struct GroupParams<'a> {
    id: u64,
    replay: bool,
    voters: &'a [u64],
    election_ticks: usize,
    heartbeat_ticks: usize,
    log: &'a LogConfig,
    storage: &'a AnyStorage,
}

fn cfg_params<'a>(
    cfg: &'a NodeConfig,
    voters: &'a [u64],
    storage: &'a AnyStorage,
) -> GroupParams<'a> {
    GroupParams {
        id: cfg.id,
        replay: cfg.replay_on_open,
        voters,
        election_ticks: cfg.election_ticks,
        heartbeat_ticks: cfg.heartbeat_ticks,
        log: &cfg.log,
        storage,
    }
}

/// Opens (or creates) one group's store in `dir` and its replica.
async fn open_group(p: &GroupParams<'_>, group: u64, dir: &Path) -> Result<Group, StartError> {
    let (store, _recovery) =
        EngineStore::open(p.storage.clone(), dir, p.voters, p.log.clone(), now_ms())
            .await
            .map_err(|source| StartError::Store { group, source })?;
    // A replica that replays its log on open rebuilds its state from it:
    // a commit index that comes back lower after a crash costs nothing.
    store.set_lazy_commit(p.replay);
    let mut rc = ReplicaConfig::new(p.id, p.voters);
    rc.election_ticks = p.election_ticks;
    rc.heartbeat_ticks = p.heartbeat_ticks;
    rc.proposal_bytes_max = rc.proposal_bytes_max.min(p.log.frame_bytes_max);
    rc.timer_seed = p.id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ group ^ now_ms() as u64;
    rc.replay_applied = p.replay;
    let core =
        ReplicaCore::open(rc, store).map_err(|source| StartError::Replica { group, source })?;
    let mut g = Group {
        core,
        waiters: HashMap::new(),
        persist_target: 0,
        persist_running: false,
        failed: None,
        announced: Committed::default(),
        commit_event: Rc::new(event_listener::Event::new()),
    };
    g.announced = committed_of(&g.core);
    Ok(g)
}

/// The committed log of `core` in offsets (see [`Committed`]).
fn committed_of(core: &ReplicaCore<Store>) -> Committed {
    let store = core.store();
    let start = store.snapshot_point();
    let commit = core.commit_index().min(store.last_index());
    let high_watermark = store.offset_after(commit).unwrap_or(start.offset);
    // The last committed entry with records; control frames (no-ops,
    // configuration changes) are usually few and at the end of a term.
    let mut data_end_offset = start.offset;
    let mut i = commit;
    while i > start.index {
        match store.slot(i) {
            Some(slot) if !slot.is_control() => {
                data_end_offset = slot.next_offset();
                break;
            }
            Some(_) => i -= 1,
            None => break,
        }
    }
    Committed {
        log_start_offset: start.offset,
        high_watermark,
        data_end_offset,
    }
}

impl Node {
    /// Opens every group's store and replica from `data_dir` (creating new
    /// ones), binds the listener and starts the tick, the acceptor and one
    /// writer per peer. Must run inside a glommio executor.
    pub async fn start(
        cfg: NodeConfig,
        on_apply: impl FnMut(ApplyEvent) + 'static,
    ) -> Result<Node, StartError> {
        cfg.validate()?;
        let voters = cfg.voters();
        let storage = AnyStorage::dma();
        let mut groups = BTreeMap::new();
        for &group in &cfg.groups {
            let dir = cfg.data_dir.join(format!("group-{group}"));
            let g = open_group(&cfg_params(&cfg, &voters, &storage), group, &dir).await?;
            groups.insert(group, g);
        }
        // glommio binds with SO_REUSEPORT, so a second process on the same
        // port would share its connections with this one (and two nodes of
        // the same id in two clusters would talk to each other's peers).
        // Refuse if something accepts connections there. A probe *bind*
        // is wrong: the sockets a crashed predecessor accepted linger in
        // FIN-WAIT-2/TIME-WAIT without SO_REUSEADDR and fail it for up to
        // 60 s after every crash.
        if cfg.listen.port() != 0 {
            let mut probe = cfg.listen;
            if probe.ip().is_unspecified() {
                probe.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            let timeout = Duration::from_millis(LISTEN_PROBE_MS);
            if std::net::TcpStream::connect_timeout(&probe, timeout).is_ok() {
                return Err(StartError::Config {
                    reason: format!(
                        "raft address {} is in use: something accepts connections there",
                        cfg.listen
                    ),
                });
            }
        }
        let listener = TcpListener::bind(cfg.listen).map_err(|source| StartError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let listen = listener.local_addr().unwrap_or(cfg.listen);
        let mut peers = BTreeMap::new();
        let mut doorbells = Vec::new();
        for &(id, addr) in &cfg.peers {
            let (tx, rx) = local_channel::new_bounded(1);
            peers.insert(
                id,
                Peer {
                    outbox: RefCell::new(Outbox::new(OUTBOX_MESSAGES_MAX)),
                    connected: Cell::new(false),
                    doorbell: tx,
                },
            );
            doorbells.push((id, addr, rx));
        }
        let inner = Rc::new(Inner {
            id: cfg.id,
            voters,
            election_ticks: cfg.election_ticks,
            heartbeat_ticks: cfg.heartbeat_ticks,
            log: cfg.log.clone(),
            replay_on_open: cfg.replay_on_open,
            storage,
            peer_ids: peers.keys().copied().collect(),
            groups: RefCell::new(groups),
            peers,
            on_apply: RefCell::new(Box::new(on_apply)),
            stats: Cell::new(NodeStats::default()),
            stopped: Cell::new(false),
            tasks: RefCell::new(Vec::new()),
            persists_running: Cell::new(0),
            inbound: Cell::new(0),
        });
        let mut tasks = vec![
            glommio::spawn_local(accept_loop(inner.clone(), listener)),
            glommio::spawn_local(tick_loop(inner.clone(), cfg.tick_ms)),
        ];
        for (id, addr, rx) in doorbells {
            tasks.push(glommio::spawn_local(peer_writer(
                inner.clone(),
                id,
                addr,
                rx,
            )));
        }
        inner.tasks.borrow_mut().extend(tasks);
        for group in cfg.groups {
            inner.pump(group);
        }
        Ok(Node { inner, listen })
    }

    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The address the listener is bound to.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Proposes one record batch frame (it must pass the engine's
    /// `validate_incoming`). Refusals come at once; the answer of an
    /// accepted proposal when it is acknowledged at `acks` or fails.
    pub fn propose(
        &self,
        group: u64,
        frame: Bytes,
        acks: Acks,
    ) -> impl std::future::Future<Output = Reply> + 'static {
        let rx = self.inner.accept_proposal(group, frame, acks);
        self.inner.pump(group);
        async move {
            let rx = rx?;
            rx.recv()
                .await
                .unwrap_or(Err(ShellProposeError::Stopped { group }))
        }
    }

    /// Adds group `group` with its store in `dir` (opened, or created for
    /// this node and its peers as voters). A group already on the node is
    /// left as it is.
    pub async fn add_group(&self, group: u64, dir: &Path) -> Result<(), StartError> {
        if self.inner.stopped.get() || self.inner.groups.borrow().contains_key(&group) {
            return Ok(());
        }
        if self.inner.groups.borrow().len() >= GROUPS_MAX {
            return Err(StartError::Config {
                reason: format!("group {group}: the node holds {GROUPS_MAX} groups already"),
            });
        }
        let params = GroupParams {
            id: self.inner.id,
            replay: self.inner.replay_on_open,
            voters: &self.inner.voters,
            election_ticks: self.inner.election_ticks,
            heartbeat_ticks: self.inner.heartbeat_ticks,
            log: &self.inner.log,
            storage: &self.inner.storage,
        };
        let g = open_group(&params, group, dir).await?;
        // Another add of the same group may have finished meanwhile.
        if self.inner.groups.borrow().contains_key(&group) {
            let _ = g.core.into_store().close(now_ms()).await;
            return Ok(());
        }
        self.inner.groups.borrow_mut().insert(group, g);
        self.inner.pump(group);
        Ok(())
    }

    /// Removes group `group` from the node and closes its store (after the
    /// persist in flight, if any). Pending proposals are answered
    /// `Stopped`; readers waiting on it are woken. The files stay.
    pub async fn remove_group(&self, group: u64) -> Result<(), ShutdownError> {
        let Some(mut g) = self.inner.groups.borrow_mut().remove(&group) else {
            return Ok(());
        };
        for (_, tx) in g.waiters.drain() {
            let _ = tx.try_send(Err(ShellProposeError::Stopped { group }));
        }
        g.commit_event.notify(usize::MAX);
        g.core
            .into_store()
            .close(now_ms())
            .await
            .map_err(|source| ShutdownError::Close { group, source })
    }

    /// The groups on this node.
    pub fn groups(&self) -> Vec<u64> {
        self.inner.groups.borrow().keys().copied().collect()
    }

    /// Leader, term and committed offsets of `group`, or None if it is not
    /// on this node.
    pub fn view(&self, group: u64) -> Option<GroupView> {
        let groups = self.inner.groups.borrow();
        let g = groups.get(&group)?;
        let is_leader = g.core.is_leader() && g.failed.is_none();
        let term = g.core.term();
        let applied = g.core.applied_index();
        let store = g.core.store();
        let applied_term = match store.slot(applied) {
            Some(slot) => slot.term,
            None if store.snapshot_point().index == applied => store.snapshot_point().term,
            None => 0,
        };
        Some(GroupView {
            leader: g.core.leader(),
            is_leader,
            leader_ready: is_leader && applied_term == term,
            term,
            committed: g.announced,
        })
    }

    /// The Kafka offsets of entry `index` (base offset, offset after), if
    /// this node still holds it in memory.
    pub fn entry_offsets(&self, group: u64, index: u64) -> Option<(u64, u64)> {
        let groups = self.inner.groups.borrow();
        let slot = groups.get(&group)?.core.store().slot(index)?;
        Some((slot.base_offset, slot.next_offset()))
    }

    /// Whole committed frames of `group` from the one holding
    /// `from_offset`, up to `max_bytes` (at least one frame when any is
    /// there), served from memory: the store holds every entry since its
    /// snapshot point. Control frames are skipped. Synchronous: no borrow
    /// outlives the call.
    pub fn read_committed(
        &self,
        group: u64,
        from_offset: u64,
        max_bytes: usize,
    ) -> Result<CommittedRead, ReadError> {
        let groups = self.inner.groups.borrow();
        let g = groups
            .get(&group)
            .ok_or(ReadError::UnknownGroup { group })?;
        let committed = g.announced;
        if from_offset < committed.log_start_offset || from_offset > committed.high_watermark {
            return Err(ReadError::OutOfRange {
                group,
                offset: from_offset,
                log_start_offset: committed.log_start_offset,
                high_watermark: committed.high_watermark,
            });
        }
        let store = g.core.store();
        let first = store.first_index();
        // The last committed index whose frame ends within the announced
        // high watermark (the commit index may have moved since).
        let mut last = g.core.commit_index().min(store.last_index());
        while last >= first
            && store
                .slot(last)
                .is_some_and(|s| s.next_offset() > committed.high_watermark)
        {
            last -= 1;
        }
        let mut frames = Vec::new();
        if from_offset < committed.data_end_offset && last >= first {
            // The first entry whose frame ends after `from_offset`.
            let (mut lo, mut hi) = (first, last + 1);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                match store.slot(mid) {
                    Some(s) if s.next_offset() <= from_offset => lo = mid + 1,
                    _ => hi = mid,
                }
            }
            let mut bytes = 0usize;
            for i in lo..=last {
                let Some(slot) = store.slot(i) else { break };
                if slot.is_control() {
                    continue;
                }
                if !frames.is_empty() && bytes + slot.frame.len() > max_bytes {
                    break;
                }
                bytes += slot.frame.len();
                frames.push(slot.frame.clone());
            }
        }
        Ok(CommittedRead { frames, committed })
    }

    /// Where leader epoch `requested` ended in `group`'s committed log
    /// (Kafka's OffsetForLeaderEpoch; see [`crate::epochs`]). Only
    /// committed entries count, and the latest
    /// epoch ends at the high watermark: nothing a consumer can have read
    /// lies past either. Synchronous: no borrow outlives the call.
    pub fn epoch_end(
        &self,
        group: u64,
        requested: u64,
    ) -> Result<crate::epochs::EpochEnd, ReadError> {
        struct Held<'a> {
            store: &'a Store,
            last: u64,
        }
        impl crate::epochs::EpochLog for Held<'_> {
            fn first_index(&self) -> u64 {
                self.store.first_index()
            }
            fn last_index(&self) -> u64 {
                self.last
            }
            fn entry(&self, index: u64) -> (u64, u64) {
                let s = self
                    .store
                    .slot(index)
                    .expect("an index within first..=last is held");
                (s.term, s.base_offset)
            }
            fn start_term(&self) -> u64 {
                self.store.snapshot_point().term
            }
            fn start_offset(&self) -> u64 {
                self.store.snapshot_point().offset
            }
        }
        let groups = self.inner.groups.borrow();
        let g = groups
            .get(&group)
            .ok_or(ReadError::UnknownGroup { group })?;
        let store = g.core.store();
        let first = store.first_index();
        let last = g.core.commit_index().min(store.last_index());
        let held = Held {
            store,
            // `first - 1` when nothing committed is held (an empty range).
            last: last.max(first.saturating_sub(1)),
        };
        let end = crate::epochs::end_offset_for_epoch(&held, requested, g.announced.high_watermark);
        Ok(end)
    }

    /// Resolves once `group`'s committed records reach past `offset`
    /// (`data_end_offset > offset`), or the group leaves this node, or the
    /// node stops. Holds no borrow while it waits.
    pub async fn wait_committed(&self, group: u64, offset: u64) {
        loop {
            let listener = {
                let groups = self.inner.groups.borrow();
                let Some(g) = groups.get(&group) else { return };
                if g.announced.data_end_offset > offset || self.inner.stopped.get() {
                    return;
                }
                g.commit_event.listen()
            };
            listener.await;
        }
    }

    /// The leader this node knows of for `group`.
    pub fn leader(&self, group: u64) -> Option<u64> {
        self.inner
            .groups
            .borrow()
            .get(&group)
            .and_then(|g| g.core.leader())
    }

    pub fn status(&self) -> Vec<GroupStatus> {
        self.inner
            .groups
            .borrow()
            .iter()
            .map(|(&group, g)| GroupStatus {
                group,
                leader: g.core.leader(),
                term: g.core.term(),
                is_leader: g.core.is_leader(),
                commit: g.core.commit_index(),
                applied: g.core.applied_index(),
                last_index: g.core.last_index(),
                failed: g.failed.clone(),
            })
            .collect()
    }

    /// The applied log of `group` as this node holds it in memory: every
    /// entry from the log start to the applied index, as (index, term,
    /// stored frame).
    pub fn applied_log(&self, group: u64) -> Vec<(u64, u64, Bytes)> {
        let groups = self.inner.groups.borrow();
        let Some(g) = groups.get(&group) else {
            return Vec::new();
        };
        let store = g.core.store();
        (store.first_index()..=g.core.applied_index())
            .filter_map(|i| store.entry(i).map(|e| (i, e.term, e.data)))
            .collect()
    }

    pub fn stats(&self) -> NodeStats {
        self.inner.stats.get()
    }

    /// Stops at once, as a crash would: cancels the network and timer
    /// tasks, ignores persists that complete later, closes nothing.
    /// Returns a future that resolves once no persist is in flight (so the
    /// executor may end without I/O pending), bounded in time.
    pub fn kill(&self) -> impl std::future::Future<Output = ()> {
        self.inner.stopped.set(true);
        self.inner.wake_all();
        let tasks = std::mem::take(&mut *self.inner.tasks.borrow_mut());
        drop(tasks);
        let inner = self.inner.clone();
        async move {
            wait_persists(&inner).await;
        }
    }

    /// Stops cleanly: cancels the network and timer tasks, waits for the
    /// persists in flight (at most [`SHUTDOWN_WAIT_MS`]), then closes every
    /// store. Pending proposals are answered `Stopped`.
    pub async fn shutdown(&self) -> Result<(), ShutdownError> {
        let tasks = std::mem::take(&mut *self.inner.tasks.borrow_mut());
        drop(tasks);
        wait_persists(&self.inner).await;
        self.inner.stopped.set(true);
        self.inner.wake_all();
        let running = self.inner.persists_running.get();
        if running > 0 {
            // A store still held by a persist cannot be closed; what it
            // synced stays (as after a crash).
            return Err(ShutdownError::PersistsInFlight { count: running });
        }
        let groups = std::mem::take(&mut *self.inner.groups.borrow_mut());
        let mut result = Ok(());
        for (group, g) in groups {
            let r = g.core.into_store().close(now_ms()).await;
            if let (Ok(()), Err(source)) = (&result, r) {
                result = Err(ShutdownError::Close { group, source });
            }
        }
        result
    }
}

async fn wait_persists(inner: &Rc<Inner>) {
    let mut waited_ms = 0;
    while inner.persists_running.get() > 0 && waited_ms < SHUTDOWN_WAIT_MS {
        glommio::timer::sleep(Duration::from_millis(1)).await;
        waited_ms += 1;
    }
}

impl Inner {
    fn count(&self, f: impl FnOnce(&mut NodeStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    fn accept_proposal(
        &self,
        group: u64,
        frame: Bytes,
        acks: Acks,
    ) -> Result<LocalReceiver<Reply>, ShellProposeError> {
        if self.stopped.get() {
            return Err(ShellProposeError::Stopped { group });
        }
        let mut groups = self.groups.borrow_mut();
        let g = groups
            .get_mut(&group)
            .ok_or(ShellProposeError::UnknownGroup { group })?;
        if let Some(reason) = &g.failed {
            return Err(ShellProposeError::StoreFailed {
                group,
                reason: reason.clone(),
            });
        }
        let id = g
            .core
            .propose(frame, acks)
            .map_err(|source| ShellProposeError::Refused { group, source })?;
        let (tx, rx) = local_channel::new_bounded(1);
        let previous = g.waiters.insert(id, tx);
        assert!(previous.is_none(), "proposal id {id:?} reused");
        Ok(rx)
    }

    /// Carries out every action the group's core has produced (see the
    /// module documentation). Never awaits.
    fn pump(self: &Rc<Self>, group: u64) {
        if self.stopped.get() {
            return;
        }
        let mut groups = self.groups.borrow_mut();
        let Some(g) = groups.get_mut(&group) else {
            return;
        };
        // Retention of a replicated log is compaction: past its memory
        // bound the store drops what this node applied (a follower behind
        // it gets a snapshot).
        if g.failed.is_none() && g.core.store().wants_compaction() {
            let applied = g.core.applied_index();
            if applied >= g.core.store().first_index() {
                if let Err(e) = g.core.compact(applied, Bytes::new()) {
                    // A programmer error (applied is held): said, not fatal.
                    debug_assert!(false, "compaction at the applied index: {e}");
                    self.count(|s| s.step_errors += 1);
                }
            }
        }
        loop {
            let actions = g.core.take_actions();
            if actions.is_empty() {
                break;
            }
            for action in actions {
                match action {
                    Action::Persist { write_seq, .. } => {
                        g.persist_target = g.persist_target.max(write_seq);
                        if !g.persist_running && g.failed.is_none() {
                            self.spawn_persist(group, g);
                        }
                    }
                    Action::Send(msg) => {
                        let to = msg.to;
                        let snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
                        let queued = self.enqueue(group, msg);
                        if snapshot {
                            g.core.report_snapshot(to, queued);
                        }
                    }
                    Action::Apply { entries } => {
                        let mut apply = self.on_apply.borrow_mut();
                        for e in entries {
                            apply(ApplyEvent::Entry {
                                group,
                                index: e.index,
                                term: e.term,
                                data: e.data,
                            });
                        }
                    }
                    Action::InstallSnapshot { index, term, .. } => {
                        (self.on_apply.borrow_mut())(ApplyEvent::Snapshot { group, index, term });
                    }
                    Action::Acknowledged {
                        id, index, term, ..
                    } => {
                        if let Some(tx) = g.waiters.remove(&id) {
                            let _ = tx.try_send(Ok((index, term)));
                        }
                    }
                    Action::ProposalFailed { id, error } => {
                        if let Some(tx) = g.waiters.remove(&id) {
                            let _ = tx.try_send(Err(ShellProposeError::Failed {
                                group,
                                source: error,
                            }));
                        }
                    }
                    Action::LeaderChanged { .. } => {}
                }
            }
        }
        let now = committed_of(&g.core);
        if now != g.announced {
            assert!(
                now.high_watermark >= g.announced.high_watermark,
                "group {group}: the high watermark went back from {} to {}",
                g.announced.high_watermark,
                now.high_watermark
            );
            g.announced = now;
            g.commit_event.notify(usize::MAX);
        }
    }

    /// Wakes every reader waiting on a group (the node stops).
    fn wake_all(&self) {
        for g in self.groups.borrow().values() {
            g.commit_event.notify(usize::MAX);
        }
    }

    fn spawn_persist(self: &Rc<Self>, group: u64, g: &mut Group) {
        assert!(!g.persist_running);
        g.persist_running = true;
        let upto = g.persist_target;
        let persist = g.core.store().persist(upto, now_ms());
        self.persists_running.set(self.persists_running.get() + 1);
        let inner = self.clone();
        let started = std::time::Instant::now();
        glommio::spawn_local(async move {
            let result = persist.await;
            let micros = started.elapsed().as_micros() as u64;
            inner.count(|s| s.persist_micros += micros);
            // glommio polls a spawned task at once, inside this call: a
            // persist with nothing to write (a lazy commit) completes in
            // that first poll, while the caller still holds the groups.
            // Report it from a later turn.
            futures_lite::future::yield_now().await;
            inner.persists_running.set(inner.persists_running.get() - 1);
            inner.persisted(group, upto, result);
        })
        .detach();
    }

    fn persisted(self: &Rc<Self>, group: u64, upto: u64, result: Result<(), StorePersistError>) {
        if self.stopped.get() {
            return;
        }
        {
            let mut groups = self.groups.borrow_mut();
            let Some(g) = groups.get_mut(&group) else {
                return;
            };
            assert!(g.persist_running);
            g.persist_running = false;
            match result {
                Ok(()) => {
                    self.count(|s| s.persists += 1);
                    g.core
                        .on_persisted(upto)
                        .expect("a persist covers only staged writes");
                    if g.persist_target > upto {
                        self.spawn_persist(group, g);
                    }
                }
                Err(e) => {
                    // The store refuses every later persist: the group
                    // stops here (reopening it is not built).
                    self.count(|s| s.persist_errors += 1);
                    let reason = e.to_string();
                    for (_, tx) in g.waiters.drain() {
                        let _ = tx.try_send(Err(ShellProposeError::StoreFailed {
                            group,
                            reason: reason.clone(),
                        }));
                    }
                    g.failed = Some(reason);
                }
            }
        }
        self.pump(group);
    }

    /// Queues `msg` for its peer; false when dropped.
    fn enqueue(&self, group: u64, msg: Message) -> bool {
        let Some(peer) = self.peers.get(&msg.to) else {
            unreachable!("the core sends only to voters, all peers");
        };
        if !peer.connected.get() {
            self.count(|s| s.dropped_disconnected += 1);
            return false;
        }
        if !peer.outbox.borrow_mut().push(group, msg) {
            self.count(|s| s.dropped_full += 1);
            return false;
        }
        let _ = peer.doorbell.try_send(());
        true
    }

    /// Steps inbound messages into their groups, then carries out the
    /// actions of every group touched.
    fn deliver(self: &Rc<Self>, messages: Vec<(u64, Message)>) {
        if self.stopped.get() {
            return;
        }
        let mut touched = BTreeSet::new();
        {
            let mut groups = self.groups.borrow_mut();
            for (group, msg) in messages {
                let ok = match groups.get_mut(&group) {
                    Some(g) if g.failed.is_none() => {
                        touched.insert(group);
                        g.core.step(msg).is_ok()
                    }
                    _ => false,
                };
                if !ok {
                    self.count(|s| s.step_errors += 1);
                }
            }
        }
        for group in touched {
            self.pump(group);
        }
    }

    fn tick(self: &Rc<Self>) {
        if self.stopped.get() {
            return;
        }
        self.count(|s| s.ticks += 1);
        let ids: Vec<u64> = self.groups.borrow().keys().copied().collect();
        for group in ids {
            {
                let mut groups = self.groups.borrow_mut();
                match groups.get_mut(&group) {
                    Some(g) if g.failed.is_none() => g.core.tick(),
                    _ => continue,
                }
            }
            self.pump(group);
        }
    }
}

async fn tick_loop(inner: Rc<Inner>, tick_ms: u64) {
    loop {
        glommio::timer::sleep(Duration::from_millis(tick_ms)).await;
        inner.tick();
    }
}

async fn accept_loop(inner: Rc<Inner>, listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(_) => {
                glommio::timer::sleep(Duration::from_millis(CONNECT_BACKOFF_MIN_MS)).await;
                continue;
            }
        };
        if inner.inbound.get() >= INBOUND_CONNECTIONS_MAX {
            inner.count(|s| s.refused_connections += 1);
            continue;
        }
        let task = glommio::spawn_local(read_loop(inner.clone(), stream));
        inner.tasks.borrow_mut().push(task);
    }
}

/// Decrements the inbound connection count however the reader ends.
struct InboundGuard(Rc<Inner>);

impl Drop for InboundGuard {
    fn drop(&mut self) {
        self.0.inbound.set(self.0.inbound.get() - 1);
    }
}

/// Reads batches from one inbound connection until it closes or sends
/// something refused.
async fn read_loop(inner: Rc<Inner>, mut stream: TcpStream) {
    inner.inbound.set(inner.inbound.get() + 1);
    let _guard = InboundGuard(inner.clone());
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let mut peer = None;
    loop {
        match peek_batch_len(&buf) {
            Ok(Some(len)) if buf.len() >= len => {
                let batch = match decode_batch(&buf[..len]) {
                    Ok(b) => b,
                    Err(_) => {
                        inner.count(|s| s.wire_errors += 1);
                        return;
                    }
                };
                buf.drain(..len);
                if check_inbound(&batch, inner.id, &inner.peer_ids, &mut peer).is_err() {
                    inner.count(|s| s.refused_batches += 1);
                    return;
                }
                let n = batch.messages.len() as u64;
                inner.count(|s| {
                    s.batches_received += 1;
                    s.messages_received += n;
                });
                inner.deliver(batch.messages);
                continue;
            }
            Ok(_) => {}
            Err(_) => {
                inner.count(|s| s.wire_errors += 1);
                return;
            }
        }
        // At most one batch plus one chunk is ever buffered.
        assert!(buf.len() <= BATCH_BYTES_MAX);
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Dials `peer` (with back-off) and writes its outbox, batch by batch.
async fn peer_writer(inner: Rc<Inner>, peer: u64, addr: SocketAddr, doorbell: LocalReceiver<()>) {
    let me = inner.id;
    let mut backoff_ms = CONNECT_BACKOFF_MIN_MS;
    let mut buf = Vec::new();
    loop {
        let connected =
            TcpStream::connect_timeout(addr, Duration::from_millis(CONNECT_TIMEOUT_MS)).await;
        let mut stream = match connected {
            Ok(s) => s,
            Err(_) => {
                inner.count(|s| s.connect_failures += 1);
                glommio::timer::sleep(Duration::from_millis(backoff_ms)).await;
                backoff_ms = (backoff_ms * 2).min(CONNECT_BACKOFF_MAX_MS);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // Hello: an empty batch names this node on the connection.
        buf.clear();
        BatchEncoder::new(&mut buf, me, peer)
            .expect("node ids are non-zero")
            .finish();
        if stream.write_all(&buf).await.is_ok() {
            inner.count(|s| s.connects += 1);
            backoff_ms = CONNECT_BACKOFF_MIN_MS;
            let p = &inner.peers[&peer];
            p.connected.set(true);
            loop {
                if p.outbox.borrow().is_empty() && doorbell.recv().await.is_none() {
                    return;
                }
                buf.clear();
                let (batches, sent, dropped) = p.outbox.borrow_mut().encode(me, peer, &mut buf);
                inner.count(|s| {
                    s.batches_sent += batches as u64;
                    s.messages_sent += sent as u64;
                    s.dropped_unencodable += dropped as u64;
                });
                if !buf.is_empty() && stream.write_all(&buf).await.is_err() {
                    break;
                }
            }
            p.connected.set(false);
            let lost = p.outbox.borrow_mut().clear() as u64;
            inner.count(|s| s.dropped_disconnected += lost);
        } else {
            inner.count(|s| s.connect_failures += 1);
        }
        drop(stream);
        glommio::timer::sleep(Duration::from_millis(backoff_ms)).await;
    }
}

// ----------------------------------------------------------------- thread host

enum Command {
    Propose {
        group: u64,
        frame: Bytes,
        acks: Acks,
        token: u64,
        reply: std::sync::mpsc::Sender<(u64, Reply)>,
    },
    Status {
        reply: std::sync::mpsc::Sender<Vec<GroupStatus>>,
    },
    AppliedLog {
        group: u64,
        reply: std::sync::mpsc::Sender<Vec<(u64, u64, Bytes)>>,
    },
    Stats {
        reply: std::sync::mpsc::Sender<NodeStats>,
    },
    Kill,
    Shutdown {
        reply: std::sync::mpsc::Sender<Result<(), String>>,
    },
}

/// A [`Node`] on its own executor thread, driven from ordinary threads
/// through a command channel that the node polls every
/// [`COMMAND_POLL_MS`] (a timer, not a spin). For tests and tools.
pub struct NodeThread {
    id: u64,
    tx: std::sync::mpsc::Sender<Command>,
    handle: Option<glommio::ExecutorJoinHandle<()>>,
}

impl NodeThread {
    /// Starts the node on a new executor thread; returns once it runs.
    pub fn spawn(
        cfg: NodeConfig,
        on_apply: impl FnMut(ApplyEvent) + Send + 'static,
    ) -> Result<NodeThread, StartError> {
        let id = cfg.id;
        let (tx, rx) = std::sync::mpsc::channel::<Command>();
        let (started_tx, started_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .name(&format!("strom-node-{id}"))
            .io_memory(NODE_IO_MEMORY_BYTES)
            .spawn(move || async move {
                let node = match Node::start(cfg, on_apply).await {
                    Ok(node) => {
                        let _ = started_tx.send(Ok(()));
                        node
                    }
                    Err(e) => {
                        let _ = started_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                serve_commands(node, rx).await;
            })
            .map_err(|e| StartError::Executor {
                reason: e.to_string(),
            })?;
        match started_rx.recv() {
            Ok(Ok(())) => Ok(NodeThread {
                id,
                tx,
                handle: Some(handle),
            }),
            Ok(Err(reason)) => {
                let _ = handle.join();
                Err(StartError::Executor { reason })
            }
            Err(_) => {
                let _ = handle.join();
                Err(StartError::Executor {
                    reason: "the node's thread ended during start-up".into(),
                })
            }
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Sends a proposal; its answer arrives on `reply` with `token`, so
    /// that many proposals in flight can share one channel.
    pub fn propose(
        &self,
        group: u64,
        frame: Bytes,
        acks: Acks,
        token: u64,
        reply: std::sync::mpsc::Sender<(u64, Reply)>,
    ) {
        let _ = self.tx.send(Command::Propose {
            group,
            frame,
            acks,
            token,
            reply,
        });
    }

    fn ask<T>(&self, make: impl FnOnce(std::sync::mpsc::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.tx.send(make(tx)).ok()?;
        rx.recv_timeout(Duration::from_secs(5)).ok()
    }

    pub fn status(&self) -> Vec<GroupStatus> {
        self.ask(|reply| Command::Status { reply })
            .unwrap_or_default()
    }

    pub fn leader(&self, group: u64) -> Option<u64> {
        self.status()
            .into_iter()
            .find(|s| s.group == group)
            .and_then(|s| s.leader)
    }

    pub fn applied_log(&self, group: u64) -> Vec<(u64, u64, Bytes)> {
        self.ask(|reply| Command::AppliedLog { group, reply })
            .unwrap_or_default()
    }

    pub fn stats(&self) -> NodeStats {
        self.ask(|reply| Command::Stats { reply })
            .unwrap_or_default()
    }

    /// Stops the node abruptly ([`Node::kill`]) and joins its thread.
    pub fn kill(mut self) {
        let _ = self.tx.send(Command::Kill);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }

    /// Stops the node cleanly ([`Node::shutdown`]) and joins its thread.
    pub fn shutdown(mut self) -> Result<(), String> {
        let result = self
            .ask(|reply| Command::Shutdown { reply })
            .unwrap_or_else(|| Err("no answer to shutdown".into()));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        result
    }
}

impl Drop for NodeThread {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = self.tx.send(Command::Kill);
            let _ = h.join();
        }
    }
}

async fn serve_commands(node: Node, rx: std::sync::mpsc::Receiver<Command>) {
    use std::sync::mpsc::TryRecvError;
    loop {
        let command = match rx.try_recv() {
            Ok(c) => c,
            Err(TryRecvError::Empty) => {
                glommio::timer::sleep(Duration::from_millis(COMMAND_POLL_MS)).await;
                continue;
            }
            Err(TryRecvError::Disconnected) => Command::Kill,
        };
        match command {
            Command::Propose {
                group,
                frame,
                acks,
                token,
                reply,
            } => {
                let answer = node.propose(group, frame, acks);
                glommio::spawn_local(async move {
                    let _ = reply.send((token, answer.await));
                })
                .detach();
            }
            Command::Status { reply } => {
                let _ = reply.send(node.status());
            }
            Command::AppliedLog { group, reply } => {
                let _ = reply.send(node.applied_log(group));
            }
            Command::Stats { reply } => {
                let _ = reply.send(node.stats());
            }
            Command::Kill => {
                node.kill().await;
                return;
            }
            Command::Shutdown { reply } => {
                let result = node.shutdown().await.map_err(|e| e.to_string());
                let _ = reply.send(result);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat(from: u64, to: u64, term: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgHeartbeat);
        m.from = from;
        m.to = to;
        m.term = term;
        m
    }

    #[test]
    fn messages_of_several_groups_to_one_peer_leave_in_one_batch() {
        let mut outbox = Outbox::new(16);
        for group in 1..=5u64 {
            assert!(outbox.push(group, heartbeat(1, 2, group)));
        }
        let mut out = Vec::new();
        assert_eq!(outbox.encode(1, 2, &mut out), (1, 5, 0));
        assert!(outbox.is_empty());
        let len = peek_batch_len(&out).unwrap().unwrap();
        assert_eq!(len, out.len(), "exactly one batch");
        let batch = decode_batch(&out).unwrap();
        assert_eq!((batch.from_node, batch.to_node), (1, 2));
        let groups: Vec<u64> = batch.messages.iter().map(|(g, _)| *g).collect();
        assert_eq!(groups, vec![1, 2, 3, 4, 5]);
        for (g, m) in &batch.messages {
            assert_eq!(*m, heartbeat(1, 2, *g));
        }
        // Nothing queued: nothing written.
        out.clear();
        assert_eq!(outbox.encode(1, 2, &mut out), (0, 0, 0));
        assert!(out.is_empty());
    }

    #[test]
    fn a_full_outbox_drops_new_messages() {
        let mut outbox = Outbox::new(2);
        assert!(outbox.push(1, heartbeat(1, 2, 1)));
        assert!(outbox.push(2, heartbeat(1, 2, 1)));
        assert!(!outbox.push(3, heartbeat(1, 2, 1)));
        assert_eq!(outbox.len(), 2);
        assert_eq!(outbox.clear(), 2);
    }

    #[test]
    fn an_outbox_over_one_batch_splits_at_the_batch_limit() {
        // Appends of 4 MiB entries: eight fill a 32 MiB batch.
        let mut outbox = Outbox::new(64);
        let entry = raft::eraftpb::Entry {
            data: Bytes::from(vec![7u8; 4 << 20]),
            term: 1,
            index: 1,
            ..Default::default()
        };
        for group in 0..10u64 {
            let mut m = heartbeat(1, 2, 1);
            m.set_msg_type(MessageType::MsgAppend);
            m.set_entries(vec![entry.clone()].into());
            assert!(outbox.push(group, m));
        }
        let mut out = Vec::new();
        let (batches, sent, dropped) = outbox.encode(1, 2, &mut out);
        assert_eq!((batches, sent, dropped), (2, 10, 0));
        let first = peek_batch_len(&out).unwrap().unwrap();
        assert!(first <= BATCH_BYTES_MAX);
        let a = decode_batch(&out[..first]).unwrap();
        let b = decode_batch(&out[first..]).unwrap();
        assert_eq!(a.messages.len() + b.messages.len(), 10);
    }

    #[test]
    fn inbound_batches_are_checked_against_the_connection_peer() {
        let peers: BTreeSet<u64> = [2, 3].into_iter().collect();
        let batch = |from: u64, to: u64, msg_from: u64| Batch {
            from_node: from,
            to_node: to,
            messages: vec![(7, heartbeat(msg_from, to, 1))],
        };
        let mut conn = None;
        assert_eq!(check_inbound(&batch(2, 1, 2), 1, &peers, &mut conn), Ok(()));
        assert_eq!(conn, Some(2));
        assert_eq!(
            check_inbound(&batch(3, 1, 3), 1, &peers, &mut conn),
            Err(BatchRefusal::PeerMismatch {
                from_node: 3,
                peer: 2
            })
        );
        assert_eq!(
            check_inbound(&batch(2, 4, 2), 1, &peers, &mut conn),
            Err(BatchRefusal::WrongRecipient { to_node: 4, us: 1 })
        );
        assert_eq!(
            check_inbound(&batch(2, 1, 3), 1, &peers, &mut conn),
            Err(BatchRefusal::SenderMismatch {
                from: 3,
                from_node: 2
            })
        );
        let mut fresh = None;
        assert_eq!(
            check_inbound(&batch(9, 1, 9), 1, &peers, &mut fresh),
            Err(BatchRefusal::UnknownPeer { from_node: 9 })
        );
        assert_eq!(fresh, None);
    }
}
