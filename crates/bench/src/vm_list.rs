//! The VM list over HTTPS and over plain HTTP, side by side in one run: a real `tresor server`
//! process on a database holding N VMs, started once with HTTPS (the default) and once with plain
//! HTTP on loopback (`api_plain_http`), and `GET /api/v1/vms` (every VM in one answer) timed with
//! the API client as `tresor vm list` uses it: a new connection per request. Requests alternate
//! between the two servers. Prints one JSON line.
//!
//! With `--baseline OTHER`, the two servers are this `tresor` and another build of it (both over
//! HTTPS), this one with its metrics served and scraped every second while the requests run: the
//! cost of the metrics as a client sees it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use tresor_server::store::{Store, VmRecord};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    tresor: PathBuf,
    #[arg(long, default_value_t = 40_000)]
    vms: usize,
    #[arg(long, default_value_t = 30)]
    requests: usize,
    #[arg(long)]
    dir: PathBuf,
    /// Compare with this build instead of plain HTTP (both over HTTPS; `tresor` with its
    /// metrics scraped every second).
    #[arg(long)]
    baseline: Option<PathBuf>,
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A VM as the storm's are: encrypted, one disk with the VM's key, a report like an agent's.
fn record(i: usize) -> VmRecord {
    let id = format!("{i:032x}");
    let key = format!("{:08x}-7c1d-4f55-9a0e-{:012x}", i, i * 7919);
    let path = format!("/var/lib/tresor/datastore/vm-{i:05}");
    let report = serde_json::json!({
        "id": id, "name": format!("vm-{i:05}"), "path": path, "encrypted": true,
        "powerState": "poweredOff",
        "keyId": {"provider": "tresor-kms", "keyId": key},
        "keys": [{"key": {"provider": "tresor-kms", "keyId": key}, "uses": ["home"], "onHost": true}],
        "disks": [format!("{path}/disk0.qcow2")],
    });
    VmRecord {
        id,
        name: format!("vm-{i:05}"),
        host: format!("host-{}", i / 16),
        path,
        encrypted: true,
        key_provider: Some("tresor-kms".into()),
        key_id: Some(key),
        power_state: tresor_api::views::PowerState::PoweredOff,
        crypto_state: tresor_api::views::CryptoState::Unlocked,
        connection_state: tresor_api::views::ConnectionState::Connected,
        lock_reason: None,
        report: report.to_string(),
    }
}

fn init(
    tresor: &Path,
    dir: &Path,
    api: u16,
    vms: &[VmRecord],
    plain: bool,
    metrics: Option<u16>,
) -> String {
    let out = Command::new(tresor)
        .args(["server", "init", "--data"])
        .arg(dir)
        .args(["--api-listen", &format!("127.0.0.1:{api}")])
        .args(["--agent-listen", &format!("127.0.0.1:{}", free_port())])
        .output()
        .expect("tresor server init");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .expect("token")
        .trim()
        .to_owned();
    let store = Store::open(&dir.join("server.sqlite")).expect("database");
    store.put_vms(vms).expect("VMs");
    drop(store);
    let toml = dir.join("server.toml");
    let mut text = std::fs::read_to_string(&toml).expect("server.toml");
    if plain {
        text = format!("api_plain_http = true\n{text}");
    }
    if let Some(port) = metrics {
        text = format!("metrics_listen = \"127.0.0.1:{port}\"\n{text}");
    }
    std::fs::write(&toml, text).expect("server.toml");
    token
}

fn start(tresor: &Path, dir: &Path, api: u16) -> Server {
    let s = Server(
        Command::new(tresor)
            .args(["server", "--config"])
            .arg(dir.join("server.toml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tresor server"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", api)).is_err() {
        assert!(Instant::now() < deadline, "the server did not listen");
        std::thread::sleep(Duration::from_millis(100));
    }
    s
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir).expect("dir");
    let vms: Vec<VmRecord> = (0..args.vms).map(record).collect();
    let (https_port, http_port) = (free_port(), free_port());
    let https_dir = args.dir.join("https");
    let http_dir = args.dir.join("http");
    let metrics = args.baseline.as_ref().map(|_| free_port());
    let https_token = init(&args.tresor, &https_dir, https_port, &vms, false, metrics);
    let other = args.baseline.clone().unwrap_or_else(|| args.tresor.clone());
    let plain_b = args.baseline.is_none();
    let http_token = init(&other, &http_dir, http_port, &vms, plain_b, None);
    let _a = start(&args.tresor, &https_dir, https_port);
    let _b = start(&other, &http_dir, http_port);
    // Prometheus at its most eager: a scrape every second for as long as the requests run.
    let scraper = metrics.map(tresor_bench::Scraper::start);
    let ca = tresor_tls::load_certs(&https_dir.join("ca.pem")).expect("CA");
    let ca_b = tresor_tls::load_certs(&http_dir.join("ca.pem")).expect("CA");
    let client = |plain: bool| {
        if plain && !plain_b {
            tresor_api::Client::new(
                &format!("https://127.0.0.1:{http_port}"),
                tresor_api::Trust::Ca(ca_b.clone()),
            )
            .expect("client")
            .with_token(&http_token)
        } else if plain {
            tresor_api::Client::new(
                &format!("http://127.0.0.1:{http_port}"),
                tresor_api::Trust::Insecure,
            )
            .expect("client")
            .with_token(&http_token)
        } else {
            tresor_api::Client::new(
                &format!("https://127.0.0.1:{https_port}"),
                tresor_api::Trust::Ca(ca.clone()),
            )
            .expect("client")
            .with_token(&https_token)
        }
    };
    let mut times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let mut bytes = [0usize; 2];
    // One of each first, not counted (the servers render the list on first use).
    for round in 0..=args.requests {
        for (k, plain) in [(0, false), (1, true)] {
            let started = Instant::now();
            let (status, body) = client(plain)
                .send_text("GET", "/api/v1/vms", None)
                .await
                .expect("the VM list");
            let took = started.elapsed();
            assert_eq!(status, 200, "{body}");
            assert_eq!(body.matches("\"cryptoState\":").count(), args.vms);
            if round > 0 {
                times[k].push(took);
                bytes[k] = body.len();
            }
        }
    }
    let scrapes = scraper.map_or(0, tresor_bench::Scraper::stop);
    for t in times.iter_mut() {
        t.sort();
    }
    if args.baseline.is_some() {
        println!(
            "{}",
            serde_json::json!({
                "vms": args.vms,
                "requests": args.requests,
                "bytes": bytes[0],
                "metricsScrapes": scrapes,
                "withMetricsP50Ms": percentile(&times[0], 0.5),
                "withMetricsP99Ms": percentile(&times[0], 0.99),
                "baselineP50Ms": percentile(&times[1], 0.5),
                "baselineP99Ms": percentile(&times[1], 0.99),
            })
        );
        return;
    }
    println!(
        "{}",
        serde_json::json!({
            "vms": args.vms,
            "requests": args.requests,
            "bytes": bytes[0],
            "httpsP50Ms": percentile(&times[0], 0.5),
            "httpsP99Ms": percentile(&times[0], 0.99),
            "httpP50Ms": percentile(&times[1], 0.5),
            "httpP99Ms": percentile(&times[1], 0.99),
        })
    );
}
