//! Consumer-group APIs (FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup, OffsetCommit, OffsetFetch, ListGroups, DescribeGroups) on
//! top of the group coordinator service (`crate::group::service`), which
//! routes each group to its owning shard. This module only translates
//! between Kafka's messages and the service's protocol-neutral arguments.
//!
//! Every shard answers for every group (it forwards), so FindCoordinator
//! always names this broker. Member metadata and assignments are opaque
//! bytes, assigned by the client-side leader as in Kafka; the subscribed
//! topics are read from the consumer protocol's metadata only to describe.

use super::codec::{self, sb};
use super::handlers::Ctx;
use crate::group::coordinator::{CommitArgs, JoinArgs, OffsetCommit, SyncArgs};
use crate::group::service;
use crate::group::GroupError;
use bytes::Bytes;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, StrBytes};
use std::collections::BTreeMap;

/// FindCoordinator key type of transactional ids (not supported).
const KEY_TYPE_TRANSACTION: i8 = 1;

pub fn find_coordinator(
    ctx: &Ctx,
    version: i16,
    r: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    // Transactions: this node's coordinator, except in cluster mode.
    let supported = r.key_type != KEY_TYPE_TRANSACTION || ctx.shard.shared.cluster.is_none();
    let (code, node, port) = if supported {
        (codec::NONE, ctx.node_id(), ctx.port)
    } else {
        (codec::COORDINATOR_NOT_AVAILABLE, -1, -1)
    };
    let host = sb(if supported { &ctx.host } else { "" });
    // v4 batches keys and has no top-level coordinator fields.
    if version >= 4 {
        let coordinators = r
            .coordinator_keys
            .iter()
            .map(|k| {
                Coordinator::default()
                    .with_key(k.clone())
                    .with_node_id(BrokerId(node))
                    .with_host(host.clone())
                    .with_port(port)
                    .with_error_code(code)
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    FindCoordinatorResponse::default()
        .with_error_code(code)
        .with_node_id(BrokerId(node))
        .with_host(host)
        .with_port(port)
}

fn s(x: &StrBytes) -> String {
    x.as_str().to_owned()
}

fn code(e: &GroupError) -> i16 {
    e.kafka_code()
}

/// Topics a Kafka consumer subscribes to, from its protocol metadata.
fn subscribed_topics(protocol_type: &str, metadata: &Bytes) -> Vec<String> {
    if protocol_type != "consumer" || metadata.len() < 2 {
        return Vec::new();
    }
    let version = i16::from_be_bytes([metadata[0], metadata[1]]);
    let mut body = metadata.slice(2..);
    ConsumerProtocolSubscription::decode(&mut body, version.clamp(0, 3))
        .map(|sub| sub.topics.iter().map(s).collect())
        .unwrap_or_default()
}

/// Answers a group API; `None` for a request that is not one.
pub async fn handle(
    ctx: &Ctx,
    version: i16,
    client_id: &str,
    req: RequestKind,
) -> Option<ResponseKind> {
    let shard = &ctx.shard;
    Some(match req {
        RequestKind::JoinGroup(r) => {
            let protocol_type = s(&r.protocol_type);
            let topics = r
                .protocols
                .first()
                .map(|p| subscribed_topics(&protocol_type, &p.metadata))
                .unwrap_or_default();
            let args = JoinArgs {
                group: s(&r.group_id.0),
                member_id: s(&r.member_id),
                client_id: client_id.to_owned(),
                client_host: ctx.peer.clone(),
                protocol_type: protocol_type.clone(),
                protocols: r
                    .protocols
                    .iter()
                    .map(|p| (s(&p.name), p.metadata.to_vec()))
                    .collect(),
                session_timeout_ms: r.session_timeout_ms.max(0) as u32,
                rebalance_timeout_ms: if version == 0 {
                    0
                } else {
                    r.rebalance_timeout_ms.max(0) as u32
                },
                topics,
                coordinator_assigns: false,
                require_known_member_id: version >= 4,
            };
            let resp = match service::join(shard, args).await {
                Ok(j) => JoinGroupResponse::default()
                    .with_generation_id(j.generation)
                    .with_protocol_type(Some(sb(&j.protocol_type)))
                    .with_protocol_name(Some(sb(&j.protocol_name)))
                    .with_leader(sb(&j.leader_id))
                    .with_member_id(sb(&j.member_id))
                    .with_members(
                        j.members
                            .into_iter()
                            .map(|m| {
                                JoinGroupResponseMember::default()
                                    .with_member_id(StrBytes::from_string(m.member_id))
                                    .with_metadata(Bytes::from(m.metadata))
                            })
                            .collect(),
                    ),
                Err(e) => {
                    let member_id = match &e {
                        GroupError::MemberIdRequired { member_id, .. } => sb(member_id),
                        _ => r.member_id.clone(),
                    };
                    JoinGroupResponse::default()
                        .with_error_code(code(&e))
                        .with_generation_id(-1)
                        .with_protocol_name(if version >= 7 { None } else { Some(sb("")) })
                        .with_member_id(member_id)
                }
            };
            ResponseKind::JoinGroup(resp)
        }
        RequestKind::SyncGroup(r) => {
            let args = SyncArgs {
                group: s(&r.group_id.0),
                member_id: s(&r.member_id),
                generation: r.generation_id,
                assignments: r
                    .assignments
                    .iter()
                    .map(|a| (s(&a.member_id), a.assignment.to_vec()))
                    .collect(),
            };
            let resp = match service::sync(shard, args).await {
                Ok(x) => SyncGroupResponse::default()
                    .with_protocol_type(Some(sb(&x.protocol_type)))
                    .with_protocol_name(Some(sb(&x.protocol_name)))
                    .with_assignment(Bytes::from(x.assignment)),
                Err(e) => SyncGroupResponse::default().with_error_code(code(&e)),
            };
            ResponseKind::SyncGroup(resp)
        }
        RequestKind::Heartbeat(r) => {
            let res = service::heartbeat(
                shard,
                r.group_id.0.as_str(),
                r.member_id.as_str(),
                r.generation_id,
            )
            .await;
            ResponseKind::Heartbeat(
                HeartbeatResponse::default()
                    .with_error_code(res.err().map(|e| code(&e)).unwrap_or(codec::NONE)),
            )
        }
        RequestKind::LeaveGroup(r) => {
            let ids: Vec<String> = if version >= 3 {
                r.members.iter().map(|m| s(&m.member_id)).collect()
            } else {
                vec![s(&r.member_id)]
            };
            let resp = match service::leave(shard, r.group_id.0.as_str(), ids.clone()).await {
                Err(e) => LeaveGroupResponse::default().with_error_code(code(&e)),
                Ok(results) => {
                    let mut resp = LeaveGroupResponse::default();
                    if version >= 3 {
                        resp.members = ids
                            .iter()
                            .zip(results.iter())
                            .map(|(id, res)| {
                                MemberResponse::default()
                                    .with_member_id(sb(id))
                                    .with_error_code(
                                        res.as_ref().err().map(code).unwrap_or(codec::NONE),
                                    )
                            })
                            .collect();
                    } else if let Some(Err(e)) = results.first() {
                        resp.error_code = code(e);
                    }
                    resp
                }
            };
            ResponseKind::LeaveGroup(resp)
        }
        RequestKind::OffsetCommit(r) => {
            let mut offsets = Vec::new();
            // (topic index, partition index) per offset, in order.
            let mut at = Vec::new();
            let mut topics: Vec<OffsetCommitResponseTopic> = Vec::new();
            for t in &r.topics {
                let ti = topics.len();
                let mut rt = OffsetCommitResponseTopic::default().with_name(t.name.clone());
                for p in &t.partitions {
                    let pi = rt.partitions.len();
                    let mut rp = OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index);
                    if p.partition_index < 0 || p.committed_offset < 0 {
                        rp.error_code = codec::INVALID_REQUEST;
                    } else {
                        offsets.push(OffsetCommit {
                            topic: s(&t.name.0),
                            partition: p.partition_index as u32,
                            offset: p.committed_offset as u64,
                            metadata: p.committed_metadata.as_ref().map(s).unwrap_or_default(),
                        });
                        at.push((ti, pi));
                    }
                    rt.partitions.push(rp);
                }
                topics.push(rt);
            }
            if !offsets.is_empty() {
                let args = CommitArgs {
                    group: s(&r.group_id.0),
                    member_id: s(&r.member_id),
                    generation: r.generation_id_or_member_epoch,
                    offsets,
                };
                match service::commit(shard, args).await {
                    Ok(results) => {
                        for ((ti, pi), res) in at.iter().zip(results) {
                            if let Err(e) = res {
                                topics[*ti].partitions[*pi].error_code = code(&e);
                            }
                        }
                    }
                    Err(e) => {
                        for (ti, pi) in &at {
                            topics[*ti].partitions[*pi].error_code = code(&e);
                        }
                    }
                }
            }
            ResponseKind::OffsetCommit(OffsetCommitResponse::default().with_topics(topics))
        }
        RequestKind::OffsetFetch(r) => {
            let wanted: Option<Vec<(String, u32)>> = r.topics.as_ref().map(|ts| {
                ts.iter()
                    .flat_map(|t| {
                        t.partition_indexes
                            .iter()
                            .filter(|p| **p >= 0)
                            .map(move |p| (s(&t.name.0), *p as u32))
                    })
                    .collect()
            });
            let resp = match service::fetch_offsets(shard, r.group_id.0.as_str(), wanted).await {
                Err(e) => OffsetFetchResponse::default().with_error_code(code(&e)),
                Ok(found) => {
                    let mut by_topic: BTreeMap<String, Vec<OffsetFetchResponsePartition>> =
                        BTreeMap::new();
                    for (topic, p, c) in found {
                        by_topic.entry(topic).or_default().push(
                            OffsetFetchResponsePartition::default()
                                .with_partition_index(p as i32)
                                .with_committed_offset(
                                    c.as_ref().map(|c| c.offset as i64).unwrap_or(-1),
                                )
                                .with_committed_leader_epoch(-1)
                                .with_metadata(Some(StrBytes::from_string(
                                    c.map(|c| c.metadata).unwrap_or_default(),
                                ))),
                        );
                    }
                    OffsetFetchResponse::default().with_topics(
                        by_topic
                            .into_iter()
                            .map(|(t, ps)| {
                                OffsetFetchResponseTopic::default()
                                    .with_name(TopicName(StrBytes::from_string(t)))
                                    .with_partitions(ps)
                            })
                            .collect(),
                    )
                }
            };
            ResponseKind::OffsetFetch(resp)
        }
        RequestKind::ListGroups(_) => {
            let groups = service::list(shard).await;
            ResponseKind::ListGroups(
                ListGroupsResponse::default().with_groups(
                    groups
                        .into_iter()
                        .map(|g| {
                            ListedGroup::default()
                                .with_group_id(GroupId(StrBytes::from_string(g.group)))
                                .with_protocol_type(StrBytes::from_string(g.protocol_type))
                                .with_group_state(sb(g.state.name()))
                        })
                        .collect(),
                ),
            )
        }
        RequestKind::DescribeGroups(r) => {
            let names: Vec<String> = r.groups.iter().map(|g| s(&g.0)).collect();
            let described = service::describe(shard, names).await;
            ResponseKind::DescribeGroups(
                DescribeGroupsResponse::default().with_groups(
                    described
                        .into_iter()
                        .map(|d| {
                            DescribedGroup::default()
                                .with_group_id(GroupId(StrBytes::from_string(d.group)))
                                .with_group_state(sb(d.state.name()))
                                .with_protocol_type(StrBytes::from_string(d.protocol_type))
                                .with_protocol_data(StrBytes::from_string(d.protocol_name))
                                .with_authorized_operations(i32::MIN)
                                .with_members(
                                    d.members
                                        .into_iter()
                                        .map(|m| {
                                            DescribedGroupMember::default()
                                                .with_member_id(StrBytes::from_string(m.member_id))
                                                .with_client_id(StrBytes::from_string(m.client_id))
                                                .with_client_host(StrBytes::from_string(
                                                    m.client_host,
                                                ))
                                                .with_member_metadata(Bytes::from(m.metadata))
                                                .with_member_assignment(Bytes::from(m.assignment))
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                ),
            )
        }
        _ => return None,
    })
}
