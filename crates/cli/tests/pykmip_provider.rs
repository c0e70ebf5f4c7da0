//! The procedure's cases with PyKMIP's server as the key provider, a foreign KMIP implementation,
//! beside the embedded one (whose runs are the `case*` files). Cases 1 and 3: the network to
//! PyKMIP cut by a proxy locks the VM with kmsClusterError when the host restarts, and its return
//! unlocks it; a key revoked with PyKMIP's own client locks it with keyMissingOnKms, and since
//! PyKMIP cannot reactivate a key, its administrator restores the database from a backup, and the
//! VM unlocks. Case 2 (the register privilege), case 4 (a new server trusting PyKMIP under the
//! same name at another address), case 5 (keys missing only on the host, unlocked per provider)
//! and the disk-key case run with PyKMIP as the default provider.

mod common;
use common::{wait_for, Dev, PyKmip};

#[test]
fn pykmip_as_the_provider_through_cases_1_and_3() {
    let dev = Dev::start(1);
    let mut pykmip = PyKmip::start(&dev);
    pykmip.add_to(&dev, false);
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

    // PyKMIP's administrator backs up its database.
    pykmip.backup();

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
    // PyKMIP is not Tresor's key server: no `tresor kms` command for its administrator.
    let steps = d["nextSteps"].to_string();
    assert!(steps.contains(&key) && !steps.contains("tresor kms"), "{d}");

    // PyKMIP cannot reactivate: its administrator restores the database from the backup.
    pykmip.restore_backup();
    assert_eq!(pykmip.admin(&dev, "state", &key), "ACTIVE");
    // Under the automatic policy the server may have unlocked it already (it asks again while
    // the VM waits); an unlock then has nothing left to do.
    let out = dev.ok(&["vm", "unlock", "web01"]);
    assert!(
        out.contains("1 of 1 unlocked") || out.contains("nothing to unlock"),
        "{out}"
    );
    wait_for("web01 is unlocked", || {
        dev.vm("web01")["cryptoState"] == "unlocked"
    });
    dev.ok(&["vm", "power-on", "web01"]);
    let out = dev.guest_io("web01", "vd0", "read -P 0x3c 0 16k");
    assert!(
        out.contains("read 16384/16384 bytes") && !out.contains("failed"),
        "{out}"
    );
}

/// Case 5 with PyKMIP: keys missing only on the host, pushed again by an unlock of every VM whose
/// keys live on PyKMIP.
#[test]
fn pykmip_as_the_provider_through_case_5() {
    let dev = Dev::start(1);
    let _pykmip = PyKmip::start_as_default(&dev);
    dev.ok(&["settings", "set", "unlock.policy", "manual"]);
    dev.create_vm("web01", true);
    assert_eq!(
        dev.ok(&["vm", "get", "web01", "config.keyId.providerId.id"])
            .trim(),
        "pykmip"
    );
    dev.ok(&["vm", "power-on", "web01"]);
    let out = dev.guest_io("web01", "vd0", "write -P 0x5b 0 4k");
    assert!(out.contains("wrote 4096/4096 bytes"), "{out}");
    dev.ok(&["host", "reboot", "host-1"]);
    wait_for("web01 is locked with keyMissingOnHost", || {
        dev.vm("web01")["lockReason"] == "keyMissingOnHost"
    });
    let out = dev.ok(&["vm", "unlock", "--provider", "pykmip"]);
    assert!(out.contains("1 of 1 unlocked"), "{out}");
    dev.ok(&["vm", "power-on", "web01"]);
    let out = dev.guest_io("web01", "vd0", "read -P 0x5b 0 4k");
    assert!(
        out.contains("read 4096/4096 bytes") && !out.contains("failed"),
        "{out}"
    );
}

/// Case 2 with PyKMIP: registering a VM whose keys must be fetched from PyKMIP needs
/// `Cryptographer.RegisterVM`.
#[test]
fn pykmip_as_the_provider_through_case_2() {
    let dev = Dev::start(1);
    let _pykmip = PyKmip::start_as_default(&dev);
    let pw = dev.dir.path().join("op.pw");
    std::fs::write(&pw, "operators-long-password\n").unwrap();
    dev.ok(&[
        "user",
        "add",
        "operator",
        "--password-file",
        &pw.display().to_string(),
        "--role",
        "NoCryptoAdmin",
    ]);
    let config = dev.dir.path().join("op-config");
    let (ok, _, err) = dev.cli_logged_in(
        &config,
        "operators-long-password\n",
        &["login", "--user", "operator"],
    );
    assert!(ok, "{err}");
    dev.create_vm("web01", true);
    let path = dev.ok(&["vm", "get", "web01", "path"]).trim().to_owned();
    dev.ok(&["vm", "unregister", "web01"]);
    dev.ok(&["host", "reboot", "host-1"]);
    let (ok, _, err) =
        dev.cli_logged_in(&config, "", &["vm", "register", &path, "--host", "host-1"]);
    assert!(!ok && err.contains("Cryptographer.RegisterVM"), "{err}");
    dev.ok(&["vm", "register", &path, "--host", "host-1"]);
    wait_for("web01 is unlocked", || {
        dev.vm("web01")["cryptoState"] == "unlocked"
    });
    dev.ok(&["vm", "power-on", "web01"]);
}

/// The disk-key case with PyKMIP: the disk's own key revoked with PyKMIP's client locks the VM
/// but leaves it valid, with the exact disk message.
#[test]
fn pykmip_as_the_provider_for_a_disk_key() {
    let dev = Dev::start(1);
    let pykmip = PyKmip::start_as_default(&dev);
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
    let disk = vm["disks"][1]["keyId"]["keyId"]
        .as_str()
        .unwrap()
        .to_owned();
    let disk_path = vm["disks"][1]["path"].as_str().unwrap().to_owned();
    assert_eq!(pykmip.admin(&dev, "revoke", &disk), "DEACTIVATED");
    dev.ok(&["host", "reboot", "host-1"]);
    wait_for("db01 is locked but connected", || {
        let v = dev.vm("db01");
        v["cryptoState"] == "locked"
            && v["connectionState"] == "connected"
            && v["disks"][1]["keyAvailable"] == false
    });
    let (ok, _, err) = dev.cli(&["vm", "power-on", "db01"]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "The disk [{disk_path}] is encrypted and a required key was not found."
        )),
        "{err}"
    );
}

/// Case 4 with PyKMIP: the server and its database are lost; a new server trusts PyKMIP under the
/// same provider name at another address, the host re-enrols, and registering every VM on it
/// fetches the keys from PyKMIP by id.
#[test]
fn pykmip_as_the_provider_through_case_4() {
    let dev = Dev::start(1);
    let pykmip = PyKmip::start_as_default(&dev);
    dev.create_vm("web01", true);
    let key = dev
        .ok(&["vm", "get", "web01", "config.keyId.keyId"])
        .trim()
        .to_owned();
    let root = dev.dir.path();
    let old_config = root.join("server/server.toml").display().to_string();
    common::stop(&common::pid_of(&["server --config", &old_config]));
    std::fs::remove_dir_all(root.join("server")).unwrap();
    let agent_toml = common::find_file(root, "host-1/agent.toml").unwrap();
    common::stop(&common::pid_of(&[
        "agent --config",
        &agent_toml.display().to_string(),
    ]));

    let server = common::NewServer::start(&root.join("new-server"));
    let cli = |args: &[&str]| server.cli(args);
    // The same name, another address: PyKMIP directly instead of through the proxy.
    let kms = root.join("kms");
    let path = |p: &str| kms.join(p).display().to_string();
    cli(&[
        "provider",
        "add",
        "pykmip",
        "--kmip",
        &format!("127.0.0.1:{}", pykmip.port),
        "--ca",
        &path("tls/ca.pem"),
        "--client-cert",
        &path("clients/tresor-server.pem"),
        "--client-key",
        &path("clients/tresor-server.key"),
    ]);
    let _agent = server.rejoin("host-1", &agent_toml);
    assert!(cli(&["vm", "register", "--all", "--host", "host-1"]).contains("web01"));
    wait_for("web01 unlocks", || {
        cli(&["vm", "get", "web01", "cryptoState"]).trim() == "unlocked"
    });
    assert_eq!(
        cli(&["vm", "get", "web01", "config.keyId.keyId"]).trim(),
        key
    );
    cli(&["vm", "power-on", "web01"]);
}
