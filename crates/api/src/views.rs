//! What the API answers, as types: the server renders them and every client reads them, so that
//! a field or a state that one side changes is a compile error on the other, not a surprise at
//! run time. The JSON shape is the one `../shared/spec/surface.md` fixes.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
pub use tresor_core::protocol::PowerState;
pub use tresor_core::vm::{ConnectionState, CryptoState, LockReason};

/// A schema of the names `names` (the core's enums list every variant, so the document follows
/// them).
fn names_schema(names: &[&str], nullable: bool) -> schemars::Schema {
    let mut values: Vec<serde_json::Value> = names.iter().map(|n| (*n).into()).collect();
    if nullable {
        values.push(serde_json::Value::Null);
    }
    schemars::json_schema!({ "enum": values })
}

fn power_state_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    names_schema(
        &[
            PowerState::PoweredOn.as_str(),
            PowerState::PoweredOff.as_str(),
        ],
        false,
    )
}

fn connection_state_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    names_schema(&ConnectionState::ALL.map(ConnectionState::as_str), false)
}

fn crypto_state_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    names_schema(&CryptoState::ALL.map(CryptoState::as_str), false)
}

fn lock_reason_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    names_schema(&LockReason::ALL.map(LockReason::as_str), true)
}

/// A VM as `GET /api/v1/vms/{name}` and the VM list answer it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Vm {
    pub name: String,
    /// The id the server's registry gave it.
    pub id: String,
    pub host: String,
    /// Its folder on the host.
    pub path: String,
    #[schemars(schema_with = "power_state_schema")]
    pub power_state: PowerState,
    #[schemars(schema_with = "connection_state_schema")]
    pub connection_state: ConnectionState,
    #[schemars(schema_with = "crypto_state_schema")]
    pub crypto_state: CryptoState,
    /// Why it is locked; `None` unless `crypto_state` is `Locked`.
    #[schemars(schema_with = "lock_reason_schema")]
    pub lock_reason: Option<LockReason>,
    pub config: VmConfig,
    pub disks: Vec<Disk>,
}

/// `config` of a VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VmConfig {
    /// The VM's own key; `None` for an unencrypted VM.
    pub key_id: Option<KeyId>,
}

/// A key as the surface names it: its id on a provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyId {
    pub key_id: String,
    pub provider_id: ProviderId,
}

/// `providerId` of a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProviderId {
    pub id: String,
}

/// One disk of a VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Disk {
    pub path: String,
    /// The key its passphrase is wrapped with; `None` for an unencrypted disk.
    pub key_id: Option<KeyId>,
    /// Whether its host holds that key.
    pub key_available: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_reads_and_writes_as_the_surface_fixes_it() {
        let text = r#"{"name":"web01","id":"a1","host":"host-1","path":"/d/web01",
            "powerState":"poweredOff","connectionState":"invalid","cryptoState":"locked",
            "lockReason":"kmsClusterError",
            "config":{"keyId":{"keyId":"k1","providerId":{"id":"tresor-kms"}}},
            "disks":[{"path":"/d/web01/disk0.qcow2","keyId":{"keyId":"k1","providerId":{"id":"tresor-kms"}},"keyAvailable":false}]}"#;
        let vm: Vm = serde_json::from_str(text).unwrap();
        assert_eq!(vm.crypto_state, CryptoState::Locked);
        assert_eq!(vm.lock_reason, Some(LockReason::KmsClusterError));
        let back: serde_json::Value = serde_json::to_value(&vm).unwrap();
        let orig: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(back, orig);
    }
}
