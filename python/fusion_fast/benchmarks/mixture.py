"""Mixtures: resolving a FUSION Stage-1-shaped YAML, lengths, length-grouped ordering, memory, export.

    python -m fusion_fast.benchmarks.mixture [--quick] [--data DIR] [--repeat 5] [--no-export] [--out F.json]

The stage has 9 files shaped like FUSION's Stage 1 (10M records in total; `--quick`: 100k), generated once
into `--data` (reused when present) from a pool of pre-encoded synthetic records with fresh ids, and
indexed before anything is timed. Targets: resolve <= 300 ms; `lengths` / `modality_lengths`
<= 50 ms each; `LengthGroupedSampler` order of 10M samples <= 2 s; <= 16 bytes of private memory per
selected record. The baseline is FUSION's `lengths` + `modality_lengths` loops over `json.load`ed records,
run in the same process on a subset (at most `--baseline-records`) and extrapolated per record.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import synth
from ..index import open as open_index
from ..mixture import Mixture
from ..samplers import DistributedMixtureSampler, LengthGroupedSampler, epoch_rng
from .common import (
    default_data_dir,
    fmt_time,
    fusion_lengths,
    fusion_modality_lengths,
    machine,
    machine_markdown,
    parse_size,
    publish,
    repeat,
    run_child,
    table,
)

#: (file, records at full size, strategy): FUSION Stage 1's mix of captioning sources, 10M records.
STAGE1 = (
    ("LLaVA-Pretrain-558k.json", 558_000, "all"),
    ("ALLaVA-Caption-VFLAN-4V-195k.json", 195_000, "all"),
    ("ALLaVA-Caption-LAION-4V-469k.json", 469_000, "all"),
    ("ShareGPT4V-PT-1246k.json", 1_246_000, "all"),
    ("PixelProse-5500k.json", 5_500_000, "random:90%"),
    ("SynthColor-244k.json", 244_000, "all"),
    ("SynthCount-300k.json", 300_000, "first:50%"),
    ("SynthScene-268k.json", 268_000, "end:80%"),
    ("SynthText-1220k.jsonl", 1_220_000, "random:75%"),
)
FULL_RECORDS = sum(n for _, n, _ in STAGE1)
POOL = 4096
MEAN_WORDS = 25
#: Bytes per generated record, on average (measured on the generated stage): turns --size into a scale.
RECORD_BYTES = 505
#: (world size, per-device batch size) orderings to time; FUSION trains on 4 nodes x 8 GPUs.
SAMPLER_SHAPES = ((8, 16), (32, 8))

MEMORY_CHILD = r"""
import gc, json, sys, time
def private():
    out = {}
    for line in open("/proc/self/smaps_rollup"):
        key, _, rest = line.partition(":")
        if key in ("Private_Clean", "Private_Dirty", "Anonymous"):
            out[key] = int(rest.split()[0]) * 1024
    return out
from fusion_fast import Mixture
Mixture([sys.argv[3]])  # warm-up: lazily imported modules, allocator pools
gc.collect()
before = private()
t = time.perf_counter()
mix = Mixture.from_yaml(sys.argv[1], root=sys.argv[2], rebuild="never")
seconds = time.perf_counter() - t
gc.collect()
after = private()
print(json.dumps({"records": len(mix), "seconds": seconds, **{k: after[k] - before[k] for k in after}}))
"""


def encoded_pool(seed: int) -> list[tuple[bytes, bytes]]:
    """(id prefix, the record's JSON after its id) for a pool of synthetic records."""
    rng = random.Random(seed)
    pool = []
    for k in range(POOL):
        rec = synth.make_record(rng, k, mean_words=MEAN_WORDS)
        prefix = rec.pop("id").rsplit("-", 1)[0]
        body = json.dumps(rec, ensure_ascii=False).encode()
        pool.append((prefix.encode(), b", " + body[1:]))
    return pool


def write_data(path: Path, records: int, seed: int) -> None:
    """`records` records as a .json array (one per line) or .jsonl, each a pool record with a fresh id."""
    pool = encoded_pool(seed)
    lines = path.suffix == ".jsonl"
    sep = b"\n" if lines else b",\n"
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        if not lines:
            f.write(b"[\n")
        for lo in range(0, records, 65536):
            hi = min(records, lo + 65536)
            parts = []
            for i in range(lo, hi):
                prefix, body = pool[i % POOL]
                parts.append(b'{"id": "%s-%09d"%s' % (prefix, i, body))
            f.write(sep.join(parts))
            f.write(sep if hi < records else (b"\n" if lines else b""))
        if not lines:
            f.write(b"\n]\n")
    os.replace(tmp, path)


def prepare(data: Path, scale: float) -> tuple[Path, dict[str, Any]]:
    """Generate (unless present) and index the stage; returns the YAML and what it took."""
    jsons = data / "jsons"
    jsons.mkdir(parents=True, exist_ok=True)
    entries, generated, built = [], 0.0, 0.0
    size = 0
    for k, (name, full, strategy) in enumerate(STAGE1):
        n = max(1, round(full * scale))
        path = jsons / name
        marker = jsons / f"{name}.records"
        if not (path.is_file() and marker.is_file() and marker.read_text() == str(n)):
            t = time.perf_counter()
            write_data(path, n, seed=k)
            marker.write_text(str(n))
            generated += time.perf_counter() - t
        t = time.perf_counter()
        idx = open_index(path)
        built += time.perf_counter() - t if idx.built else 0.0
        assert len(idx) == n, (path, len(idx), n)
        size += path.stat().st_size
        entries.append(f'  - json_path: jsons/{name}\n    sampling_strategy: "{strategy}"\n')
    stage = data / "stage1.yaml"
    stage.write_text("datasets:\n" + "".join(entries), encoding="utf-8")
    tiny = data / "tiny.jsonl"
    if not tiny.is_file():
        synth.write_file(tiny, records=4)
    open_index(tiny)
    return stage, {"generate_s": generated, "index_build_s": built, "data_bytes": size}


def baseline(mix: Mixture, subset: int, workdir: Path) -> dict[str, Any]:
    """FUSION's path on `subset` records of the mixture: json.load of a file holding them, then its loops."""
    n = min(subset, len(mix))
    picks = np.linspace(0, len(mix) - 1, n).astype(np.int64)
    path = workdir / "baseline-subset.json"
    with open(path, "wb") as f:
        f.write(b"[")
        ds, recs = mix.locate(picks)
        f.write(
            b",".join(
                bytes(mix.datasets[d].index.raw(r)) for d, r in zip(ds.tolist(), recs.tolist(), strict=True)
            )
        )
        f.write(b"]")
    t = time.perf_counter()
    with open(path, encoding="utf-8") as f:
        list_data_dict = json.load(f)
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    lengths = fusion_lengths(list_data_dict)
    lengths_s = time.perf_counter() - t
    t = time.perf_counter()
    modality = fusion_modality_lengths(list_data_dict)
    modality_s = time.perf_counter() - t
    assert lengths == mix.lengths[picks].tolist() and modality == mix.modality_lengths[picks].tolist()
    path.unlink()
    return {"records": n, "json_load_s": load_s, "lengths_s": lengths_s, "modality_lengths_s": modality_s}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100k records in total instead of 10M")
    ap.add_argument("--scale", type=float, default=None, help="records as a share of the full 10M")
    ap.add_argument("--size", default=None, help="about this many bytes of data in all (sets --scale)")
    ap.add_argument("--data", default=None, help="where the stage is generated / reused")
    ap.add_argument(
        "--data-dir", default=None, help="folder for --data's default (default: the cache folder)"
    )
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--baseline-records", type=int, default=200_000)
    ap.add_argument("--sampler-samples", type=int, default=None, help="default: 10M x scale")
    ap.add_argument("--no-export", action="store_true", help="skip timing the JSONL export")
    ap.add_argument("--out", default=None, help="write the raw figures here as JSON")
    args = ap.parse_args(argv)

    if args.size:
        scale = min(1.0, parse_size(args.size) / (FULL_RECORDS * RECORD_BYTES))
    else:
        scale = args.scale or (0.01 if args.quick else 1.0)
    data = Path(args.data or Path(args.data_dir or default_data_dir()) / f"stage-{scale:g}")
    stage, prep = prepare(data, scale)
    results: dict[str, Any] = {
        "machine": machine(),
        "scale": scale,
        "file_records": round(FULL_RECORDS * scale),
        **prep,
    }

    mix = Mixture.from_yaml(stage, root=data)
    results["selected"] = len(mix)
    results["resolve"] = repeat(lambda: Mixture.from_yaml(stage, root=data), args.repeat)
    results["lengths"] = repeat(lambda: mix.lengths, args.repeat)
    results["modality_lengths"] = repeat(lambda: mix.modality_lengths, args.repeat)
    results["baseline"] = baseline(mix, args.baseline_records, data)

    n_sampler = args.sampler_samples or round(10_000_000 * scale)
    lengths = np.resize(mix.modality_lengths, n_sampler)  # the mixture's own lengths, repeated to size
    results["sampler_samples"] = n_sampler
    results["sampler"] = {}
    for world, batch in SAMPLER_SHAPES:
        sampler = LengthGroupedSampler(lengths, batch_size=batch, world_size=world, seed=0)
        results["sampler"][f"{world}x{batch}"] = repeat(sampler.order, max(1, args.repeat // 2))

    # The shuffle behind DistributedMixtureSampler: numpy's permutation, drawn by numpy or in Rust.
    shuffled = DistributedMixtureSampler(n_sampler, seed=0)
    if not np.array_equal(shuffled.order(), epoch_rng("distributed", 0, 0).permutation(n_sampler)):
        raise AssertionError("the sampler's order is not numpy's permutation")
    results["distributed_order"] = {
        "fusion_fast": repeat(shuffled.order, args.repeat),
        "numpy": repeat(lambda: epoch_rng("distributed", 0, 0).permutation(n_sampler), args.repeat),
    }

    blob = pickle.dumps(mix)
    results["pickle_bytes"] = len(blob)
    results["unpickle"] = repeat(lambda: pickle.loads(blob), args.repeat)
    results["memory"] = run_child(MEMORY_CHILD, str(stage), str(data), str(data / "tiny.jsonl"))

    if not args.no_export:
        results["export"] = export_vs_copy(mix, data, max(1, args.repeat // 2))

    publish(report(results), results, args.out)
    return 0


def export_vs_copy(mix: Mixture, data: Path, rounds: int) -> dict[str, Any]:
    """`export_jsonl` (compact JSON Lines) against a plain copy of the stage's data files into one file,
    in alternating rounds; rates are of the bytes read (the selected records, or the files)."""
    out = data / "export.jsonl"
    selected = sum(int(d.column("length").sum()) for d in mix.datasets)
    files = sum(d.path.stat().st_size for d in mix.datasets)
    export, copy = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        written = mix.export_jsonl(out)
        export.append(time.perf_counter() - t)
        t = time.perf_counter()
        with open(out, "wb") as f:
            for d in mix.datasets:
                with open(d.path, "rb") as src:
                    shutil.copyfileobj(src, f, 1 << 20)
        copy.append(time.perf_counter() - t)
    out.unlink()
    return {
        "seconds": min(export),
        "bytes": written,
        "input_bytes": selected,
        "copy_seconds": min(copy),
        "copy_bytes": files,
    }


def report(r: dict[str, Any]) -> str:
    n = r["selected"]
    base = r["baseline"]
    per_record = (base["lengths_s"] + base["modality_lengths_s"]) / base["records"]
    ours = r["lengths"]["median"] + r["modality_lengths"]["median"]
    mem = r["memory"]
    private = mem["Private_Clean"] + mem["Private_Dirty"]
    rows = [
        [
            "resolve stage YAML -> Mixture (9 files, random strategies)",
            fmt_time(r["resolve"]),
            "-",
            "<= 300 ms",
        ],
        ["  same, first resolve in a fresh process", f"{mem['seconds'] * 1e3:.1f} ms", "-", ""],
        ["`mix.lengths`", fmt_time(r["lengths"]), "-", "<= 50 ms"],
        ["`mix.modality_lengths`", fmt_time(r["modality_lengths"]), "-", "<= 50 ms"],
        [
            "both, vs FUSION's loops over json.load'ed records",
            f"{ours * 1e3:.1f} ms",
            f"{per_record * n:.2f} s extrapolated ({per_record * 1e9:.0f} ns/record; measured "
            f"{base['lengths_s'] + base['modality_lengths_s']:.2f} s on {base['records']:,} records, "
            f"json.load of them {base['json_load_s']:.2f} s more)",
            f"{per_record * n / ours:,.0f}x faster",
        ],
    ]
    for shape, timing in r["sampler"].items():
        world, batch = shape.split("x")
        rows.append(
            [
                f"LengthGroupedSampler, {r['sampler_samples']:,} samples, {world} ranks x batch {batch}",
                fmt_time(timing),
                "-",
                "<= 2 s",
            ]
        )
    if "distributed_order" in r:
        order = r["distributed_order"]
        rows.append(
            [
                f"DistributedMixtureSampler's order, {r['sampler_samples']:,} samples (numpy's permutation, "
                "drawn in Rust) vs numpy drawing the same array",
                fmt_time(order["fusion_fast"]),
                fmt_time(order["numpy"]),
                f"{order['numpy']['median'] / order['fusion_fast']['median']:.1f}x faster",
            ]
        )
    rows += [
        [
            "private memory of the resolved mixture per selected record",
            f"{private / n:.2f} B ({private / 2**20:.1f} MiB; anonymous {mem['Anonymous'] / n:.2f} B)",
            "-",
            "<= 16 B",
        ],
        ["pickled mixture (sent to each spawn worker)", f"{r['pickle_bytes']:,} B", "-", ""],
        ["unpickle (re-resolve in the worker)", fmt_time(r["unpickle"]), "-", ""],
    ]
    if "export" in r:
        e = r["export"]
        rows.append(
            [
                "export compact JSONL (`mix --export`) vs copying the data files",
                f"{e.get('input_bytes', e['bytes']) / e['seconds'] / 2**20:.0f} MiB/s read "
                f"({e['bytes'] / 2**20:.0f} MiB written in {e['seconds']:.2f} s)",
                f"{e['copy_bytes'] / e['copy_seconds'] / 2**20:.0f} MiB/s" if "copy_seconds" in e else "-",
                "",
            ]
        )
    head = (
        f"Stage: 9 files, {r['file_records']:,} records ({r['data_bytes'] / 2**30:.2f} GiB), "
        f"{n:,} selected. {machine_markdown(r['machine'])}"
    )
    return (
        head + "\n\n" + table(["measurement", "fusion-fast", "baseline (same run)", "target / ratio"], rows)
    )


if __name__ == "__main__":
    raise SystemExit(main())
