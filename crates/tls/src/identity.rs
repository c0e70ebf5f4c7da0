//! Who is on the other end: the identity a certificate names, and the facts an operator checks.

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::TlsError;

/// The identity of a peer: the subject of its certificate, as an RFC 4514 string
/// (`CN=vcenter.example.com, O=Example`). Objects on the key server belong to such identities.
pub fn peer_identity(cert: &CertificateDer<'_>) -> Result<String, TlsError> {
    Ok(certificate_info(cert)?.subject)
}

/// What an operator needs to know about a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateInfo {
    pub subject: String,
    pub issuer: String,
    /// Seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
    pub serial: String,
    /// SHA-256 of the DER encoding, hex.
    pub sha256: String,
    pub is_ca: bool,
}

/// Reads the facts of a certificate.
pub fn certificate_info(cert: &CertificateDer<'_>) -> Result<CertificateInfo, TlsError> {
    let (_, x509) = X509Certificate::from_der(cert.as_ref())
        .map_err(|e| TlsError::Certificate(format!("not an X.509 certificate: {e}")))?;
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    Ok(CertificateInfo {
        subject: x509.subject().to_string(),
        issuer: x509.issuer().to_string(),
        not_before: x509.validity().not_before.timestamp(),
        not_after: x509.validity().not_after.timestamp(),
        serial: x509.raw_serial_as_string(),
        sha256: digest.as_ref().iter().map(|b| format!("{b:02x}")).collect(),
        is_ca: x509.is_ca(),
    })
}
