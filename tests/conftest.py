"""Shared fixtures. Data from ../shared (beside the repo root) is read in place and skipped when absent;
no test may write there (the test run fails if a file under it appears, vanishes or changes)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `root` with its size and modification time (nanoseconds)."""
    state: dict[str, tuple[int, int]] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            state[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns)
    return state


def tree_changes(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[str]:
    added = [f"written: {p}" for p in sorted(after.keys() - before.keys())]
    removed = [f"removed: {p}" for p in sorted(before.keys() - after.keys())]
    changed = [f"changed: {p}" for p in sorted(before.keys() & after.keys()) if before[p] != after[p]]
    return added + removed + changed


def pytest_sessionstart(session: pytest.Session) -> None:
    # Root can write into read-only folders, and CI runs as root: compare the tree instead of relying
    # on permissions to keep the shared data (and its users' indexes) untouched.
    session.config.stash[_SHARED_STATE] = tree_state(SHARED.parent) if SHARED.parent.is_dir() else {}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = session.config.stash.get(_SHARED_STATE, None)
    if before is None or not SHARED.parent.is_dir():
        return
    changes = tree_changes(before, tree_state(SHARED.parent))
    if changes:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        text = f"tests wrote into {SHARED.parent}, which must stay untouched:\n  " + "\n  ".join(changes[:20])
        if reporter is not None:
            reporter.write_line(text, red=True)
        else:
            print(text)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_SHARED_STATE = pytest.StashKey[dict[str, tuple[int, int]]]()


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Indexes of read-only files go to a per-test-session cache, never to the user's ~/.cache."""
    monkeypatch.setenv("FUSION_FAST_CACHE", str(tmp_path_factory.getbasetemp() / "ff-cache"))


def shared_dir(*parts: str) -> Path:
    """A folder under ../shared/data, or skip the test when it is not there."""
    path = SHARED.joinpath(*parts)
    if not path.is_dir():
        pytest.skip(f"{path} not available")
    return path


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0
