//! PyKMIP's client, a foreign KMIP implementation, against the key server over mutual TLS, at
//! KMIP 1.2 and 1.4: Create, Activate, Get, Get Attributes, Locate, Register, Revoke, Destroy.

use std::process::Command;

use tresor_kms::config::LimitsConfig;
use tresor_kms::testing::{pykmip_venv, workspace_root, TestServer};
use tresor_tls::CertKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pykmip_client_speaks_to_tresor_kms() {
    let venv = pykmip_venv();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path().to_path_buf(), LimitsConfig::default()).await;
    let client = server
        .ca
        .issue(CertKind::Client, "pykmip", &[], 30)
        .unwrap();
    let cert = dir.path().join("client.pem");
    let key = dir.path().join("client.key");
    std::fs::write(&cert, &client.cert_pem).unwrap();
    std::fs::write(&key, client.key_pem.as_bytes()).unwrap();
    for version in ["1.2", "1.4"] {
        let port = server.addr.port().to_string();
        let args = [
            workspace_root()
                .join("scripts/pykmip/client_check.py")
                .display()
                .to_string(),
            "127.0.0.1".into(),
            port,
            server.config.tls.client_ca.display().to_string(),
            cert.display().to_string(),
            key.display().to_string(),
            version.into(),
        ];
        let out = tokio::task::spawn_blocking({
            let python = venv.join("bin/python");
            move || Command::new(python).args(args).output().unwrap()
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("OK"),
            "PyKMIP client at KMIP {version} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    server.stop().await;
}
