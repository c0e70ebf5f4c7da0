//! The key server's request handler on arbitrary bytes: every input gets a valid KMIP answer.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use tresor_kmip::message::ResponseMessage;
use tresor_kms::crypto::MasterKey;
use tresor_kms::engine::{Engine, EngineConfig};
use tresor_kms::store::Store;

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<(Engine, tempfile::TempDir)> = OnceLock::new();
    &ENGINE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(&dir.path().join("kms.sqlite")).unwrap();
            let engine = Engine::new(Arc::new(store), Arc::new(MasterKey::ephemeral().unwrap()), EngineConfig::default());
            (engine, dir)
        })
        .0
}

fuzz_target!(|data: &[u8]| {
    let response = engine().handle_bytes("CN=fuzz", data).expect("a response encodes");
    ResponseMessage::decode(&response, &Default::default()).expect("the response is valid KMIP");
});
