"""Images from archives: extracting a tar of small JPEGs against indexing it into an image store, and
random image reads through a torch DataLoader (2 workers) from the extracted files against the store.

    python -m fusion_fast.benchmarks.images [--quick] [--files N] [--reads M] [--dir D] [--out F]

The tar holds N members in FUSION's `<Source>/<shard>/<name>.jpg` shape whose bytes are a few hundred
distinct JPEGs made with Pillow (the cost of both preparations grows with members, not with pixels).
Extraction is `tarfile`'s `extractall` with the `data` filter, the library prepare's extract mode uses;
the store is `ImageStore.build`. Reads are page-cached: both the files and the archive were just written.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from ..images import ImageStore
from .common import machine, machine_markdown, publish, table

DISTINCT_JPEGS = 200


def make_tar(path: Path, n: int) -> list[str]:
    """A tar of `n` small JPEGs; returns the member paths."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    jpegs = []
    for _ in range(DISTINCT_JPEGS):
        buf = io.BytesIO()
        Image.fromarray((rng.random((64, 96, 3)) * 255).astype("uint8")).save(buf, "JPEG", quality=85)
        jpegs.append(buf.getvalue())
    names = [f"Bench/{i // 1000:05d}/{i:09d}.jpg" for i in range(n)]
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for i, name in enumerate(names):
            data = jpegs[i % DISTINCT_JPEGS]
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return names


def count_inodes(folder: Path) -> int:
    return sum(1 + len(files) for _, _, files in os.walk(folder))


class _Files:
    def __init__(self, base: str, names: list[str]) -> None:
        self.base, self.names = base, names

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> int:
        with open(os.path.join(self.base, self.names[i]), "rb") as f:
            return len(f.read())


class _Store:
    def __init__(self, store: ImageStore, names: list[str]) -> None:
        self.store, self.names = store, names

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> int:
        return len(self.store.read(self.names[i]))


def loader_rate(dataset: Any, reads: int) -> float:
    """Random reads per second through a DataLoader with 2 workers (one item per read)."""
    import torch.utils.data as tud

    sampler = tud.RandomSampler(dataset, replacement=True, num_samples=reads, generator=None)
    loader = tud.DataLoader(dataset, batch_size=64, sampler=sampler, num_workers=2, collate_fn=len)
    started = time.perf_counter()
    total = sum(loader)
    assert total == reads
    return reads / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="10,000 images, 20,000 reads")
    p.add_argument("--files", type=int, default=None, help="images in the tar (default 100,000)")
    p.add_argument("--reads", type=int, default=None, help="random reads per DataLoader run")
    p.add_argument("--size", default=None, help="ignored (the suite passes it to every benchmark)")
    p.add_argument("--dir", default=None, help="scratch folder (default: a temporary folder)")
    p.add_argument("--out", default=None, help="write the raw figures here as JSON")
    args = p.parse_args(argv)
    n = args.files or (10_000 if args.quick else 100_000)
    reads = args.reads or (20_000 if args.quick else 100_000)
    if args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="images-bench-", dir=args.dir))
    try:
        tar = scratch / "images.tar"
        names = make_tar(tar, n)
        tar_bytes = tar.stat().st_size

        started = time.perf_counter()
        with tarfile.open(tar) as tf:
            tf.extractall(scratch / "extracted", filter="data")
        extract_s = time.perf_counter() - started
        inodes = count_inodes(scratch / "extracted")

        started = time.perf_counter()
        store = ImageStore.build([tar], scratch / "images.ffimg")
        build_s = time.perf_counter() - started
        store_bytes = (scratch / "images.ffimg").stat().st_size

        files_rate = loader_rate(_Files(str(scratch / "extracted"), names), reads)
        store_rate = loader_rate(_Store(store, names), reads)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    m = machine()
    prep_rows = [
        ["extract (`tarfile`, data filter)", f"{extract_s:.2f} s", f"{n / extract_s:,.0f}", f"{inodes:,}"],
        ["image store (`ImageStore.build`)", f"{build_s:.2f} s", f"{n / build_s:,.0f}", "1"],
    ]
    read_rows = [
        ["extracted files", f"{files_rate:,.0f}"],
        ["image store", f"{store_rate:,.0f}"],
    ]
    markdown = "\n".join(
        [
            f"## Images from archives ({'quick' if args.quick else 'full'})\n",
            machine_markdown(m) + "\n",
            f"### Preparing {n:,} JPEGs ({tar_bytes / 1e6:,.0f} MB tar); store speed-up "
            f"{extract_s / build_s:,.0f}x\n",
            table(["how", "time", "images/s", "new inodes"], prep_rows),
            f"\nStore size: {store_bytes / n:.1f} bytes per image.\n",
            f"### Random reads through a DataLoader, 2 workers, page-cached ({reads:,} reads)\n",
            table(["from", "reads/s"], read_rows),
            "\nReads with the page cache dropped are not measured here (that needs root).",
        ]
    )
    doc = {
        "machine": m,
        "files": n,
        "tar_bytes": tar_bytes,
        "extract_s": extract_s,
        "extract_inodes": inodes,
        "build_s": build_s,
        "store_bytes_per_member": store_bytes / n,
        "reads": reads,
        "files_reads_per_s": files_rate,
        "store_reads_per_s": store_rate,
    }
    publish(markdown, doc, args.out)


if __name__ == "__main__":
    main()
