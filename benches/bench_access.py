"""Random access alone (`idx[i]`, `get_many`), to compare two builds of fusion-fast in turns.

    python benches/bench_access.py --build A=/path/to/python --build B=/other/python [--rounds 3]

Each build's package folder is put first on `PYTHONPATH` of a child process that times (in CPU time
of its thread, the best of three runs), on one page-cached synthetic JSONL file, `idx[i]` over
random picks and `get_many` in batches of 64 and 1024; the builds take turns for `rounds` rounds,
and the median and range of each are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, random, sys, time
import fusion_fast as ff
idx = ff.open(sys.argv[1])
n = len(idx)
rng = random.Random(1)
picks = [rng.randrange(n) for _ in range(int(sys.argv[2]))]
for i in picks:  # every page touched once before timing
    idx[i]
def best(f, reps=3):
    # CPU time of this thread: on a machine shared with other work, wall time mostly measures the
    # others; the best of `reps` runs.
    times = []
    for _ in range(reps):
        t = time.thread_time()
        f()
        times.append(time.thread_time() - t)
    return len(picks) / min(times)
def one_by_one():
    for i in picks:
        idx[i]
def batches(size):
    def run():
        for k in range(0, len(picks), size):
            idx.get_many(picks[k : k + size])
    return run
print(json.dumps({
    "idx[i]": best(one_by_one),
    "get_many (64)": best(batches(64)),
    "get_many (1024)": best(batches(1024)),
    "package": ff.__file__,
}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--build", action="append", required=True, help="NAME=python-folder")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--picks", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=64 << 20, help="bytes of synthetic data")
    args = parser.parse_args()
    builds = dict(b.split("=", 1) for b in args.build)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.jsonl"
        env = {**os.environ, "PYTHONPATH": next(iter(builds.values()))}
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from fusion_fast import synth, open as o; "
                "synth.write_file(sys.argv[1], size=int(sys.argv[2]), seed=7); o(sys.argv[1])",
                str(data),
                str(args.size),
            ],
            env=env,
            check=True,
        )
        results: dict[str, dict[str, list[float]]] = {name: {} for name in builds}
        for _ in range(args.rounds):
            for name, folder in builds.items():
                env = {**os.environ, "PYTHONPATH": folder}
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, str(data), str(args.picks)],
                    env=env,
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                rates = json.loads(out)
                assert rates.pop("package").startswith(folder), f"{name} did not import from {folder}"
                for key, rate in rates.items():
                    results[name].setdefault(key, []).append(rate)
    for name, by_key in results.items():
        for key, rates in by_key.items():
            print(
                f"{name:>8} {key:<16} median {statistics.median(rates) / 1e3:8.1f} k records/s"
                f"  (range {min(rates) / 1e3:.1f} to {max(rates) / 1e3:.1f}, {len(rates)} rounds)"
            )


if __name__ == "__main__":
    main()
