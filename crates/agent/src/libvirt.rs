//! Running VMs as libvirt domains, for KVM hosts that run libvirtd (`runtime = "libvirt"`).
//!
//! The agent speaks to libvirt through `virsh`, libvirt's own client, so that the `tresor`
//! binary links no libvirt library and runs where libvirt is not installed. Power-on defines, for
//! each encrypted disk, a libvirt secret `ephemeral='yes' private='yes'` (libvirt never writes it
//! and refuses to read it back), hands it its value on `virsh`'s standard input (never argv, never
//! a file), defines the domain from the VM's Tresor config (domain name = VM name, marked as
//! Tresor's in its metadata), starts it, and undefines the secrets again: libvirt has passed them
//! to QEMU by then, encrypted with the domain's master key. A libvirtd restart thus loses nothing
//! Tresor relies on; running domains run on.
//!
//! While a domain runs, libvirt keeps that master key in a file under its state folder
//! (`/var/lib/libvirt/qemu/domain-N-NAME/master-key.aes`). A host keeps keys off disk only if that
//! folder is on a memory file system: [`LibvirtRuntime::keeps_keys_off_disk`] checks it, and the
//! host refuses encryption mode when it is not.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use quick_xml::escape::escape;
use zeroize::Zeroizing;

use crate::disk::DiskFormat;
use crate::qemu::{choose_accel, QemuConfig};
use crate::vmfile::PowerOnPlan;
use tresor_core::protocol::NetworkSpec;

/// The XML namespace of Tresor's mark in a domain's metadata.
pub const METADATA_NS: &str = "https://tresor.dev/xmlns/libvirt/vm/1";

/// How to reach libvirt.
#[derive(Clone, Debug)]
pub struct LibvirtConfig {
    /// The connection URI.
    pub uri: String,
    /// libvirt's client.
    pub virsh: PathBuf,
    /// Where libvirt keeps the private folder (and master key) of each running domain.
    pub domain_state_dir: PathBuf,
    /// Where libvirt writes the process id of each running domain.
    pub pid_dir: PathBuf,
}

impl Default for LibvirtConfig {
    fn default() -> Self {
        LibvirtConfig {
            uri: "qemu:///system".into(),
            virsh: "virsh".into(),
            domain_state_dir: "/var/lib/libvirt/qemu".into(),
            pid_dir: "/run/libvirt/qemu".into(),
        }
    }
}

/// Why libvirt could not run a VM.
#[derive(Debug, thiserror::Error)]
pub enum LibvirtError {
    #[error("Cannot run {binary}: {source}; install libvirt-clients, or set runtime = \"qemu\"")]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("libvirt ({uri}) refused {command} for VM {vm}: {message}")]
    Command {
        uri: String,
        vm: String,
        command: &'static str,
        message: String,
    },
    #[error(
        "A libvirt domain named {vm} exists and is not this VM's (it is not Tresor's, or another \
         Tresor VM's of that name); rename or remove it (virsh domrename, virsh undefine), or \
         give this VM another name"
    )]
    ForeignDomain { vm: String },
    #[error(
        "libvirt's QEMU user cannot reach {path}: the folder {folder} is not searchable by \
         others; run chmod o+x {folder}, or keep the datastore in a folder libvirt can reach"
    )]
    Unreachable { path: String, folder: String },
    #[error("VM {vm} has {count} disks; at most {max} are supported")]
    TooManyDisks {
        vm: String,
        count: usize,
        max: usize,
    },
}

/// The libvirt runtime.
#[derive(Clone, Debug)]
pub struct LibvirtRuntime {
    pub libvirt: LibvirtConfig,
    /// Whether to use KVM, and how long a guest has to shut down.
    pub qemu: QemuConfig,
}

/// The states `virsh domstate` gives a domain whose QEMU runs.
const RUNNING: [&str; 4] = ["running", "paused", "in shutdown", "pmsuspended"];

impl LibvirtRuntime {
    fn virsh(
        &self,
        vm: &str,
        command: &'static str,
        args: &[&str],
    ) -> Result<String, LibvirtError> {
        self.virsh_with_input(vm, command, args, None)
    }

    /// Runs `virsh COMMAND ARGS`, writing `input` to its standard input (a secret travels only
    /// this way: never argv, never a file).
    fn virsh_with_input(
        &self,
        vm: &str,
        command: &'static str,
        args: &[&str],
        input: Option<&[u8]>,
    ) -> Result<String, LibvirtError> {
        let mut cmd = Command::new(&self.libvirt.virsh);
        cmd.args(["-q", "-c", &self.libvirt.uri, command])
            .args(args)
            .env("LC_ALL", "C")
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| LibvirtError::Spawn {
            binary: self.libvirt.virsh.display().to_string(),
            source,
        })?;
        if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
            // A failed write shows as virsh's own error below.
            let _ = stdin.write_all(bytes);
        }
        let out = child
            .wait_with_output()
            .map_err(|source| LibvirtError::Spawn {
                binary: self.libvirt.virsh.display().to_string(),
                source,
            })?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let message = stderr
            .lines()
            .map(|l| l.trim_start_matches("error: ").trim())
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        Err(LibvirtError::Command {
            uri: self.libvirt.uri.clone(),
            vm: vm.into(),
            command,
            message: if message.is_empty() {
                format!("virsh ended with {}", out.status)
            } else {
                message
            },
        })
    }

    /// The state of domain `name` (`running`, `shut off`, ...), or None when there is none.
    fn domain_state(&self, name: &str) -> Option<String> {
        self.virsh(name, "domstate", &["--domain", name])
            .ok()
            .map(|s| s.trim().to_owned())
    }

    /// Whether domain `name` is defined and marked as the domain of Tresor VM `id`; an error if
    /// it is defined and is someone else's (not Tresor's, or another Tresor VM's of the same name,
    /// such as one of another agent on this libvirt).
    fn ours(&self, name: &str, id: &str) -> Result<bool, LibvirtError> {
        match self.virsh(name, "dumpxml", &["--domain", name, "--inactive"]) {
            Ok(xml) if xml.contains(METADATA_NS) && xml.contains(&format!("id=\"{id}\"")) => {
                Ok(true)
            }
            Ok(xml) if xml.contains(METADATA_NS) && xml.contains(&format!("id='{id}'")) => Ok(true),
            Ok(_) => Err(LibvirtError::ForeignDomain { vm: name.into() }),
            Err(_) if self.domain_state(name).is_none() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Why keys would reach disk with this runtime, and what to do; None when they do not.
    pub fn keeps_keys_off_disk(&self) -> Result<(), String> {
        let dir = &self.libvirt.domain_state_dir;
        match crate::memory::on_memory_fs(dir) {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!(
                "libvirt keeps each running domain's master key in {dir}, which is not on a memory \
                 file system; stop libvirtd, mount one there (mount -t tmpfs -o mode=0750 tmpfs {dir}; \
                 chown libvirt-qemu:libvirt-qemu {dir}), start libvirtd and enable encryption again",
                dir = dir.display()
            )),
            Err(e) => Err(format!(
                "Cannot check where libvirt keeps the domains' master keys ({}): {e}",
                dir.display()
            )),
        }
    }

    fn domain_xml(
        &self,
        name: &str,
        uuid: Option<&str>,
        accel: &str,
        run_dir: &Path,
        plan: &PowerOnPlan,
        secrets: &[Option<String>],
    ) -> String {
        let kvm = accel == "kvm";
        let mut x = String::new();
        x.push_str(&format!(
            "<domain type='{}'>\n  <name>{}</name>\n",
            if kvm { "kvm" } else { "qemu" },
            escape(name)
        ));
        if let Some(uuid) = uuid.filter(|u| u.chars().all(|c| c.is_ascii_hexdigit() || c == '-')) {
            x.push_str(&format!("  <uuid>{uuid}</uuid>\n"));
        }
        x.push_str(&format!(
            "  <metadata>\n    <tresor:vm xmlns:tresor='{METADATA_NS}' id='{}'/>\n  </metadata>\n",
            escape(&plan.id)
        ));
        x.push_str(&format!(
            "  <memory unit='MiB'>{}</memory>\n  <vcpu>{}</vcpu>\n",
            plan.config.memory_mib,
            plan.config.vcpus.max(1)
        ));
        x.push_str("  <os>\n    <type arch='x86_64' machine='q35'>hvm</type>\n");
        if let Some(boot) = &plan.boot {
            x.push_str(&format!(
                "    <kernel>{}</kernel>\n",
                escape(boot.kernel.display().to_string())
            ));
            if let Some(initrd) = &boot.initrd {
                x.push_str(&format!(
                    "    <initrd>{}</initrd>\n",
                    escape(initrd.display().to_string())
                ));
            }
            x.push_str(&format!(
                "    <cmdline>{}</cmdline>\n",
                escape(&boot.cmdline)
            ));
        }
        x.push_str("  </os>\n  <features>\n    <acpi/>\n  </features>\n");
        if kvm {
            x.push_str("  <cpu mode='host-passthrough'/>\n");
        }
        x.push_str(
            "  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n  <on_crash>destroy</on_crash>\n  <devices>\n",
        );
        for (i, (disk, secret)) in plan.disks.iter().zip(secrets).enumerate() {
            let driver = match disk.format {
                DiskFormat::RawLuks => "raw",
                DiskFormat::Qcow2Luks | DiskFormat::Qcow2 => "qcow2",
            };
            x.push_str(&format!(
                "    <disk type='file' device='disk'>\n      <driver name='qemu' type='{driver}'/>\n      <source file='{}'>\n",
                escape(disk.path.display().to_string())
            ));
            if let Some(uuid) = secret {
                x.push_str(&format!(
                    "        <encryption format='luks'>\n          <secret type='passphrase' uuid='{uuid}'/>\n        </encryption>\n"
                ));
            }
            x.push_str(&format!(
                "      </source>\n      <target dev='{}' bus='virtio'/>\n{}    </disk>\n",
                disk_target(i),
                // The first disk boots, unless a kernel is booted directly.
                if i == 0 && plan.boot.is_none() {
                    "      <boot order='1'/>\n"
                } else {
                    ""
                }
            ));
        }
        if let Some(seed) = &plan.seed {
            x.push_str(&format!(
                "    <disk type='file' device='disk'>\n      <driver name='qemu' type='raw'/>\n      <source file='{}'/>\n      <target dev='{}' bus='virtio'/>\n      <readonly/>\n    </disk>\n",
                escape(seed.display().to_string()),
                disk_target(plan.disks.len())
            ));
        }
        for (i, net) in plan.config.networks.iter().enumerate() {
            let (kind, source) = match net {
                NetworkSpec::User => ("user", String::new()),
                NetworkSpec::Network(n) => (
                    "network",
                    format!("<source network='{}'/>", escape(n.as_str())),
                ),
                NetworkSpec::Bridge(b) => (
                    "bridge",
                    format!("<source bridge='{}'/>", escape(b.as_str())),
                ),
            };
            x.push_str(&format!(
                "    <interface type='{kind}'>\n      <mac address='{}'/>\n      {source}\n      <model type='virtio'/>\n    </interface>\n",
                crate::vmfile::mac_address(&plan.id, i)
            ));
        }
        let socket = run_dir.join("console.sock");
        let log = run_dir.join("serial.log");
        x.push_str(&format!(
            "    <serial type='unix'>\n      <source mode='bind' path='{}'/>\n      <log file='{}' append='off'/>\n      <target port='0'/>\n    </serial>\n",
            escape(socket.display().to_string()),
            escape(log.display().to_string())
        ));
        x.push_str("    <memballoon model='none'/>\n  </devices>\n</domain>\n");
        x
    }

    /// Defines an ephemeral, private secret holding `passphrase`; its UUID.
    fn define_secret(
        &self,
        vm: &str,
        disk: usize,
        passphrase: &[u8],
    ) -> Result<String, LibvirtError> {
        let uuid = new_uuid();
        let xml = format!(
            "<secret ephemeral='yes' private='yes'>\n  <uuid>{uuid}</uuid>\n  <description>Tresor: VM {}, disk {disk}</description>\n</secret>\n",
            escape(vm)
        );
        self.virsh_with_input(
            vm,
            "secret-define",
            &["--file", "/dev/stdin"],
            Some(xml.as_bytes()),
        )?;
        if let Err(e) = self.virsh_with_input(
            vm,
            "secret-set-value",
            &["--secret", &uuid, "--file", "/dev/stdin", "--plain"],
            Some(passphrase),
        ) {
            let _ = self.virsh(vm, "secret-undefine", &["--secret", &uuid]);
            return Err(e);
        }
        Ok(uuid)
    }

    /// Removes the domain of VM `name` (id `id`) when it is that VM's and not running; leaves a
    /// domain of that name that is someone else's.
    pub fn undefine(&self, name: &str, id: &str) -> Result<(), LibvirtError> {
        if self.ours(name, id).unwrap_or(false) {
            self.virsh(name, "undefine", &["--domain", name])?;
        }
        Ok(())
    }
}

/// What an existing libvirt domain is, as far as Tresor takes it over.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DomainShape {
    pub name: String,
    pub memory_mib: u32,
    pub vcpus: u32,
    /// Its disk images in order, and whether each is raw (else qcow2).
    pub disks: Vec<(PathBuf, bool)>,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub networks: Vec<NetworkSpec>,
    /// Whether it carries Tresor's mark already.
    pub tresors: bool,
}

/// Reads a domain's XML (`virsh dumpxml --inactive`) for adoption; refuses what Tresor cannot
/// carry over faithfully: disks that are not image files (block devices, network disks), images
/// of another format, encrypted images.
pub fn parse_domain(xml: &str) -> Result<DomainShape, String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut path: Vec<String> = Vec::new();
    let mut shape = DomainShape::default();
    let mut memory_unit = "KiB".to_owned();
    // The disk or interface being read: its attributes so far.
    let mut disk: Option<(String, String, Option<String>, Option<String>)> = None; // type, device, format, file
    let mut nic: Option<(String, Option<String>)> = None;
    let mut text = String::new();
    let attr = |e: &quick_xml::events::BytesStart, name: &str| -> Option<String> {
        e.attributes()
            .flatten()
            .find(|a| a.key.into_inner() == name)
            .and_then(|a| {
                a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                    .ok()
                    .map(|v| v.into_owned())
            })
    };
    loop {
        let event = reader
            .read_event()
            .map_err(|e| format!("its XML cannot be read: {e}"))?;
        let (start, empty) = match &event {
            Event::Start(e) => (Some(e.clone()), false),
            Event::Empty(e) => (Some(e.clone()), true),
            _ => (None, false),
        };
        if let Some(e) = start {
            let name = e.local_name().into_inner().to_owned();
            let at = path.join("/");
            match (at.as_str(), name.as_str()) {
                ("domain", "memory") => memory_unit = attr(&e, "unit").unwrap_or("KiB".into()),
                ("domain/metadata", _)
                    if e.attributes()
                        .flatten()
                        .any(|a| a.value.as_ref() == METADATA_NS) =>
                {
                    shape.tresors = true;
                }
                ("domain/devices", "disk") => {
                    disk = Some((
                        attr(&e, "type").unwrap_or_default(),
                        attr(&e, "device").unwrap_or("disk".into()),
                        None,
                        None,
                    ))
                }
                ("domain/devices/disk", "driver") => {
                    if let Some(d) = &mut disk {
                        d.2 = attr(&e, "type");
                    }
                }
                ("domain/devices/disk", "source") => {
                    if let Some(d) = &mut disk {
                        d.3 = attr(&e, "file");
                    }
                }
                ("domain/devices/disk/source", "encryption") => {
                    return Err("one of its disks is encrypted by libvirt; decrypt it first".into())
                }
                ("domain/devices", "interface") => {
                    nic = Some((attr(&e, "type").unwrap_or_default(), None))
                }
                ("domain/devices/interface", "source") => {
                    if let Some(n) = &mut nic {
                        n.1 = attr(&e, "network").or_else(|| attr(&e, "bridge"));
                    }
                }
                _ => {}
            }
            text.clear();
            if !empty {
                path.push(name);
            } else {
                finish(&path, &name, &mut disk, &mut nic, &mut shape)?;
            }
            continue;
        }
        match event {
            Event::Text(t) => text.push_str(&t.xml_content(quick_xml::XmlVersion::Implicit1_0)),
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(c)) => Some(c),
                    _ => match r.into_inner().as_ref() {
                        "amp" => Some('&'),
                        "lt" => Some('<'),
                        "gt" => Some('>'),
                        "apos" => Some('\''),
                        "quot" => Some('"'),
                        _ => None,
                    },
                };
                text.push(resolved.ok_or("its XML has an unknown entity")?);
            }
            Event::End(_) => {
                let value = std::mem::take(&mut text).trim().to_owned();
                match path.join("/").as_str() {
                    "domain/name" => shape.name = value,
                    "domain/memory" => {
                        let n: u64 = value
                            .parse()
                            .map_err(|_| format!("its memory {value:?} is not a number"))?;
                        let mib = match memory_unit.as_str() {
                            "b" | "bytes" => n >> 20,
                            "KiB" | "k" => n >> 10,
                            "MiB" | "M" => n,
                            "GiB" | "G" => n << 10,
                            other => {
                                return Err(format!(
                                    "its memory is in {other}, which Tresor does not read"
                                ))
                            }
                        };
                        shape.memory_mib =
                            u32::try_from(mib).map_err(|_| "its memory is too large".to_owned())?;
                    }
                    "domain/vcpu" => {
                        shape.vcpus = value
                            .parse()
                            .map_err(|_| format!("its vcpu {value:?} is not a number"))?
                    }
                    "domain/os/kernel" => shape.kernel = Some(value.into()),
                    "domain/os/initrd" => shape.initrd = Some(value.into()),
                    "domain/os/cmdline" => shape.cmdline = Some(value),
                    _ => {}
                }
                if let Some(name) = path.pop() {
                    finish(&path, &name, &mut disk, &mut nic, &mut shape)?;
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if shape.name.is_empty() {
        return Err("it has no name".into());
    }
    Ok(shape)
}

/// An element that ends: a disk or an interface is complete.
fn finish(
    parent: &[String],
    name: &str,
    disk: &mut Option<(String, String, Option<String>, Option<String>)>,
    nic: &mut Option<(String, Option<String>)>,
    shape: &mut DomainShape,
) -> Result<(), String> {
    if parent.join("/") != "domain/devices" {
        return Ok(());
    }
    match name {
        "disk" => {
            let Some((kind, device, format, file)) = disk.take() else {
                return Ok(());
            };
            if device != "disk" {
                return Ok(()); // a CD-ROM or floppy stays behind
            }
            if kind != "file" {
                return Err(format!(
                    "one of its disks is a {kind} disk; Tresor takes over disks that are image files"
                ));
            }
            let file = file.ok_or("one of its disks names no file")?;
            let raw = match format.as_deref().unwrap_or("raw") {
                "raw" => true,
                "qcow2" => false,
                other => {
                    return Err(format!(
                        "its disk {file} is {other}; convert it to qcow2 or raw first"
                    ))
                }
            };
            shape.disks.push((file.into(), raw));
        }
        "interface" => {
            let Some((kind, source)) = nic.take() else {
                return Ok(());
            };
            let spec = match (kind.as_str(), source) {
                ("user", _) => "user".to_owned(),
                ("network", Some(n)) => format!("network:{n}"),
                ("bridge", Some(b)) => format!("bridge:{b}"),
                (other, _) => {
                    return Err(format!(
                    "it has a network interface of type {other}, which Tresor does not carry over"
                ))
                }
            };
            shape.networks.push(
                spec.parse()
                    .map_err(|e: tresor_core::protocol::BadNetwork| e.to_string())?,
            );
        }
        _ => {}
    }
    Ok(())
}

/// The device name of disk `i`: vda, vdb, ..., vdz, vdaa, ...
fn disk_target(i: usize) -> String {
    let letters = b"abcdefghijklmnopqrstuvwxyz";
    if i < 26 {
        format!("vd{}", letters[i] as char)
    } else {
        format!(
            "vd{}{}",
            letters[i / 26 - 1] as char,
            letters[i % 26] as char
        )
    }
}

/// A random (version 4) UUID.
fn new_uuid() -> String {
    let mut b = [0u8; 16];
    // The system's random source does not fail on Linux; a zero UUID would be refused by libvirt.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Every folder above `path` must be searchable by libvirt's QEMU user, which is not root.
fn check_reachable(path: &Path) -> Result<(), LibvirtError> {
    use std::os::unix::fs::PermissionsExt;
    let mut folder = path.parent();
    while let Some(f) = folder {
        if let Ok(meta) = std::fs::metadata(f) {
            if meta.permissions().mode() & 0o001 == 0 {
                return Err(LibvirtError::Unreachable {
                    path: path.display().to_string(),
                    folder: f.display().to_string(),
                });
            }
        }
        folder = f.parent();
    }
    Ok(())
}

/// Secrets defined for one start, undefined when it is over, whatever happened.
struct Secrets<'a> {
    runtime: &'a LibvirtRuntime,
    vm: &'a str,
    uuids: Vec<String>,
}

impl Drop for Secrets<'_> {
    fn drop(&mut self) {
        for uuid in &self.uuids {
            if let Err(e) = self
                .runtime
                .virsh(self.vm, "secret-undefine", &["--secret", uuid])
            {
                tracing::warn!(vm = self.vm, error = %e, "cannot undefine a disk secret in libvirt");
            }
        }
    }
}

impl crate::runtime::Runtime for LibvirtRuntime {
    fn name(&self) -> &'static str {
        "libvirt"
    }

    fn start(
        &self,
        name: &str,
        run_dir: &Path,
        plan: &PowerOnPlan,
    ) -> Result<Box<dyn crate::runtime::Guest>, crate::runtime::RuntimeError> {
        let max = tresor_core::protocol::MAX_DISKS;
        if plan.disks.len() > max {
            return Err(LibvirtError::TooManyDisks {
                vm: name.into(),
                count: plan.disks.len(),
                max,
            }
            .into());
        }
        for d in &plan.disks {
            check_reachable(&d.path)?;
        }
        if let Some(boot) = &plan.boot {
            check_reachable(&boot.kernel)?;
        }
        // Refuse before anything is defined: a domain of this name that is not Tresor's. One
        // that is keeps its UUID (libvirt redefines a domain only under the same one).
        let uuid = if self.ours(name, &plan.id)? {
            Some(
                self.virsh(name, "domuuid", &["--domain", name])?
                    .trim()
                    .to_owned(),
            )
        } else {
            None
        };
        let mut secrets = Secrets {
            runtime: self,
            vm: name,
            uuids: Vec::new(),
        };
        let mut refs = Vec::new();
        for (i, disk) in plan.disks.iter().enumerate() {
            match &disk.secret {
                Some(secret) if disk.format != DiskFormat::Qcow2 => {
                    let passphrase: Zeroizing<String> = secret.passphrase();
                    let uuid = self.define_secret(name, i, passphrase.as_bytes())?;
                    secrets.uuids.push(uuid.clone());
                    refs.push(Some(uuid));
                }
                _ => refs.push(None),
            }
        }
        let accel = choose_accel(&self.qemu, name)?;
        let xml = self.domain_xml(name, uuid.as_deref(), accel, run_dir, plan, &refs);
        self.virsh_with_input(
            name,
            "define",
            &["--file", "/dev/stdin"],
            Some(xml.as_bytes()),
        )?;
        self.virsh(name, "start", &["--domain", name])?;
        drop(secrets);
        let guest = Domain {
            runtime: self.clone(),
            name: name.into(),
            accel,
        };
        tracing::info!(vm = name, accel, "libvirt started the domain");
        Ok(Box::new(guest))
    }

    fn find(
        &self,
        name: &str,
        _run_dir: &Path,
        _disks: usize,
    ) -> Option<Box<dyn crate::runtime::Guest>> {
        if !self
            .domain_state(name)
            .is_some_and(|s| RUNNING.contains(&s.as_str()))
        {
            return None;
        }
        // The live definition: Tresor's mark, and the accelerator it was started with.
        let xml = self
            .virsh(name, "dumpxml", &["--domain", name])
            .ok()
            .filter(|xml| xml.contains(METADATA_NS))?;
        let kvm = xml.contains("type='kvm'") || xml.contains("type=\"kvm\"");
        Some(Box::new(Domain {
            runtime: self.clone(),
            name: name.into(),
            accel: if kvm { "kvm" } else { "tcg" },
        }))
    }

    fn shutdown_timeout(&self) -> Duration {
        self.qemu.shutdown_timeout
    }

    fn keeps_keys_off_disk(&self) -> Result<(), String> {
        LibvirtRuntime::keeps_keys_off_disk(self)
    }

    fn fall_back_to_tcg(&mut self) {
        self.qemu.prefer_kvm = false;
        self.qemu.require_kvm = false;
    }

    fn forget(&self, name: &str, id: &str) -> Result<(), crate::runtime::RuntimeError> {
        Ok(self.undefine(name, id)?)
    }

    fn describe_foreign(&self, domain: &str) -> Result<DomainShape, String> {
        match self.domain_state(domain).as_deref() {
            None => {
                return Err(format!(
                    "libvirt ({}) has no domain {domain} (virsh list --all shows what it has)",
                    self.libvirt.uri
                ))
            }
            Some("shut off") => {}
            Some(state) => {
                return Err(format!(
                    "domain {domain} is {state}; shut it down first (virsh shutdown {domain})"
                ))
            }
        }
        let xml = self
            .virsh(domain, "dumpxml", &["--domain", domain, "--inactive"])
            .map_err(|e| e.to_string())?;
        let shape = parse_domain(&xml)
            .map_err(|why| format!("Domain {domain} cannot be adopted: {why}"))?;
        if shape.tresors {
            return Err(format!("Domain {domain} is a Tresor VM's already"));
        }
        Ok(shape)
    }

    fn release_foreign(&self, domain: &str) -> Result<(), crate::runtime::RuntimeError> {
        self.virsh(domain, "undefine", &["--domain", domain])?;
        Ok(())
    }
}

/// A running libvirt domain.
#[derive(Debug)]
struct Domain {
    runtime: LibvirtRuntime,
    name: String,
    accel: &'static str,
}

impl Domain {
    /// The process id libvirt wrote for the domain, when it names a live QEMU of this domain.
    fn live_pid(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(
            self.runtime
                .libvirt
                .pid_dir
                .join(format!("{}.pid", self.name)),
        )
        .ok()?
        .trim()
        .parse()
        .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let zombie = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z');
        let needle = format!("guest={},", self.name);
        (!zombie && String::from_utf8_lossy(&cmdline).contains(&needle)).then_some(pid)
    }

    fn running(&self) -> bool {
        if self.runtime.libvirt.pid_dir.is_dir() {
            return self.live_pid().is_some();
        }
        self.runtime
            .domain_state(&self.name)
            .is_some_and(|s| RUNNING.contains(&s.as_str()))
    }
}

impl crate::runtime::Guest for Domain {
    fn pid(&self) -> u32 {
        self.live_pid().unwrap_or(0)
    }

    fn accel(&self) -> &'static str {
        self.accel
    }

    fn is_running(&mut self) -> bool {
        self.running()
    }

    fn power_off(self: Box<Self>, timeout: Duration) -> bool {
        let _ = self
            .runtime
            .virsh(&self.name, "shutdown", &["--domain", &self.name]);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.running() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Err(e) = self
            .runtime
            .virsh(&self.name, "destroy", &["--domain", &self.name])
        {
            tracing::warn!(vm = %self.name, error = %e, "cannot stop the domain");
        }
        false
    }

    fn detach(self: Box<Self>) {
        // A domain runs on in libvirtd whatever the agent does.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_domain_is_read_for_adoption_and_what_cannot_move_is_refused() {
        let xml = "<domain type='kvm'><name>db1</name><uuid>x</uuid>\
            <memory unit='KiB'>1048576</memory><vcpu placement='static'>2</vcpu>\
            <os><type>hvm</type><kernel>/boot/k</kernel><cmdline>console=ttyS0</cmdline></os>\
            <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
            <source file='/var/lib/libvirt/images/db1.qcow2'/><target dev='vda'/></disk>\
            <disk type='file' device='cdrom'><source file='/iso/x.iso'/></disk>\
            <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/d/two.img'/></disk>\
            <interface type='network'><source network='default'/><model type='virtio'/></interface>\
            </devices></domain>";
        let shape = parse_domain(xml).unwrap();
        assert_eq!(shape.name, "db1");
        assert_eq!(shape.memory_mib, 1024);
        assert_eq!(shape.vcpus, 2);
        assert_eq!(
            shape.disks,
            vec![
                (PathBuf::from("/var/lib/libvirt/images/db1.qcow2"), false),
                (PathBuf::from("/d/two.img"), true)
            ]
        );
        assert_eq!(shape.kernel, Some(PathBuf::from("/boot/k")));
        assert_eq!(shape.cmdline.as_deref(), Some("console=ttyS0"));
        assert_eq!(shape.networks, vec![NetworkSpec::Network("default".into())]);
        assert!(!shape.tresors);

        let block = xml.replace("<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/d/two.img'/>",
            "<disk type='block' device='disk'><source dev='/dev/sdb'/>");
        assert!(parse_domain(&block).unwrap_err().contains("block disk"));
        let vmdk = xml.replace("type='raw'", "type='vmdk'");
        assert!(parse_domain(&vmdk).unwrap_err().contains("convert it"));
        let evil_net = xml.replace("network='default'", "network='x&apos;/&gt;'");
        assert!(parse_domain(&evil_net)
            .unwrap_err()
            .contains("not a network"));
    }

    #[test]
    fn disk_targets_follow_the_kernels_names() {
        assert_eq!(disk_target(0), "vda");
        assert_eq!(disk_target(25), "vdz");
        assert_eq!(disk_target(26), "vdaa");
        assert_eq!(disk_target(27), "vdab");
    }

    #[test]
    fn uuids_are_random_version_4() {
        let (a, b) = (new_uuid(), new_uuid());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!("89ab".contains(&a[19..20]));
    }

    #[test]
    fn a_state_folder_on_disk_is_refused_with_what_to_mount() {
        let dir = tempfile::tempdir().unwrap();
        let on_disk = std::fs::canonicalize(dir.path()).unwrap();
        let runtime = LibvirtRuntime {
            libvirt: LibvirtConfig {
                domain_state_dir: on_disk.clone(),
                ..LibvirtConfig::default()
            },
            qemu: QemuConfig::default(),
        };
        match runtime.keeps_keys_off_disk() {
            Ok(()) => assert!(crate::memory::on_memory_fs(&on_disk).unwrap()),
            Err(message) => {
                assert!(message.contains("mount -t tmpfs"), "{message}");
                assert!(
                    message.contains(&on_disk.display().to_string()),
                    "{message}"
                );
            }
        }
        let dev_shm = LibvirtRuntime {
            libvirt: LibvirtConfig {
                domain_state_dir: "/dev/shm".into(),
                ..LibvirtConfig::default()
            },
            qemu: QemuConfig::default(),
        };
        assert_eq!(dev_shm.keeps_keys_off_disk(), Ok(()));
    }

    #[test]
    fn names_and_paths_are_escaped_in_the_domain_xml() {
        let runtime = LibvirtRuntime {
            libvirt: LibvirtConfig::default(),
            qemu: QemuConfig {
                prefer_kvm: false,
                ..QemuConfig::default()
            },
        };
        let plan = PowerOnPlan {
            id: "0a1b".into(),
            config: crate::vmfile::VmConfig {
                memory_mib: 512,
                vcpus: 2,
                networks: vec![NetworkSpec::Bridge("br0".into())],
                ..Default::default()
            },
            disks: vec![crate::vmfile::OpenDisk {
                path: "/data/a'b<c>&d/disk0.qcow2".into(),
                format: DiskFormat::Qcow2Luks,
                secret: None,
            }],
            boot: None,
            seed: None,
        };
        let xml = runtime.domain_xml(
            "web01",
            None,
            "tcg",
            Path::new("/run/x"),
            &plan,
            &[Some("u-1".into())],
        );
        assert!(
            xml.contains("/data/a&apos;b&lt;c&gt;&amp;d/disk0.qcow2"),
            "{xml}"
        );
        assert!(
            xml.contains("<secret type='passphrase' uuid='u-1'/>"),
            "{xml}"
        );
        assert!(xml.contains("<domain type='qemu'>"), "{xml}");
        assert!(xml.contains("<vcpu>2</vcpu>") && xml.contains("<memory unit='MiB'>512</memory>"));
        assert!(xml.contains("<boot order='1'/>"), "{xml}");
        assert!(xml.contains("<source bridge='br0'/>"), "{xml}");
        // The XML parses.
        let mut reader = quick_xml::Reader::from_str(&xml);
        loop {
            match reader.read_event() {
                Ok(quick_xml::events::Event::Eof) => break,
                Ok(_) => {}
                Err(e) => panic!("{e}: {xml}"),
            }
        }
    }
}
