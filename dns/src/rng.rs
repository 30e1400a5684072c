//! SplitMix64: a tiny, seedable generator for transaction ids.
//!
//! It is not a CSPRNG. Against an off-path spoofer the 16-bit id is only one
//! of the checks (the answer must also come from the upstream's address and
//! echo the question); the seed comes from the engine, which should draw it
//! from the OS once at start-up.

/// SplitMix64 state (Steele, Lea, Flood 2014; the `java.util.SplittableRandom`
/// mixer). Every seed, including 0, gives a full-period sequence.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) const fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// 16 random bits, taken from the high half (the best mixed).
    pub(crate) fn next_u16(&mut self) -> u16 {
        (self.next_u64() >> 48) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_values() {
        // First outputs for seed 1234567 from the reference C implementation.
        let mut r = SplitMix64::new(1_234_567);
        assert_eq!(r.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(r.next_u64(), 3_203_168_211_198_807_973);
    }

    #[test]
    fn deterministic_per_seed() {
        let a: Vec<u16> = {
            let mut r = SplitMix64::new(7);
            (0..8).map(|_| r.next_u16()).collect()
        };
        let mut r = SplitMix64::new(7);
        let b: Vec<u16> = (0..8).map(|_| r.next_u16()).collect();
        assert_eq!(a, b);
        let mut r = SplitMix64::new(8);
        let c: Vec<u16> = (0..8).map(|_| r.next_u16()).collect();
        assert_ne!(a, c);
    }
}
