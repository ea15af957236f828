"""`fusion-fast bench`: run the benchmark suite (`fusion_fast.benchmarks`, shipped with the package) end
to end and write a Markdown report, every raw figure as JSON, and a throughput chart. Runs from any folder
on a plain install: peers that are not installed (orjson, msgspec, datasets, Megatron-Energon, torch, ...)
are reported as skipped. Generated data is kept in the cache folder between runs (`--clean` removes it)."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .output import console, error_console

#: (module of fusion_fast.benchmarks, modules it cannot run without, arguments; `--quick` and `--size` are
#: added when given; `{data}` is the data folder).
SUITE: tuple[tuple[str, tuple[str, ...], list[str]], ...] = (
    ("index", (), ["--data-dir", "{data}"]),
    ("scaling", (), ["--data-dir", "{data}"]),
    ("mixture", (), ["--data-dir", "{data}"]),
    ("dataloader", ("torch",), ["--data-dir", "{data}"]),
    ("check", (), ["--dir", "{data}"]),
    ("gpu", ("torch",), []),
    ("vision", ("torch",), ["--data-dir", "{data}"]),
    ("images", ("torch",), ["--dir", "{data}"]),
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="run the benchmark suite and write a report (Markdown, JSON, PNG)",
        description="Run fusion-fast's benchmark suite against the physical floor and the usual loaders. "
        "Peers that are not installed are skipped and listed. Generated data is kept in the cache folder "
        "between runs (its location is printed; --clean removes it).",
    )
    p.add_argument(
        "--size",
        default=None,
        metavar="SIZE",
        help="scale every benchmark's generated data to about SIZE, e.g. 16MiB or 2GiB (default: each "
        "benchmark's full size, up to 4 GiB files; with --quick, tiny)",
    )
    p.add_argument(
        "--quick", action="store_true", help="small data and one repetition: proves the suite runs (minutes)"
    )
    p.add_argument(
        "--out",
        default="bench-out",
        metavar="DIR",
        help="folder for benchmarks.md, results.json and throughput.png (default: %(default)s)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="where generated data is kept between runs (default: bench/ in the cache folder)",
    )
    p.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(m for m, _, _ in SUITE)}",
    )
    p.add_argument(
        "--images-count",
        type=int,
        default=None,
        metavar="N",
        help="images in the archives of the images benchmark (default 100,000; with --quick, 1,000)",
    )
    p.add_argument("--clean", action="store_true", help="remove the generated data folder and exit")
    p.set_defaults(func=run_bench)


def _data_dir(args: argparse.Namespace) -> Path:
    from ..benchmarks.common import default_data_dir

    return Path(args.data_dir).absolute() if args.data_dir else default_data_dir()


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def clean(data: Path) -> int:
    from .output import human_bytes

    if not data.exists():
        console().print(f"nothing to remove: {data} does not exist", markup=False)
        return 0
    size = _folder_bytes(data)
    shutil.rmtree(data)
    console().print(f"removed {data} ({human_bytes(size)})", markup=False)
    return 0


#: How each benchmark runs: as `python -m MODULE ARGS`, except that Ctrl-C (which reaches the whole
#: process group, the benchmark included) ends it with 130 and no traceback, like the command itself.
_CHILD = """\
import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
except KeyboardInterrupt:
    sys.exit(130)
"""


def run_bench(args: argparse.Namespace) -> int:
    from ..benchmarks.common import PEERS, peer_available

    data = _data_dir(args)
    if args.clean:
        return clean(data)
    names = [m for m, _, _ in SUITE]
    wanted = [n.removeprefix("bench_").removesuffix(".py") for n in args.only or names]
    unknown = [n for n in wanted if n not in names]
    if unknown:
        from . import UsageError

        raise UsageError(f"--only {unknown[0]}: no such benchmark; choose from {', '.join(names)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    err = error_console()
    err.print(
        f"generated data: {data} (kept for the next run; fusion-fast bench --clean removes it)", markup=False
    )
    missing = [m for m in PEERS if not peer_available(m)]
    if missing:
        err.print(f"skipped peers (not installed): {', '.join(missing)}", markup=False)
    sections, raw, failed, skipped = [], {}, [], []
    for module, needs, argv in SUITE:
        if module not in wanted:
            continue
        absent = [m for m in needs if m in missing]
        if absent:
            skipped.append(module)
            sections.append(f"### {module}\n\nskipped: needs {', '.join(absent)}, which is not installed\n")
            continue
        result_file = out / f"{module}.json"
        cmd = [sys.executable, "-c", _CHILD, f"fusion_fast.benchmarks.{module}"]
        cmd += [a.format(data=data) for a in argv]
        cmd += ["--quick"] if args.quick else []
        cmd += ["--size", args.size] if args.size and module != "gpu" else []
        cmd += ["--images-count", str(args.images_count)] if args.images_count and module == "images" else []
        cmd += ["--out", str(result_file)]
        err.print(f"running {' '.join(cmd[3:])}", markup=False)
        started = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            failed.append(module)
            sections.append(f"### {module}\n\nFAILED (exit {proc.returncode}) after {seconds:.0f} s\n")
            continue
        sections.append(proc.stdout.strip() + f"\n\n({module}: {seconds:.0f} s)\n")
        if result_file.is_file():
            raw[module] = json.loads(result_file.read_text())
    peers = (
        f"Peers not installed, skipped: {', '.join(missing)}.\n" if missing else "Every peer was installed.\n"
    )
    report = "# fusion-fast benchmarks\n\n" + peers + "\n" + "\n".join(sections)
    (out / "benchmarks.md").write_text(report, encoding="utf-8")
    (out / "results.json").write_text(
        json.dumps({"skipped_peers": missing, "skipped": skipped, **raw}, indent=1), encoding="utf-8"
    )
    chart = throughput_chart(raw.get("index"), out / "throughput.png")
    console().print(report, markup=False)
    console().print(
        f"wrote {out / 'benchmarks.md'}, {out / 'results.json'}" + (f", {chart}" if chart else ""),
        markup=False,
    )
    if failed:
        err.print(f"failed: {', '.join(failed)}", markup=False)
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
