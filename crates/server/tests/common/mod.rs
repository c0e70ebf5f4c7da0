//! What the server's tests share: the API client and an API served on loopback (plain HTTP),
//! and a CA for the agents' endpoint.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tresor_server::agents::AgentHub;
use tresor_server::api::{router, seed_roles, token_hash, AppState};
use tresor_server::broker::KeyBroker;
use tresor_server::engine::{Engine, EngineConfig};
use tresor_server::enrol::Enroller;
use tresor_server::providers::Providers;
use tresor_server::store::Store;
use tresor_tls::{CertKind, CertificateAuthority};

/// Whether the server's tests run on PostgreSQL (`TRESOR_TEST_SERVER_DATABASE=postgres`, which
/// `./scripts/test` sets for a second run of them) instead of SQLite.
pub fn on_postgres() -> bool {
    std::env::var("TRESOR_TEST_SERVER_DATABASE").as_deref() == Ok("postgres")
}

/// The database of one test: an SQLite file in a folder of its own, or a PostgreSQL database of
/// its own on the test cluster; gone when the test ends.
pub struct TestDb {
    pub dir: tempfile::TempDir,
    postgres: Option<tresor_db::testing::ScratchPostgres>,
}

impl TestDb {
    pub fn new() -> TestDb {
        TestDb {
            dir: tempfile::tempdir().unwrap(),
            postgres: on_postgres().then(tresor_db::testing::ScratchPostgres::new),
        }
    }

    pub fn location(&self) -> tresor_db::Location {
        match &self.postgres {
            Some(db) => db.location().clone(),
            None => tresor_db::Location::Sqlite(self.dir.path().join("server.sqlite")),
        }
    }

    /// Opens the store (again: a second call reads what the first wrote).
    pub fn open(&self) -> Store {
        Store::open_at(&self.location()).unwrap()
    }

    pub fn store(&self) -> Arc<Store> {
        Arc::new(self.open())
    }
}

/// One request with the API client (plain HTTP: the API is served on loopback here); the status
/// and the JSON answer (`Null` when there is none).
pub async fn http_body(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let client = tresor_api::Client::new(&format!("http://{addr}"), tresor_api::Trust::Insecure)
        .unwrap()
        .with_token(token.unwrap_or(""));
    let body: Option<Value> = (!body.is_empty()).then(|| serde_json::from_str(body).unwrap());
    let a = tokio::time::timeout(
        Duration::from_secs(30),
        client.send(method, path, body.as_ref()),
    )
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    (a.status, a.body)
}

pub async fn http(addr: &str, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    http_body(addr, method, path, token, "").await
}

/// Users `admin` (Administrator), `operator` (NoCryptoAdmin) and `viewer` (ReadOnly), whose
/// tokens are `NAME-token`.
pub fn seed_users(store: &Store) {
    seed_roles(store).unwrap();
    for (user, role) in [
        ("admin", "Administrator"),
        ("operator", "NoCryptoAdmin"),
        ("viewer", "ReadOnly"),
    ] {
        store.add_user(user, "x").unwrap();
        store.grant(user, role).unwrap();
        store
            .add_token(&token_hash(&format!("{user}-token")), user, "test", 0)
            .unwrap();
    }
}

/// What a served API is made of.
pub struct Served {
    pub addr: String,
    pub engine: Arc<Engine>,
    pub broker: Arc<KeyBroker>,
    pub providers: Arc<Providers>,
}

/// Serves the API over `store` on a free loopback port; the data folder is `dir`.
pub async fn serve(store: Arc<Store>, dir: &Path) -> Served {
    serve_with(store, dir, 3600).await
}

/// Serves the API with login tokens that live `token_ttl_secs`.
pub async fn serve_with(store: Arc<Store>, dir: &Path, token_ttl_secs: i64) -> Served {
    let hub = AgentHub::new();
    let broker = Arc::new(KeyBroker::new());
    let engine = Engine::new(
        hub.clone(),
        broker.clone(),
        EngineConfig::default(),
        Some(store.clone()),
    );
    let enroller = Arc::new(
        Enroller::new(
            store.clone(),
            CertificateAuthority::generate("CA", 2).unwrap(),
        )
        .unwrap(),
    );
    // The test key servers' certificates live 30 days; warn at 20 so that only the ones a test
    // makes short-lived are expiring.
    let providers = Arc::new(Providers::new(store.clone(), broker.clone(), dir, 20));
    providers.load().unwrap();
    let tasks = tresor_server::tasks::Tasks::new(store.clone());
    let app = router(AppState {
        store,
        tasks,
        engine: engine.clone(),
        hub,
        enroller,
        broker: broker.clone(),
        providers: providers.clone(),
        logins: Arc::new(tresor_server::accounts::LoginGuard::new(token_ttl_secs)),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
        .unwrap()
    });
    Served {
        addr,
        engine,
        broker,
        providers,
    }
}

/// A CA for the agents' endpoint: the hub's acceptor (mutual TLS, a server certificate for
/// localhost) and agents' client configurations.
pub struct AgentPki {
    pub ca: CertificateAuthority,
}

impl AgentPki {
    pub fn new() -> AgentPki {
        AgentPki {
            ca: CertificateAuthority::generate("Tresor Server CA", 2).unwrap(),
        }
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let server = self
            .ca
            .issue(
                CertKind::Server,
                "localhost",
                &["localhost", "127.0.0.1"],
                2,
            )
            .unwrap();
        let cfg = tresor_tls::server_config(
            tresor_tls::parse_certs(server.cert_pem.as_bytes(), "s").unwrap(),
            tresor_tls::parse_key(server.key_pem.as_bytes(), "k").unwrap(),
            &tresor_tls::parse_certs(self.ca.cert_pem().as_bytes(), "ca").unwrap(),
            tresor_tls::ClientAuth::RequireClientAuthUsage,
        )
        .unwrap();
        tokio_rustls::TlsAcceptor::from(cfg)
    }

    /// An agent's client configuration, its certificate naming host `cn`.
    pub fn agent_tls(&self, cn: &str) -> Arc<tresor_tls::rustls::ClientConfig> {
        let c = self.ca.issue(CertKind::Client, cn, &[], 2).unwrap();
        tresor_tls::client_config(
            &tresor_tls::parse_certs(self.ca.cert_pem().as_bytes(), "ca").unwrap(),
            tresor_tls::parse_certs(c.cert_pem.as_bytes(), "c").unwrap(),
            tresor_tls::parse_key(c.key_pem.as_bytes(), "k").unwrap(),
        )
        .unwrap()
    }
}
