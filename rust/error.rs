//! One error type for the whole core. Byte positions are mapped to line and column once, here,
//! and the Python binding turns each kind into one class of the `FusionFastError` hierarchy.

use std::fmt;
use std::path::{Path, PathBuf};

/// What went wrong, coarse enough to map onto Python exception classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The data file is not valid JSON / JSON Lines (or not an array in a `.json` file).
    MalformedJson,
    /// The index file is missing and rebuilding is disabled.
    IndexMissing,
    /// The index no longer matches its source file and rebuilding is disabled.
    StaleIndex,
    /// The index file is truncated, corrupt, or written by another format version.
    CorruptIndex,
    /// Reading or writing a file failed.
    Io,
    /// An image archive is truncated or corrupt (or not an archive the image store reads).
    CorruptArchive,
    /// A value handed in by the caller is not acceptable: an argument of the wrong shape, or a batch
    /// shipped by a worker that is not one fusion-fast packed. Python's `ValueError`.
    Invalid,
    /// A record, dataset or mixture position past the end of what exists. Python's `IndexError`.
    OutOfRange,
}

/// Where in a data file a malformed-JSON error sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub offset: u64,
    /// 1-based line.
    pub line: u64,
    /// 1-based column, counted in bytes.
    pub column: u64,
    /// 0-based number of the record being read (records before it are fine).
    pub record: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    /// What was expected or what is wrong, without the location.
    pub message: String,
    pub path: Option<PathBuf>,
    pub position: Option<Position>,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            path: None,
            position: None,
        }
    }

    /// A malformed-JSON error at byte `offset` of `data`, while reading record number `record`.
    pub fn malformed(data: &[u8], offset: usize, record: u64, message: impl Into<String>) -> Self {
        let offset = offset.min(data.len());
        let before = &data[..offset];
        let line = memchr::memchr_iter(b'\n', before).count() as u64 + 1;
        let line_start = memchr::memrchr(b'\n', before).map_or(0, |p| p + 1);
        Error {
            kind: ErrorKind::MalformedJson,
            message: message.into(),
            path: None,
            position: Some(Position {
                offset: offset as u64,
                line,
                column: (offset - line_start) as u64 + 1,
                record,
            }),
        }
    }

    /// An `ErrorKind::Invalid` error.
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Invalid, message)
    }

    /// An `ErrorKind::OutOfRange` error.
    pub fn out_of_range(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::OutOfRange, message)
    }

    pub fn io(path: &Path, action: &str, err: std::io::Error) -> Self {
        Error::new(ErrorKind::Io, format!("cannot {action}: {err}")).with_path(path)
    }

    pub fn with_path(mut self, path: &Path) -> Self {
        if self.path.is_none() {
            self.path = Some(path.to_path_buf());
        }
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(path) = &self.path {
            write!(f, "{}: ", path.display())?;
        }
        if let Some(p) = &self.position {
            write!(
                f,
                "line {} column {} (byte {}, record {}): ",
                p.line, p.column, p.offset, p.record
            )?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}
