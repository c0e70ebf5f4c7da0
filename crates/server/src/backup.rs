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
    #[error("Cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Cannot copy the database: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sealed(#[from] BackupError),
    #[error("This is a backup of a {0}, not of a server; restore it with `tresor {0} restore`")]
    Kind(String),
    #[error("This backup was made by tresor {release} with database schema {schema}; this tresor {ours} knows schemas up to {known}. Restore it with tresor {release} or newer")]
    TooNew {
        release: String,
        schema: u32,
        known: usize,
        ours: &'static str,
    },
    #[error("{0} already holds a server; restore into a new or empty folder")]
    NotEmpty(PathBuf),
    #[error("Cannot write the restored server into {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn read(path: &Path) -> Result<Zeroizing<Vec<u8>>, ServerBackupError> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|source| ServerBackupError::Read {
            path: path.to_owned(),
            source,
        })
}

/// A private folder beside the database for its copy, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(data_dir: &Path) -> Result<Scratch, ServerBackupError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = data_dir.join(format!(".backup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|source| ServerBackupError::Write {
                path: dir.clone(),
                source,
            })?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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
    let scratch = Scratch::new(dir)?;
    let copy = scratch.0.join("server.sqlite");
    let (schema, provider_keys) = Store::snapshot(&dir.join("server.sqlite"), &copy)?;
    let mut entries = vec![Entry {
        path: "server.sqlite".into(),
        mode: 0o600,
        data: read(&copy)?,
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
            data: read(&dir.join(file))?,
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
            data: read(&path)?,
        });
    }
    // The configuration, its paths made those of the restored folder.
    let text = read(config_path)?;
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
    let (manifest, entries) = backup::open(sealed, passphrase)?;
    if manifest.kind != "server" {
        return Err(ServerBackupError::Kind(manifest.kind));
    }
    if manifest.schema as usize > crate::store::SCHEMA {
        return Err(ServerBackupError::TooNew {
            release: manifest.release,
            schema: manifest.schema,
            known: crate::store::SCHEMA,
            ours: env!("CARGO_PKG_VERSION"),
        });
    }
    let write_err = |source| ServerBackupError::Write {
        path: dir.to_owned(),
        source,
    };
    if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(ServerBackupError::NotEmpty(dir.to_owned()));
    }
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(write_err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(write_err)?;
    }
    backup::write_entries(dir, &entries).map_err(write_err)?;
    Ok((manifest, dir.join("server.toml")))
}
