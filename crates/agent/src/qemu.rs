//! Running VMs in QEMU. Power-on starts `qemu-system-x86_64` paused (KVM when `/dev/kvm` works,
//! TCG otherwise), hands each disk's secret over QMP as a secret object, opens the disk as a
//! block node, attaches it behind a PCIe root port, removes the secret object, and lets the VM
//! run. Secrets never appear on QEMU's command line. Power-off asks the guest (ACPI) and stops
//! QEMU if it does not answer in time.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::disk::DiskFormat;
use crate::vmfile::PowerOnPlan;
use tresor_core::protocol::{DataPath, NetworkSpec};

/// The most disks a VM has root ports for.
pub use tresor_core::protocol::MAX_DISKS;

/// Why QEMU could not run a VM.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error(
        "Cannot start {binary}: {source}; install qemu-system-x86 (scripts/setup-test-deps does)"
    )]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("QEMU for VM {vm} did not open its control socket: {detail}")]
    NoMonitor { vm: String, detail: String },
    #[error("QEMU refused {command} for VM {vm}: {message}")]
    Command {
        vm: String,
        command: String,
        message: String,
    },
    #[error("Lost the connection to QEMU of VM {vm}: {0}", .source)]
    Io { vm: String, source: std::io::Error },
    #[error(
        "VM {vm} needs KVM (accel = \"kvm\") and /dev/kvm cannot be opened; load the kvm \
         module, or set accel = \"auto\" to run under TCG"
    )]
    NoKvm { vm: String },
    #[error(
        "VM {vm} is on libvirt network {network}, which the QEMU runtime does not have; run the \
         host's agent with runtime = \"libvirt\", or give the VM a user or bridge network"
    )]
    Network { vm: String, network: String },
    #[error("VM {vm} has {count} disks; at most {MAX_DISKS} are supported")]
    TooManyDisks { vm: String, count: usize },
    #[error("The fast data path of disk {disk} of VM {vm} did not start: {detail}")]
    FastPath {
        vm: String,
        disk: usize,
        detail: String,
    },
}

/// How to start QEMU.
#[derive(Clone, Debug)]
pub struct QemuConfig {
    pub binary: PathBuf,
    /// Use KVM when `/dev/kvm` can be opened (TCG otherwise, and the log says so).
    pub prefer_kvm: bool,
    /// Refuse to start a VM without KVM (`accel = "kvm"`).
    pub require_kvm: bool,
    /// How long a guest has to shut down after an ACPI power button press.
    pub shutdown_timeout: Duration,
    /// The program that serves raw LUKS disks to the guest over vhost-user (the fast data path,
    /// `tresor agent blk`); without one, QEMU's own `luks` driver opens them.
    pub blk_backend: Option<PathBuf>,
}

impl Default for QemuConfig {
    fn default() -> Self {
        QemuConfig {
            binary: "qemu-system-x86_64".into(),
            prefer_kvm: true,
            require_kvm: false,
            shutdown_timeout: Duration::from_secs(30),
            blk_backend: None,
        }
    }
}

/// The accelerator of VM `vm`: `kvm` or `tcg`. Falling back from KVM is logged.
pub fn choose_accel(config: &QemuConfig, vm: &str) -> Result<&'static str, QemuError> {
    match (config.prefer_kvm || config.require_kvm, kvm_available()) {
        (true, true) => Ok("kvm"),
        (false, _) => Ok("tcg"),
        (true, false) if config.require_kvm => Err(QemuError::NoKvm { vm: vm.into() }),
        (true, false) => {
            tracing::warn!(
                vm,
                "/dev/kvm cannot be opened: the VM runs under TCG, emulated and slow \
                 (load the kvm module and give the agent access to /dev/kvm)"
            );
            Ok("tcg")
        }
    }
}

/// Whether KVM can be used.
pub fn kvm_available() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// A QMP connection.
struct Qmp {
    vm: String,
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Qmp {
    fn connect(vm: &str, socket: &Path, deadline: Instant) -> Result<Qmp, QemuError> {
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(QemuError::NoMonitor {
                        vm: vm.into(),
                        detail: e.to_string(),
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let io = |source| QemuError::Io {
            vm: vm.into(),
            source,
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(io)?;
        let reader = BufReader::new(stream.try_clone().map_err(io)?);
        let mut qmp = Qmp {
            vm: vm.into(),
            writer: stream,
            reader,
        };
        qmp.read_message()?; // the greeting
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    fn read_message(&mut self) -> Result<Value, QemuError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|source| QemuError::Io {
                vm: self.vm.clone(),
                source,
            })?;
        if n == 0 {
            return Err(QemuError::Io {
                vm: self.vm.clone(),
                source: std::io::ErrorKind::UnexpectedEof.into(),
            });
        }
        serde_json::from_str(&line).map_err(|e| QemuError::Io {
            vm: self.vm.clone(),
            source: std::io::Error::other(e),
        })
    }

    /// Runs a command; the arguments may hold a secret, so they are wiped after sending and never
    /// logged.
    fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, QemuError> {
        let message =
            Zeroizing::new(json!({"execute": command, "arguments": arguments}).to_string() + "\n");
        self.writer
            .write_all(message.as_bytes())
            .map_err(|source| QemuError::Io {
                vm: self.vm.clone(),
                source,
            })?;
        loop {
            let reply = self.read_message()?;
            if reply.get("event").is_some() {
                continue;
            }
            if let Some(err) = reply.get("error") {
                return Err(QemuError::Command {
                    vm: self.vm.clone(),
                    command: command.into(),
                    message: err
                        .get("desc")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown error")
                        .into(),
                });
            }
            return Ok(reply.get("return").cloned().unwrap_or(Value::Null));
        }
    }
}

/// A VM running in QEMU.
pub struct RunningVm {
    name: String,
    process: Process,
    qmp: Qmp,
    pub accel: &'static str,
    /// The block node names of the disks, in order.
    pub nodes: Vec<String>,
    /// Left running when this handle is dropped (the agent stops, its VMs go on).
    detached: bool,
    /// The fast data path's backends started for its disks, by disk (each ends when QEMU does).
    backends: Vec<(usize, Child)>,
    /// The path each disk's data takes, as last seen.
    paths: Vec<DataPath>,
}

/// The QEMU process: started by this agent, or found running by it after a restart.
enum Process {
    Child(Child),
    Adopted { pid: u32, qmp_socket: PathBuf },
}

impl std::fmt::Debug for RunningVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningVm")
            .field("name", &self.name)
            .field("pid", &self.pid())
            .finish()
    }
}

impl RunningVm {
    /// Starts VM `name` with the disks of `plan`; `run_dir` holds its control socket and log.
    pub fn start(
        config: &QemuConfig,
        name: &str,
        run_dir: &Path,
        plan: &PowerOnPlan,
    ) -> Result<RunningVm, QemuError> {
        if plan.disks.len() > MAX_DISKS {
            return Err(QemuError::TooManyDisks {
                vm: name.into(),
                count: plan.disks.len(),
            });
        }
        let socket = run_dir.join("qmp.sock");
        let _ = std::fs::remove_file(&socket);
        let accel = choose_accel(config, name)?;
        // The fast data path reads and writes the guest's memory from another process: the
        // memory is a shared memory file then. Only under KVM: TCG keeps translated guest code
        // and drops a translation only when QEMU itself writes the page, so code the guest
        // reads from such a disk into a page that held other code could run stale.
        let raw_luks = plan
            .disks
            .iter()
            .any(|d| d.format == DiskFormat::RawLuks && d.secret.is_some());
        let fast = config.blk_backend.is_some() && raw_luks && accel == "kvm";
        if config.blk_backend.is_some() && raw_luks && !fast {
            tracing::warn!(
                vm = name,
                "the VM runs under TCG, where the fast data path is not safe (TCG does not see \
                 the backend's writes into guest memory): QEMU's own LUKS driver opens its raw \
                 LUKS disks; run it under KVM for the fast path"
            );
        }
        let mut cmd = Command::new(&config.binary);
        let machine = if fast {
            cmd.args([
                "-object",
                &format!(
                    "memory-backend-memfd,id=mem,size={}M,share=on",
                    plan.config.memory_mib
                ),
            ]);
            format!("q35,accel={accel},memory-backend=mem")
        } else {
            format!("q35,accel={accel}")
        };
        cmd.args(["-name", &format!("guest={}", opt(name))])
            .args(["-machine", &machine])
            .args([
                "-m",
                &plan.config.memory_mib.to_string(),
                "-smp",
                &plan.config.vcpus.max(1).to_string(),
            ])
            .args(["-nodefaults", "-display", "none", "-S"])
            // Found again by an agent that restarts.
            .arg("-pidfile")
            .arg(run_dir.join("qemu.pid"))
            .arg("-qmp")
            .arg(format!(
                "unix:{},server=on,wait=off",
                opt(&socket.display().to_string())
            ))
            // A second monitor for operators (what `virsh qemu-monitor-command` gives): the agent
            // keeps the first. The run folder is private to the agent's user.
            .arg("-qmp")
            .arg(format!(
                "unix:{},server=on,wait=off",
                opt(&run_dir.join("monitor.sock").display().to_string())
            ))
            // The serial console: a socket the agent connects to for input, and everything the
            // guest prints in serial.log.
            .arg("-chardev")
            .arg(format!(
                "socket,id=serial0,path={},server=on,wait=off,logfile={},logappend=off",
                opt(&run_dir.join("console.sock").display().to_string()),
                opt(&run_dir.join("serial.log").display().to_string())
            ))
            .args(["-serial", "chardev:serial0"]);
        for i in 0..MAX_DISKS {
            cmd.args([
                "-device",
                &format!("pcie-root-port,id=rp{i},chassis={},slot={i}", i + 1),
            ]);
        }
        // One more for the cloud-init seed (after the network's).
        let seed_port = MAX_DISKS + tresor_core::protocol::MAX_NICS;
        cmd.args([
            "-device",
            &format!(
                "pcie-root-port,id=rpseed,chassis={},slot={seed_port}",
                seed_port + 1
            ),
        ]);
        for (i, net) in plan.config.networks.iter().enumerate() {
            let backend = match net {
                NetworkSpec::User => format!("user,id=net{i}"),
                NetworkSpec::Bridge(br) => format!("bridge,id=net{i},br={}", opt(br)),
                NetworkSpec::Network(n) => {
                    return Err(QemuError::Network {
                        vm: name.into(),
                        network: n.clone(),
                    })
                }
            };
            let port = MAX_DISKS + i;
            cmd.args([
                "-device",
                &format!("pcie-root-port,id=nrp{i},chassis={},slot={port}", port + 1),
            ])
            .args(["-netdev", &backend])
            .args([
                "-device",
                &format!(
                    "virtio-net-pci,netdev=net{i},bus=nrp{i},mac={}",
                    crate::vmfile::mac_address(&plan.id, i)
                ),
            ]);
        }
        if let Some(boot) = &plan.boot {
            // Each a single argument, never parsed by a shell; -append is taken as it is.
            cmd.arg("-kernel").arg(&boot.kernel);
            if let Some(initrd) = &boot.initrd {
                cmd.arg("-initrd").arg(initrd);
            }
            cmd.arg("-append").arg(&boot.cmdline);
        }
        // QEMU's output, and what monitor commands such as `qemu-io` print, go to qemu.log.
        let log = std::fs::File::create(run_dir.join("qemu.log")).ok();
        let out = log
            .as_ref()
            .and_then(|f| f.try_clone().ok())
            .map(Stdio::from)
            .unwrap_or(Stdio::null());
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(log.map(Stdio::from).unwrap_or(Stdio::null()));
        // A process group of its own: a Ctrl-C meant for the agent does not stop the guests.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().map_err(|source| QemuError::Spawn {
            binary: config.binary.display().to_string(),
            source,
        })?;
        let qmp = match Qmp::connect(name, &socket, Instant::now() + Duration::from_secs(20)) {
            Ok(q) => q,
            Err(e) => {
                // Leave no QEMU behind that nobody controls.
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        let mut vm = RunningVm {
            name: name.into(),
            process: Process::Child(child),
            qmp,
            accel,
            nodes: Vec::new(),
            detached: false,
            backends: Vec::new(),
            paths: Vec::new(),
        };
        let fast_path = config.blk_backend.as_deref().filter(|_| fast);
        match vm.attach_disks(plan, run_dir, fast_path) {
            Ok(()) => {}
            Err(e) => {
                vm.kill();
                return Err(e);
            }
        }
        vm.qmp.execute("cont", json!({}))?;
        Ok(vm)
    }

    fn attach_disks(
        &mut self,
        plan: &PowerOnPlan,
        run_dir: &Path,
        fast_path: Option<&Path>,
    ) -> Result<(), QemuError> {
        let queues = plan.config.vcpus.clamp(1, 4) as usize;
        for (i, disk) in plan.disks.iter().enumerate() {
            let node = format!("disk{i}");
            if let (Some(program), Some(secret), DiskFormat::RawLuks) =
                (fast_path, &disk.secret, disk.format)
            {
                match self.attach_fast(i, program, &disk.path, secret, run_dir, queues) {
                    Ok(()) => {
                        self.nodes.push(node);
                        self.paths.push(DataPath::Fast);
                        continue;
                    }
                    Err(e) => tracing::warn!(
                        vm = %self.name,
                        error = %e,
                        "QEMU's own LUKS driver opens the disk instead (slower)"
                    ),
                }
            }
            self.paths.push(DataPath::Qemu);
            let file = json!({"driver": "file", "filename": disk.path.display().to_string()});
            let blockdev = match (&disk.secret, disk.format) {
                (Some(secret), DiskFormat::Qcow2Luks | DiskFormat::RawLuks) => {
                    let id = format!("sec{i}");
                    let passphrase: Zeroizing<String> = secret.passphrase();
                    self.qmp.execute(
                        "object-add",
                        json!({"qom-type": "secret", "id": id, "data": passphrase.as_str()}),
                    )?;
                    let args = if disk.format == DiskFormat::RawLuks {
                        json!({"driver": "luks", "node-name": node, "file": file, "key-secret": id})
                    } else {
                        json!({"driver": "qcow2", "node-name": node, "file": file, "encrypt": {"format": "luks", "key-secret": id}})
                    };
                    let result = self.qmp.execute("blockdev-add", args);
                    // The key is needed only to open the disk; QEMU forgets it now.
                    let _ = self.qmp.execute("object-del", json!({"id": id}));
                    result.map(|_| ())
                }
                _ => self
                    .qmp
                    .execute(
                        "blockdev-add",
                        json!({"driver": "qcow2", "node-name": node, "file": file}),
                    )
                    .map(|_| ()),
            };
            blockdev?;
            self.qmp
                .execute("device_add", json!({"driver": "virtio-blk-pci", "drive": node, "id": format!("vd{i}"), "bus": format!("rp{i}")}))?;
            self.nodes.push(node);
        }
        if let Some(seed) = &plan.seed {
            self.qmp.execute(
                "blockdev-add",
                json!({"driver": "raw", "node-name": "seed", "read-only": true,
                       "file": {"driver": "file", "filename": seed.display().to_string(), "read-only": true}}),
            )?;
            self.qmp.execute(
                "device_add",
                json!({"driver": "virtio-blk-pci", "drive": "seed", "id": "vdseed", "bus": "rpseed"}),
            )?;
        }
        Ok(())
    }

    /// Serves raw LUKS disk `i` at `path` through the fast data path: starts `program agent blk`
    /// on it (its passphrase through a pipe, never in an argument), and attaches its vhost-user
    /// socket behind the disk's root port. Whatever fails is undone, for QEMU's own driver to
    /// open the disk instead.
    fn attach_fast(
        &mut self,
        i: usize,
        program: &Path,
        path: &Path,
        secret: &crate::disk::DiskSecret,
        run_dir: &Path,
        queues: usize,
    ) -> Result<(), QemuError> {
        let fail = |detail: String| QemuError::FastPath {
            vm: self.name.clone(),
            disk: i,
            detail,
        };
        let socket = run_dir.join(format!("vd{i}.sock"));
        let log_path = run_dir.join(format!("vd{i}.log"));
        let _ = std::fs::remove_file(&socket);
        let log = std::fs::File::create(&log_path)
            .map_err(|e| fail(format!("cannot write {}: {e}", log_path.display())))?;
        let mut cmd = Command::new(program);
        cmd.args(["agent", "blk", "--queues", &queues.to_string(), "--disk"])
            .arg(path)
            .arg("--socket")
            .arg(&socket)
            .args(["--serial", &format!("tresor-vd{i}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log);
        // Like QEMU, not stopped by a Ctrl-C meant for the agent.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd
            .spawn()
            .map_err(|e| fail(format!("cannot run {}: {e}", program.display())))?;
        let sent = child.stdin.take().map(|mut stdin| {
            let passphrase = secret.passphrase();
            stdin.write_all(passphrase.as_bytes())
        });
        let stop = |mut child: Child| {
            let _ = child.kill();
            let _ = child.wait();
        };
        if let Some(Err(e)) = sent {
            stop(child);
            return Err(fail(format!("cannot pass the disk's secret: {e}")));
        }
        // It listens once it has unsealed the disk's key.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            let ended = child.try_wait().ok().flatten();
            if ended.is_some() || Instant::now() >= deadline {
                stop(child);
                let said = std::fs::read_to_string(&log_path).unwrap_or_default();
                let said = said.lines().rev().find(|l| !l.trim().is_empty());
                return Err(fail(match (ended, said) {
                    (_, Some(line)) => line.trim().to_owned(),
                    (Some(status), None) => format!("it ended ({status})"),
                    (None, None) => "it did not listen within 30 s".into(),
                }));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let chardev = format!("vhost{i}");
        let attached = self
            .qmp
            .execute(
                "chardev-add",
                json!({"id": chardev, "backend": {"type": "socket", "data": {
                    "addr": {"type": "unix", "data": {"path": socket.display().to_string()}},
                    "server": false}}}),
            )
            .and_then(|_| {
                let added = self.qmp.execute(
                    "device_add",
                    json!({"driver": "vhost-user-blk-pci", "chardev": chardev,
                           "num-queues": queues, "id": format!("vd{i}"), "bus": format!("rp{i}")}),
                );
                if added.is_err() {
                    let _ = self.qmp.execute("chardev-remove", json!({"id": chardev}));
                }
                added
            });
        match attached {
            Ok(_) => {
                let _ = std::fs::remove_file(&socket);
                self.backends.push((i, child));
                Ok(())
            }
            Err(e) => {
                stop(child);
                let _ = std::fs::remove_file(&socket);
                Err(fail(e.to_string()))
            }
        }
    }

    /// Waits a little for the fast data path's backends to end after QEMU, then stops those
    /// that did not.
    fn reap_backends(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        for (_, child) in &mut self.backends {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        self.backends.clear();
    }

    /// Finds VM `name` still running from an earlier run of the agent: the QEMU whose process
    /// id `run_dir` names, whose command line names this folder's control socket, and which
    /// answers on it. Its disks are `disks` (they keep the node names they were given).
    pub fn adopt(name: &str, run_dir: &Path, disks: usize) -> Option<RunningVm> {
        let pid: u32 = std::fs::read_to_string(run_dir.join("qemu.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let qmp_socket = run_dir.join("qmp.sock");
        if !adopted_alive(pid, &qmp_socket) {
            return None;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let accel = if String::from_utf8_lossy(&cmdline).contains("accel=kvm") {
            "kvm"
        } else {
            "tcg"
        };
        let mut qmp =
            Qmp::connect(name, &qmp_socket, Instant::now() + Duration::from_secs(2)).ok()?;
        // Which disks the fast data path serves: those attached as vhost-user devices.
        let paths = (0..disks)
            .map(|i| {
                let kind = qmp.execute(
                    "qom-get",
                    json!({"path": format!("/machine/peripheral/vd{i}"), "property": "type"}),
                );
                if kind.is_ok_and(|t| t == "vhost-user-blk-pci") {
                    DataPath::Fast
                } else {
                    DataPath::Qemu
                }
            })
            .collect();
        Some(RunningVm {
            name: name.into(),
            process: Process::Adopted { pid, qmp_socket },
            qmp,
            accel,
            nodes: (0..disks).map(|i| format!("disk{i}")).collect(),
            detached: false,
            backends: Vec::new(),
            paths,
        })
    }

    /// Leaves QEMU running when this handle goes (the agent stops; the guest does not).
    pub fn detach(mut self) {
        self.detached = true;
    }

    /// The QEMU process id.
    pub fn pid(&self) -> u32 {
        match &self.process {
            Process::Child(c) => c.id(),
            Process::Adopted { pid, .. } => *pid,
        }
    }

    /// Whether QEMU still runs (a VM that died is noticed here).
    pub fn is_running(&mut self) -> bool {
        match &mut self.process {
            Process::Child(c) => matches!(c.try_wait(), Ok(None)),
            Process::Adopted { pid, qmp_socket } => adopted_alive(*pid, qmp_socket),
        }
    }

    /// The path each disk's data takes: a disk whose backend ended while QEMU runs is `Lost`
    /// (said once in the log, with what to do).
    pub fn data_paths(&mut self) -> Vec<DataPath> {
        for (disk, child) in &mut self.backends {
            let Ok(Some(status)) = child.try_wait() else {
                continue;
            };
            if let Some(path) = self.paths.get_mut(*disk).filter(|p| **p != DataPath::Lost) {
                *path = DataPath::Lost;
                tracing::error!(
                    vm = %self.name,
                    disk = *disk,
                    %status,
                    "the fast data path of this disk ended while the VM runs: the guest's I/O to \
                     it waits (every write it was told was done is in the file); power the VM \
                     off and on"
                );
            }
        }
        self.paths.clone()
    }

    /// Runs a monitor (HMP) command, for example `qemu-io disk0 "read 0 512"` in tests.
    pub fn human_command(&mut self, line: &str) -> Result<String, QemuError> {
        let out = self
            .qmp
            .execute("human-monitor-command", json!({"command-line": line}))?;
        Ok(out.as_str().unwrap_or_default().to_owned())
    }

    /// Asks the guest to shut down (ACPI), then stops QEMU if it has not within the timeout.
    /// Returns whether the guest shut down by itself.
    pub fn power_off(mut self, timeout: Duration) -> bool {
        let _ = self.qmp.execute("system_powerdown", json!({}));
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.is_running() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.qmp.execute("quit", json!({}));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && self.is_running() {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }

    fn kill(&mut self) {
        self.kill_qemu();
        self.reap_backends();
    }

    fn kill_qemu(&mut self) {
        match &mut self.process {
            Process::Child(c) => {
                let _ = c.kill();
                let _ = c.wait();
            }
            Process::Adopted { pid, qmp_socket } => {
                if adopted_alive(*pid, qmp_socket) {
                    if let Some(p) = rustix::process::Pid::from_raw(*pid as i32) {
                        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                    }
                }
            }
        }
    }
}

/// Whether process `pid` runs and is the QEMU of this control socket (not another process that
/// got its id later).
fn adopted_alive(pid: u32, qmp_socket: &Path) -> bool {
    let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false);
    alive
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(&qmp_socket.display().to_string()))
            .unwrap_or(false)
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        if self.is_running() {
            self.kill_qemu();
        }
        self.reap_backends();
    }
}

/// A value inside a QEMU option string: a comma is written twice, so that it cannot end the
/// value and start another option.
fn opt(value: &str) -> String {
    value.replace(',', ",,")
}

/// The QEMU runtime: QEMU processes the agent starts itself.
#[derive(Clone, Debug, Default)]
pub struct QemuRuntime {
    pub config: QemuConfig,
}

impl crate::runtime::Runtime for QemuRuntime {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn start(
        &self,
        name: &str,
        run_dir: &Path,
        plan: &PowerOnPlan,
    ) -> Result<Box<dyn crate::runtime::Guest>, crate::runtime::RuntimeError> {
        Ok(Box::new(RunningVm::start(
            &self.config,
            name,
            run_dir,
            plan,
        )?))
    }

    fn find(
        &self,
        name: &str,
        run_dir: &Path,
        disks: usize,
    ) -> Option<Box<dyn crate::runtime::Guest>> {
        RunningVm::adopt(name, run_dir, disks)
            .map(|vm| Box::new(vm) as Box<dyn crate::runtime::Guest>)
    }

    fn shutdown_timeout(&self) -> Duration {
        self.config.shutdown_timeout
    }

    fn fall_back_to_tcg(&mut self) {
        self.config.prefer_kvm = false;
        self.config.require_kvm = false;
    }
}

impl crate::runtime::Guest for RunningVm {
    fn pid(&self) -> u32 {
        RunningVm::pid(self)
    }

    fn accel(&self) -> &'static str {
        self.accel
    }

    fn is_running(&mut self) -> bool {
        RunningVm::is_running(self)
    }

    fn power_off(self: Box<Self>, timeout: Duration) -> bool {
        RunningVm::power_off(*self, timeout)
    }

    fn detach(self: Box<Self>) {
        RunningVm::detach(*self)
    }

    fn data_paths(&mut self) -> Vec<DataPath> {
        RunningVm::data_paths(self)
    }
}
