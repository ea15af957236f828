"""An index build as a process lives it: interrupted by Ctrl-C or SIGTERM, killed, raced by other
processes. It stops promptly, keeps the previous index, and leaves nothing but the index beside the data."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import fusion_fast as ff

from .conftest import write

pytestmark = pytest.mark.skipif(not Path("/proc/locks").is_file(), reason="needs Linux's /proc/locks")

#: Records of many one-digit numbers are the slowest bytes to index (one token per two bytes), so a
#: file of this size takes more than a second to index on one thread, long enough to interrupt it
#: mid-scan. (`fusion_fast.synth` writes realistic records, but too slowly for a file this big.)
SLOW_FILE_BYTES = 120 << 20

#: How long an interrupted build may take to end. Stopping takes milliseconds; this bound leaves room
#: for a loaded machine and only catches a build that runs on to its end or hangs. That the build
#: really stopped early is shown by the index left unchanged, not by the clock.
STOP_BOUND_S = 5.0


@pytest.fixture(scope="module")
def slow_source(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("slow") / "slow.json"
    record = json.dumps({"id": "r", "values": [0] * 2000}, separators=(",", ":"))
    count = SLOW_FILE_BYTES // (len(record) + 1)
    with open(path, "w") as f:
        f.write("[" + ",".join([record] * count) + "]")
    return path


@pytest.fixture
def slow_file(slow_source: Path, tmp_path: Path) -> Path:
    """The slow file in a folder of its own (a hard link: no copy), with a valid index beside it."""
    path = tmp_path / "data" / "big.json"
    path.parent.mkdir()
    os.link(slow_source, path)
    idx = ff.open(path, threads=1)
    assert idx.built
    return path


def folder(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def fingerprint(path: Path) -> tuple[int, str]:
    """Inode and content hash: a rebuilt index is renamed into place, so it gets a new inode."""
    return path.stat().st_ino, hashlib.sha256(path.read_bytes()).hexdigest()


def wait_for(what: str, ready: Callable[[], bool], proc: subprocess.Popen[str], timeout: float = 120) -> None:
    """Polls `ready` until it is true; fails with the child's output if the child ends first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the child ended (rc {proc.returncode}) before {what}:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def proc_locks() -> list[list[str]]:
    return [line.split() for line in Path("/proc/locks").read_text().splitlines()]


def holds_flock(pid: int) -> bool:
    """Whether process `pid` holds a flock (the build lock: the only one the build takes)."""
    return any(f[1] == "FLOCK" and f[4] == str(pid) for f in proc_locks())


def blocked_on(inode: int) -> int:
    """How many flock waiters are blocked on the file with this inode."""
    return sum(1 for f in proc_locks() if f[1] == "->" and f[2] == "FLOCK" and f[6].endswith(f":{inode}"))


def child(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fusion_fast", *args]


def interrupt_build(argv: list[str], sig: int) -> tuple[subprocess.Popen[str], str, float]:
    """Starts `argv`, waits until it holds the build lock, sends `sig`; returns the process, its stderr
    and the seconds from the signal to its end."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for("the build started", lambda: holds_flock(proc.pid), proc)
    sent = time.monotonic()
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the interrupted build did not end")
    return proc, err, time.monotonic() - sent


def assert_stopped_cleanly(path: Path, before: tuple[int, str], stopped_in: float, err: str) -> None:
    index = Path(f"{path}.ffidx")
    assert stopped_in < STOP_BOUND_S, f"took {stopped_in:.2f} s to stop\n{err}"
    assert folder(path) == [path.name, index.name], err
    assert fingerprint(index) == before, "the previous index was replaced"
    assert len(ff.open(path, rebuild="never", verify=True)) > 0


def test_ctrl_c_stops_open_and_keeps_the_previous_index(slow_file: Path):
    before = fingerprint(Path(f"{slow_file}.ffidx"))
    code = f"""
        import fusion_fast as ff
        ff.open({str(slow_file)!r}, rebuild="always", threads=1)
        print("finished")
    """
    proc, err, stopped_in = interrupt_build(child(code), signal.SIGINT)
    assert "KeyboardInterrupt" in err and proc.returncode != 0, err
    assert_stopped_cleanly(slow_file, before, stopped_in, err)


def test_ctrl_c_stops_the_index_command(slow_file: Path):
    before = fingerprint(Path(f"{slow_file}.ffidx"))
    argv = cli("index", "--force", "--threads", "1", str(slow_file))
    proc, err, stopped_in = interrupt_build(argv, signal.SIGINT)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err, err
    assert_stopped_cleanly(slow_file, before, stopped_in, err)


def test_sigterm_stops_the_index_command_and_cleans_up(slow_file: Path):
    before = fingerprint(Path(f"{slow_file}.ffidx"))
    argv = cli("index", "--force", "--threads", "1", str(slow_file))
    proc, err, stopped_in = interrupt_build(argv, signal.SIGTERM)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err, err
    assert_stopped_cleanly(slow_file, before, stopped_in, err)


def test_a_build_killed_mid_scan_leaves_nothing_after_the_next_build(slow_file: Path):
    index = Path(f"{slow_file}.ffidx")
    code = f"""
        import fusion_fast as ff
        ff.open({str(slow_file)!r}, rebuild="always", threads=1)
    """
    proc = subprocess.Popen(child(code), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for("the build started", lambda: holds_flock(proc.pid), proc)
    proc.kill()
    proc.communicate()
    index.unlink()
    assert ff.open(slow_file, threads=1).built
    assert folder(slow_file) == [slow_file.name, index.name]


def test_a_temporary_index_left_by_a_killed_build_is_removed_by_the_next_build(tmp_path: Path):
    path = write(tmp_path / "d.json", json.dumps([{"id": i} for i in range(100)]))
    # What a build killed while writing leaves: a temporary index named after its process id.
    stale = [tmp_path / ".d.json.ffidx.tmp-12345", tmp_path / f".d.json.ffidx.tmp-{os.getpid()}"]
    # Names that only look alike belong to someone else and stay.
    others = [
        tmp_path / ".d.json.ffidx.tmp-12345.keep",
        tmp_path / ".d.json.ffidx.tmp-",
        tmp_path / "d.json.ffidx.tmp-12345",
        tmp_path / ".e.json.ffidx.tmp-12345",
        tmp_path / ".xd.json.ffidx.tmp-12345",
    ]
    for p in stale + others:
        p.write_bytes(b"\0" * 4096)
    idx = ff.open(path)
    assert idx.built and len(idx) == 100
    assert folder(path) == sorted(["d.json", "d.json.ffidx", *(p.name for p in others)])


def test_only_the_index_is_left_beside_the_data(tmp_path: Path):
    good = write(tmp_path / "good" / "g.jsonl", '{"id": 1}\n{"id": 2}\n')
    assert ff.open(good).built
    assert ff.open(good, rebuild="always").built
    assert folder(good) == ["g.jsonl", "g.jsonl.ffidx"]

    bad = write(tmp_path / "bad" / "b.json", '[{"id": 1}, {"id": ]')
    with pytest.raises(ff.MalformedJSONError):
        ff.open(bad)
    assert folder(bad) == ["b.json"]

    cache = tmp_path / "indexes"
    assert ff.open(good, index_dir=cache, rebuild="always").built
    assert folder(good) == ["g.jsonl", "g.jsonl.ffidx"]
    assert [p.suffix for p in cache.iterdir()] == [".ffidx"]


def test_exactly_one_of_eight_waiting_openers_builds(tmp_path: Path):
    """Eight processes that all found no index wait on the build lock together: exactly one builds,
    the other seven map its index. The overlap is forced, not hoped for: this test holds the build lock
    (by the builders' own protocol) until all eight are blocked on it."""
    path = write(tmp_path / "many.jsonl", "".join(json.dumps({"id": i}) + "\n" for i in range(20000)))
    lock_path = tmp_path / ".many.jsonl.ffidx.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    assert os.fstat(fd).st_ino == lock_path.stat().st_ino
    code = f"""
        import fusion_fast as ff
        idx = ff.open({str(path)!r})
        print(int(idx.built), len(idx))
    """
    procs = [
        subprocess.Popen(child(code), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(8)
    ]
    try:
        inode = os.fstat(fd).st_ino
        for p in procs:
            wait_for("eight openers wait on the build lock", lambda: blocked_on(inode) == 8, p)
    finally:
        # Release as a builder does: the lock file goes first, so nobody keeps a lock on a removed file.
        lock_path.unlink()
        os.close(fd)
    results = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
    outs = [out.split() for out, _ in results]
    assert sum(int(o[0]) for o in outs) == 1, outs
    assert {int(o[1]) for o in outs} == {20000}
    assert folder(path) == ["many.jsonl", "many.jsonl.ffidx"]


def take_build_lock(lock_path: Path) -> int:
    """Takes the build lock as a builder does; returns the open, locked file descriptor."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    assert os.fstat(fd).st_ino == lock_path.stat().st_ino
    return fd


def test_a_waiter_woken_on_a_removed_lock_file_waits_for_the_current_one(tmp_path: Path):
    """A builder removes the lock file before it unlocks it, so a waiter may get the lock on a file
    that no longer has a name while another process holds the lock file that does: it must wait for
    that one, not build beside it."""
    path = write(tmp_path / "w.jsonl", '{"id": 1}\n')
    lock_path = tmp_path / ".w.jsonl.ffidx.lock"
    first = take_build_lock(lock_path)
    code = f"""
        import fusion_fast as ff
        print(int(ff.open({str(path)!r}).built))
    """
    proc = subprocess.Popen(child(code), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    held = [first]
    try:
        first_inode = os.fstat(first).st_ino
        wait_for("the opener waits on the build lock", lambda: blocked_on(first_inode) == 1, proc)
        # A second builder arrives after the first removed its lock file, and holds a new one.
        lock_path.unlink()
        second = take_build_lock(lock_path)
        held = [second]
        os.close(first)
        second_inode = os.fstat(second).st_ino
        wait_for("the opener waits on the current lock file", lambda: blocked_on(second_inode) == 1, proc)
        assert not Path(f"{path}.ffidx").exists()
    finally:
        lock_path.unlink(missing_ok=True)
        for fd in held:
            os.close(fd)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and out.split() == ["1"], err
    assert folder(path) == ["w.jsonl", "w.jsonl.ffidx"]


def test_ctrl_c_while_another_process_builds_ends_the_wait(tmp_path: Path):
    """An opener blocked on the build lock of another process's build stops waiting on Ctrl-C, and
    leaves that build (here: this test holding the lock) alone."""
    path = write(tmp_path / "c.jsonl", '{"id": 1}\n')
    lock_path = tmp_path / ".c.jsonl.ffidx.lock"
    fd = take_build_lock(lock_path)
    try:
        code = f"""
            import fusion_fast as ff
            ff.open({str(path)!r})
        """
        proc = subprocess.Popen(child(code), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        inode = os.fstat(fd).st_ino
        wait_for("the opener waits on the build lock", lambda: blocked_on(inode) == 1, proc)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("the opener went on waiting for the lock after Ctrl-C")
        assert time.monotonic() - sent < STOP_BOUND_S, err
        assert "KeyboardInterrupt" in err and "FusionFastIOError" not in err, err
        assert folder(path) == [lock_path.name, "c.jsonl"]
        assert os.fstat(fd).st_ino == lock_path.stat().st_ino
    finally:
        lock_path.unlink()
        os.close(fd)


def test_the_lock_file_older_versions_kept_is_removed_unless_in_use(tmp_path: Path):
    free = write(tmp_path / "free" / "f.json", "[1]")
    write(tmp_path / "free" / "f.json.ffidx.lock", "")
    assert ff.open(free).built
    assert folder(free) == ["f.json", "f.json.ffidx"]

    busy = write(tmp_path / "busy" / "b.json", "[1]")
    fd = take_build_lock(tmp_path / "busy" / "b.json.ffidx.lock")
    try:
        assert ff.open(busy).built
        assert folder(busy) == ["b.json", "b.json.ffidx", "b.json.ffidx.lock"]
    finally:
        os.close(fd)
