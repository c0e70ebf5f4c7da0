//! The master key and the sealing of key material at rest.
//!
//! Key material is stored only as AES-256-GCM ciphertext under the master key, bound to the
//! object's unique identifier (the identifier is the associated data, so a sealed blob copied to
//! another object does not open). The master key lives in its own file, mode 0600, created with
//! the first start; it is never in the database.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// The first bytes of a master key file.
const MAGIC: &[u8; 12] = b"TRESOR-MK-1\n";
const KEY_LEN: usize = 32;

/// Why the master key or a sealed object cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("Cannot read master key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Cannot create master key file {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Master key file {path} is readable by group or others (mode {mode:o}); run: chmod 600 {path}")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("Master key file {0} is not a Tresor master key (wrong length or header)")]
    Format(PathBuf),
    #[error("The system random number generator failed")]
    Random,
    #[error("Sealed key material of object {0} does not open: wrong master key, or the data was altered")]
    Open(String),
}

/// Random bytes from the operating system.
pub fn random_bytes(len: usize) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let mut buf = Zeroizing::new(vec![0u8; len]);
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| CryptoError::Random)?;
    Ok(buf)
}

/// The master key: seals and opens key material.
pub struct MasterKey {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<hidden>)")
    }
}

impl MasterKey {
    /// Reads the master key from `path`, or creates it (mode 0600) if the file does not exist.
    pub fn load_or_create(path: &Path) -> Result<MasterKey, CryptoError> {
        match std::fs::metadata(path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(CryptoError::Permissions {
                        path: path.to_owned(),
                        mode,
                    });
                }
                let bytes =
                    Zeroizing::new(std::fs::read(path).map_err(|source| CryptoError::Read {
                        path: path.to_owned(),
                        source,
                    })?);
                if bytes.len() != MAGIC.len() + KEY_LEN || !bytes.starts_with(MAGIC) {
                    return Err(CryptoError::Format(path.to_owned()));
                }
                MasterKey::from_bytes(&bytes[MAGIC.len()..])
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = random_bytes(KEY_LEN)?;
                let create = |source| CryptoError::Create {
                    path: path.to_owned(),
                    source,
                };
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(create)?;
                let mut contents = Zeroizing::new(MAGIC.to_vec());
                contents.extend_from_slice(&key);
                file.write_all(&contents).map_err(create)?;
                file.sync_all().map_err(create)?;
                if let Some(dir) = path.parent() {
                    std::fs::File::open(dir)
                        .and_then(|d| d.sync_all())
                        .map_err(create)?;
                }
                MasterKey::from_bytes(&key)
            }
            Err(source) => Err(CryptoError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    fn from_bytes(bytes: &[u8]) -> Result<MasterKey, CryptoError> {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| CryptoError::Random)?;
        Ok(MasterKey {
            key: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
        })
    }

    /// A master key for tests.
    #[doc(hidden)]
    pub fn ephemeral() -> Result<MasterKey, CryptoError> {
        MasterKey::from_bytes(&random_bytes(KEY_LEN)?)
    }

    fn aad(uid: &str) -> Vec<u8> {
        let mut aad = b"tresor-kms/object/v1/".to_vec();
        aad.extend_from_slice(uid.as_bytes());
        aad
    }

    /// Seals `plaintext` for object `uid`: nonce, ciphertext and tag.
    pub fn seal(&self, uid: &str, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| CryptoError::Random)?;
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + 16);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(Self::aad(uid)),
                &mut out[NONCE_LEN..],
            )
            .map_err(|_| CryptoError::Random)?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Opens what [`MasterKey::seal`] sealed for `uid`.
    pub fn open(&self, uid: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if sealed.len() < NONCE_LEN + 16 {
            return Err(CryptoError::Open(uid.to_owned()));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[..NONCE_LEN]);
        let mut buf = Zeroizing::new(sealed[NONCE_LEN..].to_vec());
        let len = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(Self::aad(uid)),
                &mut buf,
            )
            .map_err(|_| CryptoError::Open(uid.to_owned()))?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_material_opens_only_for_its_object() {
        let mk = MasterKey::ephemeral().unwrap();
        let sealed = mk.seal("a", b"secret key bytes").unwrap();
        assert_eq!(&mk.open("a", &sealed).unwrap()[..], b"secret key bytes");
        assert!(mk.open("b", &sealed).is_err());
        let mut tampered = sealed.clone();
        tampered[20] ^= 1;
        assert!(mk.open("a", &tampered).is_err());
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
    }

    #[test]
    fn master_key_file_is_created_private_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let mk = MasterKey::load_or_create(&path).unwrap();
        let sealed = mk.seal("x", b"k").unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = MasterKey::load_or_create(&path).unwrap();
        assert_eq!(&again.open("x", &sealed).unwrap()[..], b"k");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = MasterKey::load_or_create(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
