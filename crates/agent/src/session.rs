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
    /// `host:port` of the server's agent endpoint; several, separated by commas, for servers
    /// that share one database (the agent connects to the one that leads).
    pub server: String,
    /// The name in the server's certificate.
    pub server_name: String,
    pub tls: Arc<tresor_tls::rustls::ClientConfig>,
    pub heartbeat: Duration,
    /// The longest wait between two attempts to connect.
    pub max_backoff: Duration,
}

/// What enrolment gives an agent: its certificate and key, and the CA of the server's agent
/// endpoint (PEM).
pub struct Enrolment {
    pub certificate: String,
    pub key: zeroize::Zeroizing<String>,
    pub ca: String,
}

impl std::fmt::Debug for Enrolment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrolment").finish_non_exhaustive()
    }
}

/// Enrols this host with a server. `token` is what `tresor host token` printed:
/// `<secret>.<sha-256 of the server's CA>`, so the agent knows the server before it sends the
/// secret. With several servers (separated by commas), the one that leads enrols it.
pub async fn join(
    server: &str,
    server_name: &str,
    token: &str,
    host: &str,
) -> Result<Enrolment, String> {
    let mut last = String::from("No server address given");
    for one in server.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match join_one(one, server_name, token, host).await {
            Ok(e) => return Ok(e),
            Err(e) => last = e,
        }
    }
    Err(last)
}

async fn join_one(
    server: &str,
    server_name: &str,
    token: &str,
    host: &str,
) -> Result<Enrolment, String> {
    let (secret, pin) = token
        .split_once('.')
        .filter(|(s, p)| !s.is_empty() && p.len() == 64)
        .ok_or("The join token is malformed; copy it whole from `tresor host token`")?;
    let tls = tresor_tls::pinned_client_config(pin).map_err(|e| e.to_string())?;
    let (key, csr) = tresor_tls::key_and_csr(host).map_err(|e| e.to_string())?;
    let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(server))
        .await
        .map_err(|_| format!("Cannot reach the server at {server}: no answer within 10 s"))?
        .map_err(|e| format!("Cannot reach the server at {server}: {e}"))?;
    let name = ServerName::try_from(server_name.to_owned()).map_err(|e| e.to_string())?;
    let mut tls = TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("The server at {server} is not the one the token names ({e}); get a new token from it"))?;
    let frame = protocol::encode(&AgentMessage::Join {
        token: secret.into(),
        host: host.into(),
        csr,
    })
    .map_err(|e| e.to_string())?;
    tls.write_all(&frame).await.map_err(|e| e.to_string())?;
    tls.flush().await.map_err(|e| e.to_string())?;
    let mut decoder = FrameDecoder::default();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if let Some(m) = decoder
            .next_message::<ServerMessage>()
            .map_err(|e| e.to_string())?
        {
            return match m {
                ServerMessage::Joined { certificate, ca } => Ok(Enrolment {
                    certificate,
                    key,
                    ca,
                }),
                ServerMessage::JoinRefused { message } => {
                    Err(format!("The server refused to enrol this host: {message}"))
                }
                other => Err(format!("Unexpected answer to a join: {other:?}")),
            };
        }
        let n = tokio::time::timeout(Duration::from_secs(30), tls.read(&mut buf))
            .await
            .map_err(|_| "The server did not answer the join within 30 s".to_owned())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("The server closed the connection without answering the join".into());
        }
        decoder.push(&buf[..n]);
    }
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
    let servers: Vec<&str> = config
        .server
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    // With several servers only the leader listens for agents: the agent goes round them, and
    // waits a little only after a round in which none took it.
    let max_backoff = if servers.len() > 1 {
        config.max_backoff.min(Duration::from_secs(2))
    } else {
        config.max_backoff
    };
    let mut at = 0;
    let mut failed_in_round = 0;
    let mut backoff = Duration::from_millis(250);
    // Work a session left running goes on; the next session reports and answers it.
    let mut work = Work::default();
    let mut snapshot = Snapshot::default();
    loop {
        let server = servers
            .get(at % servers.len().max(1))
            .copied()
            .unwrap_or("");
        let attempt = session(&config, server, &host, &mut work, &mut snapshot);
        tokio::select! {
            _ = &mut shutdown => return,
            result = attempt => {
                crate::metrics::METRICS.set_connected(false);
                match result {
                    Ok(()) => {
                        tracing::warn!(server, "the server closed the session");
                        backoff = Duration::from_millis(250);
                        failed_in_round = 0;
                    }
                    Err(e) => {
                        tracing::warn!(server, error = %e, "no session with the server");
                        failed_in_round += 1;
                    }
                }
            }
        }
        at += 1;
        if servers.len() > 1 && failed_in_round < servers.len() {
            continue;
        }
        failed_in_round = 0;
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(max_backoff);
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

/// The server's requests: the one being carried out, and those waiting for it. The one being
/// carried out outlives its session (its thread runs on); its answer goes to the next.
#[derive(Default)]
struct Work {
    queue: std::collections::VecDeque<(u64, Option<String>, protocol::Command)>,
    running: Option<Running>,
}

struct Running {
    /// The request's id in its session; 0 once that session is gone.
    id: u64,
    task: Option<String>,
    handle: tokio::task::JoinHandle<protocol::Reply>,
}

/// What the agent last reported, said again while a request holds the host (a new session
/// must not wait for the work to end to say hello).
#[derive(Clone, Default)]
struct Snapshot {
    last: Option<Reported>,
}

#[derive(Clone)]
struct Reported {
    name: String,
    crypto_state: tresor_core::host::HostCryptoState,
    keys_held: Vec<tresor_core::ids::KeyRef>,
    vms: Vec<protocol::VmReport>,
}

async fn report<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    host: &Arc<Mutex<Host>>,
    snapshot: &mut Snapshot,
    busy: Option<&Running>,
) -> std::io::Result<()> {
    if let Some(running) = busy {
        // The host is held by the work under way: what was last reported, and which task's
        // work that is (so that the server does not take the old report for the work's end).
        if let Some(last) = &snapshot.last {
            return send(
                w,
                &AgentMessage::Inventory {
                    vms: last.vms.clone(),
                    keys_held: last.keys_held.clone(),
                    working: running.task.clone(),
                },
            )
            .await;
        }
    }
    let h = host.clone();
    let (notices, reported) = tokio::task::spawn_blocking(move || {
        let out = {
            let mut h = lock(&h);
            // An operation the agent was killed in is finished once the VM's key is here again.
            let mut notices = h.resume();
            let vms = h.inventory();
            // Looking at each VM finds those that stopped without being asked to.
            notices.extend(h.take_stopped());
            let reported = Reported {
                name: h.name().to_owned(),
                crypto_state: h.crypto_state(),
                keys_held: h.keys_held(),
                vms,
            };
            (notices, reported)
        };
        crate::metrics::METRICS.reported(&out.1.vms, out.1.keys_held.len());
        crate::memory::scrub_stack();
        out
    })
    .await
    .map_err(std::io::Error::other)?;
    for n in notices {
        let notice = AgentMessage::Notice {
            vm: Some(n.vm),
            kind: n.kind.into(),
            message: n.message,
        };
        send(w, &notice).await?;
    }
    let message = AgentMessage::Inventory {
        vms: reported.vms.clone(),
        keys_held: reported.keys_held.clone(),
        working: None,
    };
    snapshot.last = Some(reported);
    send(w, &message).await
}

async fn session(
    config: &SessionConfig,
    server: &str,
    host: &Arc<Mutex<Host>>,
    work: &mut Work,
    snapshot: &mut Snapshot,
) -> std::io::Result<()> {
    // Requests of an earlier session: those waiting were that session's (their server gave up
    // on them); the one under way goes on as a task's work, under id 0 from now on.
    work.queue.clear();
    if let Some(r) = work.running.as_mut() {
        r.id = 0;
    }
    let busy = work.running.is_some();
    let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(server))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(config.server_name.clone()).map_err(std::io::Error::other)?;
    let tls = TlsConnector::from(config.tls.clone())
        .connect(name, tcp)
        .await?;
    let (mut reader, mut writer) = tokio::io::split(tls);
    let hello = match (busy, &snapshot.last) {
        (true, Some(last)) => AgentMessage::Hello {
            host: last.name.clone(),
            protocol: protocol::VERSION,
            agent_version: env!("CARGO_PKG_VERSION").into(),
            boot_id: boot_id(),
            crypto_state: last.crypto_state,
            keys_held: last.keys_held.clone(),
        },
        _ => {
            let h = host.clone();
            tokio::task::spawn_blocking(move || {
                let h = lock(&h);
                AgentMessage::Hello {
                    host: h.name().to_owned(),
                    protocol: protocol::VERSION,
                    agent_version: env!("CARGO_PKG_VERSION").into(),
                    boot_id: boot_id(),
                    crypto_state: h.crypto_state(),
                    keys_held: h.keys_held(),
                }
            })
            .await
            .map_err(std::io::Error::other)?
        }
    };
    send(&mut writer, &hello).await?;
    report(&mut writer, host, snapshot, work.running.as_ref()).await?;
    tracing::info!(server, "session with the server established");
    crate::metrics::METRICS.set_connected(true);
    let mut decoder = FrameDecoder::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut heartbeat = tokio::time::interval(config.heartbeat);
    heartbeat.tick().await;
    let mut seq = 0u64;
    let mut unanswered = 0u32;
    // The server's requests run one at a time, in order, on a blocking thread; the session goes
    // on meanwhile (heartbeats, new requests queued), so that long host work never silences it.
    // The server's protocol, from its welcome: from 2 on it takes progress reports, from 3 on
    // the task of a request.
    let mut server_protocol = 1;
    // The request under way is reported each second while it is carried out.
    // (Polled only while a request runs: it starts anew with each request and never bursts
    // to catch up the idle time between them.)
    let mut progress_tick = tokio::time::interval(Duration::from_secs(1));
    progress_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if work.running.is_none() {
            if let Some((id, task, body)) = work.queue.pop_front() {
                progress_tick.reset_immediately();
                let h = host.clone();
                work.running = Some(Running {
                    id,
                    task,
                    handle: tokio::task::spawn_blocking(move || {
                        crate::progress::reset();
                        let (command, started) = (body.name(), std::time::Instant::now());
                        let reply = lock(&h).handle(body);
                        let ok = !matches!(reply, protocol::Reply::Failed { .. });
                        crate::metrics::METRICS.request(command, ok, started.elapsed());
                        crate::memory::scrub_stack();
                        reply
                    }),
                });
            }
        }
        let running = work.running.is_some();
        tokio::select! {
            reply = async {
                match work.running.as_mut() {
                    Some(r) => (&mut r.handle).await,
                    None => std::future::pending().await,
                }
            }, if running => {
                let Some(Running { id, task, .. }) = work.running.take() else {
                    continue;
                };
                let reply = reply.map_err(std::io::Error::other)?;
                // Work an earlier session left is answered only when it belongs to a task:
                // nobody waits for anything else any more.
                let task = task.filter(|_| server_protocol >= 3);
                if let Some(t) = &task {
                    // How far it came, last: work quicker than a progress tick has a size too.
                    let (done, total) = crate::progress::get();
                    let last = AgentMessage::Progress { id, done, total, task: Some(t.clone()) };
                    send(&mut writer, &last).await?;
                }
                if id != 0 || task.is_some() {
                    send(&mut writer, &AgentMessage::Reply { id, reply, task }).await?;
                }
                report(&mut writer, host, snapshot, None).await?;
            }
            n = reader.read(&mut buf) => {
                let n = n?;
                if n == 0 {
                    return Ok(());
                }
                decoder.push(&buf[..n]);
                buf[..n].fill(0);
                while let Some(message) = decoder.next_message::<ServerMessage>().map_err(std::io::Error::other)? {
                    match message {
                        ServerMessage::Welcome { protocol, .. } => server_protocol = protocol,
                        ServerMessage::Joined { .. } | ServerMessage::JoinRefused { .. } => {}
                        ServerMessage::HeartbeatAck { .. } => unanswered = 0,
                        ServerMessage::Padding { .. } => {}
                        ServerMessage::Request { id, body, task } => {
                            work.queue.push_back((id, task, body));
                        }
                        ServerMessage::Cancel { id } => {
                            cancel(&mut writer, work, id).await?;
                        }
                    }
                }
            }
            _ = progress_tick.tick(), if running && server_protocol >= 2 => {
                // Each second while the request is carried out (its work alive on its thread:
                // a copy, or the flush of a large file after it), with how far it has come when
                // the work says so (total 0: not known).
                let (done, total) = crate::progress::get();
                if let Some(r) = &work.running {
                    let task = r.task.clone().filter(|_| server_protocol >= 3);
                    if r.id != 0 || task.is_some() {
                        let progress = AgentMessage::Progress { id: r.id, done, total, task };
                        send(&mut writer, &progress).await?;
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
                // A VM that died shows in the next inventory (after the work under way, which
                // holds the host).
                if work.running.is_none() {
                    report(&mut writer, host, snapshot, None).await?;
                }
            }
        }
    }
}

/// The server cancels request `id` (of this session; 0 names work an earlier session left):
/// the one under way is told to stop where it is safe and answers when it has undone what it
/// did; one still waiting is answered at once, never started.
async fn cancel<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    work: &mut Work,
    id: u64,
) -> std::io::Result<()> {
    if work.running.as_ref().is_some_and(|r| r.id == id) {
        crate::progress::cancel();
        return Ok(());
    }
    if let Some(at) = work.queue.iter().position(|(i, _, _)| *i == id) {
        if let Some((id, task, _)) = work.queue.remove(at) {
            let reply = protocol::Reply::Failed {
                code: "cancelled".into(),
                message: "Cancelled before the host started it; nothing was changed".into(),
            };
            send(w, &AgentMessage::Reply { id, reply, task }).await?;
        }
    }
    Ok(())
}
