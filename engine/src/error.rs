//! The engine's error enum. Variants carry the partition directory and the
//! offsets or positions involved. Expected states (no data yet, incomplete
//! tail) are values elsewhere, not errors.

use std::path::PathBuf;

use crate::config::ConfigError;
use crate::io_error::IoError;
use strom_flatbuffers::FrameError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error("offset {offset} is out of range [{log_start_offset}, {high_watermark}]")]
    OffsetOutOfRange {
        offset: u64,
        log_start_offset: u64,
        high_watermark: u64,
    },
    #[error("invalid frame: {0}")]
    InvalidFrame(#[from] FrameError),
    #[error("frame of {len_bytes} bytes exceeds this partition's limit of {max_bytes}")]
    FrameTooLarge { len_bytes: usize, max_bytes: usize },
    #[error("no space left on device: {0}")]
    NoSpace(IoError),
    #[error("I/O error: {0}")]
    Io(IoError),
    #[error("corrupt data in {path} at byte {position}: {reason}")]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: String,
    },
    #[error("{path}: unsupported on-disk format version {found} (this build reads {supported})")]
    UnsupportedFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("partition log is closed")]
    Closed,
    #[error("partition log failed earlier and is read-only until reopened: {reason}")]
    Failed { reason: String },
    #[error("offsets below {offset} were truncated (high watermark {high_watermark}) before they became durable")]
    Truncated { offset: u64, high_watermark: u64 },
    #[error(
        "a producer-state snapshot at offset {offset} is past the durable offset {durable_offset}"
    )]
    NotDurable { offset: u64, durable_offset: u64 },
}

impl From<IoError> for EngineError {
    fn from(e: IoError) -> Self {
        if e.is_no_space() {
            EngineError::NoSpace(e)
        } else {
            EngineError::Io(e)
        }
    }
}

impl EngineError {
    pub fn is_no_space(&self) -> bool {
        matches!(self, EngineError::NoSpace(_))
    }
}
