//! Errors at the Python boundary: each `ErrorKind` maps onto one class of the `FusionFastError`
//! hierarchy in `fusion_fast/errors.py` (or onto `ValueError` / `IndexError`), so that `?` turns any
//! core error into its Python exception; and every entry point turns a Rust panic into an exception.

use std::panic::AssertUnwindSafe;

use pyo3::exceptions::{PyIndexError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyType};

use crate::error::{Error, ErrorKind};

/// The classes of `fusion_fast/errors.py`, resolved when the module is imported.
struct ErrorClasses {
    malformed_json: Py<PyType>,
    index_missing: Py<PyType>,
    stale_index: Py<PyType>,
    corrupt_index: Py<PyType>,
    io: Py<PyType>,
    corrupt_archive: Py<PyType>,
    /// The base class, raised for internal errors (a panic).
    base: Py<PyType>,
}

static ERROR_CLASSES: PyOnceLock<ErrorClasses> = PyOnceLock::new();

fn error_classes(py: Python<'_>) -> PyResult<&ErrorClasses> {
    ERROR_CLASSES.get_or_try_init(py, || {
        let module = py.import("fusion_fast.errors")?;
        let class = |name: &str| -> PyResult<Py<PyType>> {
            Ok(module.getattr(name)?.cast_into::<PyType>()?.unbind())
        };
        Ok(ErrorClasses {
            malformed_json: class("MalformedJSONError")?,
            index_missing: class("IndexMissingError")?,
            stale_index: class("StaleIndexError")?,
            corrupt_index: class("CorruptIndexError")?,
            io: class("FusionFastIOError")?,
            corrupt_archive: class("CorruptArchiveError")?,
            base: class("FusionFastError")?,
        })
    })
}

/// Resolves the exception classes; called once, when `fusion_fast._core` is imported.
pub fn init(py: Python<'_>) -> PyResult<()> {
    error_classes(py).map(|_| ())
}

/// The `fusion_fast.errors` exception that matches `err.kind`, with its path and position; a
/// `ValueError` or `IndexError` with the message for an invalid argument or a position out of range.
fn to_py_err(py: Python<'_>, err: Error) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let classes = error_classes(py)?;
        let class = match err.kind {
            ErrorKind::MalformedJson => &classes.malformed_json,
            ErrorKind::IndexMissing => &classes.index_missing,
            ErrorKind::StaleIndex => &classes.stale_index,
            ErrorKind::CorruptIndex => &classes.corrupt_index,
            ErrorKind::Io => &classes.io,
            ErrorKind::CorruptArchive => &classes.corrupt_archive,
            ErrorKind::Invalid => return Ok(PyValueError::new_err(err.to_string())),
            ErrorKind::OutOfRange => return Ok(PyIndexError::new_err(err.to_string())),
        };
        let kwargs = PyDict::new(py);
        kwargs.set_item("path", err.path.as_ref().map(|p| p.as_os_str()))?;
        if let Some(p) = &err.position {
            kwargs.set_item("offset", p.offset)?;
            kwargs.set_item("line", p.line)?;
            kwargs.set_item("column", p.column)?;
            kwargs.set_item("record", p.record)?;
        }
        let exc = class.bind(py).call((err.message.clone(),), Some(&kwargs))?;
        Ok(PyErr::from_value(exc))
    };
    build().unwrap_or_else(|e| e)
}

/// Lets `?` turn a core error into its Python exception anywhere in the binding.
impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        Python::attach(|py| to_py_err(py, err))
    }
}

/// The message a panic carried, if it was a string.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Runs the body of a function called from Python and turns a Rust panic into a `FusionFastError`
/// naming `operation`. Every entry point goes through it: pyo3 would otherwise raise
/// `pyo3_runtime.PanicException`, a `BaseException` that `except Exception` does not catch. Costs
/// nothing unless a panic happens.
pub fn boundary<T>(operation: &str, body: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    match std::panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(result) => result,
        Err(payload) => {
            let message = format!(
                "internal error in {operation}: {}",
                panic_message(payload.as_ref())
            );
            Err(Python::attach(|py| match error_classes(py) {
                Ok(classes) => classes
                    .base
                    .bind(py)
                    .call1((message,))
                    .map_or_else(|e| e, PyErr::from_value),
                Err(e) => e,
            }))
        }
    }
}
