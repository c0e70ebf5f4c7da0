//! Key providers through the API against the real embedded key server over mutual TLS: the three
//! ways the server proves itself (uploaded certificate, CSR signed by the provider, self-signed),
//! the status probe with failover, the alarms it raises and clears, the default marker, and every
//! refusal.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{http, http_body, seed_users};
use serde_json::{json, Value};
use tresor_kms::config::LimitsConfig;
use tresor_kms::testing::TestServer;
use tresor_server::store::{Store, VmRecord};
use tresor_tls::CertKind;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn active_alarms(store: &Store) -> Vec<(String, String)> {
    store
        .alarms(true)
        .unwrap()
        .into_iter()
        .map(|a| (a.kind, a.object))
        .collect()
}

fn event_types(store: &Store, provider: &str) -> Vec<String> {
    store
        .events(&tresor_server::store::EventFilter {
            provider: Some(provider.into()),
            ..Default::default()
        })
        .unwrap()
        .into_iter()
        .map(|e| e.event_type)
        .collect()
}

/// Forwards TCP connections on `listener` to `target` (the provider coming back at its address).
fn forward(listener: tokio::net::TcpListener, target: std::net::SocketAddr) {
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_are_added_trusted_probed_and_removed() {
    let kms_dir = tempfile::tempdir().unwrap();
    let kms = TestServer::start(kms_dir.path().to_path_buf(), LimitsConfig::default()).await;
    let data = tempfile::tempdir().unwrap();
    let db = common::TestDb::new();
    let store = db.store();
    seed_users(&store);
    let api = common::serve(store.clone(), data.path()).await;
    let addr = api.addr.as_str();
    let admin = Some("admin-token");

    // A client certificate that expires in 10 days, inside the warning threshold.
    let short = kms
        .ca
        .issue(CertKind::Client, "tresor-server", &[], 10)
        .unwrap();
    let dead = format!("127.0.0.1:{}", free_port());
    let upload = json!({
        "name": "corp-kms",
        "endpoints": [dead, kms.addr.to_string()],
        "caPem": kms.ca_pem,
        "clientCertPem": short.cert_pem,
        "clientKeyPem": short.key_pem.as_str(),
    })
    .to_string();

    // Only Cryptographer.ManageKeyServers may add; ReadKeyServersInfo may look.
    for token in ["viewer-token", "operator-token"] {
        let (status, body) =
            http_body(addr, "POST", "/api/v1/providers", Some(token), &upload).await;
        assert_eq!(status, 403, "{body}");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Cryptographer.ManageKeyServers"));
    }
    // Reading them needs Cryptographer.ReadKeyServersInfo, which neither ReadOnly nor
    // NoCryptoAdmin has.
    for token in ["viewer-token", "operator-token"] {
        let (status, body) = http(addr, "GET", "/api/v1/providers", Some(token)).await;
        assert_eq!(status, 403, "{body}");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Cryptographer.ReadKeyServersInfo"));
    }

    let (status, body) = http_body(addr, "POST", "/api/v1/providers", admin, &upload).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["isDefault"], true, "the first provider is the default");
    assert_eq!(body["trust"]["client"]["expiring"], true, "{body}");
    let key_file = data.path().join("providers/corp-kms/client.key");
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (status, body) = http_body(addr, "POST", "/api/v1/providers", admin, &upload).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("conflict"))
    );

    // Bad input is refused with what to do, and nothing is stored.
    let other = kms.ca.issue(CertKind::Client, "x", &[], 30).unwrap();
    let bad = |change: Value| {
        let mut v: Value = serde_json::from_str(&upload).unwrap();
        v["name"] = json!("bad");
        for (k, val) in change.as_object().unwrap() {
            v[k] = val.clone();
        }
        v.to_string()
    };
    for (change, words) in [
        (
            json!({"clientKeyPem": other.key_pem.as_str()}),
            "not for the client key",
        ),
        (
            json!({"endpoints": ["kms.example.com"]}),
            "is not HOST:PORT",
        ),
        (json!({"endpoints": []}), "at least one endpoint"),
        (json!({"caPem": "garbage"}), "CA certificate is unusable"),
        (json!({"name": "../x"}), "provider name"),
        (json!({"selfSigned": true}), "Choose one way"),
    ] {
        let (status, body) =
            http_body(addr, "POST", "/api/v1/providers", admin, &bad(change)).await;
        assert_eq!(status, 400, "{body}");
        let m = body["error"]["message"].as_str().unwrap();
        assert!(m.contains(words), "{m}");
        assert!(!m.contains("PRIVATE KEY"), "{m}");
    }
    assert_eq!(store.providers().unwrap().len(), 1);

    // The probe: the dead endpoint fails, the server fails over to the live one.
    let (status, st) = http(addr, "GET", "/api/v1/providers/corp-kms/status", admin).await;
    assert_eq!(status, 200, "{st}");
    assert_eq!(st["health"], "degraded", "{st}");
    assert_eq!(st["activeEndpoint"], kms.addr.to_string());
    assert_eq!(st["endpoints"][0]["reachable"], false);
    assert!(st["endpoints"][0]["error"]
        .as_str()
        .unwrap()
        .contains(&dead));
    assert_eq!(st["endpoints"][1]["reachable"], true);
    assert_eq!(st["endpoints"][1]["versions"][0], "1.4");
    assert_eq!(
        st["endpoints"][1]["serverCertificate"]["subject"],
        "CN=localhost"
    );
    let alarms = active_alarms(&store);
    assert!(alarms.contains(&(
        "provider.certificate.expiring".into(),
        "provider:corp-kms:client".into()
    )));
    assert_eq!(
        alarms.len(),
        1,
        "only the short-lived certificate: {alarms:?}"
    );
    assert_eq!(
        event_types(&store, "corp-kms"),
        ["provider.certificate.expiring"]
    );
    // Probing again raises nothing new.
    http(addr, "GET", "/api/v1/providers/corp-kms/status", admin).await;
    assert_eq!(event_types(&store, "corp-kms").len(), 1);
    // The provider works for keys.
    api.broker.create_kek("corp-kms", "web01").await.unwrap();

    // A CSR: the server makes a key and a request; the provider's CA signs it.
    let (status, body) = http_body(
        addr,
        "POST",
        "/api/v1/providers",
        admin,
        &json!({"name": "signed", "endpoints": [kms.addr.to_string()], "caPem": kms.ca_pem, "csr": true}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let csr = body["added"]["csr"].as_str().unwrap().to_owned();
    assert!(csr.contains("CERTIFICATE REQUEST"));
    assert_eq!(body["trust"]["awaitingSignedCertificate"], true);
    let (_, st) = http(addr, "GET", "/api/v1/providers/signed/status", admin).await;
    assert_eq!(st["health"], "awaitingCertificate", "{st}");
    assert!(st["message"]
        .as_str()
        .unwrap()
        .contains("tresor provider certificate signed"));
    let (status, body) = http_body(
        addr,
        "POST",
        "/api/v1/providers/signed/certificate",
        admin,
        &json!({"clientCertPem": other.cert_pem}).to_string(),
    )
    .await;
    assert_eq!(status, 400, "a certificate for another key: {body}");
    let signed = kms.ca.sign_client_csr(&csr, "tresor-server", 365).unwrap();
    let (status, body) = http_body(
        addr,
        "POST",
        "/api/v1/providers/signed/certificate",
        admin,
        &json!({"clientCertPem": signed}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, st) = http(addr, "GET", "/api/v1/providers/signed/status", admin).await;
    assert_eq!(st["health"], "ok", "{st}");
    api.broker.create_kek("signed", "web02").await.unwrap();
    let (status, _) = http_body(
        addr,
        "POST",
        "/api/v1/providers/signed/certificate",
        admin,
        &json!({"clientCertPem": signed}).to_string(),
    )
    .await;
    assert_eq!(status, 409, "the certificate is set already");

    // Self-signed: the provider does not trust it yet, so the provider is unreachable for the
    // server, with an alarm and an event; removing the provider clears the alarm.
    let (status, body) = http_body(
        addr,
        "POST",
        "/api/v1/providers",
        admin,
        &json!({"name": "self", "endpoints": [kms.addr.to_string()], "caPem": kms.ca_pem, "selfSigned": true}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let cert = body["added"]["clientCertificate"].as_str().unwrap();
    let der = tresor_tls::parse_certs(cert.as_bytes(), "c").unwrap();
    let info = tresor_tls::certificate_info(&der[0]).unwrap();
    assert_eq!(
        (info.subject.as_str(), info.issuer.as_str()),
        ("CN=tresor-server", "CN=tresor-server")
    );
    let (_, st) = http(addr, "GET", "/api/v1/providers/self/status", admin).await;
    assert_eq!(st["health"], "unreachable", "{st}");
    assert!(
        active_alarms(&store).contains(&("provider.unreachable".into(), "provider:self".into()))
    );
    assert_eq!(event_types(&store, "self"), ["provider.unreachable"]);
    let (status, _) = http(addr, "DELETE", "/api/v1/providers/self", admin).await;
    assert_eq!(status, 200);
    assert!(!active_alarms(&store)
        .iter()
        .any(|(_, o)| o == "provider:self"));
    assert!(!data.path().join("providers/self").exists());

    // An endpoint that comes back: unreachable, then reachable, the alarm raised and cleared.
    let port = free_port();
    let (status, body) = http_body(
        addr,
        "POST",
        "/api/v1/providers",
        admin,
        &json!({"name": "flaky", "endpoints": [format!("127.0.0.1:{port}")], "caPem": kms.ca_pem,
                "clientCertPem": other.cert_pem, "clientKeyPem": other.key_pem.as_str()})
        .to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, st) = http(addr, "GET", "/api/v1/providers/flaky/status", admin).await;
    assert_eq!(st["health"], "unreachable");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    forward(listener, kms.addr);
    let (_, st) = http(addr, "GET", "/api/v1/providers/flaky/status", admin).await;
    assert_eq!(st["health"], "ok", "{st}");
    assert!(!active_alarms(&store)
        .iter()
        .any(|(_, o)| o == "provider:flaky"));
    assert_eq!(
        event_types(&store, "flaky"),
        ["provider.unreachable", "provider.reachable"]
    );
    let (_, events) = http(addr, "GET", "/api/v1/events?provider=flaky&lang=de", admin).await;
    assert!(
        events[1]["message"]
            .as_str()
            .unwrap()
            .starts_with("Der Schlüsselanbieter flaky antwortet wieder"),
        "{events}"
    );

    // The default marker moves; list and show say so.
    let (status, _) = http(addr, "POST", "/api/v1/providers/signed/default", admin).await;
    assert_eq!(status, 200);
    let (_, list) = http(addr, "GET", "/api/v1/providers", admin).await;
    let defaults: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["isDefault"] == true)
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(defaults, ["signed"]);
    let (status, _) = http(addr, "POST", "/api/v1/providers/nope/default", admin).await;
    assert_eq!(status, 404);

    // A provider that holds a VM's key cannot be removed.
    store
        .put_vm(&VmRecord {
            id: "id1".into(),
            name: "web02".into(),
            host: "host-1".into(),
            path: "/vms/web02".into(),
            encrypted: true,
            key_provider: Some("signed".into()),
            key_id: Some("1".into()),
            power_state: tresor_core::protocol::PowerState::PoweredOff,
            crypto_state: tresor_core::vm::CryptoState::Unlocked,
            connection_state: tresor_core::vm::ConnectionState::Connected,
            lock_reason: None,
            report: "{}".into(),
        })
        .unwrap();
    let (status, body) = http(addr, "DELETE", "/api/v1/providers/signed", admin).await;
    assert_eq!(status, 409);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("VM web02"),
        "{body}"
    );
    let (status, _) = http(
        addr,
        "DELETE",
        "/api/v1/providers/signed",
        Some("viewer-token"),
    )
    .await;
    assert_eq!(status, 403);
    kms.stop().await;
}
