//! The per-record columns the scan produces and the index stores.

use crate::record::RecordMeta;

/// Columns for a run of consecutive records, one entry per record in each vector.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Records {
    /// Byte offset of the record's first byte in the source file.
    pub offset: Vec<u64>,
    /// Byte length of the record (without surrounding whitespace or separators).
    pub length: Vec<u32>,
    /// `sum(len(turn["value"].split()) for turn in record["conversations"])`, 0 when flagged.
    pub words: Vec<u32>,
    /// Number of images: a string counts 1, a list its length.
    pub images: Vec<u16>,
    /// Number of conversation turns.
    pub turns: Vec<u16>,
    /// Bits from [`crate::record::flags`].
    pub flags: Vec<u8>,
}

/// Element type of a stored column, as numpy names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    U8,
    U16,
    U32,
    U64,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::U8 => 1,
            DType::U16 => 2,
            DType::U32 => 4,
            DType::U64 => 8,
        }
    }
    pub fn code(self) -> u8 {
        self.size() as u8
    }
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(DType::U8),
            2 => Some(DType::U16),
            4 => Some(DType::U32),
            8 => Some(DType::U64),
            _ => None,
        }
    }
    /// The numpy dtype string (little-endian).
    pub fn numpy(self) -> &'static str {
        match self {
            DType::U8 => "|u1",
            DType::U16 => "<u2",
            DType::U32 => "<u4",
            DType::U64 => "<u8",
        }
    }
}

/// Column names and types, in storage order.
pub const COLUMNS: [(&str, DType); 6] = [
    ("offset", DType::U64),
    ("length", DType::U32),
    ("words", DType::U32),
    ("images", DType::U16),
    ("turns", DType::U16),
    ("flags", DType::U8),
];

fn le_bytes<T: Copy, const N: usize>(values: &[T], to_le: fn(T) -> [u8; N]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * N);
    for &v in values {
        out.extend_from_slice(&to_le(v));
    }
    out
}

impl Records {
    pub fn len(&self) -> usize {
        self.offset.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offset.is_empty()
    }

    pub fn push(&mut self, offset: u64, length: u32, meta: RecordMeta) {
        self.offset.push(offset);
        self.length.push(length);
        self.words.push(meta.words);
        self.images.push(meta.images);
        self.turns.push(meta.turns);
        self.flags.push(meta.flags);
    }

    pub fn shrink_to_fit(&mut self) {
        self.offset.shrink_to_fit();
        self.length.shrink_to_fit();
        self.words.shrink_to_fit();
        self.images.shrink_to_fit();
        self.turns.shrink_to_fit();
        self.flags.shrink_to_fit();
    }

    /// Joins consecutive runs into one.
    pub fn concat(parts: &[Records]) -> Records {
        let mut all = Records::default();
        for p in parts {
            all.offset.extend_from_slice(&p.offset);
            all.length.extend_from_slice(&p.length);
            all.words.extend_from_slice(&p.words);
            all.images.extend_from_slice(&p.images);
            all.turns.extend_from_slice(&p.turns);
            all.flags.extend_from_slice(&p.flags);
        }
        all
    }

    /// Column `i` of [`COLUMNS`] as little-endian bytes.
    pub fn column_bytes(&self, i: usize) -> Vec<u8> {
        match i {
            0 => le_bytes(&self.offset, u64::to_le_bytes),
            1 => le_bytes(&self.length, u32::to_le_bytes),
            2 => le_bytes(&self.words, u32::to_le_bytes),
            3 => le_bytes(&self.images, u16::to_le_bytes),
            4 => le_bytes(&self.turns, u16::to_le_bytes),
            5 => self.flags.clone(),
            _ => panic!("no column {i}"),
        }
    }
}
