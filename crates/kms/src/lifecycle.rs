//! The life of a managed object (KMIP 1.4, section 3.22) as an explicit state machine.
//!
//! ```text
//!              Activate                Revoke (not compromise)
//!  Pre-Active ───────────► Active ─────────────────────────► Deactivated
//!     │  │                   │                                  │   │
//!     │  └── Destroy ──┐     └── Revoke (compromise) ─┐         │   └── Destroy ──► Destroyed
//!     │                ▼                              ▼         │                      │
//!     │            Destroyed                     Compromised ◄──┘ (compromise)         │
//!     └─ Revoke (compromise) ───────────────────────► │                                │
//!                                                     └─ Destroy ─► Destroyed Compromised ◄┘ (compromise)
//! ```
//!
//! KMIP has no way back from Deactivated. A key server administrator may reactivate a
//! Deactivated key, as commercial key servers allow; never a Destroyed or Compromised one.

use tresor_kmip::spec::State;

/// What happens to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Activate,
    /// Revoke with a reason other than key or CA compromise.
    Deactivate,
    /// Revoke with key or CA compromise.
    Compromise,
    Destroy,
    /// The administrator's way back from Deactivated.
    Reactivate,
}

/// A transition the state machine does not allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("A {from} object cannot be {}", event_verb(*event))]
pub struct Refused {
    pub from: State,
    pub event: Event,
}

fn event_verb(event: Event) -> &'static str {
    match event {
        Event::Activate => "activated",
        Event::Deactivate => "deactivated",
        Event::Compromise => "marked compromised",
        Event::Destroy => "destroyed",
        Event::Reactivate => "reactivated",
    }
}

/// The state after `event`, or why it is refused.
pub fn next(from: State, event: Event) -> Result<State, Refused> {
    use Event as E;
    use State as S;
    let to = match (from, event) {
        (S::PreActive, E::Activate) => S::Active,
        (S::PreActive, E::Compromise)
        | (S::Active, E::Compromise)
        | (S::Deactivated, E::Compromise) => S::Compromised,
        (S::Active, E::Deactivate) => S::Deactivated,
        (S::PreActive, E::Destroy) | (S::Deactivated, E::Destroy) => S::Destroyed,
        (S::Compromised, E::Destroy) => S::DestroyedCompromised,
        (S::Destroyed, E::Compromise) => S::DestroyedCompromised,
        (S::Deactivated, E::Reactivate) => S::Active,
        _ => return Err(Refused { from, event }),
    };
    Ok(to)
}

/// Whether an object in this state still has its key material.
pub fn has_material(state: State) -> bool {
    !matches!(state, State::Destroyed | State::DestroyedCompromised)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATES: [State; 6] = [
        State::PreActive,
        State::Active,
        State::Deactivated,
        State::Compromised,
        State::Destroyed,
        State::DestroyedCompromised,
    ];
    const EVENTS: [Event; 5] = [
        Event::Activate,
        Event::Deactivate,
        Event::Compromise,
        Event::Destroy,
        Event::Reactivate,
    ];

    #[test]
    fn allows_exactly_the_specified_transitions() {
        let allowed: Vec<(State, Event)> = STATES
            .iter()
            .flat_map(|s| EVENTS.iter().map(move |e| (*s, *e)))
            .filter(|(s, e)| next(*s, *e).is_ok())
            .collect();
        use Event as E;
        use State as S;
        let expected = vec![
            (S::PreActive, E::Activate),
            (S::PreActive, E::Compromise),
            (S::PreActive, E::Destroy),
            (S::Active, E::Deactivate),
            (S::Active, E::Compromise),
            (S::Deactivated, E::Compromise),
            (S::Deactivated, E::Destroy),
            (S::Deactivated, E::Reactivate),
            (S::Compromised, E::Destroy),
            (S::Destroyed, E::Compromise),
        ];
        assert_eq!(allowed, expected);
        assert_eq!(
            next(State::Active, Event::Destroy),
            Err(Refused {
                from: State::Active,
                event: Event::Destroy
            })
        );
        assert_eq!(
            next(State::Destroyed, Event::Reactivate)
                .unwrap_err()
                .to_string(),
            "A Destroyed object cannot be reactivated"
        );
        assert!(next(State::Compromised, Event::Reactivate).is_err());
        assert_eq!(
            next(State::Deactivated, Event::Reactivate),
            Ok(State::Active)
        );
    }

    #[test]
    fn destroyed_states_are_final_but_for_compromise() {
        for e in EVENTS {
            let r = next(State::DestroyedCompromised, e);
            assert!(r.is_err());
        }
        assert_eq!(
            next(State::Destroyed, Event::Compromise),
            Ok(State::DestroyedCompromised)
        );
    }
}
