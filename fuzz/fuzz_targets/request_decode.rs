//! Fuzzes the native protocol's request framing and decoding (`peek_message`, `decode_request`, `peek_correlation_id`, produce trailer splitting).
//! The check lives in `strom_flatbuffers::fuzz_checks::request_decode`, shared with the corpus replay test.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    strom_flatbuffers::fuzz_checks::request_decode(data);
});
