//! A readable rendering of TTLV for logs and debugging: one item a line, indented, tags and
//! enumerations by name. Key material and passwords are never shown, only their length.

use std::fmt::{self, Write as _};

use crate::spec::{self, tag, EnumDef};
use crate::ttlv::{Item, Tag, Value};
use crate::xml::{format_date_time, hex};

/// Tags whose values are secrets.
const SECRET_TAGS: &[Tag] = &[
    tag::KEY_MATERIAL,
    tag::PASSWORD,
    tag::D,
    tag::P,
    tag::Q,
    tag::PRIVATE_EXPONENT,
    tag::PRIME_EXPONENT_P,
    tag::PRIME_EXPONENT_Q,
    tag::CRT_COEFFICIENT,
    tag::X,
    tag::OPAQUE_DATA_VALUE,
];

/// Renders an item; `Display` for `Pretty(&item)` does the same.
pub fn render(item: &Item) -> String {
    Pretty(item).to_string()
}

/// Displays an item as indented lines.
#[derive(Debug)]
pub struct Pretty<'a>(pub &'a Item);

impl fmt::Display for Pretty<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        line(self.0, None, 0, false, &mut out);
        f.write_str(out.trim_end())
    }
}

fn name(tag: Tag) -> String {
    spec::tag_xml_name(tag).unwrap_or_else(|| format!("0x{:06X}", tag.value()))
}

fn line(
    item: &Item,
    enum_def: Option<&'static EnumDef>,
    depth: usize,
    secret: bool,
    out: &mut String,
) {
    let indent = "  ".repeat(depth);
    let secret = secret || SECRET_TAGS.contains(&item.tag);
    let enum_def = enum_def.or_else(|| spec::enum_for_tag(item.tag));
    let text = match &item.value {
        Value::Structure(children) => {
            let _ = writeln!(out, "{indent}{}", name(item.tag));
            let mut attribute_enum = None;
            for child in children {
                let ctx = if child.tag == tag::ATTRIBUTE_VALUE {
                    attribute_enum
                } else {
                    None
                };
                line(child, ctx, depth + 1, secret, out);
                if let (true, Value::TextString(n)) =
                    (child.tag == tag::ATTRIBUTE_NAME, &child.value)
                {
                    attribute_enum = spec::tag_by_name(n).and_then(spec::enum_for_tag);
                }
            }
            return;
        }
        Value::ByteString(_) | Value::BigInteger(_) if secret => {
            format!("<{} bytes hidden>", item.value_len_hint())
        }
        Value::TextString(_) if secret => "<hidden>".to_owned(),
        Value::Integer(v) => match enum_def.filter(|d| d.is_mask) {
            Some(mask) => format!("{v} ({})", mask_names(*v as u32, mask)),
            None => v.to_string(),
        },
        Value::LongInteger(v) => v.to_string(),
        Value::BigInteger(b) => format!("0x{}", hex(b)),
        Value::Enumeration(v) => match enum_def.and_then(|d| d.name_of(*v)) {
            Some(n) => n.to_owned(),
            None => format!("0x{v:08X}"),
        },
        Value::Boolean(v) => v.to_string(),
        Value::TextString(s) => format!("{:?}", s.as_str()),
        Value::ByteString(b) => hex(b),
        Value::DateTime(v) => format_date_time(*v),
        Value::Interval(v) => format!("{v} s"),
    };
    let _ = writeln!(out, "{indent}{}: {text}", name(item.tag));
}

fn mask_names(bits: u32, mask: &EnumDef) -> String {
    let names: Vec<&str> = mask
        .values
        .iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|(_, n)| *n)
        .collect();
    names.join(" | ")
}

impl Item {
    fn value_len_hint(&self) -> usize {
        match &self.value {
            Value::ByteString(b) => b.len(),
            Value::BigInteger(b) => b.len(),
            Value::TextString(s) => s.len(),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_names_and_hides_key_material() {
        let item = Item::structure(
            tag::KEY_BLOCK,
            vec![
                Item::enumeration(tag::KEY_FORMAT_TYPE, 1),
                Item::structure(
                    tag::KEY_VALUE,
                    vec![Item::bytes(tag::KEY_MATERIAL, vec![0x5A; 32])],
                ),
                Item::integer(tag::CRYPTOGRAPHIC_LENGTH, 256),
            ],
        );
        let text = render(&item);
        assert_eq!(
            text,
            "KeyBlock\n  KeyFormatType: Raw\n  KeyValue\n    KeyMaterial: <32 bytes hidden>\n  CryptographicLength: 256"
        );
        assert!(!text.contains("5a5a"));
    }
}
