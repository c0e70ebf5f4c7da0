//! Mutated messages (bit flips, cut-offs, forged lengths, inserted bytes) from the OASIS test
//! cases: the decoder returns an error or a value, never panics, and never reads past the input.

mod common;

use tresor_kmip::message::{RequestMessage, ResponseMessage};
use tresor_kmip::testing::{mutate, XorShift};
use tresor_kmip::ttlv::{self, Limits};
use tresor_kmip::xml;

#[test]
fn mutated_test_case_messages_never_panic_the_decoder() {
    let dir = common::vectors_dir();
    let mut seeds = Vec::new();
    for path in common::vector_files(&dir).iter().step_by(4) {
        let text = std::fs::read_to_string(path).unwrap();
        for item in xml::parse_document(&text, &mut common::FixedBindings).unwrap() {
            seeds.push(ttlv::to_bytes(&item).unwrap());
        }
    }
    assert!(seeds.len() > 300);
    let mut rng = XorShift(0x005E_ED0F_7E50);
    let limits = Limits {
        max_message_len: 1 << 20,
        max_depth: 16,
    };
    let (mut ok, mut rejected) = (0, 0);
    for i in 0..60_000 {
        let input = mutate(&mut rng, &seeds[i % seeds.len()]);
        match ttlv::decode_message(&input, &limits) {
            Ok(item) => {
                ok += 1;
                // Whatever decodes also goes through the typed layer and back.
                let _ = RequestMessage::from_item(&item).map(|m| m.encode());
                let _ = ResponseMessage::from_item(&item).map(|m| m.encode());
            }
            Err(e) => {
                rejected += 1;
                assert!(
                    e.offset <= input.len(),
                    "error offset {} past the input ({})",
                    e.offset,
                    input.len()
                );
            }
        }
        if input.len() >= 8 {
            let _ = ttlv::message_len(input[..8].try_into().unwrap(), &limits);
        }
    }
    assert!(
        ok > 1000 && rejected > 10_000,
        "ok {ok}, rejected {rejected}"
    );
}
