//! The LUKS1 header parser on arbitrary bytes (a disk file on a host is untrusted), and opening
//! a key slot of what parses with arbitrary material.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tresor_luks::{Header, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = Header::parse(data) {
        // What parses encodes to a header that parses the same (text fields are written
        // without what followed their end in the input).
        assert_eq!(Header::parse(&header.encode()).unwrap(), header);
        for slot in header.active_slots() {
            // Cheap slots only: a header may ask for millions of iterations, which is bounded
            // but slow for a fuzzer.
            if header.slots[slot].iterations <= 1000 && header.digest_iterations <= 1000 {
                let range = header.material_range(slot);
                let material = vec![0x5au8; (range.end - range.start) as usize];
                let _ = header.open_slot(slot, &material, &data[HEADER_LEN..]);
            }
        }
    }
});
