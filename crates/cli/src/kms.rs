//! `tresor kms …`: run and administer the embedded key server; `tresor kmip …`: debugging.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Subcommand};
use tresor_kms::admin;
use tresor_kms::config::{KmsConfig, EXAMPLE};
use tresor_kms::server;
use tresor_kms::store::Store;
use tresor_tls::{CertKind, CertificateAuthority};

use crate::output::{self, Format};
use crate::CliError;

#[derive(Debug, Args)]
pub struct KmsCommand {
    #[command(subcommand)]
    command: KmsSub,
}

#[derive(Debug, Args)]
struct ConfigArg {
    /// The key server's configuration file.
    #[arg(
        long,
        short,
        env = "TRESOR_KMS_CONFIG",
        default_value = "kms.toml",
        global = true
    )]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum KmsSub {
    /// Serve KMIP over mutual TLS (port 5696 by default).
    Serve(ConfigArg),
    /// Set up a key server in a folder: configuration, a CA, a server certificate, and a client
    /// certificate for the Tresor server.
    Init {
        /// The folder to create.
        #[arg(long)]
        dir: PathBuf,
        /// Host names and addresses clients use to reach the key server (for its certificate).
        #[arg(long = "name", default_values_t = vec!["localhost".to_string(), "127.0.0.1".to_string()])]
        names: Vec<String>,
        /// Address and port to listen on.
        #[arg(long, default_value = "0.0.0.0:5696")]
        listen: String,
    },
    /// Write a backup of the key server (database, master key, certificates, configuration),
    /// consistent while it serves, sealed under a passphrase read from a file.
    Backup {
        /// The backup file to write (it must not exist).
        file: PathBuf,
        #[command(flatten)]
        config: ConfigArg,
        /// A file whose first line is the passphrase (at least 16 characters). Without it the
        /// backup cannot be opened: keep it apart from the backup.
        #[arg(long)]
        passphrase_file: PathBuf,
    },
    /// Make a key server from a backup, in a new or empty folder.
    Restore {
        /// The backup file.
        file: PathBuf,
        /// The folder to restore into.
        #[arg(long)]
        dir: PathBuf,
        /// A file whose first line is the backup's passphrase.
        #[arg(long)]
        passphrase_file: PathBuf,
    },
    /// Issue a client certificate from the key server's CA (created by `init`).
    IssueCert {
        #[command(flatten)]
        config: ConfigArg,
        /// The client's name (the certificate's common name; its identity on the key server).
        #[arg(long)]
        name: String,
        /// Write `PREFIX.pem` and `PREFIX.key`.
        #[arg(long)]
        out: PathBuf,
        /// Issue a certificate for server authentication only, as vCenter's own certificates are.
        #[arg(long, conflicts_with = "server")]
        server_usage_only: bool,
        /// Issue a server certificate (for another KMIP server) valid for the name and 127.0.0.1.
        #[arg(long)]
        server: bool,
    },
    /// Sign a client's certificate signing request with the key server's CA (a Tresor server
    /// added with `tresor provider add --csr`). The name in the certificate is the one given
    /// here, whatever the request asked for.
    SignCsr {
        #[command(flatten)]
        config: ConfigArg,
        /// The client's name (its identity on the key server; `tresor-server` for a Tresor server).
        #[arg(long)]
        name: String,
        /// The certificate signing request (PEM).
        #[arg(long)]
        csr: PathBuf,
        /// Where to write the signed certificate (PEM).
        #[arg(long)]
        out: PathBuf,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 825)]
        days: i64,
    },
    /// Administer keys: list, show, activate, deactivate, destroy, grant.
    Key {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        command: KeySub,
        /// Output format.
        #[arg(long, short = 'o', global = true, default_value = "table")]
        output: Format,
    },
}

#[derive(Debug, Subcommand)]
enum KeySub {
    /// Every key, newest first.
    List,
    /// One key: attributes (never key material), grants and audit trail.
    Show {
        /// The key's unique identifier (from `tresor kms key list` or a VM's keyId).
        id: String,
    },
    /// Make a key usable: Pre-Active becomes Active, a Deactivated key is reactivated.
    Activate {
        /// The key's unique identifier (from `tresor kms key list` or a VM's keyId).
        id: String,
    },
    /// Take an active key out of use.
    Deactivate {
        /// The key's unique identifier (from `tresor kms key list` or a VM's keyId).
        id: String,
    },
    /// Destroy a key's material for good (deactivate it first).
    Destroy {
        /// The key's unique identifier (from `tresor kms key list` or a VM's keyId).
        id: String,
    },
    /// Let another client identity (certificate subject, `CN=…`) use a key.
    Grant {
        /// The key's unique identifier (from `tresor kms key list` or a VM's keyId).
        id: String,
        /// The client identity to let use it, as its certificate subject (`CN=…`).
        identity: String,
    },
}

#[derive(Debug, Args)]
pub struct KmipCommand {
    #[command(subcommand)]
    command: KmipSub,
}

#[derive(Debug, Subcommand)]
enum KmipSub {
    /// Print a TTLV message readably (key material hidden). Reads binary, or hex with --hex.
    Decode {
        /// A file, or - for standard input.
        file: PathBuf,
        /// The input is hex text (spaces and newlines ignored), not binary.
        #[arg(long)]
        hex: bool,
    },
}

fn load(config: &Path) -> Result<KmsConfig, CliError> {
    KmsConfig::load(config)
        .map_err(|e| CliError::msg(format!("{e}. Create one with: tresor kms init --dir DIR")))
}

fn actor() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into());
    format!("admin:{user}")
}

pub fn run(cmd: KmsCommand) -> Result<(), CliError> {
    match cmd.command {
        KmsSub::Serve(c) => serve(&load(&c.config)?),
        KmsSub::Init { dir, names, listen } => init(&dir, &names, &listen),
        KmsSub::Backup {
            file,
            config,
            passphrase_file,
        } => crate::backup::write("Key server", &file, &passphrase_file, |p| {
            tresor_kms::backup::backup(&config.config, p)
        }),
        KmsSub::Restore {
            file,
            dir,
            passphrase_file,
        } => crate::backup::restore(
            "Key server",
            &file,
            &passphrase_file,
            &dir,
            "tresor kms serve --config",
            tresor_kms::backup::restore,
        ),
        KmsSub::IssueCert {
            config,
            name,
            out,
            server_usage_only,
            server,
        } => {
            let config = load(&config.config)?;
            let ca = load_ca(&config)?;
            let (kind, names) = match (server, server_usage_only) {
                (true, _) => (CertKind::Server, vec![name.as_str(), "127.0.0.1"]),
                (false, true) => (CertKind::ServerUsageOnly, vec![]),
                (false, false) => (CertKind::Client, vec![]),
            };
            let cert = ca
                .issue(kind, &name, &names, 825)
                .map_err(|e| CliError::msg(e.to_string()))?;
            write_pair(&out, &cert.cert_pem, &cert.key_pem)?;
            println!(
                "Issued {}.pem and {}.key for CN={name}",
                out.display(),
                out.display()
            );
            Ok(())
        }
        KmsSub::SignCsr {
            config,
            name,
            csr,
            out,
            days,
        } => {
            let config = load(&config.config)?;
            let ca = load_ca(&config)?;
            let request = std::fs::read_to_string(&csr).map_err(|e| {
                CliError::msg(format!("Cannot read the CSR {}: {e}", csr.display()))
            })?;
            let cert = ca.sign_client_csr(&request, &name, days).map_err(|e| {
                CliError::msg(format!(
                    "Cannot sign {} ({e}); give the PEM certificate signing request the client made",
                    csr.display()
                ))
            })?;
            std::fs::write(&out, cert)
                .map_err(|e| CliError::msg(format!("Cannot write {}: {e}", out.display())))?;
            println!("Signed {} as CN={name}, valid {days} days", out.display());
            Ok(())
        }
        KmsSub::Key {
            config,
            command,
            output,
        } => {
            let config = load(&config.config)?;
            let store = config
                .database_location()
                .map_err(|e| CliError::msg(e.to_string()))
                .and_then(|at| Store::open_at(&at).map_err(|e| CliError::msg(e.to_string())))?;
            key(&store, command, output)
        }
    }
}

fn serve(config: &KmsConfig) -> Result<(), CliError> {
    // The master key and the keys it unseals are in this process's memory: no core dumps, and
    // no reading of its memory by other processes of its user.
    if let Err(e) = tresor_agent::memory::harden_process() {
        tracing::warn!(error = %e, "cannot keep the process from dumping core");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::msg(format!("Cannot start the runtime: {e}")))?;
    rt.block_on(async {
        let engine =
            Arc::new(server::open_engine(config).map_err(|e| CliError::msg(e.to_string()))?);
        let acceptor = server::acceptor(config).map_err(|e| CliError::msg(e.to_string()))?;
        let listener = server::bind(config)
            .await
            .map_err(|e| CliError::msg(e.to_string()))?;
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| config.listen.clone());
        tracing::info!(address = %addr, data = %config.data_dir.display(), "key server listening");
        let metrics = match &config.metrics_listen {
            Some(address) => {
                let listener = tresor_ops::bind(address)
                    .await
                    .map_err(|e| CliError::msg(e.to_string()))?;
                tracing::info!(metrics = %address, "metrics listening");
                let observed = Arc::new(tresor_kms::metrics::Observed {
                    engine: engine.clone(),
                    server_certificate: config.tls.cert.clone(),
                    client_ca: config.tls.client_ca.clone(),
                });
                Some(tokio::spawn(tresor_ops::serve(
                    listener,
                    observed,
                    std::future::pending(),
                )))
            }
            None => None,
        };
        server::serve(
            listener,
            acceptor,
            engine.clone(),
            config.limits.clone(),
            shutdown_signal(),
        )
        .await;
        if let Some(m) = metrics {
            m.abort();
        }
        engine.store().close();
        tracing::info!("key server stopped");
        Ok(())
    })
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

pub(crate) fn write_private(path: &Path, contents: &[u8]) -> Result<(), CliError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| CliError::msg(format!("Cannot create {}: {e}", path.display())))?;
    f.write_all(contents)
        .map_err(|e| CliError::msg(format!("Cannot write {}: {e}", path.display())))
}

fn write_public(path: &Path, contents: &str) -> Result<(), CliError> {
    if path.exists() {
        return Err(CliError::msg(format!(
            "{} exists already; remove it or choose another place",
            path.display()
        )));
    }
    std::fs::write(path, contents)
        .map_err(|e| CliError::msg(format!("Cannot write {}: {e}", path.display())))
}

fn write_pair(prefix: &Path, cert: &str, key: &str) -> Result<(), CliError> {
    let cert_path = prefix.with_extension("pem");
    let key_path = prefix.with_extension("key");
    write_public(&cert_path, cert)?;
    write_private(&key_path, key.as_bytes())
}

fn load_ca(config: &KmsConfig) -> Result<CertificateAuthority, CliError> {
    let dir = config.tls.client_ca.parent().unwrap_or(Path::new("."));
    let cert = std::fs::read_to_string(&config.tls.client_ca).map_err(|e| {
        CliError::msg(format!(
            "Cannot read {}: {e}",
            config.tls.client_ca.display()
        ))
    })?;
    let key_path = dir.join("ca.key");
    let key = std::fs::read_to_string(&key_path).map_err(|e| {
        CliError::msg(format!("Cannot read the CA key {}: {e}; only a key server set up with `tresor kms init` can issue certificates", key_path.display()))
    })?;
    CertificateAuthority::from_pem(&cert, &key).map_err(|e| CliError::msg(e.to_string()))
}

pub(crate) fn init(dir: &Path, names: &[String], listen: &str) -> Result<(), CliError> {
    if dir.join("kms.toml").exists() {
        return Err(CliError::msg(format!(
            "{} already holds a key server (kms.toml exists)",
            dir.display()
        )));
    }
    let tls = dir.join("tls");
    let clients = dir.join("clients");
    for d in [dir, &tls, &clients] {
        std::fs::create_dir_all(d)
            .map_err(|e| CliError::msg(format!("Cannot create {}: {e}", d.display())))?;
    }
    let gen = |e: tresor_tls::TlsError| CliError::msg(e.to_string());
    let ca = CertificateAuthority::generate("Tresor Key Server CA", 3650).map_err(gen)?;
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let server = ca
        .issue(
            CertKind::Server,
            names.first().map(String::as_str).unwrap_or("localhost"),
            &name_refs,
            825,
        )
        .map_err(gen)?;
    let client = ca
        .issue(CertKind::Client, "tresor-server", &[], 825)
        .map_err(gen)?;
    write_public(&tls.join("ca.pem"), ca.cert_pem())?;
    write_private(&tls.join("ca.key"), ca.key_pem().as_bytes())?;
    write_pair(&tls.join("server"), &server.cert_pem, &server.key_pem)?;
    write_pair(
        &clients.join("tresor-server"),
        &client.cert_pem,
        &client.key_pem,
    )?;
    let config = EXAMPLE.replace("listen = \"0.0.0.0:5696\"", &format!("listen = {listen:?}"));
    write_public(&dir.join("kms.toml"), &config)?;
    println!("Key server set up in {}:", dir.display());
    println!("  configuration   {}", dir.join("kms.toml").display());
    println!(
        "  CA certificate  {}  (give it to clients to trust the server)",
        tls.join("ca.pem").display()
    );
    println!(
        "  client          {}  (.key beside it)",
        clients.join("tresor-server.pem").display()
    );
    println!(
        "Start it with: tresor kms serve --config {}",
        dir.join("kms.toml").display()
    );
    Ok(())
}

fn key(store: &Store, command: KeySub, format: Format) -> Result<(), CliError> {
    let fail = |e: admin::AdminError| CliError::msg(e.to_string());
    let actor = actor();
    let print_summary = |s: &admin::KeySummary, verb: &str| -> Result<(), CliError> {
        match format {
            Format::Json => println!("{}", json(s)?),
            Format::Table => println!("Key {} is now {} ({verb})", s.uid, s.state),
        }
        Ok(())
    };
    match command {
        KeySub::List => {
            let keys = admin::list(store).map_err(fail)?;
            match format {
                Format::Json => println!("{}", json(&keys)?),
                Format::Table => {
                    let rows: Vec<Vec<String>> = keys
                        .iter()
                        .map(|k| {
                            vec![
                                k.uid.clone(),
                                k.state.clone(),
                                match (&k.algorithm, k.length) {
                                    (Some(a), Some(l)) => format!("{a}-{l}"),
                                    _ => k.object_type.clone(),
                                },
                                k.names.join(","),
                                k.owner.clone(),
                                output::time(k.created),
                            ]
                        })
                        .collect();
                    print!(
                        "{}",
                        output::table(&["ID", "STATE", "TYPE", "NAME", "OWNER", "CREATED"], &rows)
                    );
                }
            }
        }
        KeySub::Show { id } => {
            let d = admin::show(store, &id).map_err(fail)?;
            match format {
                Format::Json => println!("{}", json(&d)?),
                Format::Table => {
                    println!("Key {}", d.summary.uid);
                    println!("  state    {}", d.summary.state);
                    println!("  owner    {}", d.summary.owner);
                    println!(
                        "  grants   {}",
                        if d.grants.is_empty() {
                            "-".into()
                        } else {
                            d.grants.join(", ")
                        }
                    );
                    println!("Attributes:");
                    for (name, value) in &d.attributes {
                        println!("  {name}: {value}");
                    }
                    println!("Audit:");
                    for a in &d.audit {
                        println!(
                            "  {}  {}  {}  {}",
                            output::time(a.time),
                            a.actor,
                            a.action,
                            a.detail
                        );
                    }
                }
            }
        }
        KeySub::Activate { id } => print_summary(
            &admin::activate(store, &id, &actor).map_err(fail)?,
            "activated",
        )?,
        KeySub::Deactivate { id } => print_summary(
            &admin::deactivate(store, &id, &actor).map_err(fail)?,
            "deactivated",
        )?,
        KeySub::Destroy { id } => print_summary(
            &admin::destroy(store, &id, &actor).map_err(fail)?,
            "destroyed",
        )?,
        KeySub::Grant { id, identity } => {
            admin::grant(store, &id, &identity, &actor).map_err(fail)?;
            if format == Format::Table {
                println!("{identity} may now use key {id}");
            }
        }
    }
    Ok(())
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, CliError> {
    serde_json::to_string_pretty(v).map_err(|e| CliError::msg(e.to_string()))
}

pub fn run_kmip(cmd: KmipCommand) -> Result<(), CliError> {
    match cmd.command {
        KmipSub::Decode { file, hex } => {
            let mut data = Vec::new();
            if file.as_os_str() == "-" {
                std::io::stdin()
                    .read_to_end(&mut data)
                    .map_err(|e| CliError::msg(e.to_string()))?;
            } else {
                data = std::fs::read(&file)
                    .map_err(|e| CliError::msg(format!("Cannot read {}: {e}", file.display())))?;
            }
            if hex {
                let text: String = String::from_utf8_lossy(&data)
                    .chars()
                    .filter(|c| c.is_ascii_hexdigit())
                    .collect();
                data = (0..text.len() / 2)
                    .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
                    .collect::<Result<_, _>>()
                    .map_err(|e| CliError::msg(format!("Not hex: {e}")))?;
            }
            let item = tresor_kmip::ttlv::decode_item(&data, &Default::default())
                .map_err(|e| CliError::msg(format!("Not TTLV: {e}")))?;
            println!("{}", tresor_kmip::pretty::render(&item));
            Ok(())
        }
    }
}
