"""`Mixture.export_jsonl` / `fusion-fast mix --export`: compact JSON Lines, one record per line, each
line parsing (with Python's json) to the record as the data file holds it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fusion_fast import Mixture, synth

#: A JSON string token (the data is valid JSON: no raw control characters inside strings).
STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def outside_strings(line: str) -> str:
    return "".join(STRING.split(line))


@pytest.fixture(scope="module")
def stage(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("export")
    synth.write_file(folder / "Pretty-3000.json", records=3000, seed=1, indent=4)
    synth.write_file(folder / "Ascii-900.json", records=900, seed=2, indent=2, ensure_ascii=True)
    synth.write_file(folder / "Lines-2500.jsonl", records=2500, seed=3)
    # Whitespace of every kind between tokens, and strings full of it (escaped or spaces).
    odd = [
        {"id": "ws", "conversations": [{"from": "human", "value": "  a \t b\n  "}], "n": [1, -2.5e3, None]},
        {"id": "esc", "conversations": [{"from": "gpt", "value": 'q "x" \\\\ \u00e9 \U0001f600'}]},
    ]
    (folder / "Odd-2.json").write_text(
        "[\r\n\t" + ",\n \t ".join(json.dumps(r, indent="\t").replace("\n", "\r\n") for r in odd) + "\n]\n"
    )
    (folder / "stage.yaml").write_text(
        "datasets:\n"
        "  - json_path: Pretty-3000.json\n    sampling_strategy: random:40%\n    repeat: 1.5\n"
        "  - json_path: Ascii-900.json\n    sampling_strategy: end:500\n"
        "  - json_path: Lines-2500.jsonl\n    sampling_strategy: first:2000\n"
        "  - json_path: Odd-2.json\n"
    )
    return folder / "stage.yaml"


def file_records(path: Path) -> list:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return json.loads(path.read_text(encoding="utf-8"))


def expected_records(mix: Mixture) -> list:
    out = []
    for d in mix.datasets:
        records = file_records(d.path)
        out += [records[i] for i in d.selected.tolist()]
    return out


def test_every_line_is_compact_and_parses_to_the_record(stage, tmp_path):
    mix = Mixture.from_yaml(stage, root=stage.parent, seed=5, index_dir=tmp_path / "idx")
    out = tmp_path / "all.jsonl"
    size = mix.export_jsonl(out, batch=1000)
    data = out.read_bytes()
    assert size == len(data) and data.endswith(b"\n")
    lines = data.decode("utf-8").split("\n")[:-1]
    assert len(lines) == len(mix) == 1800 + 500 + 2000 + 2
    assert [json.loads(line) for line in lines] == expected_records(mix)
    for line in lines:
        rest = outside_strings(line)
        assert not set(rest) & set(" \t\r\n"), line
    # Strings are copied as written: escapes stay escapes (the ASCII file's \uXXXX among them).
    ascii_part = lines[1800 : 1800 + 500]
    assert any("\\u" in line for line in ascii_part) and all(line.isascii() for line in ascii_part)
    assert '"  a \\t b\\n  "' in lines[-2]


def test_lines_equal_pythons_compact_encoding_where_strings_match_it(stage, tmp_path):
    # synth writes strings as json.dumps(ensure_ascii=False) does, so there the export must be exactly
    # Python's compact encoding of each record, byte for byte.
    mix = Mixture.from_yaml(stage, root=stage.parent, index_dir=tmp_path / "idx")
    mix.export_jsonl(tmp_path / "all.jsonl")
    lines = (tmp_path / "all.jsonl").read_bytes().split(b"\n")
    records = expected_records(mix)
    pretty = [d for d in mix.datasets if d.name in ("Pretty-3000", "Lines-2500")]
    assert sum(len(d) for d in pretty) == 3800
    for d in pretty:
        for k in range(d.start, d.stop):
            want = json.dumps(records[k], ensure_ascii=False, separators=(",", ":")).encode()
            assert lines[k] == want
    indented = pretty[0]  # FUSION's files are indented like this one: the export drops about a quarter
    raw = int(indented.column("length").sum())
    assert sum(len(lines[k]) for k in range(indented.start, indented.stop)) < raw / 1.2


def test_progress_and_no_leftovers_on_failure(stage, tmp_path):
    mix = Mixture.from_yaml(stage, root=stage.parent, index_dir=tmp_path / "idx")
    seen: list[tuple[int, int]] = []
    mix.export_jsonl(tmp_path / "a.jsonl", batch=700, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (len(mix), len(mix))
    assert [d for d, _ in seen] == sorted({d for d, _ in seen})

    def stop(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        mix.export_jsonl(tmp_path / "b.jsonl", batch=700, progress=stop)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "idx") == ["a.jsonl"]


def test_compact_lines_refuses_record_numbers_out_of_range(stage, tmp_path):
    mix = Mixture.from_yaml(stage, root=stage.parent, index_dir=tmp_path / "idx")
    core = mix.datasets[1].index._core
    with pytest.raises(IndexError, match="900"):
        core.compact_lines(np.array([0, 900], dtype=np.int64))
    with pytest.raises(IndexError, match="-1"):
        core.compact_lines(np.array([-1], dtype=np.int64))
    with pytest.raises(IndexError):
        core.compact_lines(start=899, count=2)
    assert core.compact_lines(start=0, count=0) == b""


def test_cli_export(stage, tmp_path):
    out = tmp_path / "cli.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "fusion_fast", "mix", str(stage), "--seed", "5", "--export", str(out)],
        cwd=stage.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    mix = Mixture.from_yaml(stage, root=stage.parent, seed=5)
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == expected_records(mix)
