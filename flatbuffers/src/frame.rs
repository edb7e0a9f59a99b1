//! Batch frames: the unit Strom stores on disk and carries on the wire.
//!
//! A frame is a fixed 72-byte [`FrameHeader`] followed by a FlatBuffers
//! `RecordBatch` payload (`schema/record.fbs`). The byte layout is specified in
//! `docs/format.md`; this module is its only implementation.
//!
//! Invariants:
//! - `frame_len` covers header and payload; a frame is never split or padded.
//! - `payload_crc` is crc32c of the payload bytes, computed by the producer and
//!   never recomputed by the engine (end-to-end protection).
//! - `header_crc` is crc32c of header bytes `[0, 68)`; the engine recomputes it
//!   after stamping `base_offset` (the only header field it changes).
//! - A frame that passes [`validate_incoming`] has dense offset deltas
//!   `0..record_count`, a first record whose timestamp delta is 0 (so
//!   `first_timestamp_ms` is its timestamp), and a `max_timestamp_ms` equal to
//!   the largest record timestamp (later records may be earlier, as in Kafka).
//! - Nothing here panics on input bytes: every check is an error value, and an
//!   incomplete frame is `Ok(None)` from [`peek_frame_len`], not an error.
//!
//! Everything in this module is I/O-free.

use crate::generated::record_generated::strom::record as fb;
use zerocopy::little_endian::{I16, I32, I64, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Size of the fixed frame header in bytes.
pub const FRAME_HEADER_BYTES: usize = 72;
/// "STRM" read as a little-endian u32.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"STRM");
/// The only frame version this build reads and writes.
pub const FRAME_VERSION: u8 = 1;
/// Hard cap on one frame, whatever a topic configures.
pub const FRAME_BYTES_MAX: usize = 64 << 20;
/// Hard cap on the records in one frame.
pub const FRAME_RECORDS_MAX: u32 = 1 << 20;
/// Offset of the header checksum inside the header; it covers `[0, 68)`.
const HEADER_CRC_POS: usize = 68;

/// Compression codec, bits 0..=2 of `attributes`. Native frames are stored
/// uncompressed in format version 1; the other values are reserved so that
/// translated Kafka batches can be described later without a version bump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Compression {
    None = 0,
    Gzip = 1,
    Snappy = 2,
    Lz4 = 3,
    Zstd = 4,
}

/// Attribute bit 4: a batch of a transaction (Kafka's `isTransactional`,
/// the same bit). Only with a producer id.
pub const ATTR_TRANSACTIONAL: u16 = 1 << 4;
/// Attribute bit 5: a control batch holding one transaction marker
/// (Kafka's `isControl`, the same bit). Only with bit 4 and a producer id;
/// written by the server, never accepted from a producer's edge.
pub const ATTR_CONTROL: u16 = 1 << 5;
/// Attribute bit 6, only with bit 5: the marker commits (else it aborts).
/// The control record's key says the same in Kafka's layout; this bit lets
/// a replay read the marker's kind from the header alone.
pub const ATTR_COMMIT: u16 = 1 << 6;

/// Mask of the attribute bits that format version 1 defines.
const ATTRIBUTES_KNOWN_MASK: u16 = 0b0000_0000_0111_0111;

/// Attribute bit 3: a frame the log cleaner rewrote (`docs/format.md`,
/// "Compacted frames"). Its records keep their original offsets, so they
/// may be sparse: `record_count <= last_offset_delta + 1`, and a frame may
/// hold no record at all (it then only covers the offsets of removed
/// records, or keeps an idempotent producer's last batch header). Only the
/// engine sets it; [`validate_incoming`] refuses it from producers.
pub const ATTRIBUTE_COMPACTED: u16 = 1 << 3;

/// [`ATTR_CONTROL`] under the name the log cleaner uses: it never removes
/// such a frame.
pub const ATTRIBUTE_CONTROL: u16 = ATTR_CONTROL;

/// The fixed header of every frame, little-endian and unaligned so it can be
/// read in place from any byte position of a network or disk buffer.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct FrameHeader {
    pub magic: U32,
    pub version: u8,
    pub reserved0: u8,
    pub attributes: U16,
    pub frame_len: U32,
    pub payload_crc: U32,
    pub base_offset: U64,
    pub record_count: U32,
    pub last_offset_delta: U32,
    pub first_timestamp_ms: I64,
    pub max_timestamp_ms: I64,
    pub producer_id: I64,
    pub base_sequence: I32,
    pub producer_epoch: I16,
    pub reserved1: U16,
    pub leader_epoch: U32,
    pub header_crc: U32,
}

const _: () = assert!(core::mem::size_of::<FrameHeader>() == FRAME_HEADER_BYTES);

impl FrameHeader {
    /// Reads the header at the start of `buf` in place (no copy, no checks).
    pub fn ref_from(buf: &[u8]) -> Option<&FrameHeader> {
        FrameHeader::ref_from_prefix(buf).ok().map(|(h, _)| h)
    }

    /// crc32c over the header bytes that precede `header_crc`.
    pub fn compute_header_crc(&self) -> u32 {
        crc32c::crc32c(&self.as_bytes()[..HEADER_CRC_POS])
    }

    pub fn frame_len(&self) -> usize {
        self.frame_len.get() as usize
    }

    pub fn base_offset(&self) -> u64 {
        self.base_offset.get()
    }

    /// The offset of the last record in the frame.
    pub fn last_offset(&self) -> u64 {
        self.base_offset
            .get()
            .saturating_add(u64::from(self.last_offset_delta.get()))
    }

    /// The offset after the last record in the frame.
    pub fn next_offset(&self) -> u64 {
        self.last_offset().saturating_add(1)
    }

    /// Rewritten by the log cleaner: records may be sparse or absent.
    pub fn is_compacted(&self) -> bool {
        self.attributes.get() & ATTRIBUTE_COMPACTED != 0
    }

    /// A batch of a transaction (attribute bit 4).
    pub fn is_transactional(&self) -> bool {
        self.attributes.get() & ATTR_TRANSACTIONAL != 0
    }

    /// A control batch: a transaction marker (attribute bit 5).
    pub fn is_control(&self) -> bool {
        self.attributes.get() & ATTR_CONTROL != 0
    }

    /// A commit marker (bits 5 and 6); an abort marker has bit 5 alone.
    pub fn is_commit_marker(&self) -> bool {
        self.is_control() && self.attributes.get() & ATTR_COMMIT != 0
    }

    pub fn compression(&self) -> Option<Compression> {
        match self.attributes.get() & 0b111 {
            0 => Some(Compression::None),
            1 => Some(Compression::Gzip),
            2 => Some(Compression::Snappy),
            3 => Some(Compression::Lz4),
            4 => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// Why a frame was refused. Each variant carries what was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("frame too short: {len_bytes} bytes, a header alone is {FRAME_HEADER_BYTES}")]
    TooShort { len_bytes: usize },
    #[error("bad frame magic {found:#010x}")]
    BadMagic { found: u32 },
    #[error("unsupported frame version {found} (this build reads {FRAME_VERSION})")]
    UnsupportedVersion { found: u8 },
    #[error("reserved header bits are not zero")]
    ReservedNonZero,
    #[error("frame of {len_bytes} bytes exceeds the limit of {max_bytes} bytes")]
    TooLarge { len_bytes: usize, max_bytes: usize },
    #[error("frame length field says {header_len} bytes but {actual_len} bytes were given")]
    LengthMismatch {
        header_len: usize,
        actual_len: usize,
    },
    #[error("header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    HeaderChecksum { stored: u32, computed: u32 },
    #[error("payload checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    PayloadChecksum { stored: u32, computed: u32 },
    #[error("unsupported attributes {attributes:#06x}")]
    UnsupportedAttributes { attributes: u16 },
    #[error("invalid flatbuffer payload: {reason}")]
    InvalidPayload { reason: String },
    #[error("a batch must hold at least one record")]
    Empty,
    #[error("batch holds {count} records, the limit is {max}")]
    TooManyRecords { count: usize, max: u32 },
    #[error("header says {header} records, payload holds {actual}")]
    RecordCountMismatch { header: u32, actual: usize },
    #[error("record {index} has offset delta {found}, offsets must be dense")]
    OffsetDeltaGap { index: usize, found: u32 },
    #[error("header last offset delta {header} does not match the last record ({actual})")]
    LastOffsetDeltaMismatch { header: u32, actual: u32 },
    #[error("the first record's timestamp delta is {delta_ms}, it must be 0")]
    FirstTimestampDelta { delta_ms: i64 },
    #[error("header max timestamp {header} does not match the records' maximum {actual}")]
    MaxTimestampMismatch { header: i64, actual: i64 },
}

/// Per-call limits for validation (topics may configure a smaller frame cap).
#[derive(Debug, Clone, Copy)]
pub struct FrameLimits {
    pub frame_bytes_max: usize,
    pub records_max: u32,
}

impl Default for FrameLimits {
    fn default() -> Self {
        FrameLimits {
            frame_bytes_max: FRAME_BYTES_MAX,
            records_max: FRAME_RECORDS_MAX,
        }
    }
}

/// What validation learned about a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameSummary {
    pub frame_len: usize,
    pub record_count: u32,
    pub first_timestamp_ms: i64,
    pub max_timestamp_ms: i64,
}

/// Two-pass framing, first pass: the length of the frame at the start of
/// `buf`, or `Ok(None)` when fewer than a header's bytes have arrived.
/// Checks magic, version, reserved bytes and size bounds only.
pub fn peek_frame_len(buf: &[u8], frame_bytes_max: usize) -> Result<Option<usize>, FrameError> {
    let Some(header) = FrameHeader::ref_from(buf) else {
        return Ok(None);
    };
    check_header_shape(header, frame_bytes_max)?;
    Ok(Some(header.frame_len()))
}

fn check_header_shape(header: &FrameHeader, frame_bytes_max: usize) -> Result<(), FrameError> {
    if header.magic.get() != FRAME_MAGIC {
        return Err(FrameError::BadMagic {
            found: header.magic.get(),
        });
    }
    if header.version != FRAME_VERSION {
        return Err(FrameError::UnsupportedVersion {
            found: header.version,
        });
    }
    if header.reserved0 != 0 || header.reserved1.get() != 0 {
        return Err(FrameError::ReservedNonZero);
    }
    let len = header.frame_len();
    if len < FRAME_HEADER_BYTES {
        return Err(FrameError::TooShort { len_bytes: len });
    }
    let max = frame_bytes_max.min(FRAME_BYTES_MAX);
    if len > max {
        return Err(FrameError::TooLarge {
            len_bytes: len,
            max_bytes: max,
        });
    }
    Ok(())
}

/// Cheap checks for a frame read back from our own storage: shape, exact
/// length, header and payload checksums. Frames only reach storage after
/// [`validate_incoming`], so matching checksums prove the payload is the one
/// that was validated. Used by recovery and by the read path.
pub fn verify_stored(buf: &[u8]) -> Result<&FrameHeader, FrameError> {
    let header = verify_header(buf)?;
    let computed = crc32c::crc32c(&buf[FRAME_HEADER_BYTES..]);
    if computed != header.payload_crc.get() {
        return Err(FrameError::PayloadChecksum {
            stored: header.payload_crc.get(),
            computed,
        });
    }
    Ok(header)
}

/// [`verify_stored`] without the payload checksum: shape, exact length,
/// header checksum and a record count that agrees with itself. Cheap (68
/// bytes of crc32c), so a server can trust a produced frame's header fields
/// (its producer id and sequence) before [`validate_incoming`] runs at the
/// append.
pub fn verify_header(buf: &[u8]) -> Result<&FrameHeader, FrameError> {
    let header = header_of_exact_frame(buf)?;
    let computed = header.compute_header_crc();
    if computed != header.header_crc.get() {
        return Err(FrameError::HeaderChecksum {
            stored: header.header_crc.get(),
            computed,
        });
    }
    // Header self-consistency: the offset span a reader trusts (base to
    // last offset) must be what the record count says, within the limits.
    let count = header.record_count.get();
    if header.is_compacted() {
        // A cleaned frame: at most one record per offset of its span.
        if count > FRAME_RECORDS_MAX {
            return Err(FrameError::TooManyRecords {
                count: count as usize,
                max: FRAME_RECORDS_MAX,
            });
        }
        if u64::from(count) > u64::from(header.last_offset_delta.get()) + 1 {
            return Err(FrameError::LastOffsetDeltaMismatch {
                header: header.last_offset_delta.get(),
                actual: count.saturating_sub(1),
            });
        }
        return Ok(header);
    }
    if count == 0 {
        return Err(FrameError::Empty);
    }
    if count > FRAME_RECORDS_MAX {
        return Err(FrameError::TooManyRecords {
            count: count as usize,
            max: FRAME_RECORDS_MAX,
        });
    }
    if header.last_offset_delta.get() != count - 1 {
        return Err(FrameError::LastOffsetDeltaMismatch {
            header: header.last_offset_delta.get(),
            actual: count - 1,
        });
    }
    Ok(header)
}

/// The header of `buf`, if its shape is valid and `buf` is exactly the
/// frame it announces.
fn header_of_exact_frame(buf: &[u8]) -> Result<&FrameHeader, FrameError> {
    let header = FrameHeader::ref_from(buf).ok_or(FrameError::TooShort {
        len_bytes: buf.len(),
    })?;
    check_header_shape(header, FRAME_BYTES_MAX)?;
    if header.frame_len() != buf.len() {
        return Err(FrameError::LengthMismatch {
            header_len: header.frame_len(),
            actual_len: buf.len(),
        });
    }
    Ok(header)
}

fn verifier_options(frame_len: usize) -> flatbuffers::VerifierOptions {
    flatbuffers::VerifierOptions {
        max_depth: 8,
        // Each record is one table plus one per header: bounded by the bytes.
        max_tables: frame_len / 4 + 16,
        max_apparent_size: frame_len.saturating_mul(2).max(1 << 16),
        ignore_missing_null_terminator: false,
    }
}

/// Full validation of a frame arriving from a producer: everything
/// [`verify_stored`] checks, plus the FlatBuffers verifier, record count,
/// dense offset deltas and timestamps. Only uncompressed frames are accepted
/// in format version 1.
pub fn validate_incoming(buf: &[u8], limits: &FrameLimits) -> Result<FrameSummary, FrameError> {
    let header = FrameHeader::ref_from(buf).ok_or(FrameError::TooShort {
        len_bytes: buf.len(),
    })?;
    check_header_shape(header, limits.frame_bytes_max)?;
    let header = verify_stored(buf)?;
    let attributes = header.attributes.get();
    if attributes & !ATTRIBUTES_KNOWN_MASK != 0 || header.compression() != Some(Compression::None) {
        return Err(FrameError::UnsupportedAttributes { attributes });
    }
    // Transaction bits: control needs transactional, commit needs control,
    // and both need a producer id.
    let txn = attributes & ATTR_TRANSACTIONAL != 0;
    let control = attributes & ATTR_CONTROL != 0;
    let commit = attributes & ATTR_COMMIT != 0;
    if (control && !txn) || (commit && !control) || (txn && header.producer_id.get() < 0) {
        return Err(FrameError::UnsupportedAttributes { attributes });
    }
    let payload = &buf[FRAME_HEADER_BYTES..];
    let opts = verifier_options(buf.len());
    let batch = fb::root_as_record_batch_with_opts(&opts, payload).map_err(|e| {
        FrameError::InvalidPayload {
            reason: e.to_string(),
        }
    })?;
    let records = batch.records().ok_or(FrameError::Empty)?;
    let count = records.len();
    if count == 0 {
        return Err(FrameError::Empty);
    }
    if count > limits.records_max as usize {
        return Err(FrameError::TooManyRecords {
            count,
            max: limits.records_max,
        });
    }
    if count != header.record_count.get() as usize {
        return Err(FrameError::RecordCountMismatch {
            header: header.record_count.get(),
            actual: count,
        });
    }
    let mut max_delta_ms = 0i64;
    for (index, record) in records.iter().enumerate() {
        let delta = record.offset_delta();
        if delta as usize != index {
            return Err(FrameError::OffsetDeltaGap {
                index,
                found: delta,
            });
        }
        let ts_delta = record.timestamp_delta_ms();
        if index == 0 {
            if ts_delta != 0 {
                return Err(FrameError::FirstTimestampDelta { delta_ms: ts_delta });
            }
        } else {
            max_delta_ms = max_delta_ms.max(ts_delta);
        }
    }
    let last = (count - 1) as u32;
    if header.last_offset_delta.get() != last {
        return Err(FrameError::LastOffsetDeltaMismatch {
            header: header.last_offset_delta.get(),
            actual: last,
        });
    }
    let first_ts = header.first_timestamp_ms.get();
    let actual_max = first_ts.saturating_add(max_delta_ms);
    if header.max_timestamp_ms.get() != actual_max {
        return Err(FrameError::MaxTimestampMismatch {
            header: header.max_timestamp_ms.get(),
            actual: actual_max,
        });
    }
    Ok(FrameSummary {
        frame_len: buf.len(),
        record_count: count as u32,
        first_timestamp_ms: first_ts,
        max_timestamp_ms: header.max_timestamp_ms.get(),
    })
}

/// Sets `base_offset` in a frame's header and recomputes the header checksum.
/// The payload and its checksum are untouched.
///
/// Panics if `buf` is shorter than a header (a programmer error: callers stamp
/// only validated frames).
pub fn stamp_base_offset(buf: &mut [u8], base_offset: u64) {
    let (header, _) = FrameHeader::mut_from_prefix(buf).expect("stamping a validated frame");
    header.base_offset = U64::new(base_offset);
    let crc = header.compute_header_crc();
    header.header_crc = U32::new(crc);
}

/// Sets a finished frame's idempotence fields (producer id, epoch, base
/// sequence) and recomputes the header checksum; the payload and its
/// checksum are untouched. An idempotent producer stamps a batch when it
/// first sends it and again only after an epoch bump (a resend carries the
/// same bytes). `(-1, -1, -1)` marks a frame as not idempotent.
///
/// Panics if `buf` is shorter than a header (a programmer error: callers
/// stamp frames they built).
pub fn stamp_producer(buf: &mut [u8], producer_id: i64, producer_epoch: i16, base_sequence: i32) {
    let (header, _) = FrameHeader::mut_from_prefix(buf).expect("stamping a built frame");
    header.producer_id = I64::new(producer_id);
    header.producer_epoch = I16::new(producer_epoch);
    header.base_sequence = I32::new(base_sequence);
    let crc = header.compute_header_crc();
    header.header_crc = U32::new(crc);
}

/// The header fields of a frame the log cleaner writes
/// ([`build_compacted_frame`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactedHeader {
    pub base_offset: u64,
    /// The span of the original batch (or of the removed batches a gap
    /// frame covers), unchanged: `next_offset` stays what it was.
    pub last_offset_delta: u32,
    pub first_timestamp_ms: i64,
    pub max_timestamp_ms: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub leader_epoch: u32,
    /// Attributes of the original (compression bits, control bit); the
    /// compacted bit is added.
    pub attributes: u16,
}

impl CompactedHeader {
    /// The fields of an existing frame, to rewrite it with fewer records.
    pub fn of(h: &FrameHeader) -> CompactedHeader {
        CompactedHeader {
            base_offset: h.base_offset(),
            last_offset_delta: h.last_offset_delta.get(),
            first_timestamp_ms: h.first_timestamp_ms.get(),
            max_timestamp_ms: h.max_timestamp_ms.get(),
            producer_id: h.producer_id.get(),
            producer_epoch: h.producer_epoch.get(),
            base_sequence: h.base_sequence.get(),
            leader_epoch: h.leader_epoch.get(),
            attributes: h.attributes.get(),
        }
    }
}

/// Builds a compacted frame (attribute bit 3) holding `records` at their
/// own offsets, appended to `out`; returns its length. Each record keeps
/// its offset (`offset_delta = offset - base_offset`), timestamp, key,
/// value and headers. Both checksums are computed, so the frame passes
/// [`verify_stored`] like any stored frame.
///
/// Panics (programmer errors) if a record lies outside the span, records
/// are not in increasing offset order, or there are more than
/// [`FRAME_RECORDS_MAX`].
pub fn build_compacted_frame(
    h: &CompactedHeader,
    records: &[RecordView<'_>],
    out: &mut Vec<u8>,
) -> usize {
    assert!(records.len() <= FRAME_RECORDS_MAX as usize);
    let mut fbb = flatbuffers::FlatBufferBuilder::with_capacity(256);
    let mut recs = Vec::with_capacity(records.len());
    let mut prev: Option<u64> = None;
    for r in records {
        assert!(r.offset >= h.base_offset, "record below the frame's base");
        let delta = r.offset - h.base_offset;
        assert!(
            delta <= u64::from(h.last_offset_delta),
            "record past the frame's span"
        );
        assert!(prev.is_none_or(|p| p < r.offset), "records out of order");
        prev = Some(r.offset);
        let key = r.key.map(|k| fbb.create_vector(k));
        let value = r.value.map(|v| fbb.create_vector(v));
        let hs: Vec<_> = r
            .headers()
            .map(|(k, v)| {
                let key = fbb.create_string(k);
                let value = fbb.create_vector(v);
                fb::RecordHeader::create(
                    &mut fbb,
                    &fb::RecordHeaderArgs {
                        key: Some(key),
                        value: Some(value),
                    },
                )
            })
            .collect();
        let headers = if hs.is_empty() {
            None
        } else {
            Some(fbb.create_vector(&hs))
        };
        recs.push(fb::Record::create(
            &mut fbb,
            &fb::RecordArgs {
                offset_delta: delta as u32,
                timestamp_delta_ms: r.timestamp_ms.saturating_sub(h.first_timestamp_ms),
                key,
                value,
                headers,
            },
        ));
    }
    let records_vec = fbb.create_vector(&recs);
    let batch = fb::RecordBatch::create(
        &mut fbb,
        &fb::RecordBatchArgs {
            records: Some(records_vec),
        },
    );
    fbb.finish(batch, None);
    let payload = fbb.finished_data();
    let frame_len = FRAME_HEADER_BYTES + payload.len();
    let mut header = FrameHeader {
        magic: U32::new(FRAME_MAGIC),
        version: FRAME_VERSION,
        reserved0: 0,
        attributes: U16::new(h.attributes | ATTRIBUTE_COMPACTED),
        frame_len: U32::new(frame_len as u32),
        payload_crc: U32::new(crc32c::crc32c(payload)),
        base_offset: U64::new(h.base_offset),
        record_count: U32::new(records.len() as u32),
        last_offset_delta: U32::new(h.last_offset_delta),
        first_timestamp_ms: I64::new(h.first_timestamp_ms),
        max_timestamp_ms: I64::new(h.max_timestamp_ms),
        producer_id: I64::new(h.producer_id),
        base_sequence: I32::new(h.base_sequence),
        producer_epoch: I16::new(h.producer_epoch),
        reserved1: U16::new(0),
        leader_epoch: U32::new(h.leader_epoch),
        header_crc: U32::new(0),
    };
    header.header_crc = U32::new(header.compute_header_crc());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(payload);
    frame_len
}

/// One record as a producer hands it to [`BatchBuilder`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordIn<'a> {
    pub timestamp_ms: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: &'a [(&'a str, &'a [u8])],
}

/// Builds producer frames. Reusable: `finish` resets it.
pub struct BatchBuilder {
    fbb: flatbuffers::FlatBufferBuilder<'static>,
    records: Vec<flatbuffers::WIPOffset<fb::Record<'static>>>,
    first_timestamp_ms: Option<i64>,
    max_timestamp_ms: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    attributes: u16,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchBuilder {
    pub fn new() -> Self {
        BatchBuilder {
            fbb: flatbuffers::FlatBufferBuilder::with_capacity(1024),
            records: Vec::new(),
            first_timestamp_ms: None,
            max_timestamp_ms: i64::MIN,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            attributes: Compression::None as u16,
        }
    }

    /// Transaction bits for the frames built from now on: `ATTR_TRANSACTIONAL`,
    /// `ATTR_CONTROL`, `ATTR_COMMIT` or 0 (the default). Panics on other bits.
    pub fn set_txn_attributes(&mut self, bits: u16) {
        assert_eq!(
            bits & !(ATTR_TRANSACTIONAL | ATTR_CONTROL | ATTR_COMMIT),
            0,
            "only transaction bits"
        );
        self.attributes = Compression::None as u16 | bits;
    }

    /// Idempotence fields; the Kafka edge copies a batch's producer id,
    /// epoch and base sequence here.
    pub fn set_producer(&mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Bytes the payload has taken so far (an estimate of the frame size).
    pub fn estimated_bytes(&self) -> usize {
        FRAME_HEADER_BYTES + self.fbb.unfinished_data().len() + 4 * self.records.len() + 16
    }

    /// Adds a record. The first record's timestamp becomes the batch's first
    /// timestamp; later records may be earlier (negative deltas), as in Kafka.
    pub fn push(&mut self, record: &RecordIn<'_>) {
        let first = *self.first_timestamp_ms.get_or_insert(record.timestamp_ms);
        let ts = record.timestamp_ms;
        self.max_timestamp_ms = self.max_timestamp_ms.max(ts);
        let key = record.key.map(|k| self.fbb.create_vector(k));
        let value = record.value.map(|v| self.fbb.create_vector(v));
        let headers = if record.headers.is_empty() {
            None
        } else {
            let hs: Vec<_> = record
                .headers
                .iter()
                .map(|(k, v)| {
                    let key = self.fbb.create_string(k);
                    let value = self.fbb.create_vector(v);
                    fb::RecordHeader::create(
                        &mut self.fbb,
                        &fb::RecordHeaderArgs {
                            key: Some(key),
                            value: Some(value),
                        },
                    )
                })
                .collect();
            Some(self.fbb.create_vector(&hs))
        };
        let offset_delta = self.records.len() as u32;
        let rec = fb::Record::create(
            &mut self.fbb,
            &fb::RecordArgs {
                offset_delta,
                timestamp_delta_ms: ts.saturating_sub(first),
                key,
                value,
                headers,
            },
        );
        self.records.push(rec);
    }

    /// Finishes the frame into `out` (appended), resets the builder, and
    /// returns the frame's length. Panics if no record was pushed.
    pub fn finish_into(&mut self, out: &mut Vec<u8>) -> usize {
        assert!(!self.records.is_empty(), "finish of an empty batch");
        let records = self.fbb.create_vector(&self.records);
        let batch = fb::RecordBatch::create(
            &mut self.fbb,
            &fb::RecordBatchArgs {
                records: Some(records),
            },
        );
        self.fbb.finish(batch, None);
        let payload = self.fbb.finished_data();
        let frame_len = FRAME_HEADER_BYTES + payload.len();
        let count = self.records.len() as u32;
        let first_ts = self.first_timestamp_ms.unwrap_or(0);
        let mut header = FrameHeader {
            magic: U32::new(FRAME_MAGIC),
            version: FRAME_VERSION,
            reserved0: 0,
            attributes: U16::new(self.attributes),
            frame_len: U32::new(frame_len as u32),
            payload_crc: U32::new(crc32c::crc32c(payload)),
            base_offset: U64::new(0),
            record_count: U32::new(count),
            last_offset_delta: U32::new(count - 1),
            first_timestamp_ms: I64::new(first_ts),
            max_timestamp_ms: I64::new(self.max_timestamp_ms),
            producer_id: I64::new(self.producer_id),
            base_sequence: I32::new(self.base_sequence),
            producer_epoch: I16::new(self.producer_epoch),
            reserved1: U16::new(0),
            leader_epoch: U32::new(0),
            header_crc: U32::new(0),
        };
        header.header_crc = U32::new(header.compute_header_crc());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(payload);
        self.fbb.reset();
        self.records.clear();
        self.first_timestamp_ms = None;
        self.max_timestamp_ms = i64::MIN;
        frame_len
    }

    /// Finishes the frame into a new buffer.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        self.finish_into(&mut out);
        out
    }
}

/// One record read from a frame, borrowing the frame's bytes (zero-copy).
#[derive(Debug, Clone, Copy)]
pub struct RecordView<'a> {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    record: fb::Record<'a>,
}

impl<'a> RecordView<'a> {
    /// The record's headers as (key, value) pairs; a header with a missing
    /// key reads as the empty string.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        self.record.headers().into_iter().flatten().map(|h| {
            (
                h.key().unwrap_or(""),
                h.value().map(|v| v.bytes()).unwrap_or(&[]),
            )
        })
    }
}

/// Iterates the records of a frame that has passed [`verify_stored`] (as
/// every frame returned by the engine or a fetch response has, after the
/// client's own check). Re-runs the FlatBuffers verifier, so a frame from an
/// untrusted source cannot make it panic.
pub fn records(frame: &[u8]) -> Result<impl Iterator<Item = RecordView<'_>> + '_, FrameError> {
    let header = verify_stored(frame)?;
    records_of(frame, header)
}

/// [`records`] for a frame the engine served: every such frame passed
/// [`verify_stored`] when it was read from disk or validated on produce, so
/// the payload checksum is not computed a second time. The header shape and
/// length are checked and the FlatBuffers verifier runs, so a frame that did
/// not come from the engine still cannot make it panic; it can only read
/// records that a checksum would have refused.
pub fn records_served(
    frame: &[u8],
) -> Result<impl Iterator<Item = RecordView<'_>> + '_, FrameError> {
    let header = header_of_exact_frame(frame)?;
    records_of(frame, header)
}

fn records_of<'a>(
    frame: &'a [u8],
    header: &'a FrameHeader,
) -> Result<impl Iterator<Item = RecordView<'a>> + 'a, FrameError> {
    let base = header.base_offset();
    let first_ts = header.first_timestamp_ms.get();
    let opts = verifier_options(frame.len());
    let batch =
        fb::root_as_record_batch_with_opts(&opts, &frame[FRAME_HEADER_BYTES..]).map_err(|e| {
            FrameError::InvalidPayload {
                reason: e.to_string(),
            }
        })?;
    let records = batch.records().ok_or(FrameError::Empty)?;
    Ok(records.iter().map(move |r| RecordView {
        offset: base.saturating_add(u64::from(r.offset_delta())),
        timestamp_ms: first_ts.saturating_add(r.timestamp_delta_ms()),
        key: r.key().map(|k| k.bytes()),
        value: r.value().map(|v| v.bytes()),
        record: r,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cleaned frame keeps its span and its records' offsets, passes
    /// `verify_stored`, and a producer cannot send one.
    #[test]
    fn compacted_frames_keep_offsets_and_verify() {
        let mut f = sample(5);
        stamp_base_offset(&mut f, 100);
        let h = *FrameHeader::ref_from(&f).unwrap();
        let kept: Vec<_> = records(&f).unwrap().filter(|r| r.offset % 2 == 1).collect();
        let mut out = Vec::new();
        let n = build_compacted_frame(&CompactedHeader::of(&h), &kept, &mut out);
        assert_eq!(n, out.len());
        let c = verify_stored(&out).unwrap();
        assert!(c.is_compacted());
        assert_eq!((c.base_offset(), c.next_offset()), (100, 105));
        assert_eq!(c.record_count.get(), 2);
        let got: Vec<_> = records(&out)
            .unwrap()
            .map(|r| (r.offset, r.key, r.value, r.timestamp_ms))
            .collect();
        let want: Vec<_> = kept
            .iter()
            .map(|r| (r.offset, r.key, r.value, r.timestamp_ms))
            .collect();
        assert_eq!(got, want);
        assert_eq!(
            records(&out)
                .unwrap()
                .next()
                .unwrap()
                .headers()
                .collect::<Vec<_>>(),
            vec![("h", &b"x"[..])]
        );
        // An empty one: covers offsets, holds nothing.
        let mut gap = Vec::new();
        build_compacted_frame(&CompactedHeader::of(&h), &[], &mut gap);
        let g = verify_stored(&gap).unwrap();
        assert_eq!((g.record_count.get(), g.next_offset()), (0, 105));
        assert_eq!(records(&gap).unwrap().count(), 0);
        assert!(matches!(
            validate_incoming(&out, &FrameLimits::default()),
            Err(FrameError::UnsupportedAttributes { .. })
        ));
        // More records than the span can hold is refused.
        let mut bad = out.clone();
        {
            let (hh, _) = FrameHeader::mut_from_prefix(&mut bad[..]).unwrap();
            hh.record_count = U32::new(6);
            hh.header_crc = U32::new(hh.compute_header_crc());
        }
        assert!(verify_stored(&bad).is_err());
    }

    fn sample(n: usize) -> Vec<u8> {
        let mut b = BatchBuilder::new();
        for i in 0..n {
            let v = format!("value-{i}");
            let k = format!("key-{i}");
            b.push(&RecordIn {
                timestamp_ms: 1_000 + i as i64,
                key: Some(k.as_bytes()),
                value: Some(v.as_bytes()),
                headers: &[("h", b"x")],
            });
        }
        b.finish()
    }

    /// Stamping the producer fields keeps the frame valid and changes only
    /// those fields and the header checksum; a damaged header is caught by
    /// `verify_header` without reading the payload checksum.
    #[test]
    fn stamped_producer_fields_keep_the_frame_valid() {
        let plain = sample(3);
        let mut f = plain.clone();
        stamp_producer(&mut f, 1 << 40, 7, 123);
        let h = validate_incoming(&f, &FrameLimits::default()).expect("still valid");
        assert_eq!(h.record_count, 3);
        let h = verify_header(&f).expect("header");
        assert_eq!(h.producer_id.get(), 1 << 40);
        assert_eq!(h.producer_epoch.get(), 7);
        assert_eq!(h.base_sequence.get(), 123);
        assert_eq!(&f[FRAME_HEADER_BYTES..], &plain[FRAME_HEADER_BYTES..]);
        let changed: Vec<usize> = (0..FRAME_HEADER_BYTES)
            .filter(|&i| f[i] != plain[i])
            .collect();
        assert!(
            changed.iter().all(|&i| (48..64).contains(&i) || i >= 68),
            "only bytes 48..64 and the header crc change: {changed:?}"
        );
        stamp_producer(&mut f, -1, -1, -1);
        assert_eq!(f, plain, "stamping back restores the plain frame");
        let mut bad = f.clone();
        bad[56] ^= 1;
        assert!(matches!(
            verify_header(&bad),
            Err(FrameError::HeaderChecksum { .. })
        ));
        let mut payload_damaged = f.clone();
        let last = payload_damaged.len() - 1;
        payload_damaged[last] ^= 1;
        assert!(verify_header(&payload_damaged).is_ok());
        assert!(verify_stored(&payload_damaged).is_err());
    }

    /// `records_served` reads what `records` reads from a good frame, skips
    /// only the payload checksum, and never panics on a damaged payload.
    #[test]
    fn served_records_skip_the_checksum_but_not_the_verifier() {
        let frame = sample(20);
        let a: Vec<_> = records(&frame)
            .expect("records")
            .map(|r| (r.offset, r.key, r.value))
            .collect();
        let b: Vec<_> = records_served(&frame)
            .expect("served")
            .map(|r| (r.offset, r.key, r.value))
            .collect();
        assert_eq!(a, b);
        let mut damaged = frame.clone();
        let n = damaged.len();
        damaged[n - 5] ^= 0x5a;
        assert!(records(&damaged).is_err(), "the checksum catches it");
        for i in FRAME_HEADER_BYTES..n {
            let mut d = frame.clone();
            d[i] = d[i].wrapping_add(0x81);
            let headers: usize = match records_served(&d) {
                Ok(it) => it.map(|r| r.headers().count()).sum(),
                Err(_) => 0,
            };
            assert!(headers <= n, "bounded by the bytes");
        }
        assert!(
            records_served(&frame[..n - 1]).is_err(),
            "length is checked"
        );
    }

    #[test]
    fn built_frame_validates_and_reads_back() {
        let frame = sample(10);
        let s = validate_incoming(&frame, &FrameLimits::default()).expect("valid");
        assert_eq!(s.record_count, 10);
        assert_eq!(s.first_timestamp_ms, 1_000);
        assert_eq!(s.max_timestamp_ms, 1_009);
        let recs: Vec<_> = records(&frame).expect("records").collect();
        assert_eq!(recs.len(), 10);
        assert_eq!(recs[3].offset, 3);
        assert_eq!(recs[3].key, Some(&b"key-3"[..]));
        assert_eq!(recs[3].value, Some(&b"value-3"[..]));
        assert_eq!(recs[3].timestamp_ms, 1_003);
        let hs: Vec<_> = recs[3].headers().collect();
        assert_eq!(hs, vec![("h", &b"x"[..])]);
    }

    #[test]
    fn stamping_changes_offsets_and_keeps_frame_valid() {
        let mut frame = sample(3);
        stamp_base_offset(&mut frame, 1_000_000);
        verify_stored(&frame).expect("still valid");
        let offs: Vec<u64> = records(&frame).expect("ok").map(|r| r.offset).collect();
        assert_eq!(offs, vec![1_000_000, 1_000_001, 1_000_002]);
        let h = FrameHeader::ref_from(&frame).expect("header");
        assert_eq!(h.next_offset(), 1_000_003);
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let frame = sample(2);
        for byte in 0..frame.len() {
            for bit in 0..8 {
                let mut f = frame.clone();
                f[byte] ^= 1 << bit;
                assert!(
                    validate_incoming(&f, &FrameLimits::default()).is_err(),
                    "flip at byte {byte} bit {bit} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn truncations_are_rejected_and_incomplete_is_not_an_error() {
        let frame = sample(4);
        for len in 0..frame.len() {
            assert!(validate_incoming(&frame[..len], &FrameLimits::default()).is_err());
        }
        assert_eq!(peek_frame_len(&frame[..10], FRAME_BYTES_MAX), Ok(None));
        assert_eq!(
            peek_frame_len(&frame[..FRAME_HEADER_BYTES], FRAME_BYTES_MAX),
            Ok(Some(frame.len()))
        );
    }

    #[test]
    fn limits_are_enforced() {
        let frame = sample(5);
        let small = FrameLimits {
            frame_bytes_max: frame.len() - 1,
            records_max: 100,
        };
        assert!(matches!(
            validate_incoming(&frame, &small),
            Err(FrameError::TooLarge { .. })
        ));
        let few = FrameLimits {
            frame_bytes_max: FRAME_BYTES_MAX,
            records_max: 4,
        };
        assert!(matches!(
            validate_incoming(&frame, &few),
            Err(FrameError::TooManyRecords { count: 5, max: 4 })
        ));
    }

    /// A well-checksummed frame whose header lies about its records must be
    /// refused: checksums alone do not make a frame valid.
    #[test]
    fn consistent_checksums_with_lying_header_are_rejected() {
        let mut frame = sample(3);
        {
            let (h, _) = FrameHeader::mut_from_prefix(&mut frame[..]).expect("header");
            h.record_count = U32::new(4);
            h.last_offset_delta = U32::new(3);
            h.header_crc = U32::new(h.compute_header_crc());
        }
        assert!(matches!(
            validate_incoming(&frame, &FrameLimits::default()),
            Err(FrameError::RecordCountMismatch { .. })
        ));
    }

    #[test]
    fn null_and_empty_keys_are_distinct() {
        let mut b = BatchBuilder::new();
        b.push(&RecordIn {
            timestamp_ms: 5,
            key: None,
            value: Some(b""),
            headers: &[],
        });
        b.push(&RecordIn {
            timestamp_ms: 5,
            key: Some(b""),
            value: None,
            headers: &[],
        });
        let f = b.finish();
        let r: Vec<_> = records(&f).expect("ok").collect();
        assert_eq!(r[0].key, None);
        assert_eq!(r[0].value, Some(&b""[..]));
        assert_eq!(r[1].key, Some(&b""[..]));
        assert_eq!(r[1].value, None);
    }
}
