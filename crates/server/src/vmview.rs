//! The server's view of the VMs in memory: each VM's record as last written or taken, with its
//! API rendering made once per change, and the states taken but not written yet. The VM list and
//! the engine read it far more often than it changes (every `vm list`, every pass of the engine),
//! and with tens of thousands of VMs reading the table back each time would dominate the
//! server's work. Nothing here speaks SQL: the store writes, and tells the view what it wrote.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use tresor_core::vm::CryptoState;

use crate::store::VmRecord;

/// The VMs in memory.
#[derive(Default)]
pub struct VmView {
    /// Renders a VM for the API when it is taken, so that no request waits for it.
    render: OnceLock<fn(&VmRecord) -> String>,
    /// VM states taken and not written yet, by id.
    deferred: Mutex<HashMap<String, Arc<StoredVm>>>,
    vms: RwLock<VmCache>,
}

impl std::fmt::Debug for VmView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmView").finish_non_exhaustive()
    }
}

/// The VMs by name, and the name of each id.
#[derive(Default)]
struct VmCache {
    by_name: BTreeMap<String, Arc<StoredVm>>,
    names: HashMap<String, String>,
}

/// A VM as stored, with a slot for a rendering of it that stays valid as long as the record
/// does (a new record is a new `StoredVm`).
#[derive(Debug)]
pub struct StoredVm {
    pub record: VmRecord,
    pub rendered: OnceLock<String>,
}

impl StoredVm {
    /// The rendering, made once by `render`.
    pub fn rendered(&self, render: impl FnOnce(&VmRecord) -> String) -> &str {
        self.rendered.get_or_init(|| render(&self.record))
    }
}

impl VmView {
    /// The view of the VMs the database holds.
    pub fn load(records: Vec<VmRecord>) -> VmView {
        let view = VmView::default();
        {
            let mut cache = view.write();
            for v in records {
                cache.names.insert(v.id.clone(), v.name.clone());
                cache.by_name.insert(
                    v.name.clone(),
                    Arc::new(StoredVm {
                        record: v,
                        rendered: Default::default(),
                    }),
                );
            }
        }
        view
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, VmCache> {
        self.vms.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, VmCache> {
        self.vms.write().unwrap_or_else(|p| p.into_inner())
    }

    fn deferred(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<StoredVm>>> {
        self.deferred.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Renders each VM so when it is taken (see [`StoredVm::rendered`]).
    pub fn render_with(&self, render: fn(&VmRecord) -> String) {
        let _ = self.render.set(render);
    }

    /// The VMs as the view holds them, rendered for the API when a renderer is set.
    pub fn stored(&self, vms: Vec<VmRecord>) -> Vec<Arc<StoredVm>> {
        let render = self.render.get();
        vms.into_iter()
            .map(|v| {
                let rendered = OnceLock::new();
                if let Some(render) = render {
                    let _ = rendered.set(render(&v));
                }
                Arc::new(StoredVm {
                    record: v,
                    rendered,
                })
            })
            .collect()
    }

    /// Takes VMs in, a thousand at a time, so that readers (the VM list) never wait long behind
    /// a storm's worth of new states; the records replaced are freed outside the lock.
    pub fn cache(&self, stored: Vec<Arc<StoredVm>>) {
        const AT_A_TIME: usize = 1000;
        let mut replaced = Vec::with_capacity(stored.len());
        for chunk in stored.chunks(AT_A_TIME) {
            let mut guard = self.write();
            let cache = &mut *guard;
            for v in chunk {
                let (id, name) = (&v.record.id, &v.record.name);
                // Upserted by id: a renamed VM leaves its old name.
                match cache.names.get(id) {
                    Some(old) if old == name => {
                        if let Some(slot) = cache.by_name.get_mut(name) {
                            replaced.push(std::mem::replace(slot, v.clone()));
                            continue;
                        }
                    }
                    Some(old) => {
                        if let Some(gone) = cache.by_name.remove(old) {
                            replaced.push(gone);
                        }
                    }
                    None => {}
                }
                cache.names.insert(id.clone(), name.clone());
                if let Some(gone) = cache.by_name.insert(name.clone(), v.clone()) {
                    replaced.push(gone);
                }
            }
        }
        drop(replaced);
    }

    /// Holds exactly `records` from now on (a standby server following the database the leader
    /// writes): a VM whose record is unchanged keeps its rendering, the others are rendered
    /// anew, and VMs not among `records` leave the view. Says how many changed.
    pub fn replace_all(&self, records: Vec<VmRecord>) -> usize {
        let render = self.render.get();
        let old = self.read().by_name.clone();
        let mut changed = 0;
        let mut cache = VmCache::default();
        for v in records {
            let kept = old.get(&v.name).filter(|s| s.record == v).cloned();
            let stored = kept.unwrap_or_else(|| {
                changed += 1;
                let rendered = OnceLock::new();
                if let Some(render) = render {
                    let _ = rendered.set(render(&v));
                }
                Arc::new(StoredVm {
                    record: v,
                    rendered,
                })
            });
            cache
                .names
                .insert(stored.record.id.clone(), stored.record.name.clone());
            cache.by_name.insert(stored.record.name.clone(), stored);
        }
        changed += old
            .keys()
            .filter(|n| !cache.by_name.contains_key(*n))
            .count();
        let replaced = std::mem::replace(&mut *self.write(), cache);
        drop(replaced);
        changed
    }

    /// Marks these states as not written yet.
    pub fn defer(&self, stored: &[Arc<StoredVm>]) {
        let mut deferred = self.deferred();
        for v in stored {
            deferred.insert(v.record.id.clone(), v.clone());
        }
    }

    /// The VMs of these ids are written now: their older deferred states are dropped.
    pub fn undefer<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let mut deferred = self.deferred();
        for id in ids {
            deferred.remove(id);
        }
    }

    /// Up to `n` states not written yet, taken out to be written.
    pub fn take_deferred(&self, n: usize) -> Vec<Arc<StoredVm>> {
        let mut deferred = self.deferred();
        let ids: Vec<String> = deferred.keys().take(n).cloned().collect();
        ids.iter().filter_map(|id| deferred.remove(id)).collect()
    }

    /// States whose writing failed, kept for the next try unless a newer state came meanwhile.
    pub fn defer_again(&self, chunk: Vec<Arc<StoredVm>>) {
        let mut deferred = self.deferred();
        for v in chunk {
            deferred.entry(v.record.id.clone()).or_insert(v);
        }
    }

    /// Forgets VM `name` (unregistered, deleted): what the view held of it.
    pub fn remove(&self, name: &str) -> Option<Arc<StoredVm>> {
        let mut cache = self.write();
        let gone = cache.by_name.remove(name);
        if let Some(v) = &gone {
            cache.names.remove(&v.record.id);
            self.deferred().remove(&v.record.id);
        }
        gone
    }

    /// The VMs that match, by name: how many, and those from `offset`, at most `limit`, without
    /// copying the records.
    pub fn select(
        &self,
        matches: impl Fn(&VmRecord) -> bool,
        offset: usize,
        limit: usize,
    ) -> (usize, Vec<Arc<StoredVm>>) {
        let cache = self.read();
        let mut total = 0;
        let mut page = Vec::new();
        for v in cache.by_name.values().filter(|v| matches(&v.record)) {
            if total >= offset && page.len() < limit {
                page.push(v.clone());
            }
            total += 1;
        }
        (total, page)
    }

    /// Copies of the records that match, by name.
    pub fn records(&self, matches: impl Fn(&VmRecord) -> bool) -> Vec<VmRecord> {
        self.read()
            .by_name
            .values()
            .filter(|v| matches(&v.record))
            .map(|v| v.record.clone())
            .collect()
    }

    /// A copy of VM `name`'s record.
    pub fn record(&self, name: &str) -> Option<VmRecord> {
        self.read().by_name.get(name).map(|v| v.record.clone())
    }

    /// A VM's crypto state, without copying its record.
    pub fn crypto_state(&self, name: &str) -> Option<CryptoState> {
        self.read().by_name.get(name).map(|v| v.record.crypto_state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tresor_core::protocol::PowerState;
    use tresor_core::vm::ConnectionState;

    fn vm(id: &str, name: &str, state: CryptoState) -> VmRecord {
        VmRecord {
            id: id.into(),
            name: name.into(),
            host: "host-1".into(),
            path: format!("/ds/{name}"),
            encrypted: true,
            key_provider: None,
            key_id: None,
            power_state: PowerState::PoweredOff,
            crypto_state: state,
            connection_state: ConnectionState::Connected,
            lock_reason: None,
            report: String::new(),
        }
    }

    #[test]
    fn a_vm_is_upserted_by_id_and_its_old_name_goes() {
        let view = VmView::load(vec![vm("1", "web01", CryptoState::Locked)]);
        view.cache(view.stored(vec![vm("1", "web02", CryptoState::Unlocked)]));
        assert!(view.record("web01").is_none());
        assert_eq!(view.crypto_state("web02"), Some(CryptoState::Unlocked));
        assert_eq!(view.select(|_| true, 0, 10).0, 1);
    }

    #[test]
    fn deferred_states_are_taken_once_and_a_newer_one_wins_over_a_retry() {
        let view = VmView::default();
        view.render_with(|v| format!("<{}>", v.name));
        let first = view.stored(vec![vm("1", "web01", CryptoState::Locked)]);
        assert_eq!(first[0].rendered(|_| unreachable!()), "<web01>");
        view.defer(&first);
        let taken = view.take_deferred(10);
        assert_eq!(taken.len(), 1);
        assert!(view.take_deferred(10).is_empty());
        // A newer state came while the write failed: the retry does not replace it.
        let newer = view.stored(vec![vm("1", "web01", CryptoState::Unlocked)]);
        view.defer(&newer);
        view.defer_again(taken);
        let again = view.take_deferred(10);
        assert_eq!(again[0].record.crypto_state, CryptoState::Unlocked);
        // Written now: nothing deferred is left of it.
        view.defer(&newer);
        view.undefer(["1"]);
        assert!(view.take_deferred(10).is_empty());
    }
}
