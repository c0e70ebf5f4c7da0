//! Helpers for robustness tests in this and other crates.

/// A small deterministic generator, so that a failure can be replayed.
#[derive(Debug)]
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Applies one to four random mutations: bit flips, cut-offs, forged lengths, inserted bytes,
/// changed types.
pub fn mutate(rng: &mut XorShift, input: &[u8]) -> Vec<u8> {
    let mut m = input.to_vec();
    for _ in 0..=rng.below(3) {
        match rng.below(6) {
            0 if !m.is_empty() => {
                let i = rng.below(m.len());
                m[i] ^= 1 << rng.below(8);
            }
            1 => m.truncate(rng.below(m.len() + 1)),
            2 if m.len() >= 8 => {
                // Forge a length field of some item header (they sit at multiples of 8 in most
                // messages).
                let i = rng.below(m.len() / 8) * 8 + 4;
                if i + 4 <= m.len() {
                    let v = match rng.below(4) {
                        0 => 0xFFFF_FFFFu32,
                        1 => 0x7FFF_FFF8,
                        2 => rng.next_u64() as u32,
                        _ => rng.below(64) as u32,
                    };
                    m[i..i + 4].copy_from_slice(&v.to_be_bytes());
                }
            }
            3 => {
                let i = rng.below(m.len() + 1);
                let n = rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                m.splice(i..i, bytes);
            }
            4 if !m.is_empty() => {
                let i = rng.below(m.len());
                m[i] = rng.next_u64() as u8;
            }
            _ => {
                // Change an item type byte.
                if m.len() >= 8 {
                    let i = rng.below(m.len() / 8) * 8 + 3;
                    if i < m.len() {
                        m[i] = rng.below(16) as u8;
                    }
                }
            }
        }
    }
    m
}
