//! The locked-VM engine's passes while one host does not answer a push (its agent is stopped,
//! its connection still open): the other hosts' VMs are unlocked and their states written
//! meanwhile, and no second pass pushes the silent host the same keys again. Two simulated
//! hosts speak the agent protocol over mutual TLS to the real hub; the keys come from a real
//! key server.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tresor_core::host::HostCryptoState;
use tresor_core::ids::KeyRef;
use tresor_core::protocol::{
    self, AgentMessage, Command, FrameDecoder, HostKey, PowerState, Reply, ServerMessage, VmReport,
};
use tresor_core::registry::Registration;
use tresor_core::vm::{CryptoState, KeyUse};
use tresor_kmip_client::ClientConfig;
use tresor_kms::config::LimitsConfig;
use tresor_kms::testing::TestServer;
use tresor_server::agents::AgentHub;
use tresor_server::broker::KeyBroker;
use tresor_server::engine::{Engine, EngineConfig};
use tresor_tls::CertKind;

async fn wait_until(what: &str, within: Duration, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn report(name: &str, key: &KeyRef, on_host: bool) -> VmReport {
    VmReport {
        disk_formats: Vec::new(),
        data_paths: Vec::new(),
        id: format!("{name}-0123456789"),
        name: name.into(),
        path: format!("/datastore/{name}"),
        encrypted: true,
        power_state: PowerState::PoweredOff,
        key_id: Some(key.clone()),
        keys: vec![HostKey {
            key: key.clone(),
            uses: vec![KeyUse::Home],
            on_host,
        }],
        disks: Vec::new(),
        operation: None,
    }
}

/// A host with one VM whose key it lacks. It counts the pushes it is sent; when `answers`, it
/// takes the keys and says so, otherwise it never answers (a stopped agent).
async fn simulated_host(
    addr: std::net::SocketAddr,
    tls: Arc<tresor_tls::rustls::ClientConfig>,
    host: &'static str,
    vm: VmReport,
    answers: bool,
    pushes: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = tresor_tls::ServerName::try_from("localhost").map_err(std::io::Error::other)?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await?;
    let (mut r, mut w) = tokio::io::split(stream);
    let mut out = protocol::encode(&AgentMessage::Hello {
        host: host.into(),
        protocol: protocol::VERSION,
        agent_version: "simulated".into(),
        boot_id: "boot-1".into(),
        crypto_state: HostCryptoState::Safe,
        keys_held: Vec::new(),
    })
    .map_err(std::io::Error::other)?
    .to_vec();
    out.extend_from_slice(
        &protocol::encode(&AgentMessage::Inventory {
            vms: vec![vm.clone()],
            keys_held: Vec::new(),
            working: None,
        })
        .map_err(std::io::Error::other)?,
    );
    w.write_all(&out).await?;
    w.flush().await?;
    let mut decoder = FrameDecoder::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut seq = 0;
    loop {
        let n = match tokio::time::timeout(Duration::from_secs(1), r.read(&mut buf)).await {
            Ok(n) => n?,
            Err(_) => {
                seq += 1;
                let frame = protocol::encode(&AgentMessage::Heartbeat { seq })
                    .map_err(std::io::Error::other)?;
                w.write_all(&frame).await?;
                w.flush().await?;
                continue;
            }
        };
        if n == 0 {
            return Ok(());
        }
        decoder.push(&buf[..n]);
        while let Some(m) = decoder
            .next_message::<ServerMessage>()
            .map_err(std::io::Error::other)?
        {
            let ServerMessage::Request { id, body, .. } = m else {
                continue;
            };
            if let Command::PushKeys { keys } = body {
                pushes.fetch_add(1, Ordering::SeqCst);
                if !answers {
                    continue;
                }
                let held: Vec<KeyRef> = keys.into_iter().map(|k| k.key).collect();
                let mut vm = vm.clone();
                for k in &mut vm.keys {
                    k.on_host = held.contains(&k.key);
                }
                let mut out = protocol::encode(&AgentMessage::Reply {
                    id,
                    reply: Reply::Done,
                    task: None,
                })
                .map_err(std::io::Error::other)?
                .to_vec();
                out.extend_from_slice(
                    &protocol::encode(&AgentMessage::Inventory {
                        vms: vec![vm],
                        keys_held: held,
                        working: None,
                    })
                    .map_err(std::io::Error::other)?,
                );
                w.write_all(&out).await?;
                w.flush().await?;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_does_not_answer_a_push_holds_up_neither_other_vms_nor_gets_it_twice() {
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
    let key_a = broker.create_kek("corp-kms", "vm-a").await.unwrap();
    let key_b = broker.create_kek("corp-kms", "vm-b").await.unwrap();
    // The provider is out of reach while the hosts come: both VMs lock.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = closed.local_addr().unwrap().to_string();
    drop(closed);
    broker.set_provider("corp-kms", provider(nowhere));

    let pki = common::AgentPki::new();
    let hub = AgentHub::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _hub_task = tokio::spawn(hub.clone().serve(listener, pki.acceptor()));

    let db = common::TestDb::new();
    let store = db.store();
    let engine = Engine::new(
        hub.clone(),
        broker.clone(),
        EngineConfig {
            tick: Duration::from_millis(100),
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_millis(400),
            // Longer than this test waits for anything: the silent host's push is under way
            // throughout.
            request_timeout: Duration::from_secs(60),
            ..EngineConfig::default()
        },
        Some(store.clone()),
    );
    let (vm_a, vm_b) = (report("vm-a", &key_a, false), report("vm-b", &key_b, false));
    for (vm, host, key) in [(&vm_a, "host-1", &key_a), (&vm_b, "host-2", &key_b)] {
        engine
            .register(Registration {
                id: vm.id.clone(),
                name: vm.name.clone(),
                host: host.into(),
                keys: [key.clone()].into(),
            })
            .unwrap();
    }
    let _engine_task = tokio::spawn(engine.clone().run());
    let (pushes_1, pushes_2) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let _host_1 = tokio::spawn(simulated_host(
        addr,
        pki.agent_tls("host-1"),
        "host-1",
        vm_a,
        true,
        pushes_1.clone(),
    ));
    let _host_2 = tokio::spawn(simulated_host(
        addr,
        pki.agent_tls("host-2"),
        "host-2",
        vm_b,
        false,
        pushes_2.clone(),
    ));
    let crypto = |name: &str| store.vm(name).ok().flatten().map(|r| r.crypto_state);
    wait_until("both VMs are locked", Duration::from_secs(20), || {
        crypto("vm-a") == Some(CryptoState::Locked) && crypto("vm-b") == Some(CryptoState::Locked)
    })
    .await;

    // The provider returns: both hosts are sent their keys; host-2 never answers.
    broker.set_provider("corp-kms", provider(kms.addr.to_string()));
    wait_until("host-2 is sent its key", Duration::from_secs(20), || {
        pushes_2.load(Ordering::SeqCst) == 1
    })
    .await;
    // What the API did after a host's answer: a pass of its own, beside the engine's loop.
    let second = tokio::spawn({
        let engine = engine.clone();
        async move { engine.tick().await }
    });
    // host-1's VM is unlocked where the API reads it, while host-2's push is still unanswered.
    wait_until(
        "vm-a is recorded unlocked while host-2 is silent",
        Duration::from_secs(10),
        || crypto("vm-a") == Some(CryptoState::Unlocked),
    )
    .await;
    assert_eq!(pushes_1.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        pushes_2.load(Ordering::SeqCst),
        1,
        "host-2 was sent the key again while the first push was under way"
    );
    assert_eq!(crypto("vm-b"), Some(CryptoState::Locked));
    second.abort();
}
