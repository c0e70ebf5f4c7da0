//! The host: its key cache, its encryption mode, its registered VMs and the ones running. The
//! session with the server feeds it [`Command`]s and reports what [`Host::inventory`] says.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tresor_core::host::{self as hostmode, HostCryptoEvent, HostCryptoState};
use tresor_core::ids::KeyRef;
use tresor_core::protocol::{
    Chunk, Command, HostKey, PowerState, Reply, UploadKind, VmReport, VmSpec, MAX_CMDLINE,
    MAX_CONSOLE_READ, MAX_CONSOLE_WRITE,
};

use crate::disk::{DiskFormat, QemuTools};
use crate::diskops::{self, Change};
use crate::diskops::{Intent, Operation};
use crate::keycache::KeyCache;
use crate::libvirt::LibvirtRuntime;
use crate::progress;
use crate::qemu::{QemuConfig, QemuRuntime};
use crate::runtime::{Guest, Runtime, RuntimeKind};
use crate::vmfile::{write_atomic, DiskEntry, VmConfig, VmFile, VmFileError, CONFIG_FILE};

/// Where the host keeps things and how it runs VMs.
#[derive(Clone, Debug)]
pub struct HostConfig {
    pub name: String,
    /// VM directories live here.
    pub datastore: PathBuf,
    /// The agent's own state (the list of registered VMs) and QEMU's sockets and logs.
    pub state_dir: PathBuf,
    pub key_capacity: usize,
    /// QEMU's settings (the accelerator and the shutdown timeout apply to libvirt too).
    pub qemu: QemuConfig,
    /// Where VMs run.
    pub runtime: RuntimeKind,
    pub tools: QemuTools,
    /// Where cloud-init seeds are written for the moment a VM starts: a memory file system.
    pub seed_dir: PathBuf,
}

/// The seed folder when the config names none.
pub const DEFAULT_SEED_DIR: &str = "/dev/shm/tresor-seeds";

/// A failed command: a stable code and a message for people.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HostError {
    pub code: &'static str,
    pub message: String,
}

/// A request the server cancelled, after its undoing.
fn cancelled(message: String) -> HostError {
    fail("cancelled", message)
}

/// The copies of a VM-wide operation, for its progress in bytes of all its disks; each asks
/// first whether the server cancelled the request.
struct Copies {
    base: u64,
}

impl Copies {
    fn of(disks: &[&DiskEntry]) -> Copies {
        progress::begin_bytes(disks.iter().map(|d| d.size).sum());
        Copies { base: 0 }
    }

    /// The copy of `disk` comes next, unless the request is cancelled.
    fn next(&mut self, disk: &DiskEntry) -> Result<(), HostError> {
        if progress::cancelled() {
            return Err(cancelled("Cancelled before the next disk".into()));
        }
        progress::copy_of(self.base, disk.size);
        self.base = self.base.saturating_add(disk.size);
        Ok(())
    }

    /// Copies `disk` of the VM in `dir` to its new form, unless the request is cancelled.
    fn run(
        &mut self,
        host: &Host,
        dir: &Path,
        disk: &DiskEntry,
        change: &Change,
    ) -> Result<(), HostError> {
        self.next(disk)?;
        diskops::run(dir, &disk.id, change, &host.cache, &host.config.tools, None)?;
        Ok(())
    }
}

fn fail(code: &'static str, message: impl Into<String>) -> HostError {
    HostError {
        code,
        message: message.into(),
    }
}

impl From<VmFileError> for HostError {
    fn from(e: VmFileError) -> HostError {
        let code = match &e {
            VmFileError::HomeKeyMissing { .. } => "homeKeyMissing",
            VmFileError::DiskKeyMissing { .. } => "diskKeyMissing",
            VmFileError::WrongKey { .. } => "wrongKey",
            VmFileError::NoSuchDisk { .. } => "noSuchDisk",
            _ => "vmFile",
        };
        fail(code, e.to_string())
    }
}

impl From<diskops::DiskOpError> for HostError {
    fn from(e: diskops::DiskOpError) -> HostError {
        match e {
            diskops::DiskOpError::Vm(v) => v.into(),
            other => fail("disk", other.to_string()),
        }
    }
}

impl From<crate::disk::DiskError> for HostError {
    fn from(e: crate::disk::DiskError) -> HostError {
        fail("disk", e.to_string())
    }
}

impl From<crate::runtime::RuntimeError> for HostError {
    fn from(e: crate::runtime::RuntimeError) -> HostError {
        match e {
            crate::runtime::RuntimeError::Qemu(e) => fail("qemu", e.to_string()),
            crate::runtime::RuntimeError::Libvirt(e) => fail("libvirt", e.to_string()),
        }
    }
}

/// The host agent's state.
pub struct Host {
    config: HostConfig,
    pub cache: KeyCache,
    crypto: HostCryptoState,
    host_key: Option<KeyRef>,
    /// Registered VMs by name: their directories.
    vms: BTreeMap<String, PathBuf>,
    /// Where its VMs run.
    runtime: Box<dyn Runtime>,
    running: HashMap<String, Box<dyn Guest>>,
    /// VMs whose interrupted operation this run of the agent tried to finish and could not:
    /// tried again after a doubling wait.
    resumed: HashMap<String, Retry>,
    /// VMs that stopped without the server asking, to be told to it.
    stopped: Vec<OperationNotice>,
    /// VMs started under KVM whose kernel writes to the serial console, and when: one that
    /// printed nothing after [`KVM_GRACE`] shows that KVM does not boot guests on this host.
    kvm_watch: HashMap<String, std::time::Instant>,
}

/// How long a kernel booted directly under KVM has to print its first line.
const KVM_GRACE: Duration = Duration::from_secs(10);

/// The next try of an interrupted operation that failed.
#[derive(Clone, Copy, Debug)]
struct Retry {
    failures: u32,
    next: std::time::Instant,
}

/// After this many failed tries, the server is told (it raises an alarm on the VM).
const RETRIES_BEFORE_ALARM: u32 = 3;

/// What the agent tells the server about an interrupted operation it finishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperationNotice {
    pub vm: String,
    /// `operation.failing` or `operation.finished`.
    pub kind: &'static str,
    pub message: String,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("name", &self.config.name)
            .field("vms", &self.vms)
            .finish_non_exhaustive()
    }
}

const REGISTRY: &str = "registered.json";
const MODE: &str = "encryption-mode.json";

/// The encryption mode as saved between agent runs.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SavedMode {
    crypto_state: HostCryptoState,
    boot_id: String,
}

impl Host {
    /// Opens the host: loads the registered VMs and completes or rolls back any disk operation a
    /// crash interrupted.
    pub fn open(config: HostConfig) -> Result<Host, HostError> {
        for d in [&config.datastore, &config.state_dir] {
            std::fs::create_dir_all(d)
                .map_err(|e| fail("io", format!("Cannot create {}: {e}", d.display())))?;
        }
        let cache =
            KeyCache::new(config.key_capacity).map_err(|e| fail("memory", e.to_string()))?;
        let vms: BTreeMap<String, PathBuf> = match std::fs::read(config.state_dir.join(REGISTRY)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| fail("io", format!("Cannot read the list of registered VMs: {e}")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(fail(
                    "io",
                    format!("Cannot read the list of registered VMs: {e}"),
                ))
            }
        };
        // A name that is not a plain name (the file was edited) is not a VM of this host.
        let vms: BTreeMap<String, PathBuf> = vms
            .into_iter()
            .filter(|(name, dir)| match check_vm_name(name) {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(dir = %dir.display(), error = %e.message, "ignored a registered VM");
                    false
                }
            })
            .collect();
        for (name, dir) in &vms {
            match diskops::recover(dir) {
                Ok(diskops::Recovery::Nothing) => {}
                Ok(r) => {
                    tracing::warn!(vm = %name, recovery = ?r, "finished an interrupted disk operation")
                }
                Err(e) => {
                    tracing::error!(vm = %name, error = %e, "cannot recover an interrupted disk operation")
                }
            }
        }
        // The encryption mode survives an agent restart; a host restart (a new boot id) is a
        // Restart of the mode machine. The host key itself is gone either way.
        let crypto = match std::fs::read(config.state_dir.join(MODE))
            .ok()
            .and_then(|b| serde_json::from_slice::<SavedMode>(&b).ok())
        {
            Some(saved) if saved.boot_id == crate::session::boot_id() => saved.crypto_state,
            Some(saved) => hostmode::next(saved.crypto_state, HostCryptoEvent::Restart)
                .unwrap_or(saved.crypto_state),
            None => HostCryptoState::Incapable,
        };
        let runtime: Box<dyn Runtime> = match &config.runtime {
            RuntimeKind::Qemu => Box::new(QemuRuntime {
                config: config.qemu.clone(),
            }),
            RuntimeKind::Libvirt(libvirt) => Box::new(LibvirtRuntime {
                libvirt: libvirt.clone(),
                qemu: config.qemu.clone(),
            }),
        };
        tracing::info!(runtime = runtime.name(), "VMs run in this runtime");
        // VMs that ran on while the agent was away are its VMs again.
        let mut running = HashMap::new();
        for (name, dir) in &vms {
            let run_dir = config.state_dir.join("run").join(name);
            let disks = VmFile::load(dir).map(|f| f.disks.len()).unwrap_or(0);
            if let Some(vm) = runtime.find(name, &run_dir, disks) {
                tracing::info!(vm = %name, pid = vm.pid(), "found the VM running; it goes on");
                running.insert(name.clone(), vm);
            }
        }
        Ok(Host {
            config,
            cache,
            crypto,
            host_key: None,
            vms,
            runtime,
            running,
            resumed: Default::default(),
            stopped: Vec::new(),
            kvm_watch: HashMap::new(),
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn crypto_state(&self) -> HostCryptoState {
        self.crypto
    }

    fn set_crypto(&mut self, state: HostCryptoState) -> Result<(), HostError> {
        let saved = SavedMode {
            crypto_state: state,
            boot_id: crate::session::boot_id(),
        };
        let bytes = serde_json::to_vec_pretty(&saved).map_err(|e| fail("io", e.to_string()))?;
        write_atomic(&self.config.state_dir.join(MODE), &bytes)?;
        self.crypto = state;
        Ok(())
    }

    fn save_registry(&self) -> Result<(), HostError> {
        let bytes = serde_json::to_vec_pretty(&self.vms).map_err(|e| fail("io", e.to_string()))?;
        write_atomic(&self.config.state_dir.join(REGISTRY), &bytes).map_err(HostError::from)
    }

    fn dir(&self, vm: &str) -> Result<PathBuf, HostError> {
        self.vms.get(vm).cloned().ok_or_else(|| {
            fail(
                "noSuchVm",
                format!("No VM {vm} is registered on host {}", self.config.name),
            )
        })
    }

    fn is_running(&mut self, vm: &str) -> bool {
        let alive = match self.running.get_mut(vm) {
            Some(r) => r.is_running(),
            None => return false,
        };
        if !alive {
            // It ended without the server asking: the guest powered itself off, or something
            // outside Tresor stopped it (a killed QEMU, `virsh destroy`, a domain undefined).
            tracing::warn!(
                vm,
                runtime = self.runtime.name(),
                "the VM stopped without being asked to"
            );
            self.running.remove(vm);
            self.stopped.push(OperationNotice {
                vm: vm.to_owned(),
                kind: "vm.stopped",
                message: format!(
                    "VM {vm} stopped on host {} without Tresor asking (the guest powered off, or its {} process or domain was stopped outside Tresor)",
                    self.config.name,
                    self.runtime.name()
                ),
            });
        }
        alive
    }

    fn require_off(&mut self, vm: &str, action: &str) -> Result<(), HostError> {
        if self.is_running(vm) {
            return Err(fail(
                "vmRunning",
                format!("VM {vm} is powered on; power it off before you {action}"),
            ));
        }
        Ok(())
    }

    /// The report of one VM.
    pub fn report(&mut self, vm: &str) -> Result<VmReport, HostError> {
        let dir = self.dir(vm)?;
        let file = VmFile::load(&dir)?;
        Ok(self.report_of(vm, &dir, &file))
    }

    /// A VM directory named by the server: a folder of the datastore holding a VM, never a
    /// path outside it.
    fn vm_dir_at(&self, path: &str) -> Result<PathBuf, HostError> {
        let outside = || {
            fail(
                "badPath",
                format!(
                    "{path} is not a VM folder in the datastore {} of host {}",
                    self.config.datastore.display(),
                    self.config.name
                ),
            )
        };
        let store = std::fs::canonicalize(&self.config.datastore).map_err(|_| outside())?;
        let dir = std::fs::canonicalize(path).map_err(|_| outside())?;
        match (dir.parent(), dir.file_name()) {
            (Some(parent), Some(name)) if parent == store && dir.join(CONFIG_FILE).is_file() => {
                Ok(self.config.datastore.join(name))
            }
            _ => Err(outside()),
        }
    }

    fn report_of(&mut self, vm: &str, dir: &Path, file: &VmFile) -> VmReport {
        let power_state = if self.is_running(vm) {
            PowerState::PoweredOn
        } else {
            PowerState::PoweredOff
        };
        let data_paths = if power_state == PowerState::PoweredOn {
            // A runtime without a fast data path opens every disk with QEMU's driver.
            let mut paths = self
                .running
                .get_mut(vm)
                .map(|g| g.data_paths())
                .unwrap_or_default();
            paths.resize(file.disks.len(), tresor_core::protocol::DataPath::Qemu);
            paths
        } else {
            Vec::new()
        };
        VmReport {
            disk_formats: file.disks.iter().map(|d| d.format.layout()).collect(),
            data_paths,
            id: file.id.clone(),
            name: file.name.clone(),
            path: dir.display().to_string(),
            encrypted: file.encrypted,
            power_state,
            key_id: file.key_id.clone(),
            keys: file
                .keys_needed()
                .into_iter()
                .map(|(key, uses)| HostKey {
                    on_host: self.cache.contains(&key),
                    key,
                    uses,
                })
                .collect(),
            disks: file
                .disks
                .iter()
                .map(|d| dir.join(&d.file).display().to_string())
                .collect(),
            operation: diskops::read_intent(dir)
                .ok()
                .flatten()
                .map(|i| i.operation.as_str().to_owned()),
        }
    }

    /// Every registered VM, as the server is told.
    pub fn inventory(&mut self) -> Vec<VmReport> {
        let names: Vec<String> = self.vms.keys().cloned().collect();
        names
            .into_iter()
            .filter_map(|n| self.report(&n).ok())
            .collect()
    }

    /// Runs one command of the server.
    pub fn handle(&mut self, command: Command) -> Reply {
        match self.execute(command) {
            Ok(reply) => reply,
            Err(e) => Reply::Failed {
                code: e.code.into(),
                message: e.message,
            },
        }
    }

    fn execute(&mut self, command: Command) -> Result<Reply, HostError> {
        match command {
            Command::PushKeys { keys } => {
                for k in keys {
                    self.cache
                        .insert(k.key, k.material.expose())
                        .map_err(|e| fail("memory", e.to_string()))?;
                }
                Ok(Reply::Done)
            }
            Command::ForgetKeys { keys } => {
                for k in &keys {
                    self.cache.remove(k);
                }
                Ok(Reply::Done)
            }
            Command::Reboot => {
                self.reboot();
                Ok(Reply::Done)
            }
            Command::EnableEncryption { host_key } => {
                // Preparing checks the host's crypto support: a runtime that would put keys on
                // disk leaves the host incapable.
                self.runtime.keeps_keys_off_disk().map_err(|why| {
                    fail("hostNotSafe", format!("Host {}: {why}", self.config.name))
                })?;
                let prepared = hostmode::next(self.crypto, HostCryptoEvent::Prepare)
                    .map_err(|e| fail("hostMode", e.to_string()))?;
                let safe = hostmode::next(prepared, HostCryptoEvent::HostKeyReceived)
                    .map_err(|e| fail("hostMode", e.to_string()))?;
                self.cache
                    .insert(host_key.key.clone(), host_key.material.expose())
                    .map_err(|e| fail("memory", e.to_string()))?;
                self.host_key = Some(host_key.key);
                self.set_crypto(safe)?;
                Ok(Reply::Done)
            }
            Command::DisableEncryption => {
                let next = hostmode::next(self.crypto, HostCryptoEvent::Disable)
                    .map_err(|e| fail("hostMode", e.to_string()))?;
                self.set_crypto(next)?;
                Ok(Reply::Done)
            }
            Command::CreateVm { spec } => self.create(spec),
            Command::PowerOn { vm } => {
                if self.is_running(&vm) {
                    return Ok(Reply::Done);
                }
                let dir = self.dir(&vm)?;
                let file = VmFile::load(&dir)?;
                if file.encrypted && !hostmode::runs_encrypted_vms(self.crypto) {
                    return Err(self.not_safe());
                }
                if file.encrypted {
                    self.runtime.keeps_keys_off_disk().map_err(|why| {
                        fail("hostNotSafe", format!("Host {}: {why}", self.config.name))
                    })?;
                }
                let mut plan = file.prepare_power_on(&dir, &self.cache)?;
                let run_dir = self.config.state_dir.join("run").join(&vm);
                std::fs::create_dir_all(&run_dir)
                    .and_then(|()| {
                        use std::os::unix::fs::PermissionsExt;
                        std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o700))
                    })
                    .map_err(|e| fail("io", format!("Cannot create {}: {e}", run_dir.display())))?;
                // The cloud-init seed, made in memory, is written only to a memory file system
                // and removed once the VM has it open.
                if crate::seed::wanted(&plan.config) {
                    plan.seed = Some(self.write_seed(&vm, &file.id, &plan.config)?);
                }
                let started = self.runtime.start(&vm, &run_dir, &plan);
                if let Some(seed) = &plan.seed {
                    let _ = std::fs::remove_file(seed);
                }
                let started = started?;
                // A kernel that writes to the serial console shows whether KVM boots it.
                let speaks = plan
                    .boot
                    .as_ref()
                    .is_some_and(|b| b.cmdline.contains("console=ttyS0"));
                if started.accel() == "kvm" && speaks && !self.config.qemu.require_kvm {
                    self.kvm_watch.insert(vm.clone(), std::time::Instant::now());
                }
                self.running.insert(vm.clone(), started);
                // The VM as it is now, so that the server shows it powered on at once.
                Ok(Reply::Vm {
                    vm: self.report_of(&vm, &dir, &file),
                })
            }
            Command::PowerOff { vm } => {
                if let Some(r) = self.running.remove(&vm) {
                    r.power_off(self.runtime.shutdown_timeout());
                }
                let dir = self.dir(&vm)?;
                let file = VmFile::load(&dir)?;
                Ok(Reply::Vm {
                    vm: self.report_of(&vm, &dir, &file),
                })
            }
            Command::Inspect { path } => {
                let dir = self.vm_dir_at(&path)?;
                let file = VmFile::load(&dir)?;
                check_vm_name(&file.name)?;
                Ok(Reply::Vm {
                    vm: self.report_of(&file.name, &dir, &file),
                })
            }
            Command::Register { path } => {
                let dir = self.vm_dir_at(&path)?;
                let file = VmFile::load(&dir)?;
                check_vm_name(&file.name)?;
                if let Some(existing) = self.vms.get(&file.name) {
                    if existing != &dir {
                        return Err(fail(
                            "exists",
                            format!(
                                "Another VM named {} is registered on host {}",
                                file.name, self.config.name
                            ),
                        ));
                    }
                }
                diskops::recover(&dir)?;
                self.vms.insert(file.name.clone(), dir);
                self.save_registry()?;
                Ok(Reply::Vm {
                    vm: self.report(&file.name)?,
                })
            }
            Command::ListVmDirs => {
                let mut paths = Vec::new();
                if let Ok(entries) = std::fs::read_dir(&self.config.datastore) {
                    for e in entries.flatten() {
                        if e.path().join(CONFIG_FILE).is_file() {
                            paths.push(e.path().display().to_string());
                        }
                    }
                }
                paths.sort();
                Ok(Reply::VmDirs { paths })
            }
            Command::Unregister { vm } => {
                let dir = self.dir(&vm)?;
                self.require_off(&vm, "unregister it")?;
                if let Ok(file) = VmFile::load(&dir) {
                    self.runtime.forget(&vm, &file.id)?;
                }
                self.vms.remove(&vm);
                self.save_registry()?;
                Ok(Reply::Done)
            }
            Command::Reload { vm } => Ok(Reply::Vm {
                vm: self.report(&vm)?,
            }),
            Command::Delete { vm } => {
                let dir = self.dir(&vm)?;
                self.require_off(&vm, "delete it")?;
                if let Ok(file) = VmFile::load(&dir) {
                    self.runtime.forget(&vm, &file.id)?;
                }
                std::fs::remove_dir_all(&dir)
                    .map_err(|e| fail("io", format!("Cannot delete {}: {e}", dir.display())))?;
                self.vms.remove(&vm);
                self.save_registry()?;
                Ok(Reply::Done)
            }
            Command::Encrypt {
                vm,
                key,
                disk_format,
            } => self.encrypt(&vm, key, disk_format),
            Command::AddDisk { vm, disk } => self.add_disk(&vm, disk),
            Command::Decrypt { vm } => self.decrypt(&vm),
            Command::Rekey {
                vm,
                key,
                deep,
                disk_format,
            } => self.rekey(&vm, key, deep, disk_format),
            Command::Adopt { domain, id } => self.adopt(&domain, &id),
            Command::ConsoleRead { vm, offset } => self.console_read(&vm, offset),
            Command::ConsoleWrite { vm, data } => self.console_write(&vm, &data.0),
            Command::Upload {
                vm,
                kind,
                offset,
                data,
                done,
            } => self.upload(&vm, kind, offset, &data.0, done),
        }
    }

    /// Takes over `domain`, a powered-off VM of the runtime that is not Tresor's. Its images are
    /// copied into the new VM's folder first; only when the VM's file is written do the domain's
    /// definition and its original images go, so that a failure or a crash on the way leaves the
    /// domain as it was.
    fn adopt(&mut self, domain: &str, id: &str) -> Result<Reply, HostError> {
        check_vm_name(domain)?;
        if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(fail("badId", "A VM id must be 1 to 64 hexadecimal digits"));
        }
        if self.vms.contains_key(domain) {
            return Err(fail(
                "exists",
                format!(
                    "A VM named {domain} is registered on host {} already",
                    self.config.name
                ),
            ));
        }
        let shape = self
            .runtime
            .describe_foreign(domain)
            .map_err(|why| fail("adopt", why))?;
        if shape.disks.len() > tresor_core::protocol::MAX_DISKS
            || shape.networks.len() > tresor_core::protocol::MAX_NICS
        {
            return Err(fail(
                "badShape",
                format!(
                    "Domain {domain} has {} disks and {} network interfaces; a Tresor VM has at most {} and {}",
                    shape.disks.len(),
                    shape.networks.len(),
                    tresor_core::protocol::MAX_DISKS,
                    tresor_core::protocol::MAX_NICS
                ),
            ));
        }
        let dir = self.config.datastore.join(domain);
        if dir.exists() {
            return Err(fail(
                "exists",
                format!("{} exists already; register it instead", dir.display()),
            ));
        }
        // Every image is probed (no backing file, no external data file) before anything is made.
        let mut infos = Vec::new();
        for (path, _) in &shape.disks {
            infos.push(self.config.tools.probe_image(path)?);
        }
        self.check_space(infos.iter().map(|i| i.virtual_size).sum())?;
        std::fs::create_dir_all(&dir)
            .map_err(|e| fail("io", format!("Cannot create {}: {e}", dir.display())))?;
        let made = (|| -> Result<(), HostError> {
            let mut file = VmFile::new_plain(
                id,
                domain,
                VmConfig {
                    memory_mib: shape.memory_mib.max(tresor_core::protocol::MIN_MEMORY_MIB),
                    vcpus: shape.vcpus.max(1),
                    networks: shape.networks.clone(),
                    ..VmConfig::default()
                },
            );
            for (i, ((path, _), info)) in shape.disks.iter().zip(&infos).enumerate() {
                let name = format!("disk{i}.qcow2");
                self.config
                    .tools
                    .import(path, info, &dir.join(&name), DiskFormat::Qcow2, None)?;
                file.disks.push(DiskEntry {
                    id: format!("d{i}"),
                    file: name,
                    format: DiskFormat::Qcow2,
                    size: info.virtual_size,
                    key_id: None,
                    wrapped_secret: None,
                });
            }
            let boot = dir.join("boot");
            let io = |e: std::io::Error| {
                fail(
                    "io",
                    format!("Cannot copy the boot files of domain {domain}: {e}"),
                )
            };
            if let Some(kernel) = &shape.kernel {
                std::fs::create_dir_all(&boot).map_err(io)?;
                std::fs::copy(kernel, boot.join("vmlinuz")).map_err(io)?;
                if let Some(initrd) = &shape.initrd {
                    std::fs::copy(initrd, boot.join("initrd.img")).map_err(io)?;
                }
                if let Some(cmdline) = &shape.cmdline {
                    std::fs::write(boot.join("cmdline"), cmdline).map_err(io)?;
                }
            }
            file.save(&dir)?;
            Ok(())
        })();
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        self.vms.insert(domain.to_owned(), dir.clone());
        self.save_registry()?;
        // The VM is Tresor's now: the old definition goes, and so do the images it was copied
        // from (left behind, they would be plain copies of disks that are to be encrypted).
        if let Err(e) = self.runtime.release_foreign(domain) {
            tracing::warn!(vm = domain, error = %HostError::from(e), "cannot undefine the adopted domain");
        }
        for (path, _) in &shape.disks {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(vm = domain, path = %path.display(), error = %e, "cannot remove an adopted image");
            }
        }
        tracing::info!(vm = domain, disks = shape.disks.len(), "adopted the domain");
        Ok(Reply::Vm {
            vm: self.report(domain)?,
        })
    }

    /// Writes the cloud-init seed of VM `vm` into the seed folder, which must be on a memory
    /// file system (the seed may hold secrets of the guest's).
    fn write_seed(&self, vm: &str, id: &str, config: &VmConfig) -> Result<PathBuf, HostError> {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let dir = &self.config.seed_dir;
        let io = |e: std::io::Error| {
            fail(
                "io",
                format!(
                    "Cannot write the cloud-init seed of VM {vm} in {}: {e}",
                    dir.display()
                ),
            )
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        // Searchable by libvirt's QEMU user, which is given the file itself.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).map_err(io)?;
        let on_memory = crate::memory::on_memory_fs(dir).unwrap_or(false);
        if !on_memory {
            return Err(fail(
                "hostNotSafe",
                format!(
                    "The seed folder {} of host {} is not on a memory file system, and a cloud-init seed may hold secrets; mount one there (mount -t tmpfs -o mode=0711 tmpfs {}) or set seed_dir",
                    dir.display(),
                    self.config.name,
                    dir.display()
                ),
            ));
        }
        let image =
            crate::seed::nocloud(id, vm, config).map_err(|e| fail("seed", e.to_string()))?;
        let path = dir.join(format!("{vm}.img"));
        let _ = std::fs::remove_file(&path);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        f.write_all(&image).map_err(io)?;
        Ok(path)
    }

    /// The serial console's log of VM `vm` from `offset` on. Both runtimes log the console to
    /// `serial.log` in the VM's run folder, anew at each power-on.
    fn console_read(&mut self, vm: &str, offset: u64) -> Result<Reply, HostError> {
        use std::io::{Read, Seek};
        self.dir(vm)?;
        let running = self.is_running(vm);
        let log = self
            .config
            .state_dir
            .join("run")
            .join(vm)
            .join("serial.log");
        let mut f = match std::fs::File::open(&log) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Reply::Console {
                    offset: 0,
                    next: 0,
                    data: Chunk::default(),
                    running,
                })
            }
            Err(e) => {
                return Err(fail(
                    "io",
                    format!("Cannot read the console log of VM {vm}: {e}"),
                ))
            }
        };
        let io =
            |e: std::io::Error| fail("io", format!("Cannot read the console log of VM {vm}: {e}"));
        let len = f.metadata().map_err(io)?.len();
        // A log shorter than the offset began anew.
        let start = if offset > len { 0 } else { offset };
        f.seek(std::io::SeekFrom::Start(start)).map_err(io)?;
        let mut data = Vec::new();
        f.take(MAX_CONSOLE_READ as u64)
            .read_to_end(&mut data)
            .map_err(io)?;
        Ok(Reply::Console {
            offset: start,
            next: start + data.len() as u64,
            data: Chunk(data),
            running,
        })
    }

    /// Types `data` on the serial console of running VM `vm`.
    fn console_write(&mut self, vm: &str, data: &[u8]) -> Result<Reply, HostError> {
        use std::io::Write;
        self.dir(vm)?;
        if data.len() > MAX_CONSOLE_WRITE {
            return Err(fail(
                "tooLarge",
                format!("Console input comes in pieces of at most {MAX_CONSOLE_WRITE} bytes"),
            ));
        }
        if !self.is_running(vm) {
            return Err(fail(
                "vmNotRunning",
                format!("VM {vm} is powered off; power it on to use its console (tresor vm power-on {vm})"),
            ));
        }
        let socket = self
            .config
            .state_dir
            .join("run")
            .join(vm)
            .join("console.sock");
        let mut s = std::os::unix::net::UnixStream::connect(&socket).map_err(|e| {
            fail(
                "console",
                format!("Cannot reach the serial console of VM {vm}: {e}; is another client attached to it?"),
            )
        })?;
        s.set_write_timeout(Some(std::time::Duration::from_secs(5)))
            .and_then(|()| s.write_all(data))
            .and_then(|()| s.flush())
            .map_err(|e| {
                fail(
                    "console",
                    format!("Cannot type on the console of VM {vm}: {e}"),
                )
            })?;
        // QEMU reads what a client sent before it notices the client left.
        std::thread::sleep(std::time::Duration::from_millis(20));
        Ok(Reply::Done)
    }

    /// Takes a piece of an upload; installs the file when it is the last.
    fn upload(
        &mut self,
        vm: &str,
        kind: UploadKind,
        offset: u64,
        data: &[u8],
        done: bool,
    ) -> Result<Reply, HostError> {
        use std::io::{Seek, Write};
        use std::os::unix::fs::OpenOptionsExt;
        let dir = self.dir(vm)?;
        self.require_off(vm, "change its files")?;
        // One staging file per kind, in the VM's own folder; a new upload (offset 0) replaces
        // what an interrupted one left.
        let staging = dir.join(format!(".upload-{kind}"));
        let end = offset.saturating_add(data.len() as u64);
        if end > kind.max_bytes() {
            let _ = std::fs::remove_file(&staging);
            return Err(fail(
                "tooLarge",
                format!(
                    "The {kind} for VM {vm} is larger than {} bytes, the most Tresor takes",
                    kind.max_bytes()
                ),
            ));
        }
        if kind == UploadKind::Image {
            self.check_space(data.len() as u64)?;
        }
        let io = |e: std::io::Error| fail("io", format!("Cannot write the {kind} of VM {vm}: {e}"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(offset == 0)
            .mode(0o600)
            .open(&staging)
            .map_err(io)?;
        let len = f.metadata().map_err(io)?.len();
        if len != offset {
            return Err(fail(
                "uploadOutOfOrder",
                format!(
                    "The {kind} of VM {vm} has {len} bytes so far, and a piece for offset {offset} came; send the file again from its start"
                ),
            ));
        }
        f.seek(std::io::SeekFrom::Start(offset)).map_err(io)?;
        f.write_all(data).map_err(io)?;
        if !done {
            return Ok(Reply::Done);
        }
        f.sync_all().map_err(io)?;
        drop(f);
        let installed = self.install_upload(vm, &dir, kind, &staging);
        let _ = std::fs::remove_file(&staging);
        installed?;
        Ok(Reply::Vm {
            vm: self.report(vm)?,
        })
    }

    /// Puts an uploaded file in its place: the boot files under `boot/`, an image as the VM's
    /// first disk.
    fn install_upload(
        &mut self,
        vm: &str,
        dir: &Path,
        kind: UploadKind,
        staging: &Path,
    ) -> Result<(), HostError> {
        let boot = dir.join("boot");
        let io =
            |e: std::io::Error| fail("io", format!("Cannot install the {kind} of VM {vm}: {e}"));
        let target = match kind {
            UploadKind::Image => return self.import_image(dir, staging),
            UploadKind::Kernel => boot.join("vmlinuz"),
            UploadKind::Initrd => boot.join("initrd.img"),
            UploadKind::UserData | UploadKind::SshKey => {
                let bytes = std::fs::read(staging).map_err(io)?;
                let text = String::from_utf8(bytes).map_err(|_| {
                    fail(
                        "badFile",
                        format!("The {kind} of VM {vm} is not UTF-8 text"),
                    )
                })?;
                let mut file = VmFile::load(dir)?;
                let mut config = file.config(&self.cache)?;
                if kind == UploadKind::UserData {
                    config.user_data = Some(text);
                } else {
                    let keys: Vec<String> = text
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(str::to_owned)
                        .collect();
                    let looks_like_key = |k: &String| {
                        ["ssh-", "ecdsa-", "sk-"].iter().any(|p| k.starts_with(p))
                            && k.split_whitespace().count() >= 2
                    };
                    if keys.is_empty() || !keys.iter().all(looks_like_key) {
                        return Err(fail(
                            "badFile",
                            format!("The ssh-key of VM {vm} must hold OpenSSH public keys, one a line (ssh-ed25519 AAAA... user@host)"),
                        ));
                    }
                    config.ssh_keys = keys;
                }
                file.set_config(&config, &self.cache)?;
                file.save(dir)?;
                return Ok(());
            }
            UploadKind::Cmdline => {
                let text = std::fs::read(staging).map_err(io)?;
                let ok = std::str::from_utf8(&text)
                    .map(|t| !t.trim().chars().any(char::is_control))
                    .unwrap_or(false);
                if !ok {
                    return Err(fail(
                        "badCmdline",
                        format!("A kernel command line is one line of text of at most {MAX_CMDLINE} characters"),
                    ));
                }
                boot.join("cmdline")
            }
        };
        std::fs::create_dir_all(&boot).map_err(io)?;
        std::fs::rename(staging, &target).map_err(io)?;
        Ok(())
    }

    /// Imports an uploaded image as the VM's first disk: copied into a new qcow2, encrypted
    /// with a new disk key under the VM's KEK when the VM is encrypted.
    fn import_image(&mut self, dir: &Path, staging: &Path) -> Result<(), HostError> {
        let info = self.config.tools.probe_image(staging)?;
        let mut file = VmFile::load(dir)?;
        tresor_core::protocol::check_shape(file.disks.len(), &[info.virtual_size], None)
            .map_err(|e| fail("badShape", e.to_string()))?;
        self.check_space(info.virtual_size)?;
        let tools = self.config.tools.clone();
        // The copy's progress counts bytes of the image.
        progress::begin_bytes(info.virtual_size);
        progress::copy_of(0, info.virtual_size);
        self.new_disk(
            &mut file,
            dir,
            info.virtual_size,
            None,
            |path, format, secret| tools.import(staging, &info, path, format, secret),
        )?;
        // The boot disk first.
        if let Some(entry) = file.disks.pop() {
            file.disks.insert(0, entry);
        }
        file.save(dir)?;
        Ok(())
    }

    fn not_safe(&self) -> HostError {
        fail(
            "hostNotSafe",
            format!(
                "Host {} is not in encryption mode safe ({:?}); enable it first: tresor host enable-encryption {}",
                self.config.name, self.crypto, self.config.name
            ),
        )
    }

    fn create(&mut self, spec: VmSpec) -> Result<Reply, HostError> {
        check_vm_name(&spec.name)?;
        let sizes: Vec<u64> = spec.disks.iter().map(|d| d.size).collect();
        tresor_core::protocol::check_shape(0, &sizes, Some(spec.memory_mib))
            .and_then(|()| tresor_core::protocol::check_vcpus(spec.vcpus))
            .map_err(|e| fail("badShape", e.to_string()))?;
        self.check_space(sizes.iter().sum())?;
        if let Some(id) = &spec.id {
            if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(fail("badId", "A VM id must be 1 to 64 hexadecimal digits"));
            }
        }
        if self.vms.contains_key(&spec.name) {
            return Err(fail(
                "exists",
                format!(
                    "A VM named {} is registered on host {} already",
                    spec.name, self.config.name
                ),
            ));
        }
        if spec.key.is_some() && !hostmode::runs_encrypted_vms(self.crypto) {
            return Err(self.not_safe());
        }
        let dir = self.config.datastore.join(&spec.name);
        if dir.exists() {
            return Err(fail(
                "exists",
                format!("{} exists already; register it instead", dir.display()),
            ));
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| fail("io", format!("Cannot create {}: {e}", dir.display())))?;
        let id = match &spec.id {
            Some(id) => id.clone(),
            None => hex_id()?,
        };
        if spec.networks.len() > tresor_core::protocol::MAX_NICS {
            return Err(fail(
                "badShape",
                format!(
                    "A VM has at most {} network interfaces",
                    tresor_core::protocol::MAX_NICS
                ),
            ));
        }
        let config = VmConfig {
            memory_mib: spec.memory_mib,
            vcpus: spec.vcpus,
            networks: spec.networks.clone(),
            ..VmConfig::default()
        };
        let result = (|| -> Result<(), HostError> {
            let mut file = match &spec.key {
                Some(kek) => VmFile::new_encrypted(&id, &spec.name, &config, kek, &self.cache)?,
                None => VmFile::new_plain(&id, &spec.name, config.clone()),
            };
            file.disk_format = spec.disk_format;
            let tools = self.config.tools.clone();
            for d in &spec.disks {
                self.new_disk(
                    &mut file,
                    &dir,
                    d.size,
                    d.own_key.clone(),
                    |path, format, secret| tools.create(path, format, d.size, secret),
                )?;
            }
            file.save(&dir)?;
            Ok(())
        })();
        if let Err(e) = result {
            // A half-made VM directory is removed; nothing else existed before.
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        self.vms.insert(spec.name.clone(), dir);
        self.save_registry()?;
        Ok(Reply::Vm {
            vm: self.report(&spec.name)?,
        })
    }

    /// Adds a disk to a powered-off VM. The image is made first and `vm.json` names it only
    /// once it exists (written atomically), so an interruption leaves the VM as it was.
    fn add_disk(
        &mut self,
        vm: &str,
        spec: tresor_core::protocol::DiskSpec,
    ) -> Result<Reply, HostError> {
        let dir = self.dir(vm)?;
        self.require_off(vm, "add a disk")?;
        let mut file = VmFile::load(&dir)?;
        tresor_core::protocol::check_shape(file.disks.len(), &[spec.size], None)
            .map_err(|e| fail("badShape", e.to_string()))?;
        self.check_space(spec.size)?;
        if spec.own_key.is_some() && !file.encrypted {
            return Err(fail(
                "plainVm",
                format!("VM {vm} is not encrypted; a disk of its own key needs an encrypted VM (encrypt it first)"),
            ));
        }
        let tools = self.config.tools.clone();
        let size = spec.size;
        self.new_disk(
            &mut file,
            &dir,
            size,
            spec.own_key,
            |path, format, secret| tools.create(path, format, size, secret),
        )?;
        file.save(&dir)?;
        Ok(Reply::Vm {
            vm: self.report(vm)?,
        })
    }

    /// A new disk of `size` bytes at the end of `file` (in the VM's folder `dir`): an entry,
    /// encrypted under the VM's KEK (or `own_key`) when the VM is, and its image made by `make`
    /// (given the path, format and secret). The caller saves `file`; a failure leaves no image.
    fn new_disk(
        &self,
        file: &mut VmFile,
        dir: &Path,
        size: u64,
        own_key: Option<KeyRef>,
        make: impl FnOnce(
            &Path,
            DiskFormat,
            Option<&crate::disk::DiskSecret>,
        ) -> Result<(), crate::disk::DiskError>,
    ) -> Result<(), HostError> {
        let mut i = file.disks.len();
        while file.disks.iter().any(|d| d.id == format!("d{i}")) {
            i += 1;
        }
        let format = file.new_disk_format();
        let name = format!("disk{i}.{}", format.extension());
        let path = dir.join(&name);
        // A leftover of an interrupted addition is not named by vm.json: replace it.
        let _ = std::fs::remove_file(&path);
        let made = if file.encrypted {
            let secret = file.add_encrypted_disk(
                &format!("d{i}"),
                &name,
                format,
                size,
                own_key,
                &self.cache,
            )?;
            make(&path, format, Some(&secret))
        } else {
            file.disks.push(DiskEntry {
                id: format!("d{i}"),
                file: name,
                format: DiskFormat::Qcow2,
                size,
                key_id: None,
                wrapped_secret: None,
            });
            make(&path, DiskFormat::Qcow2, None)
        };
        if let Err(e) = made {
            let _ = std::fs::remove_file(&path);
            return Err(e.into());
        }
        Ok(())
    }

    fn encrypt(
        &mut self,
        vm: &str,
        key: KeyRef,
        disk_format: Option<tresor_core::protocol::DiskLayout>,
    ) -> Result<Reply, HostError> {
        let dir = self.dir(vm)?;
        self.require_off(vm, "encrypt it")?;
        if !hostmode::runs_encrypted_vms(self.crypto) {
            return Err(self.not_safe());
        }
        let mut file = VmFile::load(&dir)?;
        if let Some(format) = disk_format.filter(|f| *f != file.disk_format) {
            // Recorded first: the disks converted from here on, now or after an interruption,
            // take it.
            file.disk_format = format;
            file.save(&dir)?;
        }
        if !file.encrypted {
            // First the config: a home key under the new KEK seals it. The disks follow, each
            // journaled.
            let mut next = VmFile::new_encrypted(
                &file.id,
                &file.name,
                &file.config.clone().unwrap_or_default(),
                &key,
                &self.cache,
            )?;
            next.disks = file.disks.clone();
            next.disk_format = file.disk_format;
            // Recorded before anything changes: an encryption interrupted from here on is
            // finished when the agent holds the VM's key again.
            diskops::write_intent(
                &dir,
                &Intent {
                    operation: Operation::Encrypt,
                    disks: Vec::new(),
                },
            )?;
            next.save(&dir)?;
        }
        let file = VmFile::load(&dir)?;
        let todo: Vec<&DiskEntry> = file
            .disks
            .iter()
            .filter(|d| d.wrapped_secret.is_none())
            .collect();
        let mut copies = Copies::of(&todo);
        for d in todo {
            let change = Change::Encrypt { key: key.clone() };
            let done = copies.run(self, &dir, d, &change);
            if progress::cancelled() {
                // Rolled back: the VM is decrypted again, as it was before.
                progress::clear_cancel();
                self.decrypt(vm)?;
                return Err(cancelled(format!(
                    "The encryption of VM {vm} was cancelled; the disks encrypted so far were decrypted again and the VM is unencrypted as before"
                )));
            }
            done?;
        }
        diskops::clear_intent(&dir)?;
        Ok(Reply::Vm {
            vm: self.report(vm)?,
        })
    }

    fn decrypt(&mut self, vm: &str) -> Result<Reply, HostError> {
        let dir = self.dir(vm)?;
        self.require_off(vm, "decrypt it")?;
        let file = VmFile::load(&dir)?;
        let config = file.config(&self.cache)?;
        diskops::write_intent(
            &dir,
            &Intent {
                operation: Operation::Decrypt,
                disks: Vec::new(),
            },
        )?;
        let todo: Vec<&DiskEntry> = file
            .disks
            .iter()
            .filter(|d| d.wrapped_secret.is_some())
            .collect();
        let mut copies = Copies::of(&todo);
        for d in &todo {
            let done = copies.run(self, &dir, d, &Change::Decrypt);
            if progress::cancelled() {
                progress::clear_cancel();
                self.encrypt_again(vm, &dir, &file)?;
                return Err(cancelled(format!(
                    "The decryption of VM {vm} was cancelled; the disks decrypted so far were encrypted again and the VM is encrypted as before"
                )));
            }
            done?;
        }
        let mut plain = VmFile::new_plain(&file.id, &file.name, config);
        plain.disks = VmFile::load(&dir)?.disks;
        plain.save(&dir)?;
        diskops::clear_intent(&dir)?;
        Ok(Reply::Vm {
            vm: self.report(vm)?,
        })
    }

    fn rekey(
        &mut self,
        vm: &str,
        key: KeyRef,
        deep: bool,
        disk_format: Option<tresor_core::protocol::DiskLayout>,
    ) -> Result<Reply, HostError> {
        let dir = self.dir(vm)?;
        if deep {
            self.require_off(vm, "deep-rekey it")?;
        } else if disk_format.is_some() {
            return Err(fail(
                "badRequest",
                "A disk format takes a deep rekey: a shallow one writes no disk",
            ));
        }
        let mut file = VmFile::load(&dir)?;
        if !file.encrypted {
            return Err(fail(
                "notEncrypted",
                format!("VM {vm} is not encrypted; encrypt it instead"),
            ));
        }
        if let Some(format) = disk_format.filter(|f| *f != file.disk_format) {
            file.disk_format = format;
            file.save(&dir)?;
        }
        file.shallow_rekey(&key, &self.cache)?.save(&dir)?;
        if deep {
            // The new KEK is in place (one atomic step); the disks' new secrets follow, each
            // recorded as done, and an interrupted run is finished when the key is back.
            let file = VmFile::load(&dir)?;
            let disks: Vec<String> = file
                .disks
                .iter()
                .filter(|d| d.wrapped_secret.is_some() && d.key_id.is_none())
                .map(|d| d.id.clone())
                .collect();
            self.deep_rekey_disks(&dir, disks)?;
        }
        Ok(Reply::Vm {
            vm: self.report(vm)?,
        })
    }

    /// Gives the disks `disks` of the VM in `dir` new secrets under its current KEK, recording
    /// after each which are left.
    fn deep_rekey_disks(&mut self, dir: &Path, disks: Vec<String>) -> Result<(), HostError> {
        let file = VmFile::load(dir)?;
        let entries: Vec<&DiskEntry> = disks
            .iter()
            .filter_map(|id| file.disks.iter().find(|d| &d.id == id))
            .collect();
        let mut copies = Copies::of(&entries);
        for done in 0..disks.len() {
            diskops::write_intent(
                dir,
                &Intent {
                    operation: Operation::DeepRekey,
                    disks: disks[done..].to_vec(),
                },
            )?;
            if let Some(d) = entries.iter().find(|d| d.id == disks[done]) {
                copies.next(d)?;
            }
            let result = diskops::run(
                dir,
                &disks[done],
                &Change::DeepRekey { key: None },
                &self.cache,
                &self.config.tools,
                None,
            );
            if progress::cancelled() {
                // Stopped: each disk is whole, under the VM's new KEK, with its new secret
                // (those done) or its old one (the rest).
                progress::clear_cancel();
                diskops::clear_intent(dir)?;
                let finished = done + usize::from(result.is_ok());
                return Err(cancelled(format!(
                    "The deep rekey of VM {} was cancelled after {finished} of {} disks; every disk is under the new key, those not done keep their old secret (a deep rekey again gives them new ones)",
                    file.name,
                    disks.len()
                )));
            }
            result?;
        }
        diskops::clear_intent(dir)?;
        Ok(())
    }

    /// Undoes a cancelled decryption: the disks it decrypted are encrypted again, each under
    /// the key it had (`before` is the VM's file before the decryption), journaled as an
    /// encryption so that a crash in the middle is finished like one.
    fn encrypt_again(&mut self, vm: &str, dir: &Path, before: &VmFile) -> Result<(), HostError> {
        diskops::write_intent(
            dir,
            &Intent {
                operation: Operation::Encrypt,
                disks: Vec::new(),
            },
        )?;
        let vm_key = before.key_id.clone().ok_or_else(|| {
            fail(
                "noKey",
                format!("VM {vm} names no key to encrypt its disks again with"),
            )
        })?;
        let now = VmFile::load(dir)?;
        let plain: Vec<(&DiskEntry, KeyRef)> = now
            .disks
            .iter()
            .filter(|d| d.wrapped_secret.is_none())
            .filter_map(|d| {
                let was = before.disks.iter().find(|b| b.id == d.id)?;
                was.wrapped_secret.as_ref()?;
                Some((d, was.key_id.clone().unwrap_or_else(|| vm_key.clone())))
            })
            .collect();
        let mut copies = Copies::of(&plain.iter().map(|(d, _)| *d).collect::<Vec<_>>());
        for (d, key) in plain {
            copies.run(self, dir, d, &Change::Encrypt { key })?;
        }
        diskops::clear_intent(dir)?;
        Ok(())
    }

    /// Looks at the VMs started under KVM: one whose kernel printed nothing on its serial
    /// console within [`KVM_GRACE`] shows that KVM runs QEMU here but does not boot guests (a
    /// nested KVM can do that). The host then runs VMs under TCG, says so, and starts that VM
    /// again. With `accel = "kvm"` nothing is watched.
    pub fn check_kvm_boots(&mut self) {
        let due: Vec<String> = self
            .kvm_watch
            .iter()
            .filter(|(_, since)| since.elapsed() >= KVM_GRACE)
            .map(|(vm, _)| vm.clone())
            .collect();
        for vm in due {
            self.kvm_watch.remove(&vm);
            let log = self
                .config
                .state_dir
                .join("run")
                .join(&vm)
                .join("serial.log");
            let said = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0) > 0;
            if said || !self.is_running(&vm) {
                continue;
            }
            tracing::warn!(
                vm,
                "the VM's kernel printed nothing on its serial console within {} s under KVM: KVM runs QEMU on this host but does not boot guests (a nested KVM can do that); VMs run under TCG from now on, emulated and slow (set accel = \"kvm\" to keep KVM, or \"tcg\" to say so)",
                KVM_GRACE.as_secs()
            );
            self.runtime.fall_back_to_tcg();
            if let Some(r) = self.running.remove(&vm) {
                r.power_off(Duration::from_millis(0));
            }
            match self.execute(Command::PowerOn { vm: vm.clone() }) {
                Ok(_) => tracing::info!(vm, "the VM started again under TCG"),
                Err(e) => {
                    tracing::error!(vm, error = %e.message, "cannot start the VM again under TCG")
                }
            }
        }
    }

    /// The accelerator VM `vm` runs under, when it runs.
    pub fn accel_of(&self, vm: &str) -> Option<&'static str> {
        self.running.get(vm).map(|g| g.accel())
    }

    /// The VMs that stopped without the server asking since the last call.
    pub fn take_stopped(&mut self) -> Vec<OperationNotice> {
        std::mem::take(&mut self.stopped)
    }

    /// Finishes the VM-wide operations (encrypt, decrypt, deep rekey) that were interrupted,
    /// for each powered-off VM whose key the agent holds now: after a restart of the agent the
    /// key comes back with the server's next push, and the operation is completed then.
    pub fn resume(&mut self) -> Vec<OperationNotice> {
        self.check_kvm_boots();
        let now = std::time::Instant::now();
        let mut notices = Vec::new();
        let pending: Vec<(String, PathBuf)> = self
            .vms
            .iter()
            .filter(|(n, dir)| {
                self.resumed.get(*n).is_none_or(|r| r.next <= now)
                    && dir.join(diskops::INTENT).exists()
            })
            .map(|(n, d)| (n.clone(), d.clone()))
            .collect();
        for (vm, dir) in pending {
            if self.is_running(&vm) {
                continue;
            }
            let intent = match diskops::read_intent(&dir) {
                Ok(Some(i)) => i,
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(vm = %vm, error = %e, "cannot read the record of an interrupted operation");
                    continue;
                }
            };
            let key = match VmFile::load(&dir) {
                // A plain VM: the encryption never changed it, or the decryption was done.
                Ok(f) if !f.encrypted => {
                    if let Err(e) = diskops::clear_intent(&dir) {
                        tracing::error!(vm = %vm, error = %e, "cannot remove the record of an operation");
                    }
                    continue;
                }
                Ok(f) => f.key_id,
                Err(e) => {
                    tracing::error!(vm = %vm, error = %e, "cannot read the VM to finish its operation");
                    continue;
                }
            };
            let Some(key) = key.filter(|k| self.cache.contains(k)) else {
                // Not yet: the server sends the key when it sees the VM needs it.
                continue;
            };
            let result = match intent.operation {
                Operation::Encrypt => self.encrypt(&vm, key, None).map(|_| ()),
                Operation::Decrypt => self.decrypt(&vm).map(|_| ()),
                Operation::DeepRekey => self.deep_rekey_disks(&dir, intent.disks),
            };
            match result {
                Ok(()) => {
                    tracing::warn!(vm = %vm, operation = ?intent.operation, "finished an interrupted operation");
                    if self
                        .resumed
                        .remove(&vm)
                        .is_some_and(|r| r.failures >= RETRIES_BEFORE_ALARM)
                    {
                        notices.push(OperationNotice {
                            vm: vm.clone(),
                            kind: "operation.finished",
                            message: format!(
                                "The interrupted {:?} of VM {vm} is finished",
                                intent.operation
                            ),
                        });
                    }
                }
                Err(e) => {
                    // Transient failures (a busy disk, QEMU's timing of key stretching) pass:
                    // tried again after 1, 2, 4 … 60 s; the server hears of one that keeps
                    // failing.
                    let failures = self.resumed.get(&vm).map_or(0, |r| r.failures) + 1;
                    let wait =
                        Duration::from_secs(1u64 << failures.min(6)).min(Duration::from_secs(60));
                    self.resumed.insert(
                        vm.clone(),
                        Retry {
                            failures,
                            next: std::time::Instant::now() + wait,
                        },
                    );
                    tracing::error!(vm = %vm, operation = ?intent.operation, failures, retry_in_secs = wait.as_secs(), error = %e.message, "cannot finish an interrupted operation yet");
                    if failures >= RETRIES_BEFORE_ALARM {
                        notices.push(OperationNotice {
                            vm: vm.clone(),
                            kind: "operation.failing",
                            message: format!(
                                "The interrupted {:?} of VM {vm} failed {failures} times (the agent keeps trying): {}",
                                intent.operation, e.message
                            ),
                        });
                    }
                }
            }
        }
        notices
    }

    /// Lets the running VMs go on without the agent (it stops; a new one finds them again).
    pub fn detach_running(&mut self) {
        for (name, vm) in self.running.drain() {
            tracing::info!(vm = %name, pid = vm.pid(), "the VM goes on running without the agent");
            vm.detach();
        }
    }

    /// Stops every VM and empties the key cache, as a host restart does.
    pub fn reboot(&mut self) {
        for (_, r) in self.running.drain() {
            r.power_off(Duration::from_millis(0));
        }
        self.cache.clear();
        self.host_key = None;
        let next = hostmode::next(self.crypto, HostCryptoEvent::Restart).unwrap_or(self.crypto);
        if let Err(e) = self.set_crypto(next) {
            tracing::error!(error = %e, "cannot save the encryption mode");
        }
    }

    /// The keys the host holds.
    pub fn keys_held(&self) -> Vec<KeyRef> {
        self.cache.held()
    }

    /// The datastore.
    pub fn datastore(&self) -> &Path {
        &self.config.datastore
    }
}

impl Host {
    /// Refuses disks whose sizes together exceed the datastore's free space (thin images grow to
    /// their size; promising more than there is ends in a full disk under running guests).
    fn check_space(&self, bytes: u64) -> Result<(), HostError> {
        let free = free_bytes(&self.config.datastore).map_err(|e| {
            fail(
                "io",
                format!(
                    "Cannot read the free space of {}: {e}",
                    self.config.datastore.display()
                ),
            )
        })?;
        if bytes > free {
            return Err(fail(
                "noSpace",
                format!(
                    "The disks need {bytes} bytes, and the datastore {} of host {} has {free} free; make them smaller or free space",
                    self.config.datastore.display(),
                    self.config.name
                ),
            ));
        }
        Ok(())
    }
}

/// The bytes free for this user on the file system holding `path`.
fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// A VM name from the server or a file: plain, so that it never leaves the datastore as a path.
fn check_vm_name(name: &str) -> Result<(), HostError> {
    tresor_core::ids::check_name(tresor_core::ids::NameKind::Vm, name)
        .map_err(|e| fail("badName", e.to_string()))
}

fn hex_id() -> Result<String, HostError> {
    let b = crate::vmfile::random(16).map_err(HostError::from)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}
