//! The LUKS1 header (592 bytes, big-endian): the cipher, the volume key's digest, and eight key
//! slots, each the volume key split over 4,000 stripes and encrypted under a key derived from
//! a passphrase.

use std::ops::Range;

use openssl::hash::MessageDigest;
use zeroize::Zeroizing;

use crate::sectors::SectorCipher;
use crate::{
    af, LuksError, VolumeKey, HEADER_LEN, KEY_BYTES, MAX_ITERATIONS, MIN_ITERATIONS,
    PAYLOAD_OFFSET_SECTORS, SECTOR, SLOTS, STRIPES,
};

const MAGIC: [u8; 6] = *b"LUKS\xba\xbe";
const ACTIVE: u32 = 0x00AC_71F3;
const INACTIVE: u32 = 0x0000_DEAD;
const DIGEST_LEN: usize = 20;
const SALT_LEN: usize = 32;
/// Key slots start on 4 KiB boundaries.
const SLOT_ALIGN_SECTORS: u32 = 8;

/// One key slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySlot {
    pub active: bool,
    pub iterations: u32,
    pub salt: [u8; SALT_LEN],
    /// Where the slot's material starts, in sectors from the volume's start.
    pub material_offset: u32,
    pub stripes: u32,
}

/// A LUKS1 header of the one kind Tresor reads (see the crate's documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Where the data starts, in sectors.
    pub payload_offset: u32,
    pub digest: [u8; DIGEST_LEN],
    pub digest_salt: [u8; SALT_LEN],
    pub digest_iterations: u32,
    pub uuid: String,
    pub slots: [KeySlot; SLOTS],
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A NUL-padded text field.
fn text(b: &[u8]) -> Result<&str, LuksError> {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    std::str::from_utf8(&b[..end])
        .map_err(|_| LuksError::Corrupt("a text field is not text".into()))
}

/// Writes `s` into a text field, cut to the field's length.
fn put_text(out: &mut [u8], s: &str) {
    let n = s.len().min(out.len());
    out[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// The slots' material size for a 512-bit key: 4,000 stripes, rounded up to 4 KiB, in sectors.
fn slot_sectors() -> u32 {
    let bytes = KEY_BYTES as u32 * STRIPES;
    bytes.div_ceil(4096) * 4096 / SECTOR as u32
}

impl Header {
    /// Reads a header from the first [`HEADER_LEN`] bytes of a volume, checking every field.
    pub fn parse(b: &[u8]) -> Result<Header, LuksError> {
        if b.len() < HEADER_LEN || b[..6] != MAGIC {
            return Err(LuksError::NotLuks);
        }
        let version = u16::from_be_bytes([b[6], b[7]]);
        if version != 1 {
            return Err(LuksError::Version(version));
        }
        let (cipher, mode, hash) = (text(&b[8..40])?, text(&b[40..72])?, text(&b[72..104])?);
        let key_bytes = be32(b, 108);
        if cipher != "aes"
            || mode != "xts-plain64"
            || hash != "sha256"
            || key_bytes as usize != KEY_BYTES
        {
            return Err(LuksError::Unsupported(format!(
                "{cipher} {mode} with {hash} and a {}-bit key",
                u64::from(key_bytes) * 8
            )));
        }
        let payload_offset = be32(b, 104);
        let digest_iterations = be32(b, 164);
        check_iterations(digest_iterations, "the volume key's digest")?;
        let uuid = text(&b[168..208])?.to_owned();
        let mut slots = Vec::with_capacity(SLOTS);
        let material = slot_sectors();
        for i in 0..SLOTS {
            let s = &b[208 + 48 * i..208 + 48 * (i + 1)];
            let active = match be32(s, 0) {
                ACTIVE => true,
                INACTIVE => false,
                other => {
                    return Err(LuksError::Corrupt(format!(
                        "key slot {i} is neither active nor inactive ({other:#x})"
                    )))
                }
            };
            let slot = KeySlot {
                active,
                iterations: be32(s, 4),
                salt: s[8..40].try_into().expect("32 bytes"),
                material_offset: be32(s, 40),
                stripes: be32(s, 44),
            };
            if slot.stripes != STRIPES {
                return Err(LuksError::Corrupt(format!(
                    "key slot {i} has {} stripes, not {STRIPES}",
                    slot.stripes
                )));
            }
            // The material lies between the header and the data.
            let end = u64::from(slot.material_offset) + u64::from(material);
            if slot.material_offset == 0 || end > u64::from(payload_offset) {
                return Err(LuksError::Corrupt(format!(
                    "key slot {i}'s material at sector {} overlaps the header or the data (from sector {payload_offset})",
                    slot.material_offset
                )));
            }
            if active {
                check_iterations(slot.iterations, &format!("key slot {i}"))?;
            }
            slots.push(slot);
        }
        Ok(Header {
            payload_offset,
            digest: b[112..132].try_into().expect("20 bytes"),
            digest_salt: b[132..164].try_into().expect("32 bytes"),
            digest_iterations,
            uuid,
            slots: slots.try_into().expect("eight slots"),
        })
    }

    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..6].copy_from_slice(&MAGIC);
        b[6..8].copy_from_slice(&1u16.to_be_bytes());
        put_text(&mut b[8..40], "aes");
        put_text(&mut b[40..72], "xts-plain64");
        put_text(&mut b[72..104], "sha256");
        b[104..108].copy_from_slice(&self.payload_offset.to_be_bytes());
        b[108..112].copy_from_slice(&(KEY_BYTES as u32).to_be_bytes());
        b[112..132].copy_from_slice(&self.digest);
        b[132..164].copy_from_slice(&self.digest_salt);
        b[164..168].copy_from_slice(&self.digest_iterations.to_be_bytes());
        put_text(&mut b[168..208], &self.uuid);
        for (i, slot) in self.slots.iter().enumerate() {
            let s = &mut b[208 + 48 * i..208 + 48 * (i + 1)];
            let state = if slot.active { ACTIVE } else { INACTIVE };
            s[0..4].copy_from_slice(&state.to_be_bytes());
            s[4..8].copy_from_slice(&slot.iterations.to_be_bytes());
            s[8..40].copy_from_slice(&slot.salt);
            s[40..44].copy_from_slice(&slot.material_offset.to_be_bytes());
            s[44..48].copy_from_slice(&slot.stripes.to_be_bytes());
        }
        b
    }

    /// Where the data starts, in bytes.
    pub fn payload_offset_bytes(&self) -> u64 {
        u64::from(self.payload_offset) * SECTOR as u64
    }

    /// Where key slot `slot`'s material is, in bytes from the volume's start.
    pub fn material_range(&self, slot: usize) -> Range<u64> {
        let start = u64::from(self.slots[slot].material_offset) * SECTOR as u64;
        start..start + (KEY_BYTES * STRIPES as usize) as u64
    }

    /// The active key slots.
    pub fn active_slots(&self) -> impl Iterator<Item = usize> + '_ {
        (0..SLOTS).filter(|i| self.slots[*i].active)
    }

    /// The volume key sealed in key slot `slot`, from its `material` (read at
    /// [`Header::material_range`]) and `passphrase`.
    pub fn open_slot(
        &self,
        slot: usize,
        material: &[u8],
        passphrase: &[u8],
    ) -> Result<VolumeKey, LuksError> {
        let s = &self.slots[slot];
        let len = KEY_BYTES * STRIPES as usize;
        if !s.active {
            return Err(LuksError::WrongPassphrase);
        }
        if material.len() != len {
            return Err(LuksError::Corrupt(format!(
                "key slot {slot}'s material is {} bytes, not {len}",
                material.len()
            )));
        }
        let mut derived = Zeroizing::new([0u8; KEY_BYTES]);
        pbkdf2(passphrase, &s.salt, s.iterations, &mut derived[..])?;
        let mut split = Zeroizing::new(material.to_vec());
        SectorCipher::with_key(&derived[..])?.decrypt(&mut split, 0)?;
        let key = VolumeKey::from_bytes(&af::merge(&split, KEY_BYTES))?;
        if self.holds(&key)? {
            Ok(key)
        } else {
            Err(LuksError::WrongPassphrase)
        }
    }

    /// Whether `key` is this volume's key (its digest matches).
    pub fn holds(&self, key: &VolumeKey) -> Result<bool, LuksError> {
        let mut digest = [0u8; DIGEST_LEN];
        pbkdf2(
            key.expose(),
            &self.digest_salt,
            self.digest_iterations,
            &mut digest,
        )?;
        Ok(openssl::memcmp::eq(&digest, &self.digest))
    }
}

fn check_iterations(n: u32, what: &str) -> Result<(), LuksError> {
    if n == 0 || n > MAX_ITERATIONS {
        return Err(LuksError::Corrupt(format!(
            "{what} asks for {n} PBKDF2 iterations (at most {MAX_ITERATIONS} are read)"
        )));
    }
    Ok(())
}

fn pbkdf2(secret: &[u8], salt: &[u8], iterations: u32, out: &mut [u8]) -> Result<(), LuksError> {
    openssl::pkcs5::pbkdf2_hmac(
        secret,
        salt,
        iterations as usize,
        MessageDigest::sha256(),
        out,
    )?;
    Ok(())
}

/// Unseals a volume's key with `passphrase`: reads its header and then each active key slot's
/// material through `read_at` (offset, buffer), and tries them in turn. `len` is the volume's
/// length (its data must start within it). The crate does no I/O itself: the caller reads.
pub fn unseal(
    mut read_at: impl FnMut(u64, &mut [u8]) -> std::io::Result<()>,
    len: u64,
    passphrase: &[u8],
) -> Result<(Header, VolumeKey), LuksError> {
    let mut first = [0u8; HEADER_LEN];
    read_at(0, &mut first).map_err(LuksError::Read)?;
    let header = Header::parse(&first)?;
    if len < header.payload_offset_bytes() {
        return Err(LuksError::Corrupt(format!(
            "the volume ends ({len} bytes) before its data starts ({} bytes)",
            header.payload_offset_bytes()
        )));
    }
    let slots: Vec<usize> = header.active_slots().collect();
    for slot in slots {
        let range = header.material_range(slot);
        let mut material = vec![0u8; (range.end - range.start) as usize];
        read_at(range.start, &mut material).map_err(LuksError::Read)?;
        match header.open_slot(slot, &material, passphrase) {
            Ok(key) => return Ok((header, key)),
            Err(LuksError::WrongPassphrase) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(LuksError::WrongPassphrase)
}

/// A new volume's header and the material of its key slot 0, to be written at their offsets;
/// everything else before the data is zeros.
#[derive(Debug)]
pub struct Formatted {
    pub header: Header,
    /// Key slot 0's material (encrypted), written at [`Header::material_range`]`(0)`.
    pub material: Vec<u8>,
}

/// Formats a volume for `key`, sealed in key slot 0 by `passphrase` with `iterations` of
/// PBKDF2 (at least [`MIN_ITERATIONS`]); the other slots are inactive, the data starts at 2 MiB.
pub fn format(key: &VolumeKey, passphrase: &[u8], iterations: u32) -> Result<Formatted, LuksError> {
    let iterations = iterations.clamp(MIN_ITERATIONS, MAX_ITERATIONS);
    let mut digest_salt = [0u8; SALT_LEN];
    openssl::rand::rand_bytes(&mut digest_salt)?;
    let mut digest = [0u8; DIGEST_LEN];
    pbkdf2(key.expose(), &digest_salt, MIN_ITERATIONS, &mut digest)?;
    let mut slots = Vec::with_capacity(SLOTS);
    let mut offset = SLOT_ALIGN_SECTORS;
    for _ in 0..SLOTS {
        slots.push(KeySlot {
            active: false,
            iterations: 0,
            salt: [0u8; SALT_LEN],
            material_offset: offset,
            stripes: STRIPES,
        });
        offset = (offset + slot_sectors()).div_ceil(SLOT_ALIGN_SECTORS) * SLOT_ALIGN_SECTORS;
    }
    let mut salt = [0u8; SALT_LEN];
    openssl::rand::rand_bytes(&mut salt)?;
    slots[0].active = true;
    slots[0].iterations = iterations;
    slots[0].salt = salt;
    let mut derived = Zeroizing::new([0u8; KEY_BYTES]);
    pbkdf2(passphrase, &salt, iterations, &mut derived[..])?;
    let mut split = af::split(key.expose(), STRIPES as usize)?;
    SectorCipher::with_key(&derived[..])?.encrypt(&mut split, 0)?;
    Ok(Formatted {
        header: Header {
            payload_offset: PAYLOAD_OFFSET_SECTORS,
            digest,
            digest_salt,
            digest_iterations: MIN_ITERATIONS,
            uuid: uuid()?,
            slots: slots.try_into().expect("eight slots"),
        },
        material: split.to_vec(),
    })
}

/// A random (version 4) UUID in its text form.
fn uuid() -> Result<String, LuksError> {
    let mut b = [0u8; 16];
    openssl::rand::rand_bytes(&mut b)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn formatted() -> (VolumeKey, Formatted) {
        let key = VolumeKey::generate().unwrap();
        let f = format(&key, b"correct horse", 1000).unwrap();
        (key, f)
    }

    #[test]
    fn a_formatted_header_reads_back_and_opens_with_its_passphrase_only() {
        let (key, f) = formatted();
        let bytes = f.header.encode();
        let h = Header::parse(&bytes).unwrap();
        assert_eq!(h, f.header);
        assert_eq!(h.payload_offset_bytes(), 2 << 20);
        assert_eq!(h.active_slots().collect::<Vec<_>>(), vec![0]);
        // cryptsetup's layout for a 512-bit key: slots from sector 8, 504 sectors apart.
        let offsets: Vec<u32> = h.slots.iter().map(|s| s.material_offset).collect();
        assert_eq!(offsets, vec![8, 512, 1016, 1520, 2024, 2528, 3032, 3536]);
        assert_eq!(
            f.material.len() as u64,
            h.material_range(0).end - h.material_range(0).start
        );
        let opened = h.open_slot(0, &f.material, b"correct horse").unwrap();
        assert_eq!(opened.expose(), key.expose());
        assert!(matches!(
            h.open_slot(0, &f.material, b"wrong horse"),
            Err(LuksError::WrongPassphrase)
        ));
        assert!(matches!(
            h.open_slot(1, &f.material, b"correct horse"),
            Err(LuksError::WrongPassphrase)
        ));
        assert!(!h.holds(&VolumeKey::generate().unwrap()).unwrap());
    }

    #[test]
    fn damaged_or_foreign_headers_are_refused_with_what_is_wrong() {
        let (_, f) = formatted();
        let good = f.header.encode();
        let damaged = |at: usize, value: &[u8]| {
            let mut b = good;
            b[at..at + value.len()].copy_from_slice(value);
            Header::parse(&b)
        };
        assert!(matches!(
            Header::parse(&good[..100]),
            Err(LuksError::NotLuks)
        ));
        assert!(matches!(damaged(0, b"XUKS"), Err(LuksError::NotLuks)));
        assert!(matches!(damaged(6, &[0, 2]), Err(LuksError::Version(2))));
        assert!(matches!(
            damaged(40, b"cbc-essiv:sha256\0"),
            Err(LuksError::Unsupported(_))
        ));
        assert!(matches!(
            damaged(108, &32u32.to_be_bytes()),
            Err(LuksError::Unsupported(_))
        ));
        // A slot's material over the data, too many stripes, an absurd iteration count.
        assert!(matches!(
            damaged(208 + 40, &4095u32.to_be_bytes()),
            Err(LuksError::Corrupt(_))
        ));
        assert!(matches!(
            damaged(208 + 44, &4001u32.to_be_bytes()),
            Err(LuksError::Corrupt(_))
        ));
        assert!(matches!(
            damaged(208 + 4, &u32::MAX.to_be_bytes()),
            Err(LuksError::Corrupt(_))
        ));
        assert!(matches!(
            damaged(164, &0u32.to_be_bytes()),
            Err(LuksError::Corrupt(_))
        ));
        assert!(matches!(
            damaged(208, &7u32.to_be_bytes()),
            Err(LuksError::Corrupt(_))
        ));
        // Any bytes at all: an error, never a panic.
        let mut b = good;
        for i in 0..HEADER_LEN {
            b[i] = b[i].wrapping_mul(31).wrapping_add(i as u8);
            let _ = Header::parse(&b);
        }
    }

    /// `unseal` over an in-memory volume: the key with the passphrase, and what each failure is.
    #[test]
    fn unseal_reads_the_header_and_the_slots_and_says_what_failed() {
        let (key, f) = formatted();
        let mut volume = vec![0u8; f.header.payload_offset_bytes() as usize + 4096];
        volume[..HEADER_LEN].copy_from_slice(&f.header.encode());
        let at = f.header.material_range(0).start as usize;
        volume[at..at + f.material.len()].copy_from_slice(&f.material);
        let len = volume.len() as u64;
        let read = |at: u64, buf: &mut [u8]| -> std::io::Result<()> {
            let at = at as usize;
            buf.copy_from_slice(&volume[at..at + buf.len()]);
            Ok(())
        };
        let (header, opened) = unseal(read, len, b"correct horse").unwrap();
        assert_eq!(header, f.header);
        assert_eq!(opened.expose(), key.expose());
        assert!(matches!(
            unseal(read, len, b"wrong horse"),
            Err(LuksError::WrongPassphrase)
        ));
        assert!(matches!(
            unseal(read, 4096, b"correct horse"),
            Err(LuksError::Corrupt(_))
        ));
        let failing = |_: u64, _: &mut [u8]| -> std::io::Result<()> {
            Err(std::io::Error::other("disk gone"))
        };
        assert!(matches!(
            unseal(failing, len, b"correct horse"),
            Err(LuksError::Read(_))
        ));
    }

    #[test]
    fn material_that_does_not_fit_its_slot_is_refused() {
        let (_, f) = formatted();
        let h = Header::parse(&f.header.encode()).unwrap();
        assert!(matches!(
            h.open_slot(0, &f.material[..1000], b"correct horse"),
            Err(LuksError::Corrupt(_))
        ));
    }
}
