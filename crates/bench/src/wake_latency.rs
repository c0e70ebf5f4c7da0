//! What a round trip between two processes costs on this machine over loopback TCP, when the
//! waiting side sleeps and when it polls: the cost of waking a sleeping thread, which decides how
//! the key server waits for requests (see ARCHITECTURE.md).
//!
//! wake-latency [ROUND_TRIPS]      (default 20000; prints one JSON line per case)

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Instant;

const MESSAGE: usize = 200;

/// Reads exactly `buf.len()` bytes, either sleeping in `read` or polling a non-blocking socket.
fn read_exact(stream: &mut TcpStream, buf: &mut [u8], poll: bool) -> std::io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return Ok(false),
            Ok(n) => filled += n,
            Err(e) if poll && e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The echo side, run as a child process: answers every message until the connection closes.
fn echo(port: &str, poll: bool) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap_or(0)))?;
    stream.set_nodelay(true)?;
    stream.set_nonblocking(poll)?;
    let mut buf = [0u8; MESSAGE];
    while read_exact(&mut stream, &mut buf, poll)? {
        stream.write_all(&buf)?;
    }
    Ok(())
}

fn case(rounds: u32, server_polls: bool, client_polls: bool) -> std::io::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port().to_string();
    let me = std::env::current_exe()?;
    let mode = if server_polls { "poll" } else { "sleep" };
    let mut child = Command::new(me)
        .args(["--echo", &port, mode])
        .stdin(Stdio::null())
        .spawn()?;
    let (mut stream, _) = listener.accept()?;
    stream.set_nodelay(true)?;
    stream.set_nonblocking(client_polls)?;
    let mut buf = [7u8; MESSAGE];
    let start = Instant::now();
    for _ in 0..rounds {
        // A non-blocking socket may refuse a write only when its buffer is full, which one
        // message of 200 bytes in flight never fills.
        stream.write_all(&buf)?;
        if !read_exact(&mut stream, &mut buf, client_polls)? {
            break;
        }
    }
    let per_round_trip = start.elapsed().as_secs_f64() / f64::from(rounds) * 1e6;
    drop(stream);
    let _ = child.wait();
    Ok(per_round_trip)
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--echo") {
        let port = args.get(2).map(String::as_str).unwrap_or("0");
        return echo(port, args.get(3).map(String::as_str) == Some("poll"));
    }
    let rounds: u32 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    for (server_polls, client_polls) in [(false, false), (true, false), (false, true), (true, true)]
    {
        let us = case(rounds, server_polls, client_polls)?;
        let line = serde_json::json!({"server_polls": server_polls, "client_polls": client_polls, "round_trips": rounds, "round_trip_us": (us * 10.0).round() / 10.0});
        // A closed pipe (the reader stopped) ends the run quietly.
        if writeln!(std::io::stdout(), "{line}").is_err() {
            break;
        }
    }
    Ok(())
}
