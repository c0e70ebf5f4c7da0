//! The host's key cache: the keys (KEKs) the server pushed, in protected memory only. Lost when
//! the agent or the host restarts; emptied by `tresor host reboot`.

use std::collections::HashMap;
use std::sync::Mutex;

use tresor_core::ids::KeyRef;

use crate::memory::{MemoryError, Secret, SecretMemory};

/// The keys this host holds.
#[derive(Debug)]
pub struct KeyCache {
    memory: SecretMemory,
    keys: Mutex<HashMap<KeyRef, Secret>>,
}

impl KeyCache {
    /// A cache for up to `capacity` keys.
    pub fn new(capacity: usize) -> Result<KeyCache, MemoryError> {
        Ok(KeyCache {
            memory: SecretMemory::new(capacity)?,
            keys: Mutex::new(HashMap::new()),
        })
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, HashMap<KeyRef, Secret>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a key (replacing any earlier copy).
    pub fn insert(&self, key: KeyRef, material: &[u8]) -> Result<(), MemoryError> {
        let secret = self.memory.store(material)?;
        self.keys().insert(key, secret);
        Ok(())
    }

    pub fn contains(&self, key: &KeyRef) -> bool {
        self.keys().contains_key(key)
    }

    /// Runs `f` with the key's bytes, if the host holds it.
    pub fn with_key<T>(&self, key: &KeyRef, f: impl FnOnce(&[u8]) -> T) -> Option<T> {
        self.keys().get(key).map(|s| f(s.expose()))
    }

    /// The keys held, without their material.
    pub fn held(&self) -> Vec<KeyRef> {
        let mut v: Vec<KeyRef> = self.keys().keys().cloned().collect();
        v.sort();
        v
    }

    pub fn remove(&self, key: &KeyRef) -> bool {
        self.keys().remove(key).is_some()
    }

    /// Forgets every key, as a host restart does.
    pub fn clear(&self) {
        self.keys().clear();
    }

    pub fn len(&self) -> usize {
        self.keys().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_replaces_and_forgets_keys() {
        let cache = KeyCache::new(8).unwrap();
        let k = KeyRef::new("kms", "1");
        assert!(!cache.contains(&k));
        cache.insert(k.clone(), &[1u8; 32]).unwrap();
        cache.insert(k.clone(), &[2u8; 32]).unwrap();
        assert_eq!(cache.with_key(&k, |b| b.to_vec()), Some(vec![2u8; 32]));
        assert_eq!(cache.len(), 1);
        assert_eq!(
            cache.memory.in_use(),
            1,
            "the replaced copy was wiped and freed"
        );
        cache.clear();
        assert!(cache.is_empty());
        assert_eq!(cache.memory.in_use(), 0);
    }
}
