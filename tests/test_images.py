"""The image store against Python's own tarfile / zipfile (the oracle): every member read through the
store equals the bytes those modules extract."""

from __future__ import annotations

import errno
import io
import os
import pickle
import random
import tarfile
import zipfile
from pathlib import Path

import pytest

from fusion_fast.errors import CorruptArchiveError, CorruptIndexError, StaleIndexError
from fusion_fast.images import ImageStore


def _payload(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _tar(path: Path, members: dict[str, bytes], fmt: int) -> Path:
    with tarfile.open(path, "w", format=fmt) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _zip(path: Path, members: dict[str, tuple[bytes, int]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, (data, method) in members.items():
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return path


def _members(seed: int) -> dict[str, bytes]:
    return {
        "COCO/train2017/000000000009.jpg": _payload(seed, 1234),
        "COCO/train2017/empty.jpg": b"",
        f"COCO/{'long' * 40}/{'x' * 120}.jpg": _payload(seed + 1, 5000),
        "COCO/ünïcode/名前.png": _payload(seed + 2, 513),
        "top.jpg": _payload(seed + 3, 512),
    }


def _oracle_tar(path: Path, out: Path) -> dict[str, bytes]:
    """Every regular member as tarfile extracts it to disk."""
    with tarfile.open(path) as tf:
        tf.extractall(out, filter="data")
        names = [m.name for m in tf.getmembers() if m.isfile()]
    return {n: (out / n).read_bytes() for n in names}


@pytest.mark.parametrize(
    "fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT], ids=["gnu", "pax", "ustar"]
)
def test_tar_members_equal_what_tarfile_extracts(tmp_path: Path, fmt: int) -> None:
    members = _members(1)
    if fmt == tarfile.USTAR_FORMAT:  # ustar cannot hold names over 255 bytes nor non-ASCII ones portably
        members = {k: v for k, v in members.items() if len(k) < 200 and k.isascii()}
        members["a" * 90 + "/" + "b" * 90 + ".jpg"] = _payload(9, 100)  # needs the ustar prefix field
    archive = _tar(tmp_path / "images.tar", members, fmt)
    expected = _oracle_tar(archive, tmp_path / "extracted")
    assert expected.keys() == members.keys()
    store = ImageStore.build([archive], tmp_path / "s.ffimg")
    assert store.report is not None and store.report.members == len(members)
    assert len(store) == len(members)
    assert sorted(store.members()) == sorted(members)
    for name, data in expected.items():
        assert name in store
        assert store.read(name) == data, name
        assert bytes(store.view(name)) == data, name


def test_zip_stored_and_deflated_members_equal_what_zipfile_extracts(tmp_path: Path) -> None:
    members = {
        "GQA/images/1.jpg": (_payload(3, 20_000), zipfile.ZIP_STORED),
        "GQA/images/text.txt": (b"deflate me " * 3000, zipfile.ZIP_DEFLATED),
        "GQA/images/rnd.bin": (_payload(4, 7000), zipfile.ZIP_DEFLATED),
        "GQA/ünï.jpg": (_payload(5, 10), zipfile.ZIP_STORED),
    }
    archive = _zip(tmp_path / "gqa.zip", members)
    store = ImageStore.build([archive], tmp_path / "s.ffimg")
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(tmp_path / "x")
        for info in zf.infolist():
            expected = (tmp_path / "x" / info.filename).read_bytes()
            assert store.read(info.filename) == expected
            assert bytes(store.view(info.filename)) == expected
    assert store.location("GQA/images/text.txt")[4] == 8
    assert store.location("GQA/images/1.jpg")[4] == 0


def test_zip_names_without_the_utf8_flag_are_cp437_like_zipfile_reads_them(tmp_path: Path) -> None:
    raw = _zip(tmp_path / "a.zip", {"caf?.jpg": (b"coffee", 0)}).read_bytes()
    # Same length, no UTF-8 flag: 0x82 is "é" in code page 437.
    (tmp_path / "cp.zip").write_bytes(raw.replace(b"caf?.jpg", b"caf\x82.jpg"))
    with zipfile.ZipFile(tmp_path / "cp.zip") as zf:
        assert zf.namelist() == ["café.jpg"]
        expected = zf.read("café.jpg")
    store = ImageStore.build([tmp_path / "cp.zip"], tmp_path / "s.ffimg")
    assert store.members() == ["café.jpg"]
    assert store.read("café.jpg") == expected == b"coffee"


def test_views_of_stored_members_are_read_only_and_copy_nothing(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tar", {"a.jpg": b"abc" * 1000}, tarfile.GNU_FORMAT)
    store = ImageStore.build([archive], tmp_path / "s.ffimg")
    view = store.view("a.jpg")
    assert view.readonly
    assert view.nbytes == 3000
    with pytest.raises(TypeError):
        view[0] = 1  # type: ignore[index]
    del store  # the view keeps the mapping alive
    assert bytes(view[:3]) == b"abc"


def test_open_image_decodes_with_pillow(tmp_path: Path) -> None:
    from PIL import Image

    img = Image.new("RGB", (7, 5), (10, 200, 30))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    archive = _zip(tmp_path / "i.zip", {"p/x.png": (buf.getvalue(), zipfile.ZIP_DEFLATED)})
    store = ImageStore.build([archive], tmp_path / "s.ffimg")
    out = store.open_image("p/x.png")
    assert out.size == (7, 5)
    assert out.convert("RGB").getpixel((3, 2)) == (10, 200, 30)


def test_placements_map_record_paths_to_members(tmp_path: Path) -> None:
    from fusion_fast.archives import strip_components

    members = {"data/train/a.jpg": b"a", "data/val/b.jpg": b"b"}
    first = _tar(tmp_path / "a.tar", members, tarfile.GNU_FORMAT)
    second = _zip(tmp_path / "b.zip", {"c.jpg": (b"c", 0)})
    store = ImageStore.build([first, second], tmp_path / "s.ffimg", placements=[(1, "COCO/"), (0, "Extra")])
    for name, data in members.items():
        assert store.read("COCO/" + strip_components(name, 1)) == data
    assert store.read("Extra/c.jpg") == b"c"
    assert "data/train/a.jpg" not in store
    with pytest.raises(ValueError, match="1 placements for 2 archives"):
        ImageStore.build([first, second], tmp_path / "t.ffimg", placements=[(0, "")])


def test_missing_member_is_a_key_error_naming_it(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tar", {"a.jpg": b"1"}, tarfile.GNU_FORMAT)
    store = ImageStore.build([archive], tmp_path / "s.ffimg")
    with pytest.raises(KeyError, match="nowhere/b.jpg"):
        store.read("nowhere/b.jpg")
    assert "nowhere/b.jpg" not in store
    assert 3 not in store


def test_first_archive_wins_for_duplicates_and_the_build_reports_them(tmp_path: Path) -> None:
    first = _tar(tmp_path / "1.tar", {"d/x.jpg": b"from tar", "t.jpg": b"t"}, tarfile.GNU_FORMAT)
    second = _zip(tmp_path / "2.zip", {"d/x.jpg": (b"from zip", 0), "z.jpg": (b"z", 8)})
    store = ImageStore.build([first, second], tmp_path / "s.ffimg")
    assert store.read("d/x.jpg") == b"from tar"
    assert store.report is not None
    assert store.report.duplicates == [("d/x.jpg", str(first), str(second))]
    assert len(store) == 3
    store = ImageStore.build([second, first], tmp_path / "s.ffimg")
    assert store.read("d/x.jpg") == b"from zip"


def test_truncated_or_corrupt_archives_are_clear_errors_and_write_no_store(tmp_path: Path) -> None:
    good = _tar(tmp_path / "good.tar", _members(2), tarfile.PAX_FORMAT).read_bytes()
    dest = tmp_path / "s.ffimg"
    with tarfile.open(tmp_path / "good.tar") as tf:
        last = tf.getmembers()[-1]
    end_of_data = -(-(last.offset_data + last.size) // 512) * 512  # the end-of-archive blocks are cut off
    for cut in (700, len(good) // 2, end_of_data):
        bad = tmp_path / "cut.tar"
        bad.write_bytes(good[:cut])
        with pytest.raises(CorruptArchiveError, match="cut.tar") as err:
            ImageStore.build([bad], dest)
        assert "byte" in str(err.value)
        assert not dest.exists()
    flipped = bytearray(good)
    flipped[100] ^= 0xFF  # inside the first header: its checksum no longer matches
    (tmp_path / "flip.tar").write_bytes(bytes(flipped))
    with pytest.raises(CorruptArchiveError, match="checksum"):
        ImageStore.build([tmp_path / "flip.tar"], dest)
    zgood = _zip(tmp_path / "good.zip", {"a": (b"x" * 100, 0)}).read_bytes()
    (tmp_path / "cut.zip").write_bytes(zgood[: len(zgood) - 30])
    with pytest.raises(CorruptArchiveError, match="cut.zip"):
        ImageStore.build([tmp_path / "cut.zip"], dest)
    assert not dest.exists()
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_gzip_and_split_tars_are_converted_once_into_shards(tmp_path: Path) -> None:
    members = _members(5)
    plain = _tar(tmp_path / "plain.tar", members, tarfile.PAX_FORMAT)
    with tarfile.open(tmp_path / "a.tar.gz", "w:gz", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo("gz/" + name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    raw = (tmp_path / "a.tar.gz").read_bytes()
    parts = []
    for k, (lo, hi) in enumerate([(0, 1000), (1000, len(raw))]):
        (tmp_path / f"b.tar.gz.0{k}").write_bytes(raw[lo:hi])
        parts.append(tmp_path / f"b.tar.gz.0{k}")
    store = ImageStore.build([tmp_path / "a.tar.gz", plain], tmp_path / "s.ffimg")
    shards = sorted((tmp_path / "s.ffimg.shards").iterdir())
    assert [p.suffix for p in shards] == [".tar"]
    with tarfile.open(tmp_path / "a.tar.gz") as tf:
        for m in tf.getmembers():
            f = tf.extractfile(m)
            assert f is not None
            assert store.read(m.name) == f.read()
    for name, data in members.items():
        assert store.read(name) == data
    mtime = shards[0].stat().st_mtime_ns
    again = ImageStore.build([tmp_path / "a.tar.gz", plain], tmp_path / "s.ffimg")
    assert shards[0].stat().st_mtime_ns == mtime, "a finished shard is reused"
    assert len(again) == 2 * len(members)
    split = ImageStore.build([parts], tmp_path / "t.ffimg")
    assert sorted(split.members()) == sorted("gz/" + n for n in members)


def test_a_truncated_gzip_tar_is_an_error_and_leaves_no_shard(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "a.tar.gz", "w:gz") as tf:
        info = tarfile.TarInfo("a.jpg")
        info.size = 100_000
        tf.addfile(info, io.BytesIO(_payload(1, 100_000)))
    raw = (tmp_path / "a.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(raw[:-4])
    with pytest.raises(CorruptArchiveError, match="cut.tar.gz"):
        ImageStore.build([tmp_path / "cut.tar.gz"], tmp_path / "s.ffimg")
    assert list((tmp_path / "s.ffimg.shards").iterdir()) == []
    assert not (tmp_path / "s.ffimg").exists()


def test_a_corrupt_store_file_is_refused(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tar", {"a.jpg": b"1"}, tarfile.GNU_FORMAT)
    ImageStore.build([archive], tmp_path / "s.ffimg")
    raw = (tmp_path / "s.ffimg").read_bytes()
    (tmp_path / "s.ffimg").write_bytes(raw[:-8])
    with pytest.raises(CorruptIndexError, match="truncated"):
        ImageStore.open(tmp_path / "s.ffimg")


def _retar_keeping_mtime(path: Path, members: dict[str, bytes]) -> None:
    """Rewrites the tar `path` with `members` (same size overall) and gives it back its old mtime."""
    st = path.stat()
    _tar(path, members, tarfile.GNU_FORMAT)
    assert path.stat().st_size == st.st_size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_an_archive_rewritten_with_the_same_size_and_mtime_is_stale_not_other_bytes(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tar", {"a.jpg": b"A" * 600, "b.jpg": b"B" * 600}, tarfile.GNU_FORMAT)
    store = ImageStore.build([archive], tmp_path / "s.ffimg")
    assert store.read("a.jpg") == b"A" * 600
    # The same members under swapped names: each old name now sits where the other's data is.
    _retar_keeping_mtime(archive, {"b.jpg": b"B" * 600, "a.jpg": b"A" * 600})
    store = ImageStore.open(tmp_path / "s.ffimg")
    for name in ("a.jpg", "b.jpg"):
        with pytest.raises(StaleIndexError, match="rebuild"):
            store.read(name)
        with pytest.raises(StaleIndexError):
            store.view(name)


def test_a_store_of_another_format_version_asks_for_a_rebuild(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tar", {"a.jpg": b"1"}, tarfile.GNU_FORMAT)
    ImageStore.build([archive], tmp_path / "s.ffimg")
    raw = bytearray((tmp_path / "s.ffimg").read_bytes())
    raw[8:12] = (1).to_bytes(4, "little")
    (tmp_path / "s.ffimg").write_bytes(bytes(raw))
    with pytest.raises(CorruptIndexError, match="format version 1.*rebuild"):
        ImageStore.open(tmp_path / "s.ffimg")


def test_members_are_listed_from_the_archives_whatever_their_name_format(tmp_path: Path) -> None:
    members = _members(7)
    tars = [
        _tar(tmp_path / f"{k}.tar", members, fmt)
        for k, fmt in enumerate((tarfile.GNU_FORMAT, tarfile.PAX_FORMAT))
    ]
    store = ImageStore.build(tars, tmp_path / "s.ffimg", placements=[(1, "x"), (0, "y/")])
    # Archive by archive, each in member order.
    expected = ["x/" + n.split("/", 1)[1] for n in members if "/" in n] + ["y/" + n for n in members]
    assert store.members() == expected
    assert store.report is not None
    assert store.report.refused == [(str(tars[0]), "top.jpg", "has fewer than 1 folders to strip")]


def test_links_and_escaping_members_are_never_readable(tmp_path: Path) -> None:
    path = tmp_path / "h.tar"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        link = tarfile.TarInfo("link.jpg")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tf.addfile(link)
        evil = tarfile.TarInfo("../evil.jpg")
        evil.size = 1
        tf.addfile(evil, io.BytesIO(b"e"))
        ok = tarfile.TarInfo("./ok.jpg")
        ok.size = 2
        tf.addfile(ok, io.BytesIO(b"ok"))
    store = ImageStore.build([path], tmp_path / "s.ffimg")
    assert store.members() == ["ok.jpg"]
    assert store.read("ok.jpg") == b"ok"
    assert "link.jpg" not in store and "../evil.jpg" not in store
    assert store.report is not None
    assert sorted(r[1] for r in store.report.refused) == ["../evil.jpg", "link.jpg"]


def test_a_store_pickles_as_its_path(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tar", _members(3), tarfile.PAX_FORMAT)
    store = ImageStore.build([archive], tmp_path / "s.ffimg")
    blob = pickle.dumps(store)
    assert len(blob) < 300
    again = pickle.loads(blob)
    assert again.path == store.path and again.report is None
    for name in store.members():
        assert again.read(name) == store.read(name)


def _read_in_worker(args: tuple[ImageStore, str]) -> bytes:
    store, name = args
    return store.read(name)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_dataloader_workers_read_through_the_store(tmp_path: Path, method: str) -> None:
    torch = pytest.importorskip("torch")
    members = {f"imgs/{i}.jpg": _payload(i, 100 + i) for i in range(20)}
    archive = _tar(tmp_path / "a.tar", members, tarfile.GNU_FORMAT)
    store = ImageStore.build([archive], tmp_path / "s.ffimg")
    names = sorted(members)

    loader = torch.utils.data.DataLoader(
        [(store, n) for n in names],
        batch_size=None,
        num_workers=2,
        multiprocessing_context=method,
        collate_fn=_read_in_worker,
    )
    assert list(loader) == [members[n] for n in names]
    assert os.getpid()  # the parent's store is untouched
    assert store.read(names[0]) == members[names[0]]


def _png(color: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 3), color).save(buf, format="PNG")
    return buf.getvalue()


def _folder_with_store(tmp_path: Path) -> tuple[Path, Path]:
    """`images/` whose COCO images live only in an archive indexed into `images/.fusion-fast/`, plus a
    JSON data file referencing them, one member that no archive holds and one corrupt image."""
    import json

    images = tmp_path / "images"
    archive = _tar(
        tmp_path / "coco.tar",
        {"top/a.png": _png((255, 0, 0)), "top/b.png": _png((0, 255, 0)), "top/bad.png": b"not a png"},
        tarfile.GNU_FORMAT,
    )
    (images / ".fusion-fast").mkdir(parents=True)
    ImageStore.build([archive], images / ".fusion-fast" / "images.ffimg", placements=[(1, "COCO")])
    conv = [{"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "yo"}]
    records = [
        {"id": name, "image": f"COCO/{name}.png", "conversations": conv}
        for name in ("a", "b", "missing", "bad")
    ]
    data = tmp_path / "d.json"
    data.write_text(json.dumps(records))
    return data, images


def test_fusion_dataset_loads_images_through_the_folder_store(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from fusion_fast.errors import RecordError
    from fusion_fast.torch import IMAGE_KEY, FusionDataset

    data, images = _folder_with_store(tmp_path)
    assert not (images / "COCO").exists()
    ds = FusionDataset(data, image_folder=images, load_images=True)
    assert ds[0][IMAGE_KEY].getpixel((1, 1)) == (255, 0, 0)
    assert ds[1][IMAGE_KEY].getpixel((1, 1)) == (0, 255, 0)
    with pytest.raises(RecordError, match="not found"):
        ds[2]
    with pytest.raises(RecordError, match="cannot decode"):
        ds[3]
    # A file on disk wins over the store's member.
    (images / "COCO").mkdir()
    (images / "COCO" / "a.png").write_bytes(_png((0, 0, 255)))
    assert ds[0][IMAGE_KEY].getpixel((1, 1)) == (0, 0, 255)


def test_read_path_and_open_path_serve_store_members_and_name_a_missing_one(tmp_path: Path) -> None:
    from fusion_fast.images import open_path, read_path

    _, images = _folder_with_store(tmp_path)
    assert read_path(images / "COCO" / "a.png") == _png((255, 0, 0))
    with open_path(images / "COCO" / "b.png") as img:
        assert img.convert("RGB").getpixel((1, 1)) == (0, 255, 0)
    for read in (read_path, open_path):
        # a path under the store's folder that no archive holds: the file's own error, naming it
        with pytest.raises(FileNotFoundError, match="missing.png") as caught:
            read(images / "COCO" / "missing.png")
        assert caught.value.errno == errno.ENOENT
        assert os.fspath(caught.value.filename).endswith("missing.png")


def test_a_file_on_disk_wins_over_the_store_member_and_keeps_its_own_errors(tmp_path: Path) -> None:
    from fusion_fast.images import open_path, read_path

    _, images = _folder_with_store(tmp_path)
    (images / "COCO").mkdir()
    (images / "COCO" / "a.png").write_bytes(_png((0, 0, 255)))
    assert read_path(images / "COCO" / "a.png") == _png((0, 0, 255))
    with open_path(images / "COCO" / "a.png") as img:
        assert img.convert("RGB").getpixel((1, 1)) == (0, 0, 255)
    # the other member of the folder still comes from the store
    assert read_path(images / "COCO" / "b.png") == _png((0, 255, 0))
    # a folder where the member's file would be: its own error, not the member
    (images / "COCO" / "b.png").mkdir()
    for read in (read_path, open_path):
        with pytest.raises(IsADirectoryError):
            read(images / "COCO" / "b.png")
    (images / "COCO" / "b.png").rmdir()
    # a file where a folder of the path would be: its own error too
    (images / "COCO" / "sub").write_bytes(b"")
    for read in (read_path, open_path):
        with pytest.raises(NotADirectoryError):
            read(images / "COCO" / "sub" / "x.png")


def test_a_file_removed_after_the_store_looked_for_it_is_read_from_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fusion_fast import images as images_module

    _, images = _folder_with_store(tmp_path)
    # the store saw a file at the path, which is gone by the time it is opened
    looked = images_module._member_unless_file
    monkeypatch.setattr(images_module, "_member_unless_file", lambda path: (looked(path)[0], None))
    assert images_module.read_path(images / "COCO" / "a.png") == _png((255, 0, 0))
    with images_module.open_path(images / "COCO" / "b.png") as img:
        assert img.convert("RGB").getpixel((1, 1)) == (0, 255, 0)
    for read in (images_module.read_path, images_module.open_path):
        with pytest.raises(FileNotFoundError, match="missing.png"):
            read(images / "COCO" / "missing.png")


def test_check_resolves_images_through_the_folder_store(tmp_path: Path) -> None:
    from fusion_fast.check import run_check

    data, images = _folder_with_store(tmp_path)
    report = run_check(data, image_folder=images, decode=True)
    found = sorted((p.kind, p.record) for p in report.problems)
    assert found == [("missing_image", 2), ("unreadable_image", 3)]


def test_nearest_store_resolves_every_path_shape_as_the_folder_walk_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Answers served from the per-folder cache equal a fresh walk up the folders (`abspath`, then the
    nearest folder holding a store, then `relpath`), whatever the order the paths come in."""
    from fusion_fast import images as im

    outer = tmp_path / "outer"
    inner = outer / "sub" / "inner"
    for folder, top in ((outer, "O"), (inner, "I")):
        (folder / ".fusion-fast").mkdir(parents=True)
        archive = _tar(tmp_path / f"{top}.tar", {f"{top}/x.jpg": b"x"}, tarfile.GNU_FORMAT)
        ImageStore.build([archive], folder / ".fusion-fast" / "images.ffimg")
    (tmp_path / "bare").mkdir()
    monkeypatch.chdir(outer / "sub")
    o, i = str(outer), str(inner)
    paths = [
        f"{o}/O/x.jpg",
        f"{o}/O/y.jpg",
        f"{o}/O/../O/x.jpg",
        f"{o}//O///x.jpg",
        f"{o}/./O/x.jpg",
        f"{o}/O/.",
        f"{o}/O/..",
        f"{o}/O/",
        f"{o}/top.jpg",
        f"{o}/sub/inner/I/x.jpg",
        f"{o}/sub/inner/x.jpg",
        f"{o}/sub/inner/../inner/I/x.jpg",
        f"{o}/sub/inner/I/../../z.jpg",
        f"{i}/.fusion-fast/images.ffimg",
        "inner/I/x.jpg",
        "../O/x.jpg",
        "./inner/I/x.jpg",
        "x.jpg",
        f"{tmp_path}/bare/x.jpg",
        f"{tmp_path}/x.jpg",
        f"/{o}/O/x.jpg",
        "/x.jpg",
    ]
    expected = {
        f"{o}/O/x.jpg": (o, "O/x.jpg"),
        f"{o}/sub/inner/I/x.jpg": (i, "I/x.jpg"),
        f"{o}/sub/inner/I/../../z.jpg": (o, "sub/z.jpg"),
        "inner/I/x.jpg": (i, "I/x.jpg"),
        "../O/x.jpg": (o, "O/x.jpg"),
        "x.jpg": (o, "sub/x.jpg"),
        f"{tmp_path}/bare/x.jpg": None,
    }

    def walk(p: str) -> tuple[str, str] | None:
        """The oracle: no cache, os.path only."""
        full = os.path.abspath(p)
        folder = os.path.dirname(full)
        while True:
            if os.path.isfile(os.path.join(folder, ".fusion-fast", "images.ffimg")):
                return folder, os.path.relpath(full, folder)
            if os.path.dirname(folder) == folder:
                return None
            folder = os.path.dirname(folder)

    def found(p: str) -> tuple[str, str] | None:
        got = im.nearest_store(p)
        return None if got is None else (str(got[0].path.parent.parent), got[1])

    for order in range(3):
        im._folder_stores.clear()
        shuffled = paths * 2
        random.Random(order).shuffle(shuffled)
        for p in shuffled:
            assert found(p) == walk(p), p
            if p in expected:
                assert found(p) == expected[p], p
    assert im.store_for(f"{o}/sub/inner/I/x.jpg") is not None
    assert im.store_for(f"{o}/sub/inner/I/y.jpg") is None


def test_a_store_made_after_its_folder_was_looked_at_is_seen_once_the_folder_is_forgotten(
    tmp_path: Path,
) -> None:
    from fusion_fast import images as im
    from fusion_fast.prepare_shards import forget_store

    images = tmp_path / "images"
    images.mkdir()
    path = images / "A" / "x.jpg"
    im._folder_stores.clear()
    assert im.nearest_store(path) is None
    (images / ".fusion-fast").mkdir()
    archive = _tar(tmp_path / "a.tar", {"A/x.jpg": b"x"}, tarfile.GNU_FORMAT)
    ImageStore.build([archive], images / ".fusion-fast" / "images.ffimg")
    assert im.nearest_store(path) is None  # folders are looked at once per process
    forget_store(images)
    got = im.store_for(path)
    assert got is not None and got[1] == "A/x.jpg" and got[0].read(got[1]) == b"x"
    # Replacing a folder's entry drops what was derived from it too.
    im._folder_stores[str(images)] = None
    assert im.nearest_store(path) is None
    del im._folder_stores[str(images)]
    assert im.store_for(path) is not None


def test_the_store_caches_stay_bounded_with_a_folder_per_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dataset that keeps each image in its own folder must not grow a worker's memory with its size:
    the per-folder caches stay under their bound and every answer stays right."""
    from fusion_fast import images as im

    monkeypatch.setattr(im, "CACHE_ENTRIES", 50)
    images = tmp_path / "images"
    (images / ".fusion-fast").mkdir(parents=True)
    members = {f"S/{i:04d}/x.jpg": str(i).encode() for i in range(300)}
    archive = _tar(tmp_path / "a.tar", members, tarfile.GNU_FORMAT)
    ImageStore.build([archive], images / ".fusion-fast" / "images.ffimg")
    elsewhere = tmp_path / "plain"  # folders without any store above them
    im._folder_stores.clear()
    for i in range(300):
        assert im.read_path(images / "S" / f"{i:04d}" / "x.jpg") == str(i).encode()
        assert im.nearest_store(elsewhere / f"{i:04d}" / "y.jpg") is None
        assert len(im._folder_stores) <= 50 and len(im._nearest_by_dir) <= 50
    with pytest.raises(FileNotFoundError):
        im.read_path(images / "S" / "9999" / "x.jpg")


def test_convert_to_tars_rejects_arguments_of_the_wrong_shape(tmp_path: Path) -> None:
    from fusion_fast import _core

    job = ([tmp_path / "a.tar"], tmp_path / "out.tar")
    with pytest.raises(ValueError, match="max_bytes must give one limit per job"):
        _core.convert_to_tars([job], max_bytes=[None, None])
    for delay in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="chunk_delay must be a number of seconds >= 0"):
            _core.convert_to_tars([job], chunk_delay=delay)
    assert list(tmp_path.iterdir()) == []


CONVERT_CHILD = """
import sys
from fusion_fast import _core
try:
    _core.convert_to_tars([([sys.argv[1]], sys.argv[2])], chunk_delay=1.0)
except KeyboardInterrupt:
    sys.exit(3)
"""


def test_ctrl_c_stops_a_gzip_conversion_at_once_and_leaves_no_file(tmp_path: Path) -> None:
    """The converter runs on its own thread while the caller waits for signals: Ctrl-C raises
    KeyboardInterrupt within a chunk (here each chunk is followed by a one-second testing delay, 24 s in
    all), and the temporary file is removed."""
    import gzip
    import signal
    import subprocess
    import sys
    import time

    from .test_prepare import child_env

    members = {f"big/{k}.jpg": _payload(k, 1 << 20) for k in range(24)}
    source = tmp_path / "big.tar.gz"
    source.write_bytes(gzip.compress(_tar(tmp_path / "big.tar", members, tarfile.GNU_FORMAT).read_bytes(), 1))
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", CONVERT_CHILD, str(source), str(out / "big.tar")],
        env=child_env(),
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not [p for p in out.iterdir() if p.stat().st_size]:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr and proc.stderr.read()
        time.sleep(0.02)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 3, proc.stderr and proc.stderr.read()
    assert time.monotonic() - sent < 2.0
    assert list(out.iterdir()) == []


def _gzip_tar_of_zeros(path: Path, mib: int) -> Path:
    import gzip

    info = tarfile.TarInfo("zeros.jpg")
    info.size = mib << 20
    with gzip.open(path, "wb", compresslevel=9) as gz, tarfile.open(fileobj=gz, mode="w") as tf:
        tf.addfile(info, io.BytesIO(bytes(info.size)))
    return path


def test_build_refuses_a_gzip_bomb_by_default_and_converts_it_when_told_to(tmp_path: Path) -> None:
    from fusion_fast.errors import FusionFastError

    bomb = _gzip_tar_of_zeros(tmp_path / "bomb.tar.gz", 64)
    assert bomb.stat().st_size < 200_000
    shards = tmp_path / "shards"
    with pytest.raises(FusionFastError) as err:
        ImageStore.build([bomb], tmp_path / "s.ffimg", shard_dir=shards)
    message = str(err.value)
    assert message.startswith(f"{bomb}: refusing to convert: "), message
    assert "more than 100 times its size" in message and "size_limits=None" in message, message
    assert not (tmp_path / "s.ffimg").exists()
    assert [p.name for p in shards.iterdir()] == []
    store = ImageStore.build([bomb], tmp_path / "s.ffimg", shard_dir=shards, size_limits=None)
    assert store.read("zeros.jpg") == bytes(64 << 20)


def test_build_conversions_share_the_free_space(tmp_path: Path) -> None:
    from fusion_fast.archives import SizeLimits
    from fusion_fast.errors import FusionFastError

    archives = [_gzip_tar_of_zeros(tmp_path / f"a{k}.tar.gz", 6) for k in range(2)]
    # Room for one, not both: each alone is within the space, so only a shared count refuses.
    limits = SizeLimits(free_space=lambda folder: 8 << 20)
    shards = tmp_path / "shards"
    with pytest.raises(FusionFastError) as err:
        ImageStore.build(archives, tmp_path / "s.ffimg", shard_dir=shards, size_limits=limits)
    message = str(err.value)
    assert "refusing to convert: " in message and "other conversions" in message, message
    assert f"budget of {8 << 20} bytes" in message, message
    assert not (tmp_path / "s.ffimg").exists()
    left = list(shards.iterdir())
    assert len(left) <= 1 and ".tmp-" not in "".join(p.name for p in left)
    # Alone, each converts.
    store = ImageStore.build(archives[:1], tmp_path / "one.ffimg", shard_dir=shards, size_limits=limits)
    assert store.read("zeros.jpg") == bytes(6 << 20)
