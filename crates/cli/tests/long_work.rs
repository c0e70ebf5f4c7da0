//! Long work is a task. No work has a size limit from a timeout: the server waits for a host as
//! long as the host reports progress, and only as long as it is silent. With the server's agent
//! timeout at 2 s (`tresor dev --agent-timeout 2`), encrypting a disk whose copy takes several
//! times longer succeeds, since the agent reports the copy's progress every second; the task
//! shows it in bytes; an encryption cancelled half-way is undone (the VM unencrypted, its data
//! whole); one whose server is killed and started again in the middle is followed by the new
//! server to its end; a decryption cancelled half-way leaves the VM encrypted; the guest reads its
//! data back after each. A host that stops answering (its
//! agent stopped with SIGSTOP) is given up on after the 2 s, with a message that says so.

mod common;
use common::{pid_of, wait_for, Dev, Proc, TRESOR};

fn task(dev: &Dev, id: &str) -> serde_json::Value {
    serde_json::from_str(&dev.ok(&["task", "show", id, "-o", "json"])).unwrap()
}

/// Starts `tresor vm OP big --no-wait` and waits until its copy has made progress: the task id.
fn started(dev: &Dev, op: &str) -> String {
    let t: serde_json::Value =
        serde_json::from_str(&dev.ok(&["vm", op, "big", "--no-wait", "-o", "json"])).unwrap();
    assert_eq!(t["state"], "running", "{t}");
    assert_eq!(t["user"], "admin", "{t}");
    assert_eq!(t["vm"], "big", "{t}");
    let id = t["id"].as_str().unwrap().to_owned();
    wait_for("the copy to make progress", || {
        task(dev, &id)["progress"]["done"].as_u64().unwrap_or(0) > 0
    });
    id
}

#[test]
fn a_copy_longer_than_the_timeout_finishes_while_it_reports_progress() {
    let dev = Dev::start_with(1, &["--agent-timeout", "2"]);
    dev.ok(&["vm", "create", "big", "--host", "host-1", "--disk", "3G"]);
    let folder = std::path::PathBuf::from(dev.ok(&["vm", "get", "big", "path"]).trim());
    // 1.5 GiB of the guest's data, written before (the VM is powered off).
    let out = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x61 0 1536M"])
        .arg(folder.join("disk0.qcow2"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let folder_files = || {
        let mut f: Vec<String> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        f.sort();
        f
    };
    let files_before = folder_files();

    // Cancelled half-way: undone, the VM unencrypted as before, its new key retired.
    let id = started(&dev, "encrypt");
    let t = task(&dev, &id);
    assert_eq!(t["progress"]["unit"], "bytes", "{t}");
    assert_eq!(t["progress"]["total"], 3u64 << 30, "{t}");
    assert_eq!(t["cancellable"], true, "{t}");
    let listed = dev.ok(&["task", "list", "--running"]);
    assert!(
        listed.contains(&id) && listed.contains("encrypt"),
        "{listed}"
    );
    dev.ok(&["task", "cancel", &id]);
    let (ok, _, err) = dev.cli(&["task", "wait", &id]);
    assert!(!ok, "a cancelled task waited for as a success");
    assert!(
        err.contains("cancelled") && err.contains("unencrypted as before"),
        "{err}"
    );
    let t = task(&dev, &id);
    assert_eq!(t["state"], "cancelled", "{t}");
    assert_eq!(t["error"]["code"], "cancelled", "{t}");
    assert_eq!(dev.vm("big")["cryptoState"], "unencrypted");
    assert_eq!(
        folder_files(),
        files_before,
        "the cancelled encryption left files behind"
    );
    let out = std::process::Command::new("qemu-io")
        .args(["-r", "-f", "qcow2", "-c", "read -P 0x61 1535M 1M"])
        .arg(folder.join("disk0.qcow2"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("read 1048576/1048576 bytes"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A task that ended cannot be cancelled again.
    let (ok, _, err) = dev.cli(&["task", "cancel", &id]);
    assert!(!ok && err.contains("only a running task"), "{err}");

    // The server is killed in the middle and started again: the new server takes up the task
    // from the host, which went on, and follows it to its end.
    let began = std::time::Instant::now();
    let id = started(&dev, "encrypt");
    let server_toml = dev.dir.path().join("server/server.toml");
    let server = pid_of(&["server --config", &server_toml.display().to_string()]);
    std::process::Command::new("kill")
        .args(["-KILL", &server])
        .status()
        .unwrap();
    let _server = Proc(
        std::process::Command::new(TRESOR)
            .args(["server", "--config"])
            .arg(&server_toml)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("the new server to answer", || dev.cli(&["host", "list"]).0);
    let t = task(&dev, &id);
    assert!(
        t["state"] == "running" || t["state"] == "succeeded",
        "the new server lost the task: {t}"
    );
    let (ok, out, err) = dev.cli(&["task", "wait", &id, "--timeout", "300"]);
    let took = began.elapsed();
    assert!(ok, "{out}{err}");
    assert!(
        took > std::time::Duration::from_secs(6),
        "the copy took {took:?}, not several times the 2 s timeout; write more data for this test"
    );
    let t = task(&dev, &id);
    assert_eq!(t["state"], "succeeded", "{t}");
    assert_eq!(t["progress"]["done"], t["progress"]["total"], "{t}");
    assert_eq!(t["result"]["cryptoState"], "unlocked", "{t}");
    assert_eq!(dev.vm("big")["cryptoState"], "unlocked");
    dev.ok(&["vm", "power-on", "big"]);
    for at in ["0", "1535M"] {
        let out = dev.guest_io("big", "vd0", &format!("read -P 0x61 {at} 1M"));
        assert!(
            out.contains("read 1048576/1048576 bytes") && !out.contains("fail"),
            "{out}"
        );
    }

    // A decryption cancelled half-way is undone: the VM stays encrypted, its data whole.
    dev.ok(&["vm", "power-off", "big"]);
    let id = started(&dev, "decrypt");
    dev.ok(&["task", "cancel", &id]);
    let (ok, _, err) = dev.cli(&["task", "wait", &id]);
    assert!(!ok && err.contains("encrypted as before"), "{err}");
    assert_eq!(dev.vm("big")["cryptoState"], "unlocked");
    dev.ok(&["vm", "power-on", "big"]);
    let out = dev.guest_io("big", "vd0", "read -P 0x61 1535M 1M");
    assert!(
        out.contains("read 1048576/1048576 bytes") && !out.contains("fail"),
        "{out}"
    );

    // A host that is silent is given up on after the timeout.
    let toml = dev.dir.path().join("host-1/agent.toml");
    let agent = pid_of(&["agent --config", &toml.display().to_string()]);
    let signal = |s: &str| {
        std::process::Command::new("kill")
            .args([s, &agent])
            .status()
            .unwrap()
    };
    signal("-STOP");
    let started = std::time::Instant::now();
    let (ok, _, err) = dev.cli(&["vm", "power-off", "big"]);
    let took = started.elapsed();
    signal("-CONT");
    assert!(!ok, "a stopped agent answered");
    assert!(
        err.contains("neither answered nor reported progress for 2 s"),
        "{err}"
    );
    assert!(took < std::time::Duration::from_secs(30), "{took:?}");
}
