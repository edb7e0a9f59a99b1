//! The replica's log store: what raft-rs reads through [`raft::Storage`] and
//! what the shell makes durable.
//!
//! [`LogStore`] is the seam between the I/O-free core and the partition log.
//! The core *stages* every write here before it tells raft-rs the write is
//! done (raft-rs requires staged writes to be readable at once), and the
//! shell later reports which writes are durable ([`LogStore::mark_synced`]).
//! Writes are numbered in the order they are issued (the write sequence); a
//! sync of write `n` makes writes `1..=n` durable, like an fdatasync covers
//! every write completed before it.
//!
//! [`MemLog`] is the in-memory model of Strom's partition log used by the
//! simulator and the tests. It keeps two images:
//! - the *written* image: what raft-rs reads (all staged writes);
//! - the *durable* image: the written image as of the last synced write.
//!
//! A crash ([`MemLog::crash`]) drops every write not yet synced, whatever it
//! was (appended entries, a truncation of a conflicting suffix, a hard state,
//! an installed snapshot, a compaction): the store comes back exactly as its
//! durable image. Each image holds:
//! - entries with consecutive indices after a *log start* (the snapshot
//!   point: index and term of the last compacted entry, plus opaque snapshot
//!   data, which will be the producer state);
//! - the hard state (term, vote, commit) and the conf state (voters).
//!
//! Invariants, asserted where the images change:
//! - entries are dense: `entries[i].index == start_index + 1 + i`, and terms
//!   never decrease along the log;
//! - `start_index <= hard_state.commit <= last_index` (commit is never beyond
//!   the log, a compaction never passes the commit);
//! - a write never truncates a committed entry (an overwrite at or below the
//!   commit must carry identical index and term);
//! - the hard state's term and commit never decrease;
//! - `synced_seq <= write_seq`; the journal holds exactly the writes
//!   `synced_seq + 1 ..= write_seq`.

use std::collections::VecDeque;

use bytes::Bytes;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

use crate::error::PersistError;

/// What the replication core needs from a partition log besides reading it
/// (`raft::Storage`). Every method stages a write: readable at once through
/// `raft::Storage`, durable only once [`LogStore::mark_synced`] covers its
/// write sequence number.
pub trait LogStore: raft::Storage {
    /// Stages `entries` (dense, non-empty). Entries at and above the first
    /// one's index are replaced (a conflicting suffix from an older term).
    fn append(&mut self, entries: Vec<Entry>);
    /// Stages a new hard state (term, vote, commit).
    fn set_hard_state(&mut self, hard_state: HardState);
    /// Stages a snapshot received from the leader: the log now starts after
    /// the snapshot's index and holds no entries.
    fn install_snapshot(&mut self, snapshot: &Snapshot);
    /// Stages the removal of every entry up to `index` (retention); `index`
    /// and its `term` become the log start, with `data` as snapshot data.
    fn compact(&mut self, index: u64, term: u64, data: Bytes);
    /// Number of the last staged write.
    fn write_seq(&self) -> u64;
    /// Number of the last write known durable.
    fn synced_seq(&self) -> u64;
    /// The shell made writes `..= seq` durable. A `seq` at or below
    /// [`LogStore::synced_seq`] is a stale completion and changes nothing.
    fn mark_synced(&mut self, seq: u64) -> Result<(), PersistError>;
    /// The voters recorded in the store.
    fn voters(&self) -> Vec<u64>;
}

/// One staged write, kept until it is synced.
#[derive(Debug, Clone)]
enum Write {
    Append(Vec<Entry>),
    HardState(HardState),
    Snapshot(Snapshot),
    Compact { index: u64, term: u64, data: Bytes },
}

/// One image of the log: written (staged) or durable.
#[derive(Debug, Clone, Default)]
struct Image {
    /// Index and term of the last entry before the log (0 and 0 when the log
    /// was never compacted), and the snapshot data recorded with it.
    start_index: u64,
    start_term: u64,
    start_data: Bytes,
    entries: VecDeque<Entry>,
    hard_state: HardState,
    conf_state: ConfState,
}

impl Image {
    fn first_index(&self) -> u64 {
        self.start_index + 1
    }

    fn last_index(&self) -> u64 {
        self.start_index + self.entries.len() as u64
    }

    fn entry(&self, index: u64) -> Option<&Entry> {
        if index <= self.start_index {
            return None;
        }
        self.entries.get((index - self.start_index - 1) as usize)
    }

    fn term(&self, index: u64) -> Option<u64> {
        if index == self.start_index {
            return Some(self.start_term);
        }
        self.entry(index).map(|e| e.term)
    }

    fn apply(&mut self, write: &Write) {
        match write {
            Write::Append(entries) => self.append(entries),
            Write::HardState(hs) => self.set_hard_state(hs),
            Write::Snapshot(snap) => self.install_snapshot(snap),
            Write::Compact { index, term, data } => self.compact(*index, *term, data),
        }
        self.check();
    }

    fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        let at = first.index;
        assert!(
            at > self.start_index,
            "append at {at} overwrites the compacted log (start {})",
            self.start_index
        );
        assert!(
            at <= self.last_index() + 1,
            "append at {at} leaves a gap after {}",
            self.last_index()
        );
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.index, at + i as u64, "appended entries are not dense");
        }
        // Entries at or below the commit may be rewritten only with the same
        // index and term (raft never truncates a committed entry).
        let commit = self.hard_state.commit;
        for e in entries.iter().take_while(|e| e.index <= commit) {
            assert_eq!(
                self.term(e.index),
                Some(e.term),
                "append of entry {} (term {}) overwrites a committed entry (commit {commit})",
                e.index,
                e.term
            );
        }
        let keep = (at - self.start_index - 1) as usize;
        self.entries.truncate(keep);
        self.entries.extend(entries.iter().cloned());
    }

    fn set_hard_state(&mut self, hs: &HardState) {
        assert!(
            hs.term >= self.hard_state.term,
            "hard state term goes back from {} to {}",
            self.hard_state.term,
            hs.term
        );
        assert!(
            hs.commit >= self.hard_state.commit,
            "hard state commit goes back from {} to {}",
            self.hard_state.commit,
            hs.commit
        );
        self.hard_state = hs.clone();
    }

    fn install_snapshot(&mut self, snap: &Snapshot) {
        let meta = snap.get_metadata();
        assert!(
            meta.index >= self.hard_state.commit,
            "snapshot at {} is below the commit {}",
            meta.index,
            self.hard_state.commit
        );
        self.start_index = meta.index;
        self.start_term = meta.term;
        self.start_data = snap.data.clone();
        self.entries.clear();
        self.hard_state.commit = meta.index;
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.conf_state = meta.get_conf_state().clone();
    }

    fn compact(&mut self, index: u64, term: u64, data: &Bytes) {
        if index <= self.start_index {
            return;
        }
        assert!(
            index <= self.hard_state.commit,
            "compaction through {index} passes the commit {}",
            self.hard_state.commit
        );
        assert_eq!(
            self.term(index),
            Some(term),
            "compaction through {index} names the wrong term"
        );
        let drop = (index - self.start_index) as usize;
        self.entries.drain(..drop);
        self.start_index = index;
        self.start_term = term;
        self.start_data = data.clone();
    }

    fn check(&self) {
        assert!(
            self.start_index <= self.hard_state.commit,
            "log start {} is above the commit {}",
            self.start_index,
            self.hard_state.commit
        );
        assert!(
            self.hard_state.commit <= self.last_index(),
            "commit {} is beyond the last entry {}",
            self.hard_state.commit,
            self.last_index()
        );
        if let (Some(first), Some(last)) = (self.entries.front(), self.entries.back()) {
            assert_eq!(first.index, self.start_index + 1);
            assert_eq!(last.index, self.last_index());
            assert!(
                first.term >= self.start_term,
                "terms go back at the log start"
            );
            assert!(last.term >= first.term, "terms go back along the log");
        }
    }
}

/// The in-memory model of a partition log with a synced prefix and an
/// unsynced tail (see the module documentation).
#[derive(Debug, Clone)]
pub struct MemLog {
    written: Image,
    durable: Image,
    /// Writes `synced_seq + 1 ..= write_seq`, in order.
    journal: VecDeque<(u64, Write)>,
    write_seq: u64,
    synced_seq: u64,
}

/// What a crash threw away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CrashReport {
    /// Staged writes that were not yet durable.
    pub writes_lost: usize,
    /// Entries of the written log that are gone (unsynced tail, or lost on
    /// purpose by [`MemLog::crash_losing_synced_entries`]).
    pub last_index_before: u64,
    pub last_index_after: u64,
}

impl MemLog {
    /// A new, empty log of a group with these voters. The empty log and the
    /// voters are durable from the start (every replica of a new group
    /// starts from the same state).
    pub fn new(voters: &[u64]) -> Self {
        let mut image = Image::default();
        image.conf_state.voters = voters.to_vec();
        MemLog {
            written: image.clone(),
            durable: image,
            journal: VecDeque::new(),
            write_seq: 0,
            synced_seq: 0,
        }
    }

    fn stage(&mut self, write: Write) {
        self.written.apply(&write);
        self.write_seq += 1;
        self.journal.push_back((self.write_seq, write));
        debug_assert_eq!(
            self.journal.len() as u64,
            self.write_seq - self.synced_seq,
            "journal holds exactly the unsynced writes"
        );
    }

    /// A crash: every write not yet synced is lost; the store comes back as
    /// its durable image. Write numbers keep counting up, so a completion
    /// that arrives from before the crash is stale and changes nothing.
    pub fn crash(&mut self) -> CrashReport {
        let report = CrashReport {
            writes_lost: self.journal.len(),
            last_index_before: self.written.last_index(),
            last_index_after: self.durable.last_index(),
        };
        self.journal.clear();
        self.written = self.durable.clone();
        self.synced_seq = self.write_seq;
        report
    }

    /// FAULT INJECTION for the checkers' self-tests only: a disk that lies
    /// about fsync. Crashes, then also loses up to `entries` *synced*
    /// entries at the end of the log (never below the log start), clamping
    /// the commit to what is left. A correct cluster can lose acknowledged
    /// data this way; the simulator must notice.
    pub fn crash_losing_synced_entries(&mut self, entries: usize) -> CrashReport {
        let mut report = self.crash();
        let lose = entries.min(self.durable.entries.len());
        let keep = self.durable.entries.len() - lose;
        self.durable.entries.truncate(keep);
        let last = self.durable.last_index();
        self.durable.hard_state.commit = self.durable.hard_state.commit.min(last);
        self.durable.check();
        self.written = self.durable.clone();
        report.last_index_after = last;
        report
    }

    /// Index of the first entry (log start + 1) of the written image.
    pub fn first_index(&self) -> u64 {
        self.written.first_index()
    }

    /// Index of the last entry of the written image.
    pub fn last_index(&self) -> u64 {
        self.written.last_index()
    }

    /// An entry of the written image.
    pub fn entry(&self, index: u64) -> Option<&Entry> {
        self.written.entry(index)
    }

    /// The log start (index and term of the last compacted entry) and its
    /// snapshot data, written image.
    pub fn log_start(&self) -> (u64, u64, &Bytes) {
        (
            self.written.start_index,
            self.written.start_term,
            &self.written.start_data,
        )
    }

    /// The hard state of the written image.
    pub fn hard_state(&self) -> &HardState {
        &self.written.hard_state
    }

    /// The hard state that survives a crash.
    pub fn durable_hard_state(&self) -> &HardState {
        &self.durable.hard_state
    }

    /// An entry that survives a crash.
    pub fn durable_entry(&self, index: u64) -> Option<&Entry> {
        self.durable.entry(index)
    }

    /// The log start that survives a crash.
    pub fn durable_log_start(&self) -> (u64, u64) {
        (self.durable.start_index, self.durable.start_term)
    }

    /// Index of the last entry that survives a crash.
    pub fn durable_last_index(&self) -> u64 {
        self.durable.last_index()
    }
}

impl LogStore for MemLog {
    fn append(&mut self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        self.stage(Write::Append(entries));
    }

    fn set_hard_state(&mut self, hard_state: HardState) {
        self.stage(Write::HardState(hard_state));
    }

    fn install_snapshot(&mut self, snapshot: &Snapshot) {
        self.stage(Write::Snapshot(snapshot.clone()));
    }

    fn compact(&mut self, index: u64, term: u64, data: Bytes) {
        if index <= self.written.start_index {
            return;
        }
        self.stage(Write::Compact { index, term, data });
    }

    fn write_seq(&self) -> u64 {
        self.write_seq
    }

    fn synced_seq(&self) -> u64 {
        self.synced_seq
    }

    fn mark_synced(&mut self, seq: u64) -> Result<(), PersistError> {
        if seq > self.write_seq {
            return Err(PersistError::AheadOfWrites {
                reported: seq,
                written: self.write_seq,
            });
        }
        while let Some((n, _)) = self.journal.front() {
            if *n > seq {
                break;
            }
            let Some((_, write)) = self.journal.pop_front() else {
                break;
            };
            self.durable.apply(&write);
        }
        self.synced_seq = self.synced_seq.max(seq);
        debug_assert_eq!(
            self.journal.len() as u64,
            self.write_seq - self.synced_seq,
            "journal holds exactly the unsynced writes"
        );
        Ok(())
    }

    fn voters(&self) -> Vec<u64> {
        self.written.conf_state.voters.clone()
    }
}

impl raft::Storage for MemLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.written.hard_state.clone(),
            self.written.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.written.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        // raft-rs's contract: it never asks past the last entry.
        assert!(
            high <= self.written.last_index() + 1 && low <= high,
            "entries [{low}, {high}) asked of a log ending at {}",
            self.written.last_index()
        );
        let lo = (low - self.written.first_index()) as usize;
        let hi = (high - self.written.first_index()) as usize;
        let mut entries: Vec<Entry> = self.written.entries.range(lo..hi).cloned().collect();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.written.start_index {
            return Ok(self.written.start_term);
        }
        if idx < self.written.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        match self.written.term(idx) {
            Some(term) => Ok(term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.written.first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.written.last_index())
    }

    /// The snapshot is the log start: a follower behind retention restarts
    /// its log after it. Never compacted, or older than asked: not yet.
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let image = &self.written;
        if image.start_index == 0 || image.start_index < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snap = Snapshot {
            data: image.start_data.clone(),
            ..Default::default()
        };
        let meta = snap.mut_metadata();
        meta.index = image.start_index;
        meta.term = image.start_term;
        meta.set_conf_state(image.conf_state.clone());
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn entry(index: u64, term: u64, data: &'static [u8]) -> Entry {
        Entry {
            index,
            term,
            data: Bytes::from_static(data),
            ..Default::default()
        }
    }

    fn hs(term: u64, vote: u64, commit: u64) -> HardState {
        HardState {
            term,
            vote,
            commit,
            ..Default::default()
        }
    }

    #[test]
    fn crash_loses_exactly_the_unsynced_writes() {
        let mut log = MemLog::new(&[1, 2, 3]);
        log.append(vec![entry(1, 1, b"a"), entry(2, 1, b"b")]);
        log.set_hard_state(hs(1, 1, 1));
        let synced = log.write_seq();
        log.mark_synced(synced).unwrap();
        log.append(vec![entry(3, 1, b"c")]);
        log.set_hard_state(hs(2, 0, 2));
        assert_eq!(log.last_index(), 3);
        let report = log.crash();
        assert_eq!(report.writes_lost, 2);
        assert_eq!(log.last_index(), 2);
        assert_eq!(log.hard_state(), &hs(1, 1, 1));
        assert_eq!(log.entry(2).map(|e| &e.data[..]), Some(&b"b"[..]));
        // A completion from before the crash is stale.
        log.mark_synced(synced + 2).unwrap();
        assert_eq!(log.last_index(), 2);
    }

    #[test]
    fn unsynced_truncation_is_undone_by_a_crash() {
        let mut log = MemLog::new(&[1, 2, 3]);
        log.append(vec![
            entry(1, 1, b"a"),
            entry(2, 1, b"b"),
            entry(3, 1, b"c"),
        ]);
        log.mark_synced(log.write_seq()).unwrap();
        // A leader of term 2 overwrites 2..: staged only.
        log.append(vec![entry(2, 2, b"x")]);
        assert_eq!(log.last_index(), 2);
        assert_eq!(log.term(2).unwrap(), 2);
        log.crash();
        assert_eq!(log.last_index(), 3);
        assert_eq!(log.term(2).unwrap(), 1);
    }

    #[test]
    fn sync_is_ordered_and_partial() {
        let mut log = MemLog::new(&[1]);
        log.append(vec![entry(1, 1, b"a")]);
        let first = log.write_seq();
        log.append(vec![entry(2, 1, b"b")]);
        log.mark_synced(first).unwrap();
        assert_eq!(log.durable_last_index(), 1);
        assert_eq!(
            log.mark_synced(99),
            Err(PersistError::AheadOfWrites {
                reported: 99,
                written: 2
            })
        );
        log.mark_synced(log.write_seq()).unwrap();
        assert_eq!(log.durable_last_index(), 2);
    }

    #[test]
    fn compaction_moves_the_log_start_and_serves_a_snapshot() {
        let mut log = MemLog::new(&[1, 2, 3]);
        assert!(log.snapshot(0, 2).is_err(), "nothing compacted yet");
        log.append(vec![
            entry(1, 1, b"a"),
            entry(2, 2, b"b"),
            entry(3, 2, b"c"),
        ]);
        log.set_hard_state(hs(2, 1, 2));
        log.compact(2, 2, Bytes::from_static(b"producers@2"));
        assert_eq!(log.first_index(), 3);
        assert_eq!(Storage::first_index(&log).unwrap(), 3);
        assert_eq!(log.term(2).unwrap(), 2);
        assert_eq!(
            log.term(1),
            Err(raft::Error::Store(StorageError::Compacted))
        );
        assert_eq!(
            log.entries(1, 3, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        );
        let snap = log.snapshot(0, 2).unwrap();
        assert_eq!(snap.get_metadata().index, 2);
        assert_eq!(snap.get_metadata().term, 2);
        assert_eq!(&snap.data[..], b"producers@2");
        assert_eq!(snap.get_metadata().get_conf_state().voters, vec![1, 2, 3]);
        // Unsynced: a crash brings the prefix back.
        log.crash();
        assert_eq!(log.first_index(), 1);
    }

    #[test]
    fn installed_snapshot_replaces_the_log() {
        let mut log = MemLog::new(&[1, 2, 3]);
        log.append(vec![entry(1, 1, b"a")]);
        let mut snap = Snapshot {
            data: Bytes::from_static(b"s"),
            ..Default::default()
        };
        snap.mut_metadata().index = 7;
        snap.mut_metadata().term = 3;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        log.install_snapshot(&snap);
        assert_eq!(log.first_index(), 8);
        assert_eq!(log.last_index(), 7);
        assert_eq!(log.term(7).unwrap(), 3);
        assert_eq!(log.hard_state().commit, 7);
        log.mark_synced(log.write_seq()).unwrap();
        assert_eq!(log.durable_log_start(), (7, 3));
    }

    #[test]
    #[should_panic(expected = "overwrites a committed entry")]
    fn truncating_a_committed_entry_is_a_bug() {
        let mut log = MemLog::new(&[1, 2, 3]);
        log.append(vec![entry(1, 1, b"a"), entry(2, 1, b"b")]);
        log.set_hard_state(hs(1, 1, 2));
        log.append(vec![entry(2, 2, b"x")]);
    }

    #[test]
    fn losing_synced_entries_on_purpose() {
        let mut log = MemLog::new(&[1, 2, 3]);
        log.append(vec![
            entry(1, 1, b"a"),
            entry(2, 1, b"b"),
            entry(3, 1, b"c"),
        ]);
        log.set_hard_state(hs(1, 1, 3));
        log.mark_synced(log.write_seq()).unwrap();
        let report = log.crash_losing_synced_entries(2);
        assert_eq!(report.last_index_after, 1);
        assert_eq!(log.hard_state().commit, 1);
    }
}
