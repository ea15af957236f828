//! The Python side of the image store (`fusion_fast.images` wraps it).

use std::borrow::Cow;
use std::os::raw::{c_int, c_void};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::{PyBufferError, PyKeyError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::error::{Error, ErrorKind};
use crate::image_store::{
    build_placed, convert_all_with, normalize, ConvertOptions, ImageStore, Location, Placement,
    SpaceBudget,
};
use crate::py_errors::{boundary, run_interruptible, Stopped};

/// An open image store, shared (read-only) by every view it hands out.
#[pyclass(module = "fusion_fast._core", name = "ImageStore", frozen)]
pub struct PyImageStore {
    inner: Arc<ImageStore>,
}

/// The bytes of one stored member, exported through the buffer protocol straight from the mapped
/// archive: `memoryview(view)` copies nothing, and the mapping lives while any view does.
#[pyclass(module = "fusion_fast._core", frozen)]
pub struct MemberView {
    _store: Arc<ImageStore>,
    ptr: usize,
    len: usize,
}

#[pymethods]
impl MemberView {
    /// # Safety
    /// Called by Python with a valid `view`; the exported memory belongs to a mapping that `_store`
    /// keeps alive, and `PyBuffer_FillInfo` makes the view hold a reference to this object.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        if flags & ffi::PyBUF_WRITABLE != 0 {
            return Err(PyBufferError::new_err("image store members are read-only"));
        }
        let this = slf.get();
        let rc = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                this.ptr as *mut c_void,
                this.len as ffi::Py_ssize_t,
                1,
                flags,
            )
        };
        if rc == -1 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    fn __len__(&self) -> usize {
        self.len
    }
}

impl PyImageStore {
    /// The member's position and location (read from its archive record, which the lookup parses to
    /// check the name anyway).
    fn lookup(&self, member: &[u8]) -> PyResult<(usize, Location)> {
        match self.inner.lookup(member)? {
            Some(found) => Ok(found),
            None => Err(self.missing(member)),
        }
    }

    fn missing(&self, member: &[u8]) -> PyErr {
        PyKeyError::new_err(format!(
            "{} is in no archive of the image store {}",
            String::from_utf8_lossy(member),
            self.inner.path().display()
        ))
    }
}

#[pymethods]
impl PyImageStore {
    /// Builds the store of `archives` (first archive wins for a path held twice) into `path`, each
    /// archive's members placed by `(strip, prefix)` from `placements` when given. Returns `{"members": n, "refused": [(archive, member, reason)], "duplicates": [(member,
    /// kept archive, ignored archive)]}`.
    #[staticmethod]
    #[pyo3(signature = (archives, path, placements=None))]
    fn build<'py>(
        py: Python<'py>,
        archives: Vec<PathBuf>,
        path: PathBuf,
        placements: Option<Vec<(usize, String)>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        boundary("ImageStore.build", || {
            let placements = placements.unwrap_or_default();
            if !placements.is_empty() && placements.len() != archives.len() {
                return Err(Error::invalid(format!(
                    "{} placements for {} archives",
                    placements.len(),
                    archives.len()
                ))
                .into());
            }
            let placed: Vec<(PathBuf, Placement)> = archives
                .into_iter()
                .enumerate()
                .map(|(k, a)| {
                    let placement = placements
                        .get(k)
                        .map(|(strip, prefix)| Placement {
                            strip: *strip,
                            prefix: prefix.clone(),
                        })
                        .unwrap_or_default();
                    (a, placement)
                })
                .collect();
            let report = py.detach(|| build_placed(&placed, &path))?;
            let d = PyDict::new(py);
            d.set_item("members", report.members)?;
            let refused = PyList::empty(py);
            for r in &report.refused {
                refused.append((
                    r.archive.to_string_lossy().into_owned(),
                    &r.member,
                    &r.reason,
                ))?;
            }
            d.set_item("refused", refused)?;
            let dups = PyList::empty(py);
            for r in &report.duplicates {
                dups.append((
                    &r.member,
                    r.kept.to_string_lossy().into_owned(),
                    r.ignored.to_string_lossy().into_owned(),
                ))?;
            }
            d.set_item("duplicates", dups)?;
            Ok(d)
        })
    }

    #[staticmethod]
    fn open(py: Python<'_>, path: PathBuf) -> PyResult<PyImageStore> {
        boundary("ImageStore.open", || {
            let inner = py.detach(|| ImageStore::open(&path))?;
            Ok(PyImageStore {
                inner: Arc::new(inner),
            })
        })
    }

    #[getter]
    fn path(&self) -> String {
        self.inner.path().to_string_lossy().into_owned()
    }

    fn archives(&self) -> Vec<String> {
        self.inner
            .archives()
            .map(|p| p.to_string_lossy().into_owned())
            .collect()
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __contains__(&self, member: &[u8]) -> PyResult<bool> {
        boundary("ImageStore.__contains__", || {
            Ok(self.inner.find(member)?.is_some())
        })
    }

    /// The member's bytes (a copy); `KeyError` when no archive holds it.
    fn read<'py>(&self, py: Python<'py>, member: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        boundary("ImageStore.read", || {
            let store = &self.inner;
            let Some((i, bytes)) = py.detach(|| store.read_member(member))? else {
                return Err(self.missing(member));
            };
            let copy = PyBytes::new(py, &bytes);
            // A copy out of the mapping touched every page of the member: a file cut short meanwhile
            // left zeros.
            store.check_mapped(i)?;
            Ok(copy)
        })
    }

    /// The member's bytes without a copy where it is stored uncompressed (a `MemberView`, to wrap in
    /// `memoryview`), else inflated `bytes`.
    fn view<'py>(&self, py: Python<'py>, member: &[u8]) -> PyResult<Bound<'py, PyAny>> {
        boundary("ImageStore.view", || {
            let (_, loc) = self.lookup(member)?;
            let store = &self.inner;
            let name = normalize(member).unwrap_or_default();
            let bytes = py.detach(|| store.read_located(&name, loc))?;
            match bytes {
                Cow::Borrowed(b) => Ok(Bound::new(
                    py,
                    MemberView {
                        _store: Arc::clone(&self.inner),
                        ptr: b.as_ptr() as usize,
                        len: b.len(),
                    },
                )?
                .into_any()),
                Cow::Owned(v) => Ok(PyBytes::new(py, &v).into_any()),
            }
        })
    }

    /// The member's bytes (as `read` gives them) when no file exists at `path`: a file on disk wins
    /// over its store member. None when `path` is a file (or anything but missing: the caller opens
    /// it and gets its error); `KeyError` when neither is there. The file is looked for with one
    /// `stat` and no Python exception for its absence, which would cost more than the read.
    fn member_unless_file<'py>(
        &self,
        py: Python<'py>,
        path: PathBuf,
        member: &[u8],
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        boundary("ImageStore.member_unless_file", || {
            let store = &self.inner;
            let found = py.detach(|| match std::fs::metadata(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    store.read_member(member).map(Some)
                }
                _ => Ok(None),
            })?;
            let (i, bytes) = match found {
                None => return Ok(None),
                Some(None) => return Err(self.missing(member)),
                Some(Some(read)) => read,
            };
            let copy = PyBytes::new(py, &bytes);
            // A copy out of the mapping touched every page of the member: a file cut short meanwhile
            // left zeros.
            store.check_mapped(i)?;
            Ok(Some(copy))
        })
    }

    /// Every member path, read from the archives in archive order (each archive front to back).
    fn members<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        boundary("ImageStore.members", || {
            self.inner
                .archive_order()
                .into_iter()
                .map(|i| {
                    let name = self.inner.name(i)?;
                    Ok(PyBytes::new(py, &name))
                })
                .collect()
        })
    }

    /// `(archive, data offset, stored size, size, method, crc)` of a member.
    fn location(&self, member: &[u8]) -> PyResult<(String, u64, u64, u64, u8, u32)> {
        boundary("ImageStore.location", || {
            let (_, loc) = self.lookup(member)?;
            let archive = self
                .inner
                .archives()
                .nth(loc.archive as usize)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok((
                archive,
                loc.data_offset,
                loc.stored_size,
                loc.size,
                loc.method,
                loc.crc,
            ))
        })
    }

    /// Recomputes the checksum of the whole store file.
    fn verify(&self, py: Python<'_>) -> PyResult<()> {
        boundary("ImageStore.verify", || {
            let store = &self.inner;
            Ok(py.detach(|| store.verify())?)
        })
    }
}

/// Stops the conversions of `convert_to_tars` calls it is given to, from any thread: `request()` makes
/// each stop at its next chunk and remove its temporary file.
#[pyclass(module = "fusion_fast._core", frozen)]
#[derive(Default)]
pub struct ConvertCancel {
    flag: Arc<AtomicBool>,
}

#[pymethods]
impl ConvertCancel {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    fn request(&self) {
        self.flag.store(true, Ordering::Relaxed);
    }

    fn is_requested(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }
}

/// The bytes that all conversions given it may write together (`SpaceBudget`): `convert_to_tars`
/// takes every chunk from it before writing it, and Python conversions call `take` the same way, so
/// conversions running at once never write more than it together. A failed conversion gives back
/// what it took.
#[pyclass(module = "fusion_fast._core", frozen)]
pub struct ConvertBudget {
    inner: Arc<SpaceBudget>,
}

#[pymethods]
impl ConvertBudget {
    #[new]
    fn new(limit: u64) -> Self {
        ConvertBudget {
            inner: Arc::new(SpaceBudget::new(limit)),
        }
    }

    /// Takes `n` bytes if they are left (all or nothing); False when they are not.
    fn take(&self, n: u64) -> bool {
        self.inner.take(n)
    }

    /// Gives back `n` bytes taken before.
    fn release(&self, n: u64) {
        self.inner.release(n)
    }

    #[getter]
    fn limit(&self) -> u64 {
        self.inner.limit()
    }

    #[getter]
    fn used(&self) -> u64 {
        self.inner.used()
    }

    fn __repr__(&self) -> String {
        format!(
            "ConvertBudget(limit={}, used={})",
            self.inner.limit(),
            self.inner.used()
        )
    }
}

/// Converts each `(parts, dest)`: a plain or gzip-compressed tar, whole or split in parts, into the
/// plain tar `dest` (in parallel, atomically, every gzip CRC and length checked). Returns the sizes.
///
/// `max_bytes` gives each job the most bytes its tar may expand to (None: no limit); past it the
/// conversion fails with a message starting with `LIMIT_PREFIX`. `cancel.request()` stops every
/// conversion at its next chunk. `budget` is shared space that every chunk is taken from (past it:
/// a message starting with `SPACE_PREFIX`). The conversions run with the GIL released on a thread of their own
/// while this one checks for signals: when a handler raises (Ctrl-C, a SIGTERM handler), they are
/// stopped, their temporary files removed, and the handler's exception is raised here.
/// `chunk_delay` (seconds after each chunk) is a testing aid only.
#[pyfunction]
#[pyo3(signature = (jobs, *, max_bytes=None, cancel=None, chunk_delay=None, budget=None))]
fn convert_to_tars(
    py: Python<'_>,
    jobs: Vec<(Vec<PathBuf>, PathBuf)>,
    max_bytes: Option<Vec<Option<u64>>>,
    cancel: Option<&ConvertCancel>,
    chunk_delay: Option<f64>,
    budget: Option<&ConvertBudget>,
) -> PyResult<Vec<u64>> {
    boundary("ImageStore.convert_to_tars", || {
        let limits = max_bytes.unwrap_or_else(|| vec![None; jobs.len()]);
        if limits.len() != jobs.len() {
            return Err(Error::invalid("max_bytes must give one limit per job").into());
        }
        let delay = match chunk_delay {
            Some(d) if !(d.is_finite() && d >= 0.0) => {
                return Err(Error::invalid("chunk_delay must be a number of seconds >= 0").into())
            }
            d => d.filter(|&d| d > 0.0).map(Duration::from_secs_f64),
        };
        let flag = cancel.map_or_else(|| Arc::new(AtomicBool::new(false)), |c| c.flag.clone());
        let opts = ConvertOptions {
            max_bytes: None,
            budget: budget.map(|b| b.inner.clone()),
            cancel: Some(flag.clone()),
            chunk_delay: delay,
        };
        let work: Vec<_> = jobs
            .into_iter()
            .zip(limits)
            .map(|((parts, dest), max)| (parts, dest, max))
            .collect();
        let converted = run_interruptible(
            py,
            "fusion-fast convert",
            move || convert_all_with(&work, &opts),
            // Every conversion stops at its next chunk and removes its temporary file.
            || flag.store(true, Ordering::Relaxed),
            || true,
        );
        match converted {
            Ok(result) => Ok(result?),
            Err(Stopped::Start(e)) => Err(Error::new(
                ErrorKind::Io,
                format!("cannot start a thread to convert: {e}"),
            )
            .into()),
            Err(Stopped::Panicked(why)) => {
                let msg = format!("internal error while converting: {why}");
                Err(Error::new(ErrorKind::Io, msg).into())
            }
            Err(Stopped::Interrupted(interrupt)) => Err(interrupt),
        }
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(convert_to_tars, m)?)?;
    m.add_class::<ConvertCancel>()?;
    m.add_class::<ConvertBudget>()?;
    m.add("CONVERT_LIMIT_PREFIX", crate::image_store::LIMIT_PREFIX)?;
    m.add("CONVERT_SPACE_PREFIX", crate::image_store::SPACE_PREFIX)?;
    m.add_class::<PyImageStore>()?;
    m.add_class::<MemberView>()?;
    Ok(())
}
