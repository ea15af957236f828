"""How long the command line takes to start: `fusion-fast --help` and `fusion-fast index` on a file
whose index is already built, against a bare `python -c pass`, and which imports cost the most
(`python -X importtime`).

    python benches/bench_startup.py [--repeat 5] [--out startup.json]

A standalone script: `main(argv)` returns 0 and prints a Markdown section.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: Imports the command line must not pay for when the command does not need them.
HEAVY = ("torch", "polars", "matplotlib", "PIL")


def _wall(argv: list[str], repeat: int) -> dict[str, float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - started)
    return {"median": statistics.median(times), "min": min(times)}


def import_profile(argv: list[str], top: int = 8) -> dict[str, Any]:
    """Self-inclusive import times (ms) of the top-level packages `argv` imports, and which heavy
    packages were imported at all."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    packages: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|")
        cumulative, top_level = cumulative.strip(), name[1:]  # one space follows the bar
        if not cumulative.isdigit() or top_level.startswith(" "):
            continue  # the header, or an import made inside another one
        package = top_level.strip().split(".")[0]
        packages[package] = packages.get(package, 0.0) + int(cumulative) / 1000
    heaviest = dict(sorted(packages.items(), key=lambda kv: -kv[1])[:top])
    return {"top_ms": heaviest, "heavy_imported": sorted(h for h in HEAVY if h in packages)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs of each command (default: 5)")
    parser.add_argument("--quick", action="store_true", help="two runs of each command")
    parser.add_argument("--out", default=None, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    repeat = 2 if args.quick else args.repeat
    ff = [sys.executable, "-m", "fusion_fast"]
    with tempfile.TemporaryDirectory(prefix="fusion-fast-startup-") as tmp:
        data = Path(tmp) / "startup.json"
        data.write_text(json.dumps([{"id": i, "conversations": []} for i in range(1000)]))
        subprocess.run([*ff, "index", str(data)], stdout=subprocess.DEVNULL, check=True)
        cases = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "fusion-fast --help": [*ff, "--help"],
            "fusion-fast index (cached)": [*ff, "index", str(data)],
            "fusion-fast info (cached)": [*ff, "info", str(data)],
        }
        results = {name: _wall(cmd, repeat) for name, cmd in cases.items()}
        profiles = {
            "fusion-fast --help": import_profile(["-m", "fusion_fast", "--help"]),
            "fusion-fast index (cached)": import_profile(["-m", "fusion_fast", "index", str(data)]),
        }
    lines = [
        "### bench_startup",
        "",
        f"Wall time of a command, median (min) of {repeat} runs, in a fresh process each:",
        "",
        "| command | median | min | heavy imports |",
        "|---|---:|---:|---|",
    ]
    for name, r in results.items():
        heavy = (", ".join(profiles[name]["heavy_imported"]) or "none") if name in profiles else ""
        lines.append(f"| {name} | {r['median'] * 1e3:.0f} ms | {r['min'] * 1e3:.0f} ms | {heavy} |")
    for name, p in profiles.items():
        top = ", ".join(f"{k} {v:.0f} ms" for k, v in p["top_ms"].items())
        lines.append(f"\nImports of `{name}` (cumulative, `-X importtime`): {top}")
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text(
            json.dumps({"wall_s": results, "imports": profiles, "repeat": repeat}, indent=1), encoding="utf-8"
        )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("FUSION_FAST_PROGRESS_SECONDS", "3600")
    raise SystemExit(main())
