//! FUSION's `lengths` and `modality_lengths` over a selection of records, straight from the index's
//! `words` and `flags` columns: one parallel pass instead of several numpy passes and temporaries.

use rayon::prelude::*;

use crate::record::flags::HAS_IMAGE;

/// Tokens FUSION adds to `lengths` for a record with an `image` key.
pub const IMAGE_TOKENS: i64 = 128;

/// Which of FUSION's two properties to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LengthKind {
    /// `words + 128` with an `image` key, else `words`.
    Lengths,
    /// `+words` with an `image` key, `-words` without.
    Modality,
}

#[inline]
fn length(words: &[u8], flags: &[u8], i: usize, kind: LengthKind) -> i64 {
    let w = i64::from(u32::from_le_bytes(
        words[4 * i..4 * i + 4].try_into().unwrap(),
    ));
    let image = flags[i] & HAS_IMAGE != 0;
    match (kind, image) {
        (LengthKind::Lengths, true) => w + IMAGE_TOKENS,
        (LengthKind::Lengths, false) | (LengthKind::Modality, true) => w,
        (LengthKind::Modality, false) => -w,
    }
}

/// Fills `out[k]` for record `selection[k]` (or record `start + k` when `selection` is `None`), given the
/// little-endian `words` (u32) and `flags` (u8) column bytes. Returns the first record number that is out
/// of range, if any (then `out` is unspecified).
pub fn lengths_into(
    words: &[u8],
    flags: &[u8],
    selection: Option<&[i64]>,
    start: usize,
    kind: LengthKind,
    out: &mut [i64],
) -> Result<(), i64> {
    let n = flags.len();
    const PIECE: usize = 1 << 16;
    match selection {
        Some(sel) => {
            if let Some(&bad) = sel.iter().find(|&&r| r < 0 || r as usize >= n) {
                return Err(bad);
            }
            out.par_chunks_mut(PIECE)
                .zip(sel.par_chunks(PIECE))
                .for_each(|(o, s)| {
                    for (dst, &r) in o.iter_mut().zip(s) {
                        *dst = length(words, flags, r as usize, kind);
                    }
                });
        }
        None => {
            if start + out.len() > n {
                return Err((start + out.len()) as i64 - 1);
            }
            out.par_chunks_mut(PIECE).enumerate().for_each(|(c, o)| {
                let first = start + c * PIECE;
                for (k, dst) in o.iter_mut().enumerate() {
                    *dst = length(words, flags, first + k, kind);
                }
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fusion_definitions() {
        let words: Vec<u8> = [5u32, 0, 7].iter().flat_map(|w| w.to_le_bytes()).collect();
        let flags = [HAS_IMAGE, HAS_IMAGE, 0];
        let mut out = [0i64; 3];
        lengths_into(&words, &flags, None, 0, LengthKind::Lengths, &mut out).unwrap();
        assert_eq!(out, [133, 128, 7]);
        lengths_into(&words, &flags, None, 0, LengthKind::Modality, &mut out).unwrap();
        assert_eq!(out, [5, 0, -7]);
        let mut two = [0i64; 2];
        lengths_into(
            &words,
            &flags,
            Some(&[2, 0]),
            0,
            LengthKind::Modality,
            &mut two,
        )
        .unwrap();
        assert_eq!(two, [-7, 5]);
        assert_eq!(
            lengths_into(&words, &flags, Some(&[3]), 0, LengthKind::Lengths, &mut [0]),
            Err(3)
        );
        assert!(lengths_into(&words, &flags, None, 2, LengthKind::Lengths, &mut two).is_err());
    }
}
