//! Fuzzes the replication wire encoding (`peek_batch_len`, `decode_batch`, re-encoding of what decodes), as given and with length and checksum repaired.
//! The check lives in `strom_replication::wire::fuzz_check`, shared with the corpus replay test.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    strom_replication::wire::fuzz_check(data);
});
