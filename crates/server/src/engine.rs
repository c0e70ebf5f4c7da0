//! The locked-VM engine: the reconciler that closes the gap between what hosts report and what
//! they need. It follows the agents' reports (through the hub), asks the provider for keys a host
//! lacks (through the broker), pushes them, and publishes events and alarms when a VM's settled
//! state changes. The decisions are `tresor_core::reconcile`; this module carries them out.
//!
//! Key material passes through here only between a fetch and the push it serves; it is never
//! stored.

use std::collections::{HashMap, HashSet};

use futures_util::StreamExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tresor_core::events::{EventType, Severity};
use tresor_core::ids::KeyRef;
use tresor_core::protocol::{Command, KeyMaterial, PowerState, Reply, SecretBytes, VmReport};
use tresor_core::reconcile::{reconcile, Action, Published, UnlockPolicy, VmState};
use tresor_core::registry::{Discrepancy, Registration, Registry};
use tresor_core::vm::{KeyObservation, LockReason, ProviderAnswer, Verdict};
use tresor_core::Lang;

use crate::agents::{AgentHub, HubEvent};
use crate::broker::KeyBroker;
use crate::store::{AlarmChange, EventRow, PushOutcome, Store, VmRecord};

/// How many host pushes the engine has in flight at once. Beside the fetches they overlap with,
/// 64 unlock a storm as fast as 256 did, with the API's answers and the memory within their
/// targets (at 256 the VM list's p99 in the storm rose to 126-219 ms, the peak to 740-870 MiB).
const CONCURRENCY: usize = 64;

/// How many keys the engine asks a provider for in one KMIP message, and how many such
/// messages it has in flight at once.
const KEYS_PER_REQUEST: usize = 128;
pub const CONCURRENT_REQUESTS: usize = 16;

/// How many VMs a pass decides for before it lets other tasks run.
const DECIDE_CHUNK: usize = 2000;
/// At most this many of the agents' events are taken before a pass (more than the hub keeps).
const TAKEN_BEFORE_A_PASS: usize = 8192;
/// How often a pass whose fetches and pushes are under way takes in what changed meanwhile.
const INTAKE_EVERY: Duration = Duration::from_millis(250);

/// How many recent events the engine keeps in memory.
const MEMORY_EVENTS: usize = 10_000;
/// Key-push records written in one transaction at most (see [`Engine::push_log`]): one a
/// host, so a storm of 2,500 hosts is written in a few.
const PUSH_JOBS_PER_GROUP: usize = 1024;

/// An event the engine recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRecord {
    pub id: u64,
    pub time: std::time::SystemTime,
    pub event: EventType,
    pub vm: Option<String>,
    pub host: Option<String>,
    pub args: Vec<(String, String)>,
}

impl EventRecord {
    pub fn message(&self, lang: Lang) -> String {
        let args: Vec<(&str, &str)> = self
            .args
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        tresor_core::events::render(self.event, lang, &args)
    }

    pub fn severity(&self) -> Severity {
        self.event.severity
    }
}

/// A VM as the engine sees it.
#[derive(Clone, Debug)]
pub struct VmView {
    /// The host's last report (shared with the hub until the engine changes it).
    pub report: Arc<VmReport>,
    pub host: String,
    pub host_connected: bool,
    pub verdict: Option<Verdict>,
    pub published: Published,
    pub unlock_requested: bool,
    /// Who asked for the unlock under way (a user with `Cryptographer.RegisterVM`).
    pub unlock_by: Option<String>,
    pub push_failed: bool,
    /// When the last successful push of keys to its host was answered (see
    /// [`AgentHub::seq`]).
    pushed_seq: u64,
    /// Changed since it was last written to the store.
    unwritten: bool,
}

#[derive(Clone, Debug)]
struct KeyStatus {
    answer: ProviderAnswer,
    last_attempt: Option<Instant>,
    backoff: Duration,
    /// Its VMs were looked at again when its backoff ran out.
    woken: bool,
    /// Its locked VMs were looked at again when the answer grew old.
    rechecked: bool,
}

#[derive(Default)]
struct State {
    vms: HashMap<String, VmView>,
    keys: HashMap<KeyRef, KeyStatus>,
    /// Material fetched for a push that has not happened yet.
    fetched: HashMap<KeyRef, SecretBytes>,
    events: Vec<EventRecord>,
    next_event: u64,
    /// Providers that did not answer, watched with one cheap request each so that their keys are
    /// asked for again as soon as they answer, not when each key's own backoff ends.
    down: HashMap<String, ProviderWatch>,
    /// Events recorded but not stored yet.
    unwritten: Vec<EventRow>,
    /// Whether each host is connected, as the hub last said.
    hosts_connected: HashMap<String, bool>,
    /// The VMs to look at in the next pass: a pass decides only for VMs whose inputs changed
    /// (their report, their host's connection, their keys' answers or backoff, an unlock
    /// request), so that its cost follows the changes, not the size of the inventory.
    dirty: HashSet<String>,
    /// The VMs of each host, and the VMs that need each key.
    by_host: HashMap<String, HashSet<String>>,
    by_key: HashMap<KeyRef, HashSet<String>>,
    /// The registered VMs: only these are decided for, and keys go only to their hosts.
    registry: Registry,
    /// What hosts report that the registry does not hold, by (host, VM name).
    discovered: HashMap<(String, String), DiscoveredVm>,
    /// Alarms raised or cleared outside a pass, written with the next one.
    unwritten_alarms: Vec<AlarmChange>,
    /// When the providers locked VMs wait for were last probed.
    last_watch: Option<Instant>,
    /// Key pushes an earlier leader sent and did not see to their end, by host: settled when
    /// the host is seen to hold their keys, or lost when this leader pushes them itself.
    earlier_pushes: Vec<(String, crate::store::PushIntent)>,
    /// The ids of the earlier leader's pushes taken up (watched or settled): a host that
    /// connects again does not bring them a second time, and none is recorded twice.
    earlier_seen: HashSet<i64>,
    /// The VMs whose keys this leader has sent (or is sending) to a host, as (host, VM): an
    /// earlier leader's push of them that is settled after that is lost, whether or not it
    /// arrived first (the keys there do not say whose push brought them; each push is
    /// recorded once, this leader's as sent).
    pushed: HashSet<(String, String)>,
}

/// A VM a host reports that the registry does not hold, or holds otherwise: shown, never
/// unlocked, registered only by an operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveredVm {
    pub host: String,
    pub report: Arc<VmReport>,
    pub reason: Discrepancy,
}

impl DiscoveredVm {
    fn alarm_object(&self) -> String {
        format!("host:{}/{}", self.host, self.report.name)
    }
}

impl State {
    /// Notes a VM a host reports that the registry does not admit: an event and an alarm the
    /// first time (or when the reason changes).
    fn discover(&mut self, host: &str, report: &Arc<VmReport>, reason: Discrepancy) -> bool {
        let found = DiscoveredVm {
            host: host.to_owned(),
            report: report.clone(),
            reason,
        };
        let key = (host.to_owned(), report.name.clone());
        let new = self
            .discovered
            .get(&key)
            .is_none_or(|d| d.reason != found.reason || d.report.id != found.report.id);
        if new {
            self.unwritten_alarms.push(AlarmChange::Raise {
                kind: "vm.discovered",
                object: found.alarm_object(),
                reason: format!(
                    "VM {} in {} (id {}): {}",
                    report.name, report.path, report.id, found.reason
                ),
            });
        }
        self.discovered.insert(key, found);
        new
    }

    /// A VM is no longer reported as discovered on `host`.
    fn undiscover(&mut self, host: &str, name: &str) {
        if let Some(d) = self.discovered.remove(&(host.to_owned(), name.to_owned())) {
            self.unwritten_alarms.push(AlarmChange::Clear {
                kind: "vm.discovered",
                object: d.alarm_object(),
            });
        }
    }

    /// Whether this leader has sent (or is sending) `vm`'s keys to `host`: an earlier leader's
    /// push of them is then lost, not done.
    fn superseded(&self, host: &str, vm: &str) -> bool {
        self.pushed.contains(&(host.to_owned(), vm.to_owned()))
    }

    /// The VMs that need this key are to be looked at.
    fn wake_key(&mut self, key: &KeyRef) {
        if let Some(vms) = self.by_key.get(key) {
            self.dirty.extend(vms.iter().cloned());
        }
    }

    /// Adds a VM to the indexes, or moves it, when its host or keys changed.
    fn index(&mut self, name: &str, old: Option<(&str, &[KeyRef])>, host: &str, keys: &[KeyRef]) {
        if let Some((old_host, old_keys)) = old {
            if old_host != host {
                if let Some(set) = self.by_host.get_mut(old_host) {
                    set.remove(name);
                }
            }
            for k in old_keys.iter().filter(|k| !keys.contains(k)) {
                if let Some(set) = self.by_key.get_mut(k) {
                    set.remove(name);
                    if set.is_empty() {
                        self.by_key.remove(k);
                    }
                }
            }
        }
        self.by_host
            .entry(host.to_owned())
            .or_default()
            .insert(name.to_owned());
        for k in keys {
            self.by_key
                .entry(k.clone())
                .or_default()
                .insert(name.to_owned());
        }
    }

    fn unindex(&mut self, name: &str, host: &str, keys: &[KeyRef]) {
        if let Some(set) = self.by_host.get_mut(host) {
            set.remove(name);
        }
        for k in keys {
            if let Some(set) = self.by_key.get_mut(k) {
                set.remove(name);
                if set.is_empty() {
                    self.by_key.remove(k);
                }
            }
        }
        self.dirty.remove(name);
    }
}

fn key_refs(report: &VmReport) -> Vec<KeyRef> {
    report.keys.iter().map(|k| k.key.clone()).collect()
}

#[derive(Clone, Debug)]
struct ProviderWatch {
    next_check: Instant,
    backoff: Duration,
}

/// How the engine behaves.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub policy: UnlockPolicy,
    /// How often the engine looks at every VM.
    pub tick: Duration,
    /// First and longest wait before asking a failing provider again.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Longest wait between two checks of a provider that does not answer.
    pub provider_check_max: Duration,
    pub request_timeout: Duration,
    /// How old a provider's answer may be to decide that a VM is locked, and why.
    pub answer_fresh: Duration,
    /// How often the keys of a locked VM are asked for again (so that its cause follows the
    /// provider), and how often a provider that locked VMs depend on is probed.
    pub locked_recheck: Duration,
    pub provider_watch: Duration,
    /// Writes each key push to the database before the keys leave, fenced by the leader's
    /// token (see [`Engine::set_fencing_token`]), and settles it with its event when the host
    /// answers: with several servers, another may lead a moment later, and a push must be on
    /// record once, whoever sees its end.
    pub record_pushes_at_once: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            policy: UnlockPolicy::Automatic,
            tick: Duration::from_millis(500),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            provider_check_max: Duration::from_millis(500),
            request_timeout: Duration::from_secs(30),
            answer_fresh: Duration::from_secs(5),
            locked_recheck: Duration::from_secs(15),
            provider_watch: Duration::from_secs(5),
            record_pushes_at_once: false,
        }
    }
}

/// The locked-VM engine.
pub struct Engine {
    store: Option<Arc<Store>>,
    hub: Arc<AgentHub>,
    broker: Arc<KeyBroker>,
    config: Mutex<EngineConfig>,
    state: Mutex<State>,
    last_write: Mutex<Option<Instant>>,
    /// When the last pass ended (readiness).
    last_pass: Mutex<Option<Instant>>,
    /// The fencing token of this server's lease, when servers share the database.
    token: Mutex<Option<i64>>,
    /// Bounds the reads a host's arrival makes (an earlier leader's key pushes to it, its host
    /// row): each waits for the database on a thread of its own, and thousands of hosts
    /// connecting to a new leader must not make thousands of threads.
    records: tokio::sync::Semaphore,
    /// Whether a write of VM states is under way (see [`Engine::write_states`]).
    writing_states: Arc<std::sync::atomic::AtomicBool>,
    /// The writer of key-push records (see [`Engine::push_log`]), started at the first push.
    push_log: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<PushJob>>,
    /// The pushes earlier leaders left unsettled, by host, read when the first host connects
    /// to this leader; each host's taken when it connects.
    earlier_pushes: tokio::sync::OnceCell<Mutex<HashMap<String, Vec<crate::store::PushIntent>>>>,
    /// Held by the pass under way: one at a time, so that a VM whose keys one pass is fetching
    /// or pushing is not acted on by another.
    passing: tokio::sync::Mutex<()>,
    /// Wakes the engine's loop for a pass now (a VM changed outside it).
    wake: tokio::sync::Notify,
}

/// A key-push record for [`Engine::push_log`] to write, with the one waiting for it.
enum PushJob {
    /// Pushes about to leave (with the earlier leader's pushes of the same keys that were
    /// lost): their ids, `Ok(None)` when another server leads now, `Err` when they could not be
    /// written (said in the log once for the group).
    Intend(
        crate::store::NewPushes,
        Vec<(i64, PushOutcome)>,
        tokio::sync::oneshot::Sender<Result<Option<Vec<i64>>, ()>>,
    ),
    /// Pushes that ended, their events and alarms.
    Settle(crate::store::PushRecords, tokio::sync::oneshot::Sender<()>),
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine that records its events, alarms and VM states in `store` (when given).
    pub fn new(
        hub: Arc<AgentHub>,
        broker: Arc<KeyBroker>,
        config: EngineConfig,
        store: Option<Arc<Store>>,
    ) -> Arc<Engine> {
        let registry = match &store {
            Some(store) => match store.registrations() {
                Ok(r) => Registry::new(r),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the registry; no VM is admitted");
                    Registry::default()
                }
            },
            None => Registry::default(),
        };
        Arc::new(Engine {
            store,
            hub,
            broker,
            config: Mutex::new(config),
            state: Mutex::new(State {
                registry,
                ..State::default()
            }),
            last_write: Mutex::new(None),
            last_pass: Mutex::new(None),
            token: Mutex::new(None),
            records: tokio::sync::Semaphore::new(8),
            push_log: std::sync::OnceLock::new(),
            earlier_pushes: tokio::sync::OnceCell::new(),
            writing_states: Arc::default(),
            passing: tokio::sync::Mutex::new(()),
            wake: tokio::sync::Notify::new(),
        })
    }

    /// The fencing token of the lease this server leads with: key pushes are written with it
    /// before they leave, and refused by the database once another server holds the lease.
    pub fn set_fencing_token(&self, token: i64) {
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = Some(token);
    }

    fn fencing_token(&self) -> Option<i64> {
        *self.token.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Settles the pushes to `host` that an earlier leader did not see to their end, by what
    /// the host holds now: a push whose keys are there is recorded (once), the others are lost
    /// (and pushed again by this leader when the VMs need them).
    async fn settle_earlier_pushes(self: Arc<Self>, host: String, keys_held: Vec<KeyRef>) {
        let (Some(store), Some(token)) = (self.store.clone(), self.fencing_token()) else {
            return;
        };
        // Read once for every host when the first connects (one query, not one a host: a new
        // leader meets thousands of hosts at once).
        let earlier = self
            .earlier_pushes
            .get_or_try_init(|| async {
                let read = store.clone();
                match tokio::task::spawn_blocking(move || read.unsettled_pushes_before(token)).await
                {
                    Ok(Ok(by_host)) => Ok(Mutex::new(by_host)),
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "cannot read the key pushes an earlier leader left; tried again when the next host connects");
                        Err(())
                    }
                    Err(_) => Err(()),
                }
            })
            .await;
        let intents = match earlier {
            Ok(by_host) => match by_host
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&host)
            {
                Some(i) if !i.is_empty() => i,
                _ => return,
            },
            Err(()) => return,
        };
        let mut settled = Vec::new();
        let mut rows = Vec::new();
        {
            let mut st = self.state();
            for i in intents {
                if !st.earlier_seen.insert(i.id) {
                    continue;
                }
                if st.superseded(&host, &i.vm) {
                    settled.push((i.id, PushOutcome::Lost));
                    continue;
                }
                let arrived = i.keys.iter().all(|k| keys_held.contains(k));
                if !arrived {
                    // It may still arrive (the host is busy with it): watched in the passes.
                    st.earlier_pushes.push((host.clone(), i));
                    continue;
                }
                settled.push((i.id, PushOutcome::Done));
                rows.extend(self.record_earlier_push(&mut st, &host, &i));
            }
        }
        if !settled.is_empty() {
            tracing::info!(
                host,
                pushes = settled.len(),
                "settled the key pushes an earlier leader left"
            );
        }
        self.settle(settled, rows, Vec::new()).await;
    }

    /// Settles key pushes with their events and alarms (see [`Store::record_pushes`]), and
    /// waits until they are written.
    async fn settle(
        &self,
        settled: Vec<(i64, PushOutcome)>,
        events: Vec<EventRow>,
        alarms: Vec<AlarmChange>,
    ) {
        if let Some(written) = self.settle_later(settled, events, alarms) {
            let _ = written.await;
        }
    }

    /// Hands key pushes' settlements to the writer without waiting; the receiver answers when
    /// they are written. Nothing waits on a settlement to be safe: a leader that dies first
    /// leaves the push unsettled, and the next one settles it from what the host holds.
    fn settle_later(
        &self,
        settled: Vec<(i64, PushOutcome)>,
        events: Vec<EventRow>,
        alarms: Vec<AlarmChange>,
    ) -> Option<tokio::sync::oneshot::Receiver<()>> {
        if settled.is_empty() && events.is_empty() && alarms.is_empty() {
            return None;
        }
        let log = self.push_log()?;
        let (done, written) = tokio::sync::oneshot::channel();
        let records = crate::store::PushRecords {
            settled,
            events,
            alarms,
            ..Default::default()
        };
        match log.send(PushJob::Settle(records, done)) {
            Ok(()) => Some(written),
            Err(_) => {
                tracing::error!("cannot record how key pushes ended: their writer stopped");
                None
            }
        }
    }

    /// Writes that `host` is about to get these VMs' keys, fenced by `token`, with the
    /// earlier leader's pushes of them that were `lost` (see [`Store::record_pushes`]).
    async fn intend(
        &self,
        token: i64,
        host: &str,
        vms: Vec<(String, Vec<KeyRef>)>,
        lost: Vec<(i64, PushOutcome)>,
    ) -> Result<Option<Vec<i64>>, ()> {
        let log = self.push_log().ok_or(())?;
        let (reply, ids) = tokio::sync::oneshot::channel();
        let intent = crate::store::NewPushes {
            token,
            host: host.to_owned(),
            vms,
        };
        if log.send(PushJob::Intend(intent, lost, reply)).is_err() {
            tracing::error!(
                host,
                "no keys pushed: the writer of key-push records stopped"
            );
            return Err(());
        }
        ids.await.map_err(|_| ())?
    }

    /// The writer of key-push records: what the pushes ask for while it writes is written
    /// next, all in one transaction (group commit), so that a storm's thousands of pushes, each
    /// recorded before its keys leave and settled after, cost a few commits and not two each.
    /// One writer, so the records are written in the order they were asked for.
    fn push_log(&self) -> Option<tokio::sync::mpsc::UnboundedSender<PushJob>> {
        let store = self.store.clone()?;
        let log = self.push_log.get_or_init(|| {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PushJob>();
            tokio::spawn(async move {
                while let Some(first) = rx.recv().await {
                    let mut jobs = vec![first];
                    while jobs.len() < PUSH_JOBS_PER_GROUP {
                        match rx.try_recv() {
                            Ok(job) => jobs.push(job),
                            Err(_) => break,
                        }
                    }
                    let mut records = crate::store::PushRecords::default();
                    let mut intended = Vec::new();
                    let mut settled = Vec::new();
                    for job in jobs {
                        match job {
                            PushJob::Intend(intent, lost, reply) => {
                                records.settled.extend(lost);
                                records.intents.push(intent);
                                intended.push(reply);
                            }
                            PushJob::Settle(s, done) => {
                                records.settled.extend(s.settled);
                                records.events.extend(s.events);
                                records.alarms.extend(s.alarms);
                                settled.push(done);
                            }
                        }
                    }
                    let store = store.clone();
                    let (pushes, ended) = (records.intents.len(), records.settled.len());
                    let events = records.events.len();
                    let started = Instant::now();
                    let written = tokio::task::spawn_blocking(move || {
                        store.record_pushes(&records, crate::enrol::now())
                    })
                    .await;
                    tracing::debug!(
                        target: "tresor_server::engine::pass",
                        hosts = pushes,
                        settled = ended,
                        events,
                        ms = started.elapsed().as_millis() as u64,
                        "key pushes recorded"
                    );
                    let ids: Vec<Result<Option<Vec<i64>>, ()>> = match written {
                        Ok(Ok(ids)) => ids.into_iter().map(Ok).collect(),
                        Ok(Err(e)) => {
                            tracing::error!(
                                error = %e,
                                hosts = pushes,
                                settled = ended,
                                "cannot record key pushes; those about to leave stay here"
                            );
                            vec![Err(()); intended.len()]
                        }
                        Err(_) => vec![Err(()); intended.len()],
                    };
                    for (reply, ids) in intended.into_iter().zip(ids) {
                        let _ = reply.send(ids);
                    }
                    for done in settled {
                        let _ = done.send(());
                    }
                }
            });
            tx
        });
        Some(log.clone())
    }

    /// Records that a push of an earlier leader reached `host` (its event for each key).
    fn record_earlier_push(
        &self,
        st: &mut State,
        host: &str,
        i: &crate::store::PushIntent,
    ) -> Vec<EventRow> {
        i.keys
            .iter()
            .filter_map(|k| {
                let args = vec![
                    ("key".to_owned(), k.key_id.clone()),
                    ("host".to_owned(), host.to_owned()),
                    (
                        "by".to_owned(),
                        format!("the server that led before (fencing token {})", i.token),
                    ),
                ];
                self.record_row(
                    st,
                    tresor_core::events::KEY_PUSHED,
                    Some(&i.vm),
                    Some(host),
                    None,
                    args,
                )
            })
            .collect()
    }

    /// Settles the earlier leader's pushes whose keys the hosts now report to hold.
    async fn settle_observed_pushes(&self) {
        let mut settled = Vec::new();
        let mut rows = Vec::new();
        {
            let mut st = self.state();
            if st.earlier_pushes.is_empty() {
                return;
            }
            let pending = std::mem::take(&mut st.earlier_pushes);
            for (host, i) in pending {
                if st.superseded(&host, &i.vm) {
                    settled.push((i.id, PushOutcome::Lost));
                    continue;
                }
                let arrived = st.vms.get(&i.vm).is_some_and(|v| {
                    v.host == host
                        && i.keys
                            .iter()
                            .all(|k| v.report.keys.iter().any(|hk| &hk.key == k && hk.on_host))
                });
                if !arrived {
                    st.earlier_pushes.push((host, i));
                    continue;
                }
                settled.push((i.id, PushOutcome::Done));
                rows.extend(self.record_earlier_push(&mut st, &host, &i));
            }
        }
        self.settle(settled, rows, Vec::new()).await;
    }

    /// Reads the registry from the store again: a standby server follows what the leader
    /// registers, and takes the registry as it is when it takes over.
    pub fn reload_registry(&self) {
        if let Some(store) = &self.store {
            match store.registrations() {
                Ok(r) => self.state().registry = Registry::new(r),
                Err(e) => tracing::error!(error = %e, "cannot read the registry again"),
            }
        }
    }

    /// The registration of a VM.
    pub fn registration(&self, name: &str) -> Option<Registration> {
        self.state().registry.get(name).cloned()
    }

    /// Whether `reg` may be registered (see [`Registry::check`]).
    pub fn check_registration(
        &self,
        reg: &Registration,
    ) -> Result<(), tresor_core::registry::Conflict> {
        self.state().registry.check(reg)
    }

    /// Registers a VM (or changes its registration): written to the store first, then taken
    /// by the engine. What its host reported of it before is looked at again.
    pub fn register(&self, reg: Registration) -> Result<(), crate::store::StoreError> {
        if let Some(store) = &self.store {
            store.put_registration(&reg)?;
        }
        let host = reg.host.clone();
        let name = reg.name.clone();
        self.state().registry.insert(reg);
        // A report of it that was held back as discovered is admitted now.
        let report = self
            .state()
            .discovered
            .get(&(host.clone(), name))
            .map(|d| d.report.clone());
        if let Some(report) = report {
            self.observe_report(&host, report);
        }
        Ok(())
    }

    /// The VMs hosts report that the registry does not admit, by host and name.
    pub fn discovered(&self) -> Vec<DiscoveredVm> {
        let mut d: Vec<DiscoveredVm> = self.state().discovered.values().cloned().collect();
        d.sort_by(|a, b| (&a.host, &a.report.name).cmp(&(&b.host, &b.report.name)));
        d
    }

    /// A discovered VM on `host` whose directory is `path`.
    pub fn discovered_at(&self, host: &str, path: &str) -> Option<DiscoveredVm> {
        self.state()
            .discovered
            .values()
            .find(|d| d.host == host && d.report.path == path)
            .cloned()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn config(&self) -> EngineConfig {
        self.config.lock().map(|c| c.clone()).unwrap_or_default()
    }

    pub fn set_policy(&self, policy: UnlockPolicy) {
        if let Ok(mut c) = self.config.lock() {
            c.policy = policy;
        }
        let mut st = self.state();
        let st = &mut *st;
        st.dirty.extend(st.vms.keys().cloned());
    }

    /// A VM as the engine sees it now.
    pub fn vm(&self, name: &str) -> Option<VmView> {
        self.state().vms.get(name).cloned()
    }

    /// How many distinct keys each host's VMs report as on the host.
    pub fn keys_held_by_host(&self) -> HashMap<String, usize> {
        let st = self.state();
        let mut held: HashMap<&str, HashSet<&KeyRef>> = HashMap::new();
        for v in st.vms.values() {
            let keys = held.entry(v.host.as_str()).or_default();
            keys.extend(v.report.keys.iter().filter(|k| k.on_host).map(|k| &k.key));
        }
        held.into_iter()
            .map(|(h, k)| (h.to_owned(), k.len()))
            .collect()
    }

    /// Forgets a VM that was unregistered or deleted.
    pub fn forget(&self, name: &str) {
        let mut st = self.state();
        st.registry.remove(name);
        if let Some(v) = st.vms.remove(name) {
            st.unindex(name, &v.host, &key_refs(&v.report));
        }
    }

    /// The keys a VM's host lacks, as it last reported.
    pub fn missing_keys(&self, name: &str) -> Vec<KeyRef> {
        self.state()
            .vms
            .get(name)
            .map(|v| {
                v.report
                    .keys
                    .iter()
                    .filter(|k| !k.on_host)
                    .map(|k| k.key.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Takes a provider's answer the API got for a key (and its material, for the push that
    /// follows), as if the engine had asked.
    pub fn take_answer(&self, key: &KeyRef, answer: ProviderAnswer, material: Option<SecretBytes>) {
        let config = self.config();
        self.book(key, answer, material, &config);
    }

    /// Every event so far, oldest first.
    pub fn events(&self) -> Vec<EventRecord> {
        self.state().events.clone()
    }

    /// Asks for a VM to be unlocked (the `manual` policy waits for this). The provider is asked
    /// again at once, unless its answer is fresh (the API has just asked it).
    pub fn request_unlock(&self, name: &str, by: &str) -> bool {
        let fresh = self.config().answer_fresh;
        let mut st = self.state();
        let keys: Vec<KeyRef> = match st.vms.get_mut(name) {
            Some(v) => {
                v.unlock_requested = true;
                v.unlock_by = Some(by.to_owned());
                v.report
                    .keys
                    .iter()
                    .filter(|k| !k.on_host)
                    .map(|k| k.key.clone())
                    .collect()
            }
            None => return false,
        };
        for k in keys {
            if let Some(s) = st.keys.get_mut(&k) {
                if s.last_attempt.is_none_or(|t| t.elapsed() >= fresh) {
                    s.last_attempt = None;
                }
            }
        }
        st.dirty.insert(name.to_owned());
        drop(st);
        self.wake.notify_one();
        true
    }

    fn record(
        &self,
        st: &mut State,
        event: EventType,
        vm: Option<&str>,
        host: Option<&str>,
        args: Vec<(String, String)>,
    ) {
        self.record_by(st, event, vm, host, None, args)
    }

    /// Records an event a user caused.
    fn record_by(
        &self,
        st: &mut State,
        event: EventType,
        vm: Option<&str>,
        host: Option<&str>,
        user: Option<&str>,
        args: Vec<(String, String)>,
    ) {
        if let Some(row) = self.record_row(st, event, vm, host, user, args) {
            // Written in batches by `flush_events`, one transaction for a pass's events.
            st.unwritten.push(row);
        }
    }

    /// Records an event in memory (and the log); its row for the store, which the caller
    /// writes.
    fn record_row(
        &self,
        st: &mut State,
        event: EventType,
        vm: Option<&str>,
        host: Option<&str>,
        user: Option<&str>,
        args: Vec<(String, String)>,
    ) -> Option<EventRow> {
        st.next_event += 1;
        let record = EventRecord {
            id: st.next_event,
            time: std::time::SystemTime::now(),
            event,
            vm: vm.map(str::to_owned),
            host: host.map(str::to_owned),
            args,
        };
        tracing::info!(event = event.id, vm, host, "{}", record.message(Lang::En));
        let row = self.store.is_some().then(|| EventRow {
            id: 0,
            time: crate::enrol::now(),
            event_type: event.id.into(),
            severity: event.severity.as_str().to_owned(),
            vm: record.vm.clone(),
            host: record.host.clone(),
            provider: None,
            user: user.map(str::to_owned),
            args: record.args.clone(),
        });
        st.events.push(record);
        // The recent ones in memory; the store has them all.
        if st.events.len() > MEMORY_EVENTS {
            let excess = st.events.len() - MEMORY_EVENTS / 2;
            st.events.drain(..excess);
        }
        row
    }

    /// Stores the events recorded since the last flush, then `vms` and `alarms`, on a thread
    /// that may block. What could not be written is tried again.
    async fn flush(&self, vms: Vec<VmRecord>, mut alarms: Vec<AlarmChange>) {
        let Some(store) = self.store.clone() else {
            return;
        };
        let rows = {
            let mut st = self.state();
            // Alarms raised outside a pass (discovered VMs) come first.
            let mut earlier = std::mem::take(&mut st.unwritten_alarms);
            earlier.append(&mut alarms);
            alarms = earlier;
            std::mem::take(&mut st.unwritten)
        };
        if rows.is_empty() && vms.is_empty() && alarms.is_empty() {
            return;
        }
        let written = tokio::task::spawn_blocking(move || {
            let events = match rows.is_empty() {
                true => Ok(()),
                false => store.add_events(&rows),
            };
            // In memory at once; in the database with the next `write_deferred`.
            store.put_vms_deferred(vms);
            if !alarms.is_empty() {
                if let Err(e) = store.change_alarms(&alarms, crate::enrol::now()) {
                    tracing::error!(error = %e, "cannot store the VMs' alarms");
                }
            }
            (rows, events)
        })
        .await;
        let Ok((rows, events)) = written else {
            return;
        };
        let mut st = self.state();
        if let Err(e) = events {
            tracing::error!(error = %e, "cannot store events; trying again");
            let later = std::mem::take(&mut st.unwritten);
            st.unwritten = rows;
            st.unwritten.extend(later);
        }
    }

    /// Writes the VM states taken since the last time to the database (at most once a
    /// second: in a storm a VM changes state several times a second), beside the engine's
    /// loop: the states are in memory already (the API answers from there), and 40,000 of them
    /// take PostgreSQL seconds to write, which the next pass must not wait for. One write at a
    /// time, so that each VM's states reach the database in order.
    fn write_states(&self) {
        let Some(store) = self.store.clone() else {
            return;
        };
        {
            let mut last = self.last_write.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return;
            }
            if self.writing_states.swap(true, Ordering::SeqCst) {
                return;
            }
            *last = Some(Instant::now());
        }
        let writing = self.writing_states.clone();
        tokio::spawn(async move {
            match tokio::task::spawn_blocking(move || store.write_deferred()).await {
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot store the VMs' states; trying again")
                }
                Ok(Ok(n)) if n > 0 => {
                    tracing::debug!(target: "tresor_server::engine::pass", vms = n, "VM states written")
                }
                _ => {}
            }
            writing.store(false, Ordering::SeqCst);
        });
    }

    /// Notes the VM's locked alarm changes, and its record when it changed, for the pass to
    /// write in one transaction.
    fn persist(
        &self,
        view: &mut VmView,
        actions: &[Action],
        pending: &mut Vec<VmRecord>,
        alarms: &mut Vec<AlarmChange>,
    ) {
        if self.store.is_none() {
            return;
        }
        for a in actions {
            match a {
                Action::RaiseAlarm { reason } => alarms.push(AlarmChange::Raise {
                    kind: "vm.locked",
                    object: format!("vm:{}", view.report.name),
                    reason: reason.as_str().to_owned(),
                }),
                Action::ClearAlarm => alarms.push(AlarmChange::Clear {
                    kind: "vm.locked",
                    object: format!("vm:{}", view.report.name),
                }),
                _ => {}
            }
        }
        if !view.unwritten {
            return;
        }
        view.unwritten = false;
        use tresor_core::vm::{ConnectionState, CryptoState};
        let (crypto_state, connection_state, lock_reason) =
            match (&view.verdict, view.report.encrypted) {
                (_, false) => (CryptoState::Unencrypted, ConnectionState::Connected, None),
                (Some(v), true) => (v.crypto_state, v.connection_state, v.lock_reason),
                (None, true) => (CryptoState::Unlocked, ConnectionState::Connected, None),
            };
        pending.push(VmRecord {
            id: view.report.id.clone(),
            name: view.report.name.clone(),
            host: view.host.clone(),
            path: view.report.path.clone(),
            encrypted: view.report.encrypted,
            key_provider: view.report.key_id.as_ref().map(|k| k.provider().to_owned()),
            key_id: view.report.key_id.as_ref().map(|k| k.key_id.clone()),
            power_state: view.report.power_state,
            crypto_state,
            connection_state: if view.host_connected {
                connection_state
            } else {
                ConnectionState::Disconnected
            },
            lock_reason,
            report: serde_json::to_string(&*view.report).unwrap_or_default(),
        });
    }

    /// Takes in what an agent said.
    pub fn observe(&self, event: &HubEvent) {
        let mut guard = self.state();
        let st = &mut *guard;
        match event {
            HubEvent::Inventory { host, vms, seq, .. } => {
                if st.hosts_connected.insert(host.clone(), true) != Some(true) {
                    Self::host_changed(st, host);
                }
                // An agent reports all its VMs: what it no longer reports is no longer
                // discovered there.
                let reported: HashSet<&str> = vms.iter().map(|r| r.name.as_str()).collect();
                let gone: Vec<String> = st
                    .discovered
                    .keys()
                    .filter(|(h, n)| h == host && !reported.contains(n.as_str()))
                    .map(|(_, n)| n.clone())
                    .collect();
                for name in gone {
                    st.undiscover(host, &name);
                }
                for report in vms {
                    self.take_report(st, host, *seq, report);
                }
            }
            HubEvent::Connected { host, .. } => {
                if st.hosts_connected.insert(host.clone(), true) != Some(true) {
                    Self::host_changed(st, host);
                }
                // Every session that starts is an event (a reconnect after a short drop too).
                let args = vec![("host".to_owned(), host.clone())];
                self.record(
                    st,
                    tresor_core::events::HOST_CONNECTED,
                    None,
                    Some(host),
                    args,
                );
            }
            HubEvent::Disconnected { host } => {
                if st.hosts_connected.insert(host.clone(), false) != Some(false) {
                    Self::host_changed(st, host);
                }
                let args = vec![("host".to_owned(), host.clone())];
                self.record(
                    st,
                    tresor_core::events::HOST_DISCONNECTED,
                    None,
                    Some(host),
                    args,
                );
            }
            HubEvent::Notice {
                host,
                vm: Some(vm),
                kind,
                message,
            } => {
                // Only about a VM registered on that host.
                if st.registry.get(vm).is_none_or(|r| &r.host != host) {
                    return;
                }
                let object = format!("vm:{vm}");
                match kind.as_str() {
                    "operation.failing" => {
                        tracing::error!(host, vm, "{message}");
                        st.unwritten_alarms.push(AlarmChange::Raise {
                            kind: "vm.operation.failing",
                            object,
                            reason: message.chars().take(1000).collect(),
                        });
                    }
                    "vm.stopped" => {
                        let args = vec![
                            ("vm".to_owned(), vm.clone()),
                            ("host".to_owned(), host.clone()),
                        ];
                        self.record(
                            st,
                            tresor_core::events::VM_STOPPED,
                            Some(vm),
                            Some(host),
                            args,
                        );
                    }
                    "operation.finished" => {
                        tracing::info!(host, vm, "{message}");
                        st.unwritten_alarms.push(AlarmChange::Clear {
                            kind: "vm.operation.failing",
                            object,
                        });
                    }
                    _ => {}
                }
            }
            HubEvent::Notice { .. } => {}
            // The tasks follow these.
            HubEvent::TaskProgress { .. } | HubEvent::TaskReply { .. } => {}
        }
    }

    /// Takes in one VM a host reported outside its inventory (the answer to a request).
    pub fn observe_report(&self, host: &str, report: Arc<VmReport>) {
        let seq = self.hub.seq();
        let mut guard = self.state();
        self.take_report(&mut guard, host, seq, &report);
    }

    /// One VM's report: taken when the registry admits it, held back as discovered when not.
    fn take_report(&self, st: &mut State, host: &str, seq: u64, report: &Arc<VmReport>) {
        let name = &report.name;
        if let Err(reason) = st.registry.admit(host, report) {
            if st.discover(host, report, reason.clone()) {
                tracing::warn!(host, vm = %name, id = %report.id, %reason, "a host reports a VM the registry does not admit");
                let args = vec![
                    ("vm".to_owned(), name.clone()),
                    ("host".to_owned(), host.to_owned()),
                    ("path".to_owned(), report.path.clone()),
                    ("reason".to_owned(), reason.to_string()),
                ];
                self.record(
                    st,
                    tresor_core::events::VM_DISCOVERED,
                    Some(name),
                    Some(host),
                    args,
                );
            }
            return;
        }
        st.undiscover(host, name);
        let old = match st.vms.get_mut(name) {
            Some(view) => {
                // A report older than a push of keys to the host (it waited in a queue while
                // the push went on) does not undo the push.
                let mut report = report.clone();
                if seq < view.pushed_seq && view.host == host {
                    for hk in Arc::make_mut(&mut report).keys.iter_mut() {
                        if !hk.on_host
                            && view
                                .report
                                .keys
                                .iter()
                                .any(|k| k.key == hk.key && k.on_host)
                        {
                            hk.on_host = true;
                        }
                    }
                }
                if view.report == report && view.host == host && view.host_connected {
                    return;
                }
                let old = (view.host.clone(), key_refs(&view.report));
                view.report = report;
                view.host = host.to_owned();
                view.host_connected = true;
                view.unwritten = true;
                Some(old)
            }
            None => {
                st.vms.insert(
                    name.clone(),
                    VmView {
                        report: report.clone(),
                        host: host.to_owned(),
                        host_connected: true,
                        verdict: None,
                        published: Published::default(),
                        unlock_requested: false,
                        unlock_by: None,
                        push_failed: false,
                        pushed_seq: 0,
                        unwritten: true,
                    },
                );
                None
            }
        };
        let keys = key_refs(report);
        st.index(
            name,
            old.as_ref().map(|(h, k)| (h.as_str(), k.as_slice())),
            host,
            &keys,
        );
        st.dirty.insert(name.clone());
    }

    /// A host came or went: its VMs are looked at in the next pass.
    fn host_changed(st: &mut State, host: &str) {
        if let Some(vms) = st.by_host.get(host) {
            st.dirty.extend(vms.iter().cloned());
        }
    }

    /// Takes every connected host's last reports, and which hosts are connected, from the hub.
    fn catch_up(&self) {
        for (host, seq, vms) in self.hub.inventories() {
            self.observe(&HubEvent::Inventory {
                host,
                seq,
                vms,
                keys_held: Vec::new(),
            });
        }
        let connected: HashSet<String> = self.hub.connected().into_iter().collect();
        let mut guard = self.state();
        let st = &mut *guard;
        let hosts: Vec<String> = st.hosts_connected.keys().cloned().collect();
        for h in hosts {
            let now = connected.contains(&h);
            if st.hosts_connected.insert(h.clone(), now) != Some(now) {
                Self::host_changed(st, &h);
            }
        }
        for h in connected {
            if st.hosts_connected.insert(h.clone(), true) != Some(true) {
                Self::host_changed(st, &h);
            }
        }
    }

    /// One pass over every VM: decide, then act. Waits for a pass under way to end first.
    pub async fn tick(&self) {
        self.tick_with(&mut || {}).await
    }

    /// Takes the VM a host answered a request with, and decides for it at once (see
    /// [`Engine::decide_now`]).
    pub async fn observe_now(&self, host: &str, report: VmReport) {
        let name = report.name.clone();
        self.observe_report(host, Arc::new(report));
        self.decide_now(&[name]).await;
    }

    /// Decides for the VMs `names` at once, from what was observed of them, and writes their
    /// states and events (the API answers right after from what it wrote); the fetches and
    /// pushes they need are left to the engine's loop, which is woken for them. A request does
    /// not run a pass of its own: one may be under way, acting on these very VMs.
    pub async fn decide_now(&self, names: &[String]) {
        let config = self.config();
        let (mut pending, mut alarms) = (Vec::new(), Vec::new());
        let mut plans = Vec::new();
        self.decide(
            names,
            &config,
            Instant::now(),
            &mut plans,
            &mut pending,
            &mut alarms,
        );
        if !plans.is_empty() {
            // Decided again, and acted on, by the loop.
            let mut st = self.state();
            st.dirty.extend(plans.into_iter().map(|(name, _)| name));
        }
        self.flush(pending, alarms).await;
        self.wake.notify_one();
    }

    /// A tick whose passes take in what agents said with `intake` while their fetches and
    /// pushes are under way.
    async fn tick_with(&self, intake: &mut (dyn FnMut() + Send)) {
        let _passing = self.passing.lock().await;
        let config = self.config();
        self.check_down_providers(&config).await;
        self.watch_providers(&config).await;
        self.settle_observed_pushes().await;
        // VMs a pass left to the next one while their keys were under way are decided again
        // at once, not a tick later.
        for _ in 0..4 {
            if !self.pass(&config, intake).await {
                break;
            }
        }
        self.write_states();
        if let Ok(mut t) = self.last_pass.lock() {
            *t = Some(Instant::now());
        }
    }

    /// How long ago the last pass ended, if one has.
    pub fn since_last_pass(&self) -> Option<Duration> {
        self.last_pass
            .lock()
            .ok()
            .and_then(|t| t.map(|t| t.elapsed()))
    }

    /// Decides for the VMs `names`: their verdicts, events and alarms, the states to write,
    /// and the fetches and pushes to carry out.
    fn decide(
        &self,
        names: &[String],
        config: &EngineConfig,
        now: Instant,
        plans: &mut Vec<(String, Vec<Action>)>,
        pending: &mut Vec<VmRecord>,
        alarms: &mut Vec<AlarmChange>,
    ) {
        let mut guard = self.state();
        let st = &mut *guard;
        let mut to_record = Vec::new();
        let keys = &st.keys;
        let hosts_connected = &st.hosts_connected;
        for name in names {
            let Some(view) = st.vms.get_mut(name) else {
                continue;
            };
            if let Some(c) = hosts_connected.get(&view.host) {
                if view.host_connected != *c {
                    view.host_connected = *c;
                    view.unwritten = true;
                }
            }
            let observations: Vec<KeyObservation> = view
                .report
                .keys
                .iter()
                .map(|k| KeyObservation {
                    key: k.key.clone(),
                    uses: k.uses.clone(),
                    on_host: k.on_host,
                    provider: keys
                        .get(&k.key)
                        .map(|s| s.answer.clone())
                        .unwrap_or(ProviderAnswer::NotAsked),
                })
                .collect();
            // Answers too old to decide from: a few seconds to decide a new lock, longer to
            // keep a lock's cause.
            let bound = if view.published.locked.is_none() {
                config.answer_fresh
            } else {
                config.locked_recheck
            };
            let stale: Vec<KeyRef> = observations
                .iter()
                .filter(|o| !o.on_host && o.provider == ProviderAnswer::Active)
                .filter(|o| {
                    keys.get(&o.key)
                        .and_then(|s| s.last_attempt)
                        .is_none_or(|t| now.duration_since(t) >= bound)
                })
                .map(|o| o.key.clone())
                .collect();
            let input = VmState {
                name: name.clone(),
                host: view.host.clone(),
                host_connected: view.host_connected,
                encrypted: view.report.encrypted,
                keys: observations,
                published: view.published,
                unlock_requested: view.unlock_requested,
                push_failed: view.push_failed,
                stale,
            };
            let due = |k: &KeyRef| match keys.get(k) {
                Some(s) => s
                    .last_attempt
                    .is_none_or(|t| now.duration_since(t) >= s.backoff),
                None => true,
            };
            let decision = reconcile(&input, config.policy, due);
            for a in &decision.actions {
                if let Action::Event { event, reason } = a {
                    to_record.push((*event, *reason, name.clone(), view.host.clone()));
                }
            }
            if view.verdict != decision.verdict {
                view.verdict = decision.verdict;
                view.unwritten = true;
            }
            view.published = decision.published;
            if decision.actions.contains(&Action::UnlockDone) {
                view.unlock_requested = false;
                view.unlock_by = None;
            }
            self.persist(view, &decision.actions, pending, alarms);
            if decision
                .actions
                .iter()
                .any(|a| matches!(a, Action::Fetch { .. } | Action::Push { .. }))
            {
                plans.push((name.clone(), decision.actions));
            }
        }
        for (event, reason, name, host) in to_record {
            let args = reason
                .map(|r| vec![("reason".to_owned(), r.as_str().to_owned())])
                .unwrap_or_default();
            self.record(st, event, Some(&name), Some(&host), args);
        }
    }

    /// Decides for every VM whose inputs changed, then fetches and pushes. While fetches and
    /// pushes are under way, every [`INTAKE_EVERY`] `intake` takes in what agents said and
    /// the VMs that changed meanwhile are decided and acted on in the same pass (hosts that
    /// connect during a storm do not wait for its end); a VM whose keys are under way is left
    /// to the next pass. Says whether it fetched or pushed anything.
    async fn pass(&self, config: &EngineConfig, intake: &mut (dyn FnMut() + Send)) -> bool {
        let started = Instant::now();
        let mut round = Round::default();
        // VMs whose keys are being fetched or pushed in this pass.
        let mut busy: HashSet<String> = HashSet::new();
        let waiting = Mutex::new(Waiting::default());
        let mut chunks: std::collections::VecDeque<(String, Vec<KeyRef>)> = Default::default();
        let mut ready: std::collections::VecDeque<HostPush> = Default::default();
        let (mut pending, mut alarms) = (Vec::new(), Vec::new());
        let mut fetching = futures_util::stream::FuturesUnordered::new();
        let mut pushing = futures_util::stream::FuturesUnordered::new();
        // The pushes' settlements being written: waited for when the pass ends, not by the
        // pushes (a push's slot is free when the host has answered).
        let mut settlements = Vec::new();
        self.take_round(
            config,
            &mut busy,
            &waiting,
            &mut chunks,
            &mut ready,
            &mut round,
        )
        .await;
        let decided = Instant::now();
        let mut next_intake = tokio::time::Instant::now() + INTAKE_EVERY;
        loop {
            while fetching.len() < CONCURRENT_REQUESTS {
                let Some((provider, keys)) = chunks.pop_front() else {
                    break;
                };
                fetching.push(self.fetch_and_decide(provider, keys, config, &waiting));
            }
            while pushing.len() < CONCURRENCY {
                let Some((host, batch)) = ready.pop_front() else {
                    break;
                };
                pushing.push(async move {
                    let settling = self.push(&host, &batch, config).await;
                    (
                        batch.into_iter().map(|(vm, _)| vm).collect::<Vec<_>>(),
                        settling,
                    )
                });
            }
            if fetching.is_empty() && pushing.is_empty() {
                break;
            }
            tokio::select! {
                Some(answered) = fetching.next(), if !fetching.is_empty() => {
                    let (vms, pushes, mut p, mut a) = answered;
                    // Those without a push to wait for are done in this pass.
                    let pushed: HashSet<&String> =
                        pushes.iter().flat_map(|(_, b)| b.iter().map(|(vm, _)| vm)).collect();
                    for vm in vms.iter().filter(|vm| !pushed.contains(vm)) {
                        busy.remove(vm);
                    }
                    ready.extend(pushes);
                    pending.append(&mut p);
                    alarms.append(&mut a);
                }
                Some((pushed, settling)) = pushing.next(), if !pushing.is_empty() => {
                    settlements.extend(settling);
                    // Their verdicts at once (unlocked, with their keys there), not after the
                    // whole pass; anything more they need, the next pass decides.
                    self.decide(&pushed, config, Instant::now(), &mut Vec::new(), &mut pending, &mut alarms);
                    for vm in &pushed {
                        busy.remove(vm);
                    }
                }
                _ = tokio::time::sleep_until(next_intake) => {
                    // What was decided so far is written now, not when the pass ends: one host
                    // that does not answer a push holds a pass until the push times out.
                    self.flush(std::mem::take(&mut pending), std::mem::take(&mut alarms)).await;
                    intake();
                    self.take_round(config, &mut busy, &waiting, &mut chunks, &mut ready, &mut round)
                        .await;
                    tracing::debug!(
                        target: "tresor_server::engine::pass",
                        ms = started.elapsed().as_millis() as u64,
                        fetches_queued = chunks.len(),
                        fetching = fetching.len(),
                        pushes_queued = ready.len(),
                        pushing = pushing.len(),
                        busy = busy.len(),
                        "intake"
                    );
                    // A long pass is a working engine.
                    if let Ok(mut t) = self.last_pass.lock() {
                        *t = Some(Instant::now());
                    }
                    next_intake = tokio::time::Instant::now() + INTAKE_EVERY;
                }
            }
        }
        self.flush(pending, alarms).await;
        for written in settlements {
            let _ = written.await;
        }
        if round.fetches + round.pushes > 0 || round.written > 0 {
            tracing::debug!(
                target: "tresor_server::engine::pass",
                vms_written = round.written,
                fetches = round.fetches,
                pushes = round.pushes,
                rounds = round.rounds,
                decide_ms = decided.duration_since(started).as_millis() as u64,
                act_ms = decided.elapsed().as_millis() as u64,
                "engine pass"
            );
        }
        round.fetches + round.pushes > 0
    }

    /// Decides for the VMs whose inputs changed, but those in `busy` (left marked for the next
    /// pass), writes what changed, and adds their fetches (a host's keys in the same request
    /// where they fit; a key already asked for in this pass is not asked for again) and pushes
    /// to the pass's queues.
    async fn take_round(
        &self,
        config: &EngineConfig,
        busy: &mut HashSet<String>,
        waiting: &Mutex<Waiting>,
        chunks: &mut std::collections::VecDeque<(String, Vec<KeyRef>)>,
        ready: &mut std::collections::VecDeque<HostPush>,
        round: &mut Round,
    ) {
        let now = Instant::now();
        let mut pending: Vec<VmRecord> = Vec::new();
        let mut alarms: Vec<AlarmChange> = Vec::new();
        let dirty: Vec<String> = {
            let mut guard = self.state();
            let st = &mut *guard;
            // Keys whose backoff ran out since the last pass: their VMs may fetch or push again.
            // Keys whose answer grew too old to keep a lock's cause: their VMs ask again.
            let mut woken = Vec::new();
            for (k, status) in st.keys.iter_mut() {
                let age = status.last_attempt.map(|t| now.duration_since(t));
                let due = age.is_none_or(|a| a >= status.backoff);
                if due && !status.woken {
                    status.woken = true;
                    woken.push(k.clone());
                }
                if age.is_some_and(|a| a >= config.locked_recheck) && !status.rechecked {
                    status.rechecked = true;
                    woken.push(k.clone());
                }
            }
            for k in &woken {
                st.wake_key(k);
            }
            let (later, now): (Vec<String>, Vec<String>) = std::mem::take(&mut st.dirty)
                .into_iter()
                .partition(|vm| busy.contains(vm));
            st.dirty.extend(later);
            now
        };
        if dirty.is_empty() {
            return;
        }
        round.rounds += 1;
        // Decided a few thousand at a time, letting the API and the agents' sessions in between.
        let mut plans: Vec<(String, Vec<Action>)> = Vec::new();
        for chunk in dirty.chunks(DECIDE_CHUNK) {
            self.decide(chunk, config, now, &mut plans, &mut pending, &mut alarms);
            tokio::task::yield_now().await;
        }
        // The events, every VM whose state changed and their alarms, one transaction each,
        // away from the tasks that serve agents and the API.
        round.written += pending.len();
        self.flush(pending, alarms).await;
        let mut fetches: Vec<(String, KeyRef)> = Vec::new();
        let mut pushes: HashMap<String, Vec<(String, Vec<KeyRef>)>> = HashMap::new();
        {
            let st = self.state();
            let mut waiting = waiting.lock().unwrap_or_else(|p| p.into_inner());
            for (name, actions) in plans {
                let host = st
                    .vms
                    .get(&name)
                    .map(|v| v.host.clone())
                    .unwrap_or_default();
                for action in actions {
                    match action {
                        Action::Fetch { key } => {
                            busy.insert(name.clone());
                            if waiting.wait(&name, &key) {
                                fetches.push((host.clone(), key));
                            }
                        }
                        Action::Push { host, keys } => {
                            busy.insert(name.clone());
                            pushes.entry(host).or_default().push((name.clone(), keys))
                        }
                        _ => {}
                    }
                }
            }
        }
        fetches.sort();
        round.fetches += fetches.len();
        round.pushes += pushes.len();
        ready.extend(pushes);
        // Many keys of one provider per KMIP message.
        let mut by_provider: HashMap<String, Vec<KeyRef>> = HashMap::new();
        for (_, k) in fetches {
            by_provider
                .entry(k.provider().to_owned())
                .or_default()
                .push(k);
        }
        for (provider, keys) in by_provider {
            for c in keys.chunks(KEYS_PER_REQUEST) {
                chunks.push_back((provider.clone(), c.to_vec()));
            }
        }
    }

    /// Fetches `keys` of `provider`, then decides again at once for the VMs that wait for
    /// nothing more: those VMs, their hosts' pushes, and the VM states and alarms to write.
    /// What else they need, the next pass decides (their keys' answers marked them for it).
    async fn fetch_and_decide(
        &self,
        provider: String,
        keys: Vec<KeyRef>,
        config: &EngineConfig,
        waiting: &Mutex<Waiting>,
    ) -> (Vec<String>, Vec<HostPush>, Vec<VmRecord>, Vec<AlarmChange>) {
        self.fetch_many(&provider, &keys, config).await;
        let vms = waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .answered(&keys);
        let mut plans = Vec::new();
        let (mut pending, mut alarms) = (Vec::new(), Vec::new());
        if !vms.is_empty() {
            self.decide(
                &vms,
                config,
                Instant::now(),
                &mut plans,
                &mut pending,
                &mut alarms,
            );
        }
        let mut by_host: HashMap<String, Vec<(String, Vec<KeyRef>)>> = HashMap::new();
        for (name, actions) in plans {
            for action in actions {
                if let Action::Push { host, keys } = action {
                    by_host.entry(host).or_default().push((name.clone(), keys));
                }
            }
        }
        (vms, by_host.into_iter().collect(), pending, alarms)
    }

    /// Asks each provider that did not answer, when its wait is over, whether it answers now;
    /// when it does, its keys are due at once.
    async fn check_down_providers(&self, config: &EngineConfig) {
        let now = Instant::now();
        let due: Vec<String> = self
            .state()
            .down
            .iter()
            .filter(|(_, w)| w.next_check <= now)
            .map(|(p, _)| p.clone())
            .collect();
        for provider in due {
            let back = self.broker.probe(&provider).await.is_ok();
            let mut st = self.state();
            if back {
                Self::provider_back(&mut st, &provider);
            } else if let Some(w) = st.down.get_mut(&provider) {
                w.backoff = (w.backoff * 2).min(config.provider_check_max);
                w.next_check = Instant::now() + w.backoff;
            }
        }
    }

    /// Probes, every `provider_watch`, each provider that has keys locked VMs wait for, so that
    /// their cause follows it: one that stops answering has its keys' answers become
    /// unreachable (`kmsClusterError`), and is watched until it answers again.
    async fn watch_providers(&self, config: &EngineConfig) {
        let providers: Vec<String> = {
            let mut st = self.state();
            let now = Instant::now();
            if st
                .last_watch
                .is_some_and(|t| now.duration_since(t) < config.provider_watch)
            {
                return;
            }
            st.last_watch = Some(now);
            let st = &*st;
            let mut set: HashSet<String> = HashSet::new();
            for (k, status) in &st.keys {
                if status.answer != ProviderAnswer::Active
                    || st.down.contains_key(k.provider())
                    || set.contains(k.provider())
                {
                    continue;
                }
                let waiting = st.by_key.get(k).is_some_and(|vms| {
                    vms.iter().any(|n| {
                        st.vms.get(n).is_some_and(|v| {
                            v.published.locked.is_some()
                                && v.report.keys.iter().any(|hk| &hk.key == k && !hk.on_host)
                        })
                    })
                });
                if waiting {
                    set.insert(k.provider().to_owned());
                }
            }
            set.into_iter().collect()
        };
        for provider in providers {
            if let Err(error) = self.broker.probe(&provider).await {
                tracing::warn!(provider = %provider, error = %error, "a key provider that locked VMs wait for stopped answering");
                let keys: Vec<KeyRef> = self
                    .state()
                    .keys
                    .keys()
                    .filter(|k| k.provider() == provider)
                    .cloned()
                    .collect();
                for k in keys {
                    self.book(&k, ProviderAnswer::Unreachable(error.clone()), None, config);
                }
            }
        }
    }

    /// A provider that did not answer answers again: every key it failed on is due at once
    /// (whatever its own backoff), and their VMs are looked at.
    fn provider_back(st: &mut State, provider: &str) {
        if st.down.remove(provider).is_none() {
            return;
        }
        tracing::info!(provider = %provider, "key provider answers again");
        let mut due = Vec::new();
        for (k, status) in st.keys.iter_mut() {
            if k.provider() == provider && matches!(status.answer, ProviderAnswer::Unreachable(_)) {
                status.last_attempt = None;
                status.backoff = Duration::ZERO;
                status.woken = true;
                due.push(k.clone());
            }
        }
        for k in &due {
            st.wake_key(k);
        }
    }

    async fn fetch_many(&self, provider: &str, keys: &[KeyRef], config: &EngineConfig) {
        let answers = self.broker.fetch_many(provider, keys).await;
        for (key, (answer, material)) in keys.iter().zip(answers) {
            self.book(key, answer, material, config);
        }
    }

    /// Books a provider's answer for a key (and its material until it is pushed).
    fn book(
        &self,
        key: &KeyRef,
        answer: ProviderAnswer,
        material: Option<SecretBytes>,
        config: &EngineConfig,
    ) {
        let mut st = self.state();
        let previous = st
            .keys
            .get(key)
            .map(|s| s.backoff)
            .unwrap_or(Duration::ZERO);
        // Ask a failing provider again after a doubling wait; a good answer resets it. A key
        // that is missing or inactive is asked for at least as often as a locked VM's keys are
        // rechecked, so that its reactivation is noticed.
        let backoff = if answer == ProviderAnswer::Active || previous.is_zero() {
            config.min_backoff
        } else {
            let longest = match answer {
                ProviderAnswer::NotFound | ProviderAnswer::NotActive(_) => {
                    config.max_backoff.min(config.locked_recheck)
                }
                _ => config.max_backoff,
            };
            (previous * 2).min(longest)
        };
        if let ProviderAnswer::Unreachable(e) = &answer {
            // Said once per provider, not once per key (there may be tens of thousands).
            if !st.down.contains_key(key.provider()) {
                tracing::warn!(provider = key.provider(), key = %key, error = %e, "key provider unreachable");
                let first = config.min_backoff.min(config.provider_check_max);
                st.down.insert(
                    key.provider().to_owned(),
                    ProviderWatch {
                        next_check: Instant::now() + first,
                        backoff: first,
                    },
                );
            }
        } else {
            Self::provider_back(&mut st, key.provider());
        }
        st.keys.insert(
            key.clone(),
            KeyStatus {
                answer,
                last_attempt: Some(Instant::now()),
                backoff,
                woken: false,
                rechecked: false,
            },
        );
        st.wake_key(key);
        if let Some(m) = material {
            st.fetched.insert(key.clone(), m);
        }
    }

    /// Sends one host the keys of several of its VMs in one request, and books the result for
    /// each VM: its keys count as there, or its push failed (an alarm until one succeeds).
    /// Pushes `batch`'s keys to `host`; the settlement's receiver (see [`Engine::settle_later`]),
    /// which the caller need not wait for before it counts the keys as there.
    async fn push(
        &self,
        host: &str,
        batch: &[(String, Vec<KeyRef>)],
        config: &EngineConfig,
    ) -> Option<tokio::sync::oneshot::Receiver<()>> {
        // Keys go only to the host a VM is registered on, and only the keys it was registered
        // with (the decisions come from admitted reports; this is the last check before keys
        // leave).
        let batch: Vec<(String, Vec<KeyRef>)> = {
            let st = self.state();
            batch
                .iter()
                .filter(|(vm, keys)| {
                    let ok = st
                        .registry
                        .get(vm)
                        .is_some_and(|r| r.host == host && keys.iter().all(|k| r.keys.contains(k)));
                    if !ok {
                        tracing::error!(vm = %vm, host, "refused to push keys the registry does not allow");
                    }
                    ok
                })
                .cloned()
                .collect()
        };
        let batch = &batch[..];
        let mut keys: Vec<KeyRef> = batch.iter().flat_map(|(_, k)| k.iter().cloned()).collect();
        keys.sort();
        keys.dedup();
        // Use what was just fetched; fetch again what was not.
        let missing: Vec<KeyRef> = {
            let st = self.state();
            keys.iter()
                .filter(|k| !st.fetched.contains_key(*k))
                .cloned()
                .collect()
        };
        let mut by_provider: HashMap<&str, Vec<KeyRef>> = HashMap::new();
        for k in &missing {
            by_provider.entry(k.provider()).or_default().push(k.clone());
        }
        for (provider, keys) in by_provider {
            self.fetch_many(provider, &keys, config).await;
        }
        let materials: Vec<KeyMaterial> = {
            let mut st = self.state();
            keys.iter()
                .filter_map(|k| {
                    st.fetched.remove(k).map(|m| KeyMaterial {
                        key: k.clone(),
                        material: m,
                    })
                })
                .collect()
        };
        // Push only for the VMs whose keys are all at hand.
        let have: std::collections::HashSet<&KeyRef> = materials.iter().map(|m| &m.key).collect();
        let batch: Vec<&(String, Vec<KeyRef>)> = batch
            .iter()
            .filter(|(_, ks)| ks.iter().all(|k| have.contains(k)))
            .collect();
        if batch.is_empty() {
            return None;
        }
        // With several servers, the push is on record (fenced by the lease) before it leaves;
        // an earlier leader's push of these VMs' keys did not arrive (they are pushed again).
        let intents = match (&self.store, self.fencing_token()) {
            (Some(_), Some(token)) if config.record_pushes_at_once => {
                let lost: Vec<(i64, PushOutcome)> = {
                    let mut st = self.state();
                    let (lost, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut st.earlier_pushes)
                        .into_iter()
                        .partition(|(h, i)| h == host && batch.iter().any(|(vm, _)| *vm == i.vm));
                    st.earlier_pushes = kept;
                    for (vm, _) in &batch {
                        st.pushed.insert((host.to_owned(), vm.clone()));
                    }
                    lost.into_iter()
                        .map(|(_, i)| (i.id, PushOutcome::Lost))
                        .collect()
                };
                let owned: Vec<(String, Vec<KeyRef>)> =
                    batch.iter().map(|b| (*b).clone()).collect();
                match self.intend(token, host, owned, lost).await {
                    Ok(Some(ids)) => Some(ids),
                    Ok(None) => {
                        tracing::warn!(host, "no keys pushed: another server leads now");
                        return None;
                    }
                    // Said once for the group in the log.
                    Err(()) => return None,
                }
            }
            _ => None,
        };
        let result = self
            .hub
            .request_seq(
                host,
                Command::PushKeys { keys: materials },
                config.request_timeout,
            )
            .await;
        let reply_seq = result.as_ref().map(|(_, seq)| *seq).unwrap_or(0);
        let result = result.map(|(reply, _)| reply);
        let ok = matches!(result, Ok(Reply::Done));
        let event = if ok {
            tresor_core::events::KEY_PUSHED
        } else {
            tresor_core::events::KEY_PUSH_FAILED
        };
        let error = match &result {
            Ok(Reply::Failed { message, .. }) => message.clone(),
            Err(e) => e.to_string(),
            _ => String::new(),
        };
        let mut alarms = Vec::new();
        let mut settled_rows = Vec::new();
        {
            let mut st = self.state();
            for (vm, vm_keys) in batch {
                let mut failed_before = false;
                let mut by = None;
                if let Some(v) = st.vms.get_mut(vm) {
                    by = v.unlock_by.clone();
                    failed_before = v.push_failed;
                    v.push_failed = !ok;
                    if ok {
                        v.pushed_seq = reply_seq;
                        // Until the host reports again, count the keys as there.
                        for hk in Arc::make_mut(&mut v.report)
                            .keys
                            .iter_mut()
                            .filter(|hk| vm_keys.contains(&hk.key))
                        {
                            hk.on_host = true;
                        }
                        // Written with the verdict this changes, in the next pass.
                    }
                    st.dirty.insert(vm.clone());
                }
                // A failed push is an alarm on the VM until a push succeeds.
                let object = format!("vm:{vm}");
                if ok && failed_before {
                    alarms.push(AlarmChange::Clear {
                        kind: "key.push.failed",
                        object,
                    });
                } else if !ok {
                    alarms.push(AlarmChange::Raise {
                        kind: "key.push.failed",
                        object,
                        reason: format!("keys could not be sent to host {host}: {error}"),
                    });
                }
                let cause = by
                    .clone()
                    .unwrap_or_else(|| "the automatic unlock policy".to_owned());
                for k in vm_keys {
                    let mut args = vec![
                        ("key".to_owned(), k.key_id.clone()),
                        ("host".to_owned(), host.to_owned()),
                        ("by".to_owned(), cause.clone()),
                    ];
                    if !ok {
                        args.push(("error".to_owned(), error.clone()));
                    }
                    let row =
                        self.record_row(&mut st, event, Some(vm), Some(host), by.as_deref(), args);
                    match (&intents, row) {
                        (Some(_), Some(row)) => settled_rows.push(row),
                        (None, Some(row)) => st.unwritten.push(row),
                        (_, None) => {}
                    }
                }
            }
        }
        let settled = match intents {
            Some(ids) => {
                let outcome = if ok {
                    PushOutcome::Done
                } else {
                    PushOutcome::Failed
                };
                ids.into_iter().map(|i| (i, outcome)).collect()
            }
            None => Vec::new(),
        };
        self.settle_later(settled, settled_rows, alarms)
    }

    /// Writes what hosts say of themselves when their agents connect and leave, off the
    /// engine's loop and in order: each batch that queued meanwhile in one transaction, so that
    /// thousands of hosts reconnecting cost a few commits, not one each.
    fn host_writer(&self) -> Option<tokio::sync::mpsc::UnboundedSender<crate::store::HostSeen>> {
        let store = self.store.clone()?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<crate::store::HostSeen>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while let Ok(next) = rx.try_recv() {
                    batch.push(next);
                }
                let store = store.clone();
                let written = tokio::task::spawn_blocking(move || store.hosts_seen(&batch)).await;
                if let Ok(Err(e)) = written {
                    tracing::error!(error = %e, "cannot record hosts' connections");
                }
            }
        });
        Some(tx)
    }

    /// What a hub event says of its host for [`Engine::host_writer`].
    fn host_seen(e: &HubEvent) -> Option<crate::store::HostSeen> {
        let at = crate::enrol::now();
        match e {
            HubEvent::Connected {
                host,
                boot_id,
                crypto_state,
                ..
            } => Some(crate::store::HostSeen {
                name: host.clone(),
                hello: Some((boot_id.clone(), *crypto_state)),
                at,
            }),
            HubEvent::Disconnected { host } => Some(crate::store::HostSeen {
                name: host.clone(),
                hello: None,
                at,
            }),
            _ => None,
        }
    }

    /// A host in encryption mode that comes back without its host key (it restarted) gets the
    /// same host key again.
    async fn restore_host_key(
        self: Arc<Self>,
        host: String,
        keys_held: Vec<KeyRef>,
        crypto_state: tresor_core::host::HostCryptoState,
    ) {
        use tresor_core::host::HostCryptoState as S;
        let Some(store) = self.store.clone() else {
            return;
        };
        if !matches!(crypto_state, S::Safe | S::Prepared) {
            return;
        }
        // One row, on a thread that may wait for the database, a few at a time.
        let name = host.clone();
        let permit = self.records.acquire().await;
        let Ok(Ok(Some(record))) = tokio::task::spawn_blocking(move || store.host(&name)).await
        else {
            return;
        };
        drop(permit);
        let (Some(provider), Some(id)) = (record.host_key_provider, record.host_key_id) else {
            return;
        };
        let key = KeyRef::new(&provider, &id);
        if keys_held.contains(&key) {
            return;
        }
        // The provider may be down now: try again with backoff while the host stays connected.
        let config = self.config();
        let mut backoff = config.min_backoff;
        for _ in 0..40 {
            if !self.hub.connected().contains(&host) {
                return;
            }
            let (answer, material) = self.broker.fetch(&key).await;
            if let Some(material) = material {
                let command = Command::EnableEncryption {
                    host_key: KeyMaterial {
                        key: key.clone(),
                        material,
                    },
                };
                match self
                    .hub
                    .request(&host, command, config.request_timeout)
                    .await
                {
                    Ok(Reply::Done) => {
                        tracing::info!(host = %host, "host key restored");
                        return;
                    }
                    other => {
                        tracing::warn!(host = %host, result = ?other, "cannot restore the host key")
                    }
                }
            } else {
                tracing::warn!(host = %host, key = %key, answer = ?answer, "cannot restore the host key yet");
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(config.max_backoff);
        }
    }

    /// Follows the hub and ticks until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        let mut events = self.hub.subscribe();
        // What a connection starts is started from a channel that loses nothing, beside the
        // loop (the events may lag behind a long pass, and are then caught up from the hosts'
        // last reports, which say nothing of their connections).
        let mut arrivals = self.hub.arrivals();
        let engine = self.clone();
        let _arrivals = AbortOnDrop(tokio::spawn(async move {
            while let Some(a) = arrivals.recv().await {
                if engine.config().record_pushes_at_once {
                    tokio::spawn(
                        engine
                            .clone()
                            .settle_earlier_pushes(a.host.clone(), a.keys_held.clone()),
                    );
                }
                tokio::spawn(
                    engine
                        .clone()
                        .restore_host_key(a.host, a.keys_held, a.crypto_state),
                );
            }
        }));
        let hosts_seen = self.host_writer();
        let take = |e: HubEvent| {
            self.observe(&e);
            if let (Some(tx), Some(seen)) = (&hosts_seen, Self::host_seen(&e)) {
                let _ = tx.send(seen);
            }
        };
        let lagged = |missed: u64| {
            // Events were lost: take the hosts' last reports instead.
            tracing::warn!(
                missed,
                "the engine fell behind the agents' reports; catching up"
            );
            self.catch_up();
        };
        use tokio::sync::broadcast::error::{RecvError, TryRecvError};
        let mut tick = tokio::time::interval(self.config().tick);
        loop {
            let pass = tokio::select! {
                e = events.recv() => {
                    match e {
                        Ok(e) => take(e),
                        Err(RecvError::Lagged(missed)) => lagged(missed),
                        Err(RecvError::Closed) => return,
                    }
                    false
                }
                _ = tick.tick() => true,
                _ = self.wake.notified() => true,
            };
            if pass {
                // Everything the agents said meanwhile, before the pass and while its fetches
                // and pushes are under way (during a storm, thousands of reports): a pass
                // decides from every report that came before it, not from the few the loop
                // took before the tick won. Bounded, so that agents that never stop talking
                // cannot hold the passes off.
                let mut intake = || {
                    for _ in 0..TAKEN_BEFORE_A_PASS {
                        match events.try_recv() {
                            Ok(e) => take(e),
                            Err(TryRecvError::Lagged(missed)) => lagged(missed),
                            Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                        }
                    }
                };
                intake();
                self.tick_with(&mut intake).await
            }
        }
    }

    /// The lock state of a VM in the terms of the surface: (cryptoState, connectionState,
    /// lockReason, powerState).
    pub fn summary(&self, name: &str) -> Option<(String, String, Option<LockReason>, PowerState)> {
        let v = self.vm(name)?;
        let (crypto, connection, reason) = match (&v.verdict, v.host_connected, v.report.encrypted)
        {
            (_, false, _) => (
                "unknown".to_owned(),
                "disconnected".to_owned(),
                v.published.locked,
            ),
            (_, true, false) => ("unencrypted".to_owned(), "connected".to_owned(), None),
            (Some(verdict), true, true) => (
                serde_json::to_value(verdict.crypto_state)
                    .ok()
                    .and_then(|s| s.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                serde_json::to_value(verdict.connection_state)
                    .ok()
                    .and_then(|s| s.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                verdict.lock_reason,
            ),
            (None, true, true) => ("unknown".to_owned(), "connected".to_owned(), None),
        };
        Some((crypto, connection, reason, v.report.power_state))
    }
}

/// Ends a task when the future that started it is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a pass did, for its log line.
#[derive(Default)]
struct Round {
    rounds: usize,
    written: usize,
    fetches: usize,
    pushes: usize,
}

/// A host and the VMs whose keys one push sends it, with their keys.
type HostPush = (String, Vec<(String, Vec<KeyRef>)>);

/// The VMs of a pass that wait for keys being fetched, and which keys each still waits for.
#[derive(Default)]
struct Waiting {
    /// How many of its keys each VM still waits for.
    vms: HashMap<String, usize>,
    /// The VMs waiting for each key.
    keys: HashMap<KeyRef, Vec<String>>,
}

impl Waiting {
    /// Notes that `vm` waits for `key`; says whether the key is to be asked for (nobody in
    /// the pass waits for it yet).
    fn wait(&mut self, vm: &str, key: &KeyRef) -> bool {
        let new = !self.keys.contains_key(key);
        let waiters = self.keys.entry(key.clone()).or_default();
        if !waiters.iter().any(|v| v == vm) {
            waiters.push(vm.to_owned());
            *self.vms.entry(vm.to_owned()).or_default() += 1;
        }
        new
    }

    /// Takes the answers for `keys`: the VMs that wait for nothing more now.
    fn answered(&mut self, keys: &[KeyRef]) -> Vec<String> {
        let mut ready = Vec::new();
        for k in keys {
            for vm in self.keys.remove(k).unwrap_or_default() {
                if let Some(n) = self.vms.get_mut(&vm) {
                    *n -= 1;
                    if *n == 0 {
                        self.vms.remove(&vm);
                        ready.push(vm);
                    }
                }
            }
        }
        ready
    }
}
