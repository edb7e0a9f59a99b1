//! Fuzzes recovery scanning (`scan`) over arbitrary segment bytes, as given and with frame checksums repaired.
//! The check lives in `strom_engine::fuzz_checks::segment_scan`, shared with the corpus replay test.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    strom_engine::fuzz_checks::segment_scan(data);
});
