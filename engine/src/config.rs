//! Per-partition configuration. Validation is I/O-free and clamps nothing
//! silently: an out-of-range value is an error naming the field.

use crate::limits::*;

/// When the log calls fdatasync on its own (a caller asking for a durable
/// append always gets one, whatever the policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Every append is made durable before it is acknowledged.
    EveryAppend,
    /// At most this many milliseconds after an append (Kafka's flush.ms).
    IntervalMs(u64),
    /// Once this many bytes are unflushed (Kafka's flush.messages, in bytes).
    Bytes(u64),
    /// Only when a caller asks, on roll, and at shutdown.
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub segment_bytes: u64,
    /// Roll a non-empty active segment this long after its first append.
    pub segment_ms: Option<u64>,
    pub retention_bytes: Option<u64>,
    pub retention_ms: Option<u64>,
    pub flush: FlushPolicy,
    pub frame_bytes_max: usize,
    pub cache_bytes_max: usize,
    pub index_interval_bytes: u32,
    pub preallocate_bytes: u64,
    pub write_buffer_bytes: usize,
    pub unwritten_bytes_max: usize,
    pub read_ahead_bytes: usize,
    pub checkpoint_interval_bytes: u64,
    /// Appends are refused with NoSpace once the file system's free space
    /// would drop below this, so that metadata, checkpoints and index files
    /// (and the deletions that free space) can still be written.
    pub disk_reserve_bytes: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            segment_ms: None,
            retention_bytes: None,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            flush: FlushPolicy::Never,
            frame_bytes_max: DEFAULT_FRAME_BYTES_MAX,
            cache_bytes_max: DEFAULT_CACHE_BYTES_MAX,
            index_interval_bytes: DEFAULT_INDEX_INTERVAL_BYTES,
            preallocate_bytes: DEFAULT_PREALLOCATE_BYTES,
            write_buffer_bytes: DEFAULT_WRITE_BUFFER_BYTES,
            unwritten_bytes_max: DEFAULT_UNWRITTEN_BYTES_MAX,
            read_ahead_bytes: DEFAULT_READ_AHEAD_BYTES,
            checkpoint_interval_bytes: DEFAULT_CHECKPOINT_INTERVAL_BYTES,
            disk_reserve_bytes: DEFAULT_DISK_RESERVE_BYTES,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid log config: {field} = {value}: {reason}")]
pub struct ConfigError {
    pub field: &'static str,
    pub value: String,
    pub reason: &'static str,
}

impl LogConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, value: String, reason| {
            Err(ConfigError {
                field,
                value,
                reason,
            })
        };
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            return err(
                "segment_bytes",
                self.segment_bytes.to_string(),
                "out of range",
            );
        }
        if self.frame_bytes_max < strom_flatbuffers::FRAME_HEADER_BYTES
            || self.frame_bytes_max > FRAME_BYTES_MAX
        {
            return err(
                "frame_bytes_max",
                self.frame_bytes_max.to_string(),
                "out of range",
            );
        }
        if self.frame_bytes_max as u64 > self.segment_bytes {
            return err(
                "frame_bytes_max",
                self.frame_bytes_max.to_string(),
                "larger than segment_bytes",
            );
        }
        if self.index_interval_bytes == 0 {
            return err("index_interval_bytes", "0".into(), "must be positive");
        }
        if self.write_buffer_bytes < WRITE_BUFFER_BYTES_MIN
            || !self
                .write_buffer_bytes
                .is_multiple_of(crate::storage::BLOCK_BYTES)
        {
            return err(
                "write_buffer_bytes",
                self.write_buffer_bytes.to_string(),
                "must be a multiple of 4096 and at least 64 KiB",
            );
        }
        if self.unwritten_bytes_max < self.write_buffer_bytes {
            return err(
                "unwritten_bytes_max",
                self.unwritten_bytes_max.to_string(),
                "smaller than write_buffer_bytes",
            );
        }
        if let FlushPolicy::IntervalMs(0) | FlushPolicy::Bytes(0) = self.flush {
            return err("flush", format!("{:?}", self.flush), "must be positive");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_bad_values_name_their_field() {
        LogConfig::default().validate().expect("default valid");
        let c = LogConfig {
            segment_bytes: 10,
            ..LogConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().field, "segment_bytes");
        let c = LogConfig {
            flush: FlushPolicy::IntervalMs(0),
            ..LogConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().field, "flush");
    }
}
