//! `tresor server`: the key broker and management server.
//!
//! - [`agents`]: the sessions of host agents: who is connected, requests and replies, what they
//!   report.

#![forbid(unsafe_code)]

pub mod agents;
