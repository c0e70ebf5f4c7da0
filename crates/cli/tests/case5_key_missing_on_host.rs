//! The procedure's case 5 with real processes: the provider is fine, but the host restarted and
//! its keys have not been pushed again (the manual unlock policy holds them back, as a failed
//! push would). The VM locks with keyMissingOnHost; unlocking the host's VMs needs nothing from
//! the provider's administrator, and the disk still holds the guest's data.

mod common;
use common::{runtime_args, wait_for, Dev};

#[test]
fn keys_missing_only_on_the_host_are_pushed_by_an_unlock() {
    keys_missing_only_on_the_host_are_pushed_by_an_unlock_under("qemu");
}

#[test]
fn keys_missing_only_on_the_host_are_pushed_by_an_unlock_under_libvirt() {
    keys_missing_only_on_the_host_are_pushed_by_an_unlock_under("libvirt");
}

fn keys_missing_only_on_the_host_are_pushed_by_an_unlock_under(runtime: &str) {
    let dev = Dev::start_with(1, &runtime_args(runtime, &["web01", "web02", "plain01"]));
    dev.ok(&["settings", "set", "unlock.policy", "manual"]);
    for name in ["web01", "web02"] {
        dev.ok(&[
            "vm",
            "create",
            name,
            "--host",
            "host-1",
            "--disk",
            "4M",
            "--encrypt",
        ]);
    }
    dev.ok(&["vm", "power-on", "web01"]);
    let out = dev.guest_io("web01", "vd0", "write -P 0x5a 4096 8k");
    assert!(out.contains("wrote 8192/8192 bytes"), "{out}");

    dev.ok(&["host", "reboot", "host-1"]);
    for name in ["web01", "web02"] {
        wait_for("the VMs lock with keyMissingOnHost", || {
            let v = dev.vm(name);
            v["cryptoState"] == "locked" && v["lockReason"] == "keyMissingOnHost"
        });
    }
    let locked: serde_json::Value =
        serde_json::from_str(&dev.ok(&["vm", "list", "--locked", "-o", "json"])).unwrap();
    assert_eq!(locked.as_array().unwrap().len(), 2, "{locked}");
    let d: serde_json::Value =
        serde_json::from_str(&dev.ok(&["vm", "diagnose", "web01", "-o", "json"])).unwrap();
    assert_eq!(d["case"], 5, "{d}");
    assert_eq!(d["providerStatus"]["tresor-kms"]["health"], "ok", "{d}");
    // A read-only user sees the diagnosis, not the provider's endpoints and certificates.
    let password = dev.dir.path().join("viewer.password");
    std::fs::write(&password, "viewers-long-password\n").unwrap();
    dev.ok(&[
        "user",
        "add",
        "viewer",
        "--password-file",
        &password.display().to_string(),
        "--role",
        "ReadOnly",
    ]);
    let config = dev.dir.path().join("viewer-config");
    let (ok, _, err) = dev.cli_logged_in(
        &config,
        "viewers-long-password\n",
        &["login", "--user", "viewer"],
    );
    assert!(ok, "{err}");
    let (ok, out, err) = dev.cli_logged_in(&config, "", &["vm", "diagnose", "web01", "-o", "json"]);
    assert!(ok, "{err}");
    let seen: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(seen["case"], 5, "{seen}");
    assert!(seen.get("providerStatus").is_none(), "{seen}");
    assert!(
        !out.contains("127.0.0.1"),
        "a viewer saw an endpoint: {out}"
    );
    let all: serde_json::Value =
        serde_json::from_str(&dev.ok(&["vm", "diagnose", "--all", "-o", "json"])).unwrap();
    let cases: Vec<(&str, u64)> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["vm"].as_str().unwrap(), d["case"].as_u64().unwrap()))
        .collect();
    assert_eq!(cases, [("web01", 5), ("web02", 5)], "{all}");
    assert!(
        d["nextSteps"].to_string().contains("tresor vm unlock"),
        "{d}"
    );
    // The event follows once the provider has answered that it has the keys.
    wait_for("the German event", || {
        dev.ok(&["event", "list", "--vm", "web01", "--lang", "de"])
            .contains("Die virtuelle Maschine ist gesperrt, weil Schlüssel auf dem Host fehlen.")
    });

    // English too; the alarm is up; power-on and delete are refused, unregister and reload not.
    assert!(dev
        .ok(&[
            "event",
            "list",
            "--vm",
            "web01",
            "--type",
            "vm.locked.keyMissingOnHost"
        ])
        .contains("The virtual machine is locked because keys are missing on the host."));
    assert!(dev
        .ok(&["alarm", "list", "-o", "json"])
        .contains("vm:web02"));
    let (ok, _, err) = dev.cli(&["vm", "power-on", "web02"]);
    assert!(
        !ok && err.contains("locked") && err.contains("tresor vm unlock web02"),
        "{err}"
    );
    let (ok, _, err) = dev.cli(&["vm", "delete", "web02"]);
    assert!(!ok && err.contains("unregister"), "{err}");
    dev.ok(&["vm", "reload", "web02"]);
    let path = dev.ok(&["vm", "get", "web02", "path"]).trim().to_owned();
    dev.ok(&["vm", "unregister", "web02"]);
    // Registering by a user with Cryptographer.RegisterVM unlocks, under the manual policy too
    // (the page's cases 1, 2 and 4 unlock by registering), and the push names who caused it.
    dev.ok(&["vm", "register", &path, "--host", "host-1"]);
    wait_for("web02 is unlocked by registering", || {
        dev.vm("web02")["cryptoState"] == "unlocked"
    });
    let pushed: serde_json::Value = serde_json::from_str(&dev.ok(&[
        "event",
        "list",
        "--vm",
        "web02",
        "--type",
        "key.pushed",
        "-o",
        "json",
    ]))
    .unwrap();
    let last = pushed.as_array().unwrap().last().unwrap();
    assert_eq!(last["user"], "admin", "{last}");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("caused by admin"),
        "{last}"
    );
    assert_eq!(dev.vm("web01")["lockReason"], "keyMissingOnHost");
    // The host restarts again: both are locked, and the manual policy waits for an operator.
    dev.ok(&["host", "reboot", "host-1"]);
    wait_for("web02 is locked again", || {
        dev.vm("web02")["lockReason"] == "keyMissingOnHost"
    });

    // Someone follows the events as they happen.
    let mut follower = std::process::Command::new(common::TRESOR)
        .args(["event", "list", "--vm", "web02", "--follow", "-o", "json"])
        .env("TRESOR_SERVER", dev.url())
        .env("TRESOR_CA", dev.ca())
        .env("TRESOR_TOKEN", &dev.token)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let follower_out = follower.stdout.take().unwrap();
    let _follower = common::Proc(follower);

    // Unlock by host, with progress; nothing happened on the provider.
    let out = dev.ok(&["vm", "unlock", "--host", "host-1"]);
    assert!(out.contains("2 of 2 unlocked"), "{out}");
    assert!(out.contains("[1/2]") && out.contains("[2/2]"), "{out}");
    // The follower saw web02 unlocked as it happened, after what was listed.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(follower_out)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("\"vm.unlocked\"")) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        seen.push(
            rx.recv_timeout(left)
                .unwrap_or_else(|_| panic!("no vm.unlocked followed: {seen:?}")),
        );
    }
    assert!(
        seen.iter()
            .all(|l| l.contains("\"web02\"") || !l.starts_with('{')),
        "{seen:?}"
    );
    let (ok, out, _) = dev.cli(&["vm", "unlock", "--all", "-o", "json"]);
    assert!(ok, "nothing left to unlock is not an error");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["requested"],
        serde_json::json!([])
    );

    wait_for("the alarms clear", || {
        !dev.ok(&["alarm", "list", "-o", "json"]).contains("vm:web0")
    });
    dev.ok(&["vm", "power-on", "web01"]);
    let out = dev.guest_io("web01", "vd0", "read -P 0x5a 4096 8k");
    assert!(
        out.contains("read 8192/8192 bytes") && !out.contains("failed"),
        "{out}"
    );
    // The host as the CLI shows it, then out of encryption mode.
    let host: serde_json::Value =
        serde_json::from_str(&dev.ok(&["host", "show", "host-1", "-o", "json"])).unwrap();
    assert_eq!(host["vms"].as_array().unwrap().len(), 2, "{host}");
    assert_eq!(host["lockedVmCount"], 0, "{host}");
    assert!(host["keysHeld"].as_u64().unwrap() >= 2, "{host}");
    assert!(dev.ok(&["host", "list"]).contains("KEYS HELD"));
    dev.ok(&["host", "disable-encryption", "host-1"]);
    let host = dev.ok(&["host", "show", "host-1", "-o", "json"]);
    assert!(host.contains("pendingIncapable"), "{host}");
    let events = dev.ok(&[
        "event",
        "list",
        "--host",
        "host-1",
        "--type",
        "host.crypto.disabled",
    ]);
    assert!(events.contains("ends when the host restarts"), "{events}");
    // The mode moves as the core's machine says: no way back into encryption mode before the
    // restart, and the restart ends the mode in what the server shows too.
    let (ok, _, err) = dev.cli(&["host", "enable-encryption", "host-1"]);
    assert!(
        !ok && err.contains("tresor host reboot host-1"),
        "enabling a pendingIncapable host: {err}"
    );
    dev.ok(&["host", "reboot", "host-1"]);
    let host: serde_json::Value =
        serde_json::from_str(&dev.ok(&["host", "show", "host-1", "-o", "json"])).unwrap();
    assert_eq!(host["cryptoState"], "incapable", "{host}");
    // An unlock naming a VM that does not exist says so.
    let (ok, _, err) = dev.cli(&["vm", "unlock", "nope"]);
    assert!(!ok && err.contains("nope"), "{err}");
}
