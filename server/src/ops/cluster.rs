//! Operations in cluster mode (`crate::cluster`): what a shard does for a
//! partition that is a Raft group, and for topic changes, which go through
//! the metadata group. The protocol edges do not know the difference: they
//! call the same `ops` and get the same replies, plus `NotLeader`,
//! `LeaderNotAvailable` and `NotController` errors.
//!
//! Invariants:
//! - A produce is proposed only on the partition's leader and answered
//!   only as `strom_replication` acknowledges it: acks=all (Durable) once
//!   a majority has the batch durable and it is committed; acks=leader
//!   (Written, Buffered) once the leader's own copy is durable (it may be
//!   lost on failover, as in Kafka). Batches of idempotent producers are
//!   always proposed with acks=all and checked under the partition's
//!   producer lane, which is held until the answer, so the next batch is
//!   checked against state that includes this one (see
//!   `cluster::record_producer`).
//! - A fetch never returns a record past the commit and is served by the
//!   leader only.
//! - The high watermark clients are told is the end of the last committed
//!   frame with records (`Committed::data_end_offset`), not the commit
//!   itself: Raft's no-ops and configuration entries take offsets but are
//!   never sent to consumers (gaps), so a consumer told the commit would
//!   wait forever at a control entry that ends the log (no end-of-partition,
//!   a lag of 1). Both only grow, and records are never past either.
//! - Topic changes: computed by the metadata leader from the metadata it
//!   has applied, proposed as one entry, and answered once this node has
//!   applied that entry; every node applies the same entries in the same
//!   order ([`apply_metadata`]).

use crate::cluster::{self, MetaEntry, META_ENTRY_VERSION, META_GROUP};
use crate::engine::Durability;
use crate::error::WireError;
use crate::metadata::{self, Metadata};
use crate::ops::fan_out;
use crate::producers::{Check, PartitionKey};
use crate::router::{Appended, FetchItem, FetchOut, Op, ProduceError, ProduceItem, Produced};
use crate::shard::Shard;
use std::rc::Rc;
use std::time::Duration;
use strom_flatbuffers::protocol::*;
use strom_replication::shell::{Node, ReadError, ShellProposeError};
use strom_replication::Acks;

/// How long a topic change waits for its entry to be applied here.
pub const META_APPLY_WAIT_MS: u64 = 10_000;
/// How long a produce waits for its acknowledgement.
pub const PROPOSE_WAIT_MS: u64 = 30_000;

fn node(shard: &Shard) -> &Node {
    &shard
        .replication
        .as_ref()
        .expect("cluster operations run only in cluster mode")
        .node
}

/// The group of `topic`/`p` on this shard, and its topic id.
fn group_of(shard: &Shard, topic: &str, p: u32) -> Result<(u64, u64), WireError> {
    if let Some(&(topic_id, group)) = shard.replicated.borrow().get(&(topic.to_owned(), p)) {
        return Ok((topic_id, group));
    }
    let meta = shard.metadata.borrow();
    match meta.topics.get(topic) {
        None => Err(WireError::unknown_topic(topic)),
        Some(t) if p >= t.partitions => Err(WireError::unknown_partition(topic, p)),
        Some(_) => Err(WireError::new(
            ErrorCode::PartitionUnavailable,
            format!("{topic}/{p}: its replica is not open on this node; retry"),
        )),
    }
}

/// The leader's view of `group`, or the error a follower answers.
fn leader_view(
    shard: &Shard,
    topic: &str,
    p: u32,
    group: u64,
) -> Result<strom_replication::shell::GroupView, WireError> {
    let what = format!("{topic}/{p}");
    let v = node(shard).view(group).ok_or_else(|| {
        WireError::new(
            ErrorCode::PartitionUnavailable,
            format!("{what}: its replica is not open on this node; retry"),
        )
    })?;
    if !v.is_leader {
        return Err(cluster::not_leader(&what, v.leader));
    }
    Ok(v)
}

fn propose_error(topic: &str, p: u32, e: ShellProposeError) -> WireError {
    let what = format!("{topic}/{p}");
    match &e {
        // Refused at once: nothing was written.
        ShellProposeError::Refused { .. } => match e.leader_hint() {
            Some(l) => cluster::not_leader(&what, Some(l)),
            None if e.is_retriable() => cluster::not_leader(&what, None),
            None => WireError::new(ErrorCode::InvalidRequest, format!("{what}: {e}")),
        },
        ShellProposeError::StoreFailed { .. } => {
            WireError::new(ErrorCode::PartitionFailed, format!("{what}: {e}"))
        }
        // Accepted, then not acknowledged: the outcome is unknown (Kafka
        // clients retry on NOT_LEADER_OR_FOLLOWER; idempotent ones safely).
        _ => WireError::new(
            ErrorCode::NotLeader,
            format!("{what}: not acknowledged, outcome unknown: {e}"),
        ),
    }
}

/// Proposes one partition's batches in request order (see the module
/// invariants).
pub async fn produce_partition(
    shard: Rc<Shard>,
    topic: String,
    p: u32,
    items: Vec<ProduceItem>,
    durability: Durability,
) -> Vec<(usize, Produced)> {
    let mut out = Vec::with_capacity(items.len());
    for it in items {
        let r = produce_one(
            &shard,
            &topic,
            p,
            it.frame.freeze(),
            it.producer,
            durability,
        )
        .await;
        out.push((it.index, r));
    }
    out
}

async fn produce_one(
    shard: &Rc<Shard>,
    topic: &str,
    p: u32,
    frame: bytes::Bytes,
    producer: Option<crate::producers::ProducerBatch>,
    durability: Durability,
) -> Produced {
    let (topic_id, group) = group_of(shard, topic, p).map_err(ProduceError::Wire)?;
    leader_view(shard, topic, p, group).map_err(ProduceError::Wire)?;
    let records_bytes = frame.len() as u64;
    let propose = |acks: Acks| {
        let fut = node(shard).propose(group, frame.clone(), acks);
        async move {
            let timeout = async {
                glommio::timer::sleep(Duration::from_millis(PROPOSE_WAIT_MS)).await;
                Err(ShellProposeError::Stopped { group })
            };
            futures_lite::future::or(fut, timeout).await
        }
    };
    let acks = match durability {
        Durability::Durable => Acks::All,
        _ => Acks::Leader,
    };
    let answered = |index: u64| -> Produced {
        let (base, next) = node(shard).entry_offsets(group, index).ok_or_else(|| {
            ProduceError::Wire(WireError::new(
                ErrorCode::Internal,
                format!("{topic}/{p}: entry {index} acknowledged but not held"),
            ))
        })?;
        let log_start = node(shard)
            .view(group)
            .map_or(0, |v| v.committed.log_start_offset);
        shard.count_in(topic, p, next - base, records_bytes);
        Ok(Appended {
            base_offset: base,
            last_offset: next - 1,
            append_time_ms: crate::group::wall_ms() as i64,
            log_start_offset: log_start,
        })
    };
    let Some(b) = producer else {
        let (index, _term) = propose(acks)
            .await
            .map_err(|e| ProduceError::Wire(propose_error(topic, p, e)))?;
        return answered(index);
    };
    let key = PartitionKey {
        topic_id,
        partition: p,
    };
    let lane = shard.producers.lane(key);
    let Ok(_permit) = lane.acquire_permit(1).await else {
        return Err(ProduceError::Wire(WireError::new(
            ErrorCode::Internal,
            "the partition's producer lane is closed",
        )));
    };
    // Checked again under the lane, and the producer state must be
    // complete. The story (cluster_clients.rs, librdkafka): a leader lost
    // office with three batches of one producer in flight; the first was
    // answered "outcome unknown" (its entry was later committed by the
    // next leader), and the two behind it in the lane were then checked
    // against state without it and refused OutOfOrderSequence. librdkafka
    // took that for a gap, bumped its epoch and resent the first batch
    // under the new epoch: stored twice. A deposed leader now refuses them
    // as not leader (nothing written); a new leader refuses idempotent
    // batches until it has applied an entry of its own term, since before
    // that its predecessor's last batches may be in its log but not yet in
    // its producer state (a retry of one would be appended again).
    let v = leader_view(shard, topic, p, group).map_err(ProduceError::Wire)?;
    if !v.leader_ready {
        return Err(ProduceError::Wire(WireError::new(
            ErrorCode::LeaderNotAvailable,
            format!(
                "{topic}/{p}: this node was just elected and has not yet applied its \
                 predecessor's entries; retry"
            ),
        )));
    }
    match shard.producers.check(key, &b) {
        Check::Reject(r) => Err(ProduceError::Refused(r)),
        Check::Duplicate {
            base_offset,
            last_offset,
        } => Ok(Appended {
            base_offset,
            last_offset,
            append_time_ms: -1,
            log_start_offset: node(shard)
                .view(group)
                .map_or(0, |v| v.committed.log_start_offset),
        }),
        Check::Append => {
            // Recorded by the apply hook on every replica, before this
            // answer (acks=all is answered after apply).
            let (index, _term) = propose(Acks::All)
                .await
                .map_err(|e| ProduceError::Wire(propose_error(topic, p, e)))?;
            answered(index)
        }
    }
}

/// Reads committed frames for a fetch (leader only).
pub fn fetch(shard: &Rc<Shard>, items: Vec<FetchItem>) -> Vec<FetchOut> {
    items
        .into_iter()
        .map(|it| {
            let mut o = FetchOut {
                index: it.index,
                ..Default::default()
            };
            let r = group_of(shard, &it.topic, it.partition)
                .and_then(|(_, g)| leader_view(shard, &it.topic, it.partition, g).map(|v| (g, v)));
            match r {
                Err(e) => o.error = Some(e),
                Ok((group, view)) => {
                    o.high_watermark = view.committed.data_end_offset;
                    o.log_start_offset = view.committed.log_start_offset;
                    match node(shard).read_committed(group, it.offset, it.max_bytes) {
                        Ok(read) => {
                            let (records, bytes) = crate::ops::owner::frames_size(&read.frames);
                            shard.count_out(&it.topic, it.partition, records, bytes);
                            o.high_watermark = read.committed.data_end_offset;
                            o.log_start_offset = read.committed.log_start_offset;
                            o.frames = read.frames;
                        }
                        Err(ReadError::OutOfRange {
                            offset,
                            log_start_offset,
                            high_watermark,
                            ..
                        }) => {
                            o.error = Some(WireError::new(
                                ErrorCode::OffsetOutOfRange,
                                format!(
                                    "{}/{}: offset {offset} is outside [{log_start_offset}, {high_watermark}]",
                                    it.topic, it.partition
                                ),
                            ))
                        }
                        Err(e) => {
                            o.error = Some(WireError::new(
                                ErrorCode::PartitionUnavailable,
                                format!("{}/{}: {e}", it.topic, it.partition),
                            ))
                        }
                    }
                }
            }
            // No transactions in cluster mode: everything is stable.
            o.last_stable_offset = o.high_watermark;
            o
        })
        .collect()
}

/// A long-poll wait on one replicated partition: resolves once committed
/// records reach past `offset` (or the group leaves).
pub async fn wait_for(shard: &Rc<Shard>, topic: &str, p: u32, offset: u64) {
    let Ok((_, group)) = group_of(shard, topic, p) else {
        // Nothing to wait on: let the fetch answer (with its error).
        return;
    };
    node(shard).wait_committed(group, offset).await;
}

/// (log start, high watermark) of a partition this node leads.
pub fn offsets(shard: &Shard, topic: &str, p: u32) -> Result<(u64, u64), WireError> {
    let (_, group) = group_of(shard, topic, p)?;
    let v = leader_view(shard, topic, p, group)?;
    Ok((v.committed.log_start_offset, v.committed.data_end_offset))
}

/// Kafka's OffsetForLeaderEpoch on a replicated partition: answered by its
/// leader from the committed log it holds (`Node::epoch_end`).
pub fn epoch_end(shard: &Shard, q: &crate::router::EpochQuery) -> crate::router::EpochAnswer {
    use crate::router::EpochAnswer;
    let (_, group) = match group_of(shard, &q.topic, q.partition) {
        Ok(g) => g,
        Err(e) => return EpochAnswer::Failed(e),
    };
    let v = match leader_view(shard, &q.topic, q.partition, group) {
        Ok(v) => v,
        Err(e) => return EpochAnswer::Failed(e),
    };
    // Looked up before the fencing check (synchronous, from memory), so
    // that a failed lookup is an error of its own.
    let end = match u64::try_from(q.leader_epoch) {
        Ok(requested) => match node(shard).epoch_end(group, requested) {
            Ok(end) => end,
            Err(e) => {
                return EpochAnswer::Failed(WireError::new(
                    ErrorCode::PartitionUnavailable,
                    format!("{}/{}: {e}", q.topic, q.partition),
                ))
            }
        },
        Err(_) => strom_replication::epochs::EpochEnd::Undefined,
    };
    crate::ops::owner::epoch_answer(v.term, q, |_| end)
}

/// The first committed offset whose record timestamp is at or after
/// `ts_ms` (Kafka's ListOffsets by time), from the frames held in memory.
pub fn offset_for_timestamp(
    shard: &Shard,
    topic: &str,
    p: u32,
    ts_ms: i64,
) -> Result<Option<u64>, WireError> {
    let (_, group) = group_of(shard, topic, p)?;
    let v = leader_view(shard, topic, p, group)?;
    let mut from = v.committed.log_start_offset;
    loop {
        let read = node(shard)
            .read_committed(group, from, 1 << 20)
            .map_err(|e| {
                WireError::new(ErrorCode::PartitionUnavailable, format!("{topic}/{p}: {e}"))
            })?;
        if read.frames.is_empty() {
            return Ok(None);
        }
        for f in &read.frames {
            let Ok(records) = strom_flatbuffers::records(f) else {
                continue;
            };
            let Some(h) = strom_flatbuffers::FrameHeader::ref_from(f) else {
                continue;
            };
            for (i, r) in records.enumerate() {
                if r.timestamp_ms >= ts_ms {
                    return Ok(Some(h.base_offset() + i as u64));
                }
            }
            from = h.next_offset();
        }
    }
}

/// What Describe says of a replicated partition: offsets (0 off the
/// leader), the leader as known here, and its epoch.
pub fn describe(shard: &Shard, topic: &str, p: u32, d: &mut PartitionDescription) {
    match group_of(shard, topic, p) {
        Err(e) => {
            d.error = e.code;
            d.message = e.message;
        }
        Ok((_, group)) => {
            if let Some(v) = node(shard).view(group) {
                d.leader_node = v.leader.unwrap_or(0);
                d.leader_epoch = v.term;
                d.log_start_offset = v.committed.log_start_offset;
                d.high_watermark = v.committed.data_end_offset;
            }
        }
    }
}

// ----------------------------------------------------------------- metadata

/// Shard 0, cluster mode: commits a topic change through the metadata
/// group. `meta` is the new metadata computed from the applied one.
pub async fn commit_metadata(shard: &Rc<Shard>, meta: &Metadata) -> Result<(), WireError> {
    let r = shard.replication.as_ref().expect("cluster mode on shard 0");
    let view = r
        .node
        .view(META_GROUP)
        .ok_or_else(|| WireError::new(ErrorCode::Internal, "the metadata group is not open"))?;
    if !view.is_leader {
        return Err(not_controller(view.leader));
    }
    let entry = MetaEntry {
        version: META_ENTRY_VERSION,
        base_index: shard.metadata.borrow().cluster_meta_index,
        next_topic_id: meta.next_topic_id,
        topics: meta.topics.clone(),
    };
    let frame = cluster::meta_entry_frame(&entry)
        .map_err(|e| WireError::new(ErrorCode::InvalidRequest, e))?;
    let fut = r.node.propose(META_GROUP, frame, Acks::All);
    let timeout = async {
        glommio::timer::sleep(Duration::from_millis(META_APPLY_WAIT_MS)).await;
        Err(ShellProposeError::Stopped { group: META_GROUP })
    };
    let (index, _) =
        futures_lite::future::or(fut, timeout)
            .await
            .map_err(|e| match e.leader_hint() {
                Some(l) => not_controller(Some(l)),
                None => WireError::new(
                    ErrorCode::NotController,
                    format!("the topic change was not committed (outcome unknown): {e}"),
                ),
            })?;
    // Wait until this node has applied it (or skipped it as a lost race).
    let deadline = std::time::Instant::now() + Duration::from_millis(META_APPLY_WAIT_MS);
    while r.meta_applied.get() < index {
        let listener = r.meta_event.listen();
        if r.meta_applied.get() >= index {
            break;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(WireError::new(
                ErrorCode::Timeout,
                "the topic change was committed but not yet applied here",
            ));
        }
        futures_lite::future::or(listener, glommio::timer::sleep(left)).await;
    }
    if shard.metadata.borrow().cluster_meta_index != index {
        return Err(WireError::new(
            ErrorCode::NotController,
            "another topic change went first; retry",
        ));
    }
    Ok(())
}

fn not_controller(leader: Option<u64>) -> WireError {
    match leader {
        Some(l) => WireError::new(
            ErrorCode::NotController,
            format!("topic changes go to the controller: node {l}"),
        ),
        None => WireError::new(
            ErrorCode::NotController,
            "no controller at this moment (an election is running); retry",
        ),
    }
}

/// Shard 0, cluster mode: applies committed metadata entries in log
/// order, for the life of the shard (see `crate::cluster`).
pub async fn apply_metadata(shard: Rc<Shard>, entries: cluster::MetaEntries) {
    while let Some((index, frame)) = entries.recv().await {
        let r = shard.replication.as_ref().expect("cluster mode");
        let current = shard.metadata.borrow().cluster_meta_index;
        if index > current {
            match cluster::decode_meta_entry(&frame) {
                Err(e) => {
                    // Never expected: the group holds only our entries.
                    shard.metrics().count_background_error("metadata_entry");
                    tracing::error!(index, error = %e, "a metadata entry does not decode; skipped");
                }
                Ok(entry) if entry.base_index != current => {
                    tracing::debug!(
                        index,
                        base = entry.base_index,
                        current,
                        "metadata entry lost a race; skipped"
                    );
                }
                Ok(entry) => apply_entry(&shard, index, entry).await,
            }
        }
        r.meta_applied.set(r.meta_applied.get().max(index));
        r.meta_event.notify(usize::MAX);
    }
}

async fn apply_entry(shard: &Rc<Shard>, index: u64, entry: MetaEntry) {
    let before = shard.metadata.borrow().clone();
    assert!(
        index > before.cluster_meta_index,
        "metadata entry {index} applied over version {}",
        before.cluster_meta_index
    );
    let mut meta = before.clone();
    meta.next_topic_id = entry.next_topic_id;
    meta.topics = entry.topics;
    meta.cluster_meta_index = index;
    meta.shard_count = shard.shards as u32;
    let data_dir = shard.data_dir.clone();
    let to_store = meta.clone();
    let stored = glommio::executor()
        .spawn_blocking(move || metadata::store(&data_dir, &to_store))
        .await;
    if let Err(e) = stored {
        // The entry is committed: this node must apply it or stop. Stop,
        // so that a restart applies it again from the log.
        tracing::error!(index, error = %e, "storing applied metadata failed; stopping");
        shard.metrics().count_background_error("metadata_store");
        shard
            .shared
            .shutdown
            .store(true, std::sync::atomic::Ordering::SeqCst);
        return;
    }
    let ops: Vec<(usize, Op)> = (0..shard.shards)
        .map(|s| (s, Op::Apply(meta.clone())))
        .collect();
    let n = ops.len();
    let rx = fan_out(shard, ops);
    for _ in 0..n {
        let _ = rx.recv().await;
    }
    for (name, t) in &before.topics {
        if meta.topics.get(name).map(|n| n.id) != Some(t.id) {
            let dir = shard.data_dir.join("topics").join(name);
            let _ = glommio::executor()
                .spawn_blocking(move || std::fs::remove_dir(&dir))
                .await;
        }
    }
    crate::ops::owner::log_topic_changes(&before, &meta);
}

/// Leader and leader epoch of each partition of `topics` (name, partition
/// count), asked of the shards that own them; (0, 0) where none is known.
pub async fn leaders(
    shard: &Rc<Shard>,
    topics: &[(String, u64, u32)],
) -> std::collections::HashMap<(String, u32), (u64, u64)> {
    let placement = shard.placement();
    let mut per_shard: std::collections::BTreeMap<usize, Vec<(String, u32)>> =
        std::collections::BTreeMap::new();
    for (name, id, partitions) in topics {
        for p in 0..*partitions {
            per_shard
                .entry(placement.partition_owner(*id, p))
                .or_default()
                .push((name.clone(), p));
        }
    }
    let mut asked: Vec<(usize, Vec<(String, u32)>)> = per_shard.into_iter().collect();
    let ops: Vec<(usize, Op)> = asked
        .iter()
        .map(|(s, items)| {
            (
                *s,
                Op::Describe {
                    items: items.clone(),
                },
            )
        })
        .collect();
    let n = ops.len();
    let rx = fan_out(shard, ops);
    let mut out = std::collections::HashMap::new();
    for (target, reply) in crate::ops::collect(&rx, n, None).await {
        let Some(pos) = asked.iter().position(|(s, _)| *s == target) else {
            continue;
        };
        let (_, items) = asked.swap_remove(pos);
        if let crate::router::Reply::Describe(ds) = reply {
            for ((name, p), d) in items.into_iter().zip(ds) {
                out.insert((name, p), (d.leader_node, d.leader_epoch));
            }
        }
    }
    out
}

/// The metadata group's leader as shard 0 knows it (the controller).
pub fn controller(shard: &Shard) -> Option<u64> {
    shard.shared.controller()
}

/// How often shard 0 publishes the controller for the other shards.
pub const CONTROLLER_PUBLISH_MS: u64 = 20;

/// Shard 0, cluster mode: publishes the metadata group's leader in
/// `Shared::meta_leader` until shutdown.
pub async fn publish_controller(shard: Rc<Shard>) {
    let r = shard.replication.as_ref().expect("cluster mode");
    while !shard
        .shared
        .shutdown
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        let leader = r.node.view(META_GROUP).and_then(|v| v.leader).unwrap_or(0);
        shard
            .shared
            .meta_leader
            .store(leader, std::sync::atomic::Ordering::Relaxed);
        glommio::timer::sleep(Duration::from_millis(CONTROLLER_PUBLISH_MS)).await;
    }
}
