//! What the load generators of `bench/` share.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Prometheus at its most eager: `GET /metrics` on 127.0.0.1:`port` every second until stopped.
#[derive(Debug)]
pub struct Scraper {
    on: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Scraper {
    pub fn start(port: u16) -> Scraper {
        let on = Arc::new(AtomicBool::new(true));
        let done = Arc::new(AtomicUsize::new(0));
        let (o, d) = (on.clone(), done.clone());
        let thread = std::thread::spawn(move || {
            use std::io::{Read, Write};
            while o.load(Ordering::Relaxed) {
                if let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                    let _ = c.write_all(
                        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                    );
                    let mut answer = Vec::new();
                    if c.read_to_end(&mut answer).is_ok() && answer.starts_with(b"HTTP/1.1 200") {
                        d.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        Scraper {
            on,
            done,
            thread: Some(thread),
        }
    }

    /// Stops scraping; how many scrapes were answered.
    pub fn stop(mut self) -> usize {
        self.on.store(false, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.done.load(Ordering::Relaxed)
    }
}
