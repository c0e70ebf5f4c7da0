//! Sealed backups: the files of a server or a key server in a tar archive, encrypted with
//! AES-256-GCM under a key derived from a passphrase with Argon2id. A backup holds what lets its
//! holder act as the server (its CA key, its client keys for the providers) or the key server's
//! master key, so it is never written in the clear.
//!
//! The file: the magic `TRESOR-BACKUP\n`, a format byte (1), the Argon2id cost (memory in KiB,
//! passes, lanes; u32 little-endian each), a 16-byte salt, a 12-byte nonce, then the archive
//! sealed with the header as associated data (so that no byte of it can be changed unnoticed).
//! The archive's first file is `MANIFEST.json` (what kind of backup, which release and schema
//! made it, when).

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

const MAGIC: &[u8] = b"TRESOR-BACKUP\n";
const FORMAT: u8 = 1;
const HEADER_LEN: usize = MAGIC.len() + 1 + 12 + 16 + 12;
/// The Argon2id cost of new backups: 64 MiB, 3 passes, 1 lane.
const COST: (u32, u32, u32) = (64 * 1024, 3, 1);
/// The most a backup may ask for when it is opened (a hostile file must not exhaust memory).
const MAX_MEMORY_KIB: u32 = 1024 * 1024;
const MAX_PASSES: u32 = 16;
/// The shortest passphrase accepted.
pub const MIN_PASSPHRASE: usize = 16;

/// What a backup is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Manifest {
    /// `server` or `kms`.
    pub kind: String,
    /// The release that made it.
    pub release: String,
    /// The schema of its database.
    pub schema: u32,
    /// Unix seconds.
    pub created: i64,
}

/// One file of a backup: its path in the archive (relative, `/`-separated), its mode, its bytes.
#[derive(Debug)]
pub struct Entry {
    pub path: String,
    pub mode: u32,
    pub data: Zeroizing<Vec<u8>>,
}

impl Entry {
    /// The file `from`, as `path` in the archive with `mode`.
    pub fn file(path: &str, mode: u32, from: &std::path::Path) -> Result<Entry, BackupError> {
        Ok(Entry {
            path: path.into(),
            mode,
            data: read_file(from)?,
        })
    }
}

/// A file's bytes, wiped when dropped (a backup reads keys).
pub fn read_file(path: &std::path::Path) -> Result<Zeroizing<Vec<u8>>, BackupError> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|source| BackupError::Read {
            path: path.to_owned(),
            source,
        })
}

/// Why a backup cannot be made or opened.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("Cannot read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("Cannot make a private folder for the database's copy beside it: {0}")]
    Scratch(std::io::Error),
    #[error("Cannot read the passphrase file {path}: {source}")]
    PassphraseFile {
        path: String,
        source: std::io::Error,
    },
    #[error("The passphrase in {0} is shorter than {MIN_PASSPHRASE} characters; use a longer one")]
    ShortPassphrase(String),
    #[error("This is not a Tresor backup (it does not begin as one)")]
    NotABackup,
    #[error("This backup has format {0}, which this release cannot read; restore it with the release that made it or a newer one")]
    Format(u8),
    #[error("This backup asks for a key derivation cost beyond what a Tresor backup uses; it was not made by Tresor")]
    Cost,
    #[error("The backup cannot be opened: the passphrase is wrong, or the file was changed or cut short")]
    Sealed,
    #[error("The backup's archive is damaged: {0}")]
    Archive(String),
    #[error(
        "The backup's file {0} would be written outside the restore folder; the backup is refused"
    )]
    UnsafePath(String),
    #[error("The key derivation failed: {0}")]
    Kdf(String),
}

/// The passphrase in a file: its first line, at least [`MIN_PASSPHRASE`] characters.
pub fn passphrase_from(path: &std::path::Path) -> Result<Zeroizing<String>, BackupError> {
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
        BackupError::PassphraseFile {
            path: path.display().to_string(),
            source,
        }
    })?);
    let line = Zeroizing::new(text.lines().next().unwrap_or("").to_owned());
    if line.chars().count() < MIN_PASSPHRASE {
        return Err(BackupError::ShortPassphrase(path.display().to_string()));
    }
    Ok(line)
}

fn derive(
    passphrase: &[u8],
    salt: &[u8],
    (memory, passes, lanes): (u32, u32, u32),
) -> Result<Zeroizing<[u8; 32]>, BackupError> {
    let params = argon2::Params::new(memory, passes, lanes, Some(32))
        .map_err(|e| BackupError::Kdf(e.to_string()))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase, salt, key.as_mut())
        .map_err(|e| BackupError::Kdf(e.to_string()))?;
    Ok(key)
}

fn cipher(key: &[u8; 32]) -> Result<LessSafeKey, BackupError> {
    UnboundKey::new(&AES_256_GCM, key)
        .map(LessSafeKey::new)
        .map_err(|_| BackupError::Kdf("the derived key is unusable".into()))
}

/// Seals `manifest` and `entries` under `passphrase`.
pub fn seal(
    manifest: &Manifest,
    entries: &[Entry],
    passphrase: &[u8],
) -> Result<Vec<u8>, BackupError> {
    // (Blocks the archive outgrows are wiped by the `tresor` binary's allocator when freed.)
    let mut archive = tar::Builder::new(Vec::new());
    let manifest_json = serde_json::to_vec_pretty(manifest).unwrap_or_default();
    let mut add = |path: &str, mode: u32, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_mtime(manifest.created.max(0) as u64);
        header.set_entry_type(tar::EntryType::Regular);
        archive
            .append_data(&mut header, path, data)
            .map_err(|e| BackupError::Archive(e.to_string()))
    };
    add("MANIFEST.json", 0o644, &manifest_json)?;
    for e in entries {
        add(&e.path, e.mode, &e.data)?;
    }
    let mut plain = Zeroizing::new(
        archive
            .into_inner()
            .map_err(|e| BackupError::Archive(e.to_string()))?,
    );
    let rng = SystemRandom::new();
    let mut salt = [0u8; 16];
    let mut nonce = [0u8; 12];
    rng.fill(&mut salt)
        .and_then(|()| rng.fill(&mut nonce))
        .map_err(|_| BackupError::Kdf("the random number generator failed".into()))?;
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(MAGIC);
    header.push(FORMAT);
    for n in [COST.0, COST.1, COST.2] {
        header.extend_from_slice(&n.to_le_bytes());
    }
    header.extend_from_slice(&salt);
    header.extend_from_slice(&nonce);
    let key = derive(passphrase, &salt, COST)?;
    cipher(&key)?
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&header[..]),
            &mut *plain,
        )
        .map_err(|_| BackupError::Sealed)?;
    let mut out = header;
    out.extend_from_slice(&plain);
    Ok(out)
}

/// Opens a sealed backup: its manifest and its files (every path checked to stay inside the
/// folder it will be restored to).
pub fn open(bytes: &[u8], passphrase: &[u8]) -> Result<(Manifest, Vec<Entry>), BackupError> {
    if bytes.len() < HEADER_LEN + 16 || !bytes.starts_with(MAGIC) {
        return Err(BackupError::NotABackup);
    }
    let (header, sealed) = bytes.split_at(HEADER_LEN);
    let format = header[MAGIC.len()];
    if format != FORMAT {
        return Err(BackupError::Format(format));
    }
    let at = MAGIC.len() + 1;
    let u32_at = |i: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&header[at + 4 * i..at + 4 * i + 4]);
        u32::from_le_bytes(b)
    };
    let cost = (u32_at(0), u32_at(1), u32_at(2));
    if cost.0 > MAX_MEMORY_KIB || cost.1 > MAX_PASSES || cost.2 == 0 || cost.2 > 16 {
        return Err(BackupError::Cost);
    }
    let salt = &header[at + 12..at + 28];
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&header[at + 28..at + 40]);
    let key = derive(passphrase, salt, cost)?;
    let mut plain = Zeroizing::new(sealed.to_vec());
    let len = cipher(&key)?
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(header),
            &mut plain,
        )
        .map_err(|_| BackupError::Sealed)?
        .len();
    plain.truncate(len);
    let mut archive = tar::Archive::new(&plain[..]);
    let mut manifest = None;
    let mut entries = Vec::new();
    let damaged = |e: std::io::Error| BackupError::Archive(e.to_string());
    for entry in archive.entries().map_err(damaged)? {
        let mut entry = entry.map_err(damaged)?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(BackupError::Archive(
                "it holds something other than files".into(),
            ));
        }
        let path = entry.path().map_err(damaged)?.into_owned();
        let name = safe_path(&path)?;
        let mode = entry.header().mode().map_err(damaged)? & 0o777;
        let mut data = Zeroizing::new(Vec::new());
        std::io::Read::read_to_end(&mut entry, &mut data).map_err(damaged)?;
        if name == "MANIFEST.json" {
            manifest =
                Some(serde_json::from_slice(&data).map_err(|e| {
                    BackupError::Archive(format!("its manifest is unreadable: {e}"))
                })?);
        } else {
            entries.push(Entry {
                path: name,
                mode,
                data,
            });
        }
    }
    let manifest =
        manifest.ok_or_else(|| BackupError::Archive("it has no MANIFEST.json".into()))?;
    Ok((manifest, entries))
}

/// A path of the archive as `/`-separated names, refused unless every part is a plain name
/// (no root, no `..`, no `.`).
fn safe_path(path: &std::path::Path) -> Result<String, BackupError> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            std::path::Component::Normal(n) => match n.to_str() {
                Some(s) if !s.is_empty() => parts.push(s.to_owned()),
                _ => return Err(BackupError::UnsafePath(path.display().to_string())),
            },
            _ => return Err(BackupError::UnsafePath(path.display().to_string())),
        }
    }
    if parts.is_empty() {
        return Err(BackupError::UnsafePath(path.display().to_string()));
    }
    Ok(parts.join("/"))
}

/// Why a backup is not restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Sealed(#[from] BackupError),
    #[error("This is a backup of a {found}, not of a {wanted}; restore it with `tresor {found} restore`")]
    Kind { found: String, wanted: &'static str },
    #[error("This backup was made by tresor {release} with database schema {schema}; this tresor {ours} knows schemas up to {known}. Restore it with tresor {release} or newer")]
    TooNew {
        release: String,
        schema: u32,
        known: usize,
        ours: &'static str,
    },
    #[error("{0} is not empty; restore into a new or empty folder")]
    NotEmpty(std::path::PathBuf),
    #[error("Cannot write the restored files into {path}: {source}")]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Opens a sealed backup of a `kind` (`server`, `kms`) whose database this release can open
/// (schema at most `known`) and writes its files into `dir`, new or empty (made 0700); the
/// manifest.
pub fn restore(
    sealed: &[u8],
    passphrase: &[u8],
    kind: &'static str,
    known: usize,
    dir: &std::path::Path,
) -> Result<Manifest, RestoreError> {
    let (manifest, entries) = open(sealed, passphrase)?;
    if manifest.kind != kind {
        return Err(RestoreError::Kind {
            found: manifest.kind,
            wanted: kind,
        });
    }
    if manifest.schema as usize > known {
        return Err(RestoreError::TooNew {
            release: manifest.release,
            schema: manifest.schema,
            known,
            ours: env!("CARGO_PKG_VERSION"),
        });
    }
    if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(RestoreError::NotEmpty(dir.to_owned()));
    }
    let write_err = |source| RestoreError::Write {
        path: dir.to_owned(),
        source,
    };
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(write_err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(write_err)?;
    }
    write_entries(dir, &entries).map_err(write_err)?;
    Ok(manifest)
}

/// A private folder (0700) for a database's copy while a backup is made, removed when dropped.
#[derive(Debug)]
pub struct Scratch(pub std::path::PathBuf);

impl Scratch {
    /// A new one in `parent` (beside the database, on its file system).
    pub fn new(parent: &std::path::Path) -> Result<Scratch, BackupError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = parent.join(format!(".backup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(BackupError::Scratch)?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes the entries under `dir` (which must exist), each file with its mode, its folders
/// 0700.
pub fn write_entries(dir: &std::path::Path, entries: &[Entry]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    for e in entries {
        let path = dir.join(&e.path);
        if let Some(parent) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(e.mode & 0o700)
            .open(&path)
            .map_err(|err| {
                std::io::Error::new(
                    err.kind(),
                    format!("Cannot create {}: {err}", path.display()),
                )
            })?;
        f.write_all(&e.data)?;
        f.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Manifest, Vec<Entry>) {
        (
            Manifest {
                kind: "kms".into(),
                release: "0.1.0".into(),
                schema: 3,
                created: 1_796_000_000,
            },
            vec![
                Entry {
                    path: "data/master.key".into(),
                    mode: 0o600,
                    data: Zeroizing::new(vec![7u8; 32]),
                },
                Entry {
                    path: "kms.toml".into(),
                    mode: 0o644,
                    data: Zeroizing::new(b"listen = \"x\"\n".to_vec()),
                },
            ],
        )
    }

    #[test]
    fn a_sealed_backup_opens_with_its_passphrase_only_and_hides_its_contents() {
        let (manifest, entries) = sample();
        let sealed = seal(&manifest, &entries, b"a long enough passphrase").unwrap();
        assert!(sealed.starts_with(MAGIC));
        // Nothing of the files is in the clear.
        assert!(!sealed.windows(32).any(|w| w == [7u8; 32]));
        assert!(!sealed.windows(6).any(|w| w == b"listen"));
        let (m, e) = open(&sealed, b"a long enough passphrase").unwrap();
        assert_eq!(m, manifest);
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].path.as_str(), e[0].mode), ("data/master.key", 0o600));
        assert_eq!(&*e[0].data, &[7u8; 32]);
        assert!(matches!(
            open(&sealed, b"another long passphrase"),
            Err(BackupError::Sealed)
        ));
    }

    #[test]
    fn a_changed_or_cut_or_foreign_file_is_refused() {
        let (manifest, entries) = sample();
        let sealed = seal(&manifest, &entries, b"a long enough passphrase").unwrap();
        let pass = b"a long enough passphrase";
        // Any byte changed, in the header or the archive.
        for i in [MAGIC.len() + 1 + 12, HEADER_LEN + 3, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(open(&bad, pass).is_err(), "byte {i}");
        }
        assert!(matches!(
            open(&sealed[..sealed.len() - 20], pass),
            Err(BackupError::Sealed)
        ));
        assert!(matches!(open(b"hello", pass), Err(BackupError::NotABackup)));
        // A hostile cost is refused before any memory is spent on it.
        let mut greedy = sealed.clone();
        greedy[MAGIC.len() + 1..MAGIC.len() + 5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(open(&greedy, pass), Err(BackupError::Cost)));
        let mut future = sealed;
        future[MAGIC.len()] = 9;
        assert!(matches!(open(&future, pass), Err(BackupError::Format(9))));
    }

    #[test]
    fn paths_that_leave_the_folder_are_refused() {
        for bad in ["../x", "/etc/passwd", "a/../../b", "./"] {
            assert!(safe_path(std::path::Path::new(bad)).is_err(), "{bad}");
        }
        assert_eq!(
            safe_path(std::path::Path::new("providers/corp/client.key")).unwrap(),
            "providers/corp/client.key"
        );
    }

    #[test]
    fn passphrases_come_from_the_first_line_of_a_file_and_are_long() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p");
        std::fs::write(&f, "short\n").unwrap();
        assert!(matches!(
            passphrase_from(&f),
            Err(BackupError::ShortPassphrase(_))
        ));
        std::fs::write(&f, "correct horse battery staple\nignored\n").unwrap();
        assert_eq!(
            &*passphrase_from(&f).unwrap(),
            "correct horse battery staple"
        );
        assert!(matches!(
            passphrase_from(&dir.path().join("missing")),
            Err(BackupError::PassphraseFile { .. })
        ));
    }
}
