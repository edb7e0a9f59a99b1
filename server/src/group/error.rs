//! The coordinator's errors: one `#[non_exhaustive]` enum whose variants are
//! Kafka's group error codes, each carrying the group (and member) involved.
//! [`GroupError::kafka_code`] gives the Kafka protocol number,
//! [`GroupError::wire_code`] the native [`ErrorCode`].

use strom_flatbuffers::protocol::ErrorCode;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
#[allow(dead_code)] // NotCoordinator, InvalidRequest: for the Kafka listener
pub enum GroupError {
    /// The member id is not (or no longer) in the group: it was never
    /// assigned, expired, left, or the group was re-created.
    #[error("group {group:?}: unknown member id {member_id:?}")]
    UnknownMemberId { group: String, member_id: String },
    /// The member's generation is not the group's current one (fenced).
    #[error("group {group:?}: generation {generation} is not the current generation {current}")]
    IllegalGeneration {
        group: String,
        generation: i32,
        current: i32,
    },
    /// The group is rebalancing; rejoin.
    #[error("group {group:?} is rebalancing; rejoin the group")]
    RebalanceInProgress { group: String },
    #[error(
        "group {group:?}: session timeout {session_timeout_ms} ms is outside [{min_ms}, {max_ms}]"
    )]
    InvalidSessionTimeout {
        group: String,
        session_timeout_ms: u32,
        min_ms: u32,
        max_ms: u32,
    },
    /// The member's protocol type or protocols do not match the group's.
    #[error("group {group:?}: {reason}")]
    InconsistentGroupProtocol { group: String, reason: String },
    /// An operation that needs an empty group (reset offsets, delete).
    #[error("group {group:?} has active members")]
    NonEmptyGroup { group: String },
    #[error("group {group:?} is not available (it is being removed or loaded); retry")]
    CoordinatorNotAvailable { group: String },
    /// The group is coordinated by another node (reserved for clusters).
    #[error("this node does not coordinate group {group:?}")]
    NotCoordinator { group: String },
    #[error("group {group:?} does not exist")]
    GroupIdNotFound { group: String },
    /// Kafka JoinGroup v4+: the first join only obtains a member id, which
    /// the member must send in a second join.
    #[error("group {group:?}: rejoin with the assigned member id {member_id:?}")]
    MemberIdRequired { group: String, member_id: String },
    #[error("group {group:?} is full ({max} members)")]
    GroupMaxSizeReached { group: String, max: usize },
    #[error("invalid group id {group:?}: {reason}")]
    InvalidGroupId { group: String, reason: String },
    /// A request field out of range (not a Kafka group error as such).
    #[error("group {group:?}: {reason}")]
    InvalidRequest { group: String, reason: String },
    #[error("group {group:?}: topic {topic:?} does not exist")]
    UnknownTopic { group: String, topic: String },
    #[error("group {group:?}: topic {topic:?} has no partition {partition}")]
    UnknownPartition {
        group: String,
        topic: String,
        partition: u32,
    },
    #[error("group {group:?}: offset metadata of {len} bytes, the limit is {max}")]
    OffsetMetadataTooLarge {
        group: String,
        len: usize,
        max: usize,
    },
    /// The offsets log failed; the commit is not durable.
    #[error("group {group:?}: offsets log: {reason}")]
    Storage { group: String, reason: String },
}

impl GroupError {
    /// Kafka's protocol error code (`org.apache.kafka.common.protocol.Errors`).
    #[allow(dead_code)] // API for the Kafka listener and tests
    pub fn kafka_code(&self) -> i16 {
        match self {
            GroupError::UnknownMemberId { .. } => 25,
            GroupError::IllegalGeneration { .. } => 22,
            GroupError::RebalanceInProgress { .. } => 27,
            GroupError::InvalidSessionTimeout { .. } => 26,
            GroupError::InconsistentGroupProtocol { .. } => 23,
            GroupError::NonEmptyGroup { .. } => 68,
            GroupError::CoordinatorNotAvailable { .. } => 15,
            GroupError::NotCoordinator { .. } => 16,
            GroupError::GroupIdNotFound { .. } => 69,
            GroupError::MemberIdRequired { .. } => 79,
            GroupError::GroupMaxSizeReached { .. } => 81,
            GroupError::InvalidGroupId { .. } => 24,
            GroupError::InvalidRequest { .. } => 42,
            GroupError::UnknownTopic { .. } | GroupError::UnknownPartition { .. } => 3,
            GroupError::OffsetMetadataTooLarge { .. } => 12,
            GroupError::Storage { .. } => 15,
        }
    }

    /// The native protocol's stable error code.
    pub fn wire_code(&self) -> ErrorCode {
        match self {
            GroupError::UnknownMemberId { .. } => ErrorCode::UnknownMemberId,
            GroupError::IllegalGeneration { .. } => ErrorCode::IllegalGeneration,
            GroupError::RebalanceInProgress { .. } => ErrorCode::RebalanceInProgress,
            GroupError::InvalidSessionTimeout { .. } => ErrorCode::InvalidSessionTimeout,
            GroupError::InconsistentGroupProtocol { .. } => ErrorCode::InconsistentGroupProtocol,
            GroupError::NonEmptyGroup { .. } => ErrorCode::NonEmptyGroup,
            GroupError::CoordinatorNotAvailable { .. } => ErrorCode::CoordinatorNotAvailable,
            GroupError::NotCoordinator { .. } => ErrorCode::NotCoordinator,
            GroupError::GroupIdNotFound { .. } => ErrorCode::GroupIdNotFound,
            GroupError::MemberIdRequired { .. } => ErrorCode::MemberIdRequired,
            GroupError::GroupMaxSizeReached { .. } => ErrorCode::GroupMaxSizeReached,
            GroupError::InvalidGroupId { .. } => ErrorCode::InvalidGroup,
            GroupError::InvalidRequest { .. } => ErrorCode::InvalidRequest,
            GroupError::UnknownTopic { .. } => ErrorCode::UnknownTopic,
            GroupError::UnknownPartition { .. } => ErrorCode::UnknownPartition,
            GroupError::OffsetMetadataTooLarge { .. } => ErrorCode::InvalidRequest,
            GroupError::Storage { .. } => ErrorCode::Internal,
        }
    }

    /// The error as it goes on the native wire.
    pub fn to_wire(&self) -> crate::error::WireError {
        crate::error::WireError::new(self.wire_code(), self.to_string())
    }
}
