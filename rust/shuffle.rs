//! numpy's `Generator(PCG64).shuffle` of a 1-D array, bit for bit, with its memory reads overlapped.
//!
//! The samplers' orders are defined as numpy permutations (docs/mixtures.md), so every rank and every
//! release agree on them. numpy's Fisher–Yates swaps each element with a random one: over 8.9M int64
//! (71 MB) nearly every swap misses the cache and waits on memory, one miss at a time (0.54 s for a
//! permutation of 10M here). The random draws do not depend on the data, so this draws each swap's
//! partner 64 swaps ahead and prefetches it: the same swaps in the same order, with the memory reads
//! of the next 64 swaps in flight together.

/// numpy's PCG64 (XSL-RR 128/64) with its 32-bit buffer: the state `Generator.bit_generator.state`
/// describes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NumpyPcg64 {
    pub state: u128,
    pub inc: u128,
    /// The upper half of the last 64-bit output, kept for the next 32-bit draw.
    pub has_uint32: bool,
    pub uinteger: u32,
}

const MULTIPLIER: u128 = (2_549_297_995_355_413_924u128 << 64) + 4_865_540_595_714_422_341;

impl NumpyPcg64 {
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_mul(MULTIPLIER).wrapping_add(self.inc);
        let xored = ((self.state >> 64) as u64) ^ (self.state as u64);
        xored.rotate_right((self.state >> 122) as u32)
    }

    fn next_u32(&mut self) -> u32 {
        if self.has_uint32 {
            self.has_uint32 = false;
            return self.uinteger;
        }
        let next = self.next_u64();
        self.has_uint32 = true;
        self.uinteger = (next >> 32) as u32;
        next as u32
    }

    /// numpy's `random_interval`: uniform in [0, max] by masked rejection.
    fn interval(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mask = u64::MAX >> max.leading_zeros();
        if max <= u64::from(u32::MAX) {
            loop {
                let value = u64::from(self.next_u32()) & mask;
                if value <= max {
                    return value;
                }
            }
        }
        loop {
            let value = self.next_u64() & mask;
            if value <= max {
                return value;
            }
        }
    }
}

/// How many swap partners are drawn (and their memory prefetched) ahead of the swap that uses them.
const AHEAD: usize = 64;

/// Shuffles `data` exactly as numpy's `Generator.shuffle` does with this generator, and leaves the
/// generator where numpy would.
pub fn shuffle<T: Copy>(rng: &mut NumpyPcg64, data: &mut [T]) {
    // numpy: for i in reversed(range(1, n)): swap data[i] with data[interval(i)]. Swap s (of n - 1)
    // is at i = n - 1 - s; its partner is drawn AHEAD swaps earlier, in the same order as numpy draws.
    let swaps = data.len().saturating_sub(1);
    let mut partners = [0usize; AHEAD];
    let draw = |s: usize, rng: &mut NumpyPcg64, data: &[T]| {
        let j = rng.interval((swaps - s) as u64) as usize;
        prefetch(&data[j]);
        j
    };
    for (s, partner) in partners.iter_mut().enumerate().take(swaps) {
        *partner = draw(s, rng, data);
    }
    for s in 0..swaps {
        let j = partners[s % AHEAD];
        if s + AHEAD < swaps {
            partners[s % AHEAD] = draw(s + AHEAD, rng, data);
        }
        data.swap(swaps - s, j);
    }
}

#[inline(always)]
fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint to the cache; it never faults, and `value` is a valid reference.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((value as *const T).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// numpy 2.x: `g = np.random.Generator(np.random.PCG64(42)); g.bit_generator.state`, then
    /// `g.permutation(10)` and the state after it.
    fn seeded_42() -> NumpyPcg64 {
        NumpyPcg64 {
            state: 274_674_114_334_540_486_603_088_602_300_644_985_544,
            inc: 332_724_090_758_049_132_448_979_897_138_935_081_983,
            has_uint32: false,
            uinteger: 0,
        }
    }

    #[test]
    fn matches_numpy_permutation() {
        let mut rng = seeded_42();
        let mut data: Vec<i64> = (0..10).collect();
        shuffle(&mut rng, &mut data);
        assert_eq!(data, [5, 6, 0, 7, 3, 2, 4, 9, 1, 8]);
        let after = NumpyPcg64 {
            state: 60_251_780_358_759_318_666_854_268_857_835_938_822,
            has_uint32: false,
            uinteger: 4_190_266_093,
            ..seeded_42()
        };
        assert_eq!(rng, after);
    }

    #[test]
    fn short_inputs_draw_nothing() {
        for n in 0..2 {
            let mut rng = seeded_42();
            let mut data: Vec<i64> = (0..n).collect();
            shuffle(&mut rng, &mut data);
            assert_eq!(rng, seeded_42());
            assert_eq!(data, (0..n).collect::<Vec<_>>());
        }
    }

    #[test]
    fn is_a_permutation_across_block_edges() {
        for n in [2, 63, 64, 65, 129, 1000] {
            let mut rng = seeded_42();
            let mut data: Vec<i64> = (0..n).collect();
            shuffle(&mut rng, &mut data);
            let mut sorted = data.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..n).collect::<Vec<_>>());
            assert_ne!(data, sorted, "n = {n}");
        }
    }
}
