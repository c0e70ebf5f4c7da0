//! The agent and API ports bound what strangers cost, with real processes: connections without a
//! certificate that announce huge frames, or that never say anything, are closed; only a few
//! per address are set up at once; the server's memory (read from `/proc`) stays where it was,
//! and the enrolled host stays connected.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{pid_of, Dev};

/// The resident memory of process `pid`, in KiB.
fn rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// How many of `streams` the server still holds open (nothing to read, and not closed).
fn open_count(streams: &[std::net::TcpStream]) -> usize {
    streams
        .iter()
        .filter(|s| {
            s.set_nonblocking(true).unwrap();
            matches!(s.peek(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count()
}

/// The open ones among `streams`, counted until at most `max` are or `until` has come.
fn open_at_most(streams: &[std::net::TcpStream], max: usize, until: std::time::Instant) -> usize {
    let mut open = open_count(streams);
    while open > max && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
        open = open_count(streams);
    }
    open
}

/// The SHA-256 of the server CA's certificate, as a join token pins it.
fn ca_pin(ca_pem: &std::path::Path) -> String {
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(ca_pem)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_ascii_lowercase()
}

#[test]
fn strangers_on_the_agent_port_cost_bounded_memory_and_leave_hosts_alone() {
    let dev = Dev::start(1);
    let server_toml = dev.dir.path().join("server/server.toml");
    let pid = pid_of(&["server --config", &server_toml.display().to_string()]);
    let agents = dev.port + 1;
    let tls =
        tresor_tls::pinned_client_config(&ca_pin(&dev.dir.path().join("server/ca.pem"))).unwrap();
    let before = rss_kib(&pid);

    // 40 clients without a certificate, each announcing a 16 MiB frame and sending it slowly.
    let mut set_up = 0;
    let mut streams = Vec::new();
    for _ in 0..40 {
        let tcp = std::net::TcpStream::connect(("127.0.0.1", agents)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let conn = tresor_tls::rustls::ClientConnection::new(
            tls.clone(),
            tresor_tls::ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        let mut s = tresor_tls::rustls::StreamOwned::new(conn, tcp);
        let mut frame = (16u32 << 20).to_be_bytes().to_vec();
        frame.extend(std::iter::repeat_n(b'{', 64 * 1024));
        if s.write_all(&frame).and_then(|()| s.flush()).is_ok() {
            set_up += 1;
            streams.push(s);
        }
    }
    // Each is closed: the frame is refused before it is read.
    let mut closed = 0;
    for s in &mut streams {
        let chunk = vec![b' '; 64 * 1024];
        let mut gone = false;
        for _ in 0..20 {
            if s.write_all(&chunk).and_then(|()| s.flush()).is_err() {
                gone = true;
                break;
            }
        }
        let mut b = [0u8; 1];
        if gone || matches!(s.read(&mut b), Ok(0) | Err(_)) {
            closed += 1;
        }
    }
    assert!(set_up > 0, "no connection could be set up at all");
    assert_eq!(
        closed,
        streams.len(),
        "connections that announced 16 MiB stayed open"
    );
    let after = rss_kib(&pid);
    assert!(
        after < before + 64 * 1024,
        "the server grew from {before} KiB to {after} KiB"
    );
    drop(streams);

    // Connections that say nothing: only a few from one address are held, and not for long.
    let connected = std::time::Instant::now();
    let idle: Vec<std::net::TcpStream> = (0..200)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", agents)).unwrap())
        .collect();
    // Counted until the server has turned the surplus away, but before the handshake timeout
    // (5 s) would close the rest anyway: a busy machine takes a while to accept 200.
    let open = open_at_most(&idle, 64, connected + Duration::from_secs(4));
    assert!(
        open <= 64,
        "{open} silent connections from one address were kept"
    );
    assert!(rss_kib(&pid) < before + 64 * 1024);

    // The enrolled host never noticed.
    let hosts: serde_json::Value =
        serde_json::from_str(&dev.ok(&["host", "list", "-o", "json"])).unwrap();
    assert_eq!(hosts[0]["connected"], true, "{hosts}");
    drop(idle);
}

/// A flood of wrong passwords: the server checks as many at once as it has cores, answers 429
/// after a few, and its memory stays bounded (each check costs argon2's megabytes).
#[test]
fn a_login_flood_is_answered_429_in_bounded_memory() {
    let dev = Dev::start(1);
    let server_toml = dev.dir.path().join("server/server.toml");
    let pid = pid_of(&["server --config", &server_toml.display().to_string()]);
    let before = rss_kib(&pid);
    let dev = &dev;
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..100)
            .map(|i| {
                s.spawn(move || {
                    let body = serde_json::json!({"user": "admin", "password": format!("guess-{i}-xxxxxxxx")});
                    dev.http("POST", "/api/v1/login", "", &body.to_string()).0
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let after = rss_kib(&pid);
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    assert!(
        statuses.iter().filter(|s| **s == 429).count() > 50,
        "{statuses:?}"
    );
    assert!(
        after < before + 256 * 1024,
        "the server grew from {before} KiB to {after} KiB"
    );
    // The operators' tokens still work.
    dev.ok(&["host", "list"]);
}

/// The API's port: silent connections from one address are held only up to its limit (128) and
/// only for the TLS handshake's deadline (10 s), the server's memory stays put, and a client at
/// another address is served meanwhile.
#[test]
fn strangers_on_the_api_port_are_bounded_and_others_are_served() {
    let dev = Dev::start(1);
    let server_toml = dev.dir.path().join("server/server.toml");
    let pid = pid_of(&["server --config", &server_toml.display().to_string()]);
    let before = rss_kib(&pid);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // From 127.0.0.2, so that the test's own requests (from 127.0.0.1) count apart.
    let port = dev.port;
    let idle: Vec<std::net::TcpStream> = rt.block_on(async {
        let mut out = Vec::new();
        for _ in 0..300 {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            let tcp = s.connect(([127, 0, 0, 1], port).into()).await.unwrap();
            out.push(tcp.into_std().unwrap());
        }
        out
    });
    let open = open_at_most(
        &idle,
        128,
        std::time::Instant::now() + Duration::from_secs(5),
    );
    assert!(
        open <= 128,
        "{open} silent connections from one address were kept"
    );
    // Someone else is served meanwhile.
    let hosts = dev.ok(&["host", "list", "-o", "json"]);
    assert!(hosts.contains("host-1"), "{hosts}");
    assert!(rss_kib(&pid) < before + 64 * 1024);
    // And the silent ones are closed once their handshake's time is up.
    common::wait_for("the silent connections are closed", || {
        open_count(&idle) == 0
    });
    drop(idle);
}
