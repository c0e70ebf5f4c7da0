//! `tresor dev` as a user runs it: one command brings up the key server, the server and a host;
//! an encrypted VM is created on real LUKS disks and powered on in QEMU; Ctrl-C stops it all.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{free_ports, https, TRESOR};

#[test]
fn tresor_dev_runs_an_encrypted_vm_and_stops_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_ports();
    let mut dev = Command::new(TRESOR)
        .args(["dev", "--data"])
        .arg(tmp.path())
        .args(["--port", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(dev.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut token = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.trim().strip_prefix("admin token") {
            token = rest.split_whitespace().next().unwrap().to_owned();
        }
        if line.starts_with("Stop with Ctrl-C") {
            break;
        }
        assert!(Instant::now() < deadline, "tresor dev did not come up");
    }
    assert_eq!(token.len(), 48, "no admin token printed");
    let (status, vm) = https(
        &tmp.path().join("server/ca.pem"),
        port,
        "POST",
        "/api/v1/vms",
        &token,
        r#"{"name":"web01","host":"host-1","disks":[4194304],"encrypt":true,"memoryMib":64}"#,
    );
    assert_eq!(status, 200, "{vm}");
    assert_eq!(vm["cryptoState"], "unlocked");
    assert_eq!(vm["config"]["keyId"]["providerId"]["id"], "tresor-kms");
    let (status, body) = https(
        &tmp.path().join("server/ca.pem"),
        port,
        "POST",
        "/api/v1/vms/web01/power-on",
        &token,
        "",
    );
    assert_eq!(status, 200, "{body}");
    // The key id the procedure asks for is the one on the key server.
    let key_id = vm["config"]["keyId"]["keyId"].as_str().unwrap().to_owned();
    let out = Command::new(TRESOR)
        .args(["kms", "key", "show", &key_id, "--config"])
        .arg(tmp.path().join("kms/kms.toml"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Active"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The server's database holds password hashes: private, in a private folder.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&tmp.path().join("server")), 0o700);
    for f in ["server.sqlite", "server.sqlite-wal"] {
        let p = tmp.path().join("server").join(f);
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{f}");
        }
    }

    Command::new("kill")
        .args(["-INT", &dev.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while dev.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "tresor dev did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Nothing of it keeps running: not the server, not QEMU.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the API still answers"
    );
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    let leftover: Vec<String> = String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter(|l| l.contains(&tmp.path().display().to_string()))
        .map(str::to_owned)
        .collect();
    assert!(leftover.is_empty(), "processes left behind: {leftover:?}");
}
