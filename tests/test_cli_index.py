"""`fusion-fast index`, `info`, `show` and `demo`, run as a user runs them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from fusion_fast.cli import main

from .conftest import write


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fusion_fast", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_demo_writes_indexes_and_reports(tmp_path):
    out = run("demo", str(tmp_path / "pg"))
    assert out.returncode == 0, out.stderr
    jsons = sorted((tmp_path / "pg" / "playground" / "train" / "jsons").iterdir())
    data = [p for p in jsons if p.suffix in (".json", ".jsonl")]
    assert len(data) == 3 and all(Path(f"{p}.ffidx").is_file() for p in data)
    assert (tmp_path / "pg" / "scripts" / "train" / "yaml" / "stage1.yaml").is_file()
    pngs = list((tmp_path / "pg" / "playground" / "train" / "images").rglob("*.png"))
    assert pngs and pngs[0].read_bytes().startswith(b"\x89PNG")
    assert "LLaVA-Pretrain-2k.json" in out.stdout and "2,000" in out.stdout


def test_index_folder_yaml_and_files(tmp_path):
    write(tmp_path / "d" / "a.json", json.dumps([{"id": i} for i in range(5)]))
    write(tmp_path / "d" / "sub" / "b.jsonl", '{"id": 1}\n{"id": 2}\n')
    write(tmp_path / "d" / "notes.txt", "ignored")
    out = run("index", str(tmp_path / "d"), "--threads", "1")
    assert out.returncode == 0, out.stderr
    assert "a.json" in out.stdout and "b.jsonl" in out.stdout and "notes" not in out.stdout
    assert Path(tmp_path / "d" / "sub" / "b.jsonl.ffidx").is_file()
    write(tmp_path / "stage.yaml", "datasets:\n  - json_path: d/a.json\n")
    out = run("index", "stage.yaml", cwd=tmp_path)
    assert out.returncode == 0 and "cached" in out.stdout


def test_index_failure_exits_non_zero_with_location(tmp_path):
    bad = write(tmp_path / "bad.json", '[{"a": 1}, {"a": ]')
    out = run("index", str(bad))
    assert out.returncode == 1
    assert "bad.json" in out.stderr and "line 1" in out.stderr and "record 1" in out.stderr
    assert run("index", str(tmp_path / "missing.json")).returncode == 2  # usage, as in every command
    assert run("index").returncode == 2


def test_info_and_show(tmp_path, capsys):
    path = write(
        tmp_path / "s.json", json.dumps([{"id": "x", "image": "a.jpg", "conversations": []}, {"id": "y"}])
    )
    assert main(["info", str(path), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "all column checksums" in out
    counts = dict(re.findall(r"│ ([a-z/ -]+?) +│ ([0-9,]+) +│", out))
    assert counts["records"] == "2" and counts["with image key"] == "1" and counts["text-only"] == "1"
    assert counts["bad/missing conversations"] == "1" and counts["multi-image"] == "0"
    assert main(["show", str(path), "1", "-2"]) == 0
    shown = capsys.readouterr().out
    assert '"id": "y"' in shown and '"id": "x"' in shown
