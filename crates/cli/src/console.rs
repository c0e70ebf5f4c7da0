//! `tresor vm console`: a VM's serial console through the server and the VM's host. Output is
//! read from the console's log (`GET /api/v1/vms/{name}/console?offset=N`), input typed with
//! `POST /api/v1/vms/{name}/console`. On a terminal, keys go as they are pressed (raw mode) and
//! Ctrl-] leaves, as with `virsh console`; other input is typed as it is, then the output is
//! followed for a while.

use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine;
use tresor_api::views::ConsoleOutput;

use crate::client::Conn;
use crate::CliError;

/// The key that leaves the console (Ctrl-]).
const ESCAPE: u8 = 0x1d;
/// How often the output is asked for.
const POLL: Duration = Duration::from_millis(150);
/// The most bytes of input one request carries.
const PIECE: usize = 4096;

struct Console<'a> {
    rt: tokio::runtime::Runtime,
    client: tresor_api::Client,
    name: &'a str,
    offset: u64,
}

impl Console<'_> {
    /// Prints what the console said since the last call; whether the VM runs.
    fn print_new(&mut self, out: &mut impl Write) -> Result<bool, CliError> {
        loop {
            let path = format!("/api/v1/vms/{}/console?offset={}", self.name, self.offset);
            let v = self.rt.block_on(self.client.call("GET", &path, None))?;
            let answer: ConsoleOutput = serde_json::from_value(v).map_err(|e| {
                CliError::msg(format!(
                    "The server's console answer is not what it should be: {e}"
                ))
            })?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(answer.data.as_bytes())
                .map_err(|e| CliError::msg(format!("The console output is not base64: {e}")))?;
            let _ = out.write_all(&bytes);
            let _ = out.flush();
            self.offset = answer.next;
            if bytes.is_empty() {
                return Ok(answer.running);
            }
        }
    }

    fn type_in(&self, bytes: &[u8]) -> Result<(), CliError> {
        let text = String::from_utf8_lossy(bytes);
        let mut rest: &str = &text;
        while !rest.is_empty() {
            let mut cut = rest.len().min(PIECE);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let body = serde_json::json!({ "input": &rest[..cut] });
            let path = format!("/api/v1/vms/{}/console", self.name);
            self.rt
                .block_on(self.client.call("POST", &path, Some(&body)))?;
            rest = &rest[cut..];
        }
        Ok(())
    }
}

/// The terminal in raw mode until this is dropped.
struct RawMode(Option<rustix::termios::Termios>);

impl RawMode {
    fn enter() -> RawMode {
        let stdin = rustix::stdio::stdin();
        let Ok(saved) = rustix::termios::tcgetattr(stdin) else {
            return RawMode(None);
        };
        let mut raw = saved.clone();
        raw.make_raw();
        if rustix::termios::tcsetattr(stdin, rustix::termios::OptionalActions::Now, &raw).is_err() {
            return RawMode(None);
        }
        RawMode(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = rustix::termios::tcsetattr(
                rustix::stdio::stdin(),
                rustix::termios::OptionalActions::Now,
                saved,
            );
        }
    }
}

pub(crate) fn run(c: &Conn, name: &str, log_only: bool, wait: u64) -> Result<(), CliError> {
    let token = c.token()?;
    let mut console = Console {
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CliError::msg(format!("Cannot start the runtime: {e}")))?,
        client: c.client(&token)?,
        name,
        offset: 0,
    };
    let mut stdout = std::io::stdout();
    if log_only {
        console.print_new(&mut stdout)?;
        return Ok(());
    }
    let terminal = rustix::termios::isatty(rustix::stdio::stdin());
    if !terminal {
        let mut input = Vec::new();
        std::io::stdin()
            .read_to_end(&mut input)
            .map_err(|e| CliError::msg(format!("Cannot read the input: {e}")))?;
        console.type_in(&input)?;
        let end = Instant::now() + Duration::from_secs(wait);
        while Instant::now() < end {
            console.print_new(&mut stdout)?;
            std::thread::sleep(POLL);
        }
        console.print_new(&mut stdout)?;
        return Ok(());
    }
    eprintln!("Console of VM {name}; Ctrl-] leaves.\r");
    let _raw = RawMode::enter();
    let (keys, typed) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        let mut stdin = std::io::stdin();
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 || keys.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    loop {
        let mut input = Vec::new();
        while let Ok(bytes) = typed.try_recv() {
            input.extend_from_slice(&bytes);
        }
        if let Some(at) = input.iter().position(|&b| b == ESCAPE) {
            input.truncate(at);
            console.type_in(&input)?;
            break;
        }
        if !input.is_empty() {
            console.type_in(&input)?;
        }
        if !console.print_new(&mut stdout)? {
            eprintln!("\r\nVM {name} is powered off.\r");
            break;
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}
