//! A host's encryption mode: `incapable` → `prepared` → `safe` once it holds the host key;
//! disabling goes to `pendingIncapable` until the host restarts. Encrypted VMs live only on a
//! safe host.

crate::named_enum! {
    /// The encryption mode of a host.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum HostCryptoState {
        Incapable = "incapable",
        Prepared = "prepared",
        Safe = "safe",
        PendingIncapable = "pendingIncapable",
    }
}

/// What happens to a host's encryption mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HostCryptoEvent {
    /// An operator enables encryption: the host prepares (its crypto support is checked).
    Prepare,
    /// The host key arrived in the host's key cache.
    HostKeyReceived,
    /// An operator disables encryption.
    Disable,
    /// The host restarted (its key cache is empty).
    Restart,
}

/// A change of encryption mode that is not allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("A host in encryption mode {from:?} cannot {}", verb(*event))]
pub struct HostRefused {
    pub from: HostCryptoState,
    pub event: HostCryptoEvent,
}

fn verb(e: HostCryptoEvent) -> &'static str {
    match e {
        HostCryptoEvent::Prepare => "be prepared for encryption",
        HostCryptoEvent::HostKeyReceived => "take a host key",
        HostCryptoEvent::Disable => "have encryption disabled",
        HostCryptoEvent::Restart => "restart",
    }
}

/// The mode after `event`.
pub fn next(from: HostCryptoState, event: HostCryptoEvent) -> Result<HostCryptoState, HostRefused> {
    use HostCryptoEvent as E;
    use HostCryptoState as S;
    Ok(match (from, event) {
        (S::Incapable, E::Prepare) => S::Prepared,
        (S::Prepared | S::Safe, E::Prepare) => from,
        (S::Prepared | S::Safe, E::HostKeyReceived) => S::Safe,
        (S::Prepared | S::Safe, E::Disable) => S::PendingIncapable,
        (S::Incapable | S::PendingIncapable, E::Disable) => from,
        (S::PendingIncapable, E::Restart) => S::Incapable,
        // A restart empties the key cache; the server pushes the host key again.
        (S::Incapable | S::Prepared | S::Safe, E::Restart) => from,
        _ => return Err(HostRefused { from, event }),
    })
}

/// Whether encrypted VMs may be created or run on a host in this mode.
pub fn runs_encrypted_vms(state: HostCryptoState) -> bool {
    state == HostCryptoState::Safe
}

#[cfg(test)]
mod tests {
    use super::*;
    use HostCryptoEvent as E;
    use HostCryptoState as S;

    #[test]
    fn the_modes_follow_the_reference() {
        let mut s = S::Incapable;
        for (e, want) in [
            (E::Prepare, S::Prepared),
            (E::HostKeyReceived, S::Safe),
            (E::Restart, S::Safe),
            (E::Disable, S::PendingIncapable),
            (E::Restart, S::Incapable),
        ] {
            s = next(s, e).unwrap();
            assert_eq!(s, want, "after {e:?}");
        }
        assert!(next(S::Incapable, E::HostKeyReceived).is_err());
        assert!(next(S::PendingIncapable, E::HostKeyReceived).is_err());
        assert!(
            next(S::PendingIncapable, E::Prepare).is_err(),
            "re-enabling waits for the restart"
        );
        assert!(runs_encrypted_vms(S::Safe) && !runs_encrypted_vms(S::Prepared));
    }
}
