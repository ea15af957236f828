//! Reads one record, validating every byte of it and computing its metadata in the
//! same pass: image / video presence, image count, conversation turns and FUSION's word count.

use crate::json::{ParseResult, Reader};

/// Bits of the `flags` column.
pub mod flags {
    /// The record has the key `image` (any value, even `null`): FUSION adds 128 to its length.
    pub const HAS_IMAGE: u8 = 1;
    /// The record has the key `video`.
    pub const HAS_VIDEO: u8 = 2;
    /// `conversations` is missing or not a list: words = 0.
    pub const NO_CONVERSATIONS: u8 = 4;
    /// A turn is not an object or its `value` is missing or not a string: words = 0.
    pub const BAD_CONVERSATIONS: u8 = 8;
    /// The record is not a JSON object.
    pub const NOT_OBJECT: u8 = 16;
    /// `image` is neither a string, a list of strings nor null.
    pub const BAD_IMAGE: u8 = 32;
    /// A count did not fit its column and was clamped (more than 65535 images or turns).
    pub const SATURATED: u8 = 64;
}

/// The metadata of one record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordMeta {
    pub words: u32,
    pub images: u16,
    pub turns: u16,
    pub flags: u8,
}

#[derive(Clone, Copy)]
enum Key {
    Image,
    Video,
    Conversations,
    Other,
}

fn classify(key: &[u8]) -> Key {
    match key {
        b"image" => Key::Image,
        b"video" => Key::Video,
        b"conversations" => Key::Conversations,
        _ => Key::Other,
    }
}

fn clamp_u16(n: usize, flags: &mut u8) -> u16 {
    u16::try_from(n).unwrap_or_else(|_| {
        *flags |= flags::SATURATED;
        u16::MAX
    })
}

/// Reads the value at the reader's position (after optional whitespace), validating all of it, and
/// returns its metadata. Duplicate keys behave like Python's `json`: the last one wins.
pub fn read_record(r: &mut Reader<'_>) -> ParseResult<RecordMeta> {
    let mut meta = RecordMeta::default();
    if r.peek()? != b'{' {
        meta.flags |= flags::NOT_OBJECT | flags::NO_CONVERSATIONS;
        r.skip_value()?;
        return Ok(meta);
    }
    r.enter()?;
    let mut conversations_seen = false;
    let mut key = r.object_first(classify)?;
    while let Some(k) = key {
        match k {
            Key::Image => {
                meta.flags = (meta.flags | flags::HAS_IMAGE) & !flags::BAD_IMAGE;
                meta.images = read_image(r, &mut meta.flags)?;
            }
            Key::Video => {
                meta.flags |= flags::HAS_VIDEO;
                r.skip_value()?;
            }
            Key::Conversations => {
                conversations_seen = true;
                meta.flags &= !(flags::NO_CONVERSATIONS | flags::BAD_CONVERSATIONS);
                read_conversations(r, &mut meta)?;
            }
            Key::Other => r.skip_value()?,
        }
        key = r.object_next(classify)?;
    }
    r.leave();
    if !conversations_seen {
        meta.flags |= flags::NO_CONVERSATIONS;
    }
    Ok(meta)
}

/// `image`: a string counts 1, a list counts its length, null counts 0; anything else, or a list holding
/// anything but strings, is flagged.
fn read_image(r: &mut Reader<'_>, flags: &mut u8) -> ParseResult<u16> {
    match r.peek()? {
        b'"' => {
            r.skip_value()?;
            Ok(1)
        }
        b'[' => {
            r.enter()?;
            let mut n = 0usize;
            let mut more = r.array_first()?;
            while more {
                if r.peek()? != b'"' {
                    *flags |= flags::BAD_IMAGE; // a list of paths holds only strings
                }
                r.skip_value()?;
                n += 1;
                more = r.array_next()?;
            }
            r.leave();
            Ok(clamp_u16(n, flags))
        }
        b'n' => r.skip_value().map(|_| 0),
        _ => {
            *flags |= flags::BAD_IMAGE;
            r.skip_value().map(|_| 0)
        }
    }
}

/// `conversations`: counts turns and sums `len(turn["value"].split())`.
fn read_conversations(r: &mut Reader<'_>, meta: &mut RecordMeta) -> ParseResult<()> {
    meta.words = 0;
    meta.turns = 0;
    if r.peek()? != b'[' {
        meta.flags |= flags::NO_CONVERSATIONS;
        return r.skip_value();
    }
    r.enter()?;
    let mut words = 0u64;
    let mut bad = false;
    let mut turns = 0usize;
    let mut more = r.array_first()?;
    while more {
        turns += 1;
        if r.peek()? == b'{' {
            match read_turn(r)? {
                Some(w) => words += u64::from(w),
                None => bad = true,
            }
        } else {
            bad = true;
            r.skip_value()?;
        }
        more = r.array_next()?;
    }
    r.leave();
    meta.turns = clamp_u16(turns, &mut meta.flags);
    if bad {
        meta.flags |= flags::BAD_CONVERSATIONS;
    } else {
        meta.words = u32::try_from(words).unwrap_or_else(|_| {
            meta.flags |= flags::SATURATED;
            u32::MAX
        });
    }
    Ok(())
}

/// One turn object: the word count of its string `value`, or `None` when there is none.
fn read_turn(r: &mut Reader<'_>) -> ParseResult<Option<u32>> {
    r.enter()?;
    let mut words = None;
    let is_value = |k: &[u8]| k == b"value";
    let mut key = r.object_first(is_value)?;
    while let Some(value) = key {
        if value {
            words = if r.peek()? == b'"' {
                Some(r.string_words()?)
            } else {
                r.skip_value()?;
                None
            };
        } else {
            r.skip_value()?;
        }
        key = r.object_next(is_value)?;
    }
    r.leave();
    Ok(words)
}
