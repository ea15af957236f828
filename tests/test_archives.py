"""`fusion_fast.archives`: safe extraction of tar / zip / split archives, placement and markers."""

from __future__ import annotations

import io
import os
import random
import re
import stat
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusion_fast.archives import (
    Archive,
    ConcatFile,
    FolderUnit,
    Marker,
    archive_base,
    check_symlinks,
    clean_stale_tmp,
    fingerprint,
    group_archives,
    is_in_place,
    place,
    read_marker,
    safe_member_path,
    tmp_dir,
    write_marker,
)
from fusion_fast.errors import FusionFastError

# -- builders shared with test_prepare ---------------------------------------------------------------

Member = tuple[str, bytes] | tarfile.TarInfo


def tar_bytes(members: Iterable[Member], mode: str = "w") -> bytes:
    """A tar (mode "w", "w:gz", ...) of (name, data) files and ready-made TarInfo (links, devices)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:  # type: ignore[call-overload]
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tf.addfile(m)
            else:
                name, data = m
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mtime = 1_700_000_000
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zip_bytes(members: Iterable[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def special(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info


def split(data: bytes, folder: Path, name: str, suffixes: list[str]) -> list[Path]:
    """Write `data` as parts `name.<suffix>` of about equal size."""
    size = -(-len(data) // len(suffixes))
    paths = []
    for k, suffix in enumerate(suffixes):
        path = folder / f"{name}.{suffix}"
        path.write_bytes(data[k * size : (k + 1) * size])
        paths.append(path)
    return paths


def files_of(n: int, top: str = "", seed: int = 0) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    return [(f"{top}{k // 10:03d}/{k}.jpg", rng.randbytes(rng.randrange(1, 3000))) for k in range(n)]


def tree(folder: Path) -> dict[str, bytes | str]:
    """Relative path -> file bytes, or `-> target` for symlinks."""
    out: dict[str, bytes | str] = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_symlink():
            out[rel] = f"-> {os.readlink(p)}"
        elif p.is_file():
            out[rel] = p.read_bytes()
    return out


def archive(path: Path, data: bytes) -> Archive:
    path.write_bytes(data)
    [a] = group_archives([(path.name, path)])
    return a


# -- finding and reading archives --------------------------------------------------------------------


def test_archive_names_and_split_parts(tmp_path: Path) -> None:
    assert archive_base("x.tar.gz") == ("x.tar.gz", None)
    assert archive_base("X.TGZ") == ("X.TGZ", None)
    assert archive_base("x.tar.gz.00") == ("x.tar.gz", "00")
    assert archive_base("x.tar.partab") == ("x.tar", "partab")
    assert archive_base("x.zip.001") == ("x.zip", "001")
    assert archive_base("x.json") is None
    assert archive_base("x.jpg") is None
    names = ["a.tar.gz.01", "a.tar.gz.00", "b.tar.partab", "b.tar.partaa", "c.zip.002", "c.zip.001", "d.tgz"]
    files = [(f"imgs/{n}", tmp_path / n) for n in names]
    for _, p in files:
        p.write_bytes(b"x")
    got = {a.key: (a.kind, [p.name for p in a.parts], a.stem) for a in group_archives(files)}
    assert got == {
        "imgs/a.tar.gz": ("tar", ["a.tar.gz.00", "a.tar.gz.01"], "a"),
        "imgs/b.tar": ("tar", ["b.tar.partaa", "b.tar.partab"], "b"),
        "imgs/c.zip": ("zip", ["c.zip.001", "c.zip.002"], "c"),
        "imgs/d.tgz": ("tar", ["d.tgz"], "d"),
    }


def test_split_parts_sorted_by_number_not_text(tmp_path: Path) -> None:
    files = [(f"x.tar.{k}", tmp_path / f"x.tar.{k}") for k in (10, 9, 1, 0, 2, 3, 4, 5, 6, 7, 8)]
    for _, p in files:
        p.write_bytes(b"")
    [a] = group_archives(files)
    assert [p.name for p in a.parts] == [f"x.tar.{k}" for k in range(11)]


@pytest.mark.parametrize(
    ("suffixes", "message"),
    [
        (["00", "02"], "missing part 1"),
        (["partaa", "partac"], "expected aa first and no gaps"),
        (["ab"], "aa"),
        # Two files for one part (a re-download named differently): both would be read, one after the other.
        (["1", "01", "2"], "part 1 twice"),
        (["0", "00", "1"], "part 0 twice"),
        (["aa", "AA", "ab"], "part aa twice"),
    ],
)
def test_incomplete_split_archive_is_an_error(tmp_path: Path, suffixes: list[str], message: str) -> None:
    files = [(f"x.tar.gz.{s}", tmp_path / f"x.tar.gz.{s}") for s in suffixes]
    with pytest.raises(FusionFastError, match=message) as e:
        group_archives(files)
    assert "x.tar.gz" in str(e.value)


def test_whole_and_split_copies_of_one_archive_are_an_error(tmp_path: Path) -> None:
    with pytest.raises(FusionFastError, match="both whole and as split parts"):
        group_archives([("x.tar", tmp_path / "x.tar"), ("x.tar.00", tmp_path / "x.tar.00")])


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=3000), cuts=st.lists(st.integers(0, 3000), max_size=4), ops=st.data())
def test_concat_file_reads_and_seeks_like_the_joined_bytes(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, cuts: list[int], ops: st.DataObject
) -> None:
    folder = tmp_path_factory.mktemp("parts")
    bounds = sorted({0, len(data), *(min(c, len(data)) for c in cuts)})
    parts = []
    for k, (a, b) in enumerate(zip(bounds, bounds[1:] or [len(data)], strict=False)):
        parts.append(folder / f"p{k}")
        parts[-1].write_bytes(data[a:b])
    with io.BufferedReader(ConcatFile(parts), 64) as f:
        assert f.read() == data
        for _ in range(5):
            pos = ops.draw(st.integers(0, len(data) + 2))
            n = ops.draw(st.integers(0, 200))
            f.seek(pos)
            assert f.read(n) == data[pos : pos + n]
        f.seek(-min(3, len(data)), io.SEEK_END)
        assert f.read() == data[len(data) - min(3, len(data)) :]


def test_fingerprint_sees_head_tail_and_size_and_ignores_how_it_is_split(tmp_path: Path) -> None:
    data = random.Random(1).randbytes(3 << 20)
    whole = tmp_path / "whole"
    whole.write_bytes(data)
    parts = split(data, tmp_path, "p.tar", ["00", "01", "02"])
    assert fingerprint([whole]) == fingerprint(parts)
    for change in (0, len(data) - 1):
        changed = bytearray(data)
        changed[change] ^= 1
        other = tmp_path / f"changed{change}"
        other.write_bytes(bytes(changed))
        assert fingerprint([other]) != fingerprint([whole])
    shorter = tmp_path / "shorter"
    shorter.write_bytes(data[:-1])
    assert fingerprint([shorter]) != fingerprint([whole])


# -- extraction --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_tar_extracts_every_member_with_its_bytes(tmp_path: Path, mode: str) -> None:
    members = files_of(40, "Top/")
    a = archive(tmp_path / f"a{'.tar' if mode == 'w' else '.tar.' + mode[2:]}", tar_bytes(members, mode))
    dest = tmp_path / "out"
    dest.mkdir()
    seen: list[int] = []
    got = a.extract(dest, seen.append)
    assert tree(dest) == dict(members)
    assert sorted(got.files) == sorted(n for n, _ in members)
    assert got.bytes == sum(len(d) for _, d in members)
    assert seen[-1] == a.size
    assert list(a.members()) == [n for n, _ in members]
    assert list(a.members(limit=7)) == [n for n, _ in members][:7]
    assert (dest / members[0][0]).stat().st_mtime == 1_700_000_000


def test_split_tar_gz_and_split_zip_extract_like_the_whole(tmp_path: Path) -> None:
    members = files_of(30)
    split(tar_bytes(members, "w:gz"), tmp_path, "s.tar.gz", ["00", "01", "02"])
    split(zip_bytes(members), tmp_path, "z.zip", ["001", "002"])
    archives = group_archives([(p.name, p) for p in sorted(tmp_path.iterdir())])
    assert [(a.key, len(a.parts)) for a in archives] == [("s.tar.gz", 3), ("z.zip", 2)]
    for a in archives:
        dest = tmp_path / f"out-{a.stem}"
        dest.mkdir()
        a.extract(dest)
        assert tree(dest) == dict(members)


def test_internal_links_are_kept(tmp_path: Path) -> None:
    members: list[Member] = [
        ("d/a.jpg", b"A"),
        link("d/b.jpg", "a.jpg"),
        link("d/c.jpg", "d/a.jpg", tarfile.LNKTYPE),
    ]
    a = archive(tmp_path / "l.tar", tar_bytes(members))
    dest = tmp_path / "out"
    dest.mkdir()
    got = a.extract(dest)
    assert (dest / "d/b.jpg").is_symlink() and (dest / "d/b.jpg").read_bytes() == b"A"
    assert (dest / "d/c.jpg").read_bytes() == b"A" and not (dest / "d/c.jpg").is_symlink()
    assert got.symlinks == [("d/b.jpg", "a.jpg")]
    assert sorted(got.files) == ["d/a.jpg", "d/c.jpg"]


#: case -> (members, the member that must be refused)
MALICIOUS: dict[str, tuple[list[Member], str]] = {
    "dotdot": ([("ok.jpg", b"ok"), ("../escape.jpg", b"evil")], "../escape.jpg"),
    "dotdot-deep": ([("a/../../escape.jpg", b"evil")], "a/../../escape.jpg"),
    "absolute": ([("/tmp/fusion-fast-absolute-escape.jpg", b"evil")], "/tmp/fusion-fast-absolute-escape.jpg"),
    "symlink-out": ([link("evil", "../../outside.txt")], "evil"),
    "symlink-absolute": ([link("evil", "/etc/passwd")], "evil"),
    "symlink-then-write": ([link("d", ".."), ("d/escape.jpg", b"evil")], "d"),
    # Each link looks inside on paper; on disk a/b is the destination itself, so a/b/c -> .. leaves it.
    # Only the on-disk check (tarfile's data filter) can see that.
    "symlink-chain": ([link("a/b", ".."), link("a/b/c", "..")], "a/b/c"),
    "hardlink-out": ([link("evil", "../outside.txt", tarfile.LNKTYPE)], "evil"),
    "chardev": ([special("dev", tarfile.CHRTYPE)], "dev"),
    "blockdev": ([special("dev", tarfile.BLKTYPE)], "dev"),
    "fifo": ([special("pipe", tarfile.FIFOTYPE)], "pipe"),
}


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_malicious_tar_members_are_refused(tmp_path: Path, case: str) -> None:
    members, refused = MALICIOUS[case]
    if case == "symlink-chain" and not hasattr(tarfile, "data_filter"):
        pytest.skip("needs tarfile's data filter (Python >= 3.10.12 / 3.11.4)")
    box = tmp_path / "box"
    (box / "src").mkdir(parents=True)
    (box / "outside.txt").write_bytes(b"precious")
    a = archive(box / "src" / f"{case}.tar", tar_bytes(members))
    dest = box / "dest"
    dest.mkdir()
    before = tree(box)
    with pytest.raises(FusionFastError) as e:
        a.extract(dest)
    message = str(e.value)
    assert message.startswith(f"{case}.tar: refusing member {refused!r}: ")
    after = {k: v for k, v in tree(box).items() if not k.startswith("dest/")}
    assert after == {k: v for k, v in before.items() if not k.startswith("dest/")}
    assert not Path("/tmp/fusion-fast-absolute-escape.jpg").exists()
    if case != "symlink-chain":  # listing sees names only; that one needs the disk
        with pytest.raises(FusionFastError, match="refusing member"):
            list(a.members())


@pytest.mark.parametrize(
    ("name", "why"),
    [("../x.jpg", "'..'"), ("/abs.jpg", "absolute"), ("C:/x.jpg", "absolute"), ("a\\..\\x.jpg", "backslash")],
)
def test_malicious_zip_names_are_refused(tmp_path: Path, name: str, why: str) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(zipfile.ZipInfo(name), b"evil")
    a = archive(tmp_path / "bad.zip", buf.getvalue())
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(FusionFastError, match=why) as e:
        a.extract(dest)
    assert str(e.value).startswith(f"bad.zip: refusing member {name!r}: ")
    assert tree(tmp_path / "out") == {}


def test_zip_symlink_is_refused(tmp_path: Path) -> None:
    info = zipfile.ZipInfo("link.jpg")
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(info, "/etc/passwd")
    a = archive(tmp_path / "sym.zip", buf.getvalue())
    (tmp_path / "out").mkdir()
    with pytest.raises(FusionFastError, match="symlink"):
        a.extract(tmp_path / "out")


def test_safe_member_path_normalises_dots() -> None:
    assert safe_member_path("a.tar", "./x/./y.jpg") == "x/y.jpg"
    assert safe_member_path("a.tar", "./") is None
    with pytest.raises(FusionFastError):
        safe_member_path("a.tar", "x/../../y")


def _truncated(tmp_path: Path, kind: str) -> Archive:
    members = files_of(20, "T/")
    if kind == "tar.gz":
        data = tar_bytes(members, "w:gz")
        return archive(tmp_path / "t.tar.gz", data[: len(data) // 2])
    if kind == "tar-mid-member":
        data = tar_bytes(members)
        return archive(tmp_path / "t.tar", data[: 512 + 100])
    if kind == "tar-at-boundary":
        data = tar_bytes([("a.jpg", b"x" * 512), ("b.jpg", b"y" * 512)])
        return archive(tmp_path / "t.tar", data[:1024])  # first member complete, no end-of-archive blocks
    if kind == "zip":
        data = zip_bytes(members)
        return archive(tmp_path / "t.zip", data[: len(data) - 30])
    if kind == "zip-bad-crc":
        data = bytearray(zip_bytes([("a.jpg", b"z" * 1000)]))
        data[data.index(b"z" * 10)] ^= 1
        return archive(tmp_path / "t.zip", bytes(data))
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["tar.gz", "tar-mid-member", "tar-at-boundary", "zip", "zip-bad-crc"])
def test_truncated_or_corrupt_archive_is_a_clear_error(tmp_path: Path, kind: str) -> None:
    a = _truncated(tmp_path, kind)
    (tmp_path / "out").mkdir()
    with pytest.raises(FusionFastError, match="corrupt or truncated archive") as e:
        a.extract(tmp_path / "out")
    assert a.key in str(e.value)


def test_folder_unit_links_files_and_copies_when_it_cannot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "Src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "1.jpg").write_bytes(b"one")
    (src / "2.jpg").write_bytes(b"two")
    files = [(f"Src/{p}", (src / p).stat().st_size, 0) for p in ("a/1.jpg", "2.jpg")]
    unit = FolderUnit("Src/", src, tmp_path, files)
    (tmp_path / "linked").mkdir()
    unit.extract(tmp_path / "linked")
    assert os.path.samefile(tmp_path / "linked/Src/a/1.jpg", src / "a/1.jpg")

    def no_links(*_: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    (tmp_path / "copied").mkdir()
    got = unit.extract(tmp_path / "copied")
    assert tree(tmp_path / "copied") == {"Src/a/1.jpg": b"one", "Src/2.jpg": b"two"}
    assert not os.path.samefile(tmp_path / "copied/Src/2.jpg", src / "2.jpg")
    assert got.bytes == 6
    assert unit.stamp() == FolderUnit("Src/", src, tmp_path, list(reversed(files))).stamp()
    assert unit.stamp() != FolderUnit("Src/", src, tmp_path, files[:1]).stamp()


# -- placing and markers -----------------------------------------------------------------------------


def _extracted(tmp: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_bytes(data)
    return tmp


@pytest.mark.parametrize(
    ("strip", "prefix", "expected"),
    [
        (0, "", {"P/0/1.jpg", "P/0/2.jpg", "old/x.jpg"}),
        (1, "", {"0/1.jpg", "0/2.jpg", "old/x.jpg"}),
        (0, "New/", {"New/P/0/1.jpg", "New/P/0/2.jpg", "old/x.jpg"}),
        (2, "P/sub/", {"P/sub/1.jpg", "P/sub/2.jpg", "old/x.jpg"}),
    ],
)
def test_place_strips_prefixes_and_reports_top_entries(
    tmp_path: Path, strip: int, prefix: str, expected: set[str]
) -> None:
    images = tmp_path / "images"
    _extracted(images, {"old/x.jpg": b"old"})
    tmp = _extracted(images / ".tmp-x-1", {"P/0/1.jpg": b"1", "P/0/2.jpg": b"2"})
    entries = place(tmp, images, strip, prefix)
    got = {k for k in tree(images) if not k.startswith(".tmp")}
    assert got == expected
    assert entries == sorted({e.split("/", 1)[0] for e in expected - {"old/x.jpg"}})


def test_place_merges_into_existing_folders_and_keeps_files_that_are_already_there(tmp_path: Path) -> None:
    images = tmp_path / "images"
    _extracted(images, {"P/000/1.jpg": b"first", "P/000/other.jpg": b"s"})
    before = (images / "P/000/1.jpg").stat().st_mtime_ns
    place(_extracted(tmp_path / "t1", {"P/000/1.jpg": b"first", "P/001/2.jpg": b"2"}), images, 0, "")
    assert tree(images) == {"P/000/1.jpg": b"first", "P/000/other.jpg": b"s", "P/001/2.jpg": b"2"}
    assert (images / "P/000/1.jpg").stat().st_mtime_ns == before  # the same file: left as it is


@pytest.mark.parametrize(
    ("files", "strip", "prefix", "message"),
    [
        (
            {"P/000/1.jpg": b"new", "P/002/3.jpg": b"3"},
            0,
            "",
            "'P/000/1.jpg' -> images/P/000/1.jpg: exists and differs",
        ),
        ({"P/000/1.jpg/inner.jpg": b"x"}, 0, "", "a file is in the way of its folder"),
        ({"P/000": b"x"}, 0, "", "'P/000' -> images/P/000: a folder is there"),
        (
            {"A/x/1.jpg": b"a", "B/x/1.jpg": b"b"},
            1,
            "",
            "members 'A/x/1.jpg' and 'B/x/1.jpg' would both become images/x/1.jpg",
        ),
        ({"A/x": b"a", "B/x/1.jpg": b"b"}, 1, "Q/", "images/Q/x would be both a file and a folder"),
        ({"A/.fusion-fast/m.done": b"{}"}, 1, "", "refusing member 'A/.fusion-fast/m.done'"),
    ],
)
def test_place_finds_every_conflict_before_moving_anything(
    tmp_path: Path, files: dict[str, bytes], strip: int, prefix: str, message: str
) -> None:
    images = tmp_path / "images"
    _extracted(images, {"P/000/1.jpg": b"first", "P/001/2.jpg": b"2"})
    before = tree(images)
    tmp = _extracted(tmp_path / "t", files)
    with pytest.raises(FusionFastError, match=re.escape(message)) as e:
        place(tmp, images, strip, prefix, "images/X.tar")
    assert str(e.value).startswith("images/X.tar: ")
    assert tree(images) == before
    assert set(tree(tmp)) == set(files)


def test_symlinks_must_stay_inside_images_after_stripping() -> None:
    check_symlinks("a.tar", [("top/d/link", "../x.jpg")], 1, "")
    with pytest.raises(FusionFastError, match="outside"):
        check_symlinks("a.tar", [("top/link", "../x.jpg")], 1, "")


def test_markers_round_trip_and_must_match_the_stamp(tmp_path: Path) -> None:
    images = tmp_path / "images"
    (images / "P").mkdir(parents=True)
    a = archive(tmp_path / "P.tar", tar_bytes(files_of(3)))
    stamp = a.stamp()
    marker = Marker(a.key, "tar", stamp.size, stamp.mtime_ns, stamp.fingerprint, 0, "P/", ["P"], 3, 9)
    assert read_marker(images, a.key) is None
    write_marker(images, marker)
    assert read_marker(images, a.key) == marker
    assert is_in_place(images, a, stamp) == marker
    assert is_in_place(images, a, stamp.__class__(stamp.size, stamp.mtime_ns + 1, stamp.fingerprint)) is None
    (images / "P").rmdir()
    assert is_in_place(images, a, stamp) is None
    (images / ".fusion-fast" / "P.tar.done").write_text("{not json")
    assert read_marker(images, a.key) is None


def test_clean_stale_tmp_removes_only_folders_of_dead_processes(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f".tmp-a-{dead.pid}" / "x").mkdir(parents=True)
    (tmp_path / f".tmp-b-{os.getppid()}").mkdir()  # a live process (pytest's parent)
    (tmp_path / "PixelProse").mkdir()
    (tmp_path / f".tmp-c.done-{dead.pid}").write_text("{}")
    removed = clean_stale_tmp(tmp_path)
    assert sorted(p.name for p in removed) == [f".tmp-a-{dead.pid}", f".tmp-c.done-{dead.pid}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".tmp-b-{os.getppid()}", "PixelProse"]
    assert tmp_dir(tmp_path, "images/x.tar").name == f".tmp-images__x.tar-{os.getpid()}"


def test_delay_hook_slows_extraction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = archive(tmp_path / "d.tar", tar_bytes(files_of(5)))
    monkeypatch.setenv("FUSION_FAST_EXTRACT_DELAY", "0.04")
    (tmp_path / "out").mkdir()
    started = time.perf_counter()
    a.extract(tmp_path / "out")
    assert time.perf_counter() - started >= 5 * 0.04
