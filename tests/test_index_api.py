"""The Python API of one index: records, columns, FUSION's lengths, pickling, where indexes live."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

import fusion_fast as ff
from fusion_fast import synth

from .conftest import write
from .fusion_reference import fusion_lengths, fusion_modality_lengths

RECORDS = [
    {
        "id": "a",
        "image": "x/1.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"},
            {"from": "gpt", "value": "A cat\u00a0on a\u3000mat."},
        ],
    },
    {"id": "b", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "  "}]},
    {"id": "c", "image": ["1.jpg", "2.jpg"], "conversations": [{"from": "human", "value": "a\u001cb"}]},
    {"id": "d", "image": None, "video": "v.mp4", "conversations": []},
    {"id": "e", "conversations": [{"from": "human", "value": 5}]},
    {"id": "f"},
    [1, 2, 3],
]


@pytest.fixture
def data_file(tmp_path):
    return write(tmp_path / "d.json", json.dumps(RECORDS, indent=2))


def test_records_round_trip_and_negative_indices(data_file):
    idx = ff.open(data_file)
    assert idx.built and len(idx) == len(RECORDS)
    assert [idx[i] for i in range(len(idx))] == RECORDS
    assert idx[-1] == RECORDS[-1] and idx[-len(RECORDS)] == RECORDS[0]
    with pytest.raises(IndexError):
        idx[len(RECORDS)]
    with pytest.raises(IndexError):
        idx[-len(RECORDS) - 1]
    assert idx[1:3] == RECORDS[1:3]
    assert idx.get_many([3, 0, -1]) == [RECORDS[3], RECORDS[0], RECORDS[-1]]
    assert idx.get_many(np.array([2, 2])) == [RECORDS[2]] * 2
    assert list(idx) == RECORDS
    assert json.loads(bytes(idx.raw(2))) == RECORDS[2]


def test_short_strings_that_differ_in_one_byte_decode_apart(tmp_path):
    # Keys and values of up to 16 bytes are cached by their packed bytes: strings of every length that
    # differ in a single position (first, middle, last) or only in length must never be confused.
    strings = [""]
    for n in range(1, 18):
        base = "abcdefghijklmnopq"[:n]
        strings.append(base)
        for pos in {0, n // 2, n - 1, min(3, n - 1), max(n - 4, 0), max(n - 8, 0)}:
            strings.append(base[:pos] + "Z" + base[pos + 1 :])
        strings.append(base[:-1] + "é")
    records = [{s: s, "v": [s, s]} for s in strings]
    path = tmp_path / "short.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n", encoding="utf-8")
    idx = ff.open(path)
    for _ in range(2):  # the second pass reads them from the cache
        assert [idx[i] for i in range(len(idx))] == records
        assert idx.get_many(range(len(idx))[::-1]) == records[::-1]


def test_metadata_columns(data_file):
    idx = ff.open(data_file)
    c = idx.columns
    assert c["images"].tolist() == [1, 0, 2, 0, 0, 0, 0]
    assert c["turns"].tolist() == [2, 2, 1, 0, 1, 0, 0]
    assert c["words"].tolist() == [9, 1, 2, 0, 0, 0, 0]
    flags = c["flags"]
    assert (flags & 1).astype(bool).tolist() == [True, False, True, True, False, False, False]
    assert (flags & 2).tolist() == [0, 0, 0, 2, 0, 0, 0]
    assert flags[4] & 8 and flags[5] & 4 and flags[6] & 16
    ok = RECORDS[:4]
    lengths, modality = fusion_lengths(ok), fusion_modality_lengths(ok)
    assert idx.lengths[:4].tolist() == lengths
    assert idx.modality_lengths[:4].tolist() == modality
    assert idx.lengths.dtype == np.int64


def test_bad_image_flag(tmp_path):
    """BAD_IMAGE: `image` is not a path, a list of paths or null (then it still counts images)."""
    records = [
        {"image": "a.png"},
        {"image": ["a.png", "b.png"]},
        {"image": None},
        {"image": []},
        {"image": 7},
        {"image": {"path": "a.png"}},
        {"image": ["a.png", 3]},
        {"image": [["a.png"]]},
        {"image": [None]},
    ]
    idx = ff.open(write(tmp_path / "img.json", json.dumps(records)))
    bad = (idx.columns["flags"] & ff.index.BAD_IMAGE).astype(bool).tolist()
    assert bad == [False, False, False, False, True, True, True, True, True]
    assert idx.columns["images"].tolist() == [1, 2, 0, 0, 0, 0, 2, 1, 1]


def test_columns_are_zero_copy_views_of_the_index_file(data_file):
    idx = ff.open(data_file)
    col = idx.columns["offset"]
    assert not col.flags.writeable and not col.flags.owndata
    assert col.ctypes.data % 64 == 0  # 64-byte aligned in the mapped file
    raw = open(idx.index_path, "rb").read()
    start = raw.find(col.tobytes())
    assert start > 0 and start % 64 == 0


def test_to_polars(data_file):
    df = ff.open(data_file).to_polars()
    assert df.height == len(RECORDS)
    assert df["has_video"].to_list() == [False, False, False, True, False, False, False]
    assert df["conversations_ok"].to_list() == [True, True, True, True, False, False, False]


def test_pickle_reopens_without_copying_records(data_file):
    idx = ff.open(data_file)
    blob = pickle.dumps(idx)
    assert len(blob) < 500
    again = pickle.loads(blob)
    assert not again.built and again[0] == RECORDS[0]


def test_generated_file_matches_json_load_and_python_split(tmp_path):
    for name in ("g.json", "g.jsonl"):
        path = tmp_path / name
        synth.write_file(path, records=3000, seed=3, indent=None if name.endswith("l") else 2)
        ref = (
            [json.loads(line) for line in open(path, encoding="utf-8")]
            if name.endswith("l")
            else json.load(open(path, encoding="utf-8"))
        )
        idx = ff.open(path, threads=2)
        assert len(idx) == len(ref)
        assert idx.get_many(range(len(ref))) == ref
        lengths, modality = fusion_lengths(ref), fusion_modality_lengths(ref)
        assert idx.lengths.tolist() == lengths
        assert idx.modality_lengths.tolist() == modality


def test_rebuild_policies(tmp_path):
    path = write(tmp_path / "p.jsonl", '{"a": 1}\n{"a": 2}\n')
    with pytest.raises(ff.IndexMissingError):
        ff.open(path, rebuild="never")
    assert ff.open(path).built
    assert not ff.open(path).built
    assert not ff.open(path, rebuild="never").built
    assert ff.open(path, rebuild="always").built
    with pytest.raises(ValueError):
        ff.open(path, rebuild="sometimes")  # type: ignore[arg-type]


def test_index_dir_and_sidecar_location(tmp_path):
    path = write(tmp_path / "data" / "x.json", "[1, 2]")
    assert ff.open(path).index_path == f"{path}.ffidx"
    other = tmp_path / "idx"
    idx = ff.open(path, index_dir=other)
    assert idx.index_path.startswith(str(other)) and idx.built
    assert ff.open(path, index_dir=other, rebuild="never")[1] == 2


def test_build_releases_the_gil_and_reports_progress(tmp_path):
    """While one thread builds, another keeps running Python and sees the byte counter move."""
    import threading

    from fusion_fast import _core

    path = tmp_path / "big.jsonl"
    synth.write_file(path, size=24 << 20, seed=5, indent=None)
    progress = _core.Progress()
    done = threading.Event()
    seen: set[int] = set()

    def build() -> None:
        ff.open(path, threads=1, progress=progress)
        done.set()

    t = threading.Thread(target=build)
    t.start()
    while not done.is_set():
        seen.add(progress.value)
    t.join()
    size = path.stat().st_size
    # The main thread ran Python while the build was under way, at several points of it (a build that
    # held the GIL would leave it only the values before the start and after the end): a state, not a
    # spin count that a loaded machine may miss.
    during = sorted(v for v in seen if 0 < v < size)
    assert len(during) >= 2, "the main thread did not run while the index was built"
    assert progress.value == size
