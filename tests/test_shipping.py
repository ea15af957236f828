"""The worker hand-off: `_core.Shipped`, the batch a DataLoader worker sends to the main process. What
the worker packs is what the main process decodes (checked against `json.loads` of the records), across
a real process boundary; pickling carries bytes, not per-record objects; a damaged shipment is a clear
error, never a crash or a Rust panic."""

from __future__ import annotations

import json
import multiprocessing
import pickle
import posixpath
from collections import OrderedDict
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fusion_fast as ff
from fusion_fast import _core
from fusion_fast.errors import StaleIndexError

#: Two datasets' records: images relative, absolute, listed and missing; strings beyond ASCII and with
#: escapes; numbers beyond int64; nesting.
RECORDS = {
    "first": [
        {"id": "a0", "image": "x/0.png", "conversations": [{"from": "human", "value": "hi"}]},
        {"id": "a1", "image": ["/abs/1.png", "r/1.png"], "meta": {"k": [1, 2.5, None, True]}},
        {"id": "a2", "t": 'caf\u00e9 \u65e5\u672c \U0001f600 "q" \\ \n', "n": 2**70, "m": -0.0},
        {"id": "a3"},
    ],
    "second": [
        {"id": "b0", "image": "y.png", "conversations": []},
        {"id": "b1", "image": None, "deep": [[[{"z": []}]]]},
        {"id": "b2", "x": -(2**65), "e": 1.5e300},
    ],
}
PREFIXES = {"first": "/images/", "second": ""}


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> _core.ItemSources:
    folder = tmp_path_factory.mktemp("shipping")
    (folder / "first.json").write_text(json.dumps(RECORDS["first"], indent=1, ensure_ascii=False))
    (folder / "second.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS["second"]))
    indexes = [ff.open(folder / "first.json"), ff.open(folder / "second.jsonl")]
    return _core.ItemSources([ix._core for ix in indexes], list(RECORDS), list(PREFIXES.values()))


def expected_item(dataset: int, number: int) -> dict[str, Any]:
    """FusionDataset's item, from `json.loads` of the record: relative image paths joined to the
    dataset's image folder (absolute ones kept), and the record's source."""
    name = list(RECORDS)[dataset]
    item = json.loads(json.dumps(RECORDS[name][number]))
    folder = PREFIXES[name]
    if folder and isinstance(item.get("image"), str):
        item["image"] = posixpath.join(folder, item["image"])
    elif folder and isinstance(item.get("image"), list):
        item["image"] = [posixpath.join(folder, p) for p in item["image"]]
    item["_source"] = {"dataset": name, "index": number}
    return item


samples = st.lists(
    st.sampled_from([(d, i) for d, name in enumerate(RECORDS) for i in range(len(RECORDS[name]))]),
    max_size=12,
)


def pack(sources: _core.ItemSources, picked: list[tuple[int, int]], *, tape: bool) -> _core.Shipped:
    datasets = np.array([d for d, _ in picked], dtype="<i8").tobytes()
    numbers = np.array([i for _, i in picked], dtype="<i8").tobytes()
    return sources.pack(datasets, numbers, tape=tape)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(picked=samples, tape=st.booleans())
def test_decode_gives_the_records_as_items(sources, picked, tape):
    shipped = pack(sources, picked, tape=tape)
    want = [expected_item(d, i) for d, i in picked]
    assert len(shipped) == len(picked) and shipped.tape == tape
    assert shipped.decode() == want
    assert shipped.names == list(RECORDS) and shipped.prefixes == list(PREFIXES.values())
    assert np.frombuffer(shipped.numbers, "<i8").tolist() == [i for _, i in picked]
    if not tape:
        assert np.frombuffer(shipped.lengths, "<u4").sum() == len(shipped.data)


def receive_and_decode(inbox: Any, outbox: Any) -> None:
    """In another process: decode what arrives, and send back the items and the shipment itself."""
    shipped = inbox.get()
    outbox.put((shipped.decode(), shipped.decode(collated=True), shipped))


@pytest.mark.parametrize("tape", [False, True])
def test_a_shipment_crosses_a_process_boundary_as_its_bytes(sources, tape):
    picked = [(0, 2), (1, 0), (0, 0), (1, 2), (0, 1)]
    shipped = pack(sources, picked, tape=tape)
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing shared but the pickle
    inbox, outbox = context.Queue(), context.Queue()
    child = context.Process(target=receive_and_decode, args=(inbox, outbox))
    child.start()
    try:
        inbox.put(shipped)
        items, batch, back = outbox.get(timeout=120)
    finally:
        child.join(timeout=60)
    assert child.exitcode == 0
    want = [expected_item(d, i) for d, i in picked]
    assert items == want
    assert batch == shipped.decode(collated=True) and batch["id"] == [w["id"] for w in want]
    assert type(back) is _core.Shipped and back == shipped


def test_pickling_carries_the_bytes_not_per_record_objects(sources):
    shipped = pack(sources, [(d, i) for d in (0, 1) for i in range(3)] * 20, tape=False)
    message = pickle.dumps(shipped, protocol=pickle.HIGHEST_PROTOCOL)
    carried = sum(len(b) for b in (shipped.data, shipped.lengths, shipped.datasets, shipped.numbers))
    assert carried < len(message) < carried + 300
    cls, args = shipped.__reduce__()
    assert cls is _core.Shipped and type(args[0]) is bytes and args[0] is shipped.data


class Damaged:
    """Pickles as a `Shipped` with other fields, as a damaged message would arrive."""

    def __init__(self, *args: Any) -> None:
        self.args = args

    def __reduce__(self) -> tuple[Any, ...]:
        return (_core.Shipped, self.args)


def fields(shipped: _core.Shipped) -> list[Any]:
    return list(shipped.__reduce__()[1])


def test_a_damaged_layout_is_a_value_error_on_arrival(sources):
    good = fields(pack(sources, [(0, 1), (1, 2)], tape=False))
    damages = {
        "record lengths exceed the shipped bytes": {0: good[0][:-3]},
        "record lengths do not add up to the shipped bytes": {0: good[0] + b"x"},
        "lengths and numbers must describe the same records": {1: good[1][:4]},
        "datasets and numbers must be int64 arrays of the same length": {3: good[3][:12], 1: good[1][:6]},
        "names and prefixes must have the same length": {5: ["/images/"]},
    }
    for message, changes in damages.items():
        args = [changes.get(k, v) for k, v in enumerate(good)]
        with pytest.raises(ValueError, match=message):
            pickle.loads(pickle.dumps(Damaged(*args)))
        with pytest.raises(ValueError, match=message):
            _core.Shipped(*args)
    with pytest.raises(IndexError, match="dataset number 2 out of range"):
        _core.Shipped(*[(2).to_bytes(8, "little") * 2 if k == 2 else v for k, v in enumerate(good)])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    tape=st.booleans(),
    field=st.sampled_from([0, 1, 2, 3]),
    where=st.integers(0, 10**6),
    damage=st.sampled_from(["flip", "cut", "grow", "random"]),
    noise=st.binary(min_size=1, max_size=64),
    collated=st.booleans(),
)
def test_any_damaged_shipment_is_a_clear_error_or_decodes(
    sources, tape, field, where, damage, noise, collated
):
    """Whatever a shipment's bytes become, decoding ends in items or in a ValueError, IndexError or
    StaleIndexError saying what is wrong: never a panic (an "internal error") or a crash."""
    args = fields(pack(sources, [(0, 2), (1, 1), (0, 1)], tape=tape))
    value = bytearray(args[field])
    at = where % (len(value) + 1)
    if damage == "flip" and value:
        value[at % len(value)] ^= noise[0] or 1
    elif damage == "cut":
        del value[at:]
    elif damage == "grow":
        value[at:at] = noise
    else:
        value = bytearray(noise)
    args[field] = bytes(value)
    try:
        _core.Shipped(*args).decode(collated=collated)
    except (ValueError, IndexError, StaleIndexError) as e:
        assert "internal error" not in str(e) and str(e)


# -- collate: one statement of the rules (Python's `_collate`), a fast path in Rust --------------------

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=3)
    | st.binary(max_size=2)
)
#: Values for which Rust gives up: tuples, mappings that are not dicts, other objects.
other_values = (
    st.tuples(json_leaves, json_leaves)
    | st.builds(OrderedDict, st.dictionaries(st.sampled_from("ab"), json_leaves))
    | st.builds(Fraction, st.integers())
)


def values(others: bool) -> st.SearchStrategy[Any]:
    leaves = json_leaves | other_values if others else json_leaves
    keys = st.sampled_from("abcd")
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
        max_leaves=10,
    )


def batches(others: bool) -> st.SearchStrategy[list[Any]]:
    item = values(others) | st.dictionaries(st.sampled_from("abcde"), values(others), max_size=4)
    dicts = st.lists(st.dictionaries(st.sampled_from("abcde"), values(others), max_size=4), max_size=5)
    return dicts | st.lists(item, max_size=5)


def same_key_order(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same_key_order(a[k], b[k]) for k in a)
    return True


@settings(max_examples=500, deadline=None)
@given(items=batches(others=False) | batches(others=True))
def test_the_rust_collate_fast_path_follows_the_stated_rules(items):
    """`collate_records` equals `_collate` wherever it answers, and answers for every batch of JSON
    values (those are raw records: the path must not fall back to Python for them)."""
    pytest.importorskip("torch")
    from fusion_fast.torch.collate import _collate

    fast = _core.collate_records(items)
    by_rules = _collate(items, None, {}, 0)
    if fast is not None:
        assert fast == by_rules and same_key_order(fast, by_rules)
    if all(plain(item) for item in items):
        assert fast is not None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(picked=samples, tape=st.booleans())
def test_a_collated_shipment_follows_the_stated_rules(sources, picked, tape):
    """The batch built column by column from shipped bytes is `_collate` of the decoded items."""
    pytest.importorskip("torch")
    from fusion_fast.torch.collate import _collate

    shipped = pack(sources, picked, tape=tape)
    batch, by_rules = shipped.decode(collated=True), _collate(shipped.decode(), None, {}, 0)
    assert batch == by_rules and same_key_order(batch, by_rules)


def plain(value: Any) -> bool:
    """Made only of dicts, lists and JSON leaves (or bytes), each of exactly those types."""
    if type(value) is dict:
        return all(plain(v) for v in value.values())
    if type(value) is list:
        return all(plain(v) for v in value)
    return type(value) in (type(None), bool, int, float, str, bytes)
