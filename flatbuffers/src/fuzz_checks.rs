//! The bodies of the fuzz targets (`fuzz/fuzz_targets/*.rs`), here so that
//! `tests/fuzz_corpus_replay.rs` runs the very same checks over the
//! committed corpus on every `cargo test`. Each panics only on a broken
//! invariant, never on malformed input.

use crate::frame::{validate_incoming, verify_stored, FrameLimits};
use crate::protocol::{
    decode_request, encode_request, peek_correlation_id, peek_message, MESSAGE_BYTES_MAX,
};

/// Frames `data` as the server does, decodes every complete message, and
/// checks that what decodes re-encodes to a message that decodes the same.
pub fn request_decode(data: &[u8]) {
    let mut rest = data;
    while let Ok(Some(bounds)) = peek_message(rest, MESSAGE_BYTES_MAX) {
        let (msg, tail) = rest.split_at(bounds.message_len);
        let _ = peek_correlation_id(msg);
        if let Ok(d) = decode_request(msg) {
            assert_eq!(d.trailer.len() as u64, d.body.trailer_len());
            let again = encode_request(d.correlation_id, &d.body).expect("re-encode");
            let mut again = again;
            again.extend_from_slice(&msg[d.trailer.clone()]);
            let d2 = decode_request(&again).expect("re-encoded message decodes");
            assert_eq!(d2.body, d.body);
            assert_eq!(d2.correlation_id, d.correlation_id);
        }
        rest = tail;
    }
    let _ = decode_request(data);
}

/// Validates `data` as an incoming frame; whatever passes must also pass
/// the stored-frame check and iterate its records.
pub fn frame_validate(data: &[u8]) {
    if let Ok(summary) = validate_incoming(data, &FrameLimits::default()) {
        verify_stored(data).expect("a valid frame verifies as stored");
        let n = crate::records(data).expect("records").count();
        assert_eq!(n as u32, summary.record_count);
    }
}
