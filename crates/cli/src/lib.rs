//! The `tresor` command: every part of Tresor behind one binary.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod access;
mod admin;
mod api;
mod backup;
mod client;
mod console;
mod daemons;
mod dev;
mod kms;
mod output;
mod task;

/// Tresor: encrypted virtual machines on KVM/QEMU, with keys from KMIP key providers.
#[derive(Debug, Parser)]
#[command(name = "tresor", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as text, or as JSON objects one per line (for a log collector). Levels come
    /// from TRESOR_LOG, else RUST_LOG (an env filter such as `info,tresor::access=warn`).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "TRESOR_LOG_FORMAT"
    )]
    log_format: LogFormat,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Everything on this machine: key server, server and host agents (SQLite, one folder).
    Dev(dev::DevArgs),
    /// The embedded KMIP key server and its administration.
    Kms(kms::KmsCommand),
    /// KMIP debugging tools.
    Kmip(kms::KmipCommand),
    /// Virtual machines.
    Vm(client::VmCommand),
    /// Hosts: join tokens, list, encryption mode.
    Host(client::HostCommand),
    /// Events.
    Event(client::EventCommand),
    /// Key providers: endpoints, trust, default, status.
    Provider(admin::ProviderCommand),
    /// Server settings, such as the unlock policy.
    Settings(admin::SettingsCommand),
    /// Alarms: list and acknowledge.
    Alarm(admin::AlarmCommand),
    /// Long work (encrypt, decrypt, rekey, bulk unlock and register): list, show, wait, cancel.
    Task(task::TaskCommand),
    /// Log in with a user's password; the token is kept for the following commands.
    Login(access::LoginArgs),
    /// End the session: the token stops working and is forgotten.
    Logout(access::LogoutArgs),
    /// Users: add, list, remove, revoke a role.
    User(access::UserCommand),
    /// Roles: the built-in ones and your own.
    Role(access::RoleCommand),
    /// Grant a role to a user.
    Grant(access::GrantArgs),
    /// The management server and key broker.
    Server(daemons::ServerCommand),
    /// The host agent.
    Agent(daemons::AgentCommand),
    /// Print a shell's completion script: `tresor completion bash > /etc/bash_completion.d/tresor`.
    Completion {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write a man page for every command and subcommand into a folder (tresor.1,
    /// tresor-vm.1, tresor-vm-create.1, ...).
    Manpages {
        /// The folder to write them into (created if missing).
        dir: std::path::PathBuf,
    },
}

/// Why a command failed: one line for standard error.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Message(String),
    /// The server refused, with its code.
    #[error("{}", .0.message)]
    Api(tresor_api::ErrorBody),
}

impl CliError {
    pub fn msg(m: impl Into<String>) -> CliError {
        CliError::Message(m.into())
    }
}

static LOG_FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// The log format this process was started with, as `--log-format` names it (what `tresor
/// dev` hands its children).
pub(crate) fn log_format_name() -> &'static str {
    match LOG_FORMAT.get() {
        Some(LogFormat::Json) => "json",
        _ => "text",
    }
}

/// Logs to standard error, at the levels of `TRESOR_LOG`, else `RUST_LOG`, else `info`.
fn init_logging(format: LogFormat) {
    let _ = LOG_FORMAT.set(format);
    let filter = ["TRESOR_LOG", "RUST_LOG"]
        .iter()
        .find_map(|var| {
            let value = std::env::var(var).ok()?;
            match tracing_subscriber::EnvFilter::try_new(&value) {
                Ok(f) => Some(f),
                Err(e) => {
                    eprintln!("tresor: {var}={value} is not a log filter ({e}); logging at info");
                    None
                }
            }
        })
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let _ = match format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .try_init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_current_span(false)
            .try_init(),
    };
}

/// Writes `tresor.1` and one page per subcommand, named by its path (`tresor-vm-create.1`).
fn write_manpages(dir: &std::path::Path) -> Result<(), CliError> {
    fn write(cmd: clap::Command, dir: &std::path::Path) -> Result<usize, CliError> {
        let name = cmd.get_name().to_owned();
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone())
            .render(&mut page)
            .map_err(|e| CliError::msg(format!("Cannot render the man page of {name}: {e}")))?;
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, page)
            .map_err(|e| CliError::msg(format!("Cannot write {}: {e}", path.display())))?;
        let mut written = 1;
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            // A subcommand's page is named by its whole path, as git's and cargo's are.
            let sub = sub.clone().name(format!("{name}-{}", sub.get_name()));
            written += write(sub, dir)?;
        }
        Ok(written)
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::msg(format!("Cannot create {}: {e}", dir.display())))?;
    let mut cmd = <Cli as clap::CommandFactory>::command();
    cmd.build();
    let n = write(cmd, dir)?;
    println!("Wrote {n} man pages to {}.", dir.display());
    Ok(())
}

/// Whether the command line asks for JSON output (`-o json`, `-ojson`, `--output json`,
/// `--output=json`, `-o=json`).
fn wants_json(args: &[String]) -> bool {
    args.iter().enumerate().any(|(i, a)| {
        matches!(a.as_str(), "-ojson" | "--output=json" | "-o=json")
            || (matches!(a.as_str(), "-o" | "--output")
                && args.get(i + 1).map(String::as_str) == Some("json"))
    })
}

/// Runs the command line; the exit code is 0 on success.
pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let json_output = wants_json(&args);
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Dev(a) => dev::run(a),
        Command::Vm(c) => client::run_vm(c),
        Command::Host(c) => client::run_host(c),
        Command::Event(c) => client::run_event(c),
        Command::Provider(c) => admin::run_provider(c),
        Command::Settings(c) => admin::run_settings(c),
        Command::Alarm(c) => admin::run_alarm(c),
        Command::Task(c) => task::run(c),
        Command::Login(a) => access::run_login(a),
        Command::Logout(a) => access::run_logout(a),
        Command::User(c) => access::run_user(c),
        Command::Role(c) => access::run_role(c),
        Command::Grant(a) => access::run_grant(a),
        Command::Kms(c) => kms::run(c),
        Command::Kmip(c) => kms::run_kmip(c),
        Command::Server(c) => daemons::run_server(c),
        Command::Agent(c) => daemons::run_agent(c),
        Command::Completion { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "tresor", &mut std::io::stdout());
            Ok(())
        }
        Command::Manpages { dir } => write_manpages(&dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if json_output => {
            // One line, in the API's error shape; a failure the server did not name has no code.
            let (code, message) = match &e {
                CliError::Api(b) => (b.code.map(|c| c.as_str()), b.message.clone()),
                CliError::Message(m) => (None, m.clone()),
            };
            eprintln!(
                "{}",
                serde_json::json!({"error": {"code": code, "message": message}})
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("tresor: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_output_is_seen_in_every_spelling() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for yes in [
            &["tresor", "vm", "list", "-o", "json"][..],
            &["tresor", "vm", "list", "--output", "json"],
            &["tresor", "vm", "list", "--output=json"],
            &["tresor", "vm", "list", "-ojson"],
        ] {
            assert!(super::wants_json(&args(yes)), "{yes:?}");
        }
        for no in [
            &["tresor", "vm", "list"][..],
            &["tresor", "vm", "list", "-o", "table"],
            &["tresor", "vm", "show", "json"],
        ] {
            assert!(!super::wants_json(&args(no)), "{no:?}");
        }
    }
}

#[cfg(test)]
mod help_tests {
    use clap::CommandFactory;

    /// Every command, subcommand and argument a user can type says what it does in `--help`.
    #[test]
    fn every_command_and_argument_has_help_text() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            if cmd.get_about().is_none() && cmd.get_long_about().is_none() {
                missing.push(path.clone());
            }
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} <{id}>"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_name() != "help" {
                    walk(sub, &path, missing);
                }
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }
}
