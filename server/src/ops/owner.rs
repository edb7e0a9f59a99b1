//! Operations, owner side: what a shard does with an [`Op`] for partitions
//! (or a group, or, on shard 0, the metadata) it owns. Runs the same whether
//! the op came from a local connection or over the mesh.

use crate::config::{ProduceFault, PRODUCE_FAULT_ENV};
use crate::engine::{Durability, EngineError};
use crate::error::{engine_to_wire, WireError};
use crate::limits::*;
use crate::metadata::{self, Metadata, TopicMeta};
use crate::ops::fan_out;
use crate::producers::{Check, PartitionKey, ProducerBatch};
use crate::router::{
    AdminOp, Appended, FetchItem, FetchOut, Op, ProduceError, ProduceItem, Produced, Reply,
    TxnMarker,
};
use crate::shard::Shard;
use crate::shutdown::first_of;
use crate::waits::WaitId;
use bytes::BytesMut;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;
use strom_flatbuffers::protocol::*;

/// Runs `op` on this shard. The rare operations' futures are boxed so that
/// the future of every call stays as small as the produce and fetch path
/// (it is copied into each task that runs it).
pub async fn execute(shard: &Rc<Shard>, op: Op) -> Reply {
    match op {
        Op::Produce { items, durability } => produce(shard, items, durability).await,
        Op::Fetch { items } => Reply::Fetch(Box::pin(fetch(shard, items)).await),
        Op::Wait { id, items, wait_ms } => {
            Box::pin(wait(shard, id, items, wait_ms)).await;
            Reply::Done
        }
        Op::CancelWait { id } => {
            shard.router.waits.cancel(id);
            Reply::Done
        }
        Op::ListOffsets {
            items,
            read_committed,
        } => Reply::ListOffsets(Box::pin(list_offsets(shard, items, read_committed)).await),
        Op::TxnMarkers { items } => Reply::TxnMarkers(Box::pin(txn_markers(shard, items)).await),
        Op::Txn(op) => {
            if shard.id != 0 {
                return Reply::Failed(WireError::new(
                    ErrorCode::Internal,
                    "transaction op off shard 0",
                ));
            }
            Reply::Txn(Box::pin(shard.txn.execute(shard, op)).await)
        }
        Op::Describe { items } => Reply::Describe(describe(shard, items)),
        Op::OffsetCommit(r) => Reply::OffsetCommit(Box::pin(offset_commit(shard, r)).await),
        Op::OffsetFetch(r) => match Box::pin(offset_fetch(shard, r)).await {
            Ok(r) => Reply::OffsetFetch(r),
            Err(e) => Reply::Failed(e),
        },
        Op::Admin(a) => {
            if shard.id != 0 {
                return Reply::Failed(WireError::new(ErrorCode::Internal, "admin op off shard 0"));
            }
            Reply::Topics(Box::pin(admin(shard, a)).await)
        }
        Op::Apply(m) => {
            Box::pin(shard.apply(m)).await;
            // Idempotent producer state goes with its topic.
            shard.producers.retain_topics(&shard.metadata.borrow());
            Reply::Done
        }
        Op::Group(op) => Reply::Group(Box::pin(shard.groups.execute(op)).await),
        Op::DeleteRecords { items } => {
            Reply::DeleteRecords(Box::pin(delete_records(shard, items)).await)
        }
        Op::Metrics => Reply::Metrics(Box::new(shard.metrics_snapshot())),
        Op::EpochEnds { items } => Reply::EpochEnds(epoch_ends(shard, items)),
    }
}

/// Kafka's OffsetForLeaderEpoch for partitions this shard owns. A single
/// node's partitions have one leader epoch, 0, for their whole life (what
/// Metadata says); a replicated one's epochs are its Raft terms.
fn epoch_ends(
    shard: &Rc<Shard>,
    items: Vec<(usize, crate::router::EpochQuery)>,
) -> Vec<(usize, crate::router::EpochAnswer)> {
    use crate::router::EpochAnswer;
    items
        .into_iter()
        .map(|(i, q)| {
            let answer = if shard.replication.is_some() {
                crate::ops::cluster::epoch_end(shard, &q)
            } else {
                match shard.partition(&q.topic, q.partition) {
                    Err(e) => EpochAnswer::Failed(e),
                    Ok(part) => epoch_answer(0, &q, |requested| {
                        use strom_replication::epochs::EpochEnd;
                        if requested == 0 {
                            EpochEnd::Known {
                                epoch: 0,
                                end_offset: part.offsets().high_watermark,
                            }
                        } else {
                            EpochEnd::Undefined
                        }
                    }),
                }
            };
            (i, answer)
        })
        .collect()
}

/// The answer of a leader in epoch `leader_epoch` to `q`: the client's
/// idea of the current epoch is checked first (Kafka's fencing), then
/// `end` says where the asked epoch ended.
pub fn epoch_answer(
    leader_epoch: u64,
    q: &crate::router::EpochQuery,
    end: impl FnOnce(u64) -> strom_replication::epochs::EpochEnd,
) -> crate::router::EpochAnswer {
    use crate::router::EpochAnswer;
    use strom_replication::epochs::EpochEnd;
    if let Ok(current) = u64::try_from(q.current_leader_epoch) {
        if current < leader_epoch {
            return EpochAnswer::Fenced { leader_epoch };
        }
        if current > leader_epoch {
            return EpochAnswer::UnknownEpoch { leader_epoch };
        }
    }
    let undefined = EpochAnswer::Ended {
        leader_epoch: -1,
        end_offset: -1,
    };
    let Ok(requested) = u64::try_from(q.leader_epoch) else {
        return undefined;
    };
    match end(requested) {
        EpochEnd::Known { epoch, end_offset } => EpochAnswer::Ended {
            leader_epoch: i32::try_from(epoch).unwrap_or(i32::MAX),
            end_offset: i64::try_from(end_offset).unwrap_or(i64::MAX),
        },
        EpochEnd::Undefined => undefined,
    }
}

/// Appends each partition's batches in request order; partitions run
/// concurrently. The one produce of every protocol: a batch of an
/// idempotent producer is checked and recorded under its partition's lane.
async fn produce(shard: &Rc<Shard>, items: Vec<ProduceItem>, durability: Durability) -> Reply {
    match shard.shared.produce_fault {
        Some(ProduceFault::Fail { shard: s }) if s == shard.id => {
            return Reply::Failed(WireError::new(
                ErrorCode::Internal,
                format!("shard {s}: injected fault ({PRODUCE_FAULT_ENV})"),
            ));
        }
        Some(ProduceFault::Delay { shard: s, delay_ms }) if s == shard.id => {
            glommio::timer::sleep(Duration::from_millis(delay_ms)).await;
        }
        _ => {}
    }
    let mut groups: BTreeMap<(String, u32), Vec<ProduceItem>> = BTreeMap::new();
    for it in items {
        groups
            .entry((it.topic.clone(), it.partition))
            .or_default()
            .push(it);
    }
    // One partition (the common case) runs in this task; more run as tasks
    // of their own, concurrently.
    if groups.len() == 1 {
        let ((topic, p), items) = groups.pop_first().expect("one group");
        return Reply::Produce(produce_partition(shard.clone(), topic, p, items, durability).await);
    }
    let mut tasks = Vec::with_capacity(groups.len());
    for ((topic, p), items) in groups {
        tasks.push(glommio::spawn_local(produce_partition(
            shard.clone(),
            topic,
            p,
            items,
            durability,
        )));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.extend(t.await);
    }
    Reply::Produce(out)
}

/// Appends one partition's batches in request order (in cluster mode:
/// proposes them, `ops::cluster`).
async fn produce_partition(
    shard: Rc<Shard>,
    topic: String,
    p: u32,
    items: Vec<ProduceItem>,
    durability: Durability,
) -> Vec<(usize, Produced)> {
    if shard.replication.is_some() {
        // Boxed: the single-node path's future stays as small as before.
        return Box::pin(crate::ops::cluster::produce_partition(
            shard, topic, p, items, durability,
        ))
        .await;
    }
    let mut out = Vec::with_capacity(items.len());
    let opened = open_partition(&shard, &topic, p);
    let compacted = shard.metadata.borrow().topics.get(&topic).is_some_and(|t| {
        crate::metadata::cleanup_policy(&t.configs)
            .is_ok_and(|c| c != crate::metadata::CleanupPolicy::Delete)
    });
    for it in items {
        let r = match &opened {
            Err(e) => Err(ProduceError::Wire(e.clone())),
            Ok(_) if compacted && keyless_record(&it.frame).is_some() => {
                let i = keyless_record(&it.frame).unwrap_or(0);
                Err(ProduceError::Refused(crate::producers::Refusal {
                    kind: crate::producers::RefusalKind::RecordWithoutKey,
                    message: format!(
                        "topic {topic:?} is compacted (cleanup.policy): record {i} of the batch has no key; every record of a compacted topic needs one"
                    ),
                }))
            }
            Ok((key, part)) => {
                produce_one(
                    &shard,
                    &topic,
                    p,
                    *key,
                    part,
                    it.frame,
                    it.producer,
                    durability,
                )
                .await
            }
        };
        out.push((it.index, r));
    }
    out
}

/// The index of the first record without a key in a produced frame, if
/// any. A frame the FlatBuffers verifier refuses answers `None`: the
/// append refuses it with the precise error.
fn keyless_record(frame: &[u8]) -> Option<usize> {
    let recs = strom_flatbuffers::frame::records_served(frame).ok()?;
    recs.enumerate()
        .find(|(_, r)| r.key.is_none())
        .map(|(i, _)| i)
}

/// The open partition and the key of its topic incarnation; a partition
/// being reopened after a failure is unavailable (retriable), as for every
/// other operation.
fn open_partition(
    shard: &Shard,
    topic: &str,
    p: u32,
) -> Result<(PartitionKey, crate::engine::Partition), WireError> {
    let (part, topic_id) = shard.partition_and_topic_id(topic, p)?;
    let key = PartitionKey {
        topic_id,
        partition: p,
    };
    Ok((key, part))
}

#[allow(clippy::too_many_arguments)]
async fn produce_one(
    shard: &Rc<Shard>,
    topic: &str,
    p: u32,
    key: PartitionKey,
    part: &crate::engine::Partition,
    frame: BytesMut,
    producer: Option<ProducerBatch>,
    durability: Durability,
) -> Produced {
    let fail = |e: crate::engine::EngineError| ProduceError::Wire(shard.engine_error(topic, p, &e));
    let bytes = frame.len() as u64;
    let Some(b) = producer else {
        let info = part.append(frame, durability).await.map_err(fail)?;
        shard.count_in(topic, p, info.last_offset + 1 - info.base_offset, bytes);
        return Ok(Appended {
            base_offset: info.base_offset,
            last_offset: info.last_offset,
            append_time_ms: info.append_time_ms,
            log_start_offset: part.offsets().log_start_offset,
        });
    };
    // Check, append (to memory) and record under the lane, so that batches
    // of one producer reach the log in sequence order; wait for durability
    // outside it, so that the lane never waits on a disk.
    // What expiration compares, as Kafka's: the batch's largest timestamp
    // (the frame header's, so that a replay of the log records the same).
    let max_timestamp_ms = strom_flatbuffers::FrameHeader::ref_from(&frame)
        .map_or(i64::MIN, |h| h.max_timestamp_ms.get());
    // A transactional batch (attribute bit 4; the edge set it): its
    // header is kept to fold into the partition's transactions once the
    // append has given it an offset.
    let mut txn_header: Option<strom_flatbuffers::FrameHeader> =
        strom_flatbuffers::FrameHeader::ref_from(&frame)
            .filter(|h| h.is_transactional())
            .copied();
    let lane = shard.producers.lane(key);
    let (base, last, append_time_ms) = {
        let Ok(_permit) = lane.acquire_permit(1).await else {
            return Err(ProduceError::Wire(WireError::new(
                ErrorCode::Internal,
                "the partition's producer lane is closed",
            )));
        };
        match shard.producers.check(key, &b) {
            Check::Reject(r) => return Err(ProduceError::Refused(r)),
            Check::Duplicate {
                base_offset,
                last_offset,
            } => {
                tracing::debug!(
                    shard = shard.id,
                    topic,
                    partition = p,
                    producer_id = b.producer_id,
                    epoch = b.epoch,
                    first_seq = b.first_seq,
                    base_offset,
                    "idempotent batch answered as a duplicate"
                );
                (base_offset, last_offset, -1)
            }
            Check::Append => {
                if txn_header.is_some() && !shard.producers.txn_admits(key, b.producer_id) {
                    return Err(ProduceError::Wire(WireError::new(
                        ErrorCode::InvalidRequest,
                        format!(
                            "{topic}/{p}: {} transactional producers are open here already",
                            crate::engine::limits::TXN_SNAPSHOT_PRODUCERS_MAX
                        ),
                    )));
                }
                let info = part
                    .append(frame, Durability::Buffered)
                    .await
                    .map_err(fail)?;
                if let Some(h) = txn_header.as_mut() {
                    h.base_offset = info.base_offset.into();
                    shard.producers.observe_txn(key, h);
                }
                let records = info.last_offset + 1 - info.base_offset;
                shard.count_in(topic, p, records, bytes);
                shard.producers.record(
                    key,
                    &b,
                    info.base_offset,
                    info.last_offset,
                    max_timestamp_ms,
                );
                (info.base_offset, info.last_offset, info.append_time_ms)
            }
        }
    };
    // The acknowledgement level the batch asked for, as for any batch
    // (a duplicate's waits too: its first attempt may still be unwritten).
    match durability {
        Durability::Durable => part.sync_to(last + 1).await.map_err(fail)?,
        Durability::Written => part.write_to(last + 1).await.map_err(fail)?,
        Durability::Buffered => {}
    }
    Ok(Appended {
        base_offset: base,
        last_offset: last,
        append_time_ms,
        log_start_offset: part.offsets().log_start_offset,
    })
}

/// Writes each transaction marker (a control frame, `docs/format.md`) into
/// its partition under the partition's producer lane, folds it into the
/// partition's transactions, then waits until it is durable. A marker for
/// a partition whose topic is gone is done (nothing is left to decide); a
/// marker older than the producer's last marker there is refused.
async fn txn_markers(shard: &Rc<Shard>, items: Vec<TxnMarker>) -> Vec<Result<(), WireError>> {
    let mut out = Vec::with_capacity(items.len());
    for m in items {
        out.push(write_marker(shard, &m).await);
    }
    out
}

async fn write_marker(shard: &Rc<Shard>, m: &TxnMarker) -> Result<(), WireError> {
    if shard.replication.is_some() {
        return Err(WireError::new(
            ErrorCode::CoordinatorNotAvailable,
            "transactions are not available in cluster mode",
        ));
    }
    if !shard.metadata.borrow().topics.contains_key(&m.topic) {
        return Ok(());
    }
    let (key, part) = open_partition(shard, &m.topic, m.partition)?;
    let mut frame = crate::txn::marker_frame(m.producer_id, m.producer_epoch, m.commit);
    let mut header = *strom_flatbuffers::FrameHeader::ref_from(&frame).expect("a built frame");
    let lane = shard.producers.lane(key);
    let last = {
        let Ok(_permit) = lane.acquire_permit(1).await else {
            return Err(WireError::new(
                ErrorCode::Internal,
                "the partition's producer lane is closed",
            ));
        };
        let fenced = shard
            .producers
            .txn_fenced(key, m.producer_id, m.producer_epoch);
        if let Some(newer) = fenced {
            return Err(WireError::new(
                ErrorCode::InvalidProducerEpoch,
                format!(
                    "{}/{}: marker of producer {} epoch {} is older than epoch {newer}",
                    m.topic, m.partition, m.producer_id, m.producer_epoch
                ),
            ));
        }
        let bytes = frame.len() as u64;
        let info = part
            .append(std::mem::take(&mut frame), Durability::Buffered)
            .await
            .map_err(|e| shard.engine_error(&m.topic, m.partition, &e))?;
        shard.count_in(&m.topic, m.partition, 1, bytes);
        header.base_offset = info.base_offset.into();
        shard.producers.observe_txn(key, &header);
        info.last_offset
    };
    part.sync_to(last + 1)
        .await
        .map_err(|e| shard.engine_error(&m.topic, m.partition, &e))
}

/// Kafka's DeleteRecords on this shard's partitions: each log start moves
/// to the offset (-1: the high watermark); beyond the high watermark is
/// out of range.
async fn delete_records(
    shard: &Rc<Shard>,
    items: Vec<(usize, String, u32, i64)>,
) -> Vec<(usize, Result<u64, WireError>)> {
    let mut out = Vec::with_capacity(items.len());
    if shard.replication.is_some() {
        for (i, topic, p, _) in items {
            out.push((
                i,
                Err(WireError::new(
                    ErrorCode::InvalidRequest,
                    format!(
                        "{topic}/{p}: DeleteRecords on a replicated partition is not built yet"
                    ),
                )),
            ));
        }
        return out;
    }
    for (i, topic, p, offset) in items {
        let r = match shard.partition(&topic, p) {
            Err(e) => Err(e),
            Ok(part) => {
                let hw = part.offsets().high_watermark;
                let target = if offset < 0 { hw } else { offset as u64 };
                if target > hw {
                    Err(WireError::new(
                        ErrorCode::OffsetOutOfRange,
                        format!("{topic}/{p}: offset {target} is past the high watermark {hw}"),
                    ))
                } else {
                    part.delete_records_before(target)
                        .await
                        .map_err(|e| engine_to_wire(&topic, p, &e))
                }
            }
        };
        out.push((i, r));
    }
    out
}

async fn fetch(shard: &Rc<Shard>, items: Vec<FetchItem>) -> Vec<FetchOut> {
    if shard.replication.is_some() {
        return crate::ops::cluster::fetch(shard, items);
    }
    let mut out = Vec::with_capacity(items.len());
    for it in items {
        let mut o = FetchOut {
            index: it.index,
            ..Default::default()
        };
        match shard.partition(&it.topic, it.partition) {
            Err(e) => o.error = Some(e),
            Ok(part) => match read_past_gaps(&part, it.offset, it.max_bytes).await {
                Ok(b) => {
                    o.high_watermark = b.high_watermark;
                    o.log_start_offset = b.log_start_offset;
                    o.frames = b.frames;
                    // The transactions as of now, after the read: a frame
                    // below this LSO belongs to a decided transaction
                    // whose abort (if it aborted) is already indexed.
                    let key = shard.topic_id(&it.topic).map(|topic_id| PartitionKey {
                        topic_id,
                        partition: it.partition,
                    });
                    let lso = key.map_or(b.high_watermark, |k| {
                        shard.producers.last_stable_offset(k, b.high_watermark)
                    });
                    o.last_stable_offset = lso;
                    if it.read_committed {
                        o.frames.retain(|f| {
                            strom_flatbuffers::FrameHeader::ref_from(f)
                                .is_some_and(|h| h.base_offset() < lso)
                        });
                        if let Some(k) = key {
                            o.aborted = shard.producers.aborted_in(k, it.offset, lso);
                        }
                    }
                    let (records, bytes) = frames_size(&o.frames);
                    shard.count_out(&it.topic, it.partition, records, bytes);
                }
                Err(e) => {
                    let off = part.offsets();
                    o.high_watermark = off.high_watermark;
                    o.last_stable_offset = off.high_watermark;
                    o.log_start_offset = off.log_start_offset;
                    if let EngineError::OffsetOutOfRange { .. } = e {
                        o.error = Some(WireError::new(
                            ErrorCode::OffsetOutOfRange,
                            format!(
                                "{}/{}: offset {} is outside [{}, {}]",
                                it.topic,
                                it.partition,
                                it.offset,
                                off.log_start_offset,
                                off.high_watermark
                            ),
                        ));
                    } else {
                        o.error = Some(engine_to_wire(&it.topic, it.partition, &e));
                    }
                }
            },
        }
        out.push(o);
    }
    out
}

/// A partition read that does not end in the offsets of removed records:
/// while no frame read so far holds a record at or past `offset` (only
/// compacted frames can: empty gap frames the log cleaner left, or cleaned
/// frames whose remaining records lie below `offset`), the read goes on
/// from the last one's end (up to
/// [`FETCH_GAP_READS_MAX`] reads). A consumer answered with gap frames only
/// could not tell them from "nothing yet": librdkafka asked again from
/// the same offset with ever larger limits and gave up.
async fn read_past_gaps(
    part: &crate::engine::Partition,
    offset: u64,
    max_bytes: usize,
) -> Result<crate::engine::ReadBatch, EngineError> {
    let is_gap = |f: &bytes::Bytes| {
        strom_flatbuffers::FrameHeader::ref_from(f).is_some_and(|h| {
            h.is_compacted()
                && strom_flatbuffers::frame::records_served(f)
                    .is_ok_and(|mut rs| rs.all(|r| r.offset < offset))
        })
    };
    let mut b = part.read(offset, max_bytes).await?;
    for _ in 0..FETCH_GAP_READS_MAX {
        let Some(last) = b.frames.last() else {
            break;
        };
        if !b.frames.iter().all(is_gap) {
            break;
        }
        let next =
            strom_flatbuffers::FrameHeader::ref_from(last).map_or(u64::MAX, |h| h.next_offset());
        if next >= b.high_watermark {
            break;
        }
        let more = part.read(next, max_bytes).await?;
        b.high_watermark = more.high_watermark;
        b.frames.extend(more.frames);
    }
    Ok(b)
}

/// Records and bytes of stored frames (as read from a partition).
pub fn frames_size(frames: &[bytes::Bytes]) -> (u64, u64) {
    frames.iter().fold((0, 0), |(r, b), f| {
        let n = strom_flatbuffers::FrameHeader::ref_from(f)
            .map(|h| {
                if h.is_compacted() {
                    // Cleaned: fewer records than offsets.
                    u64::from(h.record_count.get())
                } else {
                    h.next_offset().saturating_sub(h.base_offset())
                }
            })
            .unwrap_or(0);
        (r + n, b + f.len() as u64)
    })
}

/// A long-poll wait, registered in `shard.router.waits` while it runs so
/// that its fetch can cancel it (see `crate::waits`).
async fn wait(shard: &Rc<Shard>, id: WaitId, items: Vec<(String, u32, u64)>, wait_ms: u64) {
    let Some((guard, cancelled)) = shard.router.waits.register(id) else {
        return;
    };
    shard
        .metrics()
        .long_poll_waits
        .set(shard.router.waits.live() as u64);
    let mut futs: Vec<Pin<Box<dyn Future<Output = ()>>>> = Vec::with_capacity(items.len() + 3);
    futs.push(Box::pin(async move {
        let _closed = cancelled.recv().await;
    }));
    for (topic, p, offset) in items {
        if shard.replication.is_some() {
            let shard = shard.clone();
            futs.push(Box::pin(async move {
                crate::ops::cluster::wait_for(&shard, &topic, p, offset).await
            }));
        } else if let Ok(part) = shard.partition(&topic, p) {
            futs.push(Box::pin(async move { part.wait_for(offset).await }));
        }
    }
    futs.push(Box::pin(glommio::timer::sleep(Duration::from_millis(
        wait_ms,
    ))));
    futs.push(Box::pin(shard.shutdown.wait()));
    first_of(futs).await;
    drop(guard);
    shard
        .metrics()
        .long_poll_waits
        .set(shard.router.waits.live() as u64);
}

async fn list_offsets(
    shard: &Rc<Shard>,
    items: Vec<(usize, ListOffsetsPartition)>,
    read_committed: bool,
) -> Vec<(usize, ListOffsetsResult)> {
    let mut out = Vec::with_capacity(items.len());
    for (i, p) in items {
        let mut res = ListOffsetsResult {
            topic: p.topic.clone(),
            partition: p.partition,
            offset: -1,
            ..Default::default()
        };
        let found: Result<i64, WireError> = if shard.replication.is_some() {
            use crate::ops::cluster as c;
            match p.timestamp {
                LIST_OFFSETS_EARLIEST => {
                    c::offsets(shard, &p.topic, p.partition).map(|o| o.0 as i64)
                }
                LIST_OFFSETS_LATEST => c::offsets(shard, &p.topic, p.partition).map(|o| o.1 as i64),
                ts if ts < 0 => Err(WireError::new(
                    ErrorCode::InvalidRequest,
                    format!("timestamp {ts}: use -2 (earliest), -1 (latest) or a time in ms"),
                )),
                ts => c::offset_for_timestamp(shard, &p.topic, p.partition, ts)
                    .map(|o| o.map_or(-1, |o| o as i64)),
            }
        } else {
            match shard.partition(&p.topic, p.partition) {
                Err(e) => Err(e),
                Ok(part) => match p.timestamp {
                    LIST_OFFSETS_EARLIEST => Ok(part.offsets().log_start_offset as i64),
                    LIST_OFFSETS_LATEST => {
                        let hw = part.offsets().high_watermark;
                        let key = shard.topic_id(&p.topic).map(|topic_id| PartitionKey {
                            topic_id,
                            partition: p.partition,
                        });
                        Ok(match key {
                            Some(k) if read_committed => {
                                shard.producers.last_stable_offset(k, hw) as i64
                            }
                            _ => hw as i64,
                        })
                    }
                    ts if ts < 0 => Err(WireError::new(
                        ErrorCode::InvalidRequest,
                        format!("timestamp {ts}: use -2 (earliest), -1 (latest) or a time in ms"),
                    )),
                    ts => match part.offset_for_timestamp(ts).await {
                        Ok(Some(o)) => Ok(o as i64),
                        Ok(None) => Ok(-1),
                        Err(e) => Err(engine_to_wire(&p.topic, p.partition, &e)),
                    },
                },
            }
        };
        match found {
            Ok(o) => res.offset = o,
            Err(e) => {
                res.error = e.code;
                res.message = e.message;
            }
        }
        out.push((i, res));
    }
    out
}

fn describe(shard: &Rc<Shard>, items: Vec<(String, u32)>) -> Vec<PartitionDescription> {
    items
        .into_iter()
        .map(|(topic, p)| {
            let mut d = PartitionDescription {
                partition: p,
                owner_shard: shard.id as u16,
                ..Default::default()
            };
            if shard.replication.is_some() {
                crate::ops::cluster::describe(shard, &topic, p, &mut d);
                return d;
            }
            match shard.partition(&topic, p) {
                Ok(part) => {
                    let o = part.offsets();
                    d.log_start_offset = o.log_start_offset;
                    d.high_watermark = o.high_watermark;
                }
                Err(e) => {
                    d.error = e.code;
                    d.message = e.message;
                }
            }
            d
        })
        .collect()
}

async fn offset_commit(shard: &Rc<Shard>, r: OffsetCommitRequest) -> OffsetCommitResponse {
    crate::group::native::commit_local(shard, r).await
}

async fn offset_fetch(
    shard: &Rc<Shard>,
    r: OffsetFetchRequest,
) -> Result<OffsetFetchResponse, WireError> {
    crate::group::native::fetch_local(shard, r).await
}

/// The names an admin operation acts on, in request order.
fn admin_names(op: &AdminOp) -> Vec<&str> {
    match op {
        AdminOp::CreateTopics(r) => r.topics.iter().map(|t| t.name.as_str()).collect(),
        AdminOp::DeleteTopics(r) => r.names.iter().map(String::as_str).collect(),
        AdminOp::CreatePartitions(r) => r.topics.iter().map(|t| t.name.as_str()).collect(),
        AdminOp::AlterConfigs(r) => r.iter().map(|t| t.topic.as_str()).collect(),
    }
}

/// `e` for every topic `op` names (a request never gets an empty answer).
fn refused_all(op: &AdminOp, e: WireError) -> TopicResults {
    let mut results: Vec<TopicResult> = admin_names(op)
        .into_iter()
        .map(|n| result(n, Err(e.clone())))
        .collect();
    if results.is_empty() {
        results.push(result("", Err(e)));
    }
    TopicResults { results }
}

fn result(name: &str, e: Result<(), WireError>) -> TopicResult {
    match e {
        Ok(()) => TopicResult {
            name: name.to_owned(),
            ..Default::default()
        },
        Err(e) => TopicResult {
            name: name.to_owned(),
            error: e.code,
            message: e.message,
        },
    }
}

/// One line per topic created, deleted or grown.
pub(crate) fn log_topic_changes(before: &Metadata, after: &Metadata) {
    for (name, t) in &after.topics {
        match before.topics.get(name) {
            None => tracing::info!(
                topic = %name,
                partitions = t.partitions,
                configs = ?t.configs,
                "topic created"
            ),
            Some(old) if old.partitions != t.partitions => tracing::info!(
                topic = %name,
                from = old.partitions,
                to = t.partitions,
                "partitions added"
            ),
            Some(_) => {}
        }
    }
    for (name, t) in &before.topics {
        if !after.topics.contains_key(name) {
            tracing::info!(topic = %name, partitions = t.partitions, "topic deleted");
        }
    }
}

fn create_one(meta: &mut Metadata, t: CreateTopic) -> Result<(), WireError> {
    metadata::validate_topic_name(&t.name)?;
    metadata::validate_partition_count(t.partitions)?;
    let mut configs = BTreeMap::new();
    for (k, v) in t.configs {
        if configs.insert(k.clone(), v).is_some() {
            return Err(WireError::new(
                ErrorCode::InvalidConfig,
                format!("config {k} given twice"),
            ));
        }
    }
    metadata::log_config(&configs)?;
    if meta.topics.contains_key(&t.name) {
        return Err(WireError::new(
            ErrorCode::TopicAlreadyExists,
            format!("topic {:?} already exists", t.name),
        ));
    }
    if meta.topics.len() >= TOPICS_MAX {
        return Err(WireError::new(
            ErrorCode::InvalidRequest,
            format!("the broker holds {TOPICS_MAX} topics already"),
        ));
    }
    let id = meta.next_topic_id;
    meta.next_topic_id += 1;
    meta.topics.insert(
        t.name.clone(),
        TopicMeta {
            name: t.name,
            id,
            partitions: t.partitions,
            configs,
        },
    );
    Ok(())
}

/// Applies one topic's config changes to `meta` after validating the
/// result as a whole (the same checks as at creation).
fn alter_one(meta: &mut Metadata, a: &crate::router::AlterTopicConfigs) -> Result<(), WireError> {
    let t = meta
        .topics
        .get_mut(&a.topic)
        .ok_or_else(|| WireError::unknown_topic(&a.topic))?;
    let mut configs = if a.replace {
        BTreeMap::new()
    } else {
        t.configs.clone()
    };
    for (k, v) in &a.changes {
        match v {
            Some(v) => {
                configs.insert(k.clone(), v.clone());
            }
            None => {
                configs.remove(k);
            }
        }
    }
    metadata::log_config(&configs)?;
    t.configs = configs;
    Ok(())
}

/// Shard 0 only: validates, persists, then broadcasts a metadata change and
/// answers once every shard has applied it.
async fn admin(shard: &Rc<Shard>, op: AdminOp) -> TopicResults {
    let Ok(_guard) = shard.admin_lock.acquire_permit(1).await else {
        // The lock closes only at shutdown: every topic named gets that error.
        tracing::warn!(shard = shard.id, "admin request refused: shutting down");
        return refused_all(
            &op,
            WireError::new(ErrorCode::ShuttingDown, "the server is shutting down"),
        );
    };
    let mut meta = shard.metadata.borrow().clone();
    let before = meta.clone();
    let mut results = Vec::new();
    let mut deleted = Vec::new();
    let too_many = |n: usize| {
        (n > TOPICS_PER_REQUEST_MAX).then(|| {
            WireError::new(
                ErrorCode::InvalidRequest,
                format!("{n} topics named, the limit is {TOPICS_PER_REQUEST_MAX}"),
            )
        })
    };
    match op {
        AdminOp::CreateTopics(r) => {
            if let Some(e) = too_many(r.topics.len()) {
                return TopicResults {
                    results: vec![result("", Err(e))],
                };
            }
            for t in r.topics {
                let name = t.name.clone();
                results.push(result(&name, create_one(&mut meta, t)));
            }
        }
        AdminOp::DeleteTopics(r) => {
            if let Some(e) = too_many(r.names.len()) {
                return TopicResults {
                    results: vec![result("", Err(e))],
                };
            }
            for name in r.names {
                let res = if meta.topics.remove(&name).is_some() {
                    deleted.push(name.clone());
                    Ok(())
                } else {
                    Err(WireError::unknown_topic(&name))
                };
                results.push(result(&name, res));
            }
        }
        AdminOp::CreatePartitions(r) => {
            if let Some(e) = too_many(r.topics.len()) {
                return TopicResults {
                    results: vec![result("", Err(e))],
                };
            }
            for inc in r.topics {
                let res = match meta.topics.get_mut(&inc.name) {
                    None => Err(WireError::unknown_topic(&inc.name)),
                    Some(t) if inc.total <= t.partitions => Err(WireError::new(
                        ErrorCode::InvalidPartitions,
                        format!(
                            "topic {:?} has {} partitions; the new total {} must be larger",
                            inc.name, t.partitions, inc.total
                        ),
                    )),
                    Some(t) => metadata::validate_partition_count(inc.total)
                        .map(|()| t.partitions = inc.total),
                };
                results.push(result(&inc.name, res));
            }
        }
        AdminOp::AlterConfigs(r) => {
            if let Some(e) = too_many(r.len()) {
                return TopicResults {
                    results: vec![result("", Err(e))],
                };
            }
            let mut validated_only = Vec::new();
            for a in r {
                let res = alter_one(&mut meta, &a);
                if a.validate_only && res.is_ok() {
                    validated_only.push(a.topic.clone());
                }
                results.push(result(&a.topic, res));
            }
            // Validated only: answered, not applied.
            for name in validated_only {
                if let (Some(t), Some(b)) = (meta.topics.get_mut(&name), before.topics.get(&name)) {
                    t.configs = b.configs.clone();
                }
            }
            if meta == before {
                return TopicResults { results };
            }
        }
    }
    if results.iter().all(|r| r.error != ErrorCode::None) {
        return TopicResults { results };
    }
    if shard.replication.is_some() {
        // Every node applies the change when the metadata group commits it
        // (`ops::cluster::apply_metadata`), this one included.
        if let Err(e) = crate::ops::cluster::commit_metadata(shard, &meta).await {
            for r in results.iter_mut().filter(|r| r.error == ErrorCode::None) {
                r.error = e.code;
                r.message = e.message.clone();
            }
        }
        return TopicResults { results };
    }
    meta.shard_count = shard.shards as u32;
    let data_dir = shard.data_dir.clone();
    let to_store = meta.clone();
    let stored = glommio::executor()
        .spawn_blocking(move || metadata::store(&data_dir, &to_store))
        .await;
    if let Err(e) = stored {
        let code = if e.is_no_space() {
            ErrorCode::NotEnoughSpace
        } else {
            ErrorCode::Internal
        };
        for r in results.iter_mut().filter(|r| r.error == ErrorCode::None) {
            r.error = code;
            r.message = format!("metadata not saved, nothing changed: {e}");
        }
        return TopicResults { results };
    }
    let ops: Vec<(usize, Op)> = (0..shard.shards)
        .map(|s| (s, Op::Apply(meta.clone())))
        .collect();
    let n = ops.len();
    let rx = fan_out(shard, ops);
    for _ in 0..n {
        let _ = rx.recv().await;
    }
    // Each shard removed its partitions' directories while applying; the
    // topic's own directory goes last, off the reactor thread. Failing to
    // remove it loses nothing (a re-created topic reuses it) but is said.
    for name in deleted {
        let dir = shard.data_dir.join("topics").join(&name);
        let shown = dir.clone();
        let removed = glommio::executor()
            .spawn_blocking(move || std::fs::remove_dir(&dir))
            .await;
        match removed {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                shard.metrics().count_background_error("remove_topic_dir");
                tracing::error!(shard = shard.id, dir = %shown.display(), error = %e, "removing a deleted topic's directory failed");
            }
        }
    }
    log_topic_changes(&before, &meta);
    TopicResults { results }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The story: when the admin lock could not be had (it closes at
    /// shutdown) the request was answered with no results at all, so a
    /// client saw neither success nor an error for the topics it named.
    #[test]
    fn a_refused_admin_request_names_every_topic_with_the_error() {
        let e = WireError::new(ErrorCode::ShuttingDown, "the server is shutting down");
        let op = AdminOp::DeleteTopics(DeleteTopicsRequest {
            names: vec!["a".into(), "b".into()],
        });
        let r = refused_all(&op, e.clone());
        let got: Vec<(&str, ErrorCode)> = r
            .results
            .iter()
            .map(|t| (t.name.as_str(), t.error))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a", ErrorCode::ShuttingDown),
                ("b", ErrorCode::ShuttingDown)
            ]
        );
        let empty = AdminOp::CreateTopics(CreateTopicsRequest { topics: vec![] });
        let r = refused_all(&empty, e);
        assert_eq!(r.results.len(), 1, "never an empty answer");
        assert_eq!(r.results[0].error, ErrorCode::ShuttingDown);
    }
}
