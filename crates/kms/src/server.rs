//! KMIP over mutual TLS: accepts connections, frames messages, and hands them to the engine.
//!
//! A connection may carry any number of requests, one at a time. A client that stalls in the
//! middle of a message, or sends a length the server will not accept, loses its connection; the
//! others go on.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tresor_kmip::ttlv::{self, Limits, HEADER_LEN};
use tresor_tls::io::Poller;
use tresor_tls::{load_certs, load_key, peer_identity, server_config, ClientAuth, TlsError};
use zeroize::Zeroizing;

use crate::config::{KmsConfig, LimitsConfig};
use crate::crypto::{CryptoError, MasterKey};
use crate::engine::{Engine, EngineConfig};
use crate::store::{Store, StoreError};

/// Why the key server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Database(String),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("Cannot create data folder {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("Cannot listen on {addr}: {source} (is another key server running there?)")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

/// Opens the database and master key named by the configuration.
pub fn open_engine(config: &KmsConfig) -> Result<Engine, ServeError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ServeError::DataDir {
        path: config.data_dir.display().to_string(),
        source,
    })?;
    restrict_dir(&config.data_dir);
    let master = MasterKey::load_or_create(&config.master_key_path())?;
    let location = config
        .database_location()
        .map_err(|e| ServeError::Database(e.to_string()))?;
    let store = Store::open_at(&location)?;
    Ok(Engine::new(
        Arc::new(store),
        Arc::new(master),
        EngineConfig {
            administrators: config.administrators.clone(),
            ..EngineConfig::default()
        },
    ))
}

fn restrict_dir(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
}

/// The TLS acceptor named by the configuration.
pub fn acceptor(config: &KmsConfig) -> Result<TlsAcceptor, ServeError> {
    let chain = load_certs(&config.tls.cert)?;
    let key = load_key(&config.tls.key)?;
    let cas = load_certs(&config.tls.client_ca)?;
    let auth = if config.tls.require_client_auth_usage {
        ClientAuth::RequireClientAuthUsage
    } else {
        ClientAuth::AnyExtendedKeyUsage
    };
    Ok(TlsAcceptor::from(server_config(chain, key, &cas, auth)?))
}

/// Binds the configured address.
pub async fn bind(config: &KmsConfig) -> Result<TcpListener, ServeError> {
    TcpListener::bind(&config.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: config.listen.clone(),
            source,
        })
}

/// Serves KMIP on `listener` until `shutdown` completes, then waits (up to the message timeout)
/// for requests in flight.
///
/// Each core runs an event loop of its own (a single-threaded runtime on its own thread) that
/// accepts connections on the shared listening socket and serves them itself: a connection's
/// requests are read, answered and written by the thread whose epoll saw them arrive, never
/// handed to another thread (on a virtual machine, waking an idle thread costs more than
/// answering a Get).
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    engine: Arc<Engine>,
    limits: LimitsConfig,
    shutdown: impl Future<Output = ()>,
) {
    let listener = match listener.into_std() {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot share the listening socket with the event loops");
            return;
        }
    };
    let loops = match EventLoops::start() {
        Ok(loops) => loops,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the key server's event loops");
            return;
        }
    };
    let shared = Arc::new(Shared {
        acceptor,
        engine,
        permits: Arc::new(Semaphore::new(limits.max_connections.max(1))),
        handshakes: tresor_tls::gate::Gate::new(
            limits.max_handshakes,
            limits.max_handshakes_per_address,
        ),
        limits,
    });
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    for handle in &loops.handles {
        let listener = match listener.try_clone() {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot share the listening socket with an event loop");
                continue;
            }
        };
        handle.spawn(accept_loop(listener, shared.clone(), closing.clone()));
    }
    drop(listener);
    shutdown.await;
    // No new connections; idle ones close now, busy ones after their current request.
    let _ = closing_tx.send(true);
    let deadline = Duration::from_secs(shared.limits.message_timeout_secs.max(1));
    let all = shared
        .permits
        .acquire_many(shared.limits.max_connections.max(1) as u32);
    let _ = tokio::time::timeout(deadline, all).await;
    loops.stop();
}

/// What every event loop's connections share.
struct Shared {
    acceptor: TlsAcceptor,
    engine: Arc<Engine>,
    limits: LimitsConfig,
    /// One per authenticated connection, up to the configured maximum.
    permits: Arc<Semaphore>,
    /// Connections in their TLS handshake.
    handshakes: Arc<tresor_tls::gate::Gate>,
}

/// Accepts connections on one event loop and serves them there, until the server closes.
async fn accept_loop(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut closing: tokio::sync::watch::Receiver<bool>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "an event loop cannot listen");
            return;
        }
    };
    let mut last_refusal: Option<std::time::Instant> = None;
    loop {
        let (stream, peer) = tokio::select! {
            _ = closing.changed() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Strangers are bounded before anything is spent on them; a client gets its place among
        // the connections once its certificate is verified.
        let slot = match shared.handshakes.enter(peer.ip()) {
            Ok(slot) => slot,
            Err(refused) => {
                if last_refusal.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    tracing::warn!(%peer, "{refused}");
                    last_refusal = Some(std::time::Instant::now());
                }
                continue;
            }
        };
        let (shared, closing) = (shared.clone(), closing.clone());
        tokio::spawn(async move {
            connection(stream, peer, slot, &shared, closing).await;
        });
    }
}

/// One single-threaded runtime per core, each on a thread of its own.
struct EventLoops {
    handles: Vec<tokio::runtime::Handle>,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl EventLoops {
    fn start() -> std::io::Result<EventLoops> {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut loops = EventLoops {
            handles: Vec::with_capacity(n),
            stops: Vec::with_capacity(n),
            threads: Vec::with_capacity(n),
        };
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            loops.handles.push(rt.handle().clone());
            loops.stops.push(stop);
            let thread = std::thread::Builder::new()
                .name(format!("kmip-{i}"))
                .spawn(move || {
                    rt.block_on(async {
                        let _ = stopped.await;
                    });
                    // Connections still open are dropped with the runtime.
                    rt.shutdown_background();
                })?;
            loops.threads.push(thread);
        }
        Ok(loops)
    }

    fn stop(self) {
        for stop in self.stops {
            let _ = stop.send(());
        }
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    slot: tresor_tls::gate::Slot,
    shared: &Shared,
    mut closing: tokio::sync::watch::Receiver<bool>,
) {
    let (acceptor, engine, limits) = (&shared.acceptor, &shared.engine, &shared.limits);
    let _ = stream.set_nodelay(true);
    let message_timeout = Duration::from_secs(limits.message_timeout_secs.max(1));
    let idle_timeout = Duration::from_secs(limits.idle_timeout_secs.max(1));
    let handshake_timeout = Duration::from_secs(limits.handshake_timeout_secs.max(1));
    let mut tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let identity = match tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(peer_identity)
    {
        Some(Ok(id)) => Arc::<str>::from(id),
        _ => {
            tracing::info!(%peer, "client certificate unreadable");
            return;
        }
    };
    drop(slot);
    let Ok(_permit) = shared.permits.clone().try_acquire_owned() else {
        tracing::warn!(%peer, client = &*identity, max = limits.max_connections, "too many client connections; this one is closed");
        return;
    };
    let _counted = crate::metrics::METRICS.connection();
    tracing::debug!(%peer, client = &*identity, "connection opened");
    let frame_limits = Limits {
        max_message_len: limits.max_message_bytes,
        ..Limits::default()
    };
    let mut poller = Poller::new(POLL_FOR_NEXT);
    loop {
        let mut header = [0u8; HEADER_LEN];
        if *closing.borrow() {
            break;
        }
        tokio::select! {
            r = tokio::time::timeout(idle_timeout, poller.read_exact(&mut tls, &mut header)) => match r {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => break, // closed by the client
                Err(_) => {
                    tracing::debug!(%peer, "idle connection closed");
                    break;
                }
            },
            _ = closing.changed() => break,
        }
        let len = match ttlv::message_len(&header, &frame_limits) {
            Ok(len) => len,
            Err(e) => {
                tracing::warn!(%peer, client = &*identity, error = %e, "unframeable message; closing the connection");
                break;
            }
        };
        let mut message = Zeroizing::new(vec![0u8; len]);
        message[..HEADER_LEN].copy_from_slice(&header);
        match tokio::time::timeout(message_timeout, tls.read_exact(&mut message[HEADER_LEN..]))
            .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::info!(%peer, error = %e, "connection lost in the middle of a message");
                break;
            }
            Err(_) => {
                tracing::warn!(%peer, client = &*identity, "client stalled in the middle of a message; closing the connection");
                break;
            }
        }
        // Reads are answered right here (they take microseconds); anything that writes waits for
        // the disk on a blocking thread.
        let response = match engine.parse(&identity, &message) {
            Err(error_response) => Ok(*error_response),
            Ok(request) if Engine::is_read_only(&request) => Ok(engine.handle(&identity, request)),
            Ok(request) if Engine::runs_on_writer(&request) => {
                let version = request.header.protocol_version;
                let (e1, e2, id) = (engine.clone(), engine.clone(), identity.clone());
                engine
                    .store()
                    .submit(
                        move || e1.handle(&id, request),
                        move |error| e2.not_committed(version, &error),
                    )
                    .await
                    .map_err(|_| "the database writer has stopped")
            }
            Ok(request) => {
                let engine = engine.clone();
                let id = identity.clone();
                tokio::task::spawn_blocking(move || engine.handle(&id, request))
                    .await
                    .map_err(|_| "the request's handler failed")
            }
        };
        drop(message);
        let bytes = match response.map(|r| r.encode()) {
            Ok(Ok(bytes)) => Zeroizing::new(bytes),
            Ok(Err(e)) => {
                tracing::error!(%peer, error = %e, "cannot encode a response");
                break;
            }
            Err(e) => {
                tracing::error!(%peer, error = %e, "request not answered; closing the connection");
                break;
            }
        };
        if tls.write_all(&bytes).await.is_err() || tls.flush().await.is_err() {
            break;
        }
    }
    let _ = tls.shutdown().await;
}

/// How long a connection that has just been answered looks for its next request before its
/// event loop sleeps: a client that sends requests back to back is answered without this thread
/// being put to sleep and woken between them.
const POLL_FOR_NEXT: Duration = Duration::from_micros(200);
