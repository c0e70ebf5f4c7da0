//! TLS for the REST API and the web console: a server that asks for no client certificate, and
//! the ways an API client trusts a server: a CA, a pinned certificate, or (for tests) anything.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::CertificateError;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::config::provider;
use crate::TlsError;

/// The SHA-256 fingerprint of a certificate as people compare it: upper-case hex pairs joined by
/// colons (what `openssl x509 -noout -fingerprint -sha256` prints after `=`).
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    d.as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A fingerprint as typed or stored, reduced to lower-case hex without separators; `None` when it
/// is not 32 bytes of hex (with or without colons, with or without a `sha256:` prefix).
pub fn normalize_fingerprint(text: &str) -> Option<String> {
    let t = text.trim();
    let t = t
        .strip_prefix("sha256:")
        .or_else(|| t.strip_prefix("SHA256:"))
        .unwrap_or(t);
    let hex: String = t.chars().filter(|c| *c != ':').collect();
    (hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| hex.to_ascii_lowercase())
}

/// The API server: this chain and key, no client certificate asked for (users sign in with a
/// password or token), HTTP/1.1.
pub fn https_server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.ignore_client_order = true;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// How an API client decides that it speaks to the right server.
#[derive(Clone, Debug)]
pub enum ServerTrust {
    /// A chain to one of these CAs, for the name in the URL.
    Roots(Vec<CertificateDer<'static>>),
    /// Exactly this server certificate (normalized SHA-256 hex, see [`normalize_fingerprint`]),
    /// as SSH pins a host key: first seen and confirmed by a person.
    Pinned(String),
    /// Anything, for tests only. The server's certificate is recorded in `seen`.
    Anything,
}

/// The client side of the API: what the server presented last is written to `seen` (so that a
/// refusal or a first contact can show its fingerprint).
pub fn https_client_config(
    trust: &ServerTrust,
    seen: Arc<Mutex<Option<CertificateDer<'static>>>>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = provider();
    let algorithms = provider.signature_verification_algorithms;
    let inner: Option<Arc<dyn ServerCertVerifier>> = match trust {
        ServerTrust::Roots(cas) if !cas.is_empty() => {
            Some(crate::config::webpki_server_verifier(cas, &provider)?)
        }
        _ => None,
    };
    let verifier = Arc::new(ApiServerVerifier {
        trust: trust.clone(),
        inner,
        seen,
        algorithms,
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct ApiServerVerifier {
    trust: ServerTrust,
    inner: Option<Arc<dyn ServerCertVerifier>>,
    seen: Arc<Mutex<Option<CertificateDer<'static>>>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ApiServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut s) = self.seen.lock() {
            *s = Some(end_entity.clone().into_owned());
        }
        match &self.trust {
            ServerTrust::Anything => Ok(ServerCertVerified::assertion()),
            ServerTrust::Pinned(pin) => {
                let d = ring::digest::digest(&ring::digest::SHA256, end_entity.as_ref());
                let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
                if &hex == pin {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(rustls::Error::InvalidCertificate(
                        CertificateError::ApplicationVerificationFailure,
                    ))
                }
            }
            ServerTrust::Roots(_) => match &self.inner {
                Some(v) => v.verify_server_cert(end_entity, intermediates, server_name, ocsp, now),
                None => Err(rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer,
                )),
            },
        }
    }

    crate::handshake_signatures!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_read_as_people_write_them() {
        let hex = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(
            normalize_fingerprint(&colons).as_deref(),
            Some(hex.as_str())
        );
        assert_eq!(
            normalize_fingerprint(&format!("sha256:{hex}")).as_deref(),
            Some(hex.as_str())
        );
        assert_eq!(normalize_fingerprint("ab:cd"), None);
        assert_eq!(normalize_fingerprint(&"zz".repeat(32)), None);
    }
}
