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
    dev.create_vm("web01", true);
    dev.ok(&["vm", "power-on", "web01"]);
    // Once power-on answers, the VM is shown powered on (not a moment later).
    let state = dev.ok(&["vm", "get", "web01", "powerState"]);
    assert_eq!(state.trim(), "poweredOn");
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

    // What happened is in the event log: who powered the VM on and off, and the host's agent
    // going and coming back.
    let events = |t: &str| -> Vec<serde_json::Value> {
        let out = dev.ok(&["event", "list", "--type", t, "-o", "json"]);
        serde_json::from_str(&out).unwrap()
    };
    for t in ["vm.poweredOn", "vm.poweredOff"] {
        let e = events(t);
        assert!(
            e.iter().any(|e| e["vm"] == "web01"
                && e["host"] == "host-1"
                && e["message"].as_str().unwrap().ends_with("by admin.")),
            "{t}: {e:?}"
        );
    }
    assert!(!events("host.disconnected").is_empty());
    // The first session and the new agent's.
    assert!(events("host.connected").len() >= 2);
}

/// Long host work does not hold the agent: while a disk is being encrypted, its session goes
/// on (the host stays connected) and a stop (SIGINT) ends it within seconds; the next agent
/// finishes or undoes the interrupted work from its journal.
#[test]
fn an_agent_stops_promptly_during_long_work_and_the_next_one_finishes_it() {
    let dev = Dev::start(1);
    dev.ok(&["vm", "create", "big", "--host", "host-1", "--disk", "4G"]);
    let toml = dev.dir.path().join("host-1/agent.toml");
    // A task: answered at once with its id, carried out after.
    let started: serde_json::Value =
        serde_json::from_str(&dev.ok(&["vm", "encrypt", "big", "--no-wait", "-o", "json"]))
            .unwrap();
    let task = started["id"].as_str().unwrap().to_owned();
    assert_eq!(started["state"], "running", "{started}");
    // The operation is under way when its journal or new image shows up.
    let folder = std::path::PathBuf::from(dev.ok(&["vm", "get", "big", "path"]).trim());
    wait_for("the encryption to start", || {
        std::fs::read_dir(&folder)
            .map(|d| d.count() > 2)
            .unwrap_or(false)
    });
    std::thread::sleep(std::time::Duration::from_secs(1));
    // The session answers meanwhile.
    let hosts = dev.ok(&["host", "list", "-o", "json"]);
    assert!(hosts.contains("\"connected\": true"), "{hosts}");
    let pid = pid_of(&["agent --config", &toml.display().to_string()]);
    let asked = std::time::Instant::now();
    std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    wait_for("the agent to stop", || !alive(&pid));
    assert!(
        asked.elapsed() < std::time::Duration::from_secs(10),
        "the agent took {:?} to stop",
        asked.elapsed()
    );
    // The task outlives its agent: still running, followed on the host.
    let show: serde_json::Value =
        serde_json::from_str(&dev.ok(&["task", "show", &task, "-o", "json"])).unwrap();
    assert_eq!(show["state"], "running", "{show}");
    // The next agent finishes or undoes it; the VM is one or the other, whole.
    let _agent = Proc(
        std::process::Command::new(TRESOR)
            .args(["agent", "--config"])
            .arg(&toml)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("the interrupted operation is settled", || {
        let v = dev.vm("big");
        v["connectionState"] == "connected"
            && (v["cryptoState"] == "unencrypted" || v["cryptoState"] == "unlocked")
            && !std::path::Path::new(v["path"].as_str().unwrap_or("/"))
                .join("vm-operation.json")
                .exists()
    });
    // The task ends as the host's journal ended: encrypted (the next agent finished it) or
    // not (it was undone), and says so.
    let (ok, _, err) = dev.cli(&["task", "wait", &task, "--timeout", "60"]);
    let v = dev.vm("big");
    if v["cryptoState"] == "unlocked" {
        assert!(ok, "the finished encryption's task failed: {err}");
    } else {
        assert!(!ok && err.contains("as it was before"), "{err}");
    }
    dev.ok(&["vm", "power-on", "big"]);
}
