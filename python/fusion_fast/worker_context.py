"""A multiprocessing context for DataLoader workers whose queues have larger pipe buffers.

    loader = DataLoader(ds, batch_size=64, num_workers=2, multiprocessing_context=worker_context())

torch's DataLoader sends every batch from a worker to the main process through one pipe, which Linux
sizes at 64 KiB. A batch of 64 raw records shipped as bytes is about 33 KB, and with
`prefetch_factor=2` and two workers up to four of them are on their way at once: a worker's write
then stops part-way until the main process has read, and the two sides wake each other up several
times per batch. With 1 MiB pipes a batch is written and read in one piece; on the 2-vCPU development
machine there were fewer context switches per batch in each of three runs (docs/benchmarks.md).
Elsewhere than on Linux, or where the kernel refuses the size (`/proc/sys/fs/pipe-max-size`, a
user's pipe page limits), the pipes keep their default size.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import multiprocessing.queues
from typing import Any

try:
    import fcntl
except ImportError:  # not on Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["worker_context", "PIPE_BYTES"]

#: The pipe buffer `worker_context` asks for: Linux's default upper limit for unprivileged users.
PIPE_BYTES = 1 << 20

#: fcntl's "set pipe size" command (Linux; absent from fcntl elsewhere).
_F_SETPIPE_SZ: int | None = getattr(fcntl, "F_SETPIPE_SZ", None)


class _LargePipes:
    """Mixed into a concrete context: its queues get pipes of `pipe_bytes`."""

    pipe_bytes = PIPE_BYTES

    def Queue(self, maxsize: int = 0) -> multiprocessing.queues.Queue[Any]:  # noqa: N802 - the context API's name
        queue: multiprocessing.queues.Queue[Any] = super().Queue(maxsize)  # type: ignore[misc]
        _enlarge_pipe(queue, self.pipe_bytes)
        return queue


def _large_pipes_contexts() -> dict[str, type[multiprocessing.context.BaseContext]]:
    """A `_LargePipes` context class per start method this platform has, defined in this module (so
    that its contexts pickle by reference)."""
    classes = {}
    for method in ("fork", "spawn", "forkserver"):
        try:
            base = type(multiprocessing.get_context(method))
        except ValueError:  # e.g. no fork on Windows
            continue
        name = f"_{method.title()}LargePipes"
        cls = type(name, (_LargePipes, base), {"__module__": __name__, "__qualname__": name})
        globals()[name] = cls
        classes[method] = cls
    return classes


_CONTEXTS = _large_pipes_contexts()


def worker_context(
    start_method: str | None = None, *, pipe_bytes: int = PIPE_BYTES
) -> multiprocessing.context.BaseContext:
    """The `start_method` context ("fork", "spawn" or "forkserver"; default: this platform's default)
    with queues whose pipes hold `pipe_bytes`, for `DataLoader(multiprocessing_context=...)`."""
    if pipe_bytes < 1:
        raise ValueError(f"pipe_bytes must be positive, not {pipe_bytes}")
    method = start_method or multiprocessing.get_start_method()
    if method not in _CONTEXTS:
        raise ValueError(f"unknown start method {method!r}: expected one of {', '.join(_CONTEXTS)}")
    context = _CONTEXTS[method]()
    context.pipe_bytes = pipe_bytes  # type: ignore[attr-defined]
    return context


def _enlarge_pipe(queue: multiprocessing.queues.Queue[Any], pipe_bytes: int) -> None:
    """Ask the kernel for a `pipe_bytes` buffer on the queue's pipe (kept at its default if refused)."""
    if _F_SETPIPE_SZ is None:
        return
    try:
        fcntl.fcntl(queue._reader.fileno(), _F_SETPIPE_SZ, pipe_bytes)  # type: ignore[attr-defined]
    except (AttributeError, OSError):  # not a pipe here, or the size is refused: keep the default
        pass
