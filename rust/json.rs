//! A validating pull reader for one JSON value (RFC 8259), tuned for the scan.
//!
//! A general-purpose parser such as jiter builds values the scan never uses and cannot keep up with
//! it, so this reader validates string bodies 16 bytes at a time (SSE2) and counts FUSION's words
//! while it validates, without unescaping. It accepts exactly RFC 8259 JSON: no NaN / Infinity, no comments,
//! no trailing commas, no raw control characters in strings, valid UTF-8, escapes `\" \\ \/ \b \f \n
//! \r \t \uXXXX` (lone surrogate escapes are accepted, as Python's `json` accepts them). Nesting is
//! limited to [`MAX_DEPTH`] (`to_python`, which turns records into Python objects, uses the same limit).

use crate::words::is_python_space;

/// Deepest nesting accepted, counting the record itself as depth 1.
pub const MAX_DEPTH: usize = 200;

/// A syntax error: byte offset (relative to the reader's slice) and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub index: usize,
    pub message: &'static str,
}

pub type ParseResult<T> = Result<T, SyntaxError>;

/// The offset of the first non-whitespace byte at or after `i` (JSON whitespace: space, tab, CR, LF).
/// Pretty-printed files indent every line with runs of spaces, skipped eight at a time after a newline.
#[inline]
pub fn skip_whitespace(d: &[u8], mut i: usize) -> usize {
    while let Some(&b) = d.get(i) {
        match b {
            b' ' | b'\t' | b'\r' => i += 1,
            b'\n' => {
                i += 1;
                while d.get(i..i + 8) == Some(b"        ") {
                    i += 8;
                }
            }
            _ => break,
        }
    }
    i
}

/// Word-count state carried through one string: `len(s.split())` of its decoded text.
#[derive(Default)]
struct WordCount {
    words: u32,
    in_word: bool,
}

impl WordCount {
    #[inline]
    fn char(&mut self, space: bool) {
        self.words += (!space && !self.in_word) as u32;
        self.in_word = !space;
    }

    /// The first `n` bytes of a block at once: bit k of `nonspace` is set when byte k is not a space.
    #[inline(always)]
    fn block(&mut self, nonspace: u64, n: u32) {
        let valid = if n >= 64 { u64::MAX } else { (1u64 << n) - 1 };
        let nonspace = nonspace & valid;
        let prev = (nonspace << 1) | u64::from(self.in_word);
        self.words += (nonspace & !prev).count_ones();
        if n > 0 {
            self.in_word = (nonspace >> (n - 1)) & 1 != 0;
        }
    }
}

pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    /// Open containers while skipping a value: true for objects.
    stack: Vec<bool>,
    /// Decoded bytes of an escaped object key, for comparing it.
    key_buf: Vec<u8>,
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Reader {
            data,
            pos: 0,
            stack: Vec::new(),
            key_buf: Vec::new(),
        }
    }

    /// Starts reading `data` at offset 0, keeping this reader's buffers.
    pub fn reset(&mut self, data: &'a [u8]) {
        self.data = data;
        self.pos = 0;
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    fn err<T>(&self, index: usize, message: &'static str) -> ParseResult<T> {
        Err(SyntaxError { index, message })
    }

    /// Skips whitespace and returns the next byte without consuming it.
    #[inline]
    pub fn peek(&mut self) -> ParseResult<u8> {
        self.pos = skip_whitespace(self.data, self.pos);
        match self.data.get(self.pos) {
            Some(&b) => Ok(b),
            None => self.err(self.pos, "unexpected end of input: expected a value"),
        }
    }

    /// Consumes `{` and the first key; `None` for an empty object. `classify` sees the decoded key.
    pub fn object_first<K>(&mut self, classify: impl Fn(&[u8]) -> K) -> ParseResult<Option<K>> {
        self.pos += 1; // '{'
        match self.peek_or("unexpected end of input: expected a key or '}'")? {
            b'}' => {
                self.pos += 1;
                Ok(None)
            }
            b'"' => self.key(classify).map(Some),
            _ => self.err(self.pos, "expected a string key or '}'"),
        }
    }

    /// After a value in an object: the next key, or `None` at `}`.
    pub fn object_next<K>(&mut self, classify: impl Fn(&[u8]) -> K) -> ParseResult<Option<K>> {
        match self.peek_or("unexpected end of input: expected ',' or '}' in object")? {
            b',' => {
                self.pos += 1;
                match self.peek_or("unexpected end of input: expected a key")? {
                    b'"' => self.key(classify).map(Some),
                    _ => self.err(
                        self.pos,
                        "expected a string key after ',' (no trailing commas)",
                    ),
                }
            }
            b'}' => {
                self.pos += 1;
                Ok(None)
            }
            _ => self.err(self.pos, "expected ',' or '}' in object"),
        }
    }

    /// Consumes `[`; returns whether an element follows.
    pub fn array_first(&mut self) -> ParseResult<bool> {
        self.pos += 1; // '['
        match self.peek_or("unexpected end of input: expected a value or ']'")? {
            b']' => {
                self.pos += 1;
                Ok(false)
            }
            _ => Ok(true),
        }
    }

    /// After an array element: whether another one follows.
    pub fn array_next(&mut self) -> ParseResult<bool> {
        match self.peek_or("unexpected end of input: expected ',' or ']' in array")? {
            b',' => {
                self.pos += 1;
                match self.peek_or("unexpected end of input: expected a value")? {
                    b']' => self.err(self.pos, "expected a value after ',' (no trailing commas)"),
                    _ => Ok(true),
                }
            }
            b']' => {
                self.pos += 1;
                Ok(false)
            }
            _ => self.err(self.pos, "expected ',' or ']' in array"),
        }
    }

    fn peek_or(&mut self, eof_message: &'static str) -> ParseResult<u8> {
        self.peek().or_else(|_| self.err(self.pos, eof_message))
    }

    /// Reads an object key and the `:` after it.
    fn key<K>(&mut self, classify: impl Fn(&[u8]) -> K) -> ParseResult<K> {
        let start = self.pos + 1;
        let escaped = self.string_body(None)?;
        let raw = &self.data[start..self.pos - 1];
        let k = if escaped {
            let mut buf = std::mem::take(&mut self.key_buf);
            buf.clear();
            unescape_into(raw, &mut buf);
            let k = classify(&buf);
            self.key_buf = buf;
            k
        } else {
            classify(raw)
        };
        match self.peek_or("unexpected end of input: expected ':'")? {
            b':' => {
                self.pos += 1;
                Ok(k)
            }
            _ => self.err(self.pos, "expected ':' after object key"),
        }
    }

    /// Consumes a string (the next byte is `"`) and returns `len(decoded.split())`.
    pub fn string_words(&mut self) -> ParseResult<u32> {
        let mut wc = WordCount::default();
        self.string_body(Some(&mut wc))?;
        Ok(wc.words)
    }

    /// Consumes any value, validating it.
    pub fn skip_value(&mut self) -> ParseResult<()> {
        let base = self.stack.len();
        loop {
            // Expecting a value.
            match self.peek()? {
                b'"' => {
                    self.string_body(None)?;
                }
                b'{' => {
                    if self.object_first(|_| ())?.is_some() {
                        self.push(true)?;
                        continue;
                    }
                }
                b'[' => {
                    if self.array_first()? {
                        self.push(false)?;
                        continue;
                    }
                }
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                b'-' | b'0'..=b'9' => self.number()?,
                b'N' | b'I' => return self.err(self.pos, "NaN and Infinity are not valid JSON"),
                _ => return self.err(self.pos, "expected a value"),
            }
            // After a value: close finished containers, or move to the next element.
            loop {
                if self.stack.len() == base {
                    return Ok(());
                }
                let in_object = *self.stack.last().unwrap();
                let more = if in_object {
                    self.object_next(|_| ())?.is_some()
                } else {
                    self.array_next()?
                };
                if more {
                    break;
                }
                self.stack.pop();
            }
        }
    }

    fn push(&mut self, is_object: bool) -> ParseResult<()> {
        if self.stack.len() >= MAX_DEPTH {
            return self.err(self.pos, "nesting too deep (more than 200 levels)");
        }
        self.stack.push(is_object);
        Ok(())
    }

    /// Depth of the containers the record walker has open, so `skip_value` respects `MAX_DEPTH`.
    pub fn enter(&mut self) -> ParseResult<()> {
        self.push(true)
    }

    pub fn leave(&mut self) {
        self.stack.pop();
    }

    fn literal(&mut self, lit: &'static [u8]) -> ParseResult<()> {
        if self.data[self.pos..].starts_with(lit) {
            self.pos += lit.len();
            Ok(())
        } else {
            self.err(self.pos, "expected a value (true, false or null)")
        }
    }

    fn number(&mut self) -> ParseResult<()> {
        let d = self.data;
        let mut i = self.pos;
        let digits = |i: &mut usize| {
            let s = *i;
            while *i < d.len() && d[*i].is_ascii_digit() {
                *i += 1;
            }
            *i - s
        };
        if d[i] == b'-' {
            i += 1;
        }
        match d.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                digits(&mut i);
            }
            Some(b'I') => return self.err(i, "Infinity is not valid JSON"),
            _ => return self.err(i, "invalid number: expected a digit"),
        }
        if d.get(i) == Some(&b'.') {
            i += 1;
            if digits(&mut i) == 0 {
                return self.err(i, "invalid number: expected a digit after '.'");
            }
        }
        if matches!(d.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(d.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            if digits(&mut i) == 0 {
                return self.err(i, "invalid number: expected a digit in the exponent");
            }
        }
        self.pos = i;
        Ok(())
    }

    /// Consumes a string whose opening quote is at `pos`; leaves `pos` after the closing quote.
    /// Returns whether it contained escapes. Counts words into `wc` when given.
    fn string_body(&mut self, mut wc: Option<&mut WordCount>) -> ParseResult<bool> {
        let d = self.data;
        let mut i = self.pos + 1;
        let mut escaped = false;
        loop {
            i = plain_run(d, i, wc.as_deref_mut());
            let Some(&b) = d.get(i) else {
                return self.err(
                    d.len(),
                    "unexpected end of input inside a string: expected '\"'",
                );
            };
            match b {
                b'"' => {
                    self.pos = i + 1;
                    return Ok(escaped);
                }
                b'\\' => {
                    escaped = true;
                    let (cp, len) = match d.get(i + 1) {
                        Some(b'"') => ('"' as u32, 2),
                        Some(b'\\') => ('\\' as u32, 2),
                        Some(b'/') => ('/' as u32, 2),
                        Some(b'b') => (0x08, 2),
                        Some(b'f') => (0x0C, 2),
                        Some(b'n') => (0x0A, 2),
                        Some(b'r') => (0x0D, 2),
                        Some(b't') => (0x09, 2),
                        Some(b'u') => match hex4(d, i + 2) {
                            Some(cp) => (cp, 6),
                            None => {
                                return self.err(i, "invalid \\u escape: expected 4 hex digits")
                            }
                        },
                        None => {
                            return self.err(d.len(), "unexpected end of input inside a string")
                        }
                        Some(_) => return self.err(
                            i,
                            "invalid escape: expected one of \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\u",
                        ),
                    };
                    if let Some(w) = wc.as_deref_mut() {
                        // Surrogates (halves of a pair) are never whitespace.
                        w.char(char::from_u32(cp).is_some_and(is_python_space));
                    }
                    i += len;
                }
                0x00..=0x1F => return self.err(
                    i,
                    "raw control character in string: it must be escaped (e.g. \\n, \\t, \\u0000)",
                ),
                _ => {
                    // Non-ASCII: a run of bytes >= 0x80 is valid UTF-8 exactly when it decodes alone,
                    // since ASCII bytes always stand alone.
                    let end = d[i..]
                        .iter()
                        .position(|&c| c < 0x80)
                        .map_or(d.len(), |k| i + k);
                    match std::str::from_utf8(&d[i..end]) {
                        Ok(s) => {
                            if let Some(w) = wc.as_deref_mut() {
                                for c in s.chars() {
                                    w.char(is_python_space(c));
                                }
                            }
                        }
                        Err(e) => return self.err(i + e.valid_up_to(), "invalid UTF-8 in string"),
                    }
                    i = end;
                }
            }
        }
    }
}

fn hex4(d: &[u8], i: usize) -> Option<u32> {
    let h = d.get(i..i + 4)?;
    let mut v = 0u32;
    for &c in h {
        v = v * 16 + (c as char).to_digit(16)?;
    }
    Some(v)
}

/// A JSON number as Python's `json` reads it: an `int` without fraction or exponent (beyond an i64,
/// its decimal digits, for Python's `int`), else a `float` (correctly rounded; beyond the range, an
/// infinity).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number<'a> {
    Int(i64),
    Float(f64),
    /// ASCII digits, perhaps after a `-`.
    Big(&'a [u8]),
}

/// The validated number that starts at `i`, and the offset after it; `None` when the bytes there are
/// not one (they changed since validation).
pub fn read_number(d: &[u8], i: usize) -> Option<(Number<'_>, usize)> {
    // JSON's grammar, checked as it is read (`-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`):
    // Rust's parsers alone would also take `+1`, `01`, `1.` or `.5`.
    let digits = |mut end: usize| {
        let start = end;
        while d.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
        (end > start).then_some(end)
    };
    let mut end = i + usize::from(d.get(i) == Some(&b'-'));
    end = match d.get(end)? {
        b'0' => end + 1,
        b'1'..=b'9' => digits(end)?,
        _ => return None,
    };
    let mut is_float = false;
    if d.get(end) == Some(&b'.') {
        is_float = true;
        end = digits(end + 1)?;
    }
    if matches!(d.get(end), Some(b'e' | b'E')) {
        is_float = true;
        end += 1;
        end += usize::from(matches!(d.get(end), Some(b'+' | b'-')));
        end = digits(end)?;
    }
    // Only ASCII digits and signs were taken.
    let text = std::str::from_utf8(&d[i..end]).ok()?;
    let number = if is_float {
        // Rust's parser rounds correctly, like Python's float(); huge exponents give inf, as in Python.
        Number::Float(text.parse().ok()?)
    } else if let Ok(v) = text.parse::<i64>() {
        Number::Int(v)
    } else {
        Number::Big(text.as_bytes())
    };
    Some((number, end))
}

/// Decodes the escapes of a validated string body (the bytes between the quotes) into UTF-8, writing a
/// lone surrogate as its 3-byte form (as Python's "surrogatepass" reads it back). Returns whether any
/// lone surrogate was written, or `None` when the body is not a valid one (it changed since validation).
pub fn unescape_into(raw: &[u8], out: &mut Vec<u8>) -> Option<bool> {
    let mut surrogates = false;
    let mut i = 0;
    while i < raw.len() {
        let k = memchr::memchr(b'\\', &raw[i..]).map_or(raw.len(), |k| i + k);
        out.extend_from_slice(&raw[i..k]);
        if k == raw.len() {
            break;
        }
        i = k + 2;
        let c = match *raw.get(k + 1)? {
            b'b' => 0x08,
            b'f' => 0x0C,
            b'n' => 0x0A,
            b'r' => 0x0D,
            b't' => 0x09,
            b'u' => {
                let mut cp = hex4(raw, i)?;
                i += 4;
                if (0xD800..0xDC00).contains(&cp) && raw.get(i..i + 2) == Some(b"\\u") {
                    if let Some(lo) = hex4(raw, i + 2).filter(|lo| (0xDC00..0xE000).contains(lo)) {
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                        i += 6;
                    }
                }
                if (0xD800..0xE000).contains(&cp) {
                    surrogates = true;
                    out.extend_from_slice(&[
                        0xE0 | (cp >> 12) as u8,
                        0x80 | ((cp >> 6) & 0x3F) as u8,
                        0x80 | (cp & 0x3F) as u8,
                    ]);
                } else {
                    out.extend_from_slice(char::from_u32(cp)?.encode_utf8(&mut [0; 4]).as_bytes());
                }
                continue;
            }
            other => other,
        };
        out.push(c);
    }
    Some(surrogates)
}

/// Advances over plain string bytes (printable ASCII other than `"` and `\\`), counting words,
/// and returns the offset of the first other byte (or the end). Inside such a run the only character
/// Python's `split()` splits on is the space: the others are control characters, escaped in JSON.
/// Uses the widest vectors the CPU offers (checked at run time: one build serves every x86_64 CPU).
#[inline]
fn plain_run(d: &[u8], i: usize, wc: Option<&mut WordCount>) -> usize {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512bw") {
        // SAFETY: the CPU has AVX-512BW (and so AVX-512F), checked just above.
        return unsafe { plain_run_avx512(d, i, wc) };
    }
    plain_run_sse2(d, i, wc)
}

/// `plain_run` 64 bytes at a time: each comparison yields its 64-bit mask directly.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,popcnt,bmi1")]
fn plain_run_avx512(d: &[u8], mut i: usize, mut wc: Option<&mut WordCount>) -> usize {
    use std::arch::x86_64::*;
    while i + 64 <= d.len() {
        // SAFETY: the load reads the 64 bytes d[i..i + 64]; the caller checked the CPU's features.
        let (special, spaces) = unsafe {
            let v = _mm512_loadu_si512(d.as_ptr().add(i) as *const __m512i);
            let eq = |c: u8| _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8(c as i8));
            // Quotes, backslashes, control characters and non-ASCII (high bit set) end the run.
            let special = eq(b'"')
                | eq(b'\\')
                | _mm512_cmplt_epu8_mask(v, _mm512_set1_epi8(0x20))
                | _mm512_movepi8_mask(v);
            (special, eq(b' '))
        };
        let n = special.trailing_zeros(); // 64 when the whole block is plain
        if let Some(w) = wc.as_deref_mut() {
            w.block(!spaces, n);
        }
        i += n as usize;
        if n < 64 {
            return i;
        }
    }
    plain_run_sse2(d, i, wc)
}

/// `plain_run` 16 bytes at a time (SSE2 is part of the x86_64 baseline), then byte by byte.
#[inline(always)]
fn plain_run_sse2(d: &[u8], mut i: usize, mut wc: Option<&mut WordCount>) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: SSE2 is part of the x86_64 baseline; loads are unaligned and stay within `d`.
        unsafe {
            use std::arch::x86_64::*;
            let quote = _mm_set1_epi8(b'"' as i8);
            let backslash = _mm_set1_epi8(b'\\' as i8);
            let space = _mm_set1_epi8(b' ' as i8);
            let bias = _mm_set1_epi8(-128i8);
            // Bytes < 0x20 or >= 0x80: with a bias of 0x80, signed (b ^ 0x80) < (0x20 ^ 0x80).
            let low = _mm_set1_epi8((0x20u8 ^ 0x80) as i8);
            while i + 16 <= d.len() {
                let v = _mm_loadu_si128(d.as_ptr().add(i) as *const __m128i);
                let special = _mm_or_si128(
                    _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)),
                    _mm_or_si128(_mm_cmplt_epi8(_mm_xor_si128(v, bias), low), v), // high bit set
                );
                let special_mask = _mm_movemask_epi8(special) as u32;
                let n = if special_mask == 0 {
                    16
                } else {
                    special_mask.trailing_zeros()
                };
                if let Some(w) = wc.as_deref_mut() {
                    let spaces = _mm_movemask_epi8(_mm_cmpeq_epi8(v, space)) as u64;
                    w.block(!spaces, n);
                }
                i += n as usize;
                if n < 16 {
                    return i;
                }
            }
        }
    }
    while i < d.len() {
        let b = d[i];
        if b == b'"' || b == b'\\' || !(0x20..0x80).contains(&b) {
            break;
        }
        if let Some(w) = wc.as_deref_mut() {
            w.char(b == b' ');
        }
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skip(s: &str) -> ParseResult<usize> {
        let mut r = Reader::new(s.as_bytes());
        r.skip_value().map(|_| r.position())
    }

    fn words(s: &str) -> u32 {
        Reader::new(s.as_bytes()).string_words().unwrap()
    }

    #[test]
    fn accepts_and_rejects_like_rfc8259() {
        for ok in [
            "0",
            "-0.5e+3",
            "\"a\\u00e9\\n\"",
            "[1, [2, {\"a\": null}], true, false]",
            "{}",
            "[]",
            "\"\\ud800\"",
        ] {
            assert_eq!(skip(ok), Ok(ok.len()), "{ok}");
        }
        for bad in [
            "01",
            "1.",
            "-",
            "NaN",
            "Infinity",
            "[1,]",
            "{\"a\":1,}",
            "\"\t\"",
            "\"\\x\"",
            "tru",
            "{'a': 1}",
            "[1 2]",
            "\"abc",
        ] {
            assert!(skip(bad) != Ok(bad.len()), "{bad}");
        }
    }

    #[test]
    fn word_count_matches_python_split() {
        assert_eq!(words(r#""a b  c""#), 3);
        assert_eq!(words(r#""<image>\nWhat is   this?""#), 4);
        assert_eq!(words(r#""a\u001cb\u00a0c\td\u3000e""#), 5);
        assert_eq!(words("\"x\u{a0}y\u{2003}z\""), 3);
        assert_eq!(words(r#""  ""#), 0);
        assert_eq!(words(r#""a\bb""#), 1); // backspace is not whitespace
        let long = format!("\"{}\"", "word ".repeat(100));
        assert_eq!(words(&long), 100);
    }

    #[test]
    fn every_vector_width_gives_the_same_run() {
        // Pseudo-random bytes: letters, spaces, the bytes that end a run, and a UTF-8 lead byte.
        let alphabet = b"ab  \"\\\x1f\xc3z~";
        let mut next = crate::test_support::xorshift(0x9E37_79B9_7F4A_7C15);
        for len in [0usize, 1, 15, 16, 17, 63, 64, 65, 130, 300] {
            for _ in 0..200 {
                // Mostly plain bytes, so that runs are long enough to cross vector widths.
                let doc: Vec<u8> = (0..len)
                    .map(|_| match next() % 40 {
                        0..=5 => alphabet[(next() % alphabet.len() as u64) as usize],
                        k if k % 5 == 0 => b' ',
                        _ => b'w',
                    })
                    .collect();
                for start in [0, len / 3] {
                    for in_word in [false, true] {
                        let (mut a, mut b) = (WordCount::default(), WordCount::default());
                        a.in_word = in_word;
                        b.in_word = in_word;
                        // On this CPU `plain_run` may take the AVX-512 path; SSE2 is the base.
                        let end = plain_run_sse2(&doc, start, Some(&mut a));
                        assert_eq!(plain_run(&doc, start, Some(&mut b)), end);
                        assert_eq!((a.words, a.in_word), (b.words, b.in_word));
                        let scalar = doc[start..]
                            .iter()
                            .position(|&c| c == b'"' || c == b'\\' || !(0x20..0x80).contains(&c))
                            .map_or(len, |k| start + k);
                        assert_eq!(end, scalar);
                        let text = std::str::from_utf8(&doc[start..end]).unwrap();
                        let words = text.split(' ').filter(|w| !w.is_empty()).count() as u32;
                        let joined = in_word && text.starts_with(|c| c != ' ');
                        assert_eq!(a.words, words - u32::from(joined));
                    }
                }
            }
        }
    }

    #[test]
    fn depth_is_limited_without_recursion() {
        let deep = "[".repeat(100_000);
        assert!(skip(&deep).is_err());
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(skip(&ok), Ok(ok.len()));
    }
}
