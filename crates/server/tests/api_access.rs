//! The REST API over HTTP on loopback: tokens, the privilege check on every operation and its
//! refusals, the VM shape of the surface contract, events in English and German.

mod common;

use std::sync::Arc;

use common::{http, seed_users};
use tresor_server::store::{EventRow, Store, VmRecord};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_checks_its_privilege() {
    let store = Arc::new(Store::in_memory().unwrap());
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
            power_state: "poweredOff".into(),
            crypto_state: "locked".into(),
            connection_state: "invalid".into(),
            lock_reason: Some("keyMissingOnKms".into()),
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
    let store = Arc::new(Store::in_memory().unwrap());
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
