"""Images from archives: `fusion-fast prepare` extracting tars of small JPEGs against serving them from
an image store, and random image reads through a torch DataLoader (2 workers) from the extracted files
against the store, page-cached and with the page cache dropped.

    python -m fusion_fast.benchmarks.images [--quick] [--images-count N] [--reads M] [--rounds R]
        [--cold fadvise|drop-caches|none] [--dir D] [--out F]

The download folder it prepares holds `Src000.tar`, `Src001.tar`, ... (`--per-archive` members each, in
FUSION's `<Source>/<shard>/<name>.jpg` shape) and `bench.jsonl`, one LLaVA-style record per image. The
members' bytes come from a pool of `--pool` distinct 64x48 JPEGs made with Pillow (gradients, noise,
ellipses, varied quality): the cost of both preparations grows with members, not with pixels. The folder
is kept in `--dir` for the next run.

Each round times, contenders alternating (the order flips every round):

- extract: `plan_prepare(..., images="extract")` + `run_prepare(jobs=2)`, the whole command's work:
  annotation file placed and indexed, archives extracted and placed, `check` run;
- shards: the same with `images="shards"` (archives hard-linked and indexed into the image folder's
  store instead of extracted);
- the store build alone (`ImageStore.build` of the archives), for members/s and bytes per member.

New inodes are counted by walking the playground (inodes shared with the download folder, such as a hard
linked annotation file, do not count). Then random reads: `FusionDataset(..., load_images=True)` (every
image opened with Pillow and converted to RGB, through a file or through the store) with a transform that
keeps only the image size, and a minimal dataset of `fusion_fast.images.read_path`'s bytes, each in a
DataLoader with 2 workers and `worker_context()`, batch 64. The rate is counted from the first batch on
(worker start-up excluded) and, for cold runs, over the whole run too. Each round reads the same random
records from both, page-cached (every file / archive read just before) and cold:
`posix_fadvise(POSIX_FADV_DONTNEED)` after a `sync` on every file the reads touch (image files or
archives, the store, the annotation file and its index), or with `--cold drop-caches` a write of 3 to
/proc/sys/vm/drop_caches (root; drops every cache on the machine, dentries and inodes too). Residency is
checked with `mincore` before each timed read, and after each cold run the bytes it brought into the
page cache are counted (read-ahead included).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import hashlib
import io
import json
import mmap
import os
import random
import shutil
import statistics
import tarfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .common import default_data_dir, machine, machine_markdown, publish, run_child, spread, table

#: Members per tar of the download folder.
PER_ARCHIVE = 100_000
#: The download folder's annotation file.
ANNOTATIONS = "bench.jsonl"
#: Written last into a complete download folder (with its parameters).
COMPLETE = ".complete"
#: How the read benchmark reads: `FusionDataset(load_images=True)` (decoded to RGB) and bytes only.
READERS = ("decode", "bytes")
#: Residency is checked on at most this many of the image files a read touches.
RESIDENCY_SAMPLE = 512


# -- data ----------------------------------------------------------------------------------------------
def jpeg_pool(count: int, seed: int = 0) -> list[bytes]:
    """`count` distinct small JPEGs (64x48): a two-colour gradient with noise, three ellipses, a quality
    between 70 and 94. Distinct by construction; checked here anyway."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    h, w = 48, 64
    y, x = np.mgrid[0:h, 0:w]
    pool: list[bytes] = []
    seen: set[bytes] = set()
    while len(pool) < count:
        c = rng.integers(0, 256, size=(2, 3))
        a = (x / w)[..., None] * c[0] + (y / h)[..., None] * c[1]
        a = (a / 2 + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype("uint8")
        img = Image.fromarray(a)
        draw = ImageDraw.Draw(img)
        for _ in range(3):
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            box = [x0, y0, x0 + int(rng.integers(4, 24)), y0 + int(rng.integers(4, 24))]
            draw.ellipse(box, fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=int(rng.integers(70, 95)))
        data = buf.getvalue()
        digest = hashlib.blake2b(data, digest_size=16).digest()
        if digest not in seen:
            seen.add(digest)
            pool.append(data)
    return pool


def member_name(i: int, per_archive: int = PER_ARCHIVE) -> str:
    return f"Src{i // per_archive:03d}/{i // 1000:05d}/{i:09d}.jpg"


def make_source(folder: Path, n: int, pool: Sequence[bytes], per_archive: int = PER_ARCHIVE) -> list[Path]:
    """A download folder: tars of `n` JPEGs from `pool` (member i holds pool[i % len(pool)]) and an
    annotation file with one record per member, in member order. Returns the tars."""
    folder.mkdir(parents=True, exist_ok=True)
    tars = []
    with open(folder / ANNOTATIONS, "w", encoding="utf-8") as jf:
        for a in range((n + per_archive - 1) // per_archive):
            tar = folder / f"Src{a:03d}.tar"
            with open(tar, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tf:
                for i in range(a * per_archive, min(n, (a + 1) * per_archive)):
                    name = member_name(i, per_archive)
                    data = pool[i % len(pool)]
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
                    tf.addfile(info, io.BytesIO(data))
                    record = {
                        "id": str(i),
                        "image": name,
                        "conversations": [
                            {"from": "human", "value": "<image>\nWhat does this picture show?"},
                            {"from": "gpt", "value": "Colours, a gradient and three ellipses."},
                        ],
                    }
                    jf.write(json.dumps(record) + "\n")
            tars.append(tar)
    return tars


def source(data_dir: Path, n: int, pool_size: int, per_archive: int) -> tuple[Path, list[Path], float]:
    """The download folder for these parameters, made unless a complete one is there; seconds spent."""
    params = {"images": n, "pool": pool_size, "per_archive": per_archive, "version": 1}
    folder = data_dir / f"images-src-{n}-{pool_size}-{per_archive}"
    done = folder / COMPLETE
    tars = [folder / f"Src{a:03d}.tar" for a in range((n + per_archive - 1) // per_archive)]
    if done.is_file() and json.loads(done.read_text()) == params and all(t.is_file() for t in tars):
        return folder, tars, 0.0
    started = time.perf_counter()
    shutil.rmtree(folder, ignore_errors=True)
    make_source(folder, n, jpeg_pool(pool_size), per_archive)
    done.write_text(json.dumps(params))
    return folder, tars, time.perf_counter() - started


# -- page cache --------------------------------------------------------------------------------------
_libc: Any = None


def _c() -> Any:
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_long,
        ]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
        _libc = libc
    return _libc


def resident_pages(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(pages of `path` in the page cache, pages of the file), by `mincore` on a fresh mapping, which
    reads nothing."""
    size = os.path.getsize(path)
    if size == 0:
        return 0, 0
    page = mmap.PAGESIZE
    pages = (size + page - 1) // page
    libc = _c()
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"mmap of {path} failed")
        try:
            vec = (ctypes.c_ubyte * pages)()
            if libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore of {path} failed")
            return sum(b & 1 for b in vec), pages
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)


def resident_fraction(paths: Iterable[str | os.PathLike[str]]) -> float:
    """Share of the pages of `paths` that are in the page cache."""
    resident = total = 0
    for p in paths:
        r, t = resident_pages(p)
        resident, total = resident + r, total + t
    return resident / total if total else 0.0


def evict(paths: Iterable[str | os.PathLike[str]]) -> None:
    """Drop `paths` from the page cache: `posix_fadvise(DONTNEED)` on each (no root needed). Dirty pages
    are not dropped, so the caller syncs first."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def drop_caches() -> None:
    """Every clean page, dentry and inode cached on the machine dropped (root only)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def warm(paths: Iterable[str | os.PathLike[str]]) -> None:
    """Read `paths` whole, so that their pages are cached."""
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.read(1 << 20):
                pass


# -- preparing -----------------------------------------------------------------------------------------
#: One preparation, timed in a fresh process as the command would run: nothing it opens (the store,
#: the annotation index) stays mapped in the benchmark's process, where it would keep pages cached.
_PREPARE = """
import json, sys, time
from pathlib import Path
from fusion_fast.prepare import plan_prepare, run_prepare
src, playground, mode = sys.argv[1:4]
started = time.perf_counter()
result = run_prepare(plan_prepare(Path(src), playground, images=mode), jobs=2)
seconds = time.perf_counter() - started
errors = [u.error for u in result.units if u.error] + [j.error for j in result.jsons if j.error]
if not result.ok:
    errors.append(result.check_error or str(result.check))
print(json.dumps({"seconds": seconds, "errors": errors}))
"""


def prepare(src: Path, playground: Path, mode: str) -> float:
    """Seconds of `fusion-fast prepare`'s Python entry point (`plan_prepare` + `run_prepare`, 2 jobs) with
    `images=mode` ("extract" or "shards"), in a fresh process."""
    out = run_child(_PREPARE, str(src), str(playground), mode)
    if out["errors"]:
        raise RuntimeError(f"prepare --images {mode} of {src} failed: {out['errors']}")
    return float(out["seconds"])


def new_inodes(folder: Path, shared_with: Path) -> tuple[int, int]:
    """(inodes, bytes allocated) under `folder` (itself included), not counting inodes also found under
    `shared_with` (hard links)."""
    theirs = {os.lstat(os.path.join(t, f)).st_ino for t, _, fs in os.walk(shared_with) for f in fs}
    seen: set[int] = set()
    allocated = 0
    for top, dirs, files in os.walk(folder):
        for name in [*dirs, *files, *([""] if top == str(folder) else [])]:
            st = os.lstat(os.path.join(top, name)) if name else os.lstat(top)
            if st.st_ino in seen or st.st_ino in theirs:
                continue
            seen.add(st.st_ino)
            allocated += st.st_blocks * 512
    return len(seen), allocated


def _free_inodes(path: Path) -> int:
    return os.statvfs(path).f_ffree


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# -- reading -------------------------------------------------------------------------------------------
def image_size(item: dict[str, Any]) -> tuple[int, int]:
    """The transform of the read benchmark: keeps the decoded image's size only, so that what is timed
    is reading and decoding, not shipping pixels to the main process."""
    return item["_image"].size  # type: ignore[no-any-return]


def dataset(annotations: Path, images: Path) -> Any:
    from ..torch import FusionDataset

    return FusionDataset(annotations, image_folder=images, load_images=True, transform=image_size)


class ImageBytes:
    """A minimal map-style dataset: item i is the length of image i's bytes as
    `fusion_fast.images.read_path` gives them (the file, else the store member), with no decoding."""

    def __init__(self, images: Path, n: int, per_archive: int) -> None:
        self.images, self.n, self.per_archive = str(images), n, per_archive

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        from ..images import read_path

        return len(read_path(os.path.join(self.images, member_name(i, self.per_archive))))


def read_rate(ds: Any, order: Sequence[int], batch: int = 64) -> dict[str, float]:
    """Reads `order` through a DataLoader with 2 workers: reads per second from the first batch on, and
    over the whole run (worker start-up and the first batch included)."""
    import torch.utils.data as tud

    from ..torch import worker_context

    loader = tud.DataLoader(
        ds,
        batch_size=batch,
        sampler=order,
        num_workers=2,
        collate_fn=len,
        multiprocessing_context=worker_context(),
    )
    started = time.perf_counter()
    it: Iterator[int] = iter(loader)
    first = next(it)
    first_at = time.perf_counter()
    rest = sum(it)
    ended = time.perf_counter()
    if first + rest != len(order):
        raise RuntimeError(f"read {first + rest} images, expected {len(order)}")
    return {
        "reads_per_s": rest / (ended - first_at),
        "whole_reads_per_s": len(order) / (ended - started),
        "first_batch_s": first_at - started,
    }


def cached_bytes(paths: Iterable[str | os.PathLike[str]]) -> int:
    """Bytes of `paths` in the page cache."""
    return sum(resident_pages(p)[0] for p in paths) * mmap.PAGESIZE


# -- the benchmark --------------------------------------------------------------------------------------
def run(
    data_dir: Path,
    n: int,
    reads: int,
    rounds: int,
    read_rounds: int,
    pool_size: int,
    per_archive: int,
    cold: str,
    seed: int = 0,
    work: Path | None = None,
    reuse_extract: bool = False,
) -> dict[str, Any]:
    """Every measurement; the raw figures (the Markdown report is made from them).

    The playgrounds are made in `work` and kept there when it is given (else in a folder of `data_dir`
    removed at the end). With `reuse_extract`, an extracted playground that an earlier run left complete
    in `work` is read from, and its preparation's figures reported, instead of extracting again: removing
    a million small files costs more than extracting them on some filesystems."""
    src, tars, generate_s = source(data_dir, n, pool_size, per_archive)
    keep = work is not None
    work = work if work is not None else data_dir / f"images-work-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    playground = {"extract": work / "extract", "shards": work / "shards"}
    prep: dict[str, list[dict[str, Any]]] = {"extract": [], "shards": [], "store": []}
    extracted_marker = work / "extract.json"
    source_params = json.loads((src / COMPLETE).read_text())
    reused = None
    if reuse_extract and extracted_marker.is_file():
        earlier = json.loads(extracted_marker.read_text())
        if earlier["source"] == source_params and playground["extract"].is_dir():
            reused = earlier
            prep["extract"] = earlier["trials"]
    store_bytes = 0
    phase = {"start": time.perf_counter()}
    try:
        for r in range(rounds):
            for mode in ("extract", "shards") if r % 2 == 0 else ("shards", "extract"):
                if mode == "extract" and reused is not None:
                    continue
                if mode == "extract":
                    extracted_marker.unlink(missing_ok=True)
                _rmtree(playground[mode])
                os.sync()
                warm(tars)  # both start from page-cached archives, whatever ran before
                archive_resident = resident_fraction(tars)
                free_before = _free_inodes(work)
                seconds = prepare(src, playground[mode], mode)
                free_after = _free_inodes(work)
                inodes, allocated = new_inodes(playground[mode], src)
                prep[mode].append(
                    {
                        "seconds": seconds,
                        "inodes": inodes,
                        "bytes": allocated,
                        "statvfs_inodes": free_before - free_after,
                        "archives_resident": archive_resident,
                        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    }
                )
                if mode == "extract":
                    extracted_marker.write_text(json.dumps({"source": source_params, "trials": prep[mode]}))
            from ..images import ImageStore

            alone = work / "alone.ffimg"
            started = time.perf_counter()
            ImageStore.build(tars, alone)
            prep["store"].append({"seconds": time.perf_counter() - started})
            store_bytes = alone.stat().st_size
            alone.unlink()

        phase["prepared"] = time.perf_counter()
        images = {m: playground[m] / "train" / "images" for m in playground}
        ann = {
            "extract": playground["extract"] / "train" / "jsons" / ANNOTATIONS,
            "shards": playground["shards"] / "train" / "jsons" / ANNOTATIONS,
        }
        datasets = {
            (reader, m): dataset(ann[m], images[m])
            if reader == "decode"
            else ImageBytes(images[m], n, per_archive)
            for reader in READERS
            for m in playground
        }
        store_files = {
            "extract": [],
            "shards": sorted(p for p in images["shards"].rglob("*.ffimg") if p.is_file()),
        }
        states = ["warm"] + ([] if cold == "none" else ["cold"])
        rates: dict[str, dict[str, dict[str, list[dict[str, float]]]]] = {
            reader: {m: {s: [] for s in states} for m in playground} for reader in READERS
        }
        rng = random.Random(seed)
        for r in range(read_rounds):
            order = [rng.randrange(n) for _ in range(reads)]
            picked = sorted(set(order))
            image_bytes = sum(
                os.path.getsize(images["extract"] / member_name(i, per_archive)) for i in picked
            )
            touched = {
                "extract": [images["extract"] / member_name(i, per_archive) for i in picked],
                "shards": list(tars),
            }
            for reader in READERS:
                for state in states:
                    for mode in ("extract", "shards") if r % 2 == 0 else ("shards", "extract"):
                        files = [
                            *touched[mode],
                            *store_files[mode],
                            ann[mode],
                            *ann[mode].parent.glob("*.ffidx"),
                        ]
                        if state == "warm":
                            warm(files)
                        elif cold == "drop-caches":
                            drop_caches()
                        else:
                            os.sync()
                            evict(files)
                        sample = [*touched[mode][:RESIDENCY_SAMPLE], *store_files[mode]]
                        resident = resident_fraction(sample)
                        result = read_rate(datasets[reader, mode], order)
                        result["resident_before"] = resident
                        if state == "cold":  # what the reads brought into the page cache
                            result["cached_bytes_after"] = cached_bytes([*touched[mode], *store_files[mode]])
                            result["image_bytes"] = image_bytes
                        rates[reader][mode][state].append(result)
        phase["read"] = time.perf_counter()
    finally:
        if not keep:
            _rmtree(work)
    return {
        "extract_reused_from": None if reused is None else reused["trials"][-1]["date"],
        "phase_s": {
            "generate": generate_s,
            "prepare": phase["prepared"] - phase["start"],
            "read": phase["read"] - phase["prepared"],
            "clean": time.perf_counter() - phase["read"],
        },
        "images": n,
        "reads": reads,
        "rounds": rounds,
        "read_rounds": read_rounds,
        "pool": pool_size,
        "per_archive": per_archive,
        "archives": len(tars),
        "archive_bytes": sum(t.stat().st_size for t in tars),
        "generate_s": generate_s,
        "cold": cold,
        "prepare": prep,
        "store_bytes": store_bytes,
        "store_bytes_per_member": store_bytes / n,
        "reads_per_s": rates,
    }


def _med(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def _fmt_s(r: dict[str, float]) -> str:
    def one(s: float) -> str:
        return f"{s * 1e3:.0f} ms" if s < 1 else f"{s:,.1f} s"

    if r["runs"] == 1:
        return one(r["median"])
    return f"{one(r['median'])} ({one(r['min'])}-{one(r['max'])})"


def _fmt_rate(r: dict[str, float]) -> str:
    if r["runs"] == 1:
        return f"{r['median']:,.0f}"
    return f"{r['median']:,.0f} ({r['min']:,.0f}-{r['max']:,.0f})"


def report(res: dict[str, Any], m: dict[str, Any], quick: bool) -> tuple[str, dict[str, Any]]:
    """The Markdown section and the summary figures (medians and ranges)."""
    n = res["images"]
    prep = res["prepare"]
    t = {k: spread([x["seconds"] for x in v]) for k, v in prep.items()}
    members_per_s = {k: spread([n / x["seconds"] for x in v]) for k, v in prep.items()}
    speedup = t["extract"]["median"] / t["shards"]["median"]
    least_cached = min(x.get("archives_resident", 1.0) for x in [*prep["extract"], *prep["shards"]])
    prep_rows = [
        [
            "`prepare --images extract` (2 jobs)"
            + (f", in an earlier run ({res['extract_reused_from']})" if res["extract_reused_from"] else ""),
            _fmt_s(t["extract"]),
            _fmt_rate(members_per_s["extract"]),
            f"{_med([x['inodes'] for x in prep['extract']]):,.0f}",
            f"{_med([x['bytes'] for x in prep['extract']]) / 1e6:,.0f} MB",
        ],
        [
            "`prepare --images shards` (2 jobs)",
            _fmt_s(t["shards"]),
            _fmt_rate(members_per_s["shards"]),
            f"{_med([x['inodes'] for x in prep['shards']]):,.0f}",
            f"{_med([x['bytes'] for x in prep['shards']]) / 1e6:,.1f} MB",
        ],
        [
            "store build alone (`ImageStore.build`)",
            _fmt_s(t["store"]),
            _fmt_rate(members_per_s["store"]),
            "1",
            "",
        ],
    ]
    rates = {
        reader: {
            mode: {s: spread([x["reads_per_s"] for x in v]) for s, v in by_state.items()}
            for mode, by_state in by_mode.items()
        }
        for reader, by_mode in res["reads_per_s"].items()
    }
    cold_runs = "cold" in res["reads_per_s"]["decode"]["extract"]
    if cold_runs:  # the whole cold run, first batch included, and what it brought into the page cache
        for reader, by_mode in res["reads_per_s"].items():
            for mode, by_state in by_mode.items():
                runs = by_state["cold"]
                rates[reader][mode]["cold, whole run"] = spread([x["whole_reads_per_s"] for x in runs])
                rates[reader][mode]["amplification"] = spread(
                    [x["cached_bytes_after"] / x["image_bytes"] for x in runs]
                )
    resident = {
        mode: {
            s: max(x["resident_before"] for r in res["reads_per_s"].values() for x in r[mode][s]) for s in st
        }
        for mode, st in res["reads_per_s"]["decode"].items()
    }
    states = [s for s in rates["decode"]["extract"] if s != "amplification"]
    headers = {
        "warm": "page-cached",
        "cold": "cold, from the first batch",
        "cold, whole run": "cold, whole run",
    }

    def amplification(r: dict[str, float]) -> str:
        return (
            f"{r['median']:,.1f}x ({r['min']:,.1f}-{r['max']:,.1f}x)"
            if r["runs"] > 1
            else f"{r['median']:,.1f}x"
        )

    read_rows = [
        [
            label,
            *(_fmt_rate(rates[reader][mode][s]) for s in states),
            *([amplification(rates[reader][mode]["amplification"])] if cold_runs else []),
        ]
        for reader, what in (("decode", "decoded"), ("bytes", "bytes"))
        for mode, label in (("extract", f"extracted files, {what}"), ("shards", f"store, {what}"))
    ]
    ratio = {
        reader: {
            s: rates[reader]["shards"][s]["median"] / rates[reader]["extract"][s]["median"] for s in states
        }
        for reader in rates
    }
    cold_how = {
        "fadvise": "`posix_fadvise(DONTNEED)` after `sync` on every file the reads touch",
        "drop-caches": "3 written to /proc/sys/vm/drop_caches",
        "none": "",
    }[res["cold"]]
    mb = res["archive_bytes"] / 1e6
    lines = [
        f"## Images from archives ({'quick' if quick else 'full'})\n",
        machine_markdown(m) + "\n",
        f"### Preparing {n:,} JPEGs ({res['archives']} tars, {mb:,.0f} MB, {res['pool']:,} distinct images; "
        f"archives {least_cached:.0%}-100% page-cached); shards {speedup:,.1f}x faster\n",
        f"Median (min-max) of {res['rounds']} rounds, contenders alternating"
        + (", extraction from an earlier run.\n" if res["extract_reused_from"] else ".\n"),
        table(["how", "time", "images/s", "new inodes", "new disk"], prep_rows),
        f"\nStore: {res['store_bytes_per_member']:.1f} bytes per member.\n",
        f"### Random reads through a DataLoader with 2 workers ({res['reads']:,} reads, "
        f"{res['read_rounds']} rounds)\n",
        "Decoded: `FusionDataset(load_images=True)`, each image opened by Pillow and converted to RGB. "
        "Bytes: a minimal dataset returning `fusion_fast.images.read_path`'s bytes.\n",
        table(
            [
                "reads/s",
                *(headers[s] for s in states),
                *(["cold run: page cache filled / bytes of the images read"] if cold_runs else []),
            ],
            read_rows,
        ),
        "\nStore / files: "
        + "; ".join(
            f"{reader}: " + ", ".join(f"{ratio[reader][s]:.2f}x {s}" for s in states) for reader in ratio
        )
        + ".",
    ]
    if cold_how:
        lines.append(
            f"Cold: {cold_how}. Pages resident just before a timed read (`mincore`, highest seen): "
            + "; ".join(
                f"{mode} " + ", ".join(f"{r:.0%} {s}" for s, r in resident[mode].items()) for mode in resident
            )
            + "."
        )
    summary = {
        "prepare_s": t,
        "members_per_s": members_per_s,
        "shards_speedup": speedup,
        "reads_per_s": rates,
        "resident_before": resident,
        "store_over_files": ratio,
    }
    return "\n".join(lines), summary


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--quick", action="store_true", help="1,000 images, 1,000 reads, 2 rounds of preparing, 1 of reads"
    )
    p.add_argument("--images-count", "--files", dest="images", type=int, default=None, help="default 100,000")
    p.add_argument("--reads", type=int, default=None, help="random reads per DataLoader run (default 20,000)")
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="rounds of the preparations (default 3, 1 above 100,000 images: each round extracts and "
        "removes every image)",
    )
    p.add_argument("--read-rounds", type=int, default=None, help="rounds of the reads (default 3)")
    p.add_argument("--pool", type=int, default=None, help="distinct JPEGs (default 4,096)")
    p.add_argument("--per-archive", type=int, default=PER_ARCHIVE, help="members per tar (%(default)s)")
    p.add_argument(
        "--cold",
        choices=("fadvise", "drop-caches", "none"),
        default="fadvise",
        help="how the page cache is dropped for cold reads (drop-caches: root, the whole machine's caches)",
    )
    p.add_argument(
        "--work",
        default=None,
        help="make the playgrounds here and keep them (default: a folder of --dir, removed at the end)",
    )
    p.add_argument(
        "--reuse-extract",
        action="store_true",
        help="read from the extracted playground an earlier run left in --work, reporting that run's "
        "extraction, instead of extracting again",
    )
    p.add_argument("--size", default=None, help="ignored (the suite passes it to every benchmark)")
    p.add_argument("--dir", default=None, help="where the download folder is kept and the work is done")
    p.add_argument("--out", default=None, help="write the raw figures here as JSON")
    args = p.parse_args(argv)
    q = args.quick
    n = args.images or (1_000 if q else 100_000)
    reads = args.reads or (1_000 if q else 20_000)
    rounds = args.rounds or (2 if q else 3 if n <= 100_000 else 1)
    read_rounds = args.read_rounds or (1 if q else 3)
    pool_size = min(args.pool or (256 if q else 4_096), n)
    data_dir = Path(args.dir) if args.dir else default_data_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    if reads < 256:
        p.error("--reads must be at least 256: the rate is counted after the first batch of 64")
    if args.reuse_extract and not args.work:
        p.error("--reuse-extract needs --work")
    res = run(
        data_dir,
        n,
        reads,
        rounds,
        read_rounds,
        pool_size,
        args.per_archive,
        args.cold,
        work=Path(args.work) if args.work else None,
        reuse_extract=args.reuse_extract,
    )
    m = machine()
    markdown, summary = report(res, m, q)
    publish(markdown, {"machine": m, **res, "summary": summary}, args.out)


if __name__ == "__main__":
    main()
