//! FUSION's length grouping (`get_length_grouped_indices` after its permutation): every megabatch
//! sorted longest first and dealt into even chunks, rows in parallel. The permutations themselves are
//! drawn in Python with numpy, so the order stays FUSION's for a given seed; this is the part that costs
//! (a sort and a greedy split per megabatch, 10M samples in a stage).

use rayon::prelude::*;

/// `perm` (a permutation of the positions of `size`) cut into megabatches of `megabatch` samples,
/// each sorted by size, longest first (ties in permutation order), then split by FUSION's
/// `split_to_even_chunks` into `chunks` chunks written one after another, each in joining order. A
/// last, shorter megabatch whose length `chunks` does not divide is dealt round-robin instead, as
/// FUSION does. Sizes compare as magnitudes (`unsigned_abs`), so no length is too large.
///
/// Writes the order into `out` (as long as `perm`). Returns `None` when a position in `perm` is outside
/// `size` or `out` has another length.
pub fn length_grouped(
    perm: &[i64],
    size: &[i64],
    megabatch: usize,
    chunks: usize,
    out: &mut [i64],
) -> Option<()> {
    if out.len() != perm.len() {
        return None;
    }
    // Reading sizes in permutation order is a random gather that misses the cache on millions of
    // samples; a copy of the sizes as u32 (when they fit, as word counts do) halves the memory it
    // touches.
    let compact: Option<Vec<u32>> = size
        .par_iter()
        .map(|s| u32::try_from(s.unsigned_abs()).ok())
        .collect();
    match compact {
        Some(compact) => grouped_with(perm, &compact, megabatch, chunks, out),
        None => {
            let wide: Vec<u64> = size.par_iter().map(|s| s.unsigned_abs()).collect();
            grouped_with(perm, &wide, megabatch, chunks, out)
        }
    }
}

fn grouped_with<S: Size>(
    perm: &[i64],
    size: &[S],
    megabatch: usize,
    chunks: usize,
    out: &mut [i64],
) -> Option<()> {
    let megabatch = megabatch.max(1);
    let chunks = chunks.max(1);
    out.par_chunks_mut(megabatch)
        .zip(perm.par_chunks(megabatch))
        .try_for_each_init(Vec::new, |sorted, (out, row)| {
            sorted.clear();
            for (k, &p) in row.iter().enumerate() {
                sorted.push((*size.get(usize::try_from(p).ok()?)?, k, p));
            }
            // Equal sizes keep their permutation order, like Python's stable `sorted`: the position in
            // the row makes keys unique, so the faster unstable sort gives that same order.
            sorted.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            if row.len() % chunks != 0 {
                round_robin(sorted, chunks, out);
            } else {
                even_chunks(sorted, chunks, out);
            }
            Some(())
        })
}

/// A sample size, and a total of sizes wide enough that a chunk's sum never overflows.
trait Size: Copy + Ord + Send + Sync + Into<Self::Total> {
    type Total: Copy + Ord + Default + std::ops::AddAssign;
}

impl Size for u32 {
    type Total = u64; // at most 2^32 samples of under 2^32 each
}

impl Size for u64 {
    type Total = u128;
}

/// `[ids[c::chunks] for c in range(chunks)]`, concatenated.
fn round_robin<S>(sorted: &[(S, usize, i64)], chunks: usize, out: &mut [i64]) {
    let dealt = (0..chunks).flat_map(|c| sorted.iter().skip(c).step_by(chunks));
    for (slot, &(_, _, id)) in out.iter_mut().zip(dealt) {
        *slot = id;
    }
}

/// FUSION's greedy split: in order, each sample joins the not-yet-full chunk with the smallest total
/// size, the first one on ties. A min-heap of (total, chunk) finds it in O(log chunks); a full chunk
/// leaves the heap, as FUSION sets its total to infinity.
fn even_chunks<S: Size>(sorted: &[(S, usize, i64)], chunks: usize, out: &mut [i64]) {
    use std::cmp::Reverse;
    let per_chunk = sorted.len() / chunks;
    let mut open: std::collections::BinaryHeap<Reverse<(S::Total, usize)>> = (0..chunks)
        .map(|c| Reverse((S::Total::default(), c)))
        .collect();
    let mut filled = vec![0usize; chunks];
    for &(size, _, id) in sorted {
        let Some(Reverse((total, best))) = open.pop() else {
            return; // unreachable: the chunks hold exactly `sorted.len()` samples
        };
        out[best * per_chunk + filled[best]] = id;
        filled[best] += 1;
        if filled[best] < per_chunk {
            let mut total = total;
            total += size.into();
            open.push(Reverse((total, best)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grouped(perm: &[i64], size: &[i64], megabatch: usize, chunks: usize) -> Option<Vec<i64>> {
        let mut out = vec![0; perm.len()];
        length_grouped(perm, size, megabatch, chunks, &mut out).map(|()| out)
    }

    #[test]
    fn sorts_longest_first_and_balances_like_fusion() {
        // One megabatch of 4 into 2 chunks: sorted 9(3) 7(0) 5(1) 1(2); 9 -> chunk 0, 7 -> chunk 1,
        // 5 -> chunk 1 (7 < 9), 1 -> chunk 0 (chunk 1 is full).
        let size = [7, 5, 1, 9];
        assert_eq!(grouped(&[0, 1, 2, 3], &size, 4, 2), Some(vec![3, 2, 0, 1]));
        // Ties keep permutation order; an uneven last megabatch is dealt round-robin.
        let size = [2, 2, 2, 2, 2];
        assert_eq!(
            grouped(&[4, 0, 3, 1, 2], &size, 4, 2),
            Some(vec![4, 3, 0, 1, 2])
        );
        assert_eq!(grouped(&[0, 1, 2], &[1, 2, 3], 3, 2), Some(vec![2, 0, 1]));
        assert_eq!(grouped(&[0, 5], &[1, 2], 2, 1), None);
        let huge = [i64::MIN, i64::MAX, 3, 1];
        assert_eq!(grouped(&[0, 1, 2, 3], &huge, 4, 2), Some(vec![0, 3, 1, 2]));
    }
}
