//! Every request and response of the OASIS KMIP 1.0, 1.3 and 1.4 test cases, written from their
//! XML form to TTLV, decodes and encodes again byte for byte.

mod common;

use tresor_kmip::message::{RequestMessage, RequestPayload, ResponseMessage, ResponsePayload};
use tresor_kmip::spec::tag;
use tresor_kmip::ttlv::{self, Limits};
use tresor_kmip::xml;

#[test]
fn every_test_case_message_round_trips_byte_exact() {
    let dir = common::vectors_dir();
    let files = common::vector_files(&dir);
    assert!(
        files.len() >= 220,
        "only {} test case files in {}",
        files.len(),
        dir.display()
    );
    let mut messages = 0;
    let mut typed_payloads = 0;
    let mut failures = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let name = path.strip_prefix(&dir).unwrap().display().to_string();
        let items = match xml::parse_document(&text, &mut common::FixedBindings) {
            Ok(items) => items,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        for (i, item) in items.iter().enumerate() {
            messages += 1;
            let wire = ttlv::to_bytes(item).unwrap();
            let decoded = match ttlv::decode_message(&wire, &Limits::default()) {
                Ok(d) => d,
                Err(e) => {
                    failures.push(format!("{name} message {i}: {e}"));
                    continue;
                }
            };
            if &decoded != item {
                failures.push(format!("{name} message {i}: decodes to another item"));
            }
            if ttlv::to_bytes(&decoded).unwrap() != wire {
                failures.push(format!("{name} message {i}: re-encodes to other bytes"));
            }
            let typed = match item.tag {
                t if t == tag::REQUEST_MESSAGE => RequestMessage::from_item(&decoded).map(|m| {
                    typed_payloads += m
                        .items
                        .iter()
                        .filter(|i| !matches!(i.payload, RequestPayload::Raw(_)))
                        .count();
                    m.to_item()
                }),
                _ => ResponseMessage::from_item(&decoded).map(|m| {
                    typed_payloads += m
                        .items
                        .iter()
                        .filter(|i| matches!(&i.payload, Some(p) if !matches!(p, ResponsePayload::Raw(_))))
                        .count();
                    m.to_item()
                }),
            };
            match typed {
                Ok(typed) if ttlv::to_bytes(&typed).unwrap() == wire => {}
                Ok(typed) => failures.push(format!(
                    "{name} message {i}: typed message re-encodes differently:\n{}\n--- expected\n{}",
                    tresor_kmip::pretty::render(&typed),
                    tresor_kmip::pretty::render(item)
                )),
                Err(e) => failures.push(format!("{name} message {i}: typed decode failed: {e}")),
            }
            let again = xml::parse_item(&xml::to_xml(item), &mut common::FixedBindings);
            if again.as_ref().ok() != Some(item) {
                failures.push(format!(
                    "{name} message {i}: XML does not round-trip: {again:?}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(messages > 1500, "only {messages} messages");
    eprintln!(
        "{} files, {messages} messages round-tripped, {typed_payloads} typed payloads",
        files.len()
    );
    // Most operations in these profiles have typed payloads; a drop here means a typed decoder
    // fell back to raw TTLV.
    assert!(
        typed_payloads > 1500,
        "only {typed_payloads} typed payloads"
    );
}
