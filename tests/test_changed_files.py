"""Files that change under an open index: a data file cut short or rewritten in place while open must
raise `StaleIndexError` naming the file on every access path, never kill the process with SIGBUS; and
every view Python gets of an index is a view of the one mapping its open index holds.

Each shrink case runs in a child process, because the failure being guarded against is the process
dying of a signal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import fusion_fast as ff
from fusion_fast import _core
from fusion_fast.errors import FusionFastError, StaleIndexError

RECORDS = 3000


def records(tag: str = "", n: int = RECORDS) -> list[dict]:
    return [
        {"id": f"{tag}r{i}", "conversations": [{"from": "human", "value": "word " * (i % 7 + 3)}]}
        for i in range(n)
    ]


def write(path: Path, recs: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    else:
        path.write_text(json.dumps(recs, indent=1))
    return path


CHILD = textwrap.dedent(
    """
    import faulthandler, json, os, sys
    import fusion_fast as ff
    from fusion_fast.errors import StaleIndexError

    path, action, cut, target, late_faulthandler = sys.argv[1:6]
    idx = ff.open(path)
    n = len(idx)
    if late_faulthandler == "1":
        faulthandler.enable()  # installed after the index was opened: it must not take the fault
    if action == "export":
        from fusion_fast.mixture import Mixture
        mixture = Mixture([path])
    if action in ("pack", "loader"):
        from fusion_fast.torch import FusionDataset
        dataset = FusionDataset(path)
        assert dataset._pack_positions([0]) is not None  # indexes opened now (forked workers share them)
    victim = idx.index_path if target == "index" else path
    size = os.path.getsize(victim)
    os.truncate(victim, {"page": 4096, "half": size // 2, "zero": 0}[cut])

    def act():
        if action == "get":
            return idx[n - 1]
        if action == "get_after_many":
            for _ in range(4096):
                idx[0]
            return idx[n - 1]
        if action == "get_many":
            return idx.get_many([0, n - 1])
        if action == "iterate":
            return sum(1 for _ in idx)
        if action == "raw":
            return bytes(idx.raw(n - 1))
        if action == "lengths":
            return int(idx.lengths.sum())
        if action == "columns_then_get":
            total = int(idx.columns["offset"].sum())  # may read zeros: it must not crash
            return idx[n - 1], total
        if action == "export":
            out = os.path.join(os.path.dirname(path), "export.jsonl")
            mixture.export_jsonl(out)
            return os.path.exists(out)
        if action == "pack":
            return dataset._pack_positions([0, n - 1])
        if action == "loader":
            from torch.utils.data import DataLoader
            loader = DataLoader(dataset, batch_size=n // 2, num_workers=1)
            return sum(len(batch["id"]) for batch in loader)
        raise AssertionError(action)

    try:
        act()
    except StaleIndexError as e:
        print(json.dumps({"path": e.path, "message": str(e)}))
        sys.exit(0)
    except Exception as e:
        # A worker's error arrives re-raised by the DataLoader: report its class and text.
        print(json.dumps({"other": type(e).__name__, "message": str(e)}))
        sys.exit(0)
    print(json.dumps({"none": True}))
    """
)


def run_child(tmp_path: Path, suffix: str, action: str, cut: str, target: str = "data", late: bool = False):
    path = write(tmp_path / f"d{suffix}", records())
    ff.open(path)  # the index is built here: the child only opens it
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), action, cut, target, "1" if late else "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode >= 0 and done.returncode != 128 + signal.SIGBUS, (
        f"the child died of signal {-done.returncode or done.returncode - 128}: {done.stderr[-2000:]}"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return path, json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
@pytest.mark.parametrize("cut", ["page", "half", "zero"])
@pytest.mark.parametrize("action", ["get", "get_many", "iterate", "raw", "export"])
def test_a_data_file_cut_short_while_open_is_a_stale_index_error_naming_it(tmp_path, suffix, cut, action):
    path, result = run_child(tmp_path, suffix, action, cut)
    assert result.get("path") == str(path), result
    assert not (tmp_path / "export.jsonl").exists()


@pytest.mark.parametrize("action", ["get_many", "iterate", "raw", "get_after_many"])
def test_the_guard_outlives_a_faulthandler_enabled_after_opening(tmp_path, action):
    """Batch calls put the guard back on top of a handler installed after opening (`idx[i]` alone
    does so only every few thousand calls: a `sigaction` per call would cost a tenth of it)."""
    path, result = run_child(tmp_path, ".jsonl", action, "page", late=True)
    assert result.get("path") == str(path), result


@pytest.mark.parametrize("action", ["lengths", "columns_then_get", "get"])
def test_an_index_file_cut_short_while_open_is_a_stale_index_error_naming_it(tmp_path, action):
    path, result = run_child(tmp_path, ".jsonl", action, "page", target="index")
    assert result.get("path") == f"{path}.ffidx", result


@pytest.mark.parametrize("action", ["pack", "loader"])
def test_workers_reading_a_data_file_cut_short_raise_a_stale_index_error(tmp_path, action):
    pytest.importorskip("torch")
    path, result = run_child(tmp_path, ".jsonl", action, "half")
    if result.get("path") is not None:
        assert result["path"] == str(path), result
    else:  # re-raised by the DataLoader from its worker as the same class, with the worker's message
        assert "StaleIndexError" in result["message"] and str(path) in result["message"], result


def test_a_child_with_faulthandler_from_the_start_survives_too(tmp_path):
    path = write(tmp_path / "d.jsonl", records())
    ff.open(path)
    done = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", CHILD, str(path), "get", "zero", "data", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]).get("path") == str(path)


def test_a_raw_view_kept_while_the_file_shrinks_reads_zeros_and_never_crashes(tmp_path):
    path = write(tmp_path / "d.jsonl", records())
    ff.open(path)
    script = textwrap.dedent(
        """
        import os, sys
        import fusion_fast as ff
        idx = ff.open(sys.argv[1])
        view = idx.raw(len(idx) - 1)
        os.truncate(sys.argv[1], 0)
        print(set(bytes(view)))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "{0}"


def test_a_file_rewritten_in_place_with_other_bytes_is_a_stale_index_error_for_raw(tmp_path):
    path = write(tmp_path / "d.jsonl", records())
    idx = ff.open(path)
    assert json.loads(bytes(idx.raw(5))) == records()[5]
    text = path.read_bytes()
    os.utime(path, ns=(0, 10**18))  # a rewrite that keeps the size: only the time tells
    with pytest.raises(StaleIndexError) as raised:
        idx.raw(5)
    assert raised.value.path == str(path)
    assert path.read_bytes() == text


def test_columns_and_raw_keep_describing_the_file_opened_after_a_rebuild_by_rename(tmp_path):
    """A data file replaced by rename and reindexed (the index too is replaced by rename) leaves an
    index opened before it on the old files: its columns and raw bytes must still be the old file's,
    never the new index file read with the old column table or the new data at the old offsets."""
    path = write(tmp_path / "d.jsonl", records("old", 50))
    old_lines = path.read_bytes().splitlines(keepends=True)
    idx = ff.open(path)
    replacement = write(tmp_path / "new.jsonl", records("a much longer new identifier ", 7))
    os.replace(replacement, path)
    assert len(ff.open(path)) == 7  # rebuilt, and the new index renamed over the old one
    lengths = np.array([len(line) - 1 for line in old_lines])  # each line less its newline
    offsets = np.cumsum([0] + [len(line) for line in old_lines[:-1]])
    assert idx.columns["length"].tolist() == lengths.tolist()
    assert idx.columns["offset"].tolist() == offsets.tolist()
    assert json.loads(bytes(idx.raw(49))) == records("old", 50)[49]
    assert idx[49]["id"] == "oldr49"


def test_views_keep_the_mapping_alive_after_the_index_is_dropped(tmp_path):
    path = write(tmp_path / "d.jsonl", records("", 10))
    idx = ff.open(path)
    view = idx.raw(3)
    column = idx.columns["length"]
    expected = (bytes(view), column.tolist())
    del idx
    import gc

    gc.collect()
    assert (bytes(view), column.tolist()) == expected
    assert view.readonly and not column.flags.writeable


def test_a_panic_inside_the_core_is_a_fusion_fast_error_not_a_base_exception():
    with pytest.raises(
        FusionFastError, match="internal error in _panic_for_tests: a deliberate panic"
    ) as raised:
        _core._panic_for_tests()
    assert isinstance(raised.value, Exception)
