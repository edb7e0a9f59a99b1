//! Topic metadata: names, ids, partition counts and per-topic config, the
//! placement function, and the durable metadata file.
//!
//! Invariants:
//! - Shard 0 is the only writer. Every change is written atomically (tmp
//!   file, fsync, rename, directory fsync) before any shard applies it, and
//!   every shard applies the same snapshot, broadcast by shard 0.
//! - The file is JSON: `{"format_version":1,"crc32c":N,"body":{...}}` where
//!   `crc32c` covers the compact serialization of `body` (serde_json of
//!   structs and BTreeMaps is deterministic). A crc or version mismatch
//!   refuses to start rather than guessing.
//! - Placement is `(topic_id + partition) % shard_count`: balanced across
//!   shards, a pure function of the metadata, so the same after a restart
//!   with the same `--cores`. The shard count in force is recorded.

use crate::engine::{FlushPolicy, LogConfig};
use crate::error::{ServerError, WireError};
use crate::limits::{FRAME_BYTES_LIMIT, PARTITIONS_PER_TOPIC_MAX};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use strom_flatbuffers::protocol::ErrorCode;

/// The only metadata file format this build reads and writes.
pub const METADATA_FORMAT_VERSION: u32 = 1;
/// Longest topic name (Kafka's rule).
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

/// Config keys a topic accepts.
pub const TOPIC_CONFIG_KEYS: &[&str] = &[
    "retention.ms",
    "retention.bytes",
    "segment.bytes",
    "segment.ms",
    "flush.policy",
    "flush.ms",
    "flush.bytes",
    "max.message.bytes",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    pub name: String,
    /// Unique for the life of the data directory; never reused, so a topic
    /// deleted and re-created under the same name is a different topic.
    pub id: u64,
    pub partitions: u32,
    pub configs: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Metadata {
    pub shard_count: u32,
    pub next_topic_id: u64,
    pub topics: BTreeMap<String, TopicMeta>,
}

#[derive(Serialize, Deserialize)]
struct MetadataFile {
    format_version: u32,
    crc32c: u32,
    body: Metadata,
}

/// The shard that owns `partition` of the topic with `topic_id`.
pub fn owner_shard(topic_id: u64, partition: u32, shards: usize) -> usize {
    assert!(shards > 0, "at least one shard");
    (topic_id.wrapping_add(u64::from(partition)) % shards as u64) as usize
}

/// Kafka's topic name rule: 1..=249 of `[a-zA-Z0-9._-]`, not "." or "..".
pub fn validate_topic_name(name: &str) -> Result<(), WireError> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if name.is_empty()
        || name.len() > TOPIC_NAME_BYTES_MAX
        || !ok_chars
        || name == "."
        || name == ".."
    {
        return Err(WireError::new(
            ErrorCode::InvalidTopicName,
            format!(
                "invalid topic name {name:?}: use 1 to {TOPIC_NAME_BYTES_MAX} characters of [a-zA-Z0-9._-], not '.' or '..'"
            ),
        ));
    }
    Ok(())
}

pub fn validate_partition_count(n: u32) -> Result<(), WireError> {
    if n == 0 || n > PARTITIONS_PER_TOPIC_MAX {
        return Err(WireError::new(
            ErrorCode::InvalidPartitions,
            format!("partition count {n} must be between 1 and {PARTITIONS_PER_TOPIC_MAX}"),
        ));
    }
    Ok(())
}

fn invalid(key: &str, value: &str, why: &str) -> WireError {
    WireError::new(
        ErrorCode::InvalidConfig,
        format!("config {key}={value:?}: {why}"),
    )
}

fn parse_u64(key: &str, value: &str) -> Result<u64, WireError> {
    value
        .parse::<u64>()
        .map_err(|_| invalid(key, value, "expected a non-negative integer"))
}

/// `-1` (Kafka's "unlimited") or a non-negative integer.
fn parse_limit(key: &str, value: &str) -> Result<Option<u64>, WireError> {
    if value == "-1" {
        return Ok(None);
    }
    parse_u64(key, value).map(Some)
}

/// Builds the engine config from a topic's config strings, refusing unknown
/// keys and out-of-range values.
pub fn log_config(configs: &BTreeMap<String, String>) -> Result<LogConfig, WireError> {
    let mut c = crate::config::engine_defaults().log_config();
    let mut flush: Option<FlushPolicy> = None;
    let mut set_flush = |key: &str, value: &str, p: FlushPolicy| {
        if flush.is_some() {
            return Err(invalid(
                key,
                value,
                "only one of flush.policy, flush.ms, flush.bytes may be set",
            ));
        }
        flush = Some(p);
        Ok(())
    };
    for (key, value) in configs {
        let value = value.as_str();
        match key.as_str() {
            "retention.ms" => c.retention_ms = parse_limit(key, value)?,
            "retention.bytes" => c.retention_bytes = parse_limit(key, value)?,
            "segment.bytes" => {
                let n = parse_u64(key, value)?;
                if n < 64 << 10 {
                    return Err(invalid(key, value, "must be at least 65536"));
                }
                c.segment_bytes = n;
            }
            "segment.ms" => {
                let n = parse_u64(key, value)?;
                if n == 0 {
                    return Err(invalid(key, value, "must be positive"));
                }
                c.segment_ms = Some(n);
            }
            "flush.policy" => {
                let p = match value {
                    "every-append" => FlushPolicy::EveryAppend,
                    "never" => FlushPolicy::Never,
                    _ => return Err(invalid(key, value, "expected every-append or never")),
                };
                set_flush(key, value, p)?;
            }
            "flush.ms" => {
                let n = parse_u64(key, value)?;
                let p = if n == 0 {
                    FlushPolicy::EveryAppend
                } else {
                    FlushPolicy::IntervalMs(n)
                };
                set_flush(key, value, p)?;
            }
            "flush.bytes" => {
                let n = parse_u64(key, value)?;
                if n == 0 {
                    return Err(invalid(key, value, "must be positive"));
                }
                set_flush(key, value, FlushPolicy::Bytes(n))?;
            }
            "max.message.bytes" => {
                let n = parse_u64(key, value)?;
                if n < strom_flatbuffers::FRAME_HEADER_BYTES as u64 || n > FRAME_BYTES_LIMIT as u64
                {
                    return Err(invalid(
                        key,
                        value,
                        "must be between 72 and 67108864 (one frame)",
                    ));
                }
                c.frame_bytes_max = n as usize;
            }
            _ => {
                return Err(invalid(
                    key,
                    value,
                    &format!("unknown key; known keys: {}", TOPIC_CONFIG_KEYS.join(", ")),
                ))
            }
        }
    }
    if let Some(p) = flush {
        c.flush = p;
    }
    if c.frame_bytes_max as u64 > c.segment_bytes && !configs.contains_key("max.message.bytes") {
        c.frame_bytes_max = c.segment_bytes as usize;
    }
    c.validate().map_err(|e| {
        WireError::new(
            ErrorCode::InvalidConfig,
            format!("invalid topic config: {e}"),
        )
    })?;
    Ok(c)
}

pub fn metadata_path(data_dir: &Path) -> PathBuf {
    data_dir.join("meta").join("topics.json")
}

pub fn partition_dir(data_dir: &Path, topic: &str, partition: u32) -> PathBuf {
    data_dir
        .join("topics")
        .join(topic)
        .join(partition.to_string())
}

fn meta_err(path: &Path, reason: impl Into<String>) -> ServerError {
    ServerError::Metadata {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads the metadata file; a missing file is an empty metadata.
pub fn load(data_dir: &Path) -> Result<Metadata, ServerError> {
    let path = metadata_path(data_dir);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Metadata::default()),
        Err(e) => {
            return Err(ServerError::Io {
                op: "read",
                path,
                source: e,
            })
        }
    };
    let file: MetadataFile =
        serde_json::from_slice(&text).map_err(|e| meta_err(&path, e.to_string()))?;
    if file.format_version != METADATA_FORMAT_VERSION {
        return Err(meta_err(
            &path,
            format!(
                "format_version {} is not supported (this build reads {METADATA_FORMAT_VERSION})",
                file.format_version
            ),
        ));
    }
    let crc = body_crc(&file.body);
    if crc != file.crc32c {
        return Err(meta_err(
            &path,
            format!(
                "checksum mismatch: stored {:#010x}, computed {crc:#010x}",
                file.crc32c
            ),
        ));
    }
    Ok(file.body)
}

fn body_crc(body: &Metadata) -> u32 {
    crc32c::crc32c(&serde_json::to_vec(body).unwrap_or_default())
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ServerError + 'a {
    move |source| ServerError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes the metadata file atomically: tmp + fsync + rename + dir fsync.
/// Blocking: call from start-up or `spawn_blocking`.
pub fn store(data_dir: &Path, body: &Metadata) -> Result<(), ServerError> {
    let path = metadata_path(data_dir);
    let dir = path.parent().expect("meta dir").to_path_buf();
    std::fs::create_dir_all(&dir).map_err(io_err("create dir", &dir))?;
    let file = MetadataFile {
        format_version: METADATA_FORMAT_VERSION,
        crc32c: body_crc(body),
        body: body.clone(),
    };
    let bytes = serde_json::to_vec_pretty(&file).map_err(|e| meta_err(&path, e.to_string()))?;
    write_atomically(&path, &bytes)
}

/// tmp + fsync + rename + directory fsync.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ServerError> {
    let dir = path.parent().expect("file in a dir");
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp).map_err(io_err("create", &tmp))?;
        f.write_all(bytes).map_err(io_err("write", &tmp))?;
        f.sync_all().map_err(io_err("fsync", &tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io_err("rename", path))?;
    let d = std::fs::File::open(dir).map_err(io_err("open dir", dir))?;
    d.sync_all().map_err(io_err("fsync dir", dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kafka_rules() {
        assert!(validate_topic_name("a.b_c-D9").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name(".").is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name("a/b").is_err());
        assert!(validate_topic_name(&"x".repeat(249)).is_ok());
        assert!(validate_topic_name(&"x".repeat(250)).is_err());
    }

    #[test]
    fn configs_parse_and_unknown_keys_are_refused() {
        let mut m = BTreeMap::new();
        m.insert("retention.ms".to_owned(), "-1".to_owned());
        m.insert("flush.ms".to_owned(), "50".to_owned());
        m.insert("max.message.bytes".to_owned(), "1000".to_owned());
        let c = log_config(&m).expect("valid");
        assert_eq!(c.retention_ms, None);
        assert_eq!(c.flush, FlushPolicy::IntervalMs(50));
        assert_eq!(c.frame_bytes_max, 1000);
        m.insert("flush.bytes".to_owned(), "5".to_owned());
        assert_eq!(log_config(&m).unwrap_err().code, ErrorCode::InvalidConfig);
        let mut m = BTreeMap::new();
        m.insert("cleanup.policy".to_owned(), "compact".to_owned());
        assert_eq!(log_config(&m).unwrap_err().code, ErrorCode::InvalidConfig);
    }

    #[test]
    fn placement_is_balanced_and_stable() {
        let mut counts = [0usize; 3];
        for p in 0..30 {
            counts[owner_shard(7, p, 3)] += 1;
        }
        assert_eq!(counts, [10, 10, 10]);
        assert_eq!(owner_shard(7, 4, 3), owner_shard(7, 4, 3));
    }

    #[test]
    fn metadata_round_trips_and_detects_corruption() {
        let dir = std::env::temp_dir().join(format!("strom-meta-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(load(&dir).expect("empty"), Metadata::default());
        let mut m = Metadata {
            shard_count: 2,
            next_topic_id: 1,
            ..Metadata::default()
        };
        m.topics.insert(
            "t".into(),
            TopicMeta {
                name: "t".into(),
                id: 0,
                partitions: 3,
                configs: BTreeMap::new(),
            },
        );
        store(&dir, &m).expect("store");
        assert_eq!(load(&dir).expect("load"), m);
        let path = metadata_path(&dir);
        let text = std::fs::read_to_string(&path).expect("read");
        std::fs::write(
            &path,
            text.replace("\"partitions\": 3", "\"partitions\": 4"),
        )
        .expect("write");
        assert!(load(&dir).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
