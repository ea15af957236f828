"""Exclude files: record numbers to skip, per data file, written by `fusion-fast check --write-exclude`
and named by a stage YAML entry's `exclude:` key.

Format (JSON): `{"fusion_fast_exclude": 1, "datasets": {"<absolute data file path>": [3, 17, ...]}}`.
A dataset is matched by its absolute path, else by its file name alone (so a playground can move).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .errors import MixtureError

FORMAT_KEY = "fusion_fast_exclude"
FORMAT_VERSION = 1


def write_exclude(
    path: str | os.PathLike[str], records: Mapping[str | os.PathLike[str], Sequence[int]]
) -> None:
    """Write `{data file: record numbers}` atomically."""
    doc = {
        FORMAT_KEY: FORMAT_VERSION,
        "datasets": {os.path.abspath(k): sorted({int(r) for r in v}) for k, v in records.items()},
    }
    from ._outputs import rename_target

    target = rename_target(path)
    if target is None:  # a pipe or a device: written into, not replaced
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
        return
    tmp = f"{target}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def read_exclude(path: str | os.PathLike[str], data_file: str | os.PathLike[str]) -> np.ndarray:
    """Sorted unique int64 record numbers to skip in `data_file` (empty when it is not listed)."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise MixtureError(f"cannot read exclude file {path}: {e}", path=os.fspath(path)) from None
    if (
        not isinstance(doc, dict)
        or doc.get(FORMAT_KEY) != FORMAT_VERSION
        or not isinstance(doc.get("datasets"), dict)
    ):
        raise MixtureError(
            f"{path}: not a fusion-fast exclude file (expected {{'{FORMAT_KEY}': 1, 'datasets': {{...}}}})",
            path=os.fspath(path),
        )
    datasets: dict[str, list[int]] = doc["datasets"]
    key = os.path.abspath(data_file)
    numbers = datasets.get(key)
    if numbers is None:
        name = Path(key).name
        matches = [v for k, v in datasets.items() if Path(k).name == name]
        numbers = matches[0] if len(matches) == 1 else []
    try:
        arr = np.asarray(numbers, dtype=np.int64)
    except (TypeError, ValueError):
        raise MixtureError(
            f"{path}: record numbers for {key} must be integers", path=os.fspath(path)
        ) from None
    if arr.ndim != 1 or (arr < 0).any():
        raise MixtureError(f"{path}: record numbers for {key} must be non-negative integers")
    return np.unique(arr)
