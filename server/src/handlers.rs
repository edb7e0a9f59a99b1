//! Request handlers, coordinator side: turn one decoded request into
//! per-shard [`Op`]s, run them (in place or over the mesh), and assemble the
//! response in request order. The owner side is in `execute.rs`.

use crate::connection::Outgoing;
use crate::engine::Durability;
use crate::error::WireError;
use crate::group::group_shard;
use crate::limits::*;
use crate::metadata;
use crate::metrics::Protocol;
use crate::ops::{self, call, collect, fan_out, reply_error};
use crate::producers::{ProducerBatch, RefusalKind};
use crate::router::{AdminOp, Op, ProduceError, ProduceItem, Reply};
use crate::shard::Shard;
use bytes::{Bytes, BytesMut};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};
use strom_flatbuffers::protocol::*;

fn respond(cid: u64, body: &ResponseBody, trailer: Vec<Bytes>) -> Outgoing {
    let head = encode_response(cid, body).unwrap_or_else(|e| {
        encode_error_response(
            cid,
            ErrorCode::Internal,
            &format!("encoding the response: {e}"),
        )
    });
    Outgoing { head, trailer }
}

pub fn error_outgoing(cid: u64, e: &WireError) -> Outgoing {
    Outgoing {
        head: encode_error_response(cid, e.code, &e.message),
        trailer: Vec::new(),
    }
}

pub fn api_versions(shard: &Shard, r: &ApiVersionsRequest) -> (bool, ApiVersionsResponse) {
    let ok = r.min_version <= PROTOCOL_VERSION_MAX && r.max_version >= PROTOCOL_VERSION_MIN;
    let (error, message) = if ok {
        (ErrorCode::None, String::new())
    } else {
        (
            ErrorCode::UnsupportedVersion,
            format!(
                "client speaks versions {}..={}, server {PROTOCOL_VERSION_MIN}..={PROTOCOL_VERSION_MAX}",
                r.min_version, r.max_version
            ),
        )
    };
    let resp = ApiVersionsResponse {
        error,
        message,
        min_version: PROTOCOL_VERSION_MIN,
        max_version: PROTOCOL_VERSION_MAX,
        message_bytes_max: REQUEST_BYTES_MAX as u32,
        frame_bytes_max: FRAME_BYTES_LIMIT as u32,
        inflight_requests_max: INFLIGHT_REQUESTS_MAX as u32,
        fetch_partitions_max: FETCH_PARTITIONS_MAX as u32,
        fetch_wait_max_ms: FETCH_WAIT_MAX_MS,
        server_version: format!("strom-server {}", env!("CARGO_PKG_VERSION")),
        shard_count: shard.shards as u16,
        shard_id: shard.id as u16,
        shard_ports: shard.shared.shard_ports.get().cloned().unwrap_or_default(),
        node_id: shard.shared.cluster.as_ref().map_or(0, |c| c.node_id),
        nodes: cluster_nodes(&shard.shared),
    };
    (ok, resp)
}

/// Cluster mode: every node and its native address, this node first (its
/// own listener's address unless that is a wildcard), then the peers as
/// `--peer ...,native=` names them (empty where not given). Empty on a
/// single node.
fn cluster_nodes(shared: &crate::shard::Shared) -> Vec<NodeAddress> {
    let Some(cluster) = &shared.cluster else {
        return Vec::new();
    };
    let own = shared
        .native_addr
        .get()
        .filter(|a| !a.ip().is_unspecified() && a.port() != 0)
        .map(ToString::to_string)
        .unwrap_or_default();
    let mut nodes = Vec::with_capacity(cluster.peers.len() + 1);
    nodes.push(NodeAddress {
        id: cluster.node_id,
        native_addr: own,
    });
    nodes.extend(cluster.peers.iter().map(|p| NodeAddress {
        id: p.id,
        native_addr: p.native.map(|a| a.to_string()).unwrap_or_default(),
    }));
    nodes
}

/// The first error an answer carries, at the top or in any of its parts
/// (for metrics and client-error logs).
fn first_error(body: &ResponseBody) -> Option<(ErrorCode, &str)> {
    fn first<'a>(
        mut it: impl Iterator<Item = (ErrorCode, &'a str)>,
    ) -> Option<(ErrorCode, &'a str)> {
        it.find(|(c, _)| *c != ErrorCode::None)
    }
    match body {
        ResponseBody::ApiVersions(r) => first(std::iter::once((r.error, r.message.as_str()))),
        ResponseBody::CreateTopics(r)
        | ResponseBody::DeleteTopics(r)
        | ResponseBody::CreatePartitions(r) => {
            first(r.results.iter().map(|x| (x.error, x.message.as_str())))
        }
        ResponseBody::ListTopics(_) | ResponseBody::ListGroups(_) => None,
        ResponseBody::DescribeTopics(r) => {
            first(r.topics.iter().map(|x| (x.error, x.message.as_str())))
        }
        ResponseBody::Produce(r) => first(r.results.iter().map(|x| (x.error, x.message.as_str()))),
        ResponseBody::Fetch(r) => first(r.results.iter().map(|x| (x.error, x.message.as_str()))),
        ResponseBody::ListOffsets(r) => {
            first(r.results.iter().map(|x| (x.error, x.message.as_str())))
        }
        ResponseBody::OffsetCommit(r) => {
            first(r.results.iter().map(|x| (x.error, x.message.as_str())))
        }
        ResponseBody::OffsetFetch(r) => {
            first(r.results.iter().map(|x| (x.error, x.message.as_str())))
        }
        ResponseBody::Error(r) => first(std::iter::once((r.error, r.message.as_str()))),
        ResponseBody::JoinGroup(r) => first(std::iter::once((r.error, r.message.as_str()))),
        ResponseBody::SyncGroup(r) => first(std::iter::once((r.error, r.message.as_str()))),
        ResponseBody::Heartbeat(r) | ResponseBody::LeaveGroup(r) => {
            first(std::iter::once((r.error, r.message.as_str())))
        }
        ResponseBody::DescribeGroups(r) => {
            first(r.groups.iter().map(|x| (x.error, x.message.as_str())))
        }
        ResponseBody::ResetOffsets(r) => first(
            std::iter::once((r.error, r.message.as_str()))
                .chain(r.results.iter().map(|x| (x.error, x.message.as_str()))),
        ),
        ResponseBody::InitProducerId(r) => first(std::iter::once((r.error, r.message.as_str()))),
    }
}

/// Handles one request (the handshake is handled by the connection), then
/// counts it and logs its error (rate-limited). `None` means no response
/// goes out (produce with acks=None).
pub async fn handle(
    shard: &Rc<Shard>,
    cid: u64,
    body: RequestBody,
    trailer: BytesMut,
    started: Instant,
) -> Option<Outgoing> {
    let api = body.name();
    let (out, error) = answer(shard, cid, body, trailer).await;
    let name = error.as_ref().map(|e| error_name(e.code)).unwrap_or("None");
    shard
        .metrics()
        .request(Protocol::Native, api, name, started.elapsed());
    if let Some(e) = error {
        shard
            .metrics()
            .client_error(shard.id, Protocol::Native, api, name, &e.message);
    }
    out
}

/// The answer to one request and the first error it carries.
async fn answer(
    shard: &Rc<Shard>,
    cid: u64,
    body: RequestBody,
    trailer: BytesMut,
) -> (Option<Outgoing>, Option<WireError>) {
    let result: Result<ResponseBody, WireError> = match body {
        RequestBody::ApiVersions(r) => Ok(ResponseBody::ApiVersions(api_versions(shard, &r).1)),
        RequestBody::CreateTopics(r) => Box::pin(admin(shard, AdminOp::CreateTopics(r)))
            .await
            .map(ResponseBody::CreateTopics),
        RequestBody::DeleteTopics(r) => Box::pin(admin(shard, AdminOp::DeleteTopics(r)))
            .await
            .map(ResponseBody::DeleteTopics),
        RequestBody::CreatePartitions(r) => Box::pin(admin(shard, AdminOp::CreatePartitions(r)))
            .await
            .map(ResponseBody::CreatePartitions),
        RequestBody::ListTopics => Ok(ResponseBody::ListTopics(list_topics(shard))),
        RequestBody::InitProducerId(r) => {
            Ok(ResponseBody::InitProducerId(init_producer_id(shard, &r)))
        }
        RequestBody::DescribeTopics(r) => Box::pin(describe(shard, r))
            .await
            .map(ResponseBody::DescribeTopics),
        RequestBody::Produce(r) => {
            let acks = r.acks;
            let resp = ResponseBody::Produce(produce(shard, r, trailer).await);
            if acks == Acks::None {
                let error = first_error(&resp).map(|(c, m)| WireError::new(c, m));
                return (None, error);
            }
            Ok(resp)
        }
        RequestBody::Fetch(r) => match Box::pin(fetch(shard, r)).await {
            Ok((resp, frames)) => {
                let body = ResponseBody::Fetch(resp);
                let error = first_error(&body).map(|(c, m)| WireError::new(c, m));
                return (Some(respond(cid, &body, frames)), error);
            }
            Err(e) => Err(e),
        },
        RequestBody::ListOffsets(r) => Box::pin(list_offsets(shard, r))
            .await
            .map(ResponseBody::ListOffsets),
        RequestBody::OffsetCommit(r) => Box::pin(offset_commit(shard, r))
            .await
            .map(ResponseBody::OffsetCommit),
        RequestBody::OffsetFetch(r) => Box::pin(offset_fetch(shard, r))
            .await
            .map(ResponseBody::OffsetFetch),
        body @ (RequestBody::JoinGroup(_)
        | RequestBody::SyncGroup(_)
        | RequestBody::Heartbeat(_)
        | RequestBody::LeaveGroup(_)
        | RequestBody::ListGroups
        | RequestBody::DescribeGroups(_)
        | RequestBody::ResetOffsets(_)) => {
            Box::pin(crate::group::native::handle(shard, body)).await
        }
    };
    match result {
        Ok(body) => {
            let error = first_error(&body).map(|(c, m)| WireError::new(c, m));
            (Some(respond(cid, &body, Vec::new())), error)
        }
        Err(e) => (Some(error_outgoing(cid, &e)), Some(e)),
    }
}

async fn admin(shard: &Rc<Shard>, op: AdminOp) -> Result<TopicResults, WireError> {
    match call(shard, 0, Op::Admin(op)).await {
        Reply::Topics(t) => Ok(t),
        other => Err(reply_error(other)),
    }
}

/// The native InitProducerId, through the operation every protocol shares.
fn init_producer_id(shard: &Shard, r: &InitProducerIdRequest) -> InitProducerIdResponse {
    let request = ops::InitProducer {
        transactional_id: Some(r.transactional_id.as_str()),
        producer_id: r.producer_id,
        producer_epoch: r.producer_epoch,
    };
    match ops::init_producer_id(shard, request) {
        Ok((producer_id, producer_epoch)) => InitProducerIdResponse {
            producer_id,
            producer_epoch,
            ..Default::default()
        },
        Err(e) => InitProducerIdResponse {
            error: ErrorCode::InvalidRequest,
            message: e.to_string(),
            ..Default::default()
        },
    }
}

/// The idempotence fields of a produced frame (`docs/format.md`, frame
/// header bytes 48..64), or `None` for a producer that is not idempotent.
/// A frame whose header cannot be trusted (too short, damaged) is `None`
/// too: the append refuses it with the precise error, and it is never
/// answered as a duplicate. An idempotent frame whose fields are invalid
/// (a negative epoch or sequence) is refused here.
fn frame_producer(frame: &[u8]) -> Result<Option<ProducerBatch>, WireError> {
    let Ok(h) = strom_flatbuffers::verify_header(frame) else {
        return Ok(None);
    };
    // Transactions exist on the Kafka edge only: a native producer may not
    // write transactional batches, and no client may write markers.
    if h.is_transactional() || h.is_control() {
        return Err(WireError::new(
            ErrorCode::InvalidRequest,
            "transactional and control frames are not accepted from native producers",
        ));
    }
    ProducerBatch::from_fields(
        h.producer_id.get(),
        h.producer_epoch.get(),
        h.base_sequence.get(),
        h.record_count.get(),
    )
    .map_err(|m| WireError::new(ErrorCode::InvalidRequest, m))
}

/// The native code of an idempotence refusal (Kafka's codes of the same
/// names on the Kafka edge).
fn refusal_code(kind: RefusalKind) -> ErrorCode {
    match kind {
        RefusalKind::OutOfOrderSequence => ErrorCode::OutOfOrderSequence,
        RefusalKind::DuplicateSequence => ErrorCode::DuplicateSequence,
        RefusalKind::InvalidProducerEpoch => ErrorCode::InvalidProducerEpoch,
        RefusalKind::RecordWithoutKey => ErrorCode::InvalidRequest,
    }
}

fn list_topics(shard: &Shard) -> ListTopicsResponse {
    ListTopicsResponse {
        topics: shard
            .metadata
            .borrow()
            .topics
            .values()
            .map(|t| TopicListing {
                name: t.name.clone(),
                partitions: t.partitions,
            })
            .collect(),
    }
}

async fn describe(
    shard: &Rc<Shard>,
    r: DescribeTopicsRequest,
) -> Result<DescribeTopicsResponse, WireError> {
    if r.names.len() > TOPICS_PER_REQUEST_MAX {
        return Err(WireError::new(
            ErrorCode::InvalidRequest,
            format!(
                "{} topics named, the limit is {TOPICS_PER_REQUEST_MAX}",
                r.names.len()
            ),
        ));
    }
    let meta = shard.metadata.borrow().clone();
    let names: Vec<String> = if r.names.is_empty() {
        meta.topics.keys().cloned().collect()
    } else {
        r.names
    };
    let mut topics = Vec::with_capacity(names.len());
    // Per owner: the (topic index, partition) it describes, in order.
    let mut per_shard: BTreeMap<usize, Vec<(usize, u32)>> = BTreeMap::new();
    for (ti, name) in names.iter().enumerate() {
        let Some(t) = meta.topics.get(name) else {
            let e = WireError::unknown_topic(name);
            topics.push(TopicDescription {
                name: name.clone(),
                error: e.code,
                message: e.message,
                ..Default::default()
            });
            continue;
        };
        topics.push(TopicDescription {
            name: name.clone(),
            configs: t
                .configs
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            partitions: (0..t.partitions)
                .map(|p| PartitionDescription {
                    partition: p,
                    owner_shard: metadata::owner_shard(t.id, p, shard.shards) as u16,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
        for p in 0..t.partitions {
            per_shard
                .entry(metadata::owner_shard(t.id, p, shard.shards))
                .or_default()
                .push((ti, p));
        }
    }
    let ops: Vec<(usize, Op)> = per_shard
        .iter()
        .map(|(s, items)| {
            let items = items
                .iter()
                .map(|(ti, p)| (names[*ti].clone(), *p))
                .collect();
            (*s, Op::Describe { items })
        })
        .collect();
    let n = ops.len();
    let rx = fan_out(shard, ops);
    for (target, reply) in collect(&rx, n, None).await {
        let idx = &per_shard[&target];
        match reply {
            Reply::Describe(ds) => {
                for ((ti, p), d) in idx.iter().zip(ds) {
                    topics[*ti].partitions[*p as usize] = d;
                }
            }
            other => {
                let e = reply_error(other);
                for (ti, p) in idx {
                    let pd = &mut topics[*ti].partitions[*p as usize];
                    pd.error = e.code;
                    pd.message = e.message.clone();
                }
            }
        }
    }
    Ok(DescribeTopicsResponse { topics })
}

async fn produce(shard: &Rc<Shard>, r: ProduceRequest, trailer: BytesMut) -> ProduceResponse {
    let mut results: Vec<ProduceResult> = r
        .batches
        .iter()
        .map(|b| ProduceResult {
            topic: b.topic.clone(),
            partition: b.partition,
            ..Default::default()
        })
        .collect();
    let fail_all = |results: &mut Vec<ProduceResult>, e: WireError| {
        for res in results.iter_mut() {
            res.error = e.code;
            res.message = e.message.clone();
        }
    };
    if r.batches.len() > PRODUCE_BATCHES_MAX {
        let e = WireError::new(
            ErrorCode::InvalidRequest,
            format!(
                "{} batches in one request, the limit is {PRODUCE_BATCHES_MAX}",
                r.batches.len()
            ),
        );
        fail_all(&mut results, e);
        return ProduceResponse { results };
    }
    let Some(frames) = split_trailer_mut(trailer, r.batches.iter().map(|b| b.batch_len as usize))
    else {
        fail_all(
            &mut results,
            WireError::new(
                ErrorCode::InvalidRequest,
                "batch lengths do not match the trailer",
            ),
        );
        return ProduceResponse { results };
    };
    // acks=leader means written to the device (survives kill -9 of the
    // server, as Kafka's acks=1 survives a broker crash through the page
    // cache); acks=durable means fdatasync'd; acks=none is in memory.
    let durability = match r.acks {
        Acks::Durable => Durability::Durable,
        Acks::Leader => Durability::Written,
        _ => Durability::Buffered,
    };
    let mut per_shard: BTreeMap<usize, Vec<ProduceItem>> = BTreeMap::new();
    for (index, (b, frame)) in r.batches.into_iter().zip(frames).enumerate() {
        // Batches of an idempotent producer carry its fields in the frame
        // header; the owner checks them as it does Kafka's.
        let routed = frame_producer(&frame)
            .and_then(|producer| shard.owner(&b.topic, b.partition).map(|s| (s, producer)));
        match routed {
            Ok((s, producer)) => per_shard.entry(s).or_default().push(ProduceItem {
                index,
                topic: b.topic,
                partition: b.partition,
                frame,
                producer,
            }),
            Err(e) => {
                results[index].error = e.code;
                results[index].message = e.message;
            }
        }
    }
    let mut waiting: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    let ops: Vec<(usize, Op)> = per_shard
        .into_iter()
        .map(|(s, items)| {
            waiting.insert(s, items.iter().map(|i| i.index).collect());
            (s, Op::Produce { items, durability })
        })
        .collect();
    let n = ops.len();
    let timeout_ms = match r.timeout_ms {
        0 => PRODUCE_TIMEOUT_MAX_MS,
        t => t.min(PRODUCE_TIMEOUT_MAX_MS),
    };
    let deadline = Instant::now() + Duration::from_millis(u64::from(timeout_ms));
    let rx = fan_out(shard, ops);
    for (target, reply) in collect(&rx, n, Some(deadline)).await {
        let indexes = waiting.remove(&target).unwrap_or_default();
        match reply {
            Reply::Produce(rs) => {
                for (i, produced) in rs {
                    let res = &mut results[i];
                    match produced {
                        Ok(a) => {
                            res.base_offset = a.base_offset;
                            res.last_offset = a.last_offset;
                            res.append_time_ms = a.append_time_ms;
                            res.log_start_offset = a.log_start_offset;
                        }
                        Err(ProduceError::Wire(e)) => {
                            res.error = e.code;
                            res.message = e.message;
                        }
                        Err(ProduceError::Refused(r)) => {
                            res.error = refusal_code(r.kind);
                            res.message = r.message;
                        }
                    }
                }
            }
            other => {
                let e = reply_error(other);
                for i in indexes {
                    results[i].error = e.code;
                    results[i].message = e.message.clone();
                }
            }
        }
    }
    for (_, indexes) in waiting {
        for i in indexes {
            results[i].error = ErrorCode::Timeout;
            results[i].message =
                format!("no answer within {timeout_ms} ms (the batch may still be appended)");
        }
    }
    ProduceResponse { results }
}

async fn fetch(
    shard: &Rc<Shard>,
    r: FetchRequest,
) -> Result<(FetchResponse, Vec<Bytes>), WireError> {
    if r.partitions.len() > FETCH_PARTITIONS_MAX {
        return Err(WireError::new(
            ErrorCode::InvalidRequest,
            format!(
                "{} partitions in one fetch, the limit is {FETCH_PARTITIONS_MAX}",
                r.partitions.len()
            ),
        ));
    }
    let max_bytes = match r.max_bytes as usize {
        0 => FETCH_BYTES_MAX,
        n => n.min(FETCH_BYTES_MAX),
    };
    let spec = ops::FetchSpec {
        parts: r
            .partitions
            .iter()
            .map(|p| ops::FetchPart {
                topic: p.topic.clone(),
                partition: p.partition,
                offset: p.offset,
                max_bytes: match p.partition_max_bytes as usize {
                    0 => max_bytes,
                    n => n.min(max_bytes),
                },
                read_committed: r.read_committed,
            })
            .collect(),
        max_bytes,
        min_bytes: r.min_bytes as usize,
        max_wait_ms: r.max_wait_ms.min(FETCH_WAIT_MAX_MS),
    };
    let outs = ops::fetch(shard, &spec).await;
    let mut results = Vec::with_capacity(outs.len());
    let mut trailer = Vec::new();
    for (p, o) in r.partitions.iter().zip(outs) {
        let mut len = 0usize;
        // Native clients do not filter: the server drops markers and
        // aborted transactions' frames for them.
        let read_through = o
            .frames
            .last()
            .and_then(|f| strom_flatbuffers::FrameHeader::ref_from(f))
            .map_or(0, |h| h.next_offset());
        let frames = if r.read_committed {
            ops::fetch::committed_frames(o.frames, &o.aborted)
        } else {
            o.frames
        };
        for f in frames {
            len += f.len();
            trailer.push(f);
        }
        let (error, message) = match o.error {
            Some(e) => (e.code, e.message),
            None => (ErrorCode::None, String::new()),
        };
        results.push(FetchResult {
            topic: p.topic.clone(),
            partition: p.partition,
            error,
            message,
            high_watermark: o.high_watermark,
            log_start_offset: o.log_start_offset,
            bytes_len: len as u32,
            last_stable_offset: o.last_stable_offset,
            read_through,
        });
    }
    Ok((FetchResponse { results }, trailer))
}

async fn list_offsets(
    shard: &Rc<Shard>,
    r: ListOffsetsRequest,
) -> Result<ListOffsetsResponse, WireError> {
    if r.partitions.len() > FETCH_PARTITIONS_MAX {
        return Err(WireError::new(
            ErrorCode::InvalidRequest,
            "too many partitions",
        ));
    }
    let mut results: Vec<ListOffsetsResult> = r
        .partitions
        .iter()
        .map(|p| ListOffsetsResult {
            topic: p.topic.clone(),
            partition: p.partition,
            offset: -1,
            ..Default::default()
        })
        .collect();
    let mut per_shard: BTreeMap<usize, Vec<(usize, ListOffsetsPartition)>> = BTreeMap::new();
    for (i, p) in r.partitions.into_iter().enumerate() {
        match shard.owner(&p.topic, p.partition) {
            Ok(s) => per_shard.entry(s).or_default().push((i, p)),
            Err(e) => {
                results[i].error = e.code;
                results[i].message = e.message;
            }
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
    for (_, reply) in collect(&rx, n, None).await {
        match reply {
            Reply::ListOffsets(rs) => {
                for (i, res) in rs {
                    results[i] = res;
                }
            }
            other => return Err(reply_error(other)),
        }
    }
    Ok(ListOffsetsResponse { results })
}

fn check_group(group: &str) -> Result<(), WireError> {
    if group.is_empty() || group.len() > GROUP_NAME_BYTES_MAX {
        return Err(WireError::new(
            ErrorCode::InvalidGroup,
            format!("group name must be 1 to {GROUP_NAME_BYTES_MAX} bytes"),
        ));
    }
    Ok(())
}

async fn offset_commit(
    shard: &Rc<Shard>,
    r: OffsetCommitRequest,
) -> Result<OffsetCommitResponse, WireError> {
    check_group(&r.group)?;
    if r.partitions.len() > FETCH_PARTITIONS_MAX {
        return Err(WireError::new(
            ErrorCode::InvalidRequest,
            "too many partitions",
        ));
    }
    let owner = group_shard(&r.group, &shard.placement());
    match call(shard, owner, Op::OffsetCommit(r)).await {
        Reply::OffsetCommit(c) => Ok(c),
        other => Err(reply_error(other)),
    }
}

async fn offset_fetch(
    shard: &Rc<Shard>,
    r: OffsetFetchRequest,
) -> Result<OffsetFetchResponse, WireError> {
    check_group(&r.group)?;
    if r.partitions.len() > FETCH_PARTITIONS_MAX {
        return Err(WireError::new(
            ErrorCode::InvalidRequest,
            "too many partitions",
        ));
    }
    let owner = group_shard(&r.group, &shard.placement());
    match call(shard, owner, Op::OffsetFetch(r)).await {
        Reply::OffsetFetch(c) => Ok(c),
        other => Err(reply_error(other)),
    }
}
