//! The native wire protocol codec: message envelope, request/response
//! encoding and decoding. I/O-free; the byte layout is specified in
//! `docs/protocol.md` and the tables in `schema/protocol.fbs`.
//!
//! A message on the socket is
//!
//! ```text
//! u32 LE total_len | u32 LE fb_len | fb_len bytes: Request or Response table | trailer
//! ```
//!
//! where `total_len` counts every byte after itself and the trailer is
//! `total_len - 4 - fb_len` raw bytes. Produce requests carry their batch
//! frames in the trailer (one per `ProduceBatch`, in order, `batch_len` bytes
//! each); fetch responses carry stored frames there (one run of whole frames
//! per `FetchResult`, `bytes_len` bytes each). Every other message has an
//! empty trailer.
//!
//! Invariants:
//! - Nothing here panics on input bytes. Every malformed message is a
//!   [`ProtocolError`]; an incomplete one is `Ok(None)` from [`peek_message`].
//! - A decoded message's trailer length equals the sum of the lengths its
//!   table declares (checked with overflow-safe arithmetic), so splitting the
//!   trailer by those lengths never goes out of bounds.
//! - The FlatBuffers verifier runs with bounded [`VerifierOptions`] sized from
//!   the table's own length before any field is read.
//!
//! Usage, client side: build a [`RequestBody`], [`encode_request`] it, write
//! the returned bytes followed by the trailer (the produce batches, in the
//! order of `ProduceRequest::batches`); read bytes until [`peek_message`]
//! returns bounds, then [`decode_response`]; for a fetch, cut the trailer
//! with [`split_trailer`] by `FetchResult::bytes_len` and walk each piece's
//! frames with [`frames`] and [`crate::records`].
//!
//! [`VerifierOptions`]: flatbuffers::VerifierOptions

use crate::frame::{peek_frame_len, FrameError, FRAME_BYTES_MAX};
use crate::generated::protocol_generated::strom::protocol as fb;
use bytes::{Bytes, BytesMut};
use flatbuffers::{FlatBufferBuilder, WIPOffset};
use std::ops::Range;

pub use fb::{Acks, ErrorCode, ResetTo};

/// Oldest protocol version this build speaks.
pub const PROTOCOL_VERSION_MIN: u16 = 1;
/// Newest protocol version this build speaks.
pub const PROTOCOL_VERSION_MAX: u16 = 1;
/// Bytes before the table: `total_len` and `fb_len`.
pub const ENVELOPE_PREFIX_BYTES: usize = 8;
/// Default cap on `total_len`: one maximal frame plus room for the table.
pub const MESSAGE_BYTES_MAX: usize = FRAME_BYTES_MAX + (1 << 20);
/// Hard cap on `fb_len` (the table alone), whatever the message cap.
pub const TABLE_BYTES_MAX: usize = 4 << 20;
/// `ListOffsetsPartition::timestamp` asking for the log start offset.
pub const LIST_OFFSETS_EARLIEST: i64 = -2;
/// `ListOffsetsPartition::timestamp` asking for the high watermark.
pub const LIST_OFFSETS_LATEST: i64 = -1;

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    #[error("message of {len_bytes} bytes exceeds the limit of {max_bytes} bytes")]
    TooLarge { len_bytes: usize, max_bytes: usize },
    #[error("malformed envelope: {reason}")]
    Envelope { reason: String },
    #[error("invalid flatbuffer: {reason}")]
    InvalidFlatbuffer { reason: String },
    #[error("message body is missing or of unknown type {body_type}")]
    UnknownBody { body_type: u8 },
    #[error("trailer holds {actual} bytes but the table declares {declared}")]
    TrailerMismatch { declared: u64, actual: usize },
    #[error("a message cannot declare a trailer of {declared} bytes (limit {max_bytes})")]
    TrailerTooLarge { declared: u64, max_bytes: usize },
}

impl ProtocolError {
    /// The wire error code for an error response about this message.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::TooLarge { .. } | ProtocolError::TrailerTooLarge { .. } => {
                ErrorCode::MessageTooLarge
            }
            _ => ErrorCode::InvalidRequest,
        }
    }
}

/// The stable name of an error code ("Unknown(N)"-free: unknown codes read
/// as "Unknown").
pub fn error_name(code: ErrorCode) -> &'static str {
    code.variant_name().unwrap_or("Unknown")
}

// ------------------------------------------------------------------ envelope

/// Where the parts of one complete message lie in the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageBounds {
    /// Bytes of the whole message, length prefix included (`4 + total_len`).
    pub message_len: usize,
    /// Bytes of the FlatBuffers table.
    pub fb_len: usize,
}

impl MessageBounds {
    pub fn table_range(&self) -> Range<usize> {
        ENVELOPE_PREFIX_BYTES..ENVELOPE_PREFIX_BYTES + self.fb_len
    }

    pub fn trailer_range(&self) -> Range<usize> {
        ENVELOPE_PREFIX_BYTES + self.fb_len..self.message_len
    }

    pub fn trailer_len(&self) -> usize {
        self.message_len - ENVELOPE_PREFIX_BYTES - self.fb_len
    }
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The full length (prefix included) that the message at the start of `buf`
/// announces, once its 4-byte length has arrived. Lets a reader reserve
/// buffer space before the message is complete. No checks.
pub fn announced_len(buf: &[u8]) -> Option<usize> {
    read_u32(buf, 0).map(|n| n as usize + 4)
}

/// Two-pass framing, first pass: the bounds of the message at the start of
/// `buf`, or `Ok(None)` until all of it has arrived. Refuses (as soon as the
/// 8 prefix bytes are there) a `total_len` above `total_len_max` or below 4,
/// and an `fb_len` that does not fit in `total_len` or exceeds
/// [`TABLE_BYTES_MAX`].
pub fn peek_message(
    buf: &[u8],
    total_len_max: usize,
) -> Result<Option<MessageBounds>, ProtocolError> {
    let Some(total_len) = read_u32(buf, 0) else {
        return Ok(None);
    };
    let total_len = total_len as usize;
    if total_len > total_len_max {
        return Err(ProtocolError::TooLarge {
            len_bytes: total_len,
            max_bytes: total_len_max,
        });
    }
    if total_len < 4 {
        return Err(ProtocolError::Envelope {
            reason: format!("total_len {total_len} is shorter than the fb_len field"),
        });
    }
    let Some(fb_len) = read_u32(buf, 4) else {
        return Ok(None);
    };
    let fb_len = fb_len as usize;
    if fb_len > total_len - 4 {
        return Err(ProtocolError::Envelope {
            reason: format!("fb_len {fb_len} exceeds total_len {total_len} - 4"),
        });
    }
    if fb_len > TABLE_BYTES_MAX {
        return Err(ProtocolError::TooLarge {
            len_bytes: fb_len,
            max_bytes: TABLE_BYTES_MAX,
        });
    }
    let message_len = total_len + 4;
    if buf.len() < message_len {
        return Ok(None);
    }
    Ok(Some(MessageBounds {
        message_len,
        fb_len,
    }))
}

/// Bounds of a buffer that must hold exactly one message.
fn exact_bounds(message: &[u8]) -> Result<MessageBounds, ProtocolError> {
    match peek_message(message, u32::MAX as usize)? {
        None => Err(ProtocolError::Envelope {
            reason: format!("incomplete message of {} bytes", message.len()),
        }),
        Some(b) if b.message_len != message.len() => Err(ProtocolError::Envelope {
            reason: format!(
                "message declares {} bytes but {} were given",
                b.message_len,
                message.len()
            ),
        }),
        Some(b) => Ok(b),
    }
}

fn verifier_options(table_len: usize) -> flatbuffers::VerifierOptions {
    flatbuffers::VerifierOptions {
        max_depth: 16,
        max_tables: table_len / 4 + 16,
        max_apparent_size: table_len.saturating_mul(2).max(1 << 12),
        ignore_missing_null_terminator: false,
    }
}

/// Reads field 0 (`correlation_id`) of the root table without the verifier,
/// every access bounds-checked. Used to address an error response to a
/// request whose body does not verify.
pub fn peek_correlation_id(message: &[u8]) -> Option<u64> {
    let total_len = read_u32(message, 0)? as usize;
    let fb_len = read_u32(message, 4)? as usize;
    let end = ENVELOPE_PREFIX_BYTES
        .checked_add(fb_len)?
        .min(message.len())
        .min(total_len.checked_add(4)?);
    let table = message.get(ENVELOPE_PREFIX_BYTES..end)?;
    let root = read_u32(table, 0)? as usize;
    let soffset = read_u32(table, root)? as i32 as i64;
    let vtable = usize::try_from(root as i64 - soffset).ok()?;
    let vt_len = u16::from_le_bytes(table.get(vtable..vtable + 2)?.try_into().ok()?) as usize;
    if vt_len < 6 {
        return Some(0);
    }
    let field = u16::from_le_bytes(table.get(vtable + 4..vtable + 6)?.try_into().ok()?) as usize;
    if field == 0 {
        return Some(0);
    }
    let at = root.checked_add(field)?;
    let b = table.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

// ------------------------------------------------------------------- bodies

/// A (key, value) configuration entry.
pub type Config = Vec<(String, String)>;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ApiVersionsRequest {
    pub client_name: String,
    pub min_version: u16,
    pub max_version: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ApiVersionsResponse {
    pub error: ErrorCode,
    pub message: String,
    pub min_version: u16,
    pub max_version: u16,
    pub message_bytes_max: u32,
    pub frame_bytes_max: u32,
    pub inflight_requests_max: u32,
    pub fetch_partitions_max: u32,
    pub fetch_wait_max_ms: u32,
    pub server_version: String,
    pub shard_count: u16,
    /// The shard serving this connection.
    pub shard_id: u16,
    /// Index = shard id: the port where that shard alone accepts
    /// connections (empty: no direct ports).
    pub shard_ports: Vec<u16>,
    /// Cluster mode: the node serving this connection (0: a single node).
    pub node_id: u64,
    /// Cluster mode: every node and where native clients reach it (empty on
    /// a single node).
    pub nodes: Vec<NodeAddress>,
}

/// Where native clients reach one node of a cluster (`native_addr` empty:
/// not known to the answering node).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeAddress {
    pub id: u64,
    pub native_addr: String,
}

/// Per-topic outcome of create, delete and create-partitions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TopicResult {
    pub name: String,
    pub error: ErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CreateTopic {
    pub name: String,
    pub partitions: u32,
    pub configs: Config,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CreateTopicsRequest {
    pub topics: Vec<CreateTopic>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TopicResults {
    pub results: Vec<TopicResult>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeleteTopicsRequest {
    pub names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TopicListing {
    pub name: String,
    pub partitions: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListTopicsResponse {
    pub topics: Vec<TopicListing>,
}

/// Empty `names` means every topic.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DescribeTopicsRequest {
    pub names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PartitionDescription {
    pub partition: u32,
    pub error: ErrorCode,
    pub message: String,
    pub log_start_offset: u64,
    pub high_watermark: u64,
    pub owner_shard: u16,
    /// Replication: the leader's node id as the answering node knows it
    /// (0: none known, or a single node) and its leader epoch.
    pub leader_node: u64,
    pub leader_epoch: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TopicDescription {
    pub name: String,
    pub error: ErrorCode,
    pub message: String,
    pub configs: Config,
    pub partitions: Vec<PartitionDescription>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DescribeTopicsResponse {
    pub topics: Vec<TopicDescription>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PartitionsIncrease {
    pub name: String,
    /// The new total partition count.
    pub total: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CreatePartitionsRequest {
    pub topics: Vec<PartitionsIncrease>,
}

/// One batch frame of a produce request; its bytes are in the trailer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProduceBatch {
    pub topic: String,
    pub partition: u32,
    pub batch_len: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceRequest {
    pub acks: Acks,
    pub timeout_ms: u32,
    pub batches: Vec<ProduceBatch>,
}

impl Default for ProduceRequest {
    fn default() -> Self {
        ProduceRequest {
            acks: Acks::Leader,
            timeout_ms: 30_000,
            batches: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProduceResult {
    pub topic: String,
    pub partition: u32,
    pub error: ErrorCode,
    pub message: String,
    pub base_offset: u64,
    pub last_offset: u64,
    pub append_time_ms: i64,
    pub log_start_offset: u64,
}

/// One result per request batch, in request order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProduceResponse {
    pub results: Vec<ProduceResult>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FetchPartition {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub partition_max_bytes: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FetchRequest {
    pub max_wait_ms: u32,
    pub min_bytes: u32,
    pub max_bytes: u32,
    pub partitions: Vec<FetchPartition>,
    /// Only committed data: below the last stable offset, without aborted
    /// transactions' frames and without markers.
    pub read_committed: bool,
}

/// One result per requested partition, in request order; its `bytes_len`
/// bytes of whole frames are in the trailer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FetchResult {
    pub topic: String,
    pub partition: u32,
    pub error: ErrorCode,
    pub message: String,
    pub high_watermark: u64,
    pub log_start_offset: u64,
    pub bytes_len: u32,
    /// Below it no transaction is open (the high watermark when none is).
    pub last_stable_offset: u64,
    /// The offset after the last frame the answer covered, frames left out
    /// by read_committed included (0: none); consumers move past it.
    pub read_through: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FetchResponse {
    pub results: Vec<FetchResult>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListOffsetsPartition {
    pub topic: String,
    pub partition: u32,
    /// [`LIST_OFFSETS_EARLIEST`], [`LIST_OFFSETS_LATEST`] or a timestamp (ms).
    pub timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListOffsetsRequest {
    pub partitions: Vec<ListOffsetsPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListOffsetsResult {
    pub topic: String,
    pub partition: u32,
    pub error: ErrorCode,
    pub message: String,
    /// -1 when no record is at or after the timestamp asked for.
    pub offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListOffsetsResponse {
    pub results: Vec<ListOffsetsResult>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OffsetCommitPartition {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub metadata: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OffsetCommitRequest {
    pub group: String,
    pub partitions: Vec<OffsetCommitPartition>,
    /// Empty for a commit outside group management (accepted only while
    /// the group has no members); else the member's id and generation.
    pub member_id: String,
    pub generation: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OffsetCommitResult {
    pub topic: String,
    pub partition: u32,
    pub error: ErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OffsetCommitResponse {
    pub results: Vec<OffsetCommitResult>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: u32,
}

/// Empty `partitions` means everything the group committed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OffsetFetchRequest {
    pub group: String,
    pub partitions: Vec<TopicPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OffsetFetchResult {
    pub topic: String,
    pub partition: u32,
    pub error: ErrorCode,
    pub message: String,
    /// -1 when nothing was committed.
    pub offset: i64,
    pub metadata: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OffsetFetchResponse {
    pub results: Vec<OffsetFetchResult>,
}

// ------------------------------------------------------------ consumer groups

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupProtocol {
    pub name: String,
    pub metadata: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JoinGroupRequest {
    pub group: String,
    /// Empty for a new member.
    pub member_id: String,
    pub client_id: String,
    pub protocol_type: String,
    pub protocols: Vec<GroupProtocol>,
    pub session_timeout_ms: u32,
    pub rebalance_timeout_ms: u32,
    pub topics: Vec<String>,
    pub coordinator_assigns: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupMember {
    pub member_id: String,
    pub metadata: Vec<u8>,
    pub topics: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JoinGroupResponse {
    pub error: ErrorCode,
    pub message: String,
    pub generation: i32,
    pub protocol_name: String,
    pub leader_id: String,
    pub member_id: String,
    /// Every member, for the leader only.
    pub members: Vec<GroupMember>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemberAssignment {
    pub member_id: String,
    pub assignment: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncGroupRequest {
    pub group: String,
    pub member_id: String,
    pub generation: i32,
    pub assignments: Vec<MemberAssignment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupTopicPartitions {
    pub topic: String,
    pub partitions: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncGroupResponse {
    pub error: ErrorCode,
    pub message: String,
    pub protocol_name: String,
    pub assignment: Vec<u8>,
    /// `assignment` decoded when it is a consumer-protocol assignment.
    pub partitions: Vec<GroupTopicPartitions>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeartbeatRequest {
    pub group: String,
    pub member_id: String,
    pub generation: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaveGroupRequest {
    pub group: String,
    pub member_ids: Vec<String>,
}

/// The answer to Heartbeat and LeaveGroup.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupStatus {
    pub error: ErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupListing {
    pub group: String,
    pub state: String,
    pub protocol_type: String,
    pub members: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListGroupsResponse {
    pub groups: Vec<GroupListing>,
}

/// Empty `groups` means every group.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DescribeGroupsRequest {
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupMemberDescription {
    pub member_id: String,
    pub client_id: String,
    pub client_host: String,
    pub topics: Vec<String>,
    pub assignment: Vec<u8>,
    pub partitions: Vec<GroupTopicPartitions>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupOffsetDescription {
    pub topic: String,
    pub partition: u32,
    /// -1: nothing committed.
    pub committed_offset: i64,
    pub metadata: String,
    /// -1: unknown.
    pub end_offset: i64,
    /// -1: unknown.
    pub lag: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupDescription {
    pub group: String,
    pub error: ErrorCode,
    pub message: String,
    pub state: String,
    pub protocol_type: String,
    pub protocol_name: String,
    pub generation: i32,
    pub leader_id: String,
    pub members: Vec<GroupMemberDescription>,
    pub offsets: Vec<GroupOffsetDescription>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DescribeGroupsResponse {
    pub groups: Vec<GroupDescription>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResetOffsetsRequest {
    pub group: String,
    pub topic: String,
    /// Empty: every partition of the topic.
    pub partitions: Vec<u32>,
    pub to: ResetTo,
    /// With `ResetTo::Offset`.
    pub offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResetOffsetsResponse {
    pub error: ErrorCode,
    pub message: String,
    pub results: Vec<OffsetCommitResult>,
}

/// Asks for a producer id (see `InitProducerIdRequest` in the schema).
/// `producer_id`/`producer_epoch` -1: a new id; the caller's current id and
/// epoch: an epoch bump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitProducerIdRequest {
    /// Reserved for transactions: must be empty (refused otherwise).
    pub transactional_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
}

impl Default for InitProducerIdRequest {
    fn default() -> Self {
        InitProducerIdRequest {
            transactional_id: String::new(),
            producer_id: -1,
            producer_epoch: -1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitProducerIdResponse {
    pub error: ErrorCode,
    pub message: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
}

impl Default for InitProducerIdResponse {
    fn default() -> Self {
        InitProducerIdResponse {
            error: ErrorCode::None,
            message: String::new(),
            producer_id: -1,
            producer_epoch: -1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorResponse {
    pub error: ErrorCode,
    pub message: String,
}

/// Every request the protocol defines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestBody {
    ApiVersions(ApiVersionsRequest),
    CreateTopics(CreateTopicsRequest),
    DeleteTopics(DeleteTopicsRequest),
    ListTopics,
    DescribeTopics(DescribeTopicsRequest),
    CreatePartitions(CreatePartitionsRequest),
    Produce(ProduceRequest),
    Fetch(FetchRequest),
    ListOffsets(ListOffsetsRequest),
    OffsetCommit(OffsetCommitRequest),
    OffsetFetch(OffsetFetchRequest),
    JoinGroup(JoinGroupRequest),
    SyncGroup(SyncGroupRequest),
    Heartbeat(HeartbeatRequest),
    LeaveGroup(LeaveGroupRequest),
    ListGroups,
    DescribeGroups(DescribeGroupsRequest),
    ResetOffsets(ResetOffsetsRequest),
    InitProducerId(InitProducerIdRequest),
}

/// Every response the protocol defines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseBody {
    ApiVersions(ApiVersionsResponse),
    CreateTopics(TopicResults),
    DeleteTopics(TopicResults),
    ListTopics(ListTopicsResponse),
    DescribeTopics(DescribeTopicsResponse),
    CreatePartitions(TopicResults),
    Produce(ProduceResponse),
    Fetch(FetchResponse),
    ListOffsets(ListOffsetsResponse),
    OffsetCommit(OffsetCommitResponse),
    OffsetFetch(OffsetFetchResponse),
    Error(ErrorResponse),
    JoinGroup(JoinGroupResponse),
    SyncGroup(SyncGroupResponse),
    Heartbeat(GroupStatus),
    LeaveGroup(GroupStatus),
    ListGroups(ListGroupsResponse),
    DescribeGroups(DescribeGroupsResponse),
    ResetOffsets(ResetOffsetsResponse),
    InitProducerId(InitProducerIdResponse),
}

impl RequestBody {
    /// Bytes this request carries in its trailer.
    pub fn trailer_len(&self) -> u64 {
        match self {
            RequestBody::Produce(p) => p.batches.iter().map(|b| u64::from(b.batch_len)).sum(),
            _ => 0,
        }
    }

    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            RequestBody::ApiVersions(_) => "api_versions",
            RequestBody::CreateTopics(_) => "create_topics",
            RequestBody::DeleteTopics(_) => "delete_topics",
            RequestBody::ListTopics => "list_topics",
            RequestBody::DescribeTopics(_) => "describe_topics",
            RequestBody::CreatePartitions(_) => "create_partitions",
            RequestBody::Produce(_) => "produce",
            RequestBody::Fetch(_) => "fetch",
            RequestBody::ListOffsets(_) => "list_offsets",
            RequestBody::OffsetCommit(_) => "offset_commit",
            RequestBody::OffsetFetch(_) => "offset_fetch",
            RequestBody::JoinGroup(_) => "join_group",
            RequestBody::SyncGroup(_) => "sync_group",
            RequestBody::Heartbeat(_) => "heartbeat",
            RequestBody::LeaveGroup(_) => "leave_group",
            RequestBody::ListGroups => "list_groups",
            RequestBody::DescribeGroups(_) => "describe_groups",
            RequestBody::ResetOffsets(_) => "reset_offsets",
            RequestBody::InitProducerId(_) => "init_producer_id",
        }
    }
}

impl ResponseBody {
    /// Bytes this response carries in its trailer.
    pub fn trailer_len(&self) -> u64 {
        match self {
            ResponseBody::Fetch(f) => f.results.iter().map(|r| u64::from(r.bytes_len)).sum(),
            _ => 0,
        }
    }
}

// ----------------------------------------------------------------- encoding

fn finish_envelope(fb_bytes: &[u8], trailer_len: u64) -> Result<Vec<u8>, ProtocolError> {
    let max = u32::MAX as u64 - 4 - fb_bytes.len() as u64;
    if trailer_len > max {
        return Err(ProtocolError::TrailerTooLarge {
            declared: trailer_len,
            max_bytes: max as usize,
        });
    }
    let total_len = 4 + fb_bytes.len() as u64 + trailer_len;
    let mut out = Vec::with_capacity(ENVELOPE_PREFIX_BYTES + fb_bytes.len());
    out.extend_from_slice(&(total_len as u32).to_le_bytes());
    out.extend_from_slice(&(fb_bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(fb_bytes);
    Ok(out)
}

type Fbb<'a> = FlatBufferBuilder<'a>;
type Off<T> = WIPOffset<T>;

fn configs<'a>(
    fbb: &mut Fbb<'a>,
    c: &Config,
) -> Off<flatbuffers::Vector<'a, flatbuffers::ForwardsUOffset<fb::ConfigEntry<'a>>>> {
    let v: Vec<_> = c
        .iter()
        .map(|(k, v)| {
            let key = Some(fbb.create_string(k));
            let value = Some(fbb.create_string(v));
            fb::ConfigEntry::create(fbb, &fb::ConfigEntryArgs { key, value })
        })
        .collect();
    fbb.create_vector(&v)
}

fn strings<'a>(
    fbb: &mut Fbb<'a>,
    names: &[String],
) -> Off<flatbuffers::Vector<'a, flatbuffers::ForwardsUOffset<&'a str>>> {
    let v: Vec<_> = names.iter().map(|n| fbb.create_string(n)).collect();
    fbb.create_vector(&v)
}

fn topic_results<'a>(
    fbb: &mut Fbb<'a>,
    r: &[TopicResult],
) -> Off<flatbuffers::Vector<'a, flatbuffers::ForwardsUOffset<fb::TopicResult<'a>>>> {
    let v: Vec<_> = r
        .iter()
        .map(|t| {
            let name = Some(fbb.create_string(&t.name));
            let message = Some(fbb.create_string(&t.message));
            fb::TopicResult::create(
                fbb,
                &fb::TopicResultArgs {
                    name,
                    error: t.error,
                    message,
                },
            )
        })
        .collect();
    fbb.create_vector(&v)
}

fn encode_request_body(
    fbb: &mut Fbb<'_>,
    body: &RequestBody,
) -> (fb::RequestBody, Off<flatbuffers::UnionWIPOffset>) {
    use fb::RequestBody as T;
    match body {
        RequestBody::ApiVersions(r) => {
            let client_name = Some(fbb.create_string(&r.client_name));
            let o = fb::ApiVersionsRequest::create(
                fbb,
                &fb::ApiVersionsRequestArgs {
                    client_name,
                    min_version: r.min_version,
                    max_version: r.max_version,
                },
            );
            (T::ApiVersionsRequest, o.as_union_value())
        }
        RequestBody::CreateTopics(r) => {
            let v: Vec<_> = r
                .topics
                .iter()
                .map(|t| {
                    let name = Some(fbb.create_string(&t.name));
                    let configs = Some(configs(fbb, &t.configs));
                    fb::CreateTopic::create(
                        fbb,
                        &fb::CreateTopicArgs {
                            name,
                            partitions: t.partitions,
                            configs,
                        },
                    )
                })
                .collect();
            let topics = Some(fbb.create_vector(&v));
            let o = fb::CreateTopicsRequest::create(fbb, &fb::CreateTopicsRequestArgs { topics });
            (T::CreateTopicsRequest, o.as_union_value())
        }
        RequestBody::DeleteTopics(r) => {
            let names = Some(strings(fbb, &r.names));
            let o = fb::DeleteTopicsRequest::create(fbb, &fb::DeleteTopicsRequestArgs { names });
            (T::DeleteTopicsRequest, o.as_union_value())
        }
        RequestBody::ListTopics => {
            let o = fb::ListTopicsRequest::create(fbb, &fb::ListTopicsRequestArgs {});
            (T::ListTopicsRequest, o.as_union_value())
        }
        RequestBody::DescribeTopics(r) => {
            let names = Some(strings(fbb, &r.names));
            let o =
                fb::DescribeTopicsRequest::create(fbb, &fb::DescribeTopicsRequestArgs { names });
            (T::DescribeTopicsRequest, o.as_union_value())
        }
        RequestBody::CreatePartitions(r) => {
            let v: Vec<_> = r
                .topics
                .iter()
                .map(|t| {
                    let name = Some(fbb.create_string(&t.name));
                    fb::PartitionsIncrease::create(
                        fbb,
                        &fb::PartitionsIncreaseArgs {
                            name,
                            total: t.total,
                        },
                    )
                })
                .collect();
            let topics = Some(fbb.create_vector(&v));
            let o = fb::CreatePartitionsRequest::create(
                fbb,
                &fb::CreatePartitionsRequestArgs { topics },
            );
            (T::CreatePartitionsRequest, o.as_union_value())
        }
        RequestBody::Produce(r) => {
            let v: Vec<_> = r
                .batches
                .iter()
                .map(|b| {
                    let topic = Some(fbb.create_string(&b.topic));
                    fb::ProduceBatch::create(
                        fbb,
                        &fb::ProduceBatchArgs {
                            topic,
                            partition: b.partition,
                            batch_len: b.batch_len,
                        },
                    )
                })
                .collect();
            let batches = Some(fbb.create_vector(&v));
            let o = fb::ProduceRequest::create(
                fbb,
                &fb::ProduceRequestArgs {
                    acks: r.acks,
                    timeout_ms: r.timeout_ms,
                    batches,
                },
            );
            (T::ProduceRequest, o.as_union_value())
        }
        RequestBody::Fetch(r) => {
            let v: Vec<_> = r
                .partitions
                .iter()
                .map(|p| {
                    let topic = Some(fbb.create_string(&p.topic));
                    fb::FetchPartition::create(
                        fbb,
                        &fb::FetchPartitionArgs {
                            topic,
                            partition: p.partition,
                            offset: p.offset,
                            partition_max_bytes: p.partition_max_bytes,
                        },
                    )
                })
                .collect();
            let partitions = Some(fbb.create_vector(&v));
            let o = fb::FetchRequest::create(
                fbb,
                &fb::FetchRequestArgs {
                    max_wait_ms: r.max_wait_ms,
                    min_bytes: r.min_bytes,
                    max_bytes: r.max_bytes,
                    partitions,
                    read_committed: r.read_committed,
                },
            );
            (T::FetchRequest, o.as_union_value())
        }
        RequestBody::ListOffsets(r) => {
            let v: Vec<_> = r
                .partitions
                .iter()
                .map(|p| {
                    let topic = Some(fbb.create_string(&p.topic));
                    fb::ListOffsetsPartition::create(
                        fbb,
                        &fb::ListOffsetsPartitionArgs {
                            topic,
                            partition: p.partition,
                            timestamp: p.timestamp,
                        },
                    )
                })
                .collect();
            let partitions = Some(fbb.create_vector(&v));
            let o = fb::ListOffsetsRequest::create(fbb, &fb::ListOffsetsRequestArgs { partitions });
            (T::ListOffsetsRequest, o.as_union_value())
        }
        RequestBody::OffsetCommit(r) => {
            let group = Some(fbb.create_string(&r.group));
            let v: Vec<_> = r
                .partitions
                .iter()
                .map(|p| {
                    let topic = Some(fbb.create_string(&p.topic));
                    let metadata = Some(fbb.create_string(&p.metadata));
                    fb::OffsetCommitPartition::create(
                        fbb,
                        &fb::OffsetCommitPartitionArgs {
                            topic,
                            partition: p.partition,
                            offset: p.offset,
                            metadata,
                        },
                    )
                })
                .collect();
            let partitions = Some(fbb.create_vector(&v));
            let member_id = Some(fbb.create_string(&r.member_id));
            let o = fb::OffsetCommitRequest::create(
                fbb,
                &fb::OffsetCommitRequestArgs {
                    group,
                    partitions,
                    member_id,
                    generation: r.generation,
                },
            );
            (T::OffsetCommitRequest, o.as_union_value())
        }
        RequestBody::OffsetFetch(r) => {
            let group = Some(fbb.create_string(&r.group));
            let v: Vec<_> = r
                .partitions
                .iter()
                .map(|p| {
                    let topic = Some(fbb.create_string(&p.topic));
                    fb::OffsetFetchPartition::create(
                        fbb,
                        &fb::OffsetFetchPartitionArgs {
                            topic,
                            partition: p.partition,
                        },
                    )
                })
                .collect();
            let partitions = Some(fbb.create_vector(&v));
            let o = fb::OffsetFetchRequest::create(
                fbb,
                &fb::OffsetFetchRequestArgs { group, partitions },
            );
            (T::OffsetFetchRequest, o.as_union_value())
        }
        RequestBody::JoinGroup(_)
        | RequestBody::SyncGroup(_)
        | RequestBody::Heartbeat(_)
        | RequestBody::LeaveGroup(_)
        | RequestBody::ListGroups
        | RequestBody::DescribeGroups(_)
        | RequestBody::ResetOffsets(_) => encode_group_request(fbb, body),
        RequestBody::InitProducerId(r) => {
            let transactional_id =
                (!r.transactional_id.is_empty()).then(|| fbb.create_string(&r.transactional_id));
            let o = fb::InitProducerIdRequest::create(
                fbb,
                &fb::InitProducerIdRequestArgs {
                    transactional_id,
                    producer_id: r.producer_id,
                    producer_epoch: r.producer_epoch,
                },
            );
            (T::InitProducerIdRequest, o.as_union_value())
        }
    }
}

fn encode_response_body(
    fbb: &mut Fbb<'_>,
    body: &ResponseBody,
) -> (fb::ResponseBody, Off<flatbuffers::UnionWIPOffset>) {
    use fb::ResponseBody as T;
    match body {
        ResponseBody::ApiVersions(r) => {
            let message = Some(fbb.create_string(&r.message));
            let server_version = Some(fbb.create_string(&r.server_version));
            let shard_ports = Some(fbb.create_vector(&r.shard_ports));
            let nodes: Vec<_> = r
                .nodes
                .iter()
                .map(|n| {
                    let native_addr = Some(fbb.create_string(&n.native_addr));
                    fb::NodeAddress::create(
                        fbb,
                        &fb::NodeAddressArgs {
                            id: n.id,
                            native_addr,
                        },
                    )
                })
                .collect();
            let nodes = Some(fbb.create_vector(&nodes));
            let o = fb::ApiVersionsResponse::create(
                fbb,
                &fb::ApiVersionsResponseArgs {
                    error: r.error,
                    message,
                    min_version: r.min_version,
                    max_version: r.max_version,
                    message_bytes_max: r.message_bytes_max,
                    frame_bytes_max: r.frame_bytes_max,
                    inflight_requests_max: r.inflight_requests_max,
                    fetch_partitions_max: r.fetch_partitions_max,
                    fetch_wait_max_ms: r.fetch_wait_max_ms,
                    server_version,
                    shard_count: r.shard_count,
                    shard_id: r.shard_id,
                    shard_ports,
                    node_id: r.node_id,
                    nodes,
                },
            );
            (T::ApiVersionsResponse, o.as_union_value())
        }
        ResponseBody::CreateTopics(r) => {
            let results = Some(topic_results(fbb, &r.results));
            let o =
                fb::CreateTopicsResponse::create(fbb, &fb::CreateTopicsResponseArgs { results });
            (T::CreateTopicsResponse, o.as_union_value())
        }
        ResponseBody::DeleteTopics(r) => {
            let results = Some(topic_results(fbb, &r.results));
            let o =
                fb::DeleteTopicsResponse::create(fbb, &fb::DeleteTopicsResponseArgs { results });
            (T::DeleteTopicsResponse, o.as_union_value())
        }
        ResponseBody::CreatePartitions(r) => {
            let results = Some(topic_results(fbb, &r.results));
            let o = fb::CreatePartitionsResponse::create(
                fbb,
                &fb::CreatePartitionsResponseArgs { results },
            );
            (T::CreatePartitionsResponse, o.as_union_value())
        }
        ResponseBody::ListTopics(r) => {
            let v: Vec<_> = r
                .topics
                .iter()
                .map(|t| {
                    let name = Some(fbb.create_string(&t.name));
                    fb::TopicListing::create(
                        fbb,
                        &fb::TopicListingArgs {
                            name,
                            partitions: t.partitions,
                        },
                    )
                })
                .collect();
            let topics = Some(fbb.create_vector(&v));
            let o = fb::ListTopicsResponse::create(fbb, &fb::ListTopicsResponseArgs { topics });
            (T::ListTopicsResponse, o.as_union_value())
        }
        ResponseBody::DescribeTopics(r) => {
            let v: Vec<_> = r
                .topics
                .iter()
                .map(|t| {
                    let name = Some(fbb.create_string(&t.name));
                    let message = Some(fbb.create_string(&t.message));
                    let cfg = Some(configs(fbb, &t.configs));
                    let ps: Vec<_> = t
                        .partitions
                        .iter()
                        .map(|p| {
                            let message = Some(fbb.create_string(&p.message));
                            fb::PartitionDescription::create(
                                fbb,
                                &fb::PartitionDescriptionArgs {
                                    partition: p.partition,
                                    error: p.error,
                                    message,
                                    log_start_offset: p.log_start_offset,
                                    high_watermark: p.high_watermark,
                                    owner_shard: p.owner_shard,
                                    leader_node: p.leader_node,
                                    leader_epoch: p.leader_epoch,
                                },
                            )
                        })
                        .collect();
                    let partitions = Some(fbb.create_vector(&ps));
                    fb::TopicDescription::create(
                        fbb,
                        &fb::TopicDescriptionArgs {
                            name,
                            error: t.error,
                            message,
                            configs: cfg,
                            partitions,
                        },
                    )
                })
                .collect();
            let topics = Some(fbb.create_vector(&v));
            let o =
                fb::DescribeTopicsResponse::create(fbb, &fb::DescribeTopicsResponseArgs { topics });
            (T::DescribeTopicsResponse, o.as_union_value())
        }
        ResponseBody::Produce(r) => {
            let v: Vec<_> = r
                .results
                .iter()
                .map(|p| {
                    let topic = Some(fbb.create_string(&p.topic));
                    let message = Some(fbb.create_string(&p.message));
                    fb::ProduceResult::create(
                        fbb,
                        &fb::ProduceResultArgs {
                            topic,
                            partition: p.partition,
                            error: p.error,
                            message,
                            base_offset: p.base_offset,
                            last_offset: p.last_offset,
                            append_time_ms: p.append_time_ms,
                            log_start_offset: p.log_start_offset,
                        },
                    )
                })
                .collect();
            let results = Some(fbb.create_vector(&v));
            let o = fb::ProduceResponse::create(fbb, &fb::ProduceResponseArgs { results });
            (T::ProduceResponse, o.as_union_value())
        }
        ResponseBody::Fetch(r) => {
            let v: Vec<_> = r
                .results
                .iter()
                .map(|p| {
                    let topic = Some(fbb.create_string(&p.topic));
                    let message = Some(fbb.create_string(&p.message));
                    fb::FetchResult::create(
                        fbb,
                        &fb::FetchResultArgs {
                            topic,
                            partition: p.partition,
                            error: p.error,
                            message,
                            high_watermark: p.high_watermark,
                            log_start_offset: p.log_start_offset,
                            bytes_len: p.bytes_len,
                            last_stable_offset: p.last_stable_offset,
                            read_through: p.read_through,
                        },
                    )
                })
                .collect();
            let results = Some(fbb.create_vector(&v));
            let o = fb::FetchResponse::create(fbb, &fb::FetchResponseArgs { results });
            (T::FetchResponse, o.as_union_value())
        }
        ResponseBody::ListOffsets(r) => {
            let v: Vec<_> = r
                .results
                .iter()
                .map(|p| {
                    let topic = Some(fbb.create_string(&p.topic));
                    let message = Some(fbb.create_string(&p.message));
                    fb::ListOffsetsResult::create(
                        fbb,
                        &fb::ListOffsetsResultArgs {
                            topic,
                            partition: p.partition,
                            error: p.error,
                            message,
                            offset: p.offset,
                        },
                    )
                })
                .collect();
            let results = Some(fbb.create_vector(&v));
            let o = fb::ListOffsetsResponse::create(fbb, &fb::ListOffsetsResponseArgs { results });
            (T::ListOffsetsResponse, o.as_union_value())
        }
        ResponseBody::OffsetCommit(r) => {
            let v: Vec<_> = r
                .results
                .iter()
                .map(|p| {
                    let topic = Some(fbb.create_string(&p.topic));
                    let message = Some(fbb.create_string(&p.message));
                    fb::OffsetCommitResult::create(
                        fbb,
                        &fb::OffsetCommitResultArgs {
                            topic,
                            partition: p.partition,
                            error: p.error,
                            message,
                        },
                    )
                })
                .collect();
            let results = Some(fbb.create_vector(&v));
            let o =
                fb::OffsetCommitResponse::create(fbb, &fb::OffsetCommitResponseArgs { results });
            (T::OffsetCommitResponse, o.as_union_value())
        }
        ResponseBody::OffsetFetch(r) => {
            let v: Vec<_> = r
                .results
                .iter()
                .map(|p| {
                    let topic = Some(fbb.create_string(&p.topic));
                    let message = Some(fbb.create_string(&p.message));
                    let metadata = Some(fbb.create_string(&p.metadata));
                    fb::OffsetFetchResult::create(
                        fbb,
                        &fb::OffsetFetchResultArgs {
                            topic,
                            partition: p.partition,
                            error: p.error,
                            message,
                            offset: p.offset,
                            metadata,
                        },
                    )
                })
                .collect();
            let results = Some(fbb.create_vector(&v));
            let o = fb::OffsetFetchResponse::create(fbb, &fb::OffsetFetchResponseArgs { results });
            (T::OffsetFetchResponse, o.as_union_value())
        }
        ResponseBody::Error(r) => {
            let message = Some(fbb.create_string(&r.message));
            let o = fb::ErrorResponse::create(
                fbb,
                &fb::ErrorResponseArgs {
                    error: r.error,
                    message,
                },
            );
            (T::ErrorResponse, o.as_union_value())
        }
        ResponseBody::JoinGroup(_)
        | ResponseBody::SyncGroup(_)
        | ResponseBody::Heartbeat(_)
        | ResponseBody::LeaveGroup(_)
        | ResponseBody::ListGroups(_)
        | ResponseBody::DescribeGroups(_)
        | ResponseBody::ResetOffsets(_) => encode_group_response(fbb, body),
        ResponseBody::InitProducerId(r) => {
            let message = Some(fbb.create_string(&r.message));
            let o = fb::InitProducerIdResponse::create(
                fbb,
                &fb::InitProducerIdResponseArgs {
                    error: r.error,
                    message,
                    producer_id: r.producer_id,
                    producer_epoch: r.producer_epoch,
                },
            );
            (T::InitProducerIdResponse, o.as_union_value())
        }
    }
}

/// Encodes a request's envelope and table. The caller writes the returned
/// bytes and then exactly `body.trailer_len()` trailer bytes (for a produce,
/// the batch frames in the order of `batches`).
pub fn encode_request(correlation_id: u64, body: &RequestBody) -> Result<Vec<u8>, ProtocolError> {
    let mut fbb = FlatBufferBuilder::with_capacity(256);
    let (body_type, b) = encode_request_body(&mut fbb, body);
    let root = fb::Request::create(
        &mut fbb,
        &fb::RequestArgs {
            correlation_id,
            body_type,
            body: Some(b),
        },
    );
    fbb.finish(root, None);
    finish_envelope(fbb.finished_data(), body.trailer_len())
}

/// Encodes a response's envelope and table. The caller writes the returned
/// bytes and then exactly `body.trailer_len()` trailer bytes (for a fetch,
/// each result's frames in result order).
pub fn encode_response(correlation_id: u64, body: &ResponseBody) -> Result<Vec<u8>, ProtocolError> {
    let mut fbb = FlatBufferBuilder::with_capacity(256);
    let (body_type, b) = encode_response_body(&mut fbb, body);
    let root = fb::Response::create(
        &mut fbb,
        &fb::ResponseArgs {
            correlation_id,
            body_type,
            body: Some(b),
        },
    );
    fbb.finish(root, None);
    finish_envelope(fbb.finished_data(), body.trailer_len())
}

/// An error response (no trailer) for `correlation_id`.
pub fn encode_error_response(correlation_id: u64, error: ErrorCode, message: &str) -> Vec<u8> {
    let body = ResponseBody::Error(ErrorResponse {
        error,
        message: message.to_owned(),
    });
    // An error response has no trailer, so it always fits.
    encode_response(correlation_id, &body).unwrap_or_default()
}

// ----------------------------------------------------------------- decoding

/// A request decoded from one complete message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedRequest {
    pub correlation_id: u64,
    pub body: RequestBody,
    /// Where the trailer lies in the message; its length equals
    /// `body.trailer_len()`.
    pub trailer: Range<usize>,
}

/// A response decoded from one complete message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedResponse {
    pub correlation_id: u64,
    pub body: ResponseBody,
    /// Where the trailer lies in the message; its length equals
    /// `body.trailer_len()`.
    pub trailer: Range<usize>,
}

fn s(o: Option<&str>) -> String {
    o.unwrap_or_default().to_owned()
}

fn read_configs(
    v: Option<flatbuffers::Vector<'_, flatbuffers::ForwardsUOffset<fb::ConfigEntry<'_>>>>,
) -> Config {
    v.into_iter()
        .flatten()
        .map(|c| (s(c.key()), s(c.value())))
        .collect()
}

fn read_strings(
    v: Option<flatbuffers::Vector<'_, flatbuffers::ForwardsUOffset<&str>>>,
) -> Vec<String> {
    v.into_iter().flatten().map(|x| x.to_owned()).collect()
}

fn read_topic_results(
    v: Option<flatbuffers::Vector<'_, flatbuffers::ForwardsUOffset<fb::TopicResult<'_>>>>,
) -> TopicResults {
    TopicResults {
        results: v
            .into_iter()
            .flatten()
            .map(|t| TopicResult {
                name: s(t.name()),
                error: t.error(),
                message: s(t.message()),
            })
            .collect(),
    }
}

fn missing(body_type: u8) -> ProtocolError {
    ProtocolError::UnknownBody { body_type }
}

fn request_body(r: fb::Request<'_>) -> Result<RequestBody, ProtocolError> {
    use fb::RequestBody as T;
    let t = r.body_type();
    let err = || missing(t.0);
    Ok(match t {
        T::ApiVersionsRequest => {
            let b = r.body_as_api_versions_request().ok_or_else(err)?;
            RequestBody::ApiVersions(ApiVersionsRequest {
                client_name: s(b.client_name()),
                min_version: b.min_version(),
                max_version: b.max_version(),
            })
        }
        T::CreateTopicsRequest => {
            let b = r.body_as_create_topics_request().ok_or_else(err)?;
            RequestBody::CreateTopics(CreateTopicsRequest {
                topics: b
                    .topics()
                    .into_iter()
                    .flatten()
                    .map(|t| CreateTopic {
                        name: s(t.name()),
                        partitions: t.partitions(),
                        configs: read_configs(t.configs()),
                    })
                    .collect(),
            })
        }
        T::DeleteTopicsRequest => {
            let b = r.body_as_delete_topics_request().ok_or_else(err)?;
            RequestBody::DeleteTopics(DeleteTopicsRequest {
                names: read_strings(b.names()),
            })
        }
        T::ListTopicsRequest => {
            r.body_as_list_topics_request().ok_or_else(err)?;
            RequestBody::ListTopics
        }
        T::DescribeTopicsRequest => {
            let b = r.body_as_describe_topics_request().ok_or_else(err)?;
            RequestBody::DescribeTopics(DescribeTopicsRequest {
                names: read_strings(b.names()),
            })
        }
        T::CreatePartitionsRequest => {
            let b = r.body_as_create_partitions_request().ok_or_else(err)?;
            RequestBody::CreatePartitions(CreatePartitionsRequest {
                topics: b
                    .topics()
                    .into_iter()
                    .flatten()
                    .map(|t| PartitionsIncrease {
                        name: s(t.name()),
                        total: t.total(),
                    })
                    .collect(),
            })
        }
        T::ProduceRequest => {
            let b = r.body_as_produce_request().ok_or_else(err)?;
            RequestBody::Produce(ProduceRequest {
                acks: b.acks(),
                timeout_ms: b.timeout_ms(),
                batches: b
                    .batches()
                    .into_iter()
                    .flatten()
                    .map(|p| ProduceBatch {
                        topic: s(p.topic()),
                        partition: p.partition(),
                        batch_len: p.batch_len(),
                    })
                    .collect(),
            })
        }
        T::FetchRequest => {
            let b = r.body_as_fetch_request().ok_or_else(err)?;
            RequestBody::Fetch(FetchRequest {
                max_wait_ms: b.max_wait_ms(),
                min_bytes: b.min_bytes(),
                max_bytes: b.max_bytes(),
                partitions: b
                    .partitions()
                    .into_iter()
                    .flatten()
                    .map(|p| FetchPartition {
                        topic: s(p.topic()),
                        partition: p.partition(),
                        offset: p.offset(),
                        partition_max_bytes: p.partition_max_bytes(),
                    })
                    .collect(),
                read_committed: b.read_committed(),
            })
        }
        T::ListOffsetsRequest => {
            let b = r.body_as_list_offsets_request().ok_or_else(err)?;
            RequestBody::ListOffsets(ListOffsetsRequest {
                partitions: b
                    .partitions()
                    .into_iter()
                    .flatten()
                    .map(|p| ListOffsetsPartition {
                        topic: s(p.topic()),
                        partition: p.partition(),
                        timestamp: p.timestamp(),
                    })
                    .collect(),
            })
        }
        T::OffsetCommitRequest => {
            let b = r.body_as_offset_commit_request().ok_or_else(err)?;
            RequestBody::OffsetCommit(OffsetCommitRequest {
                group: s(b.group()),
                partitions: b
                    .partitions()
                    .into_iter()
                    .flatten()
                    .map(|p| OffsetCommitPartition {
                        topic: s(p.topic()),
                        partition: p.partition(),
                        offset: p.offset(),
                        metadata: s(p.metadata()),
                    })
                    .collect(),
                member_id: s(b.member_id()),
                generation: b.generation(),
            })
        }
        T::OffsetFetchRequest => {
            let b = r.body_as_offset_fetch_request().ok_or_else(err)?;
            RequestBody::OffsetFetch(OffsetFetchRequest {
                group: s(b.group()),
                partitions: b
                    .partitions()
                    .into_iter()
                    .flatten()
                    .map(|p| TopicPartition {
                        topic: s(p.topic()),
                        partition: p.partition(),
                    })
                    .collect(),
            })
        }
        T::InitProducerIdRequest => {
            let b = r.body_as_init_producer_id_request().ok_or_else(err)?;
            RequestBody::InitProducerId(InitProducerIdRequest {
                transactional_id: s(b.transactional_id()),
                producer_id: b.producer_id(),
                producer_epoch: b.producer_epoch(),
            })
        }
        _ => return decode_group_request(r),
    })
}

fn response_body(r: fb::Response<'_>) -> Result<ResponseBody, ProtocolError> {
    use fb::ResponseBody as T;
    let t = r.body_type();
    let err = || missing(t.0);
    Ok(match t {
        T::ApiVersionsResponse => {
            let b = r.body_as_api_versions_response().ok_or_else(err)?;
            ResponseBody::ApiVersions(ApiVersionsResponse {
                error: b.error(),
                message: s(b.message()),
                min_version: b.min_version(),
                max_version: b.max_version(),
                message_bytes_max: b.message_bytes_max(),
                frame_bytes_max: b.frame_bytes_max(),
                inflight_requests_max: b.inflight_requests_max(),
                fetch_partitions_max: b.fetch_partitions_max(),
                fetch_wait_max_ms: b.fetch_wait_max_ms(),
                server_version: s(b.server_version()),
                shard_count: b.shard_count(),
                shard_id: b.shard_id(),
                shard_ports: b
                    .shard_ports()
                    .map(|v| v.iter().collect())
                    .unwrap_or_default(),
                node_id: b.node_id(),
                nodes: b
                    .nodes()
                    .map(|v| {
                        v.iter()
                            .map(|n| NodeAddress {
                                id: n.id(),
                                native_addr: s(n.native_addr()),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        }
        T::CreateTopicsResponse => {
            let b = r.body_as_create_topics_response().ok_or_else(err)?;
            ResponseBody::CreateTopics(read_topic_results(b.results()))
        }
        T::DeleteTopicsResponse => {
            let b = r.body_as_delete_topics_response().ok_or_else(err)?;
            ResponseBody::DeleteTopics(read_topic_results(b.results()))
        }
        T::CreatePartitionsResponse => {
            let b = r.body_as_create_partitions_response().ok_or_else(err)?;
            ResponseBody::CreatePartitions(read_topic_results(b.results()))
        }
        T::ListTopicsResponse => {
            let b = r.body_as_list_topics_response().ok_or_else(err)?;
            ResponseBody::ListTopics(ListTopicsResponse {
                topics: b
                    .topics()
                    .into_iter()
                    .flatten()
                    .map(|t| TopicListing {
                        name: s(t.name()),
                        partitions: t.partitions(),
                    })
                    .collect(),
            })
        }
        T::DescribeTopicsResponse => {
            let b = r.body_as_describe_topics_response().ok_or_else(err)?;
            ResponseBody::DescribeTopics(DescribeTopicsResponse {
                topics: b
                    .topics()
                    .into_iter()
                    .flatten()
                    .map(|t| TopicDescription {
                        name: s(t.name()),
                        error: t.error(),
                        message: s(t.message()),
                        configs: read_configs(t.configs()),
                        partitions: t
                            .partitions()
                            .into_iter()
                            .flatten()
                            .map(|p| PartitionDescription {
                                partition: p.partition(),
                                error: p.error(),
                                message: s(p.message()),
                                log_start_offset: p.log_start_offset(),
                                high_watermark: p.high_watermark(),
                                owner_shard: p.owner_shard(),
                                leader_node: p.leader_node(),
                                leader_epoch: p.leader_epoch(),
                            })
                            .collect(),
                    })
                    .collect(),
            })
        }
        T::ProduceResponse => {
            let b = r.body_as_produce_response().ok_or_else(err)?;
            ResponseBody::Produce(ProduceResponse {
                results: b
                    .results()
                    .into_iter()
                    .flatten()
                    .map(|p| ProduceResult {
                        topic: s(p.topic()),
                        partition: p.partition(),
                        error: p.error(),
                        message: s(p.message()),
                        base_offset: p.base_offset(),
                        last_offset: p.last_offset(),
                        append_time_ms: p.append_time_ms(),
                        log_start_offset: p.log_start_offset(),
                    })
                    .collect(),
            })
        }
        T::FetchResponse => {
            let b = r.body_as_fetch_response().ok_or_else(err)?;
            ResponseBody::Fetch(FetchResponse {
                results: b
                    .results()
                    .into_iter()
                    .flatten()
                    .map(|p| FetchResult {
                        topic: s(p.topic()),
                        partition: p.partition(),
                        error: p.error(),
                        message: s(p.message()),
                        high_watermark: p.high_watermark(),
                        log_start_offset: p.log_start_offset(),
                        bytes_len: p.bytes_len(),
                        last_stable_offset: p.last_stable_offset(),
                        read_through: p.read_through(),
                    })
                    .collect(),
            })
        }
        T::ListOffsetsResponse => {
            let b = r.body_as_list_offsets_response().ok_or_else(err)?;
            ResponseBody::ListOffsets(ListOffsetsResponse {
                results: b
                    .results()
                    .into_iter()
                    .flatten()
                    .map(|p| ListOffsetsResult {
                        topic: s(p.topic()),
                        partition: p.partition(),
                        error: p.error(),
                        message: s(p.message()),
                        offset: p.offset(),
                    })
                    .collect(),
            })
        }
        T::OffsetCommitResponse => {
            let b = r.body_as_offset_commit_response().ok_or_else(err)?;
            ResponseBody::OffsetCommit(OffsetCommitResponse {
                results: b
                    .results()
                    .into_iter()
                    .flatten()
                    .map(|p| OffsetCommitResult {
                        topic: s(p.topic()),
                        partition: p.partition(),
                        error: p.error(),
                        message: s(p.message()),
                    })
                    .collect(),
            })
        }
        T::OffsetFetchResponse => {
            let b = r.body_as_offset_fetch_response().ok_or_else(err)?;
            ResponseBody::OffsetFetch(OffsetFetchResponse {
                results: b
                    .results()
                    .into_iter()
                    .flatten()
                    .map(|p| OffsetFetchResult {
                        topic: s(p.topic()),
                        partition: p.partition(),
                        error: p.error(),
                        message: s(p.message()),
                        offset: p.offset(),
                        metadata: s(p.metadata()),
                    })
                    .collect(),
            })
        }
        T::ErrorResponse => {
            let b = r.body_as_error_response().ok_or_else(err)?;
            ResponseBody::Error(ErrorResponse {
                error: b.error(),
                message: s(b.message()),
            })
        }
        T::InitProducerIdResponse => {
            let b = r.body_as_init_producer_id_response().ok_or_else(err)?;
            ResponseBody::InitProducerId(InitProducerIdResponse {
                error: b.error(),
                message: s(b.message()),
                producer_id: b.producer_id(),
                producer_epoch: b.producer_epoch(),
            })
        }
        _ => return decode_group_response(r),
    })
}

// ------------------------------------------------------ consumer group codec

type FbVec<'a, T> = Off<flatbuffers::Vector<'a, T>>;

fn group_topic_partitions<'a>(
    fbb: &mut Fbb<'a>,
    v: &[GroupTopicPartitions],
) -> FbVec<'a, flatbuffers::ForwardsUOffset<fb::GroupTopicPartitions<'a>>> {
    let v: Vec<_> = v
        .iter()
        .map(|t| {
            let topic = Some(fbb.create_string(&t.topic));
            let partitions = Some(fbb.create_vector(&t.partitions));
            fb::GroupTopicPartitions::create(
                fbb,
                &fb::GroupTopicPartitionsArgs { topic, partitions },
            )
        })
        .collect();
    fbb.create_vector(&v)
}

fn offset_commit_results<'a>(
    fbb: &mut Fbb<'a>,
    r: &[OffsetCommitResult],
) -> FbVec<'a, flatbuffers::ForwardsUOffset<fb::OffsetCommitResult<'a>>> {
    let v: Vec<_> = r
        .iter()
        .map(|p| {
            let topic = Some(fbb.create_string(&p.topic));
            let message = Some(fbb.create_string(&p.message));
            fb::OffsetCommitResult::create(
                fbb,
                &fb::OffsetCommitResultArgs {
                    topic,
                    partition: p.partition,
                    error: p.error,
                    message,
                },
            )
        })
        .collect();
    fbb.create_vector(&v)
}

fn encode_group_request(
    fbb: &mut Fbb<'_>,
    body: &RequestBody,
) -> (fb::RequestBody, Off<flatbuffers::UnionWIPOffset>) {
    use fb::RequestBody as T;
    match body {
        RequestBody::JoinGroup(r) => {
            let group = Some(fbb.create_string(&r.group));
            let member_id = Some(fbb.create_string(&r.member_id));
            let client_id = Some(fbb.create_string(&r.client_id));
            let protocol_type = Some(fbb.create_string(&r.protocol_type));
            let v: Vec<_> = r
                .protocols
                .iter()
                .map(|p| {
                    let name = Some(fbb.create_string(&p.name));
                    let metadata = Some(fbb.create_vector(&p.metadata));
                    fb::GroupProtocol::create(fbb, &fb::GroupProtocolArgs { name, metadata })
                })
                .collect();
            let protocols = Some(fbb.create_vector(&v));
            let topics = Some(strings(fbb, &r.topics));
            let o = fb::JoinGroupRequest::create(
                fbb,
                &fb::JoinGroupRequestArgs {
                    group,
                    member_id,
                    client_id,
                    protocol_type,
                    protocols,
                    session_timeout_ms: r.session_timeout_ms,
                    rebalance_timeout_ms: r.rebalance_timeout_ms,
                    topics,
                    coordinator_assigns: r.coordinator_assigns,
                },
            );
            (T::JoinGroupRequest, o.as_union_value())
        }
        RequestBody::SyncGroup(r) => {
            let group = Some(fbb.create_string(&r.group));
            let member_id = Some(fbb.create_string(&r.member_id));
            let v: Vec<_> = r
                .assignments
                .iter()
                .map(|a| {
                    let member_id = Some(fbb.create_string(&a.member_id));
                    let assignment = Some(fbb.create_vector(&a.assignment));
                    fb::MemberAssignment::create(
                        fbb,
                        &fb::MemberAssignmentArgs {
                            member_id,
                            assignment,
                        },
                    )
                })
                .collect();
            let assignments = Some(fbb.create_vector(&v));
            let o = fb::SyncGroupRequest::create(
                fbb,
                &fb::SyncGroupRequestArgs {
                    group,
                    member_id,
                    generation: r.generation,
                    assignments,
                },
            );
            (T::SyncGroupRequest, o.as_union_value())
        }
        RequestBody::Heartbeat(r) => {
            let group = Some(fbb.create_string(&r.group));
            let member_id = Some(fbb.create_string(&r.member_id));
            let o = fb::HeartbeatRequest::create(
                fbb,
                &fb::HeartbeatRequestArgs {
                    group,
                    member_id,
                    generation: r.generation,
                },
            );
            (T::HeartbeatRequest, o.as_union_value())
        }
        RequestBody::LeaveGroup(r) => {
            let group = Some(fbb.create_string(&r.group));
            let member_ids = Some(strings(fbb, &r.member_ids));
            let o = fb::LeaveGroupRequest::create(
                fbb,
                &fb::LeaveGroupRequestArgs { group, member_ids },
            );
            (T::LeaveGroupRequest, o.as_union_value())
        }
        RequestBody::ListGroups => {
            let o = fb::ListGroupsRequest::create(fbb, &fb::ListGroupsRequestArgs {});
            (T::ListGroupsRequest, o.as_union_value())
        }
        RequestBody::DescribeGroups(r) => {
            let groups = Some(strings(fbb, &r.groups));
            let o =
                fb::DescribeGroupsRequest::create(fbb, &fb::DescribeGroupsRequestArgs { groups });
            (T::DescribeGroupsRequest, o.as_union_value())
        }
        RequestBody::ResetOffsets(r) => {
            let group = Some(fbb.create_string(&r.group));
            let topic = Some(fbb.create_string(&r.topic));
            let partitions = Some(fbb.create_vector(&r.partitions));
            let o = fb::ResetOffsetsRequest::create(
                fbb,
                &fb::ResetOffsetsRequestArgs {
                    group,
                    topic,
                    partitions,
                    to: r.to,
                    offset: r.offset,
                },
            );
            (T::ResetOffsetsRequest, o.as_union_value())
        }
        _ => unreachable!("not a group request"),
    }
}

fn encode_group_response(
    fbb: &mut Fbb<'_>,
    body: &ResponseBody,
) -> (fb::ResponseBody, Off<flatbuffers::UnionWIPOffset>) {
    use fb::ResponseBody as T;
    match body {
        ResponseBody::JoinGroup(r) => {
            let message = Some(fbb.create_string(&r.message));
            let protocol_name = Some(fbb.create_string(&r.protocol_name));
            let leader_id = Some(fbb.create_string(&r.leader_id));
            let member_id = Some(fbb.create_string(&r.member_id));
            let v: Vec<_> = r
                .members
                .iter()
                .map(|m| {
                    let member_id = Some(fbb.create_string(&m.member_id));
                    let metadata = Some(fbb.create_vector(&m.metadata));
                    let topics = Some(strings(fbb, &m.topics));
                    fb::GroupMember::create(
                        fbb,
                        &fb::GroupMemberArgs {
                            member_id,
                            metadata,
                            topics,
                        },
                    )
                })
                .collect();
            let members = Some(fbb.create_vector(&v));
            let o = fb::JoinGroupResponse::create(
                fbb,
                &fb::JoinGroupResponseArgs {
                    error: r.error,
                    message,
                    generation: r.generation,
                    protocol_name,
                    leader_id,
                    member_id,
                    members,
                },
            );
            (T::JoinGroupResponse, o.as_union_value())
        }
        ResponseBody::SyncGroup(r) => {
            let message = Some(fbb.create_string(&r.message));
            let protocol_name = Some(fbb.create_string(&r.protocol_name));
            let assignment = Some(fbb.create_vector(&r.assignment));
            let partitions = Some(group_topic_partitions(fbb, &r.partitions));
            let o = fb::SyncGroupResponse::create(
                fbb,
                &fb::SyncGroupResponseArgs {
                    error: r.error,
                    message,
                    protocol_name,
                    assignment,
                    partitions,
                },
            );
            (T::SyncGroupResponse, o.as_union_value())
        }
        ResponseBody::Heartbeat(r) => {
            let message = Some(fbb.create_string(&r.message));
            let o = fb::HeartbeatResponse::create(
                fbb,
                &fb::HeartbeatResponseArgs {
                    error: r.error,
                    message,
                },
            );
            (T::HeartbeatResponse, o.as_union_value())
        }
        ResponseBody::LeaveGroup(r) => {
            let message = Some(fbb.create_string(&r.message));
            let o = fb::LeaveGroupResponse::create(
                fbb,
                &fb::LeaveGroupResponseArgs {
                    error: r.error,
                    message,
                },
            );
            (T::LeaveGroupResponse, o.as_union_value())
        }
        ResponseBody::ListGroups(r) => {
            let v: Vec<_> = r
                .groups
                .iter()
                .map(|g| {
                    let group = Some(fbb.create_string(&g.group));
                    let state = Some(fbb.create_string(&g.state));
                    let protocol_type = Some(fbb.create_string(&g.protocol_type));
                    fb::GroupListing::create(
                        fbb,
                        &fb::GroupListingArgs {
                            group,
                            state,
                            protocol_type,
                            members: g.members,
                        },
                    )
                })
                .collect();
            let groups = Some(fbb.create_vector(&v));
            let o = fb::ListGroupsResponse::create(fbb, &fb::ListGroupsResponseArgs { groups });
            (T::ListGroupsResponse, o.as_union_value())
        }
        ResponseBody::DescribeGroups(r) => {
            let v: Vec<_> = r
                .groups
                .iter()
                .map(|g| {
                    let members: Vec<_> = g
                        .members
                        .iter()
                        .map(|m| {
                            let member_id = Some(fbb.create_string(&m.member_id));
                            let client_id = Some(fbb.create_string(&m.client_id));
                            let client_host = Some(fbb.create_string(&m.client_host));
                            let topics = Some(strings(fbb, &m.topics));
                            let assignment = Some(fbb.create_vector(&m.assignment));
                            let partitions = Some(group_topic_partitions(fbb, &m.partitions));
                            fb::GroupMemberDescription::create(
                                fbb,
                                &fb::GroupMemberDescriptionArgs {
                                    member_id,
                                    client_id,
                                    client_host,
                                    topics,
                                    assignment,
                                    partitions,
                                },
                            )
                        })
                        .collect();
                    let members = Some(fbb.create_vector(&members));
                    let offsets: Vec<_> = g
                        .offsets
                        .iter()
                        .map(|o| {
                            let topic = Some(fbb.create_string(&o.topic));
                            let metadata = Some(fbb.create_string(&o.metadata));
                            fb::GroupOffsetDescription::create(
                                fbb,
                                &fb::GroupOffsetDescriptionArgs {
                                    topic,
                                    partition: o.partition,
                                    committed_offset: o.committed_offset,
                                    metadata,
                                    end_offset: o.end_offset,
                                    lag: o.lag,
                                },
                            )
                        })
                        .collect();
                    let offsets = Some(fbb.create_vector(&offsets));
                    let group = Some(fbb.create_string(&g.group));
                    let message = Some(fbb.create_string(&g.message));
                    let state = Some(fbb.create_string(&g.state));
                    let protocol_type = Some(fbb.create_string(&g.protocol_type));
                    let protocol_name = Some(fbb.create_string(&g.protocol_name));
                    let leader_id = Some(fbb.create_string(&g.leader_id));
                    fb::GroupDescription::create(
                        fbb,
                        &fb::GroupDescriptionArgs {
                            group,
                            error: g.error,
                            message,
                            state,
                            protocol_type,
                            protocol_name,
                            generation: g.generation,
                            leader_id,
                            members,
                            offsets,
                        },
                    )
                })
                .collect();
            let groups = Some(fbb.create_vector(&v));
            let o =
                fb::DescribeGroupsResponse::create(fbb, &fb::DescribeGroupsResponseArgs { groups });
            (T::DescribeGroupsResponse, o.as_union_value())
        }
        ResponseBody::ResetOffsets(r) => {
            let message = Some(fbb.create_string(&r.message));
            let results = Some(offset_commit_results(fbb, &r.results));
            let o = fb::ResetOffsetsResponse::create(
                fbb,
                &fb::ResetOffsetsResponseArgs {
                    error: r.error,
                    message,
                    results,
                },
            );
            (T::ResetOffsetsResponse, o.as_union_value())
        }
        _ => unreachable!("not a group response"),
    }
}

fn bytes_of(v: Option<flatbuffers::Vector<'_, u8>>) -> Vec<u8> {
    v.map(|v| v.bytes().to_vec()).unwrap_or_default()
}

fn read_group_topic_partitions(
    v: Option<flatbuffers::Vector<'_, flatbuffers::ForwardsUOffset<fb::GroupTopicPartitions<'_>>>>,
) -> Vec<GroupTopicPartitions> {
    v.into_iter()
        .flatten()
        .map(|t| GroupTopicPartitions {
            topic: s(t.topic()),
            partitions: t.partitions().into_iter().flatten().collect(),
        })
        .collect()
}

fn decode_group_request(r: fb::Request<'_>) -> Result<RequestBody, ProtocolError> {
    use fb::RequestBody as T;
    let t = r.body_type();
    let err = || missing(t.0);
    Ok(match t {
        T::JoinGroupRequest => {
            let b = r.body_as_join_group_request().ok_or_else(err)?;
            RequestBody::JoinGroup(JoinGroupRequest {
                group: s(b.group()),
                member_id: s(b.member_id()),
                client_id: s(b.client_id()),
                protocol_type: s(b.protocol_type()),
                protocols: b
                    .protocols()
                    .into_iter()
                    .flatten()
                    .map(|p| GroupProtocol {
                        name: s(p.name()),
                        metadata: bytes_of(p.metadata()),
                    })
                    .collect(),
                session_timeout_ms: b.session_timeout_ms(),
                rebalance_timeout_ms: b.rebalance_timeout_ms(),
                topics: read_strings(b.topics()),
                coordinator_assigns: b.coordinator_assigns(),
            })
        }
        T::SyncGroupRequest => {
            let b = r.body_as_sync_group_request().ok_or_else(err)?;
            RequestBody::SyncGroup(SyncGroupRequest {
                group: s(b.group()),
                member_id: s(b.member_id()),
                generation: b.generation(),
                assignments: b
                    .assignments()
                    .into_iter()
                    .flatten()
                    .map(|a| MemberAssignment {
                        member_id: s(a.member_id()),
                        assignment: bytes_of(a.assignment()),
                    })
                    .collect(),
            })
        }
        T::HeartbeatRequest => {
            let b = r.body_as_heartbeat_request().ok_or_else(err)?;
            RequestBody::Heartbeat(HeartbeatRequest {
                group: s(b.group()),
                member_id: s(b.member_id()),
                generation: b.generation(),
            })
        }
        T::LeaveGroupRequest => {
            let b = r.body_as_leave_group_request().ok_or_else(err)?;
            RequestBody::LeaveGroup(LeaveGroupRequest {
                group: s(b.group()),
                member_ids: read_strings(b.member_ids()),
            })
        }
        T::ListGroupsRequest => {
            r.body_as_list_groups_request().ok_or_else(err)?;
            RequestBody::ListGroups
        }
        T::DescribeGroupsRequest => {
            let b = r.body_as_describe_groups_request().ok_or_else(err)?;
            RequestBody::DescribeGroups(DescribeGroupsRequest {
                groups: read_strings(b.groups()),
            })
        }
        T::ResetOffsetsRequest => {
            let b = r.body_as_reset_offsets_request().ok_or_else(err)?;
            RequestBody::ResetOffsets(ResetOffsetsRequest {
                group: s(b.group()),
                topic: s(b.topic()),
                partitions: b.partitions().into_iter().flatten().collect(),
                to: b.to(),
                offset: b.offset(),
            })
        }
        _ => return Err(err()),
    })
}

fn decode_group_response(r: fb::Response<'_>) -> Result<ResponseBody, ProtocolError> {
    use fb::ResponseBody as T;
    let t = r.body_type();
    let err = || missing(t.0);
    Ok(match t {
        T::JoinGroupResponse => {
            let b = r.body_as_join_group_response().ok_or_else(err)?;
            ResponseBody::JoinGroup(JoinGroupResponse {
                error: b.error(),
                message: s(b.message()),
                generation: b.generation(),
                protocol_name: s(b.protocol_name()),
                leader_id: s(b.leader_id()),
                member_id: s(b.member_id()),
                members: b
                    .members()
                    .into_iter()
                    .flatten()
                    .map(|m| GroupMember {
                        member_id: s(m.member_id()),
                        metadata: bytes_of(m.metadata()),
                        topics: read_strings(m.topics()),
                    })
                    .collect(),
            })
        }
        T::SyncGroupResponse => {
            let b = r.body_as_sync_group_response().ok_or_else(err)?;
            ResponseBody::SyncGroup(SyncGroupResponse {
                error: b.error(),
                message: s(b.message()),
                protocol_name: s(b.protocol_name()),
                assignment: bytes_of(b.assignment()),
                partitions: read_group_topic_partitions(b.partitions()),
            })
        }
        T::HeartbeatResponse => {
            let b = r.body_as_heartbeat_response().ok_or_else(err)?;
            ResponseBody::Heartbeat(GroupStatus {
                error: b.error(),
                message: s(b.message()),
            })
        }
        T::LeaveGroupResponse => {
            let b = r.body_as_leave_group_response().ok_or_else(err)?;
            ResponseBody::LeaveGroup(GroupStatus {
                error: b.error(),
                message: s(b.message()),
            })
        }
        T::ListGroupsResponse => {
            let b = r.body_as_list_groups_response().ok_or_else(err)?;
            ResponseBody::ListGroups(ListGroupsResponse {
                groups: b
                    .groups()
                    .into_iter()
                    .flatten()
                    .map(|g| GroupListing {
                        group: s(g.group()),
                        state: s(g.state()),
                        protocol_type: s(g.protocol_type()),
                        members: g.members(),
                    })
                    .collect(),
            })
        }
        T::DescribeGroupsResponse => {
            let b = r.body_as_describe_groups_response().ok_or_else(err)?;
            ResponseBody::DescribeGroups(DescribeGroupsResponse {
                groups: b
                    .groups()
                    .into_iter()
                    .flatten()
                    .map(|g| GroupDescription {
                        group: s(g.group()),
                        error: g.error(),
                        message: s(g.message()),
                        state: s(g.state()),
                        protocol_type: s(g.protocol_type()),
                        protocol_name: s(g.protocol_name()),
                        generation: g.generation(),
                        leader_id: s(g.leader_id()),
                        members: g
                            .members()
                            .into_iter()
                            .flatten()
                            .map(|m| GroupMemberDescription {
                                member_id: s(m.member_id()),
                                client_id: s(m.client_id()),
                                client_host: s(m.client_host()),
                                topics: read_strings(m.topics()),
                                assignment: bytes_of(m.assignment()),
                                partitions: read_group_topic_partitions(m.partitions()),
                            })
                            .collect(),
                        offsets: g
                            .offsets()
                            .into_iter()
                            .flatten()
                            .map(|o| GroupOffsetDescription {
                                topic: s(o.topic()),
                                partition: o.partition(),
                                committed_offset: o.committed_offset(),
                                metadata: s(o.metadata()),
                                end_offset: o.end_offset(),
                                lag: o.lag(),
                            })
                            .collect(),
                    })
                    .collect(),
            })
        }
        T::ResetOffsetsResponse => {
            let b = r.body_as_reset_offsets_response().ok_or_else(err)?;
            ResponseBody::ResetOffsets(ResetOffsetsResponse {
                error: b.error(),
                message: s(b.message()),
                results: b
                    .results()
                    .into_iter()
                    .flatten()
                    .map(|p| OffsetCommitResult {
                        topic: s(p.topic()),
                        partition: p.partition(),
                        error: p.error(),
                        message: s(p.message()),
                    })
                    .collect(),
            })
        }
        _ => return Err(err()),
    })
}

fn check_trailer(bounds: &MessageBounds, declared: u64) -> Result<Range<usize>, ProtocolError> {
    let actual = bounds.trailer_len();
    if declared != actual as u64 {
        return Err(ProtocolError::TrailerMismatch { declared, actual });
    }
    Ok(bounds.trailer_range())
}

/// Decodes `message`, which must be exactly one complete message (as bounded
/// by [`peek_message`]): envelope, verified table, and a trailer whose length
/// matches what the table declares.
pub fn decode_request(message: &[u8]) -> Result<DecodedRequest, ProtocolError> {
    let bounds = exact_bounds(message)?;
    let table = &message[bounds.table_range()];
    let opts = verifier_options(table.len());
    let root = fb::root_as_request_with_opts(&opts, table).map_err(|e| {
        ProtocolError::InvalidFlatbuffer {
            reason: e.to_string(),
        }
    })?;
    let body = request_body(root)?;
    let trailer = check_trailer(&bounds, body.trailer_len())?;
    Ok(DecodedRequest {
        correlation_id: root.correlation_id(),
        body,
        trailer,
    })
}

/// Decodes `message`, which must be exactly one complete response message.
pub fn decode_response(message: &[u8]) -> Result<DecodedResponse, ProtocolError> {
    let bounds = exact_bounds(message)?;
    let table = &message[bounds.table_range()];
    let opts = verifier_options(table.len());
    let root = flatbuffers::root_with_opts::<fb::Response>(&opts, table).map_err(|e| {
        ProtocolError::InvalidFlatbuffer {
            reason: e.to_string(),
        }
    })?;
    let body = response_body(root)?;
    let trailer = check_trailer(&bounds, body.trailer_len())?;
    Ok(DecodedResponse {
        correlation_id: root.correlation_id(),
        body,
        trailer,
    })
}

// ------------------------------------------------------------------ trailers

/// Cuts an owned trailer into one buffer per declared length, without
/// copying. `None` if the lengths do not add up to exactly the trailer.
pub fn split_trailer_mut(
    mut trailer: BytesMut,
    lens: impl IntoIterator<Item = usize>,
) -> Option<Vec<BytesMut>> {
    let mut out = Vec::new();
    for len in lens {
        if len > trailer.len() {
            return None;
        }
        out.push(trailer.split_to(len));
    }
    trailer.is_empty().then_some(out)
}

/// Cuts a shared trailer into one buffer per declared length, without
/// copying. `None` if the lengths do not add up to exactly the trailer.
pub fn split_trailer(
    mut trailer: Bytes,
    lens: impl IntoIterator<Item = usize>,
) -> Option<Vec<Bytes>> {
    let mut out = Vec::new();
    for len in lens {
        if len > trailer.len() {
            return None;
        }
        out.push(trailer.split_to(len));
    }
    trailer.is_empty().then_some(out)
}

impl FetchResponse {
    /// Cuts a fetch response's trailer into each result's frames, in result
    /// order (zero-copy).
    pub fn split_trailer(&self, trailer: Bytes) -> Option<Vec<Bytes>> {
        split_trailer(trailer, self.results.iter().map(|r| r.bytes_len as usize))
    }
}

/// Iterates the whole frames of one fetch result's bytes. Each item is one
/// frame's bytes (check with [`crate::verify_stored`] or read with
/// [`crate::records`]); a malformed or cut frame ends the iteration with an
/// error.
pub fn frames(blob: &[u8]) -> Frames<'_> {
    Frames { rest: blob }
}

/// Iterator returned by [`frames`].
pub struct Frames<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<&'a [u8], FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let len = match peek_frame_len(self.rest, FRAME_BYTES_MAX) {
            Ok(Some(len)) if len <= self.rest.len() => len,
            Ok(_) => {
                let len_bytes = self.rest.len();
                self.rest = &[];
                return Some(Err(FrameError::TooShort { len_bytes }));
            }
            Err(e) => {
                self.rest = &[];
                return Some(Err(e));
            }
        };
        let (frame, rest) = self.rest.split_at(len);
        self.rest = rest;
        Some(Ok(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{records, BatchBuilder, RecordIn};

    fn all_requests() -> Vec<RequestBody> {
        vec![
            RequestBody::ApiVersions(ApiVersionsRequest {
                client_name: "test".into(),
                min_version: 1,
                max_version: 1,
            }),
            RequestBody::CreateTopics(CreateTopicsRequest {
                topics: vec![CreateTopic {
                    name: "t".into(),
                    partitions: 3,
                    configs: vec![("retention.ms".into(), "1000".into())],
                }],
            }),
            RequestBody::DeleteTopics(DeleteTopicsRequest {
                names: vec!["a".into(), "b".into()],
            }),
            RequestBody::ListTopics,
            RequestBody::DescribeTopics(DescribeTopicsRequest { names: vec![] }),
            RequestBody::CreatePartitions(CreatePartitionsRequest {
                topics: vec![PartitionsIncrease {
                    name: "t".into(),
                    total: 5,
                }],
            }),
            RequestBody::Produce(ProduceRequest {
                acks: Acks::Durable,
                timeout_ms: 100,
                batches: vec![
                    ProduceBatch {
                        topic: "t".into(),
                        partition: 0,
                        batch_len: 3,
                    },
                    ProduceBatch {
                        topic: "u".into(),
                        partition: 7,
                        batch_len: 2,
                    },
                ],
            }),
            RequestBody::Fetch(FetchRequest {
                max_wait_ms: 500,
                min_bytes: 1,
                max_bytes: 1 << 20,
                partitions: vec![FetchPartition {
                    topic: "t".into(),
                    partition: 1,
                    offset: 42,
                    partition_max_bytes: 4096,
                }],
                read_committed: true,
            }),
            RequestBody::ListOffsets(ListOffsetsRequest {
                partitions: vec![ListOffsetsPartition {
                    topic: "t".into(),
                    partition: 0,
                    timestamp: LIST_OFFSETS_EARLIEST,
                }],
            }),
            RequestBody::OffsetCommit(OffsetCommitRequest {
                group: "g".into(),
                partitions: vec![OffsetCommitPartition {
                    topic: "t".into(),
                    partition: 0,
                    offset: 9,
                    metadata: "m".into(),
                }],
                member_id: "m-1".into(),
                generation: 4,
            }),
            RequestBody::OffsetFetch(OffsetFetchRequest {
                group: "g".into(),
                partitions: vec![TopicPartition {
                    topic: "t".into(),
                    partition: 0,
                }],
            }),
            RequestBody::JoinGroup(JoinGroupRequest {
                group: "g".into(),
                member_id: "m".into(),
                client_id: "c".into(),
                protocol_type: "consumer".into(),
                protocols: vec![GroupProtocol {
                    name: "range".into(),
                    metadata: vec![1, 2, 3],
                }],
                session_timeout_ms: 10_000,
                rebalance_timeout_ms: 20_000,
                topics: vec!["t".into()],
                coordinator_assigns: true,
            }),
            RequestBody::SyncGroup(SyncGroupRequest {
                group: "g".into(),
                member_id: "m".into(),
                generation: 2,
                assignments: vec![MemberAssignment {
                    member_id: "m".into(),
                    assignment: vec![9],
                }],
            }),
            RequestBody::Heartbeat(HeartbeatRequest {
                group: "g".into(),
                member_id: "m".into(),
                generation: 2,
            }),
            RequestBody::LeaveGroup(LeaveGroupRequest {
                group: "g".into(),
                member_ids: vec!["m".into()],
            }),
            RequestBody::ListGroups,
            RequestBody::DescribeGroups(DescribeGroupsRequest {
                groups: vec!["g".into()],
            }),
            RequestBody::ResetOffsets(ResetOffsetsRequest {
                group: "g".into(),
                topic: "t".into(),
                partitions: vec![0, 2],
                to: ResetTo::Offset,
                offset: 5,
            }),
            RequestBody::InitProducerId(InitProducerIdRequest::default()),
            RequestBody::InitProducerId(InitProducerIdRequest {
                transactional_id: "tx".into(),
                producer_id: 1 << 40,
                producer_epoch: 7,
            }),
        ]
    }

    fn all_responses() -> Vec<ResponseBody> {
        let tr = TopicResults {
            results: vec![TopicResult {
                name: "t".into(),
                error: ErrorCode::TopicAlreadyExists,
                message: "exists".into(),
            }],
        };
        vec![
            ResponseBody::ApiVersions(ApiVersionsResponse {
                min_version: 1,
                max_version: 1,
                message_bytes_max: 5,
                server_version: "x".into(),
                shard_count: 2,
                shard_id: 1,
                shard_ports: vec![40001, 40002],
                node_id: 2,
                nodes: vec![
                    NodeAddress {
                        id: 1,
                        native_addr: "127.0.0.1:9401".into(),
                    },
                    NodeAddress {
                        id: 2,
                        native_addr: String::new(),
                    },
                ],
                ..Default::default()
            }),
            ResponseBody::CreateTopics(tr.clone()),
            ResponseBody::DeleteTopics(tr.clone()),
            ResponseBody::CreatePartitions(tr),
            ResponseBody::ListTopics(ListTopicsResponse {
                topics: vec![TopicListing {
                    name: "t".into(),
                    partitions: 2,
                }],
            }),
            ResponseBody::DescribeTopics(DescribeTopicsResponse {
                topics: vec![TopicDescription {
                    name: "t".into(),
                    configs: vec![("segment.bytes".into(), "1".into())],
                    partitions: vec![PartitionDescription {
                        partition: 1,
                        high_watermark: 10,
                        owner_shard: 1,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            }),
            ResponseBody::Produce(ProduceResponse {
                results: vec![ProduceResult {
                    topic: "t".into(),
                    base_offset: 5,
                    last_offset: 9,
                    append_time_ms: -3,
                    ..Default::default()
                }],
            }),
            ResponseBody::Fetch(FetchResponse {
                results: vec![
                    FetchResult {
                        topic: "t".into(),
                        bytes_len: 4,
                        high_watermark: 3,
                        ..Default::default()
                    },
                    FetchResult {
                        topic: "t".into(),
                        partition: 1,
                        error: ErrorCode::OffsetOutOfRange,
                        message: "no".into(),
                        ..Default::default()
                    },
                ],
            }),
            ResponseBody::ListOffsets(ListOffsetsResponse {
                results: vec![ListOffsetsResult {
                    offset: -1,
                    ..Default::default()
                }],
            }),
            ResponseBody::OffsetCommit(OffsetCommitResponse {
                results: vec![OffsetCommitResult::default()],
            }),
            ResponseBody::OffsetFetch(OffsetFetchResponse {
                results: vec![OffsetFetchResult {
                    offset: 77,
                    metadata: "meta".into(),
                    ..Default::default()
                }],
            }),
            ResponseBody::Error(ErrorResponse {
                error: ErrorCode::InvalidRequest,
                message: "bad".into(),
            }),
            ResponseBody::JoinGroup(JoinGroupResponse {
                generation: 3,
                protocol_name: "range".into(),
                leader_id: "m".into(),
                member_id: "m".into(),
                members: vec![GroupMember {
                    member_id: "m".into(),
                    metadata: vec![1],
                    topics: vec!["t".into()],
                }],
                ..Default::default()
            }),
            ResponseBody::SyncGroup(SyncGroupResponse {
                protocol_name: "range".into(),
                assignment: vec![0, 1],
                partitions: vec![GroupTopicPartitions {
                    topic: "t".into(),
                    partitions: vec![0, 3],
                }],
                ..Default::default()
            }),
            ResponseBody::Heartbeat(GroupStatus {
                error: ErrorCode::RebalanceInProgress,
                message: "rejoin".into(),
            }),
            ResponseBody::LeaveGroup(GroupStatus::default()),
            ResponseBody::ListGroups(ListGroupsResponse {
                groups: vec![GroupListing {
                    group: "g".into(),
                    state: "Stable".into(),
                    protocol_type: "consumer".into(),
                    members: 3,
                }],
            }),
            ResponseBody::DescribeGroups(DescribeGroupsResponse {
                groups: vec![GroupDescription {
                    group: "g".into(),
                    state: "Stable".into(),
                    generation: 7,
                    members: vec![GroupMemberDescription {
                        member_id: "m".into(),
                        topics: vec!["t".into()],
                        partitions: vec![GroupTopicPartitions {
                            topic: "t".into(),
                            partitions: vec![1],
                        }],
                        ..Default::default()
                    }],
                    offsets: vec![GroupOffsetDescription {
                        topic: "t".into(),
                        partition: 1,
                        committed_offset: 4,
                        metadata: String::new(),
                        end_offset: 10,
                        lag: 6,
                    }],
                    ..Default::default()
                }],
            }),
            ResponseBody::ResetOffsets(ResetOffsetsResponse {
                results: vec![OffsetCommitResult::default()],
                ..Default::default()
            }),
            ResponseBody::InitProducerId(InitProducerIdResponse {
                producer_id: 42,
                producer_epoch: 3,
                ..Default::default()
            }),
            ResponseBody::InitProducerId(InitProducerIdResponse {
                error: ErrorCode::InvalidRequest,
                message: "transactions are not supported".into(),
                ..Default::default()
            }),
        ]
    }

    fn with_trailer(mut head: Vec<u8>, n: u64) -> Vec<u8> {
        head.extend((0..n).map(|i| i as u8));
        head
    }

    #[test]
    fn every_request_round_trips() {
        for (i, body) in all_requests().into_iter().enumerate() {
            let msg = with_trailer(
                encode_request(i as u64 + 100, &body).expect("encode"),
                body.trailer_len(),
            );
            let b = peek_message(&msg, MESSAGE_BYTES_MAX)
                .expect("ok")
                .expect("complete");
            assert_eq!(b.message_len, msg.len());
            let d = decode_request(&msg).expect("decode");
            assert_eq!(d.correlation_id, i as u64 + 100);
            assert_eq!(d.body, body);
            assert_eq!(d.trailer.len() as u64, body.trailer_len());
            assert_eq!(peek_correlation_id(&msg), Some(i as u64 + 100));
        }
    }

    #[test]
    fn every_response_round_trips() {
        for (i, body) in all_responses().into_iter().enumerate() {
            let msg = with_trailer(
                encode_response(i as u64, &body).expect("encode"),
                body.trailer_len(),
            );
            let d = decode_response(&msg).expect("decode");
            assert_eq!(d.correlation_id, i as u64);
            assert_eq!(d.body, body);
        }
    }

    #[test]
    fn incomplete_is_none_at_every_cut() {
        let body = &all_requests()[6];
        let msg = with_trailer(encode_request(1, body).expect("encode"), 5);
        for cut in 0..msg.len() {
            assert_eq!(peek_message(&msg[..cut], MESSAGE_BYTES_MAX), Ok(None));
            assert!(decode_request(&msg[..cut]).is_err());
        }
    }

    #[test]
    fn trailer_must_add_up() {
        let body = &all_requests()[6];
        let mut msg = with_trailer(encode_request(1, body).expect("encode"), 5);
        msg.push(0);
        let total = u32::from_le_bytes(msg[..4].try_into().expect("4")) + 1;
        msg[..4].copy_from_slice(&total.to_le_bytes());
        assert!(matches!(
            decode_request(&msg),
            Err(ProtocolError::TrailerMismatch {
                declared: 5,
                actual: 6
            })
        ));
        // A request with no trailer may not carry one either.
        let mut msg = encode_request(1, &RequestBody::ListTopics).expect("encode");
        msg.push(1);
        let total = u32::from_le_bytes(msg[..4].try_into().expect("4")) + 1;
        msg[..4].copy_from_slice(&total.to_le_bytes());
        assert!(decode_request(&msg).is_err());
    }

    #[test]
    fn oversized_and_bad_envelopes_are_errors() {
        let mut msg = vec![0u8; 8];
        msg[..4].copy_from_slice(&(MESSAGE_BYTES_MAX as u32 + 1).to_le_bytes());
        assert!(matches!(
            peek_message(&msg, MESSAGE_BYTES_MAX),
            Err(ProtocolError::TooLarge { .. })
        ));
        msg[..4].copy_from_slice(&3u32.to_le_bytes());
        assert!(peek_message(&msg, MESSAGE_BYTES_MAX).is_err());
        msg[..4].copy_from_slice(&10u32.to_le_bytes());
        msg[4..8].copy_from_slice(&7u32.to_le_bytes());
        assert!(peek_message(&msg, MESSAGE_BYTES_MAX).is_err());
    }

    #[test]
    fn corrupted_messages_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for body in all_requests() {
            let msg = with_trailer(encode_request(7, &body).expect("e"), body.trailer_len());
            for i in 0..msg.len() {
                for bit in [0u8, 3, 7] {
                    let mut m = msg.clone();
                    m[i] ^= 1 << bit;
                    let _ = decode_request(&m);
                    let _ = decode_response(&m);
                    let _ = peek_correlation_id(&m);
                }
            }
            for _ in 0..200 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let mut m = msg.clone();
                let at = (seed as usize) % m.len();
                m[at] = (seed >> 32) as u8;
                let _ = decode_request(&m);
            }
        }
        let _ = decode_request(&[]);
        let _ = peek_correlation_id(&[255; 64]);
    }

    #[test]
    fn garbage_table_is_invalid_flatbuffer() {
        let mut msg = Vec::new();
        msg.extend_from_slice(&20u32.to_le_bytes());
        msg.extend_from_slice(&16u32.to_le_bytes());
        msg.extend_from_slice(&[0xff; 16]);
        assert!(matches!(
            decode_request(&msg),
            Err(ProtocolError::InvalidFlatbuffer { .. })
        ));
    }

    #[test]
    fn fetch_trailer_splits_into_frames_zero_copy() {
        let mut b = BatchBuilder::new();
        let mut blob = Vec::new();
        for i in 0..3i64 {
            b.push(&RecordIn {
                timestamp_ms: i,
                value: Some(b"v"),
                ..Default::default()
            });
            b.finish_into(&mut blob);
        }
        let resp = FetchResponse {
            results: vec![
                FetchResult {
                    bytes_len: blob.len() as u32,
                    ..Default::default()
                },
                FetchResult::default(),
            ],
        };
        let body = ResponseBody::Fetch(resp.clone());
        let mut msg = encode_response(3, &body).expect("encode");
        msg.extend_from_slice(&blob);
        let d = decode_response(&msg).expect("decode");
        let msg = Bytes::from(msg);
        let parts = resp
            .split_trailer(msg.slice(d.trailer.clone()))
            .expect("split");
        assert_eq!(parts.len(), 2);
        assert_eq!(&parts[0][..], &blob[..]);
        assert!(parts[1].is_empty());
        let n: usize = frames(&parts[0])
            .map(|f| records(f.expect("frame")).expect("records").count())
            .sum();
        assert_eq!(n, 3);
        assert!(split_trailer_mut(BytesMut::from(&b"abc"[..]), [1, 1]).is_none());
        let parts = split_trailer_mut(BytesMut::from(&b"abc"[..]), [1, 2]).expect("split");
        assert_eq!(&parts[1][..], b"bc");
    }
}
