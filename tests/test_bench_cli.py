"""`fusion-fast bench` runs from any folder on an installed package, reports the peers it could not
compare with as skipped, keeps its generated data in the folder it prints, honours --size and --clean."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

#: Makes `orjson` and `torch` look uninstalled in every Python process that has this folder on its path:
#: importing them, or asking `importlib.util.find_spec` about them, fails as for a missing module.
HIDE_PEERS = """
import sys

HIDDEN = {"orjson", "torch"}


class HidePeers:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, HidePeers())
"""


def bench(*args: str, cwd: Path, hide: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "300"}
    if hide is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hide), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "fusion_fast", "bench", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_bench_runs_outside_the_checkout_and_reports_missing_peers(tmp_path):
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(HIDE_PEERS)
    work = tmp_path / "somewhere"
    work.mkdir()
    data, out = tmp_path / "data", tmp_path / "out"
    proc = bench(
        "--quick",
        "--size",
        "1MiB",
        *("--only", "index", "--only", "dataloader", "--only", "mixture"),
        *("--out", str(out), "--data-dir", str(data)),
        cwd=work,
        hide=hide,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    # Every missing peer is named as skipped: the hidden ones, and megatron.energon, whose find_spec
    # raises when megatron itself is absent.
    skipped = next(line for line in proc.stderr.splitlines() if line.startswith("skipped peers"))
    assert "orjson" in skipped and "torch" in skipped
    report = (out / "benchmarks.md").read_text()
    assert "orjson.loads | skipped (not installed)" in report
    assert "### dataloader\n\nskipped: needs torch, which is not installed" in report
    results = json.loads((out / "results.json").read_text())
    assert {"orjson", "torch"} <= set(results["skipped_peers"]) and results["skipped"] == ["dataloader"]
    if "megatron.energon" in results["skipped_peers"]:
        assert "Megatron-Energon JSONL prepare | skipped (not installed)" in report
    # The generated data lives where the command said, sized as asked; nothing is left in the cwd.
    assert f"generated data: {data}" in proc.stderr
    generated = sorted(p for p in data.rglob("*.json*") if p.is_file())
    assert generated and all(p.stat().st_size <= 1 << 20 for p in generated)
    assert list(work.iterdir()) == []

    proc = bench("--clean", "--data-dir", str(data), cwd=work)
    assert proc.returncode == 0 and f"removed {data}" in proc.stdout
    assert not data.exists()


def test_default_data_folder_is_in_the_cache_and_unknown_names_are_usage_errors(tmp_path):
    env_cache = tmp_path / "cache"
    proc = subprocess.run(
        [sys.executable, "-m", "fusion_fast", "bench", "--only", "nosuch", "--out", str(tmp_path / "o")],
        cwd=tmp_path,
        env={**os.environ, "FUSION_FAST_CACHE": str(env_cache)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "nosuch" in proc.stderr and "index" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "fusion_fast", "bench", "--clean"],
        cwd=tmp_path,
        env={**os.environ, "FUSION_FAST_CACHE": str(env_cache)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and str(env_cache / "bench") in proc.stdout
