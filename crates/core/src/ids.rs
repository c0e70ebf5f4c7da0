//! Names of things. A key is identified by its provider's name and its id on that provider; the
//! provider's name is its identity (renaming a provider would break the link to every key).

use serde::{Deserialize, Serialize};

/// The name of a key provider, for example `corp-kms`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProviderName(pub String);

/// A provider as the reference API names it: `{"id": "<provider name>"}`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProviderId {
    pub id: ProviderName,
}

/// A key: its id on a provider. Serialised as `{"keyId": "…", "providerId": {"id": "…"}}`, the
/// shape the procedure's `config.keyId.keyId` path expects.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyRef {
    pub key_id: String,
    pub provider_id: ProviderId,
}

impl KeyRef {
    pub fn new(provider: &str, key_id: &str) -> KeyRef {
        KeyRef {
            key_id: key_id.to_owned(),
            provider_id: ProviderId {
                id: ProviderName(provider.to_owned()),
            },
        }
    }

    pub fn provider(&self) -> &str {
        &self.provider_id.id.0
    }
}

impl std::fmt::Display for KeyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} on provider {}", self.key_id, self.provider())
    }
}

/// What a name names, for the message of a refused one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameKind {
    Vm,
    Host,
    Provider,
    User,
    Role,
}

impl NameKind {
    fn as_str(self) -> &'static str {
        match self {
            NameKind::Vm => "VM",
            NameKind::Host => "host",
            NameKind::Provider => "key provider",
            NameKind::User => "user",
            NameKind::Role => "role",
        }
    }
}

/// The longest name of a VM, host, provider, user or role.
pub const MAX_NAME: usize = 63;

/// A name that is refused, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("The {kind} name {shown} is not allowed: {why}. Use 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit")]
pub struct BadName {
    kind: &'static str,
    /// The name as it may be shown (control characters escaped, cut short).
    shown: String,
    why: &'static str,
}

/// Checks the name of a VM, host, provider, user or role. Names become folder names, QEMU
/// option values, table cells and log fields, so they are plain: ASCII letters, digits, `.`, `_`
/// and `-`, starting with a letter or digit, at most [`MAX_NAME`] long. No `/`, no `..`, no
/// comma, no white space or control characters.
/// The names [`check_name`] allows, as a regular expression (for API documents).
pub const NAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$";

pub fn check_name(kind: NameKind, name: &str) -> Result<(), BadName> {
    let why = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_NAME {
        Some("it is longer than 63 characters")
    } else if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        Some("it must start with a letter or digit")
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        Some("it holds a character other than letters, digits, '.', '_' and '-'")
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(BadName {
            kind: kind.as_str(),
            shown: format!("{:?}", name.chars().take(80).collect::<String>()),
            why,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_become_paths_options_or_rows_are_refused() {
        for good in ["web01", "db-01.prod", "A_b", "host-1", "x"] {
            assert_eq!(check_name(NameKind::Vm, good), Ok(()), "{good}");
        }
        let long = "a".repeat(64);
        for bad in [
            "",
            "../../../x",
            "/etc",
            "a/b",
            "..",
            ".hidden",
            "a,b",
            "a\nb",
            "a b",
            "-x",
            "web\u{0}01",
            "wéb",
            &long,
        ] {
            let e = check_name(NameKind::Vm, bad).unwrap_err();
            assert!(e.to_string().starts_with("The VM name"), "{e}");
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }

    #[test]
    fn key_refs_serialise_as_the_reference_api_does() {
        let k = KeyRef::new("corp-kms", "4711");
        let json = serde_json::to_value(&k).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"keyId": "4711", "providerId": {"id": "corp-kms"}})
        );
        assert_eq!(k.to_string(), "4711 on provider corp-kms");
    }
}
