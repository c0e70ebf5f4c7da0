//! A VM's crypto state, and the verdict that decides when it is locked and why.
//!
//! A host's key cache is memory only. A VM locks only when a key it needs is missing on its host;
//! the cause says why the key is not there:
//!
//! - `kmsClusterError`: the server cannot get the key because the provider cannot be reached or
//!   fails (a provider that refuses access counts here too, with its own detail);
//! - `keyMissingOnKms`: the provider answers that the key does not exist, or is not Active;
//! - `keyMissingOnHost`: the provider has the key; the host does not (the push failed or has not
//!   been made).
//!
//! Losing the provider alone locks nothing: a VM whose keys are on its host stays unlocked.
//! Without its home key a VM is also *invalid*; with the home key but without a disk key it is
//! locked but connected, and only that disk cannot open.

use serde::{Deserialize, Serialize};

use crate::ids::KeyRef;

crate::named_enum! {
    /// `cryptoState` of a VM.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum CryptoState {
        Unencrypted = "unencrypted",
        Unlocked = "unlocked",
        Locked = "locked",
    }
}

crate::named_enum! {
    /// `connectionState` of a VM.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum ConnectionState {
        Connected = "connected",
        Invalid = "invalid",
        Disconnected = "disconnected",
    }
}

pub use crate::names::UnknownName;

crate::named_enum! {
    /// `lockReason` of a locked VM.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub enum LockReason {
        /// The provider cannot be reached or fails.
        KmsClusterError = "kmsClusterError",
        /// The key is not on the provider, or not Active there.
        KeyMissingOnKms = "keyMissingOnKms",
        /// The provider has the key; the host does not.
        KeyMissingOnHost = "keyMissingOnHost",
    }
}

/// What the server last learnt from the provider about a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "answer", content = "detail")]
pub enum ProviderAnswer {
    /// Not asked yet (the server is about to).
    NotAsked,
    /// The key is there and Active.
    Active,
    /// The key is there but not Active (its KMIP state).
    NotActive(String),
    /// The provider says there is no such key.
    NotFound,
    /// The provider refuses the server access to the key.
    PermissionDenied(String),
    /// No endpoint of the provider could be reached, or it failed.
    Unreachable(String),
}

/// What a key is for in a VM.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind", content = "path")]
pub enum KeyUse {
    /// The VM's home (config, NVRAM): without it the VM is invalid.
    Home,
    /// One disk, by path.
    Disk(String),
}

/// One key a VM needs, as host and provider report it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyObservation {
    pub key: KeyRef,
    pub uses: Vec<KeyUse>,
    pub on_host: bool,
    pub provider: ProviderAnswer,
}

/// A disk as `tresor vm show` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskView {
    pub path: String,
    pub key_available: bool,
}

/// The verdict on an encrypted VM whose host is connected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    pub crypto_state: CryptoState,
    pub connection_state: ConnectionState,
    pub lock_reason: Option<LockReason>,
    /// For each disk, whether its key is on the host.
    pub disks: Vec<DiskView>,
    /// The keys the host lacks, with what the provider said of each.
    pub missing: Vec<KeyObservation>,
    /// Whether the verdict can still change without anyone acting: a key the host lacks has not
    /// been asked of the provider yet. Alarms and lock events wait for a settled verdict.
    pub settled: bool,
}

/// Decides an encrypted VM's state from the keys it needs.
pub fn verdict(keys: &[KeyObservation]) -> Verdict {
    let missing: Vec<KeyObservation> = keys.iter().filter(|k| !k.on_host).cloned().collect();
    let home_missing = missing.iter().any(|k| k.uses.contains(&KeyUse::Home));
    let mut disks: Vec<DiskView> = Vec::new();
    for k in keys {
        for u in &k.uses {
            if let KeyUse::Disk(path) = u {
                disks.push(DiskView {
                    path: path.clone(),
                    key_available: k.on_host,
                });
            }
        }
    }
    if missing.is_empty() {
        return Verdict {
            crypto_state: CryptoState::Unlocked,
            connection_state: ConnectionState::Connected,
            lock_reason: None,
            disks,
            missing,
            settled: true,
        };
    }
    // The most fundamental cause first: an unreachable provider hides whether keys exist.
    let reason = missing
        .iter()
        .map(|k| match k.provider {
            ProviderAnswer::Unreachable(_) | ProviderAnswer::PermissionDenied(_) => {
                LockReason::KmsClusterError
            }
            ProviderAnswer::NotFound | ProviderAnswer::NotActive(_) => LockReason::KeyMissingOnKms,
            ProviderAnswer::Active | ProviderAnswer::NotAsked => LockReason::KeyMissingOnHost,
        })
        .min()
        .unwrap_or(LockReason::KeyMissingOnHost);
    let settled = !missing
        .iter()
        .any(|k| k.provider == ProviderAnswer::NotAsked);
    Verdict {
        crypto_state: CryptoState::Locked,
        connection_state: if home_missing {
            ConnectionState::Invalid
        } else {
            ConnectionState::Connected
        },
        lock_reason: Some(reason),
        disks,
        missing,
        settled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_name_reads_back() {
        for v in CryptoState::ALL {
            assert_eq!(v.as_str().parse::<CryptoState>(), Ok(v));
        }
        for v in ConnectionState::ALL {
            assert_eq!(v.as_str().parse::<ConnectionState>(), Ok(v));
        }
        for v in LockReason::ALL {
            assert_eq!(v.as_str().parse::<LockReason>(), Ok(v));
            // The JSON name is the same.
            assert_eq!(serde_json::to_value(v).unwrap(), v.as_str());
        }
        assert!("lockedd".parse::<CryptoState>().is_err());
    }

    #[test]
    fn names_are_the_json_names() {
        let json = |v: serde_json::Value| v.as_str().unwrap_or_default().to_owned();
        for s in [
            CryptoState::Unencrypted,
            CryptoState::Unlocked,
            CryptoState::Locked,
        ] {
            assert_eq!(s.as_str(), json(serde_json::to_value(s).unwrap()));
        }
        for s in [
            ConnectionState::Connected,
            ConnectionState::Invalid,
            ConnectionState::Disconnected,
        ] {
            assert_eq!(s.as_str(), json(serde_json::to_value(s).unwrap()));
        }
        for s in [
            LockReason::KmsClusterError,
            LockReason::KeyMissingOnKms,
            LockReason::KeyMissingOnHost,
        ] {
            assert_eq!(s.as_str(), json(serde_json::to_value(s).unwrap()));
        }
        for s in [
            crate::protocol::PowerState::PoweredOn,
            crate::protocol::PowerState::PoweredOff,
        ] {
            assert_eq!(s.as_str(), json(serde_json::to_value(s).unwrap()));
        }
        for s in [
            crate::events::Severity::Info,
            crate::events::Severity::Warning,
            crate::events::Severity::Error,
        ] {
            assert_eq!(s.as_str(), json(serde_json::to_value(s).unwrap()));
        }
    }

    fn key(id: &str, uses: Vec<KeyUse>, on_host: bool, provider: ProviderAnswer) -> KeyObservation {
        KeyObservation {
            key: KeyRef::new("kms", id),
            uses,
            on_host,
            provider,
        }
    }

    fn home_and_disk(on_host: bool, provider: ProviderAnswer) -> Vec<KeyObservation> {
        vec![key(
            "k1",
            vec![KeyUse::Home, KeyUse::Disk("/vm/disk0.qcow2".into())],
            on_host,
            provider,
        )]
    }

    #[test]
    fn keys_on_the_host_mean_unlocked_whatever_the_provider_says() {
        for p in [
            ProviderAnswer::Unreachable("down".into()),
            ProviderAnswer::NotFound,
            ProviderAnswer::NotAsked,
            ProviderAnswer::Active,
        ] {
            let v = verdict(&home_and_disk(true, p));
            assert_eq!(
                (v.crypto_state, v.connection_state, v.lock_reason),
                (CryptoState::Unlocked, ConnectionState::Connected, None)
            );
            assert!(v.disks.iter().all(|d| d.key_available));
        }
    }

    #[test]
    fn the_cause_of_a_lock_follows_the_providers_answer() {
        let cases = [
            (
                ProviderAnswer::Unreachable("timeout".into()),
                LockReason::KmsClusterError,
            ),
            (
                ProviderAnswer::PermissionDenied("not yours".into()),
                LockReason::KmsClusterError,
            ),
            (ProviderAnswer::NotFound, LockReason::KeyMissingOnKms),
            (
                ProviderAnswer::NotActive("Deactivated".into()),
                LockReason::KeyMissingOnKms,
            ),
            (ProviderAnswer::Active, LockReason::KeyMissingOnHost),
        ];
        for (answer, reason) in cases {
            let v = verdict(&home_and_disk(false, answer.clone()));
            assert_eq!(v.crypto_state, CryptoState::Locked, "{answer:?}");
            assert_eq!(
                v.connection_state,
                ConnectionState::Invalid,
                "home key missing means invalid"
            );
            assert_eq!(v.lock_reason, Some(reason), "{answer:?}");
            assert!(v.settled);
        }
    }

    #[test]
    fn a_missing_disk_key_locks_but_leaves_the_vm_connected() {
        let keys = vec![
            key(
                "home",
                vec![KeyUse::Home, KeyUse::Disk("/vm/a.qcow2".into())],
                true,
                ProviderAnswer::Active,
            ),
            key(
                "own",
                vec![KeyUse::Disk("/vm/b.qcow2".into())],
                false,
                ProviderAnswer::NotFound,
            ),
        ];
        let v = verdict(&keys);
        assert_eq!(v.crypto_state, CryptoState::Locked);
        assert_eq!(v.connection_state, ConnectionState::Connected);
        assert_eq!(v.lock_reason, Some(LockReason::KeyMissingOnKms));
        assert_eq!(
            v.disks,
            vec![
                DiskView {
                    path: "/vm/a.qcow2".into(),
                    key_available: true
                },
                DiskView {
                    path: "/vm/b.qcow2".into(),
                    key_available: false
                },
            ]
        );
    }

    #[test]
    fn an_unreachable_provider_outranks_other_causes() {
        let keys = vec![
            key("a", vec![KeyUse::Home], false, ProviderAnswer::NotFound),
            key(
                "b",
                vec![KeyUse::Disk("/d".into())],
                false,
                ProviderAnswer::Unreachable("down".into()),
            ),
            key(
                "c",
                vec![KeyUse::Disk("/e".into())],
                false,
                ProviderAnswer::Active,
            ),
        ];
        assert_eq!(
            verdict(&keys).lock_reason,
            Some(LockReason::KmsClusterError)
        );
    }

    #[test]
    fn a_key_not_yet_asked_for_is_not_a_settled_lock() {
        let v = verdict(&home_and_disk(false, ProviderAnswer::NotAsked));
        assert_eq!(v.crypto_state, CryptoState::Locked);
        assert_eq!(v.lock_reason, Some(LockReason::KeyMissingOnHost));
        assert!(!v.settled);
    }

    #[test]
    fn states_serialise_with_the_surface_names() {
        assert_eq!(
            serde_json::to_string(&LockReason::KeyMissingOnKms).unwrap(),
            "\"keyMissingOnKms\""
        );
        assert_eq!(
            serde_json::to_string(&CryptoState::Unencrypted).unwrap(),
            "\"unencrypted\""
        );
        assert_eq!(
            serde_json::to_string(&ConnectionState::Invalid).unwrap(),
            "\"invalid\""
        );
        for r in [
            LockReason::KmsClusterError,
            LockReason::KeyMissingOnKms,
            LockReason::KeyMissingOnHost,
        ] {
            assert_eq!(
                serde_json::to_string(&r).unwrap(),
                format!("\"{}\"", r.as_str())
            );
        }
    }
}
