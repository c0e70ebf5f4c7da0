//! No work has a size limit from a timeout: the server waits for a host as long as the host
//! reports progress, and only as long as it is silent. With the server's agent timeout at 2 s
//! (`tresor dev --agent-timeout 2`), encrypting a disk whose copy takes several times longer
//! succeeds, since the agent reports the copy's progress (qemu-img's) every second; the guest
//! reads its data back after. A host that stops answering (its agent stopped with SIGSTOP) is
//! given up on after the 2 s, with a message that says so.

mod common;
use common::{pid_of, Dev};

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

    let started = std::time::Instant::now();
    let (ok, out, err) = dev.cli(&["vm", "encrypt", "big"]);
    let took = started.elapsed();
    assert!(ok, "{out}{err}");
    assert!(
        took > std::time::Duration::from_secs(6),
        "the copy took {took:?}, not several times the 2 s timeout; write more data for this test"
    );
    assert_eq!(dev.vm("big")["cryptoState"], "unlocked");
    dev.ok(&["vm", "power-on", "big"]);
    for at in ["0", "1535M"] {
        let out = dev.guest_io("big", "vd0", &format!("read -P 0x61 {at} 1M"));
        assert!(
            out.contains("read 1048576/1048576 bytes") && !out.contains("fail"),
            "{out}"
        );
    }

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
