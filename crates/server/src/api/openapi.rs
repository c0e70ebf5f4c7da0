//! `GET /api/v1/openapi.json`: the API described for people and generators (OpenAPI 3.1). One
//! table below lists every operation with the privilege it checks; a test asks the served API
//! for each one, so that the document and the routes cannot drift apart.

use serde_json::{json, Map, Value};
use tresor_core::access::Privilege;

/// One operation of the API.
#[derive(Clone, Copy, Debug)]
pub struct Operation {
    pub method: &'static str,
    pub path: &'static str,
    pub tag: &'static str,
    pub summary: &'static str,
    /// The privilege checked; `None` for the login and this document.
    pub privilege: Option<Privilege>,
    /// An example of the JSON request body; empty when the operation reads none.
    pub example: &'static str,
}

macro_rules! ops {
    ($($method:literal $path:literal $tag:literal $privilege:expr, $example:literal, $summary:literal;)*) => {
        /// Every operation of the API.
        pub const OPERATIONS: &[Operation] = &[$(Operation {
            method: $method, path: $path, tag: $tag, summary: $summary, privilege: $privilege, example: $example,
        }),*];
    };
}

use Privilege as P;

ops! {
    "get" "/api/v1/vms" "vms" Some(P::SystemView), "", "List VMs, by name. Filters: `?locked=true`, `?host=NAME`, `?provider=NAME`; pages: `?limit=N&offset=M`, the number of matching VMs in the `X-Total-Count` header. `?discovered=true` lists instead the VMs hosts report that the registry does not hold (never unlocked until registered), with why";
    "post" "/api/v1/vms" "vms" Some(P::VmCreate), r#"{"name": "web01", "host": "host-1", "disks": [1073741824]}"#, "Create a VM (encrypted ones need Cryptographer.EncryptNew)";
    "get" "/api/v1/vms/{name}" "vms" Some(P::SystemView), "", "A VM: power, crypto and connection state, lock reason, key ids";
    "get" "/api/v1/vms/{name}/diagnose" "vms" Some(P::SystemView), "", "Which case of the procedure applies, the evidence and the next steps (`?lang=en|de`)";
    "post" "/api/v1/vms/register" "vms" Some(P::VmRegister), r#"{"host": "host-1", "all": true}"#, "Register a VM from its folder (200), or every VM on a host as a task (`all`, 202; keys to fetch need Cryptographer.RegisterVM)";
    "post" "/api/v1/vms/adopt" "vms" Some(P::VmRegister), r#"{"domain": "db1", "host": "kvm-7", "encrypt": true}"#, "Adopt a powered-off libvirt domain of a host (one whose agent runs libvirt) as a VM of the same name: its images move into the VM's folder, its definition is replaced by Tresor's; `encrypt` encrypts it next (also Cryptographer.Encrypt)";
    "post" "/api/v1/vms/unlock" "vms" Some(P::CryptoRegisterVm), r#"{"all": true}"#, "Unlock VMs: names, all, a host's or a provider's";
    "post" "/api/v1/vms/{name}/power-on" "vms" Some(P::VmPowerOn), "", "Power a VM on";
    "post" "/api/v1/vms/{name}/power-off" "vms" Some(P::VmPowerOff), "", "Power a VM off";
    "post" "/api/v1/vms/{name}/unlock" "vms" Some(P::CryptoRegisterVm), "", "Send a locked VM's keys to its host";
    "post" "/api/v1/vms/{name}/unregister" "vms" Some(P::VmUnregister), "", "Forget a VM; its files stay";
    "post" "/api/v1/vms/{name}/reload" "vms" Some(P::VmConfig), "", "Read a VM's files again";
    "post" "/api/v1/vms/{name}/delete" "vms" Some(P::VmDelete), "", "Delete a VM and its files (refused while locked)";
    "post" "/api/v1/vms/{name}/encrypt" "vms" Some(P::CryptoEncrypt), r#"{"provider": "corp-kms"}"#, "Encrypt a VM (`provider`): starts a task (202), whose progress `GET /api/v1/tasks/{id}` says";
    "post" "/api/v1/vms/{name}/add-disk" "vms" Some(P::VmConfig), r#"{"size": 10737418240, "ownKey": false}"#, "Add a disk to a powered-off VM (to an encrypted one: Cryptographer.AddDisk; `ownKey`: a key of its own)";
    "get" "/api/v1/vms/{name}/console" "vms" Some(P::VmConsole), "", "What a VM's serial console said: its log from `?offset=N` on (base64 in `data`; ask again from `next`). For an encrypted VM also Cryptographer.Access";
    "post" "/api/v1/vms/{name}/console" "vms" Some(P::VmConsole), r#"{"input": "uptime\n"}"#, "Type on a running VM's serial console (at most 4096 bytes). For an encrypted VM also Cryptographer.Access";
    "put" "/api/v1/vms/{name}/files/{kind}" "vms" Some(P::VmConfig), "", "Send a file to a powered-off VM, the body as it is (`application/octet-stream`), in one request or in pieces of at most 64 MiB (`?offset=N&more=true`, the last without `more`): `image` (a qcow2 or raw image, imported as the VM's first disk, encrypted when the VM is, by a task that its last piece starts (202); to an encrypted VM also Cryptographer.AddDisk), `kernel`, `initrd` or `cmdline` (booted directly; for an encrypted VM also Cryptographer.Access, as what boots it reads its disks)";
    "post" "/api/v1/vms/{name}/decrypt" "vms" Some(P::CryptoDecrypt), "", "Decrypt a VM: starts a task (202)";
    "post" "/api/v1/vms/{name}/rekey" "vms" Some(P::CryptoRecrypt), r#"{"deep": false}"#, "A new key for a VM (`deep`: re-encrypt its disks): starts a task (202)";
    "get" "/api/v1/hosts" "hosts" Some(P::SystemView), "", "List hosts";
    "post" "/api/v1/hosts/token" "hosts" Some(P::CryptoRegisterHost), r#"{"ttlSecs": 3600, "host": "host-1", "replace": false}"#, "A one-time join token for `tresor agent join`: for the host named (`replace` lets it replace the enrolled host of that name), or for any name not enrolled yet";
    "delete" "/api/v1/hosts/{name}" "hosts" Some(P::CryptoRegisterHost), "", "Remove a host: its certificate is refused from now on, its session ends";
    "post" "/api/v1/hosts/{name}/enable-encryption" "hosts" Some(P::CryptoRegisterHost), "", "Put a host in encryption mode";
    "get" "/api/v1/hosts/{name}" "hosts" Some(P::SystemView), "", "A host and its VMs";
    "post" "/api/v1/hosts/{name}/disable-encryption" "hosts" Some(P::CryptoRegisterHost), "", "Take a host out of encryption mode (it ends when the host restarts)";
    "post" "/api/v1/hosts/{name}/reboot" "hosts" Some(P::HostConfig), "", "Stop a host's VMs and empty its key cache, as a restart does";
    "get" "/api/v1/providers" "providers" Some(P::CryptoReadKeyServersInfo), "", "List key providers";
    "post" "/api/v1/providers" "providers" Some(P::CryptoManageKeyServers), r#"{"name": "corp-kms", "endpoints": ["kms1.example:5696"], "caPem": "-----BEGIN CERTIFICATE-----\nMIIBhzCCAS2gAwIBAgIUSXktTC8EtgB32+4bo9q1aMZnD/AwCgYIKoZIzj0EAwIw\nGTEXMBUGA1UEAwwORXhhbXBsZSBLTVMgQ0EwHhcNMjYxMTI5MTM1OTUwWhcNMzYx\nMTI2MTM1OTUwWjAZMRcwFQYDVQQDDA5FeGFtcGxlIEtNUyBDQTBZMBMGByqGSM49\nAgEGCCqGSM49AwEHA0IABEWhOkTlAc2QCxpyL4aIYz/oL8eRDIxG+sFY/Iu/4XL4\nyMblK4nc5tC0NXr0NXK7iplH1xgqSHsGLuE4ddBN7/yjUzBRMB0GA1UdDgQWBBSM\nSe7Nj7PfgDcbontuOIXeXQOtyDAfBgNVHSMEGDAWgBSMSe7Nj7PfgDcbontuOIXe\nXQOtyDAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIA3PzQ7AmPB9\n9itPMtmJNztOL/U8YLVOqcuBUMl+cXcMAiEA/pPArAcgFJ66JRpEu21EtYnwi69w\nvppzgyUXmFYyuCk=\n-----END CERTIFICATE-----\n", "csr": true}"#, "Add a key provider (client certificate uploaded, self-signed or from a CSR)";
    "get" "/api/v1/providers/{name}" "providers" Some(P::CryptoReadKeyServersInfo), "", "A key provider: endpoints, trust, last status";
    "delete" "/api/v1/providers/{name}" "providers" Some(P::CryptoManageKeyServers), "", "Remove a key provider no key depends on";
    "get" "/api/v1/providers/{name}/status" "providers" Some(P::CryptoReadKeyServersInfo), "", "Probe every endpoint of a provider now";
    "post" "/api/v1/providers/{name}/default" "providers" Some(P::CryptoManageKeyServers), "", "Make a provider the default";
    "post" "/api/v1/providers/{name}/certificate" "providers" Some(P::CryptoManageKeyServers), r#"{"clientCertPem": "-----BEGIN CERTIFICATE-----\nMIIBhzCCAS2gAwIBAgIUSXktTC8EtgB32+4bo9q1aMZnD/AwCgYIKoZIzj0EAwIw\nGTEXMBUGA1UEAwwORXhhbXBsZSBLTVMgQ0EwHhcNMjYxMTI5MTM1OTUwWhcNMzYx\nMTI2MTM1OTUwWjAZMRcwFQYDVQQDDA5FeGFtcGxlIEtNUyBDQTBZMBMGByqGSM49\nAgEGCCqGSM49AwEHA0IABEWhOkTlAc2QCxpyL4aIYz/oL8eRDIxG+sFY/Iu/4XL4\nyMblK4nc5tC0NXr0NXK7iplH1xgqSHsGLuE4ddBN7/yjUzBRMB0GA1UdDgQWBBSM\nSe7Nj7PfgDcbontuOIXeXQOtyDAfBgNVHSMEGDAWgBSMSe7Nj7PfgDcbontuOIXe\nXQOtyDAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIA3PzQ7AmPB9\n9itPMtmJNztOL/U8YLVOqcuBUMl+cXcMAiEA/pPArAcgFJ66JRpEu21EtYnwi69w\nvppzgyUXmFYyuCk=\n-----END CERTIFICATE-----\n"}"#, "The certificate the provider signed from the server's CSR";
    "get" "/api/v1/events" "events" Some(P::SystemView), "", "Events, filtered (`vm`, `host`, `provider`, `type`, `since`, `after`, `limit`, `lang`)";
    "get" "/api/v1/events/stream" "events" Some(P::SystemView), "", "Events as they happen (Server-Sent Events; `Last-Event-ID` resumes)";
    "get" "/api/v1/alarms" "alarms" Some(P::SystemView), "", "Active alarms with what to do next";
    "post" "/api/v1/alarms/{id}/ack" "alarms" Some(P::AlarmAcknowledge), "", "Acknowledge an alarm";
    "post" "/api/v1/login" "access" None, r#"{"user": "alice", "password": "alices-long-password"}"#, "Exchange a user's password for an API token";
    "post" "/api/v1/logout" "access" None, "", "End the session: the request's token stops working";
    "get" "/api/v1/me" "access" Some(P::SystemView), "", "The token's user, roles, privileges and language";
    "put" "/api/v1/me/lang" "access" Some(P::SystemView), r#"{"value": "de"}"#, "Remember the user's language (`value`: en or de)";
    "get" "/api/v1/users" "access" Some(P::AuthorizationModify), "", "List users and their roles";
    "post" "/api/v1/users" "access" Some(P::AuthorizationModify), r#"{"name": "alice", "password": "alices-long-password", "roles": ["NoCryptoAdmin"]}"#, "Add a user (password of at least 12 characters, roles)";
    "put" "/api/v1/users/{name}/password" "access" Some(P::AuthorizationModify), r#"{"password": "a-new-long-password"}"#, "Set a user's password (one's own needs no privilege)";
    "delete" "/api/v1/users/{name}" "access" Some(P::AuthorizationModify), "", "Remove a user and its tokens";
    "post" "/api/v1/users/{name}/roles" "access" Some(P::AuthorizationModify), r#"{"role": "ReadOnly"}"#, "Grant a role";
    "delete" "/api/v1/users/{name}/roles/{role}" "access" Some(P::AuthorizationModify), "", "Take a role away";
    "get" "/api/v1/roles" "access" Some(P::SystemView), "", "List roles";
    "post" "/api/v1/roles" "access" Some(P::AuthorizationModify), r#"{"name": "Unlocker", "privileges": ["Cryptographer.RegisterVM", "System.View"]}"#, "Define a role of your own";
    "get" "/api/v1/roles/{name}" "access" Some(P::SystemView), "", "A role's privileges";
    "delete" "/api/v1/roles/{name}" "access" Some(P::AuthorizationModify), "", "Remove a role of your own";
    "get" "/api/v1/settings" "settings" Some(P::SystemView), "", "Every setting";
    "get" "/api/v1/settings/{key}" "settings" Some(P::SystemView), "", "One setting";
    "put" "/api/v1/settings/{key}" "settings" Some(P::CryptoManageEncryptionPolicy), r#"{"value": "manual"}"#, "Change a setting (`unlock.policy`: automatic or manual)";
    "get" "/api/v1/tasks" "tasks" Some(P::SystemView), "", "Tasks, newest first, with their progress (`?running=true`, `?limit=N`)";
    "get" "/api/v1/tasks/{id}" "tasks" Some(P::SystemView), "", "A task: what it does, who started it, how far it has come (bytes or VMs), its result or error";
    "post" "/api/v1/tasks/{id}/cancel" "tasks" Some(P::SystemView), "", "Cancel a running task where that is safe (also the privilege that starting it needs): an encryption or decryption is undone, a deep rekey stops between disks, bulk work stops at its next VM";
    "get" "/api/v1/openapi.json" "meta" None, "", "This document";
}

/// The request type of an operation that reads a typed body (its schema's name).
pub fn request_type(method: &str, path: &str) -> Option<&'static str> {
    Some(match (method, path) {
        ("post", "/api/v1/vms") => "CreateVm",
        ("post", "/api/v1/vms/unlock") => "UnlockMany",
        ("post", "/api/v1/vms/register") => "RegisterRequest",
        ("post", "/api/v1/vms/adopt") => "AdoptVm",
        ("post", "/api/v1/hosts/token") => "TokenRequest",
        ("post", "/api/v1/vms/{name}/encrypt") | ("post", "/api/v1/vms/{name}/rekey") => {
            "CryptoRequest"
        }
        ("post", "/api/v1/vms/{name}/add-disk") => "AddDisk",
        ("post", "/api/v1/vms/{name}/console") => "ConsoleInput",
        ("post", "/api/v1/login") => "Login",
        ("post", "/api/v1/users") => "NewUser",
        ("put", "/api/v1/users/{name}/password") => "NewPassword",
        ("post", "/api/v1/users/{name}/roles") => "RoleGrant",
        ("post", "/api/v1/roles") => "NewRole",
        ("put", "/api/v1/settings/{key}") | ("put", "/api/v1/me/lang") => "SetValue",
        ("post", "/api/v1/providers") => "AddProvider",
        ("post", "/api/v1/providers/{name}/certificate") => "SignedCertificate",
        _ => return None,
    })
}

/// What an operation answers with 200: a schema of `components/schemas`, one or a list.
pub fn answer_type(method: &str, path: &str) -> Option<(&'static str, bool)> {
    Some(match (method, path) {
        ("get", "/api/v1/vms/{name}") | ("post", "/api/v1/vms") | ("post", "/api/v1/vms/adopt") => {
            ("Vm", false)
        }
        ("get", "/api/v1/vms/{name}/diagnose") => ("Diagnosis", false),
        ("post", "/api/v1/vms/{name}/add-disk") | ("put", "/api/v1/vms/{name}/files/{kind}") => {
            ("Vm", false)
        }
        ("get", "/api/v1/vms/{name}/console") => ("ConsoleOutput", false),
        ("post", "/api/v1/vms/{name}/console") => ("VmDone", false),
        ("post", "/api/v1/vms/register") => ("Registered", false),
        ("post", "/api/v1/vms/unlock") => ("UnlockStarted", false),
        ("post", "/api/v1/vms/{name}/power-on") | ("post", "/api/v1/vms/{name}/power-off") => {
            ("VmPower", false)
        }
        ("post", "/api/v1/vms/{name}/unlock") => ("VmUnlock", false),
        (
            "post",
            "/api/v1/vms/{name}/unregister"
            | "/api/v1/vms/{name}/reload"
            | "/api/v1/vms/{name}/delete",
        ) => ("VmDone", false),
        ("get", "/api/v1/tasks") => ("Task", true),
        ("get", "/api/v1/tasks/{id}") | ("post", "/api/v1/tasks/{id}/cancel") => ("Task", false),
        ("get", "/api/v1/hosts") => ("Host", true),
        ("get", "/api/v1/hosts/{name}") => ("HostWithVms", false),
        ("post", "/api/v1/hosts/token") => ("JoinToken", false),
        ("delete", "/api/v1/hosts/{name}") => ("HostRemoved", false),
        (
            "post",
            "/api/v1/hosts/{name}/enable-encryption" | "/api/v1/hosts/{name}/disable-encryption",
        ) => ("HostMode", false),
        ("post", "/api/v1/hosts/{name}/reboot") => ("HostRebooted", false),
        ("get", "/api/v1/events") => ("Event", true),
        ("get", "/api/v1/alarms") => ("Alarm", true),
        ("post", "/api/v1/alarms/{id}/ack") => ("AlarmAcknowledged", false),
        ("get", "/api/v1/providers") => ("Provider", true),
        ("post", "/api/v1/providers") => ("ProviderAdded", false),
        ("get", "/api/v1/providers/{name}") => ("Provider", false),
        ("post", "/api/v1/providers/{name}/certificate") => ("Provider", false),
        ("get", "/api/v1/providers/{name}/status") => ("ProviderStatus", false),
        ("post", "/api/v1/providers/{name}/default") => ("ProviderDefault", false),
        ("delete", "/api/v1/providers/{name}") => ("ProviderRemoved", false),
        ("post", "/api/v1/login") => ("LoginToken", false),
        ("post", "/api/v1/logout") => ("LoggedOut", false),
        ("get", "/api/v1/me") => ("Me", false),
        ("put", "/api/v1/me/lang") => ("UserLang", false),
        ("get", "/api/v1/users") => ("User", true),
        ("post", "/api/v1/users") => ("User", false),
        ("put", "/api/v1/users/{name}/password") => ("PasswordSet", false),
        ("delete", "/api/v1/users/{name}") | ("delete", "/api/v1/roles/{name}") => {
            ("Removed", false)
        }
        ("post", "/api/v1/users/{name}/roles")
        | ("delete", "/api/v1/users/{name}/roles/{role}") => ("UserRoles", false),
        ("get", "/api/v1/roles") => ("Role", true),
        ("post", "/api/v1/roles") | ("get", "/api/v1/roles/{name}") => ("Role", false),
        ("get", "/api/v1/settings") => ("Settings", false),
        ("get", "/api/v1/settings/{key}") | ("put", "/api/v1/settings/{key}") => ("Setting", false),
        _ => return None,
    })
}

/// The type of an operation's query parameters (each of its fields is one, none required).
pub fn query_type(method: &str, path: &str) -> Option<&'static str> {
    Some(match (method, path) {
        ("get", "/api/v1/vms") => "VmQuery",
        ("get", "/api/v1/events") | ("get", "/api/v1/events/stream") => "EventQuery",
        ("get", "/api/v1/vms/{name}/diagnose") => "LangQuery",
        ("put", "/api/v1/vms/{name}/files/{kind}") => "FileQuery",
        ("get", "/api/v1/vms/{name}/console") => "ConsoleQuery",
        ("get", "/api/v1/tasks") => "TaskQuery",
        _ => return None,
    })
}

/// Whether an operation starts a task and answers it with 202; `Some(true)` when it always does
/// (it has no 200 answer).
pub fn starts_task(method: &str, path: &str) -> Option<bool> {
    match (method, path) {
        (
            "post",
            "/api/v1/vms/{name}/encrypt"
            | "/api/v1/vms/{name}/decrypt"
            | "/api/v1/vms/{name}/rekey",
        ) => Some(true),
        ("post", "/api/v1/vms/register") | ("put", "/api/v1/vms/{name}/files/{kind}") => {
            Some(false)
        }
        _ => None,
    }
}

/// Whether an operation asks a host's agent (and so can meet a host that is away, 503, or that
/// refuses, 422).
fn asks_a_host(method: &str, path: &str) -> bool {
    path.contains("/files/")
        || path.ends_with("/console")
        || method == "post"
            && (matches!(
                path,
                "/api/v1/vms" | "/api/v1/vms/register" | "/api/v1/vms/adopt"
            ) || (path.starts_with("/api/v1/vms/{name}/") && !path.ends_with("/unlock"))
                || (path.starts_with("/api/v1/hosts/{name}/")))
}

/// Whether an operation asks a key provider (and so can meet one that fails, 502).
fn asks_a_provider(method: &str, path: &str) -> bool {
    matches!(
        (method, path),
        ("post", "/api/v1/vms")
            | ("post", "/api/v1/vms/unlock")
            | ("post", "/api/v1/vms/{name}/unlock")
            | ("post", "/api/v1/vms/{name}/encrypt")
            | ("post", "/api/v1/vms/{name}/rekey")
            | ("post", "/api/v1/vms/{name}/add-disk")
            | ("post", "/api/v1/vms/adopt")
            | ("post", "/api/v1/hosts/{name}/enable-encryption")
            | ("get", "/api/v1/providers/{name}/status")
    )
}

/// Every status an operation can answer but 200, with what it means: from the error codes of
/// `tresor_api::ErrorCode` (each has one status) that its handler and service can meet.
pub fn statuses(op: &Operation) -> Vec<(u16, &'static str)> {
    if op.path == "/api/v1/openapi.json" {
        return Vec::new();
    }
    let mut out = vec![
        (
            400,
            "The request is malformed; the message says what to change",
        ),
        (
            401,
            "No or an invalid API token, or (login) wrong credentials",
        ),
    ];
    let limited = "Too many failed sign-ins (or wrong current passwords) for this user or from this address; the message says when to try again";
    if op.path == "/api/v1/login" {
        out.push((429, limited));
    } else {
        out.push((403, "The user lacks the privilege; the message names it"));
        out.push((404, "No such object"));
    }
    if op.method != "get" {
        out.push((
            409,
            "The object's state does not allow it (a locked VM, for example)",
        ));
    }
    if op.path.contains("/files/") {
        out.push((413, "The file is larger than the operation takes"));
    }
    if asks_a_host(op.method, op.path) {
        out.push((
            422,
            "The host refused the operation; the message is the host's reason",
        ));
    }
    if op.path == "/api/v1/users/{name}/password" {
        out.push((429, limited));
    }
    out.push((
        500,
        "The server cannot read or write its database; its log says why",
    ));
    if asks_a_provider(op.method, op.path) {
        out.push((
            502,
            "The key provider cannot be reached, refuses the server or failed",
        ));
    }
    if asks_a_host(op.method, op.path) {
        out.push((503, "The host is not connected or did not answer"));
    }
    out
}

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorAnswer"}}}})
}

/// The OpenAPI document.
pub fn document() -> Value {
    let schemas = tresor_api::schemas();
    let mut paths = Map::new();
    for op in OPERATIONS {
        let mut params: Vec<Value> = op
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| {
                let schema = if name == "id" {
                    json!({"type": "integer", "format": "int64"})
                } else if name == "kind" {
                    json!({"type": "string", "enum": tresor_core::protocol::UploadKind::ALL.iter().map(|k| k.as_str()).collect::<Vec<_>>()})
                } else {
                    json!({"type": "string"})
                };
                json!({"name": name, "in": "path", "required": true, "schema": schema})
            })
            .collect();
        if let Some(query) = query_type(op.method, op.path) {
            let properties = schemas[query]["properties"].as_object().cloned();
            for (name, schema) in properties.unwrap_or_default() {
                let mut schema = schema;
                let description = schema.as_object_mut().and_then(|o| o.remove("description"));
                let mut param =
                    json!({"name": name, "in": "query", "required": false, "schema": schema});
                if let Some(d) = description {
                    param["description"] = d;
                }
                params.push(param);
            }
        }
        let mut description = op.summary.to_owned();
        if let Some(p) = op.privilege {
            description.push_str(&format!(
                "\n\nNeeds the privilege {} ({}).",
                p.label(),
                p.id()
            ));
        }
        let operation_id = format!(
            "{}{}",
            op.method,
            op.path
                .trim_start_matches("/api/v1")
                .split(['/', '-', '.'])
                .filter(|s| !s.is_empty())
                .map(|s| {
                    let s = s.trim_matches(|c| c == '{' || c == '}');
                    let mut c = s.chars();
                    c.next()
                        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
                        .unwrap_or_default()
                })
                .collect::<String>()
        );
        let mut responses = Map::new();
        let reference = |name: &str| json!({"$ref": format!("#/components/schemas/{name}")});
        let ok = match answer_type(op.method, op.path) {
            Some((name, true)) => {
                json!({"schema": {"type": "array", "items": reference(name)}})
            }
            Some((name, false)) => json!({"schema": reference(name)}),
            // The discovered VMs (`?discovered=true`) are another shape.
            None if op.method == "get" && op.path == "/api/v1/vms" => json!({"schema": {
                "type": "array", "items": {"anyOf": [reference("Vm"), reference("DiscoveredVm")]}}}),
            None => json!({}),
        };
        match starts_task(op.method, op.path) {
            Some(always) => {
                if !always {
                    responses.insert(
                        "200".into(),
                        json!({"description": "Done", "content": {"application/json": ok}}),
                    );
                }
                responses.insert(
                    "202".into(),
                    json!({"description": "Started as a task; `GET /api/v1/tasks/{id}` follows it", "content": {"application/json": {"schema": reference("Task")}}}),
                );
            }
            None => {
                responses.insert(
                    "200".into(),
                    json!({"description": "Done", "content": {"application/json": ok}}),
                );
            }
        }
        if op.method == "get" && op.path == "/api/v1/vms" {
            responses["200"]["headers"] = json!({"X-Total-Count": {
                "description": "How many VMs match the filters (all pages)",
                "schema": {"type": "integer", "minimum": 0}}});
        }
        if op.path.ends_with("/stream") {
            responses["200"] = json!({"description": "Events as they happen", "content": {"text/event-stream": {}}});
        }
        for (status, what) in statuses(op) {
            responses.insert(status.to_string(), error_response(what));
        }
        let mut operation = json!({
            "operationId": operation_id,
            "tags": [op.tag],
            "summary": op.summary,
            "description": description,
            "parameters": params,
            "responses": responses,
        });
        if !op.example.is_empty() {
            let example: Value = serde_json::from_str(op.example).unwrap_or(Value::Null);
            let schema = match request_type(op.method, op.path) {
                Some(name) => json!({"$ref": format!("#/components/schemas/{name}")}),
                None => json!({"type": "object"}),
            };
            operation["requestBody"] = json!({"content": {"application/json": {
                "schema": schema, "example": example}}});
        }
        if op.path.contains("/files/") {
            operation["requestBody"] = json!({"required": true, "content": {"application/octet-stream": {
                "schema": {"type": "string", "format": "binary"}}}});
        }
        if op.privilege.is_none() && !op.path.ends_with("/logout") {
            operation["security"] = json!([]);
        }
        let entry = paths.entry(op.path.to_owned()).or_insert_with(|| json!({}));
        entry[op.method] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Tresor API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Encrypted virtual machines on KVM/QEMU with keys from KMIP key providers. Every operation but login takes `Authorization: Bearer TOKEN` and checks one privilege.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_is_json() {
        for op in OPERATIONS {
            if !op.example.is_empty() {
                assert!(
                    serde_json::from_str::<Value>(op.example).is_ok(),
                    "{} {}",
                    op.method,
                    op.path
                );
            }
        }
    }

    /// The document's examples are what the server reads: each typed one deserializes into its
    /// request type (which refuses unknown fields), and every typed schema is in the document.
    #[test]
    fn every_typed_example_is_accepted() {
        use tresor_api::requests::*;
        let doc = document();
        let mut typed = 0;
        for op in OPERATIONS {
            let Some(name) = request_type(op.method, op.path) else {
                continue;
            };
            typed += 1;
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "{name} is not in the document"
            );
            let example: Value = serde_json::from_str(op.example).unwrap();
            let ok = match name {
                "CreateVm" => serde_json::from_value::<CreateVm>(example).is_ok(),
                "UnlockMany" => serde_json::from_value::<UnlockMany>(example).is_ok(),
                "RegisterRequest" => serde_json::from_value::<RegisterRequest>(example).is_ok(),
                "TokenRequest" => serde_json::from_value::<TokenRequest>(example).is_ok(),
                "CryptoRequest" => serde_json::from_value::<CryptoRequest>(example).is_ok(),
                "AddDisk" => serde_json::from_value::<AddDisk>(example).is_ok(),
                "AdoptVm" => serde_json::from_value::<AdoptVm>(example).is_ok(),
                "ConsoleInput" => serde_json::from_value::<ConsoleInput>(example).is_ok(),
                "Login" => serde_json::from_value::<Login>(example).is_ok(),
                "NewUser" => serde_json::from_value::<NewUser>(example).is_ok(),
                "NewPassword" => serde_json::from_value::<NewPassword>(example).is_ok(),
                "RoleGrant" => serde_json::from_value::<RoleGrant>(example).is_ok(),
                "NewRole" => serde_json::from_value::<NewRole>(example).is_ok(),
                "SetValue" => serde_json::from_value::<SetValue>(example).is_ok(),
                "AddProvider" => serde_json::from_value::<AddProvider>(example).is_ok(),
                "SignedCertificate" => serde_json::from_value::<SignedCertificate>(example).is_ok(),
                other => panic!("no type for {other}"),
            };
            assert!(ok, "the example of {} {} is refused", op.method, op.path);
        }
        // Every operation that reads a body has a type for it.
        let with_body = OPERATIONS
            .iter()
            .filter(|op| !op.example.is_empty())
            .count();
        assert_eq!(typed, with_body);
    }

    #[test]
    fn every_operation_is_in_the_document_once() {
        let doc = document();
        let mut count = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                count += 1;
                assert!(
                    OPERATIONS
                        .iter()
                        .any(|o| o.path == path && o.method == method),
                    "{method} {path}"
                );
                assert!(op["operationId"].as_str().unwrap().len() > 3);
            }
        }
        assert_eq!(count, OPERATIONS.len(), "no operation twice");
        let ids: std::collections::BTreeSet<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|i| i.as_object().unwrap().values())
            .map(|o| o["operationId"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), OPERATIONS.len(), "operation ids are unique");
        assert!(doc["paths"]["/api/v1/vms/unlock"]["post"]["description"]
            .as_str()
            .unwrap()
            .contains("Cryptographer.RegisterVM"));
    }
}
