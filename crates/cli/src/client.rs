//! The client commands: `tresor vm …`, `tresor host …`, `tresor event …`, `tresor alarm …`. They
//! talk to a server's API: `--server URL` or `TRESOR_SERVER`, the token from `TRESOR_TOKEN`.

use clap::{Args, Subcommand};
use serde_json::Value;

use tresor_api::requests::{RegisterRequest, TokenRequest, UnlockMany};
use tresor_api::views::{
    Diagnosis, DiscoveredVm, Event, Health, JoinToken, Registered, UnlockStarted,
};

use crate::output::{self, Format};
use crate::CliError;

#[derive(Debug, Args)]
pub struct Conn {
    /// The server's API, for example https://127.0.0.1:8400; several servers on one database
    /// separated by commas (the client moves on when one does not answer, and follows a
    /// standby to the leader among them).
    #[arg(
        long,
        env = "TRESOR_SERVER",
        default_value = "https://127.0.0.1:8400",
        global = true
    )]
    pub(crate) server: String,
    /// The CA that issued the server's certificate (PEM); without it, the certificate
    /// `tresor login` pinned for this server. (`--ca` of `provider add` is the provider's CA.)
    #[arg(id = "server_ca", long = "server-ca", env = "TRESOR_CA", global = true)]
    pub(crate) ca: Option<std::path::PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', default_value = "table", global = true)]
    output: Format,
}

impl Conn {
    /// The API token: `TRESOR_TOKEN`, or the one `tresor login` stored for this server. Never a
    /// flag: command lines are visible to every user of the machine.
    pub(crate) fn token(&self) -> Result<zeroize::Zeroizing<String>, CliError> {
        if let Ok(t) = std::env::var("TRESOR_TOKEN") {
            if !t.is_empty() {
                return Ok(zeroize::Zeroizing::new(t));
            }
        }
        crate::access::stored_token(&self.server)?.ok_or_else(|| {
            CliError::msg(format!(
                "No API token for {}: log in with `tresor login --user NAME`, or set TRESOR_TOKEN (tresor dev prints one)",
                self.server
            ))
        })
    }

    pub(crate) fn call(&self, method: &str, path: &str, body: &str) -> Result<Value, CliError> {
        let token = self.token()?;
        self.call_with(&token, method, path, body)
    }

    /// A client for the server, trusting it as [`crate::api::trust`] decides.
    pub(crate) fn client(&self, token: &str) -> Result<tresor_api::Client, CliError> {
        let trust = crate::api::trust(&self.server, self.ca.as_deref())?;
        Ok(tresor_api::Client::new(&self.server, trust)?.with_token(token))
    }

    /// A request with the given token (empty: none, as for logging in).
    pub(crate) fn call_with(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<Value, CliError> {
        let client = self.client(token)?;
        let body = crate::api::json_body(body)?;
        Ok(crate::api::block_on(client.call(
            method,
            path,
            body.as_ref(),
        ))??)
    }

    /// Follows the event stream, calling `each` for every event until the server closes it.
    fn follow(&self, query: &str, mut each: impl FnMut(&Value)) -> Result<(), CliError> {
        let token = self.token()?;
        let client = self.client(&token)?;
        crate::api::block_on(
            client.follow(&format!("/api/v1/events/stream?{query}"), |v| {
                each(&v);
                true
            }),
        )??;
        Err(CliError::msg(
            "The server closed the event stream; run the command again to go on",
        ))
    }

    pub(crate) fn is_json(&self) -> bool {
        self.output == Format::Json
    }

    /// An action's outcome: the server's answer as JSON with `-o json`, else a line for people.
    pub(crate) fn done(&self, answer: &Value, line: impl FnOnce() -> String) {
        match self.output {
            Format::Json => println!(
                "{}",
                serde_json::to_string_pretty(answer).unwrap_or_default()
            ),
            Format::Table => println!("{}", line()),
        }
    }

    pub(crate) fn print(&self, value: &Value, table: impl FnOnce(&Value) -> String) {
        match self.output {
            Format::Json => println!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            ),
            Format::Table => print!("{}", table(value)),
        }
    }
}

#[derive(Debug, Args)]
pub struct VmCommand {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: VmSub,
}

/// Files of a VM: what it boots.
#[derive(Debug, clap::Args)]
struct VmFiles {
    /// A qcow2 or raw disk image, copied to the host as the VM's first disk (encrypted when the
    /// VM is).
    #[arg(long)]
    image: Option<std::path::PathBuf>,
    /// A Linux kernel to boot directly.
    #[arg(long)]
    kernel: Option<std::path::PathBuf>,
    /// The initial RAM disk for --kernel.
    #[arg(long)]
    initrd: Option<std::path::PathBuf>,
    /// The kernel command line for --kernel (default: console=ttyS0 panic=-1).
    #[arg(long)]
    cmdline: Option<String>,
    /// cloud-init user data (a #cloud-config file or a script), given to the guest in a NoCloud
    /// seed at each power-on.
    #[arg(long)]
    user_data: Option<std::path::PathBuf>,
    /// SSH public keys for cloud-init (an authorized_keys file).
    #[arg(long)]
    ssh_key: Option<std::path::PathBuf>,
}

impl VmFiles {
    fn is_empty(&self) -> bool {
        self.image.is_none()
            && self.kernel.is_none()
            && self.initrd.is_none()
            && self.cmdline.is_none()
    }

    /// Sends each file given to VM `name`; the VM as the last answer tells it.
    fn send(&self, c: &Conn, name: &str) -> Result<Option<Value>, CliError> {
        let token = c.token()?;
        let client = c.client(&token)?;
        let mut last = None;
        let files = [
            ("image", &self.image),
            ("kernel", &self.kernel),
            ("initrd", &self.initrd),
            ("user-data", &self.user_data),
            ("ssh-key", &self.ssh_key),
        ];
        for (kind, file) in files {
            if let Some(file) = file {
                let path = format!("/api/v1/vms/{name}/files/{kind}");
                let v = crate::api::block_on(client.put_file(&path, file))??;
                // An image is imported by a task, followed here to its end.
                if let Ok(task) = typed::<tresor_api::views::Task>(&v, "a task") {
                    crate::task::follow_to_success(c, task)?;
                    last = Some(c.call("GET", &format!("/api/v1/vms/{name}"), "")?);
                    continue;
                }
                last = Some(v);
            }
        }
        if let Some(cmdline) = &self.cmdline {
            let path = format!("/api/v1/vms/{name}/files/cmdline");
            let v = crate::api::block_on(client.put_bytes(&path, cmdline.clone().into_bytes()))??;
            last = Some(v);
        }
        Ok(last)
    }
}

#[derive(Debug, Subcommand)]
enum VmSub {
    /// Every VM (or the locked ones, or those hosts report that are not registered).
    List {
        /// Only the locked VMs, with why each is locked.
        #[arg(long, conflicts_with = "discovered")]
        locked: bool,
        /// VMs that hosts report but the server has not registered (or holds otherwise): never
        /// unlocked until an operator registers them.
        #[arg(long)]
        discovered: bool,
    },
    /// One VM.
    Show {
        /// The VM's name.
        name: String,
    },
    /// Why a VM is locked and what to do next, following the troubleshooting procedure.
    Diagnose {
        /// The VM's name.
        #[arg(required_unless_present = "all")]
        name: Option<String>,
        /// Every locked VM.
        #[arg(long, conflicts_with = "name")]
        all: bool,
        /// Language of the diagnosis: en or de.
        #[arg(long, default_value = "en")]
        lang: String,
    },
    /// One value of a VM, by path (for example config.keyId.keyId).
    Get {
        /// The VM's name.
        name: String,
        /// A dotted path into the VM's JSON, such as config.keyId.keyId or runtime.cryptoState.
        path: String,
    },
    /// Create a VM on a host; --encrypt creates its key on the provider.
    Create {
        /// The new VM's name: letters, digits, '.', '_', '-' (at most 63).
        name: String,
        /// The host to create it on (one in encryption mode for --encrypt).
        #[arg(long)]
        host: String,
        /// A disk of this size (512M, 10G); repeat for more.
        #[arg(long = "disk")]
        disks: Vec<String>,
        /// Encrypt it: a new key on the provider, its disks in LUKS images.
        #[arg(long)]
        encrypt: bool,
        /// The key provider for --encrypt (default: the default provider).
        #[arg(long)]
        provider: Option<String>,
        /// A disk of this size with a key of its own (needs --encrypt); repeat for more.
        #[arg(long = "own-key-disk", requires = "encrypt")]
        own_key_disks: Vec<String>,
        /// Virtual CPUs.
        #[arg(long, default_value_t = 1)]
        cpus: u32,
        /// Memory (256M, 2G).
        #[arg(long, default_value = "256M")]
        memory: String,
        /// A network interface: user (QEMU's user-mode network), network:NAME (a libvirt
        /// network) or bridge:NAME (a host bridge); repeat for more.
        #[arg(long = "network")]
        networks: Vec<String>,
        /// How its encrypted disks are stored: qcow2 (qcow2 with LUKS inside, opened by QEMU)
        /// or luks (a LUKS1 volume in a raw file, served to the guest by the host's fast data
        /// path; cryptsetup opens it too).
        #[arg(long, value_parser = ["qcow2", "luks"], requires = "encrypt")]
        disk_format: Option<String>,
        #[command(flatten)]
        files: VmFiles,
    },
    /// Send files to a powered-off VM: an image (imported as its first disk, encrypted when the
    /// VM is), a kernel, an initrd, a kernel command line.
    Upload {
        /// The VM's name (powered off).
        name: String,
        #[command(flatten)]
        files: VmFiles,
    },
    /// Bring a powered-off libvirt domain of a host (one whose agent runs libvirt) under Tresor
    /// as a VM of the same name: its images move into the VM's folder, its definition is replaced
    /// by Tresor's; --encrypt encrypts it next.
    Adopt {
        /// The libvirt domain's name; it becomes the VM's name.
        domain: String,
        /// The host whose libvirt defines the domain.
        #[arg(long)]
        host: String,
        /// Encrypt the VM once it is adopted.
        #[arg(long)]
        encrypt: bool,
        /// The key provider for --encrypt (default: the default provider).
        #[arg(long, requires = "encrypt")]
        provider: Option<String>,
    },
    /// The serial console of a VM: what it prints, and what you type (Ctrl-] leaves). With
    /// --log, what it printed since it was powered on, and no more. Input that is not a terminal
    /// is typed as it is, and the output followed for --wait seconds.
    Console {
        /// The VM's name.
        name: String,
        /// Print what the VM printed since it was powered on, and return.
        #[arg(long)]
        log: bool,
        /// Seconds to follow the output after input that is not a terminal ends.
        #[arg(long, default_value_t = 2)]
        wait: u64,
    },
    /// Power VMs on.
    PowerOn {
        /// The VMs' names.
        names: Vec<String>,
    },
    /// Power VMs off (the guest is asked first, then stopped).
    PowerOff {
        /// The VMs' names.
        names: Vec<String>,
    },
    /// Send the keys of locked VMs to their hosts: named VMs, every locked VM (--all), those of a
    /// host, or those whose keys come from a provider. Waits and shows progress.
    Unlock {
        /// The locked VMs' names.
        names: Vec<String>,
        /// Every locked VM.
        #[arg(long, conflicts_with_all = ["names", "host", "provider"])]
        all: bool,
        /// Every locked VM of this host.
        #[arg(long, conflicts_with_all = ["names", "provider"])]
        host: Option<String>,
        /// Every locked VM whose keys come from this provider.
        #[arg(long, conflicts_with = "names")]
        provider: Option<String>,
        /// Return once the unlock is requested, without waiting for the VMs.
        #[arg(long)]
        no_wait: bool,
        /// Seconds to wait for the VMs to be unlocked.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Register a VM from its directory on a host, or every VM found there (--all).
    Register {
        /// The VM's folder on the host (omit it with --all).
        path: Option<String>,
        /// The host the folder is on.
        #[arg(long)]
        host: String,
        /// Every VM found on the host that is not registered yet (a task).
        #[arg(long)]
        all: bool,
        /// With --all: say the task's id and return instead of following it.
        #[arg(long, requires = "all")]
        no_wait: bool,
    },
    /// Forget a VM; its files stay on the host.
    Unregister {
        /// The VM's name.
        name: String,
    },
    /// Read a VM's files on its host again, keeping its registration (allowed while it is locked).
    Reload {
        /// The VM's name.
        name: String,
    },
    /// Delete a VM and its files (refused while it is locked).
    Delete {
        /// The VM's name.
        name: String,
    },
    /// Encrypt a powered-off VM: a new key on the provider, each disk copied into a LUKS image.
    Encrypt {
        /// The VM's name.
        name: String,
        /// The key provider (default: the default provider).
        #[arg(long)]
        provider: Option<String>,
        /// How its encrypted disks are stored: qcow2 (the default) or luks (LUKS1 volumes in
        /// raw files, served by the host's fast data path).
        #[arg(long, value_parser = ["qcow2", "luks"])]
        disk_format: Option<String>,
        /// Say the task's id and return instead of following it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Decrypt a powered-off VM: each disk copied into a plain image, its keys no longer used.
    Decrypt {
        /// The VM's name.
        name: String,
        /// Say the task's id and return instead of following it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Add a disk to a powered-off VM (encrypted with the VM's key, or --own-key).
    AddDisk {
        /// The VM's name.
        name: String,
        /// Its size: 512M, 10G.
        #[arg(long)]
        size: String,
        /// A new key of its own on the VM's provider.
        #[arg(long)]
        own_key: bool,
    },
    /// A new key for the VM; --deep also re-encrypts its disks (powered off).
    Rekey {
        /// The VM's name.
        name: String,
        /// Also re-encrypt the disks under new disk keys (the VM must be powered off).
        #[arg(long)]
        deep: bool,
        /// With --deep: store its disks as qcow2 or luks from now on (luks moves qcow2 disks to
        /// LUKS1 volumes in raw files, served by the host's fast data path).
        #[arg(long, value_parser = ["qcow2", "luks"], requires = "deep")]
        disk_format: Option<String>,
        /// Say the task's id and return instead of following it.
        #[arg(long)]
        no_wait: bool,
    },
}

/// Bytes in `512M`, `10G`, `1T` or a plain number.
pub fn parse_size(text: &str) -> Result<u64, CliError> {
    let t = text.trim();
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        Some('T' | 't') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| {
            CliError::msg(format!(
                "\"{text}\" is not a size; write for example 512M or 10G"
            ))
        })
}

/// A request body as JSON text (the request types always serialize).
pub(crate) fn json_text<T: serde::Serialize>(body: &T) -> String {
    serde_json::to_string(body).unwrap_or_default()
}

/// The server's answer as a typed view, or a line saying it cannot be read as `what`.
pub(crate) fn typed<T: serde::de::DeserializeOwned>(v: &Value, what: &str) -> Result<T, String> {
    serde_json::from_value(v.clone()).map_err(|e| {
        format!("The server's answer cannot be read as {what} ({e}); `-o json` shows it as it is\n")
    })
}

/// VMs as the API answers them (a list, or one), typed.
fn vms_of(v: &Value) -> Result<Vec<tresor_api::views::Vm>, String> {
    match v {
        Value::Array(_) => typed(v, "VMs"),
        one => typed(one, "a VM").map(|vm| vec![vm]),
    }
}

fn vm_rows(v: &Value) -> String {
    match vms_of(v) {
        Ok(vms) => vm_table(vms),
        Err(line) => line,
    }
}

fn vm_table(vms: Vec<tresor_api::views::Vm>) -> String {
    let rows: Vec<Vec<String>> = vms
        .into_iter()
        .map(|vm| {
            vec![
                vm.name,
                vm.host,
                vm.power_state.as_str().to_owned(),
                vm.crypto_state.as_str().to_owned(),
                vm.connection_state.as_str().to_owned(),
                vm.lock_reason.map_or("-", |r| r.as_str()).to_owned(),
            ]
        })
        .collect();
    output::table(
        &[
            "NAME",
            "HOST",
            "POWER",
            "CRYPTO",
            "CONNECTION",
            "LOCK REASON",
        ],
        &rows,
    )
}

/// A diagnosis as text: the summary, then the evidence and the next steps as lists, labelled
/// in the diagnosis's language (`en` or `de`).
fn diagnosis_text(v: &Value, lang: &str) -> String {
    match typed::<Diagnosis>(v, "a diagnosis") {
        Ok(d) => diagnosis_lines(&d, lang),
        Err(line) => line,
    }
}

fn diagnosis_lines(d: &Diagnosis, lang: &str) -> String {
    let de = lang == "de";
    let label = |en: &'static str, german: &'static str| if de { german } else { en };
    let mut out = String::new();
    if let Some(case) = d.case {
        out.push_str(&format!("{} {case}: ", label("case", "Fall")));
    }
    out.push_str(&d.summary);
    out.push('\n');
    let sections = [
        (label("evidence", "Befund"), &d.evidence, true),
        (
            label("next steps", "nächste Schritte"),
            &d.next_steps,
            false,
        ),
    ];
    for (title, items, is_evidence) in sections {
        if !items.is_empty() {
            out.push_str(&format!("\n{title}:\n"));
            for (i, item) in items.iter().enumerate() {
                out.push_str(&format!("  {}. {item}\n", i + 1));
            }
        }
        if is_evidence {
            // The providers' last probe: which endpoint answered what, and when.
            for (name, st) in d.provider_status.iter().flatten() {
                out.push_str(&format!(
                    "  {} {name}: {} ({})\n",
                    label("provider", "Anbieter"),
                    health_label(st.health, de),
                    output::time(st.checked_at)
                ));
                for e in &st.endpoints {
                    let what = match &e.error {
                        Some(err) => err.clone(),
                        None => format!("{:.1} ms", e.latency_ms.unwrap_or(0.0)),
                    };
                    out.push_str(&format!("    {}: {what}\n", e.address));
                }
            }
        }
    }
    out
}

/// A provider's health for a diagnosis: the API's name, or its German word.
fn health_label(h: Health, de: bool) -> String {
    if !de {
        return health_name(h);
    }
    match h {
        Health::Ok => "in Ordnung",
        Health::Degraded => "eingeschränkt",
        Health::Unreachable => "nicht erreichbar",
        Health::AwaitingCertificate => "wartet auf sein Zertifikat",
        Health::Misconfigured => "falsch eingerichtet",
    }
    .to_owned()
}

/// A provider's health as the API names it.
pub(crate) fn health_name(h: Health) -> String {
    serde_json::to_value(h)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The discovered VMs as a table: where, what, why not registered.
fn discovered_rows(v: &Value) -> String {
    let items: Vec<DiscoveredVm> = match typed(v, "discovered VMs") {
        Ok(items) => items,
        Err(line) => return line,
    };
    if items.is_empty() {
        return "No host reports a VM that is not registered.\n".into();
    }
    let mut out = format!(
        "{:<20} {:<12} {:<10} {}\n",
        "NAME", "HOST", "ENCRYPTED", "WHY NOT REGISTERED / PATH"
    );
    for d in items {
        out.push_str(&format!(
            "{:<20} {:<12} {:<10} {}\n{:<44} {}\n",
            d.name,
            d.host,
            if d.encrypted { "yes" } else { "no" },
            d.message,
            "",
            d.path,
        ));
    }
    out
}

pub fn run_vm(cmd: VmCommand) -> Result<(), CliError> {
    let c = &cmd.conn;
    match cmd.command {
        VmSub::List { locked, discovered } => {
            if discovered {
                let v = c.call("GET", "/api/v1/vms?discovered=true", "")?;
                c.print(&v, discovered_rows);
                return Ok(());
            }
            let v = c.call(
                "GET",
                if locked {
                    "/api/v1/vms?locked=true"
                } else {
                    "/api/v1/vms"
                },
                "",
            )?;
            c.print(&v, vm_rows);
        }
        VmSub::Show { name } => {
            let v = c.call("GET", &format!("/api/v1/vms/{name}"), "")?;
            c.print(&v, vm_rows);
        }
        VmSub::Diagnose { name, all, lang } => {
            let names: Vec<String> = match name {
                Some(n) if !all => vec![n],
                _ => {
                    let v = c.call("GET", "/api/v1/vms?locked=true", "")?;
                    vms_of(&v)
                        .map_err(CliError::msg)?
                        .into_iter()
                        .map(|vm| vm.name)
                        .collect()
                }
            };
            let mut all_diagnoses = Vec::new();
            for n in &names {
                all_diagnoses.push(c.call(
                    "GET",
                    &format!("/api/v1/vms/{n}/diagnose?lang={lang}"),
                    "",
                )?);
            }
            if all {
                let v = Value::Array(all_diagnoses);
                c.print(&v, |v| {
                    let items: Vec<Diagnosis> = match typed(v, "diagnoses") {
                        Ok(items) => items,
                        Err(line) => return line,
                    };
                    if items.is_empty() {
                        return "No VM is locked.\n".into();
                    }
                    items
                        .iter()
                        .map(|d| format!("== {}\n{}", d.vm, diagnosis_lines(d, &lang)))
                        .collect::<Vec<_>>()
                        .join("\n")
                });
            } else if let Some(d) = all_diagnoses.first() {
                c.print(d, |v| diagnosis_text(v, &lang));
            }
        }
        VmSub::Get { name, path } => {
            let v = c.call("GET", &format!("/api/v1/vms/{name}"), "")?;
            let mut cur = &v;
            for part in path.split('.') {
                cur = cur
                    .get(part)
                    .ok_or_else(|| CliError::msg(format!("VM {name} has no {path}")))?;
            }
            match cur {
                Value::String(s) => println!("{s}"),
                Value::Null => println!("null"),
                other => println!("{other}"),
            }
        }
        VmSub::Create {
            name,
            host,
            disks,
            encrypt,
            provider,
            own_key_disks,
            cpus,
            memory,
            networks,
            disk_format,
            files,
        } => {
            let memory_mib = u32::try_from(parse_size(&memory)? >> 20).map_err(|_| {
                CliError::msg(format!("--memory {memory} is more than a VM may have (1T)"))
            })?;
            let sizes: Vec<u64> = disks
                .iter()
                .map(|d| parse_size(d))
                .collect::<Result<_, _>>()?;
            let own: Vec<u64> = own_key_disks
                .iter()
                .map(|d| parse_size(d))
                .collect::<Result<_, _>>()?;
            let body = tresor_api::requests::CreateVm {
                name,
                host,
                disks: sizes,
                memory_mib,
                cpus,
                encrypt,
                provider,
                own_key_disks: own,
                networks,
                disk_format: disk_format.map(|f| {
                    if f == "luks" {
                        tresor_api::requests::DiskFormat::Luks
                    } else {
                        tresor_api::requests::DiskFormat::Qcow2
                    }
                }),
            };
            let vm = body.name.clone();
            let v = c.call("POST", "/api/v1/vms", &json_text(&body))?;
            // The VM exists now; a file that does not reach it is said, with how to send it again.
            let v = match files.send(c, &vm) {
                Ok(Some(v)) => v,
                Ok(None) => v,
                Err(e) => {
                    return Err(CliError::msg(format!(
                        "VM {vm} was created, but its files were not all sent: {e}; send them with tresor vm upload {vm}, or remove it with tresor vm delete {vm}"
                    )))
                }
            };
            c.print(&v, vm_rows);
        }
        VmSub::Adopt {
            domain,
            host,
            encrypt,
            provider,
        } => {
            let body = tresor_api::requests::AdoptVm {
                domain,
                host,
                encrypt,
                provider,
            };
            let v = c.call("POST", "/api/v1/vms/adopt", &json_text(&body))?;
            c.print(&v, vm_rows);
        }
        VmSub::Console { name, log, wait } => crate::console::run(c, &name, log, wait)?,
        VmSub::Upload { name, files } => {
            if files.is_empty() {
                return Err(CliError::msg(
                    "Name a file to send: --image, --kernel, --initrd, --cmdline, --user-data or --ssh-key",
                ));
            }
            if let Some(v) = files.send(c, &name)? {
                c.print(&v, vm_rows);
            }
        }
        VmSub::PowerOn { names } | VmSub::PowerOff { names } if names.is_empty() => {
            return Err(CliError::msg("Name at least one VM"));
        }
        VmSub::PowerOn { names } => {
            for n in names {
                let v = c.call("POST", &format!("/api/v1/vms/{n}/power-on"), "")?;
                c.done(&v, || format!("{n}: powered on"));
            }
        }
        VmSub::PowerOff { names } => {
            for n in names {
                let v = c.call("POST", &format!("/api/v1/vms/{n}/power-off"), "")?;
                c.done(&v, || format!("{n}: powered off"));
            }
        }
        VmSub::Register {
            path,
            host,
            all,
            no_wait,
        } => {
            let body = RegisterRequest { host, path, all };
            let v = c.call("POST", "/api/v1/vms/register", &json_text(&body))?;
            if all && body.path.is_none() {
                // A task: the VMs it registered are its result.
                crate::task::started(c, &v, no_wait)?;
                return Ok(());
            }
            c.print(&v, |v| {
                let names = match typed::<Registered>(v, "the registered VMs") {
                    Ok(r) => r.registered,
                    Err(line) => return line,
                };
                format!(
                    "registered: {}\n",
                    if names.is_empty() {
                        "-".to_owned()
                    } else {
                        names.join(", ")
                    }
                )
            });
        }
        VmSub::Unregister { name }
        | VmSub::Reload { name }
        | VmSub::Delete { name }
        | VmSub::Decrypt { name, .. }
            if name.is_empty() =>
        {
            return Err(CliError::msg("Name a VM"));
        }
        VmSub::Unregister { name } => simple(c, &name, "unregister", "")?,
        VmSub::Reload { name } => simple(c, &name, "reload", "")?,
        VmSub::Delete { name } => simple(c, &name, "delete", "")?,
        VmSub::Decrypt { name, no_wait } => {
            let v = c.call("POST", &format!("/api/v1/vms/{name}/decrypt"), "")?;
            crate::task::started(c, &v, no_wait)?;
        }
        VmSub::AddDisk {
            name,
            size,
            own_key,
        } => {
            let body = serde_json::json!({"size": parse_size(&size)?, "ownKey": own_key});
            let v = c.call(
                "POST",
                &format!("/api/v1/vms/{name}/add-disk"),
                &body.to_string(),
            )?;
            c.print(&v, vm_rows);
        }
        VmSub::Encrypt {
            name,
            provider,
            disk_format,
            no_wait,
        } => {
            let body =
                serde_json::json!({"provider": provider, "diskFormat": disk_format}).to_string();
            let v = c.call("POST", &format!("/api/v1/vms/{name}/encrypt"), &body)?;
            crate::task::started(c, &v, no_wait)?;
        }
        VmSub::Rekey {
            name,
            deep,
            disk_format,
            no_wait,
        } => {
            let body = serde_json::json!({"deep": deep, "diskFormat": disk_format}).to_string();
            let v = c.call("POST", &format!("/api/v1/vms/{name}/rekey"), &body)?;
            crate::task::started(c, &v, no_wait)?;
        }
        VmSub::Unlock {
            names,
            all,
            host,
            provider,
            no_wait,
            timeout,
        } => unlock(c, names, all, host, provider, no_wait, timeout)?,
    }
    Ok(())
}

/// Asks for VMs to be unlocked and follows them until each is unlocked or the time is up.
fn unlock(
    c: &Conn,
    names: Vec<String>,
    all: bool,
    host: Option<String>,
    provider: Option<String>,
    no_wait: bool,
    timeout: u64,
) -> Result<(), CliError> {
    if names.is_empty() && !all && host.is_none() && provider.is_none() {
        return Err(CliError::msg(
            "Name the VMs to unlock, or give --all, --host HOST or --provider NAME",
        ));
    }
    let body = UnlockMany {
        names,
        all,
        host,
        provider,
    };
    let v = c.call("POST", "/api/v1/vms/unlock", &json_text(&body))?;
    let names = body.names;
    let started: UnlockStarted = typed(&v, "the unlock's answer").map_err(CliError::msg)?;
    let requested = started.requested;
    let json = c.is_json();
    // Unlocks that failed at once (the provider cannot give the keys now): said, and the
    // command fails after following the others.
    let failed: Vec<String> = started.failed.into_iter().map(|f| f.message).collect();
    if failed.len() > 1 && !json {
        for f in &failed {
            eprintln!("{f}");
        }
    }
    let failure = |ok: Result<(), CliError>| -> Result<(), CliError> {
        ok?;
        match failed.len() {
            0 => Ok(()),
            1 => Err(CliError::msg(failed[0].clone())),
            n => Err(CliError::msg(format!(
                "{n} VMs could not be unlocked (each said above); `tresor vm diagnose --all` shows the way forward"
            ))),
        }
    };
    if no_wait || requested.is_empty() {
        if json {
            c.print(&v, |_| String::new());
        } else if requested.is_empty() && failed.is_empty() && !names.is_empty() {
            println!("{}: not locked; nothing to unlock", names.join(", "));
        } else if requested.is_empty() && failed.is_empty() {
            println!("No locked VM matched; nothing to unlock");
        } else if !requested.is_empty() {
            println!("unlock requested: {}", requested.join(", "));
        }
        return failure(Ok(()));
    }
    let total = requested.len();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout);
    let mut pending = requested.clone();
    let mut unlocked = Vec::new();
    let mut states: std::collections::BTreeMap<String, Value> = Default::default();
    loop {
        let mut still = Vec::new();
        for name in pending {
            let vm = c.call("GET", &format!("/api/v1/vms/{name}"), "")?;
            let vm: tresor_api::views::Vm =
                typed(&vm, &format!("VM {name}")).map_err(CliError::msg)?;
            if vm.crypto_state == tresor_api::views::CryptoState::Locked {
                states.insert(name.clone(), serde_json::json!(vm.lock_reason));
                still.push(name);
            } else {
                if !json {
                    println!("[{}/{total}] {name}: unlocked", unlocked.len() + 1);
                }
                unlocked.push(name);
            }
        }
        pending = still;
        if pending.is_empty() || std::time::Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    if json {
        let still: Vec<Value> = pending
            .iter()
            .map(|n| serde_json::json!({"name": n, "lockReason": states.get(n).cloned().unwrap_or(Value::Null)}))
            .collect();
        c.print(
            &serde_json::json!({"unlocked": unlocked, "stillLocked": still}),
            |_| String::new(),
        );
    }
    if pending.is_empty() {
        if !json {
            println!("{total} of {total} unlocked");
        }
        return failure(Ok(()));
    }
    let list: Vec<String> = pending
        .iter()
        .map(|n| match states.get(n).and_then(Value::as_str) {
            Some(r) => format!("{n} ({r})"),
            None => n.clone(),
        })
        .collect();
    Err(CliError::msg(format!(
        "{} of {total} still locked after {timeout} s: {}; see why with `tresor vm diagnose {}`",
        pending.len(),
        list.join(", "),
        pending[0]
    )))
}

fn simple(c: &Conn, name: &str, op: &str, body: &str) -> Result<(), CliError> {
    let v = c.call("POST", &format!("/api/v1/vms/{name}/{op}"), body)?;
    c.done(&v, || format!("{name}: {op} done"));
    Ok(())
}

#[derive(Debug, Args)]
pub struct HostCommand {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: HostSub,
}

#[derive(Debug, Subcommand)]
enum HostSub {
    /// A one-time join token for `tresor agent join`: for one host name, or for any name not
    /// enrolled yet.
    Token {
        /// Seconds the token is valid.
        #[arg(long, default_value_t = 3600)]
        ttl: i64,
        /// The host the token enrols (only that name).
        #[arg(long)]
        host: Option<String>,
        /// The token replaces the enrolled host of that name: its old certificate is refused
        /// from then on.
        #[arg(long, requires = "host")]
        replace: bool,
    },
    /// Forget a host and refuse its certificate from now on (its VMs stay registered).
    Remove {
        /// The host's name.
        name: String,
    },
    /// Every host: connection, encryption mode, VMs.
    List,
    /// One host and its VMs.
    Show {
        /// The host's name.
        name: String,
    },
    /// Put a host in encryption mode: it gets a key of its own and may run encrypted VMs.
    EnableEncryption {
        /// The host's name.
        name: String,
    },
    /// Take the host out of encryption mode; it ends when the host restarts.
    DisableEncryption {
        /// The host's name.
        name: String,
    },
    /// Stop the host's VMs and empty its key cache, as a restart does.
    Reboot {
        /// The host's name.
        name: String,
    },
}

pub fn run_host(cmd: HostCommand) -> Result<(), CliError> {
    let c = &cmd.conn;
    match cmd.command {
        HostSub::Remove { name } => {
            let v = c.call("DELETE", &format!("/api/v1/hosts/{name}"), "")?;
            c.done(&v, || {
                format!("{name}: removed; its certificate is refused from now on")
            });
        }
        HostSub::Token { ttl, host, replace } => {
            let body = TokenRequest {
                ttl_secs: Some(ttl),
                host,
                replace,
            };
            let v = c.call("POST", "/api/v1/hosts/token", &json_text(&body))?;
            c.print(&v, |v| match typed::<JoinToken>(v, "a join token") {
                Ok(t) => format!("{}\n", t.token),
                Err(line) => line,
            });
        }
        HostSub::List => {
            let v = c.call("GET", "/api/v1/hosts", "")?;
            c.print(&v, |v| {
                let hosts: Vec<tresor_api::views::Host> = match typed(v, "hosts") {
                    Ok(h) => h,
                    Err(line) => return line,
                };
                let rows: Vec<Vec<String>> = hosts
                    .into_iter()
                    .map(|h| {
                        vec![
                            h.name,
                            h.connected.to_string(),
                            h.crypto_state.as_str().into(),
                            h.vm_count.to_string(),
                            h.locked_vm_count.to_string(),
                            h.keys_held.to_string(),
                        ]
                    })
                    .collect();
                output::table(
                    &[
                        "NAME",
                        "CONNECTED",
                        "ENCRYPTION MODE",
                        "VMS",
                        "LOCKED",
                        "KEYS HELD",
                    ],
                    &rows,
                )
            });
        }
        HostSub::Show { name } => {
            let v = c.call("GET", &format!("/api/v1/hosts/{name}"), "")?;
            c.print(&v, |h| {
                let h: tresor_api::views::HostWithVms = match typed(h, "a host") {
                    Ok(h) => h,
                    Err(line) => return line,
                };
                format!(
                    "name:            {}\nconnected:       {}\nencryption mode: {}\nkeys held:       {}\nlast seen:       {}\n\n{}",
                    h.host.name,
                    h.host.connected,
                    h.host.crypto_state.as_str(),
                    h.host.keys_held,
                    output::time(h.host.last_seen),
                    vm_table(h.vms)
                )
            });
        }
        HostSub::DisableEncryption { name } => {
            let v = c.call(
                "POST",
                &format!("/api/v1/hosts/{name}/disable-encryption"),
                "",
            )?;
            c.done(&v, || {
                format!("{name}: encryption mode ends when the host restarts")
            });
        }
        HostSub::Reboot { name } => {
            let v = c.call("POST", &format!("/api/v1/hosts/{name}/reboot"), "")?;
            c.done(&v, || {
                format!("{name}: rebooted (VMs stopped, key cache empty)")
            });
        }
        HostSub::EnableEncryption { name } => {
            let v = c.call(
                "POST",
                &format!("/api/v1/hosts/{name}/enable-encryption"),
                "",
            )?;
            c.done(&v, || format!("{name}: encryption mode safe"));
        }
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct EventCommand {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: EventSub,
}

#[derive(Debug, Subcommand)]
enum EventSub {
    /// The event log, oldest first, by VM, host, provider, type or time.
    List {
        /// Only events of this VM.
        #[arg(long)]
        vm: Option<String>,
        /// Only events of this host.
        #[arg(long)]
        host: Option<String>,
        /// Only events of this key provider.
        #[arg(long)]
        provider: Option<String>,
        /// Only events of this type, such as vm.locked.
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Seconds since the epoch.
        #[arg(long)]
        since: Option<i64>,
        /// Language of the messages: en or de.
        #[arg(long, default_value = "en")]
        lang: String,
        /// After the list, print events as they happen, until interrupted.
        #[arg(long, short = 'f')]
        follow: bool,
    },
}

/// An event as a row: time, type, VM, message.
fn event_row(e: &Event) -> Vec<String> {
    vec![
        output::time(e.time),
        e.event_type.clone(),
        e.vm.clone().unwrap_or_else(|| "-".into()),
        e.message.clone(),
    ]
}

pub fn run_event(cmd: EventCommand) -> Result<(), CliError> {
    let c = &cmd.conn;
    let EventSub::List {
        vm,
        host,
        provider,
        event_type,
        since,
        lang,
        follow,
    } = cmd.command;
    let mut q = vec![format!("lang={lang}")];
    if let Some(v) = vm {
        q.push(format!("vm={v}"));
    }
    if let Some(h) = host {
        q.push(format!("host={h}"));
    }
    if let Some(p) = provider {
        q.push(format!("provider={p}"));
    }
    if let Some(t) = event_type {
        q.push(format!("type={t}"));
    }
    if let Some(s) = since {
        q.push(format!("since={s}"));
    }
    let v = c.call("GET", &format!("/api/v1/events?{}", q.join("&")), "")?;
    let events: Vec<Event> = typed(&v, "events").map_err(CliError::msg)?;
    c.print(&v, |_| {
        let rows: Vec<Vec<String>> = events.iter().map(event_row).collect();
        output::table(&["TIME", "TYPE", "VM", "MESSAGE"], &rows)
    });
    if follow {
        // Go on from the last event listed, so that nothing falls between list and stream.
        let last = events.last().map(|e| e.id);
        let mut query = q.clone();
        query.push(format!("after={}", last.unwrap_or(0)));
        let json = c.is_json();
        c.follow(&query.join("&"), |e| {
            if json {
                println!("{e}");
            } else {
                match typed::<Event>(e, "an event") {
                    Ok(e) => println!("{}", event_row(&e).join("  ")),
                    Err(line) => eprint!("{line}"),
                }
            }
            use std::io::Write as _;
            let _ = std::io::stdout().flush();
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `vm diagnose --lang de` labels its parts in German, the providers' status line too.
    #[test]
    fn a_diagnosis_is_labelled_in_its_language() {
        let status = tresor_api::views::ProviderStatus {
            name: "corp".into(),
            health: Health::Unreachable,
            active_endpoint: None,
            checked_at: 0,
            endpoints: Vec::new(),
            certificates: Vec::new(),
            vendor: None,
            message: String::new(),
        };
        let d = Diagnosis {
            vm: "web01".into(),
            case: Some(1),
            summary: "S".into(),
            evidence: vec!["E".into()],
            next_steps: vec!["N".into()],
            provider_status: Some([("corp".to_owned(), status)].into()),
        };
        let de = diagnosis_lines(&d, "de");
        for want in [
            "Fall 1: S",
            "Befund:",
            "nächste Schritte:",
            "Anbieter corp: nicht erreichbar",
        ] {
            assert!(de.contains(want), "{want}: {de}");
        }
        for english in [
            "case",
            "evidence",
            "next steps",
            "provider corp",
            "unreachable",
        ] {
            assert!(!de.contains(english), "{english}: {de}");
        }
        let en = diagnosis_lines(&d, "en");
        for want in [
            "case 1: S",
            "evidence:",
            "next steps:",
            "provider corp: unreachable",
        ] {
            assert!(en.contains(want), "{want}: {en}");
        }
    }

    /// A VM list this CLI cannot read is said to be so, not shown as an empty table.
    #[test]
    fn an_unreadable_vm_list_says_so() {
        let odd = serde_json::json!([{"name": "web01", "cryptoState": "fromTheFuture"}]);
        let out = super::vm_rows(&odd);
        assert!(out.contains("cannot be read as VMs"), "{out}");
        assert!(super::vm_rows(&serde_json::json!([])).contains("NAME"));
    }
}
