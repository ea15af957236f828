//! The on-disk index: a versioned header followed by 64-byte-aligned little-endian columns that numpy
//! maps zero-copy (Megatron IndexedDataset style).
//!
//! ```text
//! offset  size  field
//! 0       8     magic "FFINDEX\0"
//! 8       4     format version (u32)
//! 12      4     header length in bytes, checksum included (u32)
//! 16      8     source file size (u64)
//! 24      8     source mtime, nanoseconds since the epoch (i64)
//! 32      8     source content fingerprint (u64, see `fingerprint`)
//! 40      8     record count (u64)
//! 48      1     source format (1 = JSON array, 2 = JSON Lines), then 7 bytes of padding
//! 56      4     column count (u32), then 4 bytes of padding
//! 64      40×n  column table: name (16 bytes, NUL-padded), dtype size (u8), 7 bytes padding,
//!               data offset (u64), xxh3-64 of the column's bytes (u64)
//! ...     8     xxh3-64 of every header byte before it
//! ```
//! Each column starts at a multiple of 64 and holds `record count` little-endian values.
//! Everything is written to a temporary file that is renamed into place, so a reader never sees a
//! torn index.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use crate::columns::{DType, Records, COLUMNS};
use crate::error::{Error, ErrorKind, Result};
use crate::scan::{cancelled, is_cancelled, Format};

pub const MAGIC: &[u8; 8] = b"FFINDEX\0";
pub const FORMAT_VERSION: u32 = 2;
pub const ALIGN: u64 = 64;
const FIXED_HEADER: usize = 64;
const COLUMN_ENTRY: usize = 40;

/// What an index says about its source file; compared with the file on every open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceStamp {
    pub size: u64,
    pub mtime_ns: i64,
    pub fingerprint: u64,
}

/// Bytes hashed at each end of the source for its fingerprint.
const FINGERPRINT_SPAN: u64 = 64 * 1024;

impl SourceStamp {
    /// Size, mtime and an xxh3 of the first and last 64 KiB: cheap enough for every open, and it
    /// catches a file rewritten with the same size and a restored mtime in most real cases.
    pub fn of(path: &Path) -> Result<SourceStamp> {
        let mut file = File::open(path).map_err(|e| Error::io(path, "open the data file", e))?;
        let meta = file
            .metadata()
            .map_err(|e| Error::io(path, "stat the data file", e))?;
        let size = meta.len();
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as i64);
        let mut hasher = Xxh3::new();
        hasher.update(&size.to_le_bytes());
        let mut buf = vec![0u8; FINGERPRINT_SPAN.min(size) as usize];
        let read_err = |e| Error::io(path, "read the data file", e);
        file.read_exact(&mut buf).map_err(read_err)?;
        hasher.update(&buf);
        if size > FINGERPRINT_SPAN {
            let tail = FINGERPRINT_SPAN.min(size - FINGERPRINT_SPAN);
            file.seek(SeekFrom::Start(size - tail)).map_err(read_err)?;
            buf.truncate(tail as usize);
            file.read_exact(&mut buf).map_err(read_err)?;
            hasher.update(&buf);
        }
        Ok(SourceStamp {
            size,
            mtime_ns,
            fingerprint: hasher.digest(),
        })
    }
}

/// One entry of the column table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnEntry {
    pub name: String,
    pub dtype: DType,
    pub offset: u64,
    pub checksum: u64,
}

/// A parsed and checked header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub source: SourceStamp,
    pub records: u64,
    pub format: Format,
    pub columns: Vec<ColumnEntry>,
}

impl Header {
    pub fn column(&self, name: &str) -> Option<&ColumnEntry> {
        self.columns.iter().find(|c| c.name == name)
    }

    fn header_len(n_columns: usize) -> usize {
        FIXED_HEADER + COLUMN_ENTRY * n_columns + 8
    }

    /// Bytes the index file must have at least.
    pub fn expected_file_len(&self) -> u64 {
        self.columns
            .iter()
            .map(|c| c.offset + self.records * c.dtype.size() as u64)
            .max()
            .unwrap_or(Header::header_len(0) as u64)
    }

    fn encode(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(Header::header_len(self.columns.len()));
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&self.version.to_le_bytes());
        h.extend_from_slice(&(Header::header_len(self.columns.len()) as u32).to_le_bytes());
        h.extend_from_slice(&self.source.size.to_le_bytes());
        h.extend_from_slice(&self.source.mtime_ns.to_le_bytes());
        h.extend_from_slice(&self.source.fingerprint.to_le_bytes());
        h.extend_from_slice(&self.records.to_le_bytes());
        h.extend_from_slice(&[self.format.code(), 0, 0, 0, 0, 0, 0, 0]);
        h.extend_from_slice(&(self.columns.len() as u32).to_le_bytes());
        h.extend_from_slice(&[0; 4]);
        for c in &self.columns {
            let mut name = [0u8; 16];
            name[..c.name.len()].copy_from_slice(c.name.as_bytes());
            h.extend_from_slice(&name);
            h.extend_from_slice(&[c.dtype.code(), 0, 0, 0, 0, 0, 0, 0]);
            h.extend_from_slice(&c.offset.to_le_bytes());
            h.extend_from_slice(&c.checksum.to_le_bytes());
        }
        let sum = xxh3_64(&h);
        h.extend_from_slice(&sum.to_le_bytes());
        h
    }

    /// Parses and checks a header at the start of `bytes` (the whole index file).
    pub fn decode(bytes: &[u8], path: &Path) -> Result<Header> {
        let corrupt = |what: &str| {
            Error::new(ErrorKind::CorruptIndex, format!("index is corrupt: {what}")).with_path(path)
        };
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
        if bytes.len() < FIXED_HEADER + 8 {
            return Err(corrupt("file is truncated (shorter than its header)"));
        }
        if &bytes[..8] != MAGIC {
            return Err(corrupt("not a fusion-fast index (bad magic)"));
        }
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(Error::new(
                ErrorKind::CorruptIndex,
                format!("index has format version {version}, this fusion-fast reads version {FORMAT_VERSION}"),
            )
            .with_path(path));
        }
        let n_columns = u32_at(56) as usize;
        let header_len = u32_at(12) as usize;
        if n_columns > 64 || header_len != Header::header_len(n_columns) || bytes.len() < header_len
        {
            return Err(corrupt("header is truncated or has a bad length"));
        }
        let stored_sum = u64_at(header_len - 8);
        if xxh3_64(&bytes[..header_len - 8]) != stored_sum {
            return Err(corrupt("header checksum mismatch"));
        }
        let format =
            Format::from_code(bytes[48]).ok_or_else(|| corrupt("unknown source format"))?;
        let mut columns = Vec::with_capacity(n_columns);
        for k in 0..n_columns {
            let e = FIXED_HEADER + k * COLUMN_ENTRY;
            let name_bytes = &bytes[e..e + 16];
            let name_len = name_bytes.iter().position(|&b| b == 0).unwrap_or(16);
            let name = std::str::from_utf8(&name_bytes[..name_len])
                .map_err(|_| corrupt("bad column name"))?;
            let dtype =
                DType::from_code(bytes[e + 16]).ok_or_else(|| corrupt("bad column type"))?;
            columns.push(ColumnEntry {
                name: name.to_string(),
                dtype,
                offset: u64_at(e + 24),
                checksum: u64_at(e + 32),
            });
        }
        let header = Header {
            version,
            source: SourceStamp {
                size: u64_at(16),
                mtime_ns: u64_at(24) as i64,
                fingerprint: u64_at(32),
            },
            records: u64_at(40),
            format,
            columns,
        };
        for (name, dtype) in COLUMNS {
            match header.column(name) {
                Some(c) if c.dtype == dtype && c.offset % ALIGN == 0 => {}
                _ => return Err(corrupt(&format!("column '{name}' is missing or malformed"))),
            }
        }
        if (bytes.len() as u64) < header.expected_file_len() {
            return Err(corrupt(
                "file is truncated (columns end past the end of the file)",
            ));
        }
        Ok(header)
    }

    /// The bytes of column `c` in the whole-file buffer `bytes`.
    pub fn column_bytes<'a>(&self, bytes: &'a [u8], c: &ColumnEntry) -> &'a [u8] {
        let start = c.offset as usize;
        &bytes[start..start + self.records as usize * c.dtype.size()]
    }

    /// Recomputes every column checksum: catches corruption inside the columns.
    pub fn verify_columns(&self, bytes: &[u8], path: &Path) -> Result<()> {
        for c in &self.columns {
            if xxh3_64(self.column_bytes(bytes, c)) != c.checksum {
                return Err(Error::new(
                    ErrorKind::CorruptIndex,
                    format!("index is corrupt: checksum mismatch in column '{}'", c.name),
                )
                .with_path(path));
            }
        }
        Ok(())
    }
}

fn align_up(x: u64) -> u64 {
    x.div_ceil(ALIGN) * ALIGN
}

/// A temporary file that is removed unless it is renamed into place.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The temporary file `write_index` writes before renaming it to `dest`: hidden, beside `dest` (a
/// rename stays within one filesystem), and named after the process, so writers never share one.
pub fn temp_path(dest: &Path) -> PathBuf {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let file_name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.join(format!(".{file_name}.tmp-{}", std::process::id()))
}

/// Whether `name` is the name `temp_path` gives a temporary index of `dest_name` in some process.
pub fn is_temp_name(name: &str, dest_name: &str) -> bool {
    name.strip_prefix('.')
        .and_then(|n| n.strip_prefix(dest_name))
        .and_then(|n| n.strip_prefix(".tmp-"))
        .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// Writes the index for `runs` (records in file order) to `dest`, atomically. When `cancel` is set
/// (checked between columns and before the file is synced and renamed), the temporary file is
/// removed, `dest` is left as it was, and the error is `scan::cancelled()`.
pub fn write_index(
    dest: &Path,
    source: SourceStamp,
    format: Format,
    runs: &[Records],
    cancel: Option<&AtomicBool>,
) -> Result<()> {
    let check_cancel = || {
        if is_cancelled(cancel) {
            return Err(cancelled());
        }
        Ok(())
    };
    let records: u64 = runs.iter().map(|r| r.len() as u64).sum();
    let mut columns = Vec::with_capacity(COLUMNS.len());
    let mut offset = align_up(Header::header_len(COLUMNS.len()) as u64);
    for (name, dtype) in COLUMNS {
        columns.push(ColumnEntry {
            name: name.to_string(),
            dtype,
            offset,
            checksum: 0,
        });
        offset = align_up(offset + records * dtype.size() as u64);
    }
    let mut header = Header {
        version: FORMAT_VERSION,
        source,
        records,
        format,
        columns,
    };

    let tmp = TempFile {
        path: temp_path(dest),
        keep: false,
    };
    let werr = |e| Error::io(&tmp.path, "write the index", e);
    let file = File::create(&tmp.path).map_err(|e| Error::io(&tmp.path, "create the index", e))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let placeholder = header.encode();
    out.write_all(&placeholder).map_err(werr)?;
    let mut written = placeholder.len() as u64;
    for (k, column) in header.columns.iter_mut().enumerate() {
        check_cancel()?;
        let pad = column.offset - written;
        out.write_all(&vec![0u8; pad as usize]).map_err(werr)?;
        written += pad;
        let mut hasher = Xxh3::new();
        for run in runs {
            let bytes = run.column_bytes(k);
            hasher.update(&bytes);
            out.write_all(&bytes).map_err(werr)?;
            written += bytes.len() as u64;
        }
        column.checksum = hasher.digest();
    }
    let mut file = out.into_inner().map_err(|e| werr(e.into_error()))?;
    file.seek(SeekFrom::Start(0)).map_err(werr)?;
    file.write_all(&header.encode()).map_err(werr)?;
    check_cancel()?;
    file.sync_all().map_err(werr)?;
    drop(file);
    check_cancel()?;
    let mut tmp = tmp;
    std::fs::rename(&tmp.path, dest)
        .map_err(|e| Error::io(dest, "move the finished index into place", e))?;
    tmp.keep = true;
    Ok(())
}
