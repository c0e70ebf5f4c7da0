//! Privileges and the built-in roles. `Administrator` has every privilege; `NoCryptoAdmin` every
//! one but the `Cryptographer.*` set and changing permissions (which would let it grant itself the
//! rest); `ReadOnly` may only look.

use serde::{Deserialize, Serialize};

macro_rules! privileges {
    ($($variant:ident = $name:literal, $label:literal;)*) => {
        /// A privilege a role grants.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum Privilege {
            $(#[serde(rename = $name)] #[doc = $label] $variant,)*
        }

        impl Privilege {
            /// Every privilege.
            pub const ALL: &'static [Privilege] = &[$(Privilege::$variant),*];

            /// The privilege's id, as in `Cryptographer.RegisterVM`.
            pub const fn id(self) -> &'static str {
                match self { $(Privilege::$variant => $name,)* }
            }

            /// The privilege's name as people read it, as in `Cryptographic operations › Register VM`.
            pub const fn label(self) -> &'static str {
                match self { $(Privilege::$variant => $label,)* }
            }
        }
    };
}

privileges! {
    CryptoAccess = "Cryptographer.Access", "Cryptographic operations › Direct access";
    CryptoAddDisk = "Cryptographer.AddDisk", "Cryptographic operations › Add disk";
    CryptoClone = "Cryptographer.Clone", "Cryptographic operations › Clone";
    CryptoDecrypt = "Cryptographer.Decrypt", "Cryptographic operations › Decrypt";
    CryptoEncrypt = "Cryptographer.Encrypt", "Cryptographic operations › Encrypt";
    CryptoEncryptNew = "Cryptographer.EncryptNew", "Cryptographic operations › Encrypt new";
    CryptoManageEncryptionPolicy = "Cryptographer.ManageEncryptionPolicy", "Cryptographic operations › Manage encryption policies";
    CryptoManageKeyServers = "Cryptographer.ManageKeyServers", "Cryptographic operations › Manage key servers";
    CryptoManageKeys = "Cryptographer.ManageKeys", "Cryptographic operations › Manage keys";
    CryptoMigrate = "Cryptographer.Migrate", "Cryptographic operations › Migrate";
    CryptoRecrypt = "Cryptographer.Recrypt", "Cryptographic operations › Recrypt";
    CryptoRegisterHost = "Cryptographer.RegisterHost", "Cryptographic operations › Register host";
    CryptoRegisterVm = "Cryptographer.RegisterVM", "Cryptographic operations › Register VM";
    CryptoReadKeyServersInfo = "Cryptographer.ReadKeyServersInfo", "Cryptographic operations › Read key server info";
    SystemView = "System.View", "System › View";
    VmPowerOn = "VirtualMachine.PowerOn", "Virtual machine › Power on";
    VmPowerOff = "VirtualMachine.PowerOff", "Virtual machine › Power off";
    VmCreate = "VirtualMachine.Create", "Virtual machine › Create";
    VmRegister = "VirtualMachine.Register", "Virtual machine › Register";
    VmUnregister = "VirtualMachine.Unregister", "Virtual machine › Unregister";
    VmDelete = "VirtualMachine.Delete", "Virtual machine › Delete";
    VmConfig = "VirtualMachine.Config", "Virtual machine › Change configuration";
    VmConsole = "VirtualMachine.Console", "Virtual machine › Console interaction";
    HostConfig = "Host.Config", "Host › Configuration";
    HostInventory = "Host.Inventory", "Host › Add and remove hosts";
    AlarmAcknowledge = "Alarm.Acknowledge", "Alarms › Acknowledge";
    SettingsModify = "Settings.Modify", "Settings › Modify";
    AuthorizationModify = "Authorization.ModifyPermissions", "Permissions › Modify";
}

impl Privilege {
    /// Whether the privilege is one of the cryptographic operations.
    pub fn is_crypto(self) -> bool {
        self.id().starts_with("Cryptographer.")
    }

    /// The privilege with this id.
    pub fn from_id(id: &str) -> Option<Privilege> {
        Privilege::ALL.iter().copied().find(|p| p.id() == id)
    }
}

/// The built-in roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BuiltinRole {
    Administrator,
    NoCryptoAdmin,
    ReadOnly,
}

impl BuiltinRole {
    pub const ALL: [BuiltinRole; 3] = [
        BuiltinRole::Administrator,
        BuiltinRole::NoCryptoAdmin,
        BuiltinRole::ReadOnly,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BuiltinRole::Administrator => "Administrator",
            BuiltinRole::NoCryptoAdmin => "NoCryptoAdmin",
            BuiltinRole::ReadOnly => "ReadOnly",
        }
    }

    pub fn privileges(self) -> Vec<Privilege> {
        match self {
            BuiltinRole::Administrator => Privilege::ALL.to_vec(),
            // Without the right to change permissions too: otherwise it could grant itself
            // Administrator and with it every cryptographic privilege.
            BuiltinRole::NoCryptoAdmin => Privilege::ALL
                .iter()
                .copied()
                .filter(|p| !p.is_crypto() && *p != Privilege::AuthorizationModify)
                .collect(),
            BuiltinRole::ReadOnly => vec![Privilege::SystemView],
        }
    }
}

/// An operation refused for want of a privilege.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Permission denied: {action} needs the privilege {} ({}), which user {user} does not have", privilege.label(), privilege.id())]
pub struct Denied {
    pub user: String,
    pub action: String,
    pub privilege: Privilege,
}

impl Denied {
    /// The refusal in German (the action stays as the caller wrote it).
    pub fn message_de(&self) -> String {
        format!(
            "Zugriff verweigert: {} braucht das Recht {} ({}), das Benutzer {} nicht hat",
            self.action,
            self.privilege.label(),
            self.privilege.id(),
            self.user
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_hold_what_the_reference_says() {
        let admin = BuiltinRole::Administrator.privileges();
        let no_crypto = BuiltinRole::NoCryptoAdmin.privileges();
        assert_eq!(admin.len(), Privilege::ALL.len());
        assert!(no_crypto.iter().all(|p| !p.is_crypto()));
        assert!(!no_crypto.contains(&Privilege::AuthorizationModify));
        assert_eq!(
            no_crypto.len(),
            admin.len() - 15,
            "the 14 Cryptographer privileges and the one to change permissions"
        );
        assert_eq!(
            BuiltinRole::ReadOnly.privileges(),
            vec![Privilege::SystemView]
        );
    }

    #[test]
    fn a_refusal_names_the_privilege_both_ways() {
        let d = Denied {
            user: "operator".into(),
            action: "Registering encrypted VM web01".into(),
            privilege: Privilege::CryptoRegisterVm,
        };
        let text = d.to_string();
        assert!(
            text.contains("Cryptographic operations › Register VM"),
            "{text}"
        );
        assert!(text.contains("Cryptographer.RegisterVM"), "{text}");
        assert_eq!(
            Privilege::from_id("Cryptographer.RegisterVM"),
            Some(Privilege::CryptoRegisterVm)
        );
    }
}
