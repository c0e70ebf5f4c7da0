//! A real headless Chromium, driven over WebDriver (chromedriver), for the console's tests.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{free_port, Proc};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    port: u16,
    session: String,
    _driver: Proc,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session.
    pub fn start() -> Browser {
        let port = free_port();
        let driver = Proc(
            std::process::Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("chromedriver (scripts/setup-test-deps installs chromium-driver)"),
        );
        super::wait_for("chromedriver listens", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        let mut b = Browser {
            port,
            session: String::new(),
            _driver: driver,
        };
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            // The console is served over HTTPS with a certificate from the test server's own CA.
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1360,860", "--lang=en-US"]
            }
        }}});
        let v = b.call("POST", "/session", &caps);
        b.session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
            .to_owned();
        b
    }

    fn call(&self, method: &str, path: &str, body: &Value) -> Value {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let text = if method == "GET" || method == "DELETE" {
            String::new()
        } else {
            body.to_string()
        };
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
            text.len()
        )
        .unwrap();
        // chromedriver says `Connection: close` but keeps the connection: read by length.
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        let (head_end, length) = loop {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "chromedriver closed the connection");
            out.extend_from_slice(&buf[..n]);
            if let Some(i) = out.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&out[..i]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                break (i + 4, length);
            }
        };
        while out.len() < head_end + length {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "chromedriver closed the connection");
            out.extend_from_slice(&buf[..n]);
        }
        serde_json::from_slice(&out[head_end..head_end + length]).unwrap_or_default()
    }

    fn session_call(&self, method: &str, path: &str, body: Value) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), &body)
    }

    pub fn go(&self, url: &str) {
        self.session_call("POST", "/url", json!({ "url": url }));
    }

    /// The element matching `css`, if there is one now.
    pub fn find(&self, css: &str) -> Option<String> {
        let v = self.session_call(
            "POST",
            "/element",
            json!({"using": "css selector", "value": css}),
        );
        v["value"][ELEMENT].as_str().map(str::to_owned)
    }

    /// Waits up to a minute for an element matching `css`.
    pub fn wait(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(e) = self.find(css) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no {css} on the page: {}",
                self.text("body")
            );
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    /// Waits until the text of `css` satisfies `f`; the text.
    pub fn wait_text(&self, css: &str, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.find(css).is_some() {
                let t = self.text(css);
                if f(&t) {
                    return t;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{css} never showed what was expected: {}",
                self.text("body")
            );
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    /// Clicks the element; if the page replaced it meanwhile (the console re-renders on live
    /// events), clicks the new one.
    pub fn click(&self, css: &str) {
        for _ in 0..20 {
            let e = self.wait(css);
            let v = self.session_call("POST", &format!("/element/{e}/click"), json!({}));
            match v["value"]["error"].as_str() {
                None => return,
                Some("stale element reference") | Some("element click intercepted") => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Some(other) => panic!("clicking {css}: {other}: {v}"),
            }
        }
        panic!("{css} kept changing under the click");
    }

    pub fn type_into(&self, css: &str, text: &str) {
        let e = self.wait(css);
        self.session_call(
            "POST",
            &format!("/element/{e}/value"),
            json!({ "text": text }),
        );
    }

    /// Calls `what` on the element matching `css`, again on the new one if the page replaced it
    /// meanwhile (the console re-renders on live events). `None` when there is no such element.
    fn on_element(&self, css: &str, method: &str, what: &str) -> Option<Value> {
        for _ in 0..20 {
            let e = self.find(css)?;
            let v = self.session_call(method, &format!("/element/{e}/{what}"), json!({}));
            if v["value"]["error"].as_str() == Some("stale element reference") {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            return Some(v["value"].clone());
        }
        panic!("{css} kept changing");
    }

    /// The visible text of the first element matching `css` (empty when there is none).
    pub fn text(&self, css: &str) -> String {
        self.on_element(css, "GET", "text")
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    pub fn attribute(&self, css: &str, name: &str) -> Option<String> {
        self.wait(css);
        self.on_element(css, "GET", &format!("attribute/{name}"))
            .and_then(|v| v.as_str().map(str::to_owned))
    }

    /// Accepts the open confirmation dialog, waiting for it to open.
    pub fn accept_alert(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.session_call("POST", "/alert/accept", json!({}));
            if v["value"]["error"].is_null() {
                return;
            }
            assert!(Instant::now() < deadline, "no dialog opened: {v}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Presses and releases keys on the keyboard, one after another (WebDriver key codes such
    /// as `\u{E004}` for Tab and `\u{E007}` for Enter).
    pub fn press(&self, keys: &[&str]) {
        let actions: Vec<Value> = keys
            .iter()
            .flat_map(|k| {
                [
                    json!({"type": "keyDown", "value": k}),
                    json!({"type": "keyUp", "value": k}),
                ]
            })
            .collect();
        let v = self.session_call(
            "POST",
            "/actions",
            json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]}),
        );
        assert!(v["value"].is_null(), "pressing keys: {v}");
    }

    /// Runs a script in the page; its result.
    pub fn script(&self, js: &str) -> Value {
        self.session_call("POST", "/execute/sync", json!({"script": js, "args": []}))["value"]
            .clone()
    }

    /// Shows the page as a phone of `width` by `height` CSS pixels would (a touch screen that
    /// honours the page's viewport), or, with `None`, as the desktop window again.
    pub fn emulate_phone(&self, size: Option<(u32, u32)>) {
        let (cmd, params) = match size {
            Some((width, height)) => (
                "Emulation.setDeviceMetricsOverride",
                json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": true}),
            ),
            None => ("Emulation.clearDeviceMetricsOverride", json!({})),
        };
        let v = self.session_call(
            "POST",
            "/goog/cdp/execute",
            json!({"cmd": cmd, "params": params}),
        );
        assert!(v["value"]["error"].is_null(), "{cmd}: {v}");
    }

    /// How wide the page is laid out, in CSS pixels (wider than the window: it scrolls sideways).
    pub fn page_width(&self) -> u64 {
        self.script("return document.documentElement.scrollWidth;")
            .as_u64()
            .unwrap_or(0)
    }

    /// The serious and critical accessibility violations axe-core finds on the page now, each
    /// as "rule: help (elements)". axe-core comes from scripts/browser (setup-test-deps).
    pub fn axe_violations(&self) -> Vec<String> {
        let path = super::workspace_root().join("scripts/browser/node_modules/axe-core/axe.min.js");
        let source = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "axe-core is not installed ({}: {e}); run scripts/setup-test-deps",
                path.display()
            )
        });
        if self.script("return typeof window.axe;") != "object" {
            self.script(&format!("{source}\nreturn true;"));
        }
        let v = self.session_call(
            "POST",
            "/execute/async",
            json!({"script": r#"
                const done = arguments[arguments.length - 1];
                axe.run(document, { resultTypes: ["violations"] })
                  .then((r) => done(r.violations
                    .filter((v) => v.impact === "serious" || v.impact === "critical")
                    .map((v) => v.id + ": " + v.help + " (" +
                      v.nodes.map((n) => n.target.join(" ")).join(", ") + ")")))
                  .catch((e) => done(["axe-core failed: " + e]));
            "#, "args": []}),
        );
        serde_json::from_value(v["value"].clone())
            .unwrap_or_else(|_| panic!("axe-core answered {v}"))
    }

    /// Saves a PNG screenshot of the window.
    pub fn screenshot(&self, path: &std::path::Path) {
        use base64::Engine as _;
        let v = self.session_call("GET", "/screenshot", json!({}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(v["value"].as_str().expect("a screenshot"))
            .unwrap();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            self.session_call("DELETE", "", json!({}));
        }
    }
}
