//! What operators watch Tresor through, with real processes: `tresor dev --metrics-port` serves
//! Prometheus metrics from the server, the key server and the agent; the Prometheus project's
//! own parser reads them, and their values are checked against the state the test made (VMs by
//! crypto state, a locked VM by reason, key creations, fetches and pushes, KMIP operations, API
//! requests, hosts, provider endpoints, certificates). `/healthz` and `/readyz` answer on the
//! metrics ports and on the API; with `--log-format json` every log line is a JSON object, and
//! each API request has an access log line that names its route, status and user, never the
//! token; events reach a syslog collector as RFC 5424 messages.

mod common;
use common::{free_ports, wait_for, Dev};

use std::io::{Read, Write};

/// A GET over plain HTTP: status and body.
fn get(port: u16, path: &str) -> (u16, String) {
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    (head[9..12].parse().unwrap(), body.to_owned())
}

/// One sample as the parser read it.
#[derive(Debug, serde::Deserialize)]
struct Sample {
    name: String,
    labels: std::collections::BTreeMap<String, String>,
    value: f64,
}

/// The samples of a metrics endpoint, read by the Prometheus project's parser (which refuses
/// text that is not valid OpenMetrics).
fn scrape(port: u16) -> Vec<Sample> {
    let (status, body) = get(port, "/metrics");
    assert_eq!(status, 200, "{body}");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut parser = std::process::Command::new(root.join(".venv/prometheus/bin/python"))
        .arg(root.join("scripts/metrics/parse"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the Prometheus parser's venv (scripts/setup-test-deps makes it)");
    parser
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = parser.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the parser refused the metrics: {}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The value of the sample with this name and these labels (among others), if there is one.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

#[test]
fn metrics_health_and_logs_say_what_the_system_does() {
    let metrics = free_ports();
    // A syslog collector: a UDP socket of the test's.
    let collector = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    collector
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let syslog = format!("udp://{}", collector.local_addr().unwrap());
    let dev = Dev::start_with(
        1,
        &[
            "--metrics-port",
            &metrics.to_string(),
            "--log-format",
            "json",
            "--syslog",
            &syslog,
        ],
    );
    let (server, kms, agent) = (metrics, metrics + 1, metrics + 2);
    dev.ok(&["settings", "set", "unlock.policy", "manual"]);
    dev.create_vm("web01", true);
    dev.create_vm("web02", true);
    dev.ok(&[
        "vm", "create", "plain01", "--host", "host-1", "--disk", "16M",
    ]);
    dev.ok(&["vm", "power-on", "web02"]);
    // web01 locks: the host restarts and, under the manual policy, waits for an unlock.
    dev.ok(&["host", "reboot", "host-1"]);
    wait_for("web01 is locked with keyMissingOnHost", || {
        dev.vm("web01")["lockReason"] == "keyMissingOnHost"
    });
    // web02 is unlocked again by an operator.
    dev.ok(&["vm", "unlock", "web02"]);
    wait_for("web02 is unlocked", || {
        dev.vm("web02")["cryptoState"] == "unlocked"
    });
    dev.ok(&["vm", "list"]);

    // The server: VMs by state and lock reason, the host, keys made, fetched and pushed, the
    // API's requests, the provider's endpoint, certificates.
    wait_for("the server's gauges follow", || {
        let s = scrape(server);
        value(&s, "tresor_vms", &[("state", "locked")]) == Some(1.0)
            && value(&s, "tresor_vms", &[("state", "unlocked")]) == Some(1.0)
    });
    let s = scrape(server);
    assert_eq!(
        value(&s, "tresor_vms", &[("state", "unencrypted")]),
        Some(1.0)
    );
    assert_eq!(
        value(&s, "tresor_vms_locked", &[("reason", "keyMissingOnHost")]),
        Some(1.0)
    );
    assert_eq!(
        value(&s, "tresor_vms_locked", &[("reason", "kmsClusterError")]),
        Some(0.0)
    );
    assert_eq!(
        value(&s, "tresor_hosts", &[("state", "connected")]),
        Some(1.0)
    );
    // Two VM keys and the host's key.
    assert_eq!(
        value(
            &s,
            "tresor_keys_created_total",
            &[("provider", "tresor-kms"), ("answer", "ok")]
        ),
        Some(3.0)
    );
    let fetched = value(
        &s,
        "tresor_key_fetches_total",
        &[("provider", "tresor-kms"), ("answer", "active")],
    )
    .unwrap_or(0.0);
    assert!(fetched >= 1.0, "{s:?}");
    let pushed = value(&s, "tresor_key_pushes_total", &[("result", "ok")]).unwrap_or(0.0);
    assert!(pushed >= 3.0, "{pushed}");
    assert!(
        value(
            &s,
            "tresor_key_push_duration_seconds_count",
            &[("result", "ok")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    let listed = value(
        &s,
        "tresor_api_requests_total",
        &[
            ("method", "GET"),
            ("route", "/api/v1/vms"),
            ("status", "200"),
        ],
    )
    .unwrap_or(0.0);
    assert!(listed >= 1.0, "{s:?}");
    assert!(
        value(
            &s,
            "tresor_api_request_duration_seconds_count",
            &[("method", "POST"), ("route", "/api/v1/vms/{name}/{op}")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{s:?}"
    );
    assert_eq!(
        value(
            &s,
            "tresor_provider_endpoint_up",
            &[("provider", "tresor-kms")]
        ),
        Some(1.0)
    );
    let ca_days = value(
        &s,
        "tresor_certificate_expiry_days",
        &[("owner", "server"), ("which", "ca")],
    )
    .unwrap();
    assert!(ca_days > 300.0, "{ca_days}");
    assert!(value(
        &s,
        "tresor_certificate_expiry_days",
        &[("owner", "provider:tresor-kms"), ("which", "client")]
    )
    .is_some());

    // The key server: its KMIP operations by type and result, its objects.
    let k = scrape(kms);
    assert_eq!(
        value(
            &k,
            "tresor_kms_kmip_operations_total",
            &[("operation", "Create"), ("result", "success")]
        ),
        Some(3.0)
    );
    assert!(
        value(
            &k,
            "tresor_kms_kmip_operations_total",
            &[("operation", "Get"), ("result", "success")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    assert_eq!(value(&k, "tresor_kms_objects", &[]), Some(3.0));
    assert!(
        value(
            &k,
            "tresor_kms_certificate_expiry_days",
            &[("which", "server")]
        )
        .unwrap()
            > 300.0
    );

    // The agent: its session, VMs and keys as last reported, the server's requests.
    let a = scrape(agent);
    assert_eq!(value(&a, "tresor_agent_server_connected", &[]), Some(1.0));
    assert_eq!(
        value(&a, "tresor_agent_vms", &[("power_state", "poweredOff")]),
        Some(3.0)
    );
    assert_eq!(value(&a, "tresor_agent_vms_encrypted", &[]), Some(2.0));
    // The restart emptied the key memory; then the unlock sent web02's key.
    assert_eq!(value(&a, "tresor_agent_keys_cached", &[]), Some(1.0));
    assert!(
        value(
            &a,
            "tresor_agent_requests_total",
            &[("command", "createVm"), ("result", "ok")]
        ) == Some(3.0)
    );

    // The Grafana dashboard of docs/ reads only metrics that the three serve.
    let exposed: String = [server, kms, agent]
        .iter()
        .map(|p| get(*p, "/metrics").1)
        .collect();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("docs/grafana/tresor.json")).unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    for p in dashboard["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_owned());
        }
    }
    assert!(exprs.len() >= 20, "{exprs:?}");
    for expr in &exprs {
        let names = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("tresor_"));
        for name in names {
            let family = ["_total", "_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            assert!(
                exposed.contains(&format!("# TYPE {family} ")),
                "the dashboard reads {name}, which no part serves ({expr})"
            );
        }
    }

    // Health and readiness on every metrics port, and on the API.
    for port in [server, kms, agent] {
        assert_eq!(get(port, "/healthz").0, 200);
        let (status, body) = get(port, "/readyz");
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["ready"], true, "{body}");
    }
    let (status, v) = common::https(&dev.ca(), dev.port, "GET", "/readyz", "", "");
    assert_eq!(status, 200, "{v}");
    let checks: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(checks, ["database", "engine"]);
    assert_eq!(
        common::https(&dev.ca(), dev.port, "GET", "/healthz", "", "").0,
        200
    );

    // Every event reached the collector as an RFC 5424 message: web01's lock among them.
    let mut received = Vec::new();
    let mut buf = vec![0u8; 65536];
    while !received
        .iter()
        .any(|m: &String| m.contains(" vm.locked.keyMissingOnHost ") && m.contains("vm=\"web01\""))
    {
        let n = collector
            .recv(&mut buf)
            .expect("the locked event reaches the syslog collector");
        received.push(String::from_utf8(buf[..n].to_vec()).unwrap());
    }
    let locked = received
        .iter()
        .find(|m| m.contains(" vm.locked.keyMissingOnHost "))
        .unwrap();
    // local0 (16) * 8 + err (3); version 1; then time, host, app, pid, message id.
    let parts: Vec<&str> = locked.splitn(8, ' ').collect();
    assert_eq!(parts[0], "<131>1", "{locked}");
    assert!(
        parts[1].ends_with('Z') && parts[1].contains('T'),
        "{locked}"
    );
    assert_eq!(parts[3], "tresor");
    assert_eq!(parts[5], "vm.locked.keyMissingOnHost");
    assert!(parts[6].starts_with("[tresor@32473"), "{locked}");
    assert!(
        locked.ends_with(
            "\u{feff}The virtual machine is locked because keys are missing on the host."
        ),
        "{locked}"
    );

    // JSON logs, an access line per request with the user, and no token anywhere.
    let log = std::fs::read_to_string(dev.dir.path().join("logs/server.log")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let access = lines
        .iter()
        .find(|l| {
            l["target"] == "tresor::access"
                && l["fields"]["route"] == "/api/v1/vms/{name}/{op}"
                && l["fields"]["path"] == "/api/v1/vms/web02/power-on"
        })
        .unwrap_or_else(|| panic!("no access line for the power-on:\n{log}"));
    assert_eq!(access["fields"]["status"], 200);
    assert_eq!(access["fields"]["user"], "admin");
    assert_eq!(access["fields"]["method"], "POST");
    assert!(access["fields"]["duration_ms"].as_f64().is_some());
    assert!(
        !log.contains(&dev.token),
        "the server's log holds the API token"
    );
    for part in ["kms.log", "host-1.log"] {
        let log = std::fs::read_to_string(dev.dir.path().join("logs").join(part)).unwrap();
        assert!(
            log.lines()
                .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
            "{part}: {log}"
        );
    }
}
