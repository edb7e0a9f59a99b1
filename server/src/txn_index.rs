//! One partition's transactions, I/O-free: which producers have a
//! transaction open here and from which offset (so the last stable offset,
//! LSO, is the first offset of the oldest open one, or the high watermark),
//! the epoch of each producer's last marker here (older epochs are fenced),
//! and the aborted transactions (Kafka's `.txnindex`: producer id, first
//! offset, marker offset) that a `read_committed` fetch reports.
//!
//! It is derived from the log alone: [`PartitionTxns::observe`] folds one
//! stored frame (a transactional batch opens its producer's transaction if
//! none is open; a control batch closes it, and records it as aborted for
//! an abort marker). The produce path observes each frame it appends and
//! the rebuild at open observes each frame it replays, with the same
//! function, so a restart gives the same state. Snapshot files (version 2)
//! carry it, so the replay at open stays bounded (see `producers.rs`).
//!
//! Invariants:
//! - `aborted` is in increasing marker-offset order; each entry has
//!   `first_offset <= last_offset`.
//! - A producer's `ongoing_first` is at most its `last_offset`.
//! - At most [`TXN_SNAPSHOT_PRODUCERS_MAX`] producers (those with no open
//!   transaction and the oldest last offset go first; a producer with an
//!   open transaction is never forgotten, so past the bound a new
//!   transactional producer is refused by [`PartitionTxns::admits`]) and
//!   [`TXN_SNAPSHOT_ABORTED_MAX`] aborted transactions (the oldest go, and
//!   are counted in `aborted_forgotten`).

use crate::engine::limits::{TXN_SNAPSHOT_ABORTED_MAX, TXN_SNAPSHOT_PRODUCERS_MAX};
use crate::engine::producer_snapshot::{ProducerSnapshot, SnapshotAborted, SnapshotTxn};
use std::collections::{HashMap, VecDeque};
use strom_flatbuffers::FrameHeader;

/// What a partition remembers of one transactional producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TxnProducer {
    /// Epoch of its last marker here; -1 before the first.
    marker_epoch: i16,
    ongoing_first: Option<u64>,
    last_offset: u64,
}

/// One partition's transactions (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionTxns {
    producers: HashMap<i64, TxnProducer>,
    aborted: VecDeque<SnapshotAborted>,
    /// Aborted transactions dropped past the bound (for a warning).
    pub aborted_forgotten: u64,
}

impl PartitionTxns {
    /// The state a snapshot holds, without what lies wholly below
    /// `log_start`.
    pub fn from_snapshot(s: &ProducerSnapshot, log_start: u64) -> PartitionTxns {
        let mut t = PartitionTxns::default();
        for e in &s.txns {
            t.producers.insert(
                e.producer_id,
                TxnProducer {
                    marker_epoch: e.marker_epoch,
                    ongoing_first: e.ongoing_first_offset,
                    last_offset: e.last_offset,
                },
            );
        }
        t.aborted = s.aborted.iter().copied().collect();
        t.prune(log_start);
        t
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty() && self.aborted.is_empty()
    }

    /// Folds one stored frame (in log order).
    pub fn observe(&mut self, h: &FrameHeader) {
        let pid = h.producer_id.get();
        if pid < 0 || !(h.is_transactional() || h.is_control()) {
            return;
        }
        let (base, last) = (h.base_offset(), h.last_offset());
        self.make_room(pid);
        let p = self.producers.entry(pid).or_insert(TxnProducer {
            marker_epoch: -1,
            ongoing_first: None,
            last_offset: last,
        });
        p.last_offset = last;
        if h.is_control() {
            p.marker_epoch = p.marker_epoch.max(h.producer_epoch.get());
            if let Some(first) = p.ongoing_first.take() {
                if !h.is_commit_marker() {
                    debug_assert!(self.aborted.back().is_none_or(|a| a.last_offset < base));
                    self.aborted.push_back(SnapshotAborted {
                        producer_id: pid,
                        first_offset: first,
                        last_offset: base,
                    });
                    if self.aborted.len() > TXN_SNAPSHOT_ABORTED_MAX {
                        self.aborted.pop_front();
                        self.aborted_forgotten += 1;
                    }
                }
            }
        } else if p.ongoing_first.is_none() {
            p.ongoing_first = Some(base);
        }
        debug_assert!(self.producers.len() <= TXN_SNAPSHOT_PRODUCERS_MAX);
    }

    /// Forgets the producer with no open transaction and the oldest last
    /// offset when the table is full and `pid` is new.
    fn make_room(&mut self, pid: i64) {
        if self.producers.len() < TXN_SNAPSHOT_PRODUCERS_MAX || self.producers.contains_key(&pid) {
            return;
        }
        let oldest = self
            .producers
            .iter()
            .filter(|(_, p)| p.ongoing_first.is_none())
            .min_by_key(|(_, p)| p.last_offset)
            .map(|(id, _)| *id);
        if let Some(id) = oldest {
            self.producers.remove(&id);
        }
    }

    /// Whether a transactional batch of `pid` can be taken: a known
    /// producer always; a new one while the table has room or holds a
    /// producer it can forget.
    pub fn admits(&self, pid: i64) -> bool {
        self.producers.len() < TXN_SNAPSHOT_PRODUCERS_MAX
            || self.producers.contains_key(&pid)
            || self.producers.values().any(|p| p.ongoing_first.is_none())
    }

    /// The epoch of `pid`'s last marker here when it is newer than `epoch`
    /// (the batch is fenced), else None.
    pub fn fenced(&self, pid: i64, epoch: i16) -> Option<i16> {
        self.producers
            .get(&pid)
            .map(|p| p.marker_epoch)
            .filter(|&m| m > epoch)
    }

    /// Whether `pid` has a transaction open here.
    pub fn ongoing(&self, pid: i64) -> bool {
        self.producers
            .get(&pid)
            .is_some_and(|p| p.ongoing_first.is_some())
    }

    /// The last stable offset given the high watermark: the first offset of
    /// the oldest open transaction, or `high_watermark`.
    pub fn last_stable_offset(&self, high_watermark: u64) -> u64 {
        self.producers
            .values()
            .filter_map(|p| p.ongoing_first)
            .min()
            .map_or(high_watermark, |f| f.min(high_watermark))
    }

    /// The aborted transactions a fetch of `[from, to)` must report: those
    /// whose marker is at or after `from` and that start before `to`, as
    /// (producer id, first offset), in marker order.
    pub fn aborted_in(&self, from: u64, to: u64) -> Vec<(i64, u64)> {
        let start = self.aborted.partition_point(|a| a.last_offset < from);
        self.aborted
            .iter()
            .skip(start)
            .filter(|a| a.first_offset < to)
            .map(|a| (a.producer_id, a.first_offset))
            .collect()
    }

    /// Drops what lies wholly below `log_start`.
    pub fn prune(&mut self, log_start: u64) {
        self.aborted.retain(|a| a.last_offset >= log_start);
        self.producers
            .retain(|_, p| p.ongoing_first.is_some() || p.last_offset >= log_start);
    }

    /// The snapshot entries at `offset` (everything remembered is below it:
    /// taken under the partition's lane at its high watermark).
    pub fn snapshot_parts(&self, offset: u64) -> (Vec<SnapshotTxn>, Vec<SnapshotAborted>) {
        let mut txns: Vec<SnapshotTxn> = self
            .producers
            .iter()
            .map(|(&producer_id, p)| {
                assert!(
                    p.last_offset < offset,
                    "transaction state below the snapshot"
                );
                SnapshotTxn {
                    producer_id,
                    marker_epoch: p.marker_epoch,
                    ongoing_first_offset: p.ongoing_first,
                    last_offset: p.last_offset,
                }
            })
            .collect();
        txns.sort_by_key(|t| t.last_offset);
        (txns, self.aborted.iter().copied().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strom_flatbuffers::frame::{ATTR_COMMIT, ATTR_CONTROL, ATTR_TRANSACTIONAL};
    use strom_flatbuffers::{stamp_base_offset, BatchBuilder, RecordIn};

    fn frame(pid: i64, epoch: i16, base: u64, records: usize, bits: u16) -> Vec<u8> {
        let mut b = BatchBuilder::new();
        b.set_producer(pid, epoch, if bits & ATTR_CONTROL != 0 { -1 } else { 0 });
        b.set_txn_attributes(bits);
        for _ in 0..records {
            b.push(&RecordIn {
                value: Some(b"v"),
                ..Default::default()
            });
        }
        let mut f = b.finish();
        stamp_base_offset(&mut f, base);
        f
    }

    fn obs(t: &mut PartitionTxns, f: &[u8]) {
        t.observe(FrameHeader::ref_from(f).expect("header"));
    }

    #[test]
    fn lso_aborted_index_and_fencing_follow_the_log() {
        let mut t = PartitionTxns::default();
        let txn = ATTR_TRANSACTIONAL;
        let abort = ATTR_TRANSACTIONAL | ATTR_CONTROL;
        let commit = abort | ATTR_COMMIT;
        // Plain and idempotent batches are not transactions.
        obs(&mut t, &frame(-1, -1, 0, 2, 0));
        obs(&mut t, &frame(5, 0, 2, 1, 0));
        assert_eq!(t.last_stable_offset(3), 3);
        // Producer 7 opens at 3, producer 8 at 5.
        obs(&mut t, &frame(7, 0, 3, 2, txn));
        obs(&mut t, &frame(8, 0, 5, 1, txn));
        obs(&mut t, &frame(7, 0, 6, 1, txn));
        assert_eq!(t.last_stable_offset(7), 3);
        assert!(t.ongoing(7) && t.ongoing(8));
        // 7 aborts at 7: the LSO moves to 8's start; the abort is indexed.
        obs(&mut t, &frame(7, 1, 7, 1, abort));
        assert_eq!(t.last_stable_offset(8), 5);
        assert_eq!(t.aborted_in(0, 100), vec![(7, 3)]);
        assert_eq!(t.aborted_in(8, 100), vec![], "marker before the range");
        assert_eq!(t.aborted_in(0, 3), vec![], "starts at the range's end");
        assert_eq!(t.fenced(7, 0), Some(1), "the marker's epoch fences");
        assert_eq!(t.fenced(7, 1), None);
        // 8 commits: nothing open, the LSO is the high watermark.
        obs(&mut t, &frame(8, 0, 8, 1, commit));
        assert_eq!(t.last_stable_offset(9), 9);
        assert_eq!(t.aborted_in(0, 100), vec![(7, 3)]);
        // A marker with nothing open here records no abort.
        obs(&mut t, &frame(9, 0, 9, 1, abort));
        assert_eq!(t.aborted_in(0, 100).len(), 1);
        // The snapshot holds the same state.
        let (txns, aborted) = t.snapshot_parts(10);
        let s = ProducerSnapshot {
            offset: 10,
            txns,
            aborted,
            ..Default::default()
        };
        let back = ProducerSnapshot::decode(&s.encode(0), 10).expect("decode");
        let mut again = PartitionTxns::from_snapshot(&back, 0);
        again.aborted_forgotten = t.aborted_forgotten;
        assert_eq!(again, t);
        // Below the log start, it goes.
        t.prune(8);
        assert_eq!(t.aborted_in(0, 100), vec![]);
    }
}
