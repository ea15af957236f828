"""Inputs someone else wrote: an index whose header was crafted (its checksums recomputed, as anyone
can: they are not secret) and shipped tapes that fusion-fast did not pack. Each is refused with the
documented error, or the index rebuilt; none may crash the process, panic or give wrong data later."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

import fusion_fast as ff
from fusion_fast import _core

from .conftest import write

FIXED_HEADER = 64
COLUMN_ENTRY = 40
RECORDS = [{"id": i, "conversations": [{"from": "human", "value": f"é {i}"}]} for i in range(20)]


def reseal(raw: bytearray) -> None:
    """Recomputes the checksums the way the writer does: each column's xxh3-64 over the bytes it names
    (where they lie inside the file), then the header's over every header byte before it."""
    (header_len,) = struct.unpack_from("<I", raw, 12)
    (records,) = struct.unpack_from("<Q", raw, 40)
    (n_columns,) = struct.unpack_from("<I", raw, 56)
    for k in range(n_columns):
        entry = FIXED_HEADER + k * COLUMN_ENTRY
        size = raw[entry + 16]
        (offset,) = struct.unpack_from("<Q", raw, entry + 24)
        if offset + records * size <= len(raw):
            struct.pack_into(
                "<Q", raw, entry + 32, xxhash.xxh3_64_intdigest(raw[offset : offset + records * size])
            )
    struct.pack_into("<Q", raw, header_len - 8, xxhash.xxh3_64_intdigest(bytes(raw[: header_len - 8])))


def column_offset(raw: bytes, k: int) -> int:
    return struct.unpack_from("<Q", raw, FIXED_HEADER + k * COLUMN_ENTRY + 24)[0]


# (what, header byte position, new u64 value) given the index bytes.
DAMAGE = {
    "a column offset that wraps": lambda raw: (FIXED_HEADER + 24, 2**64 - 64),
    "a record count whose size overflows": lambda raw: (40, 2**61),
    "a column past the end of the file": lambda raw: (FIXED_HEADER + 5 * COLUMN_ENTRY + 24, 1 << 40),
    "a column over the header": lambda raw: (FIXED_HEADER + COLUMN_ENTRY + 24, 0),
    "two columns that overlap": lambda raw: (FIXED_HEADER + 2 * COLUMN_ENTRY + 24, column_offset(raw, 1)),
    "a misaligned column": lambda raw: (FIXED_HEADER + 3 * COLUMN_ENTRY + 24, column_offset(raw, 3) + 8),
    "more records than the columns hold": lambda raw: (40, 25),
    "a record outside the data file": lambda raw: (column_offset(raw, 0) + 8, 10**6),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_crafted_index_is_refused_or_rebuilt(tmp_path, damage):
    path = write(tmp_path / "d.json", json.dumps(RECORDS, ensure_ascii=False))
    index = Path(ff.open(path).index_path)
    raw = bytearray(index.read_bytes())
    at, value = DAMAGE[damage](raw)
    struct.pack_into("<Q", raw, at, value)
    reseal(raw)
    index.write_bytes(bytes(raw))
    with pytest.raises(ff.CorruptIndexError) as info:
        ff.open(path, rebuild="never")
    assert str(index) in str(info.value) and "index is corrupt" in str(info.value)
    idx = ff.open(path)
    assert idx.built and len(idx) == len(RECORDS)
    assert [idx[i] for i in range(len(idx))] == RECORDS


def test_a_span_outside_the_data_file_is_refused_when_checksums_are_not_verified(tmp_path):
    """Large indexes are opened without recomputing every checksum: a record that lies outside the
    data file must still be an error where it is read, never a short read handed to the caller."""
    path = write(tmp_path / "d.json", json.dumps(RECORDS, ensure_ascii=False))
    index = Path(ff.open(path).index_path)
    raw = bytearray(index.read_bytes())
    struct.pack_into("<Q", raw, column_offset(raw, 0) + 8, 10**6)  # record 1's offset
    reseal(raw)
    index.write_bytes(bytes(raw))
    idx = ff.open(path, rebuild="never", verify=False)
    assert idx[0] == RECORDS[0]
    for read in (lambda: idx[1], lambda: idx.raw(1), lambda: idx.span(1), lambda: idx.get_many([0, 1])):
        with pytest.raises(ff.CorruptIndexError, match="outside the data file"):
            read()


def test_resealing_matches_the_writer(tmp_path):
    """Resealing an undamaged index changes nothing: the test recomputes checksums as the writer does."""
    path = write(tmp_path / "d.json", json.dumps(RECORDS))
    index = Path(ff.open(path).index_path)
    raw = bytearray(index.read_bytes())
    before = bytes(raw)
    reseal(raw)
    assert bytes(raw) == before


# Tapes (see rust/tape.rs): a tag byte, then for strings a u32 code point count and the payload.
def tape_str(tag: int, payload: bytes, count: int) -> bytes:
    return bytes([tag]) + struct.pack("<I", count) + payload


def record_tape(value: bytes) -> bytes:
    """The tape of the object {"k": value}."""
    return bytes([11]) + struct.pack("<I", 1) + tape_str(6, b"k", 1) + value


def decode(tape: bytes) -> object:
    one = (0).to_bytes(8, "little")
    return _core.Shipped(tape, struct.pack("<I", len(tape)), one, one, ["d"], [""], tape=True).decode()


def ucs2(*units: int) -> bytes:
    return tape_str(8, struct.pack(f"<{len(units)}H", *units), len(units))


def ucs4(*cps: int) -> bytes:
    return tape_str(9, struct.pack(f"<{len(cps)}I", *cps), len(cps))


BAD_TAPES = {
    "ASCII tag, UTF-8 bytes": tape_str(6, "é".encode(), 2),
    "ASCII tag, a byte over 0x7f": tape_str(6, b"a\xff", 2),
    "Latin-1 tag, ASCII text": tape_str(7, b"ab", 2),
    "Latin-1 tag, empty": tape_str(7, b"", 0),
    "UCS-2 tag, Latin-1 text": ucs2(0xE9),
    "UCS-2 tag, ASCII text": ucs2(0x61, 0x62),
    "UCS-4 tag, BMP text": ucs4(0x65E5),
    "UCS-4 tag, code point 0x7FFFFFFF": ucs4(0x7FFFFFFF),
    "UCS-4 tag, code point 0x110000": ucs4(0x1F600, 0x110000),
    "a big integer that is not digits": tape_str(5, b"12a", 3),
    "a big integer with a separator": tape_str(5, b"1_000", 5),
    "a big integer with spaces": tape_str(5, b" 12", 3),
    "an empty big integer": tape_str(5, b"", 0),
    "a lone minus sign": tape_str(5, b"-", 1),
    "a count past the payload": tape_str(6, b"ab", 3),
    "nesting deeper than JSON records may": b"\x0a\x01\x00\x00\x00" * 300 + b"\x00",
}


@pytest.mark.parametrize("what", sorted(BAD_TAPES))
def test_a_malformed_tape_is_a_value_error(what):
    with pytest.raises(ValueError, match="shipped batch is malformed"):
        decode(record_tape(BAD_TAPES[what]))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (ucs2(0xD800), "\ud800"),
        (ucs2(0xE9, 0xDFFF, 0x100), "\xe9\udfff\u0100"),
        (ucs4(0x10FFFF, 0x41), "\U0010ffff\x41"),
        (tape_str(7, b"\xe9t\xe9", 3), "été"),
        (tape_str(5, b"-123456789012345678901234567890", 31), -123456789012345678901234567890),
    ],
)
def test_valid_tapes_at_the_edges_decode(value, expected):
    (record,) = decode(record_tape(value))
    assert record["k"] == expected and hash(record["k"]) == hash(expected)
    if isinstance(expected, str):
        assert list(record["k"]) == list(expected) and record["k"].encode("utf-8", "surrogatepass")


def test_a_malformed_tape_leaves_no_wrong_string_in_the_cache(tmp_path):
    with pytest.raises(ValueError, match="shipped batch is malformed"):
        decode(record_tape(tape_str(6, "é".encode(), 2)))
    path = write(tmp_path / "e.json", json.dumps([{"k": "é"}], ensure_ascii=False))
    assert ff.open(path)[0]["k"] == "é"


def walk_strings(value: object) -> None:
    """Touches every string of a decoded value the ways that crash on an invalid `str`."""
    if isinstance(value, str):
        assert "".join(list(value)) == value and len(value.encode("utf-8", "surrogatepass")) >= len(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            walk_strings(k)
            walk_strings(v)
    elif isinstance(value, list):
        for v in value:
            walk_strings(v)


VALID_TAPE = record_tape(
    bytes([10])
    + struct.pack("<I", 6)
    + tape_str(7, b"\xe9t\xe9", 3)
    + ucs2(0x65E5, 0xD800)
    + ucs4(0x1F600)
    + tape_str(5, b"123456789012345678901", 21)
    + bytes([4])
    + struct.pack("<d", 2.5)
    + b"\x02"
)


@settings(max_examples=300, deadline=None)
@given(
    edits=st.lists(st.tuples(st.integers(0, len(VALID_TAPE) - 1), st.integers(0, 255)), max_size=4),
    noise=st.binary(max_size=64),
)
def test_damaged_tapes_decode_to_valid_objects_or_a_value_error(edits, noise):
    damaged = bytearray(VALID_TAPE)
    for at, byte in edits:
        damaged[at] = byte
    for tape in (bytes(damaged), noise):
        try:
            decoded = decode(tape)
        except ValueError:
            continue
        except TypeError as e:  # a well-formed tape of a value that is not a record (an object)
            assert "is not an instance of 'dict'" in str(e)
            continue
        walk_strings(decoded)
