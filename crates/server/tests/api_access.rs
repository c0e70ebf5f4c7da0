//! The REST API over HTTP on loopback: tokens, the privilege check on every operation and its
//! refusals, the VM shape of the surface contract, events in English and German.

mod common;

use common::{http, seed_users};
use tresor_server::store::{EventRow, VmRecord};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_checks_its_privilege() {
    let db = common::TestDb::new();
    let store = db.store();
    seed_users(&store);
    let report = serde_json::json!({
        "id": "id1", "name": "web01", "path": "/vms/web01", "encrypted": true, "powerState": "poweredOff",
        "keyId": {"keyId": "4711", "providerId": {"id": "corp-kms"}},
        "keys": [{"key": {"keyId": "4711", "providerId": {"id": "corp-kms"}}, "uses": [{"kind": "home"}, {"kind": "disk", "path": "disk0.qcow2"}], "onHost": false}],
        "disks": ["/vms/web01/disk0.qcow2"]
    });
    store
        .put_vm(&VmRecord {
            id: "id1".into(),
            name: "web01".into(),
            host: "host-1".into(),
            path: "/vms/web01".into(),
            encrypted: true,
            key_provider: Some("corp-kms".into()),
            key_id: Some("4711".into()),
            power_state: tresor_core::protocol::PowerState::PoweredOff,
            crypto_state: tresor_core::vm::CryptoState::Locked,
            connection_state: tresor_core::vm::ConnectionState::Invalid,
            lock_reason: Some(tresor_core::vm::LockReason::KeyMissingOnKms),
            report: report.to_string(),
        })
        .unwrap();
    store
        .add_event(&EventRow {
            id: 0,
            time: 1,
            event_type: "vm.locked.keyMissingOnKms".into(),
            severity: "error".into(),
            vm: Some("web01".into()),
            host: Some("host-1".into()),
            provider: None,
            user: None,
            args: vec![],
        })
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let served = common::serve(store.clone(), data.path()).await;
    let addr = served.addr.clone();

    let (status, body) = http(&addr, "GET", "/api/v1/vms", None).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthenticated");
    let (status, _) = http(&addr, "GET", "/api/v1/vms", Some("forged")).await;
    assert_eq!(status, 401);

    // Anyone may look; the VM has the surface's shape.
    let (status, vm) = http(&addr, "GET", "/api/v1/vms/web01", Some("viewer-token")).await;
    assert_eq!(status, 200);
    assert_eq!(vm["config"]["keyId"]["keyId"], "4711");
    assert_eq!(vm["config"]["keyId"]["providerId"]["id"], "corp-kms");
    assert_eq!(
        (
            vm["cryptoState"].as_str(),
            vm["connectionState"].as_str(),
            vm["lockReason"].as_str()
        ),
        (Some("locked"), Some("invalid"), Some("keyMissingOnKms"))
    );
    assert_eq!(vm["disks"][0]["keyAvailable"], false);
    let (_, locked) = http(
        &addr,
        "GET",
        "/api/v1/vms?locked=true",
        Some("viewer-token"),
    )
    .await;
    assert_eq!(locked.as_array().unwrap().len(), 1);
    let (status, body) = http(&addr, "GET", "/api/v1/vms/nope", Some("viewer-token")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("notFound"))
    );

    // Anyone may ask for a diagnosis; with the host not connected, the first step is the host.
    let (status, d) = http(
        &addr,
        "GET",
        "/api/v1/vms/web01/diagnose?lang=de",
        Some("viewer-token"),
    )
    .await;
    assert_eq!(status, 200, "{d}");
    assert!(d["case"].is_null(), "{d}");
    assert!(
        d["summary"].as_str().unwrap().contains("host-1")
            && d["summary"].as_str().unwrap().contains("keine Verbindung"),
        "{d}"
    );
    let (status, body) = http(
        &addr,
        "GET",
        "/api/v1/vms/web01/diagnose?lang=fr",
        Some("viewer-token"),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("badRequest"))
    );
    let (status, _) = http(
        &addr,
        "GET",
        "/api/v1/vms/nope/diagnose",
        Some("viewer-token"),
    )
    .await;
    assert_eq!(status, 404);

    // Unlock needs Cryptographer.RegisterVM: refused for ReadOnly and NoCryptoAdmin.
    for token in ["viewer-token", "operator-token"] {
        let (status, body) = http(&addr, "POST", "/api/v1/vms/web01/unlock", Some(token)).await;
        assert_eq!(status, 403, "{token}");
        let m = body["error"]["message"].as_str().unwrap();
        assert!(
            m.contains("Cryptographic operations › Register VM")
                && m.contains("Cryptographer.RegisterVM"),
            "{m}"
        );
    }
    let (status, _) = http(
        &addr,
        "POST",
        "/api/v1/vms/web01/unlock",
        Some("admin-token"),
    )
    .await;
    assert_eq!(status, 200);

    // Join tokens need Cryptographer.RegisterHost.
    let (status, _) = http(&addr, "POST", "/api/v1/hosts/token", Some("operator-token")).await;
    assert_eq!(status, 403);
    let (status, body) = http(&addr, "POST", "/api/v1/hosts/token", Some("admin-token")).await;
    assert_eq!(status, 200);
    assert!(body["token"].as_str().unwrap().contains('.'));

    // Events in both languages.
    let (_, en) = http(
        &addr,
        "GET",
        "/api/v1/events?vm=web01",
        Some("viewer-token"),
    )
    .await;
    assert_eq!(
        en[0]["message"],
        "The virtual machine is locked because keys are missing on the key provider."
    );
    let (_, de) = http(
        &addr,
        "GET",
        "/api/v1/events?vm=web01&lang=de",
        Some("viewer-token"),
    )
    .await;
    assert_eq!(
        de[0]["message"],
        "Die virtuelle Maschine ist gesperrt, weil Schlüssel auf dem KMS-Cluster fehlen."
    );
    let (status, body) = http(&addr, "GET", "/api/v1/events?lang=fr", Some("viewer-token")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("badRequest"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unlock_policy_is_a_stored_setting_guarded_by_its_privilege() {
    let db = common::TestDb::new();
    let store = db.store();
    seed_users(&store);
    let data = tempfile::tempdir().unwrap();
    let served = common::serve(store.clone(), data.path()).await;
    let addr = served.addr.as_str();
    let (status, v) = http(addr, "GET", "/api/v1/settings", Some("viewer-token")).await;
    assert_eq!(
        (status, v["unlock.policy"].as_str()),
        (200, Some("automatic"))
    );
    let manual = r#"{"value": "manual"}"#;
    let (status, body) = common::http_body(
        addr,
        "PUT",
        "/api/v1/settings/unlock.policy",
        Some("operator-token"),
        manual,
    )
    .await;
    assert_eq!(status, 403);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Cryptographer.ManageEncryptionPolicy"));
    let (status, _) = common::http_body(
        addr,
        "PUT",
        "/api/v1/settings/unlock.policy",
        Some("admin-token"),
        manual,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        store.setting("unlock.policy").unwrap().as_deref(),
        Some("manual")
    );
    let (_, v) = http(
        addr,
        "GET",
        "/api/v1/settings/unlock.policy",
        Some("viewer-token"),
    )
    .await;
    assert_eq!(v["value"], "manual");
    let (status, body) = common::http_body(
        addr,
        "PUT",
        "/api/v1/settings/unlock.policy",
        Some("admin-token"),
        r#"{"value": "sometimes"}"#,
    )
    .await;
    assert_eq!(status, 400);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("automatic or manual"));
    let (status, _) = http(addr, "GET", "/api/v1/settings/nope", Some("viewer-token")).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_as_they_happen() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = common::TestDb::new();
    let store = db.store();
    seed_users(&store);
    let event = |vm: &str| EventRow {
        id: 0,
        time: 1,
        event_type: "vm.unlocked".into(),
        severity: "info".into(),
        vm: Some(vm.into()),
        host: Some("host-1".into()),
        provider: None,
        user: None,
        args: vec![],
    };
    store.add_event(&event("before")).unwrap();
    let data = tempfile::tempdir().unwrap();
    let served = common::serve(store.clone(), data.path()).await;
    let (status, _) = http(&served.addr, "GET", "/api/v1/events/stream", None).await;
    assert_eq!(status, 401);

    let mut s = tokio::net::TcpStream::connect(&served.addr).await.unwrap();
    s.write_all(b"GET /api/v1/events/stream?lang=de HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer viewer-token\r\n\r\n")
        .await
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    // The stream starts at now: the earlier event is not sent, the next one is.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !seen.contains("\r\n\r\n") {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .expect("the stream's headers")
            .unwrap();
        assert!(n > 0);
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    store.add_event(&event("after")).unwrap();
    while !seen.contains("\"vm\":\"after\"") {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .expect("the event arrives")
            .unwrap();
        assert!(n > 0, "the stream closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("text/event-stream"), "{seen}");
    assert!(!seen.contains("\"vm\":\"before\""), "{seen}");
    assert!(
        seen.contains("Die virtuelle Maschine ist entsperrt."),
        "{seen}"
    );
    assert!(seen.contains("event: event"), "{seen}");

    // Resuming after an id sends what came after it.
    let mut s = tokio::net::TcpStream::connect(&served.addr).await.unwrap();
    s.write_all(b"GET /api/v1/events/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer viewer-token\r\nLast-Event-ID: 0\r\n\r\n")
        .await
        .unwrap();
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !seen.contains("\"vm\":\"after\"") {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .expect("the events arrive")
            .unwrap();
        assert!(n > 0);
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("\"vm\":\"before\""), "{seen}");
}

/// Every operation the OpenAPI document names is served: the handler answers (its own error
/// shape at worst), never the router's bare 404 or 405.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_routes() {
    let db = common::TestDb::new();
    let store = db.store();
    seed_users(&store);
    let data = tempfile::tempdir().unwrap();
    let served = common::serve(store.clone(), data.path()).await;
    let (status, doc) = http(&served.addr, "GET", "/api/v1/openapi.json", None).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            // A user without privileges: every protected operation refuses with 403 before
            // touching anything, which proves the route and its check exist.
            let concrete = path
                .replace("{name}", "nothing")
                .replace("{id}", "0")
                .replace("{role}", "nothing")
                .replace("{key}", "unlock.policy");
            let (status, body) = common::http_body(
                &served.addr,
                &method.to_uppercase(),
                &concrete,
                Some("nobody-token"),
                "{}",
            )
            .await;
            let public = item[method]["security"] == serde_json::json!([]);
            if public {
                assert!(status != 404 && status != 405, "{method} {path}: {status}");
            } else if item[method].get("requestBody").is_some() && status == 400 {
                // The body is read before the token: refused in the API's error shape.
                assert_eq!(body["error"]["code"], "badRequest", "{method} {path}");
            } else {
                assert_eq!(status, 401, "{method} {path}: {body}");
                assert_eq!(body["error"]["code"], "unauthenticated", "{method} {path}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 40, "{checked}");
    // And a route the document does not name is the router's 404.
    let (status, _) = http(
        &served.addr,
        "GET",
        "/api/v1/nothing-here",
        Some("admin-token"),
    )
    .await;
    assert_eq!(status, 404);
}

/// Every operation refuses a user who lacks its privilege, before it does anything, with the
/// privilege named: proven for each operation of the OpenAPI document, with its example body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_refuses_a_user_without_its_privilege() {
    use tresor_server::api::openapi::OPERATIONS;
    let db = common::TestDb::new();
    let store = db.store();
    seed_users(&store);
    store.add_user("nobody", "x").unwrap();
    store
        .add_token(
            &tresor_server::api::token_hash("nobody-token"),
            "nobody",
            "test",
            0,
        )
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let served = common::serve(store.clone(), data.path()).await;
    let mut refused = 0;
    for op in OPERATIONS {
        let Some(privilege) = op.privilege else {
            continue;
        };
        let path = op
            .path
            .replace("{name}", "web01")
            .replace("{id}", "1")
            .replace("{role}", "ReadOnly")
            .replace("{key}", "unlock.policy");
        let (status, body) = common::http_body(
            &served.addr,
            &op.method.to_uppercase(),
            &path,
            Some("nobody-token"),
            op.example,
        )
        .await;
        assert_eq!(status, 403, "{} {}: {body}", op.method, op.path);
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(privilege.id()) && message.contains(privilege.label()),
            "{} {}: {message}",
            op.method,
            op.path
        );
        refused += 1;
    }
    assert!(refused >= 40, "{refused}");
    // Nothing was changed by the refused requests.
    assert!(store.providers().unwrap().is_empty());
    assert_eq!(store.users().unwrap().len(), 4);
    assert_eq!(store.setting("unlock.policy").unwrap(), None);
}

/// A path parameter or a query that cannot be read is answered in the API's one error shape
/// (JSON with a code), not as the HTTP library's plain text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_paths_and_queries_are_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let db = common::TestDb::new();
    let store = db.store();
    common::seed_users(&store);
    let served = common::serve(store, dir.path()).await;
    let (status, body) = http(
        &served.addr,
        "POST",
        "/api/v1/alarms/not-a-number/ack",
        Some("admin-token"),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "notFound", "{body}");
    // A body is a JSON object: serde would read the token request from an array.
    let (status, body) = common::http_body(
        &served.addr,
        "POST",
        "/api/v1/hosts/token",
        Some("admin-token"),
        "[null, null]",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("JSON object"),
        "{body}"
    );
    for path in ["/api/v1/vms?limit=many", "/api/v1/events?limit=-x"] {
        let (status, body) = http(&served.addr, "GET", path, Some("admin-token")).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["code"], "badRequest", "{path}: {body}");
    }
}

/// The document's examples are what the served API takes (none is refused as malformed), every
/// answer has a status the document lists for its operation, and every answer of 200 reads as the
/// type the document names for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_is_taken_and_every_answer_reads_as_its_type() {
    use tresor_api::views::*;
    use tresor_server::api::openapi::{answer_type, statuses, OPERATIONS};
    let db = common::TestDb::new();
    let store = db.store();
    seed_users(&store);
    let data = tempfile::tempdir().unwrap();
    let served = common::serve(store.clone(), data.path()).await;
    let mut answered = 0;
    for op in OPERATIONS {
        // Logout would end the session the others use; the stream never ends.
        if op.path.ends_with("/logout") || op.path.ends_with("/stream") {
            continue;
        }
        let path = op
            .path
            .replace("{name}", "corp-kms")
            .replace("{id}", "1")
            .replace("{role}", "ReadOnly")
            .replace("{key}", "unlock.policy");
        let path = if op.path.starts_with("/api/v1/users/") {
            path.replace("corp-kms", "alice")
        } else if op.path.starts_with("/api/v1/roles/") {
            path.replace("corp-kms", "Unlocker")
        } else {
            path
        };
        let (status, body) = common::http_body(
            &served.addr,
            &op.method.to_uppercase(),
            &path,
            Some("admin-token"),
            op.example,
        )
        .await;
        assert_ne!(status, 400, "{} {}: {body}", op.method, op.path);
        assert_ne!(status, 500, "{} {}: {body}", op.method, op.path);
        if status == 202 {
            // Started as a task, as the document says of this operation.
            assert!(
                tresor_server::api::openapi::starts_task(op.method, op.path).is_some(),
                "{} {} answered 202: {body}",
                op.method,
                op.path
            );
            assert!(
                serde_json::from_value::<tresor_api::views::Task>(body.clone()).is_ok(),
                "{body}"
            );
            continue;
        }
        assert!(
            status == 200 || statuses(op).iter().any(|(s, _)| *s == status),
            "{} {} answered {status}, which its document does not list: {body}",
            op.method,
            op.path
        );
        if status != 200 {
            assert!(
                body["error"]["code"].is_string(),
                "{} {}: {body}",
                op.method,
                op.path
            );
            continue;
        }
        let Some((name, list)) = answer_type(op.method, op.path) else {
            continue;
        };
        fn reads<T: serde::de::DeserializeOwned>(v: &serde_json::Value, list: bool) -> bool {
            if list {
                serde_json::from_value::<Vec<T>>(v.clone()).is_ok()
            } else {
                serde_json::from_value::<T>(v.clone()).is_ok()
            }
        }
        let ok = match name {
            "Vm" => reads::<Vm>(&body, list),
            "Host" => reads::<Host>(&body, list),
            "Event" => reads::<Event>(&body, list),
            "Alarm" => reads::<Alarm>(&body, list),
            "UnlockStarted" => reads::<UnlockStarted>(&body, list),
            "Registered" => reads::<Registered>(&body, list),
            "JoinToken" => reads::<JoinToken>(&body, list),
            "Provider" => reads::<Provider>(&body, list),
            "ProviderAdded" => reads::<ProviderAdded>(&body, list),
            "ProviderStatus" => reads::<ProviderStatus>(&body, list),
            "ProviderDefault" => reads::<ProviderDefault>(&body, list),
            "ProviderRemoved" => reads::<ProviderRemoved>(&body, list),
            "LoginToken" => reads::<LoginToken>(&body, list),
            "Me" => reads::<Me>(&body, list),
            "UserLang" => reads::<UserLang>(&body, list),
            "User" => reads::<User>(&body, list),
            "UserRoles" => reads::<UserRoles>(&body, list),
            "Removed" => reads::<Removed>(&body, list),
            "Role" => reads::<Role>(&body, list),
            "PasswordSet" => reads::<PasswordSet>(&body, list),
            "Setting" => reads::<Setting>(&body, list),
            "Settings" => reads::<Settings>(&body, list),
            "Diagnosis" => reads::<Diagnosis>(&body, list),
            "Task" => reads::<tresor_api::views::Task>(&body, list),
            other => panic!(
                "{} {} answered 200 with {other}, which this test does not know",
                op.method, op.path
            ),
        };
        assert!(
            ok,
            "{} {} does not read as {name}: {body}",
            op.method, op.path
        );
        answered += 1;
    }
    assert!(answered >= 15, "{answered}");
}

/// A request naming a host that is not enrolled is answered 404 (no such host), not 503 (a host
/// that is away): found by the API fuzzer, with `vm register` on a made-up host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_does_not_exist_is_not_found() {
    let db = common::TestDb::new();
    let store = db.store();
    seed_users(&store);
    let data = tempfile::tempdir().unwrap();
    let served = common::serve(store, data.path()).await;
    for (path, body) in [
        ("/api/v1/vms/register", r#"{"host": "nohost", "all": true}"#),
        ("/api/v1/vms", r#"{"name": "web01", "host": "nohost"}"#),
        ("/api/v1/hosts/nohost/enable-encryption", ""),
        ("/api/v1/hosts/nohost/reboot", ""),
    ] {
        let (status, v) =
            common::http_body(&served.addr, "POST", path, Some("admin-token"), body).await;
        assert_eq!(status, 404, "{path}: {v}");
        assert_eq!(v["error"]["code"], "notFound", "{path}: {v}");
    }
}
