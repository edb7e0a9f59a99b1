//! Kafka framing and codecs, I/O-free: the 4-byte big-endian size prefix,
//! the request head, the table of supported APIs and versions, response
//! encoding with the right header version, error-code mapping, and a
//! well-formed error answer for any API the crate knows.
//!
//! Framing is two passes, as for the native protocol: [`peek_request`] says
//! how long the next request is (or that more bytes are needed, which is
//! not an error), then the caller cuts it and decodes it.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use strom_flatbuffers::protocol::ErrorCode;

// Kafka error codes used by the edge (stable numbers of the Kafka protocol).
pub const UNKNOWN_SERVER_ERROR: i16 = -1;
pub const NONE: i16 = 0;
pub const OFFSET_OUT_OF_RANGE: i16 = 1;
pub const CORRUPT_MESSAGE: i16 = 2;
pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
pub const LEADER_NOT_AVAILABLE: i16 = 5;
pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
pub const REQUEST_TIMED_OUT: i16 = 7;
pub const MESSAGE_TOO_LARGE: i16 = 10;
pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
pub const INVALID_REQUIRED_ACKS: i16 = 21;
pub const INVALID_GROUP_ID: i16 = 24;
pub const UNSUPPORTED_VERSION: i16 = 35;
pub const TOPIC_ALREADY_EXISTS: i16 = 36;
pub const INVALID_PARTITIONS: i16 = 37;
pub const INVALID_REPLICATION_FACTOR: i16 = 38;
pub const INVALID_CONFIG: i16 = 40;
pub const NOT_CONTROLLER: i16 = 41;
pub const INVALID_REQUEST: i16 = 42;
pub const UNSUPPORTED_FOR_MESSAGE_FORMAT: i16 = 43;
pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
pub const DUPLICATE_SEQUENCE_NUMBER: i16 = 46;
pub const INVALID_PRODUCER_EPOCH: i16 = 47;
pub const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
pub const KAFKA_STORAGE_ERROR: i16 = 56;
pub const INVALID_RECORD: i16 = 87;
pub const FENCED_LEADER_EPOCH: i16 = 74;
pub const UNKNOWN_LEADER_EPOCH: i16 = 75;

/// Maps a Strom wire error code onto the nearest Kafka one.
pub fn wire_to_kafka(code: ErrorCode) -> i16 {
    match code {
        ErrorCode::None => NONE,
        ErrorCode::UnknownTopic | ErrorCode::UnknownPartition => UNKNOWN_TOPIC_OR_PARTITION,
        ErrorCode::OffsetOutOfRange => OFFSET_OUT_OF_RANGE,
        ErrorCode::CorruptBatch => CORRUPT_MESSAGE,
        ErrorCode::MessageTooLarge => MESSAGE_TOO_LARGE,
        ErrorCode::InvalidRequest => INVALID_REQUEST,
        ErrorCode::NotEnoughSpace => KAFKA_STORAGE_ERROR,
        ErrorCode::Timeout => REQUEST_TIMED_OUT,
        ErrorCode::TopicAlreadyExists => TOPIC_ALREADY_EXISTS,
        ErrorCode::UnsupportedVersion => UNSUPPORTED_VERSION,
        ErrorCode::InvalidConfig => INVALID_CONFIG,
        ErrorCode::InvalidPartitions | ErrorCode::TooManyPartitions => INVALID_PARTITIONS,
        ErrorCode::InvalidTopicName => INVALID_TOPIC_EXCEPTION,
        ErrorCode::ShuttingDown => NOT_LEADER_OR_FOLLOWER,
        ErrorCode::InvalidGroup => INVALID_GROUP_ID,
        // Retriable in Kafka clients: a storage error on the leader's log...
        ErrorCode::PartitionFailed => KAFKA_STORAGE_ERROR,
        // ...and "ask again" for a partition that is briefly not served or
        // whose records were truncated before they were durable (Kafka says
        // this when the leader moved and truncated the log).
        ErrorCode::PartitionUnavailable | ErrorCode::RecordsTruncated => NOT_LEADER_OR_FOLLOWER,
        ErrorCode::NotLeader => NOT_LEADER_OR_FOLLOWER,
        ErrorCode::LeaderNotAvailable => LEADER_NOT_AVAILABLE,
        ErrorCode::NotController => NOT_CONTROLLER,
        _ => UNKNOWN_SERVER_ERROR,
    }
}

/// The APIs this edge serves and the versions of each. Versions were chosen
/// so that librdkafka 2.x, kafka-python 2.x and the Java client all find a
/// common version; Fetch stops at 12 (v13 names topics by id only).
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 7),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 7),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 4),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 0, 7),
    (ApiKey::DeleteTopics, 0, 5),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::DescribeConfigs, 0, 4),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::OffsetForLeaderEpoch, 0, 4),
    (ApiKey::AddPartitionsToTxn, 0, 3),
    (ApiKey::AddOffsetsToTxn, 0, 3),
    (ApiKey::EndTxn, 0, 3),
    (ApiKey::TxnOffsetCommit, 0, 3),
    // librdkafka refuses SASL unless v0 is in range; it then uses v1.
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::DescribeUserScramCredentials, 0, 0),
    (ApiKey::AlterUserScramCredentials, 0, 0),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
];

/// The supported version range of `key`, if it is served at all.
pub fn supported(key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|(_, lo, hi)| (*lo, *hi))
}

/// The fixed start of every request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHead {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
}

/// Why a connection's byte stream cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("request of {len_bytes} bytes exceeds the limit of {max_bytes} bytes")]
    TooLarge { len_bytes: i64, max_bytes: usize },
    #[error("request size {len_bytes} is too small for a request header")]
    TooSmall { len_bytes: i64 },
}

/// First pass: the total length (prefix included) of the request at the
/// start of `buf`, or `Ok(None)` if it has not fully arrived yet.
pub fn peek_request(buf: &[u8], max_bytes: usize) -> Result<Option<usize>, FramingError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let size = i64::from(i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
    if size < 8 {
        return Err(FramingError::TooSmall { len_bytes: size });
    }
    if size as u64 > max_bytes as u64 {
        return Err(FramingError::TooLarge {
            len_bytes: size,
            max_bytes,
        });
    }
    let total = 4 + size as usize;
    Ok((buf.len() >= total).then_some(total))
}

/// The announced total length of a partially received request, to size reads.
pub fn announced_len(buf: &[u8]) -> Option<usize> {
    (buf.len() >= 4)
        .then(|| i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]))
        .filter(|n| *n > 0)
        .map(|n| n as usize + 4)
}

/// Reads the api key, version and correlation id of a request body (the
/// bytes after the size prefix).
pub fn peek_head(body: &[u8]) -> Option<RequestHead> {
    if body.len() < 8 {
        return None;
    }
    Some(RequestHead {
        api_key: i16::from_be_bytes([body[0], body[1]]),
        api_version: i16::from_be_bytes([body[2], body[3]]),
        correlation_id: i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
    })
}

/// A decoded request.
pub struct Decoded {
    pub key: ApiKey,
    pub version: i16,
    pub header: RequestHeader,
    pub body: RequestKind,
}

/// What to do with one framed request body.
pub enum Incoming {
    Request(Box<Decoded>),
    /// Answer with these encoded bytes (prefix included) and go on.
    Answer(BytesMut),
    /// The request cannot be answered in any well-formed way.
    Close,
}

/// Second pass: decodes one request body, or prepares the error answer for
/// an API or version this edge does not serve.
pub fn decode_request(mut body: Bytes) -> Incoming {
    let Some(head) = peek_head(&body) else {
        return Incoming::Close;
    };
    let key = ApiKey::try_from(head.api_key).ok();
    let served = key.and_then(supported);
    let version_ok = served
        .map(|(lo, hi)| head.api_version >= lo && head.api_version <= hi)
        .unwrap_or(false);
    let (Some(key), true) = (key, version_ok) else {
        if key == Some(ApiKey::ApiVersions) {
            // KIP-511: answer in v0 with the supported table so that the
            // client can retry with a version we speak.
            return Incoming::Answer(api_versions_v0_error(head.correlation_id));
        }
        return match key {
            Some(k)
                if k.valid_versions().min <= head.api_version
                    && head.api_version <= k.valid_versions().max =>
            {
                let resp = unsupported_response(k, UNSUPPORTED_VERSION);
                match encode_response(head.correlation_id, k, head.api_version, &resp) {
                    Ok(b) => Incoming::Answer(b),
                    Err(_) => Incoming::Close,
                }
            }
            // Unknown API or a version not even the crate knows: a bare
            // header with an error code is the best that can be done.
            _ => {
                let mut b = BytesMut::with_capacity(10);
                b.put_i32(6);
                b.put_i32(head.correlation_id);
                b.put_i16(UNSUPPORTED_VERSION);
                Incoming::Answer(b)
            }
        };
    };
    let header_version = key.request_header_version(head.api_version);
    let header = match RequestHeader::decode(&mut body, header_version) {
        Ok(h) => h,
        Err(_) => return Incoming::Close,
    };
    match RequestKind::decode(key, &mut body, head.api_version) {
        Ok(req) => Incoming::Request(Box::new(Decoded {
            key,
            version: head.api_version,
            header,
            body: req,
        })),
        Err(_) => {
            let resp = unsupported_response(key, INVALID_REQUEST);
            match encode_response(head.correlation_id, key, head.api_version, &resp) {
                Ok(b) => Incoming::Answer(b),
                Err(_) => Incoming::Close,
            }
        }
    }
}

/// Encodes a response with its size prefix and the header version its API
/// and version call for.
pub fn encode_response(
    correlation_id: i32,
    key: ApiKey,
    version: i16,
    resp: &ResponseKind,
) -> anyhow::Result<BytesMut> {
    // Sized up front: a fetch answer carries megabytes of records, and
    // regrowing the buffer would copy them again and again.
    let body_bytes = match resp {
        ResponseKind::Fetch(f) => {
            kafka_protocol::protocol::Encodable::compute_size(f, version).unwrap_or(0)
        }
        _ => 192,
    };
    let mut out = BytesMut::with_capacity(64 + body_bytes);
    out.put_i32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    header.encode(&mut out, key.response_header_version(version))?;
    resp.encode(&mut out, version)?;
    let size = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&size.to_be_bytes());
    Ok(out)
}

/// The ApiVersions table this edge answers with.
pub fn api_versions_response(error_code: i16) -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_error_code(error_code)
        .with_api_keys(
            SUPPORTED
                .iter()
                .map(|(k, lo, hi)| {
                    api_versions_response::ApiVersion::default()
                        .with_api_key(*k as i16)
                        .with_min_version(*lo)
                        .with_max_version(*hi)
                })
                .collect(),
        )
}

fn api_versions_v0_error(correlation_id: i32) -> BytesMut {
    let resp = ResponseKind::ApiVersions(api_versions_response(UNSUPPORTED_VERSION));
    encode_response(correlation_id, ApiKey::ApiVersions, 0, &resp)
        .expect("an ApiVersions v0 answer always encodes")
}

/// A well-formed answer for any API the crate knows: the default response
/// with the top-level error code set where the response has one.
pub fn unsupported_response(key: ApiKey, code: i16) -> ResponseKind {
    match key {
        ApiKey::Produce => ResponseKind::Produce(ProduceResponse::default()),
        ApiKey::Fetch => ResponseKind::Fetch(FetchResponse::default().with_error_code(code)),
        ApiKey::ListOffsets => ResponseKind::ListOffsets(ListOffsetsResponse::default()),
        ApiKey::Metadata => ResponseKind::Metadata(MetadataResponse::default()),
        ApiKey::LeaderAndIsr => {
            ResponseKind::LeaderAndIsr(LeaderAndIsrResponse::default().with_error_code(code))
        }
        ApiKey::StopReplica => {
            ResponseKind::StopReplica(StopReplicaResponse::default().with_error_code(code))
        }
        ApiKey::UpdateMetadata => {
            ResponseKind::UpdateMetadata(UpdateMetadataResponse::default().with_error_code(code))
        }
        ApiKey::ControlledShutdown => ResponseKind::ControlledShutdown(
            ControlledShutdownResponse::default().with_error_code(code),
        ),
        ApiKey::OffsetCommit => ResponseKind::OffsetCommit(OffsetCommitResponse::default()),
        ApiKey::OffsetFetch => {
            ResponseKind::OffsetFetch(OffsetFetchResponse::default().with_error_code(code))
        }
        ApiKey::FindCoordinator => {
            ResponseKind::FindCoordinator(FindCoordinatorResponse::default().with_error_code(code))
        }
        ApiKey::JoinGroup => {
            ResponseKind::JoinGroup(JoinGroupResponse::default().with_error_code(code))
        }
        ApiKey::Heartbeat => {
            ResponseKind::Heartbeat(HeartbeatResponse::default().with_error_code(code))
        }
        ApiKey::LeaveGroup => {
            ResponseKind::LeaveGroup(LeaveGroupResponse::default().with_error_code(code))
        }
        ApiKey::SyncGroup => {
            ResponseKind::SyncGroup(SyncGroupResponse::default().with_error_code(code))
        }
        ApiKey::DescribeGroups => ResponseKind::DescribeGroups(DescribeGroupsResponse::default()),
        ApiKey::ListGroups => {
            ResponseKind::ListGroups(ListGroupsResponse::default().with_error_code(code))
        }
        ApiKey::SaslHandshake => {
            ResponseKind::SaslHandshake(SaslHandshakeResponse::default().with_error_code(code))
        }
        ApiKey::ApiVersions => {
            ResponseKind::ApiVersions(ApiVersionsResponse::default().with_error_code(code))
        }
        ApiKey::CreateTopics => ResponseKind::CreateTopics(CreateTopicsResponse::default()),
        ApiKey::DeleteTopics => ResponseKind::DeleteTopics(DeleteTopicsResponse::default()),
        ApiKey::DeleteRecords => ResponseKind::DeleteRecords(DeleteRecordsResponse::default()),
        ApiKey::InitProducerId => {
            ResponseKind::InitProducerId(InitProducerIdResponse::default().with_error_code(code))
        }
        ApiKey::OffsetForLeaderEpoch => {
            ResponseKind::OffsetForLeaderEpoch(OffsetForLeaderEpochResponse::default())
        }
        ApiKey::AddPartitionsToTxn => ResponseKind::AddPartitionsToTxn(
            AddPartitionsToTxnResponse::default().with_error_code(code),
        ),
        ApiKey::AddOffsetsToTxn => {
            ResponseKind::AddOffsetsToTxn(AddOffsetsToTxnResponse::default().with_error_code(code))
        }
        ApiKey::EndTxn => ResponseKind::EndTxn(EndTxnResponse::default().with_error_code(code)),
        ApiKey::WriteTxnMarkers => {
            ResponseKind::WriteTxnMarkers(WriteTxnMarkersResponse::default())
        }
        ApiKey::TxnOffsetCommit => {
            ResponseKind::TxnOffsetCommit(TxnOffsetCommitResponse::default())
        }
        ApiKey::DescribeAcls => {
            ResponseKind::DescribeAcls(DescribeAclsResponse::default().with_error_code(code))
        }
        ApiKey::CreateAcls => ResponseKind::CreateAcls(CreateAclsResponse::default()),
        ApiKey::DeleteAcls => ResponseKind::DeleteAcls(DeleteAclsResponse::default()),
        ApiKey::DescribeConfigs => {
            ResponseKind::DescribeConfigs(DescribeConfigsResponse::default())
        }
        ApiKey::AlterConfigs => ResponseKind::AlterConfigs(AlterConfigsResponse::default()),
        ApiKey::AlterReplicaLogDirs => {
            ResponseKind::AlterReplicaLogDirs(AlterReplicaLogDirsResponse::default())
        }
        ApiKey::DescribeLogDirs => {
            ResponseKind::DescribeLogDirs(DescribeLogDirsResponse::default().with_error_code(code))
        }
        ApiKey::SaslAuthenticate => ResponseKind::SaslAuthenticate(
            SaslAuthenticateResponse::default().with_error_code(code),
        ),
        ApiKey::CreatePartitions => {
            ResponseKind::CreatePartitions(CreatePartitionsResponse::default())
        }
        ApiKey::CreateDelegationToken => ResponseKind::CreateDelegationToken(
            CreateDelegationTokenResponse::default().with_error_code(code),
        ),
        ApiKey::RenewDelegationToken => ResponseKind::RenewDelegationToken(
            RenewDelegationTokenResponse::default().with_error_code(code),
        ),
        ApiKey::ExpireDelegationToken => ResponseKind::ExpireDelegationToken(
            ExpireDelegationTokenResponse::default().with_error_code(code),
        ),
        ApiKey::DescribeDelegationToken => ResponseKind::DescribeDelegationToken(
            DescribeDelegationTokenResponse::default().with_error_code(code),
        ),
        ApiKey::DeleteGroups => ResponseKind::DeleteGroups(DeleteGroupsResponse::default()),
        ApiKey::ElectLeaders => {
            ResponseKind::ElectLeaders(ElectLeadersResponse::default().with_error_code(code))
        }
        ApiKey::IncrementalAlterConfigs => {
            ResponseKind::IncrementalAlterConfigs(IncrementalAlterConfigsResponse::default())
        }
        ApiKey::AlterPartitionReassignments => ResponseKind::AlterPartitionReassignments(
            AlterPartitionReassignmentsResponse::default().with_error_code(code),
        ),
        ApiKey::ListPartitionReassignments => ResponseKind::ListPartitionReassignments(
            ListPartitionReassignmentsResponse::default().with_error_code(code),
        ),
        ApiKey::OffsetDelete => {
            ResponseKind::OffsetDelete(OffsetDeleteResponse::default().with_error_code(code))
        }
        ApiKey::DescribeClientQuotas => ResponseKind::DescribeClientQuotas(
            DescribeClientQuotasResponse::default().with_error_code(code),
        ),
        ApiKey::AlterClientQuotas => {
            ResponseKind::AlterClientQuotas(AlterClientQuotasResponse::default())
        }
        ApiKey::DescribeUserScramCredentials => ResponseKind::DescribeUserScramCredentials(
            DescribeUserScramCredentialsResponse::default().with_error_code(code),
        ),
        ApiKey::AlterUserScramCredentials => {
            ResponseKind::AlterUserScramCredentials(AlterUserScramCredentialsResponse::default())
        }
        ApiKey::Vote => ResponseKind::Vote(VoteResponse::default().with_error_code(code)),
        ApiKey::BeginQuorumEpoch => ResponseKind::BeginQuorumEpoch(
            BeginQuorumEpochResponse::default().with_error_code(code),
        ),
        ApiKey::EndQuorumEpoch => {
            ResponseKind::EndQuorumEpoch(EndQuorumEpochResponse::default().with_error_code(code))
        }
        ApiKey::DescribeQuorum => {
            ResponseKind::DescribeQuorum(DescribeQuorumResponse::default().with_error_code(code))
        }
        ApiKey::AlterPartition => {
            ResponseKind::AlterPartition(AlterPartitionResponse::default().with_error_code(code))
        }
        ApiKey::UpdateFeatures => {
            ResponseKind::UpdateFeatures(UpdateFeaturesResponse::default().with_error_code(code))
        }
        ApiKey::Envelope => {
            ResponseKind::Envelope(EnvelopeResponse::default().with_error_code(code))
        }
        ApiKey::FetchSnapshot => {
            ResponseKind::FetchSnapshot(FetchSnapshotResponse::default().with_error_code(code))
        }
        ApiKey::DescribeCluster => {
            ResponseKind::DescribeCluster(DescribeClusterResponse::default().with_error_code(code))
        }
        ApiKey::DescribeProducers => {
            ResponseKind::DescribeProducers(DescribeProducersResponse::default())
        }
        ApiKey::BrokerRegistration => ResponseKind::BrokerRegistration(
            BrokerRegistrationResponse::default().with_error_code(code),
        ),
        ApiKey::BrokerHeartbeat => {
            ResponseKind::BrokerHeartbeat(BrokerHeartbeatResponse::default().with_error_code(code))
        }
        ApiKey::UnregisterBroker => ResponseKind::UnregisterBroker(
            UnregisterBrokerResponse::default().with_error_code(code),
        ),
        ApiKey::DescribeTransactions => {
            ResponseKind::DescribeTransactions(DescribeTransactionsResponse::default())
        }
        ApiKey::ListTransactions => ResponseKind::ListTransactions(
            ListTransactionsResponse::default().with_error_code(code),
        ),
        ApiKey::AllocateProducerIds => ResponseKind::AllocateProducerIds(
            AllocateProducerIdsResponse::default().with_error_code(code),
        ),
        ApiKey::ConsumerGroupHeartbeat => ResponseKind::ConsumerGroupHeartbeat(
            ConsumerGroupHeartbeatResponse::default().with_error_code(code),
        ),
        ApiKey::ConsumerGroupDescribe => {
            ResponseKind::ConsumerGroupDescribe(ConsumerGroupDescribeResponse::default())
        }
        ApiKey::ControllerRegistration => ResponseKind::ControllerRegistration(
            ControllerRegistrationResponse::default().with_error_code(code),
        ),
        ApiKey::GetTelemetrySubscriptions => ResponseKind::GetTelemetrySubscriptions(
            GetTelemetrySubscriptionsResponse::default().with_error_code(code),
        ),
        ApiKey::PushTelemetry => {
            ResponseKind::PushTelemetry(PushTelemetryResponse::default().with_error_code(code))
        }
        ApiKey::AssignReplicasToDirs => ResponseKind::AssignReplicasToDirs(
            AssignReplicasToDirsResponse::default().with_error_code(code),
        ),
        ApiKey::ListClientMetricsResources => ResponseKind::ListClientMetricsResources(
            ListClientMetricsResourcesResponse::default().with_error_code(code),
        ),
        ApiKey::DescribeTopicPartitions => {
            ResponseKind::DescribeTopicPartitions(DescribeTopicPartitionsResponse::default())
        }
        ApiKey::AddRaftVoter => {
            ResponseKind::AddRaftVoter(AddRaftVoterResponse::default().with_error_code(code))
        }
        ApiKey::RemoveRaftVoter => {
            ResponseKind::RemoveRaftVoter(RemoveRaftVoterResponse::default().with_error_code(code))
        }
        ApiKey::UpdateRaftVoter => {
            ResponseKind::UpdateRaftVoter(UpdateRaftVoterResponse::default().with_error_code(code))
        }
    }
}

/// `StrBytes` from a `&str` (copied).
pub fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_and_unavailable_partitions_get_codes_kafka_clients_retry() {
        // KAFKA_STORAGE_ERROR and NOT_LEADER_OR_FOLLOWER are retriable in
        // the Kafka protocol (clients refresh metadata and send again);
        // UNKNOWN_SERVER_ERROR is not.
        assert_eq!(
            wire_to_kafka(ErrorCode::PartitionFailed),
            KAFKA_STORAGE_ERROR
        );
        assert_eq!(
            wire_to_kafka(ErrorCode::PartitionUnavailable),
            NOT_LEADER_OR_FOLLOWER
        );
        assert_eq!(
            wire_to_kafka(ErrorCode::RecordsTruncated),
            NOT_LEADER_OR_FOLLOWER
        );
        assert_eq!(wire_to_kafka(ErrorCode::Internal), UNKNOWN_SERVER_ERROR);
    }

    fn frame(key: i16, version: i16, cid: i32, rest: &[u8]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_i16(key);
        b.put_i16(version);
        b.put_i32(cid);
        b.extend_from_slice(rest);
        b.freeze()
    }

    #[test]
    fn framing_waits_for_whole_requests_and_bounds_their_size() {
        let mut buf = BytesMut::new();
        assert_eq!(peek_request(&buf, 100), Ok(None));
        buf.put_i32(10);
        buf.extend_from_slice(&[0u8; 9]);
        assert_eq!(peek_request(&buf, 100), Ok(None));
        buf.put_u8(0);
        assert_eq!(peek_request(&buf, 100), Ok(Some(14)));
        assert!(peek_request(&[0, 0, 1, 0], 100).is_err());
        assert!(peek_request(&[0xff, 0xff, 0xff, 0xff], 100).is_err());
        assert!(peek_request(&[0, 0, 0, 3], 100).is_err());
    }

    #[test]
    fn unsupported_api_versions_gets_a_v0_answer_with_the_table() {
        let Incoming::Answer(out) = decode_request(frame(18, 99, 7, &[])) else {
            panic!("expected an answer");
        };
        let mut body = out.freeze().slice(4..);
        let h = ResponseHeader::decode(&mut body, 0).expect("header");
        assert_eq!(h.correlation_id, 7);
        let r = ApiVersionsResponse::decode(&mut body, 0).expect("body");
        assert_eq!(r.error_code, UNSUPPORTED_VERSION);
        assert!(r
            .api_keys
            .iter()
            .any(|k| k.api_key == 0 && k.min_version == 3));
    }

    #[test]
    fn unknown_apis_and_versions_get_an_error_answer_not_a_hang_up() {
        // OffsetForLeaderEpoch is known to the crate but not served.
        let mut rest = BytesMut::new();
        rest.put_i16(-1); // null client id
        rest.put_i16(5);
        rest.extend_from_slice(b"PLAIN");
        assert!(matches!(
            decode_request(frame(23, 1, 1, &rest)),
            Incoming::Answer(_)
        ));
        assert!(matches!(
            decode_request(frame(999, 0, 1, &[])),
            Incoming::Answer(_)
        ));
        // Produce v0 (old message format) is refused with an answer.
        assert!(matches!(
            decode_request(frame(0, 0, 1, &rest)),
            Incoming::Answer(_)
        ));
        assert!(matches!(
            decode_request(Bytes::from_static(&[0, 1])),
            Incoming::Close
        ));
    }

    #[test]
    fn a_flexible_request_decodes() {
        let req = ApiVersionsRequest::default()
            .with_client_software_name(sb("t"))
            .with_client_software_version(sb("1"));
        let mut b = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(18)
            .with_request_api_version(3)
            .with_correlation_id(5)
            .encode(&mut b, 2)
            .expect("header");
        req.encode(&mut b, 3).expect("body");
        let Incoming::Request(d) = decode_request(b.freeze()) else {
            panic!("expected a request");
        };
        assert_eq!(d.key, ApiKey::ApiVersions);
        assert_eq!(d.header.correlation_id, 5);
    }
}
