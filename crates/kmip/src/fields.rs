//! Reading typed values out of TTLV structures, with errors that name the field.

use crate::spec::ResultReason;
use crate::ttlv::{Bytes, DecodeError, Item, ItemType, Tag, Text, Value};

/// Why a TTLV message is not a valid KMIP message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("{parent} lacks the required field {field}")]
    MissingField { parent: Tag, field: Tag },
    #[error("{tag} must be a {expected:?}, not a {actual:?}")]
    WrongType {
        tag: Tag,
        expected: ItemType,
        actual: ItemType,
    },
    #[error("{parent} does not take the field {field}")]
    UnexpectedField { parent: Tag, field: Tag },
    #[error("Expected {expected}, found {actual}")]
    WrongTag { expected: Tag, actual: Tag },
    #[error("{tag} has no value 0x{value:08X}")]
    UnknownEnumeration { tag: Tag, value: u32 },
    #[error("Batch Count says {declared} but the message has {actual} batch items")]
    BatchCount { declared: i32, actual: usize },
    #[error("{0}")]
    Invalid(String),
    #[error("Cannot encode the message: {0}")]
    Encode(String),
}

impl MessageError {
    /// The result reason a server answers with for this error.
    pub fn result_reason(&self) -> ResultReason {
        match self {
            MessageError::Decode(_)
            | MessageError::BatchCount { .. }
            | MessageError::WrongTag { .. }
            | MessageError::Encode(_) => ResultReason::InvalidMessage,
            MessageError::MissingField { .. } => ResultReason::InvalidMessage,
            MessageError::WrongType { .. }
            | MessageError::UnexpectedField { .. }
            | MessageError::UnknownEnumeration { .. }
            | MessageError::Invalid(_) => ResultReason::InvalidField,
        }
    }
}

/// The children of one structure, consumed field by field. Fields may come in any order; a field
/// that nobody asks for is an error when [`Fields::finish`] is called.
#[derive(Debug)]
pub struct Fields<'a> {
    parent: Tag,
    items: &'a [Item],
    used: Vec<bool>,
}

impl<'a> Fields<'a> {
    /// The fields of `item`, which must be a structure with tag `expected`.
    pub fn of(item: &'a Item, expected: Tag) -> Result<Fields<'a>, MessageError> {
        if item.tag != expected {
            return Err(MessageError::WrongTag {
                expected,
                actual: item.tag,
            });
        }
        match &item.value {
            Value::Structure(items) => Ok(Fields {
                parent: item.tag,
                items,
                used: vec![false; items.len()],
            }),
            other => Err(MessageError::WrongType {
                tag: item.tag,
                expected: ItemType::Structure,
                actual: other.item_type(),
            }),
        }
    }

    pub fn parent(&self) -> Tag {
        self.parent
    }

    /// The first unused field with this tag.
    pub fn opt(&mut self, tag: Tag) -> Option<&'a Item> {
        let i = self
            .items
            .iter()
            .enumerate()
            .position(|(i, it)| it.tag == tag && !self.used[i])?;
        self.used[i] = true;
        Some(&self.items[i])
    }

    /// The first unused field with this tag, which must be there.
    pub fn req(&mut self, tag: Tag) -> Result<&'a Item, MessageError> {
        self.opt(tag).ok_or(MessageError::MissingField {
            parent: self.parent,
            field: tag,
        })
    }

    /// Every unused field with this tag, in order.
    pub fn all(&mut self, tag: Tag) -> Vec<&'a Item> {
        let mut out = Vec::new();
        for (i, it) in self.items.iter().enumerate() {
            if it.tag == tag && !self.used[i] {
                self.used[i] = true;
                out.push(it);
            }
        }
        out
    }

    /// Every field not used yet, in order.
    pub fn rest(&mut self) -> Vec<Item> {
        let mut out = Vec::new();
        for (i, it) in self.items.iter().enumerate() {
            if !self.used[i] {
                self.used[i] = true;
                out.push(it.clone());
            }
        }
        out
    }

    /// Fails if a field was not used.
    pub fn finish(self) -> Result<(), MessageError> {
        match self.used.iter().position(|u| !u) {
            Some(i) => Err(MessageError::UnexpectedField {
                parent: self.parent,
                field: self.items[i].tag,
            }),
            None => Ok(()),
        }
    }

    pub fn opt_int(&mut self, tag: Tag) -> Result<Option<i32>, MessageError> {
        self.opt(tag).map(int).transpose()
    }
    pub fn opt_text(&mut self, tag: Tag) -> Result<Option<String>, MessageError> {
        self.opt(tag).map(text).transpose()
    }
    pub fn opt_bool(&mut self, tag: Tag) -> Result<Option<bool>, MessageError> {
        self.opt(tag).map(boolean).transpose()
    }
    pub fn opt_date(&mut self, tag: Tag) -> Result<Option<i64>, MessageError> {
        self.opt(tag).map(date_time).transpose()
    }
    pub fn opt_enum(&mut self, tag: Tag) -> Result<Option<u32>, MessageError> {
        self.opt(tag).map(enumeration).transpose()
    }
    pub fn opt_bytes(&mut self, tag: Tag) -> Result<Option<Bytes>, MessageError> {
        self.opt(tag).map(bytes).transpose()
    }
    pub fn req_int(&mut self, tag: Tag) -> Result<i32, MessageError> {
        int(self.req(tag)?)
    }
    pub fn req_text(&mut self, tag: Tag) -> Result<String, MessageError> {
        text(self.req(tag)?)
    }
    pub fn req_enum(&mut self, tag: Tag) -> Result<u32, MessageError> {
        enumeration(self.req(tag)?)
    }
}

fn wrong(item: &Item, expected: ItemType) -> MessageError {
    MessageError::WrongType {
        tag: item.tag,
        expected,
        actual: item.value.item_type(),
    }
}

pub fn int(item: &Item) -> Result<i32, MessageError> {
    match item.value {
        Value::Integer(v) => Ok(v),
        _ => Err(wrong(item, ItemType::Integer)),
    }
}

pub fn enumeration(item: &Item) -> Result<u32, MessageError> {
    match item.value {
        Value::Enumeration(v) => Ok(v),
        _ => Err(wrong(item, ItemType::Enumeration)),
    }
}

pub fn boolean(item: &Item) -> Result<bool, MessageError> {
    match item.value {
        Value::Boolean(v) => Ok(v),
        _ => Err(wrong(item, ItemType::Boolean)),
    }
}

pub fn date_time(item: &Item) -> Result<i64, MessageError> {
    match item.value {
        Value::DateTime(v) => Ok(v),
        _ => Err(wrong(item, ItemType::DateTime)),
    }
}

pub fn text(item: &Item) -> Result<String, MessageError> {
    match &item.value {
        Value::TextString(v) => Ok(v.to_string()),
        _ => Err(wrong(item, ItemType::TextString)),
    }
}

pub fn secret_text(item: &Item) -> Result<Text, MessageError> {
    match &item.value {
        Value::TextString(v) => Ok(v.clone()),
        _ => Err(wrong(item, ItemType::TextString)),
    }
}

pub fn bytes(item: &Item) -> Result<Bytes, MessageError> {
    match &item.value {
        Value::ByteString(v) => Ok(v.clone()),
        _ => Err(wrong(item, ItemType::ByteString)),
    }
}

/// Reads an enumeration as a typed value.
pub fn typed_enum<T>(item: &Item, from: fn(u32) -> Option<T>) -> Result<T, MessageError> {
    let v = enumeration(item)?;
    from(v).ok_or(MessageError::UnknownEnumeration {
        tag: item.tag,
        value: v,
    })
}

/// Pushes an optional item.
pub fn push_opt<T>(out: &mut Vec<Item>, value: &Option<T>, make: impl FnOnce(&T) -> Item) {
    if let Some(v) = value {
        out.push(make(v));
    }
}
