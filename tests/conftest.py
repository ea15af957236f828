"""Shared fixtures. Data from ../shared (beside the repo root) is read in place and skipped when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"


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
