"""Record reads and FusionDataset items checked against oracles written from the specifications, not
against another implementation in this project: a record's bytes are where JSON's grammar (Python's
`json.JSONDecoder.raw_decode` walking the array) or JSON Lines' rule (one value per `\\n`-terminated
line, JSON whitespace around it) puts them, its value is what `json.loads` makes of them, and an item is
that value with `image` resolved and `_source` added as FusionDataset's docstring and docs/training.md
say."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader  # noqa: E402

import fusion_fast as ff  # noqa: E402
from fusion_fast._core import ItemSources  # noqa: E402
from fusion_fast.torch import SHIP_ENV, FusionDataset  # noqa: E402

#: JSON's whitespace (RFC 8259 `ws`): what may surround a value in an array or on a JSON Lines line.
JSON_WS = b" \t\r\n"


def records() -> list[str]:
    """Record texts, each written by hand or by `json.dumps` so that the file keeps its escapes:
    non-ASCII text raw and escaped, every short escape, lone surrogate escapes (which `json.loads`
    keeps as lone surrogates), nesting, integers past 64 bits and floats at the edges of binary64."""
    fields = [
        '"id": "plain"',
        '"id": "unicode raw", "t": "naïve 日本語 😀 \u2028 \u2029"',
        '"id": "unicode escaped", "t": "na\\u00efve \\u65e5\\u672c \\ud83d\\ude00"',
        '"id": "short escapes", "t": "\\" \\\\ \\/ \\b \\f \\n \\r \\t"',
        '"id": "lone high", "t": "x\\ud800y", "u": "\\udbff"',
        '"id": "lone low", "t": "\\udc00\\ud800"',
        '"id": "nested", "n": {"a": [1, [2, [3, {"b": null}]], {}], "c": {"d": {"e": [true, false]}}}',
        '"id": "big ints", "b": [18446744073709551616, -9223372036854775809, ' + str(3**100) + ", 0, -0]",
        '"id": "floats", "f": [1e308, -1.7976931348623157e308, 5e-324, 2.2250738585072014e-308,'
        " -0.0, 0.1, 1E+2, 1.0e-7, 123456789.123456789]",
        '"id": "image", "image": "a/b.png"',
        '"id": "images", "image": ["x.png", "/abs/y.png", "sub/../z.png"]',
        '"id": "absolute", "image": "/abs/only.png"',
        '"id": "braces in strings", "t": "}]{[,:\\"", "k}": "]"',
    ]
    conv = '"conversations": [{"from": "human", "value": "q{k}"}, {"from": "gpt", "value": "a{k}"}]'
    texts = ["{" + f + ", " + conv.replace("{k}", str(k)) + "}" for k, f in enumerate(fields)]
    texts += [
        json.dumps(
            {
                "id": "dumped",
                "t": "\ud834",
                "e": "\x00\x1f\x7f",
                "conversations": [{"from": "human", "value": "é"}],
            }
        ),
    ]
    texts.append(
        json.dumps(
            {"id": "dumped raw", "t": "é\u2028😀", "conversations": [{"from": "human", "value": "v"}]},
            ensure_ascii=False,
        )
    )
    return texts


def write_array(path: Path, texts: list[str]) -> Path:
    """A JSON array with varied whitespace between and around the records."""
    seps = [",", " ,\n  ", "\t,\r\n", ",\n\n", " , "]
    body = "".join(t + (seps[k % len(seps)] if k < len(texts) - 1 else "") for k, t in enumerate(texts))
    path.write_bytes((" \n[\n  " + body + "\n]\n").encode("utf-8", "surrogatepass"))
    return path


def write_lines(path: Path, texts: list[str]) -> Path:
    """JSON Lines, with `\\r\\n` on some lines and JSON whitespace around some values."""
    ends = ["\n", "\r\n", "  \n", "\n"]
    lead = ["", "  ", "\t", ""]
    body = "".join(lead[k % 4] + t + ends[k % 4] for k, t in enumerate(texts))
    path.write_bytes(body.encode("utf-8", "surrogatepass"))
    return path


def array_spans(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) in bytes of each element of the JSON array `data`, found by walking it with
    `raw_decode` (JSON's grammar) over its text; the text is ASCII up to each value's start only where
    the file is, so offsets are mapped back to bytes through the UTF-8 lengths of the text before them."""
    text = data.decode("utf-8")
    decoder = json.JSONDecoder()

    def skip_ws(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    i = skip_ws(0)
    assert text[i] == "["
    i = skip_ws(i + 1)
    spans = []
    while text[i] != "]":
        _, end = decoder.raw_decode(text, i)
        start_b = len(text[:i].encode("utf-8"))
        spans.append((start_b, len(text[i:end].encode("utf-8"))))
        i = skip_ws(end)
        if text[i] == ",":
            i = skip_ws(i + 1)
    assert skip_ws(i + 1) == len(text)
    return spans


def line_spans(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) of each JSON Lines value: lines end at `\\n` (a `\\r` before it is JSON
    whitespace, like the spaces and tabs around the value); blank lines hold no record."""
    spans, at = [], 0
    for line in data.split(b"\n"):
        value = line.strip(JSON_WS)
        if value:
            spans.append((at + len(line) - len(line.lstrip(JSON_WS)), len(value)))
        at += len(line) + 1
    return spans


def oracle_records(path: Path) -> tuple[list[bytes], list[Any]]:
    """Each record's bytes (from `open(path, 'rb')` at the spans above) and its value: `json.loads` of
    the whole file for an array (checked against the values of the bytes), of each line for JSONL."""
    with open(path, "rb") as f:
        data = f.read()
    spans = array_spans(data) if path.suffix == ".json" else line_spans(data)
    raw = [data[o : o + n] for o, n in spans]
    values = [json.loads(r) for r in raw]
    if path.suffix == ".json":
        assert typed(json.loads(data)) == typed(values)
    return raw, values


def typed(value: Any) -> Any:
    """`value` with every type and key order made visible, so that equality also tells 1 from 1.0 and
    True, 0.0 from -0.0, and {"a", "b"} from {"b", "a"}."""
    if isinstance(value, dict):
        return ("dict", [(k, typed(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [typed(v) for v in value])
    if isinstance(value, float):
        return ("float", value.hex() if math.isfinite(value) else repr(value))
    return (type(value).__name__, value)


@pytest.fixture(params=[".json", ".jsonl"])
def data_file(request, tmp_path) -> Path:
    path = tmp_path / f"records{request.param}"
    return (write_array if request.param == ".json" else write_lines)(path, records())


def test_the_oracle_sees_every_record(data_file):
    raw, values = oracle_records(data_file)
    assert [v["id"] for v in values] == [json.loads(t)["id"] for t in records()]
    assert values[4]["t"] == "x\ud800y" and values[7]["b"][0] == 2**64


def test_record_spans_and_bytes_are_the_grammars(data_file, tmp_path):
    """`span`, `raw` and the positional reads behind `ItemSources.pack` give each record's bytes exactly
    where the grammar puts them; `get` and `Shipped.decode` give `json.loads` of them."""
    raw, values = oracle_records(data_file)
    with open(data_file, "rb") as f:
        data = f.read()
    ix = ff.open(data_file, index_dir=tmp_path / "index")
    assert len(ix) == len(raw)
    for i, want in enumerate(raw):
        offset, length = ix.span(i)
        assert data[offset : offset + length] == want, i
        assert bytes(ix.raw(i)) == want, i
        assert typed(ix[i]) == typed(values[i]), i

    sources = ItemSources([ix._core], ["d"], [""])
    order = np.array([3, 0, len(raw) - 1, 5, 5, 4, 7, 8, 1, 2], dtype="<i8")
    datasets = np.zeros(len(order), dtype="<i8")
    packed = sources.pack(datasets.tobytes(), order.tobytes(), tape=False)
    assert packed.data == b"".join(raw[i] for i in order)
    assert list(np.frombuffer(packed.lengths, "<u4")) == [len(raw[i]) for i in order]
    for tape in (False, True):
        items = sources.pack(datasets.tobytes(), order.tobytes(), tape=tape).decode()
        want_items = [{**values[i], "_source": {"dataset": "d", "index": int(i)}} for i in order]
        assert typed(items) == typed(want_items), tape


def resolved(value: Any, folder: str | None) -> Any:
    """FusionDataset's image rule: FUSION's `os.path.join(folder, p)` for each path, absolute kept."""
    if folder is None:
        return value
    if isinstance(value, list):
        return [os.path.join(folder, p) for p in value]
    return os.path.join(folder, value)


def item_as_documented(record: Any, name: str, number: int, folder: str | None) -> Any:
    item = dict(record)
    if "image" in item:
        item["image"] = resolved(item["image"], folder)
    item["_source"] = {"dataset": name, "index": number}
    return item


def with_type_name(batch: Any) -> tuple[str, Any]:
    """The worker's batch as it is shipped, with the name of its type there."""
    return type(batch).__name__, batch


@pytest.mark.parametrize("ship", ["json", "tape"])
def test_items_from_dataloader_workers_follow_the_documented_rules(tmp_path, ship, monkeypatch):
    """A stage of a JSON array (its own image folder) and JSON Lines (the dataset's `image_folder`),
    loaded by two forked workers shipping JSON or tapes: each item is `json.loads` of its record with
    `image` joined to its folder and `_source` naming dataset and record."""
    monkeypatch.setenv(SHIP_ENV, ship)
    texts = records()
    (tmp_path / "data").mkdir()
    write_array(tmp_path / "data" / "arr.json", texts)
    write_lines(tmp_path / "data" / "lines.jsonl", texts[::-1])
    own = tmp_path / "own images"
    (tmp_path / "stage.yaml").write_text(
        f"datasets:\n  - json_path: data/arr.json\n    image_folder: {own}\n"
        "  - json_path: data/lines.jsonl\n",
        encoding="utf-8",
    )
    glob = str(tmp_path / "global")
    ds = FusionDataset(tmp_path / "stage.yaml", image_folder=glob, root=tmp_path)
    _, arr = oracle_records(tmp_path / "data" / "arr.json")
    _, lines = oracle_records(tmp_path / "data" / "lines.jsonl")
    want = [item_as_documented(r, "arr", i, str(own)) for i, r in enumerate(arr)]
    want += [item_as_documented(r, "lines", i, glob) for i, r in enumerate(lines)]
    assert len(ds) == len(want)
    loader = DataLoader(
        ds, batch_size=4, num_workers=2, collate_fn=with_type_name, multiprocessing_context="fork"
    )
    batches = list(loader)
    assert {name for name, _ in batches} == {"PackedRecords"}  # the shipped path, not pickled items
    got = [item for _, batch in batches for item in batch]
    assert typed(got) == typed(want)
    # and in-process, one by one
    assert typed([ds[i] for i in range(len(ds))]) == typed(want)
