//! The index header parser on arbitrary bytes: `Header::decode` and `verify_columns` refuse or accept,
//! never panic, and every column of an accepted header lies inside the file, after the header, without
//! overlapping another.
//!
//! Input: one control byte (bit 0: recompute the checksums first, as anyone can, so that the fuzzer
//! reaches the checks behind them), then the index file's bytes.
#![no_main]

use std::path::Path;

use fusion_fast::index_file::Header;
use libfuzzer_sys::fuzz_target;
use xxhash_rust::xxh3::xxh3_64;

fuzz_target!(|input: &[u8]| {
    let Some((&control, data)) = input.split_first() else {
        return;
    };
    let mut bytes = data.to_vec();
    if control & 1 == 1 {
        reseal(&mut bytes);
    }
    let path = Path::new("fuzz.ffidx");
    let Ok(header) = Header::decode(&bytes, path) else {
        return;
    };
    let _ = header.verify_columns(&bytes, path);
    let mut spans: Vec<(u64, u64)> = header
        .columns
        .iter()
        .map(|c| {
            let len = header.records * c.dtype.size() as u64; // no overflow: decode checked it
            assert!(c.offset + len <= bytes.len() as u64);
            assert_eq!(header.column_bytes(&bytes, c).len() as u64, len);
            (c.offset, c.offset + len)
        })
        .collect();
    spans.sort();
    assert!(
        spans.windows(2).all(|w| w[0].1 <= w[1].0),
        "columns overlap"
    );
    assert!(spans.first().is_none_or(|s| s.0 >= 64));
});

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Recomputes the column and header checksums where the fields say they are.
fn reseal(b: &mut [u8]) {
    let (Some(header_len), Some(records)) = (b.get(12..16), u64_at(b, 40)) else {
        return;
    };
    let header_len = u32::from_le_bytes(header_len.try_into().unwrap()) as usize;
    if header_len < 72 || header_len > b.len() {
        return;
    }
    for e in (64..header_len - 8)
        .step_by(40)
        .filter(|e| e + 40 <= header_len - 8)
    {
        let size = u64::from(b[e + 16]);
        let offset = u64_at(b, e + 24).unwrap();
        let end = records
            .checked_mul(size)
            .and_then(|l| offset.checked_add(l));
        if let Some(end) = end.filter(|&end| end <= b.len() as u64) {
            let sum = xxh3_64(&b[offset as usize..end as usize]);
            b[e + 32..e + 40].copy_from_slice(&sum.to_le_bytes());
        }
    }
    let sum = xxh3_64(&b[..header_len - 8]);
    b[header_len - 8..header_len].copy_from_slice(&sum.to_le_bytes());
}
