//! The unlock storm: many hosts behind the real agent protocol against a real `tresor server`
//! process and a real `tresor kms` process. The provider goes away (a TCP proxy here refuses
//! it), every host restarts, every VM locks; the provider returns; how long until every VM is
//! unlocked, how much memory the server used, and how fast `GET /api/v1/vms` answered meanwhile.
//!
//! The hosts are SIMULATED: each speaks the agent protocol over mutual TLS exactly as
//! `tresor agent` does, but holds its VMs as data (no QEMU, no disks). This backend exists only
//! for scale runs like this one.
//!
//! unlock-storm --tresor BIN --hosts N --vms-per-host M

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tresor_core::host::HostCryptoState;
use tresor_core::ids::KeyRef;
use tresor_core::protocol::{
    self, AgentMessage, Command, FrameDecoder, HostKey, PowerState, Reply, ServerMessage, VmReport,
};
use tresor_core::vm::KeyUse;
use tresor_kmip_client::{ClientConfig, KmipClient};
use tresor_tls::{CertKind, CertificateAuthority};

#[derive(Debug, Parser)]
struct Args {
    /// The `tresor` binary.
    #[arg(long)]
    tresor: PathBuf,
    #[arg(long, default_value_t = 2500)]
    hosts: usize,
    #[arg(long, default_value_t = 16)]
    vms_per_host: usize,
    /// Where to keep the server's and key server's data (a fresh folder).
    #[arg(long)]
    dir: PathBuf,
    /// Serve the API over plain HTTP on loopback (`api_plain_http`) instead of HTTPS, to see
    /// what TLS costs in the storm.
    #[arg(long)]
    plain_http: bool,
    /// Serve the server's metrics and scrape them every second during the storm (the cost of
    /// the metrics at its most).
    #[arg(long)]
    scrape_metrics: bool,
    /// The server's database on PostgreSQL (`postgres://USER@HOST:PORT/DB`) instead of SQLite.
    #[arg(long)]
    database: Option<String>,
    /// The file that holds the PostgreSQL user's password.
    #[arg(long)]
    database_password_file: Option<PathBuf>,
    /// With --database: run a second server on the same database, standing by, and kill the
    /// leading one with SIGKILL this many milliseconds after the provider returns.
    #[arg(long)]
    kill_leader_after_ms: Option<u64>,
    /// The servers' lease_secs (with --kill-leader-after-ms).
    #[arg(long, default_value_t = 5)]
    lease_secs: u64,
}

/// The standby server's API port, when there is one: API clients are given both servers.
static STANDBY_API: std::sync::OnceLock<u16> = std::sync::OnceLock::new();

/// Whether the API is served over plain HTTP in this run (`--plain-http`).
static PLAIN_HTTP: AtomicBool = AtomicBool::new(false);

/// Set when the measurement is over: the sessions that end with the server are no news.
static QUIET: AtomicBool = AtomicBool::new(false);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A process this benchmark started; stopped when dropped.
struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        // Only a process still running: the id of one already reaped (the leader the benchmark
        // killed) may belong to another process by now.
        if !matches!(self.0.try_wait(), Ok(None)) {
            return;
        }
        let _ = std::process::Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        std::thread::sleep(Duration::from_millis(500));
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(bin: &Path, args: &[&str], log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("log file");
    Child(
        std::process::Command::new(bin)
            .args(args)
            // Quiet unless asked otherwise (`TRESOR_LOG=tresor_server::engine=debug` shows the
            // engine's passes).
            .env(
                "TRESOR_LOG",
                std::env::var("TRESOR_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tresor"),
    )
}

fn run(bin: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(bin)
        .args(args)
        .output()
        .expect("run tresor");
    assert!(
        out.status.success(),
        "tresor {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn wait_port(port: u16) {
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("port {port} did not open");
}

/// The TCP proxy between server and key server: `open` false refuses, as a cut network does.
async fn proxy(port: u16, target: u16, open: Arc<AtomicBool>) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("proxy port");
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        if !open.load(Ordering::SeqCst) {
            continue;
        }
        let open = open.clone();
        tokio::spawn(async move {
            let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
            else {
                return;
            };
            let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
            tokio::pin!(copy);
            loop {
                tokio::select! {
                    _ = &mut copy => return,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {
                        if !open.load(Ordering::SeqCst) {
                            return;
                        }
                    }
                }
            }
        });
    }
}

/// One simulated host: its VMs (as data) and the keys it holds.
struct SimHost {
    name: String,
    /// The loopback address it connects from.
    source: std::net::SocketAddr,
    vms: Vec<(String, KeyRef)>,
    held: Mutex<HashSet<KeyRef>>,
    boot: AtomicU64,
}

impl SimHost {
    fn inventory(&self) -> (Vec<VmReport>, Vec<KeyRef>) {
        let held = self.held.lock().expect("held");
        let vms = self
            .vms
            .iter()
            .map(|(name, key)| VmReport {
                disk_formats: Vec::new(),
                data_paths: Vec::new(),
                id: format!("id-{name}"),
                name: name.clone(),
                path: format!("/datastore/{name}"),
                encrypted: true,
                power_state: PowerState::PoweredOff,
                key_id: Some(key.clone()),
                keys: vec![HostKey {
                    key: key.clone(),
                    uses: vec![KeyUse::Home, KeyUse::Disk("disk0.qcow2".into())],
                    on_host: held.contains(key),
                }],
                disks: vec![format!("/datastore/{name}/disk0.qcow2")],
                operation: None,
            })
            .collect();
        (vms, held.iter().cloned().collect())
    }
}

async fn send(
    w: &mut tokio::io::WriteHalf<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    m: &AgentMessage,
) -> std::io::Result<()> {
    let frame = protocol::encode(m).map_err(std::io::Error::other)?;
    w.write_all(&frame).await?;
    w.flush().await
}

/// Runs a simulated host's session until `restart` changes its boot id, then dials again.
async fn host_session(
    host: Arc<SimHost>,
    servers: Vec<String>,
    tls: Arc<tresor_tls::rustls::ClientConfig>,
) {
    let mut at = 0;
    loop {
        // With several servers, only the leader listens for agents: the next is tried after
        // a failure.
        let server = servers[at % servers.len()].clone();
        let boot = host.boot.load(Ordering::SeqCst);
        let result: std::io::Result<()> = async {
            // Each host from an address of its own, as real hosts are (the server bounds the
            // connections one address may have in their handshake).
            let server_addr: std::net::SocketAddr =
                server.parse().map_err(std::io::Error::other)?;
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(host.source)?;
            let tcp = socket.connect(server_addr).await?;
            let _ = tcp.set_nodelay(true);
            let name =
                tresor_tls::ServerName::try_from("localhost").map_err(std::io::Error::other)?;
            let stream = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name, tcp)
                .await?;
            let (mut r, mut w) = tokio::io::split(stream);
            let (vms, held) = host.inventory();
            send(
                &mut w,
                &AgentMessage::Hello {
                    host: host.name.clone(),
                    protocol: protocol::VERSION,
                    agent_version: "simulated".into(),
                    boot_id: format!("boot-{boot}"),
                    crypto_state: HostCryptoState::Safe,
                    keys_held: held.clone(),
                },
            )
            .await?;
            send(
                &mut w,
                &AgentMessage::Inventory {
                    vms,
                    keys_held: held,
                    working: None,
                },
            )
            .await?;
            let mut decoder = FrameDecoder::default();
            let mut buf = vec![0u8; 64 * 1024];
            let mut seq = 0;
            loop {
                if host.boot.load(Ordering::SeqCst) != boot {
                    return Ok(()); // restarted: dial again with the new boot id
                }
                let n = match tokio::time::timeout(Duration::from_secs(5), r.read(&mut buf)).await {
                    Ok(n) => n?,
                    Err(_) => {
                        seq += 1;
                        send(&mut w, &AgentMessage::Heartbeat { seq }).await?;
                        continue;
                    }
                };
                if n == 0 {
                    return Err(std::io::Error::other("server closed"));
                }
                decoder.push(&buf[..n]);
                while let Some(m) = decoder
                    .next_message::<ServerMessage>()
                    .map_err(std::io::Error::other)?
                {
                    if let ServerMessage::Request { id, body, .. } = m {
                        let reply = match body {
                            Command::PushKeys { keys } => {
                                let mut held = host.held.lock().expect("held");
                                held.extend(keys.into_iter().map(|k| k.key));
                                Reply::Done
                            }
                            Command::EnableEncryption { .. } => Reply::Done,
                            _ => Reply::Failed {
                                code: "simulated".into(),
                                message: "not simulated".into(),
                            },
                        };
                        send(
                            &mut w,
                            &AgentMessage::Reply {
                                id,
                                reply,
                                task: None,
                            },
                        )
                        .await?;
                        let (vms, held) = host.inventory();
                        send(
                            &mut w,
                            &AgentMessage::Inventory {
                                vms,
                                keys_held: held,
                                working: None,
                            },
                        )
                        .await?;
                    }
                }
            }
        }
        .await;
        if let Err(e) = result {
            if host.boot.load(Ordering::SeqCst) == boot
                && !QUIET.load(Ordering::SeqCst)
                && servers.len() == 1
            {
                eprintln!("{}: session ended: {e}", host.name);
            }
            at += 1;
            tokio::time::sleep(Duration::from_millis(if servers.len() > 1 {
                250
            } else {
                500
            }))
            .await;
        }
    }
}

/// `GET /api/v1/vms`: the time it took and the count of VMs in each crypto state.
async fn list_vms(api: u16, token: &str) -> (Duration, usize, usize, usize) {
    list_vms_at(api, token, "/api/v1/vms").await
}

/// A `GET` of the VM list at `path` (with its query): the time until the whole answer was read,
/// and the count of VMs in each crypto state. Made from a runtime of its own, as an operator's
/// client would be its own process: the simulated hosts keep this process's workers busy.
async fn list_vms_at(api: u16, token: &str, path: &str) -> (Duration, usize, usize, usize) {
    static CLIENT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    let client = CLIENT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("the API client's runtime")
    });
    let (token, path) = (token.to_owned(), path.to_owned());
    client
        .spawn(async move { get_vms(api, &token, &path).await })
        .await
        .expect("the API client")
}

/// The server's CA, which issued the API's certificate (set once the server is set up).
static API_CA: std::sync::OnceLock<Vec<tresor_tls::CertificateDer<'static>>> =
    std::sync::OnceLock::new();

/// A client of the API as an operator's `tresor vm list` is one: a new HTTPS connection.
fn api_client(api: u16, token: &str) -> tresor_api::Client {
    let ca = API_CA.get().expect("the server's CA").clone();
    let scheme = if PLAIN_HTTP.load(Ordering::Relaxed) {
        "http"
    } else {
        "https"
    };
    let mut servers = format!("{scheme}://127.0.0.1:{api}");
    if let Some(standby) = STANDBY_API.get() {
        servers.push_str(&format!(",{scheme}://127.0.0.1:{standby}"));
    }
    tresor_api::Client::new(&servers, tresor_api::Trust::Ca(ca))
        .expect("the API client")
        .with_token(token)
}

async fn get_vms(api: u16, token: &str, path: &str) -> (Duration, usize, usize, usize) {
    let started = Instant::now();
    let (status, body) = api_client(api, token)
        .send_text("GET", path, None)
        .await
        .expect("the VM list");
    let took = started.elapsed();
    assert_eq!(status, 200, "the VM list: {body}");
    if std::env::var_os("STORM_TTFB").is_some() && body.len() > 1 << 20 {
        eprintln!("list: whole {:?}, {} bytes", took, body.len());
        raw_timing(api, token, path).await;
    }
    // Counted, not parsed: the benchmark shares the cores with the server, and parsing 20 MB of
    // JSON twice a second would take their time from it. The server renders each VM with
    // serde, so the state appears exactly once per VM, in this form.
    let count = |state: &str| body.matches(&format!("\"cryptoState\":\"{state}")).count();
    let (n, locked, unlocked) = (
        body.matches("\"cryptoState\":").count(),
        count("locked"),
        count("unlocked"),
    );
    (took, n, locked, unlocked)
}

/// With `STORM_TTFB`: the same request by hand over TLS, timed in its phases (connection and
/// handshake, first byte of the answer, last byte), to see where a slow list spends its time.
async fn raw_timing(api: u16, token: &str, path: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = API_CA.get().expect("the server's CA").clone();
    let config =
        tresor_tls::https_client_config(&tresor_tls::ServerTrust::Roots(ca), Default::default())
            .expect("TLS");
    let started = Instant::now();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", api))
        .await
        .expect("connect");
    let name = tresor_tls::rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name.to_owned(), tcp)
        .await
        .expect("handshake");
    let handshake = started.elapsed();
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 1 << 16];
    let mut first = None;
    let mut total = 0usize;
    loop {
        let n = tls.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        first.get_or_insert_with(|| started.elapsed());
        total += n;
    }
    eprintln!(
        "raw: handshake {handshake:?}, first byte {:?}, last byte {:?}, {total} bytes",
        first.unwrap_or_default(),
        started.elapsed()
    );
}

fn rss_peak_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let bin = args.tresor.clone();
    let dir = args.dir.clone();
    std::fs::create_dir_all(&dir).expect("dir");
    let total = args.hosts * args.vms_per_host;

    // The key server, and the proxy in front of it.
    let (kms_port, proxy_port, api, agents) = (free_port(), free_port(), free_port(), free_port());
    let kms_dir = dir.join("kms");
    run(
        &bin,
        &[
            "kms",
            "init",
            "--dir",
            &kms_dir.display().to_string(),
            "--listen",
            &format!("127.0.0.1:{kms_port}"),
        ],
    );
    let _kms = spawn(
        &bin,
        &[
            "kms",
            "serve",
            "--config",
            &kms_dir.join("kms.toml").display().to_string(),
        ],
        &dir.join("kms.log"),
    );
    wait_port(kms_port).await;
    let open = Arc::new(AtomicBool::new(true));
    tokio::spawn(proxy(proxy_port, kms_port, open.clone()));

    // The keys, made as the server would (its identity owns them).
    let ca = tresor_tls::parse_certs(
        std::fs::read(kms_dir.join("tls/ca.pem"))
            .expect("ca")
            .as_slice(),
        "ca",
    )
    .expect("ca");
    let cert = tresor_tls::load_certs(&kms_dir.join("clients/tresor-server.pem")).expect("cert");
    let key = tresor_tls::load_key(&kms_dir.join("clients/tresor-server.key")).expect("key");
    let kms_tls = tresor_tls::client_config(&ca, cert, key).expect("tls");
    let started = Instant::now();
    let client = Arc::new(KmipClient::new(ClientConfig::new(
        vec![format!("127.0.0.1:{kms_port}")],
        kms_tls,
    )));
    let next = Arc::new(AtomicU64::new(0));
    let ids = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let mut workers = Vec::new();
    for _ in 0..16 {
        let (client, next, ids) = (client.clone(), next.clone(), ids.clone());
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::SeqCst) < total as u64 {
                let id = client
                    .create_active_aes_key(256, vec![])
                    .await
                    .expect("create");
                ids.lock().expect("ids").push(id);
            }
        }));
    }
    for w in workers {
        w.await.expect("worker");
    }
    let ids = std::mem::take(&mut *ids.lock().expect("ids"));
    eprintln!(
        "{} keys created in {:.1} s",
        ids.len(),
        started.elapsed().as_secs_f64()
    );

    // The server, trusting the key server through the proxy under the provider name tresor-kms.
    let server_dir = dir.join("server");
    let (data, api_listen, agent_listen) = (
        server_dir.display().to_string(),
        format!("127.0.0.1:{api}"),
        format!("127.0.0.1:{agents}"),
    );
    let mut init_args = vec![
        "server",
        "init",
        "--data",
        &data,
        "--api-listen",
        &api_listen,
        "--agent-listen",
        &agent_listen,
    ];
    let password_file = args
        .database_password_file
        .as_ref()
        .map(|p| p.display().to_string());
    if let Some(url) = &args.database {
        init_args.extend(["--database", url]);
        if let Some(f) = &password_file {
            init_args.extend(["--database-password-file", f]);
        }
    }
    let init = run(&bin, &init_args);
    let token = init.lines().last().expect("token").trim().to_owned();
    let _ =
        API_CA.set(tresor_tls::load_certs(&server_dir.join("ca.pem")).expect("the server's CA"));
    // The simulated hosts' certificates, from the server's CA, as enrolment would give them.
    let server_ca = CertificateAuthority::from_pem(
        &std::fs::read_to_string(server_dir.join("ca.pem")).expect("ca"),
        &std::fs::read_to_string(server_dir.join("ca.key")).expect("ca key"),
    )
    .expect("server ca");
    let issued: Vec<_> = (0..args.hosts)
        .map(|h| {
            server_ca
                .issue(CertKind::Client, &format!("host-{h}"), &[], 2)
                .expect("cert")
        })
        .collect();
    // The hosts were enrolled and the VMs registered by operators before the storm: the server
    // knows each host's certificate, and the registry holds each VM, on its host, with its key
    // (the server takes only enrolled certificates and pushes keys only for registered VMs).
    {
        let location = tresor_server::run::database_location(
            &server_dir,
            args.database.as_deref(),
            args.database_password_file.as_deref(),
        )
        .expect("the database's location");
        let store = tresor_server::store::Store::open_at(&location).expect("server database");
        for (h, cert) in issued.iter().enumerate() {
            let name = format!("host-{h}");
            store
                .put_host(&tresor_server::store::HostRecord {
                    name: name.clone(),
                    boot_id: String::new(),
                    crypto_state: tresor_core::host::HostCryptoState::Safe,
                    connected: false,
                    last_seen: 0,
                    host_key_provider: None,
                    host_key_id: None,
                })
                .expect("host");
            let der = tresor_tls::parse_certs(cert.cert_pem.as_bytes(), "c").expect("c");
            let sha256 = tresor_tls::certificate_info(&der[0]).expect("info").sha256;
            store
                .set_host_cert(&name, &sha256)
                .expect("host certificate");
        }
        let regs: Vec<tresor_core::registry::Registration> = (0..total)
            .map(|i| tresor_core::registry::Registration {
                id: format!("id-vm-{i}"),
                name: format!("vm-{i}"),
                host: format!("host-{}", i / args.vms_per_host),
                keys: [KeyRef::new("tresor-kms", &ids[i])].into(),
            })
            .collect();
        store.put_registrations(&regs).expect("registry");
    }
    if args.plain_http {
        PLAIN_HTTP.store(true, Ordering::Relaxed);
        let toml = server_dir.join("server.toml");
        let text = std::fs::read_to_string(&toml).expect("server.toml");
        std::fs::write(&toml, format!("{text}\napi_plain_http = true\n")).expect("server.toml");
    }
    let metrics_port = args.scrape_metrics.then(free_port);
    if let Some(port) = metrics_port {
        let toml = server_dir.join("server.toml");
        let text = std::fs::read_to_string(&toml).expect("server.toml");
        std::fs::write(
            &toml,
            format!("metrics_listen = \"127.0.0.1:{port}\"\n{text}"),
        )
        .expect("server.toml");
    }
    // With a standby: both servers lease for `lease_secs`; the second has the first's folder
    // (its CA and certificates) with ports of its own.
    let standby_ports = args
        .kill_leader_after_ms
        .map(|_| (free_port(), free_port()));
    if let Some((standby_api, standby_agents)) = standby_ports {
        let standby_dir = dir.join("server-b");
        std::fs::create_dir_all(&standby_dir).expect("standby folder");
        for f in tresor_server::run::STANDBY_FILES {
            std::fs::copy(server_dir.join(f), standby_dir.join(f)).expect("standby file");
        }
        for (d, a, g) in [
            (&server_dir, api, agents),
            (&standby_dir, standby_api, standby_agents),
        ] {
            let toml = d.join("server.toml");
            let text: String = std::fs::read_to_string(&toml)
                .expect("server.toml")
                .lines()
                .filter(|l| !l.starts_with("api_listen") && !l.starts_with("agent_listen"))
                .map(|l| format!("{l}\n"))
                .collect();
            std::fs::write(
                &toml,
                format!(
                    "api_listen = \"127.0.0.1:{a}\"\nagent_listen = \"127.0.0.1:{g}\"\napi_url = \"https://127.0.0.1:{a}\"\nlease_secs = {}\n{text}",
                    args.lease_secs
                ),
            )
            .expect("server.toml");
        }
    }
    let server = spawn(
        &bin,
        &[
            "server",
            "--config",
            &server_dir.join("server.toml").display().to_string(),
        ],
        &dir.join("server.log"),
    );
    let server_pid = server.0.id();
    wait_port(api).await;
    let standby = standby_ports.map(|(standby_api, _)| {
        let _ = STANDBY_API.set(standby_api);
        spawn(
            &bin,
            &[
                "server",
                "--config",
                &dir.join("server-b/server.toml").display().to_string(),
            ],
            &dir.join("server-b.log"),
        )
    });
    if let Some((standby_api, _)) = standby_ports {
        wait_port(standby_api).await;
    }
    let scraper = metrics_port.map(tresor_bench::Scraper::start);
    let body = serde_json::json!({
        "name": "tresor-kms",
        "endpoints": [format!("127.0.0.1:{proxy_port}")],
        "caPem": std::fs::read_to_string(kms_dir.join("tls/ca.pem")).expect("ca"),
        "clientCertPem": std::fs::read_to_string(kms_dir.join("clients/tresor-server.pem")).expect("cert"),
        "clientKeyPem": std::fs::read_to_string(kms_dir.join("clients/tresor-server.key")).expect("key"),
    });
    api_client(api, &token)
        .call("POST", "/api/v1/providers", Some(&body))
        .await
        .expect("the provider");

    // The simulated hosts, each with its client certificate from the server's CA.
    let roots = tresor_tls::parse_certs(server_ca.cert_pem().as_bytes(), "ca").expect("roots");
    let mut hosts = Vec::new();
    for (h, issued) in issued.iter().enumerate() {
        let name = format!("host-{h}");
        let tls = tresor_tls::client_config(
            &roots,
            tresor_tls::parse_certs(issued.cert_pem.as_bytes(), "c").expect("c"),
            tresor_tls::parse_key(issued.key_pem.as_bytes(), "k").expect("k"),
        )
        .expect("tls");
        let vms: Vec<(String, KeyRef)> = (0..args.vms_per_host)
            .map(|v| {
                let i = h * args.vms_per_host + v;
                (format!("vm-{i}"), KeyRef::new("tresor-kms", &ids[i]))
            })
            .collect();
        let held = vms.iter().map(|(_, k)| k.clone()).collect();
        let host = Arc::new(SimHost {
            source: std::net::SocketAddr::from(([127, 1, (h / 250) as u8, (h % 250 + 1) as u8], 0)),
            name,
            vms,
            held: Mutex::new(held),
            boot: AtomicU64::new(0),
        });
        let mut servers = vec![format!("127.0.0.1:{agents}")];
        servers.extend(standby_ports.map(|(_, a)| format!("127.0.0.1:{a}")));
        tokio::spawn(host_session(host.clone(), servers, tls));
        hosts.push(host);
    }
    let started = Instant::now();
    loop {
        let (_, n, _, unlocked) = list_vms(api, &token).await;
        if n == total && unlocked == total {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the hosts never came up: {n} VMs, {unlocked} unlocked"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "{} hosts, {total} VMs registered and unlocked in {:.1} s",
        args.hosts,
        started.elapsed().as_secs_f64()
    );

    // The storm: the provider goes away, every host restarts.
    open.store(false, Ordering::SeqCst);
    for h in &hosts {
        h.held.lock().expect("held").clear();
        h.boot.fetch_add(1, Ordering::SeqCst);
    }
    let started = Instant::now();
    loop {
        let (_, _, locked, _) = list_vms(api, &token).await;
        if locked == total {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "not all VMs locked: {locked}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let lock_time = started.elapsed();
    eprintln!("every VM locked after {:.1} s", lock_time.as_secs_f64());

    // The provider returns: time until every VM is unlocked, the API's latency meanwhile.
    open.store(true, Ordering::SeqCst);
    let started = Instant::now();
    // Meanwhile, a client pages through the list 100 VMs at a time, as the console does.
    let paging = Arc::new(AtomicBool::new(true));
    let pager = {
        let (paging, token) = (paging.clone(), token.clone());
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut offset = 0;
            while paging.load(Ordering::SeqCst) {
                let path = format!("/api/v1/vms?limit=100&offset={offset}");
                let (took, n, _, _) = list_vms_at(api, &token, &path).await;
                latencies.push(took);
                offset = if n < 100 { 0 } else { offset + 100 };
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            latencies
        })
    };
    // The leader is killed during the storm: how long until the standby leads (a write is
    // taken again), measured as a client sees it.
    let mut leader = Some(server);
    let takeover = match (args.kill_leader_after_ms, standby.is_some()) {
        (Some(after), true) => {
            let token = token.clone();
            let mut server = leader.take().expect("the leader");
            Some(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(after)).await;
                let _ = server.0.kill();
                let _ = server.0.wait();
                let killed = Instant::now();
                let client = api_client(api, &token);
                loop {
                    let answer = client
                        .send_text(
                            "PUT",
                            "/api/v1/settings/unlock.policy",
                            Some(&serde_json::json!({"value": "automatic"})),
                        )
                        .await;
                    if matches!(answer, Ok((200..=299, _))) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                killed.elapsed()
            }))
        }
        _ => None,
    };
    // The whole list twice a second, as an operator's client (a new connection each), for its
    // latency; beside it, whether any VM is still locked, ten times a second (one VM at most in
    // the answer), for when the storm ends.
    let listing = Arc::new(AtomicBool::new(true));
    let lister = {
        let (listing, token) = (listing.clone(), token.clone());
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while listing.load(Ordering::SeqCst) {
                let at = started.elapsed();
                let (took, _, _, _) = list_vms(api, &token).await;
                latencies.push((took, at));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            latencies
        })
    };
    let unlock_time = loop {
        let (_, still_locked, _, _) =
            list_vms_at(api, &token, "/api/v1/vms?locked=true&limit=1").await;
        if still_locked == 0 {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "not all VMs unlocked after 900 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    listing.store(false, Ordering::SeqCst);
    let timed = lister.await.expect("the lister");
    let (_, n, _, unlocked) = list_vms(api, &token).await;
    assert_eq!((n, unlocked), (total, total), "every VM is there, unlocked");
    // The slowest lists, and when they started (seconds after the provider returned).
    let mut slowest = timed.clone();
    slowest.sort_by_key(|t| std::cmp::Reverse(t.0));
    let slowest: Vec<(f64, u128)> = slowest
        .iter()
        .take(3)
        .map(|(took, at)| ((at.as_secs_f64() * 10.0).round() / 10.0, took.as_millis()))
        .collect();
    let mut latencies: Vec<Duration> = timed.into_iter().map(|(took, _)| took).collect();
    paging.store(false, Ordering::SeqCst);
    let scrapes = scraper.map(tresor_bench::Scraper::stop);
    let mut pages = pager.await.expect("pager");
    pages.sort();
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    let pp = |q: f64| pages[((pages.len() as f64 - 1.0) * q).round() as usize];
    let takeover = match takeover {
        Some(t) => Some(t.await.expect("the takeover")),
        None => None,
    };
    let peak = match &standby {
        // The standby that took over; the killed leader's peak is gone with it.
        Some(s) => rss_peak_kib(s.0.id()) / 1024,
        None => rss_peak_kib(server_pid) / 1024,
    };
    let report = serde_json::json!({
        "database": if args.database.is_some() { "postgres" } else { "sqlite" },
        "leaderKilledAfterMs": args.kill_leader_after_ms,
        "takeoverSeconds": takeover.map(|t| (t.as_secs_f64() * 10.0).round() / 10.0),
        "hosts": args.hosts,
        "vms": total,
        "api": if args.plain_http { "http" } else { "https" },
        "lockSeconds": (lock_time.as_secs_f64() * 10.0).round() / 10.0,
        "unlockSeconds": (unlock_time.as_secs_f64() * 10.0).round() / 10.0,
        "serverPeakRssMiB": peak,
        "vmListRequests": latencies.len(),
        "vmListP50Ms": p(0.5).as_millis(),
        "vmListP99Ms": p(0.99).as_millis(),
        "vmListSlowest": slowest,
        "vmPageRequests": pages.len(),
        "vmPageP50Ms": pp(0.5).as_millis(),
        "vmPageP99Ms": pp(0.99).as_millis(),
        "metricsScrapes": scrapes,
    });
    QUIET.store(true, Ordering::SeqCst);
    println!("{report}");
}
