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
    // Under the automatic policy the server may have sent the key already (it asks again while
    // the VM waits); an unlock then has nothing left to do.
    let out = dev.ok(&["vm", "unlock", "db01"]);
    assert!(
        out.contains("1 of 1 unlocked") || out.contains("nothing to unlock"),
        "{out}"
    );
    wait_for("db01 is unlocked", || {
        dev.vm("db01")["cryptoState"] == "unlocked"
    });
    dev.ok(&["vm", "power-on", "db01"]);
    let out = dev.guest_io("db01", "vd1", "read -P 0x61 0 8k");
    assert!(
        out.contains("read 8192/8192 bytes") && !out.contains("failed"),
        "{out}"
    );
}

/// A disk added to an existing, powered-off VM: with the VM's key, or with a key of its own; to a
/// plain VM, a plain disk. Refused while the VM runs.
#[test]
fn disks_are_added_to_existing_vms() {
    let dev = Dev::start(1);
    dev.create_vm("app01", true);
    dev.ok(&["vm", "power-on", "app01"]);
    let (ok, _, err) = dev.cli(&["vm", "add-disk", "app01", "--size", "4M"]);
    assert!(!ok && err.contains("power"), "refused while running: {err}");
    dev.ok(&["vm", "power-off", "app01"]);
    dev.ok(&["vm", "add-disk", "app01", "--size", "4M"]);
    dev.ok(&["vm", "add-disk", "app01", "--size", "4M", "--own-key"]);
    let vm = dev.vm("app01");
    let home = vm["config"]["keyId"]["keyId"].as_str().unwrap();
    let disks = vm["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 3, "{vm}");
    assert_eq!(disks[1]["keyId"]["keyId"], home, "{vm}");
    assert_ne!(disks[2]["keyId"]["keyId"], home, "{vm}");
    assert!(disks.iter().all(|d| d["keyAvailable"] == true), "{vm}");
    // The new disks open in the running VM.
    dev.ok(&["vm", "power-on", "app01"]);
    for dev_id in ["vd1", "vd2"] {
        let out = dev.guest_io("app01", dev_id, "write -P 0x7e 0 4k");
        assert!(out.contains("wrote 4096/4096 bytes"), "{dev_id}: {out}");
        let out = dev.guest_io("app01", dev_id, "read -P 0x7e 0 4k");
        assert!(!out.contains("failed"), "{dev_id}: {out}");
    }
    // The added disk's own key is audited, and survives a host restart like any other.
    assert!(dev
        .ok(&[
            "event",
            "list",
            "--vm",
            "app01",
            "--type",
            "crypto.operation"
        ])
        .contains("add disk"));
    dev.ok(&["host", "reboot", "host-1"]);
    // The server sends every key back by itself; then the VM powers on with all three disks.
    wait_for("app01 powers on again", || {
        dev.cli(&["vm", "power-on", "app01"]).0
    });
    let out = dev.guest_io("app01", "vd2", "read -P 0x7e 0 4k");
    assert!(
        out.contains("read 4096/4096 bytes") && !out.contains("failed"),
        "{out}"
    );

    // A plain VM gets a plain disk; a key of its own needs an encrypted VM.
    dev.create_vm("plain01", false);
    dev.ok(&["vm", "add-disk", "plain01", "--size", "4M"]);
    assert_eq!(dev.vm("plain01")["disks"].as_array().unwrap().len(), 2);
    let (ok, _, err) = dev.cli(&["vm", "add-disk", "plain01", "--size", "4M", "--own-key"]);
    assert!(!ok && err.contains("encrypt"), "{err}");
    let (ok, _, err) = dev.cli(&["vm", "add-disk", "nope", "--size", "4M"]);
    assert!(!ok && err.contains("nope"), "{err}");
}
