"""How the index build scales: with 1 and 2 threads, and with the file size (the cost must grow
linearly, so GB/s stays flat from 0.25 to 4 GiB).

    python -m fusion_fast.benchmarks.scaling [--sizes 0.25GiB,1GiB,4GiB | --size S] [--data-dir D] [--out F]
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from .. import index as ff
from .common import default_data_dir, fmt_time, machine, machine_markdown, parse_size, publish, repeat, table
from .index import ensure_data, read_floor


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=None, help="comma-separated file sizes (default: 0.25GiB,1GiB,4GiB)")
    ap.add_argument("--size", default=None, help="the largest file: sizes are a quarter, half and all of it")
    ap.add_argument("--quick", action="store_true", help="8, 16 and 32 MiB (unless --size or --sizes)")
    ap.add_argument("--data-dir", default=str(default_data_dir()))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.sizes:
        sizes = [parse_size(s) for s in args.sizes.split(",")]
    elif args.size or args.quick:
        top = parse_size(args.size or "32MiB")
        sizes = [top // 4, top // 2, top]
    else:
        sizes = [parse_size(s) for s in ("0.25GiB", "1GiB", "4GiB")]
    reps = 1 if args.quick else args.repeat
    data_dir = Path(args.data_dir)
    index_dir = str(data_dir / "indexes")
    results: dict = {"machine": machine(), "runs": []}
    for size in sizes:
        for kind, path in ensure_data(data_dir, size).items():
            path.read_bytes()
            stream, _ = read_floor(path)
            row = {"kind": kind, "bytes": path.stat().st_size, "read_stream_s": stream}
            for threads in (1, 2):
                build = functools.partial(
                    ff.open, path, rebuild="always", threads=threads, index_dir=index_dir
                )
                row[f"build_{threads}t"] = repeat(build, reps)
            results["runs"].append(row)
    rows = []
    for r in results["runs"]:
        b = r["bytes"]
        one, two = r["build_1t"]["median"], r["build_2t"]["median"]
        rows.append(
            [
                r["kind"],
                f"{b / 2**30:.2f} GiB",
                fmt_time(r["build_1t"]),
                f"{b / one / 1e9:.2f}",
                fmt_time(r["build_2t"]),
                f"{b / two / 1e9:.2f}",
                f"{one / two:.2f}×",
                f"{two / r['read_stream_s']:.1f}×",
            ]
        )
    headers = [
        "format",
        "size",
        "1 thread",
        "GB/s",
        "2 threads",
        "GB/s",
        "speed-up",
        "2 threads vs streaming read",
    ]
    markdown = (
        "### Build scaling: threads and file size\n\n"
        + machine_markdown(results["machine"])
        + "\n\n"
        + table(headers, rows)
    )
    publish(markdown, results, args.out)


if __name__ == "__main__":
    main()
