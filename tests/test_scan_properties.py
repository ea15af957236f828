"""Hypothesis: on random LLaVA-like documents with adversarial strings, the parallel scan with chunks of a
few bytes equals the sequential reference, every record equals `json.loads` of it, and the words column
equals Python's own `split()` count."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fusion_fast import _core

# Characters that matter to a chunked scanner and to Python's whitespace set.
TRICKY = list('[]{},:"\\/ \n\t\r') + [
    "\\\\",
    "\\\\\\",
    "\u001c",
    "\u001f",
    "\u0085",
    "\u00a0",
    "\u1680",
    "\u2000",
    "\u200a",
    "\u2028",
    "\u202f",
    "\u205f",
    "\u3000",
    "\u200b",
    "\ufeff",
    "é",
    "日本",
    "😀",
    "<image>",
    "\x0b",
    "\x0c",
]
text = st.lists(st.one_of(st.sampled_from(TRICKY), st.text(max_size=4)), max_size=10).map("".join)
turn = st.fixed_dictionaries({"from": st.sampled_from(["human", "gpt"]), "value": text})
scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    text,
)
record = st.fixed_dictionaries(
    {"id": text, "conversations": st.lists(turn, max_size=4)},
    optional={
        "image": st.one_of(st.none(), text, st.lists(text, max_size=3)),
        "video": text,
        "extra": st.recursive(
            scalar, lambda c: st.lists(c, max_size=3) | st.dictionaries(text, c, max_size=3), max_leaves=6
        ),
    },
)


def columns(data: bytes, fmt: str, **kw) -> dict[str, np.ndarray]:
    raw = _core.scan_bytes(data, fmt, **kw)
    types = {"offset": "<u8", "length": "<u4", "words": "<u4", "images": "<u2", "turns": "<u2", "flags": "u1"}
    return {k: np.frombuffer(v, dtype=types[k]) for k, v in raw.items()}


def check(data: bytes, fmt: str, records: list, chunk: int) -> None:
    seq = columns(data, fmt, sequential=True)
    par = columns(data, fmt, chunk_size=chunk)
    for k in seq:
        np.testing.assert_array_equal(par[k], seq[k], err_msg=k)
    assert len(seq["offset"]) == len(records)
    for i, rec in enumerate(records):
        o, n = int(seq["offset"][i]), int(seq["length"][i])
        assert json.loads(data[o : o + n]) == rec
        assert seq["words"][i] == sum(len(t["value"].split()) for t in rec["conversations"])
        assert seq["turns"][i] == len(rec["conversations"])
        image = rec.get("image")
        assert seq["images"][i] == (
            1 if isinstance(image, str) else len(image) if isinstance(image, list) else 0
        )
        assert bool(seq["flags"][i] & 1) == ("image" in rec)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(record, max_size=6), st.sampled_from([None, 1, 2, 4]), st.integers(1, 40), st.booleans())
def test_json_array(records, indent, chunk, ascii_only):
    data = json.dumps(records, indent=indent, ensure_ascii=ascii_only).encode()
    check(data, "json", records, chunk)


@settings(max_examples=150, deadline=None)
@given(st.lists(record, max_size=6), st.integers(1, 40), st.sampled_from(["\n", "\r\n", "\n\n  \n"]))
def test_json_lines(records, chunk, newline):
    data = "".join(json.dumps(r, ensure_ascii=False) + newline for r in records).encode()
    check(data, "jsonl", records, chunk)
    assert lines_oracle(data) == records


@settings(max_examples=200, deadline=None)
@given(st.lists(record, min_size=1, max_size=4), st.data(), st.integers(1, 24))
def test_damaged_documents_give_the_same_error_at_any_chunk_size(records, data, chunk):
    doc = bytearray(json.dumps(records, indent=1).encode())
    for _ in range(data.draw(st.integers(1, 3))):
        doc[data.draw(st.integers(0, len(doc) - 1))] = data.draw(
            st.sampled_from(list(b'[]{},"\\: x0\n\x01\xff'))
        )
    doc = bytes(doc)
    try:
        json.loads(doc)
        python_ok = True
    except ValueError:
        python_ok = False
    errors = []
    for kw in ({"sequential": True}, {"chunk_size": chunk}):
        try:
            columns(doc, "json", **kw)
            errors.append(None)
        except ValueError as e:
            errors.append((type(e), str(e)))
    assert errors[0] == errors[1]
    want = json.loads(doc) if python_ok else None
    if isinstance(want, list):
        # Python accepts it as an array: so must we (depth and surrogates are within limits here), and
        # find the same records.
        assert errors[0] is None
        assert_records(doc, "json", want)
    else:
        assert errors[0] is not None


def assert_records(doc: bytes, fmt: str, want: list) -> None:
    """The scan finds exactly `want`: as many records, each one's bytes decoding to the same value."""
    cols = columns(doc, fmt, sequential=True)
    assert len(cols["offset"]) == len(want)
    for i, value in enumerate(want):
        o, n = int(cols["offset"][i]), int(cols["length"][i])
        assert json.loads(doc[o : o + n]) == value


def lines_oracle(doc: bytes) -> list | None:
    """JSON Lines by definition: after JSON whitespace each line is empty or exactly one JSON value,
    read by `json.loads` on that line alone (a byte-order mark is no JSON). None when invalid."""
    if doc.startswith(b"\xef\xbb\xbf"):
        return None
    out = []
    for line in doc.split(b"\n"):
        if not line.strip(b" \t\r"):
            continue
        try:
            out.append(json.loads(line.decode("utf-8")))
        except ValueError:
            return None
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(record, min_size=1, max_size=4), st.data(), st.integers(1, 24))
def test_damaged_json_lines_are_judged_like_json_loads(records, data, chunk):
    ascii_only = data.draw(st.booleans())
    lines = [json.dumps(r, ensure_ascii=ascii_only) for r in records]
    # A separator after a record, `{"a": 1},`: what a reader treating lines like array items lets through.
    for k in data.draw(st.lists(st.integers(0, len(lines) - 1), max_size=2)):
        lines[k] += data.draw(st.sampled_from([",", " ,", ", ", "]", "}"]))
    doc = bytearray("\n".join(lines).encode() + data.draw(st.sampled_from([b"\n", b"", b"\r\n"])))
    for _ in range(data.draw(st.integers(0, 2))):
        doc[data.draw(st.integers(0, len(doc) - 1))] = data.draw(
            st.sampled_from(list(b'[]{},"\\: x0\n\x01\xff'))
        )
    doc = bytes(doc)
    errors = []
    for kw in ({"sequential": True}, {"chunk_size": chunk}):
        try:
            columns(doc, "jsonl", **kw)
            errors.append(None)
        except ValueError as e:
            errors.append((type(e), str(e)))
    assert errors[0] == errors[1]
    want = lines_oracle(doc)
    if want is None:
        assert errors[0] is not None, doc
    else:
        assert errors[0] is None, (errors[0], doc)
        assert_records(doc, "jsonl", want)


def test_a_separator_after_a_json_lines_record_is_an_error():
    for doc in (b'{"a":1},\n{"a":2}\n', b'{"a":1}\n{"a":2},\n', b'{"a":1} ,\n', b'{"a":1},'):
        with pytest.raises(ValueError, match="unexpected data after record"):
            columns(doc, "jsonl", sequential=True)
        with pytest.raises(ValueError, match="unexpected data after record"):
            columns(doc, "jsonl", chunk_size=3)


json_value = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**40), 10**40),
        text,
        st.floats(allow_nan=False, allow_infinity=False),
        st.sampled_from([0.0, -0.0, 1e300, 5e-324]),
    ),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(json_value, max_size=5), st.sampled_from([None, 2]), st.booleans())
def test_records_decode_exactly_like_json_loads(tmp_path_factory, values, indent, ascii_only):
    """`idx[i]` (the Rust builder) equals `json.loads` on every kind of value, escapes included."""
    import fusion_fast as ff

    path = tmp_path_factory.mktemp("v") / "v.json"
    path.write_text(json.dumps(values, indent=indent, ensure_ascii=ascii_only), encoding="utf-8")
    idx = ff.open(path)
    decoded = [idx[i] for i in range(len(idx))]
    assert decoded == values
    assert [type(v) for v in decoded] == [type(v) for v in values]
    assert idx.get_many(range(len(idx))) == values


def test_special_numbers_and_surrogates(tmp_path):
    import fusion_fast as ff

    doc = '[-0, -0.0, 1E400, 123456789012345678901234567890, "\\ud800x", "\\ud83d\\ude00", 1e-400, 0.1]'
    path = tmp_path / "n.json"
    path.write_text(doc)
    got = [ff.open(path)[i] for i in range(8)]
    want = json.loads(doc)
    assert got[2] == float("inf") and got == want
    assert [type(v) for v in got] == [type(v) for v in want]
    assert str(got[1]) == "-0.0" and got[0] == 0 and isinstance(got[0], int)
