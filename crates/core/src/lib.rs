//! Tresor's domain, without I/O: no sockets, files, clocks, threads or SQL. Everything here is a
//! value or a function of values, so the rules of the system are tested by themselves.
//!
//! - [`ids`]: names of VMs, hosts, providers and keys.
//! - [`vm`]: a VM's crypto state, and the verdict that decides when it is locked and why.
//! - [`reconcile`]: the locked-VM engine's decisions: fetch, push, publish.
//! - [`registry`]: the registered VMs, which decide where keys may go.
//! - [`host`]: a host's encryption mode.
//! - [`ops`]: which operations a VM's state allows, and the messages of refusal.
//! - [`events`]: event types with their messages in English and German.
//! - [`diagnose`]: the troubleshooting procedure as a function, in English and German.
//! - [`access`]: privileges and the built-in roles.
//! - [`task`]: long work as tasks: kinds, states and their moves.
//! - [`protocol`]: the messages between host agents and the server, and their framing.

#![forbid(unsafe_code)]

pub mod access;
pub mod diagnose;
pub mod events;
pub mod host;
pub mod ids;
pub mod names;
pub mod ops;
pub mod protocol;
pub mod reconcile;
pub mod registry;
pub mod task;
pub mod vm;

/// A language for messages people read.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    #[default]
    En,
    De,
}

impl std::str::FromStr for Lang {
    type Err = String;
    fn from_str(s: &str) -> Result<Lang, String> {
        match s {
            "en" => Ok(Lang::En),
            "de" => Ok(Lang::De),
            other => Err(format!("Unknown language \"{other}\"; use en or de")),
        }
    }
}
