//! rustls configurations for Tresor's servers and clients.
//!
//! Both sides offer TLS 1.3 and TLS 1.2 with ECDHE and AEAD suites only (AES-GCM and
//! ChaCha20-Poly1305), and accept RSA and ECDSA certificates. A server always asks for a client
//! certificate and refuses a connection without one.

use std::sync::Arc;

use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DistinguishedName, RootCertStore};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, TrustAnchor, UnixTime};

use crate::TlsError;

/// How a server checks client certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// A certificate chained to a trusted CA, whatever its extended key usage. Many KMIP clients
    /// (vCenter among them) present certificates issued for server authentication only.
    #[default]
    AnyExtendedKeyUsage,
    /// As above, and the certificate must allow client authentication if it lists usages.
    RequireClientAuthUsage,
    /// Client certificates are checked as with `RequireClientAuthUsage` when presented, but a
    /// client may come without one (an agent enrolling with a join token).
    OptionalClientAuthUsage,
}

/// The *ring* provider with AES-128-GCM suites preferred: their handshakes hash with SHA-256,
/// which current x86 and ARM processors compute in hardware, where SHA-384 (of the AES-256
/// suites) is computed in software. Both stay offered; a new connection costs less.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| (s.version() != &rustls::version::TLS13, !is_aes_128(s)));
    Arc::new(provider)
}

fn is_aes_128(suite: &rustls::SupportedCipherSuite) -> bool {
    use rustls::CipherSuite as S;
    matches!(
        suite.suite(),
        S::TLS13_AES_128_GCM_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    )
}

/// rustls's own check of a server's certificate, chained to one of `cas`, with its name.
pub(crate) fn webpki_server_verifier(
    cas: &[CertificateDer<'static>],
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<rustls::client::WebPkiServerVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots
            .add(ca.clone())
            .map_err(|e| TlsError::Certificate(format!("CA certificate cannot be trusted: {e}")))?;
    }
    rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Certificate(e.to_string()))
}

/// A server configuration: this chain and key, client certificates checked against `client_cas`.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_cas: &[CertificateDer<'static>],
    client_auth: ClientAuth,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(ClientVerifier::new(
        client_cas,
        client_auth,
        provider.signature_verification_algorithms,
    )?);
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    // This server's order of suites (above) decides, whatever order a client lists them in.
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// A client configuration: servers checked against `server_cas`, this chain and key presented.
pub fn client_config(
    server_cas: &[CertificateDer<'static>],
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in server_cas {
        roots
            .add(ca.clone())
            .map_err(|e| TlsError::Certificate(format!("CA certificate cannot be trusted: {e}")))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// Checks client certificates against a set of CAs, optionally without looking at their
/// extended key usage.
#[derive(Debug)]
struct ClientVerifier {
    anchors: Vec<TrustAnchor<'static>>,
    subjects: Vec<DistinguishedName>,
    auth: ClientAuth,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientVerifier {
    fn new(
        cas: &[CertificateDer<'static>],
        auth: ClientAuth,
        algorithms: WebPkiSupportedAlgorithms,
    ) -> Result<Self, TlsError> {
        if cas.is_empty() {
            return Err(TlsError::Certificate(
                "no client CA configured: a server must know which CA issues its clients' certificates".into(),
            ));
        }
        let mut anchors = Vec::new();
        let mut subjects = Vec::new();
        for ca in cas {
            let anchor = webpki::anchor_from_trusted_cert(ca)
                .map_err(|e| {
                    TlsError::Certificate(format!("client CA certificate cannot be used: {e}"))
                })?
                .to_owned();
            subjects.push(DistinguishedName::in_sequence(anchor.subject.as_ref()));
            anchors.push(anchor);
        }
        Ok(ClientVerifier {
            anchors,
            subjects,
            auth,
            algorithms,
        })
    }
}

/// Accepts any extended key usage.
struct AnyUsage;

impl webpki::ExtendedKeyUsageValidator for AnyUsage {
    fn validate(&self, iter: webpki::KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        for id in iter {
            id?;
        }
        Ok(())
    }
}

fn map_webpki(e: webpki::Error) -> rustls::Error {
    use webpki::Error as E;
    let ce = match e {
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::CertExpired { .. } => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::CertRevoked => CertificateError::Revoked,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        E::RequiredEkuNotFoundContext(_) => CertificateError::InvalidPurpose,
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(ce)
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.subjects
    }

    fn client_auth_mandatory(&self) -> bool {
        self.auth != ClientAuth::OptionalClientAuthUsage
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(map_webpki)?;
        let algs = self.algorithms.all;
        let result = match self.auth {
            ClientAuth::AnyExtendedKeyUsage => cert.verify_for_usage(
                algs,
                &self.anchors,
                intermediates,
                now,
                AnyUsage,
                None,
                None,
            ),
            ClientAuth::RequireClientAuthUsage | ClientAuth::OptionalClientAuthUsage => cert
                .verify_for_usage(
                    algs,
                    &self.anchors,
                    intermediates,
                    now,
                    webpki::KeyUsage::client_auth(),
                    None,
                    None,
                ),
        };
        result
            .map(|_| ClientCertVerified::assertion())
            .map_err(map_webpki)
    }

    crate::handshake_signatures!();
}

/// A client configuration that trusts a server whose chain contains a CA certificate with this
/// SHA-256 fingerprint (hex), the way an enrolment token pins the server: no CA file needed in
/// advance. The client presents no certificate.
pub fn pinned_client_config(ca_sha256: &str) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(PinnedVerifier {
        pin: ca_sha256.to_ascii_lowercase(),
        algorithms: provider.signature_verification_algorithms,
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct PinnedVerifier {
    pin: String,
    algorithms: WebPkiSupportedAlgorithms,
}

impl rustls::client::danger::ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let pinned = intermediates
            .iter()
            .find(|c| {
                let d = ring::digest::digest(&ring::digest::SHA256, c.as_ref());
                d.as_ref()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
                    == self.pin
            })
            .ok_or(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            ))?;
        let anchor = webpki::anchor_from_trusted_cert(pinned).map_err(map_webpki)?;
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(map_webpki)?;
        cert.verify_for_usage(
            self.algorithms.all,
            &[anchor],
            &[],
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(map_webpki)?;
        cert.verify_is_valid_for_subject_name(server_name)
            .map_err(map_webpki)?;
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    crate::handshake_signatures!();
}

#[cfg(test)]
mod suite_order_tests {
    use super::*;

    #[test]
    fn aes_128_gcm_is_preferred_and_every_suite_still_offered() {
        let p = provider();
        let all = rustls::crypto::ring::default_provider().cipher_suites;
        assert_eq!(p.cipher_suites.len(), all.len());
        assert_eq!(
            p.cipher_suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
        let first_tls12 = p
            .cipher_suites
            .iter()
            .find(|s| s.version() == &rustls::version::TLS12)
            .expect("TLS 1.2 suites offered");
        assert!(is_aes_128(first_tls12));
    }
}
