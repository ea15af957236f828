//! Property tests: the parallel scan, forced down to chunks of a few bytes, equals the sequential
//! reference on random LLaVA-like documents full of brackets, commas, quotes and backslash runs, and on
//! damaged copies of them (where both must report the same first error). Valid and damaged documents are
//! also checked against serde_json: a document is accepted exactly when serde_json accepts it (each line
//! of JSON Lines on its own), and every record's bytes decode to the value serde_json read. Word counts
//! are checked against Python's `str.split()`, written here from its definition.

use fusion_fast::scan::{scan_sequential, scan_with_stats, Format, ScanOptions};
use fusion_fast::Records;
use proptest::prelude::*;
use serde_json::{json, Value};

/// Replacement bytes for damaging documents: mostly JSON punctuation.
const PUNCT: &[u8] = b"[]{},\"\\: a0\n";

fn parallel(data: &[u8], format: Format, chunk_size: usize) -> fusion_fast::Result<Records> {
    let opts = ScanOptions {
        chunk_size,
        ..ScanOptions::default()
    };
    scan_with_stats(data, format, &opts).map(|(runs, stats)| {
        // On valid input the speculation must be right: no silent fall back to one thread.
        if data.starts_with(b"[") && scan_sequential(data, format).is_ok() {
            assert!(
                !stats.resumed_sequentially,
                "valid document resumed sequentially"
            );
        }
        Records::concat(&runs)
    })
}

/// Strings that stress chunk boundaries: JSON punctuation, escapes, backslash runs, unicode and
/// Python-only whitespace.
fn tricky_string() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("[".to_string()),
        Just("]".to_string()),
        Just("{".to_string()),
        Just("}".to_string()),
        Just(",".to_string()),
        Just("\"".to_string()),
        Just(":".to_string()),
        Just(" ".to_string()),
        Just("\n".to_string()),
        Just("\t".to_string()),
        Just("\u{1c}".to_string()),
        Just("\u{a0}".to_string()),
        Just("\u{3000}".to_string()),
        Just("\u{2009}".to_string()),
        Just("\u{85}".to_string()),
        Just("\u{0b}".to_string()),
        Just("\u{1d}".to_string()),
        Just("\u{1f}".to_string()),
        Just("\u{1680}".to_string()),
        Just("\u{2028}".to_string()),
        Just("\u{200b}".to_string()),
        Just("\u{feff}".to_string()),
        Just("é".to_string()),
        Just("日本".to_string()),
        Just("😀".to_string()),
        Just("<image>".to_string()),
        (1usize..9).prop_map(|n| "\\".repeat(n)),
        "[a-z]{1,8}",
    ];
    prop::collection::vec(piece, 0..12).prop_map(|v| v.concat())
}

fn turn() -> impl Strategy<Value = Value> {
    (prop::bool::ANY, tricky_string()).prop_map(
        |(human, text)| json!({"from": if human { "human" } else { "gpt" }, "value": text}),
    )
}

fn record() -> impl Strategy<Value = Value> {
    (
        tricky_string(),
        prop_oneof![
            Just(Value::Null),
            tricky_string().prop_map(Value::String),
            prop::collection::vec(tricky_string().prop_map(Value::String), 0..4)
                .prop_map(Value::Array),
        ],
        0u8..4,
        prop::collection::vec(turn(), 0..5),
        prop::bool::ANY,
    )
        .prop_map(|(id, image, shape, turns, video)| {
            let mut rec = serde_json::Map::new();
            rec.insert("id".into(), Value::String(id));
            if shape != 0 {
                rec.insert("image".into(), image);
            }
            if video {
                rec.insert("video".into(), json!("v.mp4"));
            }
            if shape != 3 {
                rec.insert("conversations".into(), Value::Array(turns));
            }
            rec.insert(
                "nested".into(),
                json!([[1, -2.5e3, {"a": [true, false, null]}], {}]),
            );
            Value::Object(rec)
        })
}

fn document() -> impl Strategy<Value = (Vec<Value>, bool)> {
    (prop::collection::vec(record(), 0..8), prop::bool::ANY)
}

fn render_array(records: &[Value], pretty: bool) -> Vec<u8> {
    let v = Value::Array(records.to_vec());
    if pretty {
        serde_json::to_vec_pretty(&v).unwrap()
    } else {
        serde_json::to_vec(&v).unwrap()
    }
}

fn render_lines(records: &[Value], crlf: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        out.extend(serde_json::to_vec(r).unwrap());
        out.extend_from_slice(if crlf { b"\r\n\n" } else { b"\n" });
    }
    out
}

/// The characters Python's `str.split()` splits on: those for which `str.isspace()` is true, i.e. the
/// Unicode characters of general category Zs or bidirectional class WS, B or S (Python's
/// `_PyUnicode_IsWhitespace`). Listed from that definition, not taken from the crate.
const PYTHON_WHITESPACE: &[char] = &[
    '\t', '\n', '\u{0b}', '\u{0c}', '\r', '\u{1c}', '\u{1d}', '\u{1e}', '\u{1f}', ' ', '\u{85}',
    '\u{a0}', '\u{1680}', '\u{2000}', '\u{2001}', '\u{2002}', '\u{2003}', '\u{2004}', '\u{2005}',
    '\u{2006}', '\u{2007}', '\u{2008}', '\u{2009}', '\u{200a}', '\u{2028}', '\u{2029}', '\u{202f}',
    '\u{205f}', '\u{3000}',
];

fn python_words(s: &str) -> u32 {
    s.split(|c| PYTHON_WHITESPACE.contains(&c))
        .filter(|w| !w.is_empty())
        .count() as u32
}

/// JSON Lines as specified: after JSON whitespace, each line is empty or exactly one JSON value
/// (serde_json on that line alone); a byte-order mark is not JSON. None when the document is invalid.
fn lines_oracle(data: &[u8]) -> Option<Vec<Value>> {
    if data.starts_with(b"\xEF\xBB\xBF") {
        return None;
    }
    let mut out = Vec::new();
    for line in data.split(|&b| b == b'\n') {
        if line.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r')) {
            continue;
        }
        out.push(serde_json::from_slice::<Value>(line).ok()?);
    }
    Some(out)
}

/// A JSON array document: serde_json's value when it is one, else None.
fn array_oracle(data: &[u8]) -> Option<Vec<Value>> {
    match serde_json::from_slice::<Value>(data) {
        Ok(Value::Array(items)) => Some(items),
        _ => None,
    }
}

/// The scan agrees with the oracle: it fails exactly when the oracle rejects the document, and else
/// finds the oracle's records, each one's bytes decoding to the oracle's value.
fn assert_matches_oracle(
    data: &[u8],
    scanned: &fusion_fast::Result<Records>,
    oracle: Option<Vec<Value>>,
) -> Result<(), TestCaseError> {
    let text = String::from_utf8_lossy(data);
    match (scanned, oracle) {
        (Ok(seq), Some(values)) => {
            prop_assert_eq!(seq.len(), values.len(), "records in {:?}", text);
            for (i, want) in values.iter().enumerate() {
                let (o, l) = (seq.offset[i] as usize, seq.length[i] as usize);
                let got: Value = serde_json::from_slice(&data[o..o + l]).unwrap();
                prop_assert_eq!(&got, want, "record {} of {:?}", i, text);
            }
        }
        (Err(_), None) => {}
        (Ok(_), None) => prop_assert!(false, "accepted a document serde_json rejects: {:?}", text),
        (Err(e), Some(_)) => prop_assert!(false, "rejected a valid document ({}): {:?}", e, text),
    }
    Ok(())
}

/// Damages `data` in place: a few bytes replaced by JSON punctuation, optionally cut short.
fn damage(
    data: &mut Vec<u8>,
    edits: &[(prop::sample::Index, u8)],
    cut: Option<prop::sample::Index>,
) {
    if data.len() > 2 {
        for (at, byte) in edits {
            let i = at.index(data.len());
            // Bias towards JSON punctuation so damage often stays "almost valid".
            data[i] = PUNCT[*byte as usize % PUNCT.len()];
        }
        if let Some(c) = cut {
            data.truncate(c.index(data.len()));
        }
    }
}

fn expected_words(rec: &Value) -> u32 {
    match rec.get("conversations") {
        Some(Value::Array(turns)) => turns
            .iter()
            .map(|t| python_words(t.get("value").and_then(Value::as_str).unwrap()))
            .sum(),
        _ => 0,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn array_parallel_equals_sequential((records, pretty) in document(), chunk in 1usize..48) {
        let data = render_array(&records, pretty);
        let seq = scan_sequential(&data, Format::JsonArray).unwrap();
        prop_assert_eq!(seq.len(), records.len());
        for (i, rec) in records.iter().enumerate() {
            prop_assert_eq!(seq.words[i], expected_words(rec));
            let (o, l) = (seq.offset[i] as usize, seq.length[i] as usize);
            let parsed: Value = serde_json::from_slice(&data[o..o + l]).unwrap();
            prop_assert_eq!(&parsed, rec);
        }
        prop_assert_eq!(parallel(&data, Format::JsonArray, chunk).unwrap(), seq);
    }

    #[test]
    fn lines_parallel_equals_sequential((records, crlf) in document(), chunk in 1usize..48) {
        let data = render_lines(&records, crlf);
        let seq = scan_sequential(&data, Format::JsonLines).unwrap();
        prop_assert_eq!(seq.len(), records.len());
        for (i, rec) in records.iter().enumerate() {
            prop_assert_eq!(seq.words[i], expected_words(rec));
            let (o, l) = (seq.offset[i] as usize, seq.length[i] as usize);
            let parsed: Value = serde_json::from_slice(&data[o..o + l]).unwrap();
            prop_assert_eq!(&parsed, rec);
        }
        prop_assert_eq!(parallel(&data, Format::JsonLines, chunk).unwrap(), seq);
    }

    #[test]
    fn damaged_lines_are_judged_like_serde_json(
        (records, crlf) in document(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        commas in prop::collection::vec(any::<prop::sample::Index>(), 0..2),
        cut in prop::option::of(any::<prop::sample::Index>()),
        chunk in 1usize..40,
    ) {
        let mut data = render_lines(&records, crlf);
        // A separator after a record (`{"a":1},`): what a reader that treats lines like array items
        // would let through.
        for at in &commas {
            if !data.is_empty() {
                let newlines: Vec<usize> = data.iter().enumerate().filter(|(_, &b)| b == b'\n').map(|(i, _)| i).collect();
                if !newlines.is_empty() {
                    data.insert(newlines[at.index(newlines.len())], b',');
                }
            }
        }
        damage(&mut data, &edits, cut);
        let seq = scan_sequential(&data, Format::JsonLines);
        assert_matches_oracle(&data, &seq, lines_oracle(&data))?;
        prop_assert_eq!(parallel(&data, Format::JsonLines, chunk), seq);
    }

    #[test]
    fn damaged_arrays_are_judged_like_serde_json(
        (records, pretty) in document(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        cut in prop::option::of(any::<prop::sample::Index>()),
        chunk in 1usize..40,
    ) {
        let mut data = render_array(&records, pretty);
        damage(&mut data, &edits, cut);
        let seq = scan_sequential(&data, Format::JsonArray);
        assert_matches_oracle(&data, &seq, array_oracle(&data))?;
        prop_assert_eq!(parallel(&data, Format::JsonArray, chunk), seq);
    }

    #[test]
    fn damaged_documents_fail_the_same_way(
        (records, pretty) in document(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in prop::option::of(any::<prop::sample::Index>()),
        chunk in 1usize..40,
        bom in prop::bool::weighted(0.1),
    ) {
        let mut data = render_array(&records, pretty);
        damage(&mut data, &edits, cut);
        if bom {
            data.splice(0..0, *b"\xEF\xBB\xBF");
        }
        for format in [Format::JsonArray, Format::JsonLines] {
            let seq = scan_sequential(&data, format);
            prop_assert_eq!(parallel(&data, format, chunk), seq);
        }
    }

    /// Documents that start with a UTF-8 byte order mark (alone or before records) fail alike in both
    /// scans, message included.
    #[test]
    fn byte_order_marks_fail_the_same_way(
        (records, crlf) in document(),
        lines in prop::bool::ANY,
        keep in 0usize..4,
        chunk in 1usize..40,
    ) {
        let body = if lines { render_lines(&records, crlf) } else { render_array(&records, crlf) };
        let mut data = b"\xEF\xBB\xBF"[..keep.min(3)].to_vec();
        data.extend_from_slice(&body);
        for format in [Format::JsonArray, Format::JsonLines] {
            let seq = scan_sequential(&data, format);
            prop_assert_eq!(parallel(&data, format, chunk), seq);
        }
    }
}
