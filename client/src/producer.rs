//! [`Producer`]: batches records per partition and sends them as produce
//! requests, pipelined, reporting every record's offset; optionally
//! resending lost batches, and optionally idempotent.
//!
//! - **Batching.** Each (topic, partition) has one open batch (a
//!   [`BatchBuilder`]). It is sealed when adding a record would take it past
//!   `batch_bytes`, when it is older than `linger_ms` at the next
//!   [`Producer::send`] or [`Producer::poll`], or on [`Producer::flush`].
//!   Sealed batches of several partitions travel in one produce request of
//!   at most `request_bytes_max` trailer bytes.
//! - **Partitioning.** An explicit partition wins. Otherwise a record with a
//!   key goes to `murmur2(key) & 0x7fff_ffff % partitions`, the function and
//!   seed Kafka's default partitioner uses (so the same key lands on the
//!   same partition number as with a Kafka client); a null key goes round
//!   robin per topic.
//! - **Offsets.** A record's offset is its batch's `base_offset` plus its
//!   index in the batch. [`Producer::flush`] returns one result per record
//!   sent since the previous flush, in send order ([`RecordHandle::index`]).
//! - **Pipelining and order.** Up to `inflight_requests_max` produce
//!   requests are in flight; the producer waits for the oldest before
//!   sending more. The server runs a connection's requests concurrently, so
//!   a partition has at most one batch in flight
//!   ([`PARTITION_INFLIGHT_BATCHES_MAX`]): its next batch waits for the
//!   answer (like Kafka's `max.in.flight.requests.per.connection=1`, per
//!   partition). Records of one partition, and so of one key, are stored in
//!   send order. With `acks = none` there is no answer to wait for and this
//!   order is not guaranteed.
//! - **Driving it.** There is no background thread: batches move on
//!   [`Producer::send`], [`Producer::poll`] and [`Producer::flush`]. Call
//!   `poll` when idle so lingering batches go out.
//! - **Failures without resends** (`retries` and `idempotent` off, the
//!   default). A server error fails the records of that batch with its
//!   code. If the connection breaks with requests in flight, their records
//!   fail with [`Error::Undetermined`] (they may or may not be stored); they
//!   are not resent, so a record is never written twice by this producer.
//!   With `acks = none` the server never answers and records report
//!   [`Error::NotAcknowledged`].
//! - **Resends** (`retries`, implied by `idempotent`). A batch whose answer
//!   was lost (the connection broke or timed out, or was re-made with the
//!   request in flight) or that got a retriable error (`Timeout`,
//!   `PartitionFailed`, `PartitionUnavailable`, `RecordsTruncated`,
//!   `NotLeader`, `LeaderNotAvailable`, `ShuttingDown`) is sent again, the
//!   same bytes, after a back-off (`retry_backoff_ms`, doubling up to
//!   `retry_backoff_max_ms`), until it is answered or `delivery_timeout_ms`
//!   after it was sealed; then its records fail ([`Error::Undetermined`]
//!   when an attempt may have stored it, else the last error or
//!   [`Error::DeliveryTimeout`]). Later batches of its partition wait behind
//!   it, so order holds. **Without idempotence a resend may store a batch
//!   twice** (at least once, like a Kafka producer with retries and
//!   `enable.idempotence=false`).
//! - **Idempotence** (`idempotent`; needs `acks` leader or durable). The
//!   first [`Producer::send`] asks the server for a producer id
//!   (InitProducerId). Each batch gets its partition's next sequence when it
//!   is first sent (per partition from 0, in send order, modulo 2^31),
//!   stamped in its frame header with the id and epoch
//!   ([`strom_flatbuffers::stamp_producer`]); a resend carries the same
//!   bytes, so a server that already stored the batch answers with its
//!   original offsets and stores nothing (`docs/protocol.md`). A refusal
//!   that stored nothing gives the batch's sequences back to the next batch.
//!   When the producer's sequences and the server's disagree it proceeds as
//!   librdkafka does: an `OutOfOrderSequence` for a batch that no earlier
//!   attempt can have stored means the server lost track of the producer,
//!   so the producer bumps its epoch (InitProducerId with its current id
//!   and epoch) and resends the batch from sequence 0; for a batch an
//!   earlier attempt may have stored, and for a batch given up after such
//!   an attempt, its records fail with [`Error::Undetermined`] and the epoch
//!   is bumped. A bump waits until nothing is in flight; afterwards, batches
//!   waiting for a resend that an attempt may have stored fail
//!   ([`Error::Undetermined`]: resent under the new epoch they could be
//!   stored twice), the others are stamped again. `InvalidProducerEpoch`
//!   (fenced) fails the batch and takes a new producer id. Idempotence
//!   protects a resend only while the server remembers the producer: a
//!   server whose producer state does not survive a restart stores a batch
//!   twice if it stored it just before a crash and the resend follows the
//!   restart.
//!
//! `idempotent` is off by default, unlike Kafka's producers since 3.0: a
//! server restart still forgets producers (their state is not rebuilt from
//! the log yet), so on by default would promise more than it keeps across
//! a crash; it resends, which changes what callers of the default producer
//! see when a connection breaks (they count on "never resent"); and servers
//! before InitProducerId cannot serve it. Turn it on for retries that do
//! not duplicate.
//!
//! Invariants:
//! - Per partition at most one batch is in flight or waiting for a resend;
//!   the partition's later batches are sent only once it is settled.
//! - With idempotence, a partition's next sequence is the end of its last
//!   stamped batch under the current epoch; a batch is stamped again only
//!   under a new epoch and only if no attempt can have stored it.
//! - Every record sent gets exactly one result; every wait is bounded
//!   (request timeouts, `delivery_timeout_ms`).

use crate::client::{Client, Route};
use crate::connection::ConnectionConfig;
use crate::error::{Error, Result};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use strom_flatbuffers::protocol::{
    Acks, ErrorCode, ProduceBatch, ProduceRequest, ProduceResult, RequestBody, ResponseBody,
};
use strom_flatbuffers::{stamp_producer, BatchBuilder, RecordIn, FRAME_HEADER_BYTES};

/// Batches of one partition in flight (or waiting for a resend) at once.
/// Kafka allows up to [`KAFKA_IDEMPOTENT_INFLIGHT_MAX`] with idempotence;
/// this producer keeps one because the server runs a connection's requests
/// concurrently (two batches of a partition could be appended out of
/// order) and accepts any sequence from a producer it does not know (after
/// a restart, a second batch could be stored before a resent first one).
/// Giving a refused batch's sequences back relies on it too.
pub const PARTITION_INFLIGHT_BATCHES_MAX: usize = 1;
/// Kafka's bound on batches in flight per partition for an idempotent
/// producer (`max.in.flight.requests.per.connection <= 5`).
pub const KAFKA_IDEMPOTENT_INFLIGHT_MAX: usize = 5;
const _: () = assert!(PARTITION_INFLIGHT_BATCHES_MAX <= KAFKA_IDEMPOTENT_INFLIGHT_MAX);
const _: () = assert!(
    PARTITION_INFLIGHT_BATCHES_MAX == 1,
    "sequence give-back assumes one batch per partition in flight"
);
/// Longest single sleep while waiting for a resend or an epoch bump, so
/// that deadlines are looked at again.
const WAIT_STEP_MS_MAX: u64 = 50;

/// Producer settings.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    pub acks: Acks,
    /// A batch is sealed before it grows past this (clamped to the server's
    /// `frame_bytes_max`).
    pub batch_bytes: usize,
    /// How long a batch may wait for more records.
    pub linger_ms: u64,
    /// Most trailer bytes (batches) in one produce request.
    pub request_bytes_max: usize,
    /// Produce requests awaiting an answer at once.
    pub inflight_requests_max: usize,
    /// How long the server may take to append (and sync, for durable acks).
    pub timeout_ms: u32,
    /// Idempotent producing (see the module docs): a producer id, per
    /// partition sequences, resends the server recognises. Needs `acks`
    /// leader or durable; implies `retries`. Default off (why: module docs).
    pub idempotent: bool,
    /// Resend batches whose answer was lost or that got a retriable error,
    /// until `delivery_timeout_ms`. Without `idempotent` a resend may store
    /// a batch twice. Default off.
    pub retries: bool,
    /// With resends: how long after it was sealed a batch may still be
    /// (re)sent before its records fail (Kafka's `delivery.timeout.ms`).
    pub delivery_timeout_ms: u64,
    /// With resends: the first wait before a batch is sent again; doubles
    /// with every attempt up to `retry_backoff_max_ms`.
    pub retry_backoff_ms: u64,
    pub retry_backoff_max_ms: u64,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            acks: Acks::Leader,
            batch_bytes: 64 << 10,
            linger_ms: 5,
            request_bytes_max: 1 << 20,
            inflight_requests_max: 8,
            timeout_ms: 30_000,
            idempotent: false,
            retries: false,
            delivery_timeout_ms: 120_000,
            retry_backoff_ms: 100,
            retry_backoff_max_ms: 1_000,
        }
    }
}

/// What the producer did, for tests and monitoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerStats {
    /// The producer id and epoch in use (-1 before the first idempotent
    /// send, and without idempotence).
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// Batches sent for the first time.
    pub batches_sent: u64,
    /// Batches sent again, for any reason.
    pub resends: u64,
    /// Of `resends`, those of a batch whose previous attempt was lost with
    /// its connection (broken, timed out, re-made under it): across a
    /// server crash, every resend is one of these.
    pub resends_after_connection_loss: u64,
    /// Resent batches the server answered as duplicates of one it had
    /// stored (`append_time_ms` -1): each is a record set not stored twice.
    pub resends_found_stored: u64,
    /// Epoch bumps and new producer ids after the first id.
    pub epoch_bumps: u64,
    /// Batches whose records failed after resends were tried (delivery
    /// timeout, or a refusal after an attempt that may have stored them).
    pub batches_given_up: u64,
}

/// One record to send. `timestamp_ms: None` means now.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProducerRecord<'a> {
    pub topic: &'a str,
    pub partition: Option<u32>,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: &'a [(&'a str, &'a [u8])],
    pub timestamp_ms: Option<i64>,
}

impl<'a> ProducerRecord<'a> {
    /// A record with a value and nothing else.
    pub fn new(topic: &'a str, value: &'a [u8]) -> Self {
        ProducerRecord {
            topic,
            value: Some(value),
            ..Default::default()
        }
    }

    pub fn key(mut self, key: &'a [u8]) -> Self {
        self.key = Some(key);
        self
    }

    pub fn partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    pub fn headers(mut self, headers: &'a [(&'a str, &'a [u8])]) -> Self {
        self.headers = headers;
        self
    }

    pub fn timestamp_ms(mut self, ts: i64) -> Self {
        self.timestamp_ms = Some(ts);
        self
    }

    fn estimated_bytes(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 24)
            .sum();
        self.key.map_or(0, <[u8]>::len) + self.value.map_or(0, <[u8]>::len) + headers + 48
    }
}

/// Identifies a sent record; its result is at [`RecordHandle::index`] in
/// the vector the next [`Producer::flush`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordHandle {
    seq: u64,
    index: usize,
    partition: u32,
}

impl RecordHandle {
    /// Position of this record among those sent since the last flush.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The partition the record was assigned to.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// Position among every record this producer was given.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

struct OpenBatch {
    builder: BatchBuilder,
    records: Vec<u64>,
    opened: Instant,
}

/// The producer fields a batch's frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    producer_id: i64,
    epoch: i16,
    first_seq: i32,
}

/// A sealed batch, from its sealing until its records have their results.
struct Batch {
    topic: String,
    partition: u32,
    frame: Vec<u8>,
    /// The records' positions among all records this producer was given.
    records: Vec<u64>,
    sealed_at: Instant,
    /// With idempotence: the fields stamped in `frame` (None: not yet sent).
    stamp: Option<Stamp>,
    /// Times sent.
    attempts: u32,
    /// An attempt's outcome is unknown: the server may hold the batch.
    maybe_stored: bool,
    /// The last attempt was lost with its connection.
    lost_with_connection: bool,
    /// The last attempt's error: its code, if the server gave one, and text.
    last_error: Option<(Option<ErrorCode>, String)>,
    /// Not sent again before this.
    not_before: Instant,
}

impl Batch {
    fn key(&self) -> (String, u32) {
        (self.topic.clone(), self.partition)
    }

    fn span(&self) -> i32 {
        i32::try_from(self.records.len()).expect("a frame holds at most 2^20 records")
    }
}

struct InFlight {
    /// The connection it was sent on.
    route: Route,
    correlation_id: u64,
    generation: u64,
    batches: Vec<Batch>,
}

/// Why the producer needs a new epoch or id before sending on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Reset {
    /// Same id, epoch + 1: the sequences disagree with the server's.
    BumpEpoch,
    /// A new id: this one is fenced.
    NewId,
}

/// The idempotent producer's identity and sequences.
struct Idempotence {
    producer_id: i64,
    epoch: i16,
    /// Next sequence per partition under (`producer_id`, `epoch`).
    next_seq: HashMap<(String, u32), i32>,
    /// A reset wanted: done once nothing is in flight.
    reset: Option<Reset>,
    /// Why the reset was wanted, or why its last attempt failed.
    reset_reason: String,
    reset_attempts: u32,
    reset_not_before: Instant,
}

/// How the producer treats a server error code on a produce batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Stored by an earlier attempt, offsets unknown.
    Duplicate,
    OutOfOrder,
    Fenced,
    /// Worth sending again; `may_store`: the batch may have been stored.
    Retriable {
        may_store: bool,
    },
    /// Final; `may_store` as above.
    Permanent {
        may_store: bool,
    },
}

fn classify(code: ErrorCode) -> Class {
    match code {
        ErrorCode::DuplicateSequence => Class::Duplicate,
        ErrorCode::OutOfOrderSequence => Class::OutOfOrder,
        ErrorCode::InvalidProducerEpoch => Class::Fenced,
        ErrorCode::Timeout
        | ErrorCode::PartitionFailed
        | ErrorCode::NotLeader
        | ErrorCode::ShuttingDown => Class::Retriable { may_store: true },
        ErrorCode::PartitionUnavailable
        | ErrorCode::RecordsTruncated
        | ErrorCode::LeaderNotAvailable => Class::Retriable { may_store: false },
        // A server-side failure says nothing of what was appended.
        ErrorCode::Internal => Class::Permanent { may_store: true },
        // Refused before anything was appended.
        _ => Class::Permanent { may_store: false },
    }
}

/// `seq + n` modulo 2^31 (the server's and Kafka's sequence arithmetic).
fn seq_add(seq: i32, n: i32) -> i32 {
    debug_assert!(seq >= 0 && n >= 0);
    ((i64::from(seq) + i64::from(n)) % (i64::from(i32::MAX) + 1)) as i32
}

/// Kafka's murmur2 (seed 0x9747b28c), as used by its default partitioner.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner picks for a non-null key.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0, "a topic has at least one partition");
    ((murmur2(key) as u32) & 0x7fff_ffff) % partitions
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `e` for one more record of `topic`/`partition` (errors are not `Clone`).
fn copy_error(e: &Error, topic: &str, partition: u32) -> Error {
    match e {
        Error::Server {
            code,
            message,
            context,
        } => Error::Server {
            code: *code,
            message: message.clone(),
            context: context.clone(),
        },
        Error::NotAcknowledged => Error::NotAcknowledged,
        Error::Undetermined {
            topic,
            partition,
            reason,
        } if !topic.is_empty() => Error::Undetermined {
            topic: topic.clone(),
            partition: *partition,
            reason: reason.clone(),
        },
        Error::DeliveryTimeout {
            topic,
            partition,
            timeout_ms,
            reason,
        } => Error::DeliveryTimeout {
            topic: topic.clone(),
            partition: *partition,
            timeout_ms: *timeout_ms,
            reason: reason.clone(),
        },
        other => Error::Undetermined {
            topic: topic.to_owned(),
            partition,
            reason: other.to_string(),
        },
    }
}

/// A batching producer; see the module docs.
pub struct Producer {
    client: Client,
    config: ProducerConfig,
    open: HashMap<(String, u32), OpenBatch>,
    /// Sealed, never sent, in sealing order.
    sealed: VecDeque<Batch>,
    /// Sent, waiting to be sent again (at most one per partition).
    retry: VecDeque<Batch>,
    inflight: VecDeque<InFlight>,
    round_robin: HashMap<String, u32>,
    /// Results of records `first_record..next_record`; `None` while pending.
    results: VecDeque<Option<Result<u64>>>,
    first_record: u64,
    next_record: u64,
    /// With idempotence, once the first producer id was handed out.
    idem: Option<Idempotence>,
    stats: ProducerStats,
}

impl Producer {
    /// Connects to `addrs` (one or more `host:port`, comma separated) with
    /// default connection settings.
    pub fn connect(addrs: &str, config: ProducerConfig) -> Result<Producer> {
        let client = Client::connect_with(addrs, ConnectionConfig::default())?;
        Ok(Producer::new(client, config))
    }

    pub fn new(client: Client, mut config: ProducerConfig) -> Producer {
        let frame_max = client_frame_max(&client);
        config.batch_bytes = config.batch_bytes.clamp(FRAME_HEADER_BYTES + 64, frame_max);
        config.request_bytes_max = config.request_bytes_max.max(config.batch_bytes);
        config.inflight_requests_max = config.inflight_requests_max.max(1);
        config.retry_backoff_ms = config.retry_backoff_ms.max(1);
        config.retry_backoff_max_ms = config.retry_backoff_max_ms.max(config.retry_backoff_ms);
        Producer {
            client,
            config,
            open: HashMap::new(),
            sealed: VecDeque::new(),
            retry: VecDeque::new(),
            inflight: VecDeque::new(),
            round_robin: HashMap::new(),
            results: VecDeque::new(),
            first_record: 0,
            next_record: 0,
            idem: None,
            stats: ProducerStats {
                producer_id: -1,
                producer_epoch: -1,
                batches_sent: 0,
                resends: 0,
                resends_after_connection_loss: 0,
                resends_found_stored: 0,
                epoch_bumps: 0,
                batches_given_up: 0,
            },
        }
    }

    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    pub fn config(&self) -> &ProducerConfig {
        &self.config
    }

    /// What the producer did so far (resends, epoch bumps, its id).
    pub fn stats(&self) -> ProducerStats {
        self.stats
    }

    /// Records sent since the last flush.
    pub fn pending(&self) -> usize {
        self.results.len()
    }

    fn resends_on(&self) -> bool {
        self.config.retries || self.config.idempotent
    }

    fn choose_partition(&mut self, record: &ProducerRecord<'_>) -> Result<u32> {
        let count = self.client.partition_count(record.topic)?;
        if count == 0 {
            return Err(Error::UnknownTopic {
                topic: record.topic.to_owned(),
            });
        }
        if let Some(p) = record.partition {
            if p >= count {
                return Err(Error::UnknownPartition {
                    topic: record.topic.to_owned(),
                    partition: p,
                    partitions: count,
                });
            }
            return Ok(p);
        }
        if let Some(key) = record.key {
            return Ok(partition_for_key(key, count));
        }
        let next = self.round_robin.entry(record.topic.to_owned()).or_insert(0);
        let p = *next % count;
        *next = next.wrapping_add(1);
        Ok(p)
    }

    /// With idempotence, the first producer id (once).
    fn ensure_producer_id(&mut self) -> Result<()> {
        if !self.config.idempotent || self.idem.is_some() {
            return Ok(());
        }
        if self.config.acks == Acks::None {
            return Err(Error::InvalidArgument(
                "idempotent producing needs acks leader or durable: with acks=none the \
                 server answers nothing to keep sequences by"
                    .into(),
            ));
        }
        let (producer_id, epoch) = self.client.init_producer_id(None)?;
        self.idem = Some(Idempotence {
            producer_id,
            epoch,
            next_seq: HashMap::new(),
            reset: None,
            reset_reason: String::new(),
            reset_attempts: 0,
            reset_not_before: Instant::now(),
        });
        self.stats.producer_id = producer_id;
        self.stats.producer_epoch = epoch;
        Ok(())
    }

    /// Adds a record to its partition's batch. Errors here (unknown topic or
    /// partition, oversized record, a connection that cannot be re-made, no
    /// producer id for an idempotent producer) mean the record was not
    /// accepted and has no handle.
    pub fn send(&mut self, record: &ProducerRecord<'_>) -> Result<RecordHandle> {
        self.ensure_producer_id()?;
        let frame_max = client_frame_max(&self.client);
        let size = record.estimated_bytes() + FRAME_HEADER_BYTES;
        if size > frame_max {
            return Err(Error::RecordTooLarge {
                len_bytes: size,
                max_bytes: frame_max,
            });
        }
        let partition = self.choose_partition(record)?;
        let key = (record.topic.to_owned(), partition);
        let needs_seal = self.open.get(&key).is_some_and(|b| {
            !b.builder.is_empty() && b.builder.estimated_bytes() + size > self.config.batch_bytes
        });
        if needs_seal {
            self.seal(&key);
        }
        let seq = self.next_record;
        let batch = self.open.entry(key).or_insert_with(|| OpenBatch {
            builder: BatchBuilder::new(),
            records: Vec::new(),
            opened: Instant::now(),
        });
        if batch.builder.is_empty() {
            batch.opened = Instant::now();
        }
        batch.builder.push(&RecordIn {
            timestamp_ms: record.timestamp_ms.unwrap_or_else(now_ms),
            key: record.key,
            value: record.value,
            headers: record.headers,
        });
        batch.records.push(seq);
        self.next_record += 1;
        self.results.push_back(None);
        let index = (seq - self.first_record) as usize;
        self.poll();
        Ok(RecordHandle {
            seq,
            index,
            partition,
        })
    }

    fn seal(&mut self, key: &(String, u32)) {
        if let Some(b) = self.open.get_mut(key) {
            if b.builder.is_empty() {
                return;
            }
            let frame = b.builder.finish();
            let records = std::mem::take(&mut b.records);
            let now = Instant::now();
            self.sealed.push_back(Batch {
                topic: key.0.clone(),
                partition: key.1,
                frame,
                records,
                sealed_at: now,
                stamp: None,
                attempts: 0,
                maybe_stored: false,
                lost_with_connection: false,
                last_error: None,
                not_before: now,
            });
        }
    }

    /// Seals batches older than `linger_ms` and sends what can be sent.
    pub fn poll(&mut self) {
        let linger = Duration::from_millis(self.config.linger_ms);
        let due: Vec<(String, u32)> = self
            .open
            .iter()
            .filter(|(_, b)| !b.builder.is_empty() && b.opened.elapsed() >= linger)
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            self.seal(&k);
        }
        self.pump(false);
    }

    fn reset_pending(&self) -> bool {
        self.idem.as_ref().is_some_and(|i| i.reset.is_some())
    }

    /// Sends what can be sent: resends that are due, then sealed batches of
    /// partitions with nothing in flight or waiting, at most one per
    /// partition per request (so pipelining cannot reorder a partition).
    /// Returns when nothing more can be sent now, unless `drain` is set or
    /// more than `inflight_requests_max` sealed batches pile up: then it
    /// waits for answers, resend times and epoch bumps until every batch is
    /// settled (or, without `drain`, the pile is small again).
    fn pump(&mut self, drain: bool) {
        loop {
            self.expire(Instant::now());
            if self.reset_pending() && self.inflight.is_empty() {
                let due = self
                    .idem
                    .as_ref()
                    .is_some_and(|i| Instant::now() >= i.reset_not_before);
                if due {
                    self.reset();
                    continue;
                }
            }
            while self.inflight.len() >= self.config.inflight_requests_max {
                self.await_oldest();
            }
            let batches = self.take_sendable(Instant::now());
            if !batches.is_empty() {
                // One request per owning shard: each goes straight to its
                // shard when the server offers direct ports
                // (`Client::route`).
                let mut by_route: Vec<(Route, Vec<Batch>)> = Vec::new();
                for b in batches {
                    let route = self.client.route(&b.topic, b.partition);
                    match by_route.iter_mut().find(|(r, _)| *r == route) {
                        Some((_, v)) => v.push(b),
                        None => by_route.push((route, vec![b])),
                    }
                }
                for (route, batches) in by_route {
                    self.send_request(route, batches);
                }
                continue;
            }
            // A bump waits for everything in flight.
            if self.reset_pending() && !self.inflight.is_empty() {
                self.await_oldest();
                continue;
            }
            let must_wait = drain || self.sealed.len() > self.config.inflight_requests_max;
            if !must_wait {
                return;
            }
            if !self.inflight.is_empty() {
                self.await_oldest();
                continue;
            }
            if self.sealed.is_empty() && self.retry.is_empty() {
                // Settled (a reset still wanted waits for the next batch).
                return;
            }
            self.sleep_until_next();
        }
    }

    /// Sleeps until the next resend or reset is due (at most
    /// `WAIT_STEP_MS_MAX`, so that deadlines are seen).
    fn sleep_until_next(&self) {
        let now = Instant::now();
        let mut next = now + Duration::from_millis(WAIT_STEP_MS_MAX);
        for b in &self.retry {
            next = next.min(b.not_before);
        }
        if let Some(i) = self.idem.as_ref().filter(|i| i.reset.is_some()) {
            next = next.min(i.reset_not_before);
        }
        let wait = next
            .saturating_duration_since(now)
            .max(Duration::from_millis(1));
        std::thread::sleep(wait);
    }

    /// Takes the batches to send now (see [`Producer::pump`]); none while
    /// an epoch bump is wanted.
    fn take_sendable(&mut self, now: Instant) -> Vec<Batch> {
        if self.reset_pending() {
            return Vec::new();
        }
        let mut taken: HashSet<(String, u32)> = self
            .inflight
            .iter()
            .flat_map(|r| r.batches.iter().map(Batch::key))
            .chain(self.retry.iter().map(Batch::key))
            .collect();
        let mut out: Vec<Batch> = Vec::new();
        let mut bytes = 0usize;
        let max = self.config.request_bytes_max;
        let mut keep = VecDeque::with_capacity(self.retry.len());
        while let Some(b) = self.retry.pop_front() {
            let full = !out.is_empty() && bytes + b.frame.len() > max;
            if b.not_before > now || full {
                keep.push_back(b);
                continue;
            }
            bytes += b.frame.len();
            out.push(b);
        }
        self.retry = keep;
        let mut held = VecDeque::with_capacity(self.sealed.len());
        while let Some(b) = self.sealed.pop_front() {
            let full = !out.is_empty() && bytes + b.frame.len() > max;
            if full || !taken.insert(b.key()) {
                held.push_back(b);
                continue;
            }
            bytes += b.frame.len();
            out.push(b);
        }
        self.sealed = held;
        out
    }

    /// With idempotence: stamps `b` with the current id, epoch and its
    /// partition's next sequences, unless it already carries them.
    fn stamp(&mut self, b: &mut Batch) {
        let Some(idem) = self.idem.as_mut() else {
            return;
        };
        if let Some(s) = b.stamp {
            if s.producer_id == idem.producer_id && s.epoch == idem.epoch {
                return;
            }
            assert!(
                !b.maybe_stored,
                "a batch an attempt may have stored is never stamped again"
            );
        }
        let next = idem.next_seq.entry(b.key()).or_insert(0);
        let first_seq = *next;
        *next = seq_add(first_seq, b.span());
        stamp_producer(&mut b.frame, idem.producer_id, idem.epoch, first_seq);
        b.stamp = Some(Stamp {
            producer_id: idem.producer_id,
            epoch: idem.epoch,
            first_seq,
        });
    }

    /// Sends one produce request of `batches` on `route`'s connection and
    /// tracks it (or settles its batches when it cannot be sent).
    fn send_request(&mut self, route: Route, mut batches: Vec<Batch>) {
        for b in &mut batches {
            self.stamp(b);
            if b.attempts == 0 {
                self.stats.batches_sent += 1;
            } else {
                self.stats.resends += 1;
                if b.lost_with_connection {
                    self.stats.resends_after_connection_loss += 1;
                }
            }
            b.attempts += 1;
        }
        let body = RequestBody::Produce(ProduceRequest {
            acks: self.config.acks,
            timeout_ms: self.config.timeout_ms,
            batches: batches
                .iter()
                .map(|b| ProduceBatch {
                    topic: b.topic.clone(),
                    partition: b.partition,
                    batch_len: b.frame.len() as u32,
                })
                .collect(),
        });
        let trailer: Vec<&[u8]> = batches.iter().map(|b| b.frame.as_slice()).collect();
        let conn = self.client.connection_on(route);
        let sent = conn.send(&body, &trailer);
        let generation = conn.generation();
        match sent {
            Ok(correlation_id) if self.config.acks != Acks::None => {
                self.inflight.push_back(InFlight {
                    route,
                    correlation_id,
                    generation,
                    batches,
                });
            }
            Ok(_) => {
                for b in batches {
                    self.fail(&b.records, &Error::NotAcknowledged, &b.topic, b.partition);
                }
            }
            Err(e) => {
                // Not (completely) written: nothing of it should have been
                // appended, but a partial write is indistinguishable here.
                if e.is_connection_error() {
                    self.client.route_failed(route);
                }
                for b in batches {
                    self.attempt_failed(b, &e, true, e.is_connection_error());
                }
            }
        }
    }

    fn set_result(&mut self, record: u64, result: Result<u64>) {
        if record < self.first_record {
            return;
        }
        if let Some(slot) = self.results.get_mut((record - self.first_record) as usize) {
            debug_assert!(slot.is_none(), "one result per record");
            *slot = Some(result);
        }
    }

    fn fail(&mut self, records: &[u64], e: &Error, topic: &str, partition: u32) {
        for &r in records {
            self.set_result(r, Err(copy_error(e, topic, partition)));
        }
    }

    /// An attempt of `b` failed with `e`; `may_store`: it may have stored
    /// the batch; `connection`: it was lost with its connection. Without
    /// resends the records fail with `e`; with them the batch waits for its
    /// next attempt, unless its delivery time is up.
    fn attempt_failed(&mut self, mut b: Batch, e: &Error, may_store: bool, connection: bool) {
        if !self.resends_on() {
            self.fail(&b.records, e, &b.topic, b.partition);
            return;
        }
        b.maybe_stored |= may_store;
        b.lost_with_connection = connection;
        let text = match e {
            Error::Server { message, .. } => message.clone(),
            other => other.to_string(),
        };
        b.last_error = Some((e.code(), text));
        let now = Instant::now();
        if now >= b.sealed_at + Duration::from_millis(self.config.delivery_timeout_ms) {
            self.give_up(b, "not delivered within delivery_timeout_ms");
            return;
        }
        let shift = b.attempts.saturating_sub(1).min(16);
        let backoff = self
            .config
            .retry_backoff_ms
            .saturating_mul(1 << shift)
            .min(self.config.retry_backoff_max_ms);
        b.not_before = now + Duration::from_millis(backoff);
        self.retry.push_back(b);
    }

    /// Fails `b`'s records after resends were tried, and puts the
    /// producer's sequences right: an epoch bump if an attempt may have
    /// stored the batch, else its sequences go back to the partition.
    fn give_up(&mut self, b: Batch, why: &str) {
        self.stats.batches_given_up += 1;
        let (code, last) = b
            .last_error
            .clone()
            .unwrap_or((None, "no attempt".to_owned()));
        let context = format!("produce {}/{}", b.topic, b.partition);
        let err = if b.maybe_stored {
            Error::Undetermined {
                topic: b.topic.clone(),
                partition: b.partition,
                reason: format!(
                    "{why} after {} attempts, and an attempt may have stored it: {last}",
                    b.attempts
                ),
            }
        } else if let Some(code) = code {
            Error::server(code, &last, format!("{context} ({why}, not stored)"))
        } else {
            Error::DeliveryTimeout {
                topic: b.topic.clone(),
                partition: b.partition,
                timeout_ms: self.config.delivery_timeout_ms,
                reason: format!("{why}: {last}"),
            }
        };
        self.fail(&b.records, &err, &b.topic, b.partition);
        self.sequences_after_failure(&b);
    }

    /// After `b` failed for good: a batch an attempt may have stored leaves
    /// the partition's sequence unknown (bump the epoch); one that is
    /// certainly not stored gives its sequences back.
    fn sequences_after_failure(&mut self, b: &Batch) {
        let Some(idem) = self.idem.as_mut() else {
            return;
        };
        let Some(s) = b.stamp else {
            return;
        };
        if s.producer_id != idem.producer_id || s.epoch != idem.epoch {
            return; // stamped under an epoch that is gone
        }
        if b.maybe_stored {
            self.request_reset(
                Reset::BumpEpoch,
                format!(
                    "{}/{}: a batch that may be stored failed",
                    b.topic, b.partition
                ),
            );
            return;
        }
        let key = b.key();
        let next = idem.next_seq.get(&key).copied();
        assert_eq!(
            next,
            Some(seq_add(s.first_seq, b.span())),
            "the failed batch is its partition's last stamped one"
        );
        idem.next_seq.insert(key, s.first_seq);
    }

    fn request_reset(&mut self, kind: Reset, why: String) {
        if let Some(idem) = self.idem.as_mut() {
            idem.reset = Some(idem.reset.map_or(kind, |k| k.max(kind)));
            idem.reset_reason = why;
        }
    }

    /// Bumps the epoch (or takes a new id); called with nothing in flight.
    /// Afterwards every partition's sequences start again at 0; a batch
    /// waiting for a resend that an attempt may have stored fails (resent
    /// under the new epoch it could be stored twice), the others are
    /// stamped again when sent.
    fn reset(&mut self) {
        assert!(self.inflight.is_empty(), "a bump waits for every answer");
        let Some(idem) = self.idem.as_mut() else {
            return;
        };
        let Some(kind) = idem.reset else {
            return;
        };
        let current = match kind {
            Reset::BumpEpoch => Some((idem.producer_id, idem.epoch)),
            Reset::NewId => None,
        };
        match self.client.init_producer_id(current) {
            Err(e) => {
                idem.reset_attempts += 1;
                let shift = idem.reset_attempts.saturating_sub(1).min(16);
                let backoff = self
                    .config
                    .retry_backoff_ms
                    .saturating_mul(1 << shift)
                    .min(self.config.retry_backoff_max_ms);
                idem.reset_not_before = Instant::now() + Duration::from_millis(backoff);
                idem.reset_reason = format!("renewing the producer id failed: {e}");
            }
            Ok((producer_id, epoch)) => {
                let old = (idem.producer_id, idem.epoch);
                idem.producer_id = producer_id;
                idem.epoch = epoch;
                idem.next_seq.clear();
                idem.reset = None;
                idem.reset_attempts = 0;
                self.stats.producer_id = producer_id;
                self.stats.producer_epoch = epoch;
                self.stats.epoch_bumps += 1;
                let waiting = std::mem::take(&mut self.retry);
                for b in waiting {
                    if b.maybe_stored {
                        self.stats.batches_given_up += 1;
                        let err = Error::Undetermined {
                            topic: b.topic.clone(),
                            partition: b.partition,
                            reason: format!(
                                "an attempt under producer {} epoch {} may have stored it, \
                                 and the producer moved to epoch {epoch}: a resend could \
                                 store it twice",
                                old.0, old.1
                            ),
                        };
                        self.fail(&b.records, &err, &b.topic, b.partition);
                    } else {
                        self.retry.push_back(b);
                    }
                }
            }
        }
    }

    /// Fails batches whose delivery time is up (with resends on): those
    /// waiting for a resend, and sealed ones never sent (held behind an
    /// epoch bump that does not succeed).
    fn expire(&mut self, now: Instant) {
        if !self.resends_on() {
            return;
        }
        let limit = Duration::from_millis(self.config.delivery_timeout_ms);
        if self.retry.iter().any(|b| now >= b.sealed_at + limit) {
            let waiting = std::mem::take(&mut self.retry);
            for b in waiting {
                if now >= b.sealed_at + limit {
                    self.give_up(b, "not delivered within delivery_timeout_ms");
                } else {
                    self.retry.push_back(b);
                }
            }
        }
        if self
            .sealed
            .front()
            .is_some_and(|b| now >= b.sealed_at + limit)
        {
            let reason = match self.idem.as_ref().filter(|i| i.reset.is_some()) {
                Some(i) => format!("waiting for a new producer epoch: {}", i.reset_reason),
                None => "waiting for the partition's earlier batch".to_owned(),
            };
            while self
                .sealed
                .front()
                .is_some_and(|b| now >= b.sealed_at + limit)
            {
                let b = self.sealed.pop_front().expect("checked");
                let err = Error::DeliveryTimeout {
                    topic: b.topic.clone(),
                    partition: b.partition,
                    timeout_ms: self.config.delivery_timeout_ms,
                    reason: format!("never sent, {reason}"),
                };
                self.fail(&b.records, &err, &b.topic, b.partition);
            }
        }
    }

    /// Waits for the oldest in-flight request and settles its batches.
    fn await_oldest(&mut self) {
        let Some(req) = self.inflight.pop_front() else {
            return;
        };
        let conn = self.client.connection_on(req.route);
        let outcome = if conn.generation() != req.generation {
            Err(Error::Undetermined {
                topic: String::new(),
                partition: 0,
                reason: "connection was re-established with the request in flight".into(),
            })
        } else {
            let extra = u64::from(self.config.timeout_ms);
            conn.recv(req.correlation_id, extra)
        };
        let response = match outcome {
            Ok(r) => r,
            Err(e) => {
                if e.is_connection_error() {
                    self.client.route_failed(req.route);
                }
                for b in req.batches {
                    self.attempt_failed(b, &e, true, true);
                }
                return;
            }
        };
        match response.body {
            ResponseBody::Produce(p) if p.results.len() == req.batches.len() => {
                for (b, r) in req.batches.into_iter().zip(p.results) {
                    self.settle(b, r);
                }
            }
            ResponseBody::Error(e) => {
                for b in req.batches {
                    self.refused(b, e.error, &e.message);
                }
            }
            other => {
                let err = Error::UnexpectedResponse {
                    request: "produce",
                    got: format!("{other:?}"),
                };
                for b in req.batches {
                    self.attempt_failed(b, &err, true, false);
                }
            }
        }
    }

    /// One batch's answer.
    fn settle(&mut self, b: Batch, r: ProduceResult) {
        if r.error != ErrorCode::None {
            self.client.note_error(&b.topic, b.partition, r.error);
            self.refused(b, r.error, &r.message);
            return;
        }
        let expected_last = r.base_offset + b.records.len() as u64 - 1;
        if r.last_offset != expected_last {
            let err = Error::UnexpectedResponse {
                request: "produce",
                got: format!(
                    "{}/{}: base {} last {} for {} records",
                    b.topic,
                    b.partition,
                    r.base_offset,
                    r.last_offset,
                    b.records.len()
                ),
            };
            if self.resends_on() {
                let mut b = b;
                b.maybe_stored = true;
                b.last_error = Some((None, err.to_string()));
                self.give_up(b, "answered with offsets that do not fit");
            } else {
                self.fail(&b.records, &err, &b.topic, b.partition);
            }
            return;
        }
        if b.attempts > 1 && b.stamp.is_some() && r.append_time_ms == -1 {
            self.stats.resends_found_stored += 1;
        }
        for (i, &rec) in b.records.iter().enumerate() {
            self.set_result(rec, Ok(r.base_offset + i as u64));
        }
    }

    /// A batch the server refused with `code` (see [`classify`] and the
    /// module docs).
    fn refused(&mut self, mut b: Batch, code: ErrorCode, message: &str) {
        let context = format!("produce {}/{}", b.topic, b.partition);
        let err = Error::server(code, message, context.clone());
        let idempotent = self.idem.is_some();
        match classify(code) {
            Class::Duplicate => {
                // Stored by an earlier attempt; its offsets are gone.
                let err = Error::server(
                    code,
                    &format!("{message} (stored by an earlier attempt, offsets unknown)"),
                    context,
                );
                self.fail(&b.records, &err, &b.topic, b.partition);
            }
            Class::OutOfOrder if idempotent && !b.maybe_stored => {
                // Nothing of it is stored: the server lost track of this
                // producer's sequence. Bump, then send it again from 0.
                self.request_reset(
                    Reset::BumpEpoch,
                    format!("{}/{}: out of order: {message}", b.topic, b.partition),
                );
                b.last_error = Some((Some(code), message.to_owned()));
                b.lost_with_connection = false;
                b.not_before = Instant::now();
                self.retry.push_back(b);
            }
            Class::OutOfOrder if idempotent => {
                b.last_error = Some((Some(code), message.to_owned()));
                self.give_up(b, "refused as out of order");
            }
            Class::Fenced if idempotent => {
                b.last_error = Some((Some(code), message.to_owned()));
                self.request_reset(
                    Reset::NewId,
                    format!("{}/{}: fenced: {message}", b.topic, b.partition),
                );
                if b.maybe_stored {
                    self.give_up(b, "fenced");
                } else {
                    self.fail(&b.records, &err, &b.topic, b.partition);
                }
            }
            Class::Retriable { may_store } if self.resends_on() => {
                self.attempt_failed(b, &err, may_store, false);
            }
            Class::Retriable { may_store } | Class::Permanent { may_store } => {
                if !idempotent {
                    self.fail(&b.records, &err, &b.topic, b.partition);
                    return;
                }
                b.maybe_stored |= may_store;
                b.last_error = Some((Some(code), message.to_owned()));
                if b.maybe_stored {
                    self.give_up(b, "refused");
                } else {
                    self.stats.batches_given_up += 1;
                    self.fail(&b.records, &err, &b.topic, b.partition);
                    self.sequences_after_failure(&b);
                }
            }
            // Sequence refusals reach a producer that is not idempotent
            // only if its frames carry producer fields it did not stamp.
            Class::OutOfOrder | Class::Fenced => {
                self.fail(&b.records, &err, &b.topic, b.partition);
            }
        }
    }

    /// Sends every open batch, waits for every answer (and every resend),
    /// and returns the result of each record sent since the previous
    /// flush, in send order.
    pub fn flush(&mut self) -> Vec<Result<u64>> {
        let keys: Vec<(String, u32)> = self.open.keys().cloned().collect();
        for k in keys {
            self.seal(&k);
        }
        self.pump(true);
        assert!(
            self.inflight.is_empty() && self.sealed.is_empty() && self.retry.is_empty(),
            "a drained producer holds no batch"
        );
        self.first_record = self.next_record;
        self.results
            .drain(..)
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(Error::Undetermined {
                        topic: String::new(),
                        partition: 0,
                        reason: "no outcome recorded".into(),
                    })
                })
            })
            .collect()
    }
}

/// The largest frame the server accepts (from the handshake).
fn client_frame_max(client: &Client) -> usize {
    match client.server_info().frame_bytes_max as usize {
        0 => strom_flatbuffers::FRAME_BYTES_MAX,
        n => n.min(strom_flatbuffers::FRAME_BYTES_MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors from Kafka's `UtilsTest.testMurmur2`.
    #[test]
    fn murmur2_matches_kafka() {
        let cases: &[(&[u8], i32)] = &[
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (input, want) in cases {
            assert_eq!(
                murmur2(input),
                *want,
                "murmur2({:?})",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn key_partitioning_is_stable_and_in_range() {
        for n in 1..20 {
            for k in 0..100u32 {
                let key = k.to_le_bytes();
                let p = partition_for_key(&key, n);
                assert!(p < n);
                assert_eq!(p, partition_for_key(&key, n));
            }
        }
    }
}
