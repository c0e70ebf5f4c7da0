//! The procedure's case 1 with real processes: the key provider is down while the host restarts.
//! The VM locks with kmsClusterError (invalid: its home key is missing), power-on and delete are
//! refused with the way forward, an event in English and German and an alarm say why; when the
//! provider returns the server unlocks the VM by itself and it powers on again. Losing the
//! provider while the host keeps running locks nothing.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{free_ports, wait_for, TRESOR};

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && matches!(self.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn provider_down_during_a_host_restart_locks_and_its_return_unlocks() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_ports();
    let mut dev = Command::new(TRESOR)
        .args(["dev", "--data"])
        .arg(tmp.path())
        .args(["--port", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut token = String::new();
    for line in BufReader::new(dev.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.trim().strip_prefix("admin token") {
            token = rest.split_whitespace().next().unwrap().to_owned();
        }
        if line.starts_with("Stop with Ctrl-C") {
            break;
        }
    }
    let _dev = Proc(dev);
    let cli = |args: &[&str]| {
        let out = Command::new(TRESOR)
            .args(args)
            .env("TRESOR_SERVER", format!("http://127.0.0.1:{port}"))
            .env("TRESOR_TOKEN", &token)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
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

    // Stop the key server (dev's child).
    let kms_config = tmp.path().join("kms/kms.toml").display().to_string();
    let ps = Command::new("ps")
        .args(["-eo", "pid,args"])
        .output()
        .unwrap();
    let pid = String::from_utf8_lossy(&ps.stdout)
        .lines()
        .find(|l| l.contains("kms serve") && l.contains(&kms_config))
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .expect("the key server process");
    Command::new("kill").args(["-INT", &pid]).status().unwrap();
    std::thread::sleep(Duration::from_secs(1));

    // Losing the provider while the host keeps running locks nothing.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(vm()["cryptoState"], "unlocked");

    // The host restarts while the provider is down.
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
    assert!(
        d["nextSteps"]
            .to_string()
            .contains("tresor vm unlock web01"),
        "{out}"
    );
    let (ok, out, _) = cli(&["vm", "diagnose", "web01", "--lang", "de"]);
    assert!(
        ok && out.starts_with("case 1: ") && out.contains("gesperrt"),
        "{out}"
    );
    let (ok, _, err) = cli(&["vm", "delete", "web01"]);
    assert!(!ok && err.contains("unregister"), "{err}");
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
}
