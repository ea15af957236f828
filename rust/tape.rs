//! Records pre-parsed for the process that turns them into Python objects.
//!
//! A DataLoader worker ships the raw records of a batch to the main process, which must create every
//! record's Python objects and is the bound of a 2-worker run. The worker has CPU to spare, so it parses
//! the JSON into a *tape* and the main process only allocates and copies: no whitespace to skip, no
//! quotes or escapes to look for, and each string already in the representation CPython stores (its
//! code points at 1, 2 or 4 bytes each, the width chosen by the largest one), so even non-ASCII text is
//! one copy instead of a UTF-8 decode.
//!
//! A tape is one JSON value, written depth first, little-endian, each item a tag byte and then:
//!
//! | tag | item | followed by |
//! |---|---|---|
//! | 0, 1, 2 | `null`, `false`, `true` | nothing |
//! | 3 | integer fitting an i64 | 8 bytes |
//! | 4 | number with a fraction or exponent | its f64, 8 bytes (parsed as Python's `float` does) |
//! | 5 | integer beyond an i64 | u32 length, then its ASCII digits (for Python's `int`) |
//! | 6, 7, 8, 9 | string whose largest code point is < 128, < 256, < 65536, or above | u32 count of code points, then each one in 1, 1, 2 or 4 bytes |
//! | 10 | array | u32 count, then its items |
//! | 11 | object | u32 count, then key (a string) and value for each member, in order |
//!
//! A string's tag is exact (a tag-7 string holds a code point of 128 or more, and so on), as CPython
//! requires of a string's kind. Lone surrogate escapes stay code points, as Python's `json` keeps them.

use crate::json::{read_number, skip_whitespace, unescape_into, Number, MAX_DEPTH};

pub const NULL: u8 = 0;
pub const FALSE: u8 = 1;
pub const TRUE: u8 = 2;
pub const INT: u8 = 3;
pub const FLOAT: u8 = 4;
pub const BIG_INT: u8 = 5;
pub const STR_ASCII: u8 = 6;
pub const STR_LATIN1: u8 = 7;
pub const STR_UCS2: u8 = 8;
pub const STR_UCS4: u8 = 9;
pub const ARRAY: u8 = 10;
pub const OBJECT: u8 = 11;

/// Writes tapes, reusing its buffers from record to record.
#[derive(Default)]
pub struct Encoder {
    unescaped: Vec<u8>,
    units: Vec<u16>,
}

impl Encoder {
    /// Appends the tape of the JSON value in `json` (one value, whitespace around it allowed) to `out`.
    /// `None` when `json` is not one JSON value: the bytes were validated when they were indexed, so this
    /// means they changed since. `out` is then left with a partial tape, for the caller to drop.
    pub fn encode(&mut self, json: &[u8], out: &mut Vec<u8>) -> Option<()> {
        let mut i = self.value(json, skip_whitespace(json, 0), out, 1)?;
        i = skip_whitespace(json, i);
        (i == json.len()).then_some(())
    }

    /// Writes the value at `i` (not whitespace) and returns the offset after it.
    fn value(&mut self, d: &[u8], i: usize, out: &mut Vec<u8>, depth: usize) -> Option<usize> {
        if depth > MAX_DEPTH {
            return None;
        }
        match *d.get(i)? {
            b'{' => self.container(d, i, out, depth, OBJECT, b'}'),
            b'[' => self.container(d, i, out, depth, ARRAY, b']'),
            b'"' => self.string(d, i, out),
            b't' => literal(d, i, b"true", TRUE, out),
            b'f' => literal(d, i, b"false", FALSE, out),
            b'n' => literal(d, i, b"null", NULL, out),
            _ => number(d, i, out),
        }
    }

    /// An object or array at `i`: its tag, a count filled in at the end, and its members or items.
    fn container(
        &mut self,
        d: &[u8],
        i: usize,
        out: &mut Vec<u8>,
        depth: usize,
        tag: u8,
        close: u8,
    ) -> Option<usize> {
        out.push(tag);
        let count_at = out.len();
        out.extend_from_slice(&[0; 4]);
        let mut count = 0u32;
        let mut i = skip_whitespace(d, i + 1);
        if d.get(i) == Some(&close) {
            return Some(i + 1);
        }
        loop {
            if tag == OBJECT {
                if d.get(i) != Some(&b'"') {
                    return None;
                }
                i = skip_whitespace(d, self.string(d, i, out)?);
                if d.get(i) != Some(&b':') {
                    return None;
                }
                i = skip_whitespace(d, i + 1);
            }
            i = skip_whitespace(d, self.value(d, i, out, depth + 1)?);
            count += 1;
            match *d.get(i)? {
                b',' => i = skip_whitespace(d, i + 1),
                c if c == close => break,
                _ => return None,
            }
        }
        out[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
        Some(i + 1)
    }

    /// The string whose opening quote is at `i`.
    fn string(&mut self, d: &[u8], i: usize, out: &mut Vec<u8>) -> Option<usize> {
        let start = i + 1;
        let rest = d.get(start..)?;
        let (end, ascii) = string_stop(rest);
        if rest.get(end) == Some(&b'"') {
            if ascii {
                put_header(out, STR_ASCII, end);
                out.extend_from_slice(&rest[..end]);
                return Some(start + end + 1);
            }
            // Unescaped non-ASCII text: valid UTF-8 (checked: the file may have changed).
            let text = simdutf8::basic::from_utf8(&rest[..end]).ok()?;
            put_wtf8(out, text.as_bytes(), Some(text), &mut self.units)?;
            return Some(start + end + 1);
        }
        // Escapes: find the closing quote, skipping escaped characters, then decode.
        let mut close = start + end;
        loop {
            close += memchr::memchr2(b'"', b'\\', d.get(close..)?)?;
            if d[close] == b'"' {
                break;
            }
            close += 2;
        }
        let mut unescaped = std::mem::take(&mut self.unescaped);
        unescaped.clear();
        let decoded = unescape_into(&d[start..close], &mut unescaped).and_then(|_| {
            if unescaped.is_ascii() {
                put_header(out, STR_ASCII, unescaped.len());
                out.extend_from_slice(&unescaped);
                Some(())
            } else {
                let text = simdutf8::basic::from_utf8(&unescaped).ok();
                put_wtf8(out, &unescaped, text, &mut self.units)
            }
        });
        self.unescaped = unescaped;
        decoded?;
        Some(close + 1)
    }
}

/// A string's tag and code point count; its payload follows.
fn put_header(out: &mut Vec<u8>, tag: u8, count: usize) {
    out.push(tag);
    out.extend_from_slice(&(count as u32).to_le_bytes());
}

/// `true`, `false` or `null` at `i`.
fn literal(d: &[u8], i: usize, word: &[u8], tag: u8, out: &mut Vec<u8>) -> Option<usize> {
    (d.get(i..i + word.len())? == word).then(|| out.push(tag))?;
    Some(i + word.len())
}

/// The number at `i` (see `json::Number`).
fn number(d: &[u8], i: usize, out: &mut Vec<u8>) -> Option<usize> {
    let (number, end) = read_number(d, i)?;
    match number {
        Number::Int(v) => {
            out.push(INT);
            out.extend_from_slice(&v.to_le_bytes());
        }
        Number::Float(v) => {
            out.push(FLOAT);
            out.extend_from_slice(&v.to_le_bytes());
        }
        Number::Big(digits) => {
            put_header(out, BIG_INT, digits.len());
            out.extend_from_slice(digits);
        }
    }
    Some(end)
}

/// Offset of the first `"` or `\\` in `s` (or its length), and whether the bytes before it are ASCII:
/// one pass instead of a search and then an ASCII check. (An AVX-512 version measured no faster here:
/// most strings of a record are short.)
#[inline]
pub fn string_stop(s: &[u8]) -> (usize, bool) {
    let mut i = 0;
    let mut high = 0u32;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE2 is part of the x86_64 baseline; each load reads 16 bytes inside `s`.
    unsafe {
        use std::arch::x86_64::*;
        let quote = _mm_set1_epi8(b'"' as i8);
        let backslash = _mm_set1_epi8(b'\\' as i8);
        while i + 16 <= s.len() {
            let v = _mm_loadu_si128(s.as_ptr().add(i) as *const __m128i);
            let stop = _mm_movemask_epi8(_mm_or_si128(
                _mm_cmpeq_epi8(v, quote),
                _mm_cmpeq_epi8(v, backslash),
            )) as u32;
            let non_ascii = _mm_movemask_epi8(v) as u32;
            if stop != 0 {
                let k = stop.trailing_zeros();
                high |= non_ascii & ((1 << k) - 1);
                return (i + k as usize, high == 0);
            }
            high |= non_ascii;
            i += 16;
        }
    }
    let k = memchr::memchr2(b'"', b'\\', &s[i..]).map_or(s.len(), |k| i + k);
    (k, high == 0 && s[i..k].is_ascii())
}

/// Writes `s`, non-ASCII UTF-8 in which lone surrogates may appear in their 3-byte form (what
/// `unescape_into` writes), as a string of the narrowest exact kind. The kind follows from the largest
/// lead byte: a 4-byte sequence (lead >= 0xF0) encodes a code point above 0xFFFF, a 3-byte one
/// (0xE0..) one of 0x800 or more, a 2-byte one led by 0xC4..0xDF one of 0x100 or more, and one led by
/// 0xC2 or 0xC3 one of 0x80..0xFF. `text` is `s` where it is valid UTF-8: that goes through
/// encoding_rs's converters (SIMD over the ASCII runs that make up most of a record's text); text
/// with a lone surrogate goes code point by code point. `None` when `s` is neither (nothing useful is
/// written then).
fn put_wtf8(out: &mut Vec<u8>, s: &[u8], text: Option<&str>, units: &mut Vec<u16>) -> Option<()> {
    let tag = match s.iter().copied().max()? {
        0xF0.. => STR_UCS4,
        0xC4.. => STR_UCS2,
        0xC2..=0xC3 => STR_LATIN1,
        _ => return None, // ASCII, or continuation bytes without a lead
    };
    out.push(tag);
    let count_at = out.len();
    out.extend_from_slice(&[0; 4]);
    let start = out.len();
    let count = match text {
        Some(_) if tag == STR_LATIN1 => {
            out.resize(start + s.len(), 0);
            // Every code point is below 0x100 (see the tag), so nothing is lost.
            let n = encoding_rs::mem::convert_utf8_to_latin1_lossy(s, &mut out[start..]);
            out.truncate(start + n);
            n
        }
        Some(text) if tag == STR_UCS2 => {
            // No 4-byte sequence, so no surrogate pairs: one UTF-16 unit per code point.
            units.resize(s.len() + 1, 0);
            let n = encoding_rs::mem::convert_str_to_utf16(text, units);
            out.resize(start + 2 * n, 0);
            for (to, unit) in out[start..].chunks_exact_mut(2).zip(&units[..n]) {
                to.copy_from_slice(&unit.to_le_bytes());
            }
            n
        }
        Some(text) => {
            let n = text.chars().count();
            out.resize(start + 4 * n, 0);
            for (to, c) in out[start..].chunks_exact_mut(4).zip(text.chars()) {
                to.copy_from_slice(&u32::from(c).to_le_bytes());
            }
            n
        }
        None => put_wtf8_code_points(out, s, tag)?,
    };
    let count = u32::try_from(count).ok()?;
    out[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
    Some(())
}

/// `put_wtf8`'s payload for text that is not valid UTF-8 (a lone surrogate), decoded code point by
/// code point at the kind's width; the number of code points, or `None` for bytes that are not WTF-8.
fn put_wtf8_code_points(out: &mut Vec<u8>, s: &[u8], tag: u8) -> Option<usize> {
    let mut count = 0;
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        let (len, first) = match b {
            0x00..=0x7F => (1, u32::from(b)),
            0xC2..=0xDF => (2, u32::from(b & 0x1F)),
            0xE0..=0xEF => (3, u32::from(b & 0x0F)),
            0xF0..=0xF4 => (4, u32::from(b & 0x07)),
            _ => return None,
        };
        let mut cp = first;
        for &c in s.get(i + 1..i + len)? {
            if c & 0xC0 != 0x80 {
                return None;
            }
            cp = cp << 6 | u32::from(c & 0x3F);
        }
        let shortest = [0, 0, 0x80, 0x800, 0x10000][len];
        if cp < shortest || cp > 0x10FFFF {
            return None;
        }
        match tag {
            STR_LATIN1 => out.push(cp as u8), // at most 0xFF: the largest lead is 0xC3
            STR_UCS2 => out.extend_from_slice(&(cp as u16).to_le_bytes()), // no 4-byte sequence
            _ => out.extend_from_slice(&cp.to_le_bytes()),
        }
        count += 1;
        i += len;
    }
    Some(count)
}

/// Whether `payload` is a string of kind `tag` exactly as CPython makes it, which the builder copies
/// straight into a `str` of that kind: ASCII bytes for `STR_ASCII`; otherwise a largest code point that
/// needs the kind (so equal strings have equal kinds, as CPython's comparison and hashing assume) and
/// none above U+10FFFF. Lone surrogates are allowed, as in any Python `str`.
fn is_canonical_string(tag: u8, payload: &[u8]) -> bool {
    match tag {
        STR_ASCII => payload.is_ascii(),
        STR_LATIN1 => !payload.is_ascii(),
        STR_UCS2 => {
            let max = payload
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .fold(0, u16::max);
            max >= 0x100
        }
        STR_UCS4 => {
            let max = payload
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .fold(0, u32::max);
            (0x10000..=0x10FFFF).contains(&max)
        }
        _ => false,
    }
}

/// Whether `digits` is a JSON integer (an optional `-`, then digits without a leading zero), as the
/// encoder writes one: Python's `int()` would also accept spaces, underscores and more.
fn is_big_int(digits: &[u8]) -> bool {
    let digits = digits.strip_prefix(b"-").unwrap_or(digits);
    match digits {
        [b'1'..=b'9', rest @ ..] => rest.iter().all(u8::is_ascii_digit),
        [b'0'] => true,
        _ => false,
    }
}

/// Reads one whole tape as the Python builder (`to_python`) does: one value, nested at most
/// [`MAX_DEPTH`] deep, object keys that are strings, nothing after it. `None` for a tape that is not one
/// `Encoder` could have written, in any of the ways the builder relies on.
pub fn check(tape: &[u8]) -> Option<()> {
    fn value(r: &mut Reader<'_>, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match r.next()? {
            Item::Array(n) => (0..n).try_for_each(|_| value(r, depth + 1)),
            Item::Object(n) => (0..n).try_for_each(|_| {
                matches!(r.next()?, Item::Str(..)).then_some(())?;
                value(r, depth + 1)
            }),
            _ => Some(()),
        }
    }
    let mut r = Reader::new(tape);
    value(&mut r, 1)?;
    r.done().then_some(())
}

/// One item of a tape, as `Reader::next` returns it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Item<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// The decimal digits of an integer beyond an i64 (ASCII, perhaps with a leading `-`).
    BigInt(&'a [u8]),
    /// A string: its tag (`STR_ASCII`..`STR_UCS4`), code point count and payload bytes.
    Str(u8, usize, &'a [u8]),
    /// An array of this many items, which follow.
    Array(usize),
    /// An object of this many members (key, value), which follow.
    Object(usize),
}

/// Reads a tape item by item. Every read is bounds-checked and every string and big integer checked to
/// be as the encoder writes it (see `is_canonical_string`): a tape that is not one `Encoder` wrote
/// gives `None`, never a read outside it nor an item the Python builder could turn into an invalid
/// object.
pub struct Reader<'a> {
    tape: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub fn new(tape: &'a [u8]) -> Self {
        Reader { tape, at: 0 }
    }

    /// Whether the whole tape has been read.
    pub fn done(&self) -> bool {
        self.at == self.tape.len()
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let bytes = self.tape.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(bytes)
    }

    fn u32(&mut self) -> Option<usize> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize)
    }

    fn eight(&mut self) -> Option<[u8; 8]> {
        self.take(8)?.try_into().ok()
    }
}

impl<'a> Iterator for Reader<'a> {
    type Item = Item<'a>;

    /// The next item, or `None` at the end or on a malformed tape. A container's count is checked
    /// against the bytes left (each item takes at least one), so a caller may allocate it up front.
    #[inline]
    fn next(&mut self) -> Option<Item<'a>> {
        let tag = *self.take(1)?.first()?;
        Some(match tag {
            NULL => Item::Null,
            FALSE => Item::Bool(false),
            TRUE => Item::Bool(true),
            INT => Item::Int(i64::from_le_bytes(self.eight()?)),
            FLOAT => Item::Float(f64::from_le_bytes(self.eight()?)),
            BIG_INT => {
                let n = self.u32()?;
                let digits = self.take(n)?;
                is_big_int(digits).then_some(Item::BigInt(digits))?
            }
            STR_ASCII..=STR_UCS4 => {
                let n = self.u32()?;
                let width = match tag {
                    STR_UCS2 => 2,
                    STR_UCS4 => 4,
                    _ => 1,
                };
                let payload = self.take(n.checked_mul(width)?)?;
                is_canonical_string(tag, payload).then_some(Item::Str(tag, n, payload))?
            }
            ARRAY | OBJECT => {
                let n = self.u32()?;
                let least = if tag == OBJECT { n.checked_mul(2)? } else { n };
                if least > self.tape.len() - self.at {
                    return None;
                }
                if tag == OBJECT {
                    Item::Object(n)
                } else {
                    Item::Array(n)
                }
            }
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Map, Number, Value};

    fn tape(json: &str) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        Encoder::default().encode(json.as_bytes(), &mut out)?;
        Some(out)
    }

    /// A string's code points, checking that its tag is the narrowest that holds them.
    fn code_points(tag: u8, n: usize, payload: &[u8]) -> Vec<u32> {
        let cps: Vec<u32> = match tag {
            STR_UCS2 => payload
                .chunks_exact(2)
                .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            STR_UCS4 => payload
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            _ => payload.iter().map(|&b| u32::from(b)).collect(),
        };
        assert_eq!(cps.len(), n);
        let max = cps.iter().copied().max().unwrap_or(0);
        let exact = match tag {
            STR_ASCII => max < 0x80,
            STR_LATIN1 => (0x80..0x100).contains(&max),
            STR_UCS2 => (0x100..0x10000).contains(&max),
            _ => max >= 0x10000,
        };
        assert!(exact, "tag {tag} for a largest code point of {max:#x}");
        cps
    }

    fn value(r: &mut Reader<'_>) -> Value {
        match r.next().expect("a complete tape") {
            Item::Null => Value::Null,
            Item::Bool(b) => Value::Bool(b),
            Item::Int(i) => i.into(),
            Item::Float(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
            Item::BigInt(digits) => serde_json::from_slice(digits).unwrap(),
            Item::Str(tag, n, payload) => Value::String(
                code_points(tag, n, payload)
                    .into_iter()
                    .map(|c| char::from_u32(c).expect("no lone surrogate here"))
                    .collect(),
            ),
            Item::Array(n) => Value::Array((0..n).map(|_| value(r)).collect()),
            Item::Object(n) => {
                let mut map = Map::new();
                for _ in 0..n {
                    let Value::String(key) = value(r) else {
                        panic!("a key that is not a string")
                    };
                    map.insert(key, value(r));
                }
                Value::Object(map)
            }
        }
    }

    impl<'a> Reader<'a> {
        fn take_all(self) -> Vec<Item<'a>> {
            self.collect()
        }
    }

    fn decoded(json: &str) -> Value {
        let t = tape(json).unwrap_or_else(|| panic!("no tape for {json:?}"));
        let mut r = Reader::new(&t);
        let v = value(&mut r);
        assert!(r.done(), "bytes left after the value of {json:?}");
        v
    }

    /// The first string of a tape: its tag and code points.
    fn first_string(json: &str) -> (u8, Vec<u32>) {
        let t = tape(json).unwrap();
        let mut r = Reader::new(&t);
        loop {
            if let Item::Str(tag, n, payload) = r.next().unwrap() {
                return (tag, code_points(tag, n, payload));
            }
        }
    }

    /// JSON text with every non-ASCII character written as `\u` escapes (surrogate pairs beyond the BMP),
    /// as Python's `json.dumps` writes by default.
    fn ascii_escaped(json: &str) -> String {
        let mut out = String::new();
        for c in json.chars() {
            if c.is_ascii() {
                out.push(c);
            } else {
                for unit in c.encode_utf16(&mut [0; 2]) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
        out
    }

    #[test]
    fn numbers_read_as_python_reads_them() {
        let big = "123456789012345678901234567890";
        assert_eq!(decoded("-0"), Value::from(0));
        let t = tape(&format!("[{big}, -{big}]")).unwrap();
        let items: Vec<Item<'_>> = Reader::new(&t).take_all();
        let minus = format!("-{big}");
        assert_eq!(
            items,
            [
                Item::Array(2),
                Item::BigInt(big.as_bytes()),
                Item::BigInt(minus.as_bytes())
            ]
        );
        assert_eq!(decoded("9223372036854775807"), Value::from(i64::MAX));
        let t = tape("[-0.0, 1e400, 2.5E-3]").unwrap();
        let mut r = Reader::new(&t);
        assert_eq!(r.next(), Some(Item::Array(3)));
        let Some(Item::Float(z)) = r.next() else {
            panic!()
        };
        assert!(z == 0.0 && z.is_sign_negative());
        assert_eq!(r.next(), Some(Item::Float(f64::INFINITY)));
        assert_eq!(r.next(), Some(Item::Float(0.0025)));
        assert!(r.done());
    }

    #[test]
    fn strings_take_the_narrowest_exact_kind() {
        assert_eq!(
            first_string(r#""plain""#),
            (STR_ASCII, "plain".chars().map(u32::from).collect())
        );
        assert_eq!(first_string(r#""a\nb\"\\""#).0, STR_ASCII);
        assert_eq!(first_string(r#""café""#).0, STR_LATIN1);
        assert_eq!(first_string(r#""caf\u00e9""#).0, STR_LATIN1);
        assert_eq!(first_string(r#""ā""#).0, STR_UCS2);
        assert_eq!(first_string(r#""日本語""#).0, STR_UCS2);
        assert_eq!(first_string(r#""x😀""#), (STR_UCS4, vec![0x78, 0x1F600]));
        assert_eq!(first_string(r#""\ud83d\ude00""#), (STR_UCS4, vec![0x1F600]));
        assert_eq!(first_string(r#""""#), (STR_ASCII, vec![]));
    }

    #[test]
    fn lone_surrogates_stay_code_points() {
        assert_eq!(first_string(r#""\ud800""#), (STR_UCS2, vec![0xD800]));
        assert_eq!(
            first_string(r#""a\udc00\ud83dx""#),
            (STR_UCS2, vec![0x61, 0xDC00, 0xD83D, 0x78])
        );
        assert_eq!(
            first_string(r#""\ud83d\u0041""#),
            (STR_UCS2, vec![0xD83D, 0x41])
        );
        // Beside wider and narrower characters: the kind is still the narrowest exact one.
        assert_eq!(first_string(r#""é\ud800""#), (STR_UCS2, vec![0xE9, 0xD800]));
        assert_eq!(
            first_string(r#""😀\udfffé""#),
            (STR_UCS4, vec![0x1F600, 0xDFFF, 0xE9])
        );
    }

    #[test]
    fn repeated_keys_are_all_kept_in_order() {
        // The reader builds the dict; Python's last-wins rule then applies there.
        let t = tape(r#"{"a": 1, "a": 2}"#).unwrap();
        let mut r = Reader::new(&t);
        assert_eq!(r.next(), Some(Item::Object(2)));
        let items = r.take_all();
        assert_eq!(items[1], Item::Int(1));
        assert_eq!(items[3], Item::Int(2));
    }

    #[test]
    fn nesting_is_limited_as_the_scanner_limits_it() {
        let nested = |depth: usize| "[".repeat(depth) + &"]".repeat(depth);
        assert!(tape(&nested(MAX_DEPTH)).is_some());
        assert!(tape(&nested(MAX_DEPTH + 1)).is_none());
    }

    #[test]
    fn bytes_that_are_not_one_json_value_give_none() {
        for bad in [
            "",
            "{",
            r#"{"a" 1}"#,
            r#"{"a": 1,}"#,
            "[1 2]",
            "tru",
            "nul",
            "-",
            "1 2",
            r#""open"#,
            r#""bad \u12""#,
            "[1]x",
            r#"{1: 2}"#,
            // Numbers outside JSON's grammar, which Rust's parsers would take.
            "012",
            "00000000000000000000000000000000000000000000000000012297829382473034409",
            "-01",
            "+1",
            "1.",
            ".5",
            "1e",
            "1e+",
            "1.e5",
            "[1-2]",
        ] {
            assert!(tape(bad).is_none(), "{bad:?}");
        }
        let mut out = Vec::new();
        assert!(Encoder::default()
            .encode(b"\"\xff\xfe\"", &mut out)
            .is_none());
        assert!(Encoder::default()
            .encode(b"\"\\u00e9\xc3\"", &mut out)
            .is_none());
    }

    #[test]
    fn malformed_tapes_are_refused_without_reading_outside_them() {
        let good = tape(r#"{"k": ["v", 1, 2.5, null, 123456789012345678901]}"#).unwrap();
        let items = |t: &[u8]| Reader::new(t).take_all().len();
        assert_eq!(items(&good), 8);
        for cut in 0..good.len() {
            assert!(items(&good[..cut]) < 8, "a tape cut at {cut} read as whole");
        }
        // A count larger than the bytes left is refused before anything is allocated for it.
        let mut huge = vec![ARRAY];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Reader::new(&huge).next(), None);
        assert_eq!(Reader::new(&[42]).next(), None);
    }

    fn string_tape(tag: u8, count: u32, payload: &[u8]) -> Vec<u8> {
        let mut t = vec![tag];
        t.extend_from_slice(&count.to_le_bytes());
        t.extend_from_slice(payload);
        t
    }

    fn wide(tag: u8, cps: &[u32]) -> Vec<u8> {
        let payload: Vec<u8> = if tag == STR_UCS2 {
            cps.iter().flat_map(|&c| (c as u16).to_le_bytes()).collect()
        } else {
            cps.iter().flat_map(|&c| c.to_le_bytes()).collect()
        };
        string_tape(tag, cps.len() as u32, &payload)
    }

    #[test]
    fn strings_of_a_wrong_kind_or_range_are_refused() {
        for (what, bad) in [
            (
                "ASCII tag, UTF-8 bytes",
                string_tape(STR_ASCII, 2, "é".as_bytes()),
            ),
            ("ASCII tag, 0xFF", string_tape(STR_ASCII, 1, b"\xff")),
            ("Latin-1 tag, ASCII", string_tape(STR_LATIN1, 2, b"ab")),
            ("Latin-1 tag, empty", string_tape(STR_LATIN1, 0, b"")),
            ("UCS-2 tag, Latin-1", wide(STR_UCS2, &[0xE9])),
            ("UCS-2 tag, empty", wide(STR_UCS2, &[])),
            ("UCS-4 tag, BMP", wide(STR_UCS4, &[0xFFFF, 0x41])),
            ("UCS-4 tag, 0x110000", wide(STR_UCS4, &[0x1F600, 0x110000])),
            ("UCS-4 tag, 0x7FFFFFFF", wide(STR_UCS4, &[0x7FFF_FFFF])),
            ("UCS-4 tag, u32::MAX", wide(STR_UCS4, &[u32::MAX])),
            ("big integer, letters", string_tape(BIG_INT, 3, b"12a")),
            ("big integer, underscore", string_tape(BIG_INT, 5, b"1_000")),
            ("big integer, space", string_tape(BIG_INT, 3, b" 12")),
            ("big integer, leading zero", string_tape(BIG_INT, 3, b"012")),
            ("big integer, empty", string_tape(BIG_INT, 0, b"")),
            ("big integer, minus", string_tape(BIG_INT, 1, b"-")),
            ("big integer, NUL", string_tape(BIG_INT, 2, b"1\0")),
        ] {
            assert_eq!(Reader::new(&bad).next(), None, "{what}");
            assert_eq!(check(&bad), None, "{what}");
        }
        for good in [
            wide(STR_UCS2, &[0xD800]),
            wide(STR_UCS2, &[0x41, 0xDFFF, 0x100]),
            wide(STR_UCS4, &[0x10FFFF]),
            wide(STR_UCS4, &[0x41, 0xD800, 0x10000]),
            string_tape(STR_LATIN1, 1, b"\x80"),
            string_tape(STR_ASCII, 0, b""),
            string_tape(BIG_INT, 20, b"-9223372036854775809"),
        ] {
            assert!(matches!(
                Reader::new(&good).next(),
                Some(Item::Str(..) | Item::BigInt(_))
            ));
            assert_eq!(check(&good), Some(()), "{good:?}");
        }
    }

    #[test]
    fn whole_tapes_are_checked_as_the_builder_reads_them() {
        let nested = |depth: usize| {
            let mut t = Vec::new();
            for _ in 0..depth - 1 {
                t.extend_from_slice(&[ARRAY, 1, 0, 0, 0]);
            }
            t.push(NULL);
            t
        };
        assert_eq!(check(&nested(MAX_DEPTH)), Some(()));
        assert_eq!(check(&nested(MAX_DEPTH + 1)), None);
        let good = tape(r#"{"k": ["v", {"é": 1}]}"#).unwrap();
        assert_eq!(check(&good), Some(()));
        let mut extra = good.clone();
        extra.push(NULL);
        assert_eq!(check(&extra), None, "bytes after the value");
        // An object whose key is not a string.
        assert_eq!(
            check(&[OBJECT, 1, 0, 0, 0, INT, 0, 0, 0, 0, 0, 0, 0, 0, NULL]),
            None
        );
        assert_eq!(check(&[]), None);
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let text = prop_oneof![
            "[ -~]{0,12}",
            "[\\PC]{0,12}",
            prop::sample::select(vec![
                "\"",
                "\\",
                "\\\\\\\"",
                "é",
                "日本",
                "😀x",
                "\u{7f}",
                "\u{80}",
                "\u{ff}",
                "\u{100}",
                "\u{ffff}",
                "\u{10000}"
            ])
            .prop_map(String::from),
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            text.clone().prop_map(Value::String),
        ];
        leaf.prop_recursive(5, 64, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((text.clone(), inner), 0..6)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// The tape of any JSON value's text, compact, pretty or with every non-ASCII character escaped,
        /// reads back as that value (floats included: serde_json writes the shortest text that parses
        /// back to the same f64, and the tape parses correctly rounded, as Python does).
        #[test]
        fn tapes_read_back_as_the_json_value(v in json_value()) {
            let compact = serde_json::to_string(&v).unwrap();
            for text in [compact.clone(), serde_json::to_string_pretty(&v).unwrap(), ascii_escaped(&compact)] {
                prop_assert_eq!(&decoded(&text), &v);
                prop_assert_eq!(check(&tape(&text).unwrap()), Some(()));
            }
        }

        /// Arbitrary bytes, and damaged copies of real tapes, are checked without a panic; whatever is
        /// accepted holds only strings of their exact kind.
        #[test]
        fn any_bytes_are_checked_without_panic(
            v in json_value(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            noise in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut t = tape(&serde_json::to_string(&v).unwrap()).unwrap();
            for (at, byte) in &edits {
                let i = at.index(t.len());
                t[i] = *byte;
            }
            for bytes in [&t, &noise] {
                if check(bytes).is_some() {
                    for item in Reader::new(bytes) {
                        if let Item::Str(tag, n, payload) = item {
                            code_points(tag, n, payload);
                        }
                    }
                }
            }
        }
    }
}
