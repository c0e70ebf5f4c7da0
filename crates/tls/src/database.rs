//! The client side of a connection to a database server (PostgreSQL): its certificate checked as
//! libpq's `sslmode` asks, and a client certificate presented when one is given.

use std::sync::Arc;

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::CertificateError;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::config::{provider, webpki_server_verifier};
use crate::TlsError;

/// How much of the database server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatabaseVerify {
    /// Nothing but that the server holds the key of the certificate it shows (libpq's `prefer`
    /// and `require` without a root certificate): the connection is private against someone who
    /// listens, not against someone in the middle.
    Nothing,
    /// The chain up to one of the given CAs, not the name (libpq's `verify-ca`).
    Chain,
    /// The chain and that the certificate names the host connected to (libpq's `verify-full`).
    ChainAndName,
}

/// A client configuration for a database connection.
pub fn database_client_config(
    verify: DatabaseVerify,
    cas: &[CertificateDer<'static>],
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = provider();
    let algorithms = provider.signature_verification_algorithms;
    let webpki = if verify == DatabaseVerify::Nothing {
        None
    } else {
        if cas.is_empty() {
            return Err(TlsError::Certificate(
                "no CA certificate to check the database server's certificate against".into(),
            ));
        }
        Some(webpki_server_verifier(cas, &provider)?)
    };
    let verifier = Arc::new(DatabaseServerVerifier {
        verify,
        webpki,
        algorithms,
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match client {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct DatabaseServerVerifier {
    verify: DatabaseVerify,
    webpki: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for DatabaseServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(webpki) = &self.webpki else {
            return Ok(ServerCertVerified::assertion());
        };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if self.verify == DatabaseVerify::Chain => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    crate::handshake_signatures!();
}
