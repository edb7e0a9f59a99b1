//! Fuzzes `SegmentIndex::decode` over arbitrary offset and time index files.
//! The check lives in `strom_engine::fuzz_checks::index_decode`, shared with the corpus replay test.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    strom_engine::fuzz_checks::index_decode(data);
});
