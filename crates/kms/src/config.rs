//! `kms.toml`: the key server's configuration.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("Cannot read configuration {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Configuration {path} is invalid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("The database setting is unusable: {message}")]
    Database { message: String },
}

/// The key server's configuration. Relative paths are relative to the configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmsConfig {
    /// Address and port to listen on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Folder of the database (`kms.sqlite`) and the master key (`master.key`).
    pub data_dir: PathBuf,
    pub tls: TlsConfig,
    /// Client certificate subjects (`CN=…`) that may read and change every object.
    #[serde(default)]
    pub administrators: Vec<String>,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Where Prometheus scrapes `/metrics` (with `/healthz` and `/readyz`), plain HTTP; none
    /// when unset.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// The database: `kms.sqlite` in `data_dir` when unset, or PostgreSQL
    /// (`postgres://USER@HOST:PORT/DB`), which several key servers share to serve the same
    /// keys (each with the same master key); the password in `database_password_file`; TLS as
    /// libpq's `sslmode`, `sslrootcert`, `sslcert`, `sslkey` in the query, paths absolute.
    #[serde(default)]
    pub database: Option<String>,
    /// The file that holds the PostgreSQL user's password.
    #[serde(default)]
    pub database_password_file: Option<PathBuf>,
}

/// Certificates for mutual TLS.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain (PEM), its own certificate first.
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
    /// The CA certificates (PEM) that issue client certificates.
    pub client_ca: PathBuf,
    /// Refuse client certificates whose extended key usage lacks clientAuth. Off by default:
    /// vCenter's certificates lack it.
    #[serde(default)]
    pub require_client_auth_usage: bool,
}

/// Protection against slow, large or many clients.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_message_bytes: usize,
    /// Seconds a connection may sit idle between messages.
    pub idle_timeout_secs: u64,
    /// Seconds a client has to send the rest of a message it started, and to finish the TLS
    /// handshake.
    pub message_timeout_secs: u64,
    /// Authenticated connections (clients that showed a certificate of the client CA).
    pub max_connections: usize,
    /// Connections still in their TLS handshake, in total and from one address: more are
    /// closed at once, so that strangers cannot take the places of clients.
    pub max_handshakes: usize,
    pub max_handshakes_per_address: usize,
    /// Seconds a client has to finish the TLS handshake.
    pub handshake_timeout_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_bytes: 4 * 1024 * 1024,
            idle_timeout_secs: 300,
            message_timeout_secs: 30,
            max_connections: 4096,
            max_handshakes: 256,
            max_handshakes_per_address: 32,
            handshake_timeout_secs: 5,
        }
    }
}

fn default_listen() -> String {
    "0.0.0.0:5696".into()
}

/// A commented configuration with every default, for `tresor kms init` and the docs.
pub const EXAMPLE: &str = r#"# Tresor key server (tresor kms serve --config kms.toml)

# Address and port for KMIP over TLS (5696 is the KMIP port).
listen = "0.0.0.0:5696"

# Database and master key. The master key file (master.key, mode 0600) is created on the
# first start; back it up separately from the database.
data_dir = "data"

# The database: kms.sqlite in data_dir unless set. Key servers that serve the same keys share
# one PostgreSQL database (and each holds the same master.key); the password in a file. TLS
# as libpq's sslmode, sslrootcert, sslcert and sslkey say (absolute paths); a connection that
# leaves this machine unchecked is logged as a warning.
# database = "postgres://tresor_kms@db.example:5432/tresor_kms?sslmode=verify-full&sslrootcert=/etc/tresor/db-ca.pem"
# database_password_file = "db-password"

# Client certificate subjects that may read and change every object.
administrators = []

# Prometheus metrics (/metrics, with /healthz and /readyz) over plain HTTP on this address;
# keep it on a loopback or management address.
# metrics_listen = "127.0.0.1:9402"

[tls]
cert = "tls/server.pem"        # certificate chain, server certificate first
key = "tls/server.key"         # private key
client_ca = "tls/ca.pem"       # CA(s) that issue client certificates
# Refuse client certificates without the clientAuth extended key usage (vCenter's lack it).
require_client_auth_usage = false

[limits]
max_message_bytes = 4194304    # largest KMIP message accepted
idle_timeout_secs = 300        # close connections idle this long
message_timeout_secs = 30      # time to finish a started message
max_connections = 4096         # connections of authenticated clients
max_handshakes = 256           # connections still in their TLS handshake; more are closed at once
max_handshakes_per_address = 32
handshake_timeout_secs = 5     # time to finish the TLS handshake
"#;

impl KmsConfig {
    /// Reads a configuration file.
    pub fn load(path: &Path) -> Result<KmsConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config: KmsConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve(base);
        Ok(config)
    }

    /// Makes relative paths relative to `base`.
    pub fn resolve(&mut self, base: &Path) {
        for p in [
            &mut self.data_dir,
            &mut self.tls.cert,
            &mut self.tls.key,
            &mut self.tls.client_ca,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(p) = self
            .database_password_file
            .as_mut()
            .filter(|p| p.is_relative())
        {
            *p = base.join(&*p);
        }
    }

    /// Where the database is: PostgreSQL when `database` is set, else `kms.sqlite`.
    pub fn database_location(&self) -> Result<tresor_db::Location, ConfigError> {
        tresor_db::Location::configured(
            self.database_path(),
            self.database.as_deref(),
            self.database_password_file.as_deref(),
        )
        .map_err(|message| ConfigError::Database { message })
    }

    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("kms.sqlite")
    }

    pub fn master_key_path(&self) -> PathBuf {
        self.data_dir.join("master.key")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_parses_and_unknown_fields_are_refused() {
        let c: KmsConfig = toml::from_str(EXAMPLE).unwrap();
        assert_eq!(c.listen, "0.0.0.0:5696");
        assert_eq!(c.limits.max_connections, 4096);
        assert!(!c.tls.require_client_auth_usage);
        let err = toml::from_str::<KmsConfig>(&format!("{EXAMPLE}\nbogus = 1\n")).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }
}
