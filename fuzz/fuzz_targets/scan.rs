//! The scanner: the parallel scan cut into tiny chunks must equal the sequential reference on every
//! input (records, or the first error with its message and position), and the reference must accept
//! exactly what serde_json accepts, apart from what Python's `json` reads differently by design.
//!
//! Input: one control byte (chunk size 1..=64, format), then the file's bytes.
#![no_main]

use fusion_fast::json::MAX_DEPTH;
use fusion_fast::scan::{scan_sequential, scan_with_stats, Format, ScanOptions};
use fusion_fast::Records;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|input: &[u8]| {
    let Some((&control, data)) = input.split_first() else {
        return;
    };
    let chunk_size = usize::from(control & 0x3F) + 1;
    let format = if control & 0x40 == 0 {
        Format::JsonArray
    } else {
        Format::JsonLines
    };
    let opts = ScanOptions {
        chunk_size,
        ..ScanOptions::default()
    };
    let sequential = scan_sequential(data, format);
    let parallel = scan_with_stats(data, format, &opts).map(|(runs, _)| Records::concat(&runs));
    assert_eq!(parallel, sequential, "chunk size {chunk_size}, {format:?}");
    match format {
        Format::JsonArray => agrees_with_serde(data, sequential.is_ok(), true),
        Format::JsonLines => {
            // Every non-blank line one JSON value; no byte order mark (serde_json has none either).
            let mut expected = Some(!data.starts_with(b"\xEF\xBB\xBF"));
            for line in data.split(|&b| b == b'\n') {
                if line.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r')) {
                    continue;
                }
                match serde_accepts(line, false) {
                    Some(true) => {}
                    Some(false) => expected = Some(false),
                    None => expected = expected.filter(|&e| !e),
                }
            }
            if let Some(expected) = expected {
                assert_eq!(
                    sequential.is_ok(),
                    expected,
                    "scan and serde_json disagree: {sequential:?}"
                );
            }
        }
    }
});

/// Whether serde_json reads `data` as one JSON value (an array when `array`): `Some(accepted)`, or
/// `None` where Python's `json` (which fusion-fast follows) differs from serde_json by design: lone
/// surrogate escapes (Python keeps them) and numbers beyond an f64 (Python reads them as infinity).
fn serde_accepts(data: &[u8], array: bool) -> Option<bool> {
    let mut de = serde_json::Deserializer::from_slice(data);
    de.disable_recursion_limit();
    let parsed = serde::Deserialize::deserialize(&mut de).and_then(|v: Value| de.end().map(|()| v));
    match parsed {
        Ok(v) => Some((!array || v.is_array()) && depth(&v) <= MAX_DEPTH),
        Err(e) => {
            let m = e.to_string();
            if [
                "surrogate",
                "hex escape",
                "unicode code point",
                "out of range",
            ]
            .iter()
            .any(|s| m.contains(s))
            {
                None
            } else {
                Some(false)
            }
        }
    }
}

fn agrees_with_serde(data: &[u8], accepted: bool, array: bool) {
    if let Some(expected) = serde_accepts(data, array) {
        assert_eq!(accepted, expected, "scan and serde_json disagree");
    }
}

/// Nesting depth of a value as the scanner counts it (a scalar is 0, `[]` is 1).
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(members) => 1 + members.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}
