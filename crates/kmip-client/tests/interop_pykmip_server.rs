//! Tresor's KMIP client against PyKMIP's server, a foreign implementation, over mutual TLS.
//! PyKMIP offers ECDSA suites only with an ECDSA certificate, which the test CA issues.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tresor_kmip::message::{ProtocolVersion, RequestPayload, RevocationReason};
use tresor_kmip::spec::{ObjectType, ResultReason, RevocationReasonCode, State};
use tresor_kmip_client::{name_attribute, ClientConfig, KmipClient};
use tresor_kms::testing::pykmip_venv;
use tresor_tls::{CertKind, CertificateAuthority};

/// A pykmip-server process, stopped with SIGINT when dropped.
struct PyKmipServer {
    child: Child,
}

impl Drop for PyKmipServer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_pykmip(dir: &Path, ca: &CertificateAuthority, port: u16) -> PyKmipServer {
    let server = ca
        .issue(
            CertKind::Server,
            "localhost",
            &["localhost", "127.0.0.1"],
            30,
        )
        .unwrap();
    std::fs::write(dir.join("server.pem"), &server.cert_pem).unwrap();
    std::fs::write(dir.join("server.key"), server.key_pem.as_bytes()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    let conf = format!(
        "[server]\nhostname=127.0.0.1\nport={port}\ncertificate_path={d}/server.pem\nkey_path={d}/server.key\n\
         ca_path={d}/ca.pem\nauth_suite=TLS1.2\npolicy_path={d}/policies\nenable_tls_client_auth=True\n\
         logging_level=INFO\ndatabase_path={d}/pykmip.db\n",
        d = dir.display()
    );
    std::fs::write(dir.join("server.conf"), conf).unwrap();
    let child = Command::new(pykmip_venv().join("bin/pykmip-server"))
        .arg("-f")
        .arg(dir.join("server.conf"))
        .arg("-l")
        .arg(dir.join("server.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pykmip-server");
    let server = PyKmipServer { child };
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "pykmip-server did not start; see {}",
            dir.join("server.log").display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tresor_client_speaks_to_pykmip_server() {
    let _venv = pykmip_venv();
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate("Interop CA", 30).unwrap();
    let port = free_port();
    let _server = start_pykmip(dir.path(), &ca, port);
    let client_cert = ca
        .issue(CertKind::Client, "tresor-server", &[], 30)
        .unwrap();
    let tls = tresor_tls::client_config(
        &tresor_tls::parse_certs(ca.cert_pem().as_bytes(), "ca").unwrap(),
        tresor_tls::parse_certs(client_cert.cert_pem.as_bytes(), "cert").unwrap(),
        tresor_tls::parse_key(client_cert.key_pem.as_bytes(), "key").unwrap(),
    )
    .unwrap();
    let endpoint = format!("127.0.0.1:{port}");

    for fixed in [None, Some(ProtocolVersion::V1_2)] {
        let mut config = ClientConfig::new(vec![endpoint.clone()], tls.clone());
        config.version = fixed;
        let c = KmipClient::new(config);
        let version = c.version().await.unwrap();
        assert!(version >= ProtocolVersion::V1_2, "negotiated {version}");

        let uid = c
            .create_aes_key(256, vec![name_attribute("interop")])
            .await
            .unwrap();
        assert_eq!(c.state(&uid).await.unwrap(), State::PreActive);
        c.activate(&uid).await.unwrap();
        assert_eq!(c.state(&uid).await.unwrap(), State::Active);
        let key = c.get_key(&uid).await.unwrap();
        assert_eq!(key.len(), 32);
        assert!(c.locate_by_name("interop").await.unwrap().contains(&uid));

        let registered = tresor_kmip::message::symmetric_key(3, 128, vec![7u8; 16].into());
        let payload = c
            .call(RequestPayload::Register {
                object_type: ObjectType::SymmetricKey as u32,
                template: Default::default(),
                object: registered,
            })
            .await
            .unwrap();
        let tresor_kmip::message::ResponsePayload::Register { uid: reg, .. } = payload else {
            panic!("{payload:?}")
        };
        assert_eq!(&c.get_key(&reg).await.unwrap()[..], &[7u8; 16]);

        c.revoke(
            &uid,
            RevocationReason {
                code: RevocationReasonCode::CessationOfOperation as u32,
                message: None,
            },
        )
        .await
        .unwrap();
        assert_eq!(c.state(&uid).await.unwrap(), State::Deactivated);
        c.destroy(&uid).await.unwrap();
        let err = c.get_key("999999").await.unwrap_err();
        assert!(!err.is_connection(), "{err}");
        assert!(
            matches!(
                err.reason(),
                Some(ResultReason::ItemNotFound) | Some(ResultReason::PermissionDenied)
            ),
            "{err}"
        );
    }
}
