//! The group coordinator core: an I/O-free state machine with Kafka's
//! classic rebalance protocol. The caller passes `now_ms` to every verb (no
//! clock inside) and, after each call, drains [`Coordinator::take_ready`]:
//! the joins and syncs that completed (answers to send) and the records to
//! append to the offsets log (generation changes, expiry tombstones).
//!
//! Verbs: [`join`](Coordinator::join), [`sync`](Coordinator::sync),
//! [`heartbeat`](Coordinator::heartbeat), [`leave`](Coordinator::leave),
//! [`commit`](Coordinator::commit) (validate) + [`apply`](Coordinator::apply)
//! (after the records are durable), [`fetch_offsets`](Coordinator::fetch_offsets),
//! [`reset_offsets`](Coordinator::reset_offsets), [`tick`](Coordinator::tick)
//! (session, rebalance and retention timers), [`set_topics`](Coordinator::set_topics),
//! [`describe`](Coordinator::describe), [`list`](Coordinator::list).
//!
//! States (Kafka's): `Empty` (no members; offsets may exist) ->
//! `PreparingRebalance` (join phase: waiting for every known member to
//! (re)join, or the rebalance timeout) -> `CompletingRebalance` (generation
//! bumped, joins answered, the leader computes the assignment and sends it
//! in its sync) -> `Stable`. A member joining with changed metadata,
//! leaving, or expiring moves the group back to `PreparingRebalance`.
//! When members ask the coordinator to assign (`coordinator_assigns`), the
//! coordinator runs the assignor at the end of the join phase and the group
//! goes straight to `Stable`. `Dead` is reported for groups that do not
//! exist (removed groups are dropped from memory).
//!
//! Invariants (checked after every verb in debug builds):
//! - `Empty` <=> no members (except a `PreparingRebalance` group may be
//!   briefly memberless until its join phase ends);
//! - in `CompletingRebalance` and `Stable` the leader is a member and a
//!   protocol is selected;
//! - join tickets exist only in `PreparingRebalance`, sync tickets only in
//!   `CompletingRebalance`; every ticket handed out completes exactly once;
//! - the generation never decreases, also across restarts (it is logged);
//! - the in-memory offsets are exactly the fold of the records applied.

use super::assignor::{self, Assignor};
use super::error::GroupError;
use super::records::{Committed, GroupMeta, Record};
use crate::limits::{GROUP_NAME_BYTES_MAX, OFFSET_METADATA_BYTES_MAX};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Kafka's group.min.session.timeout.ms / group.max.session.timeout.ms.
    pub session_timeout_min_ms: u32,
    pub session_timeout_max_ms: u32,
    /// Kafka's group.initial.rebalance.delay.ms: how long the first join
    /// phase of an empty group waits for more members.
    pub initial_rebalance_delay_ms: u64,
    /// Kafka's offsets.retention.ms: an empty group's offsets expire this
    /// long after it became empty (or its last commit).
    pub offsets_retention_ms: u64,
    /// Kafka's group.max.size.
    pub members_per_group_max: usize,
    /// Makes member ids unique across restarts (the shell passes the start
    /// time; tests pass their seed).
    pub member_id_nonce: u64,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            session_timeout_min_ms: 6_000,
            session_timeout_max_ms: 1_800_000,
            initial_rebalance_delay_ms: 3_000,
            offsets_retention_ms: 7 * 24 * 3600 * 1000,
            members_per_group_max: 1_000,
            member_id_nonce: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    /// Kafka's state names (DescribeGroups / ListGroups).
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// A join or sync that completes later; its answer comes out of
/// [`Coordinator::take_ready`] as a [`Completion`] with the same ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(pub u64);

#[derive(Debug)]
pub enum Outcome<T> {
    Done(T),
    Pending(Ticket),
}

#[derive(Debug, Clone, Default)]
pub struct JoinArgs {
    pub group: String,
    /// Empty for a new member (the coordinator assigns one).
    pub member_id: String,
    pub client_id: String,
    pub client_host: String,
    /// "consumer" for Kafka consumers; any non-empty string.
    pub protocol_type: String,
    /// (protocol name, metadata) in order of preference.
    pub protocols: Vec<(String, Vec<u8>)>,
    pub session_timeout_ms: u32,
    /// 0 means the session timeout (Kafka JoinGroup v0).
    pub rebalance_timeout_ms: u32,
    /// The topics the member subscribes to: what the coordinator assigns
    /// from when it assigns, and what describe shows.
    pub topics: Vec<String>,
    /// Ask the coordinator to assign (protocol names select the assignor:
    /// "range", "roundrobin"); every member of a group must agree.
    pub coordinator_assigns: bool,
    /// Kafka JoinGroup v4+: a new member first gets MEMBER_ID_REQUIRED.
    pub require_known_member_id: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedMember {
    pub member_id: String,
    /// The member's metadata for the selected protocol.
    pub metadata: Vec<u8>,
    pub topics: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinResult {
    pub generation: i32,
    pub protocol_type: String,
    pub protocol_name: String,
    pub leader_id: String,
    pub member_id: String,
    /// Every member with its metadata, for the leader only.
    pub members: Vec<JoinedMember>,
}

#[derive(Debug, Clone, Default)]
pub struct SyncArgs {
    pub group: String,
    pub member_id: String,
    pub generation: i32,
    /// The leader's assignment per member; ignored from followers.
    pub assignments: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncResult {
    pub protocol_type: String,
    pub protocol_name: String,
    pub assignment: Vec<u8>,
}

#[derive(Debug, Clone, Default)]
pub struct OffsetCommit {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub metadata: String,
}

#[derive(Debug, Clone, Default)]
pub struct CommitArgs {
    pub group: String,
    /// Empty with generation -1: a commit outside group management, allowed
    /// only while the group is Empty (Kafka's simple consumer).
    pub member_id: String,
    pub generation: i32,
    pub offsets: Vec<OffsetCommit>,
}

pub enum Completion {
    Join(Ticket, Result<JoinResult, GroupError>),
    Sync(Ticket, Result<SyncResult, GroupError>),
}

impl Completion {
    #[allow(dead_code)] // API for the Kafka listener and tests
    pub fn ticket(&self) -> Ticket {
        match self {
            Completion::Join(t, _) | Completion::Sync(t, _) => *t,
        }
    }
}

/// What the shell must do after a verb: answer completed joins and syncs,
/// append records to the offsets log.
#[derive(Default)]
pub struct Ready {
    pub completions: Vec<Completion>,
    pub records: Vec<Record>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    pub member_id: String,
    pub client_id: String,
    pub client_host: String,
    pub topics: Vec<String>,
    /// Metadata for the selected protocol (empty before the first one).
    pub metadata: Vec<u8>,
    pub assignment: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    pub group: String,
    pub state: GroupState,
    pub protocol_type: String,
    pub protocol_name: String,
    pub generation: i32,
    pub leader_id: String,
    pub members: Vec<MemberDescription>,
    /// (topic, partition, committed), ascending.
    pub offsets: Vec<(String, u32, Committed)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupListing {
    pub group: String,
    pub state: GroupState,
    pub protocol_type: String,
    pub members: usize,
}

#[derive(Debug, Clone)]
struct Member {
    client_id: String,
    client_host: String,
    protocols: Vec<(String, Vec<u8>)>,
    topics: Vec<String>,
    session_timeout_ms: u32,
    rebalance_timeout_ms: u32,
    session_deadline_ms: u64,
    join: Option<Ticket>,
    sync: Option<Ticket>,
    assignment: Vec<u8>,
}

#[derive(Debug)]
struct Group {
    state: GroupState,
    generation: i32,
    protocol_type: String,
    protocol: Option<String>,
    leader: Option<String>,
    coordinator_assigns: bool,
    members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, not joined yet.
    pending_ids: BTreeSet<String>,
    /// End of the join phase (PreparingRebalance) or of the sync phase
    /// (CompletingRebalance).
    deadline_ms: u64,
    /// The first join phase of an empty group waits out the initial delay.
    initial_delay: bool,
    /// When the group entered its state (or, while Empty, last committed).
    state_since_ms: u64,
    offsets: BTreeMap<(String, u32), Committed>,
}

impl Group {
    fn new(now_ms: u64) -> Group {
        Group {
            state: GroupState::Empty,
            generation: 0,
            protocol_type: String::new(),
            protocol: None,
            leader: None,
            coordinator_assigns: false,
            members: BTreeMap::new(),
            pending_ids: BTreeSet::new(),
            deadline_ms: 0,
            initial_delay: false,
            state_since_ms: now_ms,
            offsets: BTreeMap::new(),
        }
    }

    fn rebalance_timeout_ms(&self) -> u64 {
        self.members
            .values()
            .map(|m| u64::from(m.rebalance_timeout_ms))
            .max()
            .unwrap_or(0)
    }

    /// Protocols every member supports, in the first member's order.
    fn candidates(&self) -> Vec<String> {
        let mut it = self.members.values();
        let Some(first) = it.next() else {
            return Vec::new();
        };
        let mut c: Vec<String> = first.protocols.iter().map(|(n, _)| n.clone()).collect();
        for m in it {
            c.retain(|n| m.protocols.iter().any(|(p, _)| p == n));
        }
        c
    }

    /// Kafka's vote: each member votes for its most preferred candidate.
    fn select_protocol(&self) -> Option<String> {
        let candidates = self.candidates();
        let mut votes: Vec<usize> = vec![0; candidates.len()];
        for m in self.members.values() {
            if let Some((name, _)) = m.protocols.iter().find(|(p, _)| candidates.contains(p)) {
                let i = candidates
                    .iter()
                    .position(|c| c == name)
                    .expect("candidate");
                votes[i] += 1;
            }
        }
        let best = (0..candidates.len()).max_by_key(|&i| (votes[i], usize::MAX - i))?;
        Some(candidates[best].clone())
    }

    fn metadata_for(&self, m: &Member) -> Vec<u8> {
        let Some(p) = &self.protocol else {
            return Vec::new();
        };
        m.protocols
            .iter()
            .find(|(n, _)| n == p)
            .map(|(_, md)| md.clone())
            .unwrap_or_default()
    }

    fn join_result(&self, member_id: &str) -> JoinResult {
        let leader = self.leader.clone().unwrap_or_default();
        let members = if leader == member_id {
            self.members
                .iter()
                .map(|(id, m)| JoinedMember {
                    member_id: id.clone(),
                    metadata: self.metadata_for(m),
                    topics: m.topics.clone(),
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinResult {
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol.clone().unwrap_or_default(),
            leader_id: leader,
            member_id: member_id.to_owned(),
            members,
        }
    }

    fn sync_result(&self, member_id: &str) -> SyncResult {
        SyncResult {
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol.clone().unwrap_or_default(),
            assignment: self
                .members
                .get(member_id)
                .map(|m| m.assignment.clone())
                .unwrap_or_default(),
        }
    }
}

pub struct Coordinator {
    config: CoordinatorConfig,
    groups: BTreeMap<String, Group>,
    /// topic -> partition count, as the shell last told.
    topics: BTreeMap<String, u32>,
    next_ticket: u64,
    next_member: u64,
    ready: Ready,
}

fn unknown_member(group: &str, member_id: &str) -> GroupError {
    GroupError::UnknownMemberId {
        group: group.to_owned(),
        member_id: member_id.to_owned(),
    }
}

fn rebalancing(group: &str) -> GroupError {
    GroupError::RebalanceInProgress {
        group: group.to_owned(),
    }
}

pub fn validate_group_id(group: &str) -> Result<(), GroupError> {
    if group.is_empty() || group.len() > GROUP_NAME_BYTES_MAX {
        return Err(GroupError::InvalidGroupId {
            group: group.to_owned(),
            reason: format!("must be 1 to {GROUP_NAME_BYTES_MAX} bytes"),
        });
    }
    Ok(())
}

impl Coordinator {
    pub fn new(config: CoordinatorConfig) -> Coordinator {
        Coordinator {
            config,
            groups: BTreeMap::new(),
            topics: BTreeMap::new(),
            next_ticket: 1,
            next_member: 1,
            ready: Ready::default(),
        }
    }

    #[allow(dead_code)] // API for the Kafka listener and tests
    pub fn config(&self) -> &CoordinatorConfig {
        &self.config
    }

    /// Completed joins/syncs and records to append since the last call.
    pub fn take_ready(&mut self) -> Ready {
        std::mem::take(&mut self.ready)
    }

    fn ticket(&mut self) -> Ticket {
        let t = Ticket(self.next_ticket);
        self.next_ticket += 1;
        t
    }

    #[allow(dead_code)] // API for the Kafka listener and tests
    pub fn group_state(&self, group: &str) -> GroupState {
        self.groups
            .get(group)
            .map(|g| g.state)
            .unwrap_or(GroupState::Dead)
    }

    #[allow(dead_code)] // API for the Kafka listener and tests
    pub fn generation(&self, group: &str) -> Option<i32> {
        self.groups.get(group).map(|g| g.generation)
    }

    // ------------------------------------------------------------ join

    pub fn join(&mut self, now_ms: u64, a: JoinArgs) -> Result<Outcome<JoinResult>, GroupError> {
        let r = self.join_inner(now_ms, a.clone());
        self.check(&a.group);
        r
    }

    fn join_inner(&mut self, now: u64, a: JoinArgs) -> Result<Outcome<JoinResult>, GroupError> {
        let name = a.group.clone();
        validate_group_id(&name)?;
        let cfg = &self.config;
        if a.session_timeout_ms < cfg.session_timeout_min_ms
            || a.session_timeout_ms > cfg.session_timeout_max_ms
        {
            return Err(GroupError::InvalidSessionTimeout {
                group: name,
                session_timeout_ms: a.session_timeout_ms,
                min_ms: cfg.session_timeout_min_ms,
                max_ms: cfg.session_timeout_max_ms,
            });
        }
        let inconsistent = |reason: &str| GroupError::InconsistentGroupProtocol {
            group: name.clone(),
            reason: reason.to_owned(),
        };
        if a.protocol_type.is_empty() || a.protocols.is_empty() {
            return Err(inconsistent("a join needs a protocol type and protocols"));
        }
        if a.coordinator_assigns
            && a.protocols
                .iter()
                .any(|(p, _)| Assignor::from_name(p).is_none())
        {
            return Err(inconsistent(
                "coordinator assignment knows the protocols \"range\" and \"roundrobin\"",
            ));
        }
        if !self.groups.contains_key(&name) {
            if !a.member_id.is_empty() {
                return Err(unknown_member(&name, &a.member_id));
            }
            self.groups.insert(name.clone(), Group::new(now));
        }
        let max = self.config.members_per_group_max;
        let nonce = self.config.member_id_nonce;
        let g = self.groups.get_mut(&name).expect("group");
        if !g.members.is_empty() {
            if g.protocol_type != a.protocol_type {
                return Err(inconsistent(&format!(
                    "protocol type {:?} differs from the group's {:?}",
                    a.protocol_type, g.protocol_type
                )));
            }
            if g.coordinator_assigns != a.coordinator_assigns {
                return Err(inconsistent(
                    "members disagree on who assigns (coordinator or leader)",
                ));
            }
            let candidates = g.candidates();
            if !a.protocols.iter().any(|(p, _)| candidates.contains(p)) {
                return Err(inconsistent("no protocol in common with the group"));
            }
        }
        let known = g.members.contains_key(&a.member_id);
        if !known {
            // A new member: no id yet, or one handed out by MEMBER_ID_REQUIRED.
            if !a.member_id.is_empty() && !g.pending_ids.contains(&a.member_id) {
                return Err(unknown_member(&name, &a.member_id));
            }
            if g.members.len() >= max {
                return Err(GroupError::GroupMaxSizeReached { group: name, max });
            }
            let id = if a.member_id.is_empty() {
                let seq = self.next_member;
                self.next_member += 1;
                let client = if a.client_id.is_empty() {
                    "member"
                } else {
                    a.client_id.as_str()
                };
                let client: String = client.chars().take(64).collect();
                format!("{client}-{nonce:x}-{seq}")
            } else {
                a.member_id.clone()
            };
            if a.member_id.is_empty() && a.require_known_member_id {
                g.pending_ids.insert(id.clone());
                return Err(GroupError::MemberIdRequired {
                    group: name,
                    member_id: id,
                });
            }
            g.pending_ids.remove(&id);
            if g.members.is_empty() {
                g.protocol_type = a.protocol_type.clone();
                g.coordinator_assigns = a.coordinator_assigns;
            }
            let ticket = Ticket(self.next_ticket);
            self.next_ticket += 1;
            g.members.insert(
                id,
                Member {
                    client_id: a.client_id,
                    client_host: a.client_host,
                    protocols: a.protocols,
                    topics: a.topics,
                    session_timeout_ms: a.session_timeout_ms,
                    rebalance_timeout_ms: if a.rebalance_timeout_ms == 0 {
                        a.session_timeout_ms
                    } else {
                        a.rebalance_timeout_ms
                    },
                    session_deadline_ms: now + u64::from(a.session_timeout_ms),
                    join: Some(ticket),
                    sync: None,
                    assignment: Vec::new(),
                },
            );
            self.members_changed(&name, now);
            return Ok(Outcome::Pending(ticket));
        }
        // A known member rejoins.
        let state = g.state;
        let member = g.members.get(&a.member_id).expect("known");
        let unchanged = member.protocols == a.protocols && member.topics == a.topics;
        let is_leader = g.leader.as_deref() == Some(a.member_id.as_str());
        match state {
            GroupState::CompletingRebalance if unchanged => {
                return Ok(Outcome::Done(g.join_result(&a.member_id)));
            }
            GroupState::Stable if unchanged && !is_leader => {
                let m = g.members.get_mut(&a.member_id).expect("known");
                m.session_deadline_ms = now + u64::from(m.session_timeout_ms);
                return Ok(Outcome::Done(g.join_result(&a.member_id)));
            }
            GroupState::Empty | GroupState::Dead => {
                return Err(unknown_member(&name, &a.member_id));
            }
            _ => {}
        }
        let ticket = self.ticket();
        let g = self.groups.get_mut(&name).expect("group");
        let m = g.members.get_mut(&a.member_id).expect("known");
        m.protocols = a.protocols;
        m.topics = a.topics;
        m.client_id = a.client_id;
        m.client_host = a.client_host;
        m.session_timeout_ms = a.session_timeout_ms;
        m.rebalance_timeout_ms = if a.rebalance_timeout_ms == 0 {
            a.session_timeout_ms
        } else {
            a.rebalance_timeout_ms
        };
        m.session_deadline_ms = now + u64::from(a.session_timeout_ms);
        if let Some(old) = m.join.replace(ticket) {
            self.ready
                .completions
                .push(Completion::Join(old, Err(rebalancing(&name))));
        }
        if state == GroupState::PreparingRebalance {
            self.maybe_complete_join(&name, now);
        } else {
            self.prepare_rebalance(&name, now);
        }
        Ok(Outcome::Pending(ticket))
    }

    /// After members were added or removed.
    fn members_changed(&mut self, name: &str, now: u64) {
        let Some(g) = self.groups.get(name) else {
            return;
        };
        match g.state {
            GroupState::PreparingRebalance => self.maybe_complete_join(name, now),
            GroupState::Dead => {}
            _ => self.prepare_rebalance(name, now),
        }
    }

    fn prepare_rebalance(&mut self, name: &str, now: u64) {
        let g = self.groups.get_mut(name).expect("group");
        let was = g.state;
        if was == GroupState::CompletingRebalance {
            for m in g.members.values_mut() {
                if let Some(t) = m.sync.take() {
                    self.ready
                        .completions
                        .push(Completion::Sync(t, Err(rebalancing(name))));
                }
            }
        }
        for m in g.members.values_mut() {
            m.assignment.clear();
        }
        g.state = GroupState::PreparingRebalance;
        g.state_since_ms = now;
        g.initial_delay = was == GroupState::Empty && self.config.initial_rebalance_delay_ms > 0;
        g.deadline_ms = if g.initial_delay {
            now + self.config.initial_rebalance_delay_ms
        } else {
            now + g.rebalance_timeout_ms()
        };
        self.maybe_complete_join(name, now);
    }

    fn maybe_complete_join(&mut self, name: &str, now: u64) {
        let g = self.groups.get(name).expect("group");
        if g.state != GroupState::PreparingRebalance || g.initial_delay {
            return;
        }
        if g.members.values().all(|m| m.join.is_some()) {
            self.complete_join(name, now);
        }
    }

    /// Ends the join phase: members that did not rejoin are gone; the
    /// generation moves on; joins are answered.
    fn complete_join(&mut self, name: &str, now: u64) {
        let g = self.groups.get_mut(name).expect("group");
        debug_assert!(g.members.values().all(|m| m.join.is_some()));
        g.generation += 1;
        g.state_since_ms = now;
        self.ready.records.push(Record::Group {
            group: name.to_owned(),
            value: Some(GroupMeta {
                generation: g.generation,
                protocol_type: g.protocol_type.clone(),
            }),
        });
        if g.members.is_empty() {
            g.state = GroupState::Empty;
            g.protocol = None;
            g.leader = None;
            return;
        }
        g.protocol = g.select_protocol();
        debug_assert!(g.protocol.is_some(), "members share a protocol");
        if !g.leader.as_ref().is_some_and(|l| g.members.contains_key(l)) {
            g.leader = g.members.keys().next().cloned();
        }
        g.state = GroupState::CompletingRebalance;
        g.deadline_ms = now + g.rebalance_timeout_ms();
        if g.coordinator_assigns {
            let assignor = g
                .protocol
                .as_deref()
                .and_then(Assignor::from_name)
                .unwrap_or(Assignor::Range);
            let subs: BTreeMap<String, Vec<String>> = g
                .members
                .iter()
                .map(|(id, m)| (id.clone(), m.topics.clone()))
                .collect();
            let topics = &self.topics;
            let out = assignor::assign(assignor, &subs, |t| topics.get(t).copied());
            for (id, a) in out {
                g.members.get_mut(&id).expect("member").assignment =
                    assignor::encode_assignment(&a);
            }
            g.state = GroupState::Stable;
        }
        let ids: Vec<String> = g.members.keys().cloned().collect();
        for id in ids {
            let result = g.join_result(&id);
            let m = g.members.get_mut(&id).expect("member");
            m.session_deadline_ms = now + u64::from(m.session_timeout_ms);
            let t = m.join.take().expect("joined");
            self.ready.completions.push(Completion::Join(t, Ok(result)));
        }
    }

    fn remove_member(&mut self, name: &str, id: &str) {
        let g = self.groups.get_mut(name).expect("group");
        let Some(m) = g.members.remove(id) else {
            return;
        };
        if let Some(t) = m.join {
            self.ready
                .completions
                .push(Completion::Join(t, Err(unknown_member(name, id))));
        }
        if let Some(t) = m.sync {
            self.ready
                .completions
                .push(Completion::Sync(t, Err(unknown_member(name, id))));
        }
        if g.leader.as_deref() == Some(id) {
            g.leader = None;
        }
    }

    // ------------------------------------------------------------ sync

    pub fn sync(&mut self, now_ms: u64, a: SyncArgs) -> Result<Outcome<SyncResult>, GroupError> {
        let name = a.group.clone();
        let r = self.sync_inner(now_ms, a);
        self.check(&name);
        r
    }

    fn sync_inner(&mut self, now: u64, a: SyncArgs) -> Result<Outcome<SyncResult>, GroupError> {
        let name = a.group.as_str();
        let Some(g) = self.groups.get(name) else {
            return Err(unknown_member(name, &a.member_id));
        };
        if !g.members.contains_key(&a.member_id) {
            return Err(unknown_member(name, &a.member_id));
        }
        if a.generation != g.generation {
            return Err(GroupError::IllegalGeneration {
                group: name.to_owned(),
                generation: a.generation,
                current: g.generation,
            });
        }
        match g.state {
            GroupState::PreparingRebalance => Err(rebalancing(name)),
            GroupState::Empty | GroupState::Dead => Err(unknown_member(name, &a.member_id)),
            GroupState::Stable => {
                let g = self.groups.get_mut(name).expect("group");
                let m = g.members.get_mut(&a.member_id).expect("member");
                m.session_deadline_ms = now + u64::from(m.session_timeout_ms);
                Ok(Outcome::Done(g.sync_result(&a.member_id)))
            }
            GroupState::CompletingRebalance => {
                let ticket = self.ticket();
                let g = self.groups.get_mut(name).expect("group");
                let m = g.members.get_mut(&a.member_id).expect("member");
                m.session_deadline_ms = now + u64::from(m.session_timeout_ms);
                if let Some(old) = m.sync.replace(ticket) {
                    self.ready
                        .completions
                        .push(Completion::Sync(old, Err(rebalancing(name))));
                }
                if g.leader.as_deref() == Some(a.member_id.as_str()) {
                    for (id, bytes) in a.assignments {
                        if let Some(m) = g.members.get_mut(&id) {
                            m.assignment = bytes;
                        }
                    }
                    g.state = GroupState::Stable;
                    g.state_since_ms = now;
                    let ids: Vec<String> = g.members.keys().cloned().collect();
                    for id in ids {
                        let result = g.sync_result(&id);
                        if let Some(t) = g.members.get_mut(&id).expect("member").sync.take() {
                            self.ready.completions.push(Completion::Sync(t, Ok(result)));
                        }
                    }
                }
                Ok(Outcome::Pending(ticket))
            }
        }
    }

    // ------------------------------------------------------- heartbeat

    pub fn heartbeat(
        &mut self,
        now_ms: u64,
        group: &str,
        member_id: &str,
        generation: i32,
    ) -> Result<(), GroupError> {
        let Some(g) = self.groups.get_mut(group) else {
            return Err(unknown_member(group, member_id));
        };
        let Some(m) = g.members.get_mut(member_id) else {
            return Err(unknown_member(group, member_id));
        };
        if g.state == GroupState::PreparingRebalance {
            m.session_deadline_ms = now_ms + u64::from(m.session_timeout_ms);
            return Err(rebalancing(group));
        }
        if generation != g.generation {
            return Err(GroupError::IllegalGeneration {
                group: group.to_owned(),
                generation,
                current: g.generation,
            });
        }
        m.session_deadline_ms = now_ms + u64::from(m.session_timeout_ms);
        Ok(())
    }

    // ----------------------------------------------------------- leave

    /// Removes members; the outer error is for the group, the inner ones
    /// per member (in order).
    pub fn leave(
        &mut self,
        now_ms: u64,
        group: &str,
        member_ids: &[String],
    ) -> Result<Vec<Result<(), GroupError>>, GroupError> {
        if !self.groups.contains_key(group) {
            return Err(GroupError::UnknownMemberId {
                group: group.to_owned(),
                member_id: member_ids.first().cloned().unwrap_or_default(),
            });
        }
        let mut out = Vec::with_capacity(member_ids.len());
        let mut removed = false;
        for id in member_ids {
            if self.groups[group].members.contains_key(id) {
                self.remove_member(group, id);
                removed = true;
                out.push(Ok(()));
            } else {
                out.push(Err(unknown_member(group, id)));
            }
        }
        if removed {
            self.members_changed(group, now_ms);
        }
        self.check(group);
        Ok(out)
    }

    // ---------------------------------------------------------- offsets

    /// Validates a commit. The records of the accepted partitions must be
    /// appended to the offsets log and then given to [`apply`](Self::apply);
    /// a fetch sees them only then. Per-partition results are in request
    /// order.
    pub fn commit(
        &mut self,
        now_ms: u64,
        a: &CommitArgs,
    ) -> Result<Vec<Result<Record, GroupError>>, GroupError> {
        let name = a.group.as_str();
        validate_group_id(name)?;
        let simple = a.member_id.is_empty();
        match self.groups.get_mut(name) {
            None if simple => {
                self.groups.insert(name.to_owned(), Group::new(now_ms));
            }
            None => {
                return Err(GroupError::IllegalGeneration {
                    group: name.to_owned(),
                    generation: a.generation,
                    current: -1,
                })
            }
            Some(g) => {
                if simple {
                    if g.state != GroupState::Empty {
                        return Err(unknown_member(name, ""));
                    }
                } else {
                    if g.state == GroupState::CompletingRebalance {
                        return Err(rebalancing(name));
                    }
                    let Some(m) = g.members.get_mut(&a.member_id) else {
                        return Err(unknown_member(name, &a.member_id));
                    };
                    if a.generation != g.generation {
                        return Err(GroupError::IllegalGeneration {
                            group: name.to_owned(),
                            generation: a.generation,
                            current: g.generation,
                        });
                    }
                    m.session_deadline_ms = now_ms + u64::from(m.session_timeout_ms);
                }
            }
        }
        Ok(self.offset_records(now_ms, name, &a.offsets))
    }

    fn offset_records(
        &mut self,
        now_ms: u64,
        name: &str,
        offsets: &[OffsetCommit],
    ) -> Vec<Result<Record, GroupError>> {
        let g = self.groups.get_mut(name).expect("group");
        if g.state == GroupState::Empty {
            // Retention counts from the last commit of an empty group.
            g.state_since_ms = g.state_since_ms.max(now_ms);
        }
        offsets
            .iter()
            .map(|o| {
                match self.topics.get(&o.topic) {
                    None => {
                        return Err(GroupError::UnknownTopic {
                            group: name.to_owned(),
                            topic: o.topic.clone(),
                        })
                    }
                    Some(&n) if o.partition >= n => {
                        return Err(GroupError::UnknownPartition {
                            group: name.to_owned(),
                            topic: o.topic.clone(),
                            partition: o.partition,
                        })
                    }
                    Some(_) => {}
                }
                if o.metadata.len() > OFFSET_METADATA_BYTES_MAX {
                    return Err(GroupError::OffsetMetadataTooLarge {
                        group: name.to_owned(),
                        len: o.metadata.len(),
                        max: OFFSET_METADATA_BYTES_MAX,
                    });
                }
                Ok(Record::Offset {
                    group: name.to_owned(),
                    topic: o.topic.clone(),
                    partition: o.partition,
                    value: Some(Committed {
                        offset: o.offset,
                        metadata: o.metadata.clone(),
                        commit_time_ms: now_ms as i64,
                    }),
                })
            })
            .collect()
    }

    /// Offsets of a committed transaction (Kafka's transactional offset
    /// commit reaching the group at the commit marker): no member or
    /// generation check (the transaction coordinator fenced the producer);
    /// a group not known yet is created Empty.
    pub fn txn_offsets(
        &mut self,
        now_ms: u64,
        group: &str,
        offsets: &[OffsetCommit],
    ) -> Result<Vec<Result<Record, GroupError>>, GroupError> {
        validate_group_id(group)?;
        if !self.groups.contains_key(group) {
            self.groups.insert(group.to_owned(), Group::new(now_ms));
        }
        Ok(self.offset_records(now_ms, group, offsets))
    }

    /// Offsets set by an administrator: only while the group is Empty.
    pub fn reset_offsets(
        &mut self,
        now_ms: u64,
        group: &str,
        offsets: &[OffsetCommit],
    ) -> Result<Vec<Result<Record, GroupError>>, GroupError> {
        validate_group_id(group)?;
        match self.groups.get(group) {
            None => {
                self.groups.insert(group.to_owned(), Group::new(now_ms));
            }
            Some(g) if g.state != GroupState::Empty => {
                return Err(GroupError::NonEmptyGroup {
                    group: group.to_owned(),
                })
            }
            Some(_) => {}
        }
        Ok(self.offset_records(now_ms, group, offsets))
    }

    /// Folds durable records into the state: after an append, and at
    /// start-up for every record of the log in order (`now_ms` dates groups
    /// that only have a generation record).
    pub fn apply(&mut self, now_ms: u64, records: &[Record]) {
        for r in records {
            match r {
                Record::Offset {
                    group,
                    topic,
                    partition,
                    value: Some(c),
                } => {
                    let g = self
                        .groups
                        .entry(group.clone())
                        .or_insert_with(|| Group::new(c.commit_time_ms.max(0) as u64));
                    if g.state == GroupState::Empty {
                        g.state_since_ms = g.state_since_ms.max(c.commit_time_ms.max(0) as u64);
                    }
                    g.offsets.insert((topic.clone(), *partition), c.clone());
                }
                Record::Offset {
                    group,
                    topic,
                    partition,
                    value: None,
                } => {
                    if let Some(g) = self.groups.get_mut(group) {
                        g.offsets.remove(&(topic.clone(), *partition));
                    }
                }
                Record::Group {
                    group,
                    value: Some(m),
                } => {
                    let g = self
                        .groups
                        .entry(group.clone())
                        .or_insert_with(|| Group::new(now_ms));
                    g.generation = g.generation.max(m.generation);
                    if g.members.is_empty() {
                        g.protocol_type = m.protocol_type.clone();
                    }
                }
                Record::Group { group, value: None } => {
                    if self
                        .groups
                        .get(group)
                        .is_some_and(|g| g.state == GroupState::Empty && g.offsets.is_empty())
                    {
                        self.groups.remove(group);
                    }
                }
            }
        }
    }

    /// Committed offsets; `None` asks for every committed partition.
    pub fn fetch_offsets(
        &self,
        group: &str,
        partitions: Option<&[(String, u32)]>,
    ) -> Vec<(String, u32, Option<Committed>)> {
        let g = self.groups.get(group);
        match partitions {
            None => g
                .map(|g| {
                    g.offsets
                        .iter()
                        .map(|((t, p), c)| (t.clone(), *p, Some(c.clone())))
                        .collect()
                })
                .unwrap_or_default(),
            Some(ps) => ps
                .iter()
                .map(|(t, p)| {
                    let c = g.and_then(|g| g.offsets.get(&(t.clone(), *p)).cloned());
                    (t.clone(), *p, c)
                })
                .collect(),
        }
    }

    // ------------------------------------------------------------ timers

    /// Expires sessions, ends join and sync phases that ran out of time,
    /// and removes groups empty for longer than the offsets retention.
    pub fn tick(&mut self, now_ms: u64) {
        let names: Vec<String> = self.groups.keys().cloned().collect();
        for name in names {
            let g = &self.groups[&name];
            // A member waiting in a join or sync is kept alive (Kafka).
            let expired: Vec<String> = g
                .members
                .iter()
                .filter(|(_, m)| {
                    m.join.is_none() && m.sync.is_none() && m.session_deadline_ms <= now_ms
                })
                .map(|(id, _)| id.clone())
                .collect();
            if !expired.is_empty() {
                for id in &expired {
                    self.remove_member(&name, id);
                }
                self.members_changed(&name, now_ms);
            }
            let g = self.groups.get_mut(&name).expect("group");
            if g.deadline_ms <= now_ms {
                match g.state {
                    GroupState::PreparingRebalance if g.initial_delay => {
                        g.initial_delay = false;
                        g.deadline_ms = now_ms + g.rebalance_timeout_ms();
                        self.maybe_complete_join(&name, now_ms);
                    }
                    GroupState::PreparingRebalance => {
                        let late: Vec<String> = g
                            .members
                            .iter()
                            .filter(|(_, m)| m.join.is_none())
                            .map(|(id, _)| id.clone())
                            .collect();
                        for id in &late {
                            self.remove_member(&name, id);
                        }
                        self.complete_join(&name, now_ms);
                    }
                    GroupState::CompletingRebalance => {
                        let late: Vec<String> = g
                            .members
                            .iter()
                            .filter(|(_, m)| m.sync.is_none())
                            .map(|(id, _)| id.clone())
                            .collect();
                        for id in &late {
                            self.remove_member(&name, id);
                        }
                        self.prepare_rebalance(&name, now_ms);
                    }
                    _ => {}
                }
            }
            let g = &self.groups[&name];
            if g.state == GroupState::Empty
                && now_ms
                    >= g.state_since_ms
                        .saturating_add(self.config.offsets_retention_ms)
            {
                self.expire_group(&name);
            }
            self.check(&name);
        }
    }

    fn expire_group(&mut self, name: &str) {
        let g = self.groups.remove(name).expect("group");
        for (topic, partition) in g.offsets.into_keys() {
            self.ready.records.push(Record::Offset {
                group: name.to_owned(),
                topic,
                partition,
                value: None,
            });
        }
        self.ready.records.push(Record::Group {
            group: name.to_owned(),
            value: None,
        });
    }

    /// The topics that exist now (topic -> partition count). Offsets of
    /// deleted topics (and partitions) are removed with tombstones; groups
    /// the coordinator assigns rebalance when a subscribed topic changes.
    pub fn set_topics(&mut self, now_ms: u64, topics: BTreeMap<String, u32>) {
        let old = std::mem::replace(&mut self.topics, topics);
        let names: Vec<String> = self.groups.keys().cloned().collect();
        for name in names {
            let g = self.groups.get_mut(&name).expect("group");
            let gone: Vec<(String, u32)> = g
                .offsets
                .keys()
                .filter(|(t, p)| self.topics.get(t).is_none_or(|&n| *p >= n))
                .cloned()
                .collect();
            for (topic, partition) in gone {
                g.offsets.remove(&(topic.clone(), partition));
                self.ready.records.push(Record::Offset {
                    group: name.clone(),
                    topic,
                    partition,
                    value: None,
                });
            }
            let changed = g.coordinator_assigns
                && matches!(
                    g.state,
                    GroupState::Stable | GroupState::CompletingRebalance
                )
                && g.members
                    .values()
                    .flat_map(|m| m.topics.iter())
                    .any(|t| old.get(t) != self.topics.get(t));
            if changed {
                self.prepare_rebalance(&name, now_ms);
            }
            self.check(&name);
        }
    }

    #[allow(dead_code)] // API for the Kafka listener and tests
    pub fn topics(&self) -> &BTreeMap<String, u32> {
        &self.topics
    }

    // ---------------------------------------------------------- describe

    pub fn describe(&self, group: &str) -> GroupDescription {
        let Some(g) = self.groups.get(group) else {
            return GroupDescription {
                group: group.to_owned(),
                state: GroupState::Dead,
                protocol_type: String::new(),
                protocol_name: String::new(),
                generation: -1,
                leader_id: String::new(),
                members: Vec::new(),
                offsets: Vec::new(),
            };
        };
        GroupDescription {
            group: group.to_owned(),
            state: g.state,
            protocol_type: g.protocol_type.clone(),
            protocol_name: g.protocol.clone().unwrap_or_default(),
            generation: g.generation,
            leader_id: g.leader.clone().unwrap_or_default(),
            members: g
                .members
                .iter()
                .map(|(id, m)| MemberDescription {
                    member_id: id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    topics: m.topics.clone(),
                    metadata: g.metadata_for(m),
                    assignment: m.assignment.clone(),
                })
                .collect(),
            offsets: g
                .offsets
                .iter()
                .map(|((t, p), c)| (t.clone(), *p, c.clone()))
                .collect(),
        }
    }

    pub fn list(&self) -> Vec<GroupListing> {
        self.groups
            .iter()
            .map(|(name, g)| GroupListing {
                group: name.clone(),
                state: g.state,
                protocol_type: g.protocol_type.clone(),
                members: g.members.len(),
            })
            .collect()
    }

    /// Every live record (offsets and generations): what a compacted log
    /// holds.
    pub fn snapshot(&self) -> Vec<Record> {
        let mut out = Vec::new();
        for (name, g) in &self.groups {
            out.push(Record::Group {
                group: name.clone(),
                value: Some(GroupMeta {
                    generation: g.generation,
                    protocol_type: g.protocol_type.clone(),
                }),
            });
            for ((t, p), c) in &g.offsets {
                out.push(Record::Offset {
                    group: name.clone(),
                    topic: t.clone(),
                    partition: *p,
                    value: Some(c.clone()),
                });
            }
        }
        out
    }

    fn check(&self, name: &str) {
        if !cfg!(debug_assertions) {
            return;
        }
        let Some(g) = self.groups.get(name) else {
            return;
        };
        match g.state {
            GroupState::Empty => assert!(g.members.is_empty(), "{name}: Empty with members"),
            GroupState::PreparingRebalance => {}
            GroupState::CompletingRebalance | GroupState::Stable => {
                assert!(
                    !g.members.is_empty(),
                    "{name}: {:?} without members",
                    g.state
                );
                let leader = g.leader.as_ref().expect("leader");
                assert!(
                    g.members.contains_key(leader),
                    "{name}: leader not a member"
                );
                assert!(g.protocol.is_some(), "{name}: no protocol");
            }
            GroupState::Dead => panic!("{name}: a Dead group is kept"),
        }
        for m in g.members.values() {
            if m.join.is_some() {
                assert_eq!(
                    g.state,
                    GroupState::PreparingRebalance,
                    "{name}: join ticket"
                );
            }
            if m.sync.is_some() {
                assert_eq!(
                    g.state,
                    GroupState::CompletingRebalance,
                    "{name}: sync ticket"
                );
            }
        }
    }
}
