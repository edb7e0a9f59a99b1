//! Fuzzes batch frame validation (`validate_incoming`, `verify_stored`,
//! `records`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    strom_flatbuffers::fuzz_checks::frame_validate(data);
});
