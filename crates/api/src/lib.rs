//! Tresor's REST API as a contract shared by the server and its clients: the error codes and the
//! one shape of an error answer ([`error`]), and the client every Rust caller uses ([`client`]):
//! the CLI, the benchmarks and the tests.

#![forbid(unsafe_code)]

pub mod client;
pub mod error;
pub mod views;

pub use client::{Answer, Client, ClientError, Trust};
pub use error::{ErrorBody, ErrorCode};
