//! The one thin binding file: exposes the core to Python as `fusion_fast._core`.
//! Errors map once, here, onto the Python hierarchy in `fusion_fast/errors.py`.

use std::ffi::OsString;
use std::os::raw::{c_int, c_void};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyIndexError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList, PyMemoryView, PyString, PyType};

use crate::columns::{Records, COLUMNS};
use crate::compact::{compact_lines, write_compact_lines};
use crate::error::{Error, ErrorKind};
use crate::lengths::{lengths_into, LengthKind};
use crate::mapping::{ensure_handler, GuardedMap};
use crate::py_items::{collate_json, BatchBuilder, ItemSource, SOURCE_KEY};
use crate::scan::{scan, scan_sequential, Format, ScanOptions};
use crate::shuffle::NumpyPcg64;
use crate::store::{self, JsonIndex, OpenOptions, Rebuild};
use crate::tape::Encoder;
use crate::to_python::Builder;

/// The classes of `fusion_fast/errors.py` by `class_number`, looked up once.
static ERROR_CLASSES: PyOnceLock<Vec<Py<PyType>>> = PyOnceLock::new();
const ERROR_CLASS_NAMES: [&str; 7] = [
    "MalformedJSONError",
    "IndexMissingError",
    "StaleIndexError",
    "CorruptIndexError",
    "FusionFastIOError",
    "CorruptArchiveError",
    "FusionFastError",
];
/// `ERROR_CLASS_NAMES`' entry for the base class, raised for internal errors.
const BASE_ERROR: usize = 6;

fn class_number(kind: ErrorKind) -> usize {
    match kind {
        ErrorKind::MalformedJson => 0,
        ErrorKind::IndexMissing => 1,
        ErrorKind::StaleIndex => 2,
        ErrorKind::CorruptIndex => 3,
        ErrorKind::Io => 4,
        ErrorKind::CorruptArchive => 5,
    }
}

fn error_class(py: Python<'_>, number: usize) -> PyResult<Bound<'_, PyType>> {
    let classes = ERROR_CLASSES.get_or_try_init(py, || {
        let module = py.import("fusion_fast.errors")?;
        ERROR_CLASS_NAMES
            .iter()
            .map(|name| Ok(module.getattr(*name)?.cast_into::<PyType>()?.unbind()))
            .collect::<PyResult<Vec<_>>>()
    })?;
    Ok(classes[number].bind(py).clone())
}

/// The `fusion_fast.errors` exception that matches `err.kind`, with its path and position.
pub(crate) fn to_py_err(py: Python<'_>, err: Error) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let kwargs = PyDict::new(py);
        kwargs.set_item("path", err.path.as_ref().map(|p| p.as_os_str()))?;
        if let Some(p) = &err.position {
            kwargs.set_item("offset", p.offset)?;
            kwargs.set_item("line", p.line)?;
            kwargs.set_item("column", p.column)?;
            kwargs.set_item("record", p.record)?;
        }
        let cls = error_class(py, class_number(err.kind))?;
        let exc = cls.call((err.message.clone(),), Some(&kwargs))?;
        Ok(PyErr::from_value(exc))
    };
    build().unwrap_or_else(|e| e)
}

/// Lets `?` turn a core error into its Python exception anywhere in this file.
impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        Python::attach(|py| to_py_err(py, err))
    }
}

/// Runs the body of a function called from Python and turns a Rust panic into a `FusionFastError`
/// naming `operation`. Every entry point goes through it: pyo3 would otherwise raise
/// `pyo3_runtime.PanicException`, a `BaseException` that `except Exception` does not catch. Costs
/// nothing unless a panic happens.
pub(crate) fn boundary<T>(operation: &str, body: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    match std::panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(result) => result,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            let message = format!("internal error in {operation}: {what}");
            Err(Python::attach(|py| match error_class(py, BASE_ERROR) {
                Ok(cls) => cls.call1((message,)).map_or_else(|e| e, PyErr::from_value),
                Err(e) => e,
            }))
        }
    }
}

/// Bytes read so far by a running build; poll `value` from another thread for a progress bar.
#[pyclass(module = "fusion_fast._core", frozen)]
struct Progress {
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
struct Mapped {
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
struct Index {
    inner: JsonIndex,
}

impl Index {
    fn position(&self, i: i64) -> PyResult<usize> {
        let n = self.inner.len() as i64;
        let j = if i < 0 { i + n } else { i };
        if j < 0 || j >= n {
            return Err(PyIndexError::new_err(format!(
                "record index {i} out of range for {n} records"
            )));
        }
        Ok(j as usize)
    }

    fn parse<'py>(&self, py: Python<'py>, i: usize) -> PyResult<Bound<'py, PyAny>> {
        // A span outside the data file is the index's fault: reported as it is, not as a change.
        let raw = self.inner.raw(i)?;
        let built = shared_builder().build(py, raw);
        // Whatever was built from a mapping that went stale during the read holds zeros: dropped.
        self.inner.check_mapped()?;
        built.map_err(|e| self.changed(py, i, e))
    }

    /// The int64 record numbers of `selection`, each checked against the index, or (without one)
    /// `start..start + count` checked.
    fn checked_selection<'b>(
        &self,
        selection: Option<&'b PyBuffer<i64>>,
        start: usize,
        count: usize,
    ) -> PyResult<Option<&'b [i64]>> {
        let sel = selection.map(|s| int64s(s, "selection")).transpose()?;
        let n = self.inner.len();
        if sel.is_none() && start.checked_add(count).is_none_or(|end| end > n) {
            return Err(PyIndexError::new_err(format!(
                "records {start}..{start}+{count} out of range for {n} records"
            )));
        }
        if let Some(&bad) = sel.and_then(|s| s.iter().find(|&&i| i < 0 || i as u64 >= n as u64)) {
            return Err(PyIndexError::new_err(format!(
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
    fn changed(&self, py: Python<'_>, i: usize, e: PyErr) -> PyErr {
        let msg =
            format!("record {i} cannot be read ({e}); the data file changed after it was opened");
        to_py_err(
            py,
            Error::new(ErrorKind::StaleIndex, msg).with_path(&self.inner.source_path),
        )
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
                return Err(PyValueError::new_err(
                    "selection and out must have the same length",
                ));
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
            result.map_err(|bad| PyIndexError::new_err(format!("record number {bad} out of range")))
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

/// The int64 elements of a buffer from Python (a numpy array), which must be C-contiguous.
fn int64s<'a>(buffer: &'a PyBuffer<i64>, what: &str) -> PyResult<&'a [i64]> {
    if !buffer.is_c_contiguous() {
        return Err(PyValueError::new_err(format!(
            "{what} must be a contiguous int64 array"
        )));
    }
    // SAFETY: C-contiguous memory of `item_count` int64s, kept alive and exported (numpy cannot resize
    // it) while the `PyBuffer` is borrowed; callers run no Python code that could write it meanwhile.
    Ok(unsafe { std::slice::from_raw_parts(buffer.buf_ptr() as *const i64, buffer.item_count()) })
}

/// `int64s` of a buffer the caller writes, which must also be writable.
fn int64s_mut<'a>(buffer: &'a mut PyBuffer<i64>, what: &str) -> PyResult<&'a mut [i64]> {
    if buffer.readonly() || !buffer.is_c_contiguous() {
        return Err(PyValueError::new_err(format!(
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

fn parse_rebuild(s: &str) -> PyResult<Rebuild> {
    s.parse().map_err(PyValueError::new_err)
}

/// How often a thread waiting for `open_index` checks for Ctrl-C and other signals.
const SIGNAL_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// Opens the index of `path`, building it (with the GIL released) when needed and allowed.
///
/// The build runs on a thread of its own while this one waits in short slices, checking for signals.
/// When a handler raises (Ctrl-C's `KeyboardInterrupt`, a SIGTERM handler's `SystemExit`), the build is
/// stopped: it removes its temporary file and leaves any previous index in place, and the handler's
/// exception is raised here within milliseconds instead of when the build would have ended.
#[pyfunction]
#[pyo3(signature = (path, *, rebuild="auto", index_dir=None, threads=None, verify=None, chunk_size=None, progress=None))]
#[allow(clippy::too_many_arguments)]
fn open_index(
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
        use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};

        let cancel = store::Cancel::new();
        let mut opts = OpenOptions {
            rebuild: parse_rebuild(rebuild)?,
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
        type Opened = crate::error::Result<JsonIndex>;
        let (tx, rx) = channel::<Opened>();
        let source = path.clone();
        let worker = std::thread::Builder::new()
            .name("fusion-fast open".into())
            .spawn(move || {
                let _ = tx.send(store::open(&source, &opts));
            })
            .map_err(|e| to_py_err(py, Error::io(&path, "start a thread to open", e)))?;
        // The receiver is not Sync, so it moves into each GIL-free slice and back out.
        let wait = |rx: Receiver<Opened>, slice| {
            py.detach(move || {
                let got = rx.recv_timeout(slice);
                (rx, got)
            })
        };
        let mut rx = rx;
        loop {
            let (back, got) = wait(rx, SIGNAL_POLL);
            rx = back;
            match got {
                Ok(result) => {
                    let _ = worker.join();
                    return result
                        .map(|inner| Index { inner })
                        .map_err(|e| to_py_err(py, e));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let why = match worker.join() {
                        Err(panic) => panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default(),
                        Ok(()) => String::new(),
                    };
                    let msg = format!("internal error while opening the index: {why}");
                    return Err(to_py_err(
                        py,
                        Error::new(ErrorKind::Io, msg).with_path(&path),
                    ));
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if let Err(interrupt) = py.check_signals() {
                cancel.request();
                // Wait until the build has stopped and cleaned up, unless it is blocked on another
                // process's build lock: then it holds nothing and gives up when it gets the lock.
                loop {
                    let (back, got) = wait(rx, std::time::Duration::from_millis(2));
                    rx = back;
                    match got {
                        Err(RecvTimeoutError::Timeout) if !cancel.is_waiting_for_lock() => {}
                        _ => break,
                    }
                }
                return Err(interrupt);
            }
        }
    })
}

/// Scans `data` without writing an index and returns each column as little-endian bytes.
/// `sequential=True` runs the reference scanner; otherwise the parallel one with `chunk_size`.
#[pyfunction]
#[pyo3(signature = (data, format, *, chunk_size=1048576, sequential=false))]
fn scan_bytes<'py>(
    py: Python<'py>,
    data: &[u8],
    format: &str,
    chunk_size: usize,
    sequential: bool,
) -> PyResult<Bound<'py, PyDict>> {
    boundary("scan_bytes", || {
        let format = match format {
            "json" => Format::JsonArray,
            "jsonl" => Format::JsonLines,
            _ => return Err(PyValueError::new_err("format must be 'json' or 'jsonl'")),
        };
        let opts = ScanOptions {
            chunk_size: chunk_size.max(1),
            ..ScanOptions::default()
        };
        let records = py
            .detach(|| {
                if sequential {
                    scan_sequential(data, format)
                } else {
                    scan(data, format, &opts).map(|runs| Records::concat(&runs))
                }
            })
            .map_err(|e| to_py_err(py, e))?;
        let d = PyDict::new(py);
        for (k, (name, _)) in COLUMNS.iter().enumerate() {
            d.set_item(*name, PyBytes::new(py, &records.column_bytes(k)))?;
        }
        Ok(d)
    })
}

/// For each path (joined to `base` when relative): 1 if it is an existing file, else 0.
/// Runs on every core with the GIL released.
#[pyfunction]
#[pyo3(signature = (paths, base=None, threads=None))]
fn files_exist<'py>(
    py: Python<'py>,
    paths: Vec<String>,
    base: Option<PathBuf>,
    threads: Option<usize>,
) -> PyResult<Bound<'py, PyBytes>> {
    boundary("files_exist", || {
        let run = || crate::paths::files_exist(base.as_deref(), &paths);
        let found = py.detach(|| match threads {
            Some(n) => rayon::ThreadPoolBuilder::new()
                .num_threads(n.max(1))
                .build()
                .map(|pool| pool.install(run)),
            None => Ok(run()),
        });
        let found =
            found.map_err(|e| PyValueError::new_err(format!("cannot start threads: {e}")))?;
        let bytes: Vec<u8> = found.into_iter().map(u8::from).collect();
        Ok(PyBytes::new(py, &bytes))
    })
}

/// FUSION's length grouping of the permutation `perm` of the positions of `size` (see
/// `grouping::length_grouped`), written into `out`; all three int64, C-contiguous. Runs on every core
/// with the GIL released.
#[pyfunction]
fn length_grouped_into(
    py: Python<'_>,
    perm: PyBuffer<i64>,
    size: PyBuffer<i64>,
    megabatch: usize,
    chunks: usize,
    mut out: PyBuffer<i64>,
) -> PyResult<()> {
    boundary("length_grouped_into", || {
        let (perm, size, out) = (
            int64s(&perm, "perm")?,
            int64s(&size, "size")?,
            int64s_mut(&mut out, "out")?,
        );
        py.detach(|| crate::grouping::length_grouped(perm, size, megabatch, chunks, out))
            .ok_or_else(|| {
                PyValueError::new_err(
                    "perm holds a position outside size, or out is not as long as perm",
                )
            })
    })
}

/// numpy's `Generator(PCG64).shuffle` of `data` (int64, C-contiguous), bit for bit (see `shuffle`):
/// the generator's state is passed as `bit_generator.state` holds it and returned as it is after.
/// Runs with the GIL released.
#[pyfunction]
fn numpy_shuffle_into(
    py: Python<'_>,
    state: u128,
    inc: u128,
    has_uint32: bool,
    uinteger: u32,
    mut data: PyBuffer<i64>,
) -> PyResult<(u128, bool, u32)> {
    boundary("numpy_shuffle_into", || {
        let data = int64s_mut(&mut data, "data")?;
        let mut rng = NumpyPcg64 {
            state,
            inc,
            has_uint32,
            uinteger,
        };
        py.detach(|| crate::shuffle::shuffle(&mut rng, data));
        Ok((rng.state, rng.has_uint32, rng.uinteger))
    })
}

/// The one record builder (its string cache of keys and short values stays warm across calls).
static BUILDER: LazyLock<Mutex<Builder>> = LazyLock::new(|| Mutex::new(Builder::default()));

fn shared_builder() -> std::sync::MutexGuard<'static, Builder> {
    // The GIL is held by every caller, so the lock is never contended; it only satisfies `Sync`.
    BUILDER.lock().unwrap_or_else(|e| e.into_inner())
}

/// Samples given as two little-endian int64 arrays of equal length: dataset and record numbers.
fn samples<'a>(
    datasets: &'a [u8],
    numbers: &'a [u8],
) -> PyResult<impl Iterator<Item = (i64, i64)> + 'a> {
    if datasets.len() != numbers.len() || !datasets.len().is_multiple_of(8) {
        return Err(PyValueError::new_err(
            "datasets and numbers must be int64 arrays of the same length",
        ));
    }
    let int = |c: &[u8]| i64::from_le_bytes(c.try_into().unwrap());
    Ok(datasets
        .chunks_exact(8)
        .map(int)
        .zip(numbers.chunks_exact(8).map(int)))
}

fn nth<T>(items: &[T], d: i64) -> PyResult<&T> {
    usize::try_from(d)
        .ok()
        .and_then(|d| items.get(d))
        .ok_or_else(|| PyIndexError::new_err(format!("dataset number {d} out of range")))
}

/// The datasets of a mixture as `FusionDataset` reads them: by dataset number, its index, name and
/// image prefix (the image folder with a trailing "/", or ""). Samples are given as two little-endian
/// int64 arrays, dataset numbers and record numbers; one call serves a whole batch.
#[pyclass(module = "fusion_fast._core", frozen)]
struct ItemSources {
    indexes: Vec<Py<Index>>,
    names: Vec<Py<PyString>>,
    prefixes: Vec<Py<PyString>>,
}

impl ItemSources {
    /// Each dataset's `flags` column.
    fn flag_columns(&self) -> Vec<&[u8]> {
        self.indexes
            .iter()
            .map(|ix| ix.get().inner.column_bytes("flags").unwrap_or_default())
            .collect()
    }

    /// A stale-index error when a file of any dataset shrank under its mapping (see
    /// `JsonIndex::check_mapped`): called after reading the index columns of a batch.
    fn check_mapped(&self) -> PyResult<()> {
        for index in &self.indexes {
            index.get().inner.check_mapped()?;
        }
        Ok(())
    }

    /// Sample (`d`, `i`): its dataset's index and the record's position in it.
    fn sample(&self, d: i64, i: i64) -> PyResult<(&Index, usize)> {
        let index = nth(&self.indexes, d)?.get();
        Ok((index, index.position(i)?))
    }
}

#[pymethods]
impl ItemSources {
    #[new]
    fn new(
        indexes: Vec<Py<Index>>,
        names: Vec<Py<PyString>>,
        prefixes: Vec<Py<PyString>>,
    ) -> PyResult<Self> {
        boundary("ItemSources()", || {
            if indexes.len() != names.len() || names.len() != prefixes.len() {
                return Err(PyValueError::new_err(
                    "indexes, names and prefixes must have the same length",
                ));
            }
            Ok(ItemSources {
                indexes,
                names,
                prefixes,
            })
        })
    }

    /// The datasets' names, by dataset number.
    #[getter]
    fn names(&self, py: Python<'_>) -> PyResult<Vec<Py<PyString>>> {
        boundary("ItemSources.names", || {
            Ok(self.names.iter().map(|n| n.clone_ref(py)).collect())
        })
    }

    /// The datasets' image prefixes, by dataset number.
    #[getter]
    fn prefixes(&self, py: Python<'_>) -> PyResult<Vec<Py<PyString>>> {
        boundary("ItemSources.prefixes", || {
            Ok(self.prefixes.iter().map(|p| p.clone_ref(py)).collect())
        })
    }

    /// Each sample's index flags (one byte each).
    fn flags<'py>(
        &self,
        py: Python<'py>,
        datasets: &[u8],
        numbers: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        boundary("ItemSources.flags", || {
            ensure_handler();
            let columns = self.flag_columns();
            let mut out = Vec::with_capacity(datasets.len() / 8);
            for (d, i) in samples(datasets, numbers)? {
                let (_, i) = self.sample(d, i)?;
                out.push(nth(&columns, d)?[i]);
            }
            self.check_mapped()?;
            Ok(PyBytes::new(py, &out))
        })
    }

    /// The samples as items (none may be flagged bad): each record with its image paths resolved
    /// and its source added (see `py_items`).
    fn items<'py>(
        &self,
        py: Python<'py>,
        datasets: &[u8],
        numbers: &[u8],
    ) -> PyResult<Bound<'py, PyList>> {
        boundary("ItemSources.items", || {
            ensure_handler();
            let sources = item_sources(py, &self.names, &self.prefixes)?;
            let list = PyList::empty(py);
            for (d, i) in samples(datasets, numbers)? {
                let (index, i) = self.sample(d, i)?;
                let record = index.parse(py, i)?;
                nth(&sources, d)?.finish(&record, i as i64)?;
                list.append(record)?;
            }
            Ok(list)
        })
    }

    /// The samples' bytes concatenated, and each one's length as little-endian uint32: a batch as a
    /// worker process ships it, decoded by `decode_shipped` (`tape=True`: their tapes, see `packed`).
    #[pyo3(signature = (datasets, numbers, *, tape=false))]
    fn pack<'py>(
        &self,
        py: Python<'py>,
        datasets: &[u8],
        numbers: &[u8],
        tape: bool,
    ) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
        boundary("ItemSources.pack", || {
            ensure_handler();
            let mut spans = Vec::with_capacity(datasets.len() / 8);
            for (d, i) in samples(datasets, numbers)? {
                let (index, i) = self.sample(d, i)?;
                spans.push((index, i, index.inner.checked_span(i)?));
            }
            self.check_mapped()?;
            packed(py, &spans, tape)
        })
    }

    /// A worker's batch from mixture positions in one call: what `pack` makes of `Mixture.locate`'s
    /// dataset and record numbers, with those numbers as int64 bytes after it. `offsets`: where each
    /// dataset starts in the mixture, plus the total; `records`: the record number of every position
    /// (both int64, C-contiguous). None when a position is out of range or a sample's flags have a bit
    /// of `bad_flags`: the caller's general path then raises, or replaces the sample.
    #[allow(clippy::type_complexity)]
    #[pyo3(signature = (positions, offsets, records, bad_flags, *, tape=false))]
    fn pack_positions<'py>(
        &self,
        py: Python<'py>,
        positions: Vec<i64>,
        offsets: PyBuffer<i64>,
        records: PyBuffer<i64>,
        bad_flags: u8,
        tape: bool,
    ) -> PyResult<
        Option<(
            Bound<'py, PyBytes>,
            Bound<'py, PyBytes>,
            Bound<'py, PyBytes>,
            Bound<'py, PyBytes>,
        )>,
    > {
        boundary("ItemSources.pack_positions", || {
            ensure_handler();
            let (offsets, records) = (int64s(&offsets, "offsets")?, int64s(&records, "records")?);
            let flags = self.flag_columns();
            let n = records.len() as i64;
            let (mut datasets, mut numbers) = (Vec::new(), Vec::new());
            let mut spans = Vec::with_capacity(positions.len());
            for pos in positions {
                let pos = if pos < 0 { pos + n } else { pos };
                if !(0..n).contains(&pos) {
                    return Ok(None);
                }
                // The dataset whose range holds `pos`: the last offset at or below it.
                let d = offsets.partition_point(|&start| start <= pos) as i64 - 1;
                let number = records[pos as usize];
                let (index, i) = self.sample(d, number)?;
                if nth(&flags, d)?.get(i).is_none_or(|&f| f & bad_flags != 0) {
                    return Ok(None);
                }
                spans.push((index, i, index.inner.checked_span(i)?));
                datasets.extend_from_slice(&d.to_le_bytes());
                numbers.extend_from_slice(&(i as i64).to_le_bytes());
            }
            // The flags and spans came from the index mappings; the records come by positional reads.
            self.check_mapped()?;
            let (data, lengths) = packed(py, &spans, tape)?;
            Ok(Some((
                data,
                lengths,
                PyBytes::new(py, &datasets),
                PyBytes::new(py, &numbers),
            )))
        })
    }
}

/// The bytes of records (index, record number, `checked_span`) concatenated, and each one's length as
/// little-endian uint32: a batch as a worker ships it. With `tape`, each record's tape instead (see
/// `tape`): the worker parses the JSON so that the main process, which builds every record's Python
/// objects, only copies; worth it where the workers have cores to spare (`fusion_fast.torch`
/// decides). Records are read with positional reads rather than from the mapping: this runs in
/// DataLoader workers, which meet most pages of a large file once, and a first touch of a mapped page
/// (a page fault) measured more than twice the cost of a read. A data file cut short or changed after
/// it was opened fails the read or the parse: a stale-index error naming the file and record, not a
/// crash.
fn packed<'py>(
    py: Python<'py>,
    spans: &[(&Index, usize, std::ops::Range<usize>)],
    tape: bool,
) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
    if tape {
        return packed_tapes(py, spans);
    }
    let total = spans.iter().map(|(_, _, s)| s.len()).sum();
    let data = PyBytes::new_with(py, total, |out| {
        let mut at = 0;
        for (index, i, span) in spans {
            let end = at + span.len();
            index
                .inner
                .read_span(span.clone(), &mut out[at..end])
                .map_err(|e| index.changed(py, *i, to_py_err(py, e)))?;
            at = end;
        }
        Ok(())
    })?;
    // A record is under 4 GiB: the index stores lengths as uint32.
    let lengths: Vec<u8> = spans
        .iter()
        .flat_map(|(_, _, s)| (s.len() as u32).to_le_bytes())
        .collect();
    Ok((data, PyBytes::new(py, &lengths)))
}

fn packed_tapes<'py>(
    py: Python<'py>,
    spans: &[(&Index, usize, std::ops::Range<usize>)],
) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
    let mut guard = PACKER.lock().unwrap_or_else(|e| e.into_inner());
    let Packer {
        encoder,
        json,
        tapes,
    } = &mut *guard;
    tapes.clear();
    let mut lengths = Vec::with_capacity(spans.len() * 4);
    for (index, i, span) in spans {
        json.resize(span.len(), 0);
        let start = tapes.len();
        index
            .inner
            .read_span(span.clone(), json)
            .map_err(|e| to_py_err(py, e))
            .and_then(|()| {
                encoder.encode(json, tapes).ok_or_else(|| {
                    PyValueError::new_err("the record is no longer the JSON value that was indexed")
                })
            })
            .map_err(|e| index.changed(py, *i, e))?;
        // A tape is shorter than its JSON plus 4 bytes per code point, and a record is under 4 GiB
        // (the index stores lengths as uint32), so this only guards against the impossible.
        let length = u32::try_from(tapes.len() - start)
            .map_err(|_| PyValueError::new_err("a record's tape exceeds 4 GiB"))?;
        lengths.extend_from_slice(&length.to_le_bytes());
    }
    Ok((PyBytes::new(py, tapes), PyBytes::new(py, &lengths)))
}

/// A worker's buffers for `packed_tapes`, reused from batch to batch.
#[derive(Default)]
struct Packer {
    encoder: Encoder,
    json: Vec<u8>,
    tapes: Vec<u8>,
}

// The GIL is held by every user, so the lock is never contended; it only satisfies `Sync`.
static PACKER: LazyLock<Mutex<Packer>> = LazyLock::new(|| Mutex::new(Packer::default()));

fn item_sources<'py>(
    py: Python<'py>,
    names: &[Py<PyString>],
    prefixes: &[Py<PyString>],
) -> PyResult<Vec<ItemSource<'py>>> {
    names
        .iter()
        .zip(prefixes)
        .map(|(n, p)| ItemSource::new(n.bind(py).clone(), p.bind(py).clone()))
        .collect()
}

/// The samples shipped by `ItemSources.pack`: (dataset number, record number, record bytes) each.
fn shipped<'a>(
    data: &'a [u8],
    lengths: &[u8],
    datasets: &[u8],
    numbers: &[u8],
) -> PyResult<Vec<(i64, i64, &'a [u8])>> {
    if lengths.len() * 2 != numbers.len() {
        return Err(PyValueError::new_err(
            "lengths and numbers must describe the same records",
        ));
    }
    let mut out = Vec::with_capacity(lengths.len() / 4);
    let mut at = 0usize;
    for ((d, i), len) in samples(datasets, numbers)?.zip(lengths.chunks_exact(4)) {
        let len = u32::from_le_bytes(len.try_into().unwrap()) as usize;
        let bytes = at
            .checked_add(len)
            .and_then(|end| data.get(at..end))
            .ok_or_else(|| PyValueError::new_err("record lengths exceed the shipped bytes"))?;
        out.push((d, i, bytes));
        at += len;
    }
    if at != data.len() {
        return Err(PyValueError::new_err(
            "record lengths do not add up to the shipped bytes",
        ));
    }
    Ok(out)
}

/// Decodes samples shipped by `ItemSources.pack`: `data` holds the records back to back (their JSON,
/// or their tapes with `tape=True`), `lengths` their byte lengths (little-endian uint32); `datasets`,
/// `numbers`, `names` and `prefixes` are as in `ItemSources`. Returns the items `ItemSources.items`
/// makes or, with `collated=True`, their `collate`, built column by column without the items in
/// between.
#[pyfunction]
#[pyo3(signature = (data, lengths, datasets, numbers, names, prefixes, tape=false, *, collated=false))]
#[allow(clippy::too_many_arguments)] // the shipped payload, spelled out for Python
fn decode_shipped<'py>(
    py: Python<'py>,
    data: &[u8],
    lengths: &[u8],
    datasets: &[u8],
    numbers: &[u8],
    names: Vec<Py<PyString>>,
    prefixes: Vec<Py<PyString>>,
    tape: bool,
    collated: bool,
) -> PyResult<Bound<'py, PyAny>> {
    boundary("decode_shipped", || {
        let sources = item_sources(py, &names, &prefixes)?;
        let records = shipped(data, lengths, datasets, numbers)?;
        let mut builder = shared_builder();
        // A tape was parsed in the worker, which checked the record then; JSON bytes are checked here.
        let error = |e: PyErr, source: &ItemSource<'_>, i: i64| {
            if tape {
                e
            } else {
                shipped_error(py, e, source, i)
            }
        };
        if collated {
            let mut batch = BatchBuilder::new(py);
            for (d, i, bytes) in records {
                let source = nth(&sources, d)?;
                batch
                    .add(&mut builder, bytes, tape, source, i)
                    .map_err(|e| error(e, source, i))?;
            }
            return batch.finish();
        }
        let list = PyList::empty(py);
        for (d, i, bytes) in records {
            let source = nth(&sources, d)?;
            let built = if tape {
                builder.build_tape(py, bytes)
            } else {
                builder.build(py, bytes)
            };
            let record = built.map_err(|e| error(e, source, i))?;
            source.finish(&record, i)?;
            list.append(record)?;
        }
        Ok(list.into_any())
    })
}

/// A shipped record that does not decode: its bytes are not the JSON that was indexed, because the
/// data file changed after the worker's index was opened. A `StaleIndexError` naming the dataset and
/// record (the main process knows names, not paths; `Index::changed` is the same error where the
/// path is known); other errors (`MemoryError`) pass unchanged.
fn shipped_error(py: Python<'_>, e: PyErr, source: &ItemSource<'_>, record: i64) -> PyErr {
    if !e.is_instance_of::<PyValueError>(py) {
        return e;
    }
    let msg = format!(
        "dataset {}, record {record}: {}; the data file changed after it was opened",
        source
            .name()
            .repr()
            .map_or_else(|_| "?".into(), |r| r.to_string()),
        e.value(py)
    );
    to_py_err(py, Error::new(ErrorKind::StaleIndex, msg))
}

/// `fusion_fast.torch.collate` of JSON-like items, or None where Python must decide (see `py_items`).
#[pyfunction]
fn collate_records<'py>(items: Bound<'py, PyList>) -> PyResult<Option<Bound<'py, PyAny>>> {
    boundary("collate_records", || collate_json(items))
}

/// Panics, for tests of the panic boundary: the error must come out as a `FusionFastError`.
#[pyfunction]
fn _panic_for_tests() -> PyResult<()> {
    boundary("_panic_for_tests", || panic!("a deliberate panic"))
}

/// Where indexes of read-only data go.
#[pyfunction]
fn cache_dir() -> PyResult<OsString> {
    boundary("cache_dir", || Ok(store::cache_dir().into_os_string()))
}

/// Candidate index paths for `path`, in the order they are tried.
#[pyfunction]
#[pyo3(signature = (path, index_dir=None))]
fn index_candidates(path: PathBuf, index_dir: Option<PathBuf>) -> PyResult<Vec<OsString>> {
    boundary("index_candidates", || {
        Ok(store::index_candidates(&path, index_dir.as_deref())
            .into_iter()
            .map(PathBuf::into_os_string)
            .collect())
    })
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("FORMAT_VERSION", crate::index_file::FORMAT_VERSION)?;
    m.add_class::<Index>()?;
    m.add_class::<Mapped>()?;
    m.add_function(wrap_pyfunction!(_panic_for_tests, m)?)?;
    crate::py_image_store::register(m)?;
    m.add_class::<Progress>()?;
    m.add_class::<ItemSources>()?;
    m.add_function(wrap_pyfunction!(open_index, m)?)?;
    m.add_function(wrap_pyfunction!(scan_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(decode_shipped, m)?)?;
    m.add_function(wrap_pyfunction!(collate_records, m)?)?;
    m.add("SOURCE_KEY", SOURCE_KEY)?;
    m.add_function(wrap_pyfunction!(cache_dir, m)?)?;
    m.add_function(wrap_pyfunction!(files_exist, m)?)?;
    m.add_function(wrap_pyfunction!(length_grouped_into, m)?)?;
    m.add_function(wrap_pyfunction!(numpy_shuffle_into, m)?)?;
    m.add_function(wrap_pyfunction!(index_candidates, m)?)?;
    Ok(())
}
