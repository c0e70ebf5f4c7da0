//! `tresor server backup` and `restore`: everything a server is, in one sealed file (see
//! `tresor_ops::backup`): a consistent copy of its database taken while it runs, its CA and
//! certificates with their keys, its client keys for the providers, and its configuration.
//! A restore makes a new server folder from it, which `tresor server --config DIR/server.toml`
//! runs; the hosts' agents trust it as before (same CA), and the providers as before (same
//! client keys).

use std::path::{Path, PathBuf};

use tresor_ops::backup::{self, BackupError, Entry, Manifest};
use zeroize::Zeroizing;

use crate::run::ServerConfig;
use crate::store::{Store, StoreError};

/// Why a backup or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerBackupError {
    #[error("{0}")]
    Config(String),
    #[error("Cannot copy the database: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sealed(#[from] BackupError),
    #[error(transparent)]
    Restore(#[from] backup::RestoreError),
}

/// The server configured by `config_path`, sealed under `passphrase`: the backup's bytes and
/// its manifest. The server may be running.
pub fn backup(
    config_path: &Path,
    passphrase: &[u8],
) -> Result<(Manifest, Vec<u8>), ServerBackupError> {
    let config =
        ServerConfig::load(config_path).map_err(|e| ServerBackupError::Config(e.to_string()))?;
    let dir = &config.data_dir;
    if let Some(url) = &config.database {
        return Err(StoreError::NotAFile(url.clone()).into());
    }
    let scratch = backup::Scratch::new(dir)?;
    let copy = scratch.0.join("server.sqlite");
    let (schema, provider_keys) = Store::snapshot(&dir.join("server.sqlite"), &copy)?;
    let mut entries = vec![Entry {
        path: "server.sqlite".into(),
        mode: 0o600,
        data: backup::read_file(&copy)?,
    }];
    for (name, file) in [
        ("ca.pem", PathBuf::from("ca.pem")),
        ("ca.key", PathBuf::from("ca.key")),
        ("agent-endpoint.pem", PathBuf::from("agent-endpoint.pem")),
        ("agent-endpoint.key", PathBuf::from("agent-endpoint.key")),
        ("api.pem", config.api_certificate.clone()),
        ("api.key", config.api_key.clone()),
    ] {
        entries.push(Entry {
            path: name.into(),
            mode: 0o600,
            data: backup::read_file(&dir.join(file))?,
        });
    }
    for (provider, file) in provider_keys.iter().filter(|(_, f)| !f.is_empty()) {
        let path = match Path::new(file).is_absolute() {
            true => PathBuf::from(file),
            false => dir.join(file),
        };
        entries.push(Entry {
            path: format!("providers/{provider}/client.key"),
            mode: 0o600,
            data: backup::read_file(&path)?,
        });
    }
    // The configuration, its paths made those of the restored folder.
    let text = backup::read_file(config_path)?;
    let mut table: toml::Table = std::str::from_utf8(&text)
        .ok()
        .and_then(|t| toml::from_str(t).ok())
        .ok_or_else(|| {
            ServerBackupError::Config(format!("{} is not valid TOML", config_path.display()))
        })?;
    table.insert("data_dir".into(), ".".into());
    table.insert("api_certificate".into(), "api.pem".into());
    table.insert("api_key".into(), "api.key".into());
    let restored = format!(
        "# Tresor server, restored from a backup (tresor server --config server.toml)\n\n{}",
        toml::to_string(&table).unwrap_or_default()
    );
    entries.push(Entry {
        path: "server.toml".into(),
        mode: 0o600,
        data: Zeroizing::new(restored.into_bytes()),
    });
    let manifest = Manifest {
        kind: "server".into(),
        release: env!("CARGO_PKG_VERSION").into(),
        schema,
        created: crate::enrol::now(),
    };
    let sealed = backup::seal(&manifest, &entries, passphrase)?;
    Ok((manifest, sealed))
}

/// Restores a server from `sealed` into `dir` (new or empty); the configuration file's path.
pub fn restore(
    sealed: &[u8],
    passphrase: &[u8],
    dir: &Path,
) -> Result<(Manifest, PathBuf), ServerBackupError> {
    let manifest = backup::restore(sealed, passphrase, "server", crate::store::SCHEMA, dir)?;
    Ok((manifest, dir.join("server.toml")))
}
