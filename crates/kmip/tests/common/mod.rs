//! Shared helpers for the conformance tests: where the OASIS test cases are, and placeholder
//! bindings that make them concrete.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use tresor_kmip::ttlv::Bytes;
use tresor_kmip::xml::Placeholders;
use tresor_kmip::{ItemType, Value};

/// The folder of OASIS test cases: `TRESOR_KMIP_VECTORS`, or `shared/kmip-test-vectors` beside the
/// checkout.
pub fn vectors_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TRESOR_KMIP_VECTORS") {
        return PathBuf::from(dir);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..");
    root.join("shared/kmip-test-vectors")
}

/// Every `.xml` file below `dir`, sorted.
pub fn vector_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).unwrap_or_else(|e| {
            panic!(
                "Cannot read the KMIP test vectors in {}: {e}. Set TRESOR_KMIP_VECTORS to their folder.",
                d.display()
            )
        });
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "xml") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Binds `$NOW` (and `$NOW±N`) to a fixed time and byte placeholders to bytes derived from their
/// names, so that a test case becomes one fixed message.
#[derive(Debug, Default)]
pub struct FixedBindings;

pub const FIXED_NOW: i64 = 1_700_000_000;

impl Placeholders for FixedBindings {
    fn bind(&mut self, ty: ItemType, placeholder: &str) -> Option<Value> {
        match ty {
            ItemType::DateTime => {
                let rest = placeholder.strip_prefix("$NOW")?;
                let offset: i64 = if rest.is_empty() {
                    0
                } else {
                    rest.parse().ok()?
                };
                Some(Value::DateTime(FIXED_NOW + offset))
            }
            ItemType::ByteString => {
                let seed = placeholder
                    .bytes()
                    .fold(0u8, |a, b| a.wrapping_mul(31).wrapping_add(b));
                Some(Value::ByteString(Bytes::new(
                    (0..16).map(|i| seed.wrapping_add(i)).collect(),
                )))
            }
            _ => None,
        }
    }
}
