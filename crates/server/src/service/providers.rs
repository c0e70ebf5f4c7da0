//! Key providers as the API sees them: adding one (with the way the server proves itself to
//! it), listing, probing, the default, the signed certificate of a CSR, removal. The trust and
//! the probes themselves live in [`crate::providers`].

use tresor_api::requests::{AddProvider, SignedCertificate};
use tresor_api::views::{Provider, ProviderAdded, ProviderStatus};
use tresor_api::ErrorCode;
use tresor_core::ids::NameKind;

use super::{check_name, Context, ServiceError};
use crate::providers::{Credentials, NewProvider, ProviderError};

/// The key providers.
#[derive(Clone, Copy, Debug)]
pub struct ProviderService<'a> {
    pub(super) cx: &'a Context,
}

impl From<ProviderError> for ServiceError {
    fn from(e: ProviderError) -> ServiceError {
        let e = match e {
            ProviderError::Store(inner) => return inner.into(),
            other => other,
        };
        let code = match &e {
            ProviderError::Store(_) => ErrorCode::Storage,
            ProviderError::Unknown(_) => ErrorCode::NotFound,
            ProviderError::Exists(_)
            | ProviderError::NotPending(_)
            | ProviderError::InUse { .. } => ErrorCode::Conflict,
            ProviderError::KeyFile { .. } => ErrorCode::Storage,
            _ => ErrorCode::Invalid,
        };
        ServiceError::new(code, e.to_string())
    }
}

impl ProviderService<'_> {
    /// Adds a provider: its endpoints, its CA, and one way for the server to prove itself (a
    /// client certificate and key, a self-signed certificate, or a CSR).
    pub fn add(&self, req: AddProvider) -> Result<ProviderAdded, ServiceError> {
        check_name(NameKind::Provider, &req.name)?;
        let credentials = match (req.client_cert_pem, req.client_key_pem, req.self_signed, req.csr)
        {
            (Some(cert_pem), Some(key_pem), false, false) => Credentials::Upload { cert_pem, key_pem },
            (None, None, true, false) => Credentials::SelfSigned,
            (None, None, false, true) => Credentials::Csr,
            _ => {
                return Err(ServiceError::new(
                    ErrorCode::Invalid,
                    "Choose one way for the server to prove itself to the provider: a client certificate and its key (--client-cert FILE --client-key FILE), --self-signed, or --csr OUT",
                ))
            }
        };
        let name = req.name.clone();
        let added = self.cx.providers.add(NewProvider {
            name: req.name,
            endpoints: req.endpoints,
            ca_pem: req.ca_pem,
            credentials,
            make_default: req.default,
        })?;
        Ok(ProviderAdded {
            provider: self.cx.providers.show(&name)?,
            added,
        })
    }

    pub fn list(&self) -> Result<Vec<Provider>, ServiceError> {
        Ok(self.cx.providers.list()?)
    }

    pub fn show(&self, name: &str) -> Result<Provider, ServiceError> {
        Ok(self.cx.providers.show(name)?)
    }

    /// Probes every endpoint now.
    pub async fn probe(&self, name: &str) -> Result<ProviderStatus, ServiceError> {
        Ok(self.cx.providers.probe(name).await?)
    }

    pub fn set_default(&self, name: &str) -> Result<(), ServiceError> {
        Ok(self.cx.providers.set_default(name)?)
    }

    /// The certificate the provider signed from the server's CSR.
    pub fn complete_csr(
        &self,
        name: &str,
        req: &SignedCertificate,
    ) -> Result<Provider, ServiceError> {
        self.cx.providers.complete_csr(name, &req.client_cert_pem)?;
        self.show(name)
    }

    /// Removes a provider no key depends on.
    pub fn remove(&self, name: &str) -> Result<(), ServiceError> {
        Ok(self.cx.providers.remove(name)?)
    }
}
