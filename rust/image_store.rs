//! The image store: images read straight out of the downloaded archives, never extracted.
//!
//! For a list of archives (plain `.tar`, `.zip` with stored or deflated members) the builder walks each
//! archive's structure in parallel — tar: the 512-byte headers, seeking over data (ustar prefixes, GNU
//! `L` long names, PAX `path`/`size` records); zip: the central directory (zip64 included) and each
//! member's local header — and writes one store file mapping member path to (archive, data offset,
//! size, method, CRC). A lookup is a binary search over sorted 64-bit path hashes followed by an exact
//! comparison of the path bytes, so it costs O(log n) page touches and no per-member object anywhere.
//!
//! Reads: tar members and stored zip members are slices of the mapped archive (zero-copy); deflated
//! zip members are inflated on read. Zip members have their CRC-32 checked on every read.
//!
//! Paths are normalised (`./a//b` → `a/b`). Members whose path is absolute or holds `..`, links,
//! devices, fifos, sparse files, encrypted members and unknown zip methods are never indexed: the
//! build report lists them as refused. A path present more than once (in one archive or in several)
//! resolves to its *first* occurrence, archives taken in the order given and members in archive
//! order; the build report lists the others as duplicates.
//!
//! ```text
//! offset  size  field (little-endian)
//! 0       8     magic "FFIMGST\0"
//! 8       4     format version (u32)
//! 12      4     header length (u32, = 160)
//! 16      8     member count n
//! 24      8     archive count
//! 32      16    archive table: offset, length   (per archive: u8 kind, u32 path length, path bytes,
//!                                                u64 size, i64 mtime in ns)
//! 48      16    names blob: offset, length      (member paths, in hash order, back to back)
//! 64      64    column offsets (each a multiple of 64): hash u64, name end u64, data offset u64,
//!               stored size u64, size u64, crc u32, archive u32, method u8
//! 128     8     file length
//! 136     8     xxh3-64 of every byte after the header
//! 144     8     reserved (0)
//! 152     8     xxh3-64 of the header bytes before it
//! ```
//! The file is written to a temporary name and renamed into place, so a reader never sees a torn store.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rayon::prelude::*;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::error::{Error, ErrorKind, Result};
use crate::mapping::{stale_error, GuardedMap};

pub const MAGIC: &[u8; 8] = b"FFIMGST\0";
pub const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: usize = 160;
const ALIGN: u64 = 64;
/// Stores up to this size have their body checksum verified on every open; larger ones on `verify`.
pub const AUTO_VERIFY_BYTES: u64 = 4 << 20;
const HASH_SEED: u64 = 0x1f_f1_5e_ed;

/// Compression method of a member (zip's numbering).
pub const STORED: u8 = 0;
pub const DEFLATED: u8 = 8;

const KIND_TAR: u8 = 1;
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

/// One member that can be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub path: Vec<u8>,
    pub data_offset: u64,
    /// Bytes in the archive (compressed size for deflated members).
    pub stored_size: u64,
    /// Bytes once read.
    pub size: u64,
    pub method: u8,
    /// CRC-32 of the member's bytes (0 for tar, which has none).
    pub crc: u32,
}

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

struct Walk {
    members: Vec<Member>,
    refused: Vec<(String, String)>,
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

fn header_checksum_ok(h: &[u8]) -> bool {
    let Some(stored) = tar_number(&h[148..156]) else {
        return false;
    };
    let unsigned: u64 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(b)
            }
        })
        .sum();
    let signed: i64 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                i64::from(b as i8)
            }
        })
        .sum();
    stored == unsigned || stored as i64 == signed
}

/// PAX records `"<len> key=value\n"`; returns (path, size) overrides.
fn parse_pax(data: &[u8], path: &Path, at: u64) -> Result<(Option<Vec<u8>>, Option<u64>)> {
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
                b"path" => name = Some(value.to_vec()),
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

fn walk_tar(data: &[u8], path: &Path) -> Result<Walk> {
    let len = data.len() as u64;
    let mut walk = Walk {
        members: Vec::new(),
        refused: Vec::new(),
    };
    let mut pos: u64 = 0;
    let mut long_name: Option<Vec<u8>> = None;
    let mut pax: (Option<Vec<u8>>, Option<u64>) = (None, None);
    loop {
        let end = pos.checked_add(512).filter(|&e| e <= len).ok_or_else(|| {
            corrupt(
                path,
                pos,
                "the tar ends without its end-of-archive blocks (truncated?)",
            )
        })?;
        let h = &data[pos as usize..end as usize];
        if h.iter().all(|&b| b == 0) {
            return Ok(walk);
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
            b'L' => long_name = Some(field_str(body).to_vec()),
            b'K' => {}
            b'x' => pax = parse_pax(body, path, pos)?,
            b'g' => {}
            _ => {
                let raw_name = if let Some(n) = pax.0.take() {
                    n
                } else if let Some(n) = long_name.take() {
                    n
                } else {
                    let name = field_str(&h[0..100]);
                    let prefix = if &h[257..262] == b"ustar" {
                        field_str(&h[345..500])
                    } else {
                        &[]
                    };
                    if prefix.is_empty() {
                        name.to_vec()
                    } else {
                        [prefix, b"/", name].concat()
                    }
                };
                long_name = None;
                pax = (None, None);
                let shown = lossy(&raw_name);
                match typeflag {
                    b'0' | 0 | b'7' => match normalize(&raw_name) {
                        Some(p) if !raw_name.ends_with(b"/") => walk.members.push(Member {
                            path: p,
                            data_offset,
                            stored_size: size,
                            size,
                            method: STORED,
                            crc: 0,
                        }),
                        Some(_) => {}
                        None => walk
                            .refused
                            .push((shown, "absolute path or '..' component".into())),
                    },
                    b'5' => {}
                    b'1' | b'2' => walk.refused.push((shown, "a link".into())),
                    b'3' | b'4' | b'6' => walk.refused.push((shown, "a device or fifo".into())),
                    b'S' => walk.refused.push((shown, "a sparse file".into())),
                    t => walk
                        .refused
                        .push((shown, format!("unknown tar member type {:?}", t as char))),
                }
            }
        }
        pos = next;
    }
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

fn walk_zip(data: &[u8], path: &Path) -> Result<Walk> {
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
    let mut walk = Walk {
        members: Vec::with_capacity(count.min(len / 46) as usize),
        refused: Vec::new(),
    };
    let mut p = cd_offset;
    for _ in 0..count {
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
        let name = zip_name(raw_name, flags);
        let name = name.as_ref();
        let shown = lossy(name);
        let entry_start = p;
        p = p + 46 + name_len + extra_len + comment_len;
        if name.ends_with(b"/") {
            continue;
        }
        let unix_mode = if made_by >> 8 == 3 { ext_attr >> 16 } else { 0 };
        if unix_mode & 0o170000 == 0o120000 {
            walk.refused.push((shown, "a link".into()));
            continue;
        }
        if flags & 1 != 0 {
            walk.refused.push((shown, "encrypted".into()));
            continue;
        }
        let method = match method {
            0 => STORED,
            8 => DEFLATED,
            m => {
                walk.refused
                    .push((shown, format!("unsupported compression method {m}")));
                continue;
            }
        };
        let Some(norm) = normalize(name) else {
            walk.refused
                .push((shown, "absolute path or '..' component".into()));
            continue;
        };
        if method == STORED && csize != usize_ {
            return Err(trunc(
                entry_start,
                &format!("stored member {shown} has different stored and real sizes"),
            ));
        }
        let lbad = || {
            trunc(
                local,
                &format!("local header of {shown} is missing or truncated"),
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
                &format!("data of {shown} runs past the end of the archive"),
            ));
        }
        walk.members.push(Member {
            path: norm,
            data_offset,
            stored_size: csize,
            size: usize_,
            method,
            crc,
        });
    }
    Ok(walk)
}

// ---------------------------------------------------------------------------------------------------
// Building

struct ArchiveInfo {
    kind: u8,
    path: PathBuf,
    size: u64,
    mtime_ns: i64,
}

fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i64)
}

fn index_archive(path: &Path) -> Result<(ArchiveInfo, Walk)> {
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
        walk_zip(data, path)?
    } else {
        walk_tar(data, path)?
    };
    Ok((
        ArchiveInfo {
            kind,
            path: path.to_path_buf(),
            size: meta.len(),
            mtime_ns: mtime_ns(&meta),
        },
        walk,
    ))
}

fn path_hash(p: &[u8]) -> u64 {
    xxh3_64_with_seed(p, HASH_SEED)
}

fn align_up(x: u64) -> u64 {
    x.div_ceil(ALIGN) * ALIGN
}

/// Where an archive's members appear in the store: member `m` is found under `prefix` followed by `m`
/// without its first `strip` components (prepare's nesting decision), so record paths look up as is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    pub strip: usize,
    /// A relative folder (`"COCO"` or `"COCO/"`), or empty.
    pub prefix: String,
}

impl Placement {
    fn apply(&self, walk: &mut Walk, archive: &Path) -> Result<()> {
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
        if self.strip == 0 && prefix.is_empty() {
            return Ok(());
        }
        let strip = self.strip;
        let mut kept = Vec::with_capacity(walk.members.len());
        for mut m in std::mem::take(&mut walk.members) {
            let tail = m.path.splitn(strip + 1, |&b| b == b'/').nth(strip);
            match tail {
                Some(t) => {
                    m.path = [prefix.as_slice(), t].concat();
                    kept.push(m);
                }
                None => walk.refused.push((
                    lossy(&m.path),
                    format!("has fewer than {} folders to strip", strip),
                )),
            }
        }
        walk.members = kept;
        Ok(())
    }
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
    if archives.len() > u32::MAX as usize {
        return Err(Error::new(ErrorKind::Io, "too many archives"));
    }
    let walked: Vec<(ArchiveInfo, Walk)> = archives
        .par_iter()
        .map(|(a, placement)| {
            let (info, mut walk) = index_archive(a)?;
            placement.apply(&mut walk, a)?;
            Ok((info, walk))
        })
        .collect::<Result<_>>()?;

    let mut report = BuildReport::default();
    // (hash, archive, member) for every member; a stable sort keeps archive/member order within a hash.
    let mut all: Vec<(u64, u32, &Member)> = Vec::new();
    for (k, (info, walk)) in walked.iter().enumerate() {
        for (name, reason) in &walk.refused {
            report.refused.push(Refused {
                archive: info.path.clone(),
                member: name.clone(),
                reason: reason.clone(),
            });
        }
        all.extend(
            walk.members
                .iter()
                .map(|m| (path_hash(&m.path), k as u32, m)),
        );
    }
    all.par_sort_by_key(|&(h, _, _)| h);
    // Drop later occurrences of a path: equal paths have equal hashes, so they sit in one run.
    let mut kept: Vec<(u64, u32, &Member)> = Vec::with_capacity(all.len());
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j < all.len() && all[j].0 == all[i].0 {
            j += 1;
        }
        let run_start = kept.len();
        for &(h, a, m) in &all[i..j] {
            if let Some(first) = kept[run_start..].iter().find(|k| k.2.path == m.path) {
                report.duplicates.push(Duplicate {
                    member: lossy(&m.path),
                    kept: walked[first.1 as usize].0.path.clone(),
                    ignored: walked[a as usize].0.path.clone(),
                });
            } else {
                kept.push((h, a, m));
            }
        }
        i = j;
    }
    report.members = kept.len() as u64;
    write_store(dest, &walked, &kept)?;
    Ok(report)
}

fn write_store(
    dest: &Path,
    walked: &[(ArchiveInfo, Walk)],
    kept: &[(u64, u32, &Member)],
) -> Result<()> {
    let n = kept.len() as u64;
    let mut table = Vec::new();
    for (info, _) in walked {
        let p = info.path.as_os_str().as_encoded_bytes();
        table.push(info.kind);
        table.extend_from_slice(&(p.len() as u32).to_le_bytes());
        table.extend_from_slice(p);
        table.extend_from_slice(&info.size.to_le_bytes());
        table.extend_from_slice(&info.mtime_ns.to_le_bytes());
    }
    let names_len: u64 = kept.iter().map(|k| k.2.path.len() as u64).sum();
    let table_off = align_up(HEADER_LEN as u64);
    let names_off = align_up(table_off + table.len() as u64);
    let mut off = align_up(names_off + names_len);
    let mut cols = [0u64; 8];
    for (c, width) in cols.iter_mut().zip([8u64, 8, 8, 8, 8, 4, 4, 1]) {
        *c = off;
        off = align_up(off + n * width);
    }
    let file_len = off;

    let mut body: Vec<u8> = Vec::with_capacity((file_len - HEADER_LEN as u64) as usize);
    let pad_to = |body: &mut Vec<u8>, at: u64| body.resize((at - HEADER_LEN as u64) as usize, 0);
    pad_to(&mut body, table_off);
    body.extend_from_slice(&table);
    pad_to(&mut body, names_off);
    for k in kept {
        body.extend_from_slice(&k.2.path);
    }
    type Field = fn(&(u64, u32, &Member), u64) -> Vec<u8>;
    let fields: [Field; 8] = [
        |k, _| k.0.to_le_bytes().to_vec(),
        |_, e| e.to_le_bytes().to_vec(),
        |k, _| k.2.data_offset.to_le_bytes().to_vec(),
        |k, _| k.2.stored_size.to_le_bytes().to_vec(),
        |k, _| k.2.size.to_le_bytes().to_vec(),
        |k, _| k.2.crc.to_le_bytes().to_vec(),
        |k, _| k.1.to_le_bytes().to_vec(),
        |k, _| vec![k.2.method],
    ];
    for (c, f) in cols.iter().zip(fields) {
        pad_to(&mut body, *c);
        let mut end = 0u64;
        for k in kept {
            end += k.2.path.len() as u64;
            body.extend_from_slice(&f(k, end));
        }
    }
    pad_to(&mut body, file_len);

    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    h.extend_from_slice(&(HEADER_LEN as u32).to_le_bytes());
    for v in [
        n,
        walked.len() as u64,
        table_off,
        table.len() as u64,
        names_off,
        names_len,
    ] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    for c in cols {
        h.extend_from_slice(&c.to_le_bytes());
    }
    h.extend_from_slice(&file_len.to_le_bytes());
    h.extend_from_slice(&xxh3_64(&body).to_le_bytes());
    h.extend_from_slice(&0u64.to_le_bytes());
    let sum = xxh3_64(&h);
    h.extend_from_slice(&sum.to_le_bytes());
    debug_assert_eq!(h.len(), HEADER_LEN);

    let tmp = temp_path(dest);
    let result = (|| -> Result<()> {
        let werr = |e| Error::io(&tmp, "write the image store", e);
        let file = File::create(&tmp).map_err(werr)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&h).map_err(werr)?;
        out.write_all(&body).map_err(werr)?;
        let file = out.into_inner().map_err(|e| werr(e.into_error()))?;
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

/// Converts a tar given as `parts` (one file, or split parts in order, concatenated) that is either
/// plain or gzip-compressed (one or more gzip members) into the plain tar `dest`, atomically. Every
/// gzip member's CRC-32 and length are checked, the stream must be read to its very end, and the
/// result must be a complete tar; otherwise nothing is left at `dest`. Returns the bytes written.
pub fn convert_to_tar(parts: &[PathBuf], dest: &Path) -> Result<u64> {
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
    let tmp = temp_path(dest);
    let result = (|| -> Result<u64> {
        let werr = |e| Error::io(&tmp, "write the converted tar", e);
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(werr)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let n = std::io::copy(&mut source, &mut out).map_err(|e| {
            Error::new(
                ErrorKind::CorruptArchive,
                format!("archive is corrupt or truncated: the compressed stream does not read to its end ({e})"),
            )
            .with_path(first)
        })?;
        let file = out.into_inner().map_err(|e| werr(e.into_error()))?;
        file.sync_all().map_err(werr)?;
        // The result must be a whole tar (the end-of-archive blocks come before the gzip trailer, so
        // a tar cut short inside a valid gzip stream is caught only here).
        let map = map_file(&file, &tmp)?;
        walk_tar(map.as_deref().unwrap_or(&[]), first)?;
        std::fs::rename(&tmp, dest)
            .map_err(|e| Error::io(dest, "move the converted tar into place", e))?;
        Ok(n)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `convert_to_tar` for many archives at once, in parallel: `jobs` pairs each archive's parts with
/// its destination. Fails with the first error (by position in `jobs`); finished shards are kept.
pub fn convert_all(jobs: &[(Vec<PathBuf>, PathBuf)]) -> Result<Vec<u64>> {
    jobs.par_iter()
        .map(|(parts, dest)| convert_to_tar(parts, dest))
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
    map: OnceLock<std::result::Result<Option<Map>, Error>>,
}

/// Where a member lies, as the store records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub archive: u32,
    pub data_offset: u64,
    pub stored_size: u64,
    pub size: u64,
    pub method: u8,
    pub crc: u32,
}

/// An open image store.
pub struct ImageStore {
    path: PathBuf,
    map: Map,
    n: usize,
    names: (usize, usize),
    cols: [usize; 8],
    archives: Vec<Archive>,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ImageStore({}, {} members)", self.path.display(), self.n)
    }
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
        if b.len() < HEADER_LEN {
            return Err(bad("file is shorter than its header"));
        }
        if &b[..8] != MAGIC {
            return Err(bad("not a fusion-fast image store (bad magic)"));
        }
        let r32 = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let r64 = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        if r32(8) != FORMAT_VERSION {
            return Err(bad(&format!(
                "format version {}, this fusion-fast reads version {FORMAT_VERSION}",
                r32(8)
            )));
        }
        if r32(12) as usize != HEADER_LEN || xxh3_64(&b[..HEADER_LEN - 8]) != r64(HEADER_LEN - 8) {
            return Err(bad("header checksum mismatch"));
        }
        let file_len = r64(128);
        if file_len != b.len() as u64 {
            return Err(bad(&format!(
                "file has {} bytes, its header says {file_len} (truncated?)",
                b.len()
            )));
        }
        if b.len() as u64 <= AUTO_VERIFY_BYTES && xxh3_64(&b[HEADER_LEN..]) != r64(136) {
            return Err(bad("checksum mismatch"));
        }
        let n = r64(16);
        let within = |off: u64, len: u64| off.checked_add(len).is_some_and(|e| e <= file_len);
        let (table_off, table_len, names_off, names_len) = (r64(32), r64(40), r64(48), r64(56));
        if !within(table_off, table_len) || !within(names_off, names_len) {
            return Err(bad("a section lies outside the file"));
        }
        let mut cols = [0usize; 8];
        for (k, width) in [8u64, 8, 8, 8, 8, 4, 4, 1].into_iter().enumerate() {
            let off = r64(64 + 8 * k);
            if off % ALIGN != 0 || !n.checked_mul(width).is_some_and(|l| within(off, l)) {
                return Err(bad("a column lies outside the file or is misaligned"));
            }
            cols[k] = off as usize;
        }
        let archive_count = r64(24);
        let mut archives = Vec::new();
        let mut t = &b[table_off as usize..(table_off + table_len) as usize];
        for _ in 0..archive_count {
            let tbad = || bad("archive table is truncated");
            let kind = *t.first().ok_or_else(tbad)?;
            let plen = u32_at(t, 1).ok_or_else(tbad)? as u64;
            let p = bytes_at(t, 5, plen).ok_or_else(tbad)?;
            let size = u64_at(t, 5 + plen).ok_or_else(tbad)?;
            let mtime = u64_at(t, 13 + plen).ok_or_else(tbad)? as i64;
            #[cfg(unix)]
            let p = PathBuf::from(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(p));
            #[cfg(not(unix))]
            let p = PathBuf::from(String::from_utf8_lossy(p).into_owned());
            archives.push(Archive {
                kind,
                path: p,
                size,
                mtime_ns: mtime,
                map: OnceLock::new(),
            });
            t = &t[(21 + plen) as usize..];
        }
        Ok(ImageStore {
            path: path.to_path_buf(),
            n: n as usize,
            names: (names_off as usize, names_len as usize),
            cols,
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

    /// Recomputes the checksum of the whole file.
    pub fn verify(&self) -> Result<()> {
        let b: &[u8] = &self.map;
        if xxh3_64(&b[HEADER_LEN..]) != u64::from_le_bytes(b[136..144].try_into().unwrap()) {
            return Err(Error::new(
                ErrorKind::CorruptIndex,
                "image store is corrupt: checksum mismatch",
            )
            .with_path(&self.path));
        }
        Ok(())
    }

    fn col_u64(&self, c: usize, i: usize) -> u64 {
        let o = self.cols[c] + 8 * i;
        u64::from_le_bytes(self.map[o..o + 8].try_into().unwrap())
    }
    fn col_u32(&self, c: usize, i: usize) -> u32 {
        let o = self.cols[c] + 4 * i;
        u32::from_le_bytes(self.map[o..o + 4].try_into().unwrap())
    }

    fn bad(&self, what: String) -> Error {
        Error::new(
            ErrorKind::CorruptIndex,
            format!("image store is corrupt: {what}"),
        )
        .with_path(&self.path)
    }

    /// The path of member `i` (in hash order), `i < len()`.
    pub fn name(&self, i: usize) -> Result<&[u8]> {
        let start = if i == 0 { 0 } else { self.col_u64(1, i - 1) };
        let end = self.col_u64(1, i);
        if start > end || end > self.names.1 as u64 {
            return Err(self.bad(format!("member {i} has a bad name span")));
        }
        Ok(&self.map[self.names.0 + start as usize..self.names.0 + end as usize])
    }

    /// The position of `path` (normalised as at build time), if the store holds it.
    pub fn find(&self, path: &[u8]) -> Result<Option<usize>> {
        let Some(path) = normalize(path) else {
            return Ok(None);
        };
        let h = path_hash(&path);
        let (mut lo, mut hi) = (0usize, self.n);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.col_u64(0, mid) < h {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let mut i = lo;
        while i < self.n && self.col_u64(0, i) == h {
            if self.name(i)? == path.as_slice() {
                return Ok(Some(i));
            }
            i += 1;
        }
        Ok(None)
    }

    /// Where member `i` lies.
    pub fn location(&self, i: usize) -> Location {
        Location {
            data_offset: self.col_u64(2, i),
            stored_size: self.col_u64(3, i),
            size: self.col_u64(4, i),
            crc: self.col_u32(5, i),
            archive: self.col_u32(6, i),
            method: self.map[self.cols[7] + i],
        }
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
            map_file(&file, &a.path)
        });
        match mapped {
            Ok(m) => Ok(m.as_deref().unwrap_or(&[])),
            Err(e) => Err(e.clone()),
        }
    }

    /// A stale-index error when a page of the store or of member `i`'s archive vanished since it was
    /// mapped (the file shrank): what was read from it may hold zeros. Call it after reading.
    pub fn check_mapped(&self, i: usize) -> Result<()> {
        if self.map.is_stale() {
            return Err(stale_error(&self.path, "the image store"));
        }
        let a = self.location(i).archive as usize;
        if let Some(Ok(Some(m))) = self.archives.get(a).and_then(|a| a.map.get()) {
            if m.is_stale() {
                return Err(stale_error(m.path(), "the archive"));
            }
        }
        Ok(())
    }

    /// The bytes of member `i`: borrowed from the mapped archive when stored (call `check_mapped`
    /// after copying them), inflated otherwise. An archive cut short while it is read is a stale-index
    /// error, not the corrupt member its zeros would look like.
    pub fn read_at(&self, i: usize) -> Result<Cow<'_, [u8]>> {
        let read = self.read_unchecked(i);
        self.check_mapped(i)?;
        read
    }

    fn read_unchecked(&self, i: usize) -> Result<Cow<'_, [u8]>> {
        let loc = self.location(i);
        let data = self.archive_bytes(loc.archive as usize)?;
        let a = &self.archives[loc.archive as usize];
        let name = || lossy(self.name(i).unwrap_or(b"?"));
        let raw = bytes_at(data, loc.data_offset, loc.stored_size).ok_or_else(|| {
            self.bad(format!(
                "member {} lies outside its archive {}",
                name(),
                a.path.display()
            ))
        })?;
        let bytes: Cow<[u8]> = match loc.method {
            STORED => Cow::Borrowed(raw),
            DEFLATED => {
                // Deflate expands at most about 1032:1: a larger declared size is not trusted up front.
                let most = loc.stored_size.saturating_mul(1032).saturating_add(64);
                let cap = usize::try_from(loc.size.min(most).min(256 << 20)).unwrap_or(0);
                let mut out = Vec::with_capacity(cap);
                let mut dec = flate2::read::DeflateDecoder::new(raw);
                (&mut dec)
                    .take(loc.size.saturating_add(1))
                    .read_to_end(&mut out)
                    .map_err(|e| {
                        corrupt(
                            &a.path,
                            loc.data_offset,
                            format!("member {} does not inflate: {e}", name()),
                        )
                    })?;
                if out.len() as u64 != loc.size {
                    return Err(corrupt(
                        &a.path,
                        loc.data_offset,
                        format!(
                            "member {} inflates to {} bytes, its header says {}",
                            name(),
                            out.len(),
                            loc.size
                        ),
                    ));
                }
                Cow::Owned(out)
            }
            m => return Err(self.bad(format!("member {} has unknown method {m}", name()))),
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

    /// The bytes of the member at `path`; `Ok(None)` when no archive holds it.
    pub fn read(&self, path: &[u8]) -> Result<Option<Cow<'_, [u8]>>> {
        match self.find(path)? {
            Some(i) => self.read_at(i).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
#[path = "image_store_tests.rs"]
mod tests;
