//! Errors at the Python boundary: each `ErrorKind` maps onto one class of the `FusionFastError`
//! hierarchy in `fusion_fast/errors.py` (or onto `ValueError` / `IndexError`), so that `?` turns any
//! core error into its Python exception; and every entry point turns a Rust panic into an exception.
//!
//! Long work that Python callers can interrupt (`run_interruptible`) runs on a thread of its own while
//! the calling thread waits with the GIL released, in short slices, checking for signals between them:
//! a blocking call made with the GIL held would run Python's signal handlers (Ctrl-C's
//! `KeyboardInterrupt`, a SIGTERM handler's `SystemExit`) only when the work had ended.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::Duration;

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

/// How long the waiting thread sleeps between checks for signals.
const SIGNAL_POLL: Duration = Duration::from_millis(20);

/// How often, once the work was asked to stop, the waiting thread checks whether it has.
const STOP_POLL: Duration = Duration::from_millis(2);

/// Why `run_interruptible` returned without the work's result.
pub enum Stopped {
    /// The thread could not be started.
    Start(std::io::Error),
    /// The work panicked; the panic's message.
    Panicked(String),
    /// A signal handler raised this exception; the work was asked to stop first.
    Interrupted(PyErr),
}

/// Runs `work` on a thread named `name` and returns its result, checking for signals while it runs.
///
/// When a signal handler raises, `stop` asks the work to stop and this thread waits until it has
/// (so that it has removed its temporary files), for as long as `can_wait` says the work is not
/// blocked on something that cannot be interrupted; then the handler's exception is returned.
pub fn run_interruptible<T: Send + 'static>(
    py: Python<'_>,
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
    stop: impl FnOnce(),
    can_wait: impl Fn() -> bool + Send,
) -> Result<T, Stopped> {
    let (tx, rx) = channel::<T>();
    let worker = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _ = tx.send(work());
        })
        .map_err(Stopped::Start)?;
    // The receiver is not Sync, so it moves into each GIL-free slice and back out.
    let wait = |rx: Receiver<T>, slice| {
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
                return Ok(result);
            }
            Err(RecvTimeoutError::Disconnected) => {
                let why = match worker.join() {
                    Err(panic) => panic_message(panic.as_ref()),
                    Ok(()) => String::new(),
                };
                return Err(Stopped::Panicked(why));
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        if let Err(interrupt) = py.check_signals() {
            stop();
            py.detach(move || loop {
                match rx.recv_timeout(STOP_POLL) {
                    Err(RecvTimeoutError::Timeout) if can_wait() => {}
                    Err(RecvTimeoutError::Timeout) => break,
                    _ => {
                        let _ = worker.join();
                        break;
                    }
                }
            });
            return Err(Stopped::Interrupted(interrupt));
        }
    }
}
