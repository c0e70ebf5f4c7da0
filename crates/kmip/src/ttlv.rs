//! TTLV, the tag-type-length-value encoding of KMIP 1.x (KMIP 1.4, section 9.1).
//!
//! Every item is an 8-byte header (3-byte tag, 1-byte type, 4-byte big-endian length) followed by
//! the value, padded with zero bytes to a multiple of eight. Structures contain further items.
//!
//! The decoder works on a complete message in memory and never allocates more than the input
//! holds: every length is checked against the bytes that are left (and against [`Limits`]) before
//! anything is read or allocated. [`message_len`] reads the length from the first eight bytes of a
//! message, so that a transport knows how much to read before it allocates.

use std::fmt;

use zeroize::Zeroizing;

/// The length of an item's header: tag, type and length.
pub const HEADER_LEN: usize = 8;

/// A KMIP tag: a 24-bit number. Standard tags are `0x42xxxx`, extensions `0x54xxxx`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(u32);

impl Tag {
    /// The tag with this number. Numbers wider than 24 bits are a programming error and fail to
    /// compile in a constant, or panic at run time; use [`Tag::from_u32`] for untrusted input.
    pub const fn new(value: u32) -> Tag {
        assert!(value <= 0x00FF_FFFF, "a KMIP tag has 24 bits");
        Tag(value)
    }

    /// The tag with this number, if it fits in 24 bits.
    pub const fn from_u32(value: u32) -> Option<Tag> {
        if value <= 0x00FF_FFFF {
            Some(Tag(value))
        } else {
            None
        }
    }

    /// The tag's number.
    pub const fn value(self) -> u32 {
        self.0
    }

    /// Whether the tag is in the range KMIP reserves for extensions (`0x54xxxx`).
    pub const fn is_extension(self) -> bool {
        self.0 >> 16 == 0x54
    }

    /// The name the specification gives the tag, if it is a standard tag.
    pub fn spec_name(self) -> Option<&'static str> {
        crate::spec::tag_name(self)
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.spec_name() {
            Some(name) => write!(f, "{name} (0x{:06X})", self.0),
            None => write!(f, "0x{:06X}", self.0),
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The type byte of an item.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
pub enum ItemType {
    Structure = 0x01,
    Integer = 0x02,
    LongInteger = 0x03,
    BigInteger = 0x04,
    Enumeration = 0x05,
    Boolean = 0x06,
    TextString = 0x07,
    ByteString = 0x08,
    DateTime = 0x09,
    Interval = 0x0A,
}

impl ItemType {
    /// The type for a type byte, if KMIP 1.x defines it.
    pub const fn from_u8(byte: u8) -> Option<ItemType> {
        Some(match byte {
            0x01 => ItemType::Structure,
            0x02 => ItemType::Integer,
            0x03 => ItemType::LongInteger,
            0x04 => ItemType::BigInteger,
            0x05 => ItemType::Enumeration,
            0x06 => ItemType::Boolean,
            0x07 => ItemType::TextString,
            0x08 => ItemType::ByteString,
            0x09 => ItemType::DateTime,
            0x0A => ItemType::Interval,
            _ => return None,
        })
    }

    /// The name the XML encoding uses for the type (`type="…"`).
    pub const fn name(self) -> &'static str {
        match self {
            ItemType::Structure => "Structure",
            ItemType::Integer => "Integer",
            ItemType::LongInteger => "LongInteger",
            ItemType::BigInteger => "BigInteger",
            ItemType::Enumeration => "Enumeration",
            ItemType::Boolean => "Boolean",
            ItemType::TextString => "TextString",
            ItemType::ByteString => "ByteString",
            ItemType::DateTime => "DateTime",
            ItemType::Interval => "Interval",
        }
    }

    /// The type with this XML name.
    pub fn from_name(name: &str) -> Option<ItemType> {
        [
            ItemType::Structure,
            ItemType::Integer,
            ItemType::LongInteger,
            ItemType::BigInteger,
            ItemType::Enumeration,
            ItemType::Boolean,
            ItemType::TextString,
            ItemType::ByteString,
            ItemType::DateTime,
            ItemType::Interval,
        ]
        .into_iter()
        .find(|t| t.name() == name)
    }

    /// The exact value length a fixed-size type must have, `None` for variable-length types.
    const fn fixed_len(self) -> Option<u32> {
        match self {
            ItemType::Integer | ItemType::Enumeration | ItemType::Interval => Some(4),
            ItemType::LongInteger | ItemType::Boolean | ItemType::DateTime => Some(8),
            _ => None,
        }
    }
}

/// Bytes that are wiped from memory when dropped. Byte strings carry key material, so their
/// `Debug` output shows the length only.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Bytes(Zeroizing<Vec<u8>>);

impl Bytes {
    pub fn new(bytes: Vec<u8>) -> Bytes {
        Bytes(Zeroizing::new(bytes))
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(bytes: Vec<u8>) -> Bytes {
        Bytes::new(bytes)
    }
}

impl From<&[u8]> for Bytes {
    fn from(bytes: &[u8]) -> Bytes {
        Bytes::new(bytes.to_vec())
    }
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

/// Text that is wiped from memory when dropped (text strings carry passwords).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Text(Zeroizing<String>);

impl Text {
    pub fn new(text: String) -> Text {
        Text(Zeroizing::new(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for Text {
    fn from(text: String) -> Text {
        Text::new(text)
    }
}

impl From<&str> for Text {
    fn from(text: &str) -> Text {
        Text::new(text.to_owned())
    }
}

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// The value of an item.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Value {
    Structure(Vec<Item>),
    Integer(i32),
    LongInteger(i64),
    /// Big-endian two's complement, as on the wire. The encoder sign-extends to a multiple of
    /// eight bytes; the decoder keeps what it read.
    BigInteger(Vec<u8>),
    Enumeration(u32),
    Boolean(bool),
    TextString(Text),
    ByteString(Bytes),
    /// Seconds since the Unix epoch.
    DateTime(i64),
    /// Seconds.
    Interval(u32),
}

impl Value {
    pub fn item_type(&self) -> ItemType {
        match self {
            Value::Structure(_) => ItemType::Structure,
            Value::Integer(_) => ItemType::Integer,
            Value::LongInteger(_) => ItemType::LongInteger,
            Value::BigInteger(_) => ItemType::BigInteger,
            Value::Enumeration(_) => ItemType::Enumeration,
            Value::Boolean(_) => ItemType::Boolean,
            Value::TextString(_) => ItemType::TextString,
            Value::ByteString(_) => ItemType::ByteString,
            Value::DateTime(_) => ItemType::DateTime,
            Value::Interval(_) => ItemType::Interval,
        }
    }
}

/// One TTLV item: a tag and a value.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Item {
    pub tag: Tag,
    pub value: Value,
}

impl Item {
    pub fn new(tag: Tag, value: Value) -> Item {
        Item { tag, value }
    }

    pub fn structure(tag: Tag, items: Vec<Item>) -> Item {
        Item::new(tag, Value::Structure(items))
    }

    pub fn integer(tag: Tag, v: i32) -> Item {
        Item::new(tag, Value::Integer(v))
    }

    pub fn long_integer(tag: Tag, v: i64) -> Item {
        Item::new(tag, Value::LongInteger(v))
    }

    pub fn enumeration(tag: Tag, v: u32) -> Item {
        Item::new(tag, Value::Enumeration(v))
    }

    pub fn boolean(tag: Tag, v: bool) -> Item {
        Item::new(tag, Value::Boolean(v))
    }

    pub fn text(tag: Tag, v: impl Into<Text>) -> Item {
        Item::new(tag, Value::TextString(v.into()))
    }

    pub fn bytes(tag: Tag, v: impl Into<Bytes>) -> Item {
        Item::new(tag, Value::ByteString(v.into()))
    }

    pub fn date_time(tag: Tag, v: i64) -> Item {
        Item::new(tag, Value::DateTime(v))
    }

    pub fn interval(tag: Tag, v: u32) -> Item {
        Item::new(tag, Value::Interval(v))
    }

    /// The children of a structure; empty for other items.
    pub fn children(&self) -> &[Item] {
        match &self.value {
            Value::Structure(items) => items,
            _ => &[],
        }
    }

    /// The first child with this tag.
    pub fn child(&self, tag: Tag) -> Option<&Item> {
        self.children().iter().find(|i| i.tag == tag)
    }

    /// The length of the item's encoding, header and padding included.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + padded(value_len(&self.value))
    }
}

/// Limits that protect a decoder from hostile input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The largest message accepted, header included.
    pub max_message_len: usize,
    /// The deepest nesting of structures accepted (the message itself is depth 1).
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_message_len: 4 * 1024 * 1024,
            max_depth: 32,
        }
    }
}

/// What is wrong with a TTLV encoding.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeErrorKind {
    #[error("Message ends early: {needed} more bytes expected, {available} present")]
    Truncated { needed: usize, available: usize },
    #[error("Unknown item type 0x{0:02X}")]
    UnknownType(u8),
    #[error("A {item_type:?} must have length {expected}, not {actual}")]
    BadLength {
        item_type: ItemType,
        expected: u32,
        actual: u32,
    },
    #[error("A Big Integer's length must be a positive multiple of 8, not {0}")]
    BigIntegerLength(u32),
    #[error("A Structure's length must be a multiple of 8, not {0}")]
    StructureLength(u32),
    #[error("Padding bytes are not zero")]
    NonZeroPadding,
    #[error("Boolean value must be 0 or 1, not {0}")]
    InvalidBoolean(u64),
    #[error("Text String is not valid UTF-8")]
    InvalidUtf8,
    #[error("Item of {length} bytes runs past the end of its structure ({available} bytes left)")]
    Overrun { length: u64, available: usize },
    #[error("Message of {length} bytes exceeds the limit of {limit} bytes")]
    TooLarge { length: u64, limit: usize },
    #[error("Structures nested deeper than {limit} levels")]
    TooDeep { limit: usize },
    #[error("{0} bytes follow the end of the message")]
    TrailingBytes(usize),
    #[error("A message must be a Structure, not a {0:?}")]
    NotAStructure(ItemType),
}

/// A TTLV decoding error: what is wrong, where (byte offset from the start of the message), and in
/// which item.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} (at byte {offset}{})", tag.map(|t| format!(", in {t}")).unwrap_or_default())]
pub struct DecodeError {
    pub offset: usize,
    pub tag: Option<Tag>,
    pub kind: DecodeErrorKind,
}

/// A TTLV encoding error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("Item {tag} is {length} bytes long; TTLV lengths are limited to 4 GiB")]
    TooLong { tag: Tag, length: usize },
}

/// Reads the total length (header included) of the message whose first eight bytes are `header`.
/// A transport calls this before it reads or allocates the rest.
pub fn message_len(header: &[u8; HEADER_LEN], limits: &Limits) -> Result<usize, DecodeError> {
    let tag = Tag(u32::from_be_bytes([0, header[0], header[1], header[2]]));
    let err = |kind| DecodeError {
        offset: 0,
        tag: Some(tag),
        kind,
    };
    let item_type =
        ItemType::from_u8(header[3]).ok_or(err(DecodeErrorKind::UnknownType(header[3])))?;
    if item_type != ItemType::Structure {
        return Err(err(DecodeErrorKind::NotAStructure(item_type)));
    }
    let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    if !len.is_multiple_of(8) {
        return Err(err(DecodeErrorKind::StructureLength(len)));
    }
    let total = HEADER_LEN as u64 + u64::from(len);
    if total > limits.max_message_len as u64 {
        return Err(err(DecodeErrorKind::TooLarge {
            length: total,
            limit: limits.max_message_len,
        }));
    }
    Ok(total as usize)
}

/// Decodes one message: a single structure that fills `bytes` exactly.
pub fn decode_message(bytes: &[u8], limits: &Limits) -> Result<Item, DecodeError> {
    if bytes.len() > limits.max_message_len {
        return Err(DecodeError {
            offset: 0,
            tag: None,
            kind: DecodeErrorKind::TooLarge {
                length: bytes.len() as u64,
                limit: limits.max_message_len,
            },
        });
    }
    let mut reader = Reader {
        buf: bytes,
        pos: 0,
        limits,
    };
    let item = reader.item(bytes.len(), 1)?;
    if let Value::Structure(_) = item.value {
    } else {
        return Err(DecodeError {
            offset: 0,
            tag: Some(item.tag),
            kind: DecodeErrorKind::NotAStructure(item.value.item_type()),
        });
    }
    if reader.pos != bytes.len() {
        return Err(DecodeError {
            offset: reader.pos,
            tag: None,
            kind: DecodeErrorKind::TrailingBytes(bytes.len() - reader.pos),
        });
    }
    Ok(item)
}

/// Decodes one item of any type that fills `bytes` exactly.
pub fn decode_item(bytes: &[u8], limits: &Limits) -> Result<Item, DecodeError> {
    let mut reader = Reader {
        buf: bytes,
        pos: 0,
        limits,
    };
    let item = reader.item(bytes.len(), 1)?;
    if reader.pos != bytes.len() {
        return Err(DecodeError {
            offset: reader.pos,
            tag: None,
            kind: DecodeErrorKind::TrailingBytes(bytes.len() - reader.pos),
        });
    }
    Ok(item)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    limits: &'a Limits,
}

impl Reader<'_> {
    /// Reads one item that must end at or before `end`.
    fn item(&mut self, end: usize, depth: usize) -> Result<Item, DecodeError> {
        let start = self.pos;
        let available = end - start;
        if available < HEADER_LEN {
            return Err(DecodeError {
                offset: start,
                tag: None,
                kind: DecodeErrorKind::Truncated {
                    needed: HEADER_LEN,
                    available,
                },
            });
        }
        let h = &self.buf[start..start + HEADER_LEN];
        let tag = Tag(u32::from_be_bytes([0, h[0], h[1], h[2]]));
        let err = |offset, kind| DecodeError {
            offset,
            tag: Some(tag),
            kind,
        };
        let item_type =
            ItemType::from_u8(h[3]).ok_or(err(start + 3, DecodeErrorKind::UnknownType(h[3])))?;
        let len = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        if let Some(expected) = item_type.fixed_len() {
            if len != expected {
                return Err(err(
                    start + 4,
                    DecodeErrorKind::BadLength {
                        item_type,
                        expected,
                        actual: len,
                    },
                ));
            }
        }
        let padded_len = padded(len as usize);
        let body_start = start + HEADER_LEN;
        let body_available = end - body_start;
        if padded_len > body_available {
            // Inside a parent structure this is an overrun; at the top level, a short read.
            let kind = if end == self.buf.len() {
                DecodeErrorKind::Truncated {
                    needed: padded_len,
                    available: body_available,
                }
            } else {
                DecodeErrorKind::Overrun {
                    length: padded_len as u64,
                    available: body_available,
                }
            };
            return Err(err(start + 4, kind));
        }
        let body = &self.buf[body_start..body_start + len as usize];
        let padding = &self.buf[body_start + len as usize..body_start + padded_len];
        if padding.iter().any(|&b| b != 0) {
            return Err(err(
                body_start + len as usize,
                DecodeErrorKind::NonZeroPadding,
            ));
        }
        let value = match item_type {
            ItemType::Structure => {
                if !len.is_multiple_of(8) {
                    return Err(err(start + 4, DecodeErrorKind::StructureLength(len)));
                }
                if depth >= self.limits.max_depth {
                    return Err(err(
                        start,
                        DecodeErrorKind::TooDeep {
                            limit: self.limits.max_depth,
                        },
                    ));
                }
                let struct_end = body_start + len as usize;
                self.pos = body_start;
                let mut children = Vec::new();
                while self.pos < struct_end {
                    children.push(self.item(struct_end, depth + 1)?);
                }
                Value::Structure(children)
            }
            ItemType::Integer => Value::Integer(i32::from_be_bytes(be4(body))),
            ItemType::Enumeration => Value::Enumeration(u32::from_be_bytes(be4(body))),
            ItemType::Interval => Value::Interval(u32::from_be_bytes(be4(body))),
            ItemType::LongInteger => Value::LongInteger(i64::from_be_bytes(be8(body))),
            ItemType::DateTime => Value::DateTime(i64::from_be_bytes(be8(body))),
            ItemType::Boolean => match u64::from_be_bytes(be8(body)) {
                0 => Value::Boolean(false),
                1 => Value::Boolean(true),
                other => return Err(err(body_start, DecodeErrorKind::InvalidBoolean(other))),
            },
            ItemType::BigInteger => {
                if !len.is_multiple_of(8) || len == 0 {
                    return Err(err(start + 4, DecodeErrorKind::BigIntegerLength(len)));
                }
                Value::BigInteger(body.to_vec())
            }
            ItemType::TextString => match std::str::from_utf8(body) {
                Ok(s) => Value::TextString(Text::new(s.to_owned())),
                Err(e) => {
                    return Err(err(
                        body_start + e.valid_up_to(),
                        DecodeErrorKind::InvalidUtf8,
                    ));
                }
            },
            ItemType::ByteString => Value::ByteString(Bytes::new(body.to_vec())),
        };
        self.pos = body_start + padded_len;
        Ok(Item { tag, value })
    }
}

fn be4(b: &[u8]) -> [u8; 4] {
    let mut a = [0; 4];
    a.copy_from_slice(&b[..4]);
    a
}

fn be8(b: &[u8]) -> [u8; 8] {
    let mut a = [0; 8];
    a.copy_from_slice(&b[..8]);
    a
}

const fn padded(len: usize) -> usize {
    len.div_ceil(8) * 8
}

/// The unpadded length of a value as it is encoded.
fn value_len(value: &Value) -> usize {
    match value {
        Value::Structure(items) => items.iter().map(Item::encoded_len).sum(),
        Value::Integer(_) | Value::Enumeration(_) | Value::Interval(_) => 4,
        Value::LongInteger(_) | Value::Boolean(_) | Value::DateTime(_) => 8,
        Value::BigInteger(b) => padded(b.len().max(1)),
        Value::TextString(s) => s.len(),
        Value::ByteString(b) => b.len(),
    }
}

/// Encodes an item, appending to `out`.
pub fn encode(item: &Item, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    out.reserve(item.encoded_len());
    encode_into(item, out)
}

/// Encodes an item into a new buffer.
pub fn to_bytes(item: &Item) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(item.encoded_len());
    encode_into(item, &mut out)?;
    Ok(out)
}

fn encode_into(item: &Item, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let len = value_len(&item.value);
    let len32 = u32::try_from(len).map_err(|_| EncodeError::TooLong {
        tag: item.tag,
        length: len,
    })?;
    out.extend_from_slice(&item.tag.0.to_be_bytes()[1..]);
    out.push(item.value.item_type() as u8);
    out.extend_from_slice(&len32.to_be_bytes());
    match &item.value {
        Value::Structure(items) => {
            for child in items {
                encode_into(child, out)?;
            }
        }
        Value::Integer(v) => out.extend_from_slice(&v.to_be_bytes()),
        Value::Enumeration(v) | Value::Interval(v) => out.extend_from_slice(&v.to_be_bytes()),
        Value::LongInteger(v) | Value::DateTime(v) => out.extend_from_slice(&v.to_be_bytes()),
        Value::Boolean(v) => out.extend_from_slice(&u64::from(*v).to_be_bytes()),
        Value::BigInteger(b) => {
            let fill = if b.first().is_some_and(|&x| x & 0x80 != 0) {
                0xFF
            } else {
                0
            };
            out.resize(out.len() + (len - b.len()), fill);
            out.extend_from_slice(b);
        }
        Value::TextString(s) => out.extend_from_slice(s.as_bytes()),
        Value::ByteString(b) => out.extend_from_slice(b),
    }
    out.resize(out.len() + (padded(len) - len), 0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Tag = Tag::new(0x420020);

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // The encoding examples of KMIP 1.4 section 9.1.2.
    #[test]
    fn spec_examples_encode_and_decode() {
        let cases = [
            (Item::integer(T, 8), "42002002000000040000000800000000"),
            (
                Item::long_integer(T, 123456789000000000),
                "420020030000000801B69B4BA5749200",
            ),
            (
                Item::new(
                    T,
                    Value::BigInteger(hex("0000000003FD35EB6BC2DF4618080000")),
                ),
                "42002004000000100000000003FD35EB6BC2DF4618080000",
            ),
            (
                Item::enumeration(T, 255),
                "4200200500000004000000FF00000000",
            ),
            (Item::boolean(T, true), "42002006000000080000000000000001"),
            (
                Item::text(T, "Hello World"),
                "420020070000000B48656C6C6F20576F726C640000000000",
            ),
            (
                Item::bytes(T, vec![1, 2, 3]),
                "42002008000000030102030000000000",
            ),
            (
                Item::date_time(T, 0x47DA67F8),
                "42002009000000080000000047DA67F8",
            ),
            (
                Item::interval(T, 864000),
                "4200200A00000004000D2F0000000000",
            ),
            (
                Item::structure(
                    T,
                    vec![
                        Item::enumeration(Tag::new(0x420004), 254),
                        Item::integer(Tag::new(0x420005), 255),
                    ],
                ),
                "42002001000000204200040500000004000000FE000000004200050200000004000000FF00000000",
            ),
        ];
        for (item, wire) in cases {
            let wire = hex(wire);
            assert_eq!(to_bytes(&item).unwrap(), wire, "encoding {item:?}");
            assert_eq!(decode_item(&wire, &Limits::default()).unwrap(), item);
        }
    }

    #[test]
    fn big_integer_is_sign_extended_to_eight_bytes() {
        let item = Item::new(T, Value::BigInteger(vec![0x80, 0x01]));
        assert_eq!(
            to_bytes(&item).unwrap(),
            hex("4200200400000008FFFFFFFFFFFF8001")
        );
        let item = Item::new(T, Value::BigInteger(vec![]));
        assert_eq!(
            to_bytes(&item).unwrap(),
            hex("42002004000000080000000000000000")
        );
    }

    fn decode_err(wire: &str) -> DecodeError {
        decode_item(&hex(wire), &Limits::default()).unwrap_err()
    }

    #[test]
    fn rejects_wrong_fixed_lengths() {
        let e = decode_err("42002002000000080000000800000000");
        assert_eq!(e.offset, 4);
        assert_eq!(e.tag, Some(T));
        assert!(matches!(
            e.kind,
            DecodeErrorKind::BadLength {
                expected: 4,
                actual: 8,
                ..
            }
        ));
    }

    #[test]
    fn rejects_missing_and_nonzero_padding() {
        let e = decode_err("420020020000000400000008");
        assert!(matches!(
            e.kind,
            DecodeErrorKind::Truncated {
                needed: 8,
                available: 4
            }
        ));
        let e = decode_err("42002002000000040000000800000001");
        assert_eq!(e.kind, DecodeErrorKind::NonZeroPadding);
        assert_eq!(e.offset, 12);
    }

    #[test]
    fn rejects_bad_booleans_utf8_and_types() {
        assert_eq!(
            decode_err("42002006000000080000000000000002").kind,
            DecodeErrorKind::InvalidBoolean(2)
        );
        assert_eq!(
            decode_err("4200200700000002C328000000000000").kind,
            DecodeErrorKind::InvalidUtf8
        );
        assert_eq!(
            decode_err("4200200B000000040000000000000000").kind,
            DecodeErrorKind::UnknownType(0x0B)
        );
    }

    #[test]
    fn rejects_children_that_overrun_their_structure() {
        // The structure claims 16 bytes; its child claims 16 bytes of value.
        let e = decode_err("4200200100000010 4200040800000010 0000000000000000 0000000000000000");
        assert!(matches!(e.kind, DecodeErrorKind::Overrun { .. }), "{e}");
        assert_eq!(e.offset, 12);
    }

    #[test]
    fn rejects_huge_lengths_without_allocating() {
        // A byte string that claims 4 GiB - 1 in a 16-byte message.
        let e = decode_err("42002008FFFFFFFF0000000000000000");
        assert!(matches!(e.kind, DecodeErrorKind::Truncated { .. }));
        let header = hex("42007801FFFFFFF8");
        let e = message_len(&header.try_into().unwrap(), &Limits::default()).unwrap_err();
        assert!(matches!(e.kind, DecodeErrorKind::TooLarge { .. }));
    }

    #[test]
    fn rejects_empty_big_integers() {
        // Found by fuzzing: an empty Big Integer would re-encode as eight zero bytes.
        assert_eq!(
            decode_err("4200200400000000").kind,
            DecodeErrorKind::BigIntegerLength(0)
        );
    }

    #[test]
    fn rejects_nesting_bombs() {
        let mut item = Item::integer(T, 1);
        for _ in 0..100 {
            item = Item::structure(T, vec![item]);
        }
        let wire = to_bytes(&item).unwrap();
        let e = decode_message(&wire, &Limits::default()).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::TooDeep { limit: 32 });
    }

    #[test]
    fn rejects_trailing_bytes_and_non_structures() {
        let mut wire = to_bytes(&Item::structure(T, vec![])).unwrap();
        wire.extend_from_slice(&[0; 8]);
        assert_eq!(
            decode_message(&wire, &Limits::default()).unwrap_err().kind,
            DecodeErrorKind::TrailingBytes(8)
        );
        let wire = to_bytes(&Item::integer(T, 1)).unwrap();
        assert_eq!(
            decode_message(&wire, &Limits::default()).unwrap_err().kind,
            DecodeErrorKind::NotAStructure(ItemType::Integer)
        );
    }

    #[test]
    fn errors_name_offset_and_tag() {
        let e = decode_err("42000A0700000002C328000000000000");
        assert_eq!(
            e.to_string(),
            "Text String is not valid UTF-8 (at byte 8, in Attribute Name (0x42000A))"
        );
    }

    #[test]
    fn byte_strings_do_not_show_in_debug_output() {
        let item = Item::bytes(T, vec![0xAB; 32]);
        let shown = format!("{item:?}");
        assert!(shown.contains("<32 bytes>"));
        assert!(!shown.contains("171"));
    }
}
