//! The speculative first pass over one chunk of a JSON array: where its top-level record separators
//! could be, under both answers to "does this chunk start inside a string?".
//!
//! Works on 64-byte blocks with bitmasks (simdjson stage 1, Langdale & Lemire 2019): escaped
//! characters from odd backslash runs, the in-string mask as a prefix XOR of unescaped quotes, then
//! the brackets and commas outside strings. Flipping the starting string state flips the whole
//! in-string mask, so one pass yields both hypotheses. Nothing here needs to be right on invalid
//! input: the reading pass verifies every guess.

/// Deepest relative depth at which separators are looked for: deeper records are rejected anyway.
const MAX_TRACKED_DEPTH: usize = 256;

/// Backslashes before a chunk looked at to know whether its first byte is escaped. A longer run
/// only makes the guess wrong, which the verification catches (the scan then reads sequentially).
const BACKSLASH_LOOKBACK: usize = 4096;

/// One chunk under one hypothesis about its starting string state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hypothesis {
    /// Net change of bracket depth over the chunk.
    pub delta: i64,
    /// `first_comma[k]`: offset of the first comma at relative depth `-k` (outside strings).
    pub first_comma: Vec<Option<usize>>,
    /// Whether the chunk ends inside a string.
    pub ends_in_string: bool,
}

impl Hypothesis {
    fn structural(&mut self, kind: u8, pos: usize, depth: &mut i64) {
        match kind {
            b'[' | b'{' => *depth += 1,
            b']' | b'}' => *depth -= 1,
            b',' if *depth <= 0 && ((-*depth) as usize) < MAX_TRACKED_DEPTH => {
                let k = (-*depth) as usize;
                if self.first_comma.len() <= k {
                    self.first_comma.resize(k + 1, None);
                }
                self.first_comma[k].get_or_insert(pos);
            }
            _ => {}
        }
    }

    /// The first comma at absolute depth 1 for a chunk that starts at absolute depth `depth`.
    pub fn separator(&self, depth: i64) -> Option<usize> {
        if depth < 1 {
            return None;
        }
        self.first_comma
            .get((depth - 1) as usize)
            .copied()
            .flatten()
    }
}

/// Both hypotheses for one chunk: index 0 starts outside a string, index 1 inside.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkShape {
    pub hyp: [Hypothesis; 2],
}

#[inline]
fn prefix_xor(mut x: u64) -> u64 {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    x
}

const EVEN_BITS: u64 = 0x5555_5555_5555_5555;

/// Bits of characters escaped by a backslash (simdjson's branchless odd-run detection).
/// `prev_escaped` carries whether the first byte of the next block is escaped.
#[inline]
fn escaped_bits(backslash: u64, prev_escaped: &mut u64) -> u64 {
    let backslash = backslash & !*prev_escaped;
    let follows_escape = (backslash << 1) | *prev_escaped;
    let odd_sequence_starts = backslash & !EVEN_BITS & !follows_escape;
    let (seq_on_even, overflow) = odd_sequence_starts.overflowing_add(backslash);
    *prev_escaped = overflow as u64;
    let invert = seq_on_even << 1;
    (EVEN_BITS ^ invert) & follows_escape
}

/// Masks of one 64-byte block: quotes, backslashes, and brackets/commas.
struct BlockMasks {
    quote: u64,
    backslash: u64,
    structural: u64,
}

/// SSE2 (the x86_64 baseline) or scalar masks of a block.
#[inline]
fn block_masks(block: &[u8; 64]) -> BlockMasks {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: SSE2 is part of the x86_64 baseline; each load reads 16 bytes inside `block`.
        unsafe {
            use std::arch::x86_64::*;
            let eq = |v: __m128i, c: u8| _mm_cmpeq_epi8(v, _mm_set1_epi8(c as i8));
            let (mut quote, mut backslash, mut structural) = (0u64, 0u64, 0u64);
            for k in 0..4 {
                let v = _mm_loadu_si128(block.as_ptr().add(16 * k) as *const __m128i);
                let brackets = _mm_or_si128(
                    _mm_or_si128(eq(v, b'['), eq(v, b']')),
                    _mm_or_si128(eq(v, b'{'), eq(v, b'}')),
                );
                let s = _mm_or_si128(brackets, eq(v, b','));
                quote |= (_mm_movemask_epi8(eq(v, b'"')) as u16 as u64) << (16 * k);
                backslash |= (_mm_movemask_epi8(eq(v, b'\\')) as u16 as u64) << (16 * k);
                structural |= (_mm_movemask_epi8(s) as u16 as u64) << (16 * k);
            }
            return BlockMasks {
                quote,
                backslash,
                structural,
            };
        }
    }
    #[allow(unreachable_code)]
    {
        let (mut quote, mut backslash, mut structural) = (0u64, 0u64, 0u64);
        for (k, &b) in block.iter().enumerate() {
            quote |= ((b == b'"') as u64) << k;
            backslash |= ((b == b'\\') as u64) << k;
            structural |= (matches!(b, b'[' | b']' | b'{' | b'}' | b',') as u64) << k;
        }
        BlockMasks {
            quote,
            backslash,
            structural,
        }
    }
}

/// The same masks with AVX-512BW: each comparison of the whole block yields its 64-bit mask directly.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
fn block_masks_avx512(block: &[u8; 64]) -> BlockMasks {
    use std::arch::x86_64::*;
    // SAFETY: the load reads exactly the 64 bytes of `block`; the caller runs on a CPU with AVX-512BW.
    unsafe {
        let v = _mm512_loadu_si512(block.as_ptr() as *const __m512i);
        let eq = |c: u8| _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8(c as i8));
        // '[' 0x5B / '{' 0x7B and ']' 0x5D / '}' 0x7D differ only in bit 0x20.
        let folded = _mm512_or_si512(v, _mm512_set1_epi8(0x20));
        let brackets = _mm512_cmpeq_epi8_mask(folded, _mm512_set1_epi8(b'{' as i8))
            | _mm512_cmpeq_epi8_mask(folded, _mm512_set1_epi8(b'}' as i8));
        BlockMasks {
            quote: eq(b'"'),
            backslash: eq(b'\\'),
            structural: brackets | eq(b','),
        }
    }
}

/// Summarises `data[start..end]` under both starting string states, with the widest block masks the
/// CPU offers (checked at run time: one build serves every x86_64 machine).
pub fn chunk_shape(data: &[u8], start: usize, end: usize) -> ChunkShape {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512bw") {
        // SAFETY: the CPU has AVX-512BW (and so AVX-512F), checked just above.
        return unsafe { chunk_shape_avx512(data, start, end) };
    }
    shape_with(data, start, end, block_masks)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,popcnt,bmi1")]
fn chunk_shape_avx512(data: &[u8], start: usize, end: usize) -> ChunkShape {
    shape_with(data, start, end, |block| block_masks_avx512(block))
}

/// The pass itself, inlined into each entry point so that it is compiled with its CPU features.
#[inline(always)]
fn shape_with(
    data: &[u8],
    start: usize,
    end: usize,
    masks: impl Fn(&[u8; 64]) -> BlockMasks,
) -> ChunkShape {
    let mut shape = ChunkShape::default();
    let run = data[start.saturating_sub(BACKSLASH_LOOKBACK)..start]
        .iter()
        .rev()
        .take_while(|&&b| b == b'\\')
        .count();
    let mut prev_escaped = (run % 2) as u64;
    let mut in_string_carry = 0u64; // all ones when the block starts inside a string (hypothesis 0)
    let mut depth = [0i64; 2];
    let mut block;
    let mut pos = start;
    while pos < end {
        let n = (end - pos).min(64);
        let bytes: &[u8; 64] = if n == 64 {
            data[pos..pos + 64].try_into().unwrap()
        } else {
            block = [b' '; 64];
            block[..n].copy_from_slice(&data[pos..end]);
            &block
        };
        let m = masks(bytes);
        let quotes = m.quote & !escaped_bits(m.backslash, &mut prev_escaped);
        let in_string = prefix_xor(quotes) ^ in_string_carry;
        in_string_carry = ((in_string as i64) >> 63) as u64;
        if m.structural != 0 {
            for (h, mut bits) in [
                (0, m.structural & !in_string),
                (1, m.structural & in_string),
            ] {
                while bits != 0 {
                    let k = bits.trailing_zeros() as usize;
                    shape.hyp[h].structural(bytes[k], pos + k, &mut depth[h]);
                    bits &= bits - 1;
                }
            }
        }
        pos += n;
    }
    for (h, (hyp, delta)) in shape.hyp.iter_mut().zip(depth).enumerate() {
        hyp.delta = delta;
        hyp.ends_in_string = (in_string_carry != 0) ^ (h == 1);
    }
    shape
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_found_across_runs() {
        let mut prev = 0;
        // bytes: \ \ \ "  => the quote (bit 3) is escaped; \ \ " => bit 6 is not
        let backslash = 0b0011_0111;
        let escaped = escaped_bits(backslash, &mut prev);
        assert_eq!(escaped & (1 << 3), 1 << 3);
        assert_eq!(escaped & (1 << 6), 0);
    }

    #[test]
    fn every_mask_width_gives_the_same_shape() {
        // Pseudo-random documents over JSON's structural characters, escapes and a few letters.
        let alphabet = b"[]{},:\\\" ab1";
        let mut random = crate::test_support::xorshift(0x2545_F491_4F6C_DD1D);
        let mut next = || alphabet[(random() % alphabet.len() as u64) as usize];
        for len in [0usize, 1, 63, 64, 65, 127, 200, 1000] {
            for _ in 0..50 {
                let doc: Vec<u8> = (0..len).map(|_| next()).collect();
                for start in [0, len / 3] {
                    // On this CPU `chunk_shape` may take the AVX-512 path; `shape_with` + SSE2 is the base.
                    let base = shape_with(&doc, start, len, block_masks);
                    assert_eq!(chunk_shape(&doc, start, len), base);
                }
            }
        }
    }

    #[test]
    fn both_hypotheses_see_the_right_commas() {
        let doc = br#"a", [1, "x,y"], {"k": ","}, 2"#;
        let shape = chunk_shape(doc, 0, doc.len());
        // Starting inside a string: `a"` closes it; top-level commas at 2 and 26 at relative depth 0.
        assert_eq!(shape.hyp[1].first_comma[0], Some(2));
        assert_eq!(shape.hyp[1].delta, 0);
        assert!(!shape.hyp[1].ends_in_string);
        assert!(shape.hyp[0].ends_in_string);
    }
}
