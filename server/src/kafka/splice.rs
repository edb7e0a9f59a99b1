//! Fetched records go out as their own buffers, not copied into the
//! encoded response. `kafka-protocol` encodes a response into one buffer,
//! so a fetch answer would copy every record batch once more after
//! `translate` built it. Instead each partition's records are replaced by
//! a placeholder (a 16-byte per-process random key and the part's index)
//! before encoding; afterwards each placeholder and its length prefix are
//! cut out of the encoded bytes and the real length and records put in
//! their place, as separate `Bytes`, and the response's size prefix is
//! corrected.
//!
//! Invariants:
//! - The result is byte for byte what encoding the response with the real
//!   records gives (`splicing_gives_the_bytes_of_a_plain_encoding`).
//! - A placeholder cannot be forged: its key is random per process and no
//!   client sees it; should one still be missing or framed unexpectedly,
//!   `splice` returns `None` and the caller encodes the plain way.
//! - Only the records field of a partition carries a placeholder, and no
//!   length in a Fetch response covers it except the size prefix: in
//!   Fetch v4-v11 the field is an int32 length and the bytes, in v12+ an
//!   unsigned varint of length + 1 and the bytes.
//!
//! I/O-free.

use bytes::{BufMut, Bytes, BytesMut};
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;

/// Records shorter than this stay in the encoded response (a copy that
/// costs less than a separate buffer).
pub const SPLICE_RECORDS_BYTES_MIN: usize = 4 << 10;

const KEY_BYTES: usize = 16;
/// A placeholder: the key, then the part's index (u32, big-endian).
pub const PLACEHOLDER_BYTES: usize = KEY_BYTES + 4;

fn process_key() -> &'static [u8; KEY_BYTES] {
    static KEY: OnceLock<[u8; KEY_BYTES]> = OnceLock::new();
    KEY.get_or_init(|| {
        // SipHash keys are drawn from the OS's randomness per RandomState.
        let mut key = [0u8; KEY_BYTES];
        for chunk in key.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(0x5374_726f_6d21);
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
        key
    })
}

/// The records of one response, set aside while it is encoded.
#[derive(Default)]
pub struct Splicer {
    records: Vec<Bytes>,
}

impl Splicer {
    pub fn new() -> Splicer {
        Splicer::default()
    }

    /// What to put in the response instead of `records`: `records` itself
    /// when it is short, else a placeholder that [`Splicer::splice`] replaces.
    pub fn stand_in(&mut self, records: Bytes) -> Bytes {
        if records.len() < SPLICE_RECORDS_BYTES_MIN {
            return records;
        }
        let index = u32::try_from(self.records.len()).expect("parts of one response fit u32");
        self.records.push(records);
        let mut p = BytesMut::with_capacity(PLACEHOLDER_BYTES);
        p.put_slice(process_key());
        p.put_u32(index);
        p.freeze()
    }

    /// The records a placeholder stands for, if it is one of ours.
    pub fn real(&self, placeholder: &[u8]) -> Option<&Bytes> {
        let index = parse_placeholder(placeholder)?;
        self.records.get(index)
    }

    /// Whether any records were set aside.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Replaces every placeholder of `encoded` (a whole response, size
    /// prefix first) by the real length and records. `flexible`: the
    /// records field is a compact (varint) one. `None` if a placeholder is
    /// missing or not framed as expected.
    pub fn splice(&self, encoded: BytesMut, flexible: bool) -> Option<Vec<Bytes>> {
        let head = encoded.freeze();
        let mut out = Vec::with_capacity(2 * self.records.len() + 1);
        let mut at = 0usize;
        let key = process_key();
        for (i, records) in self.records.iter().enumerate() {
            let mut placeholder = [0u8; PLACEHOLDER_BYTES];
            placeholder[..KEY_BYTES].copy_from_slice(key);
            placeholder[KEY_BYTES..].copy_from_slice(&(i as u32).to_be_bytes());
            let found = at + find(&head[at..], &placeholder)?;
            let (prefix_len, expected): (usize, &[u8]) = if flexible {
                (1, &[PLACEHOLDER_BYTES as u8 + 1])
            } else {
                (4, &[0, 0, 0, PLACEHOLDER_BYTES as u8])
            };
            let len_at = found.checked_sub(prefix_len)?;
            if len_at < at || &head[len_at..found] != expected {
                return None;
            }
            out.push(head.slice(at..len_at));
            let mut len = BytesMut::with_capacity(5);
            if flexible {
                put_uvarint(&mut len, u32::try_from(records.len() + 1).ok()?);
            } else {
                len.put_i32(i32::try_from(records.len()).ok()?);
            }
            out.push(len.freeze());
            out.push(records.clone());
            at = found + PLACEHOLDER_BYTES;
        }
        out.push(head.slice(at..));
        let total: usize = out.iter().map(|b| b.len()).sum();
        let size = i32::try_from(total.checked_sub(4)?).ok()?;
        let first = out.first_mut()?;
        if first.len() < 4 {
            return None;
        }
        let mut fixed = BytesMut::from(&first[..]);
        fixed[..4].copy_from_slice(&size.to_be_bytes());
        *first = fixed.freeze();
        out.retain(|b| !b.is_empty());
        Some(out)
    }
}

fn parse_placeholder(b: &[u8]) -> Option<usize> {
    if b.len() != PLACEHOLDER_BYTES || &b[..KEY_BYTES] != process_key() {
        return None;
    }
    let mut idx = [0u8; 4];
    idx.copy_from_slice(&b[KEY_BYTES..]);
    usize::try_from(u32::from_be_bytes(idx)).ok()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn put_uvarint(out: &mut BytesMut, mut v: u32) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::codec::encode_response;
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::{ApiKey, FetchResponse, ResponseKind, TopicName};
    use kafka_protocol::protocol::StrBytes;

    fn response(records: &[Bytes]) -> FetchResponse {
        let partitions = records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                PartitionData::default()
                    .with_partition_index(i as i32)
                    .with_high_watermark(1000 + i as i64)
                    .with_records(Some(r.clone()))
            })
            .collect();
        FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
            .with_topic(TopicName(StrBytes::from_static_str("t")))
            .with_partitions(partitions)])
    }

    /// Every Fetch version this edge answers, records of every size class
    /// (empty, short, long, multi-byte varint lengths): the spliced parts
    /// are exactly the plain encoding.
    #[test]
    fn splicing_gives_the_bytes_of_a_plain_encoding() {
        let records: Vec<Bytes> = [0usize, 10, 4096, 5000, 70_000, 300_000]
            .iter()
            .enumerate()
            .map(|(i, &n)| Bytes::from(vec![i as u8 + 1; n]))
            .collect();
        for version in 4..=12i16 {
            let plain = encode_response(
                7,
                ApiKey::Fetch,
                version,
                &ResponseKind::Fetch(response(&records)),
            )
            .expect("plain");
            let mut s = Splicer::new();
            let stand_ins: Vec<Bytes> = records.iter().map(|r| s.stand_in(r.clone())).collect();
            assert_eq!(
                stand_ins
                    .iter()
                    .filter(|b| b.len() == PLACEHOLDER_BYTES)
                    .count(),
                4
            );
            let encoded = encode_response(
                7,
                ApiKey::Fetch,
                version,
                &ResponseKind::Fetch(response(&stand_ins)),
            )
            .expect("with placeholders");
            let parts = s.splice(encoded, version >= 12).expect("spliced");
            let joined: Vec<u8> = parts.iter().flat_map(|b| b.iter().copied()).collect();
            assert_eq!(joined, plain.to_vec(), "version {version}");
        }
    }

    /// A placeholder that is not in the bytes, or framed with another
    /// length, makes `splice` give up (the caller then encodes plainly).
    #[test]
    fn a_missing_or_misframed_placeholder_is_refused() {
        let mut s = Splicer::new();
        let p = s.stand_in(Bytes::from(vec![9u8; 10_000]));
        assert_eq!(s.real(&p).map(|b| b.len()), Some(10_000));
        let mut bogus = BytesMut::new();
        bogus.put_i32(0);
        bogus.put_slice(b"no placeholder here");
        assert!(s.splice(bogus, true).is_none());
        let mut s = Splicer::new();
        let p = s.stand_in(Bytes::from(vec![9u8; 10_000]));
        let mut misframed = BytesMut::new();
        misframed.put_i32(0);
        misframed.put_u8(0x7f);
        misframed.put_slice(&p);
        assert!(s.splice(misframed, true).is_none());
        assert!(Splicer::new().real(&[0u8; PLACEHOLDER_BYTES]).is_none());
    }
}
