//! KMIP 1.0 to 1.4 as a sans-I/O library: bytes in, values out.
//!
//! - [`ttlv`]: the binary tag-type-length-value codec, with limits for hostile input.
//! - [`spec`]: the specification's tags, enumerations and masks, with their names.
//! - [`xml`]: the KMIP XML encoding, used by the OASIS conformance test cases and for debugging.
//! - [`message`]: typed request and response messages of KMIP 1.0–1.4.
//! - [`pretty`]: a readable rendering of TTLV for logs and debugging, with key material hidden.
//!
//! Nothing here opens a socket or a file; the client and the server put transports around it.

#![forbid(unsafe_code)]

pub mod fields;
pub mod message;
pub mod pretty;
pub mod spec;
#[doc(hidden)]
pub mod testing;
pub mod ttlv;
pub mod xml;

pub use ttlv::{Item, ItemType, Tag, Value};

/// The Vendor Identification Tresor's own key server (`tresor kms`) answers to Query, by which
/// the Tresor server tells it from other vendors' key servers.
pub const TRESOR_VENDOR: &str = "Tresor";
