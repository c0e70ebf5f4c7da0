//! Hosts enrol with one-time join tokens that pin the server's CA, and then hold sessions with the
//! certificate they got.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tresor_agent::disk::QemuTools;
use tresor_agent::host::{Host, HostConfig};
use tresor_agent::qemu::QemuConfig;
use tresor_agent::session::{self, SessionConfig};
use tresor_server::agents::AgentHub;
use tresor_server::enrol::Enroller;
use tresor_server::store::JoinGrant;
use tresor_tls::{CertKind, CertificateAuthority, ClientAuth};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_joins_once_with_a_token_and_then_connects() {
    let tmp = tempfile::tempdir().unwrap();
    let db = common::TestDb::new();
    let store = db.store();
    let ca = CertificateAuthority::generate("Tresor Server CA", 2).unwrap();
    let server_cert = ca
        .issue(CertKind::Server, "localhost", &["localhost"], 2)
        .unwrap();
    let ca_pem = ca.cert_pem().to_owned();
    // The server presents its CA with its certificate, so that a joining agent can pin it.
    let mut chain = tresor_tls::parse_certs(server_cert.cert_pem.as_bytes(), "s").unwrap();
    chain.extend(tresor_tls::parse_certs(ca_pem.as_bytes(), "ca").unwrap());
    let acceptor = tokio_rustls::TlsAcceptor::from(
        tresor_tls::server_config(
            chain,
            tresor_tls::parse_key(server_cert.key_pem.as_bytes(), "k").unwrap(),
            &tresor_tls::parse_certs(ca_pem.as_bytes(), "ca").unwrap(),
            ClientAuth::OptionalClientAuthUsage,
        )
        .unwrap(),
    );
    let enroller = Arc::new(Enroller::new(store.clone(), ca).unwrap());
    let hub = AgentHub::new();
    hub.set_join_authority(enroller.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let _server = tokio::spawn(hub.clone().serve(listener, acceptor));

    let any_new = JoinGrant {
        host: None,
        replace: false,
    };
    let token = enroller.new_token(600, &any_new).unwrap();
    let enrolment = session::join(&addr, "localhost", &token, "host-7")
        .await
        .unwrap();
    assert!(enrolment.certificate.contains("BEGIN CERTIFICATE"));
    let info = tresor_tls::certificate_info(
        &tresor_tls::parse_certs(enrolment.certificate.as_bytes(), "c").unwrap()[0],
    )
    .unwrap();
    assert_eq!(info.subject, "CN=host-7");
    assert_eq!(store.hosts().unwrap()[0].name, "host-7");

    // The token works once.
    let err = session::join(&addr, "localhost", &token, "host-8")
        .await
        .unwrap_err();
    assert!(
        err.contains("unknown, used or expired") && err.contains("tresor host token"),
        "{err}"
    );
    // A token that pins another CA: the agent does not talk to this server at all.
    let other = CertificateAuthority::generate("Other", 2).unwrap();
    let pin = {
        let der = tresor_tls::parse_certs(other.cert_pem().as_bytes(), "o").unwrap();
        tresor_tls::certificate_info(&der[0]).unwrap().sha256
    };
    let secret = token.split('.').next().unwrap();
    let err = session::join(&addr, "localhost", &format!("{secret}.{pin}"), "host-9")
        .await
        .unwrap_err();
    assert!(err.contains("not the one the token names"), "{err}");
    let err = session::join(&addr, "localhost", "garbage", "host-9")
        .await
        .unwrap_err();
    assert!(err.contains("malformed"), "{err}");

    // With its certificate the host holds a session.
    let tls = tresor_tls::client_config(
        &tresor_tls::parse_certs(enrolment.ca.as_bytes(), "ca").unwrap(),
        tresor_tls::parse_certs(enrolment.certificate.as_bytes(), "c").unwrap(),
        tresor_tls::parse_key(enrolment.key.as_bytes(), "k").unwrap(),
    )
    .unwrap();
    let host = Arc::new(Mutex::new(
        Host::open(HostConfig {
            name: "host-7".into(),
            datastore: tmp.path().join("ds"),
            state_dir: tmp.path().join("state"),
            key_capacity: 8,
            qemu: QemuConfig::default(),
            runtime: Default::default(),
            tools: QemuTools::default(),
            seed_dir: tresor_agent::host::DEFAULT_SEED_DIR.into(),
        })
        .unwrap(),
    ));
    let listener_addr = addr.clone();
    let config = SessionConfig {
        server: addr.clone(),
        server_name: "localhost".into(),
        tls,
        heartbeat: Duration::from_millis(200),
        max_backoff: Duration::from_millis(300),
    };
    let _agent = tokio::spawn(session::run(config, host, std::future::pending()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while hub.connected() != vec!["host-7".to_string()] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the enrolled host did not connect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A token made for any new name cannot enrol host-7 a second time.
    let token = enroller.new_token(600, &any_new).unwrap();
    let err = session::join(&addr, "localhost", &token, "host-7")
        .await
        .unwrap_err();
    assert!(
        err.contains("enrolled already") && err.contains("--replace"),
        "{err}"
    );
    // A token for one name enrols only that name.
    let for_8 = JoinGrant {
        host: Some("host-8".into()),
        replace: false,
    };
    let token = enroller.new_token(600, &for_8).unwrap();
    let err = session::join(&addr, "localhost", &token, "host-9")
        .await
        .unwrap_err();
    assert!(err.contains("for host host-8"), "{err}");

    // Replacing host-7 is an explicit act: the new certificate is host-7, the old one is refused
    // (its session ends and does not come back).
    let replace = JoinGrant {
        host: Some("host-7".into()),
        replace: true,
    };
    let token = enroller.new_token(600, &replace).unwrap();
    let second = session::join(&addr, "localhost", &token, "host-7")
        .await
        .unwrap();
    assert!(second.certificate.contains("BEGIN CERTIFICATE"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        hub.connected().is_empty(),
        "the replaced certificate still holds a session"
    );

    // The new certificate connects; after the host is removed it is refused too.
    let host2 = Arc::new(Mutex::new(
        Host::open(HostConfig {
            name: "host-7".into(),
            datastore: tmp.path().join("ds2"),
            state_dir: tmp.path().join("state2"),
            key_capacity: 8,
            qemu: QemuConfig::default(),
            runtime: Default::default(),
            tools: QemuTools::default(),
            seed_dir: tresor_agent::host::DEFAULT_SEED_DIR.into(),
        })
        .unwrap(),
    ));
    let tls2 = tresor_tls::client_config(
        &tresor_tls::parse_certs(second.ca.as_bytes(), "ca").unwrap(),
        tresor_tls::parse_certs(second.certificate.as_bytes(), "c").unwrap(),
        tresor_tls::parse_key(second.key.as_bytes(), "k").unwrap(),
    )
    .unwrap();
    let config2 = SessionConfig {
        server: listener_addr.clone(),
        server_name: "localhost".into(),
        tls: tls2,
        heartbeat: Duration::from_millis(200),
        max_backoff: Duration::from_millis(300),
    };
    let _agent2 = tokio::spawn(session::run(config2, host2, std::future::pending()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while hub.connected() != vec!["host-7".to_string()] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replacing host did not connect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(store.remove_host("host-7").unwrap());
    hub.disconnect("host-7");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(hub.connected().is_empty(), "a removed host holds a session");
}
