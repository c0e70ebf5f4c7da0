//! A key server on a loopback port with fresh certificates, for tests of this and other crates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::oneshot;
use tresor_tls::{CertKind, CertificateAuthority};

use crate::config::{KmsConfig, LimitsConfig, TlsConfig};
use crate::engine::Engine;
use crate::server;

/// A running key server and the files a client needs.
#[derive(Debug)]
pub struct TestServer {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub config: KmsConfig,
    pub ca: Arc<CertificateAuthority>,
    pub ca_pem: String,
    pub engine: Arc<Engine>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Certificates for a test: a CA, a server certificate for localhost, written to `dir/tls`.
pub fn write_test_pki(dir: &std::path::Path) -> (Arc<CertificateAuthority>, TlsConfig) {
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).expect("tls dir");
    let ca = CertificateAuthority::generate("Tresor Test CA", 30).expect("ca");
    let server = ca
        .issue(
            CertKind::Server,
            "localhost",
            &["localhost", "127.0.0.1"],
            30,
        )
        .expect("server cert");
    std::fs::write(tls.join("ca.pem"), ca.cert_pem()).expect("write");
    std::fs::write(tls.join("server.pem"), &server.cert_pem).expect("write");
    std::fs::write(tls.join("server.key"), server.key_pem.as_bytes()).expect("write");
    (
        Arc::new(ca),
        TlsConfig {
            cert: tls.join("server.pem"),
            key: tls.join("server.key"),
            client_ca: tls.join("ca.pem"),
            require_client_auth_usage: false,
        },
    )
}

impl TestServer {
    /// Starts a key server in `dir` on a free loopback port.
    pub async fn start(dir: PathBuf, limits: LimitsConfig) -> TestServer {
        TestServer::start_with(dir, limits, |_, _| {}).await
    }

    /// Starts a key server after `adjust` may change its TLS files (given the CA and the TLS
    /// configuration).
    pub async fn start_with(
        dir: PathBuf,
        limits: LimitsConfig,
        adjust: impl FnOnce(&CertificateAuthority, &mut TlsConfig),
    ) -> TestServer {
        let (ca, mut tls) = write_test_pki(&dir);
        adjust(&ca, &mut tls);
        let config = KmsConfig {
            listen: "127.0.0.1:0".into(),
            data_dir: dir.join("data"),
            tls,
            administrators: Vec::new(),
            limits,
            metrics_listen: None,
            database: None,
            database_password_file: None,
        };
        let engine = Arc::new(server::open_engine(&config).expect("engine"));
        let acceptor = server::acceptor(&config).expect("acceptor");
        let listener = server::bind(&config).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel();
        let limits = config.limits.clone();
        let task = tokio::spawn(server::serve(
            listener,
            acceptor,
            engine.clone(),
            limits,
            async {
                let _ = stopped.await;
            },
        ));
        TestServer {
            addr,
            dir,
            ca_pem: ca.cert_pem().to_owned(),
            ca,
            config,
            engine,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A client TLS configuration with a certificate for `common_name`.
    pub fn client_tls(
        &self,
        common_name: &str,
        kind: CertKind,
    ) -> Arc<tresor_tls::rustls::ClientConfig> {
        let cert = self
            .ca
            .issue(kind, common_name, &[], 30)
            .expect("client cert");
        let ca = tresor_tls::parse_certs(self.ca_pem.as_bytes(), "ca").expect("ca");
        tresor_tls::client_config(
            &ca,
            tresor_tls::parse_certs(cert.cert_pem.as_bytes(), "client").expect("cert"),
            tresor_tls::parse_key(cert.key_pem.as_bytes(), "key").expect("key"),
        )
        .expect("client config")
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// The root of the source tree.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Python venv with PyKMIP (`TRESOR_PYKMIP_VENV`, or `.venv/pykmip` in the source tree), made
/// by `scripts/setup-test-deps`.
pub fn pykmip_venv() -> PathBuf {
    let venv = std::env::var_os("TRESOR_PYKMIP_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/pykmip"));
    assert!(
        venv.join("bin/python").exists(),
        "PyKMIP is not installed at {}: run scripts/setup-test-deps (or set TRESOR_PYKMIP_VENV)",
        venv.display()
    );
    venv
}
