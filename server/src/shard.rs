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

use crate::connection;
use crate::engine::Partition;
use crate::error::{ServerError, WireError};
use crate::limits::*;
use crate::metadata::{self, Metadata, Placement};
use crate::metrics::{PartitionSnapshot, PartitionTraffic, ShardMetrics, ShardSnapshot};
use crate::router::{MeshMsg, Router};
use crate::shutdown::Event;
use glommio::channels::channel_mesh::{MeshBuilder, Receivers};
use glommio::net::TcpListener;
use glommio::sync::Semaphore;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

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

/// What start-up hands one shard.
pub struct ShardStart {
    pub id: usize,
    pub listen: SocketAddr,
    /// Shard 0 only: the HTTP address.
    pub http: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    pub mesh: Option<MeshBuilder<MeshMsg, glommio::channels::channel_mesh::Full>>,
    /// Where to report the bound addresses (native, http) or a failure.
    pub bound: std::sync::mpsc::Sender<Result<(SocketAddr, Option<SocketAddr>), String>>,
    /// Where to report readiness (partitions open) or a failure.
    pub ready: std::sync::mpsc::Sender<Result<usize, String>>,
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

    async fn close_all(&self) {
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

fn bind_err(addr: SocketAddr, e: impl std::fmt::Display) -> String {
    ServerError::Bind {
        addr: addr.to_string(),
        reason: e.to_string(),
    }
    .to_string()
}

/// Counts a shard's exit, even by panic, so that the main thread notices.
struct ExitGuard(Arc<Shared>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        self.0.exited.fetch_add(1, Ordering::SeqCst);
    }
}

/// The body of one shard's executor.
pub async fn run(start: ShardStart) {
    let _exit = ExitGuard(start.shared.clone());
    let ShardStart {
        id,
        listen,
        http,
        shared,
        mesh,
        bound,
        ready,
    } = start;
    if let Some(max) = crate::config::engine_defaults().shard_cache_bytes_max {
        strom_engine::log::set_shard_cache_bytes_max(max);
    }
    // A periodic timer from the first moment: twice under heavy load a
    // start-up hung with both executors asleep in io_uring wait although
    // work was pending (a wake-up from another thread, e.g. a spawn_blocking
    // completion, was lost; attaching a debugger woke it). A timer bounds
    // the cost of such a loss to one tick. Mitigation, not a root cause fix.
    glommio::spawn_local(async {
        loop {
            glommio::timer::sleep(Duration::from_millis(REACTOR_NUDGE_MS)).await;
        }
    })
    .detach();
    // Bind first so that shard 0 can report the real port (port 0 works).
    let listener = match TcpListener::bind(listen) {
        Ok(l) => l,
        Err(e) => {
            let _ = bound.send(Err(bind_err(listen, e)));
            return;
        }
    };
    let http_listener = match http.map(TcpListener::bind).transpose() {
        Ok(l) => l,
        Err(e) => {
            let _ = bound.send(Err(bind_err(http.expect("http addr"), e)));
            return;
        }
    };
    // Every shard binds the Kafka port shard 0 got (recorded in `shared`).
    let kafka_listener = match crate::kafka::bind(&shared.kafka) {
        Ok(l) => l,
        Err(e) => {
            let _ = bound.send(Err(e));
            return;
        }
    };
    let native = listener.local_addr().unwrap_or(listen);
    let http_addr = http_listener.as_ref().and_then(|l| l.local_addr().ok());
    let _ = bound.send(Ok((native, http_addr)));

    // Join the mesh and learn every shard's peer id.
    let (senders, receivers) = match mesh {
        Some(m) => match m.join().await {
            Ok((s, r)) => (Some(s), Some(r)),
            Err(_) => {
                let _ = ready.send(Err(format!("shard {id}: joining the mesh failed")));
                return;
            }
        },
        None => (None, None),
    };
    if let Some(s) = &senders {
        shared.peers[id].store(s.peer_id(), Ordering::SeqCst);
    } else {
        shared.peers[id].store(0, Ordering::SeqCst);
    }
    while shared
        .peers
        .iter()
        .any(|p| p.load(Ordering::SeqCst) == usize::MAX)
    {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(shared.placement.shards, shared.shards);
    let peer_of = shared
        .peers
        .iter()
        .map(|p| p.load(Ordering::SeqCst))
        .collect();
    let shard = Rc::new(Shard {
        id,
        shards: shared.shards,
        data_dir: shared.data_dir.clone(),
        metadata: RefCell::new(Metadata {
            shard_count: shared.shards as u32,
            placement_epoch: shared.placement.epoch,
            offsets_partitions: shared.placement.offsets_partitions,
            ..Metadata::default()
        }),
        partitions: RefCell::new(HashMap::new()),
        router: Router::new(id, senders, peer_of),
        groups: crate::group::service::GroupShard::new(
            shared.group_config.clone(),
            shared.placement,
        ),
        shared: shared.clone(),
        admin_lock: Semaphore::new(1),
        apply_lock: Semaphore::new(1),
        connections: Cell::new(0),
        shutdown: Event::default(),
        kafka: crate::kafka::KafkaShard::default(),
        metrics: ShardMetrics::default(),
    });
    if let Some(r) = receivers {
        serve_mesh(&shard, r);
    }
    // HTTP first, so that /health and a 503 /ready answer during start-up.
    if let Some(h) = http_listener {
        glommio::spawn_local(crate::http::serve(h, shard.clone())).detach();
    }
    shard.apply(shared.initial_metadata.clone()).await;
    shard.groups.load(&shard).await;
    tracing::debug!(
        shard = id,
        partitions = shard.partitions.borrow().len(),
        "shard ready"
    );
    shared.ready.fetch_add(1, Ordering::SeqCst);
    let _ = ready.send(Ok(id));

    // Watch the process-wide flag.
    let watcher = {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while !shard.shared.shutdown.load(Ordering::SeqCst) {
                glommio::timer::sleep(Duration::from_millis(SHUTDOWN_POLL_MS)).await;
            }
            shard.shutdown.fire();
        })
    };
    if let Some(k) = kafka_listener {
        glommio::spawn_local(crate::kafka::serve(shard.clone(), k)).detach();
    }
    accept_loop(&shard, listener).await;
    watcher.await;

    // Drain: connections finish their in-flight requests and close.
    let deadline = std::time::Instant::now() + Duration::from_millis(SHUTDOWN_DRAIN_MS);
    while shard.connections.get() > 0 && std::time::Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    // Keep serving the mesh until every shard has drained.
    shared.drained.fetch_add(1, Ordering::SeqCst);
    while shared.drained.load(Ordering::SeqCst) < shared.shards
        && std::time::Instant::now() < deadline
    {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    shard.close_all().await;
    shard.groups.close().await;
}

async fn accept_loop(shard: &Rc<Shard>, listener: TcpListener) {
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
                tracing::warn!(shard = shard.id, error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if shard.connections.get() >= CONNECTIONS_PER_SHARD_MAX {
            ShardMetrics::add(&shard.metrics().connections_refused, 1);
            shard.metrics().client_error(
                shard.id,
                crate::metrics::Protocol::Native,
                "connect",
                "ConnectionLimit",
                &format!("refused: {CONNECTIONS_PER_SHARD_MAX} connections open on this shard"),
            );
            drop(stream);
            continue;
        }
        glommio::spawn_local(connection::serve(shard.clone(), stream)).detach();
    }
}

/// One task per peer: answers go to their waiting call; each call runs in
/// its own task so that this loop never waits on a send.
fn serve_mesh(shard: &Rc<Shard>, mut receivers: Receivers<MeshMsg>) {
    for (peer, rx) in receivers.streams() {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                match msg {
                    MeshMsg::Reply { id, reply } => shard.router.complete(id, reply),
                    MeshMsg::Call { id, op } => {
                        let shard = shard.clone();
                        glommio::spawn_local(async move {
                            let reply = crate::execute::execute(&shard, op).await;
                            shard.router.answer(peer, id, reply).await;
                        })
                        .detach();
                    }
                }
            }
        })
        .detach();
    }
}
