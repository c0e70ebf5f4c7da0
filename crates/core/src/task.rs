//! Long work as tasks: what a task is doing, its states and the moves between them.
//!
//! A task is started by a user, runs on the server (and usually on a host), reports how far it
//! has come, and ends once: succeeded, failed or cancelled. A cancellation is asked for and then
//! carried out where it is safe (an encryption rolls back), so "cancelling" lies between.

crate::named_enum! {
    /// What a task does.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum TaskKind {
        Encrypt = "encrypt",
        Decrypt = "decrypt",
        Rekey = "rekey",
        DeepRekey = "deepRekey",
        Unlock = "unlock",
        Register = "register",
        /// An image sent to a VM, copied into its new first disk.
        Import = "import",
    }
}

crate::named_enum! {
    /// `state` of a task.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum TaskState {
        Running = "running",
        /// A cancellation was asked for; the task rolls back or stops at a safe point.
        Cancelling = "cancelling",
        Succeeded = "succeeded",
        Failed = "failed",
        Cancelled = "cancelled",
    }
}

crate::named_enum! {
    /// What a task's `done` and `total` count.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum ProgressUnit {
        Bytes = "bytes",
        Vms = "vms",
    }
}

/// What happens to a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskEvent {
    CancelAsked,
    Succeeded,
    Failed,
    Cancelled,
}

/// A move the task's state does not allow.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("A task that is {from} cannot be {what}")]
pub struct BadMove {
    pub from: TaskState,
    pub what: &'static str,
}

impl TaskState {
    /// Whether the task is over.
    pub fn is_finished(self) -> bool {
        match self {
            TaskState::Running | TaskState::Cancelling => false,
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled => true,
        }
    }

    /// The state after `event`. A finished task never moves again; a cancellation may be asked
    /// for once; a task being cancelled may still end as it would have (the work finished
    /// before the cancellation reached it, or failed).
    pub fn next(self, event: TaskEvent) -> Result<TaskState, BadMove> {
        let what = match event {
            TaskEvent::CancelAsked => "cancelled",
            TaskEvent::Succeeded => "finished",
            TaskEvent::Failed => "failed",
            TaskEvent::Cancelled => "marked cancelled",
        };
        match (self, event) {
            (TaskState::Running, TaskEvent::CancelAsked) => Ok(TaskState::Cancelling),
            (TaskState::Running | TaskState::Cancelling, TaskEvent::Succeeded) => {
                Ok(TaskState::Succeeded)
            }
            (TaskState::Running | TaskState::Cancelling, TaskEvent::Failed) => {
                Ok(TaskState::Failed)
            }
            (TaskState::Cancelling, TaskEvent::Cancelled) => Ok(TaskState::Cancelled),
            (
                TaskState::Running
                | TaskState::Cancelling
                | TaskState::Succeeded
                | TaskState::Failed
                | TaskState::Cancelled,
                _,
            ) => Err(BadMove { from: self, what }),
        }
    }
}

impl TaskKind {
    /// Whether a task of this kind can be cancelled, and what cancelling does.
    pub fn cancellation(self) -> Option<&'static str> {
        match self {
            TaskKind::Encrypt => Some("the disks encrypted so far are decrypted again"),
            TaskKind::Decrypt => Some("the disks decrypted so far are encrypted again"),
            TaskKind::DeepRekey => {
                Some("the disk being copied keeps its old secret; those done keep their new ones")
            }
            TaskKind::Register => Some("the folders not yet registered are left alone"),
            TaskKind::Unlock => Some("the VMs not yet unlocked are no longer followed"),
            TaskKind::Rekey | TaskKind::Import => None,
        }
    }

    /// What `done` and `total` count for this kind.
    pub fn unit(self) -> ProgressUnit {
        match self {
            TaskKind::Encrypt
            | TaskKind::Decrypt
            | TaskKind::Rekey
            | TaskKind::DeepRekey
            | TaskKind::Import => ProgressUnit::Bytes,
            TaskKind::Unlock | TaskKind::Register => ProgressUnit::Vms,
        }
    }

    /// Whether the work runs on a host, whose journal tells how it ended when the server lost
    /// sight of it (a server restart, a session that ended).
    pub fn on_host(self) -> bool {
        self.unit() == ProgressUnit::Bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_ends_once() {
        for s in TaskState::ALL.into_iter().filter(|s| s.is_finished()) {
            for e in [
                TaskEvent::CancelAsked,
                TaskEvent::Succeeded,
                TaskEvent::Failed,
                TaskEvent::Cancelled,
            ] {
                assert!(s.next(e).is_err(), "{s} moved on {e:?}");
            }
        }
    }

    #[test]
    fn cancellation_is_asked_then_done() {
        let s = TaskState::Running.next(TaskEvent::CancelAsked).unwrap();
        assert_eq!(s, TaskState::Cancelling);
        assert!(s.next(TaskEvent::CancelAsked).is_err());
        assert_eq!(s.next(TaskEvent::Cancelled), Ok(TaskState::Cancelled));
        // The work finished before the cancellation reached it.
        assert_eq!(s.next(TaskEvent::Succeeded), Ok(TaskState::Succeeded));
        // Never cancelled without being asked.
        assert!(TaskState::Running.next(TaskEvent::Cancelled).is_err());
        assert_eq!(
            TaskState::Succeeded
                .next(TaskEvent::CancelAsked)
                .unwrap_err()
                .to_string(),
            "A task that is succeeded cannot be cancelled"
        );
    }

    #[test]
    fn disk_work_counts_bytes_and_bulk_work_vms() {
        assert_eq!(TaskKind::Encrypt.unit(), ProgressUnit::Bytes);
        assert_eq!(TaskKind::Unlock.unit(), ProgressUnit::Vms);
        assert!(TaskKind::DeepRekey.on_host());
        assert!(!TaskKind::Register.on_host());
        assert!(TaskKind::Rekey.cancellation().is_none());
    }
}
