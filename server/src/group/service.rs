//! The coordinator's shell: what native and Kafka handlers call. Each
//! public function routes to the shard that owns the group (in place or
//! over the mesh as `Op::Group`) and returns protocol-neutral results
//! (member metadata and assignments are opaque bytes, as in Kafka).
//!
//! Owner side, per shard: the [`Coordinator`] core for the groups of the
//! offsets partitions this shard owns, those partitions' logs, the joins
//! and syncs waiting for their rebalance (completed from the core's
//! [`Ready`](super::coordinator::Ready)), and a timer task that calls
//! `tick` every `GROUP_TICK_MS`.
//!
//! Invariants:
//! - no `RefCell` borrow is held across an `.await`;
//! - the core holds only groups of offsets partitions this shard owns
//!   (requests are routed by [`group_shard`], and replay checks each
//!   record's partition), and each record goes to its group's partition;
//! - every append to a log (commits, generation records, tombstones,
//!   compaction) holds `append_lock`, so each log's order is the order in
//!   which the core produced the records; a commit is applied to the core
//!   only after its append succeeded, before the lock is released;
//! - a waiter registered for a ticket receives exactly one answer.

use super::coordinator::{
    CommitArgs, Completion, Coordinator, CoordinatorConfig, GroupDescription, GroupListing,
    JoinArgs, JoinResult, OffsetCommit, Outcome, SyncArgs, SyncResult, Ticket,
};
use super::error::GroupError;
use super::migrate::record_group;
use super::records::{Committed, Record};
use super::store::{self, OffsetLog, StoreError};
use super::{group_shard, offsets_partition};
use crate::engine::Durability;
use crate::metadata::Placement;
use crate::ops::{call, fan_out};
use crate::router::{Op, Reply};
use crate::shard::Shard;
use glommio::channels::local_channel::{self, LocalSender};
use glommio::sync::Semaphore;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

/// How often each shard's timer ticks the coordinator.
pub const GROUP_TICK_MS: u64 = 100;

/// A group operation for the owning shard.
pub enum GroupOp {
    Join(JoinArgs),
    Sync(SyncArgs),
    Heartbeat {
        group: String,
        member_id: String,
        generation: i32,
    },
    Leave {
        group: String,
        member_ids: Vec<String>,
    },
    Commit(CommitArgs),
    Fetch {
        group: String,
        partitions: Option<Vec<(String, u32)>>,
    },
    List,
    Describe(Vec<String>),
    Reset {
        group: String,
        offsets: Vec<OffsetCommit>,
    },
    /// A committed transaction's offsets (from the transaction coordinator).
    TxnCommit {
        group: String,
        offsets: Vec<OffsetCommit>,
    },
}

pub enum GroupReply {
    Join(Result<JoinResult, GroupError>),
    Sync(Result<SyncResult, GroupError>),
    Heartbeat(Result<(), GroupError>),
    Leave(Result<Vec<Result<(), GroupError>>, GroupError>),
    Commit(Result<Vec<Result<(), GroupError>>, GroupError>),
    Fetch(Result<Vec<(String, u32, Option<Committed>)>, GroupError>),
    List(Vec<GroupListing>),
    Describe(Vec<GroupDescription>),
}

fn now_ms() -> u64 {
    super::wall_ms()
}

struct Inner {
    core: RefCell<Coordinator>,
    placement: Placement,
    /// The logs of the offsets partitions this shard owns, by number;
    /// whoever holds `append_lock` may take them out while appending.
    logs: RefCell<BTreeMap<u32, OffsetLog>>,
    loaded: Cell<bool>,
    append_lock: Semaphore,
    joins: RefCell<HashMap<Ticket, LocalSender<Result<JoinResult, GroupError>>>>,
    syncs: RefCell<HashMap<Ticket, LocalSender<Result<SyncResult, GroupError>>>>,
}

/// One shard's share of the coordinator.
#[derive(Clone)]
pub struct GroupShard {
    inner: Rc<Inner>,
}

impl GroupShard {
    pub fn new(config: CoordinatorConfig, placement: Placement) -> GroupShard {
        GroupShard {
            inner: Rc::new(Inner {
                core: RefCell::new(Coordinator::new(config)),
                placement,
                logs: RefCell::new(BTreeMap::new()),
                loaded: Cell::new(false),
                append_lock: Semaphore::new(1),
                joins: RefCell::new(HashMap::new()),
                syncs: RefCell::new(HashMap::new()),
            }),
        }
    }

    /// Opens and replays the offsets partitions this shard owns, learns the
    /// topics, and starts the timer. On failure the shard's groups answer
    /// COORDINATOR_NOT_AVAILABLE.
    pub async fn load(&self, shard: &Rc<Shard>) {
        let placement = self.inner.placement;
        let owned = placement.offsets_partitions_of(shard.id);
        for p in &owned {
            let dir = store::partition_dir(&shard.data_dir, *p);
            let opened = OffsetLog::open(dir.clone())
                .await
                .and_then(|(log, records)| {
                    // Every record must belong to this partition.
                    let misplaced = records
                        .iter()
                        .map(record_group)
                        .find(|g| offsets_partition(g, placement.offsets_partitions) != *p);
                    if let Some(g) = misplaced {
                        let belongs = offsets_partition(g, placement.offsets_partitions);
                        let group = g.to_owned();
                        self.inner.logs.borrow_mut().insert(*p, log);
                        return Err(StoreError::Misplaced {
                            path: dir.clone(),
                            group,
                            belongs,
                        });
                    }
                    Ok((log, records))
                });
            match opened {
                Ok((log, records)) => {
                    self.inner.core.borrow_mut().apply(now_ms(), &records);
                    self.inner.logs.borrow_mut().insert(*p, log);
                }
                Err(e) => {
                    tracing::error!(shard = shard.id, offsets_partition = p, error = %e, "consumer offsets unavailable; this shard's groups answer CoordinatorNotAvailable");
                    return;
                }
            }
        }
        tracing::info!(
            shard = shard.id,
            placement_epoch = placement.epoch,
            offsets_partitions = ?owned,
            groups = self.inner.core.borrow().list().len(),
            "consumer offsets loaded"
        );
        self.set_topics(shard);
        self.inner.loaded.set(true);
        let me = self.clone();
        let s = shard.clone();
        glommio::spawn_local(async move {
            while !s.shutdown.is_fired() {
                glommio::timer::sleep(Duration::from_millis(GROUP_TICK_MS)).await;
                me.inner.core.borrow_mut().tick(now_ms());
                me.process_ready();
                me.maybe_compact().await;
            }
        })
        .detach();
    }

    /// Tells the core the topics of the current metadata (after a change).
    pub fn set_topics(&self, shard: &Shard) {
        let topics: BTreeMap<String, u32> = shard
            .metadata
            .borrow()
            .topics
            .values()
            .map(|t| (t.name.clone(), t.partitions))
            .collect();
        self.inner.core.borrow_mut().set_topics(now_ms(), topics);
        self.process_ready();
    }

    /// (group, topic, partition, committed offset) of every group this
    /// shard coordinates (for metrics).
    pub fn committed(&self) -> Vec<(String, String, u32, u64)> {
        self.inner
            .core
            .borrow()
            .snapshot()
            .into_iter()
            .filter_map(|r| match r {
                Record::Offset {
                    group,
                    topic,
                    partition,
                    value: Some(c),
                } => Some((group, topic, partition, c.offset)),
                _ => None,
            })
            .collect()
    }

    /// Closes the offsets logs (shutdown).
    pub async fn close(&self) {
        let _g = self.inner.append_lock.acquire_permit(1).await;
        let logs = std::mem::take(&mut *self.inner.logs.borrow_mut());
        for (p, log) in logs {
            if let Err(e) = log.close().await {
                tracing::error!(offsets_partition = p, error = %e, "closing the offsets log failed");
            }
        }
    }

    /// Answers completed joins/syncs; appends the core's records (in order,
    /// behind the append lock) without making anyone wait for them.
    fn process_ready(&self) {
        let ready = self.inner.core.borrow_mut().take_ready();
        for c in ready.completions {
            match c {
                Completion::Join(t, r) => {
                    if let Some(tx) = self.inner.joins.borrow_mut().remove(&t) {
                        let _ = tx.try_send(r);
                    }
                }
                Completion::Sync(t, r) => {
                    if let Some(tx) = self.inner.syncs.borrow_mut().remove(&t) {
                        let _ = tx.try_send(r);
                    }
                }
            }
        }
        if !ready.records.is_empty() {
            let me = self.clone();
            glommio::spawn_local(async move {
                if let Err(e) = me.append(&ready.records, Durability::Written).await {
                    tracing::error!(error = %e, "appending to the offsets log failed");
                }
            })
            .detach();
        }
    }

    /// Appends under the lock; `then` runs (still under it) on success.
    async fn append_then(
        &self,
        records: &[Record],
        durability: Durability,
        then: impl FnOnce(),
    ) -> Result<(), String> {
        let _g = self
            .inner
            .append_lock
            .acquire_permit(1)
            .await
            .map_err(|e| e.to_string())?;
        let n = self.inner.placement.offsets_partitions;
        let mut per_partition: BTreeMap<u32, Vec<Record>> = BTreeMap::new();
        for r in records {
            let p = offsets_partition(record_group(r), n);
            per_partition.entry(p).or_default().push(r.clone());
        }
        let mut logs = std::mem::take(&mut *self.inner.logs.borrow_mut());
        let mut result = Ok(());
        for (p, records) in &per_partition {
            let Some(log) = logs.get_mut(p) else {
                result = Err(format!(
                    "offsets partition {p} is not open on this shard (placement epoch {})",
                    self.inner.placement.epoch
                ));
                break;
            };
            if let Err(e) = log.append(records, durability).await {
                result = Err(e.to_string());
                break;
            }
        }
        *self.inner.logs.borrow_mut() = logs;
        result?;
        then();
        Ok(())
    }

    async fn append(&self, records: &[Record], durability: Durability) -> Result<(), String> {
        self.append_then(records, durability, || {}).await
    }

    /// Compacts each offsets partition whose log is due (see `store`).
    async fn maybe_compact(&self) {
        // Cheap first: only a log past the minimum can be due.
        let candidates: Vec<u32> = self
            .inner
            .logs
            .borrow()
            .iter()
            .filter(|(_, l)| l.records() >= store::COMPACT_RECORDS_MIN)
            .map(|(p, _)| *p)
            .collect();
        if candidates.is_empty() {
            return;
        }
        let Ok(_g) = self.inner.append_lock.acquire_permit(1).await else {
            return;
        };
        let n = self.inner.placement.offsets_partitions;
        for p in candidates {
            let snapshot: Vec<Record> = self
                .inner
                .core
                .borrow()
                .snapshot()
                .into_iter()
                .filter(|r| offsets_partition(record_group(r), n) == p)
                .collect();
            let Some(log) = self.inner.logs.borrow_mut().remove(&p) else {
                continue;
            };
            if !log.compaction_due(snapshot.len()) {
                self.inner.logs.borrow_mut().insert(p, log);
                continue;
            }
            match log.compact(snapshot).await {
                Ok(log) => {
                    self.inner.logs.borrow_mut().insert(p, log);
                }
                Err((e, log)) => {
                    tracing::error!(offsets_partition = p, error = %e, "offsets log compaction failed");
                    if let Some(log) = log {
                        self.inner.logs.borrow_mut().insert(p, log);
                    }
                }
            }
        }
    }

    async fn commit_records(
        &self,
        now: u64,
        results: Vec<Result<Record, GroupError>>,
        group: &str,
    ) -> Vec<Result<(), GroupError>> {
        let records: Vec<Record> = results.iter().filter_map(|r| r.clone().ok()).collect();
        let core = &self.inner.core;
        let stored = if records.is_empty() {
            Ok(())
        } else {
            self.append_then(&records, Durability::Durable, || {
                core.borrow_mut().apply(now, &records)
            })
            .await
        };
        results
            .into_iter()
            .map(|r| match (r, &stored) {
                (Err(e), _) => Err(e),
                (Ok(_), Ok(())) => Ok(()),
                (Ok(_), Err(reason)) => Err(GroupError::Storage {
                    group: group.to_owned(),
                    reason: reason.clone(),
                }),
            })
            .collect()
    }

    /// Owner side of a [`GroupOp`].
    pub async fn execute(&self, op: GroupOp) -> GroupReply {
        let group = match &op {
            GroupOp::Join(a) => a.group.clone(),
            GroupOp::Sync(a) => a.group.clone(),
            GroupOp::Heartbeat { group, .. }
            | GroupOp::Leave { group, .. }
            | GroupOp::Fetch { group, .. }
            | GroupOp::Reset { group, .. }
            | GroupOp::TxnCommit { group, .. } => group.clone(),
            GroupOp::Commit(a) => a.group.clone(),
            GroupOp::List | GroupOp::Describe(_) => String::new(),
        };
        let unavailable = || GroupError::CoordinatorNotAvailable {
            group: group.clone(),
        };
        if !self.inner.loaded.get() {
            return match op {
                GroupOp::Join(_) => GroupReply::Join(Err(unavailable())),
                GroupOp::Sync(_) => GroupReply::Sync(Err(unavailable())),
                GroupOp::Heartbeat { .. } => GroupReply::Heartbeat(Err(unavailable())),
                GroupOp::Leave { .. } => GroupReply::Leave(Err(unavailable())),
                GroupOp::Commit(_) | GroupOp::Reset { .. } | GroupOp::TxnCommit { .. } => {
                    GroupReply::Commit(Err(unavailable()))
                }
                GroupOp::Fetch { .. } => GroupReply::Fetch(Err(unavailable())),
                GroupOp::List => GroupReply::List(Vec::new()),
                GroupOp::Describe(_) => GroupReply::Describe(Vec::new()),
            };
        }
        let now = now_ms();
        let reply = match op {
            GroupOp::Join(a) => {
                let r = self.inner.core.borrow_mut().join(now, a);
                match r {
                    Err(e) => GroupReply::Join(Err(e)),
                    Ok(Outcome::Done(r)) => GroupReply::Join(Ok(r)),
                    Ok(Outcome::Pending(t)) => {
                        let (tx, rx) = local_channel::new_bounded(1);
                        self.inner.joins.borrow_mut().insert(t, tx);
                        self.process_ready();
                        let r = rx.recv().await.unwrap_or_else(|| Err(unavailable()));
                        return GroupReply::Join(r);
                    }
                }
            }
            GroupOp::Sync(a) => {
                let r = self.inner.core.borrow_mut().sync(now, a);
                match r {
                    Err(e) => GroupReply::Sync(Err(e)),
                    Ok(Outcome::Done(r)) => GroupReply::Sync(Ok(r)),
                    Ok(Outcome::Pending(t)) => {
                        let (tx, rx) = local_channel::new_bounded(1);
                        self.inner.syncs.borrow_mut().insert(t, tx);
                        self.process_ready();
                        let r = rx.recv().await.unwrap_or_else(|| Err(unavailable()));
                        return GroupReply::Sync(r);
                    }
                }
            }
            GroupOp::Heartbeat {
                group,
                member_id,
                generation,
            } => GroupReply::Heartbeat(
                self.inner
                    .core
                    .borrow_mut()
                    .heartbeat(now, &group, &member_id, generation),
            ),
            GroupOp::Leave { group, member_ids } => {
                GroupReply::Leave(self.inner.core.borrow_mut().leave(now, &group, &member_ids))
            }
            GroupOp::Commit(a) => {
                let r = self.inner.core.borrow_mut().commit(now, &a);
                match r {
                    Err(e) => GroupReply::Commit(Err(e)),
                    Ok(results) => {
                        GroupReply::Commit(Ok(self.commit_records(now, results, &a.group).await))
                    }
                }
            }
            GroupOp::Reset { group, offsets } => {
                let r = self
                    .inner
                    .core
                    .borrow_mut()
                    .reset_offsets(now, &group, &offsets);
                match r {
                    Err(e) => GroupReply::Commit(Err(e)),
                    Ok(results) => {
                        GroupReply::Commit(Ok(self.commit_records(now, results, &group).await))
                    }
                }
            }
            GroupOp::TxnCommit { group, offsets } => {
                let r = self
                    .inner
                    .core
                    .borrow_mut()
                    .txn_offsets(now, &group, &offsets);
                match r {
                    Err(e) => GroupReply::Commit(Err(e)),
                    Ok(results) => {
                        GroupReply::Commit(Ok(self.commit_records(now, results, &group).await))
                    }
                }
            }
            GroupOp::Fetch { group, partitions } => GroupReply::Fetch(Ok(self
                .inner
                .core
                .borrow()
                .fetch_offsets(&group, partitions.as_deref()))),
            GroupOp::List => GroupReply::List(self.inner.core.borrow().list()),
            GroupOp::Describe(groups) => {
                let core = self.inner.core.borrow();
                GroupReply::Describe(groups.iter().map(|g| core.describe(g)).collect())
            }
        };
        self.process_ready();
        reply
    }
}

// ------------------------------------------------------------ public API

async fn route(shard: &Rc<Shard>, group: &str, op: GroupOp) -> Result<GroupReply, GroupError> {
    super::coordinator::validate_group_id(group)?;
    let owner = group_shard(group, &shard.placement());
    match call(shard, owner, Op::Group(op)).await {
        Reply::Group(r) => Ok(r),
        _ => Err(GroupError::CoordinatorNotAvailable {
            group: group.to_owned(),
        }),
    }
}

fn mismatch(group: &str) -> GroupError {
    GroupError::CoordinatorNotAvailable {
        group: group.to_owned(),
    }
}

/// JoinGroup: resolves when the join phase ends (or at once for a member
/// rejoining a stable group with unchanged metadata).
pub async fn join(shard: &Rc<Shard>, args: JoinArgs) -> Result<JoinResult, GroupError> {
    let group = args.group.clone();
    match route(shard, &group, GroupOp::Join(args)).await? {
        GroupReply::Join(r) => r,
        _ => Err(mismatch(&group)),
    }
}

/// SyncGroup: resolves when the leader's assignment arrived.
pub async fn sync(shard: &Rc<Shard>, args: SyncArgs) -> Result<SyncResult, GroupError> {
    let group = args.group.clone();
    match route(shard, &group, GroupOp::Sync(args)).await? {
        GroupReply::Sync(r) => r,
        _ => Err(mismatch(&group)),
    }
}

pub async fn heartbeat(
    shard: &Rc<Shard>,
    group: &str,
    member_id: &str,
    generation: i32,
) -> Result<(), GroupError> {
    let op = GroupOp::Heartbeat {
        group: group.to_owned(),
        member_id: member_id.to_owned(),
        generation,
    };
    match route(shard, group, op).await? {
        GroupReply::Heartbeat(r) => r,
        _ => Err(mismatch(group)),
    }
}

/// LeaveGroup: per-member results in order.
pub async fn leave(
    shard: &Rc<Shard>,
    group: &str,
    member_ids: Vec<String>,
) -> Result<Vec<Result<(), GroupError>>, GroupError> {
    let op = GroupOp::Leave {
        group: group.to_owned(),
        member_ids,
    };
    match route(shard, group, op).await? {
        GroupReply::Leave(r) => r,
        _ => Err(mismatch(group)),
    }
}

/// OffsetCommit: durable (fdatasync'd) before it returns Ok; per-partition
/// results in request order. `member_id` empty = outside group management.
#[allow(dead_code)] // API for the Kafka listener and tests
pub async fn commit(
    shard: &Rc<Shard>,
    args: CommitArgs,
) -> Result<Vec<Result<(), GroupError>>, GroupError> {
    let group = args.group.clone();
    match route(shard, &group, GroupOp::Commit(args)).await? {
        GroupReply::Commit(r) => r,
        _ => Err(mismatch(&group)),
    }
}

/// OffsetFetch: `None` = every committed partition; `None` offsets mean
/// nothing committed.
#[allow(dead_code)] // API for the Kafka listener and tests
pub async fn fetch_offsets(
    shard: &Rc<Shard>,
    group: &str,
    partitions: Option<Vec<(String, u32)>>,
) -> Result<Vec<(String, u32, Option<Committed>)>, GroupError> {
    let op = GroupOp::Fetch {
        group: group.to_owned(),
        partitions,
    };
    match route(shard, group, op).await? {
        GroupReply::Fetch(r) => r,
        _ => Err(mismatch(group)),
    }
}

/// Sets offsets administratively; only while the group is Empty.
pub async fn reset_offsets(
    shard: &Rc<Shard>,
    group: &str,
    offsets: Vec<OffsetCommit>,
) -> Result<Vec<Result<(), GroupError>>, GroupError> {
    let op = GroupOp::Reset {
        group: group.to_owned(),
        offsets,
    };
    match route(shard, group, op).await? {
        GroupReply::Commit(r) => r,
        _ => Err(mismatch(group)),
    }
}

/// The offsets of a committed transaction, durably, without member or
/// generation checks (the transaction coordinator's commit).
pub async fn txn_commit(
    shard: &Rc<Shard>,
    group: &str,
    offsets: Vec<OffsetCommit>,
) -> Result<Vec<Result<(), GroupError>>, GroupError> {
    let op = GroupOp::TxnCommit {
        group: group.to_owned(),
        offsets,
    };
    match route(shard, group, op).await? {
        GroupReply::Commit(r) => r,
        _ => Err(mismatch(group)),
    }
}

/// ListGroups: every group of every shard.
pub async fn list(shard: &Rc<Shard>) -> Vec<GroupListing> {
    let ops: Vec<(usize, Op)> = (0..shard.shards)
        .map(|s| (s, Op::Group(GroupOp::List)))
        .collect();
    let n = ops.len();
    let rx = fan_out(shard, ops);
    let mut out = Vec::new();
    for _ in 0..n {
        match rx.recv().await {
            Some((_, Reply::Group(GroupReply::List(l)))) => out.extend(l),
            Some(_) => {}
            None => break,
        }
    }
    out.sort_by(|a, b| a.group.cmp(&b.group));
    out
}

/// DescribeGroups, in request order; an unknown group is `Dead`.
pub async fn describe(shard: &Rc<Shard>, groups: Vec<String>) -> Vec<GroupDescription> {
    let mut out = Vec::with_capacity(groups.len());
    for g in groups {
        let d = match route(shard, &g, GroupOp::Describe(vec![g.clone()])).await {
            Ok(GroupReply::Describe(mut d)) if d.len() == 1 => d.remove(0),
            _ => super::coordinator::Coordinator::new(CoordinatorConfig::default()).describe(&g),
        };
        out.push(d);
    }
    out
}
