//! What the agent's integration tests share: a host's configuration in a folder, keys, and
//! reading replies.
#![allow(dead_code)] // each test uses a part

use std::path::Path;
use std::time::Duration;

use tresor_agent::disk::QemuTools;
use tresor_agent::host::HostConfig;
use tresor_agent::qemu::QemuConfig;
use tresor_core::ids::KeyRef;
use tresor_core::protocol::{KeyMaterial, Reply, SecretBytes};

/// Host `host-1` with its datastore and state in `dir`, the QEMU runtime, and guests that
/// have 300 ms to shut down.
pub fn config(dir: &Path) -> HostConfig {
    HostConfig {
        name: "host-1".into(),
        datastore: dir.join("datastore"),
        state_dir: dir.join("state"),
        key_capacity: 64,
        qemu: QemuConfig {
            shutdown_timeout: Duration::from_millis(300),
            ..QemuConfig::default()
        },
        runtime: Default::default(),
        tools: QemuTools::default(),
        seed_dir: tresor_agent::host::DEFAULT_SEED_DIR.into(),
    }
}

/// The same under TCG (the nested KVM of the test machines boots no kernel).
pub fn config_tcg(dir: &Path) -> HostConfig {
    let mut c = config(dir);
    c.qemu.prefer_kvm = false;
    c
}

/// Key `id` of provider `kms`, 32 bytes of `byte`.
pub fn key(id: &str, byte: u8) -> KeyMaterial {
    KeyMaterial {
        key: KeyRef::new("kms", id),
        material: SecretBytes::new(vec![byte; 32]),
    }
}

/// A reply that is not a failure.
pub fn ok(reply: Reply) -> Reply {
    assert!(!matches!(reply, Reply::Failed { .. }), "{reply:?}");
    reply
}

/// A failure's code and message.
pub fn failed(reply: Reply) -> (String, String) {
    match reply {
        Reply::Failed { code, message } => (code, message),
        other => panic!("expected a failure, got {other:?}"),
    }
}
