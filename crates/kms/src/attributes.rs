//! The attributes the key server knows: since which protocol version each exists, whether an
//! object may have several, who may set or change it, and the type its value must have.

use tresor_kmip::message::{Attribute, ProtocolVersion};
use tresor_kmip::ttlv::ItemType;
use tresor_kmip::Value;

/// Who may change an attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Only the server sets it.
    Server,
    /// A client may give it when the object is created or registered, not later.
    OnCreate,
    /// A client may give, add, modify and delete it.
    Client,
}

/// What the server knows about one attribute.
#[derive(Clone, Copy, Debug)]
pub struct AttributeDef {
    pub name: &'static str,
    pub since: ProtocolVersion,
    pub multi: bool,
    pub access: Access,
    pub item_type: ItemType,
}

const fn def(
    name: &'static str,
    minor: i32,
    multi: bool,
    access: Access,
    item_type: ItemType,
) -> AttributeDef {
    AttributeDef {
        name,
        since: ProtocolVersion::new(1, minor),
        multi,
        access,
        item_type,
    }
}

use Access::{Client, OnCreate, Server};
use ItemType::{Boolean, DateTime, Enumeration, Integer, Interval, Structure, TextString};

/// The standard attributes of KMIP 1.0–1.4, in the order the server lists them.
pub static ATTRIBUTES: &[AttributeDef] = &[
    def("Unique Identifier", 0, false, Server, TextString),
    def("Object Type", 0, false, Server, Enumeration),
    def("Cryptographic Algorithm", 0, false, OnCreate, Enumeration),
    def("Cryptographic Length", 0, false, OnCreate, Integer),
    def("Cryptographic Parameters", 0, true, Client, Structure),
    def(
        "Cryptographic Domain Parameters",
        0,
        false,
        OnCreate,
        Structure,
    ),
    def("Certificate Type", 0, false, Server, Enumeration),
    def("Certificate Length", 1, false, Server, Integer),
    def("Digital Signature Algorithm", 1, true, Server, Enumeration),
    def("Digest", 0, true, Server, Structure),
    def("Operation Policy Name", 0, false, Client, TextString),
    def("Cryptographic Usage Mask", 0, false, OnCreate, Integer),
    def("Lease Time", 0, false, Server, Interval),
    def("Usage Limits", 0, false, OnCreate, Structure),
    def("State", 0, false, Server, Enumeration),
    def("Initial Date", 0, false, Server, DateTime),
    def("Activation Date", 0, false, Client, DateTime),
    def("Process Start Date", 0, false, Client, DateTime),
    def("Protect Stop Date", 0, false, Client, DateTime),
    def("Deactivation Date", 0, false, Client, DateTime),
    def("Destroy Date", 0, false, Server, DateTime),
    def("Compromise Occurrence Date", 0, false, Server, DateTime),
    def("Compromise Date", 0, false, Server, DateTime),
    def("Revocation Reason", 0, false, Server, Structure),
    def("Archive Date", 0, false, Server, DateTime),
    def("Object Group", 0, true, Client, TextString),
    def("Fresh", 1, false, OnCreate, Boolean),
    def("Link", 0, true, Client, Structure),
    def(
        "Application Specific Information",
        0,
        true,
        Client,
        Structure,
    ),
    def("Contact Information", 0, false, Client, TextString),
    def("Last Change Date", 0, false, Server, DateTime),
    def("Alternative Name", 2, true, Client, Structure),
    def("Key Value Present", 2, false, Server, Boolean),
    def("Key Value Location", 2, true, Client, Structure),
    def("Original Creation Date", 2, false, OnCreate, DateTime),
    def("Random Number Generator", 3, false, OnCreate, Structure),
    def("PKCS#12 Friendly Name", 4, false, Client, TextString),
    def("Description", 4, false, Client, TextString),
    def("Comment", 4, false, Client, TextString),
    def("Sensitive", 4, false, Client, Boolean),
    def("Always Sensitive", 4, false, Server, Boolean),
    def("Extractable", 4, false, Client, Boolean),
    def("Never Extractable", 4, false, Server, Boolean),
    // Name comes last among the standard ones in listings; custom attributes follow.
    def("Name", 0, true, Client, Structure),
];

/// The definition of a standard attribute.
pub fn lookup(name: &str) -> Option<&'static AttributeDef> {
    ATTRIBUTES.iter().find(|d| d.name == name)
}

/// Whether the name is a custom attribute a client may set (`x-…`).
pub fn is_client_custom(name: &str) -> bool {
    name.starts_with("x-") || name.starts_with("X-")
}

/// Whether the name is a custom attribute only the server sets (`y-…`).
pub fn is_server_custom(name: &str) -> bool {
    name.starts_with("y-") || name.starts_with("Y-")
}

/// Whether a client speaking `version` may see the attribute.
pub fn visible_at(name: &str, version: ProtocolVersion) -> bool {
    match lookup(name) {
        Some(def) => def.since <= version,
        None => true,
    }
}

/// Checks that a client-given value has the type the attribute needs.
pub fn check_type(attribute: &Attribute) -> Result<(), String> {
    let Some(def) = lookup(&attribute.name) else {
        if is_client_custom(&attribute.name) || is_server_custom(&attribute.name) {
            return Ok(());
        }
        return Err(format!("Unknown attribute \"{}\"", attribute.name));
    };
    let actual = attribute.value.item_type();
    if actual != def.item_type {
        return Err(format!(
            "Attribute \"{}\" must be a {}, not a {}",
            attribute.name,
            def.item_type.name(),
            actual.name()
        ));
    }
    Ok(())
}

/// The attributes with this name.
pub fn all<'a>(
    attributes: &'a [Attribute],
    name: &'a str,
) -> impl Iterator<Item = &'a Attribute> + 'a {
    attributes.iter().filter(move |a| a.name == name)
}

/// The first value of an attribute.
pub fn first<'a>(attributes: &'a [Attribute], name: &str) -> Option<&'a Value> {
    attributes.iter().find(|a| a.name == name).map(|a| &a.value)
}

/// Sets a single-instance attribute, replacing any value it had.
pub fn set(attributes: &mut Vec<Attribute>, name: &str, value: Value) {
    match attributes.iter_mut().find(|a| a.name == name) {
        Some(a) => a.value = value,
        None => attributes.push(Attribute::new(name, value)),
    }
}

/// Removes every instance of an attribute.
pub fn remove(attributes: &mut Vec<Attribute>, name: &str) {
    attributes.retain(|a| a.name != name);
}

/// Orders attributes for listing: what identifies the object first (Unique Identifier, Object
/// Type, Cryptographic Algorithm, Cryptographic Length), then the others by name, custom ones
/// last; each name's instances stay in the order they were added.
pub fn sort_for_listing(attributes: &mut [Attribute]) {
    const FIRST: [&str; 4] = [
        "Unique Identifier",
        "Object Type",
        "Cryptographic Algorithm",
        "Cryptographic Length",
    ];
    attributes.sort_by(|a, b| {
        let rank = |x: &Attribute| match FIRST.iter().position(|n| *n == x.name) {
            Some(i) => (0, i, String::new()),
            None if lookup(&x.name).is_some() => (1, 0, x.name.clone()),
            None => (2, 0, x.name.clone()),
        };
        rank(a).cmp(&rank(b))
    });
}

/// An attribute's value as a client at `version` knows it: KMIP 1.0 digests have no Key Format
/// Type.
pub fn for_version(mut attribute: Attribute, version: ProtocolVersion) -> Attribute {
    if attribute.name == "Digest" && version < ProtocolVersion::V1_1 {
        if let Value::Structure(items) = &mut attribute.value {
            items.retain(|i| i.tag != tresor_kmip::spec::tag::KEY_FORMAT_TYPE);
        }
    }
    attribute
}
