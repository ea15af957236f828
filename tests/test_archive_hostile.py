"""Hostile and damaged archives: placements that would merge members, damaged compressed streams,
archives that would fill the disk, and members that collide with prepare's own state."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import random
import re
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusion_fast.archives import Archive, SizeLimits, group_archives
from fusion_fast.errors import FusionFastError
from fusion_fast.prepare import References, decide_placement, plan_prepare, run_prepare

from .conftest import is_root
from .test_archives import link, split, tar_bytes, tree, zip_bytes
from .test_prepare import image_files, prepare, record, write_json


def archive(path: Path, data: bytes) -> Archive:
    path.write_bytes(data)
    [a] = group_archives([(path.name, path)])
    return a


def markers(images: Path) -> list[str]:
    return sorted(p.name for p in (images / ".fusion-fast").iterdir() if p.name.endswith(".done"))


def leftovers(images: Path) -> list[str]:
    """Temporary files and folders of prepare anywhere under `images/`."""
    return sorted(p.relative_to(images).as_posix() for p in images.rglob(".tmp-*"))


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    from fusion_fast.cli import prepare as cli_prepare

    monkeypatch.setattr(cli_prepare, "console", lambda: Console(width=1000, highlight=False))


# -- two members, one path ---------------------------------------------------------------------------


@pytest.mark.parametrize("second", ["file", "symlink"])
def test_members_that_a_placement_would_merge_keep_their_own_paths(tmp_path, capsys, second) -> None:
    # Stripping two folders and prefixing PixelProse/000/ makes both members PixelProse/000/1.jpg and
    # "matches" two sampled members instead of one; that placement must never be chosen.
    src, pg = tmp_path / "src", tmp_path / "pg"
    write_json(src / "PixelProse-1.json", [record("p-0", "PixelProse/000/1.jpg")])
    (src / "images").mkdir()
    first = b"\x89PNG first image"
    other: tarfile.TarInfo | tuple[str, bytes] = (
        ("PixelProse/001/1.jpg", b"\x89PNG second image")
        if second == "file"
        else link("PixelProse/001/1.jpg", "../000/1.jpg")
    )
    (src / "images" / "PixelProse.tar").write_bytes(tar_bytes([("PixelProse/000/1.jpg", first), other]))
    assert prepare(src, "--root", pg, "--jobs", "1") == 0, capsys.readouterr().out
    images = pg / "train" / "images"
    assert (images / "PixelProse/000/1.jpg").read_bytes() == first
    assert not (images / "PixelProse/000/1.jpg").is_symlink()
    if second == "file":
        assert (images / "PixelProse/001/1.jpg").read_bytes() == b"\x89PNG second image"
    else:
        assert os.readlink(images / "PixelProse/001/1.jpg") == "../000/1.jpg"
        assert (images / "PixelProse/001/1.jpg").read_bytes() == first


def two_archives(tmp_path: Path, a: bytes, b: bytes) -> tuple[Path, Path]:
    src, pg = tmp_path / "src", tmp_path / "pg"
    write_json(src / "Shared-1.json", [record("s-0", "Shared/x.jpg")])
    (src / "images").mkdir()
    (src / "images" / "A.tar").write_bytes(tar_bytes([("Shared/x.jpg", a), ("Shared/a.jpg", b"a")]))
    (src / "images" / "B.tar").write_bytes(tar_bytes([("Shared/x.jpg", b), ("Shared/b.jpg", b"b")]))
    return src, pg


def test_a_different_file_in_place_is_a_conflict_and_is_never_replaced(tmp_path, capsys) -> None:
    src, pg = two_archives(tmp_path, b"from A", b"from B")
    assert prepare(src, "--root", pg, "--jobs", "1") == 1
    out = capsys.readouterr().out.replace("\n", " ")
    images = pg / "train" / "images"
    # Units run in key order: A is placed, B conflicts with it.
    assert (images / "Shared/x.jpg").read_bytes() == b"from A"
    assert "images/B.tar" in out and "'Shared/x.jpg'" in out and "images/Shared/x.jpg" in out, out
    assert "differs" in out
    assert not (images / "Shared/b.jpg").exists()  # nothing of B is placed: the conflict is found first
    assert markers(images) == ["images__A.tar.done"]
    assert leftovers(images) == []


def test_the_same_file_from_two_archives_is_not_a_conflict(tmp_path) -> None:
    src, pg = two_archives(tmp_path, b"same", b"same")
    assert prepare(src, "--root", pg, "--jobs", "1") == 0
    images = pg / "train" / "images"
    assert tree(images / "Shared") == {"a.jpg": b"a", "b.jpg": b"b", "x.jpg": b"same"}


# -- members that cannot be written as they are -------------------------------------------------------


def _hard(name: str, target: str) -> tarfile.TarInfo:
    return link(name, target, tarfile.LNKTYPE)


def _dir(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


def _sparse(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.GNUTYPE_SPARSE
    return info


#: case -> (members, the member named in the error, what the error says)
UNWRITABLE: dict[str, tuple[list, str, str]] = {
    "hardlink-to-missing": ([_hard("a.jpg", "missing.jpg")], "a.jpg", "not a file earlier in the archive"),
    "hardlink-to-folder": ([_dir("d"), _hard("a.jpg", "d")], "a.jpg", "not a file earlier in the archive"),
    "hardlink-to-itself": ([_hard("a.jpg", "a.jpg")], "a.jpg", "not a file earlier in the archive"),
    "hardlink-to-symlink": (
        [("x.jpg", b"x"), link("s.jpg", "x.jpg"), _hard("h.jpg", "s.jpg")],
        "h.jpg",
        "not a file earlier in the archive",
    ),
    "twice": ([("a.jpg", b"1"), ("a.jpg", b"2")], "a.jpg", "two members with this path"),
    "twice-as-link": ([("a.jpg", b"1"), link("a.jpg", "b.jpg")], "a.jpg", "two members with this path"),
    "file-over-folder": ([_dir("a"), ("a", b"x")], "a", "cannot extract member"),
    "file-under-file": ([("a", b"x"), ("a/b.jpg", b"y")], "a/b.jpg", "cannot extract member"),
    "through-dangling-link": ([link("l", "nothere"), ("l/f.jpg", b"z")], "l/f.jpg", "through the link 'l'"),
    "sparse": ([_sparse("s.jpg")], "s.jpg", "sparse file"),
    "name-too-long": (
        [("x/" + "n" * 300 + ".jpg", b"q")],
        "x/" + "n" * 300 + ".jpg",
        "cannot extract member",
    ),
}


@pytest.mark.parametrize("case", sorted(UNWRITABLE))
def test_members_that_cannot_be_written_as_they_are_are_clear_errors(tmp_path, case) -> None:
    # Never a KeyError / ValueError / bare OSError from inside tarfile: an error naming archive and member.
    members, member, why = UNWRITABLE[case]
    a = archive(tmp_path / "u.tar", tar_bytes(members))
    (tmp_path / "out").mkdir()
    with pytest.raises(FusionFastError) as e:
        a.extract(tmp_path / "out")
    message = str(e.value)
    assert message.startswith("u.tar: ") and repr(member) in message and why in message, message


# -- damaged compressed streams ----------------------------------------------------------------------


def _flip_stored_payload(data: bytes, needle: bytes) -> bytes:
    damaged = bytearray(data)
    damaged[data.index(needle) + 3] ^= 0x10
    return bytes(damaged)


PAYLOAD = b"IMAGEDATA" * 200


def damaged(kind: str) -> tuple[str, bytes, object]:
    """(archive name, damaged bytes, an independent decoder that must reject them)."""
    tar = tar_bytes([("D/a.jpg", PAYLOAD), ("D/b.jpg", b"b" * 700)])
    if kind == "gz-flipped-bit":  # stored deflate blocks: the inflater cannot notice, only the CRC can
        return "d.tar.gz", _flip_stored_payload(gzip.compress(tar, compresslevel=0), PAYLOAD), gzip.decompress
    if kind == "gz-trailer-cut":
        return "d.tar.gz", gzip.compress(tar)[:-8], gzip.decompress
    if kind == "gz-length-cut":
        return "d.tgz", gzip.compress(tar)[:-4], gzip.decompress
    if kind == "gz-wrong-length":
        data = bytearray(gzip.compress(tar))
        data[-1] ^= 1
        return "d.tar.gz", bytes(data), gzip.decompress
    if kind == "bz2-end-cut":
        return "d.tar.bz2", bz2.compress(tar)[:-4], bz2.decompress
    if kind == "xz-end-cut":
        return "d.tar.xz", lzma.compress(tar)[:-12], lzma.decompress
    if kind == "gz-second-member-cut":  # concatenated gzip members (pigz, cat a.gz b.gz) are one stream
        half = len(tar) // 2
        return "d.tar.gz", gzip.compress(tar[:half]) + gzip.compress(tar[half:])[:-8], gzip.decompress
    raise AssertionError(kind)


GZ_KINDS = [
    "gz-flipped-bit",
    "gz-trailer-cut",
    "gz-length-cut",
    "gz-wrong-length",
    "gz-second-member-cut",
    "bz2-end-cut",
    "xz-end-cut",
]


@pytest.mark.parametrize("kind", GZ_KINDS)
def test_damaged_compressed_tar_is_an_error(tmp_path, kind) -> None:
    name, data, decoder = damaged(kind)
    with pytest.raises(Exception):  # noqa: B017 - the fixture is damaged by an independent decoder's account
        decoder(data)  # type: ignore[operator]
    a = archive(tmp_path / name, data)
    (tmp_path / "out").mkdir()
    with pytest.raises(FusionFastError, match="corrupt or truncated archive") as e:
        a.extract(tmp_path / "out")
    assert str(e.value).startswith(f"{name}: ")


def test_damaged_split_tar_gz_is_an_error(tmp_path) -> None:
    _, data, _ = damaged("gz-trailer-cut")
    parts = split(data, tmp_path, "s.tar.gz", ["00", "01", "02"])
    [a] = group_archives([(p.name, p) for p in parts])
    (tmp_path / "out").mkdir()
    with pytest.raises(FusionFastError, match="corrupt or truncated archive") as e:
        a.extract(tmp_path / "out")
    assert str(e.value).startswith("s.tar.gz: ")


def test_zip_member_with_a_flipped_bit_is_an_error(tmp_path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("Z/a.jpg", PAYLOAD)
        zf.writestr("Z/b.jpg", b"b" * 100)
    a = archive(tmp_path / "z.zip", _flip_stored_payload(buf.getvalue(), PAYLOAD))
    (tmp_path / "out").mkdir()
    with pytest.raises(FusionFastError, match="corrupt or truncated archive") as e:
        a.extract(tmp_path / "out")
    assert "z.zip" in str(e.value) and "Z/a.jpg" in str(e.value)


def test_prepare_reports_a_damaged_tar_gz_and_marks_nothing_complete(tmp_path, capsys) -> None:
    src, pg = tmp_path / "src", tmp_path / "pg"
    write_json(src / "D-1.json", [record("d-0", "D/a.jpg")])
    _, data, _ = damaged("gz-flipped-bit")
    (src / "D.tar.gz").write_bytes(data)
    assert prepare(src, "--root", pg, "--jobs", "1") == 1
    out = capsys.readouterr().out.replace("\n", " ")
    assert "D.tar.gz" in out and "corrupt or truncated archive" in out and "not ready" in out
    images = pg / "train" / "images"
    assert markers(images) == [] and not (images / "D").exists() and leftovers(images) == []


# -- archives that would fill the disk ---------------------------------------------------------------

BOMB = 64 << 20  # inflates from about 64 KiB: far past any ratio images have


def zip_bomb(path: Path) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("Bomb/zeros.jpg", "w") as f:
        chunk = bytes(1 << 20)
        for _ in range(BOMB >> 20):
            f.write(chunk)


def tar_gz_bomb(path: Path) -> None:
    info = tarfile.TarInfo("Bomb/zeros.jpg")
    info.size = BOMB

    class Zeros(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, b):  # type: ignore[no-untyped-def]
            b[:] = bytes(len(b))
            return len(b)

    with tarfile.open(path, "w:gz", compresslevel=1) as tf:
        tf.addfile(info, io.BufferedReader(Zeros()))


@pytest.mark.parametrize("make", [zip_bomb, tar_gz_bomb], ids=["zip", "tar.gz"])
def test_an_archive_that_inflates_far_past_its_size_is_refused(tmp_path, capsys, make) -> None:
    src, pg = tmp_path / "src", tmp_path / "pg"
    write_json(src / "Bomb-1.json", [record("b-0", "Bomb/zeros.jpg")])
    name = "Bomb.zip" if make is zip_bomb else "Bomb.tar.gz"
    make(src / name)
    assert (src / name).stat().st_size < BOMB // 100
    assert prepare(src, "--root", pg, "--jobs", "1") == 1
    out = capsys.readouterr().out.replace("\n", " ")
    assert name in out and "--no-size-limits" in out, out
    images = pg / "train" / "images"
    assert not (images / "Bomb").exists() and markers(images) == [] and leftovers(images) == []


def fixed_free_space(n: int) -> SizeLimits:
    return SizeLimits(free_space=lambda _folder: n)


def test_a_zip_larger_than_the_free_space_is_refused_before_anything_is_written(tmp_path) -> None:
    a = archive(tmp_path / "z.zip", zip_bytes([("Z/a.jpg", b"a" * 3000), ("Z/b.jpg", b"b" * 3000)]))
    (tmp_path / "out").mkdir()
    with pytest.raises(FusionFastError, match="its members need 5.9 KiB but only 5.0 KiB is free") as e:
        a.extract(tmp_path / "out", limits=fixed_free_space(5 << 10))
    assert str(e.value).startswith("z.zip: ") and "--no-size-limits" in str(e.value)
    assert tree(tmp_path / "out") == {}
    assert a.extract(tmp_path / "out", limits=None).bytes == 6000  # lifted


def test_a_tar_member_past_the_free_space_is_refused_before_it_is_written(tmp_path) -> None:
    members = [("T/a.jpg", b"a" * 3000), ("T/b.jpg", b"b" * 3000), ("T/c.jpg", b"c" * 3000)]
    a = archive(tmp_path / "t.tar.gz", tar_bytes(members, "w:gz"))
    (tmp_path / "out").mkdir()
    out = tmp_path / "out"

    def disk_of_7000_bytes(_folder: Path) -> int:  # what a real lookup sees: less as files are written
        return 7000 - sum(p.stat().st_size for p in out.rglob("*") if p.is_file())

    with pytest.raises(FusionFastError, match="member 'T/c.jpg' needs 2.9 KiB but only 1000 B is free") as e:
        a.extract(out, limits=SizeLimits(free_space=disk_of_7000_bytes))
    assert "--no-size-limits" in str(e.value)
    assert set(tree(tmp_path / "out")) == {"T/a.jpg", "T/b.jpg"}


def test_the_ratio_limit_applies_past_its_floor_only(tmp_path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("Z/zeros.jpg", bytes(1 << 20))
    a = archive(tmp_path / "z.zip", buf.getvalue())
    assert a.size < (1 << 20) // 100
    limits = SizeLimits(ratio_floor=2 << 20)
    (tmp_path / "one").mkdir()
    assert a.extract(tmp_path / "one", limits=limits).bytes == 1 << 20  # small: below the floor
    (tmp_path / "two").mkdir()
    with pytest.raises(FusionFastError, match="more than 100 times its size"):
        a.extract(tmp_path / "two", limits=SizeLimits(ratio_floor=1 << 19))


def test_zip_names_that_appear_twice_or_in_the_state_folder_are_refused(tmp_path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        zf.writestr("Z/a.jpg", b"first")
        zf.writestr("Z/a.jpg", b"second")
    a = archive(tmp_path / "twice.zip", buf.getvalue())
    (tmp_path / "out").mkdir()
    with pytest.raises(FusionFastError, match="refusing member 'Z/a.jpg': the archive holds two members"):
        a.extract(tmp_path / "out")
    b = archive(tmp_path / "state.zip", zip_bytes([(".fusion-fast/x.done", b"{}")]))
    with pytest.raises(FusionFastError, match="refusing member '.fusion-fast/x.done'"):
        b.extract(tmp_path / "out")
    assert tree(tmp_path / "out") == {}


@pytest.fixture
def tmpfs(tmp_path: Path):
    """A 20 MiB tmpfs mounted at tmp_path/small (root only)."""
    if not is_root():
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        # Lazily: open indexes of the annotation files there may still map them.
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


def test_an_archive_larger_than_the_free_space_is_refused_not_half_written(tmp_path, tmpfs, capsys) -> None:
    src = tmp_path / "src"
    write_json(src / "Big-2.json", [record("b-0", "Big/random.jpg"), record("b-1", "Big/zeros.jpg")])
    rng = random.Random(5)
    # 10 MiB that do not compress and 15 MiB that do: the archive (10 MiB) fits, its contents do not.
    members = [("Big/random.jpg", rng.randbytes(10 << 20)), ("Big/zeros.jpg", bytes(15 << 20))]
    (src / "Big.tar.gz").write_bytes(tar_bytes(members, "w:gz"))
    pg = tmpfs / "pg"
    assert prepare(src, "--root", pg, "--jobs", "1") == 1
    out = capsys.readouterr().out.replace("\n", " ")
    assert "Big.tar.gz" in out and "free" in out and "--no-size-limits" in out, out
    assert "Errno" not in out  # refused before the disk was full, not by ENOSPC
    images = pg / "train" / "images"
    assert not (images / "Big").exists() and markers(images) == [] and leftovers(images) == []


def test_a_disk_that_fills_anyway_is_an_error_naming_the_member(tmp_path, tmpfs) -> None:
    # Another program can take the space after the check: ENOSPC names the archive and the member.
    rng = random.Random(6)
    a = archive(
        tmp_path / "f.tar",
        tar_bytes([("F/a.jpg", rng.randbytes(8 << 20)), ("F/b.jpg", rng.randbytes(16 << 20))]),
    )
    lying = SizeLimits(free_space=lambda _folder: 1 << 40)
    with pytest.raises(FusionFastError, match="the disk filled up while writing member 'F/b.jpg'") as e:
        a.extract(tmpfs, limits=lying)
    assert str(e.value).startswith("f.tar: ")


# -- members that collide with prepare's own state ---------------------------------------------------


def test_a_member_named_like_a_temporary_folder_survives_the_next_run(tmp_path) -> None:
    src, pg = tmp_path / "src", tmp_path / "pg"
    write_json(src / "T-1.json", [record("t-0", ".tmp-x/1.jpg")])
    (src / "T.tar").write_bytes(tar_bytes([(".tmp-x/1.jpg", b"image")]))
    assert prepare(src, "--root", pg, "--jobs", "1") == 0
    image = pg / "train" / "images" / ".tmp-x" / "1.jpg"
    assert image.read_bytes() == b"image"
    assert prepare(src, "--root", pg, "--jobs", "1") == 0
    assert image.read_bytes() == b"image"


@pytest.mark.parametrize(
    "member",
    [
        (".fusion-fast/images__Other.tar.done", b'{"key": "images/Other.tar"}'),
        (".fusion-fast/x.jpg", b"image"),
        link("state", ".fusion-fast"),
        # The same folder on a case-insensitive filesystem (macOS, Windows by default).
        (".Fusion-Fast/images__Other.tar.done", b'{"key": "images/Other.tar"}'),
        link("State", ".FUSION-FAST"),
    ],
    ids=["fake-marker", "file", "symlink", "other-case", "other-case-symlink"],
)
def test_members_in_prepares_state_folder_are_refused(tmp_path, capsys, member) -> None:
    src, pg = tmp_path / "src", tmp_path / "pg"
    write_json(src / "Good-1.json", [record("g-0", "Good/0.jpg")])
    (src / "Good.tar").write_bytes(tar_bytes(image_files(["Good/0.jpg"])))
    (src / "Evil.tar").write_bytes(tar_bytes([member, ("Evil/1.jpg", b"x")]))
    assert prepare(src, "--root", pg, "--jobs", "1") == 1
    out = capsys.readouterr().out.replace("\n", " ")
    name = member.name if isinstance(member, tarfile.TarInfo) else member[0]
    assert f"Evil.tar: refusing member {name!r}" in out and ".fusion-fast" in out, out
    images = pg / "train" / "images"
    assert markers(images) == ["Good.tar.done"]
    assert sorted(p.name for p in images.iterdir()) == [".fusion-fast", "Good"]
    assert leftovers(images) == []


# -- stopping promptly -------------------------------------------------------------------------------


class _Stop(Exception):
    pass


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_a_progress_callback_that_raises_stops_inside_a_large_member(tmp_path, monkeypatch, kind) -> None:
    # An interrupted run stops its workers through the progress callback; it must be called while a large
    # member is written, not only between members, or a 10 GB video would delay the stop by minutes.
    monkeypatch.setattr("fusion_fast.archives._PROGRESS_EVERY_S", 0.0)
    big = random.Random(3).randbytes(8 << 20)
    data = tar_bytes([("V/big.mp4", big)], "w:gz") if kind == "tar.gz" else zip_bytes([("V/big.mp4", big)])
    a = archive(tmp_path / f"v.{kind}", data)
    dest = tmp_path / "out"
    dest.mkdir()

    def progress(done: int) -> None:
        if (dest / "V/big.mp4").exists():
            raise _Stop

    with pytest.raises(_Stop):
        a.extract(dest, progress)
    assert (dest / "V/big.mp4").stat().st_size < len(big)


# -- the placement decision, explored ----------------------------------------------------------------
# Written from the rule in docs/prepare.md, not with the code's own helpers: a member m goes to
# prefix + m without its first `strip` components.


def spec_target(member: str, strip: int, prefix: str) -> str:
    return prefix + "/".join(member.split("/")[strip:])


def spec_apart(targets: list[str]) -> bool:
    """No two targets are one path, and no target is a folder of another."""
    seen = set(targets)
    folders = {"/".join(t.split("/")[:i]) for t in targets for i in range(1, t.count("/") + 1)}
    return len(seen) == len(targets) and not (seen & folders)


_NAMES = st.sampled_from(["PixelProse", "000", "001", "a", "b", "img", "1.jpg", "2.jpg", ".tmp-x"])
_MEMBER = st.lists(_NAMES, min_size=1, max_size=5).map("/".join)


def _tree(paths: list[str]) -> list[str]:
    """Paths that can coexist in an extracted tree: distinct, none a folder of another."""
    kept: list[str] = []
    for p in paths:
        if spec_apart([*kept, p]):
            kept.append(p)
    return kept


@settings(max_examples=400, deadline=None)
@given(
    members=st.lists(_MEMBER, min_size=1, max_size=12).map(_tree),
    strip=st.integers(0, 4),
    prefix=st.sampled_from(["", "PixelProse/", "coco/train2017/", "a/b/"]),
    chosen=st.lists(st.booleans(), min_size=12, max_size=12),
    extra=st.lists(_MEMBER, max_size=4),
)
def test_placement_never_merges_members_and_is_the_best_one_to_one(
    members: list[str], strip: int, prefix: str, chosen: list[bool], extra: list[str]
) -> None:
    strip = min(strip, min(m.count("/") for m in members))
    # Records reference some members as they would be under (strip, prefix), which may merge members
    # (a hostile or unlucky layout), plus unrelated paths.
    records = [
        spec_target(m, strip, prefix) for m, pick in zip(members, chosen, strict=False) if pick
    ] + extra
    p = decide_placement(members, References(records), "stem/")
    targets = [spec_target(m, p.strip, p.prefix) for m in members]
    assert spec_apart(targets), (p, targets)
    assert p.strip <= min(m.count("/") for m in members)
    assert p.matched == sum(t in set(records) for t in targets)
    generating = [spec_target(m, strip, prefix) for m in members]
    if spec_apart(generating) and all(chosen[: len(members)]) and p.reason == "records":
        # Every member referenced under a one-to-one placement: the choice references them all too,
        # so every record path resolves to exactly one member; it differs from the generating one only
        # where the documented tie-break (smaller strip, then shorter prefix) prefers it.
        assert p.matched == len(members)
        assert (p.strip, len(p.prefix)) <= (strip, len(prefix))


# -- zip entries zipfile cannot read, tiny zips, link chains -------------------------------------------


def _zip_with_header_field(offset: int, value: int) -> bytes:
    """A one-member zip with a 16-bit field patched in both its local header and its central directory
    entry (`offset` is the field's offset in the local header; the central one is 2 further on)."""
    data = bytearray(zip_bytes([("A/x.jpg", b"hello world")]))
    data[offset : offset + 2] = value.to_bytes(2, "little")
    central = data.find(b"PK\x01\x02")
    data[central + offset + 2 : central + offset + 4] = value.to_bytes(2, "little")
    return bytes(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_zip_with_header_field(6, 1), "encrypted"),  # general purpose flag bit 0
        (_zip_with_header_field(8, 99), "compression method 99"),  # AES and other methods
        (_zip_with_header_field(6, 0x40), "not supported"),  # strong encryption
        (_zip_with_header_field(6, 0x20), "not supported"),  # compressed patched data
        (_zip_with_header_field(4, 96), "not supported"),  # needs zip version 9.6 to extract
        (b"PK", "not a zip file"),  # shorter than any end record
        (b"", "not a zip file"),
    ],
)
def test_zips_that_zipfile_cannot_read_are_clear_errors(tmp_path, data, message) -> None:
    a = archive(tmp_path / "A.zip", data)
    for attempt in (lambda: list(a.members()), lambda: a.extract(tmp_path / "out")):
        (tmp_path / "out").mkdir(exist_ok=True)
        with pytest.raises(FusionFastError, match=f"(?i){message}") as e:
            attempt()
        assert e.value.path == "A.zip"


def test_an_empty_zip_has_no_members(tmp_path) -> None:
    a = archive(tmp_path / "A.zip", zip_bytes([]))  # only the 22-byte end record
    assert list(a.members()) == []
    (tmp_path / "out").mkdir()
    assert a.extract(tmp_path / "out").files == []


@pytest.mark.parametrize(
    "links",
    [
        # Each link alone stays inside, but through the other one `A/l1` leaves the archive; the order
        # of the members must not matter.
        [("A/b/l2", ".."), ("A/l1", "b/l2/../..")],
        [("A/l1", "b/l2/../.."), ("A/b/l2", "..")],
        [("A/l1", "b/c/l2/../../../x"), ("A/b/c/l2", "../..")],
    ],
)
def test_a_link_whose_target_goes_through_another_link_is_refused(tmp_path, links) -> None:
    folder = tarfile.TarInfo("A/b/c")
    folder.type = tarfile.DIRTYPE
    a = archive(tmp_path / "A.tar", tar_bytes([folder, *(link(name, target) for name, target in links)]))
    (tmp_path / "out").mkdir()
    with pytest.raises(FusionFastError, match="through the link|outside the destination") as e:
        a.extract(tmp_path / "out")
    assert e.value.path == "A.tar"


def test_a_member_written_through_a_link_member_is_refused(tmp_path) -> None:
    # The listed path `A/l/x.jpg` would not be where the bytes are (`A/x.jpg`).
    a = archive(tmp_path / "A.tar", tar_bytes([link("A/l", "."), ("A/l/x.jpg", b"1")]))
    (tmp_path / "out").mkdir()
    with pytest.raises(FusionFastError, match="'A/l/x.jpg'.*through the link 'A/l'"):
        a.extract(tmp_path / "out")


def test_placed_links_are_checked_through_links_already_in_images(tmp_path) -> None:
    # A link from an earlier archive, then a link in a later one whose target passes through it: each
    # stays inside alone, together `images/A/out` would be `train/x`.
    src = tmp_path / "src"
    src.mkdir()
    (src / "A.tar").write_bytes(tar_bytes([("A/x.jpg", b"1"), link("A/up", "..")]))
    (src / "B.tar").write_bytes(tar_bytes([("A/y.jpg", b"2"), link("A/out", "up/../x")]))
    result = run_prepare(plan_prepare(src, tmp_path / "pg"))
    images = tmp_path / "pg" / "train" / "images"
    [b] = [u for u in result.units if u.item.unit.key == "B.tar"]
    assert b.status == "failed" and "through the link" in (b.error or "")
    assert not os.path.lexists(images / "A" / "out")
    assert markers(images) == ["A.tar.done"]


def _zip_name_not_utf8() -> bytes:
    """A zip whose entry is flagged UTF-8 (bit 11) but whose name is not."""
    data = bytearray(zip_bytes([("A/\u00e9.jpg", b"1")]))
    name = "A/\u00e9.jpg".encode()
    for at in (data.find(name), data.rfind(name)):  # local header and central directory
        data[at + 2] = 0xFF
    return bytes(data)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (_zip_name_not_utf8(), "utf-8"),
        (zip_bytes([("A/x.jpg", b"1"), ("A/x.jpg/", b"")]), "'A/x.jpg/'"),  # a file, then a folder of it
    ],
)
def test_zip_entries_that_cannot_be_read_or_written_are_clear_errors(tmp_path, data, expected) -> None:
    a = archive(tmp_path / "A.zip", data)
    (tmp_path / "out").mkdir()
    with pytest.raises(FusionFastError, match=re.escape(expected)) as e:
        a.extract(tmp_path / "out")
    assert e.value.path == "A.zip"


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_a_second_archive_after_the_end_of_the_first_is_an_error_not_dropped(tmp_path, mode) -> None:
    # `cat a.tar b.tar > c.tar` (or of two .tar.gz): tarfile stops at the first end-of-archive marker, so
    # b's members would be silently missing from a result reported complete.
    first, second = tar_bytes([("A/a.jpg", b"1")]), tar_bytes([("A/b.jpg", b"2")])
    data = first + second
    if mode == "w:gz":
        data = gzip.compress(first) + gzip.compress(second)
    a = archive(tmp_path / ("c.tar" if mode == "w" else "c.tar.gz"), data)
    (tmp_path / "out").mkdir()
    with pytest.raises(FusionFastError, match="after the end-of-archive marker"):
        a.extract(tmp_path / "out")
    with pytest.raises(FusionFastError, match="after the end-of-archive marker"):
        list(a.members())


def test_zero_padding_after_the_end_of_archive_is_accepted(tmp_path) -> None:
    data = tar_bytes([("A/a.jpg", b"1")]) + bytes(20 * 512)
    a = archive(tmp_path / "A.tar", data)
    (tmp_path / "out").mkdir()
    assert a.extract(tmp_path / "out").files == ["A/a.jpg"]


@pytest.mark.parametrize("jobs", [1, 2])
def test_archives_whose_names_differ_only_in_unsafe_characters_keep_their_own_state(tmp_path, jobs) -> None:
    # "a b.tar" and "a_b.tar", "x/y.tar" and "x__y.tar": one marker and one work folder for two archives
    # would make one archive's completion stand for the other's.
    src = tmp_path / "src"
    (src / "x").mkdir(parents=True)
    for name, top in [("a b.tar", "A"), ("a_b.tar", "B"), ("x/y.tar", "C"), ("x__y.tar", "D")]:
        (src / name).write_bytes(tar_bytes([(f"{top}/1.jpg", top.encode())]))
    result = run_prepare(plan_prepare(src, tmp_path / "pg"), jobs=jobs)
    assert [(u.item.unit.key, u.status, u.error) for u in result.units] == [
        (k, "extracted", None) for k in ["a b.tar", "a_b.tar", "x/y.tar", "x__y.tar"]
    ]
    images = tmp_path / "pg" / "train" / "images"
    assert len(markers(images)) == 4
    again = plan_prepare(src, tmp_path / "pg")
    assert [u.todo for u in again.units] == [False] * 4


def test_an_archive_deep_in_the_download_gets_a_marker_the_filesystem_accepts(tmp_path) -> None:
    folder = tmp_path / "src" / "/".join(["d" * 60] * 5)  # the key is ~310 characters long
    folder.mkdir(parents=True)
    (folder / "Deep.tar").write_bytes(tar_bytes([("Deep/1.jpg", b"1")]))
    result = run_prepare(plan_prepare(tmp_path / "src", tmp_path / "pg"))
    assert [(u.status, u.error) for u in result.units] == [("extracted", None)]
    assert [u.todo for u in plan_prepare(tmp_path / "src", tmp_path / "pg").units] == [False]


# -- header fields out of range ----------------------------------------------------------------------


def _with_pax(info: tarfile.TarInfo | tuple[str, bytes], headers: dict[str, str]) -> bytes:
    if isinstance(info, tuple):
        name, data = info
        info = tarfile.TarInfo(name)
        info.size = len(data)
    else:
        data = b""
    info.pax_headers = headers
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(info, io.BytesIO(data))
        tf.addfile(*_file("T/after.jpg", b"after"))
    return buf.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, io.BytesIO(data)


@pytest.mark.parametrize("mtime", ["1e400", "nan", "-1e30", "99999999999999999999"])
@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_modification_time_out_of_range_is_ignored_like_gnu_tar_does(tmp_path, mtime, kind) -> None:
    # os.utime raised OverflowError / ValueError. GNU tar warns of an implausible time stamp and extracts.
    folder = tarfile.TarInfo("T/sub")
    folder.type = tarfile.DIRTYPE
    member = ("T/x.jpg", b"xx") if kind == "file" else folder
    a = archive(tmp_path / "t.tar", _with_pax(member, {"mtime": mtime}))
    (tmp_path / "out").mkdir()
    a.extract(tmp_path / "out")
    assert (tmp_path / "out" / "T" / "after.jpg").read_bytes() == b"after"
    if kind == "file":
        assert (tmp_path / "out" / "T" / "x.jpg").read_bytes() == b"xx"


def test_a_malformed_extended_header_is_a_clear_error(tmp_path) -> None:
    # A PAX 1.0 sparse header whose map block is not there: tarfile raised ValueError while parsing.
    data = _with_pax(("T/x.jpg", b"x"), {"GNU.sparse.major": "1", "GNU.sparse.minor": "0"})
    a = archive(tmp_path / "t.tar", data)
    (tmp_path / "out").mkdir()
    with pytest.raises(FusionFastError, match="corrupt") as e:
        a.extract(tmp_path / "out")
    assert e.value.path == "t.tar"
    with pytest.raises(FusionFastError, match="corrupt"):
        list(a.members())


# -- two runs on one playground ------------------------------------------------------------------------


@pytest.mark.skipif(os.name != "posix", reason="the playground lock uses flock")
def test_a_second_run_on_the_same_playground_waits_for_nothing_and_touches_nothing(tmp_path) -> None:
    # Another run (in another container or on another node: its pid means nothing here) is extracting;
    # its work folder must not be taken for a dead run's, nor its archives placed twice at once.
    import fcntl

    src, pg = tmp_path / "src", tmp_path / "pg"
    src.mkdir()
    (src / "A.tar").write_bytes(tar_bytes([("A/1.jpg", b"1")]))
    state = pg / "train" / "images" / ".fusion-fast"
    busy = state / ".tmp-A.tar-999999999"  # no such pid here
    (busy / "A").mkdir(parents=True)
    plan = plan_prepare(src, pg)
    with open(state / "lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(FusionFastError, match="another fusion-fast prepare") as e:
            run_prepare(plan)
    assert busy.is_dir() and markers(pg / "train" / "images") == []
    assert str(pg / "train" / "images") in str(e.value)
    assert [u.status for u in run_prepare(plan_prepare(src, pg)).units] == ["extracted"]


def test_a_work_folder_emptied_under_the_run_is_never_marked_complete(tmp_path, monkeypatch) -> None:
    # Whatever removed them (a second run without the lock, a clean-up job), files that were extracted
    # but are no longer there to be placed must not be recorded as in place.
    import shutil

    from fusion_fast.archives import Archive as ArchiveUnit

    extract = ArchiveUnit.extract

    def extract_then_lose_files(self, dest, *args, **kwargs):
        out = extract(self, dest, *args, **kwargs)
        shutil.rmtree(dest / "A")
        return out

    monkeypatch.setattr(ArchiveUnit, "extract", extract_then_lose_files)
    src = tmp_path / "src"
    src.mkdir()
    (src / "A.tar").write_bytes(tar_bytes([("A/1.jpg", b"1"), ("A/2.jpg", b"2")]))
    [unit] = run_prepare(plan_prepare(src, tmp_path / "pg")).units
    assert unit.status == "failed" and "2 were extracted" in (unit.error or ""), unit.error
    assert markers(tmp_path / "pg" / "train" / "images") == []


def test_a_hard_link_whose_target_goes_through_a_link_is_refused(tmp_path) -> None:
    # `h` names `l/../x.jpg`, i.e. `x.jpg` as text, but the system resolves it through `l` -> `b/c`
    # to `b/x.jpg`: a different file than the one checked.
    folder = tarfile.TarInfo("b/c")
    folder.type = tarfile.DIRTYPE
    members = [
        folder,
        ("x.jpg", b"top"),
        ("b/x.jpg", b"other"),
        link("l", "b/c"),
        link("h", "l/../x.jpg", tarfile.LNKTYPE),
    ]
    a = archive(tmp_path / "t.tar", tar_bytes(members))
    (tmp_path / "out").mkdir()
    with pytest.raises(FusionFastError, match="'h'.*through the link 'l'"):
        a.extract(tmp_path / "out")


@pytest.mark.skipif(os.name != "posix", reason="file names that are not UTF-8 are a POSIX thing")
def test_file_names_that_are_not_utf8_are_placed_as_they_are(tmp_path) -> None:
    # An unpacked folder (from a Latin-1 zip, say) and a tar member whose names are bytes that are not
    # UTF-8: Python sees surrogates, which encode() refused while fingerprinting the folder.
    src = tmp_path / "src"
    (src / "Imgs").mkdir(parents=True)
    name = os.fsdecode(b"caf\xe9.jpg")
    (src / "Imgs" / name).write_bytes(b"folder")
    (src / "T.tar").write_bytes(tar_bytes([(f"T/{name}", b"tar")]))
    result = run_prepare(plan_prepare(src, tmp_path / "pg"))
    assert [(u.status, u.error) for u in result.units] == [("extracted", None)] * 2
    images = tmp_path / "pg" / "train" / "images"
    assert (images / "Imgs" / name).read_bytes() == b"folder"
    assert (images / "T" / name).read_bytes() == b"tar"
    assert [u.todo for u in plan_prepare(src, tmp_path / "pg").units] == [False, False]


@pytest.mark.skipif(os.name != "posix", reason="file names that are not UTF-8 are a POSIX thing")
def test_an_annotation_file_name_that_is_not_utf8_is_refused_before_anything_is_written(tmp_path) -> None:
    # The stage YAML is UTF-8 text and cannot name it; the index failed with a misleading "no such file".
    src = tmp_path / "src"
    src.mkdir()
    write_json(src / os.fsdecode(b"caf\xe9.json"), [record("r-0", "A/0.jpg")])
    with pytest.raises(FusionFastError, match="not valid UTF-8") as e:
        plan_prepare(src, tmp_path / "pg")
    assert "caf" in str(e.value)
    assert not (tmp_path / "pg").exists()
