//! The procedure's case 3 with real processes, under the manual unlock policy: the VM's key is
//! deactivated on the provider by its administrator and the host restarts. The VM locks with
//! keyMissingOnKms; `tresor vm get web01 config.keyId.keyId` names the key; the administrator
//! reactivates exactly that key; `tresor vm unlock` brings the VM back, and its disk still holds
//! what the guest wrote before the fault.

mod common;
use common::{runtime_args, wait_for, Dev};

#[test]
fn a_key_deactivated_on_the_provider_locks_and_its_reactivation_unlocks() {
    a_key_deactivated_on_the_provider_locks_and_its_reactivation_unlocks_under("qemu");
}

#[test]
fn a_key_deactivated_on_the_provider_locks_and_its_reactivation_unlocks_under_libvirt() {
    a_key_deactivated_on_the_provider_locks_and_its_reactivation_unlocks_under("libvirt");
}

fn a_key_deactivated_on_the_provider_locks_and_its_reactivation_unlocks_under(runtime: &str) {
    let dev = Dev::start_with(1, &runtime_args(runtime, &["web01", "web02", "plain01"]));
    dev.ok(&["settings", "set", "unlock.policy", "manual"]);
    assert_eq!(
        dev.ok(&["settings", "get", "unlock.policy"]).trim(),
        "manual"
    );
    dev.create_vm("web01", true);
    dev.ok(&["vm", "power-on", "web01"]);
    // The guest writes to its encrypted disk.
    let out = dev.guest_io("web01", "vd0", "write -P 0xab 0 64k");
    assert!(out.contains("wrote 65536/65536 bytes"), "{out}");
    dev.guest_io("web01", "vd0", "flush");
    let out = dev.guest_io("web01", "vd0", "read -P 0xab 0 64k");
    assert!(
        out.contains("read 65536/65536 bytes") && !out.contains("failed"),
        "{out}"
    );

    // The step the page names: the key id, then the provider's administrator deactivates it.
    let key = dev.ok(&["vm", "get", "web01", "config.keyId.keyId"]);
    let key = key.trim();
    assert!(!key.is_empty() && key != "null");
    assert_eq!(
        dev.ok(&["vm", "get", "web01", "config.keyId.providerId.id"])
            .trim(),
        "tresor-kms"
    );
    dev.kms_admin(&["key", "deactivate", key]);

    // Losing the key on the provider alone locks nothing while the host holds it.
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(dev.vm("web01")["cryptoState"], "unlocked");

    dev.ok(&["host", "reboot", "host-1"]);
    let rebooted = dev.ok(&["event", "list", "--type", "host.rebooted"]);
    assert!(
        rebooted.contains("Host host-1 was restarted by admin"),
        "{rebooted}"
    );
    wait_for("web01 is locked with keyMissingOnKms", || {
        let v = dev.vm("web01");
        v["cryptoState"] == "locked"
            && v["lockReason"] == "keyMissingOnKms"
            && v["connectionState"] == "invalid"
    });

    // Refused while locked, with the way forward; reload is allowed.
    let (ok, _, err) = dev.cli(&["vm", "power-on", "web01"]);
    assert!(
        !ok && err.contains("locked") && err.contains("tresor vm unlock web01"),
        "{err}"
    );
    let (ok, _, err) = dev.cli(&["vm", "delete", "web01"]);
    assert!(!ok && err.contains("unregister"), "{err}");
    dev.ok(&["vm", "reload", "web01"]);

    // The diagnosis: case 3, the key id, and the administrator's step.
    let d: serde_json::Value =
        serde_json::from_str(&dev.ok(&["vm", "diagnose", "web01", "-o", "json"])).unwrap();
    assert_eq!(d["case"], 3, "{d}");
    assert!(d["evidence"].to_string().contains(key), "{d}");
    // Tresor's own key server: its command, with the key's id.
    assert!(
        d["nextSteps"]
            .to_string()
            .contains(&format!("tresor kms key activate {key}")),
        "{d}"
    );
    // The labels in German as the rest.
    let de = dev.ok(&["vm", "diagnose", "web01", "--lang", "de"]);
    assert!(
        de.contains("Fall 3:") && de.contains("Befund:") && de.contains("nächste Schritte:"),
        "{de}"
    );
    assert!(
        !de.contains("evidence") && !de.contains("next steps"),
        "{de}"
    );

    // The alarm says what to do; the event in both languages.
    let alarms: serde_json::Value =
        serde_json::from_str(&dev.ok(&["alarm", "list", "-o", "json"])).unwrap();
    let alarm = alarms
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "vm.locked" && a["object"] == "vm:web01")
        .unwrap_or_else(|| panic!("no alarm for web01: {alarms}"));
    assert!(alarm["nextStep"]
        .as_str()
        .unwrap()
        .contains("tresor vm diagnose web01"));
    assert!(dev.ok(&["alarm", "list"]).contains("keyMissingOnKms"));
    let id = alarm["id"].to_string();
    assert!(dev.ok(&["alarm", "ack", &id]).contains("acknowledged"));
    let de = dev.ok(&["event", "list", "--vm", "web01", "--lang", "de"]);
    assert!(
        de.contains(
            "Die virtuelle Maschine ist gesperrt, weil Schlüssel auf dem KMS-Cluster fehlen."
        ),
        "{de}"
    );
    let en = dev.ok(&[
        "event",
        "list",
        "--vm",
        "web01",
        "--type",
        "vm.locked.keyMissingOnKms",
    ]);
    assert!(
        en.contains("The virtual machine is locked because keys are missing on the key provider."),
        "{en}"
    );

    // Unlocking before the key is back fails at once and says why.
    let (ok, _, err) = dev.cli(&["vm", "unlock", "web01", "--timeout", "3"]);
    assert!(
        !ok && err.contains("Cannot unlock VM web01")
            && err.contains("Deactivated")
            && err.contains("keyMissingOnKms"),
        "{err}"
    );

    // The provider's administrator reactivates exactly that key; the operator unlocks.
    dev.kms_admin(&["key", "activate", key]);
    let out = dev.ok(&["vm", "unlock", "web01"]);
    assert!(out.contains("1 of 1 unlocked"), "{out}");
    // The unlock is audited: who, what, which key.
    let audit = dev.ok(&[
        "event",
        "list",
        "--vm",
        "web01",
        "--type",
        "crypto.operation",
    ]);
    assert!(
        audit.contains(&format!("admin performed unlock with key {key}.")),
        "{audit}"
    );
    let v = dev.vm("web01");
    assert_eq!(
        (v["cryptoState"].as_str(), v["lockReason"].as_str()),
        (Some("unlocked"), None)
    );
    wait_for("the alarm clears", || {
        !dev.ok(&["alarm", "list", "-o", "json"])
            .contains("vm:web01")
    });
    assert!(dev
        .ok(&["event", "list", "--vm", "web01", "--type", "vm.unlocked"])
        .contains("The virtual machine is unlocked."));

    // The VM runs again, and its disk holds what was written before the fault.
    dev.ok(&["vm", "power-on", "web01"]);
    let out = dev.guest_io("web01", "vd0", "read -P 0xab 0 64k");
    assert!(
        out.contains("read 65536/65536 bytes") && !out.contains("failed"),
        "{out}"
    );
    let out = dev.guest_io("web01", "vd0", "read -P 0xcd 0 64k");
    assert!(
        out.contains("Pattern verification failed"),
        "the check can fail: {out}"
    );
}
