//! Setting up and running the server: `tresor server init` and `tresor server`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    /// The REST API (plain HTTP: keep it on loopback or behind a TLS proxy).
    #[serde(default = "default_api")]
    pub api_listen: String,
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
}

fn default_api() -> String {
    "127.0.0.1:8400".into()
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
        if c.data_dir.is_relative() {
            c.data_dir = path.parent().unwrap_or(Path::new(".")).join(&c.data_dir);
        }
        Ok(c)
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
}

/// Creates an empty server in `dir`: database, CA, certificate of the agent endpoint for
/// `names`, and the `admin` user with the Administrator role; returns admin's first token.
pub fn init(
    dir: &Path,
    names: &[String],
    api_listen: &str,
    agent_listen: &str,
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
    let store =
        Store::open(&dir.join("server.sqlite")).map_err(setup("Cannot create the database"))?;
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
    let config = format!(
        "# Tresor server (tresor server --config server.toml)\n\n# Database, CA and certificates.\ndata_dir = \".\"\n\n\
         # The REST API (plain HTTP: keep it on loopback or behind a TLS proxy).\napi_listen = {api_listen:?}\n\n\
         # Where host agents connect (mutual TLS).\nagent_listen = {agent_listen:?}\n\n\
         # How often the locked-VM engine looks at every VM, in milliseconds.\nengine_tick_ms = 500\n\n\
         # How often every key provider's endpoints are probed, in seconds.\n# provider_probe_secs = 60\n\n\
         # Certificates of a provider (its CA and server certificate, and the server's client\n\
         # certificate) expiring within this many days raise an alarm.\n# certificate_warning_days = 30\n\n\
         # Seconds a token from `tresor login` stays valid (12 hours).\n# token_ttl_secs = 43200\n\n\
         # Seconds after which a locked VM's keys are asked for again, so that the cause of the\n\
         # lock follows the provider.\n# locked_recheck_secs = 15\n"
    );
    std::fs::write(dir.join("server.toml"), config).map_err(setup("Cannot write server.toml"))?;
    Ok(Initialised {
        config: dir.join("server.toml"),
        admin_token,
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
        Store::open(&dir.join("server.sqlite")).map_err(setup("Cannot open the database"))?,
    );
    seed_roles(&store).map_err(setup("Cannot update the roles"))?;
    let ca_pem =
        std::fs::read_to_string(dir.join("ca.pem")).map_err(setup("Cannot read ca.pem"))?;
    let ca_key =
        std::fs::read_to_string(dir.join("ca.key")).map_err(setup("Cannot read ca.key"))?;
    let ca = CertificateAuthority::from_pem(&ca_pem, &ca_key)
        .map_err(setup("The server CA is unusable"))?;
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
    providers
        .load()
        .map_err(setup("Cannot read the providers"))?;
    let engine = Engine::new(
        hub.clone(),
        broker.clone(),
        EngineConfig {
            tick: std::time::Duration::from_millis(config.engine_tick_ms.max(50)),
            locked_recheck: std::time::Duration::from_secs(config.locked_recheck_secs.max(1)),
            ..EngineConfig::default()
        },
        Some(store.clone()),
    );
    engine.set_policy(
        crate::api::settings::unlock_policy(&store)
            .map_err(setup("Cannot read the unlock policy"))?,
    );
    let agents = tokio::net::TcpListener::bind(&config.agent_listen)
        .await
        .map_err(setup(&format!(
            "Cannot listen on {} for agents",
            config.agent_listen
        )))?;
    let api = tokio::net::TcpListener::bind(&config.api_listen)
        .await
        .map_err(setup(&format!(
            "Cannot listen on {} for the API",
            config.api_listen
        )))?;
    tracing::info!(api = %config.api_listen, agents = %config.agent_listen, "server listening");
    let app = router(AppState {
        store: store.clone(),
        engine: engine.clone(),
        hub: hub.clone(),
        enroller,
        broker,
        providers: providers.clone(),
        logins: Arc::new(crate::accounts::LoginGuard::new(config.token_ttl_secs)),
    });
    let hub_task = tokio::spawn(hub.serve(agents, tokio_rustls::TlsAcceptor::from(tls)));
    let engine_task = tokio::spawn(engine.run());
    let probe_task = tokio::spawn(providers.run(std::time::Duration::from_secs(
        config.provider_probe_secs.max(1),
    )));
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
    let served = api_runtime.spawn(async move {
        let api = tokio::net::TcpListener::from_std(api)?;
        // Each connection's address, for the sign-in limits.
        axum::serve(
            api,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
    });
    let result = served
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    api_runtime.shutdown_background();
    hub_task.abort();
    engine_task.abort();
    probe_task.abort();
    // The VM states the engine took last.
    if let Err(e) = store.write_deferred() {
        tracing::error!(error = %e, "cannot store the VMs' last states");
    }
    result.map_err(setup("The API server failed"))
}

/// A KMIP client configuration for a stored provider.
pub fn provider_client(
    dir: &Path,
    p: &crate::store::ProviderRecord,
) -> Result<tresor_kmip_client::ClientConfig, String> {
    let roots = tresor_tls::parse_certs(p.ca_pem.as_bytes(), &format!("CA of provider {}", p.name))
        .map_err(|e| e.to_string())?;
    let certs = tresor_tls::parse_certs(
        p.client_cert_pem.as_bytes(),
        &format!("client certificate for provider {}", p.name),
    )
    .map_err(|e| e.to_string())?;
    let key_path = if Path::new(&p.client_key_file).is_absolute() {
        PathBuf::from(&p.client_key_file)
    } else {
        dir.join(&p.client_key_file)
    };
    let key = tresor_tls::load_key(&key_path).map_err(|e| e.to_string())?;
    let tls = tresor_tls::client_config(&roots, certs, key).map_err(|e| e.to_string())?;
    let mut config = tresor_kmip_client::ClientConfig::new(p.endpoints.clone(), tls);
    // As many idle connections as the engine has requests in flight, so that a storm of key
    // requests does not open and close connections.
    config.max_idle = crate::engine::CONCURRENT_REQUESTS;
    Ok(config)
}
