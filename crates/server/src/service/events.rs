//! The event log (the audit trail and what the engine saw) and the alarms, as the API shows them.

use tresor_api::views::{Alarm, Event};
use tresor_api::ErrorCode;
use tresor_core::Lang;

use super::{Context, ServiceError};
use crate::store::{AlarmRow, EventFilter, EventRow};

/// The event log and the alarms.
#[derive(Clone, Copy, Debug)]
pub struct Events<'a> {
    pub(super) cx: &'a Context,
}

impl Events<'_> {
    /// The events that match `filter`, oldest first, their messages in `lang`.
    pub fn list(&self, filter: &EventFilter, lang: Lang) -> Result<Vec<Event>, ServiceError> {
        Ok(self
            .cx
            .store
            .events(filter)?
            .iter()
            .map(|e| event_view(e, lang))
            .collect())
    }

    /// The id of the newest event (0 when there is none): where a stream without a start begins.
    pub fn last_id(&self) -> Result<i64, ServiceError> {
        Ok(self.cx.store.last_event_id()?)
    }

    /// The alarms that are raised.
    pub fn alarms(&self) -> Result<Vec<Alarm>, ServiceError> {
        Ok(self.cx.store.alarms(true)?.iter().map(alarm_view).collect())
    }

    /// Acknowledges alarm `id` in `user`'s name.
    pub fn acknowledge(&self, id: i64, user: &str) -> Result<(), ServiceError> {
        if !self.cx.store.acknowledge_alarm(id, user)? {
            return Err(ServiceError::new(
                ErrorCode::NotFound,
                format!("No alarm {id}; list them with `tresor alarm list`"),
            ));
        }
        Ok(())
    }
}

/// An event as the API shows it, its message in `lang`.
pub fn event_view(e: &EventRow, lang: Lang) -> Event {
    let args: Vec<(&str, &str)> = e
        .args
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let message = tresor_core::events::by_id(&e.event_type)
        .map(|t| tresor_core::events::render(t, lang, &args))
        .unwrap_or_default();
    Event {
        id: e.id,
        time: e.time,
        event_type: e.event_type.clone(),
        severity: e.severity.clone(),
        vm: e.vm.clone(),
        host: e.host.clone(),
        provider: e.provider.clone(),
        user: e.user.clone(),
        message,
    }
}

/// An alarm as the API shows it.
pub fn alarm_view(a: &AlarmRow) -> Alarm {
    let (what, name) = a.object.split_once(':').unwrap_or(("", a.object.as_str()));
    let (message, next) = match (a.kind.as_str(), what) {
        ("vm.locked", _) => (
            format!("VM {name} is locked ({})", a.reason),
            format!("Run `tresor vm diagnose {name}` and follow its next step"),
        ),
        ("provider.unreachable", _) => (
            format!("Key provider {name} cannot be reached: {}", a.reason),
            format!("Check the provider and the network to it; `tresor provider status {name}` probes it again"),
        ),
        ("key.push.failed", _) => (
            format!("The keys of VM {name} {}", a.reason),
            format!("Check host connectivity and its agent's log; the server tries again. `tresor vm diagnose {name}`"),
        ),
        ("vm.operation.failing", _) => (
            format!("An interrupted operation on VM {name} keeps failing: {}", a.reason),
            format!("Read host's agent log for VM {name}; the agent keeps trying, and the alarm clears when it succeeds"),
        ),
        ("vm.discovered", _) => {
            let host = name.split('/').next().unwrap_or(name);
            (
                format!("Host {host} reports a VM the server has not registered: {}", a.reason),
                format!("Check host {host}; if the VM is yours, register it (`tresor vm list --discovered` shows its folder)"),
            )
        }
        ("provider.certificate.expiring", _) => {
            let provider = name.split(':').next().unwrap_or(name);
            (
                format!("Key provider {provider}: {}", a.reason),
                format!("Renew the certificate, then remove and add provider {provider} again with the new one"),
            )
        }
        _ => (a.reason.clone(), String::new()),
    };
    Alarm {
        id: a.id,
        kind: a.kind.clone(),
        object: a.object.clone(),
        reason: a.reason.clone(),
        raised: a.raised,
        cleared: a.cleared,
        acknowledged_by: a.acknowledged_by.clone(),
        message,
        next_step: next,
    }
}
