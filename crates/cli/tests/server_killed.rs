//! What the server acknowledged survives `kill -9`: VMs created just before the server is killed
//! are all there when it starts again (the registry is written before the answer; what hosts
//! report is derived again from their reports).

mod common;

use common::{pid_of, wait_for, Dev, Proc, TRESOR};

#[test]
fn acknowledged_creates_survive_a_killed_server() {
    let dev = Dev::start(1);
    let names: Vec<String> = (0..8).map(|i| format!("vm{i}")).collect();
    for n in &names {
        dev.ok(&["vm", "create", n, "--host", "host-1", "--disk", "1M"]);
    }
    let config = dev.dir.path().join("server/server.toml");
    let pid = pid_of(&["server --config", &config.display().to_string()]);
    std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap();
    wait_for("the server is gone", || {
        std::net::TcpStream::connect(("127.0.0.1", dev.port)).is_err()
    });
    let _server = Proc(
        std::process::Command::new(TRESOR)
            .args(["server", "--config"])
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(
        "every acknowledged VM is back, reported by its host",
        || {
            let (ok, out, _) = dev.cli(&["vm", "list", "-o", "json"]);
            ok && names.iter().all(|n| out.contains(&format!("\"{n}\"")))
                && out.contains("\"connected\"")
        },
    );
    // None of them is taken for a stranger.
    let (_, discovered, _) = dev.cli(&["vm", "list", "--discovered", "-o", "json"]);
    assert_eq!(discovered.trim(), "[]");
}
