"""Bad input gets a clear error (file, byte offset, line, column, record, what was expected) and never a
crash, hang or half-written index. Stale, corrupt and foreign indexes are detected on open."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fusion_fast as ff

from .conftest import is_root, write


def malformed(tmp_path: Path, name: str, data: bytes | str) -> ff.MalformedJSONError:
    path = write(tmp_path / name, data)
    with pytest.raises(ff.MalformedJSONError) as info:
        ff.open(path)
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, ff.FusionFastError)
    assert err.path == str(path) and str(path) in str(err)
    assert not Path(f"{path}.ffidx").exists(), "no index may be left behind"
    assert not [p for p in path.parent.iterdir() if ".tmp-" in p.name]
    return err


def test_truncated_array_names_line_column_record(tmp_path):
    err = malformed(tmp_path, "t.json", '[\n  {"a": 1},\n  {"b": "unterminated')
    assert (err.line, err.record) == (3, 1)
    assert err.offset == len('[\n  {"a": 1},\n  {"b": "unterminated')
    assert "string" in err.message


def test_garbage_after_the_array(tmp_path):
    err = malformed(tmp_path, "g.json", '[{"a": 1}]\n  x')
    assert (err.line, err.column, err.offset) == (2, 3, 13)
    assert "after the end of the array" in err.message


def test_invalid_utf8(tmp_path):
    err = malformed(tmp_path, "u.json", b'[{"a": "ok"}, {"a": "caf\xc3"}]')
    assert err.record == 1 and err.offset == 24 and "UTF-8" in err.message


def test_empty_file_and_whitespace_only(tmp_path):
    assert "empty" in malformed(tmp_path, "e.json", b"").message
    assert "empty" in malformed(tmp_path, "w.json", b" \n\t").message
    assert len(ff.open(write(tmp_path / "e.jsonl", b""))) == 0


def test_empty_array_is_fine(tmp_path):
    idx = ff.open(write(tmp_path / "a.json", " [ ] \n"))
    assert len(idx) == 0 and idx.lengths.size == 0


def test_top_level_object_suggests_jsonl(tmp_path):
    err = malformed(tmp_path, "o.json", '{"id": 1}\n{"id": 2}\n')
    assert ".jsonl" in err.message and err.offset == 0


def test_records_that_are_not_objects_are_indexed_and_flagged(tmp_path):
    idx = ff.open(write(tmp_path / "n.json", '[1, "two", null, [3]]'))
    assert [idx[i] for i in range(4)] == [1, "two", None, [3]]
    assert all(idx.columns["flags"] & 16)


@pytest.mark.parametrize(
    ("doc", "record", "expected"),
    [
        ('[{"a": NaN}]', 0, "NaN"),
        ('[{"a": 1},]', 1, "trailing"),
        ('[{"a": 1} // c\n]', 1, "expected ',' or ']' after record 0"),
        ('[{"a": "x\ty"}]', 0, "control character"),
        ('[{"a": 01}]', 0, "expected ',' or '}'"),
        ("[{'a': 1}]", 0, "key"),
    ],
)
def test_rfc8259_violations(tmp_path, doc, record, expected):
    err = malformed(tmp_path, "v.json", doc)
    assert err.record == record and expected in err.message


def test_jsonl_errors_count_records_not_lines(tmp_path):
    err = malformed(tmp_path, "l.jsonl", '{"a": 1}\n\n{"a": 2}\n{"a": \n')
    assert (err.line, err.record) == (4, 2)
    assert "one line" in err.message


def test_huge_single_record(tmp_path):
    big = "w " * (40 << 20)  # 80 MiB of text in one string
    path = tmp_path / "h.json"
    with open(path, "w") as f:
        f.write('[{"id": 1}, {"conversations": [{"from": "gpt", "value": "')
        f.write(big)
        f.write('"}]}, {"id": 3}]')
    idx = ff.open(path)
    assert len(idx) == 3 and idx.columns["length"][1] > 64 << 20
    assert idx.columns["words"][1] == 40 << 20
    assert idx[2] == {"id": 3}


def test_file_changed_after_indexing_is_rebuilt(tmp_path):
    path = write(tmp_path / "c.json", "[1, 2, 3]")
    assert len(ff.open(path)) == 3
    st = os.stat(path)
    path.write_text("[1, 2, 4]")  # same size; restore the mtime so only the content differs
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(ff.StaleIndexError):
        ff.open(path, rebuild="never")
    idx = ff.open(path)
    assert idx.built and idx[2] == 4
    write(path, "[1, 2, 3, 5]")
    assert ff.open(path)[3] == 5


@pytest.mark.parametrize("damage", ["header", "column", "truncate", "version", "garbage"])
def test_corrupt_index_is_detected_and_rebuilt(tmp_path, damage):
    path = write(tmp_path / "k.json", json.dumps([{"id": i, "conversations": []} for i in range(50)]))
    index = Path(ff.open(path).index_path)
    raw = bytearray(index.read_bytes())
    if damage == "header":
        raw[20] ^= 0xFF
    elif damage == "column":
        raw[-3] ^= 0xFF
    elif damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "version":
        raw[8] = 99
    else:
        raw = bytearray(b"not an index at all")
    index.write_bytes(bytes(raw))
    with pytest.raises(ff.CorruptIndexError) as info:
        ff.open(path, rebuild="never")
    assert str(index) in str(info.value)
    if damage == "version":
        assert "version 99" in str(info.value)
    idx = ff.open(path)
    assert idx.built and len(idx) == 50 and idx[49]["id"] == 49


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder no one can write to: chmod for normal users, a read-only bind mount for root."""
    src = tmp_path / "ro-src"
    src.mkdir()
    write(src / "r.json", "[1]")
    if not is_root():
        os.chmod(src, 0o555)
        yield src
        os.chmod(src, 0o755)
        return
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(src), str(ro)], capture_output=True).returncode == 0
    if (
        not mounted
        or subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], capture_output=True).returncode
    ):
        if mounted:
            subprocess.run(["umount", str(ro)])
        pytest.skip("cannot make a read-only folder here (no bind mounts)")
    try:
        yield ro
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_unwritable_data_folder_uses_the_cache(read_only_dir, tmp_path, monkeypatch):
    path = read_only_dir / "r.json"
    cache = tmp_path / "cache"
    monkeypatch.setenv("FUSION_FAST_CACHE", str(cache))
    idx = ff.open(path)
    assert idx.built and idx.index_path.startswith(str(cache)) and idx[0] == 1
    assert not ff.open(path).built
    assert not list(read_only_dir.glob("*.ffidx*"))


@pytest.mark.parametrize("chunk", [None, 3])
def test_a_json_lines_record_split_over_two_lines_says_records_must_fit_on_one(tmp_path, chunk):
    from fusion_fast import _core

    data = b'{"id": 1}\n{"id": 2,\n "conversations": []}\n'
    with pytest.raises(ValueError) as info:
        _core.scan_bytes(data, "jsonl", **({"sequential": True} if chunk is None else {"chunk_size": chunk}))
    assert "(a JSON Lines record must fit on one line)" in str(info.value)
    err = malformed(tmp_path, "split.jsonl", data)
    assert "record 1" in str(err) and "must fit on one line" in str(err)


def run_bound_by_permissions(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Runs `script` in a Python child that file permissions bind. A normal user is bound already; root
    is bound once CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH leave its capability bounding set before the
    exec (prctl PR_CAPBSET_DROP; needs CAP_SETPCAP, which root has in a default container). No mount
    is needed, so this runs where bind mounts are refused."""

    def drop_overrides() -> None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")

    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
        preexec_fn=drop_overrides if is_root() else None,
    )


def test_read_only_data_folder_falls_back_to_the_cache_without_mounts(tmp_path):
    folder = tmp_path / "ro"
    write(folder / "r.json", '[{"id": 1}, {"id": 2}]')
    folder.chmod(0o555)
    cache = tmp_path / "cache"
    script = textwrap.dedent(
        f"""
        import json, fusion_fast as ff
        try:
            open({str(folder / "probe")!r}, "w")
            writable = True
        except PermissionError:
            writable = False
        idx = ff.open({str(folder / "r.json")!r})
        print(json.dumps([writable, idx.built, idx.index_path, idx[1]]))
        """
    )
    try:
        runs = [run_bound_by_permissions(script, {"FUSION_FAST_CACHE": str(cache)}) for _ in range(2)]
    finally:
        folder.chmod(0o755)
    for run in runs:
        assert run.returncode == 0, run.stderr
    (writable, built, index_path, record), second = (json.loads(r.stdout) for r in runs)
    assert not writable, "the child could still write into the folder: the test proves nothing"
    assert built and index_path.startswith(str(cache)) and record == {"id": 2}
    assert second == [False, False, index_path, {"id": 2}]  # the cached index is found and used again
    assert sorted(p.name for p in folder.iterdir()) == ["r.json"]


def test_the_shared_data_guard_notices_every_kind_of_change(tmp_path):
    from .conftest import tree_changes, tree_state

    write(tmp_path / "a" / "x.json", "[]")
    write(tmp_path / "y.jsonl", "")
    before = tree_state(tmp_path)
    assert tree_changes(before, tree_state(tmp_path)) == []
    write(tmp_path / "a" / "x.json.ffidx", "index")
    os.utime(tmp_path / "y.jsonl", ns=(0, 10**9))
    (tmp_path / "a" / "x.json").unlink()
    assert tree_changes(before, tree_state(tmp_path)) == [
        "written: a/x.json.ffidx",
        "removed: a/x.json",
        "changed: a",
        "changed: y.jsonl",
    ]
