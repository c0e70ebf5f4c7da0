//! Mutual TLS for every connection Tresor makes or takes: loading PEM certificates and keys,
//! rustls server and client configurations (TLS 1.2 with AEAD suites and TLS 1.3), the identity of
//! a peer's certificate, and a small certificate authority for tests and first installs.

#![forbid(unsafe_code)]

/// The handshake-signature methods of a rustls certificate verifier with an `algorithms` field
/// (`WebPkiSupportedAlgorithms`): checked with those algorithms, as rustls's own verifiers do.
/// One definition for every verifier of this crate.
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls_pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls_pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    };
}
pub(crate) use handshake_signatures;

mod ca;
mod config;
mod database;
pub mod gate;
mod https;
mod identity;
pub mod io;
mod pem;

pub use ca::{
    cert_matches_key, key_and_csr, self_signed_client, CertKind, CertificateAuthority, IssuedCert,
};
pub use config::{client_config, pinned_client_config, server_config, ClientAuth};
pub use database::{database_client_config, DatabaseVerify};
pub use https::{
    fingerprint, https_client_config, https_server_config, normalize_fingerprint, ServerTrust,
};
pub use identity::{certificate_info, peer_identity, CertificateInfo};
pub use pem::{load_certs, load_key, parse_certs, parse_key};

pub use rustls;
pub use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Why a certificate, key or TLS configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("Cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("No PEM certificate found in {0}; expected a file with -----BEGIN CERTIFICATE-----")]
    NoCertificate(String),
    #[error("No PEM private key found in {0}; expected PKCS#8, PKCS#1 (RSA) or SEC1 (EC)")]
    NoKey(String),
    #[error("Invalid PEM in {path}: {message}")]
    Pem { path: String, message: String },
    #[error("Invalid certificate: {0}")]
    Certificate(String),
    #[error("TLS configuration rejected: {0}")]
    Config(#[from] rustls::Error),
    #[error("Cannot create certificate: {0}")]
    Generate(#[from] rcgen::Error),
}
