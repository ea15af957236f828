//! The tape decoder on arbitrary bytes: `tape::check`, the reading the Python builder relies on, never
//! panics, and every tape it accepts holds only strings a Python `str` of that kind may hold (checked
//! here independently of the reader) and big integers that are JSON integers. Also: whatever the
//! encoder writes for any bytes passes the check.
//!
//! Input: one control byte (bit 0: encode the rest as JSON first), then the bytes.
#![no_main]

use fusion_fast::tape::{check, Encoder, Item, Reader, STR_ASCII, STR_LATIN1, STR_UCS2, STR_UCS4};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&control, data)) = input.split_first() else {
        return;
    };
    if control & 1 == 1 {
        let mut tape = Vec::new();
        if Encoder::default().encode(data, &mut tape).is_some() {
            assert_eq!(
                check(&tape),
                Some(()),
                "the encoder wrote a tape the check refuses"
            );
            valid_items(&tape);
        }
        return;
    }
    if check(data).is_some() {
        valid_items(data);
    }
    // Item by item, the reader never panics either, accepted or not.
    for _ in Reader::new(data) {}
});

fn valid_items(tape: &[u8]) {
    for item in Reader::new(tape) {
        match item {
            Item::Str(tag, n, payload) => {
                let cps: Vec<u32> = match tag {
                    STR_UCS2 => payload
                        .chunks(2)
                        .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]])))
                        .collect(),
                    STR_UCS4 => payload
                        .chunks(4)
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
                    STR_UCS4 => (0x10000..=0x10FFFF).contains(&max),
                    _ => false,
                };
                assert!(exact, "tag {tag} with a largest code point of {max:#x}");
            }
            Item::BigInt(digits) => {
                let d = digits.strip_prefix(b"-").unwrap_or(digits);
                assert!(
                    !d.is_empty()
                        && d.iter().all(u8::is_ascii_digit)
                        && (d.len() == 1 || d[0] != b'0')
                );
            }
            _ => {}
        }
    }
}
