//! Leadership among servers that share one PostgreSQL database: one of them leads (runs the
//! locked-VM engine, holds the agents' sessions, pushes keys); the others stand by, serve reads
//! and send writes to the leader.
//!
//! The leader holds a lease, a row in the database ([`Store::acquire_lease`]) timed by the
//! database's clock, which every server shares, and renews it every third of its length. Each
//! new holder gets a larger fencing token. A server counts itself the leader only until its
//! last renewal *started* plus the lease's length less a safety margin, measured on its own
//! monotonic clock; another server can take the lease only once the database's clock says it
//! ran out, which is later. So a leader that is cut off from the database stops sending hosts
//! anything ([`crate::agents::AgentHub::set_fence`]) before anyone else can lead. A server
//! that loses the lease ends (its process manager starts it again, as a standby): what it held in
//! memory may be older than what the new leader wrote.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::store::{Store, StoreError};

/// What this server is now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Standby,
    /// It holds the lease with this fencing token.
    Leader {
        token: i64,
    },
}

/// This server's part in the leadership.
#[derive(Debug)]
pub struct Leadership {
    store: Arc<Store>,
    /// Tells this server's lease from another's: its host name, process id and a random part.
    holder: String,
    api_url: String,
    ttl: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    role: Role,
    /// Until when this server may act as the leader without a renewal.
    valid_until: Option<Instant>,
    /// The leader another server is, and when that was read.
    leader_url: Option<(String, Instant)>,
}

/// Why a leader stopped leading.
#[derive(Debug, thiserror::Error)]
pub enum LeaseLost {
    #[error("Another server took the lease (it ran out before this server could renew it)")]
    Taken,
    #[error("The lease could not be renewed in time: {0}")]
    Unrenewed(String),
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How much of the lease a leader gives up to clock drift and a late renewal: it stops leading
/// this long before the database could give the lease to another server.
fn margin(ttl: Duration) -> Duration {
    ttl / 4
}

impl Leadership {
    /// A standby server, known to the others by `api_url`, whose lease lasts `ttl`.
    pub fn new(store: Arc<Store>, api_url: &str, ttl: Duration) -> Arc<Leadership> {
        let mut random = [0u8; 6];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random);
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "server".into());
        let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
        Arc::new(Leadership {
            store,
            holder: format!("{host}/{}/{suffix}", std::process::id()),
            api_url: api_url.to_owned(),
            ttl,
            state: Mutex::new(State {
                role: Role::Standby,
                valid_until: None,
                leader_url: None,
            }),
        })
    }

    /// The name this server holds the lease under.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    pub fn role(&self) -> Role {
        lock(&self.state).role
    }

    /// Whether this server leads now: it holds the lease, and its last renewal is recent
    /// enough that no other server can have taken it.
    pub fn leads(&self) -> bool {
        let s = lock(&self.state);
        matches!(s.role, Role::Leader { .. }) && s.valid_until.is_some_and(|v| Instant::now() < v)
    }

    /// The API address of the server that leads, when another one does (read from the
    /// database at most once a second).
    pub fn leader_url(&self) -> Option<String> {
        if let Some((url, at)) = &lock(&self.state).leader_url {
            if at.elapsed() < Duration::from_secs(1) {
                return Some(url.clone());
            }
        }
        let row = self.store.leader().ok().flatten();
        let url = row
            .filter(|r| r.expires_in_ms > 0 && r.holder != self.holder)
            .map(|r| r.api_url);
        let mut s = lock(&self.state);
        s.leader_url = url.clone().map(|u| (u, Instant::now()));
        url
    }

    /// Waits until this server holds the lease; its fencing token.
    pub async fn acquire(&self) -> i64 {
        let every = (self.ttl / 5).max(Duration::from_millis(100));
        loop {
            let started = Instant::now();
            match self
                .store
                .acquire_lease(&self.holder, &self.api_url, self.ttl.as_millis() as i64)
            {
                Ok(Some(token)) => {
                    let mut s = lock(&self.state);
                    s.role = Role::Leader { token };
                    s.valid_until = Some(started + self.ttl - margin(self.ttl));
                    s.leader_url = None;
                    tracing::info!(holder = %self.holder, token, "this server leads now");
                    return token;
                }
                Ok(None) => {
                    // Asked again when the running lease ends as the database counts it (a
                    // leader that died is followed at once, not up to a poll later), and at
                    // least every fifth of the lease.
                    let ends_in = self
                        .store
                        .leader()
                        .ok()
                        .flatten()
                        .map(|r| Duration::from_millis(r.expires_in_ms.max(0) as u64));
                    let wait = ends_in.map_or(every, |e| {
                        (e + Duration::from_millis(10)).clamp(Duration::from_millis(10), every)
                    });
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot ask the database for the lease; will retry")
                }
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Keeps the lease taken with `token` until it is lost; says why.
    pub async fn keep(&self, token: i64) -> LeaseLost {
        let every = (self.ttl / 3).max(Duration::from_millis(100));
        loop {
            tokio::time::sleep(every).await;
            let started = Instant::now();
            match self
                .store
                .renew_lease(&self.holder, token, self.ttl.as_millis() as i64)
            {
                Ok(true) => {
                    lock(&self.state).valid_until = Some(started + self.ttl - margin(self.ttl));
                    continue;
                }
                Ok(false) => return self.lost(LeaseLost::Taken),
                Err(e) if !self.leads() => return self.lost(LeaseLost::Unrenewed(e.to_string())),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the lease; will retry while it runs")
                }
            }
        }
    }

    fn lost(&self, why: LeaseLost) -> LeaseLost {
        let mut s = lock(&self.state);
        s.role = Role::Standby;
        s.valid_until = None;
        why
    }

    /// Hands the lease over at once (a leader stopping).
    pub fn release(&self) -> Result<(), StoreError> {
        let role = {
            let mut s = lock(&self.state);
            let role = s.role;
            s.role = Role::Standby;
            s.valid_until = None;
            role
        };
        if let Role::Leader { token } = role {
            self.store.release_lease(&self.holder, token)?;
        }
        Ok(())
    }
}
