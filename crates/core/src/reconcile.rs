//! The locked-VM engine's decisions: given what hosts and providers last reported about a VM,
//! what the server should do next. Pure: the server feeds in observations and carries out the
//! actions (fetch a key, push keys to a host, record events, raise or clear alarms).
//!
//! The rules:
//! - a key the host lacks is fetched from its provider (and fetched again, with backoff, while
//!   the provider fails or lacks it);
//! - a key the provider has is pushed to the host at once under the `automatic` unlock policy,
//!   and only when an operator unlocks the VM under `manual`;
//! - a settled change of the verdict is an event (`vm.locked.<cause>` or `vm.unlocked`) and
//!   raises or clears the VM's locked alarm;
//! - nothing happens while the VM's host is disconnected (its keys cannot be known);
//! - the cause of a lock is decided from what the provider says now: a key the host lacks whose
//!   provider's answer is older than the server allows (`stale`) is asked for again, and a VM is
//!   not published as locked on such an answer; a locked VM's keys are asked for again from time
//!   to time, so that its cause follows the provider.

use serde::{Deserialize, Serialize};

use crate::events::{self, EventType};
use crate::ids::KeyRef;
use crate::vm::{verdict, CryptoState, KeyObservation, LockReason, ProviderAnswer, Verdict};

/// When the server unlocks VMs whose keys the provider has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum UnlockPolicy {
    /// The server pushes keys as soon as it can get them.
    #[default]
    Automatic,
    /// An operator with `Cryptographer.RegisterVM` unlocks.
    Manual,
}

/// What the server knows of one VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmState {
    pub name: String,
    pub host: String,
    pub host_connected: bool,
    pub encrypted: bool,
    pub keys: Vec<KeyObservation>,
    /// The state last published (events and alarms follow changes of it).
    pub published: Published,
    /// An operator asked to unlock the VM and it is not unlocked yet.
    pub unlock_requested: bool,
    /// The last push of this VM's keys to its host failed.
    pub push_failed: bool,
    /// Keys whose provider answer is too old to decide from.
    pub stale: Vec<KeyRef>,
}

/// The state the server last published for a VM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Published {
    pub locked: Option<LockReason>,
    pub alarm: bool,
}

/// Something the server should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Ask the provider for this key (Get, and its state).
    Fetch {
        key: KeyRef,
    },
    /// Send these keys to the host.
    Push {
        host: String,
        keys: Vec<KeyRef>,
    },
    /// Record an event about the VM.
    Event {
        event: EventType,
        reason: Option<LockReason>,
    },
    RaiseAlarm {
        reason: LockReason,
    },
    ClearAlarm,
    /// The operator's unlock request is fulfilled.
    UnlockDone,
}

/// The verdict on a VM and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Option<Verdict>,
    pub actions: Vec<Action>,
    pub published: Published,
}

/// Decides what to do for one VM. `due` says whether a key may be fetched now (its backoff has
/// run out).
pub fn reconcile(vm: &VmState, policy: UnlockPolicy, due: impl Fn(&KeyRef) -> bool) -> Decision {
    let mut actions = Vec::new();
    if !vm.host_connected || !vm.encrypted {
        return Decision {
            verdict: None,
            actions,
            published: vm.published,
        };
    }
    let may_push = policy == UnlockPolicy::Automatic || vm.unlock_requested;
    // An old answer that the provider has the key is not what it says now: until it answers
    // again, the VM is not published as locked on it. (A push asks the provider anyway.)
    let keys: Vec<KeyObservation> = vm
        .keys
        .iter()
        .map(|k| {
            let mut k = k.clone();
            if !k.on_host
                && !may_push
                && vm.published.locked.is_none()
                && k.provider == ProviderAnswer::Active
                && vm.stale.contains(&k.key)
            {
                k.provider = ProviderAnswer::NotAsked;
            }
            k
        })
        .collect();
    let v = verdict(&keys);
    // Keys the host lacks: fetch what the provider has not answered for (or failed on), push
    // what it has.
    let mut push = Vec::new();
    for k in keys.iter().filter(|k| !k.on_host) {
        if vm.stale.contains(&k.key) && k.provider != ProviderAnswer::NotAsked {
            actions.push(Action::Fetch { key: k.key.clone() });
            if k.provider == ProviderAnswer::Active && may_push {
                push.push(k.key.clone());
            }
            continue;
        }
        match &k.provider {
            ProviderAnswer::Active => push.push(k.key.clone()),
            ProviderAnswer::NotAsked => actions.push(Action::Fetch { key: k.key.clone() }),
            ProviderAnswer::Unreachable(_)
            | ProviderAnswer::NotFound
            | ProviderAnswer::NotActive(_)
            | ProviderAnswer::PermissionDenied(_) => {
                if due(&k.key) {
                    actions.push(Action::Fetch { key: k.key.clone() });
                }
            }
        }
    }
    // A push that failed is tried again when its backoff has run out.
    let pushing = !push.is_empty() && may_push && (!vm.push_failed || push.iter().any(&due));
    if pushing {
        push.sort();
        push.dedup();
        actions.push(Action::Push {
            host: vm.host.clone(),
            keys: push,
        });
    }
    // Publish settled changes.
    let mut published = vm.published;
    // Keys on their way to the host are no lock yet, unless pushing them failed before.
    let in_flight =
        pushing && !vm.push_failed && v.lock_reason == Some(LockReason::KeyMissingOnHost);
    match (v.crypto_state, v.lock_reason) {
        (CryptoState::Locked, Some(reason))
            if v.settled && !in_flight && published.locked != Some(reason) =>
        {
            actions.push(Action::Event {
                event: events::locked(reason),
                reason: Some(reason),
            });
            actions.push(Action::RaiseAlarm { reason });
            published = Published {
                locked: Some(reason),
                alarm: true,
            };
        }
        (CryptoState::Unlocked, _) if published.locked.is_some() => {
            actions.push(Action::Event {
                event: events::VM_UNLOCKED,
                reason: None,
            });
            actions.push(Action::ClearAlarm);
            published = Published {
                locked: None,
                alarm: false,
            };
        }
        _ => {}
    }
    if v.crypto_state == CryptoState::Unlocked && vm.unlock_requested {
        actions.push(Action::UnlockDone);
    }
    Decision {
        verdict: Some(v),
        actions,
        published,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::KeyUse;

    fn vm(on_host: bool, provider: ProviderAnswer) -> VmState {
        VmState {
            name: "web01".into(),
            host: "host-1".into(),
            host_connected: true,
            encrypted: true,
            keys: vec![KeyObservation {
                key: KeyRef::new("kms", "k1"),
                uses: vec![KeyUse::Home],
                on_host,
                provider,
            }],
            published: Published::default(),
            unlock_requested: false,
            push_failed: false,
            stale: vec![],
        }
    }

    fn always(_: &KeyRef) -> bool {
        true
    }

    fn never(_: &KeyRef) -> bool {
        false
    }

    #[test]
    fn after_a_host_restart_the_keys_are_fetched_then_pushed() {
        // The host came back empty; the server has not asked the provider yet.
        let d = reconcile(
            &vm(false, ProviderAnswer::NotAsked),
            UnlockPolicy::Automatic,
            always,
        );
        assert_eq!(
            d.actions,
            vec![Action::Fetch {
                key: KeyRef::new("kms", "k1")
            }]
        );
        assert_eq!(
            d.published,
            Published::default(),
            "no lock event before the provider answered"
        );
        // The provider answered: push, and nothing to publish while the push is on its way.
        let d = reconcile(
            &vm(false, ProviderAnswer::Active),
            UnlockPolicy::Automatic,
            always,
        );
        assert_eq!(
            d.actions[0],
            Action::Push {
                host: "host-1".into(),
                keys: vec![KeyRef::new("kms", "k1")]
            }
        );
    }

    #[test]
    fn case_1_provider_unreachable_locks_with_kms_cluster_error_and_unlocks_when_it_returns() {
        let d = reconcile(
            &vm(false, ProviderAnswer::Unreachable("timeout".into())),
            UnlockPolicy::Automatic,
            always,
        );
        assert!(
            d.actions.contains(&Action::Fetch {
                key: KeyRef::new("kms", "k1")
            }),
            "retry"
        );
        assert!(d.actions.contains(&Action::Event {
            event: events::VM_LOCKED_KMS_CLUSTER_ERROR,
            reason: Some(LockReason::KmsClusterError)
        }));
        assert!(d.actions.contains(&Action::RaiseAlarm {
            reason: LockReason::KmsClusterError
        }));
        // Still down, backoff not run out: no new fetch and no repeated event.
        let mut again = vm(false, ProviderAnswer::Unreachable("timeout".into()));
        again.published = d.published;
        assert!(reconcile(&again, UnlockPolicy::Automatic, never)
            .actions
            .is_empty());
        // Back: pushed, then unlocked with an event and the alarm cleared.
        let mut back = vm(false, ProviderAnswer::Active);
        back.published = d.published;
        assert!(matches!(
            reconcile(&back, UnlockPolicy::Automatic, always).actions[0],
            Action::Push { .. }
        ));
        let mut unlocked = vm(true, ProviderAnswer::Active);
        unlocked.published = d.published;
        let d = reconcile(&unlocked, UnlockPolicy::Automatic, always);
        assert_eq!(
            d.actions,
            vec![
                Action::Event {
                    event: events::VM_UNLOCKED,
                    reason: None
                },
                Action::ClearAlarm
            ]
        );
        assert_eq!(d.published, Published::default());
    }

    #[test]
    fn losing_the_provider_alone_locks_nothing() {
        let d = reconcile(
            &vm(true, ProviderAnswer::Unreachable("down".into())),
            UnlockPolicy::Automatic,
            always,
        );
        assert!(d.actions.is_empty());
        assert_eq!(d.verdict.unwrap().crypto_state, CryptoState::Unlocked);
    }

    #[test]
    fn manual_policy_waits_for_the_operator() {
        let mut v = vm(false, ProviderAnswer::Active);
        let d = reconcile(&v, UnlockPolicy::Manual, always);
        assert!(
            d.actions.iter().all(|a| !matches!(a, Action::Push { .. })),
            "{:?}",
            d.actions
        );
        assert!(d.actions.contains(&Action::Event {
            event: events::VM_LOCKED_KEY_MISSING_ON_HOST,
            reason: Some(LockReason::KeyMissingOnHost)
        }));
        v.unlock_requested = true;
        v.published = d.published;
        assert!(matches!(
            reconcile(&v, UnlockPolicy::Manual, always).actions[0],
            Action::Push { .. }
        ));
        let mut done = vm(true, ProviderAnswer::Active);
        done.unlock_requested = true;
        done.published = d.published;
        assert!(reconcile(&done, UnlockPolicy::Manual, always)
            .actions
            .contains(&Action::UnlockDone));
    }

    #[test]
    fn case_3_a_key_deactivated_on_the_provider_locks_with_key_missing_on_kms() {
        let d = reconcile(
            &vm(false, ProviderAnswer::NotActive("Deactivated".into())),
            UnlockPolicy::Automatic,
            always,
        );
        assert!(d.actions.contains(&Action::RaiseAlarm {
            reason: LockReason::KeyMissingOnKms
        }));
        assert!(
            d.actions.iter().all(|a| !matches!(a, Action::Push { .. })),
            "an inactive key is not pushed"
        );
    }

    #[test]
    fn a_disconnected_host_or_an_unencrypted_vm_needs_nothing() {
        let mut v = vm(false, ProviderAnswer::NotAsked);
        v.host_connected = false;
        assert!(reconcile(&v, UnlockPolicy::Automatic, always)
            .actions
            .is_empty());
        let mut v = vm(false, ProviderAnswer::NotAsked);
        v.encrypted = false;
        assert!(reconcile(&v, UnlockPolicy::Automatic, always)
            .verdict
            .is_none());
    }

    #[test]
    fn case_5_a_failed_push_locks_with_key_missing_on_host_and_is_retried() {
        let mut v = vm(false, ProviderAnswer::Active);
        v.push_failed = true;
        let d = reconcile(&v, UnlockPolicy::Automatic, always);
        assert!(
            d.actions.iter().any(|a| matches!(a, Action::Push { .. })),
            "retried"
        );
        assert!(d.actions.contains(&Action::RaiseAlarm {
            reason: LockReason::KeyMissingOnHost
        }));
        v.published = d.published;
        assert!(
            reconcile(&v, UnlockPolicy::Automatic, never)
                .actions
                .is_empty(),
            "backoff"
        );
    }

    #[test]
    fn a_change_of_cause_is_a_new_event() {
        let mut v = vm(false, ProviderAnswer::NotFound);
        v.published = Published {
            locked: Some(LockReason::KmsClusterError),
            alarm: true,
        };
        let d = reconcile(&v, UnlockPolicy::Automatic, never);
        assert_eq!(d.published.locked, Some(LockReason::KeyMissingOnKms));
        assert!(d.actions.contains(&Action::Event {
            event: events::VM_LOCKED_KEY_MISSING_ON_KMS,
            reason: Some(LockReason::KeyMissingOnKms)
        }));
    }

    #[test]
    fn a_lock_is_not_decided_from_an_old_answer_and_a_locked_vm_asks_again() {
        // The host restarted; the provider said Active long ago (it may be gone since).
        let mut v = vm(false, ProviderAnswer::Active);
        v.stale = vec![KeyRef::new("kms", "k1")];
        let d = reconcile(&v, UnlockPolicy::Manual, always);
        assert!(d.actions.contains(&Action::Fetch {
            key: KeyRef::new("kms", "k1")
        }));
        assert_eq!(d.published, Published::default(), "nothing published yet");
        assert!(!d.verdict.unwrap().settled);
        // A fresh answer decides.
        v.stale.clear();
        let d = reconcile(&v, UnlockPolicy::Manual, always);
        assert_eq!(d.published.locked, Some(LockReason::KeyMissingOnHost));
        // Locked, and its answer grew old: asked again, the cause stays until the answer comes.
        v.published = d.published;
        v.stale = vec![KeyRef::new("kms", "k1")];
        let d = reconcile(&v, UnlockPolicy::Manual, always);
        assert!(d.actions.contains(&Action::Fetch {
            key: KeyRef::new("kms", "k1")
        }));
        assert_eq!(d.published.locked, Some(LockReason::KeyMissingOnHost));
        assert!(!d.actions.iter().any(|a| matches!(a, Action::Event { .. })));
        // The provider went away: the cause follows it.
        let mut gone = vm(false, ProviderAnswer::Unreachable("refused".into()));
        gone.published = d.published;
        let d = reconcile(&gone, UnlockPolicy::Manual, always);
        assert_eq!(d.published.locked, Some(LockReason::KmsClusterError));
        assert!(d.actions.contains(&Action::Event {
            event: events::VM_LOCKED_KMS_CLUSTER_ERROR,
            reason: Some(LockReason::KmsClusterError)
        }));
    }
}
