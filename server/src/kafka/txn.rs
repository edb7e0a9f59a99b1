//! Kafka's transactional APIs, translated onto the transaction coordinator
//! (`crate::txn`, on shard 0): InitProducerId with a transactional id,
//! AddPartitionsToTxn (v0-v3, what clients send), AddOffsetsToTxn,
//! TxnOffsetCommit and EndTxn. A stale epoch is answered PRODUCER_FENCED
//! from the API versions that know it (KIP-588) and INVALID_PRODUCER_EPOCH
//! before, as Kafka's broker answers each version.

use super::codec::{self, sb};
use super::handlers::Ctx;
use crate::txn::coordinator::{codes, TxnError};
use crate::txn::{request, TxnOp, TxnReply};
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::*;

/// Kafka's OPERATION_NOT_ATTEMPTED: a partition left out because another
/// of the same request failed.
const OPERATION_NOT_ATTEMPTED: i16 = 55;

/// The code a stale epoch gets in `version` of an API that learned
/// PRODUCER_FENCED at `fenced_from`.
fn fenced(version: i16, fenced_from: i16) -> i16 {
    if version >= fenced_from {
        codes::PRODUCER_FENCED
    } else {
        codes::INVALID_PRODUCER_EPOCH
    }
}

fn done(r: TxnReply) -> Result<(), TxnError> {
    match r {
        TxnReply::Done(r) => r,
        TxnReply::Init(r) => r.map(|_| ()),
    }
}

/// InitProducerId with a transactional id.
pub async fn init_producer_id(
    ctx: &Ctx,
    version: i16,
    r: &InitProducerIdRequest,
    txn_id: &str,
) -> InitProducerIdResponse {
    let op = TxnOp::Init {
        txn_id: txn_id.to_owned(),
        timeout_ms: i64::from(r.transaction_timeout_ms),
        producer_id: r.producer_id.0,
        epoch: r.producer_epoch,
    };
    match request(&ctx.shard, op).await {
        TxnReply::Init(Ok((id, epoch))) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(epoch),
        other => {
            let code = match done(other) {
                Err(e) => e.kafka_code(fenced(version, 4)),
                Ok(()) => codec::UNKNOWN_SERVER_ERROR,
            };
            InitProducerIdResponse::default()
                .with_error_code(code)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
        }
    }
}

pub async fn add_partitions(
    ctx: &Ctx,
    version: i16,
    r: AddPartitionsToTxnRequest,
) -> AddPartitionsToTxnResponse {
    // Partitions that do not exist fail alone; the others are not tried.
    let mut wanted: Vec<(String, u32)> = Vec::new();
    let mut missing = false;
    let mut codes_by: Vec<(String, Vec<(i32, i16)>)> = Vec::new();
    {
        let meta = ctx.shard.metadata.borrow();
        for t in &r.v3_and_below_topics {
            let name = t.name.0.as_str().to_owned();
            let mut parts = Vec::new();
            for &p in &t.partitions {
                let exists = p >= 0
                    && meta
                        .topics
                        .get(&name)
                        .is_some_and(|m| (p as u32) < m.partitions);
                if exists {
                    wanted.push((name.clone(), p as u32));
                    parts.push((p, codec::NONE));
                } else {
                    missing = true;
                    parts.push((p, codec::UNKNOWN_TOPIC_OR_PARTITION));
                }
            }
            codes_by.push((name, parts));
        }
    }
    let outcome: Result<(), i16> = if missing {
        Err(OPERATION_NOT_ATTEMPTED)
    } else {
        let op = TxnOp::Add {
            txn_id: r.v3_and_below_transactional_id.0.as_str().to_owned(),
            producer_id: r.v3_and_below_producer_id.0,
            epoch: r.v3_and_below_producer_epoch,
            partitions: wanted,
            group: None,
        };
        done(request(&ctx.shard, op).await).map_err(|e| e.kafka_code(fenced(version, 2)))
    };
    let topics = codes_by
        .into_iter()
        .map(|(name, parts)| {
            AddPartitionsToTxnTopicResult::default()
                .with_name(TopicName(sb(&name)))
                .with_results_by_partition(
                    parts
                        .into_iter()
                        .map(|(p, code)| {
                            let code = match outcome {
                                Err(c) if code == codec::NONE => c,
                                _ => code,
                            };
                            AddPartitionsToTxnPartitionResult::default()
                                .with_partition_index(p)
                                .with_partition_error_code(code)
                        })
                        .collect(),
                )
        })
        .collect();
    AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(topics)
}

pub async fn add_offsets(
    ctx: &Ctx,
    version: i16,
    r: AddOffsetsToTxnRequest,
) -> AddOffsetsToTxnResponse {
    let op = TxnOp::Add {
        txn_id: r.transactional_id.0.as_str().to_owned(),
        producer_id: r.producer_id.0,
        epoch: r.producer_epoch,
        partitions: Vec::new(),
        group: Some(r.group_id.0.as_str().to_owned()),
    };
    let code = match done(request(&ctx.shard, op).await) {
        Ok(()) => codec::NONE,
        Err(e) => e.kafka_code(fenced(version, 2)),
    };
    AddOffsetsToTxnResponse::default().with_error_code(code)
}

pub async fn txn_offset_commit(
    ctx: &Ctx,
    version: i16,
    r: TxnOffsetCommitRequest,
) -> TxnOffsetCommitResponse {
    let mut offsets = Vec::new();
    let mut bad = false;
    for t in &r.topics {
        for p in &t.partitions {
            if p.partition_index < 0 || p.committed_offset < 0 {
                bad = true;
            } else {
                offsets.push((
                    t.name.0.as_str().to_owned(),
                    p.partition_index as u32,
                    p.committed_offset as u64,
                    p.committed_metadata
                        .as_ref()
                        .map(|m| m.as_str().to_owned())
                        .unwrap_or_default(),
                ));
            }
        }
    }
    let code = if bad {
        codec::INVALID_REQUEST
    } else {
        let op = TxnOp::Offsets {
            txn_id: r.transactional_id.0.as_str().to_owned(),
            producer_id: r.producer_id.0,
            epoch: r.producer_epoch,
            group: r.group_id.0.as_str().to_owned(),
            offsets,
        };
        match done(request(&ctx.shard, op).await) {
            Ok(()) => codec::NONE,
            Err(e) => e.kafka_code(fenced(version, 3)),
        }
    };
    let topics = r
        .topics
        .iter()
        .map(|t| {
            TxnOffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            TxnOffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(code)
                        })
                        .collect(),
                )
        })
        .collect();
    TxnOffsetCommitResponse::default().with_topics(topics)
}

pub async fn end_txn(ctx: &Ctx, version: i16, r: EndTxnRequest) -> EndTxnResponse {
    let op = TxnOp::End {
        txn_id: r.transactional_id.0.as_str().to_owned(),
        producer_id: r.producer_id.0,
        epoch: r.producer_epoch,
        commit: r.committed,
    };
    let code = match done(request(&ctx.shard, op).await) {
        Ok(()) => codec::NONE,
        Err(e) => {
            tracing::debug!(error = %e, "EndTxn refused");
            e.kafka_code(fenced(version, 2))
        }
    };
    EndTxnResponse::default().with_error_code(code)
}
