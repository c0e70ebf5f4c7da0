//! The procedure's case 1 with real processes: the key provider is down while the host restarts.
//! The VM locks with kmsClusterError (invalid: its home key is missing), power-on and delete are
//! refused with the way forward, an event in English and German and an alarm say why; when the
//! provider returns the server unlocks the VM by itself and it powers on again with the data the
//! guest wrote before. Losing the provider while a host keeps running locks nothing: the VM on the
//! second host, which does not restart, stays unlocked and running throughout.

use std::process::{Command, Stdio};
use std::time::Duration;

mod common;
use common::{runtime_args, wait_for, Dev, Proc, TRESOR};

#[test]
fn provider_down_during_a_host_restart_locks_and_its_return_unlocks() {
    provider_down_during_a_host_restart_locks_and_its_return_unlocks_under("qemu");
}

#[test]
fn provider_down_during_a_host_restart_locks_and_its_return_unlocks_under_libvirt() {
    provider_down_during_a_host_restart_locks_and_its_return_unlocks_under("libvirt");
}

fn provider_down_during_a_host_restart_locks_and_its_return_unlocks_under(runtime: &str) {
    let dev = Dev::start_with(2, &runtime_args(runtime, &["web01", "web02", "plain01"]));
    let cli = |args: &[&str]| dev.cli(args);
    let vm = || -> serde_json::Value {
        serde_json::from_str(&cli(&["vm", "show", "web01", "-o", "json"]).1).unwrap_or_default()
    };
    let (ok, _, err) = cli(&[
        "vm",
        "create",
        "web01",
        "--host",
        "host-1",
        "--disk",
        "4M",
        "--encrypt",
    ]);
    assert!(ok, "{err}");
    assert!(cli(&["vm", "power-on", "web01"]).0);
    let out = dev.guest_io("web01", "vd0", "write -P 0x11 0 16k");
    assert!(out.contains("wrote 16384/16384 bytes"), "{out}");
    dev.ok(&[
        "vm",
        "create",
        "web02",
        "--host",
        "host-2",
        "--disk",
        "4M",
        "--encrypt",
    ]);
    dev.ok(&["vm", "power-on", "web02"]);

    // Stop the key server (dev's child).
    let kms_config = dev.kms_config();
    let pid = dev.kms_pid();
    Command::new("kill").args(["-INT", &pid]).status().unwrap();
    std::thread::sleep(Duration::from_secs(1));

    // Losing the provider while the host keeps running locks nothing.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(vm()["cryptoState"], "unlocked");

    // host-1 restarts while the provider is down; host-2 does not.
    assert!(cli(&["host", "reboot", "host-1"]).0);
    wait_for("web01 is locked with kmsClusterError", || {
        let v = vm();
        v["cryptoState"] == "locked"
            && v["lockReason"] == "kmsClusterError"
            && v["connectionState"] == "invalid"
    });
    let (ok, _, err) = cli(&["vm", "power-on", "web01"]);
    assert!(!ok);
    assert!(
        err.contains("locked") && err.contains("tresor vm unlock web01"),
        "{err}"
    );
    // The diagnosis names case 1, the unreachable provider, and the way back.
    let (ok, out, err) = cli(&["vm", "diagnose", "web01", "-o", "json"]);
    assert!(ok, "{err}");
    let d: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(d["case"], 1, "{out}");
    assert!(
        d["evidence"].to_string().contains("tresor-kms"),
        "the evidence names the provider: {out}"
    );
    assert_eq!(
        d["providerStatus"]["tresor-kms"]["health"], "unreachable",
        "the provider, probed for the diagnosis: {out}"
    );
    let (_, text, _) = cli(&["vm", "diagnose", "--all"]);
    assert!(
        text.contains("== web01") && text.contains("provider tresor-kms: unreachable"),
        "{text}"
    );
    assert!(
        d["nextSteps"]
            .to_string()
            .contains("tresor vm unlock web01"),
        "{out}"
    );
    let (ok, out, _) = cli(&["vm", "diagnose", "web01", "--lang", "de"]);
    assert!(
        ok && out.starts_with("Fall 1: ") && out.contains("gesperrt") && out.contains("Befund:"),
        "{out}"
    );
    let (ok, _, err) = cli(&["vm", "delete", "web01"]);
    assert!(!ok && err.contains("unregister"), "{err}");
    // Reload is allowed while locked; the alarm is up and says what to do.
    assert!(cli(&["vm", "reload", "web01"]).0);
    let (_, alarms, _) = cli(&["alarm", "list", "-o", "json"]);
    let alarms: serde_json::Value = serde_json::from_str(&alarms).unwrap();
    assert!(
        alarms
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["object"] == "vm:web01"
                && a["reason"] == "kmsClusterError"
                && a["nextStep"]
                    .as_str()
                    .unwrap()
                    .contains("tresor vm diagnose web01")),
        "{alarms}"
    );
    let (_, out, _) = cli(&[
        "event", "list", "--vm", "web01", "--lang", "de", "-o", "json",
    ]);
    assert!(
        out.contains("Die virtuelle Maschine ist wegen eines KMS-Clusterfehlers gesperrt."),
        "{out}"
    );
    let (_, out, _) = cli(&["event", "list", "--vm", "web01", "-o", "json"]);
    assert!(
        out.contains("The virtual machine is locked because of a key provider error."),
        "{out}"
    );

    // The provider returns: the server unlocks the VM by itself.
    let _kms = Proc(
        Command::new(TRESOR)
            .args(["kms", "serve", "--config", &kms_config])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("web01 is unlocked", || vm()["cryptoState"] == "unlocked");
    wait_for("the VM's alarm clears", || {
        !cli(&["alarm", "list", "-o", "json"]).1.contains("vm:web01")
    });
    let (_, out, _) = cli(&[
        "event",
        "list",
        "--vm",
        "web01",
        "--type",
        "vm.unlocked",
        "-o",
        "json",
    ]);
    assert!(out.contains("The virtual machine is unlocked."), "{out}");
    // The host key came back too: the VM runs again.
    wait_for("web01 powers on", || cli(&["vm", "power-on", "web01"]).0);
    let out = dev.guest_io("web01", "vd0", "read -P 0x11 0 16k");
    assert!(
        out.contains("read 16384/16384 bytes") && !out.contains("failed"),
        "{out}"
    );
    // The VM on the other host never locked and kept running.
    let other = dev.vm("web02");
    assert_eq!(
        (other["cryptoState"].as_str(), other["powerState"].as_str()),
        (Some("unlocked"), Some("poweredOn")),
        "{other}"
    );
    let events = dev.ok(&[
        "event",
        "list",
        "--vm",
        "web02",
        "--type",
        "vm.locked.kmsClusterError",
    ]);
    assert!(!events.contains("web02"), "web02 never locked: {events}");
}
