//! Helpers for the key server's tests: an engine on a fresh database, and requests.

#![allow(dead_code)]

use std::sync::Arc;

use tresor_kmip::message::{
    ProtocolVersion, RequestBatchItem, RequestMessage, RequestPayload, ResponseBatchItem,
    ResponseMessage,
};
use tresor_kms::crypto::MasterKey;
use tresor_kms::engine::{Engine, EngineConfig};
use tresor_kms::store::Store;

pub struct TestKms {
    pub engine: Engine,
    pub dir: tempfile::TempDir,
    /// The database when the tests run on PostgreSQL; dropped after the engine.
    _postgres: Option<tresor_db::testing::ScratchPostgres>,
}

/// Whether the key server's tests run on PostgreSQL (`TRESOR_TEST_KMS_DATABASE=postgres`, which
/// `./scripts/test` sets for a second run of them) instead of SQLite.
pub fn on_postgres() -> bool {
    std::env::var("TRESOR_TEST_KMS_DATABASE").as_deref() == Ok("postgres")
}

pub fn kms() -> TestKms {
    kms_with(EngineConfig::default())
}

pub fn kms_with(config: EngineConfig) -> TestKms {
    let dir = tempfile::tempdir().unwrap();
    let postgres = on_postgres().then(tresor_db::testing::ScratchPostgres::new);
    let store = match &postgres {
        Some(db) => Store::open_at(db.location()).unwrap(),
        None => Store::open(&dir.path().join("kms.sqlite")).unwrap(),
    };
    let engine = Engine::new(
        Arc::new(store),
        Arc::new(MasterKey::ephemeral().unwrap()),
        config,
    );
    TestKms {
        engine,
        dir,
        _postgres: postgres,
    }
}

impl TestKms {
    /// Sends one operation at `version` as `identity`; returns its result.
    pub fn call_as(
        &self,
        identity: &str,
        version: ProtocolVersion,
        payload: RequestPayload,
    ) -> ResponseBatchItem {
        let request = RequestMessage::new(version, vec![RequestBatchItem::new(payload)]);
        // Through the byte interface, as a connection does.
        let bytes = self
            .engine
            .handle_bytes(identity, &request.encode().unwrap())
            .unwrap();
        let response = ResponseMessage::decode(&bytes, &Default::default()).unwrap();
        assert_eq!(response.header.protocol_version, version);
        response.items.into_iter().next().unwrap()
    }

    pub fn call(&self, payload: RequestPayload) -> ResponseBatchItem {
        self.call_as("CN=client-a", ProtocolVersion::V1_4, payload)
    }
}
