//! AES-256-XTS over whole 512-byte sectors with the `plain64` tweak (the sector's number,
//! little-endian, in 16 bytes), as dm-crypt and QEMU's `luks` driver apply it: by the system's
//! OpenSSL, one context per direction with the key schedule made once.

use openssl::cipher::Cipher;
use openssl::cipher_ctx::CipherCtx;

use zeroize::Zeroizing;

use crate::{LuksError, VolumeKey, KEY_BYTES, SECTOR};

/// LUKS's `plain64` IV of a sector.
fn plain64(sector: u64) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[..8].copy_from_slice(&sector.to_le_bytes());
    iv
}

/// How many sectors one batch takes (the batch's tweak masks stay in the CPU's cache).
const BATCH: usize = 64;

/// Encrypts and decrypts sectors with one volume key (OpenSSL wipes the key schedules when the
/// contexts are freed).
///
/// XTS per 512-byte sector through OpenSSL's own XTS costs a context re-initialisation per
/// sector, about as much as encrypting the sector. So the sectors of a batch are done as XTS is
/// defined, around AES-ECB: the batch's tweaks are one ECB call under the second key, each
/// block's mask (its sector's tweak times α to the block's index, in GF(2^128)) is XORed in,
/// the whole batch is one ECB call under the first key, and the masks are XORed in again. The
/// result is byte for byte OpenSSL's XTS (the tests compare them), at the speed of its ECB.
pub struct SectorCipher {
    /// AES-256-ECB under the first half of the key, both directions, and under the second half
    /// (the tweaks are always encrypted).
    encrypt: CipherCtx,
    decrypt: CipherCtx,
    tweak: CipherCtx,
    /// A batch's masks, its ciphered blocks before the masks are XORed out, its IVs and tweaks
    /// (a block more each: OpenSSL asks for room for one).
    masks: Zeroizing<Vec<u8>>,
    out: Zeroizing<Vec<u8>>,
    ivs: Vec<u8>,
    tweaks: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for SectorCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SectorCipher(<key hidden>)")
    }
}

fn ecb(key: &[u8], encrypt: bool) -> Result<CipherCtx, LuksError> {
    let mut ctx = CipherCtx::new()?;
    if encrypt {
        ctx.encrypt_init(Some(Cipher::aes_256_ecb()), Some(key), None)?;
    } else {
        ctx.decrypt_init(Some(Cipher::aes_256_ecb()), Some(key), None)?;
    }
    ctx.set_padding(false);
    Ok(ctx)
}

impl SectorCipher {
    pub fn new(key: &VolumeKey) -> Result<SectorCipher, LuksError> {
        SectorCipher::with_key(key.expose())
    }

    /// A cipher for a key slot's material, whose key is the PBKDF2 output.
    pub(crate) fn with_key(key: &[u8]) -> Result<SectorCipher, LuksError> {
        if key.len() != KEY_BYTES {
            return Err(LuksError::KeyLength(key.len()));
        }
        let (data, tweak) = key.split_at(KEY_BYTES / 2);
        Ok(SectorCipher {
            encrypt: ecb(data, true)?,
            decrypt: ecb(data, false)?,
            tweak: ecb(tweak, true)?,
            masks: Zeroizing::new(vec![0u8; BATCH * SECTOR]),
            out: Zeroizing::new(vec![0u8; BATCH * SECTOR + 16]),
            ivs: vec![0u8; BATCH * 16],
            tweaks: Zeroizing::new(vec![0u8; BATCH * 16 + 16]),
        })
    }

    /// Encrypts `data`, whole sectors, in place; its first sector is `first_sector` (counted
    /// from the start of the data, as the tweak is).
    pub fn encrypt(&mut self, data: &mut [u8], first_sector: u64) -> Result<(), LuksError> {
        self.apply(true, data, first_sector)
    }

    /// Decrypts `data`, whole sectors, in place.
    pub fn decrypt(&mut self, data: &mut [u8], first_sector: u64) -> Result<(), LuksError> {
        self.apply(false, data, first_sector)
    }

    fn apply(
        &mut self,
        encrypt: bool,
        data: &mut [u8],
        first_sector: u64,
    ) -> Result<(), LuksError> {
        if !data.len().is_multiple_of(SECTOR) {
            return Err(LuksError::Partial(data.len()));
        }
        let mut sector = first_sector;
        for batch in data.chunks_mut(BATCH * SECTOR) {
            let n = batch.len() / SECTOR;
            // The tweaks: the sectors' plain64 IVs encrypted under the second key.
            for (i, iv) in self.ivs[..16 * n].chunks_exact_mut(16).enumerate() {
                iv.copy_from_slice(&plain64(sector.wrapping_add(i as u64)));
            }
            self.tweak
                .cipher_update(&self.ivs[..16 * n], Some(&mut self.tweaks[..16 * n + 16]))?;
            // Each block's mask: its sector's tweak times α to the block's index.
            let masks = &mut self.masks[..batch.len()];
            for (m, t) in masks
                .chunks_exact_mut(SECTOR)
                .zip(self.tweaks[..16 * n].chunks_exact(16))
            {
                let mut t = u128::from_le_bytes(t.try_into().expect("16 bytes"));
                for block in m.chunks_exact_mut(16) {
                    block.copy_from_slice(&t.to_le_bytes());
                    // Times α: shift left, and fold the carry back in (no multiply).
                    let carry = ((t >> 127) as u64).wrapping_neg() & 0x87;
                    t = (t << 1) ^ u128::from(carry);
                }
            }
            xor_into(batch, masks);
            let ctx = if encrypt {
                &mut self.encrypt
            } else {
                &mut self.decrypt
            };
            let out = &mut self.out[..batch.len() + 16];
            ctx.cipher_update(batch, Some(out))?;
            xor_from(batch, &out[..batch.len()], masks);
            sector = sector.wrapping_add(n as u64);
        }
        Ok(())
    }
}

/// `data ^= masks`, 16 bytes at a time.
fn xor_into(data: &mut [u8], masks: &[u8]) {
    for (d, m) in data.chunks_exact_mut(16).zip(masks.chunks_exact(16)) {
        let x = u128::from_ne_bytes((&*d).try_into().expect("16 bytes"))
            ^ u128::from_ne_bytes(m.try_into().expect("16 bytes"));
        d.copy_from_slice(&x.to_ne_bytes());
    }
}

/// `data = from ^ masks`, 16 bytes at a time.
fn xor_from(data: &mut [u8], from: &[u8], masks: &[u8]) {
    for ((d, f), m) in data
        .chunks_exact_mut(16)
        .zip(from.chunks_exact(16))
        .zip(masks.chunks_exact(16))
    {
        let x = u128::from_ne_bytes(f.try_into().expect("16 bytes"))
            ^ u128::from_ne_bytes(m.try_into().expect("16 bytes"));
        d.copy_from_slice(&x.to_ne_bytes());
    }
}

/// OpenSSL's own XTS, a context re-initialised per sector: the reference the tests compare
/// [`SectorCipher`] with, and the benchmark's other row.
pub struct PerSectorXts {
    ctx: CipherCtx,
    encrypt: bool,
}

impl std::fmt::Debug for PerSectorXts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PerSectorXts(<key hidden>)")
    }
}

impl PerSectorXts {
    pub fn new(key: &VolumeKey, encrypt: bool) -> Result<PerSectorXts, LuksError> {
        let mut ctx = CipherCtx::new()?;
        let cipher = Cipher::aes_256_xts();
        if encrypt {
            ctx.encrypt_init(Some(cipher), Some(key.expose()), Some(&[0u8; 16]))?;
        } else {
            ctx.decrypt_init(Some(cipher), Some(key.expose()), Some(&[0u8; 16]))?;
        }
        Ok(PerSectorXts { ctx, encrypt })
    }

    /// Encrypts or decrypts `data` in place, sectors of `sector_size`, the first `first`.
    pub fn apply(
        &mut self,
        data: &mut [u8],
        sector_size: usize,
        first: u64,
    ) -> Result<(), LuksError> {
        if !data.len().is_multiple_of(sector_size) {
            return Err(LuksError::Partial(data.len()));
        }
        for (i, s) in data.chunks_exact_mut(sector_size).enumerate() {
            // The key stays; only the tweak is set again.
            let iv = plain64(first.wrapping_add(i as u64));
            if self.encrypt {
                self.ctx.encrypt_init(None, None, Some(&iv))?;
            } else {
                self.ctx.decrypt_init(None, None, Some(&iv))?;
            }
            self.ctx.cipher_update_inplace(s, sector_size)?;
        }
        Ok(())
    }
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

    /// The batched cipher writes what OpenSSL's XTS writes, for random keys, data, lengths and
    /// first sectors (batches cut anywhere, the sector number wrapping), and reads it back.
    #[test]
    fn batches_are_byte_for_byte_openssl_xts() {
        let mut seed = [0u8; 8];
        for round in 0..200u64 {
            openssl::rand::rand_bytes(&mut seed).unwrap();
            let key = VolumeKey::generate().unwrap();
            let sectors = 1 + (u64::from_le_bytes(seed) % 200) as usize;
            let first = match round % 3 {
                0 => u64::MAX - 3,
                1 => round,
                _ => u64::from_le_bytes(seed).rotate_left(17),
            };
            let mut plain = vec![0u8; sectors * SECTOR];
            openssl::rand::rand_bytes(&mut plain).unwrap();
            let mut ours = plain.clone();
            let mut theirs = plain.clone();
            SectorCipher::new(&key)
                .unwrap()
                .encrypt(&mut ours, first)
                .unwrap();
            PerSectorXts::new(&key, true)
                .unwrap()
                .apply(&mut theirs, SECTOR, first)
                .unwrap();
            assert_eq!(ours, theirs, "{sectors} sectors from {first}");
            SectorCipher::new(&key)
                .unwrap()
                .decrypt(&mut ours, first)
                .unwrap();
            assert_eq!(ours, plain);
        }
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
