"""Index build, open latency and random access, against the physical floor and the usual JSON loaders.

    python -m fusion_fast.benchmarks.index [--size 1GiB] [--data-dir DIR] [--repeat 3] [--out results.json]

Targets (2-core machine, page-cached): build ≤ 2× the time of reading the file; open ≤ 1 ms;
`idx[i]` at least as fast as `orjson.loads` on pre-split bytes and `get_many` faster; peak memory while
indexing ≤ 64 MiB + 24 B per record beyond the mapped file.
"""

from __future__ import annotations

import argparse
import functools
import random
import time
from pathlib import Path
from typing import Any

from .. import index as ff
from .. import synth
from .common import (
    PEAK_RSS,
    default_data_dir,
    fmt_time,
    machine,
    machine_markdown,
    parse_size,
    peer_available,
    publish,
    repeat,
    run_child,
    spread,
    table,
)


def ensure_data(folder: Path, size: int) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    label = f"{size >> 20}MiB" if size % (1 << 20) == 0 else f"{size}B"
    files = {"json": folder / f"llava-{label}.json", "jsonl": folder / f"llava-{label}.jsonl"}
    for kind, path in files.items():
        if not path.exists():
            tmp = path.with_name(path.name + ".part" + path.suffix)
            synth.write_file(tmp, size=size, seed=7, indent=4 if kind == "json" else None)
            tmp.rename(path)
    return files


def read_floor(path: Path) -> tuple[float, float]:
    """(streaming read in 1 MiB pieces, reading the whole file into one buffer), seconds."""
    buf = memoryview(bytearray(1 << 20))
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
    stream = time.perf_counter() - t
    t = time.perf_counter()
    with open(path, "rb") as f:
        data = f.read()
    whole = time.perf_counter() - t
    del data
    return stream, whole


BUILD_MEMORY = """
import sys, json, time
from fusion_fast.benchmarks.common import MemorySampler
import fusion_fast as ff
with MemorySampler() as m:
    t = time.perf_counter()
    idx = ff.open({path!r}, rebuild="always", index_dir={index_dir!r})
    s = time.perf_counter() - t
print(json.dumps({{"seconds": s, "anon_growth": m.growth, "records": len(idx)}}))
"""

# name -> (module that must be importable, code for a .json array, code for .jsonl); P is the path.
LINES = "with open(P, 'rb') as f: v = [{parse}(line) for line in f if line.strip()]"
COMPETITORS = {
    "json.load": (
        "json",
        "import json\nwith open(P, 'rb') as f: v = json.load(f)",
        "import json\n" + LINES.format(parse="json.loads"),
    ),
    "orjson.loads": (
        "orjson",
        "import orjson\nwith open(P, 'rb') as f: v = orjson.loads(f.read())",
        "import orjson\n" + LINES.format(parse="orjson.loads"),
    ),
    "msgspec.json.decode": (
        "msgspec",
        "import msgspec\nwith open(P, 'rb') as f: v = msgspec.json.decode(f.read())",
        "import msgspec\nwith open(P, 'rb') as f: v = msgspec.json.Decoder().decode_lines(f.read())",
    ),
    # A lazy parse of the whole array; for JSON Lines a parser document cannot outlive the next parse,
    # so each line is fully converted (`simdjson.loads`).
    "pysimdjson": (
        "simdjson",
        "import simdjson\nwith open(P, 'rb') as f: v = simdjson.Parser().parse(f.read())",
        "import simdjson\n" + LINES.format(parse="simdjson.loads"),
    ),
    "polars.read_ndjson": ("polars", None, "import polars as pl\nv = pl.read_ndjson(P)"),
    "datasets.load_dataset": (
        "datasets",
        None,
        "import datasets, tempfile\n"
        "v = datasets.load_dataset('json', data_files=P, split='train', cache_dir=tempfile.mkdtemp())",
    ),
    # Megatron-Energon's JSONL index preparation (offsets of every line; writes P.idx next to the file).
    "Megatron-Energon JSONL prepare": (
        "megatron.energon",
        None,
        "from megatron.energon.flavors.jsonl.jsonl_prepare import JsonlPreparator\n"
        "n = JsonlPreparator.prepare_dataset(P)",
    ),
}

# Random access in Hugging Face `datasets` (after its Arrow cache is built, which is not timed).
DATASETS_RANDOM = """
import importlib.util, json, random, sys, tempfile, time
if importlib.util.find_spec("datasets") is None: print(json.dumps({"skipped": True})); sys.exit()
import datasets
ds = datasets.load_dataset("json", data_files=P, split="train", cache_dir=tempfile.mkdtemp())
rng = random.Random(1); picks = [rng.randrange(len(ds)) for _ in range(N)]
t = time.perf_counter()
for i in picks: ds[i]
print(json.dumps({"per_s": N / (time.perf_counter() - t)}))
"""


def competitor(name: str, path: Path, kind: str) -> dict | None:
    module, array_body, lines_body = COMPETITORS[name]
    body = array_body if kind == "json" else lines_body
    if not peer_available(module):
        return None
    code = (
        f"import json, time\n"
        f"P = {str(path)!r}\nt = time.perf_counter()\n{body}\ns = time.perf_counter() - t\n"
        f"{PEAK_RSS}\nprint(json.dumps({{'seconds': s, 'peak_rss': peak_rss}}))"
    )
    r = run_child(code)
    return None if r.get("skipped") else r


def random_access(idx: ff.JsonIndex, n: int, rounds: int) -> dict[str, Any]:
    """Records per second at random indices, each record decoded and then dropped, as a training step
    uses a record and lets it go (keeping every record alive instead makes the cyclic garbage collector's
    passes over them the larger cost, on both sides). The first pass also pays for mapping each page of
    the data file into this process (a page fault per 4 KiB, once per page); later passes, as in every
    epoch after the first, do not.

    orjson gets the same records from the whole file pre-split into bytes objects, one per record in file
    order (what `f.read().splitlines()` gives), so both sides reach records scattered in memory in the
    same random order. (Bytes objects made in the order of the picks would lie in memory in the order
    they are read, which the CPU's prefetcher rewards: orjson ran 1.16x faster that way on 256 MiB.)
    `get_many` runs in batches of 64 (a DataLoader batch) and of 1024; holding 1024 records at once costs
    cache misses that a batch of 64 mostly avoids, so the 1024 batches are also compared with orjson
    building the same lists. `idx[i]`, `get_many` and orjson take turns for `rounds` rounds (the
    machine's speed wanders; each gets the same conditions): the median rate, and each one's range
    under "range"."""
    rng = random.Random(1)
    picks = [rng.randrange(len(idx)) for _ in range(n)]
    has_orjson = peer_available("orjson")
    pre_split = [bytes(idx.raw(i)) for i in range(len(idx))] if has_orjson else []

    def one_by_one() -> None:
        for i in picks:
            idx[i]

    def batches(size: int) -> Any:
        def run() -> None:
            for k in range(0, n, size):
                idx.get_many(picks[k : k + size])

        return run

    def orjson_loads() -> None:
        import orjson

        loads = orjson.loads
        for i in picks:
            loads(pre_split[i])

    def orjson_batches() -> None:  # the lists get_many returns, built with orjson
        import orjson

        loads = orjson.loads
        for k in range(0, n, 1024):
            [loads(pre_split[i]) for i in picks[k : k + 1024]]

    def rate(fn: Any) -> float:
        t = time.perf_counter()
        fn()
        return n / (time.perf_counter() - t)

    out: dict[str, Any] = {"idx[i], first touch": rate(one_by_one), "range": {}}
    contenders = {
        "idx[i]": one_by_one,
        "get_many (64)": batches(64),
        "get_many (1024)": batches(1024),
    }
    if has_orjson:
        contenders["orjson.loads (pre-split bytes)"] = orjson_loads
        contenders["orjson.loads, lists of 1024"] = orjson_batches
    runs: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            runs[name].append(rate(fn))
    for name, rates in runs.items():
        summary = spread(rates)
        out[name] = summary["median"]
        out["range"][name] = (summary["min"], summary["max"])
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default=None, help="size of each generated file (1GiB; --quick: 32MiB)")
    ap.add_argument(
        "--quick", action="store_true", help="32 MiB unless --size says otherwise, one repetition"
    )
    ap.add_argument("--data-dir", default=str(default_data_dir()))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-competitors", action="store_true")
    ap.add_argument("--out", default=None, help="write every raw figure to this JSON file")
    args = ap.parse_args(argv)
    size = parse_size(args.size or ("32MiB" if args.quick else "1GiB"))
    reps = 1 if args.quick else args.repeat
    data_dir = Path(args.data_dir)
    files = ensure_data(data_dir, size)
    index_dir = str(data_dir / "indexes")
    results: dict = {"machine": machine(), "size_bytes": size, "files": {}}
    for kind, path in files.items():
        r: dict = {"path": str(path), "bytes": path.stat().st_size}
        path.read_bytes()  # page cache
        floors = [read_floor(path) for _ in range(reps)]
        r["read_stream_s"] = min(f[0] for f in floors)
        r["read_whole_s"] = min(f[1] for f in floors)
        for threads in (2, 1):
            build = functools.partial(ff.open, path, rebuild="always", threads=threads, index_dir=index_dir)
            r[f"build_{threads}t"] = repeat(build, reps)
        idx = ff.open(path, index_dir=index_dir)
        r["records"] = len(idx)
        mem = run_child(BUILD_MEMORY.format(path=str(path), index_dir=index_dir))
        r["build_anon_growth"] = mem["anon_growth"]
        r["memory_budget"] = 64 * 2**20 + 24 * len(idx)
        r["open"] = repeat(functools.partial(ff.open, path, index_dir=index_dir, rebuild="never"), 200)
        r["random_access_per_s"] = random_access(idx, 20000 if args.quick else 200000, 1 if args.quick else 5)
        if not args.no_competitors:
            names = ["json.load", "orjson.loads", "msgspec.json.decode", "pysimdjson"]
            names += (
                ["polars.read_ndjson", "datasets.load_dataset", "Megatron-Energon JSONL prepare"]
                if kind == "jsonl"
                else []
            )
            r["competitors"] = {n: competitor(n, path, kind) for n in names}
            if kind == "jsonl":
                n = 2000 if args.quick else 20000
                dr = (
                    run_child(f"P = {str(path)!r}; N = {n}\n" + DATASETS_RANDOM)
                    if peer_available("datasets")
                    else {"skipped": True}
                )
                r["random_access_per_s"]["datasets ds[i]"] = None if dr.get("skipped") else dr["per_s"]
        results["files"][kind] = r
    publish(render(results), results, args.out)


def render(results: dict) -> str:
    out = [
        f"### Index build, open and random access ({results['size_bytes'] / 2**30:.2f} GiB files)",
        "",
        machine_markdown(results["machine"]),
        "",
    ]
    rows = []
    for kind, r in results["files"].items():
        b = r["bytes"]
        build = r["build_2t"]["median"]
        rows.append(
            [
                f"{kind}: fusion-fast build, 2 threads",
                fmt_time(r["build_2t"]),
                f"{b / build / 1e9:.2f}",
                f"{build / r['read_stream_s']:.1f}× / {build / r['read_whole_s']:.2f}×",
                f"{r['build_anon_growth'] / 2**20:.0f} MiB (budget {r['memory_budget'] / 2**20:.0f})",
            ]
        )
        rows.append(
            [
                f"{kind}: fusion-fast build, 1 thread",
                fmt_time(r["build_1t"]),
                f"{b / r['build_1t']['median'] / 1e9:.2f}",
                "",
                "",
            ]
        )
        rows.append(
            [
                f"{kind}: read file, 1 MiB pieces (floor)",
                f"{r['read_stream_s'] * 1e3:.0f} ms",
                f"{b / r['read_stream_s'] / 1e9:.2f}",
                "1×",
                "",
            ]
        )
        rows.append(
            [
                f"{kind}: read whole file into memory",
                f"{r['read_whole_s'] * 1e3:.0f} ms",
                f"{b / r['read_whole_s'] / 1e9:.2f}",
                "",
                "",
            ]
        )
        for name, c in (r.get("competitors") or {}).items():
            if c is None:
                rows.append([f"{kind}: {name}", "skipped (not installed)", "", "", ""])
            else:
                rows.append(
                    [
                        f"{kind}: {name}",
                        f"{c['seconds']:.2f} s",
                        f"{b / c['seconds'] / 1e9:.2f}",
                        f"{c['seconds'] / build:.1f}× the fusion-fast build time",
                        f"{c['peak_rss'] / 2**20:.0f} MiB peak RSS",
                    ]
                )
    out.append(
        table(["work", "time (median, min–max)", "GB/s", "vs read floor (stream / whole)", "memory"], rows)
    )
    out.append("")
    columns = {
        "idx[i], first touch": "idx[i], first touch of each page",
        "idx[i]": "idx[i]",
        "get_many (64)": "get_many (batches of 64)",
        "get_many (1024)": "get_many (batches of 1024)",
        "orjson.loads (pre-split bytes)": "orjson.loads on pre-split bytes",
        "orjson.loads, lists of 1024": "orjson.loads, lists of 1024",
        "datasets ds[i]": "datasets ds[i]",
    }
    rows = []
    for kind, r in results["files"].items():
        ra = r["random_access_per_s"]
        cells = [random_access_cell(ra, k) for k in columns]
        orjson = ra.get("orjson.loads (pre-split bytes)")
        ratios = (
            f"{ra['idx[i]'] / orjson:.2f}× / {ra['get_many (64)'] / orjson:.2f}× / "
            f"{ra['get_many (1024)'] / ra['orjson.loads, lists of 1024']:.2f}×"
            if orjson
            else "- (orjson not installed)"
        )
        rows.append([kind, f"{r['records']:,}", fmt_time(r["open"]), *cells, ratios])
    ratio = "vs orjson: idx[i] / get_many (64) / get_many (1024) vs orjson's lists"
    headers = ["file", "records", "open existing index", *columns.values(), ratio]
    out.append(table(headers, rows))
    return "\n".join(out)


def random_access_cell(ra: dict[str, Any], key: str) -> str:
    """A rate, with its range over the rounds when there were several."""
    if ra.get(key) is None:
        return "-"
    low, high = ra.get("range", {}).get(key, (ra[key], ra[key]))
    spread = f" ({low / 1e3:,.0f}k–{high / 1e3:,.0f}k)" if high > low else ""
    return f"{ra[key]:,.0f}/s{spread}"


if __name__ == "__main__":
    main()
