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
    "post" "/api/v1/vms/register" "vms" Some(P::VmRegister), r#"{"host": "host-1", "all": true}"#, "Register a VM from its folder, or every VM on a host (keys to fetch need Cryptographer.RegisterVM)";
    "post" "/api/v1/vms/unlock" "vms" Some(P::CryptoRegisterVm), r#"{"all": true}"#, "Unlock VMs: names, all, a host's or a provider's";
    "post" "/api/v1/vms/{name}/power-on" "vms" Some(P::VmPowerOn), "", "Power a VM on";
    "post" "/api/v1/vms/{name}/power-off" "vms" Some(P::VmPowerOff), "", "Power a VM off";
    "post" "/api/v1/vms/{name}/unlock" "vms" Some(P::CryptoRegisterVm), "", "Send a locked VM's keys to its host";
    "post" "/api/v1/vms/{name}/unregister" "vms" Some(P::VmUnregister), "", "Forget a VM; its files stay";
    "post" "/api/v1/vms/{name}/reload" "vms" Some(P::VmConfig), "", "Read a VM's files again";
    "post" "/api/v1/vms/{name}/delete" "vms" Some(P::VmDelete), "", "Delete a VM and its files (refused while locked)";
    "post" "/api/v1/vms/{name}/encrypt" "vms" Some(P::CryptoEncrypt), r#"{"provider": "corp-kms"}"#, "Encrypt a VM (`provider`)";
    "post" "/api/v1/vms/{name}/add-disk" "vms" Some(P::VmConfig), r#"{"size": 10737418240, "ownKey": false}"#, "Add a disk to a powered-off VM (to an encrypted one: Cryptographer.AddDisk; `ownKey`: a key of its own)";
    "post" "/api/v1/vms/{name}/decrypt" "vms" Some(P::CryptoDecrypt), "", "Decrypt a VM";
    "post" "/api/v1/vms/{name}/rekey" "vms" Some(P::CryptoRecrypt), r#"{"deep": false}"#, "A new key for a VM (`deep`: re-encrypt its disks)";
    "get" "/api/v1/hosts" "hosts" Some(P::SystemView), "", "List hosts";
    "post" "/api/v1/hosts/token" "hosts" Some(P::CryptoRegisterHost), r#"{"ttlSecs": 3600, "host": "host-1", "replace": false}"#, "A one-time join token for `tresor agent join`: for the host named (`replace` lets it replace the enrolled host of that name), or for any name not enrolled yet";
    "delete" "/api/v1/hosts/{name}" "hosts" Some(P::CryptoRegisterHost), "", "Remove a host: its certificate is refused from now on, its session ends";
    "post" "/api/v1/hosts/{name}/enable-encryption" "hosts" Some(P::CryptoRegisterHost), "", "Put a host in encryption mode";
    "get" "/api/v1/hosts/{name}" "hosts" Some(P::SystemView), "", "A host and its VMs";
    "post" "/api/v1/hosts/{name}/disable-encryption" "hosts" Some(P::CryptoRegisterHost), "", "Take a host out of encryption mode (it ends when the host restarts)";
    "post" "/api/v1/hosts/{name}/reboot" "hosts" Some(P::HostConfig), "", "Stop a host's VMs and empty its key cache, as a restart does";
    "get" "/api/v1/providers" "providers" Some(P::CryptoReadKeyServersInfo), "", "List key providers";
    "post" "/api/v1/providers" "providers" Some(P::CryptoManageKeyServers), r#"{"name": "corp-kms", "endpoints": ["kms1:5696"], "caPem": "-----BEGIN CERTIFICATE-----…", "csr": true}"#, "Add a key provider (client certificate uploaded, self-signed or from a CSR)";
    "get" "/api/v1/providers/{name}" "providers" Some(P::CryptoReadKeyServersInfo), "", "A key provider: endpoints, trust, last status";
    "delete" "/api/v1/providers/{name}" "providers" Some(P::CryptoManageKeyServers), "", "Remove a key provider no key depends on";
    "get" "/api/v1/providers/{name}/status" "providers" Some(P::CryptoReadKeyServersInfo), "", "Probe every endpoint of a provider now";
    "post" "/api/v1/providers/{name}/default" "providers" Some(P::CryptoManageKeyServers), "", "Make a provider the default";
    "post" "/api/v1/providers/{name}/certificate" "providers" Some(P::CryptoManageKeyServers), r#"{"clientCertPem": "-----BEGIN CERTIFICATE-----…"}"#, "The certificate the provider signed from the server's CSR";
    "get" "/api/v1/events" "events" Some(P::SystemView), "", "Events, filtered (`vm`, `host`, `provider`, `type`, `since`, `after`, `limit`, `lang`)";
    "get" "/api/v1/events/stream" "events" Some(P::SystemView), "", "Events as they happen (Server-Sent Events; `Last-Event-ID` resumes)";
    "get" "/api/v1/alarms" "alarms" Some(P::SystemView), "", "Active alarms with what to do next";
    "post" "/api/v1/alarms/{id}/ack" "alarms" Some(P::AlarmAcknowledge), "", "Acknowledge an alarm";
    "post" "/api/v1/login" "access" None, r#"{"user": "alice", "password": "…"}"#, "Exchange a user's password for an API token";
    "post" "/api/v1/logout" "access" None, "", "End the session: the request's token stops working";
    "get" "/api/v1/me" "access" Some(P::SystemView), "", "The token's user, roles, privileges and language";
    "put" "/api/v1/me/lang" "access" Some(P::SystemView), r#"{"value": "de"}"#, "Remember the user's language (`value`: en or de)";
    "get" "/api/v1/users" "access" Some(P::AuthorizationModify), "", "List users and their roles";
    "post" "/api/v1/users" "access" Some(P::AuthorizationModify), r#"{"name": "alice", "password": "…", "roles": ["NoCryptoAdmin"]}"#, "Add a user (password of at least 12 characters, roles)";
    "put" "/api/v1/users/{name}/password" "access" Some(P::AuthorizationModify), r#"{"password": "…"}"#, "Set a user's password (one's own needs no privilege)";
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
    "get" "/api/v1/openapi.json" "meta" None, "", "This document";
}

/// The request type of an operation that reads a typed body (its schema's name).
pub fn request_type(method: &str, path: &str) -> Option<&'static str> {
    Some(match (method, path) {
        ("post", "/api/v1/vms") => "CreateVm",
        ("post", "/api/v1/vms/unlock") => "UnlockMany",
        ("post", "/api/v1/vms/register") => "RegisterRequest",
        ("post", "/api/v1/hosts/token") => "TokenRequest",
        ("post", "/api/v1/vms/{name}/encrypt") | ("post", "/api/v1/vms/{name}/rekey") => {
            "CryptoRequest"
        }
        ("post", "/api/v1/vms/{name}/add-disk") => "AddDisk",
        _ => return None,
    })
}

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorAnswer"}}}})
}

/// The OpenAPI document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for op in OPERATIONS {
        let params: Vec<Value> = op
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
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
        let mut operation = json!({
            "operationId": operation_id,
            "tags": [op.tag],
            "summary": op.summary,
            "description": description,
            "parameters": params,
            "responses": {
                "200": {"description": "Done", "content": {"application/json": {}}},
                "400": error_response("The request is malformed; the message says what to change"),
                "401": error_response("No or an invalid API token"),
                "403": error_response("The user lacks the privilege; the message names it"),
                "404": error_response("No such object"),
                "409": error_response("The object's state does not allow it (a locked VM, for example)"),
            },
        });
        let answer = |schema: Value| json!({"schema": schema});
        let list_of = |name: &str| {
            answer(
                json!({"type": "array", "items": {"$ref": format!("#/components/schemas/{name}")}}),
            )
        };
        let one = |name: &str| answer(json!({"$ref": format!("#/components/schemas/{name}")}));
        let typed = match (op.method, op.path) {
            ("get", "/api/v1/hosts") => Some(list_of("Host")),
            ("get", "/api/v1/hosts/{name}") => Some(one("HostWithVms")),
            ("get", "/api/v1/events") => Some(list_of("Event")),
            ("get", "/api/v1/alarms") => Some(list_of("Alarm")),
            _ => None,
        };
        if let Some(content) = typed {
            operation["responses"]["200"]["content"]["application/json"] = content;
        }
        if op.path == "/api/v1/vms/{name}" && op.method == "get" {
            operation["responses"]["200"]["content"]["application/json"] =
                json!({"schema": {"$ref": "#/components/schemas/Vm"}});
        }
        if op.path == "/api/v1/vms" && op.method == "get" {
            // The discovered VMs (`?discovered=true`) are another shape.
            operation["responses"]["200"]["content"]["application/json"] = json!({"schema": {
                "type": "array", "items": {"anyOf": [{"$ref": "#/components/schemas/Vm"}, {"type": "object"}]}}});
        }
        if !op.example.is_empty() {
            let example: Value = serde_json::from_str(op.example).unwrap_or(Value::Null);
            let schema = match request_type(op.method, op.path) {
                Some(name) => json!({"$ref": format!("#/components/schemas/{name}")}),
                None => json!({"type": "object"}),
            };
            operation["requestBody"] = json!({"content": {"application/json": {
                "schema": schema, "example": example}}});
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
            "schemas": tresor_api::schemas(),
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
                other => panic!("no type for {other}"),
            };
            assert!(ok, "the example of {} {} is refused", op.method, op.path);
        }
        assert_eq!(typed, 7);
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
