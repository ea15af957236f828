"""Host -> GPU transfer: pinned versus pageable copy rates, and how much copy time `CudaPrefetcher` hides
behind compute, and the static_hd image path. Self-contained (torch, torchvision, Pillow and fusion_fast);
about two minutes on a current GPU.

    python -m fusion_fast.benchmarks.gpu [--quick] [--out FILE.json]

1. Copy rate of one host tensor to the GPU for 16, 64 and 256 MiB, from pageable and from pinned memory
   (`non_blocking=True`), timed with CUDA events over several copies after a warm-up. Target: the
   pinned path reaches >= 80% of the best rate measured.
2. Overlap: a loader of pinned 64 MiB batches and a compute loop (fp16 matmuls on each batch) sized to take
   about as long as one copy. Timed: copies alone, compute alone, copy-then-compute on one stream, and
   `CudaPrefetcher` (copy of batch k+1 on a side stream during compute on batch k). The hidden share is
   (serial - prefetched) / copies alone. Pageable batches are timed the same way for contrast (their
   copies block the host, so little can be hidden). The prefetched batches are checked against the host
   data.

3. The image path (`image_path`): FUSION's `static_hd` tensors from photo-like JPEGs (640x480 and
   1024x768, as `fusion_fast.benchmarks.vision` makes them) through a `FusionDataset`, a DataLoader with
   `--workers` workers (fork, `pin_memory=True`, batches of `--batch-size`) and `CudaPrefetcher`, once with
   `FusionImageProcessor(device="cuda")` (workers ship the compressed bytes, the prefetcher decodes with
   nvJPEG and preprocesses on the GPU) and once with the CPU processor (workers decode and preprocess).
   Reported: images/s over the epoch after its first two batches, and host CPU seconds per image (the
   CPU time of the main process and of the workers, which `getrusage` counts once they have exited, over
   the whole epoch, worker start included; CUDA's synchronisations spin on the host and count too).
   Also the device stage alone: one pinned batch decoded and preprocessed over and over (images/s), the
   bound that the workers and the host cannot raise. Goal: >= 2,000 images/s on one H100-class GPU with
   <= 1 host CPU core. `--images-only` runs just this part.

Without CUDA it prints "CUDA not available: skipped" and exits 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any

import torch

import fusion_fast

from ..torch import CudaPrefetcher

MiB = 1 << 20
COPY_SIZES_MIB = (16, 64, 256)
BATCH_MIB = 64
WIDTH = 4096  # columns of a batch viewed as an fp16 matrix, and the side of the compute weight


def copy_rate(size: int, pinned: bool, reps: int) -> float:
    """GB/s of `reps` host -> device copies of `size` bytes."""
    host = torch.empty(size, dtype=torch.uint8, pin_memory=pinned)
    host.fill_(7)
    device = torch.empty(size, dtype=torch.uint8, device="cuda")
    for _ in range(2):  # warm-up: first-touch, driver staging buffers
        device.copy_(host, non_blocking=pinned)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    wall = time.perf_counter()
    start.record()
    for _ in range(reps):
        device.copy_(host, non_blocking=pinned)
    end.record()
    end.synchronize()
    # Pageable copies are staged by the host; events then miss part of the time, the wall clock does not.
    seconds = max(start.elapsed_time(end) / 1e3, time.perf_counter() - wall if not pinned else 0.0)
    return size * reps / seconds / 1e9


def make_batches(count: int, pinned: bool) -> list[torch.Tensor]:
    rows = BATCH_MIB * MiB // (2 * WIDTH)
    return [
        torch.full((rows, WIDTH), float(k % 7 + 1), dtype=torch.float16, pin_memory=pinned)
        for k in range(count)
    ]


def compute(batch: torch.Tensor, weight: torch.Tensor, matmuls: int) -> torch.Tensor:
    x = batch
    for _ in range(matmuls):
        x = torch.tanh(x @ weight)
    return x[:1, :1]


def timed(fn: Any) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t


def overlap(batches: list[torch.Tensor], weight: torch.Tensor, matmuls: int) -> dict[str, float]:
    """Seconds for: copies alone, compute alone, copy-then-compute serially, and CudaPrefetcher."""
    on_gpu = [b.to("cuda") for b in batches[:2]]
    sink: list[torch.Tensor] = []

    def copies() -> None:
        for b in batches:
            sink.append(b.to("cuda", non_blocking=True))
        sink.clear()

    def compute_only() -> None:
        for k in range(len(batches)):
            sink.append(compute(on_gpu[k % 2], weight, matmuls))

    def serial() -> None:
        for b in batches:
            sink.append(compute(b.to("cuda", non_blocking=True), weight, matmuls))

    def prefetched() -> None:
        for b in CudaPrefetcher(batches):
            sink.append(compute(b, weight, matmuls))

    out = {}
    for name, fn in (
        ("copy", copies),
        ("compute", compute_only),
        ("serial", serial),
        ("prefetched", prefetched),
    ):
        fn()  # warm-up
        sink.clear()
        out[name] = min(timed(fn) for _ in range(2))
        sink.clear()
    out["hidden_share"] = max(0.0, min(1.0, (out["serial"] - out["prefetched"]) / out["copy"]))
    out["ideal_share"] = min(out["copy"], out["compute"]) / out["copy"]
    return out


def check_prefetched_values(batches: list[torch.Tensor]) -> bool:
    """Every batch CudaPrefetcher hands out equals its host data (nested containers included)."""
    nested: list[dict[str, Any]] = [{"x": b, "meta": [b[:1], (b[-1:], "tag")]} for b in batches]
    for host, got in zip(nested, CudaPrefetcher(nested), strict=True):
        doubled = got["x"] * 2  # used on the main stream right away, while the next copy runs
        if not (
            got["x"].is_cuda
            and torch.equal(doubled.cpu(), host["x"] * 2)
            and torch.equal(got["meta"][0].cpu(), host["meta"][0])
            and torch.equal(got["meta"][1][0].cpu(), host["meta"][1][0])
            and got["meta"][1][1] == "tag"
        ):
            return False
    return True


# -- the image path -------------------------------------------------------------------------------------

#: Resolutions of the benchmark's JPEGs (about 100 and 260 KB at quality 90).
IMAGE_SIZES = ((640, 480), (1024, 768))


def write_jpeg_set(folder: Path, images: int, distinct: int = 16) -> Path:
    """`images` records (a JSONL file in `folder`, returned) over `distinct` photo-like JPEGs written to
    `folder`, half of each resolution of `IMAGE_SIZES`, used in turn. Few distinct files keep the set
    quick to make; every record still decodes its image in full."""
    from .vision import photo_like

    names = []
    for k in range(max(1, distinct)):
        w, h = IMAGE_SIZES[k % len(IMAGE_SIZES)]
        name = f"{w}x{h}-{k}.jpg"
        (folder / name).write_bytes(photo_like(w, h, seed=k))
        names.append(name)
    turns = [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "A photo."}]
    data = folder / "images.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for i in range(images):
            f.write(json.dumps({"id": i, "image": names[i % len(names)], "conversations": turns}) + "\n")
    return data


def _cpu_seconds() -> float:
    """CPU time of this process and of its exited, waited-for children (DataLoader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def loader_epoch(
    data: Path,
    processor: Any,
    *,
    workers: int,
    batch_size: int,
    device: torch.device | str | None = None,
    pin_memory: bool = True,
) -> dict[str, float]:
    """One epoch of `data` through FusionDataset(image_processor=processor), a DataLoader and
    CudaPrefetcher(device): images/s after the first two batches (warm-up: worker start, first decodes)
    and host CPU seconds per image over the whole epoch (the workers' counted once they have exited)."""
    from torch.utils.data import DataLoader

    from ..torch import PIXELS_KEY, FusionDataset, collate

    ds = FusionDataset(data, image_folder=data.parent, image_processor=processor)
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory and torch.cuda.is_available(),
        multiprocessing_context="fork" if workers else None,
    )
    prefetcher = CudaPrefetcher(loader, device=device)
    sync = torch.cuda.synchronize if prefetcher.enabled else (lambda: None)
    cpu_start, images, timed_images, start = _cpu_seconds(), 0, 0, 0.0
    checksum = 0.0
    for k, batch in enumerate(prefetcher):
        pixels = batch[PIXELS_KEY]
        if k == 2:
            sync()
            start, timed_images = time.perf_counter(), 0
        checksum += float(pixels[:, :, :, 0, 0].sum()) if k % 8 == 0 else 0.0  # used, as training would
        images += len(pixels)
        timed_images += len(pixels)
    sync()
    elapsed = time.perf_counter() - start if start else float("nan")
    del prefetcher, loader  # the workers exit and are waited for: their CPU time is counted
    cpu = _cpu_seconds() - cpu_start
    return {
        "images": images,
        "images_per_s": timed_images / elapsed if start else float("nan"),
        "cpu_s_per_image": cpu / max(1, images),
        "host_cores_busy": cpu / max(1e-9, images) * (timed_images / elapsed) if start else float("nan"),
        "checksum": checksum,
    }


def device_stage_rate(data: Path, processor: Any, batch_size: int, reps: int) -> float:
    """Images/s of the device stage alone: one pinned `ShippedBatch` decoded and preprocessed `reps`
    times on the current device."""
    from ..vision_device import ShippedBatch

    names = sorted({json.loads(line)["image"] for line in data.read_text().splitlines()})
    column = [processor.ship(data.parent / names[i % len(names)]) for i in range(batch_size)]
    batch = ShippedBatch.pack(column)
    if torch.cuda.is_available():
        batch = batch.pin_memory()
    target = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    batch.to_device(target)  # warm-up: the decoder's state, kernels
    sync = torch.cuda.synchronize if target.type == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        batch.to_device(target, non_blocking=True)
    sync()
    return batch_size * reps / (time.perf_counter() - t)


def image_path(
    images: int,
    workers: int,
    batch_size: int,
    processor: Any = None,
    device: str | None = None,
    stage_reps: int = 5,
) -> dict[str, Any]:
    """The image-path figures: the bytes path (`processor`, default `FusionImageProcessor(device="cuda")`)
    and the CPU processor through the same loader, and the device stage alone."""
    import tempfile

    from ..vision import FusionImageProcessor

    gpu_processor = processor if processor is not None else FusionImageProcessor("static_hd", device="cuda")
    out: dict[str, Any] = {
        "images": images,
        "workers": workers,
        "batch_size": batch_size,
        "host_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ships_compressed": gpu_processor.ships_compressed,
    }
    with tempfile.TemporaryDirectory(prefix="fusion-fast-gpu-images-") as tmp:
        data = write_jpeg_set(Path(tmp), images, distinct=min(16, images))
        sizes = [p.stat().st_size for p in Path(tmp).glob("*.jpg")]
        out["jpeg_kb"] = round(sum(sizes) / len(sizes) / 1e3, 1)
        for key, proc in (("bytes_path", gpu_processor), ("cpu_path", FusionImageProcessor("static_hd"))):
            out[key] = loader_epoch(data, proc, workers=workers, batch_size=batch_size, device=device)
        out["device_stage_images_per_s"] = device_stage_rate(data, gpu_processor, batch_size, stage_reps)
    return out


def image_report(r: dict[str, Any]) -> str:
    lines = [
        f"static_hd image path: {r['images']} JPEGs (640x480 and 1024x768, {r['jpeg_kb']} KB on average), "
        f"DataLoader with {r['workers']} workers, batch {r['batch_size']}, pin_memory, CudaPrefetcher; "
        f"{r['host_cpus']} host CPUs. Workers ship compressed bytes: {r['ships_compressed']}.",
        "",
        "| path | images / s | host CPU s / image | host cores busy | goal |",
        "|---|---|---|---|---|",
    ]
    for name, key in (
        ("bytes -> nvJPEG + GPU preprocessing", "bytes_path"),
        ("CPU processor in workers", "cpu_path"),
    ):
        e = r[key]
        goal = ">= 2,000 / s, <= 1 core" if key == "bytes_path" else ""
        lines.append(
            f"| {name} | {e['images_per_s']:.0f} | {e['cpu_s_per_image'] * 1e3:.2f} ms | "
            f"{e['host_cores_busy']:.2f} | {goal} |"
        )
    lines += [
        "",
        "Device stage alone (one pinned batch, decode + preprocess): "
        f"{r['device_stage_images_per_s']:.0f} images/s.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer copies and batches")
    ap.add_argument("--out", default=None, help="write the raw figures here as JSON")
    ap.add_argument("--images-only", action="store_true", help="only the image path (part 3)")
    ap.add_argument("--images", type=int, default=None, help="JPEGs in the image path's epoch (default 4096)")
    ap.add_argument("--workers", type=int, default=4, help="DataLoader workers of the image path (FUSION: 4)")
    ap.add_argument("--batch-size", type=int, default=64, help="batch size of the image path")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("CUDA not available: skipped")
        return 0
    n_images = args.images or (1024 if args.quick else 4096)
    if args.images_only:
        figures = image_path(n_images, args.workers, args.batch_size)
        print(image_report(figures))
        if args.out:
            Path(args.out).write_text(json.dumps({"image_path": figures}, indent=1))
        return 0

    props = torch.cuda.get_device_properties(0)
    results: dict[str, Any] = {
        "gpu": props.name,
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "fusion_fast": fusion_fast.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
    }
    reps = 5 if args.quick else 20
    results["copy"] = {
        size: {"pageable": copy_rate(size * MiB, False, reps), "pinned": copy_rate(size * MiB, True, reps)}
        for size in COPY_SIZES_MIB
    }
    best = max(rate for by_kind in results["copy"].values() for rate in by_kind.values())
    results["best_rate"] = best

    count = 8 if args.quick else 24
    weight = torch.randn(WIDTH, WIDTH, device="cuda", dtype=torch.float16) / math.sqrt(WIDTH)
    pinned = make_batches(count, pinned=True)
    one_copy = timed(lambda: pinned[0].to("cuda", non_blocking=True))
    one_copy = min(one_copy, timed(lambda: pinned[1].to("cuda", non_blocking=True)))
    probe = pinned[0].to("cuda")
    compute(probe, weight, 1)
    one_matmul = min(timed(lambda: compute(probe, weight, 4)) for _ in range(3)) / 4
    matmuls = max(1, round(1.2 * one_copy / one_matmul))  # compute a little longer than a copy
    results["overlap_matmuls"] = matmuls
    results["overlap_pinned"] = overlap(pinned, weight, matmuls)
    results["overlap_pageable"] = overlap(make_batches(count, pinned=False), weight, matmuls)
    results["prefetcher_values_ok"] = check_prefetched_values(pinned[:4])
    results["batches"] = count
    pinned.clear()  # 1.5 GiB of pinned memory the image path does not need
    results["image_path"] = image_path(n_images, args.workers, args.batch_size)

    print(report(results))
    print()
    print(image_report(results["image_path"]))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0 if results["prefetcher_values_ok"] else 1


def report(r: dict[str, Any]) -> str:
    best = r["best_rate"]
    lines = [
        f"GPU: {r['gpu']} ({r['gpu_memory_gib']} GiB), torch {r['torch']}, CUDA {r['cuda']}, "
        f"fusion-fast {r['fusion_fast']}, Python {r['python']}, CPU {r['cpu']}.",
        "",
        "| host -> device copy | pageable GB/s | pinned GB/s | pinned / best rate | target |",
        "|---|---|---|---|---|",
    ]
    for size, rate in r["copy"].items():
        share = rate["pinned"] / best
        lines.append(f"| {size} MiB | {rate['pageable']:.1f} | {rate['pinned']:.1f} | {share:.0%} | >= 80% |")
    lines += [
        "",
        f"Overlap: {r['batches']} batches of {BATCH_MIB} MiB; compute per batch = "
        f"{r['overlap_matmuls']} fp16 matmuls ({WIDTH}x{WIDTH} weight). Prefetched values checked: "
        f"{'identical' if r['prefetcher_values_ok'] else 'MISMATCH'}.",
        "",
        "| batches | copies alone | compute alone | copy then compute | CudaPrefetcher | copy time hidden | "
        "ideal |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in ("pinned", "pageable"):
        o = r[f"overlap_{kind}"]
        ms = {k: f"{o[k] * 1e3:.1f} ms" for k in ("copy", "compute", "serial", "prefetched")}
        lines.append(
            f"| {kind} | {ms['copy']} | {ms['compute']} | {ms['serial']} | {ms['prefetched']} | "
            f"{o['hidden_share']:.0%} | {o['ideal_share']:.0%} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
