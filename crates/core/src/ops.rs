//! Which operations a VM's state allows, and the words of refusal.
//!
//! While a VM is locked only unregister and reload are allowed (and unlock, which is the way
//! out). Power-on is refused, and so is delete, so that nothing is lost by mistake: the operator
//! unregisters instead.

use crate::vm::{CryptoState, LockReason};
use crate::Lang;

/// Operations on a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VmOp {
    PowerOn,
    PowerOff,
    Delete,
    Unregister,
    Reload,
    Unlock,
    Encrypt,
    Decrypt,
    Rekey,
    DeepRekey,
    AddDisk,
}

impl VmOp {
    fn verb(self) -> &'static str {
        match self {
            VmOp::PowerOn => "powered on",
            VmOp::PowerOff => "powered off",
            VmOp::Delete => "deleted",
            VmOp::Unregister => "unregistered",
            VmOp::Reload => "reloaded",
            VmOp::Unlock => "unlocked",
            VmOp::Encrypt => "encrypted",
            VmOp::Decrypt => "decrypted",
            VmOp::Rekey => "rekeyed",
            VmOp::DeepRekey => "deep-rekeyed",
            VmOp::AddDisk => "given a new disk",
        }
    }

    /// The German participle, as in "kann nicht … werden".
    fn verb_de(self) -> &'static str {
        match self {
            VmOp::PowerOn => "eingeschaltet",
            VmOp::PowerOff => "ausgeschaltet",
            VmOp::Delete => "gelöscht",
            VmOp::Unregister => "abgemeldet",
            VmOp::Reload => "neu geladen",
            VmOp::Unlock => "entsperrt",
            VmOp::Encrypt => "verschlüsselt",
            VmOp::Decrypt => "entschlüsselt",
            VmOp::Rekey => "neu verschlüsselt",
            VmOp::DeepRekey => "vollständig neu verschlüsselt",
            VmOp::AddDisk => "um eine Festplatte erweitert",
        }
    }
}

/// Why an operation is refused, in English (`message`) and German (`message_de`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub message: String,
    pub message_de: String,
}

fn reason_words(reason: LockReason) -> &'static str {
    match reason {
        LockReason::KmsClusterError => "the server cannot reach its key provider",
        LockReason::KeyMissingOnKms => "its keys are missing or not active on the key provider",
        LockReason::KeyMissingOnHost => "its keys are missing on its host",
    }
}

fn reason_words_de(reason: LockReason) -> &'static str {
    match reason {
        LockReason::KmsClusterError => "der Server erreicht seinen Schlüsselanbieter nicht",
        LockReason::KeyMissingOnKms => {
            "ihre Schlüssel fehlen auf dem Schlüsselanbieter oder sind dort nicht aktiv"
        }
        LockReason::KeyMissingOnHost => "ihre Schlüssel fehlen auf ihrem Host",
    }
}

/// Whether `op` may run on VM `name` in this crypto state.
pub fn check(
    name: &str,
    op: VmOp,
    state: CryptoState,
    reason: Option<LockReason>,
) -> Result<(), Refusal> {
    if state != CryptoState::Locked {
        return Ok(());
    }
    match op {
        VmOp::Unregister | VmOp::Reload | VmOp::Unlock => Ok(()),
        _ => {
            let why = reason
                .map(reason_words)
                .unwrap_or("its keys are not available");
            let why_de = reason
                .map(reason_words_de)
                .unwrap_or("ihre Schlüssel sind nicht verfügbar");
            Err(Refusal {
                message: format!(
                    "VM {name} cannot be {} because it is locked: {why}. Unlock it with `tresor vm unlock {name}` (see `tresor vm diagnose {name}`), or unregister it with `tresor vm unregister {name}`.",
                    op.verb()
                ),
                message_de: format!(
                    "Die VM {name} kann nicht {} werden, weil sie gesperrt ist: {why_de}. Entsperren Sie sie mit `tresor vm unlock {name}` (siehe `tresor vm diagnose {name}`) oder heben Sie ihre Registrierung mit `tresor vm unregister {name}` auf.",
                    op.verb_de()
                ),
            })
        }
    }
}

/// The exact message when a disk cannot open because its key is missing.
pub fn disk_key_missing(path: &str, lang: Lang) -> String {
    match lang {
        Lang::En => format!("The disk [{path}] is encrypted and a required key was not found."),
        Lang::De => format!("Die Festplatte [{path}] ist verschlüsselt, und ein erforderlicher Schlüssel wurde nicht gefunden."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_locked_vm_allows_only_unregister_reload_and_unlock() {
        let allowed = [VmOp::Unregister, VmOp::Reload, VmOp::Unlock];
        for op in [
            VmOp::PowerOn,
            VmOp::PowerOff,
            VmOp::Delete,
            VmOp::Unregister,
            VmOp::Reload,
            VmOp::Unlock,
            VmOp::Encrypt,
            VmOp::Decrypt,
            VmOp::Rekey,
            VmOp::DeepRekey,
            VmOp::AddDisk,
        ] {
            let r = check(
                "web01",
                op,
                CryptoState::Locked,
                Some(LockReason::KeyMissingOnKms),
            );
            assert_eq!(r.is_ok(), allowed.contains(&op), "{op:?}");
            assert!(check("web01", op, CryptoState::Unlocked, None).is_ok());
        }
    }

    #[test]
    fn the_refusal_says_locked_why_and_the_way_forward() {
        let e = check(
            "web01",
            VmOp::PowerOn,
            CryptoState::Locked,
            Some(LockReason::KmsClusterError),
        )
        .unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("locked")
                && m.contains("key provider")
                && m.contains("tresor vm unlock web01")
                && m.contains("unregister"),
            "{m}"
        );
        let de = &e.message_de;
        assert!(
            de.contains("kann nicht eingeschaltet werden")
                && de.contains("gesperrt")
                && de.contains("Schlüsselanbieter")
                && de.contains("tresor vm unlock web01"),
            "{de}"
        );
    }

    #[test]
    fn the_disk_message_is_exact() {
        assert_eq!(
            disk_key_missing("/vms/web01/disk1.qcow2", Lang::En),
            "The disk [/vms/web01/disk1.qcow2] is encrypted and a required key was not found."
        );
        assert_eq!(
            disk_key_missing("/d", Lang::De),
            "Die Festplatte [/d] ist verschlüsselt, und ein erforderlicher Schlüssel wurde nicht gefunden."
        );
    }
}
