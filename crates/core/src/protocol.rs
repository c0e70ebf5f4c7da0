//! The agent protocol: what a host agent and the server say to each other over their mutual-TLS
//! session. Frames are a 4-byte big-endian length and a JSON message; [`FrameDecoder`] takes bytes
//! as they arrive and yields messages (sans-I/O).
//!
//! The agent dials the server, says [`AgentMessage::Hello`] (with the host's boot id, so the
//! server tells an agent restart from a host restart), reports its inventory and the keys it
//! holds, and answers the server's requests. Key material travels only in
//! [`Command::PushKeys`] and [`Command::EnableEncryption`], as [`SecretBytes`]: wiped when dropped,
//! never shown by `Debug`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

use crate::host::HostCryptoState;
use crate::ids::KeyRef;
use crate::vm::KeyUse;

/// The protocol version this build speaks. 2: the agent reports the progress of long requests
/// (`AgentMessage::Progress`) to a server that speaks 2. 3: requests may belong to a task
/// (`task`), which outlives the session: work a session left running reports and answers in the
/// next under the task's id; the server may cancel a request (`ServerMessage::Cancel`); progress
/// of disk work counts bytes; a VM's report says which operation its journal holds.
pub const VERSION: u32 = 3;

/// The largest frame accepted.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// The largest frame accepted from a peer that has not authenticated (a join: a token, a host
/// name and a certificate request).
pub const MAX_UNAUTHENTICATED_FRAME: usize = 8 * 1024;

/// Key material in a message: hex on the wire, wiped when dropped, hidden from `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(pub Zeroizing<Vec<u8>>);

impl SecretBytes {
    pub fn new(bytes: Vec<u8>) -> SecretBytes {
        SecretBytes(Zeroizing::new(bytes))
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} secret bytes>", self.0.len())
    }
}

impl Serialize for SecretBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let hex: Zeroizing<String> =
            Zeroizing::new(self.0.iter().map(|b| format!("{b:02x}")).collect());
        s.serialize_str(&hex)
    }
}

impl<'de> Deserialize<'de> for SecretBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SecretBytes, D::Error> {
        let text = Zeroizing::new(String::deserialize(d)?);
        if !text.is_ascii() || !text.len().is_multiple_of(2) {
            return Err(serde::de::Error::custom("key material must be hex"));
        }
        let bytes = (0..text.len() / 2)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| serde::de::Error::custom("key material must be hex"))?;
        Ok(SecretBytes::new(bytes))
    }
}

/// A key and its material.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyMaterial {
    pub key: KeyRef,
    pub material: SecretBytes,
}

crate::named_enum! {
    /// A VM's power state.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum PowerState {
        PoweredOn = "poweredOn",
        PoweredOff = "poweredOff",
    }
}

/// A VM as its host reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmReport {
    pub id: String,
    pub name: String,
    /// The VM's directory on the host.
    pub path: String,
    pub encrypted: bool,
    pub power_state: PowerState,
    /// The VM's own KEK (`config.keyId`).
    pub key_id: Option<KeyRef>,
    /// Every KEK the VM needs, with its uses, and whether the host holds it.
    pub keys: Vec<HostKey>,
    /// Disk image paths, in order.
    pub disks: Vec<String>,
    /// The VM-wide operation its journal holds (`encrypt`, `decrypt`, `deepRekey`): under way,
    /// or interrupted and finished when the host holds the VM's key again (protocol 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// How each disk is stored, in the order of `disks` (empty from an older agent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disk_formats: Vec<DiskLayout>,
    /// Which path each disk's data takes while the VM runs, in the order of `disks` (empty when
    /// it is not running).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_paths: Vec<DataPath>,
}

/// The path a running VM's disk data takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataPath {
    /// QEMU's own block driver.
    Qemu,
    /// The fast data path (a vhost-user backend of the agent's).
    Fast,
    /// The fast data path's backend ended while the VM runs: the guest's I/O to the disk waits.
    Lost,
}

impl DataPath {
    pub fn as_str(&self) -> &'static str {
        match self {
            DataPath::Qemu => "qemu",
            DataPath::Fast => "fast",
            DataPath::Lost => "lost",
        }
    }
}

/// One key a VM needs, as the host sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostKey {
    pub key: KeyRef,
    pub uses: Vec<KeyUse>,
    pub on_host: bool,
}

/// What a VM is made of, for creating one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmSpec {
    /// The VM's id, chosen by the server's registry (an agent of an older server makes one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub name: String,
    pub memory_mib: u32,
    pub vcpus: u32,
    /// Sizes of the disks in bytes.
    pub disks: Vec<DiskSpec>,
    /// The VM's KEK (already pushed to the host); `None` makes an unencrypted VM.
    pub key: Option<KeyRef>,
    /// Its network interfaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkSpec>,
    /// How its encrypted disks are stored.
    #[serde(default, skip_serializing_if = "DiskLayout::is_default")]
    pub disk_format: DiskLayout,
}

/// How a VM's encrypted disks are stored: `qcow2` (qcow2 with LUKS inside, opened by QEMU's own
/// driver) or `luks` (a LUKS1 volume in a sparse raw file, served to the guest by the fast data
/// path where the host has it, by QEMU's `luks` driver elsewhere; cryptsetup opens it too).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskLayout {
    #[default]
    Qcow2,
    Luks,
}

impl DiskLayout {
    pub fn is_default(&self) -> bool {
        *self == DiskLayout::Qcow2
    }

    /// Its name in the API and the CLI.
    pub fn as_str(&self) -> &'static str {
        match self {
            DiskLayout::Qcow2 => "qcow2",
            DiskLayout::Luks => "luks",
        }
    }
}

/// A network interface of a VM: written `user` (QEMU's user-mode network: the guest reaches
/// out, nothing reaches in), `network:NAME` (a libvirt network) or `bridge:NAME` (a host bridge).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NetworkSpec {
    User,
    Network(String),
    Bridge(String),
}

/// The most network interfaces a VM has.
pub const MAX_NICS: usize = 4;

/// Why a network is not one a VM can have.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a network: write user, network:NAME or bridge:NAME (NAME of letters, digits, '.', '_', '-')")]
pub struct BadNetwork(pub String);

impl std::str::FromStr for NetworkSpec {
    type Err = BadNetwork;

    fn from_str(text: &str) -> Result<NetworkSpec, BadNetwork> {
        let bad = || BadNetwork(text.to_owned());
        // Names become XML values and QEMU options: plain names only.
        let name = |n: &str| {
            crate::ids::check_name(crate::ids::NameKind::Host, n)
                .map(|()| n.to_owned())
                .map_err(|_| bad())
        };
        match text.split_once(':') {
            None if text == "user" => Ok(NetworkSpec::User),
            Some(("network", n)) => Ok(NetworkSpec::Network(name(n)?)),
            Some(("bridge", n)) => Ok(NetworkSpec::Bridge(name(n)?)),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for NetworkSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NetworkSpec::User => f.write_str("user"),
            NetworkSpec::Network(n) => write!(f, "network:{n}"),
            NetworkSpec::Bridge(n) => write!(f, "bridge:{n}"),
        }
    }
}

impl Serialize for NetworkSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for NetworkSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<NetworkSpec, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The most disks a VM has (each sits behind a PCIe root port made at start).
pub const MAX_DISKS: usize = 8;
/// The largest disk, and the memory a VM may be given, in MiB.
pub const MAX_DISK_BYTES: u64 = 64 << 40;
pub const MIN_MEMORY_MIB: u32 = 16;
pub const MAX_MEMORY_MIB: u32 = 1 << 20;

/// Why a VM's shape is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error("A VM has at most {MAX_DISKS} disks; {0} were asked for")]
    TooManyDisks(usize),
    #[error("A disk of {0} bytes is not possible; give 1 byte to 64 TiB, for example --disk 10G")]
    DiskSize(u64),
    #[error("{0} MiB of memory is not possible; give {MIN_MEMORY_MIB} MiB to 1 TiB, for example --memory 2G")]
    Memory(u32),
    #[error("{0} virtual CPUs are not possible; give 1 to {MAX_VCPUS}, for example --cpus 2")]
    Cpus(u32),
}

/// The most virtual CPUs a VM may have (q35 without an IOMMU for interrupt remapping).
pub const MAX_VCPUS: u32 = 255;

/// Checks a VM's number of virtual CPUs.
pub fn check_vcpus(vcpus: u32) -> Result<(), ShapeError> {
    if (1..=MAX_VCPUS).contains(&vcpus) {
        Ok(())
    } else {
        Err(ShapeError::Cpus(vcpus))
    }
}

/// Checks what a VM is made of: how many disks (with those it has already), their sizes, its
/// memory.
pub fn check_shape(
    disks_before: usize,
    new_disks: &[u64],
    memory_mib: Option<u32>,
) -> Result<(), ShapeError> {
    let total = disks_before.saturating_add(new_disks.len());
    if total > MAX_DISKS {
        return Err(ShapeError::TooManyDisks(total));
    }
    if let Some(&bad) = new_disks.iter().find(|&&s| s == 0 || s > MAX_DISK_BYTES) {
        return Err(ShapeError::DiskSize(bad));
    }
    if let Some(m) = memory_mib.filter(|m| !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(m)) {
        return Err(ShapeError::Memory(m));
    }
    Ok(())
}

/// One disk of a new VM or a disk to add.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskSpec {
    pub size: u64,
    /// Its own KEK instead of the VM's.
    pub own_key: Option<KeyRef>,
}

/// What the server asks of an agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "command")]
pub enum Command {
    PushKeys {
        keys: Vec<KeyMaterial>,
    },
    ForgetKeys {
        keys: Vec<KeyRef>,
    },
    /// Stop every VM and empty the key cache, as a host restart does.
    Reboot,
    EnableEncryption {
        host_key: KeyMaterial,
    },
    DisableEncryption,
    CreateVm {
        spec: VmSpec,
    },
    PowerOn {
        vm: String,
    },
    PowerOff {
        vm: String,
    },
    /// Register the VM in this directory (it is read, not changed).
    Register {
        path: String,
    },
    /// What the VM in this directory is, without registering it (the server decides first).
    Inspect {
        path: String,
    },
    /// Every VM directory in the host's datastore.
    ListVmDirs,
    Unregister {
        vm: String,
    },
    Reload {
        vm: String,
    },
    Delete {
        vm: String,
    },
    Encrypt {
        vm: String,
        key: KeyRef,
        /// How the VM's encrypted disks are stored from now on (unchanged when absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disk_format: Option<DiskLayout>,
    },
    Decrypt {
        vm: String,
    },
    Rekey {
        vm: String,
        key: KeyRef,
        deep: bool,
        /// For a deep rekey: how the VM's encrypted disks are stored from now on.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disk_format: Option<DiskLayout>,
    },
    /// A new disk for a powered-off VM: encrypted with the VM's KEK, or with `disk.own_key`.
    AddDisk {
        vm: String,
        disk: DiskSpec,
    },
    /// Takes over a powered-off VM of the host's runtime that is not Tresor's (a libvirt
    /// domain): its disk images move into a new VM folder as qcow2 (unencrypted; the server
    /// encrypts them next if asked), its definition goes, and the VM is registered with id `id`.
    Adopt {
        domain: String,
        id: String,
    },
    /// What the VM's serial console said from `offset` of its log on (at most
    /// [`MAX_CONSOLE_READ`] bytes).
    ConsoleRead {
        vm: String,
        offset: u64,
    },
    /// Keys typed on the VM's serial console.
    ConsoleWrite {
        vm: String,
        data: Chunk,
    },
    /// A piece of a file for a powered-off VM, in order: the agent writes `data` at `offset` of
    /// the upload, and installs the file when `done` (an image becomes the VM's first disk,
    /// encrypted when the VM is).
    Upload {
        vm: String,
        kind: UploadKind,
        offset: u64,
        data: Chunk,
        done: bool,
    },
}

crate::named_enum! {
    /// What an upload to a VM is.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum UploadKind {
        /// A qcow2 or raw disk image: imported as the VM's boot disk.
        Image = "image",
        /// A Linux kernel, booted directly.
        Kernel = "kernel",
        /// The initial RAM disk of the kernel.
        Initrd = "initrd",
        /// The kernel's command line.
        Cmdline = "cmdline",
        /// cloud-init user data (a NoCloud seed is made at power-on).
        UserData = "user-data",
        /// SSH public keys for cloud-init, one a line.
        SshKey = "ssh-key",
    }
}

impl UploadKind {
    /// The largest file of this kind.
    pub fn max_bytes(self) -> u64 {
        match self {
            UploadKind::Image => MAX_DISK_BYTES,
            UploadKind::Kernel => 256 << 20,
            UploadKind::Initrd => 2 << 30,
            UploadKind::Cmdline => MAX_CMDLINE as u64,
            UploadKind::UserData => 64 << 10,
            UploadKind::SshKey => 16 << 10,
        }
    }
}

/// The most bytes of console output one [`Command::ConsoleRead`] returns.
pub const MAX_CONSOLE_READ: usize = 256 << 10;

/// The most bytes of console input one [`Command::ConsoleWrite`] carries.
pub const MAX_CONSOLE_WRITE: usize = 4096;

/// The longest kernel command line.
pub const MAX_CMDLINE: usize = 2048;

/// The most bytes one [`Command::Upload`] carries (its frame, in base64, stays below
/// [`MAX_FRAME`]).
pub const MAX_CHUNK: usize = 4 << 20;

/// Bytes of an upload: base64 on the wire.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Chunk(pub Vec<u8>);

impl std::fmt::Debug for Chunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Chunk({} bytes)", self.0.len())
    }
}

impl Serialize for Chunk {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Chunk {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Chunk, D::Error> {
        use base64::Engine;
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)?;
        if bytes.len() > MAX_CHUNK {
            return Err(serde::de::Error::custom(format!(
                "a chunk of {} bytes; at most {MAX_CHUNK}",
                bytes.len()
            )));
        }
        Ok(Chunk(bytes))
    }
}

impl Command {
    /// The command's name on the wire (`pushKeys`, `powerOn`, ...), for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Command::PushKeys { .. } => "pushKeys",
            Command::ForgetKeys { .. } => "forgetKeys",
            Command::Reboot => "reboot",
            Command::EnableEncryption { .. } => "enableEncryption",
            Command::DisableEncryption => "disableEncryption",
            Command::CreateVm { .. } => "createVm",
            Command::PowerOn { .. } => "powerOn",
            Command::PowerOff { .. } => "powerOff",
            Command::Register { .. } => "register",
            Command::Inspect { .. } => "inspect",
            Command::ListVmDirs => "listVmDirs",
            Command::Unregister { .. } => "unregister",
            Command::Reload { .. } => "reload",
            Command::Delete { .. } => "delete",
            Command::Encrypt { .. } => "encrypt",
            Command::Decrypt { .. } => "decrypt",
            Command::Rekey { .. } => "rekey",
            Command::AddDisk { .. } => "addDisk",
            Command::Adopt { .. } => "adopt",
            Command::ConsoleRead { .. } => "consoleRead",
            Command::ConsoleWrite { .. } => "consoleWrite",
            Command::Upload { .. } => "upload",
        }
    }

    /// Whether the command carries key material.
    pub fn carries_secrets(&self) -> bool {
        matches!(
            self,
            Command::PushKeys { .. } | Command::EnableEncryption { .. }
        )
    }
}

/// How an agent answers a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "result")]
pub enum Reply {
    Done,
    /// Output of a serial console: `data` begins at `offset` of the log (0 when the log began
    /// anew since the offset asked for: the VM was powered on again), `next` is where to go on.
    Console {
        offset: u64,
        next: u64,
        data: Chunk,
        running: bool,
    },
    Vm {
        vm: VmReport,
    },
    VmDirs {
        paths: Vec<String>,
    },
    Failed {
        code: String,
        message: String,
    },
}

/// Server to agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum ServerMessage {
    /// Enrolment done: the agent's certificate and the CA of the server's agent endpoint (PEM).
    Joined {
        certificate: String,
        ca: String,
    },
    JoinRefused {
        message: String,
    },
    Welcome {
        host: String,
        protocol: u32,
    },
    Request {
        id: u64,
        body: Command,
        /// The server's task this request carries out: work that outlives its session is
        /// reported and answered in the next one under this id (protocol 3).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task: Option<String>,
    },
    /// Stop request `id` where that is safe and undo what it did (protocol 3). A request that
    /// cannot stop finishes; one that stops answers `Failed` with the code `cancelled`.
    Cancel {
        id: u64,
    },
    HeartbeatAck {
        seq: u64,
    },
    /// Nothing: sent after the agent answered a request that carried key material, at least as
    /// long as that request. The TLS library decrypts a record where it received it; this frame's
    /// record lands there and overwrites the key material's plaintext. The agent ignores it.
    Padding {
        fill: String,
    },
}

impl ServerMessage {
    /// A padding frame of at least `len` bytes.
    pub fn padding(len: usize) -> ServerMessage {
        ServerMessage::Padding {
            fill: " ".repeat(len),
        }
    }
}

/// Agent to server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum AgentMessage {
    /// Enrol with a one-time token: the first and only message of a connection without a client
    /// certificate. `csr` is the agent's certificate signing request (PEM); its key stays on the
    /// host.
    Join {
        token: String,
        host: String,
        csr: String,
    },
    Hello {
        host: String,
        protocol: u32,
        agent_version: String,
        /// Changes when the host restarts, not when the agent does.
        boot_id: String,
        crypto_state: HostCryptoState,
        keys_held: Vec<KeyRef>,
    },
    Inventory {
        vms: Vec<VmReport>,
        keys_held: Vec<KeyRef>,
        /// The task whose work holds the host while this is reported (work an earlier session
        /// left; the report is then the last one made before it, protocol 3).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        working: Option<String>,
    },
    Reply {
        id: u64,
        reply: Reply,
        /// The task of the request (protocol 3). Work a session left running is answered in the
        /// next session with `id` 0 and its task.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task: Option<String>,
    },
    /// Something happened on the host (a VM died, a key arrived).
    Notice {
        vm: Option<String>,
        kind: String,
        message: String,
    },
    Heartbeat {
        seq: u64,
    },
    /// Request `id` is still being carried out and has come this far (`done` of `total`, in
    /// the units of the work: basis points of a disk's copy). A server waits for a request as
    /// long as it progresses, so that no work is bounded by a timeout, only by silence.
    Progress {
        id: u64,
        done: u64,
        total: u64,
        /// The task of the request (protocol 3; `id` 0 for work an earlier session left).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task: Option<String>,
    },
}

/// Why a frame cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("Frame of {0} bytes exceeds the limit of {1} bytes")]
    TooLarge(usize, usize),
    #[error("Invalid message: {0}")]
    Json(#[from] serde_json::Error),
}

/// Encodes a message as one frame. The buffer may hold key material: it is wiped when dropped.
pub fn encode<T: Serialize>(message: &T) -> Result<Zeroizing<Vec<u8>>, FrameError> {
    let body = Zeroizing::new(serde_json::to_vec(message)?);
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len(), MAX_FRAME));
    }
    let mut out = Zeroizing::new(Vec::with_capacity(4 + body.len()));
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Collects bytes and yields whole frames.
pub struct FrameDecoder {
    buf: Zeroizing<Vec<u8>>,
    limit: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::with_limit(MAX_FRAME)
    }
}

impl std::fmt::Debug for FrameDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FrameDecoder({} bytes buffered)", self.buf.len())
    }
}

impl FrameDecoder {
    /// A decoder that refuses frames longer than `limit` bytes (at most [`MAX_FRAME`]).
    pub fn with_limit(limit: usize) -> FrameDecoder {
        FrameDecoder {
            buf: Zeroizing::new(Vec::new()),
            limit: limit.min(MAX_FRAME),
        }
    }

    /// From now on frames up to `limit` bytes are taken (after the peer authenticated).
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit.min(MAX_FRAME);
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// How many bytes wait to be decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next whole message, if one has arrived. A frame that announces more than the
    /// decoder's limit is an error before it is read.
    pub fn next_message<T: for<'de> Deserialize<'de>>(&mut self) -> Result<Option<T>, FrameError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > self.limit {
            return Err(FrameError::TooLarge(len, self.limit));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let message = serde_json::from_slice(&self.buf[4..4 + len]);
        // Wipe what was consumed before dropping it.
        let rest = self.buf[4 + len..].to_vec();
        self.buf = Zeroizing::new(rest);
        Ok(Some(message?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_through_frames_split_anywhere() {
        let msg = ServerMessage::Request {
            id: 7,
            task: None,
            body: Command::PushKeys {
                keys: vec![KeyMaterial {
                    key: KeyRef::new("kms", "k1"),
                    material: SecretBytes::new(vec![0xAB; 32]),
                }],
            },
        };
        let frame = encode(&msg).unwrap();
        let mut d = FrameDecoder::default();
        for chunk in frame.chunks(5) {
            assert!(d.next_message::<ServerMessage>().unwrap().is_none());
            d.push(chunk);
        }
        assert_eq!(d.next_message::<ServerMessage>().unwrap(), Some(msg));
        assert!(d.next_message::<ServerMessage>().unwrap().is_none());
    }

    #[test]
    fn key_material_never_shows_in_debug() {
        let k = KeyMaterial {
            key: KeyRef::new("kms", "k1"),
            material: SecretBytes::new(vec![0xAB; 32]),
        };
        let shown = format!("{:?}", Command::PushKeys { keys: vec![k] });
        assert!(
            shown.contains("<32 secret bytes>")
                && !shown.contains("171")
                && !shown.to_lowercase().contains("abab"),
            "{shown}"
        );
    }

    #[test]
    fn oversized_and_malformed_frames_are_errors() {
        let mut d = FrameDecoder::default();
        d.push(&[0xFF, 0xFF, 0xFF, 0xFF]);
        assert!(matches!(
            d.next_message::<AgentMessage>(),
            Err(FrameError::TooLarge(..))
        ));
        let mut d = FrameDecoder::default();
        d.push(&[0, 0, 0, 2, b'{', b'x']);
        assert!(matches!(
            d.next_message::<AgentMessage>(),
            Err(FrameError::Json(_))
        ));
    }

    #[test]
    fn non_hex_key_material_is_an_error_not_a_panic() {
        let json = r#"{"key":{"keyId":"k","providerId":{"id":"p"}},"material":"a\u00e9b"}"#;
        assert!(serde_json::from_str::<KeyMaterial>(json).is_err());
        let json = r#"{"key":{"keyId":"k","providerId":{"id":"p"}},"material":"zz"}"#;
        assert!(serde_json::from_str::<KeyMaterial>(json).is_err());
    }

    #[test]
    fn the_wire_form_is_tagged_json() {
        let hello = AgentMessage::Heartbeat { seq: 3 };
        let frame = encode(&hello).unwrap();
        assert_eq!(&frame[4..], br#"{"type":"heartbeat","seq":3}"#);
    }

    #[test]
    fn a_commands_name_is_its_tag_on_the_wire() {
        for c in [
            Command::PushKeys { keys: Vec::new() },
            Command::Reboot,
            Command::DisableEncryption,
            Command::ListVmDirs,
            Command::PowerOn { vm: "a".into() },
            Command::Decrypt { vm: "a".into() },
        ] {
            let v = serde_json::to_value(&c).unwrap();
            assert_eq!(v["command"], c.name());
        }
    }
}
