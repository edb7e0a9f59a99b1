//! One function per Kafka API. Partition work is routed to the owning shard
//! (`crate::handlers::fan_out` / `call`), metadata changes to shard 0
//! (`Op::Admin`), exactly as the native protocol does; answers are built in
//! request order with the crate's response types.

use super::codec::{self, sb, Decoded};
use super::fanout::ProduceFanOut;
use super::splice::Splicer;
use super::translate;
use crate::engine::Durability;
use crate::error::WireError;
use crate::limits::*;
use crate::metadata;
use crate::metrics::Protocol;
use crate::ops::{self, call, collect, fan_out};
use crate::router::{AdminOp, FetchOut, Op, ProduceItem, Reply};
use crate::shard::Shard;
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};
use strom_flatbuffers::protocol as native;
use uuid::Uuid;

/// The one broker this server presents itself as.
pub const NODE_ID: i32 = 0;
/// Cluster id reported in Metadata.
pub const CLUSTER_ID: &str = "strom";
/// High half of every topic's Kafka UUID; the low half is the topic id + 1.
const TOPIC_UUID_HIGH: u64 = 0x5354_524f_4d00_0000;

/// What a request handler needs of its connection.
/// The principal of a connection that proved nothing.
pub const ANONYMOUS: &str = "User:ANONYMOUS";

pub struct Ctx {
    pub shard: Rc<Shard>,
    /// Host and port told to clients.
    pub host: String,
    pub port: i32,
    /// The client's address, for DescribeGroups.
    pub peer: String,
    /// Who the client is: `User:NAME` after SASL, `User:<subject>` of a
    /// client certificate, else `User:ANONYMOUS`.
    pub principal: std::cell::RefCell<String>,
}

impl Ctx {
    /// This broker's id: the cluster node id, or [`NODE_ID`] on a single node.
    pub fn node_id(&self) -> i32 {
        self.shard
            .shared
            .cluster
            .as_ref()
            .map_or(NODE_ID, |c| i32::try_from(c.node_id).unwrap_or(i32::MAX))
    }

    pub fn new(shard: Rc<Shard>, local: Option<SocketAddr>, peer: Option<SocketAddr>) -> Ctx {
        let (host, port) = match &shard.shared.kafka.config.advertise {
            Some((h, p)) => (h.clone(), i32::from(*p)),
            None => {
                let a = local
                    .or(shard.shared.kafka.bound())
                    .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9092)));
                (a.ip().to_string(), i32::from(a.port()))
            }
        };
        let peer = peer.map(|p| format!("/{}", p.ip())).unwrap_or_default();
        Ctx {
            shard,
            host,
            port,
            peer,
            principal: std::cell::RefCell::new(ANONYMOUS.to_owned()),
        }
    }
}

fn topic_uuid(id: u64) -> Uuid {
    Uuid::from_u64_pair(TOPIC_UUID_HIGH, id.wrapping_add(1))
}

/// The first error code an answer carries, at the top or in its parts
/// (for metrics and client-error logs); `NONE` when there is none.
fn first_error(resp: &ResponseKind) -> i16 {
    fn first(it: impl IntoIterator<Item = i16>) -> i16 {
        it.into_iter()
            .find(|&c| c != codec::NONE)
            .unwrap_or(codec::NONE)
    }
    match resp {
        ResponseKind::Produce(r) => first(
            r.responses
                .iter()
                .flat_map(|t| t.partition_responses.iter().map(|p| p.error_code)),
        ),
        ResponseKind::Fetch(r) => first(
            std::iter::once(r.error_code).chain(
                r.responses
                    .iter()
                    .flat_map(|t| t.partitions.iter().map(|p| p.error_code)),
            ),
        ),
        ResponseKind::ListOffsets(r) => first(
            r.topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(|p| p.error_code)),
        ),
        ResponseKind::OffsetForLeaderEpoch(r) => first(
            r.topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(|p| p.error_code)),
        ),
        ResponseKind::Metadata(r) => first(r.topics.iter().map(|t| t.error_code)),
        ResponseKind::CreateTopics(r) => first(r.topics.iter().map(|t| t.error_code)),
        ResponseKind::DeleteTopics(r) => first(r.responses.iter().map(|t| t.error_code)),
        ResponseKind::JoinGroup(r) => r.error_code,
        ResponseKind::SyncGroup(r) => r.error_code,
        ResponseKind::Heartbeat(r) => r.error_code,
        ResponseKind::LeaveGroup(r) => r.error_code,
        ResponseKind::FindCoordinator(r) => {
            first(std::iter::once(r.error_code).chain(r.coordinators.iter().map(|c| c.error_code)))
        }
        ResponseKind::InitProducerId(r) => r.error_code,
        ResponseKind::AddOffsetsToTxn(r) => r.error_code,
        ResponseKind::EndTxn(r) => r.error_code,
        ResponseKind::AddPartitionsToTxn(r) => {
            first(r.results_by_topic_v3_and_below.iter().flat_map(|t| {
                t.results_by_partition
                    .iter()
                    .map(|p| p.partition_error_code)
            }))
        }
        ResponseKind::TxnOffsetCommit(r) => first(
            r.topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(|p| p.error_code)),
        ),
        ResponseKind::OffsetCommit(r) => first(
            r.topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(|p| p.error_code)),
        ),
        ResponseKind::OffsetFetch(r) => first(
            std::iter::once(r.error_code)
                .chain(
                    r.topics
                        .iter()
                        .flat_map(|t| t.partitions.iter().map(|p| p.error_code)),
                )
                .chain(r.groups.iter().map(|g| g.error_code)),
        ),
        _ => codec::NONE,
    }
}

/// Handles one request, then counts it and logs its error (rate-limited);
/// `None` means no answer (produce with acks=0); an empty buffer means the
/// connection must close.
pub async fn handle(ctx: &Ctx, d: Decoded, started: std::time::Instant) -> Option<Vec<Bytes>> {
    let api = crate::metrics::kafka_api_name(d.key);
    let (out, code) = answer(ctx, d).await;
    let name = crate::metrics::kafka_error_name(code);
    let m = ctx.shard.metrics();
    m.request(Protocol::Kafka, api, name, started.elapsed());
    if code != codec::NONE {
        m.client_error(
            ctx.shard.id,
            Protocol::Kafka,
            api,
            name,
            "answered with an error",
        );
    }
    out
}

/// The answer to one request and the first error code it carries.
async fn answer(ctx: &Ctx, d: Decoded) -> (Option<Vec<Bytes>>, i16) {
    let v = d.version;
    let cid = d.header.correlation_id;
    let client_id = d
        .header
        .client_id
        .as_ref()
        .map(|c| c.as_str().to_owned())
        .unwrap_or_default();
    let resp = match d.body {
        RequestKind::ApiVersions(_) => {
            ResponseKind::ApiVersions(codec::api_versions_response(codec::NONE))
        }
        RequestKind::Metadata(r) => ResponseKind::Metadata(metadata(ctx, v, r).await),
        RequestKind::Produce(r) => match produce(ctx, r).await {
            Some(r) => ResponseKind::Produce(r),
            None => return (None, codec::NONE),
        },
        RequestKind::Fetch(r) => {
            let (resp, splicer) = Box::pin(fetch(ctx, r)).await;
            let mut kind = ResponseKind::Fetch(resp);
            if !splicer.is_empty() {
                let code = first_error(&kind);
                let encoded = codec::encode_response(cid, d.key, v, &kind);
                // Fetch is a flexible message from version 12 on.
                if let Some(parts) = encoded.ok().and_then(|b| splicer.splice(b, v >= 12)) {
                    return (Some(parts), code);
                }
                tracing::warn!(
                    shard = ctx.shard.id,
                    version = v,
                    "kafka fetch: splicing failed; encoding plainly"
                );
                if let ResponseKind::Fetch(resp) = &mut kind {
                    unsplice(resp, &splicer);
                }
            }
            kind
        }
        RequestKind::ListOffsets(r) => ResponseKind::ListOffsets(list_offsets(ctx, r).await),
        RequestKind::OffsetForLeaderEpoch(r) => {
            ResponseKind::OffsetForLeaderEpoch(offset_for_leader_epoch(ctx, r).await)
        }
        RequestKind::CreateTopics(r) => ResponseKind::CreateTopics(create_topics(ctx, v, r).await),
        RequestKind::DeleteTopics(r) => ResponseKind::DeleteTopics(delete_topics(ctx, r).await),
        RequestKind::CreatePartitions(r) => {
            ResponseKind::CreatePartitions(create_partitions(ctx, r).await)
        }
        RequestKind::DescribeConfigs(r) => ResponseKind::DescribeConfigs(describe_configs(ctx, r)),
        RequestKind::AlterConfigs(r) => {
            let items = r
                .resources
                .iter()
                .map(|res| {
                    let changes = res
                        .configs
                        .iter()
                        .map(|c| (c.name.to_string(), c.value.as_ref().map(|v| v.to_string())))
                        .collect();
                    (
                        res.resource_type,
                        res.resource_name.to_string(),
                        Ok(changes),
                    )
                })
                .collect();
            let out = alter_configs(ctx, items, true, r.validate_only).await;
            ResponseKind::AlterConfigs(
                AlterConfigsResponse::default().with_responses(
                    out.into_iter()
                        .map(|(t, name, code, msg)| {
                            alter_configs_response::AlterConfigsResourceResponse::default()
                                .with_resource_type(t)
                                .with_resource_name(sb(&name))
                                .with_error_code(code)
                                .with_error_message(msg.map(StrBytes::from_string))
                        })
                        .collect(),
                ),
            )
        }
        RequestKind::IncrementalAlterConfigs(r) => {
            let items = r
                .resources
                .iter()
                .map(|res| {
                    let changes: Result<Vec<_>, String> = res
                        .configs
                        .iter()
                        .map(|c| match c.config_operation {
                            0 => Ok((c.name.to_string(), c.value.as_ref().map(|v| v.to_string()))),
                            1 => Ok((c.name.to_string(), None)),
                            op => Err(format!(
                                "config {}: operation {op} (APPEND/SUBTRACT) is not supported; use SET or DELETE",
                                c.name.as_str()
                            )),
                        })
                        .collect();
                    (res.resource_type, res.resource_name.to_string(), changes)
                })
                .collect();
            let out = alter_configs(ctx, items, false, r.validate_only).await;
            ResponseKind::IncrementalAlterConfigs(
                IncrementalAlterConfigsResponse::default().with_responses(
                    out.into_iter()
                        .map(|(t, name, code, msg)| {
                            incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                                .with_resource_type(t)
                                .with_resource_name(sb(&name))
                                .with_error_code(code)
                                .with_error_message(msg.map(StrBytes::from_string))
                        })
                        .collect(),
                ),
            )
        }
        RequestKind::InitProducerId(r) => {
            ResponseKind::InitProducerId(init_producer_id(ctx, v, r).await)
        }
        RequestKind::AddPartitionsToTxn(r) => {
            ResponseKind::AddPartitionsToTxn(super::txn::add_partitions(ctx, v, r).await)
        }
        RequestKind::AddOffsetsToTxn(r) => {
            ResponseKind::AddOffsetsToTxn(super::txn::add_offsets(ctx, v, r).await)
        }
        RequestKind::TxnOffsetCommit(r) => {
            ResponseKind::TxnOffsetCommit(super::txn::txn_offset_commit(ctx, v, r).await)
        }
        RequestKind::EndTxn(r) => ResponseKind::EndTxn(super::txn::end_txn(ctx, v, r).await),
        RequestKind::DeleteRecords(r) => ResponseKind::DeleteRecords(delete_records(ctx, r).await),
        RequestKind::DescribeUserScramCredentials(r) => {
            ResponseKind::DescribeUserScramCredentials(super::scram_admin::describe(ctx, r))
        }
        RequestKind::AlterUserScramCredentials(r) => {
            ResponseKind::AlterUserScramCredentials(super::scram_admin::alter(ctx, r).await)
        }
        RequestKind::FindCoordinator(r) => {
            ResponseKind::FindCoordinator(super::groups::find_coordinator(ctx, v, r))
        }
        other => match super::groups::handle(ctx, v, &client_id, other).await {
            Some(r) => r,
            None => codec::unsupported_response(d.key, codec::UNSUPPORTED_VERSION),
        },
    };
    let code = first_error(&resp);
    match codec::encode_response(cid, d.key, v, &resp) {
        Ok(b) => (Some(vec![b.freeze()]), code),
        Err(e) => {
            tracing::error!(
                shard = ctx.shard.id,
                api = ?d.key,
                version = v,
                error = %e,
                "kafka: encoding a response failed"
            );
            let fallback = codec::unsupported_response(d.key, codec::UNKNOWN_SERVER_ERROR);
            // Never leave a request unanswered: the client pairs answers
            // with requests by order. An empty answer closes the connection.
            (
                Some(vec![codec::encode_response(cid, d.key, v, &fallback)
                    .unwrap_or_default()
                    .freeze()]),
                codec::UNKNOWN_SERVER_ERROR,
            )
        }
    }
}

async fn admin(ctx: &Ctx, op: AdminOp) -> Result<native::TopicResults, WireError> {
    match call(&ctx.shard, 0, Op::Admin(op)).await {
        Reply::Topics(t) => Ok(t),
        other => Err(ops::reply_error(other)),
    }
}

/// Creates the topics of `names` that do not exist (auto-creation), with
/// the default partition count. Invalid names are left for the caller to
/// report as unknown.
async fn auto_create(ctx: &Ctx, names: &[String]) {
    let cfg = &ctx.shard.shared.kafka.config;
    if !cfg.auto_create {
        return;
    }
    let missing: Vec<native::CreateTopic> = {
        let meta = ctx.shard.metadata.borrow();
        names
            .iter()
            .filter(|n| !meta.topics.contains_key(*n))
            .filter(|n| metadata::validate_topic_name(n).is_ok())
            .map(|n| native::CreateTopic {
                name: n.clone(),
                partitions: cfg.default_partitions,
                configs: Vec::new(),
            })
            .collect()
    };
    if missing.is_empty() {
        return;
    }
    let _ = admin(
        ctx,
        AdminOp::CreateTopics(native::CreateTopicsRequest { topics: missing }),
    )
    .await;
}

async fn metadata(ctx: &Ctx, version: i16, r: MetadataRequest) -> MetadataResponse {
    let all = match &r.topics {
        None => true,
        Some(t) => t.is_empty() && version == 0,
    };
    let mut names: Vec<String> = Vec::new();
    if !all {
        let meta = ctx.shard.metadata.borrow();
        for t in r.topics.iter().flatten().take(KAFKA_METADATA_TOPICS_MAX) {
            match &t.name {
                Some(n) => names.push(n.0.as_str().to_owned()),
                None => {
                    if let Some(m) = meta
                        .topics
                        .values()
                        .find(|m| topic_uuid(m.id) == t.topic_id)
                    {
                        names.push(m.name.clone());
                    }
                }
            }
        }
    }
    if !all && (version < 4 || r.allow_auto_topic_creation) {
        auto_create(ctx, &names).await;
    }
    let meta = ctx.shard.metadata.borrow().clone();
    if all {
        names = meta.topics.keys().cloned().collect();
    }
    if let Some(cluster) = ctx.shard.shared.cluster.clone() {
        return cluster_metadata(ctx, &cluster, &meta, &names).await;
    }
    let topics = metadata_topics(&meta, &names, |_, p| {
        MetadataResponsePartition::default()
            .with_partition_index(p as i32)
            .with_leader_id(BrokerId(NODE_ID))
            .with_leader_epoch(0)
            .with_replica_nodes(vec![BrokerId(NODE_ID)])
            .with_isr_nodes(vec![BrokerId(NODE_ID)])
    });
    MetadataResponse::default()
        .with_brokers(vec![MetadataResponseBroker::default()
            .with_node_id(BrokerId(NODE_ID))
            .with_host(sb(&ctx.host))
            .with_port(ctx.port)])
        .with_cluster_id(Some(sb(CLUSTER_ID)))
        .with_controller_id(BrokerId(NODE_ID))
        .with_cluster_authorized_operations(i32::MIN)
        .with_topics(topics)
}

/// The Metadata topics for `names`: each existing one with its partitions
/// as `partition(name, p)` describes them, each missing one with its error.
fn metadata_topics(
    meta: &metadata::Metadata,
    names: &[String],
    partition: impl Fn(&str, u32) -> MetadataResponsePartition,
) -> Vec<MetadataResponseTopic> {
    names
        .iter()
        .map(|name| match meta.topics.get(name) {
            None => missing_topic(name),
            Some(t) => MetadataResponseTopic::default()
                .with_name(Some(TopicName(sb(name))))
                .with_topic_id(topic_uuid(t.id))
                .with_topic_authorized_operations(i32::MIN)
                .with_partitions((0..t.partitions).map(|p| partition(name, p)).collect()),
        })
        .collect()
}

/// The Metadata answer for a topic that does not exist.
fn missing_topic(name: &str) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_error_code(if metadata::validate_topic_name(name).is_ok() {
            codec::UNKNOWN_TOPIC_OR_PARTITION
        } else {
            codec::INVALID_TOPIC_EXCEPTION
        })
        .with_name(Some(TopicName(sb(name))))
        .with_topic_authorized_operations(i32::MIN)
}

/// Metadata in cluster mode: every node with a Kafka address is a broker;
/// each partition's leader and leader epoch as its owning shard knows them
/// (LEADER_NOT_AVAILABLE during an election). Every node holds a replica
/// of every partition; the ISR is reported as all replicas (in-sync
/// tracking is not built: Raft's commit rule, not an ISR, decides what is
/// acknowledged).
async fn cluster_metadata(
    ctx: &Ctx,
    cluster: &crate::cluster::ClusterConfig,
    meta: &metadata::Metadata,
    names: &[String],
) -> MetadataResponse {
    let me = ctx.node_id();
    let mut brokers = vec![MetadataResponseBroker::default()
        .with_node_id(BrokerId(me))
        .with_host(sb(&ctx.host))
        .with_port(ctx.port)];
    for p in &cluster.peers {
        if let Some(k) = p.kafka {
            brokers.push(
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(i32::try_from(p.id).unwrap_or(i32::MAX)))
                    .with_host(sb(&k.ip().to_string()))
                    .with_port(i32::from(k.port())),
            );
        }
    }
    let replicas: Vec<BrokerId> = cluster
        .nodes()
        .into_iter()
        .map(|n| BrokerId(i32::try_from(n).unwrap_or(i32::MAX)))
        .collect();
    let asked: Vec<(String, u64, u32)> = names
        .iter()
        .filter_map(|n| meta.topics.get(n).map(|t| (n.clone(), t.id, t.partitions)))
        .collect();
    let leaders = crate::ops::cluster::leaders(&ctx.shard, &asked).await;
    let topics = metadata_topics(meta, names, |name, p| {
        let (leader, epoch) = leaders
            .get(&(name.to_owned(), p))
            .copied()
            .unwrap_or((0, 0));
        let part = MetadataResponsePartition::default()
            .with_partition_index(p as i32)
            .with_replica_nodes(replicas.clone())
            .with_isr_nodes(replicas.clone())
            .with_leader_epoch(i32::try_from(epoch).unwrap_or(i32::MAX));
        if leader == 0 {
            part.with_error_code(codec::LEADER_NOT_AVAILABLE)
                .with_leader_id(BrokerId(-1))
        } else {
            part.with_leader_id(BrokerId(i32::try_from(leader).unwrap_or(i32::MAX)))
        }
    });
    let controller = ctx
        .shard
        .shared
        .controller()
        .map_or(-1, |c| i32::try_from(c).unwrap_or(i32::MAX));
    MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(sb(CLUSTER_ID)))
        .with_controller_id(BrokerId(controller))
        .with_cluster_authorized_operations(i32::MIN)
        .with_topics(topics)
}

/// The wait a Kafka produce allows: its `timeout_ms`, clamped to
/// [`PRODUCE_TIMEOUT_MAX_MS`] as native produce is (0 or less: the maximum).
fn produce_timeout_ms(requested_ms: i32) -> u32 {
    match u32::try_from(requested_ms) {
        Ok(t) if t > 0 => t.min(PRODUCE_TIMEOUT_MAX_MS),
        _ => PRODUCE_TIMEOUT_MAX_MS,
    }
}

/// Routes each partition's batches to its owning shard, then answers each
/// partition with what its own shard said, or REQUEST_TIMED_OUT when that
/// shard has not answered by the request's deadline (see `fanout.rs`).
async fn produce(ctx: &Ctx, r: ProduceRequest) -> Option<ProduceResponse> {
    let shard = &ctx.shard;
    let acks = r.acks;
    let durability = match acks {
        0 => Durability::Buffered,
        1 => Durability::Written,
        _ => Durability::Durable,
    };
    let timeout_ms = produce_timeout_ms(r.timeout_ms);
    let deadline = Instant::now() + Duration::from_millis(u64::from(timeout_ms));
    let names: Vec<String> = r
        .topic_data
        .iter()
        .map(|t| t.name.0.as_str().to_owned())
        .collect();
    auto_create(ctx, &names).await;
    let mut fan = ProduceFanOut::new();
    let mut per_shard: BTreeMap<usize, Vec<ProduceItem>> = BTreeMap::new();
    for t in r.topic_data {
        let topic = t.name.0.as_str().to_owned();
        for pd in t.partition_data {
            let refuse = |fan: &mut ProduceFanOut, code: i16, message: String| {
                fan.refused(&topic, pd.index, code, message);
            };
            if acks != 0 && acks != 1 && acks != -1 {
                refuse(
                    &mut fan,
                    codec::INVALID_REQUIRED_ACKS,
                    format!("acks={acks}: use 0, 1 or -1"),
                );
                continue;
            }
            if pd.index < 0 {
                refuse(
                    &mut fan,
                    codec::UNKNOWN_TOPIC_OR_PARTITION,
                    "negative partition".into(),
                );
                continue;
            }
            let p = pd.index as u32;
            let owner = match shard.owner(&topic, p) {
                Ok(owner) => owner,
                Err(e) => {
                    refuse(&mut fan, codec::wire_to_kafka(e.code), e.message);
                    continue;
                }
            };
            match translate::kafka_to_frames(pd.records.unwrap_or_default(), FRAME_BYTES_LIMIT) {
                Err(e) => refuse(&mut fan, e.code, e.message),
                Ok(frames) if frames.is_empty() => {
                    refuse(&mut fan, codec::INVALID_RECORD, "no record batch".into())
                }
                Ok(frames) => {
                    let index = fan.routed(&topic, pd.index, owner);
                    let items = per_shard.entry(owner).or_default();
                    for f in frames {
                        items.push(ProduceItem {
                            index,
                            topic: topic.clone(),
                            partition: p,
                            frame: f.frame,
                            producer: f.producer,
                        });
                    }
                }
            }
        }
    }
    debug_assert_eq!(
        fan.shards().into_iter().collect::<Vec<_>>(),
        per_shard.keys().copied().collect::<Vec<_>>()
    );
    let ops: Vec<(usize, Op)> = per_shard
        .into_iter()
        .map(|(s, items)| (s, Op::Produce { items, durability }))
        .collect();
    let n = ops.len();
    let rx = fan_out(shard, ops);
    for (target, reply) in collect(&rx, n, Some(deadline)).await {
        match reply {
            Reply::Produce(outs) => fan.answer(
                target,
                outs.into_iter()
                    .map(|(i, p)| (i, super::kafka_outcome(p)))
                    .collect(),
            ),
            other => fan.fail(target, &ops::reply_error(other)),
        }
    }
    let answers = fan.finish(timeout_ms);
    if acks == 0 {
        return None;
    }
    let mut topics: Vec<TopicProduceResponse> = Vec::new();
    for (topic, partition, o) in answers {
        let pr = PartitionProduceResponse::default()
            .with_index(partition)
            .with_error_code(o.error_code)
            .with_base_offset(o.base_offset)
            .with_log_append_time_ms(o.log_append_time_ms)
            .with_log_start_offset(o.log_start_offset)
            .with_error_message(o.message.map(StrBytes::from_string));
        match topics.last_mut() {
            Some(t) if t.name.0.as_str() == topic => t.partition_responses.push(pr),
            _ => topics.push(
                TopicProduceResponse::default()
                    .with_name(TopicName(sb(&topic)))
                    .with_partition_responses(vec![pr]),
            ),
        }
    }
    Some(ProduceResponse::default().with_responses(topics))
}

/// The fetch answer, with each partition's long records set aside in the
/// returned [`Splicer`] (placeholders in the response; see `splice.rs`).
async fn fetch(ctx: &Ctx, r: FetchRequest) -> (FetchResponse, Splicer) {
    let shard = &ctx.shard;
    let mut splicer = Splicer::new();
    let max_bytes = match r.max_bytes {
        n if n <= 0 => FETCH_BYTES_MAX,
        n => (n as usize).min(FETCH_BYTES_MAX),
    };
    let read_committed = r.isolation_level == 1;
    // (topic, Kafka partition index, what to read or why not), in order.
    let mut wants: Vec<(String, i32, Result<ops::FetchPart, WireError>)> = Vec::new();
    for t in &r.topics {
        for p in &t.partitions {
            if wants.len() >= FETCH_PARTITIONS_MAX {
                break;
            }
            let topic = t.topic.0.as_str().to_owned();
            let part = if p.partition < 0 {
                Err(WireError::unknown_partition(&topic, 0))
            } else if p.fetch_offset < 0 {
                Err(WireError::new(
                    native::ErrorCode::OffsetOutOfRange,
                    "negative offset",
                ))
            } else {
                Ok(ops::FetchPart {
                    topic: topic.clone(),
                    partition: p.partition as u32,
                    offset: p.fetch_offset as u64,
                    max_bytes: match p.partition_max_bytes {
                        n if n <= 0 => max_bytes,
                        n => (n as usize).min(max_bytes),
                    },
                    read_committed,
                })
            };
            wants.push((topic, p.partition, part));
        }
    }
    let refused = wants.iter().any(|(_, _, w)| w.is_err());
    let spec = ops::FetchSpec {
        parts: wants
            .iter()
            .filter_map(|(_, _, w)| w.as_ref().ok().cloned())
            .collect(),
        max_bytes,
        min_bytes: r.min_bytes.max(1) as usize,
        // A partition refused here answers at once, as an error from a
        // shard would.
        max_wait_ms: if refused {
            0
        } else {
            (r.max_wait_ms.max(0) as u32).min(FETCH_WAIT_MAX_MS)
        },
    };
    let mut read = ops::fetch(shard, &spec).await.into_iter();
    let outs: Vec<FetchOut> = wants
        .iter()
        .enumerate()
        .map(|(i, (_, _, w))| match w {
            Ok(_) => read.next().unwrap_or_else(|| FetchOut {
                index: i,
                error: Some(WireError::new(native::ErrorCode::Internal, "no answer")),
                ..Default::default()
            }),
            Err(e) => FetchOut {
                index: i,
                error: Some(e.clone()),
                ..Default::default()
            },
        })
        .collect();
    let mut topics: Vec<FetchableTopicResponse> = Vec::new();
    for ((topic, partition, _), o) in wants.iter().zip(outs) {
        let frames = o.frames;
        let mut records = BytesMut::new();
        let mut error_code = o
            .error
            .as_ref()
            .map(|e| codec::wire_to_kafka(e.code))
            .unwrap_or(codec::NONE);
        if let Err(e) = translate::frames_to_kafka(&frames, &mut records) {
            tracing::error!(
                shard = shard.id,
                topic = %topic,
                partition = *partition,
                error = %e,
                "kafka fetch: translating stored frames failed"
            );
            records.clear();
            error_code = codec::CORRUPT_MESSAGE;
        }
        let hw = o.high_watermark as i64;
        let aborted = o
            .aborted
            .iter()
            .map(|&(pid, first)| {
                AbortedTransaction::default()
                    .with_producer_id(ProducerId(pid))
                    .with_first_offset(first as i64)
            })
            .collect();
        let pd = PartitionData::default()
            .with_partition_index(*partition)
            .with_error_code(error_code)
            .with_high_watermark(hw)
            .with_last_stable_offset(o.last_stable_offset as i64)
            .with_log_start_offset(o.log_start_offset as i64)
            .with_aborted_transactions(Some(aborted))
            .with_preferred_read_replica(BrokerId(-1))
            .with_records(Some(splicer.stand_in(records.freeze())));
        match topics.last_mut() {
            Some(t) if t.topic.0.as_str() == topic.as_str() => t.partitions.push(pd),
            _ => topics.push(
                FetchableTopicResponse::default()
                    .with_topic(TopicName(sb(topic)))
                    .with_partitions(vec![pd]),
            ),
        }
    }
    let resp = FetchResponse::default()
        .with_session_id(0)
        .with_responses(topics);
    (resp, splicer)
}

/// Puts the real records back in place of the placeholders (the fallback
/// when splicing the encoded bytes fails).
fn unsplice(resp: &mut FetchResponse, splicer: &Splicer) {
    for t in &mut resp.responses {
        for p in &mut t.partitions {
            if let Some(real) = p.records.as_ref().and_then(|r| splicer.real(r)) {
                p.records = Some(real.clone());
            }
        }
    }
}

async fn list_offsets(ctx: &Ctx, r: ListOffsetsRequest) -> ListOffsetsResponse {
    let shard = &ctx.shard;
    let read_committed = r.isolation_level == 1;
    // (topic index, partition index) per request position.
    let mut topics: Vec<ListOffsetsTopicResponse> = Vec::new();
    let mut at: Vec<(usize, usize)> = Vec::new();
    let mut per_shard: BTreeMap<usize, Vec<(usize, native::ListOffsetsPartition)>> =
        BTreeMap::new();
    for t in r.topics {
        let name = t.name.0.as_str().to_owned();
        let ti = topics.len();
        let mut resp = ListOffsetsTopicResponse::default().with_name(t.name.clone());
        for p in t.partitions {
            let pi = resp.partitions.len();
            resp.partitions.push(
                ListOffsetsPartitionResponse::default()
                    .with_partition_index(p.partition_index)
                    .with_timestamp(-1)
                    .with_offset(-1),
            );
            let slot = at.len();
            at.push((ti, pi));
            let owner = if p.partition_index < 0 {
                Err(WireError::unknown_partition(&name, 0))
            } else {
                shard.owner(&name, p.partition_index as u32)
            };
            match owner {
                Err(e) => resp.partitions[pi].error_code = codec::wire_to_kafka(e.code),
                Ok(s) => {
                    // -3 (max timestamp) is answered with the latest offset.
                    let ts = if p.timestamp < -2 { -1 } else { p.timestamp };
                    per_shard.entry(s).or_default().push((
                        slot,
                        native::ListOffsetsPartition {
                            topic: name.clone(),
                            partition: p.partition_index as u32,
                            timestamp: ts,
                        },
                    ));
                }
            }
        }
        topics.push(resp);
    }
    let ops: Vec<(usize, Op)> = per_shard
        .into_iter()
        .map(|(s, items)| {
            (
                s,
                Op::ListOffsets {
                    items,
                    read_committed,
                },
            )
        })
        .collect();
    let n = ops.len();
    let rx = fan_out(shard, ops);
    for (_, reply) in collect(&rx, n, None).await {
        if let Reply::ListOffsets(rs) = reply {
            for (slot, res) in rs {
                let (ti, pi) = at[slot];
                let p = &mut topics[ti].partitions[pi];
                p.error_code = codec::wire_to_kafka(res.error);
                p.offset = res.offset;
            }
        }
    }
    ListOffsetsResponse::default().with_topics(topics)
}

/// OffsetForLeaderEpoch (KIP-101, KIP-320): where each asked leader epoch
/// ended, from the partition's owner (`ops::owner::epoch_ends`), so that a
/// consumer whose position came from an older leader can tell whether the
/// log it read was truncated since. `replica_id` (v3+) is ignored: only
/// clients ask here (replicas follow through Raft).
async fn offset_for_leader_epoch(
    ctx: &Ctx,
    r: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    use crate::router::{EpochAnswer, EpochQuery};
    let shard = &ctx.shard;
    let mut topics: Vec<OffsetForLeaderTopicResult> = Vec::new();
    let mut at: Vec<(usize, usize)> = Vec::new();
    let mut per_shard: BTreeMap<usize, Vec<(usize, EpochQuery)>> = BTreeMap::new();
    for t in r.topics {
        let name = t.topic.0.as_str().to_owned();
        let ti = topics.len();
        let mut resp = OffsetForLeaderTopicResult::default().with_topic(t.topic.clone());
        for p in t.partitions {
            let pi = resp.partitions.len();
            resp.partitions.push(
                EpochEndOffset::default()
                    .with_partition(p.partition)
                    .with_leader_epoch(-1)
                    .with_end_offset(-1),
            );
            let slot = at.len();
            at.push((ti, pi));
            let owner = if p.partition < 0 {
                Err(WireError::unknown_partition(&name, 0))
            } else {
                shard.owner(&name, p.partition as u32)
            };
            match owner {
                Err(e) => resp.partitions[pi].error_code = codec::wire_to_kafka(e.code),
                Ok(s) => per_shard.entry(s).or_default().push((
                    slot,
                    EpochQuery {
                        topic: name.clone(),
                        partition: p.partition as u32,
                        current_leader_epoch: p.current_leader_epoch,
                        leader_epoch: p.leader_epoch,
                    },
                )),
            }
        }
        topics.push(resp);
    }
    let ops: Vec<(usize, Op)> = per_shard
        .into_iter()
        .map(|(s, items)| (s, Op::EpochEnds { items }))
        .collect();
    let n = ops.len();
    let rx = fan_out(shard, ops);
    for (_, reply) in collect(&rx, n, None).await {
        let Reply::EpochEnds(rs) = reply else {
            continue;
        };
        for (slot, answer) in rs {
            let (ti, pi) = at[slot];
            let p = &mut topics[ti].partitions[pi];
            match answer {
                EpochAnswer::Ended {
                    leader_epoch,
                    end_offset,
                } => {
                    p.leader_epoch = leader_epoch;
                    p.end_offset = end_offset;
                }
                EpochAnswer::Fenced { .. } => p.error_code = codec::FENCED_LEADER_EPOCH,
                EpochAnswer::UnknownEpoch { .. } => p.error_code = codec::UNKNOWN_LEADER_EPOCH,
                EpochAnswer::Failed(e) => p.error_code = codec::wire_to_kafka(e.code),
            }
        }
    }
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}

async fn create_topics(ctx: &Ctx, version: i16, r: CreateTopicsRequest) -> CreateTopicsResponse {
    let default_partitions = ctx.shard.shared.kafka.config.default_partitions;
    let mut results: Vec<CreatableTopicResult> = Vec::new();
    let mut wanted: Vec<native::CreateTopic> = Vec::new();
    for t in r.topics {
        let name = t.name.0.as_str().to_owned();
        let partitions = if t.num_partitions < 0 {
            default_partitions
        } else {
            t.num_partitions as u32
        };
        let mut res = CreatableTopicResult::default()
            .with_name(t.name.clone())
            .with_num_partitions(partitions as i32)
            .with_replication_factor(1)
            .with_configs(Some(Vec::new()));
        if t.replication_factor > 1 {
            res.error_code = codec::INVALID_REPLICATION_FACTOR;
            res.error_message = Some(sb("one broker: replication factor must be 1 or -1"));
        } else if !t.assignments.is_empty() {
            res.error_code = codec::INVALID_REQUEST;
            res.error_message = Some(sb("manual replica assignment is not supported"));
        } else {
            let configs = t
                .configs
                .iter()
                .map(|c| {
                    (
                        c.name.as_str().to_owned(),
                        c.value
                            .as_ref()
                            .map(|v| v.as_str().to_owned())
                            .unwrap_or_default(),
                    )
                })
                .collect::<Vec<_>>();
            let check = metadata::validate_topic_name(&name)
                .and_then(|()| metadata::validate_partition_count(partitions))
                .and_then(|()| {
                    metadata::log_config(&configs.iter().cloned().collect()).map(|_| ())
                });
            match check {
                Err(e) => {
                    res.error_code = codec::wire_to_kafka(e.code);
                    res.error_message = Some(StrBytes::from_string(e.message));
                }
                Ok(()) if r.validate_only => {
                    if ctx.shard.metadata.borrow().topics.contains_key(&name) {
                        res.error_code = codec::TOPIC_ALREADY_EXISTS;
                    }
                }
                Ok(()) => wanted.push(native::CreateTopic {
                    name: name.clone(),
                    partitions,
                    configs,
                }),
            }
        }
        results.push(res);
    }
    if !wanted.is_empty() {
        let outcome = admin(
            ctx,
            AdminOp::CreateTopics(native::CreateTopicsRequest { topics: wanted }),
        )
        .await;
        apply_topic_results(
            outcome,
            &mut results,
            |r| r.name.0.as_str(),
            |r, code, msg| {
                r.error_code = code;
                r.error_message = msg;
            },
        );
    }
    if version >= 7 {
        let meta = ctx.shard.metadata.borrow();
        for r in &mut results {
            if let Some(t) = meta.topics.get(r.name.0.as_str()) {
                r.topic_id = topic_uuid(t.id);
            }
        }
    }
    CreateTopicsResponse::default().with_topics(results)
}

/// Copies shard 0's per-topic results into Kafka results, by name.
fn apply_topic_results<T>(
    outcome: Result<native::TopicResults, WireError>,
    results: &mut [T],
    name: impl Fn(&T) -> &str,
    set: impl Fn(&mut T, i16, Option<StrBytes>),
) {
    match outcome {
        Ok(t) => {
            let by_name: HashMap<&str, &native::TopicResult> =
                t.results.iter().map(|r| (r.name.as_str(), r)).collect();
            for r in results.iter_mut() {
                if let Some(tr) = by_name.get(name(r)) {
                    let code = codec::wire_to_kafka(tr.error);
                    let msg = (code != 0).then(|| StrBytes::from_string(tr.message.clone()));
                    set(r, code, msg);
                }
            }
        }
        Err(e) => {
            for r in results.iter_mut() {
                set(
                    r,
                    codec::wire_to_kafka(e.code),
                    Some(StrBytes::from_string(e.message.clone())),
                );
            }
        }
    }
}

async fn delete_topics(ctx: &Ctx, r: DeleteTopicsRequest) -> DeleteTopicsResponse {
    let names: Vec<String> = r
        .topic_names
        .iter()
        .map(|n| n.0.as_str().to_owned())
        .collect();
    let mut results: Vec<DeletableTopicResult> = names
        .iter()
        .map(|n| DeletableTopicResult::default().with_name(Some(TopicName(sb(n)))))
        .collect();
    if !names.is_empty() {
        let outcome = admin(
            ctx,
            AdminOp::DeleteTopics(native::DeleteTopicsRequest { names }),
        )
        .await;
        apply_topic_results(
            outcome,
            &mut results,
            |r| r.name.as_ref().map(|n| n.0.as_str()).unwrap_or(""),
            |r, code, msg| {
                r.error_code = code;
                r.error_message = msg;
            },
        );
    }
    DeleteTopicsResponse::default().with_responses(results)
}

async fn create_partitions(ctx: &Ctx, r: CreatePartitionsRequest) -> CreatePartitionsResponse {
    let mut results: Vec<CreatePartitionsTopicResult> = Vec::new();
    let mut wanted = Vec::new();
    for t in r.topics {
        let mut res = CreatePartitionsTopicResult::default().with_name(t.name.clone());
        if t.count <= 0 {
            res.error_code = codec::INVALID_PARTITIONS;
        } else if !r.validate_only {
            wanted.push(native::PartitionsIncrease {
                name: t.name.0.as_str().to_owned(),
                total: t.count as u32,
            });
        }
        results.push(res);
    }
    if !wanted.is_empty() {
        let outcome = admin(
            ctx,
            AdminOp::CreatePartitions(native::CreatePartitionsRequest { topics: wanted }),
        )
        .await;
        apply_topic_results(
            outcome,
            &mut results,
            |r| r.name.0.as_str(),
            |r, code, msg| {
                r.error_code = code;
                r.error_message = msg;
            },
        );
    }
    CreatePartitionsResponse::default().with_results(results)
}

/// One resource of an AlterConfigs request: type, name, the changes (or
/// why they cannot be applied).
type AlterItem = (i8, String, Result<Vec<(String, Option<String>)>, String>);

/// Kafka's AlterConfigs (`replace`) and IncrementalAlterConfigs on topics,
/// through the shared admin operation (`AdminOp::AlterConfigs`); broker
/// resources are refused. Answers (type, name, error code, message) per
/// resource, in order.
async fn alter_configs(
    ctx: &Ctx,
    items: Vec<AlterItem>,
    replace: bool,
    validate_only: bool,
) -> Vec<(i8, String, i16, Option<String>)> {
    let mut out: Vec<(i8, String, i16, Option<String>)> = Vec::new();
    let mut wanted = Vec::new();
    for (t, name, changes) in items {
        match (t, changes) {
            (2, Ok(changes)) => {
                wanted.push(crate::router::AlterTopicConfigs {
                    topic: name.clone(),
                    replace,
                    changes,
                    validate_only,
                });
                out.push((t, name, codec::NONE, None));
            }
            (2, Err(msg)) => out.push((t, name, codec::INVALID_REQUEST, Some(msg))),
            _ => out.push((
                t,
                name,
                codec::INVALID_REQUEST,
                Some("only topic configs can be altered".to_owned()),
            )),
        }
    }
    if !wanted.is_empty() {
        let outcome = admin(ctx, AdminOp::AlterConfigs(wanted)).await;
        let mut topics: Vec<(String, i16, Option<StrBytes>)> = out
            .iter()
            .filter(|o| o.0 == 2 && o.2 == codec::NONE)
            .map(|o| (o.1.clone(), codec::NONE, None))
            .collect();
        apply_topic_results(
            outcome,
            &mut topics,
            |r| r.0.as_str(),
            |r, code, msg| {
                r.1 = code;
                r.2 = msg;
            },
        );
        for (name, code, msg) in topics {
            if let Some(o) = out
                .iter_mut()
                .find(|o| o.0 == 2 && o.1 == name && o.2 == codec::NONE)
            {
                o.2 = code;
                o.3 = msg.map(|m| m.to_string());
            }
        }
    }
    out
}

fn describe_configs(ctx: &Ctx, r: DescribeConfigsRequest) -> DescribeConfigsResponse {
    let meta = ctx.shard.metadata.borrow();
    let results = r
        .resources
        .into_iter()
        .map(|res| {
            let mut out = DescribeConfigsResult::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone());
            let wanted = |k: &str| {
                res.configuration_keys
                    .as_ref()
                    .map(|keys| keys.iter().any(|w| w.as_str() == k))
                    .unwrap_or(true)
            };
            match res.resource_type {
                // Topic: its explicit configs (source 1: topic config).
                2 => match meta.topics.get(res.resource_name.as_str()) {
                    None => {
                        out.error_code = codec::UNKNOWN_TOPIC_OR_PARTITION;
                        out.error_message = Some(sb("unknown topic"));
                    }
                    Some(t) => {
                        out.configs = t
                            .configs
                            .iter()
                            .filter(|(k, _)| wanted(k))
                            .map(|(k, v)| {
                                DescribeConfigsResourceResult::default()
                                    .with_name(sb(k))
                                    .with_value(Some(sb(v)))
                                    .with_config_source(1)
                            })
                            .collect();
                        // The cleaner's settings in force where the topic
                        // sets none (source 5: default).
                        out.configs.extend(
                            metadata::CLEANER_CONFIG_DEFAULTS
                                .iter()
                                .filter(|(k, _)| wanted(k) && !t.configs.contains_key(*k))
                                .map(|(k, v)| {
                                    DescribeConfigsResourceResult::default()
                                        .with_name(sb(k))
                                        .with_value(Some(sb(v)))
                                        .with_config_source(5)
                                        .with_is_default(true)
                                }),
                        );
                    }
                },
                // Broker: nothing configurable through Kafka.
                4 => {}
                _ => {
                    out.error_code = codec::INVALID_REQUEST;
                    out.error_message = Some(sb("only topic and broker resources"));
                }
            }
            out
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

/// Kafka's InitProducerId through the operation every protocol shares
/// (`ops::init_producer_id`); with a transactional id, through the
/// transaction coordinator (`kafka/txn.rs`).
async fn init_producer_id(
    ctx: &Ctx,
    version: i16,
    r: InitProducerIdRequest,
) -> InitProducerIdResponse {
    if let Some(t) = r.transactional_id.as_ref().filter(|t| !t.0.is_empty()) {
        let t = t.0.as_str().to_owned();
        return super::txn::init_producer_id(ctx, version, &r, &t).await;
    }
    let request = ops::InitProducer {
        transactional_id: r.transactional_id.as_ref().map(|t| t.0.as_str()),
        producer_id: r.producer_id.0,
        producer_epoch: r.producer_epoch,
    };
    match ops::init_producer_id(&ctx.shard, request) {
        Ok((id, epoch)) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(epoch),
        Err(ops::InitProducerIdError::TransactionsUnsupported { .. }) => {
            InitProducerIdResponse::default()
                .with_error_code(codec::TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
        }
    }
}

async fn delete_records(ctx: &Ctx, r: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let shard = &ctx.shard;
    let mut topics: Vec<DeleteRecordsTopicResult> = Vec::new();
    let mut at: Vec<(usize, usize)> = Vec::new();
    let mut per_shard: BTreeMap<usize, Vec<(usize, String, u32, i64)>> = BTreeMap::new();
    for t in r.topics {
        let name = t.name.0.as_str().to_owned();
        let ti = topics.len();
        let mut res = DeleteRecordsTopicResult::default().with_name(t.name.clone());
        for p in t.partitions {
            let pi = res.partitions.len();
            let mut pr = DeleteRecordsPartitionResult::default()
                .with_partition_index(p.partition_index)
                .with_low_watermark(-1);
            let owner = if p.partition_index < 0 {
                Err(WireError::unknown_partition(&name, 0))
            } else {
                shard.owner(&name, p.partition_index as u32)
            };
            match owner {
                Err(e) => pr.error_code = codec::wire_to_kafka(e.code),
                Ok(s) => {
                    per_shard.entry(s).or_default().push((
                        at.len(),
                        name.clone(),
                        p.partition_index as u32,
                        p.offset,
                    ));
                    at.push((ti, pi));
                }
            }
            res.partitions.push(pr);
        }
        topics.push(res);
    }
    let ops: Vec<(usize, Op)> = per_shard
        .into_iter()
        .map(|(s, items)| (s, Op::DeleteRecords { items }))
        .collect();
    let n = ops.len();
    let rx = fan_out(shard, ops);
    for (_, reply) in collect(&rx, n, None).await {
        if let Reply::DeleteRecords(rs) = reply {
            for (slot, r) in rs {
                let (ti, pi) = at[slot];
                let p = &mut topics[ti].partitions[pi];
                match r {
                    Ok(low) => {
                        p.error_code = codec::NONE;
                        p.low_watermark = low as i64;
                    }
                    Err(e) => {
                        p.error_code = codec::wire_to_kafka(e.code);
                        p.low_watermark = -1;
                    }
                }
            }
        }
    }
    DeleteRecordsResponse::default().with_topics(topics)
}
