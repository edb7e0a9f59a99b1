//! Fuzzes the native protocol's response framing and decoding (`peek_message`, `decode_response`, fetch trailer splitting, `frames`).
//! The check lives in `strom_flatbuffers::fuzz_checks::response_decode`, shared with the corpus replay test.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    strom_flatbuffers::fuzz_checks::response_decode(data);
});
