//! AES-256-XTS on one core: the data path's cipher (`tresor_luks::SectorCipher`: OpenSSL's
//! AES-ECB over a batch of sectors between the XTS masks), OpenSSL's XTS through the `openssl`
//! crate (one EVP context, its IV set again for each sector) and RustCrypto's `aes` with
//! `xts-mode`, each encrypting and decrypting a buffer in place in
//! LUKS1's 512-byte sectors and in 4,096-byte ones, with the tweak as LUKS's `plain64` makes
//! it (the sector's number, little-endian). Beside them, in the same run, `openssl speed` on the
//! same sizes: what the issue compares against. Prints one JSON line of GB/s (10^9 bytes).
//!
//! `cipher-bench [--mib N] [--seconds S]`

use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// The buffer each pass goes over, in MiB.
    #[arg(long, default_value_t = 64)]
    mib: usize,
    /// How long each case runs (its best pass counts).
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
}

/// The two halves of an XTS key must differ (OpenSSL refuses equal ones).
fn key() -> [u8; 64] {
    let mut key = [0u8; 64];
    openssl::rand::rand_bytes(&mut key).expect("random key");
    key
}

/// One direction of AES-256-XTS over whole sectors, in place.
trait Xts {
    fn apply(&mut self, data: &mut [u8], sector_size: usize, first_sector: u64);
}

/// OpenSSL's XTS with its IV set again per sector (`tresor_luks::PerSectorXts`).
struct OpenSsl(tresor_luks::PerSectorXts);

impl OpenSsl {
    fn new(key: &[u8; 64], encrypt: bool) -> OpenSsl {
        let key = tresor_luks::VolumeKey::from_bytes(key).expect("key");
        OpenSsl(tresor_luks::PerSectorXts::new(&key, encrypt).expect("AES-256-XTS"))
    }
}

impl Xts for OpenSsl {
    fn apply(&mut self, data: &mut [u8], sector_size: usize, first_sector: u64) {
        self.0
            .apply(data, sector_size, first_sector)
            .expect("sectors");
    }
}

/// The data path's cipher (`tresor_luks::SectorCipher`): AES-ECB by OpenSSL over a batch of
/// 512-byte sectors between the XTS masks.
struct Batched {
    cipher: tresor_luks::SectorCipher,
    encrypt: bool,
}

impl Batched {
    fn new(key: &[u8; 64], encrypt: bool) -> Batched {
        let key = tresor_luks::VolumeKey::from_bytes(key).expect("key");
        Batched {
            cipher: tresor_luks::SectorCipher::new(&key).expect("cipher"),
            encrypt,
        }
    }
}

impl Xts for Batched {
    fn apply(&mut self, data: &mut [u8], sector_size: usize, first_sector: u64) {
        assert_eq!(sector_size, tresor_luks::SECTOR);
        if self.encrypt {
            self.cipher.encrypt(data, first_sector)
        } else {
            self.cipher.decrypt(data, first_sector)
        }
        .expect("sectors");
    }
}

struct RustCrypto {
    xts: xts_mode::Xts128<aes::Aes256>,
    encrypt: bool,
}

impl RustCrypto {
    fn new(key: &[u8; 64], encrypt: bool) -> RustCrypto {
        use aes::cipher::KeyInit;
        let half = |k: &[u8]| aes::Aes256::new_from_slice(k).expect("a 256-bit key");
        RustCrypto {
            xts: xts_mode::Xts128::new(half(&key[..32]), half(&key[32..])),
            encrypt,
        }
    }
}

impl Xts for RustCrypto {
    fn apply(&mut self, data: &mut [u8], sector_size: usize, first_sector: u64) {
        let first = u128::from(first_sector);
        if self.encrypt {
            self.xts
                .encrypt_area(data, sector_size, first, xts_mode::get_tweak_default)
        } else {
            self.xts
                .decrypt_area(data, sector_size, first, xts_mode::get_tweak_default)
        }
    }
}

/// The best of the passes over `data` that fit in `time`, in GB/s.
fn measure(xts: &mut dyn Xts, data: &mut [u8], sector_size: usize, time: Duration) -> f64 {
    let started = Instant::now();
    let mut best = f64::MAX;
    while started.elapsed() < time || best == f64::MAX {
        let t = Instant::now();
        xts.apply(data, sector_size, 0);
        best = best.min(t.elapsed().as_secs_f64());
    }
    data.len() as f64 / best / 1e9
}

/// `openssl speed` for AES-256-XTS on blocks of `bytes`, in GB/s (it prints thousands of bytes
/// per second).
fn openssl_speed(bytes: usize, seconds: f64) -> Option<f64> {
    let out = Command::new("openssl")
        .args([
            "speed",
            "-evp",
            "aes-256-xts",
            "-bytes",
            &bytes.to_string(),
            "-seconds",
            &format!("{}", seconds.ceil() as u64),
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rev().find(|l| l.starts_with("AES-256-XTS"))?;
    let k: f64 = line
        .split_whitespace()
        .last()?
        .trim_end_matches('k')
        .parse()
        .ok()?;
    Some(k * 1000.0 / 1e9)
}

fn main() {
    let args = Args::parse();
    let time = Duration::from_secs_f64(args.seconds);
    let key = key();
    let mut data = vec![0u8; args.mib << 20];
    openssl::rand::rand_bytes(&mut data).expect("random data");
    let mut report = serde_json::Map::new();
    for sector in [512usize, 4096] {
        for encrypt in [true, false] {
            let direction = if encrypt { "encrypt" } else { "decrypt" };
            let gbs = measure(&mut OpenSsl::new(&key, encrypt), &mut data, sector, time);
            report.insert(format!("opensslCrate{sector}{direction}GBs"), round(gbs));
            if sector == tresor_luks::SECTOR {
                let gbs = measure(&mut Batched::new(&key, encrypt), &mut data, sector, time);
                report.insert(format!("batched{sector}{direction}GBs"), round(gbs));
            }
            let gbs = measure(&mut RustCrypto::new(&key, encrypt), &mut data, sector, time);
            report.insert(format!("rustCrypto{sector}{direction}GBs"), round(gbs));
        }
        let speed = openssl_speed(sector, args.seconds).map(round);
        report.insert(format!("opensslSpeed{sector}GBs"), speed.into());
    }
    report.insert("bufferMiB".into(), args.mib.into());
    println!("{}", serde_json::Value::Object(report));
}

fn round(x: f64) -> serde_json::Value {
    ((x * 100.0).round() / 100.0).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both implementations write the same ciphertext for the same key and sectors, and each
    /// reads back what it wrote: the benchmark compares the same work.
    #[test]
    fn both_ciphers_agree_and_round_trip() {
        let key = key();
        let mut plain = vec![0u8; 64 << 10];
        openssl::rand::rand_bytes(&mut plain).unwrap();
        for sector in [512, 4096] {
            let (mut a, mut b) = (plain.clone(), plain.clone());
            OpenSsl::new(&key, true).apply(&mut a, sector, 7);
            RustCrypto::new(&key, true).apply(&mut b, sector, 7);
            assert_ne!(a, plain);
            assert_eq!(a, b, "{sector}-byte sectors");
            // Each sector's tweak differs: equal plaintext sectors do not look alike.
            let mut same = vec![0u8; 2 * sector];
            OpenSsl::new(&key, true).apply(&mut same, sector, 0);
            assert_ne!(same[..sector], same[sector..]);
            OpenSsl::new(&key, false).apply(&mut a, sector, 7);
            RustCrypto::new(&key, false).apply(&mut b, sector, 7);
            assert_eq!(a, plain);
            assert_eq!(b, plain);
        }
    }
}
