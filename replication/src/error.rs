//! The replication core's errors, one enum per operation. Variants carry the
//! replica id, indices, terms and limits involved, and say whether a retry
//! can help. Expected states (no leader yet, nothing ready) are values, not
//! errors; broken invariants are assertions.

use raft::eraftpb::MessageType;

/// A replica configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("replica id 0 is reserved (raft-rs uses it for 'none')")]
    ZeroId,
    #[error("a group needs at least one voter")]
    NoVoters,
    #[error("{count} voters exceed the limit of {max}")]
    TooManyVoters { count: usize, max: usize },
    #[error("voter {id} is listed twice")]
    DuplicateVoter { id: u64 },
    #[error("replica {id} is not one of the voters {voters:?}")]
    NotAVoter { id: u64, voters: Vec<u64> },
    #[error("election_ticks {election_ticks} must exceed heartbeat_ticks {heartbeat_ticks} > 0")]
    Ticks {
        election_ticks: usize,
        heartbeat_ticks: usize,
    },
    #[error("{field} is {value}, outside [{min}, {max}]")]
    OutOfRange {
        field: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    #[error("the log store's voters {store:?} differ from the configuration's {config:?}")]
    StoreVoters { store: Vec<u64>, config: Vec<u64> },
}

/// Opening a replica over its log store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("replica {id}: raft refused the configuration or stored state: {source}")]
    Raft {
        id: u64,
        #[source]
        source: raft::Error,
    },
}

/// A proposal refused at once: nothing was appended, so it will never be
/// committed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProposeError {
    #[error("an empty proposal (empty entries are the leaders' no-ops)")]
    Empty,
    #[error("not the leader of term {term}; leader hint {leader_hint:?}")]
    NotLeader { leader_hint: Option<u64>, term: u64 },
    #[error("proposal of {len_bytes} bytes exceeds {max_bytes}")]
    TooLarge { len_bytes: usize, max_bytes: usize },
    #[error("{max} proposals already wait for their commit")]
    TooManyPending { max: usize },
    #[error("raft dropped the proposal in term {term} (leadership transfer, or uncommitted_bytes_max reached)")]
    Dropped { term: u64 },
}

impl ProposeError {
    /// Whether the same proposal may succeed later or at another replica.
    pub fn is_retriable(&self) -> bool {
        !matches!(self, ProposeError::TooLarge { .. } | ProposeError::Empty)
    }
}

/// The final answer to an accepted proposal that was not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProposalError {
    /// Leadership was lost before the entry was known to be committed. The
    /// outcome is unknown: a later leader may still commit it (Kafka answers
    /// NOT_LEADER_OR_FOLLOWER and an idempotent producer's retry is
    /// deduplicated).
    #[error("leadership lost in term {term} before entry {index} was known committed (outcome unknown); leader hint {leader_hint:?}")]
    NotLeader {
        index: u64,
        term: u64,
        leader_hint: Option<u64>,
    },
    /// Another entry was committed at the proposal's index: it will never
    /// be committed.
    #[error("entry {index} of term {term} was superseded by one of term {committed_term}")]
    Superseded {
        index: u64,
        term: u64,
        committed_term: u64,
    },
}

impl ProposalError {
    /// True when the proposal is known never to be committed.
    pub fn is_definite(&self) -> bool {
        matches!(self, ProposalError::Superseded { .. })
    }
}

/// An incoming message that the replica refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StepError {
    #[error("message for replica {to} delivered to replica {id}")]
    WrongRecipient { to: u64, id: u64 },
    #[error("replica {id}: message from {from}, which is not a voter")]
    UnknownPeer { id: u64, from: u64 },
    #[error("replica {id}: message type {msg_type:?} from {from} is not accepted from peers")]
    UnexpectedType {
        id: u64,
        from: u64,
        msg_type: MessageType,
    },
    #[error("replica {id}: raft refused {msg_type:?} from {from}: {source}")]
    Raft {
        id: u64,
        from: u64,
        msg_type: MessageType,
        #[source]
        source: raft::Error,
    },
}

/// A storage completion that does not match what was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PersistError {
    #[error("sync reported up to write {reported} but only {written} writes were issued")]
    AheadOfWrites { reported: u64, written: u64 },
}

/// A compaction (retention) request that cannot be honoured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompactError {
    #[error("cannot compact through {index}: only {applied} is applied")]
    AboveApplied { index: u64, applied: u64 },
    #[error("cannot compact through {index}: its term is unknown: {source}")]
    Store {
        index: u64,
        #[source]
        source: raft::Error,
    },
}
