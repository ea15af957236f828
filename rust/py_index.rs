//! The Python side of one open index (`fusion_fast.JsonIndex` wraps it): `open_index`, the `Index`
//! class, the zero-copy `Mapped` buffers and the build's `Progress`.

use std::ffi::OsString;
use std::os::raw::{c_int, c_void};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use pyo3::buffer::PyBuffer;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyMemoryView};

use crate::compact::{compact_lines, write_compact_lines};
use crate::error::{Error, ErrorKind};
use crate::lengths::{lengths_into, LengthKind};
use crate::mapping::{ensure_handler, GuardedMap};
use crate::py_errors::{boundary, run_interruptible, Stopped};
use crate::scan::Format;
use crate::store::{self, JsonIndex, OpenOptions, Rebuild};
use crate::to_python::Builder;

/// Bytes read so far by a running build; poll `value` from another thread for a progress bar.
#[pyclass(module = "fusion_fast._core", frozen)]
pub struct Progress {
    counter: Arc<AtomicU64>,
}

#[pymethods]
impl Progress {
    #[new]
    fn new() -> PyResult<Self> {
        boundary("Progress()", || {
            Ok(Progress {
                counter: store::progress_counter(),
            })
        })
    }
    #[getter]
    fn value(&self) -> PyResult<u64> {
        boundary("Progress.value", || {
            Ok(self.counter.load(Ordering::Relaxed))
        })
    }
}

/// Bytes of a mapped file (a whole file or one record of it), handed to Python through the buffer
/// protocol without a copy: `memoryview`, `numpy.frombuffer` and `bytes` read the one mapping the
/// index owns, and keep it alive while they do. Read-only.
#[pyclass(module = "fusion_fast._core", frozen)]
pub struct Mapped {
    map: Option<Arc<GuardedMap>>,
    start: usize,
    len: usize,
}

impl Mapped {
    fn whole(map: Option<&Arc<GuardedMap>>) -> Mapped {
        Mapped {
            map: map.cloned(),
            start: 0,
            len: map.map_or(0, |m| m.len()),
        }
    }
}

#[pymethods]
impl Mapped {
    /// # Safety
    /// Called by Python with a valid `view` to fill.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        boundary("the buffer of a mapped file", || {
            let this = slf.get();
            let ptr = match &this.map {
                Some(m) => m[this.start..this.start + this.len].as_ptr(),
                None => [].as_ptr(),
            };
            // SAFETY: `ptr..ptr + len` lies in a mapping that `slf` keeps alive (through its `Arc`)
            // for as long as the view holds `slf`, which `PyBuffer_FillInfo` makes it do (it takes a
            // reference). Read-only: a request for a writable buffer fails with BufferError.
            let filled = unsafe {
                ffi::PyBuffer_FillInfo(
                    view,
                    slf.as_ptr(),
                    ptr as *mut c_void,
                    this.len as ffi::Py_ssize_t,
                    1,
                    flags,
                )
            };
            if filled != 0 {
                return Err(PyErr::fetch(slf.py()));
            }
            Ok(())
        })
    }

    fn __len__(&self) -> PyResult<usize> {
        boundary("len() of a mapped file", || Ok(self.len))
    }
}

/// Calls of `Index::get`, to re-check the SIGBUS handler now and then.
static GETS: AtomicU64 = AtomicU64::new(0);

/// An open index: the Rust side of `fusion_fast.JsonIndex`.
#[pyclass(module = "fusion_fast._core", frozen)]
pub struct Index {
    pub(crate) inner: JsonIndex,
}

impl Index {
    pub(crate) fn position(&self, i: i64) -> Result<usize, Error> {
        let n = self.inner.len() as i64;
        let j = if i < 0 { i + n } else { i };
        if j < 0 || j >= n {
            return Err(Error::out_of_range(format!(
                "record index {i} out of range for {n} records"
            )));
        }
        Ok(j as usize)
    }

    pub(crate) fn parse<'py>(&self, py: Python<'py>, i: usize) -> PyResult<Bound<'py, PyAny>> {
        // A span outside the data file is the index's fault: reported as it is, not as a change.
        let raw = self.inner.raw(i)?;
        let built = shared_builder().build(py, raw);
        // Whatever was built from a mapping that went stale during the read holds zeros: dropped.
        self.inner.check_mapped()?;
        built.map_err(|e| PyErr::from(self.changed(i, e)))
    }

    /// The int64 record numbers of `selection`, each checked against the index, or (without one)
    /// `start..start + count` checked.
    fn checked_selection<'b>(
        &self,
        selection: Option<&'b PyBuffer<i64>>,
        start: usize,
        count: usize,
    ) -> Result<Option<&'b [i64]>, Error> {
        let sel = selection.map(|s| int64s(s, "selection")).transpose()?;
        let n = self.inner.len();
        if sel.is_none() && start.checked_add(count).is_none_or(|end| end > n) {
            return Err(Error::out_of_range(format!(
                "records {start}..{start}+{count} out of range for {n} records"
            )));
        }
        if let Some(&bad) = sel.and_then(|s| s.iter().find(|&&i| i < 0 || i as u64 >= n as u64)) {
            return Err(Error::out_of_range(format!(
                "record number {bad} out of range for {n} records"
            )));
        }
        Ok(sel)
    }

    /// The compacted JSON Lines of records `selection`, else `start..start + count` (see compact_lines).
    fn compacted(
        &self,
        py: Python<'_>,
        selection: Option<&PyBuffer<i64>>,
        start: usize,
        count: usize,
    ) -> PyResult<Vec<Vec<u8>>> {
        let sel = self.checked_selection(selection, start, count)?;
        let total = sel.map_or(count, <[i64]>::len);
        ensure_handler();
        // A rewrite seen before any page is touched gives a clean error; one during the copy leaves
        // zeros that `check_source` afterwards refuses to hand out.
        self.inner.check_source()?;
        let lines = py.detach(|| {
            compact_lines(total, |k| {
                self.inner.raw(sel.map_or(start + k, |s| s[k] as usize))
            })
        });
        self.inner.check_source()?;
        Ok(lines?)
    }

    /// The error for record `i` whose bytes can no longer be read or decoded.
    pub(crate) fn changed(&self, i: usize, e: PyErr) -> Error {
        let msg =
            format!("record {i} cannot be read ({e}); the data file changed after it was opened");
        Error::new(ErrorKind::StaleIndex, msg).with_path(&self.inner.source_path)
    }
}

#[pymethods]
impl Index {
    fn __len__(&self) -> PyResult<usize> {
        boundary("len(JsonIndex)", || Ok(self.inner.len()))
    }

    /// Record `i` (negative counts from the end) as Python objects.
    fn get<'py>(&self, py: Python<'py>, i: i64) -> PyResult<Bound<'py, PyAny>> {
        boundary("JsonIndex[i]", || {
            // A SIGBUS handler installed after the index was opened (a late `faulthandler.enable()`)
            // would take a fault before ours: ours is put back every few thousand calls. Not on every
            // call: a `sigaction` costs about a tenth of an `idx[i]`.
            if GETS.fetch_add(1, Ordering::Relaxed).is_multiple_of(4096) {
                ensure_handler();
            }
            let j = self.position(i)?;
            self.parse(py, j)
        })
    }

    /// Records at `indices`, given as little-endian int64 bytes, in one call.
    fn get_many<'py>(&self, py: Python<'py>, indices: &[u8]) -> PyResult<Bound<'py, PyList>> {
        boundary("JsonIndex.get_many", || {
            ensure_handler();
            let list = PyList::empty(py);
            for chunk in indices.chunks_exact(8) {
                let i = i64::from_le_bytes(chunk.try_into().unwrap());
                list.append(self.parse(py, self.position(i)?)?)?;
            }
            Ok(list)
        })
    }

    /// The bytes of record `i` as a read-only `memoryview` of the mapped data file (no copy). Its
    /// pages are touched and the file checked first, so a file that shrank or was rewritten since it
    /// was opened raises `StaleIndexError` here; a view read after such a change reads zeros where
    /// pages vanished, and never crashes.
    fn raw<'py>(&self, py: Python<'py>, i: i64) -> PyResult<Bound<'py, PyMemoryView>> {
        boundary("JsonIndex.raw", || {
            ensure_handler();
            let span = self.inner.checked_span(self.position(i)?)?;
            self.inner.check_source()?;
            if let Some(map) = self.inner.source_map() {
                map.touch(span.clone());
            }
            self.inner.check_mapped()?;
            let view = Mapped {
                map: self.inner.source_map().cloned(),
                start: span.start,
                len: span.len(),
            };
            PyMemoryView::from(Bound::new(py, view)?.as_any())
        })
    }

    /// The whole data file, for views of many records (exports); see `check`.
    fn source_buffer(&self) -> PyResult<Mapped> {
        boundary("JsonIndex.source_buffer", || {
            ensure_handler();
            Ok(Mapped::whole(self.inner.source_map()))
        })
    }

    /// The whole index file, whose columns `column_table` places: both from this one open index, so
    /// they always describe the same file.
    fn index_buffer(&self) -> PyResult<Mapped> {
        boundary("JsonIndex.index_buffer", || {
            ensure_handler();
            Ok(Mapped::whole(Some(self.inner.index_map())))
        })
    }

    /// Raises `StaleIndexError` when either file shrank under its mapping, or the data file changed
    /// since it was indexed: call it after reading views of the mappings.
    fn check(&self) -> PyResult<()> {
        boundary("JsonIndex.check", || Ok(self.inner.check_source()?))
    }

    /// Faults in the whole index file at once, before columns are read in full.
    fn populate_index(&self, py: Python<'_>) -> PyResult<()> {
        boundary("JsonIndex.populate_index", || {
            py.detach(|| self.inner.populate_index());
            Ok(())
        })
    }

    /// Writes FUSION's `lengths` (or `modality_lengths` with `modality=True`) into the int64 array `out`:
    /// of the records numbered by the int64 array `selection`, or of records `start..start + len(out)`.
    #[pyo3(signature = (out, selection=None, *, start=0, modality=false))]
    fn lengths_into(
        &self,
        py: Python<'_>,
        mut out: PyBuffer<i64>,
        selection: Option<PyBuffer<i64>>,
        start: usize,
        modality: bool,
    ) -> PyResult<()> {
        boundary("JsonIndex.lengths_into", || {
            ensure_handler();
            let out_slice = int64s_mut(&mut out, "out")?;
            let sel_slice = selection
                .as_ref()
                .map(|s| int64s(s, "selection"))
                .transpose()?;
            if sel_slice.is_some_and(|s| s.len() != out_slice.len()) {
                return Err(Error::invalid("selection and out must have the same length").into());
            }
            let kind = if modality {
                LengthKind::Modality
            } else {
                LengthKind::Lengths
            };
            let words = self.inner.column_bytes("words").unwrap_or_default();
            let flags = self.inner.column_bytes("flags").unwrap_or_default();
            let result = py.detach(|| {
                self.inner.populate_index();
                lengths_into(words, flags, sel_slice, start, kind, out_slice)
            });
            self.inner.check_mapped()?;
            result
                .map_err(|bad| Error::out_of_range(format!("record number {bad} out of range")))?;
            Ok(())
        })
    }

    /// Records `selection` (an int64 array of record numbers), else `start..start + count`, as JSON
    /// Lines: each record compacted (whitespace outside strings dropped) and followed by a newline.
    /// Runs on every core with the GIL released.
    #[pyo3(signature = (selection=None, *, start=0, count=0))]
    fn compact_lines<'py>(
        &self,
        py: Python<'py>,
        selection: Option<PyBuffer<i64>>,
        start: usize,
        count: usize,
    ) -> PyResult<Bound<'py, PyBytes>> {
        boundary("JsonIndex.compact_lines", || {
            let parts = self.compacted(py, selection.as_ref(), start, count)?;
            let total = parts.iter().map(Vec::len).sum();
            PyBytes::new_with(py, total, |buf| {
                let mut at = 0;
                for p in &parts {
                    buf[at..at + p.len()].copy_from_slice(p);
                    at += p.len();
                }
                Ok(())
            })
        })
    }

    /// `compact_lines`, written straight to the open file descriptor `fd` (an unbuffered file the
    /// caller keeps open) instead of returned: no Python bytes object is made. Returns the bytes written.
    #[cfg(unix)]
    #[pyo3(signature = (fd, selection=None, *, start=0, count=0))]
    fn write_compact_lines(
        &self,
        py: Python<'_>,
        fd: i32,
        selection: Option<PyBuffer<i64>>,
        start: usize,
        count: usize,
    ) -> PyResult<usize> {
        use std::io::Write;
        use std::os::fd::FromRawFd;

        boundary("JsonIndex.write_compact_lines", || {
            let sel = self.checked_selection(selection.as_ref(), start, count)?;
            let total = sel.map_or(count, <[i64]>::len);
            ensure_handler();
            self.inner.check_source()?;
            let mut io_error = None;
            let result = py.detach(|| {
                // SAFETY: `fd` is an open file descriptor the caller owns and keeps open during this call;
                // ManuallyDrop leaves it open when `file` goes out of scope.
                let mut file =
                    std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
                write_compact_lines(
                    total,
                    |k| self.inner.raw(sel.map_or(start + k, |s| s[k] as usize)),
                    |bytes: &[u8]| {
                        file.write_all(bytes).map_err(|e| {
                            io_error = Some(e);
                            Error::new(ErrorKind::Io, "write failed".to_string())
                        })
                    },
                )
            });
            // Lines written from a mapping that went stale hold zeros: the caller's file is refused.
            self.inner.check_source()?;
            match (result, io_error) {
                (_, Some(e)) => Err(e.into()),
                (result, None) => Ok(result?),
            }
        })
    }

    /// (offset, length) of record `i` in the data file.
    fn span(&self, i: i64) -> PyResult<(u64, u64)> {
        boundary("JsonIndex.span", || {
            // Checked against the data file: an index whose spans leave it is corrupt, not a
            // short read for the caller to trust.
            let span = self.inner.checked_span(self.position(i)?);
            self.inner.check_mapped()?;
            let span = span?;
            Ok((span.start as u64, span.len() as u64))
        })
    }

    #[getter]
    fn source_path(&self) -> PyResult<OsString> {
        // As the OS spells it (a name that is not UTF-8 comes back as `os.fsdecode` gives it), so
        // the path opens the same file again.
        boundary("JsonIndex.path", || {
            Ok(self.inner.source_path.clone().into_os_string())
        })
    }
    #[getter]
    fn index_path(&self) -> PyResult<OsString> {
        boundary("JsonIndex.index_path", || {
            Ok(self.inner.index_path.clone().into_os_string())
        })
    }
    #[getter]
    fn built(&self) -> PyResult<bool> {
        boundary("JsonIndex.built", || Ok(self.inner.built))
    }
    #[getter]
    fn build_seconds(&self) -> PyResult<f64> {
        boundary("JsonIndex.build_seconds", || Ok(self.inner.build_seconds))
    }

    /// The header as a dict.
    fn header<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        boundary("JsonIndex.header", || {
            let h = &self.inner.header;
            let d = PyDict::new(py);
            d.set_item("format_version", h.version)?;
            d.set_item("records", h.records)?;
            d.set_item(
                "format",
                if h.format == Format::JsonArray {
                    "json"
                } else {
                    "jsonl"
                },
            )?;
            d.set_item("source_size", h.source.size)?;
            d.set_item("source_mtime_ns", h.source.mtime_ns)?;
            d.set_item(
                "source_fingerprint",
                format!("{:016x}", h.source.fingerprint),
            )?;
            Ok(d)
        })
    }

    /// [(name, numpy dtype, byte offset, count)] of every column in the index file.
    fn column_table(&self) -> PyResult<Vec<(String, &'static str, u64, u64)>> {
        boundary("JsonIndex.column_table", || {
            let h = &self.inner.header;
            Ok(h.columns
                .iter()
                .map(|c| (c.name.clone(), c.dtype.numpy(), c.offset, h.records))
                .collect())
        })
    }

    /// Recomputes every column checksum; raises `CorruptIndexError` on a mismatch.
    fn verify(&self, py: Python<'_>) -> PyResult<()> {
        boundary("JsonIndex.verify", || {
            ensure_handler();
            Ok(py.detach(|| self.inner.verify())?)
        })
    }
}

/// Opens the index of `path`, building it (with the GIL released) when needed and allowed.
///
/// The build runs on a thread of its own while this one waits in short slices, checking for signals.
/// When a handler raises (Ctrl-C's `KeyboardInterrupt`, a SIGTERM handler's `SystemExit`), the build is
/// stopped: it removes its temporary file and leaves any previous index in place, and the handler's
/// exception is raised here within milliseconds instead of when the build would have ended.
#[pyfunction]
#[pyo3(signature = (path, *, rebuild="auto", index_dir=None, threads=None, verify=None, chunk_size=None, progress=None))]
#[allow(clippy::too_many_arguments)]
pub fn open_index(
    py: Python<'_>,
    path: PathBuf,
    rebuild: &str,
    index_dir: Option<PathBuf>,
    threads: Option<usize>,
    verify: Option<bool>,
    chunk_size: Option<usize>,
    progress: Option<&Progress>,
) -> PyResult<Index> {
    boundary("fusion_fast.open", || {
        let cancel = store::Cancel::new();
        let mut opts = OpenOptions {
            rebuild: rebuild.parse::<Rebuild>()?,
            index_dir,
            threads,
            verify,
            cancel: Some(cancel.clone()),
            ..Default::default()
        };
        if let Some(c) = chunk_size {
            opts.scan.chunk_size = c.max(1);
        }
        opts.scan.progress = progress.map(|p| p.counter.clone());
        let source = path.clone();
        let waiting = cancel.clone();
        let opened = run_interruptible(
            py,
            "fusion-fast open",
            move || store::open(&source, &opts),
            || cancel.request(),
            // A build blocked on another process's build lock holds nothing to clean up, and gives
            // up when it gets the lock: no need to wait for it.
            move || !waiting.is_waiting_for_lock(),
        );
        match opened {
            Ok(result) => Ok(Index { inner: result? }),
            Err(Stopped::Start(e)) => Err(Error::io(&path, "start a thread to open", e).into()),
            Err(Stopped::Panicked(why)) => {
                let msg = format!("internal error while opening the index: {why}");
                Err(Error::new(ErrorKind::Io, msg).with_path(&path).into())
            }
            Err(Stopped::Interrupted(interrupt)) => Err(interrupt),
        }
    })
}

/// The one record builder (its string cache of keys and short values stays warm across calls).
static BUILDER: LazyLock<Mutex<Builder>> = LazyLock::new(|| Mutex::new(Builder::default()));

pub(crate) fn shared_builder() -> std::sync::MutexGuard<'static, Builder> {
    // The GIL is held by every caller, so the lock is never contended; it only satisfies `Sync`.
    BUILDER.lock().unwrap_or_else(|e| e.into_inner())
}

/// The int64 elements of a buffer from Python (a numpy array), which must be C-contiguous.
pub fn int64s<'a>(buffer: &'a PyBuffer<i64>, what: &str) -> Result<&'a [i64], Error> {
    if !buffer.is_c_contiguous() {
        return Err(Error::invalid(format!(
            "{what} must be a contiguous int64 array"
        )));
    }
    // SAFETY: C-contiguous memory of `item_count` int64s, kept alive and exported (numpy cannot resize
    // it) while the `PyBuffer` is borrowed; callers run no Python code that could write it meanwhile.
    Ok(unsafe { std::slice::from_raw_parts(buffer.buf_ptr() as *const i64, buffer.item_count()) })
}

/// `int64s` of a buffer the caller writes, which must also be writable.
pub fn int64s_mut<'a>(buffer: &'a mut PyBuffer<i64>, what: &str) -> Result<&'a mut [i64], Error> {
    if buffer.readonly() || !buffer.is_c_contiguous() {
        return Err(Error::invalid(format!(
            "{what} must be a writable, contiguous int64 array"
        )));
    }
    // SAFETY: as in `int64s`, and the buffer is writable and borrowed mutably for the slice's life.
    Ok(
        unsafe {
            std::slice::from_raw_parts_mut(buffer.buf_ptr() as *mut i64, buffer.item_count())
        },
    )
}
