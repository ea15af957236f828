"""Finding the dataset and record of mixture positions (`ship::locate`, through `_core.Locator`, used by
`Mixture.locate`, `Mixture[i]` and the DataLoader workers' `pack_positions`), checked against numpy's
`searchsorted` and `bisect` over the dataset starts, edges and out-of-range positions included."""

from __future__ import annotations

import bisect
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusion_fast import Mixture
from fusion_fast._core import Locator

INT64 = (-(2**63), 2**63 - 1)


def offsets_of(sizes: list[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)


def oracle(sizes: list[int], records: np.ndarray, position: int) -> tuple[int, int] | None:
    """(dataset, record number) of `position` by numpy and by bisect (which must agree), or None."""
    n = len(records)
    j = position + n if position < 0 else position
    if not 0 <= j < n:
        return None
    offsets = offsets_of(sizes)
    by_numpy = int(np.searchsorted(offsets, j, side="right")) - 1
    by_bisect = bisect.bisect_right(offsets[:-1].tolist(), j) - 1
    assert by_numpy == by_bisect
    return by_numpy, int(records[j])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=8), st.data())
def test_locator_agrees_with_searchsorted_and_bisect(sizes, data):
    n = sum(sizes)
    records = np.array(data.draw(st.lists(st.integers(0, 2**40), min_size=n, max_size=n)), dtype=np.int64)
    locator = Locator(offsets_of(sizes), records)
    assert len(locator) == n
    starts = offsets_of(sizes).tolist()
    edges = [0, n - 1, n, n + 1, -1, -n, -n - 1, -n - 2, *INT64, *starts, *(s - 1 for s in starts)]
    positions = data.draw(st.lists(st.integers(-n - 3, n + 3) | st.sampled_from(edges), max_size=24))
    want = [oracle(sizes, records, p) for p in positions]
    assert [locator.locate_one(p) for p in positions] == want

    datasets = np.full(len(positions), -7, dtype=np.int64)
    numbers = np.full(len(positions), -7, dtype=np.int64)
    first_bad = next((k for k, w in enumerate(want) if w is None), None)
    assert locator.locate_into(np.array(positions, dtype=np.int64), datasets, numbers) == first_bad
    done = len(positions) if first_bad is None else first_bad
    assert list(zip(datasets.tolist(), numbers.tolist(), strict=True))[:done] == want[:done]


@pytest.mark.parametrize("position", [2**63, -(2**63) - 1, 10**30, -(10**30)])
def test_positions_beyond_int64_are_out_of_range(position):
    assert Locator(offsets_of([2, 3]), np.arange(5, dtype=np.int64)).locate_one(position) is None


@pytest.mark.parametrize(
    ("offsets", "records"),
    [
        ([1, 3], 3),  # does not start at 0
        ([0, 2, 1, 3], 3),  # falls
        ([0, 2], 3),  # does not end at the record count
        ([], 0),
    ],
)
def test_a_locator_refuses_offsets_that_do_not_rise_from_zero_to_the_record_count(offsets, records):
    with pytest.raises(ValueError, match="offsets must rise from 0 to the number of records"):
        Locator(np.array(offsets, dtype=np.int64), np.zeros(records, dtype=np.int64))


def test_locate_into_refuses_arrays_it_cannot_fill():
    locator = Locator(offsets_of([2, 3]), np.arange(5, dtype=np.int64))
    positions = np.arange(4, dtype=np.int64)
    with pytest.raises(ValueError, match="same length"):
        locator.locate_into(positions, np.empty(4, np.int64), np.empty(3, np.int64))
    with pytest.raises(ValueError, match="must not overlap"):
        locator.locate_into(positions, positions, np.empty(4, np.int64))
    out = np.empty(8, np.int64)
    with pytest.raises(ValueError, match="contiguous"):
        locator.locate_into(positions, out[::2], np.empty(4, np.int64))
    frozen = np.empty(4, np.int64)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        locator.locate_into(positions, frozen, np.empty(4, np.int64))


@pytest.fixture
def mixture(tmp_path: Path) -> Mixture:
    """Three datasets of 3, 0 and 4 records (the empty one between the others)."""
    for name, count in (("a", 3), ("b", 2), ("c", 4)):
        rows = [{"id": f"{name}{i}", "conversations": []} for i in range(count)]
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    entries = [
        {"json_path": "a.jsonl"},
        {"json_path": "b.jsonl", "sampling_strategy": "first:0"},
        {"json_path": "c.jsonl", "sampling_strategy": "end:4"},
    ]
    return Mixture(entries, root=tmp_path)


def test_mixture_positions_find_the_datasets_numpy_finds(mixture):
    sizes = [len(d) for d in mixture.datasets]
    assert sizes == [3, 0, 4]
    records = mixture.record_numbers
    positions = list(range(-7, 7))
    datasets, numbers = mixture.locate(positions)
    want = [oracle(sizes, records, p) for p in positions]
    assert list(zip(datasets.tolist(), numbers.tolist(), strict=True)) == want
    assert [mixture._locate_one(p) for p in positions] == want
    assert [mixture[p]["id"] for p in (0, 2, 3, 6, -1, -7)] == ["a0", "a2", "c0", "c3", "c3", "a0"]
    assert mixture.locate(np.array([], dtype=np.int64))[0].tolist() == []
    assert mixture.locate(range(6, 2, -2))[0].tolist() == [2, 2]
    assert mixture.locate(np.arange(14, dtype=np.int64)[::2][:3])[1].tolist() == [
        0,
        2,
        1,
    ]  # strided positions


def test_mixture_errors_for_positions_out_of_range_are_worded_as_before(mixture):
    # `locate` names a negative position counted from the start; `mix[i]` names it as given.
    with pytest.raises(IndexError, match=r"^mixture index 7 out of range for 7 records$"):
        mixture.locate([0, 7, 9])
    with pytest.raises(IndexError, match=r"^mixture index -1 out of range for 7 records$"):
        mixture.locate([0, -8])
    with pytest.raises(IndexError, match=r"^mixture index -8 out of range for 7 records$"):
        mixture[-8]
    with pytest.raises(IndexError, match=r"^mixture index 7 out of range for 7 records$"):
        mixture.source(7)
    with pytest.raises(IndexError, match=rf"^mixture index {2**64} out of range for 7 records$"):
        mixture[2**64]
    with pytest.raises(TypeError, match="one-dimensional"):
        mixture.locate(np.zeros((2, 2), dtype=np.int64))
