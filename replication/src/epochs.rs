//! Leader epochs of a replicated partition: where each ended, for Kafka's
//! OffsetForLeaderEpoch (KIP-101/KIP-320), with which a consumer whose
//! position came from an older leader learns whether the log it read was
//! truncated since.
//!
//! A partition's leader epoch is its Raft term: every frame carries the term
//! of its entry, and a term's first entry is its leader's no-op, so the start
//! offset of epoch `t` is the base offset of the first entry of term `t`.
//! The answer is computed from the entries the store holds (everything since
//! its snapshot point), found by binary search over their terms, which never
//! decrease along the log. Nothing here does I/O.
//!
//! Invariants (checked by the tests against a linear model):
//! - `Known { epoch, end_offset }` has `epoch <= requested`, and
//!   `end_offset` is the start of the first epoch after `requested`, or the
//!   committed data end when `requested` is the latest epoch;
//! - epochs after the latest held are `Undefined`, as in Kafka.

/// Kafka's answer for one requested epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochEnd {
    /// The largest epoch at or below the requested one that the log holds
    /// (or the requested one itself when it is older than all held), and
    /// the offset at which it ended.
    Known { epoch: u64, end_offset: u64 },
    /// Kafka's `UNDEFINED_EPOCH` / `UNDEFINED_EPOCH_OFFSET` (-1, -1): the
    /// requested epoch is later than any the log holds.
    Undefined,
}

/// The log as this lookup sees it: entries `first..=last` (possibly none),
/// each with its term and base offset, after a snapshot point of term
/// `start_term` ending at offset `start_offset`.
pub trait EpochLog {
    fn first_index(&self) -> u64;
    fn last_index(&self) -> u64;
    /// Term and base offset of entry `index` (`first..=last`).
    fn entry(&self, index: u64) -> (u64, u64);
    fn start_term(&self) -> u64;
    fn start_offset(&self) -> u64;
}

/// Where epoch `requested` ended in `log`, whose committed data ends at
/// `data_end_offset` (what a consumer can have read up to).
pub fn end_offset_for_epoch(log: &impl EpochLog, requested: u64, data_end_offset: u64) -> EpochEnd {
    let (first, last) = (log.first_index(), log.last_index());
    let latest = if last >= first {
        log.entry(last).0
    } else {
        log.start_term()
    };
    if requested == latest {
        return EpochEnd::Known {
            epoch: requested,
            end_offset: data_end_offset,
        };
    }
    if requested > latest {
        return EpochEnd::Undefined;
    }
    // The first entry whose term is above `requested` (one exists: the
    // last entry's term, `latest`, is; or the log is empty and then
    // `requested < start_term`).
    let (mut lo, mut hi) = (first, last.saturating_add(1).max(first));
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if log.entry(mid).0 <= requested {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    let higher_start = if lo <= last && last >= first {
        log.entry(lo).1
    } else {
        // Every held entry is at or below `requested` yet `requested <
        // latest`: only possible with no entries, when the snapshot
        // point's term is above it.
        log.start_offset()
    };
    let floor = if lo > first {
        Some(log.entry(lo - 1).0)
    } else if log.start_term() <= requested && log.start_term() > 0 {
        Some(log.start_term())
    } else {
        None
    };
    EpochEnd::Known {
        epoch: floor.unwrap_or(requested),
        end_offset: higher_start,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64 as Rng;

    struct Model {
        start_term: u64,
        start_offset: u64,
        /// (term, base offset) of entries `start_index + 1 ..`.
        entries: Vec<(u64, u64)>,
        start_index: u64,
    }

    impl EpochLog for Model {
        fn first_index(&self) -> u64 {
            self.start_index + 1
        }
        fn last_index(&self) -> u64 {
            self.start_index + self.entries.len() as u64
        }
        fn entry(&self, index: u64) -> (u64, u64) {
            self.entries[(index - self.start_index - 1) as usize]
        }
        fn start_term(&self) -> u64 {
            self.start_term
        }
        fn start_offset(&self) -> u64 {
            self.start_offset
        }
    }

    /// Kafka's LeaderEpochFileCache.endOffsetFor over the epochs' start
    /// offsets, written the obvious (linear) way.
    fn linear(m: &Model, requested: u64, data_end: u64) -> EpochEnd {
        // (epoch, start offset), the snapshot point's term first.
        let mut starts: Vec<(u64, u64)> = Vec::new();
        if m.start_term > 0 {
            starts.push((m.start_term, m.start_offset));
        }
        for &(t, o) in &m.entries {
            match starts.last() {
                Some(&(lt, _)) if lt == t => {}
                _ => starts.push((t, o)),
            }
        }
        let latest = starts.last().map_or(m.start_term, |s| s.0);
        if requested == latest {
            return EpochEnd::Known {
                epoch: requested,
                end_offset: data_end,
            };
        }
        let Some(&(_, higher)) = starts.iter().find(|s| s.0 > requested) else {
            return EpochEnd::Undefined;
        };
        let floor = starts.iter().rev().find(|s| s.0 <= requested).map(|s| s.0);
        EpochEnd::Known {
            epoch: floor.unwrap_or(requested),
            end_offset: higher,
        }
    }

    #[test]
    fn kafkas_cases() {
        // Terms 2 (offsets 10..), 2, 4 (offset 30..), 4, 7 (offset 50..).
        let m = Model {
            start_term: 1,
            start_offset: 10,
            start_index: 5,
            entries: vec![(2, 10), (2, 20), (4, 30), (4, 40), (7, 50)],
        };
        let k = |epoch, end_offset| EpochEnd::Known { epoch, end_offset };
        assert_eq!(
            end_offset_for_epoch(&m, 7, 55),
            k(7, 55),
            "latest: data end"
        );
        assert_eq!(end_offset_for_epoch(&m, 8, 55), EpochEnd::Undefined);
        assert_eq!(end_offset_for_epoch(&m, 4, 55), k(4, 50));
        assert_eq!(end_offset_for_epoch(&m, 5, 55), k(4, 50), "floor epoch");
        assert_eq!(end_offset_for_epoch(&m, 2, 55), k(2, 30));
        assert_eq!(end_offset_for_epoch(&m, 1, 55), k(1, 10), "the snapshot's");
        assert_eq!(end_offset_for_epoch(&m, 0, 55), k(0, 10), "older than all");
    }

    #[test]
    fn agrees_with_the_linear_model() {
        let mut rng = Rng::new(0x5eed_e90c);
        for _ in 0..2_000 {
            let start_term = rng.below(4);
            let start_offset = rng.below(100);
            let mut term = start_term.max(1);
            let mut offset = start_offset;
            let mut entries = Vec::new();
            for _ in 0..rng.below(12) {
                if rng.below(3) == 0 {
                    term += 1 + rng.below(3);
                }
                entries.push((term, offset));
                offset += 1 + rng.below(5);
            }
            let m = Model {
                start_term,
                start_offset,
                start_index: rng.below(50),
                entries,
            };
            for requested in 0..term + 3 {
                assert_eq!(
                    end_offset_for_epoch(&m, requested, offset),
                    linear(&m, requested, offset),
                    "requested {requested} of start ({start_term}, {start_offset}) {:?}",
                    m.entries
                );
            }
        }
    }
}
