//! `tresor server …` and `tresor agent …`: set up and run the server and the host agent.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::CliError;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ServerCommand {
    #[command(subcommand)]
    command: Option<ServerSub>,
    /// The server's configuration file.
    #[arg(
        long,
        short,
        env = "TRESOR_SERVER_CONFIG",
        default_value = "server.toml"
    )]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum ServerSub {
    /// Create an empty server: database, CA, and the `admin` user, whose first token it prints once.
    Init {
        /// The folder to create for the server's database, CA and configuration.
        #[arg(long)]
        data: PathBuf,
        /// Names and addresses agents use to reach the server (for its certificate).
        #[arg(long = "name", default_values_t = vec!["localhost".to_string(), "127.0.0.1".to_string()])]
        names: Vec<String>,
        /// Address and port of the REST API and web console.
        #[arg(long, default_value = "127.0.0.1:8400")]
        api_listen: String,
        /// Address and port agents connect to.
        #[arg(long, default_value = "0.0.0.0:8401")]
        agent_listen: String,
        /// The API's certificate chain (PEM), if not one from the server's own CA.
        #[arg(long, requires = "api_key")]
        api_cert: Option<PathBuf>,
        /// The key of --api-cert (PEM).
        #[arg(long, requires = "api_cert")]
        api_key: Option<PathBuf>,
        /// The database on PostgreSQL (`postgres://USER@HOST:PORT/DB`) instead of an SQLite
        /// file in the folder: for more than one server.
        #[arg(long)]
        database: Option<String>,
        /// The file that holds the PostgreSQL user's password.
        #[arg(long, requires = "database")]
        database_password_file: Option<PathBuf>,
    },
    /// Write a backup of the server (database, CA and certificates with their keys, client
    /// keys for the providers, configuration), consistent while it runs, sealed under a
    /// passphrase read from a file.
    Backup {
        /// The backup file to write (it must not exist).
        file: PathBuf,
        /// The server's configuration file.
        #[arg(
            long,
            short,
            env = "TRESOR_SERVER_CONFIG",
            default_value = "server.toml"
        )]
        config: PathBuf,
        /// A file whose first line is the passphrase (at least 16 characters). Without it the
        /// backup cannot be opened: keep it apart from the backup.
        #[arg(long)]
        passphrase_file: PathBuf,
    },
    /// Make a server from a backup, in a new or empty folder.
    Restore {
        /// The backup file.
        file: PathBuf,
        /// The folder to restore into.
        #[arg(long)]
        data: PathBuf,
        /// A file whose first line is the backup's passphrase.
        #[arg(long)]
        passphrase_file: PathBuf,
    },
    /// Print the SHA-256 fingerprint of the API's certificate, for clients to compare at their
    /// first `tresor login`.
    Fingerprint {
        /// The server's configuration file.
        #[arg(
            long,
            short,
            env = "TRESOR_SERVER_CONFIG",
            default_value = "server.toml"
        )]
        config: PathBuf,
    },
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AgentCommand {
    #[command(subcommand)]
    command: Option<AgentSub>,
    /// The agent's configuration file.
    #[arg(long, short, env = "TRESOR_AGENT_CONFIG", default_value = "agent.toml")]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum AgentSub {
    /// Enrol (or re-enrol) this host with a server, using a token from `tresor host token`.
    Join {
        /// The server's agent endpoint, host:port.
        #[arg(long)]
        server: String,
        /// The join token (it is one-time and short-lived; --token-file keeps it off the command line).
        #[arg(long, required_unless_present = "token_file")]
        token: Option<String>,
        /// A file holding the join token.
        #[arg(long, conflicts_with = "token")]
        token_file: Option<PathBuf>,
        /// This host's name.
        #[arg(long)]
        name: Option<String>,
        /// Where the agent keeps its configuration and state.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Write the configuration here instead of DIR/agent.toml (the package's is
        /// /etc/tresor/agent.toml); the settings of an existing one stay, and its state_dir
        /// receives the certificate.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The name in the server's certificate.
        #[arg(long, default_value = "localhost")]
        server_name: String,
    },
    /// Serve one raw LUKS disk to QEMU over vhost-user (the fast data path): QEMU attaches it
    /// with `-device vhost-user-blk-pci`. The disk's passphrase is read from standard input.
    Blk {
        /// The raw LUKS1 disk.
        #[arg(long)]
        disk: PathBuf,
        /// The vhost-user socket to create (QEMU connects to it).
        #[arg(long)]
        socket: PathBuf,
        /// Queues, each served by a thread of its own.
        #[arg(long, default_value_t = 2)]
        queues: usize,
        /// The disk's serial number, as the guest sees it (at most 20 bytes).
        #[arg(long, default_value = "tresor")]
        serial: String,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::msg(format!("Cannot start the runtime: {e}")))
}

pub fn run_server(cmd: ServerCommand) -> Result<(), CliError> {
    match cmd.command {
        Some(ServerSub::Init {
            data,
            names,
            api_listen,
            agent_listen,
            api_cert,
            api_key,
            database,
            database_password_file,
        }) => {
            let database = database.map(|url| tresor_server::run::DatabaseSetting {
                url,
                password_file: database_password_file,
            });
            let certificate = match (&api_cert, &api_key) {
                (Some(chain), Some(key)) => {
                    tresor_server::run::ApiCertificate::Given { chain, key }
                }
                _ => tresor_server::run::ApiCertificate::FromServerCa,
            };
            let done = tresor_server::run::init(
                &data,
                &names,
                &api_listen,
                &agent_listen,
                certificate,
                database.as_ref(),
            )
            .map_err(|e| CliError::msg(e.to_string()))?;
            println!("Server set up in {}.", data.display());
            println!(
                "Start it with: tresor server --config {}",
                done.config.display()
            );
            println!(
                "The API's certificate has SHA-256 fingerprint {} (clients compare it at their first login).",
                done.api_fingerprint
            );
            println!("The admin user's API token (shown once; keep it safe):");
            println!("{}", done.admin_token);
            Ok(())
        }
        Some(ServerSub::Backup {
            file,
            config,
            passphrase_file,
        }) => crate::backup::write("Server", &file, &passphrase_file, |p| {
            tresor_server::backup::backup(&config, p)
        }),
        Some(ServerSub::Restore {
            file,
            data,
            passphrase_file,
        }) => crate::backup::restore(
            "Server",
            &file,
            &passphrase_file,
            &data,
            "tresor server --config",
            tresor_server::backup::restore,
        ),
        Some(ServerSub::Fingerprint { config }) => {
            let config = tresor_server::run::ServerConfig::load(&config)
                .map_err(|e| CliError::msg(e.to_string()))?;
            let fp = tresor_server::run::api_fingerprint(&config)
                .map_err(|e| CliError::msg(e.to_string()))?;
            println!("{fp}");
            Ok(())
        }
        None => {
            // The server holds keys between a fetch and their push: no core dumps, and no
            // reading of its memory by other processes of its user.
            if let Err(e) = tresor_agent::memory::harden_process() {
                tracing::warn!(error = %e, "cannot keep the process from dumping core");
            }
            let config = tresor_server::run::ServerConfig::load(&cmd.config).map_err(|e| {
                CliError::msg(format!(
                    "{e}; create one with: tresor server init --data DIR"
                ))
            })?;
            runtime()?
                .block_on(tresor_server::run::serve(
                    config,
                    crate::kms::shutdown_signal(),
                ))
                .map_err(|e| CliError::msg(e.to_string()))
        }
    }
}

pub fn run_agent(cmd: AgentCommand) -> Result<(), CliError> {
    match cmd.command {
        Some(AgentSub::Join {
            server,
            token,
            token_file,
            name,
            dir,
            config,
            server_name,
        }) => {
            let token = match (token, token_file) {
                (Some(t), _) => t,
                (None, Some(f)) => std::fs::read_to_string(&f)
                    .map_err(|e| CliError::msg(format!("Cannot read {}: {e}", f.display())))?
                    .trim()
                    .to_owned(),
                (None, None) => {
                    return Err(CliError::msg(
                        "Give the join token with --token or --token-file",
                    ))
                }
            };
            let name = match name {
                Some(n) => n,
                None => std::fs::read_to_string("/etc/hostname")
                    .map(|s| s.trim().to_owned())
                    .unwrap_or_else(|_| "host".into()),
            };
            let path = runtime()?
                .block_on(tresor_agent::run::join(
                    &dir,
                    config.as_deref(),
                    &server,
                    &server_name,
                    &token,
                    &name,
                ))
                .map_err(CliError::msg)?;
            println!(
                "Host {name} enrolled. Start the agent with: tresor agent --config {}",
                path.display()
            );
            Ok(())
        }
        Some(AgentSub::Blk {
            disk,
            socket,
            queues,
            serial,
        }) => {
            use std::io::Read;
            let locking = tresor_blk::protect_memory().map_err(|e| CliError::msg(e.to_string()))?;
            let mut passphrase = zeroize::Zeroizing::new(Vec::new());
            std::io::stdin().read_to_end(&mut passphrase).map_err(|e| {
                CliError::msg(format!(
                    "Cannot read the disk's passphrase from standard input: {e}"
                ))
            })?;
            while passphrase
                .last()
                .is_some_and(|b| *b == b'\n' || *b == b'\r')
            {
                passphrase.pop();
            }
            let disk = tresor_blk::Disk::open(&disk, &passphrase)
                .map_err(|e| CliError::msg(e.to_string()))?;
            drop(passphrase);
            tresor_blk::serve(disk, &socket, queues, &serial, locking)
                .map_err(|e| CliError::msg(e.to_string()))
        }
        None => {
            let config =
                tresor_agent::run::AgentConfig::load(&cmd.config).map_err(CliError::msg)?;
            let rt = runtime()?;
            let result = rt.block_on(tresor_agent::run::run(
                config,
                crate::kms::shutdown_signal(),
            ));
            // Host work still under way on a blocking thread is not waited for: a stop is a stop.
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
            result.map_err(CliError::msg)
        }
    }
}
