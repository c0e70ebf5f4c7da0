//! LUKS1 volumes as `cryptsetup` and QEMU's `luks` driver read them, without I/O: the header
//! and its key slots (bytes in, values out), the anti-forensic split of the volume key, and
//! AES-256-XTS over 512-byte sectors with the `plain64` tweak, as dm-crypt and QEMU apply it.
//!
//! Tresor writes one kind of volume, and reads only that kind: `aes`, `xts-plain64`, `sha256`,
//! a 512-bit volume key, 4,000 stripes, the data 2 MiB in (as `cryptsetup luksFormat --type
//! luks1` lays it out). A disk can then always be opened without Tresor, by `cryptsetup` or by
//! QEMU, with its passphrase. The cryptography is the system's OpenSSL (its PBKDF2, SHA-256 and
//! AES-XTS with the CPU's AES instructions); what is written here is the format around it.
//!
//! Everything read is untrusted (a file on a host): every field is checked before it is used,
//! and what it may cost (iterations, stripes) is bounded.

mod af;
mod header;
mod sectors;

pub use header::{format, unseal, Formatted, Header, KeySlot};
pub use sectors::{PerSectorXts, SectorCipher};

use zeroize::Zeroizing;

/// The sector of LUKS1: the unit of the data's tweak, and of header offsets.
pub const SECTOR: usize = 512;
/// The volume key's length: AES-256-XTS takes two 256-bit keys.
pub const KEY_BYTES: usize = 64;
/// The anti-forensic stripes of a key slot (QEMU accepts no other number).
pub const STRIPES: u32 = 4000;
/// The length of the LUKS1 header proper (the key slots' material follows it).
pub const HEADER_LEN: usize = 592;
/// How many key slots a LUKS1 header has.
pub const SLOTS: usize = 8;
/// Where the data of a volume Tresor formats starts, in sectors (2 MiB, as cryptsetup aligns it).
pub const PAYLOAD_OFFSET_SECTORS: u32 = 4096;
/// The fewest PBKDF2 iterations cryptsetup writes; Tresor's passphrases are 256 random bits, for
/// which stretching buys nothing, so this is what Tresor writes.
pub const MIN_ITERATIONS: u32 = 1000;
/// The most PBKDF2 iterations a header may ask for before it is refused (a header on a host is
/// untrusted: it must not hold an open for minutes). cryptsetup's own benchmark-chosen counts
/// stay well below.
pub const MAX_ITERATIONS: u32 = 50_000_000;

/// A volume key: in memory only, wiped when dropped.
pub struct VolumeKey(Zeroizing<[u8; KEY_BYTES]>);

impl VolumeKey {
    /// A new random key (its two halves differ, as XTS requires).
    pub fn generate() -> Result<VolumeKey, LuksError> {
        loop {
            let mut key = Zeroizing::new([0u8; KEY_BYTES]);
            openssl::rand::rand_bytes(&mut key[..])?;
            if key[..KEY_BYTES / 2] != key[KEY_BYTES / 2..] {
                return Ok(VolumeKey(key));
            }
        }
    }

    /// A key from its bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<VolumeKey, LuksError> {
        let mut key = Zeroizing::new([0u8; KEY_BYTES]);
        if bytes.len() != KEY_BYTES {
            return Err(LuksError::KeyLength(bytes.len()));
        }
        key.copy_from_slice(bytes);
        Ok(VolumeKey(key))
    }

    pub fn expose(&self) -> &[u8; KEY_BYTES] {
        &self.0
    }
}

impl std::fmt::Debug for VolumeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VolumeKey(<hidden>)")
    }
}

/// Why a LUKS volume cannot be read, made or opened.
#[derive(Debug, thiserror::Error)]
pub enum LuksError {
    #[error("Not a LUKS volume: its first bytes are not the LUKS signature")]
    NotLuks,
    #[error("LUKS version {0} is not LUKS1; Tresor's fast disks are LUKS1 (convert with `cryptsetup convert --type luks1`)")]
    Version(u16),
    #[error("The volume uses {0}; Tresor reads aes xts-plain64 with sha256 and a 512-bit key (open it with cryptsetup)")]
    Unsupported(String),
    #[error("The LUKS header is damaged: {0}; restore it from a header backup (`cryptsetup luksHeaderRestore`)")]
    Corrupt(String),
    #[error("No key slot of the volume opens with this passphrase")]
    WrongPassphrase,
    #[error("A volume key is {KEY_BYTES} bytes, not {0}")]
    KeyLength(usize),
    #[error("Sector data of {0} bytes is not whole 512-byte sectors")]
    Partial(usize),
    #[error("Cannot read the volume: {0}")]
    Read(std::io::Error),
    #[error("OpenSSL refused the operation")]
    Crypto(#[from] openssl::error::ErrorStack),
}
