//! The API's HTTPS listener: TLS handshakes run beside the accept loop (a client that never
//! finishes its handshake holds up no one), each within a deadline, and every connection holds a
//! slot of a bounded number, in total and per address, for as long as it is open: API clients
//! authenticate per request, so every connection counts as a stranger's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tresor_tls::gate::{Gate, Held};

/// Bounds of the API's listener.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Open connections, in total.
    pub max_connections: usize,
    /// Open connections from one address.
    pub max_connections_per_address: usize,
    /// How long a TLS handshake may take.
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_connections_per_address: 128,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// A TLS connection and its slot.
pub type Connection = Held<TlsStream<TcpStream>>;

/// Accepts TLS connections; for `axum::serve`.
#[derive(Debug)]
pub struct TlsListener {
    ready: mpsc::Receiver<(Connection, SocketAddr)>,
    local: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl TlsListener {
    pub fn new(
        tcp: TcpListener,
        tls: Arc<tresor_tls::rustls::ServerConfig>,
        limits: Limits,
    ) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let gate = Gate::new(limits.max_connections, limits.max_connections_per_address);
        let (tx, ready) = mpsc::channel(64);
        let accepting = tokio::spawn(async move {
            loop {
                let (tcp, addr) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, then go on.
                        tracing::warn!(error = %e, "the API cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let slot = match gate.enter(addr.ip()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(%addr, error = %e, "API connection turned away");
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await
                    {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((Connection::new(stream, slot), addr)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%addr, error = %e, "API TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%addr, "API TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            ready,
            local,
            accepting,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = Connection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Connection, SocketAddr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accepting task ended (it does not, but for the type's sake): no more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}
