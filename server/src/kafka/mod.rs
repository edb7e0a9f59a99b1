//! The Kafka wire protocol at the edge: a second listener on every shard
//! (SO_REUSEPORT, like the native one) that speaks Kafka to unmodified Kafka
//! clients, on the same shards, engine, metadata and routing.
//!
//! Layout:
//! - `codec.rs`: framing (4-byte size prefix), request heads, the supported
//!   API table, response encoding (header version per API and version).
//!   I/O-free.
//! - `translate.rs`: Kafka record batches (any codec) to Strom frames on
//!   produce, Strom frames to uncompressed Kafka record batches v2 on fetch.
//!   I/O-free. One canonical on-disk format: the Strom frame.
//! - `idempotence.rs`: producer id / epoch / sequence checks per partition.
//!   I/O-free.
//! - `fanout.rs`: what each partition of a produce request is answered
//!   with, from the replies of the shards it went to. I/O-free.
//! - `decompress.rs`: codecs with a bound on the expanded size (a batch
//!   that would expand past it is refused, not inflated). I/O-free.
//! - `groups.rs`: the group APIs, translated onto the shared coordinator.
//! - `connection.rs`: one client connection; answers in request order.
//! - `handlers.rs`: one function per API, routing per partition to the
//!   owning shard through `handlers::call` / `fan_out` and [`KafkaOp`].
//!
//! Invariants:
//! - Idempotence state of a partition lives on the shard that owns it and is
//!   checked and updated with the append under one per-partition lane, so
//!   the log order of a producer's batches is their sequence order.
//! - That state and those lanes are keyed by topic id, never by name, and
//!   dropped when a metadata change removes their topic; producer state is
//!   bounded per shard (least recently used evicted). A state recorded by
//!   an append that was in flight across the delete is only evicted.
//! - Nothing here panics on input bytes; every failure is a Kafka error code.

pub mod codec;
pub mod connection;
pub mod decompress;
pub mod fanout;
pub mod groups;
pub mod handlers;
pub mod idempotence;
pub mod translate;

use crate::engine::Durability;
use crate::error::engine_to_wire;
use crate::shard::Shard;
use bytes::BytesMut;
use glommio::net::TcpListener;
use glommio::sync::Semaphore;
use idempotence::{Check, PartitionKey, ProducerBatch, ProducerStates};
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The Kafka listener's settings (from `config.rs`).
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `None`: no Kafka listener.
    pub listen: Option<SocketAddr>,
    /// Host and port told to clients; `None`: the address they connected to.
    pub advertise: Option<(String, u16)>,
    pub auto_create: bool,
    pub default_partitions: u32,
}

/// Parses `HOST:PORT` for `--kafka-advertise` (the host is not resolved).
pub fn parse_advertise(s: &str) -> Result<(String, u16), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("--kafka-advertise {s:?}: expected HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("--kafka-advertise {s:?}: bad port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return Err(format!("--kafka-advertise {s:?}: expected HOST:PORT"));
    }
    Ok((host.to_owned(), port))
}

/// Process-wide Kafka state, shared by every shard.
pub struct KafkaShared {
    pub config: KafkaConfig,
    /// The address shard 0 bound (the port every other shard binds too).
    bound: Mutex<Option<SocketAddr>>,
    next_producer_id: AtomicI64,
    /// A test-only fault in the produce path (see [`ProduceFault`]).
    produce_fault: Option<ProduceFault>,
}

impl KafkaShared {
    pub fn new(config: KafkaConfig) -> KafkaShared {
        // Producer ids stay unique across restarts without being stored:
        // the start time in ms, shifted past 2^20 allocations per run.
        let start_ms = crate::engine::partition::now_ms().max(1);
        KafkaShared {
            config,
            bound: Mutex::new(None),
            next_producer_id: AtomicI64::new(start_ms << 20),
            produce_fault: ProduceFault::from_env(),
        }
    }

    pub fn bound(&self) -> Option<SocketAddr> {
        *self.bound.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn allocate_producer_id(&self) -> i64 {
        self.next_producer_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// The environment variable that injects a [`ProduceFault`]. Tests only:
/// it makes a healthy server misbehave on purpose.
pub const PRODUCE_FAULT_ENV: &str = "STROM_TEST_KAFKA_PRODUCE_FAULT";

/// A fault injected into the owner side of Kafka produce, so that tests can
/// show what the coordinator makes of one shard failing while others
/// succeed. Read once at start-up from [`PRODUCE_FAULT_ENV`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProduceFault {
    /// `fail:SHARD`: that shard answers every Kafka produce op with a
    /// shard-level failure (as a dropped mesh call does), appending nothing.
    Fail { shard: usize },
    /// `delay:SHARD:MS`: that shard starts every Kafka produce op MS late (as
    /// a stalled disk would), then appends as usual.
    Delay { shard: usize, delay_ms: u64 },
}

impl ProduceFault {
    /// Parses `fail:SHARD` or `delay:SHARD:MS`.
    pub fn parse(s: &str) -> Result<ProduceFault, String> {
        let bad = || format!("{PRODUCE_FAULT_ENV}={s:?}: expected fail:SHARD or delay:SHARD:MS");
        let mut it = s.split(':');
        let kind = it.next().ok_or_else(bad)?;
        let shard: usize = it.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        let fault = match kind {
            "fail" => ProduceFault::Fail { shard },
            "delay" => ProduceFault::Delay {
                shard,
                delay_ms: it.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?,
            },
            _ => return Err(bad()),
        };
        if it.next().is_some() {
            return Err(bad());
        }
        Ok(fault)
    }

    fn from_env() -> Option<ProduceFault> {
        let v = std::env::var(PRODUCE_FAULT_ENV).ok()?;
        match ProduceFault::parse(&v) {
            Ok(f) => {
                eprintln!("warning: {PRODUCE_FAULT_ENV}: injecting {f:?} (tests only)");
                Some(f)
            }
            Err(e) => {
                eprintln!("warning: {e}; no fault injected");
                None
            }
        }
    }
}

/// Binds the Kafka listener on this shard: the configured address on the
/// first shard, the port it got on every later one.
pub fn bind(shared: &KafkaShared) -> Result<Option<TcpListener>, String> {
    let Some(configured) = shared.config.listen else {
        return Ok(None);
    };
    let mut bound = shared.bound.lock().unwrap_or_else(|e| e.into_inner());
    let addr = bound.unwrap_or(configured);
    let listener = TcpListener::bind(addr).map_err(|e| {
        crate::error::ServerError::Bind {
            addr: addr.to_string(),
            reason: e.to_string(),
        }
        .to_string()
    })?;
    if bound.is_none() {
        *bound = Some(listener.local_addr().unwrap_or(addr));
    }
    Ok(Some(listener))
}

/// Accepts Kafka connections until shutdown.
pub async fn serve(shard: Rc<Shard>, listener: TcpListener) {
    crate::shard::accept_until_shutdown(
        &shard,
        listener,
        crate::metrics::Protocol::Kafka,
        connection::serve,
    )
    .await;
}

/// Per-shard Kafka state: idempotent producers of the partitions it owns,
/// and the lanes that order their appends. Both are keyed by topic id (a
/// re-created topic shares nothing with the deleted one) and dropped with
/// their topic ([`KafkaShard::retain_topics`]); producer states are bounded
/// (see `idempotence.rs`), lanes by the partitions the shard owns.
#[derive(Default)]
pub struct KafkaShard {
    producers: RefCell<ProducerStates>,
    lanes: RefCell<HashMap<PartitionKey, Rc<Semaphore>>>,
}

impl KafkaShard {
    fn lane(&self, key: PartitionKey) -> Rc<Semaphore> {
        self.lanes
            .borrow_mut()
            .entry(key)
            .or_insert_with(|| Rc::new(Semaphore::new(1)))
            .clone()
    }

    fn check(&self, key: PartitionKey, b: &ProducerBatch) -> Check {
        self.producers.borrow().check(key, b)
    }

    fn record(&self, key: PartitionKey, b: &ProducerBatch, base: u64, last: u64) {
        self.producers.borrow_mut().record(key, b, base, last);
    }

    /// Forgets the idempotent-producer batches of a reopened partition that
    /// its recovered log no longer holds (see `ProducerStates::forget_from`).
    pub fn forget_from(&self, key: PartitionKey, offset: u64) {
        let dropped = self.producers.borrow_mut().forget_from(key, offset);
        if dropped > 0 {
            tracing::warn!(
                topic_id = key.topic_id,
                partition = key.partition,
                batches = dropped,
                "kafka: producer batches past the reopened log's end forgotten"
            );
        }
    }

    /// Drops the producer state and lanes of every topic not in `meta`
    /// (called once a metadata change is applied: deleted topics, and the
    /// old incarnation of re-created ones, go).
    pub fn retain_topics(&self, meta: &crate::metadata::Metadata) {
        let live: std::collections::HashSet<u64> = meta.topics.values().map(|t| t.id).collect();
        let dropped = self
            .producers
            .borrow_mut()
            .retain_topics(|id| live.contains(&id));
        // A lane still held by an append in flight lives on in its Rc.
        self.lanes
            .borrow_mut()
            .retain(|k, _| live.contains(&k.topic_id));
        if dropped > 0 {
            tracing::debug!(
                states = dropped,
                "kafka: producer state of deleted topics dropped"
            );
        }
    }
}

/// One translated Kafka batch for one partition.
pub struct KafkaProduceItem {
    /// Position of its partition in the request (several batches may share it).
    pub index: usize,
    pub topic: String,
    pub partition: u32,
    pub frame: BytesMut,
    /// Set for batches of an idempotent producer.
    pub producer: Option<ProducerBatch>,
}

/// What an append of one batch came to, in Kafka terms.
#[derive(Debug, Clone, Default)]
pub struct ProduceOutcome {
    pub error_code: i16,
    pub message: Option<String>,
    pub base_offset: i64,
    pub log_append_time_ms: i64,
    pub log_start_offset: i64,
}

pub enum KafkaOp {
    Produce {
        items: Vec<KafkaProduceItem>,
        durability: Durability,
    },
    /// (index, topic, partition, offset): -1 means the high watermark.
    DeleteRecords {
        items: Vec<(usize, String, u32, i64)>,
    },
}

pub enum KafkaReply {
    Produce(Vec<(usize, ProduceOutcome)>),
    /// The whole op failed on its shard (only an injected [`ProduceFault`]
    /// answers this way today; the mesh answers `Reply::Failed`).
    Failed(crate::error::WireError),
    /// (index, error code, low watermark)
    DeleteRecords(Vec<(usize, i16, i64)>),
}

/// Owner side of a [`KafkaOp`].
pub async fn execute(shard: &Rc<Shard>, op: KafkaOp) -> KafkaReply {
    match op {
        KafkaOp::Produce { items, durability } => {
            match shard.shared.kafka.produce_fault {
                Some(ProduceFault::Fail { shard: s }) if s == shard.id => {
                    return KafkaReply::Failed(crate::error::WireError::new(
                        strom_flatbuffers::protocol::ErrorCode::Internal,
                        format!("shard {s}: injected fault ({PRODUCE_FAULT_ENV})"),
                    ));
                }
                Some(ProduceFault::Delay { shard: s, delay_ms }) if s == shard.id => {
                    glommio::timer::sleep(Duration::from_millis(delay_ms)).await;
                }
                _ => {}
            }
            KafkaReply::Produce(produce(shard, items, durability).await)
        }
        KafkaOp::DeleteRecords { items } => {
            let mut out = Vec::with_capacity(items.len());
            for (i, topic, p, offset) in items {
                let r = match shard.partition(&topic, p) {
                    Err(e) => (i, codec::wire_to_kafka(e.code), -1),
                    Ok(part) => {
                        let hw = part.offsets().high_watermark;
                        let target = if offset < 0 { hw } else { offset as u64 };
                        if target > hw {
                            (i, codec::OFFSET_OUT_OF_RANGE, -1)
                        } else {
                            match part.delete_records_before(target).await {
                                Ok(low) => (i, 0, low as i64),
                                Err(e) => {
                                    let w = engine_to_wire(&topic, p, &e);
                                    (i, codec::wire_to_kafka(w.code), -1)
                                }
                            }
                        }
                    }
                };
                out.push(r);
            }
            KafkaReply::DeleteRecords(out)
        }
    }
}

/// Appends each partition's batches in request order; partitions run
/// concurrently. Idempotent batches go through the partition's lane.
async fn produce(
    shard: &Rc<Shard>,
    items: Vec<KafkaProduceItem>,
    durability: Durability,
) -> Vec<(usize, ProduceOutcome)> {
    let mut groups: HashMap<(String, u32), Vec<KafkaProduceItem>> = HashMap::new();
    for it in items {
        groups
            .entry((it.topic.clone(), it.partition))
            .or_default()
            .push(it);
    }
    let mut tasks = Vec::with_capacity(groups.len());
    for ((topic, p), items) in groups {
        let shard = shard.clone();
        tasks.push(glommio::spawn_local(async move {
            let mut out = Vec::with_capacity(items.len());
            for it in items {
                let o = produce_one(&shard, &topic, p, it.frame, it.producer, durability).await;
                out.push((it.index, o));
            }
            out
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.extend(t.await);
    }
    out
}

/// The open partition and the key of its topic incarnation.
fn open_partition(
    shard: &Shard,
    topic: &str,
    p: u32,
) -> Result<(PartitionKey, crate::engine::Partition), crate::error::WireError> {
    if let Some(slot) = shard.partitions.borrow().get(&(topic.to_owned(), p)) {
        let key = PartitionKey {
            topic_id: slot.topic_id,
            partition: p,
        };
        return Ok((key, slot.partition.clone()));
    }
    // Not open here: the shard says why.
    Err(shard.partition(topic, p).err().unwrap_or_else(|| {
        crate::error::WireError::new(
            strom_flatbuffers::protocol::ErrorCode::Internal,
            format!("{topic}/{p}: open, but not in the partition table"),
        )
    }))
}

async fn produce_one(
    shard: &Rc<Shard>,
    topic: &str,
    p: u32,
    frame: BytesMut,
    producer: Option<ProducerBatch>,
    durability: Durability,
) -> ProduceOutcome {
    let (key, part) = match open_partition(shard, topic, p) {
        Ok(found) => found,
        Err(e) => {
            return ProduceOutcome {
                error_code: codec::wire_to_kafka(e.code),
                message: Some(e.message),
                base_offset: -1,
                ..Default::default()
            }
        }
    };
    let fail = |e: crate::engine::EngineError| {
        let w = shard.engine_error(topic, p, &e);
        ProduceOutcome {
            error_code: codec::wire_to_kafka(w.code),
            message: Some(w.message),
            base_offset: -1,
            ..Default::default()
        }
    };
    let Some(b) = producer else {
        let bytes = frame.len() as u64;
        return match part.append(frame, durability).await {
            Ok(info) => {
                shard.count_in(topic, p, info.last_offset + 1 - info.base_offset, bytes);
                ProduceOutcome {
                    base_offset: info.base_offset as i64,
                    log_append_time_ms: -1,
                    log_start_offset: part.offsets().log_start_offset as i64,
                    ..Default::default()
                }
            }
            Err(e) => fail(e),
        };
    };
    // Check, append (to memory) and record under the lane, so that batches
    // of one producer reach the log in sequence order; wait for durability
    // outside it, so that the lane never waits on a disk.
    let bytes = frame.len() as u64;
    let lane = shard.kafka.lane(key);
    let (base, last) = {
        let Ok(_permit) = lane.acquire_permit(1).await else {
            return ProduceOutcome {
                error_code: codec::UNKNOWN_SERVER_ERROR,
                base_offset: -1,
                ..Default::default()
            };
        };
        match shard.kafka.check(key, &b) {
            Check::Reject { code, message } => {
                return ProduceOutcome {
                    error_code: code,
                    message: Some(message),
                    base_offset: -1,
                    ..Default::default()
                }
            }
            Check::Duplicate {
                base_offset,
                last_offset,
            } => (base_offset, last_offset),
            Check::Append => match part.append(frame, Durability::Buffered).await {
                Ok(info) => {
                    let records = info.last_offset + 1 - info.base_offset;
                    shard.count_in(topic, p, records, bytes);
                    shard
                        .kafka
                        .record(key, &b, info.base_offset, info.last_offset);
                    (info.base_offset, info.last_offset)
                }
                Err(e) => return fail(e),
            },
        }
    };
    // Written (acks=1) has no separate engine call: idempotent producers use
    // acks=all anyway, so both wait for fdatasync.
    if durability != Durability::Buffered {
        if let Err(e) = part.sync_to(last + 1).await {
            return fail(e);
        }
    }
    ProduceOutcome {
        base_offset: base as i64,
        log_append_time_ms: -1,
        log_start_offset: part.offsets().log_start_offset as i64,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::ProduceFault;

    #[test]
    fn produce_faults_parse_and_bad_ones_are_refused() {
        assert_eq!(
            ProduceFault::parse("fail:1"),
            Ok(ProduceFault::Fail { shard: 1 })
        );
        assert_eq!(
            ProduceFault::parse("delay:0:250"),
            Ok(ProduceFault::Delay {
                shard: 0,
                delay_ms: 250
            })
        );
        for bad in [
            "",
            "fail",
            "fail:x",
            "fail:1:2",
            "delay:1",
            "delay:1:x",
            "stall:1",
        ] {
            assert!(ProduceFault::parse(bad).is_err(), "{bad:?}");
        }
    }
}
