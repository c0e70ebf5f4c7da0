//! The locked-VM engine with a real key server, a real agent (QEMU, LUKS) and the agent hub over
//! mutual TLS, in one process: a host restart with the provider up unlocks silently; with the
//! provider down the VM locks with kmsClusterError and unlocks when it returns; a key deactivated
//! on the provider locks with keyMissingOnKms until its administrator reactivates it; under the
//! manual policy the VM waits for an operator's unlock.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tresor_agent::disk::QemuTools;
use tresor_agent::host::{Host, HostConfig};
use tresor_agent::qemu::QemuConfig;
use tresor_agent::session::{self, SessionConfig};
use tresor_core::protocol::{Command, DiskSpec, KeyMaterial, PowerState, Reply, VmSpec};
use tresor_core::reconcile::UnlockPolicy;
use tresor_core::registry::Registration;
use tresor_core::vm::LockReason;
use tresor_core::Lang;
use tresor_kmip_client::ClientConfig;
use tresor_kms::config::LimitsConfig;
use tresor_kms::testing::TestServer;
use tresor_server::agents::AgentHub;
use tresor_server::broker::KeyBroker;
use tresor_server::engine::{Engine, EngineConfig};
use tresor_tls::CertKind;

async fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_procedures_cases_1_3_and_5_in_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let kms = TestServer::start(tmp.path().join("kms"), LimitsConfig::default()).await;
    let provider = |addr: String| {
        ClientConfig::new(
            vec![addr],
            kms.client_tls("tresor-server", CertKind::Client),
        )
    };
    let broker = Arc::new(KeyBroker::new());
    broker.set_provider("corp-kms", provider(kms.addr.to_string()));

    // The server's agent endpoint and one host.
    let pki = common::AgentPki::new();
    let hub = AgentHub::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _server = tokio::spawn(hub.clone().serve(listener, pki.acceptor()));
    let host = Arc::new(Mutex::new(
        Host::open(HostConfig {
            name: "host-1".into(),
            datastore: tmp.path().join("datastore"),
            state_dir: tmp.path().join("state"),
            key_capacity: 32,
            qemu: QemuConfig {
                shutdown_timeout: Duration::from_millis(200),
                ..QemuConfig::default()
            },
            runtime: Default::default(),
            tools: QemuTools::default(),
            seed_dir: tresor_agent::host::DEFAULT_SEED_DIR.into(),
        })
        .unwrap(),
    ));
    let session = SessionConfig {
        server: addr.to_string(),
        server_name: "localhost".into(),
        tls: pki.agent_tls("host-1"),
        heartbeat: Duration::from_millis(300),
        max_backoff: Duration::from_millis(500),
    };
    let _agent = tokio::spawn(session::run(session, host.clone(), std::future::pending()));
    wait_until("host-1 connects", || {
        hub.connected() == vec!["host-1".to_string()]
    })
    .await;

    let db = common::TestDb::new();
    let store = db.store();
    let engine = Engine::new(
        hub.clone(),
        broker.clone(),
        EngineConfig {
            tick: Duration::from_millis(100),
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_millis(400),
            ..EngineConfig::default()
        },
        Some(store.clone()),
    );
    let _engine_task = tokio::spawn(engine.clone().run());
    let t = Duration::from_secs(30);

    // Encryption mode, a KEK for the VM, and the VM.
    let host_key = broker.create_kek("corp-kms", "host-1").await.unwrap();
    let material = broker.fetch(&host_key).await.1.unwrap();
    assert_eq!(
        hub.request(
            "host-1",
            Command::EnableEncryption {
                host_key: KeyMaterial {
                    key: host_key,
                    material
                }
            },
            t
        )
        .await
        .unwrap(),
        Reply::Done
    );
    let kek = broker.create_kek("corp-kms", "web01").await.unwrap();
    let material = broker.fetch(&kek).await.1.unwrap();
    hub.request(
        "host-1",
        Command::PushKeys {
            keys: vec![KeyMaterial {
                key: kek.clone(),
                material,
            }],
        },
        t,
    )
    .await
    .unwrap();
    // The operator's intent first: web01, with this id and key, on host-1.
    engine
        .register(Registration {
            id: "0123456789abcdef".into(),
            name: "web01".into(),
            host: "host-1".into(),
            keys: [kek.clone()].into(),
        })
        .unwrap();
    let spec = VmSpec {
        disk_format: Default::default(),
        id: Some("0123456789abcdef".into()),
        name: "web01".into(),
        memory_mib: 64,
        vcpus: 1,
        disks: vec![DiskSpec {
            size: 4 << 20,
            own_key: None,
        }],
        key: Some(kek.clone()),
        networks: Vec::new(),
    };
    assert!(matches!(
        hub.request("host-1", Command::CreateVm { spec }, t)
            .await
            .unwrap(),
        Reply::Vm { .. }
    ));
    let state = |e: &Engine| e.summary("web01").map(|(c, conn, r, _)| (c, conn, r));
    let unlocked = || Some(("unlocked".to_string(), "connected".to_string(), None));
    wait_until("web01 is unlocked", || state(&engine) == unlocked()).await;

    // A host restart with the provider up: the keys come back, nothing is reported locked.
    hub.request("host-1", Command::Reboot, t).await.unwrap();
    wait_until("keys pushed after the restart", || {
        engine.events().iter().any(|e| e.event.id == "key.pushed")
    })
    .await;
    wait_until("web01 unlocked again", || state(&engine) == unlocked()).await;
    assert!(
        !engine
            .events()
            .iter()
            .any(|e| e.event.id.starts_with("vm.locked")),
        "{:?}",
        engine.events()
    );

    // Case 1: the provider is unreachable while the host restarts.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    broker.set_provider("corp-kms", provider(dead));
    hub.request("host-1", Command::Reboot, t).await.unwrap();
    wait_until("web01 locked with kmsClusterError", || {
        state(&engine)
            == Some((
                "locked".into(),
                "invalid".into(),
                Some(LockReason::KmsClusterError),
            ))
    })
    .await;
    let locked = engine
        .events()
        .into_iter()
        .rev()
        .find(|e| e.event.id == "vm.locked.kmsClusterError")
        .unwrap();
    assert_eq!(
        locked.message(Lang::En),
        "The virtual machine is locked because of a key provider error."
    );
    assert_eq!(
        locked.message(Lang::De),
        "Die virtuelle Maschine ist wegen eines KMS-Clusterfehlers gesperrt."
    );
    // The provider returns (at another address: its name is what counts): unlocked by itself.
    broker.set_provider("corp-kms", provider(kms.addr.to_string()));
    wait_until("web01 unlocked after the provider returned", || {
        state(&engine) == unlocked()
    })
    .await;
    assert_eq!(
        engine.events().last().map(|e| e.event.id),
        Some("vm.unlocked")
    );

    // Case 3: the key is deactivated on the provider and the host restarts.
    tresor_kms::admin::deactivate(kms.engine.store(), &kek.key_id, "admin:test").unwrap();
    hub.request("host-1", Command::Reboot, t).await.unwrap();
    wait_until("web01 locked with keyMissingOnKms", || {
        state(&engine)
            == Some((
                "locked".into(),
                "invalid".into(),
                Some(LockReason::KeyMissingOnKms),
            ))
    })
    .await;
    tresor_kms::admin::activate(kms.engine.store(), &kek.key_id, "admin:test").unwrap();
    wait_until("web01 unlocked after reactivation", || {
        state(&engine) == unlocked()
    })
    .await;

    // Case 5 under the manual policy: the provider has the key, the host does not, and the
    // server waits for an operator.
    engine.set_policy(UnlockPolicy::Manual);
    hub.request("host-1", Command::Reboot, t).await.unwrap();
    wait_until("web01 locked with keyMissingOnHost", || {
        state(&engine)
            == Some((
                "locked".into(),
                "invalid".into(),
                Some(LockReason::KeyMissingOnHost),
            ))
    })
    .await;
    assert!(engine.request_unlock("web01", "operator"));
    wait_until("web01 unlocked by the operator", || {
        state(&engine) == unlocked()
    })
    .await;
    // The VM runs again.
    host.lock().unwrap().handle(Command::EnableEncryption {
        host_key: KeyMaterial {
            key: tresor_core::ids::KeyRef::new("corp-kms", "host-again"),
            material: tresor_core::protocol::SecretBytes::new(vec![1; 32]),
        },
    });
    // The host answers with the VM as it is now: running.
    match hub
        .request("host-1", Command::PowerOn { vm: "web01".into() }, t)
        .await
        .unwrap()
    {
        Reply::Vm { vm } => assert_eq!(vm.power_state, PowerState::PoweredOn),
        other => panic!("{other:?}"),
    }
    hub.request("host-1", Command::PowerOff { vm: "web01".into() }, t)
        .await
        .unwrap();
    kms.stop().await;
}
