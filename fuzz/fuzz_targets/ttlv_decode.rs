//! The TTLV decoder and the typed message layer on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tresor_kmip::message::{RequestMessage, ResponseMessage};
use tresor_kmip::ttlv::{self, Limits};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if data.len() >= 8 {
        let _ = ttlv::message_len(data[..8].try_into().unwrap(), &limits);
    }
    if let Ok(item) = ttlv::decode_message(data, &limits) {
        // What decodes must encode to the same bytes.
        assert_eq!(ttlv::to_bytes(&item).unwrap(), data);
        if let Ok(m) = RequestMessage::from_item(&item) {
            let _ = m.encode();
        }
        if let Ok(m) = ResponseMessage::from_item(&item) {
            let _ = m.encode();
        }
    }
});
