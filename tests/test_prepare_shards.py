"""`fusion-fast prepare --images shards`: archives indexed into the image store instead of extracted.

The oracles are independent of the store: the bytes written into the archives here (read back with
`tarfile` / `zipfile` where it matters) and what extract mode produces from the same download."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest

from fusion_fast import images as image_store
from fusion_fast.archives import read_marker
from fusion_fast.cli import main
from fusion_fast.errors import FusionFastError
from fusion_fast.images import ImageStore, read_path
from fusion_fast.prepare import PrepareResult, plan_prepare, run_prepare
from fusion_fast.prepare_shards import shards_dir, store_file
from fusion_fast.synth import tiny_png

from .test_archives import MALICIOUS, split, tar_bytes
from .test_prepare import child_env, record, write_json

# -- downloads -----------------------------------------------------------------------------------------


def data_of(name: str, *, compressible: bool = False) -> bytes:
    """Distinct bytes per member: a PNG with the name appended (decodable), or a repetitive run that
    deflate really compresses."""
    if compressible:
        return (b"fusion-fast " + name.encode()) * 40
    return tiny_png() + name.encode()


def tar_of(members: dict[str, bytes], mode: str = "w", fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=fmt) as tf:  # type: ignore[call-overload]
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zip_of(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


LONG = "Long/" + "a-rather-long-folder-name-" * 5 + "/" + "and-a-long-file-name-" * 4 + ".jpg"


def kinds_download(src: Path) -> dict[str, bytes]:
    """A download with an archive of every kind prepare accepts, each placed by a different rule; returns
    image path (as the records name it, relative to images/) -> bytes."""
    images = src / "images"
    images.mkdir(parents=True)
    expected: dict[str, bytes] = {}

    def members(top: str, n: int = 4, *, tag: str = "", compressible: bool = False) -> dict[str, bytes]:
        return {
            f"{top}{k // 2:03d}/{tag}{k}.jpg": data_of(f"{top}{tag}{k}", compressible=compressible)
            for k in range(n)
        }

    def referenced(prefix: str, ms: dict[str, bytes], strip: int = 0) -> None:
        for name, data in ms.items():
            expected[prefix + name.split("/", strip)[strip]] = data

    plain = members("Plain/")  # as is
    (images / "Plain.tar").write_bytes(tar_of(plain))
    referenced("", plain)
    gz = members("", tag="gz-")  # no top folder: the records' folder is prefixed
    (images / "Gz.tar.gz").write_bytes(tar_of(gz, "w:gz"))
    referenced("Gz/", gz)
    tgz = members("Tgz/Tgz/")  # nested twice: the first folder is dropped
    (images / "Tgz.tgz").write_bytes(tar_of(tgz, "w:gz"))
    referenced("", tgz, strip=1)
    bz = members("Bz/")
    (images / "Bz.tar.bz2").write_bytes(tar_of(bz, "w:bz2"))
    referenced("", bz)
    xz = members("Xz/")
    (images / "Xz.tar.xz").write_bytes(tar_of(xz, "w:xz"))
    referenced("", xz)
    split_gz = members("SplitGz/", 6)
    split(tar_of(split_gz, "w:gz"), images, "SplitGz.tar.gz", ["00", "01", "02"])
    referenced("", split_gz)
    split_tar = members("SplitTar/", 6)
    split(tar_of(split_tar), images, "SplitTar.tar", ["partaa", "partab"])
    referenced("", split_tar)
    split_zip = members("SplitZip/", 6)
    split(zip_of(split_zip), images, "SplitZip.zip", ["001", "002"])
    referenced("", split_zip)
    stored = members("Stored/")
    (images / "Stored.zip").write_bytes(zip_of(stored, zipfile.ZIP_STORED))
    referenced("", stored)
    deflated = members("Deflated/", compressible=True)
    (images / "Deflated.zip").write_bytes(zip_of(deflated, zipfile.ZIP_DEFLATED))
    referenced("", deflated)
    gnu = {LONG: data_of("gnu"), "Long/short.jpg": data_of("gnu-short")}
    (images / "Long.tar").write_bytes(tar_of(gnu, fmt=tarfile.GNU_FORMAT))
    referenced("", gnu)
    pax = {LONG.replace("Long/", "Pax/"): data_of("pax"), "Pax/naïve-café.jpg": data_of("pax-utf8")}
    (images / "Pax.tar").write_bytes(tar_of(pax, fmt=tarfile.PAX_FORMAT))
    referenced("", pax)
    records = [record(f"r-{k}", path) for k, path in enumerate(sorted(expected))]
    write_json(src / "json" / "Kinds.json", records)
    # Referenced by nothing: a single top folder stays as it is, anything else goes under the archive name.
    (images / "Single.tar").write_bytes(
        tar_of({"Single/x.jpg": data_of("sx"), "Single/y/z.jpg": data_of("sz")})
    )
    expected["Single/x.jpg"], expected["Single/y/z.jpg"] = data_of("sx"), data_of("sz")
    (images / "extras.tar").write_bytes(tar_of({"a.jpg": data_of("ea"), "b/c.jpg": data_of("ec")}))
    expected["extras/a.jpg"], expected["extras/b/c.jpg"] = data_of("ea"), data_of("ec")
    return expected


def run(src: Path, pg: Path, images: str = "shards", jobs: int = 2) -> PrepareResult:
    return run_prepare(plan_prepare(src, pg, images=images), jobs=jobs)


def errors(result: PrepareResult) -> dict[str, str]:
    return {u.item.unit.key: u.error for u in result.units if u.error is not None}


def files_under(images: Path) -> dict[str, bytes]:
    """Every file under `images/` but the state folder, by relative path."""
    out = {}
    for p in images.rglob("*"):
        rel = p.relative_to(images).as_posix()
        if p.is_file() and not rel.startswith(".fusion-fast/"):
            out[rel] = p.read_bytes()
    return out


def store_of(pg: Path) -> ImageStore:
    return ImageStore.open(store_file(pg / "train" / "images"))


def leftovers(images: Path) -> list[str]:
    """Temporary files and folders of prepare's left in the state folder."""
    state = images / ".fusion-fast"
    return sorted(p.name for p in [*state.iterdir(), *(shards_dir(images).glob("*"))] if ".tmp-" in p.name)


@pytest.fixture(autouse=True)
def fresh_store_cache() -> None:
    """Each test sees the stores on disk, not ones an earlier test opened at a reused path."""
    image_store._folder_stores.clear()


# -- every kind, byte for byte ---------------------------------------------------------------------------


@pytest.mark.parametrize("jobs", [1, 3])
def test_every_archive_kind_reads_byte_for_byte_like_extraction(tmp_path, jobs) -> None:
    src = tmp_path / "src"
    expected = kinds_download(src)
    extracted = run(src, tmp_path / "pg-extract", "extract")
    assert extracted.ok, errors(extracted)
    shards = run(src, tmp_path / "pg-shards", "shards", jobs=jobs)
    assert shards.ok, (errors(shards), shards.check and shards.check.problems)

    # Extraction is the oracle: the same files, and the same nesting decision per archive.
    files = files_under(tmp_path / "pg-extract" / "train" / "images")
    assert files == expected
    images = tmp_path / "pg-shards" / "train" / "images"
    assert files_under(images) == {}  # nothing extracted
    for rel, data in files.items():
        assert read_path(images / rel) == data, rel
    store = store_of(tmp_path / "pg-shards")
    assert sorted(store.members()) == sorted(files)
    for unit in shards.units:
        e = read_marker(tmp_path / "pg-extract" / "train" / "images", unit.item.unit.key)
        s = read_marker(images, unit.item.unit.key)
        assert e is not None and s is not None
        assert (s.mode, s.strip, s.prefix, s.files) == ("shards", e.strip, e.prefix, e.files)
    statuses = {u.item.unit.key: u.status for u in shards.units}
    assert statuses["images/Plain.tar"] == statuses["images/Stored.zip"] == "indexed"
    assert statuses["images/Gz.tar.gz"] == statuses["images/Bz.tar.bz2"] == "converted"
    assert statuses["images/SplitZip.zip"] == statuses["images/Xz.tar.xz"] == "converted"
    # The compressed tars became plain tar shards that tarfile reads member for member.
    shard = images / read_marker(images, "images/Xz.tar.xz").archive  # type: ignore[union-attr]
    with tarfile.open(shard, "r:") as tf:
        assert {m.name: tf.extractfile(m).read() for m in tf if m.isfile()} == {  # type: ignore[union-attr]
            k: v for k, v in expected.items() if k.startswith("Xz/")
        }

    # A second run opens nothing and changes nothing.
    before = {p: p.stat().st_mtime_ns for p in images.rglob("*") if p.name != "lock"}
    again = run(src, tmp_path / "pg-shards", "shards")
    assert again.ok and {u.status for u in again.units} == {"in place"}
    assert {p: p.stat().st_mtime_ns for p in images.rglob("*") if p.name != "lock"} == before


def test_plain_archives_are_linked_so_the_download_can_go(tmp_path) -> None:
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    ms = {"Plain/0.jpg": data_of("p0"), "Plain/1.jpg": data_of("p1")}
    (src / "images" / "Plain.tar").write_bytes(tar_of(ms))
    (src / "images" / "Z.zip").write_bytes(zip_of({"Z/0.jpg": data_of("z0")}))
    write_json(src / "P.json", [record("p0", "Plain/0.jpg"), record("z0", "Z/0.jpg")])
    assert run(src, tmp_path / "pg").ok
    for p in (src / "images").iterdir():
        p.unlink()
    images = tmp_path / "pg" / "train" / "images"
    image_store._folder_stores.clear()
    assert read_path(images / "Plain/1.jpg") == ms["Plain/1.jpg"]
    assert read_path(images / "Z/0.jpg") == data_of("z0")


# -- what check and the DataLoader see -------------------------------------------------------------------


def test_member_missing_from_every_archive_is_reported_by_check(tmp_path, capsys) -> None:
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "images" / "Plain.tar").write_bytes(tar_of({"Plain/0.jpg": data_of("p0")}))
    write_json(src / "P.json", [record("p0", "Plain/0.jpg"), record("gone", "Plain/missing.jpg")])
    result = run(src, tmp_path / "pg")
    assert errors(result) == {}
    assert result.check is not None and not result.ok
    [problem] = result.check.problems
    assert problem.kind == "missing_image"
    assert problem.path == str(tmp_path / "pg" / "train" / "images" / "Plain" / "missing.jpg")
    capsys.readouterr()
    assert main(["check", str(tmp_path / "pg" / "train" / "src.yaml")]) == 1
    out = capsys.readouterr().out
    assert "Plain/missing.jpg" in out
    assert main(["check", "--decode", str(tmp_path / "pg" / "train" / "src.yaml")]) == 1


def test_check_decode_reads_images_through_the_store(tmp_path, capsys) -> None:
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "images" / "Plain.tar").write_bytes(
        tar_of({"Plain/ok.png": tiny_png(), "Plain/bad.png": b"not an image"})
    )
    write_json(src / "P.json", [record("ok", "Plain/ok.png"), record("bad", "Plain/bad.png")])
    assert run(src, tmp_path / "pg").ok
    capsys.readouterr()
    assert main(["check", "--decode", str(tmp_path / "pg" / "train" / "src.yaml")]) == 1
    out = capsys.readouterr().out
    assert "Plain/bad.png" in out and "Plain/ok.png" not in out


def first(items: list[Any]) -> Any:
    return items[0]


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_dataloader_workers_read_images_through_the_store(tmp_path, start_method) -> None:
    torch_data = pytest.importorskip("torch.utils.data")
    np = pytest.importorskip("numpy")
    from PIL import Image

    from fusion_fast.torch import FusionDataset

    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    colors = {f"Src/{k}.png": (10 * k, 255 - 10 * k, 7 * k) for k in range(12)}
    pngs = {p: tiny_png(3 + k % 4, 2 + k % 3, rgb) for k, (p, rgb) in enumerate(colors.items())}
    (src / "images" / "Src.tar.gz").write_bytes(tar_of(pngs, "w:gz"))
    write_json(src / "S.json", [record(p, p) for p in pngs])
    assert run(src, tmp_path / "pg").ok
    train = tmp_path / "pg" / "train"
    ds = FusionDataset(train / "src.yaml", image_folder=train / "images", load_images=True)
    loader = torch_data.DataLoader(
        ds, batch_size=None, num_workers=2, multiprocessing_context=start_method, collate_fn=None
    )
    seen = {}
    for item in loader:
        seen[item["id"]] = np.asarray(item["_image"])
    assert sorted(seen) == sorted(pngs)
    for path, data in pngs.items():
        oracle = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        assert np.array_equal(seen[path], oracle), path


# -- duplicates, conflicts and hostile members -------------------------------------------------------------


def test_duplicates_across_archives_resolve_to_the_first_key_and_are_reported(tmp_path, capsys) -> None:
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "images" / "B.tar").write_bytes(tar_of({"Dup/x.jpg": b"from B", "Dup/b.jpg": b"b"}))
    (src / "images" / "A.tar.gz").write_bytes(tar_of({"Dup/x.jpg": b"from A", "Dup/a.jpg": b"a"}, "w:gz"))
    write_json(src / "D.json", [record(p, f"Dup/{p}") for p in ("x.jpg", "a.jpg", "b.jpg")])
    assert prepare_cli(src, "--root", tmp_path / "pg", "--images", "shards") == 0
    out = capsys.readouterr().out
    assert "1 image path held by more than one archive" in out
    assert "Dup/x.jpg is read from images/A.tar.gz, not images/B.tar" in out
    images = tmp_path / "pg" / "train" / "images"
    assert read_path(images / "Dup/x.jpg") == b"from A"
    assert read_path(images / "Dup/a.jpg") == b"a" and read_path(images / "Dup/b.jpg") == b"b"
    # The rule holds whichever archive is prepared first.
    (images / ".fusion-fast" / "images__A.tar.gz.done").unlink()
    result = run(src, tmp_path / "pg")
    assert result.duplicates == [("Dup/x.jpg", "images/A.tar.gz", "images/B.tar")]
    from fusion_fast.cli.prepare import result_json

    assert result_json(result)["duplicates"] == [
        {"path": "Dup/x.jpg", "read_from": "images/A.tar.gz", "ignored": "images/B.tar"}
    ]
    image_store._folder_stores.clear()
    assert read_path(images / "Dup/x.jpg") == b"from A"


def prepare_cli(*args: str | os.PathLike[str]) -> int:
    return main(["prepare", *(os.fspath(a) for a in args)])


def test_a_path_twice_in_one_archive_is_refused(tmp_path) -> None:
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for data in (b"one", b"two"):
            info = tarfile.TarInfo("Twice/x.jpg")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    (src / "images" / "Twice.tar").write_bytes(buf.getvalue())
    write_json(src / "T.json", [record("x", "Twice/x.jpg")])
    result = run(src, tmp_path / "pg")
    assert errors(result) == {
        "images/Twice.tar": "images/Twice.tar: refusing member 'Twice/x.jpg': the archive holds two members "
        "with this path"
    }


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_hostile_tar_members_are_refused_and_nothing_is_marked(tmp_path, case) -> None:
    members, _ = MALICIOUS[case]
    src = tmp_path / "box" / "src"
    (src / "images").mkdir(parents=True)
    (src / "images" / f"{case}.tar").write_bytes(tar_bytes(members))
    (src / "images" / "Good.tar").write_bytes(tar_of({"Good/x.jpg": b"good"}))
    write_json(src / "G.json", [record("g", "Good/x.jpg")])
    (tmp_path / "box" / "outside.txt").write_bytes(b"precious")
    result = run(src, tmp_path / "box" / "pg")
    [(key, message)] = errors(result).items()
    assert key == f"images/{case}.tar"
    assert message.startswith(f"images/{case}.tar: refusing member ")
    images = tmp_path / "box" / "pg" / "train" / "images"
    assert read_marker(images, key) is None
    assert read_marker(images, "images/Good.tar") is not None
    assert store_of(tmp_path / "box" / "pg").members() == ["Good/x.jpg"]
    assert (tmp_path / "box" / "outside.txt").read_bytes() == b"precious"
    assert not Path("/tmp/fusion-fast-absolute-escape.jpg").exists()


@pytest.mark.parametrize(
    ("name", "why"),
    [("C:/x.jpg", "absolute"), ("a\\..\\x.jpg", "backslash"), (".fusion-fast/x.done", "state")],
)
def test_hostile_zip_names_are_refused(tmp_path, name, why) -> None:
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "images" / "bad.zip").write_bytes(zip_of({name: b"evil", "ok.jpg": b"ok"}))
    result = run(src, tmp_path / "pg")
    message = errors(result)["images/bad.zip"]
    assert message.startswith(f"images/bad.zip: refusing member {name!r}: ") and why in message
    assert not store_file(tmp_path / "pg" / "train" / "images").exists()


def test_a_different_file_in_images_is_a_conflict_and_an_equal_one_is_not(tmp_path) -> None:
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "images" / "Plain.tar").write_bytes(tar_of({"Plain/0.jpg": b"zero", "Plain/1.jpg": b"one"}))
    write_json(src / "P.json", [record("0", "Plain/0.jpg"), record("1", "Plain/1.jpg")])
    images = tmp_path / "pg" / "train" / "images"
    (images / "Plain").mkdir(parents=True)
    (images / "Plain" / "0.jpg").write_bytes(b"something else")
    result = run(src, tmp_path / "pg")
    assert (
        "member 'Plain/0.jpg' -> images/Plain/0.jpg: exists and differs" in errors(result)["images/Plain.tar"]
    )
    assert read_marker(images, "images/Plain.tar") is None
    (images / "Plain" / "0.jpg").write_bytes(b"zero")
    assert run(src, tmp_path / "pg").ok


# -- damaged archives ----------------------------------------------------------------------------------------

GOOD = {f"Dmg/{k}.jpg": data_of(f"dmg{k}") * 40 for k in range(6)}


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1 :]


def _zip_member_flipped() -> bytes:
    data = zip_of(GOOD, zipfile.ZIP_STORED)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info = zf.getinfo("Dmg/3.jpg")
    return _flip(data, info.header_offset + 30 + len(info.filename) + 100)


DAMAGED: dict[str, tuple[str, Any]] = {
    "gzip trailer cut": ("Dmg.tar.gz", lambda: tar_of(GOOD, "w:gz")[:-6]),
    "gzip bit flipped": ("Dmg.tar.gz", lambda: _flip(tar_of(GOOD, "w:gz"), 200)),
    "bzip2 cut": ("Dmg.tar.bz2", lambda: (d := tar_of(GOOD, "w:bz2"))[: len(d) // 2]),
    "xz check flipped": ("Dmg.tar.xz", lambda: _flip(tar_of(GOOD, "w:xz"), -10)),
    "tar cut in a member": ("Dmg.tar", lambda: tar_of(GOOD)[:2000]),
    "tar without end blocks": ("Dmg.tar", lambda: tar_of(GOOD)[: 512 * 2 * 6 + 512 * 6 * 4]),
    "two tars joined": ("Dmg.tar", lambda: tar_of(GOOD) + tar_of({"Dmg/extra.jpg": b"hidden"})),
    "two tars joined, then gzipped": (
        "Dmg.tar.gz",
        lambda: gzip.compress(tar_of(GOOD) + tar_of({"Dmg/extra.jpg": b"hidden"})),
    ),
    "two tar.gz joined": (
        "Dmg.tar.gz",
        lambda: tar_of(GOOD, "w:gz") + tar_of({"Dmg/extra.jpg": b"x"}, "w:gz"),
    ),
    "zip directory cut": ("Dmg.zip", lambda: zip_of(GOOD)[:-40]),
    "zip member bit flipped": ("Dmg.zip", _zip_member_flipped),
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_damaged_archive_fails_alone_nothing_marked_and_a_rerun_after_fixing_it_completes(
    tmp_path, case
) -> None:
    name, make = DAMAGED[case]
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "images" / name).write_bytes(make())
    (src / "images" / "Good.tar").write_bytes(tar_of({"Good/x.jpg": b"good"}))
    write_json(src / "G.json", [record("g", "Good/x.jpg"), *(record(p, p) for p in GOOD)])
    result = run(src, tmp_path / "pg")
    key = f"images/{name}"
    [(failed, message)] = errors(result).items()
    assert failed == key
    assert message.startswith(f"{key}: corrupt"), message
    images = tmp_path / "pg" / "train" / "images"
    assert read_marker(images, key) is None
    assert [p.name for p in shards_dir(images).iterdir() if "Dmg" in p.name] == []
    assert "Dmg/0.jpg" not in store_of(tmp_path / "pg")
    assert leftovers(images) == []
    # Fixed (a complete re-download): the rerun completes.
    good = {"Dmg.tar.gz": "w:gz", "Dmg.tar.bz2": "w:bz2", "Dmg.tar.xz": "w:xz", "Dmg.tar": "w"}
    (src / "images" / name).write_bytes(zip_of(GOOD) if name.endswith(".zip") else tar_of(GOOD, good[name]))
    again = run(src, tmp_path / "pg")
    assert again.ok, errors(again)
    image_store._folder_stores.clear()
    for p, data in GOOD.items():
        assert read_path(images / p) == data


# -- interrupted runs ----------------------------------------------------------------------------------------

KILL_AT = {
    # a bzip2 shard written to its temporary name, not yet renamed
    "converting": "ps._rename_into_place = die",
    # every shard made, members being listed: no store yet
    "listing": "prep.list_members = die",
    # the store renamed into place, no marker written
    "markers": "prep.write_marker = die",
    # one marker written, the others not
    "second marker": "prep.write_marker = lambda *a, _w=prep.write_marker, _n=[]: "
    "(_n.append(1), _w(*a) if len(_n) == 1 else die())",
}

CHILD = """
import os, signal, sys
import fusion_fast.prepare as prep
import fusion_fast.prepare_shards as ps
from fusion_fast.cli import main
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
{patch}
sys.exit(main(["prepare", sys.argv[1], "--root", sys.argv[2], "--images", "shards", "--jobs", "2"]))
"""


@pytest.mark.parametrize("point", sorted(KILL_AT))
def test_killed_at_any_point_leaves_nothing_that_looks_complete_and_a_rerun_finishes(tmp_path, point) -> None:
    src = tmp_path / "src"
    expected = kinds_download(src)
    pg = tmp_path / "pg"
    code = CHILD.format(patch=KILL_AT[point])
    child = subprocess.run(
        [sys.executable, "-c", code, str(src), str(pg)], env=child_env(), capture_output=True, text=True
    )
    assert child.returncode == -9, child.stdout + child.stderr
    images = pg / "train" / "images"
    plan = plan_prepare(src, pg, images="shards")
    done = [u.unit.key for u in plan.units if not u.todo]
    assert len(done) == (1 if point == "second marker" else 0)
    for key in done:  # what looks complete is complete
        m = read_marker(images, key)
        assert m is not None and str(images / m.archive) in {str(a) for a in store_of(pg).archives}
    if point == "converting":
        assert any(".tmp-" in p.name for p in shards_dir(images).iterdir())
        assert not [p for p in shards_dir(images).iterdir() if p.name.startswith("images__Bz.tar.bz2")]
    made = {p.name: p.stat().st_ino for p in shards_dir(images).iterdir() if ".tmp-" not in p.name}
    result = run_prepare(plan, jobs=2)
    assert result.ok, errors(result)
    assert leftovers(images) == []
    image_store._folder_stores.clear()
    for rel, data in expected.items():
        assert read_path(images / rel) == data, rel
    # Finished conversions are reused, not redone.
    assert {n: p.stat().st_ino for n, p in ((n, shards_dir(images) / n) for n in made)} == made


# -- switching modes -----------------------------------------------------------------------------------------


def test_extracted_archives_stay_extracted_under_shards_and_a_removed_marker_indexes_it(tmp_path) -> None:
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "images" / "Plain.tar").write_bytes(tar_of({"Plain/0.jpg": b"zero"}))
    write_json(src / "P.json", [record("0", "Plain/0.jpg")])
    pg = tmp_path / "pg"
    images = pg / "train" / "images"
    assert run(src, pg, "extract").ok
    again = run(src, pg, "shards")
    assert again.ok and [u.status for u in again.units] == ["in place"]
    assert not store_file(images).exists()
    assert (images / "Plain" / "0.jpg").read_bytes() == b"zero"
    # To index it instead: remove its marker (its extracted files, equal, are no conflict).
    (images / ".fusion-fast" / "images__Plain.tar.done").unlink()
    switched = run(src, pg, "shards")
    assert switched.ok and [u.status for u in switched.units] == ["indexed"]
    assert store_of(pg).read("Plain/0.jpg") == b"zero"


def test_extraction_after_shards_refuses_to_shadow_a_store_member_with_other_bytes(tmp_path) -> None:
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "images" / "A.tar").write_bytes(tar_of({"Shared/x.jpg": b"from A", "Shared/a.jpg": b"a"}))
    write_json(src / "A.json", [record("x", "Shared/x.jpg"), record("a", "Shared/a.jpg")])
    pg = tmp_path / "pg"
    assert run(src, pg, "shards").ok
    (src / "images" / "B.tar").write_bytes(tar_of({"Shared/x.jpg": b"from B", "Shared/b.jpg": b"b"}))
    (src / "images" / "C.tar").write_bytes(tar_of({"Shared/x.jpg": b"from A", "Shared/c.jpg": b"c"}))
    result = run(src, pg, "extract")
    assert {u.item.unit.key: u.status for u in result.units} == {
        "images/A.tar": "in place",
        "images/B.tar": "failed",
        "images/C.tar": "extracted",  # the same bytes as the store's member: no conflict
    }
    assert (
        "member 'Shared/x.jpg' -> images/Shared/x.jpg: the image store holds other bytes"
        in (errors(result)["images/B.tar"])
    )
    images = pg / "train" / "images"
    assert not (images / "Shared" / "b.jpg").exists()
    assert read_path(images / "Shared/x.jpg") == b"from A"


# -- the command line ----------------------------------------------------------------------------------------


def test_dry_run_says_what_shards_mode_would_do_and_writes_nothing(tmp_path, capsys) -> None:
    from rich.console import Console

    from fusion_fast.cli import prepare as cli_prepare

    src = tmp_path / "src"
    kinds_download(src)
    pg = tmp_path / "pg"
    mp = pytest.MonkeyPatch()
    mp.setattr(cli_prepare, "console", lambda: Console(width=400, highlight=False))
    try:
        assert prepare_cli(src, "--root", pg, "--images", "shards", "--dry-run", "--json") == 0
    finally:
        mp.undo()
    plan = json.loads(capsys.readouterr().out)
    actions = {u["source"]: u["action"] for u in plan["units"]}
    assert actions["images/Plain.tar"] == actions["images/Stored.zip"] == "index"
    assert actions["images/Gz.tar.gz"] == actions["images/SplitTar.tar"] == "convert"
    assert not pg.exists()
    assert run(src, pg).ok
    mp.setattr(cli_prepare, "console", lambda: Console(width=400, highlight=False))
    try:
        assert prepare_cli(src, "--root", pg, "--images", "shards", "--dry-run", "--json") == 0
    finally:
        mp.undo()
    again = {u["source"]: (u["action"], u["target"]) for u in json.loads(capsys.readouterr().out)["units"]}
    assert again["images/Gz.tar.gz"] == ("in place", "images/Gz/ (image store)")


def test_bad_images_mode_is_a_usage_error(tmp_path, capsys) -> None:
    (tmp_path / "src").mkdir()
    with pytest.raises(SystemExit) as exit_status:
        prepare_cli(tmp_path / "src", "--images", "unpack")
    assert exit_status.value.code == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "--images" in err
    with pytest.raises(FusionFastError, match="images mode"):
        plan_prepare(tmp_path / "src", tmp_path / "pg", images="unpack")


def test_zstd_tar_is_refused_with_a_clear_error(tmp_path) -> None:
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "images" / "Z.tar").write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 600)
    result = run(src, tmp_path / "pg")
    assert errors(result) == {
        "images/Z.tar": "images/Z.tar: zstd-compressed tar archives are not supported; decompress it first"
    }


@pytest.mark.parametrize("name", ["Bomb.tar.bz2", "Bomb.tar.xz", "Bomb.tar.gz"])
def test_size_limits_refuse_a_conversion_that_expands_too_far(tmp_path, name) -> None:
    from fusion_fast.archives import SizeLimits

    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    mode = {"bz2": "w:bz2", "xz": "w:xz", "gz": "w:gz"}[name.rsplit(".", 1)[1]]
    (src / "images" / name).write_bytes(tar_of({"Bomb/zeros.jpg": bytes(4 << 20)}, mode))
    write_json(src / "B.json", [record("z", "Bomb/zeros.jpg")])
    plan = plan_prepare(src, tmp_path / "pg", images="shards")
    tight = SizeLimits(max_ratio=10.0, ratio_floor=1 << 20)
    result = run_prepare(plan, size_limits=tight)
    message = errors(result)[f"images/{name}"]
    assert "more than 10 times its size" in message and "--no-size-limits" in message
    images = tmp_path / "pg" / "train" / "images"
    assert list(shards_dir(images).iterdir()) == [] and leftovers(images) == []
    assert run_prepare(plan_prepare(src, tmp_path / "pg", images="shards"), size_limits=None).ok


def test_a_removed_store_or_shard_is_rebuilt_and_a_changed_archive_replaces_its_old_shard(tmp_path) -> None:
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "images" / "A.tar.bz2").write_bytes(tar_of({"A/x.jpg": b"old"}, "w:bz2"))
    (src / "images" / "B.tar.gz").write_bytes(tar_of({"B/y.jpg": b"b"}, "w:gz"))
    write_json(src / "A.json", [record("x", "A/x.jpg"), record("y", "B/y.jpg")])
    pg = tmp_path / "pg"
    images = pg / "train" / "images"
    assert run(src, pg).ok
    store_file(images).unlink()
    again = run(src, pg)
    assert again.ok and {u.status for u in again.units} == {"converted"}
    [shard_b] = [p for p in shards_dir(images).iterdir() if p.name.startswith("images__B")]
    shard_b.unlink()
    again = run(src, pg)
    assert {u.item.unit.key: u.status for u in again.units} == {
        "images/A.tar.bz2": "in place",
        "images/B.tar.gz": "converted",
    }
    # A fixed re-upload of A: its marker no longer matches, it is converted anew, the old shard goes.
    (src / "images" / "A.tar.bz2").write_bytes(tar_of({"A/x.jpg": b"new"}, "w:bz2"))
    assert run(src, pg).ok
    assert len([p for p in shards_dir(images).iterdir() if p.name.startswith("images__A")]) == 1
    image_store._folder_stores.clear()
    assert read_path(images / "A/x.jpg") == b"new"


def test_prepare_playground_runs_either_mode_in_one_call(tmp_path) -> None:
    from fusion_fast.prepare import prepare_playground

    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "images" / "Plain.tar").write_bytes(tar_of({"Plain/0.jpg": b"zero"}))
    write_json(src / "P.json", [record("0", "Plain/0.jpg")])
    shards = prepare_playground(src, tmp_path / "pg-s", images="shards", jobs=2)
    extract = prepare_playground(src, tmp_path / "pg-e", images="extract", jobs=2)
    assert shards.ok and extract.ok
    assert [u.status for u in shards.units] == ["indexed"]
    assert [u.status for u in extract.units] == ["extracted"]
    assert shards.plan.yaml_path == tmp_path / "pg-s" / "train" / "src.yaml"


SLOW_CHILD = """
import sys
import fusion_fast.prepare_shards as ps
from fusion_fast.cli import main
ps._CHUNK = 4096  # many chunks, each followed by the testing delay
sys.exit(main(["prepare", sys.argv[1], "--root", sys.argv[2], "--images", "shards", "--jobs", sys.argv[3]]))
"""


@pytest.mark.parametrize(("how", "jobs"), [("ctrl-c", 2), ("sigterm", 1)])
def test_interrupt_stops_a_conversion_removes_its_temporary_file_and_keeps_completed_work(
    tmp_path, how, jobs
) -> None:
    import random
    import signal
    import time

    src, pg = tmp_path / "src", tmp_path / "pg"
    (src / "images").mkdir(parents=True)
    (src / "images" / "Small.tar").write_bytes(tar_of({"Small/a.jpg": b"small"}))
    write_json(src / "S.json", [record("s", "Small/a.jpg")])
    assert run(src, pg).ok
    rng = random.Random(1)
    big = {f"Big/{k}.jpg": rng.randbytes(20_000) for k in range(60)}  # 300 chunks: a minute when slowed
    (src / "images" / "Big.tar.bz2").write_bytes(tar_of(big, "w:bz2"))
    write_json(src / "B.json", [record(p, p) for p in big])
    images = pg / "train" / "images"
    env = child_env(FUSION_FAST_EXTRACT_DELAY="0.2")
    with open(tmp_path / "err", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", SLOW_CHILD, str(src), str(pg), str(jobs)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    deadline = time.monotonic() + 120
    while not [p for p in shards_dir(images).glob(".images__Big*.tmp-*") if p.stat().st_size]:
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "err").read_text()
        time.sleep(0.02)
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=40)
    output = (tmp_path / "err").read_text()
    assert (code, output.strip().splitlines()[-1]) == (
        (130, "interrupted") if how == "ctrl-c" else (143, "terminated (SIGTERM)")
    ), output
    assert "Traceback" not in output
    assert leftovers(images) == []
    assert read_marker(images, "images/Big.tar.bz2") is None
    assert read_marker(images, "images/Small.tar") is not None
    assert [p.name for p in shards_dir(images).iterdir() if "Big" in p.name] == []
    image_store._folder_stores.clear()
    assert read_path(images / "Small/a.jpg") == b"small"
    assert run(src, pg).ok
    image_store._folder_stores.clear()
    assert all(read_path(images / p) == data for p, data in big.items())


def test_command_prints_progress_lines_and_the_result_in_a_log(tmp_path) -> None:
    src, pg = tmp_path / "src", tmp_path / "pg"
    (src / "images").mkdir(parents=True)
    ms = {f"Slow/{k}.jpg": bytes([k]) * 5000 for k in range(4)}
    (src / "images" / "Slow.tar.xz").write_bytes(tar_of(ms, "w:xz"))
    (src / "images" / "Plain.tar").write_bytes(tar_of({"Plain/a.jpg": b"a"}))
    write_json(src / "S.json", [record(p, p) for p in [*ms, "Plain/a.jpg"]])
    env = child_env(FUSION_FAST_EXTRACT_DELAY="0.3", FUSION_FAST_PROGRESS_SECONDS="0.1")
    done = subprocess.run(
        [sys.executable, "-c", SLOW_CHILD, str(src), str(pg), "1"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "indexing" in done.stderr and "error:" not in done.stderr, done.stderr
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in done.stdout.splitlines()]
    rows = {row[0]: row for row in cells if row and row[0].startswith("images/")}
    assert rows["images/Slow.tar.xz"][2] == "images/Slow/ (image store)"
    assert rows["images/Slow.tar.xz"][-1] == "converted"
    assert rows["images/Plain.tar"][-1] == "indexed"
    assert "tools that open image files by path need --images extract" in done.stdout


def test_a_download_replaced_by_a_new_file_is_read_anew(tmp_path) -> None:
    """A new file with the same size and the same first and last MiB (so the same fingerprint), but
    other bytes in between: the link to the old file must not be reused."""
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    outer = bytes(1_200_000)
    old = {"P/a.jpg": outer, "P/mid.jpg": b"old" * 1000, "P/z.jpg": outer}
    new = {**old, "P/mid.jpg": b"new" * 1000}
    archive = src / "images" / "P.tar"
    archive.write_bytes(tar_of(old))
    write_json(src / "P.json", [record(p, p) for p in old])
    pg = tmp_path / "pg"
    assert run(src, pg).ok
    archive.unlink()
    archive.write_bytes(tar_of(new))
    os.utime(archive, ns=(archive.stat().st_atime_ns, archive.stat().st_mtime_ns + 10**9))
    assert run(src, pg).ok
    image_store._folder_stores.clear()
    assert read_path(pg / "train" / "images" / "P/mid.jpg") == b"new" * 1000


def test_two_sources_share_the_store_and_a_moved_playground_works_after_a_rerun(tmp_path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    (one / "images").mkdir(parents=True)
    (two / "images").mkdir(parents=True)
    (one / "images" / "A.tar").write_bytes(tar_of({"A/x.jpg": b"a"}))
    write_json(one / "A.json", [record("a", "A/x.jpg")])
    (two / "images" / "B.tar.gz").write_bytes(tar_of({"B/y.jpg": b"b"}, "w:gz"))
    write_json(two / "B.json", [record("b", "B/y.jpg")])
    pg = tmp_path / "pg"
    assert run(one, pg).ok and run(two, pg).ok
    assert sorted(store_of(pg).members()) == ["A/x.jpg", "B/y.jpg"]
    moved = tmp_path / "moved"
    pg.rename(moved)
    image_store._folder_stores.clear()
    result = run(one, moved)  # the other source's archive is read from the moved shard too
    assert result.ok, errors(result)
    image_store._folder_stores.clear()
    images = moved / "train" / "images"
    assert read_path(images / "A/x.jpg") == b"a" and read_path(images / "B/y.jpg") == b"b"
    assert [u.status for u in run(two, moved).units] == ["in place"]


# -- gzip conversions: limits while streaming, interrupts, kills ---------------------------------------


def gzip_tar_of_zeros(mib: int, name: str) -> bytes:
    """A tar of one member of `mib` MiB of zeros, gzipped: a few KiB for tens of MiB."""
    info = tarfile.TarInfo(name)
    info.size = mib << 20
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w") as tf:  # type: ignore[call-overload]
            tf.addfile(info, io.BytesIO(bytes(info.size)))
    return buf.getvalue()


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of the size asked for (a filesystem that a conversion writing too much would fill)."""
    mounted: list[Path] = []

    def mount(mib: int) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(where)])
        if done.returncode != 0:
            pytest.skip("cannot mount a tmpfs here")
        mounted.append(where)
        return where

    yield mount
    # Stores opened there (cached, or in a result not yet collected) keep files mapped: close them first.
    import gc

    image_store._folder_stores.clear()
    gc.collect()
    for where in mounted:
        subprocess.run(["umount", str(where)], check=True)


@pytest.mark.parametrize(("disk_mib", "why"), [(48, "more than 100 times its size"), (24, "space free")])
def test_a_gzip_bomb_is_refused_while_it_streams_before_it_fills_the_disk(
    tmp_path, small_disk, disk_mib, why
) -> None:
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    bomb = gzip_tar_of_zeros(64, "Bomb/zeros.jpg")
    assert len(bomb) < 100_000
    (src / "images" / "Bomb.tar.gz").write_bytes(bomb)
    write_json(src / "B.json", [record("z", "Bomb/zeros.jpg")])
    # The playground on a disk smaller than the bomb: writing it all would fail with "no space left".
    pg = small_disk(disk_mib) / "pg"
    result = run_prepare(plan_prepare(src, pg, images="shards"))
    message = errors(result)["images/Bomb.tar.gz"]
    assert message.startswith("images/Bomb.tar.gz: refusing to convert: "), message
    assert why in message and "--no-size-limits" in message, message
    assert "space left" not in message, message
    # It names the bytes produced and the limit, which is under the disk's size.
    produced = int(message.split("produced ")[1].split(" bytes")[0])
    limit = int(message.split("the limit of ")[1].split(" bytes")[0])
    assert limit < produced <= limit + (1 << 20) and limit < disk_mib << 20, message
    images = pg / "train" / "images"
    assert list(shards_dir(images).iterdir()) == [] and leftovers(images) == []
    assert read_marker(images, "images/Bomb.tar.gz") is None
    # Without the limits the small disk fills: a write error (not "corrupt"), and nothing is left.
    result = run_prepare(plan_prepare(src, pg, images="shards"), size_limits=None)
    message = errors(result)["images/Bomb.tar.gz"]
    assert "cannot convert it: cannot write the converted tar" in message and "space left" in message, message
    assert "corrupt" not in message, message
    assert list(shards_dir(images).iterdir()) == [] and leftovers(images) == []
    # Without the limits (on a disk with room) it converts.
    roomy = tmp_path / "pg"
    assert prepare_cli(src, "--root", roomy, "--images", "shards", "--no-size-limits") == 0
    image_store._folder_stores.clear()
    assert read_path(roomy / "train" / "images" / "Bomb/zeros.jpg") == bytes(64 << 20)


def xz_tar_of_zeros(mib: int, name: str) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = mib << 20
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tf:
        tf.addfile(info, io.BytesIO(bytes(info.size)))
    return buf.getvalue()


@pytest.mark.parametrize("kinds", [("gz", "gz"), ("gz", "gz", "gz"), ("gz", "xz"), ("xz", "xz")])
def test_conversions_running_at_once_share_the_free_space_and_never_fill_the_disk_together(
    tmp_path, small_disk, monkeypatch, kinds
) -> None:
    from fusion_fast.archives import DELAY_ENV

    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    # On a 24 MiB disk (22.8 MiB usable after the reserve) each archive fits alone, not all together.
    mib = {2: 14, 3: 10}[len(kinds)]
    keys = []
    for k, kind in enumerate(kinds):
        name = f"A{k}.tar.{kind}"
        make = gzip_tar_of_zeros if kind == "gz" else xz_tar_of_zeros
        (src / "images" / name).write_bytes(make(mib, f"A{k}/zeros.jpg"))
        write_json(src / f"A{k}.json", [record(f"a{k}", f"A{k}/zeros.jpg")])
        keys.append(f"images/{name}")
    pg = small_disk(24) / "pg"
    # Chunk by chunk, slowly enough that every conversion is under way at once.
    monkeypatch.setenv(DELAY_ENV, "0.05")
    result = run(src, pg, jobs=len(kinds))
    refused = errors(result)
    assert refused and not result.ok
    images = pg / "train" / "images"
    for key, message in refused.items():
        assert message.startswith(f"{key}: refusing to convert: "), message
        assert "other conversions" in message and "--no-size-limits" in message, message
        assert "space left" not in message, message
        produced = int(message.split("produced ")[1].split(" bytes")[0])
        budget = int(message.split("budget of ")[1].split(" bytes")[0])
        assert produced > 0 and budget < 24 << 20, message
        assert read_marker(images, key) is None
    shards = sorted(p.name for p in shards_dir(images).iterdir())
    assert len(shards) == len(kinds) - len(refused), shards
    assert sum(p.stat().st_size for p in shards_dir(images).iterdir()) <= 24 << 20
    assert leftovers(images) == []


GZIP_CHILD = """
import sys
from fusion_fast.cli import main
sys.exit(main(["prepare", sys.argv[1], "--root", sys.argv[2], "--images", "shards", "--jobs", sys.argv[3]]))
"""


def slow_gzip_download(src: Path, pg: Path) -> dict[str, bytes]:
    """A playground prepared from one small tar, then a gzip tar of 24 one-MiB members added to the
    download (24 chunks for the converter, seconds each under the testing delay)."""
    import random

    (src / "images").mkdir(parents=True)
    (src / "images" / "Small.tar").write_bytes(tar_of({"Small/a.jpg": b"small"}))
    write_json(src / "S.json", [record("s", "Small/a.jpg")])
    assert run(src, pg).ok
    rng = random.Random(2)
    big = {f"Big/{k}.jpg": rng.randbytes(64) * (1 << 14) for k in range(24)}
    (src / "images" / "Big.tar.gz").write_bytes(tar_of(big, "w:gz"))
    write_json(src / "B.json", [record(p, p) for p in big])
    return big


def start_slow_gzip_child(src: Path, pg: Path, jobs: int, err: Path) -> subprocess.Popen[bytes]:
    """`prepare` converting Big.tar.gz slowly, returned once its temporary shard holds bytes."""
    import time

    env = child_env(FUSION_FAST_EXTRACT_DELAY="2")
    with open(err, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", GZIP_CHILD, str(src), str(pg), str(jobs)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=out,
            start_new_session=True,
        )
    shards = shards_dir(pg / "train" / "images")
    deadline = time.monotonic() + 60
    while not [p for p in shards.glob(".images__Big*.tmp-*") if p.stat().st_size]:
        assert proc.poll() is None and time.monotonic() < deadline, err.read_text()
        time.sleep(0.02)
    return proc


@pytest.mark.parametrize(("how", "jobs"), [("ctrl-c", 2), ("sigterm", 1)])
def test_interrupting_a_gzip_conversion_stops_it_promptly_and_removes_its_temporary_file(
    tmp_path, how, jobs
) -> None:
    import signal
    import time

    src, pg = tmp_path / "src", tmp_path / "pg"
    big = slow_gzip_download(src, pg)
    images = pg / "train" / "images"
    proc = start_slow_gzip_child(src, pg, jobs, tmp_path / "err")
    sent = time.monotonic()
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    took = time.monotonic() - sent
    output = (tmp_path / "err").read_text()
    assert (code, output.strip().splitlines()[-1]) == (
        (130, "interrupted") if how == "ctrl-c" else (143, "terminated (SIGTERM)")
    ), output
    assert "Traceback" not in output
    assert took < 3.0, took  # the converter stops at once, not after its 48 s of chunks
    assert leftovers(images) == []
    assert [p.name for p in shards_dir(images).iterdir() if "Big" in p.name] == []
    assert read_marker(images, "images/Big.tar.gz") is None
    assert run(src, pg).ok
    image_store._folder_stores.clear()
    assert all(read_path(images / p) == data for p, data in big.items())


def test_killed_during_a_gzip_conversion_leaves_no_shard_and_a_rerun_finishes(tmp_path) -> None:
    import signal

    src, pg = tmp_path / "src", tmp_path / "pg"
    big = slow_gzip_download(src, pg)
    images = pg / "train" / "images"
    proc = start_slow_gzip_child(src, pg, 2, tmp_path / "err")
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -9
    # Only the temporary file is there: nothing named like a finished shard, no marker.
    assert [p.name for p in shards_dir(images).iterdir() if "Big" in p.name and ".tmp-" not in p.name] == []
    assert leftovers(images) != []
    assert read_marker(images, "images/Big.tar.gz") is None
    assert run(src, pg).ok
    assert leftovers(images) == []
    image_store._folder_stores.clear()
    assert all(read_path(images / p) == data for p, data in big.items())
