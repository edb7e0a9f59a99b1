//! [`GroupConsumer`]: a member of a consumer group. The server's group
//! coordinator shares the partitions of the subscribed topics out between
//! the members (the member asks the coordinator to compute the assignment,
//! `coordinator_assigns`, with the range or round-robin assignor); the
//! member consumes its partitions from the group's committed offsets with
//! long-poll fetches and commits its positions automatically or on demand.
//!
//! Protocol (Kafka's classic, eager rebalance; see docs/protocol.md):
//! JoinGroup (answered when the join phase ends) -> SyncGroup (the
//! assignment) -> OffsetFetch (where to start) -> fetch, with a Heartbeat
//! every `session_timeout / 3` from a background thread on its own
//! connection, so a member that is busy between polls keeps its session.
//!
//! Invariants:
//! - Records are handed out only by [`GroupConsumer::poll`], only for the
//!   partitions of the current assignment, and a poll never rejoins after
//!   its fetch: every frame a poll returns was fetched under the generation
//!   [`GroupConsumer::generation`] reports when the poll returns.
//! - When the heartbeat thread learns of a rebalance (`RebalanceInProgress`,
//!   `IllegalGeneration`, `UnknownMemberId`), the next poll gives up every
//!   partition before it rejoins (eager protocol): with auto-commit it first
//!   commits the positions of the records handed out, then calls
//!   [`RebalanceListener::on_revoked`] (or `on_lost` when the member was
//!   fenced and its commit could not be accepted anyway). The coordinator
//!   only ends the join phase when every member rejoined (or was removed),
//!   so no partition is consumed by two members of the same generation.
//! - A partition starts at the group's committed offset, else where
//!   [`AutoOffsetReset`] says; a position found out of range later is reset
//!   the same way.
//! - Commits carry the member id and generation: a fenced member's commit
//!   is refused by the server and surfaces as [`Error::Server`] with
//!   `UnknownMemberId` / `IllegalGeneration` / `RebalanceInProgress` (and
//!   the consumer rejoins on its next poll).
//! - [`GroupConsumer::close`] (or drop) stops the heartbeat thread, commits
//!   (auto-commit), revokes and sends LeaveGroup, so the group rebalances at
//!   once instead of after the session timeout.
//! - Every wait is bounded: joins by the rebalance timeout plus the request
//!   timeout, retries of a join by [`JOIN_ATTEMPTS_MAX`].

use crate::client::{Client, OffsetSpec};
use crate::connection::ConnectionConfig;
use crate::consumer::{Assignment, Consumer, ConsumerConfig, FetchedFrame};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use strom_flatbuffers::protocol::{
    ErrorCode, GroupProtocol, JoinGroupRequest, SyncGroupRequest, LIST_OFFSETS_EARLIEST,
    LIST_OFFSETS_LATEST,
};

/// The protocol type every member of a consumer group announces.
pub const PROTOCOL_TYPE: &str = "consumer";
/// JoinGroup/SyncGroup round trips one rejoin may take before it fails.
pub const JOIN_ATTEMPTS_MAX: u32 = 20;

/// Which coordinator-side assignor shares the partitions out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssignmentStrategy {
    /// Per topic, consecutive ranges of partitions (Kafka's RangeAssignor).
    Range,
    /// All partitions dealt out one by one (Kafka's RoundRobinAssignor).
    RoundRobin,
}

impl AssignmentStrategy {
    /// The protocol name that selects this assignor on the coordinator.
    pub fn protocol_name(self) -> &'static str {
        match self {
            AssignmentStrategy::Range => "range",
            AssignmentStrategy::RoundRobin => "roundrobin",
        }
    }
}

/// Where a partition starts when the group has no committed offset for it
/// (or the committed offset is out of range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoOffsetReset {
    Earliest,
    Latest,
    /// Fail the poll instead.
    None,
}

/// Group consumer settings.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    pub group: String,
    /// Shows up in DescribeGroups and in the member id.
    pub client_id: String,
    pub strategy: AssignmentStrategy,
    /// The coordinator removes a member it has not heard from this long.
    /// Must lie within the server's `--group-{min,max}-session-timeout-ms`.
    pub session_timeout_ms: u32,
    /// Longest a rebalance waits for members to rejoin; a member busy
    /// between polls for longer is removed (0: the session timeout).
    pub rebalance_timeout_ms: u32,
    /// 0: a third of the session timeout.
    pub heartbeat_interval_ms: u64,
    pub auto_offset_reset: AutoOffsetReset,
    /// Commit the positions of handed-out records every
    /// `auto_commit_interval_ms` (checked in poll), on revoke and on close.
    pub enable_auto_commit: bool,
    pub auto_commit_interval_ms: u64,
    pub consumer: ConsumerConfig,
    pub connection: ConnectionConfig,
}

impl GroupConfig {
    pub fn new(group: impl Into<String>) -> GroupConfig {
        GroupConfig {
            group: group.into(),
            client_id: "strom-consumer".to_owned(),
            strategy: AssignmentStrategy::Range,
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 60_000,
            heartbeat_interval_ms: 0,
            auto_offset_reset: AutoOffsetReset::Latest,
            enable_auto_commit: true,
            auto_commit_interval_ms: 5_000,
            consumer: ConsumerConfig::default(),
            connection: ConnectionConfig::default(),
        }
    }

    fn heartbeat_interval(&self) -> Duration {
        let ms = match self.heartbeat_interval_ms {
            0 => u64::from(self.session_timeout_ms) / 3,
            n => n,
        };
        Duration::from_millis(ms.max(10))
    }

    fn rebalance_timeout_ms(&self) -> u32 {
        match self.rebalance_timeout_ms {
            0 => self.session_timeout_ms,
            n => n,
        }
    }
}

/// Rebalance callbacks, called from [`GroupConsumer::poll`] and
/// [`GroupConsumer::close`] on the consumer's thread.
pub trait RebalanceListener: Send {
    /// Before the partitions are given up (after the auto-commit, if on);
    /// `revoked` carries the final positions.
    fn on_revoked(&mut self, revoked: &[Assignment]) {
        let _ = revoked;
    }
    /// The member was fenced (removed or of an old generation): the
    /// partitions may already belong to another member; committing them is
    /// not possible. Defaults to `on_revoked`.
    fn on_lost(&mut self, lost: &[Assignment]) {
        self.on_revoked(lost)
    }
    /// After a rebalance, with the starting positions.
    fn on_assigned(&mut self, assigned: &[Assignment], generation: i32) {
        let _ = (assigned, generation);
    }
}

/// What the main thread and the heartbeat thread share.
#[derive(Debug, Default)]
struct Membership {
    member_id: String,
    generation: i32,
    /// Bumped by every completed join: a heartbeat answer about an older
    /// epoch is ignored.
    epoch: u64,
    /// Joined and synced: the heartbeat thread heartbeats.
    active: bool,
    /// Why the member must rejoin (set by the heartbeat thread).
    rejoin: Option<ErrorCode>,
    stop: bool,
    /// The heartbeat thread's last failure that was not a group error.
    last_error: Option<String>,
    heartbeats: u64,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<Membership>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Membership> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn is_group_error(code: Option<ErrorCode>) -> bool {
    matches!(
        code,
        Some(ErrorCode::RebalanceInProgress)
            | Some(ErrorCode::IllegalGeneration)
            | Some(ErrorCode::UnknownMemberId)
    )
}

/// A consumer-group member; see the module docs.
pub struct GroupConsumer {
    config: GroupConfig,
    inner: Consumer,
    topics: Vec<String>,
    member_id: String,
    generation: i32,
    /// Set when the member must (re)join before the next fetch.
    need_join: bool,
    joined: bool,
    shared: Arc<Shared>,
    heartbeat: Option<JoinHandle<()>>,
    listener: Option<Box<dyn RebalanceListener>>,
    last_commit: Instant,
    /// (topic, partition) -> the offset last committed by this member.
    committed: HashMap<(String, u32), u64>,
    closed: bool,
}

impl std::fmt::Debug for GroupConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupConsumer")
            .field("group", &self.config.group)
            .field("member_id", &self.member_id)
            .field("generation", &self.generation)
            .field("assignments", &self.inner.assignments())
            .finish()
    }
}

impl GroupConsumer {
    /// Connects to `addr` (one or more `host:port`, comma separated; the
    /// first that answers); the member joins the group at the first poll
    /// after [`subscribe`](Self::subscribe).
    pub fn connect(addr: &str, config: GroupConfig) -> Result<GroupConsumer> {
        if config.group.is_empty() {
            return Err(Error::InvalidArgument("empty group name".into()));
        }
        if config.session_timeout_ms == 0 {
            return Err(Error::InvalidArgument("session timeout of 0 ms".into()));
        }
        let client = Client::connect_with(addr, config.connection.clone())?;
        let inner = Consumer::new(client, config.consumer.clone());
        let shared = Arc::new(Shared::default());
        let heartbeat = {
            let shared = shared.clone();
            let addr = addr.to_owned();
            let group = config.group.clone();
            let interval = config.heartbeat_interval();
            let conn_config = ConnectionConfig {
                // A heartbeat that takes a session is pointless.
                request_timeout_ms: config
                    .connection
                    .request_timeout_ms
                    .min(u64::from(config.session_timeout_ms)),
                reconnect_attempts_max: config.connection.reconnect_attempts_max.min(2),
                ..config.connection.clone()
            };
            std::thread::Builder::new()
                .name(format!("strom-heartbeat-{group}"))
                .spawn(move || heartbeat_loop(&shared, &addr, conn_config, &group, interval))
                .map_err(|source| Error::Io {
                    op: "spawn heartbeat thread",
                    addr: String::new(),
                    source,
                })?
        };
        Ok(GroupConsumer {
            config,
            inner,
            topics: Vec::new(),
            member_id: String::new(),
            generation: -1,
            need_join: false,
            joined: false,
            shared,
            heartbeat: Some(heartbeat),
            listener: None,
            last_commit: Instant::now(),
            committed: HashMap::new(),
            closed: false,
        })
    }

    /// Subscribes to `topics` (replacing the subscription; every topic must
    /// exist). The member (re)joins at the next poll.
    pub fn subscribe(&mut self, topics: &[&str]) -> Result<()> {
        if topics.is_empty() {
            return Err(Error::InvalidArgument("subscribe to no topic".into()));
        }
        for t in topics {
            self.inner.client().partition_count(t)?;
        }
        let mut topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
        topics.sort();
        topics.dedup();
        if topics != self.topics {
            self.topics = topics;
            self.need_join = true;
        }
        Ok(())
    }

    pub fn set_rebalance_listener(&mut self, listener: Box<dyn RebalanceListener>) {
        self.listener = Some(listener);
    }

    pub fn group(&self) -> &str {
        &self.config.group
    }

    /// The member id the coordinator gave (empty before the first join).
    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    /// The generation of the current assignment (-1 before the first join).
    pub fn generation(&self) -> i32 {
        self.generation
    }

    /// The current assignment with positions.
    pub fn assignments(&self) -> &[Assignment] {
        self.inner.assignments()
    }

    pub fn position(&self, topic: &str, partition: u32) -> Option<u64> {
        self.inner.position(topic, partition)
    }

    /// The consumer's own connection (admin calls between polls).
    pub fn client(&mut self) -> &mut Client {
        self.inner.client()
    }

    /// The heartbeat thread's last connection-level failure, if any.
    pub fn heartbeat_error(&self) -> Option<String> {
        self.shared.lock().last_error.clone()
    }

    /// Heartbeats answered so far.
    pub fn heartbeats(&self) -> u64 {
        self.shared.lock().heartbeats
    }

    /// Joins (or rejoins) now if needed, without fetching.
    pub fn ensure_joined(&mut self) -> Result<()> {
        self.check_rebalance()?;
        Ok(())
    }

    /// Fetches from the assigned partitions, waiting (long poll) up to
    /// `timeout` for records; joins or rejoins the group first when needed
    /// (that wait is bounded by the rebalance timeout, not `timeout`).
    /// Returns verified frames whose records are read zero-copy; empty when
    /// nothing arrived in time.
    pub fn poll(&mut self, timeout: Duration) -> Result<Vec<FetchedFrame>> {
        if self.closed {
            return Err(Error::InvalidArgument("poll after close".into()));
        }
        let deadline = Instant::now() + timeout;
        let slice = self.config.heartbeat_interval();
        loop {
            self.check_rebalance()?;
            self.maybe_auto_commit()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if self.inner.assignments().is_empty() {
                // Nothing assigned: wait for a rebalance (or the deadline).
                if left.is_zero() {
                    return Ok(Vec::new());
                }
                self.wait_for_rebalance(left.min(slice));
                if Instant::now() >= deadline && !self.rebalance_pending() {
                    return Ok(Vec::new());
                }
                continue;
            }
            match self.inner.poll(left.min(slice)) {
                Ok(frames) => {
                    if !frames.is_empty() || Instant::now() >= deadline {
                        return Ok(frames);
                    }
                }
                Err(e) if e.code() == Some(ErrorCode::OffsetOutOfRange) => {
                    self.reset_out_of_range(e)?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Commits every assigned partition's position (the offset after the
    /// last record handed out) as this member and generation.
    pub fn commit(&mut self) -> Result<()> {
        let offsets: Vec<(String, u32, u64)> = self
            .inner
            .assignments()
            .iter()
            .map(|a| (a.topic.to_string(), a.partition, a.position))
            .collect();
        self.commit_offsets(&offsets)
    }

    /// Commits the given (topic, partition, next offset to consume) as this
    /// member and generation. A refusal because the member is fenced or the
    /// group is rebalancing makes the next poll rejoin.
    pub fn commit_offsets(&mut self, offsets: &[(String, u32, u64)]) -> Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        if self.member_id.is_empty() || !self.joined {
            return Err(Error::InvalidArgument(format!(
                "commit to group {} before joining it",
                self.config.group
            )));
        }
        let group = self.config.group.clone();
        let member = self.member_id.clone();
        let r = self
            .inner
            .client()
            .commit_offsets_as(&group, &member, self.generation, offsets);
        match &r {
            Ok(()) => {
                for (t, p, o) in offsets {
                    self.committed.insert((t.clone(), *p), *o);
                }
                self.last_commit = Instant::now();
            }
            Err(e) if is_group_error(e.code()) => {
                let mut st = self.shared.lock();
                if st.rejoin.is_none() {
                    st.rejoin = e.code();
                }
            }
            Err(_) => {}
        }
        r
    }

    /// Commits (auto-commit), gives the partitions up, leaves the group
    /// and stops the heartbeat thread. Returns the first failure.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        self.stop_heartbeat();
        let mut first: Option<Error> = None;
        if self.joined {
            if self.config.enable_auto_commit {
                if let Err(e) = self.commit_changed() {
                    first.get_or_insert(e);
                }
            }
            let revoked = self.inner.assignments().to_vec();
            if let Some(l) = self.listener.as_mut() {
                l.on_revoked(&revoked);
            }
            self.clear_assignment();
        }
        if !self.member_id.is_empty() {
            let group = self.config.group.clone();
            let ids = [self.member_id.clone()];
            match self.inner.client().leave_group(&group, &ids) {
                Ok(()) => {}
                // Already gone (expired): nothing to leave.
                Err(e) if e.code() == Some(ErrorCode::UnknownMemberId) => {}
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
            self.member_id.clear();
        }
        self.joined = false;
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn stop_heartbeat(&mut self) {
        {
            let mut st = self.shared.lock();
            st.stop = true;
            st.active = false;
        }
        self.shared.wake.notify_all();
        if let Some(h) = self.heartbeat.take() {
            let _ = h.join();
        }
    }

    fn rebalance_pending(&self) -> bool {
        self.shared.lock().rejoin.is_some()
    }

    fn wait_for_rebalance(&self, d: Duration) {
        let st = self.shared.lock();
        if st.rejoin.is_some() {
            return;
        }
        let _ = self
            .shared
            .wake
            .wait_timeout_while(st, d, |s| s.rejoin.is_none() && !s.stop);
    }

    /// Commits the positions that moved since the last commit.
    fn commit_changed(&mut self) -> Result<()> {
        let offsets: Vec<(String, u32, u64)> = self
            .inner
            .assignments()
            .iter()
            .filter(|a| {
                self.committed
                    .get(&(a.topic.to_string(), a.partition))
                    .is_none_or(|&c| c != a.position)
            })
            .map(|a| (a.topic.to_string(), a.partition, a.position))
            .collect();
        if offsets.is_empty() {
            self.last_commit = Instant::now();
            return Ok(());
        }
        self.commit_offsets(&offsets)
    }

    fn maybe_auto_commit(&mut self) -> Result<()> {
        if !self.config.enable_auto_commit || !self.joined {
            return Ok(());
        }
        if self.last_commit.elapsed() < Duration::from_millis(self.config.auto_commit_interval_ms) {
            return Ok(());
        }
        match self.commit_changed() {
            // Fenced or rebalancing: the next loop turn rejoins.
            Err(e) if is_group_error(e.code()) => Ok(()),
            other => other,
        }
    }

    fn clear_assignment(&mut self) {
        let parts: Vec<(String, u32)> = self
            .inner
            .assignments()
            .iter()
            .map(|a| (a.topic.to_string(), a.partition))
            .collect();
        for (t, p) in parts {
            self.inner.unassign(&t, p);
        }
        self.committed.clear();
    }

    /// Gives the partitions up and rejoins when the heartbeat thread (or a
    /// commit) asked for it, or joins for the first time.
    fn check_rebalance(&mut self) -> Result<()> {
        let reason = {
            let mut st = self.shared.lock();
            st.rejoin.take()
        };
        if let Some(code) = reason {
            self.revoke(code);
            if code == ErrorCode::UnknownMemberId {
                self.member_id.clear();
            }
            self.need_join = true;
        }
        if self.topics.is_empty() {
            return Err(Error::InvalidArgument(
                "poll before subscribing to a topic".into(),
            ));
        }
        if self.need_join || !self.joined {
            if self.joined {
                // A new subscription: give the partitions up first.
                self.revoke(ErrorCode::RebalanceInProgress);
            }
            self.join()?;
        }
        Ok(())
    }

    fn revoke(&mut self, reason: ErrorCode) {
        {
            let mut st = self.shared.lock();
            st.active = false;
        }
        if !self.joined {
            return;
        }
        self.joined = false;
        let fenced = reason != ErrorCode::RebalanceInProgress;
        let mut lost = fenced;
        if !fenced && self.config.enable_auto_commit {
            // Still a member of the current generation: commit what was
            // handed out so the next owner starts after it.
            self.joined = true;
            if let Err(e) = self.commit_changed() {
                if is_group_error(e.code()) {
                    lost = true;
                }
            }
            self.joined = false;
            self.shared.lock().rejoin = None;
        }
        let revoked = self.inner.assignments().to_vec();
        if let Some(l) = self.listener.as_mut() {
            if lost {
                l.on_lost(&revoked);
            } else {
                l.on_revoked(&revoked);
            }
        }
        self.clear_assignment();
    }

    /// JoinGroup + SyncGroup until a generation's assignment arrives, then
    /// positions from the committed offsets.
    fn join(&mut self) -> Result<()> {
        let rebalance_ms = self.config.rebalance_timeout_ms();
        let group = self.config.group.clone();
        let mut backoff = Duration::from_millis(50);
        let mut last: Option<Error> = None;
        let mut assigned = None;
        for _ in 0..JOIN_ATTEMPTS_MAX {
            let request = JoinGroupRequest {
                group: group.clone(),
                member_id: self.member_id.clone(),
                client_id: self.config.client_id.clone(),
                protocol_type: PROTOCOL_TYPE.to_owned(),
                protocols: vec![GroupProtocol {
                    name: self.config.strategy.protocol_name().to_owned(),
                    metadata: Vec::new(),
                }],
                session_timeout_ms: self.config.session_timeout_ms,
                rebalance_timeout_ms: rebalance_ms,
                topics: self.topics.clone(),
                coordinator_assigns: true,
            };
            let joined = self
                .inner
                .client()
                .join_group(request, u64::from(rebalance_ms))?;
            match joined.error {
                ErrorCode::None => {}
                ErrorCode::UnknownMemberId => {
                    self.member_id.clear();
                    continue;
                }
                ErrorCode::RebalanceInProgress
                | ErrorCode::CoordinatorNotAvailable
                | ErrorCode::IllegalGeneration => {
                    last = Some(Error::server(joined.error, &joined.message, "join group"));
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
                code => {
                    return Err(Error::server(
                        code,
                        &joined.message,
                        format!("join group {group}"),
                    ))
                }
            }
            self.member_id = joined.member_id;
            let generation = joined.generation;
            let synced = self.inner.client().sync_group(
                SyncGroupRequest {
                    group: group.clone(),
                    member_id: self.member_id.clone(),
                    generation,
                    assignments: Vec::new(),
                },
                u64::from(rebalance_ms),
            )?;
            match synced.error {
                ErrorCode::None => {
                    assigned = Some((generation, synced.partitions));
                    break;
                }
                ErrorCode::UnknownMemberId => {
                    self.member_id.clear();
                    continue;
                }
                ErrorCode::RebalanceInProgress
                | ErrorCode::IllegalGeneration
                | ErrorCode::CoordinatorNotAvailable => {
                    last = Some(Error::server(synced.error, &synced.message, "sync group"));
                    continue;
                }
                code => {
                    return Err(Error::server(
                        code,
                        &synced.message,
                        format!("sync group {group}"),
                    ))
                }
            }
        }
        let Some((generation, partitions)) = assigned else {
            return Err(last.unwrap_or_else(|| {
                Error::InvalidArgument(format!(
                    "group {group}: no assignment after {JOIN_ATTEMPTS_MAX} attempts"
                ))
            }));
        };
        self.generation = generation;
        self.clear_assignment();
        // Where each partition starts: the committed offset, else the reset
        // policy.
        let parts: Vec<(String, u32)> = partitions
            .iter()
            .flat_map(|tp| tp.partitions.iter().map(|p| (tp.topic.clone(), *p)))
            .collect();
        if !parts.is_empty() {
            let rows = self.inner.client().fetch_offsets(&group, &parts)?;
            let mut starts: HashMap<(String, u32), u64> = HashMap::new();
            for r in rows {
                if r.error == ErrorCode::None && r.offset >= 0 {
                    starts.insert((r.topic, r.partition), r.offset as u64);
                }
            }
            for (t, p) in &parts {
                let from = match starts.get(&(t.clone(), *p)) {
                    Some(&n) => {
                        self.committed.insert((t.clone(), *p), n);
                        OffsetSpec::At(n)
                    }
                    None => match self.config.auto_offset_reset {
                        AutoOffsetReset::Earliest => OffsetSpec::Earliest,
                        AutoOffsetReset::Latest => OffsetSpec::Latest,
                        AutoOffsetReset::None => {
                            return Err(Error::InvalidArgument(format!(
                                "group {group} has no committed offset for {t}/{p} \
                                 and auto_offset_reset is None"
                            )))
                        }
                    },
                };
                self.inner.assign(t, *p, from)?;
            }
        }
        self.need_join = false;
        self.joined = true;
        self.last_commit = Instant::now();
        {
            let mut st = self.shared.lock();
            st.member_id = self.member_id.clone();
            st.generation = generation;
            st.epoch += 1;
            st.active = true;
            st.rejoin = None;
        }
        self.shared.wake.notify_all();
        let assigned = self.inner.assignments().to_vec();
        if let Some(l) = self.listener.as_mut() {
            l.on_assigned(&assigned, generation);
        }
        Ok(())
    }

    /// After `OffsetOutOfRange`: moves every position outside its
    /// partition's range per the reset policy.
    fn reset_out_of_range(&mut self, cause: Error) -> Result<()> {
        let parts: Vec<(String, u32, u64)> = self
            .inner
            .assignments()
            .iter()
            .map(|a| (a.topic.to_string(), a.partition, a.position))
            .collect();
        let mut asks = Vec::with_capacity(parts.len() * 2);
        for (t, p, _) in &parts {
            asks.push((t.clone(), *p, LIST_OFFSETS_EARLIEST));
            asks.push((t.clone(), *p, LIST_OFFSETS_LATEST));
        }
        let offsets = self.inner.client().list_offsets(&asks)?;
        let mut moved = false;
        for (i, (t, p, pos)) in parts.iter().enumerate() {
            let lo = offsets[2 * i].unwrap_or(0);
            let hi = offsets[2 * i + 1].unwrap_or(0);
            if *pos >= lo && *pos <= hi {
                continue;
            }
            let to = match self.config.auto_offset_reset {
                AutoOffsetReset::Earliest => lo,
                AutoOffsetReset::Latest => hi,
                AutoOffsetReset::None => return Err(cause),
            };
            self.inner.seek(t, *p, OffsetSpec::At(to))?;
            moved = true;
        }
        if moved {
            Ok(())
        } else {
            Err(cause)
        }
    }
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

fn heartbeat_loop(
    shared: &Shared,
    addr: &str,
    config: ConnectionConfig,
    group: &str,
    interval: Duration,
) {
    let mut client: Option<Client> = None;
    let mut due = Instant::now() + interval;
    let mut st = shared.lock();
    loop {
        if st.stop {
            return;
        }
        let now = Instant::now();
        if now < due {
            st = shared
                .wake
                .wait_timeout(st, due - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            continue;
        }
        due = now + interval;
        if !st.active || st.rejoin.is_some() {
            continue;
        }
        let (member, generation, epoch) = (st.member_id.clone(), st.generation, st.epoch);
        drop(st);
        let r = match client.as_mut() {
            Some(c) => c.heartbeat(group, &member, generation),
            None => match Client::connect_with(addr, config.clone()) {
                Ok(mut c) => {
                    let r = c.heartbeat(group, &member, generation);
                    client = Some(c);
                    r
                }
                Err(e) => Err(e),
            },
        };
        st = shared.lock();
        match r {
            Ok(()) => st.heartbeats += 1,
            Err(e) if is_group_error(e.code()) => {
                if st.epoch == epoch && st.active && st.rejoin.is_none() {
                    st.rejoin = e.code();
                    shared.wake.notify_all();
                }
            }
            Err(e) => {
                if e.is_connection_error() {
                    client = None;
                }
                st.last_error = Some(e.to_string());
            }
        }
    }
}
