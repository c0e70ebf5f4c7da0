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

#[cfg(test)]
mod tests {
    use super::*;

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
