"""`prepare --images shards` holds zip archives to the size limits extraction applies, and reads and checks
their members in bounded memory: a zip bomb is refused without being inflated, a member whose deflate
stream produces more than it declares (or declares an absurd size) is a clear error."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import pytest

from fusion_fast import images as image_store
from fusion_fast.archives import read_marker
from fusion_fast.errors import FusionFastError
from fusion_fast.images import ImageStore
from fusion_fast.prepare import plan_prepare, run_prepare
from fusion_fast.prepare_shards import store_file

from .test_prepare import child_env, record, write_json

MIB = 1 << 20
KEY = "images/Bomb.zip"


@pytest.fixture(autouse=True)
def fresh_store_cache() -> None:
    image_store._folder_stores.clear()


def zeros_zip(path: Path, size: int) -> None:
    """A zip whose one member `Bomb/a.jpg` is `size` zero bytes, deflated (about 1000:1), written in
    chunks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    chunk = bytes(16 * MIB)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("Bomb/a.jpg", "w", force_zip64=True) as out:
            left = size
            while left:
                n = min(left, len(chunk))
                out.write(chunk[:n])
                left -= n


def bomb_source(tmp_path: Path, size: int) -> Path:
    src = tmp_path / "src"
    zeros_zip(src / "images" / "Bomb.zip", size)
    write_json(src / "Bomb.json", [record("b", "Bomb/a.jpg")])
    return src


#: This process's peak resident memory in KiB. (Not ru_maxrss: on Linux it survives exec, so a child
#: of a large test process would report its parent's peak.)
_HWM = """
import resource
def hwm():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
"""
#: Run prepare in a fresh interpreter and report its errors and its peak memory (KiB).
_CHILD = (
    _HWM
    + """
import json, sys
from fusion_fast.prepare import plan_prepare, run_prepare
limits = {} if sys.argv[3] == "limits" else {"size_limits": None}
result = run_prepare(plan_prepare(sys.argv[1], sys.argv[2], images="shards"), jobs=1, **limits)
peak = max(hwm(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
errors = {u.item.unit.key: u.error for u in result.units if u.error is not None}
print(json.dumps({"errors": errors, "peak_kib": peak}))
"""
)


def prepare_in_child(src: Path, pg: Path, limits: bool) -> tuple[dict[str, str], int]:
    """(errors by archive key, peak resident memory in bytes) of `prepare --images shards` in a child."""
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(src), str(pg), "limits" if limits else "none"],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    found = json.loads(out.stdout.strip().splitlines()[-1])
    return found["errors"], found["peak_kib"] * 1024


def baseline_peak() -> int:
    """Peak memory of a child that imports what the prepare child imports and prepares nothing."""
    code = _HWM + "import fusion_fast.prepare\nprint(hwm())"
    out = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True, text=True)
    return int(out.stdout.strip()) * 1024


def test_a_zip_bomb_is_refused_in_shards_mode_as_in_extract_mode_without_inflating_it(tmp_path) -> None:
    size = 1536 * MIB
    src = bomb_source(tmp_path, size)
    assert (src / "images" / "Bomb.zip").stat().st_size < 16 * MIB
    errors, peak = prepare_in_child(src, tmp_path / "pg", limits=True)
    message = errors[KEY]
    assert message.startswith(f"{KEY}: refusing to index: ")
    assert "more than 100 times its size" in message and "--no-size-limits" in message
    assert "'Bomb/a.jpg'" in message
    assert peak < baseline_peak() + 128 * MIB < size // 4
    images = tmp_path / "pg" / "train" / "images"
    assert read_marker(images, KEY) is None
    assert not store_file(images).exists()
    # Extraction refuses the same zip with the same kind of message.
    extract = run_prepare(plan_prepare(src, tmp_path / "pg-extract", images="extract"), jobs=1)
    [unit] = [u for u in extract.units if u.error is not None]
    assert unit.error is not None
    assert "more than 100 times its size" in unit.error and "--no-size-limits" in unit.error


def test_no_size_limits_indexes_a_zip_bomb_checking_it_in_bounded_memory(tmp_path) -> None:
    size = 320 * MIB
    src = bomb_source(tmp_path, size)
    errors, peak = prepare_in_child(src, tmp_path / "pg", limits=False)
    assert errors == {}
    assert peak < baseline_peak() + 96 * MIB < size
    images = tmp_path / "pg" / "train" / "images"
    assert read_marker(images, KEY) is not None
    store = ImageStore.open(store_file(images))
    assert store.members() == ["Bomb/a.jpg"]
    data = store.read("Bomb/a.jpg")
    assert len(data) == size and data.count(0) == size


def test_the_ratio_limit_counts_each_member_and_names_it(tmp_path) -> None:
    src = tmp_path / "src"
    src.joinpath("images").mkdir(parents=True)
    with zipfile.ZipFile(src / "images" / "Bomb.zip", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("Bomb/small.jpg", b"x" * 1000)
        zf.writestr("Bomb/big.jpg", bytes(40 * MIB))
    write_json(src / "Bomb.json", [record("b", "Bomb/small.jpg")])
    result = run_prepare(plan_prepare(src, tmp_path / "pg", images="shards"), jobs=1)
    [unit] = result.units
    assert unit.error is not None
    assert "refusing to index" in unit.error and "'Bomb/big.jpg'" in unit.error
    assert read_marker(tmp_path / "pg" / "train" / "images", KEY) is None


# -- members whose sizes lie ------------------------------------------------------------------------------


def overflowing_zip(member: bytes, declared: int) -> bytes:
    """A zip of one deflated member whose headers declare only its first `declared` bytes (with their
    CRC-32): the deflate stream produces more than the member declares."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("Over/a.jpg", member)
    data = bytearray(buf.getvalue())
    local, central = 0, data.index(b"PK\x01\x02")
    crc = zlib.crc32(member[:declared])
    struct.pack_into("<I", data, local + 14, crc)
    struct.pack_into("<I", data, local + 22, declared)
    struct.pack_into("<I", data, central + 16, crc)
    struct.pack_into("<I", data, central + 24, declared)
    assert zipfile.ZipFile(io.BytesIO(bytes(data))).read("Over/a.jpg") == member[:declared]
    return bytes(data)


def huge_declared_zip(member: bytes, declared: int) -> bytes:
    """A zip64 zip of one deflated member whose headers declare `declared` bytes (zip64 extra fields in
    both headers), far more than its deflate stream produces."""
    name = b"Huge/a.jpg"
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    raw = comp.compress(member) + comp.flush()
    crc = zlib.crc32(member)
    extra = struct.pack("<HHQQ", 1, 16, declared, len(raw))
    local = (
        struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, 45, 0, 8, 0, 0x21, crc, 0xFFFFFFFF, 0xFFFFFFFF, len(name), len(extra)
        )
        + name
        + extra
    )
    central = (
        struct.pack(
            "<IHHHHHHIIIHHHHHII",
            0x02014B50,
            45,
            45,
            0,
            8,
            0,
            0x21,
            crc,
            0xFFFFFFFF,
            0xFFFFFFFF,
            len(name),
            len(extra),
            0,
            0,
            0,
            0o100644 << 16,
            0,
        )
        + name
        + extra
    )
    cd_at = len(local) + len(raw)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), cd_at, 0)
    return local + raw + central + end


def test_a_member_inflating_past_its_declared_size_is_a_clear_error(tmp_path) -> None:
    member = bytes(range(256)) * 64
    archive = tmp_path / "Over.zip"
    archive.write_bytes(overflowing_zip(member, 1000))
    store = ImageStore.build([archive], tmp_path / "over.ffimg")
    with pytest.raises(FusionFastError, match=r"member '?Over/a.jpg'? inflates to more than the 1000 bytes"):
        store.read("Over/a.jpg")
    src = tmp_path / "src"
    src.joinpath("images").mkdir(parents=True)
    src.joinpath("images", "Over.zip").write_bytes(archive.read_bytes())
    result = run_prepare(plan_prepare(src, tmp_path / "pg", images="shards"), jobs=1, size_limits=None)
    [unit] = result.units
    assert unit.error is not None and unit.error.startswith("images/Over.zip: corrupt")
    assert "'Over/a.jpg'" in unit.error and "more than" in unit.error
    assert read_marker(tmp_path / "pg" / "train" / "images", "images/Over.zip") is None


def test_a_member_declaring_a_huge_size_is_a_clear_error_not_an_allocation(tmp_path) -> None:
    member = b"small but declared huge " * 100
    archive = tmp_path / "Huge.zip"
    archive.write_bytes(huge_declared_zip(member, 1 << 40))
    assert zipfile.ZipFile(archive).getinfo("Huge/a.jpg").file_size == 1 << 40
    store = ImageStore.build([archive], tmp_path / "huge.ffimg")
    with pytest.raises(
        FusionFastError, match=r"member '?Huge/a.jpg'? inflates to 2400 bytes, its header says 1099511627776"
    ):
        store.read("Huge/a.jpg")
    src = tmp_path / "src"
    src.joinpath("images").mkdir(parents=True)
    src.joinpath("images", "Huge.zip").write_bytes(archive.read_bytes())
    limited = run_prepare(plan_prepare(src, tmp_path / "pg", images="shards"), jobs=1)
    [unit] = limited.units
    assert unit.error is not None and "refusing to index" in unit.error
    result = run_prepare(plan_prepare(src, tmp_path / "pg2", images="shards"), jobs=1, size_limits=None)
    [unit] = result.units
    assert unit.error is not None and unit.error.startswith("images/Huge.zip: corrupt")
    assert "'Huge/a.jpg'" in unit.error and "1099511627776" in unit.error
    assert read_marker(tmp_path / "pg2" / "train" / "images", "images/Huge.zip") is None
