"""`fusion_fast.torch.worker_context`: contexts whose queues have large pipes and write in the calling thread,
falling back to multiprocessing's feeder thread (in order) when a message does not fit."""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import pickle
import queue
import sys
import threading
import time

import pytest

pytest.importorskip("torch")  # the module is part of fusion_fast.torch

from fusion_fast.torch.worker_context import PIPE_BYTES, _DirectQueue, _dumps, worker_context  # noqa: E402

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="direct writes are Linux only")


def pipe_size(q) -> int:
    import fcntl

    return fcntl.fcntl(q._reader.fileno(), fcntl.F_GETPIPE_SZ)


def count_feeder_writes(q) -> list[int]:
    """A one-element list counting the messages the queue's feeder thread writes from now on."""
    count = [0]
    send = q._feeder_send

    def counted(data):
        count[0] += 1
        send(data)

    q._feeder_send = counted
    return count


def put_all(q, messages, seconds: float = 20.0) -> None:
    """Put every message from another thread and fail if that takes `seconds` (a put that waits for a
    reader would hang: nobody reads while this runs)."""
    done = threading.Event()

    def run():
        for m in messages:
            q.put(m)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(seconds), "put blocked although nobody was reading"


@pytest.mark.parametrize("start_method", ["fork", "spawn", "forkserver"])
def test_worker_context_queues_have_large_pipes(start_method):
    context = worker_context(start_method)
    assert isinstance(context, multiprocessing.context.BaseContext)
    assert context.get_start_method() == start_method
    assert type(pickle.loads(pickle.dumps(context))) is type(context)
    q = context.Queue()
    if not sys.platform.startswith("linux"):
        pytest.skip("pipe sizes are set on Linux only")
    assert isinstance(q, _DirectQueue)
    assert pipe_size(q) >= PIPE_BYTES
    small = worker_context(start_method, pipe_bytes=8192).Queue()
    assert pipe_size(small) == 8192
    q.put({"a": b"x" * 200_000})  # more than a default 64 KiB pipe holds: round-trips
    assert q.get(timeout=30) == {"a": b"x" * 200_000}


def test_worker_context_rejects_what_it_cannot_make():
    with pytest.raises(ValueError, match="unknown start method"):
        worker_context("thread")
    with pytest.raises(ValueError, match="pipe_bytes"):
        worker_context("spawn", pipe_bytes=0)


@linux_only
def test_messages_that_fit_are_written_by_the_caller():
    q = worker_context("fork").Queue()
    messages = [(k, list(range(k * 64, k * 64 + 64))) for k in range(100)]
    for m in messages:
        q.put(m)
    assert q._thread is None  # no feeder thread was ever started
    assert [q.get(timeout=5) for _ in messages] == messages


@linux_only
def test_messages_that_do_not_fit_go_through_the_feeder_in_order():
    q = worker_context("fork", pipe_bytes=8192).Queue()
    # Small ones fill the pipe up to half, the big ones never fit: both kinds interleave.
    messages = [(k, b"m" * (30_000 if k % 7 == 3 else 1_000 + k)) for k in range(60)]
    put_all(q, messages)
    assert q._thread is not None  # the ones that did not fit were handed to the feeder
    assert [q.get(timeout=10) for _ in messages] == messages
    deadline = time.monotonic() + 10
    while q._pending and time.monotonic() < deadline:
        time.sleep(0.01)
    assert q._pending == 0
    # Drained: small messages are written by the caller again.
    writes = count_feeder_writes(q)
    for k in range(5):
        q.put(k)
    assert [q.get(timeout=5) for _ in range(5)] == list(range(5))
    assert writes[0] == 0


def _produce(q, n: int) -> None:
    for k in range(n):
        q.put((k, b"p" * ((k * 7919) % 300_000)))


@linux_only
@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_messages_from_another_process_arrive_whole_and_in_order(start_method):
    context = worker_context(start_method, pipe_bytes=65536)
    q = context.Queue()
    producer = context.Process(target=_produce, args=(q, 120))
    producer.start()
    try:
        got = [q.get(timeout=60) if k % 2 else q.get() for k in range(120)]  # both ways of waiting
    finally:
        producer.join(30)
    assert producer.exitcode == 0
    assert got == [(k, b"p" * ((k * 7919) % 300_000)) for k in range(120)]


def _abandon(q) -> None:
    for k in range(50):
        q.put((k, b"a" * 100_000))  # 5 MB into a 64 KiB pipe that nobody reads
    q.cancel_join_thread()  # what a DataLoader worker does on its way out


@linux_only
def test_a_writer_whose_reader_stopped_still_exits():
    """A worker must never hang in `put` on a pipe nobody reads any more (a DataLoader left early)."""
    context = worker_context("fork", pipe_bytes=65536)
    q = context.Queue()
    writer = context.Process(target=_abandon, args=(q,))
    writer.start()
    writer.join(30)
    assert writer.exitcode == 0


@linux_only
def test_a_message_that_cannot_be_pickled_fails_in_the_caller_and_takes_no_slot():
    q = worker_context("fork").Queue(maxsize=1)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        q.put(lambda: 0)
    q.put("fits")  # the one slot is still free
    with pytest.raises(queue.Full):
        q.put("no room", block=False)
    assert q.get(timeout=5) == "fits"
    q.put("room again", timeout=1)
    assert q.get(timeout=5) == "room again"


@linux_only
def test_get_waits_for_its_timeout_and_raises_empty():
    q = worker_context("fork").Queue()
    with pytest.raises(queue.Empty):
        q.get(block=False)
    started = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.2)
    assert time.monotonic() - started >= 0.19
    threading.Timer(0.1, q.put, args=("late",)).start()
    assert q.get(timeout=10) == "late"
    q.close()
    with pytest.raises(ValueError, match="closed"):
        q.put("after close")


@linux_only
def test_get_reports_a_pipe_whose_writers_are_gone():
    q = worker_context("fork").Queue()
    q._writer.close()
    with pytest.raises(EOFError):
        q.get(timeout=5)


def test_pickles_like_forking_pickler():
    from multiprocessing.reduction import ForkingPickler

    class Registered:
        pass

    for obj in [(3, [1, 2, 3]), {"a": "b", "c": [None, 1.5, True]}, b"x" * 10_000]:
        assert bytes(_dumps(obj)) == bytes(ForkingPickler.dumps(obj))
    # Reducers registered with ForkingPickler (as torch registers its tensors') are used, even ones
    # registered after the import.
    ForkingPickler.register(Registered, lambda obj: (str, ("reduced",)))
    try:
        assert pickle.loads(_dumps(Registered())) == "reduced"
    finally:
        del ForkingPickler._extra_reducers[Registered]


@linux_only
def test_put_does_not_wait_for_a_write_lock_held_elsewhere():
    """Another process's feeder may hold the write lock through a long write nobody reads: `put` hands
    its message to the feeder instead of waiting, and the message arrives once the lock is free."""
    q = worker_context("fork").Queue()
    q._wlock.acquire()
    try:
        put_all(q, ["waited for nothing"], seconds=10)
    finally:
        q._wlock.release()
    assert q.get(timeout=10) == "waited for nothing"
