//! Hash maps keyed by integers the engine makes itself (task ids, table offsets): nothing
//! hostile chooses the keys, so a multiply-and-fold hash does instead of SipHash, which cost
//! more than the lookups it served on the request path.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

pub type IntMap<K, V> = HashMap<K, V, BuildHasherDefault<IntHasher>>;

#[derive(Default)]
pub struct IntHasher(u64);

impl Hasher for IntHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, v: u64) {
        // odd multiplier (2^64 / golden ratio): every input bit reaches the high bits
        self.0 = (self.0 ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }

    fn finish(&self) -> u64 {
        // the table picks buckets by the low bits: fold the well-mixed high half into them
        self.0 ^ (self.0 >> 32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_keys_spread_over_the_low_bits() {
        let buckets: std::collections::HashSet<u64> = (0..64u64)
            .map(|i| {
                let mut h = IntHasher::default();
                h.write_u64(i << 16);
                h.finish() & 63
            })
            .collect();
        assert!(buckets.len() > 32, "{} buckets of 64", buckets.len());
    }
}
