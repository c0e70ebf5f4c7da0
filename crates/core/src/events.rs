//! Event types and their messages in English and German (the message catalogue).
//!
//! Types are named `area.what[.why]`. The four VM lock and unlock types and their messages are
//! fixed by the surface contract; the others are Tresor's own. A message may name arguments in
//! braces (`{key}`), filled in by [`render`].

use serde::{Deserialize, Serialize};

use crate::vm::LockReason;
use crate::Lang;

/// How serious an event is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl Severity {
    /// The name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// One event type of the catalogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventType {
    pub id: &'static str,
    pub severity: Severity,
    pub en: &'static str,
    pub de: &'static str,
}

macro_rules! catalogue {
    ($($konst:ident = $id:literal, $sev:ident, $en:literal, $de:literal;)*) => {
        $(pub const $konst: EventType = EventType { id: $id, severity: Severity::$sev, en: $en, de: $de };)*
        /// Every event type.
        pub static ALL: &[EventType] = &[$($konst),*];
    };
}

catalogue! {
    VM_LOCKED_KMS_CLUSTER_ERROR = "vm.locked.kmsClusterError", Error,
        "The virtual machine is locked because of a key provider error.",
        "Die virtuelle Maschine ist wegen eines KMS-Clusterfehlers gesperrt.";
    VM_LOCKED_KEY_MISSING_ON_KMS = "vm.locked.keyMissingOnKms", Error,
        "The virtual machine is locked because keys are missing on the key provider.",
        "Die virtuelle Maschine ist gesperrt, weil Schlüssel auf dem KMS-Cluster fehlen.";
    VM_LOCKED_KEY_MISSING_ON_HOST = "vm.locked.keyMissingOnHost", Error,
        "The virtual machine is locked because keys are missing on the host.",
        "Die virtuelle Maschine ist gesperrt, weil Schlüssel auf dem Host fehlen.";
    VM_STOPPED = "vm.stopped", Info,
        "VM {vm} on host {host} stopped without Tresor asking: the guest powered itself off, or its QEMU process or libvirt domain was stopped outside Tresor.",
        "Die VM {vm} auf Host {host} wurde beendet, ohne dass Tresor es veranlasst hat: Der Gast hat sich selbst ausgeschaltet, oder sein QEMU-Prozess bzw. seine libvirt-Domäne wurde außerhalb von Tresor beendet.";
    VM_POWERED_ON = "vm.poweredOn", Info,
        "VM {vm} on host {host} was powered on by {user}.",
        "Die VM {vm} auf Host {host} wurde von {user} eingeschaltet.";
    VM_POWERED_OFF = "vm.poweredOff", Info,
        "VM {vm} on host {host} was powered off by {user}.",
        "Die VM {vm} auf Host {host} wurde von {user} ausgeschaltet.";
    VM_UNLOCKED = "vm.unlocked", Info,
        "The virtual machine is unlocked.",
        "Die virtuelle Maschine ist entsperrt.";
    PROVIDER_UNREACHABLE = "provider.unreachable", Error,
        "Key provider {provider} cannot be reached: {error}",
        "Der Schlüsselanbieter {provider} ist nicht erreichbar: {error}";
    PROVIDER_REACHABLE = "provider.reachable", Info,
        "Key provider {provider} answers again (endpoint {endpoint}).",
        "Der Schlüsselanbieter {provider} antwortet wieder (Endpunkt {endpoint}).";
    PROVIDER_CERT_EXPIRING = "provider.certificate.expiring", Warning,
        "The {which} certificate of key provider {provider} expires on {date}.",
        "Das {which}-Zertifikat des Schlüsselanbieters {provider} läuft am {date} ab.";
    KEY_PUSHED = "key.pushed", Info,
        "Key {key} was sent to host {host} (caused by {by}).",
        "Schlüssel {key} wurde an Host {host} gesendet (veranlasst von {by}).";
    KEY_PUSH_FAILED = "key.push.failed", Error,
        "Key {key} could not be sent to host {host}: {error}",
        "Schlüssel {key} konnte nicht an Host {host} gesendet werden: {error}";
    KEY_CREATE_FAILED = "key.create.failed", Error,
        "Key provider {provider} could not create a key: {error}",
        "Der Schlüsselanbieter {provider} konnte keinen Schlüssel erzeugen: {error}";
    HOST_CRYPTO_ENABLED = "host.crypto.enabled", Info,
        "Encryption mode of host {host} is enabled (safe).",
        "Der Verschlüsselungsmodus von Host {host} ist aktiviert (sicher).";
    HOST_CRYPTO_DISABLED = "host.crypto.disabled", Info,
        "Encryption mode of host {host} is disabled; it ends when the host restarts.",
        "Der Verschlüsselungsmodus von Host {host} ist deaktiviert; er endet mit dem Neustart des Hosts.";
    VM_DISCOVERED = "vm.discovered", Warning,
        "Host {host} reports VM {vm} ({path}), which the server's registry does not hold as reported: {reason}. It is not unlocked; if it is yours, register it (tresor vm register PATH --host {host}).",
        "Host {host} meldet die VM {vm} ({path}), die das Register des Servers so nicht enthält: {reason}. Sie wird nicht entsperrt; gehört sie Ihnen, registrieren Sie sie (tresor vm register PFAD --host {host}).";
    HOST_CONNECTED = "host.connected", Info,
        "The agent of host {host} is connected.",
        "Der Agent von Host {host} ist verbunden.";
    HOST_DISCONNECTED = "host.disconnected", Warning,
        "The agent of host {host} lost its connection; its VMs are shown disconnected until it connects again (check the agent on the host and the network to the server).",
        "Der Agent von Host {host} hat die Verbindung verloren; seine VMs gelten als getrennt, bis er sich wieder verbindet (prüfen Sie den Agenten auf dem Host und das Netz zum Server).";
    HOST_REBOOTED = "host.rebooted", Warning,
        "Host {host} was restarted by {user}: its VMs were stopped and its key cache emptied.",
        "Host {host} wurde von {user} neu gestartet: Seine VMs wurden beendet und sein Schlüsselspeicher geleert.";
    HOST_REMOVED = "host.removed", Warning,
        "Host {host} was removed by {user}; its certificate is refused from now on.",
        "Host {host} wurde von {user} entfernt; sein Zertifikat wird ab jetzt abgewiesen.";
    CRYPTO_OPERATION_FAILED = "crypto.operation.failed", Warning,
        "{user} could not perform {operation} with key {key}: {error}",
        "{user} konnte {operation} mit Schlüssel {key} nicht ausführen: {error}";
    CRYPTO_OPERATION = "crypto.operation", Info,
        "{user} performed {operation} with key {key}.",
        "{user} hat {operation} mit Schlüssel {key} ausgeführt.";
}

/// The event type of a lock with this cause.
pub fn locked(reason: LockReason) -> EventType {
    match reason {
        LockReason::KmsClusterError => VM_LOCKED_KMS_CLUSTER_ERROR,
        LockReason::KeyMissingOnKms => VM_LOCKED_KEY_MISSING_ON_KMS,
        LockReason::KeyMissingOnHost => VM_LOCKED_KEY_MISSING_ON_HOST,
    }
}

/// The event type with this id.
pub fn by_id(id: &str) -> Option<EventType> {
    ALL.iter().copied().find(|e| e.id == id)
}

/// Renders an event's message in `lang`, filling `{name}` with the argument of that name.
pub fn render(event: EventType, lang: Lang, args: &[(&str, &str)]) -> String {
    let mut text = match lang {
        Lang::En => event.en,
        Lang::De => event.de,
    }
    .to_owned();
    for (name, value) in args {
        text = text.replace(&format!("{{{name}}}"), value);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixed_messages_are_exactly_the_contracts() {
        let e = locked(LockReason::KeyMissingOnKms);
        assert_eq!(e.id, "vm.locked.keyMissingOnKms");
        assert_eq!(
            render(e, Lang::De, &[]),
            "Die virtuelle Maschine ist gesperrt, weil Schlüssel auf dem KMS-Cluster fehlen."
        );
        assert_eq!(
            render(VM_UNLOCKED, Lang::En, &[]),
            "The virtual machine is unlocked."
        );
        assert_eq!(
            locked(LockReason::KmsClusterError).en,
            "The virtual machine is locked because of a key provider error."
        );
        assert_eq!(
            locked(LockReason::KeyMissingOnHost).de,
            "Die virtuelle Maschine ist gesperrt, weil Schlüssel auf dem Host fehlen."
        );
    }

    #[test]
    fn arguments_fill_the_messages_in_both_languages() {
        let args = [("key", "4711"), ("host", "host-1"), ("error", "refused")];
        assert_eq!(
            render(KEY_PUSH_FAILED, Lang::En, &args),
            "Key 4711 could not be sent to host host-1: refused"
        );
        assert!(!render(KEY_PUSH_FAILED, Lang::De, &args).contains('{'));
    }

    #[test]
    fn ids_are_unique_and_in_area_what_style() {
        for (i, e) in ALL.iter().enumerate() {
            assert!(ALL[..i].iter().all(|o| o.id != e.id), "{} twice", e.id);
            assert!(e.id.contains('.') && !e.id.contains(' '), "{}", e.id);
            assert_eq!(by_id(e.id), Some(*e));
        }
    }
}
