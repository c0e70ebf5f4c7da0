//! `tresor server` and `tresor agent` as processes: the server is set up with `init`, hands out
//! a join token through its API, a host enrols with `tresor agent join` and connects; when the
//! agent dies the server sees the host go.

use std::process::{Child, Command, Stdio};

mod common;
use common::{free_port, https, wait_for, TRESOR};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_host_enrols_connects_and_is_seen_to_go() {
    let tmp = tempfile::tempdir().unwrap();
    let (api, agents) = (free_port(), free_port());
    let data = tmp.path().join("server");
    let out = Command::new(TRESOR)
        .args(["server", "init", "--data"])
        .arg(&data)
        .args([
            "--api-listen",
            &format!("127.0.0.1:{api}"),
            "--agent-listen",
            &format!("127.0.0.1:{agents}"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let admin = stdout.lines().last().unwrap().trim().to_owned();
    assert_eq!(admin.len(), 48, "{stdout}");

    let _server = Proc(
        Command::new(TRESOR)
            .args(["server", "--config"])
            .arg(data.join("server.toml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(tmp.path().join("server.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for("the API", || {
        std::net::TcpStream::connect(("127.0.0.1", api)).is_ok()
    });
    let ca = data.join("ca.pem");
    let api_call = |method: &str, path: &str, token: &str, body: &str| {
        https(&ca, api, method, path, token, body)
    };
    let (status, _) = api_call("GET", "/api/v1/hosts", "wrong", "");
    assert_eq!(status, 401);
    let (status, body) = api_call("POST", "/api/v1/hosts/token", &admin, "");
    assert_eq!(status, 200, "{body}");
    let token = body["token"].as_str().unwrap().to_owned();

    let agent_dir = tmp.path().join("agent");
    let out = Command::new(TRESOR)
        .args([
            "agent",
            "join",
            "--server",
            &format!("127.0.0.1:{agents}"),
            "--token",
            &token,
            "--name",
            "host-1",
            "--dir",
        ])
        .arg(&agent_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The token is spent.
    let again = Command::new(TRESOR)
        .args([
            "agent",
            "join",
            "--server",
            &format!("127.0.0.1:{agents}"),
            "--token",
            &token,
            "--name",
            "host-2",
            "--dir",
        ])
        .arg(tmp.path().join("agent2"))
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("unknown, used or expired"));

    let agent = Proc(
        Command::new(TRESOR)
            .args(["agent", "--config"])
            .arg(agent_dir.join("agent.toml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(tmp.path().join("agent.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let connected = |want: bool| {
        let (_, hosts) = api_call("GET", "/api/v1/hosts", &admin, "");
        hosts.as_array().is_some_and(|h| {
            h.iter()
                .any(|x| x["name"] == "host-1" && x["connected"] == want)
        })
    };
    wait_for("host-1 to connect", || connected(true));
    // The agent's memory is locked in RAM, all of it (what a deep rekey's keys and copies pass
    // through included), not only its key store.
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.0.id())).unwrap();
    let kib = |field: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{field} in {status}"))
    };
    let (locked, resident) = (kib("VmLck:"), kib("VmRSS:"));
    assert!(
        locked * 10 >= resident * 9,
        "{locked} KiB locked of {resident} KiB resident"
    );
    drop(agent);
    wait_for("host-1 to be seen gone", || connected(false));

    // A token for any new name does not enrol host-1 a second time.
    let (_, body) = api_call("POST", "/api/v1/hosts/token", &admin, "");
    let token = body["token"].as_str().unwrap().to_owned();
    let again = Command::new(TRESOR)
        .args(["agent", "join", "--server", &format!("127.0.0.1:{agents}")])
        .args(["--token", &token, "--name", "host-1", "--dir"])
        .arg(tmp.path().join("agent-copy"))
        .output()
        .unwrap();
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("enrolled already") && err.contains("--replace"),
        "{err}"
    );

    // A removed host's certificate is refused.
    let (status, body) = api_call("DELETE", "/api/v1/hosts/host-1", &admin, "");
    assert_eq!(status, 200, "{body}");
    let _agent = Proc(
        Command::new(TRESOR)
            .args(["agent", "--config"])
            .arg(agent_dir.join("agent.toml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(tmp.path().join("agent-again.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(std::time::Duration::from_secs(3));
    let (_, hosts) = api_call("GET", "/api/v1/hosts", &admin, "");
    assert_eq!(hosts, serde_json::json!([]), "a removed host came back");
    drop(_agent);

    // The package's layout: the configuration in /etc/tresor/agent.toml (here a copy of the
    // package's, its folders moved into the test's), the state in its own folder. Joining fills
    // in who the host is and keeps the file's other settings and comments.
    let etc = tmp.path().join("etc");
    let var = tmp.path().join("var-agent");
    std::fs::create_dir_all(&etc).unwrap();
    let shipped = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/etc/agent.toml"),
    )
    .unwrap();
    let config = etc.join("agent.toml");
    std::fs::write(
        &config,
        shipped.replace("/var/lib/tresor/agent", var.to_str().unwrap()),
    )
    .unwrap();
    let (_, body) = api_call(
        "POST",
        "/api/v1/hosts/token",
        &admin,
        r#"{"host": "host-3"}"#,
    );
    let token = body["token"].as_str().unwrap().to_owned();
    let out = Command::new(TRESOR)
        .args(["agent", "join", "--server", &format!("127.0.0.1:{agents}")])
        .args(["--token", &token, "--name", "host-3", "--config"])
        .arg(&config)
        .arg("--dir")
        .arg(&var)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(var.join("state/agent.pem").is_file());
    let joined = std::fs::read_to_string(&config).unwrap();
    assert!(joined.contains("name = \"host-3\""), "{joined}");
    assert!(joined.contains("# Where VMs run"), "{joined}");
    let _agent = Proc(
        Command::new(TRESOR)
            .args(["agent", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(tmp.path().join("agent-3.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for("host-3 to connect", || {
        let (_, hosts) = api_call("GET", "/api/v1/hosts", &admin, "");
        hosts.as_array().is_some_and(|h| {
            h.iter()
                .any(|x| x["name"] == "host-3" && x["connected"] == true)
        })
    });
}
