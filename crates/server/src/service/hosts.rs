//! The hosts: their views, join tokens, removal, the encryption mode and reboot. A host's mode
//! moves through the core's transitions (`tresor_core::host::next`): checked before the host is
//! asked, stored after it did it; what a host reports of its mode when it connects is stored too.

use tresor_api::requests::TokenRequest;
use tresor_api::views::{Host, HostWithVms, JoinToken};
use tresor_api::ErrorCode;
use tresor_core::host::{self as mode, HostCryptoEvent, HostCryptoState};
use tresor_core::ids::{KeyRef, NameKind};
use tresor_core::protocol::Command;
use tresor_core::vm::CryptoState;

use super::keys::{self, Audited};
use super::{ask_host, check_name, no_host, Context, ServiceError};
use crate::store::{EventRow, HostRecord};

/// The hosts.
#[derive(Clone, Copy, Debug)]
pub struct Hosts<'a> {
    pub(super) cx: &'a Context,
}

impl Hosts<'_> {
    /// Every host, with its VM counts.
    pub fn list(&self) -> Result<Vec<Host>, ServiceError> {
        let cx = self.cx;
        let connected = cx.hub.connected();
        // One pass over the VMs, not one per host: there may be thousands of each.
        let mut counts: std::collections::HashMap<&str, (usize, usize)> = Default::default();
        let vms = cx.store.stored_vms();
        for v in &vms {
            let c = counts.entry(v.record.host.as_str()).or_default();
            c.0 += 1;
            if v.record.crypto_state == CryptoState::Locked {
                c.1 += 1;
            }
        }
        // The keys its VMs report as held (the host key comes on top in encryption mode).
        let held = cx.engine.keys_held_by_host();
        let hosts = cx
            .store
            .hosts()?
            .into_iter()
            .map(|h| {
                let (vm_count, locked) = counts.get(h.name.as_str()).copied().unwrap_or_default();
                Host {
                    connected: connected.contains(&h.name),
                    crypto_state: h.crypto_state,
                    vm_count: vm_count as u64,
                    locked_vm_count: locked as u64,
                    keys_held: held.get(&h.name).copied().unwrap_or(0) as u64,
                    last_seen: h.last_seen,
                    name: h.name,
                }
            })
            .collect();
        Ok(hosts)
    }

    /// One host, with its VMs.
    pub fn show(&self, name: &str) -> Result<HostWithVms, ServiceError> {
        let host = self
            .list()?
            .into_iter()
            .find(|h| h.name == name)
            .ok_or_else(|| no_host(name))?;
        let vms = self
            .cx
            .store
            .vms()?
            .iter()
            .filter(|v| v.host == name)
            .map(super::vms::vm_view)
            .collect();
        Ok(HostWithVms { host, vms })
    }

    /// A one-time join token for an agent (valid for a minute to a week, an hour by default).
    pub fn join_token(&self, req: TokenRequest) -> Result<JoinToken, ServiceError> {
        let ttl = req.ttl_secs.unwrap_or(3600).clamp(60, 7 * 86400);
        if let Some(h) = &req.host {
            check_name(NameKind::Host, h)?;
        }
        if req.replace && req.host.is_none() {
            return Err(ServiceError::new(
                ErrorCode::BadRequest,
                "Replacing a host needs its name: tresor host token --host NAME --replace",
            ));
        }
        let grant = crate::store::JoinGrant {
            host: req.host.clone(),
            replace: req.replace,
        };
        let token = self.cx.enroller.new_token(ttl, &grant)?;
        Ok(JoinToken {
            token,
            ttl_secs: ttl,
            host: req.host,
            replace: req.replace,
        })
    }

    /// Forgets a host and refuses its certificate from now on; its session ends. Its VMs stay
    /// registered (shown disconnected) until unregistered.
    pub fn remove(&self, user: &str, host: &str) -> Result<(), ServiceError> {
        let cx = self.cx;
        if !cx.store.remove_host(host)? {
            return Err(no_host(host));
        }
        cx.hub.disconnect(host);
        host_event(
            cx,
            &tresor_core::events::HOST_REMOVED,
            host,
            None,
            user,
            vec![("user".into(), user.into())],
        )?;
        Ok(())
    }

    fn record(&self, host: &str) -> Result<HostRecord, ServiceError> {
        self.cx
            .store
            .hosts()?
            .into_iter()
            .find(|h| h.name == host)
            .ok_or_else(|| no_host(host))
    }

    /// Puts a host in encryption mode: it gets its host key (made on the default provider the
    /// first time, the same one after that) and may then run encrypted VMs.
    pub async fn enable_encryption(
        &self,
        user: &str,
        host: &str,
    ) -> Result<HostCryptoState, ServiceError> {
        let cx = self.cx;
        let mut record = self.record(host)?;
        super::reachable_host(cx, host)?;
        let prepared = transition(host, record.crypto_state, HostCryptoEvent::Prepare)?;
        let safe = transition(host, prepared, HostCryptoEvent::HostKeyReceived)?;
        // A host keeps its host key: enabling again (after a restart) sends the same one.
        let new_key = record.host_key_id.is_none();
        let key = match (&record.host_key_provider, &record.host_key_id) {
            (Some(p), Some(id)) => KeyRef::new(p, id),
            _ => {
                let provider = super::provider_or_default(cx, None)?;
                cx.broker
                    .create_kek(&provider, &format!("host:{host}"))
                    .await?
            }
        };
        let command = Command::EnableEncryption {
            host_key: keys::fetch(cx, key.clone(), "host key").await?,
        };
        // A host that did not answer may have taken the key; one that refused did not.
        let reply = cx
            .hub
            .request(host, command, cx.hub.timeout())
            .await
            .map_err(super::agent_error)?;
        if let Err(e) = super::reply_error(reply) {
            if new_key {
                keys::retire(cx, user, Audited::Host(host), std::slice::from_ref(&key)).await;
            }
            return Err(e);
        }
        record.crypto_state = safe;
        record.host_key_provider = Some(key.provider().to_owned());
        record.host_key_id = Some(key.key_id.clone());
        cx.store.put_host(&record)?;
        host_event(
            cx,
            &tresor_core::events::HOST_CRYPTO_ENABLED,
            host,
            Some(key.provider()),
            user,
            Vec::new(),
        )?;
        Ok(safe)
    }

    /// Takes a host out of encryption mode; the mode ends when the host restarts.
    pub async fn disable_encryption(
        &self,
        user: &str,
        host: &str,
    ) -> Result<HostCryptoState, ServiceError> {
        let cx = self.cx;
        let mut record = self.record(host)?;
        let next = transition(host, record.crypto_state, HostCryptoEvent::Disable)?;
        ask_host(cx, host, Command::DisableEncryption).await?;
        record.crypto_state = next;
        cx.store.put_host(&record)?;
        host_event(
            cx,
            &tresor_core::events::HOST_CRYPTO_DISABLED,
            host,
            None,
            user,
            Vec::new(),
        )?;
        Ok(next)
    }

    /// Stops a host's VMs and empties its key cache, as a restart of the host would; the
    /// encryption mode follows the restart (`pendingIncapable` ends).
    pub async fn reboot(&self, user: &str, host: &str) -> Result<HostCryptoState, ServiceError> {
        let mut record = self.record(host)?;
        ask_host(self.cx, host, Command::Reboot).await?;
        host_event(
            self.cx,
            &tresor_core::events::HOST_REBOOTED,
            host,
            None,
            user,
            vec![("user".into(), user.into())],
        )?;
        let next = transition(host, record.crypto_state, HostCryptoEvent::Restart)?;
        if next != record.crypto_state {
            record.crypto_state = next;
            self.cx.store.put_host(&record)?;
        }
        Ok(next)
    }
}

/// Records an event about `host` that `user` caused, with the catalogue's severity (`args`
/// beside the host's name).
fn host_event(
    cx: &Context,
    event: &tresor_core::events::EventType,
    host: &str,
    provider: Option<&str>,
    user: &str,
    args: Vec<(String, String)>,
) -> Result<(), ServiceError> {
    let mut all = vec![("host".to_owned(), host.to_owned())];
    all.extend(args);
    cx.store.add_event(&EventRow {
        id: 0,
        time: crate::enrol::now(),
        event_type: event.id.into(),
        severity: event.severity.as_str().into(),
        vm: None,
        host: Some(host.to_owned()),
        provider: provider.map(str::to_owned),
        user: Some(user.to_owned()),
        args: all,
    })?;
    Ok(())
}

/// The mode after `event`, or a refusal that says what to do instead.
fn transition(
    host: &str,
    from: HostCryptoState,
    event: HostCryptoEvent,
) -> Result<HostCryptoState, ServiceError> {
    mode::next(from, event).map_err(|_| match (from, event) {
        (HostCryptoState::PendingIncapable, HostCryptoEvent::Prepare) => ServiceError::new(
            ErrorCode::Conflict,
            format!(
                "Host {host} leaves encryption mode when it restarts (pendingIncapable); reboot it with `tresor host reboot {host}`, then enable encryption again"
            ),
        )
        .de(format!(
            "Host {host} verlässt den Verschlüsselungsmodus beim Neustart (pendingIncapable); starten Sie ihn mit `tresor host reboot {host}` neu und aktivieren Sie die Verschlüsselung dann erneut"
        )),
        _ => ServiceError::new(
            ErrorCode::Conflict,
            format!(
                "Host {host} is in encryption mode {}, which does not allow this; `tresor host show {host}` shows it",
                from.as_str()
            ),
        ),
    })
}
