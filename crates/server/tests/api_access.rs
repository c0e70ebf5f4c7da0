//! The REST API over HTTP on loopback: tokens, the privilege check on every operation and its
//! refusals, the VM shape of the surface contract, events in English and German.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tresor_server::agents::AgentHub;
use tresor_server::api::{router, seed_roles, token_hash, AppState};
use tresor_server::broker::KeyBroker;
use tresor_server::engine::{Engine, EngineConfig};
use tresor_server::enrol::Enroller;
use tresor_server::store::{EventRow, Store, VmRecord};
use tresor_tls::CertificateAuthority;

async fn http(addr: &str, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    let status: u16 = text[9..12].parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_checks_its_privilege() {
    let store = Arc::new(Store::in_memory().unwrap());
    seed_roles(&store).unwrap();
    for (user, role) in [
        ("admin", "Administrator"),
        ("operator", "NoCryptoAdmin"),
        ("viewer", "ReadOnly"),
    ] {
        store.add_user(user, "x").unwrap();
        store.grant(user, role).unwrap();
        store
            .add_token(&token_hash(&format!("{user}-token")), user, "test", 0)
            .unwrap();
    }
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
    let hub = AgentHub::new();
    let engine = Engine::new(
        hub.clone(),
        Arc::new(KeyBroker::new()),
        EngineConfig::default(),
        Some(store.clone()),
    );
    let enroller = Arc::new(
        Enroller::new(
            store.clone(),
            CertificateAuthority::generate("CA", 2).unwrap(),
        )
        .unwrap(),
    );
    let app = router(AppState {
        store: store.clone(),
        engine,
        hub,
        enroller,
        broker: Arc::new(KeyBroker::new()),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

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
