//! The disk-key case with real processes: a VM whose second disk has a key of its own. That key
//! is deactivated on the provider and the host restarts: the VM's home key comes back, so the VM
//! is locked but not invalid, the disk says its key is not available, and power-on fails with the
//! exact disk message. Reactivating the key and unlocking brings the disk back with its data.

mod common;
use common::{wait_for, Dev};

#[test]
fn a_missing_disk_key_locks_the_vm_but_leaves_it_valid() {
    let dev = Dev::start(1);
    dev.ok(&[
        "vm",
        "create",
        "db01",
        "--host",
        "host-1",
        "--disk",
        "4M",
        "--encrypt",
        "--own-key-disk",
        "4M",
    ]);
    let vm = dev.vm("db01");
    let home = vm["config"]["keyId"]["keyId"].as_str().unwrap().to_owned();
    let disk = vm["disks"][1]["keyId"]["keyId"]
        .as_str()
        .unwrap()
        .to_owned();
    let disk_path = vm["disks"][1]["path"].as_str().unwrap().to_owned();
    assert_ne!(home, disk, "the second disk has a key of its own: {vm}");
    assert_eq!(vm["disks"][0]["keyId"]["keyId"], home.as_str());
    dev.ok(&["vm", "power-on", "db01"]);
    let out = dev.guest_io("db01", "vd1", "write -P 0x61 0 8k");
    assert!(out.contains("wrote 8192/8192 bytes"), "{out}");

    dev.kms_admin(&["key", "deactivate", &disk]);
    dev.ok(&["host", "reboot", "host-1"]);
    wait_for(
        "db01 is locked, connected, its second disk without key",
        || {
            let v = dev.vm("db01");
            v["cryptoState"] == "locked"
                && v["connectionState"] == "connected"
                && v["lockReason"] == "keyMissingOnKms"
                && v["disks"][1]["keyAvailable"] == false
                && v["disks"][0]["keyAvailable"] == true
        },
    );
    let d: serde_json::Value =
        serde_json::from_str(&dev.ok(&["vm", "diagnose", "db01", "-o", "json"])).unwrap();
    assert_eq!(d["case"], 3, "{d}");
    assert!(d["evidence"].to_string().contains(&disk), "{d}");
    assert!(
        !d["evidence"].to_string().contains(&home),
        "only the missing key: {d}"
    );

    let (ok, _, err) = dev.cli(&["vm", "power-on", "db01"]);
    assert!(!ok);
    let expected = format!("The disk [{disk_path}] is encrypted and a required key was not found.");
    assert!(err.contains(&expected), "{err}");

    dev.kms_admin(&["key", "activate", &disk]);
    let out = dev.ok(&["vm", "unlock", "db01"]);
    assert!(out.contains("1 of 1 unlocked"), "{out}");
    dev.ok(&["vm", "power-on", "db01"]);
    let out = dev.guest_io("db01", "vd1", "read -P 0x61 0 8k");
    assert!(
        out.contains("read 8192/8192 bytes") && !out.contains("failed"),
        "{out}"
    );
}
