//! Fuzzes `ProducerSnapshot::decode` over arbitrary producer-state snapshot files.
//! The check lives in `strom_engine::fuzz_checks::producer_snapshot_decode`, shared with the corpus replay test.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    strom_engine::fuzz_checks::producer_snapshot_decode(data);
});
