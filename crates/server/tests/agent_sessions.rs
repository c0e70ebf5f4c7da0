//! A real agent (its host on real QEMU tools) and the server's agent hub, over mutual TLS on
//! loopback: hello, inventory, requests and replies, heartbeats, reconnection after the server
//! restarts, and refusal of an agent whose certificate names another host.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::AgentPki;
use tokio::sync::broadcast;
use tresor_agent::disk::QemuTools;
use tresor_agent::host::{Host, HostConfig};
use tresor_agent::qemu::QemuConfig;
use tresor_agent::session::{self, SessionConfig};
use tresor_core::ids::KeyRef;
use tresor_core::protocol::{Command, KeyMaterial, Reply, SecretBytes, VmSpec};
use tresor_server::agents::{AgentHub, HubError, HubEvent};

fn host(dir: &std::path::Path, name: &str) -> Arc<Mutex<Host>> {
    Arc::new(Mutex::new(
        Host::open(HostConfig {
            name: name.into(),
            datastore: dir.join("datastore"),
            state_dir: dir.join("state"),
            key_capacity: 32,
            qemu: QemuConfig::default(),
            runtime: Default::default(),
            tools: QemuTools::default(),
            seed_dir: tresor_agent::host::DEFAULT_SEED_DIR.into(),
        })
        .unwrap(),
    ))
}

async fn next_event(
    rx: &mut broadcast::Receiver<HubEvent>,
    want: impl Fn(&HubEvent) -> bool,
) -> HubEvent {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let e = rx.recv().await.unwrap();
            if want(&e) {
                return e;
            }
        }
    })
    .await
    .expect("the event came")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_connects_reports_obeys_and_reconnects() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = AgentPki::new();
    let hub = AgentHub::new();
    let mut events = hub.subscribe();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(hub.clone().serve(listener, pki.acceptor()));

    let h = host(tmp.path(), "host-1");
    let config = SessionConfig {
        server: addr.to_string(),
        server_name: "localhost".into(),
        tls: pki.agent_tls("host-1"),
        heartbeat: Duration::from_millis(200),
        max_backoff: Duration::from_millis(500),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(session::run(config, h.clone(), async {
        let _ = stop_rx.await;
    }));

    let e = next_event(&mut events, |e| matches!(e, HubEvent::Connected { .. })).await;
    assert!(
        matches!(e, HubEvent::Connected { ref host, ref boot_id, .. } if host == "host-1" && !boot_id.is_empty()),
        "{e:?}"
    );
    next_event(&mut events, |e| matches!(e, HubEvent::Inventory { .. })).await;
    assert_eq!(hub.connected(), vec!["host-1".to_string()]);

    // Keys pushed over the session land in the host's key cache, and the inventory says so.
    let k = KeyRef::new("kms", "k1");
    let reply = hub
        .request(
            "host-1",
            Command::PushKeys {
                keys: vec![KeyMaterial {
                    key: k.clone(),
                    material: SecretBytes::new(vec![7; 32]),
                }],
            },
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(reply, Reply::Done);
    let e = next_event(
        &mut events,
        |e| matches!(e, HubEvent::Inventory { keys_held, .. } if !keys_held.is_empty()),
    )
    .await;
    assert!(matches!(e, HubEvent::Inventory { keys_held, .. } if keys_held == vec![k.clone()]));
    let spec = VmSpec {
        disk_format: Default::default(),
        id: None,
        name: "vm1".into(),
        memory_mib: 64,
        vcpus: 1,
        disks: vec![],
        key: None,
        networks: Vec::new(),
    };
    let reply = hub
        .request(
            "host-1",
            Command::CreateVm { spec },
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert!(
        matches!(reply, Reply::Vm { ref vm } if vm.name == "vm1"),
        "{reply:?}"
    );
    let reply = hub
        .request(
            "host-1",
            Command::PowerOn { vm: "nope".into() },
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert!(
        matches!(reply, Reply::Failed { ref code, .. } if code == "noSuchVm"),
        "{reply:?}"
    );
    assert_eq!(
        hub.request("host-2", Command::Reboot, Duration::from_secs(1))
            .await,
        Err(HubError::NotConnected("host-2".into()))
    );

    // The server goes away: the agent notices and comes back when it returns.
    server.abort();
    let _ = server.await;
    next_event(&mut events, |e| matches!(e, HubEvent::Disconnected { .. })).await;
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let server = tokio::spawn(hub.clone().serve(listener, pki.acceptor()));
    next_event(&mut events, |e| matches!(e, HubEvent::Connected { .. })).await;
    // The agent still holds its key (the agent, not the host, lost its connection).
    let e = next_event(&mut events, |e| matches!(e, HubEvent::Inventory { .. })).await;
    assert!(
        matches!(e, HubEvent::Inventory { keys_held, vms, .. } if keys_held == vec![k.clone()] && vms.len() == 1)
    );

    let _ = stop_tx.send(());
    agent.await.unwrap();
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cannot_speak_for_another_host() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = AgentPki::new();
    let hub = AgentHub::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(hub.clone().serve(listener, pki.acceptor()));
    // Host "impostor" presents the certificate of host-1.
    let h = host(tmp.path(), "impostor");
    let config = SessionConfig {
        server: addr.to_string(),
        server_name: "localhost".into(),
        tls: pki.agent_tls("host-1"),
        heartbeat: Duration::from_millis(200),
        max_backoff: Duration::from_millis(200),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(session::run(config, h, async {
        let _ = stop_rx.await;
    }));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(hub.connected().is_empty());
    let _ = stop_tx.send(());
    agent.await.unwrap();
    server.abort();
}

/// A host that says much at once (here 5,000 notices) pushes older events out of the hub's
/// broadcast before a busy subscriber reads them; a host's arrival, which starts work of its
/// own (an earlier leader's pushes settled, the host key restored), is still told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_arrival_is_told_however_many_events_follow_it() {
    use tokio::io::AsyncWriteExt;
    use tresor_core::host::HostCryptoState;
    use tresor_core::protocol::{self, AgentMessage};

    let pki = AgentPki::new();
    let hub = AgentHub::new();
    let mut events = hub.subscribe();
    let mut probe = hub.subscribe();
    let mut arrivals = hub.arrivals();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(hub.clone().serve(listener, pki.acceptor()));

    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = tresor_tls::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(pki.agent_tls("host-1"))
        .connect(name, tcp)
        .await
        .unwrap();
    let held = vec![KeyRef::new("kms", "k1")];
    let mut out: Vec<u8> = protocol::encode(&AgentMessage::Hello {
        host: "host-1".into(),
        protocol: protocol::VERSION,
        agent_version: "test".into(),
        boot_id: "boot-1".into(),
        crypto_state: HostCryptoState::Safe,
        keys_held: held.clone(),
    })
    .unwrap()
    .to_vec();
    for i in 0..5000 {
        out.extend_from_slice(
            &protocol::encode(&AgentMessage::Notice {
                vm: None,
                kind: "test".into(),
                message: format!("notice {i}"),
            })
            .unwrap(),
        );
    }
    tls.write_all(&out).await.unwrap();
    tls.flush().await.unwrap();

    // A second subscriber reads as they come, until the last notice.
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match probe.recv().await {
                Ok(HubEvent::Notice { message, .. }) if message == "notice 4999" => break,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .unwrap();
    // The first did not read meanwhile: the connection is gone from its events.
    match events.recv().await {
        Err(broadcast::error::RecvError::Lagged(_)) => {}
        other => panic!("the first event was not a lag: {other:?}"),
    }
    while let Ok(e) = events.try_recv() {
        assert!(
            !matches!(e, HubEvent::Connected { .. }),
            "the connection was still in the events"
        );
    }
    // The arrivals still have it, with what the hello said.
    let arrival = tokio::time::timeout(Duration::from_secs(5), arrivals.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(arrival.host, "host-1");
    assert_eq!(arrival.crypto_state, HostCryptoState::Safe);
    assert_eq!(arrival.keys_held, held);
    drop(tls);
    server.abort();
}
