//! Transaction log records (`docs/format.md`, "Transaction log"): one
//! record per transactional id, its whole state, last record wins; a
//! record without a value (tombstone) removes an expired id. I/O-free;
//! decoding never panics and refuses missing or left-over bytes.

use super::coordinator::{TxnMeta, TxnState};
use std::collections::{BTreeMap, BTreeSet};

/// Key kind byte of a transaction record.
pub const KIND_TXN: u8 = 1;
/// Value version this build writes and reads.
pub const VALUE_VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxnRecordError {
    #[error("transaction record: {0}")]
    Malformed(&'static str),
    #[error("transaction record: unknown key kind {0}")]
    UnknownKind(u8),
    #[error("transaction record: unknown value version {0}")]
    UnknownVersion(u8),
}

fn put_str16(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    assert!(
        b.len() <= u16::MAX as usize,
        "names are bounded below 64 KiB"
    );
    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    out.extend_from_slice(b);
}

/// The key of `txn_id`'s record.
pub fn encode_key(txn_id: &str) -> Vec<u8> {
    let mut k = vec![KIND_TXN];
    put_str16(&mut k, txn_id);
    k
}

/// The value holding `m`.
pub fn encode_value(m: &TxnMeta) -> Vec<u8> {
    let mut v = vec![VALUE_VERSION];
    v.extend_from_slice(&m.producer_id.to_le_bytes());
    v.extend_from_slice(&m.epoch.to_le_bytes());
    v.extend_from_slice(&m.timeout_ms.to_le_bytes());
    v.push(m.state as u8);
    v.extend_from_slice(&m.start_ms.to_le_bytes());
    v.extend_from_slice(&m.update_ms.to_le_bytes());
    v.extend_from_slice(&(m.partitions.len() as u32).to_le_bytes());
    for (t, p) in &m.partitions {
        put_str16(&mut v, t);
        v.extend_from_slice(&p.to_le_bytes());
    }
    v.extend_from_slice(&(m.groups.len() as u32).to_le_bytes());
    for g in &m.groups {
        put_str16(&mut v, g);
    }
    v.extend_from_slice(&(m.offsets.len() as u32).to_le_bytes());
    for ((g, t, p), (offset, meta)) in &m.offsets {
        put_str16(&mut v, g);
        put_str16(&mut v, t);
        v.extend_from_slice(&p.to_le_bytes());
        v.extend_from_slice(&offset.to_le_bytes());
        put_str16(&mut v, meta);
    }
    v
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TxnRecordError> {
        if self.b.len() < n {
            return Err(TxnRecordError::Malformed("bytes missing"));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, TxnRecordError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, TxnRecordError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, TxnRecordError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, TxnRecordError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn str16(&mut self) -> Result<String, TxnRecordError> {
        let n = self.u16()? as usize;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| TxnRecordError::Malformed("a name is not UTF-8"))
    }
    /// A count of elements of at least `min_bytes` each: never more than
    /// the bytes left could hold (a lying count allocates nothing).
    fn count(&mut self, min_bytes: usize) -> Result<usize, TxnRecordError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_bytes) > self.b.len() {
            return Err(TxnRecordError::Malformed(
                "a count larger than the bytes left",
            ));
        }
        Ok(n)
    }
}

/// The transactional id a key names.
pub fn decode_key(k: &[u8]) -> Result<String, TxnRecordError> {
    let mut r = Reader { b: k };
    let kind = r.u8()?;
    if kind != KIND_TXN {
        return Err(TxnRecordError::UnknownKind(kind));
    }
    let id = r.str16()?;
    if !r.b.is_empty() {
        return Err(TxnRecordError::Malformed("bytes left over in a key"));
    }
    Ok(id)
}

/// The state a value holds.
pub fn decode_value(v: &[u8]) -> Result<TxnMeta, TxnRecordError> {
    let mut r = Reader { b: v };
    let version = r.u8()?;
    if version != VALUE_VERSION {
        return Err(TxnRecordError::UnknownVersion(version));
    }
    let producer_id = r.u64()? as i64;
    let epoch = r.u16()? as i16;
    let timeout_ms = r.u32()?;
    let state = TxnState::from_u8(r.u8()?).ok_or(TxnRecordError::Malformed("unknown state"))?;
    let start_ms = r.u64()?;
    let update_ms = r.u64()?;
    if producer_id < 0 || epoch < 0 {
        return Err(TxnRecordError::Malformed("negative producer id or epoch"));
    }
    let mut partitions = BTreeSet::new();
    for _ in 0..r.count(6)? {
        let t = r.str16()?;
        let p = r.u32()?;
        partitions.insert((t, p));
    }
    let mut groups = BTreeSet::new();
    for _ in 0..r.count(2)? {
        groups.insert(r.str16()?);
    }
    let mut offsets = BTreeMap::new();
    for _ in 0..r.count(18)? {
        let g = r.str16()?;
        let t = r.str16()?;
        let p = r.u32()?;
        let o = r.u64()?;
        let m = r.str16()?;
        offsets.insert((g, t, p), (o, m));
    }
    if !r.b.is_empty() {
        return Err(TxnRecordError::Malformed("bytes left over in a value"));
    }
    Ok(TxnMeta {
        producer_id,
        epoch,
        timeout_ms,
        state,
        partitions,
        groups,
        offsets,
        start_ms,
        update_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TxnMeta {
        let mut m = TxnMeta::new(42, 3, 60_000, 1_000);
        m.state = TxnState::PrepareCommit;
        m.partitions.insert(("t".into(), 0));
        m.partitions.insert(("u".into(), 7));
        m.groups.insert("g".into());
        m.offsets
            .insert(("g".into(), "t".into(), 0), (99, "meta".into()));
        m
    }

    #[test]
    fn round_trip() {
        let m = sample();
        assert_eq!(decode_value(&encode_value(&m)), Ok(m));
        assert_eq!(decode_key(&encode_key("tx-1")).as_deref(), Ok("tx-1"));
    }

    /// Property: no truncation, extension or flipped byte of a value makes
    /// the decoder panic; every truncation is refused.
    #[test]
    fn damaged_values_never_panic() {
        let v = encode_value(&sample());
        for len in 0..v.len() {
            assert!(decode_value(&v[..len]).is_err(), "{len}");
        }
        let mut longer = v.clone();
        longer.push(0);
        assert!(decode_value(&longer).is_err());
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut b = v.clone();
            let flips = 1 + (seed % 4) as usize;
            for i in 0..flips {
                let at = ((seed >> (8 * i)) as usize) % b.len();
                b[at] ^= (seed >> 40) as u8 | 1;
            }
            let _ = decode_value(&b);
            let _ = decode_key(&b);
        }
    }
}
