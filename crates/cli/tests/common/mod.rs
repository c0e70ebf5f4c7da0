//! What the process tests share: the binary, free ports, waiting, and a bare HTTP client.
#![allow(dead_code)] // each test uses a part

use std::io::{Read, Write};
use std::time::{Duration, Instant};

pub const TRESOR: &str = env!("CARGO_BIN_EXE_tresor");

/// A free local port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The first of three consecutive free local ports (what `tresor dev --port` uses).
pub fn free_ports() -> u16 {
    loop {
        let p = free_port();
        if p < 65000 && (1..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok()) {
            return p;
        }
    }
}

/// Polls `f` until it holds; fails the test after a minute.
pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One API request with a bearer token; the status and the JSON body (null when none).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    token: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let ct = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/json\r\n"
    };
    write!(s, "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n{ct}Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    (
        out[9..12].parse().unwrap(),
        serde_json::from_str(out.split("\r\n\r\n").nth(1).unwrap_or("")).unwrap_or_default(),
    )
}
