//! The records of the internal offsets log, I/O-free: what a key and a value
//! are, byte by byte (see `docs/format.md`, "Consumer offsets log").
//!
//! Each record is one Strom record (key, value) in a batch frame; a batch
//! holds all records of one commit, so a commit is all or nothing.
//!
//! Key (little-endian):
//! - `u8 kind` (1 = offset, 2 = group), `u16 len` + group bytes, then for
//!   an offset `u16 len` + topic bytes, `u32 partition`.
//!
//! Value (absent = tombstone: the key is deleted):
//! - offset: `u8 version = 1`, `u64 offset`, `i64 commit_time_ms`,
//!   `u32 len` + metadata bytes (UTF-8).
//! - group: `u8 version = 1`, `i32 generation`, `u16 len` + protocol type.
//!
//! Decoding never panics; unknown kinds or versions are errors the replay
//! reports (a newer server's log is not silently misread).

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Committed {
    /// The next offset to consume.
    pub offset: u64,
    pub metadata: String,
    pub commit_time_ms: i64,
}

/// What a group persists besides offsets: the generation (so generations
/// stay monotonic across restarts) and its protocol type.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupMeta {
    pub generation: i32,
    pub protocol_type: String,
}

/// One log record; a `None` value is a tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Offset {
        group: String,
        topic: String,
        partition: u32,
        value: Option<Committed>,
    },
    Group {
        group: String,
        value: Option<GroupMeta>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("offsets log record: {0}")]
pub struct RecordError(pub String);

const KIND_OFFSET: u8 = 1;
const KIND_GROUP: u8 = 2;
const VALUE_VERSION: u8 = 1;

fn put_str16(out: &mut Vec<u8>, s: &str) {
    assert!(s.len() <= u16::MAX as usize, "name of {} bytes", s.len());
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The (key, value) bytes of `r`.
pub fn encode(r: &Record) -> (Vec<u8>, Option<Vec<u8>>) {
    let mut key = Vec::with_capacity(64);
    let value = match r {
        Record::Offset {
            group,
            topic,
            partition,
            value,
        } => {
            key.push(KIND_OFFSET);
            put_str16(&mut key, group);
            put_str16(&mut key, topic);
            key.extend_from_slice(&partition.to_le_bytes());
            value.as_ref().map(|c| {
                let mut v = Vec::with_capacity(21 + c.metadata.len());
                v.push(VALUE_VERSION);
                v.extend_from_slice(&c.offset.to_le_bytes());
                v.extend_from_slice(&c.commit_time_ms.to_le_bytes());
                v.extend_from_slice(&(c.metadata.len() as u32).to_le_bytes());
                v.extend_from_slice(c.metadata.as_bytes());
                v
            })
        }
        Record::Group { group, value } => {
            key.push(KIND_GROUP);
            put_str16(&mut key, group);
            value.as_ref().map(|g| {
                let mut v = Vec::with_capacity(7 + g.protocol_type.len());
                v.push(VALUE_VERSION);
                v.extend_from_slice(&g.generation.to_le_bytes());
                put_str16(&mut v, &g.protocol_type);
                v
            })
        }
    };
    (key, value)
}

struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        let end = self.at.saturating_add(n);
        let s = self
            .buf
            .get(self.at..end)
            .ok_or_else(|| RecordError(format!("truncated at byte {}", self.at)))?;
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        Ok(self.take(N)?.try_into().expect("length checked"))
    }
    fn str_n(&mut self, n: usize) -> Result<String, RecordError> {
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| RecordError("not UTF-8".into()))
    }
    fn str16(&mut self) -> Result<String, RecordError> {
        let n = u16::from_le_bytes(self.arr()?) as usize;
        self.str_n(n)
    }
    fn end(&self) -> Result<(), RecordError> {
        if self.at == self.buf.len() {
            Ok(())
        } else {
            Err(RecordError(format!(
                "{} trailing bytes",
                self.buf.len() - self.at
            )))
        }
    }
}

pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<Record, RecordError> {
    let mut k = Cursor { buf: key, at: 0 };
    let kind = k.u8()?;
    let group = k.str16()?;
    let check_version = |v: &mut Cursor<'_>| -> Result<(), RecordError> {
        match v.u8()? {
            VALUE_VERSION => Ok(()),
            n => Err(RecordError(format!("unknown value version {n}"))),
        }
    };
    match kind {
        KIND_OFFSET => {
            let topic = k.str16()?;
            let partition = u32::from_le_bytes(k.arr()?);
            k.end()?;
            let value = match value {
                None => None,
                Some(v) => {
                    let mut v = Cursor { buf: v, at: 0 };
                    check_version(&mut v)?;
                    let offset = u64::from_le_bytes(v.arr()?);
                    let commit_time_ms = i64::from_le_bytes(v.arr()?);
                    let n = u32::from_le_bytes(v.arr()?) as usize;
                    let metadata = v.str_n(n)?;
                    v.end()?;
                    Some(Committed {
                        offset,
                        metadata,
                        commit_time_ms,
                    })
                }
            };
            Ok(Record::Offset {
                group,
                topic,
                partition,
                value,
            })
        }
        KIND_GROUP => {
            k.end()?;
            let value = match value {
                None => None,
                Some(v) => {
                    let mut v = Cursor { buf: v, at: 0 };
                    check_version(&mut v)?;
                    let generation = i32::from_le_bytes(v.arr()?);
                    let protocol_type = v.str16()?;
                    v.end()?;
                    Some(GroupMeta {
                        generation,
                        protocol_type,
                    })
                }
            };
            Ok(Record::Group { group, value })
        }
        n => Err(RecordError(format!("unknown key kind {n}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_garbage_is_an_error() {
        let rs = [
            Record::Offset {
                group: "g".into(),
                topic: "t".into(),
                partition: 7,
                value: Some(Committed {
                    offset: 42,
                    metadata: "m".into(),
                    commit_time_ms: 5,
                }),
            },
            Record::Offset {
                group: "g".into(),
                topic: "t".into(),
                partition: 7,
                value: None,
            },
            Record::Group {
                group: "g".into(),
                value: Some(GroupMeta {
                    generation: 3,
                    protocol_type: "consumer".into(),
                }),
            },
            Record::Group {
                group: "g".into(),
                value: None,
            },
        ];
        for r in rs {
            let (k, v) = encode(&r);
            assert_eq!(decode(&k, v.as_deref()), Ok(r.clone()));
            for cut in 0..k.len() {
                assert!(decode(&k[..cut], v.as_deref()).is_err());
            }
            if let Some(v) = &v {
                for cut in 0..v.len() {
                    assert!(decode(&k, Some(&v[..cut])).is_err());
                }
            }
        }
        assert!(decode(&[9, 0, 0], None).is_err());
    }
}
