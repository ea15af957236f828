"""A multiprocessing context for DataLoader workers whose queues hand batches over more cheaply.

    loader = DataLoader(ds, batch_size=64, num_workers=2, multiprocessing_context=worker_context())

torch's DataLoader sends every batch from a worker to the main process, and every batch's indices the
other way, through `multiprocessing.Queue`s. Two costs of that queue dominate when batches are small
and many (raw records: about 33 KB per batch of 64):

- **A feeder thread per queue and process.** `Queue.put` only appends to a list; a background thread
  wakes up, takes the GIL, pickles and writes. Each batch crossed two such threads: on the 2-vCPU
  development machine a batch cost 14-19 context switches.
- **64 KiB pipes.** With `prefetch_factor=2` and two workers up to four batches are on their way at
  once: a write stopped part-way until the other side had read.

The queues made by this context ask for 1 MiB pipes, and their `put` pickles and writes in the calling
thread whenever the pipe has room for the message: at most half the pipe is ever filled that way, so
the write cannot block. A message that does not fit, or finds the write lock taken by another
process, goes to the usual feeder thread, as does everything after it until the feeder has written
it: the order of messages is kept, and `put` never waits for a reader, so a worker never hangs at
shutdown on a pipe nobody reads any more. `get` waits with one `poll` object kept per process instead
of a selector made per call.

Elsewhere than on Linux the queues are multiprocessing's own; where the kernel refuses the pipe size
(`/proc/sys/fs/pipe-max-size`, a user's pipe page limits), the pipes keep their default size.
Measured in docs/benchmarks.md.
"""

from __future__ import annotations

import collections
import copyreg
import io
import multiprocessing
import multiprocessing.context
import multiprocessing.queues
import pickle
import queue
import select
import threading
from array import array
from multiprocessing.reduction import ForkingPickler
from typing import Any

try:
    import fcntl
    import termios
except ImportError:  # not on Windows
    fcntl = termios = None  # type: ignore[assignment]

__all__ = ["worker_context", "PIPE_BYTES"]

#: The pipe buffer `worker_context` asks for: Linux's default upper limit for unprivileged users.
PIPE_BYTES = 1 << 20

#: fcntl's pipe size commands and the "bytes unread" ioctl (Linux; absent elsewhere).
_F_SETPIPE_SZ: int | None = getattr(fcntl, "F_SETPIPE_SZ", None)
_F_GETPIPE_SZ: int | None = getattr(fcntl, "F_GETPIPE_SZ", None)
_FIONREAD: int | None = getattr(termios, "FIONREAD", None)
#: Caller-written queues need Linux's pipe ioctls and the hooks they take over from multiprocessing's
#: Queue (`_reset`, the feeder's `_send_bytes`: Python 3.9 and later); without them, the plain Queue.
_DIRECT_WRITES = (
    _F_GETPIPE_SZ is not None
    and _FIONREAD is not None
    and hasattr(multiprocessing.queues.Queue, "_reset")
    and hasattr(multiprocessing.queues.Queue, "_start_thread")
)

#: What `ForkingPickler` pickles with (torch's shared-memory tensors among its reducers), as a live
#: view: `ForkingPickler.dumps` copies both tables on every call, a third of its cost for a batch's
#: indices.
_DISPATCH_TABLE = collections.ChainMap(ForkingPickler._extra_reducers, copyreg.dispatch_table)  # type: ignore[attr-defined]


def _dumps(obj: Any) -> memoryview:
    """`ForkingPickler.dumps(obj)`, without copying its dispatch tables."""
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf)
    pickler.dispatch_table = _DISPATCH_TABLE  # type: ignore[assignment]
    pickler.dump(obj)
    return buf.getbuffer()


class _Pickled:
    """A message pickled already, handed to the feeder thread: it unpickles as the original object (the
    object itself is not pickled twice: torch's shared-memory handles must be made once)."""

    __slots__ = ("data",)

    def __init__(self, data: memoryview) -> None:
        self.data = data

    def __reduce__(self) -> tuple[Any, ...]:
        return (pickle.loads, (bytes(self.data),))


class _DirectQueue(multiprocessing.queues.Queue):  # type: ignore[type-arg]
    """multiprocessing's `Queue` whose `put` writes in the calling thread when the pipe has room, and
    whose `get` waits with a kept `poll` object (see the module's docstring). Linux only."""

    # multiprocessing.queues.Queue's own state, which its type stubs leave out.
    _closed: bool
    _reader: Any
    _writer: Any
    _rlock: Any
    _wlock: Any
    _sem: Any
    _notempty: threading.Condition
    _buffer: collections.deque[Any]
    _thread: threading.Thread | None
    _send_bytes: Any
    _poll: Any
    _start_thread: Any

    def _reset(self, after_fork: bool = False) -> None:
        super()._reset(after_fork)  # type: ignore[misc]
        # Messages handed to the feeder thread and not yet written (changed under _notempty).
        self._pending = 0
        self._poller: select.poll | None = None
        self._feeder_send = self._send_bytes
        self._send_bytes = self._send_counted
        self._poll = self._poll_ready

    def _send_counted(self, data: Any) -> None:
        """The feeder thread's write: counts the message off `_pending` once it is out (or failed)."""
        try:
            self._feeder_send(data)
        finally:
            with self._notempty:
                self._pending -= 1

    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")
        data = _dumps(obj)  # a pickling error is raised here, to the caller, and takes no slot
        if not self._sem.acquire(block, timeout):
            raise queue.Full
        # Else earlier messages wait in the feeder and this one follows them. Read without the lock: a
        # stale count only sends this message through the feeder too.
        direct = self._pending == 0
        # The write lock is only tried: another process's feeder may hold it through a long write to a
        # pipe nobody reads any more (a DataLoader shutting down), and `put` must not wait for that.
        if direct and self._wlock.acquire(False):
            try:
                if self._room() >= len(data):
                    self._writer.send_bytes(data)
                    return
            finally:
                self._wlock.release()
        with self._notempty:
            if self._thread is None:
                self._start_thread()
            self._pending += 1
            self._buffer.append(_Pickled(data))
            self._notempty.notify()

    def _room(self) -> int:
        """Bytes a message may take now without filling more than half the pipe (the kernel stores
        writes in pages, so a pipe holds fewer bytes than its size when pages are partly used), less
        12 for its length header. Both figures are read each time (a system call each, 0.3 µs): the pipe
        is resized after the queue is made, and a cached size would have nothing to invalidate it."""
        fd = self._writer.fileno()
        unread = array("i", [0])
        fcntl.ioctl(fd, _FIONREAD, unread, True)  # type: ignore[arg-type]
        return fcntl.fcntl(fd, _F_GETPIPE_SZ) // 2 - unread[0] - 12  # type: ignore[arg-type]

    def _poll_ready(self, timeout: float | None = 0.0) -> bool:
        """`Connection.poll` for `Queue.get` and `empty`: whether the pipe has something to read (or its
        writers are gone) within `timeout` seconds, with one `poll` object kept per process instead of a
        selector made per call."""
        if self._poller is None:
            self._poller = select.poll()
            self._poller.register(self._reader.fileno(), select.POLLIN)
        return bool(self._poller.poll(None if timeout is None else max(timeout, 0.0) * 1000.0))


class _WorkerQueues:
    """Mixed into a concrete context: its queues are `_DirectQueue`s (on Linux) with `pipe_bytes` pipes."""

    pipe_bytes = PIPE_BYTES

    def Queue(self, maxsize: int = 0) -> multiprocessing.queues.Queue[Any]:  # noqa: N802 - the context API's name
        if _DIRECT_WRITES:
            made: multiprocessing.queues.Queue[Any] = _DirectQueue(maxsize, ctx=self.get_context())  # type: ignore[attr-defined]
        else:
            made = super().Queue(maxsize)  # type: ignore[misc]
        _enlarge_pipe(made, self.pipe_bytes)
        return made


def _worker_queue_contexts() -> dict[str, type[multiprocessing.context.BaseContext]]:
    """A `_WorkerQueues` context class per start method this platform has, defined in this module (so
    that its contexts pickle by reference)."""
    classes = {}
    for method in ("fork", "spawn", "forkserver"):
        try:
            base = type(multiprocessing.get_context(method))
        except ValueError:  # e.g. no fork on Windows
            continue
        name = f"_{method.title()}WorkerQueues"
        cls = type(name, (_WorkerQueues, base), {"__module__": __name__, "__qualname__": name})
        globals()[name] = cls
        classes[method] = cls
    return classes


_CONTEXTS = _worker_queue_contexts()


def worker_context(
    start_method: str | None = None, *, pipe_bytes: int = PIPE_BYTES
) -> multiprocessing.context.BaseContext:
    """The `start_method` context ("fork", "spawn" or "forkserver"; default: this platform's default)
    whose queues write in the calling thread and whose pipes hold `pipe_bytes`, for
    `DataLoader(multiprocessing_context=...)`."""
    if pipe_bytes < 1:
        raise ValueError(f"pipe_bytes must be positive, not {pipe_bytes}")
    method = start_method or multiprocessing.get_start_method()
    if method not in _CONTEXTS:
        raise ValueError(f"unknown start method {method!r}: expected one of {', '.join(_CONTEXTS)}")
    context = _CONTEXTS[method]()
    context.pipe_bytes = pipe_bytes  # type: ignore[attr-defined]
    return context


def _enlarge_pipe(made: multiprocessing.queues.Queue[Any], pipe_bytes: int) -> None:
    """Ask the kernel for a `pipe_bytes` buffer on the queue's pipe (kept at its default if refused)."""
    if _F_SETPIPE_SZ is None:
        return
    try:
        fcntl.fcntl(made._reader.fileno(), _F_SETPIPE_SZ, pipe_bytes)  # type: ignore[attr-defined]
    except (AttributeError, OSError):  # not a pipe here, or the size is refused: keep the default
        pass
