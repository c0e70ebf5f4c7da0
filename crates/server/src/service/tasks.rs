//! Long work after the answer. Disk work (encrypt, decrypt, rekey) is one request to the VM's
//! host, followed by its task for as long as the host reports progress; the task ends with the
//! host's answer. When the server loses sight of the request (it restarted, the session ended),
//! the task is settled from what the host says later: its answer under the task's id, its
//! progress, or the VM's report once the journal (`vm-operation.json`) holds no operation any
//! more. A key made for the work is kept when the host uses it and retired when not.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tresor_api::views::Task;
use tresor_api::ErrorCode;
use tresor_core::access::Privilege;
use tresor_core::ids::KeyRef;
use tresor_core::protocol::{Command, Reply, VmReport};
use tresor_core::task::{TaskEvent, TaskKind, TaskState};

use super::keys::{self, Audited};
use super::{Caller, Context, ServiceError};
use crate::agents::{HubError, HubEvent, Watch};
use crate::store::TaskRow;
use crate::tasks::{view, TaskCtl, TaskMoveError};

/// The tasks.
#[derive(Clone, Copy, Debug)]
pub struct TaskService<'a> {
    pub(super) cx: &'a Context,
}

/// The privilege that starting (and so cancelling) a task of `kind` needs.
pub fn privilege_of(kind: TaskKind) -> Privilege {
    match kind {
        TaskKind::Encrypt => Privilege::CryptoEncrypt,
        TaskKind::Decrypt => Privilege::CryptoDecrypt,
        TaskKind::Rekey | TaskKind::DeepRekey => Privilege::CryptoRecrypt,
        TaskKind::Unlock => Privilege::CryptoRegisterVm,
        TaskKind::Register => Privilege::VmRegister,
        TaskKind::Import => Privilege::VmConfig,
    }
}

fn no_task(id: &str) -> ServiceError {
    ServiceError::new(
        ErrorCode::NotFound,
        format!("No task {id}; list them with `tresor task list`"),
    )
}

impl TaskService<'_> {
    /// The newest tasks (at most `limit`), running ones with their progress now.
    pub fn list(&self, limit: usize, running: bool) -> Result<Vec<Task>, ServiceError> {
        Ok(self
            .cx
            .tasks
            .list(limit.clamp(1, 10_000), running)?
            .iter()
            .map(view)
            .collect())
    }

    /// One task.
    pub fn show(&self, id: &str) -> Result<Task, ServiceError> {
        let row = self.cx.tasks.get(id)?.ok_or_else(|| no_task(id))?;
        Ok(view(&row))
    }

    /// Cancels a task where that is safe: disk work is told to stop and undo what it did
    /// (the task ends cancelled once the host has), bulk work stops at its next step. It needs
    /// the privilege that starting the task needs.
    pub async fn cancel(&self, caller: &Caller, id: &str) -> Result<Task, ServiceError> {
        let cx = self.cx;
        let row = cx.tasks.get(id)?.ok_or_else(|| no_task(id))?;
        let kind: TaskKind = row.kind.parse().map_err(|_| no_task(id))?;
        caller.require(
            privilege_of(kind),
            &format!("Cancelling task {id} ({kind})"),
        )?;
        if kind.cancellation().is_none() {
            return Err(ServiceError::new(
                ErrorCode::Conflict,
                format!(
                    "A {} task cannot be cancelled; it ends by itself shortly",
                    kind.as_str()
                ),
            ));
        }
        if row.state != TaskState::Running.as_str() {
            return Err(ServiceError::new(
                ErrorCode::Conflict,
                format!(
                    "Task {id} is {}; only a running task can be cancelled",
                    row.state
                ),
            ));
        }
        if kind.on_host() {
            // The host first: one that cannot cancel leaves the task running, as it was.
            let host = row.host.clone().unwrap_or_default();
            let request = cx.tasks.watch(id).and_then(|w| w.id()).unwrap_or(0);
            cx.hub.cancel(&host, request).await.map_err(|e| match e {
                HubError::CannotCancel(_) => ServiceError::new(ErrorCode::Conflict, e.to_string()),
                _ => super::agent_error(e),
            })?;
        }
        let row = cx.tasks.ask_cancel(id).map_err(|e| match e {
            TaskMoveError::Store(e) => e.into(),
            other => ServiceError::new(ErrorCode::Conflict, format!("Task {id}: {other}")),
        })?;
        tracing::info!(task = %id, user = %caller.user, "task cancellation asked");
        Ok(view(&row))
    }
}

/// Disk work on a VM's host.
#[derive(Clone, Debug)]
pub(crate) struct DiskWork {
    pub kind: TaskKind,
    pub host: String,
    pub vm: String,
    /// The VM's folder on its host (asked about when the outcome is unclear).
    pub path: String,
    /// The key made for the work (encrypt, rekey), already allowed and pushed.
    pub key: Option<KeyRef>,
    pub user: String,
}

/// Starts disk work as a task and answers it at once.
pub(crate) fn start_disk(
    cx: &Context,
    work: DiskWork,
    command: Command,
) -> Result<Task, ServiceError> {
    let (ctl, started) = cx.tasks.start(
        work.kind,
        &work.user,
        Some(&work.vm),
        Some(&work.host),
        work.key.clone(),
    )?;
    let task = cx.clone();
    cx.tasks
        .spawn(async move { run_disk(task, ctl, work, command).await });
    Ok(started)
}

async fn run_disk(cx: Context, ctl: TaskCtl, work: DiskWork, command: Command) {
    let watch = Arc::new(Watch::default());
    cx.tasks.attach(&ctl.id, Some(watch.clone()));
    let result = cx
        .hub
        .request_watched(
            &work.host,
            command,
            cx.hub.timeout(),
            Some(ctl.id.clone()),
            watch,
        )
        .await;
    cx.tasks.attach(&ctl.id, None);
    match result {
        Ok(reply) => settle(&cx, &ctl.id, &work, reply).await,
        Err(HubError::NotConnected(_)) => {
            // Never sent: nothing changed on the host.
            if let Some(k) = &work.key {
                keys::retire(
                    &cx,
                    &work.user,
                    Audited::Vm(&work.vm),
                    std::slice::from_ref(k),
                )
                .await;
            }
            cx.tasks.end(&ctl.id,
                TaskEvent::Failed,
                None,
                Some((
                    ErrorCode::HostUnavailable.as_str().into(),
                    format!(
                        "Host {} is not connected; nothing was changed. Start its agent and run the operation again",
                        work.host
                    ),
                )),
            );
        }
        Err(e) => {
            // The host may still be at it (or finish it after its agent restarts): its later
            // answer, progress or report settles the task.
            tracing::warn!(task = %ctl.id, error = %e, "lost sight of a task's request; following the host");
            recover(cx, ctl.id, work).await;
        }
    }
}

/// Takes the host's answer to disk work.
async fn settle(cx: &Context, id: &str, work: &DiskWork, reply: Reply) {
    match reply {
        Reply::Vm { vm } => {
            let vms = cx.vms();
            if let Err(e) = vms.settle_keys(&vm) {
                tracing::error!(task = %id, error = %e, "cannot settle a VM's keys");
            }
            cx.engine.observe_now(&work.host, vm).await;
            let result = vms
                .show(&work.vm)
                .ok()
                .and_then(|v| serde_json::to_value(v).ok());
            cx.tasks.end(id, TaskEvent::Succeeded, result, None);
        }
        Reply::Failed { code, message } => {
            keep_or_retire(cx, work).await;
            let event = match code.as_str() {
                "cancelled" => TaskEvent::Cancelled,
                _ => TaskEvent::Failed,
            };
            let code = match code.as_str() {
                "cancelled" => "cancelled".to_owned(),
                _ => super::reply_error(Reply::Failed {
                    code,
                    message: String::new(),
                })
                .err()
                .map_or_else(|| "hostRefused".into(), |e| e.code.as_str().to_owned()),
            };
            cx.tasks.end(id, event, None, Some((code, message)));
        }
        other => {
            tracing::warn!(task = %id, reply = ?other, "unexpected answer to disk work");
            cx.tasks.end(
                id,
                TaskEvent::Failed,
                None,
                Some((
                    ErrorCode::Internal.as_str().into(),
                    "The host answered the work with something else; see the server's log".into(),
                )),
            );
        }
    }
}

/// After work that did not succeed: the key made for it is kept if the host's VM uses it (an
/// encryption interrupted half-way that the host finishes later, a deep rekey stopped between
/// disks), and retired if not. When the host cannot say, the key is kept.
async fn keep_or_retire(cx: &Context, work: &DiskWork) {
    let Some(key) = &work.key else {
        return;
    };
    let inspect = Command::Inspect {
        path: work.path.clone(),
    };
    match super::ask_host(cx, &work.host, inspect).await {
        Ok(Reply::Vm { vm }) if !vm.keys.iter().any(|k| &k.key == key) => {
            keys::retire(
                cx,
                &work.user,
                Audited::Vm(&work.vm),
                std::slice::from_ref(key),
            )
            .await;
        }
        Ok(Reply::Vm { vm }) => {
            cx.engine.observe_report(&work.host, Arc::new(vm));
        }
        other => {
            tracing::warn!(vm = %work.vm, key = %key, answer = ?other.err(), "cannot ask whether a key made for failed work is used; it is kept");
        }
    }
}

/// Whether the VM's report shows the work done (`Some(true)`), not done (`Some(false)`), or
/// still under way or waiting in its journal (`None`).
fn outcome(kind: TaskKind, key: Option<&KeyRef>, report: &VmReport) -> Option<bool> {
    if report.operation.is_some() {
        return None;
    }
    Some(match kind {
        TaskKind::Encrypt => report.encrypted && report.key_id.as_ref() == key,
        TaskKind::Decrypt => !report.encrypted,
        TaskKind::Rekey | TaskKind::DeepRekey => report.key_id.as_ref() == key,
        // An import keeps no journal: what became of it cannot be told from the VM.
        TaskKind::Import => false,
        TaskKind::Unlock | TaskKind::Register => return None,
    })
}

/// Follows disk work whose request the server lost sight of, until the host settles it.
async fn recover(cx: Context, id: String, work: DiskWork) {
    let mut events = cx.hub.subscribe();
    let quiet = Duration::from_secs(3);
    let mut alive = Instant::now();
    let mut connected_since: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(HubEvent::TaskProgress { host, task, done, total })
                    if task == id && host == work.host =>
                {
                    cx.tasks.reported(&id, done, total);
                    alive = Instant::now();
                }
                Ok(HubEvent::TaskReply { host, task, reply }) if task == id && host == work.host => {
                    settle(&cx, &id, &work, reply).await;
                    return;
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            _ = tick.tick() => {
                if cx.tasks.get(&id).ok().flatten().is_none_or(|t| {
                    t.state.parse::<TaskState>().is_ok_and(|s| s.is_finished())
                }) {
                    return;
                }
                if !cx.hub.connected().contains(&work.host) {
                    connected_since = None;
                    continue;
                }
                let since = *connected_since.get_or_insert_with(Instant::now);
                // The host's report predates work it still carries: it says nothing of its end.
                if alive.elapsed() < quiet
                    || since.elapsed() < quiet
                    || cx.hub.working(&work.host).as_deref() == Some(id.as_str())
                {
                    continue;
                }
                let report = cx
                    .hub
                    .inventories()
                    .into_iter()
                    .find(|(h, _, _)| h == &work.host)
                    .and_then(|(_, _, vms)| vms.into_iter().find(|v| v.name == work.vm));
                let Some(report) = report else {
                    continue;
                };
                let Some(done) = outcome(work.kind, work.key.as_ref(), &report) else {
                    continue;
                };
                let cancelling = cx
                    .tasks
                    .get(&id)
                    .ok()
                    .flatten()
                    .is_some_and(|t| t.state == TaskState::Cancelling.as_str());
                if done {
                    settle(&cx, &id, &work, Reply::Vm { vm: (*report).clone() }).await;
                } else {
                    let (code, message) = if work.kind == TaskKind::Import {
                        ("hostRefused", format!("The import of an image into VM {} ended on host {} without an answer (its agent or the server restarted); `tresor vm show {}` shows whether its disk is there, send the image again if not", work.vm, work.host, work.vm))
                    } else if cancelling {
                        ("cancelled", format!("The {} of VM {} was cancelled and undone on host {}", work.kind.as_str(), work.vm, work.host))
                    } else {
                        ("hostRefused", format!("The {} of VM {} ended on host {} without an answer (its agent or the server restarted) and the VM is as it was before; run it again", work.kind.as_str(), work.vm, work.host))
                    };
                    settle(&cx, &id, &work, Reply::Failed { code: code.into(), message }).await;
                }
                return;
            }
        }
    }
}

/// Takes up the tasks a previous run of the server left unfinished: disk work is followed on
/// its host until the host settles it; bulk work cannot go on and ends failed, saying what to do.
pub fn resume_all(cx: &Context) -> Result<usize, ServiceError> {
    let rows: Vec<TaskRow> = cx.tasks.unfinished()?;
    let n = rows.len();
    for row in rows {
        let Ok(kind) = row.kind.parse::<TaskKind>() else {
            continue;
        };
        let ctl = cx.tasks.track(row.clone());
        if kind.on_host() {
            let (Some(host), Some(vm)) = (row.host.clone(), row.vm.clone()) else {
                continue;
            };
            let path = cx
                .store
                .vm(&vm)
                .ok()
                .flatten()
                .map(|r| r.path)
                .unwrap_or_default();
            let work = DiskWork {
                kind,
                host,
                vm,
                path,
                key: row.key.clone(),
                user: row.user.clone(),
            };
            tracing::info!(task = %row.id, vm = %work.vm, "following a task the server was restarted in");
            let task = cx.clone();
            cx.tasks
                .spawn(async move { recover(task, ctl.id, work).await });
        } else {
            let message = format!(
                "The server restarted while this {} ran; what it did is kept. Run it again for the rest",
                kind.as_str()
            );
            cx.tasks.end(
                &ctl.id,
                TaskEvent::Failed,
                None,
                Some(("interrupted".into(), message)),
            );
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tresor_core::protocol::PowerState;

    fn report(encrypted: bool, key: Option<&str>, operation: Option<&str>) -> VmReport {
        VmReport {
            disk_formats: Vec::new(),
            data_paths: Vec::new(),
            id: "id".into(),
            name: "vm".into(),
            path: "/ds/vm".into(),
            encrypted,
            power_state: PowerState::PoweredOff,
            key_id: key.map(|k| KeyRef::new("kms", k)),
            keys: vec![],
            disks: vec![],
            operation: operation.map(Into::into),
        }
    }

    #[test]
    fn the_journal_and_the_keys_tell_how_lost_work_ended() {
        let new = KeyRef::new("kms", "new");
        let k = Some(&new);
        assert_eq!(
            outcome(
                TaskKind::Encrypt,
                k,
                &report(true, Some("new"), Some("encrypt"))
            ),
            None
        );
        assert_eq!(
            outcome(TaskKind::Encrypt, k, &report(true, Some("new"), None)),
            Some(true)
        );
        assert_eq!(
            outcome(TaskKind::Encrypt, k, &report(false, None, None)),
            Some(false)
        );
        assert_eq!(
            outcome(TaskKind::Decrypt, None, &report(false, None, None)),
            Some(true)
        );
        assert_eq!(
            outcome(TaskKind::Decrypt, None, &report(true, Some("old"), None)),
            Some(false)
        );
        assert_eq!(
            outcome(TaskKind::DeepRekey, k, &report(true, Some("old"), None)),
            Some(false)
        );
        assert_eq!(
            outcome(
                TaskKind::DeepRekey,
                k,
                &report(true, Some("new"), Some("deepRekey"))
            ),
            None
        );
    }
}
