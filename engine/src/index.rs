//! Sparse offset and time indexes of one segment, and their file encoding.
//! I/O-free: the log decides when to write or load them.
//!
//! Invariants:
//! - Offset index entries are strictly increasing in both relative offset and
//!   position, and every entry points at the first byte of a frame whose base
//!   offset is `segment_base + relative_offset`.
//! - Time index entries are strictly increasing in timestamp and
//!   non-decreasing in relative offset; an entry `(ts, rel)` means "every
//!   record with timestamp >= ts is at offset >= segment_base + rel" is false
//!   in general, so the look-up only uses it to find a starting frame and
//!   then scans forward (see `Log::offset_for_timestamp`).
//! - An index file is trusted only if its header checksum, entry checksum,
//!   entry size and monotonicity all check out; otherwise the log rebuilds it
//!   from the segment.

use zerocopy::little_endian::{I64, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::limits::INDEX_ENTRIES_MAX;

/// An offset index entry: 8 bytes, as Kafka's `.index`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct OffsetEntry {
    pub relative_offset: U32,
    pub position: U32,
}

/// A time index entry: 12 bytes, as Kafka's `.timeindex`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct TimeEntry {
    pub timestamp_ms: I64,
    pub relative_offset: U32,
}

/// Header of `.index` and `.timeindex` files: 40 bytes.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct IndexFileHeader {
    pub magic: U32,
    pub version: U16,
    pub entry_bytes: U16,
    pub base_offset: U64,
    pub entry_count: U32,
    /// Segment bytes the entries cover (entries point below this position).
    pub covered_bytes: U32,
    pub max_timestamp_ms: I64,
    pub entries_crc: U32,
    pub header_crc: U32,
}

pub const INDEX_FILE_HEADER_BYTES: usize = 40;
const _: () = assert!(core::mem::size_of::<IndexFileHeader>() == INDEX_FILE_HEADER_BYTES);
pub const OFFSET_INDEX_MAGIC: u32 = u32::from_le_bytes(*b"SOIX");
pub const TIME_INDEX_MAGIC: u32 = u32::from_le_bytes(*b"STIX");
pub const INDEX_FORMAT_VERSION: u16 = 1;

/// Why an index file was not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IndexFileError {
    #[error("index file too short ({len_bytes} bytes)")]
    TooShort { len_bytes: usize },
    #[error("bad index magic {found:#010x}")]
    BadMagic { found: u32 },
    #[error("unsupported index format version {found}")]
    UnsupportedVersion { found: u16 },
    #[error("index header checksum mismatch")]
    HeaderChecksum,
    #[error("index entries checksum mismatch")]
    EntriesChecksum,
    #[error("index is for base offset {found}, expected {expected}")]
    WrongBase { found: u64, expected: u64 },
    #[error("index entry size {found}, expected {expected}")]
    WrongEntrySize { found: u16, expected: u16 },
    #[error("index holds {count} entries, more than {INDEX_ENTRIES_MAX}")]
    TooManyEntries { count: usize },
    #[error("index entry {index} is not monotonic or points past the covered bytes")]
    NotMonotonic { index: usize },
}

/// The in-memory indexes of one segment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentIndex {
    pub offsets: Vec<OffsetEntry>,
    pub times: Vec<TimeEntry>,
    /// Largest record timestamp of any frame observed (i64::MIN if none).
    pub max_timestamp_ms: i64,
    /// Bytes of segment covered by the entries.
    pub covered_bytes: u64,
    bytes_since_entry: u64,
}

impl SegmentIndex {
    pub fn new() -> Self {
        SegmentIndex {
            max_timestamp_ms: i64::MIN,
            ..Default::default()
        }
    }

    /// Records a frame of `frame_len` bytes at `position` holding offsets from
    /// `relative_offset` and timestamps up to `max_timestamp_ms`. Frames must
    /// be observed in order.
    pub fn observe(
        &mut self,
        relative_offset: u32,
        position: u64,
        frame_len: u64,
        max_timestamp_ms: i64,
        interval_bytes: u32,
    ) {
        assert_eq!(position, self.covered_bytes, "frames observed out of order");
        let due = self.offsets.is_empty() || self.bytes_since_entry >= u64::from(interval_bytes);
        if due && self.offsets.len() < INDEX_ENTRIES_MAX {
            if let Some(last) = self.offsets.last() {
                assert!(last.relative_offset.get() < relative_offset);
                assert!(u64::from(last.position.get()) < position);
            }
            self.offsets.push(OffsetEntry {
                relative_offset: U32::new(relative_offset),
                position: U32::new(position as u32),
            });
            self.bytes_since_entry = 0;
            let ts_due = self
                .times
                .last()
                .is_none_or(|t| max_timestamp_ms > t.timestamp_ms.get());
            if ts_due && max_timestamp_ms > self.max_timestamp_ms {
                self.times.push(TimeEntry {
                    timestamp_ms: I64::new(max_timestamp_ms),
                    relative_offset: U32::new(relative_offset),
                });
            }
        }
        self.bytes_since_entry += frame_len;
        self.covered_bytes = position + frame_len;
        self.max_timestamp_ms = self.max_timestamp_ms.max(max_timestamp_ms);
    }

    /// The (relative offset, position) of the last indexed frame whose
    /// relative offset is <= `relative`; (0, 0) if none.
    pub fn lookup(&self, relative: u32) -> (u32, u64) {
        let i = self
            .offsets
            .partition_point(|e| e.relative_offset.get() <= relative);
        if i == 0 {
            (0, 0)
        } else {
            let e = self.offsets[i - 1];
            (e.relative_offset.get(), u64::from(e.position.get()))
        }
    }

    /// The relative offset of the earliest frame that may hold a record with
    /// timestamp >= `ts_ms`: the entry before the first entry with timestamp >= ts_ms.
    pub fn lookup_time(&self, ts_ms: i64) -> u32 {
        let i = self.times.partition_point(|e| e.timestamp_ms.get() < ts_ms);
        if i == 0 {
            0
        } else {
            self.times[i - 1].relative_offset.get()
        }
    }

    /// Drops everything at or after `position` (for truncation and recovery).
    pub fn truncate_to_position(&mut self, position: u64, relative_limit: u32) {
        self.offsets.retain(|e| {
            u64::from(e.position.get()) < position && e.relative_offset.get() < relative_limit
        });
        self.times
            .retain(|e| e.relative_offset.get() < relative_limit);
        self.covered_bytes = self.covered_bytes.min(position);
        self.bytes_since_entry = u64::MAX / 2; // next frame gets an entry
        if self.offsets.is_empty() {
            self.bytes_since_entry = 0;
        }
    }

    /// Encodes the offset index (entries below `covered_bytes`) as a file.
    pub fn encode_offsets(&self, base_offset: u64, covered_bytes: u64) -> Vec<u8> {
        let entries: Vec<OffsetEntry> = self
            .offsets
            .iter()
            .copied()
            .filter(|e| u64::from(e.position.get()) < covered_bytes)
            .collect();
        encode(
            OFFSET_INDEX_MAGIC,
            base_offset,
            covered_bytes,
            self.max_timestamp_ms,
            entries.as_bytes(),
            core::mem::size_of::<OffsetEntry>(),
        )
    }

    /// Encodes the time index as a file. `relative_limit` excludes entries
    /// for frames past the covered bytes.
    pub fn encode_times(
        &self,
        base_offset: u64,
        covered_bytes: u64,
        relative_limit: u32,
    ) -> Vec<u8> {
        let entries: Vec<TimeEntry> = self
            .times
            .iter()
            .copied()
            .filter(|e| e.relative_offset.get() < relative_limit)
            .collect();
        encode(
            TIME_INDEX_MAGIC,
            base_offset,
            covered_bytes,
            self.max_timestamp_ms,
            entries.as_bytes(),
            core::mem::size_of::<TimeEntry>(),
        )
    }

    /// Decodes both index files of a segment; any damage is an error (the
    /// caller rebuilds). `segment_bytes` bounds the positions.
    pub fn decode(
        offsets_file: &[u8],
        times_file: &[u8],
        base_offset: u64,
        segment_bytes: u64,
    ) -> Result<SegmentIndex, IndexFileError> {
        let (oh, oraw) = decode_file(offsets_file, OFFSET_INDEX_MAGIC, base_offset, 8)?;
        let (th, traw) = decode_file(times_file, TIME_INDEX_MAGIC, base_offset, 12)?;
        let offsets = <[OffsetEntry]>::ref_from_bytes(oraw)
            .map_err(|_| IndexFileError::TooShort {
                len_bytes: oraw.len(),
            })?
            .to_vec();
        let times = <[TimeEntry]>::ref_from_bytes(traw)
            .map_err(|_| IndexFileError::TooShort {
                len_bytes: traw.len(),
            })?
            .to_vec();
        let covered = u64::from(oh.covered_bytes.get());
        if covered > segment_bytes || th.covered_bytes.get() != oh.covered_bytes.get() {
            return Err(IndexFileError::NotMonotonic { index: 0 });
        }
        for (i, w) in offsets.windows(2).enumerate() {
            if w[0].relative_offset.get() >= w[1].relative_offset.get()
                || w[0].position.get() >= w[1].position.get()
            {
                return Err(IndexFileError::NotMonotonic { index: i + 1 });
            }
        }
        if let Some(first) = offsets.first() {
            if first.relative_offset.get() != 0 || first.position.get() != 0 {
                return Err(IndexFileError::NotMonotonic { index: 0 });
            }
        }
        if let Some(last) = offsets.last() {
            if u64::from(last.position.get()) >= covered {
                return Err(IndexFileError::NotMonotonic {
                    index: offsets.len() - 1,
                });
            }
        }
        for (i, w) in times.windows(2).enumerate() {
            if w[0].timestamp_ms.get() >= w[1].timestamp_ms.get()
                || w[0].relative_offset.get() > w[1].relative_offset.get()
            {
                return Err(IndexFileError::NotMonotonic { index: i + 1 });
            }
        }
        Ok(SegmentIndex {
            offsets,
            times,
            max_timestamp_ms: oh.max_timestamp_ms.get(),
            covered_bytes: covered,
            bytes_since_entry: u64::MAX / 2,
        })
    }
}

fn encode(
    magic: u32,
    base_offset: u64,
    covered_bytes: u64,
    max_timestamp_ms: i64,
    entries: &[u8],
    entry_bytes: usize,
) -> Vec<u8> {
    assert!(covered_bytes <= u64::from(u32::MAX));
    let mut h = IndexFileHeader {
        magic: U32::new(magic),
        version: U16::new(INDEX_FORMAT_VERSION),
        entry_bytes: U16::new(entry_bytes as u16),
        base_offset: U64::new(base_offset),
        entry_count: U32::new((entries.len() / entry_bytes) as u32),
        covered_bytes: U32::new(covered_bytes as u32),
        max_timestamp_ms: I64::new(max_timestamp_ms),
        entries_crc: U32::new(crc32c::crc32c(entries)),
        header_crc: U32::new(0),
    };
    h.header_crc = U32::new(crc32c::crc32c(&h.as_bytes()[..INDEX_FILE_HEADER_BYTES - 4]));
    let mut out = Vec::with_capacity(INDEX_FILE_HEADER_BYTES + entries.len());
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(entries);
    out
}

fn decode_file(
    file: &[u8],
    magic: u32,
    base_offset: u64,
    entry_bytes: u16,
) -> Result<(&IndexFileHeader, &[u8]), IndexFileError> {
    let (h, rest) =
        IndexFileHeader::ref_from_prefix(file).map_err(|_| IndexFileError::TooShort {
            len_bytes: file.len(),
        })?;
    if h.magic.get() != magic {
        return Err(IndexFileError::BadMagic {
            found: h.magic.get(),
        });
    }
    if h.version.get() != INDEX_FORMAT_VERSION {
        return Err(IndexFileError::UnsupportedVersion {
            found: h.version.get(),
        });
    }
    if crc32c::crc32c(&h.as_bytes()[..INDEX_FILE_HEADER_BYTES - 4]) != h.header_crc.get() {
        return Err(IndexFileError::HeaderChecksum);
    }
    if h.base_offset.get() != base_offset {
        return Err(IndexFileError::WrongBase {
            found: h.base_offset.get(),
            expected: base_offset,
        });
    }
    if h.entry_bytes.get() != entry_bytes {
        return Err(IndexFileError::WrongEntrySize {
            found: h.entry_bytes.get(),
            expected: entry_bytes,
        });
    }
    let count = h.entry_count.get() as usize;
    if count > INDEX_ENTRIES_MAX {
        return Err(IndexFileError::TooManyEntries { count });
    }
    let len = count * entry_bytes as usize;
    let entries = rest.get(..len).ok_or(IndexFileError::TooShort {
        len_bytes: file.len(),
    })?;
    if crc32c::crc32c(entries) != h.entries_crc.get() {
        return Err(IndexFileError::EntriesChecksum);
    }
    Ok((h, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(frames: &[(u32, u64, i64)]) -> SegmentIndex {
        let mut ix = SegmentIndex::new();
        let mut pos = 0;
        let mut rel = 0;
        for &(count, len, ts) in frames {
            ix.observe(rel, pos, len, ts, 4096);
            pos += len;
            rel += count;
        }
        ix
    }

    #[test]
    fn sparse_entries_and_lookup() {
        let ix = build(&[(10, 3000, 5), (10, 3000, 7), (10, 3000, 6), (10, 3000, 9)]);
        // entries at the first frame and after >= 4096 bytes
        let rels: Vec<u32> = ix.offsets.iter().map(|e| e.relative_offset.get()).collect();
        assert_eq!(rels, vec![0, 20]);
        assert_eq!(ix.lookup(0), (0, 0));
        assert_eq!(ix.lookup(19), (0, 0));
        assert_eq!(ix.lookup(25), (20, 6000));
        assert_eq!(ix.max_timestamp_ms, 9);
    }

    #[test]
    fn file_round_trip_and_damage_detection() {
        let ix = build(&[(1, 5000, 1), (1, 5000, 2), (1, 5000, 3), (1, 5000, 4)]);
        let o = ix.encode_offsets(100, 20000);
        let t = ix.encode_times(100, 20000, 4);
        let back = SegmentIndex::decode(&o, &t, 100, 20000).expect("decodes");
        assert_eq!(back.offsets, ix.offsets);
        assert_eq!(back.times, ix.times);
        assert_eq!(back.max_timestamp_ms, 4);
        for i in 0..o.len() {
            let mut bad = o.clone();
            bad[i] ^= 0x10;
            assert!(
                SegmentIndex::decode(&bad, &t, 100, 20000).is_err(),
                "byte {i}"
            );
        }
        assert!(SegmentIndex::decode(&o, &t, 101, 20000).is_err());
        assert!(SegmentIndex::decode(&o[..o.len() - 1], &t, 100, 20000).is_err());
    }

    #[test]
    fn truncation_drops_later_entries() {
        let mut ix = build(&[(1, 5000, 1), (1, 5000, 2), (1, 5000, 3)]);
        ix.truncate_to_position(5000, 1);
        assert_eq!(ix.offsets.len(), 1);
        assert_eq!(ix.covered_bytes, 5000);
        ix.observe(1, 5000, 100, 10, 4096);
        assert_eq!(ix.offsets.len(), 2);
    }
}
