//! Restarting (or upgrading) the agent leaves running VMs running: the agent that starts again
//! finds them by their control sockets, reports them powered on, receives their keys as after
//! any restart of its key cache, and controls them again; the guest's data is intact.

mod common;

use common::{pid_of, stop, wait_for, Dev, Proc, TRESOR};

fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

#[test]
fn an_agent_restart_keeps_vms_running() {
    let dev = Dev::start(1);
    dev.ok(&[
        "vm",
        "create",
        "web01",
        "--host",
        "host-1",
        "--disk",
        "4M",
        "--encrypt",
    ]);
    dev.ok(&["vm", "power-on", "web01"]);
    let out = dev.guest_io("web01", "vd0", "write -P 0x42 0 16k");
    assert!(out.contains("wrote 16384/16384 bytes"), "{out}");
    let qemu_pid = std::fs::read_to_string(
        common::find_file(dev.dir.path(), "run/web01/qemu.pid").expect("QEMU's pid file"),
    )
    .unwrap()
    .trim()
    .to_owned();

    // The agent stops; the guest does not.
    let toml = dev.dir.path().join("host-1/agent.toml");
    stop(&pid_of(&["agent --config", &toml.display().to_string()]));
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert!(alive(&qemu_pid), "stopping the agent stopped the VM");
    let out = dev.guest_io("web01", "vd0", "write -P 0x43 16k 16k");
    assert!(out.contains("wrote 16384/16384 bytes"), "{out}");

    // A new agent finds it, gets its key again, and controls it.
    let _agent = Proc(
        std::process::Command::new(TRESOR)
            .args(["agent", "--config"])
            .arg(&toml)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dev.dir.path().join("logs/host-1-again.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for("host-1 is connected again", || {
        dev.ok(&["host", "list", "-o", "json"])
            .contains("\"connected\": true")
    });
    wait_for("web01 is reported running and unlocked", || {
        let v = dev.vm("web01");
        v["powerState"] == "poweredOn"
            && v["cryptoState"] == "unlocked"
            && v["connectionState"] == "connected"
    });
    assert!(alive(&qemu_pid));
    let out = dev.guest_io("web01", "vd0", "read -P 0x42 0 16k");
    assert!(
        out.contains("read 16384/16384 bytes") && !out.contains("fail"),
        "{out}"
    );
    let out = dev.guest_io("web01", "vd0", "read -P 0x43 16k 16k");
    assert!(
        out.contains("read 16384/16384 bytes") && !out.contains("fail"),
        "{out}"
    );
    let (ok, _, err) = dev.cli(&["vm", "power-off", "web01"]);
    assert!(
        ok,
        "{err}\n{}\n{}",
        std::fs::read_to_string(dev.dir.path().join("logs/host-1-again.log")).unwrap_or_default(),
        std::fs::read_to_string(dev.dir.path().join("logs/server.log")).unwrap_or_default()
    );
    wait_for("QEMU stops", || !alive(&qemu_pid));
    wait_for("web01 is reported powered off", || {
        dev.vm("web01")["powerState"] == "poweredOff"
    });
}
