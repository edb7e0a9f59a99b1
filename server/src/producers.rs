//! Idempotent producers, protocol-neutral, with Kafka's rules: per
//! (producer id, partition) the owning shard keeps the producer epoch and its
//! last few batches (first and last sequence, offsets). A retried batch that
//! matches one of them is a duplicate and gets the original offsets back
//! without a second append; a batch that does not continue the sequence is
//! refused as out of order; an older epoch is fenced. The operations layer
//! checks and records here for every protocol (`ops::owner`); an edge only
//! maps a [`Refusal`] to its own error code.
//!
//! State survives restarts because the log holds it: every frame of an
//! idempotent producer carries its producer id, epoch and base sequence,
//! and its record count gives the last sequence. When a partition is
//! opened (start-up, or the reopen of a failed log) its state is rebuilt
//! by [`Rebuild`]: the newest producer-state snapshot (`<offset>.snapshot`,
//! format in `strom_engine::producer_snapshot`) and then a replay of the
//! frames after it, before the partition takes a produce request. The
//! shell that reads and writes (`crate::producer_recovery`) writes a
//! snapshot at segment rolls, every `PRODUCER_SNAPSHOT_INTERVAL_BYTES` and
//! at a clean close, so a replay stays short. The first batch of an
//! unknown producer (never seen, expired, or evicted) is accepted whatever
//! its sequence, as Kafka does.
//!
//! Invariants of [`ProducerStates`]:
//! - State is keyed by topic id, never by name: ids are never reused, so a
//!   topic deleted and created again under the same name starts with no
//!   producer state (its offsets start again at 0; answering a batch as a
//!   duplicate of the deleted topic's would lose it).
//! - State of a deleted topic is dropped with it ([`ProducerStates::retain_topics`]).
//! - At most `capacity` (producer, partition) states per shard
//!   ([`KAFKA_PRODUCER_STATES_PER_SHARD_MAX`]); past it the least recently
//!   appended-to goes, as Kafka expires idle producer ids.
//! - A producer whose last batch is older than the expiration
//!   ([`PRODUCER_ID_EXPIRATION_MS`], Kafka's `producer.id.expiration.ms`,
//!   judged by the batch's `max_timestamp_ms` as Kafka does), or lies wholly
//!   below its partition's log start, is dropped by [`ProducerStates::expire`]
//!   (periodically) and by [`Rebuild::finish`] (at open).
//! - Replaying a partition's log from its start into an empty table gives
//!   the state the table holds for that partition (same epochs, same last
//!   batches, same offsets), up to the capacity and expiration: recording a
//!   batch and replaying its frame are one function ([`ProducerStates::record`]).
//!
//! [`ProducerStates`] and [`Rebuild`] are I/O-free; [`Producers`] adds the
//! per-partition lanes under which the owner checks, appends and records.
//!
//! Producer ids come from [`ProducerIds`], one process-wide allocator that
//! every protocol's InitProducerId uses (`ops::init_producer_id`).

use crate::engine::producer_snapshot::{ProducerSnapshot, SnapshotBatch, SnapshotProducer};
use crate::limits::{
    KAFKA_PRODUCER_BATCHES_MAX, KAFKA_PRODUCER_STATES_PER_SHARD_MAX, PRODUCER_ID_EXPIRATION_MS,
};
use crate::txn_index::PartitionTxns;
use glommio::sync::Semaphore;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, Ordering};
use strom_flatbuffers::FrameHeader;

/// The idempotence fields of one batch (from a Kafka record batch, or a
/// Strom frame header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerBatch {
    pub producer_id: i64,
    pub epoch: i16,
    pub first_seq: i32,
    pub last_seq: i32,
}

impl ProducerBatch {
    /// The idempotence fields of a batch of `records` records, as a frame
    /// header carries them: `producer_id` -1 is a batch of a producer that
    /// is not idempotent (`Ok(None)`, whatever the other two fields hold).
    /// Refused, with a message for the client: another negative producer
    /// id, a negative epoch or base sequence with a producer id, and a
    /// record count outside `1..=i32::MAX`.
    pub fn from_fields(
        producer_id: i64,
        epoch: i16,
        base_sequence: i32,
        records: u32,
    ) -> Result<Option<ProducerBatch>, String> {
        if producer_id == -1 {
            return Ok(None);
        }
        if producer_id < 0 {
            return Err(format!(
                "producer id {producer_id}: -1 (not idempotent) or an id from InitProducerId"
            ));
        }
        if epoch < 0 || base_sequence < 0 {
            return Err(format!(
                "producer {producer_id}: epoch {epoch} and base sequence {base_sequence} \
                 must both be >= 0 in a batch of an idempotent producer"
            ));
        }
        let Some(span) = i32::try_from(records).ok().filter(|&n| n >= 1) else {
            return Err(format!(
                "producer {producer_id}: a batch of {records} records"
            ));
        };
        Ok(Some(ProducerBatch {
            producer_id,
            epoch,
            first_seq: base_sequence,
            last_seq: seq_add(base_sequence, span - 1),
        }))
    }

    /// The batch a stored frame holds, with its base and last offset, or
    /// None for a frame of no idempotent producer, read as the native edge
    /// reads an incoming one ([`ProducerBatch::from_fields`]: the last
    /// sequence wraps at 2^31 as Kafka's). A frame with invalid fields was
    /// refused at the edge and is not folded.
    pub fn of_frame(h: &FrameHeader) -> Option<(ProducerBatch, u64, u64)> {
        let (base, next) = (h.base_offset(), h.next_offset());
        if next <= base {
            return None;
        }
        let records = u32::try_from(next - base).unwrap_or(u32::MAX);
        let b = ProducerBatch::from_fields(
            h.producer_id.get(),
            h.producer_epoch.get(),
            h.base_sequence.get(),
            records,
        )
        .ok()
        .flatten()?;
        Some((b, base, next - 1))
    }
}

/// `seq + n` modulo 2^31: sequences run from 0 to `i32::MAX` and wrap to 0,
/// as in Kafka (`DefaultRecordBatch.incrementSequence`). `seq` and `n` are
/// non-negative.
pub fn seq_add(seq: i32, n: i32) -> i32 {
    debug_assert!(seq >= 0 && n >= 0, "sequences and spans are non-negative");
    let sum = i64::from(seq) + i64::from(n);
    (sum % (i64::from(i32::MAX) + 1)) as i32
}

/// Producer ids advance by this step; a node's ids are its node id
/// modulo it, so nodes of one cluster (ids below it) never hand out the
/// same producer id (the idempotence state is keyed by it).
pub const PRODUCER_ID_STRIDE: i64 = 16;
const _: () = assert!(strom_replication::limits::VOTERS_MAX < PRODUCER_ID_STRIDE as usize);

/// The process-wide producer-id allocator, shared by every shard and
/// protocol. Ids stay unique across restarts without being stored: the
/// first is the start time in ms shifted past 2^16 allocations per ms of
/// run time; and across the nodes of a cluster by their residue modulo
/// [`PRODUCER_ID_STRIDE`].
#[derive(Debug)]
pub struct ProducerIds {
    next: AtomicI64,
}

impl ProducerIds {
    /// `node_id`: the cluster node id (0 on a single node); `now_ms` the
    /// wall clock in ms.
    pub fn new(node_id: u64, now_ms: i64) -> ProducerIds {
        let start_ms = now_ms.max(1);
        let residue = (node_id % PRODUCER_ID_STRIDE as u64) as i64;
        ProducerIds {
            next: AtomicI64::new((start_ms << 20) + residue),
        }
    }

    /// A producer id never handed out before by this node (nor, in a
    /// cluster, by another).
    pub fn allocate(&self) -> i64 {
        let id = self.next.fetch_add(PRODUCER_ID_STRIDE, Ordering::Relaxed);
        assert!(id >= 0, "producer ids stay positive for centuries");
        id
    }

    /// Makes every id allocated from now on larger than `id` (one found in
    /// a partition's rebuilt producer state), keeping this node's residue:
    /// a producer id is never handed out twice, even if the clock went
    /// back across a restart, as long as the state naming it survives.
    pub fn note(&self, id: i64) {
        let residue = self
            .next
            .load(Ordering::Relaxed)
            .rem_euclid(PRODUCER_ID_STRIDE);
        self.next
            .fetch_max(next_producer_id_above(id, residue), Ordering::Relaxed);
    }
}

/// The smallest id above `id` that is `residue` modulo the stride.
fn next_producer_id_above(id: i64, residue: i64) -> i64 {
    debug_assert!((0..PRODUCER_ID_STRIDE).contains(&residue));
    let base = id - id.rem_euclid(PRODUCER_ID_STRIDE) + residue;
    if base > id {
        base
    } else {
        base.saturating_add(PRODUCER_ID_STRIDE)
    }
}

/// Why a batch of an idempotent producer is refused (Kafka's codes of the
/// same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// The batch does not continue the producer's sequence.
    OutOfOrderSequence,
    /// The batch repeats a sequence older than the batches remembered.
    DuplicateSequence,
    /// The producer's epoch is older than the current one (fenced).
    InvalidProducerEpoch,
    /// A record without a key on a compacted topic (Kafka's
    /// INVALID_RECORD; natively `InvalidRequest`). Nothing was written.
    RecordWithoutKey,
}

/// A refused batch: why, and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: RefusalKind,
    pub message: String,
}

/// What to do with a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Append,
    Duplicate { base_offset: u64, last_offset: u64 },
    Reject(Refusal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Appended {
    first_seq: i32,
    last_seq: i32,
    base_offset: u64,
    last_offset: u64,
}

/// One partition of one topic incarnation (topic ids are never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionKey {
    pub topic_id: u64,
    pub partition: u32,
}

/// What is remembered of one producer on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Producer {
    epoch: i16,
    /// Oldest first; never empty.
    batches: VecDeque<Appended>,
    /// `max_timestamp_ms` of its last batch (what expiration compares, as
    /// Kafka's `lastTimestamp`).
    last_timestamp_ms: i64,
    /// Recency stamp: its key in [`ProducerStates::by_recency`].
    touched: u64,
}

impl Producer {
    fn last_offset(&self) -> u64 {
        self.batches.back().map_or(0, |a| a.last_offset)
    }
}

/// Sequences follow each other modulo 2^31, as in Kafka.
fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

type StateKey = (PartitionKey, i64);

/// Every idempotent producer's state on the partitions one shard owns, by
/// partition and producer id; bounded, least recently used evicted first.
#[derive(Debug)]
pub struct ProducerStates {
    partitions: HashMap<PartitionKey, HashMap<i64, Producer>>,
    /// Recency stamp -> state, one entry per state: the oldest is first.
    by_recency: BTreeMap<u64, StateKey>,
    /// States held (the sum over `partitions`).
    len: usize,
    clock: u64,
    capacity: usize,
    /// Each partition's transactions (`crate::txn_index`), derived from
    /// the same frames; not bounded by `capacity` (bounded per partition).
    txns: HashMap<PartitionKey, PartitionTxns>,
}

impl Default for ProducerStates {
    fn default() -> Self {
        ProducerStates::with_capacity(KAFKA_PRODUCER_STATES_PER_SHARD_MAX)
    }
}

impl ProducerStates {
    pub fn with_capacity(capacity: usize) -> ProducerStates {
        assert!(capacity > 0, "room for at least one producer");
        ProducerStates {
            partitions: HashMap::new(),
            by_recency: BTreeMap::new(),
            len: 0,
            clock: 0,
            capacity,
            txns: HashMap::new(),
        }
    }

    /// Folds one appended (or replayed) frame into its partition's
    /// transactions.
    pub fn observe_txn(&mut self, key: PartitionKey, h: &FrameHeader) {
        if h.producer_id.get() < 0 || !(h.is_transactional() || h.is_control()) {
            return;
        }
        let t = self.txns.entry(key).or_default();
        let forgotten = t.aborted_forgotten;
        t.observe(h);
        if t.aborted_forgotten != forgotten {
            tracing::warn!(
                topic_id = key.topic_id,
                partition = key.partition,
                "aborted-transaction index full: the oldest entry was forgotten"
            );
        }
    }

    /// Partition `key`'s transactions, if any.
    pub fn txns(&self, key: PartitionKey) -> Option<&PartitionTxns> {
        self.txns.get(&key)
    }

    /// (producer, partition) states held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no state is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Producers held for one partition.
    pub fn partition_len(&self, key: PartitionKey) -> usize {
        self.partitions.get(&key).map_or(0, HashMap::len)
    }

    /// Whether any state of the topic with `topic_id` is held.
    #[cfg(test)]
    pub fn holds_topic(&self, topic_id: u64) -> bool {
        self.partitions.keys().any(|k| k.topic_id == topic_id)
    }

    /// The largest producer id held (None if none).
    pub fn max_producer_id(&self) -> Option<i64> {
        self.partitions
            .values()
            .flat_map(|m| m.keys().copied())
            .max()
    }

    pub fn check(&self, key: PartitionKey, b: &ProducerBatch) -> Check {
        if let Some(m) = self
            .txns
            .get(&key)
            .and_then(|t| t.fenced(b.producer_id, b.epoch))
        {
            return Check::Reject(Refusal {
                kind: RefusalKind::InvalidProducerEpoch,
                message: format!(
                    "producer {} epoch {} is older than epoch {m} of its last transaction marker",
                    b.producer_id, b.epoch
                ),
            });
        }
        let Some(p) = self
            .partitions
            .get(&key)
            .and_then(|m| m.get(&b.producer_id))
        else {
            return Check::Append;
        };
        if b.epoch < p.epoch {
            return Check::Reject(Refusal {
                kind: RefusalKind::InvalidProducerEpoch,
                message: format!(
                    "producer {} epoch {} is older than the current epoch {}",
                    b.producer_id, b.epoch, p.epoch
                ),
            });
        }
        if b.epoch > p.epoch {
            if b.first_seq == 0 {
                return Check::Append;
            }
            return Check::Reject(Refusal {
                kind: RefusalKind::OutOfOrderSequence,
                message: format!(
                    "producer {} new epoch {} must start at sequence 0, not {}",
                    b.producer_id, b.epoch, b.first_seq
                ),
            });
        }
        if let Some(a) = p
            .batches
            .iter()
            .find(|a| a.first_seq == b.first_seq && a.last_seq == b.last_seq)
        {
            return Check::Duplicate {
                base_offset: a.base_offset,
                last_offset: a.last_offset,
            };
        }
        let Some(last) = p.batches.back() else {
            return Check::Append;
        };
        if b.first_seq == next_seq(last.last_seq) {
            return Check::Append;
        }
        let oldest = p.batches.front().map(|a| a.first_seq).unwrap_or(0);
        let kind = if b.first_seq < oldest && b.first_seq >= 0 && last.last_seq >= oldest {
            RefusalKind::DuplicateSequence
        } else {
            RefusalKind::OutOfOrderSequence
        };
        Check::Reject(Refusal {
            kind,
            message: format!(
                "producer {} epoch {}: expected sequence {}, got {}",
                b.producer_id,
                b.epoch,
                next_seq(last.last_seq),
                b.first_seq
            ),
        })
    }

    /// Makes room for one more state: evicts the least recently used when
    /// the table is full.
    fn make_room(&mut self) {
        if self.len < self.capacity {
            return;
        }
        if let Some((_, oldest)) = self.by_recency.pop_first() {
            let gone = self.take(oldest);
            debug_assert!(gone.is_some(), "recency index and states agree");
        }
    }

    /// Removes a state from `partitions` (not from `by_recency`).
    fn take(&mut self, (key, id): StateKey) -> Option<Producer> {
        let m = self.partitions.get_mut(&key)?;
        let p = m.remove(&id)?;
        if m.is_empty() {
            self.partitions.remove(&key);
        }
        self.len -= 1;
        Some(p)
    }

    /// Stamps `id` as the most recently used (its producer exists).
    fn touch(&mut self, id: StateKey) {
        self.clock += 1;
        let clock = self.clock;
        let p = self
            .partitions
            .get_mut(&id.0)
            .and_then(|m| m.get_mut(&id.1))
            .expect("touched state exists");
        if p.touched != 0 {
            let was = self.by_recency.remove(&p.touched);
            debug_assert_eq!(was, Some(id), "recency index and states agree");
        }
        p.touched = clock;
        self.by_recency.insert(clock, id);
    }

    /// Records an appended batch (after [`check`](Self::check) said Append,
    /// or replaying its frame), evicting the least recently used state when
    /// the table is full. `timestamp_ms` is the batch's `max_timestamp_ms`.
    pub fn record(
        &mut self,
        key: PartitionKey,
        b: &ProducerBatch,
        base_offset: u64,
        last_offset: u64,
        timestamp_ms: i64,
    ) {
        assert!(
            base_offset <= last_offset,
            "a batch holds at least one record"
        );
        let id = (key, b.producer_id);
        let known = self
            .partitions
            .get(&key)
            .is_some_and(|m| m.contains_key(&b.producer_id));
        if !known {
            self.make_room();
            self.partitions.entry(key).or_default().insert(
                b.producer_id,
                Producer {
                    epoch: b.epoch,
                    batches: VecDeque::new(),
                    last_timestamp_ms: timestamp_ms,
                    touched: 0,
                },
            );
            self.len += 1;
        }
        self.touch(id);
        let p = self
            .partitions
            .get_mut(&key)
            .and_then(|m| m.get_mut(&b.producer_id))
            .expect("recorded state exists");
        if p.epoch != b.epoch {
            p.epoch = b.epoch;
            p.batches.clear();
        }
        if p.batches.len() >= KAFKA_PRODUCER_BATCHES_MAX {
            p.batches.pop_front();
        }
        p.batches.push_back(Appended {
            first_seq: b.first_seq,
            last_seq: b.last_seq,
            base_offset,
            last_offset,
        });
        p.last_timestamp_ms = timestamp_ms;
        debug_assert!(p.batches.len() <= KAFKA_PRODUCER_BATCHES_MAX);
        assert!(self.len <= self.capacity, "producer states bounded");
        debug_assert_eq!(self.len, self.by_recency.len());
    }

    /// Drops the state of every topic whose id `live` rejects (deleted
    /// topics); returns how many states went.
    pub fn retain_topics(&mut self, live: impl Fn(u64) -> bool) -> usize {
        let before = self.len;
        self.txns.retain(|k, _| live(k.topic_id));
        self.partitions.retain(|k, _| live(k.topic_id));
        self.by_recency.retain(|_, (k, _)| live(k.topic_id));
        self.len = self.partitions.values().map(HashMap::len).sum();
        assert_eq!(
            self.len,
            self.by_recency.len(),
            "recency index and states agree"
        );
        before - self.len
    }

    /// Drops every producer whose last batch is at least `expiration_ms`
    /// older than `now_ms`, or lies wholly below its partition's log start
    /// (`log_start(key)`, None when unknown); returns how many went.
    pub fn expire(
        &mut self,
        now_ms: i64,
        expiration_ms: i64,
        log_start: impl Fn(PartitionKey) -> Option<u64>,
    ) -> usize {
        for (key, t) in self.txns.iter_mut() {
            if let Some(s) = log_start(*key) {
                t.prune(s);
            }
        }
        self.txns.retain(|_, t| !t.is_empty());
        let mut gone: Vec<(StateKey, u64)> = Vec::new();
        for (key, m) in &self.partitions {
            let start = log_start(*key);
            for (id, p) in m {
                let old = now_ms.saturating_sub(p.last_timestamp_ms) >= expiration_ms;
                let below = start.is_some_and(|s| p.last_offset() < s);
                if old || below {
                    gone.push(((*key, *id), p.touched));
                }
            }
        }
        for (id, touched) in &gone {
            let was = self.by_recency.remove(touched);
            debug_assert_eq!(was, Some(*id), "recency index and states agree");
            self.take(*id);
        }
        assert_eq!(
            self.len,
            self.by_recency.len(),
            "recency index and states agree"
        );
        gone.len()
    }

    /// Partition `key`'s producers as a snapshot at `offset` (the high
    /// watermark, taken under the partition's lane: every batch recorded
    /// is below it), least recently used first.
    pub fn snapshot(&self, key: PartitionKey, offset: u64) -> ProducerSnapshot {
        let mut producers: Vec<(&i64, &Producer)> = self
            .partitions
            .get(&key)
            .map(|m| m.iter().collect())
            .unwrap_or_default();
        producers.sort_by_key(|(_, p)| p.touched);
        let producers = producers
            .into_iter()
            .map(|(&producer_id, p)| {
                assert!(
                    p.last_offset() < offset,
                    "producer {producer_id}: a batch at {} is not below the snapshot's offset {offset}",
                    p.last_offset()
                );
                SnapshotProducer {
                    producer_id,
                    epoch: p.epoch,
                    last_timestamp_ms: p.last_timestamp_ms,
                    batches: p
                        .batches
                        .iter()
                        .map(|a| SnapshotBatch {
                            first_seq: a.first_seq,
                            last_seq: a.last_seq,
                            base_offset: a.base_offset,
                            last_offset: a.last_offset,
                        })
                        .collect(),
                }
            })
            .collect();
        let (txns, aborted) = self
            .txns
            .get(&key)
            .map(|t| t.snapshot_parts(offset))
            .unwrap_or_default();
        ProducerSnapshot {
            offset,
            producers,
            txns,
            aborted,
        }
    }

    /// Replaces partition `key`'s state with `rebuilt`'s (a table
    /// [`Rebuild`] filled for that partition alone), keeping its recency
    /// order; the most recent ones win if the table fills up.
    pub fn install(&mut self, key: PartitionKey, mut rebuilt: ProducerStates) {
        match rebuilt.txns.remove(&key) {
            Some(t) => {
                self.txns.insert(key, t);
            }
            None => {
                self.txns.remove(&key);
            }
        }
        if let Some(m) = self.partitions.remove(&key) {
            self.len -= m.len();
            self.by_recency.retain(|_, (k, _)| *k != key);
        }
        for (k, id) in rebuilt.by_recency.values() {
            assert_eq!(*k, key, "a rebuilt table holds one partition");
            let p = rebuilt.partitions[k][id].clone();
            self.make_room();
            self.partitions
                .entry(key)
                .or_default()
                .insert(*id, Producer { touched: 0, ..p });
            self.len += 1;
            self.touch((key, *id));
        }
        assert!(self.len <= self.capacity, "producer states bounded");
        debug_assert_eq!(self.len, self.by_recency.len());
    }

    /// Whether partition `key` holds the same producers as in `other`
    /// (epochs, batches, times; not recency), for tests of the rebuild.
    #[cfg(test)]
    pub fn same_partition(&self, other: &ProducerStates, key: PartitionKey) -> bool {
        let strip = |s: &ProducerStates| -> BTreeMap<i64, Producer> {
            s.partitions
                .get(&key)
                .map(|m| {
                    m.iter()
                        .map(|(id, p)| {
                            (
                                *id,
                                Producer {
                                    touched: 0,
                                    ..p.clone()
                                },
                            )
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        strip(self) == strip(other) && self.txns.get(&key) == other.txns.get(&key)
    }
}

/// Why a replay stopped early.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RebuildError {
    #[error("frame at offsets {base}..{next} does not follow offset {expected}")]
    Gap { expected: u64, base: u64, next: u64 },
}

/// Rebuilds one partition's producer state from its log: a snapshot (or
/// nothing) at `start`, then every frame from there on, in order.
/// I/O-free: the shell reads the snapshot and the frames.
#[derive(Debug)]
pub struct Rebuild {
    key: PartitionKey,
    log_start: u64,
    /// The offset the next frame must hold.
    next_offset: u64,
    states: ProducerStates,
    /// Frames replayed, and those of idempotent producers among them.
    pub frames: u64,
    pub producer_frames: u64,
}

impl Rebuild {
    /// A rebuild of partition `key` from its log start, with no snapshot.
    pub fn new(key: PartitionKey, log_start: u64, capacity: usize) -> Rebuild {
        Rebuild {
            key,
            log_start,
            next_offset: log_start,
            states: ProducerStates::with_capacity(capacity),
            frames: 0,
            producer_frames: 0,
        }
    }

    /// A rebuild that starts from `snapshot` (at or above the log start):
    /// its producers are taken as they were, except those whose batches
    /// all lie below the log start.
    pub fn from_snapshot(
        key: PartitionKey,
        log_start: u64,
        capacity: usize,
        snapshot: &ProducerSnapshot,
    ) -> Rebuild {
        let mut r = Rebuild::new(key, log_start, capacity);
        r.next_offset = snapshot.offset.max(log_start);
        let txns = PartitionTxns::from_snapshot(snapshot, log_start);
        if !txns.is_empty() {
            r.states.txns.insert(key, txns);
        }
        for sp in &snapshot.producers {
            let Some(last) = sp.batches.last() else {
                continue;
            };
            if last.last_offset < log_start {
                continue;
            }
            // Keep the newest batches if a snapshot holds more than we
            // remember (it never does while both limits are 5).
            let skip = sp.batches.len().saturating_sub(KAFKA_PRODUCER_BATCHES_MAX);
            for b in &sp.batches[skip..] {
                let batch = ProducerBatch {
                    producer_id: sp.producer_id,
                    epoch: sp.epoch,
                    first_seq: b.first_seq,
                    last_seq: b.last_seq,
                };
                r.states.record(
                    key,
                    &batch,
                    b.base_offset,
                    b.last_offset,
                    sp.last_timestamp_ms,
                );
            }
        }
        r
    }

    /// The offset of the next frame to replay.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Replays one frame. Frames come in log order: each holds the next
    /// offset (the first may start below it, when the log start lies
    /// inside a frame).
    pub fn apply(&mut self, h: &FrameHeader) -> Result<(), RebuildError> {
        let (base, next) = (h.base_offset(), h.next_offset());
        if base > self.next_offset || next <= self.next_offset {
            return Err(RebuildError::Gap {
                expected: self.next_offset,
                base,
                next,
            });
        }
        self.frames += 1;
        self.next_offset = next;
        self.states.observe_txn(self.key, h);
        if let Some((b, base, last)) = ProducerBatch::of_frame(h) {
            self.producer_frames += 1;
            self.states
                .record(self.key, &b, base, last, h.max_timestamp_ms.get());
        }
        Ok(())
    }

    /// The rebuilt table (partition `key` only), without the producers
    /// expired at `now_ms`, and how many were expired.
    pub fn finish(mut self, now_ms: i64, expiration_ms: i64) -> (ProducerStates, usize) {
        let start = self.log_start;
        let key = self.key;
        let expired = self
            .states
            .expire(now_ms, expiration_ms, |k| (k == key).then_some(start));
        (self.states, expired)
    }
}

/// A shard's idempotent producers: their states, and one lane per partition
/// under which a batch is checked, appended (to memory) and recorded, so
/// that a producer's batches reach the log in sequence order. Both keyed by
/// topic id (a re-created topic shares nothing with the deleted one) and
/// dropped with their topic ([`Producers::retain_topics`]); states are
/// bounded (see [`ProducerStates`]), lanes by the partitions the shard owns.
#[derive(Default)]
pub struct Producers {
    states: RefCell<ProducerStates>,
    lanes: RefCell<HashMap<PartitionKey, Rc<Semaphore>>>,
}

impl Producers {
    pub fn lane(&self, key: PartitionKey) -> Rc<Semaphore> {
        self.lanes
            .borrow_mut()
            .entry(key)
            .or_insert_with(|| Rc::new(Semaphore::new(1)))
            .clone()
    }

    /// The table's capacity (what a rebuild of one partition may hold).
    pub fn capacity(&self) -> usize {
        self.states.borrow().capacity
    }

    pub fn check(&self, key: PartitionKey, b: &ProducerBatch) -> Check {
        self.states.borrow().check(key, b)
    }

    pub fn record(&self, key: PartitionKey, b: &ProducerBatch, base: u64, last: u64, ts_ms: i64) {
        self.states.borrow_mut().record(key, b, base, last, ts_ms);
    }

    /// Folds an appended frame into its partition's transactions (call
    /// under the partition's lane, right after the append).
    pub fn observe_txn(&self, key: PartitionKey, h: &FrameHeader) {
        self.states.borrow_mut().observe_txn(key, h);
    }

    /// The epoch of `pid`'s last marker on `key` when newer than `epoch`.
    pub fn txn_fenced(&self, key: PartitionKey, pid: i64, epoch: i16) -> Option<i16> {
        self.states
            .borrow()
            .txns(key)
            .and_then(|t| t.fenced(pid, epoch))
    }

    /// Whether a transactional batch of `pid` can be taken on `key`.
    pub fn txn_admits(&self, key: PartitionKey, pid: i64) -> bool {
        self.states.borrow().txns(key).is_none_or(|t| t.admits(pid))
    }

    /// Partition `key`'s last stable offset given its high watermark.
    pub fn last_stable_offset(&self, key: PartitionKey, high_watermark: u64) -> u64 {
        self.states
            .borrow()
            .txns(key)
            .map_or(high_watermark, |t| t.last_stable_offset(high_watermark))
    }

    /// The aborted transactions a fetch of `[from, to)` on `key` reports.
    pub fn aborted_in(&self, key: PartitionKey, from: u64, to: u64) -> Vec<(i64, u64)> {
        self.states
            .borrow()
            .txns(key)
            .map(|t| t.aborted_in(from, to))
            .unwrap_or_default()
    }

    /// Partition `key`'s producers as a snapshot at `offset` (call under
    /// its lane, with `offset` its high watermark).
    pub fn snapshot(&self, key: PartitionKey, offset: u64) -> ProducerSnapshot {
        self.states.borrow().snapshot(key, offset)
    }

    /// Replaces partition `key`'s state with a rebuilt one.
    pub fn install(&self, key: PartitionKey, rebuilt: ProducerStates) {
        self.states.borrow_mut().install(key, rebuilt);
    }

    /// Drops expired producers (see [`ProducerStates::expire`]) as of now.
    pub fn expire(&self, now_ms: i64, log_start: impl Fn(PartitionKey) -> Option<u64>) -> usize {
        self.states
            .borrow_mut()
            .expire(now_ms, PRODUCER_ID_EXPIRATION_MS, log_start)
    }

    /// (producer, partition) states held.
    pub fn len(&self) -> usize {
        self.states.borrow().len()
    }

    /// Whether no state is held.
    pub fn is_empty(&self) -> bool {
        self.states.borrow().is_empty()
    }

    /// Drops the producer state and lanes of every topic not in `meta`
    /// (called once a metadata change is applied: deleted topics, and the
    /// old incarnation of re-created ones, go).
    pub fn retain_topics(&self, meta: &crate::metadata::Metadata) {
        let live: std::collections::HashSet<u64> = meta.topics.values().map(|t| t.id).collect();
        let dropped = self
            .states
            .borrow_mut()
            .retain_topics(|id| live.contains(&id));
        // A lane still held by an append in flight lives on in its Rc.
        self.lanes
            .borrow_mut()
            .retain(|k, _| live.contains(&k.topic_id));
        if dropped > 0 {
            tracing::debug!(states = dropped, "producer state of deleted topics dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::producer_snapshot::ProducerSnapshot;

    const NOW_MS: i64 = 1_800_000_000_000;

    const K: PartitionKey = PartitionKey {
        topic_id: 1,
        partition: 0,
    };

    /// One partition's view of the table.
    struct Table(ProducerStates);

    impl Table {
        fn check(&self, b: &ProducerBatch) -> Check {
            self.0.check(K, b)
        }
        fn record(&mut self, b: &ProducerBatch, base: u64, last: u64) {
            self.0.record(K, b, base, last, NOW_MS)
        }
    }

    fn key(topic_id: u64, partition: u32) -> PartitionKey {
        PartitionKey {
            topic_id,
            partition,
        }
    }

    /// A stored frame of producer `pid` holding `n` records from `base`.
    fn stored(pid: i64, epoch: i16, first_seq: i32, n: u32, base: u64, ts_ms: i64) -> Vec<u8> {
        let mut b = strom_flatbuffers::BatchBuilder::new();
        b.set_producer(pid, epoch, first_seq);
        for i in 0..n {
            b.push(&strom_flatbuffers::RecordIn {
                timestamp_ms: ts_ms - i64::from(n - 1 - i),
                value: Some(b"v"),
                ..Default::default()
            });
        }
        let mut f = b.finish();
        strom_flatbuffers::stamp_base_offset(&mut f, base);
        f
    }

    fn header(f: &[u8]) -> &FrameHeader {
        FrameHeader::ref_from(f).expect("a frame")
    }

    /// `frame` with transaction attribute `bits` (header checksum resealed).
    fn with_txn_bits(mut f: Vec<u8>, bits: u16) -> Vec<u8> {
        // Attributes at bytes 6..8, the header checksum at 68..72
        // (`docs/format.md`).
        let attrs = u16::from_le_bytes([f[6], f[7]]) | bits;
        f[6..8].copy_from_slice(&attrs.to_le_bytes());
        let crc = header(&f).compute_header_crc();
        f[68..72].copy_from_slice(&crc.to_le_bytes());
        f
    }

    /// Replays `frames` (from `log_start`) into a table for K alone.
    fn replay(frames: &[Vec<u8>], log_start: u64) -> ProducerStates {
        let mut r = Rebuild::new(K, log_start, KAFKA_PRODUCER_STATES_PER_SHARD_MAX);
        for f in frames {
            r.apply(header(f)).expect("in order");
        }
        r.finish(NOW_MS, PRODUCER_ID_EXPIRATION_MS).0
    }

    /// The bug this guards: after a failed log is reopened, a batch whose
    /// records did not survive was still remembered, so the producer's
    /// retry was answered as a duplicate with offsets the log no longer
    /// holds (or holds other records at), and stored nothing. A reopen now
    /// rebuilds the partition's state from what the log holds.
    #[test]
    fn batches_lost_by_a_reopen_are_appended_again_and_survivors_stay_duplicates() {
        let mut t = Table(ProducerStates::default());
        let other = key(1, 1);
        // Offsets 0..=9, 10..=19, 20..=29 on K; one batch on another partition.
        let mut log = Vec::new();
        for (i, first) in [0, 10, 20].into_iter().enumerate() {
            let b = batch(0, first, 10);
            assert_eq!(t.check(&b), Check::Append);
            t.record(&b, i as u64 * 10, i as u64 * 10 + 9);
            log.push(stored(7, 0, first, 10, i as u64 * 10, NOW_MS));
        }
        t.0.record(other, &batch(0, 0, 10), 0, 9, NOW_MS);
        assert!(t.0.same_partition(&replay(&log, 0), K), "replay = live");
        // The log came back with offsets 0..20: the third batch is gone.
        t.0.install(K, replay(&log[..2], 0));
        assert_eq!(
            t.check(&batch(0, 10, 10)),
            Check::Duplicate {
                base_offset: 10,
                last_offset: 19
            }
        );
        assert_eq!(t.check(&batch(0, 20, 10)), Check::Append);
        // Nothing survived: the producer is unknown and starts where it likes.
        t.0.install(K, replay(&[], 0));
        assert_eq!(t.0.partition_len(K), 0);
        assert_eq!(t.check(&batch(0, 0, 10)), Check::Append);
        // Other partitions keep theirs.
        assert!(matches!(
            t.0.check(other, &batch(0, 0, 10)),
            Check::Duplicate { .. }
        ));
        assert_eq!(t.0.len(), 1);
    }

    /// splitmix64, for the seeded model below.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// The property the restart relies on: for random histories of several
    /// producers (new epochs, retries answered as duplicates, refused
    /// batches, frames of no producer, a table too small for them all), a
    /// replay of the log from its start, and a replay from a snapshot taken
    /// anywhere (encoded and decoded as on disk) followed by the frames after
    /// it, give the table the live path built. The seed is printed on failure.
    #[test]
    fn a_replay_from_the_start_or_from_any_snapshot_equals_the_live_table() {
        for seed in 0..200u64 {
            let mut rng = Rng(seed);
            let capacity = 1 + rng.below(6) as usize;
            let mut live = ProducerStates::with_capacity(capacity);
            let mut log: Vec<Vec<u8>> = Vec::new();
            // Producer id -> (epoch, next sequence).
            let mut clients: BTreeMap<i64, (i16, i32)> = BTreeMap::new();
            let mut next_offset = 0u64;
            // (offset, live snapshot) taken at random points.
            let mut snaps: Vec<ProducerSnapshot> = Vec::new();
            for step in 0..150 {
                let pid = 100 + rng.below(8) as i64;
                let (epoch, seq) = *clients.entry(pid).or_insert((0, 0));
                let n = 1 + rng.below(4) as u32;
                let ts = NOW_MS - 1_000 + step;
                let (epoch, first) = match rng.below(10) {
                    // A new epoch from sequence 0.
                    0 => (epoch + 1, 0),
                    // A retry of an earlier batch, or a gap: refused or a
                    // duplicate, never appended.
                    // (Never below 0: the edges refuse a negative sequence,
                    // `ProducerBatch::from_fields`, and a replay skips one.)
                    1 => (
                        epoch,
                        seq.saturating_sub(rng.below(3) as i32 * n as i32).max(0),
                    ),
                    // A frame of no idempotent producer.
                    2 => {
                        log.push(stored(-1, -1, -1, n, next_offset, ts));
                        next_offset += u64::from(n);
                        continue;
                    }
                    // A transaction marker of a transactional producer
                    // (ids below 104), commit or abort, at its epoch.
                    3 if pid < 104 => {
                        use strom_flatbuffers::frame::{
                            ATTR_COMMIT, ATTR_CONTROL, ATTR_TRANSACTIONAL,
                        };
                        let commit = if rng.below(2) == 0 { ATTR_COMMIT } else { 0 };
                        let f = with_txn_bits(
                            stored(pid, epoch, -1, 1, next_offset, ts),
                            ATTR_TRANSACTIONAL | ATTR_CONTROL | commit,
                        );
                        live.observe_txn(K, header(&f));
                        log.push(f);
                        next_offset += 1;
                        continue;
                    }
                    _ => (epoch, seq),
                };
                let b = ProducerBatch {
                    producer_id: pid,
                    epoch,
                    first_seq: first,
                    last_seq: first + n as i32 - 1,
                };
                if live.check(K, &b) == Check::Append {
                    let last = next_offset + u64::from(n) - 1;
                    live.record(K, &b, next_offset, last, ts);
                    let mut f = stored(pid, epoch, first, n, next_offset, ts);
                    if pid < 104 {
                        f = with_txn_bits(f, strom_flatbuffers::frame::ATTR_TRANSACTIONAL);
                        live.observe_txn(K, header(&f));
                    }
                    log.push(f);
                    next_offset = last + 1;
                    clients.insert(pid, (epoch, first + n as i32));
                }
                if rng.below(15) == 0 {
                    let s = live.snapshot(K, next_offset);
                    let bytes = s.encode(0);
                    snaps.push(ProducerSnapshot::decode(&bytes, s.offset).expect("decodes"));
                }
            }
            let mut from_start = Rebuild::new(K, 0, capacity);
            for f in &log {
                from_start.apply(header(f)).expect("dense");
            }
            let (rebuilt, expired) = from_start.finish(NOW_MS, PRODUCER_ID_EXPIRATION_MS);
            assert_eq!(expired, 0);
            assert!(
                live.same_partition(&rebuilt, K),
                "seed {seed}: from the start\nlive {:?}\nrebuilt {:?}",
                live.partitions.get(&K),
                rebuilt.partitions.get(&K)
            );
            for s in &snaps {
                let mut r = Rebuild::from_snapshot(K, 0, capacity, s);
                for f in log.iter().filter(|f| header(f).base_offset() >= s.offset) {
                    r.apply(header(f)).expect("dense");
                }
                assert_eq!(r.next_offset(), next_offset);
                let (rebuilt, _) = r.finish(NOW_MS, PRODUCER_ID_EXPIRATION_MS);
                assert!(
                    live.same_partition(&rebuilt, K),
                    "seed {seed}: from the snapshot at {}",
                    s.offset
                );
                // Installed into a table holding other partitions, it
                // answers every check as the live table does.
                let mut shard = ProducerStates::with_capacity(capacity + 1);
                shard.record(key(2, 0), &batch(0, 0, 1), 0, 0, NOW_MS);
                shard.install(K, rebuilt);
                for (pid, (epoch, seq)) in &clients {
                    for first in [0, seq.saturating_sub(2), *seq] {
                        let b = ProducerBatch {
                            producer_id: *pid,
                            epoch: *epoch,
                            first_seq: first,
                            last_seq: first,
                        };
                        assert_eq!(shard.check(K, &b), live.check(K, &b), "seed {seed}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_replay_refuses_frames_out_of_order() {
        let mut r = Rebuild::new(K, 10, 10);
        // The first frame may hold the log start inside it.
        r.apply(header(&stored(1, 0, 0, 5, 8, NOW_MS)))
            .expect("holds 10");
        assert_eq!(r.next_offset(), 13);
        assert_eq!(
            r.apply(header(&stored(1, 0, 5, 1, 14, NOW_MS))),
            Err(RebuildError::Gap {
                expected: 13,
                base: 14,
                next: 15
            })
        );
        assert!(r.apply(header(&stored(1, 0, 5, 1, 12, NOW_MS))).is_err());
        assert_eq!(r.frames, 1);
    }

    /// Kafka's rules: a producer whose last batch is older than
    /// `producer.id.expiration.ms` goes; so does one whose batches all lie
    /// below the log start (retention or DeleteRecords took them).
    #[test]
    fn producers_expire_by_time_and_by_the_log_start() {
        let mut t = ProducerStates::default();
        let day = PRODUCER_ID_EXPIRATION_MS;
        let p = |id: i64| ProducerBatch {
            producer_id: id,
            epoch: 0,
            first_seq: 0,
            last_seq: 0,
        };
        t.record(K, &p(1), 0, 0, NOW_MS - day);
        t.record(K, &p(2), 1, 1, NOW_MS - day + 1);
        t.record(K, &p(3), 5, 5, NOW_MS);
        t.record(key(2, 0), &p(4), 0, 0, NOW_MS - 2 * day);
        t.record(key(3, 0), &p(5), 0, 0, NOW_MS);
        // Exactly the expiration ago goes (Kafka: `>=`).
        assert_eq!(t.expire(NOW_MS, day, |_| None), 2);
        assert_eq!(t.check(K, &p(1)), Check::Append);
        assert!(matches!(t.check(K, &p(2)), Check::Duplicate { .. }));
        // Producer 2's only batch is below K's log start 2; 3's is not.
        assert_eq!(t.expire(NOW_MS, day, |k| (k == K).then_some(2)), 1);
        assert_eq!(t.check(K, &p(2)), Check::Append);
        assert!(matches!(t.check(K, &p(3)), Check::Duplicate { .. }));
        assert_eq!(t.len(), 2);
        // A table that keeps working after expiry (recency index agrees).
        for id in 10..20 {
            t.record(K, &p(id), 6, 6, NOW_MS);
        }
        assert_eq!(t.len(), 12);
        // The same rules at the end of a replay.
        let mut r = Rebuild::new(K, 0, 10);
        r.apply(header(&stored(1, 0, 0, 1, 0, NOW_MS - day)))
            .expect("0");
        r.apply(header(&stored(2, 0, 0, 1, 1, NOW_MS))).expect("1");
        let (rebuilt, expired) = r.finish(NOW_MS, day);
        assert_eq!((rebuilt.len(), expired), (1, 1));
        // And on a snapshot: producers wholly below the log start are not taken.
        let snap = ProducerSnapshot {
            offset: 2,
            ..rebuilt.snapshot(K, 2)
        };
        let r = Rebuild::from_snapshot(K, 2, 10, &snap);
        assert_eq!(r.finish(NOW_MS, day).0.len(), 0);
    }

    #[test]
    fn install_replaces_one_partition_keeps_recency_and_the_bound() {
        let p = |id: i64| ProducerBatch {
            producer_id: id,
            epoch: 0,
            first_seq: 0,
            last_seq: 0,
        };
        let mut shard = ProducerStates::with_capacity(4);
        shard.record(K, &p(1), 0, 0, NOW_MS);
        shard.record(key(2, 0), &p(2), 0, 0, NOW_MS);
        let mut rebuilt = ProducerStates::with_capacity(4);
        for id in [30, 31, 32, 33] {
            rebuilt.record(K, &p(id), id as u64, id as u64, NOW_MS);
        }
        let snap = rebuilt.snapshot(K, 100);
        let order: Vec<i64> = snap.producers.iter().map(|p| p.producer_id).collect();
        assert_eq!(order, vec![30, 31, 32, 33], "least recently used first");
        shard.install(K, rebuilt);
        // Producer 1 of K was replaced; 2 of another partition was the
        // oldest left when the fourth came in, and went.
        assert_eq!(shard.len(), 4);
        assert_eq!(shard.partition_len(K), 4);
        assert_eq!(shard.check(K, &p(1)), Check::Append);
        assert_eq!(shard.check(key(2, 0), &p(2)), Check::Append);
        assert_eq!(shard.max_producer_id(), Some(33));
        assert_eq!(shard.snapshot(K, 100), snap, "recency order kept");
    }

    /// The bug this guards: state was keyed by topic name, so a topic
    /// deleted and created again under the same name answered the same
    /// producer's first batches as duplicates of the deleted topic's, with
    /// the deleted topic's offsets, and stored nothing.
    #[test]
    fn a_recreated_topic_is_another_key_and_a_deleted_topics_state_goes() {
        let mut t = ProducerStates::default();
        let old = key(3, 0);
        let b = batch(0, 0, 10);
        t.record(old, &b, 40, 49, NOW_MS);
        t.record(key(3, 1), &batch(0, 0, 2), 0, 1, NOW_MS);
        t.record(key(4, 0), &batch(0, 0, 2), 0, 1, NOW_MS);
        assert!(matches!(
            t.check(old, &b),
            Check::Duplicate {
                base_offset: 40,
                ..
            }
        ));
        // Same name, new id: the same batch is new there.
        assert_eq!(t.check(key(9, 0), &b), Check::Append);
        // Topic 3 deleted: its two states go, topic 4's stays.
        assert_eq!(t.retain_topics(|id| id != 3), 2);
        assert_eq!(t.len(), 1);
        assert!(!t.holds_topic(3) && t.holds_topic(4));
        assert_eq!(t.check(old, &b), Check::Append);
        // The table keeps working after a drop.
        t.record(key(9, 0), &b, 0, 9, NOW_MS);
        assert!(matches!(
            t.check(key(9, 0), &b),
            Check::Duplicate { base_offset: 0, .. }
        ));
        assert_eq!(t.retain_topics(|_| true), 0);
    }

    #[test]
    fn the_table_is_bounded_and_evicts_the_least_recently_appended() {
        let mut t = ProducerStates::with_capacity(3);
        let p = |id: i64, first: i32| ProducerBatch {
            producer_id: id,
            epoch: 0,
            first_seq: first,
            last_seq: first,
        };
        t.record(key(1, 0), &p(10, 0), 0, 0, NOW_MS);
        t.record(key(1, 0), &p(11, 0), 1, 1, NOW_MS);
        t.record(key(2, 5), &p(10, 0), 0, 0, NOW_MS);
        // Producer 10 on topic 1 appends again: producer 11 is now the oldest.
        t.record(key(1, 0), &p(10, 1), 2, 2, NOW_MS);
        assert_eq!(t.len(), 3);
        t.record(key(1, 0), &p(12, 0), 3, 3, NOW_MS);
        assert_eq!(t.len(), 3, "bounded at its capacity");
        assert_eq!(
            t.check(key(1, 0), &p(11, 0)),
            Check::Append,
            "11 was evicted"
        );
        assert!(matches!(
            t.check(key(1, 0), &p(10, 1)),
            Check::Duplicate { .. }
        ));
        assert!(matches!(
            t.check(key(2, 5), &p(10, 0)),
            Check::Duplicate { .. }
        ));
        assert!(matches!(
            t.check(key(1, 0), &p(12, 0)),
            Check::Duplicate { .. }
        ));
        // Churn through many topics: never more than the capacity.
        for id in 100..1_000u64 {
            t.record(key(id, 0), &p(1, 0), 0, 0, NOW_MS);
            assert!(t.len() <= 3);
        }
        assert!(t.holds_topic(999) && !t.holds_topic(1));
    }

    #[test]
    fn frame_fields_are_validated_and_sequences_wrap() {
        assert_eq!(ProducerBatch::from_fields(-1, -1, -1, 5), Ok(None));
        assert_eq!(ProducerBatch::from_fields(-1, 3, 9, 5), Ok(None));
        assert_eq!(
            ProducerBatch::from_fields(7, 2, 10, 5),
            Ok(Some(ProducerBatch {
                producer_id: 7,
                epoch: 2,
                first_seq: 10,
                last_seq: 14
            }))
        );
        for (id, epoch, seq, n) in [
            (-2, 0, 0, 1),
            (7, -1, 0, 1),
            (7, 0, -1, 1),
            (7, 0, 0, 0),
            (i64::MIN, 0, 0, 1),
        ] {
            let r = ProducerBatch::from_fields(id, epoch, seq, n);
            assert!(r.is_err(), "({id}, {epoch}, {seq}, {n}) refused: {r:?}");
        }
        let top = ProducerBatch::from_fields(1, 0, i32::MAX - 1, 4)
            .expect("valid")
            .expect("idempotent");
        assert_eq!(top.last_seq, 1, "MAX-1, MAX, 0, 1");
        assert_eq!(seq_add(i32::MAX, 1), 0);
        assert_eq!(seq_add(0, i32::MAX), i32::MAX);
        assert_eq!(seq_add(5, 0), 5);
    }

    /// Producer ids come from the start time, so ids after a restart are
    /// larger, unless the clock went back: then an id a surviving producer
    /// state names could be handed out again. The rebuilt state raises the
    /// floor above every id it names.
    #[test]
    fn ids_after_a_noted_one_are_larger_and_keep_the_residue() {
        assert_eq!(next_producer_id_above(100, 3), 115);
        assert_eq!(next_producer_id_above(96, 3), 99);
        assert_eq!(next_producer_id_above(99, 3), 115);
        assert_eq!(next_producer_id_above(-1, 0), 0);
        let ids = ProducerIds::new(5, 1_000);
        let first = ids.allocate();
        assert_eq!(first.rem_euclid(PRODUCER_ID_STRIDE), 5);
        // An id below what is allocated changes nothing.
        ids.note(first - 100);
        assert_eq!(ids.allocate(), first + PRODUCER_ID_STRIDE);
        // One far above (a clock that went back) lifts the floor.
        let seen = first + (1 << 30) + 7;
        ids.note(seen);
        let next = ids.allocate();
        assert!(
            next > seen && next - seen <= PRODUCER_ID_STRIDE,
            "{next} {seen}"
        );
        assert_eq!(next.rem_euclid(PRODUCER_ID_STRIDE), 5);
    }

    #[test]
    fn producer_ids_are_unique_and_carry_the_node_residue() {
        let a = ProducerIds::new(3, 1_000);
        let b = ProducerIds::new(4, 1_000);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let (x, y) = (a.allocate(), b.allocate());
            assert_eq!(x % PRODUCER_ID_STRIDE, 3);
            assert_eq!(y % PRODUCER_ID_STRIDE, 4);
            assert!(seen.insert(x) && seen.insert(y));
        }
        // A restart a millisecond later starts past 2^16 allocations.
        let later = ProducerIds::new(3, 1_001);
        assert!(later.allocate() > ProducerIds::new(3, 1_000).allocate() + (1 << 16));
    }

    fn batch(epoch: i16, first: i32, n: i32) -> ProducerBatch {
        ProducerBatch {
            producer_id: 7,
            epoch,
            first_seq: first,
            last_seq: first + n - 1,
        }
    }

    #[test]
    fn in_order_batches_append_and_retries_are_duplicates() {
        let mut t = Table(ProducerStates::default());
        let b0 = batch(0, 0, 10);
        assert_eq!(t.check(&b0), Check::Append);
        t.record(&b0, 100, 109);
        let b1 = batch(0, 10, 5);
        assert_eq!(t.check(&b1), Check::Append);
        t.record(&b1, 110, 114);
        assert_eq!(
            t.check(&b0),
            Check::Duplicate {
                base_offset: 100,
                last_offset: 109
            }
        );
        assert_eq!(
            t.check(&b1),
            Check::Duplicate {
                base_offset: 110,
                last_offset: 114
            }
        );
    }

    #[test]
    fn gaps_are_out_of_order_and_old_epochs_are_fenced() {
        let mut t = Table(ProducerStates::default());
        t.record(&batch(1, 0, 10), 0, 9);
        match t.check(&batch(1, 11, 1)) {
            Check::Reject(r) => assert_eq!(r.kind, RefusalKind::OutOfOrderSequence),
            c => panic!("{c:?}"),
        }
        match t.check(&batch(0, 10, 1)) {
            Check::Reject(r) => assert_eq!(r.kind, RefusalKind::InvalidProducerEpoch),
            c => panic!("{c:?}"),
        }
        assert_eq!(t.check(&batch(2, 0, 1)), Check::Append);
        match t.check(&batch(2, 5, 1)) {
            Check::Reject(r) => assert_eq!(r.kind, RefusalKind::OutOfOrderSequence),
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn only_the_last_five_batches_are_remembered_and_sequences_wrap() {
        let mut t = Table(ProducerStates::default());
        for i in 0..10 {
            t.record(&batch(0, i, 1), i as u64, i as u64);
        }
        assert!(matches!(t.check(&batch(0, 9, 1)), Check::Duplicate { .. }));
        assert!(matches!(t.check(&batch(0, 2, 1)), Check::Reject { .. }));
        let mut w = Table(ProducerStates::default());
        let top = ProducerBatch {
            producer_id: 1,
            epoch: 0,
            first_seq: i32::MAX - 1,
            last_seq: i32::MAX,
        };
        w.record(&top, 0, 1);
        let wrapped = ProducerBatch {
            producer_id: 1,
            epoch: 0,
            first_seq: 0,
            last_seq: 3,
        };
        assert_eq!(w.check(&wrapped), Check::Append);
    }
}
