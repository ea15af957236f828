"""`fusion-fast prepare`: a download folder of every shape becomes a FUSION playground that checks clean."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest

import fusion_fast
from fusion_fast.archives import Archive, FolderUnit
from fusion_fast.cli import main
from fusion_fast.errors import FusionFastError
from fusion_fast.prepare import (
    References,
    decide_placement,
    plan_prepare,
    resolve_source,
    run_prepare,
    scan_source,
)
from fusion_fast.stage import read_stage
from fusion_fast.synth import tiny_png

from .test_archives import MALICIOUS, split, tar_bytes, zip_bytes

# -- building download folders -----------------------------------------------------------------------


def record(rid: str, image: str | list[str] | None = None, video: str | None = None) -> dict[str, Any]:
    rec: dict[str, Any] = {"id": rid}
    tokens = ""
    if image is not None:
        rec["image"] = image
        tokens = "<image>\n" * (1 if isinstance(image, str) else len(image))
    if video is not None:
        rec["video"] = video
        tokens = "<video>\n"
    rec["conversations"] = [
        {"from": "human", "value": f"{tokens}What is shown?"},
        {"from": "gpt", "value": "A small red square."},
    ]
    return rec


def write_json(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records, indent=2))


def image_files(paths: list[str]) -> list[tuple[str, bytes]]:
    png = tiny_png()
    return [(p, png + p.encode()) for p in paths]


#: Records per annotation file of the full download.
COUNTS = {
    "PixelProse-60.json": 60,
    "ShareGPT4V-30.jsonl": 30,
    "ALLaVA-24.json": 24,
    "LLaVA-Pretrain-20.json": 20,
    "Videos-6.json": 6,
}


def build_download(src: Path, *, members_per_archive: int | None = None) -> dict[str, int]:
    """A download folder with every kind of unit; returns records per annotation file.

    - PixelProse: split .tar.gz (.00/.01) holding `000/k.jpg` (no top folder) -> images/PixelProse/
    - ShareGPT4V: zip holding `ShareGPT4V/sam/k.png` (top folder) -> images/
    - ALLaVA: split tar (.partaa/.partab) holding `ALLaVA/ALLaVA/img/k.jpg` (nested twice) -> strip one
    - LLaVA-Pretrain: an unpacked folder `LLaVA-Pretrain/00000/k.jpg`
    - videos: .tgz holding `clips/k.mp4` referenced as `videos/clips/k.mp4`
    - extras.tar (no top folder) and Single.tar (one top folder), referenced by nothing
    """
    n = members_per_archive
    pp = [f"PixelProse/000/{k}.jpg" for k in range(n or 40)]
    write_json(
        src / "json" / "PixelProse-60.json",
        [record(f"pp-{k}", pp[k]) if k < len(pp) else record(f"pp-{k}") for k in range(max(60, len(pp)))],
    )
    sg = [f"ShareGPT4V/sam/{k}.png" for k in range(30)]
    write_json(src / "json" / "ShareGPT4V-30.jsonl", [record(f"sg-{k}", sg[k]) for k in range(30)])
    al = [f"ALLaVA/img/{k}.jpg" for k in range(36)]
    write_json(
        src / "json" / "ALLaVA-24.json",
        [
            record(f"al-{k}", al[k])
            if k < 12
            else record(f"al-{k}", al[12 + 2 * (k - 12) : 14 + 2 * (k - 12)])
            for k in range(24)
        ],
    )
    lp = [f"LLaVA-Pretrain/00000/{k}.jpg" for k in range(20)]
    write_json(src / "LLaVA-Pretrain-20.json", [record(f"lp-{k}", lp[k]) for k in range(20)])
    vids = [f"videos/clips/{k}.mp4" for k in range(6)]
    write_json(src / "json" / "Videos-6.json", [record(f"v-{k}", video=vids[k]) for k in range(6)])

    images = src / "images"
    images.mkdir()
    split(
        tar_bytes([(p.split("/", 1)[1], d) for p, d in image_files(pp)], "w:gz"),
        images,
        "PixelProse.tar.gz",
        ["00", "01"],
    )
    (images / "ShareGPT4V.zip").write_bytes(zip_bytes(image_files(sg)))
    split(
        tar_bytes([(f"ALLaVA/{p}", d) for p, d in image_files(al)]),
        images,
        "ALLaVA.tar",
        ["partaa", "partab"],
    )
    (images / "videos.tgz").write_bytes(
        tar_bytes([(p.split("/", 1)[1], d) for p, d in image_files(vids)], "w:gz")
    )
    (images / "extras.tar").write_bytes(tar_bytes(image_files(["a.jpg", "b/c.jpg"])))
    (images / "Single.tar").write_bytes(tar_bytes(image_files(["Single/x.jpg", "Single/y/z.jpg"])))
    for p, data in image_files(lp):
        (src / p).parent.mkdir(parents=True, exist_ok=True)
        (src / p).write_bytes(data)
    return {
        "PixelProse-60.json": max(60, len(pp)),
        **{k: v for k, v in COUNTS.items() if k != "PixelProse-60.json"},
    }


def snapshot(folder: Path, *, exclude: Path | None = None) -> dict[str, tuple[int, int]]:
    """Relative path -> (size, mtime_ns) of every file and folder (symlinks not followed)."""
    out = {}
    for top, dirs, files in os.walk(folder):
        if exclude is not None:
            dirs[:] = [d for d in dirs if Path(top, d) != exclude]
        for name in [*dirs, *files]:
            p = Path(top, name)
            st = p.lstat()
            out[p.relative_to(folder).as_posix()] = (0 if p.is_dir() else st.st_size, st.st_mtime_ns)
    return out


def json_names(train: Path) -> list[str]:
    return sorted(p.name for p in (train / "jsons").iterdir() if p.suffix in (".json", ".jsonl"))


def referenced_paths(train: Path) -> list[str]:
    paths = []
    for name in json_names(train):
        for rec in fusion_fast.open(train / "jsons" / name):
            for key in ("image", "video"):
                value = rec.get(key)
                paths += value if isinstance(value, list) else [value] if value else []
    return paths


def count_records(yaml_path: Path) -> int:
    """Records of the stage YAML, through `Mixture.from_yaml` (every entry is "all")."""
    from fusion_fast.mixture import Mixture

    return len(Mixture.from_yaml(yaml_path, root=yaml_path.parent))


def prepare(*args: str | os.PathLike[str]) -> int:
    return main(["prepare", *(os.fspath(a) for a in args)])


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables wide enough that the output can be searched for whole phrases."""
    from rich.console import Console

    from fusion_fast.cli import prepare as cli_prepare

    monkeypatch.setattr(cli_prepare, "console", lambda: Console(width=400, highlight=False))


@pytest.fixture
def download(tmp_path: Path) -> tuple[Path, Path, dict[str, int]]:
    src = tmp_path / "FUSION-Test"
    counts = build_download(src)
    return src, tmp_path / "playground", counts


# -- the whole flow ----------------------------------------------------------------------------------


def test_prepare_builds_fusions_layout_and_checks_clean(download, capsys) -> None:
    src, pg, counts = download
    outside = snapshot(src.parent, exclude=pg)
    assert prepare(src, "--root", pg, "--jobs", "1") == 0
    out = capsys.readouterr().out
    train = pg / "train"
    assert json_names(train) == sorted(counts)
    for name in counts:
        [source] = src.rglob(name)
        assert os.path.samefile(source, train / "jsons" / name)  # a hard link, not a copy
    images = train / "images"
    assert sorted(p.name for p in images.iterdir()) == [
        ".fusion-fast",
        "ALLaVA",
        "LLaVA-Pretrain",
        "PixelProse",
        "ShareGPT4V",
        "Single",
        "extras",
        "videos",
    ]
    assert not (images / "ALLaVA" / "ALLaVA").exists()
    assert (images / "extras" / "b" / "c.jpg").is_file() and (images / "Single" / "y" / "z.jpg").is_file()
    refs = referenced_paths(train)
    assert len(refs) == 40 + 30 + 36 + 20 + 6
    assert [p for p in refs if not (images / p).is_file()] == []
    assert (images / "PixelProse/000/7.jpg").read_bytes() == tiny_png() + b"PixelProse/000/7.jpg"
    yaml_path = train / "FUSION-Test.yaml"
    assert [s.path for s in read_stage(yaml_path, root="/nonexistent")] == sorted(
        (train / "jsons" / n).resolve() for n in counts
    )
    assert all(str(s.strategy) == "all" for s in read_stage(yaml_path))
    assert "jsons/PixelProse-60.json" in yaml_path.read_text()
    assert count_records(yaml_path) == sum(counts.values())
    assert snapshot(src.parent, exclude=pg) == outside  # nothing written outside the playground
    assert "no problems" in out and "ready" in out
    markers = sorted(p.name for p in (images / ".fusion-fast").glob("*.done"))
    assert markers == sorted(
        f"{k}.done"
        for k in (
            "images__ALLaVA.tar",
            "images__PixelProse.tar.gz",
            "images__ShareGPT4V.zip",
            "images__Single.tar",
            "images__extras.tar",
            "images__videos.tgz",
            "LLaVA-Pretrain__",
        )
    )


def test_second_run_changes_nothing_and_opens_no_archive(download, monkeypatch) -> None:
    # What makes a second run cheap, checked as state rather than timed (speed is the benchmarks' job):
    # no archive is listed or extracted and no record is read for its image paths.
    src, pg, _ = download
    assert prepare(src, "--root", pg, "--jobs", "1") == 0
    before = snapshot(src.parent)

    def must_not_run(*_: object, **__: object) -> None:
        raise AssertionError("a unit in place was opened again")

    for cls in (Archive, FolderUnit):
        monkeypatch.setattr(cls, "extract", must_not_run)
        monkeypatch.setattr(cls, "members", must_not_run)
    monkeypatch.setattr(References, "from_indexes", must_not_run)
    assert prepare(src, "--root", pg, "--jobs", "1") == 0
    assert snapshot(src.parent) == before


def test_parallel_extraction_gives_the_same_playground(download, tmp_path) -> None:
    src, pg, counts = download
    assert prepare(src, "--root", pg, "--jobs", "3") == 0
    serial = tmp_path / "serial"
    assert prepare(src, "--root", serial, "--jobs", "1") == 0

    def files(root: Path) -> dict[str, bytes]:
        images = root / "train" / "images"
        return {
            p.relative_to(images).as_posix(): p.read_bytes()
            for p in images.rglob("*")
            if p.is_file() and ".fusion-fast" not in p.parts
        }

    assert files(pg) == files(serial)
    assert count_records(pg / "train" / "FUSION-Test.yaml") == sum(counts.values())


def test_dry_run_prints_the_plan_and_writes_nothing(download, capsys) -> None:
    src, pg, _ = download
    before = snapshot(src.parent)
    assert prepare(src, "--root", pg, "--dry-run") == 0
    out = capsys.readouterr().out
    assert not pg.exists()
    assert snapshot(src.parent) == before
    for expected in (
        "│ extract │ images/PixelProse.tar.gz │ images/PixelProse/ ",
        "│ extract │ images/ALLaVA.tar        │ images/ALLaVA/ ",
        "36/36 sampled files referenced, top folder of each path dropped",
        "│ extract │ images/extras.tar        │ images/extras/ ",
        "│ link    │ LLaVA-Pretrain/          │ images/LLaVA-Pretrain/ ",
        "│ link    │ json/Videos-6.json       │ jsons/Videos-6.json ",
        "stage YAML: write ",
        "FUSION-Test.yaml (5 datasets)",
        "nothing was written",
    ):
        assert expected in out, expected
    # A dry run after a real one knows what is in place.
    assert prepare(src, "--root", pg, "--jobs", "1") == 0
    capsys.readouterr()
    before = snapshot(src.parent)
    assert prepare(src, "--root", pg, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "in place" in out and "extract" not in out and "unchanged" in out
    assert snapshot(src.parent) == before


def test_copies_when_hard_links_fail(download, monkeypatch) -> None:
    src, pg, counts = download

    def no_links(*_: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    assert prepare(src, "--root", pg, "--jobs", "1") == 0
    jsons = pg / "train" / "jsons"
    [source] = src.rglob("ALLaVA-24.json")
    assert not os.path.samefile(source, jsons / "ALLaVA-24.json")
    assert (jsons / "ALLaVA-24.json").read_bytes() == source.read_bytes()
    assert (pg / "train/images/LLaVA-Pretrain/00000/3.jpg").is_file()
    assert prepare(src, "--root", pg, "--jobs", "1") == 0  # the copies count as in place


def test_include_and_stage_and_yaml_options(download) -> None:
    src, pg, _ = download
    assert (
        prepare(
            src,
            "--root",
            pg,
            "--include",
            "json/Videos*",
            "--include",
            "images/videos*",
            "--stage",
            "stage2",
            "--jobs",
            "1",
        )
        == 0
    )
    assert json_names(pg / "train") == ["Videos-6.json"]
    assert sorted(p.name for p in (pg / "train/images").iterdir()) == [".fusion-fast", "videos"]
    assert count_records(pg / "train" / "stage2.yaml") == 6
    out_yaml = pg.parent / "configs" / "stage1.yaml"
    assert (
        prepare(
            src,
            "--root",
            pg,
            "--include",
            "json/ShareGPT4V*",
            "--include",
            "images/ShareGPT4V*",
            "--yaml",
            out_yaml,
            "--jobs",
            "1",
        )
        == 0
    )
    assert json_names(pg / "train") == ["ShareGPT4V-30.jsonl", "Videos-6.json"]
    assert '"../playground/train/jsons/ShareGPT4V-30.jsonl"' in out_yaml.read_text()
    assert count_records(out_yaml) == 30


# -- failures ----------------------------------------------------------------------------------------


def test_malicious_archives_are_refused_and_the_rest_completes(tmp_path, capsys) -> None:
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    write_json(src / "Good-2.json", [record("g-0", "Good/0.jpg"), record("g-1", "Good/1.jpg")])
    (src / "images" / "Good.tar").write_bytes(tar_bytes(image_files(["Good/0.jpg", "Good/1.jpg"])))
    for case, (members, _) in MALICIOUS.items():
        (src / "images" / f"{case}.tar").write_bytes(tar_bytes(members))
    (tmp_path / "outside.txt").write_bytes(b"precious")
    pg = tmp_path / "pg"
    outside = snapshot(tmp_path, exclude=pg)
    assert prepare(src, "--root", pg, "--jobs", "2") == 1
    out = capsys.readouterr().out.replace("\n", " ")
    for case, (_, refused) in MALICIOUS.items():
        assert f"{case}.tar" in out and repr(refused) in out, case
    assert snapshot(tmp_path, exclude=pg) == outside
    assert not Path("/tmp/fusion-fast-absolute-escape.jpg").exists()
    images = pg / "train" / "images"
    assert sorted(p.name for p in images.iterdir()) == [".fusion-fast", "Good"]
    state = sorted(p.name for p in (images / ".fusion-fast").iterdir())
    assert state == ["images__Good.tar.done", "lock"]  # no temporary folder left
    assert count_records(pg / "train" / "src.yaml") == 2


def test_truncated_archive_fails_alone_and_a_rerun_after_fixing_it_completes(download, capsys) -> None:
    src, pg, counts = download
    good = (src / "images" / "videos.tgz").read_bytes()
    (src / "images" / "videos.tgz").write_bytes(good[: len(good) // 2])
    assert prepare(src, "--root", pg, "--jobs", "2") == 1
    out = capsys.readouterr().out.replace("\n", " ")
    assert "corrupt or truncated archive" in out and "videos.tgz" in out
    assert "missing_image" in out  # check reports the records whose videos are missing
    images = pg / "train" / "images"
    assert not (images / "videos").exists()
    assert not [p for p in images.iterdir() if p.name.startswith(".tmp-")]
    assert (images / "PixelProse/000/0.jpg").is_file()
    assert count_records(pg / "train" / "FUSION-Test.yaml") == sum(counts.values())  # the rest is usable
    (src / "images" / "videos.tgz").write_bytes(good)
    assert prepare(src, "--root", pg, "--jobs", "1") == 0
    assert (images / "videos/clips/5.mp4").is_file()


def test_malformed_annotation_file_fails_alone(tmp_path, capsys) -> None:
    src = tmp_path / "src"
    write_json(src / "Good-1.json", [record("g", "Good/0.jpg")])
    (src / "Bad-1.json").write_text('[{"id": 1,')
    (src / "Good.tar").write_bytes(tar_bytes(image_files(["Good/0.jpg"])))
    pg = tmp_path / "pg"
    assert prepare(src, "--root", pg, "--jobs", "1") == 1
    out = capsys.readouterr().out
    assert "Bad-1.json: line 1 column 11" in out and "malformed_record" in out
    assert (pg / "train/images/Good/0.jpg").is_file()
    assert json_names(pg / "train") == ["Bad-1.json", "Good-1.json"]


def test_conflicting_annotation_file_is_an_error_before_anything_is_written(download) -> None:
    src, pg, _ = download
    (pg / "train" / "jsons").mkdir(parents=True)
    (pg / "train" / "jsons" / "Videos-6.json").write_text("[]")
    with pytest.raises(FusionFastError, match="exists and differs"):
        plan_prepare(src, pg)
    assert prepare(src, "--root", pg) == 1
    assert sorted(p.name for p in (pg / "train").iterdir()) == ["jsons"]


def test_duplicate_names_and_foreign_yaml_are_errors(download) -> None:
    src, pg, _ = download
    write_json(src / "other" / "Videos-6.json", [])
    with pytest.raises(FusionFastError, match="both named Videos-6.json"):
        plan_prepare(src, pg)
    (src / "other" / "Videos-6.json").unlink()
    (pg / "train").mkdir(parents=True)
    (pg / "train" / "FUSION-Test.yaml").write_text("datasets: []\n")
    with pytest.raises(FusionFastError, match="not written by fusion-fast prepare"):
        plan_prepare(src, pg)


def killable_download(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """A download whose Small.zip is already prepared (completed work that an interrupted run must leave
    alone) and whose Big.tar.gz (60 members) is not."""
    src, pg = tmp_path / "src", tmp_path / "pg"
    (src / "images").mkdir(parents=True)
    write_json(src / "Small-1.json", [record("s-0", "Small/a.jpg")])
    (src / "images" / "Small.zip").write_bytes(zip_bytes(image_files(["Small/a.jpg"])))
    assert prepare(src, "--root", pg, "--jobs", "1") == 0
    paths = [f"Big/{k // 10:02d}/{k}.jpg" for k in range(60)]
    write_json(src / "Big-60.json", [record(f"b-{k}", p) for k, p in enumerate(paths)])
    (src / "images" / "Big.tar.gz").write_bytes(tar_bytes(image_files(paths), "w:gz"))
    return src, pg, paths


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a `python -m fusion_fast` child that imports the very package this test
    imported (an editable install, a plain install or a checkout on PYTHONPATH alike)."""
    package_parent = str(Path(fusion_fast.__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


class Child:
    """`python -m fusion_fast prepare ARGS` (or `cmd`; the same interpreter), its output kept in files
    for messages."""

    def __init__(
        self,
        tmp_path: Path,
        args: list[str],
        env: dict[str, str],
        *,
        group: bool = False,
        cmd: list[str] | None = None,
    ) -> None:
        self.out, self.err = tmp_path / "child.stdout", tmp_path / "child.stderr"
        self.cmd = cmd or [sys.executable, "-m", "fusion_fast", "prepare", *args]
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(self.cmd, env=env, stdout=out, stderr=err, start_new_session=group)

    def output(self) -> str:
        text = lambda p: p.read_text(errors="replace") if p.exists() else ""  # noqa: E731
        return f"$ {' '.join(self.cmd)}\n--- stdout\n{text(self.out)}\n--- stderr\n{text(self.err)}"


def start_slow_prepare(
    tmp_path: Path, src: Path, pg: Path, delay: float, jobs: int, group: bool = False
) -> Child:
    """`prepare` extracting `delay` s per member; returns once Big.tar.gz's extraction has begun."""
    args = [str(src), "--root", str(pg), "--jobs", str(jobs)]
    child = Child(tmp_path, args, child_env(FUSION_FAST_EXTRACT_DELAY=str(delay)), group=group)
    wait_for_extraction(child, pg)
    return child


def wait_for_extraction(child: Child, pg: Path) -> None:
    """Return once the child has written a member of Big.tar.gz into its temporary folder."""
    work = pg / "train" / "images" / ".fusion-fast"
    deadline = time.monotonic() + 120  # generous: only a loaded machine's start-up, never the test's subject
    while time.monotonic() < deadline:
        if [p for p in work.glob(".tmp-images__Big*") if list(p.rglob("*.jpg"))]:
            return
        if child.proc.poll() is not None:
            pytest.fail(f"prepare ended before it could be interrupted\n{child.output()}")
        time.sleep(0.02)
    child.proc.kill()
    child.proc.wait()
    pytest.fail(f"no temporary extraction folder appeared\n{child.output()}")


def assert_small_intact_and_big_absent(images: Path) -> None:
    assert (images / "Small/a.jpg").read_bytes() == tiny_png() + b"Small/a.jpg"
    assert (images / ".fusion-fast" / "images__Small.zip.done").is_file()
    assert not (images / ".fusion-fast" / "images__Big.tar.gz.done").exists()
    assert not (images / "Big").exists()  # nothing half-extracted looks done


def test_killed_mid_extraction_then_rerun_completes(tmp_path) -> None:
    src, pg, paths = killable_download(tmp_path)
    images = pg / "train" / "images"
    child = start_slow_prepare(tmp_path, src, pg, delay=0.05, jobs=2)
    child.proc.send_signal(signal.SIGKILL)
    child.proc.wait()
    assert_small_intact_and_big_absent(images)
    assert list((images / ".fusion-fast").glob(".tmp-images__Big*")), child.output()
    time.sleep(0.5)  # let orphaned workers notice their parent is gone
    rerun = subprocess.run(child.cmd, env=child_env(), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert not list(images.rglob(".tmp-*"))
    assert [p for p in paths if not (images / p).is_file()] == []
    assert count_records(pg / "train" / "src.yaml") == 61


#: Seconds per member while interrupted: finishing Big.tar.gz's 60 members would take a minute, so an
#: exit within STOP_WAIT can only come from stopping, however loaded the machine.
SLOW_MEMBER = 1.0
STOP_WAIT = 40


@pytest.mark.parametrize(
    ("how", "jobs"),
    [("ctrl-c", 2), ("ctrl-c", 1), ("sigterm", 2), ("sigterm", 1)],
)
def test_interrupt_stops_extraction_cleans_up_and_keeps_completed_work(tmp_path, how, jobs) -> None:
    src, pg, _ = killable_download(tmp_path)
    images = pg / "train" / "images"
    # Ctrl-C in a terminal reaches the whole process group (the workers too); SIGTERM the parent only.
    child = start_slow_prepare(tmp_path, src, pg, delay=SLOW_MEMBER, jobs=jobs, group=how == "ctrl-c")
    sent = time.monotonic()
    if how == "ctrl-c":
        os.killpg(child.proc.pid, signal.SIGINT)
    else:
        child.proc.send_signal(signal.SIGTERM)
    try:
        code = child.proc.wait(timeout=STOP_WAIT)
    except subprocess.TimeoutExpired:
        child.proc.kill()
        child.proc.wait()
        pytest.fail(f"prepare did not stop\n{child.output()}")
    stopped = time.monotonic() - sent
    assert (code, child.err.read_text().strip()) == (
        (130, "interrupted") if how == "ctrl-c" else (143, "terminated (SIGTERM)")
    ), child.output()
    assert "Traceback" not in child.output()
    assert list(images.rglob(".tmp-*")) == [], child.output()
    assert_small_intact_and_big_absent(images)
    print(f"{how} with --jobs {jobs}: stopped {stopped:.2f} s after the signal")


# -- pieces ------------------------------------------------------------------------------------------


def refs_of(*paths: str) -> References:
    return References(paths)


@pytest.mark.parametrize(
    ("members", "refs", "strip", "prefix", "reason", "matched"),
    [
        (["PixelProse/000/1.jpg", "PixelProse/000/2.jpg"], ["PixelProse/000/1.jpg"], 0, "", "records", 1),
        (
            ["000/1.jpg", "000/2.jpg", "000/3.jpg"],
            ["PixelProse/000/1.jpg", "PixelProse/000/2.jpg"],
            0,
            "PixelProse/",
            "records",
            2,
        ),
        (["PixelProse/PixelProse/000/1.jpg"], ["PixelProse/000/1.jpg"], 1, "", "records", 1),
        (["data/000/1.jpg"], ["PixelProse/000/1.jpg"], 1, "PixelProse/", "records", 1),
        (
            ["1.jpg", "2.jpg"],
            ["coco/train2017/1.jpg", "coco/train2017/2.jpg"],
            0,
            "coco/train2017/",
            "records",
            2,
        ),
        # Stripping two folders and prefixing PixelProse/000/ "matches" both members, but puts them on
        # one path: the one-to-one placement that matches one wins.
        (["PixelProse/000/1.jpg", "PixelProse/001/1.jpg"], ["PixelProse/000/1.jpg"], 0, "", "records", 1),
        (["Top/a.jpg", "Top/b/c.jpg"], ["Other/x.jpg"], 0, "", "single top folder", 0),
        (["a.jpg", "b/c.jpg"], ["Other/x.jpg"], 0, "stem/", "archive name", 0),
        (["a.jpg"], [], 0, "stem/", "archive name", 0),
        ([], ["x.jpg"], 0, "", "empty", 0),
    ],
)
def test_decide_placement(members, refs, strip, prefix, reason, matched) -> None:
    # Expected values written out by hand from the rule in docs/prepare.md, not computed by the code.
    p = decide_placement(members, refs_of(*refs), "stem/")
    assert (p.strip, p.prefix, p.reason, p.matched) == (strip, prefix, reason, matched)


def test_decide_placement_prefers_the_majority_and_samples_big_archives() -> None:
    members = [f"{k // 1000:03d}/{k}.jpg" for k in range(5000)]
    refs = refs_of(*(f"Src/{m}" for m in members[::3]), "Other/000/0.jpg")
    p = decide_placement(members, refs, "x/")
    assert (p.strip, p.prefix, p.sampled) == (0, "Src/", 512)
    assert abs(p.matched - 512 / 3) < 20


def test_references_come_from_image_and_video_keys(tmp_path) -> None:
    path = tmp_path / "r.json"
    write_json(
        path,
        [
            record("a", "./A/1.jpg"),
            record("b", ["A/2.jpg", "B/3.jpg"]),
            record("c"),
            record("d", video="V/4.mp4"),
        ],
    )
    refs = References.from_indexes([fusion_fast.open(path)])
    assert len(refs) == 4
    assert refs.contains(["A/1.jpg", "A/2.jpg", "B/3.jpg", "V/4.mp4", "A/9.jpg"]).tolist() == [True] * 4 + [
        False
    ]


def test_scan_finds_units_of_every_kind(tmp_path) -> None:
    src = tmp_path / "dl"
    for rel in (
        "a.json",
        "sub/b.jsonl",
        "images/x.tar.gz.00",
        "images/x.tar.gz.01",
        "Loose/1/2.jpg",
        "images/Unpacked/3.png",
        "mixed/c.json",
        "mixed/4.jpg",
        ".cache/z.json",
        "images/.hidden.tar",
    ):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(b"x")
    found = scan_source(src)
    assert [k for k, _ in found.jsons] == ["a.json", "mixed/c.json", "sub/b.jsonl"]
    units = {
        u.key: (
            u.kind,
            [p.name for p in u.parts] if isinstance(u, Archive) and u.kind == "tar" else list(u.members()),
        )
        for u in found.units
    }
    assert units == {
        "images/x.tar.gz": ("tar", ["x.tar.gz.00", "x.tar.gz.01"]),
        "Loose/": ("folder", ["Loose/1/2.jpg"]),
        "images/Unpacked/": ("folder", ["Unpacked/3.png"]),
        "mixed/*": ("folder", ["mixed/4.jpg"]),
    }
    images_root = tmp_path / "images"
    (images_root / "A").mkdir(parents=True)
    (images_root / "A" / "1.jpg").write_bytes(b"x")
    [unit] = scan_source(images_root).units
    assert (unit.key, list(unit.members()), unit.fallback_prefix) == ("./", ["A/1.jpg"], "")


def test_hub_source_is_a_thin_call_into_the_local_path(download, monkeypatch) -> None:
    src, pg, counts = download
    calls = []

    def snapshot_download(repo_id: str, **kwargs: Any) -> str:
        calls.append((repo_id, kwargs))
        return str(src)

    monkeypatch.setitem(
        sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=snapshot_download)
    )
    assert resolve_source("owner/FUSION-Hub", revision="v1", include=["json/*"]) == (src, "FUSION-Hub")
    assert calls == [
        ("owner/FUSION-Hub", {"repo_type": "dataset", "revision": "v1", "allow_patterns": ["json/*"]})
    ]
    assert prepare("owner/FUSION-Hub", "--root", pg, "--jobs", "1") == 0
    assert count_records(pg / "train" / "FUSION-Hub.yaml") == sum(counts.values())
    with pytest.raises(FusionFastError, match="neither a folder nor"):
        resolve_source("not a repo id")
    with pytest.raises(FusionFastError, match="--revision only applies"):
        resolve_source(str(src), revision="main")


def test_run_prepare_api_reports_per_source(download) -> None:
    src, pg, counts = download
    result = run_prepare(plan_prepare(src, pg), jobs=1)
    assert result.ok and result.check is not None and result.check.clean
    assert {j.item.target.name: j.records for j in result.jsons} == counts
    by_key = {u.item.unit.key: u for u in result.units}
    assert by_key["images/PixelProse.tar.gz"].files == 40
    assert by_key["images/PixelProse.tar.gz"].referenced == 40
    assert by_key["images/extras.tar"].referenced == 0
    assert by_key["images/ALLaVA.tar"].placement.strip == 1  # type: ignore[union-attr]
    again = run_prepare(plan_prepare(src, pg), jobs=1)
    assert {u.status for u in again.units} == {"in place"} and not again.yaml_written


API_SCRIPT = """
import sys
from fusion_fast.prepare import Terminated, plan_prepare, run_prepare

if __name__ == "__main__":
    try:
        run_prepare(plan_prepare(sys.argv[1], sys.argv[2]), jobs=int(sys.argv[3]))
    except Terminated:
        print("Terminated raised", file=sys.stderr)
        sys.exit(3)
"""


@pytest.mark.parametrize("jobs", [1, 2])
def test_sigterm_stops_run_prepare_called_from_python(tmp_path, jobs) -> None:
    # Without the command line's own handler, run_prepare turns SIGTERM into `Terminated` and cleans up.
    src, pg, _ = killable_download(tmp_path)
    images = pg / "train" / "images"
    script = tmp_path / "run.py"
    script.write_text(API_SCRIPT)
    cmd = [sys.executable, str(script), str(src), str(pg), str(jobs)]
    child = Child(tmp_path, [], child_env(FUSION_FAST_EXTRACT_DELAY=str(SLOW_MEMBER)), cmd=cmd)
    wait_for_extraction(child, pg)
    child.proc.send_signal(signal.SIGTERM)
    try:
        code = child.proc.wait(timeout=STOP_WAIT)
    except subprocess.TimeoutExpired:
        child.proc.kill()
        child.proc.wait()
        pytest.fail(f"run_prepare did not stop\n{child.output()}")
    assert code == 3 and "Terminated raised" in child.err.read_text(), child.output()
    assert list(images.rglob(".tmp-*")) == [], child.output()
    assert_small_intact_and_big_absent(images)


def test_interrupted_while_placing_leaves_no_temporary_folder_and_a_rerun_finishes(download, monkeypatch):
    src, pg, counts = download
    import fusion_fast.archives as archives_module

    real_move = archives_module._move_merging
    moves = []

    def move_then_interrupt(source: Path, target: Path, key: str) -> None:
        moves.append(target)
        if len(moves) == 2:  # the first top-level entry is in place, the second is not
            raise KeyboardInterrupt
        real_move(source, target, key)

    monkeypatch.setattr(archives_module, "_move_merging", move_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_prepare(plan_prepare(src, pg), jobs=1)
    images = pg / "train" / "images"
    assert list(images.rglob(".tmp-*")) == []
    # ALLaVA.tar (one entry) was placed and keeps its marker; PixelProse.tar.gz, interrupted, has none.
    assert [p.name for p in (images / ".fusion-fast").glob("*.done")] == ["images__ALLaVA.tar.done"]
    monkeypatch.setattr(archives_module, "_move_merging", real_move)
    assert prepare(src, "--root", pg, "--jobs", "1") == 0
    assert [p for p in referenced_paths(pg / "train") if not (images / p).is_file()] == []
