"""JSONTestSuite and the real annotation files in ../shared/data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fusion_fast as ff

from .conftest import shared_dir


def suite_files(prefix: str) -> list[Path]:
    folder = shared_dir("JSONTestSuite", "test_parsing")
    return sorted(p for p in folder.iterdir() if p.name.startswith(prefix) and p.suffix == ".json")


def test_every_n_file_is_rejected(tmp_path):
    files = suite_files("n_")
    assert len(files) > 150
    accepted = []
    for path in files:
        try:
            ff.open(path, index_dir=tmp_path)
            accepted.append(path.name)
        except ff.FusionFastError as e:
            assert e.path == str(path) and e.line is not None and e.message
    assert accepted == []


def test_every_y_array_file_matches_python(tmp_path):
    checked = 0
    for path in suite_files("y_"):
        value = json.loads(path.read_bytes())
        if not isinstance(value, list):
            with pytest.raises(ff.MalformedJSONError, match="not an array"):
                ff.open(path, index_dir=tmp_path)
            continue
        idx = ff.open(path, index_dir=tmp_path)
        assert [idx[i] for i in range(len(idx))] == value, path.name
        checked += 1
    assert checked > 60


def test_i_files_never_crash(tmp_path):
    """Implementation-defined inputs: either accepted with records equal to Python's, or a located error."""
    files = suite_files("i_")
    assert len(files) > 20
    for path in files:
        try:
            idx = ff.open(path, index_dir=tmp_path)
        except ff.FusionFastError as e:
            assert e.path == str(path) and e.message
            continue
        try:
            value = json.loads(path.read_bytes())
        except (ValueError, RecursionError):
            continue  # implementation-defined: accepting what Python rejects is allowed here
        assert [idx[i] for i in range(len(idx))] == value, path.name


REAL_JSON_LOADERS = {
    ".json": lambda p: json.load(open(p, encoding="utf-8")),
    ".jsonl": lambda p: [json.loads(line) for line in open(p, encoding="utf-8") if line.strip()],
}


def test_real_files_index_and_round_trip(tmp_path):
    files = sorted(p for p in shared_dir("real").iterdir() if p.suffix in REAL_JSON_LOADERS)
    assert len(files) >= 9
    for path in files:
        ref = REAL_JSON_LOADERS[path.suffix](path)
        idx = ff.open(path, index_dir=tmp_path, threads=2)
        assert len(idx) == len(ref), path.name
        assert idx.get_many(range(len(ref))) == ref, path.name
        has_conv = [isinstance(r, dict) and isinstance(r.get("conversations"), list) for r in ref]
        words = [
            sum(len(t["value"].split()) for t in r["conversations"]) if ok else 0
            for r, ok in zip(ref, has_conv, strict=True)
        ]
        assert idx.columns["words"].tolist() == words, path.name
        assert idx.has_image.tolist() == [isinstance(r, dict) and "image" in r for r in ref], path.name


def shipped_records(paths: list[Path], index_dir: Path, *, tape: bool) -> list[Any]:
    """The records of `paths` (JSON arrays of objects) as a DataLoader worker ships them and the main
    process decodes them: packed as their bytes (or parsed into tapes), then built in Rust into Python
    objects."""
    from fusion_fast import _core

    indexes = [ff.open(p, index_dir=index_dir) for p in paths]
    sources = _core.ItemSources([ix._core for ix in indexes], [p.name for p in paths], [""] * len(paths))
    datasets = np.repeat(np.arange(len(paths), dtype="<i8"), [len(ix) for ix in indexes]).tobytes()
    numbers = np.concatenate([np.arange(len(ix), dtype="<i8") for ix in indexes]).tobytes()
    items = sources.pack(datasets, numbers, tape=tape).decode()
    for item in items:
        del item["_source"]
    return items


@pytest.mark.parametrize("tape", [False, True], ids=["json", "tape"])
def test_every_accepted_value_ships_to_the_main_process_as_python_reads_it(tmp_path, tape):
    """Each value of every suite file both accept (y_ and i_: escapes, number forms, lone surrogate
    escapes, unicode), in its original text wrapped as a record's member, packed and
    decoded equals `json.loads` (string equality includes CPython's kind: a `str` built with a wider
    kind than its characters need compares unequal)."""
    paths, expected = [], []
    for path in suite_files("y_") + suite_files("i_"):
        try:
            whole = json.loads(path.read_bytes())
        except (ValueError, RecursionError):
            continue  # an i_ file Python rejects
        if not isinstance(whole, list) or not whole:
            continue  # not an array of records (test_every_y_array_file_matches_python covers those)
        try:
            idx = ff.open(path, index_dir=tmp_path)
        except ff.FusionFastError:
            assert path.name.startswith("i_")
            continue
        wrapped = tmp_path / f"wrapped_{path.name}"
        members = (b'{"v": ' + bytes(idx.raw(i)) + b"}" for i in range(len(idx)))
        wrapped.write_bytes(b"[" + b",".join(members) + b"]")
        paths.append(wrapped)
        expected += [{"v": v} for v in whole]
    assert len(paths) > 60
    shipped = shipped_records(paths, tmp_path, tape=tape)
    assert shipped == expected
    assert {"v": "\udada"} in shipped  # a lone surrogate escape (i_string_1st_surrogate_but_2nd_missing)


@pytest.mark.parametrize("tape", [False, True], ids=["json", "tape"])
def test_real_records_ship_to_the_main_process_as_python_reads_them(tmp_path, tape):
    files = sorted(p for p in shared_dir("real").iterdir() if p.suffix == ".json")
    refs = [REAL_JSON_LOADERS[p.suffix](p) for p in files]
    arrays_of_records = [
        (p, ref) for p, ref in zip(files, refs, strict=True) if all(isinstance(r, dict) for r in ref)
    ]
    assert len(arrays_of_records) >= 5
    shipped = shipped_records([p for p, _ in arrays_of_records], tmp_path, tape=tape)
    assert shipped == [r for _, ref in arrays_of_records for r in ref]
