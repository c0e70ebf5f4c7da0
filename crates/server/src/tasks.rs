//! The tasks: long work the server carries out for a user after it answered (an encryption, a
//! bulk unlock, a host's folders registered). Each task is a row of the store, written when it
//! starts, when a cancellation is asked and when it ends; its progress lives in memory (the
//! agent reports it each second, and after a restart of the server it comes again from the
//! agent). The moves between states are the core's (`tresor_core::task`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tresor_api::views::{Task, TaskError, TaskProgress};
use tresor_core::ids::KeyRef;
use tresor_core::task::{BadMove, TaskEvent, TaskKind, TaskState};

use crate::agents::Watch;
use crate::store::{Store, StoreError, TaskRow};

/// How long finished tasks are kept.
const KEEP_SECS: i64 = 30 * 86_400;

/// The tasks the server knows: those running in memory with their progress, all in the store.
#[derive(Debug)]
pub struct Tasks {
    store: Arc<Store>,
    running: Mutex<HashMap<String, Entry>>,
    /// Told whenever a task changes state.
    changed: tokio::sync::watch::Sender<u64>,
    /// Where the work of tasks runs (the server's main runtime, not the API's).
    runtime: tokio::runtime::Handle,
}

#[derive(Debug)]
struct Entry {
    row: TaskRow,
    /// The request carrying out the task on a host, while there is one.
    watch: Option<Arc<Watch>>,
    /// Progress a host reported without a request (work an earlier session or server left).
    reported: Option<(u64, u64)>,
    /// Set when the task is to stop at its next safe point (bulk work).
    stop: Arc<AtomicBool>,
}

impl Entry {
    /// The task with its progress now: its request's, else what its host said.
    fn now(&self) -> TaskRow {
        let mut row = self.row.clone();
        if let Some((done, total)) = self.watch.as_ref().map(|w| w.progress()).or(self.reported) {
            row.done = done;
            row.total = total;
        }
        row
    }
}

/// What a task's work sees of it: where to say how far it has come, whether to stop.
#[derive(Clone, Debug)]
pub struct TaskCtl {
    pub id: String,
    tasks: Arc<Tasks>,
    stop: Arc<AtomicBool>,
}

impl TaskCtl {
    /// The work has come to `done` of `total`.
    pub fn progress(&self, done: u64, total: u64) {
        self.tasks.reported(&self.id, done, total);
    }

    /// Whether a cancellation was asked for.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Ends the task (see [`Tasks::end`]).
    pub fn end(
        &self,
        event: TaskEvent,
        result: Option<serde_json::Value>,
        error: Option<(String, String)>,
    ) {
        self.tasks.end(&self.id, event, result, error);
    }
}

impl Tasks {
    /// The tasks of `store`, whose work runs on the runtime this is called on.
    pub fn new(store: Arc<Store>) -> Arc<Tasks> {
        let _ = store.prune_tasks(crate::enrol::now() - KEEP_SECS);
        let tasks = Arc::new(Tasks {
            store,
            running: Mutex::default(),
            changed: tokio::sync::watch::channel(0).0,
            runtime: tokio::runtime::Handle::current(),
        });
        // The metrics count the tasks kept from the start.
        tasks.tell();
        tasks
    }

    /// Runs a task's work on the server's runtime.
    pub fn spawn<F>(&self, work: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.runtime.spawn(work);
    }

    /// Starts a task: written to the store before it is answered, which the view is for.
    pub fn start(
        self: &Arc<Self>,
        kind: TaskKind,
        user: &str,
        vm: Option<&str>,
        host: Option<&str>,
        key: Option<KeyRef>,
    ) -> Result<(TaskCtl, Task), StoreError> {
        let now = crate::enrol::now();
        let row = TaskRow {
            id: new_id(),
            kind: kind.as_str().into(),
            state: TaskState::Running.as_str().into(),
            user: user.into(),
            vm: vm.map(Into::into),
            host: host.map(Into::into),
            key,
            done: 0,
            total: 0,
            result: None,
            error_code: None,
            error_message: None,
            created: now,
            updated: now,
        };
        self.store.put_task(&row)?;
        let started = view(&row);
        Ok((self.track(row), started))
    }

    /// Follows a task again that the store says was running (after a restart).
    pub fn track(self: &Arc<Self>, row: TaskRow) -> TaskCtl {
        let stop = Arc::new(AtomicBool::new(row.state == TaskState::Cancelling.as_str()));
        let id = row.id.clone();
        if let Ok(mut r) = self.running.lock() {
            r.insert(
                id.clone(),
                Entry {
                    row,
                    watch: None,
                    reported: None,
                    stop: stop.clone(),
                },
            );
        }
        self.tell();
        TaskCtl {
            id,
            tasks: self.clone(),
            stop,
        }
    }

    /// The tasks the store holds as running or cancelling (to take up after a restart).
    pub fn unfinished(&self) -> Result<Vec<TaskRow>, StoreError> {
        self.store.unfinished_tasks()
    }

    /// Changes the entry of running task `id`.
    fn with_entry(&self, id: &str, change: impl FnOnce(&mut Entry)) {
        if let Some(e) = self
            .running
            .lock()
            .ok()
            .as_mut()
            .and_then(|r| r.get_mut(id))
        {
            change(e);
        }
    }

    /// The request that carries out task `id` on its host now.
    pub fn attach(&self, id: &str, watch: Option<Arc<Watch>>) {
        self.with_entry(id, |e| {
            // The request's last progress stays the task's.
            if let Some(w) = e.watch.take() {
                e.reported = Some(w.progress());
            }
            e.watch = watch;
        });
    }

    /// The request carrying out task `id`, if there is one.
    pub fn watch(&self, id: &str) -> Option<Arc<Watch>> {
        self.running
            .lock()
            .ok()
            .and_then(|r| r.get(id).and_then(|e| e.watch.clone()))
    }

    /// How far task `id` has come, said outside a request.
    pub fn reported(&self, id: &str, done: u64, total: u64) {
        self.with_entry(id, |e| e.reported = Some((done, total)));
    }

    /// Task `id` as it is now.
    pub fn get(&self, id: &str) -> Result<Option<TaskRow>, StoreError> {
        if let Some(row) = self.live(id) {
            return Ok(Some(row));
        }
        self.store.task(id)
    }

    /// The newest tasks (only those not ended when `running`), at most `limit`, running ones
    /// with their progress now.
    pub fn list(&self, limit: usize, running: bool) -> Result<Vec<TaskRow>, StoreError> {
        let mut rows = match running {
            true => {
                let mut r = self.store.unfinished_tasks()?;
                r.reverse();
                r.truncate(limit);
                r
            }
            false => self.store.tasks(limit)?,
        };
        for row in &mut rows {
            if let Some(live) = self.live(&row.id) {
                *row = live;
            }
        }
        Ok(rows)
    }

    /// A running task of VM `vm`, if there is one.
    pub fn running_on(&self, vm: &str) -> Option<String> {
        self.running.lock().ok().and_then(|r| {
            r.values()
                .find(|e| e.row.vm.as_deref() == Some(vm))
                .map(|e| e.row.id.clone())
        })
    }

    /// How many tasks are running (or cancelling), by kind.
    pub fn running_by_kind(&self) -> Vec<(TaskKind, usize)> {
        let r = self.running.lock();
        TaskKind::ALL
            .into_iter()
            .map(|k| {
                let n = r.as_ref().map_or(0, |r| {
                    r.values().filter(|e| e.row.kind == k.as_str()).count()
                });
                (k, n)
            })
            .collect()
    }

    fn live(&self, id: &str) -> Option<TaskRow> {
        let r = self.running.lock().ok()?;
        let e = r.get(id)?;
        Some(e.now())
    }

    /// Asks task `id` to stop: it is cancelling from now on (written), and bulk work stops at
    /// its next safe point.
    pub fn ask_cancel(&self, id: &str) -> Result<TaskRow, TaskMoveError> {
        let row = {
            let mut r = self.running.lock().map_err(|_| TaskMoveError::Gone)?;
            let e = r.get_mut(id).ok_or(TaskMoveError::Gone)?;
            let state = state_of(&e.row).ok_or(TaskMoveError::Gone)?;
            let next = state.next(TaskEvent::CancelAsked)?;
            e.row.state = next.as_str().into();
            e.row.updated = crate::enrol::now();
            e.stop.store(true, Ordering::Relaxed);
            e.row.clone()
        };
        self.store.put_task(&row)?;
        self.tell();
        Ok(row)
    }

    /// Ends task `id` with `event` (succeeded, failed, cancelled), its result or error
    /// written. A task that ended already stays as it ended.
    pub fn finish(
        &self,
        id: &str,
        event: TaskEvent,
        result: Option<serde_json::Value>,
        error: Option<(String, String)>,
    ) -> Result<Option<TaskRow>, StoreError> {
        let row = {
            let Ok(mut r) = self.running.lock() else {
                return Ok(None);
            };
            let Some(e) = r.get(id) else {
                return Ok(None);
            };
            let Some(state) = state_of(&e.row) else {
                return Ok(None);
            };
            // A task asked to stop that could not stop any more ends as its work did.
            let event = match (state, event) {
                (TaskState::Running, TaskEvent::Cancelled) => TaskEvent::Failed,
                (_, e) => e,
            };
            let Ok(next) = state.next(event) else {
                return Ok(None);
            };
            let mut row = e.now();
            if next == TaskState::Succeeded && row.total > 0 {
                row.done = row.total;
            }
            row.state = next.as_str().into();
            row.updated = crate::enrol::now();
            row.result = result.map(|v| v.to_string());
            if let Some((code, message)) = error {
                row.error_code = Some(code);
                row.error_message = Some(message);
            }
            r.remove(id);
            row
        };
        self.store.put_task(&row)?;
        tracing::info!(task = %row.id, kind = %row.kind, state = %row.state, "task ended");
        self.tell();
        Ok(Some(row))
    }

    /// Ends task `id` as [`Tasks::finish`] does; a store that cannot record it is logged, the
    /// task's work being done either way.
    pub fn end(
        &self,
        id: &str,
        event: TaskEvent,
        result: Option<serde_json::Value>,
        error: Option<(String, String)>,
    ) {
        if let Err(e) = self.finish(id, event, result, error) {
            tracing::error!(task = %id, error = %e, "cannot record the end of a task");
        }
    }

    /// Waits until task `id` has ended, and says how.
    pub async fn wait(&self, id: &str) -> Result<Option<TaskRow>, StoreError> {
        let mut rx = self.changed.subscribe();
        loop {
            let row = self.get(id)?;
            match &row {
                Some(r) if state_of(r).is_some_and(|s| !s.is_finished()) => {}
                _ => return Ok(row),
            }
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), rx.changed()).await;
        }
    }

    fn tell(&self) {
        self.changed.send_modify(|n| *n += 1);
        if let Ok(counts) = self.store.task_counts() {
            let counts: Vec<(&'static str, i64)> = TaskState::ALL
                .into_iter()
                .map(|s| {
                    let n = counts
                        .iter()
                        .find(|(c, _)| c == s.as_str())
                        .map_or(0, |c| c.1);
                    (s.as_str(), n)
                })
                .collect();
            crate::metrics::METRICS.set_tasks(&counts);
        }
    }
}

/// Why a task cannot move as asked.
#[derive(Debug, thiserror::Error)]
pub enum TaskMoveError {
    #[error("The task is not running")]
    Gone,
    #[error(transparent)]
    Move(#[from] BadMove),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn state_of(row: &TaskRow) -> Option<TaskState> {
    row.state.parse().ok()
}

/// A task as the API shows it.
pub fn view(row: &TaskRow) -> Task {
    let kind: TaskKind = row.kind.parse().unwrap_or(TaskKind::Encrypt);
    let state: TaskState = row.state.parse().unwrap_or(TaskState::Failed);
    let percent = (row.total > 0).then(|| {
        let p = row.done.min(row.total) as f64 * 100.0 / row.total as f64;
        (p * 10.0).round() / 10.0
    });
    Task {
        id: row.id.clone(),
        kind,
        state,
        user: row.user.clone(),
        vm: row.vm.clone(),
        host: row.host.clone(),
        progress: TaskProgress {
            done: row.done,
            total: row.total,
            unit: kind.unit(),
            percent,
        },
        cancellable: state == TaskState::Running && kind.cancellation().is_some(),
        cancel_does: kind.cancellation().map(Into::into),
        result: row
            .result
            .as_deref()
            .and_then(|r| serde_json::from_str(r).ok()),
        error: row
            .error_code
            .clone()
            .zip(row.error_message.clone())
            .map(|(code, message)| TaskError { code, message }),
        created: row.created,
        updated: row.updated,
    }
}

/// A new task id: 16 random hex digits.
fn new_id() -> String {
    let mut b = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_is_kept_through_a_restart_and_ends_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("t.db")).unwrap());
        let tasks = Tasks::new(store.clone());
        let key = KeyRef::new("kms", "k1");
        let (ctl, started) = tasks
            .start(
                TaskKind::Encrypt,
                "alice",
                Some("web01"),
                Some("host-1"),
                Some(key.clone()),
            )
            .unwrap();
        assert_eq!(started.state, TaskState::Running);
        ctl.progress(5, 10);
        assert_eq!(tasks.running_on("web01"), Some(ctl.id.clone()));
        let live = tasks.get(&ctl.id).unwrap().unwrap();
        assert_eq!((live.done, live.total), (5, 10));
        assert_eq!(view(&live).progress.percent, Some(50.0));

        // A new server on the same store finds it unfinished, with its key.
        let again = Tasks::new(store.clone());
        let left = again.unfinished().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].key, Some(key));
        assert_eq!(left[0].user, "alice");

        let asked = tasks.ask_cancel(&ctl.id).unwrap();
        assert_eq!(asked.state, "cancelling");
        assert!(ctl.stopping());
        assert!(tasks.ask_cancel(&ctl.id).is_err());
        let ended = tasks
            .finish(
                &ctl.id,
                TaskEvent::Cancelled,
                None,
                Some(("cancelled".into(), "undone".into())),
            )
            .unwrap()
            .unwrap();
        assert_eq!(ended.state, "cancelled");
        // Once ended, it stays as it ended.
        assert!(tasks
            .finish(&ctl.id, TaskEvent::Succeeded, None, None)
            .unwrap()
            .is_none());
        let stored = store.task(&ctl.id).unwrap().unwrap();
        assert_eq!(stored.state, "cancelled");
        assert_eq!(stored.error_message.as_deref(), Some("undone"));
        assert!(tasks.running_on("web01").is_none());
        assert!(again.unfinished().unwrap().is_empty());
        let v = view(&stored);
        assert!(!v.cancellable);
        assert_eq!(v.error.unwrap().code, "cancelled");
    }

    #[tokio::test]
    async fn a_running_task_that_cannot_stop_any_more_fails_instead_of_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("t.db")).unwrap());
        let tasks = Tasks::new(store);
        let (ctl, _) = tasks
            .start(TaskKind::Register, "bob", None, Some("host-1"), None)
            .unwrap();
        let ended = tasks
            .finish(&ctl.id, TaskEvent::Cancelled, None, None)
            .unwrap()
            .unwrap();
        assert_eq!(ended.state, "failed");
    }
}
