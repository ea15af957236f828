"""Host -> GPU transfer: pinned versus pageable copy rates, and how much copy time `CudaPrefetcher` hides
behind compute. Self-contained (torch and fusion_fast only); under a minute on a current GPU.

    python -m fusion_fast.benchmarks.gpu [--quick] [--out FILE.json]

1. Copy rate of one host tensor to the GPU for 16, 64 and 256 MiB, from pageable and from pinned memory
   (`non_blocking=True`), timed with CUDA events over several copies after a warm-up. Target (issue 5): the
   pinned path reaches >= 80% of the best rate measured.
2. Overlap: a loader of pinned 64 MiB batches and a compute loop (fp16 matmuls on each batch) sized to take
   about as long as one copy. Timed: copies alone, compute alone, copy-then-compute on one stream, and
   `CudaPrefetcher` (copy of batch k+1 on a side stream during compute on batch k). The hidden share is
   (serial - prefetched) / copies alone. Pageable batches are timed the same way for contrast (their
   copies block the host, so little can be hidden). The prefetched batches are checked against the host
   data.

Without CUDA it prints "CUDA not available: skipped" and exits 0.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer copies and batches")
    ap.add_argument("--out", default=None, help="write the raw figures here as JSON")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("CUDA not available: skipped")
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

    print(report(results))
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
