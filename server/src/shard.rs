//! One shard: a glommio executor pinned to a core that owns a subset of the
//! partitions and of the offsets partitions (see `metadata::Placement`, fixed
//! for the life of the process), accepts connections on the
//! shared listen port (SO_REUSEPORT), serves the channel mesh, and on
//! shutdown drains its connections, waits for every other shard to drain,
//! then closes its partitions (flush + clean-shutdown marker).
//!
//! A partition whose log failed (a failed write or fdatasync: the engine
//! then refuses writes until the log is reopened) is reopened in the
//! background ([`Shard::engine_error`] starts it): the failed instance is
//! closed, the log reopened from disk (recovery keeps what is on disk and
//! discards a torn tail), with bounded exponential back-off between
//! attempts, until one succeeds or the partition goes away.
//!
//! Invariants:
//! - `partitions` holds exactly the partitions of the current metadata that
//!   this shard owns and managed to open; entries are added and removed only
//!   in [`Shard::apply`], and a reopen only swaps a slot's `partition`;
//!   `apply` and each reopen attempt hold `apply_lock`, so they run one at a
//!   time.
//! - At most one reopen runs per partition: a slot is `reopening` from the
//!   moment its reopen starts until it ends; while it is, requests for the
//!   partition get the retriable `PartitionUnavailable`.
//! - A partition's idempotent-producer state is rebuilt from its log
//!   (`producer_recovery::rebuild`) before its slot is inserted, and before
//!   a reopened slot stops `reopening`: no produce request ever sees a
//!   partition whose producer state is not the one its log implies.
//! - Single node: one task per shard (`Shard::producer_upkeep`) writes the
//!   producer-state snapshots that are due and expires producers; the last
//!   snapshot of a partition is written by `close_all`, before its close.
//! - No `RefCell` borrow is held across an `.await`.

use crate::engine::{EngineError, Partition};
use crate::error::{engine_to_wire, WireError};
use crate::limits::{PARTITION_REOPEN_BACKOFF_MAX_MS, PARTITION_REOPEN_BACKOFF_MIN_MS};
use crate::metadata::{self, Metadata, Placement};
use crate::metrics::{PartitionSnapshot, PartitionTraffic, ShardMetrics, ShardSnapshot};
use crate::producer_recovery::SnapshotMark;
use crate::producers::{PartitionKey, ProducerStates};
use crate::router::Router;
use crate::shutdown::Event;
use glommio::sync::Semaphore;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

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
    /// The Kafka listener's settings and bound address.
    pub kafka: crate::kafka::KafkaShared,
    /// Producer ids for idempotent producers of every protocol.
    pub producer_ids: crate::producers::ProducerIds,
    /// A test-only fault in the produce path (`config::ProduceFault`).
    pub produce_fault: Option<crate::config::ProduceFault>,
    /// Index = shard id: the shard's direct native port (set once every
    /// shard has bound; unset with `--shard-ports off`).
    pub shard_ports: std::sync::OnceLock<Vec<u16>>,
    /// The native listener's bound address (set once shard 0 has bound;
    /// unset in-process), told to cluster clients in the handshake.
    pub native_addr: std::sync::OnceLock<std::net::SocketAddr>,
    /// Where partitions live: O_DIRECT files, or each shard's own in-memory
    /// file system (in-process tests; see `node::InProcess`).
    pub storage: StorageKind,
    /// Cluster mode (`crate::cluster`), or None for a single node.
    pub cluster: Option<Arc<crate::cluster::ClusterConfig>>,
    /// Cluster mode: the metadata group's leader as shard 0 last saw it
    /// (0: none known), for Kafka's controller id on every shard.
    pub meta_leader: std::sync::atomic::AtomicU64,
    /// Each listener's TLS server side (`None`: plaintext).
    pub tls: crate::tls::ListenerTls,
    /// Credentials, SASL settings and failed-login counts (`crate::auth`).
    pub auth: Arc<crate::auth::Store>,
}

impl Shared {
    /// The controller (metadata group leader) as last seen, if any.
    pub fn controller(&self) -> Option<u64> {
        match self.meta_leader.load(Ordering::Relaxed) {
            0 => None,
            id => Some(id),
        }
    }
}

/// The storage a node's partitions use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageKind {
    /// O_DIRECT files under the data directory (`strom-server`).
    Direct,
    /// One in-memory file system per shard, lost at exit (tests).
    Memory,
}

impl StorageKind {
    /// A storage handle of this kind for one shard.
    pub fn open(self) -> crate::engine::AnyStorage {
        match self {
            StorageKind::Direct => crate::engine::AnyStorage::dma(),
            StorageKind::Memory => crate::engine::AnyStorage::memory(),
        }
    }
}

pub struct PartitionSlot {
    pub topic_id: u64,
    pub partition: Partition,
    pub traffic: PartitionTraffic,
    /// Its log failed and is being reopened (see [`Shard::engine_error`]).
    pub reopening: bool,
    /// Where this instance stands with producer-state snapshots.
    pub snapshots: SnapshotMark,
    /// A snapshot taken and waiting for the log to become durable past it
    /// (see [`crate::producer_recovery::PendingSnapshot`]).
    pub pending_snapshot: Option<Rc<crate::producer_recovery::PendingSnapshot>>,
    /// Which opening of the partition `partition` is (shard-wide counter):
    /// a snapshot job's result is recorded only for the instance it ran on.
    pub instance: u64,
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
    /// The transaction coordinator (loaded and used on shard 0 only).
    pub txn: crate::txn::TxnShard,
    pub shared: Arc<Shared>,
    /// Serializes metadata changes (shard 0) and their application (all).
    pub admin_lock: Semaphore,
    pub apply_lock: Semaphore,
    pub connections: Cell<usize>,
    pub shutdown: Event,
    /// Idempotent-producer state of the partitions this shard owns (every
    /// protocol's).
    pub producers: Rc<crate::producers::Producers>,
    /// This shard's counters (touched by this executor only).
    pub metrics: ShardMetrics,
    /// Where this shard's partitions live (see [`StorageKind`]).
    pub storage: crate::engine::AnyStorage,
    /// Cluster mode: this shard's replication node; its partitions are Raft
    /// groups there (`replicated`), not engine partitions (`partitions`).
    pub replication: Option<crate::cluster::Replication>,
    /// Cluster mode: the partitions this shard replicates -> (topic id,
    /// group id).
    pub replicated: RefCell<HashMap<(String, u32), (u64, u64)>>,
    /// Partition openings so far (each slot's `instance`).
    pub opened_instances: Cell<u64>,
}

impl Shard {
    pub fn metrics(&self) -> &ShardMetrics {
        &self.metrics
    }

    /// Which shard owns what (topic and offsets partitions).
    pub fn placement(&self) -> Placement {
        self.shared.placement
    }

    /// The id of topic `topic` in this shard's metadata.
    pub fn topic_id(&self, topic: &str) -> Option<u64> {
        self.metadata.borrow().topics.get(topic).map(|t| t.id)
    }

    /// Counts records and stored bytes appended to an owned partition.
    pub fn count_in(&self, topic: &str, partition: u32, records: u64, bytes: u64) {
        ShardMetrics::add(&self.metrics.records_in, records);
        if let Some(slot) = self.partitions.borrow().get(&(topic.to_owned(), partition)) {
            ShardMetrics::add(&slot.traffic.records_in, records);
            ShardMetrics::add(&slot.traffic.bytes_in, bytes);
            if let Some(f) = partition_fault() {
                if f.topic == topic
                    && f.partition == partition
                    && slot.traffic.records_in.get() >= f.after_records
                    && !FAULT_FIRED.swap(true, Ordering::Relaxed)
                {
                    tracing::warn!(
                        shard = self.id,
                        topic,
                        partition,
                        "{PARTITION_FAULT_ENV}: failing the partition's log"
                    );
                    let part = slot.partition.clone();
                    glommio::spawn_local(
                        async move { part.fail_for_tests(PARTITION_FAULT_ENV).await },
                    )
                    .detach();
                }
            }
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
                cleaner: slot.partition.cleaner_stats(),
            })
            .collect();
        parts.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        let mut snap = self.metrics.snapshot(
            self.id,
            parts,
            self.groups.committed(),
            crate::engine::log::shard_cache_bytes(),
        );
        if let Some(r) = &self.replication {
            self.raft_series(&r.node, &mut snap.exposition);
        }
        snap
    }

    /// Cluster mode: this shard's Raft node's series.
    fn raft_series(
        &self,
        node: &strom_replication::shell::Node,
        x: &mut crate::metrics::Exposition,
    ) {
        let st = node.stats();
        let s = self.id.to_string();
        let sl: &[(&str, &str)] = &[("shard", &s)];
        let groups = node.groups();
        let leading = groups
            .iter()
            .filter(|g| node.view(**g).is_some_and(|v| v.is_leader))
            .count();
        x.gauge(
            "strom_raft_groups",
            "Raft groups on this shard.",
            sl,
            groups.len() as u64,
        );
        x.gauge(
            "strom_raft_groups_leading",
            "Raft groups this shard leads.",
            sl,
            leading as u64,
        );
        for (name, help, v) in [
            (
                "strom_raft_batches_sent_total",
                "Raft wire batches sent to peers.",
                st.batches_sent,
            ),
            (
                "strom_raft_messages_sent_total",
                "Raft messages sent to peers.",
                st.messages_sent,
            ),
            (
                "strom_raft_messages_received_total",
                "Raft messages received from peers.",
                st.messages_received,
            ),
            (
                "strom_raft_messages_dropped_total",
                "Raft messages dropped (outbox full, peer down, unencodable).",
                st.dropped_full + st.dropped_disconnected + st.dropped_unencodable,
            ),
            (
                "strom_raft_refused_total",
                "Raft connections closed for bad bytes or a wrong peer.",
                st.wire_errors + st.refused_batches,
            ),
            (
                "strom_raft_persists_total",
                "Raft log persists (write + fdatasync + hard state).",
                st.persists,
            ),
            (
                "strom_raft_persist_errors_total",
                "Raft log persists that failed (the group stops).",
                st.persist_errors,
            ),
            (
                "strom_raft_persist_microseconds_total",
                "Wall time of the completed Raft persists (divide by strom_raft_persists_total for the mean).",
                st.persist_micros,
            ),
            (
                "strom_raft_ticks_total",
                "Raft tick rounds (every group ticked).",
                st.ticks,
            ),
        ] {
            x.counter(name, help, sl, v);
        }
    }

    /// The open partition, or the wire error explaining why there is none.
    pub fn partition(&self, topic: &str, partition: u32) -> Result<Partition, WireError> {
        self.partition_and_topic_id(topic, partition)
            .map(|(p, _)| p)
    }

    /// [`Shard::partition`], with the id of the topic incarnation it
    /// belongs to (what producer state is keyed by).
    pub fn partition_and_topic_id(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<(Partition, u64), WireError> {
        if let Some(slot) = self.partitions.borrow().get(&(topic.to_owned(), partition)) {
            if slot.reopening {
                return Err(WireError::new(
                    strom_flatbuffers::protocol::ErrorCode::PartitionUnavailable,
                    format!("{topic}/{partition}: its log failed and is being reopened; retry"),
                ));
            }
            return Ok((slot.partition.clone(), slot.topic_id));
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

    /// Maps an error of an operation on an owned partition to its wire
    /// form, and, when it says the partition's log failed, starts reopening
    /// the partition in the background (unless that is under way already).
    /// Every owner-side operation that can fail the log reports its errors
    /// here.
    pub fn engine_error(
        self: &Rc<Self>,
        topic: &str,
        partition: u32,
        e: &EngineError,
    ) -> WireError {
        if matches!(e, EngineError::Failed { .. }) {
            self.start_reopen(topic, partition);
        }
        engine_to_wire(topic, partition, e)
    }

    /// Marks the slot `reopening` and spawns [`Shard::reopen`], once.
    ///
    /// A `Failed` always comes from the slot's current instance: reopening
    /// it takes its log out under the log's lock, after which a request
    /// still holding the old instance gets `Closed`, not `Failed`.
    fn start_reopen(self: &Rc<Self>, topic: &str, partition: u32) {
        let key = (topic.to_owned(), partition);
        let topic_id = {
            let mut parts = self.partitions.borrow_mut();
            let Some(slot) = parts.get_mut(&key) else {
                return;
            };
            if slot.reopening {
                return;
            }
            slot.reopening = true;
            slot.topic_id
        };
        tracing::warn!(
            shard = self.id,
            topic,
            partition,
            "partition log failed; reopening it in the background"
        );
        glommio::spawn_local(self.clone().reopen(key, topic_id)).detach();
    }

    /// Reopens a failed partition until an attempt succeeds, the partition
    /// goes away (topic deleted or re-created) or the server shuts down,
    /// waiting [`reopen_backoff_ms`] between attempts.
    async fn reopen(self: Rc<Self>, key: (String, u32), topic_id: u64) {
        for attempt in 1u32.. {
            if self.shutdown.is_fired() {
                return;
            }
            if self.reopen_once(&key, topic_id, attempt).await {
                return;
            }
            let wait_ms = reopen_backoff_ms(attempt);
            tracing::info!(
                shard = self.id,
                topic = %key.0,
                partition = key.1,
                attempt,
                retry_in_ms = wait_ms,
                "partition reopen: next attempt after back-off"
            );
            let sleep = async {
                glommio::timer::sleep(std::time::Duration::from_millis(wait_ms)).await;
            };
            futures_lite::future::or(sleep, self.shutdown.wait()).await;
        }
    }

    /// One attempt: closes the failed instance, opens the log from disk and
    /// puts it in the slot. True when done (reopened, or nothing left to
    /// reopen).
    async fn reopen_once(&self, key: &(String, u32), topic_id: u64, attempt: u32) -> bool {
        let _guard = self.apply_lock.acquire_permit(1).await;
        let (topic, p) = (key.0.as_str(), key.1);
        let old = match self.partitions.borrow().get(key) {
            Some(slot) if slot.topic_id == topic_id && slot.reopening => slot.partition.clone(),
            _ => {
                tracing::info!(
                    shard = self.id,
                    topic,
                    partition = p,
                    "partition gone; not reopening it"
                );
                return true;
            }
        };
        let config = match self.metadata.borrow().topics.get(topic) {
            Some(t) if t.id == topic_id => metadata::log_config(&t.configs),
            _ => return true,
        };
        tracing::warn!(
            shard = self.id,
            topic,
            partition = p,
            attempt,
            "reopening partition"
        );
        // A failed log refuses to close cleanly: its files are closed without
        // the clean-shutdown marker, so the open below runs recovery.
        if let Err(e) = old.close().await {
            tracing::debug!(shard = self.id, topic, partition = p, error = %e, "closing the failed partition");
        }
        let dir = metadata::partition_dir(&self.data_dir, topic, p);
        let opened = match (config, partition_fault()) {
            (Err(e), _) => Err(e.message),
            (Ok(_), Some(f))
                if f.topic == topic && f.partition == p && attempt <= f.failed_reopens =>
            {
                Err(format!(
                    "{PARTITION_FAULT_ENV}: injected failure of attempt {attempt}"
                ))
            }
            (Ok(config), _) => Partition::open_on(self.storage.clone(), &dir, config, true)
                .await
                .map_err(|e| e.to_string()),
        };
        let part = match opened {
            Ok(part) => part,
            Err(e) => {
                self.metrics().count_background_error("reopen_partition");
                tracing::error!(shard = self.id, topic, partition = p, attempt, dir = %dir.display(), error = %e, "reopening partition failed");
                return false;
            }
        };
        // The batches of idempotent producers the recovered log holds, and
        // only those: a retry of a lost one is appended again, a retry of
        // one that survived is a duplicate. Rebuilt before the slot takes
        // requests again.
        let pkey = PartitionKey {
            topic_id,
            partition: p,
        };
        let (states, report) = crate::producer_recovery::rebuild(
            &part,
            pkey,
            self.producers.capacity(),
            crate::engine::partition::now_ms(),
        )
        .await;
        let instance = self.next_instance();
        let installed = match self.partitions.borrow_mut().get_mut(key) {
            Some(slot) if slot.topic_id == topic_id => {
                slot.partition = part.clone();
                slot.reopening = false;
                slot.snapshots = SnapshotMark::opened(report.snapshot_offset, report.bytes);
                slot.pending_snapshot = None;
                slot.instance = instance;
                true
            }
            _ => false,
        };
        if installed {
            self.install_producers(topic, p, pkey, states, &report);
        }
        if !installed {
            // Closed under us (shutdown): close what we opened.
            if let Err(e) = part.close().await {
                tracing::error!(shard = self.id, topic, partition = p, error = %e, "closing a reopened partition nobody holds failed");
            }
            return true;
        }
        ShardMetrics::add(&self.metrics.partition_reopens, 1);
        log_recovery(self.id, topic, p, &part);
        let high_watermark = part.offsets().high_watermark;
        tracing::warn!(
            shard = self.id,
            topic,
            partition = p,
            attempt,
            high_watermark,
            "partition reopened after its log failed"
        );
        true
    }

    /// A new instance number for a partition just opened.
    fn next_instance(&self) -> u64 {
        let n = self.opened_instances.get() + 1;
        self.opened_instances.set(n);
        n
    }

    /// Installs a partition's rebuilt producer state (replacing what the
    /// shard held for it), raises the producer-id floor above every id it
    /// names, and says what the rebuild did.
    fn install_producers(
        &self,
        topic: &str,
        p: u32,
        key: PartitionKey,
        states: ProducerStates,
        r: &crate::producer_recovery::RebuildReport,
    ) {
        if let Some(max) = states.max_producer_id() {
            self.shared.producer_ids.note(max);
        }
        self.producers.install(key, states);
        for (path, why) in &r.passed_over {
            tracing::warn!(shard = self.id, topic, partition = p, file = %path.display(), reason = %why, "producer-state snapshot passed over; replaying more of the log");
        }
        if let Some(why) = &r.stopped {
            self.metrics().count_background_error("producer_rebuild");
            tracing::error!(
                shard = self.id,
                topic,
                partition = p,
                from_offset = r.from_offset,
                to_offset = r.to_offset,
                reason = %why,
                "producer-state replay stopped early: retries of later batches may be stored twice"
            );
        } else if r.frames > 0 || r.snapshot_offset.is_some() {
            tracing::info!(
                shard = self.id,
                topic,
                partition = p,
                snapshot_offset = r.snapshot_offset.map_or(-1, |o| o as i64),
                replayed_from = r.from_offset,
                replayed_to = r.to_offset,
                frames = r.frames,
                producer_frames = r.producer_frames,
                bytes = r.bytes,
                producers = r.producers,
                expired = r.expired,
                took_ms = r.took_ms,
                "producer state rebuilt"
            );
        }
    }

    /// Single node: writes the producer-state snapshots that are due
    /// (every [`PRODUCER_SNAPSHOT_CHECK_MS`]) and drops expired producers
    /// (every [`PRODUCER_ID_EXPIRATION_CHECK_MS`]) until shutdown. One task
    /// per shard; each snapshot is a job of its own partition that holds no
    /// lock across its I/O (`producer_recovery::write_snapshot`).
    ///
    /// [`PRODUCER_SNAPSHOT_CHECK_MS`]: crate::limits::PRODUCER_SNAPSHOT_CHECK_MS
    /// [`PRODUCER_ID_EXPIRATION_CHECK_MS`]: crate::limits::PRODUCER_ID_EXPIRATION_CHECK_MS
    pub async fn producer_upkeep(self: Rc<Self>) {
        use crate::limits::{PRODUCER_ID_EXPIRATION_CHECK_MS, PRODUCER_SNAPSHOT_CHECK_MS};
        let mut since_expiry_ms = 0u64;
        loop {
            let sleep = async {
                glommio::timer::sleep(std::time::Duration::from_millis(PRODUCER_SNAPSHOT_CHECK_MS))
                    .await;
                false
            };
            let stop = async {
                self.shutdown.wait().await;
                true
            };
            if futures_lite::future::or(stop, sleep).await {
                return;
            }
            self.write_due_snapshots().await;
            since_expiry_ms += PRODUCER_SNAPSHOT_CHECK_MS;
            if since_expiry_ms >= PRODUCER_ID_EXPIRATION_CHECK_MS {
                since_expiry_ms = 0;
                self.expire_producers();
            }
        }
    }

    /// Single node: the log cleaner of this shard's compacted partitions
    /// (`cleanup.policy` compact or compact,delete). Every
    /// [`CLEANER_CHECK_MS`] it offers each such partition a pass
    /// (`Partition::compact`: the engine's planner decides whether one is
    /// due), one partition at a time, paced at [`CLEANER_IO_BYTES_PER_SEC`]
    /// for the shard, until shutdown.
    ///
    /// [`CLEANER_CHECK_MS`]: crate::limits::CLEANER_CHECK_MS
    /// [`CLEANER_IO_BYTES_PER_SEC`]: crate::limits::CLEANER_IO_BYTES_PER_SEC
    pub async fn cleaner_upkeep(self: Rc<Self>) {
        use crate::limits::{CLEANER_CHECK_MS, CLEANER_IO_BYTES_PER_SEC, CLEANER_MAP_BYTES_MAX};
        loop {
            let sleep = async {
                glommio::timer::sleep(std::time::Duration::from_millis(CLEANER_CHECK_MS)).await;
                false
            };
            let stop = async {
                self.shutdown.wait().await;
                true
            };
            if futures_lite::future::or(stop, sleep).await {
                return;
            }
            let compacted: Vec<(
                (String, u32),
                Partition,
                strom_engine::compaction::CompactionConfig,
            )> = {
                let meta = self.metadata.borrow();
                self.partitions
                    .borrow()
                    .iter()
                    .filter(|(_, s)| !s.reopening)
                    .filter_map(|((topic, p), s)| {
                        let t = meta.topics.get(topic).filter(|t| t.id == s.topic_id)?;
                        let mut cfg = metadata::compaction_config(&t.configs).ok()??;
                        cfg.map_bytes_max = CLEANER_MAP_BYTES_MAX;
                        Some(((topic.clone(), *p), s.partition.clone(), cfg))
                    })
                    .collect()
            };
            for ((topic, p), part, cfg) in compacted {
                if self.shutdown.is_fired() {
                    return;
                }
                let mut throttle = crate::engine::RateThrottle::new(CLEANER_IO_BYTES_PER_SEC);
                let stop = async {
                    self.shutdown.wait().await;
                    None
                };
                let pass = async { Some(part.compact(&cfg, &mut throttle).await) };
                match futures_lite::future::or(stop, pass).await {
                    None => return,
                    Some(Ok(Some(run))) => {
                        tracing::info!(shard = self.id, %topic, partition = p, bytes_read = run.bytes_read, bytes_written = run.bytes_written, records_removed = run.records_removed, segments = run.segments_swapped, completed = run.completed, dirty_ratio = run.dirty_ratio, "compaction pass");
                    }
                    Some(Ok(None)) => {}
                    Some(Err(e)) => {
                        if matches!(e, crate::engine::EngineError::Failed { .. }) {
                            let _ = self.engine_error(&topic, p, &e);
                        } else if !matches!(e, crate::engine::EngineError::Closed) {
                            self.metrics().count_background_error("compaction");
                            tracing::warn!(shard = self.id, %topic, partition = p, error = %e, "compaction pass failed; retried at the next check");
                        }
                    }
                }
            }
        }
    }

    /// One round of [`Shard::producer_upkeep`]'s snapshots. A snapshot
    /// that is due is taken in memory at the high watermark; it is written
    /// once the log is durable past it by itself (a roll syncs the closed
    /// segment; durable produces and the flush policy sync too), so the
    /// upkeep never forces an fdatasync onto acks=leader traffic. Until
    /// then no newer one is taken (a newer one would always be ahead of
    /// the durable offset under steady acks=leader load).
    async fn write_due_snapshots(self: &Rc<Self>) {
        use crate::producer_recovery::{take_snapshot, write_pending};
        let now_ms = crate::engine::partition::now_ms();
        /// (topic, partition), topic id, instance, log, pending snapshot.
        type Due = (
            (String, u32),
            u64,
            u64,
            Partition,
            Option<Rc<crate::producer_recovery::PendingSnapshot>>,
        );
        let due: Vec<Due> = self
            .partitions
            .borrow()
            .iter()
            .filter(|(_, s)| {
                let st = s.partition.stats();
                let o = s.partition.offsets();
                !s.reopening
                    && now_ms >= s.snapshots.not_before_ms
                    && match &s.pending_snapshot {
                        Some(p) => p.writable(o.durable_offset),
                        None => {
                            s.snapshots
                                .due(o.high_watermark, st.appended_bytes, st.segments_rolled)
                        }
                    }
            })
            .map(|(k, s)| {
                (
                    k.clone(),
                    s.topic_id,
                    s.instance,
                    s.partition.clone(),
                    s.pending_snapshot.clone(),
                )
            })
            .collect();
        for ((topic, p), topic_id, instance, part, pending) in due {
            if self.shutdown.is_fired() {
                return;
            }
            let key = PartitionKey {
                topic_id,
                partition: p,
            };
            let pending = match pending {
                Some(pending) => pending,
                None => match take_snapshot(&self.producers, key, &part).await {
                    Ok(taken) => {
                        let taken = Rc::new(taken);
                        if !taken.writable(part.offsets().durable_offset) {
                            let mut parts = self.partitions.borrow_mut();
                            if let Some(slot) = parts
                                .get_mut(&(topic.clone(), p))
                                .filter(|s| s.instance == instance)
                            {
                                slot.pending_snapshot = Some(taken);
                            }
                            continue;
                        }
                        taken
                    }
                    Err(_) => continue,
                },
            };
            let r = write_pending(&part, &pending).await;
            let mut parts = self.partitions.borrow_mut();
            let slot = parts
                .get_mut(&(topic.clone(), p))
                .filter(|s| s.instance == instance);
            match (r, slot) {
                (Ok(offset), Some(slot)) => {
                    slot.pending_snapshot = None;
                    slot.snapshots = SnapshotMark::written(
                        offset,
                        pending.appended_bytes,
                        pending.segments_rolled,
                    );
                }
                (Ok(_), None) => {}
                (Err(e), slot) => {
                    if let Some(slot) = slot {
                        // Taken again when next due, from fresh state.
                        slot.pending_snapshot = None;
                        slot.snapshots.postpone(now_ms);
                    }
                    drop(parts);
                    if matches!(e, crate::engine::EngineError::Failed { .. }) {
                        // The log failed: reopen it, as a produce would.
                        let _ = self.engine_error(&topic, p, &e);
                    } else if !matches!(
                        e,
                        crate::engine::EngineError::Closed
                            | crate::engine::EngineError::Truncated { .. }
                    ) {
                        self.metrics().count_background_error("producer_snapshot");
                        tracing::warn!(shard = self.id, %topic, partition = p, error = %e, "producer-state snapshot failed; retried later");
                    }
                }
            }
        }
    }

    /// Drops the producers expired by time, or whose batches all lie below
    /// their partition's log start (Kafka's rules).
    fn expire_producers(&self) {
        let starts: HashMap<PartitionKey, u64> = self
            .partitions
            .borrow()
            .iter()
            .map(|((_, p), s)| {
                (
                    PartitionKey {
                        topic_id: s.topic_id,
                        partition: *p,
                    },
                    s.partition.offsets().log_start_offset,
                )
            })
            .collect();
        let gone = self
            .producers
            .expire(crate::engine::partition::now_ms(), |k| {
                starts.get(&k).copied()
            });
        if gone > 0 {
            tracing::info!(
                shard = self.id,
                producers = gone,
                left = self.producers.len(),
                "expired idempotent producers dropped"
            );
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
        // Read (and announce) an injected fault at start-up.
        let _ = partition_fault();
        // The placement is fixed for the life of the process.
        assert_eq!(
            new.placement(),
            self.placement(),
            "placement changed while running"
        );
        let old = self.metadata.borrow().clone();
        if self.replication.is_some() {
            self.apply_replicated(&new).await;
            *self.metadata.borrow_mut() = new;
            self.groups.set_topics(self);
            return;
        }
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
                if let Err(e) = crate::engine::remove_partition_dir_on(&self.storage, &dir).await {
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
                        if let Err(e) =
                            crate::engine::remove_partition_dir_on(&self.storage, &dir).await
                        {
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
                        match Partition::open_on(self.storage.clone(), &dir, config.clone(), true)
                            .await
                        {
                            Ok(part) => {
                                log_recovery(self.id, &t.name, p, &part);
                                // Producer state first: the slot takes
                                // requests once it is inserted.
                                let pkey = PartitionKey {
                                    topic_id: t.id,
                                    partition: p,
                                };
                                let (states, report) = crate::producer_recovery::rebuild(
                                    &part,
                                    pkey,
                                    self.producers.capacity(),
                                    crate::engine::partition::now_ms(),
                                )
                                .await;
                                self.install_producers(&t.name, p, pkey, states, &report);
                                self.partitions.borrow_mut().insert(
                                    key,
                                    PartitionSlot {
                                        topic_id: t.id,
                                        partition: part,
                                        traffic: PartitionTraffic::default(),
                                        reopening: false,
                                        snapshots: SnapshotMark::opened(
                                            report.snapshot_offset,
                                            report.bytes,
                                        ),
                                        pending_snapshot: None,
                                        instance: self.next_instance(),
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

    /// Cluster mode: brings the Raft groups of this shard in line with
    /// `new`: removes (and deletes the files of) those whose topic is gone
    /// or was re-created, adds those it now names. Opening a group that
    /// fails is said and retried at the next metadata change.
    async fn apply_replicated(&self, new: &Metadata) {
        let node = &self.replication.as_ref().expect("cluster mode").node;
        let gone: Vec<((String, u32), u64)> = self
            .replicated
            .borrow()
            .iter()
            .filter(|((name, p), (topic_id, _))| match new.topics.get(name) {
                None => true,
                Some(t) => t.id != *topic_id || *p >= t.partitions,
            })
            .map(|(k, (_, g))| (k.clone(), *g))
            .collect();
        for (key, group) in gone {
            self.replicated.borrow_mut().remove(&key);
            if let Err(e) = node.remove_group(group).await {
                self.metrics().count_background_error("close_partition");
                tracing::error!(shard = self.id, topic = %key.0, partition = key.1, error = %e, "closing a replica failed");
            }
            let dir = metadata::partition_dir(&self.data_dir, &key.0, key.1);
            let removed = glommio::executor()
                .spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                })
                .await;
            if let Err(e) = removed {
                self.metrics()
                    .count_background_error("remove_partition_dir");
                tracing::error!(shard = self.id, topic = %key.0, partition = key.1, error = %e, "removing a replica's directory failed");
            }
        }
        for t in new.topics.values() {
            for p in 0..t.partitions {
                if self.placement().partition_owner(t.id, p) != self.id {
                    continue;
                }
                let key = (t.name.clone(), p);
                if self.replicated.borrow().contains_key(&key) {
                    continue;
                }
                let group = crate::cluster::partition_group(t.id, p);
                let dir = metadata::partition_dir(&self.data_dir, &t.name, p);
                match node.add_group(group, &dir).await {
                    Ok(()) => {
                        self.replicated.borrow_mut().insert(key, (t.id, group));
                    }
                    Err(e) => {
                        self.metrics().count_background_error("open_partition");
                        tracing::error!(shard = self.id, topic = %t.name, partition = p, error = %e, "opening a replica failed");
                    }
                }
            }
        }
    }

    pub async fn close_all(&self) {
        if let Some(r) = &self.replication {
            if let Err(e) = r.node.shutdown().await {
                tracing::error!(shard = self.id, error = %e, "closing the replicas failed");
            }
        }
        let all: Vec<_> = self.partitions.borrow_mut().drain().collect();
        for ((topic, p), slot) in all {
            // A last producer-state snapshot, so that the next open replays
            // nothing (connections are drained: no produce is in flight).
            let o = slot.partition.offsets();
            if !slot.reopening
                && slot
                    .snapshots
                    .due_at_close(o.log_start_offset, o.high_watermark)
            {
                let key = PartitionKey {
                    topic_id: slot.topic_id,
                    partition: p,
                };
                let written =
                    crate::producer_recovery::write_snapshot(&self.producers, key, &slot.partition)
                        .await;
                if let Err(e) = written {
                    self.metrics().count_background_error("producer_snapshot");
                    tracing::warn!(shard = self.id, %topic, partition = p, error = %e, "producer-state snapshot at close failed; the next open replays more of the log");
                }
            }
            if let Err(e) = slot.partition.close().await {
                tracing::error!(shard = self.id, %topic, partition = p, error = %e, "closing partition failed");
            }
        }
    }
}

/// How long to wait after failed reopen attempt `attempt` (1-based): the
/// minimum, doubling each time, at most the maximum.
pub fn reopen_backoff_ms(attempt: u32) -> u64 {
    let doublings = attempt.saturating_sub(1).min(63);
    PARTITION_REOPEN_BACKOFF_MIN_MS
        .saturating_mul(1u64 << doublings)
        .min(PARTITION_REOPEN_BACKOFF_MAX_MS)
}

/// The environment variable that injects a [`PartitionFault`]. Tests only:
/// it makes a healthy server fail a partition on purpose.
pub const PARTITION_FAULT_ENV: &str = "STROM_TEST_PARTITION_FAULT";

/// A failed partition log, injected so that tests can show how a shard
/// recovers from one (as from a failed fdatasync or write, after which the
/// engine refuses writes until the log is reopened). Read once, at the
/// first metadata apply, from [`PARTITION_FAULT_ENV`]; fires once per
/// process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionFault {
    pub topic: String,
    pub partition: u32,
    /// The log fails once this many records were appended to it in this
    /// process.
    pub after_records: u64,
    /// Then this many attempts to reopen it fail (as if the disk were still
    /// broken) before one is let through.
    pub failed_reopens: u32,
}

impl PartitionFault {
    /// Parses `TOPIC:PARTITION:AFTER_RECORDS[:FAILED_REOPENS]`.
    pub fn parse(s: &str) -> Result<PartitionFault, String> {
        let bad = || {
            format!(
                "{PARTITION_FAULT_ENV}={s:?}: expected TOPIC:PARTITION:AFTER_RECORDS[:FAILED_REOPENS]"
            )
        };
        let parts: Vec<&str> = s.split(':').collect();
        if !(3..=4).contains(&parts.len()) || parts[0].is_empty() {
            return Err(bad());
        }
        Ok(PartitionFault {
            topic: parts[0].to_owned(),
            partition: parts[1].parse().map_err(|_| bad())?,
            after_records: parts[2].parse().map_err(|_| bad())?,
            failed_reopens: match parts.get(3) {
                Some(n) => n.parse().map_err(|_| bad())?,
                None => 0,
            },
        })
    }
}

/// Whether the [`PartitionFault`] has fired (it fires once per process).
static FAULT_FIRED: AtomicBool = AtomicBool::new(false);

/// The injected [`PartitionFault`], if any (the environment is read once).
fn partition_fault() -> Option<&'static PartitionFault> {
    static FAULT: OnceLock<Option<PartitionFault>> = OnceLock::new();
    FAULT
        .get_or_init(|| crate::config::fault_from_env(PARTITION_FAULT_ENV, PartitionFault::parse))
        .as_ref()
}

/// One line per opened partition: what recovery found and did.
/// Accepts connections on `listener` until shutdown and serves each in a
/// task of its own with `serve`; past `CONNECTIONS_PER_SHARD_MAX` open
/// connections a new one is counted, reported and closed. Every listener
/// of a shard (native, its direct port, Kafka) runs this.
pub async fn accept_until_shutdown<F, Fut>(
    shard: &Rc<Shard>,
    listener: glommio::net::TcpListener,
    protocol: crate::metrics::Protocol,
    tls: Option<crate::tls::TlsServer>,
    serve: F,
) where
    F: Fn(Rc<Shard>, crate::tls::Stream) -> Fut + Clone + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    use crate::limits::CONNECTIONS_PER_SHARD_MAX;
    loop {
        let accept = async { Some(listener.accept().await) };
        let stop = async {
            shard.shutdown.wait().await;
            None
        };
        let Some(res) = futures_lite::future::or(stop, accept).await else {
            return;
        };
        let stream = match res {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(shard = shard.id, ?protocol, error = %e, "accept failed");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        if shard.connections.get() >= CONNECTIONS_PER_SHARD_MAX {
            ShardMetrics::add(&shard.metrics().connections_refused, 1);
            shard.metrics().client_error(
                shard.id,
                protocol,
                "connect",
                "ConnectionLimit",
                &format!("refused: {CONNECTIONS_PER_SHARD_MAX} connections open on this shard"),
            );
            drop(stream);
            continue;
        }
        let Some(tls) = &tls else {
            glommio::spawn_local(serve(shard.clone(), crate::tls::Stream::plain(stream))).detach();
            continue;
        };
        // The handshake runs in the connection's own task, bounded in time
        // and in number per shard (`crate::tls`); a failure closes this
        // connection only.
        let (tls, shard, serve) = (tls.clone(), shard.clone(), serve.clone());
        glommio::spawn_local(async move {
            let peer = stream.peer_addr().ok();
            match crate::tls::accept(&tls, stream).await {
                Ok(s) => serve(shard, s).await,
                Err(e) => {
                    ShardMetrics::add(&shard.metrics().connections_refused, 1);
                    shard.metrics().client_error(
                        shard.id,
                        protocol,
                        "tls",
                        "TlsHandshake",
                        &format!("{e} (peer {peer:?})"),
                    );
                }
            }
        })
        .detach();
    }
}

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
    } else if r.created {
        tracing::info!(shard, topic, partition, "partition created");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopen_back_off_doubles_from_the_minimum_up_to_the_maximum() {
        assert_eq!(reopen_backoff_ms(1), PARTITION_REOPEN_BACKOFF_MIN_MS);
        assert_eq!(reopen_backoff_ms(2), 2 * PARTITION_REOPEN_BACKOFF_MIN_MS);
        assert_eq!(reopen_backoff_ms(3), 4 * PARTITION_REOPEN_BACKOFF_MIN_MS);
        let mut last = 0;
        for attempt in 1..200 {
            let ms = reopen_backoff_ms(attempt);
            assert!(ms >= last && ms <= PARTITION_REOPEN_BACKOFF_MAX_MS);
            last = ms;
        }
        assert_eq!(last, PARTITION_REOPEN_BACKOFF_MAX_MS);
        assert_eq!(reopen_backoff_ms(u32::MAX), PARTITION_REOPEN_BACKOFF_MAX_MS);
    }

    #[test]
    fn partition_faults_parse_and_bad_ones_are_refused() {
        assert_eq!(
            PartitionFault::parse("orders:3:20"),
            Ok(PartitionFault {
                topic: "orders".into(),
                partition: 3,
                after_records: 20,
                failed_reopens: 0,
            })
        );
        assert_eq!(
            PartitionFault::parse("a.b-c:0:1:2").map(|f| f.failed_reopens),
            Ok(2)
        );
        for bad in ["", "t", "t:0", ":0:1", "t:x:1", "t:0:-1", "t:0:1:2:3"] {
            assert!(PartitionFault::parse(bad).is_err(), "{bad:?}");
        }
    }
}
