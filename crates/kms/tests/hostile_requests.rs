//! Mutated requests from the OASIS test cases sent to the key server engine: every one gets a
//! valid KMIP response (an error where it is not a valid request); nothing panics.

mod common;

use tresor_kmip::message::ResponseMessage;
use tresor_kmip::testing::{mutate, XorShift};
use tresor_kmip::ttlv::{Bytes, ItemType};
use tresor_kmip::xml::{self, Placeholders};
use tresor_kmip::Value;

struct Fixed;

impl Placeholders for Fixed {
    fn bind(&mut self, ty: ItemType, _: &str) -> Option<Value> {
        match ty {
            ItemType::DateTime => Some(Value::DateTime(1_700_000_000)),
            ItemType::ByteString => Some(Value::ByteString(Bytes::new(vec![0; 16]))),
            _ => None,
        }
    }
}

#[test]
fn mutated_requests_get_kmip_answers() {
    let dir = std::env::var_os("TRESOR_KMIP_VECTORS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../../shared/kmip-test-vectors")
        });
    let mut seeds = Vec::new();
    for name in [
        "SKLC-M-1-14.xml",
        "SKFF-M-9-14.xml",
        "TL-M-1-14.xml",
        "TL-M-2-14.xml",
    ] {
        let text = std::fs::read_to_string(dir.join("v1.4/mandatory").join(name)).unwrap();
        for item in xml::parse_document(&text, &mut Fixed).unwrap() {
            if item.tag == tresor_kmip::spec::tag::REQUEST_MESSAGE {
                seeds.push(tresor_kmip::ttlv::to_bytes(&item).unwrap());
            }
        }
    }
    assert!(seeds.len() >= 10, "{} seeds", seeds.len());
    let kms = common::kms();
    let mut rng = XorShift(0xDEC0DE);
    for i in 0..4000 {
        let input = mutate(&mut rng, &seeds[i % seeds.len()]);
        let response = kms
            .engine
            .handle_bytes("CN=fuzz", &input)
            .expect("a response encodes");
        ResponseMessage::decode(&response, &Default::default())
            .expect("the response is valid KMIP");
    }
}
