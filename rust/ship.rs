//! The hand-off of a batch from a DataLoader worker to the main process, without Python: where each
//! mixture position's record lives, how a worker packs the records of a batch into two byte strings,
//! and how the main process reads them back. The Python class that carries a packed batch across
//! processes (`Shipped`) and decodes it is a thin binding over this, in `py_ship.rs`.
//!
//! A packed batch is four byte strings: `data`, the records back to back (their JSON, or their tapes:
//! see `tape`); `lengths`, each record's byte length as little-endian uint32; `datasets` and
//! `numbers`, each record's dataset number and record number as little-endian int64. Together with the
//! datasets' names and image prefixes, that is all the main process needs to build the items.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::store::JsonIndex;
use crate::tape::Encoder;

// -- positions ------------------------------------------------------------------------------------

/// Checks the layout of a mixture: `offsets` holds where each dataset starts, then the total, rising
/// from 0 to `records` (the number of positions). `locate` is only meaningful over such a layout.
pub fn check_offsets(offsets: &[i64], records: usize) -> Result<()> {
    let rises = offsets.windows(2).all(|w| w[0] <= w[1]);
    if offsets.first() != Some(&0) || !rises || offsets.last() != Some(&(records as i64)) {
        return Err(Error::invalid(format!(
            "offsets must rise from 0 to the number of records ({records})"
        )));
    }
    Ok(())
}

/// (dataset number, record number in its file) of mixture position `position` (negative counts from
/// the end), or None past either end. `offsets` (see `check_offsets`) says where each dataset starts;
/// `records` holds the record number of every position. With several datasets starting at one position
/// (empty ones before it), the position belongs to the last of them, the one that is not empty.
#[inline]
pub fn locate(offsets: &[i64], records: &[i64], position: i64) -> Option<(usize, i64)> {
    let n = records.len() as i64;
    let pos = if position < 0 {
        position.checked_add(n)?
    } else {
        position
    };
    if !(0..n).contains(&pos) {
        return None;
    }
    let dataset = offsets
        .partition_point(|&start| start <= pos)
        .checked_sub(1)?;
    Some((dataset, records[pos as usize]))
}

/// `locate` of every one of `positions`, written into `datasets` and `numbers` (as long as
/// `positions`). Err(k) when `positions[k]` is the first one out of range (what follows it is not
/// written).
pub fn locate_into(
    offsets: &[i64],
    records: &[i64],
    positions: &[i64],
    datasets: &mut [i64],
    numbers: &mut [i64],
) -> std::result::Result<(), usize> {
    let outs = datasets.iter_mut().zip(numbers.iter_mut());
    for (k, (&position, (d, i))) in positions.iter().zip(outs).enumerate() {
        let (dataset, number) = locate(offsets, records, position).ok_or(k)?;
        (*d, *i) = (dataset as i64, number);
    }
    Ok(())
}

// -- the wire format ------------------------------------------------------------------------------

/// Samples given as two little-endian int64 arrays of equal length: dataset and record numbers.
pub fn samples<'a>(
    datasets: &'a [u8],
    numbers: &'a [u8],
) -> Result<impl Iterator<Item = (i64, i64)> + 'a> {
    if datasets.len() != numbers.len() || !datasets.len().is_multiple_of(8) {
        return Err(Error::invalid(
            "datasets and numbers must be int64 arrays of the same length",
        ));
    }
    Ok(datasets
        .chunks_exact(8)
        .map(int64)
        .zip(numbers.chunks_exact(8).map(int64)))
}

fn int64(bytes: &[u8]) -> i64 {
    i64::from_le_bytes(bytes.try_into().unwrap_or_default())
}

/// Dataset number `d` as an index into `count` datasets.
pub fn dataset(d: i64, count: usize) -> Result<usize> {
    usize::try_from(d)
        .ok()
        .filter(|&d| d < count)
        .ok_or_else(|| Error::out_of_range(format!("dataset number {d} out of range")))
}

/// One record of a packed batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShippedRecord<'a> {
    /// Its dataset's number, below the number of datasets.
    pub dataset: usize,
    /// Its record number in its dataset's file.
    pub number: i64,
    /// Its JSON or its tape.
    pub bytes: &'a [u8],
}

/// The records of a packed batch over `datasets` datasets, checked: lengths that add up to `data`'s,
/// one dataset and record number per record, dataset numbers in range. What is wrong with a batch that
/// fusion-fast did not pack (or that was damaged on the way) is an error here, never a panic.
pub fn unpack<'a>(
    data: &'a [u8],
    lengths: &[u8],
    datasets: &[u8],
    numbers: &[u8],
    dataset_count: usize,
) -> Result<Vec<ShippedRecord<'a>>> {
    if lengths.len() * 2 != numbers.len() {
        return Err(Error::invalid(
            "lengths and numbers must describe the same records",
        ));
    }
    let mut out = Vec::with_capacity(lengths.len() / 4);
    let mut at = 0usize;
    for ((d, number), len) in samples(datasets, numbers)?.zip(lengths.chunks_exact(4)) {
        let len = u32::from_le_bytes(len.try_into().unwrap_or_default()) as usize;
        let bytes = at
            .checked_add(len)
            .and_then(|end| data.get(at..end))
            .ok_or_else(|| Error::invalid("record lengths exceed the shipped bytes"))?;
        out.push(ShippedRecord {
            dataset: dataset(d, dataset_count)?,
            number,
            bytes,
        });
        at += len;
    }
    if at != data.len() {
        return Err(Error::invalid(
            "record lengths do not add up to the shipped bytes",
        ));
    }
    Ok(out)
}

// -- packing --------------------------------------------------------------------------------------

/// One record to pack: its dataset's index, its number there and its span (`JsonIndex::checked_span`).
pub struct Read<'a> {
    pub index: &'a JsonIndex,
    pub number: usize,
    pub span: Range<usize>,
}

/// Packing failed: the error, and which read it came from (None: not one record's fault).
#[derive(Debug)]
pub struct Failed {
    pub read: Option<usize>,
    pub error: Error,
}

/// The bytes `pack_json` writes.
pub fn json_len(reads: &[Read<'_>]) -> usize {
    reads.iter().map(|r| r.span.len()).sum()
}

/// The records' JSON back to back in `out` (`json_len` bytes). Records are read with positional reads
/// rather than from the mapping: this runs in DataLoader workers, which meet most pages of a large
/// file once, and a first touch of a mapped page (a page fault) costs more than twice a read. A data
/// file cut short after it was opened fails the read: an error for the caller to report as the
/// record's, not a crash.
pub fn pack_json(reads: &[Read<'_>], out: &mut [u8]) -> std::result::Result<(), Failed> {
    let mut at = 0;
    for (k, r) in reads.iter().enumerate() {
        let end = at + r.span.len();
        let into = out.get_mut(at..end).ok_or_else(|| Failed {
            read: None,
            error: Error::invalid("the output is shorter than the records"),
        })?;
        r.index
            .read_span(r.span.clone(), into)
            .map_err(|error| Failed {
                read: Some(k),
                error,
            })?;
        at = end;
    }
    Ok(())
}

/// Each record's JSON length as little-endian uint32 (the index stores lengths as uint32, so every
/// record's fits).
pub fn json_lengths(reads: &[Read<'_>]) -> Vec<u8> {
    reads
        .iter()
        .flat_map(|r| (r.span.len() as u32).to_le_bytes())
        .collect()
}

/// A worker's buffers for `pack_tapes`, reused from batch to batch.
#[derive(Default)]
pub struct Packer {
    encoder: Encoder,
    json: Vec<u8>,
    tapes: Vec<u8>,
}

impl Packer {
    /// Each record's tape back to back, and each tape's length as little-endian uint32: the worker
    /// parses the JSON so that the main process, which builds every record's Python objects, only
    /// copies; worth it where the workers have cores to spare (`fusion_fast.torch` decides). A record
    /// read short or no longer the JSON value that was indexed fails with its read's number.
    pub fn pack_tapes(
        &mut self,
        reads: &[Read<'_>],
    ) -> std::result::Result<(&[u8], Vec<u8>), Failed> {
        let Packer {
            encoder,
            json,
            tapes,
        } = self;
        tapes.clear();
        let mut lengths = Vec::with_capacity(reads.len() * 4);
        for (k, r) in reads.iter().enumerate() {
            json.resize(r.span.len(), 0);
            let start = tapes.len();
            r.index
                .read_span(r.span.clone(), json)
                .and_then(|()| {
                    encoder.encode(json, tapes).ok_or_else(|| {
                        Error::invalid("the record is no longer the JSON value that was indexed")
                    })
                })
                .map_err(|error| Failed {
                    read: Some(k),
                    error,
                })?;
            // A tape is shorter than its JSON plus 4 bytes per code point, and a record is under
            // 4 GiB (the index stores lengths as uint32), so this only guards against the impossible.
            let length = u32::try_from(tapes.len() - start).map_err(|_| Failed {
                read: None,
                error: Error::invalid("a record's tape exceeds 4 GiB"),
            })?;
            lengths.extend_from_slice(&length.to_le_bytes());
        }
        Ok((tapes, lengths))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::test_support::xorshift;

    /// `locate` by a linear walk over the datasets: the first dataset whose range holds the position,
    /// skipping empty ones.
    fn locate_by_walking(sizes: &[i64], records: &[i64], position: i64) -> Option<(usize, i64)> {
        let n = records.len() as i64;
        let pos = if position < 0 { position + n } else { position };
        if pos < 0 || pos >= n {
            return None;
        }
        let mut start = 0;
        for (d, &size) in sizes.iter().enumerate() {
            if pos < start + size {
                return Some((d, records[pos as usize]));
            }
            start += size;
        }
        None
    }

    #[test]
    fn locate_matches_a_walk_over_the_datasets() {
        let mut next = xorshift(0x5eed);
        for _ in 0..500 {
            let count = (next() % 6) as usize + 1;
            let sizes: Vec<i64> = (0..count).map(|_| (next() % 5) as i64).collect();
            let mut offsets = vec![0];
            for s in &sizes {
                offsets.push(offsets.last().unwrap() + s);
            }
            let n = *offsets.last().unwrap();
            let records: Vec<i64> = (0..n).map(|_| (next() % 1000) as i64).collect();
            check_offsets(&offsets, records.len()).unwrap();
            for position in -n - 2..n + 2 {
                let want = locate_by_walking(&sizes, &records, position);
                assert_eq!(
                    locate(&offsets, &records, position),
                    want,
                    "{sizes:?} {position}"
                );
            }
            assert_eq!(locate(&offsets, &records, i64::MIN), None);
            assert_eq!(locate(&offsets, &records, i64::MAX), None);
        }
    }

    #[test]
    fn locate_into_names_the_first_position_out_of_range() {
        let (offsets, records) = ([0, 2, 2, 3], [7, 8, 9]);
        let (mut d, mut i) = ([0; 4], [0; 4]);
        assert_eq!(
            locate_into(&offsets, &records, &[0, 2, -1], &mut d, &mut i),
            Ok(())
        );
        assert_eq!((&d[..3], &i[..3]), (&[0, 2, 2][..], &[7, 9, 9][..]));
        assert_eq!(
            locate_into(&offsets, &records, &[1, 3, -4, 0], &mut d, &mut i),
            Err(1)
        );
    }

    #[test]
    fn offsets_must_rise_from_zero_to_the_record_count() {
        assert!(check_offsets(&[0, 2, 2, 3], 3).is_ok());
        for bad in [&[][..], &[1, 3], &[0, 2, 1, 3], &[0, 2]] {
            let err = check_offsets(bad, 3).unwrap_err();
            assert_eq!(err.kind, ErrorKind::Invalid, "{bad:?}");
        }
    }

    #[test]
    fn unpack_checks_every_length_and_number() {
        let le = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let lens = |v: &[u32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let (ds, ns) = (le(&[0, 1]), le(&[5, 6]));
        let got = unpack(b"abcde", &lens(&[2, 3]), &ds, &ns, 2).unwrap();
        assert_eq!(got[1].bytes, b"cde");
        assert_eq!((got[1].dataset, got[1].number), (1, 6));
        let kind = |r: Result<Vec<ShippedRecord<'_>>>| r.unwrap_err().kind;
        assert_eq!(
            kind(unpack(b"abcd", &lens(&[2, 3]), &ds, &ns, 2)),
            ErrorKind::Invalid
        );
        assert_eq!(
            kind(unpack(b"abcdef", &lens(&[2, 3]), &ds, &ns, 2)),
            ErrorKind::Invalid
        );
        assert_eq!(
            kind(unpack(b"abcde", &lens(&[5]), &ds, &ns, 2)),
            ErrorKind::Invalid
        );
        assert_eq!(
            kind(unpack(b"abcde", &lens(&[2, 3]), &ds[..8], &ns, 2)),
            ErrorKind::Invalid
        );
        assert_eq!(
            kind(unpack(b"abcde", &lens(&[2, 3]), &ds, &ns, 1)),
            ErrorKind::OutOfRange
        );
        let huge = lens(&[u32::MAX, u32::MAX]);
        assert_eq!(
            kind(unpack(b"abcde", &huge, &ds, &ns, 2)),
            ErrorKind::Invalid
        );
    }
}
