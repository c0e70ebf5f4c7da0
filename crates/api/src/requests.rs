//! What the API's operations take, as types: the server reads them (refusing a field it does not
//! know), clients write them, and the OpenAPI document's request schemas are generated from them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// `POST /api/v1/vms`: a new VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateVm {
    #[schemars(regex(pattern = tresor_core::ids::NAME_PATTERN))]
    pub name: String,
    #[schemars(regex(pattern = tresor_core::ids::NAME_PATTERN))]
    pub host: String,
    /// Disk sizes in bytes; each is encrypted with the VM's key when `encrypt` is set.
    #[serde(default)]
    #[schemars(length(max = tresor_core::protocol::MAX_DISKS), inner(range(min = 1, max = tresor_core::protocol::MAX_DISK_BYTES)))]
    pub disks: Vec<u64>,
    #[serde(default = "default_memory")]
    #[schemars(range(min = tresor_core::protocol::MIN_MEMORY_MIB, max = tresor_core::protocol::MAX_MEMORY_MIB))]
    pub memory_mib: u32,
    /// Virtual CPUs.
    #[serde(default = "default_cpus")]
    #[schemars(range(min = 1, max = tresor_core::protocol::MAX_VCPUS))]
    pub cpus: u32,
    #[serde(default)]
    pub encrypt: bool,
    /// The provider of its keys; without it, the default provider.
    #[serde(default)]
    pub provider: Option<String>,
    /// Sizes of disks that get a key of their own (after the ones in `disks`).
    #[serde(default)]
    #[schemars(length(max = tresor_core::protocol::MAX_DISKS), inner(range(min = 1, max = tresor_core::protocol::MAX_DISK_BYTES)))]
    pub own_key_disks: Vec<u64>,
    /// Network interfaces: `user` (QEMU's user-mode network), `network:NAME` (a libvirt network,
    /// on a host whose agent runs libvirt) or `bridge:NAME` (a host bridge).
    #[serde(default)]
    #[schemars(length(max = tresor_core::protocol::MAX_NICS), inner(regex(pattern = NETWORK_PATTERN)))]
    pub networks: Vec<String>,
    /// How its encrypted disks are stored: `qcow2` (the default: qcow2 with LUKS inside) or
    /// `luks` (a LUKS1 volume in a raw file, served to the guest by the host's fast data path;
    /// cryptsetup and QEMU's own `luks` driver open it too). Encrypted VMs only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_format: Option<DiskFormat>,
}

/// How a VM's encrypted disks are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// qcow2 with LUKS inside, opened by QEMU's own driver.
    Qcow2,
    /// A LUKS1 volume in a sparse raw file: the fast data path.
    Luks,
}

impl From<DiskFormat> for tresor_core::protocol::DiskLayout {
    fn from(f: DiskFormat) -> Self {
        match f {
            DiskFormat::Qcow2 => tresor_core::protocol::DiskLayout::Qcow2,
            DiskFormat::Luks => tresor_core::protocol::DiskLayout::Luks,
        }
    }
}

/// What a network of [`CreateVm`] looks like.
pub const NETWORK_PATTERN: &str = "^(user|(network|bridge):[A-Za-z0-9][A-Za-z0-9._-]{0,62})$";

/// The memory of a VM when a request names none, in MiB.
pub const DEFAULT_MEMORY_MIB: u32 = 256;

fn default_memory() -> u32 {
    DEFAULT_MEMORY_MIB
}

fn default_cpus() -> u32 {
    1
}

/// `POST /api/v1/vms/unlock`: which VMs to unlock (names, all, a host's or a provider's).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UnlockMany {
    #[serde(default)]
    pub names: Vec<String>,
    #[serde(default)]
    pub all: bool,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub provider: Option<String>,
}

/// `POST /api/v1/hosts/token`: a one-time join token.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenRequest {
    /// How long the token stays valid, in seconds.
    #[serde(default)]
    pub ttl_secs: Option<i64>,
    /// The host the token enrols; without it, any name not enrolled yet.
    #[serde(default)]
    #[schemars(regex(pattern = tresor_core::ids::NAME_PATTERN))]
    pub host: Option<String>,
    /// The token may replace the enrolled host of that name (its old certificate is refused
    /// from then on).
    #[serde(default)]
    pub replace: bool,
}

/// `POST /api/v1/vms/register`: one VM folder on a host, or every VM found there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterRequest {
    #[schemars(regex(pattern = tresor_core::ids::NAME_PATTERN))]
    pub host: String,
    /// One VM's folder; without it, `all`.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub all: bool,
}

/// `POST /api/v1/vms/{name}/encrypt` and `/rekey`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CryptoRequest {
    /// The provider of the new key; without it, the VM's (or the default).
    #[serde(default)]
    pub provider: Option<String>,
    /// For a rekey: re-encrypt the disks too.
    #[serde(default)]
    pub deep: bool,
    /// For encrypt and a deep rekey: how the VM's encrypted disks are stored from now on
    /// (`qcow2` or `luks`; a deep rekey to `luks` moves its qcow2 disks to raw LUKS volumes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_format: Option<DiskFormat>,
}

/// `POST /api/v1/vms/adopt`: a powered-off libvirt domain of a host becomes a Tresor VM of the
/// same name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdoptVm {
    /// The domain's name (the VM's name from now on).
    #[schemars(regex(pattern = tresor_core::ids::NAME_PATTERN))]
    pub domain: String,
    #[schemars(regex(pattern = tresor_core::ids::NAME_PATTERN))]
    pub host: String,
    /// Encrypt its disks once it is adopted (needs Cryptographer.Encrypt).
    #[serde(default)]
    pub encrypt: bool,
    /// The provider of its key when `encrypt`; without it, the default provider.
    #[serde(default)]
    pub provider: Option<String>,
}

/// `POST /api/v1/vms/{name}/add-disk`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddDisk {
    /// Its size in bytes.
    #[schemars(range(min = 1, max = tresor_core::protocol::MAX_DISK_BYTES))]
    pub size: u64,
    /// A key of its own instead of the VM's.
    #[serde(default)]
    pub own_key: bool,
}

/// The query of `GET /api/v1/vms`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VmQuery {
    /// The VMs hosts report that the registry does not admit, instead of the registered ones.
    #[serde(default)]
    pub discovered: Option<bool>,
    /// Only locked VMs.
    #[serde(default)]
    pub locked: Option<bool>,
    /// Only the VMs of this host.
    #[serde(default)]
    pub host: Option<String>,
    /// Only the VMs whose key comes from this provider.
    #[serde(default)]
    pub provider: Option<String>,
    /// At most this many VMs (the number that match is in `X-Total-Count`).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Skip this many VMs first.
    #[serde(default)]
    pub offset: Option<usize>,
}

/// The query of `GET /api/v1/events` and `/events/stream`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EventQuery {
    #[serde(default)]
    pub vm: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub provider: Option<String>,
    /// An event type, for example `vm.locked.kmsClusterError`.
    #[serde(default, rename = "type")]
    pub event_type: Option<String>,
    /// Only events from this Unix second on.
    #[serde(default)]
    pub since: Option<i64>,
    /// Only events after this id.
    #[serde(default)]
    pub after: Option<i64>,
    /// At most this many events.
    #[serde(default)]
    pub limit: Option<u32>,
    /// The language of the messages: `en` (the default) or `de`.
    #[serde(default)]
    #[schemars(schema_with = "lang_schema")]
    pub lang: Option<String>,
}

/// A query naming only the language of the answer's messages (`GET .../diagnose`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LangQuery {
    /// `en` (the default) or `de`.
    #[serde(default)]
    #[schemars(schema_with = "lang_schema")]
    pub lang: Option<String>,
}

/// Where a piece of a file goes (`PUT /api/v1/vms/{name}/files/{kind}`). A file may come in
/// one request, or in pieces of at most [`MAX_FILE_PIECE`] bytes, in order: each names its
/// `offset`, and all but the last say `more=true`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileQuery {
    /// Where in the file this piece begins (0, the default, starts the file anew).
    #[serde(default)]
    pub offset: Option<u64>,
    /// Whether more pieces follow (default false: this piece ends the file).
    #[serde(default)]
    pub more: Option<bool>,
}

/// The most bytes one request of a file carries.
pub const MAX_FILE_PIECE: u64 = 64 << 20;

/// Where to read a serial console's log from (`GET /api/v1/vms/{name}/console`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsoleQuery {
    /// The byte of the log to begin at (0, the default: its beginning).
    #[serde(default)]
    pub offset: Option<u64>,
}

/// Keys typed on a VM's serial console (`POST /api/v1/vms/{name}/console`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsoleInput {
    /// What is typed, at most 4096 bytes (a newline ends a line, as Enter does).
    #[schemars(length(max = 4096))]
    pub input: String,
}

/// `POST /api/v1/login`.
#[derive(Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub user: String,
    #[schemars(with = "String")]
    pub password: Zeroizing<String>,
}

/// `POST /api/v1/users`: a new user with its password (at least 12 characters) and roles.
#[derive(Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    #[schemars(regex(pattern = tresor_core::ids::NAME_PATTERN))]
    pub name: String,
    #[schemars(with = "String", length(min = 12))]
    pub password: Zeroizing<String>,
    #[serde(default)]
    pub roles: Vec<String>,
}

/// `PUT /api/v1/users/{name}/password`: one's own needs the current password.
#[derive(Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewPassword {
    #[schemars(with = "String", length(min = 12))]
    pub password: Zeroizing<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub current_password: Option<Zeroizing<String>>,
}

macro_rules! hide_secrets {
    ($($t:ident: $($shown:ident),*;)*) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($t))$(.field(stringify!($shown), &self.$shown))*.finish_non_exhaustive()
            }
        }
    )*};
}

hide_secrets! {
    Login: user;
    NewUser: name, roles;
    NewPassword: ;
    AddProvider: name, endpoints;
    SignedCertificate: ;
}

/// `POST /api/v1/users/{name}/roles`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleGrant {
    pub role: String,
}

/// `POST /api/v1/roles`: a role of one's own (changed when it exists).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRole {
    #[schemars(regex(pattern = tresor_core::ids::NAME_PATTERN))]
    pub name: String,
    /// Privilege ids, for example `Cryptographer.RegisterVM`.
    pub privileges: Vec<String>,
}

/// `PUT /api/v1/settings/{key}` and `PUT /api/v1/me/lang`: a value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetValue {
    pub value: String,
}

/// `POST /api/v1/providers`: a key provider, and how the server proves itself to it: a client
/// certificate and key uploaded, `selfSigned`, or `csr` (the provider signs it later).
#[derive(Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddProvider {
    #[schemars(regex(pattern = tresor_core::ids::NAME_PATTERN))]
    pub name: String,
    /// `host:port`, in the order the server fails over.
    pub endpoints: Vec<String>,
    /// The CA that signed the provider's certificate (PEM).
    pub ca_pem: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub client_key_pem: Option<Zeroizing<String>>,
    #[serde(default)]
    pub self_signed: bool,
    #[serde(default)]
    pub csr: bool,
    #[serde(default)]
    pub default: bool,
}

/// `POST /api/v1/providers/{name}/certificate`: the certificate the provider signed from the
/// server's CSR.
#[derive(Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignedCertificate {
    pub client_cert_pem: String,
}

/// The languages of messages.
fn lang_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "enum": ["en", "de", null] })
}

/// The query of `GET /api/v1/tasks`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskQuery {
    /// Only the tasks still running (or cancelling).
    #[serde(default)]
    pub running: Option<bool>,
    /// At most this many, newest first (100 unless said).
    #[serde(default)]
    pub limit: Option<usize>,
}
