//! The services: what the API's operations do, behind the HTTP layer. A handler in [`crate::api`]
//! extracts the request, authenticates the caller and checks the privilege the operation needs,
//! calls one method here and answers what it returns; everything between (the registry's checks,
//! keys made on providers and pushed to hosts, requests to agents, what is undone when a step
//! fails, the audit records) happens here, on top of the store, the engine, the broker and the
//! hub. Nothing here knows HTTP: a failure is a [`ServiceError`] with a stable code, which the API
//! turns into a status in one place.
//!
//! - [`vms`]: the VMs: the list and one VM, diagnosis, create, register, disks, power, the
//!   operations on a VM and unlocking.
//! - [`hosts`]: the hosts: join tokens, removal, encryption mode and reboot.
//! - [`events`]: the event log and the alarms.
//! - [`keys`]: keys made, fetched, pushed and retired for an operation, with their audit records.
//! - [`providers`]: key providers (their trust and probes live in [`crate::providers`]).
//! - [`accounts`]: signing in, users, roles and passwords (on [`crate::accounts`]).
//! - [`settings`]: the settings (the unlock policy).
//! - [`tasks`]: long work after the answer: disk work on a host followed to its end (also
//!   across a restart of the server, from the host's journal), cancellation.

use std::sync::Arc;

use tresor_api::ErrorCode;
use tresor_core::access::Privilege;

use crate::agents::AgentHub;
use crate::engine::Engine;
use crate::enrol::Enroller;
use crate::store::{Store, StoreError};

pub mod accounts;
pub mod events;
pub mod hosts;
pub mod keys;
pub mod providers;
pub mod settings;
pub mod tasks;
pub mod vms;

/// What the services work on: the state of the server, shared by every request.
#[derive(Clone, Debug)]
pub struct Context {
    pub store: Arc<Store>,
    pub engine: Arc<Engine>,
    pub hub: Arc<AgentHub>,
    pub enroller: Arc<Enroller>,
    pub broker: Arc<crate::broker::KeyBroker>,
    pub providers: Arc<crate::providers::Providers>,
    /// Sign-in limits and how long login tokens live.
    pub logins: Arc<crate::accounts::LoginGuard>,
    /// Long work, carried out after the answer.
    pub tasks: Arc<crate::tasks::Tasks>,
}

impl Context {
    /// The VMs.
    pub fn vms(&self) -> vms::Vms<'_> {
        vms::Vms { cx: self }
    }

    /// The hosts.
    pub fn hosts(&self) -> hosts::Hosts<'_> {
        hosts::Hosts { cx: self }
    }

    /// The event log and the alarms.
    pub fn events(&self) -> events::Events<'_> {
        events::Events { cx: self }
    }

    /// Users, roles, passwords and signing in.
    pub fn accounts(&self) -> accounts::Accounts<'_> {
        accounts::Accounts { cx: self }
    }

    /// The key providers (the field `providers` is their trust and probes underneath).
    pub fn provider_service(&self) -> providers::ProviderService<'_> {
        providers::ProviderService { cx: self }
    }

    /// The settings.
    pub fn settings(&self) -> settings::Settings<'_> {
        settings::Settings { cx: self }
    }

    /// The tasks.
    pub fn task_service(&self) -> tasks::TaskService<'_> {
        tasks::TaskService { cx: self }
    }
}

/// Who asks, with the privileges their roles grant: the API authenticates the caller and checks
/// the privilege an operation always needs; a service checks those that depend on what it finds
/// (an encrypted VM's disk, a folder whose keys must be fetched), before it changes anything.
#[derive(Clone, Debug)]
pub struct Caller {
    pub user: String,
    privileges: Vec<String>,
}

impl Caller {
    pub fn new(user: String, privileges: Vec<String>) -> Caller {
        Caller { user, privileges }
    }

    /// Whether the caller holds `privilege`.
    pub fn may(&self, privilege: Privilege) -> bool {
        self.privileges.iter().any(|p| p == privilege.id())
    }

    /// Refuses (403, naming the privilege) unless the caller may do `action` with `privilege`.
    pub fn require(&self, privilege: Privilege, action: &str) -> Result<(), ServiceError> {
        if self.may(privilege) {
            return Ok(());
        }
        let denied = tresor_core::access::Denied {
            user: self.user.clone(),
            action: action.into(),
            privilege,
        };
        Err(ServiceError::new(ErrorCode::Forbidden, denied.to_string()).de(denied.message_de()))
    }
}

/// Why an operation was refused or failed: a stable code (the API's status follows from it), a
/// message that says what to do, and for the messages an operator meets in the console, the same
/// in German as well.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ServiceError {
    pub code: ErrorCode,
    pub message: String,
    pub message_de: Option<String>,
}

impl ServiceError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ServiceError {
        ServiceError {
            code,
            message: message.into(),
            message_de: None,
        }
    }

    /// The same message in German (answered as `messages.de` beside `message`).
    pub fn de(mut self, message: impl Into<String>) -> ServiceError {
        self.message_de = Some(message.into());
        self
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> ServiceError {
        tracing::error!(error = %e, "store failed");
        ServiceError::new(
            ErrorCode::Storage,
            "The server cannot read or write its database; see its log",
        )
    }
}

impl From<crate::broker::BrokerError> for ServiceError {
    fn from(e: crate::broker::BrokerError) -> ServiceError {
        use crate::broker::BrokerError;
        let code = match &e {
            BrokerError::UnknownProvider(_) => ErrorCode::NotFound,
            BrokerError::Create { error, .. } if error.is_connection() => {
                ErrorCode::ProviderUnreachable
            }
            BrokerError::Create { .. } | BrokerError::Deactivate { .. } => ErrorCode::ProviderError,
        };
        ServiceError::new(code, e.to_string())
    }
}

/// Refuses a name that could become a path, an option or a line break (400, `badName`).
pub(crate) fn check_name(kind: tresor_core::ids::NameKind, name: &str) -> Result<(), ServiceError> {
    tresor_core::ids::check_name(kind, name)
        .map_err(|e| ServiceError::new(ErrorCode::BadName, e.to_string()))
}

pub(crate) fn no_vm(name: &str) -> ServiceError {
    ServiceError::new(
        ErrorCode::NotFound,
        format!("No VM named {name}; list them with `tresor vm list`"),
    )
    .de(format!(
        "Es gibt keine VM namens {name}; `tresor vm list` zeigt alle"
    ))
}

pub(crate) fn no_host(name: &str) -> ServiceError {
    ServiceError::new(
        ErrorCode::NotFound,
        format!("No host {name}; list them with `tresor host list`"),
    )
}

pub(crate) fn no_provider(name: &str) -> ServiceError {
    ServiceError::new(
        ErrorCode::NotFound,
        format!("No key provider {name}; list them with `tresor provider list`"),
    )
}

/// Refuses a host that is not enrolled (404) or whose agent is not connected now (503), before a
/// request is sent to it or anything is made for it.
pub(crate) fn reachable_host(cx: &Context, host: &str) -> Result<(), ServiceError> {
    check_name(tresor_core::ids::NameKind::Host, host)?;
    if cx.hub.connected().iter().any(|h| h == host) {
        return Ok(());
    }
    if cx.store.host(host)?.is_none() {
        return Err(no_host(host));
    }
    Err(ServiceError::new(
        ErrorCode::HostUnavailable,
        format!("Host {host} is not connected; start its agent and try again"),
    )
    .de(format!(
        "Host {host} ist nicht verbunden; starten Sie seinen Agenten und versuchen Sie es erneut"
    )))
}

/// Sends `command` to `host` and waits for its answer; a host that is not there, does not
/// answer or refuses is an error.
pub(crate) async fn ask_host(
    cx: &Context,
    host: &str,
    command: tresor_core::protocol::Command,
) -> Result<tresor_core::protocol::Reply, ServiceError> {
    let reply = cx
        .hub
        .request(host, command, cx.hub.timeout())
        .await
        .map_err(agent_error)?;
    reply_error(reply)
}

pub(crate) fn agent_error(e: crate::agents::HubError) -> ServiceError {
    ServiceError::new(ErrorCode::HostUnavailable, e.to_string())
}

/// A host's refusal as an error, keeping what the host says of itself (no such VM, exists).
pub(crate) fn reply_error(
    reply: tresor_core::protocol::Reply,
) -> Result<tresor_core::protocol::Reply, ServiceError> {
    match reply {
        tresor_core::protocol::Reply::Failed { code, message } => {
            let code = match code.as_str() {
                "noSuchVm" => ErrorCode::NotFound,
                "exists" => ErrorCode::Exists,
                "tooLarge" => ErrorCode::TooLarge,
                _ => ErrorCode::HostRefused,
            };
            Err(ServiceError::new(code, message))
        }
        other => Ok(other),
    }
}

/// The provider asked for, or else the default one.
pub(crate) fn provider_or_default(
    cx: &Context,
    asked: Option<String>,
) -> Result<String, ServiceError> {
    match asked {
        Some(p) => Ok(p),
        None => cx
            .store
            .providers()?
            .into_iter()
            .find(|p| p.is_default)
            .map(|p| p.name)
            .ok_or_else(|| {
                ServiceError::new(ErrorCode::NoProvider,
                    "No default key provider; add one with `tresor provider add`, or name one with --provider",
                )
            }),
    }
}

/// A language a message is asked in (`en` when none is named).
pub fn parse_lang(lang: Option<&str>) -> Result<tresor_core::Lang, ServiceError> {
    lang.unwrap_or("en")
        .parse()
        .map_err(|m: String| ServiceError::new(ErrorCode::BadRequest, m))
}
