//! The key broker against the real embedded key server over mutual TLS: each provider answer
//! maps to the cause the locked-VM engine needs.

use tresor_core::ids::KeyRef;
use tresor_core::vm::ProviderAnswer;
use tresor_kmip_client::ClientConfig;
use tresor_kms::config::LimitsConfig;
use tresor_kms::testing::TestServer;
use tresor_server::broker::KeyBroker;
use tresor_tls::CertKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_answers_become_lock_causes() {
    let dir = tempfile::tempdir().unwrap();
    let kms = TestServer::start(dir.path().to_path_buf(), LimitsConfig::default()).await;
    let broker = KeyBroker::new();
    broker.set_provider(
        "corp-kms",
        ClientConfig::new(
            vec![kms.addr.to_string()],
            kms.client_tls("tresor-server", CertKind::Client),
        ),
    );
    assert_eq!(broker.probe("corp-kms").await, Ok(kms.addr.to_string()));

    let key = broker.create_kek("corp-kms", "web01").await.unwrap();
    assert_eq!(key.provider(), "corp-kms");
    let (answer, material) = broker.fetch(&key).await;
    assert_eq!(answer, ProviderAnswer::Active);
    assert_eq!(material.unwrap().expose().len(), 32);

    // Deactivated by the key server's administrator: there, but not Active, so missing.
    tresor_kms::admin::deactivate(kms.engine.store(), &key.key_id, "admin:test").unwrap();
    let (answer, material) = broker.fetch(&key).await;
    assert_eq!(answer, ProviderAnswer::NotActive("Deactivated".into()));
    assert!(material.is_none(), "an inactive key is not handed out");
    tresor_kms::admin::activate(kms.engine.store(), &key.key_id, "admin:test").unwrap();
    assert_eq!(broker.fetch(&key).await.0, ProviderAnswer::Active);

    // A key the provider does not have; a key that belongs to another client.
    assert_eq!(
        broker
            .fetch(&KeyRef::new("corp-kms", "no-such-key"))
            .await
            .0,
        ProviderAnswer::NotFound
    );
    let other = broker.create_kek("corp-kms", "x").await.unwrap();
    let broker2 = KeyBroker::new();
    broker2.set_provider(
        "corp-kms",
        ClientConfig::new(
            vec![kms.addr.to_string()],
            kms.client_tls("someone-else", CertKind::Client),
        ),
    );
    assert!(matches!(
        broker2.fetch(&other).await.0,
        ProviderAnswer::PermissionDenied(_)
    ));

    // A provider name the server does not know, and a provider that is down.
    let (answer, _) = broker.fetch(&KeyRef::new("renamed-kms", &key.key_id)).await;
    assert!(
        matches!(answer, ProviderAnswer::Unreachable(ref m) if m.contains("renamed-kms")),
        "{answer:?}"
    );
    kms.stop().await;
    let (answer, _) = broker.fetch(&key).await;
    assert!(
        matches!(answer, ProviderAnswer::Unreachable(_)),
        "{answer:?}"
    );
    assert!(broker.probe("corp-kms").await.is_err());
}
