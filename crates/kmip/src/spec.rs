//! The names and numbers of KMIP 1.4 (section 9.1.3): tags, enumerations and masks.
//!
//! KMIP 1.4 includes every tag and enumeration value of 1.0 to 1.3, so one table serves every 1.x
//! version. Names are kept as the specification writes them; [`normalize`] turns them into the
//! names of the XML and JSON encodings (`Pre-Active` becomes `PreActive`, `SHA-256` `SHA_256`).

use std::collections::HashMap;
use std::sync::LazyLock;

use crate::ttlv::Tag;

macro_rules! tags {
    ($($konst:ident = $value:literal, $name:literal;)*) => {
        /// Every standard tag of KMIP 1.4, as a constant named after the specification's name.
        pub mod tag {
            use crate::ttlv::Tag;
            $(#[doc = $name] pub const $konst: Tag = Tag::new($value);)*
        }

        /// Every standard tag with its name, in ascending order.
        pub static TAGS: &[(Tag, &str)] = &[$((tag::$konst, $name)),*];
    };
}

tags! {
    ACTIVATION_DATE = 0x420001, "Activation Date";
    APPLICATION_DATA = 0x420002, "Application Data";
    APPLICATION_NAMESPACE = 0x420003, "Application Namespace";
    APPLICATION_SPECIFIC_INFORMATION = 0x420004, "Application Specific Information";
    ARCHIVE_DATE = 0x420005, "Archive Date";
    ASYNCHRONOUS_CORRELATION_VALUE = 0x420006, "Asynchronous Correlation Value";
    ASYNCHRONOUS_INDICATOR = 0x420007, "Asynchronous Indicator";
    ATTRIBUTE = 0x420008, "Attribute";
    ATTRIBUTE_INDEX = 0x420009, "Attribute Index";
    ATTRIBUTE_NAME = 0x42000A, "Attribute Name";
    ATTRIBUTE_VALUE = 0x42000B, "Attribute Value";
    AUTHENTICATION = 0x42000C, "Authentication";
    BATCH_COUNT = 0x42000D, "Batch Count";
    BATCH_ERROR_CONTINUATION_OPTION = 0x42000E, "Batch Error Continuation Option";
    BATCH_ITEM = 0x42000F, "Batch Item";
    BATCH_ORDER_OPTION = 0x420010, "Batch Order Option";
    BLOCK_CIPHER_MODE = 0x420011, "Block Cipher Mode";
    CANCELLATION_RESULT = 0x420012, "Cancellation Result";
    CERTIFICATE = 0x420013, "Certificate";
    CERTIFICATE_IDENTIFIER = 0x420014, "Certificate Identifier";
    CERTIFICATE_ISSUER = 0x420015, "Certificate Issuer";
    CERTIFICATE_ISSUER_ALTERNATIVE_NAME = 0x420016, "Certificate Issuer Alternative Name";
    CERTIFICATE_ISSUER_DISTINGUISHED_NAME = 0x420017, "Certificate Issuer Distinguished Name";
    CERTIFICATE_REQUEST = 0x420018, "Certificate Request";
    CERTIFICATE_REQUEST_TYPE = 0x420019, "Certificate Request Type";
    CERTIFICATE_SUBJECT = 0x42001A, "Certificate Subject";
    CERTIFICATE_SUBJECT_ALTERNATIVE_NAME = 0x42001B, "Certificate Subject Alternative Name";
    CERTIFICATE_SUBJECT_DISTINGUISHED_NAME = 0x42001C, "Certificate Subject Distinguished Name";
    CERTIFICATE_TYPE = 0x42001D, "Certificate Type";
    CERTIFICATE_VALUE = 0x42001E, "Certificate Value";
    COMMON_TEMPLATE_ATTRIBUTE = 0x42001F, "Common Template-Attribute";
    COMPROMISE_DATE = 0x420020, "Compromise Date";
    COMPROMISE_OCCURRENCE_DATE = 0x420021, "Compromise Occurrence Date";
    CONTACT_INFORMATION = 0x420022, "Contact Information";
    CREDENTIAL = 0x420023, "Credential";
    CREDENTIAL_TYPE = 0x420024, "Credential Type";
    CREDENTIAL_VALUE = 0x420025, "Credential Value";
    CRITICALITY_INDICATOR = 0x420026, "Criticality Indicator";
    CRT_COEFFICIENT = 0x420027, "CRT Coefficient";
    CRYPTOGRAPHIC_ALGORITHM = 0x420028, "Cryptographic Algorithm";
    CRYPTOGRAPHIC_DOMAIN_PARAMETERS = 0x420029, "Cryptographic Domain Parameters";
    CRYPTOGRAPHIC_LENGTH = 0x42002A, "Cryptographic Length";
    CRYPTOGRAPHIC_PARAMETERS = 0x42002B, "Cryptographic Parameters";
    CRYPTOGRAPHIC_USAGE_MASK = 0x42002C, "Cryptographic Usage Mask";
    CUSTOM_ATTRIBUTE = 0x42002D, "Custom Attribute";
    D = 0x42002E, "D";
    DEACTIVATION_DATE = 0x42002F, "Deactivation Date";
    DERIVATION_DATA = 0x420030, "Derivation Data";
    DERIVATION_METHOD = 0x420031, "Derivation Method";
    DERIVATION_PARAMETERS = 0x420032, "Derivation Parameters";
    DESTROY_DATE = 0x420033, "Destroy Date";
    DIGEST = 0x420034, "Digest";
    DIGEST_VALUE = 0x420035, "Digest Value";
    ENCRYPTION_KEY_INFORMATION = 0x420036, "Encryption Key Information";
    G = 0x420037, "G";
    HASHING_ALGORITHM = 0x420038, "Hashing Algorithm";
    INITIAL_DATE = 0x420039, "Initial Date";
    INITIALIZATION_VECTOR = 0x42003A, "Initialization Vector";
    ISSUER = 0x42003B, "Issuer";
    ITERATION_COUNT = 0x42003C, "Iteration Count";
    IV_COUNTER_NONCE = 0x42003D, "IV/Counter/Nonce";
    J = 0x42003E, "J";
    KEY = 0x42003F, "Key";
    KEY_BLOCK = 0x420040, "Key Block";
    KEY_COMPRESSION_TYPE = 0x420041, "Key Compression Type";
    KEY_FORMAT_TYPE = 0x420042, "Key Format Type";
    KEY_MATERIAL = 0x420043, "Key Material";
    KEY_PART_IDENTIFIER = 0x420044, "Key Part Identifier";
    KEY_VALUE = 0x420045, "Key Value";
    KEY_WRAPPING_DATA = 0x420046, "Key Wrapping Data";
    KEY_WRAPPING_SPECIFICATION = 0x420047, "Key Wrapping Specification";
    LAST_CHANGE_DATE = 0x420048, "Last Change Date";
    LEASE_TIME = 0x420049, "Lease Time";
    LINK = 0x42004A, "Link";
    LINK_TYPE = 0x42004B, "Link Type";
    LINKED_OBJECT_IDENTIFIER = 0x42004C, "Linked Object Identifier";
    MAC_SIGNATURE = 0x42004D, "MAC/Signature";
    MAC_SIGNATURE_KEY_INFORMATION = 0x42004E, "MAC/Signature Key Information";
    MAXIMUM_ITEMS = 0x42004F, "Maximum Items";
    MAXIMUM_RESPONSE_SIZE = 0x420050, "Maximum Response Size";
    MESSAGE_EXTENSION = 0x420051, "Message Extension";
    MODULUS = 0x420052, "Modulus";
    NAME = 0x420053, "Name";
    NAME_TYPE = 0x420054, "Name Type";
    NAME_VALUE = 0x420055, "Name Value";
    OBJECT_GROUP = 0x420056, "Object Group";
    OBJECT_TYPE = 0x420057, "Object Type";
    OFFSET = 0x420058, "Offset";
    OPAQUE_DATA_TYPE = 0x420059, "Opaque Data Type";
    OPAQUE_DATA_VALUE = 0x42005A, "Opaque Data Value";
    OPAQUE_OBJECT = 0x42005B, "Opaque Object";
    OPERATION = 0x42005C, "Operation";
    OPERATION_POLICY_NAME = 0x42005D, "Operation Policy Name";
    P = 0x42005E, "P";
    PADDING_METHOD = 0x42005F, "Padding Method";
    PRIME_EXPONENT_P = 0x420060, "Prime Exponent P";
    PRIME_EXPONENT_Q = 0x420061, "Prime Exponent Q";
    PRIME_FIELD_SIZE = 0x420062, "Prime Field Size";
    PRIVATE_EXPONENT = 0x420063, "Private Exponent";
    PRIVATE_KEY = 0x420064, "Private Key";
    PRIVATE_KEY_TEMPLATE_ATTRIBUTE = 0x420065, "Private Key Template-Attribute";
    PRIVATE_KEY_UNIQUE_IDENTIFIER = 0x420066, "Private Key Unique Identifier";
    PROCESS_START_DATE = 0x420067, "Process Start Date";
    PROTECT_STOP_DATE = 0x420068, "Protect Stop Date";
    PROTOCOL_VERSION = 0x420069, "Protocol Version";
    PROTOCOL_VERSION_MAJOR = 0x42006A, "Protocol Version Major";
    PROTOCOL_VERSION_MINOR = 0x42006B, "Protocol Version Minor";
    PUBLIC_EXPONENT = 0x42006C, "Public Exponent";
    PUBLIC_KEY = 0x42006D, "Public Key";
    PUBLIC_KEY_TEMPLATE_ATTRIBUTE = 0x42006E, "Public Key Template-Attribute";
    PUBLIC_KEY_UNIQUE_IDENTIFIER = 0x42006F, "Public Key Unique Identifier";
    PUT_FUNCTION = 0x420070, "Put Function";
    Q = 0x420071, "Q";
    Q_STRING = 0x420072, "Q String";
    QLENGTH = 0x420073, "Qlength";
    QUERY_FUNCTION = 0x420074, "Query Function";
    RECOMMENDED_CURVE = 0x420075, "Recommended Curve";
    REPLACED_UNIQUE_IDENTIFIER = 0x420076, "Replaced Unique Identifier";
    REQUEST_HEADER = 0x420077, "Request Header";
    REQUEST_MESSAGE = 0x420078, "Request Message";
    REQUEST_PAYLOAD = 0x420079, "Request Payload";
    RESPONSE_HEADER = 0x42007A, "Response Header";
    RESPONSE_MESSAGE = 0x42007B, "Response Message";
    RESPONSE_PAYLOAD = 0x42007C, "Response Payload";
    RESULT_MESSAGE = 0x42007D, "Result Message";
    RESULT_REASON = 0x42007E, "Result Reason";
    RESULT_STATUS = 0x42007F, "Result Status";
    REVOCATION_MESSAGE = 0x420080, "Revocation Message";
    REVOCATION_REASON = 0x420081, "Revocation Reason";
    REVOCATION_REASON_CODE = 0x420082, "Revocation Reason Code";
    KEY_ROLE_TYPE = 0x420083, "Key Role Type";
    SALT = 0x420084, "Salt";
    SECRET_DATA = 0x420085, "Secret Data";
    SECRET_DATA_TYPE = 0x420086, "Secret Data Type";
    SERIAL_NUMBER = 0x420087, "Serial Number";
    SERVER_INFORMATION = 0x420088, "Server Information";
    SPLIT_KEY = 0x420089, "Split Key";
    SPLIT_KEY_METHOD = 0x42008A, "Split Key Method";
    SPLIT_KEY_PARTS = 0x42008B, "Split Key Parts";
    SPLIT_KEY_THRESHOLD = 0x42008C, "Split Key Threshold";
    STATE = 0x42008D, "State";
    STORAGE_STATUS_MASK = 0x42008E, "Storage Status Mask";
    SYMMETRIC_KEY = 0x42008F, "Symmetric Key";
    TEMPLATE = 0x420090, "Template";
    TEMPLATE_ATTRIBUTE = 0x420091, "Template-Attribute";
    TIME_STAMP = 0x420092, "Time Stamp";
    UNIQUE_BATCH_ITEM_ID = 0x420093, "Unique Batch Item ID";
    UNIQUE_IDENTIFIER = 0x420094, "Unique Identifier";
    USAGE_LIMITS = 0x420095, "Usage Limits";
    USAGE_LIMITS_COUNT = 0x420096, "Usage Limits Count";
    USAGE_LIMITS_TOTAL = 0x420097, "Usage Limits Total";
    USAGE_LIMITS_UNIT = 0x420098, "Usage Limits Unit";
    USERNAME = 0x420099, "Username";
    VALIDITY_DATE = 0x42009A, "Validity Date";
    VALIDITY_INDICATOR = 0x42009B, "Validity Indicator";
    VENDOR_EXTENSION = 0x42009C, "Vendor Extension";
    VENDOR_IDENTIFICATION = 0x42009D, "Vendor Identification";
    WRAPPING_METHOD = 0x42009E, "Wrapping Method";
    X = 0x42009F, "X";
    Y = 0x4200A0, "Y";
    PASSWORD = 0x4200A1, "Password";
    DEVICE_IDENTIFIER = 0x4200A2, "Device Identifier";
    ENCODING_OPTION = 0x4200A3, "Encoding Option";
    EXTENSION_INFORMATION = 0x4200A4, "Extension Information";
    EXTENSION_NAME = 0x4200A5, "Extension Name";
    EXTENSION_TAG = 0x4200A6, "Extension Tag";
    EXTENSION_TYPE = 0x4200A7, "Extension Type";
    FRESH = 0x4200A8, "Fresh";
    MACHINE_IDENTIFIER = 0x4200A9, "Machine Identifier";
    MEDIA_IDENTIFIER = 0x4200AA, "Media Identifier";
    NETWORK_IDENTIFIER = 0x4200AB, "Network Identifier";
    OBJECT_GROUP_MEMBER = 0x4200AC, "Object Group Member";
    CERTIFICATE_LENGTH = 0x4200AD, "Certificate Length";
    DIGITAL_SIGNATURE_ALGORITHM = 0x4200AE, "Digital Signature Algorithm";
    CERTIFICATE_SERIAL_NUMBER = 0x4200AF, "Certificate Serial Number";
    DEVICE_SERIAL_NUMBER = 0x4200B0, "Device Serial Number";
    ISSUER_ALTERNATIVE_NAME = 0x4200B1, "Issuer Alternative Name";
    ISSUER_DISTINGUISHED_NAME = 0x4200B2, "Issuer Distinguished Name";
    SUBJECT_ALTERNATIVE_NAME = 0x4200B3, "Subject Alternative Name";
    SUBJECT_DISTINGUISHED_NAME = 0x4200B4, "Subject Distinguished Name";
    X_509_CERTIFICATE_IDENTIFIER = 0x4200B5, "X.509 Certificate Identifier";
    X_509_CERTIFICATE_ISSUER = 0x4200B6, "X.509 Certificate Issuer";
    X_509_CERTIFICATE_SUBJECT = 0x4200B7, "X.509 Certificate Subject";
    KEY_VALUE_LOCATION = 0x4200B8, "Key Value Location";
    KEY_VALUE_LOCATION_VALUE = 0x4200B9, "Key Value Location Value";
    KEY_VALUE_LOCATION_TYPE = 0x4200BA, "Key Value Location Type";
    KEY_VALUE_PRESENT = 0x4200BB, "Key Value Present";
    ORIGINAL_CREATION_DATE = 0x4200BC, "Original Creation Date";
    PGP_KEY = 0x4200BD, "PGP Key";
    PGP_KEY_VERSION = 0x4200BE, "PGP Key Version";
    ALTERNATIVE_NAME = 0x4200BF, "Alternative Name";
    ALTERNATIVE_NAME_VALUE = 0x4200C0, "Alternative Name Value";
    ALTERNATIVE_NAME_TYPE = 0x4200C1, "Alternative Name Type";
    DATA = 0x4200C2, "Data";
    SIGNATURE_DATA = 0x4200C3, "Signature Data";
    DATA_LENGTH = 0x4200C4, "Data Length";
    RANDOM_IV = 0x4200C5, "Random IV";
    MAC_DATA = 0x4200C6, "MAC Data";
    ATTESTATION_TYPE = 0x4200C7, "Attestation Type";
    NONCE = 0x4200C8, "Nonce";
    NONCE_ID = 0x4200C9, "Nonce ID";
    NONCE_VALUE = 0x4200CA, "Nonce Value";
    ATTESTATION_MEASUREMENT = 0x4200CB, "Attestation Measurement";
    ATTESTATION_ASSERTION = 0x4200CC, "Attestation Assertion";
    IV_LENGTH = 0x4200CD, "IV Length";
    TAG_LENGTH = 0x4200CE, "Tag Length";
    FIXED_FIELD_LENGTH = 0x4200CF, "Fixed Field Length";
    COUNTER_LENGTH = 0x4200D0, "Counter Length";
    INITIAL_COUNTER_VALUE = 0x4200D1, "Initial Counter Value";
    INVOCATION_FIELD_LENGTH = 0x4200D2, "Invocation Field Length";
    ATTESTATION_CAPABLE_INDICATOR = 0x4200D3, "Attestation Capable Indicator";
    OFFSET_ITEMS = 0x4200D4, "Offset Items";
    LOCATED_ITEMS = 0x4200D5, "Located Items";
    CORRELATION_VALUE = 0x4200D6, "Correlation Value";
    INIT_INDICATOR = 0x4200D7, "Init Indicator";
    FINAL_INDICATOR = 0x4200D8, "Final Indicator";
    RNG_PARAMETERS = 0x4200D9, "RNG Parameters";
    RNG_ALGORITHM = 0x4200DA, "RNG Algorithm";
    DRBG_ALGORITHM = 0x4200DB, "DRBG Algorithm";
    FIPS186_VARIATION = 0x4200DC, "FIPS186 Variation";
    PREDICTION_RESISTANCE = 0x4200DD, "Prediction Resistance";
    RANDOM_NUMBER_GENERATOR = 0x4200DE, "Random Number Generator";
    VALIDATION_INFORMATION = 0x4200DF, "Validation Information";
    VALIDATION_AUTHORITY_TYPE = 0x4200E0, "Validation Authority Type";
    VALIDATION_AUTHORITY_COUNTRY = 0x4200E1, "Validation Authority Country";
    VALIDATION_AUTHORITY_URI = 0x4200E2, "Validation Authority URI";
    VALIDATION_VERSION_MAJOR = 0x4200E3, "Validation Version Major";
    VALIDATION_VERSION_MINOR = 0x4200E4, "Validation Version Minor";
    VALIDATION_TYPE = 0x4200E5, "Validation Type";
    VALIDATION_LEVEL = 0x4200E6, "Validation Level";
    VALIDATION_CERTIFICATE_IDENTIFIER = 0x4200E7, "Validation Certificate Identifier";
    VALIDATION_CERTIFICATE_URI = 0x4200E8, "Validation Certificate URI";
    VALIDATION_VENDOR_URI = 0x4200E9, "Validation Vendor URI";
    VALIDATION_PROFILE = 0x4200EA, "Validation Profile";
    PROFILE_INFORMATION = 0x4200EB, "Profile Information";
    PROFILE_NAME = 0x4200EC, "Profile Name";
    SERVER_URI = 0x4200ED, "Server URI";
    SERVER_PORT = 0x4200EE, "Server Port";
    STREAMING_CAPABILITY = 0x4200EF, "Streaming Capability";
    ASYNCHRONOUS_CAPABILITY = 0x4200F0, "Asynchronous Capability";
    ATTESTATION_CAPABILITY = 0x4200F1, "Attestation Capability";
    UNWRAP_MODE = 0x4200F2, "Unwrap Mode";
    DESTROY_ACTION = 0x4200F3, "Destroy Action";
    SHREDDING_ALGORITHM = 0x4200F4, "Shredding Algorithm";
    RNG_MODE = 0x4200F5, "RNG Mode";
    CLIENT_REGISTRATION_METHOD = 0x4200F6, "Client Registration Method";
    CAPABILITY_INFORMATION = 0x4200F7, "Capability Information";
    KEY_WRAP_TYPE = 0x4200F8, "Key Wrap Type";
    BATCH_UNDO_CAPABILITY = 0x4200F9, "Batch Undo Capability";
    BATCH_CONTINUE_CAPABILITY = 0x4200FA, "Batch Continue Capability";
    PKCS_12_FRIENDLY_NAME = 0x4200FB, "PKCS#12 Friendly Name";
    DESCRIPTION = 0x4200FC, "Description";
    COMMENT = 0x4200FD, "Comment";
    AUTHENTICATED_ENCRYPTION_ADDITIONAL_DATA = 0x4200FE, "Authenticated Encryption Additional Data";
    AUTHENTICATED_ENCRYPTION_TAG = 0x4200FF, "Authenticated Encryption Tag";
    SALT_LENGTH = 0x420100, "Salt Length";
    MASK_GENERATOR = 0x420101, "Mask Generator";
    MASK_GENERATOR_HASHING_ALGORITHM = 0x420102, "Mask Generator Hashing Algorithm";
    P_SOURCE = 0x420103, "P Source";
    TRAILER_FIELD = 0x420104, "Trailer Field";
    CLIENT_CORRELATION_VALUE = 0x420105, "Client Correlation Value";
    SERVER_CORRELATION_VALUE = 0x420106, "Server Correlation Value";
    DIGESTED_DATA = 0x420107, "Digested Data";
    CERTIFICATE_SUBJECT_CN = 0x420108, "Certificate Subject CN";
    CERTIFICATE_SUBJECT_O = 0x420109, "Certificate Subject O";
    CERTIFICATE_SUBJECT_OU = 0x42010A, "Certificate Subject OU";
    CERTIFICATE_SUBJECT_EMAIL = 0x42010B, "Certificate Subject Email";
    CERTIFICATE_SUBJECT_C = 0x42010C, "Certificate Subject C";
    CERTIFICATE_SUBJECT_ST = 0x42010D, "Certificate Subject ST";
    CERTIFICATE_SUBJECT_L = 0x42010E, "Certificate Subject L";
    CERTIFICATE_SUBJECT_UID = 0x42010F, "Certificate Subject UID";
    CERTIFICATE_SUBJECT_SERIAL_NUMBER = 0x420110, "Certificate Subject Serial Number";
    CERTIFICATE_SUBJECT_TITLE = 0x420111, "Certificate Subject Title";
    CERTIFICATE_SUBJECT_DC = 0x420112, "Certificate Subject DC";
    CERTIFICATE_SUBJECT_DN_QUALIFIER = 0x420113, "Certificate Subject DN Qualifier";
    CERTIFICATE_ISSUER_CN = 0x420114, "Certificate Issuer CN";
    CERTIFICATE_ISSUER_O = 0x420115, "Certificate Issuer O";
    CERTIFICATE_ISSUER_OU = 0x420116, "Certificate Issuer OU";
    CERTIFICATE_ISSUER_EMAIL = 0x420117, "Certificate Issuer Email";
    CERTIFICATE_ISSUER_C = 0x420118, "Certificate Issuer C";
    CERTIFICATE_ISSUER_ST = 0x420119, "Certificate Issuer ST";
    CERTIFICATE_ISSUER_L = 0x42011A, "Certificate Issuer L";
    CERTIFICATE_ISSUER_UID = 0x42011B, "Certificate Issuer UID";
    CERTIFICATE_ISSUER_SERIAL_NUMBER = 0x42011C, "Certificate Issuer Serial Number";
    CERTIFICATE_ISSUER_TITLE = 0x42011D, "Certificate Issuer Title";
    CERTIFICATE_ISSUER_DC = 0x42011E, "Certificate Issuer DC";
    CERTIFICATE_ISSUER_DN_QUALIFIER = 0x42011F, "Certificate Issuer DN Qualifier";
    SENSITIVE = 0x420120, "Sensitive";
    ALWAYS_SENSITIVE = 0x420121, "Always Sensitive";
    EXTRACTABLE = 0x420122, "Extractable";
    NEVER_EXTRACTABLE = 0x420123, "Never Extractable";
    REPLACE_EXISTING = 0x420124, "Replace Existing";
}

/// The specification's name of a standard tag.
pub fn tag_name(tag: Tag) -> Option<&'static str> {
    TAGS.binary_search_by_key(&tag, |(t, _)| *t)
        .ok()
        .map(|i| TAGS[i].1)
}

/// The tag with this name, given as the specification writes it or in the XML encoding's form.
pub fn tag_by_name(name: &str) -> Option<Tag> {
    static BY_NAME: LazyLock<HashMap<String, Tag>> =
        LazyLock::new(|| TAGS.iter().map(|(t, n)| (normalize(n), *t)).collect());
    BY_NAME.get(&normalize(name)).copied()
}

/// The name of a tag in the XML encoding.
pub fn tag_xml_name(tag: Tag) -> Option<String> {
    tag_name(tag).map(normalize)
}

/// Turns a specification name into the name the XML and JSON encodings use (KMIP Additional
/// Message Encodings, "normalizing names"): brackets become spaces; a separator followed by a
/// word becomes a space; other separators become `_`; digits that start the name move to the end
/// of its first word; words are capitalised and joined.
pub fn normalize(name: &str) -> String {
    let chars: Vec<char> = name
        .chars()
        .map(|c| if c == '(' || c == ')' { ' ' } else { c })
        .collect();
    let mut cleaned = String::with_capacity(chars.len());
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_alphanumeric() || c == '_' || c.is_whitespace() {
            cleaned.push(c);
        } else {
            let next = chars.get(i + 1).copied().unwrap_or(' ');
            let after = chars.get(i + 2).copied().unwrap_or(' ');
            if next.is_ascii_alphabetic() && after.is_ascii_lowercase() {
                cleaned.push(' ');
            } else {
                cleaned.push('_');
            }
        }
    }
    let mut words: Vec<String> = cleaned.split_whitespace().map(str::to_owned).collect();
    if let Some(first) = words.first_mut() {
        let digits: String = first.chars().take_while(char::is_ascii_digit).collect();
        if !digits.is_empty() && digits.len() < first.len() {
            *first = format!("{}{}", &first[digits.len()..], digits);
        }
    }
    let mut out = String::with_capacity(name.len());
    for word in words {
        let mut cs = word.chars();
        if let Some(c) = cs.next() {
            out.push(c.to_ascii_uppercase());
            out.extend(cs);
        }
    }
    out
}

/// One enumeration or mask of the specification.
#[derive(Debug)]
pub struct EnumDef {
    /// The specification's name of the enumeration.
    pub name: &'static str,
    /// The tags whose values it gives (and the attribute of the same name).
    pub tags: &'static [Tag],
    /// Its values with their names.
    pub values: &'static [(u32, &'static str)],
    /// Whether the values are bits of a mask.
    pub is_mask: bool,
}

impl EnumDef {
    /// The specification's name of a value.
    pub fn name_of(&self, value: u32) -> Option<&'static str> {
        self.values
            .iter()
            .find(|(v, _)| *v == value)
            .map(|(_, n)| *n)
    }

    /// The value with this name, in the specification's or the XML form.
    pub fn value_of(&self, name: &str) -> Option<u32> {
        let wanted = normalize(name);
        self.values
            .iter()
            .find(|(_, n)| normalize(n) == wanted)
            .map(|(v, _)| *v)
    }
}

/// The enumeration or mask that gives the values of a tag.
pub fn enum_for_tag(tag: Tag) -> Option<&'static EnumDef> {
    ENUMS.iter().find(|e| e.tags.contains(&tag))
}

/// Declares a closed set of KMIP enumeration values as a Rust enum, and its table.
macro_rules! kmip_enum {
    ($(#[$meta:meta])* $ty:ident, $spec:literal, [$($tag:ident),+] {
        $($variant:ident = $value:literal, $name:literal;)*
    }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum $ty {
            $(#[doc = $name] $variant = $value,)*
        }

        impl $ty {
            /// The enumeration's table.
            pub const DEF: EnumDef = EnumDef {
                name: $spec,
                tags: &[$(tag::$tag),+],
                values: &[$(($value, $name)),*],
                is_mask: false,
            };

            /// The value with this number, if the specification defines it.
            pub const fn from_u32(value: u32) -> Option<$ty> {
                match value {
                    $($value => Some($ty::$variant),)*
                    _ => None,
                }
            }

            /// The number of the value.
            pub const fn value(self) -> u32 {
                self as u32
            }

            /// The specification's name of the value.
            pub const fn spec_name(self) -> &'static str {
                match self {
                    $($ty::$variant => $name,)*
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.spec_name())
            }
        }
    };
}

macro_rules! kmip_mask {
    ($(#[$meta:meta])* $konst:ident, $spec:literal, [$($tag:ident),+] {
        $($bit:ident = $value:literal, $name:literal;)*
    }) => {
        $(#[$meta])*
        pub mod $konst {
            use super::*;
            $(#[doc = $name] pub const $bit: u32 = $value;)*
            /// The mask's table.
            pub const DEF: EnumDef = EnumDef {
                name: $spec,
                tags: &[$(tag::$tag),+],
                values: &[$(($value, $name)),*],
                is_mask: true,
            };
        }
    };
}

kmip_enum!(CredentialType, "Credential Type", [CREDENTIAL_TYPE] {
    UsernameAndPassword = 1, "Username and Password";
    Device = 2, "Device";
    Attestation = 3, "Attestation";
});

kmip_enum!(KeyCompressionType, "Key Compression Type", [KEY_COMPRESSION_TYPE] {
    EcPublicKeyTypeUncompressed = 1, "EC Public Key Type Uncompressed";
    EcPublicKeyTypeX962CompressedPrime = 2, "EC Public Key Type X9.62 Compressed Prime";
    EcPublicKeyTypeX962CompressedChar2 = 3, "EC Public Key Type X9.62 Compressed Char2";
    EcPublicKeyTypeX962Hybrid = 4, "EC Public Key Type X9.62 Hybrid";
});

kmip_enum!(KeyFormatType, "Key Format Type", [KEY_FORMAT_TYPE] {
    Raw = 1, "Raw";
    Opaque = 2, "Opaque";
    Pkcs1 = 3, "PKCS#1";
    Pkcs8 = 4, "PKCS#8";
    X509 = 5, "X.509";
    EcPrivateKey = 6, "ECPrivateKey";
    TransparentSymmetricKey = 7, "Transparent Symmetric Key";
    TransparentDsaPrivateKey = 8, "Transparent DSA Private Key";
    TransparentDsaPublicKey = 9, "Transparent DSA Public Key";
    TransparentRsaPrivateKey = 10, "Transparent RSA Private Key";
    TransparentRsaPublicKey = 11, "Transparent RSA Public Key";
    TransparentDhPrivateKey = 12, "Transparent DH Private Key";
    TransparentDhPublicKey = 13, "Transparent DH Public Key";
    TransparentEcdsaPrivateKey = 14, "Transparent ECDSA Private Key";
    TransparentEcdsaPublicKey = 15, "Transparent ECDSA Public Key";
    TransparentEcdhPrivateKey = 16, "Transparent ECDH Private Key";
    TransparentEcdhPublicKey = 17, "Transparent ECDH Public Key";
    TransparentEcmqvPrivateKey = 18, "Transparent ECMQV Private Key";
    TransparentEcmqvPublicKey = 19, "Transparent ECMQV Public Key";
    TransparentEcPrivateKey = 20, "Transparent EC Private Key";
    TransparentEcPublicKey = 21, "Transparent EC Public Key";
    Pkcs12 = 22, "PKCS#12";
});

kmip_enum!(WrappingMethod, "Wrapping Method", [WRAPPING_METHOD] {
    Encrypt = 1, "Encrypt";
    MacSign = 2, "MAC/sign";
    EncryptThenMacSign = 3, "Encrypt then MAC/sign";
    MacSignThenEncrypt = 4, "MAC/sign then encrypt";
    Tr31 = 5, "TR-31";
});

kmip_enum!(RecommendedCurve, "Recommended Curve", [RECOMMENDED_CURVE] {
    P192 = 1, "P-192"; K163 = 2, "K-163"; B163 = 3, "B-163"; P224 = 4, "P-224";
    K233 = 5, "K-233"; B233 = 6, "B-233"; P256 = 7, "P-256"; K283 = 8, "K-283";
    B283 = 9, "B-283"; P384 = 10, "P-384"; K409 = 11, "K-409"; B409 = 12, "B-409";
    P521 = 13, "P-521"; K571 = 14, "K-571"; B571 = 15, "B-571";
    Secp112r1 = 16, "SECP112R1"; Secp112r2 = 17, "SECP112R2"; Secp128r1 = 18, "SECP128R1";
    Secp128r2 = 19, "SECP128R2"; Secp160k1 = 20, "SECP160K1"; Secp160r1 = 21, "SECP160R1";
    Secp160r2 = 22, "SECP160R2"; Secp192k1 = 23, "SECP192K1"; Secp224k1 = 24, "SECP224K1";
    Secp256k1 = 25, "SECP256K1"; Sect113r1 = 26, "SECT113R1"; Sect113r2 = 27, "SECT113R2";
    Sect131r1 = 28, "SECT131R1"; Sect131r2 = 29, "SECT131R2"; Sect163r1 = 30, "SECT163R1";
    Sect193r1 = 31, "SECT193R1"; Sect193r2 = 32, "SECT193R2"; Sect239k1 = 33, "SECT239K1";
    Ansix9p192v2 = 34, "ANSIX9P192V2"; Ansix9p192v3 = 35, "ANSIX9P192V3";
    Ansix9p239v1 = 36, "ANSIX9P239V1"; Ansix9p239v2 = 37, "ANSIX9P239V2";
    Ansix9p239v3 = 38, "ANSIX9P239V3"; Ansix9c2pnb163v1 = 39, "ANSIX9C2PNB163V1";
    Ansix9c2pnb163v2 = 40, "ANSIX9C2PNB163V2"; Ansix9c2pnb163v3 = 41, "ANSIX9C2PNB163V3";
    Ansix9c2pnb176v1 = 42, "ANSIX9C2PNB176V1"; Ansix9c2tnb191v1 = 43, "ANSIX9C2TNB191V1";
    Ansix9c2tnb191v2 = 44, "ANSIX9C2TNB191V2"; Ansix9c2tnb191v3 = 45, "ANSIX9C2TNB191V3";
    Ansix9c2pnb208w1 = 46, "ANSIX9C2PNB208W1"; Ansix9c2tnb239v1 = 47, "ANSIX9C2TNB239V1";
    Ansix9c2tnb239v2 = 48, "ANSIX9C2TNB239V2"; Ansix9c2tnb239v3 = 49, "ANSIX9C2TNB239V3";
    Ansix9c2pnb272w1 = 50, "ANSIX9C2PNB272W1"; Ansix9c2pnb304w1 = 51, "ANSIX9C2PNB304W1";
    Ansix9c2tnb359v1 = 52, "ANSIX9C2TNB359V1"; Ansix9c2pnb368w1 = 53, "ANSIX9C2PNB368W1";
    Ansix9c2tnb431r1 = 54, "ANSIX9C2TNB431R1"; Brainpoolp160r1 = 55, "BRAINPOOLP160R1";
    Brainpoolp160t1 = 56, "BRAINPOOLP160T1"; Brainpoolp192r1 = 57, "BRAINPOOLP192R1";
    Brainpoolp192t1 = 58, "BRAINPOOLP192T1"; Brainpoolp224r1 = 59, "BRAINPOOLP224R1";
    Brainpoolp224t1 = 60, "BRAINPOOLP224T1"; Brainpoolp256r1 = 61, "BRAINPOOLP256R1";
    Brainpoolp256t1 = 62, "BRAINPOOLP256T1"; Brainpoolp320r1 = 63, "BRAINPOOLP320R1";
    Brainpoolp320t1 = 64, "BRAINPOOLP320T1"; Brainpoolp384r1 = 65, "BRAINPOOLP384R1";
    Brainpoolp384t1 = 66, "BRAINPOOLP384T1"; Brainpoolp512r1 = 67, "BRAINPOOLP512R1";
    Brainpoolp512t1 = 68, "BRAINPOOLP512T1";
});

kmip_enum!(CertificateType, "Certificate Type", [CERTIFICATE_TYPE] {
    X509 = 1, "X.509";
    Pgp = 2, "PGP";
});

kmip_enum!(DigitalSignatureAlgorithm, "Digital Signature Algorithm", [DIGITAL_SIGNATURE_ALGORITHM] {
    Md2WithRsa = 1, "MD2 with RSA Encryption";
    Md5WithRsa = 2, "MD5 with RSA Encryption";
    Sha1WithRsa = 3, "SHA-1 with RSA Encryption";
    Sha224WithRsa = 4, "SHA-224 with RSA Encryption";
    Sha256WithRsa = 5, "SHA-256 with RSA Encryption";
    Sha384WithRsa = 6, "SHA-384 with RSA Encryption";
    Sha512WithRsa = 7, "SHA-512 with RSA Encryption";
    RsassaPss = 8, "RSASSA-PSS";
    DsaWithSha1 = 9, "DSA with SHA-1";
    DsaWithSha224 = 10, "DSA with SHA224";
    DsaWithSha256 = 11, "DSA with SHA256";
    EcdsaWithSha1 = 12, "ECDSA with SHA-1";
    EcdsaWithSha224 = 13, "ECDSA with SHA224";
    EcdsaWithSha256 = 14, "ECDSA with SHA256";
    EcdsaWithSha384 = 15, "ECDSA with SHA384";
    EcdsaWithSha512 = 16, "ECDSA with SHA512";
    Sha3_256WithRsa = 17, "SHA3-256 with RSA Encryption";
    Sha3_384WithRsa = 18, "SHA3-384 with RSA Encryption";
    Sha3_512WithRsa = 19, "SHA3-512 with RSA Encryption";
});

kmip_enum!(SplitKeyMethod, "Split Key Method", [SPLIT_KEY_METHOD] {
    Xor = 1, "XOR";
    PolynomialSharingGf2_16 = 2, "Polynomial Sharing GF (2^16)";
    PolynomialSharingPrimeField = 3, "Polynomial Sharing Prime Field";
    PolynomialSharingGf2_8 = 4, "Polynomial Sharing GF (2^8)";
});

kmip_enum!(SecretDataType, "Secret Data Type", [SECRET_DATA_TYPE] {
    Password = 1, "Password";
    Seed = 2, "Seed";
});

kmip_enum!(NameType, "Name Type", [NAME_TYPE] {
    UninterpretedTextString = 1, "Uninterpreted Text String";
    Uri = 2, "URI";
});

kmip_enum!(ObjectType, "Object Type", [OBJECT_TYPE] {
    Certificate = 1, "Certificate";
    SymmetricKey = 2, "Symmetric Key";
    PublicKey = 3, "Public Key";
    PrivateKey = 4, "Private Key";
    SplitKey = 5, "Split Key";
    Template = 6, "Template";
    SecretData = 7, "Secret Data";
    OpaqueObject = 8, "Opaque Object";
    PgpKey = 9, "PGP Key";
});

kmip_enum!(CryptographicAlgorithm, "Cryptographic Algorithm", [CRYPTOGRAPHIC_ALGORITHM] {
    Des = 1, "DES"; TripleDes = 2, "3DES"; Aes = 3, "AES"; Rsa = 4, "RSA"; Dsa = 5, "DSA";
    Ecdsa = 6, "ECDSA"; HmacSha1 = 7, "HMAC-SHA1"; HmacSha224 = 8, "HMAC-SHA224";
    HmacSha256 = 9, "HMAC-SHA256"; HmacSha384 = 10, "HMAC-SHA384"; HmacSha512 = 11, "HMAC-SHA512";
    HmacMd5 = 12, "HMAC-MD5"; Dh = 13, "DH"; Ecdh = 14, "ECDH"; Ecmqv = 15, "ECMQV";
    Blowfish = 16, "Blowfish"; Camellia = 17, "Camellia"; Cast5 = 18, "CAST5"; Idea = 19, "IDEA";
    Mars = 20, "MARS"; Rc2 = 21, "RC2"; Rc4 = 22, "RC4"; Rc5 = 23, "RC5"; Skipjack = 24, "SKIPJACK";
    Twofish = 25, "Twofish"; Ec = 26, "EC"; OneTimePad = 27, "One Time Pad"; ChaCha20 = 28, "ChaCha20";
    Poly1305 = 29, "Poly1305"; ChaCha20Poly1305 = 30, "ChaCha20Poly1305"; Sha3_224 = 31, "SHA3-224";
    Sha3_256 = 32, "SHA3-256"; Sha3_384 = 33, "SHA3-384"; Sha3_512 = 34, "SHA3-512";
    HmacSha3_224 = 35, "HMAC-SHA3-224"; HmacSha3_256 = 36, "HMAC-SHA3-256";
    HmacSha3_384 = 37, "HMAC-SHA3-384"; HmacSha3_512 = 38, "HMAC-SHA3-512";
    Shake128 = 39, "SHAKE-128"; Shake256 = 40, "SHAKE-256";
});

kmip_enum!(BlockCipherMode, "Block Cipher Mode", [BLOCK_CIPHER_MODE] {
    Cbc = 1, "CBC"; Ecb = 2, "ECB"; Pcbc = 3, "PCBC"; Cfb = 4, "CFB"; Ofb = 5, "OFB"; Ctr = 6, "CTR";
    Cmac = 7, "CMAC"; Ccm = 8, "CCM"; Gcm = 9, "GCM"; CbcMac = 10, "CBC-MAC"; Xts = 11, "XTS";
    AesKeyWrapPadding = 12, "AESKeyWrapPadding"; NistKeyWrap = 13, "NISTKeyWrap";
    X9102Aeskw = 14, "X9.102 AESKW"; X9102Tdkw = 15, "X9.102 TDKW"; X9102Akw1 = 16, "X9.102 AKW1";
    X9102Akw2 = 17, "X9.102 AKW2"; Aead = 18, "AEAD";
});

kmip_enum!(PaddingMethod, "Padding Method", [PADDING_METHOD] {
    None = 1, "None"; Oaep = 2, "OAEP"; Pkcs5 = 3, "PKCS5"; Ssl3 = 4, "SSL3"; Zeros = 5, "Zeros";
    AnsiX923 = 6, "ANSI X9.23"; Iso10126 = 7, "ISO 10126"; Pkcs1V15 = 8, "PKCS1 v1.5";
    X931 = 9, "X9.31"; Pss = 10, "PSS";
});

kmip_enum!(HashingAlgorithm, "Hashing Algorithm", [HASHING_ALGORITHM, MASK_GENERATOR_HASHING_ALGORITHM] {
    Md2 = 1, "MD2"; Md4 = 2, "MD4"; Md5 = 3, "MD5"; Sha1 = 4, "SHA-1"; Sha224 = 5, "SHA-224";
    Sha256 = 6, "SHA-256"; Sha384 = 7, "SHA-384"; Sha512 = 8, "SHA-512"; Ripemd160 = 9, "RIPEMD-160";
    Tiger = 10, "Tiger"; Whirlpool = 11, "Whirlpool"; Sha512_224 = 12, "SHA-512/224";
    Sha512_256 = 13, "SHA-512/256"; Sha3_224 = 14, "SHA-3-224"; Sha3_256 = 15, "SHA-3-256";
    Sha3_384 = 16, "SHA-3-384"; Sha3_512 = 17, "SHA-3-512";
});

kmip_enum!(KeyRoleType, "Key Role Type", [KEY_ROLE_TYPE] {
    Bdk = 1, "BDK"; Cvk = 2, "CVK"; Dek = 3, "DEK"; Mkac = 4, "MKAC"; Mksmc = 5, "MKSMC";
    Mksmi = 6, "MKSMI"; Mkdac = 7, "MKDAC"; Mkdn = 8, "MKDN"; Mkcp = 9, "MKCP"; Mkoth = 10, "MKOTH";
    Kek = 11, "KEK"; Mac16609 = 12, "MAC16609"; Mac97971 = 13, "MAC97971"; Mac97972 = 14, "MAC97972";
    Mac97973 = 15, "MAC97973"; Mac97974 = 16, "MAC97974"; Mac97975 = 17, "MAC97975"; Zpk = 18, "ZPK";
    Pvkibm = 19, "PVKIBM"; Pvkpvv = 20, "PVKPVV"; Pvkoth = 21, "PVKOTH"; Dukpt = 22, "DUKPT";
    Iv = 23, "IV"; Trkbk = 24, "TRKBK";
});

kmip_enum!(
    /// The state of a managed object (KMIP 1.4, section 3.22).
    State, "State", [STATE] {
    PreActive = 1, "Pre-Active";
    Active = 2, "Active";
    Deactivated = 3, "Deactivated";
    Compromised = 4, "Compromised";
    Destroyed = 5, "Destroyed";
    DestroyedCompromised = 6, "Destroyed Compromised";
});

kmip_enum!(RevocationReasonCode, "Revocation Reason Code", [REVOCATION_REASON_CODE] {
    Unspecified = 1, "Unspecified";
    KeyCompromise = 2, "Key Compromise";
    CaCompromise = 3, "CA Compromise";
    AffiliationChanged = 4, "Affiliation Changed";
    Superseded = 5, "Superseded";
    CessationOfOperation = 6, "Cessation of Operation";
    PrivilegeWithdrawn = 7, "Privilege Withdrawn";
});

kmip_enum!(LinkType, "Link Type", [LINK_TYPE] {
    CertificateLink = 0x101, "Certificate Link";
    PublicKeyLink = 0x102, "Public Key Link";
    PrivateKeyLink = 0x103, "Private Key Link";
    DerivationBaseObjectLink = 0x104, "Derivation Base Object Link";
    DerivedKeyLink = 0x105, "Derived Key Link";
    ReplacementObjectLink = 0x106, "Replacement Object Link";
    ReplacedObjectLink = 0x107, "Replaced Object Link";
    ParentLink = 0x108, "Parent Link";
    ChildLink = 0x109, "Child Link";
    PreviousLink = 0x10A, "Previous Link";
    NextLink = 0x10B, "Next Link";
    Pkcs12CertificateLink = 0x10C, "PKCS#12 Certificate Link";
    Pkcs12PasswordLink = 0x10D, "PKCS#12 Password Link";
});

kmip_enum!(DerivationMethod, "Derivation Method", [DERIVATION_METHOD] {
    Pbkdf2 = 1, "PBKDF2"; Hash = 2, "HASH"; Hmac = 3, "HMAC"; Encrypt = 4, "ENCRYPT";
    Nist800_108C = 5, "NIST800-108-C"; Nist800_108F = 6, "NIST800-108-F";
    Nist800_108Dpi = 7, "NIST800-108-DPI"; AsymmetricKey = 8, "Asymmetric Key";
});

kmip_enum!(CertificateRequestType, "Certificate Request Type", [CERTIFICATE_REQUEST_TYPE] {
    Crmf = 1, "CRMF"; Pkcs10 = 2, "PKCS#10"; Pem = 3, "PEM"; Pgp = 4, "PGP";
});

kmip_enum!(ValidityIndicator, "Validity Indicator", [VALIDITY_INDICATOR] {
    Valid = 1, "Valid"; Invalid = 2, "Invalid"; Unknown = 3, "Unknown";
});

kmip_enum!(QueryFunction, "Query Function", [QUERY_FUNCTION] {
    QueryOperations = 1, "Query Operations";
    QueryObjects = 2, "Query Objects";
    QueryServerInformation = 3, "Query Server Information";
    QueryApplicationNamespaces = 4, "Query Application Namespaces";
    QueryExtensionList = 5, "Query Extension List";
    QueryExtensionMap = 6, "Query Extension Map";
    QueryAttestationTypes = 7, "Query Attestation Types";
    QueryRngs = 8, "Query RNGs";
    QueryValidations = 9, "Query Validations";
    QueryProfiles = 10, "Query Profiles";
    QueryCapabilities = 11, "Query Capabilities";
    QueryClientRegistrationMethods = 12, "Query Client Registration Methods";
});

kmip_enum!(CancellationResult, "Cancellation Result", [CANCELLATION_RESULT] {
    Canceled = 1, "Canceled"; UnableToCancel = 2, "Unable to Cancel"; Completed = 3, "Completed";
    Failed = 4, "Failed"; Unavailable = 5, "Unavailable";
});

kmip_enum!(PutFunction, "Put Function", [PUT_FUNCTION] {
    New = 1, "New"; Replace = 2, "Replace";
});

kmip_enum!(Operation, "Operation", [OPERATION] {
    Create = 1, "Create"; CreateKeyPair = 2, "Create Key Pair"; Register = 3, "Register";
    ReKey = 4, "Re-key"; DeriveKey = 5, "Derive Key"; Certify = 6, "Certify";
    ReCertify = 7, "Re-certify"; Locate = 8, "Locate"; Check = 9, "Check"; Get = 10, "Get";
    GetAttributes = 11, "Get Attributes"; GetAttributeList = 12, "Get Attribute List";
    AddAttribute = 13, "Add Attribute"; ModifyAttribute = 14, "Modify Attribute";
    DeleteAttribute = 15, "Delete Attribute"; ObtainLease = 16, "Obtain Lease";
    GetUsageAllocation = 17, "Get Usage Allocation"; Activate = 18, "Activate";
    Revoke = 19, "Revoke"; Destroy = 20, "Destroy"; Archive = 21, "Archive";
    Recover = 22, "Recover"; Validate = 23, "Validate"; Query = 24, "Query"; Cancel = 25, "Cancel";
    Poll = 26, "Poll"; Notify = 27, "Notify"; Put = 28, "Put"; ReKeyKeyPair = 29, "Re-key Key Pair";
    DiscoverVersions = 30, "Discover Versions"; Encrypt = 31, "Encrypt"; Decrypt = 32, "Decrypt";
    Sign = 33, "Sign"; SignatureVerify = 34, "Signature Verify"; Mac = 35, "MAC";
    MacVerify = 36, "MAC Verify"; RngRetrieve = 37, "RNG Retrieve"; RngSeed = 38, "RNG Seed";
    Hash = 39, "Hash"; CreateSplitKey = 40, "Create Split Key"; JoinSplitKey = 41, "Join Split Key";
    Import = 42, "Import"; Export = 43, "Export";
});

kmip_enum!(ResultStatus, "Result Status", [RESULT_STATUS] {
    Success = 0, "Success";
    OperationFailed = 1, "Operation Failed";
    OperationPending = 2, "Operation Pending";
    OperationUndone = 3, "Operation Undone";
});

kmip_enum!(ResultReason, "Result Reason", [RESULT_REASON] {
    ItemNotFound = 1, "Item Not Found";
    ResponseTooLarge = 2, "Response Too Large";
    AuthenticationNotSuccessful = 3, "Authentication Not Successful";
    InvalidMessage = 4, "Invalid Message";
    OperationNotSupported = 5, "Operation Not Supported";
    MissingData = 6, "Missing Data";
    InvalidField = 7, "Invalid Field";
    FeatureNotSupported = 8, "Feature Not Supported";
    OperationCanceledByRequester = 9, "Operation Canceled By Requester";
    CryptographicFailure = 10, "Cryptographic Failure";
    IllegalOperation = 11, "Illegal Operation";
    PermissionDenied = 12, "Permission Denied";
    ObjectArchived = 13, "Object archived";
    IndexOutOfBounds = 14, "Index Out of Bounds";
    ApplicationNamespaceNotSupported = 15, "Application Namespace Not Supported";
    KeyFormatTypeNotSupported = 16, "Key Format Type Not Supported";
    KeyCompressionTypeNotSupported = 17, "Key Compression Type Not Supported";
    EncodingOptionError = 18, "Encoding Option Error";
    KeyValueNotPresent = 19, "Key Value Not Present";
    AttestationRequired = 20, "Attestation Required";
    AttestationFailed = 21, "Attestation Failed";
    Sensitive = 22, "Sensitive";
    NotExtractable = 23, "Not Extractable";
    ObjectAlreadyExists = 24, "Object Already Exists";
    GeneralFailure = 0x100, "General Failure";
});

kmip_enum!(BatchErrorContinuationOption, "Batch Error Continuation Option", [BATCH_ERROR_CONTINUATION_OPTION] {
    Continue = 1, "Continue"; Stop = 2, "Stop"; Undo = 3, "Undo";
});

kmip_enum!(UsageLimitsUnit, "Usage Limits Unit", [USAGE_LIMITS_UNIT] {
    Byte = 1, "Byte"; Object = 2, "Object";
});

kmip_enum!(EncodingOption, "Encoding Option", [ENCODING_OPTION] {
    NoEncoding = 1, "No Encoding"; TtlvEncoding = 2, "TTLV Encoding";
});

kmip_enum!(ObjectGroupMember, "Object Group Member", [OBJECT_GROUP_MEMBER] {
    GroupMemberFresh = 1, "Group Member Fresh"; GroupMemberDefault = 2, "Group Member Default";
});

kmip_enum!(AlternativeNameType, "Alternative Name Type", [ALTERNATIVE_NAME_TYPE] {
    UninterpretedTextString = 1, "Uninterpreted Text String"; Uri = 2, "URI";
    ObjectSerialNumber = 3, "Object Serial Number"; EmailAddress = 4, "Email Address";
    DnsName = 5, "DNS Name"; X500DistinguishedName = 6, "X.500 Distinguished Name";
    IpAddress = 7, "IP Address";
});

kmip_enum!(KeyValueLocationType, "Key Value Location Type", [KEY_VALUE_LOCATION_TYPE] {
    UninterpretedTextString = 1, "Uninterpreted Text String"; Uri = 2, "URI";
});

kmip_enum!(AttestationType, "Attestation Type", [ATTESTATION_TYPE] {
    TpmQuote = 1, "TPM Quote"; TcgIntegrityReport = 2, "TCG Integrity Report";
    SamlAssertion = 3, "SAML Assertion";
});

kmip_enum!(RngAlgorithm, "RNG Algorithm", [RNG_ALGORITHM] {
    Unspecified = 1, "Unspecified"; Fips186_2 = 2, "FIPS 186-2"; Drbg = 3, "DRBG"; Nrbg = 4, "NRBG";
    AnsiX931 = 5, "ANSI X9.31"; AnsiX962 = 6, "ANSI X9.62";
});

kmip_enum!(DrbgAlgorithm, "DRBG Algorithm", [DRBG_ALGORITHM] {
    Unspecified = 1, "Unspecified"; DualEc = 2, "Dual-EC"; Hash = 3, "Hash"; Hmac = 4, "HMAC";
    Ctr = 5, "CTR";
});

kmip_enum!(Fips186Variation, "FIPS186 Variation", [FIPS186_VARIATION] {
    Unspecified = 1, "Unspecified"; GpXOriginal = 2, "GP x-Original";
    GpXChangeNotice = 3, "GP x-Change Notice"; XOriginal = 4, "x-Original";
    XChangeNotice = 5, "x-Change Notice"; KOriginal = 6, "k-Original";
    KChangeNotice = 7, "k-Change Notice";
});

kmip_enum!(ValidationAuthorityType, "Validation Authority Type", [VALIDATION_AUTHORITY_TYPE] {
    Unspecified = 1, "Unspecified"; NistCmvp = 2, "NIST CMVP"; CommonCriteria = 3, "Common Criteria";
});

kmip_enum!(ValidationType, "Validation Type", [VALIDATION_TYPE] {
    Unspecified = 1, "Unspecified"; Hardware = 2, "Hardware"; Software = 3, "Software";
    Firmware = 4, "Firmware"; Hybrid = 5, "Hybrid";
});

kmip_enum!(UnwrapMode, "Unwrap Mode", [UNWRAP_MODE] {
    Unspecified = 1, "Unspecified"; Processed = 2, "Processed"; NotProcessed = 3, "Not Processed";
});

kmip_enum!(DestroyAction, "Destroy Action", [DESTROY_ACTION] {
    Unspecified = 1, "Unspecified"; KeyMaterialDeleted = 2, "Key Material Deleted";
    KeyMaterialShredded = 3, "Key Material Shredded"; MetaDataDeleted = 4, "Meta Data Deleted";
    MetaDataShredded = 5, "Meta Data Shredded"; Deleted = 6, "Deleted"; Shredded = 7, "Shredded";
});

kmip_enum!(ShreddingAlgorithm, "Shredding Algorithm", [SHREDDING_ALGORITHM] {
    Unspecified = 1, "Unspecified"; Cryptographic = 2, "Cryptographic"; Unsupported = 3, "Unsupported";
});

kmip_enum!(RngMode, "RNG Mode", [RNG_MODE] {
    Unspecified = 1, "Unspecified"; SharedInstantiation = 2, "Shared Instantiation";
    NonSharedInstantiation = 3, "Non-Shared Instantiation";
});

kmip_enum!(ClientRegistrationMethod, "Client Registration Method", [CLIENT_REGISTRATION_METHOD] {
    Unspecified = 1, "Unspecified"; ServerPreGenerated = 2, "Server Pre-Generated";
    ServerOnDemand = 3, "Server On-Demand"; ClientGenerated = 4, "Client Generated";
    ClientRegistered = 5, "Client Registered";
});

kmip_enum!(KeyWrapType, "Key Wrap Type", [KEY_WRAP_TYPE] {
    NotWrapped = 1, "Not Wrapped"; AsRegistered = 2, "As Registered";
});

kmip_enum!(MaskGenerator, "Mask Generator", [MASK_GENERATOR] {
    Mgf1 = 1, "MGF1";
});

kmip_mask!(
    /// The bits of the Cryptographic Usage Mask attribute.
    usage_mask, "Cryptographic Usage Mask", [CRYPTOGRAPHIC_USAGE_MASK] {
    SIGN = 0x1, "Sign"; VERIFY = 0x2, "Verify"; ENCRYPT = 0x4, "Encrypt"; DECRYPT = 0x8, "Decrypt";
    WRAP_KEY = 0x10, "Wrap Key"; UNWRAP_KEY = 0x20, "Unwrap Key"; EXPORT = 0x40, "Export";
    MAC_GENERATE = 0x80, "MAC Generate"; MAC_VERIFY = 0x100, "MAC Verify";
    DERIVE_KEY = 0x200, "Derive Key"; CONTENT_COMMITMENT = 0x400, "Content Commitment";
    KEY_AGREEMENT = 0x800, "Key Agreement"; CERTIFICATE_SIGN = 0x1000, "Certificate Sign";
    CRL_SIGN = 0x2000, "CRL Sign"; GENERATE_CRYPTOGRAM = 0x4000, "Generate Cryptogram";
    VALIDATE_CRYPTOGRAM = 0x8000, "Validate Cryptogram"; TRANSLATE_ENCRYPT = 0x10000, "Translate Encrypt";
    TRANSLATE_DECRYPT = 0x20000, "Translate Decrypt"; TRANSLATE_WRAP = 0x40000, "Translate Wrap";
    TRANSLATE_UNWRAP = 0x80000, "Translate Unwrap";
});

kmip_mask!(
    /// The bits of the Storage Status Mask.
    storage_status_mask, "Storage Status Mask", [STORAGE_STATUS_MASK] {
    ON_LINE_STORAGE = 0x1, "On-line storage"; ARCHIVAL_STORAGE = 0x2, "Archival storage";
});

/// Every enumeration and mask, for name look-ups by tag.
pub static ENUMS: &[EnumDef] = &[
    CredentialType::DEF,
    KeyCompressionType::DEF,
    KeyFormatType::DEF,
    WrappingMethod::DEF,
    RecommendedCurve::DEF,
    CertificateType::DEF,
    DigitalSignatureAlgorithm::DEF,
    SplitKeyMethod::DEF,
    SecretDataType::DEF,
    NameType::DEF,
    ObjectType::DEF,
    CryptographicAlgorithm::DEF,
    BlockCipherMode::DEF,
    PaddingMethod::DEF,
    HashingAlgorithm::DEF,
    KeyRoleType::DEF,
    State::DEF,
    RevocationReasonCode::DEF,
    LinkType::DEF,
    DerivationMethod::DEF,
    CertificateRequestType::DEF,
    ValidityIndicator::DEF,
    QueryFunction::DEF,
    CancellationResult::DEF,
    PutFunction::DEF,
    Operation::DEF,
    ResultStatus::DEF,
    ResultReason::DEF,
    BatchErrorContinuationOption::DEF,
    UsageLimitsUnit::DEF,
    EncodingOption::DEF,
    ObjectGroupMember::DEF,
    AlternativeNameType::DEF,
    KeyValueLocationType::DEF,
    AttestationType::DEF,
    RngAlgorithm::DEF,
    DrbgAlgorithm::DEF,
    Fips186Variation::DEF,
    ValidationAuthorityType::DEF,
    ValidationType::DEF,
    UnwrapMode::DEF,
    DestroyAction::DEF,
    ShreddingAlgorithm::DEF,
    RngMode::DEF,
    ClientRegistrationMethod::DEF,
    KeyWrapType::DEF,
    MaskGenerator::DEF,
    usage_mask::DEF,
    storage_status_mask::DEF,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_names_as_the_xml_encoding_does() {
        for (spec, xml) in [
            ("Pre-Active", "PreActive"),
            ("SHA-256", "SHA_256"),
            ("HMAC-SHA256", "HMAC_SHA256"),
            ("3DES", "DES3"),
            ("X.509", "X_509"),
            ("PKCS#1", "PKCS_1"),
            ("IV/Counter/Nonce", "IVCounterNonce"),
            ("Template-Attribute", "TemplateAttribute"),
            ("Re-key", "ReKey"),
            ("Re-certify", "ReCertify"),
            ("ANSI X9.31", "ANSIX9_31"),
            ("Unique Batch Item ID", "UniqueBatchItemID"),
            ("Uninterpreted Text String", "UninterpretedTextString"),
            ("MAC Generate", "MACGenerate"),
            ("Object archived", "ObjectArchived"),
        ] {
            assert_eq!(normalize(spec), xml, "{spec}");
        }
    }

    #[test]
    fn tag_table_is_sorted_complete_and_unambiguous() {
        assert!(TAGS.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(TAGS.first().map(|t| t.0), Some(tag::ACTIVATION_DATE));
        assert_eq!(TAGS.last().map(|t| t.0), Some(Tag::new(0x420124)));
        let names: std::collections::HashSet<String> =
            TAGS.iter().map(|(_, n)| normalize(n)).collect();
        assert_eq!(names.len(), TAGS.len());
        assert_eq!(tag_by_name("AttributeValue"), Some(tag::ATTRIBUTE_VALUE));
        assert_eq!(tag_by_name("Attribute Value"), Some(tag::ATTRIBUTE_VALUE));
        assert_eq!(tag_name(tag::UNIQUE_IDENTIFIER), Some("Unique Identifier"));
    }

    #[test]
    fn enumerations_resolve_both_ways() {
        assert_eq!(State::from_u32(1), Some(State::PreActive));
        assert_eq!(State::DEF.value_of("PreActive"), Some(1));
        assert_eq!(CryptographicAlgorithm::DEF.value_of("DES3"), Some(2));
        assert_eq!(
            enum_for_tag(tag::MASK_GENERATOR_HASHING_ALGORITHM).map(|e| e.name),
            Some("Hashing Algorithm")
        );
        for def in ENUMS {
            let names: std::collections::HashSet<String> =
                def.values.iter().map(|(_, n)| normalize(n)).collect();
            assert_eq!(names.len(), def.values.len(), "{}", def.name);
        }
    }
}
