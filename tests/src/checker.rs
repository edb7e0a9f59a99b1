//! A history checker for a replicated log, in the spirit of Jepsen's Kafka
//! and Redpanda analyses: given what a test's producers attempted (with the
//! outcome each was told) and one or more final reads of the log, it reports
//! every way the log contradicts what the producers were told.
//!
//! # Input
//! - [`Produce`]: one attempt to append a *unique* value: its producer, its
//!   per-producer sequence number, logical send and completion times (from
//!   one [`History`] clock), and its [`Outcome`]: `Ok { offset, epoch }`
//!   (acknowledged at that offset, in that leader epoch / raft term if
//!   known), `Failed` (the system said, definitely, it was not written) or
//!   `Unknown` (timeouts, lost leadership, a crash: it may or may not be).
//! - [`FinalRead`]: one read of the whole log (one node's copy, say): the
//!   offsets it *covers* and the values found there. An offset it covers
//!   but lists no value for is a *gap* (a no-op or control entry).
//!
//! # What is an anomaly ([`Report`])
//! - **lost**: an `Ok` value absent from a read that covers its offset, or
//!   whose offset no read covers at all (the reads cannot vouch for it);
//! - **duplicated**: a value found at two or more distinct offsets;
//! - **inconsistent**: an offset where two reads that cover it disagree
//!   (different values, a value against a gap, or the same value in
//!   different epochs), or an `Ok` offset that a read covers and where it
//!   holds something other than the acknowledged value (and epoch);
//! - **reordered**: two `Ok` values of one producer, the second sent after
//!   the first was acknowledged, whose positions in the log contradict
//!   their sequence order;
//! - **unexpected**: a value in a read that no attempt ever sent;
//! - **failed but present**: a value that the producer was told definitely
//!   failed, found in a read (an `Unknown` one found is allowed and only
//!   counted).
//!
//! [`Report::is_valid`] is true when every anomaly list is empty.
//!
//! # Invariants of the input (checked: a [`HistoryError`], not a report)
//! Values are unique among attempts; `(producer, seq)` pairs are unique;
//! `completed_at >= sent_at`; a read lists each offset at most once and
//! only offsets it covers. Sizes are bounded ([`OPS_MAX`], [`READS_MAX`],
//! [`READ_ENTRIES_MAX`]).
//!
//! The checker is I/O-free and deterministic: the same input gives the same
//! report, its lists sorted by offset or value.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::ops::Range;

// ------------------------------------------------------------------ limits

/// Attempts in one history.
pub const OPS_MAX: usize = 1 << 20;
/// Final reads checked together.
pub const READS_MAX: usize = 64;
/// Entries of one final read.
pub const READ_ENTRIES_MAX: usize = 1 << 22;
/// Offsets one read may cover (so that gap checks stay bounded).
pub const READ_COVER_MAX: u64 = 1 << 24;
/// Items of each anomaly list that [`Report`]'s `Display` prints.
pub const REPORT_ITEMS_SHOWN_MAX: usize = 10;

// ------------------------------------------------------------------ input

/// What a producer was told about one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged at `offset`, in leader epoch (raft term) `epoch` when
    /// the system says which.
    Ok { offset: u64, epoch: Option<u64> },
    /// Definitely not written (and never will be).
    Failed,
    /// May or may not be written: a timeout, lost leadership, a crash.
    Unknown,
}

/// One attempt to append one unique value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Produce {
    pub value: String,
    pub producer: u64,
    /// The producer's own sequence number: the order it sent its attempts.
    pub seq: u64,
    /// Logical time the attempt was sent ([`History`]'s clock).
    pub sent_at: u64,
    /// Logical time the outcome was learnt; `None` if it never was.
    pub completed_at: Option<u64>,
    pub outcome: Outcome,
}

/// One entry of a final read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadEntry {
    pub offset: u64,
    /// The entry's leader epoch (raft term), when the read shows it.
    pub epoch: Option<u64>,
    pub value: String,
}

/// One final read of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalRead {
    /// Names the read in the report ("node 2").
    pub source: String,
    /// Every offset the read saw: an offset in here without an entry is a
    /// gap (no value there).
    pub covered: Range<u64>,
    pub entries: Vec<ReadEntry>,
}

impl FinalRead {
    /// A read covering exactly `entries`' offsets, from the lowest to the
    /// highest (empty: covers nothing).
    pub fn dense(source: &str, entries: Vec<ReadEntry>) -> FinalRead {
        let lo = entries.iter().map(|e| e.offset).min().unwrap_or(0);
        let hi = entries.iter().map(|e| e.offset + 1).max().unwrap_or(0);
        FinalRead {
            source: source.to_owned(),
            covered: lo..hi,
            entries,
        }
    }
}

/// Records a test's attempts with a logical clock: every
/// [`History::invoke`] and [`History::complete`] is one tick, so "sent after
/// that one was acknowledged" is a comparison of two numbers.
#[derive(Debug, Default, Clone)]
pub struct History {
    ops: Vec<Produce>,
    clock: u64,
    next_seq: HashMap<u64, u64>,
}

/// An attempt in a [`History`], to complete later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpId(usize);

impl History {
    pub fn new() -> History {
        History::default()
    }

    /// Records that `producer` sends `value` now (its next sequence
    /// number); the outcome stays `Unknown` until [`History::complete`].
    pub fn invoke(&mut self, producer: u64, value: String) -> OpId {
        let seq = self.next_seq.entry(producer).or_insert(0);
        *seq += 1;
        self.clock += 1;
        self.ops.push(Produce {
            value,
            producer,
            seq: *seq,
            sent_at: self.clock,
            completed_at: None,
            outcome: Outcome::Unknown,
        });
        OpId(self.ops.len() - 1)
    }

    /// Records the outcome of `op`, learnt now. Panics if `op` is already
    /// complete (a test's own bug).
    pub fn complete(&mut self, op: OpId, outcome: Outcome) {
        self.clock += 1;
        let p = &mut self.ops[op.0];
        assert!(p.completed_at.is_none(), "{} completed twice", p.value);
        p.completed_at = Some(self.clock);
        p.outcome = outcome;
    }

    /// The logical time now (the last tick).
    pub fn now(&self) -> u64 {
        self.clock
    }

    pub fn op(&self, op: OpId) -> &Produce {
        &self.ops[op.0]
    }

    pub fn ops(&self) -> &[Produce] {
        &self.ops
    }
}

// ------------------------------------------------------------------ errors

/// A history the checker refuses to judge (a test's bug, not the log's).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HistoryError {
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    DuplicateValue {
        value: String,
    },
    DuplicateSequence {
        producer: u64,
        seq: u64,
    },
    CompletedBeforeSent {
        value: String,
        sent_at: u64,
        completed_at: u64,
    },
    /// An `Ok` attempt without a completion time.
    OkNeverCompleted {
        value: String,
    },
    ReadCoverTooLarge {
        source: String,
        covered: Range<u64>,
        max: u64,
    },
    EntryOutsideCover {
        source: String,
        offset: u64,
        covered: Range<u64>,
    },
    OffsetListedTwice {
        source: String,
        offset: u64,
    },
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryError::TooMany { what, count, max } => {
                write!(f, "{count} {what} exceed the checker's {max}")
            }
            HistoryError::DuplicateValue { value } => {
                write!(
                    f,
                    "value {value:?} is attempted twice (values must be unique)"
                )
            }
            HistoryError::DuplicateSequence { producer, seq } => {
                write!(f, "producer {producer} uses sequence {seq} twice")
            }
            HistoryError::CompletedBeforeSent {
                value,
                sent_at,
                completed_at,
            } => write!(
                f,
                "value {value:?} completed at {completed_at}, before it was sent at {sent_at}"
            ),
            HistoryError::OkNeverCompleted { value } => {
                write!(f, "value {value:?} is Ok but has no completion time")
            }
            HistoryError::ReadCoverTooLarge {
                source,
                covered,
                max,
            } => write!(f, "read {source:?} covers {covered:?}, over {max} offsets"),
            HistoryError::EntryOutsideCover {
                source,
                offset,
                covered,
            } => write!(
                f,
                "read {source:?} lists offset {offset}, outside what it covers ({covered:?})"
            ),
            HistoryError::OffsetListedTwice { source, offset } => {
                write!(f, "read {source:?} lists offset {offset} twice")
            }
        }
    }
}

impl std::error::Error for HistoryError {}

// ------------------------------------------------------------------ report

/// An acknowledged value a read does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    pub value: String,
    pub offset: u64,
    /// The read it is missing from; `None` when no read covers its offset.
    pub missing_from: Option<String>,
}

/// A value at more than one offset (over all reads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    pub value: String,
    pub offsets: Vec<u64>,
}

/// What one read holds at one offset: `Some((value, epoch))`, or `None`
/// for a gap.
pub type Held = Option<(String, Option<u64>)>;

/// An offset whose contents are contradictory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inconsistency {
    /// Reads covering `offset` hold different things there: each read's
    /// view, `None` for a gap.
    ReadsDisagree {
        offset: u64,
        views: Vec<(String, Held)>,
    },
    /// `value` was acknowledged at `offset` (in `epoch`), but `source`
    /// holds `found` there (`None`: a gap).
    AckedOffsetHoldsOther {
        value: String,
        offset: u64,
        epoch: Option<u64>,
        source: String,
        found: Held,
    },
}

/// Two acknowledged values of one producer in the wrong log order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reorder {
    pub producer: u64,
    /// (seq, value, log position) of the earlier attempt, acknowledged
    /// before the later one was sent.
    pub earlier: (u64, String, u64),
    /// (seq, value, log position) of the later attempt, found before it.
    pub later: (u64, String, u64),
}

/// A value nobody sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unexpected {
    pub value: String,
    pub offset: u64,
    pub source: String,
}

/// A definitely failed value found in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedPresent {
    pub value: String,
    pub offsets: Vec<u64>,
}

/// The checker's verdict; see the module documentation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub attempts: usize,
    pub ok: usize,
    pub failed: usize,
    pub unknown: usize,
    /// `Unknown` attempts found in some read (allowed).
    pub unknown_present: usize,
    /// `Unknown` attempts found in no read (allowed).
    pub unknown_absent: usize,
    pub reads: usize,
    pub lost: Vec<Lost>,
    pub duplicated: Vec<Duplicate>,
    pub inconsistent: Vec<Inconsistency>,
    pub reordered: Vec<Reorder>,
    pub unexpected: Vec<Unexpected>,
    pub failed_present: Vec<FailedPresent>,
}

impl Report {
    /// No anomaly of any kind.
    pub fn is_valid(&self) -> bool {
        self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.inconsistent.is_empty()
            && self.reordered.is_empty()
            && self.unexpected.is_empty()
            && self.failed_present.is_empty()
    }
}

fn show_list<T: fmt::Debug>(f: &mut fmt::Formatter<'_>, name: &str, items: &[T]) -> fmt::Result {
    writeln!(f, "  {name}: {}", items.len())?;
    for item in items.iter().take(REPORT_ITEMS_SHOWN_MAX) {
        writeln!(f, "    {item:?}")?;
    }
    if items.len() > REPORT_ITEMS_SHOWN_MAX {
        writeln!(f, "    ... {} more", items.len() - REPORT_ITEMS_SHOWN_MAX)?;
    }
    Ok(())
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} attempts (ok {}, failed {}, unknown {}: {} present, {} absent), {} reads",
            if self.is_valid() { "VALID" } else { "INVALID" },
            self.attempts,
            self.ok,
            self.failed,
            self.unknown,
            self.unknown_present,
            self.unknown_absent,
            self.reads
        )?;
        show_list(f, "lost", &self.lost)?;
        show_list(f, "duplicated", &self.duplicated)?;
        show_list(f, "inconsistent", &self.inconsistent)?;
        show_list(f, "reordered", &self.reordered)?;
        show_list(f, "unexpected", &self.unexpected)?;
        show_list(f, "failed but present", &self.failed_present)
    }
}

// ------------------------------------------------------------------ check

fn validate(ops: &[Produce], reads: &[FinalRead]) -> Result<(), HistoryError> {
    let too_many = |what, count, max| Err(HistoryError::TooMany { what, count, max });
    if ops.len() > OPS_MAX {
        return too_many("attempts", ops.len(), OPS_MAX);
    }
    if reads.len() > READS_MAX {
        return too_many("reads", reads.len(), READS_MAX);
    }
    let mut values = BTreeSet::new();
    let mut seqs = BTreeSet::new();
    for p in ops {
        if !values.insert(p.value.as_str()) {
            return Err(HistoryError::DuplicateValue {
                value: p.value.clone(),
            });
        }
        if !seqs.insert((p.producer, p.seq)) {
            return Err(HistoryError::DuplicateSequence {
                producer: p.producer,
                seq: p.seq,
            });
        }
        match (p.completed_at, p.outcome) {
            (Some(done), _) if done < p.sent_at => {
                return Err(HistoryError::CompletedBeforeSent {
                    value: p.value.clone(),
                    sent_at: p.sent_at,
                    completed_at: done,
                });
            }
            (None, Outcome::Ok { .. }) => {
                return Err(HistoryError::OkNeverCompleted {
                    value: p.value.clone(),
                });
            }
            _ => {}
        }
    }
    for r in reads {
        if r.entries.len() > READ_ENTRIES_MAX {
            return too_many("entries in one read", r.entries.len(), READ_ENTRIES_MAX);
        }
        if r.covered.end.saturating_sub(r.covered.start) > READ_COVER_MAX {
            return Err(HistoryError::ReadCoverTooLarge {
                source: r.source.clone(),
                covered: r.covered.clone(),
                max: READ_COVER_MAX,
            });
        }
        let mut offsets = BTreeSet::new();
        for e in &r.entries {
            if !r.covered.contains(&e.offset) {
                return Err(HistoryError::EntryOutsideCover {
                    source: r.source.clone(),
                    offset: e.offset,
                    covered: r.covered.clone(),
                });
            }
            if !offsets.insert(e.offset) {
                return Err(HistoryError::OffsetListedTwice {
                    source: r.source.clone(),
                    offset: e.offset,
                });
            }
        }
    }
    Ok(())
}

/// One read, indexed.
struct IndexedRead<'a> {
    read: &'a FinalRead,
    /// offset -> (value, epoch)
    at: BTreeMap<u64, (&'a str, Option<u64>)>,
    /// value -> offsets holding it in this read
    offsets_of: HashMap<&'a str, Vec<u64>>,
}

impl<'a> IndexedRead<'a> {
    fn new(read: &'a FinalRead) -> Self {
        let mut at = BTreeMap::new();
        let mut offsets_of: HashMap<&str, Vec<u64>> = HashMap::new();
        for e in &read.entries {
            at.insert(e.offset, (e.value.as_str(), e.epoch));
            offsets_of
                .entry(e.value.as_str())
                .or_default()
                .push(e.offset);
        }
        IndexedRead {
            read,
            at,
            offsets_of,
        }
    }

    fn covers(&self, offset: u64) -> bool {
        self.read.covered.contains(&offset)
    }

    fn view(&self, offset: u64) -> Held {
        self.at.get(&offset).map(|(v, e)| ((*v).to_owned(), *e))
    }
}

/// Two views of one offset agree: the same value, and the same epoch when
/// both know it.
fn same(a: Option<(&str, Option<u64>)>, b: Option<(&str, Option<u64>)>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some((va, ea)), Some((vb, eb))) => va == vb && (ea.is_none() || eb.is_none() || ea == eb),
        _ => false,
    }
}

/// Checks `ops` against `reads`; see the module documentation.
pub fn check(ops: &[Produce], reads: &[FinalRead]) -> Result<Report, HistoryError> {
    validate(ops, reads)?;
    let indexed: Vec<IndexedRead> = reads.iter().map(IndexedRead::new).collect();
    let by_value: HashMap<&str, &Produce> = ops.iter().map(|p| (p.value.as_str(), p)).collect();
    // Every offset holding each value, over all reads.
    let mut positions: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    for r in &indexed {
        for (&offset, &(value, _)) in &r.at {
            positions.entry(value).or_default().insert(offset);
        }
    }
    let mut report = Report {
        attempts: ops.len(),
        reads: reads.len(),
        ..Report::default()
    };

    // Unexpected values, each (value, offset) once.
    let mut seen_unexpected = BTreeSet::new();
    for r in &indexed {
        for (&offset, &(value, _)) in &r.at {
            if !by_value.contains_key(value) && seen_unexpected.insert((value, offset)) {
                report.unexpected.push(Unexpected {
                    value: value.to_owned(),
                    offset,
                    source: r.read.source.clone(),
                });
            }
        }
    }

    // Duplicates: one value at distinct offsets.
    for (value, offsets) in &positions {
        if offsets.len() > 1 {
            report.duplicated.push(Duplicate {
                value: (*value).to_owned(),
                offsets: offsets.iter().copied().collect(),
            });
        }
    }

    // Reads that disagree on an offset they all cover.
    let all_offsets: BTreeSet<u64> = indexed.iter().flat_map(|r| r.at.keys().copied()).collect();
    for &offset in &all_offsets {
        let covering: Vec<&IndexedRead> = indexed.iter().filter(|r| r.covers(offset)).collect();
        let first = covering.first().and_then(|r| r.at.get(&offset).copied());
        if covering
            .iter()
            .any(|r| !same(first, r.at.get(&offset).copied()))
        {
            report.inconsistent.push(Inconsistency::ReadsDisagree {
                offset,
                views: covering
                    .iter()
                    .map(|r| (r.read.source.clone(), r.view(offset)))
                    .collect(),
            });
        }
    }

    // Per attempt: lost, acknowledged offsets holding something else,
    // failed ones present, unknown ones counted.
    for p in ops {
        let present = positions.get(p.value.as_str());
        match p.outcome {
            Outcome::Ok { offset, epoch } => {
                report.ok += 1;
                let mut covered_by_any = false;
                for r in indexed.iter().filter(|r| r.covers(offset)) {
                    covered_by_any = true;
                    if !r.offsets_of.contains_key(p.value.as_str()) {
                        report.lost.push(Lost {
                            value: p.value.clone(),
                            offset,
                            missing_from: Some(r.read.source.clone()),
                        });
                    }
                    let found = r.at.get(&offset).copied();
                    if !same(Some((p.value.as_str(), epoch)), found) {
                        report
                            .inconsistent
                            .push(Inconsistency::AckedOffsetHoldsOther {
                                value: p.value.clone(),
                                offset,
                                epoch,
                                source: r.read.source.clone(),
                                found: r.view(offset),
                            });
                    }
                }
                if !covered_by_any {
                    report.lost.push(Lost {
                        value: p.value.clone(),
                        offset,
                        missing_from: None,
                    });
                }
            }
            Outcome::Failed => {
                report.failed += 1;
                if let Some(offsets) = present {
                    report.failed_present.push(FailedPresent {
                        value: p.value.clone(),
                        offsets: offsets.iter().copied().collect(),
                    });
                }
            }
            Outcome::Unknown => {
                report.unknown += 1;
                if present.is_some() {
                    report.unknown_present += 1;
                } else {
                    report.unknown_absent += 1;
                }
            }
        }
    }

    report.reordered = reorders(ops, &positions);
    report
        .lost
        .sort_by(|a, b| (a.offset, &a.value).cmp(&(b.offset, &b.value)));
    report.failed_present.sort_by(|a, b| a.value.cmp(&b.value));
    Ok(report)
}

/// The log position of an acknowledged value: the lowest offset a read
/// holds it at, else its acknowledged offset.
fn position(p: &Produce, positions: &BTreeMap<&str, BTreeSet<u64>>) -> Option<u64> {
    let Outcome::Ok { offset, .. } = p.outcome else {
        return None;
    };
    Some(
        positions
            .get(p.value.as_str())
            .and_then(|s| s.first().copied())
            .unwrap_or(offset),
    )
}

/// Per producer: each acknowledged attempt `b` must lie after every
/// acknowledged attempt `a` with a lower sequence number that completed
/// before `b` was sent. One [`Reorder`] per offending `b` (against the
/// latest-positioned such `a`). O(n log n) per producer: attempts are swept
/// in send order while completed ones enter a prefix-maximum tree (by
/// sequence rank) of their positions.
fn reorders(ops: &[Produce], positions: &BTreeMap<&str, BTreeSet<u64>>) -> Vec<Reorder> {
    let mut by_producer: BTreeMap<u64, Vec<(&Produce, u64)>> = BTreeMap::new();
    for p in ops {
        if let Some(pos) = position(p, positions) {
            by_producer.entry(p.producer).or_default().push((p, pos));
        }
    }
    let mut out = Vec::new();
    for (producer, acked) in by_producer {
        // Sequence ranks, 1-based for the Fenwick tree.
        let mut seqs: Vec<u64> = acked.iter().map(|(p, _)| p.seq).collect();
        seqs.sort_unstable();
        let rank = |seq: u64| seqs.partition_point(|&s| s < seq) + 1;
        // Tree of (position, index into `acked`), prefix maximum.
        let mut tree: Vec<Option<(u64, usize)>> = vec![None; seqs.len() + 1];
        let mut completions: Vec<usize> = (0..acked.len()).collect();
        // Every Ok attempt has a completion time (validated).
        completions.sort_by_key(|&i| acked[i].0.completed_at.unwrap_or(u64::MAX));
        let mut sends: Vec<usize> = (0..acked.len()).collect();
        sends.sort_by_key(|&i| acked[i].0.sent_at);
        let mut next_completion = 0;
        for b in sends {
            let (pb, pos_b) = acked[b];
            while next_completion < completions.len() {
                let a = completions[next_completion];
                let done = acked[a].0.completed_at.unwrap_or(u64::MAX);
                if done >= pb.sent_at {
                    break;
                }
                let mut i = rank(acked[a].0.seq);
                while i < tree.len() {
                    if tree[i].is_none_or(|(pos, _)| pos < acked[a].1) {
                        tree[i] = Some((acked[a].1, a));
                    }
                    i += i & i.wrapping_neg();
                }
                next_completion += 1;
            }
            // Maximum over ranks below b's.
            let mut best: Option<(u64, usize)> = None;
            let mut i = rank(pb.seq) - 1;
            while i > 0 {
                if let Some(t) = tree[i] {
                    if best.is_none_or(|(pos, _)| pos < t.0) {
                        best = Some(t);
                    }
                }
                i -= i & i.wrapping_neg();
            }
            if let Some((pos_a, a)) = best {
                if pos_a >= pos_b {
                    let pa = acked[a].0;
                    out.push(Reorder {
                        producer,
                        earlier: (pa.seq, pa.value.clone(), pos_a),
                        later: (pb.seq, pb.value.clone(), pos_b),
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(offset: u64) -> Outcome {
        Outcome::Ok {
            offset,
            epoch: None,
        }
    }

    /// A producer that sends each value after the previous one completed.
    fn sequential(history: &mut History, producer: u64, items: &[(&str, Outcome)]) {
        for (value, outcome) in items {
            let id = history.invoke(producer, (*value).to_owned());
            history.complete(id, *outcome);
        }
    }

    fn entry(offset: u64, value: &str) -> ReadEntry {
        ReadEntry {
            offset,
            epoch: None,
            value: value.to_owned(),
        }
    }

    fn read(source: &str, entries: &[(u64, &str)]) -> FinalRead {
        FinalRead::dense(source, entries.iter().map(|&(o, v)| entry(o, v)).collect())
    }

    /// A clean history: two producers, every kind of outcome, two reads
    /// that agree (one with a gap at offset 3, a leader's no-op).
    fn clean() -> (History, Vec<FinalRead>) {
        let mut h = History::new();
        sequential(
            &mut h,
            1,
            &[("a", ok(1)), ("b", ok(2)), ("c", Outcome::Unknown)],
        );
        sequential(
            &mut h,
            2,
            &[
                ("x", ok(4)),
                ("y", Outcome::Failed),
                ("z", Outcome::Unknown),
            ],
        );
        let log = [(1, "a"), (2, "b"), (4, "x"), (5, "c")];
        let mut r1 = read("node 1", &log);
        r1.covered = 1..6;
        let mut r2 = read("node 2", &log);
        r2.covered = 1..6;
        (h, vec![r1, r2])
    }

    #[test]
    fn a_clean_history_is_valid() {
        let (h, reads) = clean();
        let report = check(h.ops(), &reads).expect("a well-formed history");
        assert!(report.is_valid(), "{report}");
        assert_eq!(
            (report.ok, report.failed, report.unknown),
            (3, 1, 2),
            "{report}"
        );
        assert_eq!((report.unknown_present, report.unknown_absent), (1, 1));
    }

    #[test]
    fn a_lagging_read_is_not_a_loss_but_an_uncovered_ack_is() {
        let (h, mut reads) = clean();
        // Node 2 applied only through offset 2: it vouches for nothing
        // beyond.
        reads[1] = read("node 2", &[(1, "a"), (2, "b")]);
        let report = check(h.ops(), &reads).expect("well-formed");
        assert!(report.is_valid(), "{report}");
        // No read reaches offset 4: "x" cannot be vouched for.
        let short = vec![reads[1].clone()];
        let report = check(h.ops(), &short).expect("well-formed");
        assert_eq!(
            report.lost,
            vec![Lost {
                value: "x".into(),
                offset: 4,
                missing_from: None
            }]
        );
        assert!(!report.is_valid());
    }

    #[test]
    fn a_lost_acknowledged_value_is_flagged() {
        let (h, mut reads) = clean();
        // Node 2 lost "b" (offset 2 became a gap).
        reads[1].entries.retain(|e| e.value != "b");
        let report = check(h.ops(), &reads).expect("well-formed");
        assert!(!report.is_valid());
        assert_eq!(
            report.lost,
            vec![Lost {
                value: "b".into(),
                offset: 2,
                missing_from: Some("node 2".into())
            }]
        );
    }

    #[test]
    fn a_duplicated_value_is_flagged() {
        let (h, mut reads) = clean();
        for r in &mut reads {
            r.entries.push(entry(6, "a"));
            r.covered = 1..7;
        }
        let report = check(h.ops(), &reads).expect("well-formed");
        assert!(!report.is_valid());
        assert_eq!(
            report.duplicated,
            vec![Duplicate {
                value: "a".into(),
                offsets: vec![1, 6]
            }]
        );
        assert!(report.lost.is_empty() && report.inconsistent.is_empty());
    }

    #[test]
    fn reads_that_disagree_on_an_offset_are_flagged() {
        let (h, mut reads) = clean();
        // Node 2 holds an unknown-outcome value where node 1 has a gap.
        reads[1].entries.retain(|e| e.value != "c");
        reads[1].entries.push(entry(3, "c"));
        let report = check(h.ops(), &reads).expect("well-formed");
        assert!(!report.is_valid());
        assert!(report.lost.is_empty(), "{report}");
        let offsets: Vec<u64> = report
            .inconsistent
            .iter()
            .map(|i| match i {
                Inconsistency::ReadsDisagree { offset, .. } => *offset,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(offsets, vec![3, 5], "{report}");
        assert_eq!(report.duplicated.len(), 1, "c at 3 and at 5");
    }

    #[test]
    fn the_same_value_in_different_epochs_is_inconsistent() {
        let (h, mut reads) = clean();
        reads[0].entries[0].epoch = Some(1);
        reads[1].entries[0].epoch = Some(2);
        let report = check(h.ops(), &reads).expect("well-formed");
        assert!(
            matches!(
                report.inconsistent.as_slice(),
                [Inconsistency::ReadsDisagree { offset: 1, .. }]
            ),
            "{report}"
        );
    }

    #[test]
    fn an_acknowledged_offset_holding_another_value_is_flagged() {
        let mut h = History::new();
        // Acknowledged at 2, but the log has it at 3 and "b" at 2.
        sequential(&mut h, 1, &[("a", ok(2)), ("b", Outcome::Unknown)]);
        let reads = vec![read("node 1", &[(2, "b"), (3, "a")])];
        let report = check(h.ops(), &reads).expect("well-formed");
        assert!(!report.is_valid());
        assert!(report.lost.is_empty(), "present, at the wrong offset");
        assert_eq!(
            report.inconsistent,
            vec![Inconsistency::AckedOffsetHoldsOther {
                value: "a".into(),
                offset: 2,
                epoch: None,
                source: "node 1".into(),
                found: Some(("b".into(), None)),
            }]
        );
    }

    #[test]
    fn an_acknowledged_epoch_that_differs_is_flagged() {
        let mut h = History::new();
        let id = h.invoke(1, "a".into());
        h.complete(
            id,
            Outcome::Ok {
                offset: 1,
                epoch: Some(3),
            },
        );
        let mut r = read("node 1", &[(1, "a")]);
        r.entries[0].epoch = Some(4);
        let report = check(h.ops(), &[r]).expect("well-formed");
        assert!(
            matches!(
                report.inconsistent.as_slice(),
                [Inconsistency::AckedOffsetHoldsOther { offset: 1, .. }]
            ),
            "{report}"
        );
    }

    #[test]
    fn a_reordered_producer_is_flagged() {
        let mut h = History::new();
        // "b" was sent after "a" was acknowledged, but sits before it.
        sequential(&mut h, 1, &[("a", ok(2)), ("b", ok(1))]);
        let reads = vec![read("node 1", &[(1, "b"), (2, "a")])];
        let report = check(h.ops(), &reads).expect("well-formed");
        assert_eq!(
            report.reordered,
            vec![Reorder {
                producer: 1,
                earlier: (1, "a".into(), 2),
                later: (2, "b".into(), 1),
            }]
        );
        assert!(!report.is_valid());
    }

    #[test]
    fn concurrent_attempts_of_one_producer_may_land_in_any_order() {
        let mut h = History::new();
        // Both in flight at once (pipelined): no order is promised.
        let a = h.invoke(1, "a".into());
        let b = h.invoke(1, "b".into());
        h.complete(a, ok(2));
        h.complete(b, ok(1));
        // Other producers' orders are theirs: no reorder across producers.
        sequential(&mut h, 2, &[("x", ok(4))]);
        sequential(&mut h, 3, &[("y", ok(3))]);
        let reads = vec![read("node 1", &[(1, "b"), (2, "a"), (3, "y"), (4, "x")])];
        let report = check(h.ops(), &reads).expect("well-formed");
        assert!(report.is_valid(), "{report}");
    }

    #[test]
    fn a_value_never_attempted_is_flagged() {
        let (h, mut reads) = clean();
        for r in &mut reads {
            r.entries.push(entry(3, "ghost"));
        }
        let report = check(h.ops(), &reads).expect("well-formed");
        assert!(!report.is_valid());
        assert_eq!(
            report.unexpected,
            vec![Unexpected {
                value: "ghost".into(),
                offset: 3,
                source: "node 1".into()
            }]
        );
    }

    #[test]
    fn a_definitely_failed_value_that_appears_is_flagged() {
        let (h, mut reads) = clean();
        for r in &mut reads {
            r.entries.push(entry(3, "y"));
        }
        let report = check(h.ops(), &reads).expect("well-formed");
        assert!(!report.is_valid());
        assert_eq!(
            report.failed_present,
            vec![FailedPresent {
                value: "y".into(),
                offsets: vec![3]
            }]
        );
    }

    #[test]
    fn an_unknown_value_may_be_present_or_absent() {
        let (h, mut reads) = clean();
        // "z" (unknown) also landed; "c" (unknown) did not.
        for r in &mut reads {
            r.entries.retain(|e| e.value != "c");
            r.entries.push(entry(5, "z"));
        }
        let report = check(h.ops(), &reads).expect("well-formed");
        assert!(report.is_valid(), "{report}");
        assert_eq!((report.unknown_present, report.unknown_absent), (1, 1));
    }

    #[test]
    fn malformed_histories_are_refused() {
        let mut h = History::new();
        sequential(&mut h, 1, &[("a", ok(1)), ("a", ok(2))]);
        assert_eq!(
            check(h.ops(), &[]),
            Err(HistoryError::DuplicateValue { value: "a".into() })
        );
        let mut h = History::new();
        sequential(&mut h, 1, &[("a", ok(1))]);
        let mut ops = h.ops().to_vec();
        ops.push(Produce {
            value: "b".into(),
            ..ops[0].clone()
        });
        assert_eq!(
            check(&ops, &[]),
            Err(HistoryError::DuplicateSequence {
                producer: 1,
                seq: 1
            })
        );
        let mut r = read("node 1", &[(1, "a")]);
        r.covered = 2..3;
        assert!(matches!(
            check(h.ops(), &[r]),
            Err(HistoryError::EntryOutsideCover { offset: 1, .. })
        ));
        let r = FinalRead {
            source: "node 1".into(),
            covered: 1..2,
            entries: vec![entry(1, "a"), entry(1, "a")],
        };
        assert!(matches!(
            check(h.ops(), &[r]),
            Err(HistoryError::OffsetListedTwice { offset: 1, .. })
        ));
        let mut h = History::new();
        h.invoke(1, "never".into());
        let mut ops = h.ops().to_vec();
        ops[0].outcome = ok(1);
        assert!(matches!(
            check(&ops, &[]),
            Err(HistoryError::OkNeverCompleted { .. })
        ));
    }
}
