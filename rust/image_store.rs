//! The image store: images read straight out of the downloaded archives, never extracted.
//!
//! For a list of archives (plain `.tar`, `.zip` with stored or deflated members) the builder walks each
//! archive's structure in parallel — tar: the 512-byte headers, seeking over data (ustar prefixes, GNU
//! `L` long names, PAX `path`/`size` records); zip: the central directory (zip64 included) and each
//! member's local header — and writes one store file that maps a 64-bit hash of each member's path to
//! where the member's *record* starts in its archive (tar: its first header, or the GNU long-name / PAX
//! records before it; zip: its central directory entry).
//!
//! The store keeps no names, sizes or offsets of its own: 16 bytes per member (hash, locator), so 20
//! million members take 320 MB. A lookup binary-searches the hash column, then re-parses each candidate's
//! record in the mapped archive with the very code the builder used (same normalisation, same placement)
//! and compares the name found there with the path asked for. That one parse also yields the data offset,
//! sizes, method and CRC, and the record lies next to the data it describes (tar) or in the compact central
//! directory (zip), so reading a member touches no more pages than before. Re-parsing also checks the store
//! against its archive: a candidate whose record no longer parses to a name of the recorded hash means the
//! archive changed after the build (even with the same size and mtime) and is a stale-index error, never
//! another member's bytes. Two different paths with one hash both stay findable: the lookup compares every
//! candidate of the hash in turn.
//!
//! Reads: tar members and stored zip members are slices of the mapped archive (zero-copy); deflated zip
//! members are inflated on read. Zip members have their CRC-32 checked on every read.
//!
//! Paths are normalised (`./a//b` → `a/b`). Members whose path is absolute or holds `..`, links,
//! devices, fifos, sparse files, encrypted members and unknown zip methods are never indexed: the
//! build report lists them as refused. A path present more than once (in one archive or in several)
//! resolves to its *first* occurrence, archives taken in the order given and members in archive
//! order; the build report lists the others as duplicates. The builder holds 16 bytes per member (no
//! names): duplicates and hash collisions are told apart by re-reading the names of the few members that
//! share a hash.
//!
//! ```text
//! offset  size  field (little-endian)
//! 0       8     magic "FFIMGST\0"
//! 8       4     format version (u32, = 2)
//! 12      4     header length (u32, = 128)
//! 16      8     member count n
//! 24      8     archive count
//! 32      16    archive table: offset, length   (per archive: u8 kind, u32 path length, path bytes,
//!                                                u64 size, i64 mtime in ns, u32 folders to strip,
//!                                                u32 prefix length, prefix bytes)
//! 48      8     hash column offset     (n × u64, ascending: the path hash's top `hash bits` bits)
//! 56      8     locator column offset  (n × u64: archive number << (64 − archive bits) | record offset)
//! 64      4     archive bits (1..=32)
//! 68      4     hash bits (1..=64; 64 in every store the builder writes)
//! 72      8     file length
//! 80      8     xxh3-64 of every byte after the header
//! 88      32    reserved (0)
//! 120     8     xxh3-64 of the header bytes before it
//! ```
//! Columns start on 64-byte boundaries. Sorting by (hash, locator) puts the members sharing a hash in
//! archive order, then member order, which is the order duplicates are resolved in. The file is written
//! to a temporary name and renamed into place, so a reader never sees a torn store.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rayon::prelude::*;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed, Xxh3};

use crate::error::{Error, ErrorKind, Result};
use crate::mapping::{stale_error, GuardedMap};

pub const MAGIC: &[u8; 8] = b"FFIMGST\0";
pub const FORMAT_VERSION: u32 = 2;
const HEADER_LEN: usize = 128;
const ALIGN: u64 = 64;
/// Stores up to this size have their body checksum verified on every open; larger ones on `verify`.
pub const AUTO_VERIFY_BYTES: u64 = 4 << 20;
const HASH_SEED: u64 = 0x1f_f1_5e_ed;
/// Bytes the store holds per member: the hash and the locator.
pub const BYTES_PER_MEMBER: u64 = 16;
/// At most this many GNU long-name / PAX / other extension records may precede a tar member: each read
/// re-parses them, so an unbounded run would make one read arbitrarily slow.
const MAX_EXTENSION_RECORDS: usize = 64;

/// Compression method of a member (zip's numbering).
pub const STORED: u8 = 0;
pub const DEFLATED: u8 = 8;

const KIND_TAR: u8 = 1;

/// `read_member`'s first `pread` of a tar member: its header and up to about 7.5 KiB of data.
const PREAD_WINDOW: u64 = 8 << 10;
/// Tar members (with their records) larger than this are read through the mapping.
const PREAD_MAX: u64 = 16 << 20;
/// After a `pread` finds pages of an archive missing from the page cache, this many reads of it go
/// through the mapping before `pread` is tried again: while an archive is cold, a fault reads the
/// pages around it (the device's read-ahead), where a `pread` would start a read of its own pages
/// only, which the fault then waits for.
const MAPPED_AFTER_MISS: u32 = 256;
const KIND_ZIP: u8 = 2;

// ---------------------------------------------------------------------------------------------------
// Mapping. Every file the store maps is a SIGBUS-guarded mapping (see `mapping`): an archive or store
// that another program truncates while it is mapped reads as zeros instead of killing the process,
// and readers check the mapping's stale flag before trusting what they read. Archives are also
// checked by size and mtime when first mapped, which catches every change made before that.

type Map = GuardedMap;

fn map_file(file: &File, path: &Path) -> Result<Option<Map>> {
    GuardedMap::new(file, path, false)
}

/// Where a file written atomically to `dest` is written first: beside it (same filesystem, so the
/// final rename is atomic), hidden, and named after this process.
fn temp_path(dest: &Path) -> PathBuf {
    let dir = dest
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.join(format!(".{name}.tmp-{}", std::process::id()))
}

// ---------------------------------------------------------------------------------------------------
// Members as found by the archive walkers.

/// A member left out of the store, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub archive: PathBuf,
    pub member: String,
    pub reason: String,
}

/// A path found again after its first occurrence (which is the one the store reads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    pub member: String,
    pub kept: PathBuf,
    pub ignored: PathBuf,
}

/// What a build did.
#[derive(Debug, Clone, Default)]
pub struct BuildReport {
    pub members: u64,
    pub refused: Vec<Refused>,
    pub duplicates: Vec<Duplicate>,
}

/// Where a member's bytes lie, as its archive's record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub archive: u32,
    pub data_offset: u64,
    /// Bytes in the archive (compressed size for deflated members).
    pub stored_size: u64,
    /// Bytes once read.
    pub size: u64,
    pub method: u8,
    /// CRC-32 of the member's bytes (0 for tar, which has none).
    pub crc: u32,
}

/// A member record parsed out of an archive: its store path (normalised and placed) and location.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Indexed {
    name: Vec<u8>,
    loc: Location,
}

/// What one archive record is to the store.
enum Class {
    Member(Indexed),
    /// (name as shown, reason)
    Refused(String, String),
    /// Folders and other records that are neither read nor reported.
    Skip,
}

struct Walk {
    /// (path hash, record offset) of every indexable member, in archive order.
    members: Vec<(u64, u64)>,
    refused: Vec<(String, String)>,
}

/// Inflates the raw deflate stream `raw` of a member whose header declares `size` bytes, to exactly
/// that many. The buffer grows with what the stream actually produces (doubling, from a first guess
/// that deflate's 1032:1 most can justify) and never past `size`: a header declaring far more than its
/// stream holds costs nothing, a stream producing more than its header declares is refused as soon as
/// it passes `size`, and an allocation that cannot be made is an error, never an abort.
pub(crate) fn inflate_exactly(raw: &[u8], size: u64) -> std::result::Result<Vec<u8>, String> {
    let most = (raw.len() as u64).saturating_mul(1032).saturating_add(64);
    let first = size.min(most).min(256 << 20);
    let mut dec = flate2::read::DeflateDecoder::new(raw);
    let mut out: Vec<u8> = Vec::new();
    let mut filled = 0usize;
    loop {
        if filled == out.len() {
            if filled as u64 == size {
                // Full: the stream must end here.
                let mut probe = [0u8; 1];
                match dec.read(&mut probe) {
                    Ok(0) => break,
                    Ok(_) => {
                        return Err(format!(
                            "inflates to more than the {size} bytes its header says"
                        ))
                    }
                    Err(e) => return Err(format!("does not inflate: {e}")),
                }
            }
            let want = (filled as u64)
                .saturating_mul(2)
                .max(first)
                .max(64 << 10)
                .min(size);
            let want = usize::try_from(want).map_err(|_| {
                format!("declares {size} bytes, more than this machine can address")
            })?;
            out.try_reserve_exact(want - out.len()).map_err(|_| {
                format!("declares {size} bytes: cannot allocate {want} bytes to inflate it")
            })?;
            out.resize(want, 0);
        }
        match dec.read(&mut out[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("does not inflate: {e}")),
        }
    }
    if filled as u64 != size {
        return Err(format!(
            "inflates to {filled} bytes, its header says {size}"
        ));
    }
    out.truncate(filled);
    Ok(out)
}

fn corrupt(path: &Path, at: u64, what: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::CorruptArchive,
        format!("archive is corrupt at byte {at}: {what}"),
    )
    .with_path(path)
}

/// Normalises a member path: `./a//b/` → `a/b`; `None` for an absolute path, a `..` component, a NUL
/// byte or an empty path.
pub fn normalize(name: &[u8]) -> Option<Vec<u8>> {
    if name.first() == Some(&b'/') || name.contains(&0) {
        return None;
    }
    let mut out = Vec::with_capacity(name.len());
    for part in name.split(|&b| b == b'/') {
        match part {
            b"" | b"." => continue,
            b".." => return None,
            _ => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(part);
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Where an archive's members appear in the store: member `m` is found under `prefix` followed by `m`
/// without its first `strip` components (prepare's nesting decision), so record paths look up as is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    pub strip: usize,
    /// A relative folder (`"COCO"` or `"COCO/"`), or empty.
    pub prefix: String,
}

/// A `Placement` checked and ready to apply: the prefix normalised, with its trailing `/`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Placed {
    strip: u32,
    prefix: Vec<u8>,
}

impl Placement {
    fn check(&self, archive: &Path) -> Result<Placed> {
        let prefix = if self.prefix.is_empty() {
            Vec::new()
        } else {
            let mut p = normalize(self.prefix.as_bytes()).ok_or_else(|| {
                Error::new(
                    ErrorKind::Io,
                    format!(
                        "placement prefix {:?} must be a relative path without '..'",
                        self.prefix
                    ),
                )
                .with_path(archive)
            })?;
            p.push(b'/');
            p
        };
        let strip = u32::try_from(self.strip).map_err(|_| {
            Error::new(ErrorKind::Io, "placement strips too many folders").with_path(archive)
        })?;
        Ok(Placed { strip, prefix })
    }
}

impl Placed {
    /// The store path of the member at the normalised path `norm`, or why it has none.
    fn place(&self, norm: Vec<u8>) -> std::result::Result<Vec<u8>, String> {
        if self.strip == 0 && self.prefix.is_empty() {
            return Ok(norm);
        }
        let strip = self.strip as usize;
        match norm.splitn(strip + 1, |&b| b == b'/').nth(strip) {
            Some(t) => Ok([self.prefix.as_slice(), t].concat()),
            None => Err(format!("has fewer than {strip} folders to strip")),
        }
    }

    /// A regular member called `raw` in its archive: indexed at its placed path, or refused.
    fn classify(&self, raw: &[u8], loc: Location) -> Class {
        let shown = || lossy(raw);
        match normalize(raw) {
            Some(_) if raw.ends_with(b"/") => Class::Skip,
            Some(norm) => match self.place(norm) {
                Ok(name) => Class::Member(Indexed { name, loc }),
                Err(reason) => Class::Refused(shown(), reason),
            },
            None => Class::Refused(shown(), "absolute path or '..' component".into()),
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// tar

fn field_str(f: &[u8]) -> &[u8] {
    let end = f.iter().position(|&b| b == 0).unwrap_or(f.len());
    &f[..end]
}

/// A numeric header field: octal ASCII (spaces / NULs around it) or GNU base-256.
fn tar_number(f: &[u8]) -> Option<u64> {
    if f.first().is_some_and(|&b| b & 0x80 != 0) {
        if f[0] & 0x40 != 0 {
            return None; // negative
        }
        let mut v: u64 = u64::from(f[0] & 0x3f);
        for &b in &f[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let s = field_str(f);
    let s = s
        .iter()
        .position(|&b| b != b' ')
        .map_or(&s[s.len()..], |i| &s[i..]);
    let end = s.iter().position(|&b| b == b' ').unwrap_or(s.len());
    let digits = &s[..end];
    if digits.is_empty() {
        return Some(0);
    }
    let mut v: u64 = 0;
    for &d in digits {
        if !(b'0'..=b'7').contains(&d) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(v)
}

/// The header's checksum as tar defines it (bytes summed, the checksum field counted as spaces),
/// unsigned or, as some old writers did, signed.
fn header_checksum_ok(h: &[u8]) -> bool {
    let Some(stored) = tar_number(&h[148..156]) else {
        return false;
    };
    // Summed slice by slice (not chained) so that the loops vectorise: every read re-checks a header.
    let unsigned = |s: &[u8]| s.iter().map(|&b| u32::from(b)).sum::<u32>();
    let field = 8 * 32;
    if stored == u64::from(unsigned(&h[..148]) + unsigned(&h[156..512]) + field) {
        return true;
    }
    let signed = |s: &[u8]| s.iter().map(|&b| i32::from(b as i8)).sum::<i32>();
    stored as i64 == i64::from(signed(&h[..148]) + signed(&h[156..512]) + field as i32)
}

/// PAX records `"<len> key=value\n"`; returns (path, size) overrides.
fn parse_pax<'a>(data: &'a [u8], path: &Path, at: u64) -> Result<(Option<&'a [u8]>, Option<u64>)> {
    let (mut name, mut size) = (None, None);
    let mut rest = data;
    while !rest.is_empty() && rest[0] != 0 {
        let sp = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| corrupt(path, at, "PAX record without a length"))?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|&l| l > sp + 1 && l <= rest.len())
            .ok_or_else(|| corrupt(path, at, "PAX record with a bad length"))?;
        let record = &rest[sp + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(eq) = record.iter().position(|&b| b == b'=') {
            let (key, value) = (&record[..eq], &record[eq + 1..]);
            match key {
                b"path" => name = Some(value),
                b"size" => {
                    size = Some(
                        std::str::from_utf8(value)
                            .ok()
                            .and_then(|s| s.parse().ok())
                            .ok_or_else(|| corrupt(path, at, "PAX size is not a number"))?,
                    )
                }
                _ => {}
            }
        }
        rest = &rest[len..];
    }
    Ok((name, size))
}

/// One tar member with the extension records before it applied.
struct TarEntry<'a> {
    raw_name: Cow<'a, [u8]>,
    typeflag: u8,
    data_offset: u64,
    size: u64,
    /// Where the next member's first record starts.
    next: u64,
}

/// Parses the tar member whose first record (its header, or the first GNU long-name / PAX / other
/// extension record before it) starts at `pos`; `None` at the end-of-archive block.
fn tar_entry<'a>(data: &'a [u8], mut pos: u64, path: &Path) -> Result<Option<TarEntry<'a>>> {
    let len = data.len() as u64;
    let mut long_name: Option<&[u8]> = None;
    let mut pax: (Option<&[u8]>, Option<u64>) = (None, None);
    for _ in 0..=MAX_EXTENSION_RECORDS {
        let end = pos.checked_add(512).filter(|&e| e <= len).ok_or_else(|| {
            corrupt(
                path,
                pos,
                "the tar ends without its end-of-archive blocks (truncated?)",
            )
        })?;
        let h = &data[pos as usize..end as usize];
        if h.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        if !header_checksum_ok(h) {
            return Err(corrupt(path, pos, "tar header checksum mismatch"));
        }
        let header_size =
            tar_number(&h[124..136]).ok_or_else(|| corrupt(path, pos, "bad tar size field"))?;
        let typeflag = h[156];
        let is_meta = matches!(typeflag, b'L' | b'K' | b'x' | b'g');
        let size = if is_meta {
            header_size
        } else {
            pax.1.unwrap_or(header_size)
        };
        let data_offset = end;
        let data_end = data_offset
            .checked_add(size)
            .filter(|&e| e <= len)
            .ok_or_else(|| {
                corrupt(
                    path,
                    pos,
                    format!("member data ({size} bytes) runs past the end of the archive"),
                )
            })?;
        let body = &data[data_offset as usize..data_end as usize];
        let next = data_offset
            .checked_add(size.div_ceil(512) * 512)
            .ok_or_else(|| corrupt(path, pos, "member size overflows"))?;
        match typeflag {
            b'L' => long_name = Some(field_str(body)),
            b'K' | b'g' => {}
            b'x' => pax = parse_pax(body, path, pos)?,
            _ => {
                let raw_name = if let Some(n) = pax.0 {
                    Cow::Borrowed(n)
                } else if let Some(n) = long_name {
                    Cow::Borrowed(n)
                } else {
                    let name = field_str(&h[0..100]);
                    let prefix = if &h[257..262] == b"ustar" {
                        field_str(&h[345..500])
                    } else {
                        &[]
                    };
                    if prefix.is_empty() {
                        Cow::Borrowed(name)
                    } else {
                        Cow::Owned([prefix, b"/", name].concat())
                    }
                };
                return Ok(Some(TarEntry {
                    raw_name,
                    typeflag,
                    data_offset,
                    size,
                    next,
                }));
            }
        }
        pos = next;
    }
    Err(corrupt(
        path,
        pos,
        format!("more than {MAX_EXTENSION_RECORDS} extension records before one member"),
    ))
}

fn tar_classify(e: &TarEntry<'_>, archive: u32, placed: &Placed) -> Class {
    let shown = || lossy(&e.raw_name);
    match e.typeflag {
        b'0' | 0 | b'7' => placed.classify(
            &e.raw_name,
            Location {
                archive,
                data_offset: e.data_offset,
                stored_size: e.size,
                size: e.size,
                method: STORED,
                crc: 0,
            },
        ),
        b'5' => Class::Skip,
        b'1' | b'2' => Class::Refused(shown(), "a link".into()),
        b'3' | b'4' | b'6' => Class::Refused(shown(), "a device or fifo".into()),
        b'S' => Class::Refused(shown(), "a sparse file".into()),
        t => Class::Refused(shown(), format!("unknown tar member type {:?}", t as char)),
    }
}

fn walk_tar(data: &[u8], path: &Path, placed: &Placed, hash_bits: u32) -> Result<Walk> {
    let mut walk = Walk {
        members: Vec::new(),
        refused: Vec::new(),
    };
    let mut pos: u64 = 0;
    while let Some(e) = tar_entry(data, pos, path)? {
        match tar_classify(&e, 0, placed) {
            Class::Member(m) => walk.members.push((path_hash(&m.name, hash_bits), pos)),
            Class::Refused(name, reason) => walk.refused.push((name, reason)),
            Class::Skip => {}
        }
        pos = e.next;
    }
    Ok(walk)
}

// ---------------------------------------------------------------------------------------------------
// zip

fn u16_at(d: &[u8], o: u64) -> Option<u16> {
    let o = usize::try_from(o).ok()?;
    Some(u16::from_le_bytes(
        d.get(o..o.checked_add(2)?)?.try_into().ok()?,
    ))
}
fn u32_at(d: &[u8], o: u64) -> Option<u32> {
    let o = usize::try_from(o).ok()?;
    Some(u32::from_le_bytes(
        d.get(o..o.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn u64_at(d: &[u8], o: u64) -> Option<u64> {
    let o = usize::try_from(o).ok()?;
    Some(u64::from_le_bytes(
        d.get(o..o.checked_add(8)?)?.try_into().ok()?,
    ))
}
fn bytes_at(d: &[u8], o: u64, n: u64) -> Option<&[u8]> {
    let o = usize::try_from(o).ok()?;
    let n = usize::try_from(n).ok()?;
    d.get(o..o.checked_add(n)?)
}

/// Code page 437, bytes 128..=255: zip's name encoding when the UTF-8 flag (bit 11) is clear.
const CP437_HIGH: &str = "ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜ¢£¥₧ƒáíóúñÑªº¿⌐¬½¼¡«»░▒▓│┤╡╢╖╕╣║╗╝╜╛┐└┴┬├─┼╞╟╚╔╩╦╠═╬╧╨╤╥╙╘╒╓╫╪┘┌█▄▌▐▀αßΓπΣσµτΦΘΩδ∞φε∩≡±≥≤⌠⌡÷≈°∙·√ⁿ²■\u{a0}";

/// A zip member name as UTF-8: as stored when flagged UTF-8 or plain ASCII, else decoded as CP437
/// (what Python's `zipfile` and the zip specification do).
fn zip_name(raw: &[u8], flags: u16) -> Cow<'_, [u8]> {
    if flags & 0x800 != 0 || raw.is_ascii() {
        return Cow::Borrowed(raw);
    }
    let high: Vec<char> = CP437_HIGH.chars().collect();
    let s: String = raw
        .iter()
        .map(|&b| {
            if b < 128 {
                b as char
            } else {
                high[usize::from(b - 128)]
            }
        })
        .collect();
    Cow::Owned(s.into_bytes())
}

/// The central directory: (member count, offset).
fn zip_directory(data: &[u8], path: &Path) -> Result<(u64, u64)> {
    let len = data.len() as u64;
    let trunc = |at: u64, what: &str| corrupt(path, at, what);
    // End of central directory: 22 bytes plus a comment of up to 65535.
    let lo = len.saturating_sub(22 + 65535);
    let eocd = (lo..=len.saturating_sub(22))
        .rev()
        .find(|&p| u32_at(data, p) == Some(0x0605_4b50))
        .ok_or_else(|| {
            trunc(
                len,
                "no zip end-of-central-directory record (truncated or not a zip)",
            )
        })?;
    let mut count = u64::from(u16_at(data, eocd + 10).unwrap_or(0));
    let mut cd_size = u64::from(u32_at(data, eocd + 12).unwrap_or(0));
    let mut cd_offset = u64::from(u32_at(data, eocd + 16).unwrap_or(0));
    if eocd >= 20 && u32_at(data, eocd - 20) == Some(0x0706_4b50) {
        let z64 = u64_at(data, eocd - 12).ok_or_else(|| trunc(eocd, "bad zip64 locator"))?;
        if u32_at(data, z64) != Some(0x0606_4b50) {
            return Err(trunc(z64, "zip64 end-of-central-directory record missing"));
        }
        count = u64_at(data, z64 + 32).ok_or_else(|| trunc(z64, "zip64 record truncated"))?;
        cd_size = u64_at(data, z64 + 40).ok_or_else(|| trunc(z64, "zip64 record truncated"))?;
        cd_offset = u64_at(data, z64 + 48).ok_or_else(|| trunc(z64, "zip64 record truncated"))?;
    }
    if cd_offset.checked_add(cd_size).is_none_or(|e| e > len) {
        return Err(trunc(cd_offset, "central directory lies outside the file"));
    }
    Ok((count, cd_offset))
}

/// Parses the central directory entry at `p` (and the member's local header): `(class, next entry)`.
fn zip_entry(
    data: &[u8],
    p: u64,
    archive: u32,
    placed: &Placed,
    path: &Path,
) -> Result<(Class, u64)> {
    let len = data.len() as u64;
    let trunc = |at: u64, what: &str| corrupt(path, at, what);
    let bad = || trunc(p, "central directory entry truncated or malformed");
    if u32_at(data, p) != Some(0x0201_4b50) {
        return Err(bad());
    }
    let made_by = u16_at(data, p + 4).ok_or_else(bad)?;
    let flags = u16_at(data, p + 8).ok_or_else(bad)?;
    let method = u16_at(data, p + 10).ok_or_else(bad)?;
    let crc = u32_at(data, p + 16).ok_or_else(bad)?;
    let mut csize = u64::from(u32_at(data, p + 20).ok_or_else(bad)?);
    let mut usize_ = u64::from(u32_at(data, p + 24).ok_or_else(bad)?);
    let name_len = u64::from(u16_at(data, p + 28).ok_or_else(bad)?);
    let extra_len = u64::from(u16_at(data, p + 30).ok_or_else(bad)?);
    let comment_len = u64::from(u16_at(data, p + 32).ok_or_else(bad)?);
    let ext_attr = u32_at(data, p + 38).ok_or_else(bad)?;
    let mut local = u64::from(u32_at(data, p + 42).ok_or_else(bad)?);
    let raw_name = bytes_at(data, p + 46, name_len).ok_or_else(bad)?;
    let extra = bytes_at(data, p + 46 + name_len, extra_len).ok_or_else(bad)?;
    // zip64 extended information: the 0xFFFFFFFF fields, in this order.
    let mut e = 0usize;
    while e + 4 <= extra.len() {
        let id = u16::from_le_bytes([extra[e], extra[e + 1]]);
        let n = usize::from(u16::from_le_bytes([extra[e + 2], extra[e + 3]]));
        let body = extra.get(e + 4..e + 4 + n).ok_or_else(bad)?;
        if id == 1 {
            let mut q = 0u64;
            for field in [&mut usize_, &mut csize, &mut local] {
                if *field == 0xFFFF_FFFF {
                    *field = u64_at(body, q).ok_or_else(bad)?;
                    q += 8;
                }
            }
        }
        e += 4 + n;
    }
    let next = p + 46 + name_len + extra_len + comment_len;
    let name = zip_name(raw_name, flags);
    let name = name.as_ref();
    let shown = || lossy(name);
    if name.ends_with(b"/") {
        return Ok((Class::Skip, next));
    }
    let unix_mode = if made_by >> 8 == 3 { ext_attr >> 16 } else { 0 };
    if unix_mode & 0o170000 == 0o120000 {
        return Ok((Class::Refused(shown(), "a link".into()), next));
    }
    if flags & 1 != 0 {
        return Ok((Class::Refused(shown(), "encrypted".into()), next));
    }
    let method = match method {
        0 => STORED,
        8 => DEFLATED,
        m => {
            let reason = format!("unsupported compression method {m}");
            return Ok((Class::Refused(shown(), reason), next));
        }
    };
    let loc = Location {
        archive,
        data_offset: 0,
        stored_size: csize,
        size: usize_,
        method,
        crc,
    };
    let mut m = match placed.classify(name, loc) {
        Class::Member(m) => m,
        other => return Ok((other, next)),
    };
    if method == STORED && csize != usize_ {
        return Err(trunc(
            p,
            &format!(
                "stored member {} has different stored and real sizes",
                shown()
            ),
        ));
    }
    let lbad = || {
        trunc(
            local,
            &format!("local header of {} is missing or truncated", shown()),
        )
    };
    if u32_at(data, local) != Some(0x0403_4b50) {
        return Err(lbad());
    }
    let lname = u64::from(u16_at(data, local + 26).ok_or_else(lbad)?);
    let lextra = u64::from(u16_at(data, local + 28).ok_or_else(lbad)?);
    let data_offset = local + 30 + lname + lextra;
    if data_offset.checked_add(csize).is_none_or(|e| e > len) {
        return Err(trunc(
            local,
            &format!("data of {} runs past the end of the archive", shown()),
        ));
    }
    m.loc.data_offset = data_offset;
    Ok((Class::Member(m), next))
}

fn walk_zip(data: &[u8], path: &Path, placed: &Placed, hash_bits: u32) -> Result<Walk> {
    let (count, cd_offset) = zip_directory(data, path)?;
    let mut walk = Walk {
        members: Vec::with_capacity(count.min(data.len() as u64 / 46) as usize),
        refused: Vec::new(),
    };
    let mut p = cd_offset;
    for _ in 0..count {
        let (class, next) = zip_entry(data, p, 0, placed, path)?;
        match class {
            Class::Member(m) => walk.members.push((path_hash(&m.name, hash_bits), p)),
            Class::Refused(name, reason) => walk.refused.push((name, reason)),
            Class::Skip => {}
        }
        p = next;
    }
    Ok(walk)
}

/// The member whose record starts at `record` in an archive of `kind`, as the builder indexed it.
fn member_at(
    kind: u8,
    data: &[u8],
    record: u64,
    archive: u32,
    placed: &Placed,
    path: &Path,
) -> Result<Option<Indexed>> {
    let class = match kind {
        KIND_TAR => match tar_entry(data, record, path)? {
            Some(e) => tar_classify(&e, archive, placed),
            None => Class::Skip,
        },
        _ => zip_entry(data, record, archive, placed, path)?.0,
    };
    Ok(match class {
        Class::Member(m) => Some(m),
        _ => None,
    })
}

/// Fills `buf` from `file` at `offset` if every byte is in the page cache, without waiting for the
/// disk (`preadv2` with `RWF_NOWAIT`); false otherwise, or where that is not supported. A read of
/// pages that are not cached is left to the mapping, whose fault reads the pages around it too: on a
/// cold archive, the members next to this one are then read without another wait.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn read_cached(file: &File, buf: &mut [u8], offset: u64) -> bool {
    use std::os::fd::AsRawFd;

    let mut done = 0usize;
    while done < buf.len() {
        let Ok(at) = libc::off_t::try_from(offset + done as u64) else {
            return false;
        };
        let iov = libc::iovec {
            iov_base: buf[done..].as_mut_ptr().cast(),
            iov_len: buf.len() - done,
        };
        // SAFETY: one iovec over the unfilled part of `buf`, which outlives the call.
        let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, at, libc::RWF_NOWAIT) };
        match n {
            n if n > 0 => done += n as usize,
            0 => return false,
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => return false,
        }
    }
    true
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn read_cached(_file: &File, _buf: &mut [u8], _offset: u64) -> bool {
    false
}

// ---------------------------------------------------------------------------------------------------
// Building

struct ArchiveInfo {
    kind: u8,
    path: PathBuf,
    size: u64,
    mtime_ns: i64,
    placed: Placed,
}

fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Walks one archive (its mapping is dropped after: a process may hold only so many mappings).
fn index_archive(path: &Path, placed: Placed, hash_bits: u32) -> Result<(ArchiveInfo, Walk)> {
    let file = File::open(path).map_err(|e| Error::io(path, "open the archive", e))?;
    let meta = file
        .metadata()
        .map_err(|e| Error::io(path, "stat the archive", e))?;
    let map = map_file(&file, path)?;
    let data: &[u8] = map.as_deref().unwrap_or(&[]);
    let kind = if data.starts_with(b"PK\x03\x04") || data.starts_with(b"PK\x05\x06") {
        KIND_ZIP
    } else if data.starts_with(&[0x1f, 0x8b]) {
        return Err(Error::new(
            ErrorKind::CorruptArchive,
            "a gzip-compressed archive cannot be read in place: convert it to a plain .tar first",
        )
        .with_path(path));
    } else if data.len() >= 512 && (&data[257..262] == b"ustar" || header_checksum_ok(&data[..512]))
    {
        KIND_TAR
    } else {
        return Err(corrupt(path, 0, "neither a tar nor a zip archive"));
    };
    let walk = if kind == KIND_ZIP {
        walk_zip(data, path, &placed, hash_bits)?
    } else {
        walk_tar(data, path, &placed, hash_bits)?
    };
    if let Some(m) = map.as_ref().filter(|m| m.is_stale()) {
        return Err(stale_error(m.path(), "the archive"));
    }
    let info = ArchiveInfo {
        kind,
        path: path.to_path_buf(),
        size: meta.len(),
        mtime_ns: mtime_ns(&meta),
        placed,
    };
    Ok((info, walk))
}

/// An archive mapped again after its walk (to re-read a name), checked to be the file that was walked.
fn remap(info: &ArchiveInfo) -> Result<Option<Map>> {
    let path = &info.path;
    let file = File::open(path).map_err(|e| Error::io(path, "open the archive", e))?;
    let meta = file
        .metadata()
        .map_err(|e| Error::io(path, "stat the archive", e))?;
    if meta.len() != info.size || mtime_ns(&meta) != info.mtime_ns {
        return Err(Error::new(
            ErrorKind::StaleIndex,
            "the archive changed while the image store was built",
        )
        .with_path(path));
    }
    map_file(&file, path)
}

/// The hash a path is stored under: the top `bits` bits of its seeded xxh3-64.
fn path_hash(p: &[u8], bits: u32) -> u64 {
    let h = xxh3_64_with_seed(p, HASH_SEED);
    if bits >= 64 {
        h
    } else {
        h >> (64 - bits)
    }
}

fn align_up(x: u64) -> u64 {
    x.div_ceil(ALIGN) * ALIGN
}

/// Bits of the locator that number the archive (at least 1, so that the offset's shift stays below 64).
fn archive_bits(count: usize) -> u32 {
    (usize::BITS - count.saturating_sub(1).leading_zeros()).max(1)
}

/// Builds the store of `archives` (in priority order: the first holding a path wins) into `dest`,
/// atomically. Archive paths are stored as given; pass absolute paths for a store that is opened
/// from another working folder.
pub fn build(archives: &[PathBuf], dest: &Path) -> Result<BuildReport> {
    let placed: Vec<(PathBuf, Placement)> = archives
        .iter()
        .map(|a| (a.clone(), Placement::default()))
        .collect();
    build_placed(&placed, dest)
}

/// `build` with each archive's members placed (see `Placement`).
pub fn build_placed(archives: &[(PathBuf, Placement)], dest: &Path) -> Result<BuildReport> {
    build_hashed(archives, dest, 64)
}

/// `build_placed` with paths hashed to `hash_bits` bits (fewer than 64 only to test collisions).
fn build_hashed(
    archives: &[(PathBuf, Placement)],
    dest: &Path,
    hash_bits: u32,
) -> Result<BuildReport> {
    if archives.len() > 1 << 32 {
        return Err(Error::new(
            ErrorKind::Io,
            "too many archives (at most 2^32)",
        ));
    }
    let a_bits = archive_bits(archives.len());
    let offset_bits = 64 - a_bits;
    let mut walked: Vec<(ArchiveInfo, Walk)> = archives
        .par_iter()
        .map(|(a, placement)| {
            let placed = placement.check(a)?;
            let walked = index_archive(a, placed, hash_bits)?;
            if walked.0.size >> offset_bits != 0 {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!(
                        "archive of {} bytes is too large for a store of {} archives",
                        walked.0.size,
                        archives.len()
                    ),
                )
                .with_path(a));
            }
            Ok(walked)
        })
        .collect::<Result<_>>()?;

    let mut report = BuildReport::default();
    let total: usize = walked.iter().map(|w| w.1.members.len()).sum();
    // (hash, locator) for every member. The first archive's list is taken over as is (its number is 0,
    // so its locators are its record offsets): a store of one large archive holds one list, not two.
    let mut all: Vec<(u64, u64)> = walked
        .first_mut()
        .map(|w| std::mem::take(&mut w.1.members))
        .unwrap_or_default();
    all.reserve_exact(total - all.len());
    for (k, (info, walk)) in walked.iter_mut().enumerate() {
        for (name, reason) in walk.refused.drain(..) {
            report.refused.push(Refused {
                archive: info.path.clone(),
                member: name,
                reason,
            });
        }
        let high = (k as u64) << offset_bits;
        all.extend(walk.members.iter().map(|&(h, record)| (h, high | record)));
        walk.members = Vec::new();
    }
    // Within one hash: archive order, then member order (the locator's bits are in that order).
    all.par_sort_unstable();
    // Keep each path's first occurrence. Equal paths have equal hashes, so only runs of one hash need
    // their names, re-read from the archives (mapped again only if one of their members is needed).
    let maps: Vec<OnceLock<Result<Option<Map>>>> = walked.iter().map(|_| OnceLock::new()).collect();
    let name_of = |loc: u64| -> Result<Vec<u8>> {
        let (k, record) = ((loc >> offset_bits) as usize, loc & (u64::MAX >> a_bits));
        let info = &walked[k].0;
        let map = maps[k]
            .get_or_init(|| remap(info))
            .as_ref()
            .map_err(Clone::clone)?;
        let data = map.as_deref().unwrap_or(&[]);
        member_at(info.kind, data, record, k as u32, &info.placed, &info.path)?
            .map(|m| m.name)
            .ok_or_else(|| corrupt(&info.path, record, "member record changed while indexing"))
    };
    let mut kept = 0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i + 1;
        while j < all.len() && all[j].0 == all[i].0 {
            j += 1;
        }
        if j - i == 1 {
            all[kept] = all[i];
            kept += 1;
        } else {
            let mut names: Vec<(Vec<u8>, u64)> = Vec::new();
            for r in i..j {
                let name = name_of(all[r].1)?;
                if let Some((_, first)) = names.iter().find(|(n, _)| *n == name) {
                    report.duplicates.push(Duplicate {
                        member: lossy(&name),
                        kept: walked[(first >> offset_bits) as usize].0.path.clone(),
                        ignored: walked[(all[r].1 >> offset_bits) as usize].0.path.clone(),
                    });
                } else {
                    names.push((name, all[r].1));
                    all[kept] = all[r];
                    kept += 1;
                }
            }
        }
        i = j;
    }
    all.truncate(kept);
    report.members = kept as u64;
    drop(maps);
    let infos: Vec<&ArchiveInfo> = walked.iter().map(|w| &w.0).collect();
    write_store(dest, &infos, &all, a_bits, hash_bits)?;
    Ok(report)
}

fn archive_table(infos: &[&ArchiveInfo]) -> Vec<u8> {
    let mut table = Vec::new();
    for info in infos {
        let p = info.path.as_os_str().as_encoded_bytes();
        table.push(info.kind);
        table.extend_from_slice(&(p.len() as u32).to_le_bytes());
        table.extend_from_slice(p);
        table.extend_from_slice(&info.size.to_le_bytes());
        table.extend_from_slice(&info.mtime_ns.to_le_bytes());
        table.extend_from_slice(&info.placed.strip.to_le_bytes());
        table.extend_from_slice(&(info.placed.prefix.len() as u32).to_le_bytes());
        table.extend_from_slice(&info.placed.prefix);
    }
    table
}

/// Writes the store, streaming the columns straight from `members` (no second copy in memory).
fn write_store(
    dest: &Path,
    infos: &[&ArchiveInfo],
    members: &[(u64, u64)],
    a_bits: u32,
    hash_bits: u32,
) -> Result<()> {
    let n = members.len() as u64;
    let table = archive_table(infos);
    let table_off = align_up(HEADER_LEN as u64);
    let hash_off = align_up(table_off + table.len() as u64);
    let loc_off = align_up(hash_off + 8 * n);
    let file_len = align_up(loc_off + 8 * n);

    let tmp = temp_path(dest);
    let result = (|| -> Result<()> {
        let werr = |e| Error::io(&tmp, "write the image store", e);
        let file = File::create(&tmp).map_err(werr)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut sum = Xxh3::with_seed(0);
        let mut at = HEADER_LEN as u64;
        out.write_all(&[0u8; HEADER_LEN]).map_err(werr)?;
        let mut put = |out: &mut BufWriter<File>, bytes: &[u8], at: &mut u64| {
            sum.update(bytes);
            *at += bytes.len() as u64;
            out.write_all(bytes)
        };
        let zeros = [0u8; ALIGN as usize];
        let pad = |to: u64, at: u64| &zeros[..(to - at) as usize];
        put(&mut out, pad(table_off, at), &mut at).map_err(werr)?;
        put(&mut out, &table, &mut at).map_err(werr)?;
        put(&mut out, pad(hash_off, at), &mut at).map_err(werr)?;
        let mut chunk = Vec::with_capacity(8 << 12);
        for column in [0, 1] {
            if column == 1 {
                put(&mut out, pad(loc_off, at), &mut at).map_err(werr)?;
            }
            for part in members.chunks(1 << 12) {
                chunk.clear();
                for &(h, l) in part {
                    chunk.extend_from_slice(&if column == 0 { h } else { l }.to_le_bytes());
                }
                put(&mut out, &chunk, &mut at).map_err(werr)?;
            }
        }
        put(&mut out, pad(file_len, at), &mut at).map_err(werr)?;
        debug_assert_eq!(at, file_len);

        let mut h = Vec::with_capacity(HEADER_LEN);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        h.extend_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        for v in [
            n,
            infos.len() as u64,
            table_off,
            table.len() as u64,
            hash_off,
            loc_off,
        ] {
            h.extend_from_slice(&v.to_le_bytes());
        }
        h.extend_from_slice(&a_bits.to_le_bytes());
        h.extend_from_slice(&hash_bits.to_le_bytes());
        h.extend_from_slice(&file_len.to_le_bytes());
        h.extend_from_slice(&sum.digest().to_le_bytes());
        h.resize(HEADER_LEN - 8, 0);
        let check = xxh3_64(&h);
        h.extend_from_slice(&check.to_le_bytes());

        let mut file = out.into_inner().map_err(|e| werr(e.into_error()))?;
        file.rewind().map_err(werr)?;
        file.write_all(&h).map_err(werr)?;
        file.sync_all().map_err(werr)?;
        std::fs::rename(&tmp, dest)
            .map_err(|e| Error::io(dest, "move the finished image store into place", e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
// ---------------------------------------------------------------------------------------------------
// Compressed and split tars: converted once into a plain tar shard.
//
// gzip has no random access: reading one member at random would mean inflating from a seek point
// (indexed_gzip, rapidgzip keep a 32 KiB window every 1-4 MiB of output), so every image read would
// cost inflating on average half a spacing plus the image, and the seek points themselves hold 32 KiB
// per spacing. Images do not compress, so a plain tar costs about the same disk as the .tar.gz it
// replaces, and once converted every read is a slice of a mapping. Conversion is one streaming pass.

/// What a conversion may write and who may stop it (see `convert_to_tar_with`).
#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    /// Refuse once the converted tar would grow past this many bytes (a decompression bomb, or less
    /// free space than it needs): checked before every chunk is written, so the temporary file never
    /// holds more than this.
    pub max_bytes: Option<u64>,
    /// Space shared with the other conversions running at once: every chunk is taken from it before
    /// it is written, and a conversion that fails gives back what it took (its file is removed).
    pub budget: Option<Arc<SpaceBudget>>,
    /// Set from another thread to stop the conversion at its next chunk (Ctrl-C).
    pub cancel: Option<Arc<AtomicBool>>,
    /// A testing aid only: sleep this long after each chunk, so that tests can interrupt or kill a
    /// conversion while it runs. The sleep itself stops as soon as `cancel` is set.
    pub chunk_delay: Option<Duration>,
}

/// The bytes that several conversions (and other writers) running at once may write together: the
/// free space when they started, less a reserve. Each conversion checks only its own output against
/// its own limit, so without a shared count N conversions at once could each fill the disk alone.
#[derive(Debug)]
pub struct SpaceBudget {
    limit: u64,
    used: AtomicU64,
}

impl SpaceBudget {
    pub fn new(limit: u64) -> Self {
        SpaceBudget {
            limit,
            used: AtomicU64::new(0),
        }
    }

    /// Takes `n` bytes if they are left (all or nothing); false when they are not.
    pub fn take(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    /// Gives back `n` bytes taken before (their file was removed).
    pub fn release(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(n))
            });
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }
}

/// The error of a conversion stopped through `ConvertOptions::cancel`.
pub fn convert_cancelled() -> Error {
    Error::new(ErrorKind::Io, "interrupted: the archive was not converted")
}

/// Bytes decompressed and written per step; limits and cancellation are checked between steps.
const CONVERT_CHUNK: usize = 1 << 20;

/// `convert_to_tar_with` with no limit and no way to stop it.
pub fn convert_to_tar(parts: &[PathBuf], dest: &Path) -> Result<u64> {
    convert_to_tar_with(parts, dest, &ConvertOptions::default())
}

/// Converts a tar given as `parts` (one file, or split parts in order, concatenated) that is either
/// plain or gzip-compressed (one or more gzip members) into the plain tar `dest`, atomically. Every
/// gzip member's CRC-32 and length are checked, the stream must be read to its very end, and the
/// result must be a complete tar; otherwise nothing is left at `dest`. Returns the bytes written.
///
/// The stream is copied chunk by chunk: past `opts.max_bytes` it is refused, and once `opts.cancel`
/// is set it stops with `convert_cancelled()`; either way the temporary file is removed.
pub fn convert_to_tar_with(parts: &[PathBuf], dest: &Path, opts: &ConvertOptions) -> Result<u64> {
    let first = parts
        .first()
        .ok_or_else(|| Error::new(ErrorKind::Io, "no archive parts given"))?;
    let mut reader: Box<dyn Read> = Box::new(std::io::empty());
    for p in parts {
        let f = File::open(p).map_err(|e| Error::io(p, "open the archive", e))?;
        reader = Box::new(reader.chain(f));
    }
    let mut magic = [0u8; 2];
    let is_gzip = File::open(first)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == [0x1f, 0x8b];
    let reader = std::io::BufReader::with_capacity(1 << 20, reader);
    let mut source: Box<dyn Read> = if is_gzip {
        Box::new(flate2::bufread::MultiGzDecoder::new(reader))
    } else {
        Box::new(reader)
    };
    let cancelled = || {
        opts.cancel
            .as_deref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    };
    let tmp = temp_path(dest);
    let taken = std::cell::Cell::new(0u64);
    let result = (|| -> Result<u64> {
        let werr = |e| Error::io(&tmp, "write the converted tar", e);
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(werr)?;
        let mut buf = vec![0u8; CONVERT_CHUNK];
        let mut n: u64 = 0;
        loop {
            if cancelled() {
                return Err(convert_cancelled());
            }
            let got = read_chunk(&mut source, &mut buf).map_err(|e| {
                Error::new(
                    ErrorKind::CorruptArchive,
                    format!("archive is corrupt or truncated: the compressed stream does not read to its end ({e})"),
                )
                .with_path(first)
            })?;
            if got == 0 {
                break;
            }
            let produced = n + got as u64;
            if let Some(max) = opts.max_bytes.filter(|&max| produced > max) {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!(
                        "{LIMIT_PREFIX} it had produced {produced} bytes, more than the limit of {max} bytes"
                    ),
                )
                .with_path(first));
            }
            if let Some(budget) = &opts.budget {
                if !budget.take(got as u64) {
                    return Err(Error::new(
                        ErrorKind::Io,
                        format!(
                            "{SPACE_PREFIX} it had produced {produced} bytes when the budget of {} bytes \
                             that all conversions running at once may write together ran out (other \
                             conversions had taken {} bytes of it)",
                            budget.limit(),
                            budget.used().saturating_sub(taken.get()),
                        ),
                    )
                    .with_path(first));
                }
                taken.set(taken.get() + got as u64);
            }
            file.write_all(&buf[..got]).map_err(werr)?;
            n = produced;
            if let Some(delay) = opts.chunk_delay {
                let until = std::time::Instant::now() + delay;
                while !cancelled() && std::time::Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(5).min(delay));
                }
            }
        }
        file.sync_all().map_err(werr)?;
        // The result must be a whole tar (the end-of-archive blocks come before the gzip trailer, so
        // a tar cut short inside a valid gzip stream is caught only here).
        let map = map_file(&file, &tmp)?;
        walk_tar(map.as_deref().unwrap_or(&[]), first, &Placed::default(), 64)?;
        std::fs::rename(&tmp, dest)
            .map_err(|e| Error::io(dest, "move the converted tar into place", e))?;
        Ok(n)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        if let Some(budget) = &opts.budget {
            budget.release(taken.get());
        }
    }
    result
}

/// How the message of a conversion refused by `ConvertOptions::max_bytes` starts.
pub const LIMIT_PREFIX: &str = "refusing to convert the archive:";
/// How the message of a conversion refused by `ConvertOptions::budget` starts (it also starts with
/// `LIMIT_PREFIX`).
pub const SPACE_PREFIX: &str = "refusing to convert the archive: out of space:";

/// Fills `buf` as far as the stream allows (short reads of the decoder are joined, so a chunk is a
/// whole `buf` until the end); returns the bytes read, 0 at the end.
fn read_chunk(source: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match source.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(k) => filled += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// `convert_to_tar` for many archives at once, in parallel: `jobs` pairs each archive's parts with
/// its destination. Fails with the first error (by position in `jobs`); finished shards are kept.
pub fn convert_all(jobs: &[(Vec<PathBuf>, PathBuf)]) -> Result<Vec<u64>> {
    let jobs: Vec<_> = jobs
        .iter()
        .map(|(parts, dest)| (parts.clone(), dest.clone(), None))
        .collect();
    convert_all_with(&jobs, &ConvertOptions::default())
}

/// `convert_to_tar_with` for many archives at once, in parallel: each job is (parts, destination,
/// its own maximum output, which replaces `opts.max_bytes`). Fails with the first error (by position
/// in `jobs`); finished shards are kept. `opts.cancel` stops every conversion under way.
pub fn convert_all_with(
    jobs: &[(Vec<PathBuf>, PathBuf, Option<u64>)],
    opts: &ConvertOptions,
) -> Result<Vec<u64>> {
    jobs.par_iter()
        .map(|(parts, dest, max_bytes)| {
            let opts = ConvertOptions {
                max_bytes: *max_bytes,
                ..opts.clone()
            };
            convert_to_tar_with(parts, dest, &opts)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------
// Reading

/// One archive of an open store; mapped on first read.
struct Archive {
    kind: u8,
    path: PathBuf,
    size: u64,
    mtime_ns: i64,
    placed: Placed,
    map: OnceLock<std::result::Result<Option<Map>, Error>>,
    /// The archive opened for `map` (set once the map is made and checked): tar members are read
    /// from it with `pread` (see `read_member`).
    file: OnceLock<File>,
    /// Reads left to make through the mapping before `pread` is tried again (see `tar_window`).
    mapped_reads: AtomicU32,
}

/// An open image store.
pub struct ImageStore {
    path: PathBuf,
    map: Map,
    n: usize,
    hash_col: usize,
    loc_col: usize,
    archive_bits: u32,
    hash_bits: u32,
    archives: Vec<Archive>,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ImageStore({}, {} members)", self.path.display(), self.n)
    }
}

/// The archive table: every field bounds-checked, and it must fill its section exactly.
fn parse_archive_table(
    mut t: &[u8],
    count: u64,
    bad: &dyn Fn(&str) -> Error,
) -> Result<Vec<Archive>> {
    let mut archives = Vec::new();
    for _ in 0..count {
        let tbad = || bad("archive table is truncated");
        let kind = *t.first().ok_or_else(tbad)?;
        if kind != KIND_TAR && kind != KIND_ZIP {
            return Err(bad(&format!(
                "archive table holds unknown archive kind {kind}"
            )));
        }
        let plen = u64::from(u32_at(t, 1).ok_or_else(tbad)?);
        let p = bytes_at(t, 5, plen).ok_or_else(tbad)?;
        let size = u64_at(t, 5 + plen).ok_or_else(tbad)?;
        let mtime = u64_at(t, 13 + plen).ok_or_else(tbad)? as i64;
        let strip = u32_at(t, 21 + plen).ok_or_else(tbad)?;
        let xlen = u64::from(u32_at(t, 25 + plen).ok_or_else(tbad)?);
        let prefix = bytes_at(t, 29 + plen, xlen).ok_or_else(tbad)?.to_vec();
        #[cfg(unix)]
        let p = PathBuf::from(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(p));
        #[cfg(not(unix))]
        let p = PathBuf::from(String::from_utf8_lossy(p).into_owned());
        archives.push(Archive {
            kind,
            path: p,
            size,
            mtime_ns: mtime,
            placed: Placed { strip, prefix },
            map: OnceLock::new(),
            file: OnceLock::new(),
            mapped_reads: AtomicU32::new(0),
        });
        t = &t[(29 + plen + xlen) as usize..];
    }
    if !t.is_empty() {
        return Err(bad("archive table has bytes after its last archive"));
    }
    Ok(archives)
}

impl ImageStore {
    /// Opens and checks the store at `path`: header checksum, every bound (checked arithmetic), and
    /// for small stores the checksum of everything else. A bad file is a `CorruptIndex` error.
    pub fn open(path: &Path) -> Result<ImageStore> {
        let file = File::open(path).map_err(|e| Error::io(path, "open the image store", e))?;
        let bad = |what: &str| {
            Error::new(
                ErrorKind::CorruptIndex,
                format!("image store is corrupt: {what}"),
            )
            .with_path(path)
        };
        let map = map_file(&file, path)?.ok_or_else(|| bad("file is empty"))?;
        let b: &[u8] = &map;
        // The magic and version come first, so that a store of another version says so even when
        // the rest of its header is laid out differently.
        if b.len() < 12 || &b[..8] != MAGIC {
            return Err(bad("not a fusion-fast image store (bad magic)"));
        }
        let r32 = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let version = r32(8);
        if version != FORMAT_VERSION {
            return Err(Error::new(
                ErrorKind::CorruptIndex,
                format!(
                    "image store has format version {version}, this fusion-fast reads version \
                     {FORMAT_VERSION}: rebuild it (ImageStore.build, or prepare again)"
                ),
            )
            .with_path(path));
        }
        if b.len() < HEADER_LEN {
            return Err(bad("file is shorter than its header"));
        }
        let r64 = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        if r32(12) as usize != HEADER_LEN || xxh3_64(&b[..HEADER_LEN - 8]) != r64(HEADER_LEN - 8) {
            return Err(bad("header checksum mismatch"));
        }
        let file_len = r64(72);
        if file_len != b.len() as u64 {
            return Err(bad(&format!(
                "file has {} bytes, its header says {file_len} (truncated?)",
                b.len()
            )));
        }
        if b.len() as u64 <= AUTO_VERIFY_BYTES && xxh3_64(&b[HEADER_LEN..]) != r64(80) {
            return Err(bad("checksum mismatch"));
        }
        let n = r64(16);
        let archive_count = r64(24);
        let (table_off, table_len) = (r64(32), r64(40));
        let (hash_off, loc_off) = (r64(48), r64(56));
        let (archive_bits, hash_bits) = (r32(64), r32(68));
        if !(1..=32).contains(&archive_bits) || archive_count > 1u64 << archive_bits {
            return Err(bad(&format!(
                "{archive_count} archives numbered with {archive_bits} bits"
            )));
        }
        if !(1..=64).contains(&hash_bits) {
            return Err(bad(&format!("hash of {hash_bits} bits")));
        }
        // Sections: inside the file, after the header, in order, not overlapping.
        let end = |off: u64, len: Option<u64>| len.and_then(|l| off.checked_add(l));
        let table_end = end(table_off, Some(table_len));
        let hash_end = end(hash_off, n.checked_mul(8));
        let loc_end = end(loc_off, n.checked_mul(8));
        let ordered = table_off >= HEADER_LEN as u64
            && table_end.is_some_and(|e| e <= hash_off)
            && hash_end.is_some_and(|e| e <= loc_off)
            && loc_end.is_some_and(|e| e <= file_len);
        if !ordered {
            return Err(bad("a section lies outside the file or overlaps another"));
        }
        if hash_off % ALIGN != 0 || loc_off % ALIGN != 0 {
            return Err(bad("a column is misaligned"));
        }
        let table = &b[table_off as usize..(table_off + table_len) as usize];
        let archives = parse_archive_table(table, archive_count, &bad)?;
        Ok(ImageStore {
            path: path.to_path_buf(),
            n: n as usize,
            hash_col: hash_off as usize,
            loc_col: loc_off as usize,
            archive_bits,
            hash_bits,
            archives,
            map,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The archives, in priority order.
    pub fn archives(&self) -> impl Iterator<Item = &Path> {
        self.archives.iter().map(|a| a.path.as_path())
    }

    /// Recomputes the checksum of the whole file and checks that the hash column is sorted.
    pub fn verify(&self) -> Result<()> {
        let b: &[u8] = &self.map;
        if xxh3_64(&b[HEADER_LEN..]) != u64::from_le_bytes(b[80..88].try_into().unwrap()) {
            return Err(self.bad("checksum mismatch".into()));
        }
        if (1..self.n).any(|i| self.hash(i - 1) > self.hash(i)) {
            return Err(self.bad("the hash column is not sorted".into()));
        }
        Ok(())
    }

    fn col(&self, col: usize, i: usize) -> u64 {
        let o = col + 8 * i;
        u64::from_le_bytes(self.map[o..o + 8].try_into().unwrap())
    }

    fn hash(&self, i: usize) -> u64 {
        self.col(self.hash_col, i)
    }

    /// (archive number, record offset) of member `i`.
    fn locator(&self, i: usize) -> (usize, u64) {
        let l = self.col(self.loc_col, i);
        let offset_bits = 64 - self.archive_bits;
        (
            (l >> offset_bits) as usize,
            l & (u64::MAX >> self.archive_bits),
        )
    }

    fn bad(&self, what: String) -> Error {
        Error::new(
            ErrorKind::CorruptIndex,
            format!("image store is corrupt: {what}"),
        )
        .with_path(&self.path)
    }

    /// Member `i` re-read from its archive: its path and location. A record that no longer parses to
    /// a member of the recorded hash means the archive changed since the build: a stale-index error.
    fn resolve(&self, i: usize) -> Result<Indexed> {
        let m = self.resolve_unhashed(i)?;
        self.check_hash(i, m)
    }

    /// `resolve` without the check of the name's hash (for a caller that compares the name first).
    fn resolve_unhashed(&self, i: usize) -> Result<Indexed> {
        let (k, record) = self.locator(i);
        let a = self.archives.get(k).ok_or_else(|| {
            self.bad(format!(
                "member {i} names archive {k}, which does not exist"
            ))
        })?;
        let data = self.archive_bytes(k)?;
        let found = member_at(a.kind, data, record, k as u32, &a.placed, &a.path);
        self.check_archive_mapped(k)?;
        match found {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(self.stale(i, "no readable member there".into())),
            Err(e) => Err(self.stale(i, e.message)),
        }
    }

    fn check_hash(&self, i: usize, m: Indexed) -> Result<Indexed> {
        if path_hash(&m.name, self.hash_bits) == self.hash(i) {
            Ok(m)
        } else {
            Err(self.stale(i, format!("found member {}", lossy(&m.name))))
        }
    }

    fn stale(&self, i: usize, what: String) -> Error {
        let (k, record) = self.locator(i);
        let archive = self
            .archives
            .get(k)
            .map_or(Path::new(""), |a| a.path.as_path());
        Error::new(
            ErrorKind::StaleIndex,
            format!(
                "the archive no longer matches the image store {} at byte {record} ({what}): it \
                 changed after the store was built; rebuild the store",
                self.path.display()
            ),
        )
        .with_path(archive)
    }

    /// The path of member `i` (in hash order), `i < len()`, as read from its archive.
    pub fn name(&self, i: usize) -> Result<Vec<u8>> {
        Ok(self.resolve(i)?.name)
    }

    /// Every position, ordered by archive and then by place in the archive: reading members' names in
    /// this order walks each archive front to back instead of jumping about it in hash order.
    pub fn archive_order(&self) -> Vec<usize> {
        let mut order: Vec<(u64, usize)> = (0..self.n)
            .map(|i| (self.col(self.loc_col, i), i))
            .collect();
        order.par_sort_unstable();
        order.into_iter().map(|(_, i)| i).collect()
    }

    /// Where member `i` lies, as read from its archive.
    pub fn location(&self, i: usize) -> Result<Location> {
        Ok(self.resolve(i)?.loc)
    }

    /// The position and location of `path` (normalised as at build time), if the store holds it.
    pub fn lookup(&self, path: &[u8]) -> Result<Option<(usize, Location)>> {
        let Some(path) = normalize(path) else {
            return Ok(None);
        };
        let h = path_hash(&path, self.hash_bits);
        let mut i = self.first_at_least(h);
        while i < self.n && self.hash(i) == h {
            let m = self.resolve_unhashed(i)?;
            if m.name == path {
                return Ok(Some((i, m.loc)));
            }
            self.check_hash(i, m)?;
            i += 1;
        }
        Ok(None)
    }

    /// The first position whose hash is at least `h`. Hashes are uniform, so a few interpolation
    /// steps narrow the range to a handful of entries (about log log n probes, each a likely cache
    /// miss, against log n for bisection); bisection finishes the search, and takes over at once when
    /// the hashes are not spread as expected, so a crafted column costs O(log n) at worst.
    fn first_at_least(&self, h: u64) -> usize {
        let (mut lo, mut hi) = (0usize, self.n);
        // Invariant: every position below `lo` has a hash below `h`, every one from `hi` on, at least `h`.
        for _ in 0..4 {
            if hi - lo <= 32 {
                break;
            }
            let (a, b) = (self.hash(lo), self.hash(hi - 1));
            if h <= a {
                return lo;
            }
            if h > b {
                return hi;
            }
            // a < h <= b: h's estimated position between lo and hi - 1, kept 8 entries inside the range.
            let span = (hi - 1 - lo) as u128;
            let guess = lo + ((u128::from(h - a) * span) / u128::from(b - a)) as usize;
            let probe = guess.clamp(lo + 8, hi - 9);
            let before = hi - lo;
            if self.hash(probe) < h {
                lo = probe + 1;
                // Usually within a few entries: step forward in growing strides to bracket it.
                let mut step = 8;
                while lo + step < hi && self.hash(lo + step) < h {
                    lo += step + 1;
                    step *= 2;
                }
                hi = hi.min(lo + step);
            } else {
                hi = probe;
                let mut step = 8;
                while hi > lo + step && self.hash(hi - step - 1) >= h {
                    hi -= step + 1;
                    step *= 2;
                }
                lo = lo.max(hi.saturating_sub(step + 1));
            }
            if (hi - lo) * 2 > before {
                break;
            }
        }
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.hash(mid) < h {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// The position of `path` (normalised as at build time), if the store holds it.
    pub fn find(&self, path: &[u8]) -> Result<Option<usize>> {
        Ok(self.lookup(path)?.map(|(i, _)| i))
    }

    fn archive_bytes(&self, k: usize) -> Result<&[u8]> {
        let a = self
            .archives
            .get(k)
            .ok_or_else(|| self.bad(format!("archive number {k} does not exist")))?;
        let mapped = a.map.get_or_init(|| {
            let file =
                File::open(&a.path).map_err(|e| Error::io(&a.path, "open the archive", e))?;
            let meta = file
                .metadata()
                .map_err(|e| Error::io(&a.path, "stat the archive", e))?;
            if meta.len() != a.size || mtime_ns(&meta) != a.mtime_ns {
                return Err(Error::new(
                    ErrorKind::StaleIndex,
                    format!(
                        "the archive changed after the image store {} was built: rebuild the store",
                        self.path.display()
                    ),
                )
                .with_path(&a.path));
            }
            let map = map_file(&file, &a.path)?;
            let _ = a.file.set(file);
            Ok(map)
        });
        match mapped {
            Ok(m) => Ok(m.as_deref().unwrap_or(&[])),
            Err(e) => Err(e.clone()),
        }
    }

    fn check_archive_mapped(&self, k: usize) -> Result<()> {
        if self.map.is_stale() {
            return Err(stale_error(&self.path, "the image store"));
        }
        if let Some(Ok(Some(m))) = self.archives.get(k).and_then(|a| a.map.get()) {
            if m.is_stale() {
                return Err(stale_error(m.path(), "the archive"));
            }
        }
        Ok(())
    }

    /// A stale-index error when a page of the store or of member `i`'s archive vanished since it was
    /// mapped (the file shrank): what was read from it may hold zeros. Call it after reading.
    pub fn check_mapped(&self, i: usize) -> Result<()> {
        self.check_archive_mapped(self.locator(i).0)
    }

    /// The bytes of member `i`: borrowed from the mapped archive when stored (call `check_mapped`
    /// after copying them), inflated otherwise. An archive cut short while it is read is a stale-index
    /// error, not the corrupt member its zeros would look like.
    pub fn read_at(&self, i: usize) -> Result<Cow<'_, [u8]>> {
        let m = self.resolve(i)?;
        self.read_located(&m.name, m.loc)
    }

    /// The bytes of the member at `loc` (from `lookup`), called `name`; as `read_at`.
    pub fn read_located(&self, name: &[u8], loc: Location) -> Result<Cow<'_, [u8]>> {
        let read = self.read_unchecked(name, loc);
        self.check_archive_mapped(loc.archive as usize)?;
        read
    }

    fn read_unchecked(&self, name: &[u8], loc: Location) -> Result<Cow<'_, [u8]>> {
        let data = self.archive_bytes(loc.archive as usize)?;
        let a = &self.archives[loc.archive as usize];
        let name = || lossy(name);
        let raw = bytes_at(data, loc.data_offset, loc.stored_size).ok_or_else(|| {
            corrupt(
                &a.path,
                loc.data_offset,
                format!("member {} lies outside the archive", name()),
            )
        })?;
        let bytes: Cow<[u8]> = match loc.method {
            STORED => Cow::Borrowed(raw),
            _ => Cow::Owned(inflate_exactly(raw, loc.size).map_err(|why| {
                corrupt(&a.path, loc.data_offset, format!("member {} {why}", name()))
            })?),
        };
        if a.kind == KIND_ZIP && crc32fast::hash(&bytes) != loc.crc {
            return Err(corrupt(
                &a.path,
                loc.data_offset,
                format!("CRC-32 mismatch in member {}", name()),
            ));
        }
        Ok(bytes)
    }

    /// The position and bytes of the member at `path` (normalised as at build time), if the store
    /// holds it: what `lookup` and then `read_located` give, with no `check_mapped` left to call.
    ///
    /// A plain-tar member is read with `pread` (its records and data lie together) instead of through
    /// the mapping: the first touch of a mapped page in a process is a page fault, which also maps
    /// the pages around it and costs several times a `pread` of a small member; reads at random over
    /// archives larger than what a process has touched (a fresh DataLoader worker, a large dataset)
    /// fault on nearly every read. Whatever a window does not settle (pages not in the page cache, a
    /// record that does not parse in it, a short read, a member larger than `PREAD_MAX`) is read
    /// through the mapping, which gives the same bytes and every error the mapped read gives.
    pub fn read_member(&self, path: &[u8]) -> Result<Option<(usize, Cow<'_, [u8]>)>> {
        let Some(norm) = normalize(path) else {
            return Ok(None);
        };
        let h = path_hash(&norm, self.hash_bits);
        let mut i = self.first_at_least(h);
        while i < self.n && self.hash(i) == h {
            let (k, record) = self.locator(i);
            let m = match self.tar_window(k, record)? {
                Some((m, bytes)) if m.name == norm => {
                    // The index was read through its mapping: a store file cut short left zeros.
                    self.check_archive_mapped(k)?;
                    return Ok(Some((i, Cow::Owned(bytes))));
                }
                Some((m, _)) => m,
                None => {
                    let m = self.resolve_unhashed(i)?;
                    if m.name == norm {
                        return self.read_located(&norm, m.loc).map(|b| Some((i, b)));
                    }
                    m
                }
            };
            self.check_hash(i, m)?;
            i += 1;
        }
        Ok(None)
    }

    /// The tar member whose first record starts at `record` in archive `k`, and its bytes, read with
    /// `pread` of a window from `record`: the first `PREAD_WINDOW` bytes, then (when its data runs
    /// past them) enough for the size the first header declares. None when archive `k` is no tar or
    /// the window does not settle the record (see `read_member`).
    fn tar_window(&self, k: usize, record: u64) -> Result<Option<(Indexed, Vec<u8>)>> {
        let Some(a) = self.archives.get(k).filter(|a| a.kind == KIND_TAR) else {
            return Ok(None);
        };
        // Maps the archive on first use: its size and mtime are checked then.
        let len = self.archive_bytes(k)?.len() as u64;
        let (Some(file), Some(rest)) = (a.file.get(), len.checked_sub(record)) else {
            return Ok(None);
        };
        let left = a.mapped_reads.load(Ordering::Relaxed);
        if left > 0 {
            // Another thread may count the same read down: a read or two more either way.
            let _ = a.mapped_reads.compare_exchange(
                left,
                left - 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            return Ok(None);
        }
        let mut want = rest.min(PREAD_WINDOW);
        loop {
            let mut buf = vec![0u8; want as usize];
            if !read_cached(file, &mut buf, record) {
                a.mapped_reads.store(MAPPED_AFTER_MISS, Ordering::Relaxed);
                return Ok(None);
            }
            let settled = match tar_entry(&buf, 0, &a.path) {
                Ok(Some(e)) => match tar_classify(&e, k as u32, &a.placed) {
                    Class::Member(m) => Some((m, e.data_offset, e.size)),
                    _ => return Ok(None),
                },
                Ok(None) => return Ok(None),
                Err(_) => None,
            };
            if let Some((mut m, start, size)) = settled {
                m.loc.data_offset += record;
                buf.truncate((start + size) as usize);
                buf.drain(..start as usize);
                return Ok(Some((m, buf)));
            }
            // Its data runs past the window (or an extension record does): once more, with room for
            // the size the first header declares.
            let declared = buf.get(124..136).and_then(tar_number).unwrap_or(0);
            let next = declared
                .saturating_add(2048)
                .max(want.saturating_mul(4))
                .min(rest);
            if want >= rest || next > PREAD_MAX {
                return Ok(None);
            }
            want = next;
        }
    }

    /// The bytes of the member at `path`; `Ok(None)` when no archive holds it.
    pub fn read(&self, path: &[u8]) -> Result<Option<Cow<'_, [u8]>>> {
        match self.lookup(path)? {
            Some((_, loc)) => {
                let name = normalize(path).unwrap_or_default();
                self.read_located(&name, loc).map(Some)
            }
            None => Ok(None),
        }
    }
}

#[cfg(test)]
#[path = "image_store_tests.rs"]
mod tests;
