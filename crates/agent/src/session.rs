//! The agent's session with the server: one mutual-TLS connection, dialled by the agent, kept
//! with heartbeats and redialled with backoff. On every connect the agent says hello (with the
//! host's boot id) and reports its inventory; then it runs the server's requests one at a time
//! and reports again after each.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tresor_core::protocol::{self, AgentMessage, FrameDecoder, ServerMessage};
use tresor_tls::ServerName;

use crate::host::Host;

/// How the agent reaches the server.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// `host:port` of the server's agent endpoint.
    pub server: String,
    /// The name in the server's certificate.
    pub server_name: String,
    pub tls: Arc<tresor_tls::rustls::ClientConfig>,
    pub heartbeat: Duration,
    /// The longest wait between two attempts to connect.
    pub max_backoff: Duration,
}

/// The host's boot id: it changes when the host restarts, not when the agent does.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Keeps a session with the server until `shutdown` resolves.
pub async fn run(
    config: SessionConfig,
    host: Arc<Mutex<Host>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(250);
    loop {
        let attempt = session(&config, &host);
        tokio::select! {
            _ = &mut shutdown => return,
            result = attempt => {
                match result {
                    Ok(()) => {
                        tracing::warn!(server = %config.server, "the server closed the session");
                        backoff = Duration::from_millis(250);
                    }
                    Err(e) => tracing::warn!(server = %config.server, error = %e, retry_in = ?backoff, "no session with the server"),
                }
            }
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(config.max_backoff);
    }
}

fn lock(host: &Mutex<Host>) -> std::sync::MutexGuard<'_, Host> {
    host.lock().unwrap_or_else(|p| p.into_inner())
}

async fn send<W: AsyncWriteExt + Unpin>(w: &mut W, message: &AgentMessage) -> std::io::Result<()> {
    let frame = protocol::encode(message).map_err(std::io::Error::other)?;
    w.write_all(&frame).await?;
    w.flush().await
}

async fn report<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    host: &Arc<Mutex<Host>>,
) -> std::io::Result<()> {
    let h = host.clone();
    let (vms, keys_held) = tokio::task::spawn_blocking(move || {
        let mut h = lock(&h);
        (h.inventory(), h.keys_held())
    })
    .await
    .map_err(std::io::Error::other)?;
    send(w, &AgentMessage::Inventory { vms, keys_held }).await
}

async fn session(config: &SessionConfig, host: &Arc<Mutex<Host>>) -> std::io::Result<()> {
    let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&config.server))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(config.server_name.clone()).map_err(std::io::Error::other)?;
    let tls = TlsConnector::from(config.tls.clone())
        .connect(name, tcp)
        .await?;
    let (mut reader, mut writer) = tokio::io::split(tls);
    let hello = {
        let h = lock(host);
        AgentMessage::Hello {
            host: h.name().to_owned(),
            protocol: protocol::VERSION,
            agent_version: env!("CARGO_PKG_VERSION").into(),
            boot_id: boot_id(),
            crypto_state: h.crypto_state(),
            keys_held: h.keys_held(),
        }
    };
    send(&mut writer, &hello).await?;
    report(&mut writer, host).await?;
    tracing::info!(server = %config.server, "session with the server established");
    let mut decoder = FrameDecoder::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut heartbeat = tokio::time::interval(config.heartbeat);
    heartbeat.tick().await;
    let mut seq = 0u64;
    let mut unanswered = 0u32;
    loop {
        tokio::select! {
            n = reader.read(&mut buf) => {
                let n = n?;
                if n == 0 {
                    return Ok(());
                }
                decoder.push(&buf[..n]);
                buf[..n].fill(0);
                while let Some(message) = decoder.next_message::<ServerMessage>().map_err(std::io::Error::other)? {
                    match message {
                        ServerMessage::Welcome { .. } => {}
                        ServerMessage::HeartbeatAck { .. } => unanswered = 0,
                        ServerMessage::Request { id, body } => {
                            let h = host.clone();
                            let reply = tokio::task::spawn_blocking(move || lock(&h).handle(body)).await.map_err(std::io::Error::other)?;
                            send(&mut writer, &AgentMessage::Reply { id, reply }).await?;
                            report(&mut writer, host).await?;
                        }
                    }
                }
            }
            _ = heartbeat.tick() => {
                if unanswered >= 3 {
                    return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the server stopped answering heartbeats"));
                }
                seq += 1;
                unanswered += 1;
                send(&mut writer, &AgentMessage::Heartbeat { seq }).await?;
                // A VM that died shows in the next inventory.
                report(&mut writer, host).await?;
            }
        }
    }
}
