//! Idempotent producers, protocol-neutral, with Kafka's rules: per
//! (producer id, partition) the owning shard keeps the producer epoch and its
//! last few batches (first and last sequence, offsets). A retried batch that
//! matches one of them is a duplicate and gets the original offsets back
//! without a second append; a batch that does not continue the sequence is
//! refused as out of order; an older epoch is fenced. The operations layer
//! checks and records here for every protocol (`ops::owner`); an edge only
//! maps a [`Refusal`] to its own error code.
//!
//! State is in memory on the owning shard: a restart forgets it, and the
//! first batch of an unknown producer is accepted whatever its sequence
//! (as Kafka does once a producer's state has expired).
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
//!
//! [`ProducerStates`] is I/O-free; [`Producers`] adds the per-partition
//! lanes under which the owner checks, appends and records.
//!
//! Producer ids come from [`ProducerIds`], one process-wide allocator that
//! every protocol's InitProducerId uses (`ops::init_producer_id`).

use crate::limits::{KAFKA_PRODUCER_BATCHES_MAX, KAFKA_PRODUCER_STATES_PER_SHARD_MAX};
use glommio::sync::Semaphore;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, Ordering};

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

#[derive(Debug, Clone, Copy)]
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
#[derive(Debug)]
struct Producer {
    epoch: i16,
    batches: VecDeque<Appended>,
    /// Recency stamp: its key in [`ProducerStates::by_recency`].
    touched: u64,
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
/// (partition, producer id); bounded, least recently used evicted first.
#[derive(Debug)]
pub struct ProducerStates {
    states: HashMap<StateKey, Producer>,
    /// Recency stamp -> state, one entry per state: the oldest is first.
    by_recency: BTreeMap<u64, StateKey>,
    clock: u64,
    capacity: usize,
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
            states: HashMap::new(),
            by_recency: BTreeMap::new(),
            clock: 0,
            capacity,
        }
    }

    /// (producer, partition) states held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.states.len()
    }

    /// Whether no state is held.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// Whether any state of the topic with `topic_id` is held.
    #[cfg(test)]
    pub fn holds_topic(&self, topic_id: u64) -> bool {
        self.states.keys().any(|(k, _)| k.topic_id == topic_id)
    }

    pub fn check(&self, key: PartitionKey, b: &ProducerBatch) -> Check {
        let Some(p) = self.states.get(&(key, b.producer_id)) else {
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

    /// Records an appended batch (after [`check`](Self::check) said Append),
    /// evicting the least recently used state when the table is full.
    pub fn record(
        &mut self,
        key: PartitionKey,
        b: &ProducerBatch,
        base_offset: u64,
        last_offset: u64,
    ) {
        assert!(
            base_offset <= last_offset,
            "a batch holds at least one record"
        );
        self.clock += 1;
        let id = (key, b.producer_id);
        if !self.states.contains_key(&id) && self.states.len() >= self.capacity {
            if let Some((_, oldest)) = self.by_recency.pop_first() {
                let gone = self.states.remove(&oldest);
                debug_assert!(gone.is_some(), "recency index and states agree");
            }
        }
        let p = self.states.entry(id).or_insert(Producer {
            epoch: b.epoch,
            batches: VecDeque::new(),
            touched: 0,
        });
        if p.epoch != b.epoch {
            p.epoch = b.epoch;
            p.batches.clear();
        }
        if p.touched != 0 {
            let was = self.by_recency.remove(&p.touched);
            debug_assert_eq!(was, Some(id), "recency index and states agree");
        }
        p.touched = self.clock;
        self.by_recency.insert(self.clock, id);
        if p.batches.len() >= KAFKA_PRODUCER_BATCHES_MAX {
            p.batches.pop_front();
        }
        p.batches.push_back(Appended {
            first_seq: b.first_seq,
            last_seq: b.last_seq,
            base_offset,
            last_offset,
        });
        debug_assert!(p.batches.len() <= KAFKA_PRODUCER_BATCHES_MAX);
        assert!(
            self.states.len() <= self.capacity,
            "producer states bounded"
        );
        debug_assert_eq!(self.states.len(), self.by_recency.len());
    }

    /// Forgets the remembered batches of partition `key` at or past
    /// `offset`: the partition was reopened after its log failed and
    /// recovered up to `offset`, so those batches may be gone, and a retry of
    /// one must be appended again, not answered as a duplicate. Batches
    /// below `offset` survived and stay; each producer keeps its epoch.
    /// Returns how many batches went.
    pub fn forget_from(&mut self, key: PartitionKey, offset: u64) -> usize {
        let mut dropped = 0;
        for ((k, _), p) in self.states.iter_mut() {
            if *k == key {
                let before = p.batches.len();
                p.batches.retain(|a| a.last_offset < offset);
                dropped += before - p.batches.len();
            }
        }
        dropped
    }

    /// Drops the state of every topic whose id `live` rejects (deleted
    /// topics); returns how many states went.
    pub fn retain_topics(&mut self, live: impl Fn(u64) -> bool) -> usize {
        let before = self.states.len();
        self.states.retain(|(k, _), _| live(k.topic_id));
        self.by_recency.retain(|_, (k, _)| live(k.topic_id));
        assert_eq!(
            self.states.len(),
            self.by_recency.len(),
            "recency index and states agree"
        );
        before - self.states.len()
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

    pub fn check(&self, key: PartitionKey, b: &ProducerBatch) -> Check {
        self.states.borrow().check(key, b)
    }

    pub fn record(&self, key: PartitionKey, b: &ProducerBatch, base: u64, last: u64) {
        self.states.borrow_mut().record(key, b, base, last);
    }

    /// Forgets the batches of a reopened partition that its recovered log
    /// no longer holds (see [`ProducerStates::forget_from`]).
    pub fn forget_from(&self, key: PartitionKey, offset: u64) {
        let dropped = self.states.borrow_mut().forget_from(key, offset);
        if dropped > 0 {
            tracing::warn!(
                topic_id = key.topic_id,
                partition = key.partition,
                batches = dropped,
                "producer batches past the reopened log's end forgotten"
            );
        }
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
            self.0.record(K, b, base, last)
        }
    }

    fn key(topic_id: u64, partition: u32) -> PartitionKey {
        PartitionKey {
            topic_id,
            partition,
        }
    }

    /// The bug this guards: after a failed log is reopened, a batch whose
    /// records did not survive was still remembered, so the producer's
    /// retry was answered as a duplicate with offsets the log no longer
    /// holds (or holds other records at), and stored nothing.
    #[test]
    fn batches_lost_by_a_reopen_are_appended_again_and_survivors_stay_duplicates() {
        let mut t = Table(ProducerStates::default());
        let other = key(1, 1);
        // Offsets 0..=9, 10..=19, 20..=29 on K; one batch on another partition.
        for (i, first) in [0, 10, 20].into_iter().enumerate() {
            let b = batch(0, first, 10);
            assert_eq!(t.check(&b), Check::Append);
            t.record(&b, i as u64 * 10, i as u64 * 10 + 9);
        }
        t.0.record(other, &batch(0, 0, 10), 0, 9);
        // The log came back with offsets 0..20: the third batch is gone.
        assert_eq!(t.0.forget_from(K, 20), 1);
        assert_eq!(
            t.check(&batch(0, 10, 10)),
            Check::Duplicate {
                base_offset: 10,
                last_offset: 19
            }
        );
        assert_eq!(t.check(&batch(0, 20, 10)), Check::Append);
        // Nothing survived: the producer starts again where it likes, but
        // its epoch still fences older ones.
        assert_eq!(t.0.forget_from(K, 0), 2);
        assert_eq!(t.check(&batch(0, 0, 10)), Check::Append);
        assert!(matches!(t.check(&batch(-1, 0, 10)), Check::Reject { .. }));
        // Other partitions keep theirs.
        assert!(matches!(
            t.0.check(other, &batch(0, 0, 10)),
            Check::Duplicate { .. }
        ));
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
        t.record(old, &b, 40, 49);
        t.record(key(3, 1), &batch(0, 0, 2), 0, 1);
        t.record(key(4, 0), &batch(0, 0, 2), 0, 1);
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
        t.record(key(9, 0), &b, 0, 9);
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
        t.record(key(1, 0), &p(10, 0), 0, 0);
        t.record(key(1, 0), &p(11, 0), 1, 1);
        t.record(key(2, 5), &p(10, 0), 0, 0);
        // Producer 10 on topic 1 appends again: producer 11 is now the oldest.
        t.record(key(1, 0), &p(10, 1), 2, 2);
        assert_eq!(t.len(), 3);
        t.record(key(1, 0), &p(12, 0), 3, 3);
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
            t.record(key(id, 0), &p(1, 0), 0, 0);
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
