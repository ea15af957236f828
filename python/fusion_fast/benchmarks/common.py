"""Shared helpers for the benchmark scripts: machine description, timing, memory sampling, tables."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

#: Peers a benchmark compares with, by import name: each is skipped, and reported so, when absent.
PEERS = ("orjson", "msgspec", "simdjson", "polars", "datasets", "megatron.energon", "torch", "matplotlib")


def peer_available(module: str) -> bool:
    """Whether `module` (dotted names allowed) can be imported, without importing it. `find_spec` of a
    submodule imports its parents and raises when one is missing (`megatron.energon` without
    `megatron`); that counts as absent."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def default_data_dir() -> Path:
    """Where generated benchmark data is kept between runs: `bench/` in fusion-fast's cache folder
    ($FUSION_FAST_CACHE, else the XDG cache folder), never the working directory or the checkout."""
    from .. import _core

    return Path(_core.cache_dir()) / "bench"


def parse_size(text: str) -> int:
    """Bytes from a size such as 64MiB or 1.5GiB."""
    from ..synth import parse_size as parse

    return parse(text)


def fusion_lengths(list_data_dict: list[Any]) -> list[int]:
    """FUSION's `LazySupervisedDataset.lengths` (its code in substance): the baseline to beat."""
    length_list = []
    for sample in list_data_dict:
        img_tokens = 128 if "image" in sample else 0
        length_list.append(sum(len(conv["value"].split()) for conv in sample["conversations"]) + img_tokens)
    return length_list


def fusion_modality_lengths(list_data_dict: list[Any]) -> list[int]:
    """FUSION's `LazySupervisedDataset.modality_lengths`: words, negative for records without `image`."""
    length_list = []
    for sample in list_data_dict:
        cur_len = sum(len(conv["value"].split()) for conv in sample["conversations"])
        cur_len = cur_len if "image" in sample else -cur_len
        length_list.append(cur_len)
    return length_list


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, OS, Python and the versions of every package a benchmark may compare."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        mem = int(next(x for x in open("/proc/meminfo") if x.startswith("MemTotal")).split()[1]) * 1024
    except (OSError, StopIteration):
        pass
    versions: dict[str, str | None] = {}
    for pkg in (
        "fusion-fast",
        "numpy",
        "polars",
        "orjson",
        "msgspec",
        "pysimdjson",
        "datasets",
        "torch",
        "megatron-energon",
    ):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": versions,
    }


def machine_markdown(m: dict[str, Any]) -> str:
    vers = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    return (
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB RAM, {m['os']}, "
        f"Python {m['python']}; {vers}."
    )


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements, and how many there were."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


def repeat(fn: Callable[[], Any], n: int) -> dict[str, float]:
    """Run `fn` n times; median, min and max seconds."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return spread(times)


def fmt_time(r: dict[str, float]) -> str:
    def one(s: float) -> str:
        return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"

    return f"{one(r['median'])} ({one(r['min'])}–{one(r['max'])})"


class MemorySampler:
    """Samples this process's anonymous (non-file-backed) resident memory, to separate what a program
    allocates from the pages of files it maps."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak_anon = 0
        self.base_anon = self.anon()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def anon() -> int:
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_anon = max(self.peak_anon, self.anon())
            time.sleep(self.interval)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_anon = max(self.peak_anon, self.anon())

    @property
    def growth(self) -> int:
        return self.peak_anon - self.base_anon


def run_child(code: str, *args: str, timeout: float = 3600) -> dict[str, Any]:
    """Run `code` in a fresh Python; its last output line is one JSON object, returned. The child gets a
    temporary folder of its own as TMPDIR, removed afterwards: the `datasets` baselines write a
    gigabyte-sized Arrow cache there on every run."""
    with tempfile.TemporaryDirectory(prefix="fusion-fast-bench-child-") as tmp:
        out = subprocess.run(
            [sys.executable, "-c", code, *args],
            stdout=subprocess.PIPE,
            text=True,
            timeout=timeout,
            check=True,
            env={**os.environ, "TMPDIR": tmp},
        ).stdout
    return json.loads(out.strip().splitlines()[-1])


# Peak resident memory of this process since it started: VmHWM belongs to the process image, so unlike
# ru_maxrss it does not carry over the parent's peak across fork + exec.
PEAK_RSS = (
    "peak_rss = next(int(x.split()[1]) * 1024 for x in open('/proc/self/status') if x.startswith('VmHWM:'))"
)


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def publish(markdown: str, results: dict[str, Any], out: str | None) -> None:
    """Prints a benchmark's Markdown report and, given `--out`, writes its raw figures there as JSON."""
    print(markdown)
    if out:
        Path(out).write_text(json.dumps(results, indent=1))
