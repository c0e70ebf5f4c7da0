//! KMIP 1.0–1.4 request and response messages: headers, batch items and the payloads of the
//! operations Tresor speaks. Payloads of other operations are kept as raw TTLV, so every message
//! decodes and encodes again unchanged.

use crate::fields::{self, push_opt, Fields, MessageError};
use crate::spec::{
    tag, BatchErrorContinuationOption, ObjectType, Operation, QueryFunction, ResultReason,
    ResultStatus, RevocationReasonCode,
};
use crate::ttlv::{self, Bytes, Item, Limits, Tag, Value};

/// A KMIP protocol version. Versions order by major, then minor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProtocolVersion {
    pub major: i32,
    pub minor: i32,
}

impl ProtocolVersion {
    pub const V1_0: ProtocolVersion = ProtocolVersion::new(1, 0);
    pub const V1_1: ProtocolVersion = ProtocolVersion::new(1, 1);
    pub const V1_2: ProtocolVersion = ProtocolVersion::new(1, 2);
    pub const V1_3: ProtocolVersion = ProtocolVersion::new(1, 3);
    pub const V1_4: ProtocolVersion = ProtocolVersion::new(1, 4);

    pub const fn new(major: i32, minor: i32) -> ProtocolVersion {
        ProtocolVersion { major, minor }
    }

    fn to_item(self) -> Item {
        Item::structure(
            tag::PROTOCOL_VERSION,
            vec![
                Item::integer(tag::PROTOCOL_VERSION_MAJOR, self.major),
                Item::integer(tag::PROTOCOL_VERSION_MINOR, self.minor),
            ],
        )
    }

    fn from_item(item: &Item) -> Result<ProtocolVersion, MessageError> {
        let mut f = Fields::of(item, tag::PROTOCOL_VERSION)?;
        let v = ProtocolVersion {
            major: f.req_int(tag::PROTOCOL_VERSION_MAJOR)?,
            minor: f.req_int(tag::PROTOCOL_VERSION_MINOR)?,
        };
        f.finish()?;
        Ok(v)
    }
}

impl std::fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// An attribute: a name, an optional index, and a value kept as TTLV, so that attributes this
/// library does not know (custom `x-`/`y-` attributes among them) pass through unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attribute {
    pub name: String,
    pub index: Option<i32>,
    pub value: Value,
}

impl Attribute {
    pub fn new(name: impl Into<String>, value: Value) -> Attribute {
        Attribute {
            name: name.into(),
            index: None,
            value,
        }
    }

    pub fn to_item(&self) -> Item {
        let mut items = vec![Item::text(tag::ATTRIBUTE_NAME, self.name.as_str())];
        push_opt(&mut items, &self.index, |i| {
            Item::integer(tag::ATTRIBUTE_INDEX, *i)
        });
        items.push(Item::new(tag::ATTRIBUTE_VALUE, self.value.clone()));
        Item::structure(tag::ATTRIBUTE, items)
    }

    pub fn from_item(item: &Item) -> Result<Attribute, MessageError> {
        let mut f = Fields::of(item, tag::ATTRIBUTE)?;
        let name = f.req_text(tag::ATTRIBUTE_NAME)?;
        let index = f.opt_int(tag::ATTRIBUTE_INDEX)?;
        let value = f.req(tag::ATTRIBUTE_VALUE)?.value.clone();
        f.finish()?;
        Ok(Attribute { name, index, value })
    }

    /// A text value.
    pub fn text(&self) -> Option<&str> {
        match &self.value {
            Value::TextString(t) => Some(t),
            _ => None,
        }
    }
}

/// A Template-Attribute (and its Common/Private Key/Public Key forms): template names and
/// attributes.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TemplateAttribute {
    /// Names of templates, kept as raw `Name` structures.
    pub names: Vec<Item>,
    pub attributes: Vec<Attribute>,
}

impl TemplateAttribute {
    pub fn to_item(&self, tag: Tag) -> Item {
        let mut items = self.names.clone();
        items.extend(self.attributes.iter().map(Attribute::to_item));
        Item::structure(tag, items)
    }

    pub fn from_item(item: &Item, t: Tag) -> Result<TemplateAttribute, MessageError> {
        let mut f = Fields::of(item, t)?;
        let names = f.all(tag::NAME).into_iter().cloned().collect();
        let attributes = f
            .all(tag::ATTRIBUTE)
            .into_iter()
            .map(Attribute::from_item)
            .collect::<Result<_, _>>()?;
        f.finish()?;
        Ok(TemplateAttribute { names, attributes })
    }
}

/// A managed object as it travels in Register and Get: its type and its structure (a Symmetric
/// Key, Secret Data, Opaque Object, certificate, …), kept as TTLV.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagedObject {
    pub object_type: u32,
    pub item: Item,
}

/// The tag of the structure that carries an object of this type.
pub fn object_tag(object_type: ObjectType) -> Tag {
    match object_type {
        ObjectType::Certificate => tag::CERTIFICATE,
        ObjectType::SymmetricKey => tag::SYMMETRIC_KEY,
        ObjectType::PublicKey => tag::PUBLIC_KEY,
        ObjectType::PrivateKey => tag::PRIVATE_KEY,
        ObjectType::SplitKey => tag::SPLIT_KEY,
        ObjectType::Template => tag::TEMPLATE,
        ObjectType::SecretData => tag::SECRET_DATA,
        ObjectType::OpaqueObject => tag::OPAQUE_OBJECT,
        ObjectType::PgpKey => tag::PGP_KEY,
    }
}

fn take_object(f: &mut Fields<'_>, object_type: u32) -> Result<ManagedObject, MessageError> {
    let t = ObjectType::from_u32(object_type).map(object_tag).ok_or(
        MessageError::UnknownEnumeration {
            tag: tag::OBJECT_TYPE,
            value: object_type,
        },
    )?;
    let item = f.req(t)?.clone();
    Ok(ManagedObject { object_type, item })
}

/// Builds a raw symmetric key object (Key Format Type Raw).
pub fn symmetric_key(algorithm: u32, length_bits: i32, material: Bytes) -> ManagedObject {
    ManagedObject {
        object_type: ObjectType::SymmetricKey as u32,
        item: Item::structure(
            tag::SYMMETRIC_KEY,
            vec![Item::structure(
                tag::KEY_BLOCK,
                vec![
                    Item::enumeration(tag::KEY_FORMAT_TYPE, crate::spec::KeyFormatType::Raw as u32),
                    Item::structure(
                        tag::KEY_VALUE,
                        vec![Item::new(tag::KEY_MATERIAL, Value::ByteString(material))],
                    ),
                    Item::enumeration(tag::CRYPTOGRAPHIC_ALGORITHM, algorithm),
                    Item::integer(tag::CRYPTOGRAPHIC_LENGTH, length_bits),
                ],
            )],
        ),
    }
}

/// The key material of a key object with a plain (unwrapped) byte-string key value.
pub fn key_material(object: &Item) -> Option<&Bytes> {
    let block = object.child(tag::KEY_BLOCK)?;
    let value = block.child(tag::KEY_VALUE)?;
    match &value.child(tag::KEY_MATERIAL)?.value {
        Value::ByteString(b) => Some(b),
        _ => None,
    }
}

/// The Revocation Reason of a Revoke request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevocationReason {
    pub code: u32,
    pub message: Option<String>,
}

impl RevocationReason {
    fn to_item(&self) -> Item {
        let mut items = vec![Item::enumeration(tag::REVOCATION_REASON_CODE, self.code)];
        push_opt(&mut items, &self.message, |m| {
            Item::text(tag::REVOCATION_MESSAGE, m.as_str())
        });
        Item::structure(tag::REVOCATION_REASON, items)
    }

    fn from_item(item: &Item) -> Result<RevocationReason, MessageError> {
        let mut f = Fields::of(item, tag::REVOCATION_REASON)?;
        let r = RevocationReason {
            code: f.req_enum(tag::REVOCATION_REASON_CODE)?,
            message: f.opt_text(tag::REVOCATION_MESSAGE)?,
        };
        f.finish()?;
        Ok(r)
    }

    pub fn code(&self) -> Option<RevocationReasonCode> {
        RevocationReasonCode::from_u32(self.code)
    }
}

/// The payload of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestPayload {
    DiscoverVersions {
        versions: Vec<ProtocolVersion>,
    },
    Query {
        functions: Vec<u32>,
    },
    Create {
        object_type: u32,
        template: TemplateAttribute,
    },
    Register {
        object_type: u32,
        template: TemplateAttribute,
        object: ManagedObject,
    },
    ReKey {
        uid: Option<String>,
        offset: Option<u32>,
        template: Option<TemplateAttribute>,
    },
    Locate {
        maximum_items: Option<i32>,
        offset_items: Option<i32>,
        storage_status_mask: Option<i32>,
        object_group_member: Option<u32>,
        attributes: Vec<Attribute>,
    },
    Get {
        uid: Option<String>,
        key_format_type: Option<u32>,
        key_compression_type: Option<u32>,
        key_wrapping_specification: Option<Item>,
    },
    GetAttributes {
        uid: Option<String>,
        names: Vec<String>,
    },
    GetAttributeList {
        uid: Option<String>,
    },
    AddAttribute {
        uid: Option<String>,
        attribute: Attribute,
    },
    ModifyAttribute {
        uid: Option<String>,
        attribute: Attribute,
    },
    DeleteAttribute {
        uid: Option<String>,
        name: String,
        index: Option<i32>,
    },
    Activate {
        uid: Option<String>,
    },
    Revoke {
        uid: Option<String>,
        reason: RevocationReason,
        compromise_occurrence_date: Option<i64>,
    },
    Destroy {
        uid: Option<String>,
    },
    /// Any other operation's payload, as it came.
    Raw(Item),
}

/// The payload of a successful response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponsePayload {
    DiscoverVersions {
        versions: Vec<ProtocolVersion>,
    },
    Query {
        operations: Vec<u32>,
        object_types: Vec<u32>,
        vendor_identification: Option<String>,
        server_information: Option<Item>,
        /// Everything after Server Information (namespaces, extensions, profiles, …), as it came.
        other: Vec<Item>,
    },
    Create {
        object_type: u32,
        uid: String,
        template: Option<TemplateAttribute>,
    },
    Register {
        uid: String,
        template: Option<TemplateAttribute>,
    },
    ReKey {
        uid: String,
        template: Option<TemplateAttribute>,
    },
    Locate {
        located_items: Option<i32>,
        uids: Vec<String>,
    },
    Get {
        object_type: u32,
        uid: String,
        object: ManagedObject,
    },
    GetAttributes {
        uid: String,
        attributes: Vec<Attribute>,
    },
    GetAttributeList {
        uid: String,
        names: Vec<String>,
    },
    AddAttribute {
        uid: String,
        attribute: Attribute,
    },
    ModifyAttribute {
        uid: String,
        attribute: Attribute,
    },
    DeleteAttribute {
        uid: String,
        attribute: Attribute,
    },
    Activate {
        uid: String,
    },
    Revoke {
        uid: String,
    },
    Destroy {
        uid: String,
    },
    Raw(Item),
}

fn uid_item(uid: &str) -> Item {
    Item::text(tag::UNIQUE_IDENTIFIER, uid)
}

fn payload(tag: Tag, items: Vec<Item>) -> Item {
    Item::structure(tag, items)
}

impl RequestPayload {
    /// The operation this payload belongs to, when it is typed.
    pub fn operation(&self) -> Option<Operation> {
        Some(match self {
            RequestPayload::DiscoverVersions { .. } => Operation::DiscoverVersions,
            RequestPayload::Query { .. } => Operation::Query,
            RequestPayload::Create { .. } => Operation::Create,
            RequestPayload::Register { .. } => Operation::Register,
            RequestPayload::ReKey { .. } => Operation::ReKey,
            RequestPayload::Locate { .. } => Operation::Locate,
            RequestPayload::Get { .. } => Operation::Get,
            RequestPayload::GetAttributes { .. } => Operation::GetAttributes,
            RequestPayload::GetAttributeList { .. } => Operation::GetAttributeList,
            RequestPayload::AddAttribute { .. } => Operation::AddAttribute,
            RequestPayload::ModifyAttribute { .. } => Operation::ModifyAttribute,
            RequestPayload::DeleteAttribute { .. } => Operation::DeleteAttribute,
            RequestPayload::Activate { .. } => Operation::Activate,
            RequestPayload::Revoke { .. } => Operation::Revoke,
            RequestPayload::Destroy { .. } => Operation::Destroy,
            RequestPayload::Raw(_) => return None,
        })
    }

    pub fn to_item(&self) -> Item {
        let t = tag::REQUEST_PAYLOAD;
        let mut items = Vec::new();
        match self {
            RequestPayload::DiscoverVersions { versions } => {
                items.extend(versions.iter().map(|v| v.to_item()));
            }
            RequestPayload::Query { functions } => {
                items.extend(
                    functions
                        .iter()
                        .map(|f| Item::enumeration(tag::QUERY_FUNCTION, *f)),
                );
            }
            RequestPayload::Create {
                object_type,
                template,
            } => {
                items.push(Item::enumeration(tag::OBJECT_TYPE, *object_type));
                items.push(template.to_item(tag::TEMPLATE_ATTRIBUTE));
            }
            RequestPayload::Register {
                object_type,
                template,
                object,
            } => {
                items.push(Item::enumeration(tag::OBJECT_TYPE, *object_type));
                items.push(template.to_item(tag::TEMPLATE_ATTRIBUTE));
                items.push(object.item.clone());
            }
            RequestPayload::ReKey {
                uid,
                offset,
                template,
            } => {
                push_opt(&mut items, uid, |u| uid_item(u));
                push_opt(&mut items, offset, |o| Item::interval(tag::OFFSET, *o));
                push_opt(&mut items, template, |t| t.to_item(tag::TEMPLATE_ATTRIBUTE));
            }
            RequestPayload::Locate {
                maximum_items,
                offset_items,
                storage_status_mask,
                object_group_member,
                attributes,
            } => {
                push_opt(&mut items, maximum_items, |v| {
                    Item::integer(tag::MAXIMUM_ITEMS, *v)
                });
                push_opt(&mut items, offset_items, |v| {
                    Item::integer(tag::OFFSET_ITEMS, *v)
                });
                push_opt(&mut items, storage_status_mask, |v| {
                    Item::integer(tag::STORAGE_STATUS_MASK, *v)
                });
                push_opt(&mut items, object_group_member, |v| {
                    Item::enumeration(tag::OBJECT_GROUP_MEMBER, *v)
                });
                items.extend(attributes.iter().map(Attribute::to_item));
            }
            RequestPayload::Get {
                uid,
                key_format_type,
                key_compression_type,
                key_wrapping_specification,
            } => {
                push_opt(&mut items, uid, |u| uid_item(u));
                push_opt(&mut items, key_format_type, |v| {
                    Item::enumeration(tag::KEY_FORMAT_TYPE, *v)
                });
                push_opt(&mut items, key_compression_type, |v| {
                    Item::enumeration(tag::KEY_COMPRESSION_TYPE, *v)
                });
                push_opt(&mut items, key_wrapping_specification, Item::clone);
            }
            RequestPayload::GetAttributes { uid, names } => {
                push_opt(&mut items, uid, |u| uid_item(u));
                items.extend(
                    names
                        .iter()
                        .map(|n| Item::text(tag::ATTRIBUTE_NAME, n.as_str())),
                );
            }
            RequestPayload::GetAttributeList { uid }
            | RequestPayload::Activate { uid }
            | RequestPayload::Destroy { uid } => {
                push_opt(&mut items, uid, |u| uid_item(u));
            }
            RequestPayload::AddAttribute { uid, attribute }
            | RequestPayload::ModifyAttribute { uid, attribute } => {
                push_opt(&mut items, uid, |u| uid_item(u));
                items.push(attribute.to_item());
            }
            RequestPayload::DeleteAttribute { uid, name, index } => {
                push_opt(&mut items, uid, |u| uid_item(u));
                items.push(Item::text(tag::ATTRIBUTE_NAME, name.as_str()));
                push_opt(&mut items, index, |i| {
                    Item::integer(tag::ATTRIBUTE_INDEX, *i)
                });
            }
            RequestPayload::Revoke {
                uid,
                reason,
                compromise_occurrence_date,
            } => {
                push_opt(&mut items, uid, |u| uid_item(u));
                items.push(reason.to_item());
                push_opt(&mut items, compromise_occurrence_date, |d| {
                    Item::date_time(tag::COMPROMISE_OCCURRENCE_DATE, *d)
                });
            }
            RequestPayload::Raw(item) => return item.clone(),
        }
        payload(t, items)
    }

    /// Decodes the payload of `operation`. Payloads of operations without a typed form are kept
    /// raw.
    pub fn from_item(operation: u32, item: &Item) -> Result<RequestPayload, MessageError> {
        let Some(op) = Operation::from_u32(operation) else {
            return Ok(RequestPayload::Raw(item.clone()));
        };
        let mut f = Fields::of(item, tag::REQUEST_PAYLOAD)?;
        let p = match op {
            Operation::DiscoverVersions => RequestPayload::DiscoverVersions {
                versions: f
                    .all(tag::PROTOCOL_VERSION)
                    .into_iter()
                    .map(ProtocolVersion::from_item)
                    .collect::<Result<_, _>>()?,
            },
            Operation::Query => RequestPayload::Query {
                functions: f
                    .all(tag::QUERY_FUNCTION)
                    .into_iter()
                    .map(fields::enumeration)
                    .collect::<Result<_, _>>()?,
            },
            Operation::Create => RequestPayload::Create {
                object_type: f.req_enum(tag::OBJECT_TYPE)?,
                template: TemplateAttribute::from_item(
                    f.req(tag::TEMPLATE_ATTRIBUTE)?,
                    tag::TEMPLATE_ATTRIBUTE,
                )?,
            },
            Operation::Register => {
                let object_type = f.req_enum(tag::OBJECT_TYPE)?;
                let template = TemplateAttribute::from_item(
                    f.req(tag::TEMPLATE_ATTRIBUTE)?,
                    tag::TEMPLATE_ATTRIBUTE,
                )?;
                let object = take_object(&mut f, object_type)?;
                RequestPayload::Register {
                    object_type,
                    template,
                    object,
                }
            }
            Operation::ReKey => RequestPayload::ReKey {
                uid: f.opt_text(tag::UNIQUE_IDENTIFIER)?,
                offset: f.opt(tag::OFFSET).map(interval).transpose()?,
                template: f
                    .opt(tag::TEMPLATE_ATTRIBUTE)
                    .map(|t| TemplateAttribute::from_item(t, tag::TEMPLATE_ATTRIBUTE))
                    .transpose()?,
            },
            Operation::Locate => RequestPayload::Locate {
                maximum_items: f.opt_int(tag::MAXIMUM_ITEMS)?,
                offset_items: f.opt_int(tag::OFFSET_ITEMS)?,
                storage_status_mask: f.opt_int(tag::STORAGE_STATUS_MASK)?,
                object_group_member: f.opt_enum(tag::OBJECT_GROUP_MEMBER)?,
                attributes: f
                    .all(tag::ATTRIBUTE)
                    .into_iter()
                    .map(Attribute::from_item)
                    .collect::<Result<_, _>>()?,
            },
            Operation::Get => RequestPayload::Get {
                uid: f.opt_text(tag::UNIQUE_IDENTIFIER)?,
                key_format_type: f.opt_enum(tag::KEY_FORMAT_TYPE)?,
                key_compression_type: f.opt_enum(tag::KEY_COMPRESSION_TYPE)?,
                key_wrapping_specification: f.opt(tag::KEY_WRAPPING_SPECIFICATION).cloned(),
            },
            Operation::GetAttributes => RequestPayload::GetAttributes {
                uid: f.opt_text(tag::UNIQUE_IDENTIFIER)?,
                names: f
                    .all(tag::ATTRIBUTE_NAME)
                    .into_iter()
                    .map(fields::text)
                    .collect::<Result<_, _>>()?,
            },
            Operation::GetAttributeList => RequestPayload::GetAttributeList {
                uid: f.opt_text(tag::UNIQUE_IDENTIFIER)?,
            },
            Operation::AddAttribute => RequestPayload::AddAttribute {
                uid: f.opt_text(tag::UNIQUE_IDENTIFIER)?,
                attribute: Attribute::from_item(f.req(tag::ATTRIBUTE)?)?,
            },
            Operation::ModifyAttribute => RequestPayload::ModifyAttribute {
                uid: f.opt_text(tag::UNIQUE_IDENTIFIER)?,
                attribute: Attribute::from_item(f.req(tag::ATTRIBUTE)?)?,
            },
            Operation::DeleteAttribute => RequestPayload::DeleteAttribute {
                uid: f.opt_text(tag::UNIQUE_IDENTIFIER)?,
                name: f.req_text(tag::ATTRIBUTE_NAME)?,
                index: f.opt_int(tag::ATTRIBUTE_INDEX)?,
            },
            Operation::Activate => RequestPayload::Activate {
                uid: f.opt_text(tag::UNIQUE_IDENTIFIER)?,
            },
            Operation::Revoke => RequestPayload::Revoke {
                uid: f.opt_text(tag::UNIQUE_IDENTIFIER)?,
                reason: RevocationReason::from_item(f.req(tag::REVOCATION_REASON)?)?,
                compromise_occurrence_date: f.opt_date(tag::COMPROMISE_OCCURRENCE_DATE)?,
            },
            Operation::Destroy => RequestPayload::Destroy {
                uid: f.opt_text(tag::UNIQUE_IDENTIFIER)?,
            },
            _ => return Ok(RequestPayload::Raw(item.clone())),
        };
        f.finish()?;
        Ok(p)
    }
}

fn interval(item: &Item) -> Result<u32, MessageError> {
    match item.value {
        Value::Interval(v) => Ok(v),
        _ => Err(MessageError::WrongType {
            tag: item.tag,
            expected: crate::ttlv::ItemType::Interval,
            actual: item.value.item_type(),
        }),
    }
}

impl ResponsePayload {
    pub fn to_item(&self) -> Item {
        let t = tag::RESPONSE_PAYLOAD;
        let mut items = Vec::new();
        match self {
            ResponsePayload::DiscoverVersions { versions } => {
                items.extend(versions.iter().map(|v| v.to_item()));
            }
            ResponsePayload::Query {
                operations,
                object_types,
                vendor_identification,
                server_information,
                other,
            } => {
                items.extend(
                    operations
                        .iter()
                        .map(|o| Item::enumeration(tag::OPERATION, *o)),
                );
                items.extend(
                    object_types
                        .iter()
                        .map(|o| Item::enumeration(tag::OBJECT_TYPE, *o)),
                );
                push_opt(&mut items, vendor_identification, |v| {
                    Item::text(tag::VENDOR_IDENTIFICATION, v.as_str())
                });
                push_opt(&mut items, server_information, Item::clone);
                items.extend(other.iter().cloned());
            }
            ResponsePayload::Create {
                object_type,
                uid,
                template,
            } => {
                items.push(Item::enumeration(tag::OBJECT_TYPE, *object_type));
                items.push(uid_item(uid));
                push_opt(&mut items, template, |t| t.to_item(tag::TEMPLATE_ATTRIBUTE));
            }
            ResponsePayload::Register { uid, template }
            | ResponsePayload::ReKey { uid, template } => {
                items.push(uid_item(uid));
                push_opt(&mut items, template, |t| t.to_item(tag::TEMPLATE_ATTRIBUTE));
            }
            ResponsePayload::Locate {
                located_items,
                uids,
            } => {
                push_opt(&mut items, located_items, |v| {
                    Item::integer(tag::LOCATED_ITEMS, *v)
                });
                items.extend(uids.iter().map(|u| uid_item(u)));
            }
            ResponsePayload::Get {
                object_type,
                uid,
                object,
            } => {
                items.push(Item::enumeration(tag::OBJECT_TYPE, *object_type));
                items.push(uid_item(uid));
                items.push(object.item.clone());
            }
            ResponsePayload::GetAttributes { uid, attributes } => {
                items.push(uid_item(uid));
                items.extend(attributes.iter().map(Attribute::to_item));
            }
            ResponsePayload::GetAttributeList { uid, names } => {
                items.push(uid_item(uid));
                items.extend(
                    names
                        .iter()
                        .map(|n| Item::text(tag::ATTRIBUTE_NAME, n.as_str())),
                );
            }
            ResponsePayload::AddAttribute { uid, attribute }
            | ResponsePayload::ModifyAttribute { uid, attribute }
            | ResponsePayload::DeleteAttribute { uid, attribute } => {
                items.push(uid_item(uid));
                items.push(attribute.to_item());
            }
            ResponsePayload::Activate { uid }
            | ResponsePayload::Revoke { uid }
            | ResponsePayload::Destroy { uid } => {
                items.push(uid_item(uid));
            }
            ResponsePayload::Raw(item) => return item.clone(),
        }
        payload(t, items)
    }

    pub fn from_item(operation: u32, item: &Item) -> Result<ResponsePayload, MessageError> {
        let Some(op) = Operation::from_u32(operation) else {
            return Ok(ResponsePayload::Raw(item.clone()));
        };
        let mut f = Fields::of(item, tag::RESPONSE_PAYLOAD)?;
        let template = |f: &mut Fields<'_>| {
            f.opt(tag::TEMPLATE_ATTRIBUTE)
                .map(|t| TemplateAttribute::from_item(t, tag::TEMPLATE_ATTRIBUTE))
                .transpose()
        };
        let p = match op {
            Operation::DiscoverVersions => ResponsePayload::DiscoverVersions {
                versions: f
                    .all(tag::PROTOCOL_VERSION)
                    .into_iter()
                    .map(ProtocolVersion::from_item)
                    .collect::<Result<_, _>>()?,
            },
            Operation::Query => ResponsePayload::Query {
                operations: f
                    .all(tag::OPERATION)
                    .into_iter()
                    .map(fields::enumeration)
                    .collect::<Result<_, _>>()?,
                object_types: f
                    .all(tag::OBJECT_TYPE)
                    .into_iter()
                    .map(fields::enumeration)
                    .collect::<Result<_, _>>()?,
                vendor_identification: f.opt_text(tag::VENDOR_IDENTIFICATION)?,
                server_information: f.opt(tag::SERVER_INFORMATION).cloned(),
                other: f.rest(),
            },
            Operation::Create => ResponsePayload::Create {
                object_type: f.req_enum(tag::OBJECT_TYPE)?,
                uid: f.req_text(tag::UNIQUE_IDENTIFIER)?,
                template: template(&mut f)?,
            },
            Operation::Register => ResponsePayload::Register {
                uid: f.req_text(tag::UNIQUE_IDENTIFIER)?,
                template: template(&mut f)?,
            },
            Operation::ReKey => ResponsePayload::ReKey {
                uid: f.req_text(tag::UNIQUE_IDENTIFIER)?,
                template: template(&mut f)?,
            },
            Operation::Locate => ResponsePayload::Locate {
                located_items: f.opt_int(tag::LOCATED_ITEMS)?,
                uids: f
                    .all(tag::UNIQUE_IDENTIFIER)
                    .into_iter()
                    .map(fields::text)
                    .collect::<Result<_, _>>()?,
            },
            Operation::Get => {
                let object_type = f.req_enum(tag::OBJECT_TYPE)?;
                let uid = f.req_text(tag::UNIQUE_IDENTIFIER)?;
                let object = take_object(&mut f, object_type)?;
                ResponsePayload::Get {
                    object_type,
                    uid,
                    object,
                }
            }
            Operation::GetAttributes => ResponsePayload::GetAttributes {
                uid: f.req_text(tag::UNIQUE_IDENTIFIER)?,
                attributes: f
                    .all(tag::ATTRIBUTE)
                    .into_iter()
                    .map(Attribute::from_item)
                    .collect::<Result<_, _>>()?,
            },
            Operation::GetAttributeList => ResponsePayload::GetAttributeList {
                uid: f.req_text(tag::UNIQUE_IDENTIFIER)?,
                names: f
                    .all(tag::ATTRIBUTE_NAME)
                    .into_iter()
                    .map(fields::text)
                    .collect::<Result<_, _>>()?,
            },
            Operation::AddAttribute => ResponsePayload::AddAttribute {
                uid: f.req_text(tag::UNIQUE_IDENTIFIER)?,
                attribute: Attribute::from_item(f.req(tag::ATTRIBUTE)?)?,
            },
            Operation::ModifyAttribute => ResponsePayload::ModifyAttribute {
                uid: f.req_text(tag::UNIQUE_IDENTIFIER)?,
                attribute: Attribute::from_item(f.req(tag::ATTRIBUTE)?)?,
            },
            Operation::DeleteAttribute => ResponsePayload::DeleteAttribute {
                uid: f.req_text(tag::UNIQUE_IDENTIFIER)?,
                attribute: Attribute::from_item(f.req(tag::ATTRIBUTE)?)?,
            },
            Operation::Activate => ResponsePayload::Activate {
                uid: f.req_text(tag::UNIQUE_IDENTIFIER)?,
            },
            Operation::Revoke => ResponsePayload::Revoke {
                uid: f.req_text(tag::UNIQUE_IDENTIFIER)?,
            },
            Operation::Destroy => ResponsePayload::Destroy {
                uid: f.req_text(tag::UNIQUE_IDENTIFIER)?,
            },
            _ => return Ok(ResponsePayload::Raw(item.clone())),
        };
        f.finish()?;
        Ok(p)
    }
}

/// The header of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHeader {
    pub protocol_version: ProtocolVersion,
    pub maximum_response_size: Option<i32>,
    pub client_correlation_value: Option<String>,
    pub server_correlation_value: Option<String>,
    pub asynchronous_indicator: Option<bool>,
    pub attestation_capable_indicator: Option<bool>,
    pub attestation_types: Vec<u32>,
    /// Kept raw: Tresor authenticates clients by their TLS certificate.
    pub authentication: Option<Item>,
    pub batch_error_continuation_option: Option<u32>,
    pub batch_order_option: Option<bool>,
    pub time_stamp: Option<i64>,
    pub batch_count: i32,
}

impl RequestHeader {
    pub fn new(protocol_version: ProtocolVersion, batch_count: i32) -> RequestHeader {
        RequestHeader {
            protocol_version,
            maximum_response_size: None,
            client_correlation_value: None,
            server_correlation_value: None,
            asynchronous_indicator: None,
            attestation_capable_indicator: None,
            attestation_types: Vec::new(),
            authentication: None,
            batch_error_continuation_option: None,
            batch_order_option: None,
            time_stamp: None,
            batch_count,
        }
    }

    /// What to do when a batch item fails (default: stop).
    pub fn continuation(&self) -> BatchErrorContinuationOption {
        self.batch_error_continuation_option
            .and_then(BatchErrorContinuationOption::from_u32)
            .unwrap_or(BatchErrorContinuationOption::Stop)
    }

    fn to_item(&self) -> Item {
        let mut items = vec![self.protocol_version.to_item()];
        push_opt(&mut items, &self.maximum_response_size, |v| {
            Item::integer(tag::MAXIMUM_RESPONSE_SIZE, *v)
        });
        push_opt(&mut items, &self.client_correlation_value, |v| {
            Item::text(tag::CLIENT_CORRELATION_VALUE, v.as_str())
        });
        push_opt(&mut items, &self.server_correlation_value, |v| {
            Item::text(tag::SERVER_CORRELATION_VALUE, v.as_str())
        });
        push_opt(&mut items, &self.asynchronous_indicator, |v| {
            Item::boolean(tag::ASYNCHRONOUS_INDICATOR, *v)
        });
        push_opt(&mut items, &self.attestation_capable_indicator, |v| {
            Item::boolean(tag::ATTESTATION_CAPABLE_INDICATOR, *v)
        });
        items.extend(
            self.attestation_types
                .iter()
                .map(|t| Item::enumeration(tag::ATTESTATION_TYPE, *t)),
        );
        push_opt(&mut items, &self.authentication, Item::clone);
        push_opt(&mut items, &self.batch_error_continuation_option, |v| {
            Item::enumeration(tag::BATCH_ERROR_CONTINUATION_OPTION, *v)
        });
        push_opt(&mut items, &self.batch_order_option, |v| {
            Item::boolean(tag::BATCH_ORDER_OPTION, *v)
        });
        push_opt(&mut items, &self.time_stamp, |v| {
            Item::date_time(tag::TIME_STAMP, *v)
        });
        items.push(Item::integer(tag::BATCH_COUNT, self.batch_count));
        Item::structure(tag::REQUEST_HEADER, items)
    }

    fn from_item(item: &Item) -> Result<RequestHeader, MessageError> {
        let mut f = Fields::of(item, tag::REQUEST_HEADER)?;
        let h = RequestHeader {
            protocol_version: ProtocolVersion::from_item(f.req(tag::PROTOCOL_VERSION)?)?,
            maximum_response_size: f.opt_int(tag::MAXIMUM_RESPONSE_SIZE)?,
            client_correlation_value: f.opt_text(tag::CLIENT_CORRELATION_VALUE)?,
            server_correlation_value: f.opt_text(tag::SERVER_CORRELATION_VALUE)?,
            asynchronous_indicator: f.opt_bool(tag::ASYNCHRONOUS_INDICATOR)?,
            attestation_capable_indicator: f.opt_bool(tag::ATTESTATION_CAPABLE_INDICATOR)?,
            attestation_types: f
                .all(tag::ATTESTATION_TYPE)
                .into_iter()
                .map(fields::enumeration)
                .collect::<Result<_, _>>()?,
            authentication: f.opt(tag::AUTHENTICATION).cloned(),
            batch_error_continuation_option: f.opt_enum(tag::BATCH_ERROR_CONTINUATION_OPTION)?,
            batch_order_option: f.opt_bool(tag::BATCH_ORDER_OPTION)?,
            time_stamp: f.opt_date(tag::TIME_STAMP)?,
            batch_count: f.req_int(tag::BATCH_COUNT)?,
        };
        f.finish()?;
        Ok(h)
    }
}

/// One operation of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestBatchItem {
    /// The operation's number (an `Operation`, or a number this library does not know).
    pub operation: u32,
    pub unique_batch_item_id: Option<Bytes>,
    pub payload: RequestPayload,
    pub message_extension: Option<Item>,
}

impl RequestBatchItem {
    pub fn new(payload: RequestPayload) -> RequestBatchItem {
        RequestBatchItem {
            operation: payload.operation().map(|o| o as u32).unwrap_or(0),
            unique_batch_item_id: None,
            payload,
            message_extension: None,
        }
    }

    fn to_item(&self) -> Item {
        let mut items = vec![Item::enumeration(tag::OPERATION, self.operation)];
        push_opt(&mut items, &self.unique_batch_item_id, |v| {
            Item::new(tag::UNIQUE_BATCH_ITEM_ID, Value::ByteString(v.clone()))
        });
        items.push(self.payload.to_item());
        push_opt(&mut items, &self.message_extension, Item::clone);
        Item::structure(tag::BATCH_ITEM, items)
    }

    fn from_item(item: &Item) -> Result<RequestBatchItem, MessageError> {
        let mut f = Fields::of(item, tag::BATCH_ITEM)?;
        let operation = f.req_enum(tag::OPERATION)?;
        let unique_batch_item_id = f.opt_bytes(tag::UNIQUE_BATCH_ITEM_ID)?;
        let payload = RequestPayload::from_item(operation, f.req(tag::REQUEST_PAYLOAD)?)?;
        let message_extension = f.opt(tag::MESSAGE_EXTENSION).cloned();
        f.finish()?;
        Ok(RequestBatchItem {
            operation,
            unique_batch_item_id,
            payload,
            message_extension,
        })
    }
}

/// A request message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestMessage {
    pub header: RequestHeader,
    pub items: Vec<RequestBatchItem>,
}

impl RequestMessage {
    /// A request of one or more operations at `version`; Batch Count is set from the items.
    pub fn new(version: ProtocolVersion, items: Vec<RequestBatchItem>) -> RequestMessage {
        RequestMessage {
            header: RequestHeader::new(version, items.len() as i32),
            items,
        }
    }

    pub fn to_item(&self) -> Item {
        let mut items = vec![self.header.to_item()];
        items.extend(self.items.iter().map(RequestBatchItem::to_item));
        Item::structure(tag::REQUEST_MESSAGE, items)
    }

    pub fn from_item(item: &Item) -> Result<RequestMessage, MessageError> {
        let mut f = Fields::of(item, tag::REQUEST_MESSAGE)?;
        let header = RequestHeader::from_item(f.req(tag::REQUEST_HEADER)?)?;
        let items: Vec<RequestBatchItem> = f
            .all(tag::BATCH_ITEM)
            .into_iter()
            .map(RequestBatchItem::from_item)
            .collect::<Result<_, _>>()?;
        f.finish()?;
        check_batch(header.batch_count, items.len())?;
        check_unique_ids(items.iter().map(|i| i.unique_batch_item_id.as_ref()))?;
        Ok(RequestMessage { header, items })
    }

    pub fn encode(&self) -> Result<Vec<u8>, MessageError> {
        ttlv::to_bytes(&self.to_item()).map_err(|e| MessageError::Encode(e.to_string()))
    }

    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<RequestMessage, MessageError> {
        RequestMessage::from_item(&ttlv::decode_message(bytes, limits)?)
    }
}

fn check_batch(declared: i32, actual: usize) -> Result<(), MessageError> {
    if declared < 0 || declared as usize != actual || actual == 0 {
        return Err(MessageError::BatchCount { declared, actual });
    }
    Ok(())
}

fn check_unique_ids<'a>(ids: impl Iterator<Item = Option<&'a Bytes>>) -> Result<(), MessageError> {
    let ids: Vec<&Bytes> = ids.flatten().collect();
    for (i, a) in ids.iter().enumerate() {
        if ids[..i].contains(a) {
            return Err(MessageError::Invalid(
                "Unique Batch Item IDs of one message must differ".into(),
            ));
        }
    }
    Ok(())
}

/// The header of a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHeader {
    pub protocol_version: ProtocolVersion,
    pub time_stamp: i64,
    pub nonce: Option<Item>,
    pub attestation_types: Vec<u32>,
    pub client_correlation_value: Option<String>,
    pub server_correlation_value: Option<String>,
    pub batch_count: i32,
}

impl ResponseHeader {
    fn to_item(&self) -> Item {
        let mut items = vec![
            self.protocol_version.to_item(),
            Item::date_time(tag::TIME_STAMP, self.time_stamp),
        ];
        push_opt(&mut items, &self.nonce, Item::clone);
        items.extend(
            self.attestation_types
                .iter()
                .map(|t| Item::enumeration(tag::ATTESTATION_TYPE, *t)),
        );
        push_opt(&mut items, &self.client_correlation_value, |v| {
            Item::text(tag::CLIENT_CORRELATION_VALUE, v.as_str())
        });
        push_opt(&mut items, &self.server_correlation_value, |v| {
            Item::text(tag::SERVER_CORRELATION_VALUE, v.as_str())
        });
        items.push(Item::integer(tag::BATCH_COUNT, self.batch_count));
        Item::structure(tag::RESPONSE_HEADER, items)
    }

    fn from_item(item: &Item) -> Result<ResponseHeader, MessageError> {
        let mut f = Fields::of(item, tag::RESPONSE_HEADER)?;
        let h = ResponseHeader {
            protocol_version: ProtocolVersion::from_item(f.req(tag::PROTOCOL_VERSION)?)?,
            time_stamp: fields::date_time(f.req(tag::TIME_STAMP)?)?,
            nonce: f.opt(tag::NONCE).cloned(),
            attestation_types: f
                .all(tag::ATTESTATION_TYPE)
                .into_iter()
                .map(fields::enumeration)
                .collect::<Result<_, _>>()?,
            client_correlation_value: f.opt_text(tag::CLIENT_CORRELATION_VALUE)?,
            server_correlation_value: f.opt_text(tag::SERVER_CORRELATION_VALUE)?,
            batch_count: f.req_int(tag::BATCH_COUNT)?,
        };
        f.finish()?;
        Ok(h)
    }
}

/// The result of one operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseBatchItem {
    pub operation: Option<u32>,
    pub unique_batch_item_id: Option<Bytes>,
    pub result_status: u32,
    pub result_reason: Option<u32>,
    pub result_message: Option<String>,
    pub asynchronous_correlation_value: Option<Bytes>,
    pub payload: Option<ResponsePayload>,
    pub message_extension: Option<Item>,
}

impl ResponseBatchItem {
    /// A successful result.
    pub fn success(
        operation: u32,
        id: Option<Bytes>,
        payload: ResponsePayload,
    ) -> ResponseBatchItem {
        ResponseBatchItem {
            operation: Some(operation),
            unique_batch_item_id: id,
            result_status: ResultStatus::Success as u32,
            result_reason: None,
            result_message: None,
            asynchronous_correlation_value: None,
            payload: Some(payload),
            message_extension: None,
        }
    }

    /// A failed result.
    pub fn failure(
        operation: Option<u32>,
        id: Option<Bytes>,
        reason: ResultReason,
        message: impl Into<String>,
    ) -> ResponseBatchItem {
        ResponseBatchItem {
            operation,
            unique_batch_item_id: id,
            result_status: ResultStatus::OperationFailed as u32,
            result_reason: Some(reason as u32),
            result_message: Some(message.into()),
            asynchronous_correlation_value: None,
            payload: None,
            message_extension: None,
        }
    }

    pub fn status(&self) -> Option<ResultStatus> {
        ResultStatus::from_u32(self.result_status)
    }

    pub fn reason(&self) -> Option<ResultReason> {
        self.result_reason.and_then(ResultReason::from_u32)
    }

    fn to_item(&self) -> Item {
        let mut items = Vec::new();
        push_opt(&mut items, &self.operation, |v| {
            Item::enumeration(tag::OPERATION, *v)
        });
        push_opt(&mut items, &self.unique_batch_item_id, |v| {
            Item::new(tag::UNIQUE_BATCH_ITEM_ID, Value::ByteString(v.clone()))
        });
        items.push(Item::enumeration(tag::RESULT_STATUS, self.result_status));
        push_opt(&mut items, &self.result_reason, |v| {
            Item::enumeration(tag::RESULT_REASON, *v)
        });
        push_opt(&mut items, &self.result_message, |v| {
            Item::text(tag::RESULT_MESSAGE, v.as_str())
        });
        push_opt(&mut items, &self.asynchronous_correlation_value, |v| {
            Item::new(
                tag::ASYNCHRONOUS_CORRELATION_VALUE,
                Value::ByteString(v.clone()),
            )
        });
        push_opt(&mut items, &self.payload, ResponsePayload::to_item);
        push_opt(&mut items, &self.message_extension, Item::clone);
        Item::structure(tag::BATCH_ITEM, items)
    }

    fn from_item(item: &Item) -> Result<ResponseBatchItem, MessageError> {
        let mut f = Fields::of(item, tag::BATCH_ITEM)?;
        let operation = f.opt_enum(tag::OPERATION)?;
        let unique_batch_item_id = f.opt_bytes(tag::UNIQUE_BATCH_ITEM_ID)?;
        let result_status = f.req_enum(tag::RESULT_STATUS)?;
        let result_reason = f.opt_enum(tag::RESULT_REASON)?;
        let result_message = f.opt_text(tag::RESULT_MESSAGE)?;
        let asynchronous_correlation_value = f.opt_bytes(tag::ASYNCHRONOUS_CORRELATION_VALUE)?;
        let payload = match f.opt(tag::RESPONSE_PAYLOAD) {
            Some(p) => Some(match operation {
                Some(op) => ResponsePayload::from_item(op, p)?,
                None => ResponsePayload::Raw(p.clone()),
            }),
            None => None,
        };
        let message_extension = f.opt(tag::MESSAGE_EXTENSION).cloned();
        f.finish()?;
        Ok(ResponseBatchItem {
            operation,
            unique_batch_item_id,
            result_status,
            result_reason,
            result_message,
            asynchronous_correlation_value,
            payload,
            message_extension,
        })
    }
}

/// A response message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseMessage {
    pub header: ResponseHeader,
    pub items: Vec<ResponseBatchItem>,
}

impl ResponseMessage {
    /// A response at `version`, stamped `time_stamp`; Batch Count is set from the items.
    pub fn new(
        version: ProtocolVersion,
        time_stamp: i64,
        items: Vec<ResponseBatchItem>,
    ) -> ResponseMessage {
        ResponseMessage {
            header: ResponseHeader {
                protocol_version: version,
                time_stamp,
                nonce: None,
                attestation_types: Vec::new(),
                client_correlation_value: None,
                server_correlation_value: None,
                batch_count: items.len() as i32,
            },
            items,
        }
    }

    pub fn to_item(&self) -> Item {
        let mut items = vec![self.header.to_item()];
        items.extend(self.items.iter().map(ResponseBatchItem::to_item));
        Item::structure(tag::RESPONSE_MESSAGE, items)
    }

    pub fn from_item(item: &Item) -> Result<ResponseMessage, MessageError> {
        let mut f = Fields::of(item, tag::RESPONSE_MESSAGE)?;
        let header = ResponseHeader::from_item(f.req(tag::RESPONSE_HEADER)?)?;
        let items: Vec<ResponseBatchItem> = f
            .all(tag::BATCH_ITEM)
            .into_iter()
            .map(ResponseBatchItem::from_item)
            .collect::<Result<_, _>>()?;
        f.finish()?;
        check_batch(header.batch_count, items.len())?;
        Ok(ResponseMessage { header, items })
    }

    pub fn encode(&self) -> Result<Vec<u8>, MessageError> {
        ttlv::to_bytes(&self.to_item()).map_err(|e| MessageError::Encode(e.to_string()))
    }

    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<ResponseMessage, MessageError> {
        ResponseMessage::from_item(&ttlv::decode_message(bytes, limits)?)
    }
}

/// Query functions a client commonly asks for.
pub fn query_functions(functions: &[QueryFunction]) -> RequestPayload {
    RequestPayload::Query {
        functions: functions.iter().map(|f| *f as u32).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_payloads_are_typed() {
        let p = RequestPayload::Activate {
            uid: Some("1".into()),
        };
        let item = p.to_item();
        assert_eq!(
            RequestPayload::from_item(Operation::Activate as u32, &item).unwrap(),
            p
        );
    }
}
