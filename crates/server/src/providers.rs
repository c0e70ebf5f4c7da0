//! Key providers: adding one with the trust the reference design offers (the provider's CA
//! uploaded; the server's client certificate uploaded, self-signed, or signed by the provider from
//! a CSR), the default marker, and the status probe that finds which endpoint answers, fails over,
//! and raises alarms for an unreachable provider and for certificates about to expire.
//!
//! The server's TLS key for a provider is a file (mode 0600) under `providers/NAME/` in the data
//! folder, like the server's other TLS keys. Key *encryption* keys never reach this module.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use zeroize::Zeroizing;

use crate::broker::KeyBroker;
use crate::store::{EventRow, ProviderRecord, Store, StoreError};
use tresor_core::events::{self, EventType};

/// The name the server's client certificates carry: its identity on a provider.
pub const CLIENT_IDENTITY: &str = "tresor-server";

/// How long a self-signed client certificate is valid.
const SELF_SIGNED_DAYS: i64 = 825;

/// Why a provider could not be added or changed.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("A provider name is 1 to 64 letters, digits, '-', '_' or '.'; {0:?} is not")]
    BadName(String),
    #[error("Give the provider at least one endpoint, as --kmip HOST:PORT")]
    NoEndpoints,
    #[error("Endpoint {0:?} is not HOST:PORT")]
    BadEndpoint(String),
    #[error("The provider's CA certificate is unusable ({0}); upload the PEM of the CA that signed the provider's server certificate")]
    BadCa(String),
    #[error("The client certificate or key is unusable: {0}. Give the certificate as PEM (BEGIN CERTIFICATE) and its private key as PEM in PKCS#8, PKCS#1 or SEC1 form")]
    BadClientCert(String),
    #[error(
        "The client certificate is not for the client key; give the pair that belongs together"
    )]
    KeyMismatch,
    #[error("Key provider {0} exists already; remove it first, or choose another name")]
    Exists(String),
    #[error("No key provider named {0}; list them with `tresor provider list`")]
    Unknown(String),
    #[error(
        "Key provider {0} is not waiting for a signed certificate; its client certificate is set"
    )]
    NotPending(String),
    #[error("Key provider {name} still holds the keys of {users}; decrypt or rekey them onto another provider first")]
    InUse { name: String, users: String },
    #[error("Cannot write the provider's key file {path}: {error}")]
    KeyFile { path: String, error: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How the server proves itself to the provider.
#[derive(Debug)]
pub enum Credentials {
    /// A certificate and key the provider's administrator issued.
    Upload {
        cert_pem: String,
        key_pem: Zeroizing<String>,
    },
    /// The server makes a self-signed certificate; the provider's administrator trusts it.
    SelfSigned,
    /// The server makes a key and a CSR; the provider signs it, and the signed certificate is
    /// given back with [`Providers::complete_csr`].
    Csr,
}

/// A provider to add.
#[derive(Debug)]
pub struct NewProvider {
    pub name: String,
    pub endpoints: Vec<String>,
    pub ca_pem: String,
    pub credentials: Credentials,
    /// Make it the default; the first provider always is.
    pub make_default: bool,
}

pub use tresor_api::views::{
    Added, CertStatus, EndpointStatus, Health, Provider, ProviderStatus, ProviderTrust,
};

/// The providers, their trust and their status.
pub struct Providers {
    store: Arc<Store>,
    broker: Arc<KeyBroker>,
    dir: PathBuf,
    warn_days: i64,
    statuses: Mutex<HashMap<String, ProviderStatus>>,
    /// Seals the client keys kept in the database (see [`Providers::seal_keys_with`]).
    sealing: Mutex<Option<ring::aead::LessSafeKey>>,
}

/// The key that seals providers' client keys in the database: derived from the server CA's
/// private key, which every server sharing the database holds.
fn sealing_key(ca_key_pem: &str) -> ring::aead::LessSafeKey {
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"tresor provider client keys")
        .extract(ca_key_pem.as_bytes());
    let okm = prk
        .expand(&[b"aes-256-gcm"], &ring::aead::AES_256_GCM)
        .expect("32 bytes are a valid HKDF output length");
    ring::aead::LessSafeKey::new(ring::aead::UnboundKey::from(okm))
}

impl std::fmt::Debug for Providers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Providers").finish_non_exhaustive()
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.')
}

fn valid_endpoint(e: &str) -> bool {
    match e.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok_and(|p| p > 0)
        }
        None => false,
    }
}

fn cert_status(which: &str, pem: &str, warn_days: i64, now: i64) -> Option<CertStatus> {
    let certs = tresor_tls::parse_certs(pem.as_bytes(), which).ok()?;
    let info = tresor_tls::certificate_info(certs.first()?).ok()?;
    Some(cert_status_of(which, &info, warn_days, now))
}

fn cert_status_of(
    which: &str,
    info: &tresor_tls::CertificateInfo,
    warn_days: i64,
    now: i64,
) -> CertStatus {
    let days_left = (info.not_after - now).div_euclid(86_400);
    CertStatus {
        which: which.into(),
        subject: info.subject.clone(),
        not_after: info.not_after,
        days_left,
        expiring: info.not_after - now <= warn_days * 86_400,
        expired: info.not_after <= now,
    }
}

/// A date for a message: `2027-03-01`.
fn date(epoch: i64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::OffsetDateTime::from_unix_timestamp(epoch)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| epoch.to_string())
}

impl Providers {
    pub fn new(store: Arc<Store>, broker: Arc<KeyBroker>, dir: &Path, warn_days: i64) -> Providers {
        Providers {
            store,
            broker,
            dir: dir.to_owned(),
            warn_days,
            statuses: Mutex::new(HashMap::new()),
            sealing: Mutex::new(None),
        }
    }

    /// Keeps each client key, sealed under a key derived from the server CA's key, in the
    /// database as well: a server that shares the database (and the CA) and lacks a provider's
    /// key file makes it from there.
    pub fn seal_keys_with(&self, ca_key_pem: &str) {
        *self.sealing.lock().unwrap_or_else(|p| p.into_inner()) = Some(sealing_key(ca_key_pem));
    }

    fn seal(&self, name: &str, key_pem: &str) -> Option<Vec<u8>> {
        let sealing = self.sealing.lock().unwrap_or_else(|p| p.into_inner());
        let key = sealing.as_ref()?;
        let mut nonce = [0u8; 12];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce).ok()?;
        let mut data = zeroize::Zeroizing::new(key_pem.as_bytes().to_vec());
        key.seal_in_place_append_tag(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            ring::aead::Aad::from(name.as_bytes()),
            &mut *data,
        )
        .ok()?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&data);
        Some(sealed)
    }

    fn unseal(&self, name: &str, sealed: &[u8]) -> Option<zeroize::Zeroizing<String>> {
        let sealing = self.sealing.lock().unwrap_or_else(|p| p.into_inner());
        let key = sealing.as_ref()?;
        let (nonce, data) = sealed.split_at_checked(12)?;
        let nonce = ring::aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut data = zeroize::Zeroizing::new(data.to_vec());
        let plain = key
            .open_in_place(nonce, ring::aead::Aad::from(name.as_bytes()), &mut data)
            .ok()?;
        String::from_utf8(plain.to_vec())
            .ok()
            .map(zeroize::Zeroizing::new)
    }

    /// Writes a provider's client key file from its sealed copy in the database, when this
    /// server lacks it (a standby set up before the provider was added).
    fn restore_key(&self, p: &ProviderRecord) {
        if p.client_key_file.is_empty() || Path::new(&p.client_key_file).is_absolute() {
            return;
        }
        if self.dir.join(&p.client_key_file).exists() {
            return;
        }
        let sealed = match self.store.provider_key(&p.name) {
            Ok(Some(s)) => s,
            _ => return,
        };
        match self.unseal(&p.name, &sealed) {
            Some(pem) => match self.write_key(&p.name, &pem) {
                Ok(_) => {
                    tracing::info!(provider = %p.name, "wrote the provider's client key from the database")
                }
                Err(e) => {
                    tracing::error!(provider = %p.name, error = %e, "cannot write the provider's client key")
                }
            },
            None => tracing::error!(
                provider = %p.name,
                "the provider's client key in the database cannot be opened with this server's CA key; copy the CA (ca.pem, ca.key) of the server that added the provider"
            ),
        }
    }

    /// Configures the broker with every stored provider whose trust is complete.
    pub fn load(&self) -> Result<(), StoreError> {
        for p in self.store.providers()? {
            self.configure(&p);
        }
        Ok(())
    }

    fn configure(&self, p: &ProviderRecord) {
        if p.client_cert_pem.is_empty() {
            return;
        }
        self.restore_key(p);
        match client_config(&self.dir, p) {
            Ok(c) => self.broker.set_provider(&p.name, c),
            Err(e) => {
                tracing::error!(provider = %p.name, error = %e, "cannot use a key provider")
            }
        }
    }

    fn key_path(&self, name: &str) -> (String, PathBuf) {
        let relative = format!("providers/{name}/client.key");
        let path = self.dir.join(&relative);
        (relative, path)
    }

    fn write_key(&self, name: &str, key_pem: &str) -> Result<String, ProviderError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let (relative, path) = self.key_path(name);
        let err = |e: std::io::Error| ProviderError::KeyFile {
            path: relative.clone(),
            error: e.to_string(),
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(err)?;
        }
        let tmp = path.with_extension("key.new");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        f.write_all(key_pem.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)?;
        if let Some(sealed) = self.seal(name, key_pem) {
            if let Err(e) = self.store.put_provider_key(name, &sealed) {
                tracing::error!(provider = name, error = %e, "cannot keep the sealed client key in the database; other servers lack it until they are given the file");
            }
        }
        Ok(relative)
    }

    /// Adds a provider.
    pub fn add(&self, new: NewProvider) -> Result<Added, ProviderError> {
        if !valid_name(&new.name) {
            return Err(ProviderError::BadName(new.name));
        }
        if new.endpoints.is_empty() {
            return Err(ProviderError::NoEndpoints);
        }
        if let Some(bad) = new.endpoints.iter().find(|e| !valid_endpoint(e)) {
            return Err(ProviderError::BadEndpoint(bad.clone()));
        }
        let ca = tresor_tls::parse_certs(new.ca_pem.as_bytes(), "the CA certificate")
            .map_err(|e| ProviderError::BadCa(e.to_string()))?;
        if ca.is_empty() {
            return Err(ProviderError::BadCa("no certificate in it".into()));
        }
        if self.store.provider(&new.name)?.is_some() {
            return Err(ProviderError::Exists(new.name));
        }
        let mut added = Added::default();
        let (cert_pem, key_pem) = match new.credentials {
            Credentials::Upload { cert_pem, key_pem } => {
                tresor_tls::parse_key(key_pem.as_bytes(), "the client key")
                    .map_err(|e| ProviderError::BadClientCert(e.to_string()))?;
                if !tresor_tls::cert_matches_key(&cert_pem, &key_pem)
                    .map_err(|e| ProviderError::BadClientCert(e.to_string()))?
                {
                    return Err(ProviderError::KeyMismatch);
                }
                (cert_pem, key_pem)
            }
            Credentials::SelfSigned => {
                let c = tresor_tls::self_signed_client(CLIENT_IDENTITY, SELF_SIGNED_DAYS)
                    .map_err(|e| ProviderError::BadClientCert(e.to_string()))?;
                added.client_certificate = Some(c.cert_pem.clone());
                (c.cert_pem, c.key_pem)
            }
            Credentials::Csr => {
                let (key, csr) = tresor_tls::key_and_csr(CLIENT_IDENTITY)
                    .map_err(|e| ProviderError::BadClientCert(e.to_string()))?;
                added.csr = Some(csr);
                (String::new(), key)
            }
        };
        let client_key_file = self.write_key(&new.name, &key_pem)?;
        let first = self.store.providers()?.is_empty();
        let record = ProviderRecord {
            name: new.name.clone(),
            endpoints: new.endpoints,
            ca_pem: new.ca_pem,
            client_cert_pem: cert_pem,
            client_key_file,
            is_default: new.make_default || first,
        };
        self.store.put_provider(&record)?;
        self.configure(&record);
        Ok(added)
    }

    /// Gives a provider that waits for it the certificate its administrator signed from the CSR.
    pub fn complete_csr(&self, name: &str, cert_pem: &str) -> Result<(), ProviderError> {
        let mut p = self
            .store
            .provider(name)?
            .ok_or_else(|| ProviderError::Unknown(name.into()))?;
        if !p.client_cert_pem.is_empty() {
            return Err(ProviderError::NotPending(name.into()));
        }
        let (_, path) = self.key_path(name);
        let key =
            Zeroizing::new(
                std::fs::read_to_string(&path).map_err(|e| ProviderError::KeyFile {
                    path: p.client_key_file.clone(),
                    error: e.to_string(),
                })?,
            );
        if !tresor_tls::cert_matches_key(cert_pem, &key)
            .map_err(|e| ProviderError::BadClientCert(e.to_string()))?
        {
            return Err(ProviderError::KeyMismatch);
        }
        p.client_cert_pem = cert_pem.to_owned();
        self.store.put_provider(&p)?;
        self.configure(&p);
        Ok(())
    }

    pub fn set_default(&self, name: &str) -> Result<(), ProviderError> {
        if self.store.set_default_provider(name)? {
            Ok(())
        } else {
            Err(ProviderError::Unknown(name.into()))
        }
    }

    /// Removes a provider that no VM and no host key uses any more.
    pub fn remove(&self, name: &str) -> Result<(), ProviderError> {
        if self.store.provider(name)?.is_none() {
            return Err(ProviderError::Unknown(name.into()));
        }
        let mut users: Vec<String> = self
            .store
            .vms()?
            .into_iter()
            .filter(|v| v.key_provider.as_deref() == Some(name))
            .map(|v| format!("VM {}", v.name))
            .collect();
        users.extend(
            self.store
                .hosts()?
                .into_iter()
                .filter(|h| h.host_key_provider.as_deref() == Some(name))
                .map(|h| format!("host {}", h.name)),
        );
        if !users.is_empty() {
            return Err(ProviderError::InUse {
                name: name.into(),
                users: users.join(", "),
            });
        }
        self.store.remove_provider(name)?;
        self.broker.remove_provider(name);
        if let Ok(mut s) = self.statuses.lock() {
            s.remove(name);
        }
        let _ = std::fs::remove_dir_all(self.dir.join("providers").join(name));
        let now = crate::enrol::now();
        let object = format!("provider:{name}");
        let _ = self.store.clear_alarm("provider.unreachable", &object, now);
        for which in ["ca", "client", "server"] {
            let _ = self.store.clear_alarm(
                "provider.certificate.expiring",
                &format!("{object}:{which}"),
                now,
            );
        }
        Ok(())
    }

    /// The last status the probe found for a provider.
    pub fn last_status(&self, name: &str) -> Option<ProviderStatus> {
        self.statuses.lock().ok().and_then(|s| s.get(name).cloned())
    }

    /// A provider as `tresor provider show` prints it: endpoints, trust, default, last status.
    pub fn view(&self, p: &ProviderRecord) -> Provider {
        let now = crate::enrol::now();
        let status = self
            .statuses
            .lock()
            .ok()
            .and_then(|s| s.get(&p.name).cloned());
        Provider {
            name: p.name.clone(),
            endpoints: p.endpoints.clone(),
            is_default: p.is_default,
            trust: ProviderTrust {
                ca: cert_status("ca", &p.ca_pem, self.warn_days, now),
                client: cert_status("client", &p.client_cert_pem, self.warn_days, now),
                awaiting_signed_certificate: p.client_cert_pem.is_empty(),
            },
            status,
        }
    }

    pub fn list(&self) -> Result<Vec<Provider>, StoreError> {
        Ok(self
            .store
            .providers()?
            .iter()
            .map(|p| self.view(p))
            .collect())
    }

    pub fn show(&self, name: &str) -> Result<Provider, ProviderError> {
        let p = self
            .store
            .provider(name)?
            .ok_or_else(|| ProviderError::Unknown(name.into()))?;
        Ok(self.view(&p))
    }

    /// Probes every endpoint of a provider now, records the status, and raises or clears its
    /// alarms.
    pub async fn probe(&self, name: &str) -> Result<ProviderStatus, ProviderError> {
        let p = self
            .store
            .provider(name)?
            .ok_or_else(|| ProviderError::Unknown(name.into()))?;
        let now = crate::enrol::now();
        let mut certificates: Vec<CertStatus> = [("ca", &p.ca_pem), ("client", &p.client_cert_pem)]
            .into_iter()
            .filter_map(|(which, pem)| cert_status(which, pem, self.warn_days, now))
            .collect();
        let mut endpoints = Vec::new();
        let client = self.broker.client_of(name);
        let (health, active, message) = if p.client_cert_pem.is_empty() {
            (
                Health::AwaitingCertificate,
                None,
                format!("The provider's administrator must sign the CSR; then give the certificate with `tresor provider certificate {name} --client-cert FILE`"),
            )
        } else if let Some(client) = &client {
            for i in 0..client.endpoints().len() {
                let address = client.endpoints()[i].clone();
                match client.probe(i).await {
                    Ok(probe) => {
                        let server_certificate = probe
                            .server_certificate
                            .as_ref()
                            .and_then(|c| tresor_tls::certificate_info(c).ok())
                            .map(|info| cert_status_of("server", &info, self.warn_days, now));
                        endpoints.push(EndpointStatus {
                            address,
                            reachable: true,
                            latency_ms: Some(probe.latency.as_secs_f64() * 1000.0),
                            versions: probe
                                .versions
                                .iter()
                                .map(|v| format!("{}.{}", v.major, v.minor))
                                .collect(),
                            error: None,
                            server_certificate,
                        })
                    }
                    Err(e) => endpoints.push(EndpointStatus {
                        address,
                        reachable: false,
                        latency_ms: None,
                        versions: Vec::new(),
                        error: Some(e.to_string()),
                        server_certificate: None,
                    }),
                }
            }
            // The earliest-expiring server certificate stands for the provider's.
            if let Some(c) = endpoints
                .iter()
                .filter_map(|e| e.server_certificate.clone())
                .min_by_key(|c| c.not_after)
            {
                certificates.push(c);
            }
            let up: Vec<&EndpointStatus> = endpoints.iter().filter(|e| e.reachable).collect();
            let current = client.current_endpoint().to_owned();
            let active = if up.iter().any(|e| e.address == current) {
                Some(current)
            } else {
                up.first().map(|e| e.address.clone())
            };
            if up.is_empty() {
                (
                    Health::Unreachable,
                    None,
                    format!("No endpoint of key provider {name} answers; VMs whose keys are not on their hosts lock with kmsClusterError. Check the provider and the network to it"),
                )
            } else if up.len() < endpoints.len() {
                (
                    Health::Degraded,
                    active,
                    format!("Some endpoints of key provider {name} do not answer; the server uses the others. Check the ones marked unreachable"),
                )
            } else {
                (
                    Health::Ok,
                    active,
                    format!("Key provider {name} answers on every endpoint"),
                )
            }
        } else {
            (
                Health::Misconfigured,
                None,
                format!("The stored trust of key provider {name} cannot be used (see the server log); remove it and add it again"),
            )
        };
        // Who makes the provider decides how its keys are administered (the diagnosis names
        // `tresor kms` commands only for Tresor's own); kept while the provider does not say.
        let mut vendor = None;
        if let (Some(client), true) = (&client, active.is_some()) {
            vendor = client.vendor().await.ok().flatten();
        }
        let vendor = vendor.or_else(|| self.last_status(name).and_then(|s| s.vendor));
        let status = ProviderStatus {
            vendor,
            name: name.into(),
            health,
            active_endpoint: active,
            checked_at: now,
            endpoints,
            certificates,
            message,
        };
        self.record(&status);
        Ok(status)
    }

    /// Writes the alarms and events a new status calls for.
    fn record(&self, status: &ProviderStatus) {
        let name = &status.name;
        let object = format!("provider:{name}");
        let now = status.checked_at;
        let active = self.store.alarms(true).unwrap_or_default();
        let is_active =
            |kind: &str, object: &str| active.iter().any(|a| a.kind == kind && a.object == object);
        let result: Result<(), StoreError> = (|| {
            match status.health {
                Health::Unreachable => {
                    let error = status
                        .endpoints
                        .iter()
                        .filter_map(|e| e.error.clone())
                        .collect::<Vec<_>>()
                        .join("; ");
                    if !is_active("provider.unreachable", &object) {
                        self.event(events::PROVIDER_UNREACHABLE, name, &[("error", &error)])?;
                    }
                    self.store
                        .raise_alarm("provider.unreachable", &object, &error, now)?;
                }
                Health::Ok | Health::Degraded => {
                    if is_active("provider.unreachable", &object) {
                        let endpoint = status.active_endpoint.clone().unwrap_or_default();
                        self.event(events::PROVIDER_REACHABLE, name, &[("endpoint", &endpoint)])?;
                        self.store
                            .clear_alarm("provider.unreachable", &object, now)?;
                    }
                }
                Health::AwaitingCertificate | Health::Misconfigured => {}
            }
            for which in ["ca", "client", "server"] {
                let alarm_object = format!("{object}:{which}");
                let cert = status.certificates.iter().find(|c| c.which == which);
                match cert {
                    Some(c) if c.expiring => {
                        if !is_active("provider.certificate.expiring", &alarm_object) {
                            self.event(
                                events::PROVIDER_CERT_EXPIRING,
                                name,
                                &[("which", which), ("date", &date(c.not_after))],
                            )?;
                        }
                        self.store.raise_alarm(
                            "provider.certificate.expiring",
                            &alarm_object,
                            &format!(
                                "{which} certificate {} expires on {}",
                                c.subject,
                                date(c.not_after)
                            ),
                            now,
                        )?;
                    }
                    // A server certificate is known only when an endpoint answered.
                    None if which == "server" => {}
                    _ => {
                        self.store.clear_alarm(
                            "provider.certificate.expiring",
                            &alarm_object,
                            now,
                        )?;
                    }
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot store a provider's alarms");
        }
        if let Ok(mut s) = self.statuses.lock() {
            s.insert(name.clone(), status.clone());
        }
    }

    fn event(
        &self,
        event: EventType,
        provider: &str,
        args: &[(&str, &str)],
    ) -> Result<(), StoreError> {
        let mut all = vec![("provider".to_owned(), provider.to_owned())];
        all.extend(args.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        tracing::info!(
            event = event.id,
            provider,
            "{}",
            events::render(event, tresor_core::Lang::En, &args_ref(&all))
        );
        self.store
            .add_event(&EventRow {
                id: 0,
                time: crate::enrol::now(),
                event_type: event.id.into(),
                severity: serde_json::to_value(event.severity)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                vm: None,
                host: None,
                provider: Some(provider.into()),
                user: None,
                args: all,
            })
            .map(|_| ())
    }

    /// Probes every provider, now and then every `interval`.
    pub async fn run(self: Arc<Self>, interval: Duration) {
        loop {
            let names: Vec<String> = self
                .store
                .providers()
                .map(|ps| ps.into_iter().map(|p| p.name).collect())
                .unwrap_or_default();
            for name in names {
                if let Err(e) = self.probe(&name).await {
                    tracing::warn!(provider = %name, error = %e, "cannot probe a key provider");
                }
            }
            tokio::time::sleep(interval).await;
        }
    }
}

fn args_ref(args: &[(String, String)]) -> Vec<(&str, &str)> {
    args.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// A KMIP client configuration for a stored provider.
pub fn client_config(
    dir: &Path,
    p: &crate::store::ProviderRecord,
) -> Result<tresor_kmip_client::ClientConfig, String> {
    let roots = tresor_tls::parse_certs(p.ca_pem.as_bytes(), &format!("CA of provider {}", p.name))
        .map_err(|e| e.to_string())?;
    let certs = tresor_tls::parse_certs(
        p.client_cert_pem.as_bytes(),
        &format!("client certificate for provider {}", p.name),
    )
    .map_err(|e| e.to_string())?;
    let key_path = if Path::new(&p.client_key_file).is_absolute() {
        PathBuf::from(&p.client_key_file)
    } else {
        dir.join(&p.client_key_file)
    };
    let key = tresor_tls::load_key(&key_path).map_err(|e| e.to_string())?;
    let tls = tresor_tls::client_config(&roots, certs, key).map_err(|e| e.to_string())?;
    let mut config = tresor_kmip_client::ClientConfig::new(p.endpoints.clone(), tls);
    // As many idle connections as the engine has requests in flight, so that a storm of key
    // requests does not open and close connections.
    config.max_idle = crate::engine::CONCURRENT_REQUESTS;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_sharing_the_database_and_the_ca_makes_a_missing_client_key_from_its_sealed_copy() {
        let store = Arc::new(Store::in_memory().unwrap());
        let (a, b, c) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let providers = |dir: &Path, ca_key: &str| {
            let p = Providers::new(store.clone(), Arc::new(KeyBroker::new()), dir, 30);
            p.seal_keys_with(ca_key);
            p
        };
        let pem = "-----BEGIN PRIVATE KEY-----\nnot really a key\n-----END PRIVATE KEY-----\n";
        let first = providers(a.path(), "the CA's key");
        let file = first.write_key("corp-kms", pem).unwrap();
        let sealed = store.provider_key("corp-kms").unwrap().unwrap();
        assert!(
            !sealed.windows(10).any(|w| w == &pem.as_bytes()[..10]),
            "the database holds the key sealed"
        );
        let record = ProviderRecord {
            name: "corp-kms".into(),
            endpoints: vec!["127.0.0.1:5696".into()],
            ca_pem: String::new(),
            client_cert_pem: "CERT".into(),
            client_key_file: file.clone(),
            is_default: true,
        };
        // Another server with the same CA writes the file it lacked.
        providers(b.path(), "the CA's key").restore_key(&record);
        assert_eq!(std::fs::read_to_string(b.path().join(&file)).unwrap(), pem);
        // One with another CA cannot open it, and writes nothing.
        providers(c.path(), "another CA's key").restore_key(&record);
        assert!(!c.path().join(&file).exists());
    }

    #[test]
    fn names_and_endpoints_are_checked() {
        assert!(valid_name("corp-kms.eu_1"));
        assert!(!valid_name(""));
        assert!(!valid_name("../etc"));
        assert!(!valid_name(".hidden"));
        assert!(!valid_name("a b"));
        assert!(valid_endpoint("kms.example.com:5696"));
        assert!(valid_endpoint("[::1]:5696"));
        assert!(!valid_endpoint("kms.example.com"));
        assert!(!valid_endpoint(":5696"));
        assert!(!valid_endpoint("kms:0"));
        assert!(!valid_endpoint("kms:99999"));
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(951_782_400), "2000-02-29");
        assert_eq!(date(1_795_824_000), "2026-11-28");
    }

    #[test]
    fn a_certificate_inside_the_threshold_is_expiring() {
        let now = 1_000_000_000;
        let info = |days: i64| tresor_tls::CertificateInfo {
            subject: "CN=x".into(),
            issuer: "CN=x".into(),
            not_before: 0,
            not_after: now + days * 86_400,
            serial: String::new(),
            sha256: String::new(),
            is_ca: false,
        };
        let c = cert_status_of("server", &info(29), 30, now);
        assert!(c.expiring && !c.expired);
        assert_eq!(c.days_left, 29);
        assert!(!cert_status_of("server", &info(31), 30, now).expiring);
        let gone = cert_status_of("server", &info(-1), 30, now);
        assert!(gone.expired && gone.expiring);
    }
}
