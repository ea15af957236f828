"""DataLoader over raw records: samples/s, private memory per worker and time to the first batch, for
fusion-fast's `FusionDataset` against FUSION's `list_data_dict` dataset (and Hugging Face `datasets`
random access when it is installed), with the same DataLoader settings, in the same run.

    python -m fusion_fast.benchmarks.dataloader [--quick] [--data DIR] [--samples N] [--rounds R]
                                       [--workers W] [--batch 64] [--baseline-records N] [--start-method fork]
                                       [--out FILE.json]

The stage is bench_mixture.py's: 9 files shaped like FUSION's Stage 1 (10M records; `--quick`: 100k),
generated once into `--data` and indexed before anything is timed. Every loader shuffles (random
access, as in training), uses `fusion_fast.torch.collate`, starts its workers from
`fusion_fast.torch.worker_context()` (queues written by the caller, 1 MiB pipes) and runs `--samples`
samples after a warm-up. fusion-fast, fusion-fast with torch's default context (feeder threads,
64 KiB pipes) and FUSION's list take turns for `--rounds` rounds (the machine's speed wanders; each
gets the same conditions): the median and the range are reported. So does the DataLoader alone, with
the same settings over a dataset whose items are just their index: the rate its own per-batch work
allows on this machine. Each loader's CPU time per batch, of the main process and of its workers,
shows where the machine's cores go. The baselines hold a subset of the mixture (`--baseline-records`)
as `json.load`ed Python objects: all 10M do not fit in memory; their
worker memory grows with the subset (copy-on-write of touched objects).

What the main process pays to turn one worker's message into a batch is also measured alone: a
shipped fusion-fast batch (the records' JSON bytes, decoded in Rust) against `pickle.loads` of the
same batch as Python objects.

The first batch is timed from exec'ing a fresh `python` (best of 3), once with fusion-fast's shuffled
sampler (`DistributedMixtureSampler`: a numpy permutation handed out in slices) and once with
`shuffle=True` (torch's `RandomSampler`, which turns a permutation of every sample into a Python list
before the first batch).

fusion-fast also runs, in the same rounds, with the main process on one CPU and the workers on the
others (`os.sched_setaffinity`, a user's setting): what keeping them apart buys on this machine.

Targets (2-core machine): >= 150k samples/s with batch 64 and 2 workers; <= 3 s from a fresh
`python` to the first batch (including `import torch`); <= 100 MB private memory per worker.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import importlib.util
import json
import multiprocessing
import os
import pickle
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple
from unittest import mock

import numpy as np
from torch.utils.data import DataLoader, Dataset

from ..mixture import Mixture
from ..torch import (
    SHIP_ENV,
    FusionDataset,
    PackedBatch,
    collate,
    ships_tapes,
    worker_context,
)
from .common import (
    default_data_dir,
    machine,
    machine_markdown,
    parse_size,
    publish,
    repeat,
    run_child,
    spread,
    table,
)
from .memory import private_memory
from .mixture import FULL_RECORDS, RECORD_BYTES, prepare  # the same Stage-1-shaped data

WARMUP_BATCHES = 20

FIRST_BATCH_CHILD = r"""
import json, sys, time
started = time.perf_counter()
import torch
from torch.utils.data import DataLoader
from fusion_fast.samplers import DistributedMixtureSampler
from fusion_fast.torch import FusionDataset, collate, worker_context
imported = time.perf_counter()
dataset = FusionDataset(sys.argv[1], root=sys.argv[2])
n = len(dataset)
opened = time.perf_counter()
if sys.argv[5] == "fusion-fast":
    order = dict(sampler=DistributedMixtureSampler(n, seed=0))
else:
    order = dict(shuffle=True)
loader = DataLoader(dataset, batch_size=int(sys.argv[3]), num_workers=int(sys.argv[4]), collate_fn=collate,
                    multiprocessing_context=worker_context(), **order)
batch = next(iter(loader))
done = time.perf_counter()
print(json.dumps({"first_batch_at": time.time(), "import_s": imported - started, "open_s": opened - imported,
                  "loader_s": done - opened, "records": n, "batch": len(batch["id"])}), flush=True)
"""

WORKER_MEMORY_CHILD = r"""
import json, multiprocessing, sys
from torch.utils.data import DataLoader
from fusion_fast.benchmarks.memory import private_memory
from fusion_fast.torch import FusionDataset, collate, worker_context
dataset = FusionDataset(sys.argv[1], root=sys.argv[2])
loader = DataLoader(dataset, batch_size=int(sys.argv[3]), num_workers=int(sys.argv[4]), shuffle=True,
                    collate_fn=collate, persistent_workers=True,
                    multiprocessing_context=worker_context(sys.argv[5]))
seen = 0
for batch in loader:
    seen += len(batch["id"])
    if seen >= int(sys.argv[6]):
        break
pids = [p.pid for p in multiprocessing.active_children() if p.pid is not None]
with_cache = [private_memory(p, include_page_cache=True) for p in pids]
print(json.dumps({"samples": seen, "worker_private": [private_memory(p) for p in pids],
                  "worker_private_with_page_cache": with_cache}))
"""

#: The samplers the first batch is timed with: fusion-fast's shuffled sampler, and `shuffle=True`.
FIRST_BATCH_SAMPLERS = ("fusion-fast", "torch")


class IndexDataset(Dataset[Any]):
    """No data at all: item i is {"id": i}. The DataLoader alone, with the same settings, shows what its
    own per-batch work (sampler, index and result queues, workers) allows on this machine."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        return {"id": i}


class ListDataset(Dataset[Any]):
    """FUSION's `LazySupervisedDataset` on raw records: `list_data_dict[i]`, one item at a time."""

    def __init__(self, list_data_dict: list[Any]) -> None:
        self.list_data_dict = list_data_dict

    def __len__(self) -> int:
        return len(self.list_data_dict)

    def __getitem__(self, i: int) -> Any:
        return self.list_data_dict[i]


def subset_file(mix: Mixture, n: int, path: Path) -> Path:
    """n records spread over the mixture, as one JSON array file (what FUSION would json.load)."""
    picks = np.linspace(0, len(mix) - 1, min(n, len(mix))).astype(np.int64)
    datasets, records = mix.locate(picks)
    with open(path, "wb") as f:
        f.write(b"[")
        f.write(
            b",\n".join(
                bytes(mix.datasets[d].index.raw(r))
                for d, r in zip(datasets.tolist(), records.tolist(), strict=True)
            )
        )
        f.write(b"]\n")
    return path


def _stat_cpu(stat: Path) -> float:
    """User + system CPU seconds from a /proc `stat` file (a process's or one thread's)."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid`, all its threads (Linux /proc)."""
    return _stat_cpu(Path(f"/proc/{pid}/stat"))


#: CPU seconds by (pid, thread id).
ThreadCpu = dict[tuple[int, int], float]


def thread_cpu(pids: list[int]) -> ThreadCpu:
    """CPU seconds of every thread of these processes, by (pid, thread id)."""
    out = {}
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                out[(pid, int(task.name))] = _stat_cpu(task / "stat")
            except (FileNotFoundError, ProcessLookupError):  # the thread ended meanwhile
                pass
    return out


def cpu_by_thread(before: ThreadCpu, after: ThreadCpu) -> dict[str, float]:
    """CPU seconds spent between two `thread_cpu` snapshots, split into the main process's main thread,
    its other threads, the workers' main threads and their other threads. The other threads are torch's
    queue feeders: they pickle what `put` queued and write it to a pipe (index lists in the main
    process, batches in the workers)."""
    split = dict.fromkeys(("main_thread", "main_other", "workers_main_threads", "workers_other"), 0.0)
    for (pid, tid), seconds in after.items():
        if pid == os.getpid():
            part = "main_thread" if tid == pid else "main_other"
        else:
            part = "workers_main_threads" if tid == pid else "workers_other"
        split[part] += seconds - before.get((pid, tid), 0.0)
    return split


def machine_cpu() -> tuple[list[int], int]:
    """The machine's CPU time by state (/proc/stat's `cpu` line, in ticks) and its context switches."""
    stat = Path("/proc/stat").read_text().splitlines()
    ticks = [int(x) for x in stat[0].split()[1:]]
    switches = next(int(line.split()[1]) for line in stat if line.startswith("ctxt "))
    return ticks, switches


def idle_share(before: list[int], after: list[int]) -> float:
    """The share of the machine's CPU time that was idle, waiting on I/O or stolen by the host."""
    spent = [b - a for a, b in zip(before, after, strict=False)]
    idle, iowait = spent[3], spent[4]
    steal = spent[7] if len(spent) > 7 else 0
    return (idle + iowait + steal) / max(sum(spent[:8]), 1)


def _pin_worker(cpus: frozenset[int], worker_id: int) -> None:
    """`worker_init_fn` of the `separate_cpus` runs: the worker runs only on `cpus`."""
    os.sched_setaffinity(0, cpus)


@contextlib.contextmanager
def main_process_on(cpus: set[int]) -> Iterator[None]:
    """This process (the DataLoader's main process) runs only on `cpus` inside the block."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        with warnings.catch_warnings():
            # torch warns when num_workers exceeds the main process's CPUs: here that is the point.
            warnings.filterwarnings("ignore", message=".*suggested max number of worker.*")
            yield
    finally:
        os.sched_setaffinity(0, before)


def run_loader(
    dataset: Any,
    args: argparse.Namespace,
    workers: int,
    *,
    worker_queues: bool = True,
    separate_cpus: bool = False,
) -> dict[str, Any]:
    """samples/s after a warm-up, the CPU time per batch of the main process and of the workers (on
    two cores the two add up against one budget), and the private memory of each worker once the
    samples are done. Workers start from `worker_context` (caller-written queues, 1 MiB pipes) unless
    `worker_queues` is off: then from torch's default, the start method's own context. With
    `separate_cpus` the main process runs on the first CPU this process may use and the workers on the
    others (a user's `os.sched_setaffinity` setting, not a fusion-fast one)."""
    if separate_cpus:
        allowed = sorted(os.sched_getaffinity(0))
        main_cpu, worker_cpus = {allowed[0]}, frozenset(allowed[1:])
        pin = functools.partial(_pin_worker, worker_cpus)
        with main_process_on(main_cpu):
            return _run_loader(dataset, args, workers, worker_queues, pin)
    return _run_loader(dataset, args, workers, worker_queues, None)


def _run_loader(
    dataset: Any,
    args: argparse.Namespace,
    workers: int,
    worker_queues: bool,
    worker_init_fn: Callable[[int], None] | None,
) -> dict[str, Any]:
    context = worker_context(args.start_method) if worker_queues else args.start_method
    loader = DataLoader(
        dataset,
        batch_size=args.batch,
        shuffle=True,
        num_workers=workers,
        collate_fn=collate,
        persistent_workers=workers > 0,
        multiprocessing_context=context if workers > 0 else None,
        worker_init_fn=worker_init_fn,
    )
    batches = seen = 0
    started = main_cpu_at_start = 0.0
    worker_cpu_at_start: dict[int, float] = {}
    threads_at_start: ThreadCpu = {}
    machine_at_start: tuple[list[int], int] = ([], 0)
    while seen < args.samples:
        for batch in loader:
            batches += 1
            if batches == WARMUP_BATCHES:
                worker_cpu_at_start = {pid: cpu_seconds(pid) for pid in _worker_pids()}
                threads_at_start = thread_cpu([os.getpid(), *_worker_pids()])
                machine_at_start = machine_cpu()
                started, main_cpu_at_start = time.perf_counter(), time.process_time()
            elif batches > WARMUP_BATCHES:
                seen += len(batch["id"])
                if seen >= args.samples:
                    break
    seconds = time.perf_counter() - started
    main_cpu = time.process_time() - main_cpu_at_start
    machine_ticks, machine_switches = machine_cpu()
    counted = (batches - WARMUP_BATCHES) or 1
    pids = _worker_pids()
    workers_cpu = sum(cpu_seconds(pid) - worker_cpu_at_start.get(pid, 0.0) for pid in pids)
    by_thread = cpu_by_thread(threads_at_start, thread_cpu([os.getpid(), *pids]))
    memory = [private_memory(pid) for pid in pids]
    with_cache = [private_memory(pid, include_page_cache=True) for pid in pids]
    del loader
    return {
        "samples": seen,
        "seconds": seconds,
        "per_s": seen / seconds,
        "main_cpu_us_per_batch": main_cpu / counted * 1e6,
        "workers_cpu_us_per_batch": workers_cpu / counted * 1e6,
        "cpu_us_per_batch_by_thread": {k: v / counted * 1e6 for k, v in by_thread.items()},
        "machine_idle_share": idle_share(machine_at_start[0], machine_ticks),
        "context_switches_per_batch": (machine_switches - machine_at_start[1]) / counted,
        "worker_private": memory,
        "worker_private_with_page_cache": with_cache,
    }


def _worker_pids() -> list[int]:
    return [p.pid for p in multiprocessing.active_children() if p.pid is not None]


def hf_datasets(path: Path, cache_dir: str) -> Any:
    """Hugging Face `datasets` over the baseline subset (its Arrow cache is built first, untimed)."""
    import datasets

    return datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=cache_dir)


def first_batch(stage: Path, data: Path, args: argparse.Namespace, sampler: str) -> dict[str, Any]:
    """From exec'ing a fresh `python` to its first batch (wall clock), best of 3 (cold caches aside)."""
    runs = []
    for _ in range(3):
        spawned = time.time()
        result = run_child(
            FIRST_BATCH_CHILD, str(stage), str(data), str(args.batch), str(args.workers), sampler
        )
        result["seconds"] = result.pop("first_batch_at") - spawned
        runs.append(result)
    return min(runs, key=lambda r: r["seconds"])


def fresh_worker_memory(stage: Path, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    """fusion-fast's worker memory measured in a fresh process that holds nothing else: in this one the
    baselines' million Python records would be inherited by every forked worker, and the garbage
    collector's passes over them in the worker would copy pages of them into it."""
    return run_child(
        WORKER_MEMORY_CHILD,
        str(stage),
        str(data),
        str(args.batch),
        str(args.workers),
        args.start_method,
        str(args.samples),
    )


def main_process_decode(
    dataset: FusionDataset, args: argparse.Namespace, batches: int = 300
) -> dict[str, Any]:
    """What each side pays per batch for one worker message, measured alone (no workers, best of 5
    passes over the same random batches). The main process: fusion-fast's shipped batch (the records'
    JSON bytes, or their tapes, built in Rust straight into the collated batch), against `pickle.loads`
    of that same batch as Python objects (what a dataset of Python records, like FUSION's list, costs
    there). The worker: packing the batch (reading its records, and parsing them into tapes)."""
    rng = np.random.default_rng(0)
    positions = [rng.integers(0, len(dataset), args.batch).tolist() for _ in range(batches)]

    def best_us(fn: Callable[[], Any]) -> float:
        return repeat(fn, 5)["min"] / batches * 1e6

    out: dict[str, Any] = {}
    for mode in ("json", "tape"):
        with shipping(mode):
            shipped = [s for s in (dataset._pack_positions(p) for p in positions) if s is not None]
            assert len(shipped) == batches  # the generated stage has no bad records
            out[f"{mode}_pack_us_per_batch"] = best_us(
                lambda: [dataset._pack_positions(p) for p in positions]
            )
        messages = [pickle.dumps(PackedBatch(s), protocol=pickle.HIGHEST_PROTOCOL) for s in shipped]
        out[f"{mode}_us_per_batch"] = best_us(functools.partial(unpickle_all, messages))
        out[f"{mode}_bytes_per_batch"] = sum(map(len, messages)) / batches
    as_objects = [pickle.dumps(pickle.loads(m), protocol=pickle.HIGHEST_PROTOCOL) for m in messages]
    out["unpickle_us_per_batch"] = best_us(functools.partial(unpickle_all, as_objects))
    out["pickled_bytes_per_batch"] = sum(map(len, as_objects)) / batches
    return out


def unpickle_all(messages: list[bytes]) -> list[Any]:
    return [pickle.loads(m) for m in messages]


class Loader(NamedTuple):
    """One loader of the alternating rounds: `run_loader`'s dataset and settings (`ship`: how workers
    ship raw records, `SHIP_ENV`; None leaves fusion-fast's "auto")."""

    dataset: Any
    worker_queues: bool = True
    separate_cpus: bool = False
    ship: str | None = None


@contextlib.contextmanager
def shipping(mode: str | None) -> Iterator[None]:
    """Workers started inside the block ship raw records as `mode` ("json" or "tape"; None: "auto")."""
    with mock.patch.dict(os.environ):  # restores the environment as it was
        os.environ.pop(SHIP_ENV, None)
        if mode is not None:
            os.environ[SHIP_ENV] = mode
        yield


def rounds(loaders: dict[str, Loader], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Each loader in turn, `args.rounds` times: per loader the median rate, its range and the worker
    memory of the last round."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in loaders}
    for _ in range(args.rounds):
        for name, spec in loaders.items():
            with shipping(spec.ship):
                runs[name].append(
                    run_loader(
                        spec.dataset,
                        args,
                        args.workers,
                        worker_queues=spec.worker_queues,
                        separate_cpus=spec.separate_cpus,
                    )
                )
    out = {}
    for name, results in runs.items():
        rates = spread([r["per_s"] for r in results])
        out[name] = {
            **results[-1],
            "per_s": rates["median"],
            "per_s_min": rates["min"],
            "per_s_max": rates["max"],
            "rounds": rates["runs"],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100k records in total instead of 10M")
    ap.add_argument("--data", default=None, help="where the stage is generated / reused")
    ap.add_argument(
        "--data-dir", default=None, help="folder for --data's default (default: the cache folder)"
    )
    ap.add_argument(
        "--samples", type=int, default=None, help="samples timed per loader (200k quick, 2M full)"
    )
    ap.add_argument("--rounds", type=int, default=None, help="turns per loader (1 quick, 3 full)")
    ap.add_argument("--size", default=None, help="about this many bytes of data in all (sets the scale)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--baseline-records", type=int, default=1_000_000)
    ap.add_argument("--start-method", default="fork", choices=["fork", "spawn", "forkserver"])
    ap.add_argument("--out", default=None, help="write the raw figures here as JSON")
    args = ap.parse_args(argv)
    if args.size:
        scale = min(1.0, parse_size(args.size) / (FULL_RECORDS * RECORD_BYTES))
    else:
        scale = 0.01 if args.quick else 1.0
    args.samples = args.samples or (200_000 if args.quick else 1_000_000)
    args.rounds = args.rounds or (1 if args.quick else 3)
    data = Path(args.data or Path(args.data_dir or default_data_dir()) / f"stage-{scale:g}")
    stage, prep = prepare(data, scale)
    results: dict[str, Any] = {
        "machine": machine(),
        "scale": scale,
        "file_records": round(FULL_RECORDS * scale),
        "workers": args.workers,
        "batch": args.batch,
        "start_method": args.start_method,
        **prep,
    }

    results["first_batch"] = {name: first_batch(stage, data, args, name) for name in FIRST_BATCH_SAMPLERS}
    results["fusion_fast_worker_memory"] = fresh_worker_memory(stage, data, args)

    dataset = FusionDataset(stage, root=data)
    results["selected"] = len(dataset)
    results["main_process_decode"] = main_process_decode(dataset, args)
    subset = subset_file(dataset.mixture, args.baseline_records, data / "baseline-subset.json")
    gc.collect()
    t = time.perf_counter()
    with open(subset, encoding="utf-8") as f:
        list_data_dict = json.load(f)
    load_s = time.perf_counter() - t
    separate = len(os.sched_getaffinity(0)) >= 2  # the main process on one CPU, workers on the rest
    tapes = results["ships_tapes"] = ships_tapes(args.workers)  # what "auto" chooses here
    both = rounds(
        {
            "fusion_fast": Loader(dataset),
            "fusion_fast_other_shipping": Loader(dataset, ship="json" if tapes else "tape"),
            "fusion_fast_default_pipes": Loader(dataset, worker_queues=False),
            **({"fusion_fast_separate_cpus": Loader(dataset, separate_cpus=True)} if separate else {}),
            "list_data_dict": Loader(ListDataset(list_data_dict)),
            "dataloader_alone": Loader(IndexDataset(len(dataset))),
        },
        args,
    )
    results["fusion_fast"] = both["fusion_fast"]
    results["fusion_fast_other_shipping"] = both["fusion_fast_other_shipping"]
    results["fusion_fast_default_pipes"] = both["fusion_fast_default_pipes"]
    results["fusion_fast_separate_cpus"] = both.get("fusion_fast_separate_cpus")
    results["dataloader_alone"] = both["dataloader_alone"]
    results["list_data_dict"] = {
        "records": len(list_data_dict),
        "json_load_s": load_s,
        **both["list_data_dict"],
    }
    results["fusion_fast_in_process"] = run_loader(dataset, args, 0)
    results["fusion_fast_1_worker"] = run_loader(dataset, args, 1)
    results["list_data_dict_in_process"] = run_loader(ListDataset(list_data_dict), args, 0)
    del list_data_dict
    gc.collect()

    if importlib.util.find_spec("datasets") is not None:
        # Its Arrow cache (about as large as the subset's JSON) is removed with the folder.
        with tempfile.TemporaryDirectory(prefix="fusion-fast-bench-hf-") as cache:
            hf = hf_datasets(subset, cache)
            results["hf_datasets"] = run_loader(hf, args, args.workers)
            results["hf_datasets_in_process"] = run_loader(hf, args, 0)
            del hf
    subset.unlink()

    publish(report(results), results, args.out)
    return 0


def report(r: dict[str, Any]) -> str:
    ff, base, hf = r["fusion_fast"], r["list_data_dict"], r.get("hf_datasets")
    alone = r.get("dataloader_alone")
    default_pipes = r.get("fusion_fast_default_pipes")
    other = r.get("fusion_fast_other_shipping")
    auto_shipping, other_shipping = ("tapes", "JSON") if r.get("ships_tapes") else ("JSON", "tapes")
    separate = r.get("fusion_fast_separate_cpus")
    fresh = r["fusion_fast_worker_memory"]
    n = r["selected"]
    mib = 2**20

    def rate(x: dict[str, Any] | None) -> str:
        if not x:
            return "not installed"
        if x.get("rounds", 1) > 1:
            return f"{x['per_s']:,.0f} ({x['per_s_min']:,.0f}-{x['per_s_max']:,.0f})"
        return f"{x['per_s']:,.0f}"

    def cpu(x: dict[str, Any] | None) -> str:
        if not x or "main_cpu_us_per_batch" not in x:
            return "-"
        return f"{x['main_cpu_us_per_batch']:.0f} / {x['workers_cpu_us_per_batch']:.0f} us"

    def threads(x: dict[str, Any] | None) -> str:
        if not x or "cpu_us_per_batch_by_thread" not in x:
            return "-"
        t = x["cpu_us_per_batch_by_thread"]
        return (
            f"{t['main_thread']:.0f} + {t['main_other']:.0f} / {t['workers_main_threads']:.0f} + "
            f"{t['workers_other']:.0f} us; machine idle {x['machine_idle_share']:.0%}; "
            f"{x['context_switches_per_batch']:.1f} context switches per batch"
        )

    def memory(x: dict[str, Any] | None, key: str = "worker_private") -> str:
        if not x:
            return "-"
        return " / ".join(f"{m / mib:.0f}" for m in x[key]) + " MiB"

    def first(fb: dict[str, Any]) -> str:
        return (
            f"{fb['seconds']:.2f} s (import {fb['import_s']:.2f} s, open {fb['open_s'] * 1e3:.0f} ms, "
            f"loader {fb['loader_s']:.2f} s)"
        )

    fb = r["first_batch"]
    dec = r["main_process_decode"]
    per_record_load = base["json_load_s"] / base["records"]
    rows = [
        [
            f"samples/s (batch {r['batch']}, {r['workers']} workers, shuffled; median (range) of "
            f"{ff.get('rounds', 1)} alternating rounds)",
            rate(ff),
            rate(base),
            rate(hf),
            ">= 150k",
        ],
        [
            "fusion-fast's rate / this one (medians)",
            "-",
            f"{ff['per_s'] / base['per_s']:.2f}x",
            f"{ff['per_s'] / hf['per_s']:.2f}x" if hf else "-",
            "",
        ],
        [
            f"CPU time per batch: main process / all workers ({r['machine']['cores']} CPUs: 1 s of CPU per s "
            "each)",
            cpu(ff),
            cpu(base),
            cpu(hf),
            "",
        ],
        [
            "same, by thread (last round): main process's main thread + its other threads (torch's queue "
            "feeders) / workers' main threads + their other threads",
            threads(ff),
            threads(base),
            threads(hf),
            "",
        ],
        [
            f'fusion-fast, same rounds, workers shipping {other_shipping} (the default, "auto", ships '
            f"{auto_shipping} here)",
            f"{rate(other)}; CPU per batch {cpu(other)}; by thread {threads(other)}",
            "",
            "",
            "",
        ],
        [
            "fusion-fast, same rounds, workers from torch's default context (feeder threads, 64 KiB pipes)",
            f"{rate(default_pipes)}; CPU per batch {cpu(default_pipes)}; by thread {threads(default_pipes)}",
            "",
            "",
            "",
        ],
        [
            "fusion-fast, same rounds, the main process on one CPU and the workers on the others "
            "(`os.sched_setaffinity` in the main process and in `worker_init_fn`: a user's setting)",
            f"{rate(separate)}; CPU per batch {cpu(separate)}; by thread {threads(separate)}"
            if separate
            else "one CPU only: not run",
            "",
            "",
            "",
        ],
        [
            "the DataLoader alone, same settings, items {'id': i} (its own per-batch work: sampler, "
            "queues, workers), same rounds",
            f"{rate(alone)}; CPU per batch {cpu(alone)}; by thread {threads(alone)}",
            "",
            "",
            "",
        ],
        [
            "samples/s, same but without workers (num_workers=0)",
            rate(r["fusion_fast_in_process"]),
            rate(r["list_data_dict_in_process"]),
            rate(r.get("hf_datasets_in_process")),
            "",
        ],
        ["samples/s, fusion-fast with 1 worker", rate(r.get("fusion_fast_1_worker")), "", "", ""],
        [
            "main process, one batch from a worker's message, measured alone (best of 5 passes over 300 "
            "batches): fusion-fast builds it from the records' JSON bytes / from their tapes; the list's "
            "column is `pickle.loads` of that same batch as Python objects",
            f"{dec['json_us_per_batch']:.0f} us ({dec['json_bytes_per_batch'] / 1024:.0f} KiB) / "
            f"{dec['tape_us_per_batch']:.0f} us ({dec['tape_bytes_per_batch'] / 1024:.0f} KiB)",
            f"{dec['unpickle_us_per_batch']:.0f} us ({dec['pickled_bytes_per_batch'] / 1024:.0f} KiB)",
            "",
            "",
        ],
        [
            "worker, packing one batch, measured alone: JSON bytes / tapes",
            f"{dec['json_pack_us_per_batch']:.0f} us / {dec['tape_pack_us_per_batch']:.0f} us",
            "",
            "",
            "",
        ],
        [
            f"private memory per worker ({r['start_method']}, after the samples; fusion-fast's in a fresh "
            "process running only it)",
            memory(fresh),
            memory(base),
            memory(hf),
            "<= 100 MB",
        ],
        [
            "same, counting the data files' page cache that the worker alone has mapped (shared and "
            "reclaimable, not the worker's own)",
            *(memory(x, "worker_private_with_page_cache") for x in (fresh, base, hf)),
            "",
        ],
        [
            "fusion-fast's workers in this benchmark's process (which also holds the baselines' records)",
            memory(ff),
            "",
            "",
            "",
        ],
        [
            "fresh `python` -> first batch, fusion-fast's shuffled sampler (incl. import torch)",
            first(fb["fusion-fast"]),
            f"{per_record_load * n:.0f} s json.load extrapolated ({per_record_load * 1e6:.1f} us/record, "
            f"measured {base['json_load_s']:.1f} s on {base['records']:,})",
            "-",
            "<= 3 s",
        ],
        [
            "fresh `python` -> first batch, `shuffle=True` (torch's RandomSampler)",
            first(fb["torch"]),
            "",
            "-",
            "",
        ],
    ]
    head = (
        f"DataLoader over raw records. Stage: 9 files, {r['file_records']:,} records, {n:,} selected; "
        f"baselines over {base['records']:,} of them as Python objects. {machine_markdown(r['machine'])}"
    )
    return (
        head
        + "\n\n"
        + table(["measurement", "fusion-fast", "FUSION list_data_dict", "HF datasets", "target"], rows)
    )


if __name__ == "__main__":
    raise SystemExit(main())
