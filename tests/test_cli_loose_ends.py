"""Loose ends of the command line: `info` on a stage YAML, launcher variables meaning "not
distributed", counts said in the right number, write failures on standard output, the hint for a data
file that is not JSON at all, and file names with control characters in tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .test_cli_transcript import ff


def records(n: int, prefix: str = "r") -> list[dict[str, object]]:
    return [
        {"id": f"{prefix}{i}", "image": f"{i}.png", "conversations": [{"from": "human", "value": "hi"}]}
        for i in range(n)
    ]


@pytest.fixture()
def fusion_layout(tmp_path: Path) -> Path:
    """FUSION's layout: a stage YAML in scripts/train/yaml/ naming ../../playground/... files, which
    resolve from scripts/train/ (where FUSION's launch scripts run)."""
    jsons = tmp_path / "playground" / "train" / "jsons"
    jsons.mkdir(parents=True)
    (jsons / "a.json").write_text(json.dumps(records(7, "a")))
    (jsons / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records(3, "b")))
    yaml_dir = tmp_path / "scripts" / "train" / "yaml"
    yaml_dir.mkdir(parents=True)
    (yaml_dir / "stage1.yaml").write_text(
        "datasets:\n"
        "  - json_path: ../../playground/train/jsons/a.json\n"
        "  - json_path: ../../playground/train/jsons/b.jsonl\n"
    )
    return tmp_path


def test_info_on_stage_yaml_names_each_file_and_the_base(fusion_layout: Path) -> None:
    rc, out, err = ff("info", "scripts/train/yaml/stage1.yaml", cwd=fusion_layout)
    assert rc == 0, err
    assert "Traceback" not in err
    a = str(fusion_layout / "playground" / "train" / "jsons" / "a.json")
    b = str(fusion_layout / "playground" / "train" / "jsons" / "b.jsonl")
    assert a in out and b in out, out
    assert "/../" not in out, out
    assert str(fusion_layout / "scripts" / "train") in out, out  # the base used, named
    assert "resolved against" in out, out
    assert "7" in out and "3" in out


def test_info_on_stage_yaml_json(fusion_layout: Path) -> None:
    rc, out, err = ff("info", "--json", "scripts/train/yaml/stage1.yaml", cwd=fusion_layout)
    assert rc == 0, err
    doc = json.loads(out)
    jsons = fusion_layout / "playground" / "train" / "jsons"
    assert doc["base"] == str(fusion_layout / "scripts" / "train")
    assert [d["path"] for d in doc["datasets"]] == [str(jsons / "a.json"), str(jsons / "b.jsonl")]
    assert [d["records"] for d in doc["datasets"]] == [7, 3]
    assert [d["built"] for d in doc["datasets"]] == [True, True]
    rc, out, err = ff("info", "--json", "scripts/train/yaml/stage1.yaml", cwd=fusion_layout)
    assert [d["built"] for d in json.loads(out)["datasets"]] == [False, False]


def test_info_on_stage_yaml_with_missing_file_is_one_error(fusion_layout: Path) -> None:
    (fusion_layout / "playground" / "train" / "jsons" / "b.jsonl").unlink()
    rc, out, err = ff("info", "scripts/train/yaml/stage1.yaml", cwd=fusion_layout)
    assert rc == 2, err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1, err
    assert "b.jsonl" in err


@pytest.mark.parametrize("env", [{"LOCAL_RANK": "-1"}, {"LOCAL_RANK": "-1", "WORLD_SIZE": "1"}])
def test_negative_local_rank_alone_means_not_distributed(tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "d.json").write_text(json.dumps(records(4)))
    rc, out, err = ff("index", "--json", "d.json", cwd=tmp_path, env=env)
    assert rc == 0, err
    assert json.loads(out)[0]["records"] == 4


def test_negative_local_rank_in_a_real_job_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "d.json").write_text(json.dumps(records(4)))
    rc, out, err = ff(
        "index", "d.json", cwd=tmp_path, env={"LOCAL_RANK": "-1", "WORLD_SIZE": "2", "RANK": "0"}
    )
    assert rc == 1, err
    assert "Traceback" not in err
    assert "LOCAL_RANK" in err


def test_check_says_one_problem_in_the_singular(tmp_path: Path) -> None:
    turns = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]
    data: list[dict[str, object]] = [{"id": f"r{i}", "conversations": turns} for i in range(3)]
    del data[1]["conversations"]
    (tmp_path / "d.json").write_text(json.dumps(data))
    rc, out, err = ff("check", "d.json", cwd=tmp_path)
    assert rc == 1, err
    assert "1 problem" in out, out
    assert "1 problems" not in out, out
    assert "1 files" not in out, out


def test_help_to_a_full_device_fails_naming_standard_output(tmp_path: Path) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    for args in (["--help"], ["index", "--help"], ["--version"]):
        with open("/dev/full", "w") as full:
            proc = subprocess.run(
                [sys.executable, "-m", "fusion_fast", *args],
                stdout=full,
                stderr=subprocess.PIPE,
                text=True,
                timeout=60,
            )
        assert proc.returncode == 1, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, proc.stderr
        assert "standard output" in errors[0], proc.stderr


def test_table_to_a_full_device_fails_naming_standard_output(tmp_path: Path) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    (tmp_path / "d.json").write_text(json.dumps(records(4)))
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "fusion_fast", "index", "d.json"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            timeout=60,
        )
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "standard output" in errors[0], proc.stderr


def test_binary_file_named_json_is_not_told_to_be_jsonl(tmp_path: Path) -> None:
    (tmp_path / "blob.json").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    rc, out, err = ff("index", "blob.json", cwd=tmp_path)
    assert rc == 1, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "blob.json" in errors[0], err
    assert ".jsonl" not in errors[0], err
    assert "not JSON" in errors[0], err


def test_json_lines_named_json_still_gets_the_jsonl_hint(tmp_path: Path) -> None:
    (tmp_path / "lines.json").write_text("".join(json.dumps(r) + "\n" for r in records(2)))
    rc, out, err = ff("index", "lines.json", cwd=tmp_path)
    assert rc == 1, err
    assert "name it .jsonl" in err, err


def test_file_name_with_newline_stays_on_one_table_row(tmp_path: Path) -> None:
    name = "two\nlines.json"
    (tmp_path / name).write_text(json.dumps(records(2)))
    rc, out, err = ff("index", name, cwd=tmp_path)
    assert rc == 0, err
    rows = [line for line in out.splitlines() if "two" in line]
    assert len(rows) == 1, out
    assert "two\\nlines.json" in rows[0], out
    assert not any(line.lstrip("│ ").startswith("lines.json") for line in out.splitlines()), out


def test_check_of_a_binary_file_named_json_says_what_it_is(tmp_path: Path) -> None:
    (tmp_path / "blob.json").write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)))
    rc, out, err = ff("check", "blob.json", cwd=tmp_path)
    assert rc == 1, err
    assert "gzip" in out and ".jsonl" not in out, out
