//! `tresor dev`: the whole system on this machine, in one process tree: the embedded key server,
//! the server (SQLite) and N host agents, with their data in one folder. Prints the API's URL
//! and an admin token.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;

use crate::CliError;

#[derive(Debug, Args)]
pub struct DevArgs {
    /// How many host agents to run.
    #[arg(long, default_value_t = 1)]
    hosts: usize,
    /// Where everything keeps its data.
    #[arg(long, default_value = ".tresor-dev")]
    data: PathBuf,
    /// The API's port; the agent endpoint uses the next one, the key server the one after.
    #[arg(long, default_value_t = 8400)]
    port: u16,
    /// Where the agents run VMs: qemu (QEMU processes of their own) or libvirt (domains of the
    /// libvirtd on qemu:///system, which must be running).
    #[arg(long, default_value = "qemu", value_parser = ["qemu", "libvirt"])]
    runtime: String,
    /// The accelerator: auto (KVM when /dev/kvm can be opened), kvm or tcg.
    #[arg(long, default_value = "auto", value_parser = ["auto", "kvm", "tcg"])]
    accel: String,
    /// Serve Prometheus metrics (with /healthz and /readyz): the server on this port, the key
    /// server on the next, host-N on the one N after that.
    #[arg(long)]
    metrics_port: Option<u16>,
    /// Forward every event to this syslog collector (RFC 5424): udp://HOST:PORT or
    /// tcp://HOST:PORT.
    #[arg(long)]
    syslog: Option<String>,
    /// Seconds the server waits for a host that neither answers nor reports progress (the
    /// server's agent_timeout_secs; default 120).
    #[arg(long)]
    agent_timeout: Option<u64>,
    /// The server's database on PostgreSQL (`postgres://USER@HOST:PORT/DB`) instead of an
    /// SQLite file; used when the server is first set up.
    #[arg(long)]
    database: Option<String>,
    /// The file that holds the PostgreSQL user's password.
    #[arg(long, requires = "database")]
    database_password_file: Option<PathBuf>,
    /// How many servers to run on the database (with --database): one leads, the others
    /// stand by; each has an API port and an agent port of its own after the key server's.
    #[arg(long, default_value_t = 1, requires = "database")]
    servers: u16,
    /// Seconds a leading server's lease lasts (the servers' lease_secs; default 10).
    #[arg(long)]
    lease_secs: Option<u64>,
}

/// The API and agent ports of server `i` (1-based): the first has `--port` and the one after;
/// the others come after the key server's port.
fn server_ports(port: u16, i: u16) -> (u16, u16) {
    match i {
        1 => (port, port + 1),
        i => (port + 3 + 2 * (i - 2), port + 4 + 2 * (i - 2)),
    }
}

/// A standby server beside the first: its folder holds the first's CA, certificates and
/// configuration (the same database), with ports of its own.
fn standby_server(first: &Path, dir: &Path, api: u16, agents: u16) -> Result<(), CliError> {
    let io = |e: std::io::Error| CliError::msg(format!("Cannot set up {}: {e}", dir.display()));
    if !dir.join("server.toml").exists() {
        std::fs::create_dir_all(dir).map_err(io)?;
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(io)?;
        for f in tresor_server::run::STANDBY_FILES {
            std::fs::copy(first.join(f), dir.join(f)).map_err(io)?;
        }
    }
    let config = dir.join("server.toml");
    let text = std::fs::read_to_string(&config).map_err(io)?;
    let text = with_top_level(&text, "api_listen", Some(&format!("\"127.0.0.1:{api}\"")));
    let text = with_top_level(
        &text,
        "agent_listen",
        Some(&format!("\"127.0.0.1:{agents}\"")),
    );
    let text = with_top_level(&text, "metrics_listen", None);
    std::fs::write(&config, text).map_err(io)
}

/// A configuration's text without its `[name]` table, then with it holding `body` when given.
fn with_table(text: &str, name: &str, body: Option<&str>) -> String {
    let header = format!("[{name}]");
    let mut out = String::new();
    let mut inside = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            inside = t == header;
        }
        if !inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    if let Some(body) = body {
        out.push_str(&format!("{header}\n{body}"));
    }
    out
}

/// A configuration's text with its top-level `key` set to `value` (TOML, such as `"text"` or
/// `12`), or removed. Top-level keys go first, before any table of the file.
fn with_top_level(text: &str, key: &str, value: Option<&str>) -> String {
    let prefix = format!("{key} = ");
    let rest: String = text
        .lines()
        .filter(|l| !l.starts_with(&prefix))
        .map(|l| format!("{l}\n"))
        .collect();
    match value {
        Some(v) => format!("{prefix}{v}\n{rest}"),
        None => rest,
    }
}

/// Sets (or removes) `metrics_listen` in the configuration file at `path`.
fn set_metrics_listen(path: &Path, port: Option<u16>) -> Result<(), CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::msg(format!("Cannot read {}: {e}", path.display())))?;
    let address = port.map(|p| format!("\"127.0.0.1:{p}\""));
    std::fs::write(
        path,
        with_top_level(&text, "metrics_listen", address.as_deref()),
    )
    .map_err(|e| CliError::msg(format!("Cannot write {}: {e}", path.display())))
}

struct Children(Vec<(String, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (_, c) in self.0.iter_mut().rev() {
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
        }
        for (_, c) in self.0.iter_mut() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(children: &mut Children, name: &str, args: &[&str], log: &Path) -> Result<(), CliError> {
    let exe = std::env::current_exe().map_err(|e| CliError::msg(e.to_string()))?;
    let child = Command::new(exe)
        .args(args)
        .env("TRESOR_LOG_FORMAT", crate::log_format_name())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(log)
                .map_err(|e| CliError::msg(format!("Cannot create {}: {e}", log.display())))?,
        )
        .spawn()
        .map_err(|e| CliError::msg(format!("Cannot start {name}: {e}")))?;
    children.0.push((name.to_owned(), child));
    Ok(())
}

fn wait_port(port: u16, what: &str, log: &Path) -> Result<(), CliError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(CliError::msg(format!(
                "{what} did not start; see {}",
                log.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

pub fn run(args: DevArgs) -> Result<(), CliError> {
    let data = std::path::absolute(&args.data).map_err(|e| CliError::msg(e.to_string()))?;
    std::fs::create_dir_all(&data)
        .map_err(|e| CliError::msg(format!("Cannot create {}: {e}", data.display())))?;
    let (api, agents, kms_port) = (args.port, args.port + 1, args.port + 2);
    if args.servers > 1 && args.database.is_none() {
        return Err(CliError::msg(
            "--servers needs --database: servers share one PostgreSQL database",
        ));
    }
    let servers = args.servers.max(1);
    let agent_endpoints = (1..=servers)
        .map(|i| format!("127.0.0.1:{}", server_ports(args.port, i).1))
        .collect::<Vec<_>>()
        .join(",");
    let kms_dir = data.join("kms");
    let server_dir = data.join("server");
    let logs = data.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| CliError::msg(e.to_string()))?;
    if !kms_dir.join("kms.toml").exists() {
        crate::kms::init(
            &kms_dir,
            &["localhost".into(), "127.0.0.1".into()],
            &format!("127.0.0.1:{kms_port}"),
        )?;
    }
    let token_file = data.join("admin-token");
    let database = args
        .database
        .clone()
        .map(|url| tresor_server::run::DatabaseSetting {
            url,
            password_file: args.database_password_file.clone(),
        });
    if !server_dir.join("server.toml").exists() {
        let done = tresor_server::run::init(
            &server_dir,
            &["localhost".into(), "127.0.0.1".into()],
            &format!("127.0.0.1:{api}"),
            &format!("127.0.0.1:{agents}"),
            tresor_server::run::ApiCertificate::FromServerCa,
            database.as_ref(),
        )
        .map_err(|e| CliError::msg(e.to_string()))?;
        crate::kms::write_private(&token_file, done.admin_token.as_bytes())?;
        // The embedded key server is the default provider.
        let location = tresor_server::run::ServerConfig::load(&server_dir.join("server.toml"))
            .and_then(|c| c.database_location())
            .map_err(|e| CliError::msg(e.to_string()))?;
        let store = tresor_server::store::Store::open_at(&location)
            .map_err(|e| CliError::msg(e.to_string()))?;
        let read = |p: PathBuf| {
            std::fs::read_to_string(&p)
                .map_err(|e| CliError::msg(format!("Cannot read {}: {e}", p.display())))
        };
        store
            .put_provider(&tresor_server::store::ProviderRecord {
                name: "tresor-kms".into(),
                endpoints: vec![format!("127.0.0.1:{kms_port}")],
                ca_pem: read(kms_dir.join("tls/ca.pem"))?,
                client_cert_pem: read(kms_dir.join("clients/tresor-server.pem"))?,
                client_key_file: kms_dir
                    .join("clients/tresor-server.key")
                    .display()
                    .to_string(),
                is_default: true,
            })
            .map_err(|e| CliError::msg(e.to_string()))?;
    }
    let admin = std::fs::read_to_string(&token_file)
        .map_err(|e| CliError::msg(format!("Cannot read {}: {e}", token_file.display())))?;
    let ca_file = server_dir.join("ca.pem");
    let api_url = format!("https://127.0.0.1:{api}");
    let client = tresor_api::Client::new(&api_url, tresor_api::Trust::ca_file(&ca_file)?)?
        .with_token(admin.trim());
    let metrics = |offset: u16| args.metrics_port.map(|p| p + offset);
    set_metrics_listen(&kms_dir.join("kms.toml"), metrics(1))?;
    set_metrics_listen(&server_dir.join("server.toml"), metrics(0))?;
    let server_toml = server_dir.join("server.toml");
    let text = std::fs::read_to_string(&server_toml)
        .map_err(|e| CliError::msg(format!("Cannot read {}: {e}", server_toml.display())))?;
    let syslog = args.syslog.as_ref().map(|a| format!("address = {a:?}\n"));
    let text = with_table(&text, "syslog", syslog.as_deref());
    let timeout = args.agent_timeout.map(|t| t.to_string());
    let text = with_top_level(&text, "agent_timeout_secs", timeout.as_deref());
    let lease = args.lease_secs.map(|t| t.to_string());
    let text = with_top_level(&text, "lease_secs", lease.as_deref());
    let text = with_top_level(&text, "api_url", Some(&format!("\"{api_url}\"")));
    std::fs::write(&server_toml, text)
        .map_err(|e| CliError::msg(format!("Cannot write {}: {e}", server_toml.display())))?;
    let mut children = Children(Vec::new());
    let kms_log = logs.join("kms.log");
    spawn(
        &mut children,
        "kms",
        &[
            "kms",
            "serve",
            "--config",
            &kms_dir.join("kms.toml").display().to_string(),
        ],
        &kms_log,
    )?;
    wait_port(kms_port, "The key server", &kms_log)?;
    let server_log = logs.join("server.log");
    spawn(
        &mut children,
        "server",
        &[
            "server",
            "--config",
            &server_dir.join("server.toml").display().to_string(),
        ],
        &server_log,
    )?;
    wait_port(api, "The server", &server_log)?;
    // It listens for agents once it leads (after its API is up): hosts enrol after that.
    wait_port(agents, "The server's listener for agents", &server_log)?;
    let mut api_urls = vec![api_url.clone()];
    for i in 2..=servers {
        let (api_i, agents_i) = server_ports(args.port, i);
        let dir = data.join(format!("server-{i}"));
        standby_server(&server_dir, &dir, api_i, agents_i)?;
        let config = dir.join("server.toml");
        let url = format!("https://127.0.0.1:{api_i}");
        let text = std::fs::read_to_string(&config)
            .map_err(|e| CliError::msg(format!("Cannot read {}: {e}", config.display())))?;
        std::fs::write(
            &config,
            with_top_level(&text, "api_url", Some(&format!("\"{url}\""))),
        )
        .map_err(|e| CliError::msg(format!("Cannot write {}: {e}", config.display())))?;
        let log = logs.join(format!("server-{i}.log"));
        spawn(
            &mut children,
            &format!("server-{i}"),
            &["server", "--config", &config.display().to_string()],
            &log,
        )?;
        wait_port(api_i, &format!("Server {i}"), &log)?;
        api_urls.push(url);
    }
    for i in 1..=args.hosts.max(1) {
        let name = format!("host-{i}");
        let dir = data.join(&name);
        if !dir.join("agent.toml").exists() {
            let (status, body) = crate::api::send_text(
                &client,
                "POST",
                "/api/v1/hosts/token",
                &serde_json::json!({"host": name, "replace": true}).to_string(),
            )?;
            let token = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["token"].as_str().map(str::to_owned))
                .filter(|_| status == 200)
                .ok_or_else(|| CliError::msg(format!("The server gave no join token: {body}")))?;
            // The token goes by file, not on the command line.
            let token_path = data.join(format!(".join-token-{name}"));
            crate::kms::write_private(&token_path, token.as_bytes())?;
            let exe = std::env::current_exe().map_err(|e| CliError::msg(e.to_string()))?;
            let out = Command::new(exe)
                .args([
                    "agent",
                    "join",
                    "--server",
                    &format!("127.0.0.1:{agents}"),
                    "--name",
                    &name,
                    "--token-file",
                ])
                .arg(&token_path)
                .arg("--dir")
                .arg(&dir)
                .output();
            let _ = std::fs::remove_file(&token_path);
            let out = out.map_err(|e| CliError::msg(e.to_string()))?;
            if !out.status.success() {
                return Err(CliError::msg(format!(
                    "Host {name} could not enrol: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            // Development VMs boot no operating system, so nothing answers the ACPI power
            // button: wait seconds, not the production default, before stopping them.
            let config = dir.join("agent.toml");
            let text = std::fs::read_to_string(&config)
                .map_err(|e| CliError::msg(format!("Cannot read {}: {e}", config.display())))?;
            std::fs::write(
                &config,
                text.replace("shutdown_timeout_secs = 30", "shutdown_timeout_secs = 2"),
            )
            .map_err(|e| CliError::msg(format!("Cannot write {}: {e}", config.display())))?;
        }
        // The runtime and accelerator of this run (a later run may choose others).
        let config = dir.join("agent.toml");
        let text = std::fs::read_to_string(&config)
            .map_err(|e| CliError::msg(format!("Cannot read {}: {e}", config.display())))?;
        let mut text = text;
        for key in ["runtime", "accel"] {
            if !text.lines().any(|l| l.starts_with(&format!("{key} = "))) {
                text.push_str(&format!("{key} = \"\"\n"));
            }
        }
        let text: String = text
            .lines()
            .map(|l| {
                if l.starts_with("server = ") {
                    format!("server = {agent_endpoints:?}")
                } else if l.starts_with("runtime = ") {
                    format!("runtime = {:?}", args.runtime)
                } else if l.starts_with("accel = ") {
                    format!("accel = {:?}", args.accel)
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
            + "\n";
        std::fs::write(&config, text)
            .map_err(|e| CliError::msg(format!("Cannot write {}: {e}", config.display())))?;
        set_metrics_listen(&config, metrics(1 + i as u16))?;
        spawn(
            &mut children,
            &name,
            &[
                "agent",
                "--config",
                &dir.join("agent.toml").display().to_string(),
            ],
            &logs.join(format!("{name}.log")),
        )?;
    }
    // Encryption mode on every host, as a fresh development setup wants it.
    for i in 1..=args.hosts.max(1) {
        let name = format!("host-{i}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = crate::api::send_text(
                &client,
                "POST",
                &format!("/api/v1/hosts/{name}/enable-encryption"),
                "",
            )?;
            if status == 200 {
                break;
            }
            if Instant::now() > deadline {
                return Err(CliError::msg(format!(
                    "Cannot enable encryption on {name}: {body}"
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    println!("Tresor is running (data in {}).", data.display());
    println!("  console      {api_url}/   (sign in with the admin token; the certificate is issued by the CA below)");
    println!("  API          {api_url}/api/v1   (described at /api/v1/openapi.json)");
    if servers > 1 {
        println!(
            "  servers      {}   (one leads, the others stand by; give tresor all of them: TRESOR_SERVER={})",
            api_urls.join(", "),
            api_urls.join(",")
        );
    }
    println!("  server CA    {}", ca_file.display());
    println!(
        "  admin token  {}   (also in {})",
        admin.trim(),
        token_file.display()
    );
    println!("  key server   127.0.0.1:{kms_port} (provider tresor-kms, the default)");
    println!(
        "  hosts        {}",
        (1..=args.hosts.max(1))
            .map(|i| format!("host-{i}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(p) = args.metrics_port {
        println!(
            "  metrics      http://127.0.0.1:{p}/metrics (server), :{} (key server), :{}.. (hosts)",
            p + 1,
            p + 2
        );
    }
    println!("  logs         {}", logs.display());
    println!("Stop with Ctrl-C.");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::msg(e.to_string()))?;
    rt.block_on(async {
        // A part that stops is reported, and the others go on: a stopped key server is one of the
        // faults Tresor is made for.
        let mut reported: Vec<String> = Vec::new();
        loop {
            tokio::select! {
                _ = crate::kms::shutdown_signal() => break,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    for (name, c) in children.0.iter_mut() {
                        if !matches!(c.try_wait(), Ok(None)) && !reported.contains(name) {
                            eprintln!("tresor: {name} stopped; see {}", logs.display());
                            reported.push(name.clone());
                        }
                    }
                }
            }
        }
    });
    // Agents that stop leave their VMs running (so that an agent can be restarted under
    // them); `tresor dev` stops everything it started: the hosts' VMs first, as a restart does.
    for i in 1..=args.hosts.max(1) {
        let _ = crate::api::send_text(
            &client,
            "POST",
            &format!("/api/v1/hosts/host-{i}/reboot"),
            "",
        );
    }
    drop(children);
    stop_leftover_vms(&data);
    Ok(())
}

/// Stops QEMU processes of this development setup that are still running (the server was gone
/// and could not ask their hosts to stop them): those whose command line names its folder.
fn stop_leftover_vms(data: &Path) {
    let marker = data.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.starts_with("qemu-system") && cmdline.contains(&marker) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_top_level_key_is_set_before_any_table_and_removed() {
        let text = "# c\nlisten = \"x\"\n[tls]\ncert = \"a\"\n";
        let set = super::with_top_level(text, "metrics_listen", Some("\"127.0.0.1:1\""));
        assert!(
            set.starts_with("metrics_listen = \"127.0.0.1:1\"\n"),
            "{set}"
        );
        assert!(set.ends_with(text), "{set}");
        let again = super::with_top_level(&set, "metrics_listen", Some("\"127.0.0.1:2\""));
        assert_eq!(again.matches("metrics_listen").count(), 1);
        assert_eq!(super::with_top_level(&again, "metrics_listen", None), text);
    }

    #[test]
    fn a_table_is_replaced_or_removed() {
        let text = "a = 1\n[syslog]\naddress = \"udp://x:1\"\n[other]\nb = 2\n";
        let set = super::with_table(text, "syslog", Some("address = \"udp://y:2\"\n"));
        assert_eq!(
            set,
            "a = 1\n[other]\nb = 2\n[syslog]\naddress = \"udp://y:2\"\n"
        );
        assert_eq!(
            super::with_table(&set, "syslog", None),
            "a = 1\n[other]\nb = 2\n"
        );
    }
}
