"""`fusion-fast check` speed: image existence (Rust, parallel) against a Python loop, and a whole check.

    python -m fusion_fast.benchmarks.check [--quick] [--files N] [--records M] [--repeat R] [--dir D]
                                           [--out F]

Target: at least 200k paths/s for file existence with a warm file cache. The baseline is
`os.path.isfile(os.path.join(base, p))` over the same paths in the same run. The whole-check row runs
`run_check` on a generated playground (synthetic LLaVA records, every referenced image present as an empty
file), once building the index and then with the index already built; then the same records with every
image in tar archives read through the image folder's store (`prepare --images shards`).
"""

from __future__ import annotations

import argparse
import io
import os
import random
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .. import _core, synth
from ..check import run_check
from ..images import FOLDER_STORE, ImageStore
from ..index import JsonIndex
from ..index import open as open_index
from ..playground import STATE_DIR, Playground
from .common import default_data_dir, fmt_time, machine, machine_markdown, parse_size, publish, repeat, table

#: Share of the benchmark paths that do not exist (a failed lookup costs about as much as a found one).
MISSING_SHARE = 0.1


def make_files(base: Path, n: int) -> list[str]:
    """`n` empty files in FUSION's `<Source>/<shard>/<name>.jpg` shape, 1000 per folder; returns their
    relative paths plus `MISSING_SHARE * n` paths that do not exist, shuffled."""
    paths = []
    for i in range(n):
        rel = f"{synth.SOURCES[i % len(synth.SOURCES)]}/{i // 1000:05d}/{i:09d}.jpg"
        f = base / rel
        if i % 1000 == 0 or not f.parent.is_dir():
            f.parent.mkdir(parents=True, exist_ok=True)
        f.touch()
        paths.append(rel)
    paths += [
        f"{synth.SOURCES[0]}/{i // 1000:05d}/missing-{i:09d}.jpg" for i in range(int(n * MISSING_SHARE))
    ]
    random.Random(0).shuffle(paths)
    return paths


def python_isfile(paths: list[str], base: str) -> int:
    return sum(os.path.isfile(os.path.join(base, p)) for p in paths)


def write_records(root: Path, records: int) -> tuple[Playground, Path]:
    """`records` synthetic records in `root/train/jsons/Bench-<N>k.json`; the playground and that file."""
    playground = Playground.at(root)
    data = playground.json_file(f"Bench-{max(1, records // 1000)}k.json")
    data.parent.mkdir(parents=True, exist_ok=True)
    synth.write_file(data, records=records, seed=3)
    return playground, data


def media_paths(idx: JsonIndex) -> Iterator[str]:
    """Every image and video path the records of `idx` name, in record order, repeats included."""
    for start in range(0, len(idx), 4096):
        for rec in idx.get_many(range(start, min(len(idx), start + 4096))):
            for key in ("image", "video"):
                value = rec.get(key)
                yield from [value] if isinstance(value, str) else value or []


def make_playground(root: Path, records: int) -> Path:
    """`root/train/jsons/Bench-<N>k.json` with every image and video it references present."""
    playground, data = write_records(root, records)
    images = playground.images
    idx = open_index(data)
    for p in media_paths(idx):
        f = images / p
        f.parent.mkdir(parents=True, exist_ok=True)
        f.touch()
    os.remove(idx.index_path)  # the first check builds it
    return root


def make_shards_playground(root: Path, records: int) -> Path:
    """`make_playground`'s records with every image and video held in tar archives (one per top folder)
    read through the image folder's store, as `prepare --images shards` leaves them."""
    playground, data = write_records(root, records)
    images = playground.images
    shards = images / STATE_DIR / "shards"
    shards.mkdir(parents=True)
    by_top: dict[str, list[str]] = {}
    idx = open_index(data)
    for p in media_paths(idx):
        by_top.setdefault(p.split("/", 1)[0], []).append(p)
    archives = []
    for top, members in sorted(by_top.items()):
        archive = shards / f"{top}.tar"
        with tarfile.open(archive, "w", format=tarfile.GNU_FORMAT) as tf:
            for p in dict.fromkeys(members):
                tf.addfile(tarfile.TarInfo(p), io.BytesIO(b""))
        archives.append(archive)
    ImageStore.build(archives, images / FOLDER_STORE)
    os.remove(idx.index_path)  # the first check builds it
    return root


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20k files and 20k records")
    ap.add_argument("--files", type=int, default=None, help="files to create (default 200k, --quick 20k)")
    ap.add_argument("--records", type=int, default=None, help="records to check (default 200k, --quick 20k)")
    ap.add_argument("--size", default=None, help="scale files and records to this size (1GiB: 200k each)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to create them (default: the cache folder)")
    ap.add_argument("--out", default=None, help="also write the results as JSON")
    args = ap.parse_args(argv)
    full = 200_000 if args.size is None else max(1000, round(200_000 * parse_size(args.size) / 2**30))
    n_files = args.files or (min(full, 20_000) if args.quick else full)
    n_records = args.records or (min(full, 20_000) if args.quick else full)

    folder = Path(args.dir) if args.dir else default_data_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix="bench-check-") as tmp:
        base = Path(tmp) / "images"
        t = time.perf_counter()
        paths = make_files(base, n_files)
        created = time.perf_counter() - t
        b = str(base)
        # Warm the dentry / inode caches so every method sees the same, warm, file system.
        found = sum(_core.files_exist(paths, b))
        assert found == n_files == python_isfile(paths, b), (found, n_files)
        cores = os.cpu_count() or 1
        runs = {
            f"`files_exist`, {cores} threads (rayon)": repeat(
                lambda: _core.files_exist(paths, b), args.repeat
            ),
            "`files_exist`, 1 thread": repeat(lambda: _core.files_exist(paths, b, threads=1), args.repeat),
            "Python `os.path.isfile` loop (baseline)": repeat(lambda: python_isfile(paths, b), args.repeat),
        }
        baseline = runs["Python `os.path.isfile` loop (baseline)"]["median"]
        exist_rows = [
            [
                name,
                f"{len(paths):,}",
                fmt_time(r),
                f"{len(paths) / r['median']:,.0f}",
                f"{baseline / r['median']:.1f}×",
            ]
            for name, r in runs.items()
        ]

        pg = make_playground(Path(tmp) / "playground", n_records)
        train = pg / "train"
        t = time.perf_counter()
        first = run_check(train)
        cold = time.perf_counter() - t
        assert first.clean, first.problems[:3]
        warm = repeat(lambda: run_check(train), args.repeat)
        images = sum(d.images for d in first.datasets.values())
        spg = make_shards_playground(Path(tmp) / "shards", n_records)
        strain = spg / "train"
        shards_first = run_check(strain)
        assert shards_first.clean, shards_first.problems[:3]
        in_store = repeat(lambda: run_check(strain), args.repeat)
        check_rows = [
            [
                "`run_check`, building the index",
                fmt_time({"median": cold, "min": cold, "max": cold}),
                f"{first.records / cold:,.0f}",
                f"{images / cold:,.0f}",
            ],
            [
                "`run_check`, index built",
                fmt_time(warm),
                f"{first.records / warm['median']:,.0f}",
                f"{images / warm['median']:,.0f}",
            ],
            [
                "`run_check`, index built, images in an image store (`--images shards`)",
                fmt_time(in_store),
                f"{first.records / in_store['median']:,.0f}",
                f"{images / in_store['median']:,.0f}",
            ],
        ]

    m = machine()
    markdown = "\n".join(
        [
            f"## fusion-fast check ({'quick' if args.quick else 'full'})\n",
            machine_markdown(m) + "\n",
            f"### File existence, warm cache ({n_files:,} files created in {created:.1f} s, "
            f"plus {int(n_files * MISSING_SHARE):,} missing paths; target ≥ 200,000 paths/s)\n",
            table(["method", "paths", "time (median, min–max)", "paths/s", "vs baseline"], exist_rows),
            f"\n### Whole check of a generated playground ({first.records:,} records, {images:,} image and "
            "video references, no `--decode`)\n",
            table(["run", "time (median, min–max)", "records/s", "paths/s"], check_rows),
        ]
    )
    doc = {
        "machine": m,
        "files": n_files,
        "records": first.records,
        "exist": runs,
        "check": {"cold_s": cold, "warm": warm, "images": images, "in_store": in_store},
    }
    publish(markdown, doc, args.out)


if __name__ == "__main__":
    main()
