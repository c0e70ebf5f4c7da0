//! AES-256-XTS over whole 512-byte sectors with the `plain64` tweak (the sector's number,
//! little-endian, in 16 bytes), as dm-crypt and QEMU's `luks` driver apply it: by the system's
//! OpenSSL, one context per direction with the key schedule made once.

use openssl::cipher::Cipher;
use openssl::cipher_ctx::CipherCtx;

use crate::{LuksError, VolumeKey, SECTOR};

/// LUKS's `plain64` IV of a sector.
fn plain64(sector: u64) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[..8].copy_from_slice(&sector.to_le_bytes());
    iv
}

/// Encrypts and decrypts sectors with one volume key (OpenSSL wipes the key schedule when the
/// contexts are freed).
pub struct SectorCipher {
    encrypt: CipherCtx,
    decrypt: CipherCtx,
}

impl std::fmt::Debug for SectorCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SectorCipher(<key hidden>)")
    }
}

impl SectorCipher {
    pub fn new(key: &VolumeKey) -> Result<SectorCipher, LuksError> {
        SectorCipher::with_key(key.expose())
    }

    /// A cipher for a key slot's material, whose key is the PBKDF2 output.
    pub(crate) fn with_key(key: &[u8]) -> Result<SectorCipher, LuksError> {
        let cipher = Cipher::aes_256_xts();
        let mut encrypt = CipherCtx::new()?;
        encrypt.encrypt_init(Some(cipher), Some(key), Some(&[0u8; 16]))?;
        let mut decrypt = CipherCtx::new()?;
        decrypt.decrypt_init(Some(cipher), Some(key), Some(&[0u8; 16]))?;
        Ok(SectorCipher { encrypt, decrypt })
    }

    /// Encrypts `data`, whole sectors, in place; its first sector is `first_sector` (counted
    /// from the start of the data, as the tweak is).
    pub fn encrypt(&mut self, data: &mut [u8], first_sector: u64) -> Result<(), LuksError> {
        apply(&mut self.encrypt, true, data, first_sector)
    }

    /// Decrypts `data`, whole sectors, in place.
    pub fn decrypt(&mut self, data: &mut [u8], first_sector: u64) -> Result<(), LuksError> {
        apply(&mut self.decrypt, false, data, first_sector)
    }
}

fn apply(
    ctx: &mut CipherCtx,
    encrypt: bool,
    data: &mut [u8],
    first_sector: u64,
) -> Result<(), LuksError> {
    if !data.len().is_multiple_of(SECTOR) {
        return Err(LuksError::Partial(data.len()));
    }
    for (i, sector) in data.chunks_exact_mut(SECTOR).enumerate() {
        // The key stays; only the tweak is set again.
        let iv = plain64(first_sector.wrapping_add(i as u64));
        if encrypt {
            ctx.encrypt_init(None, None, Some(&iv))?;
        } else {
            ctx.decrypt_init(None, None, Some(&iv))?;
        }
        ctx.cipher_update_inplace(sector, SECTOR)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IEEE 1619 (XTS-AES-256), vector 10: 512-byte data unit 0xff, keys from the standard.
    #[test]
    fn the_ieee_1619_vector_for_a_256_bit_key() {
        let mut key = [0u8; 64];
        let k1 = "2718281828459045235360287471352662497757247093699959574966967627";
        let k2 = "3141592653589793238462643383279502884197169399375105820974944592";
        for (i, b) in key.iter_mut().enumerate() {
            let hex = if i < 32 {
                &k1[2 * i..2 * i + 2]
            } else {
                &k2[2 * (i - 32)..2 * (i - 32) + 2]
            };
            *b = u8::from_str_radix(hex, 16).unwrap();
        }
        let mut data: Vec<u8> = (0..512).map(|i| i as u8).collect();
        let mut c = SectorCipher::new(&VolumeKey::from_bytes(&key).unwrap()).unwrap();
        c.encrypt(&mut data, 0xff).unwrap();
        assert_eq!(
            hex(&data[..32]),
            "1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b"
        );
        assert_eq!(
            hex(&data[480..]),
            "773dad38014bd2092fa755c824bb5e54c4f36ffda9fcea70b9c6e693e148c151"
        );
        c.decrypt(&mut data, 0xff).unwrap();
        assert!(data.iter().enumerate().all(|(i, b)| *b == i as u8));
    }

    #[test]
    fn each_sector_has_its_own_tweak_and_partial_sectors_are_refused() {
        let key = VolumeKey::generate().unwrap();
        let mut c = SectorCipher::new(&key).unwrap();
        let mut data = vec![0u8; 3 * SECTOR];
        c.encrypt(&mut data, 5).unwrap();
        assert_ne!(data[..SECTOR], data[SECTOR..2 * SECTOR]);
        // The same sector encrypted alone is the same.
        let mut alone = vec![0u8; SECTOR];
        c.encrypt(&mut alone, 6).unwrap();
        assert_eq!(alone[..], data[SECTOR..2 * SECTOR]);
        assert!(matches!(
            c.encrypt(&mut [0u8; 100], 0),
            Err(LuksError::Partial(100))
        ));
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
