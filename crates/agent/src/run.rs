//! Setting up and running the agent: `tresor agent join` and `tresor agent`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;

use crate::disk::QemuTools;
use crate::host::{Host, HostConfig};
use crate::libvirt::LibvirtConfig;
use crate::qemu::QemuConfig;
use crate::runtime::RuntimeKind;
use crate::session::{self, SessionConfig};

/// `agent.toml`. Relative paths are relative to the file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This host's name (the common name of its certificate).
    pub name: String,
    /// The server's agent endpoint, `host:port`.
    pub server: String,
    /// The name in the server's certificate.
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// Where VM directories live.
    pub datastore: PathBuf,
    /// The agent's own state: registered VMs, its certificate and key, QEMU's sockets.
    pub state_dir: PathBuf,
    /// How many keys the locked key memory holds.
    #[serde(default = "default_capacity")]
    pub key_capacity: usize,
    /// Seconds a guest has to shut down after the ACPI power button.
    #[serde(default = "default_shutdown")]
    pub shutdown_timeout_secs: u64,
    /// Where VMs run: `qemu` (QEMU processes of the agent's own) or `libvirt` (domains of
    /// libvirtd, through `virsh`).
    #[serde(default)]
    pub runtime: RuntimeName,
    /// libvirt's connection URI, for `runtime = "libvirt"`.
    #[serde(default = "default_libvirt_uri")]
    pub libvirt_uri: String,
    /// The accelerator: `auto` (KVM when /dev/kvm can be opened, TCG otherwise), `kvm` or `tcg`.
    #[serde(default)]
    pub accel: Accel,
    /// Where cloud-init seeds are written while a VM starts; a memory file system.
    #[serde(default = "default_seed_dir")]
    pub seed_dir: PathBuf,
    /// Where Prometheus scrapes `/metrics` (with `/healthz` and `/readyz`), plain HTTP; none
    /// when unset.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// Serve raw LUKS disks (`--disk-format luks`) to their guests through the fast data path:
    /// a vhost-user backend per disk (`tresor agent blk`, this program), with the guest's
    /// memory shared with it. When false, or when a backend cannot start, QEMU's own `luks`
    /// driver opens them (slower).
    #[serde(default = "default_true")]
    pub fast_disks: bool,
}

fn default_true() -> bool {
    true
}

fn default_seed_dir() -> PathBuf {
    crate::host::DEFAULT_SEED_DIR.into()
}

/// The runtimes an agent can use.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeName {
    #[default]
    Qemu,
    Libvirt,
}

/// Which accelerator VMs use.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

fn default_libvirt_uri() -> String {
    crate::libvirt::LibvirtConfig::default().uri
}

fn default_server_name() -> String {
    "localhost".into()
}
fn default_capacity() -> usize {
    1024
}
fn default_shutdown() -> u64 {
    30
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<AgentConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("Cannot read {}: {e}", path.display()))?;
        let mut c: AgentConfig =
            toml::from_str(&text).map_err(|e| format!("{} is invalid: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut c.datastore, &mut c.state_dir] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(c)
    }
}

/// Accepts `host:port`, or a URL such as `tresor://host:port/`.
pub fn endpoint_of(server: &str) -> String {
    let s = server.split("://").last().unwrap_or(server);
    s.trim_end_matches('/').to_owned()
}

/// Enrols this host and writes its configuration (`config`, or `dir/agent.toml`) with its
/// certificate and key in its state folder: that of an existing configuration (whose other
/// settings stay), else `dir/state`.
pub async fn join(
    dir: &Path,
    config: Option<&Path>,
    server: &str,
    server_name: &str,
    token: &str,
    name: &str,
) -> Result<PathBuf, String> {
    let endpoint = endpoint_of(server);
    let path = config.map_or_else(|| dir.join("agent.toml"), Path::to_path_buf);
    let existing = std::fs::read_to_string(&path).ok();
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let configured_state = existing
        .as_deref()
        .and_then(|t| toml::from_str::<toml::Table>(t).ok())
        .and_then(|t| {
            t.get("state_dir")
                .and_then(|v| v.as_str())
                .map(PathBuf::from)
        })
        .map(|p| if p.is_relative() { base.join(p) } else { p });
    // A configuration outside `dir` names the folders in `dir` absolutely.
    let (datastore, state) = match (config, &configured_state) {
        (_, Some(state)) => (String::new(), state.clone()),
        (None, None) => ("datastore".to_owned(), dir.join("state")),
        (Some(_), None) => {
            let dir = std::path::absolute(dir).map_err(|e| e.to_string())?;
            (
                dir.join("datastore").display().to_string(),
                dir.join("state"),
            )
        }
    };
    let state_text = match config {
        None => "state".to_owned(),
        Some(_) => state.display().to_string(),
    };
    let enrolment = session::join(&endpoint, server_name, token, name).await?;
    std::fs::create_dir_all(&state)
        .map_err(|e| format!("Cannot create {}: {e}", state.display()))?;
    // A new enrolment (a new server) replaces the old certificate.
    for f in ["agent.pem", "agent.key", "server-ca.pem"] {
        let _ = std::fs::remove_file(state.join(f));
    }
    std::fs::write(state.join("agent.pem"), &enrolment.certificate).map_err(|e| e.to_string())?;
    std::fs::write(state.join("server-ca.pem"), &enrolment.ca).map_err(|e| e.to_string())?;
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(state.join("agent.key"))
            .map_err(|e| format!("Cannot write the agent's key: {e}"))?;
        f.write_all(enrolment.key.as_bytes())
            .map_err(|e| e.to_string())?;
    }
    let config = format!(
        "# Tresor host agent (tresor agent --config agent.toml)\n\nname = {name:?}\nserver = {endpoint:?}\nserver_name = {server_name:?}\n\
         datastore = {datastore:?}\nstate_dir = {state_text:?}\nkey_capacity = 1024\nshutdown_timeout_secs = 30\n\n\
         # Where VMs run: \"qemu\" (QEMU processes of the agent's own) or \"libvirt\" (domains of\n\
         # libvirtd; its domain state folder must be on a memory file system for encrypted VMs).\n\
         runtime = \"qemu\"\n# libvirt's connection URI, for runtime = \"libvirt\".\nlibvirt_uri = \"qemu:///system\"\n\
         # \"auto\" (KVM when /dev/kvm can be opened, TCG otherwise), \"kvm\" or \"tcg\".\naccel = \"auto\"\n\
         # Raw LUKS disks (vm create --disk-format luks) through the fast data path, a vhost-user\n\
         # backend per disk; false lets QEMU's own LUKS driver open them.\nfast_disks = true\n\n\
         # Prometheus metrics (/metrics, with /healthz and /readyz) over plain HTTP on this\n\
         # address; keep it on a loopback or management address.\n# metrics_listen = \"127.0.0.1:9401\"\n"
    );
    // A host that enrols again keeps its settings (runtime, datastore, ...): only who it is and
    // which server it speaks to change.
    let config = match existing {
        Some(existing) => reenrolled(&existing, name, &endpoint, server_name),
        None => config,
    };
    crate::vmfile::write_atomic(&path, config.as_bytes()).map_err(|e| e.to_string())?;
    Ok(path)
}

/// An agent configuration with the enrolment's `name`, `server` and `server_name`, everything
/// else as it was.
fn reenrolled(existing: &str, name: &str, server: &str, server_name: &str) -> String {
    let mut out = String::new();
    let mut seen = [false; 3];
    for line in existing.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        let replaced = match key {
            "name" => Some((0, format!("name = {name:?}"))),
            "server" => Some((1, format!("server = {server:?}"))),
            "server_name" => Some((2, format!("server_name = {server_name:?}"))),
            _ => None,
        };
        match replaced {
            Some((i, l)) if !line.trim_start().starts_with('#') => {
                seen[i] = true;
                out.push_str(&l);
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    for (i, l) in [
        format!("name = {name:?}"),
        format!("server = {server:?}"),
        format!("server_name = {server_name:?}"),
    ]
    .into_iter()
    .enumerate()
    {
        if !seen[i] {
            // Keys before any table.
            out = format!("{l}\n{out}");
        }
    }
    out
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    config: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    if let Err(e) = crate::memory::harden_process() {
        tracing::warn!(error = %e, "cannot make the agent process non-dumpable");
    }
    if let Err(e) = crate::memory::lock_all_memory() {
        tracing::warn!(
            error = %e,
            "cannot keep the agent's memory out of swap (mlockall): its keys stay in locked memory, but a deep rekey's volume keys and the data it copies could be swapped out; raise its memory-lock limit (LimitMEMLOCK=infinity, ulimit -l) or run it as root"
        );
    }
    let state = &config.state_dir;
    let tls = tresor_tls::client_config(
        &tresor_tls::load_certs(&state.join("server-ca.pem"))
            .map_err(|e| format!("{e}; enrol first with `tresor agent join`"))?,
        tresor_tls::load_certs(&state.join("agent.pem")).map_err(|e| e.to_string())?,
        tresor_tls::load_key(&state.join("agent.key")).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let host = Host::open(HostConfig {
        name: config.name.clone(),
        datastore: config.datastore.clone(),
        state_dir: state.clone(),
        key_capacity: config.key_capacity,
        qemu: QemuConfig {
            shutdown_timeout: Duration::from_secs(config.shutdown_timeout_secs),
            prefer_kvm: config.accel != Accel::Tcg,
            require_kvm: config.accel == Accel::Kvm,
            blk_backend: if config.fast_disks {
                // This program serves them (`tresor agent blk`).
                std::env::current_exe()
                    .map_err(|e| {
                        tracing::warn!(error = %e, "cannot find the agent's own program: raw LUKS disks are opened by QEMU's driver");
                    })
                    .ok()
            } else {
                None
            },
            ..QemuConfig::default()
        },
        runtime: match config.runtime {
            RuntimeName::Qemu => RuntimeKind::Qemu,
            RuntimeName::Libvirt => RuntimeKind::Libvirt(LibvirtConfig {
                uri: config.libvirt_uri.clone(),
                ..LibvirtConfig::default()
            }),
        },
        tools: QemuTools::default(),
        seed_dir: config.seed_dir.clone(),
    })
    .map_err(|e| e.to_string())?;
    let session = SessionConfig {
        server: config.server.clone(),
        server_name: config.server_name.clone(),
        tls,
        heartbeat: Duration::from_secs(10),
        max_backoff: Duration::from_secs(30),
    };
    tracing::info!(host = %config.name, server = %config.server, "agent starting");
    let metrics = match &config.metrics_listen {
        Some(address) => {
            let listener = tresor_ops::bind(address).await.map_err(|e| e.to_string())?;
            tracing::info!(metrics = %address, "metrics listening");
            let observed = Arc::new(crate::metrics::Observed {
                certificate: state.join("agent.pem"),
            });
            Some(tokio::spawn(tresor_ops::serve(
                listener,
                observed,
                std::future::pending(),
            )))
        }
        None => None,
    };
    let host = Arc::new(Mutex::new(host));
    session::run(session, host.clone(), shutdown).await;
    if let Some(m) = metrics {
        m.abort();
    }
    // An agent that stops (an upgrade, a restart) leaves its VMs running: `tresor host reboot`
    // is the way to stop them. Work under way holds the host; the agent does not wait for it
    // (disk operations are journaled: the next agent finishes or rolls them back), and its VMs
    // run on anyway (QEMU has a process group of its own and is not killed by the agent's end).
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        match host.try_lock() {
            Ok(mut h) => {
                h.detach_running();
                break;
            }
            Err(std::sync::TryLockError::Poisoned(p)) => {
                p.into_inner().detach_running();
                break;
            }
            Err(std::sync::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(std::sync::TryLockError::WouldBlock) => {
                tracing::warn!(
                    "stopping while host work is under way; the next start finishes or undoes it"
                );
                break;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enrolling_again_keeps_the_hosts_settings() {
        let before = "# Tresor host agent\n\nname = \"old\"\nserver = \"10.0.0.1:8401\"\nserver_name = \"localhost\"\n\
                      datastore = \"/srv/vms\"\nstate_dir = \"/var/lib/tresor\"\nruntime = \"libvirt\"\naccel = \"kvm\"\n";
        let after = reenrolled(before, "host-7", "10.0.0.2:8401", "tresor.example");
        let c: AgentConfig = toml::from_str(&after).unwrap();
        assert_eq!(c.name, "host-7");
        assert_eq!(c.server, "10.0.0.2:8401");
        assert_eq!(c.server_name, "tresor.example");
        assert_eq!(c.runtime, RuntimeName::Libvirt);
        assert_eq!(c.accel, Accel::Kvm);
        assert_eq!(c.datastore, PathBuf::from("/srv/vms"));
        assert!(after.starts_with("# Tresor host agent"), "{after}");
    }
}
