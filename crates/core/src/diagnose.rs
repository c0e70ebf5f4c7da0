//! The troubleshooting procedure as a function: for a VM, which of the procedure's cases applies,
//! the evidence, and the next step, in English or German.

use serde::Serialize;

use crate::vm::{CryptoState, KeyUse, LockReason, ProviderAnswer};
use crate::Lang;

/// What the server knows when it diagnoses a VM.
#[derive(Clone, Debug)]
pub struct DiagnoseInput {
    pub vm: String,
    pub host: String,
    pub host_connected: bool,
    pub crypto_state: CryptoState,
    pub lock_reason: Option<LockReason>,
    /// The keys the host lacks: key id, provider, uses, and the provider's last answer.
    pub missing: Vec<MissingKey>,
    /// Whether the user asking may unlock (`Cryptographer.RegisterVM`).
    pub user_may_unlock: bool,
}

/// A key the host lacks.
#[derive(Clone, Debug)]
pub struct MissingKey {
    pub key_id: String,
    pub provider: String,
    pub uses: Vec<KeyUse>,
    pub answer: ProviderAnswer,
    /// Whether the provider is Tresor's own key server (`tresor kms`), whose administrator has
    /// Tresor's commands; other providers are administered their own way.
    pub provider_is_tresor_kms: bool,
}

/// The diagnosis.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Diagnosis {
    pub vm: String,
    /// The procedure's case (1, 3, 5), or none when the VM is not locked.
    pub case: Option<u8>,
    pub summary: String,
    pub evidence: Vec<String>,
    pub next_steps: Vec<String>,
}

fn t<'a>(lang: Lang, en: &'a str, de: &'a str) -> &'a str {
    match lang {
        Lang::En => en,
        Lang::De => de,
    }
}

fn uses(lang: Lang, u: &[KeyUse]) -> String {
    u.iter()
        .map(|x| match x {
            KeyUse::Home => t(lang, "the VM home", "das VM-Verzeichnis").to_owned(),
            KeyUse::Disk(p) => format!("{} {p}", t(lang, "disk", "Festplatte")),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn answer(lang: Lang, a: &ProviderAnswer) -> String {
    match (a, lang) {
        (ProviderAnswer::NotAsked, Lang::En) => "not asked yet".into(),
        (ProviderAnswer::NotAsked, Lang::De) => "noch nicht angefragt".into(),
        (ProviderAnswer::Active, Lang::En) => "the provider has it and it is active".into(),
        (ProviderAnswer::Active, Lang::De) => "der Anbieter hat ihn, er ist aktiv".into(),
        (ProviderAnswer::NotActive(s), Lang::En) => {
            format!("the provider has it but it is {s}, not Active")
        }
        (ProviderAnswer::NotActive(s), Lang::De) => {
            format!("der Anbieter hat ihn, aber er ist {s}, nicht aktiv")
        }
        (ProviderAnswer::NotFound, Lang::En) => "the provider does not have it".into(),
        (ProviderAnswer::NotFound, Lang::De) => "der Anbieter hat ihn nicht".into(),
        (ProviderAnswer::PermissionDenied(m), Lang::En) => {
            format!("the provider refuses the server access: {m}")
        }
        (ProviderAnswer::PermissionDenied(m), Lang::De) => {
            format!("der Anbieter verweigert dem Server den Zugriff: {m}")
        }
        (ProviderAnswer::Unreachable(m), Lang::En) => {
            format!("the provider cannot be reached: {m}")
        }
        (ProviderAnswer::Unreachable(m), Lang::De) => {
            format!("der Anbieter ist nicht erreichbar: {m}")
        }
    }
}

/// Diagnoses a VM following the procedure's order.
pub fn diagnose(input: &DiagnoseInput, lang: Lang) -> Diagnosis {
    let vm = &input.vm;
    let mut evidence = Vec::new();
    let mut next = Vec::new();
    if !input.host_connected {
        return Diagnosis {
            vm: vm.clone(),
            case: None,
            summary: format!(
                "{} {}",
                t(
                    lang,
                    "The server has no connection to host",
                    "Der Server hat keine Verbindung zu Host"
                ),
                input.host
            ),
            evidence,
            next_steps: vec![t(
                lang,
                "Check that the host and its agent run and can reach the server.",
                "Prüfen Sie, ob Host und Agent laufen und den Server erreichen.",
            )
            .into()],
        };
    }
    for k in &input.missing {
        evidence.push(format!(
            "{} {} ({} {}), {}: {}",
            t(lang, "Key", "Schlüssel"),
            k.key_id,
            t(lang, "provider", "Anbieter"),
            k.provider,
            uses(lang, &k.uses),
            answer(lang, &k.answer)
        ));
    }
    let unlock = if input.user_may_unlock {
        format!("tresor vm unlock {vm}")
    } else {
        format!(
            "{} tresor vm unlock {vm} ({})",
            t(lang, "Ask a user with the privilege Cryptographic operations › Register VM (Cryptographer.RegisterVM) to run", "Bitten Sie einen Benutzer mit dem Recht Kryptografische Vorgänge › VM registrieren (Cryptographer.RegisterVM), auszuführen:"),
            t(lang, "you lack that privilege", "Ihnen fehlt dieses Recht")
        )
    };
    let (case, summary) = match (input.crypto_state, input.lock_reason) {
        (CryptoState::Locked, Some(LockReason::KmsClusterError)) => {
            next.push(t(lang, "Restore the connection between the server and the key provider (network, provider process, certificates); check the keys on the provider.", "Stellen Sie die Verbindung zwischen Server und Schlüsselanbieter wieder her (Netz, Anbieter, Zertifikate); prüfen Sie die Schlüssel beim Anbieter.").into());
            next.push(format!(
                "{} {unlock}",
                t(
                    lang,
                    "Then, if the VM does not unlock by itself:",
                    "Danach, falls die VM nicht von selbst entsperrt wird:"
                )
            ));
            (
                Some(1),
                crate::events::render(crate::events::VM_LOCKED_KMS_CLUSTER_ERROR, lang, &[]),
            )
        }
        (CryptoState::Locked, Some(LockReason::KeyMissingOnKms)) => {
            for k in &input.missing {
                // Tresor's own key server has a command for it; another vendor's its own tools.
                let how = if k.provider_is_tresor_kms {
                    format!("tresor kms key activate {}", k.key_id)
                } else {
                    t(
                        lang,
                        "in the provider's own administration, so that its KMIP state is Active",
                        "in der Verwaltung des Anbieters, sodass sein KMIP-Zustand Active ist",
                    )
                    .to_owned()
                };
                next.push(format!(
                    "{} {} {} {} ({how})",
                    t(
                        lang,
                        "Have the administrator of provider",
                        "Lassen Sie den Administrator des Anbieters"
                    ),
                    k.provider,
                    t(
                        lang,
                        "reactivate or restore key",
                        "den Schlüssel reaktivieren oder wiederherstellen:"
                    ),
                    k.key_id,
                ));
            }
            next.push(format!("{} {unlock}", t(lang, "Then:", "Danach:")));
            (
                Some(3),
                crate::events::render(crate::events::VM_LOCKED_KEY_MISSING_ON_KMS, lang, &[]),
            )
        }
        (CryptoState::Locked, Some(LockReason::KeyMissingOnHost)) => {
            next.push(format!("{} {unlock}", t(lang, "The server can fetch the keys itself; no key recovery is needed:", "Der Server kann die Schlüssel selbst holen; keine Schlüsselwiederherstellung nötig:")));
            (
                Some(5),
                crate::events::render(crate::events::VM_LOCKED_KEY_MISSING_ON_HOST, lang, &[]),
            )
        }
        (CryptoState::Locked, None) => {
            next.push(unlock);
            (
                None,
                t(
                    lang,
                    "The virtual machine is locked.",
                    "Die virtuelle Maschine ist gesperrt.",
                )
                .into(),
            )
        }
        // No wildcard: a new lock reason or crypto state does not build until it is handled.
        (CryptoState::Unlocked | CryptoState::Unencrypted, _) => (
            None,
            t(
                lang,
                "The virtual machine is not locked.",
                "Die virtuelle Maschine ist nicht gesperrt.",
            )
            .into(),
        ),
    };
    Diagnosis {
        vm: vm.clone(),
        case,
        summary,
        evidence,
        next_steps: next,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(reason: LockReason, answer: ProviderAnswer, may: bool) -> DiagnoseInput {
        DiagnoseInput {
            vm: "web01".into(),
            host: "host-1".into(),
            host_connected: true,
            crypto_state: CryptoState::Locked,
            lock_reason: Some(reason),
            missing: vec![MissingKey {
                key_id: "4711".into(),
                provider: "corp-kms".into(),
                uses: vec![KeyUse::Home],
                answer,
                provider_is_tresor_kms: true,
            }],
            user_may_unlock: may,
        }
    }

    #[test]
    fn case_3_names_the_key_and_the_reactivation() {
        let d = diagnose(
            &input(
                LockReason::KeyMissingOnKms,
                ProviderAnswer::NotActive("Deactivated".into()),
                true,
            ),
            Lang::En,
        );
        assert_eq!(d.case, Some(3));
        assert_eq!(
            d.summary,
            "The virtual machine is locked because keys are missing on the key provider."
        );
        assert!(
            d.evidence[0].contains("4711") && d.evidence[0].contains("Deactivated"),
            "{:?}",
            d.evidence
        );
        assert!(
            d.next_steps[0].contains("tresor kms key activate 4711"),
            "{:?}",
            d.next_steps
        );
        assert!(d.next_steps[1].contains("tresor vm unlock web01"));

        // Another vendor's key server is not told to run Tresor's key commands.
        let mut other = input(
            LockReason::KeyMissingOnKms,
            ProviderAnswer::NotActive("Deactivated".into()),
            true,
        );
        other.missing[0].provider_is_tresor_kms = false;
        for lang in [Lang::En, Lang::De] {
            let d = diagnose(&other, lang);
            assert!(
                !d.next_steps[0].contains("tresor kms"),
                "{:?}",
                d.next_steps
            );
            assert!(d.next_steps[0].contains("4711"), "{:?}", d.next_steps);
            assert!(d.next_steps[0].contains("Active"), "{:?}", d.next_steps);
        }
    }

    #[test]
    fn case_1_and_5_in_german_and_the_missing_privilege() {
        let d = diagnose(
            &input(
                LockReason::KmsClusterError,
                ProviderAnswer::Unreachable("timeout".into()),
                false,
            ),
            Lang::De,
        );
        assert_eq!(d.case, Some(1));
        assert_eq!(
            d.summary,
            "Die virtuelle Maschine ist wegen eines KMS-Clusterfehlers gesperrt."
        );
        assert!(
            d.next_steps[1].contains("Cryptographer.RegisterVM"),
            "{:?}",
            d.next_steps
        );
        let d = diagnose(
            &input(LockReason::KeyMissingOnHost, ProviderAnswer::Active, true),
            Lang::En,
        );
        assert_eq!(d.case, Some(5));
        assert!(d.next_steps[0].contains("no key recovery"));
    }

    #[test]
    fn an_unlocked_or_unreachable_vm_says_so() {
        let mut i = input(LockReason::KeyMissingOnHost, ProviderAnswer::Active, true);
        i.crypto_state = CryptoState::Unlocked;
        i.lock_reason = None;
        assert_eq!(diagnose(&i, Lang::En).case, None);
        i.host_connected = false;
        assert!(diagnose(&i, Lang::En).summary.contains("host-1"));
    }
}
