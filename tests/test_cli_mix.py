"""`fusion-fast mix`, run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fusion_fast import Mixture
from fusion_fast.cli import main
from fusion_fast.synth import write_file

from .conftest import write


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "250"}
    return subprocess.run(
        [sys.executable, "-m", "fusion_fast", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env=env,
    )


@pytest.fixture(scope="module")
def stage(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli-mix")
    (root / "jsons").mkdir()
    write_file(root / "jsons" / "Alpha-400.json", records=400, seed=1)
    write_file(root / "jsons" / "Beta-120.jsonl", records=120, seed=2)
    return write(
        root / "stage.yaml",
        "datasets:\n"
        "  - json_path: jsons/Alpha-400.json\n"
        '    sampling_strategy: "random:25%"\n'
        "  - json_path: jsons/Beta-120.jsonl\n"
        '    sampling_strategy: "first:100"\n'
        "    repeat: 1.5\n",
    )


def test_prints_the_summary_with_totals(stage):
    out = run("mix", str(stage), "--root", str(stage.parent))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    alpha = next(line for line in lines if "Alpha-400" in line)
    beta = next(line for line in lines if "Beta-120" in line)
    total = next(line for line in lines if "total" in line)
    assert "random:25%" in alpha and "100" in alpha.split("│")[5]
    assert "first:100" in beta and "1.5" in beta and "150" in beta.split("│")[5]
    assert "520" in total and "250" in total and "100.0%" in total
    assert "250 records" in out.stdout and "seed 0" in out.stdout


def test_export_writes_the_mixture_and_the_seed_matters(stage, tmp_path):
    out_a, out_b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert main(["mix", str(stage), "--root", str(stage.parent), "--export", str(out_a)]) == 0
    assert main(["mix", str(stage), "--root", str(stage.parent), "--seed", "1", "--export", str(out_b)]) == 0
    mix = Mixture.from_yaml(stage, root=stage.parent)
    lines = out_a.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == list(mix)
    assert out_b.read_bytes() != out_a.read_bytes() and len(out_b.read_text().splitlines()) == len(lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "b.jsonl"]


def test_relative_paths_start_at_the_working_directory(stage):
    out = run("mix", "stage.yaml", cwd=stage.parent)
    assert out.returncode == 0 and "Alpha-400" in out.stdout, out.stderr


def test_errors(stage, tmp_path):
    out = run("mix", str(tmp_path / "missing.yaml"))
    assert out.returncode == 2 and "error:" in out.stderr and "missing.yaml" in out.stderr
    bad = write(
        tmp_path / "bad.yaml",
        'datasets:\n  - json_path: jsons/Alpha-400.json\n    sampling_strategy: "top:5"\n',
    )
    out = run("mix", str(bad), "--root", str(stage.parent))
    assert out.returncode == 2 and "unknown sampling_strategy" in out.stderr and "datasets[0]" in out.stderr
    gone = write(tmp_path / "gone.yaml", "datasets:\n  - json_path: jsons/Gone.json\n")
    out = run("mix", str(gone), "--root", str(stage.parent))
    assert out.returncode == 2 and str(stage.parent / "jsons" / "Gone.json") in out.stderr
    assert run("mix").returncode == 2
    assert run("mix", str(stage), "--seed", "x").returncode == 2


def test_an_absurd_repeat_fails_at_once_with_a_clear_error(stage, tmp_path):
    huge = write(
        tmp_path / "huge.yaml",
        "datasets:\n  - json_path: jsons/Beta-120.jsonl\n    repeat: 1000000000\n",
    )
    out = run("mix", str(huge), "--root", str(stage.parent))
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    assert "repeat must be at most 10,000" in out.stderr and "datasets[0]" in out.stderr, out.stderr
