//! `ReplicaCore`: one partition's replica, I/O-free, over raft-rs's
//! `RawNode`.
//!
//! The caller (a shard's shell, or the simulator) feeds it events and takes
//! [`Action`]s back; it never does I/O, never reads a clock, never spawns.
//! Inputs: [`ReplicaCore::tick`] (time), [`ReplicaCore::step`] (a message
//! from a peer), [`ReplicaCore::propose`] (a client's record batch),
//! [`ReplicaCore::on_persisted`] (a storage completion),
//! [`ReplicaCore::report_snapshot`] / [`ReplicaCore::report_unreachable`]
//! (transport completions), [`ReplicaCore::compact`] (retention).
//! Outputs, in order, from [`ReplicaCore::take_actions`]: make staged writes
//! durable, send messages, apply committed entries or an installed snapshot,
//! answer proposals, note leader changes.
//!
//! # The Ready protocol (raft-rs, asynchronous persistence)
//! After every input the core drains raft-rs's `Ready`s, each in this order:
//! 1. `messages()` (only a leader has them) are sent at once: a leader may
//!    replicate in parallel with its own disk write (Raft thesis 10.2.1);
//!    raft-rs counts the leader's own entries towards a commit only after
//!    they are persisted (`on_persist_ready`).
//! 2. A snapshot from the leader is staged in the [`LogStore`] and reported
//!    ([`Action::InstallSnapshot`]).
//! 3. Committed entries are applied ([`Action::Apply`]): raft-rs hands out
//!    only entries that are both committed and persisted locally.
//! 4. New entries, then the hard state, are staged (readable by raft-rs at
//!    once, durable later), and [`Action::Persist`] asks the shell to make
//!    them durable.
//! 5. `persisted_messages()` (votes, vote requests, append responses: every
//!    message of a non-leader) are held back with the Ready's number.
//! 6. `advance_append_async(ready)`.
//!
//! When the shell reports a sync ([`ReplicaCore::on_persisted`]), every held
//! Ready whose writes are now durable releases its messages, in Ready order,
//! and `on_persist_ready(number)` tells raft-rs; the next `Ready` then
//! carries what that unlocks (commits, the leader's own progress), which is
//! why `LightReady` (the synchronous `advance` path) is not used. A Ready
//! whose only change is the commit index (`must_sync() == false`) does not
//! wait for its hard state to be durable, as raft-rs allows; the write is
//! staged and synced with the next one. `advance_apply_to` follows what was
//! applied.
//!
//! Completions name write sequence numbers ([`LogStore::write_seq`]), not
//! "synced up to index N": after a conflicting suffix is overwritten, index
//! 8 of term 2 and index 8 of term 3 are different writes, and only the
//! number says which one a sync covered.
//!
//! Peers are trusted to run this protocol: [`ReplicaCore::step`] refuses
//! messages from outside the group and message types peers never send, but
//! raft-rs itself panics on some protocol violations (an append that would
//! truncate a committed entry), as it should for corrupted state.
//!
//! # Proposals and acknowledgements
//! Only the leader accepts proposals; anyone else refuses at once with a
//! leader hint. An accepted proposal is tracked by its index and term:
//! - [`Acks::All`] is acknowledged when the entry is committed (a majority
//!   has it durable) and applied here (durable here too);
//! - [`Acks::Leader`] is acknowledged once the leader's own copy is durable
//!   (Kafka's acks=1: may be lost on failover).
//!
//! When leadership is lost, a pending proposal whose index is already known
//! committed with its term stays pending (it will be acknowledged); one whose
//! index holds another term is answered `Superseded` (definitely not
//! committed); the rest are answered `NotLeader` (outcome unknown).
//!
//! # Invariants (asserted after every input)
//! - the commit index never decreases while the replica lives (after a
//!   crash it restarts from the durable hard state);
//! - `applied <= commit`; entries are applied densely, each exactly once;
//! - every pending proposal's index is above `applied`;
//! - a proposal is acknowledged at most once, with the index and term it was
//!   appended at.
//!
//! # Determinism
//! raft-rs draws election timeouts from the thread's RNG. The core
//! overrides every fresh draw with one from its own seeded PRNG
//! ([`ReplicaConfig::timer_seed`]), in the same range, so a simulation
//! replays exactly from its seed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use raft::eraftpb::{Entry, Message, MessageType, Snapshot};
use raft::{RawNode, SnapshotStatus, StateRole};

use crate::error::{
    CompactError, ConfigError, OpenError, PersistError, ProposalError, ProposeError, StepError,
};
use crate::limits;
use crate::rng::SplitMix64;
use crate::storage::{LogStore, MemLog};

/// Settings of one replica. Time is in ticks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaConfig {
    /// This replica's id (never 0, never reused).
    pub id: u64,
    /// Every voter of the group, this one included.
    pub voters: Vec<u64>,
    /// Ticks without a leader before campaigning (raft-rs `election_tick`);
    /// each timeout is drawn from `[election_ticks, 2 * election_ticks)`.
    pub election_ticks: usize,
    /// Ticks between a leader's heartbeats (raft-rs `heartbeat_tick`).
    pub heartbeat_ticks: usize,
    /// Append messages in flight per follower (raft-rs `max_inflight_msgs`).
    pub inflight_msgs_max: usize,
    /// Entry bytes per append message (raft-rs `max_size_per_msg`).
    pub msg_bytes_max: u64,
    /// Uncommitted proposal bytes before proposals are dropped (raft-rs
    /// `max_uncommitted_size`).
    pub uncommitted_bytes_max: u64,
    /// Committed entry bytes per Ready (raft-rs
    /// `max_committed_size_per_ready`).
    pub committed_bytes_per_ready_max: u64,
    /// Largest proposal payload.
    pub proposal_bytes_max: usize,
    /// Proposals awaiting their answer, at most.
    pub pending_proposals_max: usize,
    /// Seeds the election-timeout jitter.
    pub timer_seed: u64,
    /// On open, apply again every entry after the snapshot point up to the
    /// stored commit (for a state machine that is not durable by itself,
    /// e.g. producer state rebuilt from the log); otherwise apply resumes
    /// after the stored commit.
    pub replay_applied: bool,
}

impl ReplicaConfig {
    /// The defaults of [`crate::limits`] for replica `id` of `voters`.
    pub fn new(id: u64, voters: &[u64]) -> Self {
        ReplicaConfig {
            id,
            voters: voters.to_vec(),
            election_ticks: limits::DEFAULT_ELECTION_TICKS,
            heartbeat_ticks: limits::DEFAULT_HEARTBEAT_TICKS,
            inflight_msgs_max: limits::DEFAULT_INFLIGHT_MSGS_MAX,
            msg_bytes_max: limits::DEFAULT_MSG_BYTES_MAX,
            uncommitted_bytes_max: limits::DEFAULT_UNCOMMITTED_BYTES_MAX,
            committed_bytes_per_ready_max: limits::DEFAULT_COMMITTED_BYTES_PER_READY_MAX,
            proposal_bytes_max: limits::PROPOSAL_BYTES_MAX,
            pending_proposals_max: limits::DEFAULT_PENDING_PROPOSALS_MAX,
            timer_seed: id,
            replay_applied: false,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError::ZeroId);
        }
        if self.voters.is_empty() {
            return Err(ConfigError::NoVoters);
        }
        if self.voters.len() > limits::VOTERS_MAX {
            return Err(ConfigError::TooManyVoters {
                count: self.voters.len(),
                max: limits::VOTERS_MAX,
            });
        }
        for (i, v) in self.voters.iter().enumerate() {
            if *v == 0 {
                return Err(ConfigError::ZeroId);
            }
            if self.voters[..i].contains(v) {
                return Err(ConfigError::DuplicateVoter { id: *v });
            }
        }
        if !self.voters.contains(&self.id) {
            return Err(ConfigError::NotAVoter {
                id: self.id,
                voters: self.voters.clone(),
            });
        }
        if self.heartbeat_ticks == 0 || self.election_ticks <= self.heartbeat_ticks {
            return Err(ConfigError::Ticks {
                election_ticks: self.election_ticks,
                heartbeat_ticks: self.heartbeat_ticks,
            });
        }
        let in_range = |field: &'static str, value: u64, min: u64, max: u64| {
            if value < min || value > max {
                Err(ConfigError::OutOfRange {
                    field,
                    value,
                    min,
                    max,
                })
            } else {
                Ok(())
            }
        };
        in_range(
            "inflight_msgs_max",
            self.inflight_msgs_max as u64,
            1,
            1 << 16,
        )?;
        in_range(
            "proposal_bytes_max",
            self.proposal_bytes_max as u64,
            1,
            limits::PROPOSAL_BYTES_MAX as u64,
        )?;
        in_range(
            "pending_proposals_max",
            self.pending_proposals_max as u64,
            1,
            limits::PENDING_PROPOSALS_MAX as u64,
        )?;
        Ok(())
    }

    fn raft_config(&self, applied: u64) -> raft::Config {
        raft::Config {
            id: self.id,
            election_tick: self.election_ticks,
            heartbeat_tick: self.heartbeat_ticks,
            min_election_tick: self.election_ticks,
            max_election_tick: 2 * self.election_ticks,
            applied,
            max_size_per_msg: self.msg_bytes_max,
            max_inflight_msgs: self.inflight_msgs_max,
            // A leader cut off from a majority steps down after an election
            // timeout, and a replica coming back from a partition does not
            // depose a working leader.
            check_quorum: true,
            pre_vote: true,
            max_uncommitted_size: self.uncommitted_bytes_max,
            max_committed_size_per_ready: self.committed_bytes_per_ready_max,
            ..raft::Config::default()
        }
    }
}

/// When a proposal is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// Committed: a majority has the entry durable (Kafka acks=all).
    All,
    /// The leader's own copy is durable (Kafka acks=1); lost if another
    /// leader is elected without it.
    Leader,
}

/// Names one accepted proposal of one replica incarnation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProposalId(pub u64);

/// What the shell must do, in the order given.
#[derive(Debug, Clone)]
pub enum Action {
    /// Writes `..= write_seq` are staged in the log store: make them
    /// durable, then call [`ReplicaCore::on_persisted`]. Syncs may be
    /// coalesced: reporting a later write covers earlier ones.
    Persist {
        write_seq: u64,
        /// First and last index of entries staged by this Ready, if any.
        entries: Option<(u64, u64)>,
        /// Whether a hard state was staged.
        hard_state: bool,
        /// Index of a snapshot staged by this Ready, if any.
        snapshot_index: Option<u64>,
    },
    /// Send to `message.to`. Best effort: raft retries. A
    /// `MsgSnapshot`'s fate must be reported with
    /// [`ReplicaCore::report_snapshot`].
    Send(Message),
    /// These entries are committed and durable here, in index order, each
    /// once: the high watermark may advance to the last. Empty data is a
    /// leader's no-op entry.
    Apply { entries: Vec<Entry> },
    /// The log now starts after `index` (a snapshot from the leader,
    /// staged): everything up to `index` is committed. `data` is the
    /// snapshot's opaque payload.
    InstallSnapshot { index: u64, term: u64, data: Bytes },
    /// The proposal is acknowledged at the level it asked for.
    Acknowledged {
        id: ProposalId,
        index: u64,
        term: u64,
        acks: Acks,
    },
    /// The proposal will not be acknowledged.
    ProposalFailed {
        id: ProposalId,
        error: ProposalError,
    },
    /// The known leader or the term changed (Kafka's leader epoch is the
    /// term).
    LeaderChanged { leader: Option<u64>, term: u64 },
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    id: ProposalId,
    term: u64,
    acks: Acks,
}

/// A Ready handed to raft-rs whose writes may not yet be durable.
#[derive(Debug)]
struct Unpersisted {
    number: u64,
    /// The write sequence number that must be durable before `messages`
    /// may leave and raft-rs may hear of it.
    required_seq: u64,
    messages: Vec<Message>,
}

/// One partition's replica (see the module documentation).
pub struct ReplicaCore<S: LogStore = MemLog> {
    cfg: ReplicaConfig,
    raw: RawNode<S>,
    timer: SplitMix64,
    actions: Vec<Action>,
    unpersisted: VecDeque<Unpersisted>,
    /// `required_seq` of the latest Ready (non-decreasing).
    required_seq: u64,
    /// Highest write sequence number already asked to be made durable.
    persist_requested_seq: u64,
    /// Accepted proposals awaiting their answer, by log index. Terms never
    /// decrease along the log, so the first has the lowest term.
    pending: BTreeMap<u64, Pending>,
    /// Indices of the pending proposals that asked for [`Acks::Leader`].
    pending_leader_acks: BTreeSet<u64>,
    next_proposal: u64,
    /// Last index applied (or covered by an installed snapshot).
    applied: u64,
    /// Highest commit index seen (never decreases in one incarnation).
    commit_seen: u64,
    /// (leader id, term) last reported by `LeaderChanged`.
    leader_seen: (u64, u64),
    /// FAULT INJECTION (simulator self-test only): release every Ready as
    /// if its writes were durable.
    release_before_persist: bool,
}

impl<S: LogStore> ReplicaCore<S> {
    /// Opens the replica over its log store: a new group's empty store, or
    /// what survived a crash. Entries up to the durable commit are taken as
    /// already applied (the log is the state: nothing to replay).
    pub fn open(cfg: ReplicaConfig, store: S) -> Result<Self, OpenError> {
        cfg.validate()?;
        assert_eq!(
            store.synced_seq(),
            store.write_seq(),
            "replica {}: a replica opens only over durable state (recover or crash the store first)",
            cfg.id
        );
        let mut store_voters = store.voters();
        store_voters.sort_unstable();
        let mut cfg_voters = cfg.voters.clone();
        cfg_voters.sort_unstable();
        if store_voters != cfg_voters {
            return Err(ConfigError::StoreVoters {
                store: store_voters,
                config: cfg_voters,
            }
            .into());
        }
        let state = store
            .initial_state()
            .map_err(|source| OpenError::Raft { id: cfg.id, source })?;
        let commit = state.hard_state.commit;
        let applied = if cfg.replay_applied {
            let snapshot_index = raft::Storage::first_index(&store)
                .map_err(|source| OpenError::Raft { id: cfg.id, source })?
                .saturating_sub(1);
            snapshot_index.min(commit)
        } else {
            commit
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let raw = RawNode::new(&cfg.raft_config(applied), store, &logger)
            .map_err(|source| OpenError::Raft { id: cfg.id, source })?;
        let term = raw.raft.term;
        let mut core = ReplicaCore {
            timer: SplitMix64::new(cfg.timer_seed),
            cfg,
            raw,
            actions: Vec::new(),
            unpersisted: VecDeque::new(),
            required_seq: 0,
            persist_requested_seq: 0,
            pending: BTreeMap::new(),
            pending_leader_acks: BTreeSet::new(),
            next_proposal: 1,
            applied,
            commit_seen: commit,
            leader_seen: (0, term),
            release_before_persist: false,
        };
        let synced = core.raw.store().synced_seq();
        core.required_seq = synced;
        core.persist_requested_seq = core.raw.store().write_seq();
        core.after_input();
        Ok(core)
    }

    // ----- inputs -----

    /// One unit of logical time.
    pub fn tick(&mut self) {
        self.raw.tick();
        self.after_input();
    }

    /// A message from a peer.
    pub fn step(&mut self, msg: Message) -> Result<(), StepError> {
        let id = self.cfg.id;
        if msg.to != id {
            return Err(StepError::WrongRecipient { to: msg.to, id });
        }
        if !self.cfg.voters.contains(&msg.from) || msg.from == id {
            return Err(StepError::UnknownPeer { id, from: msg.from });
        }
        let msg_type = msg.get_msg_type();
        if !accepted_from_peers(msg_type) {
            return Err(StepError::UnexpectedType {
                id,
                from: msg.from,
                msg_type,
            });
        }
        let from = msg.from;
        let result = self.raw.step(msg);
        self.after_input();
        result.map_err(|source| StepError::Raft {
            id,
            from,
            msg_type,
            source,
        })
    }

    /// Proposes one record batch. Only the leader accepts; the answer comes
    /// later as [`Action::Acknowledged`] or [`Action::ProposalFailed`].
    pub fn propose(&mut self, payload: Bytes, acks: Acks) -> Result<ProposalId, ProposeError> {
        let term = self.raw.raft.term;
        if payload.is_empty() {
            // Empty entries are the leaders' no-ops.
            return Err(ProposeError::Empty);
        }
        if payload.len() > self.cfg.proposal_bytes_max {
            return Err(ProposeError::TooLarge {
                len_bytes: payload.len(),
                max_bytes: self.cfg.proposal_bytes_max,
            });
        }
        if self.raw.raft.state != StateRole::Leader {
            return Err(ProposeError::NotLeader {
                leader_hint: self.leader(),
                term,
            });
        }
        if self.pending.len() >= self.cfg.pending_proposals_max {
            return Err(ProposeError::TooManyPending {
                max: self.cfg.pending_proposals_max,
            });
        }
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgPropose);
        m.from = self.cfg.id;
        let e = Entry {
            data: payload,
            ..Default::default()
        };
        m.set_entries(vec![e].into());
        if self.raw.step(m).is_err() {
            // raft-rs refuses with ProposalDropped: a leadership transfer
            // is under way, or uncommitted_bytes_max is reached.
            self.after_input();
            return Err(ProposeError::Dropped { term });
        }
        let index = self.raw.raft.raft_log.last_index();
        assert_eq!(self.raw.raft.state, StateRole::Leader);
        assert_eq!(self.raw.raft.term, term, "a proposal changed the term");
        assert_eq!(
            self.raw.raft.raft_log.term(index).ok(),
            Some(term),
            "the proposal is not the last entry"
        );
        assert!(index > self.applied);
        let id = ProposalId(self.next_proposal);
        self.next_proposal += 1;
        let previous = self.pending.insert(index, Pending { id, term, acks });
        assert!(previous.is_none(), "two proposals at index {index}");
        if acks == Acks::Leader {
            self.pending_leader_acks.insert(index);
        }
        self.after_input();
        Ok(id)
    }

    /// The shell made the staged writes `..= write_seq` durable.
    pub fn on_persisted(&mut self, write_seq: u64) -> Result<(), PersistError> {
        self.raw.mut_store().mark_synced(write_seq)?;
        self.release_persisted();
        self.after_input();
        Ok(())
    }

    /// The transport delivered (or failed to deliver) a `MsgSnapshot` to
    /// `to`.
    pub fn report_snapshot(&mut self, to: u64, delivered: bool) {
        let status = if delivered {
            SnapshotStatus::Finish
        } else {
            SnapshotStatus::Failure
        };
        self.raw.report_snapshot(to, status);
        self.after_input();
    }

    /// The transport could not reach `to`.
    pub fn report_unreachable(&mut self, to: u64) {
        self.raw.report_unreachable(to);
        self.after_input();
    }

    /// Campaigns at once (tests; leadership placement later).
    pub fn campaign(&mut self) {
        // Refused only while a configuration change is pending: there are
        // none in this slice.
        let _ = self.raw.campaign();
        self.after_input();
    }

    /// Retention: drop entries up to `index` (at most the applied index);
    /// `index` becomes the log start and `data` the snapshot payload that a
    /// follower behind it will receive. Below the log start: nothing to do.
    pub fn compact(&mut self, index: u64, data: Bytes) -> Result<(), CompactError> {
        if index > self.applied {
            return Err(CompactError::AboveApplied {
                index,
                applied: self.applied,
            });
        }
        let first = self.raw.raft.raft_log.first_index();
        if index < first {
            return Ok(());
        }
        let term = self
            .raw
            .store()
            .term(index)
            .map_err(|source| CompactError::Store { index, source })?;
        self.raw.mut_store().compact(index, term, data);
        self.request_persist(None, false, None);
        self.after_input();
        Ok(())
    }

    /// FAULT INJECTION for the simulator's self-test only: breaks the Ready
    /// protocol by sending every held message and telling raft-rs that every
    /// Ready is persisted before its writes are durable. Never call this
    /// outside a test of the checkers.
    #[doc(hidden)]
    pub fn break_ready_protocol_for_tests(&mut self) {
        self.release_before_persist = true;
        self.release_persisted();
        self.after_input();
    }

    /// Moves the actions produced so far out.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    // ----- queries -----

    pub fn id(&self) -> u64 {
        self.cfg.id
    }

    pub fn config(&self) -> &ReplicaConfig {
        &self.cfg
    }

    /// The current term (the leader epoch when a leader is known).
    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// The leader this replica knows of, if any.
    pub fn leader(&self) -> Option<u64> {
        match self.raw.raft.leader_id {
            0 => None,
            id => Some(id),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    pub fn role(&self) -> StateRole {
        self.raw.raft.state
    }

    /// Kafka's leader epoch: the term, when a leader is known.
    pub fn leader_epoch(&self) -> Option<u64> {
        self.leader().map(|_| self.term())
    }

    /// Highest index known committed (may be above what is durable here).
    pub fn commit_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    /// Highest index applied here: committed and durable here (the high
    /// watermark this replica may serve).
    pub fn applied_index(&self) -> u64 {
        self.applied
    }

    /// Index of the last entry in the (staged) log.
    pub fn last_index(&self) -> u64 {
        self.raw.raft.raft_log.last_index()
    }

    /// Proposals awaiting their answer.
    pub fn pending_proposals(&self) -> usize {
        self.pending.len()
    }

    pub fn store(&self) -> &S {
        self.raw.store()
    }

    /// Gives the log store back (to crash and reopen it in a simulation, or
    /// on shutdown). Pending proposals get no answer.
    pub fn into_store(self) -> S {
        self.raw.raft.r.raft_log.store
    }

    // ----- the Ready loop -----

    fn after_input(&mut self) {
        self.randomize_election_timeout();
        self.drive();
        self.check_invariants();
    }

    /// Replaces raft-rs's own draw (thread RNG) whenever it restarted its
    /// election timer, so that runs replay from the seed.
    fn randomize_election_timeout(&mut self) {
        if self.raw.raft.election_elapsed == 0 {
            let e = self.cfg.election_ticks as u64;
            let t = self.timer.range(e, 2 * e) as usize;
            self.raw.raft.set_randomized_election_timeout(t);
        }
    }

    fn drive(&mut self) {
        loop {
            self.observe_leadership();
            if !self.raw.has_ready() {
                break;
            }
            let mut rd = self.raw.ready();
            // 1. A leader's messages leave at once.
            for m in rd.take_messages() {
                self.actions.push(Action::Send(m));
            }
            // 2. A snapshot from the leader: the log restarts after it.
            let mut snapshot_index = None;
            if !rd.snapshot().is_empty() {
                let snap: &Snapshot = rd.snapshot();
                let (index, term) = (snap.get_metadata().index, snap.get_metadata().term);
                let data = snap.data.clone();
                self.raw.mut_store().install_snapshot(snap);
                snapshot_index = Some(index);
                self.on_snapshot_installed(index, term, data);
            }
            // 3. Committed entries: committed and durable here.
            let committed = rd.take_committed_entries();
            self.apply(committed);
            // 4. New entries, then the hard state, staged in order.
            let entries = rd.take_entries();
            let range = match (entries.first(), entries.last()) {
                (Some(f), Some(l)) => Some((f.index, l.index)),
                _ => None,
            };
            if !entries.is_empty() {
                self.raw.mut_store().append(entries);
            }
            let hard_state = match rd.hs() {
                Some(hs) => {
                    self.raw.mut_store().set_hard_state(hs.clone());
                    true
                }
                None => false,
            };
            let must_sync = rd.must_sync();
            let number = rd.number();
            // 5. Messages that need this Ready durable first.
            let messages = rd.take_persisted_messages();
            self.raw.advance_append_async(rd);
            self.request_persist(range, hard_state, snapshot_index);
            if must_sync {
                self.required_seq = self.raw.store().write_seq();
            }
            self.unpersisted.push_back(Unpersisted {
                number,
                required_seq: self.required_seq,
                messages,
            });
            self.release_persisted();
        }
        self.advance_applied();
    }

    fn request_persist(
        &mut self,
        entries: Option<(u64, u64)>,
        hard_state: bool,
        snapshot_index: Option<u64>,
    ) {
        let written = self.raw.store().write_seq();
        if written > self.persist_requested_seq {
            self.persist_requested_seq = written;
            self.actions.push(Action::Persist {
                write_seq: written,
                entries,
                hard_state,
                snapshot_index,
            });
        }
    }

    /// Releases the held Readies whose writes are durable, in order.
    fn release_persisted(&mut self) {
        let synced = self.raw.store().synced_seq();
        let mut last = None;
        while let Some(front) = self.unpersisted.front() {
            if front.required_seq > synced && !self.release_before_persist {
                break;
            }
            let Some(ready) = self.unpersisted.pop_front() else {
                break;
            };
            for m in ready.messages {
                self.actions.push(Action::Send(m));
            }
            last = Some(ready.number);
        }
        if let Some(number) = last {
            self.raw.on_persist_ready(number);
            self.acknowledge_leader_level();
        }
    }

    /// Acks::Leader proposals whose entry is durable on this leader.
    fn acknowledge_leader_level(&mut self) {
        if self.raw.raft.state != StateRole::Leader {
            return;
        }
        let persisted = self.raw.raft.raft_log.persisted;
        let term = self.raw.raft.term;
        while let Some(&index) = self.pending_leader_acks.first() {
            if index > persisted {
                break;
            }
            self.pending_leader_acks.remove(&index);
            let Some(p) = self.pending.get(&index).copied() else {
                continue;
            };
            if p.term != term {
                // From an earlier term of this replica: known committed
                // (see `observe_leadership`), acknowledged when applied.
                continue;
            }
            self.pending.remove(&index);
            self.actions.push(Action::Acknowledged {
                id: p.id,
                index,
                term: p.term,
                acks: p.acks,
            });
        }
    }

    /// Removes a pending proposal, whatever its level.
    fn take_pending(&mut self, index: u64) -> Option<Pending> {
        let p = self.pending.remove(&index)?;
        if p.acks == Acks::Leader {
            self.pending_leader_acks.remove(&index);
        }
        Some(p)
    }

    fn apply(&mut self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        // The high watermark moves first, then the producers are answered.
        let mut answers = Vec::new();
        for e in &entries {
            assert_eq!(
                e.index,
                self.applied + 1,
                "replica {}: committed entries are not dense",
                self.cfg.id
            );
            self.applied = e.index;
            if let Some(p) = self.take_pending(e.index) {
                if e.term == p.term {
                    answers.push(Action::Acknowledged {
                        id: p.id,
                        index: e.index,
                        term: e.term,
                        acks: p.acks,
                    });
                } else {
                    answers.push(Action::ProposalFailed {
                        id: p.id,
                        error: ProposalError::Superseded {
                            index: e.index,
                            term: p.term,
                            committed_term: e.term,
                        },
                    });
                }
            }
        }
        self.actions.push(Action::Apply { entries });
        self.actions.append(&mut answers);
    }

    fn on_snapshot_installed(&mut self, index: u64, term: u64, data: Bytes) {
        assert!(
            index >= self.applied,
            "replica {}: snapshot at {index} is below the applied index {}",
            self.cfg.id,
            self.applied
        );
        self.applied = index;
        // A replica receiving a snapshot is a follower and has answered its
        // proposals when it stepped down; any left are settled here.
        let covered: Vec<u64> = self.pending.range(..=index).map(|(i, _)| *i).collect();
        for i in covered {
            if let Some(p) = self.take_pending(i) {
                self.actions.push(Action::ProposalFailed {
                    id: p.id,
                    error: ProposalError::NotLeader {
                        index: i,
                        term: p.term,
                        leader_hint: self.leader(),
                    },
                });
            }
        }
        self.actions
            .push(Action::InstallSnapshot { index, term, data });
    }

    fn observe_leadership(&mut self) {
        let now = (self.raw.raft.leader_id, self.raw.raft.term);
        if now != self.leader_seen {
            self.leader_seen = now;
            self.actions.push(Action::LeaderChanged {
                leader: self.leader(),
                term: now.1,
            });
        }
        if self.pending.is_empty() {
            return;
        }
        let leader = self.raw.raft.state == StateRole::Leader;
        let term = self.raw.raft.term;
        let lowest_term = self.pending.first_key_value().map(|(_, p)| p.term);
        if leader && lowest_term == Some(term) {
            // Terms never decrease along the log: all are of this term.
            return;
        }
        let committed = self.raw.raft.raft_log.committed;
        let indices: Vec<u64> = self.pending.keys().copied().collect();
        for index in indices {
            let Some(p) = self.pending.get(&index).copied() else {
                continue;
            };
            if leader && p.term == term {
                continue;
            }
            let log_term = self.raw.raft.raft_log.term(index).ok();
            if index <= committed && log_term == Some(p.term) {
                // Known committed with its term: acknowledged when applied.
                continue;
            }
            self.take_pending(index);
            let error = match log_term {
                Some(t) if index <= committed => ProposalError::Superseded {
                    index,
                    term: p.term,
                    committed_term: t,
                },
                _ => ProposalError::NotLeader {
                    index,
                    term: p.term,
                    leader_hint: self.leader(),
                },
            };
            self.actions
                .push(Action::ProposalFailed { id: p.id, error });
        }
    }

    /// Tells raft-rs how far the application has applied.
    fn advance_applied(&mut self) {
        let log = &self.raw.raft.raft_log;
        let target = self.applied.min(log.persisted).min(log.committed);
        if target > log.applied {
            self.raw.advance_apply_to(target);
        }
    }

    fn check_invariants(&mut self) {
        let committed = self.raw.raft.raft_log.committed;
        assert!(
            committed >= self.commit_seen,
            "replica {}: commit index went back from {} to {committed}",
            self.cfg.id,
            self.commit_seen
        );
        self.commit_seen = committed;
        assert!(
            self.applied <= committed,
            "replica {}: applied {} is above the commit {committed}",
            self.cfg.id,
            self.applied
        );
        if let Some((first, _)) = self.pending.first_key_value() {
            assert!(
                *first > self.applied,
                "a pending proposal is already applied"
            );
        }
        debug_assert!(self
            .pending_leader_acks
            .iter()
            .all(|i| self.pending.get(i).is_some_and(|p| p.acks == Acks::Leader)));
        let store = self.raw.store();
        assert!(store.synced_seq() <= store.write_seq());
    }
}

/// Message types a peer may send. Proposals, read-index requests and
/// leadership transfers are not forwarded between replicas in this design.
fn accepted_from_peers(t: MessageType) -> bool {
    use MessageType::*;
    matches!(
        t,
        MsgAppend
            | MsgAppendResponse
            | MsgRequestVote
            | MsgRequestVoteResponse
            | MsgRequestPreVote
            | MsgRequestPreVoteResponse
            | MsgSnapshot
            | MsgHeartbeat
            | MsgHeartbeatResponse
            | MsgTimeoutNow
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ProposalError;
    use crate::sim::{Sim, SimConfig};

    /// Steps a fault-free simulation until `done` or `steps_max` steps.
    fn run_until(sim: &mut Sim, steps_max: u64, mut done: impl FnMut(&Sim) -> bool) -> bool {
        for _ in 0..steps_max {
            sim.step(false);
            if let Some(v) = sim.violation() {
                panic!("{v}");
            }
            if done(sim) {
                return true;
            }
        }
        false
    }

    fn elected(seed: u64, nodes: usize) -> (Sim, usize) {
        let mut sim = Sim::new(SimConfig::calm(seed, nodes));
        assert!(run_until(&mut sim, 200, |s| s.leader().is_some()));
        // Let the followers hear from the leader.
        run_until(&mut sim, 10, |_| false);
        let leader = sim.leader().unwrap();
        (sim, leader)
    }

    fn id(i: usize) -> u64 {
        i as u64 + 1
    }

    #[test]
    fn three_replicas_elect_one_leader_that_all_know() {
        for seed in 0..20 {
            let (sim, l) = elected(seed, 3);
            assert_eq!(sim.leaders(), vec![l], "seed {seed}");
            let term = sim.core(l).unwrap().term();
            assert!(term >= 1);
            for i in 0..3 {
                let c = sim.core(i).unwrap();
                assert_eq!(c.term(), term, "seed {seed}");
                assert_eq!(c.leader(), Some(id(l)), "seed {seed}");
                assert_eq!(c.leader_epoch(), Some(term));
                assert_eq!(c.is_leader(), i == l);
            }
        }
    }

    #[test]
    fn a_proposal_is_acknowledged_once_committed() {
        let (mut sim, l) = elected(3, 3);
        let (n, r) = sim.propose_at(l, Acks::All);
        assert!(r.is_ok());
        assert!(!sim.is_acked(n), "not before a majority has it durable");
        assert!(run_until(&mut sim, 50, |s| s.is_acked(n)));
        assert!(sim.is_committed(n));
        let leader = sim.core(l).unwrap();
        assert!(
            leader.commit_index() >= 2,
            "no-op of the term, then the proposal"
        );
        assert_eq!(leader.pending_proposals(), 0);
    }

    #[test]
    fn a_follower_refuses_proposals_with_a_leader_hint() {
        let (mut sim, l) = elected(5, 3);
        let f = (l + 1) % 3;
        let term = sim.core(f).unwrap().term();
        let (n, r) = sim.propose_at(f, Acks::All);
        assert_eq!(
            r,
            Err(ProposeError::NotLeader {
                leader_hint: Some(id(l)),
                term
            })
        );
        assert!(r.unwrap_err().is_retriable());
        run_until(&mut sim, 30, |_| false);
        assert!(!sim.is_committed(n));
    }

    #[test]
    fn a_partitioned_leader_cannot_commit() {
        let (mut sim, old) = elected(7, 3);
        let old_term = sim.core(old).unwrap().term();
        // Commit something first, so the old leader's commit index is known.
        let (first, _) = sim.propose_at(old, Acks::All);
        assert!(run_until(&mut sim, 50, |s| s.is_acked(first)));
        run_until(&mut sim, 5, |_| false);
        sim.isolate(old);
        let commit_before = sim.core(old).unwrap().commit_index();
        let (n, r) = sim.propose_at(old, Acks::All);
        assert!(r.is_ok(), "it still believes it leads: {r:?}");
        // The majority elects a new leader of a later term and commits.
        assert!(run_until(&mut sim, 200, |s| s
            .leaders()
            .iter()
            .any(|&i| i != old && s.core(i).unwrap().term() > old_term)));
        let new = *sim.leaders().iter().find(|&&i| i != old).unwrap();
        let (m, r) = sim.propose_at(new, Acks::All);
        assert!(r.is_ok());
        assert!(run_until(&mut sim, 100, |s| s.is_acked(m)));
        // The old leader committed nothing meanwhile and stepped down
        // (check_quorum), answering its proposal with an unknown outcome.
        assert_eq!(sim.core(old).unwrap().commit_index(), commit_before);
        assert!(!sim.is_acked(n));
        assert!(!sim.core(old).unwrap().is_leader());
        assert!(sim.is_failed(n));
        // Healed, it follows the new leader; its entry is overwritten.
        sim.heal_network();
        let target = sim.core(new).unwrap().applied_index();
        assert!(run_until(&mut sim, 200, |s| s
            .core(old)
            .is_some_and(|c| c.applied_index() >= target)));
        assert!(!sim.is_committed(n));
        assert!(sim.is_committed(m));
    }

    #[test]
    fn a_follower_behind_compaction_catches_up_through_a_snapshot() {
        let (mut sim, l) = elected(11, 3);
        let f = (l + 1) % 3;
        let other = (l + 2) % 3;
        sim.isolate(f);
        let mut last = 0;
        for _ in 0..20 {
            let (n, r) = sim.propose_at(l, Acks::All);
            assert!(r.is_ok());
            last = n;
            sim.step(false);
        }
        assert!(run_until(&mut sim, 100, |s| s.is_acked(last)));
        run_until(&mut sim, 5, |_| false);
        let applied = sim.core(l).unwrap().applied_index();
        assert!(applied >= 21);
        sim.compact_at(l, applied).unwrap();
        let other_applied = sim.core(other).unwrap().applied_index();
        sim.compact_at(other, other_applied).unwrap();
        assert!(sim.core(f).unwrap().applied_index() < 2);
        sim.heal_network();
        assert!(run_until(&mut sim, 200, |s| s
            .core(f)
            .is_some_and(|c| c.applied_index() >= applied)));
        assert!(sim.snapshots_installed(f) >= 1);
        let store = sim.core(f).unwrap().store();
        assert!(store.first_index() > applied.min(other_applied));
        // And it goes on replicating normally after the snapshot.
        let (n, _) = sim.propose_at(sim.leader().unwrap(), Acks::All);
        let target = applied + 1;
        assert!(run_until(&mut sim, 100, |s| s.is_acked(n)
            && s.core(f).is_some_and(|c| c.applied_index() >= target)));
    }

    #[test]
    fn acknowledged_entries_survive_a_whole_cluster_crash() {
        let (mut sim, l) = elected(13, 3);
        let mut acked = Vec::new();
        for _ in 0..5 {
            let (n, _) = sim.propose_at(l, Acks::All);
            acked.push(n);
        }
        assert!(run_until(&mut sim, 100, |s| acked
            .iter()
            .all(|&n| s.is_acked(n))));
        // Some unsynced work in flight, then everyone crashes at once.
        let _unsynced = sim.propose_at(l, Acks::All);
        for i in 0..3 {
            sim.crash(i, 3);
        }
        assert!(sim.violation().is_none(), "{:?}", sim.violation());
        assert!(run_until(&mut sim, 300, |s| {
            s.leader().is_some() && (0..3).all(|i| s.core(i).is_some())
        }));
        sim.settle().unwrap();
        for n in acked {
            assert!(sim.is_committed(n));
        }
    }

    #[test]
    fn a_follower_votes_only_once_its_vote_is_durable() {
        let voters = [1, 2, 3];
        let mut core =
            ReplicaCore::open(ReplicaConfig::new(2, &voters), MemLog::new(&voters)).unwrap();
        core.take_actions();
        let mut vote = Message::default();
        vote.set_msg_type(MessageType::MsgRequestVote);
        vote.from = 1;
        vote.to = 2;
        vote.term = 1;
        core.step(vote).unwrap();
        let actions = core.take_actions();
        assert!(
            !actions.iter().any(|a| matches!(a, Action::Send(_))),
            "nothing leaves before the vote is durable: {actions:?}"
        );
        let seq = actions
            .iter()
            .find_map(|a| match a {
                Action::Persist {
                    write_seq,
                    hard_state: true,
                    ..
                } => Some(*write_seq),
                _ => None,
            })
            .expect("the vote is staged");
        assert_eq!(core.store().durable_hard_state().vote, 0);
        core.on_persisted(seq).unwrap();
        assert_eq!(core.store().durable_hard_state().vote, 1);
        let sent: Vec<Message> = core
            .take_actions()
            .into_iter()
            .filter_map(|a| match a {
                Action::Send(m) => Some(m),
                _ => None,
            })
            .collect();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].get_msg_type(), MessageType::MsgRequestVoteResponse);
        assert!(!sent[0].reject);
        assert_eq!(
            core.on_persisted(seq + 100),
            Err(PersistError::AheadOfWrites {
                reported: seq + 100,
                written: seq
            })
        );
    }

    #[test]
    fn messages_from_outside_the_group_are_refused() {
        let voters = [1, 2, 3];
        let mut core =
            ReplicaCore::open(ReplicaConfig::new(1, &voters), MemLog::new(&voters)).unwrap();
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgHeartbeat);
        m.from = 2;
        m.to = 3;
        assert!(matches!(
            core.step(m.clone()),
            Err(StepError::WrongRecipient { to: 3, id: 1 })
        ));
        m.to = 1;
        m.from = 9;
        assert!(matches!(
            core.step(m.clone()),
            Err(StepError::UnknownPeer { from: 9, .. })
        ));
        m.from = 2;
        m.set_msg_type(MessageType::MsgPropose);
        assert!(matches!(
            core.step(m),
            Err(StepError::UnexpectedType { .. })
        ));
    }

    #[test]
    fn proposals_are_checked_before_raft_sees_them() {
        let voters = [1];
        let mut core =
            ReplicaCore::open(ReplicaConfig::new(1, &voters), MemLog::new(&voters)).unwrap();
        assert!(matches!(
            core.propose(Bytes::from_static(b"x"), Acks::All),
            Err(ProposeError::NotLeader {
                leader_hint: None,
                ..
            })
        ));
        core.campaign();
        assert!(core.is_leader(), "a single voter elects itself");
        assert_eq!(
            core.propose(Bytes::new(), Acks::All),
            Err(ProposeError::Empty)
        );
        let big = Bytes::from(vec![0u8; core.config().proposal_bytes_max + 1]);
        assert!(matches!(
            core.propose(big, Acks::All),
            Err(ProposeError::TooLarge { .. })
        ));
        // A single replica: committed once its own write is durable.
        let id = core
            .propose(Bytes::from_static(b"batch"), Acks::All)
            .unwrap();
        let mut seq = 0;
        let mut acked = None;
        for _ in 0..4 {
            for a in core.take_actions() {
                match a {
                    Action::Persist { write_seq, .. } => seq = write_seq,
                    Action::Acknowledged { id: got, index, .. } => acked = Some((got, index)),
                    _ => {}
                }
            }
            assert!(acked.is_none() || core.store().durable_last_index() >= 2);
            core.on_persisted(seq).unwrap();
        }
        assert_eq!(acked, Some((id, 2)));
        assert_eq!(core.commit_index(), 2);
        assert_eq!(core.applied_index(), 2);
        assert!(matches!(
            core.compact(5, Bytes::new()),
            Err(CompactError::AboveApplied {
                index: 5,
                applied: 2
            })
        ));
        core.compact(2, Bytes::from_static(b"s")).unwrap();
        assert_eq!(core.store().first_index(), 3);
    }

    #[test]
    fn configurations_are_validated() {
        let bad = |f: fn(&mut ReplicaConfig)| {
            let mut c = ReplicaConfig::new(1, &[1, 2, 3]);
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(matches!(bad(|c| c.id = 0), ConfigError::ZeroId));
        assert!(matches!(
            bad(|c| c.id = 4),
            ConfigError::NotAVoter { id: 4, .. }
        ));
        assert!(matches!(
            bad(|c| c.voters = vec![1, 2, 2]),
            ConfigError::DuplicateVoter { id: 2 }
        ));
        assert!(matches!(bad(|c| c.voters.clear()), ConfigError::NoVoters));
        assert!(matches!(
            bad(|c| c.heartbeat_ticks = c.election_ticks),
            ConfigError::Ticks { .. }
        ));
        assert!(matches!(
            bad(|c| c.voters = (1..=11).collect()),
            ConfigError::TooManyVoters { count: 11, .. }
        ));
        assert!(matches!(
            bad(|c| c.inflight_msgs_max = 0),
            ConfigError::OutOfRange {
                field: "inflight_msgs_max",
                ..
            }
        ));
        let err = ReplicaCore::open(ReplicaConfig::new(1, &[1, 2, 3]), MemLog::new(&[1, 2]));
        assert!(matches!(
            err,
            Err(OpenError::Config(ConfigError::StoreVoters { .. }))
        ));
        let _ = ProposalError::NotLeader {
            index: 1,
            term: 1,
            leader_hint: None,
        };
    }
}
