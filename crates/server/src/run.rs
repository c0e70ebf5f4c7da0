//! Setting up and running the server: `tresor server init` and `tresor server`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use tresor_tls::{CertKind, CertificateAuthority, ClientAuth};

use crate::agents::AgentHub;
use crate::api::{router, seed_roles, token_hash, AppState};
use crate::broker::KeyBroker;
use crate::engine::{Engine, EngineConfig};
use crate::enrol::{now, Enroller};
use crate::providers::Providers;
use crate::store::Store;

/// Why the server cannot be set up or started.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Setup(String),
}

fn setup<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> RunError + '_ {
    move |e| RunError::Setup(format!("{what}: {e}"))
}

/// `server.toml`. Relative paths are relative to the file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Database, CA and certificates.
    pub data_dir: PathBuf,
    /// The REST API and the web console (HTTPS).
    #[serde(default = "default_api")]
    pub api_listen: String,
    /// The API's certificate chain and key (PEM), relative to `data_dir`. `tresor server init`
    /// makes them from the server's CA (or copies an operator's); a server without them makes
    /// them at start.
    #[serde(default = "default_api_certificate")]
    pub api_certificate: PathBuf,
    #[serde(default = "default_api_key")]
    pub api_key: PathBuf,
    /// Plain HTTP instead of HTTPS, for a server whose API listens on a loopback address only
    /// (behind a TLS proxy on the same machine, say). Refused on any other address.
    #[serde(default)]
    pub api_plain_http: bool,
    /// Where host agents connect (mutual TLS).
    #[serde(default = "default_agents")]
    pub agent_listen: String,
    /// How often the locked-VM engine looks at every VM, in milliseconds.
    #[serde(default = "default_tick")]
    pub engine_tick_ms: u64,
    /// How often every key provider's endpoints are probed, in seconds.
    #[serde(default = "default_probe")]
    pub provider_probe_secs: u64,
    /// Certificates (provider CA, server, and the server's client certificate) that expire
    /// within this many days raise an alarm.
    #[serde(default = "default_warn_days")]
    pub certificate_warning_days: i64,
    /// Seconds a token from `tresor login` stays valid.
    #[serde(default = "default_token_ttl")]
    pub token_ttl_secs: i64,
    /// Seconds after which the keys of a locked VM are asked for again, so that the cause of
    /// the lock follows the provider (a deactivated or reactivated key).
    #[serde(default = "default_locked_recheck")]
    pub locked_recheck_secs: u64,
    /// Where Prometheus scrapes `/metrics` (with `/healthz` and `/readyz`), plain HTTP; none
    /// when unset. `/healthz` and `/readyz` are on the API as well.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// Events forwarded to a syslog collector (RFC 5424), for a SIEM.
    #[serde(default)]
    pub syslog: Option<crate::syslog::SyslogConfig>,
    /// Seconds the server waits for a host that neither answers a request nor reports its
    /// progress. Long work (a disk's encryption) reports progress, so no work has a size limit
    /// from this.
    #[serde(default = "default_agent_timeout")]
    pub agent_timeout_secs: u64,
    /// The database: an SQLite file in `data_dir` when unset, or PostgreSQL
    /// (`postgres://USER@HOST:PORT/DB`, for several servers; the password in
    /// `database_password_file`, never in the string; TLS as libpq's `sslmode`, `sslrootcert`,
    /// `sslcert`, `sslkey` in the query, paths absolute).
    #[serde(default)]
    pub database: Option<String>,
    /// The file that holds the PostgreSQL user's password (relative to this file's folder).
    #[serde(default)]
    pub database_password_file: Option<PathBuf>,
    /// Where the other servers on the same database send clients' writes while this one
    /// leads: this server's API as clients reach it. From `api_listen` when unset.
    #[serde(default)]
    pub api_url: Option<String>,
    /// Seconds a leader's lease lasts (servers on PostgreSQL): a standby takes over at most this
    /// long after the leader is gone.
    #[serde(default = "default_lease")]
    pub lease_secs: u64,
}

fn default_lease() -> u64 {
    10
}

impl ServerConfig {
    /// This server's API as clients reach it (see `api_url`).
    pub fn api_url(&self) -> String {
        if let Some(url) = &self.api_url {
            return url.trim_end_matches('/').to_owned();
        }
        let scheme = if self.api_plain_http { "http" } else { "https" };
        let (host, port) = self
            .api_listen
            .rsplit_once(':')
            .unwrap_or((self.api_listen.as_str(), "8400"));
        let host = match host {
            "0.0.0.0" | "[::]" | "::" | "" => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "localhost".into()),
            h => h.to_owned(),
        };
        format!("{scheme}://{host}:{port}")
    }
}

/// A PostgreSQL database for the server (`tresor server init --database`).
#[derive(Clone, Debug)]
pub struct DatabaseSetting {
    pub url: String,
    pub password_file: Option<PathBuf>,
}

/// The files a second server on the same database takes from the first's folder: the CA (it
/// signs and checks the same hosts' certificates), the agents' and the API's certificates and
/// keys, and the configuration (its ports then changed).
pub const STANDBY_FILES: &[&str] = &[
    "ca.pem",
    "ca.key",
    "agent-endpoint.pem",
    "agent-endpoint.key",
    "api.pem",
    "api.key",
    "server.toml",
];

/// Where the database is: `database` (PostgreSQL) with its password read from
/// `password_file`, or the SQLite file `server.sqlite` in `data_dir`.
pub fn database_location(
    data_dir: &Path,
    database: Option<&str>,
    password_file: Option<&Path>,
) -> Result<tresor_db::Location, RunError> {
    tresor_db::Location::configured(data_dir.join("server.sqlite"), database, password_file)
        .map_err(RunError::Setup)
}

fn default_agent_timeout() -> u64 {
    120
}

fn default_api() -> String {
    "127.0.0.1:8400".into()
}
fn default_api_certificate() -> PathBuf {
    "api.pem".into()
}
fn default_api_key() -> PathBuf {
    "api.key".into()
}
fn default_agents() -> String {
    "0.0.0.0:8401".into()
}
fn default_tick() -> u64 {
    500
}
fn default_probe() -> u64 {
    60
}
fn default_warn_days() -> i64 {
    30
}
fn default_token_ttl() -> i64 {
    12 * 3600
}
fn default_locked_recheck() -> u64 {
    15
}

impl ServerConfig {
    pub fn load(path: &Path) -> Result<ServerConfig, RunError> {
        let text = std::fs::read_to_string(path)
            .map_err(setup(&format!("Cannot read {}", path.display())))?;
        let mut c: ServerConfig =
            toml::from_str(&text).map_err(setup(&format!("{} is invalid", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        if c.data_dir.is_relative() {
            c.data_dir = base.join(&c.data_dir);
        }
        if let Some(f) = c
            .database_password_file
            .as_mut()
            .filter(|f| f.is_relative())
        {
            *f = base.join(&*f);
        }
        Ok(c)
    }

    /// Where the server's database is (see [`database_location`]).
    pub fn database_location(&self) -> Result<tresor_db::Location, RunError> {
        database_location(
            &self.data_dir,
            self.database.as_deref(),
            self.database_password_file.as_deref(),
        )
    }
}

fn write_private(path: &Path, contents: &str) -> Result<(), RunError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(setup(&format!("Cannot create {}", path.display())))?;
    f.write_all(contents.as_bytes())
        .map_err(setup(&format!("Cannot write {}", path.display())))
}

/// What `init` made.
#[derive(Debug)]
pub struct Initialised {
    pub config: PathBuf,
    pub admin_token: String,
    /// The SHA-256 fingerprint of the API's certificate.
    pub api_fingerprint: String,
}

/// The names every API certificate the server makes holds, beside the ones given: the API is
/// reached on this machine under these.
const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Issues the API's certificate from the server's CA for `names` (and the loopback names) and
/// writes it as `cert` (with the CA, a chain) and `key` (mode 0600).
fn issue_api_certificate(
    ca: &CertificateAuthority,
    names: &[String],
    cert: &Path,
    key: &Path,
) -> Result<(), RunError> {
    let mut all: Vec<&str> = names.iter().map(String::as_str).collect();
    for n in LOOPBACK_NAMES {
        if !all.contains(&n) {
            all.push(n);
        }
    }
    let issued = ca
        .issue(CertKind::Server, all[0], &all, 825)
        .map_err(setup("Cannot create the API certificate"))?;
    std::fs::write(cert, format!("{}{}", issued.cert_pem, ca.cert_pem()))
        .map_err(setup(&format!("Cannot write {}", cert.display())))?;
    write_private(key, &issued.key_pem)
}

/// The API's certificate: made by `init` from the server's CA, or an operator's own.
#[derive(Debug, Default)]
pub enum ApiCertificate<'a> {
    #[default]
    FromServerCa,
    /// An operator's certificate chain and key (PEM files), copied into the server's folder.
    Given { chain: &'a Path, key: &'a Path },
}

/// Creates an empty server in `dir`: database, CA, certificates of the agent endpoint and of the
/// API for `names`, and the `admin` user with the Administrator role; returns admin's first
/// token.
pub fn init(
    dir: &Path,
    names: &[String],
    api_listen: &str,
    agent_listen: &str,
    api_certificate: ApiCertificate<'_>,
    database: Option<&DatabaseSetting>,
) -> Result<Initialised, RunError> {
    if dir.join("server.toml").exists() {
        return Err(RunError::Setup(format!(
            "{} already holds a server (server.toml exists)",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(setup(&format!("Cannot create {}", dir.display())))?;
    let ca = CertificateAuthority::generate("Tresor Server CA", 3650)
        .map_err(setup("Cannot create the CA"))?;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let cert = ca
        .issue(
            CertKind::Server,
            refs.first().copied().unwrap_or("localhost"),
            &refs,
            825,
        )
        .map_err(setup("Cannot create the server certificate"))?;
    std::fs::write(dir.join("ca.pem"), ca.cert_pem()).map_err(setup("Cannot write ca.pem"))?;
    write_private(&dir.join("ca.key"), ca.key_pem())?;
    std::fs::write(dir.join("agent-endpoint.pem"), &cert.cert_pem)
        .map_err(setup("Cannot write agent-endpoint.pem"))?;
    write_private(&dir.join("agent-endpoint.key"), &cert.key_pem)?;
    match api_certificate {
        ApiCertificate::FromServerCa => {
            issue_api_certificate(&ca, names, &dir.join("api.pem"), &dir.join("api.key"))?
        }
        ApiCertificate::Given { chain, key } => {
            let chain_pem = std::fs::read_to_string(chain)
                .map_err(setup(&format!("Cannot read {}", chain.display())))?;
            let key_pem = zeroize::Zeroizing::new(
                std::fs::read_to_string(key)
                    .map_err(setup(&format!("Cannot read {}", key.display())))?,
            );
            let matches = tresor_tls::cert_matches_key(&chain_pem, &key_pem).map_err(setup(
                &format!("{} or {} is not usable", chain.display(), key.display()),
            ))?;
            if !matches {
                return Err(RunError::Setup(format!(
                    "The key in {} does not belong to the certificate in {}; give the pair that belongs together",
                    key.display(),
                    chain.display()
                )));
            }
            std::fs::write(dir.join("api.pem"), chain_pem)
                .map_err(setup("Cannot write api.pem"))?;
            write_private(&dir.join("api.key"), &key_pem)?;
        }
    }
    let password_file = database.and_then(|d| d.password_file.as_ref().map(std::path::absolute));
    let password_file = password_file
        .transpose()
        .map_err(setup("Cannot find the database password file"))?;
    let location = database_location(
        dir,
        database.map(|d| d.url.as_str()),
        password_file.as_deref(),
    )?;
    let store = Store::open_at(&location).map_err(setup("Cannot create the database"))?;
    seed_roles(&store).map_err(setup("Cannot create the roles"))?;
    let mut secret = [0u8; 24];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
        .map_err(|_| RunError::Setup("The random number generator failed".into()))?;
    let admin_token: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    store
        .add_user("admin", "!")
        .map_err(setup("Cannot create the admin user"))?;
    store
        .grant("admin", "Administrator")
        .map_err(setup("Cannot grant the admin user"))?;
    store
        .add_token(&token_hash(&admin_token), "admin", "first token", now())
        .map_err(setup("Cannot store the token"))?;
    let database_lines = match (database, &password_file) {
        (Some(d), Some(f)) => format!(
            "database = {:?}\ndatabase_password_file = {:?}\n",
            d.url,
            f.display().to_string()
        ),
        (Some(d), None) => format!("database = {:?}\n", d.url),
        (None, _) => "# database = \"postgres://tresor@db.example:5432/tresor?sslmode=verify-full&sslrootcert=/etc/tresor/db-ca.pem\"\n# database_password_file = \"db-password\"\n".into(),
    };
    let config = format!(
        "# Tresor server (tresor server --config server.toml)\n\n# Database, CA and certificates.\ndata_dir = \".\"\n\n\
         # The database: the SQLite file server.sqlite in data_dir unless set; PostgreSQL for\n\
         # more than one server (the password in a file of its own, never in the string).\n\
         {database_lines}\n\
         # The REST API and the web console, over HTTPS with this certificate chain and key.\napi_listen = {api_listen:?}\n\
         # api_certificate = \"api.pem\"\n# api_key = \"api.key\"\n\n\
         # Plain HTTP instead, allowed only when api_listen is a loopback address (for a TLS proxy\n\
         # on this machine).\n# api_plain_http = false\n\n\
         # Where host agents connect (mutual TLS).\nagent_listen = {agent_listen:?}\n\n\
         # How often the locked-VM engine looks at every VM, in milliseconds.\nengine_tick_ms = 500\n\n\
         # How often every key provider's endpoints are probed, in seconds.\n# provider_probe_secs = 60\n\n\
         # Certificates of a provider (its CA and server certificate, and the server's client\n\
         # certificate) expiring within this many days raise an alarm.\n# certificate_warning_days = 30\n\n\
         # Seconds a token from `tresor login` stays valid (12 hours).\n# token_ttl_secs = 43200\n\n\
         # Seconds after which a locked VM's keys are asked for again, so that the cause of the\n\
         # lock follows the provider.\n# locked_recheck_secs = 15\n\n\
         # Seconds to wait for a host that neither answers nor reports progress (long work such\n\
         # as encrypting a disk reports progress, so it has no size limit from this).\n\
         # agent_timeout_secs = 120\n\n\
         # Prometheus metrics (/metrics, with /healthz and /readyz) over plain HTTP on this\n\
         # address; keep it on a loopback or management address.\n# metrics_listen = \"127.0.0.1:9400\"\n\n\
         # Every event also to a syslog collector (RFC 5424) for a SIEM: udp://HOST:PORT, or\n\
         # tcp://HOST:PORT (octet counting); facility local0 unless set.\n\
         # [syslog]\n# address = \"udp://127.0.0.1:514\"\n# facility = \"local0\"\n"
    );
    std::fs::write(dir.join("server.toml"), config).map_err(setup("Cannot write server.toml"))?;
    let api_fingerprint = leaf_fingerprint(&dir.join("api.pem"))?;
    Ok(Initialised {
        config: dir.join("server.toml"),
        admin_token,
        api_fingerprint,
    })
}

/// Worker threads of the API's own runtime.
const API_THREADS: usize = 2;

/// Runs the server until `shutdown` resolves.
pub async fn serve(
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let dir = &config.data_dir;
    let store = Arc::new(
        Store::open_at(&config.database_location()?).map_err(|e| match e {
            // Says itself which database and which release.
            e @ crate::store::StoreError::TooNew { .. } => RunError::Setup(e.to_string()),
            e => setup("Cannot open the database")(e),
        })?,
    );
    seed_roles(&store).map_err(setup("Cannot update the roles"))?;
    // Servers sharing a PostgreSQL database take turns leading; a server alone on SQLite leads.
    let leadership = (store.dialect() == tresor_db::Dialect::Postgres).then(|| {
        crate::lease::Leadership::new(
            store.clone(),
            &config.api_url(),
            std::time::Duration::from_secs(config.lease_secs.max(1)),
        )
    });
    let ca_pem =
        std::fs::read_to_string(dir.join("ca.pem")).map_err(setup("Cannot read ca.pem"))?;
    let ca_key = zeroize::Zeroizing::new(
        std::fs::read_to_string(dir.join("ca.key")).map_err(setup("Cannot read ca.key"))?,
    );
    let ca = CertificateAuthority::from_pem(&ca_pem, &ca_key)
        .map_err(setup("The server CA is unusable"))?;
    let api_tls = api_tls(&config, &ca)?;
    let mut chain = tresor_tls::load_certs(&dir.join("agent-endpoint.pem"))
        .map_err(setup("Cannot load the agent endpoint certificate"))?;
    chain.extend(
        tresor_tls::parse_certs(ca_pem.as_bytes(), "ca.pem")
            .map_err(setup("Cannot load ca.pem"))?,
    );
    let key = tresor_tls::load_key(&dir.join("agent-endpoint.key"))
        .map_err(setup("Cannot load the agent endpoint key"))?;
    let roots = tresor_tls::parse_certs(ca_pem.as_bytes(), "ca.pem")
        .map_err(setup("Cannot load ca.pem"))?;
    let tls = tresor_tls::server_config(chain, key, &roots, ClientAuth::OptionalClientAuthUsage)
        .map_err(setup("Cannot set up TLS"))?;
    let hub = AgentHub::new();
    hub.set_timeout(std::time::Duration::from_secs(
        config.agent_timeout_secs.max(1),
    ));
    if let Some(l) = &leadership {
        let l = l.clone();
        hub.set_fence(Arc::new(move || l.leads()));
    }
    let enroller =
        Arc::new(Enroller::new(store.clone(), ca).map_err(setup("Cannot set up enrolment"))?);
    hub.set_join_authority(enroller.clone());
    let broker = Arc::new(KeyBroker::new());
    let providers = Arc::new(Providers::new(
        store.clone(),
        broker.clone(),
        dir,
        config.certificate_warning_days,
    ));
    providers.seal_keys_with(&ca_key);
    providers
        .load()
        .map_err(setup("Cannot read the providers"))?;
    let engine = Engine::new(
        hub.clone(),
        broker.clone(),
        EngineConfig {
            tick: std::time::Duration::from_millis(config.engine_tick_ms.max(50)),
            locked_recheck: std::time::Duration::from_secs(config.locked_recheck_secs.max(1)),
            record_pushes_at_once: leadership.is_some(),
            ..EngineConfig::default()
        },
        Some(store.clone()),
    );
    engine.set_policy(
        crate::service::settings::unlock_policy(&store)
            .map_err(setup("Cannot read the unlock policy"))?,
    );
    let api = tokio::net::TcpListener::bind(&config.api_listen)
        .await
        .map_err(setup(&format!(
            "Cannot listen on {} for the API",
            config.api_listen
        )))?;
    if api_tls.is_none() {
        refuse_remote_plain_http(&config, &api)?;
    }
    tracing::info!(api = %config.api_listen, "server listening");
    let state = AppState {
        store: store.clone(),
        engine: engine.clone(),
        hub: hub.clone(),
        enroller,
        broker,
        providers: providers.clone(),
        logins: Arc::new(crate::accounts::LoginGuard::new(config.token_ttl_secs)),
        tasks: crate::tasks::Tasks::new(store.clone()),
    };
    let app = router(state.clone());
    let app = match &leadership {
        Some(l) => {
            // The leader's API certificate is checked against the servers' CA and the CAs in
            // this server's own API chain (operators give all servers certificates from one CA).
            let mut anchors = tresor_tls::parse_certs(ca_pem.as_bytes(), "ca.pem")
                .map_err(setup("Cannot load ca.pem"))?;
            if let Ok(chain) = tresor_tls::load_certs(&dir.join(&config.api_certificate)) {
                anchors.extend(chain.into_iter().skip(1));
            }
            let forwarder = crate::forward::Forwarder::new(&ca_key, anchors)
                .map_err(setup("Cannot set up sending writes on to the leader"))?;
            app.layer(axum::middleware::from_fn_with_state(
                Arc::new(crate::api::Standby::new(l.clone(), forwarder)),
                crate::api::standby,
            ))
        }
        None => app,
    };
    let observed: Arc<dyn tresor_ops::Observed> = Arc::new(crate::metrics::Observed {
        cx: state.clone(),
        data_dir: dir.clone(),
        api_certificate: config.api_certificate.clone(),
        engine_stall: std::time::Duration::from_millis(config.engine_tick_ms.max(50) * 20)
            .max(std::time::Duration::from_secs(30)),
    });
    let metrics_task = match &config.metrics_listen {
        Some(address) => {
            let listener = tresor_ops::bind(address)
                .await
                .map_err(|e| RunError::Setup(e.to_string()))?;
            tracing::info!(metrics = %address, "metrics listening");
            let observed = observed.clone();
            Some(tokio::spawn(async move {
                if let Err(e) = tresor_ops::serve(listener, observed, std::future::pending()).await
                {
                    tracing::error!(error = %e, "the metrics listener failed");
                }
            }))
        }
        None => None,
    };
    let app = app.merge(tresor_ops::health_routes(observed));
    let syslog_task = match &config.syslog {
        Some(c) => {
            let syslog =
                crate::syslog::Syslog::new(c).map_err(|e| RunError::Setup(e.to_string()))?;
            tracing::info!(address = %c.address, "events are forwarded to syslog");
            Some(tokio::spawn(crate::syslog::forward(state.clone(), syslog)))
        }
        None => None,
    };
    // The API has threads of its own: during a storm the engine and the agent sessions keep the
    // main runtime's workers busy, and an operator's request should not queue behind them.
    let api_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(API_THREADS)
        .thread_name("tresor-api")
        .enable_all()
        .build()
        .map_err(setup("Cannot start the API's threads"))?;
    let api = api
        .into_std()
        .map_err(setup("Cannot hand over the API socket"))?;
    // The API stops when asked to, or when this server stops leading.
    let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<crate::lease::LeaseLost>();
    let (stopping_tx, stopping_rx) = tokio::sync::watch::channel(false);
    let lost = Arc::new(Mutex::new(None));
    let shutdown = {
        let lost = lost.clone();
        async move {
            tokio::select! {
                _ = shutdown => {}
                Ok(why) = lost_rx => {
                    *lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                }
            }
            let _ = stopping_tx.send(true);
        }
    };
    let served = api_runtime.spawn(async move {
        let api = tokio::net::TcpListener::from_std(api)?;
        // Each connection's address, for the sign-in limits.
        let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
        match api_tls {
            Some(tls) => {
                use axum::serve::ListenerExt;
                let listener =
                    crate::https::TlsListener::new(api, tls, crate::https::Limits::default())?
                        .tap_io(|_| {});
                axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
            None => axum::serve(api, app).with_graceful_shutdown(shutdown).await,
        }
    });
    // Standing by until this server leads (at once when it is alone on SQLite), then the work
    // only the leader does.
    let mut stopping = stopping_rx;
    let leading = async {
        if let Some(l) = &leadership {
            let follower = tokio::spawn(follow(store.clone(), engine.clone()));
            let token = l.acquire().await;
            follower.abort();
            take_over(&state, &providers)?;
            state.engine.set_fencing_token(token);
            let l = l.clone();
            tokio::spawn(async move {
                let why = l.keep(token).await;
                let _ = lost_tx.send(why);
            });
        }
        let agents = tokio::net::TcpListener::bind(&config.agent_listen)
            .await
            .map_err(setup(&format!(
                "Cannot listen on {} for agents",
                config.agent_listen
            )))?;
        tracing::info!(agents = %config.agent_listen, "listening for agents");
        // Tasks a previous leader left: disk work is followed on its host again.
        match crate::service::tasks::resume_all(&state) {
            Ok(0) => {}
            Ok(n) => tracing::info!(tasks = n, "taking up the tasks the server was stopped in"),
            Err(e) => tracing::error!(error = %e, "cannot take up the unfinished tasks"),
        }
        Ok::<_, RunError>([
            tokio::spawn(
                hub.clone()
                    .serve(agents, tokio_rustls::TlsAcceptor::from(tls)),
            ),
            tokio::spawn(engine.clone().run()),
            tokio::spawn(providers.clone().run(std::time::Duration::from_secs(
                config.provider_probe_secs.max(1),
            ))),
        ])
    };
    let work = tokio::select! {
        w = leading => Some(w),
        _ = stopping.wait_for(|s| *s) => None,
    };
    let work = match work {
        Some(Ok(w)) => w.into_iter().collect(),
        Some(Err(e)) => {
            api_runtime.shutdown_background();
            return Err(e);
        }
        None => Vec::new(),
    };
    let result = served
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    api_runtime.shutdown_background();
    for t in work
        .into_iter()
        .chain([metrics_task, syslog_task].into_iter().flatten())
    {
        t.abort();
    }
    if let Some(why) = lost.lock().unwrap_or_else(|p| p.into_inner()).take() {
        // What this server holds in memory may be older than what the new leader writes: it
        // writes nothing more, and ends.
        return Err(RunError::Setup(format!(
            "This server stopped leading ({why}); it ends so that its process manager starts it again, as a standby"
        )));
    }
    if leadership.as_ref().is_none_or(|l| l.leads()) {
        // The VM states the engine took last.
        if let Err(e) = store.write_deferred() {
            tracing::error!(error = %e, "cannot store the VMs' last states");
        }
    }
    if let Some(l) = &leadership {
        // Another server takes over at once.
        if let Err(e) = l.release() {
            tracing::warn!(error = %e, "cannot hand the lease over; another server takes over when it runs out");
        }
    }
    result.map_err(setup("The API server failed"))
}

/// A standby follows what the leader writes: the VMs and the registry, every second.
async fn follow(store: Arc<Store>, engine: Arc<Engine>) {
    loop {
        if let Err(e) = store.reload_view() {
            tracing::warn!(error = %e, "cannot read the VMs the leader wrote");
        }
        engine.reload_registry();
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// A standby that becomes the leader takes everything as the last leader left it.
fn take_over(state: &AppState, providers: &Providers) -> Result<(), RunError> {
    state
        .store
        .reload_view()
        .map_err(setup("Cannot read the VMs"))?;
    state.engine.reload_registry();
    providers
        .load()
        .map_err(setup("Cannot read the providers"))?;
    state.engine.set_policy(
        crate::service::settings::unlock_policy(&state.store)
            .map_err(setup("Cannot read the unlock policy"))?,
    );
    Ok(())
}

fn leaf_fingerprint(chain: &Path) -> Result<String, RunError> {
    let certs = tresor_tls::load_certs(chain).map_err(setup("Cannot load the API certificate"))?;
    certs
        .first()
        .map(tresor_tls::fingerprint)
        .ok_or_else(|| RunError::Setup(format!("{} holds no certificate", chain.display())))
}

/// The SHA-256 fingerprint of the API's certificate (`tresor server fingerprint`).
pub fn api_fingerprint(config: &ServerConfig) -> Result<String, RunError> {
    leaf_fingerprint(&config.data_dir.join(&config.api_certificate))
}

/// Plain HTTP only on a loopback address: anywhere else it would carry passwords and tokens over
/// the network.
fn refuse_remote_plain_http(
    config: &ServerConfig,
    listener: &tokio::net::TcpListener,
) -> Result<(), RunError> {
    let addr = listener
        .local_addr()
        .map_err(setup("Cannot read the API's address"))?;
    if !addr.ip().is_loopback() {
        return Err(RunError::Setup(format!(
            "api_plain_http is set but api_listen ({}) is not a loopback address; plain HTTP would carry passwords and tokens over the network. Remove api_plain_http (the API then speaks HTTPS) or listen on 127.0.0.1",
            config.api_listen
        )));
    }
    tracing::warn!(api = %config.api_listen, "the API speaks plain HTTP (api_plain_http, loopback only)");
    Ok(())
}

/// The API's TLS configuration, or `None` for plain HTTP (`api_plain_http`). A server set up
/// before the API spoke HTTPS gets its certificate from its CA at first start.
fn api_tls(
    config: &ServerConfig,
    ca: &CertificateAuthority,
) -> Result<Option<Arc<tresor_tls::rustls::ServerConfig>>, RunError> {
    if config.api_plain_http {
        return Ok(None);
    }
    let dir = &config.data_dir;
    let cert = dir.join(&config.api_certificate);
    let key = dir.join(&config.api_key);
    if !cert.exists() && !key.exists() {
        issue_api_certificate(ca, &[], &cert, &key)?;
        tracing::info!(certificate = %cert.display(), "made the API's certificate from the server's CA");
    }
    let chain = tresor_tls::load_certs(&cert).map_err(setup("Cannot load the API certificate"))?;
    let key = tresor_tls::load_key(&key).map_err(setup("Cannot load the API key"))?;
    tresor_tls::https_server_config(chain, key)
        .map(Some)
        .map_err(setup("Cannot set up the API's TLS"))
}
