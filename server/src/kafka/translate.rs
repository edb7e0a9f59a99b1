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
//!
//! Known losses, both from the crate's `Record` (headers are an `IndexMap`):
//! a Kafka record with two headers of the same key keeps the last, and a
//! header with a null value reads back with an empty value.
//!
//! I/O-free.

use super::codec;
use super::idempotence::ProducerBatch;
use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordCompression,
    RecordEncodeOptions, TimestampType,
};
use strom_flatbuffers::frame::FRAME_RECORDS_MAX;
use strom_flatbuffers::frame::{records as frame_records, BatchBuilder, FrameHeader, RecordIn};

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
        if first.transactional || first.control {
            return Err(refused(
                codec::UNSUPPORTED_FOR_MESSAGE_FORMAT,
                "transactional and control batches are not supported",
            ));
        }
        if set.records.len() > FRAME_RECORDS_MAX as usize {
            return Err(refused(
                codec::MESSAGE_TOO_LARGE,
                format!("{} records in one batch", set.records.len()),
            ));
        }
        let producer = (first.producer_id >= 0).then(|| ProducerBatch {
            producer_id: first.producer_id,
            epoch: first.producer_epoch,
            first_seq: first.sequence,
            last_seq: set
                .records
                .last()
                .map(|r| r.sequence)
                .unwrap_or(first.sequence),
        });
        match producer {
            Some(p) => builder.set_producer(p.producer_id, p.epoch, p.first_seq),
            None => builder.set_producer(-1, -1, -1),
        }
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

/// Appends one uncompressed Kafka record batch v2 per stored frame to `out`.
/// Keys, values and header values are zero-copy slices of the frames.
pub fn frames_to_kafka(frames: &[Bytes], out: &mut BytesMut) -> Result<(), String> {
    let opts = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    let mut recs: Vec<Record> = Vec::new();
    for frame in frames {
        let header = FrameHeader::ref_from(frame).ok_or("short frame")?;
        let producer_id = header.producer_id.get();
        let producer_epoch = header.producer_epoch.get();
        let base_seq = header.base_sequence.get();
        let base = header.base_offset();
        recs.clear();
        for r in frame_records(frame).map_err(|e| e.to_string())? {
            let delta = r.offset.saturating_sub(base) as i32;
            let mut headers = IndexMap::new();
            for (k, v) in r.headers() {
                headers.insert(
                    StrBytes::from_utf8(frame.slice_ref(k.as_bytes()))
                        .map_err(|e| e.to_string())?,
                    Some(frame.slice_ref(v)),
                );
            }
            recs.push(Record {
                transactional: false,
                control: false,
                partition_leader_epoch: 0,
                producer_id,
                producer_epoch,
                timestamp_type: TimestampType::Creation,
                offset: r.offset as i64,
                // The encoder derives the base sequence from the first
                // record; -1 (no producer) stays -1.
                sequence: base_seq.wrapping_add(delta),
                timestamp: r.timestamp_ms,
                key: r.key.map(|k| slice_or_empty(frame, k)),
                value: r.value.map(|v| slice_or_empty(frame, v)),
                headers,
            });
        }
        RecordBatchEncoder::encode(out, recs.iter(), &opts).map_err(|e| e.to_string())?;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
