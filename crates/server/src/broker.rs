//! The key broker: the server is the only KMIP client. It creates KEKs on a provider (and records
//! only their ids), and fetches a key by id when a host needs it, classifying the provider's
//! answer the way the locked-VM engine needs it: a key that is there but not Active counts as
//! missing, as in the reference design; a refusal and an unreachable provider are told apart.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tresor_core::ids::KeyRef;
use tresor_core::protocol::SecretBytes;
use tresor_core::vm::ProviderAnswer;
use tresor_kmip::message::{RequestPayload, ResponsePayload};
use tresor_kmip::spec::{ResultReason, State};
use tresor_kmip::Value;
use tresor_kmip_client::{name_attribute, ClientConfig, ClientError, KmipClient};

/// Why a key could not be created.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("No key provider named {0}; add it with: tresor provider add {0} --kmip HOST:PORT --ca FILE")]
    UnknownProvider(String),
    #[error("Key provider {provider} could not create a key: {error}")]
    Create {
        provider: String,
        error: ClientError,
    },
    #[error("Key provider {provider} could not deactivate key {key}: {error}; deactivate it there by hand")]
    Deactivate {
        provider: String,
        key: String,
        error: ClientError,
    },
}

/// The providers the server knows, by name.
#[derive(Debug, Default)]
pub struct KeyBroker {
    providers: RwLock<HashMap<String, Arc<KmipClient>>>,
}

impl KeyBroker {
    pub fn new() -> KeyBroker {
        KeyBroker::default()
    }

    /// Adds or replaces a provider. A provider's name is its identity: keys are `(name, id)`.
    pub fn set_provider(&self, name: &str, config: ClientConfig) {
        if let Ok(mut p) = self.providers.write() {
            p.insert(name.to_owned(), Arc::new(KmipClient::new(config)));
        }
    }

    pub fn remove_provider(&self, name: &str) -> bool {
        self.providers
            .write()
            .map(|mut p| p.remove(name).is_some())
            .unwrap_or(false)
    }

    /// The KMIP client of a provider.
    pub fn client_of(&self, name: &str) -> Option<Arc<KmipClient>> {
        self.providers
            .read()
            .ok()
            .and_then(|p| p.get(name).cloned())
    }

    /// Creates and activates an AES-256 KEK for `purpose` (a VM or host name) on `provider`.
    pub async fn create_kek(&self, provider: &str, purpose: &str) -> Result<KeyRef, BrokerError> {
        let client = self
            .client_of(provider)
            .ok_or_else(|| BrokerError::UnknownProvider(provider.into()))?;
        let err = |error| BrokerError::Create {
            provider: provider.into(),
            error,
        };
        let made = async {
            let uid = client
                .create_aes_key(256, vec![name_attribute(&format!("tresor:{purpose}"))])
                .await?;
            client.activate(&uid).await?;
            Ok(uid)
        }
        .await;
        crate::metrics::METRICS.key_created(provider, made.is_ok());
        Ok(KeyRef::new(provider, &made.map_err(err)?))
    }

    /// Deactivates a key the server created for an operation that then failed, so that no
    /// Active key is left behind that nothing uses (KMIP Revoke, cessation of operation).
    pub async fn deactivate(&self, key: &KeyRef, why: &str) -> Result<(), BrokerError> {
        let client = self
            .client_of(key.provider())
            .ok_or_else(|| BrokerError::UnknownProvider(key.provider().into()))?;
        let reason = tresor_kmip::message::RevocationReason {
            code: tresor_kmip::spec::RevocationReasonCode::CessationOfOperation as u32,
            message: Some(why.chars().take(200).collect()),
        };
        client
            .revoke(&key.key_id, reason)
            .await
            .map_err(|error| BrokerError::Deactivate {
                provider: key.provider().into(),
                key: key.key_id.clone(),
                error,
            })
    }

    /// Asks the provider for a key: its state, and its material when it is Active.
    pub async fn fetch(&self, key: &KeyRef) -> (ProviderAnswer, Option<SecretBytes>) {
        let Some(client) = self.client_of(key.provider()) else {
            return (
                ProviderAnswer::Unreachable(format!(
                    "no key provider named {} is configured; add one with that exact name (its addresses may differ)",
                    key.provider()
                )),
                None,
            );
        };
        let started = std::time::Instant::now();
        let out = match client.batch(fetch_items(&key.key_id)).await {
            Ok(results) => {
                let mut results = results.into_iter();
                answer(results.next(), results.next())
            }
            Err(e) => (classify(&e), None),
        };
        crate::metrics::METRICS.keys_fetched(key.provider(), [&out.0], started.elapsed());
        out
    }

    /// Asks one provider for many keys in one KMIP message (a Get Attributes and a Get for each,
    /// the server asked to go on past a failed item), as the engine does when many hosts need
    /// keys at once. The answers are in the order of `keys`. A key the server did not answer
    /// for in the batch is asked for on its own.
    pub async fn fetch_many(
        &self,
        provider: &str,
        keys: &[KeyRef],
    ) -> Vec<(ProviderAnswer, Option<SecretBytes>)> {
        let Some(client) = self.client_of(provider) else {
            let mut out = Vec::new();
            for k in keys {
                out.push(self.fetch(k).await);
            }
            return out;
        };
        let items: Vec<RequestPayload> = keys.iter().flat_map(|k| fetch_items(&k.key_id)).collect();
        let started = std::time::Instant::now();
        let results = client.batch_continuing(items).await;
        let took = started.elapsed();
        let mut results = match results {
            Ok(r) => r.into_iter(),
            // A connection problem is the same answer for every key.
            Err(e @ (ClientError::Connection { .. } | ClientError::AllEndpoints(_))) => {
                let out: Vec<_> = keys.iter().map(|_| (classify(&e), None)).collect();
                crate::metrics::METRICS.keys_fetched(provider, out.iter().map(|o| &o.0), took);
                return out;
            }
            Err(_) => Vec::new().into_iter(),
        };
        let mut out = Vec::with_capacity(keys.len());
        let mut answered = Vec::new();
        for k in keys {
            match (results.next(), results.next()) {
                (Some(state), Some(get)) => {
                    let a = answer(Some(state), Some(get));
                    answered.push(a.0.clone());
                    out.push(a);
                }
                // Asked again on its own (and counted there).
                _ => out.push(self.fetch(k).await),
            }
        }
        crate::metrics::METRICS.keys_fetched(provider, &answered, took);
        out
    }

    /// Which endpoint of a provider answers (a Discover Versions), or why none does.
    pub async fn probe(&self, provider: &str) -> Result<String, String> {
        let client = self
            .client_of(provider)
            .ok_or_else(|| format!("no key provider named {provider}"))?;
        match client
            .call(RequestPayload::DiscoverVersions { versions: vec![] })
            .await
        {
            Ok(_) => Ok(client.current_endpoint().to_owned()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The operations that fetch a key: its state, then its material.
fn fetch_items(uid: &str) -> Vec<RequestPayload> {
    vec![
        RequestPayload::GetAttributes {
            uid: Some(uid.to_owned()),
            names: vec!["State".into()],
        },
        RequestPayload::Get {
            uid: Some(uid.to_owned()),
            key_format_type: None,
            key_compression_type: None,
            key_wrapping_specification: None,
        },
    ]
}

/// What the answers to [`fetch_items`] say: the key's state, and its material when Active.
fn answer(
    state: Option<tresor_kmip_client::ItemResult>,
    get: Option<tresor_kmip_client::ItemResult>,
) -> (ProviderAnswer, Option<SecretBytes>) {
    let state = match state {
        Some(Ok(ResponsePayload::GetAttributes { attributes, .. })) => {
            attributes.iter().find_map(|a| match a.value {
                Value::Enumeration(s) => State::from_u32(s),
                _ => None,
            })
        }
        Some(Err(e)) => return (classify(&e), None),
        _ => None,
    };
    match state {
        Some(State::Active) => {}
        Some(other) => {
            return (
                ProviderAnswer::NotActive(other.spec_name().to_owned()),
                None,
            )
        }
        None => return (ProviderAnswer::NotActive("unknown".into()), None),
    }
    match get {
        Some(Ok(ResponsePayload::Get { object, .. })) => {
            match tresor_kmip::message::key_material(&object.item) {
                Some(bytes) => (
                    ProviderAnswer::Active,
                    Some(SecretBytes::new(bytes.to_vec())),
                ),
                None => (
                    ProviderAnswer::Unreachable(
                        "the provider returned the key without plain key material".into(),
                    ),
                    None,
                ),
            }
        }
        Some(Err(e)) => (classify(&e), None),
        _ => (
            ProviderAnswer::Unreachable("the provider did not answer the Get".into()),
            None,
        ),
    }
}

/// What a failure means for a key.
fn classify(e: &ClientError) -> ProviderAnswer {
    match e.reason() {
        Some(ResultReason::ItemNotFound) => ProviderAnswer::NotFound,
        Some(ResultReason::PermissionDenied) => ProviderAnswer::PermissionDenied(e.to_string()),
        Some(_) => ProviderAnswer::Unreachable(e.to_string()),
        None => ProviderAnswer::Unreachable(e.to_string()),
    }
}
