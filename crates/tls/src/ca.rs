//! A small certificate authority: enough to set up mutual TLS for a test or a first install.
//! Keys are ECDSA P-256.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use crate::TlsError;

/// What a certificate is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertKind {
    /// A TLS server (extended key usage serverAuth).
    Server,
    /// A TLS client (clientAuth).
    Client,
    /// Both (serverAuth and clientAuth), as a KMS client such as vCenter often has.
    ServerAndClient,
    /// A client certificate that lists serverAuth only, as vCenter's own certificates do.
    ServerUsageOnly,
}

/// A certificate and its private key, PEM encoded. The key is wiped from memory when dropped.
#[derive(Debug)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: Zeroizing<String>,
}

/// A CA that can issue certificates.
#[derive(Debug)]
pub struct CertificateAuthority {
    cert_pem: String,
    key_pem: Zeroizing<String>,
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
}

impl CertificateAuthority {
    /// A new self-signed CA named `common_name`, valid for `days`.
    pub fn generate(common_name: &str, days: i64) -> Result<CertificateAuthority, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, days);
        let cert = params.self_signed(&key)?;
        Ok(CertificateAuthority {
            cert_pem: cert.pem(),
            key_pem: Zeroizing::new(key.serialize_pem()),
        })
    }

    /// A CA from its PEM certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<CertificateAuthority, TlsError> {
        // Parse both now so that a broken pair fails here, not at the first issue.
        let key = KeyPair::from_pem(key_pem)?;
        Issuer::from_ca_cert_pem(cert_pem, &key)?;
        Ok(CertificateAuthority {
            cert_pem: cert_pem.to_owned(),
            key_pem: Zeroizing::new(key_pem.to_owned()),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues a certificate for `common_name`; `names` are DNS names or IP addresses for the
    /// subject alternative name.
    pub fn issue(
        &self,
        kind: CertKind,
        common_name: &str,
        names: &[&str],
        days: i64,
    ) -> Result<IssuedCert, TlsError> {
        let ca_key = KeyPair::from_pem(&self.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &ca_key)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        for name in names {
            let san = match name.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*name).try_into()?),
            };
            params.subject_alt_names.push(san);
        }
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = match kind {
            CertKind::Server | CertKind::ServerUsageOnly => {
                vec![ExtendedKeyUsagePurpose::ServerAuth]
            }
            CertKind::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            CertKind::ServerAndClient => {
                vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ]
            }
        };
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, days);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: Zeroizing::new(key.serialize_pem()),
        })
    }
}

/// A new key pair and a certificate signing request for `common_name` (an agent enrolling).
pub fn key_and_csr(common_name: &str) -> Result<(Zeroizing<String>, String), TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?;
    Ok((Zeroizing::new(key.serialize_pem()), csr.pem()?))
}

impl CertificateAuthority {
    /// Signs a certificate signing request as a client certificate for `common_name`, whatever
    /// name the request asked for: the CA decides who the client is.
    pub fn sign_client_csr(
        &self,
        csr_pem: &str,
        common_name: &str,
        days: i64,
    ) -> Result<String, TlsError> {
        let ca_key = KeyPair::from_pem(&self.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &ca_key)?;
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        csr.params.distinguished_name = dn;
        csr.params.subject_alt_names.clear();
        csr.params.is_ca = IsCa::ExplicitNoCa;
        csr.params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        csr.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        csr.params.use_authority_key_identifier_extension = true;
        validity(&mut csr.params, days);
        Ok(csr.signed_by(&issuer)?.pem())
    }
}

/// A self-signed client certificate for `common_name`, for a key provider that trusts client
/// certificates one by one (the provider's administrator adds this certificate to its trust).
pub fn self_signed_client(common_name: &str, days: i64) -> Result<IssuedCert, TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut params, days);
    let cert = params.self_signed(&key)?;
    Ok(IssuedCert {
        cert_pem: cert.pem(),
        key_pem: Zeroizing::new(key.serialize_pem()),
    })
}

/// Whether the first certificate in `cert_pem` is for the private key in `key_pem`.
pub fn cert_matches_key(cert_pem: &str, key_pem: &str) -> Result<bool, TlsError> {
    let certs = crate::parse_certs(cert_pem.as_bytes(), "certificate")?;
    let cert = certs
        .first()
        .ok_or_else(|| TlsError::Certificate("no certificate in the PEM text".into()))?;
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| TlsError::Certificate(format!("not an X.509 certificate: {e}")))?;
    // PKCS#8, PKCS#1 (`BEGIN RSA PRIVATE KEY`) or SEC1 (`BEGIN EC PRIVATE KEY`, what
    // `openssl ecparam -genkey` writes).
    let key = crate::parse_key(key_pem.as_bytes(), "private key")?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| {
        TlsError::Certificate(format!(
            "the private key is not an RSA, ECDSA P-256/P-384 or Ed25519 key ({e})"
        ))
    })?;
    let spki = signer.public_key().ok_or_else(|| {
        TlsError::Certificate("the private key's public half cannot be derived".into())
    })?;
    Ok(x509.public_key().raw == spki.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_matches_its_own_key_only() {
        let a = self_signed_client("tresor-server", 30).unwrap();
        let b = self_signed_client("tresor-server", 30).unwrap();
        assert!(cert_matches_key(&a.cert_pem, &a.key_pem).unwrap());
        assert!(!cert_matches_key(&a.cert_pem, &b.key_pem).unwrap());
        let (key, csr) = key_and_csr("whoever").unwrap();
        let ca = CertificateAuthority::generate("ca", 30).unwrap();
        let signed = ca.sign_client_csr(&csr, "tresor-server", 30).unwrap();
        assert!(cert_matches_key(&signed, &key).unwrap());
        assert!(cert_matches_key("not pem", &key).is_err());
    }

    #[test]
    fn keys_in_sec1_and_pkcs1_match_their_certificates() {
        // The same keys in the older PEM forms openssl writes.
        let ca = CertificateAuthority::generate("ca", 30).unwrap();
        for (args, header) in [
            (
                &["ecparam", "-name", "prime256v1", "-genkey", "-noout"][..],
                "BEGIN EC PRIVATE KEY",
            ),
            (
                &["genrsa", "-traditional", "2048"][..],
                "BEGIN RSA PRIVATE KEY",
            ),
        ] {
            let Ok(out) = std::process::Command::new("openssl").args(args).output() else {
                return; // no openssl here
            };
            let key = String::from_utf8(out.stdout).unwrap();
            assert!(key.contains(header), "{key}");
            let dir = tempfile::tempdir().unwrap();
            let key_file = dir.path().join("k.pem");
            std::fs::write(&key_file, &key).unwrap();
            let csr = std::process::Command::new("openssl")
                .args(["req", "-new", "-subj", "/CN=tresor-server", "-key"])
                .arg(&key_file)
                .output()
                .unwrap();
            let csr = String::from_utf8(csr.stdout).unwrap();
            let cert = ca.sign_client_csr(&csr, "tresor-server", 30).unwrap();
            assert!(cert_matches_key(&cert, &key).unwrap(), "{header}");
            let other = self_signed_client("x", 30).unwrap();
            assert!(!cert_matches_key(&other.cert_pem, &key).unwrap());
        }
    }

    #[test]
    fn a_self_signed_client_certificate_is_for_clients_and_not_a_ca() {
        let c = self_signed_client("tresor-server", 30).unwrap();
        let der = crate::parse_certs(c.cert_pem.as_bytes(), "c").unwrap();
        let info = crate::certificate_info(&der[0]).unwrap();
        assert_eq!(info.subject, "CN=tresor-server");
        assert_eq!(info.subject, info.issuer);
        assert!(!info.is_ca);
        assert!(info.not_after - info.not_before >= 30 * 86400);
    }
}
