//! Read-only file mappings that survive the file shrinking under them.
//!
//! Touching a page of a shared file mapping that lies wholly past the end of the file (after
//! `truncate`, `open(p, "w")`, `> p`, a download tool rewriting in place) raises SIGBUS, which kills
//! the process with no word of which file. Every mapping fusion-fast makes is a [`GuardedMap`]: it is
//! registered in a fixed, lock-free table, and a process-wide SIGBUS handler that finds the faulting
//! address in that table maps an anonymous zero page over the vanished page, marks the mapping stale
//! and returns, so the faulting read completes on zeros. Readers check [`GuardedMap::is_stale`] (one
//! atomic load) after reading and discard what they read, raising a stale-file error instead; zeros
//! never reach a caller as data. Faults at any other address go to the handler that was installed
//! before (Python's `faulthandler`, PyTorch's worker handler) or to the default action, as if this
//! module were not there.
//!
//! The handler may be displaced by one installed later; [`ensure_handler`] puts it back on top
//! (chaining to the newcomer) and is called on every open and at each batch-level entry point.

use std::fs::File;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{compiler_fence, AtomicBool, AtomicU8, AtomicUsize, Ordering};

use memmap2::{Mmap, MmapOptions};

use crate::error::{Error, ErrorKind, Result};

/// Mappings that can be guarded at once in one process (two per open index). The table is static
/// and its untouched tail costs no memory; the handler scans only up to the highest slot used.
const SLOTS: usize = 1 << 14;

const FREE: u8 = 0;
const CLAIMED: u8 = 1;
const LIVE: u8 = 2;

struct Slot {
    state: AtomicU8,
    start: AtomicUsize,
    /// Length rounded up to whole pages: a fault can hit anywhere in the last page.
    len: AtomicUsize,
    stale: AtomicBool,
}

static TABLE: [Slot; SLOTS] = [const {
    Slot {
        state: AtomicU8::new(FREE),
        start: AtomicUsize::new(0),
        len: AtomicUsize::new(0),
        stale: AtomicBool::new(false),
    }
}; SLOTS];
/// One past the highest slot ever claimed.
static HIGH_WATER: AtomicUsize = AtomicUsize::new(0);

/// Claims a free slot for `start..start + len`; `None` when every slot is taken.
fn register(start: usize, len: usize) -> Option<usize> {
    for (i, slot) in TABLE.iter().enumerate() {
        if slot
            .state
            .compare_exchange(FREE, CLAIMED, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            slot.start.store(start, Ordering::Relaxed);
            slot.len.store(len, Ordering::Relaxed);
            slot.stale.store(false, Ordering::Relaxed);
            HIGH_WATER.fetch_max(i + 1, Ordering::AcqRel);
            // Release: the handler that sees LIVE sees the range above.
            slot.state.store(LIVE, Ordering::Release);
            return Some(i);
        }
    }
    None
}

fn unregister(i: usize) {
    let slot = &TABLE[i];
    slot.state.store(CLAIMED, Ordering::Release);
    slot.start.store(0, Ordering::Relaxed);
    slot.len.store(0, Ordering::Relaxed);
    slot.state.store(FREE, Ordering::Release);
}

/// A read-only mapping of a whole file, registered with the SIGBUS guard while it lives.
pub struct GuardedMap {
    map: Mmap,
    /// The slot in `TABLE`, or `None` on platforms without the guard.
    slot: Option<usize>,
    path: PathBuf,
}

impl GuardedMap {
    /// Maps `file` (at `path`, for messages) whole; `None` for an empty file (Linux cannot map one).
    /// `populate` faults every page in at once (one sequential read-ahead).
    pub fn new(file: &File, path: &Path, populate: bool) -> Result<Option<GuardedMap>> {
        let len = file
            .metadata()
            .map_err(|e| Error::io(path, "stat", e))?
            .len();
        if len == 0 {
            return Ok(None);
        }
        ensure_handler();
        let mut options = MmapOptions::new();
        if populate {
            options.populate();
        }
        // SAFETY: the file is mapped read-only and fusion-fast never writes a file that is mapped
        // (indexes are replaced by rename, which leaves existing maps on the old inode). Another
        // program may still shrink or rewrite the file: a shrink is caught by the SIGBUS guard
        // registered below before any reader can touch the mapping, and readers check the stale flag
        // after every read; a rewrite is caught by the readers' size and time checks and by parsing.
        let map = unsafe { options.map(file) }.map_err(|e| Error::io(path, "memory-map", e))?;
        let slot = if cfg!(unix) {
            let page = page_size();
            let rounded = map.len().div_ceil(page) * page;
            Some(register(map.as_ptr() as usize, rounded).ok_or_else(|| {
                Error::new(
                    ErrorKind::Io,
                    format!("cannot map another file: {SLOTS} files are mapped already"),
                )
                .with_path(path)
            })?)
        } else {
            None
        };
        Ok(Some(GuardedMap {
            map,
            slot,
            path: path.to_path_buf(),
        }))
    }

    /// Whether a page of this mapping vanished (the file shrank) and was replaced by zeros. Call it
    /// after reading: what was read since the mapping went stale may hold those zeros.
    #[inline]
    pub fn is_stale(&self) -> bool {
        // The reads before this point must not be moved after it: the flag is set by a signal
        // handler on this very thread, in the middle of one of those reads.
        compiler_fence(Ordering::SeqCst);
        self.slot
            .is_some_and(|i| TABLE[i].stale.load(Ordering::Acquire))
    }

    /// Maps every page in one call (Linux 5.14+; elsewhere a no-op): before a pass over the whole
    /// file, this is several times cheaper than a page fault per 4 KiB. Pages of a file that shrank
    /// make it fail quietly rather than fault.
    pub fn populate(&self) {
        #[cfg(target_os = "linux")]
        let _ = self.map.advise(memmap2::Advice::PopulateRead);
    }

    /// `populate` for `len` bytes from `start`; false where the kernel cannot (before Linux 5.14).
    pub fn populate_range(&self, start: usize, len: usize) -> bool {
        #[cfg(target_os = "linux")]
        return self
            .map
            .advise_range(memmap2::Advice::PopulateRead, start, len)
            .is_ok();
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (start, len);
            false
        }
    }

    /// The mapped file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads one byte of every page of `range` (pages of a shrunk file fault now, under the guard),
    /// then says whether the mapping is stale.
    pub fn touch(&self, range: std::ops::Range<usize>) -> bool {
        let page = page_size();
        let bytes = &self.map[range];
        let mut at = 0;
        while at < bytes.len() {
            // SAFETY: `at` is inside `bytes`; a volatile read so the touch is not optimised away.
            unsafe { std::ptr::read_volatile(bytes.as_ptr().add(at)) };
            at += page - (bytes.as_ptr() as usize + at) % page;
        }
        self.is_stale()
    }
}

impl Deref for GuardedMap {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        &self.map
    }
}

impl Drop for GuardedMap {
    fn drop(&mut self) {
        // Unregistered before `map` is unmapped (fields drop after this body), so the handler never
        // claims an address range that something else may map next.
        if let Some(i) = self.slot {
            unregister(i);
        }
    }
}

/// The error for a read from a mapping of `path` that went stale.
pub fn stale_error(path: &Path, what: &str) -> Error {
    Error::new(
        ErrorKind::StaleIndex,
        format!(
            "{what} shrank or was rewritten in place after it was opened (its pages are gone); \
             reopen it"
        ),
    )
    .with_path(path)
}

static PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);

fn page_size() -> usize {
    match PAGE_SIZE.load(Ordering::Relaxed) {
        0 => {
            #[cfg(unix)]
            // SAFETY: sysconf has no preconditions.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
            #[cfg(not(unix))]
            let page = 4096;
            let page = usize::try_from(page)
                .ok()
                .filter(|&p| p > 0)
                .unwrap_or(4096);
            PAGE_SIZE.store(page, Ordering::Relaxed);
            page
        }
        p => p,
    }
}

#[cfg(unix)]
pub use guard::ensure_handler;

#[cfg(not(unix))]
pub fn ensure_handler() {}

#[cfg(unix)]
mod guard {
    use super::*;
    use std::sync::atomic::AtomicI32;
    use std::sync::Mutex;

    /// The handler found when ours was installed: its address and `sa_flags`.
    static PREVIOUS: AtomicUsize = AtomicUsize::new(libc::SIG_DFL);
    static PREVIOUS_FLAGS: AtomicI32 = AtomicI32::new(0);
    /// Set while a signal is handed to the previous handler: one that hands it back to us (a
    /// handler installed after ours that chains, then was displaced again) must not loop forever.
    static CHAINING: AtomicBool = AtomicBool::new(false);
    static INSTALL: Mutex<()> = Mutex::new(());

    /// Installs the SIGBUS handler, or puts it back on top when another was installed since (it
    /// then chains to that one). One `sigaction` call when it is in place already.
    pub fn ensure_handler() {
        page_size(); // cached now: `sysconf` is not async-signal-safe
        let ours = on_sigbus as *const () as usize;
        // SAFETY: sigaction with a null new action only reads the current one into `current`.
        let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
        if unsafe { libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut current) } != 0
            || current.sa_sigaction == ours
        {
            return;
        }
        let _installing = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: as above; then a fully initialised action (empty mask, SA_SIGINFO with a handler
        // of the three-argument form) is installed.
        unsafe {
            if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut current) != 0
                || current.sa_sigaction == ours
            {
                return;
            }
            PREVIOUS_FLAGS.store(current.sa_flags, Ordering::SeqCst);
            PREVIOUS.store(current.sa_sigaction, Ordering::SeqCst);
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = ours;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
        }
    }

    /// The guarded mapping holding `addr`.
    fn find(addr: usize) -> Option<&'static Slot> {
        let n = HIGH_WATER.load(Ordering::Acquire).min(SLOTS);
        TABLE[..n].iter().find(|slot| {
            slot.state.load(Ordering::Acquire) == LIVE && {
                let start = slot.start.load(Ordering::Relaxed);
                addr >= start && addr - start < slot.len.load(Ordering::Relaxed)
            }
        })
    }

    // SAFETY (the whole handler): it only loads and stores atomics and calls mmap, sigaction and
    // raise, which are async-signal-safe; it allocates nothing, takes no lock and never touches
    // Python. errno is saved and restored around them.
    extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler.
        let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
        // si_code > 0: raised by the kernel for a memory access, so si_addr is the faulting address
        // (a SIGBUS sent with kill or raise has si_code <= 0).
        if code > 0 {
            if let Some(slot) = find(addr) {
                let page = PAGE_SIZE.load(Ordering::Relaxed).max(1);
                let base = addr - addr % page;
                // SAFETY: replaces one page inside a live mapping of ours (it stays registered until
                // the mapping is dropped, which no reader can outlive) with a private zero page, so
                // the interrupted read completes; nothing else refers to that page's old contents.
                let done = unsafe {
                    let saved = *errno();
                    let p = libc::mmap(
                        base as *mut libc::c_void,
                        page,
                        libc::PROT_READ,
                        libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    );
                    *errno() = saved;
                    p != libc::MAP_FAILED
                };
                if done {
                    slot.stale.store(true, Ordering::Release);
                    return;
                }
            }
        }
        chain(sig, info, ctx);
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    unsafe fn errno() -> *mut libc::c_int {
        unsafe { libc::__errno_location() }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    unsafe fn errno() -> *mut libc::c_int {
        unsafe { libc::__error() }
    }

    /// Hands a signal that is not ours to the previous handler, or to the default action.
    fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
        let previous = PREVIOUS.load(Ordering::SeqCst);
        let flags = PREVIOUS_FLAGS.load(Ordering::SeqCst);
        let ours = on_sigbus as *const () as usize;
        let looping = CHAINING.swap(true, Ordering::SeqCst);
        if looping || previous == libc::SIG_DFL || previous == libc::SIG_IGN || previous == ours {
            // SAFETY: resets SIGBUS to its default action (terminate with a core dump). A fault
            // returns to the faulting instruction, which faults again and terminates the process;
            // a sent signal is raised again (blocked until this handler returns).
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = libc::SIG_DFL;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
                if (*info).si_code <= 0 {
                    libc::raise(sig);
                }
            }
            return;
        }
        // SAFETY: `previous` was read from sigaction as the installed handler, of the
        // three-argument form when its flags hold SA_SIGINFO and of the one-argument form otherwise.
        unsafe {
            if flags & libc::SA_SIGINFO != 0 {
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    std::mem::transmute(previous);
                f(sig, info, ctx);
            } else {
                let f: extern "C" fn(libc::c_int) = std::mem::transmute(previous);
                f(sig);
            }
        }
        CHAINING.store(false, Ordering::SeqCst);
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_page_that_vanishes_reads_as_zeros_and_marks_the_mapping_stale() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let page = page_size();
        let mut f = File::create(&path).unwrap();
        f.write_all(&vec![7u8; 4 * page]).unwrap();
        drop(f);
        let file = File::open(&path).unwrap();
        let map = GuardedMap::new(&file, &path, false).unwrap().unwrap();
        assert!(!map.touch(0..map.len()));
        assert_eq!(map[3 * page], 7);
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(page as u64)
            .unwrap();
        assert_eq!(map[0], 7, "a page still in the file reads as before");
        assert!(!map.is_stale());
        // SAFETY: a read the guard must survive.
        let byte = unsafe { std::ptr::read_volatile(map.as_ptr().add(3 * page)) };
        assert_eq!(byte, 0);
        assert!(map.is_stale());
        assert!(map.touch(0..map.len()));
    }

    #[test]
    fn slots_are_reused_after_a_mapping_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        std::fs::write(&path, b"abc").unwrap();
        let file = File::open(&path).unwrap();
        for _ in 0..3 * SLOTS {
            let map = GuardedMap::new(&file, &path, false).unwrap().unwrap();
            assert_eq!(&map[..], b"abc");
        }
    }
}
