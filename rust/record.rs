//! Reads one record with jiter, validating every byte of it and computing its metadata in the
//! same pass: image / video presence, image count, conversation turns and FUSION's word count.

use jiter::{Jiter, JiterError, Peek};

use crate::words::count_words;

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
    /// `image` is neither a string, a list nor null.
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

enum Key {
    Image,
    Video,
    Conversations,
    Other,
}

fn classify(key: &str) -> Key {
    match key {
        "image" => Key::Image,
        "video" => Key::Video,
        "conversations" => Key::Conversations,
        _ => Key::Other,
    }
}

fn clamp_u16(n: usize, flags: &mut u8) -> u16 {
    u16::try_from(n).unwrap_or_else(|_| {
        *flags |= flags::SATURATED;
        u16::MAX
    })
}

/// Parses the value at the start of `jiter` (after leading whitespace) and returns its metadata.
/// Duplicate keys behave like Python's `json`: the last one wins.
pub fn read_record(jiter: &mut Jiter<'_>) -> Result<RecordMeta, JiterError> {
    let mut meta = RecordMeta::default();
    let peek = jiter.peek()?;
    if peek != Peek::Object {
        meta.flags |= flags::NOT_OBJECT | flags::NO_CONVERSATIONS;
        jiter.known_skip(peek)?;
        return Ok(meta);
    }
    let mut conversations_seen = false;
    let mut key = jiter.known_object()?.map(classify);
    while let Some(k) = key {
        match k {
            Key::Image => {
                meta.flags = (meta.flags | flags::HAS_IMAGE) & !flags::BAD_IMAGE;
                meta.images = read_image(jiter, &mut meta.flags)?;
            }
            Key::Video => {
                meta.flags |= flags::HAS_VIDEO;
                jiter.next_skip()?;
            }
            Key::Conversations => {
                conversations_seen = true;
                meta.flags &= !(flags::NO_CONVERSATIONS | flags::BAD_CONVERSATIONS);
                read_conversations(jiter, &mut meta)?;
            }
            Key::Other => jiter.next_skip()?,
        }
        key = jiter.next_key()?.map(classify);
    }
    if !conversations_seen {
        meta.flags |= flags::NO_CONVERSATIONS;
    }
    Ok(meta)
}

/// `image`: a string counts 1, a list counts its length, null counts 0, anything else is flagged.
fn read_image(jiter: &mut Jiter<'_>, flags: &mut u8) -> Result<u16, JiterError> {
    let peek = jiter.peek()?;
    if peek == Peek::String {
        jiter.known_skip(peek)?;
        Ok(1)
    } else if peek == Peek::Array {
        let mut n = 0usize;
        let mut item = jiter.known_array()?;
        while let Some(p) = item {
            jiter.known_skip(p)?;
            n += 1;
            item = jiter.array_step()?;
        }
        Ok(clamp_u16(n, flags))
    } else {
        if peek != Peek::Null {
            *flags |= flags::BAD_IMAGE;
        }
        jiter.known_skip(peek)?;
        Ok(0)
    }
}

/// `conversations`: counts turns and sums `len(turn["value"].split())`.
fn read_conversations(jiter: &mut Jiter<'_>, meta: &mut RecordMeta) -> Result<(), JiterError> {
    let peek = jiter.peek()?;
    meta.words = 0;
    meta.turns = 0;
    if peek != Peek::Array {
        meta.flags |= flags::NO_CONVERSATIONS;
        return jiter.known_skip(peek);
    }
    let mut words = 0u64;
    let mut bad = false;
    let mut turns = 0usize;
    let mut item = jiter.known_array()?;
    while let Some(p) = item {
        turns += 1;
        if p == Peek::Object {
            match read_turn(jiter)? {
                Some(w) => words += u64::from(w),
                None => bad = true,
            }
        } else {
            bad = true;
            jiter.known_skip(p)?;
        }
        item = jiter.array_step()?;
    }
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
fn read_turn(jiter: &mut Jiter<'_>) -> Result<Option<u32>, JiterError> {
    let mut words = None;
    let mut key = jiter.known_object()?.map(|k| k == "value");
    while let Some(is_value) = key {
        if is_value {
            let peek = jiter.peek()?;
            words = if peek == Peek::String {
                Some(count_words(jiter.known_str()?))
            } else {
                jiter.known_skip(peek)?;
                None
            };
        } else {
            jiter.next_skip()?;
        }
        key = jiter.next_key()?.map(|k| k == "value");
    }
    Ok(words)
}
