//! KMIP load generator: the same client against any KMIP server, one JSON line per measurement.
//!
//! kmip-bench --endpoint HOST:PORT --ca CA --cert CERT --key KEY --label NAME [--seconds S]
//!
//! Rows: warm Get/s and Create/s on 1, 4 and 16 connections (each connection used by one
//! worker, back to back), and a new TLS connection plus one Get per request (as vCenter does),
//! with 4 workers. `--fill N` instead creates N keys with 16 connections and reports the rate.
//!
//! The workers run on one thread with a single-threaded runtime (`KMIP_BENCH_THREADS=N` spreads
//! them over N), and poll up to 200 µs for each answer before sleeping, as a client sending
//! requests back to back would.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tresor_kmip::message::ProtocolVersion;
use tresor_kmip_client::{ClientConfig, KmipClient};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    endpoint: String,
    #[arg(long)]
    ca: PathBuf,
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
    #[arg(long)]
    label: String,
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Create this many keys and report the rate, instead of the rows.
    #[arg(long)]
    fill: Option<u64>,
    /// Sleep until each answer comes instead of polling for it (as vCenter's and PyKMIP's own
    /// clients do); the rows are reported with `"client": "sleeping"`.
    #[arg(long)]
    no_poll: bool,
}

fn client(
    args: &Args,
    tls: &Arc<tresor_tls::rustls::ClientConfig>,
    version: ProtocolVersion,
) -> KmipClient {
    let mut config = ClientConfig::new(vec![args.endpoint.clone()], tls.clone());
    config.version = Some(version);
    config.max_idle = 1;
    // Requests go back to back: take each answer as it comes rather than sleeping for it
    // (unless the run is of a client that sleeps).
    config.poll_for_answer = if args.no_poll {
        Duration::ZERO
    } else {
        Duration::from_micros(200)
    };
    // The key server's throughput on warm connections (Tresor's server closes a connection
    // after an answer with a key: the "new TLS connection + Get" row).
    config.keep_after_key_material = true;
    KmipClient::new(config)
}

fn report(args: &Args, row: &str, ops: u64, errors: u64, elapsed: Duration) {
    let label = &args.label;
    let client = if args.no_poll { "sleeping" } else { "polling" };
    use std::io::Write;
    let rate = ops as f64 / elapsed.as_secs_f64();
    // A closed pipe (the reader stopped) ends the run quietly.
    let _ = writeln!(
        std::io::stdout(),
        "{}",
        serde_json::json!({"server": label, "client": client, "row": row, "ops": ops, "errors": errors, "seconds": elapsed.as_secs_f64(), "per_second": rate})
    );
}

/// Runs `workers` clients side by side on client threads, each with a single-threaded runtime
/// (`KMIP_BENCH_THREADS`, default 1), and adds up what they did.
async fn run_workers<F, Fut>(workers: usize, make: F) -> (u64, u64, Duration)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = (u64, u64)> + Send + 'static,
{
    let threads: usize = std::env::var("KMIP_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut groups: Vec<Vec<Fut>> = (0..threads.clamp(1, workers)).map(|_| Vec::new()).collect();
    for i in 0..workers {
        let n = groups.len();
        groups[i % n].push(make(i));
    }
    let start = Instant::now();
    let threads: Vec<_> = groups
        .into_iter()
        .map(|group| {
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for benchmark clients");
                rt.block_on(async move {
                    let handles: Vec<_> = group.into_iter().map(tokio::spawn).collect();
                    let (mut ok, mut err) = (0, 0);
                    for h in handles {
                        if let Ok((o, e)) = h.await {
                            ok += o;
                            err += e;
                        }
                    }
                    (ok, err)
                })
            })
        })
        .collect();
    let done = tokio::task::spawn_blocking(move || {
        threads
            .into_iter()
            .filter_map(|t| t.join().ok())
            .fold((0, 0), |(o, e), (ok, err)| (o + ok, e + err))
    })
    .await
    .unwrap_or((0, 0));
    (done.0, done.1, start.elapsed())
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let tls = tresor_tls::client_config(
        &tresor_tls::load_certs(&args.ca).expect("ca"),
        tresor_tls::load_certs(&args.cert).expect("cert"),
        tresor_tls::load_key(&args.key).expect("key"),
    )
    .expect("tls");
    let probe = KmipClient::new(ClientConfig::new(vec![args.endpoint.clone()], tls.clone()));
    let version = probe
        .version()
        .await
        .expect("the server answers Discover Versions");
    let duration = Duration::from_secs_f64(args.seconds);

    if let Some(n) = args.fill {
        let next = Arc::new(AtomicU64::new(0));
        let args = Arc::new(args);
        let (ok, err, elapsed) = run_workers(16, |_| {
            let c = client(&args, &tls, version);
            let next = next.clone();
            async move {
                let (mut ok, mut err) = (0, 0);
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    match c.create_aes_key(256, vec![]).await {
                        Ok(_) => ok += 1,
                        Err(_) => err += 1,
                    }
                }
                (ok, err)
            }
        })
        .await;
        report(&args, "fill", ok, err, elapsed);
        return;
    }

    let key = probe
        .create_active_aes_key(256, vec![])
        .await
        .expect("create a key to read");
    let args = Arc::new(args);
    for workers in [1usize, 4, 16] {
        let key = key.clone();
        let (ok, err, elapsed) = run_workers(workers, |_| {
            let c = client(&args, &tls, version);
            let key = key.clone();
            async move {
                let (mut ok, mut err) = (0, 0);
                let start = Instant::now();
                while start.elapsed() < duration {
                    match c.get_key(&key).await {
                        Ok(_) => ok += 1,
                        Err(_) => err += 1,
                    }
                }
                (ok, err)
            }
        })
        .await;
        report(
            &args,
            &format!("warm Get, {workers} connections"),
            ok,
            err,
            elapsed,
        );
    }
    for workers in [1usize, 4, 16] {
        let (ok, err, elapsed) = run_workers(workers, |_| {
            let c = client(&args, &tls, version);
            async move {
                let (mut ok, mut err) = (0, 0);
                let start = Instant::now();
                while start.elapsed() < duration {
                    match c.create_aes_key(256, vec![]).await {
                        Ok(_) => ok += 1,
                        Err(_) => err += 1,
                    }
                }
                (ok, err)
            }
        })
        .await;
        report(
            &args,
            &format!("Create, {workers} connections"),
            ok,
            err,
            elapsed,
        );
    }
    let (ok, err, elapsed) = run_workers(4, |_| {
        let args = args.clone();
        let tls = tls.clone();
        let key = key.clone();
        async move {
            let (mut ok, mut err) = (0, 0);
            let start = Instant::now();
            while start.elapsed() < duration {
                let c = client(&args, &tls, version);
                match c.get_key(&key).await {
                    Ok(_) => ok += 1,
                    Err(_) => err += 1,
                }
            }
            (ok, err)
        }
    })
    .await;
    report(
        &args,
        "new TLS connection + Get, 4 workers",
        ok,
        err,
        elapsed,
    );
}
