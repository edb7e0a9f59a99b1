//! The bodies of the engine's fuzz targets (`fuzz/fuzz_targets/*.rs`), here
//! so that `tests/fuzz_corpus_replay.rs` runs the very same checks over the
//! committed corpus on every `cargo test`. Each panics only on a broken
//! invariant, never on malformed input. Not part of the engine's API.
//!
//! Targets and what each input is:
//! - [`segment_scan`]: the bytes of a segment file, given to recovery's
//!   `scan`.
//! - [`index_decode`]: `segment_bytes: u32 LE | offsets_len: u16 LE |
//!   offsets file | times file`, given to `SegmentIndex::decode` with the
//!   base offset the offsets file's header names.
//! - [`checkpoint_decode`]: a checkpoint file.
//! - [`producer_snapshot_decode`]: a producer-state snapshot file, named for
//!   the offset it holds (bytes 8..16, or 0 if shorter).
//! - [`log_open`]: a partition directory, as a list of files (see
//!   [`parse_log_dir`]), opened with `Log::open` over `MemoryStorage` and
//!   read from end to end.
//!
//! Checksums stop a fuzzer cold, so every decoder also sees the input with
//! its checksums repaired (frames, index headers and entries, checkpoints,
//! producer snapshots);
//! a raw flag in the `log_open` format keeps a file's bytes as given.

use std::path::{Path, PathBuf};

use bytes::BytesMut;
use futures_lite::future::block_on;
use strom_flatbuffers::fuzz_checks::fix_frame_checksums;
use strom_flatbuffers::{
    stamp_base_offset, verify_stored, BatchBuilder, FrameHeader, RecordIn, FRAME_HEADER_BYTES,
};

use crate::checkpoint::{
    Checkpoint, CheckpointError, CHECKPOINT_BYTES, CHECKPOINT_FILE, CHECKPOINT_MAGIC,
    CHECKPOINT_VERSION,
};
use crate::index::{IndexFileError, SegmentIndex, INDEX_FILE_HEADER_BYTES};
use crate::log::segment_file_name;
use crate::scan::{scan, ScanStop};
use crate::storage::{MemoryStorage, Storage};
use crate::{FlushPolicy, Log, LogConfig};

/// Files one `log_open` input may describe.
pub const LOG_FILES_MAX: usize = 16;
/// Reads the `log_open` check issues before it gives up on reaching the end.
const READS_MAX: usize = 4096;

// ----------------------------------------------------------------- repairs

/// Repairs the header and entries checksums of an index file whose header
/// is present, and sets its base offset when `base` is given. Returns false
/// if the file is too short to hold a header.
pub fn fix_index_file(file: &mut [u8], base: Option<u64>) -> bool {
    if file.len() < INDEX_FILE_HEADER_BYTES {
        return false;
    }
    if let Some(base) = base {
        file[8..16].copy_from_slice(&base.to_le_bytes());
    }
    let entry_bytes = u16::from_le_bytes([file[6], file[7]]) as usize;
    let count = u32::from_le_bytes(file[16..20].try_into().expect("4 bytes")) as usize;
    let rest = &file[INDEX_FILE_HEADER_BYTES..];
    let entries = count
        .checked_mul(entry_bytes)
        .and_then(|n| rest.get(..n))
        .unwrap_or(rest);
    let entries_crc = crc32c::crc32c(entries);
    file[32..36].copy_from_slice(&entries_crc.to_le_bytes());
    let header_crc = crc32c::crc32c(&file[..INDEX_FILE_HEADER_BYTES - 4]);
    file[36..40].copy_from_slice(&header_crc.to_le_bytes());
    true
}

/// Repairs the checksum of a checkpoint-sized file. Returns false if the
/// file is not checkpoint-sized.
pub fn fix_checkpoint(file: &mut [u8]) -> bool {
    if file.len() != CHECKPOINT_BYTES {
        return false;
    }
    let crc = crc32c::crc32c(&file[..CHECKPOINT_BYTES - 4]);
    file[CHECKPOINT_BYTES - 4..].copy_from_slice(&crc.to_le_bytes());
    true
}

/// Renumbers the run of frames at the start of a segment densely from
/// `base` (as the log would have stamped them) and repairs their checksums.
pub fn fix_segment(buf: &mut [u8], base: u64) {
    let mut at = 0usize;
    let mut next = base;
    for _ in 0..LOG_FILES_MAX * 64 {
        let rest = &mut buf[at..];
        let Some(h) = FrameHeader::ref_from(rest) else {
            break;
        };
        let len = h.frame_len();
        let delta = u64::from(h.last_offset_delta.get());
        if len < FRAME_HEADER_BYTES || len > rest.len() {
            break;
        }
        stamp_base_offset(&mut rest[..len], next);
        next = next.saturating_add(delta).saturating_add(1);
        at += len;
    }
    fix_frame_checksums(buf);
}

// ------------------------------------------------------------ segment_scan

/// Scans the bytes as a segment, as given and with its frames' checksums
/// repaired, checking that the scan's report describes the bytes exactly.
pub fn segment_scan(data: &[u8]) {
    check_scan(data);
    let mut fixed = data.to_vec();
    if fix_frame_checksums(&mut fixed) > 0 {
        check_scan(&fixed);
    }
}

fn check_scan(buf: &[u8]) {
    let first_base = FrameHeader::ref_from(buf).map_or(0, |h| h.base_offset());
    for (start, expected) in [(0u64, 0u64), (4096, first_base)] {
        let (frames, stop) = scan(buf, start, expected);
        let mut at = 0usize;
        let mut next = expected;
        for f in &frames {
            assert_eq!(f.position, start + at as u64, "frames are contiguous");
            assert_eq!(f.base_offset, next, "offsets are dense");
            let len = f.len_bytes as usize;
            let h = verify_stored(&buf[at..at + len]).expect("accepted frames verify");
            assert_eq!(h.next_offset(), f.next_offset);
            assert_eq!(h.max_timestamp_ms.get(), f.max_timestamp_ms);
            next = f.next_offset;
            at += len;
        }
        let rest = &buf[at..];
        match &stop {
            ScanStop::End => assert!(rest.is_empty()),
            ScanStop::Incomplete { needed_bytes } => {
                assert!(!rest.is_empty());
                assert!(*needed_bytes > rest.len() as u64, "more bytes are needed");
            }
            ScanStop::Zeros => {
                let n = rest.len().min(FRAME_HEADER_BYTES);
                assert!(rest[..n].iter().all(|&b| b == 0));
            }
            ScanStop::NewerVersion { found } => {
                assert!(rest.len() >= FRAME_HEADER_BYTES);
                assert_eq!(rest[4], *found, "the version byte names the newer version");
                assert!(*found > strom_flatbuffers::frame::FRAME_VERSION);
            }
            ScanStop::Corrupt(_) => {
                let len = FrameHeader::ref_from(rest).map(|h| h.frame_len());
                let whole = len.and_then(|l| rest.get(..l)).unwrap_or(rest);
                assert!(verify_stored(whole).is_err(), "a corrupt stop is corrupt");
            }
            ScanStop::OffsetGap { expected: e, found } => {
                assert_eq!(*e, next);
                assert_ne!(*found, next);
            }
        }
        // Recovery scans in chunks: a prefix accepts a prefix of the frames,
        // and resuming where the scan stopped stops again at once, the same way.
        let (part, _) = scan(&buf[..buf.len() / 2], start, expected);
        assert!(part.len() <= frames.len());
        assert_eq!(part[..], frames[..part.len()]);
        let (again, stop2) = scan(rest, start + at as u64, next);
        assert!(again.is_empty());
        assert_eq!(stop2, stop);
    }
}

// ------------------------------------------------------------ index_decode

/// Splits the input into (segment_bytes, offsets file, times file).
fn split_index_input(data: &[u8]) -> Option<(u64, &[u8], &[u8])> {
    let seg = u64::from(u32::from_le_bytes(data.get(..4)?.try_into().ok()?));
    let olen = usize::from(u16::from_le_bytes(data.get(4..6)?.try_into().ok()?));
    let rest = &data[6..];
    let olen = olen.min(rest.len());
    Some((seg, &rest[..olen], &rest[olen..]))
}

/// Decodes a pair of index files, as given and with checksums and base
/// repaired; whatever decodes must satisfy the index invariants and
/// re-encode to the same entries.
pub fn index_decode(data: &[u8]) {
    let Some((segment_bytes, o, t)) = split_index_input(data) else {
        return;
    };
    let base = o
        .get(8..16)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    check_index(o, t, base, segment_bytes);
    let (mut o2, mut t2) = (o.to_vec(), t.to_vec());
    let fixed_o = fix_index_file(&mut o2, Some(base));
    let fixed_t = fix_index_file(&mut t2, Some(base));
    if fixed_o || fixed_t {
        check_index(&o2, &t2, base, segment_bytes);
    }
}

fn check_index(o: &[u8], t: &[u8], base: u64, segment_bytes: u64) {
    let ix = match SegmentIndex::decode(o, t, base, segment_bytes) {
        Ok(ix) => ix,
        Err(IndexFileError::WrongBase { found, expected }) => {
            assert_ne!(found, expected);
            return;
        }
        Err(_) => return,
    };
    assert!(ix.covered_bytes <= segment_bytes);
    if let Some(first) = ix.offsets.first() {
        assert_eq!((first.relative_offset.get(), first.position.get()), (0, 0));
    }
    for w in ix.offsets.windows(2) {
        assert!(w[0].relative_offset.get() < w[1].relative_offset.get());
        assert!(w[0].position.get() < w[1].position.get());
    }
    if let Some(last) = ix.offsets.last() {
        assert!(u64::from(last.position.get()) < ix.covered_bytes);
    }
    for w in ix.times.windows(2) {
        assert!(w[0].timestamp_ms.get() < w[1].timestamp_ms.get());
        assert!(w[0].relative_offset.get() <= w[1].relative_offset.get());
    }
    // Re-encoding yields the same offset file (up to any trailing bytes) and
    // a pair that decodes to the same index.
    let o2 = ix.encode_offsets(base, ix.covered_bytes);
    assert_eq!(o2[..], o[..o2.len()]);
    let t2 = ix.encode_times(base, ix.covered_bytes, u32::MAX);
    let back = SegmentIndex::decode(&o2, &t2, base, segment_bytes).expect("re-encoded");
    assert_eq!(back.offsets, ix.offsets);
    // `encode_times` keeps entries below its relative limit only; decode does
    // not bound a time entry's relative offset, so u32::MAX may be present.
    let kept: Vec<_> = ix
        .times
        .iter()
        .copied()
        .filter(|e| e.relative_offset.get() < u32::MAX)
        .collect();
    assert_eq!(back.times, kept);
    assert_eq!(back.max_timestamp_ms, ix.max_timestamp_ms);
    assert_eq!(back.covered_bytes, ix.covered_bytes);
    // Look-ups name an entry at or below what was asked.
    for rel in [0, 1, u32::MAX / 2, u32::MAX]
        .into_iter()
        .chain(ix.offsets.iter().map(|e| e.relative_offset.get()))
        .take(64)
    {
        let (r, pos) = ix.lookup(rel);
        assert!(r <= rel);
        assert!(pos < ix.covered_bytes.max(1));
    }
    for ts in [i64::MIN, 0, i64::MAX]
        .into_iter()
        .chain(ix.times.iter().map(|e| e.timestamp_ms.get()))
        .take(64)
    {
        let _ = ix.lookup_time(ts);
    }
    // The log continues a loaded index from its covered bytes.
    let mut grown = ix.clone();
    let next_rel = ix
        .offsets
        .last()
        .map_or(0, |e| e.relative_offset.get().saturating_add(1));
    if next_rel < u32::MAX {
        grown.observe(next_rel, ix.covered_bytes, 100, 0, 1);
        assert_eq!(grown.covered_bytes, ix.covered_bytes + 100);
    }
}

// ------------------------------------------------------- checkpoint_decode

/// Decodes a checkpoint file, as given and with its checksum repaired;
/// whatever decodes re-encodes to the same checkpoint, and a newer version
/// is always refused as such (never as damage, never read).
pub fn checkpoint_decode(data: &[u8]) {
    check_checkpoint(data);
    let mut fixed = data.to_vec();
    if fix_checkpoint(&mut fixed) {
        check_checkpoint(&fixed);
    }
}

fn check_checkpoint(data: &[u8]) {
    let r = Checkpoint::decode(data);
    let magic = data
        .get(..4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4")));
    let version = data
        .get(4..8)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4")));
    match r {
        Ok(c) => {
            assert_eq!(data.len(), CHECKPOINT_BYTES);
            assert_eq!(magic, Some(CHECKPOINT_MAGIC));
            assert_eq!(version, Some(CHECKPOINT_VERSION));
            let again = c.encode();
            assert_eq!(Checkpoint::decode(&again), Ok(c));
            // Identical bytes, but for the `clean` flag's normalization.
            assert_eq!(again[..40], data[..40]);
        }
        Err(CheckpointError::UnsupportedVersion { found }) => {
            assert_eq!(magic, Some(CHECKPOINT_MAGIC));
            assert_ne!(found, CHECKPOINT_VERSION);
        }
        Err(_) => {}
    }
}

// ----------------------------------------------- producer_snapshot_decode

/// Repairs the trailing checksum of a producer-state snapshot file. Returns
/// false if the file is too short to hold one.
pub fn fix_producer_snapshot(file: &mut [u8]) -> bool {
    if file.len() < 4 {
        return false;
    }
    let body = file.len() - 4;
    let crc = crc32c::crc32c(&file[..body]);
    file[body..].copy_from_slice(&crc.to_le_bytes());
    true
}

/// Decodes a producer-state snapshot file, as given and with its checksum
/// repaired: whatever decodes holds to the format's invariants and
/// re-encodes to the same bytes; a newer version is refused as such; a
/// name that disagrees with the content is refused.
pub fn producer_snapshot_decode(data: &[u8]) {
    check_producer_snapshot(data);
    let mut fixed = data.to_vec();
    if fix_producer_snapshot(&mut fixed) {
        check_producer_snapshot(&fixed);
    }
}

fn check_producer_snapshot(data: &[u8]) {
    use crate::producer_snapshot::*;
    let le64 = |at: usize| {
        data.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8")))
    };
    let named = le64(8).unwrap_or(0);
    let magic = data
        .get(..4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4")));
    match ProducerSnapshot::decode(data, named) {
        Ok(s) => {
            assert_eq!(magic, Some(PRODUCER_SNAPSHOT_MAGIC));
            assert_eq!(s.offset, named);
            assert!(s.producers.len() <= crate::limits::PRODUCER_SNAPSHOT_PRODUCERS_MAX);
            let mut ids = std::collections::HashSet::new();
            for p in &s.producers {
                assert!(p.producer_id >= 0 && ids.insert(p.producer_id));
                assert!(
                    (1..=crate::limits::PRODUCER_SNAPSHOT_BATCHES_MAX).contains(&p.batches.len())
                );
                for b in &p.batches {
                    assert!(b.base_offset <= b.last_offset && b.last_offset < s.offset);
                }
            }
            assert!(s.txns.len() <= crate::limits::TXN_SNAPSHOT_PRODUCERS_MAX);
            assert!(s.aborted.len() <= crate::limits::TXN_SNAPSHOT_ABORTED_MAX);
            for t in &s.txns {
                assert!(t.producer_id >= 0 && t.last_offset < s.offset);
                assert!(t.ongoing_first_offset.is_none_or(|f| f <= t.last_offset));
            }
            for w in s.aborted.windows(2) {
                assert!(w[0].last_offset < w[1].last_offset);
            }
            let version = data
                .get(4..8)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4")));
            if version == Some(PRODUCER_SNAPSHOT_VERSION) {
                // Canonical: the same bytes again (the time is not read back).
                let written_ms = le64(24).expect("a decoded file has a header") as i64;
                assert_eq!(s.encode(written_ms), data);
            } else {
                // Version 1: no transactions, and what it says is kept.
                assert_eq!(version, Some(PRODUCER_SNAPSHOT_VERSION_1));
                assert!(s.txns.is_empty() && s.aborted.is_empty());
            }
            // The same bytes under another name are refused.
            assert!(ProducerSnapshot::decode(data, named.wrapping_add(1)).is_err());
        }
        Err(ProducerSnapshotError::UnsupportedVersion { found }) => {
            assert_eq!(magic, Some(PRODUCER_SNAPSHOT_MAGIC));
            assert_ne!(found, PRODUCER_SNAPSHOT_VERSION);
            assert_ne!(found, PRODUCER_SNAPSHOT_VERSION_1);
        }
        Err(_) => {}
    }
}

// ----------------------------------------------------------------- log_open

/// One file of a `log_open` input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirFile {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// The kinds of file a `log_open` entry names (`kind & 0x07`).
pub const KIND_SEGMENT: u8 = 0;
pub const KIND_OFFSET_INDEX: u8 = 1;
pub const KIND_TIME_INDEX: u8 = 2;
pub const KIND_CHECKPOINT: u8 = 3;
pub const KIND_TMP: u8 = 4;
pub const KIND_OTHER: u8 = 5;
/// `kind` bit: keep the bytes exactly as given (no repair).
pub const KIND_RAW: u8 = 0x80;

/// Parses a `log_open` input: up to [`LOG_FILES_MAX`] entries of
/// `kind: u8 | base: u8 | len: u16 LE | len bytes`. `base` is the segment
/// base offset (times `base_scale`, the input's first byte). Unless
/// `kind & KIND_RAW`, segments are renumbered from their base with checksums
/// repaired, index files get their base and checksums repaired, and a
/// checkpoint its checksum. A later entry for the same name replaces an
/// earlier one.
pub fn parse_log_dir(data: &[u8]) -> Vec<DirFile> {
    let mut files: Vec<DirFile> = Vec::new();
    let Some((&scale, mut rest)) = data.split_first() else {
        return files;
    };
    let scale = u64::from(scale).max(1);
    while files.len() < LOG_FILES_MAX && rest.len() >= 4 {
        let (kind, b) = (rest[0], u64::from(rest[1]) * scale);
        let len = usize::from(u16::from_le_bytes([rest[2], rest[3]])).min(rest.len() - 4);
        let mut bytes = rest[4..4 + len].to_vec();
        rest = &rest[4 + len..];
        let raw = kind & KIND_RAW != 0;
        let name = match kind & 0x07 {
            KIND_SEGMENT => {
                if !raw {
                    fix_segment(&mut bytes, b);
                }
                segment_file_name(b)
            }
            KIND_OFFSET_INDEX | KIND_TIME_INDEX => {
                if !raw {
                    fix_index_file(&mut bytes, Some(b));
                }
                let ext = if kind & 0x07 == KIND_OFFSET_INDEX {
                    "index"
                } else {
                    "timeindex"
                };
                format!("{b:020}.{ext}")
            }
            KIND_CHECKPOINT => {
                if !raw {
                    fix_checkpoint(&mut bytes);
                }
                CHECKPOINT_FILE.to_string()
            }
            KIND_TMP => format!("{}.tmp", segment_file_name(b)),
            _ => format!("junk-{b}"),
        };
        files.retain(|f| f.name != name);
        files.push(DirFile { name, bytes });
    }
    files
}

/// Serializes files back into the `log_open` format, raw (for seeds built
/// from a real log: their bytes need no repair). Every name must be one the
/// format can express with the given `scale`.
pub fn encode_log_dir(files: &[DirFile], scale: u8) -> Vec<u8> {
    let mut out = vec![scale];
    for f in files {
        let (kind, base) = if f.name == CHECKPOINT_FILE {
            (KIND_CHECKPOINT, 0)
        } else {
            let (digits, ext) = f.name.split_once('.').expect("named file");
            let base: u64 = digits.parse().expect("base offset");
            let kind = match ext {
                "log" => KIND_SEGMENT,
                "index" => KIND_OFFSET_INDEX,
                "timeindex" => KIND_TIME_INDEX,
                other => panic!("unexpected file {other}"),
            };
            (kind, base)
        };
        let scale = u64::from(scale.max(1));
        assert!(base % scale == 0 && base / scale <= 255, "base {base}");
        assert!(f.bytes.len() <= usize::from(u16::MAX), "{} too big", f.name);
        out.push(kind | KIND_RAW);
        out.push((base / scale) as u8);
        out.extend_from_slice(&(f.bytes.len() as u16).to_le_bytes());
        out.extend_from_slice(&f.bytes);
    }
    out
}

/// The partition directory every `log_open` input lives in.
pub fn log_dir() -> &'static Path {
    Path::new("/p")
}

/// The configuration `log_open` opens with: small, so that one append can
/// roll a segment and the write path runs on small buffers.
pub fn log_config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 << 10,
        frame_bytes_max: 64 << 10,
        cache_bytes_max: 0,
        index_interval_bytes: 256,
        preallocate_bytes: 4096,
        write_buffer_bytes: 64 << 10,
        unwritten_bytes_max: 64 << 10,
        checkpoint_interval_bytes: 4096,
        flush: FlushPolicy::Never,
        retention_ms: None,
        ..LogConfig::default()
    }
}

/// Writes `files` into a fresh in-memory partition directory.
pub fn populate(files: &[DirFile]) -> MemoryStorage {
    block_on(async {
        let storage = MemoryStorage::new();
        storage.create_dir_all(log_dir()).await.expect("mkdir");
        for f in files {
            storage
                .write_atomic(&log_dir().join(&f.name), &f.bytes)
                .await
                .expect("populate");
        }
        storage
    })
}

/// Every file of the partition directory, in name order.
pub fn dump(storage: &MemoryStorage) -> Vec<DirFile> {
    block_on(async {
        let mut out = Vec::new();
        for name in storage.list(log_dir()).await.expect("list") {
            let path: PathBuf = log_dir().join(&name);
            let bytes = storage
                .read_all(&path, 1 << 20)
                .await
                .expect("read")
                .expect("listed");
            out.push(DirFile {
                name,
                bytes: bytes.to_vec(),
            });
        }
        out
    })
}

/// A frame (header included) the log returned, with its offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Served {
    base_offset: u64,
    next_offset: u64,
    bytes: Vec<u8>,
}

/// Reads the whole log from its start, checking every returned frame.
async fn read_everything(log: &mut Log<MemoryStorage>) -> Vec<Served> {
    let mut out: Vec<Served> = Vec::new();
    let start = log.offsets().log_start_offset;
    let end = log.offsets().high_watermark;
    let mut from = start;
    for _ in 0..READS_MAX {
        if from >= end {
            break;
        }
        let batch = match log.read(from, 64 << 10).await {
            Ok(b) => b,
            // A damaged region is an error, never data: reading stops here.
            Err(_) => break,
        };
        if batch.frames.is_empty() {
            break;
        }
        for f in &batch.frames {
            let h = verify_stored(f).expect("every frame served passes verify_stored");
            assert!(h.next_offset() > from, "a read moves forward");
            assert!(
                h.base_offset() < end,
                "served frames lie below the high watermark"
            );
            out.push(Served {
                base_offset: h.base_offset(),
                next_offset: h.next_offset(),
                bytes: f.to_vec(),
            });
            from = h.next_offset();
        }
    }
    out
}

/// A small valid producer frame.
fn probe_frame() -> BytesMut {
    let mut b = BatchBuilder::new();
    b.push(&RecordIn {
        timestamp_ms: 7,
        key: Some(b"fuzz"),
        value: Some(b"probe"),
        headers: &[],
    });
    BytesMut::from(&b.finish()[..])
}

/// Opens a log over the directory the input describes, reads all of it,
/// appends one frame, closes, reopens and reads again. Never panics; every
/// frame served passes `verify_stored`; the appended frame is served back
/// after the reopen; a clean reopen serves at least what the first open did.
pub fn log_open(data: &[u8]) {
    let files = parse_log_dir(data);
    let storage = populate(&files);
    block_on(async {
        let Ok((mut log, _report)) = Log::open(storage.clone(), log_dir(), log_config(), 0).await
        else {
            return;
        };
        let o = log.offsets();
        assert!(o.log_start_offset <= o.high_watermark);
        assert_eq!(o.durable_offset, o.high_watermark);
        let first = read_everything(&mut log).await;
        let _ = log.offset_for_timestamp(i64::MIN).await;
        if let Some(f) = first.last() {
            let h = FrameHeader::ref_from(&f.bytes).expect("served");
            let _ = log.offset_for_timestamp(h.max_timestamp_ms.get()).await;
        }
        let frame = probe_frame();
        let payload = frame[FRAME_HEADER_BYTES..].to_vec();
        let Ok(info) = log.append(frame, 1).await else {
            return;
        };
        assert_eq!(info.base_offset, o.high_watermark);
        if log.flush(1).await.is_err() || log.close(2).await.is_err() {
            return;
        }
        let Ok((mut log, report)) = Log::open(storage.clone(), log_dir(), log_config(), 3).await
        else {
            panic!("a log this build closed cleanly reopens");
        };
        assert!(report.clean_shutdown);
        let probe = log
            .read(info.base_offset, 1)
            .await
            .expect("the appended frame survives close and reopen");
        let h = verify_stored(&probe.frames[0]).expect("served");
        assert_eq!(h.base_offset(), info.base_offset);
        assert_eq!(probe.frames[0][FRAME_HEADER_BYTES..], payload[..]);
        let second = read_everything(&mut log).await;
        for f in &first {
            assert!(
                second.contains(f),
                "frame at {} served before the reopen is lost after it",
                f.base_offset
            );
        }
    });
}
