//! A deterministic simulation of one replicated partition: N replicas
//! ([`ReplicaCore`] over [`MemLog`]) in one process, a seeded network, seeded
//! disks and seeded clients. Everything random comes from one
//! [`SplitMix64`] seeded by [`SimConfig::seed`] (and the replicas' timers,
//! seeded from it), so a seed replays exactly.
//!
//! # What it injects
//! - network: messages dropped, duplicated, delayed by a random number of
//!   steps (hence reordered), and delivered in random order within a step;
//!   partitions: one replica isolated both ways, the group split in two,
//!   single links cut one way, healed;
//! - disks: every staged write becomes durable only when its sync completes,
//!   after a random delay (slow persistence; completions may arrive out of
//!   order, a later one covering earlier writes);
//! - crashes: a replica loses its unsynced tail and unsynced hard state
//!   ([`MemLog::crash`]), stays down a while, and reopens from what is
//!   durable; messages already in flight still arrive;
//! - clients: proposals with unique payloads at random replicas (most
//!   clients retry at the leader hint of a refusal), acks=all mostly, some
//!   acks=leader; retention compacting a replica's log prefix,
//!   so that lagging followers catch up through snapshots.
//!
//! # What it checks
//! - election safety: at most one leader per term, ever (checked after every
//!   input to every replica);
//! - log matching: an (index, term) pair always carries the same payload
//!   wherever it is seen (append messages), and at the end any two logs that
//!   agree on an entry's term agree on every entry up to it;
//! - no index is ever applied with two different payloads, on any replica,
//!   in any incarnation (the cluster's committed log only grows), and no
//!   payload is committed at two indices;
//! - a proposal acknowledged at acks=all is committed at its index with its
//!   payload, and stays there: every replica that applies that index later
//!   applies that payload;
//! - what is committed is durable on a majority (acks=all's promise): when
//!   an index is first applied, and after every crash for every committed
//!   index, a majority of the replicas' durable images hold it (or their
//!   durable log start covers it);
//! - a proposal refused, or answered as superseded, is never committed;
//! - each replica's commit index never decreases while it lives; after a
//!   crash it restarts from its durable hard state, and its durable log up
//!   to that commit agrees with the cluster's committed log;
//! - an installed snapshot names a committed index and term and carries the
//!   data recorded when that prefix was compacted;
//! - liveness: once faults stop (partitions healed, every replica up, no
//!   drops or duplicates, message and sync delays back to at most one step,
//!   since Raft is live only when they are well below the election timeout),
//!   a leader is elected, a final acks=all proposal is acknowledged, and every
//!   replica applies everything ever committed and reaches the highest commit
//!   index any replica ever had, within `heal_steps_max` steps.
//!
//! Checkers are shown to fire by the sabotaged variants ([`Sabotage`]) in
//! `tests/sim.rs`.
//!
//! A [`Violation`] names the seed, the step and what broke; replicas'
//! internal assertions panic (the test harness reports the seed for both).

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use bytes::Bytes;
use raft::eraftpb::{Message, MessageType};

use crate::core::{Acks, Action, ProposalId, ReplicaConfig, ReplicaCore};
use crate::error::ProposeError;
use crate::rng::SplitMix64;
use crate::storage::MemLog;

/// Deliberately broken variants that the checkers must catch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sabotage {
    None,
    /// Crashes also lose up to three *synced* entries (a disk that lies
    /// about fsync).
    LoseSyncedEntriesOnCrash,
    /// acks=leader acknowledgements are held to acks=all's promise (what a
    /// system acknowledging at the leader's append would claim).
    LeaderAcksCountAsDurable,
    /// Replicas send votes and append responses, and count their own
    /// entries, before their writes are durable (the Ready protocol
    /// ignored).
    SendBeforePersist,
}

/// One schedule. [`SimConfig::from_seed`] derives everything from the seed.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub nodes: usize,
    /// Steps with faults, then up to `heal_steps_max` without.
    pub fault_steps: u64,
    pub heal_steps_max: u64,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    pub drop_per_mille: u32,
    pub dup_per_mille: u32,
    pub delay_steps_max: u64,
    /// Chance per step that the partition changes.
    pub partition_per_mille: u32,
    /// Chance per step and replica of a crash.
    pub crash_per_mille: u32,
    pub down_steps_max: u64,
    pub sync_delay_steps_max: u64,
    /// Chance per step of a client proposal.
    pub propose_per_mille: u32,
    /// Share of proposals sent with acks=leader.
    pub acks_leader_per_mille: u32,
    /// Chance per step of a compaction at a random replica.
    pub compact_per_mille: u32,
    pub sabotage: Sabotage,
    /// Print every event to stderr.
    pub trace: bool,
}

impl SimConfig {
    /// A schedule drawn from `seed`: 3 replicas (5 for one seed in eight),
    /// fault rates drawn per seed from calm to harsh.
    pub fn from_seed(seed: u64) -> Self {
        let mut r = SplitMix64::new(seed ^ 0x5151_7e9a_11ce_d00d);
        let pick =
            |r: &mut SplitMix64, options: &[u32]| options[r.below(options.len() as u64) as usize];
        SimConfig {
            seed,
            nodes: if r.below(8) == 0 { 5 } else { 3 },
            fault_steps: 100,
            heal_steps_max: 300,
            election_ticks: 6,
            heartbeat_ticks: 2,
            drop_per_mille: pick(&mut r, &[0, 20, 100, 250]),
            dup_per_mille: pick(&mut r, &[0, 20, 100]),
            delay_steps_max: pick(&mut r, &[0, 1, 3, 6]) as u64,
            partition_per_mille: pick(&mut r, &[0, 20, 60]),
            crash_per_mille: pick(&mut r, &[0, 5, 15, 30]),
            down_steps_max: pick(&mut r, &[1, 10, 30]) as u64,
            sync_delay_steps_max: pick(&mut r, &[0, 2, 6]) as u64,
            propose_per_mille: pick(&mut r, &[200, 500, 900]),
            acks_leader_per_mille: pick(&mut r, &[0, 100, 300]),
            compact_per_mille: pick(&mut r, &[0, 30, 100]),
            sabotage: Sabotage::None,
            trace: false,
        }
    }

    /// No faults at all: a perfect network and disk (unit tests drive the
    /// faults they want by hand).
    pub fn calm(seed: u64, nodes: usize) -> Self {
        SimConfig {
            seed,
            nodes,
            fault_steps: 0,
            heal_steps_max: 300,
            election_ticks: 6,
            heartbeat_ticks: 2,
            drop_per_mille: 0,
            dup_per_mille: 0,
            delay_steps_max: 0,
            partition_per_mille: 0,
            crash_per_mille: 0,
            down_steps_max: 1,
            sync_delay_steps_max: 0,
            propose_per_mille: 0,
            acks_leader_per_mille: 0,
            compact_per_mille: 0,
            sabotage: Sabotage::None,
            trace: false,
        }
    }
}

/// A broken invariant.
#[derive(Debug, Clone)]
pub struct Violation {
    pub seed: u64,
    pub step: u64,
    pub kind: ViolationKind,
    pub detail: String,
}

/// Which checker fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViolationKind {
    ElectionSafety,
    LogMatching,
    ConflictingCommit,
    AckedLost,
    NotDurableOnMajority,
    PhantomCommit,
    CommitRegressed,
    Snapshot,
    Restart,
    Liveness,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} step {}: {:?}: {}",
            self.seed, self.step, self.kind, self.detail
        )
    }
}

/// Counts of what a run did (to see that schedules exercise something).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimReport {
    pub steps: u64,
    pub proposals: u64,
    pub acked_all: u64,
    pub acked_leader: u64,
    pub committed_max: u64,
    pub crashes: u64,
    pub elections: u64,
    pub snapshots_installed: u64,
    pub messages_sent: u64,
    pub messages_dropped: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProposalState {
    /// Refused at once: never appended.
    Refused,
    Pending,
    /// Acknowledged; `durable` when acks=all's promise applies.
    Acked {
        index: u64,
        durable: bool,
    },
    /// Failed with an unknown outcome, or its replica crashed first.
    Unknown,
    /// Definitely not committed.
    NotCommitted,
}

struct Proposal {
    payload: Bytes,
    state: ProposalState,
}

struct InFlight {
    deliver_at: u64,
    from: usize,
    to: usize,
    dropped: bool,
    msg: Message,
}

struct Node {
    id: u64,
    core: Option<ReplicaCore<MemLog>>,
    /// The store while the replica is down.
    parked: Option<MemLog>,
    incarnation: u64,
    down_until: u64,
    /// Sync completions due: (step, write sequence).
    syncs: Vec<(u64, u64)>,
    /// Last applied index seen in this incarnation.
    applied: u64,
    /// Highest commit index seen in this incarnation.
    commit_seen: u64,
    /// Proposal ids of this incarnation -> proposal numbers.
    proposals: HashMap<ProposalId, usize>,
    snapshots_installed: u64,
}

/// The simulated cluster.
pub struct Sim {
    cfg: SimConfig,
    rng: SplitMix64,
    now: u64,
    nodes: Vec<Node>,
    net: Vec<InFlight>,
    /// blocked[from][to]: the link drops everything.
    blocked: Vec<Vec<bool>>,
    proposals: Vec<Proposal>,
    /// The cluster's committed log: index -> (term, payload).
    committed: BTreeMap<u64, (u64, Bytes)>,
    /// Proposal number -> index it was committed at.
    committed_at: HashMap<usize, u64>,
    /// Index -> proposal acknowledged there with acks=all's promise.
    acked_at: HashMap<u64, usize>,
    /// (index, term) -> payload, wherever seen.
    entries_seen: HashMap<(u64, u64), Bytes>,
    leaders: BTreeMap<u64, u64>,
    /// Highest commit index any replica ever reported.
    commit_max_ever: u64,
    report: SimReport,
    violation: Option<Violation>,
    /// Faults are over: no drops or duplicates, and the network and disks
    /// are back to normal speed (at most one step of delay), as Raft's
    /// liveness needs message and sync delays well below the election
    /// timeout.
    healed: bool,
}

/// The payload of proposal number `n`: unique, and mapped back by
/// [`proposal_number`].
fn payload(n: usize) -> Bytes {
    let mut v = b"strom-sim-".to_vec();
    v.extend_from_slice(&(n as u64).to_le_bytes());
    Bytes::from(v)
}

/// `#n` for proposal `n`'s payload, `no-op` for a leader's empty entry.
fn describe(data: &[u8]) -> String {
    match proposal_number(data) {
        Some(n) => format!("#{n}"),
        None if data.is_empty() => "no-op".to_string(),
        None => format!("unknown payload {data:?}"),
    }
}

fn proposal_number(data: &[u8]) -> Option<usize> {
    let rest = data.strip_prefix(b"strom-sim-")?;
    let bytes: [u8; 8] = rest.try_into().ok()?;
    Some(u64::from_le_bytes(bytes) as usize)
}

/// What a compaction at `index` records as snapshot data.
fn snapshot_data(index: u64) -> Bytes {
    Bytes::from(format!("log-start:{index}"))
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Self {
        assert!(cfg.nodes >= 1 && cfg.nodes <= crate::limits::VOTERS_MAX);
        let voters: Vec<u64> = (1..=cfg.nodes as u64).collect();
        let mut sim = Sim {
            rng: SplitMix64::new(cfg.seed),
            now: 0,
            nodes: Vec::new(),
            net: Vec::new(),
            blocked: vec![vec![false; cfg.nodes]; cfg.nodes],
            proposals: Vec::new(),
            committed: BTreeMap::new(),
            committed_at: HashMap::new(),
            acked_at: HashMap::new(),
            entries_seen: HashMap::new(),
            leaders: BTreeMap::new(),
            commit_max_ever: 0,
            report: SimReport::default(),
            violation: None,
            healed: false,
            cfg,
        };
        for &id in &voters {
            sim.nodes.push(Node {
                id,
                core: None,
                parked: Some(MemLog::new(&voters)),
                incarnation: 0,
                down_until: 0,
                syncs: Vec::new(),
                applied: 0,
                commit_seen: 0,
                proposals: HashMap::new(),
                snapshots_installed: 0,
            });
        }
        for i in 0..sim.nodes.len() {
            sim.restart(i);
        }
        sim
    }

    /// Runs one whole schedule: faults, then healing and the liveness check,
    /// then the final checks.
    pub fn run(cfg: SimConfig) -> Result<SimReport, Violation> {
        let mut sim = Sim::new(cfg);
        for _ in 0..sim.cfg.fault_steps {
            sim.step(true);
            sim.result()?;
        }
        sim.settle()?;
        sim.final_checks();
        sim.result()?;
        Ok(sim.report.clone())
    }

    fn result(&self) -> Result<(), Violation> {
        match &self.violation {
            Some(v) => Err(v.clone()),
            None => Ok(()),
        }
    }

    fn fail(&mut self, kind: ViolationKind, detail: String) {
        if self.violation.is_none() {
            if self.cfg.trace {
                eprintln!("[{}] VIOLATION {kind:?}: {detail}", self.now);
            }
            self.violation = Some(Violation {
                seed: self.cfg.seed,
                step: self.now,
                kind,
                detail,
            });
        }
    }

    fn trace(&self, what: impl FnOnce() -> String) {
        if self.cfg.trace {
            eprintln!("[{}] {}", self.now, what());
        }
    }

    fn delay_max(&self, faulty: u64) -> u64 {
        if self.healed {
            faulty.min(1)
        } else {
            faulty
        }
    }

    fn majority(&self) -> usize {
        self.nodes.len() / 2 + 1
    }

    // ----- public controls (unit tests) -----

    pub fn now(&self) -> u64 {
        self.now
    }

    pub fn violation(&self) -> Option<&Violation> {
        self.violation.as_ref()
    }

    pub fn report(&self) -> &SimReport {
        &self.report
    }

    /// The replica at position `i` (id `i + 1`), when up.
    pub fn core(&self, i: usize) -> Option<&ReplicaCore<MemLog>> {
        self.nodes[i].core.as_ref()
    }

    /// Positions of the replicas that believe they lead, highest term last.
    pub fn leaders(&self) -> Vec<usize> {
        let mut v: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.core(i).is_some_and(|c| c.is_leader()))
            .collect();
        v.sort_by_key(|&i| self.core(i).map(|c| c.term()));
        v
    }

    /// The leader of the highest term among live replicas, if any.
    pub fn leader(&self) -> Option<usize> {
        self.leaders().last().copied()
    }

    pub fn snapshots_installed(&self, i: usize) -> u64 {
        self.nodes[i].snapshots_installed
    }

    /// Cuts every link to and from replica `i`.
    pub fn isolate(&mut self, i: usize) {
        for j in 0..self.nodes.len() {
            if j != i {
                self.blocked[i][j] = true;
                self.blocked[j][i] = true;
            }
        }
        self.trace(|| format!("isolate {}", i + 1));
    }

    /// Cuts the link from `from` to `to` only.
    pub fn cut_one_way(&mut self, from: usize, to: usize) {
        self.blocked[from][to] = true;
        self.trace(|| format!("cut {} -> {}", from + 1, to + 1));
    }

    /// Restores every link.
    pub fn heal_network(&mut self) {
        for row in &mut self.blocked {
            row.iter_mut().for_each(|b| *b = false);
        }
        self.trace(|| "heal network".to_string());
    }

    /// A client proposal at replica `i`; returns the proposal number.
    pub fn propose_at(
        &mut self,
        i: usize,
        acks: Acks,
    ) -> (usize, Result<ProposalId, ProposeError>) {
        let n = self.proposals.len();
        let data = payload(n);
        self.proposals.push(Proposal {
            payload: data.clone(),
            state: ProposalState::Refused,
        });
        self.report.proposals += 1;
        let Some(core) = self.nodes[i].core.as_mut() else {
            return (
                n,
                Err(ProposeError::NotLeader {
                    leader_hint: None,
                    term: 0,
                }),
            );
        };
        let result = core.propose(data, acks);
        match &result {
            Ok(id) => {
                self.nodes[i].proposals.insert(*id, n);
                self.proposals[n].state = ProposalState::Pending;
            }
            Err(_) => {
                if self.committed_at.contains_key(&n) {
                    self.fail(
                        ViolationKind::PhantomCommit,
                        format!("refused proposal {n} is committed"),
                    );
                }
            }
        }
        self.trace(|| format!("propose #{n} at {} ({acks:?}): {result:?}", i + 1));
        self.process(i);
        (n, result)
    }

    /// Whether proposal `n` was acknowledged (at any level).
    pub fn is_acked(&self, n: usize) -> bool {
        matches!(self.proposals[n].state, ProposalState::Acked { .. })
    }

    /// Whether proposal `n`'s payload is in the cluster's committed log.
    pub fn is_committed(&self, n: usize) -> bool {
        self.committed_at.contains_key(&n)
    }

    /// Whether proposal `n` got a final failure answer (or was refused).
    pub fn is_failed(&self, n: usize) -> bool {
        matches!(
            self.proposals[n].state,
            ProposalState::Refused | ProposalState::Unknown | ProposalState::NotCommitted
        )
    }

    /// Compacts replica `i`'s log through `index`.
    pub fn compact_at(&mut self, i: usize, index: u64) -> Result<(), crate::error::CompactError> {
        let Some(core) = self.nodes[i].core.as_mut() else {
            return Ok(());
        };
        let r = core.compact(index, snapshot_data(index));
        self.trace(|| format!("compact {} through {index}: {r:?}", i + 1));
        self.process(i);
        r
    }

    /// Crashes replica `i` (it loses what is not durable) for `down_steps`.
    pub fn crash(&mut self, i: usize, down_steps: u64) {
        let Some(core) = self.nodes[i].core.take() else {
            return;
        };
        let mut store = core.into_store();
        let report = match self.cfg.sabotage {
            Sabotage::LoseSyncedEntriesOnCrash => {
                let lose = 1 + self.rng.below(3) as usize;
                store.crash_losing_synced_entries(lose)
            }
            _ => store.crash(),
        };
        self.report.crashes += 1;
        let node = &mut self.nodes[i];
        node.parked = Some(store);
        node.syncs.clear();
        node.down_until = self.now + down_steps;
        let lost: Vec<usize> = node.proposals.drain().map(|(_, n)| n).collect();
        for n in lost {
            if self.proposals[n].state == ProposalState::Pending {
                self.proposals[n].state = ProposalState::Unknown;
            }
        }
        self.trace(|| format!("crash {} ({report:?})", i + 1));
        self.check_durable_on_majority();
    }

    /// Reopens replica `i` from its durable state.
    pub fn restart(&mut self, i: usize) {
        let Some(store) = self.nodes[i].parked.take() else {
            return;
        };
        let node = &mut self.nodes[i];
        node.incarnation += 1;
        let voters: Vec<u64> = (1..=self.cfg.nodes as u64).collect();
        let mut cfg = ReplicaConfig::new(node.id, &voters);
        cfg.election_ticks = self.cfg.election_ticks;
        cfg.heartbeat_ticks = self.cfg.heartbeat_ticks;
        cfg.timer_seed = self
            .cfg
            .seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(node.id << 32)
            .wrapping_add(node.incarnation);
        // Small messages so that catching up takes several of them.
        cfg.msg_bytes_max = 256;
        cfg.inflight_msgs_max = 4;
        let core = match ReplicaCore::open(cfg, store) {
            Ok(mut core) => {
                if self.cfg.sabotage == Sabotage::SendBeforePersist {
                    core.break_ready_protocol_for_tests();
                }
                core
            }
            Err(e) => {
                let id = node.id;
                self.fail(
                    ViolationKind::Restart,
                    format!("replica {id} cannot reopen: {e}"),
                );
                return;
            }
        };
        node.applied = core.applied_index();
        node.commit_seen = core.commit_index();
        // What survived must agree with the cluster's committed log.
        let store = core.store();
        let (start, _) = store.durable_log_start();
        let commit = store.durable_hard_state().commit;
        let mut problem = None;
        if core.commit_index() != commit {
            problem = Some(format!(
                "replica {} reopens with commit {} instead of its durable {commit}",
                node.id,
                core.commit_index()
            ));
        }
        for (&index, (term, data)) in self.committed.range(start + 1..commit + 1) {
            match store.durable_entry(index) {
                Some(e) if e.term == *term && e.data == *data => {}
                other => {
                    problem = Some(format!(
                        "replica {} reopens with commit {commit} but holds {:?} at committed index {index} (term {term})",
                        node.id,
                        other.map(|e| (e.term, e.data.clone()))
                    ));
                    break;
                }
            }
        }
        let id = node.id;
        node.core = Some(core);
        self.trace(|| format!("restart {id} (commit {commit}, log start {start})"));
        if let Some(p) = problem {
            self.fail(ViolationKind::Restart, p);
        }
        self.process(i);
    }

    // ----- the schedule -----

    /// One step: faults (if `faults`), deliveries, sync completions, a
    /// client, retention, one tick for every live replica, then checks.
    pub fn step(&mut self, faults: bool) {
        self.now += 1;
        if faults {
            self.inject_faults();
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].core.is_none() && self.nodes[i].down_until <= self.now {
                self.restart(i);
            }
        }
        self.deliver();
        self.complete_syncs();
        if faults {
            if self.rng.chance_per_mille(self.cfg.propose_per_mille) {
                let i = self.rng.below(self.nodes.len() as u64) as usize;
                let acks = if self.rng.chance_per_mille(self.cfg.acks_leader_per_mille) {
                    Acks::Leader
                } else {
                    Acks::All
                };
                let (_, r) = self.propose_at(i, acks);
                // Most clients follow the leader hint, as Kafka's do.
                if let Err(ProposeError::NotLeader {
                    leader_hint: Some(hint),
                    ..
                }) = r
                {
                    if self.rng.chance_per_mille(700) {
                        let h = (hint as usize).saturating_sub(1).min(self.nodes.len() - 1);
                        let _answered_later = self.propose_at(h, acks);
                    }
                }
            }
            if self.rng.chance_per_mille(self.cfg.compact_per_mille) {
                let i = self.rng.below(self.nodes.len() as u64) as usize;
                if let Some(core) = self.core(i) {
                    let applied = core.applied_index();
                    let index = applied.saturating_sub(self.rng.below(4));
                    if index > 0 {
                        let r = self.compact_at(i, index);
                        assert!(r.is_ok(), "compaction at or below applied: {r:?}");
                    }
                }
            }
        }
        for i in 0..self.nodes.len() {
            if let Some(core) = self.nodes[i].core.as_mut() {
                core.tick();
                self.process(i);
            }
        }
        self.report.steps = self.now;
    }

    fn inject_faults(&mut self) {
        let n = self.nodes.len();
        if self.rng.chance_per_mille(self.cfg.partition_per_mille) {
            self.heal_network();
            match self.rng.below(4) {
                0 => {}
                1 => {
                    let i = self.rng.below(n as u64) as usize;
                    self.isolate(i);
                }
                2 => {
                    let from = self.rng.below(n as u64) as usize;
                    let to = (from + 1 + self.rng.below(n as u64 - 1) as usize) % n;
                    self.cut_one_way(from, to);
                }
                _ => {
                    let side: Vec<bool> = (0..n).map(|_| self.rng.below(2) == 0).collect();
                    for a in 0..n {
                        for b in 0..n {
                            if side[a] != side[b] {
                                self.blocked[a][b] = true;
                            }
                        }
                    }
                    self.trace(|| format!("split {side:?}"));
                }
            }
        }
        for i in 0..n {
            if self.nodes[i].core.is_some() && self.rng.chance_per_mille(self.cfg.crash_per_mille) {
                let down = 1 + self.rng.below(self.cfg.down_steps_max);
                self.crash(i, down);
            }
        }
    }

    fn heal_all(&mut self) {
        self.healed = true;
        self.heal_network();
        for i in 0..self.nodes.len() {
            if self.nodes[i].core.is_none() {
                self.restart(i);
            }
        }
    }

    /// Without faults: a leader must be elected, a final acks=all proposal
    /// acknowledged, and every replica must apply everything committed.
    pub fn settle(&mut self) -> Result<(), Violation> {
        self.heal_all();
        let deadline = self.now + self.cfg.heal_steps_max;
        let mut last = None;
        while self.now < deadline {
            self.step(false);
            self.result()?;
            let outstanding = match last {
                Some(n) => !self.is_acked(n) && !self.is_failed(n),
                None => false,
            };
            if !outstanding && last.is_none_or(|n| !self.is_acked(n)) {
                if let Some(l) = self.leader() {
                    let (n, r) = self.propose_at(l, Acks::All);
                    if r.is_ok() {
                        last = Some(n);
                    }
                }
            }
            if let Some(n) = last {
                let top = self.committed.keys().next_back().copied().unwrap_or(0);
                if self.is_acked(n)
                    && self
                        .nodes
                        .iter()
                        .all(|node| node.core.is_some() && node.applied >= top)
                {
                    return Ok(());
                }
            }
        }
        let states: Vec<String> = self
            .nodes
            .iter()
            .map(|n| match &n.core {
                Some(c) => format!(
                    "{}: {:?} term {} commit {} applied {}",
                    n.id,
                    c.role(),
                    c.term(),
                    c.commit_index(),
                    c.applied_index()
                ),
                None => format!("{}: down", n.id),
            })
            .collect();
        self.fail(
            ViolationKind::Liveness,
            format!(
                "no progress within {} healed steps (final proposal {last:?}); {}",
                self.cfg.heal_steps_max,
                states.join("; ")
            ),
        );
        self.result()
    }

    fn send(&mut self, from: usize, msg: Message) {
        self.report.messages_sent += 1;
        let Some(to) = (msg.to as usize)
            .checked_sub(1)
            .filter(|&t| t < self.nodes.len())
        else {
            self.fail(
                ViolationKind::LogMatching,
                format!("message to unknown replica {}", msg.to),
            );
            return;
        };
        if msg.get_msg_type() == MessageType::MsgAppend {
            for e in msg.get_entries() {
                match self.entries_seen.get(&(e.index, e.term)) {
                    Some(d) if *d != e.data => {
                        let detail = format!(
                            "entry ({}, term {}) seen with two payloads",
                            e.index, e.term
                        );
                        self.fail(ViolationKind::LogMatching, detail);
                    }
                    Some(_) => {}
                    None => {
                        self.entries_seen.insert((e.index, e.term), e.data.clone());
                    }
                }
            }
        }
        let faults = !self.healed;
        if faults && self.rng.chance_per_mille(self.cfg.dup_per_mille) {
            self.enqueue(from, to, msg.clone());
        }
        self.enqueue(from, to, msg);
    }

    fn enqueue(&mut self, from: usize, to: usize, msg: Message) {
        let dropped = !self.healed && self.rng.chance_per_mille(self.cfg.drop_per_mille);
        let delay = self.rng.below(self.delay_max(self.cfg.delay_steps_max) + 1);
        self.net.push(InFlight {
            deliver_at: self.now + delay,
            from,
            to,
            dropped,
            msg,
        });
    }

    fn deliver(&mut self) {
        let now = self.now;
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.net.len() {
            if self.net[i].deliver_at <= now {
                due.push(self.net.swap_remove(i));
            } else {
                i += 1;
            }
        }
        // Random order within the step (swap_remove already scrambled it
        // deterministically; shuffle for good measure).
        for k in (1..due.len()).rev() {
            let j = self.rng.below(k as u64 + 1) as usize;
            due.swap(k, j);
        }
        for m in due {
            let blocked = self.blocked[m.from][m.to];
            let snapshot = m.msg.get_msg_type() == MessageType::MsgSnapshot;
            let to_id = m.msg.to;
            let delivered = !m.dropped && !blocked && self.nodes[m.to].core.is_some();
            if delivered {
                let msg = m.msg;
                if let Some(core) = self.nodes[m.to].core.as_mut() {
                    if let Err(e) = core.step(msg) {
                        // Peers only send what raft produced: a refusal here
                        // is a bug in the core or the simulator.
                        panic!("replica {} refused a peer's message: {e}", m.to + 1);
                    }
                }
                self.process(m.to);
            } else {
                self.report.messages_dropped += 1;
            }
            if snapshot {
                if let Some(core) = self.nodes[m.from].core.as_mut() {
                    core.report_snapshot(to_id, delivered);
                    self.process(m.from);
                }
            }
        }
    }

    fn complete_syncs(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].core.is_none() || self.nodes[i].syncs.is_empty() {
                continue;
            }
            let now = self.now;
            let mut due: Vec<u64> = Vec::new();
            self.nodes[i].syncs.retain(|&(at, seq)| {
                if at <= now {
                    due.push(seq);
                    false
                } else {
                    true
                }
            });
            for seq in due {
                if let Some(core) = self.nodes[i].core.as_mut() {
                    if let Err(e) = core.on_persisted(seq) {
                        panic!("replica {}: sync completion refused: {e}", i + 1);
                    }
                }
                self.process(i);
            }
        }
    }

    /// Carries out replica `i`'s actions and checks what they claim, and
    /// its state after every input.
    fn process(&mut self, i: usize) {
        loop {
            let Some(core) = self.nodes[i].core.as_mut() else {
                return;
            };
            let actions = core.take_actions();
            if actions.is_empty() {
                break;
            }
            for action in actions {
                self.carry_out(i, action);
            }
        }
        self.check_replica(i);
    }

    fn carry_out(&mut self, i: usize, action: Action) {
        let id = self.nodes[i].id;
        match action {
            Action::Persist { write_seq, .. } => {
                let delay = self
                    .rng
                    .below(self.delay_max(self.cfg.sync_delay_steps_max) + 1);
                self.nodes[i].syncs.push((self.now + delay, write_seq));
            }
            Action::Send(msg) => self.send(i, msg),
            Action::Apply { entries } => {
                for e in entries {
                    let node = &mut self.nodes[i];
                    if e.index != node.applied + 1 {
                        let detail =
                            format!("replica {id} applies {} after {}", e.index, node.applied);
                        self.fail(ViolationKind::ConflictingCommit, detail);
                        return;
                    }
                    node.applied = e.index;
                    self.record_commit(id, e.index, e.term, e.data);
                }
            }
            Action::InstallSnapshot { index, term, data } => {
                self.nodes[i].snapshots_installed += 1;
                self.report.snapshots_installed += 1;
                if index < self.nodes[i].applied {
                    let detail = format!(
                        "replica {id} installs a snapshot at {index} below its applied {}",
                        self.nodes[i].applied
                    );
                    self.fail(ViolationKind::Snapshot, detail);
                }
                self.nodes[i].applied = index;
                match self.committed.get(&index) {
                    Some((t, _)) if *t == term => {}
                    other => {
                        let detail = format!(
                            "replica {id} installs a snapshot at ({index}, term {term}); committed there: {:?}",
                            other.map(|(t, _)| *t)
                        );
                        self.fail(ViolationKind::Snapshot, detail);
                    }
                }
                if data != snapshot_data(index) {
                    self.fail(
                        ViolationKind::Snapshot,
                        format!("replica {id}: snapshot at {index} carries the wrong data"),
                    );
                }
            }
            Action::Acknowledged {
                id: pid,
                index,
                term,
                acks,
            } => {
                let Some(n) = self.nodes[i].proposals.remove(&pid) else {
                    panic!("replica {id} acknowledges unknown proposal {pid:?}");
                };
                let data = self.proposals[n].payload.clone();
                let durable =
                    acks == Acks::All || self.cfg.sabotage == Sabotage::LeaderAcksCountAsDurable;
                match acks {
                    Acks::All => {
                        self.report.acked_all += 1;
                        match self.committed.get(&index) {
                            Some((t, d)) if *t == term && *d == data => {}
                            other => {
                                let detail = format!(
                                    "replica {id} acknowledges #{n} at ({index}, term {term}) but the committed log has {:?} there",
                                    other.map(|(t, d)| (*t, describe(d)))
                                );
                                self.fail(ViolationKind::AckedLost, detail);
                            }
                        }
                    }
                    Acks::Leader => {
                        self.report.acked_leader += 1;
                        let durable_here = self.nodes[i]
                            .core
                            .as_ref()
                            .and_then(|c| c.store().durable_entry(index))
                            .is_some_and(|e| e.term == term && e.data == data);
                        if !durable_here {
                            self.fail(
                                ViolationKind::AckedLost,
                                format!("replica {id} acknowledges #{n} at acks=leader before its copy at {index} is durable"),
                            );
                        }
                    }
                }
                if durable {
                    if let Some((t, d)) = self.committed.get(&index) {
                        if *t != term || *d != data {
                            let detail = format!(
                                "#{n} acknowledged at ({index}, term {term}) but (term {t}, {}) is committed there",
                                describe(d)
                            );
                            self.fail(ViolationKind::AckedLost, detail);
                        }
                    }
                    self.acked_at.insert(index, n);
                }
                self.proposals[n].state = ProposalState::Acked { index, durable };
                self.trace(|| format!("{id} acks #{n} at ({index}, {term}) {acks:?}"));
            }
            Action::ProposalFailed { id: pid, error } => {
                let Some(n) = self.nodes[i].proposals.remove(&pid) else {
                    panic!("replica {id} fails unknown proposal {pid:?}");
                };
                if error.is_definite() {
                    self.proposals[n].state = ProposalState::NotCommitted;
                    if let Some(index) = self.committed_at.get(&n) {
                        let detail =
                            format!("#{n} answered {error} but it is committed at {index}");
                        self.fail(ViolationKind::PhantomCommit, detail);
                    }
                } else {
                    self.proposals[n].state = ProposalState::Unknown;
                }
                self.trace(|| format!("{id} fails #{n}: {error}"));
            }
            Action::LeaderChanged { leader, term } => {
                self.trace(|| format!("{id} sees leader {leader:?} in term {term}"));
            }
        }
    }

    fn record_commit(&mut self, id: u64, index: u64, term: u64, data: Bytes) {
        if let Some((t, d)) = self.committed.get(&index) {
            if *t != term || *d != data {
                let detail = format!(
                    "replica {id} applies (term {term}, {}) at {index}, where (term {t}, {}) was committed",
                    describe(&data),
                    describe(d)
                );
                let kind = if self.acked_at.contains_key(&index) {
                    ViolationKind::AckedLost
                } else {
                    ViolationKind::ConflictingCommit
                };
                self.fail(kind, detail);
            }
            return;
        }
        if let Some(&n) = self.acked_at.get(&index) {
            if self.proposals[n].payload != data {
                let detail = format!(
                    "#{n} was acknowledged at {index} but {} is committed there",
                    describe(&data)
                );
                self.fail(ViolationKind::AckedLost, detail);
            }
        }
        if !data.is_empty() {
            match proposal_number(&data) {
                Some(n) if n < self.proposals.len() => {
                    if let Some(other) = self.committed_at.insert(n, index) {
                        let detail = format!("#{n} is committed at {other} and at {index}");
                        self.fail(ViolationKind::ConflictingCommit, detail);
                    }
                    if matches!(
                        self.proposals[n].state,
                        ProposalState::Refused | ProposalState::NotCommitted
                    ) {
                        let detail = format!(
                            "#{n} ({:?}) is committed at {index}",
                            self.proposals[n].state
                        );
                        self.fail(ViolationKind::PhantomCommit, detail);
                    }
                }
                _ => {
                    self.fail(
                        ViolationKind::PhantomCommit,
                        format!("a payload nobody proposed is committed at {index}"),
                    );
                }
            }
        }
        self.committed.insert(index, (term, data));
        self.report.committed_max = self.report.committed_max.max(index);
        self.check_index_durable_on_majority(index);
    }

    /// Whether replica `i`'s durable image holds committed `index`.
    fn holds_durably(&self, i: usize, index: u64, term: u64) -> bool {
        let node = &self.nodes[i];
        let store = match (&node.core, &node.parked) {
            (Some(c), _) => c.store(),
            (None, Some(s)) => s,
            (None, None) => return false,
        };
        let (start, _) = store.durable_log_start();
        if index <= start {
            return true;
        }
        store.durable_entry(index).is_some_and(|e| e.term == term)
    }

    fn check_index_durable_on_majority(&mut self, index: u64) {
        let Some((term, _)) = self.committed.get(&index) else {
            return;
        };
        let term = *term;
        let holders = (0..self.nodes.len())
            .filter(|&i| self.holds_durably(i, index, term))
            .count();
        if holders < self.majority() {
            let kind = if self.acked_at.contains_key(&index) {
                ViolationKind::AckedLost
            } else {
                ViolationKind::NotDurableOnMajority
            };
            self.fail(
                kind,
                format!(
                    "committed index {index} (term {term}) is durable on {holders} of {} replicas",
                    self.nodes.len()
                ),
            );
        }
    }

    fn check_durable_on_majority(&mut self) {
        let indices: Vec<u64> = self.committed.keys().copied().collect();
        for index in indices {
            self.check_index_durable_on_majority(index);
            if self.violation.is_some() {
                return;
            }
        }
    }

    /// Election safety and commit monotonicity, after every input.
    fn check_replica(&mut self, i: usize) {
        let Some(core) = self.nodes[i].core.as_ref() else {
            return;
        };
        let (id, term, leader, commit) = (
            core.id(),
            core.term(),
            core.is_leader(),
            core.commit_index(),
        );
        if leader {
            match self.leaders.get(&term) {
                Some(&other) if other != id => {
                    self.fail(
                        ViolationKind::ElectionSafety,
                        format!("replicas {other} and {id} both lead term {term}"),
                    );
                }
                Some(_) => {}
                None => {
                    self.leaders.insert(term, id);
                    self.report.elections += 1;
                    self.trace(|| format!("{id} leads term {term}"));
                }
            }
        }
        self.commit_max_ever = self.commit_max_ever.max(commit);
        let node = &mut self.nodes[i];
        if commit < node.commit_seen {
            let detail = format!(
                "replica {id}'s commit went back from {} to {commit}",
                node.commit_seen
            );
            self.fail(ViolationKind::CommitRegressed, detail);
        } else {
            node.commit_seen = commit;
        }
    }

    fn final_checks(&mut self) {
        // The cluster's commit never went back: every replica is at least
        // as far as any replica ever was.
        for node in &self.nodes {
            let (commit, applied) = node
                .core
                .as_ref()
                .map_or((0, 0), |c| (c.commit_index(), c.applied_index()));
            if commit < self.commit_max_ever || applied < self.commit_max_ever {
                let detail = format!(
                    "replica {} ends at commit {commit}, applied {applied}, below the {} once committed",
                    node.id, self.commit_max_ever
                );
                self.fail(ViolationKind::CommitRegressed, detail);
                return;
            }
        }
        // Every replica's log agrees with the committed log up to its
        // applied index.
        for i in 0..self.nodes.len() {
            let Some(core) = self.nodes[i].core.as_ref() else {
                continue;
            };
            let store = core.store();
            let first = store.first_index();
            let applied = core.applied_index();
            let mut problem = None;
            for (&index, (term, data)) in self.committed.range(first..applied.max(first - 1) + 1) {
                match store.entry(index) {
                    Some(e) if e.term == *term && e.data == *data => {}
                    other => {
                        problem = Some(format!(
                            "replica {} holds {:?} at committed index {index}",
                            core.id(),
                            other.map(|e| e.term)
                        ));
                        break;
                    }
                }
            }
            if let Some(p) = problem {
                self.fail(ViolationKind::ConflictingCommit, p);
            }
        }
        // Every acks=all acknowledgement is in the committed log, applied by
        // every replica.
        let acked: Vec<(usize, u64)> = self
            .proposals
            .iter()
            .enumerate()
            .filter_map(|(n, p)| match p.state {
                ProposalState::Acked {
                    index,
                    durable: true,
                } => Some((n, index)),
                _ => None,
            })
            .collect();
        for (n, index) in acked {
            let ok = self
                .committed
                .get(&index)
                .is_some_and(|(_, d)| *d == self.proposals[n].payload);
            if !ok {
                self.fail(
                    ViolationKind::AckedLost,
                    format!("#{n} acknowledged at {index} is not committed there"),
                );
            }
            for node in &self.nodes {
                if node.applied < index {
                    let detail = format!(
                        "replica {} never applied acknowledged index {index}",
                        node.id
                    );
                    self.fail(ViolationKind::AckedLost, detail);
                    break;
                }
            }
        }
        // Log matching over whole logs, pairwise.
        for a in 0..self.nodes.len() {
            for b in a + 1..self.nodes.len() {
                let (Some(ca), Some(cb)) = (self.core(a), self.core(b)) else {
                    continue;
                };
                let (sa, sb) = (ca.store(), cb.store());
                let lo = sa.first_index().max(sb.first_index());
                let hi = sa.last_index().min(sb.last_index());
                let mut agree_to = None;
                for index in (lo..=hi).rev() {
                    if sa.entry(index).map(|e| e.term) == sb.entry(index).map(|e| e.term) {
                        agree_to = Some(index);
                        break;
                    }
                }
                if let Some(top) = agree_to {
                    for index in lo..=top {
                        let (ea, eb) = (sa.entry(index), sb.entry(index));
                        let same = match (ea, eb) {
                            (Some(x), Some(y)) => x.term == y.term && x.data == y.data,
                            _ => false,
                        };
                        if !same {
                            let detail = format!(
                                "replicas {} and {} agree at {top} but differ at {index}",
                                ca.id(),
                                cb.id()
                            );
                            self.fail(ViolationKind::LogMatching, detail);
                            return;
                        }
                    }
                }
            }
        }
    }
}
