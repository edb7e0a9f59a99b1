//! Idempotent producers, Kafka's rules: per (producer id, partition) the
//! broker keeps the producer epoch and its last few batches (first and last
//! sequence, offsets). A retried batch that matches one of them is a
//! duplicate and gets the original offsets back without a second append; a
//! batch that does not continue the sequence is refused with
//! OUT_OF_ORDER_SEQUENCE_NUMBER; an older epoch is fenced.
//!
//! State is in memory on the owning shard: a restart forgets it, and the
//! first batch of an unknown producer is accepted whatever its sequence
//! (as Kafka does once a producer's state has expired).
//!
//! I/O-free; the owner checks and records under the partition's lane.

use super::codec::{
    DUPLICATE_SEQUENCE_NUMBER, INVALID_PRODUCER_EPOCH, OUT_OF_ORDER_SEQUENCE_NUMBER,
};
use crate::limits::{KAFKA_PRODUCERS_PER_PARTITION_MAX, KAFKA_PRODUCER_BATCHES_MAX};
use std::collections::{HashMap, VecDeque};

/// The idempotence fields of one Kafka batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerBatch {
    pub producer_id: i64,
    pub epoch: i16,
    pub first_seq: i32,
    pub last_seq: i32,
}

/// What to do with a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Append,
    Duplicate { base_offset: u64, last_offset: u64 },
    Reject { code: i16, message: String },
}

#[derive(Debug, Clone, Copy)]
struct Appended {
    first_seq: i32,
    last_seq: i32,
    base_offset: u64,
    last_offset: u64,
}

#[derive(Debug)]
struct Producer {
    epoch: i16,
    batches: VecDeque<Appended>,
    /// Recency, for eviction when the table is full.
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

/// Every producer of one partition.
#[derive(Debug, Default)]
pub struct ProducerTable {
    producers: HashMap<i64, Producer>,
    clock: u64,
}

impl ProducerTable {
    pub fn check(&self, b: &ProducerBatch) -> Check {
        let Some(p) = self.producers.get(&b.producer_id) else {
            return Check::Append;
        };
        if b.epoch < p.epoch {
            return Check::Reject {
                code: INVALID_PRODUCER_EPOCH,
                message: format!(
                    "producer {} epoch {} is older than the current epoch {}",
                    b.producer_id, b.epoch, p.epoch
                ),
            };
        }
        if b.epoch > p.epoch {
            if b.first_seq == 0 {
                return Check::Append;
            }
            return Check::Reject {
                code: OUT_OF_ORDER_SEQUENCE_NUMBER,
                message: format!(
                    "producer {} new epoch {} must start at sequence 0, not {}",
                    b.producer_id, b.epoch, b.first_seq
                ),
            };
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
        let code = if b.first_seq < oldest && b.first_seq >= 0 && last.last_seq >= oldest {
            DUPLICATE_SEQUENCE_NUMBER
        } else {
            OUT_OF_ORDER_SEQUENCE_NUMBER
        };
        Check::Reject {
            code,
            message: format!(
                "producer {} epoch {}: expected sequence {}, got {}",
                b.producer_id,
                b.epoch,
                next_seq(last.last_seq),
                b.first_seq
            ),
        }
    }

    /// Records an appended batch (after [`check`](Self::check) said Append).
    pub fn record(&mut self, b: &ProducerBatch, base_offset: u64, last_offset: u64) {
        self.clock += 1;
        if !self.producers.contains_key(&b.producer_id)
            && self.producers.len() >= KAFKA_PRODUCERS_PER_PARTITION_MAX
        {
            if let Some(oldest) = self
                .producers
                .iter()
                .min_by_key(|(_, p)| p.touched)
                .map(|(id, _)| *id)
            {
                self.producers.remove(&oldest);
            }
        }
        let p = self.producers.entry(b.producer_id).or_insert(Producer {
            epoch: b.epoch,
            batches: VecDeque::new(),
            touched: 0,
        });
        if p.epoch != b.epoch {
            p.epoch = b.epoch;
            p.batches.clear();
        }
        p.touched = self.clock;
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut t = ProducerTable::default();
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
        let mut t = ProducerTable::default();
        t.record(&batch(1, 0, 10), 0, 9);
        match t.check(&batch(1, 11, 1)) {
            Check::Reject { code, .. } => assert_eq!(code, OUT_OF_ORDER_SEQUENCE_NUMBER),
            c => panic!("{c:?}"),
        }
        match t.check(&batch(0, 10, 1)) {
            Check::Reject { code, .. } => assert_eq!(code, INVALID_PRODUCER_EPOCH),
            c => panic!("{c:?}"),
        }
        assert_eq!(t.check(&batch(2, 0, 1)), Check::Append);
        match t.check(&batch(2, 5, 1)) {
            Check::Reject { code, .. } => assert_eq!(code, OUT_OF_ORDER_SEQUENCE_NUMBER),
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn only_the_last_five_batches_are_remembered_and_sequences_wrap() {
        let mut t = ProducerTable::default();
        for i in 0..10 {
            t.record(&batch(0, i, 1), i as u64, i as u64);
        }
        assert!(matches!(t.check(&batch(0, 9, 1)), Check::Duplicate { .. }));
        assert!(matches!(t.check(&batch(0, 2, 1)), Check::Reject { .. }));
        let mut w = ProducerTable::default();
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
