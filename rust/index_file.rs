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

    /// The byte range of column `c` in the index file, or `None` when it overflows. `decode` checked
    /// every column of a decoded header this way.
    fn column_range(&self, c: &ColumnEntry) -> Option<std::ops::Range<usize>> {
        let len = self.records.checked_mul(c.dtype.size() as u64)?;
        let end = c.offset.checked_add(len)?;
        Some(usize::try_from(c.offset).ok()?..usize::try_from(end).ok()?)
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
        // Every field is checked with checked arithmetic before anything is sliced with it: the
        // header checksum is not a secret, so a crafted index passes it.
        if n_columns != COLUMNS.len() {
            return Err(corrupt(&format!(
                "the header lists {n_columns} columns, expected {}",
                COLUMNS.len()
            )));
        }
        // Every record takes at least one byte of the data file.
        if header.records > header.source.size {
            return Err(corrupt(&format!(
                "the header claims {} records in a data file of {} bytes",
                header.records, header.source.size
            )));
        }
        let mut ranges = Vec::with_capacity(n_columns);
        for (c, (name, dtype)) in header.columns.iter().zip(COLUMNS) {
            if c.name != name || c.dtype != dtype {
                return Err(corrupt(&format!("column '{name}' is missing or malformed")));
            }
            if c.offset % ALIGN != 0 {
                return Err(corrupt(&format!(
                    "column '{name}' starts at {}, not a multiple of {ALIGN}",
                    c.offset
                )));
            }
            let range = header
                .column_range(c)
                .filter(|r| r.end <= bytes.len())
                .ok_or_else(|| {
                    corrupt(&format!(
                        "column '{name}' ends past the end of the file (truncated or a bad length)"
                    ))
                })?;
            if range.start < header_len {
                return Err(corrupt(&format!("column '{name}' overlaps the header")));
            }
            ranges.push(range);
        }
        ranges.sort_by_key(|r| r.start);
        if ranges.windows(2).any(|w| w[0].end > w[1].start) {
            return Err(corrupt("columns overlap"));
        }
        Ok(header)
    }

    /// The bytes of column `c` in the whole-file buffer `bytes`.
    /// The bytes of column `c` in the whole-file buffer `bytes`: empty when they do not lie in it, which
    /// `decode` rules out for its own columns.
    pub fn column_bytes<'a>(&self, bytes: &'a [u8], c: &ColumnEntry) -> &'a [u8] {
        self.column_range(c)
            .and_then(|r| bytes.get(r))
            .unwrap_or_default()
    }

    /// Recomputes every column checksum (catches corruption inside the columns) and checks that every
    /// record's span lies inside the data file the header describes (catches an index whose checksums
    /// were recomputed over wrong spans).
    pub fn verify_columns(&self, bytes: &[u8], path: &Path) -> Result<()> {
        let corrupt = |what: String| {
            Error::new(ErrorKind::CorruptIndex, format!("index is corrupt: {what}")).with_path(path)
        };
        for c in &self.columns {
            if xxh3_64(self.column_bytes(bytes, c)) != c.checksum {
                return Err(corrupt(format!("checksum mismatch in column '{}'", c.name)));
            }
        }
        let column = |name: &str| self.column(name).map(|c| self.column_bytes(bytes, c));
        let (Some(offsets), Some(lengths)) = (column("offset"), column("length")) else {
            return Err(corrupt(
                "the offset or length column is missing".to_string(),
            ));
        };
        let offsets = offsets
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()));
        let lengths = lengths
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()));
        for (i, (offset, length)) in offsets.zip(lengths).enumerate() {
            if offset
                .checked_add(u64::from(length))
                .is_none_or(|end| end > self.source.size)
            {
                return Err(corrupt(format!(
                    "record {i} (bytes {offset}..+{length}) lies outside the data file of {} bytes",
                    self.source.size
                )));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::scan_sequential;
    use crate::store::{open, OpenOptions, Rebuild};

    const DATA: &str = r#"[{"id": 1, "conversations": [{"from": "human", "value": "a b"}]}, {"id": 2}, [3], "four", 5]"#;

    /// The data file and the index a normal open built for it.
    fn built() -> (tempfile::TempDir, PathBuf, PathBuf, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("d.json");
        std::fs::write(&source, DATA).unwrap();
        let index = open(&source, &OpenOptions::default()).unwrap();
        assert_eq!(index.len(), 5);
        let index_path = index.index_path.clone();
        let bytes = std::fs::read(&index_path).unwrap();
        (dir, source, index_path, bytes)
    }

    fn put_u64(bytes: &mut [u8], at: usize, v: u64) {
        bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// Recomputes the checksums as the writer does (they are not secret): the column checksums over
    /// whatever bytes each column now names (where they lie in the file), then the header's.
    fn reseal(bytes: &mut [u8]) {
        let n = u32::from_le_bytes(bytes[56..60].try_into().unwrap()) as usize;
        let header_len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
        let records = u64::from_le_bytes(bytes[40..48].try_into().unwrap());
        if header_len < FIXED_HEADER + 8 || header_len > bytes.len() {
            return;
        }
        for k in 0..n.min((header_len - FIXED_HEADER - 8) / COLUMN_ENTRY) {
            let e = FIXED_HEADER + k * COLUMN_ENTRY;
            let size = u64::from(bytes[e + 16]);
            let offset = u64::from_le_bytes(bytes[e + 24..e + 32].try_into().unwrap());
            let span = records
                .checked_mul(size)
                .and_then(|len| offset.checked_add(len))
                .filter(|&end| end <= bytes.len() as u64);
            if let Some(end) = span {
                let sum = xxh3_64(&bytes[offset as usize..end as usize]);
                put_u64(bytes, e + 32, sum);
            }
        }
        let sum = xxh3_64(&bytes[..header_len - 8]);
        put_u64(bytes, header_len - 8, sum);
    }

    /// Decodes and, when that passes, verifies: either may refuse, neither may panic.
    fn check(bytes: &[u8]) -> Result<Header> {
        let path = Path::new("x.ffidx");
        let header = Header::decode(bytes, path)?;
        header.verify_columns(bytes, path)?;
        Ok(header)
    }

    fn refused(bytes: &[u8], what: &str) {
        let err = check(bytes).expect_err(what);
        assert_eq!(err.kind, ErrorKind::CorruptIndex, "{what}: {err:?}");
    }

    fn entry(k: usize) -> usize {
        FIXED_HEADER + k * COLUMN_ENTRY
    }

    #[test]
    fn a_resealed_index_reads_back() {
        let (_dir, _, _, mut bytes) = built();
        let header = check(&bytes).unwrap();
        reseal(&mut bytes);
        assert_eq!(check(&bytes).unwrap(), header);
    }

    #[test]
    fn a_column_that_wraps_around_the_address_space_is_refused() {
        let (_dir, _, _, bytes) = built();
        // offset + records * size wraps to a small number inside the file.
        for k in 0..COLUMNS.len() {
            let mut b = bytes.clone();
            put_u64(&mut b, entry(k) + 24, 0u64.wrapping_sub(ALIGN));
            reseal(&mut b);
            refused(&b, &format!("column {k} at 2^64 - 64"));
        }
        // records * size overflows.
        for records in [u64::MAX, u64::MAX / 2 + 1, u64::MAX / 8 + 1, 1 << 61] {
            let mut b = bytes.clone();
            put_u64(&mut b, 40, records);
            reseal(&mut b);
            refused(&b, &format!("{records} records"));
        }
    }

    #[test]
    fn columns_outside_the_file_overlapping_or_misaligned_are_refused() {
        let (_dir, _, _, bytes) = built();
        let len = bytes.len() as u64;
        let offset_of =
            |k: usize| u64::from_le_bytes(bytes[entry(k) + 24..entry(k) + 32].try_into().unwrap());
        let cases: Vec<(String, usize, u64)> = vec![
            (
                "past the end".into(),
                entry(0) + 24,
                len.next_multiple_of(ALIGN),
            ),
            ("far past the end".into(), entry(5) + 24, 1 << 40),
            ("over the header".into(), entry(1) + 24, 0),
            ("over another column".into(), entry(2) + 24, offset_of(1)),
            ("misaligned".into(), entry(3) + 24, offset_of(3) + 8),
            ("more records than fit".into(), 40, 60),
            (
                "more records than data bytes".into(),
                40,
                DATA.len() as u64 + 1,
            ),
            ("records that overlap the next column".into(), 40, 9),
        ];
        for (what, at, value) in cases {
            let mut b = bytes.clone();
            put_u64(&mut b, at, value);
            reseal(&mut b);
            refused(&b, &what);
        }
        for (what, at, value) in [
            ("a wrong type", entry(0) + 16, 4u8),
            ("an unknown type", entry(0) + 16, 3),
            ("a renamed column", entry(4), b'x'),
            ("a format code", 48, 7),
        ] {
            let mut b = bytes.clone();
            b[at] = value;
            reseal(&mut b);
            refused(&b, what);
        }
        // Two columns swapped in the table, or one listed twice.
        let mut b = bytes.clone();
        let (first, second) = (
            bytes[entry(1)..entry(2)].to_vec(),
            bytes[entry(2)..entry(3)].to_vec(),
        );
        b[entry(1)..entry(2)].copy_from_slice(&second);
        b[entry(2)..entry(3)].copy_from_slice(&first);
        reseal(&mut b);
        refused(&b, "columns out of order");
        let mut b = bytes.clone();
        b.copy_within(entry(1)..entry(2), entry(2));
        reseal(&mut b);
        refused(&b, "a column listed twice");
    }

    #[test]
    fn spans_outside_the_data_file_are_refused_when_verified() {
        let (_dir, _, _, bytes) = built();
        let header = check(&bytes).unwrap();
        let offsets = header.column("offset").unwrap().offset as usize;
        let lengths = header.column("length").unwrap().offset as usize;
        for (what, at, value) in [
            ("an offset past the end", offsets + 8, DATA.len() as u64),
            (
                "an offset that wraps with its length",
                offsets + 16,
                u64::MAX - 1,
            ),
        ] {
            let mut b = bytes.clone();
            put_u64(&mut b, at, value);
            reseal(&mut b);
            refused(&b, what);
        }
        let mut b = bytes.clone();
        b[lengths + 4..lengths + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        reseal(&mut b);
        refused(&b, "a length past the end");
    }

    /// Every header byte flipped bit by bit, every u64 field set to edge values, each time with
    /// the checksums recomputed: refused or read back, never a panic.
    #[test]
    fn no_resealed_header_damage_panics() {
        let (_dir, _, _, bytes) = built();
        let header_len = Header::header_len(COLUMNS.len());
        let mut accepted = 0;
        for at in 0..header_len - 8 {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[at] ^= 1 << bit;
                reseal(&mut b);
                accepted += usize::from(check(&b).is_ok());
            }
        }
        let edges = [
            0,
            1,
            63,
            64,
            4096,
            u64::from(u32::MAX),
            1 << 32,
            1 << 63,
            u64::MAX - 63,
            u64::MAX,
        ];
        for at in (16..header_len - 8).step_by(8) {
            for v in edges {
                let mut b = bytes.clone();
                put_u64(&mut b, at, v);
                reseal(&mut b);
                accepted += usize::from(check(&b).is_ok());
            }
        }
        // Only padding, the source stamp and checksummed column contents may change unnoticed here.
        assert!(accepted > 0);
    }

    #[test]
    fn a_crafted_index_is_refused_or_rebuilt_on_open() {
        let (_dir, source, index_path, mut bytes) = built();
        put_u64(&mut bytes, entry(0) + 24, 0u64.wrapping_sub(ALIGN));
        reseal(&mut bytes);
        std::fs::write(&index_path, &bytes).unwrap();
        let never = OpenOptions {
            rebuild: Rebuild::Never,
            ..OpenOptions::default()
        };
        let err = open(&source, &never).err().expect("a crafted index opened");
        assert_eq!(err.kind, ErrorKind::CorruptIndex);
        assert!(
            err.to_string().contains("ends past the end of the file"),
            "{err}"
        );
        let index = open(&source, &OpenOptions::default()).unwrap();
        assert!(index.built);
        let expected = scan_sequential(DATA.as_bytes(), Format::JsonArray).unwrap();
        for i in 0..index.len() {
            let (o, l) = (expected.offset[i] as usize, expected.length[i] as usize);
            assert_eq!(index.raw(i).unwrap(), &DATA.as_bytes()[o..o + l]);
        }
    }
}
