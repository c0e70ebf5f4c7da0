//! A failed operation leaves no Active key behind on the provider: what can be checked is
//! checked before a key is made, and a key made for an operation the host then refused is
//! deactivated, with an audit record.

mod common;

use common::Dev;

/// The key server's keys: (id, state, name).
fn keys(dev: &Dev) -> Vec<(String, String, String)> {
    let v: serde_json::Value =
        serde_json::from_str(&dev.kms_admin(&["key", "list", "-o", "json"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["uid"].as_str().unwrap().to_owned(),
                k["state"].as_str().unwrap().to_owned(),
                k["names"].to_string(),
            )
        })
        .collect()
}

#[test]
fn failed_operations_leave_no_active_key() {
    let dev = Dev::start(1);
    let before = keys(&dev);

    // An unknown host: refused before any key is made.
    let (ok, _, err) = dev.cli(&[
        "vm",
        "create",
        "web01",
        "--host",
        "host-9",
        "--disk",
        "4M",
        "--encrypt",
    ]);
    assert!(!ok && err.contains("host-9"), "{err}");
    assert_eq!(keys(&dev), before, "a key was made for an unknown host");

    // The host refuses (the VM's folder exists already): the key made for it is deactivated.
    let datastore = dev.dir.path().join("host-1/datastore");
    std::fs::create_dir_all(datastore.join("taken")).unwrap();
    let (ok, _, err) = dev.cli(&[
        "vm",
        "create",
        "taken",
        "--host",
        "host-1",
        "--disk",
        "4M",
        "--encrypt",
    ]);
    assert!(!ok && err.contains("exists"), "{err}");
    let after = keys(&dev);
    let new: Vec<_> = after.iter().filter(|k| !before.contains(k)).collect();
    assert_eq!(new.len(), 1, "{after:?}");
    assert!(new[0].2.contains("taken"), "{new:?}");
    assert_eq!(new[0].1, "Deactivated", "{new:?}");
    let events = dev.ok(&["event", "list", "--type", "crypto.operation", "-o", "json"]);
    assert!(
        events.contains("deactivate unused key") && events.contains(&new[0].0),
        "{events}"
    );
    // Nothing of it is registered.
    let (ok, _, _) = dev.cli(&["vm", "show", "taken"]);
    assert!(!ok);

    // A disk with a key of its own that the host refuses (more than its free space): the key
    // made for it is deactivated and not left to the VM.
    dev.create_vm("web01", true);
    let before = keys(&dev);
    let vm_before = dev.vm("web01");
    let (ok, _, err) = dev.cli(&["vm", "add-disk", "web01", "--size", "60T", "--own-key"]);
    assert!(!ok && err.contains("free"), "{err}");
    let after = keys(&dev);
    let new: Vec<_> = after.iter().filter(|k| !before.contains(k)).collect();
    assert_eq!(new.len(), 1, "{after:?}");
    assert_eq!(new[0].1, "Deactivated", "{new:?}");
    assert_eq!(dev.vm("web01")["disks"], vm_before["disks"]);
    // The VM still unlocks after a restart of its host with only its own keys.
    dev.ok(&["host", "reboot", "host-1"]);
    common::wait_for("web01 is unlocked again", || {
        dev.vm("web01")["cryptoState"] == "unlocked"
    });
}
