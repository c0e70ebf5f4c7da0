//! The server's side of the agent protocol. Each host agent dials in over mutual TLS with the
//! certificate it got at enrolment; its certificate's common name must be the host name it says
//! hello with. The hub keeps one session per host, sends requests and matches replies, and
//! publishes what agents report ([`HubEvent`]) to the rest of the server.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_rustls::TlsAcceptor;
use tresor_core::host::HostCryptoState;
use tresor_core::ids::KeyRef;
use tresor_core::protocol::{
    self, AgentMessage, Command, FrameDecoder, Reply, ServerMessage, VmReport,
};

/// The replies a session waits for, by request id, with when each came (see [`AgentHub::seq`]).
type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<(Reply, u64)>>>>;

/// A host's last report of its VMs, with when it came.
type Inventory = (u64, Vec<Arc<VmReport>>);

/// A host whose session began, with what its hello said: delivered to every
/// [`AgentHub::arrivals`] receiver, however far behind the events it is (the work a connection
/// starts, such as settling an earlier leader's pushes, must not be lost with them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arrival {
    pub host: String,
    pub crypto_state: HostCryptoState,
    pub keys_held: Vec<KeyRef>,
}

/// Something an agent said, for the rest of the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HubEvent {
    Connected {
        host: String,
        boot_id: String,
        crypto_state: HostCryptoState,
        keys_held: Vec<KeyRef>,
    },
    Inventory {
        host: String,
        /// When the hub received it (see [`AgentHub::seq`]).
        seq: u64,
        /// Shared with the hub's copy and every subscriber's.
        vms: Vec<Arc<VmReport>>,
        keys_held: Vec<KeyRef>,
    },
    Notice {
        host: String,
        vm: Option<String>,
        kind: String,
        message: String,
    },
    Disconnected {
        host: String,
    },
    /// How far the work of a task has come, said by a host in a session other than the one its
    /// request was sent in (the server or the session restarted meanwhile).
    TaskProgress {
        host: String,
        task: String,
        done: u64,
        total: u64,
    },
    /// The answer to a task's request, given in a session other than the one it was sent in.
    TaskReply {
        host: String,
        task: String,
        reply: Reply,
    },
}

/// A request's progress as its agent reports it; also how to cancel it.
#[derive(Debug, Default)]
pub struct Watch {
    alive: tokio::sync::Notify,
    /// The request's id once sent (0 before).
    id: AtomicU64,
    done: AtomicU64,
    total: AtomicU64,
}

impl Watch {
    /// How far the request has come: done, of total (0: not known).
    pub fn progress(&self) -> (u64, u64) {
        (
            self.done.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        )
    }

    /// The request's id in its session, once it was sent.
    pub fn id(&self) -> Option<u64> {
        Some(self.id.load(Ordering::Relaxed)).filter(|id| *id != 0)
    }

    fn advance(&self, done: u64, total: u64) {
        self.done.store(done, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
        self.alive.notify_one();
    }
}

/// Why a request to an agent failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    #[error("Host {0} is not connected; check that its agent runs and can reach the server")]
    NotConnected(String),
    #[error(
        "Host {host} neither answered nor reported progress for {seconds} s; see its agent's log"
    )]
    Timeout { host: String, seconds: u64 },
    #[error("The session with host {0} ended before it answered")]
    Closed(String),
    #[error(
        "The agent of host {0} is too old to cancel work; upgrade it, or wait for the work to end"
    )]
    CannotCancel(String),
    #[error("Nothing was sent to host {0}: this server no longer leads (its lease ran out); the leading server does this work")]
    NotLeading(String),
}

struct Session {
    tx: mpsc::Sender<ServerMessage>,
    pending: Pending,
    /// The protocol the agent speaks.
    protocol: u32,
    /// Tells sessions of the same host apart when one replaces another.
    serial: u64,
    /// Ends the session (the host was removed).
    close: Arc<tokio::sync::Notify>,
}

/// Ends a session's registration however the session ends (also when its task is aborted).
struct SessionGuard {
    hub: Arc<AgentHub>,
    host: String,
    serial: u64,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mine = self.hub.sessions.lock().map(|mut s| {
            let is_mine = s.get(&self.host).is_some_and(|x| x.serial == self.serial);
            if is_mine {
                s.remove(&self.host);
            }
            is_mine
        });
        // A newer session of the same host took over: it is still connected.
        if mine.unwrap_or(false) {
            if let Ok(mut w) = self.hub.working.lock() {
                w.remove(&self.host);
            }
            tracing::info!(host = %self.host, "agent disconnected");
            let _ = self.hub.events.send(HubEvent::Disconnected {
                host: self.host.clone(),
            });
        }
    }
}

/// How many connections may be in their TLS handshake or enrolling at once, in total and from
/// one address; more are closed at once. Hosts with a certificate are not counted once the
/// handshake is done.
const MAX_UNAUTHENTICATED: usize = 512;
const MAX_UNAUTHENTICATED_PER_ADDRESS: usize = 64;
/// Time for a TLS handshake, and for the first message after it.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Certificates checked against the database at once (as many as its pool has connections).
const ADMISSIONS_AT_ONCE: usize = 8;

/// Decides enrolments: checks a join token and signs the agent's certificate request.
pub trait JoinAuthority: Send + Sync {
    /// Returns the agent's certificate and the CA (PEM), or why the join is refused.
    fn join(&self, token: &str, host: &str, csr_pem: &str) -> Result<(String, String), String>;

    /// Whether `host` may start a session with the certificate whose SHA-256 is `cert_sha256`
    /// (the one it was enrolled with; not a removed host's, not an older one).
    fn admits(&self, host: &str, cert_sha256: &str) -> Result<(), String>;
}

/// The sessions of all connected agents.
pub struct AgentHub {
    authority: Mutex<Option<Arc<dyn JoinAuthority>>>,
    sessions: Mutex<HashMap<String, Session>>,
    next_id: AtomicU64,
    next_serial: AtomicU64,
    events: broadcast::Sender<HubEvent>,
    /// Where each session's beginning is told, without loss.
    arrivals: Mutex<Vec<mpsc::UnboundedSender<Arrival>>>,
    /// The last report of each VM of each host, for a subscriber that fell behind.
    inventories: Mutex<HashMap<String, Inventory>>,
    /// Counts the messages agents sent, in the order the hub received them.
    seq: AtomicU64,
    /// The requests waiting for an answer, woken by their agent's progress reports.
    progress: Mutex<HashMap<u64, Arc<Watch>>>,
    /// How long a request waits for an agent that neither answers nor reports progress.
    timeout_ms: AtomicU64,
    /// The task whose work holds each host, as its last report said.
    working: Mutex<HashMap<String, String>>,
    /// Whether this server may send hosts anything (it leads); always when unset.
    fence: Mutex<Option<Fence>>,
    /// Bounds the certificate checks waiting for the database at once.
    admissions: tokio::sync::Semaphore,
}

/// Says whether this server leads now (see [`crate::lease`]).
pub type Fence = Arc<dyn Fn() -> bool + Send + Sync>;

impl std::fmt::Debug for AgentHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentHub")
            .field("hosts", &self.connected())
            .finish()
    }
}

impl Default for AgentHub {
    fn default() -> Self {
        AgentHub {
            authority: Mutex::new(None),
            sessions: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            next_serial: AtomicU64::new(1),
            // The channel keeps its last messages (inventories among them) until overwritten:
            // bounded small, and a subscriber that falls behind catches up from `inventories`.
            events: broadcast::channel(4096).0,
            arrivals: Mutex::new(Vec::new()),
            inventories: Mutex::new(HashMap::new()),
            progress: Mutex::new(HashMap::new()),
            timeout_ms: AtomicU64::new(120_000),
            working: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(1),
            fence: Mutex::new(None),
            admissions: tokio::sync::Semaphore::new(ADMISSIONS_AT_ONCE),
        }
    }
}

impl AgentHub {
    pub fn new() -> Arc<AgentHub> {
        Arc::new(AgentHub::default())
    }

    /// Sends hosts nothing (no key, no command) unless `fence` says this server leads: a
    /// server whose lease may have run out keeps still, while another may have taken over.
    pub fn set_fence(&self, fence: Fence) {
        if let Ok(mut f) = self.fence.lock() {
            *f = Some(fence);
        }
    }

    fn fenced(&self) -> bool {
        self.fence
            .lock()
            .ok()
            .and_then(|f| f.clone())
            .is_some_and(|leads| !leads())
    }

    /// Lets agents without a certificate enrol with a join token.
    pub fn set_join_authority(&self, authority: Arc<dyn JoinAuthority>) {
        if let Ok(mut a) = self.authority.lock() {
            *a = Some(authority);
        }
    }

    /// What every connected host last reported of its VMs: a subscriber that fell behind the
    /// events (and was told it lagged) catches up from this.
    /// The sequence number of the next message from an agent: a report with a lower number was
    /// received before anything with a higher one (a host's messages arrive in the order it sent
    /// them).
    pub fn seq(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::SeqCst)
    }

    pub fn inventories(&self) -> Vec<(String, u64, Vec<Arc<VmReport>>)> {
        let connected: std::collections::HashSet<String> = self.connected().into_iter().collect();
        self.inventories
            .lock()
            .map(|i| {
                i.iter()
                    .filter(|(h, _)| connected.contains(*h))
                    .map(|(h, (seq, vms))| (h.clone(), *seq, vms.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The task whose work holds `host` now, as its last report said (its report is then older
    /// than the work).
    pub fn working(&self, host: &str) -> Option<String> {
        self.working.lock().ok().and_then(|w| w.get(host).cloned())
    }

    /// Events from agents, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<HubEvent> {
        self.events.subscribe()
    }

    /// The hosts whose sessions begin from now on, each one told (unlike [`Self::subscribe`],
    /// which drops what a slow subscriber did not take in time). Authenticated sessions only;
    /// a receiver that is dropped is forgotten at the next arrival.
    pub fn arrivals(&self) -> mpsc::UnboundedReceiver<Arrival> {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut a) = self.arrivals.lock() {
            a.push(tx);
        }
        rx
    }

    /// Ends a host's session, if it has one.
    pub fn disconnect(&self, host: &str) {
        if let Some(s) = self
            .sessions
            .lock()
            .ok()
            .and_then(|s| s.get(host).map(|x| x.close.clone()))
        {
            s.notify_one();
        }
    }

    /// The hosts with a session.
    pub fn connected(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .sessions
            .lock()
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Sends a command to a host and waits for its reply.
    pub async fn request(
        &self,
        host: &str,
        body: Command,
        timeout: Duration,
    ) -> Result<Reply, HubError> {
        self.request_seq(host, body, timeout).await.map(|(r, _)| r)
    }

    /// Sends a command and waits for its reply, and says when the reply was received (see
    /// [`AgentHub::seq`]): a report from the host with a lower number is older than the reply.
    pub async fn request_seq(
        &self,
        host: &str,
        body: Command,
        timeout: Duration,
    ) -> Result<(Reply, u64), HubError> {
        let pushed = match &body {
            Command::PushKeys { keys } => Some((keys.len(), std::time::Instant::now())),
            _ => None,
        };
        let result = self
            .send_and_wait(host, body, timeout, None, Arc::default())
            .await;
        if let Some((keys, started)) = pushed {
            let ok = matches!(result, Ok((Reply::Done, _)));
            crate::metrics::METRICS.keys_pushed(keys, ok, started.elapsed());
        }
        result
    }

    /// Sends the request of task `task` and waits for its reply as long as the agent reports
    /// progress, which `watch` holds (with the request's id, to cancel it).
    pub async fn request_watched(
        &self,
        host: &str,
        body: Command,
        timeout: Duration,
        task: Option<String>,
        watch: Arc<Watch>,
    ) -> Result<Reply, HubError> {
        self.send_and_wait(host, body, timeout, task, watch)
            .await
            .map(|(r, _)| r)
    }

    /// Asks host `host` to cancel its request `id` (0: the work an earlier session left
    /// running). Agents of protocol 3 and later can.
    pub async fn cancel(&self, host: &str, id: u64) -> Result<(), HubError> {
        let tx = self.session_of(host, |s| match s.protocol {
            ..3 => Err(HubError::CannotCancel(host.into())),
            _ => Ok(()),
        })?;
        tx.send(ServerMessage::Cancel { id })
            .await
            .map_err(|_| HubError::Closed(host.into()))
    }

    /// The sender of `host`'s session, after `check` accepted the session.
    fn session_of(
        &self,
        host: &str,
        check: impl FnOnce(&Session) -> Result<(), HubError>,
    ) -> Result<mpsc::Sender<ServerMessage>, HubError> {
        let sessions = self
            .sessions
            .lock()
            .map_err(|_| HubError::NotConnected(host.into()))?;
        let s = sessions
            .get(host)
            .ok_or_else(|| HubError::NotConnected(host.into()))?;
        check(s)?;
        Ok(s.tx.clone())
    }

    async fn send_and_wait(
        &self,
        host: &str,
        body: Command,
        timeout: Duration,
        task: Option<String>,
        watch: Arc<Watch>,
    ) -> Result<(Reply, u64), HubError> {
        if self.fenced() {
            return Err(HubError::NotLeading(host.to_owned()));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply_tx, reply_rx) = oneshot::channel();
        let tx = self.session_of(host, |s| {
            if let Ok(mut p) = s.pending.lock() {
                p.insert(id, reply_tx);
            }
            Ok(())
        })?;
        // The agent's progress reports on this request: each starts the wait anew.
        watch.id.store(id, Ordering::Relaxed);
        if let Ok(mut p) = self.progress.lock() {
            p.insert(id, watch.clone());
        }
        let result = async {
            tx.send(ServerMessage::Request { id, body, task })
                .await
                .map_err(|_| HubError::Closed(host.into()))?;
            tokio::pin!(reply_rx);
            loop {
                tokio::select! {
                    reply = &mut reply_rx => {
                        return reply.map_err(|_| HubError::Closed(host.into()));
                    }
                    _ = watch.alive.notified() => continue,
                    _ = tokio::time::sleep(timeout) => {
                        return Err(HubError::Timeout {
                            host: host.into(),
                            seconds: timeout.as_secs(),
                        });
                    }
                }
            }
        }
        .await;
        if let Ok(mut p) = self.progress.lock() {
            p.remove(&id);
        }
        result
    }

    /// How long a request waits for an agent that neither answers nor reports progress
    /// (`agent_timeout_secs`).
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed))
    }

    pub fn set_timeout(&self, timeout: Duration) {
        self.timeout_ms
            .store(timeout.as_millis().max(1) as u64, Ordering::Relaxed);
    }

    /// Accepts agents on `listener` until the future is dropped, which also ends their sessions.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, acceptor: TlsAcceptor) {
        let mut sessions = tokio::task::JoinSet::new();
        // Connections that have not shown a certificate yet (in their handshake, or enrolling).
        let gate =
            tresor_tls::gate::Gate::new(MAX_UNAUTHENTICATED, MAX_UNAUTHENTICATED_PER_ADDRESS);
        let mut last_refusal: Option<std::time::Instant> = None;
        loop {
            // Reap finished sessions as we go.
            while sessions.try_join_next().is_some() {}
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let slot = match gate.enter(peer.ip()) {
                Ok(slot) => slot,
                Err(refused) => {
                    // Said at most once a second: a flood must not flood the log too.
                    if last_refusal.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!(%peer, "{refused}");
                        last_refusal = Some(std::time::Instant::now());
                    }
                    drop(stream);
                    continue;
                }
            };
            let hub = self.clone();
            let acceptor = acceptor.clone();
            sessions.spawn(async move {
                let _ = stream.set_nodelay(true);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        if let Err(e) = hub.session(tls, slot).await {
                            tracing::info!(%peer, error = %e, "agent session ended");
                        }
                    }
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "agent TLS handshake failed"),
                    Err(_) => tracing::info!(%peer, "agent TLS handshake timed out"),
                }
            });
        }
    }

    async fn session(
        self: &Arc<Self>,
        tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        slot: tresor_tls::gate::Slot,
    ) -> std::io::Result<()> {
        let peer_cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .cloned();
        let cn = peer_cert
            .as_ref()
            .and_then(|c| tresor_tls::certificate_info(c).ok())
            .map(|i| i.subject.trim_start_matches("CN=").to_owned());
        // A host with a certificate of this server's CA has authenticated: its place among the
        // strangers is given back. One without may only enrol, in a small frame, soon.
        let (mut slot, limit) = match cn {
            Some(_) => {
                drop(slot);
                (None, protocol::MAX_FRAME)
            }
            None => (Some(slot), protocol::MAX_UNAUTHENTICATED_FRAME),
        };
        let (mut reader, mut writer) = tokio::io::split(tls);
        let mut decoder = FrameDecoder::with_limit(limit);
        let mut buf = vec![0u8; 16 * 1024];
        // The first message must be hello, from the host the certificate names, within the
        // hello's deadline however the bytes trickle in.
        let deadline = tokio::time::Instant::now() + HELLO_TIMEOUT;
        let hello = loop {
            if let Some(m) = decoder
                .next_message::<AgentMessage>()
                .map_err(std::io::Error::other)?
            {
                break m;
            }
            let n = tokio::time::timeout_at(deadline, reader.read(&mut buf))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no hello"))??;
            if n == 0 {
                return Ok(());
            }
            decoder.push(&buf[..n]);
        };
        decoder.set_limit(protocol::MAX_FRAME);
        let cn = match (cn, hello) {
            (None, AgentMessage::Join { token, host, csr }) => {
                let authority = self.authority.lock().ok().and_then(|a| a.clone());
                let answer = match authority {
                    None => ServerMessage::JoinRefused {
                        message: "this server does not enrol hosts".into(),
                    },
                    Some(a) => match a.join(&token, &host, &csr) {
                        Ok((certificate, ca)) => {
                            tracing::info!(host = %host, "host enrolled");
                            // A replaced host's session ends; its certificate is refused.
                            self.disconnect(&host);
                            ServerMessage::Joined { certificate, ca }
                        }
                        Err(message) => {
                            tracing::warn!(host = %host, reason = %message, "enrolment refused");
                            ServerMessage::JoinRefused { message }
                        }
                    },
                };
                let frame = protocol::encode(&answer).map_err(std::io::Error::other)?;
                tokio::time::timeout_at(deadline, async {
                    writer.write_all(&frame).await?;
                    writer.flush().await
                })
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "join answer"))??;
                slot.take();
                return Ok(());
            }
            (None, _) => {
                return Err(std::io::Error::other(
                    "a client without a certificate must enrol first",
                ))
            }
            (Some(cn), hello) => (cn, hello),
        };
        let (cn, hello) = cn;
        let AgentMessage::Hello {
            host,
            protocol: version,
            boot_id,
            crypto_state,
            keys_held,
            ..
        } = hello
        else {
            return Err(std::io::Error::other("the first message was not hello"));
        };
        if host != cn {
            return Err(std::io::Error::other(format!(
                "certificate of {cn:?} says hello as host {host:?}"
            )));
        }
        let authority = self.authority.lock().ok().and_then(|a| a.clone());
        if let (Some(authority), Some(cert)) = (authority, &peer_cert) {
            let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
            let sha256: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
            // It asks the database: on a thread that may wait, not on one that serves the
            // other sessions, and a few at a time (thousands of hosts connect at once to a new
            // leader; a thread each would cost more than the waiting).
            let h = host.clone();
            let _permit = self.admissions.acquire().await;
            let admitted = tokio::task::spawn_blocking(move || authority.admits(&h, &sha256))
                .await
                .unwrap_or_else(|_| Err("the server cannot check the certificate".into()));
            if let Err(why) = admitted {
                tracing::warn!(host = %host, "{why}");
                return Err(std::io::Error::other(why));
            }
        }
        // Older agents stay welcome (an upgrade goes host by host); a newer one waits for the
        // server's upgrade.
        if !(1..=protocol::VERSION).contains(&version) {
            return Err(std::io::Error::other(format!(
                "agent speaks protocol {version}, the server 1 to {}; upgrade the server first",
                protocol::VERSION
            )));
        }
        let (tx, mut rx) = mpsc::channel::<ServerMessage>(256);
        let pending: Pending = Arc::default();
        let serial = self.next_serial.fetch_add(1, Ordering::Relaxed);
        let close = Arc::new(tokio::sync::Notify::new());
        if let Ok(mut s) = self.sessions.lock() {
            // A newer session of the same host replaces an older one.
            s.insert(
                host.clone(),
                Session {
                    tx: tx.clone(),
                    pending: pending.clone(),
                    protocol: version,
                    serial,
                    close: close.clone(),
                },
            );
        }
        let _guard = SessionGuard {
            hub: self.clone(),
            host: host.clone(),
            serial,
        };
        tracing::info!(host = %host, "agent connected");
        if let Ok(mut a) = self.arrivals.lock() {
            let arrival = Arrival {
                host: host.clone(),
                crypto_state,
                keys_held: keys_held.clone(),
            };
            a.retain(|tx| tx.send(arrival.clone()).is_ok());
        }
        let _ = self.events.send(HubEvent::Connected {
            host: host.clone(),
            boot_id,
            crypto_state,
            keys_held,
        });
        let frame = protocol::encode(&ServerMessage::Welcome {
            host: host.clone(),
            protocol: protocol::VERSION,
        })
        .map_err(std::io::Error::other)?;
        writer.write_all(&frame).await?;
        // Requests that carried key material, by id, with their frame's length: once the agent
        // answers one (it has read the frame), a padding frame as long follows (see
        // `ServerMessage::Padding`).
        let secret_frames: Arc<Mutex<HashMap<u64, usize>>> = Arc::default();
        let written = secret_frames.clone();
        let writer_task = tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                let Ok(frame) = protocol::encode(&m).map(zeroize::Zeroizing::new) else {
                    continue;
                };
                if let ServerMessage::Request { id, body, .. } = &m {
                    if body.carries_secrets() {
                        if let Ok(mut w) = written.lock() {
                            w.insert(*id, frame.len());
                        }
                    }
                }
                drop(m);
                if writer.write_all(&frame).await.is_err() || writer.flush().await.is_err() {
                    break;
                }
            }
        });
        let result = async {
            loop {
                while let Some(message) = decoder
                    .next_message::<AgentMessage>()
                    .map_err(std::io::Error::other)?
                {
                    match message {
                        AgentMessage::Reply { id, reply, task } => {
                            let waiter = match id {
                                0 => None,
                                id => pending.lock().ok().and_then(|mut p| p.remove(&id)),
                            };
                            if let Some(waiter) = waiter {
                                let _ = waiter.send((reply, self.next_seq()));
                            } else if let Some(task) = task {
                                // Work of a task whose request was sent in an earlier session.
                                let _ = self.events.send(HubEvent::TaskReply {
                                    host: host.clone(),
                                    task,
                                    reply,
                                });
                            }
                            // The waiter first: the padding is for the agent's memory only.
                            let secret = secret_frames.lock().ok().and_then(|mut w| w.remove(&id));
                            if let Some(len) = secret {
                                let _ = tx.send(ServerMessage::padding(len)).await;
                            }
                        }
                        AgentMessage::Inventory {
                            vms,
                            keys_held,
                            working,
                        } => {
                            // An agent always reports all its VMs.
                            let vms: Vec<Arc<VmReport>> = vms.into_iter().map(Arc::new).collect();
                            let seq = self.next_seq();
                            if let Ok(mut w) = self.working.lock() {
                                match working {
                                    Some(task) => w.insert(host.clone(), task),
                                    None => w.remove(&host),
                                };
                            }
                            if let Ok(mut inv) = self.inventories.lock() {
                                inv.insert(host.clone(), (seq, vms.clone()));
                            }
                            let _ = self.events.send(HubEvent::Inventory {
                                host: host.clone(),
                                seq,
                                vms,
                                keys_held,
                            });
                        }
                        AgentMessage::Progress {
                            id,
                            done,
                            total,
                            task,
                        } => {
                            // Only a request of this session: a host cannot keep another's
                            // request waiting.
                            let ours = id != 0 && pending.lock().is_ok_and(|p| p.contains_key(&id));
                            let waiter = self
                                .progress
                                .lock()
                                .ok()
                                .and_then(|p| p.get(&id).cloned())
                                .filter(|_| ours);
                            if let Some(watch) = waiter {
                                watch.advance(done, total);
                            } else if let Some(task) = task {
                                let _ = self.events.send(HubEvent::TaskProgress {
                                    host: host.clone(),
                                    task,
                                    done,
                                    total,
                                });
                            }
                        }
                        AgentMessage::Notice { vm, kind, message } => {
                            let _ = self.events.send(HubEvent::Notice {
                                host: host.clone(),
                                vm,
                                kind,
                                message,
                            });
                        }
                        AgentMessage::Heartbeat { seq } => {
                            let _ = tx.send(ServerMessage::HeartbeatAck { seq }).await;
                        }
                        AgentMessage::Hello { .. } | AgentMessage::Join { .. } => {
                            return Err(std::io::Error::other(
                                "hello or join in the middle of a session",
                            ))
                        }
                    }
                }
                let n = tokio::select! {
                    n = tokio::time::timeout(Duration::from_secs(60), reader.read(&mut buf)) => n
                        .map_err(|_| {
                            std::io::Error::new(std::io::ErrorKind::TimedOut, "agent silent for 60 s")
                        })??,
                    _ = close.notified() => {
                        return Err(std::io::Error::other("the host was removed"));
                    }
                };
                if n == 0 {
                    return Ok(());
                }
                decoder.push(&buf[..n]);
                buf[..n].fill(0);
            }
        }
        .await;
        writer_task.abort();
        result
    }
}
