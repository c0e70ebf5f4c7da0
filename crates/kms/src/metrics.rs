//! The key server's metrics and readiness, served by `tresor_ops` on `metrics_listen`: KMIP
//! operations by type and result with their durations, open client connections, objects, and
//! the days left on its certificates.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tresor_kmip::spec::{Operation, ResultReason};
use tresor_ops::{Check, Seconds};

use crate::engine::Engine;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
    /// `success`, or the KMIP result reason of a failure.
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationOnly {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WhichLabels {
    which: &'static str,
}

/// Every metric of the key server.
pub struct Metrics {
    registry: Registry,
    operations: Family<OperationLabels, Counter>,
    operation_seconds: Family<OperationOnly, Histogram, Seconds>,
    connections: Gauge,
    objects: Gauge,
    certificate_days: Family<WhichLabels, Gauge<f64, AtomicU64>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// The key server's metrics, one set per process.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tresor_kms");
        let m = Metrics {
            registry: Registry::default(),
            operations: Family::default(),
            operation_seconds: Family::new_with_constructor(Seconds),
            connections: Gauge::default(),
            objects: Gauge::default(),
            certificate_days: Family::default(),
        };
        registry.register(
            "kmip_operations",
            "KMIP operations answered, by operation and result (success, or the KMIP result reason)",
            m.operations.clone(),
        );
        registry.register(
            "kmip_operation_duration_seconds",
            "Time to carry out one KMIP operation (the batch item, without the network), by operation",
            m.operation_seconds.clone(),
        );
        registry.register(
            "connections",
            "Open connections of authenticated clients",
            m.connections.clone(),
        );
        registry.register(
            "objects",
            "Managed objects in the database",
            m.objects.clone(),
        );
        registry.register(
            "certificate_expiry_days",
            "Days until a certificate expires (negative once it has): server, client-ca",
            m.certificate_days.clone(),
        );
        Metrics { registry, ..m }
    }

    /// One batch item answered.
    pub fn operation(&self, operation: u32, failure: Option<ResultReason>, took: Duration) {
        let operation = Operation::from_u32(operation).map_or("unknown", Operation::spec_name);
        self.operations
            .get_or_create(&OperationLabels {
                operation,
                result: failure.map_or("success", ResultReason::spec_name),
            })
            .inc();
        self.operation_seconds
            .get_or_create(&OperationOnly { operation })
            .observe(took.as_secs_f64());
    }

    /// An authenticated connection, counted while the guard lives.
    pub fn connection(&self) -> ConnectionGuard {
        self.connections.inc();
        ConnectionGuard
    }
}

/// Counts one open connection until dropped.
#[derive(Debug)]
pub struct ConnectionGuard;

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        METRICS.connections.dec();
    }
}

/// The key server as its operators watch it.
#[derive(Clone, Debug)]
pub struct Observed {
    pub engine: Arc<Engine>,
    /// Its certificate and the CA of its clients (PEM files).
    pub server_certificate: PathBuf,
    pub client_ca: PathBuf,
}

impl tresor_ops::Observed for Observed {
    fn metrics(&self) -> String {
        let m = &*METRICS;
        if let Ok(n) = self.engine.store().read(crate::store::count_objects) {
            m.objects.set(n as i64);
        }
        let now = tresor_ops::now();
        for (which, file) in [
            ("server", &self.server_certificate),
            ("client-ca", &self.client_ca),
        ] {
            if let Some(days) = std::fs::read(file)
                .ok()
                .and_then(|pem| tresor_ops::days_left(&pem, now))
            {
                m.certificate_days
                    .get_or_create(&WhichLabels { which })
                    .set(days);
            }
        }
        tresor_ops::encode(&m.registry)
    }

    fn readiness(&self) -> Vec<Check> {
        vec![
            match self.engine.store().read(crate::store::count_objects) {
                Ok(n) => Check::new("database", true, format!("open, {n} objects")),
                Err(e) => Check::new(
                    "database",
                    false,
                    format!("The database does not answer: {e}; see the key server's log"),
                ),
            },
        ]
    }
}
