//! Helpers shared by the replication integration tests: producer frames
//! tagged with a string, and reading the tag back.

#![allow(dead_code)]

use bytes::Bytes;
use strom_flatbuffers::{BatchBuilder, RecordIn};
use strom_replication::engine_store::is_control_frame;

/// A producer frame of `records` records whose values are `tag`.
pub fn frame(tag: &str, records: usize) -> Bytes {
    let mut b = BatchBuilder::new();
    for i in 0..records {
        b.push(&RecordIn {
            timestamp_ms: 1_000 + i as i64,
            key: None,
            value: Some(tag.as_bytes()),
            headers: &[],
        });
    }
    Bytes::from(b.finish())
}

/// The tag of a stored producer frame (`None` for a no-op or control frame).
pub fn tag(data: &[u8]) -> Option<String> {
    if data.is_empty() || is_control_frame(data) {
        return None;
    }
    let r = strom_flatbuffers::records(data)
        .expect("a valid frame")
        .next()?;
    Some(String::from_utf8(r.value?.to_vec()).expect("utf-8 tag"))
}
