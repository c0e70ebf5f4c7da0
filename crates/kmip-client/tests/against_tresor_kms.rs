//! The client against the real key server over mutual TLS on loopback.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tresor_kmip::message::ProtocolVersion;
use tresor_kmip::spec::{ResultReason, State};
use tresor_kmip_client::{name_attribute, ClientConfig, ClientError, KmipClient};
use tresor_kms::config::LimitsConfig;
use tresor_kms::testing::TestServer;
use tresor_tls::CertKind;

async fn server(limits: LimitsConfig) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path().to_path_buf(), limits).await;
    (s, dir)
}

fn client(s: &TestServer, endpoints: Vec<String>) -> KmipClient {
    KmipClient::new(ClientConfig::new(
        endpoints,
        s.client_tls("tresor-server", CertKind::Client),
    ))
}

/// A loopback port nothing listens on.
async fn dead_port() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    drop(l);
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiates_creates_activates_and_gets_a_key() {
    let (s, _dir) = server(LimitsConfig::default()).await;
    let c = client(&s, vec![s.addr.to_string()]);
    assert_eq!(c.version().await.unwrap(), ProtocolVersion::V1_4);
    let uid = c
        .create_active_aes_key(256, vec![name_attribute("vm-1")])
        .await
        .unwrap();
    assert_eq!(c.state(&uid).await.unwrap(), State::Active);
    let key = c.get_key(&uid).await.unwrap();
    assert_eq!(key.len(), 32);
    assert_eq!(c.get_key(&uid).await.unwrap(), key);
    assert_eq!(c.locate_by_name("vm-1").await.unwrap(), vec![uid]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_from_the_provider_are_not_connection_errors() {
    let (s, _dir) = server(LimitsConfig::default()).await;
    let c = client(&s, vec![s.addr.to_string()]);
    let err = c.get_key("no-such-key").await.unwrap_err();
    assert!(!err.is_connection());
    assert_eq!(err.reason(), Some(ResultReason::ItemNotFound));
    assert_eq!(err.endpoint(), Some(s.addr.to_string().as_str()));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_to_the_next_endpoint_and_names_every_dead_one() {
    let (s, _dir) = server(LimitsConfig::default()).await;
    let dead = dead_port().await;
    let c = client(&s, vec![dead.clone(), s.addr.to_string()]);
    let uid = c.create_aes_key(128, vec![]).await.unwrap();
    assert_eq!(c.current_endpoint(), s.addr.to_string());
    assert!(!uid.is_empty());

    let dead2 = dead_port().await;
    let c = client(&s, vec![dead.clone(), dead2.clone()]);
    let err = c.create_aes_key(128, vec![]).await.unwrap_err();
    assert!(err.is_connection(), "{err}");
    let text = err.to_string();
    assert!(text.contains(&dead) && text.contains(&dead2), "{text}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_certificate_from_another_ca_is_refused() {
    let (s, _dir) = server(LimitsConfig::default()).await;
    let other = tresor_tls::CertificateAuthority::generate("Other", 30).unwrap();
    let cert = other.issue(CertKind::Client, "intruder", &[], 30).unwrap();
    let tls = tresor_tls::client_config(
        &tresor_tls::parse_certs(s.ca_pem.as_bytes(), "ca").unwrap(),
        tresor_tls::parse_certs(cert.cert_pem.as_bytes(), "c").unwrap(),
        tresor_tls::parse_key(cert.key_pem.as_bytes(), "k").unwrap(),
    )
    .unwrap();
    let c = KmipClient::new(ClientConfig::new(vec![s.addr.to_string()], tls));
    let err = c.version().await.unwrap_err();
    assert!(matches!(err, ClientError::Connection { .. }), "{err}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_lose_their_connection_and_others_go_on() {
    let limits = LimitsConfig {
        message_timeout_secs: 1,
        ..LimitsConfig::default()
    };
    let (s, _dir) = server(limits).await;
    let good = client(&s, vec![s.addr.to_string()]);
    good.version().await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(s.client_tls("hostile", CertKind::Client));
    let open = || async {
        let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        tls.connect(tresor_tls::ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap()
    };
    // A length of gigabytes: closed at once.
    let mut a = open().await;
    a.write_all(&[0x42, 0x00, 0x78, 0x01, 0x7F, 0xFF, 0xFF, 0xF8])
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), a.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(
        n, 0,
        "the server closes a connection that announces a huge message"
    );
    // A client that stalls in the middle of a message: closed after the message timeout.
    let mut b = open().await;
    b.write_all(&[0x42, 0x00, 0x78, 0x01, 0x00, 0x00, 0x01, 0x00, 1, 2, 3])
        .await
        .unwrap();
    b.flush().await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), b.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "the server closes a stalled connection");
    // Well-framed garbage gets a KMIP error and the connection stays usable.
    let mut c = open().await;
    let mut junk = vec![0x42, 0x00, 0x78, 0x01, 0, 0, 0, 8];
    junk.extend_from_slice(&[0x42, 0x00, 0x77, 0x0B, 0, 0, 0, 0]);
    c.write_all(&junk).await.unwrap();
    let mut header = [0u8; 8];
    c.read_exact(&mut header).await.unwrap();
    assert_eq!(
        &header[..4],
        &[0x42, 0x00, 0x7B, 0x01],
        "a Response Message comes back"
    );
    // Meanwhile the well-behaved client is served.
    let uid = good.create_aes_key(256, vec![]).await.unwrap();
    assert!(good.get_key(&uid).await.is_ok());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vcenter_style_certificates_without_client_usage_are_accepted() {
    let (s, _dir) = server(LimitsConfig::default()).await;
    let c = KmipClient::new(ClientConfig::new(
        vec![s.addr.to_string()],
        s.client_tls("vcenter", CertKind::ServerUsageOnly),
    ));
    assert!(c.create_aes_key(256, vec![]).await.is_ok());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_clients_and_rsa_server_certificates_work() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let s = TestServer::start_with(d.clone(), LimitsConfig::default(), |ca, tls| {
        // An RSA server certificate, issued by the (ECDSA) test CA with openssl.
        std::fs::write(d.join("ca.key"), ca.key_pem()).unwrap();
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(&d)
                .output()
                .expect("openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "rsa.key",
            "-subj",
            "/CN=localhost",
            "-out",
            "rsa.csr",
        ]);
        std::fs::write(
            d.join("ext.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "rsa.csr",
            "-CA",
            "tls/ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "rsa.pem",
        ]);
        tls.cert = d.join("rsa.pem");
        tls.key = d.join("rsa.key");
    })
    .await;
    // TLS 1.3 (the default) and TLS 1.2 only.
    let c = client(&s, vec![s.addr.to_string()]);
    assert!(c.create_aes_key(256, vec![]).await.is_ok());
    let cert = s.ca.issue(CertKind::Client, "tls12", &[], 30).unwrap();
    let roots = {
        let mut r = tresor_tls::rustls::RootCertStore::empty();
        for ca in tresor_tls::parse_certs(s.ca_pem.as_bytes(), "ca").unwrap() {
            r.add(ca).unwrap();
        }
        r
    };
    let tls12 = tresor_tls::rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        tresor_tls::rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&tresor_tls::rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(
        tresor_tls::parse_certs(cert.cert_pem.as_bytes(), "c").unwrap(),
        tresor_tls::parse_key(cert.key_pem.as_bytes(), "k").unwrap(),
    )
    .unwrap();
    let c = KmipClient::new(ClientConfig::new(
        vec![s.addr.to_string()],
        std::sync::Arc::new(tls12),
    ));
    let uid = c.create_aes_key(128, vec![]).await.unwrap();
    assert_eq!(c.get_key(&uid).await.unwrap().len(), 16);
    s.stop().await;
}

/// Thousands of connections that never start a handshake take no client's place: a few per
/// address are set up, the rest are closed at once, and a client with a certificate is served
/// while they are open (before, it waited for them to time out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_strangers_do_not_keep_clients_out() {
    let limits = LimitsConfig {
        max_connections: 64,
        ..LimitsConfig::default()
    };
    let (s, _dir) = server(limits).await;
    let mut idle = Vec::new();
    // From another address than the client's (all of 127.0.0.0/8 is this machine).
    let stranger: std::net::SocketAddr = "127.0.0.2:0".parse().unwrap();
    let connected = std::time::Instant::now();
    for _ in 0..4200 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(stranger).unwrap();
        if let Ok(c) = socket.connect(s.addr).await {
            idle.push(c);
        }
    }
    let good = client(&s, vec![s.addr.to_string()]);
    let served = tokio::time::timeout(Duration::from_secs(10), good.version()).await;
    assert!(
        matches!(served, Ok(Ok(_))),
        "a client was kept out by idle connections: {served:?}"
    );
    // Most of the idle ones were closed at once: counted until the surplus is turned away, but
    // before the handshake timeout (5 s) would close the rest anyway.
    let still_open = || {
        idle.iter()
            .filter(|c| {
                matches!(c.try_read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            })
            .count()
    };
    let mut open = still_open();
    while open > 32 && connected.elapsed() < Duration::from_secs(4) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        open = still_open();
    }
    assert!(
        open <= 32,
        "{open} idle connections from one address were kept"
    );
}
