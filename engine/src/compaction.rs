//! Log compaction (Kafka's log cleaner): keep the newest record of every key.
//!
//! What it owns: the decision what to clean ([`plan`], I/O-free, from
//! segment sizes and the cleaner checkpoint), the key -> latest-offset map
//! ([`OffsetMap`], a hash of each key within a memory limit, as Kafka's
//! SkimpyOffsetMap), the rewrite of one segment's frames
//! ([`SegmentRewriter`], I/O-free), and the pass that reads closed segments
//! and writes `<base>.cleaned` files through the [`Storage`] trait
//! ([`clean`]). The swap of a cleaned file into the log is
//! [`crate::Log::install_cleaned`]; recovery of a half-done swap is in
//! `Log::open`. Format: `docs/format.md`, "Compacted frames" and "Cleaner
//! files"; the decision: ARCHITECTURE.md, "Log compaction".
//!
//! Invariants:
//! - Offsets never change: a cleaned segment covers exactly the offsets of
//!   the segment it replaces (same base, same end), frame after frame
//!   dense; removed records leave the offsets of their frame (or of an
//!   empty "gap" frame) unused, so readers asked for such an offset get the
//!   next record.
//! - A record is removed only if the map holds a *later* offset for its key
//!   (it is superseded), or it is a tombstone older than
//!   `delete.retention.ms`. The newest record of a key is never removed
//!   unless it is such an expired tombstone.
//! - Segments of one pass are swapped in increasing offset order, and the
//!   cleaner checkpoint advances only after all of them: a crash in between
//!   leaves older segments cleaned and newer ones not, so a tombstone is
//!   never gone while an older value of its key survives.
//! - Only closed segments below the recovery point are cleaned, never the
//!   active one; control frames and the frames of transactions (attribute
//!   bit 4) are kept whole and never enter the map; an idempotent producer's
//!   emptied batch keeps its header (an empty frame) when it is the last of
//!   a run of that producer's emptied batches, so producer state can be
//!   rebuilt from the log.
//! - Every frame the cleaner writes passes `verify_stored`.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use strom_flatbuffers::{
    build_compacted_frame, peek_frame_len, records, verify_stored, CompactedHeader, FrameHeader,
    FRAME_BYTES_MAX, FRAME_HEADER_BYTES,
};

use crate::error::EngineError;
use crate::index::SegmentIndex;
use crate::storage::{align_up, Storage, StorageFile, WriteBuf};

/// Suffix of a cleaned segment being written: removed by recovery (the
/// pass did not commit).
pub const CLEANED_SUFFIX: &str = ".cleaned";
/// Suffix of a cleaned segment committed to replace `<base>.log`:
/// recovery finishes the swap.
pub const SWAP_SUFFIX: &str = ".swap";
/// The cleaner checkpoint: the first offset not yet cleaned.
pub const CLEANER_CHECKPOINT_FILE: &str = "cleaner-checkpoint";
/// `"SCLN"`.
pub const CLEANER_CHECKPOINT_MAGIC: u32 = u32::from_le_bytes(*b"SCLN");
pub const CLEANER_CHECKPOINT_VERSION: u32 = 1;
pub const CLEANER_CHECKPOINT_BYTES: usize = 20;

/// Bytes charged per map entry: a 16-byte key hash, an 8-byte offset and
/// the hash table's own overhead.
pub const OFFSET_MAP_ENTRY_BYTES: usize = 32;
/// Default memory for one pass's offset map (Kafka's dedupe buffer is 128
/// MiB for all cleaner threads).
pub const DEFAULT_OFFSET_MAP_BYTES_MAX: usize = 16 << 20;
/// Segment bytes read per disk read, and the size of a write buffer.
pub const CLEANER_IO_CHUNK_BYTES: usize = 1 << 20;
/// Default cleaner I/O budget, read plus written bytes per second.
pub const DEFAULT_CLEANER_IO_BYTES_PER_SEC: u64 = 64 << 20;
/// Offsets one empty gap frame may cover (`last_offset_delta` is u32).
const GAP_SPAN_MAX: u64 = 1 << 31;

pub fn cleaned_file_name(base: u64) -> String {
    format!("{base:020}.log{CLEANED_SUFFIX}")
}

pub fn swap_file_name(base: u64) -> String {
    format!("{base:020}.log{SWAP_SUFFIX}")
}

/// `<20 digits>.log.swap` -> base.
pub fn parse_swap_file_name(name: &str) -> Option<u64> {
    crate::log::parse_segment_file_name(name.strip_suffix(SWAP_SUFFIX)?)
}

/// A topic's compaction settings (Kafka's names in the comments).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompactionConfig {
    /// `delete.retention.ms`: how long a tombstone stays readable.
    pub delete_retention_ms: u64,
    /// `min.cleanable.dirty.ratio`: dirty bytes / closed bytes that start a pass.
    pub min_cleanable_dirty_ratio: f64,
    /// `min.compaction.lag.ms`: records younger than this are not compacted.
    pub min_compaction_lag_ms: u64,
    /// `max.compaction.lag.ms`: a dirty segment older than this is cleaned
    /// whatever the ratio.
    pub max_compaction_lag_ms: Option<u64>,
    /// Memory of one pass's offset map.
    pub map_bytes_max: usize,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            delete_retention_ms: 24 * 3600 * 1000,
            min_cleanable_dirty_ratio: 0.5,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: None,
            map_bytes_max: DEFAULT_OFFSET_MAP_BYTES_MAX,
        }
    }
}

/// What the planner knows of one closed segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentStat {
    pub base_offset: u64,
    /// The next segment's base: the segment holds `[base_offset, end_offset)`.
    pub end_offset: u64,
    pub len_bytes: u64,
    /// From its index, when loaded.
    pub max_timestamp_ms: Option<i64>,
}

/// A pass to run: the closed segments it may read and rewrite.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub first_dirty: u64,
    /// Closed segments from the log start, in order, contiguous.
    pub segments: Vec<SegmentStat>,
    pub dirty_ratio: f64,
}

/// Dirty bytes over all closed bytes: a segment holding `first_dirty` or
/// later counts as dirty.
pub fn dirty_ratio(closed: &[SegmentStat], first_dirty: u64) -> f64 {
    let total: u64 = closed.iter().map(|s| s.len_bytes).sum();
    if total == 0 {
        return 0.0;
    }
    let dirty: u64 = closed
        .iter()
        .filter(|s| s.end_offset > first_dirty)
        .map(|s| s.len_bytes)
        .sum();
    dirty as f64 / total as f64
}

/// Decides whether a pass is due (I/O-free). `closed` are the segments the
/// cleaner may touch (closed, synced, indexed), in offset order.
pub fn plan(
    closed: &[SegmentStat],
    first_dirty: u64,
    now_ms: i64,
    cfg: &CompactionConfig,
) -> Option<Plan> {
    for w in closed.windows(2) {
        assert_eq!(
            w[0].end_offset, w[1].base_offset,
            "closed segments are contiguous"
        );
    }
    let first = closed.first()?;
    let first_dirty = first_dirty.max(first.base_offset);
    let dirty: Vec<&SegmentStat> = closed
        .iter()
        .filter(|s| s.end_offset > first_dirty)
        .collect();
    let oldest_dirty = dirty.first()?;
    let ratio = dirty_ratio(closed, first_dirty);
    let overdue = cfg.max_compaction_lag_ms.is_some_and(|lag| {
        oldest_dirty
            .max_timestamp_ms
            .is_some_and(|ts| now_ms.saturating_sub(ts) >= lag as i64)
    });
    if ratio < cfg.min_cleanable_dirty_ratio && !overdue {
        return None;
    }
    Some(Plan {
        first_dirty,
        segments: closed.to_vec(),
        dirty_ratio: ratio,
    })
}

/// A 128-bit hash of a key (two SipHash-1-3 runs with different prefixes;
/// the map lives only in memory, so the hash need not be stable across
/// builds). Two keys that collide would let the older one's records be
/// removed: at 2^-128 per pair, accepted, as Kafka accepts MD5's.
pub fn key_hash(key: &[u8]) -> u128 {
    let mut a = std::hash::DefaultHasher::new();
    0u8.hash(&mut a);
    key.hash(&mut a);
    let mut b = std::hash::DefaultHasher::new();
    1u8.hash(&mut b);
    key.hash(&mut b);
    (u128::from(a.finish()) << 64) | u128::from(b.finish())
}

/// Key hash -> latest offset, bounded by a number of entries.
#[derive(Debug)]
pub struct OffsetMap {
    entries: HashMap<u128, u64>,
    entries_max: usize,
}

impl OffsetMap {
    pub fn with_bytes(bytes_max: usize) -> OffsetMap {
        let entries_max = (bytes_max / OFFSET_MAP_ENTRY_BYTES).max(1);
        OffsetMap {
            entries: HashMap::new(),
            entries_max,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Room for `n` more keys, whatever they are.
    pub fn has_room(&self, n: usize) -> bool {
        self.entries.len() + n <= self.entries_max
    }

    /// Records `offset` as the latest of `key`; offsets arrive increasing.
    pub fn put(&mut self, key: &[u8], offset: u64) {
        let h = key_hash(key);
        assert!(
            self.entries.contains_key(&h) || self.entries.len() < self.entries_max,
            "offset map over its bound"
        );
        let e = self.entries.entry(h).or_insert(offset);
        assert!(*e <= offset, "offsets are mapped in increasing order");
        *e = offset;
    }

    pub fn get(&self, key: &[u8]) -> Option<u64> {
        self.entries.get(&key_hash(key)).copied()
    }
}

/// Adds a frame's keyed records to the map, if the map has room for all of
/// them; `false` (and nothing added) if not. Control frames and the frames
/// of transactions add nothing (see [`SegmentRewriter::push`]).
pub fn map_frame(map: &mut OffsetMap, frame: &[u8]) -> Result<bool, strom_flatbuffers::FrameError> {
    let h = FrameHeader::ref_from(frame).expect("a verified frame");
    if h.is_control() || h.is_transactional() {
        return Ok(true);
    }
    if !map.has_room(h.record_count.get() as usize) {
        return Ok(false);
    }
    for r in records(frame)? {
        if let Some(k) = r.key {
            map.put(k, r.offset);
        }
    }
    Ok(true)
}

/// Output of a rewrite: frames in order.
#[derive(Debug, Default)]
pub struct RewriteStats {
    pub frames_in: u64,
    pub frames_out: u64,
    pub records_removed: u64,
    pub records_kept: u64,
}

#[derive(Debug, Clone, Copy)]
struct Gap {
    start: u64,
    end: u64,
    max_timestamp_ms: i64,
}

/// Rewrites the frames of one segment, in order, into the frames of its
/// cleaned version (I/O-free: frames in, bytes out). See the module header
/// for what is kept.
pub struct SegmentRewriter<'m> {
    map: &'m OffsetMap,
    map_end: u64,
    now_ms: i64,
    delete_retention_ms: u64,
    /// Offsets of removed frames not yet emitted as a gap frame.
    gap: Option<Gap>,
    /// An idempotent producer's emptied batch, after `gap`, not yet emitted.
    producer: Option<CompactedHeader>,
    next_offset: Option<u64>,
    pub stats: RewriteStats,
}

impl<'m> SegmentRewriter<'m> {
    pub fn new(map: &'m OffsetMap, map_end: u64, now_ms: i64, delete_retention_ms: u64) -> Self {
        SegmentRewriter {
            map,
            map_end,
            now_ms,
            delete_retention_ms,
            gap: None,
            producer: None,
            next_offset: None,
            stats: RewriteStats::default(),
        }
    }

    /// Rewrites `frame` (verified, the next of the segment), appending the
    /// frames to emit now to `out` (possibly none: they may be held to be
    /// merged with what follows).
    pub fn push(
        &mut self,
        frame: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), strom_flatbuffers::FrameError> {
        let h = *FrameHeader::ref_from(frame).expect("a verified frame");
        if let Some(n) = self.next_offset {
            assert_eq!(h.base_offset(), n, "frames of a segment are dense");
        }
        self.next_offset = Some(h.next_offset());
        self.stats.frames_in += 1;
        // Markers, and the batches of transactions, are kept whole and never
        // shadow another record: the cleaner cannot tell an aborted batch
        // from a committed one (that is the server's transaction index), and
        // an aborted record that became a key's "latest" would remove the
        // committed value before it from what read_committed consumers see.
        // Kafka drops aborted records first; here transactional topics are
        // compacted less, never wrongly.
        if h.is_control() || h.is_transactional() {
            self.flush(out);
            self.emit_verbatim(frame, out);
            return Ok(());
        }
        let all: Vec<_> = records(frame)?.collect();
        let kept: Vec<_> = all.iter().copied().filter(|r| self.keep(r)).collect();
        self.stats.records_kept += kept.len() as u64;
        self.stats.records_removed += (all.len() - kept.len()) as u64;
        if !kept.is_empty() {
            self.flush(out);
            if kept.len() == all.len() {
                self.emit_verbatim(frame, out);
            } else {
                let at = out.len();
                build_compacted_frame(&CompactedHeader::of(&h), &kept, out);
                self.check_written(&out[at..]);
                self.stats.frames_out += 1;
            }
            return Ok(());
        }
        if h.producer_id.get() >= 0 {
            match self.producer {
                Some(p) if p.producer_id == h.producer_id.get() => {
                    // The held batch is not the producer's last: its
                    // offsets join the gap.
                    let p_end = p.base_offset + u64::from(p.last_offset_delta) + 1;
                    self.extend_gap(p.base_offset, p_end, p.max_timestamp_ms);
                    self.producer = Some(CompactedHeader::of(&h));
                }
                Some(_) => {
                    self.flush(out);
                    self.producer = Some(CompactedHeader::of(&h));
                }
                None => self.producer = Some(CompactedHeader::of(&h)),
            }
            return Ok(());
        }
        if self.producer.is_some() {
            self.flush(out);
        }
        self.extend_gap(h.base_offset(), h.next_offset(), h.max_timestamp_ms.get());
        Ok(())
    }

    /// Whether a record stays: it has no key (written before the topic was
    /// compacted: never removed), or lies past the map, or the map holds no
    /// later offset for its key and it is not a tombstone older than
    /// `delete.retention.ms`.
    fn keep(&self, r: &strom_flatbuffers::RecordView<'_>) -> bool {
        let Some(key) = r.key else {
            return true;
        };
        if r.offset >= self.map_end {
            return true;
        }
        if self.map.get(key).is_some_and(|latest| latest > r.offset) {
            return false;
        }
        let expired = r
            .timestamp_ms
            .saturating_add(self.delete_retention_ms as i64)
            <= self.now_ms;
        !(r.value.is_none() && expired)
    }

    /// Emits whatever is held; call at the end of the segment.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.flush(out);
    }

    fn extend_gap(&mut self, start: u64, end: u64, max_ts: i64) {
        match &mut self.gap {
            Some(g) => {
                assert_eq!(g.end, start, "a gap is contiguous");
                g.end = end;
                g.max_timestamp_ms = g.max_timestamp_ms.max(max_ts);
            }
            None => {
                self.gap = Some(Gap {
                    start,
                    end,
                    max_timestamp_ms: max_ts,
                })
            }
        }
    }

    fn flush(&mut self, out: &mut Vec<u8>) {
        if let Some(g) = self.gap.take() {
            let mut start = g.start;
            while start < g.end {
                let span = (g.end - start).min(GAP_SPAN_MAX);
                let h = CompactedHeader {
                    base_offset: start,
                    last_offset_delta: (span - 1) as u32,
                    first_timestamp_ms: g.max_timestamp_ms,
                    max_timestamp_ms: g.max_timestamp_ms,
                    producer_id: -1,
                    producer_epoch: -1,
                    base_sequence: -1,
                    leader_epoch: 0,
                    attributes: 0,
                };
                let at = out.len();
                build_compacted_frame(&h, &[], out);
                self.check_written(&out[at..]);
                self.stats.frames_out += 1;
                start += span;
            }
        }
        if let Some(p) = self.producer.take() {
            let at = out.len();
            build_compacted_frame(&p, &[], out);
            self.check_written(&out[at..]);
            self.stats.frames_out += 1;
        }
    }

    fn emit_verbatim(&mut self, frame: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(frame);
        self.stats.frames_out += 1;
    }

    fn check_written(&self, frame: &[u8]) {
        let h = verify_stored(frame).expect("the cleaner writes valid frames");
        assert!(h.is_compacted());
    }
}

/// Cleaner checkpoint encoding: magic, version, first dirty offset, crc.
pub fn encode_cleaner_checkpoint(first_dirty: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(CLEANER_CHECKPOINT_BYTES);
    b.extend_from_slice(&CLEANER_CHECKPOINT_MAGIC.to_le_bytes());
    b.extend_from_slice(&CLEANER_CHECKPOINT_VERSION.to_le_bytes());
    b.extend_from_slice(&first_dirty.to_le_bytes());
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// `None` for anything but a valid version-1 file: a lost checkpoint only
/// costs a pass over already clean segments.
pub fn decode_cleaner_checkpoint(b: &[u8]) -> Option<u64> {
    if b.len() != CLEANER_CHECKPOINT_BYTES {
        return None;
    }
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    if u32_at(0) != CLEANER_CHECKPOINT_MAGIC || u32_at(4) != CLEANER_CHECKPOINT_VERSION {
        return None;
    }
    if u32_at(16) != crc32c::crc32c(&b[..16]) {
        return None;
    }
    Some(u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")))
}

pub async fn read_cleaner_checkpoint<S: Storage>(storage: &S, dir: &Path) -> u64 {
    match storage
        .read_all(&dir.join(CLEANER_CHECKPOINT_FILE), 4096)
        .await
    {
        Ok(Some(b)) => decode_cleaner_checkpoint(&b).unwrap_or(0),
        _ => 0,
    }
}

pub async fn write_cleaner_checkpoint<S: Storage>(
    storage: &S,
    dir: &Path,
    first_dirty: u64,
) -> Result<(), EngineError> {
    storage
        .write_atomic(
            &dir.join(CLEANER_CHECKPOINT_FILE),
            &encode_cleaner_checkpoint(first_dirty),
        )
        .await?;
    Ok(())
}

/// Paces the cleaner's I/O: called after every read or write with its
/// bytes; the shell sleeps to hold a rate and yields to other tasks.
#[allow(async_fn_in_trait)]
pub trait Throttle {
    async fn consumed(&mut self, bytes: u64);
}

/// No pacing (tests, simulation).
pub struct Unthrottled;

impl Throttle for Unthrottled {
    async fn consumed(&mut self, _bytes: u64) {}
}

/// A segment rewritten into `<base>.log.cleaned`, synced, ready to swap.
#[derive(Debug)]
pub struct CleanedSegment {
    pub base_offset: u64,
    pub old_len_bytes: u64,
    pub new_len_bytes: u64,
    pub index: SegmentIndex,
}

/// What a pass did.
#[derive(Debug, Default)]
pub struct PassOutcome {
    pub cleaned: Vec<CleanedSegment>,
    /// The first offset the map did not cover: the next pass's first dirty.
    pub map_end: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub records_removed: u64,
}

/// Reads a segment file frame by frame, in chunks.
struct FrameReader<F: StorageFile> {
    file: F,
    path: PathBuf,
    len: u64,
    pos: u64,
    expected: u64,
    buf: bytes::Bytes,
    buf_pos: u64,
}

impl<F: StorageFile> FrameReader<F> {
    /// The next frame, or `None` at the end of the segment.
    async fn next<T: Throttle>(
        &mut self,
        throttle: &mut T,
        bytes_read: &mut u64,
    ) -> Result<Option<bytes::Bytes>, EngineError> {
        if self.pos >= self.len {
            return Ok(None);
        }
        let mut want = CLEANER_IO_CHUNK_BYTES;
        loop {
            let at = (self.pos - self.buf_pos) as usize;
            if self.buf_pos <= self.pos && at < self.buf.len() {
                let rest = &self.buf[at..];
                let corrupt = |reason: String| EngineError::Corrupt {
                    path: self.path.clone(),
                    position: self.pos,
                    reason,
                };
                let need = match peek_frame_len(rest, FRAME_BYTES_MAX) {
                    Ok(Some(len)) if len <= rest.len() => {
                        let h = verify_stored(&rest[..len]).map_err(|e| corrupt(e.to_string()))?;
                        if h.base_offset() != self.expected {
                            return Err(corrupt(format!(
                                "frame at offset {} where {} was expected",
                                h.base_offset(),
                                self.expected
                            )));
                        }
                        self.expected = h.next_offset();
                        let frame = self.buf.slice(at..at + len);
                        self.pos += len as u64;
                        return Ok(Some(frame));
                    }
                    Ok(Some(len)) => len,
                    Ok(None) => FRAME_HEADER_BYTES,
                    Err(e) => return Err(corrupt(e.to_string())),
                };
                if self.pos + need as u64 > self.len {
                    return Err(corrupt("a frame runs past the end of the segment".into()));
                }
                want = want.max(need);
            }
            let len = (want as u64).min(self.len - self.pos) as usize;
            self.buf = self.file.read_at(self.pos, len).await?;
            if self.buf.len() != len {
                return Err(EngineError::Corrupt {
                    path: self.path.clone(),
                    position: self.pos,
                    reason: format!("short read: {} of {len} bytes", self.buf.len()),
                });
            }
            self.buf_pos = self.pos;
            *bytes_read += len as u64;
            throttle.consumed(len as u64).await;
        }
    }
}

async fn open_reader<S: Storage>(
    storage: &S,
    dir: &Path,
    s: &SegmentStat,
) -> Result<FrameReader<S::File>, EngineError> {
    let path = dir.join(crate::log::segment_file_name(s.base_offset));
    let file = storage
        .open(&path)
        .await?
        .ok_or_else(|| EngineError::Corrupt {
            path: path.clone(),
            position: 0,
            reason: "segment vanished under the cleaner".into(),
        })?;
    Ok(FrameReader {
        file,
        path,
        len: s.len_bytes,
        pos: 0,
        expected: s.base_offset,
        buf: bytes::Bytes::new(),
        buf_pos: 0,
    })
}

/// Writes a cleaned segment through aligned buffers (O_DIRECT on DMA files).
struct CleanedWriter<F: StorageFile> {
    file: F,
    buf: F::Buf,
    buf_pos: u64,
    fill: usize,
}

impl<F: StorageFile> CleanedWriter<F> {
    async fn write<T: Throttle>(
        &mut self,
        mut bytes: &[u8],
        throttle: &mut T,
        written: &mut u64,
    ) -> Result<(), EngineError> {
        while !bytes.is_empty() {
            let room = self.buf.len() - self.fill;
            let n = room.min(bytes.len());
            self.buf.as_mut_slice()[self.fill..self.fill + n].copy_from_slice(&bytes[..n]);
            self.fill += n;
            bytes = &bytes[n..];
            if self.fill == self.buf.len() {
                let full =
                    std::mem::replace(&mut self.buf, self.file.alloc_buf(CLEANER_IO_CHUNK_BYTES));
                self.file.write_at(full, self.buf_pos).await?;
                *written += CLEANER_IO_CHUNK_BYTES as u64;
                throttle.consumed(CLEANER_IO_CHUNK_BYTES as u64).await;
                self.buf_pos += CLEANER_IO_CHUNK_BYTES as u64;
                self.fill = 0;
            }
        }
        Ok(())
    }

    /// Writes the tail, cuts the file to its length, fdatasyncs, closes.
    async fn finish(mut self, written: &mut u64) -> Result<u64, EngineError> {
        let len = self.buf_pos + self.fill as u64;
        if self.fill > 0 {
            let aligned = align_up(self.fill as u64) as usize;
            self.buf.as_mut_slice()[self.fill..aligned].fill(0);
            self.buf.trim_to(aligned);
            self.file.write_at(self.buf, self.buf_pos).await?;
            *written += aligned as u64;
        }
        self.file.truncate(len).await?;
        self.file.fdatasync().await?;
        self.file.close().await?;
        Ok(len)
    }
}

/// Runs one pass of `plan`: builds the offset map from the first dirty
/// offset as far as it holds (and as far as `min.compaction.lag.ms`
/// allows), then rewrites every planned segment below the map's end into
/// `<base>.log.cleaned` (synced). Nothing in the log changes: the caller
/// swaps them in with [`crate::Log::install_cleaned`], in order. On error
/// the `.cleaned` files written are removed (or left for recovery).
pub async fn clean<S: Storage, T: Throttle>(
    storage: &S,
    dir: &Path,
    plan: &Plan,
    cfg: &CompactionConfig,
    now_ms: i64,
    index_interval_bytes: u32,
    throttle: &mut T,
) -> Result<PassOutcome, EngineError> {
    let mut out = PassOutcome::default();
    let result = clean_inner(
        storage,
        dir,
        plan,
        cfg,
        now_ms,
        index_interval_bytes,
        throttle,
        &mut out,
    )
    .await;
    if let Err(e) = result {
        for c in &out.cleaned {
            let _ = storage
                .remove(&dir.join(cleaned_file_name(c.base_offset)))
                .await;
        }
        return Err(e);
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
async fn clean_inner<S: Storage, T: Throttle>(
    storage: &S,
    dir: &Path,
    plan: &Plan,
    cfg: &CompactionConfig,
    now_ms: i64,
    index_interval_bytes: u32,
    throttle: &mut T,
    out: &mut PassOutcome,
) -> Result<(), EngineError> {
    let mut map = OffsetMap::with_bytes(cfg.map_bytes_max);
    let lag_horizon_ms = now_ms.saturating_sub(cfg.min_compaction_lag_ms as i64);
    let mut map_end = plan.first_dirty;
    'segments: for s in plan
        .segments
        .iter()
        .filter(|s| s.end_offset > plan.first_dirty)
    {
        let mut r = open_reader(storage, dir, s).await?;
        while let Some(frame) = r.next(throttle, &mut out.bytes_read).await? {
            let h = FrameHeader::ref_from(&frame).expect("verified");
            if h.next_offset() <= plan.first_dirty {
                continue;
            }
            if h.max_timestamp_ms.get() > lag_horizon_ms {
                break 'segments;
            }
            if !map_frame(&mut map, &frame).map_err(|e| EngineError::Corrupt {
                path: r.path.clone(),
                position: r.pos - frame.len() as u64,
                reason: e.to_string(),
            })? {
                break 'segments;
            }
            map_end = h.next_offset();
        }
        r.file.close().await?;
    }
    out.map_end = map_end;
    if map_end <= plan.first_dirty {
        return Ok(());
    }
    for s in plan.segments.iter().filter(|s| s.base_offset < map_end) {
        let mut r = open_reader(storage, dir, s).await?;
        let path = dir.join(cleaned_file_name(s.base_offset));
        let file = storage.create(&path).await?;
        let buf = file.alloc_buf(CLEANER_IO_CHUNK_BYTES);
        let mut w = CleanedWriter {
            file,
            buf,
            buf_pos: 0,
            fill: 0,
        };
        let mut rw = SegmentRewriter::new(&map, map_end, now_ms, cfg.delete_retention_ms);
        let mut index = SegmentIndex::new();
        let mut pending = Vec::new();
        let mut pos = 0u64;
        let observe = |pending: &[u8], index: &mut SegmentIndex, pos: &mut u64| {
            let mut at = 0;
            while at < pending.len() {
                let h = FrameHeader::ref_from(&pending[at..]).expect("frames we built");
                let len = h.frame_len();
                index.observe(
                    (h.base_offset() - s.base_offset) as u32,
                    *pos,
                    len as u64,
                    h.max_timestamp_ms.get(),
                    index_interval_bytes,
                );
                *pos += len as u64;
                at += len;
            }
        };
        while let Some(frame) = r.next(throttle, &mut out.bytes_read).await? {
            rw.push(&frame, &mut pending)
                .map_err(|e| EngineError::Corrupt {
                    path: r.path.clone(),
                    position: r.pos - frame.len() as u64,
                    reason: e.to_string(),
                })?;
            if pending.len() >= CLEANER_IO_CHUNK_BYTES {
                observe(&pending, &mut index, &mut pos);
                w.write(&pending, throttle, &mut out.bytes_written).await?;
                pending.clear();
            }
        }
        r.file.close().await?;
        rw.finish(&mut pending);
        observe(&pending, &mut index, &mut pos);
        w.write(&pending, throttle, &mut out.bytes_written).await?;
        let new_len = w.finish(&mut out.bytes_written).await?;
        assert_eq!(new_len, pos);
        assert_eq!(
            rw.next_offset,
            Some(s.end_offset),
            "a cleaned segment ends where the old one did"
        );
        out.records_removed += rw.stats.records_removed;
        out.cleaned.push(CleanedSegment {
            base_offset: s.base_offset,
            old_len_bytes: s.len_bytes,
            new_len_bytes: new_len,
            index,
        });
    }
    Ok(())
}

/// One whole pass over a [`crate::Log`] held by the caller (tests, the
/// simulation, tools): plan, clean, swap oldest first, move the cleaner
/// checkpoint. The partition shell does the same without holding the log
/// while it reads and writes (`Partition::compact`). `Ok(None)`: nothing due.
pub async fn compact_log<S: Storage, T: Throttle>(
    log: &mut crate::Log<S>,
    storage: &S,
    cfg: &CompactionConfig,
    now_ms: i64,
    throttle: &mut T,
) -> Result<Option<PassOutcome>, EngineError> {
    let dir = log.dir().to_path_buf();
    let segments = log.compaction_segments();
    let first_dirty = read_cleaner_checkpoint(storage, &dir).await;
    let Some(plan) = plan(&segments, first_dirty, now_ms, cfg) else {
        return Ok(None);
    };
    let interval = log.config().index_interval_bytes;
    let outcome = clean(storage, &dir, &plan, cfg, now_ms, interval, throttle).await?;
    let mut all_in = true;
    for (i, c) in outcome.cleaned.iter().enumerate() {
        let installed = match log.install_cleaned(c).await {
            Ok(v) => v,
            Err(e) => {
                for rest in &outcome.cleaned[i + 1..] {
                    let _ = storage
                        .remove(&dir.join(cleaned_file_name(rest.base_offset)))
                        .await;
                }
                return Err(e);
            }
        };
        if !installed {
            all_in = false;
            for rest in &outcome.cleaned[i + 1..] {
                storage
                    .remove(&dir.join(cleaned_file_name(rest.base_offset)))
                    .await?;
            }
            break;
        }
    }
    if all_in && outcome.map_end > plan.first_dirty {
        write_cleaner_checkpoint(storage, &dir, outcome.map_end).await?;
    }
    Ok(Some(outcome))
}

#[cfg(test)]
mod tests {
    use super::*;
    use strom_flatbuffers::{stamp_base_offset, stamp_producer, BatchBuilder, RecordIn};

    /// (base offset, next offset, records as (offset, value)) of a written frame.
    type Rewritten = (u64, u64, Vec<(u64, Option<Vec<u8>>)>);

    fn frame(base: u64, recs: &[(Option<&str>, Option<&str>)], ts: i64) -> Vec<u8> {
        let mut b = BatchBuilder::new();
        for (k, v) in recs {
            b.push(&RecordIn {
                timestamp_ms: ts,
                key: k.map(str::as_bytes),
                value: v.map(str::as_bytes),
                headers: &[],
            });
        }
        let mut f = b.finish();
        stamp_base_offset(&mut f, base);
        f
    }

    fn rewrite(frames: &[Vec<u8>], map: &OffsetMap, map_end: u64, now: i64) -> Vec<Rewritten> {
        let mut rw = SegmentRewriter::new(map, map_end, now, 1000);
        let mut out = Vec::new();
        for f in frames {
            rw.push(f, &mut out).unwrap();
        }
        rw.finish(&mut out);
        let mut res = Vec::new();
        let mut at = 0;
        while at < out.len() {
            let len = FrameHeader::ref_from(&out[at..]).unwrap().frame_len();
            let f = &out[at..at + len];
            let h = verify_stored(f).unwrap();
            let recs = records(f)
                .unwrap()
                .map(|r| (r.offset, r.value.map(<[u8]>::to_vec)))
                .collect();
            res.push((h.base_offset(), h.next_offset(), recs));
            at += len;
        }
        res
    }

    #[test]
    fn the_newest_record_of_each_key_survives_with_its_offset() {
        let frames = vec![
            frame(0, &[(Some("a"), Some("1")), (Some("b"), Some("1"))], 10),
            frame(2, &[(Some("a"), Some("2"))], 10),
            frame(3, &[(Some("c"), Some("1")), (None, Some("x"))], 10),
            frame(5, &[(Some("a"), Some("3")), (Some("c"), Some("2"))], 10),
        ];
        let mut map = OffsetMap::with_bytes(1 << 20);
        for f in &frames {
            assert!(map_frame(&mut map, f).unwrap());
        }
        let got = rewrite(&frames, &map, 7, 20);
        // Frames stay dense; removed offsets become gaps inside frames or
        // an empty frame.
        assert_eq!(
            got,
            vec![
                (0, 2, vec![(1, Some(b"1".to_vec()))]),
                (2, 3, vec![]),
                (3, 5, vec![(4, Some(b"x".to_vec()))]),
                (
                    5,
                    7,
                    vec![(5, Some(b"3".to_vec())), (6, Some(b"2".to_vec()))]
                ),
            ]
        );
    }

    #[test]
    fn the_records_of_transactions_neither_shadow_nor_go() {
        // "a" committed by a plain producer, then written by a transaction
        // (which may have been aborted: the cleaner cannot know), then a
        // marker. The plain "a" must stay: were the transaction aborted, it
        // would be the value read_committed consumers see.
        let mut txn = BatchBuilder::new();
        txn.set_txn_attributes(strom_flatbuffers::frame::ATTR_TRANSACTIONAL);
        txn.set_producer(7, 0, 0);
        txn.push(&RecordIn {
            timestamp_ms: 10,
            key: Some(b"a"),
            value: Some(b"txn"),
            headers: &[],
        });
        let mut txn = txn.finish();
        stamp_base_offset(&mut txn, 1);
        let frames = vec![
            frame(0, &[(Some("a"), Some("1"))], 10),
            txn,
            frame(2, &[(Some("b"), Some("1")), (Some("b"), Some("2"))], 10),
        ];
        let mut map = OffsetMap::with_bytes(1 << 20);
        for f in &frames {
            assert!(map_frame(&mut map, f).unwrap());
        }
        assert_eq!(
            map.get(b"a"),
            Some(0),
            "the transaction's record is not mapped"
        );
        let got = rewrite(&frames, &map, 4, 20);
        assert_eq!(
            got,
            vec![
                (0, 1, vec![(0, Some(b"1".to_vec()))]),
                (1, 2, vec![(1, Some(b"txn".to_vec()))]),
                (2, 4, vec![(3, Some(b"2".to_vec()))]),
            ]
        );
    }

    #[test]
    fn tombstones_go_after_delete_retention_and_records_past_the_map_stay() {
        let frames = vec![
            frame(0, &[(Some("a"), Some("1"))], 10),
            frame(1, &[(Some("a"), None)], 10),
            frame(2, &[(Some("a"), Some("late"))], 10),
        ];
        let mut map = OffsetMap::with_bytes(1 << 20);
        assert!(map_frame(&mut map, &frames[0]).unwrap());
        assert!(map_frame(&mut map, &frames[1]).unwrap());
        // Map ends at 2: offset 2 is not looked at, the tombstone is the
        // newest the map knows.
        let young = rewrite(&frames, &map, 2, 500);
        assert_eq!(young[0], (0, 1, vec![]));
        assert_eq!(young[1], (1, 2, vec![(1, None)]));
        assert_eq!(young[2].2, vec![(2, Some(b"late".to_vec()))]);
        let old = rewrite(&frames, &map, 2, 2000);
        assert_eq!(old[0], (0, 2, vec![]), "one gap frame covers both");
        assert_eq!(old[1].2, vec![(2, Some(b"late".to_vec()))]);
    }

    #[test]
    fn an_idempotent_producer_keeps_the_header_of_its_last_emptied_batch() {
        let mut frames = Vec::new();
        for i in 0..3u64 {
            let mut f = frame(i, &[(Some("k"), Some("v"))], 10);
            stamp_producer(&mut f, 7, 0, i as i32);
            frames.push(f);
        }
        frames.push(frame(3, &[(Some("k"), Some("new"))], 10));
        let mut map = OffsetMap::with_bytes(1 << 20);
        for f in &frames {
            map_frame(&mut map, f).unwrap();
        }
        let mut rw = SegmentRewriter::new(&map, 4, 20, 1000);
        let mut out = Vec::new();
        for f in &frames {
            rw.push(f, &mut out).unwrap();
        }
        rw.finish(&mut out);
        let mut hs = Vec::new();
        let mut at = 0;
        while at < out.len() {
            let h = *verify_stored(
                &out[at..at + FrameHeader::ref_from(&out[at..]).unwrap().frame_len()],
            )
            .unwrap();
            at += h.frame_len();
            hs.push((
                h.base_offset(),
                h.next_offset(),
                h.producer_id.get(),
                h.base_sequence.get(),
                h.record_count.get(),
            ));
        }
        assert_eq!(
            hs,
            vec![(0, 2, -1, -1, 0), (2, 3, 7, 2, 0), (3, 4, -1, -1, 1)]
        );
    }

    #[test]
    fn the_map_refuses_a_frame_it_cannot_hold_whole() {
        let mut map = OffsetMap::with_bytes(2 * OFFSET_MAP_ENTRY_BYTES);
        assert!(map_frame(&mut map, &frame(0, &[(Some("a"), Some("1"))], 0)).unwrap());
        assert!(!map_frame(
            &mut map,
            &frame(1, &[(Some("b"), Some("1")), (Some("c"), Some("1"))], 0)
        )
        .unwrap());
        assert_eq!(map.len(), 1);
    }

    #[test]
    fn plans_follow_the_dirty_ratio_and_the_max_lag() {
        let segs = [
            SegmentStat {
                base_offset: 0,
                end_offset: 10,
                len_bytes: 100,
                max_timestamp_ms: Some(0),
            },
            SegmentStat {
                base_offset: 10,
                end_offset: 20,
                len_bytes: 100,
                max_timestamp_ms: Some(50),
            },
        ];
        let cfg = CompactionConfig {
            min_cleanable_dirty_ratio: 0.6,
            ..Default::default()
        };
        assert!(plan(&segs, 0, 100, &cfg).is_some());
        assert!(plan(&segs, 10, 100, &cfg).is_none(), "ratio 0.5");
        assert!(plan(&segs, 20, 100, &cfg).is_none(), "nothing dirty");
        let lag = CompactionConfig {
            max_compaction_lag_ms: Some(40),
            ..cfg
        };
        assert_eq!(plan(&segs, 10, 100, &lag).unwrap().first_dirty, 10);
    }

    #[test]
    fn the_cleaner_checkpoint_round_trips_and_damage_reads_as_none() {
        let b = encode_cleaner_checkpoint(1234);
        assert_eq!(decode_cleaner_checkpoint(&b), Some(1234));
        let mut bad = b.clone();
        bad[9] ^= 1;
        assert_eq!(decode_cleaner_checkpoint(&bad), None);
        assert_eq!(decode_cleaner_checkpoint(&b[..19]), None);
    }
}
