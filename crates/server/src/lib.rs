//! `tresor server`: the key broker and management server.
//!
//! - [`accounts`]: users (argon2id passwords), API tokens, roles and grants.
//! - [`api`]: the REST API under `/api/v1`: the HTTP layer, a privilege check on every operation.
//! - [`agents`]: the sessions of host agents: who is connected, requests and replies, what they
//!   report.
//! - [`broker`]: the key broker: KEKs created on providers, keys fetched by id and their answers
//!   classified for the locked-VM engine.
//! - [`console`]: the web console, compiled in, served at `/`.
//! - [`enrol`]: join tokens and the CA that signs agents' certificates.
//! - [`providers`]: key providers: trust, the default, and the status probe with its alarms.
//! - [`run`]: `tresor server init` and `tresor server`.
//! - [`service`]: what the API's operations do, behind the HTTP layer: VMs, hosts, events and
//!   alarms, and the keys an operation makes and pushes.
//! - [`store`]: persistence, the only module of the server that speaks SQL.
//! - [`engine`]: the locked-VM engine, the reconciler between hosts' reports and their needs.

#![forbid(unsafe_code)]

pub mod accounts;
pub mod agents;
pub mod api;
pub mod backup;
pub mod broker;
pub mod console;
pub mod engine;
pub mod enrol;
pub mod forward;
pub mod https;
pub mod lease;
pub mod metrics;
pub mod providers;
pub mod run;
pub mod service;
pub mod store;
pub mod syslog;
pub mod tasks;
pub mod vmview;
