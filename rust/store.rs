//! Where indexes live and how they are opened: find a valid index for a data file, or build one
//! (exactly once when many processes ask at the same time), then map both files.

use std::fs::{File, OpenOptions as FsOpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use fs2::FileExt;
use xxhash_rust::xxh3::xxh3_64;

use crate::error::{Error, ErrorKind, Result};
use crate::index_file::{is_temp_name, write_index, Header, SourceStamp};
use crate::mapping::{stale_error, GuardedMap};
use crate::scan::{cancelled, scan, Format, ScanOptions};

/// When to (re)build an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rebuild {
    /// Build when missing, stale, corrupt or of another version.
    Auto,
    /// Never build: a missing or unusable index is an error.
    Never,
    /// Always build anew.
    Always,
}

impl std::str::FromStr for Rebuild {
    /// What was wrong with the value: an `ErrorKind::Invalid` argument, not an I/O problem.
    type Err = Error;
    fn from_str(s: &str) -> std::result::Result<Rebuild, Error> {
        match s {
            "auto" => Ok(Rebuild::Auto),
            "never" => Ok(Rebuild::Never),
            "always" => Ok(Rebuild::Always),
            _ => Err(Error::invalid(format!(
                "rebuild must be 'auto', 'never' or 'always', not {s:?}"
            ))),
        }
    }
}

#[derive(Debug, Clone)]
pub struct OpenOptions {
    pub rebuild: Rebuild,
    /// Keep indexes here instead of next to the data / in the cache folder.
    pub index_dir: Option<PathBuf>,
    /// Threads for building; `None` uses every core.
    pub threads: Option<usize>,
    pub scan: ScanOptions,
    /// Recompute column checksums on open. `None`: only for small indexes (see `AUTO_VERIFY_BYTES`).
    pub verify: Option<bool>,
    /// Lets another thread stop a build (see `Cancel`).
    pub cancel: Option<Arc<Cancel>>,
}

/// Stops an `open` that builds, from another thread (Ctrl-C in Python). The scan and the writer check
/// the request often, so a build stops within milliseconds, removes its temporary file and leaves any
/// previous index in place. A wait for the build lock held by another process cannot be interrupted;
/// while it lasts the opening thread holds nothing that needs cleaning up, says so through
/// `is_waiting_for_lock`, and gives up without building as soon as it gets the lock, so the thread that
/// asked need not wait for it.
#[derive(Debug, Default)]
pub struct Cancel {
    requested: Arc<AtomicBool>,
    waiting_for_lock: AtomicBool,
}

impl Cancel {
    pub fn new() -> Arc<Cancel> {
        Arc::new(Cancel::default())
    }

    /// Asks the build to stop; `open` then fails with `scan::cancelled()`'s error.
    pub fn request(&self) {
        // SeqCst pairs with `wait_for_lock`: either the waiter sees the request when it gets the
        // lock, or the requester sees it still waiting.
        self.requested.store(true, Ordering::SeqCst);
    }

    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Whether the opening thread is blocked on another process's build lock (see the type's comment).
    pub fn is_waiting_for_lock(&self) -> bool {
        self.waiting_for_lock.load(Ordering::SeqCst)
    }
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            rebuild: Rebuild::Auto,
            index_dir: None,
            threads: None,
            scan: ScanOptions::default(),
            verify: None,
            cancel: None,
        }
    }
}

/// Indexes up to this size have every column checksum verified on open (well under a millisecond);
/// larger ones only their header, so opening stays O(1). `JsonIndex::verify` checks everything.
pub const AUTO_VERIFY_BYTES: u64 = 4 << 20;

/// File name suffix of an index stored next to its data file.
pub const INDEX_SUFFIX: &str = ".ffidx";

/// The cache folder for indexes of read-only data: `$FUSION_FAST_CACHE`, else
/// `$XDG_CACHE_HOME/fusion-fast`, else `~/.cache/fusion-fast`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("FUSION_FAST_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("fusion-fast");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("fusion-fast")
}

/// The index name used in a shared folder: the data file's name plus a hash of its absolute path,
/// so files with the same name in different folders do not collide.
fn shared_index_name(source: &Path) -> String {
    let name = source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let hash = xxh3_64(source.as_os_str().as_encoded_bytes());
    format!("{name}.{hash:016x}{INDEX_SUFFIX}")
}

/// Where the index of `source` may live, in the order they are tried.
pub fn index_candidates(source: &Path, index_dir: Option<&Path>) -> Vec<PathBuf> {
    if let Some(dir) = index_dir {
        return vec![dir.join(shared_index_name(source))];
    }
    let mut beside = source.as_os_str().to_owned();
    beside.push(INDEX_SUFFIX);
    vec![
        PathBuf::from(beside),
        cache_dir().join(shared_index_name(source)),
    ]
}

/// An open index: the header, the mapped index file and the mapped data file.
pub struct JsonIndex {
    pub source_path: PathBuf,
    pub index_path: PathBuf,
    pub header: Header,
    /// Whether this open built the index.
    pub built: bool,
    /// Seconds spent building (0 when the index was reused).
    pub build_seconds: f64,
    /// The one mapping of each file in this process: Python's views (columns, `raw`, exports) are
    /// views of these, so a file that shrinks under them is caught in one place (`mapping`).
    index: Arc<GuardedMap>,
    source: Option<Arc<GuardedMap>>,
    /// The data file, for positional reads (`read_span`) that leave the mapping untouched.
    #[cfg_attr(not(unix), allow(dead_code))]
    source_file: File,
    /// Byte positions of the `offset` and `length` columns in `index`, looked up once.
    offset_column: usize,
    length_column: usize,
}

/// Maps `file` whole under the SIGBUS guard (see `mapping`); `None` for an empty file.
fn map(file: &File, path: &Path) -> Result<Option<GuardedMap>> {
    GuardedMap::new(file, path, false)
}

/// Files up to this size are pre-faulted when mapped for a build: one sequential read-ahead instead of
/// a page fault per 4 KiB (measured: 0.04 s against about 0.2 s for 1 GiB). Larger ones may not fit in
/// memory and are faulted in as the scan goes.
const POPULATE_MAX_BYTES: u64 = 8 << 30;

/// Pre-faulting goes this many bytes at a time, checking for a stop request in between: from a slow
/// disk, faulting in gigabytes in one call could not be interrupted for seconds.
const POPULATE_STEP_BYTES: usize = 64 << 20;

fn map_for_scan(
    file: &File,
    path: &Path,
    size: u64,
    cancel: Option<&AtomicBool>,
) -> Result<Option<GuardedMap>> {
    let m = GuardedMap::new(file, path, false)?;
    if let Some(m) = m.as_ref().filter(|_| size <= POPULATE_MAX_BYTES) {
        for start in (0..m.len()).step_by(POPULATE_STEP_BYTES) {
            if crate::scan::is_cancelled(cancel) {
                return Err(cancelled());
            }
            // Where the kernel cannot, pages are faulted in as the scan reads them.
            if !m.populate_range(start, POPULATE_STEP_BYTES.min(m.len() - start)) {
                break;
            }
        }
    }
    Ok(m)
}

fn map_required(file: &File, path: &Path) -> Result<GuardedMap> {
    map(file, path)?.ok_or_else(|| {
        Error::new(ErrorKind::CorruptIndex, "index is corrupt: file is empty").with_path(path)
    })
}

impl JsonIndex {
    pub fn len(&self) -> usize {
        self.header.records as usize
    }

    pub fn is_empty(&self) -> bool {
        self.header.records == 0
    }

    /// The whole index file.
    pub fn index_bytes(&self) -> &[u8] {
        &self.index
    }

    /// The whole data file.
    pub fn source_bytes(&self) -> &[u8] {
        self.source.as_deref().map_or(&[], |m| m)
    }

    /// Byte span (offset, length) of record `i`; `i` must be below `len()`.
    #[inline]
    pub fn span(&self, i: usize) -> (u64, u64) {
        let o = self.offset_column + 8 * i;
        let l = self.length_column + 4 * i;
        let offset = u64::from_le_bytes(self.index[o..o + 8].try_into().unwrap());
        let length = u32::from_le_bytes(self.index[l..l + 4].try_into().unwrap());
        (offset, u64::from(length))
    }

    /// Maps every page of the index file in one call (Linux 5.14+; elsewhere a no-op): before a pass
    /// over whole columns, this is several times cheaper than a page fault per 4 KiB.
    pub fn populate_index(&self) {
        self.index.populate();
    }

    /// The index file's mapping, shared with Python's views of it.
    pub fn index_map(&self) -> &Arc<GuardedMap> {
        &self.index
    }

    /// The data file's mapping (`None` for an empty file), shared with Python's views of it.
    pub fn source_map(&self) -> Option<&Arc<GuardedMap>> {
        self.source.as_ref()
    }

    /// A stale-index error when a page of either mapping vanished (the file shrank) since it was
    /// mapped: what was read from it may hold zeros in place of the data. One atomic load per file;
    /// call it after reading, before anything read is returned.
    #[inline]
    pub fn check_mapped(&self) -> Result<()> {
        if self.index.is_stale() {
            return Err(stale_error(&self.index_path, "the index file"));
        }
        if self.source.as_ref().is_some_and(|s| s.is_stale()) {
            return Err(stale_error(&self.source_path, "the data file"));
        }
        Ok(())
    }

    /// `check_mapped`, and a stale-index error when the open data file is now shorter than its
    /// mapping or was modified since it was indexed (one `fstat`): catches a rewrite before its
    /// pages are touched, and one that left a partly filled last page, which reads as zeros without
    /// a fault.
    pub fn check_source(&self) -> Result<()> {
        self.check_mapped()?;
        let meta = self
            .source_file
            .metadata()
            .map_err(|e| Error::io(&self.source_path, "stat the data file", e))?;
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as i64);
        if meta.len() < self.source_bytes().len() as u64 || mtime_ns != self.header.source.mtime_ns
        {
            return Err(Error::new(
                ErrorKind::StaleIndex,
                "the data file changed after it was opened; reopen it",
            )
            .with_path(&self.source_path));
        }
        Ok(())
    }

    /// The little-endian bytes of column `name` (see `columns::COLUMNS`).
    pub fn column_bytes(&self, name: &str) -> Option<&[u8]> {
        let c = self.header.column(name)?;
        Some(self.header.column_bytes(&self.index, c))
    }

    /// The byte range of record `i` in the data file, or a corrupt-index error when it leaves the file.
    pub fn checked_span(&self, i: usize) -> Result<std::ops::Range<usize>> {
        let (off, len) = self.span(i);
        let end = off
            .checked_add(len)
            .filter(|&e| e <= self.source_bytes().len() as u64)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::CorruptIndex,
                    format!("index is corrupt: record {i} lies outside the data file"),
                )
                .with_path(&self.index_path)
            })?;
        Ok(off as usize..end as usize)
    }

    /// The raw bytes of record `i`, or a corrupt-index error when its span leaves the data file.
    pub fn raw(&self, i: usize) -> Result<&[u8]> {
        Ok(&self.source_bytes()[self.checked_span(i)?])
    }

    /// Copies the bytes at `span` of the data file (a `checked_span`) into `out` with a positional
    /// read. For a process that reads few records of a large file once each, such as a DataLoader
    /// worker, this is cheaper than touching the mapping: the first touch of each page of a mapping
    /// costs the process a page fault, measured at more than twice a read's cost.
    pub fn read_span(&self, span: std::ops::Range<usize>, out: &mut [u8]) -> Result<()> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileExt;
            self.source_file
                .read_exact_at(out, span.start as u64)
                .map_err(|e| Error::io(&self.source_path, "read the data file", e))
        }
        #[cfg(not(unix))]
        {
            out.copy_from_slice(&self.source_bytes()[span]);
            Ok(())
        }
    }

    /// Recomputes every column checksum.
    pub fn verify(&self) -> Result<()> {
        let verified = self.header.verify_columns(&self.index, &self.index_path);
        self.check_mapped()?;
        verified
    }

    /// Maps a valid index at `index_path` for `source`, or says why it cannot be used.
    fn try_map(
        source: &Path,
        index_path: &Path,
        stamp: &SourceStamp,
        verify: Option<bool>,
    ) -> Result<JsonIndex> {
        let file = File::open(index_path).map_err(|e| {
            let kind = if e.kind() == std::io::ErrorKind::NotFound {
                ErrorKind::IndexMissing
            } else {
                ErrorKind::Io
            };
            Error::new(kind, format!("cannot open the index: {e}")).with_path(index_path)
        })?;
        let index = map_required(&file, index_path)?;
        let header = Header::decode(&index, index_path)?;
        if header.source != *stamp {
            return Err(Error::new(
                ErrorKind::StaleIndex,
                format!(
                    "index is stale: {} changed after it was indexed",
                    source.display()
                ),
            )
            .with_path(index_path));
        }
        let column_bytes = index.len() as u64;
        if verify.unwrap_or(column_bytes <= AUTO_VERIFY_BYTES) {
            header.verify_columns(&index, index_path)?;
        }
        if index.is_stale() {
            // Cut short while its header was read: what was read may be zeros.
            return Err(stale_error(index_path, "the index file"));
        }
        let src = File::open(source).map_err(|e| Error::io(source, "open the data file", e))?;
        let source_map = map(&src, source)?;
        let column_at = |name: &str| header.column(name).map_or(0, |c| c.offset as usize);
        let (offset_column, length_column) = (column_at("offset"), column_at("length"));
        Ok(JsonIndex {
            offset_column,
            length_column,
            source_path: source.to_path_buf(),
            index_path: index_path.to_path_buf(),
            header,
            built: false,
            build_seconds: 0.0,
            index: Arc::new(index),
            source: source_map.map(Arc::new),
            source_file: src,
        })
    }
}

/// Builds the index of `source` into `dest` (atomically) and returns the source's stamp as scanned.
/// It is taken here, not reused from `open`, because the file may change while a builder waits on the lock.
/// `opts.scan.cancel` stops it (see `Cancel`).
pub fn build(source: &Path, dest: &Path, opts: &OpenOptions) -> Result<SourceStamp> {
    let cancel = opts.scan.cancel.as_deref();
    let stamp = SourceStamp::of(source)?;
    let file = File::open(source).map_err(|e| Error::io(source, "open the data file", e))?;
    let mapped = map_for_scan(&file, source, stamp.size, cancel)?;
    let data: &[u8] = mapped.as_deref().unwrap_or(&[]);
    let format = Format::from_path(source);
    let run_scan = || scan(data, format, &opts.scan);
    let scanned = match opts.threads {
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build()
            .map_err(|e| Error::new(ErrorKind::Io, format!("cannot start {n} threads: {e}")))?
            .install(run_scan),
        None => run_scan(),
    };
    // The file must not have changed while it was read. A file cut short under the scan read as
    // zeros, so any parse error that came of it is reported as the change it is.
    let shrunk = mapped.as_ref().is_some_and(|m| m.is_stale());
    let runs = match scanned {
        Err(e) if !shrunk => return Err(e.with_path(source)),
        other => other,
    };
    if shrunk || SourceStamp::of(source)? != stamp {
        return Err(Error::new(
            ErrorKind::Io,
            "the data file changed while it was being indexed",
        )
        .with_path(source));
    }
    let runs = runs.map_err(|e| e.with_path(source))?;
    write_index(dest, stamp, format, &runs, cancel)?;
    Ok(stamp)
}

fn is_unwritable(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
    ) || e.raw_os_error() == Some(30) // EROFS
}

/// Opens (building when needed and allowed) the index of `source`.
pub fn open(source: &Path, opts: &OpenOptions) -> Result<JsonIndex> {
    let stamp = SourceStamp::of(source)?;
    let candidates = index_candidates(source, opts.index_dir.as_deref());
    let mut first_problem: Option<Error> = None;
    if opts.rebuild != Rebuild::Always {
        for path in &candidates {
            match JsonIndex::try_map(source, path, &stamp, opts.verify) {
                Ok(idx) => return Ok(idx),
                Err(e) if e.kind == ErrorKind::IndexMissing => {}
                Err(e) => {
                    first_problem.get_or_insert(e);
                }
            }
        }
        if opts.rebuild == Rebuild::Never {
            return Err(first_problem.unwrap_or_else(|| {
                Error::new(
                    ErrorKind::IndexMissing,
                    format!(
                        "no index for {} (looked at {}); run `fusion-fast index` or open with rebuild=\"auto\"",
                        source.display(),
                        candidates.iter().map(|c| c.display().to_string()).collect::<Vec<_>>().join(", ")
                    ),
                )
                .with_path(source)
            }));
        }
    }
    let mut opts = opts.clone();
    if let Some(c) = &opts.cancel {
        opts.scan.cancel = Some(c.requested.clone());
    }
    let mut last_err = None;
    for dest in &candidates {
        match build_locked(source, dest, &stamp, &opts) {
            Ok(idx) => return Ok(idx),
            Err(BuildError::Unwritable(e)) => last_err = Some(e),
            Err(BuildError::Failed(e)) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| {
        Error::new(ErrorKind::Io, "no place to write the index").with_path(source)
    }))
}

enum BuildError {
    /// This location cannot be written: try the next one.
    Unwritable(Error),
    Failed(Error),
}

/// The lock that lets one process at a time build `dest`: an exclusive `flock` on `.NAME.lock` beside
/// it. Nothing but the index may stay beside the user's data, so its holder removes the lock file
/// before unlocking; a process that then gets the lock on the removed file sees (by comparing the
/// inode it holds with the one the path names now) that it holds nothing and tries again. The lock
/// file lives beside the index rather than in a folder of our own because that is the one place every
/// process that may build this index can write, whatever its home folder or cache settings, and the
/// data file itself is no alternative: on NFS `flock` is emulated with byte-range locks, which need a
/// file open for writing, and data is often read-only. (On NFS, a lock file removed while a waiter
/// holds it open briefly becomes a `.nfsXXXX` file, which goes when the waiter closes it.) A process
/// killed while holding the lock leaves the file behind; the kernel releases the lock, and the next
/// builder takes and then removes it.
struct BuildLock {
    path: PathBuf,
    /// Held open, and so locked, until dropped, after the file is removed.
    _file: File,
}

impl Drop for BuildLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn lock_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.lock"))
}

/// Whether `file` (open) and `path` are the same file: false once `path` was removed or replaced.
fn names_same_file(file: &File, path: &Path) -> std::io::Result<bool> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let held = file.metadata()?;
        match std::fs::metadata(path) {
            Ok(now) => Ok(held.dev() == now.dev() && held.ino() == now.ino()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (file, path);
        Ok(true)
    }
}

/// Takes the build lock of `dest`, waiting for another builder to finish.
fn acquire_build_lock(
    dest: &Path,
    cancel: Option<&Cancel>,
) -> std::result::Result<BuildLock, BuildError> {
    let path = lock_path(dest);
    let failed = |what: &str, e: std::io::Error| BuildError::Failed(Error::io(&path, what, e));
    loop {
        let file = match FsOpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if is_unwritable(&e) => {
                return Err(BuildError::Unwritable(Error::io(
                    &path,
                    "create the lock file",
                    e,
                )))
            }
            Err(e) => return Err(failed("create the lock file", e)),
        };
        if let Some(c) = cancel {
            c.waiting_for_lock.store(true, Ordering::SeqCst);
        }
        let locked = loop {
            match file.lock_exclusive() {
                // A signal meant for another thread can interrupt the wait.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        if let Some(c) = cancel {
            c.waiting_for_lock.store(false, Ordering::SeqCst);
        }
        locked.map_err(|e| failed("lock", e))?;
        if names_same_file(&file, &path).map_err(|e| failed("stat the lock file", e))? {
            let lock = BuildLock { path, _file: file };
            if cancel.is_some_and(|c| c.is_requested()) {
                return Err(BuildError::Failed(cancelled()));
            }
            return Ok(lock);
        }
        // The holder removed this lock file before releasing it: take the current one.
    }
}

/// Removes what builds of `dest` killed while writing left behind: temporary indexes of any process.
/// Only the holder of the build lock writes one, so with the lock held none of them is in use.
fn remove_stale_temp_files(dest: &Path, _lock: &BuildLock) {
    let (Some(dir), Some(name)) = (dest.parent(), dest.file_name().and_then(|n| n.to_str())) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry
            .file_name()
            .to_str()
            .is_some_and(|n| is_temp_name(n, name));
        if stale && entry.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Removes `DEST.lock`, which versions that kept their build lock file for good left beside every
/// index, unless a process of such a version holds it now.
fn remove_legacy_lock_file(dest: &Path, _lock: &BuildLock) {
    let mut legacy = dest.as_os_str().to_owned();
    legacy.push(".lock");
    let legacy = PathBuf::from(legacy);
    if let Ok(file) = FsOpenOptions::new().write(true).open(&legacy) {
        if file.try_lock_exclusive().is_ok() && names_same_file(&file, &legacy).unwrap_or(false) {
            let _ = std::fs::remove_file(&legacy);
        }
    }
}

/// Builds at `dest` under the build lock, so concurrent openers build once and the rest map it.
fn build_locked(
    source: &Path,
    dest: &Path,
    stamp: &SourceStamp,
    opts: &OpenOptions,
) -> std::result::Result<JsonIndex, BuildError> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    if let Err(e) = std::fs::create_dir_all(dir) {
        return Err(BuildError::Unwritable(Error::io(
            dir,
            "create the index folder",
            e,
        )));
    }
    let lock = acquire_build_lock(dest, opts.cancel.as_deref())?;
    // Another process may have built it while we waited.
    if opts.rebuild != Rebuild::Always {
        if let Ok(idx) = JsonIndex::try_map(source, dest, stamp, opts.verify) {
            return Ok(idx);
        }
    }
    remove_stale_temp_files(dest, &lock);
    remove_legacy_lock_file(dest, &lock);
    let started = Instant::now();
    // The lock file was created beside `dest`, so this folder is writable: any failure now is real.
    let built_stamp = build(source, dest, opts).map_err(BuildError::Failed)?;
    let seconds = started.elapsed().as_secs_f64();
    let mut idx =
        JsonIndex::try_map(source, dest, &built_stamp, Some(false)).map_err(BuildError::Failed)?;
    idx.built = true;
    idx.build_seconds = seconds;
    drop(lock);
    Ok(idx)
}

/// A progress counter shared with a scan (bytes read so far).
pub fn progress_counter() -> Arc<AtomicU64> {
    Arc::new(AtomicU64::new(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positional_reads_give_the_records_the_mapping_holds() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("d.json");
        let text = r#"[{"id": "a", "v": "[,]\"{"}, {"id": "bé"} ,[1, 2], "s", {}]"#;
        std::fs::write(&source, text).unwrap();
        let index = open(&source, &OpenOptions::default()).unwrap();
        assert_eq!(index.len(), 5);
        for i in 0..index.len() {
            let span = index.checked_span(i).unwrap();
            let mut read = vec![0; span.len()];
            index.read_span(span, &mut read).unwrap();
            assert_eq!(read, index.raw(i).unwrap(), "record {i}");
        }
        let mut past_end = vec![0; 4];
        let end = text.len();
        assert!(index.read_span(end - 2..end + 2, &mut past_end).is_err());
    }

    #[test]
    fn a_data_file_cut_short_while_open_reads_as_stale_not_as_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("d.jsonl");
        let line = format!("{{\"text\": \"{}\"}}\n", "x".repeat(100));
        std::fs::write(&source, line.repeat(1000)).unwrap();
        let index = open(&source, &OpenOptions::default()).unwrap();
        assert!(index.check_source().is_ok());
        std::fs::File::options()
            .write(true)
            .open(&source)
            .unwrap()
            .set_len(0)
            .unwrap();
        let raw = index.raw(999).unwrap();
        // SAFETY: a read of a vanished page, which the guard turns into zeros.
        let first = unsafe { std::ptr::read_volatile(raw.as_ptr()) };
        assert_eq!(first, 0);
        let err = index.check_mapped().unwrap_err();
        assert_eq!(err.kind, ErrorKind::StaleIndex);
        assert_eq!(err.path.as_deref(), Some(source.as_path()));
        assert_eq!(
            index.check_source().unwrap_err().kind,
            ErrorKind::StaleIndex
        );
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn builds_leave_only_the_index_beside_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("g.jsonl");
        std::fs::write(&good, "{\"a\": 1}\n[2]\n").unwrap();
        assert!(open(&good, &OpenOptions::default()).unwrap().built);
        let bad = dir.path().join("b.json");
        std::fs::write(&bad, "[1, ]").unwrap();
        assert!(open(&bad, &OpenOptions::default()).is_err());
        assert_eq!(names(dir.path()), ["b.json", "g.jsonl", "g.jsonl.ffidx"]);
    }

    #[test]
    fn a_requested_stop_builds_nothing_and_keeps_the_previous_index() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("d.jsonl");
        std::fs::write(&source, "{}\n".repeat(1000)).unwrap();
        let first = open(&source, &OpenOptions::default()).unwrap();
        let before = std::fs::read(&first.index_path).unwrap();
        let cancel = Cancel::new();
        cancel.request();
        let opts = OpenOptions {
            rebuild: Rebuild::Always,
            cancel: Some(cancel),
            ..OpenOptions::default()
        };
        let err = open(&source, &opts).err().expect("a stopped build fails");
        assert_eq!(err, cancelled());
        assert_eq!(std::fs::read(&first.index_path).unwrap(), before);
        assert_eq!(names(dir.path()), ["d.jsonl", "d.jsonl.ffidx"]);
    }

    #[test]
    fn each_stage_of_a_build_stops_when_asked() {
        let data = format!("[{}1]", "{\"a\": [1, 2]}, ".repeat(200_000));
        let flag = Arc::new(AtomicBool::new(true));
        for format in [Format::JsonArray, Format::JsonLines] {
            let opts = ScanOptions {
                chunk_size: 4096,
                cancel: Some(flag.clone()),
                ..ScanOptions::default()
            };
            assert_eq!(
                scan(data.as_bytes(), format, &opts).err(),
                Some(cancelled())
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("x.ffidx");
        let stamp = SourceStamp::of(&{
            let p = dir.path().join("x.json");
            std::fs::write(&p, &data).unwrap();
            p
        })
        .unwrap();
        let runs = scan(data.as_bytes(), Format::JsonArray, &ScanOptions::default()).unwrap();
        let err = write_index(&dest, stamp, Format::JsonArray, &runs, Some(&flag));
        assert_eq!(err.err(), Some(cancelled()));
        assert_eq!(names(dir.path()), ["x.json"]);
    }

    #[test]
    fn only_temporary_indexes_of_the_destination_count_as_stale() {
        for name in [".d.json.ffidx.tmp-1", ".d.json.ffidx.tmp-4242"] {
            assert!(is_temp_name(name, "d.json.ffidx"), "{name}");
        }
        for name in [
            ".d.json.ffidx.tmp-",
            ".d.json.ffidx.tmp-1.keep",
            ".d.json.ffidx.tmp-x1",
            "d.json.ffidx.tmp-1",
            ".xd.json.ffidx.tmp-1",
            ".d.json.ffidx.lock",
            ".d.json.ffidx",
        ] {
            assert!(!is_temp_name(name, "d.json.ffidx"), "{name}");
        }
    }
}
