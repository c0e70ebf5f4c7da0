//! Enrolment of hosts: one-time join tokens and the CA that signs agents' certificates.
//!
//! A join token is `<secret>.<sha-256 of the CA>`: the server keeps only a hash of the secret;
//! the fingerprint lets the agent check that it talks to this server before it sends the secret.
//! The CA signs the agent's own key (from its certificate request) with the host name as common
//! name; from then on the agent authenticates with that certificate.

use std::sync::Arc;

use ring::rand::{SecureRandom, SystemRandom};
use tresor_tls::CertificateAuthority;

use crate::agents::JoinAuthority;
use crate::store::{HostRecord, JoinGrant, Store, StoreError};

/// How long an agent's certificate is valid, in days.
pub const AGENT_CERT_DAYS: i64 = 825;

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Issues join tokens and enrols hosts.
pub struct Enroller {
    store: Arc<Store>,
    ca: CertificateAuthority,
    ca_sha256: String,
    clock: fn() -> i64,
}

impl std::fmt::Debug for Enroller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enroller")
            .field("ca_sha256", &self.ca_sha256)
            .finish_non_exhaustive()
    }
}

/// The current time in seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Whether a host name is acceptable (see [`tresor_core::ids::check_name`]).
pub fn valid_host_name(name: &str) -> bool {
    tresor_core::ids::check_name(tresor_core::ids::NameKind::Host, name).is_ok()
}

impl Enroller {
    pub fn new(
        store: Arc<Store>,
        ca: CertificateAuthority,
    ) -> Result<Enroller, tresor_tls::TlsError> {
        let der = tresor_tls::parse_certs(ca.cert_pem().as_bytes(), "server CA")?;
        let ca_sha256 = sha256_hex(der[0].as_ref());
        Ok(Enroller {
            store,
            ca,
            ca_sha256,
            clock: now,
        })
    }

    /// Replaces the clock (tests).
    pub fn with_clock(mut self, clock: fn() -> i64) -> Enroller {
        self.clock = clock;
        self
    }

    /// A new one-time join token valid for `ttl_secs`, for the host `grant` names (or any name
    /// not enrolled yet).
    pub fn new_token(&self, ttl_secs: i64, grant: &JoinGrant) -> Result<String, StoreError> {
        let mut secret = [0u8; 24];
        SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| StoreError::Corrupt("the system random number generator failed".into()))?;
        let secret: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        self.store.add_join_token(
            &sha256_hex(secret.as_bytes()),
            (self.clock)() + ttl_secs,
            grant,
        )?;
        Ok(format!("{secret}.{}", self.ca_sha256))
    }
}

impl JoinAuthority for Enroller {
    fn join(&self, token: &str, host: &str, csr_pem: &str) -> Result<(String, String), String> {
        if !valid_host_name(host) {
            return Err(format!(
                "\"{host}\" is not a valid host name (letters, digits, - and ., at most 63)"
            ));
        }
        let now = (self.clock)();
        let grant = match self
            .store
            .consume_join_token(&sha256_hex(token.as_bytes()), now)
        {
            Ok(Some(grant)) => grant,
            Ok(None) => return Err(
                "the join token is unknown, used or expired; get a new one with: tresor host token"
                    .into(),
            ),
            Err(e) => return Err(format!("the server cannot check the token: {e}")),
        };
        if let Some(named) = &grant.host {
            if named != host {
                return Err(format!(
                    "this join token is for host {named}, not {host}; get one for {host} with: tresor host token --host {host}"
                ));
            }
        }
        let enrolled = match self.store.host(host) {
            Ok(h) => h.is_some(),
            Err(e) => return Err(format!("the server cannot check its hosts: {e}")),
        };
        if enrolled && !grant.replace {
            return Err(format!(
                "host {host} is enrolled already; replacing it is an operator's decision: tresor host token --host {host} --replace"
            ));
        }
        let certificate = self
            .ca
            .sign_client_csr(csr_pem, host, AGENT_CERT_DAYS)
            .map_err(|e| format!("the certificate request is invalid: {e}"))?;
        // A host that enrols again (a new server, or a reinstalled agent) keeps its host key.
        let previous = self
            .store
            .hosts()
            .ok()
            .and_then(|h| h.into_iter().find(|r| r.name == host));
        let record = HostRecord {
            name: host.into(),
            boot_id: String::new(),
            crypto_state: tresor_core::host::HostCryptoState::Incapable,
            connected: false,
            last_seen: now,
            host_key_provider: previous.as_ref().and_then(|p| p.host_key_provider.clone()),
            host_key_id: previous.and_then(|p| p.host_key_id),
        };
        if let Err(e) = self.store.put_host(&record) {
            tracing::error!(host, error = %e, "cannot record the host");
        }
        // Only this certificate is the host from now on (a replaced host's is refused).
        let der = tresor_tls::parse_certs(certificate.as_bytes(), "agent certificate")
            .map_err(|e| format!("the server made an unreadable certificate: {e}"))?;
        self.store
            .set_host_cert(host, &sha256_hex(der[0].as_ref()))
            .map_err(|e| format!("the server cannot record the certificate: {e}"))?;
        Ok((certificate, self.ca.cert_pem().to_owned()))
    }

    fn admits(&self, host: &str, cert_sha256: &str) -> Result<(), String> {
        let refused = || {
            format!("host {host} presented a certificate that is not its enrolled one (removed, or replaced); enrol it again with a token from: tresor host token --host {host} --replace")
        };
        match self.store.host_cert(host) {
            Ok(Some(enrolled)) if enrolled == cert_sha256 => Ok(()),
            Ok(Some(_)) => Err(refused()),
            Ok(None) => {
                // Enrolled before certificates were recorded: the first one seen is its own.
                match self.store.host(host) {
                    Ok(Some(_)) => self
                        .store
                        .set_host_cert(host, cert_sha256)
                        .map_err(|e| format!("the server cannot record the certificate: {e}")),
                    Ok(_) => Err(refused()),
                    Err(e) => Err(format!("the server cannot check its hosts: {e}")),
                }
            }
            Err(e) => Err(format!("the server cannot check the certificate: {e}")),
        }
    }
}
