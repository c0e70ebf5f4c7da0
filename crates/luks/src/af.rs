//! LUKS's anti-forensic split: a key spread over `stripes` blocks so that erasing any one of
//! them loses the key. Each step XORs a block into a running buffer and diffuses it with the
//! header's hash (SHA-256), in pieces of the hash's size, each hashed after its index.

use openssl::sha::Sha256;
use zeroize::Zeroizing;

use crate::LuksError;

const DIGEST: usize = 32;

/// Diffuses `block` in place: each 32-byte piece `i` becomes SHA-256(be32(i) ‖ piece), the last
/// (shorter) piece the start of its hash.
fn diffuse(block: &mut [u8]) {
    for (i, piece) in block.chunks_mut(DIGEST).enumerate() {
        let mut h = Sha256::new();
        h.update(&(i as u32).to_be_bytes());
        h.update(piece);
        let digest = Zeroizing::new(h.finish());
        let n = piece.len();
        piece.copy_from_slice(&digest[..n]);
    }
}

fn xor_into(acc: &mut [u8], block: &[u8]) {
    for (a, b) in acc.iter_mut().zip(block) {
        *a ^= b;
    }
}

/// Splits `key` into `stripes` blocks of its length: random blocks but the last, which makes
/// the merge give `key` back.
pub fn split(key: &[u8], stripes: usize) -> Result<Zeroizing<Vec<u8>>, LuksError> {
    let n = key.len();
    let mut out = Zeroizing::new(vec![0u8; n * stripes]);
    let mut acc = Zeroizing::new(vec![0u8; n]);
    let (random, last) = out.split_at_mut(n * (stripes - 1));
    openssl::rand::rand_bytes(random)?;
    for block in random.chunks(n) {
        xor_into(&mut acc, block);
        diffuse(&mut acc);
    }
    last.copy_from_slice(key);
    xor_into(last, &acc);
    Ok(out)
}

/// Merges `material` (`stripes` blocks of `key_len` bytes) back into the key.
pub fn merge(material: &[u8], key_len: usize) -> Zeroizing<Vec<u8>> {
    let stripes = material.len() / key_len;
    let mut acc = Zeroizing::new(vec![0u8; key_len]);
    for block in material.chunks(key_len).take(stripes - 1) {
        xor_into(&mut acc, block);
        diffuse(&mut acc);
    }
    xor_into(
        &mut acc,
        &material[key_len * (stripes - 1)..key_len * stripes],
    );
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_key_merges_back_and_each_stripe_matters() {
        for len in [32usize, 64, 40] {
            let key: Vec<u8> = (0..len as u8).collect();
            let material = split(&key, 4000).unwrap();
            assert_eq!(material.len(), len * 4000);
            assert_eq!(&merge(&material, len)[..], &key[..]);
            // One bit of one stripe changed: another key.
            for stripe in [0usize, 1234, 3999] {
                let mut damaged = material.to_vec();
                damaged[stripe * len] ^= 1;
                assert_ne!(&merge(&damaged, len)[..], &key[..], "stripe {stripe}");
            }
        }
    }

    /// The diffusion as cryptsetup computes it: the 32-byte piece `i` hashed after `i` as four
    /// big-endian bytes, a last short piece cut from its hash.
    #[test]
    fn diffusion_hashes_each_piece_after_its_index() {
        let mut block = [7u8; 40];
        diffuse(&mut block);
        let mut first = Sha256::new();
        first.update(&[0, 0, 0, 0]);
        first.update(&[7u8; 32]);
        let mut second = Sha256::new();
        second.update(&[0, 0, 0, 1]);
        second.update(&[7u8; 8]);
        assert_eq!(block[..32], first.finish());
        assert_eq!(block[32..], second.finish()[..8]);
    }
}
