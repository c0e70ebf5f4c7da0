//! `tresor server` and `tresor agent` as processes: the server is set up with `init`, hands out
//! a join token through its API, a host enrols with `tresor agent join` and connects; when the
//! agent dies the server sees the host go.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TRESOR: &str = env!("CARGO_BIN_EXE_tresor");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http(port: u16, method: &str, path: &str, token: &str) -> (u16, serde_json::Value) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    (
        status,
        serde_json::from_str(out.split("\r\n\r\n").nth(1).unwrap_or("")).unwrap_or_default(),
    )
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
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
    let (status, _) = http(api, "GET", "/api/v1/hosts", "wrong");
    assert_eq!(status, 401);
    let (status, body) = http(api, "POST", "/api/v1/hosts/token", &admin);
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
        let (_, hosts) = http(api, "GET", "/api/v1/hosts", &admin);
        hosts.as_array().is_some_and(|h| {
            h.iter()
                .any(|x| x["name"] == "host-1" && x["connected"] == want)
        })
    };
    wait_for("host-1 to connect", || connected(true));
    drop(agent);
    wait_for("host-1 to be seen gone", || connected(false));
}
