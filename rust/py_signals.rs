//! Long work that Python callers can interrupt: the work runs on a thread of its own while the
//! calling thread waits with the GIL released, in short slices, checking for signals between them.
//! A blocking call made with the GIL held would run Python's signal handlers (Ctrl-C's
//! `KeyboardInterrupt`, a SIGTERM handler's `SystemExit`) only when the work had ended.

use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::Duration;

use pyo3::prelude::*;

use crate::py_errors::panic_message;

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
