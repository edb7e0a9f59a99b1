//! Fuzzes `Log::open` over a MemoryStorage directory of fuzzer-chosen segment, index and checkpoint files, then reads, appends, closes and reopens.
//! The check lives in `strom_engine::fuzz_checks::log_open`, shared with the corpus replay test.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    strom_engine::fuzz_checks::log_open(data);
});
