//! The server's metrics and readiness, served by `tresor_ops` on `metrics_listen` (readiness
//! also on the API as `/readyz`).
//!
//! Counters and histograms are counted where things happen (the API's access layer, the key
//! broker, the hub's key pushes) in one process-wide [`METRICS`]; what is a state (VMs by crypto
//! state, locked VMs by reason, hosts, alarms, providers, certificates) is read from the store,
//! the engine and the providers' last probes when the metrics are asked for, so that it is
//! never out of date and costs nothing between scrapes.

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
use tresor_core::vm::{CryptoState, LockReason, ProviderAnswer};
use tresor_ops::{Check, Seconds};

use crate::service::Context;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnswerLabels {
    provider: String,
    answer: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    provider: String,
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertLabels {
    /// `server`, or `provider:NAME`.
    owner: String,
    which: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Every metric of the server.
pub struct Metrics {
    registry: Registry,
    api_requests: Family<RequestLabels, Counter>,
    api_seconds: Family<RouteLabels, Histogram, Seconds>,
    key_fetches: Family<AnswerLabels, Counter>,
    key_fetch_seconds: Family<ProviderLabels, Histogram, Seconds>,
    keys_created: Family<AnswerLabels, Counter>,
    key_pushes: Family<ResultLabels, Counter>,
    key_push_seconds: Family<ResultLabels, Histogram, Seconds>,
    vms: Family<StateLabels, Gauge>,
    vms_locked: Family<ReasonLabels, Gauge>,
    vms_discovered: Gauge,
    hosts: Family<StateLabels, Gauge>,
    alarms: Gauge,
    provider_up: Family<EndpointLabels, Gauge>,
    provider_latency: Family<EndpointLabels, FloatGauge>,
    certificate_days: Family<CertLabels, FloatGauge>,
    tasks: Family<StateLabels, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// The server's metrics, one set per process (as Firecracker's).
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tresor");
        let build = Family::<VersionLabels, Gauge>::default();
        build
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "The running Tresor server's version", build);
        let m = Metrics {
            api_requests: Family::default(),
            api_seconds: Family::new_with_constructor(Seconds),
            key_fetches: Family::default(),
            key_fetch_seconds: Family::new_with_constructor(Seconds),
            keys_created: Family::default(),
            key_pushes: Family::default(),
            key_push_seconds: Family::new_with_constructor(Seconds),
            vms: Family::default(),
            vms_locked: Family::default(),
            vms_discovered: Gauge::default(),
            hosts: Family::default(),
            alarms: Gauge::default(),
            provider_up: Family::default(),
            provider_latency: Family::default(),
            certificate_days: Family::default(),
            tasks: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "api_requests",
            "API requests answered, by method, route and status",
            m.api_requests.clone(),
        );
        registry.register(
            "api_request_duration_seconds",
            "Time to answer an API request (to its first byte), by method and route",
            m.api_seconds.clone(),
        );
        registry.register(
            "key_fetches",
            "Keys asked of key providers, by provider and answer (active, notActive, notFound, denied, unreachable)",
            m.key_fetches.clone(),
        );
        registry.register(
            "key_fetch_duration_seconds",
            "Time of one KMIP request that fetches keys (one or a batch), by provider",
            m.key_fetch_seconds.clone(),
        );
        registry.register(
            "keys_created",
            "Keys created on key providers, by provider and answer (ok, failed)",
            m.keys_created.clone(),
        );
        registry.register(
            "key_pushes",
            "Keys sent to hosts, by result (ok, failed)",
            m.key_pushes.clone(),
        );
        registry.register(
            "key_push_duration_seconds",
            "Time of one push of keys to a host, by result",
            m.key_push_seconds.clone(),
        );
        registry.register("vms", "Registered VMs by crypto state", m.vms.clone());
        registry.register(
            "vms_locked",
            "Locked VMs by lock reason",
            m.vms_locked.clone(),
        );
        registry.register(
            "vms_discovered",
            "VMs that hosts report and the registry does not hold",
            m.vms_discovered.clone(),
        );
        registry.register(
            "hosts",
            "Enrolled hosts by connection (connected, disconnected)",
            m.hosts.clone(),
        );
        registry.register("alarms_active", "Active alarms", m.alarms.clone());
        registry.register(
            "provider_endpoint_up",
            "Whether a key provider's endpoint answered its last probe (1) or not (0)",
            m.provider_up.clone(),
        );
        registry.register(
            "provider_endpoint_latency_seconds",
            "A key provider endpoint's answer time at its last probe",
            m.provider_latency.clone(),
        );
        registry.register(
            "certificate_expiry_days",
            "Days until a certificate expires (negative once it has), by owner and which",
            m.certificate_days.clone(),
        );
        registry.register(
            "tasks",
            "Server-side tasks by state (finished ones kept 30 days)",
            m.tasks.clone(),
        );
        let m = Metrics { registry, ..m };
        m.set_tasks(&tresor_core::task::TaskState::ALL.map(|s| (s.as_str(), 0)));
        m
    }

    /// One API request answered.
    pub fn api_request(
        &self,
        method: &axum::http::Method,
        route: &str,
        status: u16,
        took: Duration,
    ) {
        let method = method_label(method);
        self.api_requests
            .get_or_create(&RequestLabels {
                method,
                route: route.to_owned(),
                status,
            })
            .inc();
        self.api_seconds
            .get_or_create(&RouteLabels {
                method,
                route: route.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// A provider's answers to one KMIP request that fetched keys.
    pub fn keys_fetched<'a>(
        &self,
        provider: &str,
        answers: impl IntoIterator<Item = &'a ProviderAnswer>,
        took: Duration,
    ) {
        for a in answers {
            self.key_fetches
                .get_or_create(&AnswerLabels {
                    provider: provider.to_owned(),
                    answer: answer_label(a),
                })
                .inc();
        }
        self.key_fetch_seconds
            .get_or_create(&ProviderLabels {
                provider: provider.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// A key created on a provider, or not.
    pub fn key_created(&self, provider: &str, ok: bool) {
        self.keys_created
            .get_or_create(&AnswerLabels {
                provider: provider.to_owned(),
                answer: if ok { "ok" } else { "failed" },
            })
            .inc();
    }

    /// `keys` keys sent to a host in one push.
    pub fn keys_pushed(&self, keys: usize, ok: bool, took: Duration) {
        let result = ResultLabels {
            result: if ok { "ok" } else { "failed" },
        };
        self.key_pushes.get_or_create(&result).inc_by(keys as u64);
        self.key_push_seconds
            .get_or_create(&result)
            .observe(took.as_secs_f64());
    }

    /// Sets the number of tasks in each state (called by the tasks as they change).
    pub fn set_tasks(&self, counts: &[(&'static str, i64)]) {
        for (state, n) in counts {
            self.tasks.get_or_create(&StateLabels { state }).set(*n);
        }
    }
}

/// An HTTP method as a label: the ones the API knows, anything else `other` (a label's values
/// must stay few whatever clients send).
fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

fn answer_label(a: &ProviderAnswer) -> &'static str {
    match a {
        ProviderAnswer::NotAsked => "notAsked",
        ProviderAnswer::Active => "active",
        ProviderAnswer::NotActive(_) => "notActive",
        ProviderAnswer::NotFound => "notFound",
        ProviderAnswer::PermissionDenied(_) => "denied",
        ProviderAnswer::Unreachable(_) => "unreachable",
    }
}

/// The server as its operators watch it: its context and its folder (for its certificates).
#[derive(Clone, Debug)]
pub struct Observed {
    pub cx: Context,
    pub data_dir: PathBuf,
    /// The API's certificate, relative to `data_dir`.
    pub api_certificate: PathBuf,
    /// Readiness: the engine must have finished a pass within this time.
    pub engine_stall: Duration,
}

impl Observed {
    /// Reads the states the gauges show.
    fn refresh(&self) {
        let m = &*METRICS;
        let cx = &self.cx;
        let mut by_state = [0i64; CryptoState::ALL.len()];
        let mut by_reason = [0i64; LockReason::ALL.len()];
        for vm in cx.store.stored_vms() {
            let r = &vm.record;
            if let Some(i) = CryptoState::ALL.iter().position(|s| *s == r.crypto_state) {
                by_state[i] += 1;
            }
            if let Some(reason) = r
                .lock_reason
                .filter(|_| r.crypto_state == CryptoState::Locked)
            {
                if let Some(i) = LockReason::ALL.iter().position(|x| *x == reason) {
                    by_reason[i] += 1;
                }
            }
        }
        for (s, n) in CryptoState::ALL.iter().zip(by_state) {
            m.vms
                .get_or_create(&StateLabels { state: s.as_str() })
                .set(n);
        }
        for (r, n) in LockReason::ALL.iter().zip(by_reason) {
            m.vms_locked
                .get_or_create(&ReasonLabels { reason: r.as_str() })
                .set(n);
        }
        m.vms_discovered.set(cx.engine.discovered().len() as i64);
        let connected: std::collections::HashSet<String> = cx.hub.connected().into_iter().collect();
        let hosts = cx.store.hosts().unwrap_or_default();
        let up = hosts.iter().filter(|h| connected.contains(&h.name)).count() as i64;
        m.hosts
            .get_or_create(&StateLabels { state: "connected" })
            .set(up);
        m.hosts
            .get_or_create(&StateLabels {
                state: "disconnected",
            })
            .set(hosts.len() as i64 - up);
        m.alarms
            .set(cx.store.alarms(true).map(|a| a.len()).unwrap_or(0) as i64);

        // Providers and certificates as last probed; a removed provider's series go.
        m.provider_up.clear();
        m.provider_latency.clear();
        m.certificate_days.clear();
        let now = tresor_ops::now();
        for p in cx.store.providers().unwrap_or_default() {
            let Some(st) = cx.providers.last_status(&p.name) else {
                continue;
            };
            for e in &st.endpoints {
                let labels = EndpointLabels {
                    provider: p.name.clone(),
                    endpoint: e.address.clone(),
                };
                m.provider_up.get_or_create(&labels).set(e.reachable as i64);
                if let Some(ms) = e.latency_ms {
                    m.provider_latency.get_or_create(&labels).set(ms / 1000.0);
                }
            }
            for c in &st.certificates {
                m.certificate_days
                    .get_or_create(&CertLabels {
                        owner: format!("provider:{}", p.name),
                        which: c.which.clone(),
                    })
                    .set((c.not_after - now) as f64 / 86_400.0);
            }
        }
        for (which, file) in [
            ("ca", PathBuf::from("ca.pem")),
            ("api", self.api_certificate.clone()),
            ("agent-endpoint", PathBuf::from("agent-endpoint.pem")),
        ] {
            let days = std::fs::read(self.data_dir.join(file))
                .ok()
                .and_then(|pem| tresor_ops::days_left(&pem, now));
            if let Some(days) = days {
                m.certificate_days
                    .get_or_create(&CertLabels {
                        owner: "server".into(),
                        which: which.into(),
                    })
                    .set(days);
            }
        }
    }
}

impl tresor_ops::Observed for Observed {
    fn metrics(&self) -> String {
        self.refresh();
        tresor_ops::encode(&METRICS.registry)
    }

    fn readiness(&self) -> Vec<Check> {
        let database = match self.cx.store.ping() {
            Ok(()) => Check::new("database", true, "open"),
            Err(e) => Check::new(
                "database",
                false,
                format!("The database does not answer: {e}; see the server log"),
            ),
        };
        let engine = match self.cx.engine.since_last_pass() {
            Some(t) if t <= self.engine_stall => Check::new(
                "engine",
                true,
                format!("last pass {} ms ago", t.as_millis()),
            ),
            Some(t) => Check::new(
                "engine",
                false,
                format!(
                    "The locked-VM engine's last pass was {} s ago; it is stuck or overloaded (see the server log)",
                    t.as_secs()
                ),
            ),
            None => Check::new("engine", false, "The locked-VM engine has not run yet"),
        };
        vec![database, engine]
    }
}
