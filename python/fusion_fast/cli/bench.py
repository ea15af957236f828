"""`fusion-fast bench`: run the benchmark suite in `benches/` end to end and write a Markdown report,
every raw figure as JSON, and a throughput chart."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ..errors import FusionFastError
from .output import console, error_console

#: (script, arguments at full size, arguments for --quick); `{size}` and `{data}` are filled in.
SUITE: tuple[tuple[str, list[str], list[str]], ...] = (
    ("bench_index.py", ["--size", "{size}", "--data-dir", "{data}"], ["--quick", "--data-dir", "{data}"]),
    ("bench_scaling.py", ["--data-dir", "{data}"], ["--quick", "--data-dir", "{data}"]),
    ("bench_mixture.py", ["--data", "{data}/stage"], ["--quick", "--data", "{data}/stage-quick"]),
    ("bench_dataloader.py", ["--data", "{data}/stage"], ["--quick", "--data", "{data}/stage-quick"]),
    ("bench_check.py", [], ["--quick"]),
    ("bench_gpu.py", [], ["--quick"]),
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run the benchmark suite and write a report (Markdown, JSON, PNG)")
    p.add_argument(
        "--size", default="1GiB", help="size of the generated annotation files (default: %(default)s)"
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes, one repetition: proves the suite runs")
    p.add_argument(
        "--out", default="bench-out", help="folder for benchmarks.md, results.json, throughput.png"
    )
    p.add_argument("--data-dir", default=None, help="where generated data is kept between runs")
    p.add_argument("--only", action="append", default=None, help="run only these scripts (e.g. bench_index)")
    p.add_argument("--benches", default=None, help="the benches/ folder (default: found next to the package)")
    p.set_defaults(func=run_bench)


def find_benches(explicit: str | None) -> Path:
    candidates = [Path(explicit)] if explicit else []
    candidates += [Path(__file__).resolve().parents[3] / "benches", Path.cwd() / "benches"]
    for c in candidates:
        if (c / "bench_index.py").is_file():
            return c
    raise FusionFastError(
        "the benchmark suite lives in the repository's benches/ folder, which was not found; "
        "run from a fusion-fast checkout or pass --benches DIR"
    )


def run_bench(args: argparse.Namespace) -> int:
    benches = find_benches(args.benches)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data_dir or Path(os.environ.get("TMPDIR", "/tmp")) / "fusion-fast-bench")
    sections, raw, failed = [], {}, []
    for script, full, quick in SUITE:
        name = script.removesuffix(".py")
        if args.only and name not in args.only and script not in args.only:
            continue
        if not (benches / script).is_file():
            sections.append(f"### {name}\n\nnot run: {script} is missing from {benches}\n")
            continue
        result_file = out / f"{name}.json"
        argv = [a.format(size=args.size, data=data) for a in (quick if args.quick else full)]
        cmd = [sys.executable, str(benches / script), *argv, "--out", str(result_file)]
        error_console().print(f"running {' '.join(cmd[1:])}")
        started = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            failed.append(script)
            sections.append(f"### {name}\n\nFAILED (exit {proc.returncode}) after {seconds:.0f} s\n")
            continue
        sections.append(proc.stdout.strip() + "\n")
        if result_file.is_file():
            raw[name] = json.loads(result_file.read_text())
    report = "# fusion-fast benchmarks\n\n" + "\n".join(sections)
    (out / "benchmarks.md").write_text(report, encoding="utf-8")
    (out / "results.json").write_text(json.dumps(raw, indent=1), encoding="utf-8")
    chart = throughput_chart(raw.get("bench_index"), out / "throughput.png")
    console().print(report)
    console().print(
        f"wrote {out / 'benchmarks.md'}, {out / 'results.json'}" + (f", {chart}" if chart else "")
    )
    if failed:
        error_console().print(f"failed: {', '.join(failed)}")
        return 1
    return 0


def throughput_chart(index_results: dict | None, path: Path) -> Path | None:
    """A bar chart of GB/s by tool for the JSON array and the JSONL file (skipped without matplotlib)."""
    if not index_results:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        error_console().print("matplotlib is not installed: no chart")
        return None
    files = index_results["files"]
    fig, axes = plt.subplots(1, len(files), figsize=(6 * len(files), 4.5), squeeze=False)
    for ax, (kind, r) in zip(axes[0], files.items(), strict=True):
        size = r["bytes"]
        bars = {
            "fusion-fast (2 threads)": size / r["build_2t"]["median"],
            "fusion-fast (1 thread)": size / r["build_1t"]["median"],
            "read whole file": size / r["read_whole_s"],
        }
        for name, c in (r.get("competitors") or {}).items():
            if c:
                bars[name] = size / c["seconds"]
        names = list(bars)
        ax.barh(
            names,
            [bars[n] / 1e9 for n in names],
            color=["#2a7" if n.startswith("fusion") else "#999" for n in names],
        )
        ax.invert_yaxis()
        ax.set_xlabel("GB/s (higher is better)")
        ax.set_title(f"{kind}: {size / 2**30:.2f} GiB, index build vs loading")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
