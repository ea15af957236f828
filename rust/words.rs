//! Word counting exactly like Python's `len(s.split())`.
//!
//! `str.split()` with no argument splits on the 29 code points for which `str.isspace()` is true
//! (CPython 3.11). Rust's `char::is_whitespace` lacks U+001C..U+001F, so the set is spelled out.

/// ASCII bytes that Python's `str.isspace()` accepts: \t \n \v \f \r, the four separators
/// U+001C..U+001F, and space.
const fn ascii_space_table() -> [bool; 128] {
    let mut table = [false; 128];
    let mut b = 0x09;
    while b <= 0x0D {
        table[b] = true;
        b += 1;
    }
    let mut b = 0x1C;
    while b <= 0x20 {
        table[b] = true;
        b += 1;
    }
    table
}
static ASCII_SPACE: [bool; 128] = ascii_space_table();

/// Whether Python's `str.isspace()` is true for `c`.
#[inline]
pub fn is_python_space(c: char) -> bool {
    let c = c as u32;
    if c < 128 {
        return ASCII_SPACE[c as usize];
    }
    matches!(
        c,
        0x85 | 0xA0 | 0x1680 | 0x2000..=0x200A | 0x2028 | 0x2029 | 0x202F | 0x205F | 0x3000
    )
}

/// `len(s.split())` in Python.
pub fn count_words(s: &str) -> u32 {
    let mut words = 0u32;
    let mut in_word = false;
    if s.is_ascii() {
        for &b in s.as_bytes() {
            let space = ASCII_SPACE[b as usize];
            words += (!space & !in_word) as u32;
            in_word = !space;
        }
    } else {
        for c in s.chars() {
            let space = is_python_space(c);
            words += (!space & !in_word) as u32;
            in_word = !space;
        }
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_python_split_on_examples() {
        assert_eq!(count_words(""), 0);
        assert_eq!(count_words("   "), 0);
        assert_eq!(count_words("<image>\nWhat is this?"), 4);
        assert_eq!(count_words("a\u{1c}b\u{1f}c"), 3);
        assert_eq!(count_words("a\u{85}b\u{a0}c\u{3000}d"), 4);
        assert_eq!(count_words("a\u{200b}b"), 1); // zero-width space is not whitespace
        assert_eq!(count_words("日本 語"), 2);
    }

    #[test]
    fn space_set_has_29_code_points() {
        let n = (0..=0x10FFFFu32)
            .filter_map(char::from_u32)
            .filter(|&c| is_python_space(c))
            .count();
        assert_eq!(n, 29);
    }
}
