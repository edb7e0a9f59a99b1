//! One shard: a glommio executor pinned to a core that owns a subset of the
//! partitions and of the offsets partitions (see `metadata::Placement`, fixed
//! for the life of the process), accepts connections on the
//! shared listen port (SO_REUSEPORT), serves the channel mesh, and on
//! shutdown drains its connections, waits for every other shard to drain,
//! then closes its partitions (flush + clean-shutdown marker).
//!
//! Invariants:
//! - `partitions` holds exactly the partitions of the current metadata that
//!   this shard owns and managed to open; it changes only in [`Shard::apply`],
//!   which runs one at a time.
//! - No `RefCell` borrow is held across an `.await`.

use crate::engine::Partition;
use crate::error::WireError;
use crate::metadata::{self, Metadata, Placement};
use crate::metrics::{PartitionSnapshot, PartitionTraffic, ShardMetrics, ShardSnapshot};
use crate::router::Router;
use crate::shutdown::Event;
use glommio::sync::Semaphore;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;

/// State shared by every shard and the main thread (atomics only).
pub struct Shared {
    pub shards: usize,
    /// The placement in force (`placement.shards == shards`).
    pub placement: Placement,
    pub data_dir: PathBuf,
    pub shutdown: AtomicBool,
    pub ready: AtomicUsize,
    pub drained: AtomicUsize,
    /// Shards whose executor body has ended (normally or by panic).
    pub exited: AtomicUsize,
    /// shard id -> mesh peer id (usize::MAX until known).
    pub peers: Vec<AtomicUsize>,
    pub initial_metadata: Metadata,
    /// Consumer group coordinator settings.
    pub group_config: crate::group::coordinator::CoordinatorConfig,
    /// The Kafka listener's settings, bound address and producer ids.
    pub kafka: crate::kafka::KafkaShared,
}

pub struct PartitionSlot {
    pub topic_id: u64,
    pub partition: Partition,
    pub traffic: PartitionTraffic,
}

pub struct Shard {
    pub id: usize,
    pub shards: usize,
    pub data_dir: PathBuf,
    pub metadata: RefCell<Metadata>,
    pub partitions: RefCell<HashMap<(String, u32), PartitionSlot>>,
    pub router: Router,
    /// The consumer groups this shard coordinates.
    pub groups: crate::group::service::GroupShard,
    pub shared: Arc<Shared>,
    /// Serializes metadata changes (shard 0) and their application (all).
    pub admin_lock: Semaphore,
    pub apply_lock: Semaphore,
    pub connections: Cell<usize>,
    pub shutdown: Event,
    /// Kafka idempotent-producer state of the partitions this shard owns.
    pub kafka: crate::kafka::KafkaShard,
    /// This shard's counters (touched by this executor only).
    pub metrics: ShardMetrics,
}

impl Shard {
    pub fn metrics(&self) -> &ShardMetrics {
        &self.metrics
    }

    /// Which shard owns what (topic and offsets partitions).
    pub fn placement(&self) -> Placement {
        self.shared.placement
    }

    /// Counts records and stored bytes appended to an owned partition.
    pub fn count_in(&self, topic: &str, partition: u32, records: u64, bytes: u64) {
        ShardMetrics::add(&self.metrics.records_in, records);
        if let Some(slot) = self.partitions.borrow().get(&(topic.to_owned(), partition)) {
            ShardMetrics::add(&slot.traffic.records_in, records);
            ShardMetrics::add(&slot.traffic.bytes_in, bytes);
        }
    }

    /// Counts records and stored bytes read from an owned partition.
    pub fn count_out(&self, topic: &str, partition: u32, records: u64, bytes: u64) {
        ShardMetrics::add(&self.metrics.records_out, records);
        if let Some(slot) = self.partitions.borrow().get(&(topic.to_owned(), partition)) {
            ShardMetrics::add(&slot.traffic.records_out, records);
            ShardMetrics::add(&slot.traffic.bytes_out, bytes);
        }
    }

    /// This shard's metrics, partitions and group offsets (runs on this
    /// shard's thread: the tail-cache total is thread-local).
    pub fn metrics_snapshot(&self) -> ShardSnapshot {
        let mut parts: Vec<PartitionSnapshot> = self
            .partitions
            .borrow()
            .iter()
            .map(|((topic, p), slot)| PartitionSnapshot {
                topic: topic.clone(),
                partition: *p,
                offsets: slot.partition.offsets(),
                stats: slot.partition.stats(),
                sync: slot.partition.sync_stats(),
                records_in: slot.traffic.records_in.get(),
                bytes_in: slot.traffic.bytes_in.get(),
                records_out: slot.traffic.records_out.get(),
                bytes_out: slot.traffic.bytes_out.get(),
            })
            .collect();
        parts.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        self.metrics.snapshot(
            self.id,
            parts,
            self.groups.committed(),
            crate::engine::log::shard_cache_bytes(),
        )
    }

    /// The open partition, or the wire error explaining why there is none.
    pub fn partition(&self, topic: &str, partition: u32) -> Result<Partition, WireError> {
        if let Some(slot) = self.partitions.borrow().get(&(topic.to_owned(), partition)) {
            return Ok(slot.partition.clone());
        }
        match self.metadata.borrow().topics.get(topic) {
            None => Err(WireError::unknown_topic(topic)),
            Some(t) if partition >= t.partitions => {
                Err(WireError::unknown_partition(topic, partition))
            }
            Some(_) => Err(WireError::new(
                strom_flatbuffers::protocol::ErrorCode::Internal,
                format!(
                    "{topic}/{partition} is not open on shard {} (it failed to open)",
                    self.id
                ),
            )),
        }
    }

    /// The owning shard of (topic, partition) per the current metadata.
    pub fn owner(&self, topic: &str, partition: u32) -> Result<usize, WireError> {
        let meta = self.metadata.borrow();
        let t = meta
            .topics
            .get(topic)
            .ok_or_else(|| WireError::unknown_topic(topic))?;
        if partition >= t.partitions {
            return Err(WireError::unknown_partition(topic, partition));
        }
        Ok(self.placement().partition_owner(t.id, partition))
    }

    /// Brings the open partitions in line with `new`: closes (and, for
    /// deleted topics, removes) what is gone, opens what this shard now
    /// owns, pushes config changes.
    pub async fn apply(&self, new: Metadata) {
        let _guard = self.apply_lock.acquire_permit(1).await;
        // The placement is fixed for the life of the process.
        assert_eq!(
            new.placement(),
            self.placement(),
            "placement changed while running"
        );
        let old = self.metadata.borrow().clone();
        // Close partitions whose topic is gone or was re-created.
        let gone: Vec<(String, u32)> = self
            .partitions
            .borrow()
            .iter()
            .filter(|((name, p), slot)| match new.topics.get(name) {
                None => true,
                Some(t) => t.id != slot.topic_id || *p >= t.partitions,
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            let slot = self.partitions.borrow_mut().remove(&key);
            if let Some(slot) = slot {
                if let Err(e) = slot.partition.close().await {
                    self.metrics().count_background_error("close_partition");
                    tracing::error!(shard = self.id, topic = %key.0, partition = key.1, error = %e, "closing partition failed");
                }
                let dir = metadata::partition_dir(&self.data_dir, &key.0, key.1);
                if let Err(e) = crate::engine::remove_partition_dir(&dir).await {
                    self.metrics()
                        .count_background_error("remove_partition_dir");
                    tracing::error!(shard = self.id, dir = %dir.display(), error = %e, "removing partition directory failed");
                } else {
                    tracing::info!(shard = self.id, topic = %key.0, partition = key.1, "partition removed");
                }
            }
        }
        // Remove leftovers of deleted topics this shard owned but never opened.
        for (name, t) in &old.topics {
            if new.topics.get(name).map(|n| n.id) != Some(t.id) {
                for p in 0..t.partitions {
                    if self.placement().partition_owner(t.id, p) == self.id {
                        let dir = metadata::partition_dir(&self.data_dir, name, p);
                        if let Err(e) = crate::engine::remove_partition_dir(&dir).await {
                            self.metrics()
                                .count_background_error("remove_partition_dir");
                            tracing::error!(shard = self.id, dir = %dir.display(), error = %e, "removing a deleted partition's directory failed");
                        }
                    }
                }
            }
        }
        // Open what this shard owns and does not hold yet; update configs.
        for t in new.topics.values() {
            let config = match metadata::log_config(&t.configs) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(shard = self.id, topic = %t.name, error = %e.message, "invalid topic config; its partitions stay closed");
                    continue;
                }
            };
            let config_changed = old.topics.get(&t.name).map(|o| &o.configs) != Some(&t.configs);
            for p in 0..t.partitions {
                if self.placement().partition_owner(t.id, p) != self.id {
                    continue;
                }
                let key = (t.name.clone(), p);
                let existing = self
                    .partitions
                    .borrow()
                    .get(&key)
                    .map(|s| s.partition.clone());
                match existing {
                    Some(part) => {
                        if config_changed {
                            if let Err(e) = part.set_config(config.clone()).await {
                                tracing::error!(shard = self.id, topic = %t.name, partition = p, error = %e, "applying topic config failed");
                            }
                        }
                    }
                    None => {
                        let dir = metadata::partition_dir(&self.data_dir, &t.name, p);
                        match Partition::open(&dir, config.clone()).await {
                            Ok(part) => {
                                log_recovery(self.id, &t.name, p, &part);
                                self.partitions.borrow_mut().insert(
                                    key,
                                    PartitionSlot {
                                        topic_id: t.id,
                                        partition: part,
                                        traffic: PartitionTraffic::default(),
                                    },
                                );
                            }
                            Err(e) => {
                                tracing::error!(shard = self.id, topic = %t.name, partition = p, dir = %dir.display(), error = %e, "opening partition failed")
                            }
                        }
                    }
                }
            }
        }
        *self.metadata.borrow_mut() = new;
        self.groups.set_topics(self);
    }

    pub async fn close_all(&self) {
        let all: Vec<_> = self.partitions.borrow_mut().drain().collect();
        for ((topic, p), slot) in all {
            if let Err(e) = slot.partition.close().await {
                tracing::error!(shard = self.id, %topic, partition = p, error = %e, "closing partition failed");
            }
        }
    }
}

/// One line per opened partition: what recovery found and did.
fn log_recovery(shard: usize, topic: &str, partition: u32, part: &Partition) {
    let r = part.recovery_report();
    let o = part.offsets();
    if r.truncated_bytes > 0 || r.truncation_reason.is_some() || r.removed_segments > 0 {
        tracing::warn!(
            shard,
            topic,
            partition,
            clean_shutdown = r.clean_shutdown,
            segments = r.segments,
            scanned_bytes = r.scanned_bytes,
            truncated_bytes = r.truncated_bytes,
            reason = r.truncation_reason.as_deref().unwrap_or("-"),
            rebuilt_indexes = r.rebuilt_indexes,
            removed_segments = r.removed_segments,
            log_start_offset = o.log_start_offset,
            high_watermark = o.high_watermark,
            "partition recovered with truncation"
        );
    } else {
        tracing::info!(
            shard,
            topic,
            partition,
            clean_shutdown = r.clean_shutdown,
            segments = r.segments,
            scanned_bytes = r.scanned_bytes,
            rebuilt_indexes = r.rebuilt_indexes,
            log_start_offset = o.log_start_offset,
            high_watermark = o.high_watermark,
            "partition opened"
        );
    }
}
