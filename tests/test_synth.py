"""`fusion-fast synth` and `fusion_fast.synth.write_file`: seeded LLaVA-style files of a given size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fusion_fast import synth


def fusion_fast(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fusion_fast", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def records_of(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines()]
    return json.loads(text)


@pytest.mark.parametrize("name", ["a.json", "a.jsonl"])
def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, name):
    one, two, other = (tmp_path / d for d in ("one", "two", "other"))
    for d in (one, two, other):
        d.mkdir()
    n1 = synth.write_file(one / name, size=200_000, seed=3)
    n2 = synth.write_file(two / name, size=200_000, seed=3)
    synth.write_file(other / name, size=200_000, seed=4)
    assert n1 == n2 > 0
    assert (one / name).read_bytes() == (two / name).read_bytes()
    assert (one / name).read_bytes() != (other / name).read_bytes()


@pytest.mark.parametrize("name", ["a.json", "a.jsonl"])
@pytest.mark.parametrize("size", [1_000, 65_536, 1_500_000])
def test_size_is_an_upper_bound_within_one_record(tmp_path, name, size):
    path = tmp_path / name
    n = synth.write_file(path, size=size, seed=1)
    actual = path.stat().st_size
    assert len(records_of(path)) == n
    assert actual <= size
    # The next record would not have fitted: the file with one more record is larger than `size`.
    more = tmp_path / f"more-{name}"
    assert synth.write_file(more, records=n + 1, seed=1) == n + 1
    assert more.stat().st_size > size
    assert more.read_bytes()[: actual - 4] == path.read_bytes()[: actual - 4]


def test_files_are_llava_style_and_record_counts_exact(tmp_path):
    for name in ("r.json", "r.jsonl"):
        n = synth.write_file(tmp_path / name, records=5000, seed=0)
        records = records_of(tmp_path / name)
        assert n == len(records) == 5000
        assert len({r["id"] for r in records}) == 5000  # fresh ids beyond the pool of distinct records
        assert all(r["conversations"] and {"from", "value"} <= set(r["conversations"][0]) for r in records)
        kinds = {"image" in r and isinstance(r["image"], str) for r in records}
        assert kinds == {True, False}
        assert any(isinstance(r.get("image"), list) for r in records) and any("video" in r for r in records)


def test_parse_size():
    assert synth.parse_size("64MiB") == 64 << 20
    assert synth.parse_size("1.5GiB") == 3 << 29
    assert synth.parse_size("512k") == 512 << 10
    assert synth.parse_size("1000") == 1000
    for bad in ("lots", "", "-1MiB", "nanGiB"):
        with pytest.raises(ValueError, match="not a size"):
            synth.parse_size(bad)


def test_cli_writes_the_same_bytes_as_the_api(tmp_path):
    out = fusion_fast("synth", "cli.jsonl", "--size", "100k", "--seed", "9", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "cli.jsonl" in out.stdout and "seed 9" in out.stdout
    n = synth.write_file(tmp_path / "api.jsonl", size=100 << 10, seed=9)
    assert (tmp_path / "cli.jsonl").read_bytes() == (tmp_path / "api.jsonl").read_bytes()
    assert f"{n:,} records" in out.stdout
    out = fusion_fast("synth", "n.json", "--records", "7", "--compact", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert len(json.loads((tmp_path / "n.json").read_text())) == 7
    assert b"\n" not in (tmp_path / "n.json").read_bytes()
    assert not [p for p in tmp_path.iterdir() if ".part" in p.name]


def test_cli_mistakes(tmp_path):
    (tmp_path / "have.json").write_text("[]")
    for args, culprit in [
        (["have.json"], "pass --force"),
        (["data.txt"], "must end in .json"),
        (["x.json", "--size", "lots"], "not a size"),
        (["x.json", "--size", "1k", "--records", "3"], "not allowed with"),
    ]:
        out = fusion_fast("synth", *args, cwd=tmp_path)
        assert out.returncode == 2 and culprit in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert (tmp_path / "have.json").read_text() == "[]"
    assert fusion_fast("synth", "have.json", "--force", "--records", "2", cwd=tmp_path).returncode == 0
    assert len(json.loads((tmp_path / "have.json").read_text())) == 2


def test_help_describes_every_argument(tmp_path):
    out = fusion_fast("synth", "--help", cwd=tmp_path)
    assert out.returncode == 0
    for flag in ("--size", "--records", "--seed", "--indent", "--compact", "--ascii", "--force", "OUT"):
        assert flag in out.stdout
    assert "%%" not in out.stdout
