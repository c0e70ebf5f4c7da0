//! `tresor kms`: Tresor's embedded KMIP key server.
//!
//! - [`engine`]: the KMIP operations on decoded messages, with object ownership and the object
//!   lifecycle ([`lifecycle`]).
//! - [`store`]: SQLite persistence with group commit; the only module that speaks SQL.
//! - [`crypto`]: the master key that seals key material at rest.
//! - [`server`]: KMIP over mutual TLS.
//! - [`admin`]: the administrator's commands (`tresor kms key …`).
//! - [`config`]: the configuration file, `kms.toml`.

#![forbid(unsafe_code)]

pub mod admin;
pub mod attributes;
pub mod backup;
pub mod config;
pub mod crypto;
pub mod engine;
pub mod lifecycle;
pub mod metrics;
pub mod server;
pub mod store;
#[doc(hidden)]
pub mod testing;
