//! What the API answers, as types: the server renders them and every client reads them, so that
//! a field or a state that one side changes is a compile error on the other, not a surprise at
//! run time. The JSON shape is the one `../shared/spec/surface.md` fixes.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
pub use tresor_core::host::HostCryptoState;
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
    names_schema(&PowerState::ALL.map(PowerState::as_str), false)
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
    /// How it is stored: `qcow2` (qcow2, with LUKS inside when encrypted) or `luks` (a LUKS1
    /// volume in a raw file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// While the VM runs: `fast` (served by the host's fast data path), `qemu` (opened by QEMU's
    /// own driver) or `lost` (the fast data path's backend ended: the guest's I/O to the disk
    /// waits; power the VM off and on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_path: Option<String>,
}

fn host_crypto_state_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    names_schema(&HostCryptoState::ALL.map(HostCryptoState::as_str), false)
}

/// A host as `GET /api/v1/hosts` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Host {
    pub name: String,
    /// Whether its agent's session is up now.
    pub connected: bool,
    /// Its encryption mode.
    #[schemars(schema_with = "host_crypto_state_schema")]
    pub crypto_state: HostCryptoState,
    pub vm_count: u64,
    pub locked_vm_count: u64,
    /// Keys its VMs report as held in its key cache.
    pub keys_held: u64,
    /// When its agent last spoke (Unix seconds).
    pub last_seen: i64,
}

/// A host with its VMs (`GET /api/v1/hosts/{name}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HostWithVms {
    #[serde(flatten)]
    pub host: Host,
    pub vms: Vec<Vm>,
}

/// An event, its message in the language asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Event {
    pub id: i64,
    /// Unix seconds.
    pub time: i64,
    /// `area.what[.why]`, for example `vm.locked.kmsClusterError`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// `info`, `warning` or `error`.
    pub severity: String,
    pub vm: Option<String>,
    pub host: Option<String>,
    pub provider: Option<String>,
    /// Who caused it, where a person did.
    pub user: Option<String>,
    pub message: String,
}

/// An active (or acknowledged) alarm, with what it means and what to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Alarm {
    pub id: i64,
    /// `vm.locked`, `provider.unreachable`, `key.push.failed`, …
    pub kind: String,
    /// What it is about: `vm:web01`, `provider:corp-kms`, `host:host-1`.
    pub object: String,
    pub reason: String,
    /// Unix seconds.
    pub raised: i64,
    pub cleared: Option<i64>,
    pub acknowledged_by: Option<String>,
    pub message: String,
    pub next_step: String,
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

/// `POST /api/v1/hosts/token`: a one-time join token for an agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JoinToken {
    /// Given once; the server keeps only its hash.
    pub token: String,
    pub ttl_secs: i64,
    /// The only host name it enrols, when it names one.
    pub host: Option<String>,
    /// Whether it replaces an enrolled host of that name.
    pub replace: bool,
}

/// A host's encryption mode after `enable-encryption` or `disable-encryption`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostMode {
    pub host: String,
    #[schemars(schema_with = "host_crypto_state_schema")]
    pub crypto_state: HostCryptoState,
}

/// A host removed (`DELETE /api/v1/hosts/{name}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HostRemoved {
    pub host: String,
    pub removed: bool,
}

/// A host whose VMs were stopped and whose key cache was emptied (`POST .../reboot`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HostRebooted {
    pub host: String,
    pub rebooted: bool,
}

/// An alarm acknowledged (`POST /api/v1/alarms/{id}/ack`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlarmAcknowledged {
    pub alarm: i64,
    pub acknowledged_by: String,
}

/// A VM a host reports that the registry does not admit (`GET /api/v1/vms?discovered=true`):
/// shown, never unlocked, until an operator registers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveredVm {
    pub name: String,
    /// The id its folder names.
    pub id: String,
    pub host: String,
    pub path: String,
    pub encrypted: bool,
    #[schemars(schema_with = "power_state_schema")]
    pub power_state: PowerState,
    pub config: VmConfig,
    /// Every key its folder names.
    pub key_ids: Vec<KeyId>,
    /// Always `true`.
    pub discovered: bool,
    /// Why it is not admitted: `kind` (`unknown`, `idOfAnotherVm`, `otherId`, `otherHost`,
    /// `foreignKey`) and what it conflicts with.
    pub reason: serde_json::Value,
    pub message: String,
    pub next_step: String,
}

/// The answer of an operation on a VM (`unregister`, `reload`, `delete`, `encrypt`, `decrypt`,
/// `rekey`): which one is done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VmDone {
    pub vm: String,
    pub done: String,
}

/// A VM powered on or off.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VmPower {
    pub vm: String,
    #[schemars(schema_with = "power_state_schema")]
    pub power_state: PowerState,
}

/// One VM's unlock: `requested` (its keys are on their way to its host) or `nothing to do`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VmUnlock {
    pub vm: String,
    pub unlock: String,
}

/// The unlock of many VMs: those whose keys are on their way, and those that cannot be
/// unlocked now with the reason (the client follows the VMs' state for progress).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UnlockStarted {
    pub requested: Vec<String>,
    pub failed: Vec<UnlockFailed>,
    /// The task that follows the requested VMs until each is unlocked (when any was requested).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
}

/// A VM that cannot be unlocked now: the key its provider did not give, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UnlockFailed {
    pub vm: String,
    pub key_id: KeyId,
    pub code: crate::ErrorCode,
    pub message: String,
}

/// The VMs a `register` admitted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Registered {
    pub registered: Vec<String>,
}

impl KeyId {
    /// The surface's name of a key.
    pub fn of(key: &tresor_core::ids::KeyRef) -> KeyId {
        KeyId {
            key_id: key.key_id.clone(),
            provider_id: ProviderId {
                id: key.provider().to_owned(),
            },
        }
    }
}

/// A key provider (`GET /api/v1/providers/{name}`): its endpoints, the trust between it and the
/// server, whether it is the default, and what the last probe found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Provider {
    pub name: String,
    /// `host:port`, in the order the server fails over.
    pub endpoints: Vec<String>,
    pub is_default: bool,
    pub trust: ProviderTrust,
    /// `None` until the first probe.
    pub status: Option<ProviderStatus>,
}

/// The certificates between a provider and the server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderTrust {
    /// The CA the server trusts the provider's certificate with.
    pub ca: Option<CertStatus>,
    /// The server's client certificate at the provider; `None` while a CSR waits to be signed.
    pub client: Option<CertStatus>,
    pub awaiting_signed_certificate: bool,
}

/// A provider just added, with what to take to its administrator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProviderAdded {
    #[serde(flatten)]
    pub provider: Provider,
    pub added: Added,
}

/// What adding a provider produced for the operator to take to the provider's administrator.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Added {
    /// The self-signed client certificate the provider must trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    /// The CSR the provider must sign.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr: Option<String>,
}

/// A certificate's facts for an operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertStatus {
    /// `ca`, `client` or `server`.
    pub which: String,
    pub subject: String,
    /// Unix seconds.
    pub not_after: i64,
    pub days_left: i64,
    pub expiring: bool,
    pub expired: bool,
}

/// One endpoint as the last probe found it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStatus {
    pub address: String,
    pub reachable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// The KMIP versions it speaks.
    pub versions: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_certificate: Option<CertStatus>,
}

/// A provider's state as the probe found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Health {
    /// Every endpoint answers.
    Ok,
    /// Some endpoint answers, another does not.
    Degraded,
    /// No endpoint answers.
    Unreachable,
    /// The server's client certificate is still to be signed (CSR).
    AwaitingCertificate,
    /// The stored trust cannot be used (see `message`).
    Misconfigured,
}

/// A provider's status (`GET /api/v1/providers/{name}/status` probes it now).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderStatus {
    pub name: String,
    pub health: Health,
    /// The endpoint the server uses now (it fails over in the listed order).
    pub active_endpoint: Option<String>,
    /// Unix seconds.
    pub checked_at: i64,
    pub endpoints: Vec<EndpointStatus>,
    pub certificates: Vec<CertStatus>,
    /// Who made the provider's KMIP server, as it says (KMIP Query): `Tresor` for `tresor kms`.
    /// The last answer is kept while the provider does not answer.
    #[serde(default)]
    pub vendor: Option<String>,
    /// What it means and what to do, for a person.
    pub message: String,
}

/// A provider made the default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderDefault {
    pub provider: String,
    pub is_default: bool,
}

/// A provider removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProviderRemoved {
    pub provider: String,
    pub removed: bool,
}

/// An API token from a login.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoginToken {
    pub token: String,
    pub expires_in_secs: i64,
}

impl std::fmt::Debug for LoginToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginToken")
            .field("expires_in_secs", &self.expires_in_secs)
            .finish_non_exhaustive()
    }
}

/// The user a token belongs to (`GET /api/v1/me`), with what it may do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Me {
    pub user: String,
    pub roles: Vec<String>,
    /// Privilege ids, for example `Cryptographer.RegisterVM`.
    pub privileges: Vec<String>,
    /// `en` or `de`.
    pub lang: String,
}

/// A user's language, remembered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UserLang {
    pub user: String,
    pub lang: String,
}

/// A user and the roles granted to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct User {
    pub name: String,
    pub roles: Vec<String>,
}

/// A user's roles after a grant or a revocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UserRoles {
    pub user: String,
    pub roles: Vec<String>,
}

/// A user or a role removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Removed {
    pub name: String,
    pub removed: bool,
}

/// A role and its privileges.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Role {
    pub name: String,
    /// Built-in roles cannot be changed or removed.
    pub built_in: bool,
    pub privileges: Vec<String>,
}

/// A password set: the sessions it ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PasswordSet {
    pub user: String,
    /// Always `set`.
    pub password: String,
    pub tokens_revoked: u64,
}

/// A session ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoggedOut {
    pub user: String,
    pub logged_out: bool,
}

/// One setting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Setting {
    pub key: String,
    pub value: String,
}

/// Every setting (`GET /api/v1/settings`), by key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Settings {
    /// `automatic` or `manual`.
    #[serde(rename = "unlock.policy")]
    pub unlock_policy: String,
}

/// A VM's diagnosis (`GET /api/v1/vms/{name}/diagnose`): which case of the locked-VM procedure
/// applies, the evidence, and the next steps, in the language asked for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Diagnosis {
    pub vm: String,
    /// The procedure's case (1, 3 or 5); `None` when the VM is not locked or the cause is not
    /// known yet.
    pub case: Option<u8>,
    pub summary: String,
    pub evidence: Vec<String>,
    pub next_steps: Vec<String>,
    /// The status of each provider involved, by name; only for users who may read providers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_status: Option<std::collections::BTreeMap<String, ProviderStatus>>,
}

/// What a VM's serial console said (`GET /api/v1/vms/{name}/console`): the bytes of its log from
/// `offset` on, base64 in `data`; ask again from `next` for more. `offset` is 0 when the log began
/// anew since the offset asked for (the VM was powered on again).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsoleOutput {
    pub vm: String,
    pub offset: u64,
    pub next: u64,
    /// The bytes, base64.
    pub data: String,
    /// Whether the VM runs (input reaches it).
    pub running: bool,
}

pub use tresor_core::task::{ProgressUnit, TaskKind, TaskState};

fn task_kind_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    names_schema(&TaskKind::ALL.map(TaskKind::as_str), false)
}

fn task_state_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    names_schema(&TaskState::ALL.map(TaskState::as_str), false)
}

fn progress_unit_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    names_schema(&ProgressUnit::ALL.map(ProgressUnit::as_str), false)
}

/// Long work on the server and its hosts (encrypt, decrypt, rekey, unlock of many VMs, register
/// of a host's folders), as `GET /api/v1/tasks/{id}` answers it, and the answer (202) of the
/// operations that start one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    pub id: String,
    #[schemars(schema_with = "task_kind_schema")]
    pub kind: TaskKind,
    #[schemars(schema_with = "task_state_schema")]
    pub state: TaskState,
    /// Who started it.
    pub user: String,
    pub vm: Option<String>,
    pub host: Option<String>,
    pub progress: TaskProgress,
    /// Whether it can be cancelled now, and what cancelling does.
    pub cancellable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_does: Option<String>,
    /// What it did, once it succeeded: the VM (disk work), the VMs registered or unlocked.
    pub result: Option<serde_json::Value>,
    /// Why it failed or what its cancellation left.
    pub error: Option<TaskError>,
    /// Unix seconds.
    pub created: i64,
    pub updated: i64,
}

/// How far a task has come: `done` of `total` (0: not known yet) in `unit`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskProgress {
    pub done: u64,
    pub total: u64,
    #[schemars(schema_with = "progress_unit_schema")]
    pub unit: ProgressUnit,
    /// 0 to 100, when the total is known.
    pub percent: Option<f64>,
}

/// Why a task failed, as an error answer would say it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskError {
    /// The error code (`hostRefused`, `cancelled`, ...).
    pub code: String,
    pub message: String,
}
