//! What operators watch a Tresor daemon through: Prometheus metrics (OpenMetrics text),
//! liveness (`/healthz`) and readiness (`/readyz`), served on a small plain-HTTP listener of its
//! own (`metrics_listen` in each daemon's configuration) that bounds its connections before it
//! reads a byte. The server also answers `/healthz` and `/readyz` on its API.
//!
//! Each daemon keeps its own metrics (`tresor_server::metrics`, `tresor_kms::metrics`,
//! `tresor_agent::metrics`) and says what it is ready by through [`Observed`].

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use tokio::net::{TcpListener, TcpStream};
use tresor_tls::gate::{Gate, Held};

pub mod backup;

pub use prometheus_client;

/// The media type of the metrics: OpenMetrics 1.0 text, which Prometheus reads.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One thing a daemon's readiness depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    /// What was found, for a person: why it is not ready, and what to look at.
    pub detail: String,
}

impl Check {
    pub fn new(name: &'static str, ok: bool, detail: impl Into<String>) -> Check {
        Check {
            name,
            ok,
            detail: detail.into(),
        }
    }
}

/// A daemon as its operators watch it.
pub trait Observed: Send + Sync + 'static {
    /// Every metric as OpenMetrics text, as it is now.
    fn metrics(&self) -> String;
    /// What readiness depends on (ready when every check is ok).
    fn readiness(&self) -> Vec<Check>;
}

/// `/healthz` (the process answers) and `/readyz` (every check is ok: 200, else 503; the checks
/// as JSON either way), for any router.
pub fn health_routes<S: Clone + Send + Sync + 'static>(observed: Arc<dyn Observed>) -> Router<S> {
    Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route(
            "/readyz",
            get(move || {
                let observed = observed.clone();
                async move { readiness_answer(&observed.readiness()) }
            }),
        )
}

fn readiness_answer(checks: &[Check]) -> Response {
    let ready = checks.iter().all(|c| c.ok);
    let body = serde_json::json!({
        "ready": ready,
        "checks": checks
            .iter()
            .map(|c| serde_json::json!({"name": c.name, "ok": c.ok, "detail": c.detail}))
            .collect::<Vec<_>>(),
    });
    let status = match ready {
        true => StatusCode::OK,
        false => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, axum::Json(body)).into_response()
}

/// `/metrics`, `/healthz` and `/readyz`.
pub fn router(observed: Arc<dyn Observed>) -> Router {
    let metrics = observed.clone();
    health_routes(observed).route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                // Rendering reads the daemon's state; off the async threads.
                let text = tokio::task::spawn_blocking(move || metrics.metrics())
                    .await
                    .unwrap_or_default();
                ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
            }
        }),
    )
}

/// Bounds of the listener: scrapers are few, so a handful of connections in all.
const MAX_CONNECTIONS: usize = 32;
const MAX_CONNECTIONS_PER_ADDRESS: usize = 8;

/// Binds `address` for [`serve`], or says why it cannot.
pub async fn bind(address: &str) -> Result<TcpListener, std::io::Error> {
    TcpListener::bind(address).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("Cannot listen on {address} for metrics ({e}); choose another metrics_listen"),
        )
    })
}

/// Serves [`router`] on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    observed: Arc<dyn Observed>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = Gated {
        gate: Gate::new(MAX_CONNECTIONS, MAX_CONNECTIONS_PER_ADDRESS),
        tcp: listener,
    };
    axum::serve(listener, router(observed))
        .with_graceful_shutdown(shutdown)
        .await
}

/// A TCP listener whose connections each hold a slot of a bounded gate while they are open;
/// a connection beyond the bounds is closed at once.
#[derive(Debug)]
struct Gated {
    gate: Arc<Gate>,
    tcp: TcpListener,
}

impl axum::serve::Listener for Gated {
    type Io = Held<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, SocketAddr) {
        loop {
            match self.tcp.accept().await {
                Ok((tcp, addr)) => match self.gate.enter(addr.ip()) {
                    Ok(slot) => return (Held::new(tcp, slot), addr),
                    Err(e) => tracing::debug!(%addr, error = %e, "metrics connection turned away"),
                },
                Err(e) => {
                    // Out of file descriptors and the like: wait, then go on.
                    tracing::warn!(error = %e, "the metrics listener cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// A histogram of durations in seconds, from 100 µs to about 30 s.
pub fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.5, 14))
}

/// Makes [`seconds_histogram`]s for a family of them
/// (`Family::new_with_constructor(Seconds)`).
#[derive(Clone, Copy, Debug)]
pub struct Seconds;

impl prometheus_client::metrics::family::MetricConstructor<Histogram> for Seconds {
    fn new_metric(&self) -> Histogram {
        seconds_histogram()
    }
}

/// The registry's metrics as OpenMetrics text.
pub fn encode(registry: &prometheus_client::registry::Registry) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!(error = %e, "cannot render the metrics");
    }
    out
}

/// Days until the first certificate of a PEM text expires (negative once it has), or `None`
/// when it holds none that can be read.
pub fn days_left(pem: &[u8], now: i64) -> Option<f64> {
    let certs = tresor_tls::parse_certs(pem, "certificate").ok()?;
    let info = tresor_tls::certificate_info(certs.first()?).ok()?;
    Some((info.not_after - now) as f64 / 86_400.0)
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(bool);

    impl Observed for Fixed {
        fn metrics(&self) -> String {
            "# TYPE x gauge\nx 1\n# EOF\n".into()
        }
        fn readiness(&self) -> Vec<Check> {
            vec![
                Check::new("database", true, "open"),
                Check::new("engine", self.0, "last pass 1 s ago"),
            ]
        }
    }

    /// A GET over a plain TCP connection: status, content type, body.
    async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        c.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).await.unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        let status = head[9..12].parse().unwrap();
        let ct = head
            .lines()
            .find_map(|l| l.strip_prefix("content-type: "))
            .unwrap_or_default()
            .to_owned();
        (status, ct, body.to_owned())
    }

    #[tokio::test]
    async fn readiness_follows_the_checks_and_metrics_are_openmetrics() {
        for ready in [true, false] {
            let listener = bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let served = tokio::spawn(serve(listener, Arc::new(Fixed(ready)), async {
                let _ = stopped.await;
            }));
            let (status, _, body) = get(addr, "/healthz").await;
            assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
            let (status, _, body) = get(addr, "/readyz").await;
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(status, if ready { 200 } else { 503 });
            assert_eq!(v["ready"], ready);
            assert_eq!(v["checks"][1]["name"], "engine");
            let (status, ct, body) = get(addr, "/metrics").await;
            assert_eq!((status, ct.as_str()), (200, CONTENT_TYPE));
            assert!(body.ends_with("# EOF\n"));
            let _ = stop.send(());
            served.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn connections_beyond_the_bound_are_closed() {
        use tokio::io::AsyncReadExt;
        let listener = bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(
            listener,
            Arc::new(Fixed(true)),
            std::future::pending(),
        ));
        // Idle connections from one address take its slots; the next one is closed unread.
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS_PER_ADDRESS {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut extra = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf))
            .await
            .expect("the connection beyond the bound is closed")
            .unwrap_or(0);
        assert_eq!(n, 0);
        // Once they go, there is room again (as soon as the server has seen them close: it is
        // asked again for up to 20 s, so that a loaded machine does not fail the test).
        drop(idle);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let answered = async {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut c = TcpStream::connect(addr).await.ok()?;
                c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .await
                    .ok()?;
                let mut answer = String::new();
                c.read_to_string(&mut answer).await.ok()?;
                Some(answer.starts_with("HTTP/1.1 200"))
            };
            if answered.await == Some(true) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no room after the idle connections went"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
