//! Producer-state snapshot files `<offset:020>.snapshot`: the idempotent
//! producers of one partition (id, epoch, the time of their last batch, and
//! their last few batches with sequences and offsets) as they stood once
//! every frame below `offset` was applied, so that recovery replays only the
//! frames from `offset` on instead of the whole log (Kafka's
//! `<offset>.snapshot`). I/O-free encode, decode and file-name rules; the
//! partition shell reads and writes the files (`Partition::
//! load_producer_snapshot`, `Partition::write_producer_snapshot`), the
//! server decides what they hold.
//!
//! Invariants:
//! - A snapshot names only batches below its offset (`last_offset <
//!   offset`), in increasing offset order per producer, at most
//!   [`PRODUCER_SNAPSHOT_BATCHES_MAX`] each, at least one; producer ids are
//!   non-negative and appear once; at most
//!   [`PRODUCER_SNAPSHOT_PRODUCERS_MAX`] producers. `encode` asserts these
//!   (a caller's bug); `decode` refuses a file that breaks any of them, as it
//!   refuses a bad length, magic, version or checksum.
//! - The offset inside the file equals the one in its name.
//! - A snapshot is a cache of what the log says: a damaged, newer or
//!   missing one costs a longer replay, never a refusal to open.
//! - Version 2 (written by this build) adds the partition's transactional
//!   producers (the epoch of their last transaction marker and the first
//!   offset of their ongoing transaction, if any) and its aborted
//!   transactions (producer id, first and last offset), all below
//!   `offset`, at most [`TXN_SNAPSHOT_PRODUCERS_MAX`] and
//!   [`TXN_SNAPSHOT_ABORTED_MAX`]. Version 1 files still load (no
//!   transactions).

use crate::limits::{
    PRODUCER_SNAPSHOT_BATCHES_MAX, PRODUCER_SNAPSHOT_PRODUCERS_MAX, TXN_SNAPSHOT_ABORTED_MAX,
    TXN_SNAPSHOT_PRODUCERS_MAX,
};

pub const PRODUCER_SNAPSHOT_SUFFIX: &str = ".snapshot";
pub const PRODUCER_SNAPSHOT_MAGIC: u32 = u32::from_le_bytes(*b"SPSN");
/// The version this build writes; it reads this one and version 1.
pub const PRODUCER_SNAPSHOT_VERSION: u32 = 2;
/// The first layout (no transactions), still read.
pub const PRODUCER_SNAPSHOT_VERSION_1: u32 = 1;
/// Version 2: the transaction and aborted-transaction counts after the
/// producer entries.
pub const TXN_SNAPSHOT_COUNTS_BYTES: usize = 8;
/// Version 2: one transactional producer: id, marker epoch, ongoing flag,
/// reserved, first offset of the ongoing transaction, last marker offset.
pub const TXN_SNAPSHOT_ENTRY_BYTES: usize = 32;
/// Version 2: one aborted transaction: producer id, first and last offset.
pub const TXN_SNAPSHOT_ABORTED_BYTES: usize = 24;
/// Fixed header: magic, version, offset, producer count, batch slots, time.
pub const PRODUCER_SNAPSHOT_HEADER_BYTES: usize = 32;
/// One batch slot: first and last sequence, base and last offset.
pub const PRODUCER_SNAPSHOT_BATCH_BYTES: usize = 24;
/// One producer: id, time, epoch, batch count, reserved, then the slots.
pub const PRODUCER_SNAPSHOT_ENTRY_BYTES: usize =
    24 + PRODUCER_SNAPSHOT_BATCHES_MAX * PRODUCER_SNAPSHOT_BATCH_BYTES;
/// The trailing crc32c.
pub const PRODUCER_SNAPSHOT_CRC_BYTES: usize = 4;
/// The largest snapshot file (what `read_all` may read).
pub const PRODUCER_SNAPSHOT_BYTES_MAX: usize = PRODUCER_SNAPSHOT_HEADER_BYTES
    + PRODUCER_SNAPSHOT_PRODUCERS_MAX * PRODUCER_SNAPSHOT_ENTRY_BYTES
    + TXN_SNAPSHOT_COUNTS_BYTES
    + TXN_SNAPSHOT_PRODUCERS_MAX * TXN_SNAPSHOT_ENTRY_BYTES
    + TXN_SNAPSHOT_ABORTED_MAX * TXN_SNAPSHOT_ABORTED_BYTES
    + PRODUCER_SNAPSHOT_CRC_BYTES;
const _: () = assert!(PRODUCER_SNAPSHOT_ENTRY_BYTES == 144);
const _: () = assert!(PRODUCER_SNAPSHOT_BYTES_MAX <= crate::storage::ATOMIC_FILE_BYTES_MAX);

/// One remembered batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotBatch {
    pub first_seq: i32,
    pub last_seq: i32,
    pub base_offset: u64,
    pub last_offset: u64,
}

/// One producer of the partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotProducer {
    pub producer_id: i64,
    pub epoch: i16,
    /// `max_timestamp_ms` of its last batch (what expiration compares).
    pub last_timestamp_ms: i64,
    /// Oldest first.
    pub batches: Vec<SnapshotBatch>,
}

/// One transactional producer of the partition (version 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotTxn {
    pub producer_id: i64,
    /// The epoch of its last transaction marker here (-1: none yet):
    /// batches of an older epoch are fenced.
    pub marker_epoch: i16,
    /// The first offset of its ongoing transaction, if one is open.
    pub ongoing_first_offset: Option<u64>,
    /// The offset of its last transactional batch or marker here.
    pub last_offset: u64,
}

/// One aborted transaction (version 2): Kafka's `.txnindex` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotAborted {
    pub producer_id: i64,
    pub first_offset: u64,
    /// The offset of its abort marker.
    pub last_offset: u64,
}

/// A partition's producers as of `offset`: the state every frame below
/// `offset` left, and none at or above it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProducerSnapshot {
    pub offset: u64,
    /// Least recently appended-to first.
    pub producers: Vec<SnapshotProducer>,
    /// Transactional producers (version 2; none from a version 1 file).
    pub txns: Vec<SnapshotTxn>,
    /// Aborted transactions, in increasing `last_offset` order.
    pub aborted: Vec<SnapshotAborted>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProducerSnapshotError {
    #[error("producer snapshot is {len_bytes} bytes; the layout says {expected_bytes}")]
    Length {
        len_bytes: usize,
        expected_bytes: usize,
    },
    #[error("bad producer snapshot magic")]
    BadMagic,
    #[error("producer snapshot format version {found} is not the one this build reads ({PRODUCER_SNAPSHOT_VERSION})")]
    UnsupportedVersion { found: u32 },
    #[error("producer snapshot checksum mismatch")]
    Checksum,
    #[error(
        "producer snapshot holds {count} producers, more than {PRODUCER_SNAPSHOT_PRODUCERS_MAX}"
    )]
    TooManyProducers { count: u32 },
    #[error("producer snapshot says offset {inside}, its file name {named}")]
    OffsetMismatch { named: u64, inside: u64 },
    #[error("producer snapshot entry {index}: {reason}")]
    Entry { index: usize, reason: &'static str },
    #[error("producer snapshot transaction entry {index}: {reason}")]
    Txn { index: usize, reason: &'static str },
}

/// `<offset as 20 digits>.snapshot`.
pub fn producer_snapshot_file_name(offset: u64) -> String {
    format!("{offset:020}{PRODUCER_SNAPSHOT_SUFFIX}")
}

/// Parses `<20 digits>.snapshot`; anything else is not a snapshot.
pub fn parse_producer_snapshot_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(PRODUCER_SNAPSHOT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The snapshots among `names` worth trying at open, newest first: those
/// whose offset lies in `[log_start, log_end]` (older ones name only
/// batches below the log start, which recovery drops anyway; newer ones
/// describe frames the log does not hold), at most `max` of them.
pub fn snapshot_candidates(names: &[String], log_start: u64, log_end: u64, max: usize) -> Vec<u64> {
    let mut offsets: Vec<u64> = names
        .iter()
        .filter_map(|n| parse_producer_snapshot_file_name(n))
        .filter(|&o| o >= log_start && o <= log_end)
        .collect();
    offsets.sort_unstable_by(|a, b| b.cmp(a));
    offsets.dedup();
    offsets.truncate(max);
    offsets
}

/// The snapshots among `names` past `log_end`: they describe frames the
/// log no longer holds (a torn tail cut by recovery, a truncation) and
/// must go before anything is appended at those offsets again.
pub fn snapshots_past(names: &[String], log_end: u64) -> Vec<u64> {
    names
        .iter()
        .filter_map(|n| parse_producer_snapshot_file_name(n))
        .filter(|&o| o > log_end)
        .collect()
}

/// The snapshots among `names` to remove once one at `newest` is written:
/// all but the `keep` newest at or below it (at least `newest` itself).
pub fn snapshots_to_prune(names: &[String], newest: u64, keep: usize) -> Vec<u64> {
    assert!(keep >= 1, "the snapshot just written stays");
    let mut offsets: Vec<u64> = names
        .iter()
        .filter_map(|n| parse_producer_snapshot_file_name(n))
        .filter(|&o| o <= newest)
        .collect();
    offsets.sort_unstable_by(|a, b| b.cmp(a));
    offsets.dedup();
    offsets.into_iter().skip(keep).collect()
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl ProducerSnapshot {
    /// The file bytes; `written_ms` is informational (not read back).
    /// Panics if the snapshot breaks an invariant of the module header.
    pub fn encode(&self, written_ms: i64) -> Vec<u8> {
        assert!(
            self.producers.len() <= PRODUCER_SNAPSHOT_PRODUCERS_MAX,
            "{} producers in one snapshot",
            self.producers.len()
        );
        assert!(
            self.txns.len() <= TXN_SNAPSHOT_PRODUCERS_MAX
                && self.aborted.len() <= TXN_SNAPSHOT_ABORTED_MAX,
            "{} transactional producers and {} aborted transactions in one snapshot",
            self.txns.len(),
            self.aborted.len()
        );
        let len = PRODUCER_SNAPSHOT_HEADER_BYTES
            + self.producers.len() * PRODUCER_SNAPSHOT_ENTRY_BYTES
            + TXN_SNAPSHOT_COUNTS_BYTES
            + self.txns.len() * TXN_SNAPSHOT_ENTRY_BYTES
            + self.aborted.len() * TXN_SNAPSHOT_ABORTED_BYTES
            + PRODUCER_SNAPSHOT_CRC_BYTES;
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&PRODUCER_SNAPSHOT_MAGIC.to_le_bytes());
        out.extend_from_slice(&PRODUCER_SNAPSHOT_VERSION.to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&(self.producers.len() as u32).to_le_bytes());
        out.extend_from_slice(&(PRODUCER_SNAPSHOT_BATCHES_MAX as u32).to_le_bytes());
        out.extend_from_slice(&written_ms.to_le_bytes());
        debug_assert_eq!(out.len(), PRODUCER_SNAPSHOT_HEADER_BYTES);
        for p in &self.producers {
            if let Err(reason) = check_producer(p, self.offset) {
                panic!("producer {} in a snapshot: {reason}", p.producer_id);
            }
            let start = out.len();
            out.extend_from_slice(&p.producer_id.to_le_bytes());
            out.extend_from_slice(&p.last_timestamp_ms.to_le_bytes());
            out.extend_from_slice(&p.epoch.to_le_bytes());
            out.extend_from_slice(&(p.batches.len() as u16).to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            for b in &p.batches {
                out.extend_from_slice(&b.first_seq.to_le_bytes());
                out.extend_from_slice(&b.last_seq.to_le_bytes());
                out.extend_from_slice(&b.base_offset.to_le_bytes());
                out.extend_from_slice(&b.last_offset.to_le_bytes());
            }
            out.resize(start + PRODUCER_SNAPSHOT_ENTRY_BYTES, 0);
        }
        out.extend_from_slice(&(self.txns.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.aborted.len() as u32).to_le_bytes());
        if let Err((index, reason)) = check_txns(&self.txns, &self.aborted, self.offset) {
            panic!("transaction entry {index} in a snapshot: {reason}");
        }
        for t in &self.txns {
            out.extend_from_slice(&t.producer_id.to_le_bytes());
            out.extend_from_slice(&t.marker_epoch.to_le_bytes());
            out.extend_from_slice(&u16::from(t.ongoing_first_offset.is_some()).to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&t.ongoing_first_offset.unwrap_or(0).to_le_bytes());
            out.extend_from_slice(&t.last_offset.to_le_bytes());
        }
        for a in &self.aborted {
            out.extend_from_slice(&a.producer_id.to_le_bytes());
            out.extend_from_slice(&a.first_offset.to_le_bytes());
            out.extend_from_slice(&a.last_offset.to_le_bytes());
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(out.len(), len);
        out
    }

    /// Decodes and validates the file named for offset `named`.
    pub fn decode(buf: &[u8], named: u64) -> Result<ProducerSnapshot, ProducerSnapshotError> {
        let min = PRODUCER_SNAPSHOT_HEADER_BYTES + PRODUCER_SNAPSHOT_CRC_BYTES;
        if buf.len() >= 8 {
            // Magic and version first, so that a newer layout is reported
            // as newer, not as damage.
            if le_u32(buf, 0) != PRODUCER_SNAPSHOT_MAGIC {
                return Err(ProducerSnapshotError::BadMagic);
            }
            let version = le_u32(buf, 4);
            if version != PRODUCER_SNAPSHOT_VERSION && version != PRODUCER_SNAPSHOT_VERSION_1 {
                return Err(ProducerSnapshotError::UnsupportedVersion { found: version });
            }
        }
        if buf.len() < min || buf.len() > PRODUCER_SNAPSHOT_BYTES_MAX {
            return Err(ProducerSnapshotError::Length {
                len_bytes: buf.len(),
                expected_bytes: min,
            });
        }
        let body = buf.len() - PRODUCER_SNAPSHOT_CRC_BYTES;
        if crc32c::crc32c(&buf[..body]) != le_u32(buf, body) {
            return Err(ProducerSnapshotError::Checksum);
        }
        let offset = le_u64(buf, 8);
        if offset != named {
            return Err(ProducerSnapshotError::OffsetMismatch {
                named,
                inside: offset,
            });
        }
        let count = le_u32(buf, 16);
        if count as usize > PRODUCER_SNAPSHOT_PRODUCERS_MAX {
            return Err(ProducerSnapshotError::TooManyProducers { count });
        }
        let slots = le_u32(buf, 20);
        if slots as usize != PRODUCER_SNAPSHOT_BATCHES_MAX {
            return Err(ProducerSnapshotError::Entry {
                index: 0,
                reason: "batch slots per entry differ from this version's layout",
            });
        }
        let v2 = le_u32(buf, 4) == PRODUCER_SNAPSHOT_VERSION;
        let entries_end =
            PRODUCER_SNAPSHOT_HEADER_BYTES + count as usize * PRODUCER_SNAPSHOT_ENTRY_BYTES;
        let (txn_count, aborted_count) = if v2 {
            if body < entries_end + TXN_SNAPSHOT_COUNTS_BYTES {
                return Err(ProducerSnapshotError::Length {
                    len_bytes: buf.len(),
                    expected_bytes: entries_end
                        + TXN_SNAPSHOT_COUNTS_BYTES
                        + PRODUCER_SNAPSHOT_CRC_BYTES,
                });
            }
            let t = le_u32(buf, entries_end) as usize;
            let a = le_u32(buf, entries_end + 4) as usize;
            if t > TXN_SNAPSHOT_PRODUCERS_MAX || a > TXN_SNAPSHOT_ABORTED_MAX {
                return Err(ProducerSnapshotError::Txn {
                    index: 0,
                    reason: "more transactional producers or aborted transactions than allowed",
                });
            }
            (t, a)
        } else {
            (0, 0)
        };
        let expected = min
            + count as usize * PRODUCER_SNAPSHOT_ENTRY_BYTES
            + if v2 {
                TXN_SNAPSHOT_COUNTS_BYTES
                    + txn_count * TXN_SNAPSHOT_ENTRY_BYTES
                    + aborted_count * TXN_SNAPSHOT_ABORTED_BYTES
            } else {
                0
            };
        if buf.len() != expected {
            return Err(ProducerSnapshotError::Length {
                len_bytes: buf.len(),
                expected_bytes: expected,
            });
        }
        let mut producers = Vec::with_capacity(count as usize);
        let mut seen = std::collections::HashSet::with_capacity(count as usize);
        for index in 0..count as usize {
            let e = &buf[PRODUCER_SNAPSHOT_HEADER_BYTES + index * PRODUCER_SNAPSHOT_ENTRY_BYTES..]
                [..PRODUCER_SNAPSHOT_ENTRY_BYTES];
            let bad = |reason| ProducerSnapshotError::Entry { index, reason };
            let n = le_u16(e, 18) as usize;
            if le_u32(e, 20) != 0 {
                return Err(bad("reserved bytes are not zero"));
            }
            if n == 0 || n > PRODUCER_SNAPSHOT_BATCHES_MAX {
                return Err(bad("batch count outside 1..=5"));
            }
            let slots_start = 24 + n * PRODUCER_SNAPSHOT_BATCH_BYTES;
            if e[slots_start..].iter().any(|&b| b != 0) {
                return Err(bad("unused batch slots are not zero"));
            }
            let batches = (0..n)
                .map(|i| {
                    let s = &e[24 + i * PRODUCER_SNAPSHOT_BATCH_BYTES..];
                    SnapshotBatch {
                        first_seq: le_u32(s, 0) as i32,
                        last_seq: le_u32(s, 4) as i32,
                        base_offset: le_u64(s, 8),
                        last_offset: le_u64(s, 16),
                    }
                })
                .collect();
            let p = SnapshotProducer {
                producer_id: le_u64(e, 0) as i64,
                last_timestamp_ms: le_u64(e, 8) as i64,
                epoch: le_u16(e, 16) as i16,
                batches,
            };
            check_producer(&p, offset).map_err(bad)?;
            if !seen.insert(p.producer_id) {
                return Err(bad("producer id repeated"));
            }
            producers.push(p);
        }
        let mut txns = Vec::with_capacity(txn_count);
        let mut aborted = Vec::with_capacity(aborted_count);
        let txns_at = entries_end + TXN_SNAPSHOT_COUNTS_BYTES;
        for index in 0..txn_count {
            let e = &buf[txns_at + index * TXN_SNAPSHOT_ENTRY_BYTES..][..TXN_SNAPSHOT_ENTRY_BYTES];
            let bad = |reason| ProducerSnapshotError::Txn { index, reason };
            let ongoing = le_u16(e, 10);
            if ongoing > 1 || le_u32(e, 12) != 0 {
                return Err(bad("flags or reserved bytes are not valid"));
            }
            if ongoing == 0 && le_u64(e, 16) != 0 {
                return Err(bad("a first offset without an ongoing transaction"));
            }
            txns.push(SnapshotTxn {
                producer_id: le_u64(e, 0) as i64,
                marker_epoch: le_u16(e, 8) as i16,
                ongoing_first_offset: (ongoing == 1).then(|| le_u64(e, 16)),
                last_offset: le_u64(e, 24),
            });
        }
        let aborted_at = txns_at + txn_count * TXN_SNAPSHOT_ENTRY_BYTES;
        for index in 0..aborted_count {
            let e = &buf[aborted_at + index * TXN_SNAPSHOT_ABORTED_BYTES..]
                [..TXN_SNAPSHOT_ABORTED_BYTES];
            aborted.push(SnapshotAborted {
                producer_id: le_u64(e, 0) as i64,
                first_offset: le_u64(e, 8),
                last_offset: le_u64(e, 16),
            });
        }
        check_txns(&txns, &aborted, offset)
            .map_err(|(index, reason)| ProducerSnapshotError::Txn { index, reason })?;
        Ok(ProducerSnapshot {
            offset,
            producers,
            txns,
            aborted,
        })
    }
}

/// The transaction invariants of the module header: ids non-negative and
/// unique, every offset below the snapshot's, an ongoing transaction
/// starting at or before its producer's last offset, aborted transactions
/// well-formed and in increasing `last_offset` order.
fn check_txns(
    txns: &[SnapshotTxn],
    aborted: &[SnapshotAborted],
    offset: u64,
) -> Result<(), (usize, &'static str)> {
    let mut seen = std::collections::HashSet::with_capacity(txns.len());
    for (i, t) in txns.iter().enumerate() {
        if t.producer_id < 0 {
            return Err((i, "negative producer id"));
        }
        if t.marker_epoch < -1 {
            return Err((i, "marker epoch below -1"));
        }
        if t.last_offset >= offset {
            return Err((i, "an offset at or past the snapshot's offset"));
        }
        if t.ongoing_first_offset.is_some_and(|f| f > t.last_offset) {
            return Err((i, "an ongoing transaction starts after its last offset"));
        }
        if !seen.insert(t.producer_id) {
            return Err((i, "producer id repeated"));
        }
    }
    let mut after: Option<u64> = None;
    for (i, a) in aborted.iter().enumerate() {
        if a.producer_id < 0 || a.first_offset > a.last_offset || a.last_offset >= offset {
            return Err((txns.len() + i, "an aborted transaction out of range"));
        }
        if after.is_some_and(|l| a.last_offset <= l) {
            return Err((txns.len() + i, "aborted transactions not in marker order"));
        }
        after = Some(a.last_offset);
    }
    Ok(())
}

/// The per-producer invariants of the module header.
fn check_producer(p: &SnapshotProducer, offset: u64) -> Result<(), &'static str> {
    if p.producer_id < 0 {
        return Err("negative producer id");
    }
    if p.batches.is_empty() || p.batches.len() > PRODUCER_SNAPSHOT_BATCHES_MAX {
        return Err("batch count outside 1..=5");
    }
    let mut after: Option<u64> = None;
    for b in &p.batches {
        if b.base_offset > b.last_offset {
            return Err("a batch ends before it starts");
        }
        if b.last_offset >= offset {
            return Err("a batch at or past the snapshot's offset");
        }
        if after.is_some_and(|a| b.base_offset <= a) {
            return Err("batches not in increasing offset order");
        }
        after = Some(b.last_offset);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ProducerSnapshot {
        ProducerSnapshot {
            offset: 1_000,
            producers: vec![
                SnapshotProducer {
                    producer_id: 7,
                    epoch: 2,
                    last_timestamp_ms: 1_700_000_000_000,
                    batches: vec![
                        SnapshotBatch {
                            first_seq: 0,
                            last_seq: 9,
                            base_offset: 100,
                            last_offset: 109,
                        },
                        SnapshotBatch {
                            first_seq: 10,
                            last_seq: 10,
                            base_offset: 500,
                            last_offset: 500,
                        },
                    ],
                },
                SnapshotProducer {
                    producer_id: (1 << 50) + 3,
                    epoch: -1,
                    last_timestamp_ms: -5,
                    batches: (0..5)
                        .map(|i| SnapshotBatch {
                            first_seq: i32::MAX - 4 + i,
                            last_seq: i32::MAX - 4 + i,
                            base_offset: 900 + i as u64,
                            last_offset: 900 + i as u64,
                        })
                        .collect(),
                },
            ],
            txns: vec![
                SnapshotTxn {
                    producer_id: 7,
                    marker_epoch: 2,
                    ongoing_first_offset: Some(500),
                    last_offset: 500,
                },
                SnapshotTxn {
                    producer_id: 11,
                    marker_epoch: -1,
                    ongoing_first_offset: None,
                    last_offset: 300,
                },
            ],
            aborted: vec![
                SnapshotAborted {
                    producer_id: 11,
                    first_offset: 200,
                    last_offset: 210,
                },
                SnapshotAborted {
                    producer_id: 7,
                    first_offset: 50,
                    last_offset: 300,
                },
            ],
        }
    }

    #[test]
    fn round_trips_and_refuses_every_flipped_byte() {
        let s = sample();
        let b = s.encode(42);
        assert_eq!(
            b.len(),
            PRODUCER_SNAPSHOT_HEADER_BYTES
                + 2 * PRODUCER_SNAPSHOT_ENTRY_BYTES
                + TXN_SNAPSHOT_COUNTS_BYTES
                + 2 * TXN_SNAPSHOT_ENTRY_BYTES
                + 2 * TXN_SNAPSHOT_ABORTED_BYTES
                + 4
        );
        assert_eq!(ProducerSnapshot::decode(&b, 1_000), Ok(s.clone()));
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 0x10;
            assert!(ProducerSnapshot::decode(&bad, 1_000).is_err(), "byte {i}");
        }
        // Every truncation, and anything appended, is refused too.
        for len in 0..b.len() {
            assert!(ProducerSnapshot::decode(&b[..len], 1_000).is_err(), "{len}");
        }
        let mut longer = b.clone();
        longer.extend_from_slice(&[0; 4]);
        assert!(ProducerSnapshot::decode(&longer, 1_000).is_err());
        // The name must agree with the content.
        assert_eq!(
            ProducerSnapshot::decode(&b, 999),
            Err(ProducerSnapshotError::OffsetMismatch {
                named: 999,
                inside: 1_000
            })
        );
        // An empty snapshot is a valid one.
        let empty = ProducerSnapshot {
            offset: 0,
            ..Default::default()
        };
        assert_eq!(ProducerSnapshot::decode(&empty.encode(0), 0), Ok(empty));
    }

    #[test]
    fn a_newer_version_is_reported_as_newer_not_as_damage() {
        let mut b = sample().encode(0);
        b[4] = 3;
        assert_eq!(
            ProducerSnapshot::decode(&b, 1_000),
            Err(ProducerSnapshotError::UnsupportedVersion { found: 3 })
        );
    }

    /// A version 1 file (the layout before transactions: no counts after
    /// the producer entries) still loads, with no transactions.
    #[test]
    fn a_version_1_file_still_loads() {
        let mut s = sample();
        s.txns.clear();
        s.aborted.clear();
        let v2 = s.encode(0);
        let entries_end = v2.len() - 4 - TXN_SNAPSHOT_COUNTS_BYTES;
        let mut v1 = v2[..entries_end].to_vec();
        v1[4..8].copy_from_slice(&PRODUCER_SNAPSHOT_VERSION_1.to_le_bytes());
        let crc = crc32c::crc32c(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(ProducerSnapshot::decode(&v1, 1_000), Ok(s));
    }

    /// Transaction entries that break an invariant are refused even with
    /// a valid checksum.
    #[test]
    fn bad_transaction_entries_are_refused() {
        type Damage = Box<dyn Fn(&mut ProducerSnapshot)>;
        let cases: Vec<(&str, Damage)> = vec![
            ("past offset", Box::new(|s| s.txns[0].last_offset = 1_000)),
            ("repeated", Box::new(|s| s.txns[1].producer_id = 7)),
            (
                "ongoing after last",
                Box::new(|s| s.txns[0].ongoing_first_offset = Some(501)),
            ),
            ("abort order", Box::new(|s| s.aborted.swap(0, 1))),
            ("abort range", Box::new(|s| s.aborted[0].first_offset = 211)),
        ];
        let good = sample().encode(0);
        let txns_at = PRODUCER_SNAPSHOT_HEADER_BYTES
            + 2 * PRODUCER_SNAPSHOT_ENTRY_BYTES
            + TXN_SNAPSHOT_COUNTS_BYTES;
        for (what, damage) in cases {
            let mut s = sample();
            damage(&mut s);
            // Encode the damaged values by hand (encode asserts).
            let mut b = good.clone();
            for (i, t) in s.txns.iter().enumerate() {
                let e = txns_at + i * TXN_SNAPSHOT_ENTRY_BYTES;
                b[e..e + 8].copy_from_slice(&t.producer_id.to_le_bytes());
                b[e + 16..e + 24]
                    .copy_from_slice(&t.ongoing_first_offset.unwrap_or(0).to_le_bytes());
                b[e + 24..e + 32].copy_from_slice(&t.last_offset.to_le_bytes());
            }
            let ab = txns_at + 2 * TXN_SNAPSHOT_ENTRY_BYTES;
            for (i, a) in s.aborted.iter().enumerate() {
                let e = ab + i * TXN_SNAPSHOT_ABORTED_BYTES;
                b[e..e + 8].copy_from_slice(&a.producer_id.to_le_bytes());
                b[e + 8..e + 16].copy_from_slice(&a.first_offset.to_le_bytes());
                b[e + 16..e + 24].copy_from_slice(&a.last_offset.to_le_bytes());
            }
            let body = b.len() - 4;
            let crc = crc32c::crc32c(&b[..body]);
            b[body..].copy_from_slice(&crc.to_le_bytes());
            assert!(ProducerSnapshot::decode(&b, 1_000).is_err(), "{what}");
        }
    }

    /// Well-formed bytes (a valid checksum) that break an invariant are
    /// refused: a snapshot is trusted only for what it may say.
    #[test]
    fn entries_breaking_an_invariant_are_refused_even_with_a_valid_checksum() {
        let reseal = |mut b: Vec<u8>| {
            let body = b.len() - 4;
            let crc = crc32c::crc32c(&b[..body]);
            b[body..].copy_from_slice(&crc.to_le_bytes());
            b
        };
        let entry0 = PRODUCER_SNAPSHOT_HEADER_BYTES;
        type Damage = Box<dyn Fn(&mut Vec<u8>)>;
        let cases: Vec<(&str, Damage)> = vec![
            (
                "batch past the offset",
                Box::new(move |b| {
                    b[entry0 + 24 + 16..entry0 + 24 + 24].copy_from_slice(&1_000u64.to_le_bytes())
                }),
            ),
            ("no batch", Box::new(move |b| b[entry0 + 18] = 0)),
            ("six batches", Box::new(move |b| b[entry0 + 18] = 6)),
            ("negative id", Box::new(move |b| b[entry0 + 7] = 0x80)),
            ("reserved", Box::new(move |b| b[entry0 + 20] = 1)),
            ("stale slot", Box::new(move |b| b[entry0 + 24 + 2 * 24] = 1)),
            (
                "repeated id",
                Box::new(move |b| {
                    let e1 = entry0 + PRODUCER_SNAPSHOT_ENTRY_BYTES;
                    b[e1..e1 + 8].copy_from_slice(&7i64.to_le_bytes());
                }),
            ),
            (
                "out of order",
                Box::new(move |b| {
                    // Second batch starts inside the first.
                    b[entry0 + 48 + 8..entry0 + 48 + 16].copy_from_slice(&105u64.to_le_bytes());
                }),
            ),
            ("count", Box::new(|b| b[16] = 3)),
            ("slots", Box::new(|b| b[20] = 4)),
        ];
        for (what, damage) in cases {
            let mut b = sample().encode(0);
            damage(&mut b);
            let b = reseal(b);
            assert!(ProducerSnapshot::decode(&b, 1_000).is_err(), "{what}");
        }
    }

    #[test]
    #[should_panic(expected = "at or past the snapshot's offset")]
    fn encoding_a_batch_past_the_offset_is_a_bug() {
        let mut s = sample();
        s.offset = 500;
        let _ = s.encode(0);
    }

    #[test]
    fn file_names_candidates_and_pruning() {
        assert_eq!(
            producer_snapshot_file_name(12),
            "00000000000000000012.snapshot"
        );
        assert_eq!(
            parse_producer_snapshot_file_name("00000000000000000012.snapshot"),
            Some(12)
        );
        for bad in [
            "12.snapshot",
            "00000000000000000012.snapshot.tmp",
            "00000000000000000012.log",
            "0000000000000000001x.snapshot",
        ] {
            assert_eq!(parse_producer_snapshot_file_name(bad), None, "{bad}");
        }
        let names: Vec<String> = [5u64, 40, 10, 90, 70]
            .iter()
            .map(|&o| producer_snapshot_file_name(o))
            .chain([
                "checkpoint".to_owned(),
                "00000000000000000000.log".to_owned(),
            ])
            .collect();
        assert_eq!(snapshot_candidates(&names, 10, 70, 8), vec![70, 40, 10]);
        assert_eq!(snapshot_candidates(&names, 0, 100, 2), vec![90, 70]);
        let mut past = snapshots_past(&names, 40);
        past.sort();
        assert_eq!(past, vec![70, 90]);
        let mut prune = snapshots_to_prune(&names, 70, 2);
        prune.sort();
        assert_eq!(prune, vec![5, 10]);
    }
}
