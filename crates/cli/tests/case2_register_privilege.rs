//! The procedure's case 2 with real processes: registering an encrypted VM again. A user without
//! `Cryptographer.RegisterVM` (the built-in NoCryptoAdmin role) is refused with the privilege
//! named when the VM's keys must be fetched, and allowed when they are already on the host; an
//! administrator registers it and it unlocks with the guest's data intact. Users log in with a
//! password, the token is kept per server, and a wrong password is refused.

mod common;
use std::os::unix::fs::PermissionsExt;

use common::{runtime_args, wait_for, Dev};

#[test]
fn registering_a_vm_whose_keys_must_be_fetched_needs_the_privilege() {
    registering_a_vm_whose_keys_must_be_fetched_needs_the_privilege_under("qemu");
}

#[test]
fn registering_a_vm_whose_keys_must_be_fetched_needs_the_privilege_under_libvirt() {
    registering_a_vm_whose_keys_must_be_fetched_needs_the_privilege_under("libvirt");
}

fn registering_a_vm_whose_keys_must_be_fetched_needs_the_privilege_under(runtime: &str) {
    let dev = Dev::start_with(1, &runtime_args(runtime, &["web01", "web02", "plain01"]));
    let dir = dev.dir.path();
    let password = dir.join("operator.password");
    std::fs::write(&password, "operators-long-password\n").unwrap();
    let password = password.display().to_string();
    dev.ok(&[
        "user",
        "add",
        "operator",
        "--password-file",
        &password,
        "--role",
        "NoCryptoAdmin",
    ]);
    let users = dev.ok(&["user", "list"]);
    assert!(
        users.contains("operator") && users.contains("NoCryptoAdmin"),
        "{users}"
    );

    // The operator logs in; the token is kept in a private file.
    let config = dir.join("operator-config");
    let op = |stdin: &str, args: &[&str]| dev.cli_logged_in(&config, stdin, args);
    let (ok, _, err) = op("", &["vm", "list"]);
    assert!(!ok && err.contains("tresor login"), "{err}");
    let (ok, _, err) = op("wrong password\n", &["login", "--user", "operator"]);
    assert!(!ok && err.contains("Wrong user name or password"), "{err}");
    let (ok, out, err) = op(
        "operators-long-password\n",
        &["login", "--user", "operator"],
    );
    assert!(ok, "{err}");
    assert!(out.contains("Logged in"), "{out}");
    let creds = config.join("credentials.json");
    assert_eq!(
        std::fs::metadata(&creds).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(!std::fs::read_to_string(&creds)
        .unwrap()
        .contains("operators-long-password"));
    let (ok, _, err) = op("", &["vm", "list"]);
    assert!(ok, "{err}");

    // An encrypted VM with data, then unregistered (allowed), and the host restarts: its keys
    // are gone from the host, and the server no longer pushes them.
    dev.create_vm("web01", true);
    dev.ok(&["vm", "power-on", "web01"]);
    let out = dev.guest_io("web01", "vd0", "write -P 0x42 0 16k");
    assert!(out.contains("wrote 16384/16384 bytes"), "{out}");
    let path = dev.ok(&["vm", "get", "web01", "path"]).trim().to_owned();
    dev.ok(&["vm", "power-off", "web01"]);
    dev.ok(&["vm", "unregister", "web01"]);
    dev.ok(&["host", "reboot", "host-1"]);

    // Without Cryptographer.RegisterVM: refused, with the privilege named; nothing registered.
    let (ok, _, err) = op("", &["vm", "register", &path, "--host", "host-1"]);
    assert!(
        !ok,
        "NoCryptoAdmin registered a VM whose keys must be fetched"
    );
    assert!(
        err.contains("Cryptographic operations › Register VM")
            && err.contains("Cryptographer.RegisterVM"),
        "{err}"
    );
    let (ok, _, _) = dev.cli(&["vm", "show", "web01"]);
    assert!(!ok, "the refused VM is not registered");
    // Unlock needs the same privilege.
    let (ok, _, err) = op("", &["vm", "unlock", "--all"]);
    assert!(!ok && err.contains("Cryptographer.RegisterVM"), "{err}");

    // An administrator registers it: the server fetches the keys and the VM unlocks.
    let out = dev.ok(&["vm", "register", &path, "--host", "host-1"]);
    assert!(out.contains("web01"), "{out}");
    wait_for("web01 is unlocked", || {
        dev.vm("web01")["cryptoState"] == "unlocked"
    });

    // With the keys already on the host, registering needs no cryptographic privilege, and
    // neither does powering on.
    dev.ok(&["vm", "unregister", "web01"]);
    let (ok, _, err) = op("", &["vm", "register", &path, "--host", "host-1"]);
    assert!(ok, "keys on the host, yet refused: {err}");
    let (ok, _, err) = op("", &["vm", "power-on", "web01"]);
    assert!(ok, "{err}");
    let out = dev.guest_io("web01", "vd0", "read -P 0x42 0 16k");
    // (QEMU's own log, when the agent runs QEMU itself, says more when it fails.)
    let log = common::find_file(dev.dir.path(), "run/web01/qemu.log")
        .and_then(|l| std::fs::read_to_string(l).ok())
        .unwrap_or_default();
    assert!(
        out.contains("read 16384/16384 bytes") && !out.contains("failed"),
        "{out} -- {log}"
    );

    // The operator cannot change who may do what, nor another user's password; its own it can.
    let (ok, _, err) = op("", &["grant", "operator", "Administrator"]);
    assert!(
        !ok && err.contains("Authorization.ModifyPermissions"),
        "{err}"
    );
    let (ok, _, err) = op("someone-elses-pass\n", &["user", "passwd", "admin"]);
    assert!(
        !ok && err.contains("Authorization.ModifyPermissions"),
        "{err}"
    );
    // Its own password only with the current one.
    let (ok, _, err) = op(
        "not-the-current-one\na-new-long-password\n",
        &["user", "passwd", "operator"],
    );
    assert!(!ok && err.contains("current password is wrong"), "{err}");
    let (ok, _, err) = op(
        "operators-long-password\na-new-long-password\n",
        &["user", "passwd", "operator"],
    );
    assert!(ok, "{err}");
    // Logging out ends the token on the server and forgets it here.
    let stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&creds).unwrap()).unwrap();
    let old_token = stored
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    let (ok, _, err) = op("", &["logout"]);
    assert!(ok, "{err}");
    let (ok, _, err) = op("", &["vm", "list"]);
    assert!(!ok && err.contains("tresor login"), "{err}");
    let (ok, _, err) = dev.cli_as(&old_token, &["vm", "list"]);
    assert!(
        !ok && err.contains("not valid"),
        "the old token is dead: {err}"
    );
    let (ok, _, err) = op(
        "operators-long-password\n",
        &["login", "--user", "operator"],
    );
    assert!(
        !ok && err.contains("Wrong"),
        "the old password is gone: {err}"
    );
    let (ok, _, err) = op("a-new-long-password\n", &["login", "--user", "operator"]);
    assert!(ok, "{err}");
}
