//! The API client: HTTPS with rustls (the same library and settings as the rest of Tresor), or
//! plain HTTP to a server on this machine's loopback only. A server is trusted through a CA, a
//! pinned certificate (confirmed by a person at first contact, as SSH does), or, for tests only,
//! not checked at all.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tresor_tls::{CertificateDer, ServerTrust};
use zeroize::Zeroizing;

use crate::error::{ErrorAnswer, ErrorBody};

/// How the client decides it speaks to the right server.
#[derive(Clone, Debug)]
pub enum Trust {
    /// A chain to one of these CAs (PEM certificates).
    Ca(Vec<CertificateDer<'static>>),
    /// Exactly the server certificate with this SHA-256 fingerprint (any common notation).
    Pinned(String),
    /// Nothing is checked: for tests only.
    Insecure,
}

impl Trust {
    /// The CAs in a PEM file.
    pub fn ca_file(path: &std::path::Path) -> Result<Trust, ClientError> {
        tresor_tls::load_certs(path)
            .map(Trust::Ca)
            .map_err(|e| ClientError::Setup(format!("Cannot use the CA file: {e}")))
    }
}

/// Why a request got no usable answer, or the server's error when it answered with one.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Setup(String),
    #[error("Server URL {0} must start with https:// (or http:// for a server on this machine's loopback address)")]
    BadUrl(String),
    #[error("Plain HTTP is only for a server on this machine's loopback address; use https://{0}")]
    PlainRemote(String),
    #[error("The certificate of {server} is not trusted ({detail}); its SHA-256 fingerprint is {fingerprint}. Pin it with `tresor login`, which shows it for confirmation, or give the CA that issued it with --server-ca FILE or TRESOR_CA")]
    Untrusted {
        server: String,
        fingerprint: String,
        detail: String,
    },
    #[error("Cannot reach the server at {server}: {detail}; check the address and that `tresor server` runs there")]
    Unreachable { server: String, detail: String },
    #[error("The server at {server} gave an answer that cannot be read: {detail}")]
    BadAnswer { server: String, detail: String },
    #[error("The answer of the server at {server} was cut off ({detail}); a change asked for may or may not have been made: look before asking again")]
    CutOff { server: String, detail: String },
    /// The server answered with an error.
    #[error("{}", .error.message)]
    Api { status: u16, error: ErrorBody },
}

/// An answer: its status and its JSON body (`Null` when there is none or it is not JSON).
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

/// The largest answer the client reads (the VM list of 40,000 VMs is about 20 MB).
pub const MAX_ANSWER: usize = 1 << 30;

/// A client for a server, or for several servers that share one database (one leads, the
/// others stand by): it sends to one of them and moves to the next when that one cannot be
/// reached, or to the leader when a standby names it.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    /// The servers' URLs, as given.
    bases: Arc<Vec<String>>,
    /// The one requests go to now.
    current: Arc<std::sync::atomic::AtomicUsize>,
    token: Option<Arc<Zeroizing<String>>>,
    seen: Arc<Mutex<Option<CertificateDer<'static>>>>,
}

/// Whether `host` (from a URL) is this machine's loopback.
fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h == "localhost" || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The host part of `scheme://host[:port][/…]`.
fn host_of(rest: &str) -> &str {
    let authority = rest.split('/').next().unwrap_or(rest);
    if let Some(end) = authority.find(']') {
        return &authority[..=end];
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

/// How long a write waits for a server to lead, when none does (a takeover).
const LEADER_WAIT: Duration = Duration::from_secs(30);

/// Checks one server's URL; whether it is HTTPS.
fn check_url(base: &str, server: &str) -> Result<bool, ClientError> {
    if let Some(rest) = base.strip_prefix("https://") {
        if host_of(rest).is_empty() {
            return Err(ClientError::BadUrl(server.into()));
        }
        Ok(true)
    } else if let Some(rest) = base.strip_prefix("http://") {
        if !is_loopback(host_of(rest)) {
            return Err(ClientError::PlainRemote(rest.into()));
        }
        Ok(false)
    } else {
        Err(ClientError::BadUrl(server.into()))
    }
}

impl Client {
    /// A client for the server at `server` (`https://host:port`, or `http://` on loopback), or
    /// for the servers listed there, separated by commas (several servers on one database).
    pub fn new(server: &str, trust: Trust) -> Result<Client, ClientError> {
        let bases: Vec<String> = server
            .split(',')
            .map(|s| s.trim().trim_end_matches('/').to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        if bases.is_empty() {
            return Err(ClientError::BadUrl(server.into()));
        }
        let mut https = true;
        for base in &bases {
            https &= check_url(base, server)?;
        }
        let seen = Arc::new(Mutex::new(None));
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .http1_only()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(30))
            // A standby's redirect is followed only to a server the client was given, and by
            // the client itself (with its token): see `send_text`.
            .redirect(reqwest::redirect::Policy::none());
        // HTTP has no use for TLS, but the HTTP client wants a configuration anyway (one that
        // is never used).
        let trust = if https { trust } else { Trust::Insecure };
        {
            let trust = match trust {
                Trust::Ca(cas) => ServerTrust::Roots(cas),
                Trust::Pinned(fp) => ServerTrust::Pinned(
                    tresor_tls::normalize_fingerprint(&fp).ok_or_else(|| {
                        ClientError::Setup(format!(
                            "{fp} is not a SHA-256 fingerprint (64 hex digits, colons allowed)"
                        ))
                    })?,
                ),
                Trust::Insecure => ServerTrust::Anything,
            };
            let tls = tresor_tls::https_client_config(&trust, seen.clone())
                .map_err(|e| ClientError::Setup(format!("Cannot set up TLS: {e}")))?;
            builder = builder.tls_backend_preconfigured((*tls).clone());
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Setup(format!("Cannot set up the HTTP client: {e}")))?;
        Ok(Client {
            http,
            bases: Arc::new(bases),
            current: Arc::default(),
            token: None,
            seen,
        })
    }

    /// The same client, sending this API token.
    pub fn with_token(mut self, token: &str) -> Client {
        self.token = (!token.is_empty()).then(|| Arc::new(Zeroizing::new(token.to_owned())));
        self
    }

    /// The URL of the server requests go to now, as given.
    pub fn server(&self) -> &str {
        &self.bases[self.current.load(std::sync::atomic::Ordering::Relaxed) % self.bases.len()]
    }

    /// Sends requests to the server at `index` of the list from now on.
    fn switch_to(&self, index: usize) {
        self.current
            .store(index, std::sync::atomic::Ordering::Relaxed);
    }

    /// The fingerprint of the certificate the server presented on the last new connection.
    pub fn presented_fingerprint(&self) -> Option<String> {
        self.seen
            .lock()
            .ok()
            .and_then(|s| s.as_ref().map(tresor_tls::fingerprint))
    }

    fn request(&self, method: &str, path: &str) -> Result<reqwest::RequestBuilder, ClientError> {
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|_| ClientError::Setup(format!("{method} is not an HTTP method")))?;
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.server()));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t.as_str());
        }
        Ok(r)
    }

    fn transport_error(&self, e: reqwest::Error) -> ClientError {
        // A refused certificate shows as a rustls error somewhere in the chain (I/O errors hide
        // what they wrap from `source`, so each is opened as well).
        let mut stack: Vec<&(dyn std::error::Error + 'static)> = vec![&e];
        while let Some(s) = stack.pop() {
            if let Some(tresor_tls::rustls::Error::InvalidCertificate(why)) =
                s.downcast_ref::<tresor_tls::rustls::Error>()
            {
                return ClientError::Untrusted {
                    server: self.server().to_owned(),
                    fingerprint: self
                        .presented_fingerprint()
                        .unwrap_or_else(|| "unknown".into()),
                    detail: format!("{why:?}"),
                };
            }
            if let Some(inner) = s
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
            {
                stack.push(inner);
            }
            if let Some(next) = s.source() {
                stack.push(next);
            }
        }
        ClientError::Unreachable {
            server: self.server().to_owned(),
            detail: with_causes(&e),
        }
    }

    /// Sends a request; any status is an answer.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, ClientError> {
        let (status, text) = self.send_text(method, path, body).await?;
        Ok(Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
        })
    }

    /// Sends a request; the status and the body as text. With several servers: a request that
    /// could not reach one (nothing was sent), or a read cut off by one (before or while it
    /// answered), goes to the next; a write a standby sends on
    /// (307) goes to the leader it names, when that is one of the servers given; a write that
    /// finds no leader (a takeover) is tried again for up to 30 s.
    pub async fn send_text(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, String), ClientError> {
        let n = self.bases.len();
        let started = std::time::Instant::now();
        let mut unreachable = 0;
        let mut redirects = 0;
        loop {
            let mut r = self.request(method, path)?;
            if let Some(b) = body {
                r = r.json(b);
            }
            let answer = match r.send().await {
                Ok(a) => a,
                // Nothing was sent, or what was sent only reads (safe to send again).
                Err(e)
                    if n > 1
                        && (e.is_connect() || matches!(method, "GET" | "HEAD"))
                        && unreachable + 1 < n =>
                {
                    unreachable += 1;
                    self.switch_to(self.current.load(std::sync::atomic::Ordering::Relaxed) + 1);
                    continue;
                }
                Err(e) => return Err(self.transport_error(e)),
            };
            let status = answer.status().as_u16();
            let location = answer
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .map(str::to_owned);
            let body = match self.read_body(answer).await {
                Ok(body) => body,
                // A read cut off (the server died answering) is read again from the next.
                Err(ClientError::CutOff { .. })
                    if n > 1 && matches!(method, "GET" | "HEAD") && unreachable + 1 < n =>
                {
                    unreachable += 1;
                    self.switch_to(self.current.load(std::sync::atomic::Ordering::Relaxed) + 1);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let text = String::from_utf8(body).map_err(|e| ClientError::BadAnswer {
                server: self.server().to_owned(),
                detail: format!("the answer is not UTF-8 ({e})"),
            })?;
            if n > 1 && status == 307 && redirects < 3 {
                let leader = location.as_deref().and_then(|l| {
                    self.bases
                        .iter()
                        .position(|b| l.strip_prefix(b.as_str()) == Some(path))
                });
                if let Some(i) = leader {
                    redirects += 1;
                    self.switch_to(i);
                    continue;
                }
            }
            let no_leader = status == 503
                && serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["error"]["code"].as_str().map(|c| c == "noLeader"))
                    .unwrap_or(false);
            if no_leader && started.elapsed() < LEADER_WAIT {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            return Ok((status, text));
        }
    }

    /// An answer's body, read into one buffer as it arrives (sized from its length when the
    /// server says it), at most [`MAX_ANSWER`] bytes.
    async fn read_body(&self, mut answer: reqwest::Response) -> Result<Vec<u8>, ClientError> {
        let bad = |detail: String| ClientError::BadAnswer {
            server: self.server().to_owned(),
            detail,
        };
        let announced = answer.content_length().unwrap_or(0);
        if announced > MAX_ANSWER as u64 {
            return Err(bad(format!(
                "the answer is {announced} bytes, more than the client takes ({MAX_ANSWER})"
            )));
        }
        // Room for what the server announces, up to 64 MiB at first: a length alone does not
        // make the client take a gigabyte.
        let mut body = Vec::with_capacity(announced.min(64 << 20) as usize);
        let cut = |e: reqwest::Error| ClientError::CutOff {
            server: self.server().to_owned(),
            detail: with_causes(&e),
        };
        while let Some(chunk) = answer.chunk().await.map_err(cut)? {
            if body.len() + chunk.len() > MAX_ANSWER {
                return Err(bad(format!(
                    "the answer is longer than the client takes ({MAX_ANSWER} bytes)"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Sends a request and takes a success's JSON body; an error answer becomes
    /// [`ClientError::Api`].
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let a = self.send(method, path, body).await?;
        if (200..300).contains(&a.status) {
            return Ok(a.body);
        }
        let error = error_of(
            &a.body,
            format!("The server answered {} without saying why", a.status),
        );
        Err(ClientError::Api {
            status: a.status,
            error,
        })
    }

    /// Sends a file by `PUT`, in requests of at most [`crate::requests::MAX_FILE_PIECE`] bytes
    /// (`?offset=N&more=true`, the last without `more`), each read from the file as the server
    /// takes it (`application/octet-stream`, its length announced); the last answer's JSON body.
    pub async fn put_file(&self, path: &str, file: &std::path::Path) -> Result<Value, ClientError> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let unreadable =
            |e: std::io::Error| ClientError::Setup(format!("Cannot read {}: {e}", file.display()));
        let len = tokio::fs::metadata(file).await.map_err(unreadable)?.len();
        let step = crate::requests::MAX_FILE_PIECE;
        let mut offset = 0u64;
        loop {
            let size = (len - offset).min(step);
            let more = offset + size < len;
            let mut f = tokio::fs::File::open(file).await.map_err(unreadable)?;
            f.seek(std::io::SeekFrom::Start(offset))
                .await
                .map_err(unreadable)?;
            let pieces = futures_util::stream::try_unfold(f.take(size), |mut f| async move {
                let mut buf = vec![0u8; 1 << 20];
                let n = f.read(&mut buf).await?;
                if n == 0 {
                    return Ok::<_, std::io::Error>(None);
                }
                buf.truncate(n);
                Ok(Some((buf, f)))
            });
            let target = if offset == 0 && !more {
                path.to_owned()
            } else {
                format!("{path}?offset={offset}&more={more}")
            };
            let answer = self
                .put(&target, reqwest::Body::wrap_stream(pieces), size)
                .await?;
            offset += size;
            if !more {
                return Ok(answer);
            }
        }
    }

    /// Sends bytes as the body of a `PUT` (`application/octet-stream`); a success's JSON body.
    pub async fn put_bytes(&self, path: &str, bytes: Vec<u8>) -> Result<Value, ClientError> {
        let len = bytes.len() as u64;
        self.put(path, reqwest::Body::from(bytes), len).await
    }

    async fn put(&self, path: &str, body: reqwest::Body, len: u64) -> Result<Value, ClientError> {
        let answer = self
            .request("PUT", path)?
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        let status = answer.status().as_u16();
        let body = self.read_body(answer).await?;
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(body);
        }
        Err(ClientError::Api {
            status,
            error: error_of(
                &body,
                format!("The server answered {status} without saying why"),
            ),
        })
    }

    /// Follows a `text/event-stream` (the event stream): each event's data, parsed as JSON, to
    /// `each` until the server ends the stream or `each` returns false.
    pub async fn follow(
        &self,
        path: &str,
        mut each: impl FnMut(Value) -> bool,
    ) -> Result<(), ClientError> {
        use futures_util::StreamExt;
        let answer = self
            .request("GET", path)?
            .header("Accept", "text/event-stream")
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        let status = answer.status().as_u16();
        if !(200..300).contains(&status) {
            let text = answer.text().await.unwrap_or_default();
            let error = error_of(
                &serde_json::from_str(&text).unwrap_or(Value::Null),
                format!("The server refused the event stream ({status})"),
            );
            return Err(ClientError::Api { status, error });
        }
        let mut stream = answer.bytes_stream();
        let mut buffer = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.transport_error(e))?;
            buffer.extend_from_slice(&chunk);
            while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = buffer.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&block);
                let data: Vec<&str> = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim)
                    .collect();
                if data.is_empty() {
                    continue;
                }
                if let Ok(v) = serde_json::from_str::<Value>(&data.join("\n")) {
                    if !each(v) {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }
}

/// An error with the errors that caused it, each after a colon.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut detail = e.to_string();
    let mut s = e.source();
    while let Some(inner) = s {
        detail = format!("{detail}: {inner}");
        s = inner.source();
    }
    detail
}

/// The error an answer holds, or one saying `otherwise` when it holds none.
fn error_of(body: &Value, otherwise: String) -> ErrorBody {
    serde_json::from_value::<ErrorAnswer>(body.clone())
        .map(|e| e.error)
        .unwrap_or(ErrorBody {
            code: None,
            message: otherwise,
            messages: None,
        })
}

/// Connects to `server` without checking its certificate and says the certificate's SHA-256
/// fingerprint, for a person to compare before pinning it (`tresor login` at first contact).
pub async fn first_contact(server: &str) -> Result<String, ClientError> {
    let client = Client::new(server, Trust::Insecure)?;
    // Any answer will do: the certificate is seen in the handshake.
    client.send("GET", "/api/v1/openapi.json", None).await?;
    client.presented_fingerprint().ok_or_else(|| {
        ClientError::Setup(format!(
            "{server} presented no certificate (is it https://?)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that announces an answer longer than the client takes is refused before anything
    /// is read; one that sends what it announced is read whole.
    #[tokio::test]
    async fn answers_are_read_whole_and_bounded() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            for answer in [
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", 1u64 << 40),
                "HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n{\"vm\": \"a\"}\n".to_owned(),
            ] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer.as_bytes()).await;
                let _ = s.shutdown().await;
            }
        });
        let client = Client::new(&format!("http://127.0.0.1:{port}"), Trust::Insecure).unwrap();
        let err = client
            .send_text("GET", "/api/v1/vms", None)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("more than the client takes"),
            "{err}"
        );
        let (status, text) = client.send_text("GET", "/api/v1/vms", None).await.unwrap();
        assert_eq!((status, text.as_str()), (200, "{\"vm\": \"a\"}\n"));
    }

    /// A read cut off by a server that dies mid-answer (a leader killed) is sent to the next
    /// server; a write cut off so is not sent again (it may have been done), and says so.
    #[tokio::test]
    async fn a_read_cut_off_goes_to_the_next_server() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        async fn serve(answer: &'static str) -> u16 {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            tokio::spawn(async move {
                loop {
                    let (mut s, _) = listener.accept().await.unwrap();
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(answer.as_bytes()).await;
                    let _ = s.shutdown().await;
                }
            });
            port
        }
        let dying = serve("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n[{\"name\": ").await;
        let whole = serve("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]").await;
        let servers = format!("http://127.0.0.1:{dying},http://127.0.0.1:{whole}");
        let client = Client::new(&servers, Trust::Insecure).unwrap();
        let (status, text) = client.send_text("GET", "/api/v1/vms", None).await.unwrap();
        assert_eq!((status, text.as_str()), (200, "[]"));

        let client = Client::new(&servers, Trust::Insecure).unwrap();
        let err = client
            .send_text("POST", "/api/v1/vms", Some(&serde_json::json!({})))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("cut off"), "{err}");
    }

    #[test]
    fn plain_http_only_to_loopback() {
        for ok in [
            "http://127.0.0.1:8400",
            "http://localhost:8400/",
            "http://[::1]:8400",
            "https://tresor.example.com:8400",
        ] {
            assert!(Client::new(ok, Trust::Insecure).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.1:8400",
            "http://tresor.example.com",
            "ftp://x",
            "https://",
        ] {
            assert!(Client::new(bad, Trust::Insecure).is_err(), "{bad}");
        }
    }
}
