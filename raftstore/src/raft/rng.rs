//! A tiny deterministic PRNG (splitmix64) for randomized election timeouts.
//!
//! Eight bytes of state per group: the house rules forbid a `rand` RNG inside
//! the consensus core, and a simulator must be able to fix every node's
//! randomness through [`Config::rng_seed`](super::Config::rng_seed).

/// Additive constant of splitmix64 (the golden ratio in 64-bit fixed point).
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
/// First multiplier of the splitmix64 output mix.
const MIX_MUL_1: u64 = 0xBF58_476D_1CE4_E5B9;
/// Second multiplier of the splitmix64 output mix.
const MIX_MUL_2: u64 = 0x94D0_49BB_1331_11EB;

/// A splitmix64 generator: deterministic, 8 bytes, not cryptographic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// Creates a generator from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// Returns the next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(MIX_MUL_1);
        z = (z ^ (z >> 27)).wrapping_mul(MIX_MUL_2);
        z ^ (z >> 31)
    }

    /// Returns a value in `[low, high)`.
    ///
    /// # Panics
    ///
    /// Panics if `low >= high` (an internal invariant: callers pass a
    /// validated config's election range).
    pub fn gen_range(&mut self, low: usize, high: usize) -> usize {
        assert!(low < high, "empty range [{low}, {high})");
        let span = (high - low) as u64;
        low + (self.next_u64() % span) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// checklist: election-1 (the randomness is seedable and deterministic)
    #[test]
    fn same_seed_same_sequence() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        let mut c = SplitMix64::new(8);
        assert_ne!(SplitMix64::new(7).next_u64(), c.next_u64());
    }

    /// checklist: election-1 (values stay in range and cover it)
    #[test]
    fn gen_range_bounds() {
        let mut r = SplitMix64::new(1);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            let v = r.gen_range(10, 20);
            assert!((10..20).contains(&v));
            seen[v - 10] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }
}
