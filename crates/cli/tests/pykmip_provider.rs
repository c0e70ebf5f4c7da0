//! Cases 1 and 3 of the procedure with PyKMIP's server as the key provider, a foreign KMIP
//! implementation, beside the embedded one: the server creates the VM's key there; the network
//! to PyKMIP cut by a proxy locks the VM with kmsClusterError when the host restarts, and its
//! return unlocks it;
//! a key revoked with PyKMIP's own client locks it with keyMissingOnKms, and since PyKMIP cannot
//! reactivate a key, its administrator restores the database from a backup, and the VM unlocks.

mod common;
use common::{wait_for, Dev, PyKmip};

#[test]
fn pykmip_as_the_provider_through_cases_1_and_3() {
    let dev = Dev::start(1);
    let mut pykmip = PyKmip::start(&dev);
    let kms = dev.dir.path().join("kms");
    let path = |p: &str| kms.join(p).display().to_string();
    dev.ok(&[
        "provider",
        "add",
        "pykmip",
        "--kmip",
        &pykmip.endpoint(),
        "--ca",
        &path("tls/ca.pem"),
        "--client-cert",
        &path("clients/tresor-server.pem"),
        "--client-key",
        &path("clients/tresor-server.key"),
    ]);
    let st: serde_json::Value =
        serde_json::from_str(&dev.ok(&["provider", "status", "pykmip", "-o", "json"])).unwrap();
    assert_eq!(st["health"], "ok", "{st}");

    dev.ok(&[
        "vm",
        "create",
        "web01",
        "--host",
        "host-1",
        "--disk",
        "4M",
        "--encrypt",
        "--provider",
        "pykmip",
    ]);
    assert_eq!(
        dev.ok(&["vm", "get", "web01", "config.keyId.providerId.id"])
            .trim(),
        "pykmip"
    );
    let key = dev
        .ok(&["vm", "get", "web01", "config.keyId.keyId"])
        .trim()
        .to_owned();
    assert_eq!(pykmip.admin(&dev, "state", &key), "ACTIVE");
    dev.ok(&["vm", "power-on", "web01"]);
    let out = dev.guest_io("web01", "vd0", "write -P 0x3c 0 16k");
    assert!(out.contains("wrote 16384/16384 bytes"), "{out}");

    // Case 1: the connection to PyKMIP is cut, and the host restarts.
    pykmip.proxy.cut();
    dev.ok(&["host", "reboot", "host-1"]);
    wait_for("web01 is locked with kmsClusterError", || {
        let v = dev.vm("web01");
        v["cryptoState"] == "locked" && v["lockReason"] == "kmsClusterError"
    });
    let st: serde_json::Value =
        serde_json::from_str(&dev.ok(&["provider", "status", "pykmip", "-o", "json"])).unwrap();
    assert_eq!(st["health"], "unreachable", "{st}");
    assert!(dev
        .ok(&["alarm", "list", "-o", "json"])
        .contains("provider:pykmip"));
    pykmip.proxy.restore();
    wait_for("web01 unlocks by itself", || {
        dev.vm("web01")["cryptoState"] == "unlocked"
    });
    dev.ok(&["provider", "status", "pykmip"]);
    assert!(!dev
        .ok(&["alarm", "list", "-o", "json"])
        .contains("provider:pykmip"));
    dev.ok(&["vm", "power-on", "web01"]);

    // PyKMIP's administrator backs up its database (stopped, so that the copy is whole).
    pykmip.halt();
    std::fs::copy(
        pykmip.dir.join("pykmip.db"),
        pykmip.dir.join("pykmip.db.backup"),
    )
    .unwrap();
    pykmip.resume();

    // Case 3: the key is revoked with PyKMIP's own client, and the host restarts.
    assert_eq!(pykmip.admin(&dev, "revoke", &key), "DEACTIVATED");
    dev.ok(&["host", "reboot", "host-1"]);
    wait_for("web01 is locked with keyMissingOnKms", || {
        let v = dev.vm("web01");
        v["cryptoState"] == "locked" && v["lockReason"] == "keyMissingOnKms"
    });
    let d: serde_json::Value =
        serde_json::from_str(&dev.ok(&["vm", "diagnose", "web01", "-o", "json"])).unwrap();
    assert_eq!(d["case"], 3, "{d}");
    assert!(d["evidence"].to_string().contains(&key), "{d}");

    // PyKMIP cannot reactivate: its administrator restores the database from the backup.
    pykmip.halt();
    std::fs::copy(
        pykmip.dir.join("pykmip.db.backup"),
        pykmip.dir.join("pykmip.db"),
    )
    .unwrap();
    pykmip.resume();
    assert_eq!(pykmip.admin(&dev, "state", &key), "ACTIVE");
    let out = dev.ok(&["vm", "unlock", "web01"]);
    assert!(out.contains("1 of 1 unlocked"), "{out}");
    dev.ok(&["vm", "power-on", "web01"]);
    let out = dev.guest_io("web01", "vd0", "read -P 0x3c 0 16k");
    assert!(
        out.contains("read 16384/16384 bytes") && !out.contains("failed"),
        "{out}"
    );
}
