//! What the API's operations take, as types: the server reads them (refusing a field it does not
//! know), clients write them, and the OpenAPI document's request schemas are generated from them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `POST /api/v1/vms`: a new VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateVm {
    pub name: String,
    pub host: String,
    /// Disk sizes in bytes; each is encrypted with the VM's key when `encrypt` is set.
    #[serde(default)]
    pub disks: Vec<u64>,
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    #[serde(default)]
    pub encrypt: bool,
    /// The provider of its keys; without it, the default provider.
    #[serde(default)]
    pub provider: Option<String>,
    /// Sizes of disks that get a key of their own (after the ones in `disks`).
    #[serde(default)]
    pub own_key_disks: Vec<u64>,
}

/// The memory of a VM when a request names none, in MiB.
pub const DEFAULT_MEMORY_MIB: u32 = 256;

fn default_memory() -> u32 {
    DEFAULT_MEMORY_MIB
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
}

/// `POST /api/v1/vms/{name}/add-disk`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddDisk {
    /// Its size in bytes.
    pub size: u64,
    /// A key of its own instead of the VM's.
    #[serde(default)]
    pub own_key: bool,
}
