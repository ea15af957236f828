"""`Mixture`: FUSION / LLaVA-OneVision stage YAMLs checked against a reference implementation of FUSION's
loader over `json.load`, plus random strategies, repeat, exclude, summary, export and pickling."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import fusion_fast
from fusion_fast import FusionFastError, Mixture, MixtureError
from fusion_fast.exclude import write_exclude
from fusion_fast.mixture import smallest_positions
from fusion_fast.stage import parse_strategy
from fusion_fast.synth import write_file

from .conftest import write
from .fusion_reference import fusion_lengths, fusion_modality_lengths

# -- the reference: FUSION's loader and properties, as FUSION describes them, over json.load ------


def load_records(path: str | Path) -> list[Any]:
    path = str(path)
    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    raise ValueError(f"unsupported file {path}")


def fusion_list_data_dict(yaml_path: Path, root: Path) -> list[Any]:
    """FUSION's `list_data_dict` for all / first / end strategies (random has no reproducible reference)."""
    with open(yaml_path, encoding="utf-8") as f:
        datasets = yaml.safe_load(f)["datasets"]
    out: list[Any] = []
    for ds in datasets:
        data = load_records(root / ds["json_path"])
        strategy = ds.get("sampling_strategy", "all")
        if ":" in strategy:
            name, number = strategy.split(":")
            if "%" in number:
                k = percent_of(number.rstrip("%"), len(data))
            else:
                k = int(number)
            if name == "first":
                data = data[:k]
            elif name == "end":
                data = data[-k:]
            else:
                raise AssertionError(f"the reference has no {name}")
        out.extend(data)
    return out


def percent_of(text: str, n: int) -> int:
    """`text`% of n rounded up, computed in integers from the decimal digits of `text` (no Fraction, no
    float): FUSION's `ceil(P * n / 100)` for an integer P, extended exactly to a decimal P."""
    whole, _, frac = text.strip().partition(".")
    scale = 10 ** len(frac)
    numerator = int(whole or "0") * scale + int(frac or "0")
    return -(-numerator * n // (100 * scale))


def fusion_strategy(strategy: str, records: list[Any]) -> list[Any]:
    """FUSION's selection (fusion/train/train.py, LazySupervisedDataset.__init__), verbatim but for the
    random shuffle, which has no reproducible reference: only the size of a random: selection is kept."""
    sampling_number = None
    if ":" in strategy:
        strategy, sampling_number = strategy.split(":")
        if "%" in sampling_number:
            sampling_number = math.ceil(int(sampling_number.split("%")[0]) * len(records) / 100)
        else:
            sampling_number = int(sampling_number)
    if strategy == "first" and sampling_number is not None:
        records = records[:sampling_number]
    elif strategy == "end" and sampling_number is not None:
        records = records[-sampling_number:]
    elif strategy == "random" and sampling_number is not None:
        records = records[:sampling_number]
    return records


def make_stage(root: Path, entries: list[dict[str, Any]], name: str = "stage.yaml") -> Path:
    path = root / name
    path.write_text(yaml.safe_dump({"datasets": entries}), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Three generated files: a pretty-printed .json array, a compact one and a .jsonl."""
    root = tmp_path_factory.mktemp("mixture")
    (root / "jsons").mkdir()
    write_file(root / "jsons" / "Pretty-300.json", records=300, seed=1, indent=4)
    write_file(root / "jsons" / "Compact-257.json", records=257, seed=2, indent=None)
    write_file(root / "jsons" / "Lines-211.jsonl", records=211, seed=3)
    return root


ALL_FIRST_END = [
    {"json_path": "jsons/Pretty-300.json", "sampling_strategy": "all"},
    {"json_path": "jsons/Compact-257.json", "sampling_strategy": "first:100"},
    {"json_path": "jsons/Lines-211.jsonl", "sampling_strategy": "end:50"},
    {"json_path": "jsons/Pretty-300.json", "sampling_strategy": "end:12.5%"},
    {"json_path": "jsons/Lines-211.jsonl", "sampling_strategy": "first:33%"},
    {"json_path": "jsons/Compact-257.json"},
    {"json_path": "jsons/Compact-257.json", "sampling_strategy": "first:100000"},
    {"json_path": "jsons/Lines-211.jsonl", "sampling_strategy": "end:0.5%"},
]


def test_all_first_end_and_percent_equal_fusion(files):
    stage = make_stage(files, ALL_FIRST_END)
    mix = Mixture.from_yaml(stage, root=files)
    ref = fusion_list_data_dict(stage, files)
    assert len(mix) == len(ref) == 300 + 100 + 50 + 38 + 70 + 257 + 257 + 2
    assert list(mix) == ref
    assert [mix[i] for i in range(0, len(ref), 7)] == ref[::7]
    assert mix[-1] == ref[-1] and mix[-len(ref)] == ref[0]
    assert mix[10:40:3] == ref[10:40:3] and mix[-5:] == ref[-5:]
    picks = np.random.default_rng(0).integers(-len(ref), len(ref), 500)
    assert mix.get_many(picks) == [ref[i] for i in picks]
    assert mix.lengths.dtype == np.int64 and mix.lengths.tolist() == fusion_lengths(ref)
    assert mix.modality_lengths.tolist() == fusion_modality_lengths(ref)
    assert [len(d) for d in mix.datasets] == [300, 100, 50, 38, 70, 257, 257, 2]


def test_percent_is_an_exact_ceiling(tmp_path):
    write(tmp_path / "seven.json", json.dumps([{"n": i} for i in range(7)]))
    cases = {
        "first:50%": 4,
        "end:14.2857%": 1,
        "first:100%": 7,
        "first:0%": 0,
        "first:0.0001%": 1,
        "end:42.857142857142857142%": 3,
        "first:42.86%": 4,
        "random:50%": 4,
    }
    for strategy, expected in cases.items():
        mix = Mixture([{"json_path": "seven.json", "sampling_strategy": strategy}], root=tmp_path)
        assert len(mix) == expected, strategy


def test_end_zero_keeps_nothing_unlike_fusion(tmp_path):
    write(tmp_path / "a.json", json.dumps([{"n": i} for i in range(5)]))
    assert len(Mixture([{"json_path": "a.json", "sampling_strategy": "end:0"}], root=tmp_path)) == 0
    assert Mixture([{"json_path": "a.json", "sampling_strategy": "end:2"}], root=tmp_path)[:] == [
        {"n": 3},
        {"n": 4},
    ]


# Percentages where rounding through a float gives one record more or fewer than the exact ceiling:
# 16.1% of 1,000 is 161, but 16.1 * 1000 / 100 is 161.00000000000003 in floats, whose ceiling is 162.
FLOAT_MISROUNDS = [("16.1", 1000, 161), ("32.2", 1000, 322), ("64.4", 1000, 644), ("0.9", 1000, 9)]


def test_fractional_percentages_are_exact_where_floats_misround():
    for text, n, expected in FLOAT_MISROUNDS:
        assert percent_of(text, n) == expected
        floats = {
            math.ceil(float(text) * n / 100),
            math.ceil(float(text) / 100 * n),
            math.ceil(Fraction(float(text)) * n / 100),
        }
        assert floats != {expected}, f"{text}% of {n} does not tell exact arithmetic from float"
        for name in ("first", "end", "random"):
            assert parse_strategy(f"{name}:{text}%", where="t").selected(n) == expected


def test_every_tenth_and_hundredth_of_a_percent_against_integer_arithmetic():
    texts = [f"{k // 10}.{k % 10}" for k in range(1001)] + [
        f"{k // 100}.{k % 100:02d}" for k in range(1, 10001, 7)
    ]
    texts += ["12.5", ".5", "7.", "33.333333333333333333333333", "99.99999999999999999999", "0.0000000001"]
    for n in (0, 1, 3, 7, 100, 999, 1000, 4096, 1_000_003, 5_500_000):
        for text in texts:
            got = parse_strategy(f"first:{text}%", where="t").selected(n)
            assert got == min(n, percent_of(text, n)), (text, n)


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(0, 2500),
    name=st.sampled_from(["first", "end", "random"]),
    number=st.one_of(
        st.integers(0, 4000).map(str),
        st.integers(0, 100).map(lambda p: f"{p}%"),
        st.integers(0, 100).map(lambda p: f" {p} %"),
    ),
)
def test_integer_counts_and_percentages_select_what_fusion_selects(n, name, number):
    strategy = f"{name}:{number}"
    got = parse_strategy(strategy, where="t").selected(n)
    kept = len(fusion_strategy(strategy, list(range(n))))
    if name == "end" and len(fusion_strategy(f"first:{number}", list(range(n)))) == 0:
        # FUSION's `records[-0:]` keeps everything; fusion-fast's `end:0` (or a 0-record percentage) none.
        assert got == 0 and kept == n
    else:
        assert got == kept


def test_strategies_select_fusions_records_end_to_end(tmp_path):
    records = [{"n": i} for i in range(1000)]
    write(tmp_path / "thousand.json", json.dumps(records))
    strategies = ["first:16.1%", "end:32.2%", "first:64.4%", "end:0.9%", "first:7", "end:25%", "first:3000"]
    entries = [{"json_path": "thousand.json", "sampling_strategy": s} for s in strategies]
    mix = Mixture(
        entries + [{"json_path": "thousand.json", "sampling_strategy": "random:16.1%"}], root=tmp_path
    )
    sizes = [len(d) for d in mix.datasets]
    assert sizes == [161, 322, 644, 9, 7, 250, 1000, 161]
    expected: list[Any] = []
    for s in strategies:
        name, number = s.split(":")
        k = percent_of(number[:-1], 1000) if number.endswith("%") else int(number)
        expected += records[:k] if name == "first" else records[-k:]
    assert mix[: sum(sizes[:-1])] == expected


# Repeat factors whose fractional part times the selection lands on an integer exactly, where the same
# arithmetic through floats (or through the float YAML reads, 1.1 = 1.100000000000000088...) lands above it.
REPEAT_MISROUNDS = [
    (1.1, 10, 11),
    ("1.1", 10, 11),
    (1.07, 100, 107),
    (2.28, 25, 57),
    (0.56, 75, 42),
    (0.14, 50, 7),
]


def repeat_size(text: str, m: int) -> int:
    """floor(K) copies of m records plus ceil(frac(K) * m), in integers from K's decimal digits."""
    whole, _, frac = text.partition(".")
    scale = 10 ** len(frac)
    return int(whole or "0") * m + -(-int(frac or "0") * m // scale)


def test_repeat_arithmetic_is_exact(tmp_path):
    write(tmp_path / "hundred.json", json.dumps([{"n": i} for i in range(100)]))
    grid = [k / 10 for k in range(0, 40, 3)] + [k / 100 for k in range(1, 400, 9)]
    cases = list(REPEAT_MISROUNDS) + [(r, m, None) for r in grid for m in (1, 9, 10, 25, 33, 75, 100)]
    for value, m, expected in cases:
        want = repeat_size(str(value), m)
        assert expected is None or want == expected
        mix = Mixture(
            [{"json_path": "hundred.json", "sampling_strategy": f"first:{m}", "repeat": value}], root=tmp_path
        )
        sel = mix.datasets[0].selected.tolist()
        assert len(sel) == want, (value, m)
        whole = int(str(value).partition(".")[0] or "0")
        assert sel[: whole * m] == list(range(m)) * whole
        assert sel[whole * m :] == sorted(set(sel[whole * m :])) and set(sel[whole * m :]) <= set(range(m))
    # each way of going through floats misses at least one of the cases
    for through_floats in (
        lambda k, m: math.floor(k) * m + math.ceil(float(k - math.floor(k)) * m),
        lambda k, m: math.floor(k) * m + math.ceil((Fraction(float(k)) - math.floor(k)) * m),
    ):
        assert any(through_floats(Fraction(str(v)), m) != e for v, m, e in REPEAT_MISROUNDS)


# -- bounds: no hang, no bare ValueError on absurd numbers -------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("repeat", "message"),
    [
        (1000000000, "repeat must be at most"),
        ("1e100000000", "repeat must be at most"),
        (10**400, "repeat must be at most"),
        ("1e-100000000", "too many digits"),
        ("0." + "0" * 100000 + "1", "too many digits"),
        (float("inf"), "repeat must be a number"),
        (float("nan"), "repeat must be a number"),
    ],
    ids=["1e9", "1e100000000", "10**400", "1e-100000000", "100000-decimals", "inf", "nan"],
)
def test_absurd_repeats_are_refused_at_once(files, repeat, message):
    stage = make_stage(files, [{"json_path": "jsons/Lines-211.jsonl", "repeat": repeat}], name="repeat.yaml")
    with pytest.raises(MixtureError, match=message) as err:
        Mixture.from_yaml(stage, root=files)
    assert str(stage) in str(err.value) and "datasets[0]" in str(err.value)
    said = repr(repeat)
    assert (said if len(said) <= 60 else said[:40]) in str(err.value)  # the value the user wrote


@pytest.mark.parametrize(
    ("repeat", "accepted"),
    [
        ("0." + "0" * 99 + "1", True),  # 100 digits after the point
        ("0." + "0" * 100 + "1", False),
        ("1." + "1" * 99, True),  # 100 significant digits
        ("1." + "1" * 100, False),
        ("10000." + "0" * 95, True),
    ],
    ids=["100-decimals", "101-decimals", "100-significant", "101-significant", "10000-padded"],
)
def test_repeat_digits_bound_is_exact(tmp_path, repeat, accepted):
    write(tmp_path / "one.json", json.dumps([{"n": 0}]))
    entry = [{"json_path": "one.json", "repeat": repeat}]
    if accepted:
        assert len(Mixture(entry, root=tmp_path)) == math.ceil(Fraction(repeat))
    else:
        with pytest.raises(MixtureError, match="too many digits"):
            Mixture(entry, root=tmp_path)


@pytest.mark.parametrize(("repeat", "said"), [(-1, "-1"), ("twice", "'twice'"), (-0.5, "-0.5"), ([2], "[2]")])
def test_a_bad_repeat_is_quoted_in_the_error(tmp_path, repeat, said):
    write(tmp_path / "one.json", json.dumps([{"n": 0}]))
    with pytest.raises(MixtureError, match="repeat must be") as err:
        Mixture([{"json_path": "one.json", "repeat": repeat}], root=tmp_path)
    assert str(err.value).endswith(f"not {said}")


def test_the_largest_repeat_is_accepted(tmp_path):
    write(tmp_path / "one.json", json.dumps([{"n": 0}]))
    mix = Mixture([{"json_path": "one.json", "repeat": fusion_fast.stage.MAX_REPEAT}], root=tmp_path)
    assert len(mix) == fusion_fast.stage.MAX_REPEAT
    with pytest.raises(MixtureError, match="repeat must be at most"):
        Mixture([{"json_path": "one.json", "repeat": fusion_fast.stage.MAX_REPEAT + 0.5}], root=tmp_path)


def test_a_selection_too_large_to_hold_is_refused_before_allocating(files, monkeypatch):
    monkeypatch.setattr(fusion_fast.mixture, "MAX_SELECTED", 1000)
    entry = {"json_path": "jsons/Lines-211.jsonl", "repeat": 4.5}
    assert len(Mixture([entry], root=files)) == 4 * 211 + 106
    with pytest.raises(MixtureError, match=r"datasets\[0\].*1,055 records.*at most 1,000") as err:
        Mixture([{**entry, "repeat": 5}], root=files)
    assert "repeat" in str(err.value)
    assert len(Mixture([{**entry, "repeat": 4.735}], root=files)) == 1000  # 844 + 156: exactly the bound
    with pytest.raises(MixtureError, match="1,003 records"):
        Mixture([{**entry, "repeat": 4.75}], root=files)  # 844 + 159


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "strategy",
    ["random:0." + "0" * 100000 + "1%", "first:" + "9" * 5000, "end:" + "1" * 200 + "%"],
    ids=["100000-decimals", "5000-digit-count", "200-digit-percent"],
)
def test_overlong_numbers_in_a_strategy_raise_mixture_error(files, strategy):
    with pytest.raises(MixtureError, match="sampling_strategy") as err:
        Mixture([{"json_path": "jsons/Lines-211.jsonl", "sampling_strategy": strategy}], root=files)
    assert "datasets[0]" in str(err.value)


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        (10, "sampling_strategy must be a string like 'first:1000', not 10"),
        (
            "top:5",
            "unknown sampling_strategy 'top:5'; expected all, first:N, end:N or random:N "
            "(N an integer or a percentage such as 10%)",
        ),
        ("first", "sampling_strategy 'first' needs a number, e.g. 'first:1000'"),
        ("all:3", "sampling_strategy 'all' takes no number (got 'all:3')"),
        (
            "end:x",
            "sampling_strategy 'end:x' needs a non-negative number after ':' "
            "(an integer, or a percentage such as 10% or 2.5%)",
        ),
        ("first:100.5%", "sampling_strategy 'first:100.5%': a percentage cannot exceed 100%"),
        ("end:100.0000001%", "sampling_strategy 'end:100.0000001%': a percentage cannot exceed 100%"),
        ("first:2.5", "sampling_strategy 'first:2.5': a record count must be an integer"),
        ("first:" + "0" * 101 + "5", "the number has too many digits (at most 100)"),
    ],
    ids=[
        "not-a-string",
        "unknown",
        "no-number",
        "all-with-number",
        "not-a-number",
        "100.5%",
        "100.0000001%",
        "fraction-count",
        "102-digits",
    ],
)
def test_strategy_errors_quote_the_strategy_and_say_what_is_expected(strategy, message):
    with pytest.raises(MixtureError) as err:
        parse_strategy(strategy, where="stage.yaml: datasets[0]")
    assert str(err.value) == f"stage.yaml: datasets[0]: {message}" or (
        message.startswith("the number")
        and str(err.value).endswith(message)
        and "'first:000" in str(err.value)
    )


def test_strategy_numbers_of_up_to_100_digits_are_read():
    assert parse_strategy("first:" + "0" * 100 + "5", where="t").count == 5  # 101 characters, 100 digits
    assert parse_strategy("end:" + "0" * 99 + ".5%", where="t").percent == Fraction(1, 2)
    assert parse_strategy("first:100%", where="t").selected(7) == 7


def test_a_folder_under_a_later_base_is_reported_too(tmp_path):
    """The first place tried holds nothing, the second a folder named like the data file."""
    (tmp_path / "stage" / "folder.json").mkdir(parents=True)
    (tmp_path / "root").mkdir()
    stage = make_stage(tmp_path / "stage", [{"json_path": "folder.json"}])
    with pytest.raises(MixtureError, match=r"folder\.json is a directory"):
        Mixture.from_yaml(stage, root=tmp_path / "root")


def test_devices_and_sockets_as_data_file_say_what_they_are(tmp_path):
    import socket

    kinds = {"null.json": ("/dev/null", "a character device")}
    block = next((str(d) for d in sorted(Path("/dev").glob("loop*")) if d.is_block_device()), None)
    if block is not None:
        kinds["disk.json"] = (block, "a block device")
    for name, (target, _) in kinds.items():
        os.symlink(target, tmp_path / name)
    short = Path(tempfile.mkdtemp(prefix="ff-sock-"))  # a socket path must stay under 108 bytes
    try:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(short / "s.jsonl"))
        os.symlink(short / "s.jsonl", tmp_path / "sock.jsonl")
        kinds["sock.jsonl"] = (str(short / "s.jsonl"), "a socket")
        for name, (_, what) in kinds.items():
            with pytest.raises(MixtureError) as err:
                Mixture([{"json_path": name}], root=tmp_path)
            assert f"{tmp_path / name} is {what}, not a .json or .jsonl file" in str(err.value)
    finally:
        sock.close()
        shutil.rmtree(short)


def test_a_directory_or_fifo_as_data_file_says_what_it_is(tmp_path):
    (tmp_path / "folder.json").mkdir()
    os.mkfifo(tmp_path / "pipe.jsonl")
    write(tmp_path / "fine.json", "[]")
    for name, what in [("folder.json", "a directory"), ("pipe.jsonl", "a FIFO")]:
        stage = make_stage(tmp_path, [{"json_path": "fine.json"}, {"json_path": name}])
        with pytest.raises(MixtureError) as err:
            Mixture.from_yaml(stage, root=tmp_path)
        text = str(err.value)
        assert f"{tmp_path / name} is {what}" in text and "datasets[1]" in text and str(stage) in text
        assert "not found" not in text


def test_sequence_api(files):
    mix = Mixture(
        [
            {"json_path": "jsons/Lines-211.jsonl", "sampling_strategy": "first:10"},
            {"json_path": "jsons/Compact-257.json", "sampling_strategy": "end:5"},
        ],
        root=files,
    )
    ref = load_records(files / "jsons" / "Compact-257.json")
    assert isinstance(mix, Sequence) and len(mix) == 15
    assert mix.source(0) == ("Lines-211", 0) and mix.source(10) == ("Compact-257", 252)
    assert mix.source(-1) == ("Compact-257", 256)
    ds, rec = mix.locate([0, 9, 10, -1, 14])
    assert ds.tolist() == [0, 0, 1, 1, 1] and rec.tolist() == [0, 9, 252, 256, 256]
    assert mix.get_many([]) == [] and mix.get_many(np.array([14, 0, 14])) == [mix[14], mix[0], ref[-1]]
    assert mix.offsets.tolist() == [0, 10, 15]
    for bad in (15, -16):
        with pytest.raises(IndexError):
            mix[bad]
        with pytest.raises(IndexError):
            mix.get_many([0, bad])
    with pytest.raises(IndexError):
        mix.source(15)
    assert mix.index(mix[3]) == 3 and mix[14] in mix
    assert "2 datasets" in repr(mix) and "15 records" in repr(mix)


def test_one_shared_selection_array(files):
    mix = Mixture.from_yaml(make_stage(files, ALL_FIRST_END), root=files)
    records = mix.datasets[0].selected.base
    assert all(np.shares_memory(d.selected, mix.datasets[0].selected.base) for d in mix.datasets if len(d))
    assert records is not None and records.nbytes == 8 * len(mix)
    assert all(d.selected.dtype == np.int64 and not d.selected.flags.writeable for d in mix.datasets)
    d = mix.datasets[3]
    assert d.name == "Pretty-300" and d.records == 300 and d.start == 450 and d.stop == 488
    assert d.selected.tolist() == list(range(262, 300)) and d.path == files / "jsons" / "Pretty-300.json"
    assert isinstance(d.index, fusion_fast.JsonIndex) and d.spec.entry == 3


def test_entries_from_python_objects(files):
    spec = fusion_fast.stage.spec_from_entry({"json_path": "jsons/Lines-211.jsonl"}, 0, root=files)
    by_dict = Mixture([{"json_path": str(files / "jsons" / "Lines-211.jsonl"), "images_folder": "/imgs"}])
    by_path = Mixture([files / "jsons" / "Lines-211.jsonl"])
    by_spec = Mixture([spec])
    assert (
        list(by_dict) == list(by_path) == list(by_spec) == load_records(files / "jsons" / "Lines-211.jsonl")
    )
    assert by_dict.datasets[0].image_folder == Path("/imgs") and by_path.datasets[0].image_folder is None
    folders = Mixture(
        [
            {"json_path": "jsons/Lines-211.jsonl", key: "img"}
            for key in ("image_folder", "images_folder", "data_folder")
        ],
        root=files,
    )
    assert [d.image_folder for d in folders.datasets] == [files / "img"] * 3


def test_paths_resolve_against_root_then_the_yaml_folder(files, tmp_path, monkeypatch):
    stage_dir = tmp_path / "scripts"
    stage_dir.mkdir()
    os.symlink(files / "jsons", stage_dir / "jsons")
    stage = make_stage(stage_dir, [{"json_path": "jsons/Lines-211.jsonl", "sampling_strategy": "first:3"}])
    monkeypatch.chdir(tmp_path)  # FUSION resolves against the working directory; here it does not hold it
    assert len(Mixture.from_yaml(stage)) == 3  # found beside the YAML
    assert Mixture.from_yaml(stage, root=files).datasets[0].path == files / "jsons" / "Lines-211.jsonl"


# -- random, repeat, exclude ------------------------------------------------------------------------------

RANDOM_STAGE = [
    {"json_path": "jsons/Pretty-300.json", "sampling_strategy": "random:40"},
    {"json_path": "jsons/Lines-211.jsonl", "sampling_strategy": "random:25%"},
]

SELECTIONS_SCRIPT = """
import json, sys
from fusion_fast import Mixture
mix = Mixture.from_yaml(sys.argv[1], root=sys.argv[2], seed=int(sys.argv[3]))
print(json.dumps([d.selected.tolist() for d in mix.datasets]))
"""


def selections(mix: Mixture) -> list[list[int]]:
    return [d.selected.tolist() for d in mix.datasets]


def test_random_is_a_subset_of_the_right_size(files):
    mix = Mixture.from_yaml(make_stage(files, RANDOM_STAGE), root=files, seed=7)
    first, second = mix.datasets
    assert len(first) == 40 and len(second) == math.ceil(211 / 4)
    for d in mix.datasets:
        sel = d.selected.tolist()
        assert sel == sorted(set(sel)) and 0 <= sel[0] and sel[-1] < d.records
    pretty = load_records(files / "jsons" / "Pretty-300.json")
    assert mix[:40] == [pretty[i] for i in first.selected]
    # a subset is a fair draw, not a prefix or a stride
    assert first.selected.tolist() != list(range(40)) and first.selected.max() > 200


def test_random_is_identical_across_processes_and_changes_with_the_seed(files):
    stage = make_stage(files, RANDOM_STAGE)

    def in_child(seed: int) -> list[list[int]]:
        out = subprocess.run(
            [sys.executable, "-c", SELECTIONS_SCRIPT, str(stage), str(files), str(seed)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    a, b = in_child(3), in_child(3)
    assert a == b == selections(Mixture.from_yaml(stage, root=files, seed=3))
    other = in_child(4)
    assert all(x != y for x, y in zip(a, other, strict=True))
    assert [len(x) for x in other] == [len(x) for x in a]


def test_smallest_keys_and_their_ties():
    keys = np.array([5, 3, 3, 3, 9, 1], dtype=np.uint64)
    picks = {k: smallest_positions(keys, k).tolist() for k in range(8)}
    assert picks == {
        0: [],
        1: [5],
        2: [1, 5],
        3: [1, 2, 5],
        4: [1, 2, 3, 5],
        5: [0, 1, 2, 3, 5],
        6: [0, 1, 2, 3, 4, 5],
        7: [0, 1, 2, 3, 4, 5],
    }
    rng = np.random.default_rng(0)
    for _ in range(20):
        keys = rng.integers(0, 5, 50).astype(np.uint64)
        k = int(rng.integers(0, 51))
        expected = sorted(sorted(range(50), key=lambda i: (keys[i], i))[:k])
        assert smallest_positions(keys, k).tolist() == expected
    # Distinct keys: the k-th smallest must be found exactly, not a neighbour. numpy's partition often
    # leaves the right value at k-1 even when partitioning around k-2; this case (257 keys) it does not.
    cases = [(np.random.default_rng(0).permutation(257), 137)]
    cases += [(rng.permutation(n), int(rng.integers(1, n))) for n in rng.integers(2, 600, 40)]
    for keys, k in cases:
        keys = keys.astype(np.uint64)
        assert smallest_positions(keys, k).tolist() == sorted(np.argsort(keys, kind="stable")[:k].tolist())


def test_random_subset_depends_only_on_seed_file_and_occurrence(files):
    alone = Mixture([RANDOM_STAGE[0]], root=files, seed=5)
    behind = Mixture(
        [
            {"json_path": "jsons/Lines-211.jsonl", "sampling_strategy": "random:10"},
            RANDOM_STAGE[0],
            RANDOM_STAGE[0],
        ],
        root=files,
        seed=5,
    )
    assert behind.datasets[1].selected.tolist() == alone.datasets[0].selected.tolist()
    # the same file listed twice draws two independent subsets, like two FUSION shuffles
    assert behind.datasets[2].selected.tolist() != behind.datasets[1].selected.tolist()


def test_repeat_whole_and_fractional(files):
    base = {"json_path": "jsons/Compact-257.json", "sampling_strategy": "first:40"}
    mix = Mixture(
        [{**base, "repeat": 2}, {**base, "repeat": 1.5}, {**base, "repeat": 0}, {**base, "repeat": "0.1"}],
        root=files,
        seed=1,
    )
    twice, one_half, none, tenth = (d.selected for d in mix.datasets)
    assert twice.tolist() == list(range(40)) * 2
    assert one_half[:40].tolist() == list(range(40)) and len(one_half) == 60
    assert len(set(one_half[40:].tolist())) == 20 and one_half[40:].tolist() == sorted(one_half[40:].tolist())
    assert len(none) == 0 and len(tenth) == 4 and set(tenth.tolist()) <= set(range(40))
    assert mix.summary()["selected"].to_list() == [80, 60, 0, 4]
    rnd = (
        Mixture(
            [{"json_path": "jsons/Pretty-300.json", "sampling_strategy": "random:10", "repeat": 1.5}],
            root=files,
            seed=2,
        )
        .datasets[0]
        .selected
    )
    assert len(rnd) == 15 and set(rnd[10:].tolist()) <= set(rnd[:10].tolist())


def test_exclude_applies_after_the_strategy(files, tmp_path):
    data = files / "jsons" / "Lines-211.jsonl"
    exclude = tmp_path / "bad.json"
    write_exclude(exclude, {data: [2, 5, 9, 150]})
    mix = Mixture(
        [{"json_path": str(data), "sampling_strategy": "first:10", "exclude": str(exclude), "repeat": 2}],
        root=files,
    )
    ref = load_records(data)
    keep = [0, 1, 3, 4, 6, 7, 8]
    assert mix.datasets[0].excluded == 3 and mix.datasets[0].selected.tolist() == keep * 2
    assert list(mix) == [ref[i] for i in keep * 2]
    row = mix.summary().row(0, named=True)
    assert row["excluded"] == 3 and row["selected"] == 14
    write_exclude(exclude, {data: [211]})
    with pytest.raises(MixtureError, match="record 211"):
        Mixture([{"json_path": str(data), "exclude": str(exclude)}])


def test_repeat_of_an_end_selection(files):
    data = files / "jsons" / "Lines-211.jsonl"
    mix = Mixture([{"json_path": str(data), "sampling_strategy": "end:10", "repeat": 2.5}], seed=1)
    sel = mix.datasets[0].selected.tolist()
    assert sel[:20] == list(range(201, 211)) * 2 and len(sel) == 25 and set(sel[20:]) <= set(range(201, 211))


def test_exclude_after_end_and_random_strategies(files, tmp_path):
    data = files / "jsons" / "Lines-211.jsonl"
    exclude = tmp_path / "bad.json"
    plain = Mixture([{"json_path": str(data), "sampling_strategy": "random:30"}], seed=4)
    chosen = plain.datasets[0].selected.tolist()
    dropped = chosen[1:4] + [200]
    write_exclude(exclude, {data: dropped + [205]})
    mix = Mixture(
        [
            {"json_path": str(data), "sampling_strategy": "random:30", "exclude": str(exclude)},
            {"json_path": str(data), "sampling_strategy": "end:20", "exclude": str(exclude)},
        ],
        seed=4,
    )
    rnd, end = mix.datasets
    assert rnd.selected.tolist() == [i for i in chosen if i not in dropped + [205]]
    assert end.selected.tolist() == [i for i in range(191, 211) if i not in (200, 205)] and end.excluded == 2


# -- malformed stages --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"json_path": "jsons/Lines-211.jsonl", "sampling_strategy": "shuffle:10"},
            "unknown sampling_strategy",
        ),
        ({"json_path": "jsons/Lines-211.jsonl", "sampling_strategy": "first:-5"}, "non-negative number"),
        ({"json_path": "jsons/Lines-211.jsonl", "sampling_strategy": "random:abc"}, "non-negative number"),
        ({"json_path": "jsons/Lines-211.jsonl", "sampling_strategy": "end:"}, "non-negative number"),
        ({"json_path": "jsons/Lines-211.jsonl", "sampling_strategy": "first:1.5"}, "must be an integer"),
        ({"json_path": "jsons/Lines-211.jsonl", "sampling_strategy": "first:150%"}, "cannot exceed 100%"),
        ({"json_path": "jsons/Lines-211.jsonl", "sampling_strategy": "first"}, "needs a number"),
        ({"json_path": "jsons/Lines-211.jsonl", "sampling_strategy": "all:5"}, "takes no number"),
        ({"json_path": "jsons/Lines-211.jsonl", "sampling_strategy": 10}, "must be a string"),
        ({"json_path": "jsons/Lines-211.jsonl", "repeat": -1}, "repeat must be >= 0"),
        ({"json_path": "jsons/Lines-211.jsonl", "repeat": "twice"}, "repeat must be a number"),
        ({"json_path": "jsons/Lines-211.jsonl", "repeat": True}, "repeat must be a number"),
        ({"json_path": "jsons/Lines-211.jsonl", "image_folder": 3}, "image_folder must be a string"),
        (
            {"json_path": "jsons/Lines-211.jsonl", "exclude": "nope.json"},
            "exclude file 'nope.json' not found",
        ),
        ({"json_path": "jsons/data.parquet"}, "unsupported file type"),
        ({"sampling_strategy": "all"}, "json_path is missing"),
        ({"json_path": 12}, "json_path is missing or not a string"),
        (["jsons/Lines-211.jsonl"], "must be a mapping"),
    ],
)
def test_malformed_entries_name_the_yaml_and_the_entry(files, entry, message):
    stage = make_stage(files, [{"json_path": "jsons/Pretty-300.json"}, entry], name="bad-entry.yaml")
    with pytest.raises(MixtureError) as err:
        Mixture.from_yaml(stage, root=files)
    text = str(err.value)
    assert message in text and str(stage) in text and "datasets[1]" in text
    assert isinstance(err.value, FusionFastError)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("other: 1\n", "expected a mapping with a 'datasets' list"),
        ("- json_path: a.json\n", "expected a mapping with a 'datasets' list"),
        ("datasets: a.json\n", "'datasets' must be a list"),
        ("datasets: []\n", "'datasets' is empty"),
        ("datasets: [\n", "not valid YAML"),
    ],
)
def test_malformed_stage_files(tmp_path, text, message):
    stage = write(tmp_path / "stage.yaml", text)
    with pytest.raises(MixtureError, match=message) as err:
        Mixture.from_yaml(stage, root=tmp_path)
    assert str(stage) in str(err.value)


def test_missing_files_list_every_path_tried(files, tmp_path):
    stage_dir = tmp_path / "scripts"
    stage_dir.mkdir()
    stage = make_stage(
        stage_dir,
        [{"json_path": "jsons/Pretty-300.json"}, {"json_path": "gone/A.json"}, {"json_path": "/abs/B.jsonl"}],
    )
    with pytest.raises(MixtureError) as err:
        Mixture.from_yaml(stage, root=files)
    text = str(err.value)
    assert str(files / "gone" / "A.json") in text and str(stage_dir / "gone" / "A.json") in text
    assert "/abs/B.jsonl" in text and "datasets[1]" in text and "datasets[2]" in text
    with pytest.raises(MixtureError, match="stage YAML not found"):
        Mixture.from_yaml(tmp_path / "nope.yaml")


def test_bad_arguments(files):
    with pytest.raises(MixtureError, match="seed must be an integer"):
        Mixture(["x.json"], seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(MixtureError, match="at least one dataset"):
        Mixture([])
    with pytest.raises(MixtureError, match="Mixture.from_yaml"):
        Mixture(str(files / "stage.yaml"))  # type: ignore[arg-type]


def test_rebuild_never_needs_an_index(tmp_path):
    write_file(tmp_path / "a.jsonl", records=5)
    with pytest.raises(fusion_fast.IndexMissingError):
        Mixture([tmp_path / "a.jsonl"], rebuild="never")
    assert len(Mixture([tmp_path / "a.jsonl"])) == 5
    assert len(Mixture([tmp_path / "a.jsonl"], rebuild="never")) == 5


# -- summary and export ------------------------------------------------------------------------------------


def test_summary_matches_the_records(files):
    entries = [
        *ALL_FIRST_END[:3],
        {"json_path": "jsons/Pretty-300.json", "sampling_strategy": "random:30", "repeat": 1.5},
    ]
    mix = Mixture(entries, root=files, seed=3)
    df = mix.summary(total=True)
    assert df["dataset"].to_list() == ["Pretty-300", "Compact-257", "Lines-211", "Pretty-300", "total"]
    assert df["records"].to_list() == [300, 257, 211, 300, 1068]
    assert df["strategy"].to_list()[:4] == ["all", "first:100", "end:50", "random:30"]
    assert df["repeat"].to_list()[:4] == [1.0, 1.0, 1.0, 1.5]
    assert df["selected"].to_list() == [300, 100, 50, 45, 495]
    assert df["share"].to_list() == pytest.approx([300 / 495, 100 / 495, 50 / 495, 45 / 495, 1.0])
    bounds = [*mix.offsets.tolist()]
    groups = [list(mix[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)] + [list(mix)]
    for row, records in zip(df.iter_rows(named=True), groups, strict=True):
        words = [-x if x < 0 else x for x in fusion_modality_lengths(records)]
        images = [r.get("image") for r in records]
        assert row["image"] == sum("image" in r for r in records)
        assert row["video"] == sum("video" in r for r in records)
        assert row["text_only"] == sum("image" not in r and "video" not in r for r in records)
        assert row["multi_image"] == sum(isinstance(i, list) and len(i) > 1 for i in images)
        assert row["words_mean"] == pytest.approx(np.mean(words))
        assert [row["words_p50"], row["words_p95"]] == pytest.approx(np.percentile(words, [50, 95]).tolist())
        assert row["excluded"] == 0
    assert sum(df["multi_image"].to_list()[:4]) > 0 and sum(df["video"].to_list()[:4]) > 0


def test_summary_of_an_empty_selection(files):
    row = Mixture([{"json_path": "jsons/Lines-211.jsonl", "sampling_strategy": "first:0"}], root=files)
    df = row.summary(total=True)
    assert df["selected"].to_list() == [0, 0] and df["words_mean"].to_list() == [None, None]


def test_export_is_the_selection_in_order_one_line_each(files, tmp_path):
    mix = Mixture.from_yaml(make_stage(files, ALL_FIRST_END + RANDOM_STAGE), root=files, seed=9)
    out = tmp_path / "out.jsonl"
    size = mix.export_jsonl(out, batch=37)
    raw = out.read_bytes()
    assert size == len(raw) and raw.endswith(b"\n")
    lines = raw.split(b"\n")[:-1]
    assert len(lines) == len(mix) and all(b"\r" not in line for line in lines)
    assert [json.loads(line) for line in lines] == list(mix)
    # compact: the pretty-printed record's bytes without the whitespace outside its strings
    pretty = files / "jsons" / "Pretty-300.json"
    start, length = mix.datasets[0].index.span(0)
    parts = re.split(rb'("(?:[^"\\]|\\.)*")', pretty.read_bytes()[start : start + length])
    assert lines[0] == b"".join(p if k % 2 else p.translate(None, b" \t\r\n") for k, p in enumerate(parts))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_export_failure_leaves_nothing(files, tmp_path):
    mix = Mixture([{"json_path": "jsons/Lines-211.jsonl"}], root=files)
    with pytest.raises(fusion_fast.FusionFastIOError):
        mix.export_jsonl(tmp_path / "no-such-dir" / "out.jsonl")
    assert list(tmp_path.iterdir()) == []


# -- pickling and DataLoader workers ----------------------------------------------------------------------


def test_pickle_is_small_and_equal(files):
    mix = Mixture.from_yaml(make_stage(files, ALL_FIRST_END + RANDOM_STAGE), root=files, seed=4)
    blob = pickle.dumps(mix)
    assert len(blob) < 200 * len(mix.datasets) + 2000 < 8 * len(mix)
    back = pickle.loads(blob)
    assert len(back) == len(mix) and selections(back) == selections(mix) and back.seed == 4
    assert back[len(mix) // 2] == mix[len(mix) // 2]


def test_unpickling_notices_a_changed_mixture(files, tmp_path):
    data = files / "jsons" / "Lines-211.jsonl"
    exclude = tmp_path / "ex.json"
    write_exclude(exclude, {data: [1]})
    blob = pickle.dumps(Mixture([{"json_path": str(data), "exclude": str(exclude)}]))
    write_exclude(exclude, {data: [1, 2]})
    with pytest.raises(MixtureError, match="changed"):
        pickle.loads(blob)


class MixtureItems:
    """The smallest torch Dataset over a mixture (module level so spawn workers can import it)."""

    def __init__(self, mix: Mixture) -> None:
        self.mix = mix

    def __len__(self) -> int:
        return len(self.mix)

    def __getitem__(self, i: int) -> Any:
        return {"record": json.dumps(self.mix[i]), "source": self.mix.source(i), "pid": os.getpid()}


def as_list(batch: list[Any]) -> list[Any]:
    return batch


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_dataloader_workers(files, method):
    torch_data = pytest.importorskip("torch.utils.data")
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} start method here")
    mix = Mixture.from_yaml(make_stage(files, ALL_FIRST_END + RANDOM_STAGE), root=files, seed=2)
    loader = torch_data.DataLoader(
        MixtureItems(mix), batch_size=16, num_workers=2, multiprocessing_context=method, collate_fn=as_list
    )
    items = [item for batch in loader for item in batch]
    assert [json.loads(item["record"]) for item in items] == list(mix)
    assert [item["source"] for item in items] == [mix.source(i) for i in range(len(mix))]
    assert len({item["pid"] for item in items}) == 2 and os.getpid() not in {item["pid"] for item in items}
