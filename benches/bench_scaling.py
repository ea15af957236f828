"""How the index build scales: with 1 and 2 threads, and with the file size (the cost must grow
linearly, so GB/s stays flat from 0.25 to 4 GiB).

    python benches/bench_scaling.py [--sizes 0.25GiB,1GiB,4GiB] [--data-dir DIR] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fusion_fast as ff  # noqa: E402
from bench_index import ensure_data, parse_size, read_floor  # noqa: E402
from common import fmt_time, machine, machine_markdown, publish, repeat, table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="0.25GiB,1GiB,4GiB")
    ap.add_argument("--quick", action="store_true", help="8, 16 and 32 MiB")
    ap.add_argument("--data-dir", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "fusion-fast-bench"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    sizes = [parse_size(s) for s in ("8MiB,16MiB,32MiB" if args.quick else args.sizes).split(",")]
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
