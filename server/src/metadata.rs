//! Topic metadata: names, ids, partition counts and per-topic config, the
//! placement of partitions and offsets partitions on shards, and the
//! durable metadata file.
//!
//! Invariants:
//! - Shard 0 is the only writer once shards run (start-up writes it before
//!   any shard starts). Every change is written atomically (tmp file,
//!   fsync, rename, directory fsync) before any shard applies it, and every
//!   shard applies the same snapshot, broadcast by shard 0.
//! - The file is JSON: `{"format_version":2,"crc32c":N,"body":{...}}` where
//!   `crc32c` covers the compact serialization of `body` (serde_json of
//!   structs and BTreeMaps is deterministic). A crc or version mismatch
//!   refuses to start rather than guessing. Format 1 (no placement epoch,
//!   offsets in one log per shard) is still read; only format 2 is written.
//! - Placement is an explicit part of the metadata: the shard count in
//!   force, a placement epoch incremented whenever the shard count (or the
//!   offsets layout) changes, and the number of offsets partitions, fixed
//!   when the directory is created. Topic partition `p` of topic `id` and
//!   offsets partition `p` (as if of topic id 0) are owned by shard
//!   `(id + p) % shard_count`: balanced, a pure function of the metadata.
//!   Nothing on disk depends on the shard count, so a start with another
//!   `--cores` moves whole partitions and copies nothing.
//! - A written file always has `shard_count >= 1`, `placement_epoch >= 1`
//!   and `offsets_partitions >= 1`.

use crate::engine::{FlushPolicy, LogConfig};
use crate::error::{ServerError, WireError};
use crate::limits::{FRAME_BYTES_LIMIT, PARTITIONS_PER_TOPIC_MAX};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use strom_flatbuffers::protocol::ErrorCode;

/// The metadata file format this build writes (and reads).
pub const METADATA_FORMAT_VERSION: u32 = 2;
/// The previous format, still read: no placement epoch, no offsets
/// partition count (offsets lived in one log per shard).
pub const METADATA_FORMAT_VERSION_1: u32 = 1;
/// Offsets partitions are placed as the partitions of a topic with this id
/// (topic ids start at 0 too; sharing the function is the point, sharing
/// the id only means topic 0's partition `p` and offsets partition `p`
/// live on the same shard).
pub const OFFSETS_PLACEMENT_TOPIC_ID: u64 = 0;
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
    "cleanup.policy",
    "delete.retention.ms",
    "min.cleanable.dirty.ratio",
    "min.compaction.lag.ms",
    "max.compaction.lag.ms",
];

/// A topic's `cleanup.policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CleanupPolicy {
    /// Retention deletes old segments (the default).
    Delete,
    /// The cleaner keeps the newest record of every key; retention off.
    Compact,
    /// Both.
    CompactDelete,
}

/// The cleanup policy of a topic's configs (validated).
pub fn cleanup_policy(configs: &BTreeMap<String, String>) -> Result<CleanupPolicy, WireError> {
    let Some(v) = configs.get("cleanup.policy") else {
        return Ok(CleanupPolicy::Delete);
    };
    let mut parts: Vec<&str> = v.split(',').map(str::trim).collect();
    parts.sort_unstable();
    parts.dedup();
    match parts.as_slice() {
        ["delete"] => Ok(CleanupPolicy::Delete),
        ["compact"] => Ok(CleanupPolicy::Compact),
        ["compact", "delete"] => Ok(CleanupPolicy::CompactDelete),
        _ => Err(invalid(
            "cleanup.policy",
            v,
            "expected delete, compact, or compact,delete",
        )),
    }
}

/// The cleaner's settings of a compacted topic, `None` for a topic that
/// is not compacted. Kafka's defaults for what is not set.
pub fn compaction_config(
    configs: &BTreeMap<String, String>,
) -> Result<Option<strom_engine::compaction::CompactionConfig>, WireError> {
    let mut c = strom_engine::compaction::CompactionConfig::default();
    for (key, value) in configs {
        let value = value.as_str();
        match key.as_str() {
            "delete.retention.ms" => c.delete_retention_ms = parse_u64(key, value)?,
            "min.compaction.lag.ms" => c.min_compaction_lag_ms = parse_u64(key, value)?,
            "max.compaction.lag.ms" => {
                let n = parse_u64(key, value)?;
                if n == 0 {
                    return Err(invalid(key, value, "must be positive"));
                }
                c.max_compaction_lag_ms = (n < i64::MAX as u64).then_some(n);
            }
            "min.cleanable.dirty.ratio" => {
                let r: f64 = value
                    .parse()
                    .map_err(|_| invalid(key, value, "expected a number between 0 and 1"))?;
                if !(0.0..=1.0).contains(&r) {
                    return Err(invalid(key, value, "expected a number between 0 and 1"));
                }
                c.min_cleanable_dirty_ratio = r;
            }
            _ => {}
        }
    }
    if let Some(max) = c.max_compaction_lag_ms {
        if max < c.min_compaction_lag_ms {
            return Err(invalid(
                "max.compaction.lag.ms",
                &max.to_string(),
                "smaller than min.compaction.lag.ms",
            ));
        }
    }
    Ok(match cleanup_policy(configs)? {
        CleanupPolicy::Delete => None,
        CleanupPolicy::Compact | CleanupPolicy::CompactDelete => Some(c),
    })
}

/// Kafka's defaults of the cleaner configs, shown by DescribeConfigs for a
/// topic that does not set them.
pub const CLEANER_CONFIG_DEFAULTS: &[(&str, &str)] = &[
    ("cleanup.policy", "delete"),
    ("delete.retention.ms", "86400000"),
    ("min.cleanable.dirty.ratio", "0.5"),
    ("min.compaction.lag.ms", "0"),
    ("max.compaction.lag.ms", "9223372036854775807"),
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

/// The body of the metadata file (format 2; field order is part of the
/// checksum). All zero (`Default`) before the first start; `shard_count`
/// set and the two placement fields zero in a format-1 file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Metadata {
    /// Shards of the placement in force (the `--cores` of the last start).
    pub shard_count: u32,
    /// Incremented on every placement change (see [`plan_placement`]).
    pub placement_epoch: u64,
    /// Offsets partitions of this directory; fixed at creation.
    pub offsets_partitions: u32,
    pub next_topic_id: u64,
    pub topics: BTreeMap<String, TopicMeta>,
    /// Cluster mode: the index of the last metadata-group entry applied
    /// (`crate::cluster`); it only grows. Zero on a single node, and then
    /// not written, so a single node's file keeps its layout and checksum.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cluster_meta_index: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl Metadata {
    /// The placement this metadata records. Panics before
    /// [`plan_placement`] has given it one (a programmer error).
    pub fn placement(&self) -> Placement {
        Placement::new(
            self.shard_count as usize,
            self.placement_epoch,
            self.offsets_partitions,
        )
    }
}

#[derive(Serialize, Deserialize)]
struct MetadataFile {
    format_version: u32,
    crc32c: u32,
    body: Metadata,
}

/// The body of a format-1 file, for its checksum.
#[derive(Serialize, Deserialize)]
struct MetadataV1 {
    shard_count: u32,
    next_topic_id: u64,
    topics: BTreeMap<String, TopicMeta>,
}

#[derive(Serialize, Deserialize)]
struct MetadataFileV1 {
    format_version: u32,
    crc32c: u32,
    body: MetadataV1,
}

/// Only the version, read first to choose the parser.
#[derive(Deserialize)]
struct FormatVersion {
    format_version: u32,
}

/// The shard that owns `partition` of the topic with `topic_id`: the one
/// placement function, for topic partitions and offsets partitions alike.
pub fn owner_shard(topic_id: u64, partition: u32, shards: usize) -> usize {
    assert!(shards > 0, "at least one shard");
    (topic_id.wrapping_add(u64::from(partition)) % shards as u64) as usize
}

/// Which shard owns what, for the life of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub shards: usize,
    pub epoch: u64,
    pub offsets_partitions: u32,
}

impl Placement {
    pub fn new(shards: usize, epoch: u64, offsets_partitions: u32) -> Placement {
        assert!(shards >= 1, "placement without shards");
        assert!(epoch >= 1, "placement epoch 0 is never in force");
        assert!(
            (1..=PARTITIONS_PER_TOPIC_MAX).contains(&offsets_partitions),
            "{offsets_partitions} offsets partitions"
        );
        Placement {
            shards,
            epoch,
            offsets_partitions,
        }
    }

    /// The shard that owns `partition` of the topic with `topic_id`.
    pub fn partition_owner(&self, topic_id: u64, partition: u32) -> usize {
        owner_shard(topic_id, partition, self.shards)
    }

    /// The shard that owns offsets partition `p`.
    pub fn offsets_partition_owner(&self, p: u32) -> usize {
        assert!(p < self.offsets_partitions, "offsets partition {p}");
        owner_shard(OFFSETS_PLACEMENT_TOPIC_ID, p, self.shards)
    }

    /// The offsets partitions `shard` owns, ascending.
    pub fn offsets_partitions_of(&self, shard: usize) -> Vec<u32> {
        (0..self.offsets_partitions)
            .filter(|p| self.offsets_partition_owner(*p) == shard)
            .collect()
    }
}

/// What [`load`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// No metadata file: a new data directory.
    Missing,
    /// A format-1 file: its placement fields are zero and the committed
    /// offsets are still in one log per shard (`group::migrate`).
    Format1(Metadata),
    Current(Metadata),
}

/// What start-up does to the placement (see [`plan_placement`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlacementChange {
    /// Same shard count as the last start: nothing moves.
    Unchanged,
    /// A new data directory: epoch 1.
    Created,
    /// Another shard count: topic partitions and offsets partitions move
    /// to other shards; no file moves.
    Resharded { from_shards: u32 },
    /// A format-1 directory: its per-shard offsets logs must be migrated
    /// into the offsets partitions before any shard starts.
    FromFormat1 { from_shards: u32 },
}

/// The metadata to run with `shards` shards, given what was stored, and
/// what changed. I/O-free. The offsets partition count is taken from the
/// stored metadata when it has one, `offsets_partitions_new` otherwise
/// (a new or format-1 directory); the epoch grows by one on any change.
pub fn plan_placement(
    stored: Stored,
    shards: usize,
    offsets_partitions_new: u32,
) -> (Metadata, PlacementChange) {
    assert!((1..=u32::MAX as usize).contains(&shards), "{shards} shards");
    let (mut meta, change) = match stored {
        Stored::Missing => (Metadata::default(), PlacementChange::Created),
        Stored::Format1(m) => {
            assert_eq!(
                m.offsets_partitions, 0,
                "format 1 has no offsets partitions"
            );
            let from_shards = m.shard_count;
            (m, PlacementChange::FromFormat1 { from_shards })
        }
        Stored::Current(m) => {
            let from_shards = m.shard_count;
            let change = if from_shards as usize == shards {
                PlacementChange::Unchanged
            } else {
                PlacementChange::Resharded { from_shards }
            };
            (m, change)
        }
    };
    if change != PlacementChange::Unchanged {
        meta.placement_epoch += 1;
    }
    if meta.offsets_partitions == 0 {
        meta.offsets_partitions = offsets_partitions_new;
    }
    meta.shard_count = shards as u32;
    // Post-condition: a valid placement (`placement` asserts it).
    assert_eq!(meta.placement().shards, shards);
    (meta, change)
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
            // Validated (and used) by `compaction_config` below.
            "cleanup.policy"
            | "delete.retention.ms"
            | "min.cleanable.dirty.ratio"
            | "min.compaction.lag.ms"
            | "max.compaction.lag.ms" => {}
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
    compaction_config(configs)?;
    if cleanup_policy(configs)? == CleanupPolicy::Compact {
        // Compacted only: retention never deletes (Kafka ignores
        // retention.ms and retention.bytes then).
        c.retention_ms = None;
        c.retention_bytes = None;
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

/// Reads the metadata file (format 2, or format 1 for the migration).
pub fn load(data_dir: &Path) -> Result<Stored, ServerError> {
    let path = metadata_path(data_dir);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Stored::Missing),
        Err(e) => {
            return Err(ServerError::Io {
                op: "read",
                path,
                source: e,
            })
        }
    };
    let parse_err = |e: serde_json::Error| meta_err(&path, e.to_string());
    let version: FormatVersion = serde_json::from_slice(&text).map_err(parse_err)?;
    let crc_mismatch = |stored: u32, computed: u32| {
        meta_err(
            &path,
            format!("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"),
        )
    };
    match version.format_version {
        METADATA_FORMAT_VERSION => {
            let file: MetadataFile = serde_json::from_slice(&text).map_err(parse_err)?;
            let crc = body_crc(&file.body);
            if crc != file.crc32c {
                return Err(crc_mismatch(file.crc32c, crc));
            }
            let b = &file.body;
            if b.shard_count == 0
                || b.placement_epoch == 0
                || b.offsets_partitions == 0
                || b.offsets_partitions > PARTITIONS_PER_TOPIC_MAX
            {
                return Err(meta_err(
                    &path,
                    format!(
                        "invalid placement: shard_count {}, placement_epoch {}, offsets_partitions {} \
                         (each must be at least 1, offsets_partitions at most {PARTITIONS_PER_TOPIC_MAX})",
                        b.shard_count, b.placement_epoch, b.offsets_partitions
                    ),
                ));
            }
            Ok(Stored::Current(file.body))
        }
        METADATA_FORMAT_VERSION_1 => {
            let file: MetadataFileV1 = serde_json::from_slice(&text).map_err(parse_err)?;
            let crc = crc32c::crc32c(&serde_json::to_vec(&file.body).unwrap_or_default());
            if crc != file.crc32c {
                return Err(crc_mismatch(file.crc32c, crc));
            }
            let MetadataV1 {
                shard_count,
                next_topic_id,
                topics,
            } = file.body;
            Ok(Stored::Format1(Metadata {
                shard_count,
                placement_epoch: 0,
                offsets_partitions: 0,
                next_topic_id,
                topics,
                cluster_meta_index: 0,
            }))
        }
        v => Err(meta_err(
            &path,
            format!(
                "format_version {v} is not supported (this build reads {METADATA_FORMAT_VERSION_1} \
                 and {METADATA_FORMAT_VERSION})"
            ),
        )),
    }
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
    // Never a file without a placement: `plan_placement` ran first.
    let _ = body.placement();
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
    fn cleanup_policies_and_cleaner_configs_are_validated() {
        let m = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(compaction_config(&m(&[])).unwrap(), None);
        let c = compaction_config(&m(&[
            ("cleanup.policy", "compact"),
            ("delete.retention.ms", "100"),
            ("min.cleanable.dirty.ratio", "0.01"),
            ("min.compaction.lag.ms", "5"),
            ("max.compaction.lag.ms", "10"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(c.delete_retention_ms, 100);
        assert_eq!(c.min_cleanable_dirty_ratio, 0.01);
        assert_eq!(
            (c.min_compaction_lag_ms, c.max_compaction_lag_ms),
            (5, Some(10))
        );
        // Compact only: retention never deletes.
        let lc = log_config(&m(&[("cleanup.policy", "compact"), ("retention.ms", "5")])).unwrap();
        assert_eq!((lc.retention_ms, lc.retention_bytes), (None, None));
        let lc = log_config(&m(&[
            ("cleanup.policy", "delete,compact"),
            ("retention.ms", "5"),
        ]))
        .unwrap();
        assert_eq!(lc.retention_ms, Some(5));
        for bad in [
            &[("cleanup.policy", "shred")][..],
            &[
                ("cleanup.policy", "compact"),
                ("min.cleanable.dirty.ratio", "1.5"),
            ][..],
            &[("delete.retention.ms", "-3")][..],
            &[
                ("max.compaction.lag.ms", "1"),
                ("min.compaction.lag.ms", "2"),
            ][..],
        ] {
            assert_eq!(
                log_config(&m(bad)).unwrap_err().code,
                ErrorCode::InvalidConfig,
                "{bad:?}"
            );
        }
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
        m.insert("cleanup.policy".to_owned(), "compacted".to_owned());
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
        assert_eq!(load(&dir).expect("empty"), Stored::Missing);
        let mut m = Metadata {
            shard_count: 2,
            placement_epoch: 3,
            offsets_partitions: 16,
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
        assert_eq!(load(&dir).expect("load"), Stored::Current(m.clone()));
        let path = metadata_path(&dir);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains("\"format_version\": 2"), "{text}");
        for (from, to) in [
            ("\"partitions\": 3", "\"partitions\": 4"),
            ("\"placement_epoch\": 3", "\"placement_epoch\": 4"),
            ("\"offsets_partitions\": 16", "\"offsets_partitions\": 8"),
        ] {
            std::fs::write(&path, text.replace(from, to)).expect("write");
            assert!(load(&dir).is_err(), "{from} -> {to}");
        }
        std::fs::write(
            &path,
            text.replace("\"format_version\": 2", "\"format_version\": 3"),
        )
        .expect("write");
        let e = load(&dir).unwrap_err().to_string();
        assert!(e.contains("format_version 3 is not supported"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The format-1 example of `docs/format.md`, byte for byte: still read,
    /// checksum and all.
    #[test]
    fn format_1_files_are_read() {
        let dir = std::env::temp_dir().join(format!("strom-meta-v1-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("meta")).expect("mkdir");
        let v1 = r#"{ "format_version": 1, "crc32c": 2144047739,
  "body": { "shard_count": 2, "next_topic_id": 1,
            "topics": { "orders": { "name": "orders", "id": 0, "partitions": 3,
                                    "configs": { "retention.ms": "86400000" } } } } }"#;
        std::fs::write(metadata_path(&dir), v1).expect("write");
        let Stored::Format1(m) = load(&dir).expect("load") else {
            panic!("not format 1");
        };
        assert_eq!(
            (m.shard_count, m.placement_epoch, m.offsets_partitions),
            (2, 0, 0)
        );
        assert_eq!(m.topics["orders"].partitions, 3);
        std::fs::write(
            metadata_path(&dir),
            v1.replace("\"partitions\": 3", "\"partitions\": 4"),
        )
        .expect("write");
        assert!(load(&dir).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn placement_epoch_grows_on_every_change_and_the_offsets_partition_count_never_changes() {
        // A new directory: epoch 1, the built-in offsets partition count.
        let (m, c) = plan_placement(Stored::Missing, 2, 16);
        assert_eq!(c, PlacementChange::Created);
        assert_eq!(m.placement(), Placement::new(2, 1, 16));
        // Same shard count: nothing changes.
        let (m, c) = plan_placement(Stored::Current(m), 2, 16);
        assert_eq!(c, PlacementChange::Unchanged);
        assert_eq!(m.placement(), Placement::new(2, 1, 16));
        // Another shard count: a new epoch; a later build with another
        // built-in count does not change this directory's count.
        let (m, c) = plan_placement(Stored::Current(m), 1, 64);
        assert_eq!(c, PlacementChange::Resharded { from_shards: 2 });
        assert_eq!(m.placement(), Placement::new(1, 2, 16));
        let (m, c) = plan_placement(Stored::Current(m), 3, 64);
        assert_eq!(c, PlacementChange::Resharded { from_shards: 1 });
        assert_eq!(m.placement(), Placement::new(3, 3, 16));
        // Format 1: the offsets layout changes, so does the epoch.
        let v1 = Metadata {
            shard_count: 2,
            next_topic_id: 5,
            ..Metadata::default()
        };
        let (m, c) = plan_placement(Stored::Format1(v1), 2, 16);
        assert_eq!(c, PlacementChange::FromFormat1 { from_shards: 2 });
        assert_eq!(m.placement(), Placement::new(2, 1, 16));
        assert_eq!(m.next_topic_id, 5);
    }

    #[test]
    fn offsets_partitions_are_placed_like_topic_partitions() {
        for shards in 1..=20 {
            let p = Placement::new(shards, 1, 16);
            let mut owned: Vec<u32> = (0..shards)
                .flat_map(|s| p.offsets_partitions_of(s))
                .collect();
            owned.sort_unstable();
            // Each offsets partition has exactly one owner ...
            assert_eq!(owned, (0..16).collect::<Vec<_>>(), "{shards} shards");
            for o in 0..16 {
                // ... the one topic placement gives partition o of topic 0 ...
                assert_eq!(p.offsets_partition_owner(o), p.partition_owner(0, o));
                assert_eq!(p.offsets_partition_owner(o), owner_shard(0, o, shards));
            }
            // ... and the shards share them evenly.
            let counts: Vec<usize> = (0..shards)
                .map(|s| p.offsets_partitions_of(s).len())
                .collect();
            let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(hi - lo <= 1, "{shards} shards: {counts:?}");
        }
    }
}
