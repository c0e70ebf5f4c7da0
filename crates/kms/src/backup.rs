//! `tresor kms backup` and `restore`: the key server in one sealed file (see
//! `tresor_ops::backup`): a consistent copy of its database taken while it serves, its master key,
//! its TLS certificate and key, the CA of its clients (with the CA's key and the client
//! certificates `tresor kms init` made, when they are beside it), and its configuration. The
//! backup holds the master key, so it is sealed under a passphrase and never written in the
//! clear; without the passphrase it is worth nothing, with it, it is every key.

use std::path::{Path, PathBuf};

use tresor_ops::backup::{self, BackupError, Entry, Manifest};
use zeroize::Zeroizing;

use crate::config::KmsConfig;
use crate::store::{Store, StoreError};

/// Why a backup or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum KmsBackupError {
    #[error("{0}")]
    Config(String),
    #[error("Cannot copy the database: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sealed(#[from] BackupError),
    #[error(transparent)]
    Restore(#[from] backup::RestoreError),
}

/// The key server configured by `config_path`, sealed under `passphrase`: the backup's bytes and
/// its manifest. The key server may be serving.
pub fn backup(
    config_path: &Path,
    passphrase: &[u8],
) -> Result<(Manifest, Vec<u8>), KmsBackupError> {
    let config = KmsConfig::load(config_path).map_err(|e| KmsBackupError::Config(e.to_string()))?;
    if let Some(url) = &config.database {
        return Err(StoreError::NotAFile(url.clone()).into());
    }
    // The copy goes to a private folder beside the database, removed after.
    let scratch = backup::Scratch::new(&config.data_dir)?;
    let copy = scratch.0.join("kms.sqlite");
    let snapshot = Store::snapshot(&config.database_path(), &copy).and_then(|schema| {
        backup::read_file(&copy)
            .map(|data| (schema, data))
            .map_err(|e| StoreError::Corrupt(e.to_string()))
    });
    drop(scratch);
    let (schema, database) = snapshot?;
    let mut entries = vec![
        Entry {
            path: "data/kms.sqlite".into(),
            mode: 0o600,
            data: database,
        },
        Entry::file(
            "data/master.key",
            0o600,
            &config.data_dir.join("master.key"),
        )?,
        Entry::file("tls/server.pem", 0o644, &config.tls.cert)?,
        Entry::file("tls/server.key", 0o600, &config.tls.key)?,
        Entry::file("tls/ca.pem", 0o644, &config.tls.client_ca)?,
    ];
    // What `tresor kms init` keeps beside them: the CA's key (to issue client certificates) and
    // the client certificates it issued.
    let ca_key = config.tls.client_ca.with_file_name("ca.key");
    if ca_key.is_file() {
        entries.push(Entry::file("tls/ca.key", 0o600, &ca_key)?);
    }
    let clients = config_path
        .parent()
        .unwrap_or(Path::new("."))
        .join("clients");
    if let Ok(list) = std::fs::read_dir(&clients) {
        let mut names: Vec<String> = list
            .flatten()
            .filter(|e| e.path().is_file())
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .collect();
        names.sort();
        for name in names {
            entries.push(Entry::file(
                &format!("clients/{name}"),
                0o600,
                &clients.join(&name),
            )?);
        }
    }
    let text = backup::read_file(config_path)?;
    let mut table: toml::Table = std::str::from_utf8(&text)
        .ok()
        .and_then(|t| toml::from_str(t).ok())
        .ok_or_else(|| {
            KmsBackupError::Config(format!("{} is not valid TOML", config_path.display()))
        })?;
    table.insert("data_dir".into(), "data".into());
    if let Some(toml::Value::Table(tls)) = table.get_mut("tls") {
        tls.insert("cert".into(), "tls/server.pem".into());
        tls.insert("key".into(), "tls/server.key".into());
        tls.insert("client_ca".into(), "tls/ca.pem".into());
    }
    let restored = format!(
        "# Tresor key server, restored from a backup (tresor kms serve --config kms.toml)\n\n{}",
        toml::to_string(&table).unwrap_or_default()
    );
    entries.push(Entry {
        path: "kms.toml".into(),
        mode: 0o644,
        data: Zeroizing::new(restored.into_bytes()),
    });
    let manifest = Manifest {
        kind: "kms".into(),
        release: env!("CARGO_PKG_VERSION").into(),
        schema,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
    };
    let sealed = backup::seal(&manifest, &entries, passphrase)?;
    Ok((manifest, sealed))
}

/// Restores a key server from `sealed` into `dir` (new or empty); the configuration file's
/// path.
pub fn restore(
    sealed: &[u8],
    passphrase: &[u8],
    dir: &Path,
) -> Result<(Manifest, PathBuf), KmsBackupError> {
    let manifest = backup::restore(sealed, passphrase, "kms", crate::store::SCHEMA, dir)?;
    Ok((manifest, dir.join("kms.toml")))
}
