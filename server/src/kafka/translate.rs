//! Translation between Kafka record batches and Strom frames, at the edge.
//!
//! Produce: every Kafka record batch v2 (uncompressed, gzip, snappy, lz4 or
//! zstd; decoded and decompressed by the `kafka-protocol` crate) becomes one
//! Strom frame built with [`BatchBuilder`]: keys, values, header keys and
//! values and timestamps byte for byte; producer id, epoch and base sequence
//! into the frame header. One Kafka batch, one frame, so a batch's offsets
//! are the frame's.
//!
//! Fetch: every stored frame becomes one uncompressed Kafka record batch v2
//! with the frame's base offset, record offsets, timestamps and producer
//! fields; a consumer of either protocol reads every record whoever wrote it.
//! This direction is written by hand ([`frames_to_kafka`], one pass, no
//! per-record objects) and checked byte for byte against the crate's
//! encoder: it is the Kafka fetch path's cost.
//!
//! Known losses: on produce, through the crate's `Record` (headers are an
//! `IndexMap`), a Kafka record with two headers of the same key keeps the
//! last; a header with a null value reads back with an empty value.
//!
//! I/O-free.

use super::codec;
use crate::producers::ProducerBatch;
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::records::{RecordBatchDecoder, RecordCompression};
use strom_flatbuffers::frame::FRAME_RECORDS_MAX;
use strom_flatbuffers::frame::{records_served, BatchBuilder, FrameHeader, RecordIn, RecordView};

/// One Kafka batch, translated.
pub struct Translated {
    pub frame: BytesMut,
    pub producer: Option<ProducerBatch>,
}

/// Why a produce batch was refused: a Kafka error code and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub code: i16,
    pub message: String,
}

fn refused(code: i16, message: impl Into<String>) -> Refused {
    Refused {
        code,
        message: message.into(),
    }
}

/// Decodes every batch in a partition's `records` bytes into Strom frames.
pub fn kafka_to_frames(
    mut records: Bytes,
    frame_bytes_max: usize,
) -> Result<Vec<Translated>, Refused> {
    let mut out = Vec::new();
    let mut builder = BatchBuilder::new();
    while !records.is_empty() {
        // magic is byte 16 of a batch; refuse the old message formats.
        if records.len() < 17 {
            return Err(refused(codec::CORRUPT_MESSAGE, "truncated record batch"));
        }
        if records[16] != 2 {
            return Err(refused(
                codec::UNSUPPORTED_FOR_MESSAGE_FORMAT,
                format!("record batch magic {}: only v2 is accepted", records[16]),
            ));
        }
        let set = RecordBatchDecoder::decode_with_custom_compression(
            &mut records,
            Some(super::decompress::decompress),
        )
        .map_err(|e| refused(codec::CORRUPT_MESSAGE, format!("record batch: {e}")))?;
        debug_assert!(matches!(set.compression, RecordCompression::RecordBatch(_)));
        let Some(first) = set.records.first() else {
            return Err(refused(codec::INVALID_RECORD, "empty record batch"));
        };
        if first.control {
            return Err(refused(
                codec::INVALID_RECORD,
                "control batches are written by the transaction coordinator only",
            ));
        }
        if set.records.len() > FRAME_RECORDS_MAX as usize {
            return Err(refused(
                codec::MESSAGE_TOO_LARGE,
                format!("{} records in one batch", set.records.len()),
            ));
        }
        // The same reading of the fields as the native edge's: -1 is a
        // producer that is not idempotent; an idempotent batch with a
        // negative epoch or sequence is refused; sequences wrap at 2^31.
        let producer = ProducerBatch::from_fields(
            first.producer_id,
            first.producer_epoch,
            first.sequence,
            set.records.len() as u32,
        )
        .map_err(|m| refused(codec::INVALID_RECORD, m))?;
        match producer {
            Some(p) => builder.set_producer(p.producer_id, p.epoch, p.first_seq),
            None if first.transactional => {
                return Err(refused(
                    codec::INVALID_RECORD,
                    "a transactional batch without a producer id",
                ))
            }
            None => builder.set_producer(-1, -1, -1),
        }
        builder.set_txn_attributes(if first.transactional {
            strom_flatbuffers::frame::ATTR_TRANSACTIONAL
        } else {
            0
        });
        let mut headers: Vec<(&str, &[u8])> = Vec::new();
        for r in &set.records {
            headers.clear();
            for (k, v) in &r.headers {
                headers.push((k.as_str(), v.as_deref().unwrap_or(&[])));
            }
            builder.push(&RecordIn {
                timestamp_ms: r.timestamp,
                key: r.key.as_deref(),
                value: r.value.as_deref(),
                headers: &headers,
            });
        }
        if builder.estimated_bytes() > frame_bytes_max.saturating_add(1 << 16) {
            return Err(refused(codec::MESSAGE_TOO_LARGE, "record batch too large"));
        }
        let mut frame = Vec::with_capacity(builder.estimated_bytes());
        let len = builder.finish_into(&mut frame);
        if len > frame_bytes_max {
            return Err(refused(
                codec::MESSAGE_TOO_LARGE,
                format!("batch of {len} bytes, the limit is {frame_bytes_max}"),
            ));
        }
        out.push(Translated {
            frame: BytesMut::from(&frame[..]),
            producer,
        });
    }
    Ok(out)
}

/// Appends one uncompressed Kafka record batch v2 per stored frame to `out`,
/// written directly from the frame's records (no per-record objects): the
/// bytes are those `kafka-protocol`'s `RecordBatchEncoder` writes for the
/// same records (`the_direct_encoder_writes_what_kafka_protocol_writes`),
/// and a fetch costs one pass over the frame.
pub fn frames_to_kafka(frames: &[Bytes], out: &mut BytesMut) -> Result<(), String> {
    // A Kafka batch is about as long as the frame it comes from (a 61-byte
    // header and a few bytes per record against the frame's FlatBuffers
    // tables): reserve once rather than regrow and copy.
    let frame_bytes: usize = frames
        .iter()
        .map(|f| f.len() + KAFKA_BATCH_SLACK_BYTES)
        .sum();
    out.reserve(frame_bytes);
    let mut recs: Vec<RecordView<'_>> = Vec::new();
    for frame in frames {
        encode_frame(frame, &mut recs, out)?;
    }
    Ok(())
}

/// Size of a zigzag varint (Kafka's `varint` / `varlong`).
fn varint_len(v: i64) -> usize {
    let z = ((v << 1) ^ (v >> 63)) as u64;
    (64 - (z | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(out: &mut BytesMut, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.put_u8((z as u8) | 0x80);
        z >>= 7;
    }
    out.put_u8(z as u8);
}

fn len_i64(n: usize) -> Result<i64, String> {
    i32::try_from(n)
        .map(i64::from)
        .map_err(|_| format!("a field of {n} bytes does not fit a Kafka record"))
}

/// Bytes of an optional byte string: its length varint (-1 for none) and
/// its bytes.
fn field_len(b: Option<&[u8]>) -> Result<usize, String> {
    Ok(match b {
        None => varint_len(-1),
        Some(b) => varint_len(len_i64(b.len())?) + b.len(),
    })
}

fn put_field(out: &mut BytesMut, b: Option<&[u8]>) {
    match b {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, b.len() as i64);
            out.put_slice(b);
        }
    }
}

/// Bytes reserved per batch beyond its frame's length.
const KAFKA_BATCH_SLACK_BYTES: usize = 128;

/// Bytes of a record batch v2's header, base offset to record count.
const BATCH_HEADER_BYTES: usize = 61;

fn encode_frame<'a>(
    frame: &'a Bytes,
    recs: &mut Vec<RecordView<'a>>,
    out: &mut BytesMut,
) -> Result<(), String> {
    let header = FrameHeader::ref_from(frame).ok_or("short frame")?;
    let base = header.base_offset();
    recs.clear();
    // Served by the engine: checksummed when read (not computed again here).
    recs.extend(records_served(frame).map_err(|e| e.to_string())?);
    let (min_offset, last_delta, min_ts, max_ts) = if header.is_compacted() {
        // A frame the log cleaner rewrote: its records are sparse (or
        // absent), and the batch keeps the frame's whole span, as Kafka's
        // cleaned batches do, so a consumer's next offset is past it (an
        // empty batch only moves the consumer on).
        let last_delta =
            i32::try_from(header.last_offset_delta.get()).map_err(|_| "offset span")?;
        let min_ts = recs
            .iter()
            .map(|r| r.timestamp_ms)
            .min()
            .unwrap_or(header.first_timestamp_ms.get());
        let max_ts = recs
            .iter()
            .map(|r| r.timestamp_ms)
            .max()
            .unwrap_or(header.max_timestamp_ms.get());
        (base, last_delta, min_ts, max_ts)
    } else {
        let (Some(min_offset), Some(max_offset)) = (
            recs.iter().map(|r| r.offset).min(),
            recs.iter().map(|r| r.offset).max(),
        ) else {
            return Err("a frame without records".to_owned());
        };
        let min_ts = recs.iter().map(|r| r.timestamp_ms).min().unwrap_or(0);
        let max_ts = recs.iter().map(|r| r.timestamp_ms).max().unwrap_or(0);
        let last_delta = i32::try_from(max_offset - min_offset).map_err(|_| "offset span")?;
        (min_offset, last_delta, min_ts, max_ts)
    };
    let base_sequence = header
        .base_sequence
        .get()
        .wrapping_add(min_offset.wrapping_sub(base) as i32);
    let count = i32::try_from(recs.len()).map_err(|_| "too many records")?;

    let batch_start = out.len();
    out.put_i64(min_offset as i64);
    out.put_i32(0); // batch length, below
    out.put_i32(0); // partition leader epoch
    out.put_i8(2); // magic
    out.put_u32(0); // crc, below
    let crc_from = out.len();
    // Attributes: no compression, creation time; Kafka's transactional
    // (bit 4) and control (bit 5) bits are the frame's own.
    out.put_i16(
        (header.attributes.get()
            & (strom_flatbuffers::frame::ATTR_TRANSACTIONAL
                | strom_flatbuffers::frame::ATTR_CONTROL)) as i16,
    );
    out.put_i32(last_delta);
    out.put_i64(min_ts);
    out.put_i64(max_ts);
    out.put_i64(header.producer_id.get());
    out.put_i16(header.producer_epoch.get());
    out.put_i32(base_sequence);
    out.put_i32(count);
    debug_assert_eq!(out.len() - batch_start, BATCH_HEADER_BYTES);
    for r in recs.iter() {
        let ts_delta = r.timestamp_ms.wrapping_sub(min_ts);
        let off_delta = (r.offset - min_offset) as i64;
        let mut headers = 0usize;
        let mut headers_len = 0usize;
        for (k, v) in r.headers() {
            headers += 1;
            headers_len += field_len(Some(k.as_bytes()))? + field_len(Some(v))?;
        }
        let body = 1
            + varint_len(ts_delta)
            + varint_len(off_delta)
            + field_len(r.key)?
            + field_len(r.value)?
            + varint_len(len_i64(headers)?)
            + headers_len;
        out.reserve(body + 5);
        put_varint(out, len_i64(body)?);
        let body_start = out.len();
        out.put_i8(0); // record attributes
        put_varint(out, ts_delta);
        put_varint(out, off_delta);
        put_field(out, r.key);
        put_field(out, r.value);
        put_varint(out, headers as i64);
        for (k, v) in r.headers() {
            put_field(out, Some(k.as_bytes()));
            put_field(out, Some(v));
        }
        debug_assert_eq!(out.len() - body_start, body);
    }
    let batch_len = i32::try_from(out.len() - batch_start - 12).map_err(|_| "batch too large")?;
    out[batch_start + 8..batch_start + 12].copy_from_slice(&batch_len.to_be_bytes());
    let crc = crc32c::crc32c(&out[crc_from..]);
    out[crc_from - 4..crc_from].copy_from_slice(&crc.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::indexmap::IndexMap;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    /// The encoder this module used before, through `kafka-protocol`'s
    /// `Record` and `RecordBatchEncoder`: the reference the direct encoder
    /// must match byte for byte.
    fn reference_frames_to_kafka(frames: &[Bytes], out: &mut BytesMut) {
        let opts = RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        };
        for frame in frames {
            let header = FrameHeader::ref_from(frame).expect("header");
            let base = header.base_offset();
            let mut recs = Vec::new();
            for r in strom_flatbuffers::frame::records(frame).expect("records") {
                let delta = r.offset.saturating_sub(base) as i32;
                let mut headers = IndexMap::new();
                for (k, v) in r.headers() {
                    headers.insert(
                        StrBytes::from_utf8(frame.slice_ref(k.as_bytes())).expect("utf8"),
                        Some(frame.slice_ref(v)),
                    );
                }
                recs.push(Record {
                    transactional: false,
                    control: false,
                    partition_leader_epoch: 0,
                    producer_id: header.producer_id.get(),
                    producer_epoch: header.producer_epoch.get(),
                    timestamp_type: TimestampType::Creation,
                    offset: r.offset as i64,
                    sequence: header.base_sequence.get().wrapping_add(delta),
                    timestamp: r.timestamp_ms,
                    key: r.key.map(|k| slice_or_empty(frame, k)),
                    value: r.value.map(|v| slice_or_empty(frame, v)),
                    headers,
                });
            }
            RecordBatchEncoder::encode(out, recs.iter(), &opts).expect("encode");
        }
    }

    /// `Bytes::slice_ref` refuses an empty slice that lies outside the buffer
    /// (FlatBuffers may hand one out for an empty vector).
    fn slice_or_empty(frame: &Bytes, s: &[u8]) -> Bytes {
        if s.is_empty() {
            Bytes::new()
        } else {
            frame.slice_ref(s)
        }
    }

    /// Frames of every shape the fetch path meets: null and empty keys and
    /// values, headers (empty values too), producer fields or none, out of
    /// order timestamps, large values (multi-byte varints), one record or
    /// many; each encoded by both encoders.
    #[test]
    fn the_direct_encoder_writes_what_kafka_protocol_writes() {
        let mut frames = Vec::new();
        for (n, value_len, producer) in [
            (1usize, 0usize, None),
            (5, 100, Some((42i64, 3i16, 10i32))),
            (300, 17, None),
            (3, 70_000, Some((7, 0, 2_147_483_000))),
        ] {
            let mut b = BatchBuilder::new();
            match producer {
                Some((id, epoch, seq)) => b.set_producer(id, epoch, seq),
                None => b.set_producer(-1, -1, -1),
            }
            let owned: Vec<(Vec<u8>, Vec<u8>)> = (0..n)
                .map(|i| {
                    (
                        format!("k{i}").into_bytes(),
                        vec![i as u8; value_len + i % 3],
                    )
                })
                .collect();
            for (i, (k, v)) in owned.iter().enumerate() {
                let headers: Vec<(&str, &[u8])> = match i % 3 {
                    0 => vec![],
                    1 => vec![("a", b"1"), ("bb", b"")],
                    _ => vec![("trace", &v[..v.len().min(40)])],
                };
                b.push(&RecordIn {
                    timestamp_ms: 1_700_000_000_000 - (i as i64 * 37) % 1000,
                    key: (i % 4 != 1).then_some(&k[..]),
                    value: (i % 5 != 2).then_some(&v[..]),
                    headers: &headers,
                });
            }
            let mut frame = BytesMut::from(&b.finish()[..]);
            strom_flatbuffers::frame::stamp_base_offset(&mut frame, 1_000_000 + n as u64);
            frames.push(frame.freeze());
        }
        for one in &frames {
            let (mut ours, mut theirs) = (BytesMut::new(), BytesMut::new());
            frames_to_kafka(std::slice::from_ref(one), &mut ours).expect("encode");
            reference_frames_to_kafka(std::slice::from_ref(one), &mut theirs);
            assert_eq!(ours, theirs);
        }
        let (mut ours, mut theirs) = (BytesMut::new(), BytesMut::new());
        frames_to_kafka(&frames, &mut ours).expect("encode");
        reference_frames_to_kafka(&frames, &mut theirs);
        assert_eq!(ours, theirs);
        let mut all = ours.freeze();
        let mut decoded = 0;
        while !all.is_empty() {
            decoded += RecordBatchDecoder::decode(&mut all)
                .expect("decode")
                .records
                .len();
        }
        assert_eq!(decoded, 1 + 5 + 300 + 3);
    }

    #[test]
    fn varint_lengths_match_the_encoding() {
        for v in [
            0i64,
            1,
            -1,
            63,
            64,
            -64,
            -65,
            8191,
            8192,
            i32::MAX as i64,
            i32::MIN as i64,
            i64::MAX,
            i64::MIN,
        ] {
            let mut b = BytesMut::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
        }
    }

    fn kafka_batch(compression: Compression, producer_id: i64, seq: i32) -> Bytes {
        let mut recs = Vec::new();
        for i in 0..5i64 {
            let mut headers = IndexMap::new();
            headers.insert(
                StrBytes::from_static_str("h"),
                Some(Bytes::from(format!("hv{i}"))),
            );
            recs.push(Record {
                transactional: false,
                control: false,
                partition_leader_epoch: 0,
                producer_id,
                producer_epoch: if producer_id < 0 { -1 } else { 3 },
                timestamp_type: TimestampType::Creation,
                offset: i,
                sequence: if producer_id < 0 { -1 } else { seq + i as i32 },
                timestamp: 1_700_000_000_000 + (i * 7) % 3,
                key: (i != 2).then(|| Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(vec![i as u8; 100])),
                headers,
            });
        }
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            recs.iter(),
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .expect("encode");
        buf.freeze()
    }

    #[test]
    fn every_codec_round_trips_through_a_strom_frame() {
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let kb = kafka_batch(c, 42, 10);
            let original = RecordBatchDecoder::decode(&mut kb.clone())
                .expect("decode")
                .records;
            let t = kafka_to_frames(kb, 1 << 20).expect("translate");
            assert_eq!(t.len(), 1);
            assert_eq!(
                t[0].producer,
                Some(ProducerBatch {
                    producer_id: 42,
                    epoch: 3,
                    first_seq: 10,
                    last_seq: 14
                })
            );
            let mut frame = t[0].frame.clone();
            strom_flatbuffers::frame::validate_incoming(&frame, &Default::default())
                .expect("valid frame");
            strom_flatbuffers::frame::stamp_base_offset(&mut frame, 1000);
            let mut out = BytesMut::new();
            frames_to_kafka(&[frame.freeze()], &mut out).expect("encode");
            let back = RecordBatchDecoder::decode(&mut out.freeze()).expect("decode back");
            assert_eq!(back.records.len(), 5);
            for (i, (a, b)) in original.iter().zip(&back.records).enumerate() {
                assert_eq!(b.offset, 1000 + i as i64);
                assert_eq!(a.key, b.key);
                assert_eq!(a.value, b.value);
                assert_eq!(a.headers, b.headers);
                assert_eq!(a.timestamp, b.timestamp);
                assert_eq!(b.producer_id, 42);
                assert_eq!(b.sequence, 10 + i as i32);
            }
        }
    }

    #[test]
    fn plain_producer_batches_keep_no_sequence_and_garbage_is_refused() {
        let t = kafka_to_frames(kafka_batch(Compression::None, -1, -1), 1 << 20).expect("ok");
        assert_eq!(t[0].producer, None);
        let mut bad = kafka_batch(Compression::Gzip, -1, -1).to_vec();
        let n = bad.len();
        bad[n - 3] ^= 0xff;
        assert!(kafka_to_frames(Bytes::from(bad), 1 << 20).is_err());
        assert!(kafka_to_frames(Bytes::from_static(&[0u8; 10]), 1 << 20).is_err());
    }

    /// A transactional batch keeps its bit through the frame and back; a
    /// marker frame reads as a Kafka control batch with Kafka's control
    /// record; a client's control batch is refused.
    #[test]
    fn transactional_batches_and_markers_keep_their_bits() {
        let mut kb = kafka_batch(Compression::None, 42, 0).to_vec();
        // Attributes are bytes 21..23 of a batch: set bit 4 (transactional)
        // and reseal the crc (over bytes 21..).
        kb[22] |= 0x10;
        let crc = crc32c::crc32c(&kb[21..]);
        kb[17..21].copy_from_slice(&crc.to_be_bytes());
        let t = kafka_to_frames(Bytes::from(kb.clone()), 1 << 20).expect("translate");
        let h = FrameHeader::ref_from(&t[0].frame).expect("header");
        assert!(h.is_transactional() && !h.is_control());
        let mut out = BytesMut::new();
        frames_to_kafka(&[t[0].frame.clone().freeze()], &mut out).expect("encode");
        let back = RecordBatchDecoder::decode(&mut out.freeze()).expect("decode");
        assert!(back.records.iter().all(|r| r.transactional && !r.control));

        let mut marker = crate::txn::marker_frame(42, 3, true);
        strom_flatbuffers::frame::validate_incoming(&marker, &Default::default())
            .expect("a valid frame");
        strom_flatbuffers::frame::stamp_base_offset(&mut marker, 77);
        let mut out = BytesMut::new();
        frames_to_kafka(&[marker.freeze()], &mut out).expect("encode");
        let back = RecordBatchDecoder::decode(&mut out.freeze()).expect("decode");
        assert_eq!(back.records.len(), 1);
        let r = &back.records[0];
        assert!(r.control && r.transactional);
        assert_eq!((r.offset, r.producer_id, r.producer_epoch), (77, 42, 3));
        assert_eq!(r.key.as_deref(), Some(&[0u8, 0, 0, 1][..]), "commit");

        // A producer's control batch.
        kb[22] |= 0x20;
        let crc = crc32c::crc32c(&kb[21..]);
        kb[17..21].copy_from_slice(&crc.to_be_bytes());
        assert!(kafka_to_frames(Bytes::from(kb), 1 << 20).is_err());
    }
}
