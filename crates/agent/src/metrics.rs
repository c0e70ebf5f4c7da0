//! The agent's metrics and readiness, served by `tresor_ops` on `metrics_listen`: the session
//! with the server, the server's requests by command and result with their durations, the VMs
//! and keys of the host as of the last report, and the days left on the agent's certificate.
//! Nothing here takes the host's lock: the gauges are set where the session reports anyway, so
//! that a scrape never waits behind long host work.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tresor_core::protocol::{PowerState, VmReport};
use tresor_ops::{Check, Seconds};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    command: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandOnly {
    command: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PowerLabels {
    power_state: &'static str,
}

/// Every metric of the agent.
pub struct Metrics {
    registry: Registry,
    connected: Gauge,
    requests: Family<CommandLabels, Counter>,
    request_seconds: Family<CommandOnly, Histogram, Seconds>,
    vms: Family<PowerLabels, Gauge>,
    vms_encrypted: Gauge,
    keys_cached: Gauge,
    certificate_days: Gauge<f64, AtomicU64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// The agent's metrics, one set per process.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tresor_agent");
        let m = Metrics {
            registry: Registry::default(),
            connected: Gauge::default(),
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(Seconds),
            vms: Family::default(),
            vms_encrypted: Gauge::default(),
            keys_cached: Gauge::default(),
            certificate_days: Gauge::default(),
        };
        registry.register(
            "server_connected",
            "Whether the agent has a session with the server (1) or not (0)",
            m.connected.clone(),
        );
        registry.register(
            "requests",
            "The server's requests carried out, by command and result (ok, failed)",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to carry out one of the server's requests, by command",
            m.request_seconds.clone(),
        );
        registry.register(
            "vms",
            "The host's VMs by power state, as last reported",
            m.vms.clone(),
        );
        registry.register(
            "vms_encrypted",
            "The host's encrypted VMs, as last reported",
            m.vms_encrypted.clone(),
        );
        registry.register(
            "keys_cached",
            "Keys in the agent's locked key memory",
            m.keys_cached.clone(),
        );
        registry.register(
            "certificate_expiry_days",
            "Days until the agent's certificate expires (negative once it has)",
            m.certificate_days.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Whether the session with the server is up.
    pub fn set_connected(&self, up: bool) {
        self.connected.set(up as i64);
    }

    /// One request of the server carried out.
    pub fn request(&self, command: &'static str, ok: bool, took: Duration) {
        self.requests
            .get_or_create(&CommandLabels {
                command,
                result: if ok { "ok" } else { "failed" },
            })
            .inc();
        self.request_seconds
            .get_or_create(&CommandOnly { command })
            .observe(took.as_secs_f64());
    }

    /// The host as just reported to the server.
    pub fn reported(&self, vms: &[VmReport], keys_cached: usize) {
        for state in PowerState::ALL {
            let n = vms.iter().filter(|v| v.power_state == state).count();
            self.vms
                .get_or_create(&PowerLabels {
                    power_state: state.as_str(),
                })
                .set(n as i64);
        }
        self.vms_encrypted
            .set(vms.iter().filter(|v| v.encrypted).count() as i64);
        self.keys_cached.set(keys_cached as i64);
    }
}

/// The agent as its operators watch it.
#[derive(Clone, Debug)]
pub struct Observed {
    /// The agent's certificate (PEM).
    pub certificate: PathBuf,
}

impl tresor_ops::Observed for Observed {
    fn metrics(&self) -> String {
        if let Some(days) = std::fs::read(&self.certificate)
            .ok()
            .and_then(|pem| tresor_ops::days_left(&pem, tresor_ops::now()))
        {
            METRICS.certificate_days.set(days);
        }
        tresor_ops::encode(&METRICS.registry)
    }

    fn readiness(&self) -> Vec<Check> {
        let up = METRICS.connected.get() == 1;
        vec![Check::new(
            "server",
            up,
            if up {
                "session with the server established".to_owned()
            } else {
                "No session with the server; see the agent's log for why (network, certificate, server down)".to_owned()
            },
        )]
    }
}
