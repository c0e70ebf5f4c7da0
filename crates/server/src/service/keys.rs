//! Keys an operation makes, fetches and pushes, and retires again when the operation fails, each
//! step audited. Key material passes through here from the provider to the host and is wiped when
//! dropped.

use tresor_api::ErrorCode;
use tresor_core::ids::KeyRef;
use tresor_core::protocol::{Command, KeyMaterial};

use super::{ask_host, Context, ServiceError};

/// A key's material from its provider, for a push that follows at once; `what` names it in the
/// error ("new key", "host key").
pub(crate) async fn fetch(
    cx: &Context,
    key: KeyRef,
    what: &str,
) -> Result<KeyMaterial, ServiceError> {
    let (answer, material) = cx.broker.fetch(&key).await;
    let material = material.ok_or_else(|| {
        ServiceError::new(
            ErrorCode::ProviderError,
            format!("The {what} {key} cannot be fetched: {answer:?}"),
        )
    })?;
    Ok(KeyMaterial { key, material })
}

/// A new KEK on `provider` for `purpose`, with its material.
pub(crate) async fn create(
    cx: &Context,
    provider: &str,
    purpose: &str,
) -> Result<KeyMaterial, ServiceError> {
    let key = cx.broker.create_kek(provider, purpose).await?;
    fetch(cx, key, "new key").await
}

/// Sends keys to a host and waits until it holds them.
pub(crate) async fn push(
    cx: &Context,
    host: &str,
    keys: Vec<KeyMaterial>,
) -> Result<(), ServiceError> {
    ask_host(cx, host, Command::PushKeys { keys }).await?;
    Ok(())
}

/// A key made for a VM's operation that failed: no longer allowed to the VM, forgotten by its
/// host (if it got there), and deactivated on its provider.
pub(crate) async fn disown(cx: &Context, user: &str, vm: &str, host: &str, key: &KeyRef) {
    if let Some(mut reg) = cx.engine.registration(vm) {
        reg.keys.retain(|k| k != key);
        if let Err(e) = cx.engine.register(reg) {
            tracing::error!(%vm, key = %key, error = %e, "cannot take an unused key from the registry");
        }
    }
    let forget = Command::ForgetKeys {
        keys: vec![key.clone()],
    };
    if let Err(e) = cx.hub.request(host, forget, cx.hub.timeout()).await {
        tracing::warn!(%host, key = %key, error = %e, "the host could not be told to forget an unused key");
    }
    retire(cx, user, Audited::Vm(vm), std::slice::from_ref(key)).await;
}

/// Deactivates keys the server made for an operation that failed, each audited; a key that
/// cannot be deactivated is named in the log and an alarm, so that nothing Active is forgotten.
pub(crate) async fn retire(cx: &Context, user: &str, made_for: Audited<'_>, keys: &[KeyRef]) {
    for key in keys {
        let result = cx
            .broker
            .deactivate(
                key,
                &format!("tresor: the operation on {made_for} that made it failed"),
            )
            .await;
        match result {
            Ok(()) => {
                let _ = audit(cx, user, "deactivate unused key", made_for, key);
            }
            Err(e) => {
                tracing::error!(%made_for, key = %key, error = %e, "a key made for a failed operation is still Active");
                let _ = cx.store.raise_alarm(
                    "key.orphaned",
                    &format!("provider:{}/{}", key.provider(), key.key_id),
                    &e.to_string(),
                    crate::enrol::now(),
                );
            }
        }
    }
}

/// What a cryptographic operation was done on, for its audit record.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Audited<'a> {
    Vm(&'a str),
    Host(&'a str),
}

impl std::fmt::Display for Audited<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Audited::Vm(n) => write!(f, "VM {n}"),
            Audited::Host(n) => write!(f, "host {n}"),
        }
    }
}

/// The audit record of a cryptographic operation on a VM or a host.
pub(crate) fn audit(
    cx: &Context,
    user: &str,
    operation: &str,
    on: Audited<'_>,
    key: &KeyRef,
) -> Result<(), ServiceError> {
    let (vm, host) = match on {
        Audited::Vm(v) => (Some(v.to_owned()), None),
        Audited::Host(h) => (None, Some(h.to_owned())),
    };
    cx.store.add_event(&crate::store::EventRow {
        id: 0,
        time: crate::enrol::now(),
        event_type: tresor_core::events::CRYPTO_OPERATION.id.into(),
        severity: "info".into(),
        vm,
        host,
        provider: Some(key.provider().into()),
        user: Some(user.into()),
        args: vec![
            ("user".into(), user.into()),
            ("operation".into(), operation.into()),
            ("key".into(), key.key_id.clone()),
        ],
    })?;
    Ok(())
}
