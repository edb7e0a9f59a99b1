//! Fuzzes batch frames (`peek_frame_len`, `validate_incoming`, `verify_stored`, `records`, `frames`), as given and with checksums repaired.
//! The check lives in `strom_flatbuffers::fuzz_checks::frame_validate`, shared with the corpus replay test.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    strom_flatbuffers::fuzz_checks::frame_validate(data);
});
