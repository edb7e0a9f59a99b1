//! The native protocol's group requests: decoding into the service's
//! protocol-neutral arguments and encoding its results (JoinGroup,
//! SyncGroup, Heartbeat, LeaveGroup, ListGroups, DescribeGroups with end
//! offsets and lag, ResetOffsets, and the owner side of OffsetCommit and
//! OffsetFetch).

use super::assignor;
use super::coordinator::{CommitArgs, JoinArgs, OffsetCommit, SyncArgs};
use super::error::GroupError;
use super::service::{self, GroupOp, GroupReply};
use crate::error::WireError;
use crate::limits::FETCH_PARTITIONS_MAX;
use crate::ops::fan_out;
use crate::router::{Op, Reply};
use crate::shard::Shard;
use std::collections::BTreeMap;
use std::rc::Rc;
use strom_flatbuffers::protocol::*;

/// Groups one DescribeGroups may name.
pub const DESCRIBE_GROUPS_MAX: usize = 1_000;

fn partitions_of(assignment: &[u8]) -> Vec<GroupTopicPartitions> {
    assignor::decode_assignment(assignment)
        .unwrap_or_default()
        .into_iter()
        .map(|(topic, partitions)| GroupTopicPartitions { topic, partitions })
        .collect()
}

fn status(r: Result<(), GroupError>) -> GroupStatus {
    match r {
        Ok(()) => GroupStatus::default(),
        Err(e) => GroupStatus {
            error: e.wire_code(),
            message: e.to_string(),
        },
    }
}

pub async fn handle(shard: &Rc<Shard>, body: RequestBody) -> Result<ResponseBody, WireError> {
    Ok(match body {
        RequestBody::JoinGroup(r) => {
            let args = JoinArgs {
                group: r.group,
                member_id: r.member_id,
                client_id: r.client_id,
                client_host: String::new(),
                protocol_type: r.protocol_type,
                protocols: r
                    .protocols
                    .into_iter()
                    .map(|p| (p.name, p.metadata))
                    .collect(),
                session_timeout_ms: r.session_timeout_ms,
                rebalance_timeout_ms: r.rebalance_timeout_ms,
                topics: r.topics,
                coordinator_assigns: r.coordinator_assigns,
                require_known_member_id: false,
            };
            ResponseBody::JoinGroup(match service::join(shard, args).await {
                Ok(j) => JoinGroupResponse {
                    error: ErrorCode::None,
                    message: String::new(),
                    generation: j.generation,
                    protocol_name: j.protocol_name,
                    leader_id: j.leader_id,
                    member_id: j.member_id,
                    members: j
                        .members
                        .into_iter()
                        .map(|m| GroupMember {
                            member_id: m.member_id,
                            metadata: m.metadata,
                            topics: m.topics,
                        })
                        .collect(),
                },
                Err(e) => JoinGroupResponse {
                    error: e.wire_code(),
                    message: e.to_string(),
                    generation: -1,
                    member_id: match &e {
                        GroupError::MemberIdRequired { member_id, .. } => member_id.clone(),
                        _ => String::new(),
                    },
                    ..JoinGroupResponse::default()
                },
            })
        }
        RequestBody::SyncGroup(r) => {
            let args = SyncArgs {
                group: r.group,
                member_id: r.member_id,
                generation: r.generation,
                assignments: r
                    .assignments
                    .into_iter()
                    .map(|a| (a.member_id, a.assignment))
                    .collect(),
            };
            ResponseBody::SyncGroup(match service::sync(shard, args).await {
                Ok(s) => SyncGroupResponse {
                    error: ErrorCode::None,
                    message: String::new(),
                    partitions: partitions_of(&s.assignment),
                    protocol_name: s.protocol_name,
                    assignment: s.assignment,
                },
                Err(e) => SyncGroupResponse {
                    error: e.wire_code(),
                    message: e.to_string(),
                    ..SyncGroupResponse::default()
                },
            })
        }
        RequestBody::Heartbeat(r) => ResponseBody::Heartbeat(status(
            service::heartbeat(shard, &r.group, &r.member_id, r.generation).await,
        )),
        RequestBody::LeaveGroup(r) => {
            let res = service::leave(shard, &r.group, r.member_ids)
                .await
                .and_then(|per| per.into_iter().find(|r| r.is_err()).unwrap_or(Ok(())));
            ResponseBody::LeaveGroup(status(res))
        }
        RequestBody::ListGroups => ResponseBody::ListGroups(ListGroupsResponse {
            groups: service::list(shard)
                .await
                .into_iter()
                .map(|g| GroupListing {
                    group: g.group,
                    state: g.state.name().to_owned(),
                    protocol_type: g.protocol_type,
                    members: g.members as u32,
                })
                .collect(),
        }),
        RequestBody::DescribeGroups(r) => ResponseBody::DescribeGroups(describe(shard, r).await?),
        RequestBody::ResetOffsets(r) => ResponseBody::ResetOffsets(reset(shard, r).await),
        _ => {
            return Err(WireError::new(
                ErrorCode::InvalidRequest,
                "not a group request",
            ))
        }
    })
}

/// Offsets of `parts` at `timestamp` (-2 earliest, -1 latest), by index;
/// `None` where the partition did not answer.
async fn offsets_at(
    shard: &Rc<Shard>,
    parts: &[(String, u32)],
    timestamp: i64,
) -> Vec<Option<i64>> {
    let mut out = vec![None; parts.len()];
    let mut per_shard: BTreeMap<usize, Vec<(usize, ListOffsetsPartition)>> = BTreeMap::new();
    for (i, (topic, partition)) in parts.iter().enumerate() {
        if let Ok(s) = shard.owner(topic, *partition) {
            per_shard.entry(s).or_default().push((
                i,
                ListOffsetsPartition {
                    topic: topic.clone(),
                    partition: *partition,
                    timestamp,
                },
            ));
        }
    }
    let ops: Vec<(usize, Op)> = per_shard
        .into_iter()
        .map(|(s, items)| {
            (
                s,
                Op::ListOffsets {
                    items,
                    read_committed: false,
                },
            )
        })
        .collect();
    let n = ops.len();
    let rx = fan_out(shard, ops);
    for _ in 0..n {
        match rx.recv().await {
            Some((_, Reply::ListOffsets(rs))) => {
                for (i, r) in rs {
                    if r.error == ErrorCode::None && r.offset >= 0 {
                        out[i] = Some(r.offset);
                    }
                }
            }
            Some(_) => {}
            None => break,
        }
    }
    out
}

async fn describe(
    shard: &Rc<Shard>,
    r: DescribeGroupsRequest,
) -> Result<DescribeGroupsResponse, WireError> {
    if r.groups.len() > DESCRIBE_GROUPS_MAX {
        return Err(WireError::new(
            ErrorCode::InvalidRequest,
            format!(
                "{} groups named, the limit is {DESCRIBE_GROUPS_MAX}",
                r.groups.len()
            ),
        ));
    }
    let names = if r.groups.is_empty() {
        service::list(shard)
            .await
            .into_iter()
            .map(|g| g.group)
            .collect()
    } else {
        r.groups
    };
    let mut out = Vec::with_capacity(names.len());
    for d in service::describe(shard, names).await {
        // Committed partitions plus assigned ones without a commit.
        let mut rows: BTreeMap<(String, u32), (i64, String)> = d
            .offsets
            .iter()
            .map(|(t, p, c)| ((t.clone(), *p), (c.offset as i64, c.metadata.clone())))
            .collect();
        let members: Vec<GroupMemberDescription> = d
            .members
            .into_iter()
            .map(|m| {
                let partitions = partitions_of(&m.assignment);
                for tp in &partitions {
                    for p in &tp.partitions {
                        rows.entry((tp.topic.clone(), *p))
                            .or_insert((-1, String::new()));
                    }
                }
                GroupMemberDescription {
                    member_id: m.member_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    topics: m.topics,
                    assignment: m.assignment,
                    partitions,
                }
            })
            .collect();
        let keys: Vec<(String, u32)> = rows.keys().cloned().collect();
        let ends = offsets_at(shard, &keys, LIST_OFFSETS_LATEST).await;
        let offsets = rows
            .into_iter()
            .zip(ends)
            .map(|(((topic, partition), (committed, metadata)), end)| {
                let end_offset = end.unwrap_or(-1);
                GroupOffsetDescription {
                    topic,
                    partition,
                    committed_offset: committed,
                    metadata,
                    end_offset,
                    lag: if committed >= 0 && end_offset >= 0 {
                        (end_offset - committed).max(0)
                    } else {
                        -1
                    },
                }
            })
            .collect();
        let (error, message) = if d.state == super::coordinator::GroupState::Dead {
            let e = GroupError::GroupIdNotFound {
                group: d.group.clone(),
            };
            (e.wire_code(), e.to_string())
        } else {
            (ErrorCode::None, String::new())
        };
        out.push(GroupDescription {
            group: d.group,
            error,
            message,
            state: d.state.name().to_owned(),
            protocol_type: d.protocol_type,
            protocol_name: d.protocol_name,
            generation: d.generation,
            leader_id: d.leader_id,
            members,
            offsets,
        });
    }
    Ok(DescribeGroupsResponse { groups: out })
}

async fn reset(shard: &Rc<Shard>, r: ResetOffsetsRequest) -> ResetOffsetsResponse {
    let fail = |e: WireError| ResetOffsetsResponse {
        error: e.code,
        message: e.message,
        results: Vec::new(),
    };
    let count = match shard.metadata.borrow().topics.get(&r.topic) {
        Some(t) => t.partitions,
        None => return fail(WireError::unknown_topic(&r.topic)),
    };
    let partitions: Vec<u32> = if r.partitions.is_empty() {
        (0..count).collect()
    } else {
        r.partitions
    };
    if partitions.len() > FETCH_PARTITIONS_MAX {
        return fail(WireError::new(
            ErrorCode::InvalidRequest,
            "too many partitions",
        ));
    }
    if let Some(p) = partitions.iter().find(|p| **p >= count) {
        return fail(WireError::unknown_partition(&r.topic, *p));
    }
    let parts: Vec<(String, u32)> = partitions.iter().map(|p| (r.topic.clone(), *p)).collect();
    let earliest = offsets_at(shard, &parts, LIST_OFFSETS_EARLIEST).await;
    let latest = offsets_at(shard, &parts, LIST_OFFSETS_LATEST).await;
    let mut offsets = Vec::with_capacity(parts.len());
    for i in 0..parts.len() {
        let (Some(lo), Some(hi)) = (earliest[i], latest[i]) else {
            return fail(WireError::new(
                ErrorCode::Internal,
                format!("{}/{}: its offsets are unknown", r.topic, parts[i].1),
            ));
        };
        let target = match r.to {
            ResetTo::Earliest => lo,
            ResetTo::Latest => hi,
            _ => (r.offset.min(i64::MAX as u64) as i64).clamp(lo, hi),
        };
        offsets.push(OffsetCommit {
            topic: r.topic.clone(),
            partition: parts[i].1,
            offset: target as u64,
            metadata: String::new(),
        });
    }
    match service::reset_offsets(shard, &r.group, offsets.clone()).await {
        Err(e) => fail(e.to_wire()),
        Ok(per) => ResetOffsetsResponse {
            error: ErrorCode::None,
            message: String::new(),
            results: offsets
                .into_iter()
                .zip(per)
                .map(|(o, res)| {
                    let (error, message) = match res {
                        Ok(()) => (ErrorCode::None, format!("offset {}", o.offset)),
                        Err(e) => (e.wire_code(), e.to_string()),
                    };
                    OffsetCommitResult {
                        topic: o.topic,
                        partition: o.partition,
                        error,
                        message,
                    }
                })
                .collect(),
        },
    }
}

/// Owner side of the native OffsetCommit.
pub async fn commit_local(shard: &Rc<Shard>, r: OffsetCommitRequest) -> OffsetCommitResponse {
    let args = CommitArgs {
        group: r.group,
        member_id: r.member_id,
        generation: r.generation,
        offsets: r
            .partitions
            .iter()
            .map(|p| OffsetCommit {
                topic: p.topic.clone(),
                partition: p.partition,
                offset: p.offset,
                metadata: p.metadata.clone(),
            })
            .collect(),
    };
    let per = match shard.groups.execute(GroupOp::Commit(args)).await {
        GroupReply::Commit(Ok(per)) => per,
        GroupReply::Commit(Err(e)) => vec![Err(e); r.partitions.len()],
        _ => vec![
            Err(GroupError::CoordinatorNotAvailable {
                group: String::new()
            });
            r.partitions.len()
        ],
    };
    OffsetCommitResponse {
        results: r
            .partitions
            .into_iter()
            .zip(per)
            .map(|(p, res)| {
                let (error, message) = match res {
                    Ok(()) => (ErrorCode::None, String::new()),
                    Err(e) => (e.wire_code(), e.to_string()),
                };
                OffsetCommitResult {
                    topic: p.topic,
                    partition: p.partition,
                    error,
                    message,
                }
            })
            .collect(),
    }
}

/// Owner side of the native OffsetFetch.
pub async fn fetch_local(
    shard: &Rc<Shard>,
    r: OffsetFetchRequest,
) -> Result<OffsetFetchResponse, WireError> {
    let partitions = (!r.partitions.is_empty()).then(|| {
        r.partitions
            .into_iter()
            .map(|tp| (tp.topic, tp.partition))
            .collect::<Vec<_>>()
    });
    let op = GroupOp::Fetch {
        group: r.group,
        partitions,
    };
    match shard.groups.execute(op).await {
        GroupReply::Fetch(Ok(rows)) => Ok(OffsetFetchResponse {
            results: rows
                .into_iter()
                .map(|(topic, partition, c)| OffsetFetchResult {
                    topic,
                    partition,
                    offset: c.as_ref().map(|c| c.offset as i64).unwrap_or(-1),
                    metadata: c.map(|c| c.metadata).unwrap_or_default(),
                    ..OffsetFetchResult::default()
                })
                .collect(),
        }),
        GroupReply::Fetch(Err(e)) => Err(e.to_wire()),
        _ => Err(WireError::new(ErrorCode::Internal, "unexpected reply")),
    }
}
