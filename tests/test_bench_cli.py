"""`fusion-fast bench` runs from any folder on an installed package, reports the peers it could not
compare with as skipped, keeps its generated data in the folder it prints, honours --size and --clean."""

from __future__ import annotations

import io
import json
import mmap
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from fusion_fast.benchmarks.common import peer_available

#: Makes `orjson` and `torch` look uninstalled in every Python process that has this folder on its path:
#: importing them, or asking `importlib.util.find_spec` about them, fails as for a missing module.
HIDE_PEERS = """
import sys

HIDDEN = {"orjson", "torch"}


class HidePeers:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, HidePeers())
"""


def bench(*args: str, cwd: Path, hide: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "300"}
    if hide is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hide), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "fusion_fast", "bench", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_bench_runs_outside_the_checkout_and_reports_missing_peers(tmp_path):
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(HIDE_PEERS)
    work = tmp_path / "somewhere"
    work.mkdir()
    data, out = tmp_path / "data", tmp_path / "out"
    proc = bench(
        "--quick",
        "--size",
        "1MiB",
        *("--only", "index", "--only", "dataloader", "--only", "mixture"),
        *("--out", str(out), "--data-dir", str(data)),
        cwd=work,
        hide=hide,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    # Every missing peer is named as skipped: the hidden ones, and megatron.energon, whose find_spec
    # raises when megatron itself is absent.
    skipped = next(line for line in proc.stderr.splitlines() if line.startswith("skipped peers"))
    assert "orjson" in skipped and "torch" in skipped
    report = (out / "benchmarks.md").read_text()
    assert "orjson.loads | skipped (not installed)" in report
    assert "### dataloader\n\nskipped: needs torch, which is not installed" in report
    results = json.loads((out / "results.json").read_text())
    assert {"orjson", "torch"} <= set(results["skipped_peers"]) and results["skipped"] == ["dataloader"]
    if "megatron.energon" in results["skipped_peers"]:
        assert "Megatron-Energon JSONL prepare | skipped (not installed)" in report
    # The generated data lives where the command said, sized as asked; nothing is left in the cwd.
    assert f"generated data: {data}" in proc.stderr
    generated = sorted(p for p in data.rglob("*.json*") if p.is_file())
    assert generated and all(p.stat().st_size <= 1 << 20 for p in generated)
    assert list(work.iterdir()) == []

    proc = bench("--clean", "--data-dir", str(data), cwd=work)
    assert proc.returncode == 0 and f"removed {data}" in proc.stdout
    assert not data.exists()


def test_default_data_folder_is_in_the_cache_and_unknown_names_are_usage_errors(tmp_path):
    env_cache = tmp_path / "cache"
    proc = subprocess.run(
        [sys.executable, "-m", "fusion_fast", "bench", "--only", "nosuch", "--out", str(tmp_path / "o")],
        cwd=tmp_path,
        env={**os.environ, "FUSION_FAST_CACHE": str(env_cache)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "nosuch" in proc.stderr and "index" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "fusion_fast", "bench", "--clean"],
        cwd=tmp_path,
        env={**os.environ, "FUSION_FAST_CACHE": str(env_cache)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and str(env_cache / "bench") in proc.stdout


# -- the images benchmark ----------------------------------------------------------------------------


def _on_tmpfs(path: Path) -> bool:
    """Whether `path` lies on a tmpfs, where the page cache is the file and cannot be dropped."""
    best, kind = "", ""
    for line in Path("/proc/mounts").read_text().splitlines():
        _, mount, fstype, *_ = line.split()
        if str(path.resolve()).startswith(mount.rstrip("/") + "/") and len(mount) > len(best):
            best, kind = mount, fstype
    return kind in ("tmpfs", "ramfs")


def test_images_bench_jpeg_pool_is_distinct_and_decodes():
    from PIL import Image

    from fusion_fast.benchmarks.images import jpeg_pool

    pool = jpeg_pool(64, seed=3)
    assert len(pool) == 64 and len(set(pool)) == 64
    for data in pool:
        with Image.open(io.BytesIO(data)) as img:
            assert img.format == "JPEG" and img.size == (64, 48)
            img.load()  # the whole stream decodes, not just the header
    assert jpeg_pool(8, seed=3) == pool[:8]  # seeded: the same pool on every run


def test_images_bench_source_tars_and_records_agree(tmp_path):
    from fusion_fast.benchmarks.images import ANNOTATIONS, jpeg_pool, make_source

    pool = jpeg_pool(5)
    tars = make_source(tmp_path, 23, pool, per_archive=10)
    assert [t.name for t in tars] == ["Src000.tar", "Src001.tar", "Src002.tar"]
    members = {}
    for tar in tars:
        with tarfile.open(tar) as tf:
            for info in tf:
                members[info.name] = tf.extractfile(info).read()
    records = [json.loads(line) for line in (tmp_path / ANNOTATIONS).read_text().splitlines()]
    assert len(members) == len(records) == 23
    for i, record in enumerate(records):
        assert members[record["image"]] == pool[i % 5]
        assert record["image"].startswith(f"Src{i // 10:03d}/")


def test_images_bench_page_cache_residency_and_eviction(tmp_path):
    from fusion_fast.benchmarks.images import evict, resident_pages, warm

    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(1 << 20))
    os.sync()  # dirty pages are never dropped
    warm([path])
    resident, pages = resident_pages(path)
    assert pages == (1 << 20) // mmap.PAGESIZE and resident == pages
    if _on_tmpfs(tmp_path):
        pytest.skip("a tmpfs file lives in the page cache: it cannot be evicted")
    evict([path])
    assert resident_pages(path)[0] < pages // 4


def _images_bench(tmp_path: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "fusion_fast.benchmarks.images",
            *("--images-count", "300", "--per-archive", "120", "--pool", "40"),
            *("--dir", str(tmp_path / "data"), "--out", str(out), *args),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.skipif(not peer_available("torch"), reason="needs torch")
def test_images_bench_runs_at_small_size(tmp_path):
    out = tmp_path / "images.json"
    proc = _images_bench(tmp_path, out, "--reads", "256", "--rounds", "2", "--read-rounds", "1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["images"] == 300 and res["archives"] == 3 and res["extract_reused_from"] is None
    extract, shards = res["prepare"]["extract"], res["prepare"]["shards"]
    assert len(extract) == len(shards) == len(res["prepare"]["store"]) == 2
    # extracting makes a file per image (and its folders); the store is a few files whatever the count
    assert all(t["inodes"] >= 300 for t in extract)
    assert all(0 < t["inodes"] < 20 for t in shards)
    assert 0 < res["store_bytes_per_member"] < 1000
    for reader in ("decode", "bytes"):
        for mode in ("extract", "shards"):
            for state in ("warm", "cold"):
                (run,) = res["reads_per_s"][reader][mode][state]
                assert run["reads_per_s"] > 0
                if state == "warm":
                    assert run["resident_before"] == 1.0
                else:
                    assert 0 < run["whole_reads_per_s"] < run["reads_per_s"]  # the first batch costs
                    # every image read is in the page cache afterwards, in whole pages
                    assert run["cached_bytes_after"] >= run["image_bytes"] > 0
                    if not _on_tmpfs(tmp_path):
                        assert run["resident_before"] < 0.25
    assert "### Random reads through a DataLoader with 2 workers" in proc.stdout
    # the work folders are gone; the generated download folder is kept for the next run
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["images-src-300-40-120"]


@pytest.mark.skipif(not peer_available("torch"), reason="needs torch")
def test_images_bench_reads_from_an_extraction_kept_by_an_earlier_run(tmp_path):
    work, first, second = tmp_path / "work", tmp_path / "first.json", tmp_path / "second.json"
    few = ("--reads", "256", "--rounds", "1", "--read-rounds", "1", "--cold", "none", "--work", str(work))
    proc = _images_bench(tmp_path, first, *few)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    extracted = work / "extract" / "train" / "images"
    assert len(list(extracted.rglob("*.jpg"))) == 300  # kept
    mtime = extracted.stat().st_mtime_ns
    proc = _images_bench(tmp_path, second, *few, "--reuse-extract")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    before, after = json.loads(first.read_text()), json.loads(second.read_text())
    assert after["extract_reused_from"] == before["prepare"]["extract"][-1]["date"]
    assert after["prepare"]["extract"] == before["prepare"]["extract"]
    assert extracted.stat().st_mtime_ns == mtime  # not extracted again
    assert len(after["prepare"]["shards"]) == 1 and after["reads_per_s"]["decode"]["extract"]["warm"]
    assert "in an earlier run" in proc.stdout


@pytest.mark.skipif(not peer_available("torch"), reason="needs torch")
def test_bench_passes_the_image_count_to_the_images_benchmark(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    proc = bench(
        *("--quick", "--only", "images", "--images-count", "200"),
        *("--out", str(out), "--data-dir", str(data)),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["images"]["images"] == 200
    assert "### Preparing 200 JPEGs" in (out / "benchmarks.md").read_text()
    assert (data / "images-src-200-200-100000" / "Src000.tar").is_file()  # kept for the next run
