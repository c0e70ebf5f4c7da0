//! The KMIP XML encoding (KMIP Additional Message Encodings, section 5.4): every item is an
//! element named after its tag, with `type` and `value` attributes; structures have child elements
//! instead. The OASIS conformance test cases are written in it.
//!
//! Enumerations and masks are written by name. The value of an `AttributeValue` is named after
//! the enumeration of the attribute its sibling `AttributeName` names, so `Cryptographic Usage
//! Mask` reads `Encrypt Decrypt`. Values a test case leaves open (`$NOW`, `$UNIQUE_IDENTIFIER_0`)
//! are handed to a caller's [`Placeholders`].

use std::fmt::Write as _;

use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, XmlVersion};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::OffsetDateTime;

use crate::spec::{self, tag, EnumDef};
use crate::ttlv::{Bytes, Item, ItemType, Tag, Text, Value};

/// The deepest nesting accepted in an XML document.
const MAX_DEPTH: usize = 64;

/// Why an XML document is not a KMIP message.
#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    #[error("XML is not well formed at byte {position}: {message}")]
    Syntax { position: u64, message: String },
    #[error("Unknown tag name <{0}>")]
    UnknownTag(String),
    #[error("Unknown type \"{ty}\" on <{element}>")]
    UnknownType { element: String, ty: String },
    #[error("<{element}> has type {ty} but no value")]
    MissingValue { element: String, ty: &'static str },
    #[error("Value \"{value}\" of <{element}> is not a valid {ty}")]
    BadValue {
        element: String,
        ty: &'static str,
        value: String,
    },
    #[error("Elements nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("Document has no KMIP message")]
    Empty,
}

/// Binds the values a test case leaves open. Called with the item's type and the placeholder text
/// (such as `$NOW` or `$KEY_VALUE_0`); returns the value to use, or `None` to reject it. Text
/// placeholders that are not bound stay as they are.
pub trait Placeholders {
    fn bind(&mut self, ty: ItemType, placeholder: &str) -> Option<Value>;
}

/// Binds nothing: every placeholder that is not valid text is an error.
#[derive(Debug, Default)]
pub struct NoPlaceholders;

impl Placeholders for NoPlaceholders {
    fn bind(&mut self, _: ItemType, _: &str) -> Option<Value> {
        None
    }
}

/// An element as read, before it is turned into an item.
#[derive(Debug)]
struct Element {
    name: String,
    tag_attr: Option<String>,
    ty: Option<String>,
    value: Option<String>,
    children: Vec<Element>,
}

/// Parses a document that holds one message, or a sequence of messages under a root element
/// (`<KMIP>` or `<KmipTestCase>` in the OASIS files). Returns the messages in order.
pub fn parse_document(
    xml: &str,
    placeholders: &mut dyn Placeholders,
) -> Result<Vec<Item>, XmlError> {
    let root = read_tree(xml)?;
    let elements = if spec::tag_by_name(&root.name).is_some() || root.name == "TTLV" {
        vec![root]
    } else {
        root.children
    };
    if elements.is_empty() {
        return Err(XmlError::Empty);
    }
    elements
        .iter()
        .map(|e| to_item(e, None, placeholders))
        .collect()
}

/// Parses one item.
pub fn parse_item(xml: &str, placeholders: &mut dyn Placeholders) -> Result<Item, XmlError> {
    let root = read_tree(xml)?;
    to_item(&root, None, placeholders)
}

fn read_tree(xml: &str) -> Result<Element, XmlError> {
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<Element> = Vec::new();
    let syntax = |reader: &Reader<&[u8]>, message: String| XmlError::Syntax {
        position: reader.buffer_position(),
        message,
    };
    loop {
        let event = reader
            .read_event()
            .map_err(|e| syntax(&reader, e.to_string()))?;
        match event {
            Event::Start(start) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(XmlError::TooDeep);
                }
                stack.push(element(&start).map_err(|m| syntax(&reader, m))?);
            }
            Event::Empty(start) => {
                let el = element(&start).map_err(|m| syntax(&reader, m))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => return Ok(el),
                }
            }
            Event::End(_) => {
                let Some(el) = stack.pop() else {
                    return Err(syntax(&reader, "unexpected end tag".into()));
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => return Ok(el),
                }
            }
            Event::Eof => return Err(XmlError::Empty),
            // Text between elements (the "# TIME" lines of some files), comments, declarations.
            _ => {}
        }
    }
}

fn element(start: &BytesStart<'_>) -> Result<Element, String> {
    let name = start.name().into_inner().to_owned();
    let mut el = Element {
        name,
        tag_attr: None,
        ty: None,
        value: None,
        children: Vec::new(),
    };
    for attr in start.attributes() {
        let attr = attr.map_err(|e| e.to_string())?;
        let value = attr
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|e| e.to_string())?
            .into_owned();
        match attr.key.into_inner() {
            "type" => el.ty = Some(value),
            "value" => el.value = Some(value),
            "tag" => el.tag_attr = Some(value),
            _ => {}
        }
    }
    Ok(el)
}

fn element_tag(el: &Element) -> Result<Tag, XmlError> {
    if let Some(hex) = el.tag_attr.as_deref() {
        return parse_hex_u32(hex)
            .and_then(Tag::from_u32)
            .ok_or_else(|| XmlError::UnknownTag(format!("{} tag=\"{hex}\"", el.name)));
    }
    if let Some(hex) = el
        .name
        .strip_prefix("0x")
        .or_else(|| el.name.strip_prefix("_0x"))
    {
        if let Some(tag) = u32::from_str_radix(hex, 16).ok().and_then(Tag::from_u32) {
            return Ok(tag);
        }
    }
    spec::tag_by_name(&el.name).ok_or_else(|| XmlError::UnknownTag(el.name.clone()))
}

/// `enum_def` is the enumeration that names this element's value when the context (an attribute's
/// name) says so.
fn to_item(
    el: &Element,
    enum_def: Option<&'static EnumDef>,
    placeholders: &mut dyn Placeholders,
) -> Result<Item, XmlError> {
    let tag = element_tag(el)?;
    let ty = match el.ty.as_deref() {
        None => ItemType::Structure,
        Some(name) => ItemType::from_name(name).ok_or_else(|| XmlError::UnknownType {
            element: el.name.clone(),
            ty: name.to_owned(),
        })?,
    };
    let raw = match (ty, el.value.as_deref()) {
        (ItemType::Structure, _) => return structure(el, tag, placeholders),
        (_, Some(raw)) => raw,
        (_, None) => {
            return Err(XmlError::MissingValue {
                element: el.name.clone(),
                ty: ty.name(),
            })
        }
    };
    if raw.starts_with('$') {
        if let Some(value) = placeholders.bind(ty, raw) {
            return Ok(Item::new(tag, value));
        }
    }
    let bad = || XmlError::BadValue {
        element: el.name.clone(),
        ty: ty.name(),
        value: raw.to_owned(),
    };
    let enum_def = enum_def.or_else(|| spec::enum_for_tag(tag));
    let value = match ty {
        ItemType::Structure => return structure(el, tag, placeholders),
        ItemType::Integer => {
            let mask = enum_def.filter(|d| d.is_mask);
            Value::Integer(parse_integer(raw, mask).ok_or_else(bad)?)
        }
        ItemType::LongInteger => Value::LongInteger(parse_i64(raw).ok_or_else(bad)?),
        ItemType::BigInteger => Value::BigInteger(
            raw.strip_prefix("0x")
                .and_then(parse_hex_bytes)
                .ok_or_else(bad)?,
        ),
        ItemType::Enumeration => {
            let v = parse_hex_u32(raw)
                .or_else(|| {
                    enum_def
                        .filter(|d| !d.is_mask)
                        .and_then(|d| d.value_of(raw))
                })
                .ok_or_else(bad)?;
            Value::Enumeration(v)
        }
        ItemType::Boolean => match raw {
            "true" => Value::Boolean(true),
            "false" => Value::Boolean(false),
            _ => match parse_hex_u32(raw) {
                Some(0) => Value::Boolean(false),
                Some(1) => Value::Boolean(true),
                _ => return Err(bad()),
            },
        },
        ItemType::TextString => Value::TextString(Text::from(raw)),
        ItemType::ByteString => {
            Value::ByteString(Bytes::new(parse_hex_bytes(raw).ok_or_else(bad)?))
        }
        ItemType::DateTime => Value::DateTime(parse_date_time(raw).ok_or_else(bad)?),
        ItemType::Interval => Value::Interval(
            raw.parse::<u32>()
                .ok()
                .or_else(|| parse_hex_u32(raw))
                .ok_or_else(bad)?,
        ),
    };
    Ok(Item::new(tag, value))
}

fn structure(
    el: &Element,
    tag: Tag,
    placeholders: &mut dyn Placeholders,
) -> Result<Item, XmlError> {
    let mut children = Vec::with_capacity(el.children.len());
    let mut attribute_enum = None;
    for child in &el.children {
        let child_tag = element_tag(child)?;
        let ctx = if child_tag == tag::ATTRIBUTE_VALUE {
            attribute_enum
        } else {
            None
        };
        let item = to_item(child, ctx, placeholders)?;
        if item.tag == tag::ATTRIBUTE_NAME {
            if let Value::TextString(name) = &item.value {
                attribute_enum = spec::tag_by_name(name).and_then(spec::enum_for_tag);
            }
        }
        children.push(item);
    }
    Ok(Item::structure(tag, children))
}

fn parse_hex_u32(s: &str) -> Option<u32> {
    let hex = s.strip_prefix("0x")?;
    u32::from_str_radix(hex, 16).ok()
}

fn parse_i64(s: &str) -> Option<i64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok().map(|v| v as i64),
        None => s.parse().ok(),
    }
}

fn parse_integer(s: &str, mask: Option<&EnumDef>) -> Option<i32> {
    if let Ok(v) = s.parse::<i32>() {
        return Some(v);
    }
    if let Some(v) = parse_hex_u32(s) {
        return Some(v as i32);
    }
    // A mask: names or hex values separated by white space or `|`.
    let mask = mask?;
    let mut bits = 0u32;
    for part in s
        .split(|c: char| c.is_whitespace() || c == '|')
        .filter(|p| !p.is_empty())
    {
        bits |= parse_hex_u32(part).or_else(|| mask.value_of(part))?;
    }
    Some(bits as i32)
}

fn parse_hex_bytes(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
}

fn parse_date_time(s: &str) -> Option<i64> {
    if let Some(v) = parse_i64(s).filter(|_| s.starts_with("0x")) {
        return Some(v);
    }
    OffsetDateTime::parse(s, &Rfc3339)
        .ok()
        .map(OffsetDateTime::unix_timestamp)
}

/// Formats seconds since the epoch as the XML encoding does (`2012-04-27T08:12:24+00:00`).
pub fn format_date_time(secs: i64) -> String {
    let format = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]+00:00");
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| format!("0x{:016X}", secs as u64))
}

/// Writes an item in the XML encoding, indented by two spaces a level.
pub fn to_xml(item: &Item) -> String {
    let mut out = String::new();
    write_item(item, None, 0, &mut out);
    out
}

fn write_item(item: &Item, enum_def: Option<&'static EnumDef>, depth: usize, out: &mut String) {
    let indent = "  ".repeat(depth);
    let (open, close) = match spec::tag_xml_name(item.tag) {
        Some(name) => (name.clone(), name),
        None => (
            format!("TTLV tag=\"0x{:06X}\"", item.tag.value()),
            "TTLV".to_owned(),
        ),
    };
    match &item.value {
        Value::Structure(children) => {
            if children.is_empty() {
                let _ = writeln!(out, "{indent}<{open}/>");
                return;
            }
            let _ = writeln!(out, "{indent}<{open}>");
            let mut attribute_enum = None;
            for child in children {
                let ctx = if child.tag == tag::ATTRIBUTE_VALUE {
                    attribute_enum
                } else {
                    None
                };
                write_item(child, ctx, depth + 1, out);
                if let (true, Value::TextString(name)) =
                    (child.tag == tag::ATTRIBUTE_NAME, &child.value)
                {
                    attribute_enum = spec::tag_by_name(name).and_then(spec::enum_for_tag);
                }
            }
            let _ = writeln!(out, "{indent}</{close}>");
        }
        value => {
            let enum_def = enum_def.or_else(|| spec::enum_for_tag(item.tag));
            let text = value_text(value, enum_def);
            let _ = writeln!(
                out,
                "{indent}<{open} type=\"{}\" value=\"{}\"/>",
                value.item_type().name(),
                escape(&text)
            );
        }
    }
}

/// The XML text of a non-structure value.
fn value_text(value: &Value, enum_def: Option<&EnumDef>) -> String {
    match value {
        Value::Structure(_) => String::new(),
        Value::Integer(v) => match enum_def.filter(|d| d.is_mask) {
            Some(mask) => mask_text(*v as u32, mask).unwrap_or_else(|| v.to_string()),
            None => v.to_string(),
        },
        Value::LongInteger(v) => v.to_string(),
        Value::BigInteger(b) => format!("0x{}", hex(b)),
        Value::Enumeration(v) => enum_def
            .filter(|d| !d.is_mask)
            .and_then(|d| d.name_of(*v))
            .map(spec::normalize)
            .unwrap_or_else(|| format!("0x{v:08X}")),
        Value::Boolean(v) => v.to_string(),
        Value::TextString(s) => s.to_string(),
        Value::ByteString(b) => hex(b),
        Value::DateTime(v) => format_date_time(*v),
        Value::Interval(v) => v.to_string(),
    }
}

fn mask_text(bits: u32, mask: &EnumDef) -> Option<String> {
    if bits == 0 {
        return None;
    }
    let mut names = Vec::new();
    let mut rest = bits;
    for (bit, name) in mask.values {
        if bits & bit != 0 {
            names.push(spec::normalize(name));
            rest &= !bit;
        }
    }
    if rest != 0 {
        names.push(format!("0x{rest:08X}"));
    }
    Some(names.join(" "))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn escape(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREATE: &str = r#"
<RequestMessage>
  <RequestHeader>
    <ProtocolVersion>
      <ProtocolVersionMajor type="Integer" value="1"/>
      <ProtocolVersionMinor type="Integer" value="4"/>
    </ProtocolVersion>
    <BatchCount type="Integer" value="1"/>
  </RequestHeader>
  <BatchItem>
    <Operation type="Enumeration" value="Create"/>
    <RequestPayload>
      <ObjectType type="Enumeration" value="SymmetricKey"/>
      <TemplateAttribute>
        <Attribute>
          <AttributeName type="TextString" value="Cryptographic Algorithm"/>
          <AttributeValue type="Enumeration" value="AES"/>
        </Attribute>
        <Attribute>
          <AttributeName type="TextString" value="Cryptographic Usage Mask"/>
          <AttributeValue type="Integer" value="Encrypt Decrypt"/>
        </Attribute>
      </TemplateAttribute>
    </RequestPayload>
  </BatchItem>
</RequestMessage>
"#;

    #[test]
    fn reads_enumerations_and_masks_in_attribute_context() {
        let item = parse_item(CREATE, &mut NoPlaceholders).unwrap();
        let payload = item
            .child(tag::BATCH_ITEM)
            .and_then(|b| b.child(tag::REQUEST_PAYLOAD))
            .unwrap();
        assert_eq!(
            payload.child(tag::OBJECT_TYPE).unwrap().value,
            Value::Enumeration(2)
        );
        let attrs = payload.child(tag::TEMPLATE_ATTRIBUTE).unwrap().children();
        assert_eq!(
            attrs[0].child(tag::ATTRIBUTE_VALUE).unwrap().value,
            Value::Enumeration(3)
        );
        assert_eq!(
            attrs[1].child(tag::ATTRIBUTE_VALUE).unwrap().value,
            Value::Integer(12)
        );
    }

    #[test]
    fn writes_what_it_reads() {
        let item = parse_item(CREATE, &mut NoPlaceholders).unwrap();
        let xml = to_xml(&item);
        assert!(
            xml.contains(r#"<AttributeValue type="Integer" value="Encrypt Decrypt"/>"#),
            "{xml}"
        );
        assert_eq!(parse_item(&xml, &mut NoPlaceholders).unwrap(), item);
    }

    #[test]
    fn unknown_tags_and_values_are_errors() {
        let e = parse_item(
            r#"<NoSuchTag type="Integer" value="1"/>"#,
            &mut NoPlaceholders,
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "Unknown tag name <NoSuchTag>");
        let e = parse_item(
            r#"<ObjectType type="Enumeration" value="Banana"/>"#,
            &mut NoPlaceholders,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "Value \"Banana\" of <ObjectType> is not a valid Enumeration"
        );
    }

    #[test]
    fn extension_tags_use_the_ttlv_element() {
        let item = Item::text(Tag::new(0x540001), "x");
        let xml = to_xml(&item);
        assert_eq!(
            xml.trim(),
            r#"<TTLV tag="0x540001" type="TextString" value="x"/>"#
        );
        assert_eq!(parse_item(&xml, &mut NoPlaceholders).unwrap(), item);
    }
}
