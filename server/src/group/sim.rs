//! Seeded simulation of the coordinator core: thousands of random sequences
//! of joins, syncs, heartbeats, commits, leaves, crashes (members that fall
//! silent and later come back as zombies) and clock jumps, against simple
//! consumers that follow the protocol. Checked after every step:
//! - at most one owner per partition per generation;
//! - generations never decrease;
//! - a commit or heartbeat is accepted only from a member of the latest
//!   generation; a zombie whose session expired is always rejected;
//!
//! and at the end of each run, once the survivors settle: the group is
//! Stable and every partition is owned by exactly one live member.
//! A failure names its seed; `GROUP_SIM_SEED=N` replays one.

use super::assignor::{self, Assignor};
use super::coordinator::*;
use super::error::GroupError;
use std::collections::{BTreeMap, BTreeSet, HashMap};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Debug, Clone, PartialEq)]
enum St {
    Idle,
    Joining,
    Joined {
        leader: bool,
        members: Vec<JoinedMember>,
        protocol: String,
    },
    Syncing,
    Stable,
}

#[derive(Debug, Clone)]
struct M {
    id: String,
    st: St,
    generation: i32,
    alive: bool,
    topics: Vec<String>,
    assignment: BTreeSet<(String, u32)>,
    /// Last time the coordinator accepted something from this member.
    contact_ms: u64,
    session_ms: u32,
}

const GROUP: &str = "g";

struct Sim {
    rng: Rng,
    now: u64,
    c: Coordinator,
    ms: Vec<M>,
    tickets: HashMap<Ticket, usize>,
    coordinator_assigns: bool,
    topics: BTreeMap<String, u32>,
    /// generation -> (topic, partition) -> owner.
    owners: BTreeMap<i32, BTreeMap<(String, u32), String>>,
    max_generation: i32,
    /// Members of the latest completed join phase (from the leader's view).
    latest_members: BTreeSet<String>,
    last_seen_generation: i32,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng(seed);
        let coordinator_assigns = rng.chance(50);
        let initial = if rng.chance(50) { 0 } else { 50 };
        let c = Coordinator::new(CoordinatorConfig {
            session_timeout_min_ms: 10,
            session_timeout_max_ms: 100_000,
            initial_rebalance_delay_ms: initial,
            offsets_retention_ms: 1_000_000_000,
            members_per_group_max: 50,
            member_id_nonce: seed,
        });
        let mut topics = BTreeMap::new();
        topics.insert("a".to_string(), 1 + rng.below(8) as u32);
        topics.insert("b".to_string(), rng.below(4) as u32);
        let mut s = Sim {
            rng,
            now: 1_000,
            c,
            ms: Vec::new(),
            tickets: HashMap::new(),
            coordinator_assigns,
            topics: topics.clone(),
            owners: BTreeMap::new(),
            max_generation: 0,
            latest_members: BTreeSet::new(),
            last_seen_generation: 0,
        };
        s.c.set_topics(s.now, topics);
        s
    }

    fn join_args(&mut self, i: usize) -> JoinArgs {
        let m = &self.ms[i];
        let sub = assignor::encode_subscription(&m.topics);
        let mut protocols = vec![
            ("range".to_string(), sub.clone()),
            ("roundrobin".to_string(), sub),
        ];
        if self.rng.chance(50) {
            protocols.reverse();
        }
        JoinArgs {
            group: GROUP.into(),
            member_id: m.id.clone(),
            client_id: format!("c{i}"),
            client_host: "h".into(),
            protocol_type: "consumer".into(),
            protocols,
            session_timeout_ms: m.session_ms,
            rebalance_timeout_ms: 2_000,
            topics: m.topics.clone(),
            coordinator_assigns: self.coordinator_assigns,
            require_known_member_id: self.rng.chance(30),
        }
    }

    fn new_member(&mut self) {
        let topics: Vec<String> = match self.rng.below(3) {
            0 => vec!["a".into()],
            1 => vec!["b".into()],
            _ => vec!["a".into(), "b".into()],
        };
        let session_ms = 300 + self.rng.below(700) as u32;
        self.ms.push(M {
            id: String::new(),
            st: St::Idle,
            generation: -1,
            alive: true,
            topics,
            assignment: BTreeSet::new(),
            contact_ms: self.now,
            session_ms,
        });
        self.join(self.ms.len() - 1);
    }

    fn join(&mut self, i: usize) {
        let args = self.join_args(i);
        match self.c.join(self.now, args) {
            Ok(Outcome::Pending(t)) => {
                self.tickets.insert(t, i);
                self.ms[i].st = St::Joining;
            }
            Ok(Outcome::Done(r)) => self.joined(i, Ok(r)),
            Err(GroupError::MemberIdRequired { member_id, .. }) => {
                self.ms[i].id = member_id;
                self.ms[i].st = St::Idle;
            }
            Err(e) => self.joined(i, Err(e)),
        }
    }

    fn joined(&mut self, i: usize, r: Result<JoinResult, GroupError>) {
        match r {
            Ok(r) => {
                assert!(
                    r.generation >= self.max_generation,
                    "join answered generation {} after {}",
                    r.generation,
                    self.max_generation
                );
                if r.generation > self.max_generation {
                    self.max_generation = r.generation;
                    self.latest_members.clear();
                }
                let leader = r.leader_id == r.member_id;
                if leader {
                    self.latest_members = r.members.iter().map(|m| m.member_id.clone()).collect();
                }
                let m = &mut self.ms[i];
                m.id = r.member_id.clone();
                m.generation = r.generation;
                m.contact_ms = self.now;
                m.assignment.clear();
                m.st = St::Joined {
                    leader,
                    members: r.members,
                    protocol: r.protocol_name,
                };
            }
            Err(GroupError::UnknownMemberId { .. }) => {
                self.ms[i].id.clear();
                self.ms[i].generation = -1;
                self.ms[i].st = St::Idle;
            }
            Err(GroupError::RebalanceInProgress { .. }) => self.ms[i].st = St::Idle,
            Err(e) => panic!("join of member {i}: unexpected {e}"),
        }
    }

    fn sync(&mut self, i: usize) {
        let St::Joined {
            leader,
            members,
            protocol,
        } = self.ms[i].st.clone()
        else {
            return;
        };
        let assignments = if leader && !self.coordinator_assigns {
            let subs: BTreeMap<String, Vec<String>> = members
                .iter()
                .map(|m| {
                    let topics = assignor::decode_subscription(&m.metadata).expect("subscription");
                    (m.member_id.clone(), topics)
                })
                .collect();
            let a = Assignor::from_name(&protocol).expect("assignor");
            let topics = &self.topics;
            assignor::assign(a, &subs, |t| topics.get(t).copied())
                .into_iter()
                .map(|(id, a)| (id, assignor::encode_assignment(&a)))
                .collect()
        } else {
            Vec::new()
        };
        let args = SyncArgs {
            group: GROUP.into(),
            member_id: self.ms[i].id.clone(),
            generation: self.ms[i].generation,
            assignments,
        };
        match self.c.sync(self.now, args) {
            Ok(Outcome::Pending(t)) => {
                self.tickets.insert(t, i);
                self.ms[i].st = St::Syncing;
            }
            Ok(Outcome::Done(r)) => self.synced(i, Ok(r)),
            Err(e) => self.synced(i, Err(e)),
        }
    }

    fn synced(&mut self, i: usize, r: Result<SyncResult, GroupError>) {
        match r {
            Ok(r) => {
                let a = assignor::decode_assignment(&r.assignment).unwrap_or_default();
                let generation = self.ms[i].generation;
                let id = self.ms[i].id.clone();
                let owners = self.owners.entry(generation).or_default();
                let mut mine = BTreeSet::new();
                for (t, ps) in a {
                    assert!(self.ms[i].topics.contains(&t), "assigned unsubscribed {t}");
                    for p in ps {
                        if let Some(other) = owners.insert((t.clone(), p), id.clone()) {
                            assert_eq!(
                                other, id,
                                "{t}/{p} owned by {other} and {id} in generation {generation}"
                            );
                        }
                        mine.insert((t.clone(), p));
                    }
                }
                let m = &mut self.ms[i];
                m.assignment = mine;
                m.contact_ms = self.now;
                m.st = St::Stable;
            }
            Err(e) => self.rejoin_after(i, e),
        }
    }

    fn rejoin_after(&mut self, i: usize, e: GroupError) {
        let m = &mut self.ms[i];
        m.assignment.clear();
        match e {
            GroupError::UnknownMemberId { .. } => {
                m.id.clear();
                m.generation = -1;
                m.st = St::Idle;
            }
            GroupError::RebalanceInProgress { .. } | GroupError::IllegalGeneration { .. } => {
                m.st = St::Idle
            }
            e => panic!("member {i}: unexpected {e}"),
        }
    }

    fn drain(&mut self) {
        let ready = self.c.take_ready();
        for comp in ready.completions {
            let i = self
                .tickets
                .remove(&comp.ticket())
                .expect("a completion for a ticket handed out, once");
            if !self.ms[i].alive {
                continue; // a crashed member never reads its answer
            }
            match comp {
                Completion::Join(_, r) => self.joined(i, r),
                Completion::Sync(_, r) => self.synced(i, r),
            }
        }
        let generation = self
            .c
            .generation(GROUP)
            .unwrap_or(self.last_seen_generation);
        assert!(
            generation >= self.last_seen_generation,
            "generation went from {} to {generation}",
            self.last_seen_generation
        );
        self.last_seen_generation = generation;
    }

    /// A live member does what a consumer does in its state.
    fn act(&mut self, i: usize) {
        match self.ms[i].st {
            St::Idle => self.join(i),
            St::Joined { .. } => self.sync(i),
            St::Joining | St::Syncing => {}
            St::Stable => {
                if self.rng.chance(30) && !self.ms[i].assignment.is_empty() {
                    self.commit(i);
                } else {
                    let m = &self.ms[i];
                    let r = self.c.heartbeat(self.now, GROUP, &m.id, m.generation);
                    self.check_accepted(i, r.is_ok());
                    match r {
                        Ok(()) => self.ms[i].contact_ms = self.now,
                        Err(e) => self.rejoin_after(i, e),
                    }
                }
            }
        }
    }

    fn commit(&mut self, i: usize) {
        let m = &self.ms[i];
        let (topic, partition) = m
            .assignment
            .iter()
            .next()
            .cloned()
            .unwrap_or(("a".into(), 0));
        let args = CommitArgs {
            group: GROUP.into(),
            member_id: m.id.clone(),
            generation: m.generation,
            offsets: vec![OffsetCommit {
                topic,
                partition,
                offset: self.now,
                metadata: String::new(),
            }],
        };
        let r = self.c.commit(self.now, &args);
        self.check_accepted(i, r.is_ok());
        match r {
            Ok(records) => {
                let records: Vec<_> = records.into_iter().map(|r| r.expect("valid")).collect();
                self.c.apply(self.now, &records);
                self.ms[i].contact_ms = self.now;
            }
            Err(e) if self.ms[i].alive => self.rejoin_after(i, e),
            Err(_) => {}
        }
    }

    /// Fencing: anything accepted comes from a member of the latest
    /// generation, and never from a member whose session ran out.
    fn check_accepted(&self, i: usize, accepted: bool) {
        let m = &self.ms[i];
        if !accepted {
            return;
        }
        assert_eq!(
            Some(m.generation),
            self.c.generation(GROUP),
            "accepted from generation {} while the group is at {:?}",
            m.generation,
            self.c.generation(GROUP)
        );
        assert_eq!(
            m.generation, self.max_generation,
            "member {i} ({}) of generation {} accepted in generation {}",
            m.id, m.generation, self.max_generation
        );
        if !self.latest_members.is_empty() {
            assert!(
                self.latest_members.contains(&m.id),
                "{} is not a member",
                m.id
            );
        }
        if !m.alive && m.st == St::Stable {
            assert!(
                self.now < m.contact_ms + u64::from(m.session_ms) + TICK_MS,
                "zombie {} accepted {} ms after its last contact (session {} ms)",
                m.id,
                self.now - m.contact_ms,
                m.session_ms
            );
        }
    }

    fn advance(&mut self, ms: u64) {
        self.now += ms;
        self.c.tick(self.now);
    }

    fn step(&mut self) {
        let live: Vec<usize> = (0..self.ms.len()).filter(|&i| self.ms[i].alive).collect();
        let zombies: Vec<usize> = (0..self.ms.len()).filter(|&i| !self.ms[i].alive).collect();
        match self.rng.below(100) {
            0..=4 if live.len() < 8 => self.new_member(),
            5..=7 if !live.is_empty() => {
                // Crash: silent from now on, but remembers its membership.
                let i = live[self.rng.below(live.len() as u64) as usize];
                self.ms[i].alive = false;
            }
            8..=9 if !live.is_empty() => {
                let i = live[self.rng.below(live.len() as u64) as usize];
                if !self.ms[i].id.is_empty() {
                    let _ = self.c.leave(self.now, GROUP, &[self.ms[i].id.clone()]);
                }
                self.ms[i].alive = false;
                self.ms[i].generation = -2; // never again
            }
            10..=14 if !zombies.is_empty() => {
                let i = zombies[self.rng.below(zombies.len() as u64) as usize];
                if self.ms[i].generation >= 0 && !self.ms[i].id.is_empty() {
                    if self.rng.chance(50) {
                        self.commit(i);
                    } else {
                        let m = &self.ms[i];
                        let r = self.c.heartbeat(self.now, GROUP, &m.id, m.generation);
                        self.check_accepted(i, r.is_ok());
                        // A heartbeat during a rebalance keeps the session.
                        if matches!(r, Ok(()) | Err(GroupError::RebalanceInProgress { .. })) {
                            self.ms[i].contact_ms = self.now;
                        }
                    }
                }
            }
            15..=39 => {
                let ms = if self.rng.chance(5) {
                    self.rng.below(3_000)
                } else {
                    self.rng.below(TICK_MS)
                };
                self.advance(ms);
            }
            _ if !live.is_empty() => {
                let i = live[self.rng.below(live.len() as u64) as usize];
                self.act(i);
            }
            _ => self.new_member(),
        }
        self.drain();
    }

    /// Survivors follow the protocol until the group is Stable with all of
    /// them synced in the current generation; then the assignment covers
    /// every partition exactly once.
    fn settle(&mut self) {
        for _ in 0..2_000 {
            let live: Vec<usize> = (0..self.ms.len()).filter(|&i| self.ms[i].alive).collect();
            for &i in &live {
                self.act(i);
                self.drain();
            }
            let generation = self.c.generation(GROUP).unwrap_or(-1);
            let settled = self.c.group_state(GROUP) == GroupState::Stable
                && live
                    .iter()
                    .all(|&i| self.ms[i].st == St::Stable && self.ms[i].generation == generation);
            if settled && !live.is_empty() {
                let d = self.c.describe(GROUP);
                let ids: BTreeSet<&str> = d.members.iter().map(|m| m.member_id.as_str()).collect();
                let live_ids: BTreeSet<&str> =
                    live.iter().map(|&i| self.ms[i].id.as_str()).collect();
                if ids != live_ids {
                    // Zombies still in the group: wait for their sessions.
                    self.advance(TICK_MS);
                    self.drain();
                    continue;
                }
                let mut owned: BTreeMap<(String, u32), usize> = BTreeMap::new();
                for &i in &live {
                    for tp in &self.ms[i].assignment {
                        assert!(owned.insert(tp.clone(), i).is_none(), "{tp:?} owned twice");
                    }
                }
                let subscribed: BTreeSet<&String> = live
                    .iter()
                    .flat_map(|&i| self.ms[i].topics.iter())
                    .collect();
                for t in subscribed {
                    for p in 0..self.topics[t] {
                        assert!(
                            owned.contains_key(&(t.clone(), p)),
                            "{t}/{p} unowned when stable"
                        );
                    }
                }
                return;
            }
            if live.is_empty() {
                self.advance(TICK_MS);
                self.drain();
                if self.c.group_state(GROUP) == GroupState::Empty {
                    return;
                }
                continue;
            }
            self.advance(TICK_MS / 4);
            self.drain();
        }
        panic!(
            "the group did not settle: state {:?}, members {:?}",
            self.c.group_state(GROUP),
            self.ms
                .iter()
                .filter(|m| m.alive)
                .map(|m| (&m.id, &m.st, m.generation))
                .collect::<Vec<_>>()
        );
    }
}

/// Largest clock step of an ordinary tick (sessions are 300..1000 ms).
const TICK_MS: u64 = 100;

fn run(seed: u64, steps: usize) {
    let mut s = Sim::new(seed);
    for _ in 0..steps {
        s.step();
    }
    s.settle();
}

#[test]
fn random_sequences_keep_the_group_invariants() {
    let seeds: Vec<u64> = match std::env::var("GROUP_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("GROUP_SIM_SEED is a number")],
        Err(_) => (0..3_000).collect(),
    };
    for seed in seeds {
        if let Err(e) = std::panic::catch_unwind(|| run(seed, 400)) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("seed {seed} failed (replay: GROUP_SIM_SEED={seed}): {msg}");
        }
    }
}

#[test]
fn fenced_member_commit_is_rejected_after_a_rebalance() {
    let mut c = Coordinator::new(CoordinatorConfig {
        session_timeout_min_ms: 10,
        initial_rebalance_delay_ms: 0,
        ..CoordinatorConfig::default()
    });
    let mut topics = BTreeMap::new();
    topics.insert("t".to_string(), 4);
    c.set_topics(0, topics);
    let args = |id: &str| JoinArgs {
        group: "g".into(),
        member_id: id.into(),
        protocol_type: "consumer".into(),
        protocols: vec![("range".into(), vec![])],
        session_timeout_ms: 1_000,
        topics: vec!["t".into()],
        coordinator_assigns: true,
        ..JoinArgs::default()
    };
    let Ok(Outcome::Pending(_)) = c.join(0, args("")) else {
        panic!("pending join")
    };
    let Completion::Join(_, Ok(first)) = c.take_ready().completions.remove(0) else {
        panic!("joined")
    };
    assert_eq!(first.generation, 1);
    let commit = |id: &str, generation| CommitArgs {
        group: "g".into(),
        member_id: id.into(),
        generation,
        offsets: vec![OffsetCommit {
            topic: "t".into(),
            partition: 0,
            offset: 5,
            metadata: String::new(),
        }],
    };
    assert!(c.commit(1, &commit(&first.member_id, 1)).is_ok());
    // A simple commit is refused while the group has members.
    assert!(matches!(
        c.commit(1, &commit("", -1)),
        Err(GroupError::UnknownMemberId { .. })
    ));
    // The first member stops heartbeating; a second joins after expiry.
    c.tick(2_000);
    assert_eq!(c.group_state("g"), GroupState::Empty);
    let Ok(Outcome::Pending(_)) = c.join(2_000, args("")) else {
        panic!("pending join")
    };
    let _ = c.take_ready();
    assert_eq!(c.generation("g"), Some(3));
    assert!(matches!(
        c.commit(2_001, &commit(&first.member_id, 1)),
        Err(GroupError::UnknownMemberId { .. })
    ));
    assert_eq!(
        GroupError::IllegalGeneration {
            group: "g".into(),
            generation: 1,
            current: 3
        }
        .kafka_code(),
        22
    );
}
