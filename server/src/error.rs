//! Server errors: start-up failures (with the path or address involved) and
//! the mapping of engine and metadata failures to stable wire error codes.

use crate::engine::EngineError;
use std::path::PathBuf;
use strom_flatbuffers::protocol::ErrorCode;
use strom_flatbuffers::FrameError;

/// Failures that stop the server from starting or a shard from running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error("config file {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("invalid argument: {0}")]
    Argument(String),
    #[error("metadata {path}: {reason}")]
    Metadata { path: PathBuf, reason: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bind {addr}: {reason}")]
    Bind { addr: String, reason: String },
    #[error("executor: {0}")]
    Executor(String),
}

impl ServerError {
    /// The file system is full (ENOSPC or EDQUOT).
    pub fn is_no_space(&self) -> bool {
        matches!(
            self,
            ServerError::Io { source, .. }
                if matches!(source.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        )
    }
}

/// An error as it goes on the wire: a stable code and a human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WireError {
            code,
            message: message.into(),
        }
    }

    pub fn unknown_topic(topic: &str) -> Self {
        WireError::new(
            ErrorCode::UnknownTopic,
            format!("topic {topic:?} does not exist"),
        )
    }

    pub fn unknown_partition(topic: &str, partition: u32) -> Self {
        WireError::new(
            ErrorCode::UnknownPartition,
            format!("topic {topic:?} has no partition {partition}"),
        )
    }
}

/// Maps an engine error for (topic, partition) to its wire form.
pub fn engine_to_wire(topic: &str, partition: u32, e: &EngineError) -> WireError {
    let code = match e {
        EngineError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
        EngineError::InvalidFrame(FrameError::TooLarge { .. }) => ErrorCode::MessageTooLarge,
        EngineError::InvalidFrame(_) => ErrorCode::CorruptBatch,
        EngineError::FrameTooLarge { .. } => ErrorCode::MessageTooLarge,
        EngineError::Config(_) => ErrorCode::InvalidConfig,
        e if e.is_no_space() => ErrorCode::NotEnoughSpace,
        // The log refuses writes until it is reopened, which the owning
        // shard does by itself (`Shard::engine_error`): a retry can help.
        EngineError::Failed { .. } => ErrorCode::PartitionFailed,
        // Closed under the request: reopened, deleted or shutting down.
        EngineError::Closed => ErrorCode::PartitionUnavailable,
        // The records are not stored; sending them again stores them.
        EngineError::Truncated { .. } => ErrorCode::RecordsTruncated,
        _ => ErrorCode::Internal,
    };
    WireError::new(code, format!("{topic}/{partition}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_closed_and_truncated_logs_get_their_own_retriable_codes() {
        let failed = EngineError::Failed {
            reason: "fdatasync failed: EIO".into(),
        };
        let w = engine_to_wire("t", 3, &failed);
        assert_eq!(w.code, ErrorCode::PartitionFailed);
        assert!(w.message.starts_with("t/3: "), "{}", w.message);
        assert!(w.message.contains("fdatasync failed: EIO"), "{}", w.message);
        assert_eq!(
            engine_to_wire("t", 3, &EngineError::Closed).code,
            ErrorCode::PartitionUnavailable
        );
        let truncated = EngineError::Truncated {
            offset: 10,
            high_watermark: 4,
        };
        assert_eq!(
            engine_to_wire("t", 3, &truncated).code,
            ErrorCode::RecordsTruncated
        );
        // The codes are stable numbers: appended, never renumbered.
        assert_eq!(ErrorCode::PartitionFailed.0, 30);
        assert_eq!(ErrorCode::PartitionUnavailable.0, 31);
        assert_eq!(ErrorCode::RecordsTruncated.0, 32);
    }
}
