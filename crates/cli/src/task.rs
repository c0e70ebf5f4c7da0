//! `tresor task list/show/wait/cancel`, and following a task that a command started to its end,
//! with a progress bar on a terminal.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::Value;
use tresor_api::views::{ProgressUnit, Task, TaskState};

use crate::client::{typed, Conn};
use crate::output;
use crate::CliError;

#[derive(Debug, Args)]
pub struct TaskCommand {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: TaskSub,
}

#[derive(Debug, Subcommand)]
enum TaskSub {
    /// The newest tasks: encryptions, decryptions, rekeys, bulk unlocks and registrations.
    List {
        /// Only those still running.
        #[arg(long)]
        running: bool,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One task: what it does, who started it, how far it has come, how it ended.
    Show {
        /// The task's id (`tresor task list`).
        id: String,
    },
    /// Follow a task to its end, with its progress; fails when the task fails.
    Wait {
        /// The task's id.
        id: String,
        /// Give up waiting after this many seconds (the task goes on).
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Cancel a running task where that is safe: an encryption or decryption is undone, a
    /// deep rekey stops between disks, bulk work stops at its next VM.
    Cancel {
        /// The task's id.
        id: String,
        /// Also wait until the cancellation is done.
        #[arg(long)]
        wait: bool,
    },
}

pub fn run(cmd: TaskCommand) -> Result<(), CliError> {
    let c = &cmd.conn;
    match cmd.command {
        TaskSub::List { running, limit } => {
            let v = c.call(
                "GET",
                &format!("/api/v1/tasks?running={running}&limit={limit}"),
                "",
            )?;
            c.print(&v, |v| match typed::<Vec<Task>>(v, "tasks") {
                Ok(tasks) => task_table(&tasks),
                Err(line) => line,
            });
        }
        TaskSub::Show { id } => {
            let v = c.call("GET", &format!("/api/v1/tasks/{id}"), "")?;
            c.print(&v, |v| match typed::<Task>(v, "a task") {
                Ok(t) => describe(&t),
                Err(line) => line,
            });
        }
        TaskSub::Wait { id, timeout } => {
            let v = c.call("GET", &format!("/api/v1/tasks/{id}"), "")?;
            let task: Task = typed(&v, "a task").map_err(CliError::msg)?;
            finish(c, task, timeout.map(Duration::from_secs))?;
        }
        TaskSub::Cancel { id, wait } => {
            let v = c.call("POST", &format!("/api/v1/tasks/{id}/cancel"), "")?;
            let task: Task = typed(&v, "a task").map_err(CliError::msg)?;
            if wait {
                let task = follow(c, task, None)?;
                c.print(&serde_json::to_value(&task).unwrap_or_default(), |_| {
                    describe(&task)
                });
            } else {
                c.done(&v, || {
                    format!("task {id}: cancellation asked; `tresor task wait {id}` follows it")
                });
            }
        }
    }
    Ok(())
}

/// A task a command started: with `no_wait` its id is said and the command ends; otherwise it
/// is followed to its end (a progress bar on a terminal) and the command fails if it does.
pub(crate) fn started(c: &Conn, answer: &Value, no_wait: bool) -> Result<(), CliError> {
    let task: Task = typed(answer, "the task started").map_err(CliError::msg)?;
    if no_wait {
        c.done(answer, || {
            format!(
                "task {} started ({}{}); `tresor task wait {}` follows it",
                task.id,
                task.kind,
                task.vm
                    .as_deref()
                    .map(|v| format!(" of VM {v}"))
                    .unwrap_or_default(),
                task.id
            )
        });
        return Ok(());
    }
    finish(c, task, None)
}

/// Follows `task` to its end, saying nothing when it succeeds; a failed or cancelled task is the
/// error.
pub(crate) fn follow_to_success(c: &Conn, task: Task) -> Result<Task, CliError> {
    let task = follow(c, task, None)?;
    match task.state {
        TaskState::Succeeded => Ok(task),
        _ => Err(failure(task)),
    }
}

/// Why a task did not succeed, as the error of the command that waited for it.
fn failure(task: Task) -> CliError {
    if task.state.is_finished() {
        let (code, message) = task.error.map(|e| (e.code, e.message)).unwrap_or_else(|| {
            (
                "internal".into(),
                format!("Task {} {}", task.id, task.state),
            )
        });
        let body = serde_json::json!({"code": code, "message": message});
        return match serde_json::from_value(body) {
            Ok(b) => CliError::Api(b),
            Err(_) => CliError::msg(message),
        };
    }
    CliError::msg(format!(
        "Task {} is still {} after the time given; `tresor task wait {}` goes on following it",
        task.id, task.state, task.id
    ))
}

/// Follows `task` to its end and says how it ended; a failed or cancelled task is the error.
fn finish(c: &Conn, task: Task, timeout: Option<Duration>) -> Result<(), CliError> {
    let task = follow(c, task, timeout)?;
    match task.state {
        TaskState::Succeeded => {
            // What the command did: the VM, the VMs registered (the task with `tresor task
            // show`).
            let result = task
                .result
                .clone()
                .unwrap_or_else(|| serde_json::to_value(&task).unwrap_or_default());
            c.done(&result, || match result.get("registered") {
                Some(Value::Array(names)) => {
                    let names: Vec<&str> = names.iter().filter_map(Value::as_str).collect();
                    format!(
                        "registered: {}",
                        if names.is_empty() {
                            "-".to_owned()
                        } else {
                            names.join(", ")
                        }
                    )
                }
                _ => format!("{}: {} done", subject(&task), task.kind),
            });
            Ok(())
        }
        TaskState::Running | TaskState::Cancelling => Err(CliError::msg(format!(
            "Task {} is still {} after the time given; `tresor task wait {}` goes on following it",
            task.id, task.state, task.id
        ))),
        TaskState::Failed | TaskState::Cancelled => {
            let (code, message) = task.error.map(|e| (e.code, e.message)).unwrap_or_else(|| {
                (
                    "internal".into(),
                    format!("Task {} {}", task.id, task.state),
                )
            });
            let body = serde_json::json!({"code": code, "message": message});
            Err(match serde_json::from_value(body) {
                Ok(b) => CliError::Api(b),
                Err(_) => CliError::msg(message),
            })
        }
    }
}

/// Asks for the task until it ends (or `timeout` passes), drawing its progress on standard
/// error when that is a terminal.
pub(crate) fn follow(
    c: &Conn,
    mut task: Task,
    timeout: Option<Duration>,
) -> Result<Task, CliError> {
    let started = Instant::now();
    let bar = (std::io::stderr().is_terminal() && !c.is_json()).then(|| bar_for(&task));
    loop {
        if let Some(b) = &bar {
            draw(b, &task);
        }
        if task.state.is_finished() || timeout.is_some_and(|t| started.elapsed() >= t) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
        let v = c.call("GET", &format!("/api/v1/tasks/{}", task.id), "")?;
        task = typed(&v, "a task").map_err(CliError::msg)?;
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(task)
}

fn bar_for(task: &Task) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(task.progress.total.max(1));
    let template = match task.progress.unit {
        ProgressUnit::Bytes => {
            "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}"
        }
        ProgressUnit::Vms => "{msg} [{bar:30}] {pos}/{len} VMs",
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(format!("{} {}", task.kind, subject(task)));
    bar
}

fn draw(bar: &indicatif::ProgressBar, task: &Task) {
    if task.progress.total > 0 {
        bar.set_length(task.progress.total);
        bar.set_position(task.progress.done.min(task.progress.total));
    }
    if task.state == TaskState::Cancelling {
        bar.set_message(format!("{} {} (cancelling)", task.kind, subject(task)));
    }
}

/// What a task works on, for people.
fn subject(task: &Task) -> String {
    match (&task.vm, &task.host) {
        (Some(vm), _) => vm.clone(),
        (None, Some(host)) => format!("host {host}"),
        (None, None) => format!("task {}", task.id),
    }
}

fn progress_text(task: &Task) -> String {
    let p = &task.progress;
    match (p.unit, p.percent) {
        (ProgressUnit::Bytes, Some(pc)) => format!("{pc:.1}% of {}", bytes(p.total)),
        (ProgressUnit::Vms, _) if p.total > 0 => format!("{}/{} VMs", p.done, p.total),
        _ => "-".into(),
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn task_table(tasks: &[Task]) -> String {
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.kind.to_string(),
                t.state.to_string(),
                subject(t),
                progress_text(t),
                t.user.clone(),
                output::time(t.created),
            ]
        })
        .collect();
    output::table(
        &["ID", "KIND", "STATE", "ON", "PROGRESS", "USER", "STARTED"],
        &rows,
    )
}

fn describe(t: &Task) -> String {
    let mut out = format!(
        "task:      {}\nkind:      {}\nstate:     {}\non:        {}\nprogress:  {}\nuser:      {}\nstarted:   {}\nupdated:   {}\n",
        t.id,
        t.kind,
        t.state,
        subject(t),
        progress_text(t),
        t.user,
        output::time(t.created),
        output::time(t.updated),
    );
    if let Some(e) = &t.error {
        out.push_str(&format!("error:     {} ({})\n", e.message, e.code));
    }
    if t.cancellable {
        if let Some(does) = &t.cancel_does {
            out.push_str(&format!(
                "cancel:    `tresor task cancel {}`: {does}\n",
                t.id
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(super::bytes(512), "512 B");
        assert_eq!(super::bytes(3 << 30), "3.0 GiB");
        assert_eq!(super::bytes(1536), "1.5 KiB");
    }
}
